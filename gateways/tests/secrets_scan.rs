//! Secrets never reach the event stream, the data files or the logs. After a real demo
//! run (the binary, so its log output is captured), every secret the run produced that the
//! test can recompute is searched for, raw, hex and base64, in every stream payload, every
//! file under the data dir except the key directory, and everything the run printed. A
//! planted secret is found (negative control), and a public id the run wrote is found in
//! each kind of place searched (the scan read them).
//!
//! Secrets searched (those the test can recompute or read): the engine's private key
//! (PKCS#8 DER), the royalty master key, the checkpoint key's seed and key line, the
//! operator's credential secret, each epoch's A_0
//! and every entry key K_j, the token key, every voucher's receipt and auth token, every
//! node's access key, and every media key (unwrapped from the stream with the engine's key).
//! Not searched: the merchants', nodes' and auditors' credential secrets (they live only in
//! the demo process), the per-rendition keys of format 3, and the publisher's and players'
//! private keys (their own files under the data dir).

use base64::Engine as _;
use engine::app::{EngineKeys, TOKEN_KEY_ID};
use engine::crypto::{self, TokenPurpose};
use engine::domain::event::Event;
use engine::ids::{NodeId, Seq};
use std::path::Path;
use std::process::Command;

fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        base64::engine::general_purpose::STANDARD.encode(secret).trim_end_matches('=').as_bytes().to_vec(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret).into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// (name, secret) pairs found in `haystacks`.
fn hits<'a>(secrets: &'a [(String, Vec<u8>)], haystacks: &[(String, Vec<u8>)]) -> Vec<(&'a str, String)> {
    let mut found = Vec::new();
    for (name, secret) in secrets {
        for form in forms(secret) {
            for (place, haystack) in haystacks {
                if contains(haystack, &form) {
                    found.push((name.as_str(), place.clone()));
                }
            }
        }
    }
    found
}

