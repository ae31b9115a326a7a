//! Interop with an independent C2SP implementation (issue 24 item 6): PyPI's `aics-tlog`
//! (pinned, `AICS_TLOG_VERSION`; pure Python, run by tlog_interop.py) checks what a demo's
//! royalty log publishes: the newest checkpoint's signature with `checkpoint.vkey`, a
//! witness's `cosignature/v1` on it under a quorum-of-one policy, every
//! tile and entry bundle of `audit export --format tiles` against the checkpoint's root, a
//! `.tlog-proof` from `audit prove` (the leaf read from the bundles) and the consistency
//! proof of `audit consistency` from the first seal's checkpoint; aics-tlog also computes
//! both proofs from our tiles and gets ours. Negative controls, each refused by aics-tlog:
//! a cosignature whose timestamp changed, one by a key the policy does not name, a
//! checkpoint with an altered size, one signed by another key, a tile and a bundle with a
//! flipped bit, an inclusion proof with an altered hash or a moved index, an altered entry,
//! a consistency proof with an altered hash, swapped checkpoints, a forked checkpoint
//! signed with the real key.
//!
//! Needs aics-tlog in the project's .venv (or `$VOUCHSAFE_PYTHON`); `scripts/test` installs
//! it. Without it the test fails and says how to install it.

use clap::Parser as _;
use gateways::cli::args::Cli;
use gateways::common::backend::BackendArgs;
use gateways::demo::{self, DemoArgs};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The aics-tlog release this test is written against (scripts/test installs it).
const AICS_TLOG_VERSION: &str = "0.2.1";

fn vouchsafe(args: &[&str]) -> anyhow::Result<ExitCode> {
    gateways::cli::dispatch::run(Cli::try_parse_from(std::iter::once("vouchsafe").chain(args.iter().copied()))?)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace holds replay-tests").to_path_buf()
}

/// The Python with aics-tlog, or a failure saying how to install it.
fn python() -> PathBuf {
    let python = std::env::var_os("VOUCHSAFE_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace().join(".venv/bin/python3"));
    let probe = Command::new(&python).args(["-c", "import aics_tlog; print(aics_tlog.__version__)"]).output();
    let version = probe.as_ref().ok().filter(|output| output.status.success()).map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string());
    assert!(
        version.is_some(),
        "aics-tlog is missing at {}: run scripts/test (it installs it), or `.venv/bin/pip install --ignore-requires-python aics-tlog=={AICS_TLOG_VERSION}` (set $VOUCHSAFE_PYTHON for another Python)",
        python.display()
    );
    assert_eq!(
        version.as_deref(),
        Some(AICS_TLOG_VERSION),
        "the pinned aics-tlog: `.venv/bin/pip install --ignore-requires-python aics-tlog=={AICS_TLOG_VERSION}`"
    );
    python
}

/// A copy of the tiles directory `from` with one bit flipped in the file `file`, at `offset`.
fn flipped_copy(from: &Path, to: &Path, file: &str, offset: usize) {
    let status = Command::new("cp").args(["-r", path(from), path(to)]).status().expect("cp");
    assert!(status.success());
    let target = to.join(file);
    let mut bytes = std::fs::read(&target).expect("read");
    bytes[offset] ^= 1;
    std::fs::write(&target, bytes).expect("write");
}

/// `text` with the first character of line `line` (0-based) changed.
fn altered_line(text: &str, line: usize) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let first = lines[line].remove(0);
    lines[line].insert(0, if first == 'A' { 'B' } else { 'A' });
    lines.join("\n")
}

