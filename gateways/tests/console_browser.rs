//! The console in a real browser (issue 23 items 4 and 5): `serve --console-listen` after
//! a demo against it, a merchant of our own with two vouchers and another merchant with
//! one, then Debian's chromium driven by Playwright for Python (console_browser.py) signs
//! in as each role and reads every page. This test compares what the browser saw with
//! what the gRPC queries answer (read before and after the browser, and equal both times):
//! - nobody signed in is sent to /login from every page and sees no figure; a wrong secret
//!   and an unknown id get the same page;
//! - the operator's overview, nodes, catalog, merchants, vouchers, statement, royalty log,
//!   totals (with their SVG charts) and ledger show the figures GetStats, ListCatalog,
//!   ListParties, Totals, ListVouchers, GetStatement and GetLedger answer;
//! - the auditor (signed in with its credential file) sees the royalty log, totals and
//!   ledger, and gets 403 with no figure anywhere else; the merchant sees only its own
//!   vouchers and statement: another merchant's voucher is "not found" and a `merchant=`
//!   naming another shows its own list;
//! - the session cookie is HttpOnly (no script sees it), SameSite=Strict and expires;
//!   signing out ends the session.
//!
//! The operator's overview is saved as docs/console.png (the README shows it).
//!
//! Needs Debian's chromium (`/usr/bin/chromium`, or `$CHROMIUM`) and Playwright for Python
//! in the project's .venv (or `$VOUCHSAFE_PYTHON`); `scripts/test` installs both. Without
//! them the test fails and says how to install them.

use gateways::common::client;
use gateways::common::cred::Credential;
use proto::v1 as pb;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn vouchsafe() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vouchsafe"));
    command.env_remove("VOUCHSAFE_LISTEN").env_remove("RUST_LOG");
    command
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port} after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json(command: &mut Command, dir: &Path) -> Value {
    let output = command.current_dir(dir).output().expect("run vouchsafe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace holds gateways").to_path_buf()
}

