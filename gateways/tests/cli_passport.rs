//! Protected passports from a shell (issue 28, item 4): `player passport --passphrase-file`
//! stores the key as encrypted PKCS#8; every command that uses it asks for the passphrase
//! (here from the file: stdin is no terminal, so nothing is prompted); a missing passphrase
//! is a usage error (exit 2), a wrong one a refusal (exit 1), neither writes anything nor
//! quotes the passphrase. The attack next to its control: a copy of a plain passport (the
//! protection off, as every passport was before) redeems with no passphrase at all.
//! `player protect` protects an existing plain passport. A lost passport: a new one is
//! certified for the same consumer, and the purchase delivered to the old one is recovered
//! with it. Every process is started by this test and stopped by its pid.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod shell;
use shell::{Running, free_port, vouchsafe, wait_for_port};

/// Runs a command to completion; returns (exit code, last stdout line as JSON or null, stderr).
fn run(command: &mut Command, dir: &Path) -> (i32, serde_json::Value, String) {
    let output = command.current_dir(dir).stdin(Stdio::null()).output().expect("run vouchsafe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = stdout.lines().last().and_then(|line| serde_json::from_str(line).ok()).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), value, String::from_utf8_lossy(&output.stderr).into_owned())
}

const PASSPHRASE: &str = "a long passphrase, 7 words";

#[test]
fn a_protected_passport_is_used_only_with_its_passphrase_and_a_lost_one_is_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    assert!(vouchsafe().args(["keys", "init", "--out", "keys"]).current_dir(root).status().expect("keys init").success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = vouchsafe()
        .args(["serve", "--data-dir", "engine", "--keys", "keys", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(root)
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let _serve = Running(serve);
    wait_for_port(port);
    let (code, _, err) =
        run(vouchsafe().args(["keys", "issue", "merchant", "--name", "Shop", "--keys", "keys", "--out", "shop.cred", "--connect", &url]), root);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(vouchsafe().args(["keys", "issue", "node", "--keys", "keys", "--out", "node.cred", "--connect", &url]), root);
    assert_eq!(code, 0, "{err}");
    let node_port = free_port();
    let node = vouchsafe()
        .args(["node", "--connect", &url, "--cred", "node.cred", "--listen", &format!("127.0.0.1:{node_port}"), "--data-dir", "node"])
        .current_dir(root)
        .stderr(Stdio::null())
        .spawn()
        .expect("node starts");
    let _node = Running(node);
    wait_for_port(node_port);
    std::fs::write(root.join("song.bin"), (0..50_000u32).map(|i| (i * 13 % 256) as u8).collect::<Vec<u8>>()).expect("write song");
    let (code, published, err) = run(
        vouchsafe().args(["publish", "--connect", &url, "--cred", "keys/operator.cred", "--engine-key", "keys/engine.pub.pem", "song.bin", "--json"]),
        root,
    );
    assert_eq!(code, 0, "{err}");
    let media_id = published["media"][0]["media_id"].as_str().expect("media id").to_string();
    std::fs::write(root.join("pp"), format!("{PASSPHRASE}\n")).expect("passphrase file");
    std::fs::write(root.join("wrong"), "a long passphrase, 7 word\n").expect("wrong passphrase file");
    let passport = |consumer: &str, protect: bool| {
        let mut command = vouchsafe();
        command.args(["player", "passport", "--connect", &url, "--cred", "keys/operator.cred", "--engine-key", "keys/engine.pub.pem"]);
        command.args(["--consumer", consumer, "--data-dir", "players", "--json"]);
        if protect {
            command.args(["--passphrase-file", "pp"]);
        }
        run(&mut command, root)
    };
    let buy = |out: &str| {
        // The node heartbeats before the allocator may choose it; retry the purchase briefly.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, sale, err) =
                run(vouchsafe().args(["merchant", "buy", "--media", &media_id, "--connect", &url, "--cred", "shop.cred", "--out", out, "--json"]), root);
            if code == 0 {
                return sale;
            }
            assert!(Instant::now() < deadline, "no purchase succeeded: {err}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let events = || {
        let (code, stats, err) = run(vouchsafe().args(["admin", "stats", "--connect", &url, "--keys", "keys", "--json"]), root);
        assert_eq!(code, 0, "{err}");
        stats["stream_events"].as_u64().expect("stream_events")
    };
    let fetch = |sale: &str, consumer: &str, passphrase: Option<&str>, recover: bool| {
        let mut command = vouchsafe();
        command.args(["player", "fetch", "--sale", sale, "--consumer", consumer, "--data-dir", "players", "--json"]);
        if let Some(file) = passphrase {
            command.args(["--passphrase-file", file]);
        }
        if recover {
            command.arg("--recover");
        }
        run(&mut command, root)
    };

    // Alice's passport is protected: standard encrypted PKCS#8, no plain key in the file.
    let (code, alice, err) = passport("alice", true);
    assert_eq!((code, &alice["protected"]), (0, &serde_json::json!(true)), "{err}");
    let pem = std::fs::read_to_string(root.join("players/players/alice/passport.pem")).expect("passport.pem");
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{}", &pem[..40]);
    assert!(engine::crypto::RsaPrivate::from_pkcs8_pem(&pem).is_err(), "no plain key to read");
    buy("sale.json");

    // No passphrase (stdin is no terminal): a usage error, nothing written.
    let before = events();
    let (code, _, err) = fetch("sale.json", "alice", None, false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("protected by a passphrase") && err.contains("--passphrase-file"), "{err}");
    // A wrong passphrase: refused (exit 1), nothing written, the passphrase never quoted.
    let (code, refused, err) = fetch("sale.json", "alice", Some("wrong"), false);
    assert_eq!((code, refused["refused"].as_str()), (1, Some("Unauthenticated")), "{err}");
    assert!(err.contains("passphrase does not open"), "{err}");
    assert!(!err.contains("7 word") && !refused.to_string().contains("7 word"), "{err}");
    assert_eq!(events(), before, "a refused passport writes nothing");
    // The right one: redeemed, decrypted, verified.
    let (code, fetched, err) = fetch("sale.json", "alice", Some("pp"), false);
    assert_eq!((code, &fetched["decrypt_ok"]), (0, &serde_json::json!(true)), "{err}");
    let copy = root.join(fetched["copies"][0]["path"].as_str().expect("path"));

    // The attack with the protection off: bob's plain passport (as before protection, and
    // it still loads) is used by whoever copies the file, no passphrase asked.
    let (code, created, err) = passport("bob", false);
    assert_eq!((code, &created["protected"]), (0, &serde_json::json!(false)), "{err}");
    assert!(err.contains("not protected"), "the user is told: {err}");
    copy_dir(&root.join("players/players/bob"), &root.join("thief/players/bob"));
    buy("bob-sale.json");
    let (code, stolen, err) = run(vouchsafe().args(["player", "fetch", "--sale", "bob-sale.json", "--consumer", "bob", "--data-dir", "thief", "--json"]), root);
    assert_eq!((code, &stolen["decrypt_ok"]), (0, &serde_json::json!(true)), "the copied plain passport redeems: {err}");
    // `player protect` closes it: the same copy, taken after, needs the passphrase.
    let (code, protected, err) =
        run(vouchsafe().args(["player", "protect", "--consumer", "bob", "--data-dir", "players", "--passphrase-file", "pp", "--json"]), root);
    assert_eq!((code, &protected["protected"]), (0, &serde_json::json!(true)), "{err}");
    let (code, _, err) = run(vouchsafe().args(["player", "protect", "--consumer", "bob", "--data-dir", "players", "--passphrase-file", "pp"]), root);
    assert_eq!(code, 2, "protected twice: {err}");
    assert!(err.contains("already protected"), "{err}");
    std::fs::remove_dir_all(root.join("thief/players/bob")).expect("rm");
    copy_dir(&root.join("players/players/bob"), &root.join("thief/players/bob"));
    let spend = ["player", "authorize-spend", "--consumer", "bob", "--merchant", "m-x", "--amount", "5", "--out", "spend.json", "--json"];
    let (code, _, err) = run(vouchsafe().args(spend).args(["--data-dir", "thief"]), root);
    assert_eq!(code, 2, "no passphrase: {err}");
    let (code, _, err) = run(vouchsafe().args(spend).args(["--data-dir", "thief", "--passphrase-file", "wrong"]), root);
    assert_eq!(code, 1, "a wrong passphrase: {err}");
    assert!(!root.join("spend.json").exists(), "nothing signed");
    let (code, _, err) = run(vouchsafe().args(spend).args(["--data-dir", "players", "--passphrase-file", "pp"]), root);
    assert_eq!(code, 0, "bob signs with his passphrase: {err}");

    // Alice loses her passport: a new key is certified for her (its own passphrase file),
    // and her delivered purchase is recovered with the new certificate.
    std::fs::remove_dir_all(root.join("players/players/alice")).expect("the passport is lost");
    assert!(!copy.exists(), "the delivered copy was kept beside the passport: lost with it");
    let (code, renewed, err) = passport("alice", true);
    assert_eq!(code, 0, "{err}");
    assert_ne!(renewed["cert_serial"], alice["cert_serial"]);
    let (code, _, err) = fetch("sale.json", "alice", Some("wrong"), true);
    assert_eq!(code, 1, "{err}");
    let (code, recovered, err) = fetch("sale.json", "alice", Some("pp"), true);
    assert_eq!((code, &recovered["decrypt_ok"]), (0, &serde_json::json!(true)), "the new passport recovers the purchase: {err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}
