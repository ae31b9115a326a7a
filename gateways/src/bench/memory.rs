//! Case 6: the engine's resident set after N and 10×N vouchers, measured in a child process
//! (`--rss-probe`) so nothing the other cases allocated counts.

use super::*;
use anyhow::ensure;
use std::path::Path;
use std::sync::Arc;

/// Runs `vouchsafe bench --rss-probe KEYS --nats-url URL --vouchers N` and reads its
/// answer.
pub(super) async fn rss_probe_child(url: &str, keys_dir: &Path, vouchers: usize) -> anyhow::Result<RssProbe> {
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
        tokio::spawn(async move { seal_every(&live, &market).await })
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

/// Seals every `SEAL_INTERVAL_DEFAULT`, as `serve` does, until a seal fails.
async fn seal_every(live: &projections::Live, market: &engine::app::Market) -> Result<(), crate::server::jobs::SealJobError> {
    loop {
        tokio::time::sleep(crate::server::SEAL_INTERVAL_DEFAULT).await;
        crate::server::seal_once(live, market, 1).await?;
    }
}
