//! Failover for clients and nodes (issue 25, item 5): two engines (`gateways::server`, as
//! two `serve` processes run them) on one JetStream stream, and clients and a node given
//! both (`--connect A,B`, `common::failover`).
//!
//! - Idempotency is by request id across engines: the same Reserve and IssueVoucher sent
//!   to A, then to B, are answered alike and their events are on the stream once.
//! - A client given A,B keeps working when A is shut down (its next call goes to B with
//!   the same request id); a refusal is an answer, never sent to the other engine; a client
//!   given A alone fails (the control).
//! - A node given A,B keeps serving after A is shut down: it announces itself to B, follows
//!   its assignment feed there from its checkpoint, and delivers a purchase made through B
//!   from the cache it filled through A.
//! - A client starts on an engine that is not draining (health NOT_SERVING while `serve`
//!   stops), unless no other answers.

use engine::domain::Event;
use engine::ids::ConsumerId;
use engine::log::EventLog;
use gateways::common::backend::BackendArgs;
use gateways::common::client::{self, Engines, MerchantClient, Upload};
use gateways::common::cred::Credential;
use gateways::node::{self, NodeArgs, RunningNode};
use gateways::player::{self, Passport, Purchase};
use gateways::server::{self, EngineConfig, RunningEngine};
use proto::v1 as pb;
use replay_tests::NatsServer;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

const NODE_SLOTS: u32 = 6;

struct Market {
    dir: tempfile::TempDir,
    /// Engine A, until `stop_a`.
    a: Option<RunningEngine>,
    a_url: String,
    b: RunningEngine,
    log: Arc<dyn EventLog>,
    media_id: String,
    merchant: Credential,
    alice: Passport,
    node: RunningNode,
}

async fn start_engine(server: &NatsServer, dir: &Path, keys: &Path) -> RunningEngine {
    let backend = BackendArgs { data_dir: dir.to_path_buf(), nats_url: Some(server.url()), stream: "VOUCHSAFE".into() };
    let (log, _) = backend.open_with_feed().await.expect("open the stream");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    server::start(EngineConfig::new(dir.to_path_buf(), keys.to_path_buf()), log, listener).await.expect("engine starts")
}

/// `--connect A,B` as the CLI passes it.
fn both(a: &RunningEngine, b: &RunningEngine) -> String {
    format!("{},{}", a.url(), b.url())
}

async fn engines(connect: &str) -> Engines {
    client::connect_any(connect, None, None).await.expect("an engine answers")
}

