//! `audit replay|statement --connect URL --cred auditor.cred`: the same commands over a
//! running engine's AuditService, so an auditor reaches an embedded engine (whose sled
//! log it may not open while the engine runs) without touching its files. The engine
//! replays and verifies; the answers become the same `AuditReport` and `RightsStatement`
//! the local commands print, so `--json` has the same keys either way.
//! Not here: the flags (`cli::args`), the local replay (`super::replay`).

use crate::common::client::AuditClient;
use futures::StreamExt;
use projections::audit::{AuditReport, FirstBad};
use projections::royalty_log::TotalsLine;
use projections::statement::{Holder, RightsStatement, StatementMedia};
use proto::v1 as pb;
use std::collections::BTreeMap;

fn line_of(line: Option<&pb::TotalsLine>) -> TotalsLine {
    let Some(line) = line else { return TotalsLine::default() };
    TotalsLine {
        deliveries: line.deliveries,
        previews: line.previews,
        amount_minor: line.amount_minor,
        units: line.units,
        refunds: line.refunds,
        refunded_minor: line.refunded_minor,
    }
}

/// The engine's `first_bad` text: the JSON of a `FirstBad`, or a reason alone.
fn first_bad_of(text: &str, last_seq: u64) -> Option<FirstBad> {
    if text.is_empty() {
        return None;
    }
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    Some(match parsed {
        Some(value) if value.get("reason").is_some() => FirstBad {
            seq: value["seq"].as_u64().unwrap_or(last_seq),
            entry: value["entry"].as_u64(),
            reason: value["reason"].as_str().unwrap_or_default().to_string(),
        },
        _ => FirstBad { seq: last_seq, entry: None, reason: text.to_string() },
    })
}

/// The engine's replay, followed to its last message. `Err(status)`: the engine refused.
pub async fn replay(audit: &mut AuditClient, pin: Option<[u8; 32]>) -> anyhow::Result<Result<AuditReport, tonic::Status>> {
    let request = pb::ReplayRequest { pinned_seal_hash: pin.map(|pin| pin.to_vec()).unwrap_or_default() };
    let mut progress = match audit.replay(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    let mut last = None;
    while let Some(message) = progress.next().await {
        match message {
            Ok(message) if message.done => last = Some(message),
            Ok(_) => {}
            Err(status) => return Ok(Err(status)),
        }
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("the engine's replay ended without a result; retry"))?;
    let mut totals: BTreeMap<String, BTreeMap<String, TotalsLine>> = BTreeMap::new();
    for line in &last.totals {
        totals.entry(line.dimension.clone()).or_default().insert(line.key.clone(), line_of(Some(line)));
    }
    Ok(Ok(AuditReport {
        events: last.events,
        first_seq: last.first_seq,
        last_seq: last.last_seq,
        state_digest: hex::encode(&last.state_digest),
        royalty_entries: last.royalty_entries,
        seals_verified: last.seals_verified,
        unsealed_entries: last.unsealed_entries,
        chain_ok: last.chain_ok,
        first_bad: first_bad_of(&last.first_bad, last.last_seq),
        totals,
        events_per_s: last.events_per_s,
        // AuditService does not carry checkpoints or seal hashes yet.
        checkpoint: None,
        newest_seal: None,
    }))
}

/// The engine's statement of `holder` `name` for `period`, with the replay's digest.
pub async fn statement(
    audit: &mut AuditClient,
    holder: Holder,
    name: &str,
    period: &str,
) -> anyhow::Result<Result<(RightsStatement, super::ReplayStamp), tonic::Status>> {
    let request = pb::RightsStatementRequest { holder: holder.name().into(), name: name.into(), period: period.into() };
    let answer = match audit.statement(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    let statement = RightsStatement {
        holder,
        name: answer.name,
        period: answer.period,
        total: line_of(answer.total.as_ref()),
        currencies: answer.currencies,
        media: answer
            .media
            .into_iter()
            .map(|media| StatementMedia { line: line_of(media.line.as_ref()), media_id: media.media_id, title: media.title, artist: media.artist })
            .collect(),
    };
    let stamp = super::ReplayStamp {
        events: answer.events,
        last_seq: answer.last_seq,
        state_digest: hex::encode(answer.state_digest),
        seals_verified: answer.seals_verified,
    };
    Ok(Ok((statement, stamp)))
}
