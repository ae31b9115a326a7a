//! The embedded event log: the zero-setup backend on one sled database, for the quickstart
//! and fast tests. It keeps the `EventLog` contract exactly (durable before the
//! acknowledgement, per-subject expected sequence, dedupe that never forgets, ordered
//! replay, tail) so that replay through it and through JetStream gives the same state.
//!
//! What lives here: the on-disk layout (one tree, key prefixes below), the single writer
//! thread that group-commits appends, the record checksum, and `follow`.
//! What does not: anything about event contents (that is `crate::wire`), and projection
//! stores (they live in `projections` and may use sled differently).
//!
//! This file holds the log type, its tunables and its `EventLog` implementation; the parts
//! sit in submodules: `open` (opening sled, recovering and checking the head), `record`
//! (the on-disk layout, keys and the checksummed record format), `writer` (the writer
//! thread: batching, deciding, one flush per batch) and `read` (reads up to the durable
//! head, and `follow`).

use super::{AppendError, AppendRequest, Appended, EventLog, PAYLOAD_BYTES_MAX, ReadError, StoredEvent, VersionConflict};
use crate::ids::Seq;
use futures::stream::{BoxStream, StreamExt as _};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot, watch};

mod open;
mod read;
mod record;
mod writer;

use self::read::{Follow, read_from_blocking, read_subject_blocking, run_blocking};
use self::writer::{Pending, WriterCommand, WriterStats};

/// Appends waiting for the writer, at most. A full queue makes `append` wait (backpressure),
/// it never drops or grows.
pub const APPEND_QUEUE_DEPTH_MAX: usize = 1024;
/// Appends decided and flushed together in one batch, at most.
pub const BATCH_APPENDS_MAX: usize = 256;
/// Payload bytes after which the writer stops adding appends to the current batch (a soft
/// limit: a batch holds at most this plus one payload), so one fsync never carries hundreds
/// of megabytes.
pub const BATCH_PAYLOAD_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Events read per round trip while `follow` catches up.
pub const FOLLOW_BATCH_EVENTS_MAX: usize = 256;
/// sled's page cache, in bytes (sled's default of 1 GiB is too greedy for a quickstart).
const CACHE_BYTES_MAX: u64 = 128 * 1024 * 1024;
/// sled's own background flush interval. Durability never depends on it (the writer flushes
/// before acknowledging); it only bounds how long sled's housekeeping stays in memory.
const BACKGROUND_FLUSH_INTERVAL_MS: u64 = 500;

/// Why the embedded log could not be opened. None of these is a panic: the caller decides
/// (the quickstart tells the operator; a test fails with the message).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the event log at {path}: {reason}; check the path and that no other process has it open")]
    Storage { path: PathBuf, reason: String },
    #[error("the event log at {path} is corrupt: {reason}; restore it from a backup or a JetStream copy")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} holds a sled database that is not a vouchsafe event log (format marker {found:?}); choose another directory")]
    NotAnEventLog { path: PathBuf, found: Option<String> },
    #[error("sled panicked while opening {path}: {reason}; the directory is probably damaged, restore it from a backup")]
    Panicked { path: PathBuf, reason: String },
    #[error("cannot start the event log writer thread: {0}")]
    Thread(String),
}

type AppendResult = Result<Result<Appended, VersionConflict>, AppendError>;

/// What readers share; `follow` streams hold it weakly so that a forgotten stream does not
/// keep the database (and its file lock) open after the log is dropped.
struct Shared {
    db: sled::Db,
    /// The durable head: the last sequence whose flush has returned. Reads stop there.
    head: watch::Receiver<u64>,
}

impl Shared {
    fn durable_head(&self) -> u64 {
        *self.head.borrow()
    }
}

/// The embedded event log. Dropping it closes the append queue and waits for the writer
/// thread to finish its current batch (milliseconds): whatever was acknowledged is on disk,
/// and the directory can be opened again as soon as `drop` returns.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    stats: Arc<WriterStats>,
    /// `None` only during `drop`.
    sender: Option<mpsc::Sender<WriterCommand>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedLog {
    /// How many batches the writer has flushed since `open`: with group commit, far fewer
    /// than appends under concurrency.
    pub fn flush_count(&self) -> u64 {
        self.stats.flushes.load(Ordering::Relaxed)
    }

    fn sender(&self) -> Result<&mpsc::Sender<WriterCommand>, AppendError> {
        self.sender.as_ref().ok_or_else(|| AppendError::Unavailable("the event log is closing".to_owned()))
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop once it has answered what is queued.
        drop(self.sender.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the event log writer thread had panicked; appends were answered as failed");
        }
    }
}

#[async_trait::async_trait]
impl EventLog for EmbeddedLog {
    async fn append(&self, request: AppendRequest) -> AppendResult {
        // Checked here rather than in the writer: a refused append never takes a queue
        // slot or a place in a batch, and the answer is the same.
        if !super::is_valid_subject(&request.subject) {
            return Err(AppendError::InvalidSubject(request.subject));
        }
        if request.payload.len() > PAYLOAD_BYTES_MAX {
            return Err(AppendError::TooLarge { size: request.payload.len(), max: PAYLOAD_BYTES_MAX });
        }
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(WriterCommand::Append(Pending { request, reply }))
            .await
            .map_err(|_| AppendError::Unavailable("the event log writer has stopped; reopen the log".to_owned()))?;
        // The writer dropped the request without answering only if it died mid-batch, after
        // which the batch may or may not be on disk.
        answer.await.map_err(|_| AppendError::Unknown(Box::new(WriterStopped)))?
    }

    async fn read_subject(&self, subject: &str) -> Result<Vec<StoredEvent>, ReadError> {
        let shared = Arc::clone(&self.shared);
        let subject = subject.to_owned();
        // sled reads are fast while the pages are cached, but a cold read is a disk read
        // and a subject can be long: keep them off the async workers.
        run_blocking(move || read_subject_blocking(&shared, &subject)).await
    }

    async fn read_from(&self, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, ReadError> {
        let shared = Arc::clone(&self.shared);
        run_blocking(move || read_from_blocking(&shared, from, limit)).await
    }

    async fn last_seq(&self) -> Result<Seq, ReadError> {
        Ok(Seq(self.shared.durable_head()))
    }

    fn follow(&self, from: Seq) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
        let state = Follow {
            shared: Arc::downgrade(&self.shared),
            head: self.shared.head.clone(),
            next: from.0.max(1),
            buffered: VecDeque::new(),
            failure: None,
            finished: false,
        };
        futures::stream::unfold(state, Follow::next_event).boxed()
    }
}

/// Why an append's outcome is unknown when the writer thread died with it in flight (a
/// panic in the writer; its batch may or may not be on disk).
#[derive(Debug, thiserror::Error)]
#[error("the event log writer stopped while this append was in flight")]
struct WriterStopped;

#[cfg(test)]
mod tests;
