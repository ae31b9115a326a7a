//! The main job as a user runs it: `vouchsafe demo --json` prints one JSON object with
//! every key CLI.md requires, delivers, and every delivered media decrypts and verifies;
//! with `--node-tls` its players fetch and preview over TLS.

use std::process::Command;

const REQUIRED_KEYS: &[&str] = &[
    "backend",
    "merchants",
    "nodes",
    "media",
    "purchases",
    "delivered",
    "decrypt_ok",
    "previews",
    "expired",
    "voided",
    "royalty_entries",
    "seals",
    "stream_events",
    "state_digest",
    "audit_ok",
    "elapsed_ms",
];

fn demo(data_dir: &std::path::Path, vouchers: &str) -> (std::process::ExitStatus, serde_json::Value) {
    demo_with(data_dir, vouchers, &[])
}

fn demo_with(data_dir: &std::path::Path, vouchers: &str, extra: &[&str]) -> (std::process::ExitStatus, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_vouchsafe"))
        .args(["demo", "--vouchers", vouchers, "--json", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("run vouchsafe demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let summary = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status, summary)
}

#[test]
fn demo_json_has_every_key_and_delivers_verified_media() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (status, summary) = demo(dir.path(), "40");
    assert!(status.success(), "demo failed: {summary}");
    for key in REQUIRED_KEYS {
        assert!(summary.get(key).is_some(), "missing key {key} in {summary}");
    }
    assert_eq!(summary["backend"], "embedded");
    assert_eq!(summary["purchases"], 40);
    let delivered = summary["delivered"].as_u64().expect("delivered is a number");
    assert!(delivered > 0);
    assert_eq!(summary["decrypt_ok"].as_u64(), Some(delivered));
    assert_eq!(summary["expired"], 4, "one in ten reservations is left to expire");
    assert_eq!(summary["voided"], 4, "one in ten sales is voided");
    assert_eq!(summary["state_digest"].as_str().map(str::len), Some(64));
    assert!(dir.path().join("players").is_dir(), "players keep their copies under <data-dir>/players");
    assert!(dir.path().join("keys/engine.pem").is_file(), "keys are created in <data-dir>/keys");
    assert_eq!(summary["node_tls"], false, "without --node-tls the nodes serve loopback plain text");
    assert!(!dir.path().join("node-tls").exists());

    // A second run on the same data dir adds a new session to the same stream.
    let (status, again) = demo(dir.path(), "10");
    assert!(status.success(), "second demo failed: {again}");
    assert!(again["stream_events"].as_u64() > summary["stream_events"].as_u64());
    // Each run protects its first player's passport under a passphrase kept in
    // players/<consumer>.passphrase: that file opens it, nothing else does, and the second
    // run kept the first run's.
    let players = dir.path().join("players");
    let passphrases: Vec<_> = std::fs::read_dir(&players)
        .expect("players")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "passphrase"))
        .collect();
    assert_eq!(passphrases.len(), 2, "{passphrases:?}");
    for file in passphrases {
        let home = players.join(file.file_stem().expect("a consumer"));
        assert!(gateways::player::Passport::is_protected(&home).expect("a passport"), "{}", home.display());
        assert!(gateways::player::Passport::load(&home).is_err(), "not without its passphrase");
        gateways::player::Passport::load_with(&home, &gateways::player::PassphraseSource::File(file)).expect("opens with its file");
    }
}

/// `demo --node-tls`: the nodes announce https under a throwaway CA's certificates and the
/// players, trusting that CA only, refuse any plain-text node, so every delivery and
/// preview went over TLS. Control: the plain run above reports `node_tls: false`.
#[test]
fn demo_node_tls_delivers_and_previews_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (status, summary) = demo_with(dir.path(), "20", &["--node-tls"]);
    assert!(status.success(), "demo --node-tls failed: {summary}");
    assert_eq!(summary["node_tls"], true, "{summary}");
    let delivered = summary["delivered"].as_u64().expect("delivered is a number");
    assert!(delivered > 0, "{summary}");
    assert_eq!(summary["decrypt_ok"].as_u64(), Some(delivered), "{summary}");
    assert!(summary["previews"].as_u64() > Some(0), "{summary}");
    assert_eq!(summary["audit_ok"], true, "{summary}");
    let ca = std::fs::read_to_string(dir.path().join("node-tls/ca.pem")).expect("the run's CA certificate is written");
    assert!(ca.contains("BEGIN CERTIFICATE") && !ca.contains("PRIVATE KEY"), "only the CA's certificate is written");
}

#[test]
fn usage_errors_exit_2() {
    let status = Command::new(env!("CARGO_BIN_EXE_vouchsafe")).args(["demo", "--vouchers", "0"]).status().expect("run vouchsafe");
    assert_eq!(status.code(), Some(2));
    let status = Command::new(env!("CARGO_BIN_EXE_vouchsafe")).args(["no-such-command"]).status().expect("run vouchsafe");
    assert_eq!(status.code(), Some(2));
}
