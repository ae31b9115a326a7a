//! Delivery allocation: registered nodes, their capacity in stream slots and the slots in
//! use, derived from the stream. It chooses the node for IssueVoucher and Preview (least
//! loaded active node with a free slot, in the asked region when possible). The choice is
//! recorded in the event, so replay never re-decides; this projection only advises.
//!
//! Tentative holds (`choose_and_hold`) are not derived from the stream: they live in
//! memory only, are not persisted by the projection store and are not in the digest.
//!
//! The slot holders and the released slots grow with the number of vouchers, so they are
//! `rows::Rows`: in memory for replays, cold in the projection store for a store-backed
//! `Live` (only `Delivered` reads a holder back). How the store keeps all of it: `format`.

use crate::rows::{Rows, Touched};
use engine::domain::event::Event;
use engine::ids::{MerchantId, Millis, NodeId, PreviewId};
use engine::placement::{LeaseChange, LeaseTerms, LeaseWish, Order};
use format::{ReleasedRows, SlotRows};
use std::collections::BTreeMap;

pub(crate) mod format;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSlots {
    pub region: String,
    pub slots_max: u32,
    pub in_use: u32,
    pub active: bool,
    /// The engines' slot leases on the node (`SlotsLeased`), each with the slots given out
    /// from it that are still in use.
    pub leases: BTreeMap<u64, LeaseSlots>,
    /// Engines asking for a fair share (`SlotsWanted`), until when; as the node
    /// aggregate's `wants`: an engine's want ends when its lease here grows.
    pub wants: BTreeMap<String, Millis>,
}

impl NodeSlots {
    pub fn new(region: String, slots_max: u32) -> Self {
        NodeSlots { region, slots_max, in_use: 0, active: true, leases: BTreeMap::new(), wants: BTreeMap::new() }
    }

    /// The slots no lease holds.
    pub fn unleased(&self) -> u32 {
        let leased: u64 = self.leases.values().map(|lease| u64::from(lease.slots)).sum();
        u32::try_from(u64::from(self.slots_max).saturating_sub(leased)).unwrap_or(0)
    }
}

/// One engine's lease of a node's slots, and the slots given out from it still in use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseSlots {
    pub holder: String,
    pub slots: u32,
    pub until: Millis,
    pub in_use: u32,
}

/// The slots a lease grows by at a time: an eighth of the node, at least one.
pub fn lease_step(slots_max: u32) -> u32 {
    (slots_max / 8).max(1)
}

/// The most of `node`'s slots `me` may lease and give out while another engine asks for a
/// share there (a `SlotsWanted` live at `now`): `share_among`. None when nobody else asks.
pub fn fair_share(node: &NodeSlots, me: &str, now: Millis) -> Option<u32> {
    node.wants.iter().any(|(holder, until)| holder != me && *until > now).then(|| share_among(node, me, now))
}

/// The node's slots split evenly (rounded up) among the engines that lease some of them
/// or ask for a share at `now`, and `me`.
fn share_among(node: &NodeSlots, me: &str, now: Millis) -> u32 {
    let mut engines: std::collections::BTreeSet<&str> = node.leases.values().filter(|lease| lease.slots > 0).map(|lease| lease.holder.as_str()).collect();
    engines.extend(node.wants.iter().filter(|(_, until)| **until > now).map(|(holder, _)| holder.as_str()));
    engines.insert(me);
    node.slots_max.div_ceil(u32::try_from(engines.len()).unwrap_or(u32::MAX))
}

/// A started preview holding a slot: its node, its merchant (for the merchant's preview
/// quota on the node) and when the sweeper may end it unreported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviewSlot {
    pub node: NodeId,
    pub merchant: MerchantId,
    pub lapses_at: Millis,
    /// The lease it was given out from (0: none).
    pub lease: u64,
}

/// The share of a node's slots one merchant's previews may hold: a quarter, at least one.
/// Free previews of one merchant then cannot starve the node's sales (or other merchants'
/// previews).
pub fn preview_quota(slots_max: u32) -> u32 {
    (slots_max / 4).max(1)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    pub nodes: BTreeMap<NodeId, NodeSlots>,
    /// Vouchers holding a slot: the node and the lease it was given out from (0: none).
    pub(crate) vouchers: Rows<SlotRows>,
    pub(crate) previews: BTreeMap<PreviewId, PreviewSlot>,
    /// Vouchers whose slot came back (complete delivery).
    pub(crate) released: Rows<ReleasedRows>,
    /// Slots chosen but whose event this projection has not applied yet, by holder
    /// (voucher or preview id), with the merchant of a preview. Not derived from the
    /// stream, so not in the digest.
    tentative: BTreeMap<String, Held>,
    /// The engine this allocation places for (`set_holder`): it then gives out slots only
    /// from leases it holds. None (replays, audits): by node only.
    holder: Option<String>,
    /// This engine's leases as it appended them (slots, until), by node and lease, till the
    /// projection applies them (`note_lease`). Not derived from the stream: not in the digest.
    noted: BTreeMap<(NodeId, u64), (u32, Millis)>,
    /// Counts the changes a lease keeper or a placement waiting for a share wakes on
    /// (`lease_generation`). Not derived from the stream as such: not in the digest.
    lease_generation: LocalCount,
    /// What changed since the projection store last committed this allocation.
    pub(crate) touched_nodes: Touched<NodeId>,
    pub(crate) touched_previews: Touched<PreviewId>,
}

/// A count of this process's, not part of the state: allocations equal whatever it says.
#[derive(Clone, Debug, Default)]
struct LocalCount(u64);

impl PartialEq for LocalCount {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LocalCount {}

/// A tentative hold: the node, the lease, and for a preview its merchant.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    node: NodeId,
    lease: u64,
    merchant: Option<MerchantId>,
}

