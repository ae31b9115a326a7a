//! `vouchsafe audit …`: the auditor's commands. An auditor needs only `engine.pub.pem` and
//! `royalty-master.key` (no engine private key) and read access to the stream: on
//! JetStream the commands connect read-only (`BackendArgs::open_read_only`), which the
//! `auditor` user of deploy/nats-auth.conf allows.

pub use crate::common::witness::WITNESS_FILE;
use crate::common::witness::Witness;
use anyhow::{Context, bail};
use projections::audit::{self, AuditReport};
use std::path::Path;

/// `--pin`: a seal hash in hex, only (a file is named by `--witness`, never guessed from a
/// pin that happens to name one).
pub fn parse_pin(pin: &str) -> anyhow::Result<[u8; 32]> {
    let mut hash = [0u8; 32];
    if hex::decode_to_slice(pin.trim(), &mut hash).is_err() {
        bail!("--pin takes a 64-hex-digit seal hash (a witness file goes to --witness)");
    }
    Ok(hash)
}

/// `--witness FILE`: the seal hash on the last line of a witness file (`WITNESS_FILE` in the
/// engine's data directory: a convenience the engine writes, so an auditor who wants a pin
/// the engine cannot rewrite keeps the hash, or a saved checkpoint, elsewhere).
pub fn pin_from_witness(file: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read witness file {}", file.display()))?;
    let last = text.lines().rev().find(|line| !line.trim().is_empty()).with_context(|| format!("witness file {} is empty", file.display()))?;
    let witness: Witness = serde_json::from_str(last).with_context(|| format!("the last line of {} is not a witness record", file.display()))?;
    parse_pin(&witness.seal_hash).with_context(|| format!("the last line of {} names no seal hash", file.display()))
}

/// The pin of `--pin HASH` or `--witness FILE` (clap lets only one through).
pub fn pin_of(pin: Option<&str>, witness: Option<&Path>) -> anyhow::Result<Option<[u8; 32]>> {
    match (pin, witness) {
        (Some(pin), _) => parse_pin(pin).map(Some),
        (None, Some(file)) => pin_from_witness(file).map(Some),
        (None, None) => Ok(None),
    }
}

/// Replays the stream as an auditor; seals' checkpoints are checked with the key
/// directory's `checkpoint.vkey` when it has one.
pub async fn replay(backend: &crate::common::backend::BackendArgs, keys_dir: &Path, pin: Option<[u8; 32]>) -> anyhow::Result<AuditReport> {
    let checkpoint_key = checkpoints::verifier(keys_dir, None)?;
    replay_with(backend, keys_dir, audit::AuditOptions { checkpoint_key, pin, ..Default::default() }).await
}

