//! `vouchsafe bench`: the engine measured next to the raw substrate it sits on, on the same
//! machine, in the same run, with the same durability setting and comparable payloads
//! (issue 10; keys in CLI.md). Numbers drift between runs and machines; the ratios are
//! the point.
//!
//! Without `--nats-url` it starts its own nats-servers (`crate::natsd`): one with the
//! server's default sync for cases 1, 3, 4, 6 and 7, one with `sync_interval: always` for
//! case 5. Every case has a warm-up (untimed), a fixed amount of work, and a rate; latency
//! percentiles are per command.
//!
//! 1. Voucher workload: N vouchers, each Reserve → Authorize → IssueVoucher in sequence,
//!    [`VOUCHERS_IN_FLIGHT`] vouchers at a time. Raw: the same three JetStream publishes
//!    per voucher ([`RAW_PAYLOAD_BYTES`], `Nats-Msg-Id` and
//!    `Nats-Expected-Last-Subject-Sequence` from the previous ack), straight through
//!    async-nats, pipelined from one task as the substrate anchors were. Engine: the same
//!    through `engine::app::Market` on `JetStreamLog`, one task per voucher, with
//!    `projections::Live` following the log as the allocator.
//! 2. Purchases over gRPC: the engine's gRPC server (`server::start`) in this process on
//!    127.0.0.1, on a fresh stream of the same nats-server (same durability as case 1).
//!    [`PURCHASE_MERCHANTS`] merchants, each with its own tonic channel, buy vouchers of
//!    one published media, each Reserve → Authorize → IssueVoucher in sequence, after an
//!    untimed warm-up, in phases of N purchases: the maximum, a closed loop of
//!    [`VOUCHERS_IN_FLIGHT`] purchases at a time (`purchase_max_per_s`); then the latency,
//!    an open loop that starts purchases on a fixed schedule whatever the answers, each
//!    latency counted from its scheduled start, after an untimed warm-up at the same rate,
//!    at each of [`PURCHASE_LATENCY_LOAD_SHARES`]
//!    of that maximum in turn until one keeps p99 within [`PURCHASE_P99_TARGET_MS`]: that
//!    phase's achieved rate and latency are `purchase_per_s`, `purchase_p50_ms` and
//!    `purchase_p99_ms` (the rate the engine sustains with that p99, the figure a merchant
//!    can plan with); when none does, the last (lowest) one is reported and the target is
//!    missed. A closed loop at its maximum only measures its own queue (mean latency = in
//!    flight / rate), and an open loop at its own maximum queues without bound; it costs
//!    more CPU per purchase than the closed loop (fewer appends share a flush), so 0.8 of
//!    the closed loop's maximum can be past what the open loop sustains.
//!    The delivery nodes announce themselves and heartbeat over DeliveryService but run no
//!    agent (no feed subscription, no player service), so the case measures the purchase
//!    path alone. Latency is per purchase, from Reserve due to IssueVoucher answered; the
//!    same is kept per step. The raw baseline is case 1's: `purchase_ratio` = purchases/s
//!    × 3 over `raw_append_per_s` (commands/s over raw publishes/s).
//! 3. Replay: a raw pull consumer (AckNone, [`RAW_CONSUME_BATCH_EVENTS`] per batch) over
//!    the engine's stream after case 1 (one voucher in [`DELIVERED_ONE_IN`] redeemed and
//!    delivered, the royalty log sealed) vs `projections::audit::replay` of that stream
//!    (every projection, the royalty chain, the seal).
//! 4. Redeem: raw RSA-OAEP-SHA256 encryption of a 32-byte key with `rsa` 0.9 on one thread
//!    per core vs `Market::redeem` in process (DeliveryService over gRPC does not exist
//!    yet): proof and certificate checks, re-wrapping the media key for the consumer
//!    (RSA-OAEP on the blocking pool), the append.
//! 5. Durability: both sides of case 1 (N / [`DURABLE_SHARE`] vouchers) against a server
//!    with `sync_interval: always`, each side after a `sync` so neither pays for the
//!    writeback of earlier cases.
//! 6. Memory: the engine's resident set (VmRSS) after N and after [`MEMORY_MULTIPLIER`]×N
//!    vouchers, measured in a child process (`--rss-probe`) so nothing the other cases
//!    allocated counts; its live projections are kept in a projection store, and it seals
//!    the royalty log every `server::SEAL_INTERVAL_DEFAULT`, as `serve` does.
//! 7. Cost growth: the audit replay's time over case 3's stream and over case 6's
//!    ten-times-larger stream.
//!
//! The raw baselines call async-nats and rsa directly: they measure the crates, not our
//! wrappers (the one place outside `engine::crypto` that calls a crypto primitive, and
//! only to time it). What is not here: correctness checks beyond what a benchmark needs
//! (the audit replay must come back clean and count every event), and any tuning of the
//! engine.

use crate::client::{self, DeliveryClient, MerchantClient};
use crate::cred::Credential;
use crate::natsd::{Fsync, NatsServer};
use crate::server::{EngineConfig, RunningEngine};
use anyhow::{Context as _, ensure};
use async_nats::jetstream::{self, consumer, context::Context, stream};
use bytes::Bytes;
use engine::app::{EngineKeys, Market, PublishInput};
use engine::clock::{Clock, SystemClock};
use engine::crypto::{self, SecretKey};
use engine::domain::event::{Payment, PreviewClip, Rendition, RoyaltyTerms};
use engine::ids::{CertSerial, ConsumerId, MediaId, MerchantId, NodeId, RequestId, VoucherId};
use engine::log::EventLog;
use engine::log::jetstream::JetStreamLog;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use projections::Live;
use proto::v1 as pb;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Vouchers in the workload by default (issue 10).
pub const VOUCHERS_DEFAULT: usize = 20_000;
/// Vouchers in the workload with `--quick`.
pub const VOUCHERS_QUICK: usize = 3_000;
/// The most vouchers `--vouchers` accepts.
pub const VOUCHERS_MAX: usize = 1_000_000;
/// Vouchers whose three commands are under way at once, raw and engine alike.
pub const VOUCHERS_IN_FLIGHT: usize = 256;
/// The warm-up before each timed workload: this share of its vouchers (1 in …), untimed.
pub const WARMUP_SHARE: usize = 10;
/// The durable case runs N / this many vouchers (fsync per write is ~20× slower).
pub const DURABLE_SHARE: usize = 4;
/// One voucher in this many is redeemed and delivered, so the royalty chain has entries.
pub const DELIVERED_ONE_IN: usize = 5;
/// The memory and cost-growth cases compare N with this many times N vouchers.
pub const MEMORY_MULTIPLIER: usize = 10;
/// Payload of each raw publish, in bytes: about the engine's Reserved, Authorized and
/// VoucherIssued envelopes (≈ 300 bytes on average; each run measures and reports the
/// engine's mean next to this), as CLI.md asks for the same payload sizes. The substrate
/// anchors used 256.
pub const RAW_PAYLOAD_BYTES: usize = 300;
/// Messages per pull batch of the raw consumer (the substrate anchors' fastest setting).
pub const RAW_CONSUME_BATCH_EVENTS: usize = 10_000;
/// How long the raw RSA baseline encrypts on each thread, in milliseconds.
pub const RSA_MEASURE_MS: u64 = 2_000;
/// The same with `--quick`.
pub const RSA_MEASURE_QUICK_MS: u64 = 1_000;
/// Merchants selling in the engine workload (voucher i belongs to merchant i mod this).
pub const MERCHANTS: usize = 4;
/// The stream the engine cases write (its node feed is this name plus `_NODES`).
pub const BENCH_STREAM: &str = "VSBENCH";
/// The stream of the gRPC purchase case (its node feed is this name plus `_NODES`). It
/// claims `vs.>` too, so it never exists at the same time as [`BENCH_STREAM`].
pub const PURCHASE_STREAM: &str = "VSBENCH_GRPC";
/// The stream of the raw baseline, on its own subjects (two streams cannot share `vs.>`).
pub const RAW_STREAM: &str = "VSBENCH_RAW";
/// Merchants buying in the gRPC purchase case, each on its own tonic channel (one HTTP/2
/// connection; purchase i belongs to merchant i mod this).
pub const PURCHASE_MERCHANTS: usize = 16;
/// The shares of case 2's measured maximum purchase rate at which the latency is measured
/// (open loop, a fixed schedule), tried in this order until one keeps p99 within
/// [`PURCHASE_P99_TARGET_MS`]: latency at the maximum of a closed loop is queueing
/// (Little's law: in-flight over rate), not the engine's answer time. Never below half the
/// maximum: a p99 met only at a small share says little.
pub const PURCHASE_LATENCY_LOAD_SHARES: [f64; 3] = [0.8, 0.65, 0.5];
/// Purchases started on schedule and not yet answered, at most, in the open-loop phase;
/// beyond it a start waits (its latency still counts from its scheduled time).
const PURCHASES_OPEN_IN_FLIGHT_MAX: usize = 4_096;
/// The purchase p99 the issue asks for, in milliseconds, at the measured rate.
pub const PURCHASE_P99_TARGET_MS: f64 = 20.0;
/// Where the bench's delivery nodes say players reach them. No player connects in the
/// purchase case (nodes are allocated, never dialled), so nothing listens there.
const PURCHASE_NODE_ENDPOINT: &str = "http://127.0.0.1:1";
/// How long a reservation lives: far longer than any run, so none expires mid-workload.
const RESERVATION_TTL_MS: u64 = 60 * 60 * 1000;
const ACCESS_TTL_MS: u64 = 60 * 60 * 1000;
const CERT_VALIDITY_MS: u64 = 24 * 60 * 60 * 1000;
/// Bytes of the one published media's content (its ciphertext is never streamed here).
const MEDIA_BYTES: usize = 4 * 1024;
/// JetStream request timeout of the raw client (the substrate anchors' setting).
const RAW_REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Acks the raw client's context may await at once (the substrate anchors' setting).
const RAW_ACKS_IN_FLIGHT_MAX: usize = 20_000;
/// Messages the raw client's subscription may buffer (the substrate anchors' setting).
const RAW_SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// The duplicate window of the raw stream, as the engine's (120 s).
const RAW_DUPLICATE_WINDOW_MS: u64 = 120_000;
/// The largest message the raw stream accepts, as the engine's stream does.
const RAW_MESSAGE_BYTES_MAX: i32 = 260 * 1024;
/// A machine busier than this share of its CPU time just before the run gets a warning:
/// the rates share the cores with that other work.
const BUSY_CPU_SHARE: f64 = 0.2;
/// How long the machine's CPU use is sampled before the run, in milliseconds.
const BUSY_SAMPLE_MS: u64 = 500;
/// Clock ticks per second of the CPU times in /proc (USER_HZ, 100 on Linux).
const USER_HZ: u64 = 100;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    pub quick: bool,
    /// A server someone else runs; without it the bench starts its own.
    pub nats_url: Option<String>,
    /// Overrides N (for tiny end-to-end tests).
    pub vouchers: Option<usize>,
}

