//! Draining is visible on the delivery node too (issue 21 item 8): from the moment its
//! shutdown begins, the node's `grpc.health.v1` answers NOT_SERVING (the whole server and
//! `NodeService`), while a preview stream in flight, which the player has not read yet,
//! keeps flowing to its end. Control: SERVING before the shutdown; the stream was still
//! open (most of the clip unread) when NOT_SERVING was seen.

use gateways::common::client::{self, Upload};
use gateways::common::cred::Credential;
use gateways::node::{self, NodeArgs};
use gateways::server::{self, EngineConfig};
use proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Larger than every buffer between the node and an idle player (the node's channel, the
/// HTTP/2 windows), so the stream stays in flight until the player reads.
const CLIP_BYTES: usize = 8 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_health_answers_not_serving_from_the_moment_shutdown_begins_while_streams_drain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn engine::log::EventLog> = Arc::new(engine::log::embedded::EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let engine = server::start(EngineConfig::new(dir.path().to_path_buf(), keys.clone()), log, listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let engine_public = gateways::common::keys::load_engine_public(&keys).expect("public key");
    let mut catalog = client::catalog(channel.clone(), operator);
    let merchant = client::credential_of(
        catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect("merchant").into_inner(),
    )
    .expect("cred");
    let node_cred = client::credential_of(
        catalog
            .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "n-1".into(), region: "eu".into(), slots_max: 8 })
            .await
            .expect("node")
            .into_inner(),
    )
    .expect("cred");
    let node = node::start(NodeArgs {
        connect: engine.url(),
        cred: node_cred,
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: 8,
        region: "eu".into(),
        data_dir: dir.path().join("node"),
        cache_bytes_max: 32 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node starts");
    let upload = Upload {
        title: "Song".into(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 180_000,
        price_minor: 199,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        content: vec![7; 20_000],
        preview_clip: (0..CLIP_BYTES as u32).map(|i| (i % 251) as u8).collect(),
        image_descriptor: String::new(),
    };
    let media = client::publish(&mut catalog, "pub-1", &engine_public, upload).await.expect("publish").media_id;
    let mut merchant = client::merchant(channel, merchant);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let preview = loop {
        // The allocator serves the node once the projections have applied its announcement.
        let request = pb::PreviewRequest { request_id: "preview-1".into(), media_id: media.clone(), region: String::new() };
        match merchant.preview(request).await {
            Ok(preview) => break preview.into_inner(),
            Err(status) if status.code() == Code::ResourceExhausted && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(status) => panic!("the preview: {status:?}"),
        }
    };

    let player_channel = client::connect(node.endpoint(), None).await.expect("connect to the node");
    let mut health = tonic_health::pb::health_client::HealthClient::new(player_channel.clone());
    let check = |service: &str| tonic_health::pb::HealthCheckRequest { service: service.into() };
    let node_service = "vouchsafe.v1.NodeService";
    for service in ["", node_service] {
        let status = health.check(check(service)).await.expect("health").into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "the control: {service:?} serves before the shutdown");
    }
    let mut player = pb::node_service_client::NodeServiceClient::new(player_channel);
    let mut stream = player.play_preview(pb::PlayPreviewRequest { preview_id: preview.preview_id.clone() }).await.expect("the preview plays").into_inner();
    let first = stream.message().await.expect("a chunk").expect("the first chunk");
    assert_eq!(first.total_bytes, CLIP_BYTES as u64);
    let mut received = first.data.len();

    let stopping = tokio::spawn(node.shutdown());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = health.check(check("")).await.expect("the node answers while it drains").into_inner().status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "health never turned NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let service_status = health.check(check(node_service)).await.expect("health").into_inner().status;
    assert_eq!(service_status, ServingStatus::NotServing as i32, "NodeService drains too");
    assert!(!stopping.is_finished(), "the node waits for the stream in flight");
    assert!(received < CLIP_BYTES / 2, "the stream was in flight, most of the clip unread, when NOT_SERVING was seen");

    // The stream in flight drains: the player reads the whole clip.
    while let Some(chunk) = stream.message().await.expect("the stream continues while the node drains") {
        assert_eq!(chunk.offset as usize, received, "contiguous chunks");
        received += chunk.data.len();
    }
    assert_eq!(received, CLIP_BYTES, "the whole clip arrived");
    tokio::time::timeout(Duration::from_secs(30), stopping).await.expect("the node stops once drained").expect("shutdown task");
    engine.shutdown().await.expect("graceful shutdown");
}
