//! `vouchsafe demo`: the whole market end to end in one process.
//!
//! A publisher encrypts media under fresh keys and wraps them for the engine; the operator
//! registers merchants and delivery nodes and certifies players (RSA passports); merchants
//! sell vouchers concurrently (some paid in points, one an album); some reservations
//! expire and are swept, some are voided; nodes check access tokens locally, challenge the
//! player, which proves it holds the receipt; the engine re-wraps each media key for the
//! player, which decrypts and verifies the content. Previews run alongside.
//!
//! It drives `engine::app::Market` in process, on the embedded log or JetStream
//! (`--nats-url`), keeps the royalty log live, seals it (writing the witness file), and
//! ends with the auditor's replay of the whole stream, pinned to the newest seal. The gRPC
//! edge joins it with its issue.

use anyhow::{bail, Context};
use engine::app::{EngineKeys, Market, PublishInput};
use engine::clock::{Clock, SystemClock};
use engine::crypto::{self, RsaPrivate, SecretKey};
use engine::domain::event::{Payment, PreviewClip, Rendition, RoyaltyTerms};
use engine::ids::*;
use engine::log::EventLog;
use projections::{Live, Projections};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Sales in flight at once.
const CONCURRENT_SALES_MAX: usize = 64;
/// Bytes of content per published media (random, so each run differs).
const MEDIA_BYTES: usize = 48 * 1024;
const ACCESS_TTL_MS: u64 = 10 * 60 * 1000;
const RESERVATION_TTL_MS: u64 = 15 * 60 * 1000;
/// The TTL of the reservations the demo lets expire.
const SHORT_TTL_MS: u64 = 1;

pub struct DemoArgs {
    pub backend: crate::backend::BackendArgs,
    pub keys_dir: PathBuf,
    pub vouchers: usize,
}

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
    pub royalty_entries: u64,
    pub seals: u64,
    pub stream_events: u64,
    pub state_digest: String,
    pub audit_ok: bool,
    pub elapsed_ms: u64,
    pub points_paid: u64,
    pub album_tracks_delivered: u64,
}

/// What the node serves: the encrypted content of each media.
struct Published {
    media_id: MediaId,
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
    content_hash: [u8; 32],
}

struct Player {
    consumer: ConsumerId,
    cert_serial: CertSerial,
    private: RsaPrivate,
}

#[derive(Default)]
struct Counters {
    purchases: AtomicU64,
    delivered: AtomicU64,
    decrypt_ok: AtomicU64,
    voided: AtomicU64,
    points_paid: AtomicU64,
    album_tracks: AtomicU64,
}