/// How much work each case does, from the flags.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Plan {
    pub vouchers: usize,
    pub warmup_vouchers: usize,
    pub durable_vouchers: usize,
    pub memory_vouchers_large: usize,
    pub rsa_measure_ms: u64,
}

impl Plan {
    pub fn new(args: &BenchArgs) -> Self {
        let vouchers = args.vouchers.unwrap_or(if args.quick { VOUCHERS_QUICK } else { VOUCHERS_DEFAULT }).clamp(1, VOUCHERS_MAX);
        Plan {
            vouchers,
            warmup_vouchers: (vouchers / WARMUP_SHARE).max(1),
            durable_vouchers: (vouchers / DURABLE_SHARE).max(1),
            memory_vouchers_large: vouchers * MEMORY_MULTIPLIER,
            rsa_measure_ms: if args.quick || args.vouchers.is_some() { RSA_MEASURE_QUICK_MS } else { RSA_MEASURE_MS },
        }
    }
}

/// A timed run of one side of a case.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Rate {
    /// Operations (commands, publishes, events, encryptions) in the timed part.
    pub operations: u64,
    pub seconds: f64,
    pub per_s: f64,
    /// Per-operation latency, where one was measured.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// CPU time per operation of this process (the client or engine, every thread) and of
    /// the nats-server, in microseconds, where known (not for a server we did not start).
    pub client_cpu_us: Option<f64>,
    pub server_cpu_us: Option<f64>,
}

impl Rate {
    fn new(operations: u64, elapsed: Duration, latencies_us: &mut [u32]) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        latencies_us.sort_unstable();
        let percentile = |q: f64| -> Option<f64> {
            let last = latencies_us.len().checked_sub(1)?;
            let index = ((last as f64) * q).round() as usize;
            Some(f64::from(latencies_us[index.min(last)]) / 1000.0)
        };
        Rate { operations, seconds, per_s: operations as f64 / seconds, p50_ms: percentile(0.5), p99_ms: percentile(0.99), client_cpu_us: None, server_cpu_us: None }
    }
}

/// Reads the CPU time this process and (when we started it) the nats-server used.
#[derive(Clone, Copy, Debug)]
struct CpuMeter {
    server_pid: Option<u32>,
}

/// CPU times at one moment, in clock ticks.
#[derive(Clone, Copy, Debug)]
struct CpuMark {
    meter: CpuMeter,
    client: Option<u64>,
    server: Option<u64>,
}

impl CpuMeter {
    fn mark(self) -> CpuMark {
        CpuMark { meter: self, client: process_cpu_ticks("self"), server: self.server_pid.and_then(|pid| process_cpu_ticks(&pid.to_string())) }
    }
}

impl CpuMark {
    /// `rate` with the CPU used since this mark, per operation.
    fn attach(self, rate: Rate) -> Rate {
        let now = self.meter.mark();
        let per_op = |before: Option<u64>, after: Option<u64>| -> Option<f64> {
            let ticks = after?.checked_sub(before?)?;
            Some(ticks as f64 * 1e6 / USER_HZ as f64 / rate.operations.max(1) as f64)
        };
        Rate { client_cpu_us: per_op(self.client, now.client), server_cpu_us: per_op(self.server, now.server), ..rate }
    }
}

/// User plus system CPU time of process `pid` ("self" for this one), every thread, in
/// clock ticks, from /proc/<pid>/stat.
fn process_cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first; utime
    // and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Asks the kernel to write every dirty page out (`sync`), so the fsyncs of the durable
/// case do not pay for writeback the earlier cases left behind. Best effort: without a
/// `sync` command the case runs anyway.
async fn flush_dirty_pages() {
    match tokio::process::Command::new("sync").status().await {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("warning: `sync` failed ({status}); durable numbers may include earlier writeback"),
        Err(error) => eprintln!("warning: cannot run `sync` ({error}); durable numbers may include earlier writeback"),
    }
}

/// The share of the machine's CPU time (every core) that was busy over `window`.
async fn cpu_busy_share(window: Duration) -> Option<f64> {
    fn busy_and_total() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        Some((total.saturating_sub(idle), total))
    }
    let (busy_before, total_before) = busy_and_total()?;
    tokio::time::sleep(window).await;
    let (busy_after, total_after) = busy_and_total()?;
    let total = total_after.checked_sub(total_before)?;
    (total > 0).then(|| busy_after.saturating_sub(busy_before) as f64 / total as f64)
}

/// Everything one run measured. Serialized as the `--json` line (CLI.md keys first).
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub raw_append_per_s: f64,
    pub engine_append_per_s: f64,
    pub ingest_ratio: f64,
    pub purchase_per_s: f64,
    pub purchase_p50_ms: f64,
    pub purchase_p99_ms: f64,
    /// Case 2's maximum: purchases/s of the closed loop, [`VOUCHERS_IN_FLIGHT`] in flight.
    pub purchase_max_per_s: f64,
    /// The share of `purchase_max_per_s` offered in the phase `purchase_per_s` comes from.
    pub purchase_load_share: f64,
    pub raw_consume_per_s: f64,
    pub replay_per_s: f64,
    pub replay_ratio: f64,
    pub raw_rsa_oaep_per_s: f64,
    pub redeem_per_s: f64,
    pub redeem_ratio: f64,
    pub durable_raw_append_per_s: Option<f64>,
    pub durable_engine_append_per_s: Option<f64>,
    pub rss_mb_small: f64,
    pub rss_mb_large: f64,
    pub nats_server_version: String,
    pub replay_ms_small: f64,
    pub replay_ms_large: f64,
    // Beyond CLI.md: what the numbers above were measured on.
    pub quick: bool,
    pub plan: Plan,
    pub cpus: usize,
    /// The share of the machine's CPU that other work used just before the run (it skews
    /// every rate).
    pub cpu_busy_before: Option<f64>,
    /// `own` (servers this run started) or `external` (`--nats-url`).
    pub servers: String,
    pub raw_append: Rate,
    pub engine_append: Rate,
    /// The maximum's purchases/s × 3 (its commands/s) over `raw_append_per_s`: case 2
    /// against case 1's raw baseline.
    pub purchase_ratio: f64,
    /// `purchase_p99_ms` <= [`PURCHASE_P99_TARGET_MS`].
    pub purchase_p99_target_met: bool,
    /// Case 2's maximum, in full: a closed loop of [`VOUCHERS_IN_FLIGHT`] purchases
    /// (`purchase_max_per_s`); operations are purchases (three RPCs each); CPU "client" is
    /// this process, which runs both the gRPC clients and the engine.
    pub purchase: Rate,
    /// Case 2's latency phases in the order run (module docs); the last one is reported as
    /// `purchase_per_s`, `purchase_p50_ms`, `purchase_p99_ms`.
    pub purchase_latency_phases: Vec<LatencyPhase>,
    pub purchase_merchants: usize,
    pub purchase_nodes: usize,
    pub raw_payload_bytes: usize,
    /// Mean payload of the engine's Reserved/Authorized/VoucherIssued events, in bytes.
    pub engine_event_bytes_mean: f64,
    pub raw_consume: Rate,
    pub raw_consume_method: String,
    pub replay: Rate,
    pub replay_events_small: u64,
    pub replay_events_large: u64,
    pub replay_royalty_entries: u64,
    pub raw_rsa_oaep: Rate,
    pub rsa_threads: usize,
    pub redeem: Rate,
    /// How redemptions were driven: in process, until DeliveryService runs over gRPC.
    pub redeem_path: String,
    /// Case 4 also measured in process (Market::redeem, no gRPC): what the wire costs.
    pub redeem_in_process: Rate,
    pub durable_raw_append: Option<Rate>,
    pub durable_engine_append: Option<Rate>,
    pub durable_ratio: Option<f64>,
    pub rss_vouchers_small: u64,
    pub rss_vouchers_large: u64,
    /// Replay time per event at 10×N over the same at N: 1.0 is linear.
    pub replay_cost_growth: f64,
    /// Every issue-10 target: met, missed, or null when not measured.
    pub targets: std::collections::BTreeMap<String, Option<bool>>,
    pub audit_ok: bool,
    pub elapsed_s: f64,
}

/// One open-loop phase of case 2.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LatencyPhase {
    /// The share of the maximum offered.
    pub load_share: f64,
    /// The rate offered, in purchases/s.
    pub offered_per_s: f64,
    /// Achieved rate and latency (each from its scheduled start), with CPU per purchase.
    pub rate: Rate,
    /// Per RPC.
    pub steps: PurchaseSteps,
}

/// Latency of each RPC of a purchase, in milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PurchaseSteps {
    pub reserve_p50_ms: f64,
    pub reserve_p99_ms: f64,
    pub authorize_p50_ms: f64,
    pub authorize_p99_ms: f64,
    pub issue_p50_ms: f64,
    pub issue_p99_ms: f64,
}

/// The child process's answer (`--rss-probe`), one JSON line on its stdout.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RssProbe {
    pub rss_mb_small: f64,
    pub rss_mb_large: f64,
    pub vouchers_small: u64,
    pub vouchers_large: u64,
    pub stream_events: u64,
}

// ---------------------------------------------------------------------------------------
// The run.

