//! The command handler: the imperative shell around `decide`/`evolve`.
//!
//! For one command on one aggregate it loads the aggregate (from a bounded in-memory cache
//! fed by its own appends, or by reading the aggregate's subject), decides at the clock's
//! `now`, appends the events with the OCC expectation (the subject's last sequence) and an
//! idempotency key derived from (actor, request id, subject, index), and on a version
//! conflict reloads and decides again, up to `APPEND_RETRIES_MAX` times.
//!
//! Commands on one aggregate are serialized in this process by a striped lock (so a busy
//! voucher does not burn OCC retries); commands on different aggregates run concurrently
//! and their appends are pipelined by the log. Several engine processes may share a
//! stream: OCC keeps them correct.

use crate::clock::Clock;
use crate::crypto;
use crate::domain::{Actor, Aggregate, AggregateRef, Event, Outcome, Recorded, Rejection, Root};
use crate::ids::{Millis, RequestId, Seq, idempotency_key};
use crate::log::{AppendError, AppendRequest, EventLog, Expected, ReadError, StoredEvent};
use crate::wire;
use std::any::Any;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// How many times a command is re-decided after losing an OCC race before it is refused
/// with `HandleError::Contended` (gRPC Aborted).
pub const APPEND_RETRIES_MAX: usize = 16;
/// How many aggregates the cache holds. Commands on one aggregate come close together
/// (a purchase is Reserve, Authorize, IssueVoucher within moments; a few hundred are in
/// flight), so the recent aggregates are what the cache is for: the rest of a long-lived
/// engine's aggregates are history, and keeping them (a voucher's root is a few KB with
/// its applied requests) made memory grow with every voucher sold. A miss costs one read
/// of the aggregate's subject, and none for a new aggregate (assumed new, module docs).
pub const CACHE_AGGREGATES_MAX: usize = 4_096;
/// How many times a refusal is checked against the subject's newest state (and decided
/// again on it) before it is answered.
const STALE_REFUSAL_CHECKS_MAX: usize = 2;
/// Reads of a subject waiting for a lagging copy to hold a known event, and the pause
/// between them.
const STALE_READS_MAX: usize = 20;
const STALE_READ_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);
/// Number of per-aggregate lock stripes.
const LOCK_STRIPES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the aggregate changed {0} times while deciding; retry with the same request id")]
    Contended(usize),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("event at sequence {seq} does not decode: {error}")]
    Decode { seq: Seq, error: wire::DecodeError },
}

/// What a handled command did.
#[derive(Debug, Clone)]
pub struct Handled<A> {
    /// The aggregate after the command (shared with the cache: no copy per command).
    pub root: Arc<Root<A>>,
    /// The sequences of the events this command appended (empty when repeated or no-op).
    pub appended: Vec<Seq>,
    /// The same request had been applied before; nothing was written.
    pub repeated: bool,
    /// The decision time.
    pub now: Millis,
}

/// A cached `Arc<Root<A>>` with its last stream sequence (for `observe`), by subject.
struct CachedRoot {
    last_seq: Option<Seq>,
    root: Box<dyn Any + Send + Sync>,
}

pub struct Handler {
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    cache: Mutex<lru::LruCache<String, CachedRoot>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    stripe_hasher: std::hash::RandomState,
    /// Which applied events were this engine's appends (`writers`); once one was not,
    /// `load_current` asks the log for each subject's newest sequence.
    writers: Mutex<writers::Writers>,
    others_append: std::sync::atomic::AtomicBool,
}

mod writers;

impl Handler {
    pub fn new(log: Arc<dyn EventLog>, clock: Arc<dyn Clock>) -> Self {
        Self::with_cache_capacity(log, clock, CACHE_AGGREGATES_MAX)
    }

