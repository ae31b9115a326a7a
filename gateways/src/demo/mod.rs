//! `vouchsafe demo`: the whole market end to end over loopback gRPC.
//!
//! Without `--connect` it starts the engine in this process on 127.0.0.1 (on the embedded
//! log or JetStream, `--nats-url`); with `--connect URL` it drives an engine already
//! running under `serve`, using `operator.cred` from `--keys`. Either way everything else
//! talks to the engine over real sockets: the operator registers merchants and delivery
//! nodes and certifies players (RSA passports); a publisher builds signed format-2
//! containers (two renditions sealed in chunks under a fresh media key, descriptive data
//! free or encrypted, a preview clip with fades) and uploads them; two node agents
//! register, heartbeat and follow their feeds; merchants sell concurrently (some paid in
//! points, some albums, some of the low rendition); some reservations expire and are
//! swept, some are voided, some delivered sales are refunded (a royalty adjustment each);
//! players challenge-and-prove at the node, download, unwrap the
//! media key, check the publisher's signature, decrypt chunk by chunk, verify and keep a
//! delivered copy stamped with the engine-signed transaction record; previews play. The
//! royalty log is sealed (witness file), every delivered copy is inspected (its record
//! checked with the engine's public key) and the auditor replays the whole stream.
//!
//! With `--node-tls` the nodes serve players over TLS, under certificates from a throwaway
//! CA made for the run (`node_tls`), and players trust only that CA.

mod node_tls;

use crate::common::client::{self, ComponentUpload, ContainerUpload, MerchantClient, PreviewUpload, RenditionUpload};
use crate::common::cred::Credential;
use crate::node::{NodeArgs, RunningNode};
use crate::player::{NodeTrust, Passport, Purchase};
use crate::server::{EngineConfig, RunningEngine};
use anyhow::{Context, bail};
use engine::crypto;
use engine::ids::ConsumerId;
use engine::log::EventLog;
use futures::StreamExt;
use proto::v1 as pb;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Sales in flight at once.
const CONCURRENT_SALES_MAX: usize = 48;
/// Bytes of content per published media's high rendition (random, so each run differs);
/// the low rendition has half as many.
const MEDIA_BYTES: usize = 48 * 1024;
/// Plaintext bytes per sealed chunk: the high rendition spans three chunks.
const DEMO_CHUNK_BYTES: u32 = 16 * 1024;
const MEDIA_LENGTH_MS: u64 = 180_000;
const RESERVATION_TTL_MS: u64 = 15 * 60 * 1000;
/// The TTL of the reservations the demo lets expire.
const SHORT_TTL_MS: u64 = 1;
/// How long the demo waits for the sweeper to void the expiring reservations.
const EXPIRY_WAIT: Duration = Duration::from_secs(60);
/// How long, with `--connect`, the demo waits for the engine's sealer.
const SEAL_WAIT: Duration = Duration::from_secs(60);
const MERCHANTS: usize = 3;
/// Points the operator credits each player (a merchant sells each a tenth more).
const PLAYER_POINTS: u64 = 100_000_000;
/// The most a player lets a merchant spend on one purchase, in points.
const SPEND_CEILING: u64 = 10_000;
/// How long a player's spend authorization is good for.
const SPEND_AUTHORIZATION_TTL_MS: u64 = 10 * 60 * 1000;
const NODE_REGIONS: [&str; 2] = ["eu", "us"];
const PLAYERS: usize = 6;
/// `<data-dir>/players/<consumer>.passphrase`: the passphrase of each run's first player's
/// protected passport (one file per consumer, so a later run keeps an earlier one's).
pub const PASSPHRASE_FILE_SUFFIX: &str = ".passphrase";
const NODE_SLOTS: u32 = 256;
const NODE_CACHE_BYTES_MAX: u64 = 64 * 1024 * 1024;

