//! The value-flow attacks that were tried by hand against a running engine, replayed end to
//! end over gRPC (engine, delivery node agent and player on loopback sockets), each next to
//! its control: the same request without the attack goes through, so the refusal is the
//! protection's doing and not a broken fixture.
//!
//! - A repeated Redeem request id answered the first redemption's keys to whatever consumer
//!   the repeat named: now only to the consumer and certificate the voucher recorded.
//! - The receipt proof did not name the consumer, so the node (or anyone on the link) could
//!   put its own passport in a player's Redeem: now the proof names consumer, certificate
//!   and key.
//! - A player could redeem under the request id the node derives for its own
//!   CompleteDelivery ("deliver-…"), which then failed for good (RequestIdReused): now a
//!   player's id reaches the engine in a namespace of its own.
//! - A Confirm with a wrong hash reopened the voucher for any consumer while the first
//!   held the keys: now the keys' first recipient is the only one who may redeem again,
//!   `delivery.retries_max` times.
//!
//! - Any merchant could spend any consumer's points (the account was a free string), and
//!   the refusal told it the balance: now only with the consumer's spend authorization,
//!   for that merchant, once, within its ceiling and time; refusals state no balance.
//!
//! - Key release is the usage: the royalty log counts the first redemption, so a failed
//!   Confirm no longer keeps a released key out of the record.
//!
//! - A duplication order released the media key for free: now a unit pays as it binds
//!   (merchant clearing → the split) and is a usage in the royalty log.
//!
//! Not here yet (issue 20): per-rendition keys.

use engine::crypto::{self, SecretKey};
use engine::ids::ConsumerId;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use gateways::common::client::{self, MerchantClient, Upload};
use gateways::common::cred::Credential;
use gateways::node::{self, NodeArgs, RunningNode};
use gateways::player::{self, Passport, Purchase};
use gateways::server::{self, EngineConfig, RunningEngine};
use proto::v1 as pb;
use std::sync::Arc;
use tonic::Code;

struct Fixture {
    dir: tempfile::TempDir,
    engine: RunningEngine,
    log: Arc<dyn EventLog>,
    channel: tonic::transport::Channel,
    catalog: client::CatalogClient,
    merchant: MerchantClient,
    merchant_id: String,
    node_cred: Credential,
    engine_public: crypto::RsaPublic,
    media_id: String,
}

async fn start() -> (Fixture, RunningNode) {
    start_with(|_| {}).await
}

/// [`start`] with the engine's settings changed by `adjust`.
async fn start_with(adjust: impl FnOnce(&mut EngineConfig)) -> (Fixture, RunningNode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let mut config = EngineConfig::new(dir.path().to_path_buf(), keys.clone());
    adjust(&mut config);
    let engine = server::start(config, Arc::clone(&log), listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let engine_public = gateways::common::keys::load_engine_public(&keys).expect("public key");
    let mut catalog = client::catalog(channel.clone(), operator);
    let registered = catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect("merchant");
    let merchant_cred = client::credential_of(registered.into_inner()).expect("cred");
    let merchant_id = merchant_cred.id.clone();
    let merchant = client::merchant(channel.clone(), merchant_cred);
    let registered = catalog
        .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "n-1".into(), region: "eu".into(), slots_max: 4 })
        .await
        .expect("node");
    let node_cred = client::credential_of(registered.into_inner()).expect("cred");
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
        image_descriptor: "cover.jpg".into(),
    };
    let media_id = client::publish(&mut catalog, "pub-1", &engine_public, upload).await.expect("publish").media_id;
    let fixture = Fixture { dir, engine, log, channel, catalog, merchant, merchant_id, node_cred, engine_public, media_id };
    let node = node::start(NodeArgs {
        connect: fixture.engine.url(),
        cred: fixture.node_cred.clone(),
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: 4,
        region: "eu".into(),
        data_dir: fixture.dir.path().join("node"),
        cache_bytes_max: 16 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node starts");
    (fixture, node)
}

impl Fixture {
    async fn passport(&mut self, consumer: &str) -> Passport {
        player::create_passport(&mut self.catalog, &format!("cert-{consumer}"), &ConsumerId::new(consumer), &self.engine_public).await.expect("passport")
    }

    async fn buy(&mut self, request_id: &str) -> client::Sale {
        client::buy(&mut self.merchant, request_id, std::slice::from_ref(&self.media_id), None).await.expect("buy")
    }

    async fn head(&self) -> u64 {
        self.log.last_seq().await.expect("head").0
    }

    /// Usages in the engine's royalty log, once it has caught up with the stream.
    async fn usages(&self) -> u64 {
        let live = &self.engine.state.live;
        live.caught_up(engine::ids::Seq(self.head().await)).await;
        live.read(|projections| projections.royalty.usages)
    }

    async fn status_of(&mut self, voucher_id: &str) -> String {
        self.merchant.get_voucher(pb::GetVoucherRequest { voucher_id: voucher_id.into() }).await.expect("get voucher").into_inner().status
    }
}

fn purchase_of(sale: &client::Sale) -> Purchase {
    Purchase {
        node_endpoint: sale.node_endpoint.clone(),
        node_id: sale.node_id.clone(),
        grant: sale.grant(),
        receipt: sale.receipt.clone(),
        rental_until_ms: 0,
    }
}

fn receipt_of(sale: &client::Sale) -> SecretKey {
    SecretKey::from_bytes(sale.receipt.as_slice().try_into().expect("a 32-byte receipt"))
}

/// What the buyer (who holds the receipt) sends a node to redeem for `passport`.
async fn player_redeem(node: &mut player::NodeClient, sale: &client::Sale, passport: &Passport, request_id: &str) -> pb::PlayerRedeemRequest {
    let challenge = node.challenge(pb::ChallengeRequest { grant: Some(sale.grant()) }).await.expect("challenge").into_inner().challenge;
    let certificate = &passport.certificate;
    let subject = crypto::ProofConsumer::new(passport.consumer_id.as_str(), &certificate.cert_serial, &certificate.public_key_der);
    let proof = crypto::receipt_proof(&receipt_of(sale), &sale.voucher_id, &sale.node_id, &challenge, &subject).to_vec();
    pb::PlayerRedeemRequest {
        grant: Some(sale.grant()),
        request_id: request_id.into(),
        consumer_id: passport.consumer_id.as_str().into(),
        cert_serial: certificate.cert_serial.clone(),
        challenge,
        proof,
        recover: false,
    }
}

/// The attack: alice redeemed with request id r1 and the voucher was delivered; the buyer
/// then sent r1 again naming bob (with a fresh challenge and a proof naming bob, which the
/// receipt holder can make). It got the real media key, wrapped for bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_redeem_request_id_is_answered_only_to_the_first_consumer() {
    let (mut fixture, node) = start().await;
    let alice = fixture.passport("alice").await;
    let bob = fixture.passport("bob").await;
    let sale = fixture.buy("sale-1").await;
    let copies = player::redeem_and_download(&purchase_of(&sale), &alice, "r1", &fixture.dir.path().join("alice")).await.expect("alice's delivery");
    assert_eq!(copies.len(), 1);
    assert_eq!(fixture.status_of(&sale.voucher_id).await, "Delivered");

    let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
    let head = fixture.head().await;
    let as_bob = player_redeem(&mut at_node, &sale, &bob, "r1").await;
    let refused = at_node.redeem(as_bob).await.expect_err("the repeat names another consumer");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("another consumer"), "{refused:?}");
    assert_eq!(fixture.head().await, head, "a refused repeat writes nothing");

    // Control: the same repeat for alice is answered (idempotency), with keys only alice's
    // passport opens. Without the consumer check, bob's repeat took this path.
    let as_alice = player_redeem(&mut at_node, &sale, &alice, "r1").await;
    let answer = at_node.redeem(as_alice).await.expect("alice's repeat").into_inner();
    assert_eq!(answer.keys.len(), 1);
    assert!(crypto::unwrap_key(&alice.private, &answer.keys[0].wrapped_key).is_ok(), "wrapped for alice");
    assert!(crypto::unwrap_key(&bob.private, &answer.keys[0].wrapped_key).is_err(), "not for bob");
    assert_eq!(fixture.head().await, head, "a repeat writes nothing");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// The attack: the node (or anyone on the player↔node link) takes a player's Redeem and
