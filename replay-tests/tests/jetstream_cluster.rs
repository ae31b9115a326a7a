//! The JetStream log on a local 3-node cluster with replicas 3 (the production shape):
//! killing a node (the stream leader, the hardest case) during a pipelined load loses no
//! acknowledged append, and appends continue on the surviving quorum.

use bytes::Bytes;
use engine::ids::Seq;
use engine::log::jetstream::{JetStreamLog, StreamOptions};
use engine::log::{AppendError, AppendRequest, Appended, EventLog, Expected};
use replay_tests::NatsCluster;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const STREAM: &str = "CLUSTER";
/// Concurrent appenders, each on its own subject with an expected-sequence chain.
const APPENDERS: usize = 16;
/// Acknowledged appends before a node is killed, and again after it.
const ACKS_PER_PHASE: u64 = 400;
/// How long the load may take to continue after the kill (a new leader is elected).
const RECOVERY_DEADLINE_MS: u64 = 60_000;
/// Pause between an appender's retries through the failover.
const RETRY_PAUSE_MS: u64 = 50;

#[derive(Default)]
struct Record {
    acked: Vec<(String, Seq)>,
    errors: u64,
}

/// Appends on `subject` until `stop`, each append expecting the previous one, retrying an
/// append with the same key and expectation through the failover.
async fn append_until(log: Arc<JetStreamLog>, subject: String, stop: Arc<AtomicBool>, acks: Arc<AtomicU64>) -> Record {
    let mut record = Record::default();
    let mut expected = Expected::Empty;
    let mut index = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{subject}#{index}");
        let request = AppendRequest { subject: subject.clone(), expected, idempotency_key: key.clone(), payload: Bytes::from(key.clone()) };
        let deadline = Instant::now() + Duration::from_millis(RECOVERY_DEADLINE_MS);
        loop {
            match log.append(request.clone()).await {
                Ok(Ok(appended)) => {
                    record.acked.push((key, appended.seq));
                    expected = Expected::LastSeq(appended.seq);
                    acks.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(conflict)) => panic!("{key}: nobody else writes here, yet {conflict}"),
                Err(AppendError::Unknown(_) | AppendError::Unavailable(_)) => {
                    record.errors += 1;
                    assert!(Instant::now() < deadline, "{key}: the cluster did not recover");
                    tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                }
                Err(other) => panic!("{key}: {other}"),
            }
        }
        index += 1;
    }
    record
}

