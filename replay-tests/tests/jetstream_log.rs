//! The JetStream log's own promises beyond the shared conformance suite, against a real
//! nats-server: connecting (a clear error without a server), stream verification (an
//! existing stream with weaker settings is refused, naming the setting), two connections
//! racing on one subject, the node feed (dedupe by source sequence, each node sees only its
//! own), the server behaviour that makes the log check for duplicates itself after a
//! refused expectation, and job leases admitting one holder at a time.

use async_nats::jetstream;
use bytes::Bytes;
use engine::ids::Seq;
use engine::log::jetstream::{ConnectError, JetStreamLog};
use engine::log::{AppendError, AppendRequest, Appended, EventLog, Expected};
use futures::StreamExt as _;
use replay_tests::NatsServer;
use std::sync::Arc;
use std::time::Duration;

/// How long a feed may take to yield an assignment that is already acknowledged.
const FEED_WAIT_MS: u64 = 10_000;
/// How long a feed is watched for an assignment that must not come.
const QUIET_WAIT_MS: u64 = 300;
/// Rounds of the two-connection race.
const RACE_ROUNDS: u64 = 20;

fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|error| panic!("{error}"))
}

fn request(subject: &str, expected: Expected, key: &str) -> AppendRequest {
    AppendRequest { subject: subject.to_owned(), expected, idempotency_key: key.to_owned(), payload: Bytes::from(key.to_owned()) }
}

async fn connect(server: &NatsServer, stream: &str) -> JetStreamLog {
    JetStreamLog::connect(&server.url(), stream).await.unwrap_or_else(|error| panic!("connect: {error}"))
}

