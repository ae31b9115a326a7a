//! Forward security as the seed means it (issue 28 item 2), from a shell: the engine runs
//! without the royalty master key, keeping only its royalty chain's current position in
//! its projection store (`royalty-chain.key`); a stolen engine host cannot recompute a past
//! entry key (and with the master key on the host, the old layout, the same attack reads
//! every entry: the negative control); a lost projection store is recovered with the
//! auditor's `audit handover`, and the chain goes on so that the auditor's replay verifies.
//! Embedded backend; every process is started by this test and stopped by its pid.

use engine::crypto::SecretKey;
use engine::log::EventLog;
use projections::royalty::{Chain, ChainPosition, ChainedEntry, genesis};
use projections::royalty_log::EPOCH;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod shell;
use shell::{Running, buy_and_fetch, free_port, passport, run, start_node, vouchsafe, wait_for_port};

struct Market {
    root: PathBuf,
    port: u16,
    url: String,
    media_id: String,
    sales: u32,
}

impl Market {
    fn serve(&self) -> Command {
        let mut command = vouchsafe();
        command
            .args(["serve", "--data-dir", "engine", "--keys", "keys", "--listen", &format!("127.0.0.1:{}", self.port)])
            .env("VOUCHSAFE_SEAL_INTERVAL_MS", "200")
            .current_dir(&self.root);
        command
    }

    fn start(&self) -> Running {
        let running = Running(self.serve().stderr(Stdio::null()).spawn().expect("serve starts"));
        wait_for_port(self.port);
        running
    }

