//! Conformance cases for concurrent appenders: distinct, contiguous sequences with each
//! subject's order kept (also under optimistic-concurrency retry loops on one subject),
//! exactly one winner among racing expectations, and one stored event for racing
//! duplicates.
//!
//! What does not live here: how a backend batches concurrent appends (group commit is
//! tested next to each backend); the cases only check what every caller can observe.

use super::Harness;
use super::support::{all_events, expect_appended, expect_stored, last_seq, request, subject_seqs};
use crate::ids::Seq;
use crate::log::Expected;
use bytes::Bytes;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

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
                    log.append(request(&subject, last, &format!("conc-{task}-{index}"), payload.clone())).await,
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
                    match log.append(request(&subject, expected, &key, payload.clone())).await {
                        Ok(Ok(appended)) => break appended,
                        Ok(Err(_conflict)) => {
                            retries += 1;
                            assert!(retries <= OCC_RETRIES_MAX, "shared subject: more than {OCC_RETRIES_MAX} conflicts");
                        }
                        Err(error) => panic!("shared subject append failed: {error}"),
                    }
                };
                assert!(!appended.duplicate, "a key that never succeeded cannot be a duplicate");
                acked.push((appended.seq.0, subject.clone(), payload));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("appending task"));
    }

    let total = CONCURRENT_TASKS * CONCURRENT_APPENDS_PER_TASK + SHARED_SUBJECT_TASKS * SHARED_SUBJECT_APPENDS_PER_TASK;
    assert_eq!(acked.len(), total);
    let distinct: BTreeSet<u64> = acked.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(distinct.len(), total, "acknowledged sequences are distinct");
    assert_eq!(distinct.iter().copied().collect::<Vec<_>>(), (1..=total as u64).collect::<Vec<_>>(), "and contiguous");
    assert_eq!(last_seq(&*log).await, total as u64);

    let stored = all_events(&*log).await;
    assert_eq!(stored.len(), total, "exactly the successful appends are stored");
    for (seq, subject, payload) in &acked {
        let event = &stored[(*seq - 1) as usize];
        assert_eq!((&event.subject, &event.payload), (subject, &Bytes::from(payload.clone())), "event {seq}");
    }
    // Per-subject order: each task's appends in its own order.
    for task in 0..CONCURRENT_TASKS {
        let events = log.read_subject(&format!("vs.conc.t{task}")).await.expect("read_subject");
        let payloads: Vec<Bytes> = events.into_iter().map(|event| event.payload).collect();
        let expected: Vec<Bytes> = (0..CONCURRENT_APPENDS_PER_TASK).map(|index| Bytes::from(format!("{task}/{index}"))).collect();
        assert_eq!(payloads, expected, "task {task}'s subject keeps its order");
    }
    let shared = log.read_subject("vs.conc.shared").await.expect("read_subject");
    assert_eq!(shared.len(), SHARED_SUBJECT_TASKS * SHARED_SUBJECT_APPENDS_PER_TASK);
    let unique: HashSet<&Bytes> = shared.iter().map(|event| &event.payload).collect();
    assert_eq!(unique.len(), shared.len(), "each shared-subject append stored once");
    for task in 0..SHARED_SUBJECT_TASKS {
        let prefix = format!("shared/{task}/");
        let order: Vec<&Bytes> = shared.iter().map(|event| &event.payload).filter(|payload| payload.starts_with(prefix.as_bytes())).collect();
        let expected: Vec<Bytes> = (0..SHARED_SUBJECT_APPENDS_PER_TASK).map(|index| Bytes::from(format!("{prefix}{index}"))).collect();
        assert_eq!(order, expected.iter().collect::<Vec<_>>(), "shared-subject task {task} keeps its order");
    }
}

/// Racing appenders with the same expectation on one subject: exactly one wins, the
/// others conflict and store nothing.
pub async fn racing_expectations_admit_exactly_one(h: &dyn Harness) {
    let log = h.fresh().await;
    expect_stored(log.append(request("vs.race.other", Expected::Any, "race-0", "x")).await, 1, "an unrelated event first");
    let racers = |expected: Expected, round: &'static str| {
        (0..RACERS)
            .map(|index| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let key = format!("race-{round}-{index}");
                    log.append(request("vs.race.a", expected, &key, key.clone())).await
                })
            })
            .collect::<Vec<_>>()
    };
    for (expected, round) in [(Expected::Empty, "empty"), (Expected::LastSeq(Seq(2)), "last")] {
        let mut winners = Vec::new();
        for task in racers(expected, round) {
            match task.await.expect("racing task") {
                Ok(Ok(appended)) => winners.push(appended),
                Ok(Err(_conflict)) => {}
                Err(error) => panic!("racing append failed: {error}"),
            }
        }
        assert_eq!(winners.len(), 1, "{expected:?}: exactly one racer wins, got {winners:?}");
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
            tokio::spawn(async move { log.append(request(&subject, Expected::Any, "the-key", "x")).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(expect_appended(task.await.expect("racing task"), "a racing duplicate"));
    }
    assert!(answers.iter().all(|appended| appended.seq == Seq(1)), "{answers:?}");
    let originals = answers.iter().filter(|appended| !appended.duplicate).count();
    assert_eq!(originals, 1, "exactly one answer is the original");
    assert_eq!(all_events(&*log).await.len(), 1, "one event stored");
}
