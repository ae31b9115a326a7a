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
//! Layout, all in the default tree, integers big-endian so that byte order is numeric order:
//! - `v`                      → `FORMAT_MARKER` (refuse to open a database that is not a log);
//! - `h`                      → the head: the last stored sequence (u64);
//! - `e/` seq                 → the record: format byte, checksum, subject, key, payload;
//! - `i/` subject 0x00 seq    → empty (the per-subject index; 0x00 never occurs in a valid
//!   subject and sorts first, so `vs.voucher.a` never scans `vs.voucher.ab`'s events);
//! - `l/` subject             → the subject's last sequence (the `Expected` check);
//! - `m/` idempotency key     → the sequence the key was first stored at (dedupe).
//!
//! Writes: every append goes through a bounded queue to one writer thread, which takes a
//! batch, decides each append in arrival order, writes all accepted ones in one atomic
//! `sled::Batch` and flushes (fsyncs) once before answering anyone: one fsync serves the
//! whole batch. Reads never see beyond the durable head (the last sequence whose flush
//! returned), so no reader can act on an event that a crash could still take back.

use super::{
    AppendError, AppendRequest, Appended, EventLog, Expected, PAYLOAD_BYTES_MAX, ReadError,
    StoredEvent, VersionConflict,
};
use crate::ids::Seq;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot, watch};

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

const FORMAT_KEY: &[u8] = b"v";
const FORMAT_MARKER: &[u8] = b"vouchsafe-embedded-log/1";
const HEAD_KEY: &[u8] = b"h";
const EVENT_PREFIX: &[u8] = b"e/";
const INDEX_PREFIX: &[u8] = b"i/";
const LAST_PREFIX: &[u8] = b"l/";
const DEDUPE_PREFIX: &[u8] = b"m/";

/// The record format byte; a new layout gets a new value, old records stay readable.
const RECORD_FORMAT_V1: u8 = 1;
/// Truncated blake3: it detects torn, flipped or misplaced records, not tampering (that is
/// the audit replay's job, DESIGN.md "Auditing"), so 128 bits are plenty.
const CHECKSUM_BYTES: usize = 16;
const CHECKSUM_CONTEXT: &str = "vouchsafe 2026 embedded log record v1";
/// Format byte + checksum + subject length (u16) + key length (u32).
const RECORD_HEADER_BYTES: usize = 1 + CHECKSUM_BYTES + 2 + 4;

/// Why the embedded log could not be opened. None of these is a panic: the caller decides
/// (the quickstart tells the operator; a test fails with the message).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "cannot open the event log at {path}: {reason}; check the path and that no other process has it open"
    )]
    Storage { path: PathBuf, reason: String },
    #[error(
        "the event log at {path} is corrupt: {reason}; restore it from a backup or a JetStream copy"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path} holds a sled database that is not a vouchsafe event log (format marker {found:?}); choose another directory"
    )]
    NotAnEventLog {
        path: PathBuf,
        found: Option<String>,
    },
    #[error(
        "sled panicked while opening {path}: {reason}; the directory is probably damaged, restore it from a backup"
    )]
    Panicked { path: PathBuf, reason: String },
    #[error("cannot start the event log writer thread: {0}")]
    Thread(String),
}

type AppendResult = Result<Result<Appended, VersionConflict>, AppendError>;

/// One append on its way to the writer, with the place to put its answer.
struct Pending {
    request: AppendRequest,
    reply: oneshot::Sender<AppendResult>,
}

enum WriterCommand {
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
struct WriterStats {
    flushes: AtomicU64,
    /// Test hook: the next flush fails as if the disk had.
    #[cfg(test)]
    fail_next_flush: std::sync::atomic::AtomicBool,
}

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

/// How long `open` waits for sled's directory lock. sled releases the lock of a dropped
/// database through epoch-based reclamation, so a reopen in the same process right after a
/// drop can find it still held for a moment (seen in about 1 in 30 test runs on a loaded
/// machine); a lock held by another process is still an error after the wait.
const LOCK_WAIT_MS: u64 = 2_000;

/// `config.open()`, retried while the only problem is sled's directory lock, with any panic
/// caught (sled 0.34 has been reported to panic on damaged directories, sled #1533).
fn open_waiting_for_lock(config: &sled::Config) -> std::thread::Result<sled::Result<sled::Db>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(LOCK_WAIT_MS);
    loop {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match &opened {
            Ok(Err(sled::Error::Io(error))) if error.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => return opened,
        }
    }
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<EmbeddedLog, OpenError> {
        let path = dir.to_path_buf();
        let config = sled::Config::new()
            .path(dir)
            // Appends are the whole workload; disk space is cheap next to fsync time.
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES_MAX)
            .use_compression(false)
            .flush_every_ms(Some(BACKGROUND_FLUSH_INTERVAL_MS));
        // sled 0.34 has been reported to panic while recovering a damaged directory
        // (sled #1533); a panic must not take the process down with it.
        let opened = open_waiting_for_lock(&config);
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(error)) => return Err(open_error(&path, error)),
            Err(panic) => {
                return Err(OpenError::Panicked {
                    path,
                    reason: panic_message(panic.as_ref()),
                });
            }
        };
        let head = recover_head(&db, &path)?;

        let (sender, receiver) = mpsc::channel(APPEND_QUEUE_DEPTH_MAX);
        let (head_sender, head_receiver) = watch::channel(head);
        let stats = Arc::new(WriterStats::default());
        let writer = {
            let db = db.clone();
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("vouchsafe-log-writer".to_owned())
                .spawn(move || run_writer(db, receiver, head_sender, stats, head))
                .map_err(|error| OpenError::Thread(error.to_string()))?
        };
        Ok(EmbeddedLog {
            shared: Arc::new(Shared {
                db,
                head: head_receiver,
            }),
            stats,
            sender: Some(sender),
            writer: Some(writer),
        })
    }

    /// How many batches the writer has flushed since `open`: with group commit, far fewer
    /// than appends under concurrency.
    pub fn flush_count(&self) -> u64 {
        self.stats.flushes.load(Ordering::Relaxed)
    }

    fn sender(&self) -> Result<&mpsc::Sender<WriterCommand>, AppendError> {
        self.sender
            .as_ref()
            .ok_or_else(|| AppendError::Unavailable("the event log is closing".to_owned()))
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop once it has answered what is queued.
        drop(self.sender.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(
                "the event log writer thread had panicked; appends were answered as failed"
            );
        }
    }
}

