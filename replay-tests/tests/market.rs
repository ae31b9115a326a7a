//! The market's use cases on the embedded log, end to end through `engine::app`:
//! retried commands answer the first answer and write nothing; refusals write nothing;
//! concurrent point holds never overdraw an account; a rental plays until its window ends.
//! Most run over one engine and over two engines on one log taking turns at every use case
//! (issue 25: a retry or a check answered by the other engine), with the same assertions,
//! so the same answers.

mod common;

use engine::app::{Allocator, EngineKeys, Market};
use engine::clock::{Clock, ManualClock};
use engine::crypto::{self, test_keys};
use engine::domain::Rejection;
use engine::domain::event::Payment;
use engine::ids::*;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use std::sync::Arc;

/// Always the same node: allocation has its own tests; here it must be predictable.
struct OneNode(NodeId);

impl Allocator for OneNode {
    fn choose(&self, _region: Option<&str>, _holder: &str) -> Option<engine::placement::Placed> {
        Some(engine::placement::Placed { node: self.0.clone(), lease: 0 })
    }

    fn cancel(&self, _holder: &str) {}
}

struct Fixture {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    clock: Arc<ManualClock>,
    /// The engines on the log (one or two), each with its own handler and caches.
    markets: Vec<Arc<Market>>,
    /// Which engine the next use case goes to (`market`).
    turn: std::sync::atomic::AtomicUsize,
    merchant: MerchantId,
    other_merchant: MerchantId,
    node: NodeId,
    media: MediaId,
}

fn req(id: &str) -> RequestId {
    RequestId::new(id)
}

async fn fixture() -> Fixture {
    fixture_on(1).await
}

/// The fixture over `engines` engines on one log: each use case goes to the next engine in
/// turn (`Fixture::market`), so over two a retry, a refusal or a check is answered by the
/// other engine than the command before it.
async fn fixture_on(engines: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("open log"));
    let clock = Arc::new(ManualClock::new(Millis(1_700_000_000_000)));
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("engine keys"));
    // The node id is derived from the operator and request id, as register_node does.
    let probe = Market::new(Arc::clone(&log), clock.clone() as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(OneNode(NodeId::new("x"))));
    let (node_cred, _) = probe.register_node("op", &req("node-1"), "eu", 8).await.expect("register node");
    let node = NodeId(node_cred.id);
    let market = Market::new(Arc::clone(&log), clock.clone() as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(OneNode(node.clone())));
    let merchant = MerchantId(market.register_merchant("op", &req("m-1"), "Shop").await.expect("merchant").id);
    let other_merchant = MerchantId(market.register_merchant("op", &req("m-2"), "Other").await.expect("merchant").id);
    let media_key = crypto::SecretKey::random();
    let input = common::song("Song", 250, crypto::wrap_key(&keys.public, &media_key).expect("wrap"));
    let media = market.publish_media("pub", &req("media-1"), input).await.expect("publish");
    let mut markets = vec![market];
    for _ in 1..engines {
        let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("engine keys"));
        markets.push(Market::new(Arc::clone(&log), clock.clone() as Arc<dyn Clock>, keys, Arc::new(OneNode(node.clone()))));
    }
    let markets: Vec<Arc<Market>> = markets.into_iter().map(Arc::new).collect();
    if engines > 1 {
        // As `serve` runs them: each engine's follower tells its handler what the stream
        // holds (`Handler::observe`), so each learns that another engine appends; the
        // second engine's first append (a merchant) is applied by both before the test.
        let followers: Vec<projections::Live> = markets.iter().map(|market| follow(&log, market)).collect();
        markets[1].register_merchant("op", &req("m-3"), "Third").await.expect("merchant through the second engine");
        let head = log.last_seq().await.expect("head");
        for follower in &followers {
            follower.caught_up(head).await;
        }
        assert!(markets.iter().all(|market| market.handler().others_append()), "each engine saw the other's appends");
    }
    Fixture { _dir: dir, log, clock, markets, turn: Default::default(), merchant, other_merchant, node, media }
}

/// A follower of `log` telling `market`'s handler each event it applies (`serve`'s).
fn follow(log: &Arc<dyn EventLog>, market: &Arc<Market>) -> projections::Live {
    let live = projections::Live::new();
    let observing = Arc::downgrade(market);
    let observer = move |subject: &str, seq| {
        if let Some(market) = observing.upgrade() {
            market.handler().observe(subject, seq);
        }
    };
    assert!(live.observe_applied(Arc::new(observer)).is_ok(), "one observer");
    let (running, log) = (live.clone(), Arc::clone(log));
    tokio::spawn(async move { running.run(log).await });
    live
}

impl Fixture {
    /// The engine whose turn it is: the engines take turns at every use case.
    fn market(&self) -> &Market {
        &self.markets[self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.markets.len()]
    }
}

/// Runs each test over one engine and over two engines on one log: the same assertions,
/// so the same answers.
macro_rules! over_one_and_two_engines {
    ($($test:ident),* $(,)?) => {
        mod one_engine {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(1).await
            })*
        }
        mod two_engines {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(2).await
            })*
        }
    };
}

