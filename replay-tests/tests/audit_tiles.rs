//! The royalty log as C2SP tlog-tiles (issue 24 item 3): after a demo, `audit export
//! --format tiles` writes the static files and `serve --tlog-listen` serves the same bytes
//! over HTTP. A client that trusts only `checkpoint.vkey` reads the checkpoint, then
//! computes from the tiles alone (`engine::tiles::TileHashes`) the inclusion proof of every
//! sealed entry (whose leaf it takes from the entry bundles) and the consistency proof from
//! the first seal's checkpoint to the newest; both verify against the signed checkpoints.
//! Controls: an altered tile or entry bundle fails verification; a checkpoint signed by
//! another key is refused; a tile past the checkpoint and a write are refused by the server.

use clap::Parser as _;
use engine::note::{Checkpoint, NoteVerifier};
use engine::tiles::{TileHashes, TileRef, parse_entry_bundle};
use engine::tlog;
use gateways::cli::args::Cli;
use gateways::common::backend::BackendArgs;
use gateways::common::http_client;
use gateways::demo::{self, DemoArgs};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

fn vouchsafe(args: &[&str]) -> anyhow::Result<ExitCode> {
    gateways::cli::dispatch::run(Cli::try_parse_from(std::iter::once("vouchsafe").chain(args.iter().copied()))?)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Every file under `dir`, by its path below it.
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read dir") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_dir() {
                pending.push(entry.path());
            } else {
                let relative = entry.path().strip_prefix(dir).expect("below").to_str().expect("utf-8").to_string();
                files.insert(relative, std::fs::read(entry.path()).expect("read"));
            }
        }
    }
    files
}

/// What a tlog client proves from a tiled log it reads through `fetch`, trusting `vkey`:
/// `Err` names the first thing that does not verify.
fn prove_from_tiles(fetch: &dyn Fn(&str) -> Option<Vec<u8>>, vkey: &NoteVerifier, old_note: &str) -> Result<(u64, usize, usize), String> {
    let note = fetch("checkpoint").ok_or("no checkpoint")?;
    let checkpoint = Checkpoint::open(&note, vkey).map_err(|e| format!("checkpoint: {e}"))?;
    let old = Checkpoint::open(old_note.as_bytes(), vkey).map_err(|e| format!("old checkpoint: {e}"))?;
    let tiles = TileHashes::new(checkpoint.size, fetch);
    let mut leaves = Vec::new();
    for bundle in TileRef::of_size(checkpoint.size).into_iter().filter(|tile| tile.level.is_none()) {
        let bytes = fetch(&bundle.path()).ok_or_else(|| format!("{} is missing", bundle.path()))?;
        let entries = parse_entry_bundle(&bytes).map_err(|e| format!("{}: {e}", bundle.path()))?;
        if entries.len() as u64 != bundle.width {
            return Err(format!("{} holds {} entries, not {}", bundle.path(), entries.len(), bundle.width));
        }
        leaves.extend(entries.into_iter().map(tlog::leaf_hash));
    }
    let mut proof_bytes = 0;
    for (index, leaf) in leaves.iter().enumerate() {
        let proof = tlog::inclusion_proof_from(&tiles, index as u64, checkpoint.size).ok_or_else(|| format!("no inclusion proof of {index} from the tiles"))?;
        if !tlog::verify_inclusion(leaf, index as u64, checkpoint.size, &proof, &checkpoint.root) {
            return Err(format!("entry {index} is not in the checkpoint's tree"));
        }
        proof_bytes = proof_bytes.max(proof.len() * 32);
    }
    let consistency = tlog::consistency_proof_from(&tiles, old.size, checkpoint.size).ok_or("no consistency proof from the tiles")?;
    if !tlog::verify_consistency(old.size, checkpoint.size, &old.root, &checkpoint.root, &consistency) {
        return Err(format!("the tree of {} does not extend the tree of {}", checkpoint.size, old.size));
    }
    Ok((checkpoint.size, proof_bytes, consistency.len() * 32))
}