    pub fn with_cache_capacity(log: Arc<dyn EventLog>, clock: Arc<dyn Clock>, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            log,
            clock,
            cache: Mutex::new(lru::LruCache::new(capacity)),
            stripes: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            stripe_hasher: std::hash::RandomState::new(),
            writers: Mutex::new(writers::Writers::default()),
            others_append: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The lock stripe of the aggregate on `subject` (a fast keyed hash: the stripe only
    /// spreads aggregates over locks, nothing depends on its value).
    fn stripe(&self, subject: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::BuildHasher as _;
        let index = self.stripe_hasher.hash_one(subject) as usize;
        &self.stripes[index % LOCK_STRIPES]
    }

    fn cached<A: Aggregate>(&self, aggregate: &AggregateRef) -> Option<Arc<Root<A>>> {
        let mut cache = self.cache.lock().expect("cache lock is never poisoned: no code panics while holding it");
        cache.get(&aggregate.subject()).and_then(|cached| cached.root.downcast_ref::<Arc<Root<A>>>()).cloned()
    }

    /// Takes the aggregate out of the cache (the caller holds its stripe lock and puts the
    /// next state back), so that the only other holders are readers of a moment ago and
    /// the next state is usually made without copying.
    fn take_cached<A: Aggregate>(&self, aggregate: &AggregateRef) -> Option<Arc<Root<A>>> {
        let mut cache = self.cache.lock().expect("cache lock is never poisoned: no code panics while holding it");
        cache.pop(&aggregate.subject()).and_then(|cached| cached.root.downcast::<Arc<Root<A>>>().ok()).map(|root| *root)
    }

    fn remember<A: Aggregate>(&self, aggregate: AggregateRef, root: Arc<Root<A>>) {
        let cached = CachedRoot { last_seq: root.last_seq, root: Box::new(root) };
        let mut cache = self.cache.lock().expect("cache lock is never poisoned: no code panics while holding it");
        cache.put(aggregate.subject(), cached);
    }

    fn forget(&self, aggregate: &AggregateRef) {
        let mut cache = self.cache.lock().expect("cache lock is never poisoned: no code panics while holding it");
        cache.pop(&aggregate.subject());
    }

    /// The follower applied the event at `seq` on `subject`: a cached aggregate older than
    /// it (another engine appended) is dropped, so the next load reads the subject again.
    /// What an engine checks without appending (certificates, suspensions, node status,
    /// configuration) is then at most the follower's lag behind the stream, whoever wrote.
    pub fn observe(&self, subject: &str, seq: Seq) {
        if !self.others_append() {
            self.writers(|writers| writers.applied(seq));
        }
        let mut cache = self.cache.lock().expect("cache lock is never poisoned: no code panics while holding it");
        if cache.peek(subject).is_some_and(|cached| cached.last_seq.is_none_or(|last| last < seq)) {
            cache.pop(subject);
        }
    }

    /// Runs `change` on the bookkeeping of who appends, and notes when it found another
    /// engine's append.
    fn writers<T>(&self, change: impl FnOnce(&mut writers::Writers) -> T) -> T {
        let mut writers = self.writers.lock().expect("writers lock is never poisoned");
        let result = change(&mut writers);
        if writers.others() && !self.others_append() {
            self.others_append.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!("another engine appends to this stream: use cases check the subjects' heads");
        }
        result
    }

    /// Whether the follower applied an event another engine appended (`observe`).
    pub fn others_append(&self) -> bool {
        self.others_append.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The aggregate read anew when the subject's head (from the log's authority) is past
    /// `known`, the state a refusal was decided on; None when `known` is the newest.
    pub async fn refreshed<A: Aggregate>(&self, id: &str, known: Option<Seq>) -> Result<Option<Arc<Root<A>>>, HandleError> {
        let aggregate = AggregateRef::new(A::KIND, id);
        match self.newer_than(&aggregate.subject(), known).await? {
            Some(newer) => {
                self.forget(&aggregate);
                Ok(Some(self.load_until::<A>(id, newer).await?))
            }
            None => Ok(None),
        }
    }

    /// As `load`, and once other engines append to the stream (`observe`), checked against
    /// the log's authority (one subject-head read): a use case deciding what to do on the
    /// state (issue, move or renew; refuse before placing) sees another engine's append
    /// of a moment ago, not only once the follower applied it.
    pub async fn load_current<A: Aggregate>(&self, id: &str) -> Result<Arc<Root<A>>, HandleError> {
        let root = self.load::<A>(id).await?;
        if !self.others_append.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(root);
        }
        Ok(self.refreshed::<A>(id, root.last_seq).await?.unwrap_or(root))
    }

    /// The aggregate as of the log (reading its subject), bypassing the cache. Where reads
    /// may come from a lagging copy (`EventLog::reads_may_lag`), read until the subject's
    /// newest event (from the log's authority) is in: another engine's append is seen.
    pub async fn load_fresh<A: Aggregate>(&self, id: &str) -> Result<Arc<Root<A>>, HandleError> {
        let root = self.read_once::<A>(id).await?;
        if !self.log.reads_may_lag() {
            return Ok(root);
        }
        match self.newer_than(&AggregateRef::new(A::KIND, id).subject(), root.last_seq).await? {
            Some(newer) => self.load_until::<A>(id, newer).await,
            None => Ok(root),
        }
    }

    async fn read_once<A: Aggregate>(&self, id: &str) -> Result<Arc<Root<A>>, HandleError> {
        let aggregate = AggregateRef::new(A::KIND, id);
        let stored = self.log.read_subject(&aggregate.subject()).await?;
        let root = Arc::new(fold_stored::<A>(stored)?);
        self.remember(aggregate, Arc::clone(&root));
        Ok(root)
    }

    /// The aggregate if it is in the cache; never reads the log.
    pub fn peek<A: Aggregate>(&self, id: &str) -> Option<Arc<Root<A>>> {
        self.cached::<A>(&AggregateRef::new(A::KIND, id))
    }

    /// The aggregate if it exists (has events): from the cache, or read from the log and
    /// then cached. An aggregate with no events is not cached, so looking up ids nobody
    /// created (a credential check of a made-up id) evicts nothing.
    pub async fn load_existing<A: Aggregate>(&self, id: &str) -> Result<Option<Arc<Root<A>>>, HandleError> {
        let aggregate = AggregateRef::new(A::KIND, id);
        if let Some(root) = self.cached::<A>(&aggregate) {
            return Ok(Some(root));
        }
        let stored = self.log.read_subject(&aggregate.subject()).await?;
        let read_last = stored.last().map(|event| event.seq);
        // A lagging copy may not have it yet (`load_fresh`).
        if self.log.reads_may_lag()
            && let Some(newer) = self.newer_than(&aggregate.subject(), read_last).await?
        {
            return Ok(Some(self.load_until::<A>(id, newer).await?));
        }
        if stored.is_empty() {
            return Ok(None);
        }
        let root = Arc::new(fold_stored::<A>(stored)?);
        self.remember(aggregate, Arc::clone(&root));
        Ok(Some(root))
    }

    /// The aggregate, from the cache when present (shared, not copied).
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Arc<Root<A>>, HandleError> {
        let aggregate = AggregateRef::new(A::KIND, id);
        match self.cached::<A>(&aggregate) {
            Some(root) => Ok(root),
            None => self.load_fresh(id).await,
        }
    }

    /// Decides `command` on aggregate `id` and appends what it decides.
    ///
    /// An aggregate not in the cache is first assumed new: a creating command (a Reserve
    /// of a voucher id never seen) is decided on the empty aggregate and appended with the
    /// expectation that its subject is empty, which saves reading the subject (a server
    /// round trip per new voucher). When the subject is not empty the append is refused
    /// as a version conflict, and the command is decided again on what the log holds; any
    /// other outcome on the assumed-empty aggregate (a refusal, a repeat) is never
    /// answered but decided again on the log's state too.
    pub async fn handle<A: Aggregate>(&self, id: &str, actor: &Actor, request: &RequestId, command: &A::Command) -> Result<Handled<A>, HandleError> {
        let aggregate = AggregateRef::new(A::KIND, id);
        let subject = aggregate.subject();
        let _serialized = self.stripe(&subject).lock().await;
        let mut stale_checks = 0;
        let (mut root, mut assumed_empty) = match self.take_cached::<A>(&aggregate) {
            Some(root) => (root, false),
            None => (Arc::new(Root::<A>::default()), true),
        };
        for _attempt in 0..=APPEND_RETRIES_MAX {
            let now = self.clock.now();
            let decided = root.decide(actor, request, command, now);
            if assumed_empty && !matches!(decided, Ok(Outcome::Emit(_))) {
                assumed_empty = false;
                root = self.load_fresh::<A>(id).await?;
                continue;
            }
            // Refused, or nothing to append, on what this engine had: is it the subject's
            // newest state? (Another engine may have appended since, and a JetStream
            // replica can answer a read with a lagging copy: neither appends anything, so
            // no expectation would catch either.)
            let stale_suspect = decided.is_err() || matches!(&decided, Ok(Outcome::Emit(events)) if events.is_empty());
            if stale_suspect
                && stale_checks < STALE_REFUSAL_CHECKS_MAX
                && let Some(newer) = self.newer_than(&subject, root.last_seq).await?
            {
                stale_checks += 1;
                self.forget(&aggregate);
                root = self.load_until::<A>(id, newer).await?;
                continue;
            }
            let events = match decided {
                Ok(Outcome::Repeated) => {
                    self.remember(aggregate, Arc::clone(&root));
                    return Ok(Handled { root, appended: vec![], repeated: true, now });
                }
                Ok(Outcome::Emit(events)) => events,
                Err(rejection) => {
                    if !assumed_empty {
                        self.remember(aggregate, root);
                    }
                    return Err(rejection.into());
                }
            };
            let cached = (!assumed_empty).then(|| Arc::clone(&root));
            match self.append_all(&aggregate, &subject, actor, request, A::command_name(command), root, events, now).await {
                Ok(Ok((next, appended))) => {
                    let next = Arc::new(next);
                    self.remember(aggregate, Arc::clone(&next));
                    return Ok(Handled { root: next, appended, repeated: false, now });
                }
                Err(error) => {
                    // The log failed (the outcome may be unknown): keep what we knew.
                    if let Some(cached) = cached {
                        self.remember(aggregate, cached);
                    }
                    return Err(error);
                }
                Ok(Err(())) => {
                    // Lost a race with another writer (another engine process), or the
                    // aggregate assumed new was not: reload and decide again on the state
                    // that won.
                    drop(cached);
                    assumed_empty = false;
                    self.forget(&aggregate);
                    root = self.load_fresh::<A>(id).await?;
                }
            }
        }
        Err(HandleError::Contended(APPEND_RETRIES_MAX))
    }

    /// The subject's newest sequence when it is past `known` (the state a refusal was
    /// decided on), from the log's authority.
    async fn newer_than(&self, subject: &str, known: Option<Seq>) -> Result<Option<Seq>, HandleError> {
        let last = self.log.subject_last_seq(subject).await?;
        Ok(last.filter(|last| known.is_none_or(|known| *last > known)))
    }

    /// The aggregate read until it includes the event at `seq` (a lagging copy catches up
    /// within moments), at most `STALE_READS_MAX` reads; the newest read otherwise.
    async fn load_until<A: Aggregate>(&self, id: &str, seq: Seq) -> Result<Arc<Root<A>>, HandleError> {
        let mut root = self.read_once::<A>(id).await?;
        for _ in 0..STALE_READS_MAX {
            if root.last_seq.is_some_and(|last| last >= seq) {
                break;
            }
            tokio::time::sleep(STALE_READ_PAUSE).await;
            root = self.read_once::<A>(id).await?;
        }
        Ok(root)
    }

    /// Appends `events` in order; `Ok(Err(()))` on a version conflict.
    #[allow(clippy::too_many_arguments)]
    async fn append_all<A: Aggregate>(
        &self,
        aggregate: &AggregateRef,
        subject: &str,
        actor: &Actor,
        request: &RequestId,
        command: &str,
        root: Arc<Root<A>>,
        events: Vec<Event>,
        now: Millis,
    ) -> Result<Result<(Root<A>, Vec<Seq>), ()>, HandleError> {
        // Copies only when someone else still holds this state (a reader a moment ago).
        let mut next = Arc::unwrap_or_clone(root);
        let mut appended = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            let key = idempotency_key(&format!("{}:{}", actor.kind.name(), actor.id), request, subject, index);
            let recorded = Recorded {
                event_id: event_id_of(&key),
                aggregate: aggregate.clone(),
                aggregate_version: next.version + 1,
                recorded_at: now,
                request_id: request.0.clone(),
                actor: actor.clone(),
                command: command.to_string(),
                event,
            };
            let expected = next.last_seq.map_or(Expected::Empty, Expected::LastSeq);
            let append = AppendRequest { subject: subject.to_string(), expected, idempotency_key: key, payload: wire::encode(&recorded).into() };
            let ticket = self.writers(writers::Writers::starting);
            let appended_one = self.log.append(append).await;
            let stored = match &appended_one {
                Ok(Ok(done)) if !done.duplicate => Some(done.seq),
                _ => None,
            };
            self.writers(|writers| writers.finished(ticket, stored));
            match appended_one? {
                Ok(done) if done.duplicate => {
                    // An earlier attempt of this very request was stored (a retry after an
                    // unknown outcome): our cached view is behind; reload.
                    return Ok(Err(()));
                }
                Ok(done) => {
                    next.apply(done.seq, &recorded);
                    appended.push(done.seq);
                }
                Err(_conflict) => return Ok(Err(())),
            }
        }
        Ok(Ok((next, appended)))
    }
}

