//! The dispatcher against a real nats-server: every VoucherIssued and PreviewStarted reaches
//! exactly its node's feed (`vsn.<node>`), once; a restarted dispatcher resumes without
//! repeating; a deleted feed is rebuilt from sequence 1.

use engine::domain::Event;
use engine::log::EventLog;
use engine::log::jetstream::JetStreamLog;
use futures::StreamExt;
use gateways::common::client::{self, Upload};
use gateways::common::cred::Credential;
use gateways::server::{self, EngineConfig, RunningEngine};
use proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

async fn start_engine(dir: &std::path::Path, log: Arc<JetStreamLog>) -> RunningEngine {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut engine =
        server::start(EngineConfig::new(dir.join("engine"), dir.join("keys")), Arc::clone(&log) as Arc<dyn EventLog>, listener).await.expect("engine");
    engine.dispatch_to(log);
    engine
}

/// Reads a node's feed until `expected` assignments arrived (or 10 s passed). Whether more
/// than expected arrived is `all_feeds`' question, answered without waiting.
async fn feed_of(log: &JetStreamLog, node: &str, expected: usize) -> Vec<(u64, String)> {
    let mut feed = log.node_feed(node, 1);
    let mut seen = Vec::new();
    while seen.len() < expected {
        let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(10), feed.next()).await else { break };
        let (feed_seq, payload) = item.expect("feed reads");
        let recorded = engine::wire::decode(&payload).expect("the feed carries the source envelope");
        let id = match recorded.event {
            Event::VoucherIssued { voucher_id, node_id, .. } => {
                assert_eq!(node_id.as_str(), node, "only this node's assignments");
                voucher_id.0
            }
            Event::PreviewStarted { preview_id, node_id, .. } => {
                assert_eq!(node_id.as_str(), node, "only this node's assignments");
                preview_id.0
            }
            other => panic!("not an assignment on the feed: {other:?}"),
        };
        seen.push((feed_seq, id));
    }
    seen
}

/// Every node's feed holds exactly its expected assignments, in stream order, once each.
/// `sentinel_node`'s feed ends with the newest assignment in the stream; the dispatcher
/// publishes in source order, so once that one is read everything before it has been
/// published, and the feed stream's message count is final: equal to the expected total
/// (a repeat anywhere would make it larger). No waiting for something not to happen.
async fn all_feeds(log: &JetStreamLog, server_url: &str, expected: &BTreeMap<String, Vec<String>>, sentinel_node: &str) {
    let order = std::iter::once(sentinel_node).chain(expected.keys().map(String::as_str).filter(|node| *node != sentinel_node));
    for node in order {
        let seen = feed_of(log, node, expected[node].len()).await;
        let ids: Vec<&String> = seen.iter().map(|(_, id)| id).collect();
        let want: Vec<&String> = expected[node].iter().collect();
        assert_eq!(ids, want, "{node}'s feed holds its assignments in stream order, once each");
    }
    let context = async_nats::jetstream::new(async_nats::connect(server_url).await.expect("nats"));
    let mut feeds = context.get_stream("VOUCHSAFE_NODES").await.expect("the feed stream");
    let stored = feeds.info().await.expect("feed info").state.messages;
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(stored, total as u64, "the feed stream holds each assignment once, nothing more: {expected:?}");
}

async fn announce(channel: &tonic::transport::Channel, node: &Credential, i: usize) {
    let mut delivery = client::delivery(channel.clone(), node.clone());
    delivery
        .register_node(pb::RegisterNodeRequest { region: "eu".into(), slots_max: 100, endpoint: format!("http://127.0.0.1:{}", 1 + i) })
        .await
        .expect("announce");
}

