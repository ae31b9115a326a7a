//! The NATS configurations shipped in deploy/ are valid for the nats-server the tests use
//! and keep the durability the design requires (fsync before every acknowledgement).

use std::path::{Path, PathBuf};
use std::process::Command;

fn configs() -> Vec<PathBuf> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut found = vec![deploy.join("nats-single.conf")];
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

#[test]
fn negative_control_a_broken_config_is_caught() {
    let binary = replay_tests::find_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.conf");
    std::fs::write(&broken, "jetstream {\n  sync_interval: sometimes\n}\n").expect("write");
    let output = Command::new(&binary).arg("-c").arg(&broken).arg("-t").output().expect("run nats-server -t");
    assert!(!output.status.success(), "nats-server accepted a broken config");
}
