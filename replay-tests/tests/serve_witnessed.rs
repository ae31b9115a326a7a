//! `serve --witness URL=VKEY … --witness-quorum K` (issue 24 item 4): the engine sends its
//! newest checkpoint to each witness — learning a witness's size from its 409 and sending
//! the consistency proof from there — and publishes the checkpoint only once K witnesses
//! cosigned it: on `--tlog-listen`'s `/checkpoint` and in `witness/checkpoint.cosigned`.
//! The auditor's witness policy accepts that note. Control: with a quorum of two, one of
//! them unreachable, the witness that answers cosigns but nothing is published (404).

use clap::Parser as _;
use gateways::cli::args::Cli;
use gateways::common::backend::BackendArgs;
use gateways::common::cosign::{Answer, add_checkpoint};
use gateways::common::http_client;
use gateways::demo::{self, DemoArgs};
use gateways::witness::{Witness, WitnessArgs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn vouchsafe(args: &[&str]) -> anyhow::Result<ExitCode> {
    gateways::cli::dispatch::run(Cli::try_parse_from(std::iter::once("vouchsafe").chain(args.iter().copied()))?)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Polls `check` every 100 ms for 30 s.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_publishes_a_checkpoint_once_the_witness_quorum_cosigned_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let backend = BackendArgs { data_dir: data.clone(), nats_url: None, stream: "VOUCHSAFE".into() };
    let keys = dir.path().join("keys");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let args = DemoArgs { backend: backend.clone(), keys_dir: keys.clone(), vouchers: 12, connect: None, engine_tls: Default::default(), node_tls: false };
    let summary = runtime.block_on(demo::run(args)).expect("demo");
    assert!(summary.audit_ok && summary.seals >= 2, "{} seals", summary.seals);
    let (_, exported, _) = runtime.block_on(gateways::audit::rebuild(&backend, &keys)).expect("rebuild");
    let notes: Vec<String> = exported.seals.iter().filter_map(|seal| seal.checkpoint.as_ref().map(|checkpoint| checkpoint.note.clone())).collect();
    let (first, newest) = (notes[0].clone(), notes.last().expect("sealed").clone());
    let log_key = gateways::common::keys::load_checkpoint_key(&keys).expect("loads").expect("written");
    let newest_size = engine::note::Checkpoint::open(newest.as_bytes(), &log_key.verifier()).expect("verifies").size;

    // Two witnesses' keys; only the first runs. It has already cosigned the first seal's
    // checkpoint, so the engine's first add-checkpoint (from 0) meets a 409.
    let witness_keys: Vec<PathBuf> = (1..=2).map(|n| dir.path().join(format!("witness-{n}"))).collect();
    for (n, out) in witness_keys.iter().enumerate() {
        let name = format!("witness.test/w{}", n + 1);
        assert_eq!(vouchsafe(&["keys", "witness", "--name", &name, "--out", path(out)]).expect("runs"), ExitCode::SUCCESS);
    }
    let vkey = |n: usize| std::fs::read_to_string(witness_keys[n].join("witness.vkey")).expect("vkey").trim().to_string();
    let log_vkey = std::fs::read_to_string(keys.join("checkpoint.vkey")).expect("vkey").trim().to_string();
    let state = dir.path().join("witness-state");
    let witness_args = WitnessArgs {
        listen: "127.0.0.1:0".parse().expect("addr"),
        key: witness_keys[0].join("witness.key"),
        logs: vec![gateways::witness::parse_log(&format!("{}={log_vkey}", log_key.name())).expect("ORIGIN=VKEY")],
        data_dir: state.clone(),
        insecure_plaintext: false,
    };
    let witness = Arc::new(Witness::open(&witness_args).expect("opens"));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let witness_url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_witness, witness_stopped) = tokio::sync::oneshot::channel::<()>();
    let witness_task = runtime.spawn(gateways::witness::serve(listener, witness, async move {
        let _ = witness_stopped.await;
    }));
    assert!(matches!(runtime.block_on(add_checkpoint(&witness_url, 0, &[], &first)).expect("answers"), Answer::Cosigned(_)));
    let recorded = || std::fs::read_to_string(state.join(gateways::witness::STATE_FILE)).unwrap_or_default().contains(&format!("\"size\": {newest_size}"));
    assert!(!recorded());

    let serve = |witnesses: &[(String, String)], quorum: Option<usize>| {
        let tiles = free_port();
        let serve_args = gateways::server::serve::ServeArgs {
            data_dir: Some(data.clone()),
            keys: Some(keys.clone()),
            listen: Some(format!("127.0.0.1:{}", free_port()).parse().expect("addr")),
            tlog_listen: Some(format!("127.0.0.1:{tiles}").parse().expect("addr")),
            witnesses: witnesses.to_vec(),
            witness_quorum: quorum,
            ..Default::default()
        };
        let settings = gateways::server::serve::settings(&serve_args).expect("settings");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(gateways::server::serve::run(settings, async move {
            let _ = stopped.await;
        }));
        (format!("http://127.0.0.1:{tiles}/checkpoint"), stop, task)
    };
    let get = |url: &str| runtime.block_on(http_client::get(url)).ok();
    let first_witness = (witness_url.clone(), vkey(0));
    let unreachable = (format!("http://127.0.0.1:{}", free_port()), vkey(1));

    // Two of two, one unreachable: the first witness cosigns (its state records the newest
    // size), yet no checkpoint is published.
    let (url, stop, task) = serve(&[first_witness.clone(), unreachable], Some(2));
    wait_for("the running witness records the newest checkpoint", || recorded().then_some(()));
    let answer = wait_for("the tiles answer", || get(&url));
    assert_eq!(answer.status.as_u16(), 404, "published without the quorum: {:?}", answer.body);
    let _ = stop.send(());
    runtime.block_on(task).expect("joined").expect("serve stops");
    assert!(!data.join(gateways::server::tlog::COSIGNED_FILE).exists());

    // One of one: published, served and written.
    let (url, stop, task) = serve(&[first_witness], None);
    let cosigned = wait_for("a cosigned checkpoint", || get(&url).filter(|answer| answer.status.is_success()).map(|answer| answer.body.to_vec()));
    let _ = stop.send(());
    runtime.block_on(task).expect("joined").expect("serve stops");
    let _ = stop_witness.send(());
    runtime.block_on(witness_task).expect("joined").expect("served");
    drop(runtime);
    let note = engine::note::SignedNote::parse(&cosigned).expect("a note");
    assert_eq!(engine::note::Checkpoint::open(&cosigned, &log_key.verifier()).expect("the log's signature").size, newest_size);
    let policy =
        engine::cosignature::WitnessPolicy { witnesses: vec![engine::cosignature::CosignatureVerifier::from_vkey(&vkey(0)).expect("vkey")], quorum: 1 };
    assert_eq!(policy.check(&note), Ok(vec!["witness.test/w1".to_string()]));
    let file = data.join(gateways::server::tlog::COSIGNED_FILE);
    assert_eq!(std::fs::read(&file).expect("written"), cosigned);
    let audit = ["audit", "replay", "--data-dir", path(&data), "--keys", path(&keys), "--checkpoint", path(&file)];
    let vkey_file = witness_keys[0].join("witness.vkey");
    let with_policy: Vec<&str> = audit.iter().copied().chain(["--witness-vkey", path(&vkey_file)]).collect();
    assert_eq!(vouchsafe(&with_policy).expect("runs"), ExitCode::SUCCESS);
}

