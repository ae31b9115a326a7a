//! `Live`: the projections kept current by following the log, shared with the engine as
//! its allocator; in memory only (`with_keys`, `with_projections`) or backed by the
//! projection store (`open`, `open_checked`), which commits every applied batch with its
//! checkpoint. Rebuilds itself when the log went back under it (`RunError::Diverged`).
//! What is deliberately not here: the projections themselves (`crate::Projections`).

use crate::store;
use crate::store::{CommitError, LoadError, OpenOutcome, ProjectionStore, StoreError};
use crate::{Finding, Projections, SealError, stream_link};
use engine::crypto::{RsaPublic, SecretKey};
use engine::domain::event::RightsReportSealed;
use engine::ids::{MerchantId, Millis, NodeId, Seq};
use engine::log::EventLog;
use engine::placement::{Allocator, LEASE_TERMS, LeaseWish, Order, Placed};
use futures::StreamExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Events applied between two commits of a store-backed `Live`, at most. A batch also
/// ends when the log has no more events ready, so a quiet stream commits at once; under
/// load one flush serves up to this many events.
pub const BATCH_EVENTS_MAX: usize = 1024;

/// Projections shared between the live runner and the engine (as its allocator), in
/// memory only (`new`, `with_projections`) or backed by a projection store (`open`).
#[derive(Clone)]
pub struct Live {
    inner: Arc<Mutex<Projections>>,
    applied: Arc<tokio::sync::watch::Sender<Seq>>,
    /// The durable store, when the projections are backed by one.
    store: Option<Arc<ProjectionStore>>,
    /// The last sequence committed to the store.
    committed: Arc<tokio::sync::watch::Sender<Seq>>,
    batch_events_max: usize,
    /// Empty projections with the same keys, for a rebuild from sequence 1 when the log
    /// went back under `run` (`rebuild`); `None` (`with_projections`): such a log stops
    /// `run` with `RunError::Diverged`.
    fresh: Option<Arc<dyn Fn() -> Projections + Send + Sync>>,
    /// Told (subject, sequence) of each event applied (`observe_applied`): the engine's
    /// aggregate cache drops what another engine changed.
    observer: Arc<std::sync::OnceLock<Observer>>,
    /// The allocation's `lease_generation` after each event applied that changed it.
    leases: Arc<tokio::sync::watch::Sender<u64>>,
}

/// What `Live::observe_applied` calls for each event applied.
pub type Observer = Arc<dyn Fn(&str, Seq) + Send + Sync>;

/// Empty projections: with `master`, computing the royalty chain; with `engine_key`,
/// checking seal signatures.
fn empty_projections(master: Option<&SecretKey>, engine_key: Option<RsaPublic>) -> Projections {
    let mut projections = match master {
        Some(master) => Projections::with_royalty_keys(master, engine_key),
        None => {
            let mut projections = Projections::default();
            projections.royalty.engine_key = engine_key;
            projections
        }
    };
    projections.royalty.learns_engine_keys = true;
    projections
}

