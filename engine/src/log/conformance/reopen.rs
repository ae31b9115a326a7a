//! Conformance case for reopening: every acknowledged event survives, the sequence
//! continues where it stopped, subjects keep their last sequence and keys stay
//! deduplicated.
//!
//! What does not live here: crashes mid-write, which need a process to kill (the embedded
//! log's crash tests in engine/tests, the JetStream ones in replay-tests).

use super::Harness;
use super::support::{all_events, expect_appended, expect_conflict, expect_stored, last_seq, next_event, request, subject_seqs};
use crate::ids::Seq;
use crate::log::{Appended, Expected};

/// Reopening keeps every event, the sequence continues where it stopped, subjects keep
/// their last sequence and keys stay deduplicated.
pub async fn reopen_preserves_events_and_continues_sequence(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(log.append(request("vs.reopen.a", Expected::Empty, "o1", "a1")).await, 1, "a1");
    expect_stored(log.append(request("vs.reopen.b", Expected::Empty, "o2", "b1")).await, 2, "b1");
    expect_stored(log.append(request("vs.reopen.a", Expected::LastSeq(Seq(1)), "o3", "a2")).await, 3, "a2");
    let before = all_events(&*log).await;

    let log = h.reopen(log).await;
    assert_eq!(all_events(&*log).await, before, "every event survives a reopen");
    assert_eq!(last_seq(&*log).await, 3);
    assert_eq!(subject_seqs(&*log, "vs.reopen.a").await, vec![1, 3]);
    let duplicate = expect_appended(log.append(request("vs.reopen.a", Expected::Any, "o3", "a2")).await, "retry after reopen");
    assert_eq!(duplicate, Appended { seq: Seq(3), duplicate: true }, "keys are remembered across a reopen");
    let conflict = expect_conflict(log.append(request("vs.reopen.a", Expected::LastSeq(Seq(1)), "o4", "x")).await, "stale expectation after reopen");
    assert_eq!(conflict.actual, Some(Seq(3)));
    expect_stored(log.append(request("vs.reopen.a", Expected::LastSeq(Seq(3)), "o5", "a3")).await, 4, "continues");
    expect_stored(log.append(request("vs.reopen.c", Expected::Empty, "o6", "c1")).await, 5, "new subject");

    let log = h.reopen(log).await;
    let events = all_events(&*log).await;
    assert_eq!(events.len(), 5, "a second reopen keeps the new events too");
    assert_eq!(events[..3], before[..]);
    let mut following = log.follow(Seq(4));
    assert_eq!(next_event(&mut following, "follow after reopen").await.seq, Seq(4));
    assert_eq!(next_event(&mut following, "follow after reopen").await.seq, Seq(5));
}
