//! Engine key rotation without downtime (issue 28 item 1), from a shell: a sale before the
//! rotation, `keys rotate engine` against the running engine, sales after it (of media
//! published before it, whose key was wrapped for the old engine key, and of media
//! published after it), then `keys revoke engine` refused during the grace period and
//! accepted after it. Every delivered copy, signed before or after, verifies with the key
//! set (`inspect`), and the auditor's replay verifies every seal with the key it names.
//! Embedded backend; every process is started by this test and stopped by its pid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod shell;
use shell::{Running, buy_and_fetch, passport, run, start_node, vouchsafe};

struct Shop {
    root: PathBuf,
    url: String,
    sales: u32,
}

impl Shop {
    fn publish(&self, name: &str, seed: u32) -> String {
        shell::publish(&self.root, &self.url, name, &(0..30_000u32).map(|i| ((i + seed) * 7 % 256) as u8).collect::<Vec<u8>>())
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

/// Keys in `root/keys`, `serve` (a seal every 200 ms), the merchant `shop.cred`, a node and
/// alice's passport: the shop, the engine and the node (both stopped by pid on drop).
fn open_shop(root: &Path) -> (Shop, Running, Running) {
    let (serve, url, _) = shell::open_market(root, &[], &[("VOUCHSAFE_SEAL_INTERVAL_MS", "200")]);
    let node = start_node(root, &url);
    let (code, passport, stderr) = passport(root, &url, "alice");
    assert_eq!(code, 0, "{passport} {stderr}");
    (Shop { root: root.to_path_buf(), url, sales: 0 }, serve, node)
}

#[test]
fn the_engine_key_rotates_while_serving_old_signatures_verify_and_a_retired_key_is_revoked_after_its_grace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut shop, mut serve, _node) = open_shop(dir.path());
    let (root, url) = (shop.root.clone(), shop.url.clone());
    let before = shop.publish("before.bin", 1);
    let old_copy = shop.sell(&before);
    // A seal under the old key before the rotation (the control below needs one).
    wait_for_seal(&root, &url, 0);
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
    let after = stats(&root);
    assert_eq!((&after["certificates_revoked"], &after["engine_keys_revoked"]), (&serde_json::json!(1), &serde_json::json!(1)), "{after}");

