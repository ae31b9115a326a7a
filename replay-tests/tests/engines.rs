//! Several engines, one market (issue 25): two engines (`gateways::server`, as two `serve`
//! processes would run them, each with its own connection, projections, caches and node
//! health view) on one JetStream stream.
//!
//! - Slots: both engines place vouchers on one node at once. Each gives out slots only from
//!   the slot leases the node aggregate granted it, so together they never give out more
//!   than the node has (replayed from the stream at every sequence). The protection off
//!   (`EngineConfig::slot_leases` false: each engine by its own view of the node) they do.
//! - Checks: a certificate revoked through one engine is refused through the other once
//!   that one's projections applied the revocation (its cached consumer is read again).
//! - Health: a node announced to one engine is placed on by the other (gossip).

use engine::domain::Event;
use engine::ids::{ConsumerId, Seq};
use engine::log::EventLog;
use gateways::common::backend::BackendArgs;
use gateways::common::client::{self, MerchantClient, Upload};
use gateways::common::cred::Credential;
use gateways::node::{self, NodeArgs, RunningNode};
use gateways::player::{self, Purchase};
use gateways::server::{self, EngineConfig, RunningEngine};
use proto::v1 as pb;
use replay_tests::NatsServer;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const NODE_SLOTS: u32 = 6;

struct Engines {
    dir: tempfile::TempDir,
    a: RunningEngine,
    b: RunningEngine,
    log: Arc<dyn EventLog>,
    keys: std::path::PathBuf,
    media_id: String,
    merchant: Credential,
    node: RunningNode,
}

async fn start_engine(server: &NatsServer, dir: &Path, keys: &Path, slot_leases: bool) -> (RunningEngine, Arc<dyn EventLog>) {
    let backend = BackendArgs { data_dir: dir.to_path_buf(), nats_url: Some(server.url()), stream: "VOUCHSAFE".into() };
    let (log, _) = backend.open_with_feed().await.expect("open the stream");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let config = EngineConfig { slot_leases, ..EngineConfig::new(dir.to_path_buf(), keys.to_path_buf()) };
    (server::start(config, Arc::clone(&log), listener).await.expect("engine starts"), log)
}

async fn channel(engine: &RunningEngine) -> tonic::transport::Channel {
    client::connect(&engine.url(), None).await.expect("connect")
}

