//! Operator administration over gRPC: every admin RPC refuses every other role and writes
//! nothing; a configuration change is an event, so a restarted engine replays it to the
//! same configuration; a drained node gets no new vouchers while it finishes its current
//! ones; removed, it can no longer redeem.

use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use gateways::common::client::{self, Upload};
use gateways::common::cred::Credential;
use gateways::server::{self, EngineConfig, RunningEngine};
use proto::v1 as pb;
use std::sync::Arc;
use tonic::Code;

async fn start(dir: &std::path::Path, log: Arc<dyn EventLog>) -> (RunningEngine, tonic::transport::Channel) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = EngineConfig::new(dir.to_path_buf(), dir.join("keys"));
    // Nothing appends on its own during the test.
    config.sweep_interval = std::time::Duration::from_secs(3600);
    config.seal_interval = std::time::Duration::from_secs(3600);
    let engine = server::start(config, log, listener).await.expect("engine");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    (engine, channel)
}

async fn credential(catalog: &mut client::CatalogClient, kind: &str, i: usize) -> Credential {
    let response = match kind {
        "merchant" => catalog.register_merchant(pb::RegisterMerchantRequest { request_id: format!("m{i}"), name: "Shop".into() }).await,
        "node" => catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: format!("n{i}"), region: "eu".into(), slots_max: 8 }).await,
        _ => catalog.register_auditor(pb::RegisterAuditorRequest { request_id: format!("a{i}"), name: "Agent".into() }).await,
    };
    client::credential_of(response.expect("registered").into_inner()).expect("credential")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_for_the_operator_config_replays_and_drained_nodes_finish_their_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    gateways::common::keys::init(&dir.path().join("keys")).expect("keys");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("log"));
    let (engine, channel) = start(dir.path(), Arc::clone(&log)).await;
    let operator = Credential::load(&dir.path().join("keys/operator.cred")).expect("operator");
    let mut catalog = client::catalog(channel.clone(), operator.clone());
    let merchant = credential(&mut catalog, "merchant", 0).await;
    let node_x = credential(&mut catalog, "node", 0).await;
    let node_y = credential(&mut catalog, "node", 1).await;
    let auditor = credential(&mut catalog, "auditor", 0).await;

    // Every admin RPC × every other role: refused, nothing written.
    let head = log.last_seq().await.expect("head");
    let others = [("merchant", Some(merchant.clone())), ("node", Some(node_x.clone())), ("auditor", Some(auditor.clone())), ("anonymous", None)];
    let mut table = Vec::new();
    for (role, credential) in &others {
        let mut admin = match credential {
            Some(credential) => client::admin(channel.clone(), credential.clone()),
            None => client::admin(channel.clone(), Credential::new("nobody", engine::crypto::SecretKey::random())),
        };
        let expected = if credential.is_some() { Code::PermissionDenied } else { Code::Unauthenticated };
        let codes = [
            ("GetStats", admin.get_stats(pb::GetStatsRequest {}).await.map(|_| ()).err().map(|s| s.code())),
            ("GetConfig", admin.get_config(pb::GetConfigRequest {}).await.map(|_| ()).err().map(|s| s.code())),
            (
                "SetConfig",
                admin
                    .set_config(pb::SetConfigRequest { request_id: "c".into(), key: "access.ttl_ms".into(), value: "5000".into() })
                    .await
                    .map(|_| ())
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "DrainNode",
                admin.drain_node(pb::NodeAdminRequest { request_id: "d".into(), node_id: node_x.id.clone() }).await.map(|_| ()).err().map(|s| s.code()),
            ),
            (
                "RemoveNode",
                admin.remove_node(pb::NodeAdminRequest { request_id: "r".into(), node_id: node_x.id.clone() }).await.map(|_| ()).err().map(|s| s.code()),
            ),
        ];
        for (rpc, code) in codes {
            table.push(format!("{role:>9} × {rpc:<10} → {code:?}"));
            assert_eq!(code, Some(expected), "{role} on {rpc}");
        }
    }
    println!("admin access:\n{}", table.join("\n"));
    assert_eq!(log.last_seq().await.expect("head"), head, "refusals write nothing");

    // Configuration: a change is an event; a restarted engine has the same configuration.
    let mut admin = client::admin(channel.clone(), operator.clone());
    let before = admin.get_config(pb::GetConfigRequest {}).await.expect("get").into_inner();
    // Only what the engine records as it starts: royalty entries bind their sequence.
    let set_before: Vec<(&str, u64)> = before.entries.iter().filter(|e| e.set).map(|e| (e.key.as_str(), e.value)).collect();
    assert_eq!(set_before, [(engine::domain::config::ROYALTY_ENTRY_BINDING_KEY, 1)], "nothing else set yet");
    let set = admin
        .set_config(pb::SetConfigRequest { request_id: "c1".into(), key: "access.ttl_ms".into(), value: "120000".into() })
        .await
        .expect("set")
        .into_inner();
    let bad =
        admin.set_config(pb::SetConfigRequest { request_id: "c2".into(), key: "access.ttl_ms".into(), value: "1".into() }).await.expect_err("out of range");
    assert_eq!(bad.code(), Code::InvalidArgument);
    // Values within their plain range that would break the market, refused over gRPC naming
    // the constraint (issue 21 item 11): the tried attack, a heartbeat timeout of 1000 ms
    // below the nodes' 5 s heartbeat, and an access window shorter than the heartbeat
    // timeout. The control is the accepted 120000 above; the count below shows nothing written.
    let refuse = |request_id: &str, key: &str, value: &str| {
        let request = pb::SetConfigRequest { request_id: request_id.into(), key: key.into(), value: value.into() };
        let mut admin = admin.clone();
        async move { admin.set_config(request).await.expect_err("breaks a constraint") }
    };
    let attack = refuse("c3", "node.heartbeat_timeout_ms", "1000").await;
    assert_eq!(attack.code(), Code::InvalidArgument, "{attack:?}");
    assert!(attack.message().contains("twice the nodes' heartbeat interval"), "names the constraint: {}", attack.message());
    let window = refuse("c4", "access.ttl_ms", "5000").await;
    assert_eq!(window.code(), Code::InvalidArgument, "{window:?}");
    assert!(window.message().contains("at least node.heartbeat_timeout_ms"), "names the constraint: {}", window.message());
    let timeout = refuse("c5", "node.heartbeat_timeout_ms", "120001").await;
    assert!(timeout.message().contains("at most access.ttl_ms (now 120000)"), "against the value set above: {}", timeout.message());
    assert_eq!(log.last_seq().await.expect("head").0, head.0 + 1, "one ConfigChanged event");
    engine.shutdown().await.expect("shutdown");
    let (engine, channel) = start(dir.path(), Arc::clone(&log)).await;
    let mut admin = client::admin(channel.clone(), operator.clone());
    let replayed = admin.get_config(pb::GetConfigRequest {}).await.expect("get").into_inner();
    assert_eq!(replayed, set, "the restarted engine replays the same configuration");

    // The configured access TTL is what IssueVoucher grants.
    let engine_public = gateways::common::keys::load_engine_public(&dir.path().join("keys")).expect("public");
    let mut catalog = client::catalog(channel.clone(), operator.clone());
    let upload = Upload {
        title: "S".into(),
        artist: "A".into(),
        authors: vec![],
        length_ms: 60_000,
        price_minor: 100,
        currency: "EUR".into(),
        terms: client::standard_terms("o"),
        content: vec![3; 2000],
        preview_clip: vec![],
        image_descriptor: String::new(),
    };
    let media = client::publish(&mut catalog, "p", &engine_public, upload).await.expect("publish");
    let mut x = client::delivery(channel.clone(), node_x.clone());
    x.register_node(pb::RegisterNodeRequest { region: "eu".into(), slots_max: 8, endpoint: "http://127.0.0.1:1".into() }).await.expect("x announces");
    let mut shop = client::merchant(channel.clone(), merchant.clone());
    let first = client::buy(&mut shop, "s1", std::slice::from_ref(&media.media_id), None).await.expect("buy");
    assert_eq!(first.node_id, node_x.id);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    assert!((first.access_expires_at_ms - now - 120_000).abs() < 10_000, "the configured access TTL applies: {} vs now {now}", first.access_expires_at_ms);

    // Drain X: new work goes to Y; X finishes what it holds.
    let drained = admin.drain_node(pb::NodeAdminRequest { request_id: "d1".into(), node_id: node_x.id.clone() }).await.expect("drain").into_inner();
    assert_eq!(drained.status, "drained");
    let refused = client::buy(&mut shop, "s2", std::slice::from_ref(&media.media_id), None).await.expect_err("only X was announced, and it is drained");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let mut y = client::delivery(channel.clone(), node_y.clone());
    y.register_node(pb::RegisterNodeRequest { region: "eu".into(), slots_max: 8, endpoint: "http://127.0.0.1:2".into() }).await.expect("y announces");
    let second = client::buy(&mut shop, "s3", std::slice::from_ref(&media.media_id), None).await.expect("buy");
    assert_eq!(second.node_id, node_y.id, "a drained node gets no new vouchers");
    let stats = admin.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
    let x_stats = stats.nodes.iter().find(|n| n.node_id == node_x.id).expect("x in stats");
    assert_eq!((x_stats.status.as_str(), x_stats.streams_in_use), ("drained", 1), "{x_stats:?}");
    // X still delivers its current voucher.
    let consumer_key = tokio::task::spawn_blocking(|| engine::crypto::RsaPrivate::generate(2048)).await.expect("task").expect("rsa");
    let cert = catalog
        .certify_consumer(pb::CertifyConsumerRequest {
            request_id: "cert".into(),
            consumer_id: "alice".into(),
            public_key_der: consumer_key.public().to_der().expect("der"),
            validity_ms: 86_400_000,
        })
        .await
        .expect("certify")
        .into_inner();
    let consumer_der = consumer_key.public().to_der().expect("der");
    let redeem = |voucher: &str, receipt: &[u8], node: &str, request: &str| {
        let challenge = engine::crypto::random_bytes::<32>();
        let receipt = engine::crypto::SecretKey::from_bytes(receipt.try_into().expect("receipt"));
        pb::RedeemRequest {
            request_id: request.into(),
            voucher_id: voucher.into(),
            cert_serial: cert.cert_serial.clone(),
            consumer_id: "alice".into(),
            challenge: challenge.to_vec(),
            proof: engine::crypto::receipt_proof(
                &receipt,
                voucher,
                node,
                &challenge,
                &engine::crypto::ProofConsumer::new("alice", &cert.cert_serial, &consumer_der),
            )
            .to_vec(),
            recover: false,
        }
    };
    x.redeem(redeem(&first.voucher_id, &first.receipt, &node_x.id, "r1")).await.expect("a drained node redeems what it holds");

    // Removed, Y can no longer redeem.
    admin.remove_node(pb::NodeAdminRequest { request_id: "rm".into(), node_id: node_y.id.clone() }).await.expect("remove");
    let head = log.last_seq().await.expect("head");
    let gone = y.redeem(redeem(&second.voucher_id, &second.receipt, &node_y.id, "r2")).await.expect_err("removed");
    assert!(matches!(gone.code(), Code::Unauthenticated | Code::FailedPrecondition), "{gone:?}");
    assert_eq!(log.last_seq().await.expect("head"), head);
    engine.shutdown().await.expect("shutdown");
}
