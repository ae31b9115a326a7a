//! Node placement, in one place: which delivery node serves a voucher or a preview.
//!
//! Three inputs decide it. The allocation projection (`projections::allocation`) counts
//! each node's licensed slots and the slots its issued vouchers and running previews hold
//! (the read model, rebuilt from the stream); it offers the least loaded node with a free
//! slot, in a region when asked, and holds that slot tentatively for the holder until its
//! event is applied (`SlotChooser`). This engine's view of node health (`NodeHealth`:
//! announced endpoints and heartbeats, in memory, never on the stream) filters out nodes
//! that have not announced themselves or whose heartbeat is older than the stale limit.
//! `HealthyAllocator` combines the two into the `Allocator` that `app::Market` asks at
//! IssueVoucher and Preview. Not here: the slot arithmetic (the projection) and the
//! decision to issue (the voucher aggregate, which records the chosen node).

use crate::clock::Clock;
use crate::ids::{MerchantId, Millis, NodeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A placement: the node, and the slot lease (`SlotsLeased`) the slot came from (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub node: NodeId,
    pub lease: u64,
}

impl Placed {
    /// A placement no allocator makes, for deciding a command before placing it
    /// (`app`'s `refused_before_placing`): any valid node id.
    pub fn probe() -> Placed {
        Placed { node: NodeId::new("placement-probe"), lease: 0 }
    }
}

/// In which order a placement considers the nodes (`Allocator::choose_in`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The least loaded node with a free slot, as one engine alone would choose, leasing
    /// there (or asking the engines that lease its free slots for a share) when this
    /// engine has no slot of it: several engines answer as one.
    Load,
    /// The least loaded node where this engine has a slot or can lease one: when the
    /// engines holding the free slots of the `Load` choice do not give them back in time.
    Leased,
}

/// What an engine should append to keep placing: a change to its lease `lease` of `node`
/// (None: a new one), or the take-over of another engine's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseWish {
    pub node: NodeId,
    pub lease: Option<u64>,
    pub change: LeaseChange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// Grow by up to this many slots, within those no lease holds (several placements
    /// asking at once each add theirs).
    Grow(u32),
    /// Renew at this size: shrunk (0: given back), or as it is.
    Set(u32),
    /// Take over another engine's lease that ran out (`NodeCommand::TakeOver`).
    TakeOver,
    /// Every slot is leased by others: ask for a fair share (`NodeCommand::Want`), which
    /// the engines above it give back as their slots come back.
    Want,
}

/// How slot leases are kept (`projections::allocation`): an engine gives out slots from a
/// lease only while `now + margin_ms < until`, renews it when less than half its `ttl_ms`
/// is left, and takes over another engine's lease only `grace_ms` after its `until` (the
/// margin and the grace cover an allocation decided just before `until` whose append
/// lands after it, and clocks apart by less than the grace). An engine that finds every
/// slot of a node leased by others asks for its share for `want_ms` (`SlotsWanted`);
/// while another engine asks, a holder gives out and keeps at most its fair share (the
/// node's slots split evenly among the engines leasing or asking), and shrinks toward
/// it as its slots in use come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTerms {
    pub ttl_ms: u64,
    pub margin_ms: u64,
    pub grace_ms: u64,
    pub want_ms: u64,
}

/// The engines' lease terms.
pub const LEASE_TERMS: LeaseTerms = LeaseTerms { ttl_ms: 60_000, margin_ms: 5_000, grace_ms: 20_000, want_ms: 15_000 };

/// How long a node may stay silent before it stops getting new work, unless the operator
/// set `node.heartbeat_timeout_ms`.
pub const HEARTBEAT_STALE_MS: u64 = crate::domain::config::HEARTBEAT_TIMEOUT_MS_DEFAULT;

