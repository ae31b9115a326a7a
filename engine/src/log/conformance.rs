//! The `EventLog` conformance suite: one async function per promise of the contract in
//! `crate::log`, written against the trait only, so every backend (embedded here,
//! JetStream in the replay tests against a real nats-server) runs the very same checks.
//!
//! A backend supplies a [`Harness`] and expands [`conformance_tests!`](crate::conformance_tests)
//! with it, which generates one `#[tokio::test]` per case (the calling crate needs tokio
//! with the `macros` and `rt-multi-thread` features). What does not live here: checks of
//! one backend's internals (batching, on-disk corruption, crash recovery); those sit next to
//! the backend.
//!
//! Every case panics with a message naming the broken promise; waits are bounded, so a
//! backend that stalls fails instead of hanging the test run.

use super::{
    AppendError, AppendRequest, Appended, EventLog, Expected, PAYLOAD_BYTES_MAX, StoredEvent,
    VersionConflict,
};
use crate::ids::Seq;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Creates and reopens logs for the suite.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// A new, empty log.
    async fn fresh(&self) -> Arc<dyn EventLog>;
    /// Drop `log` and open the same storage again (all acknowledged events must be there).
    async fn reopen(&self, log: Arc<dyn EventLog>) -> Arc<dyn EventLog>;
}

/// How long a `follow` stream may take to yield an event that is already acknowledged.
const FOLLOW_WAIT_MS: u64 = 10_000;
/// How long a `follow` stream is watched for an event that must not come (a duplicate).
const QUIET_WAIT_MS: u64 = 300;
/// Appending tasks in the concurrency case, each on its own subject.
const CONCURRENT_TASKS: usize = 8;
/// Appends per task in the concurrency case.
const CONCURRENT_APPENDS_PER_TASK: usize = 200;
/// Tasks incrementing one shared subject with optimistic-concurrency retries.
const SHARED_SUBJECT_TASKS: usize = 4;
/// Successful appends each shared-subject task makes.
const SHARED_SUBJECT_APPENDS_PER_TASK: usize = 25;
/// Conflicts a shared-subject task tolerates for one append before the case fails (far
/// above what fair scheduling produces; it only turns a livelock into a failure).
const OCC_RETRIES_MAX: usize = 10_000;
/// Concurrent appenders in the race cases.
const RACERS: usize = 16;
/// Enough to read every event any case writes in one call.
const READ_ALL_LIMIT: usize = 100_000;

// ---------------------------------------------------------------------------------------
// Helpers.

fn request(
    subject: &str,
    expected: Expected,
    key: &str,
    payload: impl Into<Bytes>,
) -> AppendRequest {
    AppendRequest {
        subject: subject.to_owned(),
        expected,
        idempotency_key: key.to_owned(),
        payload: payload.into(),
    }
}

#[track_caller]
fn expect_appended(
    outcome: Result<Result<Appended, VersionConflict>, AppendError>,
    what: &str,
) -> Appended {
    match outcome {
        Ok(Ok(appended)) => appended,
        Ok(Err(conflict)) => {
            panic!("{what}: expected an append, got a version conflict: {conflict}")
        }
        Err(error) => panic!("{what}: expected an append, got an error: {error}"),
    }
}

#[track_caller]
fn expect_stored(
    outcome: Result<Result<Appended, VersionConflict>, AppendError>,
    seq: u64,
    what: &str,
) {
    let appended = expect_appended(outcome, what);
    assert_eq!(
        appended,
        Appended {
            seq: Seq(seq),
            duplicate: false
        },
        "{what}"
    );
}

#[track_caller]
fn expect_conflict(
    outcome: Result<Result<Appended, VersionConflict>, AppendError>,
    what: &str,
) -> VersionConflict {
    match outcome {
        Ok(Err(conflict)) => conflict,
        Ok(Ok(appended)) => panic!("{what}: expected a version conflict, got {appended:?}"),
        Err(error) => panic!("{what}: expected a version conflict, got an error: {error}"),
    }
}

async fn all_events(log: &dyn EventLog) -> Vec<StoredEvent> {
    let events = log
        .read_from(Seq(1), READ_ALL_LIMIT)
        .await
        .expect("read_from(1) must succeed");
    assert_contiguous(&events, 1);
    events
}

#[track_caller]
fn assert_contiguous(events: &[StoredEvent], first: u64) {
    let seqs: Vec<u64> = events.iter().map(|event| event.seq.0).collect();
    let expected: Vec<u64> = (first..first + events.len() as u64).collect();
    assert_eq!(seqs, expected, "sequences must be contiguous from {first}");
}

async fn last_seq(log: &dyn EventLog) -> u64 {
    log.last_seq().await.expect("last_seq must succeed").0
}

