//! Conformance cases for appending: sequences start at 1 and are contiguous, each
//! expectation (`Empty`, `LastSeq`, `Any`) holds or conflicts exactly as the contract says,
//! a conflict stores nothing, and invalid subjects and oversized payloads are refused
//! without consuming a sequence.
//!
//! What does not live here: idempotency keys (`dedupe`), concurrent appenders
//! (`concurrency`) and what survives a reopen (`reopen`).

use super::Harness;
use super::support::{all_events, expect_conflict, expect_stored, last_seq, request, subject_seqs};
use crate::ids::Seq;
use crate::log::{AppendError, Expected, PAYLOAD_BYTES_MAX, VersionConflict};
use bytes::Bytes;

/// Sequences start at 1, are contiguous across subjects, and read back with their subject
/// and payload.
pub async fn sequences_start_at_one_and_are_contiguous(h: &dyn Harness) {
    let log = h.fresh().await;
    assert_eq!(last_seq(&*log).await, 0, "a fresh log is empty");
    assert!(log.read_from(Seq(1), 10).await.expect("read").is_empty(), "a fresh log has no events");
    let subjects = ["vs.seq.a", "vs.seq.b", "vs.seq.a", "vs.seq.c", "vs.seq.b"];
    for (index, subject) in subjects.iter().enumerate() {
        let outcome = log.append(request(subject, Expected::Any, &format!("seq-{index}"), format!("p{index}"))).await;
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
    expect_stored(log.append(request("vs.occ.a", Expected::Empty, "e1", "a1")).await, 1, "Empty on an empty subject");
    let conflict = expect_conflict(log.append(request("vs.occ.a", Expected::Empty, "e2", "a2")).await, "Empty on a subject with an event");
    assert_eq!(conflict, VersionConflict { subject: "vs.occ.a".to_owned(), expected: Expected::Empty, actual: Some(Seq(1)) });
    // Another subject is still empty although the log is not.
    expect_stored(log.append(request("vs.occ.b", Expected::Empty, "e3", "b1")).await, 2, "Empty on another subject");
}

/// `Expected::LastSeq` succeeds only with the subject's own last sequence: not a stale
/// one, not another subject's, not a future one.
pub async fn expected_last_seq_right_succeeds_wrong_conflicts(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(log.append(request("vs.occ.a", Expected::Any, "l1", "a1")).await, 1, "first a");
    expect_stored(log.append(request("vs.occ.b", Expected::Any, "l2", "b1")).await, 2, "first b");
    expect_stored(log.append(request("vs.occ.a", Expected::LastSeq(Seq(1)), "l3", "a2")).await, 3, "LastSeq equal to the subject's last sequence");
    for (wrong, why) in [(1, "stale"), (2, "another subject's"), (4, "future"), (0, "empty")] {
        let conflict =
            expect_conflict(log.append(request("vs.occ.a", Expected::LastSeq(Seq(wrong)), &format!("l-wrong-{wrong}"), "x")).await, &format!("LastSeq {why}"));
        assert_eq!(
            conflict,
            VersionConflict { subject: "vs.occ.a".to_owned(), expected: Expected::LastSeq(Seq(wrong)), actual: Some(Seq(3)) },
            "LastSeq {why}"
        );
    }
    let conflict = expect_conflict(log.append(request("vs.occ.c", Expected::LastSeq(Seq(1)), "l4", "c1")).await, "LastSeq on an empty subject");
    assert_eq!(conflict.actual, None, "an empty subject has no last sequence");
    expect_stored(log.append(request("vs.occ.b", Expected::LastSeq(Seq(2)), "l5", "b2")).await, 4, "b after a's conflicts");
}

/// A conflict stores nothing: no event, no sequence consumed, and its idempotency key is
/// not remembered (the re-decided retry with the same key is stored).
pub async fn conflict_stores_nothing(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(log.append(request("vs.occ.a", Expected::Empty, "c1", "a1")).await, 1, "first");
    expect_conflict(log.append(request("vs.occ.a", Expected::Empty, "c2", "refused")).await, "stale Empty");
    expect_conflict(log.append(request("vs.occ.a", Expected::LastSeq(Seq(7)), "c3", "refused")).await, "wrong LastSeq");
    assert_eq!(last_seq(&*log).await, 1, "a conflict consumes no sequence");
    let events = all_events(&*log).await;
    assert_eq!(events.len(), 1, "a conflict stores no event");
    assert_eq!(subject_seqs(&*log, "vs.occ.a").await, vec![1]);
    expect_stored(log.append(request("vs.occ.a", Expected::LastSeq(Seq(1)), "c2", "a2")).await, 2, "the refused key, re-decided");
}

/// `Expected::Any` appends whatever the subject holds.
pub async fn expected_any_always_appends(h: &dyn Harness) {
    let log = h.fresh().await;
    for index in 0..3u64 {
        expect_stored(log.append(request("vs.any.a", Expected::Any, &format!("any-{index}"), "x")).await, index + 1, "Any");
    }
    assert_eq!(subject_seqs(&*log, "vs.any.a").await, vec![1, 2, 3]);
}

/// Subjects outside `vs.<token>(.<token>)*` are refused with `InvalidSubject`, consume no
/// sequence and leave their key unused.
pub async fn invalid_subject_rejected_and_nothing_stored(h: &dyn Harness) {
    let log = h.fresh().await;
    let too_long = format!("vs.{}", "x".repeat(300));
    let invalid = ["", "vs", "vs.", "other.a", "vs..a", "vs.a.", "vs.a b", "vs.a*", "vs.>", "vs.*", "vs.ä", too_long.as_str()];
    for subject in invalid {
        match log.append(request(subject, Expected::Any, "bad", "x")).await {
            Err(AppendError::InvalidSubject(refused)) => assert_eq!(refused, subject),
            other => panic!("subject {subject:?}: expected InvalidSubject, got {other:?}"),
        }
    }
    assert_eq!(last_seq(&*log).await, 0, "nothing stored");
    expect_stored(log.append(request("vs.valid.a", Expected::Empty, "bad", "x")).await, 1, "the refused key is unused");
}

/// A payload over `PAYLOAD_BYTES_MAX` is refused with `TooLarge`; one of exactly that size
/// is stored and read back intact.
pub async fn oversized_payload_rejected_and_nothing_stored(h: &dyn Harness) {
    let log = h.fresh().await;
    let oversized = Bytes::from(vec![7u8; PAYLOAD_BYTES_MAX + 1]);
    match log.append(request("vs.big.a", Expected::Any, "big", oversized)).await {
        Err(AppendError::TooLarge { size, max }) => {
            assert_eq!((size, max), (PAYLOAD_BYTES_MAX + 1, PAYLOAD_BYTES_MAX));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(last_seq(&*log).await, 0, "nothing stored");
    let largest = Bytes::from((0..PAYLOAD_BYTES_MAX).map(|index| (index % 251) as u8).collect::<Vec<u8>>());
    expect_stored(log.append(request("vs.big.a", Expected::Empty, "big", largest.clone())).await, 1, "exactly the limit");
    let events = log.read_subject("vs.big.a").await.expect("read_subject");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload, largest);
}
