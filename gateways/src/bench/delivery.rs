//! Case 9: delivery throughput. Players fetch one large media through one delivery node in
//! this process, next to the same run's raw baselines for the same bytes.
//!
//! The engine side is the whole delivery as `vouchsafe player` does it: connect to the node,
//! Challenge, Redeem (the engine re-wraps the rendition key), Download the format-3
//! container in the node's chunks, verify the publisher signature and decrypt every chunk
//! (AES-256-GCM), check the content against the signed transaction record, write the
//! delivered copy, Confirm. The engine runs on the embedded log (the log is not what is
//! measured). Four phases, each on vouchers bought beforehand (buying is not timed):
//! one player on a cold node cache (the node fetches the container from the engine first),
//! one player on the warm cache, [`DELIVERY_PLAYERS`] players at once on the warm cache, and
//! as many at once on a second media the node has not cached.
//!
//! CPU: node, players and engine share this process, so each runs on a tokio runtime of its
//! own: the node on threads named [`NODE_THREAD`] (workers and blocking pool), the players
//! on [`PLAYER_THREAD`]; their CPU is the sum over threads of that name of each thread's
//! schedstat in /proc/self/task (blocking threads are kept alive for the whole case, so none
//! leaves with its time). The engine, the merchant and the bench itself are "the rest" of the
//! process (its other live threads).
//!
//! The raw side (`raw.rs`): the same number of bytes, in AES-256-GCM pieces of the same
//! size, copied over loopback TCP to as many readers at once; decrypted with the `aes-gcm`
//! crate the player uses; and both at once (each reader decrypts as it reads), which is
//! `raw_delivery_mib_s`, the denominator of `delivery_ratio`.

use super::*;
use crate::common::client::{self, ContainerUpload, PreviewUpload, RenditionUpload};
use crate::common::cred::Credential;
use crate::node::NodeArgs;
use crate::player::{self, Passport, Purchase};
use crate::server::{self, EngineConfig};
use engine::ids::ConsumerId;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes of the delivered media's content in a full run.
pub const DELIVERY_MEDIA_BYTES: usize = 32 * 1024 * 1024;
/// The same with `--quick`.
pub const DELIVERY_MEDIA_BYTES_QUICK: usize = 16 * 1024 * 1024;
/// The same for a tiny run (`--vouchers`, the tests).
pub const DELIVERY_MEDIA_BYTES_TINY: usize = 2 * 1024 * 1024;
/// Players fetching at once in a full run.
pub const DELIVERY_PLAYERS: usize = 8;
/// The same with `--quick`.
pub const DELIVERY_PLAYERS_QUICK: usize = 4;
/// The same for a tiny run.
pub const DELIVERY_PLAYERS_TINY: usize = 2;
/// Name of the node's runtime threads (at most 15 bytes: Linux's thread name).
pub const NODE_THREAD: &str = "vs-bench-node";
/// Name of the players' runtime threads.
pub const PLAYER_THREAD: &str = "vs-bench-player";
/// How long an idle blocking thread of the node's and players' runtimes lives: longer than
/// the case, so no thread leaves with its CPU time before it is read.
const THREAD_KEEP_ALIVE_MS: u64 = 60 * 60 * 1000;
/// The node's media cache: both media fit.
const DELIVERY_CACHE_MEDIA: u64 = 4;

/// One timed phase: `players` fetching the media at once.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DeliveryPhase {
    pub players: usize,
    /// Whether the node's cache held the container when the phase began.
    pub warm: bool,
    pub seconds: f64,
    /// Container bytes delivered (decrypted, verified, written, confirmed) per second, every
    /// player together, in MiB/s.
    pub mib_s: f64,
    /// From a player's start (connecting to the node) to the container's first bytes, in ms.
    pub ttfb_p50_ms: f64,
    pub ttfb_max_ms: f64,
    /// CPU per MiB delivered, in ms: the node's threads, the players' threads, and the rest
    /// of the process (the engine's Redeem, FetchMedia and CompleteDelivery, the bench).
    pub node_cpu_ms_per_mib: Option<f64>,
    pub player_cpu_ms_per_mib: Option<f64>,
    pub rest_cpu_ms_per_mib: Option<f64>,
}

/// Case 9 in full.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DeliveryCase {
    pub content_bytes: usize,
    pub container_bytes: usize,
    pub chunk_bytes: u32,
    pub players: usize,
    pub cold_single: DeliveryPhase,
    pub warm_single: DeliveryPhase,
    pub warm_many: DeliveryPhase,
    pub cold_many: DeliveryPhase,
    /// Loopback TCP copy of the bytes to `players` readers at once.
    pub raw_tcp_copy: RawDelivery,
    /// AES-256-GCM decryption of `players` copies on every core.
    pub raw_aes_gcm: RawDelivery,
    /// Both at once: `players` readers, each decrypting as it reads.
    pub raw_together: RawDelivery,
    /// Both at once with one reader.
    pub raw_together_single: RawDelivery,
    /// `raw_together` with each reader also writing its decrypted copy to a file, as a
    /// player does (informational: the target compares with `raw_together`).
    pub raw_together_written: RawDelivery,
    /// How the CPU figures were measured.
    pub cpu_measured: String,
}

