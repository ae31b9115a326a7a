//! The engine's background jobs: the sweeper (reservations past due, interrupted points
//! holds), the sealer (royalty seals on the configured interval) and the rate sampler
//! (`events_per_s`), and the key follower (an engine key another engine rotated to). Not here: what to expire or seal (the projections compute it) and the
//! decision (`engine::app`).

use super::*;
use engine::app::Market;
use engine::domain::event::RightsReportSealed;
use projections::Live;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Events appended per second over the last minute, from (time, stream head) samples.
#[derive(Default)]
pub struct RateMeter {
    samples: Mutex<std::collections::VecDeque<(Instant, u64)>>,
}

/// Samples kept by the rate meter (one per second: a minute).
pub(super) const RATE_SAMPLES_MAX: usize = 60;

impl RateMeter {
    pub fn record(&self, at: Instant, head: u64) {
        let mut samples = self.samples.lock().expect("rate meter lock is never poisoned");
        samples.push_back((at, head));
        while samples.len() > RATE_SAMPLES_MAX {
            samples.pop_front();
        }
    }

    pub fn per_second(&self) -> f64 {
        let samples = self.samples.lock().expect("rate meter lock is never poisoned");
        match (samples.front(), samples.back()) {
            (Some((t0, h0)), Some((t1, h1))) if t1 > t0 => h1.saturating_sub(*h0) as f64 / t1.duration_since(*t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Reservations and points holds the sweeper settles per round at most.
pub const SWEEP_BATCH_MAX: usize = 1024;

/// Why one round of sealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealJobError {
    #[error("cannot read the log's head to check the projections' lag")]
    ReadHead(#[source] engine::log::ReadError),
    #[error("cannot draft the seal")]
    Draft(#[source] projections::SealError),
    #[error("cannot sign or append the seal")]
    Append(#[source] engine::app::AppError),
}

/// One round of sealing: the projections draft a seal of the entries not sealed yet (when
/// at least `entries_min` wait and they do not lag the log too far), the market signs and
/// appends it. `None` when there is nothing to seal or another sealer sealed first.
pub async fn seal_once(live: &Live, market: &Market, entries_min: u64) -> Result<Option<RightsReportSealed>, SealJobError> {
    let head = market.handler().log().last_seq().await.map_err(SealJobError::ReadHead)?;
    let Some(draft) = live.seal_draft(head, entries_min).map_err(SealJobError::Draft)? else { return Ok(None) };
    market.seal(draft).await.map_err(SealJobError::Append)
}

/// One round of sweeping at the engine clock's now: the projections list what is due (at
/// most `limit` of each kind), the market expires and settles it. Returns (expired, holds
/// settled).
pub async fn sweep_once(live: &Live, market: &Market, limit: usize) -> Result<(usize, usize), engine::app::AppError> {
    let now = market.now();
    let (due, due_holds) = live.read(|p| (p.vouchers.due(now, limit), p.vouchers.due_holds(now, limit)));
    market.sweep(&due, &due_holds).await
}

/// Lapses issued vouchers whose access window ended unused, and ends started previews
/// their node never reported within the clip and its grace period: their nodes' slots come
/// back. How many of each this call lapsed: (vouchers, previews).
pub async fn lapse_once(live: &Live, market: &Market, limit: usize) -> Result<(usize, usize), engine::app::AppError> {
    let now = market.now();
    let (due, due_previews) = live.read(|p| (p.vouchers.due_lapses(now, limit), p.allocation.due_preview_lapses(now, limit)));
    Ok((market.lapse_accesses(&due).await?, market.lapse_previews(&due_previews).await?))
}

/// Moves issued vouchers nobody redeemed off nodes that no longer serve them (drained,
/// removed, silent past `node.heartbeat_timeout_ms`) to nodes that do; how many moved.
pub async fn relocate_once(live: &Live, market: &Market, access_ttl_ms: u64, limit: usize) -> Result<usize, engine::app::AppError> {
    // Which nodes no longer serve is asked outside the projections' lock (the allocator
    // reads the projections itself).
    let holding: Vec<engine::ids::NodeId> = live.read(|p| p.allocation.nodes.iter().filter(|(_, node)| node.in_use > 0).map(|(id, _)| id.clone()).collect());
    let gone: std::collections::BTreeSet<engine::ids::NodeId> = holding.into_iter().filter(|node| !market.allocator().serves(node)).collect();
    if gone.is_empty() {
        return Ok(0);
    }
    let stranded = live.read(|p| p.allocation.stranded_vouchers(&|node| gone.contains(node), limit));
    market.relocate_stranded(&stranded, access_ttl_ms).await
}

/// Voids reservations past due, settles interrupted points holds, lapses unused access
/// windows, ends unreported previews, looks after the slot leases and moves vouchers off
/// nodes gone, every interval.
pub(super) async fn sweeper(state: Arc<EngineState>) {
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(state.config.sweep_interval);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        if unless_stopping(&mut shutdown, sweep_round(&state)).await.is_none() {
            return;
        }
    }
}

/// Runs `round` unless the engine stops first (`None`): a round waiting on a log that does
/// not answer (each request timing out in turn) would hold the shutdown as long. Cut short,
/// a round is left as a crash would leave it, and every step of it is idempotent.
async fn unless_stopping<T>(shutdown: &mut tokio::sync::watch::Receiver<bool>, round: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => None,
        done = round => Some(done),
    }
}

/// One round of the sweeper's.
async fn sweep_round(state: &EngineState) {
    // Every engine looks after its own slot leases; the rest is one engine's job.
    if let Err(error) = state.market.keep_leases().await {
        tracing::warn!(%error, "renewing the slot leases failed; retrying at the next interval");
    }
    if !state.runs_job("sweeper").await {
        return;
    }
    if let Err(error) = sweep_once(&state.live, &state.market, SWEEP_BATCH_MAX).await {
        tracing::warn!(%error, "sweep failed; retrying at the next interval");
    }
    if let Err(error) = lapse_once(&state.live, &state.market, SWEEP_BATCH_MAX).await {
        tracing::warn!(%error, "lapsing access windows failed; retrying at the next interval");
    }
    let access_ttl_ms = state.configured("access.ttl_ms").await.unwrap_or(state.config.access_ttl_ms);
    match relocate_once(&state.live, &state.market, access_ttl_ms, SWEEP_BATCH_MAX).await {
        Ok(0) => {}
        Ok(moved) => tracing::info!(moved, "moved vouchers off delivery nodes that no longer serve them"),
        Err(error) => tracing::warn!(%error, "moving vouchers off nodes gone failed; retrying at the next interval"),
    }
}

/// Looks after this engine's slot leases as they change (`Market::keep_leases_as_they_change`):
/// a share another engine asks for is given back within milliseconds, not at the next sweep.
pub(super) async fn lease_keeper(state: Arc<EngineState>) {
    let mut shutdown = state.shutdown.clone();
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => {}
        () = state.market.keep_leases_as_they_change() => {}
    }
}

/// Seals the royalty log when `seal.entries_max` entries wait, or when the seal interval
/// passed with at least `seal_entries_min` waiting (DESIGN.md: every N entries or T
/// seconds), and appends each seal to the witness file for auditors to pin. The operator's
/// `seal.*` configuration (events) wins over the serve settings.
pub(super) async fn sealer(state: Arc<EngineState>) {
    let mut shutdown = state.shutdown.clone();
    let mut last_seal = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(SEAL_CHECK_INTERVAL.min(state.config.seal_interval)) => {}
        }
        match unless_stopping(&mut shutdown, seal_round(&state, last_seal)).await {
            None => return,
            Some(true) => last_seal = Instant::now(),
            Some(false) => {}
        }
    }
}

/// One round of the sealer's: whether it sealed.
async fn seal_round(state: &EngineState, last_seal: Instant) -> bool {
    let interval = state.configured("seal.interval_ms").await.map_or(state.config.seal_interval, Duration::from_millis);
    let entries_max = state.configured("seal.entries_max").await.unwrap_or(u64::MAX);
    let waiting = state.live.read(|p| (p.royalty.entries.len() as u64).saturating_sub(p.royalty.next_seal_entry()));
    let due = waiting >= entries_max.max(1) || (last_seal.elapsed() >= interval && waiting >= state.config.seal_entries_min.max(1));
    if !due || !state.runs_job("sealer").await {
        return false;
    }
    match seal_once(&state.live, &state.market, state.config.seal_entries_min.max(1)).await {
        Ok(Some(seal)) => {
            if let Err(error) = crate::common::witness::append(&state.config.data_dir, &seal) {
                tracing::warn!(%error, "cannot write the witness file");
            }
            true
        }
        Ok(None) => false,
        Err(error) => {
            tracing::warn!(%error, "sealing failed; retrying at the next interval");
            false
        }
    }
}

/// Samples the stream head every second for `events_per_s`.
pub(super) async fn rate_sampler(state: Arc<EngineState>) {
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        match unless_stopping(&mut shutdown, state.log.last_seq()).await {
            None => return,
            Some(Ok(head)) => state.rate.record(Instant::now(), head.0),
            Some(Err(_)) => {}
        }
    }
}

