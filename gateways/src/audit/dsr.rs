//! `audit export --format dsr`: the royalty log's usages as a DDEX DSR flat file in the
//! Basic Audio Profile 1.2, Multi-Record Block variant (DSR Part 3; record definitions from
//! Part 8 and the profile's schema, ddexnet/dsrf `BasicAudioProfile/1.2`): tab-separated
//! records, every cell of a record present in the profile's order (an absent optional cell
//! is empty), `|` and `\` escaped with `\`, text cells that a spreadsheet would run as a
//! formula neutralised (`super::text_cell`).
//!
//! - `HEAD`; one `SY01.01` summary per (merchant, currency) of sales (PayAsYouGoModel,
//!   PermanentDownload: deliveries and duplication units; refunds and chargebacks are
//!   returns) and per (merchant, currency) of previews (FreeOfChargeModel, OnDemandStream),
//!   each in its own currency: amounts are never summed across currencies;
//! - a block per media (a single-resource release): `RE01`, `AS01.01`, then an `SU01` per
//!   (sales summary, unit price) with its usages and returns, an `SU02` per previews summary;
//! - `FOOT` with the line, summary and block counts.
//!
//! The file is named `DSR_<Recipient>_<Sender>_<Service>_<Period>_<Territory>_1of1_<Created>.tsv`
//! (Part 1, 8.1). The territory is `Worldwide`: sales carry none yet. Pure: the creation time
//! and parties are the caller's. DDEX standards are under DDEX's licences (README).

use super::{signed_amount, text_cell};
use projections::royalty::{Entry, UsageKind};
use std::collections::BTreeMap;

/// The profile and the versions written in `HEAD`.
pub const PROFILE: &str = "BasicAudioProfile";
pub const PROFILE_VERSION: &str = "1.2";
/// `dsrf/<Part 1>/<Part 2>/<Part 8>` (the versions this file follows).
pub const MESSAGE_VERSION: &str = "dsrf/1.4/1.4.1/1.4";
/// The territory of every summary and of the file name.
pub const TERRITORY: &str = "Worldwide";
/// The sender's DPID when none is given: syntactically a DPID, registered to nobody.
pub const SENDER_DPID_UNSET: &str = "PADPIDAUNREGISTERED";

/// Who sends the report to whom, and for which service.
#[derive(Clone, Debug, clap::Args)]
pub struct DsrParties {
    /// The DSR's sender DPID (`PADPIDA…`; a registered one in production).
    #[arg(long = "dsr-sender-dpid", default_value = SENDER_DPID_UNSET, value_parser = parse_dpid)]
    pub sender_dpid: String,
    /// The sender's name.
    #[arg(long = "dsr-sender-name", default_value = "Vouchsafe")]
    pub sender_name: String,
    /// The recipient's DPID (the licensor), when known.
    #[arg(long = "dsr-recipient-dpid", value_parser = parse_dpid)]
    pub recipient_dpid: Option<String>,
    /// The recipient's name.
    #[arg(long = "dsr-recipient-name")]
    pub recipient_name: Option<String>,
    /// The service described (ServiceDescription and the file name).
    #[arg(long = "dsr-service", default_value = "Downloads")]
    pub service: String,
}

impl Default for DsrParties {
    fn default() -> Self {
        Self { sender_dpid: SENDER_DPID_UNSET.into(), sender_name: "Vouchsafe".into(), recipient_dpid: None, recipient_name: None, service: "Downloads".into() }
    }
}

/// A DPID: `PADPIDA` then letters and digits.
pub fn parse_dpid(value: &str) -> Result<String, String> {
    match value.strip_prefix("PADPIDA") {
        Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()) => Ok(value.to_string()),
        _ => Err(format!("{value:?} is not a DDEX party id (PADPIDA followed by letters and digits)")),
    }
}

/// A DSR file: its name and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DsrFile {
    pub name: String,
    pub text: String,
}