over_one_and_two_engines!(
    retried_commands_return_the_first_answer_and_write_nothing,
    refusals_write_nothing,
    a_redemption_needs_the_receipt_and_the_assigned_node,
    concurrent_point_holds_never_overdraw,
    certification_is_idempotent_and_concurrent_requests_never_collide,
    royalty_entries_are_sealed_verified_and_rebuilt_by_replay,
    the_sweeper_settles_holds_left_by_interrupted_sagas,
    a_rental_plays_until_its_window_ends_and_each_play_counts_once,
);

async fn stream_len(log: &Arc<dyn EventLog>) -> u64 {
    log.last_seq().await.expect("last seq").0
}

fn rejection(error: engine::app::AppError) -> Rejection {
    match error {
        engine::app::AppError::Rejected(rejection) => rejection,
        other => panic!("expected a rejection, got {other}"),
    }
}

async fn retried_commands_return_the_first_answer_and_write_nothing(engines: usize) {
    let f = fixture_on(engines).await;
    let pay = || Payment::Merchant { payment_ref: "card".into() };
    let first = f.market().reserve(&f.merchant, &req("r1"), std::slice::from_ref(&f.media), "high", 60_000, pay(), None).await.expect("reserve");
    let len = stream_len(&f.log).await;
    f.clock.advance_ms(1_000);
    let again = f.market().reserve(&f.merchant, &req("r1"), std::slice::from_ref(&f.media), "high", 60_000, pay(), None).await.expect("retried reserve");
    assert_eq!(again.voucher_id, first.voucher_id);
    assert_eq!(again.expires_at, first.expires_at, "the first answer, not a new decision");
    assert_eq!(stream_len(&f.log).await, len, "a retry writes nothing");

    let authorized = f.market().authorize(&f.merchant, &req("a1"), &first.voucher_id).await.expect("authorize");
    let len = stream_len(&f.log).await;
    let retried = f.market().authorize(&f.merchant, &req("a1"), &first.voucher_id).await.expect("retried authorize");
    assert!(authorized.receipt.ct_eq(&retried.receipt));
    assert_eq!(stream_len(&f.log).await, len);

    // The same request id for another command is refused, and writes nothing.
    let reused = f.market().void(&f.merchant, &req("a1"), &first.voucher_id).await.expect_err("reused request id");
    assert!(matches!(rejection(reused), Rejection::RequestIdReused { .. }));
    assert_eq!(stream_len(&f.log).await, len);
}

/// A new engine process (empty cache) first assumes an aggregate it has not seen is new
/// (`Handler::handle`): retries of creating commands must still get the first answer and
/// write nothing, and other commands on existing aggregates must see their real state.
#[tokio::test]
async fn a_restarted_engine_answers_retries_from_the_stream_not_from_an_assumed_empty_aggregate() {
    let f = fixture().await;
    let pay = || Payment::Merchant { payment_ref: "card".into() };
    let first = f.market().reserve(&f.merchant, &req("r1"), std::slice::from_ref(&f.media), "high", 60_000, pay(), None).await.expect("reserve");
    f.clock.advance_ms(1_000);
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("engine keys"));
    let restarted = Market::new(Arc::clone(&f.log), f.clock.clone() as Arc<dyn Clock>, keys, Arc::new(OneNode(f.node.clone())));
    let len = stream_len(&f.log).await;
    let again = restarted.reserve(&f.merchant, &req("r1"), std::slice::from_ref(&f.media), "high", 60_000, pay(), None).await.expect("retried reserve");
    assert_eq!((again.voucher_id.clone(), again.expires_at), (first.voucher_id.clone(), first.expires_at), "the first answer");
    assert_eq!(stream_len(&f.log).await, len, "a retry writes nothing");
    // Another merchant's request id that derives another voucher is a new voucher.
    let other = restarted.reserve(&f.other_merchant, &req("r1"), std::slice::from_ref(&f.media), "high", 60_000, pay(), None).await.expect("reserve");
    assert_ne!(other.voucher_id, first.voucher_id);
    assert_eq!(stream_len(&f.log).await, len + 1);
    // A command on an existing voucher is decided on its state, not on an empty one.
    let fresh = Market::new(
        Arc::clone(&f.log),
        f.clock.clone() as Arc<dyn Clock>,
        Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("keys")),
        Arc::new(OneNode(f.node.clone())),
    );
    fresh.authorize(&f.merchant, &req("a1"), &first.voucher_id).await.expect("authorize an existing voucher from a new process");
    let len = stream_len(&f.log).await;
    let refused = fresh.void(&f.other_merchant, &req("v2"), &first.voucher_id).await.expect_err("another merchant's voucher");
    // Another merchant's voucher answers as an unknown one (no existence oracle); the
    // owner's void below is what tells the real state from an assumed empty one.
    assert_eq!(rejection(refused), Rejection::NotFound { kind: "voucher", id: first.voucher_id.0.clone() });
    assert_eq!(stream_len(&f.log).await, len, "a refusal writes nothing");
    // The voucher is authorized (its real state): voiding it as its merchant refunds, which
    // an empty aggregate would have refused as unknown.
    fresh.void(&f.merchant, &req("v1"), &first.voucher_id).await.expect("the owner voids its authorized voucher");
    assert_eq!(stream_len(&f.log).await, len + 1);
}

