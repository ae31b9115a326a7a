//! After `vouchsafe demo`, every delivered copy under `<data-dir>/players/` names its
//! purchase: `vouchsafe inspect COPY --keys <data-dir>/keys` shows a transaction record that
//! verifies with the engine's key, and the published containers (format 2, two renditions,
//! a preview clip) verify with the demo's publisher key. Issue 9's "done when".

use std::path::{Path, PathBuf};
use std::process::Command;

fn vouchsafe(args: &[&str]) -> (i32, serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vouchsafe")).args(args).output().expect("run vouchsafe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), value, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn files_with_extension(dir: &Path, extension: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").map(|entry| entry.expect("entry").path()) {
        if entry.is_dir() {
            files_with_extension(&entry, extension, found);
        } else if entry.extension().is_some_and(|e| e == extension) {
            found.push(entry);
        }
    }
}

#[test]
fn every_copy_the_demo_delivers_names_its_purchase_and_its_containers_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8 path");
    let (code, summary, stderr) = vouchsafe(&["demo", "--vouchers", "30", "--json", "--data-dir", data]);
    assert_eq!(code, 0, "{summary} {stderr}");
    let delivered = summary["delivered"].as_u64().expect("delivered");
    assert!(delivered > 0);
    assert_eq!(summary["copies_inspected_ok"].as_u64(), Some(delivered), "{summary}");
    assert_eq!(summary["container_format"].as_u64(), Some(3), "{summary}");
    assert!(summary["low_rendition_delivered"].as_u64() > Some(0), "some sales are of the low rendition: {summary}");

    let mut copies = Vec::new();
    files_with_extension(&dir.path().join("players"), "media", &mut copies);
    assert_eq!(copies.len() as u64, delivered, "one delivered copy per delivered media");
    let keys = dir.path().join("keys");
    let (code, report, stderr) = vouchsafe(&["inspect", copies[0].to_str().expect("utf-8"), "--keys", keys.to_str().expect("utf-8"), "--json"]);
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(report["kind"], "delivered_copy");
    let transaction = &report["transaction"];
    assert_eq!(transaction["signature_ok"], true, "{report}");
    assert!(
        transaction["voucher_id"].as_str().is_some_and(|id| copies[0].file_name().and_then(|n| n.to_str()).is_some_and(|name| name.starts_with(id))),
        "{report}"
    );
    assert!(transaction["delivered_at"].as_i64() > Some(0) && transaction["consumer_cert"].as_str().is_some_and(|c| !c.is_empty()), "{report}");

    let mut containers = Vec::new();
    files_with_extension(&dir.path().join("media"), "vsmc", &mut containers);
    assert_eq!(containers.len(), 5, "the demo publishes five media");
    let publisher = dir.path().join("publisher/publisher.pub.pem");
    let (code, report, stderr) =
        vouchsafe(&["inspect", containers[0].to_str().expect("utf-8"), "--publisher-key", publisher.to_str().expect("utf-8"), "--json"]);
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(
        (report["format_version"].as_u64(), report["signature_ok"].as_bool(), report["publisher_key_ok"].as_bool()),
        (Some(3), Some(true), Some(true)),
        "{report}"
    );
    assert_eq!(report["renditions"].as_array().map(Vec::len), Some(2));
    assert!(report["preview"]["clip_bytes"].as_u64() > Some(0), "{report}");
    assert_eq!(report["transaction"], serde_json::Value::Null);
}
