//! Slot leases on a delivery node (`NodeCommand::Lease`, `TakeOver`): how engines sharing a
//! stream split a node's slots so that none can give away more than the node has.

use super::fixtures::{T0, node};
use crate::domain::event::Event;
use crate::domain::party::{Node, NodeCommand};
use crate::domain::testing::check;
use crate::domain::{Aggregate, Rejection, fold};
use crate::ids::Millis;

const TTL: u64 = 60_000;
const GRACE: u64 = 20_000;

fn registered(slots_max: u32) -> Event {
    Event::NodeRegistered { node_id: node(), region: "eu".into(), slots_max, credential_hash: [5; 32] }
}

fn leased(lease: u64, holder: &str, slots: u32, until: Millis) -> Event {
    Event::SlotsLeased { node_id: node(), lease, holder: holder.into(), slots, until }
}

fn lease(lease: Option<u64>, holder: &str, slots: u32) -> NodeCommand {
    NodeCommand::Lease { lease, holder: holder.into(), slots, ttl_ms: TTL }
}

#[test]
fn leases_split_the_slots_and_never_sum_past_them() {
    let given = [registered(10), leased(1, "ea", 6, T0.plus_ms(TTL))];
    // A new lease gets the next number, within the slots no other lease holds.
    check::<Node>(&given, lease(None, "eb", 4), T0, Ok(vec![leased(2, "eb", 4, T0.plus_ms(TTL))]));
    check::<Node>(&given, lease(None, "eb", 5), T0, Err(Rejection::NoNodeAvailable));
    // Its holder grows it into what is free, renews it, shrinks it, gives it back.
    check::<Node>(&given, lease(Some(1), "ea", 10), T0, Ok(vec![leased(1, "ea", 10, T0.plus_ms(TTL))]));
    check::<Node>(&given, lease(Some(1), "ea", 11), T0, Err(Rejection::NoNodeAvailable));
    check::<Node>(&given, lease(Some(1), "ea", 2), T0.plus_ms(5), Ok(vec![leased(1, "ea", 2, T0.plus_ms(5 + TTL))]));
    check::<Node>(&given, lease(Some(1), "ea", 0), T0, Ok(vec![leased(1, "ea", 0, T0)]));
    let given_back: Node = fold(&[registered(10), leased(1, "ea", 6, T0), leased(1, "ea", 0, T0)]);
    assert!(given_back.leases.is_empty() && given_back.next_lease == 2, "a lease given back is gone; its number is not reused");
    // Nobody else sets another engine's lease: it lost it, and leases anew.
    check::<Node>(&given, lease(Some(1), "eb", 1), T0, Err(Rejection::SlotLeaseLost));
    check::<Node>(&given, lease(Some(7), "ea", 1), T0, Err(Rejection::SlotLeaseLost));
    let new_empty = lease(None, "eb", 0);
    assert!(matches!(Node::decide(&fold(&given), &new_empty, T0), Err(Rejection::InvalidArgument { field: "slots", .. })));
}

#[test]
fn a_node_that_takes_no_new_work_only_lets_leases_shrink() {
    let drained = [registered(10), leased(1, "ea", 4, T0.plus_ms(TTL)), Event::NodeDrained { node_id: node() }];
    check::<Node>(&drained, lease(Some(1), "ea", 5), T0, Err(Rejection::NoNodeAvailable));
    check::<Node>(&drained, lease(None, "eb", 1), T0, Err(Rejection::NoNodeAvailable));
    check::<Node>(&drained, lease(Some(1), "ea", 1), T0, Ok(vec![leased(1, "ea", 1, T0.plus_ms(TTL))]));
    // The operator lowered the node's slots under the leases: none grows till they fit.
    let lowered = [registered(10), leased(1, "ea", 8, T0.plus_ms(TTL)), Event::NodeCapacityChanged { node_id: node(), slots_max: 6 }];
    check::<Node>(&lowered, lease(None, "eb", 1), T0, Err(Rejection::NoNodeAvailable));
    check::<Node>(&lowered, lease(Some(1), "ea", 7), T0, Ok(vec![leased(1, "ea", 7, T0.plus_ms(TTL))]));
}

