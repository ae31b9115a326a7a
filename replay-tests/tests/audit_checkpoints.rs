//! The demo's seals are C2SP checkpoints the auditor's commands read: `audit replay` checks
//! them with `checkpoint.vkey` and saves the newest; `audit consistency` proves one extends
//! another (from the stream's tree, then offline from the proof file); `audit replay
//! --checkpoint` audits incrementally to the same state. Controls, each exit 1: an altered
//! proof, swapped checkpoints, a checkpoint signed by another key, a forked checkpoint
//! signed with the real key (from the stream and offline), an incremental audit from it.
//! Exit 2 (an error) only for the auditor's own inputs: a missing vkey, a pin that does
//! not verify.

use clap::Parser as _;
use gateways::audit;
use gateways::cli::args::Cli;
use gateways::common::backend::BackendArgs;
use gateways::demo::{self, DemoArgs};
use std::path::Path;
use std::process::ExitCode;

/// `vouchsafe ARGS…` in this process: `Ok(code)`, or `Err` where the binary exits 2.
fn vouchsafe(args: &[&str]) -> anyhow::Result<ExitCode> {
    gateways::cli::dispatch::run(Cli::try_parse_from(std::iter::once("vouchsafe").chain(args.iter().copied()))?)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn checkpoints_verify_prove_consistency_and_pin_an_incremental_audit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let backend = BackendArgs { data_dir: data.clone(), nats_url: None, stream: "VOUCHSAFE".into() };
    let engine_keys = dir.path().join("engine-keys");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let args =
        DemoArgs { backend: backend.clone(), keys_dir: engine_keys.clone(), vouchers: 12, connect: None, engine_tls: Default::default(), node_tls: false };
    let summary = runtime.block_on(demo::run(args)).expect("demo");
    assert!(summary.audit_ok && summary.seals >= 2, "{} seals", summary.seals);

    // The auditor's directory: public keys and the royalty master key.
    let auditor = dir.path().join("auditor");
    std::fs::create_dir_all(&auditor).expect("mkdir");
    for name in ["engine.pub.pem", "royalty-master.key", "checkpoint.vkey"] {
        std::fs::copy(engine_keys.join(name), auditor.join(name)).expect("copy key");
    }
    let (_, exported, _) = runtime.block_on(audit::rebuild(&backend, &auditor)).expect("rebuild");
    drop(runtime);
    let notes: Vec<String> = exported.seals.iter().map(|seal| seal.checkpoint.as_ref().expect("every seal has a checkpoint").note.clone()).collect();
    let (old, new) = (dir.path().join("old.note"), dir.path().join("new.note"));
    std::fs::write(&old, &notes[0]).expect("write");
    std::fs::write(&new, notes.last().expect("sealed")).expect("write");
    let (data, keys) = (path(&data), path(&auditor));

    // A full audit checks every checkpoint and saves the newest.
    let saved = dir.path().join("saved.note");
    assert_eq!(vouchsafe(&["audit", "replay", "--data-dir", data, "--keys", keys, "--save-checkpoint", path(&saved)]).expect("runs"), ExitCode::SUCCESS);
    assert_eq!(std::fs::read_to_string(&saved).expect("saved"), *notes.last().expect("sealed"));

    // Consistency from the stream's tree, then offline from the proof it wrote.
    let proof = dir.path().join("proof.txt");
    let consistency = |old: &Path, new: &Path, extra: &[&str]| {
        let mut args = vec!["audit", "consistency", "--data-dir", data, "--keys", keys, "--old", path(old), "--new", path(new)];
        args.extend_from_slice(extra);
        vouchsafe(&args)
    };
    assert_eq!(consistency(&old, &new, &["--out", path(&proof)]).expect("runs"), ExitCode::SUCCESS);
    let proof_text = std::fs::read_to_string(&proof).expect("proof written");
    assert!(!proof_text.is_empty() && proof_text.lines().all(|line| line.len() == 44), "base64 hashes:\n{proof_text}");
    assert_eq!(consistency(&old, &new, &["--proof", path(&proof)]).expect("runs"), ExitCode::SUCCESS);

    // Controls. An altered proof; the checkpoints swapped.
    let altered = dir.path().join("altered.txt");
    let first = proof_text.lines().next().expect("a hash");
    let flipped = format!("{}{}", if first.starts_with('A') { 'B' } else { 'A' }, &first[1..]);
    std::fs::write(&altered, proof_text.replacen(first, &flipped, 1)).expect("write");
    assert_eq!(consistency(&old, &new, &["--proof", path(&altered)]).expect("runs"), ExitCode::from(1));
    assert_eq!(consistency(&new, &old, &["--proof", path(&proof)]).expect("runs"), ExitCode::from(1));

    // The newest checkpoint re-signed by a stranger's key of the same name.
    let real = gateways::common::keys::load_checkpoint_key(&engine_keys).expect("loads").expect("written");
    let newest = engine::note::Checkpoint::open(notes.last().expect("sealed").as_bytes(), &real.verifier()).expect("verifies");
    let stranger = engine::note::NoteSigner::generate(real.name()).expect("key");
    let foreign = dir.path().join("foreign.note");
    std::fs::write(&foreign, newest.sign(&stranger).0).expect("write");
    assert_eq!(consistency(&old, &foreign, &["--proof", path(&proof)]).expect("runs"), ExitCode::from(1));

    // A fork: the real key signs another root at the same size (a split view). The stream's
    // tree disagrees, and the proof does not fit it.
    let forked = dir.path().join("forked.note");
    std::fs::write(&forked, engine::note::Checkpoint { root: [7; 32], ..newest.clone() }.sign(&real).0).expect("write");
    assert_eq!(consistency(&old, &forked, &[]).expect("runs"), ExitCode::from(1));
    assert_eq!(consistency(&old, &forked, &["--proof", path(&proof)]).expect("runs"), ExitCode::from(1));

    // The incremental audit from the first checkpoint passes and reaches the full audit's
    // state; from the forked one (it is at the last seal's size) it fails.
    let report = |args: &[&str]| {
        let json = dir.path().join("out.json");
        let mut all = vec!["audit", "replay", "--data-dir", data, "--keys", keys, "--save-checkpoint", path(&json)];
        all.extend_from_slice(args);
        let code = vouchsafe(&all).expect("runs");
        (code, std::fs::read_to_string(&json).unwrap_or_default())
    };
    assert_eq!(report(&[]).0, ExitCode::SUCCESS);
    let (code, saved_incremental) = report(&["--checkpoint", path(&old)]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(saved_incremental, *notes.last().expect("sealed"), "the same newest checkpoint");
    // With the same seal's hash pinned too (it binds the events before the checkpoint).
    let first_seal = hex::encode(engine::domain::report::Report::seal_hash(&exported.seals[0].to_seal().expect("seal")));
    assert_eq!(report(&["--checkpoint", path(&old), "--pin", &first_seal]).0, ExitCode::SUCCESS);
    assert_eq!(report(&["--checkpoint", path(&forked)]).0, ExitCode::from(1));

    // An exported log verifies; cut or altered so that it no longer parses, it fails (exit
    // 1), and the report names the entry and byte where the damage starts.
    let export = dir.path().join("royalty.log");
    assert_eq!(
        vouchsafe(&["audit", "export", "--data-dir", data, "--keys", keys, "--format", "log", "--out", path(&export)]).expect("runs"),
        ExitCode::SUCCESS
    );
    assert_eq!(vouchsafe(&["audit", "verify", path(&export), "--keys", keys]).expect("runs"), ExitCode::SUCCESS);
    let bytes = std::fs::read(&export).expect("read");
    let third_entry = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(2).map(|(i, _)| i + 1).expect("lines");
    let cut = dir.path().join("cut.log");
    std::fs::write(&cut, &bytes[..third_entry + 40]).expect("write");
    assert_eq!(vouchsafe(&["audit", "verify", path(&cut), "--keys", keys]).expect("runs"), ExitCode::from(1));
    let damaged = audit::verify_file(&cut, &auditor, None).expect("verify runs").first_bad.expect("damaged");
    assert_eq!((damaged.entry, damaged.byte_offset), (Some(2), Some(third_entry as u64)), "{}", damaged.reason);
    assert!(vouchsafe(&["audit", "verify", path(&dir.path().join("missing.log")), "--keys", keys]).is_err(), "a missing file is exit 2");

    // Offline proofs in the C2SP tlog-proof format, checked with checkpoint.vkey alone; an
    // altered one fails (exit 1); without the vkey it cannot be checked (exit 2).
    let delivered = projections::export::open_entries(&exported, &gateways::common::keys::load_royalty_master(&auditor).expect("master")).0;
    let voucher = delivered.iter().find(|entry| entry.kind == projections::royalty::UsageKind::Delivery).expect("a delivery").voucher_id.clone();
    let proofs = dir.path().join("proofs");
    assert_eq!(
        vouchsafe(&["audit", "prove", "--data-dir", data, "--keys", keys, "--voucher", &voucher, "--tlog-proof", path(&proofs)]).expect("runs"),
        ExitCode::SUCCESS
    );
    let proof_file = std::fs::read_dir(&proofs).expect("written").next().expect("a proof").expect("entry").path();
    assert!(proof_file.extension().is_some_and(|ext| ext == "tlog-proof"));
    let vkey_only = dir.path().join("vkey-only");
    std::fs::create_dir_all(&vkey_only).expect("mkdir");
    std::fs::copy(auditor.join("checkpoint.vkey"), vkey_only.join("checkpoint.vkey")).expect("copy");
    assert_eq!(vouchsafe(&["audit", "check-proof", path(&proof_file), "--keys", path(&vkey_only)]).expect("runs"), ExitCode::SUCCESS);
    let text = std::fs::read_to_string(&proof_file).expect("read");
    let bundles = dir.path().join("bundles.json");
    assert_eq!(
        vouchsafe(&["audit", "prove", "--data-dir", data, "--keys", keys, "--voucher", &voucher, "--out", path(&bundles)]).expect("runs"),
        ExitCode::SUCCESS
    );
    let bundle_count = serde_json::from_slice::<Vec<serde_json::Value>>(&std::fs::read(&bundles).expect("read")).expect("json").len();
    eprintln!(
        "sizes: checkpoint note {} bytes; .tlog-proof {} bytes (tree of {} entries); JSON bundles {} bytes for {bundle_count} deliveries",
        notes.last().expect("sealed").len(),
        text.len(),
        exported.seals.last().expect("sealed").last_entry + 1,
        std::fs::metadata(&bundles).expect("written").len()
    );
    let index_line = text.lines().find(|line| line.starts_with("index ")).expect("index");
    let moved = dir.path().join("moved.tlog-proof");
    std::fs::write(&moved, text.replacen(index_line, &format!("{index_line}0"), 1)).expect("write");
    assert_eq!(vouchsafe(&["audit", "check-proof", path(&moved), "--keys", path(&vkey_only)]).expect("runs"), ExitCode::from(1));
    assert!(vouchsafe(&["audit", "check-proof", path(&proof_file), "--keys", path(&dir.path().join("empty"))]).is_err());

    // --pin takes a hash only; the witness file goes through its own flag.
    let witness = dir.path().join("data").join(audit::WITNESS_FILE);
    assert!(vouchsafe(&["audit", "replay", "--data-dir", data, "--keys", keys, "--pin", path(&witness)]).is_err(), "a file is no pin");
    assert_eq!(vouchsafe(&["audit", "replay", "--data-dir", data, "--keys", keys, "--witness", path(&witness)]).expect("runs"), ExitCode::SUCCESS);
    let hash = hex::encode(audit::pin_from_witness(&witness).expect("names a seal"));
    assert_eq!(vouchsafe(&["audit", "replay", "--data-dir", data, "--keys", keys, "--pin", &hash]).expect("runs"), ExitCode::SUCCESS);

    // The auditor's own inputs: a pin that does not verify, a missing vkey.
    assert!(vouchsafe(&["audit", "replay", "--data-dir", data, "--keys", keys, "--checkpoint", path(&foreign)]).is_err());
    std::fs::remove_file(auditor.join("checkpoint.vkey")).expect("remove");
    assert!(consistency(&old, &new, &["--proof", path(&proof)]).is_err());
}
