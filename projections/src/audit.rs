//! The auditor's replay: rebuild every projection from sequence 1 in memory, trusting
//! nothing but the engine's public key and the royalty master key. It checks that stream
//! sequences are contiguous (events are never deleted, so a gap is tampering), that every
//! event decodes and applies, that the royalty chain recomputes and every seal matches it
//! (signature, link, range, head, Merkle root, usage digest), and that the stream extends
//! the pinned seal. It reports the first bad position and the totals.
//!
//! An incremental audit (`AuditOptions::since`, a checkpoint the auditor verified before)
//! applies and checks every event as well, but leaves the royalty entries before the
//! checkpoint's tree size unchained: the pinned root covers them, and the chain and the
//! RFC 6962 tree resume at the seal carrying that checkpoint (`royalty_log::pinned`). The
//! checkpoint binds the entries' tree, not the events before it: pinning that seal's hash
//! too (`pin`) binds them (a rewritten, re-signed prefix fails; `tests/checkpoints.rs`).

use crate::royalty_log::{Dimension, SealFault, TotalsLine};
use crate::{Prepared, Projections};
use engine::crypto::{RsaPublic, SecretKey};
use engine::domain::report::Report;
use engine::ids::Seq;
use engine::note::{Checkpoint, NoteVerifier};

use engine::log::{EventLog, ReadError};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Instant;

/// Events handed to the applying side per batch: small, so that applying starts soon after
/// reading does and little is left to apply once the read ends.
pub const REPLAY_BATCH_EVENTS: usize = 256;
/// Batches read ahead of the applying side (bounds the replay's memory to 16,384 events).
const REPLAY_CHANNEL_BATCHES: usize = 64;

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
    /// The newest seal's C2SP checkpoint (a signed note), if it has one: what the auditor
    /// keeps to pin the next, incremental, audit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// The newest seal's hash (hex): the `--pin` that binds the events up to it, which a
    /// checkpoint alone does not (an incremental audit wants both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_seal: Option<String>,
}