/// As `replay`, with every option (an incremental audit: `since`).
pub async fn replay_with(backend: &crate::common::backend::BackendArgs, keys_dir: &Path, mut options: audit::AuditOptions) -> anyhow::Result<AuditReport> {
    let master = crate::common::keys::load_royalty_master(keys_dir)?;
    // Every key of the set: each seal is checked with the one it names.
    let set = crate::common::keys::load_engine_keyset(keys_dir)?;
    let public = set.current().clone();
    options.older_engine_keys = set.iter().skip(1).cloned().collect();
    let log = backend.open_read_only().await?;
    let bar = crate::common::progress::events(log.last_seq().await?.0, "audit replay");
    let (report, _) = audit::replay_with(log.as_ref(), &master, &public, options, |events| {
        if let Some(bar) = &bar {
            bar.set_position(events);
        }
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(report)
}

/// The human summary of an audit, for stderr.
pub fn describe(report: &AuditReport) -> String {
    let mut text = format!(
        "audit replay: {} events (seq {}..={}), {} royalty entries, {} seals verified, {} entries not yet sealed (MAC chain only), {:.0} events/s\nstate digest {}",
        report.events,
        report.first_seq,
        report.last_seq,
        report.royalty_entries,
        report.seals_verified,
        report.unsealed_entries,
        report.events_per_s,
        report.state_digest
    );
    match &report.first_bad {
        None => text.push_str("\nOK: sequences contiguous, every event applies, the royalty chain and every seal verify"),
        Some(bad) => text.push_str(&format!(
            "\nFAILED at stream sequence {}{}: {}",
            bad.seq,
            bad.entry.map(|entry| format!(", royalty entry {entry}")).unwrap_or_default(),
            bad.reason
        )),
    }
    text
}

use projections::export::{self, ExportedLog, ProofBundle, VerifyReport};
use projections::royalty::{Entry, UsageKind};

/// `audit export --format …`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The royalty log itself: entry ciphertexts, chain values, signed seals (JSON, one
    /// entry a line: a cut or damaged file names where it stops parsing).
    Log,
    /// One usage record per line (CSV with a header).
    Csv,
    /// Totals by dimension and every usage record (JSON).
    Json,
    /// A DDEX DSR flat file, Basic Audio Profile 1.2 (README: "The DSR export"); into a
    /// directory --out under the profile's file name.
    Dsr,
    /// The log as C2SP tlog-tiles static files in the directory --out (checkpoint, tiles,
    /// entry bundles), as `serve --tlog-listen` serves them.
    Tiles,
}

/// The territory written in CSV rows: the engine sells without territories yet.
pub const DSR_TERRITORY: &str = "WW";

/// An entry's royalty-bearing amount as it counts in sums: a sale's price, minus for a
/// refund or chargeback, nothing for a preview.
pub fn signed_amount(entry: &Entry) -> i128 {
    match entry.kind {
        UsageKind::Delivery | UsageKind::Duplication => i128::from(entry.sale_price_minor),
        UsageKind::Refund | UsageKind::Chargeback => -i128::from(entry.sale_price_minor),
        UsageKind::Preview => 0,
    }
}

/// A text cell of a CSV or DSR export: no tab or line break, and a cell a spreadsheet would
/// read as a formula (starting with `=`, `+`, `-` or `@`) is quoted with a leading `'`.
pub fn text_cell(text: &str) -> String {
    let flat = text.replace(['\t', '\n', '\r'], " ");
    if flat.starts_with(['=', '+', '-', '@']) { format!("'{flat}") } else { flat }
}

fn usage_row(line: usize, entry: &Entry) -> Vec<String> {
    let clean = text_cell;
    vec![
        line.to_string(),
        match entry.kind {
            UsageKind::Delivery => "DELIVERY".into(),
            UsageKind::Preview => "PREVIEW".into(),
            UsageKind::Duplication => "DUPLICATION".into(),
            UsageKind::Refund => "REFUND".into(),
            UsageKind::Chargeback => "CHARGEBACK".into(),
        },
        if entry.kind == UsageKind::Preview { "N".into() } else { "Y".into() },
        clean(&entry.media_id),
        clean(&entry.title),
        clean(&entry.artist),
        clean(&entry.rights_agent),
        clean(&entry.owner),
        clean(&entry.distributor),
        clean(&entry.merchant),
        DSR_TERRITORY.into(),
        clean(&entry.voucher_id),
        entry.timestamp_ms.to_string(),
        signed_amount(entry).to_string(),
        clean(&entry.currency),
        entry.played_ms.to_string(),
        entry.source_seq.to_string(),
    ]
}

const USAGE_COLUMNS: [&str; 17] = [
    "line",
    "usage",
    "royalty_bearing",
    "media_id",
    "title",
    "artist",
    "rights_agent",
    "owner",
    "distributor",
    "merchant",
    "territory",
    "voucher_id",
    "timestamp_ms",
    "price_minor",
    "currency",
    "played_ms",
    "stream_seq",
];

/// Rebuilds the royalty log from the stream and checks it; refuses to export a stream that
/// does not audit clean (an export must not launder tampering).
pub async fn rebuild(backend: &crate::common::backend::BackendArgs, keys_dir: &Path) -> anyhow::Result<(AuditReport, ExportedLog, Vec<Entry>)> {
    let master = crate::common::keys::load_royalty_master(keys_dir)?;
    let set = crate::common::keys::load_engine_keyset(keys_dir)?;
    let log = backend.open_read_only().await?;
    let bar = crate::common::progress::events(log.last_seq().await?.0, "rebuilding the royalty log");
    let options = audit::AuditOptions { older_engine_keys: set.iter().skip(1).cloned().collect(), ..Default::default() };
    let (report, projections) = audit::replay_with(log.as_ref(), &master, set.current(), options, |events| {
        if let Some(bar) = &bar {
            bar.set_position(events);
        }
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if !report.ok() {
        bail!("the stream does not audit clean, nothing exported:\n{}", describe(&report));
    }
    let exported = export::export_log(&projections.royalty);
    let (entries, _, fault) = export::open_entries(&exported, &master);
    if let Some(fault) = fault {
        bail!("the rebuilt royalty log does not verify at entry {:?}: {}", fault.entry, fault.reason);
    }
    Ok((report, exported, entries))
}

/// Writes the export in `format` to `out`.
pub fn write_export(format: ExportFormat, report: &AuditReport, exported: &ExportedLog, entries: &[Entry], out: &Path) -> anyhow::Result<()> {
    let bytes = match format {
        ExportFormat::Log => export::write_lines(exported),
        ExportFormat::Json => serde_json::to_vec_pretty(&serde_json::json!({ "totals": report.totals, "usages": entries }))?,
        ExportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(USAGE_COLUMNS)?;
            for (line, entry) in entries.iter().enumerate() {
                writer.write_record(usage_row(line + 1, entry))?;
            }
            writer.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?
        }
        ExportFormat::Dsr => {
            write_dsr(report, entries, &dsr::DsrParties::default(), out)?;
            return Ok(());
        }
        ExportFormat::Tiles => bail!("tiles are a directory of files: write_tiles writes them"),
    };
    std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))
}