/// Two engines on one stream; a merchant registered through A, and a node of `NODE_SLOTS`
/// slots whose agent talks to B (`node_on_b`) or A only; media published through the
/// node's engine (media files live in each engine's store, and a node fetches them from
/// its engine: engines share media only through a shared media directory).
async fn two_engines(server: &NatsServer, slot_leases: bool, node_on_b: bool) -> Engines {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let (a, log) = start_engine(server, &dir.path().join("a"), &keys, slot_leases).await;
    let (b, _) = start_engine(server, &dir.path().join("b"), &keys, slot_leases).await;
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let mut catalog_a = client::catalog(channel(&a).await, operator.clone());
    let mut catalog_b = client::catalog(channel(&b).await, operator);
    let merchant = catalog_a.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect("merchant");
    let merchant = client::credential_of(merchant.into_inner()).expect("credential");
    // Any engine takes any command: the node's credential through B.
    let node_cred = catalog_b
        .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "n-1".into(), region: "eu".into(), slots_max: NODE_SLOTS })
        .await
        .expect("node credential");
    let node_cred = client::credential_of(node_cred.into_inner()).expect("credential");
    let engine_public = gateways::common::keys::load_engine_public(&keys).expect("public key");
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
        image_descriptor: String::new(),
    };
    let node_catalog = if node_on_b { &mut catalog_b } else { &mut catalog_a };
    let media_id = client::publish(node_catalog, "pub-1", &engine_public, upload).await.expect("publish").media_id;
    let node_engine = if node_on_b { &b } else { &a };
    let node = node::start(NodeArgs {
        connect: node_engine.url(),
        cred: node_cred.clone(),
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: NODE_SLOTS,
        region: "eu".into(),
        data_dir: dir.path().join("node"),
        cache_bytes_max: 16 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node starts");
    // The other engine hears of the node through gossip, not from the node.
    let node_id = engine::ids::NodeId::new(node_cred.id.as_str());
    let started = std::time::Instant::now();
    while !(a.state.nodes.healthy(&node_id) && b.state.nodes.healthy(&node_id)) {
        assert!(started.elapsed() < Duration::from_secs(30), "the other engine never heard of the node");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Engines { dir, a, b, log, keys, media_id, merchant, node }
}

impl Engines {
    async fn merchant_on(&self, engine: &RunningEngine) -> MerchantClient {
        client::merchant(channel(engine).await, self.merchant.clone())
    }

    async fn head(&self) -> Seq {
        self.log.last_seq().await.expect("head")
    }

    async fn stop(self) {
        self.node.shutdown().await;
        self.a.shutdown().await.expect("shutdown a");
        self.b.shutdown().await.expect("shutdown b");
    }
}

/// Reserves and authorizes `count` vouchers with request ids under `prefix`; their ids.
async fn authorized(merchant: &mut MerchantClient, media_id: &str, prefix: &str, count: usize) -> Vec<String> {
    let mut vouchers = Vec::new();
    for n in 0..count {
        let reserve = pb::ReserveRequest {
            request_id: format!("{prefix}{n}-reserve"),
            media_ids: vec![media_id.to_string()],
            rendition: "high".into(),
            ttl_ms: 600_000,
            points_account: String::new(),
            payment_ref: format!("card-{prefix}{n}"),
            spend_authorization: None,
            rental_ms: 0,
        };
        let voucher_id = merchant.reserve(reserve).await.expect("reserve").into_inner().voucher_id;
        merchant.authorize(pb::AuthorizeRequest { request_id: format!("{prefix}{n}-authorize"), voucher_id: voucher_id.clone() }).await.expect("authorize");
        vouchers.push(voucher_id);
    }
    vouchers
}

/// Both engines issue vouchers on the one node at once; how many were issued, and the
/// vouchers refused for want of a slot.
async fn issue_from_both_at_once(engines: &Engines, per_engine: usize) -> (usize, Vec<String>) {
    let mut at_a = engines.merchant_on(&engines.a).await;
    let mut at_b = engines.merchant_on(&engines.b).await;
    let for_a = authorized(&mut at_a, &engines.media_id, "a", per_engine).await;
    let for_b = authorized(&mut at_b, &engines.media_id, "b", per_engine).await;
    let start = Arc::new(tokio::sync::Barrier::new(2 * per_engine));
    let mut issues = tokio::task::JoinSet::new();
    for (merchant, vouchers) in [(at_a, for_a), (at_b, for_b)] {
        for voucher_id in vouchers {
            let (mut merchant, start) = (merchant.clone(), Arc::clone(&start));
            issues.spawn(async move {
                start.wait().await;
                let request = pb::IssueVoucherRequest { request_id: format!("{voucher_id}-issue"), voucher_id, region: String::new() };
                let voucher_id = request.voucher_id.clone();
                match merchant.issue_voucher(request).await {
                    Ok(_) => None,
                    Err(status) if status.code() == Code::ResourceExhausted => Some(voucher_id),
                    Err(status) => panic!("unexpected refusal: {status:?}"),
                }
            });
        }
    }
    let mut refused = Vec::new();
    while let Some(joined) = issues.join_next().await {
        refused.extend(joined.expect("issue task"));
    }
    (2 * per_engine - refused.len(), refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_never_give_out_more_slots_than_a_node_has() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let engines = two_engines(&server, true, false).await;
    let (mut issued, refused) = issue_from_both_at_once(&engines, 8).await;
    let burst = issued;
    // A slot one engine leased but did not use is not the other's: a merchant's retry
    // through either engine (as a client failing over does) gets it.
    for voucher_id in refused {
        for engine in [&engines.a, &engines.b] {
            let request = pb::IssueVoucherRequest { request_id: format!("{voucher_id}-issue"), voucher_id: voucher_id.clone(), region: String::new() };
            if engines.merchant_on(engine).await.issue_voucher(request).await.is_ok() {
                issued += 1;
                break;
            }
        }
    }
    let most = replay_tests::most_slots_in_use(engines.log.as_ref()).await;
    eprintln!(
        "with slot leases: {burst} of 16 issued at once on a {NODE_SLOTS}-slot node, {issued} after retries; at most {most} slots in use at any sequence"
    );
    assert!(most <= NODE_SLOTS, "{most} slots in use on a node of {NODE_SLOTS}");
    assert_eq!(issued, NODE_SLOTS as usize, "every slot was given out, none twice");
    // Each engine leased its share from the node aggregate: the leases are on the stream.
    let leases = engines.log.read_subject(&format!("vs.node.{}", engines.node.node_id())).await.expect("node events");
    let leased = leases.iter().filter(|stored| matches!(engine::wire::decode(&stored.payload).expect("decodes").event, Event::SlotsLeased { .. })).count();
    assert!(leased >= 2, "both engines leased slots ({leased} lease events)");
    engines.stop().await;
}

/// One engine leased every slot of the node (alone, before the other placed anything)
/// and uses them: the other is refused, as one engine would be (the node is full). Then
/// half of them come back to the first engine's lease: the other, which one engine would
/// place there, asks for a share (`SlotsWanted` on the node's subject), the first gives
/// back at once what it does not use (its lease keeper applies the want), and the other
/// leases it and places, each answer as one engine's. (The protection off, the first
/// keeps what came back until its upkeep, and fills it again: `projections::allocation`'s
/// unit test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_that_finds_every_free_slot_leased_by_another_gets_them_as_one_engine_would() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let engines = two_engines(&server, true, false).await;
    let mut at_a = engines.merchant_on(&engines.a).await;
    let mut at_b = engines.merchant_on(&engines.b).await;
    let issue = |voucher_id: &str, attempt: &str| pb::IssueVoucherRequest {
        request_id: format!("{voucher_id}-issue-{attempt}"),
        voucher_id: voucher_id.to_string(),
        region: String::new(),
    };
    let on_a = authorized(&mut at_a, &engines.media_id, "a", NODE_SLOTS as usize + 1).await;
    for voucher_id in &on_a[..NODE_SLOTS as usize] {
        at_a.issue_voucher(issue(voucher_id, "1")).await.expect("a leases every slot, one step at a time");
    }
    let on_b = authorized(&mut at_b, &engines.media_id, "b", 4).await;
    let refused = at_b.issue_voucher(issue(&on_b[0], "1")).await.expect_err("the node is full");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let node_subject = format!("vs.node.{}", engines.node.node_id());
    let b_holder = engines.b.state.market.allocator().lease_holder().expect("b leases");
    let wanted = |events: &[engine::log::StoredEvent]| {
        events
            .iter()
            .filter(
                |stored| matches!(engine::wire::decode(&stored.payload).expect("decodes").event, Event::SlotsWanted { ref holder, .. } if *holder == b_holder),
            )
            .count()
    };
    assert_eq!(wanted(&engines.log.read_subject(&node_subject).await.expect("node events")), 0, "nothing free to ask for");
    // Half of a's sales are refunded: their slots come back to a's lease.
    for (n, voucher_id) in on_a[..3].iter().enumerate() {
        let refund = pb::RefundRequest { request_id: format!("refund-{n}"), voucher_id: voucher_id.clone(), reason: "changed mind".into(), chargeback: false };
        at_a.refund(refund).await.expect("refund");
    }
    for voucher_id in &on_b[..3] {
        at_b.issue_voucher(issue(voucher_id, "2")).await.expect("b gets a share of what came back, at once");
    }
    assert!(wanted(&engines.log.read_subject(&node_subject).await.expect("node events")) >= 1, "b asked for a share");
    for (engine, voucher_id) in [(&mut at_a, &on_a[NODE_SLOTS as usize]), (&mut at_b, &on_b[3])] {
        let full = engine.issue_voucher(issue(voucher_id, "3")).await.expect_err("the node is full again");
        assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    }
    let most = replay_tests::most_slots_in_use(engines.log.as_ref()).await;
    assert!(most <= NODE_SLOTS, "{most} slots in use on a node of {NODE_SLOTS}");
    engines.stop().await;
}

/// The protection off: each engine gives out the node's slots by its own view (the slots
/// in use it has applied and its own tentative holds), so placing at once they over-give.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_slot_leases_two_engines_over_give_a_node() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let engines = two_engines(&server, false, false).await;
    let (issued, _) = issue_from_both_at_once(&engines, 8).await;
    let most = replay_tests::most_slots_in_use(engines.log.as_ref()).await;
    eprintln!("without slot leases: {issued} of 16 issued on a {NODE_SLOTS}-slot node; at most {most} slots in use at any sequence");
    assert!(most > NODE_SLOTS, "the attack: {most} slots in use on a node of {NODE_SLOTS} without leases");
    engines.stop().await;
}

/// A certificate revoked through A is refused through B (the node talks to B), once B's
/// projections applied the revocation; B had the consumer cached from a redemption before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_revoked_through_one_engine_is_refused_through_the_other() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let engines = two_engines(&server, true, true).await;
    let operator = Credential::load(&engines.keys.join("operator.cred")).expect("operator credential");
    let mut catalog_a = client::catalog(channel(&engines.a).await, operator.clone());
    let engine_public = gateways::common::keys::load_engine_public(&engines.keys).expect("public key");
    let alice = player::create_passport(&mut catalog_a, "cert-alice", &ConsumerId::new("alice"), &engine_public).await.expect("passport");
    let mut at_a = engines.merchant_on(&engines.a).await;
    let first = client::buy(&mut at_a, "first", std::slice::from_ref(&engines.media_id), None).await.expect("buy through a");
    let second = client::buy(&mut at_a, "second", std::slice::from_ref(&engines.media_id), None).await.expect("buy through a");
    let purchase = |sale: &client::Sale| Purchase {
        node_endpoint: sale.node_endpoint.clone(),
        node_id: sale.node_id.clone(),
        grant: sale.grant(),
        receipt: sale.receipt.clone(),
        rental_until_ms: 0,
    };
    // Redeemed through B (the node's engine): B now has alice's certificate cached.
    let copies = player::redeem_and_download(&purchase(&first), &alice, "r1", &engines.dir.path().join("first")).await.expect("first delivery");
    assert_eq!(copies.len(), 1);
    let mut admin_a = client::admin(channel(&engines.a).await, operator);
    admin_a
        .revoke_certs(pb::RevokeCertsRequest {
            request_id: "revoke-1".into(),
            consumer_id: "alice".into(),
            cert_serial: alice.certificate.cert_serial.clone(),
            reason: "stolen".into(),
            every_cert: false,
        })
        .await
        .expect("revoked through a");
    let revoked_at = engines.head().await;
    engines.b.state.live.caught_up(revoked_at).await;
    let refused = player::redeem_and_download(&purchase(&second), &alice, "r2", &engines.dir.path().join("second")).await.expect_err("revoked");
    assert!(format!("{refused:#}").contains("revoked"), "{refused:#}");
    engines.stop().await;
}