/// Event ids are derived from the idempotency key, so a retried append carries identical
/// bytes and both backends store identical payloads for the same command script.
fn event_id_of(idempotency_key: &str) -> [u8; 16] {
    let hash = crypto::derive_hash("vouchsafe 2026 event id", idempotency_key.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash[..16]);
    id
}

/// An aggregate rebuilt from its stored events, in order.
fn fold_stored<A: Aggregate>(stored: Vec<StoredEvent>) -> Result<Root<A>, HandleError> {
    let mut root = Root::<A>::default();
    for event in stored {
        let recorded = wire::decode(&event.payload).map_err(|error| HandleError::Decode { seq: event.seq, error })?;
        root.apply(event.seq, &recorded);
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::party::{Merchant, MerchantCommand, MerchantStatus};
    use crate::ids::MerchantId;

    /// Two engines (two handlers) on one log: a merchant suspended through one is seen
    /// suspended by the other once its follower tells it the suspension's sequence
    /// (`observe`); without that, the other's cache answers the stale state for good.
    #[tokio::test]
    async fn a_change_another_engine_appended_reaches_this_engines_checks_once_observed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log: Arc<dyn EventLog> = Arc::new(crate::log::embedded::EmbeddedLog::open(dir.path()).expect("log"));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Millis(1_000)));
        let (a, b) = (Handler::new(Arc::clone(&log), Arc::clone(&clock)), Handler::new(Arc::clone(&log), Arc::clone(&clock)));
        let operator = Actor::new(crate::domain::ActorKind::Operator, "op");
        let register = MerchantCommand::Register { merchant: MerchantId::new("m1"), name: "Shop".into(), credential_hash: [1; 32] };
        a.handle::<Merchant>("m1", &operator, &RequestId("r1".into()), &register).await.expect("registered");
        assert_eq!(b.load::<Merchant>("m1").await.expect("load").state.status, MerchantStatus::Active);
        let suspended =
            a.handle::<Merchant>("m1", &operator, &RequestId("r2".into()), &MerchantCommand::Suspend { reason: "fraud".into() }).await.expect("suspended");
        let seq = suspended.appended[0];
        // The protection off: nothing told b, whose cache still answers Active.
        assert_eq!(b.load::<Merchant>("m1").await.expect("load").state.status, MerchantStatus::Active, "stale without observe");
        b.observe("vs.merchant.m1", Seq(seq.0 - 1));
        assert_eq!(b.load::<Merchant>("m1").await.expect("load").state.status, MerchantStatus::Active, "an older sequence changes nothing");
        b.observe("vs.merchant.m1", seq);
        assert_eq!(b.load::<Merchant>("m1").await.expect("load").state.status, MerchantStatus::Suspended, "observed: read again");
        a.observe("vs.merchant.m1", seq);
        assert!(a.peek::<Merchant>("m1").is_some(), "its own append is not dropped from the cache");
    }

    /// Before b's follower applied a's append: b's cache is stale, and a use case deciding
    /// on it would answer otherwise than one engine (the protection off: `load`). Once b
    /// saw any event it did not append, `load_current` asks the log for the subject's head
    /// and reads the newer state; and a refusal decided on the stale state is decided again
    /// on the newest (`handle`).
    #[tokio::test]
    async fn another_engines_append_of_a_moment_ago_is_seen_before_the_follower_applies_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log: Arc<dyn EventLog> = Arc::new(crate::log::embedded::EmbeddedLog::open(dir.path()).expect("log"));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Millis(1_000)));
        let (a, b) = (Handler::new(Arc::clone(&log), Arc::clone(&clock)), Handler::new(Arc::clone(&log), Arc::clone(&clock)));
        let operator = Actor::new(crate::domain::ActorKind::Operator, "op");
        let register = MerchantCommand::Register { merchant: MerchantId::new("m1"), name: "Shop".into(), credential_hash: [1; 32] };
        let registered = a.handle::<Merchant>("m1", &operator, &RequestId("r1".into()), &register).await.expect("registered");
        let suspend = MerchantCommand::Suspend { reason: "fraud".into() };
        b.handle::<Merchant>("m1", &operator, &RequestId("r2".into()), &suspend).await.expect("suspended through b");
        assert!(!b.others_append(), "b has seen nothing of a's yet");
        // b's follower applies a's registration: b knows another engine appends.
        b.observe("vs.merchant.m1", registered.appended[0]);
        assert!(b.others_append());
        let reinstate = MerchantCommand::Reinstate { reason: "cleared".into() };
        let cached = a.peek::<Merchant>("m1").expect("a cached its registration");
        assert!(
            matches!(cached.decide(&operator, &RequestId("r3".into()), &reinstate, clock.now()), Ok(Outcome::Emit(events)) if events.is_empty()),
            "the protection off: on a's stale Active, reinstating changes nothing"
        );
        let reinstated = a.handle::<Merchant>("m1", &operator, &RequestId("r3".into()), &reinstate).await;
        assert!(reinstated.is_ok_and(|handled| handled.appended.len() == 1), "decided again on the newest state: reinstated");
        // The protection off: b's cache (not told of a's reinstatement) answers Suspended.
        assert_eq!(b.load::<Merchant>("m1").await.expect("load").state.status, MerchantStatus::Suspended, "stale");
        assert_eq!(b.load_current::<Merchant>("m1").await.expect("load").state.status, MerchantStatus::Active, "the subject's head is newer: read again");
    }

    /// Event ids are inside every stored payload, so their bytes must never change: pinned
    /// to what the derivation gave before it moved to `crypto::derive_hash`.
    #[test]
    fn event_ids_are_stable() {
        assert_eq!(hex::encode(super::event_id_of("key-1")), "2f34957876111cc619a98832fd8b64fd");
    }
}
