//! What every conformance case shares: building requests, expecting an append, a
//! conflict or a stored sequence, reading everything back and checking it is contiguous,
//! and bounded waits on a `follow` stream (so a stalled backend fails instead of hanging).
//!
//! What does not live here: the cases themselves (one file per theme) and anything a
//! backend supplies (`Harness`).

use crate::ids::Seq;
use crate::log::{AppendError, AppendRequest, Appended, EventLog, Expected, ReadError, StoredEvent, VersionConflict};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use std::time::Duration;

/// How long a `follow` stream may take to yield an event that is already acknowledged.
const FOLLOW_WAIT_MS: u64 = 10_000;
/// How long a `follow` stream is watched for an event that must not come (a duplicate).
const QUIET_WAIT_MS: u64 = 300;
/// Enough to read every event any case writes in one call.
const READ_ALL_LIMIT: usize = 100_000;

pub(super) fn request(subject: &str, expected: Expected, key: &str, payload: impl Into<Bytes>) -> AppendRequest {
    AppendRequest { subject: subject.to_owned(), expected, idempotency_key: key.to_owned(), payload: payload.into() }
}

#[track_caller]
pub(super) fn expect_appended(outcome: Result<Result<Appended, VersionConflict>, AppendError>, what: &str) -> Appended {
    match outcome {
        Ok(Ok(appended)) => appended,
        Ok(Err(conflict)) => {
            panic!("{what}: expected an append, got a version conflict: {conflict}")
        }
        Err(error) => panic!("{what}: expected an append, got an error: {error}"),
    }
}

#[track_caller]
pub(super) fn expect_stored(outcome: Result<Result<Appended, VersionConflict>, AppendError>, seq: u64, what: &str) {
    let appended = expect_appended(outcome, what);
    assert_eq!(appended, Appended { seq: Seq(seq), duplicate: false }, "{what}");
}

#[track_caller]
pub(super) fn expect_conflict(outcome: Result<Result<Appended, VersionConflict>, AppendError>, what: &str) -> VersionConflict {
    match outcome {
        Ok(Err(conflict)) => conflict,
        Ok(Ok(appended)) => panic!("{what}: expected a version conflict, got {appended:?}"),
        Err(error) => panic!("{what}: expected a version conflict, got an error: {error}"),
    }
}

pub(super) async fn all_events(log: &dyn EventLog) -> Vec<StoredEvent> {
    let events = log.read_from(Seq(1), READ_ALL_LIMIT).await.expect("read_from(1) must succeed");
    assert_contiguous(&events, 1);
    events
}

#[track_caller]
fn assert_contiguous(events: &[StoredEvent], first: u64) {
    let seqs: Vec<u64> = events.iter().map(|event| event.seq.0).collect();
    let expected: Vec<u64> = (first..first + events.len() as u64).collect();
    assert_eq!(seqs, expected, "sequences must be contiguous from {first}");
}

pub(super) async fn last_seq(log: &dyn EventLog) -> u64 {
    log.last_seq().await.expect("last_seq must succeed").0
}

pub(super) async fn subject_seqs(log: &dyn EventLog, subject: &str) -> Vec<u64> {
    let events = log.read_subject(subject).await.expect("read_subject must succeed");
    assert!(events.iter().all(|event| event.subject == subject), "read_subject({subject}) returned another subject");
    events.iter().map(|event| event.seq.0).collect()
}

pub(super) async fn next_event(stream: &mut BoxStream<'static, Result<StoredEvent, ReadError>>, what: &str) -> StoredEvent {
    match tokio::time::timeout(Duration::from_millis(FOLLOW_WAIT_MS), stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("{what}: follow yielded an error: {error}"),
        Ok(None) => panic!("{what}: follow ended"),
        Err(_) => panic!("{what}: follow yielded nothing within {FOLLOW_WAIT_MS} ms"),
    }
}

pub(super) async fn assert_quiet(stream: &mut BoxStream<'static, Result<StoredEvent, ReadError>>, what: &str) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(QUIET_WAIT_MS), stream.next()).await {
        panic!("{what}: follow yielded {item:?} although no event was appended (a duplicate?)");
    }
}
