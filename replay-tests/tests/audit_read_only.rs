//! Least privilege on NATS, against a real nats-server running the users and permissions
//! shipped in deploy/nats-auth.conf (its `authorization` block, as written, with only the
//! node placeholders filled in):
//! - the demo runs as `engine`, and the server logs no permission violation for it;
//! - `audit replay` (and the export rebuild) as `auditor` — read-only credentials — gives
//!   `chain_ok` and the demo's state digest, again without a single violation;
//! - the auditor cannot append to `vs.>`, change, purge or delete the stream, create a
//!   stream, read the node feed or listen to the engine's inbox;
//! - node users read their own `vsn.<id>` feed and are refused on another node's;
//! - credentials in the URL never appear in an error message.
//!
//! Every refusal is shown with its positive control: the same mechanism succeeds when the
//! permission is there, and the server's "Permissions Violation" names the refused subject.

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use engine::log::jetstream::{ConnectError, JetStreamLog, READ_ONLY_INBOX_PREFIX};
use engine::log::{AppendError, AppendRequest, EventLog, Expected};
use futures::StreamExt;
use gateways::common::backend::BackendArgs;
use gateways::demo::{self, DemoArgs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const STREAM: &str = "VOUCHSAFE";
const NODE_STREAM: &str = "VOUCHSAFE_NODES";
const ENGINE_PASSWORD: &str = "CHANGE-ME-engine-password";
const AUDITOR_PASSWORD: &str = "CHANGE-ME-auditor-password";
const NODE_A_PASSWORD: &str = "CHANGE-ME-node-a-password";
const NODE_B_PASSWORD: &str = "CHANGE-ME-node-b-password";
/// Where `check_auditor_refusals` stores its sentinel on the node feed (no node's subject).
const SENTINEL_SUBJECT: &str = "vsn.sentinel";
/// How long a raw client waits for an answer: a refused request never gets one.
const REFUSED_WAIT: Duration = Duration::from_millis(1_000);

/// The `authorization { … }` block of deploy/nats-auth.conf, node placeholders replaced.
fn shipped_authorization(node_a: &str, node_b: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats-auth.conf");
    let text = std::fs::read_to_string(&path).expect("deploy/nats-auth.conf");
    let mut block = String::new();
    let mut depth = 0usize;
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or_default();
        if depth == 0 && !code.trim_start().starts_with("authorization") {
            continue;
        }
        block.push_str(line);
        block.push('\n');
        depth += code.matches('{').count();
        depth -= code.matches('}').count();
        if depth == 0 {
            break;
        }
    }
    assert!(block.starts_with("authorization {") && block.trim_end().ends_with('}'), "no authorization block in {}:\n{block}", path.display());
    for placeholder in ["NODE_A_ID", "NODE_B_ID", ENGINE_PASSWORD, AUDITOR_PASSWORD, NODE_A_PASSWORD, NODE_B_PASSWORD] {
        assert!(block.contains(placeholder), "deploy/nats-auth.conf no longer has {placeholder}");
    }
    block.replace("NODE_A_ID", node_a).replace("NODE_B_ID", node_b)
}

fn url_as(server: &replay_tests::NatsServer, user: &str, password: &str) -> String {
    format!("nats://{user}:{password}@127.0.0.1:{}", server.port)
}

/// Every permission violation the server logged so far.
fn violations(server: &replay_tests::NatsServer) -> Vec<String> {
    server.log().lines().filter(|line| line.contains("Violation")).map(str::to_owned).collect()
}

