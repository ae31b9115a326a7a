//! Nothing internal leaks (issue 21 item 5), end to end: a real internal failure of the
//! engine (its media store's directory replaced by a file, so a PublishMedia cannot store
//! the container) and of the delivery node (the engine gone while a player redeems, so the
//! node's call fails in its own transport) reaches the gRPC caller as advice and a short
//! error id only; the detail (the store's path, the OS error and the engine's address) is
//! in the log at error level, under the same id.
//!
//! Controls: the log line carries the detail the answer lacks (so the check on the answer
//! can fail), and a client calling the stopped engine itself sees that detail in its status.

use engine::crypto;
use gateways::common::client::{self, Upload};
use gateways::common::cred::Credential;
use gateways::node::{self, NodeArgs};
use gateways::server::{self, EngineConfig};
use proto::v1 as pb;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tonic::Code;

/// Every log line of this test binary, as text (one global subscriber: the engine's and
/// the node's tasks run on the runtime's threads).
fn log_lines() -> &'static Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&lines);
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::WARN).with_writer(move || Capture(Arc::clone(&writer))).finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this binary");
        lines
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("the capture lock is never poisoned").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The error id of an answer: `… (error id 0123456789ab; …)`.
fn error_id(message: &str) -> String {
    let id = message.split("error id ").nth(1).and_then(|rest| rest.split(';').next()).unwrap_or_default();
    assert!(id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()), "no error id in {message:?}");
    id.to_string()
}

/// The log line naming `error_id`, once it is written.
fn logged(error_id: &str) -> String {
    let text = String::from_utf8_lossy(&log_lines().lock().expect("the capture lock is never poisoned")).into_owned();
    let line = text.lines().find(|line| line.contains(error_id)).unwrap_or_else(|| panic!("no log line names error id {error_id}:\n{text}"));
    assert!(line.contains("ERROR"), "logged at error level: {line}");
    line.to_string()
}

fn upload(title: &str) -> Upload {
    Upload {
        title: title.into(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 180_000,
        price_minor: 199,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        content: (0..20_000u32).map(|i| (i % 251) as u8).collect(),
        preview_clip: b"free preview clip".to_vec(),
        image_descriptor: "cover.jpg".into(),
    }
}

struct Engine {
    dir: tempfile::TempDir,
    engine: server::RunningEngine,
    catalog: client::CatalogClient,
    engine_public: crypto::RsaPublic,
}

async fn start_engine() -> Engine {
    log_lines();
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn engine::log::EventLog> = Arc::new(engine::log::embedded::EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let engine = server::start(EngineConfig::new(dir.path().to_path_buf(), keys.clone()), log, listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let engine_public = gateways::common::keys::load_engine_public(&keys).expect("public key");
    Engine { catalog: client::catalog(channel, operator), engine_public, engine, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_internal_failure_reaches_the_caller_as_an_error_id_and_the_log_has_the_detail() {
    let mut fx = start_engine().await;
    // The media store's directory becomes a file: storing a container fails in the OS.
    let media_dir = fx.dir.path().join("media");
    std::fs::remove_dir_all(&media_dir).expect("remove the media store");
    std::fs::write(&media_dir, b"not a directory").expect("a file in its place");
    let refused = client::publish(&mut fx.catalog, "pub-1", &fx.engine_public, upload("Song")).await.expect_err("the store cannot write");
    let status = refused.downcast_ref::<tonic::Status>().cloned().unwrap_or_else(|| panic!("a gRPC status: {refused:#}"));
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let detail = media_dir.display().to_string();
    assert!(!status.message().contains(&detail) && !status.message().contains("os error"), "the detail leaked: {}", status.message());
    let id = error_id(status.message());
    // The control: the log has what the answer does not, under the same id.
    let line = logged(&id);
    assert!(line.contains(&detail) && line.contains("os error"), "the log line has the detail: {line}");
    fx.engine.shutdown().await.expect("graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_failure_to_reach_the_engine_reaches_the_player_as_an_error_id_and_the_log_has_the_detail() {
    let mut fx = start_engine().await;
    let engine_url = fx.engine.url();
    let engine_port = fx.engine.addr.port().to_string();
    let channel = client::connect(&engine_url, None).await.expect("connect");
    let mut catalog = fx.catalog.clone();
    let merchant = client::credential_of(
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
    let node = node::start(NodeArgs {
        connect: engine_url.clone(),
        cred: node_cred,
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: 4,
        region: "eu".into(),
        data_dir: fx.dir.path().join("node"),
        cache_bytes_max: 16 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node starts");
    let media = client::publish(&mut fx.catalog, "pub-1", &fx.engine_public, upload("Song")).await.expect("publish").media_id;
    let mut merchant = client::merchant(channel, merchant);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let sale = loop {
        // The allocator serves the node once the projections have applied its announcement.
        match client::buy(&mut merchant, "sale", std::slice::from_ref(&media), None).await {
            Ok(sale) => break sale,
            Err(status) if status.code() == Code::ResourceExhausted && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(status) => panic!("the sale: {status:?}"),
        }
    };
    while node.assignment(&sale.voucher_id).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the node never heard of the sale");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut player = pb::node_service_client::NodeServiceClient::new(client::connect(node.endpoint(), None).await.expect("connect to the node"));
    let challenge = player.challenge(pb::ChallengeRequest { grant: Some(sale.grant()) }).await.expect("a challenge").into_inner().challenge;

    // The engine goes away; the node's call to it fails in the node's own transport.
    fx.engine.shutdown().await.expect("graceful shutdown");
    let redeem = pb::PlayerRedeemRequest {
        grant: Some(sale.grant()),
        request_id: "redeem-1".into(),
        consumer_id: "alice".into(),
        cert_serial: "serial-1".into(),
        challenge,
        proof: vec![0; 32],
        recover: false,
    };
    let status = player.redeem(redeem).await.expect_err("the engine is gone");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "says what to do: {}", status.message());
    for detail in [engine_port.as_str(), "os error", "connect", "refused"] {
        assert!(!status.message().to_lowercase().contains(detail), "{detail:?} leaked: {}", status.message());
    }
    let line = logged(&error_id(status.message()));
    assert!(line.contains("connect"), "the log line has the node's failure: {line}");

    // The control: the engine's absence, as a client calling it directly sees it, names
    // the connection failure that the player's answer leaves out.
    let nobody = Credential::new("operator", crypto::SecretKey::random());
    let direct = client::catalog(tonic::transport::Endpoint::from_shared(engine_url).expect("url").connect_lazy(), nobody)
        .register_merchant(pb::RegisterMerchantRequest { request_id: "m-2".into(), name: "Other".into() })
        .await
        .expect_err("the engine is gone");
    assert!(direct.message().to_lowercase().contains("connect"), "the detail exists: {direct:?}");
    node.shutdown().await;
}
