//! The writer thread: the only writer of the database, which group-commits appends.
//!
//! Writes: every append goes through a bounded queue to one writer thread, which takes a
//! batch, decides each append in arrival order, writes all accepted ones in one atomic
//! `sled::Batch` and flushes (fsyncs) once before answering anyone: one fsync serves the
//! whole batch, and only then moves the durable head (the last sequence whose flush
//! returned) that readers stop at.
//!
//! What does not live here: checks that need no database (subject and payload size,
//! `EventLog::append` in `mod.rs`), and the record format (`record`). After a failed write
//! or flush the writer refuses every later append until the log is reopened.

use super::record::{HEAD_KEY, decode_u64, dedupe_key, encode_record, event_key, index_key, last_key};
use super::{AppendResult, BATCH_APPENDS_MAX, BATCH_PAYLOAD_BYTES_MAX};
use crate::ids::Seq;
use crate::log::{AppendError, AppendRequest, Appended, Expected, VersionConflict};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot, watch};

/// One append on its way to the writer, with the place to put its answer.
pub(super) struct Pending {
    pub(super) request: AppendRequest,
    pub(super) reply: oneshot::Sender<AppendResult>,
}

pub(super) enum WriterCommand {
    Append(Pending),
    /// Test hook: the writer reports it has stopped, then blocks until `resume` sends or
    /// closes, so a test can queue many appends and watch them commit in few batches.
    #[cfg(test)]
    Pause {
        paused: oneshot::Sender<()>,
        resume: std::sync::mpsc::Receiver<()>,
    },
    /// Test hook: the writer thread panics, as a bug in it would.
    #[cfg(test)]
    Crash,
}

/// Counters the writer keeps; read by tests and available to metrics.
#[derive(Default)]
pub(super) struct WriterStats {
    pub(super) flushes: AtomicU64,
    /// Test hook: the next flush fails as if the disk had.
    #[cfg(test)]
    pub(super) fail_next_flush: std::sync::atomic::AtomicBool,
}

/// How one append of a batch was decided.
enum Decision {
    Stored(u64),
    Duplicate(u64),
    Conflict(VersionConflict),
}

pub(super) fn run_writer(db: sled::Db, mut commands: mpsc::Receiver<WriterCommand>, head_sender: watch::Sender<u64>, stats: Arc<WriterStats>, mut head: u64) {
    // Set after a failed write or flush: the database's state is then unknown to us, so
    // every later append is refused until the log is reopened (which re-reads the truth).
    let mut stopped: Option<String> = None;
    let mut batch: Vec<Pending> = Vec::with_capacity(BATCH_APPENDS_MAX);
    // Blocking for the first request, then taking whatever else is already queued: under
    // load the queue fills during one flush and the next flush takes it all.
    while let Some(command) = commands.blocking_recv() {
        let mut batch_payload_bytes = 0;
        let mut next = Some(command);
        while let Some(command) = next.take() {
            if let Some(pending) = run_command(command) {
                batch_payload_bytes += pending.request.payload.len();
                batch.push(pending);
            }
            if batch.len() < BATCH_APPENDS_MAX && batch_payload_bytes < BATCH_PAYLOAD_BYTES_MAX {
                next = commands.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Some(reason) = &stopped {
            for pending in batch.drain(..) {
                let _ = pending.reply.send(Err(AppendError::Unavailable(format!("the event log stopped after a storage failure ({reason}); reopen the log"))));
            }
            continue;
        }
        match commit(&db, head, &batch, &stats) {
            Ok((decisions, new_head)) => {
                if new_head != head {
                    head = new_head;
                    head_sender.send_replace(head);
                }
                for (pending, decision) in batch.drain(..).zip(decisions) {
                    let answer = match decision {
                        Decision::Stored(seq) => Ok(Appended { seq: Seq(seq), duplicate: false }),
                        Decision::Duplicate(seq) => Ok(Appended { seq: Seq(seq), duplicate: true }),
                        Decision::Conflict(conflict) => Err(conflict),
                    };
                    // A caller that stopped waiting still had its append stored; nothing to do.
                    let _ = pending.reply.send(Ok(answer));
                }
            }
            Err(failure) => {
                tracing::error!(error = %failure.reason(), "event log write failed; refusing further appends");
                stopped = Some(failure.reason());
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(failure.to_append_error()));
                }
            }
        }
    }
}

/// Runs test hooks; returns the append a command carries.
fn run_command(command: WriterCommand) -> Option<Pending> {
    match command {
        WriterCommand::Append(pending) => Some(pending),
        #[cfg(test)]
        WriterCommand::Pause { paused, resume } => {
            let _ = paused.send(());
            let _ = resume.recv();
            None
        }
        #[cfg(test)]
        WriterCommand::Crash => panic!("test hook: event log writer crash"),
    }
}

/// Why a batch could not be committed.
enum CommitFailure {
    /// Deciding or applying failed; sled batches are atomic, so nothing was stored.
    NotStored(String),
    /// The batch was applied but the flush failed: it may or may not be on disk. Shared,
    /// because every append of the batch is answered with it.
    FlushFailed(Arc<sled::Error>),
}

