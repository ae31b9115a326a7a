//! The auditor's replay: rebuild every projection from sequence 1 in memory, trusting
//! nothing but the engine's public key and the royalty master key. It checks that stream
//! sequences are contiguous (events are never deleted, so a gap is tampering), that every
//! event decodes and applies, that the royalty chain recomputes and every seal matches it
//! (signature, link, range, head, Merkle root, usage digest), and that the stream extends
//! the pinned seal. It reports the first bad position and the totals.

use crate::royalty_log::{Dimension, SealFault, TotalsLine};
use crate::Projections;
use engine::crypto::{RsaPublic, SecretKey};
use engine::domain::report::Report;
use engine::ids::Seq;

use engine::log::EventLog;
use std::collections::BTreeMap;
use std::time::Instant;

/// Events read per batch.
pub const REPLAY_BATCH_EVENTS: usize = 4096;

/// The first thing that is wrong, with its position.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FirstBad {
    pub seq: u64,
    /// The royalty entry index, when the fault is in the royalty log.
    pub entry: Option<u64>,
    pub reason: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditReport {
    pub events: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub state_digest: String,
    pub royalty_entries: u64,
    pub seals_verified: u64,
    /// Entries after the last seal: protected by the MAC chain only.
    pub unsealed_entries: u64,
    pub chain_ok: bool,
    pub first_bad: Option<FirstBad>,
    pub totals: BTreeMap<String, BTreeMap<String, TotalsLine>>,
    pub events_per_s: f64,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.chain_ok && self.first_bad.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("reading the stream failed: {0}")]
    Read(String),
}

/// Replays the whole stream. `pin` is the hash of the newest seal the auditor has seen.
pub async fn replay(log: &dyn EventLog, master: &SecretKey, engine_key: &RsaPublic, pin: Option<[u8; 32]>, progress: impl FnMut(u64)) -> Result<AuditReport, AuditError> {
    Ok(replay_full(log, master, engine_key, pin, progress).await?.0)
}

/// As `replay`, also returning the rebuilt projections (for exports and proofs).
pub async fn replay_full(
    log: &dyn EventLog,
    master: &SecretKey,
    engine_key: &RsaPublic,
    pin: Option<[u8; 32]>,
    mut progress: impl FnMut(u64),
) -> Result<(AuditReport, Projections), AuditError> {
    let started = Instant::now();
    let mut projections = Projections::with_royalty_keys(master, Some(engine_key.clone()));
    let mut first_bad: Option<FirstBad> = None;
    // Pipelined: while one batch is decoded and applied (royalty chain included) on the
    // blocking pool, the next one is fetched from the log.
    let mut batch = log.read_from(Seq(1), REPLAY_BATCH_EVENTS).await.map_err(|e| AuditError::Read(e.to_string()))?;
    while let Some(last) = batch.last() {
        let from = Seq(last.seq.0 + 1);
        let apply = tokio::task::spawn_blocking(move || {
            let result = apply_batch(&mut projections, &batch);
            (projections, result)
        });
        let (next, applied) = tokio::join!(log.read_from(from, REPLAY_BATCH_EVENTS), apply);
        let (applied_projections, result) = applied.map_err(|e| AuditError::Read(format!("the replay task failed: {e}")))?;
        projections = applied_projections;
        progress(projections.events);
        if let Err(bad) = result {
            first_bad = Some(bad);
            break;
        }
        batch = next.map_err(|e| AuditError::Read(e.to_string()))?;
    }
    let royalty = &projections.royalty;
    if first_bad.is_none()
        && let Some(SealFault { seq, first_entry, reason, .. }) = royalty.seal_faults.first()
    {
        first_bad = Some(FirstBad { seq: seq.0, entry: Some(*first_entry), reason: format!("rights report seal: {reason}") });
    }
    if first_bad.is_none()
        && let Some(pin) = pin
        && !royalty.seals.iter().any(|seal| Report::seal_hash(seal) == pin)
    {
        first_bad = Some(FirstBad {
            seq: projections.last_seq.0 + 1,
            entry: Some(royalty.next_seal_entry()),
            reason: "the stream does not extend the pinned seal (truncated, or a different stream)".into(),
        });
    }
    let mut totals: BTreeMap<String, BTreeMap<String, TotalsLine>> = BTreeMap::new();
    for ((dimension, key), line) in &royalty.totals {
        totals.entry(dimension_name(*dimension).to_string()).or_default().insert(key.clone(), *line);
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let report = AuditReport {
        events: projections.events,
        first_seq: u64::from(projections.events > 0),
        last_seq: projections.last_seq.0,
        state_digest: hex::encode(projections.digest()),
        royalty_entries: royalty.entries.len() as u64,
        seals_verified: royalty.seals_verified,
        unsealed_entries: (royalty.entries.len() as u64).saturating_sub(royalty.next_seal_entry()),
        chain_ok: royalty.seal_faults.is_empty() && first_bad.is_none(),
        first_bad,
        totals,
        events_per_s: projections.events as f64 / seconds,
    };
    Ok((report, projections))
}

/// Applies a batch in order; the first finding stops it.
fn apply_batch(projections: &mut Projections, batch: &[engine::log::StoredEvent]) -> Result<(), FirstBad> {
    for stored in batch {
        if let Err(finding) = projections.apply(stored) {
            return Err(FirstBad { seq: finding.seq().0, entry: None, reason: finding.to_string() });
        }
    }
    Ok(())
}

fn dimension_name(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Artist => "artist",
        Dimension::Media => "media",
        Dimension::RightsAgent => "rights_agent",
        Dimension::Merchant => "merchant",
        Dimension::Period => "period",
    }
}
