//! Test harness shared by the end-to-end tests in `tests/`: real nats-server processes
//! that a test starts on free 127.0.0.1 ports with temporary stores and stops by their own
//! PIDs (`NatsServer`, `NatsCluster`, `find_binary` …).
//!
//! The launcher itself lives in `gateways::common::natsd`, because `vouchsafe bench` starts its
//! own servers the same way; it is re-exported here unchanged so the tests keep their
//! imports. `most_slots_in_use` replays a stream's slot arithmetic for the tests that check no
//! node ever had more slots in use than licensed.

pub use gateways::common::natsd::*;

use engine::domain::Event;
use engine::ids::Seq;
use engine::log::EventLog;
use std::collections::BTreeMap;

/// The most slots of any node in use at any sequence of the stream (issues, moves and
/// previews take one; lapses, voids, refunds, complete deliveries and ended previews give
/// it back), replayed from the raw events.
pub async fn most_slots_in_use(log: &dyn EventLog) -> u32 {
    let mut holding: BTreeMap<String, String> = BTreeMap::new();
    let mut in_use: BTreeMap<String, u32> = BTreeMap::new();
    let mut most = 0;
    let mut from = Seq(1);
    loop {
        let events = log.read_from(from, 1024).await.expect("read");
        let Some(last) = events.last() else { break };
        from = Seq(last.seq.0 + 1);
        for stored in &events {
            let event = engine::wire::decode(&stored.payload).expect("decodes").event;
            let (taken, released) = match &event {
                Event::VoucherIssued { voucher_id, node_id, .. } => (Some((voucher_id.0.clone(), node_id.0.clone())), holding.remove(&voucher_id.0)),
                Event::PreviewStarted { preview_id, node_id, .. } => (Some((preview_id.0.clone(), node_id.0.clone())), None),
                Event::PreviewEnded { preview_id, .. } => (None, holding.remove(&preview_id.0)),
                Event::Voided { voucher_id, .. } | Event::Refunded { voucher_id, .. } | Event::AccessLapsed { voucher_id, .. } => {
                    (None, holding.remove(&voucher_id.0))
                }
                Event::Delivered { voucher_id, voucher_complete: true, .. } => (None, holding.remove(&voucher_id.0)),
                _ => (None, None),
            };
            if let Some(node) = released {
                *in_use.entry(node).or_default() -= 1;
            }
            if let Some((holder, node)) = taken {
                let count = in_use.entry(node.clone()).or_default();
                *count += 1;
                most = most.max(*count);
                holding.insert(holder, node);
            }
        }
    }
    most
}