/// Two engines on one stream; a merchant, alice's passport, a media published through A
/// (its container is in A's media store only), and a node of `NODE_SLOTS` slots given A,B.
async fn market(server: &NatsServer) -> Market {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let a = start_engine(server, &dir.path().join("a"), &keys).await;
    let b = start_engine(server, &dir.path().join("b"), &keys).await;
    let backend = BackendArgs { data_dir: dir.path().join("reader"), nats_url: Some(server.url()), stream: "VOUCHSAFE".into() };
    let log = backend.open().await.expect("a reader of the stream");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let mut catalog = client::catalog(engines(&a.url()).await, operator);
    let merchant = catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect("merchant");
    let merchant = client::credential_of(merchant.into_inner()).expect("credential");
    let node_cred = catalog
        .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "n-1".into(), region: "eu".into(), slots_max: NODE_SLOTS })
        .await
        .expect("node credential");
    let node_cred = client::credential_of(node_cred.into_inner()).expect("credential");
    let engine_public = gateways::common::keys::load_engine_public(&keys).expect("public key");
    let alice = player::create_passport(&mut catalog, "cert-alice", &ConsumerId::new("alice"), &engine_public).await.expect("passport");
    let upload = Upload {
        title: "Song".into(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 180_000,
        price_minor: 199,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        content: (0..20_000u32).map(|i| (i % 251) as u8).collect(),
        preview_clip: Vec::new(),
        image_descriptor: String::new(),
    };
    let media_id = client::publish(&mut catalog, "pub-1", &engine_public, upload).await.expect("publish").media_id;
    let node = node::start(NodeArgs {
        connect: both(&a, &b),
        cred: node_cred.clone(),
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: NODE_SLOTS,
        region: "eu".into(),
        data_dir: dir.path().join("node"),
        cache_bytes_max: 16 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node starts");
    assert_eq!(node.engine_url(), a.url(), "the node announced itself to the first engine that answered");
    let node_id = engine::ids::NodeId::new(node_cred.id.as_str());
    let started = Instant::now();
    while !(a.state.nodes.healthy(&node_id) && b.state.nodes.healthy(&node_id)) {
        assert!(started.elapsed() < Duration::from_secs(30), "an engine never heard of the node");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Market { dir, a_url: a.url(), a: Some(a), b, log, media_id, merchant, alice, node }
}

impl Market {
    /// Shuts engine A down, as an operator stops a `serve` (its port then refuses).
    async fn stop_a(&mut self) {
        self.a.take().expect("a runs").shutdown().await.expect("a stops");
    }

    async fn merchant_on(&self, connect: &str) -> MerchantClient {
        client::merchant(engines(connect).await, self.merchant.clone())
    }

    /// Buys through `merchant` and redeems at the node; the number of copies delivered.
    async fn buy_and_redeem(&self, merchant: &mut MerchantClient, prefix: &str) -> usize {
        let sale = client::buy(merchant, prefix, std::slice::from_ref(&self.media_id), None).await.expect("buy");
        assert_eq!(sale.node_id, self.node.node_id());
        let purchase = Purchase {
            node_endpoint: sale.node_endpoint.clone(),
            node_id: sale.node_id.clone(),
            grant: sale.grant(),
            receipt: sale.receipt.clone(),
            rental_until_ms: 0,
        };
        let copies = player::redeem_and_download(&purchase, &self.alice, &format!("{prefix}-redeem"), &self.dir.path().join(prefix)).await.expect("delivered");
        copies.len()
    }
}

/// How many events of the stream satisfy `which`.
async fn count_events(log: &dyn EventLog, which: impl Fn(&Event) -> bool) -> usize {
    let mut count = 0;
    let mut from = engine::ids::Seq(1);
    loop {
        let events = log.read_from(from, 1024).await.expect("read");
        let Some(last) = events.last() else { return count };
        from = engine::ids::Seq(last.seq.0 + 1);
        count += events.iter().filter(|stored| which(&engine::wire::decode(&stored.payload).expect("decodes").event)).count();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_request_id_through_two_engines_is_answered_alike_and_recorded_once() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let market = market(&server).await;
    let mut at_a = market.merchant_on(&market.a_url).await;
    let mut at_b = market.merchant_on(&market.b.url()).await;
    let reserve = pb::ReserveRequest {
        request_id: "same-reserve".into(),
        media_ids: vec![market.media_id.clone()],
        rendition: "high".into(),
        ttl_ms: 600_000,
        points_account: String::new(),
        payment_ref: "card-same".into(),
        spend_authorization: None,
        rental_ms: 0,
    };
    let reserved = at_a.reserve(reserve.clone()).await.expect("reserve through a").into_inner();
    let reserved_again = at_b.reserve(reserve).await.expect("the same reserve through b").into_inner();
    assert_eq!(reserved, reserved_again, "b answers a's reserve as a did");
    let voucher_id = reserved.voucher_id.clone();
    at_a.authorize(pb::AuthorizeRequest { request_id: "same-authorize".into(), voucher_id: voucher_id.clone() }).await.expect("authorize");
    let issue = pb::IssueVoucherRequest { request_id: "same-issue".into(), voucher_id: voucher_id.clone(), region: String::new() };
    let issued = at_a.issue_voucher(issue.clone()).await.expect("issue through a").into_inner();
    let issued_again = at_b.issue_voucher(issue).await.expect("the same issue through b").into_inner();
    assert_eq!(issued, issued_again, "b answers a's issue as a did (node, endpoint, access token)");
    // Each decision is on the stream once.
    let reserves = count_events(market.log.as_ref(), |event| matches!(event, Event::Reserved { voucher_id: id, .. } if id.0 == voucher_id)).await;
    let issues = count_events(market.log.as_ref(), |event| matches!(event, Event::VoucherIssued { voucher_id: id, .. } if id.0 == voucher_id)).await;
    assert_eq!((reserves, issues), (1, 1), "reserved and issued once each");
    // The control: another request id is another purchase, through either engine.
    let other = pb::ReserveRequest {
        request_id: "other-reserve".into(),
        media_ids: vec![market.media_id.clone()],
        rendition: "high".into(),
        ttl_ms: 600_000,
        points_account: String::new(),
        payment_ref: "card-other".into(),
        spend_authorization: None,
        rental_ms: 0,
    };
    let other = at_b.reserve(other).await.expect("another reserve").into_inner();
    assert_ne!(other.voucher_id, voucher_id);
    let reserves = count_events(market.log.as_ref(), |event| matches!(event, Event::Reserved { .. })).await;
    assert_eq!(reserves, 2, "two request ids, two reservations");
    stop(market).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_given_two_engines_keeps_working_when_the_first_stops() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let mut market = market(&server).await;
    let connect = format!("{},{}", market.a_url, market.b.url());
    let engines = engines(&connect).await;
    let mut merchant = client::merchant(engines.clone(), market.merchant.clone());
    let mut only_a = market.merchant_on(&market.a_url).await;
    assert_eq!(market.buy_and_redeem(&mut merchant, "before").await, 1);
    // A refusal is an answer: not sent to b (the client still talks to a).
    let unknown = pb::AuthorizeRequest { request_id: "no-such-authorize".into(), voucher_id: "v-no-such-voucher".into() };
    let refusal = merchant.authorize(unknown).await.expect_err("no such voucher");
    assert_ne!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert_eq!(engines.current_url(), market.a_url, "the refusal was not sent to b");
    market.stop_a().await;
    // Its next call finds a gone and goes to b, with the same request id: a purchase a
    // already made is answered by b as a answered it.
    let again = merchant
        .reserve(pb::ReserveRequest {
            request_id: "before-reserve".into(),
            media_ids: vec![market.media_id.clone()],
            rendition: "high".into(),
            ttl_ms: 15 * 60 * 1000,
            points_account: String::new(),
            payment_ref: "card-before".into(),
            spend_authorization: None,
            rental_ms: 0,
        })
        .await
        .expect("the same reserve, failed over to b");
    let reserves =
        count_events(market.log.as_ref(), |event| matches!(event, Event::Reserved { voucher_id, .. } if voucher_id.0 == again.get_ref().voucher_id)).await;
    assert_eq!(reserves, 1, "b repeated a's answer and appended nothing");
    assert_eq!(market.buy_and_redeem(&mut merchant, "after").await, 1, "a new purchase through b, delivered");
    assert_eq!(engines.current_url(), market.b.url());
    // The control: a client given a alone cannot reach the market any more.
    let lost = only_a
        .reserve(pb::ReserveRequest {
            request_id: "lost-reserve".into(),
            media_ids: vec![market.media_id.clone()],
            rendition: "high".into(),
            ttl_ms: 600_000,
            points_account: String::new(),
            payment_ref: "card-lost".into(),
            spend_authorization: None,
            rental_ms: 0,
        })
        .await
        .expect_err("a is gone");
    assert!(matches!(lost.code(), Code::Unavailable | Code::Unknown), "{lost:?}");
    stop(market).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_given_two_engines_announces_itself_to_the_second_and_keeps_delivering() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let mut market = market(&server).await;
    let mut at_a = market.merchant_on(&market.a_url).await;
    // Delivered through a: the node's cache now holds the container (only a's store has it).
    assert_eq!(market.buy_and_redeem(&mut at_a, "through-a").await, 1);
    let seen_before = market.node.stats().assignments_seen;
    market.stop_a().await;
    let b_url = market.b.url();
    let stopped = Instant::now();
    while market.node.engine_url() != b_url {
        assert!(stopped.elapsed() < Duration::from_secs(30), "the node never turned to b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("the node turned to b {} ms after a stopped", stopped.elapsed().as_millis());
    let node_id = engine::ids::NodeId::new(market.node.node_id());
    assert!(market.b.state.nodes.healthy(&node_id), "b hears the node itself");
    let mut at_b = market.merchant_on(&b_url).await;
    assert_eq!(market.buy_and_redeem(&mut at_b, "through-b").await, 1, "a purchase through b, delivered by the node");
    let stats = market.node.stats();
    assert!(stats.assignments_seen > seen_before, "the feed from b brought the new assignment ({stats:?})");
    assert!(stats.cache_accesses > stats.cache_misses, "the second delivery came from the cache filled through a ({stats:?})");
    stop(market).await;
}

async fn stop(market: Market) {
    market.node.shutdown().await;
    if let Some(a) = market.a {
        a.shutdown().await.expect("shutdown a");
    }
    market.b.shutdown().await.expect("shutdown b");
}

/// A client starts on an engine that is not draining: while A drains (health NOT_SERVING
/// during its `drain_grace`) a client given A,B starts on B; given A alone it still uses A.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_starts_on_an_engine_that_is_not_draining() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let backend = BackendArgs { data_dir: dir.path().join("a"), nats_url: Some(server.url()), stream: "VOUCHSAFE".into() };
    let (log, _) = backend.open_with_feed().await.expect("open the stream");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let config = EngineConfig { drain_grace: Duration::from_secs(3), ..EngineConfig::new(dir.path().join("a"), keys.clone()) };
    let a = server::start(config, log, listener).await.expect("engine a starts");
    let b = start_engine(&server, &dir.path().join("b"), &keys).await;
    let (a_url, b_url) = (a.url(), b.url());
    let connect = format!("{a_url},{b_url}");
    assert_eq!(engines(&connect).await.current_url(), a_url, "both serve: the first");
    let stopping = tokio::spawn(a.shutdown());
    // Its health says NOT_SERVING as its shutdown begins; its server answers for 3 s more.
    let started = Instant::now();
    while engines(&connect).await.current_url() != b_url {
        assert!(started.elapsed() < Duration::from_secs(2), "a client given a,b kept starting on a while a drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engines(&a_url).await.current_url(), a_url, "the control: a alone is still used while it drains");
    stopping.await.expect("a's shutdown task").expect("a stops");
    b.shutdown().await.expect("b stops");
}
