//! The delivery node agent and the reference player against the real engine over loopback
//! sockets: the node registers and follows its feed; a certified player redeems an album at
//! the node, downloads, decrypts, verifies and confirms each media; the engine records the
//! delivery. Also: refused grants and receipts, a hash mismatch that fails the delivery and
//! a retry that completes it, previews, and a restarted node resuming its feed from the
//! checkpoint.

use engine::crypto::{self, SecretKey};
use engine::ids::ConsumerId;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use gateways::common::client::{self, MerchantClient, Upload};
use gateways::common::cred::Credential;
use gateways::node::{self, NodeArgs, RunningNode};
use gateways::player::{self, Purchase, RpcError};
use gateways::server::{self, EngineConfig, RunningEngine};
use proto::v1 as pb;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// How long a test waits for something asynchronous (the feed, the projections).
const WAIT_MS: u64 = 10_000;

struct Fixture {
    dir: tempfile::TempDir,
    engine: RunningEngine,
    log: Arc<dyn EventLog>,
    channel: tonic::transport::Channel,
    catalog: client::CatalogClient,
    operator: Credential,
    merchant: MerchantClient,
    node_cred: Credential,
    engine_public: crypto::RsaPublic,
}

async fn start_engine() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let engine = server::start(EngineConfig::new(dir.path().to_path_buf(), keys.clone()), Arc::clone(&log), listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let engine_public = gateways::common::keys::load_engine_public(&keys).expect("public key");
    let mut catalog = client::catalog(channel.clone(), operator.clone());
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
    let merchant = client::merchant(channel.clone(), merchant_cred);
    Fixture { dir, engine, log, channel, catalog, operator, merchant, node_cred, engine_public }
}