pub struct DemoArgs {
    pub backend: crate::common::backend::BackendArgs,
    pub keys_dir: PathBuf,
    pub vouchers: usize,
    /// Drive an engine already running under `serve`.
    pub connect: Option<String>,
    /// With `connect` to an `https://` engine: the CA to trust and, for an engine that
    /// requires client certificates, the certificate the demo and its nodes present.
    pub engine_tls: crate::node::EngineTls,
    /// Delivery nodes serve players over TLS (a throwaway CA, `node_tls`).
    pub node_tls: bool,
}

/// How many times the demo's audit looks again for a head the engine did not move past
/// while the auditor replayed (each replay of a demo stream takes a moment).
const AUDIT_HEAD_ATTEMPTS_MAX: usize = 5;

#[derive(serde::Serialize, Debug, Default)]
pub struct Summary {
    pub backend: String,
    pub merchants: usize,
    pub nodes: usize,
    pub media: usize,
    pub purchases: u64,
    pub delivered: u64,
    pub decrypt_ok: u64,
    pub previews: u64,
    pub expired: u64,
    pub voided: u64,
    /// Delivered single-media sales the merchant then refunded (each a royalty adjustment).
    pub refunded: u64,
    pub royalty_entries: u64,
    pub seals: u64,
    pub stream_events: u64,
    pub state_digest: String,
    pub audit_ok: bool,
    pub elapsed_ms: u64,
    pub points_paid: u64,
    pub album_tracks_delivered: u64,
    /// Always true: every party talked to the engine over gRPC.
    pub grpc: bool,
    pub engine_url: String,
    /// Delivered copies whose engine-signed transaction record verified with the engine's
    /// public key and whose content matched it (`vouchsafe inspect`), out of `delivered`.
    pub copies_inspected_ok: u64,
    /// The published containers' format version.
    pub container_format: u8,
    /// Deliveries of the low rendition (the rest are of the high one).
    pub low_rendition_delivered: u64,
    /// Players reached the nodes over TLS (`--node-tls`).
    pub node_tls: bool,
}

#[derive(Default)]
struct Counters {
    purchases: AtomicU64,
    delivered: AtomicU64,
    decrypt_ok: AtomicU64,
    voided: AtomicU64,
    refunded: AtomicU64,
    points_paid: AtomicU64,
    album_tracks: AtomicU64,
    low_rendition: AtomicU64,
    /// The delivered copies the players wrote, inspected at the end.
    copies: std::sync::Mutex<Vec<PathBuf>>,
}

/// The engine this demo started itself (without `--connect`).
struct LocalEngine {
    running: RunningEngine,
    log: Arc<dyn EventLog>,
}

struct World {
    run_id: String,
    merchants: Vec<Credential>,
    media: Vec<client::Published>,
    /// Each player's points account is their consumer id.
    players: Vec<Passport>,
    players_dir: PathBuf,
    /// How players reach the nodes (the throwaway CA with `--node-tls`).
    node_trust: NodeTrust,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let data_dir = args.backend.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    if args.connect.is_none() && crate::common::keys::is_empty(&args.keys_dir) {
        eprintln!("creating keys in {}", args.keys_dir.display());
        crate::common::keys::init(&args.keys_dir)?;
    }
    let operator = Credential::load(&args.keys_dir.join(crate::common::keys::OPERATOR_CRED))?;
    let engine_public = crate::common::keys::load_engine_public(&args.keys_dir)?;