/// Runs every case and returns the report (the caller prints it).
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    let plan = Plan::new(&args);
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let cpu_busy_before = cpu_busy_share(Duration::from_millis(BUSY_SAMPLE_MS)).await;
    eprintln!("bench: {} vouchers ({} warm-up, {} durable, {} for memory), {VOUCHERS_IN_FLIGHT} in flight, {cpus} cpus", plan.vouchers, plan.warmup_vouchers, plan.durable_vouchers, plan.memory_vouchers_large);
    if let Some(busy) = cpu_busy_before.filter(|busy| *busy > BUSY_CPU_SHARE) {
        eprintln!("warning: other work kept {:.0}% of the CPU busy just before the run: every rate shares the cores with it", busy * 100.0);
    }

    // Servers: our own (default sync; sync_interval always for case 5), or the one given.
    let (own_default, url) = match &args.nats_url {
        Some(url) => (None, url.clone()),
        None => {
            let server = tokio::task::spawn_blocking(|| NatsServer::start_with(Fsync::ServerDefault)).await.context("starting nats-server panicked")??;
            let url = server.url();
            eprintln!("started nats-server {} (pid {}, default sync) on {url}", server.version_string(), server.pid());
            (Some(server), url)
        }
    };
    let scratch = tempfile::tempdir().context("cannot create a temporary directory for the bench's keys")?;
    let keys_dir = scratch.path().join("keys");
    let keys_for_init = keys_dir.clone();
    tokio::task::spawn_blocking(move || crate::keys::init(&keys_for_init)).await.context("key generation panicked")??;
    let keys = BenchKeys::load(&keys_dir)?;
    let raw = RawClient::connect(&url).await?;
    let nats_server_version = raw.server_version.clone();
    let meter = CpuMeter { server_pid: own_default.as_ref().map(NatsServer::pid) };

    // Case 4, raw side first, while nothing else runs: RSA-OAEP on every core.
    eprintln!("[4] raw RSA-OAEP-SHA256 encrypt (rsa 0.9), {cpus} thread(s), {} ms", plan.rsa_measure_ms);
    let player_der = keys.player_public_der.clone();
    let rsa_ms = plan.rsa_measure_ms;
    let mark = meter.mark();
    let raw_rsa_oaep = mark.attach(tokio::task::spawn_blocking(move || raw_rsa_oaep(&player_der, cpus, rsa_ms)).await.context("the rsa baseline panicked")??);
    eprintln!("    {:.0} encryptions/s", raw_rsa_oaep.per_s);

    // Case 1, raw.
    eprintln!("[1] raw: {} vouchers x 3 publishes ({RAW_PAYLOAD_BYTES} B, Nats-Msg-Id + expected last subject sequence)", plan.vouchers);
    let raw_append = raw.voucher_workload(&plan, plan.vouchers, meter).await?;
    eprintln!("    {:.0} publishes/s (p50 {} ms, p99 {} ms)", raw_append.per_s, ms(raw_append.p50_ms), ms(raw_append.p99_ms));

    // Case 1, engine; then case 4's engine side and the deliveries case 3 replays.
    raw.delete_engine_streams().await?;
    eprintln!("[1] engine: {} vouchers, Reserve → Authorize → IssueVoucher through Market on JetStreamLog", plan.vouchers);
    let engine = EngineUnderTest::start(&url, &keys, plan.warmup_vouchers + plan.vouchers).await?;
    engine.sell(0..plan.warmup_vouchers, None).await?;
    engine.caught_up().await?;
    let mark = meter.mark();
    let (engine_append, to_deliver) = engine.sell(plan.warmup_vouchers..plan.warmup_vouchers + plan.vouchers, Some(DELIVERED_ONE_IN)).await?;
    // The projections' work on these events counts too.
    engine.caught_up().await?;
    let engine_append = mark.attach(engine_append);
    eprintln!("    {:.0} commands/s (p50 {} ms, p99 {} ms)", engine_append.per_s, ms(engine_append.p50_ms), ms(engine_append.p99_ms));
    eprintln!("[4] in process: {} redemptions through Market::redeem, then their deliveries (the royalty entries case 3 replays)", to_deliver.len());
    let redeem_in_process = engine.redeem_and_deliver(to_deliver, meter).await?;
    eprintln!("    {:.0} redemptions/s (p50 {} ms, p99 {} ms)", redeem_in_process.per_s, ms(redeem_in_process.p50_ms), ms(redeem_in_process.p99_ms));
    let small_events = engine.finish().await?;
    let engine_event_bytes_mean = raw.mean_voucher_event_bytes().await?;

    // Case 3 and case 7 (small): raw consume vs the audit replay of the same stream.
    eprintln!("[3] replay of {small_events} events: raw pull consumer (AckNone, batch {RAW_CONSUME_BATCH_EVENTS}) vs audit replay");
    let _warm = raw.consume_all(small_events).await?;
    let mark = meter.mark();
    let raw_consume = mark.attach(raw.consume_all(small_events).await?);
    let mark = meter.mark();
    let (replay, replay_report) = audit_replay(&url, &keys, small_events).await?;
    let replay = mark.attach(replay);
    eprintln!("    raw {:.0} events/s; audit replay {:.0} events/s ({} royalty entries, {} seal(s) verified)", raw_consume.per_s, replay.per_s, replay_report.royalty_entries, replay_report.seals_verified);
    let mut audit_ok = replay_report.ok();

    // Case 2: purchases over gRPC, on a fresh stream of the same server.
    raw.delete_engine_streams().await?;
    eprintln!(
        "[2] purchases over gRPC: {} purchases (Reserve → Authorize → IssueVoucher) from {PURCHASE_MERCHANTS} merchants on their own channels, {VOUCHERS_IN_FLIGHT} in flight",
        plan.vouchers
    );
    let maximum = plan.warmup_vouchers..plan.warmup_vouchers + plan.vouchers;
    // Each latency phase: its warm-up, then its timed purchases.
    let phase_purchases = plan.warmup_vouchers + plan.vouchers;
    let purchases_total = maximum.end + PURCHASE_LATENCY_LOAD_SHARES.len() * phase_purchases;
    let purchase_market = GrpcMarket::start(&url, &keys_dir, &scratch.path().join("purchase"), purchases_total, &keys.player_public_der).await?;
    let (_, _, redeem_warmup) = purchase_market.purchase_all(0..plan.warmup_vouchers, Pace::Closed).await?;
    purchase_market.caught_up().await?;
    let mark = meter.mark();
    let (purchase, _, to_redeem) = purchase_market.purchase_all(maximum.clone(), Pace::Closed).await?;
    // As in case 1, the projections' work on these events counts in the CPU figures.
    purchase_market.caught_up().await?;
    let purchase = mark.attach(purchase);
    eprintln!("    maximum: {:.0} purchases/s with {VOUCHERS_IN_FLIGHT} in flight (p50 {} ms, p99 {} ms: queueing)", purchase.per_s, ms(purchase.p50_ms), ms(purchase.p99_ms));
    let mut purchase_latency_phases: Vec<LatencyPhase> = Vec::with_capacity(PURCHASE_LATENCY_LOAD_SHARES.len());
    for (index, load_share) in PURCHASE_LATENCY_LOAD_SHARES.into_iter().enumerate() {
        let start = maximum.end + index * phase_purchases;
        let offered_per_s = purchase.per_s * load_share;
        // Untimed, at the phase's own rate: the first seconds after a change of rate are a
        // transient (the previous phase's writeback and queues drain), not this rate's
        // steady state.
        purchase_market.purchase_all(start..start + plan.warmup_vouchers, Pace::Open { per_s: offered_per_s }).await?;
        purchase_market.caught_up().await?;
        let timed = start + plan.warmup_vouchers..start + phase_purchases;
        let mark = meter.mark();
        let (rate, steps, _) = purchase_market.purchase_all(timed, Pace::Open { per_s: offered_per_s }).await?;
        purchase_market.caught_up().await?;
        let rate = mark.attach(rate);
        eprintln!(
            "    latency at {offered_per_s:.0} purchases/s offered ({load_share} of the maximum, open loop): {:.0} purchases/s, p50 {} ms, p99 {} ms (Reserve {:.2} / Authorize {:.2} / IssueVoucher {:.2} ms p50)",
            rate.per_s,
            ms(rate.p50_ms),
            ms(rate.p99_ms),
            steps.reserve_p50_ms,
            steps.authorize_p50_ms,
            steps.issue_p50_ms
        );
        let within = rate.p99_ms.is_some_and(|p99| p99 <= PURCHASE_P99_TARGET_MS);
        purchase_latency_phases.push(LatencyPhase { load_share, offered_per_s, rate, steps });
        if within {
            break;
        }
    }
    let purchase_nodes = purchase_market.nodes;

    // Case 4, engine side: redemptions of one purchase in DELIVERED_ONE_IN through
    // DeliveryService over gRPC, as the nodes the vouchers were issued to.
    eprintln!("[4] engine: {} redemptions through DeliveryService over gRPC (node credentials, {VOUCHERS_IN_FLIGHT} in flight) after {} for warm-up", to_redeem.len(), redeem_warmup.len());
    purchase_market.redeem_all(redeem_warmup).await?;
    let mark = meter.mark();
    let redeem = mark.attach(purchase_market.redeem_all(to_redeem).await?);
    purchase_market.caught_up().await?;
    purchase_market.stop().await?;
    eprintln!("    {:.0} redemptions/s (p50 {} ms, p99 {} ms)", redeem.per_s, ms(redeem.p50_ms), ms(redeem.p99_ms));

    // Case 6 in a child process, then case 7 (large) on the stream it wrote.
    raw.delete_engine_streams().await?;
    eprintln!("[6] memory: engine RSS after {} and {} vouchers (child process)", plan.vouchers, plan.memory_vouchers_large);
    let probe = rss_probe_child(&url, &keys_dir, plan.vouchers).await?;
    eprintln!("    {:.1} MB after {}, {:.1} MB after {}", probe.rss_mb_small, probe.vouchers_small, probe.rss_mb_large, probe.vouchers_large);
    eprintln!("[7] cost growth: audit replay of {} events", probe.stream_events);
    let _warm = raw.consume_all(probe.stream_events).await?;
    let mark = meter.mark();
    let (replay_large, large_report) = audit_replay(&url, &keys, probe.stream_events).await?;
    let replay_large = mark.attach(replay_large);
    audit_ok &= large_report.ok();
    eprintln!("    {:.0} ms ({:.0} events/s)", replay_large.seconds * 1000.0, replay_large.per_s);
    raw.delete_engine_streams().await?;
    raw.delete_raw_stream().await?;
    drop(raw);
    drop(own_default);

    // Case 5: both sides of case 1 against a server that fsyncs every write.
    let (durable_raw_append, durable_engine_append) = if args.nats_url.is_some() {
        eprintln!("[5] durable: not measured, reported as null: it needs a server this command starts itself with sync_interval: always, and --nats-url was given");
        (None, None)
    } else {
        // The earlier cases left dirty pages (the default-sync server writes lazily); with
        // them on the disk queue, the first fsyncs here would pay for that writeback.
        flush_dirty_pages().await;
        let server = tokio::task::spawn_blocking(|| NatsServer::start_with(Fsync::Always)).await.context("starting nats-server panicked")??;
        let url = server.url();
        eprintln!("[5] durable: {} vouchers on nats-server pid {} with sync_interval: always", plan.durable_vouchers, server.pid());
        let raw = RawClient::connect(&url).await?;
        let meter = CpuMeter { server_pid: Some(server.pid()) };
        let durable_plan = Plan { warmup_vouchers: (plan.durable_vouchers / WARMUP_SHARE).max(1), ..plan };
        let raw_rate = raw.voucher_workload(&durable_plan, plan.durable_vouchers, meter).await?;
        eprintln!("    raw {:.0} publishes/s", raw_rate.per_s);
        flush_dirty_pages().await;
        // The engine with group commit, as `serve --group-commit` runs against such a server.
        let engine = EngineUnderTest::start_with(&url, &keys, durable_plan.warmup_vouchers + plan.durable_vouchers, true, None).await?;
        engine.sell(0..durable_plan.warmup_vouchers, None).await?;
        engine.caught_up().await?;
        let before = engine.jetstream.group_commit_stats().unwrap_or_default();
        let mark = meter.mark();
        let (engine_rate, _) = engine.sell(durable_plan.warmup_vouchers..durable_plan.warmup_vouchers + plan.durable_vouchers, None).await?;
        engine.caught_up().await?;
        let engine_rate = mark.attach(engine_rate);
        let after = engine.jetstream.group_commit_stats().unwrap_or_default();
        engine.finish().await?;
        let (batches, batched) = (after.batches - before.batches, after.batched - before.batched);
        eprintln!(
            "    engine {:.0} commands/s with group commit: {batches} atomic batches of {:.1} appends on average, {} appends alone, {} batches refused and sent one by one",
            engine_rate.per_s,
            batched as f64 / batches.max(1) as f64,
            after.single - before.single,
            after.refused - before.refused
        );
        (Some(raw_rate), Some(engine_rate))
    };

    let ratio = |engine: f64, raw: f64| if raw > 0.0 { engine / raw } else { f64::NAN };
    let ingest_ratio = ratio(engine_append.per_s, raw_append.per_s);
    let purchase_ratio = ratio(purchase.per_s * 3.0, raw_append.per_s);
    let reported = purchase_latency_phases.last().context("case 2 ran no latency phase")?;
    let purchase_p50_ms = reported.rate.p50_ms.unwrap_or(f64::NAN);
    let purchase_p99_ms = reported.rate.p99_ms.unwrap_or(f64::NAN);
    let (purchase_per_s, purchase_load_share) = (reported.rate.per_s, reported.load_share);
    let purchase_p99_target_met = purchase_p99_ms <= PURCHASE_P99_TARGET_MS;
    let replay_ratio = ratio(replay.per_s, raw_consume.per_s);
    let redeem_ratio = ratio(redeem.per_s, raw_rsa_oaep.per_s);
    let durable_ratio = match (&durable_raw_append, &durable_engine_append) {
        (Some(raw), Some(engine)) => Some(ratio(engine.per_s, raw.per_s)),
        _ => None,
    };
    let per_event = |rate: &Rate| rate.seconds / rate.operations.max(1) as f64;
    let replay_cost_growth = per_event(&replay_large) / per_event(&replay);
    let rss_growth = probe.rss_mb_large / probe.rss_mb_small;
    let mut targets = std::collections::BTreeMap::new();
    targets.insert("ingest_ratio >= 0.75".to_string(), Some(ingest_ratio >= 0.75));
    targets.insert("purchase_p99_ms <= 20".to_string(), Some(purchase_p99_target_met));
    targets.insert("replay_ratio >= 0.5".to_string(), Some(replay_ratio >= 0.5));
    targets.insert("redeem_ratio >= 0.7".to_string(), Some(redeem_ratio >= 0.7));
    targets.insert("durable engine >= 2x durable raw".to_string(), durable_ratio.map(|r| r >= 2.0));
    targets.insert("rss growth <= 1.5x for 10x vouchers".to_string(), Some(rss_growth <= 1.5));
    targets.insert("replay cost linear (per-event time at 10x <= 1.25x)".to_string(), Some(replay_cost_growth <= 1.25));

    Ok(BenchReport {
        raw_append_per_s: raw_append.per_s,
        engine_append_per_s: engine_append.per_s,
        ingest_ratio,
        purchase_per_s,
        purchase_p50_ms,
        purchase_p99_ms,
        purchase_max_per_s: purchase.per_s,
        purchase_load_share,
        raw_consume_per_s: raw_consume.per_s,
        replay_per_s: replay.per_s,
        replay_ratio,
        raw_rsa_oaep_per_s: raw_rsa_oaep.per_s,
        redeem_per_s: redeem.per_s,
        redeem_ratio,
        durable_raw_append_per_s: durable_raw_append.map(|rate| rate.per_s),
        durable_engine_append_per_s: durable_engine_append.map(|rate| rate.per_s),
        rss_mb_small: probe.rss_mb_small,
        rss_mb_large: probe.rss_mb_large,
        nats_server_version,
        replay_ms_small: replay.seconds * 1000.0,
        replay_ms_large: replay_large.seconds * 1000.0,
        quick: args.quick,
        plan,
        cpu_busy_before,
        cpus,
        servers: if args.nats_url.is_some() { "external" } else { "own" }.to_string(),
        raw_append,
        engine_append,
        purchase_ratio,
        purchase_p99_target_met,
        purchase,
        purchase_latency_phases,
        purchase_merchants: PURCHASE_MERCHANTS,
        purchase_nodes,
        raw_payload_bytes: RAW_PAYLOAD_BYTES,
        engine_event_bytes_mean,
        raw_consume,
        raw_consume_method: format!("pull consumer, AckNone, batch {RAW_CONSUME_BATCH_EVENTS}"),
        replay,
        replay_events_small: small_events,
        replay_events_large: probe.stream_events,
        replay_royalty_entries: replay_report.royalty_entries,
        raw_rsa_oaep,
        rsa_threads: cpus,
        redeem,
        redeem_path: "DeliveryService.Redeem over gRPC with node credentials".to_string(),
        redeem_in_process,
        durable_raw_append,
        durable_engine_append,
        durable_ratio,
        rss_vouchers_small: probe.vouchers_small,
        rss_vouchers_large: probe.vouchers_large,
        replay_cost_growth,
        targets,
        audit_ok,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// "client + server" CPU microseconds per operation, or "-".
fn cpu(rate: &Rate) -> String {
    match (rate.client_cpu_us, rate.server_cpu_us) {
        (Some(client), Some(server)) => format!("{client:.0} + {server:.0}"),
        (Some(client), None) => format!("{client:.0} + ?"),
        _ => "-".to_string(),
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

/// The human table (stderr).
pub fn describe(report: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mode = match (report.quick, report.plan.vouchers) {
        (true, VOUCHERS_QUICK) => "quick",
        (false, VOUCHERS_DEFAULT) => "full",
        _ => "custom size",
    };
    let target = |name: &str| match report.targets.get(name) {
        Some(Some(true)) => "met",
        Some(Some(false)) => "MISSED",
        _ => "n/a",
    };
    let _ = writeln!(out, "\nvouchsafe bench ({mode}, {} vouchers, {VOUCHERS_IN_FLIGHT} in flight) on nats-server {}, {} cpus, {} servers, {:.0} s", report.plan.vouchers, report.nats_server_version, report.cpus, report.servers, report.elapsed_s);
    if let Some(busy) = report.cpu_busy_before.filter(|busy| *busy > BUSY_CPU_SHARE) {
        let _ = writeln!(out, "other work kept {:.0}% of the CPU busy just before the run: rates are lower than on an idle machine", busy * 100.0);
    }
    let _ = writeln!(out, "{:<44} {:>14} {:>14} {:>7}  target", "case", "raw", "engine", "ratio");
    let _ = writeln!(
        out,
        "{:<44} {:>14.0} {:>14.0} {:>7.3}  >= 0.75 {}",
        "1 vouchers: commands/s (default sync)",
        report.raw_append_per_s,
        report.engine_append_per_s,
        report.ingest_ratio,
        target("ingest_ratio >= 0.75")
    );
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14}",
        "  per command p50 / p99 ms",
        format!("{} / {}", ms(report.raw_append.p50_ms), ms(report.raw_append.p99_ms)),
        format!("{} / {}", ms(report.engine_append.p50_ms), ms(report.engine_append.p99_ms))
    );
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per command: client + nats-server", cpu(&report.raw_append), cpu(&report.engine_append));
    let _ = writeln!(out, "{:<44} {:>14} {:>14.0}", "  payload bytes (raw fixed, engine mean)", report.raw_payload_bytes, report.engine_event_bytes_mean);
    let _ = writeln!(
        out,
        "{:<44} {:>14.0} {:>14.0} {:>7.3}",
        "2 purchases over gRPC: commands/s at the max",
        report.raw_append_per_s,
        report.purchase_max_per_s * 3.0,
        report.purchase_ratio,
    );
    let _ = writeln!(out, "{:<44} {:>14} {:>14.0}", format!("  purchases/s at the maximum, {VOUCHERS_IN_FLIGHT} in flight"), "-", report.purchase_max_per_s);
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", format!("  p50 / p99 ms at the maximum ({VOUCHERS_IN_FLIGHT} queued)"), "-", format!("{} / {}", ms(report.purchase.p50_ms), ms(report.purchase.p99_ms)));
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14.0} {:>7.2}  p99 <= {PURCHASE_P99_TARGET_MS} ms {}",
        "  purchases/s, open loop (share of the max)",
        "-",
        report.purchase_per_s,
        report.purchase_load_share,
        target("purchase_p99_ms <= 20")
    );
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  p50 / p99 ms at that rate", "-", format!("{:.2} / {:.2}", report.purchase_p50_ms, report.purchase_p99_ms));
    if let Some(phase) = report.purchase_latency_phases.last() {
        let steps = &phase.steps;
        let _ = writeln!(
            out,
            "{:<44} {:>14} {:>14}",
            "  p50 ms Reserve / Authorize / IssueVoucher",
            "-",
            format!("{:.1} / {:.1} / {:.1}", steps.reserve_p50_ms, steps.authorize_p50_ms, steps.issue_p50_ms)
        );
    }
    for phase in &report.purchase_latency_phases[..report.purchase_latency_phases.len().saturating_sub(1)] {
        let _ = writeln!(
            out,
            "{:<44} {:>14} {:>14}",
            format!("  (tried {} of the max: {:.0}/s achieved)", phase.load_share, phase.rate.per_s),
            "-",
            format!("{} / {}", ms(phase.rate.p50_ms), ms(phase.rate.p99_ms))
        );
    }
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per purchase: process + nats-server", "-", cpu(&report.purchase));
    let _ = writeln!(
        out,
        "{:<44} {:>14.0} {:>14.0} {:>7.3}  >= 0.5 {}",
        format!("3 replay: events/s ({} events)", report.replay_events_small),
        report.raw_consume_per_s,
        report.replay_per_s,
        report.replay_ratio,
        target("replay_ratio >= 0.5")
    );
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per event: client + nats-server", cpu(&report.raw_consume), cpu(&report.replay));
    let _ = writeln!(
        out,
        "{:<44} {:>14.0} {:>14.0} {:>7.3}  >= 0.7 {}",
        format!("4 redeem over gRPC/s (raw: rsa, {} thr)", report.rsa_threads),
        report.raw_rsa_oaep_per_s,
        report.redeem_per_s,
        report.redeem_ratio,
        target("redeem_ratio >= 0.7")
    );
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per op: client + nats-server", cpu(&report.raw_rsa_oaep), cpu(&report.redeem));
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  redeem p50 / p99 ms", "-", format!("{} / {}", ms(report.redeem.p50_ms), ms(report.redeem.p99_ms)));
    let _ = writeln!(out, "{:<44} {:>14} {:>14.0}", "  redeem in process/s (Market::redeem)", "-", report.redeem_in_process.per_s);
    match (&report.durable_raw_append, &report.durable_engine_append, report.durable_ratio) {
        (Some(raw), Some(engine), Some(ratio)) => {
            let _ = writeln!(
                out,
                "{:<44} {:>14.0} {:>14.0} {:>7.3}  >= 2.0 {}",
                "5 durable: commands/s (sync_interval always)",
                raw.per_s,
                engine.per_s,
                ratio,
                target("durable engine >= 2x durable raw")
            );
            let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  per command p50 / p99 ms", format!("{} / {}", ms(raw.p50_ms), ms(raw.p99_ms)), format!("{} / {}", ms(engine.p50_ms), ms(engine.p99_ms)));
            let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per command: client + nats-server", cpu(raw), cpu(engine));
        }
        _ => {
            let _ = writeln!(out, "{:<44} {:>14} {:>14} {:>7}  skipped (--nats-url)", "5 durable (sync_interval always)", "-", "-", "-");
        }
    }
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14} {:>7.2}  <= 1.5x {}",
        "6 engine RSS MB (N vs 10xN vouchers)",
        format!("{:.1} @ {}", report.rss_mb_small, report.rss_vouchers_small),
        format!("{:.1} @ {}", report.rss_mb_large, report.rss_vouchers_large),
        report.rss_mb_large / report.rss_mb_small,
        target("rss growth <= 1.5x for 10x vouchers")
    );
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14} {:>7.2}  linear {}",
        "7 audit replay ms (N vs 10xN; growth/event)",
        format!("{:.0} @ {}", report.replay_ms_small, report.replay_events_small),
        format!("{:.0} @ {}", report.replay_ms_large, report.replay_events_large),
        report.replay_cost_growth,
        target("replay cost linear (per-event time at 10x <= 1.25x)")
    );
    let _ = writeln!(out, "notes: case 1 raw = async-nats publishes from one task; engine = one task per voucher through Market.");
    let _ = writeln!(out, "       case 3 raw = {}; engine = projections::audit::replay (royalty chain and seals).", report.raw_consume_method);
    let _ = writeln!(out, "       case 4 engine = {}.", report.redeem_path);
    let _ = writeln!(
        out,
        "       case 2 raw = case 1's raw publishes; engine = the gRPC server in this process, {} merchants on their own channels, {} nodes (no agents).",
        report.purchase_merchants, report.purchase_nodes
    );
    let _ = writeln!(
        out,
        "       case 2 at the maximum is queueing: with {VOUCHERS_IN_FLIGHT} purchases in flight the mean is in flight / rate = {:.1} ms (Little's law); the open loop is tried at {:?} of it until p99 <= {PURCHASE_P99_TARGET_MS} ms.",
        VOUCHERS_IN_FLIGHT as f64 * 1000.0 / report.purchase_max_per_s,
        PURCHASE_LATENCY_LOAD_SHARES
    );
    if !report.audit_ok {
        let _ = writeln!(out, "AUDIT REPLAY FOUND A PROBLEM: the numbers above are not valid");
    }
    out
}