fn files_under(dir: &Path, skip: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.starts_with(skip) {
            continue;
        }
        if path.is_dir() {
            files_under(&path, skip, out);
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).expect("readable file")));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_stream_the_files_or_the_logs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_vouchsafe"))
        .args(["demo", "--vouchers", "40", "--json", "--data-dir"])
        .arg(&data_dir)
        .env("RUST_LOG", "debug")
        .output()
        .expect("run demo");
    assert!(output.status.success(), "demo failed: {}", String::from_utf8_lossy(&output.stderr));

    let keys_dir = data_dir.join("keys");
    let engine_private = gateways::common::keys::load_engine_private(&keys_dir).expect("engine key");
    let master = gateways::common::keys::load_royalty_master(&keys_dir).expect("master");
    let keys = EngineKeys::new(engine_private.clone()).expect("keys");
    let log = gateways::common::backend::BackendArgs { data_dir: data_dir.clone(), nats_url: None, stream: "VOUCHSAFE".into() }.open().await.expect("log");
    let stored = log.read_from(Seq(1), usize::MAX).await.expect("read");
    drop(log);

    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    let pem = engine_private.to_pkcs8_pem().expect("pem");
    let der: Vec<u8> = {
        use base64::Engine as _;
        let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).expect("pem body")
    };
    // 48-byte windows covering the whole private key DER (the last one aligned to its end,
    // never a short tail that would match by chance): a leak of any part of it is found.
    const DER_WINDOW_BYTES: usize = 48;
    let mut start = 0;
    while start < der.len() {
        let begin = start.min(der.len() - DER_WINDOW_BYTES);
        secrets.push((format!("engine private key bytes {begin}.."), der[begin..begin + DER_WINDOW_BYTES].to_vec()));
        start += DER_WINDOW_BYTES;
    }
    secrets.push(("royalty master key".into(), master.expose().to_vec()));
    // The checkpoint key: its Ed25519 seed (the last part of its key line), and the line.
    let checkpoint = gateways::common::keys::load_checkpoint_key(&keys_dir).expect("checkpoint.key loads").expect("keys init wrote one");
    let line = checkpoint.to_private_line();
    let encoded = line.splitn(5, '+').nth(4).expect("PRIVATE+KEY+name+id+key");
    let typed_seed = base64::engine::general_purpose::STANDARD.decode(encoded).expect("base64");
    secrets.push(("checkpoint key seed".into(), typed_seed[1..].to_vec()));
    secrets.push(("checkpoint key line".into(), line.into_bytes()));
    let operator = gateways::common::cred::Credential::load(&keys_dir.join("operator.cred")).expect("operator credential");
    secrets.push(("operator credential secret".into(), operator.secret.expose().to_vec()));
    let mut chain = projections::royalty::Chain::start(&master, projections::royalty_log::EPOCH);
    secrets.push(("royalty A_0".into(), projections::royalty::epoch_secret(&master, projections::royalty_log::EPOCH).expose().to_vec()));
    let token_key = keys.token_key(TOKEN_KEY_ID).expect("token key 1 is always held");
    secrets.push(("token key".into(), token_key.expose().to_vec()));
    let (mut vouchers, mut media_keys, mut nodes) = (0, 0, 0);
    let mut entries = 0;
    for event in &stored {
        match engine::wire::decode(&event.payload).expect("decode").event {
            Event::Authorized { voucher_id, receipt_generation, .. } => {
                let receipt = crypto::derive_token(&token_key, TokenPurpose::Receipt, &voucher_id.0, receipt_generation);
                secrets.push((format!("receipt of {voucher_id}"), receipt.expose().to_vec()));
                vouchers += 1;
            }
            Event::Reserved { voucher_id, auth_generation, .. } => {
                let auth = crypto::derive_token(&token_key, TokenPurpose::Auth, &voucher_id.0, auth_generation);
                secrets.push((format!("auth token of {voucher_id}"), auth.expose().to_vec()));
            }
            Event::MediaPublished(media) => {
                let media_key = crypto::unwrap_key(&engine_private, &media.wrapped_media_key).expect("unwrap");
                secrets.push((format!("media key of {}", media.media_id), media_key.expose().to_vec()));
                media_keys += 1;
            }
            Event::NodeRegistered { node_id, .. } => {
                secrets.push((format!("access key of {node_id}"), crypto::node_access_key(&token_key, &NodeId::new(&node_id.0).0).expose().to_vec()));
                nodes += 1;
            }
            Event::Delivered { .. } | Event::PreviewEnded { .. } => {
                secrets.push((format!("royalty entry key {entries}"), chain.next_entry_key().expose().to_vec()));
                // Advance the chain past this entry without needing its contents.
                let _ = chain.append(&projections::royalty::Entry {
                    kind: projections::royalty::UsageKind::Preview,
                    source_seq: 0,
                    timestamp_ms: 0,
                    title: String::new(),
                    artist: String::new(),
                    authors: vec![],
                    length_ms: 0,
                    sale_price_minor: 0,
                    currency: String::new(),
                    consumer_cert: String::new(),
                    voucher_id: String::new(),
                    media_id: String::new(),
                    image_descriptor: String::new(),
                    merchant: String::new(),
                    rights_agent: String::new(),
                    distributor: String::new(),
                    owner: String::new(),
                    played_ms: 0,
                });
                entries += 1;
            }
            _ => {}
        }
    }
    assert!(vouchers > 20 && media_keys == 5 && nodes == 2 && entries > 20, "the run produced the secrets to look for");

    let mut haystacks: Vec<(String, Vec<u8>)> = stored.iter().map(|e| (format!("stream seq {}", e.seq), e.payload.to_vec())).collect();
    files_under(&data_dir, &keys_dir, &mut haystacks);
    haystacks.push(("stderr".into(), output.stderr.clone()));
    haystacks.push(("stdout".into(), output.stdout.clone()));
    let found = hits(&secrets, &haystacks);
    assert!(found.is_empty(), "secrets found: {found:?}");
    eprintln!(
        "secrets scan: {} secrets x {} forms over {} places ({} stream messages, {} bytes of files and logs): 0 hits",
        secrets.len(),
        forms(&[0]).len(),
        haystacks.len(),
        stored.len(),
        haystacks.iter().map(|(_, h)| h.len()).sum::<usize>()
    );

    // Negative control: a receipt planted in a payload, in hex in a log line, in base64 in a file.
    let (name, receipt) = secrets.iter().find(|(name, _)| name.starts_with("receipt")).expect("a receipt").clone();
    for planted in [
        [stored[3].payload.to_vec(), receipt.clone()].concat(),
        format!("INFO redeemed with {}", hex::encode(&receipt)).into_bytes(),
        base64::engine::general_purpose::STANDARD.encode(&receipt).into_bytes(),
    ] {
        let found = hits(&secrets, &[("planted".into(), planted)]);
        assert!(found.iter().any(|(hit, _)| *hit == name), "the planted {name} was not found");
    }

    // Control of the scan's reach: a public value the run wrote (a delivered voucher's id)
    // is found, by the same matcher over the same haystacks, in each kind of place searched,
    // so each was collected and read, not only named.
    let delivered = stored
        .iter()
        .find_map(|e| match engine::wire::decode(&e.payload).expect("decode").event {
            Event::Delivered { voucher_id, .. } => Some(voucher_id.0),
            _ => None,
        })
        .expect("a delivery");
    let public = [(format!("voucher id {delivered}"), delivered.as_bytes().to_vec())];
    let found: Vec<String> = hits(&public, &haystacks).into_iter().map(|(_, place)| place).collect();
    let under = |dir: &str| data_dir.join(dir).display().to_string();
    for (kind, place) in [
        ("the stream", "stream seq ".to_string()),
        ("the event log's files", under("log")),
        ("the projection store's files", under("projections")),
        ("the players' copies", under("players")),
        ("what the run printed", "stderr".to_string()),
    ] {
        assert!(
            found.iter().any(|hit| hit.starts_with(&place)),
            "{delivered} was not found in {kind} ({place}…): the scan did not read it; found in {found:?}"
        );
    }
}