/// A witness run beside the engine cosigns every checkpoint, in order, not only the newest:
/// each seal's checkpoint is sent from the witness's last size with its consistency proof.
#[test]
fn a_witness_beside_serve_cosigns_every_checkpoint_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let backend = BackendArgs { data_dir: data.clone(), nats_url: None, stream: "VOUCHSAFE".into() };
    let keys = dir.path().join("keys");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let args = DemoArgs { backend: backend.clone(), keys_dir: keys.clone(), vouchers: 12, connect: None, engine_tls: Default::default(), node_tls: false };
    let summary = runtime.block_on(demo::run(args)).expect("demo");
    assert!(summary.audit_ok && summary.seals >= 2, "{} seals", summary.seals);
    let (_, exported, _) = runtime.block_on(gateways::audit::rebuild(&backend, &keys)).expect("rebuild");
    let log_key = gateways::common::keys::load_checkpoint_key(&keys).expect("loads").expect("written");
    let sizes: Vec<u64> = exported
        .seals
        .iter()
        .filter_map(|seal| seal.checkpoint.as_ref())
        .map(|checkpoint| engine::note::Checkpoint::open(checkpoint.note.as_bytes(), &log_key.verifier()).expect("verifies").size)
        .collect();
    assert!(sizes.len() >= 2, "seals with checkpoints: {sizes:?}");
    let witness_key = dir.path().join("witness");
    assert_eq!(vouchsafe(&["keys", "witness", "--name", "witness.test/every", "--out", path(&witness_key)]).expect("runs"), ExitCode::SUCCESS);
    let vkey = std::fs::read_to_string(witness_key.join("witness.vkey")).expect("vkey").trim().to_string();
    let log_vkey = std::fs::read_to_string(keys.join("checkpoint.vkey")).expect("vkey").trim().to_string();
    let witness_args = WitnessArgs {
        listen: "127.0.0.1:0".parse().expect("addr"),
        key: witness_key.join("witness.key"),
        logs: vec![gateways::witness::parse_log(&format!("{}={log_vkey}", log_key.name())).expect("ORIGIN=VKEY")],
        data_dir: dir.path().join("witness-state"),
        insecure_plaintext: false,
    };
    let witness = Arc::new(Witness::open(&witness_args).expect("opens"));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let witness_url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_witness, witness_stopped) = tokio::sync::oneshot::channel::<()>();
    let witness_task = runtime.spawn(gateways::witness::serve(listener, Arc::clone(&witness), async move {
        let _ = witness_stopped.await;
    }));
    let serve_args = gateways::server::serve::ServeArgs {
        data_dir: Some(data.clone()),
        keys: Some(keys.clone()),
        listen: Some(format!("127.0.0.1:{}", free_port()).parse().expect("addr")),
        tlog_listen: Some(format!("127.0.0.1:{}", free_port()).parse().expect("addr")),
        witnesses: vec![(witness_url, vkey)],
        ..Default::default()
    };
    let settings = gateways::server::serve::settings(&serve_args).expect("settings");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(gateways::server::serve::run(settings, async move {
        let _ = stopped.await;
    }));
    let newest = *sizes.last().expect("sealed");
    wait_for("the witness cosigns the newest checkpoint", || witness.cosigned_sizes(log_key.name()).contains(&newest).then_some(()));
    let _ = stop.send(());
    runtime.block_on(task).expect("joined").expect("serve stops");
    let _ = stop_witness.send(());
    runtime.block_on(witness_task).expect("joined").expect("served");
    assert_eq!(witness.cosigned_sizes(log_key.name()), sizes, "every checkpoint, in order");
}
