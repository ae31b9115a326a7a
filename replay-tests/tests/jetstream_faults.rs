//! The JetStream log under server crashes: a nats-server killed with SIGKILL in the middle
//! of a pipelined load and restarted on the same store keeps every acknowledged append, in
//! order, exactly once, and appends during the outage fail with a clear error or succeed
//! after it; a `follow` running across a restart yields every event exactly once, with no
//! gap.

use bytes::Bytes;
use engine::ids::Seq;
use engine::log::jetstream::{APPEND_ATTEMPTS_MAX, APPEND_RETRY_DELAY_MS, JetStreamLog, REQUEST_TIMEOUT_MS};
use engine::log::{AppendError, AppendRequest, EventLog, Expected, StoredEvent};
use futures::StreamExt as _;
use replay_tests::NatsServer;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Concurrent appenders, each on its own subject with an expected-sequence chain.
const APPENDERS: usize = 32;
/// Appends each appender makes.
const APPENDS_PER_APPENDER: u64 = 150;
/// Acknowledged appends before the server is killed (mid-load).
const ACKS_BEFORE_KILL: u64 = 1_000;
/// How long the server stays dead.
const OUTAGE_MS: u64 = 700;
/// How long one appender keeps retrying one append through the outage before the test fails.
const APPEND_DEADLINE_MS: u64 = 60_000;
/// Pause between an appender's retries.
const RETRY_PAUSE_MS: u64 = 50;
/// Events appended while a follower runs across a restart.
const FOLLOWED_EVENTS: u64 = 600;
/// How long the follower may take to yield an acknowledged event.
const FOLLOW_WAIT_MS: u64 = 30_000;

fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|error| panic!("{error}"))
}

/// What an appender saw: the sequence of each acknowledged append, and the errors on the way.
#[derive(Default, Debug)]
struct Record {
    acked: Vec<(u64, Seq)>,
    errors: Vec<String>,
    /// Retries answered as duplicates (their first attempt had been stored).
    duplicates: u64,
}