async fn subject_seqs(log: &dyn EventLog, subject: &str) -> Vec<u64> {
    let events = log
        .read_subject(subject)
        .await
        .expect("read_subject must succeed");
    assert!(
        events.iter().all(|event| event.subject == subject),
        "read_subject({subject}) returned another subject"
    );
    events.iter().map(|event| event.seq.0).collect()
}

async fn next_event(
    stream: &mut BoxStream<'static, Result<StoredEvent, super::ReadError>>,
    what: &str,
) -> StoredEvent {
    match tokio::time::timeout(Duration::from_millis(FOLLOW_WAIT_MS), stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("{what}: follow yielded an error: {error}"),
        Ok(None) => panic!("{what}: follow ended"),
        Err(_) => panic!("{what}: follow yielded nothing within {FOLLOW_WAIT_MS} ms"),
    }
}

async fn assert_quiet(
    stream: &mut BoxStream<'static, Result<StoredEvent, super::ReadError>>,
    what: &str,
) {
    if let Ok(item) =
        tokio::time::timeout(Duration::from_millis(QUIET_WAIT_MS), stream.next()).await
    {
        panic!("{what}: follow yielded {item:?} although no event was appended (a duplicate?)");
    }
}

// ---------------------------------------------------------------------------------------
// Cases.

/// Sequences start at 1, are contiguous across subjects, and read back with their subject
/// and payload.
pub async fn sequences_start_at_one_and_are_contiguous(h: &dyn Harness) {
    let log = h.fresh().await;
    assert_eq!(last_seq(&*log).await, 0, "a fresh log is empty");
    assert!(
        log.read_from(Seq(1), 10).await.expect("read").is_empty(),
        "a fresh log has no events"
    );
    let subjects = ["vs.seq.a", "vs.seq.b", "vs.seq.a", "vs.seq.c", "vs.seq.b"];
    for (index, subject) in subjects.iter().enumerate() {
        let outcome = log
            .append(request(
                subject,
                Expected::Any,
                &format!("seq-{index}"),
                format!("p{index}"),
            ))
            .await;
        expect_stored(outcome, index as u64 + 1, "append on a fresh log");
    }
    let events = all_events(&*log).await;
    assert_eq!(events.len(), subjects.len());
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.subject, subjects[index]);
        assert_eq!(event.payload, Bytes::from(format!("p{index}")));
    }
    assert_eq!(last_seq(&*log).await, 5);
}

/// `Expected::Empty` succeeds on a subject without events (whatever the rest of the log
/// holds) and conflicts, with the subject's last sequence, once it has one.
pub async fn expected_empty_succeeds_on_empty_subject_and_conflicts_otherwise(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(
        log.append(request("vs.occ.a", Expected::Empty, "e1", "a1"))
            .await,
        1,
        "Empty on an empty subject",
    );
    let conflict = expect_conflict(
        log.append(request("vs.occ.a", Expected::Empty, "e2", "a2"))
            .await,
        "Empty on a subject with an event",
    );
    assert_eq!(
        conflict,
        VersionConflict {
            subject: "vs.occ.a".to_owned(),
            expected: Expected::Empty,
            actual: Some(Seq(1))
        }
    );
    // Another subject is still empty although the log is not.
    expect_stored(
        log.append(request("vs.occ.b", Expected::Empty, "e3", "b1"))
            .await,
        2,
        "Empty on another subject",
    );
}

/// `Expected::LastSeq` succeeds only with the subject's own last sequence: not a stale
/// one, not another subject's, not a future one.
pub async fn expected_last_seq_right_succeeds_wrong_conflicts(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(
        log.append(request("vs.occ.a", Expected::Any, "l1", "a1"))
            .await,
        1,
        "first a",
    );
    expect_stored(
        log.append(request("vs.occ.b", Expected::Any, "l2", "b1"))
            .await,
        2,
        "first b",
    );
    expect_stored(
        log.append(request("vs.occ.a", Expected::LastSeq(Seq(1)), "l3", "a2"))
            .await,
        3,
        "LastSeq equal to the subject's last sequence",
    );
    for (wrong, why) in [
        (1, "stale"),
        (2, "another subject's"),
        (4, "future"),
        (0, "empty"),
    ] {
        let conflict = expect_conflict(
            log.append(request(
                "vs.occ.a",
                Expected::LastSeq(Seq(wrong)),
                &format!("l-wrong-{wrong}"),
                "x",
            ))
            .await,
            &format!("LastSeq {why}"),
        );
        assert_eq!(
            conflict,
            VersionConflict {
                subject: "vs.occ.a".to_owned(),
                expected: Expected::LastSeq(Seq(wrong)),
                actual: Some(Seq(3))
            },
            "LastSeq {why}"
        );
    }
    let conflict = expect_conflict(
        log.append(request("vs.occ.c", Expected::LastSeq(Seq(1)), "l4", "c1"))
            .await,
        "LastSeq on an empty subject",
    );
    assert_eq!(
        conflict.actual, None,
        "an empty subject has no last sequence"
    );
    expect_stored(
        log.append(request("vs.occ.b", Expected::LastSeq(Seq(2)), "l5", "b2"))
            .await,
        4,
        "b after a's conflicts",
    );
}