async fn start_node(fixture: &Fixture) -> RunningNode {
    node::start(NodeArgs {
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
    .expect("node starts")
}

fn content(seed: u32, size_bytes: usize) -> Vec<u8> {
    (0..size_bytes as u32).map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8).collect()
}

async fn publish(fixture: &mut Fixture, request_id: &str, content: Vec<u8>, preview_clip: Vec<u8>) -> client::Published {
    let upload = Upload {
        title: format!("Song {request_id}"),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 180_000,
        price_minor: 199,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        content,
        preview_clip,
        image_descriptor: "cover.jpg".into(),
    };
    client::publish(&mut fixture.catalog, request_id, &fixture.engine_public, upload).await.expect("publish")
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

fn rpc_code(error: &anyhow::Error) -> Option<(&'static str, Code)> {
    error.downcast_ref::<RpcError>().map(|rpc| (rpc.call, rpc.code))
}

async fn status_of(merchant: &mut MerchantClient, voucher_id: &str) -> String {
    merchant.get_voucher(pb::GetVoucherRequest { voucher_id: voucher_id.into() }).await.expect("get voucher").into_inner().status
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_player_redeems_downloads_decrypts_and_confirms_an_album_through_a_node() {
    let mut fixture = start_engine().await;
    // Several chunks for the first media (CHUNK_BYTES is 64 KiB), one for the second.
    let song_a = content(1, 300_000);
    let song_b = content(2, 1_000);
    let clip = b"free preview clip of song a".to_vec();
    let a = publish(&mut fixture, "pub-a", song_a.clone(), clip.clone()).await;
    let b = publish(&mut fixture, "pub-b", song_b.clone(), Vec::new()).await;
    let node = start_node(&fixture).await;
    assert_eq!(node.node_id(), fixture.node_cred.id);
    assert!(node.endpoint().starts_with("http://127.0.0.1:") && !node.endpoint().ends_with(":0"), "{}", node.endpoint());

    let alice = ConsumerId::new("alice");
    let created = player::create_passport(&mut fixture.catalog, "cert-alice", &alice, &fixture.engine_public).await.expect("passport");
    let home = player::passport_dir(&fixture.dir.path().join("player"), &alice).expect("dir");
    created.save(&home).expect("saved");
    let passport = player::Passport::load(&home).expect("loaded");

    // A retried CertifyConsumer answers the first certificate, for the first key: a new key
    // under the same request id is refused by the player.
    let retried = player::create_passport(&mut fixture.catalog, "cert-alice", &alice, &fixture.engine_public).await.expect_err("another key");
    assert!(format!("{retried:#}").contains("another public key"), "{retried:#}");

    let album = [a.media_id.clone(), b.media_id.clone()];
    let sale = client::buy(&mut fixture.merchant, "album-1", &album, None).await.expect("buy");
    assert_eq!(sale.node_id, node.node_id());
    assert_eq!(sale.node_endpoint, node.endpoint(), "the engine hands players the endpoint the node registered");
    let purchase = purchase_of(&sale);
    let out = fixture.dir.path().join("downloads");

    // The node refuses an altered grant locally, without a call to the engine.
    let head = fixture.log.last_seq().await.expect("head");
    let mut forged = purchase.clone();
    forged.grant.access_token[0] ^= 1;
    let refused = player::redeem_and_download(&forged, &passport, "redeem-forged", &out).await.expect_err("forged grant");
    assert_eq!(rpc_code(&refused), Some(("Challenge", Code::PermissionDenied)), "{refused:#}");
    let mut widened = purchase.clone();
    widened.grant.access_expires_at_ms += 60_000;
    let refused = player::redeem_and_download(&widened, &passport, "redeem-widened", &out).await.expect_err("extended expiry");
    assert_eq!(rpc_code(&refused), Some(("Challenge", Code::PermissionDenied)), "{refused:#}");
    // A player without the receipt is refused by the engine, and the node relays its answer.
    let mut guessed = purchase.clone();
    guessed.receipt = SecretKey::random().expose().to_vec();
    let refused = player::redeem_and_download(&guessed, &passport, "redeem-guessed", &out).await.expect_err("wrong receipt");
    assert_eq!(rpc_code(&refused), Some(("Redeem", Code::PermissionDenied)), "{refused:#}");
    assert_eq!(fixture.log.last_seq().await.expect("head"), head, "refusals write nothing");
    assert_eq!(status_of(&mut fixture.merchant, &sale.voucher_id).await, "Issued");

    let copies = player::redeem_and_download(&purchase, &passport, "redeem-1", &out).await.expect("delivered");
    assert_eq!(copies.len(), 2);
    for (copy, expected) in copies.iter().zip([&song_a, &song_b]) {
        assert!(copy.decrypt_ok, "{copy:?}");
        let written = std::fs::read(&copy.path).expect("written");
        let stamped = engine::media::parse_delivered_copy(&written).expect("a delivered copy");
        assert_eq!(stamped.content, expected.as_slice());
        assert!(stamped.check(&fixture.engine_public).ok(), "the engine's transaction record verifies");
        assert_eq!((stamped.record.voucher_id.as_str(), stamped.record.media_id.as_str()), (sale.voucher_id.as_str(), copy.media_id.as_str()));
        assert_eq!(copy.content_hash, crypto::hash(expected));
        assert_eq!(copy.path, out.join(format!("{}-{}.media", sale.voucher_id, copy.media_id)));
    }
    assert_eq!(copies.iter().map(|copy| copy.media_id.clone()).collect::<Vec<_>>(), album.to_vec());
    assert!(!copies[0].voucher_delivered && copies[1].voucher_delivered, "{copies:?}");
    assert_eq!(status_of(&mut fixture.merchant, &sale.voucher_id).await, "Delivered");
    let stats = node.stats();
    assert_eq!((stats.cache_items, stats.cache_misses), (2, 2), "each container fetched from the engine once: {stats:?}");
    assert_eq!(stats.cache_accesses, 4, "a download and a confirm per media: {stats:?}");
    assert!(stats.assignments_seen >= 1, "{stats:?}");
    wait_for("the download streams to end", || node.stats().slots_in_use == 0).await;

    // Delivered at most once: the engine's refusal reaches the player unchanged.
    let again = player::redeem_and_download(&purchase, &passport, "redeem-2", &out).await.expect_err("already delivered");
    assert_eq!(rpc_code(&again), Some(("Redeem", Code::FailedPrecondition)), "{again:#}");

    // A corrupted download: the node reports the failure, the voucher can be redeemed again.
    let sale = client::buy(&mut fixture.merchant, "single-1", std::slice::from_ref(&b.media_id), None).await.expect("buy");
    let purchase = purchase_of(&sale);
    let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
    let grant = Some(sale.grant());
    let challenge = at_node.challenge(pb::ChallengeRequest { grant: grant.clone() }).await.expect("challenge").into_inner().challenge;
    let receipt = SecretKey::from_bytes(sale.receipt.as_slice().try_into().expect("32 bytes"));
    let alice_subject = crypto::ProofConsumer::new(alice.as_str(), &passport.certificate.cert_serial, &passport.certificate.public_key_der);
    let proof = crypto::receipt_proof(&receipt, &sale.voucher_id, &sale.node_id, &challenge, &alice_subject).to_vec();
    let redeem = pb::PlayerRedeemRequest {
        grant: grant.clone(),
        request_id: "redeem-3".into(),
        consumer_id: alice.to_string(),
        cert_serial: passport.certificate.cert_serial.clone(),
        challenge: challenge.clone(),
        proof: proof.clone(),
        recover: false,
    };
    at_node.redeem(redeem.clone()).await.expect("redeemed");
    let replayed = at_node.redeem(pb::PlayerRedeemRequest { request_id: "redeem-4".into(), ..redeem }).await.expect_err("a challenge is answered once");
    assert_eq!(replayed.code(), Code::PermissionDenied, "{replayed:?}");
    assert_eq!(status_of(&mut fixture.merchant, &sale.voucher_id).await, "Redeeming");
    // The grant alone (what the node and the link see) fails no delivery: a Confirm needs
    // the buyer's proof. With it, a wrong hash reports the delivery failed.
    let head = fixture.log.last_seq().await.expect("head");
    let without = at_node
        .confirm(pb::ConfirmRequest {
            grant: grant.clone(),
            media_id: b.media_id.clone(),
            received_hash: vec![0; 32],
            proof: Vec::new(),
            play_id: String::new(),
        })
        .await
        .expect_err("no proof");
    assert_eq!(without.code(), Code::InvalidArgument, "{without:?}");
    let forged = at_node
        .confirm(pb::ConfirmRequest {
            grant: grant.clone(),
            media_id: b.media_id.clone(),
            received_hash: vec![0; 32],
            proof: vec![9; 32],
            play_id: String::new(),
        })
        .await
        .expect_err("a forged proof");
    assert_eq!(forged.code(), Code::PermissionDenied, "{forged:?}");
    assert_eq!(fixture.log.last_seq().await.expect("head"), head, "neither failed the delivery");
    let confirm_proof = crypto::confirm_proof(&receipt, &sale.voucher_id, &sale.node_id, &b.media_id, &[0; 32], &alice_subject).to_vec();
    let mismatch = at_node
        .confirm(pb::ConfirmRequest {
            grant: grant.clone(),
            media_id: b.media_id.clone(),
            received_hash: vec![0; 32],
            proof: confirm_proof,
            play_id: String::new(),
        })
        .await
        .expect_err("hash mismatch");
    assert_eq!(mismatch.code(), Code::DataLoss, "{mismatch:?}");
    assert_eq!(status_of(&mut fixture.merchant, &sale.voucher_id).await, "Issued", "the failed delivery hands the voucher back");
    let not_granted =
        at_node.download(pb::DownloadRequest { grant: grant.clone(), media_id: a.media_id.clone(), offset: 0 }).await.expect_err("not in the grant");
    assert_eq!(not_granted.code(), Code::PermissionDenied);
    let copies = player::redeem_and_download(&purchase, &passport, "redeem-5", &out).await.expect("the retry delivers");
    assert!(copies[0].decrypt_ok && copies[0].voucher_delivered, "{copies:?}");
    assert_eq!(status_of(&mut fixture.merchant, &sale.voucher_id).await, "Delivered");

    // Previews: the clip plays at the node the engine chose, and the node ends the preview.
    let preview = fixture
        .merchant
        .preview(pb::PreviewRequest { request_id: "preview-1".into(), media_id: a.media_id.clone(), region: String::new() })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.node_id, node.node_id());
    assert_eq!(player::play_preview(node.endpoint(), &preview.preview_id).await.expect("plays"), clip);
    // The merchant's preview quota on this node is one: the second preview starts once the
    // node has reported the first ended (the refusal says to retry then), so wait for that.
    let deadline = std::time::Instant::now() + Duration::from_millis(WAIT_MS);
    let preview = loop {
        let request = pb::PreviewRequest { request_id: "preview-2".into(), media_id: b.media_id.clone(), region: String::new() };
        match fixture.merchant.preview(request).await {
            Ok(preview) => break preview.into_inner(),
            Err(refused) if refused.code() == Code::ResourceExhausted && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(refused) => panic!("preview: {refused:?}"),
        }
    };
    // Published without a clip: the engine stores none, and the node relays its NotFound.
    let no_clip = player::play_preview(node.endpoint(), &preview.preview_id).await.expect_err("no clip");
    assert_eq!(rpc_code(&no_clip), Some(("PlayPreview", Code::NotFound)), "{no_clip:#}");
    let unknown = player::play_preview(node.endpoint(), "p-unknown").await.expect_err("not assigned");
    assert_eq!(rpc_code(&unknown), Some(("PlayPreview", Code::NotFound)), "{unknown:#}");
    let mut audit = client::audit(fixture.channel.clone(), fixture.operator.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let totals = audit.totals(pb::TotalsRequest {}).await.expect("totals").into_inner();
        let previews: u64 = totals.lines.iter().filter(|line| line.dimension == "Media").map(|line| line.previews).sum();
        let deliveries: u64 = totals.lines.iter().filter(|line| line.dimension == "Media").map(|line| line.deliveries).sum();
        if previews == 1 && deliveries == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "previews {previews} and deliveries {deliveries} in {totals:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    node.shutdown().await;
    fixture.engine.shutdown().await.expect("graceful shutdown");
}

fn checkpoint(data_dir: &Path, node_id: &str) -> u64 {
    node::read_checkpoint(&node::checkpoint_path(data_dir, node_id)).expect("checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_resumes_its_feed_from_the_checkpoint() {
    let mut fixture = start_engine().await;
    // More chunks than a response stream buffers, so a download is in flight at shutdown.
    let song = publish(&mut fixture, "pub-a", content(3, 8 * 1024 * 1024), Vec::new()).await;
    let node = start_node(&fixture).await;
    let first = client::buy(&mut fixture.merchant, "sale-1", std::slice::from_ref(&song.media_id), None).await.expect("buy");
    wait_for("the first assignment", || node.stats().assignments_seen == 1).await;
    let assigned = node.assignment(&first.voucher_id).expect("assigned");
    assert_eq!(assigned.media_ids, vec![song.media_id.clone()]);
    assert_eq!(assigned.access_expires_at_ms, first.access_expires_at_ms);
    let seen_seq = node.stats().last_seq;
    let node_id = node.node_id().to_string();
    let data_dir = fixture.dir.path().join("node");
    // The checkpoint file is written right after the assignment is recorded.
    wait_for("the checkpoint persisted after handling the assignment", || checkpoint(&data_dir, &node_id) == seen_seq).await;
    node.shutdown().await;

    // Sold while the node is down: the engine still assigns it here (its heartbeat is recent).
    let second = client::buy(&mut fixture.merchant, "sale-2", std::slice::from_ref(&song.media_id), None).await.expect("buy");
    assert_eq!(second.node_id, node_id);
    let node = start_node(&fixture).await;
    // It resumes at the checkpoint (it may have handled the second sale already: that is
    // not a race to lose); that it does not start before it shows below, where the first
    // assignment is not handled again.
    let resumed = node.stats().last_seq;
    assert!(resumed >= seen_seq, "resumed at {resumed}, before the checkpoint {seen_seq}");
    wait_for("the second assignment", || node.assignment(&second.voucher_id).is_some()).await;
    let stats = node.stats();
    assert_eq!(stats.assignments_seen, 1, "the first assignment is not handled again: {stats:?}");
    assert!(node.assignment(&first.voucher_id).is_none());
    assert!(stats.last_seq > seen_seq);
    wait_for("the checkpoint persisted after the second assignment", || checkpoint(&data_dir, &node_id) == stats.last_seq).await;

    // A request over the node's size limit is refused before it is decoded.
    let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
    let oversized = pb::AccessGrant { media_ids: vec!["x".repeat(node::REQUEST_BYTES_MAX)], ..second.grant() };
    let refused = at_node.challenge(pb::ChallengeRequest { grant: Some(oversized) }).await.expect_err("too large");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // Graceful shutdown: new requests are refused, a download in flight finishes, then new
    // connections are refused.
    let endpoint = node.endpoint().to_string();
    let mut stream =
        at_node.download(pb::DownloadRequest { grant: Some(second.grant()), media_id: song.media_id.clone(), offset: 0 }).await.expect("download").into_inner();
    let mut reassembly = gateways::common::transfer::Reassembly::new(engine::media::CONTAINER_BYTES_MAX);
    reassembly.push(stream.message().await.expect("first chunk").expect("a chunk")).expect("contiguous");
    assert_eq!(node.stats().slots_in_use, 1, "a slot is in use while streaming");
    let stopping = tokio::spawn(node.shutdown());
    // Shutdown has begun once the node refuses new requests as shutting down, while the
    // download is still open (the node keeps its connections until the download is done).
    let deadline = std::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        match at_node.challenge(pb::ChallengeRequest { grant: Some(second.grant()) }).await {
            Err(refused) if refused.code() == Code::Unavailable => break,
            other => assert!(std::time::Instant::now() < deadline, "{WAIT_MS} ms into its shutdown the node still answers {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!stopping.is_finished(), "the node waits for the download in flight");
    while let Some(chunk) = stream.message().await.expect("the stream finishes") {
        reassembly.push(chunk).expect("contiguous");
    }
    assert_eq!(reassembly.finish().expect("complete").len(), song.container_bytes);
    tokio::time::timeout(Duration::from_millis(WAIT_MS), stopping).await.expect("stops once the stream is done").expect("task");
    assert!(player::connect_node(&endpoint).await.is_err(), "no longer accepting");
    fixture.engine.shutdown().await.expect("graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_when_its_shutdown_future_completes() {
    let fixture = start_engine().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let args = NodeArgs {
        connect: fixture.engine.url(),
        cred: fixture.node_cred.clone(),
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: 2,
        region: "eu".into(),
        data_dir: fixture.dir.path().join("node"),
        cache_bytes_max: 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    };
    let running = tokio::spawn(node::run(args, async move {
        stopped.await.ok();
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).expect("the node is running");
    tokio::time::timeout(Duration::from_millis(WAIT_MS), running).await.expect("stops promptly").expect("task").expect("clean stop");

    // Negative control: a node with a wrong credential does not start.
    let wrong = NodeArgs {
        connect: fixture.engine.url(),
        cred: Credential::new(fixture.node_cred.id.clone(), SecretKey::random()),
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: 2,
        region: "eu".into(),
        data_dir: fixture.dir.path().join("node"),
        cache_bytes_max: 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    };
    let refused = node::start(wrong).await.expect_err("unauthenticated");
    assert!(format!("{refused:#}").contains("Unauthenticated"), "{refused:#}");
    fixture.engine.shutdown().await.expect("graceful shutdown");
}

/// The attack that worked: a flood of PlayPreview calls (no credential) with made-up ids,
/// 20 connections × 60 streams, each waiting for the feed while holding one of the node's
/// request permits, made 17 of 20 calls with a valid grant fail with ResourceExhausted.
/// Now a call takes a permit only after its checks (the grant's MAC, a preview this node
/// was assigned): during the same flood every call with a grant is served. At most
/// `PREVIEW_WAITS_MAX` of the flood's calls wait (and end NotFound after the bounded wait);
/// the others are refused at once with ResourceExhausted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unknown_previews_starves_no_player_holding_a_grant() {
    let mut fixture = start_engine().await;
    let song = publish(&mut fixture, "pub-flood", content(9, 4096), Vec::new()).await;
    let node = start_node(&fixture).await;
    let sale = client::buy(&mut fixture.merchant, "sale-flood", std::slice::from_ref(&song.media_id), None).await.expect("buy");
    wait_for("the assignment", || node.assignment(&sale.voucher_id).is_some()).await;

    let (connections, streams) = (20, 60);
    assert!(connections * streams > node::REQUESTS_IN_FLIGHT_MAX, "the flood outnumbers the node's permits");
    assert!(connections * streams > node::PREVIEW_WAITS_MAX as usize, "and the waits it allows");
    let mut flood = tokio::task::JoinSet::new();
    for connection in 0..connections {
        let at_node = player::connect_node(node.endpoint()).await.expect("connect");
        for stream in 0..streams {
            let mut at_node = at_node.clone();
            flood.spawn(async move {
                let preview_id = format!("made-up-{connection}-{stream}");
                at_node.play_preview(pb::PlayPreviewRequest { preview_id }).await.map(|_| ()).map_err(|status| status.code())
            });
        }
    }
    // While the flood waits at the node (more waiting calls than the node has permits):
    // twenty calls with the buyer's grant.
    wait_for("the flood to wait at the node", || node.stats().preview_waits == node::PREVIEW_WAITS_MAX).await;
    let mut served = 0;
    for _ in 0..20 {
        let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
        match at_node.challenge(pb::ChallengeRequest { grant: Some(sale.grant()) }).await {
            Ok(_) => served += 1,
            Err(status) => panic!("a call with a valid grant was refused during the flood: {status:?}"),
        }
    }
    assert_eq!(served, 20);
    let mut codes = std::collections::BTreeMap::new();
    while let Some(joined) = flood.join_next().await {
        let code = joined.expect("flood task").expect_err("a made-up preview id plays nothing");
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    // A call arriving after earlier waits ended may wait in turn: at least the cap's worth
    // waited, the rest were refused, nothing else.
    let (waited, refused) = (codes.get("NotFound").copied().unwrap_or(0), codes.get("ResourceExhausted").copied().unwrap_or(0));
    assert!(waited >= node::PREVIEW_WAITS_MAX as usize && refused > 0, "{codes:?}");
    assert_eq!(waited + refused, connections * streams, "{codes:?}");
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}