// ---------------------------------------------------------------------------------------
// The raw substrate.

/// A plain async-nats client with the substrate anchors' settings.
struct RawClient {
    context: Context,
    server_version: String,
    run_id: String,
}

impl RawClient {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let addresses = url
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| part.parse::<async_nats::ServerAddr>().with_context(|| format!("{part:?} is not a NATS URL; use e.g. nats://127.0.0.1:4222")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(RAW_SUBSCRIPTION_CAPACITY)
            .connect(addresses)
            .await
            .with_context(|| format!("cannot connect to nats at {url}; is nats-server running and reachable?"))?;
        let server_version = client.server_info().version.clone();
        let context = jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(RAW_REQUEST_TIMEOUT_MS))
            .max_ack_inflight(RAW_ACKS_IN_FLIGHT_MAX)
            .build(client);
        Ok(RawClient { context, server_version, run_id: run_id() })
    }

    async fn delete_stream_if_present(&self, name: &str) -> anyhow::Result<()> {
        if self.context.get_stream(name).await.is_ok() {
            self.context.delete_stream(name).await.with_context(|| format!("cannot delete the bench's stream {name}"))?;
        }
        Ok(())
    }

    /// Removes the bench's engine streams, case 2's included (never any other stream), so
    /// the next engine case starts empty (they all claim `vs.>`).
    async fn delete_engine_streams(&self) -> anyhow::Result<()> {
        for name in [BENCH_STREAM, PURCHASE_STREAM] {
            self.delete_stream_if_present(name).await?;
            self.delete_stream_if_present(&format!("{name}{}", engine::log::jetstream::NODE_STREAM_SUFFIX)).await?;
        }
        Ok(())
    }

    async fn delete_raw_stream(&self) -> anyhow::Result<()> {
        self.delete_stream_if_present(RAW_STREAM).await
    }

    /// Case 1's raw side: per voucher three publishes on its own subject, each carrying a
    /// unique `Nats-Msg-Id` and the subject sequence the previous ack returned; the next is
    /// sent when that ack arrives. `VOUCHERS_IN_FLIGHT` vouchers at once, from this task.
    async fn voucher_workload(&self, plan: &Plan, vouchers: usize, meter: CpuMeter) -> anyhow::Result<Rate> {
        self.delete_raw_stream().await?;
        self.context
            .create_stream(stream::Config {
                name: RAW_STREAM.to_string(),
                subjects: vec!["vb.>".to_string()],
                storage: stream::StorageType::File,
                num_replicas: 1,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::New,
                duplicate_window: Duration::from_millis(RAW_DUPLICATE_WINDOW_MS),
                max_message_size: RAW_MESSAGE_BYTES_MAX,
                deny_delete: true,
                deny_purge: true,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .context("cannot create the raw baseline's stream")?;
        let payload = Bytes::from((0..RAW_PAYLOAD_BYTES).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
        let warmup = plan.warmup_vouchers;
        self.pipelined(0..warmup, &payload).await?;
        let mark = meter.mark();
        let started = Instant::now();
        let mut latencies = self.pipelined(warmup..warmup + vouchers, &payload).await?;
        Ok(mark.attach(Rate::new(3 * vouchers as u64, started.elapsed(), &mut latencies)))
    }

    async fn pipelined(&self, range: std::ops::Range<usize>, payload: &Bytes) -> anyhow::Result<Vec<u32>> {
        let mut latencies = Vec::with_capacity(range.len() * 3);
        let mut in_flight = FuturesUnordered::new();
        for index in range {
            if in_flight.len() >= VOUCHERS_IN_FLIGHT
                && let Some(done) = in_flight.next().await
            {
                let done: [u32; 3] = done?;
                latencies.extend_from_slice(&done);
            }
            in_flight.push(self.raw_voucher(index, payload.clone()));
        }
        while let Some(done) = in_flight.next().await {
            latencies.extend_from_slice(&done?);
        }
        Ok(latencies)
    }

    async fn raw_voucher(&self, index: usize, payload: Bytes) -> anyhow::Result<[u32; 3]> {
        // The same shape as the engine's: a 32-hex-digit id on the subject, a 32-character
        // message id.
        let id = blake3::hash(format!("{}-{index}", self.run_id).as_bytes()).to_hex();
        let subject = format!("vb.voucher.v{}", &id[..32]);
        let mut expected = 0u64;
        let mut latencies = [0u32; 3];
        for (step, latency) in latencies.iter_mut().enumerate() {
            let message_id = format!("{}{step:08x}", &id[..24]);
            let message = jetstream::message::PublishMessage::build().payload(payload.clone()).message_id(message_id).expected_last_subject_sequence(expected);
            let started = Instant::now();
            let ack = self.context.send_publish(subject.clone(), message).await?.await.with_context(|| format!("raw publish {step} on {subject}"))?;
            ensure!(!ack.duplicate, "raw publish {step} on {subject} was a duplicate: message ids must be unique");
            expected = ack.sequence;
            *latency = micros(started.elapsed());
        }
        Ok(latencies)
    }

    /// Case 3's raw side: every message of the engine's stream through one pull consumer
    /// with AckNone and large batches (the substrate anchors' fastest way to read).
    async fn consume_all(&self, expected: u64) -> anyhow::Result<Rate> {
        let stream = self.context.get_stream(BENCH_STREAM).await.context("the engine's stream is missing")?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .context("cannot create the raw pull consumer")?;
        let mut messages = consumer.stream().max_messages_per_batch(RAW_CONSUME_BATCH_EVENTS).messages().await.context("cannot pull from the engine's stream")?;
        let started = Instant::now();
        let mut read = 0u64;
        while read < expected {
            let message = messages.next().await.context("the pull consumer ended early")?.context("pulling a message")?;
            std::hint::black_box(message.payload.len());
            read += 1;
        }
        let elapsed = started.elapsed();
        drop(messages);
        let name = consumer.cached_info().name.clone();
        if let Err(error) = stream.delete_consumer(&name).await {
            tracing::debug!(%error, "the raw consumer expires on its own");
        }
        Ok(Rate::new(read, elapsed, &mut []))
    }

    /// The mean payload of the voucher events the engine wrote (case 1), next to the raw
    /// baseline's fixed size, so the two can be compared.
    async fn mean_voucher_event_bytes(&self) -> anyhow::Result<f64> {
        const SAMPLE_EVENTS: u64 = 3_000;
        let stream = self.context.get_stream(BENCH_STREAM).await.context("the engine's stream is missing")?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                filter_subject: "vs.voucher.>".to_string(),
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let available = consumer.cached_info().num_pending.min(SAMPLE_EVENTS);
        let mut messages = consumer.stream().max_messages_per_batch(RAW_CONSUME_BATCH_EVENTS).messages().await?;
        let (mut count, mut bytes) = (0u64, 0u64);
        while count < available {
            let message = messages.next().await.context("the pull consumer ended early")??;
            bytes += message.payload.len() as u64;
            count += 1;
        }
        Ok(if count == 0 { 0.0 } else { bytes as f64 / count as f64 })
    }
}

/// Case 4's raw side: RSA-OAEP-SHA256 encryptions of a 32-byte key with `rsa` 0.9 for
/// `measure_ms` on each of `threads` threads (after a short warm-up), summed.
fn raw_rsa_oaep(public_key_der: &[u8], threads: usize, measure_ms: u64) -> anyhow::Result<Rate> {
    use rsa::pkcs8::DecodePublicKey as _;
    let key = rsa::RsaPublicKey::from_public_key_der(public_key_der).context("the player's public key does not parse")?;
    let secret = [7u8; 32];
    let measure = Duration::from_millis(measure_ms);
    let results: Vec<anyhow::Result<(u64, Duration)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let key = &key;
                scope.spawn(move || -> anyhow::Result<(u64, Duration)> {
                    let mut rng = rand_08::thread_rng();
                    let mut encrypt = || key.encrypt(&mut rng, rsa::Oaep::new::<rsa::sha2::Sha256>(), &secret).map(std::hint::black_box).map_err(|e| anyhow::anyhow!("rsa encrypt: {e}"));
                    for _ in 0..3 {
                        encrypt()?;
                    }
                    let started = Instant::now();
                    let mut done = 0u64;
                    while started.elapsed() < measure {
                        encrypt()?;
                        done += 1;
                    }
                    Ok((done, started.elapsed()))
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap_or_else(|_| Err(anyhow::anyhow!("an rsa thread panicked")))).collect()
    });
    let mut operations = 0;
    let mut per_s = 0.0;
    let mut seconds: f64 = 0.0;
    for result in results {
        let (done, elapsed) = result?;
        operations += done;
        per_s += done as f64 / elapsed.as_secs_f64().max(1e-9);
        seconds = seconds.max(elapsed.as_secs_f64());
    }
    Ok(Rate { operations, seconds, per_s, ..Rate::default() })
}

// ---------------------------------------------------------------------------------------
// The engine.

/// The key material every engine case uses: `keys init` output plus a player's key.
struct BenchKeys {
    engine: Arc<EngineKeys>,
    royalty_master: SecretKey,
    operator: String,
    player_public_der: Vec<u8>,
}

impl BenchKeys {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let engine = Arc::new(EngineKeys::new(crate::keys::load_engine_private(dir)?)?);
        // A consumer's certified key; the engine re-wraps media keys for it at redemption.
        // Only its public half matters here, and any 2048-bit key costs the same, so the
        // engine's own modulus stands in (no second key generation).
        let player_public_der = engine.public.to_der()?;
        Ok(BenchKeys { engine, royalty_master: crate::keys::load_royalty_master(dir)?, operator: crate::keys::load_operator_id(dir)?, player_public_der })
    }
}

