//! Conformance cases for idempotency keys: a duplicate answers the original sequence and
//! stores nothing, dedupe comes before the expectation check, and a duplicate does not
//! break the next expected-sequence append.
//!
//! What does not live here: duplicates racing each other (`concurrency`) and keys kept
//! across a reopen (`reopen`).

use super::Harness;
use super::support::{all_events, expect_appended, expect_stored, last_seq, request, subject_seqs};
use crate::ids::Seq;
use crate::log::{Appended, Expected};
use bytes::Bytes;

/// The same idempotency key answers the original sequence with `duplicate = true` and
/// stores nothing, even with another payload.
pub async fn duplicate_returns_original_seq_and_stores_nothing(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(log.append(request("vs.dup.a", Expected::Any, "k1", "original")).await, 1, "first");
    expect_stored(log.append(request("vs.dup.b", Expected::Any, "k2", "other")).await, 2, "second");
    let again = expect_appended(log.append(request("vs.dup.a", Expected::Any, "k1", "original")).await, "retry");
    assert_eq!(again, Appended { seq: Seq(1), duplicate: true }, "a retry answers the original");
    let changed = expect_appended(log.append(request("vs.dup.a", Expected::Any, "k1", "changed")).await, "changed retry");
    assert_eq!(changed, Appended { seq: Seq(1), duplicate: true }, "the key alone decides");
    assert_eq!(last_seq(&*log).await, 2, "a duplicate consumes no sequence");
    let events = all_events(&*log).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].payload, Bytes::from_static(b"original"), "the original payload stays");
    assert_eq!(subject_seqs(&*log, "vs.dup.a").await, vec![1]);
}

/// Dedupe comes before the expectation: a retry whose first attempt succeeded carries an
/// expectation that is now stale, and must still be answered as a duplicate.
pub async fn dedupe_precedes_expectation(h: &dyn Harness) {
    let log = h.fresh().await;
    let first = request("vs.dup.a", Expected::Empty, "k1", "a1");
    expect_stored(log.append(first.clone()).await, 1, "first");
    let retry = expect_appended(log.append(first).await, "retry with a stale Empty");
    assert_eq!(retry, Appended { seq: Seq(1), duplicate: true });
    let second = request("vs.dup.a", Expected::LastSeq(Seq(1)), "k2", "a2");
    expect_stored(log.append(second.clone()).await, 2, "second");
    let retry = expect_appended(log.append(second).await, "retry with a stale LastSeq");
    assert_eq!(retry, Appended { seq: Seq(2), duplicate: true });
    assert_eq!(subject_seqs(&*log, "vs.dup.a").await, vec![1, 2]);
}

/// Regression for nats-server #2242: after a duplicate, the next expected-sequence append
/// on the same subject must still succeed.
pub async fn duplicate_does_not_break_next_expected_append(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(log.append(request("vs.dup.a", Expected::Empty, "k1", "a1")).await, 1, "first");
    let duplicate = expect_appended(log.append(request("vs.dup.a", Expected::Empty, "k1", "a1")).await, "duplicate");
    assert!(duplicate.duplicate);
    expect_stored(log.append(request("vs.dup.a", Expected::LastSeq(Seq(1)), "k2", "a2")).await, 2, "expected-sequence append after a duplicate");
    let duplicate = expect_appended(log.append(request("vs.dup.a", Expected::LastSeq(Seq(1)), "k2", "a2")).await, "duplicate");
    assert_eq!(duplicate, Appended { seq: Seq(2), duplicate: true });
    expect_stored(log.append(request("vs.dup.a", Expected::LastSeq(Seq(2)), "k3", "a3")).await, 3, "expected-sequence append after a second duplicate");
    assert_eq!(subject_seqs(&*log, "vs.dup.a").await, vec![1, 2, 3]);
}