    let local = match &args.connect {
        Some(_) => None,
        None => {
            let (log, feed) = args.backend.open_with_feed().await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind a loopback port for the engine")?;
            let mut config = EngineConfig::new(data_dir.clone(), args.keys_dir.clone());
            config.sweep_interval = Duration::from_millis(100);
            config.projections_dir = Some(data_dir.join("projections"));
            // The demo seals explicitly (below); the interval only covers long runs.
            config.seal_interval = Duration::from_secs(3600);
            let mut running = crate::server::start(config, Arc::clone(&log), listener).await?;
            if let Some(feed) = feed {
                running.dispatch_to(feed);
            }
            Some(LocalEngine { running, log })
        }
    };
    let url = match (&args.connect, &local) {
        (Some(url), _) => url.clone(),
        (None, Some(local)) => local.running.url(),
        (None, None) => bail!("no engine to talk to"),
    };
    eprintln!("engine at {url} ({})", if local.is_some() { "started by the demo" } else { "already running" });
    let identity = args.engine_tls.client_identity.as_ref().map(|(cert_pem, key_pem)| client::ClientIdentity { cert_pem, key_pem });
    let channel = client::connect_any(&url, args.engine_tls.ca_pem.as_deref(), identity).await?;
    let mut catalog = client::catalog(channel.clone(), operator.clone());
    // Each run adds a new market session to the same stream, so request ids carry a run id.
    let run_id = format!("r{}", hex::encode(crypto::random_bytes::<6>()));

    // Operator: merchants, nodes, players, a points account.
    let mut merchants = Vec::new();
    for i in 0..MERCHANTS {
        let response =
            catalog.register_merchant(pb::RegisterMerchantRequest { request_id: format!("{run_id}-merchant-{i}"), name: format!("Shop {i}") }).await?;
        merchants.push(client::credential_of(response.into_inner())?);
    }
    let node_pki = if args.node_tls { Some(node_tls::throwaway(&data_dir, NODE_REGIONS.len())?) } else { None };
    if let Some(pki) = &node_pki {
        eprintln!("nodes serve players over TLS; their throwaway CA is {} (player --node-ca)", pki.ca_path.display());
    }
    let node_trust = NodeTrust { ca_pem: node_pki.as_ref().map(|pki| pki.ca_pem.clone()), insecure_plaintext: false };
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (i, region) in NODE_REGIONS.iter().enumerate() {
        let response = catalog
            .register_node_credential(pb::RegisterNodeCredentialRequest {
                request_id: format!("{run_id}-node-{i}"),
                region: region.to_string(),
                slots_max: NODE_SLOTS,
            })
            .await?;
        let cred = client::credential_of(response.into_inner())?;
        let node = crate::node::start(NodeArgs {
            connect: url.clone(),
            cred,
            listen: "127.0.0.1:0".parse().context("loopback address")?,
            slots_max: NODE_SLOTS,
            region: region.to_string(),
            data_dir: data_dir.join("nodes"),
            cache_bytes_max: NODE_CACHE_BYTES_MAX,
            engine_tls: args.engine_tls.clone(),
            player_tls: node_pki.as_ref().map(|pki| pki.identities[i].clone()),
        })
        .await?;
        nodes.push(node);
    }
    // Players with the CA refuse a plain-text node, so with --node-tls every fetch and
    // preview below went over TLS; this records that the nodes announced it.
    let nodes_serve_tls = args.node_tls && nodes.iter().all(|node| node.endpoint().starts_with("https://"));
    eprintln!(
        "registered {} merchants; {} delivery nodes serving at {}",
        merchants.len(),
        nodes.len(),
        nodes.iter().map(|n| n.endpoint()).collect::<Vec<_>>().join(", ")
    );