fn open_error(path: &Path, error: sled::Error) -> OpenError {
    match error {
        sled::Error::Corruption { at, .. } => OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("sled found corruption at {at:?}"),
        },
        other => OpenError::Storage {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

/// Checks the format marker and that the head key agrees with the last record, and returns
/// the head. A fresh directory gets its marker here (flushed, so a crash cannot leave a
/// half-initialised log).
fn recover_head(db: &sled::Db, path: &Path) -> Result<u64, OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let storage = |error: sled::Error| open_error(path, error);

    match db.get(FORMAT_KEY).map_err(storage)? {
        Some(marker) if marker.as_ref() == FORMAT_MARKER => {}
        Some(marker) => {
            return Err(OpenError::NotAnEventLog {
                path: path.to_path_buf(),
                found: Some(String::from_utf8_lossy(&marker).into_owned()),
            });
        }
        None if db.is_empty() => {
            db.insert(FORMAT_KEY, FORMAT_MARKER).map_err(storage)?;
            db.flush().map_err(storage)?;
            return Ok(0);
        }
        None => {
            return Err(OpenError::NotAnEventLog {
                path: path.to_path_buf(),
                found: None,
            });
        }
    }

    let head = match db.get(HEAD_KEY).map_err(storage)? {
        Some(bytes) => {
            decode_u64(&bytes).ok_or_else(|| corrupt("the head key is not 8 bytes".to_owned()))?
        }
        None => 0,
    };
    // Batches are atomic, so the last record is exactly the head; anything else means the
    // database lost or invented writes and must not be appended to.
    let last_record = match db.scan_prefix(EVENT_PREFIX).next_back() {
        None => None,
        Some(entry) => {
            let (key, record) = entry.map_err(storage)?;
            let seq = decode_event_key(&key)
                .ok_or_else(|| corrupt("a record key is malformed".to_owned()))?;
            decode_record(seq, &record).map_err(|error| corrupt(error.to_string()))?;
            Some(seq)
        }
    };
    if last_record.unwrap_or(0) != head {
        return Err(corrupt(format!(
            "the head says {head} but the last record is {last_record:?}"
        )));
    }
    Ok(head)
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
            return Err(AppendError::TooLarge {
                size: request.payload.len(),
                max: PAYLOAD_BYTES_MAX,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(WriterCommand::Append(Pending { request, reply }))
            .await
            .map_err(|_| {
                AppendError::Unavailable(
                    "the event log writer has stopped; reopen the log".to_owned(),
                )
            })?;
        // The writer dropped the request without answering only if it died mid-batch, after
        // which the batch may or may not be on disk.
        answer.await.map_err(|_| {
            AppendError::Unknown(
                "the event log writer stopped while this append was in flight".to_owned(),
            )
        })?
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

async fn run_blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, ReadError> + Send + 'static,
) -> Result<T, ReadError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|error| ReadError::Storage(format!("the read task failed: {error}")))?
}

/// The state of one `follow` stream.
struct Follow {
    shared: Weak<Shared>,
    head: watch::Receiver<u64>,
    /// The next sequence to read: everything before it has been read exactly once.
    next: u64,
    buffered: VecDeque<StoredEvent>,
    /// An error met after the buffered events: yielded once they are, then the stream ends
    /// (skipping past it would be a gap).
    failure: Option<ReadError>,
    finished: bool,
}

impl Follow {
    async fn next_event(mut self) -> Option<(Result<StoredEvent, ReadError>, Follow)> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            if let Some(error) = self.failure.take() {
                self.finished = true;
                return Some((Err(error), self));
            }
            // Mark the current head seen *before* reading, so that a flush landing after
            // the read still wakes `changed` below: no lost wake-up, hence no stall.
            let head = *self.head.borrow_and_update();
            if head >= self.next {
                let Some(shared) = self.shared.upgrade() else {
                    self.failure = Some(ReadError::Unavailable(
                        "the event log was closed".to_owned(),
                    ));
                    continue;
                };
                let from = Seq(self.next);
                let read = run_blocking(move || {
                    Ok(read_range_blocking(&shared, from, FOLLOW_BATCH_EVENTS_MAX))
                })
                .await;
                let (events, failure) = match read {
                    Ok(read) => read,
                    Err(error) => (Vec::new(), Some(error)),
                };
                for event in events {
                    // read_range already checks contiguity; this guards the no-gap,
                    // no-duplicate promise locally as well.
                    if event.seq.0 != self.next {
                        self.failure = Some(ReadError::Corrupt {
                            seq: Seq(self.next),
                            reason: format!(
                                "expected sequence {} next, read {}",
                                self.next, event.seq
                            ),
                        });
                        break;
                    }
                    self.next += 1;
                    self.buffered.push_back(event);
                }
                self.failure = self.failure.take().or(failure);
                if self.buffered.is_empty() && self.failure.is_none() {
                    self.failure = Some(ReadError::Corrupt {
                        seq: from,
                        reason: "record missing below the head".to_owned(),
                    });
                }
                continue;
            }
            if self.head.changed().await.is_err() {
                // The writer is gone (log dropped or writer died): nothing new will come.
                self.failure = Some(ReadError::Unavailable(
                    "the event log was closed".to_owned(),
                ));
            }
        }
    }
}

