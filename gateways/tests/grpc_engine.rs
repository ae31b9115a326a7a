//! The engine over real loopback sockets: the operator registers parties and publishes,
//! a merchant sells, a delivery node follows its assignments, redeems for a certified
//! consumer, fetches the container and completes the delivery; the consumer decrypts.
//! Also: health and reflection answer without a credential, credentials are checked
//! before anything else, and graceful shutdown keeps every acknowledged sale.

use engine::crypto::{self, RsaPrivate};
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use futures::StreamExt;
use gateways::common::client::{self, Upload};
use gateways::common::cred::Credential;
use gateways::server::{self, EngineConfig, RunningEngine};
use proto::v1 as pb;
use std::sync::Arc;
use tonic::Code;

struct Fixture {
    _dir: tempfile::TempDir,
    engine: RunningEngine,
    log: Arc<dyn EventLog>,
    operator: Credential,
    channel: tonic::transport::Channel,
    engine_public: crypto::RsaPublic,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let engine = server::start(EngineConfig::new(dir.path().to_path_buf(), keys.clone()), Arc::clone(&log), listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let engine_public = gateways::common::keys::load_engine_public(&keys).expect("public key");
    Fixture { _dir: dir, engine, log, operator, channel, engine_public }
}

fn upload(title: &str, content: Vec<u8>) -> Upload {
    Upload {
        title: title.into(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 180_000,
        price_minor: 199,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        content,
        preview_clip: b"free preview clip".to_vec(),
        image_descriptor: "cover.jpg".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_buy_deliver_decrypt_over_grpc() {
    let fixture = start().await;
    let mut catalog = client::catalog(fixture.channel.clone(), fixture.operator.clone());
    let merchant_cred = client::credential_of(
        catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect("merchant").into_inner(),
    )
    .expect("cred");
    let node_cred = client::credential_of(
        catalog
            .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "n-1".into(), region: "eu".into(), slots_max: 4 })
            .await
            .expect("node")
            .into_inner(),
    )
    .expect("cred");
    let content = (0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>();
    let published = client::publish(&mut catalog, "pub-1", &fixture.engine_public, upload("Song", content.clone())).await.expect("publish");

    // A node with a credential that has not announced itself gets nothing.
    let mut merchant = client::merchant(fixture.channel.clone(), merchant_cred.clone());
    let early = client::buy(&mut merchant, "early", std::slice::from_ref(&published.media_id), None).await.expect_err("no healthy node");
    assert_eq!(early.code(), Code::ResourceExhausted, "{early:?}");

    // The node announces itself and subscribes to its assignments.
    let mut delivery = client::delivery(fixture.channel.clone(), node_cred.clone());
    let registered = delivery
        .register_node(pb::RegisterNodeRequest { region: "eu".into(), slots_max: 4, endpoint: "http://127.0.0.1:1".into() })
        .await
        .expect("register node")
        .into_inner();
    assert_eq!(registered.node_id, node_cred.id);
    let mut assignments = delivery.subscribe_assignments(pb::SubscribeAssignmentsRequest { after_seq: 0 }).await.expect("subscribe").into_inner();

    // The merchant sells.
    let sale = client::buy(&mut merchant, "sale-1", std::slice::from_ref(&published.media_id), None).await.expect("buy");
    assert_eq!(sale.node_id, node_cred.id);
    assert_eq!(sale.node_endpoint, "http://127.0.0.1:1");
    let assignment = tokio::time::timeout(std::time::Duration::from_secs(10), assignments.next())
        .await
        .expect("assignment arrives")
        .expect("stream open")
        .expect("assignment");
    assert_eq!(assignment.voucher_id, sale.voucher_id);
    assert_eq!(assignment.media_ids, vec![published.media_id.clone()]);

    // The node checks the grant locally with its access key.
    let access_key = engine::crypto::SecretKey::from_bytes(registered.access_key.as_slice().try_into().expect("32-byte access key"));
    let media_refs: Vec<&str> = sale.media_ids.iter().map(String::as_str).collect();
    let now = chrono_now_ms();
    crypto::check_access_token(&access_key, &sale.node_id, &sale.voucher_id, &media_refs, sale.access_expires_at_ms, now, &sale.access_token)
        .expect("the node accepts the grant");

    // A certified consumer proves the receipt; the engine re-wraps the key for it.
    let consumer_key = tokio::task::spawn_blocking(|| RsaPrivate::generate(2048)).await.expect("task").expect("rsa");
    let cert = catalog
        .certify_consumer(pb::CertifyConsumerRequest {
            request_id: "cert-1".into(),
            consumer_id: "alice".into(),
            public_key_der: consumer_key.public().to_der().expect("der"),
            validity_ms: 86_400_000,
        })
        .await
        .expect("certify")
        .into_inner();
    let challenge = crypto::random_bytes::<32>();
    let receipt = engine::crypto::SecretKey::from_bytes(sale.receipt.as_slice().try_into().expect("32-byte receipt"));
    let consumer_der = consumer_key.public().to_der().expect("der");
    let proof =
        crypto::receipt_proof(&receipt, &sale.voucher_id, &sale.node_id, &challenge, &crypto::ProofConsumer::new("alice", &cert.cert_serial, &consumer_der));
    let redeem = pb::RedeemRequest {
        request_id: "redeem-1".into(),
        voucher_id: sale.voucher_id.clone(),
        cert_serial: cert.cert_serial.clone(),
        consumer_id: "alice".into(),
        challenge: challenge.to_vec(),
        proof: proof.to_vec(),
        recover: false,
    };
    let redeemed = delivery.redeem(redeem.clone()).await.expect("redeem").into_inner();
    assert_eq!(redeemed.keys.len(), 1);

    // The node fetches the container; the consumer decrypts it.
    let mut chunks = delivery
        .fetch_media(pb::FetchMediaRequest { media_id: published.media_id.clone(), part: pb::MediaPart::Container as i32 })
        .await
        .expect("fetch")
        .into_inner();
    let mut container = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.expect("chunk");
        assert_eq!(chunk.offset as usize, container.len());
        container.extend_from_slice(&chunk.data);
    }
    assert_eq!(container.len(), published.container_bytes);
    let media_key = crypto::unwrap_key(&consumer_key, &redeemed.keys[0].wrapped_key).expect("unwrap");
    let plaintext = engine::media::open(&media_key, &container).expect("decrypts and verifies");
    assert_eq!(plaintext, content);
    let subject = crypto::ProofConsumer::new("alice", &cert.cert_serial, &consumer_der);
    let confirm_proof = crypto::confirm_proof(&receipt, &sale.voucher_id, &sale.node_id, &published.media_id, &crypto::hash(&container), &subject);
    delivery
        .complete_delivery(pb::CompleteDeliveryRequest {
            request_id: "deliver-1".into(),
            voucher_id: sale.voucher_id.clone(),
            media_id: published.media_id.clone(),
            content_hash: crypto::hash(&container).to_vec(),
            size_bytes: container.len() as u64,
            confirm_proof: confirm_proof.to_vec(),
        })
        .await
        .expect("complete delivery");
    let view = merchant.get_voucher(pb::GetVoucherRequest { voucher_id: sale.voucher_id.clone() }).await.expect("get").into_inner();
    assert_eq!(view.status, "Delivered");

    // Delivered at most once: a second redemption is refused and writes nothing.
    let before = fixture.log.last_seq().await.expect("head");
    let again = delivery.redeem(pb::RedeemRequest { request_id: "redeem-2".into(), ..redeem }).await.expect_err("refused");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(fixture.log.last_seq().await.expect("head"), before);

    // The auditor's view over gRPC: the chain verifies and the delivery is in the totals.
    let mut audit = client::audit(fixture.channel.clone(), fixture.operator.clone());
    let verified = audit.verify_chain(pb::VerifyChainRequest {}).await.expect("verify").into_inner();
    assert!(verified.chain_ok, "{verified:?}");
    assert_eq!(verified.entries, 1);
    let mut progress = audit.replay(pb::ReplayRequest { pinned_seal_hash: vec![] }).await.expect("replay").into_inner();
    let mut last = None;
    while let Some(message) = progress.next().await {
        last = Some(message.expect("progress"));
    }
    let last = last.expect("a final message");
    assert!(last.done && last.chain_ok && last.first_bad.is_empty(), "{last:?}");
    assert_eq!(last.state_digest.len(), 32);
    fixture.engine.state.live.caught_up(fixture.log.last_seq().await.expect("head")).await;
    let totals = audit.totals(pb::TotalsRequest {}).await.expect("totals").into_inner();
    assert!(totals.lines.iter().any(|line| line.dimension == "Media" && line.key == published.media_id && line.deliveries == 1), "{totals:?}");
    fixture.engine.shutdown().await.expect("graceful shutdown");
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_a_credential() {
    let fixture = start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(fixture.channel.clone());
    let serving = health.check(tonic_health::pb::HealthCheckRequest { service: "vouchsafe.v1.MerchantService".into() }).await.expect("health").into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let overall = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health").into_inner();
    assert_eq!(overall.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(fixture.channel.clone());
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut responses = reflection.server_reflection_info(futures::stream::iter(vec![request])).await.expect("reflection").into_inner();
    let response = responses.next().await.expect("one answer").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("not a service list: {response:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in
        ["vouchsafe.v1.MerchantService", "vouchsafe.v1.DeliveryService", "vouchsafe.v1.CatalogService", "vouchsafe.v1.AuditService", "grpc.health.v1.Health"]
    {
        assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
    }
    fixture.engine.shutdown().await.expect("graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_before_the_body_is_decoded() {
    let fixture = start().await;
    let head = fixture.log.last_seq().await.expect("head");
    // No credential at all.
    let mut anonymous = pb::catalog_service_client::CatalogServiceClient::new(fixture.channel.clone());
    let status = anonymous.register_merchant(pb::RegisterMerchantRequest { request_id: "m".into(), name: "x".into() }).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    // A wrong secret for the operator's id gets the same answer as an unknown id.
    let wrong = Credential::new("operator", engine::crypto::SecretKey::random());
    let status = client::catalog(fixture.channel.clone(), wrong)
        .register_merchant(pb::RegisterMerchantRequest { request_id: "m".into(), name: "x".into() })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    let unknown = Credential::new("m0000", engine::crypto::SecretKey::random());
    let other = client::merchant(fixture.channel.clone(), unknown).get_voucher(pb::GetVoucherRequest { voucher_id: "v1".into() }).await.expect_err("refused");
    assert_eq!((other.code(), other.message()), (status.code(), status.message()), "no oracle for which ids exist");
    // The operator may not act as a merchant.
    let status = client::merchant(fixture.channel.clone(), fixture.operator.clone())
        .get_voucher(pb::GetVoucherRequest { voucher_id: "v1".into() })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    // Oversized: ResourceExhausted, not tonic's OutOfRange.
    let mut catalog = client::catalog(fixture.channel.clone(), fixture.operator.clone());
    let merchant_cred = client::credential_of(
        catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect("merchant").into_inner(),
    )
    .expect("cred");
    let head_after_register = fixture.log.last_seq().await.expect("head");
    assert_eq!(head_after_register.0, head.0 + 1);
    let status = client::merchant(fixture.channel.clone(), merchant_cred)
        .reserve(pb::ReserveRequest { request_id: "r".into(), media_ids: vec!["x".repeat(200_000)], ..Default::default() })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(fixture.log.last_seq().await.expect("head"), head_after_register, "nothing written for refusals");
    fixture.engine.shutdown().await.expect("graceful shutdown");
}

/// Draining is visible: from the moment shutdown begins, health answers NOT_SERVING (for
/// the server and each service) while requests are still served, for the drain grace,
/// so a load balancer stops sending before the server goes away. Control: SERVING before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_not_serving_from_the_moment_shutdown_begins() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let config = EngineConfig { drain_grace: std::time::Duration::from_secs(3), ..EngineConfig::new(dir.path().to_path_buf(), keys.clone()) };
    let engine = server::start(config, log, listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = |service: &str| tonic_health::pb::HealthCheckRequest { service: service.into() };
    let merchant_service = "vouchsafe.v1.MerchantService";
    for service in ["", merchant_service] {
        let status = health.check(check(service)).await.expect("health").into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "the control: {service:?} serves before shutdown");
    }
    let stopping = tokio::spawn(engine.shutdown());
    // Polls until the answer changes (the shutdown task runs concurrently); bounded by the
    // grace, within which the server still answers.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut seen = Vec::new();
    loop {
        let status = health.check(check("")).await.expect("still answering during the grace").into_inner().status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        seen.push(status);
        assert!(tokio::time::Instant::now() < deadline, "health never turned NOT_SERVING: {seen:?}");
        tokio::task::yield_now().await;
    }
    let service_status = health.check(check(merchant_service)).await.expect("health").into_inner().status;
    assert_eq!(service_status, ServingStatus::NotServing as i32, "each service drains too");
    // Requests are still answered during the grace: the catalog refuses an anonymous call
    // by its credential, not by a closed connection.
    let refused = client::catalog(channel, Credential { id: "operator".into(), secret: engine::crypto::SecretKey::random() })
        .register_merchant(pb::RegisterMerchantRequest { request_id: "m".into(), name: "Shop".into() })
        .await
        .expect_err("a wrong secret");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    stopping.await.expect("shutdown task").expect("graceful shutdown");
}

/// A node has one assignment feed, and the engine a bounded number: each feed reads the
/// whole stream, so one node credential opening feeds without end exhausted the server (or
/// JetStream's consumers). A second feed of a node ends the first (Aborted); past
/// `assignment_feeds_max` a new node's feed is refused (ResourceExhausted) and counted in
/// /metrics. Controls: the first feed is open until replaced; a node replacing its own feed
/// needs no extra slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_assignment_feed_per_node_and_a_bounded_number_in_all() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let mut config = EngineConfig::new(dir.path().to_path_buf(), keys.clone());
    config.limits.assignment_feeds_max = 1;
    let engine = server::start(config, log, listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let catalog = client::catalog(channel.clone(), operator);
    let node = |request_id: &'static str| {
        let mut catalog = catalog.clone();
        async move {
            let registered = catalog
                .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: request_id.into(), region: "eu".into(), slots_max: 4 })
                .await
                .expect("node credential");
            client::credential_of(registered.into_inner()).expect("cred")
        }
    };
    let (x, y) = (node("node-x").await, node("node-y").await);
    let mut x_delivery = client::delivery(channel.clone(), x);
    let mut first = x_delivery.subscribe_assignments(pb::SubscribeAssignmentsRequest { after_seq: 0 }).await.expect("X's first feed").into_inner();
    let open = tokio::time::timeout(std::time::Duration::from_millis(200), first.message()).await;
    assert!(open.is_err(), "the control: X's first feed is open and quiet: {open:?}");

    let mut second =
        x_delivery.subscribe_assignments(pb::SubscribeAssignmentsRequest { after_seq: 0 }).await.expect("X's second feed replaces the first").into_inner();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), first.message()).await.expect("the first feed ends");
    let status = ended.expect_err("ended with a status");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("one feed per node"), "{status:?}");

    let mut y_delivery = client::delivery(channel.clone(), y);
    let refused = y_delivery.subscribe_assignments(pb::SubscribeAssignmentsRequest { after_seq: 0 }).await.expect_err("the engine's one feed is X's");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(engine.state.metrics.encode().contains("limit_hits_total{limit=\"assignment_feeds_max\"} 1"), "counted in /metrics");
    let still = tokio::time::timeout(std::time::Duration::from_millis(200), second.message()).await;
    assert!(still.is_err(), "X's second feed is still open: {still:?}");
    drop((first, second));
    engine.shutdown().await.expect("shutdown");
}