impl CommitFailure {
    fn reason(&self) -> String {
        match self {
            CommitFailure::NotStored(reason) => reason.clone(),
            CommitFailure::FlushFailed(error) => error.to_string(),
        }
    }

    fn to_append_error(&self) -> AppendError {
        match self {
            CommitFailure::NotStored(reason) => AppendError::Storage(reason.clone()),
            // Not "failed": a retry with the same idempotency key finds out (dedupe).
            CommitFailure::FlushFailed(error) => AppendError::Unknown(Box::new(FlushFailed(Arc::clone(error)))),
        }
    }
}

/// Why an append's outcome is unknown after its batch was applied but not flushed; the
/// source is sled's error.
#[derive(Debug, thiserror::Error)]
#[error("flush failed: {0}")]
struct FlushFailed(#[source] Arc<sled::Error>);

/// Decides every append of `batch` in order, writes the accepted ones in one sled batch and
/// flushes once. Returns the decisions and the new head.
fn commit(db: &sled::Db, head: u64, batch: &[Pending], stats: &WriterStats) -> Result<(Vec<Decision>, u64), CommitFailure> {
    let not_stored = |error: sled::Error| CommitFailure::NotStored(error.to_string());
    let mut new_head = head;
    let mut writes = sled::Batch::default();
    let mut decisions = Vec::with_capacity(batch.len());
    // What earlier appends of this batch changed, since sled does not see them yet.
    let mut last_by_subject: HashMap<&str, u64> = HashMap::new();
    let mut seq_by_key: HashMap<&str, u64> = HashMap::new();

    for pending in batch {
        let request = &pending.request;
        // An empty key means "no dedupe", as an absent or empty Nats-Msg-Id does in
        // nats-server; otherwise every keyless append would be a duplicate of the first.
        let key = request.idempotency_key.as_str();
        if !key.is_empty() {
            let original = match seq_by_key.get(key) {
                Some(seq) => Some(*seq),
                None => read_u64(db, &dedupe_key(key)).map_err(not_stored)?,
            };
            if let Some(seq) = original {
                decisions.push(Decision::Duplicate(seq));
                continue;
            }
        }
        let subject = request.subject.as_str();
        let last = match last_by_subject.get(subject) {
            Some(seq) => Some(*seq),
            None => read_u64(db, &last_key(subject)).map_err(not_stored)?,
        };
        let accepted = match request.expected {
            Expected::Any => true,
            Expected::Empty => last.is_none(),
            // Zero means "empty", as Nats-Expected-Last-Subject-Sequence: 0 does.
            Expected::LastSeq(expected) => last.unwrap_or(0) == expected.0,
        };
        if !accepted {
            decisions.push(Decision::Conflict(VersionConflict { subject: request.subject.clone(), expected: request.expected, actual: last.map(Seq) }));
            continue;
        }
        let seq = new_head + 1;
        let record = encode_record(seq, subject, key, &request.payload).map_err(|reason| CommitFailure::NotStored(reason.to_owned()))?;
        writes.insert(event_key(seq), record);
        writes.insert(index_key(subject, seq), &[][..]);
        writes.insert(last_key(subject), &seq.to_be_bytes()[..]);
        if !key.is_empty() {
            writes.insert(dedupe_key(key), &seq.to_be_bytes()[..]);
            seq_by_key.insert(key, seq);
        }
        last_by_subject.insert(subject, seq);
        new_head = seq;
        decisions.push(Decision::Stored(seq));
    }

    if new_head == head {
        // Only duplicates and conflicts, decided against flushed state: nothing to write.
        return Ok((decisions, head));
    }
    writes.insert(HEAD_KEY, &new_head.to_be_bytes()[..]);
    db.apply_batch(writes).map_err(not_stored)?;
    flush(db, stats).map_err(|error| CommitFailure::FlushFailed(Arc::new(error)))?;
    stats.flushes.fetch_add(1, Ordering::Relaxed);
    Ok((decisions, new_head))
}

/// `db.flush()`: blocks until everything written so far is on stable storage (fsync).
fn flush(
    db: &sled::Db,
    // Only the test hook reads it.
    #[cfg_attr(not(test), allow(unused_variables))] stats: &WriterStats,
) -> Result<(), sled::Error> {
    #[cfg(test)]
    if stats.fail_next_flush.swap(false, Ordering::Relaxed) {
        return Err(sled::Error::Io(std::io::Error::other("test hook: injected flush failure")));
    }
    db.flush().map(|_| ())
}

fn read_u64(db: &sled::Db, key: &[u8]) -> Result<Option<u64>, sled::Error> {
    match db.get(key)? {
        None => Ok(None),
        Some(bytes) => {
            decode_u64(&bytes).map(Some).ok_or_else(|| sled::Error::Unsupported(format!("value under {:?} is not 8 bytes", String::from_utf8_lossy(key))))
        }
    }
}
