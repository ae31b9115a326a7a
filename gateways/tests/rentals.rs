//! Rentals end to end, against the real engine and two delivery nodes over loopback: a
//! rental bought with a short window plays as often as the consumer wants within it, each
//! play issued anew on a healthy node (the slot held for the play and given back), each play
//! one usage in the royalty log however often a request is retried; after the window no play
//! is issued nor redeemed (`RentalEnded`), the node refuses the last grant, and the player's
//! copy goes. The negative controls: the very same engine Redeem that is refused after the
//! window is accepted within it; a purchase's copy stays where the rental's goes.

use engine::crypto::{self, SecretKey};
use engine::ids::ConsumerId;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use gateways::common::client::{self, MerchantClient, Upload};
use gateways::common::cred::Credential;
use gateways::node::{self, NodeArgs, RunningNode};
use gateways::player::{self, Purchase, RpcError};
use gateways::server::{self, EngineConfig};
use proto::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

mod shell;
mod support;
use shell::{json, open_market, publish, vouchsafe};

/// How long a test waits for something asynchronous (the feed, the projections).
const WAIT_MS: u64 = 10_000;
/// The rental's window: long enough for three plays in a debug build, short for the test.
const RENTAL_MS: u64 = 8_000;

async fn start_node(url: String, cred: Credential, dir: &std::path::Path) -> RunningNode {
    node::start(NodeArgs {
        connect: url,
        cred,
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: 2,
        region: "eu".into(),
        data_dir: dir.to_path_buf(),
        cache_bytes_max: 16 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node starts")
}

fn purchase_of(sale: &client::Sale, issued: Option<&pb::IssueVoucherResponse>) -> Purchase {
    let mut grant = sale.grant();
    let (node_endpoint, node_id) = match issued {
        Some(issued) => {
            grant.access_token = issued.access_token.clone();
            grant.access_expires_at_ms = issued.access_expires_at_ms;
            (issued.node_endpoint.clone(), issued.node_id.clone())
        }
        None => (sale.node_endpoint.clone(), sale.node_id.clone()),
    };
    Purchase { node_endpoint, node_id, grant, receipt: sale.receipt.clone(), rental_until_ms: sale.rental_until_ms }
}

async fn view(merchant: &mut MerchantClient, voucher_id: &str) -> pb::VoucherView {
    merchant.get_voucher(pb::GetVoucherRequest { voucher_id: voucher_id.into() }).await.expect("get voucher").into_inner()
}

/// The royalty log's usages of `media_id` (its Media totals line), once the projections
/// show `expected` (or the wait runs out: the last value seen).
async fn usages(audit: &mut client::AuditClient, media_id: &str, expected: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let totals = audit.totals(pb::TotalsRequest {}).await.expect("totals").into_inner();
        let seen = totals.lines.iter().filter(|line| line.dimension == "Media" && line.key == media_id).map(|line| line.deliveries).sum();
        if seen == expected || tokio::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Slots in use on every node, as the engine's allocation has them, once they reach
/// `expected` (or the wait runs out: the last value seen).
async fn slots_in_use(admin: &mut client::AdminClient, expected: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let stats = admin.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
        let in_use = stats.nodes.iter().map(|node| node.streams_in_use).sum();
        if in_use == expected || tokio::time::Instant::now() > deadline {
            return in_use;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rental_plays_within_its_window_each_play_counted_once_and_is_refused_after_it() {
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
    let mut admin = client::admin(channel.clone(), operator.clone());
    let mut audit = client::audit(channel.clone(), operator.clone());
    let merchant_cred = client::credential_of(
        catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect("merchant").into_inner(),
    )
    .expect("cred");
    let mut merchant = client::merchant(channel.clone(), merchant_cred);
    let mut node_creds = Vec::new();
    for n in ["n-1", "n-2"] {
        let request = pb::RegisterNodeCredentialRequest { request_id: n.into(), region: "eu".into(), slots_max: 2 };
        node_creds.push(client::credential_of(catalog.register_node_credential(request).await.expect("node").into_inner()).expect("cred"));
    }
    let nodes = [
        start_node(engine.url(), node_creds[0].clone(), &dir.path().join("node-1")).await,
        start_node(engine.url(), node_creds[1].clone(), &dir.path().join("node-2")).await,
    ];
    let song = (0..50_000u32).map(|i| (i.wrapping_mul(31) % 251) as u8).collect::<Vec<u8>>();
    let upload = Upload {
        title: "Song".into(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 180_000,
        price_minor: 400,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        content: song.clone(),
        preview_clip: Vec::new(),
        image_descriptor: "cover.jpg".into(),
    };
    let media_id = client::publish(&mut catalog, "pub-1", &engine_public, upload).await.expect("publish").media_id;
    let alice = ConsumerId::new("alice");
    let home = player::passport_dir(&dir.path().join("player"), &alice).expect("dir");
    player::create_passport(&mut catalog, "cert-alice", &alice, &engine_public).await.expect("passport").save(&home).expect("saved");
    let passport = player::Passport::load(&home).expect("loaded");

    // The bounds are the engine's: a window below them is refused, and the operator lowers them.
    let too_short = client::buy_with(&mut merchant, "short", std::slice::from_ref(&media_id), "high", None, RENTAL_MS).await.expect_err("below the bounds");
    assert_eq!(too_short.code(), Code::InvalidArgument, "{too_short:?}");
    assert!(too_short.message().contains("rental"), "{too_short:?}");
    let set = pb::SetConfigRequest { request_id: "rent-min".into(), key: "rental.window_ms_min".into(), value: "1000".into() };
    admin.set_config(set).await.expect("the operator sets the bounds");

    let before = engine::clock::Clock::now(&engine::clock::SystemClock).0;
    let sale = client::buy_with(&mut merchant, "rent-1", std::slice::from_ref(&media_id), "high", None, RENTAL_MS).await.expect("rented");
    let rental_until_ms = sale.rental_until_ms;
    assert!(rental_until_ms >= before + RENTAL_MS as i64, "the window starts at Authorize: {rental_until_ms}");
    assert!(sale.access_expires_at_ms <= rental_until_ms, "no grant outlives the rental");
    let reserved = view(&mut merchant, &sale.voucher_id).await;
    assert_eq!((reserved.rental_until_ms, reserved.status.as_str()), (rental_until_ms, "Issued"));
    assert_eq!(slots_in_use(&mut admin, 1).await, 1, "the first play holds a slot");

    // Play 1, as the player does it.
    let out = home.clone();
    let copies = player::redeem_and_download(&purchase_of(&sale, None), &passport, "play-1", &out).await.expect("play 1");
    assert!(copies.iter().all(|copy| copy.decrypt_ok && copy.voucher_delivered), "{copies:?}");
    let copy = copies[0].path.clone();
    assert_eq!(engine::media::parse_delivered_copy(&std::fs::read(&copy).expect("written")).expect("a copy").content, song.as_slice());
    let after_one = view(&mut merchant, &sale.voucher_id).await;
    assert_eq!((after_one.status.as_str(), after_one.rental_plays, after_one.node_id.as_str()), ("Authorized", 1, ""), "{after_one:?}");
    assert_eq!(slots_in_use(&mut admin, 0).await, 0, "the play's slot came back");
    assert_eq!(usages(&mut audit, &media_id, 1).await, 1);
    assert!(player::rentals::purge_ended_rentals(&out, engine::clock::Clock::now(&engine::clock::SystemClock).0).expect("purge").is_empty());
    assert!(copy.exists(), "within the window the copy stays");

    // Play 2, issued anew on another healthy node (the first drained), its Redeem retried.
    let first_node = sale.node_id.clone();
    admin.drain_node(pb::NodeAdminRequest { request_id: "drain-1".into(), node_id: first_node.clone() }).await.expect("drained");
    let issued = merchant
        .issue_voucher(pb::IssueVoucherRequest { request_id: "play-2-issue".into(), voucher_id: sale.voucher_id.clone(), region: String::new() })
        .await
        .expect("play 2 issued")
        .into_inner();
    assert_ne!(issued.node_id, first_node, "a play goes to any healthy node");
    assert_eq!(issued.rental_until_ms, rental_until_ms);
    assert_eq!(slots_in_use(&mut admin, 1).await, 1, "play 2 holds a slot");
    assert!(nodes.iter().any(|node| node.node_id() == issued.node_id), "one of ours");
    let receipt = SecretKey::from_bytes(sale.receipt.as_slice().try_into().expect("32 bytes"));
    let subject = crypto::ProofConsumer::new(alice.as_str(), &passport.certificate.cert_serial, &passport.certificate.public_key_der);
    let node_cred = node_creds.iter().find(|cred| cred.id == issued.node_id).expect("its credential").clone();
    let mut as_node = client::delivery(channel.clone(), node_cred);
    // What a node sends for a player's Redeem (the request id in the player's namespace).
    let engine_redeem = |request_id: &str, challenge: [u8; 32], node_id: &str| pb::RedeemRequest {
        request_id: node::player_request_id(&sale.voucher_id, request_id),
        voucher_id: sale.voucher_id.clone(),
        cert_serial: passport.certificate.cert_serial.clone(),
        consumer_id: alice.to_string(),
        challenge: challenge.to_vec(),
        proof: crypto::receipt_proof(&receipt, &sale.voucher_id, node_id, &challenge, &subject).to_vec(),
        recover: false,
    };
    as_node.redeem(engine_redeem("play-2", [1; 32], &issued.node_id)).await.expect("play 2 redeemed within the window");
    as_node.redeem(engine_redeem("play-2", [2; 32], &issued.node_id)).await.expect("the retry is answered again");
    let copies = player::redeem_and_download(&purchase_of(&sale, Some(&issued)), &passport, "play-2", &out).await.expect("play 2");
    assert!(copies.iter().all(|copy| copy.decrypt_ok && copy.voucher_delivered), "{copies:?}");
    assert_eq!(view(&mut merchant, &sale.voucher_id).await.rental_plays, 2);
    assert_eq!(usages(&mut audit, &media_id, 2).await, 2, "two plays, two usages: the retried Redeem is one");
    assert_eq!(slots_in_use(&mut admin, 0).await, 0);

    // Play 3 is issued within the window and redeemed after it.
    let issued = merchant
        .issue_voucher(pb::IssueVoucherRequest { request_id: "play-3-issue".into(), voucher_id: sale.voucher_id.clone(), region: String::new() })
        .await
        .expect("play 3 issued within the window")
        .into_inner();
    assert!(issued.access_expires_at_ms <= rental_until_ms, "the grant ends with the rental");
    let wait_ms = rental_until_ms + 300 - engine::clock::Clock::now(&engine::clock::SystemClock).0;
    assert!(wait_ms > 300, "the three plays took longer than the window ({RENTAL_MS} ms): raise RENTAL_MS");
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait_ms).expect("positive"))).await;

    let head = log.last_seq().await.expect("head");
    let node_cred = node_creds.iter().find(|cred| cred.id == issued.node_id).expect("its credential").clone();
    let ended = client::delivery(channel.clone(), node_cred).redeem(engine_redeem("play-3", [3; 32], &issued.node_id)).await.expect_err("after the window");
    assert_eq!(ended.code(), Code::FailedPrecondition, "{ended:?}");
    assert!(ended.message().contains("rental ended"), "{ended:?}");
    let refused = player::redeem_and_download(&purchase_of(&sale, Some(&issued)), &passport, "play-3", &out).await.expect_err("the grant expired");
    assert_eq!(refused.downcast_ref::<RpcError>().map(|rpc| (rpc.call, rpc.code)), Some(("Challenge", Code::PermissionDenied)), "{refused:#}");
    let reissue = merchant
        .issue_voucher(pb::IssueVoucherRequest { request_id: "play-4-issue".into(), voucher_id: sale.voucher_id.clone(), region: String::new() })
        .await
        .expect_err("no play after the window");
    assert!(reissue.code() == Code::FailedPrecondition && reissue.message().contains("rental ended"), "{reissue:?}");
    assert_eq!(log.last_seq().await.expect("head"), head, "refusals write nothing");
    assert_eq!(usages(&mut audit, &media_id, 2).await, 2, "nothing after the window counts");

    // The player keeps the copy no longer than the window; a purchase's copy stays.
    let bought = client::buy(&mut merchant, "buy-1", std::slice::from_ref(&media_id), None).await.expect("bought");
    assert_eq!(bought.rental_until_ms, 0);
    let kept = player::redeem_and_download(&purchase_of(&bought, None), &passport, "buy-1", &out).await.expect("bought and fetched");
    let deleted = player::rentals::purge_ended_rentals(&out, engine::clock::Clock::now(&engine::clock::SystemClock).0).expect("purge");
    assert_eq!(deleted, vec![copy.clone()]);
    assert!(!copy.exists() && kept[0].path.exists(), "the rental's copy went, the purchase's stayed");

    // The auditor's replay from sequence 1 recounts the same usages and verifies the chain:
    // the two plays and the purchase.
    assert_eq!(usages(&mut audit, &media_id, 3).await, 3);
    let mut replay = audit.replay(pb::ReplayRequest { pinned_seal_hash: Vec::new() }).await.expect("replay").into_inner();
    let mut last = None;
    while let Some(progress) = replay.message().await.expect("progress") {
        last = Some(progress);
    }
    let last = last.expect("a last message");
    assert!(last.done && last.chain_ok, "{last:?}");
    assert_eq!(last.royalty_entries, 3, "{last:?}");

    for node in nodes {
        node.shutdown().await;
    }
    engine.shutdown().await.expect("graceful shutdown");
}

/// The same from a shell, as the README shows it: `merchant buy --rental-ms`, `player fetch`
/// per play with `merchant reissue --sale` between, the refusal (exit 1) after the window,
/// and `player purge` deleting the rental's copy.
#[test]
fn the_cli_rents_plays_twice_and_is_refused_after_the_window() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let (_serve, url, _) = open_market(root, &[], &[]);
    let _node = shell::start_node(root, &url);
    let media_id = publish(root, &url, "song.bin", &(0..40_000u32).map(|i| (i * 7 % 256) as u8).collect::<Vec<u8>>());
    let passport = [
        "player",
        "passport",
        "--connect",
        &url,
        "--cred",
        "keys/operator.cred",
        "--engine-key",
        "keys/engine.pub.pem",
        "--consumer",
        "alice",
        "--data-dir",
        "players",
        "--json",
    ];
    assert_eq!(json(vouchsafe().args(passport), root).0, 0);
    let (code, config) =
        json(vouchsafe().args(["admin", "config", "set", "rental.window_ms_min", "1000", "--connect", &url, "--keys", "keys", "--json"]), root);
    assert_eq!(code, 0, "{config}");
    // The shop's own windows: 5 to 10 seconds (within the operator's).
    let (code, window) = json(
        vouchsafe().args(["merchant", "rental-window", "--min-ms", "5000", "--max-ms", "10000", "--connect", &url, "--cred", "shop.cred", "--json"]),
        root,
    );
    assert_eq!((code, window["changed"].as_bool()), (0, Some(true)), "{window}");

    let rental_ms = "6000";
    let buy = ["merchant", "buy", "--media", &media_id, "--rental-ms", rental_ms, "--connect", &url, "--cred", "shop.cred", "--out", "sale.json", "--json"];
    // The node heartbeats before the allocator may choose it; retry the purchase briefly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sale = loop {
        let (code, sale) = json(vouchsafe().args(buy), root);
        if code == 0 {
            break sale;
        }
        assert!(Instant::now() < deadline, "no rental succeeded: {sale}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let rental_until_ms = sale["rental_until_ms"].as_i64().expect("a rental's end");
    let voucher_id = sale["voucher_id"].as_str().expect("voucher id").to_string();
    let fetch = ["player", "fetch", "--sale", "sale.json", "--consumer", "alice", "--data-dir", "players", "--json"];
    let reissue = ["merchant", "reissue", "--voucher", &voucher_id, "--sale", "sale.json", "--connect", &url, "--cred", "shop.cred", "--json"];
    let (code, first) = json(vouchsafe().args(fetch), root);
    assert_eq!((code, &first["decrypt_ok"]), (0, &serde_json::json!(true)), "{first}");
    let copy = root.join(first["copies"][0]["path"].as_str().expect("path"));
    let (code, reissued) = json(vouchsafe().args(reissue), root);
    assert_eq!(code, 0, "the next play is issued: {reissued}");
    let (code, second) = json(vouchsafe().args(fetch), root);
    assert_eq!((code, &second["decrypt_ok"]), (0, &serde_json::json!(true)), "{second}");
    let (code, got) = json(vouchsafe().args(["merchant", "get", "--voucher", &voucher_id, "--connect", &url, "--cred", "shop.cred", "--json"]), root);
    assert_eq!((code, &got["rental_plays"], &got["status"]), (0, &serde_json::json!(2), &serde_json::json!("Authorized")), "{got}");
    assert!(copy.exists(), "within the window the copy stays");

    let now_ms = engine::clock::Clock::now(&engine::clock::SystemClock).0;
    assert!(now_ms < rental_until_ms, "the two plays took longer than the window ({rental_ms} ms)");
    std::thread::sleep(Duration::from_millis(u64::try_from(rental_until_ms + 300 - now_ms).expect("positive")));
    let (code, refused) = json(vouchsafe().args(reissue), root);
    assert_eq!((code, &refused["refused"]), (1, &serde_json::json!("FailedPrecondition")), "{refused}");
    assert!(refused.to_string().contains("rental ended"), "{refused}");
    let (code, purged) = json(vouchsafe().args(["player", "purge", "--consumer", "alice", "--data-dir", "players", "--json"]), root);
    assert_eq!(code, 0, "{purged}");
    assert_eq!(purged["deleted"].as_array().map(Vec::len), Some(1), "{purged}");
    assert!(!copy.exists(), "the rental's copy is not kept after the window");
}

/// A merchant offers its own rental windows within the operator's (issue 28 item 5): a
/// window outside the merchant's is refused though the operator's bounds allow it, one
/// inside both is reserved; another merchant, with no window of its own, has the
/// operator's bounds (the control), and so has the first once it sets 0..0 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchants_own_rental_windows_bound_its_rentals_within_the_operators() {
    let fx = support::start().await;
    let (channel, engine_public) = (fx.channel.clone(), fx.engine_public.clone());
    let mut catalog = client::catalog(channel.clone(), fx.operator.clone());
    let mut merchants = Vec::new();
    for name in ["Shop", "Other"] {
        let cred = client::credential_of(
            catalog.register_merchant(pb::RegisterMerchantRequest { request_id: format!("m-{name}"), name: name.into() }).await.expect("merchant").into_inner(),
        )
        .expect("cred");
        merchants.push(client::merchant(channel.clone(), cred));
    }
    let upload = Upload {
        title: "Film".into(),
        artist: "Studio".into(),
        authors: vec!["Director".into()],
        length_ms: 5_400_000,
        price_minor: 1_000,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        content: vec![7; 10_000],
        preview_clip: Vec::new(),
        image_descriptor: String::new(),
    };
    let media_id = client::publish(&mut catalog, "pub-1", &engine_public, upload).await.expect("publish").media_id;
    let hour = 3_600_000u64;
    let rent = |request_id: &str, rental_ms: u64| pb::ReserveRequest {
        request_id: request_id.into(),
        media_ids: vec![media_id.clone()],
        rendition: "high".into(),
        ttl_ms: 60_000,
        rental_ms,
        ..Default::default()
    };
    let set = |request_id: &str, min: u64, max: u64| pb::SetRentalWindowRequest { request_id: request_id.into(), window_ms_min: min, window_ms_max: max };
    let answer = merchants[0].set_rental_window(set("w-1", 2 * hour, 3 * hour)).await.expect("the merchant's own window").into_inner();
    assert!(answer.changed);
    assert!(
        !merchants[0].set_rental_window(set("w-2", 2 * hour, 3 * hour)).await.expect("again").into_inner().changed,
        "the same window again changes nothing"
    );
    // The operator's bounds (1 h to 7 days by default) allow an hour; the merchant's do not.
    let refused = merchants[0].reserve(rent("r-1", hour)).await.expect_err("outside the merchant's window");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("7200000..=10800000"), "{}", refused.message());
    merchants[0].reserve(rent("r-2", 5 * hour / 2)).await.expect("inside both");
    let refused = merchants[0].reserve(rent("r-3", 4 * hour)).await.expect_err("past the merchant's window");
    assert_eq!(refused.code(), Code::InvalidArgument);
    // The control: another merchant rents for an hour under the operator's bounds.
    merchants[1].reserve(rent("r-4", hour)).await.expect("the operator's bounds");
    // A window beyond the operator's is cut to the operator's: 30 days are not rentable at 7 days' bound.
    merchants[0].set_rental_window(set("w-3", hour, 30 * 24 * hour)).await.expect("a wide window");
    assert_eq!(merchants[0].reserve(rent("r-5", 8 * 24 * hour)).await.expect_err("past the operator's").code(), Code::InvalidArgument);
    merchants[0].set_rental_window(set("w-4", 0, 0)).await.expect("back to the operator's bounds");
    merchants[0].reserve(rent("r-6", hour)).await.expect("the operator's bounds again");
    fx.engine.shutdown().await.expect("shutdown");
}
