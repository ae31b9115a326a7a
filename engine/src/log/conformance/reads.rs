//! Conformance cases for reads: `read_subject` (one subject, in order, however long or
//! large), `read_from` (from and limit) and `last_seq`.
//!
//! What does not live here: reading as the log grows (`follow`).

use super::Harness;
use super::support::{expect_appended, expect_conflict, expect_stored, last_seq, request};
use crate::ids::Seq;
use crate::log::{Expected, PAYLOAD_BYTES_MAX, StoredEvent};
use bytes::Bytes;
use futures::StreamExt as _;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `read_subject` returns exactly one subject's events, in order, even when other
/// subjects share its prefix.
pub async fn read_subject_returns_only_that_subject_in_order(h: &dyn Harness) {
    let log = h.fresh().await;
    let subjects = ["vs.voucher.a", "vs.voucher.ab", "vs.voucher.a.b", "vs.voucher.b", "vs.voucher"];
    let mut expected: BTreeMap<&str, Vec<(u64, Bytes)>> = BTreeMap::new();
    for round in 0..4 {
        for subject in subjects {
            let payload = Bytes::from(format!("{subject}#{round}"));
            let appended =
                expect_appended(log.append(request(subject, Expected::Any, &format!("{subject}-{round}"), payload.clone())).await, "interleaved append");
            expected.entry(subject).or_default().push((appended.seq.0, payload));
        }
    }
    for (subject, events) in &expected {
        let read = log.read_subject(subject).await.expect("read_subject");
        let read: Vec<(u64, Bytes)> = read
            .into_iter()
            .map(|event| {
                assert_eq!(event.subject, *subject, "read_subject({subject}) returned another subject");
                (event.seq.0, event.payload)
            })
            .collect();
        assert_eq!(&read, events, "read_subject({subject})");
    }
    assert!(log.read_subject("vs.voucher.c").await.expect("read_subject").is_empty(), "unknown subject");
    assert!(log.read_subject("vs.vouch").await.expect("read_subject").is_empty(), "a prefix is not a subject");
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
        expect_stored(log.append(request("vs.read.a", Expected::Any, &format!("r{index}"), format!("{index}"))).await, index, "fill");
    }
    let seqs = |events: Vec<StoredEvent>| events.into_iter().map(|event| event.seq.0).collect::<Vec<_>>();
    let read = |from: u64, limit: usize| {
        let log = Arc::clone(&log);
        async move { log.read_from(Seq(from), limit).await.expect("read_from") }
    };
    assert_eq!(seqs(read(1, 3).await), vec![1, 2, 3]);
    assert_eq!(seqs(read(4, 3).await), vec![4, 5, 6]);
    assert_eq!(seqs(read(9, 5).await), vec![9, 10], "a limit past the end");
    assert_eq!(seqs(read(0, 2).await), vec![1, 2], "from 0 is from the start");
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
    expect_stored(log.append(request("vs.last.a", Expected::Any, "s1", "x")).await, 1, "first");
    assert_eq!(last_seq(&*log).await, 1);
    expect_stored(log.append(request("vs.last.b", Expected::Any, "s2", "x")).await, 2, "second");
    assert_eq!(last_seq(&*log).await, 2);
    expect_appended(log.append(request("vs.last.a", Expected::Any, "s1", "x")).await, "duplicate");
    expect_conflict(log.append(request("vs.last.a", Expected::Empty, "s3", "x")).await, "conflict");
    assert_eq!(last_seq(&*log).await, 2, "duplicates and conflicts store nothing");
}
