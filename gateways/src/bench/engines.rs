//! Case 8: what a second engine on the same stream costs (issue 25). Case 2's workload
//! (purchases over gRPC, Reserve → Authorize → IssueVoucher, a closed loop of
//! [`VOUCHERS_IN_FLIGHT`]) against one engine (`server::start` in this process), then
//! against two engines on that one stream, as two `serve` processes would run them (each
//! its own connection, projections, caches, slot leases, node health from gossip), with the
//! merchants split between them (merchant i on the second engine when i is odd).
//!
//! CPU per command is this process's CPU (both engines and the gRPC clients, every thread)
//! plus the nats-server's, from /proc, over the timed purchases, each engine's projections
//! caught up before the second mark: every engine applies every event of the stream, so
//! the second one's follower is part of what it costs. The clients are the same in both
//! runs, so the difference between the two figures is the second engine's cost. Not here:
//! engines on separate machines (one machine runs everything, as in every case).

use super::*;
use crate::common::client;
use crate::server::{EngineConfig, RunningEngine};
use anyhow::ensure;
use engine::ids::NodeId;
use engine::log::EventLog;
use engine::log::jetstream::JetStreamLog;
use std::path::Path;
use std::sync::Arc;

/// How long the second engine may take to apply the stream and hear every node's health
/// (gossip), in milliseconds, before the case fails.
const ENGINE_JOIN_MS: u64 = 30_000;
/// How often the wait for the second engine looks again, in milliseconds.
const ENGINE_JOIN_POLL_MS: u64 = 20;

/// Case 8's two runs, per command (three per purchase).
pub(super) struct EnginesMeasured {
    pub(super) one: Rate,
    pub(super) two: Rate,
    /// The share of the two-engine run's timed commands the second engine answered (its
    /// `requests_ok`): the load was split as meant (half), not all sent to one engine.
    pub(super) second_share: f64,
}

/// Runs case 8: each run on a fresh [`PURCHASE_STREAM`] (`raw` deletes the old one first),
/// every engine started and caught up before the first purchase. A second engine that
/// joins a market already under load finds the first one's slot leases holding every
/// free slot (docs/scaling.md), so the two-engine run starts both at once, as a
/// deployment of two engines does.
pub(super) async fn engines_case(
    url: &str,
    raw: &RawClient,
    keys_dir: &Path,
    scratch: &Path,
    plan: &Plan,
    player_public_der: &[u8],
    meter: CpuMeter,
) -> anyhow::Result<EnginesMeasured> {
    let purchases = plan.warmup_vouchers + plan.vouchers;
    raw.delete_engine_streams().await?;
    let market = GrpcMarket::start(url, keys_dir, &scratch.join("engines-1"), purchases, player_public_der).await?;
    let one = closed_run(&market, &[], plan, meter).await;
    market.stop().await?;
    let one = one?;
    eprintln!("    1 engine: {:.0} commands/s, {} CPU us per command (process + nats-server)", one.per_s, report::cpu(&one));

    raw.delete_engine_streams().await?;
    let mut market = GrpcMarket::start(url, keys_dir, &scratch.join("engines-2a"), purchases, player_public_der).await?;
    let second = join_second_engine(url, keys_dir, &scratch.join("engines-2b"), &market).await?;
    let second_url = second.url();
    for (index, credential) in market.merchant_credentials.clone().into_iter().enumerate() {
        if index % 2 == 1 {
            market.merchants[index] = client::merchant(client::connect(&second_url, None).await?, credential);
        }
    }
    let answered_before = second.state.metrics.requests_ok.get();
    let two = closed_run(&market, std::slice::from_ref(&second), plan, meter).await;
    // Only the odd merchants' commands reach the second engine (the nodes heartbeat the first).
    let answered = second.state.metrics.requests_ok.get().saturating_sub(answered_before);
    second.shutdown().await?;
    market.stop().await?;
    let two = two?;
    eprintln!("    2 engines: {:.0} commands/s, {} CPU us per command (process + nats-server)", two.per_s, report::cpu(&two));
    raw.delete_engine_streams().await?;
    // The warm-up's commands are counted too: the closed loop ran them through the same split.
    let second_share = answered as f64 / (3 * (plan.warmup_vouchers + plan.vouchers)) as f64;
    ensure!(second_share > 0.0, "the second engine answered none of the two-engine run's commands");
    Ok(EnginesMeasured { one, two, second_share })
}

/// The first engine's projections and each of `others`' have applied every event stored
/// so far.
async fn all_caught_up(market: &GrpcMarket, others: &[RunningEngine]) -> anyhow::Result<()> {
    market.caught_up().await?;
    for engine in others {
        engine.state.live.caught_up(engine.state.log.last_seq().await?).await;
    }
    Ok(())
}

/// An untimed warm-up and the timed closed loop of purchases, with every engine caught up
/// after each; the rate and CPU per command.
async fn closed_run(market: &GrpcMarket, others: &[RunningEngine], plan: &Plan, meter: CpuMeter) -> anyhow::Result<Rate> {
    let warmup = 0..plan.warmup_vouchers;
    market.purchase_all(warmup.clone(), Pace::Closed).await?;
    all_caught_up(market, others).await?;
    let mark = meter.mark();
    let (purchases, _, _) = market.purchase_all(warmup.end..warmup.end + plan.vouchers, Pace::Closed).await?;
    all_caught_up(market, others).await?;
    // Per command: latencies were measured per purchase, so none is given per command.
    let commands = Rate { operations: 3 * purchases.operations, per_s: 3.0 * purchases.per_s, p50_ms: None, p99_ms: None, ..purchases };
    Ok(mark.attach(commands))
}

/// Starts a second engine on the stream `market`'s engine writes and waits until it has
/// applied the stream (the merchants' credentials, the nodes, the media) and heard, by
/// gossip, that every node is healthy: the nodes heartbeat the first engine only, as a
/// node agent talks to one engine at a time.
async fn join_second_engine(url: &str, keys_dir: &Path, data_dir: &Path, market: &GrpcMarket) -> anyhow::Result<RunningEngine> {
    let log: Arc<dyn EventLog> = Arc::new(JetStreamLog::connect(url, PURCHASE_STREAM).await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1 for the bench's second engine")?;
    let second = crate::server::start(EngineConfig::new(data_dir.to_path_buf(), keys_dir.to_path_buf()), log, listener).await?;
    let nodes: Vec<NodeId> = market.node_clients.keys().map(|id| NodeId::new(id.as_str())).collect();
    let started = Instant::now();
    loop {
        let head = market.engine.state.log.last_seq().await?;
        let applied = tokio::time::timeout(Duration::from_millis(ENGINE_JOIN_POLL_MS), second.state.live.caught_up(head)).await.is_ok();
        if applied && nodes.iter().all(|node| second.state.nodes.healthy(node)) {
            return Ok(second);
        }
        if started.elapsed() > Duration::from_millis(ENGINE_JOIN_MS) {
            second.shutdown().await?;
            anyhow::bail!("the bench's second engine did not apply the stream and hear every node within {ENGINE_JOIN_MS} ms");
        }
        tokio::time::sleep(Duration::from_millis(ENGINE_JOIN_POLL_MS)).await;
    }
}
