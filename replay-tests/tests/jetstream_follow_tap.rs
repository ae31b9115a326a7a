//! `follow` on the JetStream log fed by the connection's own appends (the append tap),
//! against a real nats-server: a follower of its own connection's appends yields every
//! event in order and soon needs no consumer (the negative control: a follower on another
//! connection keeps one), and other writers' events still reach it, in
//! order, interleaved with its own, whether they fall between its own appends or arrive
//! while it is idle.

use async_nats::jetstream;
use bytes::Bytes;
use engine::ids::Seq;
use engine::log::jetstream::JetStreamLog;
use engine::log::{AppendRequest, EventLog, Expected, StoredEvent};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use replay_tests::NatsServer;
use std::sync::Arc;
use std::time::Duration;

/// Appends in flight at once from one writer, as the engine pipelines them.
const IN_FLIGHT: usize = 256;
/// How long a follower may take to yield an event that is already acknowledged.
const FOLLOW_WAIT_MS: u64 = 10_000;

fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|error| panic!("{error}"))
}

async fn connect(server: &NatsServer, stream: &str) -> Arc<JetStreamLog> {
    Arc::new(JetStreamLog::connect(&server.url(), stream).await.unwrap_or_else(|error| panic!("connect: {error}")))
}

/// Appends `count` events through `log`, `IN_FLIGHT` at a time (so acks come back out of
/// order), on subjects shared by `writer`'s events.
async fn append_many(log: Arc<JetStreamLog>, writer: &'static str, count: usize) {
    futures::stream::iter(0..count)
        .map(|index| {
            let log = Arc::clone(&log);
            async move {
                let request = AppendRequest {
                    subject: format!("vs.tap.{}", index % 97),
                    expected: Expected::Any,
                    idempotency_key: format!("{writer}-{index}"),
                    payload: Bytes::from(format!("{writer}#{index}")),
                };
                let appended = log.append(request).await.expect("append").expect("no expectation, no conflict");
                assert!(!appended.duplicate, "every key is new");
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

/// Takes `count` events from `follow`, each within `FOLLOW_WAIT_MS`.
async fn take(follow: &mut BoxStream<'static, Result<StoredEvent, engine::log::ReadError>>, count: usize) -> Vec<StoredEvent> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let event = tokio::time::timeout(Duration::from_millis(FOLLOW_WAIT_MS), follow.next())
            .await
            .unwrap_or_else(|_| panic!("the follower yielded {} of {count} events, then nothing for {FOLLOW_WAIT_MS} ms", events.len()))
            .expect("the follow stream does not end")
            .expect("follow");
        events.push(event);
    }
    events
}

/// The followed events are exactly the stream, from sequence 1.
async fn assert_is_the_stream(log: &JetStreamLog, followed: &[StoredEvent]) {
    let stored = log.read_from(Seq(1), followed.len() + 1).await.expect("read_from");
    assert_eq!(stored.len(), followed.len(), "the follower yielded as many events as the stream holds");
    for (followed, stored) in followed.iter().zip(&stored) {
        assert_eq!(followed, stored, "the followed event at {} is the stored one", stored.seq);
    }
}

async fn consumers(server: &NatsServer, stream: &str) -> usize {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut stream = jetstream::new(client).get_stream(stream).await.expect("stream");
    stream.info().await.expect("stream info").state.consumer_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_appends_are_followed_without_a_consumer_and_another_connection_needs_one() {
    let server = server();
    let writer = connect(&server, "TAP").await;
    let mut own = writer.follow(Seq(1));
    // Appends first reach the follower once it polls; the tap keeps them meanwhile.
    let appending = tokio::spawn(append_many(Arc::clone(&writer), "own", 3_000));
    let followed = take(&mut own, 3_000).await;
    appending.await.expect("appender");
    // Counted before `read_from`, which reads with a consumer of its own. The follower
    // starts on a consumer (events stored before a follow never come through the tap) and
    // deletes it once the tap has caught up.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(FOLLOW_WAIT_MS);
    while consumers(&server, "TAP").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the follower of its own connection's appends still reads from a consumer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Negative control: the same events followed from another connection come from a
    // consumer, which the count above would have shown.
    let reader = connect(&server, "TAP").await;
    let mut other = reader.follow(Seq(1));
    let followed_elsewhere = take(&mut other, 3_000).await;
    assert_eq!(followed_elsewhere, followed);
    assert_eq!(consumers(&server, "TAP").await, 1, "a follower on another connection reads from a consumer");
    assert_is_the_stream(&writer, &followed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_writers_events_reach_the_follower_in_order_among_its_own() {
    let server = server();
    let writer = connect(&server, "TAP").await;
    let other = connect(&server, "TAP").await;
    let mut follow = writer.follow(Seq(1));
    // Interleaved: the other writer's events fall between the follower's own.
    let own = tokio::spawn(append_many(Arc::clone(&writer), "own", 2_000));
    let others = tokio::spawn(append_many(Arc::clone(&other), "other", 2_000));
    let followed = take(&mut follow, 4_000).await;
    own.await.expect("own appender");
    others.await.expect("other appender");
    assert_is_the_stream(&writer, &followed).await;

    // Idle, then one event of the other writer alone (no own append makes a gap show it).
    append_many(Arc::clone(&other), "late", 1).await;
    let late = take(&mut follow, 1).await;
    assert_eq!(late[0].seq, Seq(4_001));
    assert_eq!(late[0].payload, Bytes::from("late#0"));
    // And the follower's own appends go on after it.
    append_many(Arc::clone(&writer), "after", 500).await;
    let after = take(&mut follow, 500).await;
    let mut all = followed;
    all.extend(late);
    all.extend(after);
    assert_is_the_stream(&writer, &all).await;
}