/// Appends `count` events on `subject`, each expecting the previous one, retrying one
/// append with the same key and expectation after an unknown outcome or an unavailable log,
/// as the engine's caller would.
async fn append_chain(log: Arc<JetStreamLog>, subject: String, count: u64, acks: Arc<AtomicU64>) -> Record {
    let mut record = Record::default();
    let mut expected = Expected::Empty;
    for index in 0..count {
        let key = format!("{subject}#{index}");
        let request = AppendRequest { subject: subject.clone(), expected, idempotency_key: key.clone(), payload: Bytes::from(key) };
        let deadline = Instant::now() + Duration::from_millis(APPEND_DEADLINE_MS);
        loop {
            match log.append(request.clone()).await {
                Ok(Ok(appended)) => {
                    record.acked.push((index, appended.seq));
                    record.duplicates += u64::from(appended.duplicate);
                    expected = Expected::LastSeq(appended.seq);
                    acks.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(conflict)) => {
                    panic!("{subject}#{index}: nobody else writes here, yet {conflict}")
                }
                Err(error @ (AppendError::Unknown(_) | AppendError::Unavailable(_))) => {
                    let message = error.to_string();
                    assert!(
                        message.contains("retry with the same request id") || message.contains("unavailable"),
                        "an outage error must say what to do: {message}"
                    );
                    record.errors.push(message);
                    assert!(Instant::now() < deadline, "{subject}#{index}: still failing: {:?}", record.errors.last());
                    tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                }
                Err(other) => {
                    panic!("{subject}#{index}: unexpected error during an outage: {other}")
                }
            }
        }
    }
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_pipelined_load_loses_no_acknowledged_append() {
    let mut server = server();
    let log = Arc::new(JetStreamLog::connect(&server.url(), "CRASH").await.expect("connect"));
    let acks = Arc::new(AtomicU64::new(0));
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|index| tokio::spawn(append_chain(Arc::clone(&log), format!("vs.crash.a{index}"), APPENDS_PER_APPENDER, Arc::clone(&acks))))
        .collect();

    while acks.load(Ordering::Relaxed) < ACKS_BEFORE_KILL {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let acked_before_kill = acks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(OUTAGE_MS)).await;
    let mut server = tokio::task::spawn_blocking(move || {
        server.restart().unwrap_or_else(|error| panic!("restart: {error}"));
        server
    })
    .await
    .expect("restart task");

    let mut records = Vec::new();
    for appender in appenders {
        records.push(appender.await.expect("appender task"));
    }
    let total = APPENDERS as u64 * APPENDS_PER_APPENDER;
    assert!(acked_before_kill < total, "the kill must land mid-load ({acked_before_kill} of {total} acknowledged)");
    let errors: usize = records.iter().map(|record| record.errors.len()).sum();
    let duplicates: u64 = records.iter().map(|record| record.duplicates).sum();
    eprintln!("acked before kill {acked_before_kill}, outage errors {errors}, retries answered as duplicates {duplicates}");

    // Reconnect from scratch too, then check the stream against what was acknowledged.
    server.kill();
    server.restart().expect("second restart");
    let log = JetStreamLog::connect(&server.url(), "CRASH").await.expect("reconnect");
    assert_eq!(log.last_seq().await.expect("last_seq"), Seq(total), "exactly the acknowledged appends, once each");
    let stored = log.read_from(Seq(1), usize::MAX).await.expect("read_from");
    assert_eq!(stored.len() as u64, total);
    assert!(stored.iter().enumerate().all(|(index, event)| event.seq.0 == index as u64 + 1), "contiguous from 1");
    let by_seq: BTreeMap<u64, &StoredEvent> = stored.iter().map(|event| (event.seq.0, event)).collect();
    for (appender, record) in records.iter().enumerate() {
        let subject = format!("vs.crash.a{appender}");
        assert_eq!(record.acked.len() as u64, APPENDS_PER_APPENDER);
        for (index, seq) in &record.acked {
            let event = by_seq.get(&seq.0).unwrap_or_else(|| panic!("acknowledged {subject}#{index} at {seq} is missing"));
            assert_eq!(event.subject, subject);
            assert_eq!(event.payload, Bytes::from(format!("{subject}#{index}")), "{seq} holds another append");
        }
        let on_subject = log.read_subject(&subject).await.expect("read_subject");
        let seqs: Vec<Seq> = on_subject.iter().map(|event| event.seq).collect();
        let acked: Vec<Seq> = record.acked.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(seqs, acked, "{subject}: each acknowledged append once, in order, nothing else");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_across_a_server_restart_yields_every_event_once_without_gaps() {
    let server = server();
    let log = Arc::new(JetStreamLog::connect(&server.url(), "FOLLOW").await.expect("connect"));
    let mut following = log.follow(Seq(1));
    let acks = Arc::new(AtomicU64::new(0));
    let appender = tokio::spawn(append_chain(Arc::clone(&log), "vs.follow.a".to_owned(), FOLLOWED_EVENTS, Arc::clone(&acks)));

    let mut seen: Vec<StoredEvent> = Vec::new();
    let mut server = Some(server);
    let mut restart = None;
    loop {
        if restart.is_none() && seen.len() as u64 >= FOLLOWED_EVENTS / 3 {
            // Restart while both the appender and the follower are busy.
            let mut running = server.take().expect("the server");
            let acks = Arc::clone(&acks);
            restart = Some(tokio::task::spawn_blocking(move || {
                running.kill();
                let acked_at_kill = acks.load(Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(OUTAGE_MS));
                running.restart().unwrap_or_else(|error| panic!("restart: {error}"));
                (running, acked_at_kill)
            }));
        }
        // The appender stores exactly FOLLOWED_EVENTS events (its retries are deduplicated).
        if seen.len() as u64 == FOLLOWED_EVENTS {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(FOLLOW_WAIT_MS), following.next()).await {
            Ok(Some(Ok(event))) => seen.push(event),
            Ok(Some(Err(error))) => panic!("follow yielded an error across a restart: {error}"),
            Ok(None) => panic!("follow ended across a restart"),
            Err(_) => {
                // A restart that failed explains a silent follower: show its error first.
                if let Some(restarting) = restart.take_if(|restarting| restarting.is_finished()) {
                    restarting.await.expect("restart task");
                }
                panic!("follow yielded nothing for {FOLLOW_WAIT_MS} ms after {} events ({} acknowledged)", seen.len(), acks.load(Ordering::Relaxed))
            }
        }
    }
    let record = appender.await.expect("appender");
    let (_server, acked_at_kill) = restart.expect("the restart happened").await.expect("restart task");
    assert!(acked_at_kill < FOLLOWED_EVENTS, "events must be appended after the restart ({acked_at_kill} were before the kill)");
    eprintln!("appender outage errors {}, retries answered as duplicates {}", record.errors.len(), record.duplicates);
    let seqs: Vec<u64> = seen.iter().map(|event| event.seq.0).collect();
    assert_eq!(seqs, (1..=FOLLOWED_EVENTS).collect::<Vec<_>>(), "every event exactly once, contiguous");
    let stored = log.read_from(Seq(1), usize::MAX).await.expect("read_from");
    assert_eq!(seen, stored, "the follower saw exactly what is stored");
    assert!(tokio::time::timeout(Duration::from_millis(300), following.next()).await.is_err(), "nothing after the last event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_while_the_server_is_down_is_unknown_and_its_retry_stores_it_once() {
    let mut server = server();
    let log = JetStreamLog::connect(&server.url(), "DOWN").await.expect("connect");
    let request = AppendRequest {
        subject: "vs.down.a".to_owned(),
        expected: Expected::Empty,
        idempotency_key: "down-1".to_owned(),
        payload: Bytes::from_static(b"down-1"),
    };
    server.kill();
    let started = Instant::now();
    // The append's own bound is its attempts' request timeouts and retry delays (all of them
    // wall-clock, in the log itself); a hang shows as missing that bound four times over,
    // which a busy machine does not make.
    let own_bound = Duration::from_millis(u64::from(APPEND_ATTEMPTS_MAX) * (REQUEST_TIMEOUT_MS + APPEND_RETRY_DELAY_MS));
    let answered = tokio::time::timeout(own_bound * 4, log.append(request.clone())).await;
    let answered = answered.unwrap_or_else(|_| panic!("an append against a dead server did not answer within 4 × its own bound of {own_bound:?}"));
    match answered {
        // Never "failed, nothing happened": the publish may sit in the client's buffer and
        // reach the server once it is back.
        Err(AppendError::Unknown(reason)) => {
            let message = AppendError::Unknown(reason).to_string();
            assert!(message.contains("retry with the same request id"), "{message}");
        }
        other => panic!("expected an unknown outcome while the server is down, got {other:?}"),
    }
    eprintln!("an append against a dead server was answered after {:?} (its bound: {own_bound:?})", started.elapsed());

    server.restart().expect("restart");
    let retried = log.append(request).await.expect("append after restart").expect("no conflict");
    assert_eq!(retried.seq, Seq(1));
    assert_eq!(log.read_subject("vs.down.a").await.expect("read_subject").len(), 1, "stored exactly once");
    assert_eq!(log.last_seq().await.expect("last_seq"), Seq(1));
}