fn read_from_blocking(
    shared: &Shared,
    from: Seq,
    limit: usize,
) -> Result<Vec<StoredEvent>, ReadError> {
    match read_range_blocking(shared, from, limit) {
        (events, None) => Ok(events),
        (_, Some(error)) => Err(error),
    }
}

/// Up to `limit` durable events from `from` on, and the error that stopped the read early,
/// if any, with the good events before it (so `follow` can yield them first).
fn read_range_blocking(
    shared: &Shared,
    from: Seq,
    limit: usize,
) -> (Vec<StoredEvent>, Option<ReadError>) {
    let head = shared.durable_head();
    let first = from.0.max(1);
    if limit == 0 || first > head {
        return (Vec::new(), None);
    }
    // Contiguity is checked against what must be there, so a lost record is reported as
    // corrupt instead of silently skipped.
    let last = head.min(first.saturating_add(limit as u64 - 1));
    let capacity = usize::try_from(last - first + 1)
        .unwrap_or(usize::MAX)
        .min(FOLLOW_BATCH_EVENTS_MAX);
    let mut events = Vec::with_capacity(capacity);
    let mut expected = first;
    for entry in shared.db.range(event_key(first)..=event_key(last)) {
        let decoded = entry.map_err(read_storage_error).and_then(|(key, record)| {
            match decode_event_key(&key) {
                Some(seq) if seq == expected => {
                    decode_record(seq, &record).map(|decoded| decoded.into_event(seq))
                }
                _ => Err(ReadError::Corrupt {
                    seq: Seq(expected),
                    reason: "record missing".to_owned(),
                }),
            }
        });
        match decoded {
            Ok(event) => events.push(event),
            Err(error) => return (events, Some(error)),
        }
        expected += 1;
    }
    if expected <= last {
        return (
            events,
            Some(ReadError::Corrupt {
                seq: Seq(expected),
                reason: "record missing".to_owned(),
            }),
        );
    }
    (events, None)
}

fn read_subject_blocking(shared: &Shared, subject: &str) -> Result<Vec<StoredEvent>, ReadError> {
    if !super::is_valid_subject(subject) {
        // Nothing is ever stored under an invalid subject.
        return Ok(Vec::new());
    }
    let head = shared.durable_head();
    let prefix = index_prefix(subject);
    let mut events = Vec::new();
    for entry in shared.db.scan_prefix(&prefix) {
        let (key, _) = entry.map_err(read_storage_error)?;
        let seq = key
            .get(prefix.len()..)
            .and_then(decode_u64)
            .ok_or_else(|| ReadError::Storage(format!("malformed index key for {subject}")))?;
        if seq > head {
            // Written but not yet flushed: not acknowledged, not visible.
            break;
        }
        let record = shared
            .db
            .get(event_key(seq))
            .map_err(read_storage_error)?
            .ok_or_else(|| ReadError::Corrupt {
                seq: Seq(seq),
                reason: "indexed record missing".to_owned(),
            })?;
        let decoded = decode_record(seq, &record)?;
        if decoded.subject != subject {
            return Err(ReadError::Corrupt {
                seq: Seq(seq),
                reason: format!(
                    "indexed under {subject} but stored under {}",
                    decoded.subject
                ),
            });
        }
        events.push(decoded.into_event(seq));
    }
    Ok(events)
}

fn read_storage_error(error: sled::Error) -> ReadError {
    ReadError::Storage(error.to_string())
}

// ---------------------------------------------------------------------------------------
// The writer thread.

/// How one append of a batch was decided.
enum Decision {
    Stored(u64),
    Duplicate(u64),
    Conflict(VersionConflict),
}