fn request(run: &str, what: &str, i: usize) -> RequestId {
    RequestId(format!("{run}-{what}-{i}"))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let data_dir = args.backend.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    if crate::keys::is_empty(&args.keys_dir) {
        eprintln!("creating keys in {}", args.keys_dir.display());
        crate::keys::init(&args.keys_dir)?;
    }
    crate::keys::check_dir(&args.keys_dir)?;
    let engine_private = crate::keys::load_engine_private(&args.keys_dir)?;
    let operator = crate::keys::load_operator_id(&args.keys_dir)?;
    let keys = Arc::new(EngineKeys::new(engine_private)?);
    let log: Arc<dyn EventLog> = args.backend.open().await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let royalty_master = crate::keys::load_royalty_master(&args.keys_dir)?;
    let live = Live::with_projections(Projections::with_royalty_keys(&royalty_master, Some(keys.public.clone())));
    let runner = {
        let live = live.clone();
        let log = Arc::clone(&log);
        tokio::spawn(async move { live.run(log).await })
    };
    let market = Arc::new(Market::new(Arc::clone(&log), Arc::clone(&clock), Arc::clone(&keys), Arc::new(live.clone())));
    // Each run adds a new market session to the same stream, so request ids carry a run id.
    let run_id = format!("r{}", clock.now().0);

    // Operator: merchants, nodes, players.
    let mut merchants = Vec::new();
    for i in 0..3 {
        let credential = market.register_merchant(&operator, &request(&run_id, "merchant", i), &format!("Shop {i}")).await?;
        merchants.push(MerchantId(credential.id));
    }
    let mut nodes = Vec::new();
    for (i, region) in ["eu", "us"].iter().enumerate() {
        let (credential, access_key) = market.register_node(&operator, &request(&run_id, "node", i), region, 256).await?;
        nodes.push((NodeId(credential.id), access_key));
    }
    eprintln!("registered {} merchants and {} delivery nodes", merchants.len(), nodes.len());

    let player_count = 6;
    let mut players = Vec::new();
    for i in 0..player_count {
        let private = tokio::task::spawn_blocking(|| RsaPrivate::generate(2048)).await??;
        let consumer = ConsumerId(format!("{run_id}-player{i}"));
        let cert = market
            .certify_consumer(&operator, &request(&run_id, "certify", i), &consumer, &private.public().to_der()?, 30 * 24 * 3600 * 1000)
            .await?;
        if !engine::app::verify_certificate(&keys.public, &consumer, &cert) {
            bail!("the engine's certificate for {consumer} does not verify");
        }
        players.push(Player { consumer, cert_serial: cert.serial, private });
    }
    let points_account = AccountId(format!("{run_id}-points"));
    market.top_up(&operator, &request(&run_id, "topup", 0), &points_account, 1_000_000).await?;
    eprintln!("certified {} players; credited a points account", players.len());

    // Publisher: encrypt media under fresh keys, wrap each key for the engine.
    let mut catalog = Vec::new();
    let titles = [("Blue Vouchers", "The Receipts"), ("MAC Chain", "Schneier & Kelsey"), ("Track One", "Album Artist"), ("Track Two", "Album Artist"), ("Track Three", "Album Artist")];
    for (i, (title, artist)) in titles.iter().enumerate() {
        let mut content = vec![0u8; MEDIA_BYTES];
        for (j, byte) in content.iter_mut().enumerate() {
            *byte = (i * 31 + j * 7) as u8;
        }
        content[..32].copy_from_slice(&crypto::random_bytes::<32>());
        let media_key = SecretKey::random();
        let nonce = crypto::random_bytes::<12>();
        let ciphertext = crypto::aead_seal(&media_key, &nonce, b"vouchsafe media v1", &content);
        let content_hash = crypto::hash(&content);
        let wrapped_media_key = crypto::wrap_key(&keys.public, &media_key)?;
        let input = PublishInput {
            title: title.to_string(),
            artist: artist.to_string(),
            authors: vec![artist.to_string()],
            length_ms: 180_000,
            price_minor: 99 + 100 * i as u64,
            currency: "EUR".into(),
            terms: RoyaltyTerms { retailer_bps: 3000, distributor_bps: 2000, owner_bps: 5000, distributor: "dist-1".into(), owner: format!("label-{}", i % 2), rights_agent: "agent-1".into() },
            renditions: vec![Rendition { name: "high".into(), bitrate_kbps: 256, content_hash, size_bytes: MEDIA_BYTES as u64 }],
            preview: PreviewClip { start_ms: 30_000, duration_ms: 30_000 },
            image_descriptor: format!("cover-{i}.jpg"),
            for_sale: true,
            wrapped_media_key,
        };
        let media_id = market.publish_media("publisher-1", &request(&run_id, "publish", i), input).await?;
        catalog.push(Published { media_id, nonce, ciphertext, content_hash });
    }
    eprintln!("published {} media (encrypted, keys wrapped for the engine)", catalog.len());
    let catalog = Arc::new(catalog);
    let players = Arc::new(players);
    let counters = Arc::new(Counters::default());
    let players_dir = data_dir.join("players");

    // Merchants sell concurrently.
    let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SALES_MAX));
    let mut sales = tokio::task::JoinSet::new();
    let mut expiring = Vec::new();
    for i in 0..args.vouchers {
        let merchant = merchants[i % merchants.len()].clone();
        if i % 10 == 9 {
            // Let this reservation expire: reserve with a 1 ms TTL; the sweeper voids it.
            let answer = market.reserve(&merchant, &request(&run_id, "sale", i), &[catalog[0].media_id.clone()], "high", SHORT_TTL_MS, Payment::Merchant { payment_ref: format!("card-{i}") }).await?;
            counters.purchases.fetch_add(1, Ordering::Relaxed);
            expiring.push(answer.voucher_id);
            continue;
        }
        let permit = Arc::clone(&semaphore).acquire_owned().await.context("sale semaphore closed")?;
        let (market, catalog, players, counters, players_dir, run_id) =
            (Arc::clone(&market), Arc::clone(&catalog), Arc::clone(&players), Arc::clone(&counters), players_dir.clone(), run_id.clone());
        sales.spawn(async move {
            let _permit = permit;
            sell_one(i, &run_id, &market, &merchant, &catalog, &players, &counters, &players_dir).await
        });
    }
    while let Some(joined) = sales.join_next().await {
        joined.context("a sale task panicked")??;
    }

    // The engine seals the royalty log: a signed report over the entries so far, written
    // to the witness file for auditors to pin.
    live.caught_up(log.last_seq().await?).await;
    if let Some(seal) = live.seal(&market, 1).await? {
        crate::audit::witness(&data_dir, &seal)?;
    }

    // Previews: a few, on whichever node the allocator picks.
    let mut previews = 0;
    for i in 0..(args.vouchers / 20).max(2) {
        let merchant = &merchants[i % merchants.len()];
        let (preview, node) = market.preview(merchant, &request(&run_id, "preview", i), &catalog[i % catalog.len()].media_id, None).await?;
        market.end_preview(&node, &request(&run_id, "preview-end", i), &preview, 30_000).await?;
        previews += 1;
    }

    // The sweeper: void every reservation past due (decided at the engine clock's now).
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let last = log.last_seq().await?;
    live.caught_up(last).await;
    let (expired, _holds_settled) = live.sweep(&market, usize::MAX).await?;
    if expired < expiring.len() {
        bail!("the sweeper voided {expired} of the {} reservations left to expire", expiring.len());
    }

    // This session's nodes go out of service, so a later run on the same stream allocates
    // its own (a drained node finishes its work but gets nothing new).
    for (i, (node, _)) in nodes.iter().enumerate() {
        market.drain_node(&operator, &request(&run_id, "drain", i), node).await?;
    }

    // Seal what the previews and the last deliveries added, and let the projections see it.
    live.caught_up(log.last_seq().await?).await;
    let mut pin = None;
    if let Some(seal) = live.seal(&market, 1).await? {
        crate::audit::witness(&data_dir, &seal)?;
        pin = Some(engine::domain::report::Report::seal_hash(&seal));
    }
    let last = log.last_seq().await?;
    live.caught_up(last).await;
    runner.abort();
    let (stream_events, digest, royalty_entries, seals, seal_faults) =
        live.read(|p| (p.last_seq.0, p.digest(), p.royalty.entries.len() as u64, p.royalty.seals.len() as u64, p.royalty.seal_faults.len()));
    if seal_faults > 0 {
        bail!("{seal_faults} rights-report seals in this stream do not match the royalty chain (were other keys used with this data dir?)");
    }
    // The auditor's view: replay the whole stream with the public key and the master key
    // only, pinned to the newest seal; it must find nothing and reach the same digest.
    let audit = projections::audit::replay(log.as_ref(), &royalty_master, &keys.public, pin, |_| {}).await?;
    if !audit.ok() {
        eprintln!("{}", crate::audit::describe(&audit));
    }
    let audit_ok = audit.ok() && audit.state_digest == hex::encode(digest);
    let summary = Summary {
        backend: args.backend.name().into(),
        merchants: merchants.len(),
        nodes: nodes.len(),
        media: catalog.len(),
        purchases: counters.purchases.load(Ordering::Relaxed),
        delivered: counters.delivered.load(Ordering::Relaxed),
        decrypt_ok: counters.decrypt_ok.load(Ordering::Relaxed),
        previews,
        expired: expired as u64,
        voided: counters.voided.load(Ordering::Relaxed),
        royalty_entries,
        seals,
        stream_events,
        state_digest: hex::encode(digest),
        audit_ok,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        points_paid: counters.points_paid.load(Ordering::Relaxed),
        album_tracks_delivered: counters.album_tracks.load(Ordering::Relaxed),
    };
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn sell_one(
    i: usize,
    run_id: &str,
    market: &Market,
    merchant: &MerchantId,
    catalog: &[Published],
    players: &[Player],
    counters: &Counters,
    players_dir: &Path,
) -> anyhow::Result<()> {
    let request_id = request(run_id, "sale", i);
    // Every 25th sale is the album (three tracks on one voucher); every 7th is paid in points.
    let items: Vec<MediaId> = if i % 25 == 3 { catalog[2..5].iter().map(|m| m.media_id.clone()).collect() } else { vec![catalog[i % 2].media_id.clone()] };
    let payment = if i % 7 == 2 {
        counters.points_paid.fetch_add(1, Ordering::Relaxed);
        Payment::Points { account: AccountId(format!("{run_id}-points")) }
    } else {
        Payment::Merchant { payment_ref: format!("card-{i}") }
    };
    let reserved = market.reserve(merchant, &request_id, &items, "high", RESERVATION_TTL_MS, payment).await?;
    counters.purchases.fetch_add(1, Ordering::Relaxed);
    if i % 10 == 8 {
        market.void(merchant, &request(run_id, "void", i), &reserved.voucher_id).await?;
        counters.voided.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let authorized = market.authorize(merchant, &request(run_id, "authorize", i), &reserved.voucher_id).await?;
    // A retried Authorize with the same request id returns the first answer.
    let retried = market.authorize(merchant, &request(run_id, "authorize", i), &reserved.voucher_id).await?;
    if !authorized.receipt.ct_eq(&retried.receipt) {
        bail!("a retried Authorize returned a different receipt");
    }
    let issued = market.issue(merchant, &request(run_id, "issue", i), &reserved.voucher_id, None, ACCESS_TTL_MS).await?;

    // The node checks the player's access token locally, without calling the engine, with
    // the access key it was given at registration (the demo plays every node, including
    // nodes an earlier run registered on the same stream).
    let node_key = market.node_access_key(&issued.node_id);
    let media_refs: Vec<&str> = issued.media_ids.iter().map(|m| m.0.as_str()).collect();
    crypto::check_access_token(&node_key, &issued.node_id.0, &issued.voucher_id.0, &media_refs, issued.access_expires_at.0, market.now().0, &issued.access_token)
        .map_err(|denied| anyhow::anyhow!("the node refused a fresh access token: {denied:?}"))?;

    // The node challenges the player, which proves it holds the receipt.
    let player = &players[i % players.len()];
    let challenge = crypto::random_bytes::<32>();
    let proof = crypto::receipt_proof(&authorized.receipt, &issued.voucher_id.0, &issued.node_id.0, &challenge);
    let redeemed = market
        .redeem(&issued.node_id, &request(run_id, "redeem", i), &issued.voucher_id, &player.consumer, &player.cert_serial, &challenge, &proof)
        .await?;

    for (media_id, wrapped) in &redeemed.keys {
        let published = catalog.iter().find(|m| &m.media_id == media_id).context("redeemed an unknown media")?;
        // The node streams the ciphertext; the player unwraps the key and decrypts.
        let media_key = crypto::unwrap_key(&player.private, wrapped)?;
        let plaintext = crypto::aead_open(&media_key, &published.nonce, b"vouchsafe media v1", &published.ciphertext)?;
        let decrypted_ok = crypto::hash(&plaintext) == published.content_hash;
        let dir = players_dir.join(&player.consumer.0);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{}-{}.media", issued.voucher_id, media_id)), &plaintext)?;
        market
            .complete_delivery(&issued.node_id, &request(run_id, &format!("deliver-{media_id}"), i), &issued.voucher_id, media_id, crypto::hash(&published.ciphertext), published.ciphertext.len() as u64)
            .await?;
        if decrypted_ok {
            counters.decrypt_ok.fetch_add(1, Ordering::Relaxed);
        }
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        if items.len() > 1 {
            counters.album_tracks.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
