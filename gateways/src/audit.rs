//! `vouchsafe audit …`: the auditor's commands. An auditor needs only `engine.pub.pem` and
//! `royalty-master.key` (no engine private key) and read access to the stream.

use anyhow::{bail, Context};
use engine::domain::event::RightsReportSealed;
use engine::domain::report::Report;
use projections::audit::{self, AuditReport};
use std::io::Write;
use std::path::Path;

/// The witness file, under the data dir: one JSON line per seal the engine appended, so an
/// auditor can pin the newest seal it has seen.
pub const WITNESS_FILE: &str = "witness/seals.jsonl";

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Witness {
    pub seal_hash: String,
    pub epoch: u64,
    pub first_entry: u64,
    pub last_entry: u64,
    pub last_stream_seq: u64,
}

/// Appends a seal to the witness file (and syncs it).
pub fn witness(data_dir: &Path, seal: &RightsReportSealed) -> anyhow::Result<()> {
    let path = data_dir.join(WITNESS_FILE);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let line = serde_json::to_string(&Witness {
        seal_hash: hex::encode(Report::seal_hash(seal)),
        epoch: seal.epoch,
        first_entry: seal.first_entry,
        last_entry: seal.last_entry,
        last_stream_seq: seal.last_stream_seq,
    })?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "{line}")?;
    file.sync_all()?;
    Ok(())
}

/// `--pin`: a seal hash in hex, or a witness file whose last line names the seal.
pub fn parse_pin(pin: &str) -> anyhow::Result<[u8; 32]> {
    let hex_text = if Path::new(pin).is_file() {
        let text = std::fs::read_to_string(pin).with_context(|| format!("cannot read witness file {pin}"))?;
        let last = text.lines().rev().find(|line| !line.trim().is_empty()).with_context(|| format!("witness file {pin} is empty"))?;
        let witness: Witness = serde_json::from_str(last).with_context(|| format!("the last line of {pin} is not a witness record"))?;
        witness.seal_hash
    } else {
        pin.to_string()
    };
    let mut hash = [0u8; 32];
    if hex::decode_to_slice(hex_text.trim(), &mut hash).is_err() {
        bail!("--pin takes a 64-hex-digit seal hash or a witness file ({WITNESS_FILE})");
    }
    Ok(hash)
}

/// Replays the stream as an auditor.
pub async fn replay(backend: &crate::backend::BackendArgs, keys_dir: &Path, pin: Option<[u8; 32]>) -> anyhow::Result<AuditReport> {
    let master = crate::keys::load_royalty_master(keys_dir)?;
    let public = crate::keys::load_engine_public(keys_dir)?;
    let log = backend.open().await?;
    Ok(audit::replay(log.as_ref(), &master, &public, pin, |_| {}).await?)
}

/// The human summary of an audit, for stderr.
pub fn describe(report: &AuditReport) -> String {
    let mut text = format!(
        "audit replay: {} events (seq {}..={}), {} royalty entries, {} seals verified, {} entries not yet sealed (MAC chain only), {:.0} events/s\nstate digest {}",
        report.events, report.first_seq, report.last_seq, report.royalty_entries, report.seals_verified, report.unsealed_entries, report.events_per_s, report.state_digest
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