/// Playwright's Python and Debian's chromium, or a failure saying how to install them.
fn browser_tools() -> (PathBuf, PathBuf) {
    let python = std::env::var_os("VOUCHSAFE_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace().join(".venv/bin/python3"));
    let chromium = std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let playwright = Command::new(&python).args(["-c", "import playwright.sync_api"]).output();
    assert!(
        playwright.is_ok_and(|output| output.status.success()),
        "Playwright for Python is missing at {}: run scripts/test (it installs it), or `python3 -m venv .venv && .venv/bin/pip install playwright` (set $VOUCHSAFE_PYTHON for another Python)",
        python.display()
    );
    assert!(
        chromium.is_file(),
        "Debian's chromium is missing at {}: run scripts/test (it installs it), or `sudo apt-get install -y chromium` (set $CHROMIUM for another path)",
        chromium.display()
    );
    (python, chromium)
}

/// What the gRPC queries answer, in the shapes the pages show.
#[derive(Debug, PartialEq)]
struct Answers {
    stats: BTreeMap<&'static str, String>,
    nodes: BTreeMap<String, (u32, u32, String, String)>,
    totals: Vec<pb::TotalsLine>,
    seals: (u64, u64, u64, Vec<(u64, String)>, String),
    ledger: pb::LedgerResponse,
    catalog: Vec<pb::CatalogItem>,
    merchants: Vec<pb::PartyView>,
    shop_vouchers: Vec<pb::VoucherListItem>,
    shop_statement: pb::StatementResponse,
}

async fn answers(url: &str, operator: &Credential, shop: &Credential, month: &str) -> Answers {
    let channel = client::connect(url, None).await.expect("connect");
    let mut admin = client::admin(channel.clone(), operator.clone());
    let mut audit = client::audit(channel.clone(), operator.clone());
    let mut merchant = client::merchant(channel, shop.clone());
    let stats = admin.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
    let totals = audit.totals(pb::TotalsRequest {}).await.expect("totals").into_inner();
    Answers {
        stats: BTreeMap::from([
            ("vouchers_pending", stats.vouchers_pending.to_string()),
            ("vouchers_undelivered", stats.vouchers_undelivered.to_string()),
            ("vouchers_delivered", stats.vouchers_delivered.to_string()),
            ("stream_events", stats.stream_events.to_string()),
            ("projection_lag", stats.projection_lag.to_string()),
            ("royalty_entries", stats.royalty_entries.to_string()),
            ("seals", stats.seals.to_string()),
            ("engine_key_id", stats.engine_key_id.clone()),
            ("engine_keys", stats.engine_key_ids.len().to_string()),
            ("certificates_issued", stats.certificates_issued.to_string()),
            ("certificates_revoked", stats.certificates_revoked.to_string()),
            ("certificates_expired", stats.certificates_expired.to_string()),
        ]),
        nodes: stats.nodes.iter().map(|n| (n.node_id.clone(), (n.streams_in_use, n.streams_max, n.status.clone(), n.region.clone()))).collect(),
        seals: (
            totals.royalty_entries,
            totals.seals_verified,
            totals.seal_faults,
            totals.newest_seals.iter().map(|seal| (seal.index + 1, hex::encode(&seal.seal_hash))).collect(),
            totals.newest_seals.first().map(|seal| seal.checkpoint_note.clone()).unwrap_or_default(),
        ),
        totals: totals.lines,
        ledger: admin.get_ledger(pb::GetLedgerRequest {}).await.expect("ledger").into_inner(),
        catalog: merchant.list_catalog(pb::ListCatalogRequest { cursor: String::new(), limit: 50 }).await.expect("catalog").into_inner().items,
        merchants: admin
            .list_parties(pb::ListPartiesRequest { kind: "merchant".into(), cursor: String::new(), limit: 50 })
            .await
            .expect("parties")
            .into_inner()
            .parties,
        shop_vouchers: merchant.list_vouchers(pb::ListVouchersRequest { limit: 50, ..Default::default() }).await.expect("vouchers").into_inner().vouchers,
        shop_statement: merchant.get_statement(pb::GetStatementRequest { period: month.into() }).await.expect("statement").into_inner(),
    }
}

const PAGES: [&str; 9] = ["/overview", "/nodes", "/catalog", "/merchants", "/vouchers", "/statement", "/royalty", "/totals", "/ledger"];

fn no_figures(seen: &Value, what: &str) {
    assert!(seen["figures"].as_object().is_some_and(|f| f.is_empty()), "{what} shows figures: {}", seen["figures"]);
    assert!(seen["rows"].as_object().is_some_and(|r| r.is_empty()), "{what} shows rows: {}", seen["rows"]);
}

fn figure<'a>(seen: &'a Value, name: &str) -> &'a str {
    seen["figures"][name].as_str().unwrap_or_else(|| panic!("no figure {name} on {}: {}", seen["url"], seen["figures"]))
}

fn cell<'a>(seen: &'a Value, row: &str, col: &str) -> &'a str {
    seen["rows"][row][col]
        .as_str()
        .unwrap_or_else(|| panic!("no {row}/{col} on {}: {:?}", seen["url"], seen["rows"].as_object().map(|r| r.keys().collect::<Vec<_>>())))
}

fn totals_cells(seen: &Value, prefix: &str, line: &pb::TotalsLine) {
    let row = format!("{prefix}/{}", line.key);
    let net = i128::from(line.amount_minor) - i128::from(line.refunded_minor);
    for (col, value) in [
        ("deliveries", line.deliveries.to_string()),
        ("units", line.units.to_string()),
        ("previews", line.previews.to_string()),
        ("amount_minor", line.amount_minor.to_string()),
        ("refunds", line.refunds.to_string()),
        ("refunded_minor", line.refunded_minor.to_string()),
        ("net_minor", net.to_string()),
    ] {
        assert_eq!(cell(seen, &row, col), value, "{row} {col}");
    }
}