/// sends it to the engine with its own passport, to get the media key wrapped for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cannot_put_its_own_passport_in_a_players_redeem() {
    let (mut fixture, node) = start().await;
    let alice = fixture.passport("alice").await;
    let mallory = fixture.passport("mallory").await;
    let sale = fixture.buy("sale-1").await;
    let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
    let alices = player_redeem(&mut at_node, &sale, &alice, "r1").await;

    // The node calls the engine with its own credential, alice's challenge and proof, and
    // mallory's certificate.
    let mut engine = client::delivery(fixture.channel.clone(), fixture.node_cred.clone());
    let swapped = pb::RedeemRequest {
        request_id: "swap-1".into(),
        voucher_id: sale.voucher_id.clone(),
        consumer_id: "mallory".into(),
        cert_serial: mallory.certificate.cert_serial.clone(),
        challenge: alices.challenge.clone(),
        proof: alices.proof.clone(),
        recover: false,
    };
    let head = fixture.head().await;
    let refused = engine.redeem(swapped.clone()).await.expect_err("the proof names alice");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("proof"), "{refused:?}");
    // Mallory's certificate under alice's name is no certificate of alice's.
    let refused = engine.redeem(pb::RedeemRequest { consumer_id: "alice".into(), ..swapped.clone() }).await.expect_err("mallory's certificate");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert_eq!(fixture.head().await, head, "refusals write nothing");

    // Control: alice's own Redeem, unchanged, goes through the same engine.
    let answer = engine
        .redeem(pb::RedeemRequest { consumer_id: "alice".into(), cert_serial: alice.certificate.cert_serial.clone(), ..swapped })
        .await
        .expect("alice's redeem")
        .into_inner();
    assert!(crypto::unwrap_key(&alice.private, &answer.keys[0].wrapped_key).is_ok());
    assert!(crypto::unwrap_key(&mallory.private, &answer.keys[0].wrapped_key).is_err());
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// The attack: a player redeems under the request id the node derives for its own
/// CompleteDelivery of that media, so the node's report is refused as a reused id for
/// another command, for good: the voucher stays Redeeming, with no royalty entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_player_cannot_take_the_request_id_the_node_reports_under() {
    let (mut fixture, node) = start().await;
    let alice = fixture.passport("alice").await;
    let sale = fixture.buy("sale-1").await;
    let nodes_own_id = node::derived_request_id("deliver", &[&sale.voucher_id, &fixture.media_id]);
    player::redeem_and_download(&purchase_of(&sale), &alice, &nodes_own_id, &fixture.dir.path().join("alice")).await.expect("delivered");
    assert_eq!(fixture.status_of(&sale.voucher_id).await, "Delivered", "the node's CompleteDelivery went through");

    // Control, the protection off: a node that forwarded the player's id as it is (what
    // the node did before) collides with its own report.
    let second = fixture.buy("sale-2").await;
    let mut engine = client::delivery(fixture.channel.clone(), fixture.node_cred.clone());
    let nodes_own_id = node::derived_request_id("deliver", &[&second.voucher_id, &fixture.media_id]);
    let challenge = crypto::random_bytes::<32>();
    let subject = crypto::ProofConsumer::new("alice", &alice.certificate.cert_serial, &alice.certificate.public_key_der);
    let proof = crypto::receipt_proof(&receipt_of(&second), &second.voucher_id, &second.node_id, &challenge, &subject);
    engine
        .redeem(pb::RedeemRequest {
            request_id: nodes_own_id.clone(),
            voucher_id: second.voucher_id.clone(),
            consumer_id: "alice".into(),
            cert_serial: alice.certificate.cert_serial.clone(),
            challenge: challenge.to_vec(),
            proof: proof.to_vec(),
            recover: false,
        })
        .await
        .expect("redeemed under the node's id");
    let collided = engine
        .complete_delivery(pb::CompleteDeliveryRequest {
            request_id: nodes_own_id,
            voucher_id: second.voucher_id.clone(),
            media_id: fixture.media_id.clone(),
            content_hash: vec![1; 32],
            size_bytes: 20_000,
            confirm_proof: crypto::confirm_proof(&receipt_of(&second), &second.voucher_id, &second.node_id, &fixture.media_id, &[1; 32], &subject).to_vec(),
        })
        .await
        .expect_err("the id is taken");
    assert_eq!(collided.code(), Code::InvalidArgument, "{collided:?}");
    assert_eq!(fixture.status_of(&second.voucher_id).await, "Redeeming");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// The attack: the buyer redeems for alice, sends a Confirm with a wrong hash (the node
/// reports the delivery failed, the voucher goes back to Issued), then redeems for bob:
/// 22 alternations gave both consumers the key while the royalty log counted one use.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_failed_confirm_only_the_consumer_holding_the_keys_redeems() {
    let (mut fixture, node) = start().await;
    let alice = fixture.passport("alice").await;
    let bob = fixture.passport("bob").await;
    let sale = fixture.buy("sale-1").await;
    let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
    let first = player_redeem(&mut at_node, &sale, &alice, "r1").await;
    at_node.redeem(first).await.expect("alice redeems");
    let subject = crypto::ProofConsumer::new("alice", &alice.certificate.cert_serial, &alice.certificate.public_key_der);
    let proof = crypto::confirm_proof(&receipt_of(&sale), &sale.voucher_id, &sale.node_id, &fixture.media_id, &[0; 32], &subject).to_vec();
    let failed = at_node
        .confirm(pb::ConfirmRequest {
            grant: Some(sale.grant()),
            media_id: fixture.media_id.clone(),
            received_hash: vec![0; 32],
            proof,
            play_id: String::new(),
        })
        .await
        .expect_err("a wrong hash");
    assert_eq!(failed.code(), Code::DataLoss, "{failed:?}");
    assert_eq!(fixture.status_of(&sale.voucher_id).await, "Issued", "the delivery was reported failed");

    let head = fixture.head().await;
    let as_bob = player_redeem(&mut at_node, &sale, &bob, "r2").await;
    let refused = at_node.redeem(as_bob).await.expect_err("alice holds the keys");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(fixture.head().await, head, "a refused redemption writes nothing");

    // The keys left at alice's redemption: that was the usage, counted before any Confirm.
    assert_eq!(fixture.usages().await, 1, "the release is in the royalty log");
    // A served stream binds each entry's nonce to its source sequence (`serve` records
    // royalty.entry_binding = 1 as it starts).
    let (entries, bound) = fixture.engine.state.live.read(|p| {
        let entries = &p.royalty.entries;
        (entries.len(), entries.iter().filter(|entry| entry.chained.bound_seq == Some(entry.source_seq)).count())
    });
    assert_eq!((entries, bound), (1, 1), "the entry binds its stream sequence");

    // Control: alice, who holds the keys, may retry the failed delivery.
    let again = player_redeem(&mut at_node, &sale, &alice, "r3").await;
    let answer = at_node.redeem(again).await.expect("alice retries").into_inner();
    assert!(crypto::unwrap_key(&alice.private, &answer.keys[0].wrapped_key).is_ok());
    assert_eq!(fixture.usages().await, 1, "a retry is no new usage");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// The attack: a one-unit duplication order bound three times, each with a new device key,