    let players_dir = data_dir.join("players");
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        let consumer = ConsumerId(format!("{run_id}-player{i}"));
        let passport = crate::player::create_passport(&mut catalog, &format!("{run_id}-certify-{i}"), &consumer, &engine_public).await?;
        let home = crate::player::passport_dir(&data_dir, &consumer)?;
        if i == 0 {
            // The first passport is protected (encrypted PKCS#8 under a passphrase a script
            // keeps in a 0600 file) and opened again from its files, as `player fetch
            // --passphrase-file` opens it; scrypt is CPU work, off the runtime's threads.
            std::fs::create_dir_all(&players_dir).with_context(|| format!("cannot create {}", players_dir.display()))?;
            let passphrase_file = players_dir.join(format!("{}{PASSPHRASE_FILE_SUFFIX}", consumer.0));
            let passphrase = hex::encode(engine::crypto::random_bytes::<16>());
            crate::common::keys::write_private(&passphrase_file, format!("{passphrase}\n").as_bytes())?;
            let opened = tokio::task::spawn_blocking(move || {
                passport.save_with(&home, Some(&passphrase))?;
                Passport::load_with(&home, &crate::player::PassphraseSource::File(passphrase_file))
            })
            .await
            .context("the passport task failed")??;
            players.push(opened);
            continue;
        }
        passport.save(&home)?;
        players.push(passport);
    }
    // Each player's points: credited by the operator, and some sold by the first merchant
    // (it took the player's money; its clearing account owes the points).
    for player in &players {
        let account_id = player.consumer_id.as_str().to_string();
        let top_up = pb::TopUpPointsRequest {
            request_id: format!("{run_id}-topup-{account_id}"),
            account_id: account_id.clone(),
            amount: PLAYER_POINTS,
            reference: "demo".into(),
            currency: String::new(),
        };
        catalog.top_up_points(top_up.clone()).await?;
        client::merchant(channel.clone(), merchants[0].clone())
            .sell_points(pb::TopUpPointsRequest {
                request_id: format!("{run_id}-sold-{account_id}"),
                currency: "EUR".into(),
                amount: PLAYER_POINTS / 10,
                ..top_up
            })
            .await?;
    }
    eprintln!("certified {} players (passports under {}); credited their points accounts", players.len(), players_dir.display());

    // Publisher: signed format-2 containers (two renditions, descriptive data, a preview
    // clip) under fresh media keys, each key wrapped for the engine.
    let publisher_key = crate::cli::load_or_create_publisher_key(&crate::cli::default_publisher_key_path(&data_dir)).await?;
    let titles = [
        ("Blue Vouchers", "The Receipts"),
        ("MAC Chain", "Schneier & Kelsey"),
        ("Track One", "Album Artist"),
        ("Track Two", "Album Artist"),
        ("Track Three", "Album Artist"),
    ];
    let mut media = Vec::new();
    for (i, (title, artist)) in titles.iter().enumerate() {
        let mut high = vec![0u8; MEDIA_BYTES];
        for (j, byte) in high.iter_mut().enumerate() {
            *byte = (i * 31 + j * 7) as u8;
        }
        high[..32].copy_from_slice(&crypto::random_bytes::<32>());
        // The "low" rendition stands in for a re-encoding at a lower bitrate.
        let low: Vec<u8> = high.iter().step_by(2).copied().collect();
        // The free clip plays 30 s from 0:30, cut from the low rendition.
        let clip = low[low.len() / 6..low.len() / 3].to_vec();
        let upload = ContainerUpload {
            title: title.to_string(),
            artist: artist.to_string(),
            authors: vec![artist.to_string()],
            length_ms: MEDIA_LENGTH_MS,
            price_minor: 99 + 100 * i as u64,
            currency: "EUR".into(),
            terms: client::standard_terms(&format!("label-{}", i % 2)),
            renditions: vec![
                RenditionUpload { name: "high".into(), bitrate_kbps: 256, content: high },
                RenditionUpload { name: "low".into(), bitrate_kbps: 96, content: low },
            ],
            components: vec![
                ComponentUpload {
                    name: "lyrics".into(),
                    media_type: "text/plain; charset=utf-8".into(),
                    encrypted: true,
                    data: format!("the words of {title}").into_bytes(),
                },
                ComponentUpload {
                    name: "liner_notes".into(),
                    media_type: "text/plain; charset=utf-8".into(),
                    encrypted: false,
                    data: format!("{title}, recorded for the demo").into_bytes(),
                },
                ComponentUpload {
                    name: "cover".into(),
                    media_type: "image/png".into(),
                    encrypted: false,
                    data: [&[0x89, b'P', b'N', b'G'][..], title.as_bytes()].concat(),
                },
            ],
            preview: Some(PreviewUpload {
                start_ms: 30_000,
                duration_ms: 30_000,
                fade_in_ms: 1_000,
                fade_out_ms: 2_000,
                media_type: "audio/mpeg".into(),
                clip,
            }),
            for_sale: true,
            image_descriptor: format!("cover-{i}.png"),
            chunk_bytes: DEMO_CHUNK_BYTES,
        };
        media.push(client::publish_container(&mut catalog, &operator.id, &format!("{run_id}-publish-{i}"), &engine_public, &publisher_key, upload).await?);
    }
    eprintln!("published {} media (signed containers with two renditions and a preview clip, publisher key {})", media.len(), publisher_key.public().key_id());

    let world = Arc::new(World { run_id: run_id.clone(), merchants, media, players, players_dir, node_trust });
    let counters = Arc::new(Counters::default());

    // Merchants sell concurrently.
    let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SALES_MAX));
    let mut sales = tokio::task::JoinSet::new();
    let expiring = Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 0..args.vouchers {
        let permit = Arc::clone(&semaphore).acquire_owned().await.context("sale semaphore closed")?;
        let (world, counters, expiring, channel) = (Arc::clone(&world), Arc::clone(&counters), Arc::clone(&expiring), channel.clone());
        sales.spawn(async move {
            let _permit = permit;
            let merchant_cred = world.merchants[i % world.merchants.len()].clone();
            let mut merchant = client::merchant(channel, merchant_cred);
            sell_one(i, &world, &mut merchant, &counters, &expiring).await.with_context(|| format!("sale {i}"))
        });
    }
    while let Some(joined) = sales.join_next().await {
        joined.context("a sale task panicked")??;
    }
    eprintln!("sold {} vouchers", counters.purchases.load(Ordering::Relaxed));
    // A first seal over the sales' deliveries (the previews below come after it), so the
    // stream holds a chain of seals.
    if let Some(local) = &local {
        seal(local, &data_dir).await?;
    }

    // Previews: a few, on whichever node the allocator picks, played by a player.
    let mut previews = 0;
    for i in 0..(args.vouchers / 20).max(2) {
        let mut merchant = client::merchant(channel.clone(), world.merchants[i % world.merchants.len()].clone());
        let preview = merchant
            .preview(pb::PreviewRequest {
                request_id: format!("{run_id}-preview-{i}"),
                media_id: world.media[i % world.media.len()].media_id.clone(),
                region: String::new(),
            })
            .await?
            .into_inner();
        let mut at_node = crate::player::connect_node_with(&preview.node_endpoint, &world.node_trust).await?;
        let clip = crate::player::play_preview_on(&mut at_node, &preview.preview_id).await?;
        if clip.is_empty() {
            bail!("preview {} played an empty clip", preview.preview_id);
        }
        previews += 1;
    }

    // The engine's sweeper voids every reservation past due.
    let expiring: Vec<String> = std::mem::take(&mut *expiring.lock().expect("expiring list lock is never poisoned"));
    let expired = wait_for_expiry(&channel, &world, &expiring).await?;

    // Seal the royalty log: a signed report over the entries so far, in the witness file.
    let pin;
    let seals;
    let royalty_entries;
    let (stream_events, state_digest, audit_ok);
    match &local {
        Some(local) => {
            let state = &local.running.state;
            pin = seal(local, &data_dir).await?;
            let royalty_master = crate::common::keys::load_royalty_master(&args.keys_dir)?;
            // The engine appends on its own meanwhile (its slot leases' upkeep): the live
            // digest and the replay are compared at one head, taken again if it moved.
            let mut attempts = 0;
            let (audit, live_digest, entries, seal_count) = loop {
                let last = local.log.last_seq().await?;
                state.live.caught_up(last).await;
                let (live_digest, entries, seal_count, seal_faults) =
                    state.live.read(|p| (p.digest(), p.royalty.entries.len() as u64, p.royalty.seals.len() as u64, p.royalty.seal_faults.len()));
                if seal_faults > 0 {
                    bail!("{seal_faults} rights-report seals in this stream do not match the royalty chain (were other keys used with this data dir?)");
                }
                // The auditor's view: the whole stream with the public key and the master key
                // only, pinned to the newest seal; it must find nothing and reach the same digest.
                let audit = projections::audit::replay(local.log.as_ref(), &royalty_master, &engine_public, pin, |_| {}).await?;
                attempts += 1;
                if audit.last_seq == last.0 || attempts >= AUDIT_HEAD_ATTEMPTS_MAX {
                    break (audit, live_digest, entries, seal_count);
                }
            };
            if !audit.ok() {
                eprintln!("{}", crate::audit::describe(&audit));
            }
            audit_ok = audit.ok() && audit.state_digest == hex::encode(live_digest);
            stream_events = audit.last_seq;
            state_digest = audit.state_digest;
            royalty_entries = entries;
            seals = seal_count;
        }
        None => {
            // With --connect the engine's own sealer seals; the audit runs over gRPC.
            let mut audit = client::audit(channel.clone(), operator.clone());
            let deadline = Instant::now() + SEAL_WAIT;
            let mut verified = audit.verify_chain(pb::VerifyChainRequest {}).await?.into_inner();
            while verified.seals_verified == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                verified = audit.verify_chain(pb::VerifyChainRequest {}).await?.into_inner();
            }
            let mut progress = audit.replay(pb::ReplayRequest { pinned_seal_hash: Vec::new() }).await?.into_inner();
            let mut last = None;
            while let Some(message) = progress.next().await {
                last = Some(message?);
            }
            let last = last.context("the engine's replay ended without a result")?;
            if !last.first_bad.is_empty() {
                eprintln!("audit replay: first bad: {}", last.first_bad);
            }
            audit_ok = last.done && last.chain_ok && last.first_bad.is_empty();
            stream_events = last.last_seq;
            state_digest = hex::encode(&last.state_digest);
            royalty_entries = verified.entries;
            seals = verified.seals_verified;
        }
    }

    // Every delivered copy names its purchase: inspect each (its record checked with the
    // engine's public key, its content against the record), as `vouchsafe inspect` does.
    let copies: Vec<PathBuf> = std::mem::take(&mut *counters.copies.lock().expect("copies lock is never poisoned"));
    let inspected_public = engine_public.clone();
    let copies_inspected_ok = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut ok = 0;
        for path in &copies {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read the delivered copy {}", path.display()))?;
            let report = crate::cli::inspect::inspect_bytes(&bytes, Some(&inspected_public), None);
            if report.ok() && report.transaction.as_ref().is_some_and(|transaction| transaction.signature_ok == Some(true)) {
                ok += 1;
            } else {
                eprintln!("inspect {}: {}", path.display(), crate::cli::inspect::describe(&report));
            }
        }
        Ok(ok)
    })
    .await
    .context("the inspection task failed")??;
    eprintln!("inspected the delivered copies: {copies_inspected_ok} transaction records verified with the engine's key");

    let node_count = nodes.len();
    for node in nodes {
        node.shutdown().await;
    }
    if let Some(local) = local {
        local.running.shutdown().await?;
    }
    Ok(Summary {
        backend: if args.connect.is_some() { "connect".into() } else { args.backend.name().into() },
        merchants: world.merchants.len(),
        nodes: node_count,
        media: world.media.len(),
        purchases: counters.purchases.load(Ordering::Relaxed),
        delivered: counters.delivered.load(Ordering::Relaxed),
        decrypt_ok: counters.decrypt_ok.load(Ordering::Relaxed),
        previews,
        expired,
        voided: counters.voided.load(Ordering::Relaxed),
        refunded: counters.refunded.load(Ordering::Relaxed),
        royalty_entries,
        seals,
        stream_events,
        state_digest,
        audit_ok,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        points_paid: counters.points_paid.load(Ordering::Relaxed),
        album_tracks_delivered: counters.album_tracks.load(Ordering::Relaxed),
        grpc: true,
        engine_url: url,
        copies_inspected_ok,
        container_format: engine::media::FORMAT_VERSION_3,
        low_rendition_delivered: counters.low_rendition.load(Ordering::Relaxed),
        node_tls: nodes_serve_tls,
    })
}