/// Digits after the decimal point of a currency's major unit (ISO 4217).
pub fn currency_exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// Minor units as a decimal in the currency's major unit (`-12.50`).
pub fn decimal(minor: i128, currency: &str) -> String {
    let exponent = currency_exponent(currency);
    if exponent == 0 {
        return minor.to_string();
    }
    let scale = 10i128.pow(exponent);
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:0width$}", minor.abs() / scale, minor.abs() % scale, width = exponent as usize)
}

/// The minor units of a decimal cell written by `decimal` (`None`: not one).
pub fn minor_units(cell: &str, currency: &str) -> Option<i128> {
    let exponent = currency_exponent(currency) as usize;
    let (negative, digits) = cell.strip_prefix('-').map_or((false, cell), |rest| (true, rest));
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || fraction.len() != exponent || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i128 = format!("{whole}{fraction}").parse().ok()?;
    Some(if negative { -value } else { value })
}

/// A text cell: tabs and line breaks flattened, a formula neutralised, `\` and `|` escaped.
fn cell(text: &str) -> String {
    text_cell(text).replace('\\', "\\\\").replace('|', "\\|")
}

/// A file-name element: no underscore, no space (Part 1, 8.1).
fn name_element(text: &str) -> String {
    text.chars().map(|c| if c == '_' || c.is_whitespace() { '-' } else { c }).collect()
}

/// (year, month, day) of a day count since 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// What a summary counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Model {
    Sales,
    Previews,
}

/// A summary's key: what it counts, the merchant, the currency.
type SummaryKey = (Model, String, String);
/// A media's sales records: (summary, unit price) → (usages, returns).
type SalesCounts = BTreeMap<(SummaryKey, u64), (u64, u64)>;

#[derive(Default)]
struct Summary {
    id: usize,
    usages: i128,
    net_minor: i128,
}