#[test]
fn an_independent_c2sp_implementation_verifies_checkpoints_tiles_and_proofs() {
    let python = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let backend = BackendArgs { data_dir: data.clone(), nats_url: None, stream: "VOUCHSAFE".into() };
    let keys = dir.path().join("keys");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let args = DemoArgs { backend: backend.clone(), keys_dir: keys.clone(), vouchers: 12, connect: None, engine_tls: Default::default(), node_tls: false };
    let summary = runtime.block_on(demo::run(args)).expect("demo");
    assert!(summary.audit_ok && summary.seals >= 2, "{} seals", summary.seals);
    let (_, exported, entries) = runtime.block_on(gateways::audit::rebuild(&backend, &keys)).expect("rebuild");
    drop(runtime);
    let notes: Vec<String> = exported.seals.iter().filter_map(|seal| seal.checkpoint.as_ref().map(|checkpoint| checkpoint.note.clone())).collect();
    let (first, newest) = (notes[0].clone(), notes.last().expect("sealed").clone());
    std::fs::write(dir.path().join("first.note"), &first).expect("write");
    std::fs::write(dir.path().join("newest.note"), &newest).expect("write");
    let (data, keys_arg) = (path(&data), path(&keys));

    // Our artefacts: the tiles, a consistency proof, a .tlog-proof of a sealed delivery.
    let tiles = dir.path().join("tiles");
    assert_eq!(
        vouchsafe(&["audit", "export", "--data-dir", data, "--keys", keys_arg, "--format", "tiles", "--out", path(&tiles)]).expect("runs"),
        ExitCode::SUCCESS
    );
    let proof_file = dir.path().join("consistency.txt");
    let (first_file, newest_file) = (dir.path().join("first.note"), dir.path().join("newest.note"));
    let consistency =
        ["audit", "consistency", "--data-dir", data, "--keys", keys_arg, "--old", path(&first_file), "--new", path(&newest_file), "--out", path(&proof_file)];
    assert_eq!(vouchsafe(&consistency).expect("runs"), ExitCode::SUCCESS);
    let proof_lines: Vec<String> = std::fs::read_to_string(&proof_file).expect("written").lines().map(str::to_string).collect();
    assert!(!proof_lines.is_empty(), "the first seal's tree is a proper prefix");
    let sealed = exported.seals.last().expect("sealed").last_entry;
    let voucher = entries.iter().find(|entry| entry.kind == projections::royalty::UsageKind::Delivery).expect("a delivery").voucher_id.clone();
    let proofs = dir.path().join("proofs");
    assert_eq!(
        vouchsafe(&["audit", "prove", "--data-dir", data, "--keys", keys_arg, "--voucher", &voucher, "--tlog-proof", path(&proofs)]).expect("runs"),
        ExitCode::SUCCESS
    );
    let tlog_proof_path = std::fs::read_dir(&proofs).expect("written").next().expect("a proof").expect("entry").path();
    let tlog_proof = std::fs::read_to_string(&tlog_proof_path).expect("read");
    let index: usize = tlog_proof.lines().find_map(|line| line.strip_prefix("index ")).expect("index").parse().expect("number");
    assert!(index as u64 <= sealed);

    // The tampered material.
    let size = sealed + 1;
    let bundle = engine::tiles::TileRef { level: None, index: 0, width: size.min(256) }.path();
    let level0 = engine::tiles::TileRef { level: Some(0), index: 0, width: size.min(256) }.path();
    let (bad_bundle, bad_tile) = (dir.path().join("bad-bundle"), dir.path().join("bad-tile"));
    // The proven entry's bytes in its bundle: each entry is 2 length bytes and 112 bytes.
    flipped_copy(&tiles, &bad_bundle, &bundle, index * 114 + 2 + 20);
    flipped_copy(&tiles, &bad_tile, &level0, 32 * index + 7);
    let vkey = std::fs::read_to_string(keys.join("checkpoint.vkey")).expect("vkey").trim().to_string();
    let real = gateways::common::keys::load_checkpoint_key(&keys).expect("loads").expect("written");
    let newest_checkpoint = engine::note::Checkpoint::open(newest.as_bytes(), &real.verifier()).expect("verifies");
    let stranger = engine::note::NoteSigner::generate(real.name()).expect("key");
    let foreign = newest_checkpoint.sign(&stranger).0;
    let forked = engine::note::Checkpoint { root: [7; 32], ..newest_checkpoint.clone() }.sign(&real).0;
    let resized = newest.replacen(&format!("\n{}\n", newest_checkpoint.size), &format!("\n{}\n", newest_checkpoint.size + 1), 1);
    let hash_line = tlog_proof.lines().position(|line| line.starts_with("index ")).expect("index") + 1;
    let moved = tlog_proof.replacen(&format!("index {index}\n"), &format!("index {}\n", (index + 1) % size as usize), 1);
    let mut swapped_proof = proof_lines.clone();
    swapped_proof[0] = altered_line(&proof_lines[0], 0);
    // A witness's cosignature (cosignature/v1) on the newest checkpoint; a control whose
    // timestamp was changed after signing, and one by a key the policy does not name.
    let witness = engine::cosignature::Cosigner::generate("witness.test/w1").expect("key");
    let witness_vkey = witness.verifier().vkey();
    let text = engine::note::SignedNote::parse(newest.as_bytes()).expect("note").text;
    let cosigned = format!("{newest}{}", witness.line(&text, 1_767_225_600));
    let mut retimed = engine::note::SignedNote::parse(cosigned.as_bytes()).expect("note");
    retimed.signatures[1].1[11] ^= 1;
    let retimed = retimed.format();
    let other = engine::cosignature::Cosigner::generate("witness.test/w1").expect("key");
    let by_other = format!("{newest}{}", other.line(&text, 1_767_225_600));
    let tiles_dir = path(&tiles);
    let cases = json!({
        "vkey": vkey,
        "cases": [
            {"name": "checkpoint", "kind": "checkpoint", "note": newest},
            {"name": "checkpoint_first", "kind": "checkpoint", "note": first},
            {"name": "checkpoint_resized", "kind": "checkpoint", "note": resized},
            {"name": "checkpoint_foreign_key", "kind": "checkpoint", "note": foreign},
            {"name": "cosigned", "kind": "cosigned", "note": cosigned, "witnesses": [witness_vkey], "quorum": 1},
            {"name": "cosigned_retimed", "kind": "cosigned", "note": retimed, "witnesses": [witness_vkey], "quorum": 1},
            {"name": "cosigned_by_another_key", "kind": "cosigned", "note": by_other, "witnesses": [witness_vkey], "quorum": 1},
            {"name": "tiles", "kind": "tiles", "note": newest, "dir": tiles_dir},
            {"name": "tiles_flipped_bundle", "kind": "tiles", "note": newest, "dir": path(&bad_bundle)},
            {"name": "tiles_flipped_tile", "kind": "tiles", "note": newest, "dir": path(&bad_tile)},
            {"name": "tiles_forked_checkpoint", "kind": "tiles", "note": forked, "dir": tiles_dir},
            {"name": "inclusion", "kind": "inclusion", "tlog_proof": tlog_proof, "tiles_dir": tiles_dir},
            {"name": "inclusion_altered_hash", "kind": "inclusion", "tlog_proof": altered_line(&tlog_proof, hash_line), "tiles_dir": tiles_dir},
            {"name": "inclusion_moved_index", "kind": "inclusion", "tlog_proof": moved, "tiles_dir": tiles_dir},
            {"name": "inclusion_altered_entry", "kind": "inclusion", "tlog_proof": tlog_proof, "tiles_dir": path(&bad_bundle)},
            {"name": "consistency", "kind": "consistency", "old": first, "new": newest, "proof": proof_lines, "tiles_dir": tiles_dir},
            {"name": "consistency_altered_hash", "kind": "consistency", "old": first, "new": newest, "proof": swapped_proof, "tiles_dir": tiles_dir},
            {"name": "consistency_swapped", "kind": "consistency", "old": newest, "new": first, "proof": proof_lines, "tiles_dir": tiles_dir},
            {"name": "consistency_forked", "kind": "consistency", "old": first, "new": forked, "proof": proof_lines, "tiles_dir": tiles_dir},
        ]
    });
    let spec = dir.path().join("cases.json");
    std::fs::write(&spec, serde_json::to_vec(&cases).expect("json")).expect("write");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tlog_interop.py");
    let output = Command::new(&python).arg(&script).arg(&spec).output().expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let verdicts: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(verdicts["version"], AICS_TLOG_VERSION);
    let results = &verdicts["results"];
    for name in ["checkpoint", "checkpoint_first", "cosigned", "tiles", "inclusion", "consistency"] {
        assert_eq!(results[name]["ok"], true, "aics-tlog refuses our {name}: {}", results[name]);
    }
    for name in ["inclusion", "consistency"] {
        assert_eq!(results[name]["same_as_tiles"], true, "aics-tlog computes another {name} proof from our tiles: {}", results[name]);
    }
    assert_eq!(results["inclusion"]["leaf_bytes"], 112);
    assert_eq!(results["tiles"]["bundles"], size.div_ceil(256));
    assert_eq!(results["cosigned"]["cosignatures"], 1);
    let controls = [
        "cosigned_retimed",
        "cosigned_by_another_key",
        "checkpoint_resized",
        "checkpoint_foreign_key",
        "tiles_flipped_bundle",
        "tiles_flipped_tile",
        "tiles_forked_checkpoint",
        "inclusion_altered_hash",
        "inclusion_moved_index",
        "inclusion_altered_entry",
        "consistency_altered_hash",
        "consistency_swapped",
        "consistency_forked",
    ];
    for name in controls {
        assert_eq!(results[name]["ok"], false, "aics-tlog accepts the tampered {name}: {}", results[name]);
    }
    eprintln!("aics-tlog {AICS_TLOG_VERSION}: {}", serde_json::to_string(results).expect("json"));
}
