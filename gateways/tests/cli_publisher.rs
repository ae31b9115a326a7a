//! Publisher accounts from a shell (issue 28, item 3): `keys issue publisher` registers a
//! publisher with its public signing key and terms; `publish --cred` with its credential
//! and the registered key publishes (under the account's terms), with another key it is
//! refused (exit 1, PermissionDenied) and nothing is published; the operator's `publish`
//! with that other key still goes through (its path consults no registry: the control).
//! Every process is started by this test and stopped by its pid.

use std::path::Path;
use std::process::{Command, Stdio};

mod shell;
use shell::{Running, free_port, vouchsafe, wait_for_port};

/// Runs a command to completion; returns (exit code, last stdout line as JSON or null, stderr).
fn run(command: &mut Command, dir: &Path) -> (i32, serde_json::Value, String) {
    let output = command.current_dir(dir).stdin(Stdio::null()).output().expect("run vouchsafe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = stdout.lines().last().and_then(|line| serde_json::from_str(line).ok()).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), value, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn keys_issue_publisher_then_publish_with_its_registered_key_only() {
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
    let (registered, foreign) = (engine::crypto::test_keys::fixed_rsa_2(), engine::crypto::test_keys::fixed_rsa_3());
    std::fs::write(root.join("owl.pem"), registered.to_pkcs8_pem().expect("pem").as_bytes()).expect("write");
    std::fs::write(root.join("owl.pub.pem"), registered.public().to_pem().expect("pem")).expect("write");
    std::fs::write(root.join("other.pem"), foreign.to_pkcs8_pem().expect("pem").as_bytes()).expect("write");
    std::fs::write(root.join("song.bin"), (0..40_000u32).map(|i| (i * 3 % 256) as u8).collect::<Vec<u8>>()).expect("song");

    // Without a key a publisher is not registered (usage error).
    let issue = ["keys", "issue", "publisher", "--name", "Owl Records", "--keys", "keys", "--connect", url.as_str(), "--json"];
    let (code, _, err) = run(vouchsafe().args(issue).args(["--out", "none.cred"]), root);
    assert_eq!(code, 2, "{err}");
    let (code, issued, err) =
        run(vouchsafe().args(issue).args(["--out", "owl.cred", "--publisher-key", "owl.pub.pem", "--owner", "owl-records", "--rights-agent", "agent-7"]), root);
    assert_eq!((code, issued["kind"].as_str()), (0, Some("publisher")), "{err}");
    let publisher_id = issued["id"].as_str().expect("id").to_string();

    let publish = |cred: &str, key: &str, title: &str| {
        run(
            vouchsafe()
                .args(["publish", "--connect", &url, "--cred", cred, "--engine-key", "keys/engine.pub.pem", "--sign-key", key, "song.bin"])
                .args(["--title", title, "--json"]),
            root,
        )
    };
    // The attack: the publisher's credential with a key it never registered.
    let (code, refused, err) = publish("owl.cred", "other.pem", "Stolen");
    assert_eq!((code, refused["refused"].as_str()), (1, Some("PermissionDenied")), "{refused} {err}");
    assert!(refused["message"].as_str().is_some_and(|message| message.contains("not a registered key")), "{refused}");
    // The control: the operator's path takes a container signed by that key.
    let (code, published, err) = publish("keys/operator.cred", "other.pem", "Operator's");
    assert_eq!(code, 0, "{published} {err}");
    // The registered key: published as the publisher's media.
    let (code, published, err) = publish("owl.cred", "owl.pem", "Owl Song");
    assert_eq!(code, 0, "{published} {err}");
    assert!(published["media"][0]["media_id"].as_str().is_some_and(|id| id.starts_with("md")), "{published}");
    // The operator registers the other key; then it signs for the publisher too.
    std::fs::write(root.join("other.pub.pem"), foreign.public().to_pem().expect("pem")).expect("write");
    let (code, added, err) = run(
        vouchsafe().args(["admin", "publisher", "add-key", &publisher_id, "--publisher-key", "other.pub.pem", "--keys", "keys", "--connect", &url, "--json"]),
        root,
    );
    assert_eq!((code, added["changed"].as_bool(), added["keys"].as_u64()), (0, Some(true), Some(2)), "{err}");
    let (code, published, err) = publish("owl.cred", "other.pem", "Second Key");
    assert_eq!(code, 0, "{published} {err}");
    let (code, parties, err) = run(vouchsafe().args(["admin", "parties", "--kind", "publisher", "--keys", "keys", "--connect", &url, "--json"]), root);
    assert_eq!(code, 0, "{err}");
    assert!(parties.to_string().contains(&publisher_id), "the operator lists the publisher: {parties}");
}