/// What an audit pins and checks besides the stream and the two keys.
#[derive(Clone, Debug, Default)]
pub struct AuditOptions {
    /// The checkpoint key (`checkpoint.vkey`): every seal's checkpoint must be signed by it.
    pub checkpoint_key: Option<NoteVerifier>,
    /// The hash of the newest seal the auditor has seen.
    pub pin: Option<[u8; 32]>,
    /// An incremental audit from this checkpoint, which the caller verified.
    pub since: Option<Checkpoint>,
    /// The engine's keys before the current one (`engine.pub.pem` after a rotation): each
    /// seal is checked with the key it names.
    pub older_engine_keys: Vec<RsaPublic>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.chain_ok && self.first_bad.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    // The cause is in the message (callers log with `%`), so it is not also a `source`,
    // which `{:#}` would print twice.
    #[error("reading the stream failed: {0}")]
    Read(ReadError),
    #[error("the replay's apply task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// Replays the whole stream. `pin` is the hash of the newest seal the auditor has seen.
pub async fn replay(
    log: &dyn EventLog,
    master: &SecretKey,
    engine_key: &RsaPublic,
    pin: Option<[u8; 32]>,
    progress: impl FnMut(u64),
) -> Result<AuditReport, AuditError> {
    Ok(replay_full(log, master, engine_key, pin, progress).await?.0)
}

/// As `replay`, also returning the rebuilt projections (for exports and proofs).
pub async fn replay_full(
    log: &dyn EventLog,
    master: &SecretKey,
    engine_key: &RsaPublic,
    pin: Option<[u8; 32]>,
    progress: impl FnMut(u64),
) -> Result<(AuditReport, Projections), AuditError> {
    replay_with(log, master, engine_key, AuditOptions { pin, ..AuditOptions::default() }, progress).await
}

/// As `replay_full`, with a checkpoint key and a pin of either kind.
pub async fn replay_with(
    log: &dyn EventLog,
    master: &SecretKey,
    engine_key: &RsaPublic,
    options: AuditOptions,
    mut progress: impl FnMut(u64),
) -> Result<(AuditReport, Projections), AuditError> {
    let started = Instant::now();
    let pin = options.pin;
    let mut projections = Projections::with_royalty_keys(master, Some(engine_key.clone()));
    if let Some(since) = options.since {
        projections.royalty = crate::royalty_log::RoyaltyLog::pinned_at(master, Some(engine_key.clone()), since);
    }
    projections.royalty.checkpoint_key = options.checkpoint_key;
    projections.royalty.older_engine_keys = options.older_engine_keys;
    // Pipelined: this task reads the stream with one long-lived ordered read (`follow`),
    // decodes each event (`Prepared`), and hands batches through a bounded
    // channel to the blocking pool, where they are applied (royalty chain included) in
    // order, so reading and applying overlap and share the work. (With decoding on the
    // applying side it was the bottleneck, at ~80 % of a core, while the reader idled.)
    let (batches, mut to_apply) = tokio::sync::mpsc::channel::<Result<Vec<Prepared>, ReadError>>(REPLAY_CHANNEL_BATCHES);
    // Progress needs only the newest count: a watch holds one value however slowly the
    // reporter reads, so the applier never waits for it and nothing queues up.
    let (applied_sender, mut applied) = tokio::sync::watch::channel::<u64>(0);
    let apply = tokio::task::spawn_blocking(move || {
        let mut projections = projections;
        while let Some(batch) = to_apply.blocking_recv() {
            // A read error after the events before it: those are applied first, and a
            // finding among them wins (as it would have with one read after another).
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => return (projections, Err(AuditError::Read(error))),
            };
            let result = apply_batch(&mut projections, batch);
            applied_sender.send_replace(projections.events);
            if let Err(bad) = result {
                return (projections, Ok(Some(bad)));
            }
        }
        (projections, Ok(None))
    });
    let reading = read_all(log, batches);
    let reporting = async {
        // Ends when the applier is done (its sender dropped).
        while applied.changed().await.is_ok() {
            let events = *applied.borrow_and_update();
            progress(events);
        }
    };
    let (read, (), applied) = tokio::join!(reading, reporting, apply);
    let (projections, result) = applied.map_err(AuditError::Task)?;
    let mut first_bad = result?;
    if first_bad.is_none() {
        // A finding among the events read wins over a later failure to read on.
        read?;
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
    if first_bad.is_none()
        && let Some(pinned) = royalty.pin_unmet()
    {
        first_bad = Some(FirstBad {
            seq: projections.last_seq.0 + 1,
            entry: Some(pinned.size),
            reason: "the stream has no seal with the pinned checkpoint (truncated, or a different stream)".into(),
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
        royalty_entries: royalty.entry_count(),
        seals_verified: royalty.seals_verified,
        unsealed_entries: royalty.entry_count().saturating_sub(royalty.next_seal_entry()),
        chain_ok: royalty.seal_faults.is_empty() && first_bad.is_none(),
        first_bad,
        totals,
        events_per_s: projections.events as f64 / seconds,
        checkpoint: royalty.seals.last().and_then(engine::seal::checkpoint_note),
        newest_seal: royalty.seals.last().map(|seal| hex::encode(Report::seal_hash(seal))),
    };
    Ok((report, projections))
}

/// Reads every event from sequence 1 up to the stream's head into `batches`, in order, as
/// one long-lived read. The head is read once at the start, and again whenever it is
/// reached: the read ends once it is caught up (as reading batch after batch until an empty
/// one did). Stops early when the applying side is gone (it found something). A read error
/// is sent after the events before it; an error reading the head is returned.
async fn read_all(log: &dyn EventLog, batches: tokio::sync::mpsc::Sender<Result<Vec<Prepared>, ReadError>>) -> Result<(), AuditError> {
    let head = AuditError::Read;
    let mut last = log.last_seq().await.map_err(head)?;
    if last.0 == 0 {
        return Ok(());
    }
    let mut events = log.follow(Seq(1));
    let mut batch = Vec::with_capacity(REPLAY_BATCH_EVENTS);
    loop {
        let (failed, ended, at_head) = match events.next().await {
            Some(Ok(stored)) => {
                let at_head = stored.seq >= last;
                batch.push(Prepared::new(stored));
                (None, false, at_head)
            }
            Some(Err(error)) => (Some(error), true, true),
            None => (None, true, true),
        };
        if batch.len() >= REPLAY_BATCH_EVENTS || (at_head && !batch.is_empty()) {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(REPLAY_BATCH_EVENTS));
            if batches.send(Ok(full)).await.is_err() {
                return Ok(());
            }
        }
        if let Some(error) = failed {
            let _ = batches.send(Err(error)).await;
            return Ok(());
        }
        if ended {
            return Ok(());
        }
        if at_head {
            // Caught up with the head read last: go on only if the stream has grown since.
            let now = log.last_seq().await.map_err(head)?;
            if now <= last {
                return Ok(());
            }
            last = now;
        }
    }
}

/// Applies a batch in order; the first finding stops it.
fn apply_batch(projections: &mut Projections, batch: Vec<Prepared>) -> Result<(), FirstBad> {
    for prepared in batch {
        if let Err(finding) = projections.apply_prepared(prepared) {
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
