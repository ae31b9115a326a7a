//! `vouchsafe bench`: the engine measured next to the raw substrate it sits on, on the same
//! machine, in the same run, with the same durability setting and comparable payloads
//! (issue 10; keys in CLI.md). Numbers drift between runs and machines; the ratios are
//! the point.
//!
//! Without `--nats-url` it starts its own nats-servers (`crate::common::natsd`): one with the
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
//! 4. Redeem (`redeem.rs`): every purchase of case 2's maximum redeemed through
//!    DeliveryService over gRPC (node credentials, [`VOUCHERS_IN_FLIGHT`] in flight):
//!    `redeem_per_s`, and the CPU per redemption, process + nats-server (`redeem_cpu_us`),
//!    against the same run's raw cost of what a redemption cannot avoid
//!    (`raw_redeem_cpu_us`: one RSA-OAEP-SHA256 encryption with aws-lc-rs, the engine's
//!    implementation; its appends published raw; one unary gRPC round trip to a minimal
//!    tonic service; its share of one batch signature): `redeem_ratio` = raw ÷ engine.
//!    The raw OAEP rates of aws-lc-rs and of the `rsa` crate, one thread per core, are
//!    reported beside it; `Market::redeem` in process (case 1's stream) too.
//! 5. Durability: both sides of case 1 (N / [`DURABLE_SHARE`] vouchers) against a server
//!    with `sync_interval: always`, each side after a `sync` so neither pays for the
//!    writeback of earlier cases.
//! 6. Memory: the engine's resident set (VmRSS) after N and after [`MEMORY_MULTIPLIER`]×N
//!    vouchers, measured in a child process (`--rss-probe`) so nothing the other cases
//!    allocated counts; its live projections are kept in a projection store, and it seals
//!    the royalty log every `server::SEAL_INTERVAL_DEFAULT`, as `serve` does.
//! 7. Cost growth: the audit replay's time over case 3's stream and over case 6's
//!    ten-times-larger stream.
//! 8. Engines: case 2's maximum (closed loop) against one engine, then against two engines
//!    on the same stream with the merchants split between them (`engines.rs`): commands/s
//!    and CPU per command (this process plus the nats-server) for each.
//! 9. Delivery (`delivery.rs`): one player, then several at once, fetching a large media
//!    through one delivery node in this process (redeem, download, decrypt, verify, write,
//!    confirm), on a cold and a warm node cache: MiB/s, time to first byte, CPU per MiB of
//!    the node's and the players' threads; raw: a loopback TCP copy of the same bytes to as
//!    many readers, their AES-256-GCM decryption, and both together (`delivery_ratio`).
//!
//! The raw baselines call async-nats, rsa, aes-gcm and tonic directly: they measure the crates, not our
//! wrappers (the one place outside `engine::crypto` that calls a crypto primitive, and
//! only to time it). What is not here: correctness checks beyond what a benchmark needs
//! (the audit replay must come back clean and count every event), and any tuning of the
//! engine.

use crate::common::natsd::{Fsync, NatsServer};
use anyhow::Context as _;
use engine::crypto::{self};
use engine::ids::RequestId;
use std::time::{Duration, Instant};

mod delivery;
mod engine_case;
mod engines;
mod memory;
mod purchase;
mod raw;
mod redeem;
mod report;

pub use delivery::{DeliveryCase, DeliveryPhase, delivery_size};
use engine_case::*;
use memory::rss_probe_child;
pub use memory::{rss_probe, vm_rss_mb};
use purchase::*;
use raw::*;
use redeem::*;
pub use redeem::{REDEEM_RATIO_TARGET, RedeemSubstrate};
use report::ms;
pub use report::{describe, describe_delivery};

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

/// The delivery case's target: `delivery_ratio` at least this.
pub const DELIVERY_RATIO_TARGET: f64 = 0.5;

