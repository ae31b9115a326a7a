//! The allocation's storage format in the projection store: the one conversion of its
//! nodes, slot holders and released slots to and from bytes, what a commit writes of a
//! changed allocation, and how the store reads one back.
//!
//! Keys:
//! - `an/` node → JSON `NodeRecord`;
//! - `av/` voucher → the node holding its slot, then `#` and its lease when it has one
//!   (`SlotRows`, kept cold in sled by `Rows`);
//! - `ap/` preview → JSON `PreviewRecord` (its node, merchant, lapse time and lease);
//! - `ar/` released voucher → empty (`ReleasedRows`, kept cold in sled by `Rows`).
//!
//! Not stored: tentative holds, which are advice of one process and not derived from the
//! stream (module docs of `allocation`). What is not here: the store's checks of the state
//! as a whole and its checkpoint (`store`).

use super::{Allocation, LeaseSlots, NodeSlots, PreviewSlot};
use crate::rows::{Prefix, RowError, RowKind, RowWrite, Rows, decode_json, json, key, keyed_by_voucher, utf8};
use engine::ids::{MerchantId, Millis, NodeId, PreviewId, VoucherId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const NODE_PREFIX: &Prefix = b"an/";
pub(crate) const SLOT_VOUCHER_PREFIX: &Prefix = b"av/";
pub(crate) const SLOT_PREVIEW_PREFIX: &Prefix = b"ap/";
pub(crate) const RELEASED_PREFIX: &Prefix = b"ar/";

/// Slot holders: `av/` voucher → node and lease.
#[derive(Debug)]
pub enum SlotRows {}

/// Released slots: `ar/` voucher → empty.
#[derive(Debug)]
pub enum ReleasedRows {}

#[derive(Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    pub(crate) region: String,
    pub(crate) slots_max: u32,
    pub(crate) in_use: u32,
    pub(crate) active: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) leases: Vec<LeaseRecord>,
    /// Engines asking for a share: holder → until (ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) wants: BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub(crate) lease: u64,
    pub(crate) holder: String,
    pub(crate) slots: u32,
    pub(crate) until_ms: i64,
    pub(crate) in_use: u32,
}

impl RowKind for SlotRows {
    type Value = (NodeId, u64);
    const PREFIX: &'static Prefix = SLOT_VOUCHER_PREFIX;
    keyed_by_voucher!();
    fn encode(slot: &(NodeId, u64)) -> Result<Vec<u8>, RowError> {
        Ok(slot_value(slot))
    }
    fn decode(key: &VoucherId, bytes: &[u8]) -> Result<(NodeId, u64), RowError> {
        let text = utf8(bytes, "node")?;
        match text.split_once('#') {
            None => Ok((NodeId(text), 0)),
            Some((node, lease)) => {
                let lease = lease.parse().map_err(|_| RowError::Value { kind: "slot lease", id: key.0.clone() })?;
                Ok((NodeId(node.to_string()), lease))
            }
        }
    }
}

impl RowKind for ReleasedRows {
    type Value = ();
    const PREFIX: &'static Prefix = RELEASED_PREFIX;
    keyed_by_voucher!();
    fn encode(_: &()) -> Result<Vec<u8>, RowError> {
        Ok(Vec::new())
    }
    fn decode(key: &VoucherId, bytes: &[u8]) -> Result<(), RowError> {
        if bytes.is_empty() { Ok(()) } else { Err(RowError::Value { kind: "released slot", id: key.0.clone() }) }
    }
}