/// The case's size from the flags: (content bytes, players).
pub fn delivery_size(args: &BenchArgs) -> (usize, usize) {
    match (args.vouchers, args.quick) {
        (Some(_), _) => (DELIVERY_MEDIA_BYTES_TINY, DELIVERY_PLAYERS_TINY),
        (None, true) => (DELIVERY_MEDIA_BYTES_QUICK, DELIVERY_PLAYERS_QUICK),
        (None, false) => (DELIVERY_MEDIA_BYTES, DELIVERY_PLAYERS),
    }
}

/// Runs case 9 with the keys in `keys_dir`, its files under `scratch`.
pub(super) async fn delivery_case(keys_dir: &Path, scratch: &Path, content_bytes: usize, players: usize) -> anyhow::Result<DeliveryCase> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let dir = scratch.join("delivery");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.join("log")).context("cannot open the delivery case's embedded log")?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1 for the delivery case's engine")?;
    let engine = server::start(EngineConfig::new(dir.clone(), keys_dir.to_path_buf()), log, listener).await?;
    let run_id = run_id();
    let channel = client::connect(&engine.url(), None).await?;
    let operator = Credential::load(&keys_dir.join(crate::common::keys::OPERATOR_CRED))?;
    let mut catalog = client::catalog(channel.clone(), operator.clone());
    let merchant_credential = client::credential_of(
        catalog
            .register_merchant(pb::RegisterMerchantRequest { request_id: request(&run_id, "merchant", 0).0, name: "Bench record shop".into() })
            .await
            .context("the delivery case's RegisterMerchant was refused")?
            .into_inner(),
    )?;
    let mut merchant = client::merchant(channel.clone(), merchant_credential);
    // Every phase's vouchers are issued to the node before the first fetch.
    let vouchers = 2 + 2 * players;
    let slots_max = u32::try_from(vouchers).context("too many players")?;
    let node_credential = client::credential_of(
        catalog
            .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: request(&run_id, "node", 0).0, region: "eu".into(), slots_max })
            .await
            .context("the delivery case's RegisterNodeCredential was refused")?
            .into_inner(),
    )?;
    // Any 2048-bit key costs the same: the engine's own stands in for the publisher's and
    // the player's (no key generation).
    let engine_private = crate::common::keys::load_engine_private(keys_dir)?;
    let engine_public = engine_private.public();
    let consumer_id = ConsumerId::new(format!("{run_id}-listener"));
    let certificate = catalog
        .certify_consumer(pb::CertifyConsumerRequest {
            request_id: request(&run_id, "certify", 0).0,
            consumer_id: consumer_id.as_str().to_string(),
            public_key_der: engine_public.to_der()?,
            validity_ms: CERT_VALIDITY_MS,
        })
        .await
        .context("the delivery case's CertifyConsumer was refused")?
        .into_inner();
    let passport = Arc::new(Passport { consumer_id, private: engine_private.clone(), certificate });
    let mut media = Vec::with_capacity(2);
    for index in 0..2 {
        let upload = ContainerUpload {
            title: format!("Bench album {index}"),
            artist: "The Baselines".into(),
            authors: vec!["The Baselines".into()],
            length_ms: 600_000,
            price_minor: 999,
            currency: "EUR".into(),
            terms: client::standard_terms("label-1"),
            renditions: vec![RenditionUpload { name: "high".into(), bitrate_kbps: 1411, content: bench_content(content_bytes, index as u64) }],
            components: Vec::new(),
            preview: Some(PreviewUpload {
                start_ms: 0,
                duration_ms: 30_000,
                fade_in_ms: 0,
                fade_out_ms: 0,
                media_type: "audio/flac".into(),
                clip: vec![0u8; 1024],
            }),
            for_sale: true,
            image_descriptor: "cover.jpg".into(),
            chunk_bytes: engine::media::CHUNK_BYTES_DEFAULT,
        };
        let publish_id = request(&run_id, "publish", index).0;
        media.push(
            client::publish_container(&mut catalog, &operator.id, &publish_id, &engine_public, &engine_private, upload)
                .await
                .context("the delivery case's PublishMedia failed")?,
        );
    }
    let container_bytes = media[0].container_bytes;

    // The raw side first, while the engine idles.
    let raw_content_bytes = container_bytes;
    let raw_copies = dir.join("raw-copies");
    std::fs::create_dir_all(&raw_copies).with_context(|| format!("cannot create {}", raw_copies.display()))?;
    let raw = tokio::task::spawn_blocking(move || -> anyhow::Result<[RawDelivery; 5]> {
        let raw_media = RawMedia::new(raw_content_bytes, engine::media::CHUNK_BYTES_DEFAULT as usize)?;
        // Untimed warm-up: the first connections and page faults.
        raw_tcp_delivery(&raw_media, 1, RawReader::Decrypt)?;
        Ok([
            raw_tcp_delivery(&raw_media, players, RawReader::Count)?,
            raw_aes_gcm_delivery(&raw_media, players, cpus)?,
            raw_tcp_delivery(&raw_media, players, RawReader::Decrypt)?,
            raw_tcp_delivery(&raw_media, 1, RawReader::Decrypt)?,
            raw_tcp_delivery(&raw_media, players, RawReader::DecryptAndWrite(&raw_copies))?,
        ])
    })
    .await
    .context("the raw delivery baselines panicked")??;
    let [raw_tcp_copy, raw_aes_gcm, raw_together, raw_together_single, raw_together_written] = raw;
    eprintln!(
        "    raw, {container_bytes} bytes: loopback TCP copy to {players} readers {:.0} MiB/s; AES-256-GCM decryption of {players} copies on {cpus} threads {:.0} MiB/s; both together {:.0} MiB/s ({:.0} MiB/s with one reader; {:.0} MiB/s with each copy written to a file)",
        raw_tcp_copy.mib_s, raw_aes_gcm.mib_s, raw_together.mib_s, raw_together_single.mib_s, raw_together_written.mib_s
    );

    let node_runtime = runtime(NODE_THREAD, cpus)?;
    let player_runtime = runtime(PLAYER_THREAD, cpus)?;
    let node_args = NodeArgs {
        connect: engine.url(),
        cred: node_credential,
        listen: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
        slots_max,
        region: "eu".into(),
        data_dir: dir.join("node"),
        cache_bytes_max: DELIVERY_CACHE_MEDIA * container_bytes as u64,
        engine_tls: Default::default(),
        player_tls: None,
    };
    let node = node_runtime.spawn(crate::node::start(node_args)).await.context("the delivery node's start panicked")??;

    let mut sales = Vec::with_capacity(vouchers);
    for index in 0..vouchers {
        // The last `players` vouchers are for the second media, whose container the node
        // has not cached.
        let media_id = if index < vouchers - players { &media[0].media_id } else { &media[1].media_id };
        let sale = client::buy(&mut merchant, &request(&run_id, "sale", index).0, std::slice::from_ref(media_id), None)
            .await
            .context("the delivery case's purchase was refused")?;
        anyhow::ensure!(sale.node_id == node.node_id(), "the engine issued a voucher to node {} instead of the bench's", sale.node_id);
        sales.push(Purchase {
            node_endpoint: sale.node_endpoint.clone(),
            node_id: sale.node_id.clone(),
            grant: sale.grant(),
            receipt: sale.receipt.clone(),
            rental_until_ms: 0,
        });
    }
    let mut sales = sales.into_iter();
    let out_dir = dir.join("copies");
    let mut phase = |count: usize, warm: bool| {
        let purchases: Vec<Purchase> = sales.by_ref().take(count).collect();
        fetch_phase(player_runtime.handle().clone(), purchases, passport.clone(), out_dir.clone(), container_bytes, warm)
    };
    let cold_single = phase(1, false).await?;
    report_phase("one player, cold node cache", &cold_single);
    let warm_single = phase(1, true).await?;
    report_phase("one player, warm cache", &warm_single);
    let warm_many = phase(players, true).await?;
    report_phase(&format!("{players} players at once, warm cache"), &warm_many);
    let cold_many = phase(players, false).await?;
    report_phase(&format!("{players} players at once, cold cache (another media)"), &cold_many);

    node_runtime.spawn(node.shutdown()).await.context("the delivery node's shutdown panicked")?;
    node_runtime.shutdown_background();
    player_runtime.shutdown_background();
    engine.shutdown().await?;
    Ok(DeliveryCase {
        content_bytes,
        container_bytes,
        chunk_bytes: engine::media::CHUNK_BYTES_DEFAULT,
        players,
        cold_single,
        warm_single,
        warm_many,
        cold_many,
        raw_tcp_copy,
        raw_aes_gcm,
        raw_together,
        raw_together_single,
        raw_together_written,
        cpu_measured: format!(
            "CPU time (schedstat, ns) of the threads named {NODE_THREAD} (the node's runtime: workers and blocking pool) and {PLAYER_THREAD} (the players'), from /proc/self/task; the rest: the process's other live threads (the engine, the bench)"
        ),
    })
}

