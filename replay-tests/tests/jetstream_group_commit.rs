//! Group commit (`StreamOptions::group_commit`) against a real nats-server with
//! `sync_interval: always`: appends waiting together go as one atomic batch, and each caller
//! still gets exactly the answer a single publish gives it — its sequence, a version
//! conflict for a lost race, `duplicate` for a repeated idempotency key — even when one
//! bad member makes the server refuse the whole batch. (The whole `EventLog` conformance
//! suite also runs with group commit, in `jetstream_conformance.rs`.)

use engine::ids::Seq;
use engine::log::jetstream::{GROUP_COMMIT_MIN, JetStreamLog, StreamOptions};
use engine::log::{AppendRequest, EventLog, Expected};
use std::collections::BTreeSet;
use std::sync::Arc;

const STREAM: &str = "GROUPED";

fn request(subject: &str, expected: Expected, key: &str) -> AppendRequest {
    AppendRequest { subject: subject.into(), expected, idempotency_key: key.into(), payload: bytes::Bytes::from(format!("payload of {key}")) }
}

async fn grouped(url: &str) -> Arc<JetStreamLog> {
    Arc::new(
        JetStreamLog::connect_with(url, STREAM, StreamOptions { group_commit: true, ..StreamOptions::default() }).await.expect("connect with group commit"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_stored_in_batches_each_with_its_own_sequence() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    let log = grouped(&server.url()).await;
    let appends = 600;
    let answers = futures::future::join_all((0..appends).map(|n| {
        let log = Arc::clone(&log);
        async move { log.append(request(&format!("vs.g.s{n}"), Expected::Empty, &format!("k{n}"))).await }
    }))
    .await;
    let mut seqs = BTreeSet::new();
    for answer in answers {
        let appended = answer.expect("stored").expect("no conflict on a fresh subject");
        assert!(!appended.duplicate);
        assert!(seqs.insert(appended.seq), "sequence {} answered twice", appended.seq);
    }
    assert_eq!(seqs, (1..=appends as u64).map(Seq).collect(), "every append has its own sequence, and they fill the stream");
    for n in [0usize, 299, 599] {
        let stored = log.read_subject(&format!("vs.g.s{n}")).await.expect("read");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].payload.as_ref(), format!("payload of k{n}").as_bytes(), "each payload is on its own subject");
    }
    let stats = log.group_commit_stats().expect("group commit is on");
    eprintln!("group commit: {stats:?}");
    assert!(stats.batches >= 1 && stats.batched >= GROUP_COMMIT_MIN as u64, "{appends} concurrent appends made no batch: {stats:?}");
    assert_eq!(stats.batched + stats.single, appends as u64, "{stats:?}");
    assert_eq!(log.last_seq().await.expect("head"), Seq(appends as u64));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_answers_every_member_as_a_single_publish_would() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    let log = grouped(&server.url()).await;
    // Stored before: 20 subjects, each with one event (sequences 1..=20).
    for n in 0..20 {
        let appended = log.append(request(&format!("vs.g.old{n}"), Expected::Empty, &format!("old{n}"))).await.expect("stored").expect("no conflict");
        assert_eq!(appended.seq, Seq(n + 1));
    }
    // Then, at once: 200 good appends, 10 with a stale expectation, 10 repeats of an old
    // idempotency key with its expectation (a retry of an append already stored), and two
    // racing first appends on one new subject.
    enum Kind {
        Good,
        Stale,
        Repeat(u64),
        Race,
    }
    let mut bad = Vec::new();
    for n in 0..10u64 {
        bad.push((Kind::Stale, request(&format!("vs.g.old{n}"), Expected::Empty, &format!("stale{n}"))));
    }
    for n in 10..20u64 {
        bad.push((Kind::Repeat(n + 1), request(&format!("vs.g.old{n}"), Expected::Empty, &format!("old{n}"))));
    }
    for racer in 0..2 {
        bad.push((Kind::Race, request("vs.g.contested", Expected::Empty, &format!("racer{racer}"))));
    }
    // The others spread among the good ones, one after every ninth: whichever rounds the
    // log cuts, a batch holds some of them (all at the end, a loaded machine once sent
    // them alone, after one batch of good appends, and no batch was refused).
    let mut bad = bad.into_iter();
    let mut requests = Vec::new();
    for n in 0..200 {
        requests.push((Kind::Good, request(&format!("vs.g.new{n}"), Expected::Empty, &format!("new{n}"))));
        if n % 9 == 8 {
            requests.extend(bad.next());
        }
    }
    requests.extend(bad);
    let answers = futures::future::join_all(requests.into_iter().map(|(kind, request)| {
        let log = Arc::clone(&log);
        async move { (kind, log.append(request).await) }
    }))
    .await;
    let (mut good, mut race_wins, mut race_losses) = (0, 0, 0);
    for (kind, answer) in answers {
        let answer = answer.expect("every append gets an answer, not an error");
        match kind {
            Kind::Good => {
                let appended = answer.expect("a good append is stored");
                assert!(!appended.duplicate && appended.seq > Seq(20));
                good += 1;
            }
            Kind::Stale => {
                let conflict = answer.expect_err("a stale expectation is a version conflict");
                assert_eq!(conflict.expected, Expected::Empty);
            }
            Kind::Repeat(original) => {
                let appended = answer.expect("a repeat is answered");
                assert!(appended.duplicate, "a repeated idempotency key answers duplicate");
                assert_eq!(appended.seq, Seq(original), "with the original's sequence");
            }
            Kind::Race => match answer {
                Ok(appended) => {
                    assert!(!appended.duplicate);
                    race_wins += 1;
                }
                Err(_) => race_losses += 1,
            },
        }
    }
    assert_eq!((good, race_wins, race_losses), (200, 1, 1));
    assert_eq!(log.last_seq().await.expect("head"), Seq(20 + 200 + 1), "nothing refused was stored, nothing stored twice");
    let stats = log.group_commit_stats().expect("group commit is on");
    eprintln!("group commit: {stats:?}");
    assert!(stats.refused >= 1, "the bad members made the server refuse a batch: {stats:?}");
    drop(server);
}
