//! The gRPC edge under stress, on both backends: a graceful shutdown under load keeps
//! every acknowledged request in the stream; a delivery node restarted in the middle of a
//! delivery still delivers the voucher exactly once.

use engine::log::EventLog;
use gateways::common::backend::BackendArgs;
use gateways::common::client::{self, Upload};
use gateways::common::cred::Credential;
use gateways::node::{NodeArgs, RunningNode};
use gateways::player::Purchase;
use gateways::server::{self, EngineConfig, RunningEngine};
use proto::v1 as pb;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct World {
    engine: RunningEngine,
    log: Arc<dyn EventLog>,
    channel: tonic::transport::Channel,
    operator: Credential,
    keys: std::path::PathBuf,
}

async fn start(backend: &BackendArgs) -> World {
    let keys = backend.data_dir.join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log = backend.open().await.expect("open log");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let engine = server::start(EngineConfig::new(backend.data_dir.join("engine"), keys.clone()), Arc::clone(&log), listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator");
    World { engine, log, channel, operator, keys }
}

async fn publish(world: &World) -> client::Published {
    let mut catalog = client::catalog(world.channel.clone(), world.operator.clone());
    let engine_public = gateways::common::keys::load_engine_public(&world.keys).expect("public key");
    let upload = Upload {
        title: "Song".into(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 100_000,
        price_minor: 150,
        currency: "EUR".into(),
        terms: client::standard_terms("label"),
        content: (0..300_000u32).map(|i| (i % 253) as u8).collect(),
        preview_clip: b"clip".to_vec(),
        image_descriptor: String::new(),
    };
    client::publish(&mut catalog, "publish-1", &engine_public, upload).await.expect("publish")
}

async fn register(world: &World, kind: &str, index: usize) -> Credential {
    let mut catalog = client::catalog(world.channel.clone(), world.operator.clone());
    let response = match kind {
        "merchant" => catalog.register_merchant(pb::RegisterMerchantRequest { request_id: format!("m-{index}"), name: format!("Shop {index}") }).await,
        _ => catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: format!("n-{index}"), region: "eu".into(), slots_max: 16 }).await,
    };
    client::credential_of(response.expect("registered").into_inner()).expect("credential")
}