/// A conflict stores nothing: no event, no sequence consumed, and its idempotency key is
/// not remembered (the re-decided retry with the same key is stored).
pub async fn conflict_stores_nothing(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(
        log.append(request("vs.occ.a", Expected::Empty, "c1", "a1"))
            .await,
        1,
        "first",
    );
    expect_conflict(
        log.append(request("vs.occ.a", Expected::Empty, "c2", "refused"))
            .await,
        "stale Empty",
    );
    expect_conflict(
        log.append(request(
            "vs.occ.a",
            Expected::LastSeq(Seq(7)),
            "c3",
            "refused",
        ))
        .await,
        "wrong LastSeq",
    );
    assert_eq!(last_seq(&*log).await, 1, "a conflict consumes no sequence");
    let events = all_events(&*log).await;
    assert_eq!(events.len(), 1, "a conflict stores no event");
    assert_eq!(subject_seqs(&*log, "vs.occ.a").await, vec![1]);
    expect_stored(
        log.append(request("vs.occ.a", Expected::LastSeq(Seq(1)), "c2", "a2"))
            .await,
        2,
        "the refused key, re-decided",
    );
}

/// `Expected::Any` appends whatever the subject holds.
pub async fn expected_any_always_appends(h: &dyn Harness) {
    let log = h.fresh().await;
    for index in 0..3u64 {
        expect_stored(
            log.append(request(
                "vs.any.a",
                Expected::Any,
                &format!("any-{index}"),
                "x",
            ))
            .await,
            index + 1,
            "Any",
        );
    }
    assert_eq!(subject_seqs(&*log, "vs.any.a").await, vec![1, 2, 3]);
}

/// The same idempotency key answers the original sequence with `duplicate = true` and
/// stores nothing, even with another payload.
pub async fn duplicate_returns_original_seq_and_stores_nothing(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(
        log.append(request("vs.dup.a", Expected::Any, "k1", "original"))
            .await,
        1,
        "first",
    );
    expect_stored(
        log.append(request("vs.dup.b", Expected::Any, "k2", "other"))
            .await,
        2,
        "second",
    );
    let again = expect_appended(
        log.append(request("vs.dup.a", Expected::Any, "k1", "original"))
            .await,
        "retry",
    );
    assert_eq!(
        again,
        Appended {
            seq: Seq(1),
            duplicate: true
        },
        "a retry answers the original"
    );
    let changed = expect_appended(
        log.append(request("vs.dup.a", Expected::Any, "k1", "changed"))
            .await,
        "changed retry",
    );
    assert_eq!(
        changed,
        Appended {
            seq: Seq(1),
            duplicate: true
        },
        "the key alone decides"
    );
    assert_eq!(last_seq(&*log).await, 2, "a duplicate consumes no sequence");
    let events = all_events(&*log).await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].payload,
        Bytes::from_static(b"original"),
        "the original payload stays"
    );
    assert_eq!(subject_seqs(&*log, "vs.dup.a").await, vec![1]);
}

/// Dedupe comes before the expectation: a retry whose first attempt succeeded carries an
/// expectation that is now stale, and must still be answered as a duplicate.
pub async fn dedupe_precedes_expectation(h: &dyn Harness) {
    let log = h.fresh().await;
    let first = request("vs.dup.a", Expected::Empty, "k1", "a1");
    expect_stored(log.append(first.clone()).await, 1, "first");
    let retry = expect_appended(log.append(first).await, "retry with a stale Empty");
    assert_eq!(
        retry,
        Appended {
            seq: Seq(1),
            duplicate: true
        }
    );
    let second = request("vs.dup.a", Expected::LastSeq(Seq(1)), "k2", "a2");
    expect_stored(log.append(second.clone()).await, 2, "second");
    let retry = expect_appended(log.append(second).await, "retry with a stale LastSeq");
    assert_eq!(
        retry,
        Appended {
            seq: Seq(2),
            duplicate: true
        }
    );
    assert_eq!(subject_seqs(&*log, "vs.dup.a").await, vec![1, 2]);
}