/// One sealer, one sweeper: a job lease (a key in a JetStream key-value bucket that ages
/// out `JOB_LEASE_TTL` after its last renewal) is held by one engine at a time; when its
/// holder stops renewing (dies), the other takes the job over within about the ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_engine_at_a_time_runs_a_job_and_another_takes_it_over_when_it_stops() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let engines = two_engines(&server, true, false).await;
    let (a, b) = (&engines.a.state, &engines.b.state);
    assert!(a.runs_job("audit-test").await, "nobody held it: a takes it");
    assert!(!b.runs_job("audit-test").await, "a holds it");
    assert!(a.runs_job("audit-test").await, "a renews it");
    assert!(!b.runs_job("audit-test").await);
    // The engines' own sealer and sweeper: exactly one engine holds each.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for job in ["sweeper"] {
        let held: Vec<bool> = vec![a.runs_job(job).await, b.runs_job(job).await];
        assert_eq!(held.iter().filter(|held| **held).count(), 1, "{job}: {held:?}");
    }
    // a stops renewing (as a dead engine would): b takes over once the lease aged out.
    let stopped = std::time::Instant::now();
    while !b.runs_job("audit-test").await {
        assert!(stopped.elapsed() < server::JOB_LEASE_TTL * 3, "b never took the job over");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = stopped.elapsed();
    eprintln!("job taken over {} ms after its holder stopped renewing (ttl {} ms)", took.as_millis(), server::JOB_LEASE_TTL.as_millis());
    assert!(took >= server::JOB_LEASE_TTL / 2, "not before the lease ran out ({took:?})");
    assert!(!a.runs_job("audit-test").await, "a lost it");
    engines.stop().await;
}