/// handed the merchant the media key three times, with nothing recorded for the second and
/// third. A unit binds once, to one key; the media key is wrapped only after the decision,
/// and only for the key the order records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplication_unit_binds_one_device_key_once() {
    let (mut fixture, node) = start().await;
    let order = fixture
        .merchant
        .place_order(pb::PlaceOrderRequest { request_id: "order-1".into(), media_id: fixture.media_id.clone(), units: 1 })
        .await
        .expect("order")
        .into_inner()
        .order_id;
    let device = fixture.passport("device-1").await;
    let other = fixture.passport("device-2").await;
    // The devices are certified by the operator like consumers (a device certificate); a
    // unit binds to one by id and certificate, and its key is the certificate's.
    let bind = |request_id: &str, key: &Passport| pb::BindUnitRequest {
        request_id: request_id.into(),
        order_id: order.clone(),
        unit: 0,
        device_id: key.consumer_id.as_str().into(),
        device_public_key_der: key.certificate.public_key_der.clone(),
        device_cert_serial: key.certificate.cert_serial.clone(),
    };
    let usages = fixture.usages().await;
    // Refused before anything: a device nobody certified, another device's certificate,
    // a key that is not the certificate's.
    let head = fixture.head().await;
    let uncertified = pb::BindUnitRequest { device_id: "device-x".into(), ..bind("bind-0a", &device) };
    assert_eq!(fixture.merchant.bind_unit(uncertified).await.expect_err("uncertified").code(), Code::NotFound);
    let borrowed = pb::BindUnitRequest { device_cert_serial: other.certificate.cert_serial.clone(), ..bind("bind-0b", &device) };
    assert_eq!(fixture.merchant.bind_unit(borrowed).await.expect_err("another device's certificate").code(), Code::NotFound);
    let swapped = pb::BindUnitRequest { device_public_key_der: other.certificate.public_key_der.clone(), ..bind("bind-0c", &device) };
    assert_eq!(fixture.merchant.bind_unit(swapped).await.expect_err("not the certified key").code(), Code::InvalidArgument);
    assert_eq!(fixture.head().await, head, "refused binds write nothing");
    let first = fixture.merchant.bind_unit(bind("bind-1", &device)).await.expect("bound").into_inner();
    assert!(crypto::unwrap_key(&device.private, &first.wrapped_media_key).is_ok(), "wrapped for the device");
    // The unit was paid before its key left: a charge on the merchant's clearing account
    // in the ledger, and a usage in the royalty log.
    assert_eq!(fixture.usages().await, usages + 1, "the bound unit is a usage");
    let clearing =
        fixture.engine.state.live.read(|p| p.balances.ledger_balance("EUR", engine::domain::event::LedgerAccountKind::MerchantClearing, &fixture.merchant_id));
    assert_eq!(clearing, -199, "the merchant pays the unit's price");
    let head = fixture.head().await;
    for request_id in ["bind-2", "bind-3"] {
        let refused = fixture.merchant.bind_unit(bind(request_id, &other)).await.expect_err("the unit is bound");
        assert_eq!(refused.code(), Code::AlreadyExists, "{request_id}: {refused:?}");
    }
    // The first request id again, with the other device: a repeat must name what was bound.
    let refused = fixture.merchant.bind_unit(bind("bind-1", &other)).await.expect_err("a repeat naming another key");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert_eq!(fixture.head().await, head, "refusals write nothing");
    // Control: the same device and key again is in effect, and still only that key opens it.
    let again = fixture.merchant.bind_unit(bind("bind-4", &device)).await.expect("the same binding").into_inner();
    assert!(crypto::unwrap_key(&device.private, &again.wrapped_media_key).is_ok());
    assert!(crypto::unwrap_key(&other.private, &again.wrapped_media_key).is_err());
    assert_eq!(fixture.usages().await, usages + 1, "one unit, one usage, however often it is asked");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// The attack: the operator credited alice 1,000 points; a merchant alice never dealt with