#[test]
fn tiles_exported_and_served_give_proofs_that_verify_against_the_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let backend = BackendArgs { data_dir: data.clone(), nats_url: None, stream: "VOUCHSAFE".into() };
    let engine_keys = dir.path().join("engine-keys");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let args =
        DemoArgs { backend: backend.clone(), keys_dir: engine_keys.clone(), vouchers: 12, connect: None, engine_tls: Default::default(), node_tls: false };
    let summary = runtime.block_on(demo::run(args)).expect("demo");
    assert!(summary.audit_ok && summary.seals >= 2, "{} seals", summary.seals);
    let vkey = gateways::common::keys::load_checkpoint_vkey(&engine_keys).expect("loads").expect("written");
    let (_, exported, _) = runtime.block_on(gateways::audit::rebuild(&backend, &engine_keys)).expect("rebuild");
    let notes: Vec<String> = exported.seals.iter().filter_map(|seal| seal.checkpoint.as_ref().map(|checkpoint| checkpoint.note.clone())).collect();
    let (first_note, newest_note) = (notes[0].clone(), notes.last().expect("sealed").clone());

    // The export, read as files.
    let out = dir.path().join("tiles");
    let started = std::time::Instant::now();
    let code =
        vouchsafe(&["audit", "export", "--data-dir", path(&data), "--keys", path(&engine_keys), "--format", "tiles", "--out", path(&out)]).expect("runs");
    assert_eq!(code, ExitCode::SUCCESS);
    let export_ms = started.elapsed().as_millis();
    let files = files_under(&out);
    assert_eq!(files["checkpoint"], newest_note.as_bytes(), "the newest seal's checkpoint");
    let from_files = |path: &str| files.get(path).cloned();
    let (size, inclusion_bytes, consistency_bytes) = prove_from_tiles(&from_files, &vkey, &first_note).expect("the exported tiles verify");
    assert_eq!(size, exported.seals.last().expect("sealed").last_entry + 1);

    // Controls on the files: a flipped bit in the level-0 tile, in an entry bundle; a
    // checkpoint the client's key did not sign.
    let level0 = TileRef::of_size(size).into_iter().find(|tile| tile.level == Some(0)).expect("a level-0 tile").path();
    let bundle = TileRef::of_size(size).into_iter().find(|tile| tile.level.is_none()).expect("a bundle").path();
    for (name, altered) in [(&level0, 40), (&bundle, 30)] {
        let mut tampered = files.clone();
        tampered.get_mut(name.as_str()).expect("exported")[altered] ^= 1;
        let fetch = |path: &str| tampered.get(path).cloned();
        let refused = prove_from_tiles(&fetch, &vkey, &first_note).expect_err("tampered tiles");
        assert!(refused.contains("not in the checkpoint's tree"), "{name}: {refused}");
    }
    let stranger = engine::note::NoteSigner::generate(vkey.name()).expect("key");
    let refused = prove_from_tiles(&from_files, &stranger.verifier(), &first_note).expect_err("another key");
    assert!(refused.starts_with("checkpoint:"), "{refused}");

    // The same bytes over HTTP from `serve --tlog-listen`.
    let (grpc, tiles_port) = (free_port(), free_port());
    let serve_args = gateways::server::serve::ServeArgs {
        data_dir: Some(data.clone()),
        keys: Some(engine_keys.clone()),
        listen: Some(format!("127.0.0.1:{grpc}").parse().expect("addr")),
        tlog_listen: Some(format!("127.0.0.1:{tiles_port}").parse().expect("addr")),
        ..Default::default()
    };
    let settings = gateways::server::serve::settings(&serve_args).expect("settings");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(gateways::server::serve::run(settings, async move {
        let _ = stopped.await;
    }));
    let base = format!("http://127.0.0.1:{tiles_port}");
    let get = |path: &str| -> Option<http_client::Answer> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match runtime.block_on(http_client::get(&format!("{base}/{path}"))) {
                Ok(answer) => return Some(answer),
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(100)),
                Err(_) => return None,
            }
        }
    };
    let checkpoint = get("checkpoint").expect("the server answers");
    assert_eq!((checkpoint.status.as_u16(), checkpoint.content_type.as_deref()), (200, Some("text/plain; charset=utf-8")));
    for (name, bytes) in &files {
        let answer = get(name).expect("answers");
        assert_eq!((answer.status.as_u16(), &answer.body[..]), (200, &bytes[..]), "{name} over HTTP");
    }
    let from_http = |path: &str| get(path).filter(|answer| answer.status.is_success()).map(|answer| answer.body.to_vec());
    assert_eq!(prove_from_tiles(&from_http, &vkey, &first_note).expect("the served tiles verify").0, size);
    let past = TileRef { level: Some(0), index: 0, width: (size % 256) + 1 }.path();
    assert_eq!(get(&past).expect("answers").status.as_u16(), 404, "{past} is past the checkpoint");
    let post = runtime.block_on(http_client::post(&format!("{base}/checkpoint"), "text/plain", bytes::Bytes::from_static(b"x\n"))).expect("answers");
    assert_eq!(post.status.as_u16(), 405, "read only");
    let _ = stop.send(());
    runtime.block_on(server).expect("joined").expect("serve stops cleanly");
    eprintln!(
        "tiles: tree of {size} entries, {} files, {} bytes in all (level-0 tile {} bytes, bundle {} bytes), checkpoint {} bytes; inclusion proof up to {inclusion_bytes} bytes, consistency proof {consistency_bytes} bytes; export {export_ms} ms",
        files.len(),
        files.values().map(Vec::len).sum::<usize>(),
        files[&level0].len(),
        files[&bundle].len(),
        newest_note.len()
    );
}