/// A log that counts subject reads: what a command costs in server round trips.
struct CountingReads {
    inner: Arc<dyn EventLog>,
    subject_reads: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl EventLog for CountingReads {
    async fn append(
        &self,
        request: engine::log::AppendRequest,
    ) -> Result<Result<engine::log::Appended, engine::log::VersionConflict>, engine::log::AppendError> {
        self.inner.append(request).await
    }
    async fn read_subject(&self, subject: &str) -> Result<Vec<engine::log::StoredEvent>, engine::log::ReadError> {
        self.subject_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.read_subject(subject).await
    }
    async fn read_from(&self, from: Seq, limit: usize) -> Result<Vec<engine::log::StoredEvent>, engine::log::ReadError> {
        self.inner.read_from(from, limit).await
    }
    async fn last_seq(&self) -> Result<Seq, engine::log::ReadError> {
        self.inner.last_seq().await
    }
    fn follow(&self, from: Seq) -> futures::stream::BoxStream<'static, Result<engine::log::StoredEvent, engine::log::ReadError>> {
        self.inner.follow(from)
    }
}

#[tokio::test]
async fn a_new_voucher_is_sold_without_reading_its_subject() {
    let f = fixture().await;
    let counting = Arc::new(CountingReads { inner: Arc::clone(&f.log), subject_reads: Default::default() });
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("engine keys"));
    let market = Market::new(Arc::clone(&counting) as Arc<dyn EventLog>, f.clock.clone() as Arc<dyn Clock>, keys, Arc::new(OneNode(f.node.clone())));
    let pay = || Payment::Merchant { payment_ref: "card".into() };
    // Warm the cache with what every sale reads (merchant, media, node).
    let warm = market.reserve(&f.merchant, &req("warm"), std::slice::from_ref(&f.media), "high", 60_000, pay(), None).await.expect("reserve");
    market.authorize(&f.merchant, &req("warm-a"), &warm.voucher_id).await.expect("authorize");
    market.issue(&f.merchant, &req("warm-i"), &warm.voucher_id, None, 60_000).await.expect("issue");
    let reads = || counting.subject_reads.load(std::sync::atomic::Ordering::Relaxed);
    let before = reads();
    let sold = market.reserve(&f.merchant, &req("new"), std::slice::from_ref(&f.media), "high", 60_000, pay(), None).await.expect("reserve");
    market.authorize(&f.merchant, &req("new-a"), &sold.voucher_id).await.expect("authorize");
    market.issue(&f.merchant, &req("new-i"), &sold.voucher_id, None, 60_000).await.expect("issue");
    assert_eq!(reads(), before, "a sale of a new voucher is decided from the cache and its own appends");
    // The control: a retry in a process that never saw the voucher must read the stream.
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("engine keys"));
    let restarted = Market::new(Arc::clone(&counting) as Arc<dyn EventLog>, f.clock.clone() as Arc<dyn Clock>, keys, Arc::new(OneNode(f.node.clone())));
    let before = reads();
    let again = restarted.reserve(&f.merchant, &req("new"), std::slice::from_ref(&f.media), "high", 60_000, pay(), None).await.expect("retried reserve");
    assert_eq!(again.voucher_id, sold.voucher_id);
    assert!(reads() > before, "a retry on an unknown (to this process) voucher reads its subject");
}

async fn refusals_write_nothing(engines: usize) {
    let f = fixture_on(engines).await;
    let voucher = f
        .market()
        .reserve(&f.merchant, &req("r1"), std::slice::from_ref(&f.media), "high", 60_000, Payment::Merchant { payment_ref: "c".into() }, None)
        .await
        .expect("reserve")
        .voucher_id;
    let len = stream_len(&f.log).await;

    let cases: Vec<(&str, engine::app::AppError)> = vec![
        ("wrong merchant authorizes", f.market().authorize(&f.other_merchant, &req("x1"), &voucher).await.expect_err("refused")),
        ("wrong merchant voids", f.market().void(&f.other_merchant, &req("x2"), &voucher).await.expect_err("refused")),
        ("issue before authorize", f.market().issue(&f.merchant, &req("x3"), &voucher, None, 60_000).await.expect_err("refused")),
        (
            "unknown media",
            f.market()
                .reserve(&f.merchant, &req("x4"), &[MediaId::new("nope")], "high", 1000, Payment::Merchant { payment_ref: "c".into() }, None)
                .await
                .expect_err("refused"),
        ),
        (
            "bad ttl",
            f.market()
                .reserve(&f.merchant, &req("x5"), std::slice::from_ref(&f.media), "high", 0, Payment::Merchant { payment_ref: "c".into() }, None)
                .await
                .expect_err("refused"),
        ),
        ("invalid voucher id", f.market().authorize(&f.merchant, &req("x6"), &VoucherId::new("a.b")).await.expect_err("refused")),
    ];
    for (what, error) in cases {
        let rejection = rejection(error);
        assert!(!matches!(rejection, Rejection::RequestIdReused { .. }), "{what}: {rejection}");
        assert_eq!(stream_len(&f.log).await, len, "{what} wrote something");
    }

    f.clock.advance_ms(60_001);
    let late = f.market().authorize(&f.merchant, &req("late"), &voucher).await.expect_err("expired");
    assert!(matches!(rejection(late), Rejection::Expired { .. }));
    assert_eq!(stream_len(&f.log).await, len);
}