/// named her account in ten Reserves and spent 990 of them, and a refusal told it her
/// balance ("10 available, 99 needed"). Now each points purchase needs alice's spend
/// authorization for that merchant, good once, within its ceiling, media and time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merchant_spends_a_consumers_points_only_with_her_authorization() {
    let (mut fixture, node) = start().await;
    let alice = fixture.passport("alice").await;
    let mallory = fixture.passport("mallory").await;
    fixture
        .catalog
        .top_up_points(pb::TopUpPointsRequest { request_id: "top-1".into(), account_id: "alice".into(), amount: 1_000, ..Default::default() })
        .await
        .expect("top up");
    let registered = fixture.catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-2".into(), name: "Stranger".into() }).await.expect("m");
    let stranger_cred = client::credential_of(registered.into_inner()).expect("cred");
    let mut stranger = client::merchant(fixture.channel.clone(), stranger_cred.clone());
    let expires = engine::ids::Millis(engine::clock::Clock::now(&engine::clock::SystemClock).0 + 600_000);
    let media = std::slice::from_ref(&fixture.media_id);
    let for_shop = |ceiling: u64| gateways::common::spend::to_pb(&alice.authorize_spend(&fixture.merchant_id, ceiling, media, expires).expect("sign"));
    let reserve = |request_id: &str, account: &str, spend: Option<pb::SpendAuthorization>| pb::ReserveRequest {
        request_id: request_id.into(),
        media_ids: media.to_vec(),
        rendition: "high".into(),
        ttl_ms: 60_000,
        points_account: account.into(),
        payment_ref: String::new(),
        spend_authorization: spend,
        rental_ms: 0,
    };
    let head = fixture.head().await;
    let refused = |status: tonic::Status, code: Code, has: &str| {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(has), "{status:?}");
        assert!(!status.message().contains("1000") && !status.message().contains("1,000"), "no balance in {status:?}");
    };

    // The attack as tried: a stranger names alice's account.
    refused(stranger.reserve(reserve("steal-1", "alice", None)).await.expect_err("no consent"), Code::PermissionDenied, "spend authorization");
    // Alice's consent for the shop, taken by the stranger.
    let shops = for_shop(500);
    refused(stranger.reserve(reserve("steal-2", "alice", Some(shops.clone()))).await.expect_err("not for it"), Code::PermissionDenied, "another merchant");
    // The stranger's passport signs "alice's" consent: not alice's certificate.
    let forged = pb::SpendAuthorization { merchant_id: stranger_cred.id.clone(), ..shops.clone() };
    refused(stranger.reserve(reserve("steal-3", "alice", Some(forged))).await.expect_err("forged"), Code::PermissionDenied, "signature");
    let mallorys = mallory.authorize_spend(&stranger_cred.id, 500, media, expires).expect("sign");
    let as_alice = pb::SpendAuthorization { account_id: "alice".into(), ..gateways::common::spend::to_pb(&mallorys) };
    refused(stranger.reserve(reserve("steal-4", "alice", Some(as_alice))).await.expect_err("mallory's key"), Code::PermissionDenied, "");
    // The shop itself, beyond the ceiling alice set.
    refused(fixture.merchant.reserve(reserve("over-1", "alice", Some(for_shop(100)))).await.expect_err("ceiling"), Code::PermissionDenied, "exceeds");
    assert_eq!(fixture.head().await, head, "refusals write nothing");

    // Control: the shop with alice's consent buys; the points are held, then spent.
    let sale = client::buy(&mut fixture.merchant, "paid-1", media, Some(&client::PointsPayment::authorized(shops.clone()))).await.expect("paid in points");
    // The same consent again, for a second purchase: used.
    refused(fixture.merchant.reserve(reserve("again-1", "alice", Some(shops))).await.expect_err("used"), Code::PermissionDenied, "already used");
    // Alice reads her own balance; a balance too low for a purchase is refused without it.
    let mut consumer = client::consumer(fixture.channel.clone());
    let points = alice.points(&mut consumer).await.expect("alice's balance");
    assert_eq!((points.balance, points.held, points.available), (801, 0, 801), "1,000 less the 199 paid for {}", sale.voucher_id);
    // Four more paid purchases (reserved and authorized; the node's four slots are not needed).
    for i in 0..4 {
        let reserved = fixture.merchant.reserve(reserve(&format!("more-{i}-reserve"), "alice", Some(for_shop(500)))).await.expect("reserved").into_inner();
        let authorize = pb::AuthorizeRequest { request_id: format!("more-{i}-authorize"), voucher_id: reserved.voucher_id };
        fixture.merchant.authorize(authorize).await.expect("paid");
    }
    let points = alice.points(&mut consumer).await.expect("alice's balance");
    assert_eq!((points.balance, points.held, points.available), (5, 0, 5), "four more paid");
    let short = fixture.merchant.reserve(reserve("short-1", "alice", Some(for_shop(500)))).await.expect_err("5 points left");
    refused(short, Code::FailedPrecondition, "cannot cover");
    assert!(!fixture.merchant.reserve(reserve("short-2", "alice", Some(for_shop(500)))).await.expect_err("5 left").message().contains('5'));
    // Mallory cannot read alice's balance with her own passport.
    let spoofed = Passport { consumer_id: ConsumerId::new("alice"), ..mallory.clone() };
    let denied = spoofed.points(&mut consumer).await.expect_err("not alice");
    let denied = denied.downcast::<player::RpcError>().expect("an rpc error");
    assert_eq!(denied.code, Code::PermissionDenied, "{}", denied.message);
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// The slot leak tried by hand: a node's slots held by vouchers bought and never redeemed
/// stayed taken after their access window, so every later purchase got ResourceExhausted
/// for good, and the lapsed vouchers could not be issued again. Now the sweeper lapses an
/// unused window: the slots come back and the merchant issues the voucher anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_of_unused_access_windows_come_back_and_the_voucher_is_issued_anew() {
    // One-second windows: the engine's own setting, as the audited `access.ttl_ms` is at
    // least the heartbeat timeout (10 s or more); the sweeper lapses them the same way.
    let (mut fixture, node) = start_with(|config| config.access_ttl_ms = 1_000).await;
    // The node's four slots, taken by four sales nobody redeems.
    let mut sales = Vec::new();
    for i in 0..4 {
        sales.push(fixture.buy(&format!("unused-{i}")).await);
    }
    let full = client::buy(&mut fixture.merchant, "one-more", std::slice::from_ref(&fixture.media_id), None).await.expect_err("the node is full");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");

    // Past the windows, the sweeper's round lapses them (polled: no fixed sleep decides).
    let state = &fixture.engine.state;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut lapsed = 0;
    while lapsed < sales.len() {
        assert!(std::time::Instant::now() < deadline, "only {lapsed} windows lapsed");
        state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
        lapsed += server::lapse_once(&state.live, &state.market, 100).await.expect("lapse").0;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
    assert_eq!(state.live.read(|p| p.allocation.nodes.values().map(|n| n.in_use).sum::<u32>()), 0, "every slot came back");
    assert_eq!(fixture.status_of(&sales[0].voucher_id).await, "Authorized", "paid and unissued again");

    // A purchase goes through again, and a lapsed voucher is issued anew (a new token).
    fixture.buy("after-lapse").await;
    let reissued = fixture
        .merchant
        .issue_voucher(pb::IssueVoucherRequest { request_id: "reissue-0".into(), voucher_id: sales[0].voucher_id.clone(), region: String::new() })
        .await
        .expect("issued anew")
        .into_inner();
    assert_ne!(reissued.access_token, sales[0].access_token, "a new access window, a new token");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// The preview starvation tried by hand: four previews nobody played on a 4-slot node made
/// another merchant's purchase fail, and a restart did not help. Now each merchant's
/// previews hold at most its quota of a node (a quarter), and a preview its node never
/// reports ends after its clip and `preview.grace_ms`: the sweeper gives the slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_merchants_unplayed_previews_neither_starve_sales_nor_keep_their_slots() {
    let (mut fixture, node) = start().await;
    let operator = Credential::load(&fixture.dir.path().join("keys/operator.cred")).expect("operator");
    let mut admin = client::admin(fixture.channel.clone(), operator);
    admin.set_config(pb::SetConfigRequest { request_id: "grace".into(), key: "preview.grace_ms".into(), value: "1000".into() }).await.expect("short grace");
    // A half-second clip, so the window is 1.5 s.
    let upload = Upload {
        title: "Jingle".into(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 500,
        price_minor: 99,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        content: vec![7; 2_000],
        preview_clip: vec![1; 100],
        image_descriptor: String::new(),
    };
    let jingle = client::publish(&mut fixture.catalog, "pub-jingle", &fixture.engine_public, upload).await.expect("publish").media_id;
    let preview = |request_id: &str| pb::PreviewRequest { request_id: request_id.into(), media_id: jingle.clone(), region: String::new() };

    // The shop's previews: one of the node's four slots, then refused, writing nothing.
    let first = fixture.merchant.preview(preview("free-0")).await.expect("the shop's first preview").into_inner();
    let head = fixture.head().await;
    for i in 1..4 {
        let refused = fixture.merchant.preview(preview(&format!("free-{i}"))).await.expect_err("over the shop's quota");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("previews already hold their share"), "{refused:?}");
    }
    assert_eq!(fixture.head().await, head, "refused previews write nothing");
    // Another merchant sells on the same node (and has its own preview quota there).
    let other = client::credential_of(
        fixture.catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-2".into(), name: "Other".into() }).await.expect("merchant").into_inner(),
    )
    .expect("cred");
    let mut other = client::merchant(fixture.channel.clone(), other);
    let sale = client::buy(&mut other, "other-1", std::slice::from_ref(&fixture.media_id), None).await.expect("the other merchant's sale");
    assert_eq!(sale.node_id, first.node_id, "on the node the shop's previews wanted");
    other.preview(preview("other-free-0")).await.expect("the other merchant's own preview");

    // Nobody plays the previews: past clip and grace the sweeper ends them (polled).
    let state = &fixture.engine.state;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut ended = 0;
    while ended < 2 {
        assert!(std::time::Instant::now() < deadline, "only {ended} previews ended");
        state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
        ended += server::lapse_once(&state.live, &state.market, 100).await.expect("lapse").1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
    assert_eq!(state.live.read(|p| p.allocation.nodes.values().map(|n| n.in_use).sum::<u32>()), 1, "only the sale's slot is in use");
    // Recorded as ended with nothing played, by the engine; the node's late report is refused.
    let events = fixture.log.read_subject(&format!("vs.preview.{}", first.preview_id)).await.expect("read");
    let last = engine::wire::decode(&events.last().expect("events").payload).expect("decode");
    assert!(matches!(last.event, engine::domain::Event::PreviewEnded { played_ms: 0, .. }), "{:?}", last.event);
    assert_eq!(last.command, "LapsePreview");
    let mut delivery = client::delivery(fixture.channel.clone(), fixture.node_cred.clone());
    let late = delivery
        .end_preview(pb::EndPreviewRequest { request_id: "late-end".into(), preview_id: first.preview_id.clone(), played_ms: 400 })
        .await
        .expect_err("ended");
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    // The shop's quota is free again.
    fixture.merchant.preview(preview("free-again")).await.expect("the shop previews again");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// After the sale: a merchant gives the money back. Before any key went out it is a void
/// (the node's slot comes back); once the keys were released it is a refund (or a
/// chargeback) that reverses the postings, credits the points back, writes a royalty
/// adjustment entry (the totals net to zero) and ends the voucher: it is never redeemed
/// again, by anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_after_delivery_reverses_the_sale_nets_the_royalties_and_ends_the_voucher() {
    let (mut fixture, node) = start().await;
    let alice = fixture.passport("alice").await;
    fixture
        .catalog
        .top_up_points(pb::TopUpPointsRequest { request_id: "top-1".into(), account_id: "alice".into(), amount: 1_000, ..Default::default() })
        .await
        .expect("top up");
    let expires = engine::ids::Millis(engine::clock::Clock::now(&engine::clock::SystemClock).0 + 600_000);
    let consent = alice.authorize_spend(&fixture.merchant_id, 500, std::slice::from_ref(&fixture.media_id), expires).expect("sign");
    let points = client::PointsPayment::authorized(gateways::common::spend::to_pb(&consent));
    let sale = client::buy(&mut fixture.merchant, "paid-1", std::slice::from_ref(&fixture.media_id), Some(&points)).await.expect("paid in points");
    let mut consumer = client::consumer(fixture.channel.clone());
    assert_eq!(alice.points(&mut consumer).await.expect("balance").available, 801, "199 spent");
    let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
    let redeem = player_redeem(&mut at_node, &sale, &alice, "r1").await;
    at_node.redeem(redeem).await.expect("alice redeems: the keys are released");
    assert_eq!(fixture.usages().await, 1);
    let refund = |request_id: &str, voucher_id: &str, reason: &str| pb::RefundRequest {
        request_id: request_id.into(),
        voucher_id: voucher_id.into(),
        reason: reason.into(),
        chargeback: false,
    };

    // Another merchant cannot refund it, and a refund needs a reason: nothing written.
    let other = client::credential_of(
        fixture.catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-2".into(), name: "Other".into() }).await.expect("m").into_inner(),
    )
    .expect("cred");
    let mut other = client::merchant(fixture.channel.clone(), other);
    let head = fixture.head().await;
    assert_eq!(other.refund(refund("x-1", &sale.voucher_id, "mine")).await.expect_err("not its sale").code(), Code::NotFound, "as an unknown voucher");
    assert_eq!(fixture.merchant.refund(refund("x-2", &sale.voucher_id, "")).await.expect_err("no reason").code(), Code::InvalidArgument);
    assert_eq!(fixture.head().await, head, "refused refunds write nothing");

    // The refund after the release.
    let answer = fixture.merchant.refund(refund("refund-1", &sale.voucher_id, "the customer asked")).await.expect("refunded").into_inner();
    assert_eq!(answer.status, "Refunded");
    assert_eq!(fixture.status_of(&sale.voucher_id).await, "Refunded");
    assert_eq!(alice.points(&mut consumer).await.expect("balance").available, 1_000, "the points came back");
    assert_eq!(fixture.usages().await, 2, "the sale's entry and its adjustment");
    let (net, refunds, faults, ledger_sum) = fixture.engine.state.live.read(|p| {
        let line = p.royalty.totals[&(projections::royalty_log::Dimension::Merchant, fixture.merchant_id.clone())];
        (line.net_minor(), line.refunds, p.royalty.seal_faults.len(), p.balances.sum())
    });
    assert_eq!((net, refunds, faults, ledger_sum), (0, 1, 0, Some(0)), "the totals net to zero; the ledger still balances");
    // The retry answers again; a second refund and any redemption are refused.
    assert_eq!(fixture.merchant.refund(refund("refund-1", &sale.voucher_id, "the customer asked")).await.expect("the retry").into_inner().status, "Refunded");
    let head = fixture.head().await;
    let again = fixture.merchant.refund(refund("refund-2", &sale.voucher_id, "twice")).await.expect_err("refunded already");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    let redeem = player_redeem(&mut at_node, &sale, &alice, "r2").await;
    let refused = at_node.redeem(redeem).await.expect_err("a refunded voucher is never redeemed");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(fixture.head().await, head, "refused: nothing written");

    // Before any release the refund is a void, and the node's slot comes back.
    let unused = fixture.buy("unused-1").await;
    let slots = |fixture: &Fixture| fixture.engine.state.live.read(|p| p.allocation.nodes.values().map(|n| n.in_use).sum::<u32>());
    fixture.engine.state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
    let before = slots(&fixture);
    let answer = fixture.merchant.refund(refund("refund-3", &unused.voucher_id, "changed their mind")).await.expect("voided").into_inner();
    assert_eq!(answer.status, "Voided");
    fixture.engine.state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
    assert_eq!(slots(&fixture), before - 1, "the issued voucher's slot came back");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// A node drained (or removed, or silent) strands what was issued to it: the player paid
/// and cannot be served. Now the merchant's reissue moves such a voucher to a node that
/// serves (a new node and access token, the receipt unchanged), the engine's sweeper moves
/// the rest by itself, the old node's tokens stop working, and the slots follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vouchers_on_a_drained_node_move_to_a_serving_one_by_reissue_or_by_the_engine() {
    let (mut fixture, node) = start().await;
    let alice = fixture.passport("alice").await;
    let first = fixture.buy("sale-1").await;
    let second = fixture.buy("sale-2").await;
    let node_a = fixture.node_cred.id.clone();
    assert_eq!((first.node_id.as_str(), second.node_id.as_str()), (node_a.as_str(), node_a.as_str()), "one node so far");
    // A second node registers and announces itself; then the operator drains the first.
    let registered = fixture
        .catalog
        .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "n-2".into(), region: "eu".into(), slots_max: 4 })
        .await
        .expect("node B");
    let node_b = client::credential_of(registered.into_inner()).expect("cred");
    client::delivery(fixture.channel.clone(), node_b.clone())
        .register_node(pb::RegisterNodeRequest { region: "eu".into(), slots_max: 4, endpoint: "http://127.0.0.1:9".into() })
        .await
        .expect("B announces");
    let operator = Credential::load(&fixture.dir.path().join("keys/operator.cred")).expect("operator");
    let mut admin = client::admin(fixture.channel.clone(), operator);
    // Control first: while A serves, a reissue moves nothing: the same node and token, nothing written.
    let head = fixture.head().await;
    let reissue =
        |request_id: &str, voucher_id: &str| pb::IssueVoucherRequest { request_id: request_id.into(), voucher_id: voucher_id.into(), region: String::new() };
    let same = fixture.merchant.issue_voucher(reissue("reissue-0", &first.voucher_id)).await.expect("A still serves").into_inner();
    assert_eq!((same.node_id.as_str(), &same.access_token), (node_a.as_str(), &first.access_token));
    assert_eq!(fixture.head().await, head);
    admin.drain_node(pb::NodeAdminRequest { request_id: "drain-a".into(), node_id: node_a.clone() }).await.expect("drain A");
    // Which nodes serve is read from the projections: wait until they applied the drain.
    fixture.engine.state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;

    // The merchant's reissue moves the first voucher to B: a new node and token.
    let moved = fixture.merchant.issue_voucher(reissue("reissue-1", &first.voucher_id)).await.expect("moved").into_inner();
    assert_eq!(moved.node_id, node_b.id, "to the node that serves");
    assert_ne!(moved.access_token, first.access_token, "a new access token, for B");
    // Its retry (the same request id) is answered again, not refused as another command
    // (the fuzz found this: seed 4 at 10,000 cases).
    let retried = fixture.merchant.issue_voucher(reissue("reissue-1", &first.voucher_id)).await.expect("the retry").into_inner();
    assert_eq!((retried.node_id.as_str(), &retried.access_token), (node_b.id.as_str(), &moved.access_token));
    let view = fixture.merchant.get_voucher(pb::GetVoucherRequest { voucher_id: first.voucher_id.clone() }).await.expect("get").into_inner();
    assert_eq!((view.status.as_str(), view.node_id.as_str()), ("Issued", node_b.id.as_str()), "merchant get shows the new node");
    assert_eq!(view.node_endpoint, "http://127.0.0.1:9", "and where players reach it");
    let events = fixture.log.read_subject(&format!("vs.voucher.{}", first.voucher_id)).await.expect("read");
    let last = engine::wire::decode(&events.last().expect("events").payload).expect("decode").event;
    assert!(
        matches!(&last, engine::domain::Event::VoucherIssued { previous_node: Some(old), node_id, .. } if old.as_str() == node_a && node_id.as_str() == node_b.id),
        "the event names the old and the new node: {last:?}"
    );
    // The old node's token no longer works: A cannot redeem it (nothing written).
    let head = fixture.head().await;
    let mut at_a = player::connect_node(node.endpoint()).await.expect("connect A");
    let redeem = player_redeem(&mut at_a, &first, &alice, "r-old").await;
    let refused = at_a.redeem(redeem).await.expect_err("no longer A's");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("moved to another delivery node"), "the player is told where to turn: {refused:?}");
    assert_eq!(fixture.head().await, head, "the refused redemption wrote nothing");

    // The engine moves the second by itself (the sweeper's round, run here).
    let state = &fixture.engine.state;
    state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
    let moved = server::relocate_once(&state.live, &state.market, 3_600_000, 100).await.expect("relocate");
    assert_eq!(moved, 1, "the second voucher moved");
    state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
    let view = fixture.merchant.get_voucher(pb::GetVoucherRequest { voucher_id: second.voucher_id.clone() }).await.expect("get").into_inner();
    assert_eq!(view.node_id, node_b.id);
    let in_use = |node: &str| state.live.read(|p| p.allocation.nodes[&engine::ids::NodeId::new(node)].in_use);
    assert_eq!((in_use(&node_a), in_use(&node_b.id)), (0, 2), "the slots followed the vouchers");
    // The merchant asks for the moved voucher's token: B's, a new one, and nothing written.
    let head = fixture.head().await;
    let asked = fixture.merchant.issue_voucher(reissue("reissue-2", &second.voucher_id)).await.expect("the token").into_inner();
    assert_eq!(asked.node_id, node_b.id);
    assert_ne!(asked.access_token, second.access_token, "a token for B");
    assert_eq!(fixture.head().await, head);
    assert_eq!(server::relocate_once(&state.live, &state.market, 3_600_000, 100).await.expect("relocate"), 0, "nothing left to move");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// A lost copy: the consumer a purchase was delivered to fetches it again, with the same