fn report_phase(what: &str, phase: &DeliveryPhase) {
    let cpu = |value: Option<f64>| value.map_or_else(|| "?".to_string(), |v| format!("{v:.1}"));
    eprintln!(
        "    {what}: {:.0} MiB/s, first byte after {:.1} ms (p50; max {:.1}), CPU ms per MiB: node {}, players {}, engine and the rest {}",
        phase.mib_s,
        phase.ttfb_p50_ms,
        phase.ttfb_max_ms,
        cpu(phase.node_cpu_ms_per_mib),
        cpu(phase.player_cpu_ms_per_mib),
        cpu(phase.rest_cpu_ms_per_mib)
    );
}

/// A multi-threaded runtime on `threads` workers whose threads (blocking pool too) carry
/// `name` and stay alive for the case.
fn runtime(name: &str, threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .thread_keep_alive(Duration::from_millis(THREAD_KEEP_ALIVE_MS))
        .enable_all()
        .build()
        .with_context(|| format!("cannot start the {name} runtime"))
}

/// `players` fetching their purchase at once on the players' runtime.
async fn fetch_phase(
    players: tokio::runtime::Handle,
    purchases: Vec<Purchase>,
    passport: Arc<Passport>,
    out_dir: PathBuf,
    container_bytes: usize,
    warm: bool,
) -> anyhow::Result<DeliveryPhase> {
    let count = purchases.len();
    let readings = || [Threads::Named(NODE_THREAD), Threads::Named(PLAYER_THREAD), Threads::Rest].map(threads_cpu_ns);
    let before = readings();
    let started = Instant::now();
    let fetches: Vec<_> = purchases
        .into_iter()
        .enumerate()
        .map(|(index, purchase)| {
            let (passport, out_dir) = (passport.clone(), out_dir.clone());
            players.spawn(async move {
                let begun = Instant::now();
                let mut node = player::connect_node(&purchase.node_endpoint).await?;
                let copies = player::redeem_and_download_on(&mut node, &purchase, &passport, &format!("fetch-{index}"), &out_dir).await?;
                let copy = copies.first().context("the delivery gave no copy")?;
                anyhow::ensure!(copies.len() == 1 && copy.decrypt_ok, "the delivered media did not decrypt and verify");
                let first_byte_at = copy.first_byte_at.context("the container arrived without a byte")?;
                Ok::<_, anyhow::Error>(first_byte_at.duration_since(begun))
            })
        })
        .collect();
    let mut ttfb_ms = Vec::with_capacity(count);
    for fetch in fetches {
        ttfb_ms.push(fetch.await.context("a player task panicked")??.as_secs_f64() * 1000.0);
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let mib = (count * container_bytes) as f64 / raw::MIB;
    let after = readings();
    let per_mib = |index: usize| Some(after[index]?.checked_sub(before[index]?)? as f64 / 1e6 / mib);
    let (node_cpu_ms_per_mib, player_cpu_ms_per_mib, rest_cpu_ms_per_mib) = (per_mib(0), per_mib(1), per_mib(2));
    tokio::fs::remove_dir_all(&out_dir).await.with_context(|| format!("cannot remove {}", out_dir.display()))?;
    ttfb_ms.sort_by(f64::total_cmp);
    Ok(DeliveryPhase {
        players: count,
        warm,
        seconds,
        mib_s: mib / seconds,
        ttfb_p50_ms: ttfb_ms[ttfb_ms.len() / 2],
        ttfb_max_ms: ttfb_ms.last().copied().unwrap_or(f64::NAN),
        node_cpu_ms_per_mib,
        player_cpu_ms_per_mib,
        rest_cpu_ms_per_mib,
    })
}

/// Which of this process's threads a CPU reading sums.
#[derive(Clone, Copy)]
enum Threads {
    Named(&'static str),
    /// Every thread but the node's and the players'.
    Rest,
}

/// CPU time (user and system) of this process's live threads chosen by `threads`, in
/// nanoseconds, from each thread's schedstat (nanosecond resolution, unlike the 10 ms clock
/// ticks of its stat).
fn threads_cpu_ns(threads: Threads) -> Option<u64> {
    let mut ns = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        // A thread may end between the listing and the read: it is skipped.
        let Ok(task) = task else {
            continue;
        };
        let (Ok(comm), Ok(schedstat)) = (std::fs::read_to_string(task.path().join("comm")), std::fs::read_to_string(task.path().join("schedstat"))) else {
            continue;
        };
        let comm = comm.trim_end();
        let chosen = match threads {
            Threads::Named(name) => comm == name,
            Threads::Rest => comm != NODE_THREAD && comm != PLAYER_THREAD,
        };
        if chosen {
            ns += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(ns)
}

/// `bytes` of media content that does not compress (xorshift64*, seeded).
fn bench_content(bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut content = Vec::with_capacity(bytes + 8);
    while content.len() < bytes {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        content.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    content.truncate(bytes);
    content
}