async fn a_redemption_needs_the_receipt_and_the_assigned_node(engines: usize) {
    let f = fixture_on(engines).await;
    let voucher = f
        .market()
        .reserve(&f.merchant, &req("r1"), std::slice::from_ref(&f.media), "high", 60_000, Payment::Merchant { payment_ref: "c".into() }, None)
        .await
        .expect("reserve")
        .voucher_id;
    let receipt = f.market().authorize(&f.merchant, &req("a1"), &voucher).await.expect("authorize").receipt;
    let issued = f.market().issue(&f.merchant, &req("i1"), &voucher, None, 60_000).await.expect("issue");
    assert_eq!(issued.node_id, f.node);
    let player = test_keys::fixed_rsa_2();
    let consumer = ConsumerId::new("alice");
    let cert = f.market().certify_consumer("op", &req("c1"), &consumer, &player.public().to_der().expect("der"), 86_400_000).await.expect("certify");
    let challenge = [9u8; 32];
    let len = stream_len(&f.log).await;

    let wrong_receipt = crypto::SecretKey::random();
    let alice = crypto::ProofConsumer::new(&consumer.0, &cert.serial.0, &test_keys::fixed_rsa_2().public().to_der().expect("der"));
    let bad = crypto::receipt_proof(&wrong_receipt, &voucher.0, &f.node.0, &challenge, &alice);
    let refused = f.market().redeem(&f.node, &req("d1"), &voucher, &consumer, &cert.serial, &challenge, &bad).await.expect_err("bad proof");
    assert_eq!(rejection(refused), Rejection::BadProof);
    assert_eq!(stream_len(&f.log).await, len, "a refused redemption writes nothing");

    // Another registered node, with a valid proof made for it or for the assigned node.
    let other = NodeId(f.market().register_node("op", &req("node-2"), "eu", 8).await.expect("a second node").0.id);
    let len = stream_len(&f.log).await;
    for (what, proof_node) in [("made for it", &other), ("made for the assigned node", &f.node)] {
        let proof = crypto::receipt_proof(&receipt, &voucher.0, &proof_node.0, &challenge, &alice);
        let refused = f.market().redeem(&other, &req("d-other"), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect_err("not its voucher");
        assert_eq!(rejection(refused), Rejection::NotYourAssignment, "another node redeems with a proof {what}");
        assert_eq!(stream_len(&f.log).await, len, "another node's redemption writes nothing");
    }

    let proof = crypto::receipt_proof(&receipt, &voucher.0, &f.node.0, &challenge, &alice);
    let answer = f.market().redeem(&f.node, &req("d2"), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect("redeem");
    assert_eq!(answer.keys.len(), 1);
    assert!(crypto::unwrap_key(&player, &answer.keys[0].1).is_ok(), "the key is wrapped for the player");
    let forged = crypto::confirm_proof(&wrong_receipt, &voucher.0, &f.node.0, &f.media.0, &[0; 32], &alice);
    let refused = f.market().complete_delivery(&f.node, &req("done"), &voucher, &f.media, [0; 32], 10, &forged).await.expect_err("not the buyer's");
    assert_eq!(rejection(refused), Rejection::BadProof, "only the receipt's holder confirms");
    let confirm = crypto::confirm_proof(&receipt, &voucher.0, &f.node.0, &f.media.0, &[0; 32], &alice);
    assert!(f.market().complete_delivery(&f.node, &req("done"), &voucher, &f.media, [0; 32], 10, &confirm).await.expect("complete"));
    let again = f.market().redeem(&f.node, &req("d3"), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect_err("delivered");
    assert_eq!(rejection(again), Rejection::AlreadyDelivered, "delivered at most once");
}

async fn concurrent_point_holds_never_overdraw(engines: usize) {
    let f = Arc::new(fixture_on(engines).await);
    let consumer = engine::testing::TestConsumer::certify(f.market(), "op", "acct").await.expect("certify");
    let account = consumer.account();
    // 250 per sale; 1000 points pay for exactly four of twenty concurrent reservations,
    // each with its own authorization from the consumer.
    f.market().top_up("op", &req("top"), &account, 1000, "").await.expect("top up");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let f = Arc::clone(&f);
        let account = account.clone();
        let spend = consumer.authorize_any(f.market(), &f.merchant);
        tasks.spawn(async move {
            f.market()
                .reserve(&f.merchant, &req(&format!("p{i}")), std::slice::from_ref(&f.media), "high", 60_000, Payment::Points { account }, Some(&spend))
                .await
                .map(|_| ())
        });
    }
    let mut reserved = 0;
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(()) => reserved += 1,
            Err(error) => assert_eq!(rejection(error), Rejection::InsufficientPoints),
        }
    }
    assert_eq!(reserved, 4);
    let state = f.market().handler().load_fresh::<engine::domain::account::Account>(&account.0).await.expect("account").state.clone();
    assert_eq!(state.available(), 0);
    assert_eq!(state.held_total(), 1000);
}