/// What `write_tiles` wrote.
#[derive(Debug, serde::Serialize)]
pub struct TilesWritten {
    pub files: usize,
    pub bytes: u64,
    pub tree_size: u64,
}

/// `audit export --format tiles`: the exported log's sealed entries as C2SP tlog-tiles in
/// `dir` (the newest seal's checkpoint, every tile and bundle of its size, the partial
/// ones of each earlier checkpoint). The leaves commit to the entry keys, so this needs
/// the royalty master key.
pub fn write_tiles(exported: &ExportedLog, keys_dir: &Path, dir: &Path) -> anyhow::Result<TilesWritten> {
    let master = crate::common::keys::load_royalty_master(keys_dir)?;
    let mut tiled = projections::tiles::TiledLog::new(&master, exported.epoch);
    tiled.extend(&exported.entries).map_err(|fault| anyhow::anyhow!("the royalty log does not verify: {fault}"))?;
    for note in exported.seals.iter().filter_map(|seal| seal.checkpoint.as_ref()) {
        tiled.publish(&note.note).map_err(|error| anyhow::anyhow!("a seal's checkpoint cannot be published: {error}"))?;
    }
    if tiled.note().is_none() {
        bail!("no seal carries a checkpoint yet: nothing to tile (run the engine until it seals)");
    }
    let files = tiled.files();
    let mut bytes = 0;
    for (path, content) in &files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&file, content).with_context(|| format!("cannot write {}", file.display()))?;
        bytes += content.len() as u64;
    }
    Ok(TilesWritten { files: files.len(), bytes, tree_size: tiled.size() })
}