/// Buys one more voucher, the newest assignment in the stream; returns the node it went to.
async fn sentinel(merchant: &mut client::MerchantClient, media_id: &str, name: &str, expected: &mut BTreeMap<String, Vec<String>>) -> String {
    let sale = client::buy(merchant, name, &[media_id.to_owned()], None).await.expect("sentinel sale");
    expected.entry(sale.node_id.clone()).or_default().push(sale.voucher_id);
    sale.node_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_assignment_reaches_exactly_its_node_once_across_restarts_and_rebuilds() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    gateways::common::keys::init(&dir.path().join("keys")).expect("keys");
    let log = Arc::new(JetStreamLog::connect(&server.url(), "VOUCHSAFE").await.expect("connect"));
    let engine = start_engine(dir.path(), Arc::clone(&log)).await;
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&dir.path().join("keys/operator.cred")).expect("operator");
    let mut catalog = client::catalog(channel.clone(), operator);
    let merchant = client::credential_of(
        catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m".into(), name: "Shop".into() }).await.expect("m").into_inner(),
    )
    .expect("cred");
    let mut nodes = Vec::new();
    for i in 0..2 {
        let cred = client::credential_of(
            catalog
                .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: format!("n{i}"), region: "eu".into(), slots_max: 100 })
                .await
                .expect("n")
                .into_inner(),
        )
        .expect("cred");
        announce(&channel, &cred, i).await;
        nodes.push(cred);
    }
    let engine_public = gateways::common::keys::load_engine_public(&dir.path().join("keys")).expect("public");
    let upload = Upload {
        title: "Song".into(),
        artist: "A".into(),
        authors: vec![],
        length_ms: 60_000,
        price_minor: 100,
        currency: "EUR".into(),
        terms: client::standard_terms("o"),
        content: vec![7; 1000],
        preview_clip: vec![1; 10],
        image_descriptor: String::new(),
    };
    let media = client::publish(&mut catalog, "p", &engine_public, upload).await.expect("publish");
    let mut merchant_client = client::merchant(channel.clone(), merchant.clone());
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..10 {
        let sale = client::buy(&mut merchant_client, &format!("s{i}"), std::slice::from_ref(&media.media_id), None).await.expect("buy");
        expected.entry(sale.node_id).or_default().push(sale.voucher_id);
    }
    let preview = merchant_client
        .preview(pb::PreviewRequest { request_id: "pv".into(), media_id: media.media_id.clone(), region: String::new() })
        .await
        .expect("preview")
        .into_inner();
    expected.entry(preview.node_id).or_default().push(preview.preview_id);
    assert_eq!(expected.len(), 2, "the least-loaded allocator spreads the sales over both nodes: {expected:?}");

    let last = sentinel(&mut merchant_client, &media.media_id, "sentinel-first", &mut expected).await;
    all_feeds(&log, &server.url(), &expected, &last).await;

    // A restarted engine's dispatcher resumes after the last dispatched source sequence:
    // nothing is published twice (the feed count stays exact once a new sentinel is through).
    engine.shutdown().await.expect("shutdown");
    let engine = start_engine(dir.path(), Arc::clone(&log)).await;
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    for (i, cred) in nodes.iter().enumerate() {
        announce(&channel, cred, i).await; // node health is the engine's memory
    }
    let mut merchant_client = client::merchant(channel, merchant.clone());
    let last = sentinel(&mut merchant_client, &media.media_id, "sentinel-restart", &mut expected).await;
    all_feeds(&log, &server.url(), &expected, &last).await;
    engine.shutdown().await.expect("shutdown");

    // The feed is a projection: delete its stream and it is rebuilt from sequence 1.
    let client = async_nats::connect(server.url()).await.expect("nats");
    let context = async_nats::jetstream::new(client);
    context.delete_stream("VOUCHSAFE_NODES").await.expect("delete the feed stream");
    let log = Arc::new(JetStreamLog::connect(&server.url(), "VOUCHSAFE").await.expect("reconnect re-creates the feed stream"));
    assert_eq!(log.last_dispatched_source_seq().await.expect("empty feed"), engine::ids::Seq(0));
    let engine = start_engine(dir.path(), Arc::clone(&log)).await;
    all_feeds(&log, &server.url(), &expected, &last).await;
    engine.shutdown().await.expect("shutdown");
}