/// How much work each case does, from the flags.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Plan {
    pub vouchers: usize,
    pub warmup_vouchers: usize,
    pub durable_vouchers: usize,
    pub memory_vouchers_large: usize,
    pub rsa_measure_ms: u64,
    /// Case 9: bytes of the delivered media's content, and players fetching it at once.
    pub delivery_content_bytes: usize,
    pub delivery_players: usize,
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
            delivery_content_bytes: delivery_size(args).0,
            delivery_players: delivery_size(args).1,
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
        Rate {
            operations,
            seconds,
            per_s: operations as f64 / seconds,
            p50_ms: percentile(0.5),
            p99_ms: percentile(0.99),
            client_cpu_us: None,
            server_cpu_us: None,
        }
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
    /// The same encryptions with the `rsa` crate 0.9 (the engine's former implementation).
    pub raw_rsa_crate_oaep_per_s: f64,
    pub redeem_per_s: f64,
    /// Case 4 (issue 26): raw CPU per redemption over the engine's (`raw_redeem_cpu_us` ÷
    /// `redeem_cpu_us`); null when either is unknown (`--nats-url`). Until issue 26 it was
    /// redemptions/s over raw OAEP encryptions/s.
    pub redeem_ratio: f64,
    /// CPU per redemption over gRPC, this process (engine and client) plus the
    /// nats-server, in microseconds; null when the nats-server's CPU is not known.
    pub redeem_cpu_us: Option<f64>,
    /// The same run's raw cost of what a redemption cannot avoid (`redeem_substrate`
    /// holds the parts), in microseconds; null when the nats-server's CPU is not known.
    pub raw_redeem_cpu_us: Option<f64>,
    pub durable_raw_append_per_s: Option<f64>,
    pub durable_engine_append_per_s: Option<f64>,
    pub rss_mb_small: f64,
    pub rss_mb_large: f64,
    pub nats_server_version: String,
    pub replay_ms_small: f64,
    pub replay_ms_large: f64,
    /// Case 8: CPU per command (this process, which runs the engines and the gRPC clients,
    /// plus the nats-server), in microseconds, with one engine and with two engines on the
    /// same stream; null when the nats-server's CPU is not known (`--nats-url`).
    pub engines_1_cpu_per_command_us: Option<f64>,
    pub engines_2_cpu_per_command_us: Option<f64>,
    /// Case 8's commands/s with one engine and with two.
    pub engines_1_per_s: f64,
    pub engines_2_per_s: f64,
    /// Case 9 (issue 26): container MiB/s delivered to `delivery_players` players at once
    /// (warm node cache), and to one player; time to first byte (p50 of the many, ms); CPU
    /// per MiB of the node's and the players' threads (ms); the raw baseline (loopback TCP
    /// to as many readers, each decrypting with AES-256-GCM as it reads) and the ratios.
    pub delivery_mib_s: f64,
    pub delivery_single_mib_s: f64,
    pub delivery_ttfb_ms: f64,
    pub delivery_node_cpu_ms_per_mib: Option<f64>,
    pub delivery_player_cpu_ms_per_mib: Option<f64>,
    pub raw_delivery_mib_s: f64,
    pub raw_delivery_single_mib_s: f64,
    pub delivery_ratio: f64,
    pub delivery_single_ratio: f64,
    /// Case 9 on a cold node cache (the node fetches the container from the engine first):
    /// players at once, one player, and the one player's time to first byte.
    pub delivery_cold_mib_s: f64,
    pub delivery_cold_single_mib_s: f64,
    pub delivery_cold_ttfb_ms: f64,
    /// The raw sides apart: the TCP copy alone, the decryption alone.
    pub raw_tcp_copy_mib_s: f64,
    pub raw_aes_gcm_mib_s: f64,
    /// The raw baseline with each reader also writing its decrypted copy to a file, as a
    /// player does, and the many players' rate over it (informational, no target).
    pub raw_delivery_written_mib_s: f64,
    pub delivery_written_ratio: f64,
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
    /// Case 4's raw side, part by part.
    pub redeem_substrate: RedeemSubstrate,
    /// How redemptions were driven.
    pub redeem_path: String,
    /// Case 4 also measured in process (Market::redeem, no gRPC): what the wire costs.
    pub redeem_in_process: Rate,
    pub durable_raw_append: Option<Rate>,
    pub durable_engine_append: Option<Rate>,
    pub durable_ratio: Option<f64>,
    pub rss_vouchers_small: u64,
    pub rss_vouchers_large: u64,
    /// Case 8 in full, per command (client: this process, both engines and the clients).
    pub engines_1: Rate,
    pub engines_2: Rate,
    /// The share of case 8's two-engine commands the second engine answered (half the
    /// merchants are on it, so 0.5).
    pub engines_2_second_engine_share: f64,
    /// Case 9 in full.
    pub delivery: DeliveryCase,
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
    eprintln!(
        "bench: {} vouchers ({} warm-up, {} durable, {} for memory), {VOUCHERS_IN_FLIGHT} in flight, {cpus} cpus",
        plan.vouchers, plan.warmup_vouchers, plan.durable_vouchers, plan.memory_vouchers_large
    );
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
    tokio::task::spawn_blocking(move || crate::common::keys::init(&keys_for_init)).await.context("key generation panicked")??;
    let keys = BenchKeys::load(&keys_dir)?;
    let raw = RawClient::connect(&url).await?;
    let nats_server_version = raw.server_version.clone();
    let meter = CpuMeter { server_pid: own_default.as_ref().map(NatsServer::pid) };

    // Case 4, raw side first, while nothing else runs: RSA-OAEP on every core.
    eprintln!("[4] raw RSA-OAEP-SHA256 encrypt (aws-lc-rs, as the engine does), {cpus} thread(s), {} ms", plan.rsa_measure_ms);
    let player_der = keys.player_public_der.clone();
    let rsa_ms = plan.rsa_measure_ms;
    let mark = meter.mark();
    let raw_rsa_oaep = mark.attach(tokio::task::spawn_blocking(move || raw_rsa_oaep(&player_der, cpus, rsa_ms)).await.context("the rsa baseline panicked")??);
    eprintln!("    {:.0} encryptions/s", raw_rsa_oaep.per_s);
    eprintln!("[4] raw RSA-OAEP-SHA256 encrypt (rsa 0.9, the other implementation), {cpus} thread(s), {} ms", plan.rsa_measure_ms);
    let player_der = keys.player_public_der.clone();
    let raw_rsa_crate_oaep =
        tokio::task::spawn_blocking(move || raw_rsa_crate_oaep(&player_der, cpus, rsa_ms)).await.context("the rsa baseline panicked")??;
    eprintln!("    {:.0} encryptions/s ({:.1}x slower)", raw_rsa_crate_oaep.per_s, raw_rsa_oaep.per_s / raw_rsa_crate_oaep.per_s.max(1e-9));

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
    eprintln!(
        "    raw {:.0} events/s; audit replay {:.0} events/s ({} royalty entries, {} seal(s) verified)",
        raw_consume.per_s, replay.per_s, replay_report.royalty_entries, replay_report.seals_verified
    );
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
    eprintln!(
        "    maximum: {:.0} purchases/s with {VOUCHERS_IN_FLIGHT} in flight (p50 {} ms, p99 {} ms: queueing)",
        purchase.per_s,
        ms(purchase.p50_ms),
        ms(purchase.p99_ms)
    );
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

    // Case 4, engine side: every purchase of the maximum redeemed through DeliveryService
    // over gRPC, as the nodes the vouchers were issued to; then its raw side.
    eprintln!(
        "[4] engine: {} redemptions through DeliveryService over gRPC (node credentials, {VOUCHERS_IN_FLIGHT} in flight) after {} for warm-up",
        to_redeem.len(),
        redeem_warmup.len()
    );
    let measured = redeem_case(&purchase_market, &redeem_warmup, &to_redeem, &raw, &keys, &raw_rsa_oaep, &plan, meter).await;
    purchase_market.stop().await?;
    let RedeemMeasured { redeem, substrate: redeem_substrate } = measured?;

    // Case 8: one engine, then two on one stream, each run on a fresh stream.
    eprintln!(
        "[8] engines: {} purchases ({VOUCHERS_IN_FLIGHT} in flight) against 1 engine, then {} against 2 engines on one stream",
        plan.vouchers, plan.vouchers
    );
    let engines = engines::engines_case(&url, &raw, &keys_dir, scratch.path(), &plan, &keys.player_public_der, meter).await?;

    // Case 9: delivery through one node, on the embedded log (no NATS involved).
    let delivery = delivery_run(&keys_dir, scratch.path(), &plan).await?;

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
        eprintln!(
            "[5] durable: not measured, reported as null: it needs a server this command starts itself with sync_interval: always, and --nats-url was given"
        );
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
    let redeem_cpu_us = cpu_in_all(&redeem);
    let raw_redeem_cpu_us = redeem_substrate.per_redemption_cpu_us();
    let redeem_ratio = redeem::redeem_ratio(raw_redeem_cpu_us, redeem_cpu_us);
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
    targets.insert(format!("redeem_ratio >= {REDEEM_RATIO_TARGET}"), redeem_ratio.is_finite().then_some(redeem_ratio >= REDEEM_RATIO_TARGET));
    targets.insert("durable engine >= 2x durable raw".to_string(), durable_ratio.map(|r| r >= 2.0));
    targets.insert("rss growth <= 1.5x for 10x vouchers".to_string(), Some(rss_growth <= 1.5));
    targets.insert("replay cost linear (per-event time at 10x <= 1.25x)".to_string(), Some(replay_cost_growth <= 1.25));
    let delivery_ratio = ratio(delivery.warm_many.mib_s, delivery.raw_together.mib_s);
    targets.insert(format!("delivery_ratio >= {DELIVERY_RATIO_TARGET}"), Some(delivery_ratio >= DELIVERY_RATIO_TARGET));

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
        raw_rsa_crate_oaep_per_s: raw_rsa_crate_oaep.per_s,
        redeem_per_s: redeem.per_s,
        redeem_ratio,
        redeem_cpu_us,
        raw_redeem_cpu_us,
        durable_raw_append_per_s: durable_raw_append.map(|rate| rate.per_s),
        durable_engine_append_per_s: durable_engine_append.map(|rate| rate.per_s),
        rss_mb_small: probe.rss_mb_small,
        rss_mb_large: probe.rss_mb_large,
        nats_server_version,
        replay_ms_small: replay.seconds * 1000.0,
        replay_ms_large: replay_large.seconds * 1000.0,
        engines_1_cpu_per_command_us: cpu_in_all(&engines.one),
        engines_2_cpu_per_command_us: cpu_in_all(&engines.two),
        engines_1_per_s: engines.one.per_s,
        engines_2_per_s: engines.two.per_s,
        delivery_mib_s: delivery.warm_many.mib_s,
        delivery_single_mib_s: delivery.warm_single.mib_s,
        delivery_ttfb_ms: delivery.warm_many.ttfb_p50_ms,
        delivery_node_cpu_ms_per_mib: delivery.warm_many.node_cpu_ms_per_mib,
        delivery_player_cpu_ms_per_mib: delivery.warm_many.player_cpu_ms_per_mib,
        raw_delivery_mib_s: delivery.raw_together.mib_s,
        raw_delivery_single_mib_s: delivery.raw_together_single.mib_s,
        delivery_ratio,
        delivery_single_ratio: ratio(delivery.warm_single.mib_s, delivery.raw_together_single.mib_s),
        delivery_cold_mib_s: delivery.cold_many.mib_s,
        delivery_cold_single_mib_s: delivery.cold_single.mib_s,
        delivery_cold_ttfb_ms: delivery.cold_single.ttfb_p50_ms,
        raw_tcp_copy_mib_s: delivery.raw_tcp_copy.mib_s,
        raw_aes_gcm_mib_s: delivery.raw_aes_gcm.mib_s,
        raw_delivery_written_mib_s: delivery.raw_together_written.mib_s,
        delivery_written_ratio: ratio(delivery.warm_many.mib_s, delivery.raw_together_written.mib_s),
        delivery,
        engines_1: engines.one,
        engines_2: engines.two,
        engines_2_second_engine_share: engines.second_share,
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
        redeem_substrate,
        redeem_path: "DeliveryService.Redeem over gRPC with node credentials, every purchase of case 2's maximum".to_string(),
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

/// Case 9 with the plan's size, announced.
async fn delivery_run(keys_dir: &std::path::Path, scratch: &std::path::Path, plan: &Plan) -> anyhow::Result<DeliveryCase> {
    eprintln!(
        "[9] delivery: a {} MiB media through one node, to 1 player and to {} at once, cold and warm node cache",
        plan.delivery_content_bytes / (1024 * 1024),
        plan.delivery_players
    );
    delivery::delivery_case(keys_dir, scratch, plan.delivery_content_bytes, plan.delivery_players).await
}

/// Case 9 alone (`bench --delivery-only`, for profiling the delivery path): its own keys,
/// no nats-server.
pub async fn run_delivery_only(args: BenchArgs) -> anyhow::Result<DeliveryCase> {
    let plan = Plan::new(&args);
    let scratch = tempfile::tempdir().context("cannot create a temporary directory for the bench's keys")?;
    let keys_dir = scratch.path().join("keys");
    let keys_for_init = keys_dir.clone();
    tokio::task::spawn_blocking(move || crate::common::keys::init(&keys_for_init)).await.context("key generation panicked")??;
    delivery_run(&keys_dir, scratch.path(), &plan).await
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