/// A dead engine's lease (its holder stopped renewing) is taken over, with its slots in
/// use, only after its `until` plus the grace: before, its holder may still be placing.
#[test]
fn a_lease_is_taken_over_only_after_it_ran_out_and_the_grace_passed() {
    let until = T0.plus_ms(TTL);
    let given = [registered(10), leased(1, "ea", 6, until)];
    let take = |holder: &str| NodeCommand::TakeOver { lease: 1, holder: holder.into(), ttl_ms: TTL, grace_ms: GRACE };
    let free_from = until.plus_ms(GRACE);
    check::<Node>(&given, take("eb"), until, Err(Rejection::NotExpired { expires_at: free_from }));
    check::<Node>(&given, take("eb"), free_from, Err(Rejection::NotExpired { expires_at: free_from }));
    let later = free_from.plus_ms(1);
    check::<Node>(&given, take("eb"), later, Ok(vec![leased(1, "eb", 6, later.plus_ms(TTL))]));
    assert!(
        matches!(Node::decide(&fold(&given), &take("ea"), later), Err(Rejection::InvalidArgument { field: "holder", .. })),
        "its holder renews, not takes over"
    );
    check::<Node>(
        &given,
        NodeCommand::TakeOver { lease: 9, holder: "eb".into(), ttl_ms: TTL, grace_ms: GRACE },
        later,
        Err(Rejection::NotFound { kind: "slot lease", id: "9".into() }),
    );
    // Taken over, the old holder has lost it (OCC orders the two).
    let taken = [registered(10), leased(1, "ea", 6, until), leased(1, "eb", 6, later.plus_ms(TTL))];
    check::<Node>(&taken, lease(Some(1), "ea", 6), later, Err(Rejection::SlotLeaseLost));
}

/// Placements asking at once each add their growth (an absolute size would let the
/// second of two asks for "one more" add nothing), never past the slots no lease holds.
#[test]
fn growth_adds_to_the_lease_within_the_unleased_slots() {
    let given = [registered(10), leased(1, "ea", 6, T0.plus_ms(TTL)), leased(2, "eb", 2, T0.plus_ms(TTL))];
    let grow = |lease, holder: &str, by| NodeCommand::Grow { lease, holder: holder.into(), by, ttl_ms: TTL };
    check::<Node>(&given, grow(Some(1), "ea", 1), T0, Ok(vec![leased(1, "ea", 7, T0.plus_ms(TTL))]));
    check::<Node>(&given, grow(Some(1), "ea", 5), T0, Ok(vec![leased(1, "ea", 8, T0.plus_ms(TTL))]));
    check::<Node>(&given, grow(None, "ec", 1), T0, Ok(vec![leased(3, "ec", 1, T0.plus_ms(TTL))]));
    check::<Node>(&given, grow(Some(2), "ea", 1), T0, Err(Rejection::SlotLeaseLost));
    let full = [registered(10), leased(1, "ea", 8, T0.plus_ms(TTL)), leased(2, "eb", 2, T0.plus_ms(TTL))];
    check::<Node>(&full, grow(Some(1), "ea", 1), T0, Err(Rejection::NoNodeAvailable));
}

/// An engine that found every slot leased by others asks for its share (`SlotsWanted`):
/// once, not again while its want has more than half its ttl to run, and no longer once
/// its own lease grows.
#[test]
fn a_want_is_asked_once_and_ends_when_the_lease_grows() {
    const WANT: u64 = 15_000;
    let want = |holder: &str| NodeCommand::Want { holder: holder.into(), ttl_ms: WANT };
    let wanted = |holder: &str, until: Millis| Event::SlotsWanted { node_id: node(), holder: holder.into(), until };
    let full = [registered(8), leased(1, "ea", 8, T0.plus_ms(TTL))];
    check::<Node>(&full, want("eb"), T0, Ok(vec![wanted("eb", T0.plus_ms(WANT))]));
    let asked = [registered(8), leased(1, "ea", 8, T0.plus_ms(TTL)), wanted("eb", T0.plus_ms(WANT))];
    check::<Node>(&asked, want("eb"), T0.plus_ms(WANT / 2 - 1), Ok(vec![]));
    check::<Node>(&asked, want("eb"), T0.plus_ms(WANT / 2 + 1), Ok(vec![wanted("eb", T0.plus_ms(WANT / 2 + 1 + WANT))]));
    let state: Node = fold(&asked);
    assert_eq!(state.wants.get("eb"), Some(&T0.plus_ms(WANT)));
    // ea shrinks (its want, had it one, would stay), eb's lease grows: eb's want ends.
    let shared: Node = fold(&[&asked[..], &[leased(1, "ea", 4, T0.plus_ms(TTL)), leased(2, "eb", 4, T0.plus_ms(TTL))]].concat());
    assert!(shared.wants.is_empty(), "{:?}", shared.wants);
    let drained = [registered(8), Event::NodeDrained { node_id: node() }];
    check::<Node>(&drained, want("eb"), T0, Err(Rejection::NoNodeAvailable));
    assert!(matches!(
        Node::decide(&fold(&full), &NodeCommand::Want { holder: "eb".into(), ttl_ms: 0 }, T0),
        Err(Rejection::InvalidArgument { field: "ttl_ms", .. })
    ));
}