/// Chooses the delivery node for an IssueVoucher or Preview: the least loaded healthy
/// node with a free slot, in `region` when asked.
///
/// `choose` holds the slot for `holder` (the voucher or preview id) until the projection
/// applies the holder's event, so concurrent choices in this process never exceed a
/// node's slots; `cancel` gives the slot back when the command did not append.
pub trait Allocator: Send + Sync + 'static {
    fn choose(&self, region: Option<&str>, holder: &str) -> Option<Placed>;
    /// As `choose` (which is `Order::Load`), in `order`. Test doubles: as `choose`.
    fn choose_in(&self, order: Order, region: Option<&str>, holder: &str) -> Option<Placed> {
        let _ = order;
        self.choose(region, holder)
    }
    /// As `choose_preview` (`Order::Load`), in `order`. Test doubles: as `choose_preview`.
    fn choose_preview_in(&self, order: Order, region: Option<&str>, holder: &str, merchant: &MerchantId) -> Option<Placed> {
        let _ = order;
        self.choose_preview(region, holder, merchant)
    }
    /// As `choose`, for a preview of `merchant`: the engine's allocators also keep each
    /// merchant's previews on a node within its quota (the allocation projection's
    /// `preview_quota`), so free previews cannot starve sales. Test doubles without a
    /// quota choose as for a sale.
    fn choose_preview(&self, region: Option<&str>, holder: &str, merchant: &MerchantId) -> Option<Placed> {
        let _ = merchant;
        self.choose(region, holder)
    }
    fn cancel(&self, holder: &str);
    /// Whether `node` still serves what was issued to it: active (not drained or removed)
    /// and not silent (`NodeHealth::silent`). Vouchers on a node that does not may move
    /// (`VoucherCommand::Move`). Test doubles: every node serves.
    fn serves(&self, node: &NodeId) -> bool {
        let _ = node;
        true
    }
    /// Silent past the heartbeat timeout (`NodeHealth::silent`): it finishes nothing, so
    /// even vouchers under way there move. Test doubles: never.
    fn silent(&self, node: &NodeId) -> bool {
        let _ = node;
        false
    }
    /// The engine this allocator gives out slots for, from its slot leases; None: an
    /// allocator that leases nothing (test doubles, in-process markets).
    fn lease_holder(&self) -> Option<String> {
        None
    }
    /// What to lease so that a `choose_in(order)` in `region` (a `choose_preview_in` of
    /// `merchant`) can succeed (`LeaseWish`).
    fn lease_wish(&self, order: Order, region: Option<&str>, merchant: Option<&MerchantId>) -> Option<LeaseWish> {
        let _ = (order, region, merchant);
        None
    }
    /// Changes whenever a lease or a want is applied, or a slot comes back to a lease on a
    /// node where an engine asks for a share: what a lease keeper and a placement waiting
    /// for a share wake on. None: an allocator without leases.
    fn lease_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// The last sequence the allocation applied. None: an allocator that does not follow
    /// the stream.
    fn applied(&self) -> Option<tokio::sync::watch::Receiver<crate::ids::Seq>> {
        None
    }
    /// The leases to renew, shrink, give back or take over now (the sweeper's); with
    /// `asked_only`, only on nodes where another engine asks for a share (the lease
    /// keeper's, as the allocation changes).
    fn lease_upkeep(&self, asked_only: bool) -> Vec<LeaseWish> {
        let _ = asked_only;
        Vec::new()
    }
    /// A lease this engine appended at `seq`, to place from before the projection applies
    /// it (ignored once the projection applied `seq`: it knows better by then).
    fn note_lease(&self, node: &NodeId, lease: u64, slots: u32, until: crate::ids::Millis, seq: crate::ids::Seq) {
        let _ = (node, lease, slots, until, seq);
    }
}