/// A plain async-nats client that records the errors the server sends it (`-ERR
/// 'Permissions Violation for …'`).
struct Raw {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Raw {
    async fn connect(server: &replay_tests::NatsServer, user: &str, password: &str, inbox_prefix: &str) -> Raw {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&errors);
        let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .custom_inbox_prefix(inbox_prefix)
            .request_timeout(Some(REFUSED_WAIT))
            .event_callback(move |event| {
                let sink = Arc::clone(&sink);
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        sink.lock().expect("errors").push(error.to_string());
                    }
                }
            })
            .connect(format!("127.0.0.1:{}", server.port))
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        let js = async_nats::jetstream::ContextBuilder::new().timeout(REFUSED_WAIT).build(client.clone());
        Raw { client, js, errors }
    }

    /// Waits until the server has told this client that `what` was refused.
    async fn assert_violation(&self, what: &str) {
        let expected = format!("Permissions Violation for {what}");
        for _ in 0..100 {
            if self.errors.lock().expect("errors").iter().any(|error| error.contains(&expected)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {expected:?} from the server; it said {:?}", self.errors.lock().expect("errors"));
    }

    /// A JetStream API request that must get no answer and a violation naming its subject.
    async fn assert_refused(&self, subject: &str, body: &str) {
        let answer = self.client.request(subject.to_owned(), body.to_owned().into()).await;
        assert!(answer.is_err(), "{subject} was answered: {:?}", answer.map(|m| m.payload));
        self.assert_violation(&format!("Publish to \"{subject}\"")).await;
    }

    /// A JetStream API request that must be answered (the positive control of `assert_refused`).
    async fn answer(&self, subject: &str, body: &str) -> serde_json::Value {
        let message = self.client.request(subject.to_owned(), body.to_owned().into()).await.unwrap_or_else(|e| panic!("{subject}: {e}"));
        serde_json::from_slice(&message.payload).unwrap_or_else(|e| panic!("{subject}: {e}"))
    }
}

/// A node's consumer as deploy/nats-auth.conf expects it: named after the node, filtered
/// on its own subject, from the start of the feed.
fn node_consumer(name: &str, node: &str) -> pull::Config {
    pull::Config {
        name: Some(name.to_owned()),
        filter_subject: format!("vsn.{node}"),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::None,
        inactive_threshold: Duration::from_secs(30),
        ..Default::default()
    }
}

/// Reads node `node`'s whole feed as user `node-<node>`; every message is one of its own
/// assignments, in feed order.
async fn read_own_feed(server: &replay_tests::NatsServer, node: &str, password: &str, expected: u64) -> Raw {
    let raw = Raw::connect(server, &format!("node-{node}"), password, &format!("_INBOX_{node}")).await;
    let consumer =
        raw.js.create_consumer_on_stream(node_consumer(node, node), NODE_STREAM).await.unwrap_or_else(|e| panic!("node {node} creates its consumer: {e}"));
    let mut messages =
        consumer.fetch().max_messages(usize::try_from(expected).expect("small") + 1).expires(Duration::from_secs(2)).messages().await.expect("pull");
    let mut read = 0u64;
    let mut last_seq = 0;
    while let Some(message) = messages.next().await {
        let message = message.expect("delivery");
        assert_eq!(message.subject.as_str(), format!("vsn.{node}"));
        let info = message.info().expect("JetStream delivery");
        assert!(info.stream_sequence > last_seq, "feed order");
        last_seq = info.stream_sequence;
        let recorded = engine::wire::decode(&message.payload).expect("the feed carries the source envelope");
        let assigned = gateways::server::dispatcher::assigned_node(&recorded.event).map(|id| id.as_str().to_owned());
        assert_eq!(assigned.as_deref(), Some(node), "an assignment of this node");
        read += 1;
    }
    assert_eq!(read, expected, "node {node} reads every one of its assignments");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_replay_needs_read_only_credentials_and_each_node_reads_only_its_feed() {
    let mut server = replay_tests::NatsServer::start_with_config(&shipped_authorization("NODE_A_ID", "NODE_B_ID")).unwrap_or_else(|e| panic!("{e}"));
    let engine_url = url_as(&server, "engine", ENGINE_PASSWORD);
    let auditor_url = url_as(&server, "auditor", AUDITOR_PASSWORD);
    let dir = tempfile::tempdir().expect("temp dir");

    // Before the engine ever ran: a read-only connection finds no stream and creates none.
    let error = JetStreamLog::connect_read_only(&auditor_url, STREAM).await.err().expect("no stream yet");
    assert!(matches!(error, ConnectError::MissingStream { .. }), "{error}");
    let shown = error.to_string();
    assert!(shown.contains("nats://***@127.0.0.1") && !shown.contains(AUDITOR_PASSWORD), "{shown}");
    let engine_raw = Raw::connect(&server, "engine", ENGINE_PASSWORD, "_INBOX").await;
    let info = engine_raw.answer(&format!("$JS.API.STREAM.INFO.{STREAM}"), "").await;
    assert_eq!(info["error"]["err_code"], 10059, "the stream still does not exist: {info}");

    // The demo as `engine`: it creates both streams, and the dispatcher fills the node feeds.
    let engine_backend = BackendArgs { data_dir: dir.path().join("engine"), nats_url: Some(engine_url.clone()), stream: STREAM.into() };
    let keys_dir = dir.path().join("keys");
    let summary = demo::run(DemoArgs {
        backend: engine_backend,
        keys_dir: keys_dir.clone(),
        vouchers: 30,
        connect: None,
        engine_tls: Default::default(),
        node_tls: false,
    })
    .await
    .expect("the demo runs as the engine user");
    assert!(summary.delivered > 0 && summary.seals >= 1, "{summary:?}");
    assert_eq!(violations(&server), Vec::<String>::new(), "the engine user lacks a permission the engine needs");

    // `audit replay` as `auditor`, with only the two keys an auditor holds.
    let auditor_keys = dir.path().join("auditor-keys");
    std::fs::create_dir_all(&auditor_keys).expect("auditor keys dir");
    for file in [gateways::common::keys::ENGINE_PUB_PEM, gateways::common::keys::ROYALTY_MASTER] {
        std::fs::copy(keys_dir.join(file), auditor_keys.join(file)).expect("copy a public key");
    }
    let auditor_backend = BackendArgs { data_dir: dir.path().join("auditor"), nats_url: Some(auditor_url.clone()), stream: STREAM.into() };
    let pin = gateways::audit::pin_from_witness(&dir.path().join("engine").join(gateways::audit::WITNESS_FILE)).expect("the demo's witness file");
    let report = gateways::audit::replay(&auditor_backend, &auditor_keys, Some(pin)).await.unwrap_or_else(|e| panic!("audit replay as auditor: {e:#}"));
    assert!(report.chain_ok && report.first_bad.is_none(), "{}", gateways::audit::describe(&report));
    // The demo audited its stream at `stream_events`; its engine may have appended its slot
    // leases' upkeep (no royalty entry, no sale) before it stopped.
    assert!(report.last_seq >= summary.stream_events, "the stream never goes back");
    if report.last_seq == summary.stream_events {
        assert_eq!(report.state_digest, summary.state_digest, "the auditor's replay reproduces the demo's digest");
    }
    let (rebuilt, _, entries) =
        gateways::audit::rebuild(&auditor_backend, &auditor_keys).await.unwrap_or_else(|e| panic!("audit export's rebuild as auditor: {e:#}"));
    assert_eq!(rebuilt.state_digest, report.state_digest, "the export's rebuild is the replay's");
    assert_eq!(entries.len() as u64, summary.royalty_entries);
    assert_eq!(violations(&server), Vec::<String>::new(), "the auditor user lacks a permission audit replay needs");

    check_auditor_refusals(&server, &auditor_url, &engine_raw, report.last_seq).await;
    // Control of the "no violation" checks above: the refusals are in the server's log.
    assert!(violations(&server).iter().any(|line| line.contains("user:auditor") && line.contains("Publish Violation")), "{:?}", violations(&server));
    check_node_feeds(&mut server).await;
    check_wrong_password_is_not_shown(&server, &auditor_keys, dir.path()).await;

    // Positive control of the auditor's refused append: the engine user's append lands.
    let engine_log = JetStreamLog::connect(&url_as(&server, "engine", ENGINE_PASSWORD), STREAM).await.expect("engine connects");
    let before = engine_log.last_seq().await.expect("last seq").0;
    engine_log
        .append(AppendRequest { subject: "vs.voucher.x".into(), expected: Expected::Any, idempotency_key: "control".into(), payload: "control".into() })
        .await
        .expect("append")
        .expect("no conflict");
    assert_eq!(engine_log.last_seq().await.expect("last seq").0, before + 1);
}

/// The auditor can read (shown above) and nothing else.
async fn check_auditor_refusals(server: &replay_tests::NatsServer, auditor_url: &str, engine_raw: &Raw, events: u64) {
    // The read-only log itself refuses appends and the node feed, without asking the server.
    let log = JetStreamLog::connect_read_only(auditor_url, STREAM).await.expect("read-only connect");
    assert_eq!(log.node_stream_name(), None);
    let append =
        log.append(AppendRequest { subject: "vs.voucher.x".into(), expected: Expected::Any, idempotency_key: "k".into(), payload: "forged".into() }).await;
    assert!(matches!(&append, Err(AppendError::Storage(reason)) if reason.contains("read-only")), "{append:?}");
    let feed = log.node_feed("n1", 1).next().await.expect("one item");
    assert!(feed.is_err_and(|error| error.to_string().contains("read-only")));
    // The read-write connect needs what the auditor lacks (answers on _INBOX, the node
    // feed's stream), and says so without the password.
    let error = JetStreamLog::connect(auditor_url, STREAM).await.err().expect("the auditor cannot connect read-write");
    assert!(matches!(error, ConnectError::StreamInfo { .. }), "{error}");
    assert!(!error.to_string().contains(AUDITOR_PASSWORD), "{error}");

    let auditor = Raw::connect(server, "auditor", AUDITOR_PASSWORD, READ_ONLY_INBOX_PREFIX).await;
    // Positive control: the same kind of request is answered when permitted.
    let info = auditor.answer(&format!("$JS.API.STREAM.INFO.{STREAM}"), "").await;
    assert_eq!(info["state"]["last_seq"], events, "{info}");
    // Appends, directly and through JetStream.
    let ack = match auditor.js.publish("vs.voucher.x", "forged".into()).await {
        Ok(ack) => ack.await.map(|ack| ack.sequence),
        Err(error) => Err(error),
    };
    assert!(ack.is_err(), "the auditor's append was stored at {ack:?}");
    auditor.assert_violation("Publish to \"vs.voucher.x\"").await;
    auditor.client.publish("vsn.n1", "forged".into()).await.expect("sent");
    auditor.client.flush().await.expect("flush");
    auditor.assert_violation("Publish to \"vsn.n1\"").await;
    // Stream changes.
    let stream_config = engine_raw.answer(&format!("$JS.API.STREAM.INFO.{STREAM}"), "").await["config"].to_string();
    for subject in ["DELETE", "PURGE", "UPDATE", "CREATE"].map(|op| format!("$JS.API.STREAM.{op}.{STREAM}")) {
        let body = if subject.contains("UPDATE") || subject.contains("CREATE") { stream_config.as_str() } else { "" };
        auditor.assert_refused(&subject, body).await;
    }
    auditor.assert_refused(&format!("$JS.API.STREAM.MSG.DELETE.{STREAM}"), r#"{"seq":1}"#).await;
    auditor.assert_refused("$JS.API.STREAM.CREATE.OTHER", r#"{"name":"OTHER","subjects":["other.>"]}"#).await;
    // A push consumer's deliver subject is not checked against its creator's publish
    // permissions (nats-server 2.15.1): the auditor can have what it may read delivered to
    // any subject someone listens on (control: the engine listening on an inbox subject of
    // its own receives the stream). Such deliveries carry nothing the auditor could not read
    // anyway; the server delivers nothing to vsn.n0, where no one listens (the feed stream
    // capturing the subject does not count as interest), so the feed stays as it was; and
    // the stream itself refuses its own subjects as a cycle.
    let push = |deliver: &str| format!(r#"{{"stream_name":"{STREAM}","config":{{"deliver_subject":"{deliver}","deliver_policy":"all","ack_policy":"none"}}}}"#);
    let create = format!("$JS.API.CONSUMER.CREATE.{STREAM}");
    let mut listening = engine_raw.client.subscribe("_INBOX.control").await.expect("subscribe");
    engine_raw.client.flush().await.expect("flush");
    let answer = auditor.answer(&create, &push("_INBOX.control")).await;
    assert!(answer["error"].is_null(), "{answer}");
    assert_eq!(answer["push_bound"], true, "the engine listens on the control's deliver subject: {answer}");
    let delivered = tokio::time::timeout(Duration::from_secs(5), listening.next()).await.expect("a delivery").expect("subscribed");
    assert!(delivered.subject.starts_with("vs."), "a stream event: {}", delivered.subject);
    let feed_before = engine_raw.answer(&format!("$JS.API.STREAM.INFO.{NODE_STREAM}"), "").await["state"].clone();
    let answer = auditor.answer(&create, &push("vsn.n0")).await;
    assert!(answer["error"].is_null(), "{answer}");
    // Nobody listens on vsn.n0 (the node stream capturing the subject is not interest), so
    // the server says the consumer is not bound and delivers nothing, as it says.
    assert_eq!(answer["push_bound"], serde_json::Value::Null, "no one is bound to vsn.n0: {answer}");
    let answer = auditor.answer(&create, &push("vs.voucher.y")).await;
    assert_eq!(answer["error"]["err_code"], 10081, "deliver subject forms a cycle: {answer}");
    // A sentinel the engine stores on the feed lands right after what the feed held before:
    // nothing reached the feed in between (no waiting for something not to happen).
    let sentinel = engine_raw.js.publish(SENTINEL_SUBJECT, "sentinel".into()).await.expect("publish").await.expect("the feed stores the sentinel");
    assert_eq!(serde_json::json!(sentinel.sequence - 1), feed_before["last_seq"], "a push delivery reached the node feed");
    // The node feed.
    auditor.assert_refused(&format!("$JS.API.STREAM.INFO.{NODE_STREAM}"), "").await;
    auditor.assert_refused(&format!("$JS.API.DIRECT.GET.{NODE_STREAM}"), r#"{"seq":1}"#).await;
    auditor.assert_refused(&format!("$JS.API.CONSUMER.CREATE.{NODE_STREAM}"), "{}").await;
    // Listening: not to the subjects, not to the engine's inbox.
    for subject in ["vs.>", "vsn.>", "_INBOX.>"] {
        let _subscription = auditor.client.subscribe(subject).await.expect("sent");
        auditor.client.flush().await.expect("flush");
        auditor.assert_violation(&format!("Subscription to \"{subject}\"")).await;
    }
    // Nothing of it reached the stream, which is still there and unchanged.
    let info = engine_raw.answer(&format!("$JS.API.STREAM.INFO.{STREAM}"), "").await;
    assert_eq!(info["state"]["last_seq"], events, "{info}");
    assert_eq!(info["config"].to_string(), stream_config);
    // Not even the engine may delete or purge the stream of record.
    engine_raw.assert_refused(&format!("$JS.API.STREAM.DELETE.{STREAM}"), "").await;
    engine_raw.assert_refused(&format!("$JS.API.STREAM.PURGE.{STREAM}"), "").await;
}

/// Each node user reads exactly its own feed and is refused on the other's.
async fn check_node_feeds(server: &mut replay_tests::NatsServer) {
    let engine_raw = Raw::connect(server, "engine", ENGINE_PASSWORD, "_INBOX").await;
    let nodes = engine_raw.js.get_stream(NODE_STREAM).await.expect("node feed stream");
    let mut feeds: Vec<(String, u64)> = nodes
        .info_with_subjects("vsn.>")
        .await
        .expect("subjects")
        .map(|entry| entry.expect("subject count"))
        .map(|(subject, count)| (subject.strip_prefix("vsn.").expect("vsn subject").to_owned(), count as u64))
        .filter(|(node, _)| std::future::ready(format!("vsn.{node}") != SENTINEL_SUBJECT))
        .collect()
        .await;
    feeds.sort();
    assert_eq!(feeds.len(), 2, "the demo's two nodes both have assignments: {feeds:?}");
    let [(a, a_count), (b, b_count)] = [feeds[0].clone(), feeds[1].clone()];
    drop(engine_raw);
    // The shipped node users, for these two nodes.
    server.restart_with_config(&shipped_authorization(&a, &b)).unwrap_or_else(|e| panic!("{e}"));

    let node_a = read_own_feed(server, &a, NODE_A_PASSWORD, a_count).await;
    read_own_feed(server, &b, NODE_B_PASSWORD, b_count).await;

    // Node a on node b's feed: b's consumer, a consumer of its own name on b's subject,
    // the whole feed, single messages, stream info, the subjects themselves.
    let refused = node_a.js.create_consumer_on_stream(node_consumer(&b, &b), NODE_STREAM).await;
    assert!(refused.is_err(), "node {a} created node {b}'s consumer");
    node_a.assert_violation(&format!("Publish to \"$JS.API.CONSUMER.CREATE.{NODE_STREAM}.{b}.vsn.{b}\"")).await;
    let refused = node_a.js.create_consumer_on_stream(node_consumer(&a, &b), NODE_STREAM).await;
    assert!(refused.is_err(), "node {a} created a consumer on vsn.{b}");
    node_a.assert_violation(&format!("Publish to \"$JS.API.CONSUMER.CREATE.{NODE_STREAM}.{a}.vsn.{b}\"")).await;
    node_a
        .assert_refused(
            &format!("$JS.API.CONSUMER.CREATE.{NODE_STREAM}"),
            &format!(r#"{{"stream_name":"{NODE_STREAM}","config":{{"filter_subject":"vsn.{b}"}}}}"#),
        )
        .await;
    node_a.assert_refused(&format!("$JS.API.CONSUMER.MSG.NEXT.{NODE_STREAM}.{b}"), r#"{"batch":1}"#).await;
    node_a.assert_refused(&format!("$JS.API.DIRECT.GET.{NODE_STREAM}"), r#"{"seq":1}"#).await;
    node_a.assert_refused(&format!("$JS.API.DIRECT.GET.{NODE_STREAM}.vsn.{b}"), "").await;
    node_a.assert_refused(&format!("$JS.API.STREAM.MSG.GET.{NODE_STREAM}"), r#"{"seq":1}"#).await;
    node_a.assert_refused(&format!("$JS.API.STREAM.INFO.{NODE_STREAM}"), "").await;
    node_a.assert_refused(&format!("$JS.API.STREAM.INFO.{STREAM}"), "").await;
    for subject in [format!("vsn.{b}"), "vsn.>".to_owned(), format!("_INBOX_{b}.>"), "_INBOX.>".to_owned()] {
        let _subscription = node_a.client.subscribe(subject.clone()).await.expect("sent");
        node_a.client.flush().await.expect("flush");
        node_a.assert_violation(&format!("Subscription to \"{subject}\"")).await;
    }
    // The server checks the filter in the create subject against the requested one: on its
    // own create subject, node a still cannot ask for b's subject or for every subject.
    let deleted = node_a.answer(&format!("$JS.API.CONSUMER.DELETE.{NODE_STREAM}.{a}"), "").await;
    assert_eq!(deleted["success"], true, "{deleted}");
    let own_create = format!("$JS.API.CONSUMER.CREATE.{NODE_STREAM}.{a}.vsn.{a}");
    let create = |filter: &str| {
        format!(r#"{{"stream_name":"{NODE_STREAM}","config":{{"name":"{a}",{filter},"deliver_policy":"all","ack_policy":"none"}},"action":"create"}}"#)
    };
    for filter in [
        format!(r#""filter_subject":"vsn.{b}""#),
        r#""filter_subject":"vsn.>""#.to_owned(),
        format!(r#""filter_subjects":["vsn.{b}"]"#),
        format!(r#""filter_subjects":["vsn.{a}","vsn.{b}"]"#),
        String::from(r#""filter_subject":"""#),
    ] {
        let answer = node_a.answer(&own_create, &create(&filter)).await;
        // 10131: does not match the filtered subject of the create subject; 10137: multiple
        // filters cannot use the subject-based API.
        let code = &answer["error"]["err_code"];
        assert!(code == 10131 || code == 10137, "node {a} got a consumer with {filter}: {answer}");
    }
    // Positive control: the same request with its own filter creates the consumer.
    let answer = node_a.answer(&own_create, &create(&format!(r#""filter_subject":"vsn.{a}""#))).await;
    assert_eq!(answer["config"]["filter_subject"], format!("vsn.{a}"), "{answer}");
    assert_eq!(answer["num_pending"], a_count, "{answer}");
}

/// A wrong password is refused, and neither it nor the right one shows in any message.
async fn check_wrong_password_is_not_shown(server: &replay_tests::NatsServer, auditor_keys: &Path, dir: &Path) {
    let wrong = "not-the-auditor-password-7f3a";
    let backend = BackendArgs { data_dir: dir.join("auditor-wrong"), nats_url: Some(url_as(server, "auditor", wrong)), stream: STREAM.into() };
    let error = gateways::audit::replay(&backend, auditor_keys, None).await.expect_err("a wrong password is refused");
    let shown = format!("{error:#} {error:?}");
    assert!(!shown.contains(wrong), "{shown}");
    assert!(shown.contains("nats://***@127.0.0.1"), "{shown}");
    // The right password in a cluster URL whose second server is unreachable: still hidden.
    let url = format!("{},nats://auditor:{AUDITOR_PASSWORD}@127.0.0.1:1", url_as(server, "auditor", AUDITOR_PASSWORD));
    let log = JetStreamLog::connect_read_only(&url, "NO_SUCH_STREAM").await;
    let shown = log.err().map(|error| format!("{error} {error:?}")).expect("no such stream for the auditor");
    assert!(!shown.contains(AUDITOR_PASSWORD), "{shown}");
}