/// Regression for nats-server #2242: after a duplicate, the next expected-sequence append
/// on the same subject must still succeed.
pub async fn duplicate_does_not_break_next_expected_append(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(
        log.append(request("vs.dup.a", Expected::Empty, "k1", "a1"))
            .await,
        1,
        "first",
    );
    let duplicate = expect_appended(
        log.append(request("vs.dup.a", Expected::Empty, "k1", "a1"))
            .await,
        "duplicate",
    );
    assert!(duplicate.duplicate);
    expect_stored(
        log.append(request("vs.dup.a", Expected::LastSeq(Seq(1)), "k2", "a2"))
            .await,
        2,
        "expected-sequence append after a duplicate",
    );
    let duplicate = expect_appended(
        log.append(request("vs.dup.a", Expected::LastSeq(Seq(1)), "k2", "a2"))
            .await,
        "duplicate",
    );
    assert_eq!(
        duplicate,
        Appended {
            seq: Seq(2),
            duplicate: true
        }
    );
    expect_stored(
        log.append(request("vs.dup.a", Expected::LastSeq(Seq(2)), "k3", "a3"))
            .await,
        3,
        "expected-sequence append after a second duplicate",
    );
    assert_eq!(subject_seqs(&*log, "vs.dup.a").await, vec![1, 2, 3]);
}

/// `read_subject` returns exactly one subject's events, in order, even when other
/// subjects share its prefix.
pub async fn read_subject_returns_only_that_subject_in_order(h: &dyn Harness) {
    let log = h.fresh().await;
    let subjects = [
        "vs.voucher.a",
        "vs.voucher.ab",
        "vs.voucher.a.b",
        "vs.voucher.b",
        "vs.voucher",
    ];
    let mut expected: BTreeMap<&str, Vec<(u64, Bytes)>> = BTreeMap::new();
    for round in 0..4 {
        for subject in subjects {
            let payload = Bytes::from(format!("{subject}#{round}"));
            let appended = expect_appended(
                log.append(request(
                    subject,
                    Expected::Any,
                    &format!("{subject}-{round}"),
                    payload.clone(),
                ))
                .await,
                "interleaved append",
            );
            expected
                .entry(subject)
                .or_default()
                .push((appended.seq.0, payload));
        }
    }
    for (subject, events) in &expected {
        let read = log.read_subject(subject).await.expect("read_subject");
        let read: Vec<(u64, Bytes)> = read
            .into_iter()
            .map(|event| {
                assert_eq!(
                    event.subject, *subject,
                    "read_subject({subject}) returned another subject"
                );
                (event.seq.0, event.payload)
            })
            .collect();
        assert_eq!(&read, events, "read_subject({subject})");
    }
    assert!(
        log.read_subject("vs.voucher.c")
            .await
            .expect("read_subject")
            .is_empty(),
        "unknown subject"
    );
    assert!(
        log.read_subject("vs.vouch")
            .await
            .expect("read_subject")
            .is_empty(),
        "a prefix is not a subject"
    );
}

/// `read_subject` returns every event of a subject however many there are and however
/// large (the JetStream backend reads in batches bounded by count and by bytes, so a long
/// subject and a subject of large events each take several batches).
pub async fn read_subject_reads_long_and_large_subjects_whole(h: &dyn Harness) {
    let log = h.fresh().await;
    const LONG_EVENTS: usize = 600;
    const LARGE_EVENTS: usize = 20;
    let mut wanted: Vec<(&str, String, Bytes)> = Vec::new();
    for index in 0..LONG_EVENTS {
        wanted.push(("vs.long.a", format!("a-{index}"), Bytes::from(format!("a#{index}"))));
        wanted.push(("vs.long.ab", format!("ab-{index}"), Bytes::from(format!("ab#{index}"))));
    }
    for index in 0..LARGE_EVENTS {
        wanted.push(("vs.long.big", format!("big-{index}"), Bytes::from(vec![index as u8; PAYLOAD_BYTES_MAX])));
    }
    let mut appends: futures::stream::FuturesUnordered<_> = wanted
        .into_iter()
        .map(|(subject, key, payload)| {
            let log = Arc::clone(&log);
            async move {
                let appended = expect_appended(log.append(request(subject, Expected::Any, &key, payload.clone())).await, "append");
                (subject, appended.seq.0, payload)
            }
        })
        .collect();
    let mut expected: BTreeMap<&str, Vec<(u64, Bytes)>> = BTreeMap::new();
    while let Some((subject, seq, payload)) = appends.next().await {
        expected.entry(subject).or_default().push((seq, payload));
    }
    for (subject, events) in &mut expected {
        events.sort_by_key(|(seq, _)| *seq);
        let read: Vec<(u64, Bytes)> = log.read_subject(subject).await.expect("read_subject").into_iter().map(|event| (event.seq.0, event.payload)).collect();
        assert_eq!(read.len(), events.len(), "read_subject({subject}) count");
        assert!(read == *events, "read_subject({subject}) returned other events than were appended");
    }
}

