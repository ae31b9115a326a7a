//! Rights holders' statements (issue 23, item 2): one owner's, artist's or rights agent's
//! usages in one calendar month, from a verified replay. The statement counts the entries
//! the replay rebuilt and opened with the royalty master key, with the rule every totals
//! line uses (`TotalsLine::count`) and the month the totals' period dimension uses
//! (`royalty_log::month_of`), so a holder's statement for a month equals the totals line of
//! that holder when all its usages fall in that month, and the statements of every artist
//! for a month add up to the month's line.
//! Not here: the command line (`gateways::audit`) and the RPC (`gateways::server::audit`).

use crate::audit::{self, AuditError, AuditReport};
use crate::export;
use crate::royalty::Entry;
use crate::royalty_log::{TotalsLine, month_of};
use engine::crypto::SecretKey;
use engine::log::EventLog;
use std::collections::{BTreeMap, BTreeSet};

/// Longest holder name a statement is asked for (characters).
pub const HOLDER_NAME_CHARS_MAX: usize = 256;

/// Whose statement: the entry field it selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Holder {
    Owner,
    Artist,
    RightsAgent,
}

impl Holder {
    pub const ALL: [Holder; 3] = [Holder::Owner, Holder::Artist, Holder::RightsAgent];

    pub fn name(self) -> &'static str {
        match self {
            Holder::Owner => "owner",
            Holder::Artist => "artist",
            Holder::RightsAgent => "rights_agent",
        }
    }

    pub fn of_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|holder| holder.name() == name)
    }

    fn of_entry(self, entry: &Entry) -> &str {
        match self {
            Holder::Owner => &entry.owner,
            Holder::Artist => &entry.artist,
            Holder::RightsAgent => &entry.rights_agent,
        }
    }
}

/// One media's usages in the statement.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StatementMedia {
    pub media_id: String,
    pub title: String,
    pub artist: String,
    #[serde(flatten)]
    pub line: TotalsLine,
}

/// A holder's month.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RightsStatement {
    pub holder: Holder,
    pub name: String,
    pub period: String,
    /// Every usage of the holder in the month, counted as the totals count them.
    pub total: TotalsLine,
    /// The currencies the sales were made in (amounts add up across them, as the totals do).
    pub currencies: Vec<String>,
    /// Per media, by media id.
    pub media: Vec<StatementMedia>,
}

