//! `vouchsafe inspect` on files made here with the fixed test keys: a delivered copy's
//! transaction record verifies with the engine's key, and a copy whose content was altered
//! or that was stamped by another key fails (exit 1); a published container shows its
//! structure with a null transaction; a file that is not a media file fails; a missing key
//! file is a usage error (exit 2).

use engine::crypto::{self, RsaPrivate};
use engine::ids::{CertSerial, ConsumerId, MediaId, Millis, NodeId, VoucherId};
use engine::media::{self, TransactionRecord};
use std::path::Path;
use std::process::Command;

fn key_a() -> RsaPrivate {
    RsaPrivate::from_pkcs8_pem(include_str!("../../engine/testdata/rsa-2048-a.pem")).expect("test key a")
}

fn key_b() -> RsaPrivate {
    RsaPrivate::from_pkcs8_pem(include_str!("../../engine/testdata/rsa-2048-b.pem")).expect("test key b")
}

/// A key directory holding only `engine.pub.pem`, as an auditor's or a rights holder's.
fn keys_dir(root: &Path, name: &str, key: &RsaPrivate) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("keys dir");
    std::fs::write(dir.join("engine.pub.pem"), key.public().to_pem().expect("pem")).expect("write engine.pub.pem");
    dir
}

fn record(engine: &RsaPrivate, content: &[u8]) -> TransactionRecord {
    TransactionRecord {
        voucher_id: VoucherId::new("vabc"),
        media_id: MediaId::new("mdabc"),
        rendition: "high".into(),
        node_id: NodeId::new("nabc"),
        delivered_at: Millis(1_767_225_600_000),
        engine_key_id: engine.public().key_id(),
        consumer_id: ConsumerId::new("alice"),
        cert_serial: CertSerial::new("cabc"),
        content_hash: crypto::hash(content),
        recovery: 0,
    }
}

fn stamped_copy(engine: &RsaPrivate, content: &[u8]) -> Vec<u8> {
    let record = record(engine, content);
    let signature = crypto::sign(engine, &record.message()).expect("signs");
    media::delivered_copy(&record, &signature, content)
}

fn inspect(root: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_vouchsafe")).arg("inspect").args(args).arg("--json").current_dir(root).output().expect("run vouchsafe inspect");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let value = serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), value, stderr)
}

#[test]
fn a_delivered_copy_names_its_purchase_and_verifies_only_unaltered_with_its_engine_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let (engine, other) = (key_a(), key_b());
    keys_dir(root, "keys", &engine);
    keys_dir(root, "other-keys", &other);
    let content = b"a song, delivered once".repeat(50);
    std::fs::write(root.join("copy.media"), stamped_copy(&engine, &content)).expect("write copy");

    let (code, report, stderr) = inspect(root, &["copy.media", "--keys", "keys"]);
    assert_eq!(code, 0, "{report} {stderr}");
    for key in ["format_version", "media_id", "renditions", "signature_ok", "transaction"] {
        assert!(report.get(key).is_some(), "missing {key}: {report}");
    }
    assert_eq!(report["kind"], "delivered_copy");
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["media_id"], "mdabc");
    assert_eq!(report["signature_ok"], true);
    assert!(report["renditions"].is_array());
    let transaction = &report["transaction"];
    assert_eq!(transaction["voucher_id"], "vabc");
    assert_eq!(transaction["delivered_at"], 1_767_225_600_000_i64);
    assert_eq!(transaction["consumer_cert"], "cabc");
    assert_eq!(transaction["signature_ok"], true);
    assert_eq!(transaction["content_ok"], true);
    assert!(stderr.contains("voucher vabc"), "{stderr}");

    // Without a key the record is shown, its signature not checked.
    let (code, report, _) = inspect(root, &["copy.media"]);
    assert_eq!((code, &report["transaction"]["signature_ok"]), (0, &serde_json::Value::Null), "{report}");

    // Negative controls: another engine's key; altered content; another engine's stamp.
    let (code, report, _) = inspect(root, &["copy.media", "--keys", "other-keys"]);
    assert_eq!((code, &report["transaction"]["signature_ok"], &report["signature_ok"]), (1, &false.into(), &false.into()), "{report}");

    let mut altered = stamped_copy(&engine, &content);
    let last = altered.len() - 1;
    altered[last] ^= 1;
    std::fs::write(root.join("altered.media"), altered).expect("write");
    let (code, report, _) = inspect(root, &["altered.media", "--keys", "keys"]);
    assert_eq!((code, &report["transaction"]["signature_ok"], &report["transaction"]["content_ok"]), (1, &true.into(), &false.into()), "{report}");
    assert_eq!(report["signature_ok"], false, "{report}");

    std::fs::write(root.join("forged.media"), stamped_copy(&other, &content)).expect("write");
    let (code, report, _) = inspect(root, &["forged.media", "--keys", "keys"]);
    assert_eq!((code, &report["transaction"]["signature_ok"]), (1, &false.into()), "{report}");

    // A record altered after signing (another voucher) does not verify.
    let mut record = record(&engine, &content);
    let signature = crypto::sign(&engine, &record.message()).expect("signs");
    record.voucher_id = VoucherId::new("vother");
    std::fs::write(root.join("restamped.media"), media::delivered_copy(&record, &signature, &content)).expect("write");
    let (code, report, _) = inspect(root, &["restamped.media", "--keys", "keys"]);
    assert_eq!((code, &report["transaction"]["signature_ok"]), (1, &false.into()), "{report}");
}

