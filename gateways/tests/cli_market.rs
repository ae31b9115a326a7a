//! The market from a shell, as CLI.md describes it: `keys init`, `serve`, `keys issue`,
//! `node`, `publish`, `merchant buy`, `player passport`, `player fetch`, then
//! `demo --connect` against the same engine and SIGTERM for a graceful stop. Every
//! process is started by this test and stopped by its pid.

use std::process::Command;
use std::time::{Duration, Instant};

mod shell;
use shell::{free_port, json, open_market, publish, start_node_at, vouchsafe};

#[test]
fn serve_node_publish_buy_fetch_then_demo_connect_and_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let metrics_port = free_port();
    let (mut serve, url, merchant) = open_market(root, &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")], &[("VOUCHSAFE_SEAL_INTERVAL_MS", "300")]);
    let (_node, node_port) = start_node_at(root, &url);

    let content: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let media_id = publish(root, &url, "song.bin", &content);
    let (code, passport) = json(
        vouchsafe().args([
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
        ]),
        root,
    );
    assert_eq!(code, 0, "{passport}");

    // The node heartbeats before the allocator may choose it; retry the purchase briefly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sale = loop {
        let (code, sale) =
            json(vouchsafe().args(["merchant", "buy", "--media", &media_id, "--connect", &url, "--cred", "shop.cred", "--out", "sale.json", "--json"]), root);
        if code == 0 {
            break sale;
        }
        assert!(Instant::now() < deadline, "no purchase succeeded: {sale}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sale["node_endpoint"], format!("http://127.0.0.1:{node_port}"));
    // `--out` wrote the sale, receipt included, for its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(root.join("sale.json")).expect("sale.json").permissions().mode() & 0o777, 0o600);
    }
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("sale.json")).expect("read")).expect("JSON");
    assert_eq!(written, sale, "the file holds what --json printed");
    let (code, fetched) = json(vouchsafe().args(["player", "fetch", "--sale", "sale.json", "--consumer", "alice", "--data-dir", "players", "--json"]), root);
    assert_eq!(code, 0, "{fetched}");
    assert_eq!(fetched["decrypt_ok"], true);
    let path = fetched["copies"][0]["path"].as_str().expect("path");
    let copy = std::fs::read(root.join(path)).expect("delivered copy");
    assert_eq!(engine::media::parse_delivered_copy(&copy).expect("a delivered copy").content, content.as_slice(), "the player holds the published content");
    let (code, inspected) = json(vouchsafe().args(["inspect", path, "--keys", "keys", "--json"]), root);
    assert_eq!(code, 0, "{inspected}");
    assert_eq!(inspected["transaction"]["signature_ok"], true, "{inspected}");
    assert_eq!(inspected["transaction"]["voucher_id"], sale["voucher_id"], "{inspected}");
    // Delivered at most once: the same sale again is refused with exit code 1.
    let (code, again) = json(vouchsafe().args(["player", "fetch", "--sale", "sale.json", "--consumer", "alice", "--data-dir", "players", "--json"]), root);
    assert_eq!(code, 1, "{again}");
    assert_eq!(again["refused"], "FailedPrecondition");
    // The merchant's reissue of the delivered sale brings sale.json up to date in place
    // (within the window: the same node and token), keeping the receipt and 0600; the
    // player recovers the lost copy with it.
    std::fs::remove_file(root.join(path)).expect("the copy is lost");
    let voucher_id = sale["voucher_id"].as_str().expect("voucher id");
    let (code, reissued) = json(
        vouchsafe().args(["merchant", "reissue", "--voucher", voucher_id, "--sale", "sale.json", "--connect", &url, "--cred", "shop.cred", "--json"]),
        root,
    );
    assert_eq!((code, &reissued["access_token"]), (0, &sale["access_token"]), "{reissued}");
    let updated: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("sale.json")).expect("read")).expect("JSON");
    assert_eq!((&updated["receipt"], &updated["node_endpoint"]), (&sale["receipt"], &reissued["node_endpoint"]), "{updated}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(root.join("sale.json")).expect("sale.json").permissions().mode() & 0o777, 0o600);
    }
    let (code, recovered) =
        json(vouchsafe().args(["player", "fetch", "--sale", "sale.json", "--consumer", "alice", "--data-dir", "players", "--recover", "--json"]), root);
    assert_eq!((code, &recovered["decrypt_ok"]), (0, &serde_json::json!(true)), "{recovered}");

    // Points: the operator and the shop credit alice; the shop spends them only with her
    // authorization, once; alice reads her balance with her passport.
    let (code, topped) = json(
        vouchsafe().args([
            "points",
            "top-up",
            "--account",
            "alice",
            "--amount",
            "1000",
            "--reference",
            "inv-1",
            "--connect",
            &url,
            "--cred",
            "keys/operator.cred",
            "--json",
        ]),
        root,
    );
    assert_eq!((code, topped["available"].as_u64()), (0, Some(1000)), "{topped}");
    let (code, sold) = json(
        vouchsafe().args(["points", "top-up", "--account", "alice", "--amount", "50", "--currency", "EUR", "--connect", &url, "--cred", "shop.cred", "--json"]),
        root,
    );
    assert_eq!((code, sold["available"].as_u64(), sold["by"].as_str()), (0, Some(1050), Some("merchant")), "{sold}");
    let (code, refused) = json(
        vouchsafe().args(["merchant", "buy", "--media", &media_id, "--points-account", "alice", "--connect", &url, "--cred", "shop.cred", "--json"]),
        root,
    );
    assert_eq!((code, refused["refused"].as_str()), (1, Some("PermissionDenied")), "no consent: {refused}");
    let shop_id = merchant["id"].as_str().expect("the shop's id");
    let (code, authorized) = json(
        vouchsafe().args([
            "player",
            "authorize-spend",
            "--consumer",
            "alice",
            "--data-dir",
            "players",
            "--merchant",
            shop_id,
            "--amount",
            "500",
            "--media",
            &media_id,
            "--out",
            "spend.json",
            "--json",
        ]),
        root,
    );
    assert_eq!((code, authorized["account_id"].as_str()), (0, Some("alice")), "{authorized}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(root.join("spend.json")).expect("spend.json").permissions().mode() & 0o777, 0o600);
    }
    let buy_with_consent = ["merchant", "buy", "--media", &media_id, "--spend-authorization", "spend.json", "--connect", &url, "--cred", "shop.cred", "--json"];
    let (code, paid) = json(vouchsafe().args(buy_with_consent), root);
    assert_eq!(code, 0, "{paid}");
    let (code, refused) = json(vouchsafe().args(buy_with_consent), root);
    assert_eq!((code, refused["refused"].as_str()), (1, Some("PermissionDenied")), "a consent is good once: {refused}");
    let (code, points) = json(vouchsafe().args(["player", "points", "--consumer", "alice", "--data-dir", "players", "--connect", &url, "--json"]), root);
    assert_eq!(code, 0, "{points}");
    let (balance, available) = (points["balance"].as_u64().expect("balance"), points["available"].as_u64().expect("available"));
    assert!(balance < 1050 && balance == available && points["held"] == 0, "the purchase was paid from alice's points: {points}");

    // The operator's administration.
    let (code, stats) = json(vouchsafe().args(["admin", "stats", "--connect", &url, "--keys", "keys", "--json"]), root);
    assert_eq!(code, 0, "{stats}");
    for key in ["uptime_s", "vouchers_issued", "nodes", "projection_lag", "events_per_s"] {
        assert!(stats.get(key).is_some(), "admin stats --json lacks {key}: {stats}");
    }
    assert_eq!(stats["vouchers_issued"], 2, "the card sale and the points sale");
    let node = &stats["nodes"][0];
    for key in ["node_id", "streams_max", "streams_in_use", "cache_items", "cache_accesses", "cache_misses"] {
        assert!(node.get(key).is_some(), "a node of admin stats lacks {key}: {node}");
    }
    assert_eq!(node["streams_max"], 64);
    let node_id = node["node_id"].as_str().expect("node id").to_string();
    let (code, config) = json(vouchsafe().args(["admin", "config", "set", "access.ttl_ms", "120000", "--connect", &url, "--keys", "keys", "--json"]), root);
    assert_eq!(code, 0, "{config}");
    let entry = config["config"].as_array().expect("entries").iter().find(|e| e["key"] == "access.ttl_ms").expect("the key").clone();
    assert_eq!((entry["value"].as_u64(), entry["set"].as_bool()), (Some(120_000), Some(true)));
    let (code, refused) = json(vouchsafe().args(["admin", "config", "set", "no.such.key", "1", "--connect", &url, "--keys", "keys", "--json"]), root);
    assert_eq!((code, refused["refused"].as_str()), (1, Some("InvalidArgument")), "{refused}");
    // Licensed duplication from the shell: the operator certifies the duplicator's device
    // like a consumer; the merchant places an order, binds a unit to the device (the key
    // comes back wrapped for the device only) and completes it.
    let (code, device) = json(
        vouchsafe().args([
            "player",
            "passport",
            "--connect",
            &url,
            "--cred",
            "keys/operator.cred",
            "--engine-key",
            "keys/engine.pub.pem",
            "--consumer",
            "press-1",
            "--data-dir",
            "players",
            "--json",
        ]),
        root,
    );
    assert_eq!(code, 0, "{device}");
    let device_cert = device["cert_serial"].as_str().expect("the device certificate").to_string();
    let merchant_args = ["--connect", url.as_str(), "--cred", "shop.cred", "--json"];
    let (code, order) = json(vouchsafe().args(["merchant", "order", "place", "--media", &media_id, "--units", "2"]).args(merchant_args), root);
    assert_eq!(code, 0, "{order}");
    let order_id = order["order_id"].as_str().expect("order id").to_string();
    let bind = ["merchant", "order", "bind", "--order", order_id.as_str(), "--unit", "0", "--device", "press-1", "--device-cert"];
    let (code, refused) = json(vouchsafe().args(bind).arg("c-not-a-certificate").args(merchant_args), root);
    assert_eq!((code, refused["refused"].as_str()), (1, Some("NotFound")), "an uncertified device: {refused}");
    let (code, bound) = json(vouchsafe().args(bind).arg(&device_cert).args(merchant_args), root);
    assert_eq!(code, 0, "{bound}");
    let wrapped = hex::decode(bound["wrapped_media_key"].as_str().expect("the wrapped key")).expect("hex");
    let dir_of = |answer: &serde_json::Value| root.join(answer["dir"].as_str().expect("the passport's directory"));
    let press = gateways::player::Passport::load(&dir_of(&device)).expect("the device's passport");
    let alice = gateways::player::Passport::load(&dir_of(&passport)).expect("alice's passport");
    assert!(engine::crypto::unwrap_key(&press.private, &wrapped).is_ok(), "the device opens its unit's key");
    assert!(engine::crypto::unwrap_key(&alice.private, &wrapped).is_err(), "no other key does");
    let (code, completed) = json(vouchsafe().args(["merchant", "order", "complete", "--order", &order_id, "--unit", "0"]).args(merchant_args), root);
    assert_eq!((code, completed["completed"].as_bool()), (0, Some(true)), "{completed}");
    let (code, orders) = json(vouchsafe().args(["merchant", "order", "list"]).args(merchant_args), root);
    assert_eq!(code, 0, "{orders}");
    let listed = &orders["orders"][0];
    assert_eq!(
        (&listed["order_id"], &listed["units"], &listed["units_bound"], &listed["units_completed"]),
        (&order["order_id"], &serde_json::json!(2), &serde_json::json!(1), &serde_json::json!(1)),
        "{orders}"
    );

    let (code, drained) = json(vouchsafe().args(["admin", "node", "drain", &node_id, "--connect", &url, "--keys", "keys", "--json"]), root);
    assert_eq!((code, drained["status"].as_str()), (0, Some("drained")), "{drained}");
    let (code, refused) = json(vouchsafe().args(["merchant", "buy", "--media", &media_id, "--connect", &url, "--cred", "shop.cred", "--json"]), root);
    assert_eq!((code, refused["refused"].as_str()), (1, Some("ResourceExhausted")), "a drained node gets no new work: {refused}");
    // A merchant credential may not administer.
    std::fs::create_dir(root.join("merchant-keys")).expect("mkdir");
    std::fs::copy(root.join("shop.cred"), root.join("merchant-keys/operator.cred")).expect("copy");
    let (code, refused) = json(vouchsafe().args(["admin", "stats", "--connect", &url, "--keys", "merchant-keys", "--json"]), root);
    assert_eq!((code, refused["refused"].as_str()), (1, Some("PermissionDenied")), "{refused}");

    // The demo drives the same engine.
    let (code, summary) = json(vouchsafe().args(["demo", "--connect", &url, "--keys", "keys", "--data-dir", "demo", "--vouchers", "20", "--json"]), root);
    assert_eq!(code, 0, "{summary}");
    assert!(summary["delivered"].as_u64().expect("delivered") > 0);
    assert_eq!(summary["decrypt_ok"], summary["delivered"]);
    assert_eq!(summary["audit_ok"], true);

    // The metrics endpoint reports what happened.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics port");
    std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).expect("response");
    assert!(text.contains("vouchsafe_requests_ok_total"), "{text}");
    assert!(text.contains("vouchsafe_rejections_total{code=\"FailedPrecondition\"}"), "the refused redemption is counted: {text}");
    assert!(text.contains("vouchsafe_projection_lag_events"), "{text}");
    assert!(text.contains("vouchsafe_node_slots_in_use"), "{text}");

    // SIGTERM: a graceful stop with exit code 0.
    let pid = serve.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serve.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "serve exits 0 after SIGTERM: {status:?}");

    // An auditor replays what the engine wrote, from the data directory alone.
    let (code, audit) = json(vouchsafe().args(["audit", "replay", "--data-dir", "engine", "--keys", "keys", "--json"]), root);
    assert_eq!(code, 0, "{audit}");
    assert_eq!(audit["chain_ok"], true);
    assert_eq!(audit["state_digest"].as_str().map(str::len), Some(64));
}