impl Allocation {
    /// Feeds every node to the state digest (`Projections::digest`), in a canonical order.
    pub fn digest_into(&self, field: &mut dyn FnMut(&[u8])) {
        field(&(self.nodes.len() as u64).to_le_bytes());
        for (id, node) in &self.nodes {
            field(id.0.as_bytes());
            field(node.region.as_bytes());
            field(&node.slots_max.to_le_bytes());
            field(&node.in_use.to_le_bytes());
            field(&[u8::from(node.active)]);
            // Nodes without leases (streams from before them) digest as they did.
            if !node.leases.is_empty() {
                field(&(node.leases.len() as u64).to_le_bytes());
                for (id, lease) in &node.leases {
                    field(&id.to_le_bytes());
                    field(lease.holder.as_bytes());
                    field(&lease.slots.to_le_bytes());
                    field(&lease.until.0.to_le_bytes());
                    field(&lease.in_use.to_le_bytes());
                }
            }
            // As the leases: nodes nobody asked a share of digest as before.
            if !node.wants.is_empty() {
                field(b"wants");
                field(&(node.wants.len() as u64).to_le_bytes());
                for (holder, until) in &node.wants {
                    field(holder.as_bytes());
                    field(&until.0.to_le_bytes());
                }
            }
        }
    }

    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::NodeRegistered { node_id, region, slots_max, .. } => {
                self.nodes.insert(node_id.clone(), NodeSlots::new(region.clone(), *slots_max));
                self.touched_nodes.touch(node_id);
            }
            Event::NodeCapacityChanged { node_id, slots_max } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.slots_max = *slots_max;
                    self.touched_nodes.touch(node_id);
                }
            }
            Event::SlotsLeased { node_id, lease, holder, slots, until } => {
                self.noted.remove(&(node_id.clone(), *lease));
                if let Some(node) = self.nodes.get_mut(node_id) {
                    if *slots > node.leases.get(lease).map_or(0, |held| held.slots) {
                        node.wants.remove(holder);
                    }
                    let entry = node.leases.entry(*lease).or_default();
                    entry.holder = holder.clone();
                    entry.slots = *slots;
                    entry.until = *until;
                    if entry.slots == 0 && entry.in_use == 0 {
                        node.leases.remove(lease);
                    }
                    self.touched_nodes.touch(node_id);
                    self.lease_generation.0 += 1;
                }
            }
            Event::SlotsWanted { node_id, holder, until } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.wants.insert(holder.clone(), *until);
                    self.touched_nodes.touch(node_id);
                    self.lease_generation.0 += 1;
                }
            }
            Event::NodeDrained { node_id } | Event::NodeRemoved { node_id } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.active = false;
                    self.touched_nodes.touch(node_id);
                }
            }
            Event::VoucherIssued { voucher_id, node_id, previous_node, lease, .. } => {
                self.tentative.remove(voucher_id.as_str());
                // Moved off a node that no longer serves it: that node's slot comes back.
                if previous_node.is_some()
                    && let Some((previous, previous_lease)) = self.vouchers.remove(voucher_id)
                {
                    self.give_back(&previous, previous_lease);
                }
                self.take(node_id, *lease);
                self.vouchers.insert(voucher_id.clone(), (node_id.clone(), *lease));
            }
            Event::Voided { voucher_id, .. } | Event::Refunded { voucher_id, .. } => {
                // Refunded (or voided once issued): the slot comes back, if it still held one.
                if let Some((node_id, lease)) = self.vouchers.remove(voucher_id) {
                    self.give_back(&node_id, lease);
                }
            }
            Event::AccessLapsed { voucher_id, .. } => {
                // The access window ended unused: the slot comes back (a reissue takes one again).
                if let Some((node_id, lease)) = self.vouchers.remove(voucher_id) {
                    self.give_back(&node_id, lease);
                }
            }
            Event::Delivered { voucher_id, voucher_complete: true, .. } => {
                if let Some((node_id, lease)) = self.vouchers.remove(voucher_id) {
                    self.give_back(&node_id, lease);
                    self.released.insert(voucher_id.clone(), ());
                }
            }
            Event::PreviewStarted { preview_id, node_id, merchant_id, lapses_at, lease, .. } => {
                self.tentative.remove(preview_id.as_str());
                self.take(node_id, *lease);
                self.previews
                    .insert(preview_id.clone(), PreviewSlot { node: node_id.clone(), merchant: merchant_id.clone(), lapses_at: *lapses_at, lease: *lease });
                self.touched_previews.touch(preview_id);
            }
            Event::PreviewEnded { preview_id, .. } => {
                if let Some(slot) = self.previews.remove(preview_id) {
                    self.give_back(&slot.node, slot.lease);
                    self.touched_previews.touch(preview_id);
                }
            }
            _ => {}
        }
    }

    fn take(&mut self, node_id: &NodeId, lease: u64) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.in_use = node.in_use.saturating_add(1);
            if let Some(lease) = node.leases.get_mut(&lease) {
                lease.in_use = lease.in_use.saturating_add(1);
            }
            self.touched_nodes.touch(node_id);
        }
    }

    fn give_back(&mut self, node_id: &NodeId, lease: u64) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            // A slot back on a node where an engine asks for a share: its holder gives it on.
            if !node.wants.is_empty() {
                self.lease_generation.0 += 1;
            }
            node.in_use = node.in_use.saturating_sub(1);
            if let Some(held) = node.leases.get_mut(&lease) {
                held.in_use = held.in_use.saturating_sub(1);
                if held.slots == 0 && held.in_use == 0 {
                    node.leases.remove(&lease);
                }
            }
            self.touched_nodes.touch(node_id);
        }
    }

    /// An allocation from its persisted parts, with no tentative holds (they are not
    /// derived from the stream, so a restarted process starts without any).
    fn from_parts(
        nodes: BTreeMap<NodeId, NodeSlots>,
        vouchers: Rows<SlotRows>,
        previews: BTreeMap<PreviewId, PreviewSlot>,
        released: Rows<ReleasedRows>,
    ) -> Self {
        Allocation { nodes, vouchers, previews, released, ..Allocation::default() }
    }

    /// Starts noting changes for the projection store.
    pub(crate) fn track_changes(&mut self) {
        self.touched_nodes.start();
        self.vouchers.track_changes();
        self.touched_previews.start();
        self.released.track_changes();
    }

    /// Slots of `node_id` in use or held tentatively.
    fn load(&self, node_id: &NodeId, node: &NodeSlots) -> u32 {
        let held = self.tentative.values().filter(|held| held.node == *node_id).count();
        node.in_use.saturating_add(u32::try_from(held).unwrap_or(u32::MAX))
    }

    /// Slots of `node_id` that `merchant`'s previews hold, started or held tentatively.
    pub fn previews_of(&self, node_id: &NodeId, merchant: &MerchantId) -> u32 {
        let started = self.previews.values().filter(|slot| slot.node == *node_id && slot.merchant == *merchant).count();
        let held = self.tentative.values().filter(|held| held.node == *node_id && held.merchant.as_ref() == Some(merchant)).count();
        u32::try_from(started + held).unwrap_or(u32::MAX)
    }

    /// Vouchers holding a slot on a node `stranded` picks (one that no longer serves them),
    /// at most `limit`: what the sweeper moves. A scan of the slot holders (at most the
    /// slots in use), made only when such a node holds any.
    pub fn stranded_vouchers(&self, stranded: &dyn Fn(&NodeId) -> bool, limit: usize) -> Vec<(engine::ids::VoucherId, NodeId)> {
        if !self.nodes.iter().any(|(id, node)| node.in_use > 0 && stranded(id)) {
            return Vec::new();
        }
        self.vouchers.iter().filter(|(_, (node, _))| stranded(node)).take(limit).map(|(voucher, (node, _))| (voucher, node)).collect()
    }

    /// Whether `merchant` may start one more preview on `node_id` (`preview_quota`).
    pub fn preview_room(&self, node_id: &NodeId, merchant: &MerchantId) -> bool {
        self.nodes.get(node_id).is_some_and(|node| self.previews_of(node_id, merchant) < preview_quota(node.slots_max))
    }

    /// Started previews whose window ended before `now` (`PreviewSlot::lapses_at`), with
    /// their nodes: the sweeper ends each and its slot comes back. A scan of the previews
    /// holding slots (at most the slots of all nodes).
    pub fn due_preview_lapses(&self, now: Millis, limit: usize) -> Vec<PreviewId> {
        let mut due: Vec<(Millis, &PreviewId)> = self.previews.iter().filter(|(_, slot)| slot.lapses_at < now).map(|(id, slot)| (slot.lapses_at, id)).collect();
        due.sort();
        due.into_iter().take(limit).map(|(_, id)| id.clone()).collect()
    }

    /// Chooses a node (as `choose`) and holds one of its slots for `holder` until the
    /// holder's VoucherIssued or PreviewStarted is applied, or `cancel(holder)`.
    pub fn choose_and_hold(&mut self, region: Option<&str>, holder: &str) -> Option<NodeId> {
        self.choose_and_hold_where(Order::Load, region, holder, Millis(0), None, &|_| true).map(|(node, _)| node)
    }

    /// As `choose_and_hold`, among the nodes `eligible` accepts (the engine's health view:
    /// nodes that announced themselves and sent a recent heartbeat), from a lease this
    /// allocation's holder holds at `now` under `terms` (`set_holder`; by node only without
    /// one), in `order`: the node and the lease.
    pub fn choose_and_hold_where(
        &mut self,
        order: Order,
        region: Option<&str>,
        holder: &str,
        now: Millis,
        terms: Option<LeaseTerms>,
        eligible: &dyn Fn(&NodeId) -> bool,
    ) -> Option<(NodeId, u64)> {
        self.hold(order, region, holder, now, terms, None, eligible)
    }

    /// As `choose_and_hold_where`, for a preview of `merchant`: only nodes where the
    /// merchant's previews hold less than its quota (`preview_quota`).
    pub fn choose_preview_where(&mut self, region: Option<&str>, holder: &str, merchant: &MerchantId, eligible: &dyn Fn(&NodeId) -> bool) -> Option<NodeId> {
        self.choose_preview_leased(Order::Load, region, holder, merchant, Millis(0), None, eligible).map(|(node, _)| node)
    }

    /// As `choose_preview_where`, from a lease (`choose_and_hold_where`).
    #[allow(clippy::too_many_arguments)]
    pub fn choose_preview_leased(
        &mut self,
        order: Order,
        region: Option<&str>,
        holder: &str,
        merchant: &MerchantId,
        now: Millis,
        terms: Option<LeaseTerms>,
        eligible: &dyn Fn(&NodeId) -> bool,
    ) -> Option<(NodeId, u64)> {
        self.hold(order, region, holder, now, terms, Some(merchant), eligible)
    }

    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        order: Order,
        region: Option<&str>,
        holder: &str,
        now: Millis,
        terms: Option<LeaseTerms>,
        merchant: Option<&MerchantId>,
        eligible: &dyn Fn(&NodeId) -> bool,
    ) -> Option<(NodeId, u64)> {
        if let Some(held) = self.tentative.get(holder) {
            return Some((held.node.clone(), held.lease));
        }
        let node = self.best_node(order, region, now, terms, merchant, eligible)?;
        let lease = match (&self.holder, terms) {
            (Some(me), Some(terms)) => self.lease_room(&node, me, now, terms)?.0,
            _ => 0,
        };
        self.tentative.insert(holder.to_string(), Held { node: node.clone(), lease, merchant: merchant.cloned() });
        Some((node, lease))
    }

    /// The lease of `node` that `me` holds, usable at `now`, with the most slots left to
    /// give out (counting tentative holds), and how many. While another engine asks for a
    /// share (`fair_share`), no more than what is left of this engine's share.
    fn lease_room(&self, node: &NodeId, me: &str, now: Millis, terms: LeaseTerms) -> Option<(u64, u32)> {
        let leases = self.leases_of(node, me);
        let allowance = match self.nodes.get(node).and_then(|slots| fair_share(slots, me, now)) {
            Some(share) => share.saturating_sub(leases.iter().map(|(id, lease)| lease.in_use.saturating_add(self.held_from(node, *id))).sum()),
            None => u32::MAX,
        };
        leases
            .into_iter()
            .filter(|(_, lease)| now.plus_ms(terms.margin_ms) < lease.until)
            .map(|(id, lease)| (id, lease.slots.saturating_sub(lease.in_use).saturating_sub(self.held_from(node, id)).min(allowance)))
            .filter(|(_, room)| *room > 0)
            .max_by_key(|(id, room)| (*room, std::cmp::Reverse(*id)))
    }

    /// `me`'s leases of `node`: as applied, or as noted since (`note_lease`).
    fn leases_of(&self, node_id: &NodeId, me: &str) -> Vec<(u64, LeaseSlots)> {
        let Some(node) = self.nodes.get(node_id) else { return Vec::new() };
        let mut leases: BTreeMap<u64, LeaseSlots> =
            node.leases.iter().filter(|(_, lease)| lease.holder == me).map(|(id, lease)| (*id, lease.clone())).collect();
        for ((_, id), noted) in self.noted.range((node_id.clone(), 0)..=(node_id.clone(), u64::MAX)) {
            let lease = leases.entry(*id).or_default();
            (lease.holder, lease.slots, lease.until) = (me.to_string(), noted.0, noted.1);
        }
        leases.into_iter().collect()
    }

    fn held_from(&self, node: &NodeId, lease: u64) -> u32 {
        u32::try_from(self.tentative.values().filter(|held| held.node == *node && held.lease == lease).count()).unwrap_or(u32::MAX)
    }

    /// The engine this allocation places for (module docs of `LeaseTerms`).
    pub fn set_holder(&mut self, holder: &str) {
        self.holder = Some(holder.to_string());
    }

    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }

    /// Counts the applied changes to leases and wants, and the slots that came back to a
    /// lease on a node where an engine asks for a share (`Allocator::lease_changes`).
    pub fn lease_generation(&self) -> u64 {
        self.lease_generation.0
    }

    /// What to lease so that a choice in `order` (as `choose_and_hold_where`) can succeed,
    /// on the node that choice takes: renew this holder's lease that runs out, or grow it
    /// (or start one) by `lease_step` within the unleased slots; in `Order::Load`, when
    /// neither can be and other engines' running leases hold free slots there, ask them
    /// for a share (`LeaseChange::Want`). None when this engine has a slot there already,
    /// or nothing can be asked.
    pub fn lease_wish(
        &self,
        order: Order,
        region: Option<&str>,
        merchant: Option<&MerchantId>,
        now: Millis,
        terms: LeaseTerms,
        eligible: &dyn Fn(&NodeId) -> bool,
    ) -> Option<LeaseWish> {
        let me = self.holder.as_deref()?;
        let node = self.best_node(order, region, now, Some(terms), merchant, eligible)?;
        if self.lease_room(&node, me, now, terms).is_some() {
            return None;
        }
        if let Some(wish) = self.wish_for(&node, me, now, terms) {
            return Some(wish);
        }
        (order == Order::Load && self.others_hold_free(&node, me, now)).then_some(LeaseWish { node, lease: None, change: LeaseChange::Want })
    }

    /// Whether another engine's running lease of `node_id` has slots it does not use.
    fn others_hold_free(&self, node_id: &NodeId, me: &str, now: Millis) -> bool {
        self.nodes.get(node_id).is_some_and(|node| node.leases.values().any(|lease| lease.holder != me && lease.until > now && lease.slots > lease.in_use))
    }

    /// The least loaded node (in `region` if one there will do) that `eligible` accepts,
    /// with a free slot (and `merchant`'s preview quota not used up); in `Order::Leased`
    /// only where this engine has a slot left in its leases or can lease one.
    fn best_node(
        &self,
        order: Order,
        region: Option<&str>,
        now: Millis,
        terms: Option<LeaseTerms>,
        merchant: Option<&MerchantId>,
        eligible: &dyn Fn(&NodeId) -> bool,
    ) -> Option<NodeId> {
        let leased = |node: &NodeId| match (order, &self.holder, terms) {
            (Order::Leased, Some(me), Some(terms)) => self.lease_room(node, me, now, terms).is_some() || self.wish_for(node, me, now, terms).is_some(),
            _ => true,
        };
        let quota = |node: &NodeId| merchant.is_none_or(|merchant| self.preview_room(node, merchant));
        self.choose_where(region, &|node| eligible(node) && quota(node) && leased(node))
    }

    /// What `me` would lease on `node_id`: renew its lease running out, grow it (or start
    /// one) by `lease_step` within the unleased slots; None when neither is wanted or possible.
    fn wish_for(&self, node_id: &NodeId, me: &str, now: Millis, terms: LeaseTerms) -> Option<LeaseWish> {
        let node = self.nodes.get(node_id)?;
        let leases = self.leases_of(node_id, me);
        let mine = leases.iter().max_by_key(|(_, lease)| lease.slots);
        let share = fair_share(node, me, now).unwrap_or(u32::MAX);
        let held: u32 = leases.iter().map(|(_, lease)| lease.slots).sum();
        let grow = lease_step(node.slots_max).min(node.unleased()).min(share.saturating_sub(held));
        let change = if grow > 0 { LeaseChange::Grow(grow) } else { LeaseChange::Set(mine.map_or(0, |(_, lease)| lease.slots)) };
        match mine {
            Some((id, lease)) if now.plus_ms(terms.margin_ms) >= lease.until || grow > 0 => Some(LeaseWish { node: node_id.clone(), lease: Some(*id), change }),
            None if grow > 0 => Some(LeaseWish { node: node_id.clone(), lease: None, change }),
            _ => None,
        }
    }

    /// The leases to look after at `now`: this holder's to renew (less than half the ttl
    /// left), shrink (more than two steps unused: to one step above what is in use; while
    /// another engine asks for a share there: to what is in use) or give back (nothing in
    /// use, or its node no longer active); others' to take over (past their `until` by the
    /// grace: a dead engine's).
    /// With `asked_only`, only on nodes where another engine asks for a share.
    pub fn lease_upkeep(&self, now: Millis, terms: LeaseTerms, asked_only: bool) -> Vec<LeaseWish> {
        let Some(me) = self.holder.as_deref() else { return Vec::new() };
        let mut wishes = Vec::new();
        for (node_id, node) in &self.nodes {
            if asked_only && fair_share(node, me, now).is_none() {
                continue;
            }
            let step = lease_step(node.slots_max);
            for (id, lease) in &node.leases {
                if lease.holder != me && now > lease.until.plus_ms(terms.grace_ms) {
                    wishes.push(LeaseWish { node: node_id.clone(), lease: Some(*id), change: LeaseChange::TakeOver });
                }
            }
            // Another engine asks for a share here: keep only what is in use.
            let asked = fair_share(node, me, now).is_some();
            // This engine's leases as it appended them (a growth not applied yet included).
            for (id, lease) in self.leases_of(node_id, me) {
                let used = lease.in_use.saturating_add(self.held_from(node_id, id));
                let keep = if used == 0 || !node.active || asked { used.min(lease.slots) } else { lease.slots.min(used.saturating_add(step)) };
                let shrink = keep == 0 || lease.slots > keep.saturating_add(step) || (asked && lease.slots > keep);
                let renew = now.plus_ms(terms.ttl_ms / 2) >= lease.until;
                if lease.slots > 0 && (shrink || renew) {
                    let slots = if shrink { keep } else { lease.slots };
                    wishes.push(LeaseWish { node: node_id.clone(), lease: Some(id), change: LeaseChange::Set(slots) });
                }
            }
        }
        wishes
    }

    /// Notes a lease this holder appended before the projection applies it, so the next
    /// choice can use it (applying the event later sets the same values; the caller notes
    /// only what is not applied yet). A lease given back (no slots) is not noted.
    /// Kept beside the applied state (not in the digest, not stored), till the projection
    /// applies a `SlotsLeased` of that lease.
    pub fn note_lease(&mut self, node_id: &NodeId, lease: u64, holder: &str, slots: u32, until: Millis) {
        if slots == 0 || self.holder.as_deref() != Some(holder) || !self.nodes.contains_key(node_id) {
            return;
        }
        self.noted.insert((node_id.clone(), lease), (slots, until));
    }

    pub fn cancel(&mut self, holder: &str) {
        self.tentative.remove(holder);
    }

    /// The least loaded active node with a free slot; in `region` if one there has room.
    pub fn choose(&self, region: Option<&str>) -> Option<NodeId> {
        self.choose_where(region, &|_| true)
    }

    /// As `choose`, among the nodes `eligible` accepts.
    pub fn choose_where(&self, region: Option<&str>, eligible: &dyn Fn(&NodeId) -> bool) -> Option<NodeId> {
        let free = |(id, node): &(&NodeId, &NodeSlots)| node.active && self.load(id, node) < node.slots_max && eligible(id);
        self.least_loaded(region, &free)
    }

    /// The least loaded node `pick` accepts, in `region` if one there does.
    fn least_loaded(&self, region: Option<&str>, pick: &dyn Fn(&(&NodeId, &NodeSlots)) -> bool) -> Option<NodeId> {
        // Load as a fraction compared by cross-multiplication (no floats): a/b < c/d.
        let least = |candidates: &mut dyn Iterator<Item = (&NodeId, &NodeSlots)>| {
            candidates
                .min_by(|(a_id, a), (b_id, b)| {
                    (u64::from(self.load(a_id, a)) * u64::from(b.slots_max))
                        .cmp(&(u64::from(self.load(b_id, b)) * u64::from(a.slots_max)))
                        .then_with(|| a_id.cmp(b_id))
                })
                .map(|(id, _)| id.clone())
        };
        region
            .and_then(|region| least(&mut self.nodes.iter().filter(|(_, node)| node.region == region).filter(|candidate| pick(candidate))))
            .or_else(|| least(&mut self.nodes.iter().filter(|candidate| pick(candidate))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::domain::event::Event;
    use engine::ids::VoucherId;
    use engine::ids::{MediaId, MerchantId, Millis};

    fn register(id: &str, region: &str, slots_max: u32) -> Event {
        Event::NodeRegistered { node_id: NodeId::new(id), region: region.into(), slots_max, credential_hash: [0; 32] }
    }

    fn issue(voucher: &str, node: &str) -> Event {
        issue_from(voucher, node, 0)
    }

    fn issue_from(voucher: &str, node: &str, lease: u64) -> Event {
        Event::VoucherIssued {
            voucher_id: VoucherId::new(voucher),
            node_id: NodeId::new(node),
            merchant_id: MerchantId::new("m"),
            media_ids: vec![MediaId::new("md")],
            rendition: "high".into(),
            access_expires_at: Millis(0),
            previous_node: None,
            lease,
        }
    }

    fn preview(id: &str, node: &str, merchant: &str, lapses_at: i64) -> Event {
        Event::PreviewStarted {
            preview_id: PreviewId::new(id),
            media_id: MediaId::new("md"),
            node_id: NodeId::new(node),
            merchant_id: MerchantId::new(merchant),
            clip_ms: 30_000,
            lapses_at: Millis(lapses_at),
            lease: 0,
        }
    }

    /// The starvation tried by hand: one merchant's free previews filled a 4-slot node and
    /// another merchant's purchase found no slot. With the quota a merchant holds a quarter
    /// of the node; the protection off (previews chosen as sales are) shows the attack.
    #[test]
    fn one_merchants_previews_cannot_fill_a_node() {
        let mut allocation = Allocation::default();
        allocation.apply(&register("a", "eu", 4));
        let (shop, other) = (MerchantId::new("shop"), MerchantId::new("other"));
        assert_eq!(allocation.choose_preview_where(None, "p1", &shop, &|_| true), Some(NodeId::new("a")));
        assert_eq!(allocation.choose_preview_where(None, "p2", &shop, &|_| true), None, "a tentative preview counts against the quota");
        allocation.apply(&preview("p1", "a", "shop", 100));
        assert_eq!(allocation.choose_preview_where(None, "p2", &shop, &|_| true), None, "one of four slots is the shop's quota");
        assert_eq!(allocation.choose_preview_where(None, "p3", &other, &|_| true), Some(NodeId::new("a")), "another merchant's preview has its own");
        allocation.cancel("p3");
        assert_eq!(allocation.choose(None), Some(NodeId::new("a")), "sales still find the node's free slots");
        // The protection off: previews allocated as sales are take every slot.
        let mut unprotected = Allocation::default();
        unprotected.apply(&register("a", "eu", 4));
        for n in 0..4 {
            let id = format!("p{n}");
            assert_eq!(unprotected.choose_and_hold(None, &id), Some(NodeId::new("a")));
            unprotected.apply(&preview(&id, "a", "shop", 100));
        }
        assert_eq!(unprotected.choose(None), None, "without the quota the shop's previews starve every sale");
        assert_eq!(preview_quota(1), 1, "a one-slot node still gives each merchant a preview");
    }

    #[test]
    fn previews_past_their_window_are_due_oldest_first_and_end_gives_the_slot_back() {
        let mut allocation = Allocation::default();
        allocation.apply(&register("a", "eu", 8));
        allocation.apply(&preview("late", "a", "m1", 300));
        allocation.apply(&preview("early", "a", "m2", 100));
        allocation.apply(&preview("open", "a", "m3", 10_000));
        assert_eq!(allocation.due_preview_lapses(Millis(100), 10), Vec::<PreviewId>::new(), "due strictly after its window");
        assert_eq!(allocation.due_preview_lapses(Millis(1_000), 10), vec![PreviewId::new("early"), PreviewId::new("late")]);
        assert_eq!(allocation.due_preview_lapses(Millis(1_000), 1), vec![PreviewId::new("early")]);
        allocation.apply(&Event::PreviewEnded { preview_id: PreviewId::new("early"), played_ms: 0, media_id: MediaId::new("md"), node_id: NodeId::new("a") });
        assert_eq!(allocation.due_preview_lapses(Millis(1_000), 10), vec![PreviewId::new("late")]);
        assert_eq!(allocation.nodes[&NodeId::new("a")].in_use, 2, "the ended preview's slot came back");
    }

    #[test]
    fn chooses_least_loaded_then_fills_and_refuses_when_full() {
        let mut allocation = Allocation::default();
        allocation.apply(&register("a", "eu", 1));
        allocation.apply(&register("b", "eu", 2));
        assert_eq!(allocation.choose(None), Some(NodeId::new("a")));
        allocation.apply(&issue("v1", "a"));
        assert_eq!(allocation.choose(None), Some(NodeId::new("b")));
        allocation.apply(&issue("v2", "b"));
        allocation.apply(&issue("v3", "b"));
        assert_eq!(allocation.choose(None), None, "every slot is taken");
    }

    #[test]
    fn tentative_holds_count_until_the_event_is_applied_or_cancelled() {
        let mut allocation = Allocation::default();
        allocation.apply(&register("a", "eu", 2));
        assert_eq!(allocation.choose_and_hold(None, "v1"), Some(NodeId::new("a")));
        assert_eq!(allocation.choose_and_hold(None, "v1"), Some(NodeId::new("a")), "the same holder keeps its slot");
        assert_eq!(allocation.choose_and_hold(None, "v2"), Some(NodeId::new("a")));
        assert_eq!(allocation.choose_and_hold(None, "v3"), None, "two slots, two holds: full before any event");
        allocation.cancel("v2");
        assert_eq!(allocation.choose_and_hold(None, "v3"), Some(NodeId::new("a")));
        // Applying v1's issue converts its hold into a slot in use: still full, not over.
        allocation.apply(&issue("v1", "a"));
        assert_eq!(allocation.choose(None), None);
        assert_eq!(allocation.nodes[&NodeId::new("a")].in_use, 1);
    }

    #[test]
    fn only_eligible_nodes_are_chosen() {
        let mut allocation = Allocation::default();
        allocation.apply(&register("a", "eu", 10));
        allocation.apply(&register("b", "eu", 10));
        let only_b = |node: &NodeId| node.as_str() == "b";
        assert_eq!(allocation.choose(None), Some(NodeId::new("a")), "control: a is the first choice");
        assert_eq!(allocation.choose_and_hold_where(Order::Load, None, "v1", Millis(0), None, &only_b), Some((NodeId::new("b"), 0)));
        assert_eq!(allocation.choose_where(Some("eu"), &|_| false), None, "no healthy node, no choice");
    }

    #[test]
    fn drained_nodes_get_nothing_and_region_is_preferred() {
        let mut allocation = Allocation::default();
        allocation.apply(&register("a", "eu", 10));
        allocation.apply(&register("b", "us", 10));
        assert_eq!(allocation.choose(Some("us")), Some(NodeId::new("b")));
        allocation.apply(&Event::NodeDrained { node_id: NodeId::new("b") });
        assert_eq!(allocation.choose(Some("us")), Some(NodeId::new("a")), "falls back to another region");
        allocation.apply(&Event::NodeDrained { node_id: NodeId::new("a") });
        assert_eq!(allocation.choose(None), None);
    }

    #[test]
    fn slots_come_back_on_complete_delivery() {
        let mut allocation = Allocation::default();
        allocation.apply(&register("a", "eu", 1));
        allocation.apply(&issue("v1", "a"));
        assert_eq!(allocation.choose(None), None);
        allocation.apply(&Event::Delivered {
            voucher_id: VoucherId::new("v1"),
            node_id: NodeId::new("a"),
            media_id: MediaId::new("md"),
            cert_serial: engine::ids::CertSerial::new("c"),
            content_hash: [0; 32],
            size_bytes: 1,
            voucher_complete: true,
        });
        assert_eq!(allocation.choose(None), Some(NodeId::new("a")));
    }

    const TERMS: LeaseTerms = LeaseTerms { ttl_ms: 60_000, margin_ms: 5_000, grace_ms: 20_000, want_ms: 15_000 };

    fn leased(node: &str, lease: u64, holder: &str, slots: u32, until: i64) -> Event {
        Event::SlotsLeased { node_id: NodeId::new(node), lease, holder: holder.into(), slots, until: Millis(until) }
    }

    fn engine(holder: &str) -> Allocation {
        let mut allocation = Allocation::default();
        allocation.set_holder(holder);
        allocation.apply(&register("a", "eu", 4));
        allocation
    }

    /// Two engines, each with its own projection of one stream, place on a 4-slot node at
    /// once, before either sees the other's VoucherIssued. With leases they give out at
    /// most the node's slots between them; the protection off (no lease holder named: each
    /// by its own view of the node) they give out eight.
    #[test]
    fn two_engines_with_leases_never_give_out_more_slots_than_the_node_has() {
        let (mut a, mut b) = (engine("ea"), engine("eb"));
        assert_eq!(a.choose_and_hold_where(Order::Load, None, "va0", Millis(0), Some(TERMS), &|_| true), None, "no lease, no slot");
        let wish = a.lease_wish(Order::Load, None, None, Millis(0), TERMS, &|_| true).expect("a lease to ask for");
        assert_eq!(wish, LeaseWish { node: NodeId::new("a"), lease: None, change: LeaseChange::Grow(1) }, "a step of the node");
        // What the node aggregate granted, in stream order: ea 3 slots, eb the last one.
        for event in [leased("a", 1, "ea", 3, 60_000), leased("a", 2, "eb", 1, 60_000)] {
            a.apply(&event);
            b.apply(&event);
        }
        let mut given = 0;
        for n in 0..4 {
            given += usize::from(a.choose_and_hold_where(Order::Load, None, &format!("va{n}"), Millis(0), Some(TERMS), &|_| true).is_some());
            given += usize::from(b.choose_and_hold_where(Order::Load, None, &format!("vb{n}"), Millis(0), Some(TERMS), &|_| true).is_some());
        }
        assert_eq!(given, 4, "ea gives out its 3, eb its 1");
        assert_eq!(a.choose_and_hold_where(Order::Load, None, "va1", Millis(0), Some(TERMS), &|_| true), Some((NodeId::new("a"), 1)), "from lease 1");
        assert_eq!(a.lease_wish(Order::Leased, None, None, Millis(0), TERMS, &|_| true), None, "every slot is leased: nothing to grow into");
        assert_eq!(
            a.lease_wish(Order::Load, None, None, Millis(0), TERMS, &|_| true).map(|wish| wish.change),
            Some(LeaseChange::Want),
            "eb's lease shows a slot it does not use: ask for a share"
        );
        // Past its until (less the margin) a lease gives out nothing more: renew first.
        a.cancel("va2");
        assert_eq!(a.choose_and_hold_where(Order::Load, None, "va9", Millis(55_000), Some(TERMS), &|_| true), None);
        assert_eq!(
            a.lease_wish(Order::Load, None, None, Millis(55_000), TERMS, &|_| true).map(|wish| (wish.lease, wish.change)),
            Some((Some(1), LeaseChange::Set(3))),
            "renew lease 1"
        );
        // The protection off: each engine by its own view of the node.
        let (mut a, mut b) = (Allocation::default(), Allocation::default());
        a.apply(&register("a", "eu", 4));
        b.apply(&register("a", "eu", 4));
        let mut given = 0;
        for n in 0..4 {
            given += usize::from(a.choose_and_hold(None, &format!("va{n}")).is_some());
            given += usize::from(b.choose_and_hold(None, &format!("vb{n}")).is_some());
        }
        assert_eq!(given, 8, "without leases two engines give out twice the node");
    }

    #[test]
    fn slots_in_use_count_against_the_lease_they_came_from() {
        let mut a = engine("ea");
        a.apply(&leased("a", 1, "ea", 2, 60_000));
        let issued = |voucher: &str, lease| issue_from(voucher, "a", lease);
        a.apply(&issued("v1", 1));
        a.apply(&issued("v2", 1));
        assert_eq!(a.nodes[&NodeId::new("a")].leases[&1].in_use, 2);
        assert_eq!(a.choose_and_hold_where(Order::Load, None, "v3", Millis(0), Some(TERMS), &|_| true), None, "lease 1 is used up");
        a.apply(&Event::AccessLapsed { voucher_id: VoucherId::new("v1"), node_id: NodeId::new("a") });
        assert_eq!(a.nodes[&NodeId::new("a")].leases[&1].in_use, 1, "the lapsed voucher's slot came back to its lease");
        assert_eq!(a.choose_and_hold_where(Order::Load, None, "v3", Millis(0), Some(TERMS), &|_| true), Some((NodeId::new("a"), 1)));
    }

    /// The sweeper's care: renew a lease in use when half its ttl is gone, shrink one far
    /// larger than its use to a step above it, give back one unused, and take over another
    /// engine's lease once past its until and the grace.
    #[test]
    fn upkeep_renews_shrinks_gives_back_and_takes_over() {
        let mut a = Allocation::default();
        a.set_holder("ea");
        a.apply(&register("big", "eu", 16));
        a.apply(&register("idle", "eu", 4));
        a.apply(&register("other", "eu", 4));
        a.apply(&leased("big", 1, "ea", 16, 60_000));
        a.apply(&leased("idle", 2, "ea", 2, 60_000));
        a.apply(&leased("other", 3, "eb", 4, 60_000));
        a.apply(&issue_from("v1", "big", 1));
        assert_eq!(
            a.lease_upkeep(Millis(0), TERMS, false),
            vec![
                LeaseWish { node: NodeId::new("big"), lease: Some(1), change: LeaseChange::Set(3) },
                LeaseWish { node: NodeId::new("idle"), lease: Some(2), change: LeaseChange::Set(0) },
            ],
            "one in use and a step of 2 kept; the idle lease given back; eb's lease still running"
        );
        let wishes = a.lease_upkeep(Millis(80_001), TERMS, false);
        assert!(wishes.contains(&LeaseWish { node: NodeId::new("other"), lease: Some(3), change: LeaseChange::TakeOver }), "eb stopped renewing: {wishes:?}");
        a.apply(&leased("big", 1, "ea", 3, 60_000));
        assert_eq!(a.lease_upkeep(Millis(29_000), TERMS, false).iter().find(|wish| wish.node.as_str() == "big"), None, "more than half the ttl left");
        assert_eq!(
            a.lease_upkeep(Millis(31_000), TERMS, false).into_iter().find(|wish| wish.node.as_str() == "big"),
            Some(LeaseWish { node: NodeId::new("big"), lease: Some(1), change: LeaseChange::Set(3) }),
            "renewed as it is"
        );
    }

    /// A lease this engine appended is placed from before the projection applies it, but
    /// is no part of the state (the digest, the store) until applied: an engine's live
    /// state stays a function of the stream, whatever the order of noting and applying.
    #[test]
    fn a_noted_lease_places_at_once_and_never_changes_the_state() {
        let digest = |allocation: &Allocation| {
            let mut fields = Vec::new();
            allocation.digest_into(&mut |field| fields.push(field.to_vec()));
            fields
        };
        let mut a = engine("ea");
        let before = digest(&a);
        a.note_lease(&NodeId::new("a"), 1, "ea", 2, Millis(60_000));
        a.note_lease(&NodeId::new("a"), 2, "eb", 2, Millis(60_000));
        assert_eq!(digest(&a), before, "noted, not applied");
        assert_eq!(a.choose_and_hold_where(Order::Load, None, "v1", Millis(0), Some(TERMS), &|_| true), Some((NodeId::new("a"), 1)));
        assert_eq!(a.choose_and_hold_where(Order::Load, None, "v2", Millis(0), Some(TERMS), &|_| true), Some((NodeId::new("a"), 1)));
        assert_eq!(
            a.choose_and_hold_where(Order::Load, None, "v3", Millis(0), Some(TERMS), &|_| true),
            None,
            "two noted slots; another engine's lease is not noted"
        );
        a.apply(&leased("a", 1, "ea", 2, 60_000));
        assert!(a.noted.is_empty(), "applied: the note is dropped");
        // A lease given back is applied, and a late note cannot bring it back.
        a.apply(&leased("a", 1, "ea", 0, 0));
        a.note_lease(&NodeId::new("a"), 1, "ea", 0, Millis(0));
        assert!(a.noted.is_empty() && a.nodes[&NodeId::new("a")].leases.is_empty());
    }

    /// The first engine leased every slot of an 8-slot node (alone, under load) and keeps
    /// them in use. The second asks for its share (`SlotsWanted`): the first then gives out
    /// nothing past its share of 4, shrinks its lease toward it as its slots come back, and
    /// the second leases what came back. The protection off (no want on the stream) the
    /// first fills each slot that comes back again and the second never gets one.
    #[test]
    fn an_engine_finding_every_slot_leased_gets_its_share_as_slots_come_back() {
        let all = |_: &NodeId| true;
        let full = |asked: bool| {
            let (mut a, mut b) = (Allocation::default(), Allocation::default());
            a.set_holder("ea");
            b.set_holder("eb");
            let mut events = vec![register("n", "eu", 8), leased("n", 1, "ea", 8, 60_000)];
            events.extend((0..8).map(|n| issue_from(&format!("v{n}"), "n", 1)));
            if asked {
                events.push(Event::SlotsWanted { node_id: NodeId::new("n"), holder: "eb".into(), until: Millis(15_000) });
            }
            // Half of ea's vouchers lapse: their slots come back to its lease.
            events.extend((0..4).map(|n| Event::AccessLapsed { voucher_id: VoucherId::new(format!("v{n}")), node_id: NodeId::new("n") }));
            for event in &events {
                a.apply(event);
                b.apply(event);
            }
            (a, b)
        };
        let placed_by_a = |a: &mut Allocation| {
            (0..4).filter(|n| a.choose_and_hold_where(Order::Load, None, &format!("w{n}"), Millis(1_000), Some(TERMS), &all).is_some()).count()
        };

        let (mut a, b) = full(false);
        assert_eq!(
            b.lease_wish(Order::Load, None, None, Millis(0), TERMS, &all),
            Some(LeaseWish { node: NodeId::new("n"), lease: None, change: LeaseChange::Want }),
            "every slot leased by ea: eb asks for its share"
        );
        assert_eq!(placed_by_a(&mut a), 4, "the protection off: ea fills the slots that came back");
        assert_eq!(a.lease_upkeep(Millis(1_000), TERMS, false), vec![], "and keeps its lease of 8");

        let (mut a, mut b) = full(true);
        assert_eq!(
            b.lease_wish(Order::Load, None, None, Millis(1_000), TERMS, &all).map(|wish| wish.change),
            Some(LeaseChange::Want),
            "still nothing to lease: eb would ask again (the node aggregate appends nothing while its want runs)"
        );
        assert_eq!(placed_by_a(&mut a), 0, "ea has its share of 4 in use: nothing more from its lease");
        let shrink = a.lease_upkeep(Millis(1_000), TERMS, true);
        assert_eq!(shrink, vec![LeaseWish { node: NodeId::new("n"), lease: Some(1), change: LeaseChange::Set(4) }], "ea shrinks to its share");
        let shrunk = leased("n", 1, "ea", 4, 61_000);
        a.apply(&shrunk);
        b.apply(&shrunk);
        assert_eq!(
            b.lease_wish(Order::Load, None, None, Millis(1_000), TERMS, &all),
            Some(LeaseWish { node: NodeId::new("n"), lease: None, change: LeaseChange::Grow(1) })
        );
        let grown = leased("n", 2, "eb", 1, 61_000);
        a.apply(&grown);
        b.apply(&grown);
        assert!(b.nodes[&NodeId::new("n")].wants.is_empty(), "eb's lease grew: its want ended");
        assert_eq!(b.choose_and_hold_where(Order::Load, None, "x0", Millis(1_000), Some(TERMS), &all), Some((NodeId::new("n"), 2)), "eb places from its lease");
        assert_eq!(placed_by_a(&mut a), 0, "ea keeps to its share");
        // Nobody waits any more: ea may grow into what is unleased again.
        assert_eq!(a.lease_wish(Order::Load, None, None, Millis(1_000), TERMS, &all).map(|wish| wish.change), Some(LeaseChange::Grow(1)));
    }
}
