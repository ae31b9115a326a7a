//! Tests of the embedded log's own internals beyond the shared conformance suite (which
//! runs here too, against logs in temporary directories): decisions within one batch,
//! group commit, on-disk damage found and named, refusals to open, a dead writer, a failed
//! flush, and the record format.
//!
//! What does not live here: the `EventLog` contract itself (`crate::log::conformance`), and
//! crashes of a whole process (engine/tests/embedded_crash.rs).

use super::open::open_waiting_for_lock;
use super::record::{RECORD_FORMAT_V1, decode_record, encode_record, event_key};
use super::*;
use crate::log::Expected;
use crate::log::conformance::Harness;
use bytes::Bytes;
use std::collections::HashMap;
use std::path::Path;
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
        let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(dir.path()).expect("open a fresh log"));
        self.dirs.lock().expect("harness lock").insert(address(&log), dir);
        log
    }

    async fn reopen(&self, log: Arc<dyn EventLog>) -> Arc<dyn EventLog> {
        let dir = self.dirs.lock().expect("harness lock").remove(&address(&log)).expect("a log this harness opened");
        assert_eq!(Arc::strong_count(&log), 1, "the case must hold no other reference to the log it reopens");
        drop(log);
        let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(dir.path()).expect("reopen the log"));
        self.dirs.lock().expect("harness lock").insert(address(&log), dir);
        log
    }
}

mod conformance {
    use super::TempDirHarness;
    crate::conformance_tests!(TempDirHarness::default());
}

fn request(subject: &str, expected: Expected, key: &str, payload: &'static [u8]) -> AppendRequest {
    AppendRequest { subject: subject.to_owned(), expected, idempotency_key: key.to_owned(), payload: Bytes::from_static(payload) }
}

async fn append_stored(log: &EmbeddedLog, subject: &str, key: &str, payload: &'static [u8]) -> u64 {
    let appended = log.append(request(subject, Expected::Any, key, payload)).await.expect("append").expect("no conflict");
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
    writer(log).send(WriterCommand::Pause { paused, resume: resume_receiver }).await.expect("writer running");
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
    let conflict = |expected, actual| Err(VersionConflict { subject: "vs.batch.a".to_owned(), expected, actual: Some(Seq(actual)) });
    assert_eq!(
        outcomes,
        vec![
            Ok(Appended { seq: Seq(1), duplicate: false }),
            conflict(Expected::Empty, 1),
            Ok(Appended { seq: Seq(1), duplicate: true }),
            Ok(Appended { seq: Seq(2), duplicate: false }),
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
                log.append(AppendRequest { subject, expected: Expected::Any, idempotency_key: format!("g{index}"), payload: Bytes::from(format!("{index}")) })
                    .await
            })
        })
        .collect();
    wait_until_queued(&log, GROUP_COMMIT_APPENDS).await;
    assert_eq!(log.flush_count(), 0);
    resume.send(()).expect("writer waiting");

    let mut seqs = Vec::new();
    for task in tasks {
        let appended = task.await.expect("task").expect("append").expect("no conflict");
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
        task.await.expect("task").expect("append").expect("no conflict");
    }
    let flushes = log.flush_count();
    eprintln!("{GROUP_COMMIT_APPENDS} concurrent appends took {flushes} flushes");
    assert!(flushes * 5 <= GROUP_COMMIT_APPENDS as u64, "{flushes} flushes for {GROUP_COMMIT_APPENDS} appends");
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
    assert_eq!(events.len(), 3, "negative control: before the damage every read works");
}

#[tokio::test]
async fn flipped_byte_is_reported_corrupt_with_its_sequence() {
    let dir = tempfile::tempdir().expect("temporary directory");
    three_events(dir.path()).await;
    with_raw_db(dir.path(), |db| {
        let mut record = db.get(event_key(2)).expect("get").expect("record 2").to_vec();
        let last = record.len() - 1;
        record[last] ^= 0x01;
        db.insert(event_key(2), record).expect("insert");
    });
    let log = EmbeddedLog::open(dir.path()).expect("the damage is not in the last record");
    match log.read_from(Seq(1), 10).await {
        Err(ReadError::Corrupt { seq, .. }) => assert_eq!(seq, Seq(2)),
        other => panic!("expected Corrupt at 2, got {other:?}"),
    }
    assert!(matches!(log.read_subject("vs.corrupt.a").await, Err(ReadError::Corrupt { seq: Seq(2), .. })));
    assert_eq!(log.read_from(Seq(3), 10).await.expect("past the damage").len(), 1);
    let mut following = log.follow(Seq(1));
    assert_eq!(following.next().await.expect("item").expect("event 1").seq, Seq(1));
    assert!(matches!(following.next().await, Some(Err(ReadError::Corrupt { seq: Seq(2), .. }))));
    assert!(following.next().await.is_none(), "follow ends at a corrupt record instead of skipping it");
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
    assert!(matches!(log.read_from(Seq(1), 10).await, Err(ReadError::Corrupt { seq: Seq(2), .. })));
}