async fn wait_for(acks: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_millis(RECOVERY_DEADLINE_MS);
    while acks.load(Ordering::Relaxed) < target {
        assert!(Instant::now() < deadline, "appends stalled at {} (waiting for {target})", acks.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_stream_leader_during_load_loses_nothing_and_appends_continue() {
    let mut cluster = tokio::task::spawn_blocking(|| NatsCluster::start(NODES)).await.expect("start task").unwrap_or_else(|error| panic!("{error}"));
    let url = cluster.url();
    let log = Arc::new(
        JetStreamLog::connect_with(&url, STREAM, StreamOptions { replicas: NODES, ..Default::default() })
            .await
            .unwrap_or_else(|error| panic!("connect: {error}")),
    );

    // Dedupe before expectation holds on the clustered path too.
    let first = AppendRequest {
        subject: "vs.cluster.dedupe".to_owned(),
        expected: Expected::Empty,
        idempotency_key: "dedupe-1".to_owned(),
        payload: Bytes::from_static(b"dedupe-1"),
    };
    let stored = log.append(first.clone()).await.expect("append").expect("no conflict");
    assert_eq!(log.append(first).await.expect("append").expect("a duplicate"), Appended { seq: stored.seq, duplicate: true });

    let client = async_nats::connect(url.split(',').collect::<Vec<_>>()).await.expect("raw client");
    let context = async_nats::jetstream::new(client);
    let leader = |context: async_nats::jetstream::Context| async move {
        let info = context.get_stream(STREAM).await.expect("stream info").cached_info().clone();
        let cluster = info.cluster.expect("a clustered stream");
        assert_eq!(info.config.num_replicas, NODES);
        cluster.leader.expect("a leader")
    };
    let leader_before = leader(context.clone()).await;
    let leader_index: usize = leader_before.trim_start_matches('n').parse().expect("server names are n<index>");

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|index| tokio::spawn(append_until(Arc::clone(&log), format!("vs.cluster.a{index}"), Arc::clone(&stop), Arc::clone(&acks))))
        .collect();
    wait_for(&acks, ACKS_PER_PHASE).await;
    cluster.kill(leader_index);
    let acked_at_kill = acks.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    wait_for(&acks, acked_at_kill + ACKS_PER_PHASE).await;
    eprintln!("{ACKS_PER_PHASE} appends acknowledged {:?} after killing leader {leader_before}", killed_at.elapsed());
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for appender in appenders {
        records.push(appender.await.expect("appender task"));
    }
    let leader_after = leader(context.clone()).await;
    assert_ne!(leader_after, leader_before, "a surviving node leads the stream");
    eprintln!("outage errors seen by appenders: {}", records.iter().map(|record| record.errors).sum::<u64>());

    // Every acknowledged append is stored once, at its sequence, in its subject's order;
    // nothing else is stored. read_from runs on the leader. Right after a leader change a
    // read can time out while the cluster settles; it is answered Unavailable (retryable),
    // so the test retries as a caller would, within a deadline.
    let total: usize = records.iter().map(|record| record.acked.len()).sum::<usize>() + 1;
    let read_deadline = Instant::now() + Duration::from_secs(30);
    let last_seq = loop {
        match log.last_seq().await {
            Ok(seq) => break seq,
            Err(engine::log::ReadError::Unavailable(reason)) if Instant::now() < read_deadline => {
                eprintln!("last_seq unavailable after the leader change ({reason}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => panic!("last_seq: {error:?}"),
        }
    };
    assert_eq!(last_seq, Seq(total as u64), "exactly the acknowledged appends");
    let events = loop {
        match log.read_from(Seq(1), usize::MAX).await {
            Ok(events) => break events,
            Err(engine::log::ReadError::Unavailable(reason)) if Instant::now() < read_deadline => {
                eprintln!("read_from unavailable after the leader change ({reason}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => panic!("read_from: {error:?}"),
        }
    };
    assert_eq!(events.len(), total);
    assert!(events.iter().enumerate().all(|(index, event)| event.seq.0 == index as u64 + 1), "contiguous");
    let by_seq: BTreeMap<u64, _> = events.iter().map(|event| (event.seq.0, event)).collect();
    for record in &records {
        let mut previous = 0;
        for (key, seq) in &record.acked {
            let event = by_seq.get(&seq.0).unwrap_or_else(|| panic!("acknowledged {key} at {seq} is lost"));
            assert_eq!(event.payload, Bytes::from(key.clone()), "{seq} holds another append");
            assert!(seq.0 > previous, "a subject's appends are stored in order");
            previous = seq.0;
        }
    }

    // The killed node comes back and catches up: the leader reports it behind while it is
    // down (it missed every append since the kill), then current with no lag.
    let killed_name = format!("n{leader_index}");
    let replica = |context: async_nats::jetstream::Context, name: String| async move {
        let mut stream = context.get_stream(STREAM).await.expect("stream");
        let info = stream.info().await.expect("stream info").clone();
        info.cluster.expect("a clustered stream").replicas.into_iter().find(|peer| peer.name == name)
    };
    let down = replica(context.clone(), killed_name.clone()).await.expect("the killed node is still a peer of the stream");
    assert!(down.offline || !down.current, "the killed node is reported behind while down: {down:?}");
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(leader_index).unwrap_or_else(|error| panic!("restart: {error}"));
        cluster
    })
    .await
    .expect("restart task");
    let caught_up_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let peer = replica(context.clone(), killed_name.clone()).await;
        if peer.as_ref().is_some_and(|peer| peer.current && !peer.offline && peer.lag.unwrap_or(0) == 0) {
            break;
        }
        assert!(Instant::now() < caught_up_deadline, "{killed_name} did not catch up within 60 s: {peer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(cluster);
}