/// or a renewed certificate, a bounded number of times; each copy's engine-signed record
/// names its recovery; no new usage; nobody else recovers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_buyer_recovers_a_lost_copy_a_bounded_number_of_times_and_nobody_else_does() {
    let (mut fixture, node) = start().await;
    let alice = fixture.passport("alice").await;
    let bob = fixture.passport("bob").await;
    let operator = Credential::load(&fixture.dir.path().join("keys/operator.cred")).expect("operator");
    let mut admin = client::admin(fixture.channel.clone(), operator);
    admin.set_config(pb::SetConfigRequest { request_id: "rec".into(), key: "delivery.recoveries_max".into(), value: "1".into() }).await.expect("one recovery");
    let sale = fixture.buy("sale-1").await;
    let out = fixture.dir.path().join("alice");
    let copies = player::redeem_and_download(&purchase_of(&sale), &alice, "r1", &out).await.expect("delivered");
    assert!(copies.iter().all(|copy| copy.decrypt_ok));
    assert_eq!(fixture.status_of(&sale.voucher_id).await, "Delivered");
    assert_eq!(fixture.usages().await, 1);
    // The copy is lost; before recovering, the control: a fetch that is not a recovery is refused.
    std::fs::remove_file(&copies[0].path).expect("lost");
    let again = player::redeem_and_download(&purchase_of(&sale), &alice, "r2", &out).await.expect_err("delivered already");
    assert!(format!("{again:#}").contains("delivered"), "{again:#}");
    // Bob cannot recover alice's purchase (nothing written).
    let head = fixture.head().await;
    let refused = player::recover_and_download(&purchase_of(&sale), &bob, "rec-bob", &fixture.dir.path().join("bob")).await.expect_err("not bob's");
    assert!(format!("{refused:#}").contains("FailedPrecondition"), "{refused:#}");
    assert_eq!(fixture.head().await, head);
    // Alice recovers it: a copy that decrypts, whose signed record names recovery 1.
    let recovered = player::recover_and_download(&purchase_of(&sale), &alice, "rec-1", &out).await.expect("recovered");
    assert!(recovered.iter().all(|copy| copy.decrypt_ok));
    let bytes = std::fs::read(&recovered[0].path).expect("the recovered copy");
    let copy = engine::media::parse_delivered_copy(&bytes).expect("a delivered copy");
    assert_eq!(copy.record.recovery, 1, "the record names the recovery");
    let engine_public = gateways::common::keys::load_engine_public(&fixture.dir.path().join("keys")).expect("public");
    engine::media::verify_transaction(&engine_public, &copy.record, copy.signature).expect("signed by the engine");
    assert_eq!(fixture.usages().await, 1, "a recovery is not a new usage");
    assert_eq!(fixture.status_of(&sale.voucher_id).await, "Delivered");
    // One recovery was allowed: a second is refused, nothing written.
    let head = fixture.head().await;
    let exhausted = player::recover_and_download(&purchase_of(&sale), &alice, "rec-2", &out).await.expect_err("recoveries_max 1");
    assert!(format!("{exhausted:#}").contains("recovered 1 times"), "{exhausted:#}");
    assert_eq!(fixture.head().await, head);
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// A delivery that failed past `delivery.retries_max` left a paying consumer with nothing
/// to redeem. The merchant's reissue issues the voucher anew (here on the same node, the
/// only one): a new access token, fresh retries, and the consumer holding its keys redeems.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voucher_whose_deliveries_failed_past_the_retries_is_reissued_to_its_consumer() {
    let (mut fixture, node) = start().await;
    let alice = fixture.passport("alice").await;
    let operator = Credential::load(&fixture.dir.path().join("keys/operator.cred")).expect("operator");
    let mut admin = client::admin(fixture.channel.clone(), operator);
    admin.set_config(pb::SetConfigRequest { request_id: "retries".into(), key: "delivery.retries_max".into(), value: "0".into() }).await.expect("no retries");
    let sale = fixture.buy("sale-1").await;
    let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
    let reissue = |request_id: &str| pb::IssueVoucherRequest { request_id: request_id.into(), voucher_id: sale.voucher_id.clone(), region: String::new() };
    // Control first: before any failure the node serves it, so a reissue issues nothing
    // anew: the same token, nothing written.
    let head = fixture.head().await;
    assert_eq!(fixture.merchant.issue_voucher(reissue("reissue-0")).await.expect("it serves").into_inner().access_token, sale.access_token);
    assert_eq!(fixture.head().await, head);
    let redeem = player_redeem(&mut at_node, &sale, &alice, "r1").await;
    at_node.redeem(redeem).await.expect("alice redeems");
    let subject = crypto::ProofConsumer::new("alice", &alice.certificate.cert_serial, &alice.certificate.public_key_der);
    let proof = crypto::confirm_proof(&receipt_of(&sale), &sale.voucher_id, &sale.node_id, &fixture.media_id, &[0; 32], &subject).to_vec();
    at_node
        .confirm(pb::ConfirmRequest {
            grant: Some(sale.grant()),
            media_id: fixture.media_id.clone(),
            received_hash: vec![0; 32],
            proof,
            play_id: String::new(),
        })
        .await
        .expect_err("a wrong hash: the delivery failed");
    let again = player_redeem(&mut at_node, &sale, &alice, "r2").await;
    let stuck = at_node.redeem(again).await.expect_err("past the retries");
    assert_eq!(stuck.code(), Code::FailedPrecondition, "{stuck:?}");
    // The reissue: a new access token on the node that serves, fresh retries.
    let anew = fixture.merchant.issue_voucher(reissue("reissue-1")).await.expect("issued anew").into_inner();
    assert_ne!(anew.access_token, sale.access_token, "a new access window");
    let reissued = client::Sale { access_token: anew.access_token.clone(), access_expires_at_ms: anew.access_expires_at_ms, ..sale.clone() };
    let redeem = player_redeem(&mut at_node, &reissued, &alice, "r3").await;
    let keys = at_node.redeem(redeem).await.expect("alice redeems again").into_inner().keys;
    assert!(crypto::unwrap_key(&alice.private, &keys[0].wrapped_key).is_ok());
    assert_eq!(fixture.usages().await, 1, "still one usage");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// A second node, started like the fixture's first, announcing itself to the engine.