async fn certification_is_idempotent_and_concurrent_requests_never_collide(engines: usize) {
    let f = Arc::new(fixture_on(engines).await);
    let consumer = ConsumerId::new("bob");
    let der = test_keys::fixed_rsa_2().public().to_der().expect("der");
    let first = f.market().certify_consumer("op", &req("cert-1"), &consumer, &der, 86_400_000).await.expect("certify");
    assert!(engine::app::verify_certificate(&f.market().keys().public, &consumer, &first));
    let len = stream_len(&f.log).await;
    f.clock.advance_ms(5_000);
    let retried = f.market().certify_consumer("op", &req("cert-1"), &consumer, &der, 86_400_000).await.expect("retry");
    assert_eq!(retried, first, "a retry answers the first certificate");
    assert_eq!(stream_len(&f.log).await, len, "a retry writes nothing");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (f, consumer, der) = (Arc::clone(&f), consumer.clone(), der.clone());
        tasks.spawn(async move { f.market().certify_consumer("op", &req(&format!("cert-c{i}")), &consumer, &der, 86_400_000).await.map(|cert| cert.serial) });
    }
    let mut serials = std::collections::BTreeSet::new();
    while let Some(result) = tasks.join_next().await {
        serials.insert(result.expect("task").expect("every concurrent certification succeeds"));
    }
    assert_eq!(serials.len(), 8);
    let state = f.market().handler().load_fresh::<engine::domain::party::Consumer>(&consumer.0).await.expect("consumer").state.clone();
    assert_eq!(state.certs.len(), 9);
}

/// Sells, delivers and previews `n` times; returns the number of deliveries and previews.
async fn sell_and_deliver(f: &Fixture, n: usize, tag: &str) -> u64 {
    let player = test_keys::fixed_rsa_2();
    let consumer = ConsumerId::new("carol");
    let cert =
        f.market().certify_consumer("op", &req(&format!("{tag}-cert")), &consumer, &player.public().to_der().expect("der"), 86_400_000).await.expect("certify");
    let mut usages = 0;
    for i in 0..n {
        let voucher = f
            .market()
            .reserve(
                &f.merchant,
                &req(&format!("{tag}-r{i}")),
                std::slice::from_ref(&f.media),
                "high",
                60_000,
                Payment::Merchant { payment_ref: "c".into() },
                None,
            )
            .await
            .expect("reserve")
            .voucher_id;
        let receipt = f.market().authorize(&f.merchant, &req(&format!("{tag}-a{i}")), &voucher).await.expect("authorize").receipt;
        f.market().issue(&f.merchant, &req(&format!("{tag}-i{i}")), &voucher, None, 60_000).await.expect("issue");
        let challenge = [i as u8; 32];
        let der = test_keys::fixed_rsa_2().public().to_der().expect("der");
        let subject = crypto::ProofConsumer::new(&consumer.0, &cert.serial.0, &der);
        let proof = crypto::receipt_proof(&receipt, &voucher.0, &f.node.0, &challenge, &subject);
        f.market().redeem(&f.node, &req(&format!("{tag}-d{i}")), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect("redeem");
        let confirm = crypto::confirm_proof(&receipt, &voucher.0, &f.node.0, &f.media.0, &[3; 32], &subject);
        f.market().complete_delivery(&f.node, &req(&format!("{tag}-done{i}")), &voucher, &f.media, [3; 32], 10, &confirm).await.expect("deliver");
        let (preview, node) = f.market().preview(&f.merchant, &req(&format!("{tag}-p{i}")), &f.media, None).await.expect("preview");
        f.market().end_preview(&node, &req(&format!("{tag}-pe{i}")), &preview, 1_000).await.expect("end preview");
        usages += 2;
    }
    usages
}

fn replay(stored: &[engine::log::StoredEvent], projections: &mut projections::Projections) {
    for event in stored {
        projections.apply(event).expect("applies");
    }
}

async fn royalty_entries_are_sealed_verified_and_rebuilt_by_replay(engines: usize) {
    let f = fixture_on(engines).await;
    let master = crypto::SecretKey::from_bytes([5; 32]);
    let engine_public = f.market().keys().public.clone();
    let live = projections::Live::with_projections(projections::Projections::with_royalty_keys(&master, Some(engine_public.clone())));
    let runner = {
        let (live, log) = (live.clone(), Arc::clone(&f.log));
        tokio::spawn(async move { live.run(log).await })
    };

    let first_batch = sell_and_deliver(&f, 3, "b1").await;
    live.caught_up(f.log.last_seq().await.expect("seq")).await;
    assert!(gateways::server::seal_once(&live, f.market(), 100).await.expect("seal").is_none(), "fewer entries than the threshold: no seal");
    let seal = gateways::server::seal_once(&live, f.market(), 1).await.expect("seal").expect("a seal");
    assert_eq!((seal.first_entry, seal.last_entry), (0, first_batch - 1));
    sell_and_deliver(&f, 2, "b2").await;
    live.caught_up(f.log.last_seq().await.expect("seq")).await;
    let second = gateways::server::seal_once(&live, f.market(), 1).await.expect("seal").expect("a second seal");
    assert_eq!(second.first_entry, first_batch);
    assert_eq!(second.prev_seal_hash, engine::domain::report::Report::seal_hash(&seal));
    live.caught_up(f.log.last_seq().await.expect("seq")).await;
    runner.abort();

    let (entries, verified, faults, live_digest) =
        live.read(|p| (p.royalty.entries.len(), p.royalty.seals_verified, p.royalty.seal_faults.clone(), p.digest()));
    assert_eq!(entries as u64, first_batch + 4, "one entry per delivery and per preview");
    assert_eq!(verified, 2);
    assert!(faults.is_empty(), "{faults:?}");

    // A rebuild from sequence 1 reproduces the live state exactly.
    let stored = f.log.read_from(Seq(1), usize::MAX).await.expect("read");
    let mut rebuilt = projections::Projections::with_royalty_keys(&master, Some(engine_public.clone()));
    replay(&stored, &mut rebuilt);
    assert_eq!(rebuilt.digest(), live_digest);

    // Without the master key: the same totals, no chain.
    let mut keyless = projections::Projections::default();
    replay(&stored, &mut keyless);
    assert!(!keyless.royalty.chained());
    assert_eq!(keyless.royalty.totals, rebuilt.royalty.totals);
    let media_line = rebuilt.royalty.totals[&(projections::royalty_log::Dimension::Media, f.media.0.clone())];
    assert_eq!((media_line.deliveries, media_line.previews, media_line.amount_minor), (5, 5, 5 * 250));

    // A seal signed with the engine key but with totals that disagree is reported.
    let mut forged = second.clone();
    forged.totals_digest[0] ^= 1;
    projections::royalty::sign_seal(&test_keys::fixed_rsa(), &mut forged).expect("sign");
    let tampered: Vec<engine::log::StoredEvent> = stored
        .iter()
        .map(|event| {
            let mut recorded = engine::wire::decode(&event.payload).expect("decode");
            match &recorded.event {
                engine::domain::event::Event::RightsReportSealed(s) if s == &second => {
                    recorded.event = engine::domain::event::Event::RightsReportSealed(forged.clone());
                    engine::log::StoredEvent { payload: engine::wire::encode(&recorded).into(), ..event.clone() }
                }
                _ => event.clone(),
            }
        })
        .collect();
    assert_ne!(tampered, stored, "negative control: the seal was replaced");
    let mut replayed = projections::Projections::with_royalty_keys(&master, Some(engine_public));
    replay(&tampered, &mut replayed);
    let checker = &replayed.royalty;
    assert_eq!(checker.seals_verified, 1);
    assert_eq!(checker.seal_faults.len(), 1);
    assert!(checker.seal_faults[0].reason.contains("totals digest"), "{:?}", checker.seal_faults);
}

/// A log that says its head is `ahead` events past the one it wraps (it appends and reads
/// through to it): what a sealer sees while the projections lag a busy log.
struct HeadAhead {
    inner: Arc<dyn EventLog>,
    ahead: u64,
}

#[async_trait::async_trait]
impl EventLog for HeadAhead {
    async fn append(
        &self,
        request: engine::log::AppendRequest,
    ) -> Result<Result<engine::log::Appended, engine::log::VersionConflict>, engine::log::AppendError> {
        self.inner.append(request).await
    }
    async fn read_subject(&self, subject: &str) -> Result<Vec<engine::log::StoredEvent>, engine::log::ReadError> {
        self.inner.read_subject(subject).await
    }
    async fn read_from(&self, from: Seq, limit: usize) -> Result<Vec<engine::log::StoredEvent>, engine::log::ReadError> {
        self.inner.read_from(from, limit).await
    }
    async fn last_seq(&self) -> Result<Seq, engine::log::ReadError> {
        Ok(Seq(self.inner.last_seq().await?.0 + self.ahead))
    }
    fn follow(&self, from: Seq) -> futures::stream::BoxStream<'static, Result<engine::log::StoredEvent, engine::log::ReadError>> {
        self.inner.follow(from)
    }
}