/// How often an engine checks whether the stream rotated its key through another engine.
const KEY_FOLLOW_INTERVAL_MS: u64 = 2_000;

/// Several engines share one key history: when the stream says a key is one this engine
/// does not use (another engine recorded `EngineKeyRotated`, `TokenKeyRotated` or
/// `CheckpointKeyRotated`), it reloads its key directory and, once the new key is there,
/// uses it too (no event: the rotation is recorded). Until the key files reach its directory
/// it goes on with the old key, which stays valid (until revoked), and says so once per key.
pub(super) async fn key_follower(state: Arc<EngineState>) {
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(KEY_FOLLOW_INTERVAL_MS));
    let mut missing: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        let Some(Ok(config)) = unless_stopping(&mut shutdown, state.market.config()).await else { continue };
        let Some(wanted) = wanted_key(&config, &state.market.keys()) else { continue };
        let dir = state.config.keys_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::common::keys::load_engine_keys(&dir)).await;
        let request = engine::ids::RequestId::new(format!("key-follow-{}", wanted.name()));
        let taken = match (loaded, &wanted) {
            (Ok(Ok(keys)), WantedKey::Engine(key_id)) if keys.key_id() == *key_id => {
                let older: Vec<_> = keys.retired().iter().map(engine::crypto::RsaPrivate::public).collect();
                let taken = state.market.rotate_engine_key(&state.engine_id, &request, keys).await.map(|_| ());
                if taken.is_ok() {
                    state.live.add_older_engine_keys(older);
                }
                Some(taken)
            }
            (Ok(Ok(keys)), WantedKey::Token(key_id)) if keys.token_keys().key(*key_id).is_some() => {
                Some(state.market.rotate_token_key(&state.engine_id, &request, keys).await.map(|_| ()))
            }
            (Ok(Ok(keys)), WantedKey::Checkpoint(vkey)) if keys.checkpoint.as_ref().is_some_and(|signer| signer.verifier().vkey() == *vkey) => {
                Some(state.market.rotate_checkpoint_key(&state.engine_id, &request, keys).await.map(|_| ()))
            }
            _ => None,
        };
        match taken {
            Some(Ok(())) => missing = None,
            Some(Err(error)) => tracing::warn!(%error, key = %wanted.name(), "could not take up the key another engine rotated to"),
            None if missing.as_deref() != Some(wanted.name().as_str()) => {
                tracing::warn!(key = %wanted.name(), keys = %state.config.keys_dir.display(), "another engine rotated a key; its files are not in this engine's key directory yet: copy them there (this engine uses the old key meanwhile)");
                missing = Some(wanted.name());
            }
            None => {}
        }
    }
}

