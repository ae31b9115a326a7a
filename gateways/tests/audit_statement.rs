//! The auditor's commands of issue 23 item 2, from a shell, end to end: `serve` on the
//! embedded log, a demo against it, then `audit replay --connect` and `audit statement
//! --connect` with an auditor's credential while the engine runs (its sled log is locked:
//! the local commands cannot open it, which is why --connect exists), then the same
//! statements from the log itself once the engine has stopped.
//! - the replay over AuditService is clean and its totals are the engine's Totals;
//! - each artist's statement for the month equals its totals line, the artists' add up to
//!   the month's line, and a rights agent's equals its line;
//! - the local statement (a verified replay of the stopped engine's log) equals the remote one;
//! - access: the auditor and the operator are answered, a merchant's credential is refused
//!   (exit 1, PermissionDenied), no credential is a usage error;
//! - bad input (a month 13, two holders, none, a blank name, --connect without --cred) is
//!   a usage error (exit 2) and writes nothing (the stream head does not move).
//!
//! Every process is started by this test and stopped by its pid.

use std::path::Path;
use std::process::{Command, Output, Stdio};

mod shell;
use shell::{Running, free_port, vouchsafe, wait_for_port};

fn run(command: &mut Command, dir: &Path) -> Output {
    command.current_dir(dir).output().expect("run vouchsafe")
}

/// Runs a command; returns (exit code, last stdout line as JSON, stderr).
fn json(command: &mut Command, dir: &Path) -> (i32, serde_json::Value, String) {
    let output = run(command, dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let last = stdout.lines().last().unwrap_or_default();
    let value = serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (output.status.code().unwrap_or(-1), value, stderr)
}

fn this_month() -> String {
    let now_ms = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis()).expect("ms");
    projections::royalty_log::month_of(now_ms)
}

/// The statement's total as the totals JSON writes a line.
fn line(value: &serde_json::Value) -> [u64; 6] {
    ["deliveries", "previews", "amount_minor", "units", "refunds", "refunded_minor"]
        .map(|key| value[key].as_u64().unwrap_or_else(|| panic!("{key} in {value}")))
}