    // SIGTERM, then the auditor's replay: every seal, before and after, verifies with the key it names.
    stop(&mut serve);
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

/// SIGTERM to `serve`, and its exit within 30 s.
fn stop(serve: &mut Running) {
    assert!(Command::new("kill").args(["-TERM", &serve.0.id().to_string()]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while serve.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "serve did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `admin stats`' seal count.
fn seals(root: &Path, url: &str) -> u64 {
    run(vouchsafe().args(["admin", "stats", "--connect", url, "--keys", "keys", "--json"]), root).1["seals"].as_u64().unwrap_or(0)
}

/// Waits until the engine has recorded more than `than` seals.
fn wait_for_seal(root: &Path, url: &str, than: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = seals(root, url);
        if now > than {
            return now;
        }
        assert!(Instant::now() < deadline, "no seal past {than} within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn buy(root: &Path, url: &str, media: &str, sale: &str) -> serde_json::Value {
    let (code, bought, stderr) =
        run(vouchsafe().args(["merchant", "buy", "--media", media, "--connect", url, "--cred", "shop.cred", "--out", sale, "--json"]), root);
    assert_eq!(code, 0, "{bought} {stderr}");
    serde_json::from_str(&std::fs::read_to_string(root.join(sale)).expect("sale file")).expect("sale JSON")
}

fn fetch(root: &Path, sale: &str) -> (i32, serde_json::Value, String) {
    run(vouchsafe().args(["player", "fetch", "--sale", sale, "--consumer", "alice", "--data-dir", "players", "--json"]), root)
}

/// Token and checkpoint keys rotate while the engine serves (issue 28 item 1): a sale made
/// under token key 1 is fetched after the rotation; a sale after it names token key 2 and is
/// served by a node that registered before the rotation (it takes up its new access key by
/// itself). The control: the same grant claiming token key 1 is refused, so its access
/// token really is key 2's. Checkpoints: seals before and after the rotation verify with the
/// rotated key set (`checkpoint.vkey` plus `retired/checkpoint.vkeys`); the controls: an
/// auditor with only the new vkey, or only the old one, fails.
#[test]
fn token_and_checkpoint_keys_rotate_while_serving_and_what_came_before_still_verifies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (shop, mut serve, _node) = open_shop(dir.path());
    let (root, url) = (shop.root.clone(), shop.url.clone());
    let media = shop.publish("song.bin", 3);
    buy_and_fetch(&root, &url, &media, "first.json");
    let before = buy(&root, &url, &media, "before.json");
    assert_eq!(before["token_key_id"], 1, "{before}");

    // The token key rotation.
    let (code, rotated, stderr) = run(vouchsafe().args(["keys", "rotate", "token", "--keys", "keys", "--connect", &url, "--json"]), &root);
    assert_eq!(code, 0, "{rotated} {stderr}");
    assert_eq!(
        (&rotated["key_id"], &rotated["previous_key_id"], &rotated["key_ids"]),
        (&serde_json::json!(2), &serde_json::json!(1), &serde_json::json!([2, 1]))
    );
    let token_file = std::fs::read_to_string(root.join("keys/token.key")).expect("token.key");
    assert_eq!(token_file.lines().map(|line| line.split(' ').next().unwrap_or_default()).collect::<Vec<_>>(), ["2", "1"]);
    let after = buy(&root, &url, &media, "after.json");
    assert_eq!(after["token_key_id"], 2, "new access tokens use the new key: {after}");
    // The control first (a refused grant changes nothing): the grant claiming key 1.
    let mut claimed = after.clone();
    claimed["token_key_id"] = serde_json::json!(1);
    std::fs::write(root.join("claimed.json"), claimed.to_string()).expect("write");
    let (code, refused, _) = fetch(&root, "claimed.json");
    assert_eq!(code, 1, "an access token made under key 2 does not pass as key 1's: {refused}");
    let (code, fetched, stderr) = fetch(&root, "after.json");
    assert_eq!((code, &fetched["decrypt_ok"]), (0, &serde_json::json!(true)), "the node takes up its key 2 access key: {fetched} {stderr}");
    let (code, fetched, stderr) = fetch(&root, "before.json");
    assert_eq!((code, &fetched["decrypt_ok"]), (0, &serde_json::json!(true)), "a sale under token key 1 still delivers: {fetched} {stderr}");
    let (code, again, _) = run(vouchsafe().args(["keys", "rotate", "token", "--keys", "keys", "--record-only", "--connect", &url, "--json"]), &root);
    assert_eq!((code, again["changed"].as_bool()), (0, Some(false)), "{again}");

    // The checkpoint key rotation, between seals.
    wait_for_seal(&root, &url, 0);
    let old_vkey = std::fs::read_to_string(root.join("keys/checkpoint.vkey")).expect("vkey");
    let (code, rotated, stderr) = run(vouchsafe().args(["keys", "rotate", "checkpoint", "--keys", "keys", "--connect", &url, "--json"]), &root);
    assert_eq!(code, 0, "{rotated} {stderr}");
    let new_vkey = std::fs::read_to_string(root.join("keys/checkpoint.vkey")).expect("vkey");
    assert_eq!((rotated["key_id"].as_str(), rotated["previous_key_id"].as_str()), (Some(new_vkey.trim()), Some(old_vkey.trim())), "{rotated}");
    assert_eq!(new_vkey.split('+').next(), old_vkey.split('+').next(), "the origin stays");
    assert_eq!(new_vkey.lines().count(), 1, "checkpoint.vkey stays one line (CLI.md)");
    let after_rotation = seals(&root, &url);
    let stats = run(vouchsafe().args(["admin", "stats", "--connect", &url, "--keys", "keys", "--json"]), &root).1;
    assert_eq!(
        (&stats["token_key_id"], &stats["token_key_ids"], stats["checkpoint_vkey"].as_str()),
        (&serde_json::json!(2), &serde_json::json!([2, 1]), Some(new_vkey.trim())),
        "{stats}"
    );
    buy_and_fetch(&root, &url, &media, "last.json");
    // A seal after the rotation (the last sale's entry makes one); then time for the one
    // over that entry (a seal in flight during the rotation may still be the old key's).
    wait_for_seal(&root, &url, after_rotation);
    std::thread::sleep(Duration::from_millis(1_000));

    stop(&mut serve);
    let (code, audit, stderr) = run(vouchsafe().args(["audit", "replay", "--data-dir", "engine", "--keys", "keys", "--json"]), &root);
    assert_eq!((code, &audit["first_bad"]), (0, &serde_json::Value::Null), "{audit} {stderr}");
    // The controls: an auditor with one of the two checkpoint keys only.
    for (name, vkey) in [("only-new-vkey", &new_vkey), ("only-old-vkey", &old_vkey)] {
        std::fs::create_dir(root.join(name)).expect("dir");
        for file in ["engine.pub.pem", "royalty-master.key"] {
            std::fs::copy(root.join("keys").join(file), root.join(name).join(file)).expect("copy");
        }
        std::fs::write(root.join(name).join("checkpoint.vkey"), vkey).expect("write");
        let (code, partial, _) = run(vouchsafe().args(["audit", "replay", "--data-dir", "engine", "--keys", name, "--json"]), &root);
        assert_eq!(code, 1, "{name}: the seals of the other key do not verify: {partial}");
    }
}

/// Keys the directory rotated while the engine was down (a rotation whose call to the
/// engine failed, a directory copied from the engine that rotated): at start the engine
/// records them before it signs or makes anything with them, so each key's validity on the
/// stream starts before its first use (an audit faults a seal signed before its key's
/// rotation: `store::tests::a_seal_signed_with_a_key_before_its_rotation_is_outside_the_keys_validity`).
#[test]
fn keys_rotated_while_the_engine_was_down_are_recorded_at_start_before_their_first_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (shop, mut serve, node) = open_shop(dir.path());
    let (root, url) = (shop.root.clone(), shop.url.clone());
    let media = shop.publish("song.bin", 5);
    buy_and_fetch(&root, &url, &media, "first.json");
    wait_for_seal(&root, &url, 0);
    stop(&mut serve);
    drop(node);
    let keys = root.join("keys");
    gateways::common::keys::rotate_engine(&keys).expect("engine key files");
    gateways::common::keys::rotate_token(&keys).expect("token.key");
    gateways::common::keys::rotate_checkpoint(&keys).expect("checkpoint key files");

    let (mut serve, url) = shell::serve(&root, &[], &[("VOUCHSAFE_SEAL_INTERVAL_MS", "200")]);
    // A new node (the first one's credential and data go).
    std::fs::remove_file(root.join("node.cred")).expect("the first node's credential");
    std::fs::remove_dir_all(root.join("node")).expect("the first node's data");
    let _node = start_node(&root, &url);
    let after_start = seals(&root, &url);
    let fetched = buy_and_fetch(&root, &url, &media, "after.json");
    assert_eq!(fetched["decrypt_ok"], true);
    wait_for_seal(&root, &url, after_start);
    std::thread::sleep(Duration::from_millis(1_000));
    stop(&mut serve);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let log = engine::log::embedded::EmbeddedLog::open(&root.join("engine/log")).expect("the engine's log");
    let stored = runtime.block_on(engine::log::EventLog::read_from(&log, engine::ids::Seq(1), 100_000)).expect("read");
    let events: Vec<engine::domain::event::Event> =
        stored.iter().filter_map(|event| engine::wire::decode(&event.payload).ok()).map(|recorded| recorded.event).collect();
    use engine::domain::event::Event;
    let rotation_at = |kind: &str, wanted: fn(&Event) -> bool| events.iter().position(wanted).unwrap_or_else(|| panic!("the {kind} rotation is recorded"));
    let engine_rotation = rotation_at("engine", |event| matches!(event, Event::EngineKeyRotated { .. }));
    let token_rotation = rotation_at("token", |event| matches!(event, Event::TokenKeyRotated { .. }));
    let checkpoint_rotation = rotation_at("checkpoint", |event| matches!(event, Event::CheckpointKeyRotated { .. }));
    let new_key = gateways::common::keys::load_engine_public(&keys).expect("key").key_id();
    let first_new_seal =
        events.iter().position(|event| matches!(event, Event::RightsReportSealed(seal) if seal.engine_key_id == new_key)).expect("a seal with the new key");
    let first_new_reservation = events.iter().position(|event| matches!(event, Event::Reserved { token_key_id: 2, .. })).expect("a sale under token key 2");
    assert!(engine_rotation < first_new_seal && checkpoint_rotation < first_new_seal, "recorded before the new keys sign");
    assert!(token_rotation < first_new_reservation, "recorded before the new token key is used");
    drop(log);
    let (code, audit, stderr) = run(vouchsafe().args(["audit", "replay", "--data-dir", "engine", "--keys", "keys", "--json"]), &root);
    assert_eq!((code, &audit["first_bad"]), (0, &serde_json::Value::Null), "{audit} {stderr}");
}