async fn second_node(fixture: &mut Fixture, request_id: &str) -> (Credential, RunningNode) {
    let registered = fixture
        .catalog
        .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: request_id.into(), region: "eu".into(), slots_max: 4 })
        .await
        .expect("node B");
    let cred = client::credential_of(registered.into_inner()).expect("cred");
    let node = node::start(NodeArgs {
        connect: fixture.engine.url(),
        cred: cred.clone(),
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: 4,
        region: "eu".into(),
        data_dir: fixture.dir.path().join(request_id),
        cache_bytes_max: 16 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node B starts");
    (cred, node)
}

/// A node died mid-delivery: alice holds the keys, the node is gone for good. A drained
/// node finishes what it started, so then the voucher stays (the control); once the node
/// is removed the merchant's reissue moves the voucher to a node that serves, where alice
/// (and nobody else) redeems again, with no second usage, and gets her copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_under_way_on_a_removed_node_moves_and_its_consumer_gets_the_copy_elsewhere() {
    let (mut fixture, node_a) = start().await;
    let alice = fixture.passport("alice").await;
    let bob = fixture.passport("bob").await;
    let sale = fixture.buy("sale-1").await;
    let mut at_a = player::connect_node(node_a.endpoint()).await.expect("connect A");
    let redeem = player_redeem(&mut at_a, &sale, &alice, "r1").await;
    at_a.redeem(redeem).await.expect("alice redeems at A (the keys went out)");
    assert_eq!((fixture.status_of(&sale.voucher_id).await.as_str(), fixture.usages().await), ("Redeeming", 1));
    let (cred_b, node_b) = second_node(&mut fixture, "node-b").await;
    let operator = Credential::load(&fixture.dir.path().join("keys/operator.cred")).expect("operator");
    let mut admin = client::admin(fixture.channel.clone(), operator);
    let reissue = |request_id: &str| pb::IssueVoucherRequest { request_id: request_id.into(), voucher_id: sale.voucher_id.clone(), region: String::new() };
    // Control: A drained (it finishes what it started): the reissue moves nothing (A and
    // the sale's token again), nothing written.
    admin.drain_node(pb::NodeAdminRequest { request_id: "drain-a".into(), node_id: sale.node_id.clone() }).await.expect("drain A");
    fixture.engine.state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
    let head = fixture.head().await;
    let kept = fixture.merchant.issue_voucher(reissue("reissue-0")).await.expect("a drained node finishes it").into_inner();
    assert_eq!((kept.node_id.as_str(), &kept.access_token), (sale.node_id.as_str(), &sale.access_token));
    assert_eq!(fixture.head().await, head);
    // A removed: the voucher moves to B with a new token.
    node_a.shutdown().await;
    admin.remove_node(pb::NodeAdminRequest { request_id: "remove-a".into(), node_id: sale.node_id.clone() }).await.expect("remove A");
    fixture.engine.state.live.caught_up(engine::ids::Seq(fixture.head().await)).await;
    let moved = fixture.merchant.issue_voucher(reissue("reissue-1")).await.expect("moved").into_inner();
    assert_eq!(moved.node_id, cred_b.id, "to the node that serves");
    let at_b_sale = client::Sale {
        node_id: moved.node_id.clone(),
        node_endpoint: moved.node_endpoint.clone(),
        access_token: moved.access_token.clone(),
        access_expires_at_ms: moved.access_expires_at_ms,
        ..sale.clone()
    };
    // Bob cannot take it at B (nothing written); alice gets her copy there, no second usage.
    let head = fixture.head().await;
    let stolen = player::redeem_and_download(&purchase_of(&at_b_sale), &bob, "rb", &fixture.dir.path().join("bob")).await.expect_err("not bob's");
    assert!(format!("{stolen:#}").contains("FailedPrecondition"), "{stolen:#}");
    assert_eq!(fixture.head().await, head);
    let copies = player::redeem_and_download(&purchase_of(&at_b_sale), &alice, "r2", &fixture.dir.path().join("alice")).await.expect("delivered at B");
    assert!(copies.iter().all(|copy| copy.decrypt_ok));
    assert_eq!((fixture.status_of(&sale.voucher_id).await.as_str(), fixture.usages().await), ("Delivered", 1), "one usage for one sale");
    let state = &fixture.engine.state;
    let in_use = |node: &str| state.live.read(|p| p.allocation.nodes[&engine::ids::NodeId::new(node)].in_use);
    assert_eq!((in_use(&sale.node_id), in_use(&cred_b.id)), (0, 0), "no slot left held");
    node_b.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

/// A copy lost after the access window: the node refuses the old token ("ask the merchant
/// for a new access token"), and the merchant's reissue of the delivered voucher renews its
/// access (an event; no slot, no usage), with which alice recovers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_lost_after_the_access_window_is_recovered_through_a_renewed_access() {
    // A short window: the engine's own setting (an audited one is at least the heartbeat timeout).
    let (mut fixture, node) = start_with(|config| config.access_ttl_ms = 3_000).await;
    let alice = fixture.passport("alice").await;
    let sale = fixture.buy("sale-1").await;
    let out = fixture.dir.path().join("alice");
    let copies = player::redeem_and_download(&purchase_of(&sale), &alice, "r1", &out).await.expect("delivered");
    std::fs::remove_file(&copies[0].path).expect("lost");
    // The window passes (the node's clock decides; wait past the token's expiry).
    let wait_ms = sale.access_expires_at_ms + 50 - chrono_now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))).await;
    // Control: with the sale's token the recovery is refused at the node, nothing written.
    let head = fixture.head().await;
    let expired = player::recover_and_download(&purchase_of(&sale), &alice, "rec-0", &out).await.expect_err("the window is over");
    assert!(format!("{expired:#}").contains("ask the merchant for a new access token"), "{expired:#}");
    assert_eq!(fixture.head().await, head);
    // The merchant's reissue renews the access on the node that delivered it.
    let renewed = fixture
        .merchant
        .issue_voucher(pb::IssueVoucherRequest { request_id: "renew-1".into(), voucher_id: sale.voucher_id.clone(), region: String::new() })
        .await
        .expect("renewed")
        .into_inner();
    assert_eq!(renewed.node_id, sale.node_id);
    assert!(renewed.access_expires_at_ms > sale.access_expires_at_ms, "a new window");
    let events = fixture.log.read_subject(&format!("vs.voucher.{}", sale.voucher_id)).await.expect("read");
    let last = engine::wire::decode(&events.last().expect("events").payload).expect("decode").event;
    assert!(matches!(&last, engine::domain::Event::AccessRenewed { previous_node: None, .. }), "{last:?}");
    let again = client::Sale { access_token: renewed.access_token, access_expires_at_ms: renewed.access_expires_at_ms, ..sale.clone() };
    let recovered = player::recover_and_download(&purchase_of(&again), &alice, "rec-1", &out).await.expect("recovered");
    assert!(recovered.iter().all(|copy| copy.decrypt_ok));
    assert_eq!(fixture.usages().await, 1, "a recovery is not a new usage");
    assert_eq!(fixture.status_of(&sale.voucher_id).await, "Delivered");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