/// Writes the DSR of `entries` (`dsr::dsr`, created now): into `out` under the profile's
/// file name when `out` is a directory, else to `out`; the path written.
pub fn write_dsr(report: &AuditReport, entries: &[Entry], parties: &dsr::DsrParties, out: &Path) -> anyhow::Result<std::path::PathBuf> {
    let created_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64);
    let message_id = &report.state_digest[..16.min(report.state_digest.len())];
    let file = dsr::dsr(entries, parties, message_id, created_ms);
    let path = if out.is_dir() { out.join(&file.name) } else { out.to_path_buf() };
    std::fs::write(&path, file.text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// `audit verify FILE`: an exported log alone.
pub fn verify_file(file: &Path, keys_dir: &Path, pin: Option<[u8; 32]>) -> anyhow::Result<VerifyReport> {
    let master = crate::common::keys::load_royalty_master(keys_dir)?;
    let public = crate::common::keys::load_engine_keyset(keys_dir)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let checkpoint_key = checkpoints::verifier(keys_dir, None)?;
    // A file that no longer parses is a failed verification naming where the damage starts.
    Ok(match export::read_log(&bytes) {
        Ok(log) => export::verify_log_with(&log, &master, &public, checkpoint_key.as_ref(), pin),
        Err(damage) => export::verify_damaged(&damage, &master, &public, checkpoint_key.as_ref()),
    })
}

/// `audit prove --voucher ID`: inclusion bundles for the voucher's deliveries.
pub async fn prove(backend: &crate::common::backend::BackendArgs, keys_dir: &Path, voucher: &str) -> anyhow::Result<Vec<ProofBundle>> {
    let (_, exported, _) = rebuild(backend, keys_dir).await?;
    let master = crate::common::keys::load_royalty_master(keys_dir)?;
    let public = crate::common::keys::load_engine_keyset(keys_dir)?;
    Ok(export::prove(&exported, &master, &public, voucher)?)
}

/// `audit prove --tlog-proof DIR`: a `.tlog-proof` per delivery of `voucher`, written into
/// `dir` as `<voucher>-<entry index>.tlog-proof`; the files written.
pub async fn prove_tlog(backend: &crate::common::backend::BackendArgs, keys_dir: &Path, voucher: &str, dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let (_, exported, _) = rebuild(backend, keys_dir).await?;
    let master = crate::common::keys::load_royalty_master(keys_dir)?;
    let public = crate::common::keys::load_engine_keyset(keys_dir)?;
    let proofs = export::prove_tlog(&exported, &master, &public, voucher)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (index, text) in proofs {
        let file = dir.join(format!("{voucher}-{index}.tlog-proof"));
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
        written.push(file);
    }
    Ok(written)
}

/// `audit check-proof FILE`: a JSON bundle file with the engine's public key alone (and
/// `checkpoint.vkey` when the directory has it), or a `.tlog-proof` with `checkpoint.vkey`.
pub fn check_proof_file(file: &Path, keys_dir: &Path) -> anyhow::Result<Vec<Result<export::Proven, String>>> {
    let checkpoint_key = checkpoints::verifier(keys_dir, None)?;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    if text.starts_with(engine::note::TLOG_PROOF_HEADER) {
        let verifier = checkpoint_key.context("a .tlog-proof is checked with the checkpoint verifier key: checkpoint.vkey in --keys")?;
        return Ok(vec![export::check_tlog_proof(&text, &verifier)]);
    }
    let public = crate::common::keys::load_engine_keyset(keys_dir)?;
    let bundles: Vec<ProofBundle> = serde_json::from_str(&text).with_context(|| format!("{} is not a proof bundle (audit prove)", file.display()))?;
    if bundles.is_empty() {
        bail!("{} holds no proofs", file.display());
    }
    Ok(bundles.iter().map(|bundle| export::check_proof_with(bundle, &public, checkpoint_key.as_ref())).collect())
}

pub mod checkpoints;
pub mod dsr;
pub mod handover;
pub mod remote;

/// Which replay a statement comes from: its events, head, digest and seals.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplayStamp {
    pub events: u64,
    pub last_seq: u64,
    pub state_digest: String,
    pub seals_verified: u64,
}