async fn graceful_shutdown_keeps_every_acknowledged_request(backend: BackendArgs) {
    let world = start(&backend).await;
    let media = publish(&world).await;
    let merchant = register(&world, "merchant", 0).await;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..64 {
        let (channel, merchant, acknowledged, media_id) = (world.channel.clone(), merchant.clone(), Arc::clone(&acknowledged), media.media_id.clone());
        load.spawn(async move {
            let mut client = client::merchant(channel, merchant);
            for i in 0.. {
                let request = pb::ReserveRequest {
                    request_id: format!("w{worker}-{i}"),
                    media_ids: vec![media_id.clone()],
                    rendition: "high".into(),
                    ttl_ms: 600_000,
                    points_account: String::new(),
                    payment_ref: String::new(),
                    spend_authorization: None,
                    rental_ms: 0,
                };
                match client.reserve(request).await {
                    Ok(reserved) => acknowledged.lock().expect("lock").push(reserved.into_inner().voucher_id),
                    // The engine is stopping: this request was refused, not acknowledged.
                    Err(_) => return,
                }
            }
        });
    }
    // Shut down under load: once the workers have had 64 reservations acknowledged (a
    // count, not a time: however slow the machine, the load is running).
    let started = std::time::Instant::now();
    while acknowledged.lock().expect("lock").len() < 64 {
        assert!(started.elapsed() < Duration::from_secs(120), "the load never got 64 reservations acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_shutdown = acknowledged.lock().expect("lock").len();
    world.engine.shutdown().await.expect("graceful shutdown");
    while let Some(joined) = load.join_next().await {
        joined.expect("load task");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let mut missing = Vec::new();
    for voucher in &acknowledged {
        let events = world.log.read_subject(&format!("vs.voucher.{voucher}")).await.expect("read");
        if events.is_empty() {
            missing.push(voucher.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged reservations are not in the stream: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "graceful shutdown under load: {} acknowledged reservations, all in the stream ({} before the shutdown began)",
        acknowledged.len(),
        before_shutdown
    );
}

async fn start_node(world: &World, cred: &Credential, data_dir: &Path) -> RunningNode {
    gateways::node::start(NodeArgs {
        connect: world.engine.url(),
        cred: cred.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        slots_max: 16,
        region: "eu".into(),
        data_dir: data_dir.to_path_buf(),
        cache_bytes_max: 16 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node starts")
}

async fn node_restart_during_delivery_delivers_exactly_once(backend: BackendArgs) {
    let world = start(&backend).await;
    let media = publish(&world).await;
    let merchant_cred = register(&world, "merchant", 0).await;
    let node_cred = register(&world, "node", 0).await;
    let node_dir = backend.data_dir.join("node");
    let node = start_node(&world, &node_cred, &node_dir).await;
    let mut catalog = client::catalog(world.channel.clone(), world.operator.clone());
    let engine_public = gateways::common::keys::load_engine_public(&world.keys).expect("public key");
    let consumer = engine::ids::ConsumerId("alice".into());
    let passport = gateways::player::create_passport(&mut catalog, "cert-alice", &consumer, &engine_public).await.expect("passport");
    let mut merchant = client::merchant(world.channel.clone(), merchant_cred);
    let sale = client::buy(&mut merchant, "sale-1", std::slice::from_ref(&media.media_id), None).await.expect("buy");
    assert_eq!(sale.node_id, node.node_id());

    // The player redeems at the node, which dies before the download and the confirmation.
    let mut node_client = gateways::player::connect_node(&sale.node_endpoint).await.expect("node");
    let challenge = node_client.challenge(pb::ChallengeRequest { grant: Some(sale.grant()) }).await.expect("challenge").into_inner().challenge;
    let receipt = engine::crypto::SecretKey::from_bytes(sale.receipt.as_slice().try_into().expect("receipt"));
    let subject = engine::crypto::ProofConsumer::new(&consumer.0, &passport.certificate.cert_serial, &passport.certificate.public_key_der);
    let proof = engine::crypto::receipt_proof(&receipt, &sale.voucher_id, &sale.node_id, &challenge, &subject);
    node_client
        .redeem(pb::PlayerRedeemRequest {
            grant: Some(sale.grant()),
            request_id: "redeem-1".into(),
            consumer_id: consumer.0.clone(),
            cert_serial: passport.certificate.cert_serial.clone(),
            challenge,
            proof: proof.to_vec(),
            recover: false,
        })
        .await
        .expect("redeem accepted");
    drop(node_client);
    node.shutdown().await;

    // The node restarts (same credential, same data directory) on a new port.
    let node = start_node(&world, &node_cred, &node_dir).await;
    let mut merchant_again = merchant.clone();
    // The merchant re-issues to learn the node's new endpoint (the same request id: the
    // first answer, with the endpoint the engine now knows).
    let reissued = merchant_again
        .issue_voucher(pb::IssueVoucherRequest { request_id: "sale-1-issue".into(), voucher_id: sale.voucher_id.clone(), region: String::new() })
        .await
        .expect("issue retried")
        .into_inner();
    assert_eq!(reissued.node_id, node.node_id());
    assert_eq!(reissued.node_endpoint, node.endpoint());
    let purchase = Purchase {
        node_endpoint: reissued.node_endpoint.clone(),
        node_id: reissued.node_id.clone(),
        grant: sale.grant(),
        receipt: sale.receipt.clone(),
        rental_until_ms: 0,
    };
    let out = backend.data_dir.join("copies");
    let copies = gateways::player::redeem_and_download(&purchase, &passport, "redeem-2", &out).await.expect("delivered after the restart");
    assert_eq!(copies.len(), 1);
    assert!(copies[0].decrypt_ok);
    // Once delivered, never again.
    let again = gateways::player::redeem_and_download(&purchase, &passport, "redeem-3", &out).await.expect_err("delivered at most once");
    let code = again.downcast_ref::<gateways::player::RpcError>().map(|e| e.code);
    assert_eq!(code, Some(tonic::Code::FailedPrecondition), "{again:#}");
    let events = world.log.read_subject(&format!("vs.voucher.{}", sale.voucher_id)).await.expect("read");
    let delivered =
        events.iter().filter(|stored| matches!(engine::wire::decode(&stored.payload).expect("decodes").event, engine::domain::Event::Delivered { .. })).count();
    assert_eq!(delivered, 1, "exactly one Delivered event");
    node.shutdown().await;
    world.engine.shutdown().await.expect("graceful shutdown");
}

fn embedded(dir: &Path) -> BackendArgs {
    BackendArgs { data_dir: dir.to_path_buf(), nats_url: None, stream: "VOUCHSAFE".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_on_the_embedded_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    graceful_shutdown_keeps_every_acknowledged_request(embedded(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_on_jetstream() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    graceful_shutdown_keeps_every_acknowledged_request(BackendArgs {
        data_dir: dir.path().to_path_buf(),
        nats_url: Some(server.url()),
        stream: "VOUCHSAFE".into(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restart_during_delivery_on_the_embedded_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    node_restart_during_delivery_delivers_exactly_once(embedded(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restart_during_delivery_on_jetstream() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    node_restart_during_delivery_delivers_exactly_once(BackendArgs {
        data_dir: dir.path().to_path_buf(),
        nats_url: Some(server.url()),
        stream: "VOUCHSAFE".into(),
    })
    .await;
}