/// The report of `entries`, created at `created_ms` (the caller's clock), `message_id` its id.
pub fn dsr(entries: &[Entry], parties: &DsrParties, message_id: &str, created_ms: i64) -> DsrFile {
    let created_days = created_ms.div_euclid(86_400_000);
    let (cy, cm, cd) = civil(created_days);
    let seconds = created_ms.div_euclid(1000).rem_euclid(86_400);
    let (hh, mm, ss) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let days: Vec<i64> = entries.iter().map(|entry| entry.timestamp_ms.div_euclid(86_400_000)).collect();
    let (first, last) = (civil(days.iter().copied().min().unwrap_or(created_days)), civil(days.iter().copied().max().unwrap_or(created_days)));
    let start = format!("{:04}-{:02}-01", first.0, first.1);
    let end = format!("{:04}-{:02}-{:02}", last.0, last.1, days_in_month(last.0, last.1));
    let period = if (first.0, first.1) == (last.0, last.1) { format!("{:04}-{:02}", first.0, first.1) } else { format!("{start}--{end}") };

    // Summaries: (model, merchant, currency), numbered in that order.
    let currency_of = |entry: &Entry| if entry.currency.is_empty() { "XXX".to_string() } else { entry.currency.clone() };
    let model_of = |entry: &Entry| if entry.kind == UsageKind::Preview { Model::Previews } else { Model::Sales };
    let mut summaries: BTreeMap<SummaryKey, Summary> = BTreeMap::new();
    // Per media: its first entry (title, artist, length) and its counts per (summary key, price).
    let mut media: BTreeMap<String, (&Entry, SalesCounts)> = BTreeMap::new();
    for entry in entries {
        let key = (model_of(entry), entry.merchant.clone(), currency_of(entry));
        let summary = summaries.entry(key.clone()).or_default();
        summary.net_minor += signed_amount(entry);
        let returned = matches!(entry.kind, UsageKind::Refund | UsageKind::Chargeback);
        summary.usages += if returned { -1 } else { 1 };
        let price = if entry.kind == UsageKind::Preview { 0 } else { entry.sale_price_minor };
        let counts = media.entry(entry.media_id.clone()).or_insert((entry, BTreeMap::new())).1.entry((key, price)).or_default();
        if returned { counts.1 += 1 } else { counts.0 += 1 }
    }
    for (position, summary) in summaries.values_mut().enumerate() {
        summary.id = position + 1;
    }

    let recipient = parties.recipient_dpid.clone().or_else(|| parties.recipient_name.clone()).unwrap_or_default();
    let mut lines: Vec<String> = Vec::new();
    lines.push(
        [
            "HEAD",
            MESSAGE_VERSION,
            PROFILE,
            PROFILE_VERSION,
            &cell(message_id),
            &format!("{cy:04}-{cm:02}-{cd:02}T{hh:02}:{mm:02}:{ss:02}Z"),
            "1",
            "1",
            &start,
            &end,
            &parties.sender_dpid,
            &cell(&parties.sender_name),
            &cell(&parties.service),
            parties.recipient_dpid.as_deref().unwrap_or_default(),
            &cell(parties.recipient_name.as_deref().unwrap_or_default()),
            "",
        ]
        .join("\t"),
    );
    for ((model, merchant, currency), summary) in &summaries {
        let (commercial_model, use_type) = match model {
            Model::Sales => ("PayAsYouGoModel", "PermanentDownload"),
            Model::Previews => ("FreeOfChargeModel", "OnDemandStream"),
        };
        lines.push(
            [
                "SY01.01",
                &summary.id.to_string(),
                &cell(merchant),
                "",
                commercial_model,
                use_type,
                TERRITORY,
                &cell(&parties.service),
                &summary.usages.to_string(),
                "",
                &cell(currency),
                &decimal(summary.net_minor, currency),
                "",
                "",
                "",
            ]
            .join("\t"),
        );
    }
    for (block, (media_id, (entry, counts))) in media.iter().enumerate() {
        let block_id = format!("B{}", block + 1);
        let length_s = entry.length_ms / 1000;
        lines.push(["RE01", &block_id, "R1", &cell(media_id), "", "", "", &cell(&entry.artist), "", &cell(&entry.title), "", "", "", "", ""].join("\t"));
        lines.push(
            [
                "AS01.01",
                &block_id,
                "A1",
                &cell(media_id),
                "",
                &cell(&entry.title),
                "",
                &cell(&entry.artist),
                "",
                &format!("PT{}M{}S", length_s / 60, length_s % 60),
                "SoundRecording",
                "",
            ]
            .join("\t"),
        );
        for (transaction, ((key, price), (usages, returns))) in counts.iter().enumerate() {
            let summary = summaries[key].id.to_string();
            let transaction_id = format!("{block_id}-T{}", transaction + 1);
            let line = match key.0 {
                Model::Sales => vec![
                    "SU01".to_string(),
                    block_id.clone(),
                    summary,
                    transaction_id,
                    "R1".into(),
                    "A1".into(),
                    "true".into(),
                    "false".into(),
                    usages.to_string(),
                    returns.to_string(),
                    decimal(i128::from(*price), &key.2),
                    String::new(),
                ],
                Model::Previews => {
                    vec![
                        "SU02".to_string(),
                        block_id.clone(),
                        summary,
                        transaction_id,
                        "R1".into(),
                        "A1".into(),
                        "false".into(),
                        usages.to_string(),
                        String::new(),
                        String::new(),
                    ]
                }
            };
            lines.push(line.join("\t"));
        }
    }
    let count = (lines.len() + 1).to_string();
    let blocks = media.len().to_string();
    lines.push(["FOOT", &count, &count, &summaries.len().to_string(), &blocks, &blocks].join("\t"));
    let mut text = lines.join("\n");
    text.push('\n');
    let name = format!(
        "DSR_{}_{}_{}_{period}_{TERRITORY}_1of1_{cy:04}{cm:02}{cd:02}T{hh:02}{mm:02}{ss:02}.tsv",
        name_element(&recipient),
        name_element(&parties.sender_dpid),
        name_element(&parties.service)
    );
    DsrFile { name, text }
}

#[cfg(test)]
mod tests;