#[tokio::test]
async fn missing_record_is_reported_not_skipped() {
    let dir = tempfile::tempdir().expect("temporary directory");
    three_events(dir.path()).await;
    with_raw_db(dir.path(), |db| {
        db.remove(event_key(2)).expect("remove");
    });
    let log = EmbeddedLog::open(dir.path()).expect("open");
    assert!(matches!(log.read_from(Seq(1), 10).await, Err(ReadError::Corrupt { seq: Seq(2), .. })));
    assert!(matches!(log.read_subject("vs.corrupt.a").await, Err(ReadError::Corrupt { seq: Seq(2), .. })));
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
        db.insert(event_key(3), &[RECORD_FORMAT_V1, 0, 0][..]).expect("insert");
    });
    assert!(matches!(EmbeddedLog::open(dir.path()), Err(OpenError::Corrupt { .. })));
}

#[test]
fn open_refuses_a_foreign_sled_database() {
    let dir = tempfile::tempdir().expect("temporary directory");
    with_raw_db(dir.path(), |db| {
        db.insert(b"projection", &b"state"[..]).expect("insert");
    });
    assert!(matches!(EmbeddedLog::open(dir.path()), Err(OpenError::NotAnEventLog { found: None, .. })));
}

#[test]
fn open_of_a_directory_in_use_is_an_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let _first = EmbeddedLog::open(dir.path()).expect("first open");
    assert!(matches!(EmbeddedLog::open(dir.path()), Err(OpenError::Storage { .. })));
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
    writer(&log).send(WriterCommand::Crash).await.expect("writer running");
    let outcome = tokio::time::timeout(Duration::from_secs(10), log.append(request("vs.crash.a", Expected::Any, "k2", b"y")))
        .await
        .expect("an append to a dead writer must not hang");
    assert!(matches!(outcome, Err(AppendError::Unavailable(_) | AppendError::Unknown(_))), "expected Unavailable or Unknown, got {outcome:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), following.next()).await.expect("follow must not hang");
    assert!(matches!(ended, Some(Err(ReadError::Unavailable(_)))), "got {ended:?}");
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
    let outcome = log.append(request("vs.flush.a", Expected::Any, "k2", b"y")).await;
    assert!(matches!(outcome, Err(AppendError::Unknown(_))), "a failed flush is an unknown outcome, got {outcome:?}");
    // The cause travels as typed sources (the flush failure, then sled's error), and the
    // message still names it and tells the caller how to retry.
    let error = outcome.expect_err("an unknown outcome");
    let message = error.to_string();
    assert!(
        message.contains("flush failed: ") && message.contains("injected flush failure") && message.ends_with("retry with the same request id"),
        "{message}"
    );
    let flush = std::error::Error::source(&error).expect("the flush failure is the source");
    assert!(flush.to_string().starts_with("flush failed: "), "{flush}");
    let sled = flush.source().expect("sled's error is the flush failure's source");
    assert!(sled.to_string().contains("injected flush failure"), "{sled}");
    assert_eq!(log.last_seq().await.expect("last_seq"), Seq(1), "the unflushed event is not visible");
    assert_eq!(log.read_subject("vs.flush.a").await.expect("read").len(), 1);
    let outcome = log.append(request("vs.flush.a", Expected::Any, "k3", b"z")).await;
    assert!(matches!(outcome, Err(AppendError::Unavailable(_))), "later appends are refused, got {outcome:?}");
    drop(log);
    // sled wrote the batch after all (the injected failure was ours): the retry with
    // the same key finds it, which is why the answer was Unknown, not "failed".
    let log = EmbeddedLog::open(dir.path()).expect("reopen");
    let retry = log.append(request("vs.flush.a", Expected::Any, "k2", b"y")).await.expect("append").expect("no conflict");
    assert_eq!(retry, Appended { seq: Seq(2), duplicate: true });
}

#[tokio::test]
async fn follow_ends_when_the_log_is_dropped() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = EmbeddedLog::open(dir.path()).expect("open");
    let mut following = log.follow(Seq(1));
    drop(log);
    let ended = tokio::time::timeout(Duration::from_secs(10), following.next()).await.expect("follow must not hang");
    assert!(matches!(ended, Some(Err(ReadError::Unavailable(_)))), "got {ended:?}");
    assert!(following.next().await.is_none());
    // The stream held the database only weakly: the directory can be opened again.
    EmbeddedLog::open(dir.path()).expect("reopen while an ended stream is alive");
}

#[test]
fn records_round_trip_and_carry_their_key() {
    let record = encode_record(42, "vs.a.b", "key-1", b"payload").expect("encode");
    let decoded = decode_record(42, &record).expect("decode");
    assert_eq!((decoded.subject, decoded.idempotency_key, decoded.payload), ("vs.a.b", "key-1", &b"payload"[..]));
    assert!(matches!(decode_record(43, &record), Err(ReadError::Corrupt { seq: Seq(43), .. })));
    for cut in 0..record.len() {
        assert!(decode_record(42, &record[..cut]).is_err(), "a record cut at {cut} bytes decoded");
    }
}

/// The checksum is part of every stored record, so its bytes must never change: pinned to
/// what it was before the hash moved behind `crypto::Hasher`.
#[test]
fn the_record_checksum_is_stable() {
    let record = encode_record(42, "vs.a.b", "key-1", b"payload").expect("encode");
    assert_eq!(hex::encode(&record[1..17]), "be9f46dedf535615ba80d61694828b7a");
}