/// `audit statement` on the log itself: a verified replay, then the holder's month.
pub async fn statement(
    backend: &crate::common::backend::BackendArgs,
    keys_dir: &Path,
    holder: projections::statement::Holder,
    name: &str,
    period: &str,
) -> anyhow::Result<(projections::statement::RightsStatement, ReplayStamp)> {
    let master = crate::common::keys::load_royalty_master(keys_dir)?;
    let public = crate::common::keys::load_engine_keyset(keys_dir)?;
    let log = backend.open_read_only().await?;
    let bar = crate::common::progress::events(log.last_seq().await?.0, "audit statement");
    let verified = projections::statement::verified_statement(log.as_ref(), &master, &public, holder, name, period, |events| {
        if let Some(bar) = &bar {
            bar.set_position(events);
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (report, statement) = match verified {
        Ok(verified) => verified,
        Err(projections::statement::StatementError::NotClean { report, .. }) => {
            bail!("the stream does not audit clean, no statement:\n{}", describe(&report))
        }
        Err(error) => return Err(error.into()),
    };
    let stamp = ReplayStamp { events: report.events, last_seq: report.last_seq, state_digest: report.state_digest, seals_verified: report.seals_verified };
    Ok((statement, stamp))
}

/// The `--json` object of `audit statement` (the same keys locally and with `--connect`).
pub fn statement_json(statement: &projections::statement::RightsStatement, stamp: &ReplayStamp) -> serde_json::Value {
    let line = |line: &projections::royalty_log::TotalsLine| {
        let mut value = serde_json::to_value(line).unwrap_or_default();
        value["net_minor"] = serde_json::json!(line.net_minor());
        value
    };
    serde_json::json!({
        "holder": statement.holder.name(),
        "name": statement.name,
        "period": statement.period,
        "total": line(&statement.total),
        "currencies": statement.currencies,
        "media": statement.media.iter().map(|media| {
            let mut value = line(&media.line);
            value["media_id"] = serde_json::json!(media.media_id);
            value["title"] = serde_json::json!(media.title);
            value["artist"] = serde_json::json!(media.artist);
            value
        }).collect::<Vec<_>>(),
        "events": stamp.events,
        "last_seq": stamp.last_seq,
        "state_digest": stamp.state_digest,
        "seals_verified": stamp.seals_verified,
    })
}

/// The human form of a statement, for stderr.
pub fn describe_statement(statement: &projections::statement::RightsStatement, stamp: &ReplayStamp) -> String {
    let total = &statement.total;
    let mut text = format!(
        "statement of {} {:?} for {} (a verified replay of {} events, seq {}, {} seals verified)\n  {} deliveries, {} units, {} previews, gross {} minor units, {} refunds ({}), net {} {}",
        statement.holder.name().replace('_', " "),
        statement.name,
        statement.period,
        stamp.events,
        stamp.last_seq,
        stamp.seals_verified,
        total.deliveries,
        total.units,
        total.previews,
        total.amount_minor,
        total.refunds,
        total.refunded_minor,
        total.net_minor(),
        statement.currencies.join("+"),
    );
    for media in &statement.media {
        text.push_str(&format!(
            "\n  {} {:?} by {:?}: {} deliveries, {} units, {} previews, net {}",
            media.media_id,
            media.title,
            media.artist,
            media.line.deliveries,
            media.line.units,
            media.line.previews,
            media.line.net_minor()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(title: &str, merchant: &str) -> Entry {
        Entry {
            kind: UsageKind::Refund,
            source_seq: 7,
            timestamp_ms: 1_767_225_600_000,
            title: title.into(),
            artist: "@artist".into(),
            authors: vec![],
            length_ms: 1,
            sale_price_minor: 100,
            currency: "EUR".into(),
            consumer_cert: String::new(),
            voucher_id: "v1".into(),
            media_id: "+md1".into(),
            image_descriptor: String::new(),
            merchant: merchant.into(),
            rights_agent: "-agent".into(),
            distributor: "d".into(),
            owner: "o".into(),
            played_ms: 0,
        }
    }

    /// A cell a spreadsheet would run as a formula: `=`, `+`, `@`, or `-` not starting a number
    /// (an integer or a decimal amount).
    fn live_formula(cell: &str) -> bool {
        cell.starts_with(['=', '+', '@']) || (cell.starts_with('-') && cell.parse::<f64>().is_err())
    }

    /// Text cells that a spreadsheet would run as formulas are quoted in CSV and DSR
    /// exports; numbers (a refund's negative amount) stay numbers. Control: plain text is
    /// left as it is.
    #[test]
    fn formula_cells_are_neutralised_in_csv_and_dsr() {
        assert_eq!(text_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(text_cell("+1"), "'+1");
        assert_eq!(text_cell("-2"), "'-2");
        assert_eq!(text_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(text_cell("a\tb\nc"), "a b c");
        assert_eq!(text_cell("Plain title"), "Plain title");
        let entries = vec![entry("=cmd|' /C calc'!A0", "=merchant")];
        let report = AuditReport {
            events: 1,
            first_seq: 1,
            last_seq: 1,
            state_digest: "00".repeat(32),
            royalty_entries: 1,
            seals_verified: 0,
            unsealed_entries: 1,
            chain_ok: true,
            first_bad: None,
            totals: Default::default(),
            events_per_s: 1.0,
            checkpoint: None,
            newest_seal: None,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let csv_path = dir.path().join("usages.csv");
        let log = ExportedLog { format: export::LOG_FORMAT.into(), epoch: 1, entries: vec![], seals: vec![] };
        write_export(ExportFormat::Csv, &report, &log, &entries, &csv_path).expect("csv");
        let csv = std::fs::read_to_string(&csv_path).expect("read");
        let row: Vec<String> = csv::Reader::from_reader(csv.as_bytes()).records().next().expect("a row").expect("csv").iter().map(str::to_string).collect();
        for cell in &row {
            assert!(!live_formula(cell), "a live formula cell: {cell:?} in {row:?}");
        }
        assert!(row.contains(&"'=cmd|' /C calc'!A0".to_string()) && row.contains(&"-100".to_string()), "{row:?}");
        let dsr = dsr::dsr(&entries, &dsr::DsrParties::default(), "m1", 0).text;
        for cell in dsr.lines().flat_map(|line| line.split('\t')) {
            assert!(!live_formula(cell), "a live formula cell in the DSR: {cell:?}");
        }
        assert!(dsr.contains("\t'=merchant\t"), "{dsr}");
        assert!(live_formula("=1") && live_formula("-x") && !live_formula("-100") && !live_formula("'=x"), "the oracle itself");
    }
}