/// One voucher to redeem and deliver: what the merchant handed the player.
struct ToDeliver {
    index: usize,
    voucher_id: VoucherId,
    node_id: NodeId,
    receipt: crypto::Token,
}

/// A running engine: Market on a JetStreamLog, Live following it as the allocator.
struct EngineUnderTest {
    market: Arc<Market>,
    live: Live,
    log: Arc<dyn EventLog>,
    jetstream: Arc<JetStreamLog>,
    runner: tokio::task::JoinHandle<Result<(), projections::RunError>>,
    merchants: Vec<MerchantId>,
    media_id: MediaId,
    content_hash: [u8; 32],
    consumer: ConsumerId,
    cert_serial: CertSerial,
    run_id: String,
}

impl EngineUnderTest {
    /// Connects, starts the projections and registers what the workload needs: merchants,
    /// enough delivery nodes for `vouchers` issued at once, one media, one consumer.
    async fn start(url: &str, keys: &BenchKeys, vouchers: usize) -> anyhow::Result<Self> {
        Self::start_with(url, keys, vouchers, false, None).await
    }

    /// `start`, with group commit (`StreamOptions::group_commit`) on or off, and the live
    /// projections in memory or, as `serve` keeps them, in a projection store at
    /// `projection_dir`.
    async fn start_with(url: &str, keys: &BenchKeys, vouchers: usize, group_commit: bool, projection_dir: Option<&Path>) -> anyhow::Result<Self> {
        let options = engine::log::jetstream::StreamOptions { group_commit, ..Default::default() };
        let jetstream = Arc::new(JetStreamLog::connect_with(url, BENCH_STREAM, options).await?);
        let log: Arc<dyn EventLog> = Arc::clone(&jetstream) as Arc<dyn EventLog>;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let live = match projection_dir {
            None => Live::with_keys(Some(&keys.royalty_master), Some(keys.engine.public.clone())),
            Some(dir) => Live::open_checked(dir, Some(&keys.royalty_master), Some(keys.engine.public.clone()), log.as_ref()).await?.0,
        };
        let runner = {
            let (live, log) = (live.clone(), Arc::clone(&log));
            tokio::spawn(async move { live.run(log).await })
        };
        let market = Arc::new(Market::new(Arc::clone(&log), clock, Arc::clone(&keys.engine), Arc::new(live.clone())));
        let run_id = run_id();
        let operator = keys.operator.as_str();
        let mut merchants = Vec::with_capacity(MERCHANTS);
        for index in 0..MERCHANTS {
            let credential = market.register_merchant(operator, &request(&run_id, "merchant", index), &format!("Bench shop {index}")).await?;
            merchants.push(MerchantId(credential.id));
        }
        let slots = engine::domain::party::SLOTS_MAX;
        let nodes = vouchers / slots as usize + 2;
        for index in 0..nodes {
            market.register_node(operator, &request(&run_id, "node", index), "eu", slots).await?;
        }
        let mut content = vec![0u8; MEDIA_BYTES];
        content[..32].copy_from_slice(&crypto::random_bytes::<32>());
        let content_hash = crypto::hash(&content);
        let wrapped_media_key = crypto::wrap_key(&keys.engine.public, &SecretKey::random())?;
        let input = PublishInput {
            title: "Bench Track".into(),
            artist: "The Baselines".into(),
            authors: vec!["The Baselines".into()],
            length_ms: 180_000,
            price_minor: 199,
            currency: "EUR".into(),
            terms: RoyaltyTerms { retailer_bps: 3000, distributor_bps: 2000, owner_bps: 5000, distributor: "dist-1".into(), owner: "label-1".into(), rights_agent: "agent-1".into() },
            renditions: vec![Rendition { name: "high".into(), bitrate_kbps: 256, content_hash, size_bytes: MEDIA_BYTES as u64 }],
            preview: PreviewClip { start_ms: 30_000, duration_ms: 30_000 },
            image_descriptor: "cover.jpg".into(),
            for_sale: true,
            wrapped_media_key,
        };
        let media_id = market.publish_media("bench-publisher", &request(&run_id, "publish", 0), input).await?;
        let consumer = ConsumerId(format!("{run_id}-player"));
        let cert = market.certify_consumer(operator, &request(&run_id, "certify", 0), &consumer, &keys.player_public_der, CERT_VALIDITY_MS).await?;
        Ok(EngineUnderTest { market, live, log, jetstream, runner, merchants, media_id, content_hash, consumer, cert_serial: cert.serial, run_id })
    }