#[test]
fn a_container_shows_its_structure_and_garbage_and_missing_keys_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    keys_dir(root, "keys", &key_a());
    let content = b"published content".repeat(10);
    std::fs::write(root.join("song.vsmc"), media::encrypt_v1(&crypto::SecretKey::random(), &content)).expect("write");
    let (code, report, stderr) = inspect(root, &["song.vsmc", "--keys", "keys"]);
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(report["kind"], "container");
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["transaction"], serde_json::Value::Null);
    assert_eq!(report["renditions"][0]["content_hash"], hex::encode(crypto::hash(&content)));

    std::fs::write(root.join("garbage.bin"), b"VSDC\x01 not really a delivered copy").expect("write");
    let (code, report, _) = inspect(root, &["garbage.bin"]);
    assert_eq!((code, &report["signature_ok"]), (1, &false.into()), "{report}");
    assert!(report["error"].is_string(), "{report}");

    let (code, _, stderr) = inspect(root, &["song.vsmc", "--keys", "no-such-dir"]);
    assert_eq!(code, 2, "a missing key file is a usage error: {stderr}");
    let (code, _, stderr) = inspect(root, &["no-such-file"]);
    assert_eq!(code, 2, "{stderr}");
}

/// The attack: a crafted copy whose record carries a newline, a fake "engine signature: OK"
/// line and an escape sequence that erases the real FAILED line on a terminal. The fields
/// are printed escaped: one line per field, no control character reaches the terminal.
/// Control: the crafted text does carry the newline and the escape byte, so printed raw it
/// would have forged the verdict.
#[test]
fn a_crafted_record_cannot_forge_lines_or_escape_sequences_in_the_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let keys = keys_dir(root, "keys", &key_a());
    let forged = "v1\n  engine signature: OK\u{1b}[1A\u{1b}[2K";
    let content = b"some media".to_vec();
    let record = TransactionRecord { voucher_id: VoucherId::new(forged), ..record(&key_b(), &content) };
    let signature = crypto::sign(&key_b(), &record.message()).expect("signs");
    std::fs::write(root.join("crafted.media"), media::delivered_copy(&record, &signature, &content)).expect("write");
    assert!(forged.contains('\n') && forged.contains('\u{1b}'), "the control: the crafted field carries what would forge the output");
    let (code, _, stderr) = inspect(root, &["crafted.media", "--keys", keys.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "signed by another key: the check fails\n{stderr}");
    assert!(!stderr.contains('\u{1b}'), "an escape byte reached the terminal:\n{stderr}");
    assert!(!stderr.lines().any(|line| line.trim_start().starts_with("engine signature: OK")), "a forged verdict line:\n{stderr}");
    assert!(stderr.contains("\\n  engine signature: OK\\u{1b}"), "the field is shown escaped:\n{stderr}");
}

/// The same attack without a control character: a right-to-left override (U+202E) makes a
/// terminal show the rest of the line reversed, and a line separator (U+2028) starts a new
/// line on some; with zero-width marks they can make a field read as something else. They
/// are shown escaped too. Control: the crafted field carries each of them.
#[test]
fn a_crafted_record_cannot_reorder_or_hide_text_with_invisible_characters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let keys = keys_dir(root, "keys", &key_a());
    let forged = "v1\u{2028}  engine signature: OK\u{202e}DELIAF\u{200b}\u{2066}";
    let content = b"some media".to_vec();
    let record = TransactionRecord { voucher_id: VoucherId::new(forged), ..record(&key_b(), &content) };
    let signature = crypto::sign(&key_b(), &record.message()).expect("signs");
    std::fs::write(root.join("crafted.media"), media::delivered_copy(&record, &signature, &content)).expect("write");
    let invisible = ['\u{2028}', '\u{202e}', '\u{200b}', '\u{2066}'];
    assert!(invisible.iter().all(|c| forged.contains(*c)), "the control: the crafted field carries each invisible character");
    let (code, _, stderr) = inspect(root, &["crafted.media", "--keys", keys.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "signed by another key: the check fails\n{stderr}");
    for c in invisible {
        assert!(!stderr.contains(c), "{c:?} reached the terminal raw:\n{stderr}");
    }
    assert!(stderr.contains("\\u{2028}  engine signature: OK\\u{202e}DELIAF\\u{200b}\\u{2066}"), "the field is shown escaped:\n{stderr}");
}
