//! The main job on both backends: `demo` delivers and every delivered media decrypts; the
//! royalty log has one entry per delivery and preview and at least one seal; and the state
//! digest the demo reports is the one a rebuild from sequence 1 reproduces.

use gateways::common::backend::BackendArgs;
use gateways::demo::{self, DemoArgs, Summary};

/// The digest of a rebuild over the events up to `last_seq` (a running engine may append
/// seals after the demo audited its stream).
async fn rebuild_digest_until(backend: &BackendArgs, keys_dir: &std::path::Path, last_seq: u64) -> [u8; 32] {
    let log = backend.open().await.expect("open log");
    let master = gateways::common::keys::load_royalty_master(keys_dir).expect("master key");
    let public = gateways::common::keys::load_engine_private(keys_dir).expect("engine key").public();
    let mut projections = projections::Projections::with_royalty_keys(&master, Some(public));
    let mut from = engine::ids::Seq(1);
    loop {
        let batch = log.read_from(from, 1000).await.expect("read");
        let Some(last) = batch.last() else { break };
        from = engine::ids::Seq(last.seq.0 + 1);
        for event in batch.iter().take_while(|event| event.seq.0 <= last_seq) {
            projections.apply(event).expect("applies");
        }
        if last.seq.0 >= last_seq {
            break;
        }
    }
    projections.digest()
}

fn check(summary: &Summary) {
    assert!(summary.delivered > 0);
    assert_eq!(summary.decrypt_ok, summary.delivered);
    assert_eq!(summary.royalty_entries, summary.delivered + summary.previews + summary.refunded, "a usage per delivery and preview, an adjustment per refund");
    assert!(summary.refunded > 0, "some delivered sales were refunded");
    assert!(summary.seals >= 1);
    assert!(summary.audit_ok, "the demo's own audit passed");
    assert!(summary.points_paid > 0, "some sales were paid in points, each with its player's authorization");
}

async fn run(backend: BackendArgs) {
    let keys_dir = backend.data_dir.join("keys");
    let summary = demo::run(DemoArgs {
        backend: backend.clone(),
        keys_dir: keys_dir.clone(),
        vouchers: 40,
        connect: None,
        engine_tls: Default::default(),
        node_tls: false,
    })
    .await
    .expect("demo runs");
    assert_eq!(summary.backend, backend.name());
    check(&summary);
    // Up to the sequence the demo audited: its engine's lease upkeep may append after.
    let digest = rebuild_digest_until(&backend, &keys_dir, summary.stream_events).await;
    assert_eq!(hex::encode(digest), summary.state_digest, "a rebuild from sequence 1 reproduces the demo's digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_the_embedded_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    run(BackendArgs { data_dir: dir.path().to_path_buf(), nats_url: None, stream: "VOUCHSAFE".into() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_jetstream() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    run(BackendArgs { data_dir: dir.path().to_path_buf(), nats_url: Some(server.url()), stream: "VOUCHSAFE".into() }).await;
}

/// `demo --connect`: the demo drives an engine that is already serving (as under
/// `vouchsafe serve`), here on JetStream, and audits it over AuditService.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_connects_to_a_running_engine_on_jetstream() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let keys_dir = dir.path().join("keys");
    gateways::common::keys::init(&keys_dir).expect("keys init");
    let engine_backend = BackendArgs { data_dir: dir.path().join("engine"), nats_url: Some(server.url()), stream: "VOUCHSAFE".into() };
    let log = engine_backend.open().await.expect("open log");
    let mut config = gateways::server::EngineConfig::new(engine_backend.data_dir.clone(), keys_dir.clone());
    config.seal_interval = std::time::Duration::from_millis(300);
    config.sweep_interval = std::time::Duration::from_millis(100);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let engine = gateways::server::start(config, log, listener).await.expect("engine starts");
    let demo_backend = BackendArgs { data_dir: dir.path().join("demo"), nats_url: None, stream: "VOUCHSAFE".into() };
    let summary = demo::run(DemoArgs {
        backend: demo_backend,
        keys_dir: keys_dir.clone(),
        vouchers: 30,
        connect: Some(engine.url()),
        engine_tls: Default::default(),
        node_tls: false,
    })
    .await
    .expect("demo runs");
    assert_eq!(summary.backend, "connect");
    assert!(summary.audit_ok, "{summary:?}");
    check(&summary);
    engine.shutdown().await.expect("graceful shutdown");
    // The engine's sealer may have appended a seal after the demo's audit: compare the
    // rebuild over the stream the audit saw.
    assert_eq!(
        hex::encode(rebuild_digest_until(&engine_backend, &keys_dir, summary.stream_events).await),
        summary.state_digest,
        "the engine's replay digest is a rebuild's digest"
    );
}