/// `read_from` starts at `from` (0 means the start) and returns at most `limit` events.
pub async fn read_from_respects_from_and_limit(h: &dyn Harness) {
    let log = h.fresh().await;
    for index in 1..=10u64 {
        expect_stored(
            log.append(request(
                "vs.read.a",
                Expected::Any,
                &format!("r{index}"),
                format!("{index}"),
            ))
            .await,
            index,
            "fill",
        );
    }
    let seqs = |events: Vec<StoredEvent>| {
        events
            .into_iter()
            .map(|event| event.seq.0)
            .collect::<Vec<_>>()
    };
    let read = |from: u64, limit: usize| {
        let log = Arc::clone(&log);
        async move { log.read_from(Seq(from), limit).await.expect("read_from") }
    };
    assert_eq!(seqs(read(1, 3).await), vec![1, 2, 3]);
    assert_eq!(seqs(read(4, 3).await), vec![4, 5, 6]);
    assert_eq!(seqs(read(9, 5).await), vec![9, 10], "a limit past the end");
    assert_eq!(
        seqs(read(0, 2).await),
        vec![1, 2],
        "from 0 is from the start"
    );
    assert_eq!(seqs(read(1, 1000).await), (1..=10).collect::<Vec<_>>());
    assert!(read(11, 5).await.is_empty(), "from past the end");
    assert!(read(3, 0).await.is_empty(), "limit 0");
    let events = read(7, 1).await;
    assert_eq!(events[0].payload, Bytes::from_static(b"7"));
}

/// `last_seq` follows stored appends and ignores duplicates and conflicts.
pub async fn last_seq_tracks_appends(h: &dyn Harness) {
    let log = h.fresh().await;
    assert_eq!(last_seq(&*log).await, 0);
    expect_stored(
        log.append(request("vs.last.a", Expected::Any, "s1", "x"))
            .await,
        1,
        "first",
    );
    assert_eq!(last_seq(&*log).await, 1);
    expect_stored(
        log.append(request("vs.last.b", Expected::Any, "s2", "x"))
            .await,
        2,
        "second",
    );
    assert_eq!(last_seq(&*log).await, 2);
    expect_appended(
        log.append(request("vs.last.a", Expected::Any, "s1", "x"))
            .await,
        "duplicate",
    );
    expect_conflict(
        log.append(request("vs.last.a", Expected::Empty, "s3", "x"))
            .await,
        "conflict",
    );
    assert_eq!(
        last_seq(&*log).await,
        2,
        "duplicates and conflicts store nothing"
    );
}

/// `follow(1)` yields existing events, then new ones as they are appended (one by one and
/// in a concurrent burst), in order, with no gap and no duplicate; a stream opened on an
/// empty log waits rather than ends.
pub async fn follow_from_start_sees_existing_and_new_events(h: &dyn Harness) {
    let log = h.fresh().await;
    let mut from_empty = log.follow(Seq(1));
    for index in 1..=3u64 {
        expect_stored(
            log.append(request(
                "vs.follow.a",
                Expected::Any,
                &format!("f{index}"),
                format!("{index}"),
            ))
            .await,
            index,
            "existing",
        );
    }
    let mut from_start = log.follow(Seq(1));
    let mut seen_empty = Vec::new();
    let mut seen_start = Vec::new();
    for _ in 0..3 {
        seen_start.push(next_event(&mut from_start, "existing events").await);
        seen_empty.push(next_event(&mut from_empty, "events after an empty start").await);
    }
    // New events while both streams are caught up and waiting.
    for index in 4..=6u64 {
        expect_stored(
            log.append(request(
                "vs.follow.b",
                Expected::Any,
                &format!("f{index}"),
                format!("{index}"),
            ))
            .await,
            index,
            "new",
        );
        seen_start.push(next_event(&mut from_start, "a new event").await);
    }
    // A concurrent burst.
    const BURST_APPENDS: u64 = 50;
    let burst: Vec<_> = (0..BURST_APPENDS)
        .map(|index| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let subject = format!("vs.follow.burst{}", index % 5);
                expect_appended(
                    log.append(request(
                        &subject,
                        Expected::Any,
                        &format!("burst-{index}"),
                        "b",
                    ))
                    .await,
                    "burst",
                )
            })
        })
        .collect();
    for task in burst {
        task.await.expect("burst task");
    }
    let total = 6 + BURST_APPENDS;
    while (seen_start.len() as u64) < total {
        seen_start.push(next_event(&mut from_start, "the burst").await);
    }
    while (seen_empty.len() as u64) < total {
        seen_empty.push(next_event(&mut from_empty, "the burst").await);
    }
    let stored = all_events(&*log).await;
    assert_eq!(stored.len() as u64, total);
    assert_eq!(
        seen_start, stored,
        "follow(1) yields exactly the stored events, in order"
    );
    assert_eq!(
        seen_empty, stored,
        "follow(1) opened on an empty log yields the same"
    );
    assert_quiet(&mut from_start, "after the burst").await;
    assert_quiet(&mut from_empty, "after the burst").await;
}