    /// Waits until the engine has sealed every royalty entry (`admin stats`: `seals` grew
    /// past `seals_before`).
    fn sealed_after(&self, seals_before: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, stats, _) = run(vouchsafe().args(["admin", "stats", "--connect", &self.url, "--keys", "keys", "--json"]), &self.root);
            let seals = stats["seals"].as_u64().unwrap_or(0);
            if seals > seals_before {
                return seals;
            }
            assert!(Instant::now() < deadline, "no new seal within 20 s: {stats}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the wait for a graceful exit.
    fn stop(&self, mut serve: Running) {
        assert!(Command::new("kill").args(["-TERM", &serve.0.id().to_string()]).status().expect("kill").success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while serve.0.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "serve did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One sale bought and delivered to alice (retried while the node is not placed yet).
    fn sell_and_deliver(&mut self) {
        self.sales += 1;
        let sale = format!("sale{}.json", self.sales);
        buy_and_fetch(&self.root, &self.url, &self.media_id, &sale);
    }
}

/// Every file under `dirs`, with its bytes: what a thief who takes the host has.
fn host_files(dirs: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut todo: Vec<PathBuf> = dirs.to_vec();
    while let Some(path) = todo.pop() {
        if path.is_dir() {
            todo.extend(std::fs::read_dir(&path).expect("list").map(|entry| entry.expect("entry").path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
    files
}

/// Where `secret` appears on the host, raw or in hex.
fn found_in(files: &[(PathBuf, Vec<u8>)], secret: &[u8; 32]) -> Option<PathBuf> {
    let hex = hex::encode(secret);
    files
        .iter()
        .find(|(_, bytes)| bytes.windows(32).any(|window| window == secret) || bytes.windows(64).any(|window| window.eq_ignore_ascii_case(hex.as_bytes())))
        .map(|(path, _)| path.clone())
}

/// The chain positioned at entry `index` (`A_index`), from the master key: the auditor's view.
fn chain_at(master: &SecretKey, entries: &[ChainedEntry], index: usize) -> Chain {
    Chain::resume(master, EPOCH, index.checked_sub(1).map(|last| &entries[last])).expect("the auditor's key opens the chain")
}

/// The thief's attack: every secret-sized value it can find on the host (each 32-byte
/// window of a chain key file, each 64-hex-digit token of any file), tried as the royalty
/// master key and as the chain secret `A_j` of every past entry; the index of the first
/// entry it opens.
fn attack(files: &[(PathBuf, Vec<u8>)], entries: &[ChainedEntry]) -> Option<usize> {
    let mut candidates: Vec<[u8; 32]> = Vec::new();
    for (path, bytes) in files {
        if path.file_name().is_some_and(|name| name == projections::store::chain_key::CHAIN_KEY_FILE) {
            candidates.extend(bytes.windows(32).map(|window| <[u8; 32]>::try_from(window).expect("32 bytes")));
        }
        for token in bytes.split(|byte| !byte.is_ascii_hexdigit()).filter(|token| token.len() == 64) {
            let mut candidate = [0u8; 32];
            if hex::decode_to_slice(token, &mut candidate).is_ok() {
                candidates.push(candidate);
            }
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    for candidate in &candidates {
        if Chain::start(&SecretKey::from_bytes(*candidate), EPOCH).verify_next(&entries[0]).is_ok() {
            return Some(0);
        }
        for (index, entry) in entries.iter().enumerate() {
            let y_prev = index.checked_sub(1).map_or_else(|| genesis(EPOCH), |last| entries[last].y);
            let position = ChainPosition { epoch: EPOCH, next_index: index as u64, a: SecretKey::from_bytes(*candidate), y_prev };
            if Chain::resume_from(position, EPOCH, &entries[..index]).is_ok_and(|mut chain| chain.verify_next(entry).is_ok()) {
                return Some(index);
            }
        }
    }
    None
}

/// The auditor's replay of the engine's stream (the engine stopped): the report and the
/// chained entries.
fn audited(root: &Path) -> (projections::audit::AuditReport, Vec<ChainedEntry>) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let log = engine::log::embedded::EmbeddedLog::open(&root.join("engine/log")).expect("the engine's log");
        let master = gateways::common::keys::load_royalty_master(&root.join("auditor")).expect("master");
        let public = gateways::common::keys::load_engine_public(&root.join("auditor")).expect("public");
        let (report, projections) = projections::audit::replay_full(&log as &dyn EventLog, &master, &public, None, |_| {}).await.expect("replay");
        (report, projections.royalty.entries.chained())
    })
}

#[test]
fn the_engine_runs_without_the_master_key_a_stolen_host_opens_no_past_entry_and_the_auditor_hands_a_lost_store_over() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    assert!(vouchsafe().args(["keys", "init", "--out", "keys"]).current_dir(&root).status().expect("keys init").success());
    // The auditor's copy: the public key, the checkpoint verifier and the master key.
    std::fs::create_dir(root.join("auditor")).expect("auditor dir");
    for name in ["engine.pub.pem", "checkpoint.vkey", "royalty-master.key"] {
        std::fs::copy(root.join("keys").join(name), root.join("auditor").join(name)).expect("copy to the auditor");
    }
    let port = free_port();
    let mut market = Market { root: root.clone(), port, url: format!("http://127.0.0.1:{port}"), media_id: String::new(), sales: 0 };

    // A first start with the master key on the host (as keys init leaves it): the engine
    // builds its store and chain key; then the key goes to the auditor for good.
    let serve = market.start();
    let (code, merchant, _) = run(
        vouchsafe().args(["keys", "issue", "merchant", "--name", "Shop", "--keys", "keys", "--out", "shop.cred", "--connect", &market.url, "--json"]),
        &root,
    );
    assert_eq!(code, 0, "{merchant}");
    let _node = start_node(&root, &market.url);
    std::fs::write(root.join("song.bin"), (0..40_000u32).map(|i| (i * 7 % 256) as u8).collect::<Vec<u8>>()).expect("song");
    let (code, published, stderr) = run(
        vouchsafe().args(["publish", "--connect", &market.url, "--cred", "keys/operator.cred", "--engine-key", "keys/engine.pub.pem", "song.bin", "--json"]),
        &root,
    );
    assert_eq!(code, 0, "{published} {stderr}");
    market.media_id = published["media"][0]["media_id"].as_str().expect("media id").to_string();
    let (code, passport, stderr) = passport(&root, &market.url, "alice");
    assert_eq!(code, 0, "{passport} {stderr}");
    market.sell_and_deliver();
    market.sell_and_deliver();
    let seals = market.sealed_after(0);
    market.stop(serve);
    std::fs::remove_file(root.join("keys/royalty-master.key")).expect("the master key leaves the engine host");

    // Without the master key the engine resumes from its chain key and chains on.
    let serve = market.start();
    market.sell_and_deliver();
    // AuditService cannot recompute the chain here: a precise refusal, not a wrong answer.
    let (code, issued, _) =
        run(vouchsafe().args(["keys", "issue", "auditor", "--keys", "keys", "--out", "auditor.cred", "--connect", &market.url, "--json"]), &root);
    assert_eq!(code, 0, "{issued}");
    let (code, refused, _) = run(vouchsafe().args(["audit", "replay", "--connect", &market.url, "--cred", "auditor.cred", "--json"]), &root);
    assert_eq!((code, refused["refused"].as_str()), (1, Some("FailedPrecondition")), "{refused}");
    market.sealed_after(seals); // a seal over the new entry, signed without the master key
    market.stop(serve);
    let (report, entries) = audited(&root);
    assert!(report.first_bad.is_none() && report.chain_ok, "the chain the engine wrote without the master key verifies: {report:?}");
    assert!(entries.len() >= 3, "an entry per delivery: {}", entries.len());
    assert!(report.seals_verified >= 2, "seals signed before and after the restart: {report:?}");

    // The stolen host: the engine's key directory and data directory.
    let stolen = host_files(&[root.join("keys"), root.join("engine")]);
    let master = gateways::common::keys::load_royalty_master(&root.join("auditor")).expect("master");
    assert_eq!(found_in(&stolen, master.expose()), None, "the master key is not on the host");
    for index in 0..entries.len() {
        let chain = chain_at(&master, &entries, index);
        assert_eq!(found_in(&stolen, chain.position().a.expose()), None, "A_{index} is not on the host");
        assert_eq!(found_in(&stolen, chain.next_entry_key().expose()), None, "K_{index} is not on the host");
    }
    let current = chain_at(&master, &entries, entries.len());
    assert!(found_in(&stolen, current.position().a.expose()).is_some_and(|path| path.ends_with("projections/royalty-chain.key")), "the one secret kept: A_n");
    assert_eq!(attack(&stolen, &entries), None, "a stolen engine host opens no past entry");
    // The negative control: with the master key on the host (the layout before this change),
    // the same attack opens the first entry.
    std::fs::copy(root.join("auditor/royalty-master.key"), root.join("keys/royalty-master.key")).expect("the old layout");
    let stolen_old_layout = host_files(&[root.join("keys"), root.join("engine")]);
    assert_eq!(attack(&stolen_old_layout, &entries), Some(0), "with the master key on the host every past entry opens");
    std::fs::remove_file(root.join("keys/royalty-master.key")).expect("back to the forward-secure layout");

    // The projection store is lost: the engine refuses to start (it cannot chain from A_0)
    // and says what to do.
    std::fs::remove_dir_all(root.join("engine/projections")).expect("lose the store");
    let (code, _, stderr) = run(&mut market.serve(), &root);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("audit handover"), "the refusal names the recovery: {stderr}");
    assert!(!root.join("engine/projections").exists(), "the refusal created no store");
    // The auditor hands a store over; the engine resumes from it and chains on.
    let (code, handover, stderr) =
        run(vouchsafe().args(["audit", "handover", "--data-dir", "engine", "--keys", "auditor", "--out", "handed", "--json"]), &root);
    assert_eq!(code, 0, "{handover} {stderr}");
    assert_eq!(handover["chain_next_entry"].as_u64(), Some(entries.len() as u64), "{handover}");
    assert_eq!(handover["state_digest"].as_str(), Some(report.state_digest.as_str()), "the store is the audited state");
    let (code, again, _) = run(vouchsafe().args(["audit", "handover", "--data-dir", "engine", "--keys", "auditor", "--out", "handed", "--json"]), &root);
    assert_eq!(code, 2, "a handover never overwrites a store: {again}");
    std::fs::rename(root.join("handed"), root.join("engine/projections")).expect("move the store to the engine");
    let serve = market.start();
    market.sell_and_deliver();
    std::thread::sleep(Duration::from_millis(600));
    market.stop(serve);
    let (report, after) = audited(&root);
    assert!(report.first_bad.is_none() && report.chain_ok, "the chain verifies across the handover: {report:?}");
    assert!(after.len() > entries.len(), "the engine chained on after the handover");
    assert_eq!(&after[..entries.len()], entries.as_slice(), "the entries before the loss are the same");
}
