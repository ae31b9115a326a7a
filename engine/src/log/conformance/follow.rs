//! Conformance cases for `follow`: existing events then new ones, in order, with no gap
//! and no duplicate, from the start or from any sequence (also past the head).
//!
//! What does not live here: one backend's recovery of a follow after a server restart or
//! divergence; that is tested next to the JetStream backend (replay-tests).

use super::Harness;
use super::support::{all_events, assert_quiet, expect_appended, expect_stored, next_event, request};
use crate::ids::Seq;
use crate::log::Expected;
use bytes::Bytes;
use std::sync::Arc;

/// `follow(1)` yields existing events, then new ones as they are appended (one by one and
/// in a concurrent burst), in order, with no gap and no duplicate; a stream opened on an
/// empty log waits rather than ends.
pub async fn follow_from_start_sees_existing_and_new_events(h: &dyn Harness) {
    let log = h.fresh().await;
    let mut from_empty = log.follow(Seq(1));
    for index in 1..=3u64 {
        expect_stored(log.append(request("vs.follow.a", Expected::Any, &format!("f{index}"), format!("{index}"))).await, index, "existing");
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
        expect_stored(log.append(request("vs.follow.b", Expected::Any, &format!("f{index}"), format!("{index}"))).await, index, "new");
        seen_start.push(next_event(&mut from_start, "a new event").await);
    }
    // A concurrent burst.
    const BURST_APPENDS: u64 = 50;
    let burst: Vec<_> = (0..BURST_APPENDS)
        .map(|index| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let subject = format!("vs.follow.burst{}", index % 5);
                expect_appended(log.append(request(&subject, Expected::Any, &format!("burst-{index}"), "b")).await, "burst")
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
    assert_eq!(seen_start, stored, "follow(1) yields exactly the stored events, in order");
    assert_eq!(seen_empty, stored, "follow(1) opened on an empty log yields the same");
    assert_quiet(&mut from_start, "after the burst").await;
    assert_quiet(&mut from_empty, "after the burst").await;
}

/// `follow(n)` starts exactly at `n`, also when `n` is past the head.
pub async fn follow_from_the_middle(h: &dyn Harness) {
    let log = h.fresh().await;
    for index in 1..=5u64 {
        expect_stored(log.append(request("vs.follow.a", Expected::Any, &format!("m{index}"), format!("{index}"))).await, index, "fill");
    }
    let mut middle = log.follow(Seq(3));
    let mut ahead = log.follow(Seq(8));
    for expected in 3..=5u64 {
        assert_eq!(next_event(&mut middle, "existing from the middle").await.seq, Seq(expected));
    }
    assert_quiet(&mut ahead, "follow(8) before 8 exists").await;
    for index in 6..=8u64 {
        expect_stored(log.append(request("vs.follow.a", Expected::Any, &format!("m{index}"), format!("{index}"))).await, index, "new");
        assert_eq!(next_event(&mut middle, "new from the middle").await.seq, Seq(index));
    }
    let first_ahead = next_event(&mut ahead, "follow(8) once 8 exists").await;
    assert_eq!(first_ahead.seq, Seq(8));
    assert_eq!(first_ahead.payload, Bytes::from_static(b"8"));
    assert_quiet(&mut middle, "after 8").await;
    assert_quiet(&mut ahead, "after 8").await;
}
