//! Engine key rotation without downtime (issue 28 item 1), from a shell: a sale before the
//! rotation, `keys rotate engine` against the running engine, sales after it (of media
//! published before it, whose key was wrapped for the old engine key, and of media
//! published after it), then `keys revoke engine` refused during the grace period and
//! accepted after it. Every delivered copy, signed before or after, verifies with the key
//! set (`inspect`), and the auditor's replay verifies every seal with the key it names.
//! Embedded backend; every process is started by this test and stopped by its pid.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod shell;
use shell::{Running, buy_and_fetch, free_port, passport, run, start_node, vouchsafe, wait_for_port};

struct Shop {
    root: PathBuf,
    url: String,
    sales: u32,
}

impl Shop {
    fn publish(&self, name: &str, seed: u32) -> String {
        std::fs::write(self.root.join(name), (0..30_000u32).map(|i| ((i + seed) * 7 % 256) as u8).collect::<Vec<u8>>()).expect("media file");
        let (code, published, stderr) = run(
            vouchsafe().args(["publish", "--connect", &self.url, "--cred", "keys/operator.cred", "--engine-key", "keys/engine.pub.pem", name, "--json"]),
            &self.root,
        );
        assert_eq!(code, 0, "{published} {stderr}");
        published["media"][0]["media_id"].as_str().expect("media id").to_string()
    }

    /// Buys `media` and fetches it as alice; returns the delivered copy's path.
    fn sell(&mut self, media: &str) -> String {
        self.sales += 1;
        let sale = format!("sale{}.json", self.sales);
        let fetched = buy_and_fetch(&self.root, &self.url, media, &sale);
        fetched["copies"][0]["path"].as_str().expect("path").to_string()
    }

    fn inspect(&self, copy: &str) -> serde_json::Value {
        let (code, inspected, stderr) = run(vouchsafe().args(["inspect", copy, "--keys", "keys", "--json"]), &self.root);
        assert_eq!(code, 0, "{inspected} {stderr}");
        inspected
    }
}

