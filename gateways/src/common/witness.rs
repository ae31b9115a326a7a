//! The witness file: one JSON line per seal the engine appended (written by the server's
//! sealer), so an auditor can pin the newest seal it has seen (`audit replay --witness FILE`; a
//! convenience in the engine's own directory: a pin the engine cannot rewrite is one the
//! auditor keeps, a hash for `--pin` or a checkpoint for `--checkpoint`).

use anyhow::Context;
use engine::domain::event::RightsReportSealed;
use engine::domain::report::Report;
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
pub fn append(data_dir: &Path, seal: &RightsReportSealed) -> anyhow::Result<()> {
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