/// A node id never holds `#` (ids are A-Z a-z 0-9 - _), so it separates the lease.
fn slot_value((node, lease): &(NodeId, u64)) -> Vec<u8> {
    if *lease == 0 { node.0.as_bytes().to_vec() } else { format!("{}#{lease}", node.0).into_bytes() }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PreviewRecord {
    pub(crate) node: String,
    pub(crate) merchant: String,
    pub(crate) lapses_at_ms: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) lease: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn preview_value(slot: &PreviewSlot) -> Result<Vec<u8>, RowError> {
    json(&PreviewRecord { node: slot.node.0.clone(), merchant: slot.merchant.0.clone(), lapses_at_ms: slot.lapses_at.0, lease: slot.lease }, "preview slot")
}

fn node_value(node: &NodeSlots) -> Result<Vec<u8>, RowError> {
    let leases = node
        .leases
        .iter()
        .map(|(lease, held)| LeaseRecord { lease: *lease, holder: held.holder.clone(), slots: held.slots, until_ms: held.until.0, in_use: held.in_use })
        .collect();
    let wants = node.wants.iter().map(|(holder, until)| (holder.clone(), until.0)).collect();
    json(&NodeRecord { region: node.region.clone(), slots_max: node.slots_max, in_use: node.in_use, active: node.active, leases, wants }, "node")
}

/// One changed node, slot or released slot, copied out of the allocation under the
/// projections' lock: the new value (`None`: removed), or whether the slot is released.
pub(crate) enum Change {
    Node(NodeId, Option<NodeSlots>),
    SlotVoucher(VoucherId, Option<(NodeId, u64)>),
    SlotPreview(PreviewId, Option<PreviewSlot>),
    Released(VoucherId, bool),
}

impl Change {
    /// The key and value to store: encoded here, outside the projections' lock.
    pub(crate) fn write(self) -> Result<RowWrite, RowError> {
        Ok(match self {
            Change::Node(id, node) => RowWrite::put_or_remove(key(NODE_PREFIX, id.0.as_bytes()), node.as_ref().map(node_value).transpose()?),
            Change::SlotVoucher(id, slot) => RowWrite::put_or_remove(key(SLOT_VOUCHER_PREFIX, id.0.as_bytes()), slot.as_ref().map(slot_value)),
            Change::SlotPreview(id, slot) => RowWrite::put_or_remove(key(SLOT_PREVIEW_PREFIX, id.0.as_bytes()), slot.as_ref().map(preview_value).transpose()?),
            Change::Released(id, released) => RowWrite::present_or_remove(key(RELEASED_PREFIX, id.0.as_bytes()), released),
        })
    }
}

impl Allocation {
    /// What changed since the last call, copied (no encoding, no I/O), for a commit.
    pub(crate) fn take_changes(&mut self) -> Result<Vec<Change>, Arc<RowError>> {
        let mut changes = Vec::new();
        for id in self.touched_nodes.take() {
            let node = self.nodes.get(&id).cloned();
            changes.push(Change::Node(id, node));
        }
        for (id, node) in self.vouchers.take_changes()? {
            changes.push(Change::SlotVoucher(id, node));
        }
        for id in self.touched_previews.take() {
            let node = self.previews.get(&id).cloned();
            changes.push(Change::SlotPreview(id, node));
        }
        for (id, released) in self.released.take_changes()? {
            changes.push(Change::Released(id, released.is_some()));
        }
        Ok(changes)
    }

    /// The batch `take_changes` took is stored: its rows leave memory.
    pub(crate) fn rows_committed(&mut self) {
        self.vouchers.rows_committed();
        self.released.rows_committed();
    }

    /// After the whole allocation was committed (a rebuild): its rows leave memory.
    pub(crate) fn spill(&mut self, db: &sled::Db) {
        self.vouchers.spill(db);
        self.released.spill(db);
    }
}

/// An allocation as the store reads it back, pair by pair: nodes and preview slots
/// collected, slot holders and released slots checked and counted (they stay in sled).
#[derive(Default)]
pub(crate) struct Reader {
    nodes: BTreeMap<NodeId, NodeSlots>,
    slot_vouchers: usize,
    slot_previews: BTreeMap<PreviewId, PreviewSlot>,
    released: usize,
}

impl Reader {
    /// Takes one stored pair; `false` when its prefix is not this format's.
    pub(crate) fn read(&mut self, prefix: &[u8], id: &[u8], value: &[u8]) -> Result<bool, RowError> {
        match prefix {
            p if p == NODE_PREFIX => {
                let id = utf8(id, "node")?;
                let record: NodeRecord = decode_json(value, "node", &id)?;
                let leases = record
                    .leases
                    .into_iter()
                    .map(|lease| (lease.lease, LeaseSlots { holder: lease.holder, slots: lease.slots, until: Millis(lease.until_ms), in_use: lease.in_use }))
                    .collect();
                let wants = record.wants.into_iter().map(|(holder, until)| (holder, Millis(until))).collect();
                let node = NodeSlots { region: record.region, slots_max: record.slots_max, in_use: record.in_use, active: record.active, leases, wants };
                self.nodes.insert(NodeId(id), node);
            }
            p if p == SLOT_VOUCHER_PREFIX => {
                SlotRows::decode(&SlotRows::key_of(id)?, value)?;
                self.slot_vouchers += 1;
            }
            p if p == SLOT_PREVIEW_PREFIX => {
                let id = utf8(id, "preview")?;
                let record: PreviewRecord = decode_json(value, "preview slot", &id)?;
                let slot = PreviewSlot {
                    node: NodeId(record.node),
                    merchant: MerchantId(record.merchant),
                    lapses_at: Millis(record.lapses_at_ms),
                    lease: record.lease,
                };
                self.slot_previews.insert(PreviewId(id), slot);
            }
            p if p == RELEASED_PREFIX => {
                ReleasedRows::decode(&ReleasedRows::key_of(id)?, value)?;
                self.released += 1;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The allocation, its slot holders and released slots left in `db`.
    pub(crate) fn finish(self, db: &sled::Db) -> Allocation {
        Allocation::from_parts(self.nodes, Rows::stored(db.clone(), self.slot_vouchers), self.slot_previews, Rows::stored(db.clone(), self.released))
    }
}