fn run_writer(
    db: sled::Db,
    mut commands: mpsc::Receiver<WriterCommand>,
    head_sender: watch::Sender<u64>,
    stats: Arc<WriterStats>,
    mut head: u64,
) {
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
                let _ = pending.reply.send(Err(AppendError::Unavailable(format!(
                    "the event log stopped after a storage failure ({reason}); reopen the log"
                ))));
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
                        Decision::Stored(seq) => Ok(Appended {
                            seq: Seq(seq),
                            duplicate: false,
                        }),
                        Decision::Duplicate(seq) => Ok(Appended {
                            seq: Seq(seq),
                            duplicate: true,
                        }),
                        Decision::Conflict(conflict) => Err(conflict),
                    };
                    // A caller that stopped waiting still had its append stored; nothing to do.
                    let _ = pending.reply.send(Ok(answer));
                }
            }
            Err(failure) => {
                tracing::error!(error = %failure.reason(), "event log write failed; refusing further appends");
                stopped = Some(failure.reason().to_owned());
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
    /// The batch was applied but the flush failed: it may or may not be on disk.
    FlushFailed(String),
}

impl CommitFailure {
    fn reason(&self) -> &str {
        match self {
            CommitFailure::NotStored(reason) | CommitFailure::FlushFailed(reason) => reason,
        }
    }

    fn to_append_error(&self) -> AppendError {
        match self {
            CommitFailure::NotStored(reason) => AppendError::Storage(reason.clone()),
            // Not "failed": a retry with the same idempotency key finds out (dedupe).
            CommitFailure::FlushFailed(reason) => {
                AppendError::Unknown(format!("flush failed: {reason}"))
            }
        }
    }
}

/// Decides every append of `batch` in order, writes the accepted ones in one sled batch and
/// flushes once. Returns the decisions and the new head.
fn commit(
    db: &sled::Db,
    head: u64,
    batch: &[Pending],
    stats: &WriterStats,
) -> Result<(Vec<Decision>, u64), CommitFailure> {
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
            decisions.push(Decision::Conflict(VersionConflict {
                subject: request.subject.clone(),
                expected: request.expected,
                actual: last.map(Seq),
            }));
            continue;
        }
        let seq = new_head + 1;
        let record = encode_record(seq, subject, key, &request.payload)
            .map_err(|reason| CommitFailure::NotStored(reason.to_owned()))?;
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
    flush(db, stats).map_err(|error| CommitFailure::FlushFailed(error.to_string()))?;
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
        return Err(sled::Error::Io(std::io::Error::other(
            "test hook: injected flush failure",
        )));
    }
    db.flush().map(|_| ())
}