/// `follow(n)` starts exactly at `n`, also when `n` is past the head.
pub async fn follow_from_the_middle(h: &dyn Harness) {
    let log = h.fresh().await;
    for index in 1..=5u64 {
        expect_stored(
            log.append(request(
                "vs.follow.a",
                Expected::Any,
                &format!("m{index}"),
                format!("{index}"),
            ))
            .await,
            index,
            "fill",
        );
    }
    let mut middle = log.follow(Seq(3));
    let mut ahead = log.follow(Seq(8));
    for expected in 3..=5u64 {
        assert_eq!(
            next_event(&mut middle, "existing from the middle")
                .await
                .seq,
            Seq(expected)
        );
    }
    assert_quiet(&mut ahead, "follow(8) before 8 exists").await;
    for index in 6..=8u64 {
        expect_stored(
            log.append(request(
                "vs.follow.a",
                Expected::Any,
                &format!("m{index}"),
                format!("{index}"),
            ))
            .await,
            index,
            "new",
        );
        assert_eq!(
            next_event(&mut middle, "new from the middle").await.seq,
            Seq(index)
        );
    }
    let first_ahead = next_event(&mut ahead, "follow(8) once 8 exists").await;
    assert_eq!(first_ahead.seq, Seq(8));
    assert_eq!(first_ahead.payload, Bytes::from_static(b"8"));
    assert_quiet(&mut middle, "after 8").await;
    assert_quiet(&mut ahead, "after 8").await;
}

/// Many concurrent appenders: every acknowledged sequence is distinct, together they are
/// contiguous from 1, each subject keeps its appenders' order, and exactly the successful
/// appends are stored. Includes tasks racing on one subject with optimistic-concurrency
/// retry loops.
pub async fn concurrent_appenders_get_distinct_contiguous_sequences(h: &dyn Harness) {
    let log = h.fresh().await;
    let mut tasks = Vec::new();
    for task in 0..CONCURRENT_TASKS {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let subject = format!("vs.conc.t{task}");
            let mut acked = Vec::with_capacity(CONCURRENT_APPENDS_PER_TASK);
            let mut last = Expected::Empty;
            for index in 0..CONCURRENT_APPENDS_PER_TASK {
                let payload = format!("{task}/{index}");
                let appended = expect_appended(
                    log.append(request(
                        &subject,
                        last,
                        &format!("conc-{task}-{index}"),
                        payload.clone(),
                    ))
                    .await,
                    "an append on the task's own subject, with the right expectation",
                );
                assert!(!appended.duplicate);
                last = Expected::LastSeq(appended.seq);
                acked.push((appended.seq.0, subject.clone(), payload));
            }
            acked
        }));
    }
    for task in 0..SHARED_SUBJECT_TASKS {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let subject = "vs.conc.shared".to_owned();
            let mut acked = Vec::with_capacity(SHARED_SUBJECT_APPENDS_PER_TASK);
            for index in 0..SHARED_SUBJECT_APPENDS_PER_TASK {
                let payload = format!("shared/{task}/{index}");
                let key = format!("shared-{task}-{index}");
                let mut retries = 0;
                let appended = loop {
                    // Decide on what is stored now, as an aggregate reload does.
                    let last = subject_seqs(&*log, &subject).await.last().copied();
                    let expected = last.map_or(Expected::Empty, |seq| Expected::LastSeq(Seq(seq)));
                    match log
                        .append(request(&subject, expected, &key, payload.clone()))
                        .await
                    {
                        Ok(Ok(appended)) => break appended,
                        Ok(Err(_conflict)) => {
                            retries += 1;
                            assert!(
                                retries <= OCC_RETRIES_MAX,
                                "shared subject: more than {OCC_RETRIES_MAX} conflicts"
                            );
                        }
                        Err(error) => panic!("shared subject append failed: {error}"),
                    }
                };
                assert!(
                    !appended.duplicate,
                    "a key that never succeeded cannot be a duplicate"
                );
                acked.push((appended.seq.0, subject.clone(), payload));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("appending task"));
    }

    let total = CONCURRENT_TASKS * CONCURRENT_APPENDS_PER_TASK
        + SHARED_SUBJECT_TASKS * SHARED_SUBJECT_APPENDS_PER_TASK;
    assert_eq!(acked.len(), total);
    let distinct: BTreeSet<u64> = acked.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(distinct.len(), total, "acknowledged sequences are distinct");
    assert_eq!(
        distinct.iter().copied().collect::<Vec<_>>(),
        (1..=total as u64).collect::<Vec<_>>(),
        "and contiguous"
    );
    assert_eq!(last_seq(&*log).await, total as u64);

    let stored = all_events(&*log).await;
    assert_eq!(
        stored.len(),
        total,
        "exactly the successful appends are stored"
    );
    for (seq, subject, payload) in &acked {
        let event = &stored[(*seq - 1) as usize];
        assert_eq!(
            (&event.subject, &event.payload),
            (subject, &Bytes::from(payload.clone())),
            "event {seq}"
        );
    }
    // Per-subject order: each task's appends in its own order.
    for task in 0..CONCURRENT_TASKS {
        let events = log
            .read_subject(&format!("vs.conc.t{task}"))
            .await
            .expect("read_subject");
        let payloads: Vec<Bytes> = events.into_iter().map(|event| event.payload).collect();
        let expected: Vec<Bytes> = (0..CONCURRENT_APPENDS_PER_TASK)
            .map(|index| Bytes::from(format!("{task}/{index}")))
            .collect();
        assert_eq!(payloads, expected, "task {task}'s subject keeps its order");
    }
    let shared = log
        .read_subject("vs.conc.shared")
        .await
        .expect("read_subject");
    assert_eq!(
        shared.len(),
        SHARED_SUBJECT_TASKS * SHARED_SUBJECT_APPENDS_PER_TASK
    );
    let unique: HashSet<&Bytes> = shared.iter().map(|event| &event.payload).collect();
    assert_eq!(
        unique.len(),
        shared.len(),
        "each shared-subject append stored once"
    );
    for task in 0..SHARED_SUBJECT_TASKS {
        let prefix = format!("shared/{task}/");
        let order: Vec<&Bytes> = shared
            .iter()
            .map(|event| &event.payload)
            .filter(|payload| payload.starts_with(prefix.as_bytes()))
            .collect();
        let expected: Vec<Bytes> = (0..SHARED_SUBJECT_APPENDS_PER_TASK)
            .map(|index| Bytes::from(format!("{prefix}{index}")))
            .collect();
        assert_eq!(
            order,
            expected.iter().collect::<Vec<_>>(),
            "shared-subject task {task} keeps its order"
        );
    }
}