#[test]
fn the_console_in_a_browser_shows_each_role_what_the_grpc_queries_answer() {
    let (python, chromium) = browser_tools();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    assert!(vouchsafe().args(["keys", "init", "--out", "keys"]).current_dir(root).status().expect("keys init").success());
    let (port, console_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{port}");
    let console_url = format!("http://127.0.0.1:{console_port}");
    let serve = vouchsafe()
        .args(["serve", "--data-dir", "engine", "--keys", "keys", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--console-listen", &format!("127.0.0.1:{console_port}")])
        .env("VOUCHSAFE_SEAL_INTERVAL_MS", "300")
        .current_dir(root)
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let _serve = Running(serve);
    wait_for_port(port);
    wait_for_port(console_port);
    let demo = json(vouchsafe().args(["demo", "--connect", &url, "--keys", "keys", "--data-dir", "demo", "--vouchers", "12", "--json"]), root);
    assert!(demo["delivered"].as_u64().expect("delivered") > 0, "{demo}");
    for (name, out) in [("Auditor", "auditor.cred"), ("Console Shop", "shop.cred"), ("Other Shop", "other.cred")] {
        let kind = if out == "auditor.cred" { "auditor" } else { "merchant" };
        json(vouchsafe().args(["keys", "issue", kind, "--name", name, "--keys", "keys", "--out", out, "--connect", &url, "--json"]), root);
    }
    let merchant = |cred: &str, args: &[&str]| json(vouchsafe().arg("merchant").args(args).args(["--connect", &url, "--cred", cred, "--json"]), root);
    let catalog = json(vouchsafe().args(["catalog", "list", "--connect", &url, "--cred", "shop.cred", "--json"]), root);
    let media = catalog["items"][0]["media_id"].as_str().expect("a media on sale").to_string();
    let pending = merchant("shop.cred", &["reserve", "--media", &media]);
    let paid = merchant("shop.cred", &["reserve", "--media", &media]);
    merchant("shop.cred", &["authorize", "--voucher", paid["voucher_id"].as_str().expect("id")]);
    let foreign = merchant("other.cred", &["reserve", "--media", &media]);
    let foreign_voucher = foreign["voucher_id"].as_str().expect("id").to_string();

    let operator = Credential::load(&root.join("keys/operator.cred")).expect("operator cred");
    let shop = Credential::load(&root.join("shop.cred")).expect("shop cred");
    let other = Credential::load(&root.join("other.cred")).expect("other cred");
    let month = projections::royalty_log::month_of(
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis()).expect("ms"),
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let before = runtime.block_on(answers(&url, &operator, &shop, &month));

    let screenshot = workspace().join("docs/console.png");
    let secret = |credential: &Credential| serde_json::json!({ "id": credential.id, "secret": hex::encode(credential.secret.expose()) });
    let config = serde_json::json!({
        "url": console_url,
        "chromium": chromium,
        "screenshot": screenshot,
        "operator": secret(&operator),
        "auditor_cred": root.join("auditor.cred"),
        "merchant": secret(&shop),
        "merchant_probe": [format!("/vouchers?id={foreign_voucher}"), format!("/vouchers?merchant={}", other.id)],
        "pages": PAGES,
    });
    std::fs::write(root.join("browser.json"), config.to_string()).expect("write config");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console_browser.py");
    let output = Command::new(&python).arg(&script).arg(root.join("browser.json")).arg(root.join("seen.json")).output().expect("run python");
    assert!(output.status.success(), "the browser script failed:\n{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(root.join("seen.json")).expect("read seen")).expect("seen JSON");
    let after = runtime.block_on(answers(&url, &operator, &shop, &month));
    assert_eq!(before, after, "the engine's answers moved while the browser read; the comparison below would not hold");
    let answers = after;

    // Nobody signed in: /login everywhere, no figure; one answer for wrong and unknown.
    for path in PAGES {
        let page = &seen["anonymous"][path];
        assert_eq!(page["url"], "/login", "{path} without a session");
        no_figures(page, path);
    }
    assert_eq!(seen["wrong_secret"]["text"], seen["unknown_id"]["text"], "a wrong secret and an unknown id get the same page");
    assert!(seen["wrong_secret"]["text"].as_str().expect("text").contains("unknown credential id or wrong secret"));
    assert_eq!(seen["after_refusals"]["url"], "/login");

    // The operator: every page, every figure as the RPCs answer.
    let op = &seen["operator"];
    assert_eq!(op["landed"]["url"], "/overview");
    let page = |role: &str, path: &str| -> Value {
        let page = seen[role]["pages"][path].clone();
        assert_eq!(page["status"], 200, "{role} {path}: {}", page["text"]);
        page
    };
    let overview = page("operator", "/overview");
    for (name, value) in &answers.stats {
        assert_eq!(figure(&overview, name), value, "overview {name}");
    }
    assert_eq!(figure(&overview, "seals_verified"), answers.seals.1.to_string());
    assert!(figure(&overview, "uptime").ends_with('s') && figure(&overview, "events_per_s").contains('.'));
    let nodes = page("operator", "/nodes");
    assert!(!answers.nodes.is_empty());
    for (node, (in_use, max, status, region)) in &answers.nodes {
        let row = format!("node/{node}");
        assert_eq!(
            (cell(&nodes, &row, "streams_in_use"), cell(&nodes, &row, "streams_max"), cell(&nodes, &row, "status"), cell(&nodes, &row, "region")),
            (in_use.to_string().as_str(), max.to_string().as_str(), status.as_str(), region.as_str())
        );
    }
    let catalog_page = page("operator", "/catalog");
    assert_eq!(catalog_page["rows"].as_object().expect("rows").len(), answers.catalog.len());
    for item in &answers.catalog {
        let row = format!("media/{}", item.media_id);
        assert_eq!(
            (cell(&catalog_page, &row, "price_minor"), cell(&catalog_page, &row, "title")),
            (item.price_minor.to_string().as_str(), item.title.as_str())
        );
    }
    let merchants = page("operator", "/merchants");
    assert_eq!(merchants["rows"].as_object().expect("rows").len(), answers.merchants.len());
    for line in answers.totals.iter().filter(|line| line.dimension == "Merchant") {
        let row = format!("merchant/{}", line.key);
        assert_eq!(
            (cell(&merchants, &row, "deliveries"), cell(&merchants, &row, "amount_minor")),
            (line.deliveries.to_string().as_str(), line.amount_minor.to_string().as_str())
        );
    }
    for role in ["operator", "auditor"] {
        let totals = page(role, "/totals");
        let mut compared = 0;
        for (dimension, prefix) in [("Artist", "artist"), ("Merchant", "merchant"), ("Period", "month")] {
            for line in answers.totals.iter().filter(|line| line.dimension == dimension) {
                totals_cells(&totals, prefix, line);
                compared += 1;
            }
        }
        assert!(compared >= 3, "the demo's totals are on the page");
        assert_eq!(totals["charts"], serde_json::json!(["artist", "merchant", "month"]), "an SVG chart per table");
        let royalty = page(role, "/royalty");
        let (entries, verified, faults, newest, checkpoint) = &answers.seals;
        assert_eq!((figure(&royalty, "royalty_entries"), figure(&royalty, "seals_verified")), (entries.to_string().as_str(), verified.to_string().as_str()));
        assert_eq!((*faults, figure(&royalty, "chain")), (0, format!("chain verified up to seal {verified}").as_str()));
        assert!(!newest.is_empty(), "the demo waited for a seal");
        for (number, hash) in newest {
            assert_eq!(cell(&royalty, &format!("seal/{number}"), "hash"), hash);
            assert_ne!(cell(&royalty, &format!("seal/{number}"), "sealed_at"), "unknown", "a seal's time is kept");
        }
        // The newest checkpoint, as AuditService.Totals gives it (a signed note).
        assert!(checkpoint.contains("\n\n\u{2014} "), "the demo's seals carry checkpoints: {checkpoint:?}");
        assert_eq!(figure(&royalty, "newest_checkpoint").trim(), checkpoint.trim(), "the checkpoint on the page");
        let ledger = page(role, "/ledger");
        assert_eq!((figure(&ledger, "sum_minor"), answers.ledger.sum_minor), ("0", 0), "the ledger sums to zero");
        assert!(!answers.ledger.lines.is_empty());
        for line in &answers.ledger.lines {
            assert_eq!(cell(&ledger, &format!("{}/{}", line.currency, line.kind), "balance_minor"), line.balance_minor.to_string());
        }
    }

    // The merchant: its own vouchers and statement, nothing else.
    let shop_rows = |page: &Value| page["rows"].as_object().expect("rows").keys().cloned().collect::<BTreeSet<String>>();
    let expected_rows: BTreeSet<String> = answers.shop_vouchers.iter().map(|v| format!("voucher/{}", v.voucher_id)).collect();
    assert_eq!(expected_rows.len(), 2, "the shop's two vouchers");
    assert!(expected_rows.contains(&format!("voucher/{}", pending["voucher_id"].as_str().expect("id"))));
    assert_eq!(seen["merchant"]["landed"]["url"], "/vouchers");
    let vouchers = page("merchant", "/vouchers");
    assert_eq!((shop_rows(&vouchers), figure(&vouchers, "merchant")), (expected_rows.clone(), shop.id.as_str()));
    for voucher in &answers.shop_vouchers {
        let row = format!("voucher/{}", voucher.voucher_id);
        assert_eq!((cell(&vouchers, &row, "status"), cell(&vouchers, &row, "set")), (voucher.status.as_str(), voucher.set.as_str()));
    }
    let statement = page("merchant", "/statement");
    assert_eq!((figure(&statement, "merchant"), figure(&statement, "period")), (shop.id.as_str(), month.as_str()));
    assert_eq!(figure(&statement, "previews"), answers.shop_statement.previews.to_string());
    for line in &answers.shop_statement.currencies {
        for (name, value) in [("sales", line.sales.to_string()), ("sold_minor", line.sold_minor.to_string()), ("net_minor", line.net_minor.to_string())] {
            assert_eq!(cell(&statement, &format!("{}/{name}", line.currency), "value"), value);
        }
    }
    // The operator's view of the same merchant is the same.
    let op_vouchers = &seen["operator"]["pages"]["/vouchers"];
    assert_eq!(op_vouchers["status"], 200, "the operator's vouchers page asks for a merchant");
    let foreign_find = &seen["merchant"]["pages"][format!("/vouchers?id={foreign_voucher}").as_str()];
    assert_eq!(foreign_find["status"], 404, "another merchant's voucher is not found: {}", foreign_find["text"]);
    no_figures(foreign_find, "another merchant's voucher");
    let named_other = &seen["merchant"]["pages"][format!("/vouchers?merchant={}", other.id).as_str()];
    assert_eq!((shop_rows(named_other), figure(named_other, "merchant")), (expected_rows, shop.id.as_str()), "merchant= names another: still its own");
    for path in PAGES.iter().filter(|path| !["/vouchers", "/statement"].contains(path)) {
        let refused = &seen["merchant"]["pages"][*path];
        assert_eq!(refused["status"], 403, "merchant on {path}");
        no_figures(refused, path);
    }
    for path in ["/overview", "/nodes", "/catalog", "/merchants", "/vouchers", "/statement"] {
        let refused = &seen["auditor"]["pages"][path];
        assert_eq!(refused["status"], 403, "auditor on {path}");
        no_figures(refused, path);
    }
    assert_eq!(seen["auditor"]["landed"]["url"], "/royalty", "the auditor signed in with its credential file");

    // The session cookie, and signing out.
    for role in ["operator", "auditor", "merchant"] {
        let cookies = seen[role]["cookies"].as_array().expect("cookies");
        let session = cookies.iter().find(|c| c["name"] == "vs_session").unwrap_or_else(|| panic!("{role}: {cookies:?}"));
        assert_eq!((&session["httpOnly"], &session["sameSite"]), (&Value::Bool(true), &Value::from("Strict")), "{role}");
        assert!(session["expires"].as_f64().is_some_and(|expires| expires > 0.0), "{role}: the session cookie expires");
        for path in PAGES {
            assert_eq!(seen[role]["pages"][path]["cookie_visible_to_script"], "", "HttpOnly: {role} {path}");
        }
        assert_eq!(seen[role]["after_sign_out"]["url"], "/login", "{role} signed out");
    }
    assert!(std::fs::metadata(&screenshot).is_ok_and(|meta| meta.len() > 10_000), "the overview screenshot");
}
