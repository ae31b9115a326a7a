//! The NATS configurations shipped in deploy/ are valid for the nats-server the tests use
//! and keep the durability the design requires (fsync before every acknowledgement); the
//! engine's example config (deploy/engine.toml) and the TLS example in deploy/README.md
//! are valid `serve --config` files, and the example sets every key there is.

use std::path::{Path, PathBuf};
use std::process::Command;

fn configs() -> Vec<PathBuf> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut found = vec![deploy.join("nats-single.conf"), deploy.join("nats-auth.conf")];
    let mut cluster: Vec<PathBuf> = std::fs::read_dir(deploy.join("nats-cluster"))
        .expect("deploy/nats-cluster exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "conf"))
        .collect();
    cluster.sort();
    assert_eq!(cluster.len(), 3, "the cluster ships three node configurations");
    found.extend(cluster);
    found
}

#[test]
fn every_shipped_nats_config_is_valid_and_fsyncs_every_write() {
    let binary = replay_tests::find_binary().unwrap_or_else(|e| panic!("{e}"));
    for config in configs() {
        let output = Command::new(&binary).arg("-c").arg(&config).arg("-t").output().expect("run nats-server -t");
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && said.contains("is valid"), "{} is not valid: {said}", config.display());
        let text = std::fs::read_to_string(&config).expect("readable config");
        assert!(text.lines().any(|line| line.trim() == "sync_interval: always"), "{} must fsync every write", config.display());
    }
}

/// deploy/nats-auth.conf (run against a real server by audit_read_only.rs) grants no user a
/// way to change, empty or remove a stream, nor a blanket wildcard; and it keeps the three
/// kinds of users.
#[test]
fn the_auth_config_grants_no_one_stream_changes_or_wildcards() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats-auth.conf");
    let text = std::fs::read_to_string(&path).expect("deploy/nats-auth.conf");
    let granted: Vec<&str> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter(|code| !code.contains("deny"))
        .flat_map(|code| code.split('"').skip(1).step_by(2))
        .collect();
    assert!(granted.contains(&"vs.>") && granted.contains(&"$JS.API.STREAM.INFO.VOUCHSAFE"), "{granted:?}");
    for subject in &granted {
        for forbidden in ["STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE", "MSG.DELETE"] {
            assert!(!subject.contains(forbidden), "deploy/nats-auth.conf grants {subject}");
        }
        assert!(![">", "$JS.>", "$JS.API.>"].contains(subject), "deploy/nats-auth.conf grants {subject}");
    }
    for user in ["user: engine", "user: auditor", "user: node-NODE_A_ID"] {
        assert!(text.contains(user), "deploy/nats-auth.conf has no {user}");
    }
}

#[test]
fn negative_control_a_broken_config_is_caught() {
    let binary = replay_tests::find_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.conf");
    std::fs::write(&broken, "jetstream {\n  sync_interval: sometimes\n}\n").expect("write");
    let output = Command::new(&binary).arg("-c").arg(&broken).arg("-t").output().expect("run nats-server -t");
    assert!(!output.status.success(), "nats-server accepted a broken config");
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn the_engine_example_config_parses_and_sets_every_key() {
    let path = deploy_dir().join("engine.toml");
    let config = gateways::server::serve::load_file(&path).unwrap_or_else(|e| panic!("{e:#}"));
    // No `..`: a new key in `FileConfig` fails to compile here until the example has it.
    let gateways::server::serve::FileConfig {
        listen,
        metrics_listen,
        console_listen,
        tlog_listen,
        data_dir,
        media_dir,
        keys,
        nats_url,
        stream,
        replicas,
        group_commit,
        log_format,
        access_ttl_ms,
        sweep_interval_ms,
        seal_interval_ms,
        seal_entries_min,
        request_bytes_max,
        upload_bytes_max,
        requests_in_flight_max,
        assignment_feeds_max,
        request_read_ms,
        upload_read_ms,
        credential_requests_per_s,
        credential_requests_burst,
        peer_refusals_per_s,
        peer_refusals_burst,
        connections_per_peer_max,
        connections_max,
        preface_ms,
        tls,
    } = config;
    let set = [
        ("listen", listen.is_some()),
        ("metrics_listen", metrics_listen.is_some()),
        ("console_listen", console_listen.is_some()),
        ("tlog_listen", tlog_listen.is_some()),
        ("data_dir", data_dir.is_some()),
        ("media_dir", media_dir.is_some()),
        ("keys", keys.is_some()),
        ("nats_url", nats_url.is_some()),
        ("stream", stream.is_some()),
        ("replicas", replicas.is_some()),
        ("group_commit", group_commit.is_some()),
        ("log_format", log_format.is_some()),
        ("access_ttl_ms", access_ttl_ms.is_some()),
        ("sweep_interval_ms", sweep_interval_ms.is_some()),
        ("seal_interval_ms", seal_interval_ms.is_some()),
        ("seal_entries_min", seal_entries_min.is_some()),
        ("request_bytes_max", request_bytes_max.is_some()),
        ("upload_bytes_max", upload_bytes_max.is_some()),
        ("requests_in_flight_max", requests_in_flight_max.is_some()),
        ("assignment_feeds_max", assignment_feeds_max.is_some()),
        ("request_read_ms", request_read_ms.is_some()),
        ("upload_read_ms", upload_read_ms.is_some()),
        ("credential_requests_per_s", credential_requests_per_s.is_some()),
        ("credential_requests_burst", credential_requests_burst.is_some()),
        ("peer_refusals_per_s", peer_refusals_per_s.is_some()),
        ("peer_refusals_burst", peer_refusals_burst.is_some()),
        ("connections_per_peer_max", connections_per_peer_max.is_some()),
        ("connections_max", connections_max.is_some()),
        ("preface_ms", preface_ms.is_some()),
        ("tls", tls.is_some()),
    ];
    for (key, present) in set {
        assert!(present, "deploy/engine.toml does not set {key}");
    }
    let tls = tls.expect("checked above");
    assert!(tls.client_ca.is_some(), "deploy/engine.toml shows mTLS (tls.client_ca)");
    // The values pass the same checks `serve` applies at start (ranges, log format).
    let settings =
        gateways::server::serve::settings(&gateways::server::serve::ServeArgs { config: Some(path), ..Default::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(settings.engine.tls.is_some());
}

/// The ```toml blocks of deploy/README.md.
fn readme_toml_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).expect("deploy/README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_tls_example_in_the_deploy_readme_is_a_valid_serve_config() {
    let blocks = readme_toml_blocks();
    assert!(!blocks.is_empty(), "deploy/README.md shows a serve config");
    let dir = tempfile::tempdir().expect("temp dir");
    for (index, block) in blocks.iter().enumerate() {
        let path = dir.path().join(format!("readme-{index}.toml"));
        std::fs::write(&path, block).expect("write");
        let config = gateways::server::serve::load_file(&path).unwrap_or_else(|e| panic!("deploy/README.md block {index}: {e:#}\n{block}"));
        let tls = config.tls.unwrap_or_else(|| panic!("deploy/README.md block {index} has no [tls] section:\n{block}"));
        assert!(tls.client_ca.is_some(), "the README's example shows mTLS");
    }
    // Negative control: a misspelt key in the same example is refused.
    let misspelt = dir.path().join("misspelt.toml");
    std::fs::write(&misspelt, blocks[0].replace("client_ca", "client_cert_authority")).expect("write");
    let error = gateways::server::serve::load_file(&misspelt).expect_err("an unknown key is refused");
    assert!(format!("{error:#}").contains("client_cert_authority"), "{error:#}");
}
