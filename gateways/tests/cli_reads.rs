//! The read commands from a shell, end to end with --json (issue 23 items 1 and 3):
//! `merchant list` by set, `merchant statement`, `catalog search`, `admin ledger`,
//! `admin parties` and `admin points` against `serve` (whose projections live in their
//! store), with the exit codes CLI.md gives: 1 for a refusal, 2 for a malformed flag.
//! Every process is started by this test and stopped by its pid.

mod shell;
use shell::{free_port, json, open_market, vouchsafe};

fn this_month() -> String {
    let now_ms = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis()).expect("ms");
    projections::royalty_log::month_of(now_ms)
}

#[test]
fn merchant_list_statement_catalog_search_and_the_operators_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let (_serve, url, shop) = open_market(root, &["--metrics-listen", &format!("127.0.0.1:{}", free_port())], &[]);
    let merchant = |args: &[&str]| {
        let mut command = vouchsafe();
        command.arg("merchant").args(args).args(["--connect", &url, "--cred", "shop.cred", "--json"]);
        json(&mut command, root)
    };
    let admin = |args: &[&str]| {
        let mut command = vouchsafe();
        command.arg("admin").args(args).args(["--connect", &url, "--keys", "keys", "--json"]);
        json(&mut command, root)
    };

    std::fs::write(root.join("song.bin"), (0..50_000u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>()).expect("write song");
    let (code, published) = json(
        vouchsafe().args([
            "publish",
            "--connect",
            &url,
            "--cred",
            "keys/operator.cred",
            "--engine-key",
            "keys/engine.pub.pem",
            "--title",
            "Blue Monday",
            "--artist",
            "New Order",
            "song.bin",
            "--json",
        ]),
        root,
    );
    assert_eq!(code, 0, "{published}");
    let media = published["media"][0]["media_id"].as_str().expect("media id").to_string();

    // Two reservations, one of them paid.
    let (code, first) = merchant(&["reserve", "--media", &media]);
    assert_eq!(code, 0, "{first}");
    let (code, second) = merchant(&["reserve", "--media", &media]);
    assert_eq!(code, 0, "{second}");
    let (code, paid) = merchant(&["authorize", "--voucher", second["voucher_id"].as_str().expect("id")]);
    assert_eq!(code, 0, "{paid}");
    let (code, all) = merchant(&["list"]);
    assert_eq!(code, 0, "{all}");
    let listed: Vec<&str> = all["vouchers"].as_array().expect("vouchers").iter().map(|v| v["voucher_id"].as_str().expect("id")).collect();
    assert_eq!(listed, [second["voucher_id"].as_str().expect("id"), first["voucher_id"].as_str().expect("id")], "newest first: {all}");
    assert_eq!(all["next_cursor"], "", "nothing follows");
    let (code, pending) = merchant(&["list", "--set", "pending"]);
    assert_eq!((code, pending["vouchers"].as_array().map(Vec::len)), (0, Some(1)), "{pending}");
    assert_eq!(pending["vouchers"][0]["voucher_id"], first["voucher_id"]);
    let (code, undelivered) = merchant(&["list", "--set", "undelivered"]);
    assert_eq!((code, undelivered["vouchers"][0]["status"].as_str()), (0, Some("Authorized")), "{undelivered}");
    let (code, page) = merchant(&["list", "--limit", "1"]);
    assert_eq!((code, page["vouchers"].as_array().map(Vec::len)), (0, Some(1)));
    let (code, rest) = merchant(&["list", "--cursor", page["next_cursor"].as_str().expect("a cursor")]);
    assert_eq!((code, rest["vouchers"][0]["voucher_id"].clone()), (0, first["voucher_id"].clone()), "the cursor goes on: {rest}");

    let (code, statement) = merchant(&["statement", "--period", &this_month()]);
    assert_eq!(code, 0, "{statement}");
    let eur = &statement["currencies"][0];
    assert_eq!((eur["currency"].as_str(), eur["sales"].as_u64(), eur["sold_minor"].as_u64()), (Some("EUR"), Some(1), Some(99)), "{statement}");
    let clearing = eur["postings"].as_array().expect("postings").iter().find(|p| p["kind"] == "merchant_clearing").expect("clearing").clone();
    assert_eq!(clearing["net_minor"].as_i64(), Some(-99));
    // A malformed period is a usage error (2); a refusal of the engine would be 1.
    let status =
        vouchsafe().args(["merchant", "statement", "--period", "2026-13", "--connect", &url, "--cred", "shop.cred"]).current_dir(root).output().expect("run");
    assert_eq!(status.status.code(), Some(2), "{}", String::from_utf8_lossy(&status.stderr));

    let search = |text: &str| {
        let mut command = vouchsafe();
        command.args(["catalog", "search", text, "--connect", &url, "--cred", "shop.cred", "--json"]);
        json(&mut command, root)
    };
    let (code, found) = search("monday");
    assert_eq!((code, found["items"][0]["media_id"].as_str()), (0, Some(media.as_str())), "{found}");
    assert_eq!((found["items"][0]["artist"].as_str(), found["items"][0]["price_minor"].as_u64()), (Some("New Order"), Some(99)));
    let (code, by_artist) = search("NEW ORDER");
    assert_eq!((code, by_artist["items"].as_array().map(Vec::len)), (0, Some(1)));
    let (code, nothing) = search("no such title");
    assert_eq!((code, nothing["items"].as_array().map(Vec::len)), (0, Some(0)));

    let (code, ledger) = admin(&["ledger"]);
    assert_eq!((code, ledger["sum_minor"].as_i64()), (0, Some(0)), "{ledger}");
    assert!(ledger["lines"].as_array().is_some_and(|lines| lines.len() >= 2), "{ledger}");
    let (code, parties) = admin(&["parties", "--kind", "merchant"]);
    assert_eq!(code, 0, "{parties}");
    assert_eq!(parties["parties"][0]["id"], shop["id"]);
    assert_eq!(parties["parties"][0]["status"], "active");
    let (code, unknown) = admin(&["points", "--account", "nobody"]);
    assert_eq!((code, unknown["refused"].as_str()), (1, Some("NotFound")), "{unknown}");
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
    let (code, topped) = json(
        vouchsafe().args(["points", "top-up", "--account", "alice", "--amount", "300", "--connect", &url, "--cred", "keys/operator.cred", "--json"]),
        root,
    );
    assert_eq!(code, 0, "{topped}");
    let (code, points) = admin(&["points", "--account", "alice"]);
    assert_eq!((code, points["balance"].as_u64(), points["available"].as_u64()), (0, Some(300), Some(300)), "{points}");
    let (code, certificates) = admin(&["parties", "--kind", "certificate"]);
    assert_eq!((code, certificates["parties"][0]["consumer_id"].as_str()), (0, Some("alice")), "{certificates}");
}