    /// Sells vouchers `range` (Reserve → Authorize → IssueVoucher each), one task per
    /// voucher, `VOUCHERS_IN_FLIGHT` at once; keeps one in `deliver_one_in` for delivery.
    async fn sell(&self, range: std::ops::Range<usize>, deliver_one_in: Option<usize>) -> anyhow::Result<(Rate, Vec<ToDeliver>)> {
        let count = range.len();
        let started = Instant::now();
        let results = drive(range, |index| {
            let market = Arc::clone(&self.market);
            let merchant = self.merchants[index % self.merchants.len()].clone();
            let media_id = self.media_id.clone();
            let run_id = self.run_id.clone();
            let keep = deliver_one_in.is_some_and(|every| index % every == 0);
            async move {
                let mut latencies = [0u32; 3];
                let step = Instant::now();
                let reserved = market
                    .reserve(&merchant, &request(&run_id, "reserve", index), std::slice::from_ref(&media_id), "high", RESERVATION_TTL_MS, Payment::Merchant { payment_ref: format!("card-{index}") })
                    .await?;
                latencies[0] = micros(step.elapsed());
                let step = Instant::now();
                let authorized = market.authorize(&merchant, &request(&run_id, "authorize", index), &reserved.voucher_id).await?;
                latencies[1] = micros(step.elapsed());
                let step = Instant::now();
                let issued = market.issue(&merchant, &request(&run_id, "issue", index), &reserved.voucher_id, None, ACCESS_TTL_MS).await?;
                latencies[2] = micros(step.elapsed());
                let kept = keep.then(|| ToDeliver { index, voucher_id: issued.voucher_id, node_id: issued.node_id, receipt: authorized.receipt });
                anyhow::Ok((latencies, kept))
            }
        })
        .await?;
        let elapsed = started.elapsed();
        let mut latencies = Vec::with_capacity(count * 3);
        let mut to_deliver = Vec::new();
        for (sale, kept) in results {
            latencies.extend_from_slice(&sale);
            to_deliver.extend(kept);
        }
        Ok((Rate::new(3 * count as u64, elapsed, &mut latencies), to_deliver))
    }

    /// Redeems every voucher in `to_deliver` (the timed part: the first tenth is a
    /// warm-up), then reports each delivery complete, so the royalty log gets an entry per
    /// voucher.
    async fn redeem_and_deliver(&self, mut to_deliver: Vec<ToDeliver>, meter: CpuMeter) -> anyhow::Result<Rate> {
        let timed = to_deliver.split_off((to_deliver.len() / WARMUP_SHARE).min(to_deliver.len()));
        let warmup = to_deliver;
        let mut delivered = self.redeem_all(warmup).await?.1;
        let mark = meter.mark();
        let started = Instant::now();
        let (mut latencies, redeemed) = self.redeem_all(timed).await?;
        let rate = mark.attach(Rate::new(redeemed.len() as u64, started.elapsed(), &mut latencies));
        delivered.extend(redeemed);
        drive(0..delivered.len(), |position| {
            let market = Arc::clone(&self.market);
            let (index, voucher_id, node_id) = delivered[position].clone();
            let (media_id, content_hash, run_id) = (self.media_id.clone(), self.content_hash, self.run_id.clone());
            async move {
                market.complete_delivery(&node_id, &request(&run_id, "deliver", index), &voucher_id, &media_id, content_hash, MEDIA_BYTES as u64).await?;
                anyhow::Ok(())
            }
        })
        .await?;
        Ok(rate)
    }