fn chrono_now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis()).expect("ms fit")
}

/// A lost passport (issue 28, item 4): alice's key is gone, so the operator certifies a new
/// key for the same consumer and revokes the old certificate. Her purchases stay hers: a
/// voucher stuck after a failed delivery is reissued and redeemed with the new certificate
/// (the keys re-wrapped for it, no new usage), a delivered copy is recovered with it, an
/// unredeemed sale is redeemed with it. Controls: bob, another consumer with a valid
/// certificate, gets none of them; the old certificate is refused once revoked; nothing is
/// written by a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_passport_is_replaced_by_a_new_certificate_that_keeps_the_consumers_purchases() {
    let (mut fixture, node) = start().await;
    let old = fixture.passport("alice").await;
    let bob = fixture.passport("bob").await;
    let operator = Credential::load(&fixture.dir.path().join("keys/operator.cred")).expect("operator");
    let mut admin = client::admin(fixture.channel.clone(), operator);
    admin.set_config(pb::SetConfigRequest { request_id: "retries".into(), key: "delivery.retries_max".into(), value: "0".into() }).await.expect("no retries");
    let (stuck, delivered, unredeemed) = (fixture.buy("sale-1").await, fixture.buy("sale-2").await, fixture.buy("sale-3").await);
    let out = fixture.dir.path().join("alice");
    // Sale 1: the keys went to the old passport, the delivery failed for good.
    let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
    let redeem = player_redeem(&mut at_node, &stuck, &old, "r1").await;
    at_node.redeem(redeem).await.expect("alice redeems");
    let subject = crypto::ProofConsumer::new("alice", &old.certificate.cert_serial, &old.certificate.public_key_der);
    let proof = crypto::confirm_proof(&receipt_of(&stuck), &stuck.voucher_id, &stuck.node_id, &fixture.media_id, &[0; 32], &subject).to_vec();
    let failed =
        pb::ConfirmRequest { grant: Some(stuck.grant()), media_id: fixture.media_id.clone(), received_hash: vec![0; 32], proof, play_id: String::new() };
    at_node.confirm(failed).await.expect_err("a wrong hash: the delivery failed");
    // Sale 2: delivered to the old passport.
    let copies = player::redeem_and_download(&purchase_of(&delivered), &old, "r2", &out).await.expect("delivered");
    assert!(copies.iter().all(|copy| copy.decrypt_ok));
    assert_eq!(fixture.usages().await, 2, "two key releases");

    // The passport is lost: a new key certified for alice, the old certificate revoked.
    let new =
        player::create_passport(&mut fixture.catalog, "cert-alice-again", &ConsumerId::new("alice"), &fixture.engine_public).await.expect("a new passport");
    assert_ne!(new.certificate.cert_serial, old.certificate.cert_serial);
    assert_ne!(new.private.public(), old.private.public());
    let revoke = pb::RevokeCertRequest {
        request_id: "revoke-old".into(),
        cert_serial: old.certificate.cert_serial.clone(),
        reason: "passport lost".into(),
        consumer_id: "alice".into(),
    };
    fixture.catalog.revoke_cert(revoke).await.expect("revoked");

    // Sale 1 reissued; bob and the old certificate are refused, nothing written.
    let anew = fixture
        .merchant
        .issue_voucher(pb::IssueVoucherRequest { request_id: "reissue-1".into(), voucher_id: stuck.voucher_id.clone(), region: String::new() })
        .await
        .expect("issued anew")
        .into_inner();
    let reissued = client::Sale { access_token: anew.access_token.clone(), access_expires_at_ms: anew.access_expires_at_ms, ..stuck.clone() };
    let head = fixture.head().await;
    let by_bob = player::redeem_and_download(&purchase_of(&reissued), &bob, "r1-bob", &fixture.dir.path().join("bob")).await.expect_err("not bob's");
    assert!(format!("{by_bob:#}").contains("FailedPrecondition"), "{by_bob:#}");
    let by_old = player::redeem_and_download(&purchase_of(&reissued), &old, "r1-old", &out).await.expect_err("the old certificate is revoked");
    assert!(format!("{by_old:#}").contains("PermissionDenied"), "{by_old:#}");
    assert_eq!(fixture.head().await, head, "refusals write nothing");
    let redelivered = player::redeem_and_download(&purchase_of(&reissued), &new, "r1-new", &out).await.expect("the new certificate redeems");
    assert!(redelivered.iter().all(|copy| copy.decrypt_ok && copy.voucher_delivered), "{redelivered:?}");
    let bytes = std::fs::read(&redelivered[0].path).expect("the copy");
    let copy = engine::media::parse_delivered_copy(&bytes).expect("a delivered copy");
    assert_eq!(copy.record.cert_serial.0, new.certificate.cert_serial, "the record names the new certificate");
    assert_eq!(fixture.status_of(&stuck.voucher_id).await, "Delivered");

    // Sale 2: the lost copy is recovered with the new certificate; not by bob, not with the old one.
    let head = fixture.head().await;
    assert!(player::recover_and_download(&purchase_of(&delivered), &bob, "rec-bob", &fixture.dir.path().join("bob")).await.is_err());
    assert!(player::recover_and_download(&purchase_of(&delivered), &old, "rec-old", &out).await.is_err(), "revoked");
    assert_eq!(fixture.head().await, head);
    let recovered = player::recover_and_download(&purchase_of(&delivered), &new, "rec-new", &out).await.expect("recovered");
    assert!(recovered.iter().all(|copy| copy.decrypt_ok));

    // Sale 3: bought before the loss, redeemed with the new passport.
    let fetched = player::redeem_and_download(&purchase_of(&unredeemed), &new, "r3", &out).await.expect("redeemed");
    assert!(fetched.iter().all(|copy| copy.decrypt_ok && copy.voucher_delivered));
    assert_eq!(fixture.usages().await, 3, "one usage per sale: the reissue and the recovery release nothing anew");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}