fn read_u64(db: &sled::Db, key: &[u8]) -> Result<Option<u64>, sled::Error> {
    match db.get(key)? {
        None => Ok(None),
        Some(bytes) => decode_u64(&bytes).map(Some).ok_or_else(|| {
            sled::Error::Unsupported(format!(
                "value under {:?} is not 8 bytes",
                String::from_utf8_lossy(key)
            ))
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Keys and records.

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn event_key(seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(EVENT_PREFIX.len() + 8);
    key.extend_from_slice(EVENT_PREFIX);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn decode_event_key(key: &[u8]) -> Option<u64> {
    key.strip_prefix(EVENT_PREFIX).and_then(decode_u64)
}

fn index_prefix(subject: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(INDEX_PREFIX.len() + subject.len() + 1 + 8);
    key.extend_from_slice(INDEX_PREFIX);
    key.extend_from_slice(subject.as_bytes());
    key.push(0);
    key
}

fn index_key(subject: &str, seq: u64) -> Vec<u8> {
    let mut key = index_prefix(subject);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn last_key(subject: &str) -> Vec<u8> {
    [LAST_PREFIX, subject.as_bytes()].concat()
}

fn dedupe_key(idempotency_key: &str) -> Vec<u8> {
    [DEDUPE_PREFIX, idempotency_key.as_bytes()].concat()
}

fn checksum(seq: u64, body: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut hasher = blake3::Hasher::new_derive_key(CHECKSUM_CONTEXT);
    // The sequence is hashed although it is not stored in the value: a record copied or
    // misplaced under another key fails the check.
    hasher.update(&seq.to_be_bytes());
    hasher.update(body);
    let mut truncated = [0; CHECKSUM_BYTES];
    truncated.copy_from_slice(&hasher.finalize().as_bytes()[..CHECKSUM_BYTES]);
    truncated
}

/// `[format][checksum][subject len u16][subject][key len u32][key][payload]`; the checksum
/// covers the sequence and everything after it. The key is kept so that the dedupe index
/// can be rebuilt and audited from the records alone.
fn encode_record(
    seq: u64,
    subject: &str,
    idempotency_key: &str,
    payload: &[u8],
) -> Result<Vec<u8>, &'static str> {
    let subject_len =
        u16::try_from(subject.len()).map_err(|_| "subject longer than 65535 bytes")?;
    let key_len =
        u32::try_from(idempotency_key.len()).map_err(|_| "idempotency key longer than 4 GiB")?;
    let mut record = Vec::with_capacity(
        RECORD_HEADER_BYTES + subject.len() + idempotency_key.len() + payload.len(),
    );
    record.push(RECORD_FORMAT_V1);
    record.extend_from_slice(&[0; CHECKSUM_BYTES]);
    record.extend_from_slice(&subject_len.to_be_bytes());
    record.extend_from_slice(subject.as_bytes());
    record.extend_from_slice(&key_len.to_be_bytes());
    record.extend_from_slice(idempotency_key.as_bytes());
    record.extend_from_slice(payload);
    let sum = checksum(seq, &record[1 + CHECKSUM_BYTES..]);
    record[1..1 + CHECKSUM_BYTES].copy_from_slice(&sum);
    Ok(record)
}

struct DecodedRecord<'a> {
    subject: &'a str,
    #[cfg_attr(not(test), allow(dead_code))]
    idempotency_key: &'a str,
    payload: &'a [u8],
}

impl DecodedRecord<'_> {
    fn into_event(self, seq: u64) -> StoredEvent {
        StoredEvent {
            seq: Seq(seq),
            subject: self.subject.to_owned(),
            payload: Bytes::copy_from_slice(self.payload),
        }
    }
}

fn decode_record(seq: u64, record: &[u8]) -> Result<DecodedRecord<'_>, ReadError> {
    let corrupt = |reason: &str| ReadError::Corrupt {
        seq: Seq(seq),
        reason: reason.to_owned(),
    };
    let (&format, rest) = record
        .split_first()
        .ok_or_else(|| corrupt("empty record"))?;
    if format != RECORD_FORMAT_V1 {
        return Err(corrupt(&format!("unknown record format {format}")));
    }
    let (stored_sum, body) = rest
        .split_at_checked(CHECKSUM_BYTES)
        .ok_or_else(|| corrupt("truncated record"))?;
    if stored_sum != checksum(seq, body) {
        return Err(corrupt("checksum mismatch"));
    }
    let (subject_len, body) = body
        .split_at_checked(2)
        .ok_or_else(|| corrupt("truncated record"))?;
    let subject_len = usize::from(u16::from_be_bytes([subject_len[0], subject_len[1]]));
    let (subject, body) = body
        .split_at_checked(subject_len)
        .ok_or_else(|| corrupt("truncated subject"))?;
    let (key_len, body) = body
        .split_at_checked(4)
        .ok_or_else(|| corrupt("truncated record"))?;
    let key_len = u32::from_be_bytes([key_len[0], key_len[1], key_len[2], key_len[3]]);
    let key_len = usize::try_from(key_len).map_err(|_| corrupt("key length overflows"))?;
    let (key, payload) = body
        .split_at_checked(key_len)
        .ok_or_else(|| corrupt("truncated key"))?;
    Ok(DecodedRecord {
        subject: std::str::from_utf8(subject).map_err(|_| corrupt("subject is not UTF-8"))?,
        idempotency_key: std::str::from_utf8(key)
            .map_err(|_| corrupt("idempotency key is not UTF-8"))?,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::conformance::Harness;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Logs in temporary directories, remembered by the address of the log so `reopen`
    /// finds the directory again.
    #[derive(Default)]
    struct TempDirHarness {
        dirs: Mutex<HashMap<usize, tempfile::TempDir>>,
    }

    fn address(log: &Arc<dyn EventLog>) -> usize {
        Arc::as_ptr(log).cast::<()>() as usize
    }

    #[async_trait::async_trait]
    impl Harness for TempDirHarness {
        async fn fresh(&self) -> Arc<dyn EventLog> {
            let dir = tempfile::tempdir().expect("temporary directory");
            let log: Arc<dyn EventLog> =
                Arc::new(EmbeddedLog::open(dir.path()).expect("open a fresh log"));
            self.dirs
                .lock()
                .expect("harness lock")
                .insert(address(&log), dir);
            log
        }

        async fn reopen(&self, log: Arc<dyn EventLog>) -> Arc<dyn EventLog> {
            let dir = self
                .dirs
                .lock()
                .expect("harness lock")
                .remove(&address(&log))
                .expect("a log this harness opened");
            assert_eq!(
                Arc::strong_count(&log),
                1,
                "the case must hold no other reference to the log it reopens"
            );
            drop(log);
            let log: Arc<dyn EventLog> =
                Arc::new(EmbeddedLog::open(dir.path()).expect("reopen the log"));
            self.dirs
                .lock()
                .expect("harness lock")
                .insert(address(&log), dir);
            log
        }
    }

    mod conformance {
        use super::TempDirHarness;
        crate::conformance_tests!(TempDirHarness::default());
    }

    fn request(
        subject: &str,
        expected: Expected,
        key: &str,
        payload: &'static [u8],
    ) -> AppendRequest {
        AppendRequest {
            subject: subject.to_owned(),
            expected,
            idempotency_key: key.to_owned(),
            payload: Bytes::from_static(payload),
        }
    }

    async fn append_stored(
        log: &EmbeddedLog,
        subject: &str,
        key: &str,
        payload: &'static [u8],
    ) -> u64 {
        let appended = log
            .append(request(subject, Expected::Any, key, payload))
            .await
            .expect("append")
            .expect("no conflict");
        assert!(!appended.duplicate);
        appended.seq.0
    }

    fn writer(log: &EmbeddedLog) -> &mpsc::Sender<WriterCommand> {
        log.sender.as_ref().expect("an open log has a sender")
    }

    /// Holds the writer until the returned sender sends (or is dropped).
    async fn pause_writer(log: &EmbeddedLog) -> std::sync::mpsc::Sender<()> {
        let (paused, writer_paused) = oneshot::channel();
        let (resume, resume_receiver) = std::sync::mpsc::channel();
        writer(log)
            .send(WriterCommand::Pause {
                paused,
                resume: resume_receiver,
            })
            .await
            .expect("writer running");
        writer_paused.await.expect("writer paused");
        resume
    }

    /// Waits until `count` appends wait in the queue (behind a paused writer).
    async fn wait_until_queued(log: &EmbeddedLog, count: usize) {
        const POLLS_MAX: usize = 2000;
        let queued = || APPEND_QUEUE_DEPTH_MAX - writer(log).capacity();
        for _ in 0..POLLS_MAX {
            if queued() == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(queued(), count, "appends queued behind the paused writer");
    }

    /// Appends decided in one batch see the earlier appends of the same batch, although
    /// sled does not have them yet: a second `Empty` on a subject conflicts, a second use
    /// of a key is a duplicate of the first, and a chained `LastSeq` succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_in_one_batch_see_the_batch() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = Arc::new(EmbeddedLog::open(dir.path()).expect("open"));
        let resume = pause_writer(&log).await;
        let requests = [
            request("vs.batch.a", Expected::Empty, "b1", b"a1"),
            request("vs.batch.a", Expected::Empty, "b2", b"refused"),
            request("vs.batch.b", Expected::Any, "b1", b"duplicate of b1"),
            request("vs.batch.a", Expected::LastSeq(Seq(1)), "b3", b"a2"),
            request("vs.batch.a", Expected::LastSeq(Seq(1)), "b4", b"refused"),
        ];
        let mut tasks = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            let appender = Arc::clone(&log);
            tasks.push(tokio::spawn(async move { appender.append(request).await }));
            // One at a time into the queue, so the batch decides them in this order.
            wait_until_queued(&log, index + 1).await;
        }
        resume.send(()).expect("writer waiting");
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("task").expect("append"));
        }
        let conflict = |expected, actual| {
            Err(VersionConflict {
                subject: "vs.batch.a".to_owned(),
                expected,
                actual: Some(Seq(actual)),
            })
        };
        assert_eq!(
            outcomes,
            vec![
                Ok(Appended {
                    seq: Seq(1),
                    duplicate: false
                }),
                conflict(Expected::Empty, 1),
                Ok(Appended {
                    seq: Seq(1),
                    duplicate: true
                }),
                Ok(Appended {
                    seq: Seq(2),
                    duplicate: false
                }),
                conflict(Expected::LastSeq(Seq(1)), 2),
            ]
        );
        assert_eq!(log.flush_count(), 1, "one batch, one flush");
        assert_eq!(log.last_seq().await.expect("last_seq"), Seq(2));
    }

    const GROUP_COMMIT_APPENDS: usize = 500;

    /// Group commit, deterministically: with the writer held, 500 appends queue up; once
    /// released they are stored with one flush per `BATCH_APPENDS_MAX` appends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_flushes_once_per_batch() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = Arc::new(EmbeddedLog::open(dir.path()).expect("open"));
        let resume = pause_writer(&log).await;
        let tasks: Vec<_> = (0..GROUP_COMMIT_APPENDS)
            .map(|index| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let subject = format!("vs.group.s{}", index % 7);
                    log.append(AppendRequest {
                        subject,
                        expected: Expected::Any,
                        idempotency_key: format!("g{index}"),
                        payload: Bytes::from(format!("{index}")),
                    })
                    .await
                })
            })
            .collect();
        wait_until_queued(&log, GROUP_COMMIT_APPENDS).await;
        assert_eq!(log.flush_count(), 0);
        resume.send(()).expect("writer waiting");

        let mut seqs = Vec::new();
        for task in tasks {
            let appended = task
                .await
                .expect("task")
                .expect("append")
                .expect("no conflict");
            seqs.push(appended.seq.0);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=GROUP_COMMIT_APPENDS as u64).collect::<Vec<_>>());
        let batches = GROUP_COMMIT_APPENDS.div_ceil(BATCH_APPENDS_MAX) as u64;
        assert_eq!(log.flush_count(), batches, "one flush per full batch");
    }

    /// Group commit without help: concurrent appenders share flushes on their own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_share_flushes() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = Arc::new(EmbeddedLog::open(dir.path()).expect("open"));
        let barrier = Arc::new(tokio::sync::Barrier::new(GROUP_COMMIT_APPENDS));
        let tasks: Vec<_> = (0..GROUP_COMMIT_APPENDS)
            .map(|index| {
                let log = Arc::clone(&log);
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    log.append(AppendRequest {
                        subject: format!("vs.group.s{}", index % 7),
                        expected: Expected::Any,
                        idempotency_key: format!("g{index}"),
                        payload: Bytes::from(format!("{index}")),
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            task.await
                .expect("task")
                .expect("append")
                .expect("no conflict");
        }
        let flushes = log.flush_count();
        eprintln!("{GROUP_COMMIT_APPENDS} concurrent appends took {flushes} flushes");
        assert!(
            flushes * 5 <= GROUP_COMMIT_APPENDS as u64,
            "{flushes} flushes for {GROUP_COMMIT_APPENDS} appends"
        );
    }

    /// Opens the log's directory with plain sled, for tests that damage it on purpose.
    fn with_raw_db(dir: &Path, damage: impl FnOnce(&sled::Db)) {
        let db = open_waiting_for_lock(&sled::Config::new().path(dir)).expect("no panic").expect("raw open");
        damage(&db);
        db.flush().expect("raw flush");
    }

    async fn three_events(dir: &Path) {
        let log = EmbeddedLog::open(dir).expect("open");
        for (key, payload) in [("c1", &b"one"[..]), ("c2", b"two"), ("c3", b"three")] {
            append_stored(&log, "vs.corrupt.a", key, payload).await;
        }
        let events = log.read_from(Seq(1), 10).await.expect("intact log reads");
        assert_eq!(
            events.len(),
            3,
            "negative control: before the damage every read works"
        );
    }

    #[tokio::test]
    async fn flipped_byte_is_reported_corrupt_with_its_sequence() {
        let dir = tempfile::tempdir().expect("temporary directory");
        three_events(dir.path()).await;
        with_raw_db(dir.path(), |db| {
            let mut record = db
                .get(event_key(2))
                .expect("get")
                .expect("record 2")
                .to_vec();
            let last = record.len() - 1;
            record[last] ^= 0x01;
            db.insert(event_key(2), record).expect("insert");
        });
        let log = EmbeddedLog::open(dir.path()).expect("the damage is not in the last record");
        match log.read_from(Seq(1), 10).await {
            Err(ReadError::Corrupt { seq, .. }) => assert_eq!(seq, Seq(2)),
            other => panic!("expected Corrupt at 2, got {other:?}"),
        }
        assert!(matches!(
            log.read_subject("vs.corrupt.a").await,
            Err(ReadError::Corrupt { seq: Seq(2), .. })
        ));
        assert_eq!(
            log.read_from(Seq(3), 10)
                .await
                .expect("past the damage")
                .len(),
            1
        );
        let mut following = log.follow(Seq(1));
        assert_eq!(
            following.next().await.expect("item").expect("event 1").seq,
            Seq(1)
        );
        assert!(matches!(
            following.next().await,
            Some(Err(ReadError::Corrupt { seq: Seq(2), .. }))
        ));
        assert!(
            following.next().await.is_none(),
            "follow ends at a corrupt record instead of skipping it"
        );
    }

    #[tokio::test]
    async fn misplaced_record_is_reported_corrupt() {
        let dir = tempfile::tempdir().expect("temporary directory");
        three_events(dir.path()).await;
        with_raw_db(dir.path(), |db| {
            // A well-formed record under the wrong sequence: the checksum covers the
            // sequence, so it is caught.
            let record = db.get(event_key(1)).expect("get").expect("record 1");
            db.insert(event_key(2), record).expect("insert");
        });
        let log = EmbeddedLog::open(dir.path()).expect("open");
        assert!(matches!(
            log.read_from(Seq(1), 10).await,
            Err(ReadError::Corrupt { seq: Seq(2), .. })
        ));
    }

    #[tokio::test]
    async fn missing_record_is_reported_not_skipped() {
        let dir = tempfile::tempdir().expect("temporary directory");
        three_events(dir.path()).await;
        with_raw_db(dir.path(), |db| {
            db.remove(event_key(2)).expect("remove");
        });
        let log = EmbeddedLog::open(dir.path()).expect("open");
        assert!(matches!(
            log.read_from(Seq(1), 10).await,
            Err(ReadError::Corrupt { seq: Seq(2), .. })
        ));
        assert!(matches!(
            log.read_subject("vs.corrupt.a").await,
            Err(ReadError::Corrupt { seq: Seq(2), .. })
        ));
    }

    #[tokio::test]
    async fn open_refuses_a_log_whose_head_disagrees_with_its_records() {
        let dir = tempfile::tempdir().expect("temporary directory");
        three_events(dir.path()).await;
        with_raw_db(dir.path(), |db| {
            db.remove(event_key(3)).expect("remove");
        });
        match EmbeddedLog::open(dir.path()) {
            Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("head"), "{reason}"),
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("expected Corrupt, the log opened"),
        }
    }

    #[tokio::test]
    async fn open_refuses_a_damaged_last_record() {
        let dir = tempfile::tempdir().expect("temporary directory");
        three_events(dir.path()).await;
        with_raw_db(dir.path(), |db| {
            db.insert(event_key(3), &[RECORD_FORMAT_V1, 0, 0][..])
                .expect("insert");
        });
        assert!(matches!(
            EmbeddedLog::open(dir.path()),
            Err(OpenError::Corrupt { .. })
        ));
    }

    #[test]
    fn open_refuses_a_foreign_sled_database() {
        let dir = tempfile::tempdir().expect("temporary directory");
        with_raw_db(dir.path(), |db| {
            db.insert(b"projection", &b"state"[..]).expect("insert");
        });
        assert!(matches!(
            EmbeddedLog::open(dir.path()),
            Err(OpenError::NotAnEventLog { found: None, .. })
        ));
    }

    #[test]
    fn open_of_a_directory_in_use_is_an_error() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let _first = EmbeddedLog::open(dir.path()).expect("first open");
        assert!(matches!(
            EmbeddedLog::open(dir.path()),
            Err(OpenError::Storage { .. })
        ));
    }

    #[test]
    fn open_of_garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("conf"), b"not a sled configuration at all").expect("write");
        std::fs::write(dir.path().join("db"), vec![0xA5; 4096]).expect("write");
        let opened = EmbeddedLog::open(dir.path());
        assert!(opened.is_err(), "garbage opened as a log");
    }

    #[tokio::test]
    async fn empty_idempotency_key_never_deduplicates() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = EmbeddedLog::open(dir.path()).expect("open");
        assert_eq!(append_stored(&log, "vs.nokey.a", "", b"x").await, 1);
        assert_eq!(append_stored(&log, "vs.nokey.a", "", b"x").await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_writer_fails_appends_instead_of_hanging() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = EmbeddedLog::open(dir.path()).expect("open");
        append_stored(&log, "vs.crash.a", "k1", b"x").await;
        let mut following = log.follow(Seq(2));
        writer(&log)
            .send(WriterCommand::Crash)
            .await
            .expect("writer running");
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            log.append(request("vs.crash.a", Expected::Any, "k2", b"y")),
        )
        .await
        .expect("an append to a dead writer must not hang");
        assert!(
            matches!(
                outcome,
                Err(AppendError::Unavailable(_) | AppendError::Unknown(_))
            ),
            "expected Unavailable or Unknown, got {outcome:?}"
        );
        let ended = tokio::time::timeout(Duration::from_secs(10), following.next())
            .await
            .expect("follow must not hang");
        assert!(
            matches!(ended, Some(Err(ReadError::Unavailable(_)))),
            "got {ended:?}"
        );
        // Reads of what was acknowledged still work.
        assert_eq!(log.read_from(Seq(1), 10).await.expect("read").len(), 1);
        drop(log);
        let log = EmbeddedLog::open(dir.path()).expect("reopen after a writer crash");
        assert_eq!(append_stored(&log, "vs.crash.a", "k2", b"y").await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_answers_unknown_hides_the_event_and_stops_appends() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = EmbeddedLog::open(dir.path()).expect("open");
        append_stored(&log, "vs.flush.a", "k1", b"x").await;
        log.stats.fail_next_flush.store(true, Ordering::Relaxed);
        let outcome = log
            .append(request("vs.flush.a", Expected::Any, "k2", b"y"))
            .await;
        assert!(
            matches!(outcome, Err(AppendError::Unknown(_))),
            "a failed flush is an unknown outcome, got {outcome:?}"
        );
        assert_eq!(
            log.last_seq().await.expect("last_seq"),
            Seq(1),
            "the unflushed event is not visible"
        );
        assert_eq!(log.read_subject("vs.flush.a").await.expect("read").len(), 1);
        let outcome = log
            .append(request("vs.flush.a", Expected::Any, "k3", b"z"))
            .await;
        assert!(
            matches!(outcome, Err(AppendError::Unavailable(_))),
            "later appends are refused, got {outcome:?}"
        );
        drop(log);
        // sled wrote the batch after all (the injected failure was ours): the retry with
        // the same key finds it, which is why the answer was Unknown, not "failed".
        let log = EmbeddedLog::open(dir.path()).expect("reopen");
        let retry = log
            .append(request("vs.flush.a", Expected::Any, "k2", b"y"))
            .await
            .expect("append")
            .expect("no conflict");
        assert_eq!(
            retry,
            Appended {
                seq: Seq(2),
                duplicate: true
            }
        );
    }

    #[tokio::test]
    async fn follow_ends_when_the_log_is_dropped() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = EmbeddedLog::open(dir.path()).expect("open");
        let mut following = log.follow(Seq(1));
        drop(log);
        let ended = tokio::time::timeout(Duration::from_secs(10), following.next())
            .await
            .expect("follow must not hang");
        assert!(
            matches!(ended, Some(Err(ReadError::Unavailable(_)))),
            "got {ended:?}"
        );
        assert!(following.next().await.is_none());
        // The stream held the database only weakly: the directory can be opened again.
        EmbeddedLog::open(dir.path()).expect("reopen while an ended stream is alive");
    }

    #[test]
    fn records_round_trip_and_carry_their_key() {
        let record = encode_record(42, "vs.a.b", "key-1", b"payload").expect("encode");
        let decoded = decode_record(42, &record).expect("decode");
        assert_eq!(
            (decoded.subject, decoded.idempotency_key, decoded.payload),
            ("vs.a.b", "key-1", &b"payload"[..])
        );
        assert!(matches!(
            decode_record(43, &record),
            Err(ReadError::Corrupt { seq: Seq(43), .. })
        ));
        for cut in 0..record.len() {
            assert!(
                decode_record(42, &record[..cut]).is_err(),
                "a record cut at {cut} bytes decoded"
            );
        }
    }
}