#[tokio::test]
async fn no_seal_is_made_while_the_projections_lag_the_log_by_more_than_half_the_stream_heads_kept() {
    let f = fixture().await;
    let master = crypto::SecretKey::from_bytes([5; 32]);
    let live = projections::Live::with_projections(projections::Projections::with_royalty_keys(&master, Some(f.market().keys().public.clone())));
    let runner = {
        let (live, log) = (live.clone(), Arc::clone(&f.log));
        tokio::spawn(async move { live.run(log).await })
    };
    sell_and_deliver(&f, 2, "lag").await;
    live.caught_up(f.log.last_seq().await.expect("seq")).await;
    let before = stream_len(&f.log).await;
    let market_over = |ahead: u64| {
        let log: Arc<dyn EventLog> = Arc::new(HeadAhead { inner: Arc::clone(&f.log), ahead });
        Market::new(log, f.clock.clone() as Arc<dyn Clock>, f.market().keys(), Arc::new(OneNode(f.node.clone())))
    };

    // A seal names the projections' position, whose stream head a replay must still hold
    // when the seal lands after the log's head: more than half the heads behind, no seal.
    let lagging = market_over(projections::STREAM_HEADS_MAX as u64 / 2 + 1);
    assert!(gateways::server::seal_once(&live, &lagging, 1).await.expect("seal").is_none(), "no seal while the projections lag that far");
    assert_eq!(stream_len(&f.log).await, before, "nothing was appended");

    // Negative control: exactly half behind still seals, through the same wrapper.
    let at_limit = market_over(projections::STREAM_HEADS_MAX as u64 / 2);
    let seal = gateways::server::seal_once(&live, &at_limit, 1).await.expect("seal").expect("a seal at the limit");
    assert_eq!(stream_len(&f.log).await, before + 1, "the seal was appended");
    live.caught_up(f.log.last_seq().await.expect("seq")).await;
    runner.abort();
    assert_eq!(live.read(|p| (p.royalty.seals_verified, p.royalty.seal_faults.len())), (1, 0), "the seal verifies: {seal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issues_never_exceed_a_nodes_slots() {
    let f = fixture().await;
    let live = projections::Live::new();
    let runner = {
        let (live, log) = (live.clone(), Arc::clone(&f.log));
        tokio::spawn(async move { live.run(log).await })
    };
    let keys = f.market().keys();
    let market = Arc::new(Market::new(Arc::clone(&f.log), f.clock.clone() as Arc<dyn Clock>, keys, Arc::new(live.clone())));
    // The fixture registered one node with 8 slots; shrink it to 3.
    let small = node_id_for("op", &req("node-small"));
    market.register_node("op", &req("node-small"), "eu", 3).await.expect("node");
    market.drain_node("op", &req("drain-big"), &f.node).await.expect("drain the fixture's node");
    let mut vouchers = Vec::new();
    for i in 0..10 {
        let voucher = market
            .reserve(&f.merchant, &req(&format!("cr{i}")), std::slice::from_ref(&f.media), "high", 60_000, Payment::Merchant { payment_ref: "c".into() }, None)
            .await
            .expect("reserve")
            .voucher_id;
        market.authorize(&f.merchant, &req(&format!("ca{i}")), &voucher).await.expect("authorize");
        vouchers.push(voucher);
    }
    live.caught_up(f.log.last_seq().await.expect("seq")).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, voucher) in vouchers.into_iter().enumerate() {
        let (market, merchant) = (Arc::clone(&market), f.merchant.clone());
        tasks.spawn(async move { market.issue(&merchant, &req(&format!("ci{i}")), &voucher, None, 60_000).await.map(|answer| answer.node_id) });
    }
    let (mut issued, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(node) => {
                assert_eq!(node, small);
                issued += 1;
            }
            Err(error) => {
                assert_eq!(rejection(error), Rejection::NoNodeAvailable);
                refused += 1;
            }
        }
    }
    assert_eq!((issued, refused), (3, 7));
    live.caught_up(f.log.last_seq().await.expect("seq")).await;
    runner.abort();
    assert_eq!(live.read(|p| p.allocation.nodes[&small].in_use), 3);
}