/// A rotation of the engine key through A (the key directory shared, as the README asks the
/// operator to copy it) is taken up by B from the stream within seconds: B's next sale is
/// signed with the new key and its media published before the rotation still sell there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_key_rotated_through_one_engine_is_taken_up_by_the_other() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let engines = two_engines(&server, true, true).await;
    let old_id = engines.b.state.market.keys().key_id();
    let (previous, new_id) = gateways::common::keys::rotate_engine(&engines.keys).expect("rotate the key files");
    assert_eq!(previous, old_id);
    // Until an engine takes the new key, both sign with the old one.
    assert_eq!(engines.b.state.market.keys().key_id(), old_id);
    let operator = Credential::load(&engines.keys.join("operator.cred")).expect("operator credential");
    let mut admin_a = client::admin(channel(&engines.a).await, operator);
    let rotated =
        admin_a.rotate_engine_key(pb::RotateEngineKeyRequest { request_id: "rotate-1".into(), key_id: new_id.clone() }).await.expect("rotate through a");
    assert_eq!(rotated.into_inner().current_key_id, new_id);
    let started = std::time::Instant::now();
    while engines.b.state.market.keys().key_id() != new_id {
        assert!(started.elapsed() < Duration::from_secs(15), "B never took up the rotated key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(engines.b.state.market.keys().set.len(), 2, "B keeps the old key by id");
    let rotations = engines
        .log
        .read_from(Seq(1), 10_000)
        .await
        .expect("read")
        .iter()
        .filter(|stored| matches!(engine::wire::decode(&stored.payload).map(|recorded| recorded.event), Ok(Event::EngineKeyRotated { .. })))
        .count();
    assert_eq!(rotations, 1, "B took the key up without recording the rotation again");
    let mut at_b = engines.merchant_on(&engines.b).await;
    client::buy(&mut at_b, "after-rotation", std::slice::from_ref(&engines.media_id), None)
        .await
        .expect("a media published before the rotation sells through b");

    // The token and checkpoint keys, rotated through A, are taken up by B the same way: B's
    // access tokens name token key 2 and its seals' checkpoints are signed with the new key.
    let (_, token_id) = gateways::common::keys::rotate_token(&engines.keys).expect("rotate token.key");
    admin_a.rotate_token_key(pb::RotateTokenKeyRequest { request_id: "rotate-2".into(), key_id: token_id }).await.expect("rotate the token key through a");
    let (_, vkey) = gateways::common::keys::rotate_checkpoint(&engines.keys).expect("rotate checkpoint.key");
    admin_a.rotate_checkpoint_key(pb::RotateCheckpointKeyRequest { request_id: "rotate-3".into(), vkey: vkey.clone() }).await.expect("rotate through a");
    let started = std::time::Instant::now();
    let b_vkey = || engines.b.state.market.keys().checkpoint.as_ref().map(|signer| signer.verifier().vkey());
    while engines.b.state.market.keys().token_key_id() != token_id || b_vkey().as_deref() != Some(vkey.as_str()) {
        assert!(started.elapsed() < Duration::from_secs(15), "B never took up the rotated token and checkpoint keys");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sold = client::buy(&mut at_b, "after-token-rotation", std::slice::from_ref(&engines.media_id), None).await.expect("a sale through b");
    assert_eq!(sold.token_key_id, token_id, "B's access tokens are made under the new token key");
    let recorded: Vec<Event> = engines
        .log
        .read_from(Seq(1), 10_000)
        .await
        .expect("read")
        .iter()
        .filter_map(|stored| engine::wire::decode(&stored.payload).ok())
        .map(|r| r.event)
        .collect();
    let count = |wanted: fn(&Event) -> bool| recorded.iter().filter(|event| wanted(event)).count();
    assert_eq!(
        (count(|event| matches!(event, Event::TokenKeyRotated { .. })), count(|event| matches!(event, Event::CheckpointKeyRotated { .. }))),
        (1, 1),
        "B took the keys up without recording the rotations again"
    );
    engines.stop().await;
}