/// Seals the royalty entries not sealed yet and appends the seal to the witness file;
/// returns the new seal's hash (to pin the audit to).
async fn seal(local: &LocalEngine, data_dir: &std::path::Path) -> anyhow::Result<Option<[u8; 32]>> {
    let state = &local.running.state;
    state.live.caught_up(local.log.last_seq().await?).await;
    let Some(seal) = crate::server::seal_once(&state.live, &state.market, 1).await? else { return Ok(None) };
    crate::common::witness::append(data_dir, &seal)?;
    Ok(Some(engine::domain::report::Report::seal_hash(&seal)))
}

/// Waits until the engine's sweeper has voided every reservation left to expire.
async fn wait_for_expiry(channel: &client::Engines, world: &World, expiring: &[String]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + EXPIRY_WAIT;
    let mut expired = 0u64;
    for (i, voucher_id) in expiring.iter().enumerate() {
        // Each expiring reservation was made by merchant `index % MERCHANTS` of its sale;
        // try each merchant until one owns it (GetVoucher answers a non-owner as if the
        // voucher did not exist).
        let mut voided = false;
        while !voided {
            for merchant_cred in &world.merchants {
                let mut merchant = client::merchant(channel.clone(), merchant_cred.clone());
                match merchant.get_voucher(pb::GetVoucherRequest { voucher_id: voucher_id.clone() }).await {
                    Ok(view) if view.get_ref().status == "Voided" => voided = true,
                    Ok(_) => {}
                    Err(status) if status.code() == tonic::Code::NotFound => continue,
                    Err(status) => return Err(status.into()),
                }
                break;
            }
            if !voided {
                if Instant::now() > deadline {
                    bail!("the sweeper voided {i} of the {} reservations left to expire within {EXPIRY_WAIT:?}", expiring.len());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        expired += 1;
    }
    Ok(expired)
}

async fn sell_one(i: usize, world: &World, merchant: &mut MerchantClient, counters: &Counters, expiring: &std::sync::Mutex<Vec<String>>) -> anyhow::Result<()> {
    let run_id = &world.run_id;
    let prefix = format!("{run_id}-sale-{i}");
    if i % 10 == 9 {
        // Let this reservation expire: a 1 ms TTL; the engine's sweeper voids it.
        let reserved = merchant
            .reserve(pb::ReserveRequest {
                request_id: format!("{prefix}-reserve"),
                media_ids: vec![world.media[0].media_id.clone()],
                rendition: "high".into(),
                ttl_ms: SHORT_TTL_MS,
                points_account: String::new(),
                payment_ref: format!("card-{i}"),
                spend_authorization: None,
                rental_ms: 0,
            })
            .await?
            .into_inner();
        counters.purchases.fetch_add(1, Ordering::Relaxed);
        expiring.lock().expect("expiring list lock is never poisoned").push(reserved.voucher_id);
        return Ok(());
    }
    // Every 25th sale is the album (three tracks on one voucher); every 7th is paid in points.
    let media_ids: Vec<String> =
        if i % 25 == 3 { world.media[2..5].iter().map(|m| m.media_id.clone()).collect() } else { vec![world.media[i % 2].media_id.clone()] };
    // A points purchase is paid from the account of the player who gets the media, with
    // that player's spend authorization for this merchant and these media.
    let points = if i % 7 == 2 {
        let player = &world.players[i % world.players.len()];
        let merchant_id = &world.merchants[i % world.merchants.len()].id;
        let expires_at = engine::clock::Clock::now(&engine::clock::SystemClock).plus_ms(SPEND_AUTHORIZATION_TTL_MS);
        counters.points_paid.fetch_add(1, Ordering::Relaxed);
        Some(client::PointsPayment::authorized(crate::common::spend::to_pb(&player.authorize_spend(merchant_id, SPEND_CEILING, &media_ids, expires_at)?)))
    } else {
        None
    };
    if i % 10 == 8 {
        let reserved = merchant
            .reserve(pb::ReserveRequest {
                request_id: format!("{prefix}-reserve"),
                media_ids,
                rendition: "high".into(),
                ttl_ms: RESERVATION_TTL_MS,
                points_account: points.as_ref().map(|p| p.account.clone()).unwrap_or_default(),
                payment_ref: format!("card-{i}"),
                spend_authorization: points.as_ref().and_then(|p| p.authorization.clone()),
                rental_ms: 0,
            })
            .await?
            .into_inner();
        counters.purchases.fetch_add(1, Ordering::Relaxed);
        merchant.void(pb::VoidRequest { request_id: format!("{prefix}-void"), voucher_id: reserved.voucher_id }).await?;
        counters.voided.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    // Every fourth single-media sale buys the low rendition.
    let rendition = if media_ids.len() == 1 && i % 4 == 1 { "low" } else { "high" };
    let sale = client::buy_rendition(merchant, &prefix, &media_ids, rendition, points.as_ref()).await?;
    counters.purchases.fetch_add(1, Ordering::Relaxed);
    // A retried Authorize with the same request id returns the first answer.
    let retried =
        merchant.authorize(pb::AuthorizeRequest { request_id: format!("{prefix}-authorize"), voucher_id: sale.voucher_id.clone() }).await?.into_inner();
    if !crypto::ct_eq(&retried.receipt, &sale.receipt) {
        bail!("a retried Authorize returned a different receipt");
    }
    let player = &world.players[i % world.players.len()];
    let purchase = Purchase {
        node_endpoint: sale.node_endpoint.clone(),
        node_id: sale.node_id.clone(),
        grant: sale.grant(),
        receipt: sale.receipt.clone(),
        rental_until_ms: sale.rental_until_ms,
    };
    let out_dir = world.players_dir.join(&player.consumer_id.0);
    let mut at_node = crate::player::connect_node_with(&purchase.node_endpoint, &world.node_trust).await?;
    let copies = crate::player::redeem_and_download_on(&mut at_node, &purchase, player, &format!("{prefix}-redeem"), &out_dir).await?;
    for copy in &copies {
        let published = world.media.iter().find(|m| m.media_id == copy.media_id).context("delivered an unknown media")?;
        let expected = published.renditions.iter().find(|(name, _)| name == rendition).map(|(_, hash)| *hash).context("delivered an unknown rendition")?;
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        if copy.decrypt_ok && copy.content_hash == expected {
            counters.decrypt_ok.fetch_add(1, Ordering::Relaxed);
            counters.copies.lock().expect("copies lock is never poisoned").push(copy.path.clone());
        }
        if rendition == "low" {
            counters.low_rendition.fetch_add(1, Ordering::Relaxed);
        }
        if media_ids.len() > 1 {
            counters.album_tracks.fetch_add(1, Ordering::Relaxed);
        }
    }
    // One in ten delivered single-media sales is refunded afterwards: the postings reversed,
    // points credited back, one royalty adjustment entry.
    if i % 10 == 3 && media_ids.len() == 1 && !copies.is_empty() {
        let request = pb::RefundRequest {
            request_id: format!("{prefix}-refund"),
            voucher_id: sale.voucher_id.clone(),
            reason: "the customer asked".into(),
            chargeback: false,
        };
        let refunded = merchant.refund(request).await?.into_inner();
        if refunded.status != "Refunded" {
            bail!("a delivered sale was refunded as {}, not Refunded", refunded.status);
        }
        counters.refunded.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