    async fn redeem_all(&self, vouchers: Vec<ToDeliver>) -> anyhow::Result<(Vec<u32>, Vec<(usize, VoucherId, NodeId)>)> {
        let vouchers: Vec<Arc<ToDeliver>> = vouchers.into_iter().map(Arc::new).collect();
        let results = drive(0..vouchers.len(), |position| {
            let market = Arc::clone(&self.market);
            let voucher = Arc::clone(&vouchers[position]);
            let (consumer, cert_serial, run_id) = (self.consumer.clone(), self.cert_serial.clone(), self.run_id.clone());
            async move {
                let challenge = crypto::random_bytes::<32>();
                let proof = crypto::receipt_proof(&voucher.receipt, &voucher.voucher_id.0, &voucher.node_id.0, &challenge);
                let started = Instant::now();
                let redeemed = market.redeem(&voucher.node_id, &request(&run_id, "redeem", voucher.index), &voucher.voucher_id, &consumer, &cert_serial, &challenge, &proof).await?;
                let latency = micros(started.elapsed());
                ensure!(redeemed.keys.len() == 1, "redeeming {} returned {} keys instead of 1", voucher.voucher_id, redeemed.keys.len());
                anyhow::Ok((latency, (voucher.index, voucher.voucher_id.clone(), voucher.node_id.clone())))
            }
        })
        .await?;
        Ok(results.into_iter().unzip())
    }

    /// Waits until the projections applied every event stored so far.
    async fn caught_up(&self) -> anyhow::Result<()> {
        self.live.caught_up(self.log.last_seq().await?).await;
        Ok(())
    }

    /// Seals the royalty log, waits until the projections applied everything, stops them,
    /// and returns the stream's event count.
    async fn finish(self) -> anyhow::Result<u64> {
        self.live.caught_up(self.log.last_seq().await?).await;
        self.live.seal(&self.market, 1).await?;
        let last = self.log.last_seq().await?;
        self.live.caught_up(last).await;
        self.runner.abort();
        Ok(last.0)
    }
}

// ---------------------------------------------------------------------------------------
// Case 2: purchases over gRPC.

/// The engine's gRPC server in this process on [`PURCHASE_STREAM`], with merchants (one
/// channel each), announced delivery nodes and one published media, ready to sell.
struct GrpcMarket {
    engine: RunningEngine,
    merchants: Vec<MerchantClient>,
    media_id: String,
    nodes: usize,
    /// Each node's DeliveryService client, with the node's own credential.
    node_clients: std::collections::HashMap<String, DeliveryClient>,
    /// The certified consumer the redemptions are for: (consumer id, certificate serial).
    consumer: (String, String),
    heartbeat: tokio::task::JoinHandle<()>,
    run_id: String,
}

/// A purchase over gRPC kept for a redemption through DeliveryService.
struct GrpcToDeliver {
    index: usize,
    voucher_id: String,
    node_id: String,
    receipt: SecretKey,
}

impl GrpcMarket {
    /// Starts the server on 127.0.0.1:0 and sets up, over gRPC as the operator, what
    /// `purchases` sales need.
    async fn start(url: &str, keys_dir: &Path, data_dir: &Path, purchases: usize, player_public_der: &[u8]) -> anyhow::Result<Self> {
        let log: Arc<dyn EventLog> = Arc::new(JetStreamLog::connect(url, PURCHASE_STREAM).await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1 for the bench's gRPC engine")?;
        let engine = crate::server::start(EngineConfig::new(data_dir.to_path_buf(), keys_dir.to_path_buf()), log, listener).await?;
        let engine_url = engine.url();
        let run_id = run_id();
        let operator = Credential::load(&keys_dir.join(crate::keys::OPERATOR_CRED))?;
        let operator_channel = client::connect(&engine_url, None).await?;
        let mut catalog = client::catalog(operator_channel.clone(), operator);
        let mut merchants = Vec::with_capacity(PURCHASE_MERCHANTS);
        for index in 0..PURCHASE_MERCHANTS {
            let registered = catalog
                .register_merchant(pb::RegisterMerchantRequest { request_id: request(&run_id, "merchant", index).0, name: format!("Bench shop {index}") })
                .await
                .context("the bench's RegisterMerchant was refused")?;
            let credential = client::credential_of(registered.into_inner())?;
            // One channel per merchant: its own HTTP/2 connection, as separate shops have.
            merchants.push(client::merchant(client::connect(&engine_url, None).await?, credential));
        }
        let slots_max = engine::domain::party::SLOTS_MAX;
        let nodes = purchases / slots_max as usize + 2;
        let mut delivery_nodes = Vec::with_capacity(nodes);
        let mut node_clients = std::collections::HashMap::with_capacity(nodes);
        for index in 0..nodes {
            let registered = catalog
                .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: request(&run_id, "node", index).0, region: "eu".into(), slots_max })
                .await
                .context("the bench's RegisterNodeCredential was refused")?;
            let credential = client::credential_of(registered.into_inner())?;
            let node_id = credential.id.clone();
            let mut delivery = client::delivery(operator_channel.clone(), credential);
            delivery
                .register_node(pb::RegisterNodeRequest { region: "eu".into(), slots_max, endpoint: PURCHASE_NODE_ENDPOINT.into() })
                .await
                .context("the bench's RegisterNode was refused")?;
            node_clients.insert(node_id, delivery.clone());
            delivery_nodes.push(delivery);
        }
        let consumer_id = format!("{run_id}-player");
        let certificate = catalog
            .certify_consumer(pb::CertifyConsumerRequest { request_id: request(&run_id, "certify", 0).0, consumer_id: consumer_id.clone(), public_key_der: player_public_der.to_vec(), validity_ms: CERT_VALIDITY_MS })
            .await
            .context("the bench's CertifyConsumer was refused")?
            .into_inner();
        let heartbeat = tokio::spawn(heartbeats(delivery_nodes));
        let engine_public = crate::keys::load_engine_public(keys_dir)?;
        let mut content = vec![0u8; MEDIA_BYTES];
        content[..32].copy_from_slice(&crypto::random_bytes::<32>());
        let upload = client::Upload {
            title: "Bench Track".into(),
            artist: "The Baselines".into(),
            authors: vec!["The Baselines".into()],
            length_ms: 180_000,
            price_minor: 199,
            currency: "EUR".into(),
            terms: client::standard_terms("label-1"),
            content,
            preview_clip: vec![0u8; 1024],
            image_descriptor: "cover.jpg".into(),
        };
        let published = client::publish(&mut catalog, &request(&run_id, "publish", 0).0, &engine_public, upload).await.context("the bench's PublishMedia failed")?;
        Ok(GrpcMarket { engine, merchants, media_id: published.media_id, nodes, node_clients, consumer: (consumer_id, certificate.cert_serial), heartbeat, run_id })
    }

    /// Buys vouchers `range` over gRPC, each Reserve → Authorize → IssueVoucher in
    /// sequence as merchant `index mod PURCHASE_MERCHANTS`, started as `pace` says: the
    /// rate and latency per purchase (from its scheduled start), and the latency per step.
    async fn purchase_all(&self, range: std::ops::Range<usize>, pace: Pace) -> anyhow::Result<(Rate, PurchaseSteps, Vec<GrpcToDeliver>)> {
        let count = range.len();
        let started = Instant::now();
        let results = drive_paced(range, pace, |index, scheduled| {
            let mut merchant = self.merchants[index % self.merchants.len()].clone();
            let media_id = self.media_id.clone();
            let run_id = self.run_id.clone();
            async move {
                // Reserve, Authorize, IssueVoucher, and the whole purchase, in microseconds.
                let mut latencies = [0u32; 4];
                let purchase = scheduled;
                let reserve = pb::ReserveRequest {
                    request_id: request(&run_id, "reserve", index).0,
                    media_ids: vec![media_id],
                    rendition: "high".into(),
                    ttl_ms: RESERVATION_TTL_MS,
                    points_account: String::new(),
                    payment_ref: format!("card-{index}"),
                };
                let step = Instant::now();
                let voucher_id = merchant.reserve(reserve).await.with_context(|| format!("Reserve of purchase {index}"))?.into_inner().voucher_id;
                latencies[0] = micros(step.elapsed());
                let step = Instant::now();
                let authorized = merchant
                    .authorize(pb::AuthorizeRequest { request_id: request(&run_id, "authorize", index).0, voucher_id: voucher_id.clone() })
                    .await
                    .with_context(|| format!("Authorize of purchase {index}"))?
                    .into_inner();
                latencies[1] = micros(step.elapsed());
                let step = Instant::now();
                let issued = merchant
                    .issue_voucher(pb::IssueVoucherRequest { request_id: request(&run_id, "issue", index).0, voucher_id, region: String::new() })
                    .await
                    .with_context(|| format!("IssueVoucher of purchase {index}"))?
                    .into_inner();
                latencies[2] = micros(step.elapsed());
                latencies[3] = micros(purchase.elapsed());
                ensure!(!issued.node_id.is_empty() && !issued.access_token.is_empty(), "IssueVoucher of purchase {index} answered without a node or an access token");
                let kept = if index % DELIVERED_ONE_IN == 0 {
                    let receipt: [u8; crypto::KEY_BYTES] = authorized.receipt.as_slice().try_into().map_err(|_| anyhow::anyhow!("Authorize of purchase {index} answered a receipt of {} bytes", authorized.receipt.len()))?;
                    Some(GrpcToDeliver { index, voucher_id: issued.voucher_id, node_id: issued.node_id, receipt: SecretKey::from_bytes(receipt) })
                } else {
                    None
                };
                anyhow::Ok((latencies, kept))
            }
        })
        .await?;
        let elapsed = started.elapsed();
        let (results, kept): (Vec<[u32; 4]>, Vec<Option<GrpcToDeliver>>) = results.into_iter().unzip();
        let step = |which: usize| {
            let mut latencies: Vec<u32> = results.iter().map(|purchase| purchase[which]).collect();
            let rate = Rate::new(count as u64, elapsed, &mut latencies);
            (rate.p50_ms.unwrap_or(f64::NAN), rate.p99_ms.unwrap_or(f64::NAN))
        };
        let ((reserve_p50_ms, reserve_p99_ms), (authorize_p50_ms, authorize_p99_ms), (issue_p50_ms, issue_p99_ms)) = (step(0), step(1), step(2));
        let mut latencies: Vec<u32> = results.iter().map(|purchase| purchase[3]).collect();
        let steps = PurchaseSteps { reserve_p50_ms, reserve_p99_ms, authorize_p50_ms, authorize_p99_ms, issue_p50_ms, issue_p99_ms };
        Ok((Rate::new(count as u64, elapsed, &mut latencies), steps, kept.into_iter().flatten().collect()))
    }

    /// Redeems every voucher in `vouchers` through DeliveryService over gRPC, as the node
    /// it was issued to (the node's credential) with the player's proof, `VOUCHERS_IN_FLIGHT`
    /// at once: each answer carries the media key re-wrapped for the consumer (RSA-OAEP)
    /// and the signed transaction record.
    async fn redeem_all(&self, vouchers: Vec<GrpcToDeliver>) -> anyhow::Result<Rate> {
        let count = vouchers.len();
        let vouchers: Vec<Arc<GrpcToDeliver>> = vouchers.into_iter().map(Arc::new).collect();
        let started = Instant::now();
        let mut latencies = drive(0..vouchers.len(), |position| {
            let voucher = Arc::clone(&vouchers[position]);
            let node = self.node_clients.get(&voucher.node_id).cloned();
            let (consumer_id, cert_serial) = self.consumer.clone();
            let run_id = self.run_id.clone();
            async move {
                let mut node = node.with_context(|| format!("voucher {} was issued to node {}, which the bench did not register", voucher.voucher_id, voucher.node_id))?;
                let challenge = crypto::random_bytes::<32>();
                let proof = crypto::receipt_proof(&voucher.receipt, &voucher.voucher_id, &voucher.node_id, &challenge);
                let step = Instant::now();
                let redeemed = node
                    .redeem(pb::RedeemRequest { request_id: request(&run_id, "redeem", voucher.index).0, voucher_id: voucher.voucher_id.clone(), cert_serial, consumer_id, challenge: challenge.to_vec(), proof: proof.to_vec() })
                    .await
                    .with_context(|| format!("Redeem of voucher {}", voucher.voucher_id))?
                    .into_inner();
                let latency = micros(step.elapsed());
                ensure!(redeemed.keys.len() == 1 && redeemed.keys.iter().all(|key| !key.wrapped_key.is_empty() && !key.transaction_signature.is_empty()), "Redeem of voucher {} answered without a wrapped key and a signed transaction", voucher.voucher_id);
                anyhow::Ok(latency)
            }
        })
        .await?;
        Ok(Rate::new(count as u64, started.elapsed(), &mut latencies))
    }

    /// Waits until the engine's projections applied every event stored so far.
    async fn caught_up(&self) -> anyhow::Result<()> {
        let engine = &self.engine.engine;
        engine.live.caught_up(engine.log.last_seq().await?).await;
        Ok(())
    }

    /// Stops the heartbeats, closes the merchants' channels and shuts the server down.
    async fn stop(self) -> anyhow::Result<()> {
        self.heartbeat.abort();
        drop(self.merchants);
        self.engine.shutdown().await
    }
}