/// Racing appenders with the same expectation on one subject: exactly one wins, the
/// others conflict and store nothing.
pub async fn racing_expectations_admit_exactly_one(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(
        log.append(request("vs.race.other", Expected::Any, "race-0", "x"))
            .await,
        1,
        "an unrelated event first",
    );
    let racers = |expected: Expected, round: &'static str| {
        (0..RACERS)
            .map(|index| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let key = format!("race-{round}-{index}");
                    log.append(request("vs.race.a", expected, &key, key.clone()))
                        .await
                })
            })
            .collect::<Vec<_>>()
    };
    for (expected, round) in [
        (Expected::Empty, "empty"),
        (Expected::LastSeq(Seq(2)), "last"),
    ] {
        let mut winners = Vec::new();
        for task in racers(expected, round) {
            match task.await.expect("racing task") {
                Ok(Ok(appended)) => winners.push(appended),
                Ok(Err(_conflict)) => {}
                Err(error) => panic!("racing append failed: {error}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "{expected:?}: exactly one racer wins, got {winners:?}"
        );
    }
    assert_eq!(subject_seqs(&*log, "vs.race.a").await, vec![2, 3]);
    assert_eq!(last_seq(&*log).await, 3, "the losers stored nothing");
}

/// Concurrent appends with one idempotency key store one event; every one of them is
/// answered with its sequence, exactly one as the original.
pub async fn racing_duplicates_store_once(h: &dyn Harness) {
    let log = h.fresh().await;
    let tasks: Vec<_> = (0..RACERS)
        .map(|index| {
            let log = Arc::clone(&log);
            let subject = format!("vs.race.s{}", index % 3);
            tokio::spawn(async move {
                log.append(request(&subject, Expected::Any, "the-key", "x"))
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(expect_appended(
            task.await.expect("racing task"),
            "a racing duplicate",
        ));
    }
    assert!(
        answers.iter().all(|appended| appended.seq == Seq(1)),
        "{answers:?}"
    );
    let originals = answers
        .iter()
        .filter(|appended| !appended.duplicate)
        .count();
    assert_eq!(originals, 1, "exactly one answer is the original");
    assert_eq!(all_events(&*log).await.len(), 1, "one event stored");
}

/// Reopening keeps every event, the sequence continues where it stopped, subjects keep
/// their last sequence and keys stay deduplicated.
pub async fn reopen_preserves_events_and_continues_sequence(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(
        log.append(request("vs.reopen.a", Expected::Empty, "o1", "a1"))
            .await,
        1,
        "a1",
    );
    expect_stored(
        log.append(request("vs.reopen.b", Expected::Empty, "o2", "b1"))
            .await,
        2,
        "b1",
    );
    expect_stored(
        log.append(request(
            "vs.reopen.a",
            Expected::LastSeq(Seq(1)),
            "o3",
            "a2",
        ))
        .await,
        3,
        "a2",
    );
    let before = all_events(&*log).await;

    let log = h.reopen(log).await;
    assert_eq!(
        all_events(&*log).await,
        before,
        "every event survives a reopen"
    );
    assert_eq!(last_seq(&*log).await, 3);
    assert_eq!(subject_seqs(&*log, "vs.reopen.a").await, vec![1, 3]);
    let duplicate = expect_appended(
        log.append(request("vs.reopen.a", Expected::Any, "o3", "a2"))
            .await,
        "retry after reopen",
    );
    assert_eq!(
        duplicate,
        Appended {
            seq: Seq(3),
            duplicate: true
        },
        "keys are remembered across a reopen"
    );
    let conflict = expect_conflict(
        log.append(request("vs.reopen.a", Expected::LastSeq(Seq(1)), "o4", "x"))
            .await,
        "stale expectation after reopen",
    );
    assert_eq!(conflict.actual, Some(Seq(3)));
    expect_stored(
        log.append(request(
            "vs.reopen.a",
            Expected::LastSeq(Seq(3)),
            "o5",
            "a3",
        ))
        .await,
        4,
        "continues",
    );
    expect_stored(
        log.append(request("vs.reopen.c", Expected::Empty, "o6", "c1"))
            .await,
        5,
        "new subject",
    );

    let log = h.reopen(log).await;
    let events = all_events(&*log).await;
    assert_eq!(events.len(), 5, "a second reopen keeps the new events too");
    assert_eq!(events[..3], before[..]);
    let mut following = log.follow(Seq(4));
    assert_eq!(
        next_event(&mut following, "follow after reopen").await.seq,
        Seq(4)
    );
    assert_eq!(
        next_event(&mut following, "follow after reopen").await.seq,
        Seq(5)
    );
}

/// Subjects outside `vs.<token>(.<token>)*` are refused with `InvalidSubject`, consume no
/// sequence and leave their key unused.
pub async fn invalid_subject_rejected_and_nothing_stored(h: &dyn Harness) {
    let log = h.fresh().await;
    let too_long = format!("vs.{}", "x".repeat(300));
    let invalid = [
        "",
        "vs",
        "vs.",
        "other.a",
        "vs..a",
        "vs.a.",
        "vs.a b",
        "vs.a*",
        "vs.>",
        "vs.*",
        "vs.ä",
        too_long.as_str(),
    ];
    for subject in invalid {
        match log
            .append(request(subject, Expected::Any, "bad", "x"))
            .await
        {
            Err(AppendError::InvalidSubject(refused)) => assert_eq!(refused, subject),
            other => panic!("subject {subject:?}: expected InvalidSubject, got {other:?}"),
        }
    }
    assert_eq!(last_seq(&*log).await, 0, "nothing stored");
    expect_stored(
        log.append(request("vs.valid.a", Expected::Empty, "bad", "x"))
            .await,
        1,
        "the refused key is unused",
    );
}

/// A payload over `PAYLOAD_BYTES_MAX` is refused with `TooLarge`; one of exactly that size
/// is stored and read back intact.
pub async fn oversized_payload_rejected_and_nothing_stored(h: &dyn Harness) {
    let log = h.fresh().await;
    let oversized = Bytes::from(vec![7u8; PAYLOAD_BYTES_MAX + 1]);
    match log
        .append(request("vs.big.a", Expected::Any, "big", oversized))
        .await
    {
        Err(AppendError::TooLarge { size, max }) => {
            assert_eq!((size, max), (PAYLOAD_BYTES_MAX + 1, PAYLOAD_BYTES_MAX));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(last_seq(&*log).await, 0, "nothing stored");
    let largest = Bytes::from(
        (0..PAYLOAD_BYTES_MAX)
            .map(|index| (index % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    expect_stored(
        log.append(request("vs.big.a", Expected::Empty, "big", largest.clone()))
            .await,
        1,
        "exactly the limit",
    );
    let events = log.read_subject("vs.big.a").await.expect("read_subject");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload, largest);
}

/// Expands to one `#[tokio::test]` per conformance case, each running the case against
/// `$harness` (an expression evaluated afresh for every test, whose type implements
/// `Harness`).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            sequences_start_at_one_and_are_contiguous,
            expected_empty_succeeds_on_empty_subject_and_conflicts_otherwise,
            expected_last_seq_right_succeeds_wrong_conflicts,
            conflict_stores_nothing,
            expected_any_always_appends,
            duplicate_returns_original_seq_and_stores_nothing,
            dedupe_precedes_expectation,
            duplicate_does_not_break_next_expected_append,
            read_subject_returns_only_that_subject_in_order,
            read_subject_reads_long_and_large_subjects_whole,
            read_from_respects_from_and_limit,
            last_seq_tracks_appends,
            follow_from_start_sees_existing_and_new_events,
            follow_from_the_middle,
            concurrent_appenders_get_distinct_contiguous_sequences,
            racing_expectations_admit_exactly_one,
            racing_duplicates_store_once,
            reopen_preserves_events_and_continues_sequence,
            invalid_subject_rejected_and_nothing_stored,
            oversized_payload_rejected_and_nothing_stored,
        );
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::log::conformance::$case(&$harness).await;
            }
        )+
    };
}