#[test]
fn the_engine_key_rotates_while_serving_old_signatures_verify_and_a_retired_key_is_revoked_after_its_grace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    assert!(vouchsafe().args(["keys", "init", "--out", "keys"]).current_dir(&root).status().expect("keys init").success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = vouchsafe()
        .args(["serve", "--data-dir", "engine", "--keys", "keys", "--listen", &format!("127.0.0.1:{port}")])
        .env("VOUCHSAFE_SEAL_INTERVAL_MS", "200")
        .current_dir(&root)
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let mut serve = Running(serve);
    wait_for_port(port);
    let mut shop = Shop { root: root.clone(), url: url.clone(), sales: 0 };
    let (code, merchant, _) =
        run(vouchsafe().args(["keys", "issue", "merchant", "--name", "Shop", "--keys", "keys", "--out", "shop.cred", "--connect", &url, "--json"]), &root);
    assert_eq!(code, 0, "{merchant}");
    let _node = start_node(&root, &url);
    let before = shop.publish("before.bin", 1);
    let (code, passport, stderr) = passport(&root, &url, "alice");
    assert_eq!(code, 0, "{passport} {stderr}");
    let old_copy = shop.sell(&before);
    // A seal under the old key before the rotation (the control below needs one).
    let deadline = Instant::now() + Duration::from_secs(20);
    while run(vouchsafe().args(["admin", "stats", "--connect", &url, "--keys", "keys", "--json"]), &root).1["seals"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no seal within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let old_key = shop.inspect(&old_copy)["transaction"]["engine_key_id"].as_str().map(str::to_string);

    // The rotation, while the engine serves.
    let (code, rotated, stderr) = run(vouchsafe().args(["keys", "rotate", "engine", "--keys", "keys", "--connect", &url, "--json"]), &root);
    assert_eq!(code, 0, "{rotated} {stderr}");
    let (new_id, old_id) = (rotated["key_id"].as_str().expect("key id").to_string(), rotated["previous_key_id"].as_str().expect("previous").to_string());
    assert_ne!(new_id, old_id);
    assert_eq!(rotated["key_ids"], serde_json::json!([new_id, old_id]), "{rotated}");
    if let Some(old_key) = old_key {
        assert_eq!(old_key, old_id, "the copy before names the old key");
    }
    assert!(root.join("keys/retired").join(format!("{old_id}.pem")).exists() && root.join("keys/token.key").exists());
    // A media published before the rotation (its key wrapped for the old engine key) and one
    // after it both sell; the new copies name the new key; every copy verifies with the set.
    let new_copy_of_old_media = shop.sell(&before);
    let after = shop.publish("after.bin", 2);
    let new_copy = shop.sell(&after);
    for copy in [&new_copy_of_old_media, &new_copy] {
        let inspected = shop.inspect(copy);
        assert_eq!(inspected["transaction"]["signature_ok"], true, "{inspected}");
        assert_eq!(inspected["transaction"]["engine_key_id"].as_str(), Some(new_id.as_str()), "{inspected}");
    }
    assert_eq!(shop.inspect(&old_copy)["transaction"]["signature_ok"], true, "a copy signed before the rotation still verifies");
    // Rotated again with the same request: nothing changes (the directory keeps its key).
    let (code, again, _) = run(vouchsafe().args(["keys", "rotate", "engine", "--keys", "keys", "--record-only", "--connect", &url, "--json"]), &root);
    assert_eq!((code, again["changed"].as_bool()), (0, Some(false)), "{again}");

    // Revocation: refused in the grace period (the default is 7 days), then allowed.
    let (code, refused, _) = run(vouchsafe().args(["keys", "revoke", "engine", "--key-id", &old_id, "--keys", "keys", "--connect", &url, "--json"]), &root);
    assert_eq!((code, refused["refused"].as_str()), (1, Some("FailedPrecondition")), "{refused}");
    let (code, current, _) = run(vouchsafe().args(["keys", "revoke", "engine", "--key-id", &new_id, "--keys", "keys", "--connect", &url, "--json"]), &root);
    assert_eq!((code, current["refused"].as_str()), (1, Some("InvalidArgument")), "the current key is never revoked: {current}");
    let (code, set, stderr) =
        run(vouchsafe().args(["admin", "config", "set", "keys.revoke_grace_ms", "1000", "--connect", &url, "--keys", "keys", "--json"]), &root);
    assert_eq!(code, 0, "{set} {stderr}");
    std::thread::sleep(Duration::from_millis(1_100));
    let (code, revoked, stderr) =
        run(vouchsafe().args(["keys", "revoke", "engine", "--key-id", &old_id, "--keys", "keys", "--connect", &url, "--json"]), &root);
    assert_eq!((code, revoked["changed"].as_bool()), (0, Some(true)), "{revoked} {stderr}");
    // Sales go on after the revocation, with the new key.
    let last_copy = shop.sell(&before);
    assert_eq!(shop.inspect(&last_copy)["transaction"]["engine_key_id"].as_str(), Some(new_id.as_str()));
    std::thread::sleep(Duration::from_millis(600)); // a seal over the last entries
    // `admin stats` names the keys and counts the certificates (alice's passport; revoked: one).
    let stats = |root: &Path| run(vouchsafe().args(["admin", "stats", "--connect", &url, "--keys", "keys", "--json"]), root).1;
    let before_revocation = stats(&root);
    assert_eq!(before_revocation["engine_key_id"].as_str(), Some(new_id.as_str()), "{before_revocation}");
    assert_eq!(before_revocation["engine_key_ids"], serde_json::json!([new_id, old_id]), "{before_revocation}");
    assert_eq!(
        [&before_revocation["certificates_issued"], &before_revocation["certificates_revoked"], &before_revocation["certificates_expired"]],
        [&serde_json::json!(1), &serde_json::json!(0), &serde_json::json!(0)],
        "{before_revocation}"
    );
    let (code, _, stderr) = run(vouchsafe().args(["admin", "cert", "revoke", "--consumer", "alice", "--connect", &url, "--keys", "keys", "--json"]), &root);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stats(&root)["certificates_revoked"], 1);

    // SIGTERM, then the auditor's replay: every seal, before and after, verifies with the key it names.
    assert!(Command::new("kill").args(["-TERM", &serve.0.id().to_string()]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while serve.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "serve did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, audit, stderr) = run(vouchsafe().args(["audit", "replay", "--data-dir", "engine", "--keys", "keys", "--json"]), &root);
    assert_eq!(code, 0, "{audit} {stderr}");
    assert_eq!((audit["chain_ok"].as_bool(), &audit["first_bad"]), (Some(true), &serde_json::Value::Null), "{audit}");
    assert!(audit["seals_verified"].as_u64().is_some_and(|seals| seals >= 2), "{audit}");
    // The exported log verifies alone with the key set too.
    let (code, _, stderr) =
        run(vouchsafe().args(["audit", "export", "--data-dir", "engine", "--keys", "keys", "--format", "log", "--out", "royalty.log"]), &root);
    assert_eq!(code, 0, "{stderr}");
    let (code, verified, stderr) = run(vouchsafe().args(["audit", "verify", "royalty.log", "--keys", "keys", "--json"]), &root);
    assert_eq!((code, verified["chain_ok"].as_bool()), (0, Some(true)), "{verified} {stderr}");
    // The control: an auditor holding only the new key (its engine.pub.pem not the set)
    // cannot verify the seals signed before the rotation.
    std::fs::create_dir(root.join("only-new")).expect("dir");
    let set = std::fs::read_to_string(root.join("keys/engine.pub.pem")).expect("set");
    let first = &set[..set.find("-----END PUBLIC KEY-----").expect("a block") + "-----END PUBLIC KEY-----".len()];
    std::fs::write(root.join("only-new/engine.pub.pem"), format!("{first}\n")).expect("write");
    std::fs::copy(root.join("keys/royalty-master.key"), root.join("only-new/royalty-master.key")).expect("copy");
    let (code, partial, _) = run(vouchsafe().args(["audit", "replay", "--data-dir", "engine", "--keys", "only-new", "--json"]), &root);
    assert_eq!(code, 1, "the old seals need the old key: {partial}");
    let (code, unverified, _) = run(vouchsafe().args(["audit", "verify", "royalty.log", "--keys", "only-new", "--json"]), &root);
    assert_eq!(code, 1, "the exported old seals need the old key too: {unverified}");
}
