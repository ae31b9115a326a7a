//! Witnesses (issue 24 item 4): `vouchsafe witness` cosigns a demo's checkpoints as the
//! log sends them (`add-checkpoint` from 0, then with the consistency proof), keeps the
//! newest it cosigned across a restart, and refuses a forked checkpoint — the same size,
//! another root, signed with the log's real key — with 409 and its recorded size; a proof
//! that does not verify gets 422, an unknown origin 404, another key's signature 403.
//! The auditor's `audit replay --checkpoint NOTE --witness-vkey FILE` accepts the cosigned
//! checkpoint and fails (exit 1) on the forked one, alone or carrying the real checkpoint's
//! cosignature line.

use clap::Parser as _;
use gateways::cli::args::Cli;
use gateways::common::backend::BackendArgs;
use gateways::common::cosign::{Answer, add_checkpoint, cosigned_note};
use gateways::demo::{self, DemoArgs};
use gateways::witness::{Witness, WitnessArgs};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

fn vouchsafe(args: &[&str]) -> anyhow::Result<ExitCode> {
    gateways::cli::dispatch::run(Cli::try_parse_from(std::iter::once("vouchsafe").chain(args.iter().copied()))?)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A witness serving on a free loopback port until the sender is dropped or fired.
fn start_witness(
    runtime: &tokio::runtime::Runtime,
    args: &WitnessArgs,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let witness = Arc::new(Witness::open(args).expect("witness opens"));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(gateways::witness::serve(listener, witness, async move {
        let _ = stopped.await;
    }));
    (url, stop, task)
}

#[test]
fn a_witness_cosigns_the_log_and_refuses_a_fork_which_the_auditor_catches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let backend = BackendArgs { data_dir: data.clone(), nats_url: None, stream: "VOUCHSAFE".into() };
    let keys = dir.path().join("keys");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let args = DemoArgs { backend: backend.clone(), keys_dir: keys.clone(), vouchers: 12, connect: None, engine_tls: Default::default(), node_tls: false };
    let summary = runtime.block_on(demo::run(args)).expect("demo");
    assert!(summary.audit_ok && summary.seals >= 2, "{} seals", summary.seals);
    let (_, exported, _) = runtime.block_on(gateways::audit::rebuild(&backend, &keys)).expect("rebuild");
    let master = gateways::common::keys::load_royalty_master(&keys).expect("master");
    let tree = projections::export::open_entries_tree(&exported, &master).tree;
    let notes: Vec<String> = exported.seals.iter().filter_map(|seal| seal.checkpoint.as_ref().map(|checkpoint| checkpoint.note.clone())).collect();
    let (first, newest) = (notes[0].clone(), notes.last().expect("sealed").clone());
    let log_key = gateways::common::keys::load_checkpoint_key(&keys).expect("loads").expect("written");
    let open = |note: &str| engine::note::Checkpoint::open(note.as_bytes(), &log_key.verifier()).expect("verifies");
    let (first_checkpoint, newest_checkpoint) = (open(&first), open(&newest));
    let proof = tree.consistency_proof(first_checkpoint.size, newest_checkpoint.size).expect("proof");
    assert!(!proof.is_empty());

    // The witness's keys and the witness itself.
    let witness_keys = dir.path().join("witness-keys");
    assert_eq!(vouchsafe(&["keys", "witness", "--name", "witness.test/w1", "--out", path(&witness_keys)]).expect("runs"), ExitCode::SUCCESS);
    let vkey_text = std::fs::read_to_string(witness_keys.join("witness.vkey")).expect("vkey");
    let witness_vkey = engine::cosignature::CosignatureVerifier::from_vkey(&vkey_text).expect("a cosignature vkey");
    let log_vkey = std::fs::read_to_string(keys.join("checkpoint.vkey")).expect("vkey").trim().to_string();
    let witness_args = WitnessArgs {
        listen: "127.0.0.1:0".parse().expect("addr"),
        key: witness_keys.join("witness.key"),
        logs: vec![gateways::witness::parse_log(&format!("{}={log_vkey}", log_key.name())).expect("ORIGIN=VKEY")],
        data_dir: dir.path().join("witness-state"),
        insecure_plaintext: false,
    };
    let (url, stop, task) = start_witness(&runtime, &witness_args);
    let send = |old: u64, proof: &[engine::tlog::Hash], note: &str| runtime.block_on(add_checkpoint(&url, old, proof, note)).expect("the witness answers");

    // Refusals before anything is cosigned: an unknown origin, another key of the log's name.
    let stranger_log = engine::note::NoteSigner::generate("stranger.test/log").expect("key");
    let unknown = engine::note::Checkpoint { origin: stranger_log.name().into(), ..first_checkpoint.clone() }.sign(&stranger_log).0;
    assert!(matches!(send(0, &[], &unknown), Answer::Refused(404, _)));
    let impostor = engine::note::NoteSigner::generate(log_key.name()).expect("key");
    assert!(matches!(send(0, &[], &first_checkpoint.sign(&impostor).0), Answer::Refused(403, _)));

    // The log's checkpoints in order; a proof that does not verify is 422 and records nothing.
    let Answer::Cosigned(lines) = send(0, &[], &first) else { panic!("the first checkpoint is cosigned") };
    assert!(cosigned_note(&first, &lines, &witness_vkey).is_some());
    let mut bad_proof = proof.clone();
    bad_proof[0][0] ^= 1;
    assert!(matches!(send(first_checkpoint.size, &bad_proof, &newest), Answer::Refused(422, _)));
    let Answer::Cosigned(lines) = send(first_checkpoint.size, &proof, &newest) else { panic!("the newest checkpoint is cosigned") };
    let cosigned = cosigned_note(&newest, &lines, &witness_vkey).expect("a valid cosignature");
    assert_eq!(cosigned_note(&newest, &lines, &engine::cosignature::Cosigner::generate("witness.test/w1").expect("key").verifier()), None);

    // The fork: the log's key signs another root at the newest size. Refused with 409 and
    // the recorded size, whichever old size the log claims; again after a restart.
    let forked = engine::note::Checkpoint { root: [7; 32], ..newest_checkpoint.clone() }.sign(&log_key).0;
    assert_eq!(send(newest_checkpoint.size, &[], &forked), Answer::Conflict(newest_checkpoint.size));
    assert_eq!(send(first_checkpoint.size, &proof, &forked), Answer::Conflict(newest_checkpoint.size));
    let _ = stop.send(());
    runtime.block_on(task).expect("joined").expect("served");
    let state = std::fs::read_to_string(dir.path().join("witness-state").join(gateways::witness::STATE_FILE)).expect("state");
    assert!(state.contains(&format!("\"size\": {}", newest_checkpoint.size)), "{state}");
    let (url, stop, task) = start_witness(&runtime, &witness_args);
    assert_eq!(runtime.block_on(add_checkpoint(&url, newest_checkpoint.size, &[], &forked)).expect("answers"), Answer::Conflict(newest_checkpoint.size));
    let Answer::Cosigned(_) = runtime.block_on(add_checkpoint(&url, newest_checkpoint.size, &[], &newest)).expect("answers") else {
        panic!("the same checkpoint again is cosigned")
    };
    let _ = stop.send(());
    runtime.block_on(task).expect("joined").expect("served");

    // A rotated checkpoint key (issue 28): the log's new key is given as a second `--log`
    // of the same origin, and the witness cosigns the log's checkpoint under it (the same
    // size and root it recorded); with the old key alone it refused that signer (403 above).
    let rotated = WitnessArgs {
        logs: vec![
            witness_args.logs[0].clone(),
            gateways::witness::parse_log(&format!("{}={}", log_key.name(), impostor.verifier().vkey())).expect("ORIGIN=VKEY"),
        ],
        ..witness_args.clone()
    };
    let (url, stop, task) = start_witness(&runtime, &rotated);
    let under_new_key = newest_checkpoint.sign(&impostor).0;
    let Answer::Cosigned(_) = runtime.block_on(add_checkpoint(&url, newest_checkpoint.size, &[], &under_new_key)).expect("answers") else {
        panic!("the checkpoint under the log's rotated key is cosigned")
    };
    let Answer::Cosigned(_) = runtime.block_on(add_checkpoint(&url, newest_checkpoint.size, &[], &newest)).expect("answers") else {
        panic!("and still under its old key")
    };
    let _ = stop.send(());
    runtime.block_on(task).expect("joined").expect("served");
    drop(runtime);

    // The auditor with the witness policy: the cosigned checkpoint passes; the fork, bare or
    // with the real checkpoint's cosignature line moved onto it, fails.
    let files = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write");
        file
    };
    let cosigned_file = files("cosigned.note", &cosigned);
    let forked_file = files("forked.note", &forked);
    let transplanted = format!("{forked}{}", cosigned.lines().last().map(|line| format!("{line}\n")).unwrap_or_default());
    let transplanted_file = files("transplanted.note", &transplanted);
    let audit = |checkpoint: &Path, extra: &[&str]| {
        let mut args = vec!["audit", "replay", "--data-dir", path(&data), "--keys", path(&keys), "--checkpoint", path(checkpoint)];
        args.extend_from_slice(extra);
        vouchsafe(&args)
    };
    let vkey_file = witness_keys.join("witness.vkey");
    let policy = ["--witness-vkey", path(&vkey_file)];
    assert_eq!(audit(&cosigned_file, &policy).expect("runs"), ExitCode::SUCCESS);
    assert_eq!(audit(&forked_file, &policy).expect("runs"), ExitCode::from(1));
    assert_eq!(audit(&transplanted_file, &policy).expect("runs"), ExitCode::from(1));
    // Control: the same policy met by the log's own signature alone is not enough either.
    assert_eq!(audit(&files("bare.note", &newest), &policy).expect("runs"), ExitCode::from(1));
    assert!(audit(&cosigned_file, &["--witness-vkey", path(&vkey_file), "--witness-quorum", "2"]).is_err(), "a quorum above the witnesses given");
    eprintln!(
        "witness: cosigned checkpoint {} bytes ({} bytes of cosignature line), consistency proof {} hashes",
        cosigned.len(),
        cosigned.len() - newest.len(),
        proof.len()
    );
}