/// The slots side of placement, implemented by the allocation projection: a choice among
/// the nodes `eligible` accepts, held for `holder` (see `Allocator`).
pub trait SlotChooser: Send + Sync + 'static {
    fn choose_where(&self, order: Order, region: Option<&str>, holder: &str, now: Millis, eligible: &dyn Fn(&NodeId) -> bool) -> Option<Placed>;
    /// As `choose_where`, for a preview of `merchant`, within its quota on each node.
    fn choose_preview_where(
        &self,
        order: Order,
        region: Option<&str>,
        holder: &str,
        merchant: &MerchantId,
        now: Millis,
        eligible: &dyn Fn(&NodeId) -> bool,
    ) -> Option<Placed>;
    /// Registered and neither drained nor removed.
    fn is_active(&self, node: &NodeId) -> bool;
    fn cancel(&self, holder: &str);
    /// As `Allocator::lease_holder`.
    fn lease_holder(&self) -> Option<String> {
        None
    }
    /// As `Allocator::lease_wish`, among the nodes `eligible` accepts.
    fn lease_wish(
        &self,
        order: Order,
        region: Option<&str>,
        merchant: Option<&MerchantId>,
        now: Millis,
        eligible: &dyn Fn(&NodeId) -> bool,
    ) -> Option<LeaseWish> {
        let _ = (order, region, merchant, now, eligible);
        None
    }
    /// As `Allocator::lease_changes`.
    fn lease_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// As `Allocator::applied`.
    fn applied(&self) -> Option<tokio::sync::watch::Receiver<crate::ids::Seq>> {
        None
    }
    /// As `Allocator::lease_upkeep`.
    fn lease_upkeep(&self, now: Millis, asked_only: bool) -> Vec<LeaseWish> {
        let _ = (now, asked_only);
        Vec::new()
    }
    /// As `Allocator::note_lease`.
    fn note_lease(&self, node: &NodeId, lease: u64, slots: u32, until: Millis, seq: crate::ids::Seq) {
        let _ = (node, lease, slots, until, seq);
    }
}

/// What a node reports with each heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub slots_in_use: u32,
    pub cache_items: u64,
    pub cache_accesses: u64,
    pub cache_misses: u64,
}

/// What the engine knows of a node between events: its endpoint and its last heartbeat.
#[derive(Clone, Debug, Default)]
pub struct NodeLive {
    pub endpoint: String,
    pub last_heartbeat_ms: i64,
    pub beat: Heartbeat,
}

/// Nodes that announced themselves (RegisterNode) and their heartbeats: the engine's
/// health view, in memory only. After an engine restart nodes announce themselves again
/// (a heartbeat from an unknown node is refused, which tells the node agent to register).
pub struct NodeHealth {
    nodes: Mutex<HashMap<NodeId, NodeLive>>,
    clock: Arc<dyn Clock>,
    /// When this view started (the engine's start): a node not heard from since is silent
    /// only once the stale limit has passed from here, so a restart moves nothing.
    started_ms: i64,
    /// `node.heartbeat_timeout_ms` once the operator set it, else `HEARTBEAT_STALE_MS`.
    stale_ms: AtomicU64,
}