/// The settings `JetStreamLog` creates, minus deny_delete: what an operator might create by
/// hand.
fn almost_right(name: &str, subjects: &str) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::New,
        max_messages: -1,
        max_bytes: -1,
        max_message_size: -1,
        duplicate_window: Duration::from_secs(120),
        deny_delete: false,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_without_a_server_says_what_to_check() {
    // A port that was free a moment ago: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port").port();
    let error = JetStreamLog::connect(&format!("nats://user:hunter2@127.0.0.1:{port}"), "VS").await.err().expect("no server, no log");
    let message = error.to_string();
    assert!(matches!(error, ConnectError::Unreachable { .. }), "{message}");
    assert!(message.contains("is nats-server running"), "{message}");
    assert!(!message.contains("hunter2"), "credentials leak into the message: {message}");
    assert!(message.contains(&port.to_string()), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_streams_with_weaker_settings_are_refused_by_name() {
    let server = server();
    let client = async_nats::connect(server.url()).await.expect("raw client");
    let context = jetstream::new(client);

    // Primary stream without deny_delete.
    context.create_stream(almost_right("WEAK", "vs.>")).await.expect("create the weak stream");
    let error = JetStreamLog::connect(&server.url(), "WEAK").await.err().expect("a weaker stream is refused");
    let message = error.to_string();
    assert!(matches!(&error, ConnectError::WeakerStream { stream, differences } if stream == "WEAK" && differences.len() == 1), "{message}");
    assert!(message.contains("deny_delete is false (required: true)"), "{message}");

    // Memory storage and a short dedupe window on the node feed of another primary stream
    // (the subjects must not overlap the weak one's, so that one goes first).
    context.delete_stream("WEAK").await.expect("delete the weak stream");
    context
        .create_stream(jetstream::stream::Config {
            storage: jetstream::stream::StorageType::Memory,
            duplicate_window: Duration::from_secs(1),
            deny_delete: true,
            ..almost_right("OTHER_NODES", "vsn.>")
        })
        .await
        .expect("create the weak node stream");
    let message = JetStreamLog::connect(&server.url(), "OTHER").await.err().expect("a weaker node stream is refused").to_string();
    assert!(message.contains("stream OTHER_NODES"), "{message}");
    assert!(message.contains("storage is Memory"), "{message}");
    assert!(message.contains("duplicate_window"), "{message}");

    // The streams the log creates itself pass its own verification on every connect.
    // Connecting created OTHER (the primary stream is set up first) before it refused
    // OTHER_NODES; both go, so that GOOD can claim the subjects.
    context.delete_stream("OTHER_NODES").await.expect("delete");
    context.delete_stream("OTHER").await.expect("delete");
    let first = connect(&server, "GOOD").await;
    drop(first);
    let again = connect(&server, "GOOD").await;
    let info = context.get_stream("GOOD").await.expect("GOOD exists").cached_info().config.clone();
    assert!(info.deny_delete && info.deny_purge && info.allow_direct);
    assert_eq!(info.storage, jetstream::stream::StorageType::File);
    assert_eq!(info.discard, jetstream::stream::DiscardPolicy::New);
    assert_eq!((info.max_messages, info.max_bytes, info.max_age), (-1, -1, Duration::ZERO));
    assert_eq!(again.node_stream_name(), Some("GOOD_NODES"));

    // The server enforces what was verified: events cannot be deleted or purged.
    let appended = again.append(request("vs.good.a", Expected::Empty, "g1")).await.expect("append").expect("no conflict");
    let stream = context.get_stream("GOOD").await.expect("GOOD");
    assert!(stream.delete_message(appended.seq.0).await.is_err(), "deny_delete");
    assert!(stream.purge().await.is_err(), "deny_purge");
    assert_eq!(again.last_seq().await.expect("last_seq"), Seq(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_connections_racing_on_one_subject_admit_exactly_one() {
    let server = server();
    let left = Arc::new(connect(&server, "RACE").await);
    let right = Arc::new(connect(&server, "RACE").await);
    let mut expected = Expected::Empty;
    for round in 0..RACE_ROUNDS {
        let race = |log: Arc<JetStreamLog>, side: &str| {
            let request = request("vs.race.a", expected, &format!("{side}-{round}"));
            tokio::spawn(async move { log.append(request).await })
        };
        let (left_outcome, right_outcome) = (race(Arc::clone(&left), "l"), race(Arc::clone(&right), "r"));
        let outcomes = [left_outcome.await.expect("task").expect("left append"), right_outcome.await.expect("task").expect("right append")];
        let winners: Vec<Appended> = outcomes.iter().filter_map(|outcome| outcome.clone().ok()).collect();
        let losers: Vec<_> = outcomes.iter().filter_map(|outcome| outcome.clone().err()).collect();
        assert_eq!((winners.len(), losers.len()), (1, 1), "round {round}: {outcomes:?}");
        assert!(!winners[0].duplicate);
        assert_eq!(losers[0].actual, Some(winners[0].seq), "the loser learns the winner's sequence");
        assert_eq!(losers[0].expected, expected);
        expected = Expected::LastSeq(winners[0].seq);
    }
    let stored = left.read_subject("vs.race.a").await.expect("read_subject");
    assert_eq!(stored.len() as u64, RACE_ROUNDS, "the losers stored nothing");
}

/// One engine at a time runs the sealer or the sweeper: engines racing for a job lease
/// at once admit exactly one holder, round after round, because taking it is a `create`
/// (refused when the key is there) and renewing an `update` at the holder's last revision
/// (refused once another wrote). The protection off (plain `put`s, as a lease without
/// revisions would write) every racer believes it holds the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engines_racing_for_a_job_lease_admit_exactly_one_holder() {
    const ENGINES: usize = 4;
    let server = server();
    let mut leases = Vec::new();
    for _ in 0..ENGINES {
        let log = connect(&server, "JOBS").await;
        leases.push(log.job_leases(Duration::from_secs(10)).await.expect("job lease bucket").expect("a shared log has job leases"));
    }
    for round in 0..RACE_ROUNDS {
        let mut racing = tokio::task::JoinSet::new();
        for (n, lease) in leases.iter().enumerate() {
            let lease = Arc::clone(lease);
            racing.spawn(async move { (n, lease.hold("sealer", &format!("engine-{n}")).await.expect("hold")) });
        }
        let holders: Vec<usize> = racing.join_all().await.into_iter().filter(|(_, held)| *held).map(|(n, _)| n).collect();
        assert_eq!(holders.len(), 1, "round {round}: {holders:?} hold the sealer");
    }
    // The protection off: every engine writes the job's key unconditionally, and each
    // write succeeds, so each would run the job.
    let client = async_nats::connect(server.url()).await.expect("connect");
    let bucket = jetstream::new(client).get_key_value("vsjobs-JOBS").await.expect("the job lease bucket");
    let mut unguarded = 0;
    for n in 0..ENGINES {
        unguarded += usize::from(bucket.put("sweeper-unguarded", Bytes::from(format!("engine-{n}"))).await.is_ok());
    }
    assert_eq!(unguarded, ENGINES, "without create/update by revision every engine takes the job");
}

/// A single (non-clustered) nats-server (2.15.1 here) checks
/// `Nats-Expected-Last-Subject-Sequence` before `Nats-Msg-Id` (a clustered stream dedupes
/// first; `jetstream_cluster` checks the log's answer there): the retry of a stored append with its now stale expectation is refused as
/// "wrong last sequence" instead of being answered as a duplicate. The contract (dedupe
/// first) is kept by the log, which looks for its own key after such a refusal. This test
/// pins the server behaviour (a negative control: without the log's check the conformance
/// case `dedupe_precedes_expectation` fails) and the log's answer on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_checks_expectations_before_dedupe_and_the_log_compensates() {
    let server = server();
    let log = connect(&server, "ORDER").await;
    let first = request("vs.order.a", Expected::Empty, "k1");
    assert_eq!(log.append(first.clone()).await.expect("append").expect("no conflict"), Appended { seq: Seq(1), duplicate: false });

    let client = async_nats::connect(server.url()).await.expect("raw client");
    let context = jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "k1");
    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
    let raw = context.publish_with_headers("vs.order.a", headers, Bytes::from_static(b"k1")).await.expect("publish").await;
    // Wrong by the contract (it is a retry of a stored append), but what the server does.
    let error = raw.expect_err("the server refuses the stale expectation before deduping");
    assert_eq!(error.kind(), jetstream::context::PublishErrorKind::WrongLastSequence, "{error}");

    assert_eq!(log.append(first).await.expect("append").expect("answered as a duplicate"), Appended { seq: Seq(1), duplicate: true });
    // A different key with the same stale expectation is a genuine conflict.
    let conflict = log.append(request("vs.order.a", Expected::Empty, "k2")).await.expect("append").expect_err("a genuine conflict");
    assert_eq!(conflict.actual, Some(Seq(1)));
    assert_eq!(log.last_seq().await.expect("last_seq"), Seq(1));
}

/// `read_subject` follows a subject back from its newest event by the expected sequence
/// each append stored (`direct::read_chain`), and reads in batches where that chain cannot
/// be followed: both give every event of the subject, in order, and nothing of another.
/// Subjects: a short chain between other subjects' events; one longer than
/// `CHAIN_EVENTS_MAX`; one whose first append expected nothing (`Expected::Any`); one with a
/// message published without the header; one whose newest message checked another
/// subject's sequence (`Nats-Expected-Last-Subject-Sequence-Subject`); and an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_is_read_whole_whether_or_not_its_chain_of_expectations_holds() {
    use engine::log::jetstream::CHAIN_EVENTS_MAX;
    let server = server();
    let log = connect(&server, "CHAIN").await;
    let mut stored: Stored = std::collections::BTreeMap::new();
    for index in 0..3 {
        append_chained(&log, &mut stored, "vs.chain.short", None, format!("short-{index}")).await;
        append_chained(&log, &mut stored, "vs.chain.other", None, format!("other-{index}")).await;
    }
    for index in 0..CHAIN_EVENTS_MAX + 4 {
        append_chained(&log, &mut stored, "vs.chain.long", None, format!("long-{index}")).await;
    }
    append_chained(&log, &mut stored, "vs.chain.any", Some(Expected::Any), "any-0".to_owned()).await;
    for index in 1..4 {
        append_chained(&log, &mut stored, "vs.chain.any", None, format!("any-{index}")).await;
    }
    append_chained(&log, &mut stored, "vs.chain.raw", None, "raw-0".to_owned()).await;
    let context = jetstream::new(async_nats::connect(server.url()).await.expect("raw client"));
    let ack = context.publish("vs.chain.raw", Bytes::from_static(b"raw-1")).await.expect("publish").await.expect("stored");
    stored.entry("vs.chain.raw").or_default().push(Seq(ack.sequence));
    append_chained(&log, &mut stored, "vs.chain.raw", None, "raw-2".to_owned()).await;
    append_chained(&log, &mut stored, "vs.chain.elsewhere", None, "elsewhere-0".to_owned()).await;
    let other_last = *stored["vs.chain.other"].last().expect("other has events");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Last-Subject-Sequence", other_last.0.to_string().as_str());
    headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", "vs.chain.other");
    let ack = context.publish_with_headers("vs.chain.elsewhere", headers, Bytes::from_static(b"elsewhere-1")).await.expect("publish").await.expect("stored");
    stored.entry("vs.chain.elsewhere").or_default().push(Seq(ack.sequence));
    for (subject, seqs) in &stored {
        let read = log.read_subject(subject).await.expect("read_subject");
        assert_eq!(read.iter().map(|event| event.seq).collect::<Vec<_>>(), *seqs, "{subject}");
        assert!(read.iter().all(|event| event.subject == *subject), "{subject}");
        // Which path answered: the chain where every append expected its predecessor and
        // the subject is short, batched gets otherwise.
        let chained = log.read_subject_chain(subject).await.expect("read the chain");
        let by_chain = matches!(*subject, "vs.chain.short" | "vs.chain.other");
        assert_eq!(chained.as_ref(), by_chain.then_some(seqs), "{subject}");
    }
    assert!(log.read_subject("vs.chain.none").await.expect("read_subject").is_empty());
    assert_eq!(log.read_subject_chain("vs.chain.none").await.expect("read the chain"), Some(vec![]));
}

/// The sequences stored on each subject, in order.
type Stored = std::collections::BTreeMap<&'static str, Vec<Seq>>;

/// Appends on `subject` expecting `expected`, or by default the subject's last sequence as
/// stored so far, and records the sequence.
async fn append_chained(log: &JetStreamLog, stored: &mut Stored, subject: &'static str, expected: Option<Expected>, key: String) {
    let expected = expected.unwrap_or_else(|| stored.get(subject).and_then(|seqs| seqs.last()).map_or(Expected::Empty, |last| Expected::LastSeq(*last)));
    let appended = log.append(request(subject, expected, &key)).await.expect("append").expect("no conflict");
    stored.entry(subject).or_default().push(appended.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_feed_dedupes_by_source_sequence_and_each_node_sees_only_its_own() {
    let server = server();
    let log = connect(&server, "FEED").await;
    let assign = |node: &'static str, source: u64| {
        let payload = Bytes::from(format!("{node}:{source}"));
        let log = &log;
        async move { log.publish_assignment(node, Seq(source), payload).await.expect("publish_assignment") }
    };
    assert_eq!(assign("node-a", 10).await, Appended { seq: Seq(1), duplicate: false });
    assert_eq!(assign("node-b", 11).await, Appended { seq: Seq(2), duplicate: false });
    // The dispatcher republishes source 10 (a restart, a rebuild): stored once.
    assert_eq!(assign("node-a", 10).await, Appended { seq: Seq(1), duplicate: true });
    assert_eq!(assign("node-a", 12).await, Appended { seq: Seq(3), duplicate: false });
    assert!(matches!(log.publish_assignment("node.a", Seq(13), Bytes::new()).await, Err(AppendError::InvalidSubject(_))));
    // The primary stream is untouched.
    assert_eq!(log.last_seq().await.expect("last_seq"), Seq(0));

    let mut feed_a = log.node_feed("node-a", 1);
    let mut feed_b = log.node_feed("node-b", 1);
    assert_eq!(next_assignment(&mut feed_a).await, (1, Bytes::from_static(b"node-a:10")));
    assert_eq!(next_assignment(&mut feed_a).await, (3, Bytes::from_static(b"node-a:12")));
    assert_eq!(next_assignment(&mut feed_b).await, (2, Bytes::from_static(b"node-b:11")));
    // New assignments arrive live, on the right feed only.
    assign("node-b", 14).await;
    assign("node-a", 15).await;
    assert_eq!(next_assignment(&mut feed_a).await, (5, Bytes::from_static(b"node-a:15")));
    assert_eq!(next_assignment(&mut feed_b).await, (4, Bytes::from_static(b"node-b:14")));
    for feed in [&mut feed_a, &mut feed_b] {
        assert!(
            tokio::time::timeout(Duration::from_millis(QUIET_WAIT_MS), feed.next()).await.is_err(),
            "a feed yielded an assignment that is not its node's, or a duplicate"
        );
    }
    // A feed resumes from a given feed sequence.
    let mut resumed = log.node_feed("node-a", 2);
    assert_eq!(next_assignment(&mut resumed).await.0, 3);
    // A node named like a prefix of another sees nothing of it.
    let mut prefix = log.node_feed("node", 1);
    assert!(tokio::time::timeout(Duration::from_millis(QUIET_WAIT_MS), prefix.next()).await.is_err());
}

async fn next_assignment(feed: &mut futures::stream::BoxStream<'static, Result<(u64, Bytes), engine::log::ReadError>>) -> (u64, Bytes) {
    match tokio::time::timeout(Duration::from_millis(FEED_WAIT_MS), feed.next()).await {
        Ok(Some(Ok(item))) => item,
        other => panic!("expected an assignment, got {other:?}"),
    }
}
