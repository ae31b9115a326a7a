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
use format::{ReleasedRows, SlotRows};
use std::collections::BTreeMap;

pub(crate) mod format;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSlots {
    pub region: String,
    pub slots_max: u32,
    pub in_use: u32,
    pub active: bool,
}

/// A started preview holding a slot: its node, its merchant (for the merchant's preview
/// quota on the node) and when the sweeper may end it unreported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviewSlot {
    pub node: NodeId,
    pub merchant: MerchantId,
    pub lapses_at: Millis,
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
    /// Vouchers holding a slot, by node.
    pub(crate) vouchers: Rows<SlotRows>,
    pub(crate) previews: BTreeMap<PreviewId, PreviewSlot>,
    /// Vouchers whose slot came back (complete delivery).
    pub(crate) released: Rows<ReleasedRows>,
    /// Slots chosen but whose event this projection has not applied yet, by holder
    /// (voucher or preview id), with the merchant of a preview. Not derived from the
    /// stream, so not in the digest.
    tentative: BTreeMap<String, (NodeId, Option<MerchantId>)>,
    /// What changed since the projection store last committed this allocation.
    pub(crate) touched_nodes: Touched<NodeId>,
    pub(crate) touched_previews: Touched<PreviewId>,
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
        }
    }

    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::NodeRegistered { node_id, region, slots_max, .. } => {
                self.nodes.insert(node_id.clone(), NodeSlots { region: region.clone(), slots_max: *slots_max, in_use: 0, active: true });
                self.touched_nodes.touch(node_id);
            }
            Event::NodeCapacityChanged { node_id, slots_max } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.slots_max = *slots_max;
                    self.touched_nodes.touch(node_id);
                }
            }
            Event::NodeDrained { node_id } | Event::NodeRemoved { node_id } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.active = false;
                    self.touched_nodes.touch(node_id);
                }
            }
            Event::VoucherIssued { voucher_id, node_id, previous_node, .. } => {
                self.tentative.remove(voucher_id.as_str());
                // Moved off a node that no longer serves it: that node's slot comes back.
                if let Some(previous) = previous_node
                    && self.vouchers.remove(voucher_id).is_some()
                {
                    self.give_back(previous);
                }
                self.take(node_id);
                self.vouchers.insert(voucher_id.clone(), node_id.clone());
            }
            Event::Voided { voucher_id, .. } | Event::Refunded { voucher_id, .. } => {
                // Refunded (or voided once issued): the slot comes back, if it still held one.
                if let Some(node_id) = self.vouchers.remove(voucher_id) {
                    self.give_back(&node_id);
                }
            }
            Event::AccessLapsed { voucher_id, .. } => {
                // The access window ended unused: the slot comes back (a reissue takes one again).
                if let Some(node_id) = self.vouchers.remove(voucher_id) {
                    self.give_back(&node_id);
                }
            }
            Event::Delivered { voucher_id, voucher_complete: true, .. } => {
                if let Some(node_id) = self.vouchers.remove(voucher_id) {
                    self.give_back(&node_id);
                    self.released.insert(voucher_id.clone(), ());
                }
            }
            Event::PreviewStarted { preview_id, node_id, merchant_id, lapses_at, .. } => {
                self.tentative.remove(preview_id.as_str());
                self.take(node_id);
                self.previews.insert(preview_id.clone(), PreviewSlot { node: node_id.clone(), merchant: merchant_id.clone(), lapses_at: *lapses_at });
                self.touched_previews.touch(preview_id);
            }
            Event::PreviewEnded { preview_id, .. } => {
                if let Some(slot) = self.previews.remove(preview_id) {
                    self.give_back(&slot.node);
                    self.touched_previews.touch(preview_id);
                }
            }
            _ => {}
        }
    }

    fn take(&mut self, node_id: &NodeId) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.in_use = node.in_use.saturating_add(1);
            self.touched_nodes.touch(node_id);
        }
    }

    fn give_back(&mut self, node_id: &NodeId) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.in_use = node.in_use.saturating_sub(1);
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
        let held = self.tentative.values().filter(|(holder_node, _)| holder_node == node_id).count();
        node.in_use.saturating_add(u32::try_from(held).unwrap_or(u32::MAX))
    }

    /// Slots of `node_id` that `merchant`'s previews hold, started or held tentatively.
    pub fn previews_of(&self, node_id: &NodeId, merchant: &MerchantId) -> u32 {
        let started = self.previews.values().filter(|slot| slot.node == *node_id && slot.merchant == *merchant).count();
        let held = self.tentative.values().filter(|(node, holder)| node == node_id && holder.as_ref() == Some(merchant)).count();
        u32::try_from(started + held).unwrap_or(u32::MAX)
    }

    /// Vouchers holding a slot on a node `stranded` picks (one that no longer serves them),
    /// at most `limit`: what the sweeper moves. A scan of the slot holders (at most the
    /// slots in use), made only when such a node holds any.
    pub fn stranded_vouchers(&self, stranded: &dyn Fn(&NodeId) -> bool, limit: usize) -> Vec<(engine::ids::VoucherId, NodeId)> {
        if !self.nodes.iter().any(|(id, node)| node.in_use > 0 && stranded(id)) {
            return Vec::new();
        }
        self.vouchers.iter().filter(|(_, node)| stranded(node)).take(limit).collect()
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
        self.choose_and_hold_where(region, holder, &|_| true)
    }

    /// As `choose_and_hold`, among the nodes `eligible` accepts (the engine's health view:
    /// nodes that announced themselves and sent a recent heartbeat).
    pub fn choose_and_hold_where(&mut self, region: Option<&str>, holder: &str, eligible: &dyn Fn(&NodeId) -> bool) -> Option<NodeId> {
        if let Some((node, _)) = self.tentative.get(holder) {
            return Some(node.clone());
        }
        let node = self.choose_where(region, eligible)?;
        self.tentative.insert(holder.to_string(), (node.clone(), None));
        Some(node)
    }

    /// As `choose_and_hold_where`, for a preview of `merchant`: only nodes where the
    /// merchant's previews hold less than its quota (`preview_quota`).
    pub fn choose_preview_where(&mut self, region: Option<&str>, holder: &str, merchant: &MerchantId, eligible: &dyn Fn(&NodeId) -> bool) -> Option<NodeId> {
        if let Some((node, _)) = self.tentative.get(holder) {
            return Some(node.clone());
        }
        let node = self.choose_where(region, &|node| eligible(node) && self.preview_room(node, merchant))?;
        self.tentative.insert(holder.to_string(), (node.clone(), Some(merchant.clone())));
        Some(node)
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
        // Load as a fraction compared by cross-multiplication (no floats): a/b < c/d.
        let least_loaded = |candidates: Vec<(&NodeId, &NodeSlots)>| {
            candidates
                .into_iter()
                .min_by(|(a_id, a), (b_id, b)| {
                    (u64::from(self.load(a_id, a)) * u64::from(b.slots_max))
                        .cmp(&(u64::from(self.load(b_id, b)) * u64::from(a.slots_max)))
                        .then_with(|| a_id.cmp(b_id))
                })
                .map(|(id, _)| id.clone())
        };
        if let Some(region) = region {
            let local: Vec<_> = self.nodes.iter().filter(|(_, n)| n.region == region).filter(free).collect();
            if let Some(node) = least_loaded(local) {
                return Some(node);
            }
        }
        least_loaded(self.nodes.iter().filter(free).collect())
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
        Event::VoucherIssued {
            voucher_id: VoucherId::new(voucher),
            node_id: NodeId::new(node),
            merchant_id: MerchantId::new("m"),
            media_ids: vec![MediaId::new("md")],
            rendition: "high".into(),
            access_expires_at: Millis(0),
            previous_node: None,
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
        assert_eq!(allocation.choose_and_hold_where(None, "v1", &only_b), Some(NodeId::new("b")));
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
}