async fn the_sweeper_settles_holds_left_by_interrupted_sagas(engines: usize) {
    use engine::domain::account::{Account, AccountCommand};
    use engine::domain::voucher::{Authorize, Voucher, VoucherCommand};
    let f = fixture_on(engines).await;
    let live = projections::Live::new();
    let runner = {
        let (live, log) = (live.clone(), Arc::clone(&f.log));
        tokio::spawn(async move { live.run(log).await })
    };
    let consumer = engine::testing::TestConsumer::certify(f.market(), "op", "acct").await.expect("certify");
    let account = consumer.account();
    f.market().top_up("op", &req("top"), &account, 1_000, "").await.expect("top up");
    let merchant_actor = engine::domain::Actor::new(engine::domain::ActorKind::Merchant, &f.merchant.0);
    let now = f.clock.now();

    // A crash between the hold and the reservation: points held for a voucher that never came to be.
    let orphan = voucher_id_for(&f.merchant, &req("crashed-reserve"));
    let public_der = consumer.passport.public().to_der().expect("der");
    let consent = consumer.authorize_any(f.market(), &f.merchant).consent(engine::domain::voucher::CertCheck::Valid, &public_der);
    let hold = AccountCommand::Hold {
        account: account.clone(),
        voucher: orphan.clone(),
        amount: 250,
        expires_at: now.plus_ms(60_000),
        merchant: f.merchant.clone(),
        media: vec![f.media.clone()],
        consent: Some(consent),
    };
    f.market().handler().handle::<Account>(&account.0, &merchant_actor, &req("crashed-reserve"), &hold).await.expect("hold");

    // A crash between the authorization and the posting.
    let paid = f
        .market()
        .reserve(
            &f.merchant,
            &req("r-paid"),
            std::slice::from_ref(&f.media),
            "high",
            60_000,
            Payment::Points { account: account.clone() },
            Some(&consumer.authorize_any(f.market(), &f.merchant)),
        )
        .await
        .expect("reserve")
        .voucher_id;
    let media = vec![f.market().handler().load::<engine::domain::catalog::Media>(&f.media.0).await.expect("media").state.clone()];
    let authorize = VoucherCommand::Authorize(Authorize { merchant: f.merchant.clone(), receipt_key_id: engine::app::TOKEN_KEY_ID, media });
    f.market().handler().handle::<Voucher>(&paid.0, &merchant_actor, &req("a-paid"), &authorize).await.expect("authorize without posting");

    // A reservation nobody authorizes: the sweeper expires it and releases its points.
    let abandoned = f
        .market()
        .reserve(
            &f.merchant,
            &req("r-abandoned"),
            std::slice::from_ref(&f.media),
            "high",
            60_000,
            Payment::Points { account: account.clone() },
            Some(&consumer.authorize_any(f.market(), &f.merchant)),
        )
        .await
        .expect("reserve")
        .voucher_id;

    let before = f.market().handler().load_fresh::<Account>(&account.0).await.expect("account").state.clone();
    assert_eq!((before.available(), before.held_total()), (250, 750), "negative control: three holds outstanding");

    live.caught_up(f.log.last_seq().await.expect("seq")).await;
    assert_eq!(gateways::server::sweep_once(&live, f.market(), 100).await.expect("sweep"), (0, 0), "nothing is due yet");
    f.clock.advance_ms(60_001);
    let (expired, settled) = gateways::server::sweep_once(&live, f.market(), 100).await.expect("sweep");
    assert_eq!(expired, 1, "the abandoned reservation");
    assert!(settled >= 2, "the orphan hold and the unposted authorization ({settled})");
    live.caught_up(f.log.last_seq().await.expect("seq")).await;
    let (expired_again, _) = gateways::server::sweep_once(&live, f.market(), 100).await.expect("second sweep");
    assert_eq!(expired_again, 0, "a reservation is expired once");
    runner.abort();

    let after = f.market().handler().load_fresh::<Account>(&account.0).await.expect("account").state.clone();
    assert_eq!(after.held_total(), 0, "no hold is left");
    assert!(after.posted.contains(&paid), "the authorized sale is paid");
    assert!(after.released.contains(&orphan) && after.released.contains(&abandoned));
    assert_eq!(after.balance, 750);
    assert_eq!(after.available(), 750);
    assert_eq!(live.read(|p| p.vouchers.holds.len()), 0);
}