/// Keeps the bench's nodes healthy for the allocator, as a node agent does: a heartbeat
/// from each every `node::HEARTBEAT_INTERVAL_MS`, until the task is aborted.
async fn heartbeats(mut nodes: Vec<DeliveryClient>) {
    let mut tick = tokio::time::interval(Duration::from_millis(crate::node::HEARTBEAT_INTERVAL_MS));
    // The first tick is immediate, and RegisterNode just counted as a heartbeat.
    tick.tick().await;
    loop {
        tick.tick().await;
        for node in &mut nodes {
            if let Err(status) = node.heartbeat(pb::HeartbeatRequest::default()).await {
                tracing::warn!(code = ?status.code(), "a bench node's heartbeat was refused; the allocator may stop choosing it");
            }
        }
    }
}

/// Runs `make(index)` for every index as its own task, `VOUCHERS_IN_FLIGHT` at once, and
/// returns the results in completion order; the first error stops the run.
async fn drive<T, F, Fut>(range: std::ops::Range<usize>, mut make: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut results = Vec::with_capacity(range.len());
    let mut tasks = tokio::task::JoinSet::new();
    for index in range {
        if tasks.len() >= VOUCHERS_IN_FLIGHT
            && let Some(joined) = tasks.join_next().await
        {
            results.push(joined.context("a bench task panicked")??);
        }
        tasks.spawn(make(index));
    }
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.context("a bench task panicked")??);
    }
    Ok(results)
}

/// How case 2 starts its purchases.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// The next one as soon as one of [`VOUCHERS_IN_FLIGHT`] ends: the most the engine
    /// sustains, with the latency that depth implies.
    Closed,
    /// On a fixed schedule, `per_s` a second, whatever the answers (an open loop, as wrk2
    /// measures): a slow answer does not delay later starts, and each latency counts from
    /// the scheduled start, so no queueing is hidden.
    Open { per_s: f64 },
}

/// [`drive`] for case 2: `make(index, scheduled)` gets the instant its purchase was due.
async fn drive_paced<T, F, Fut>(range: std::ops::Range<usize>, pace: Pace, mut make: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: FnMut(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let per_s = match pace {
        Pace::Closed => return drive(range, |index| make(index, Instant::now())).await,
        Pace::Open { per_s } => per_s.max(1.0),
    };
    let mut results = Vec::with_capacity(range.len());
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (position, index) in range.enumerate() {
        let scheduled = started + Duration::from_secs_f64(position as f64 / per_s);
        tokio::time::sleep_until(scheduled.into()).await;
        while let Some(joined) = tasks.try_join_next() {
            results.push(joined.context("a bench task panicked")??);
        }
        if tasks.len() >= PURCHASES_OPEN_IN_FLIGHT_MAX
            && let Some(joined) = tasks.join_next().await
        {
            results.push(joined.context("a bench task panicked")??);
        }
        tasks.spawn(make(index, scheduled));
    }
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.context("a bench task panicked")??);
    }
    Ok(results)
}

/// The auditor's replay of the bench stream, timed; it must be clean and count `expected`
/// events.
async fn audit_replay(url: &str, keys: &BenchKeys, expected: u64) -> anyhow::Result<(Rate, projections::audit::AuditReport)> {
    let log = JetStreamLog::connect(url, BENCH_STREAM).await?;
    let started = Instant::now();
    let report = projections::audit::replay(&log, &keys.royalty_master, &keys.engine.public, None, |_| {}).await?;
    let elapsed = started.elapsed();
    if !report.ok() {
        eprintln!("{}", crate::audit::describe(&report));
    }
    ensure!(report.events == expected, "the audit replay read {} events, the stream holds {expected}", report.events);
    Ok((Rate::new(report.events, elapsed, &mut []), report))
}

// ---------------------------------------------------------------------------------------
// Case 6: memory, in a child process.

/// Runs `vouchsafe bench --rss-probe KEYS --nats-url URL --vouchers N` and reads its
/// answer.
async fn rss_probe_child(url: &str, keys_dir: &Path, vouchers: usize) -> anyhow::Result<RssProbe> {
    let executable = std::env::current_exe().context("cannot find this executable to start the memory probe")?;
    let output = tokio::process::Command::new(&executable)
        .arg("bench")
        .arg("--nats-url")
        .arg(url)
        .arg("--vouchers")
        .arg(vouchers.to_string())
        .arg("--rss-probe")
        .arg(keys_dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .with_context(|| format!("cannot run {} for the memory probe", executable.display()))?;
    // The probe's own lines, passed on (and kept in the error when it fails).
    let probe_stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{probe_stderr}");
    ensure!(output.status.success(), "the memory probe failed ({}); it said: {}", output.status, probe_stderr.trim());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("the memory probe's last line is not its answer: {last:?}"))
}

/// The child's side: an engine alone in this process sells N vouchers, then 10×N in all
/// (one in `DELIVERED_ONE_IN` redeemed and delivered, as in case 1), reading VmRSS after
/// the projections caught up each time.
pub async fn rss_probe(url: &str, keys_dir: &Path, vouchers: usize) -> anyhow::Result<RssProbe> {
    let keys = BenchKeys::load(keys_dir)?;
    let large = vouchers * MEMORY_MULTIPLIER;
    // As `serve` runs: the live projections in a projection store.
    let projection_dir = tempfile::tempdir().context("cannot create a temporary directory for the memory probe's projection store")?;
    let engine = EngineUnderTest::start_with(url, &keys, large, false, Some(projection_dir.path())).await?;
    // As `serve` runs: a seal every `SEAL_INTERVAL_DEFAULT`. The live projections keep the
    // stream head of every event since the last seal (a seal names a position whose head
    // it must match), so an engine that never sealed would hold one per event.
    let sealer = {
        let (live, market) = (engine.live.clone(), Arc::clone(&engine.market));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::server::SEAL_INTERVAL_DEFAULT).await;
                if let Err(error) = live.seal(&market, 1).await {
                    return Err::<(), _>(error);
                }
            }
        })
    };
    let meter = CpuMeter { server_pid: None };
    let (_, to_deliver) = engine.sell(0..vouchers, Some(DELIVERED_ONE_IN)).await?;
    engine.redeem_and_deliver(to_deliver, meter).await?;
    engine.caught_up().await?;
    let rss_mb_small = vm_rss_mb()?;
    let (_, to_deliver) = engine.sell(vouchers..large, Some(DELIVERED_ONE_IN)).await?;
    engine.redeem_and_deliver(to_deliver, meter).await?;
    engine.caught_up().await?;
    let rss_mb_large = vm_rss_mb()?;
    if sealer.is_finished() {
        sealer.await.context("the memory probe's sealer panicked")?.context("the memory probe's sealer failed")?;
    } else {
        sealer.abort();
    }
    let stream_events = engine.finish().await?;
    Ok(RssProbe { rss_mb_small, rss_mb_large, vouchers_small: vouchers as u64, vouchers_large: large as u64, stream_events })
}

/// This process's resident set (VmRSS in /proc/self/status), in MiB.
pub fn vm_rss_mb() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status (the memory case needs Linux)")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .context("no VmRSS line in /proc/self/status")?;
    Ok(kib / 1024.0)
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn request(run_id: &str, what: &str, index: usize) -> RequestId {
    RequestId(format!("{run_id}-{what}-{index}"))
}

/// A run id that differs between runs and processes, so streams that outlive a run (with
/// `--nats-url`) never see a repeated request.
fn run_id() -> String {
    let random = crypto::random_bytes::<4>();
    format!("b{}{}", std::process::id(), hex::encode(random))
}

fn micros(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}

