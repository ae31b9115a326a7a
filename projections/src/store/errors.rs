//! Why the projection store cannot open, load or commit, and why a store is damaged.
//!
//! Two kinds of error, on purpose. The public errors a caller gets (`StoreError`,
//! `LoadError`, `CommitError`) reach operators as text alone (a log field, a quarantine
//! reason, `RunError`'s message), so each states its cause in its own text, whole chain
//! included (`Causes`), and has no `source()`, which would print the cause twice under
//! `{:#}`. The errors below them (`StateError`, `CheckpointError`, the rows' `RowError`,
//! `Damage`) keep their causes (sled's, serde's, UTF-8's, hex's) as `source()`, typed,
//! and say only what they add. No text holds a secret: the one the store keeps, the royalty
//! chain key (`chain_key`), is never quoted.

use crate::rows::{Causes, RowError};
use crate::royalty::ChainFault;
use engine::ids::Seq;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a projection store could not be opened. A damaged store is not among these: it is
/// quarantined and reported as `OpenOutcome::Quarantined`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the projection store at {path} is in use or not accessible ({reason}); stop the other process or fix the permissions")]
    Unavailable { path: PathBuf, reason: String },
    #[error("{path} holds a sled database that is not a vouchsafe projection store; choose another directory (it was left untouched)")]
    Foreign { path: PathBuf },
    #[error("cannot move the damaged projection store at {path} aside ({reason}); move or delete it by hand, then start again")]
    Quarantine { path: PathBuf, reason: String },
    #[error("cannot create a projection store at {path}: {reason}; check the disk and the path")]
    Storage { path: PathBuf, reason: String },
    #[error(
        "the royalty master key does not match the royalty chain in the projection store at {path} ({reason}); pass the key the chain was written with, or move the store away to rebuild it"
    )]
    MasterKeyMismatch { path: PathBuf, reason: String },
    #[error(
        "cannot read the event log to check that it is the stream the projection store at {path} was built from ({reason}); make the log reachable and start again"
    )]
    Log { path: PathBuf, reason: String },
    /// Without the master key, the store's royalty chain can go on only from its chain key.
    #[error(
        "the royalty chain of the projection store at {path} cannot go on: {reason}; the engine does not hold the royalty master key, so ask the auditor for a handover (`vouchsafe audit handover --keys AUDITOR_KEYS --out DIR`) and start with DIR as the projection store"
    )]
    ChainKey { path: PathBuf, reason: String },
}

/// Why `load` cannot hand out the stored state as asked.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the store was built without the royalty master key, so its royalty chain does not start at sequence 1; rebuild from sequence 1 with the key")]
    ChainNotFromStart,
    #[error("the royalty master key does not match the stored chain: {0}")]
    MasterKeyMismatch(ChainFault),
    /// The chain key file cannot be read or does not continue the stored entries.
    #[error("{0}")]
    ChainKey(String),
    #[error("the stored state is inconsistent: {}", Causes(.0))]
    Inconsistent(StateError),
    #[error("reading the projection store failed: {0}")]
    Storage(String),
}

/// Why a commit failed. After any of these the store refuses further commits: the
/// projections in memory are ahead of it, and only a reopen (which resumes from the last
/// good checkpoint) brings the two together again.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// sled refused the batch, or a read of the old values it replaces.
    #[error("writing the projection store failed, nothing was stored: {0}")]
    Storage(sled::Error),
    /// A row the batch changed could not be encoded.
    #[error("writing the projection store failed, nothing was stored: {}", Causes(.0))]
    Encode(RowError),
    /// A stored row an event needed could not be read, so the projections in memory may
    /// not be what the events make of the stored state.
    #[error("writing the projection store failed, nothing was stored: a projection row could not be read: {}", Causes(.0.as_ref()))]
    RowUnreadable(Arc<RowError>),
    /// The blocking task that was to write (`"commit"`) or empty (`"reset"`) the store did
    /// not finish.
    #[error("writing the projection store failed, nothing was stored: the {task} task failed: {error}")]
    Task { task: &'static str, error: tokio::task::JoinError },
    #[error("flushing the projection store failed, the batch may or may not be stored: {0}; reopen the store")]
    FlushFailed(sled::Error),
    /// The store stopped after an earlier failure, whose text this is.
    #[error("the projection store stopped after an earlier failure ({0}); reopen it")]
    Stopped(String),
    #[error("these projections were not loaded from this store (they do not note their changes); load them with ProjectionStore::load")]
    NotTracked,
    #[error("commit out of order: the batch builds on sequence {base} but the store is at {stored}; one runner per store")]
    OutOfOrder { base: Seq, stored: Seq },
    /// The batch is stored, the chain's new position is not: the next load advances the
    /// stored one over the new entries (`chain_key`).
    #[error("writing the projection store's royalty chain key failed after the batch was stored: {0}; reopen the store")]
    ChainKey(String),
}

/// Why the stored state is not one the store can hand out: what the open-time check (and
/// `load`, `stored_digest`) finds in a damaged or inconsistent store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("sled cannot read the store")]
    Read(#[source] sled::Error),
    #[error("the checkpoint is missing")]
    CheckpointMissing,
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Row(#[from] RowError),
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("the stream heads ending at {last} are {bytes} bytes")]
    StreamHeadRow { last: u64, bytes: usize },
    #[error("two rows hold the stream head at {0}")]
    StreamHeadTwice(u64),
    #[error("the state does not match the checkpoint's content digest (a value was altered, lost or left over)")]
    ContentDigest,
    #[error("the checkpoint counts {events} events up to sequence {last_seq}")]
    EventCount { events: u64, last_seq: u64 },
    #[error("the stored stream heads do not end at the checkpoint")]
    StreamHeadsEnd,
    #[error("the stored settlement ledger does not sum to zero")]
    LedgerNotZero,
    #[error("{entries} royalty entries for {usages} usages")]
    EntriesForUsages { entries: u64, usages: u64 },
}

/// Why the stored checkpoint cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("the checkpoint is truncated")]
    Truncated,
    #[error("the checkpoint fails its checksum")]
    Checksum,
    #[error("the checkpoint does not decode")]
    Json(#[source] serde_json::Error),
}

/// Why `open` quarantines a store instead of opening it. It reaches no caller but as the
/// quarantine reason (`OpenOutcome::Quarantined`), stated with `Causes`.
#[derive(Debug, thiserror::Error)]
pub(super) enum Damage {
    #[error("sled panicked: {0}")]
    Panic(String),
    #[error("sled cannot open it")]
    Open(#[source] sled::Error),
    #[error("sled")]
    Sled(#[source] sled::Error),
    #[error("the format marker is {found:?}, not {expected:?}")]
    Marker { found: String, expected: String },
    #[error("the format marker is missing")]
    MarkerMissing,
    #[error("initialising the store failed")]
    Init(#[source] RowError),
    #[error(transparent)]
    State(#[from] StateError),
}