#[test]
fn audit_replay_and_statement_over_audit_service_and_from_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    assert!(vouchsafe().args(["keys", "init", "--out", "keys"]).current_dir(root).status().expect("keys init").success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = vouchsafe()
        .args(["serve", "--data-dir", "engine", "--keys", "keys", "--listen", &format!("127.0.0.1:{port}")])
        .env("VOUCHSAFE_SEAL_INTERVAL_MS", "300")
        .current_dir(root)
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let serve = Running(serve);
    wait_for_port(port);
    let (code, demo, stderr) = json(vouchsafe().args(["demo", "--connect", &url, "--keys", "keys", "--data-dir", "demo", "--vouchers", "12", "--json"]), root);
    assert_eq!(code, 0, "{demo}\n{stderr}");
    assert!(demo["delivered"].as_u64().expect("delivered") > 0, "{demo}");
    let issue = |kind: &str, name: &str, out: &str| {
        let (code, issued, stderr) =
            json(vouchsafe().args(["keys", "issue", kind, "--name", name, "--keys", "keys", "--out", out, "--connect", &url, "--json"]), root);
        assert_eq!(code, 0, "{issued}\n{stderr}");
    };
    issue("auditor", "Agent", "auditor.cred");
    issue("merchant", "Shop", "shop.cred");
    let month = this_month();
    let remote = |command: &[&str], cred: &str| {
        let mut line = vouchsafe();
        line.arg("audit").args(command).args(["--connect", &url, "--cred", cred, "--json"]);
        json(&mut line, root)
    };

    // The replay over AuditService: clean, and its totals are what the engine's Totals say.
    let (code, replay, stderr) = remote(&["replay"], "auditor.cred");
    assert_eq!(code, 0, "{replay}\n{stderr}");
    assert_eq!((replay["chain_ok"].as_bool(), replay["first_bad"].is_null()), (Some(true), true), "{replay}");
    assert!(replay["seals_verified"].as_u64().expect("seals") >= 1, "the demo waited for a seal: {replay}");
    for key in ["events", "first_seq", "last_seq", "state_digest", "royalty_entries", "totals", "events_per_s"] {
        assert!(!replay[key].is_null(), "audit replay --json key {key}: {replay}");
    }
    let totals = replay["totals"].clone();
    let artists: Vec<String> = totals["artist"].as_object().expect("artist totals").keys().cloned().collect();
    assert!(!artists.is_empty(), "{totals}");

    // Each artist's statement for the month is its totals line (every usage is this month's);
    // together they make the month's line.
    let mut sum = [0u64; 6];
    let mut remote_statements = Vec::new();
    for artist in &artists {
        let (code, statement, stderr) = remote(&["statement", "--artist", artist, "--period", &month], "auditor.cred");
        assert_eq!(code, 0, "{statement}\n{stderr}");
        assert_eq!(line(&statement["total"]), line(&totals["artist"][artist]), "{artist}: {statement}");
        assert_eq!((statement["holder"].as_str(), statement["period"].as_str()), (Some("artist"), Some(month.as_str())));
        let media_deliveries: u64 = statement["media"].as_array().expect("media").iter().map(|m| m["deliveries"].as_u64().expect("n")).sum();
        assert_eq!(media_deliveries, statement["total"]["deliveries"].as_u64().expect("n"), "the media lines add up: {statement}");
        for (total, value) in sum.iter_mut().zip(line(&statement["total"])) {
            *total += value;
        }
        remote_statements.push((artist.clone(), statement));
    }
    assert_eq!(sum, line(&totals["period"][&month]), "the artists' statements make the month");
    let agent = totals["rights_agent"].as_object().expect("agents").keys().next().expect("an agent").clone();
    let (code, by_agent, _) = remote(&["statement", "--rights-agent", &agent, "--period", &month], "keys/operator.cred");
    assert_eq!(code, 0, "the operator may read AuditService too: {by_agent}");
    assert_eq!(line(&by_agent["total"]), line(&totals["rights_agent"][&agent]));
    // Control: another month has nothing for the same artist.
    let (code, empty, _) = remote(&["statement", "--artist", &artists[0], "--period", "1999-01"], "auditor.cred");
    assert_eq!((code, line(&empty["total"])), (0, [0; 6]), "{empty}");

    // Access: a merchant's credential is refused (exit 1, PermissionDenied), for both.
    for command in [vec!["replay"], vec!["statement", "--artist", &artists[0], "--period", &month]] {
        let (code, refused, _) = remote(&command, "shop.cred");
        assert_eq!((code, refused["refused"].as_str()), (1, Some("PermissionDenied")), "{command:?}: {refused}");
    }

    // Bad input: usage errors (exit 2), nothing written.
    let head_before = replay["last_seq"].as_u64().expect("head");
    let bad: Vec<Vec<&str>> = vec![
        vec!["statement", "--artist", "A", "--period", "2026-13", "--connect", &url, "--cred", "auditor.cred"],
        vec!["statement", "--artist", "A", "--owner", "B", "--period", "2026-01", "--connect", &url, "--cred", "auditor.cred"],
        vec!["statement", "--period", "2026-01", "--connect", &url, "--cred", "auditor.cred"],
        vec!["statement", "--artist", "  ", "--period", "2026-01", "--connect", &url, "--cred", "auditor.cred"],
        vec!["statement", "--artist", "A", "--period", "2026-01", "--connect", &url],
        vec!["replay", "--connect", &url],
        vec!["replay", "--keys", "keys", "--connect", &url, "--cred", "auditor.cred"],
    ];
    for args in &bad {
        let output = run(vouchsafe().arg("audit").args(args), root);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    // While the engine runs, the local command cannot open its log (what --connect is for).
    let output = run(vouchsafe().args(["audit", "statement", "--keys", "keys", "--data-dir", "engine", "--artist", &artists[0], "--period", &month]), root);
    assert_eq!(output.status.code(), Some(2), "the sled log is the engine's while it runs");
    let (_, after, _) = remote(&["replay"], "auditor.cred");
    assert_eq!(after["last_seq"].as_u64(), Some(head_before), "the refused commands wrote nothing");
    assert_eq!(after["state_digest"], replay["state_digest"]);

    // The engine stops; the statements from its log, verified by a local replay, are the same.
    drop(serve);
    for (artist, statement) in &remote_statements {
        let (code, local, stderr) =
            json(vouchsafe().args(["audit", "statement", "--keys", "keys", "--data-dir", "engine", "--artist", artist, "--period", &month, "--json"]), root);
        assert_eq!(code, 0, "{local}\n{stderr}");
        assert_eq!((&local["total"], &local["media"], &local["currencies"]), (&statement["total"], &statement["media"], &statement["currencies"]), "{artist}");
    }
}