/// The statement of `holder` `name` for `period` ("YYYY-MM") over opened entries.
pub fn rights_statement(entries: &[Entry], holder: Holder, name: &str, period: &str) -> RightsStatement {
    let mut total = TotalsLine::default();
    let mut currencies = BTreeSet::new();
    let mut media: BTreeMap<&str, StatementMedia> = BTreeMap::new();
    for entry in entries.iter().filter(|entry| holder.of_entry(entry) == name && month_of(entry.timestamp_ms) == period) {
        total.count(entry);
        if !entry.currency.is_empty() {
            currencies.insert(entry.currency.clone());
        }
        media
            .entry(&entry.media_id)
            .or_insert_with(|| StatementMedia {
                media_id: entry.media_id.clone(),
                title: entry.title.clone(),
                artist: entry.artist.clone(),
                line: TotalsLine::default(),
            })
            .line
            .count(entry);
    }
    RightsStatement {
        holder,
        name: name.to_string(),
        period: period.to_string(),
        total,
        currencies: currencies.into_iter().collect(),
        media: media.into_values().collect(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The replay found something: no statement comes from a stream that does not audit clean.
    #[error("the stream does not audit clean (first bad at sequence {seq}: {reason}); no statement")]
    NotClean { seq: u64, reason: String, report: Box<AuditReport> },
    #[error("the rebuilt royalty log does not open at entry {entry:?}: {reason}")]
    Entries { entry: Option<u64>, reason: String },
}

/// Replays `log` from sequence 1 as an auditor (every check of `audit::replay`), refuses a
/// stream that does not audit clean, opens the rebuilt entries and counts the statement.
pub async fn verified_statement(
    log: &dyn EventLog,
    master: &SecretKey,
    engine_keys: &engine::keyset::KeySet,
    holder: Holder,
    name: &str,
    period: &str,
    progress: impl FnMut(u64),
) -> Result<(AuditReport, RightsStatement), StatementError> {
    let options = audit::AuditOptions { older_engine_keys: engine_keys.iter().skip(1).cloned().collect(), ..Default::default() };
    let (report, projections) = audit::replay_with(log, master, engine_keys.current(), options, progress).await?;
    if !report.ok() {
        let (seq, reason) =
            report.first_bad.as_ref().map_or((report.last_seq, "the royalty chain does not verify".to_string()), |bad| (bad.seq, bad.reason.clone()));
        return Err(StatementError::NotClean { seq, reason, report: Box::new(report) });
    }
    let exported = export::export_log(&projections.royalty);
    let (entries, _, fault) = export::open_entries(&exported, master);
    if let Some(fault) = fault {
        return Err(StatementError::Entries { entry: fault.entry, reason: fault.reason });
    }
    let statement = rights_statement(&entries, holder, name, period);
    Ok((report, statement))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::royalty::UsageKind;

    fn entry(kind: UsageKind, artist: &str, owner: &str, media: &str, price: u64, timestamp_ms: i64) -> Entry {
        Entry {
            kind,
            source_seq: 1,
            timestamp_ms,
            title: format!("{media} title"),
            artist: artist.into(),
            authors: vec![],
            length_ms: 1000,
            sale_price_minor: price,
            currency: "EUR".into(),
            consumer_cert: String::new(),
            voucher_id: "v".into(),
            media_id: media.into(),
            image_descriptor: String::new(),
            merchant: "m1".into(),
            rights_agent: "agent".into(),
            distributor: String::new(),
            owner: owner.into(),
            played_ms: 0,
        }
    }

    /// 2026-03-15 and 2026-04-15 (UTC), in milliseconds.
    const MARCH: i64 = 1_773_532_800_000;
    const APRIL: i64 = 1_776_211_200_000;

    /// The statement counts exactly the holder's entries in the month, per media and in
    /// all, as the totals count them; the sum over the artists is the month's line.
    #[test]
    fn a_statement_counts_the_holders_month_as_the_totals_do() {
        assert_eq!((month_of(MARCH), month_of(APRIL)), ("2026-03".to_string(), "2026-04".to_string()));
        let entries = vec![
            entry(UsageKind::Delivery, "Ada", "Label A", "song1", 100, MARCH),
            entry(UsageKind::Delivery, "Ada", "Label A", "song2", 250, MARCH),
            entry(UsageKind::Preview, "Ada", "Label A", "song1", 0, MARCH),
            entry(UsageKind::Refund, "Ada", "Label A", "song2", 250, MARCH),
            entry(UsageKind::Delivery, "Ada", "Label A", "song1", 100, APRIL),
            entry(UsageKind::Delivery, "Bo", "Label B", "song3", 70, MARCH),
        ];
        let ada = rights_statement(&entries, Holder::Artist, "Ada", "2026-03");
        assert_eq!(ada.total, TotalsLine { deliveries: 2, previews: 1, amount_minor: 350, units: 0, refunds: 1, refunded_minor: 250 });
        assert_eq!(ada.total.net_minor(), 100);
        assert_eq!(ada.media.iter().map(|m| (m.media_id.as_str(), m.line.deliveries)).collect::<Vec<_>>(), vec![("song1", 1), ("song2", 1)]);
        assert_eq!(ada.currencies, vec!["EUR".to_string()]);
        // The same lines as the totals over the same entries.
        let mut totals = BTreeMap::new();
        for entry in entries.iter().filter(|e| month_of(e.timestamp_ms) == "2026-03") {
            crate::royalty_log::add_to_totals(&mut totals, entry);
        }
        assert_eq!(totals[&(crate::royalty_log::Dimension::Artist, "Ada".to_string())], ada.total);
        let bo = rights_statement(&entries, Holder::Owner, "Label B", "2026-03");
        let month = totals[&(crate::royalty_log::Dimension::Period, "2026-03".to_string())];
        assert_eq!(month.amount_minor, ada.total.amount_minor + bo.total.amount_minor);
        assert_eq!(rights_statement(&entries, Holder::RightsAgent, "agent", "2026-04").total.deliveries, 1);
        // Control: another holder, another month, and a name that matches nothing.
        assert_eq!(rights_statement(&entries, Holder::Artist, "Ada", "2026-05").total, TotalsLine::default());
        assert!(rights_statement(&entries, Holder::Owner, "Ada", "2026-03").media.is_empty(), "Ada is an artist, not an owner");
    }

    #[test]
    fn holder_names_round_trip() {
        for holder in Holder::ALL {
            assert_eq!(Holder::of_name(holder.name()), Some(holder));
        }
        assert_eq!(Holder::of_name("merchant"), None);
    }
}