/// A factory of `empty_projections` for these keys.
fn fresh_factory(master: Option<&SecretKey>, engine_key: Option<RsaPublic>) -> Arc<dyn Fn() -> Projections + Send + Sync> {
    let master = master.cloned();
    Arc::new(move || empty_projections(master.as_ref(), engine_key.clone()))
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    /// Empty projections in memory, without keys.
    pub fn new() -> Self {
        Self::with_keys(None, None)
    }

    /// Empty projections in memory: with `master` they compute the royalty chain, with
    /// `engine_key` they check seal signatures. They rebuild themselves when the log goes
    /// back under `run`.
    pub fn with_keys(master: Option<&SecretKey>, engine_key: Option<RsaPublic>) -> Self {
        let mut live = Self::with_projections(empty_projections(master, engine_key.clone()));
        live.fresh = Some(fresh_factory(master, engine_key));
        live
    }

    /// These projections in memory. `run` cannot rebuild them (it does not know their
    /// keys): a log that goes back under it stops it with `RunError::Diverged`.
    pub fn with_projections(projections: Projections) -> Self {
        let (applied, _) = tokio::sync::watch::channel(Seq(0));
        let (committed, _) = tokio::sync::watch::channel(Seq(0));
        Self {
            inner: Arc::new(Mutex::new(projections)),
            applied: Arc::new(applied),
            store: None,
            committed: Arc::new(committed),
            batch_events_max: BATCH_EVENTS_MAX,
            fresh: None,
            observer: Arc::default(),
            leases: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Live projections backed by the projection store in `dir`: opens it (quarantining a
    /// damaged one, `store::ProjectionStore::open`) and loads its checkpoint, so `run`
    /// continues at `checkpoint + 1` and commits every batch. A store that must be rebuilt
    /// for the given keys (built without the master key, now given) is quarantined too;
    /// `OpenOutcome` says which. With `master` the royalty chain is computed (resumed);
    /// without it the chain says it needs `A_0`, as in memory. Blocking: it reads and
    /// checks the whole store (about 0.3 s for the state of 100k events), so call it at
    /// start-up or on the blocking pool.
    ///
    /// It does not know which log `run` will follow: a store resumed against another
    /// stream would go on as if it were the same one. `open_checked` checks the log first.
    pub fn open(dir: &Path, master: Option<&SecretKey>, engine_key: Option<RsaPublic>) -> Result<(Live, OpenOutcome), StoreError> {
        let (store, outcome) = ProjectionStore::open(dir)?;
        let storage = |reason: String| StoreError::Storage { path: dir.to_path_buf(), reason };
        let (store, outcome, projections) = match store.load(master, engine_key.clone()) {
            Ok(projections) => (store, outcome, projections),
            Err(LoadError::MasterKeyMismatch(fault)) => return Err(StoreError::MasterKeyMismatch { path: dir.to_path_buf(), reason: fault.to_string() }),
            Err(LoadError::Storage(reason)) => return Err(storage(reason)),
            // Not quarantined: without the master key a rebuild could not chain either, and
            // the directory is what the operator and the auditor need to look at.
            Err(LoadError::ChainKey(reason)) => return Err(StoreError::ChainKey { path: dir.to_path_buf(), reason }),
            Err(rebuild @ (LoadError::ChainNotFromStart | LoadError::Inconsistent(_))) => {
                let (store, outcome) = store.quarantine(&rebuild.to_string())?;
                let projections = store.load(master, engine_key.clone()).map_err(|e| storage(e.to_string()))?;
                (store, outcome, projections)
            }
        };
        Ok((Self::from_store(store, projections, fresh_factory(master, engine_key)), outcome))
    }

    /// `open`, then a check that `log` is the stream the store was built from: the log's
    /// event at the checkpoint's sequence must be the one applied last, byte for byte
    /// (`stream_link(checkpoint.stream_head_before, event) == checkpoint.stream_head`; one
    /// read, whatever the length of the stream). When the log has no event there (it is
    /// shorter: another stream, or one re-created since) or another one, or the checkpoint
    /// cannot be checked (it does not record the stream head before its last event), the
    /// store is quarantined (moved aside, never deleted) and a new one rebuilds from
    /// sequence 1: `OpenOutcome::Quarantined`, whose reason starts with `STREAM_MISMATCH`.
    /// What one event cannot see: a log equal at the checkpoint but different before it
    /// (`store::checkpoint` module docs). The store is opened and checked on the blocking pool.
    pub async fn open_checked(
        dir: &Path,
        master: Option<&SecretKey>,
        engine_key: Option<RsaPublic>,
        log: &dyn EventLog,
    ) -> Result<(Live, OpenOutcome), StoreError> {
        let task_failed = |error: tokio::task::JoinError| StoreError::Storage { path: dir.to_path_buf(), reason: format!("the open task failed: {error}") };
        let (path, key, public) = (dir.to_path_buf(), master.cloned(), engine_key.clone());
        let (live, outcome) = tokio::task::spawn_blocking(move || Self::open(&path, key.as_ref(), public)).await.map_err(task_failed)??;
        let store = live.store.as_ref().map(|store| store.checkpoint());
        let Some(checkpoint) = store else { return Ok((live, outcome)) };
        let Some(mismatch) = stream_mismatch(&checkpoint, log).await.map_err(|reason| StoreError::Log { path: dir.to_path_buf(), reason })? else {
            return Ok((live, outcome));
        };
        let Live { store, fresh, .. } = live;
        let store =
            store.and_then(Arc::into_inner).ok_or_else(|| StoreError::Storage { path: dir.to_path_buf(), reason: "the store is still shared".into() })?;
        let fresh = fresh.ok_or_else(|| StoreError::Storage { path: dir.to_path_buf(), reason: "a store-backed Live without a factory".into() })?;
        let (path, key) = (dir.to_path_buf(), master.cloned());
        tokio::task::spawn_blocking(move || {
            let (store, outcome) = store.quarantine(&mismatch)?;
            let projections = store.load(key.as_ref(), engine_key).map_err(|e| StoreError::Storage { path, reason: e.to_string() })?;
            Ok((Self::from_store(store, projections, fresh), outcome))
        })
        .await
        .map_err(task_failed)?
    }

    /// A `Live` on a store and the projections loaded from it.
    fn from_store(store: ProjectionStore, mut projections: Projections, fresh: Arc<dyn Fn() -> Projections + Send + Sync>) -> Live {
        projections.royalty.learns_engine_keys = true;
        let last_seq = projections.last_seq;
        let (applied, _) = tokio::sync::watch::channel(last_seq);
        let (committed, _) = tokio::sync::watch::channel(last_seq);
        Live {
            inner: Arc::new(Mutex::new(projections)),
            applied: Arc::new(applied),
            store: Some(Arc::new(store)),
            committed: Arc::new(committed),
            batch_events_max: BATCH_EVENTS_MAX,
            fresh: Some(fresh),
            observer: Arc::default(),
            leases: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// The same projections, committing at most `events_max` (≥ 1) events per batch
    /// (default `BATCH_EVENTS_MAX`); tests use small batches to have many commit points.
    pub fn with_batch_events_max(mut self, events_max: usize) -> Self {
        self.batch_events_max = events_max.max(1);
        self
    }

    /// The last sequence committed to the projection store (`Seq(0)` in memory only).
    pub fn checkpoint(&self) -> Seq {
        *self.committed.borrow()
    }

    /// Waits until the projection store has committed `seq` (for a store-backed `Live`;
    /// in memory only nothing is ever committed, so this waits for ever).
    pub async fn committed(&self, seq: Seq) {
        let mut committed = self.committed.subscribe();
        // The sender lives as long as `self`, so wait_for only ends when the condition holds.
        let _ = committed.wait_for(|committed| *committed >= seq).await;
    }

    /// Follows the checkpoint as batches are committed.
    pub fn watch_checkpoint(&self) -> tokio::sync::watch::Receiver<Seq> {
        self.committed.subscribe()
    }

    /// How many events the projections are behind the log's `head` (its last sequence).
    pub fn lag(&self, head: Seq) -> u64 {
        head.0.saturating_sub(self.read(|p| p.last_seq.0))
    }

    /// A draft seal of the royalty entries not sealed yet, when at least `entries_min`
    /// (≥ 1) are waiting (`Projections::unsigned_seal`), for `engine::app::Market::seal` to
    /// sign and append. `None` when there is nothing to seal, or while the projections lag
    /// the log's `head` by more than half the stream heads kept (`STREAM_HEADS_MAX`): the
    /// seal names the projections' position, which must still be among the heads a replay
    /// keeps when the seal lands after the log's head.
    pub fn seal_draft(&self, head: Seq, entries_min: u64) -> Result<Option<RightsReportSealed>, SealError> {
        self.read(|p| {
            if head.0.saturating_sub(p.last_seq.0) > (crate::STREAM_HEADS_MAX / 2) as u64 {
                tracing::info!(log_head = head.0, "not sealing while the projections lag the log by more than half the stream heads kept");
                return Ok(None);
            }
            p.unsigned_seal(entries_min)
        })
    }

    /// Runs `f` on the current projections.
    /// The engine's keys before its current one (a rotated key set): seals are checked with
    /// the key they name.
    pub fn add_older_engine_keys(&self, older: Vec<RsaPublic>) {
        let mut projections = self.lock();
        for key in older {
            if !projections.royalty.older_engine_keys.iter().any(|known| known.key_id() == key.key_id()) {
                projections.royalty.older_engine_keys.push(key);
            }
        }
    }

    pub fn read<T>(&self, f: impl FnOnce(&Projections) -> T) -> T {
        f(&self.inner.lock().expect("projection lock is never poisoned: apply does not panic"))
    }

    /// Follows the log from the next unapplied sequence until the stream ends or a
    /// finding stops it. Backed by a store, it commits each batch of applied events
    /// (`BATCH_EVENTS_MAX`); the events before a finding are committed before it returns.
    ///
    /// When the log goes back under it (`ReadError::Diverged`: a server lost a tail it
    /// had already delivered), the projections are rebuilt from sequence 1 (`rebuild`)
    /// and the follow goes on from there; `with_projections` ones stop with
    /// `RunError::Diverged` instead.
    pub async fn run(&self, log: Arc<dyn EventLog>) -> Result<(), RunError> {
        loop {
            let followed = match &self.store {
                Some(store) => self.run_stored(Arc::clone(&log), Arc::clone(store)).await,
                None => self.run_in_memory(Arc::clone(&log)).await,
            };
            match followed {
                Err(RunError::Diverged(reason)) if self.fresh.is_some() => {
                    tracing::warn!(%reason, "the stream went back under the live projections; rebuilding them from sequence 1");
                    let rebuilt = self.rebuild(log.as_ref()).await?;
                    tracing::info!(last_seq = rebuilt.0, "live projections rebuilt; following on");
                }
                other => return other,
            }
        }
    }

    async fn run_in_memory(&self, log: Arc<dyn EventLog>) -> Result<(), RunError> {
        let from = Seq(self.read(|p| p.last_seq.0) + 1);
        let mut events = log.follow(from);
        while let Some(stored) = events.next().await {
            let stored = stored.map_err(RunError::from_read)?;
            let seq = stored.seq;
            self.apply_one(&stored)?;
            self.tell_observer(&stored);
            self.applied.send_replace(seq);
        }
        Ok(())
    }

    /// Rebuilds the projections from sequence 1 beside the current ones (which go on
    /// answering meanwhile), then swaps them in; a store-backed `Live` empties its store
    /// and commits the whole rebuilt state in one batch. Returns the last sequence applied.
    /// Process-local allocation holds (`Allocator::choose`) are dropped with the old state.
    pub async fn rebuild(&self, log: &dyn EventLog) -> Result<Seq, RunError> {
        let fresh = self.fresh.as_ref().ok_or_else(|| RunError::Diverged("these projections cannot rebuild themselves (made by with_projections)".into()))?;
        let mut projections = fresh();
        if self.read(|p| p.royalty.chained()) && !projections.royalty.chained() {
            // Without the master key (forward security) the royalty entries before the point
            // where the log went back cannot be chained again: only the auditor can.
            return Err(RunError::Diverged(
                "the projections must be rebuilt from sequence 1 and their royalty chain needs A_0, which only the auditor holds: ask for a handover (`vouchsafe audit handover`)".into(),
            ));
        }
        if let Some(holder) = self.lock().allocation.holder().map(str::to_string) {
            projections.allocation.set_holder(&holder);
        }
        if self.store.is_some() {
            projections.track_changes();
        }
        let mut from = Seq(1);
        loop {
            let events = log.read_from(from, REBUILD_PAGE_EVENTS).await.map_err(RunError::from_read)?;
            let Some(last) = events.last() else { break };
            from = Seq(last.seq.0 + 1);
            for event in &events {
                projections.apply(event)?;
            }
            tokio::task::yield_now().await;
        }
        let last_seq = projections.last_seq;
        match &self.store {
            None => {
                let generation = projections.allocation.lease_generation();
                *self.lock() = projections;
                self.applied.send_replace(last_seq);
                self.leases.send_replace(generation);
            }
            Some(store) => {
                let emptied = Arc::clone(store);
                tokio::task::spawn_blocking(move || emptied.reset()).await.map_err(|error| RunError::Store(CommitError::Task { task: "reset", error }))??;
                let prepared = {
                    let mut current = self.lock();
                    let generation = projections.allocation.lease_generation();
                    *current = projections;
                    self.applied.send_replace(last_seq);
                    self.leases.send_replace(generation);
                    store.prepare(&mut current)?
                };
                let writer = Arc::clone(store);
                let committed = tokio::task::spawn_blocking(move || writer.write(prepared))
                    .await
                    .map_err(|error| RunError::Store(CommitError::Task { task: "commit", error }))??;
                // The whole state is stored now: the rows that grow with the vouchers leave
                // memory, as after a load.
                store.spill(&mut self.lock());
                self.committed.send_replace(committed.checkpoint.last_seq);
            }
        }
        Ok(last_seq)
    }

    async fn run_stored(&self, log: Arc<dyn EventLog>, store: Arc<ProjectionStore>) -> Result<(), RunError> {
        let from = Seq(self.read(|p| p.last_seq.0) + 1);
        // `ready_chunks` yields what the log has ready, up to the limit: a batch ends when
        // the follow stream would wait.
        let mut batches = log.follow(from).ready_chunks(self.batch_events_max);
        while let Some(batch) = batches.next().await {
            let mut stop = None;
            let mut applied_any = false;
            for stored in batch {
                let outcome = stored.map_err(RunError::from_read).and_then(|stored| {
                    // Locked per event, not per batch, so the allocator never waits long.
                    self.apply_one(&stored).map_err(RunError::from)?;
                    self.tell_observer(&stored);
                    Ok(stored.seq)
                });
                match outcome {
                    Ok(seq) => {
                        applied_any = true;
                        self.applied.send_replace(seq);
                    }
                    Err(error) => {
                        stop = Some(error);
                        break;
                    }
                }
            }
            if applied_any {
                let prepared = store.prepare(&mut self.lock())?;
                let writer = Arc::clone(&store);
                let committed = tokio::task::spawn_blocking(move || writer.write(prepared))
                    .await
                    .map_err(|error| RunError::Store(CommitError::Task { task: "commit", error }))??;
                // Stored: the batch's rows need no longer be held in memory.
                ProjectionStore::rows_committed(&mut self.lock());
                self.committed.send_replace(committed.checkpoint.last_seq);
            }
            if let Some(error) = stop {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Calls `observer` with the subject and sequence of every event applied from now on
    /// (once; a second observer is refused and returned).
    pub fn observe_applied(&self, observer: Observer) -> Result<(), Observer> {
        self.observer.set(observer)
    }

    /// Applies one event, and tells `lease_changes` when the allocation's leases changed.
    fn apply_one(&self, stored: &engine::log::StoredEvent) -> Result<(), Finding> {
        let mut projections = self.lock();
        let before = projections.allocation.lease_generation();
        projections.apply(stored)?;
        let after = projections.allocation.lease_generation();
        drop(projections);
        if after != before {
            self.leases.send_replace(after);
        }
        Ok(())
    }

    fn tell_observer(&self, stored: &engine::log::StoredEvent) {
        if let Some(observer) = self.observer.get() {
            observer(&stored.subject, stored.seq);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Projections> {
        self.inner.lock().expect("projection lock is never poisoned: apply does not panic")
    }

    /// Waits until the projections have applied `seq`.
    pub async fn caught_up(&self, seq: Seq) {
        let mut applied = self.applied.subscribe();
        // The sender lives as long as `self`, so wait_for only ends when the condition holds.
        let _ = applied.wait_for(|applied| *applied >= seq).await;
    }

    /// Reservations past due at `now`, for the sweeper.
    pub fn due(&self, now: Millis, limit: usize) -> Vec<engine::ids::VoucherId> {
        self.read(|p| p.vouchers.due(now, limit))
    }

    /// Points holds past due at `now` (interrupted sagas), for the sweeper.
    pub fn due_holds(&self, now: Millis, limit: usize) -> Vec<(engine::ids::AccountId, engine::ids::VoucherId)> {
        self.read(|p| p.vouchers.due_holds(now, limit))
    }
}

impl Live {
    /// The allocator's choice among the nodes `eligible` accepts (see `Allocator::choose`),
    /// from a slot lease once `set_lease_holder` named this engine.
    pub fn choose_where(&self, order: Order, region: Option<&str>, holder: &str, now: Millis, eligible: &dyn Fn(&NodeId) -> bool) -> Option<Placed> {
        let (node, lease) = self.lock().allocation.choose_and_hold_where(order, region, holder, now, Some(LEASE_TERMS), eligible)?;
        Some(Placed { node, lease })
    }

    /// Names the engine these projections place for: slots are then given out only from
    /// its slot leases (`Allocator::lease_wish`). Kept across a rebuild.
    pub fn set_lease_holder(&self, holder: &str) {
        self.lock().allocation.set_holder(holder);
    }
}

impl engine::placement::SlotChooser for Live {
    fn choose_where(&self, order: Order, region: Option<&str>, holder: &str, now: Millis, eligible: &dyn Fn(&NodeId) -> bool) -> Option<Placed> {
        Live::choose_where(self, order, region, holder, now, eligible)
    }

    fn choose_preview_where(
        &self,
        order: Order,
        region: Option<&str>,
        holder: &str,
        merchant: &MerchantId,
        now: Millis,
        eligible: &dyn Fn(&NodeId) -> bool,
    ) -> Option<Placed> {
        let (node, lease) = self.lock().allocation.choose_preview_leased(order, region, holder, merchant, now, Some(LEASE_TERMS), eligible)?;
        Some(Placed { node, lease })
    }

    fn is_active(&self, node: &NodeId) -> bool {
        self.lock().allocation.nodes.get(node).is_some_and(|slots| slots.active)
    }

    fn cancel(&self, holder: &str) {
        Allocator::cancel(self, holder);
    }

    fn lease_holder(&self) -> Option<String> {
        self.lock().allocation.holder().map(str::to_string)
    }

    fn lease_wish(
        &self,
        order: Order,
        region: Option<&str>,
        merchant: Option<&MerchantId>,
        now: Millis,
        eligible: &dyn Fn(&NodeId) -> bool,
    ) -> Option<LeaseWish> {
        self.lock().allocation.lease_wish(order, region, merchant, now, LEASE_TERMS, eligible)
    }

    fn lease_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.leases.subscribe())
    }

    fn applied(&self) -> Option<tokio::sync::watch::Receiver<Seq>> {
        Some(self.applied.subscribe())
    }

    fn lease_upkeep(&self, now: Millis, asked_only: bool) -> Vec<LeaseWish> {
        self.lock().allocation.lease_upkeep(now, LEASE_TERMS, asked_only)
    }

    fn note_lease(&self, node: &NodeId, lease: u64, slots: u32, until: Millis, seq: Seq) {
        let mut projections = self.lock();
        // Applied already: the projection has it, and maybe later changes to it too.
        if projections.last_seq >= seq {
            return;
        }
        if let Some(holder) = projections.allocation.holder().map(str::to_string) {
            projections.allocation.note_lease(node, lease, &holder, slots, until);
        }
    }
}

/// Without a health view (in-process markets, tests): every active node is eligible, and
/// slots come from leases once `set_lease_holder` named the engine (at the clock's `now`
/// of the system: in-process markets name none).
impl Allocator for Live {
    fn choose(&self, region: Option<&str>, holder: &str) -> Option<Placed> {
        self.lock().allocation.choose_and_hold(region, holder).map(|node| Placed { node, lease: 0 })
    }

    fn choose_preview(&self, region: Option<&str>, holder: &str, merchant: &MerchantId) -> Option<Placed> {
        self.lock().allocation.choose_preview_where(region, holder, merchant, &|_| true).map(|node| Placed { node, lease: 0 })
    }

    /// A node serves while it is active.
    fn serves(&self, node: &NodeId) -> bool {
        engine::placement::SlotChooser::is_active(self, node)
    }

    fn cancel(&self, holder: &str) {
        self.lock().allocation.cancel(holder);
    }
}

impl RunError {
    fn from_read(error: engine::log::ReadError) -> Self {
        match error {
            diverged @ engine::log::ReadError::Diverged { .. } => RunError::Diverged(diverged.to_string()),
            other => RunError::Read(other.to_string()),
        }
    }
}

/// Events read per page by `Live::rebuild`.
pub const REBUILD_PAGE_EVENTS: usize = 4096;

/// The start of the quarantine reason `Live::open_checked` gives when the log is not the
/// stream the store was built from (or the store cannot tell).
pub const STREAM_MISMATCH: &str = "not the stream this projection store was built from";

/// Why `log` is not the stream a store at `checkpoint` was built from (`None`: it is), or
/// the log's read error.
async fn stream_mismatch(checkpoint: &store::Checkpoint, log: &dyn EventLog) -> Result<Option<String>, String> {
    let last_seq = checkpoint.last_seq;
    if last_seq == Seq(0) {
        return Ok(None);
    }
    let Some(before) = checkpoint.stream_head_before else {
        return Ok(Some(format!(
            "{STREAM_MISMATCH}, as far as it can tell: the checkpoint at sequence {last_seq} does not record the stream head before its last event, so the log cannot be checked against it"
        )));
    };
    let read = log.read_from(last_seq, 1).await.map_err(|e| e.to_string())?;
    match read.first() {
        Some(event) if event.seq == last_seq => {
            if stream_link(&before, event) == checkpoint.stream_head {
                Ok(None)
            } else {
                Ok(Some(format!("{STREAM_MISMATCH}: the log's event at sequence {last_seq} is not the one the store applied there")))
            }
        }
        _ => {
            let log_last = log.last_seq().await.map_err(|e| e.to_string())?;
            Ok(Some(format!(
                "{STREAM_MISMATCH}: the log ends at sequence {log_last}, before the store's checkpoint at {last_seq} (another stream, or the log was re-created)"
            )))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the log failed: {0}")]
    Read(String),
    /// The log no longer holds events the projections applied (`ReadError::Diverged`).
    #[error("{0}")]
    Diverged(String),
    #[error(transparent)]
    Finding(#[from] Finding),
    #[error("committing to the projection store failed: {0}")]
    Store(#[from] CommitError),
}