impl NodeHealth {
    pub fn new(clock: Arc<dyn Clock>, stale_ms: u64) -> Self {
        let started_ms = clock.now().0;
        Self { nodes: Mutex::new(HashMap::new()), clock, started_ms, stale_ms: AtomicU64::new(stale_ms) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, NodeLive>> {
        self.nodes.lock().expect("node health lock is never poisoned")
    }

    /// A node announced itself at `endpoint` (it counts as a heartbeat).
    pub fn announce(&self, node: &NodeId, endpoint: &str) {
        let now = self.clock.now().0;
        self.lock().insert(node.clone(), NodeLive { endpoint: endpoint.to_string(), last_heartbeat_ms: now, beat: Heartbeat::default() });
    }

    /// Records a heartbeat; `false` when the node has not announced itself.
    pub fn heartbeat(&self, node: &NodeId, beat: Heartbeat) -> bool {
        let now = self.clock.now().0;
        let mut nodes = self.lock();
        let Some(live) = nodes.get_mut(node) else { return false };
        live.last_heartbeat_ms = now;
        live.beat = beat;
        true
    }

    /// What another engine heard from `node` (`gateways`' gossip): its endpoint and a
    /// heartbeat, as if the node had announced itself and beat here.
    pub fn hear(&self, node: &NodeId, endpoint: &str, beat: Heartbeat) {
        let now = self.clock.now().0;
        let mut nodes = self.lock();
        let live = nodes.entry(node.clone()).or_default();
        live.endpoint = endpoint.to_string();
        live.last_heartbeat_ms = now;
        live.beat = beat;
    }

    /// The endpoint of a node that announced itself to this engine; `None` for one that
    /// has not (yet): a retried IssueVoucher or Preview after an engine restart names a
    /// node the new engine has not heard from, and an empty endpoint is of no use to a player.
    pub fn endpoint(&self, node: &NodeId) -> Option<String> {
        self.lock().get(node).map(|live| live.endpoint.clone()).filter(|endpoint| !endpoint.is_empty())
    }

    /// Announced, with a heartbeat no older than the stale limit.
    pub fn healthy(&self, node: &NodeId) -> bool {
        let now = self.clock.now().0;
        let stale_ms = i64::try_from(self.stale_ms.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        self.lock().get(node).is_some_and(|live| now.saturating_sub(live.last_heartbeat_ms) <= stale_ms)
    }

    /// Gone quiet: announced to this engine and no heartbeat within the stale limit since,
    /// or not heard from at all for the stale limit since this engine started. (Unlike
    /// `healthy`, a node the engine has not heard from yet right after a restart is not
    /// silent: what was issued to it does not move.)
    pub fn silent(&self, node: &NodeId) -> bool {
        let now = self.clock.now().0;
        let stale_ms = i64::try_from(self.stale_ms.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let last = self.lock().get(node).map_or(self.started_ms, |live| live.last_heartbeat_ms);
        now.saturating_sub(last) > stale_ms
    }

    /// Applies the operator's `node.heartbeat_timeout_ms`.
    pub fn set_stale_ms(&self, stale_ms: u64) {
        self.stale_ms.store(stale_ms, Ordering::Relaxed);
    }

    /// Every announced node, in id order.
    pub fn snapshot(&self) -> Vec<(NodeId, NodeLive)> {
        let mut nodes: Vec<_> = self.lock().iter().map(|(id, live)| (id.clone(), live.clone())).collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        nodes
    }
}

/// The allocator the engine uses: the allocation projection's choice among healthy nodes.
pub struct HealthyAllocator {
    slots: Arc<dyn SlotChooser>,
    health: Arc<NodeHealth>,
}

impl HealthyAllocator {
    pub fn new(slots: Arc<dyn SlotChooser>, health: Arc<NodeHealth>) -> Self {
        Self { slots, health }
    }
}

impl Allocator for HealthyAllocator {
    fn choose(&self, region: Option<&str>, holder: &str) -> Option<Placed> {
        self.choose_in(Order::Load, region, holder)
    }

    fn choose_in(&self, order: Order, region: Option<&str>, holder: &str) -> Option<Placed> {
        self.slots.choose_where(order, region, holder, self.health.clock.now(), &|node| self.health.healthy(node))
    }

    fn choose_preview(&self, region: Option<&str>, holder: &str, merchant: &MerchantId) -> Option<Placed> {
        self.choose_preview_in(Order::Load, region, holder, merchant)
    }

    fn choose_preview_in(&self, order: Order, region: Option<&str>, holder: &str, merchant: &MerchantId) -> Option<Placed> {
        self.slots.choose_preview_where(order, region, holder, merchant, self.health.clock.now(), &|node| self.health.healthy(node))
    }

    fn lease_holder(&self) -> Option<String> {
        self.slots.lease_holder()
    }

    fn lease_wish(&self, order: Order, region: Option<&str>, merchant: Option<&MerchantId>) -> Option<LeaseWish> {
        self.slots.lease_wish(order, region, merchant, self.health.clock.now(), &|node| self.health.healthy(node))
    }

    fn lease_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.slots.lease_changes()
    }

    fn applied(&self) -> Option<tokio::sync::watch::Receiver<crate::ids::Seq>> {
        self.slots.applied()
    }

    fn lease_upkeep(&self, asked_only: bool) -> Vec<LeaseWish> {
        self.slots.lease_upkeep(self.health.clock.now(), asked_only)
    }

    fn note_lease(&self, node: &NodeId, lease: u64, slots: u32, until: Millis, seq: crate::ids::Seq) {
        self.slots.note_lease(node, lease, slots, until, seq);
    }

    fn serves(&self, node: &NodeId) -> bool {
        self.slots.is_active(node) && !self.health.silent(node)
    }

    fn silent(&self, node: &NodeId) -> bool {
        self.health.silent(node)
    }

    fn cancel(&self, holder: &str) {
        self.slots.cancel(holder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    struct FirstEligible(Vec<NodeId>);

    impl SlotChooser for FirstEligible {
        fn choose_where(&self, _order: Order, _region: Option<&str>, _holder: &str, _now: Millis, eligible: &dyn Fn(&NodeId) -> bool) -> Option<Placed> {
            self.0.iter().find(|node| eligible(node)).map(|node| Placed { node: node.clone(), lease: 0 })
        }
        fn choose_preview_where(
            &self,
            order: Order,
            region: Option<&str>,
            holder: &str,
            _merchant: &MerchantId,
            now: Millis,
            eligible: &dyn Fn(&NodeId) -> bool,
        ) -> Option<Placed> {
            self.choose_where(order, region, holder, now, eligible)
        }
        fn is_active(&self, node: &NodeId) -> bool {
            self.0.contains(node)
        }
        fn cancel(&self, _holder: &str) {}
    }

    #[test]
    fn only_announced_nodes_with_a_fresh_heartbeat_get_work() {
        let clock = Arc::new(ManualClock::new(Millis(1_000)));
        let health = Arc::new(NodeHealth::new(clock.clone(), 5_000));
        let (a, b) = (NodeId("na".into()), NodeId("nb".into()));
        let allocator = HealthyAllocator::new(Arc::new(FirstEligible(vec![a.clone(), b.clone()])), Arc::clone(&health));
        assert_eq!(allocator.choose(None, "v1"), None, "nobody announced");
        assert!(!health.heartbeat(&a, Heartbeat::default()), "a heartbeat before the announcement is refused");
        health.announce(&b, "http://127.0.0.1:1");
        assert_eq!(allocator.choose(None, "v1").map(|p| p.node), Some(b.clone()));
        assert_eq!(health.endpoint(&b).as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(health.endpoint(&a), None);
        clock.advance_ms(5_001);
        assert_eq!(allocator.choose(None, "v2"), None, "b went silent past the stale limit");
        assert!(health.heartbeat(&b, Heartbeat { slots_in_use: 1, ..Heartbeat::default() }));
        assert_eq!(allocator.choose(None, "v2").map(|p| p.node), Some(b.clone()), "a heartbeat brings it back");
        health.set_stale_ms(1);
        clock.advance_ms(2);
        assert!(!health.healthy(&b), "the operator's shorter timeout applies");
    }

    /// What moves vouchers away: a node that stopped heartbeating, or one not heard from
    /// for the stale limit since the engine started; not one merely not announced yet
    /// right after a restart (which `healthy` already refuses new work).
    #[test]
    fn a_node_is_silent_only_past_the_stale_limit_never_just_after_a_restart() {
        let clock = Arc::new(ManualClock::new(Millis(1_000)));
        let health = Arc::new(NodeHealth::new(clock.clone(), 5_000));
        let (a, b) = (NodeId("na".into()), NodeId("nb".into()));
        let allocator = HealthyAllocator::new(Arc::new(FirstEligible(vec![a.clone(), b.clone()])), Arc::clone(&health));
        assert!(!health.healthy(&a) && !health.silent(&a), "just started: not chosen, not silent");
        assert!(allocator.serves(&a), "its vouchers stay");
        health.announce(&b, "http://127.0.0.1:1");
        clock.advance_ms(5_001);
        assert!(health.silent(&a), "not heard from for the stale limit since the start");
        assert!(health.silent(&b), "announced, then no heartbeat within the limit");
        assert!(!allocator.serves(&b));
        assert!(health.heartbeat(&b, Heartbeat::default()));
        assert!(!health.silent(&b) && allocator.serves(&b), "a heartbeat: serving again");
        let c = NodeId("nc".into());
        assert!(!allocator.serves(&c), "a node the slots do not list (drained, removed, unknown) does not serve");
    }
}
