//! `vouchsafe audit handover`: the recovery path of an engine that lost its projection
//! store (or joins a stream) without the royalty master key. The engine keeps only its
//! chain's current position (forward security), so it cannot chain the royalty log again
//! from sequence 1; the auditor, who holds the master key, can: it verifies the whole
//! stream (`audit replay`), then builds a projection store from it in a new directory, with
//! the chain key at the stream's end (`projections::store::chain_key`). Moved to the engine
//! host as `<data-dir>/projections`, the engine resumes from it and chains on; the master
//! key never goes there. Not here: the store itself (`projections::store`).

use anyhow::{Context, bail};
use projections::Live;
use std::path::{Path, PathBuf};

/// What a handover built.
#[derive(Debug, serde::Serialize)]
pub struct Handover {
    /// The new projection store's directory.
    pub store: PathBuf,
    pub last_seq: u64,
    pub royalty_entries: u64,
    /// The entry the engine will chain next (the chain key's position).
    pub chain_next_entry: u64,
    /// The state digest of the store (the one `audit replay` prints for the same events).
    pub state_digest: String,
}

/// Verifies the stream (a finding stops the handover: the report says where) and builds
/// the store in `out`, which must be new or empty.
pub async fn handover(backend: &crate::common::backend::BackendArgs, keys_dir: &Path, out: &Path) -> anyhow::Result<Result<Handover, super::AuditReport>> {
    if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!("{} is not empty: a handover builds a new projection store and never overwrites one (give a new directory)", out.display());
    }
    let report = super::replay(backend, keys_dir, None).await?;
    if report.first_bad.is_some() || !report.chain_ok {
        return Ok(Err(report));
    }
    let master = crate::common::keys::load_royalty_master(keys_dir)?;
    let public = crate::common::keys::load_engine_public(keys_dir)?;
    let log = backend.open_read_only().await?;
    let (path, key) = (out.to_path_buf(), master.clone());
    let (live, _) = tokio::task::spawn_blocking(move || Live::open(&path, Some(&key), Some(public)))
        .await
        .context("the store's open task failed")?
        .with_context(|| format!("cannot create a projection store in {}", out.display()))?;
    live.rebuild(log.as_ref()).await.with_context(|| format!("cannot build the projection store in {}", out.display()))?;
    let handover = live.read(|p| Handover {
        store: out.to_path_buf(),
        last_seq: p.last_seq.0,
        royalty_entries: p.royalty.entry_count(),
        chain_next_entry: p.royalty.entry_count(),
        state_digest: hex::encode(p.digest()),
    });
    if handover.last_seq < report.last_seq {
        bail!("the stream read for the store ended at {} before the verified one ({}); run the handover again", handover.last_seq, report.last_seq);
    }
    Ok(Ok(handover))
}