/// A key the stream names that this engine does not use yet.
enum WantedKey {
    Engine(String),
    Token(u32),
    Checkpoint(String),
}

impl WantedKey {
    fn name(&self) -> String {
        match self {
            WantedKey::Engine(key_id) => format!("engine-{key_id}"),
            WantedKey::Token(key_id) => format!("token-{key_id}"),
            WantedKey::Checkpoint(vkey) => format!("checkpoint-{}", vkey.split('+').nth(1).unwrap_or_default()),
        }
    }
}

/// The first key the configuration names that `keys` does not use (the engine key first:
/// the other rotations need it to be the same).
fn wanted_key(config: &engine::domain::config::Config, keys: &engine::app::EngineKeys) -> Option<WantedKey> {
    if let Some(key_id) = config.engine_key.as_ref().filter(|wanted| **wanted != keys.key_id()) {
        return Some(WantedKey::Engine(key_id.clone()));
    }
    if let Some(key_id) = config.token_key_id.filter(|wanted| *wanted > keys.token_key_id()) {
        return Some(WantedKey::Token(key_id));
    }
    let current = keys.checkpoint.as_ref().map(|signer| signer.verifier().vkey());
    config.checkpoint_vkey.as_ref().filter(|wanted| current.as_deref() != Some(wanted.as_str())).map(|vkey| WantedKey::Checkpoint(vkey.clone()))
}