/// A rental through the use cases, on the engine's injected clock: plays within the window
/// (each issued anew, each one usage, a retried Redeem none), an Issue and a Redeem at the
/// window's last millisecond accepted (the controls), the same one millisecond later refused
/// with `RentalEnded`, writing nothing; a replay from sequence 1 counts the plays.
async fn a_rental_plays_until_its_window_ends_and_each_play_counts_once(engines: usize) {
    let f = fixture_on(engines).await;
    let rental_ms = 2 * 3_600_000;
    let player = test_keys::fixed_rsa_2();
    let consumer = ConsumerId::new("dave");
    let der = player.public().to_der().expect("der");
    let cert = f.market().certify_consumer("op", &req("rent-cert"), &consumer, &der, 86_400_000).await.expect("certify");
    let subject = crypto::ProofConsumer::new(&consumer.0, &cert.serial.0, &der);
    let card = Payment::Merchant { payment_ref: "c".into() };
    let reserved =
        f.market().reserve_rental(&f.merchant, &req("rent-r"), std::slice::from_ref(&f.media), "high", 60_000, card, None, rental_ms).await.expect("reserve");
    assert_eq!((reserved.rental_ms, reserved.price_minor), (rental_ms, 50), "priced per window: rental.price_bps (20 %) of 250");
    let voucher = reserved.voucher_id;
    let authorized = f.market().authorize(&f.merchant, &req("rent-a"), &voucher).await.expect("authorize");
    let until = authorized.rental_until;
    assert_eq!(until, f.clock.now().plus_ms(rental_ms), "the window starts at Authorize");
    let play = |n: u8| {
        let challenge = [n; 32];
        (challenge, crypto::receipt_proof(&authorized.receipt, &voucher.0, &f.node.0, &challenge, &subject))
    };
    let confirm = crypto::confirm_proof(&authorized.receipt, &voucher.0, &f.node.0, &f.media.0, &[3; 32], &subject);
    for n in 1..=2u8 {
        let issued = f.market().issue(&f.merchant, &req(&format!("rent-i{n}")), &voucher, None, 60_000).await.expect("a play issued");
        assert_eq!(issued.rental_until, until);
        let (challenge, proof) = play(n);
        f.market().redeem(&f.node, &req(&format!("rent-d{n}")), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect("a play redeemed");
        // The node's retry of the same request: answered again, written once.
        let len = stream_len(&f.log).await;
        f.market().redeem(&f.node, &req(&format!("rent-d{n}")), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect("the retry answered");
        assert_eq!(stream_len(&f.log).await, len, "a retried Redeem writes nothing");
        let done = f.market().complete_delivery(&f.node, &req(&format!("rent-done{n}")), &voucher, &f.media, [3; 32], 10, &confirm).await.expect("played");
        assert!(!done, "a rental is never delivered for good");
        f.clock.advance_ms(60_000);
    }
    // Issued at the window's last millisecond (accepted), redeemed one millisecond later (refused).
    f.clock.set(until);
    let last = f.market().issue(&f.merchant, &req("rent-i3"), &voucher, None, 60_000).await.expect("issued at the window's end");
    assert_eq!(last.access_expires_at, until, "no access outlives the rental");
    let (challenge, proof) = play(3);
    f.clock.set(until.plus_ms(1));
    let len = stream_len(&f.log).await;
    let refused = f.market().redeem(&f.node, &req("rent-d3"), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect_err("after the window");
    assert_eq!(rejection(refused), Rejection::RentalEnded { ended_at: until });
    let refused = f.market().issue(&f.merchant, &req("rent-i4"), &voucher, None, 60_000).await.expect_err("after the window");
    assert_eq!(rejection(refused), Rejection::RentalEnded { ended_at: until });
    assert_eq!(stream_len(&f.log).await, len, "refusals write nothing");
    // The control: the very same redemption, with the clock back at the window's end, is accepted.
    f.clock.set(until);
    f.market().redeem(&f.node, &req("rent-d3"), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect("within the window");

    let stored = f.log.read_from(Seq(1), usize::MAX).await.expect("read");
    let mut rebuilt = projections::Projections::default();
    replay(&stored, &mut rebuilt);
    assert_eq!(rebuilt.royalty.usages, 3, "three plays, three usages, the retries none");
}
