//! After the sale, given/when/then: a voucher under way leaves a node that finishes
//! nothing (removed, silent) for its keys' consumer, and a delivered voucher's access is
//! renewed for the recovery of a lost copy after its window.

use super::fixtures::*;
use crate::domain::event::Event;
use crate::domain::testing::check;
use crate::domain::voucher::NodeStanding::{self, Dead, Gone, Serving};
use crate::domain::voucher::{CertCheck, ProofCheck, Voucher, VoucherCommand, VoucherStatus};
use crate::domain::{Aggregate, Rejection, fold};
use crate::ids::{Millis, NodeId};

fn with(mut events: Vec<Event>, more: impl IntoIterator<Item = Event>) -> Vec<Event> {
    events.extend(more);
    events
}

fn invalid(command: &'static str, state: &'static str) -> Rejection {
    Rejection::InvalidTransition { kind: "voucher", command, state }
}

fn moved_by_engine(standing: NodeStanding) -> VoucherCommand {
    VoucherCommand::Move { merchant: None, node: other_node(), access_ttl_ms: ACCESS_TTL, old_node: standing, retries_max: RETRIES_MAX, lease: 0 }
}

const AFTER_WINDOW: Millis = Millis(ISSUED_AT.0 + ACCESS_TTL as i64 + 1);

#[test]
fn a_voucher_under_way_leaves_a_node_that_finishes_nothing_for_the_consumer_holding_its_keys() {
    // Redeeming on a removed or silent node: it moves, and goes back to Issued there.
    let decided = fold::<Voucher>(&song_redeeming()).decide(&moved_by_engine(Dead), T0).expect("moved");
    assert!(matches!(&decided[..], [Event::VoucherIssued { node_id, previous_node: Some(previous), .. }] if *node_id == other_node() && *previous == node()));
    let moved = with(song_redeeming(), decided);
    let state = fold::<Voucher>(&moved);
    assert_eq!((state.status, state.node.clone(), state.consumer.clone()), (VoucherStatus::Issued, Some(other_node()), None));
    // Only the consumer the keys went to redeems at the new node, and it releases nothing anew
    // (the usage was counted at the first release).
    let again = redeem_as(other_node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid);
    let at_new = redeem_answering(other_node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid, [50; 32]);
    let events = fold::<Voucher>(&moved).decide(&at_new, ISSUED_AT).expect("the keys' consumer redeems at the new node");
    assert!(matches!(&events[..], [Event::RedemptionAccepted { released_media, .. }] if released_media.is_empty()), "{events:?}");
    let mallory = redeem_as(other_node(), crate::ids::ConsumerId::new("mallory"), crate::ids::CertSerial::new("m1"), CertCheck::Valid, ProofCheck::Valid);
    check::<Voucher>(&moved, mallory, ISSUED_AT, Err(Rejection::AlreadyRedeemed));
    // The old node is told the voucher moved.
    check::<Voucher>(&moved, redeem(), ISSUED_AT, Err(Rejection::VoucherMoved));
    // The same consumer's answered challenge stays spent across the move.
    check::<Voucher>(&moved, again, ISSUED_AT, Err(Rejection::ChallengeUsed));
    // After a failed delivery (keys out, back to Issued) likewise.
    check::<Voucher>(&with(song_redeeming(), [delivery_failed()]), moved_by_engine(Dead), T0, Ok(vec![moved_to_other_node(T0)]));
}

#[test]
fn a_drained_node_finishes_what_it_started_and_a_serving_one_keeps_everything() {
    // Control: the same voucher on a node that is only drained (or serves) stays.
    check::<Voucher>(&song_redeeming(), moved_by_engine(Gone), T0, Err(invalid("Move", "Redeeming")));
    check::<Voucher>(&song_redeeming(), moved_by_engine(Serving), T0, Err(invalid("Move", "Redeeming")));
    check::<Voucher>(&with(song_redeeming(), [delivery_failed()]), moved_by_engine(Gone), T0, Err(invalid("Move", "Issued")));
    // Delivered or refunded: nothing moves, whatever the node.
    check::<Voucher>(&song_delivered(), moved_by_engine(Dead), T0, Err(Rejection::AlreadyDelivered));
    // Unredeemed: any node that does not serve lets it go (as before).
    check::<Voucher>(&song_issued(), moved_by_engine(Dead), T0, Ok(vec![moved_to_other_node(T0)]));
}

fn moved_to_other_node(at: Millis) -> Event {
    Event::VoucherIssued {
        voucher_id: voucher_id(),
        node_id: other_node(),
        merchant_id: merchant(),
        media_ids: vec![mid("song1")],
        rendition: "high".into(),
        access_expires_at: at.plus_ms(ACCESS_TTL),
        previous_node: Some(node()),
        lease: 0,
    }
}

fn renew(node: NodeId, standing: NodeStanding) -> VoucherCommand {
    VoucherCommand::RenewAccess { merchant: merchant(), node, access_ttl_ms: ACCESS_TTL, old_node: standing, recoveries_max: 2 }
}

fn renewed(node: NodeId, previous: Option<NodeId>, at: Millis) -> Event {
    Event::AccessRenewed { voucher_id: voucher_id(), node_id: node, previous_node: previous, access_expires_at: at.plus_ms(ACCESS_TTL) }
}

fn recovery_on(node: NodeId, challenge: u8) -> VoucherCommand {
    let VoucherCommand::Redeem(redeem) = redeem_answering(node, consumer(), cert(), CertCheck::Valid, ProofCheck::Valid, [challenge; 32]) else {
        unreachable!("redeem_answering builds a Redeem")
    };
    VoucherCommand::Recover { redeem, recoveries_max: 2 }
}

#[test]
fn a_delivered_vouchers_access_is_renewed_for_a_recovery_after_its_window() {
    // Within the window the token the merchant has still works: nothing to record.
    check::<Voucher>(&song_delivered(), renew(node(), Serving), ISSUED_AT, Ok(vec![]));
    // After it: a new window on the node that delivered it.
    check::<Voucher>(&song_delivered(), renew(node(), Serving), AFTER_WINDOW, Ok(vec![renewed(node(), None, AFTER_WINDOW)]));
    // That node gone: on another, which the old one's tokens do not reach.
    let elsewhere = with(song_delivered(), [renewed(other_node(), Some(node()), AFTER_WINDOW)]);
    check::<Voucher>(&song_delivered(), renew(other_node(), Dead), AFTER_WINDOW, Ok(vec![renewed(other_node(), Some(node()), AFTER_WINDOW)]));
    let state = fold::<Voucher>(&elsewhere);
    assert_eq!((state.status, state.node.clone(), state.recoveries), (VoucherStatus::Delivered, Some(other_node()), 0), "no slot, no usage, no recovery yet");
    assert!(fold::<Voucher>(&elsewhere).decide(&recovery_on(other_node(), 60), AFTER_WINDOW).is_ok(), "the recovery at the new node");
    check::<Voucher>(&elsewhere, recovery_on(node(), 61), AFTER_WINDOW, Err(Rejection::VoucherMoved));
}

#[test]
fn a_renewal_needs_a_delivered_voucher_of_this_merchant_with_a_recovery_left() {
    check::<Voucher>(&song_issued(), renew(node(), Serving), AFTER_WINDOW, Err(invalid("IssueVoucher", "Issued")));
    let other = VoucherCommand::RenewAccess { merchant: other_merchant(), node: node(), access_ttl_ms: ACCESS_TTL, old_node: Serving, recoveries_max: 2 };
    check::<Voucher>(&song_delivered(), other, AFTER_WINDOW, Err(Rejection::NotFound { kind: "voucher", id: String::new() }));
    let used = with(song_delivered(), [recovered(1), recovered(2)]);
    check::<Voucher>(&used, renew(node(), Serving), AFTER_WINDOW, Err(Rejection::RecoveriesExhausted { recoveries_max: 2 }));
    // The node must match the standing: the same node while it serves, another once it does not.
    check_invalid::<Voucher>(&song_delivered(), renew(other_node(), Serving), AFTER_WINDOW, "node_id");
    check_invalid::<Voucher>(&song_delivered(), renew(node(), Dead), AFTER_WINDOW, "node_id");
    let too_long = VoucherCommand::RenewAccess { merchant: merchant(), node: node(), access_ttl_ms: 0, old_node: Serving, recoveries_max: 2 };
    check_invalid::<Voucher>(&song_delivered(), too_long, AFTER_WINDOW, "access_ttl_ms");
    // A refunded voucher is never served again.
    let refunded = with(
        song_delivered(),
        [Event::Refunded { voucher_id: voucher_id(), reason: "asked".into(), chargeback: false, reversal: vec![], media_ids: vec![mid("song1")] }],
    );
    check::<Voucher>(&refunded, renew(node(), Serving), AFTER_WINDOW, Err(invalid("IssueVoucher", "Refunded")));
}

fn recovered(recovery: u32) -> Event {
    Event::CopyRecovered {
        voucher_id: voucher_id(),
        node_id: node(),
        consumer_id: consumer(),
        cert_serial: cert(),
        challenge_hash: [70 + recovery as u8; 32],
        consumer_key_hash: [8; 32],
        recovery,
    }
}

/// A delivery that did not finish in its window lapsed: the voucher is paid and unissued,
/// and its keys are with their consumer. The hole this closes: a merchant's Void then gave
/// the money back and kept the usage in the royalties; now it is refused, and a refund
/// (which adjusts the royalties) goes through. Reissued, only the keys' consumer redeems,
/// and nothing is released anew.
#[test]
fn a_delivery_lapsed_in_its_window_is_refunded_not_voided_and_reissued_to_its_consumer() {
    let lapsed = with(song_redeeming(), [Event::AccessLapsed { voucher_id: voucher_id(), node_id: node() }]);
    let state = fold::<Voucher>(&lapsed);
    assert_eq!((state.status, state.node.clone(), state.consumer.clone()), (VoucherStatus::Authorized, None, None));
    check::<Voucher>(&lapsed, VoucherCommand::Void { merchant: merchant() }, AFTER_WINDOW, Err(Rejection::KeysReleased));
    // Control: never redeemed, the same void goes through.
    let unredeemed = with(song_issued(), [Event::AccessLapsed { voucher_id: voucher_id(), node_id: node() }]);
    assert!(fold::<Voucher>(&unredeemed).decide(&VoucherCommand::Void { merchant: merchant() }, AFTER_WINDOW).is_ok());
    let refund = VoucherCommand::Refund { merchant: merchant(), reason: "asked".into(), chargeback: false };
    let refunded = fold::<Voucher>(&lapsed).decide(&refund, AFTER_WINDOW).expect("refunded");
    assert!(matches!(&refunded[..], [Event::Refunded { .. }]), "{refunded:?}");
    let issue = VoucherCommand::Issue { merchant: merchant(), node: other_node(), access_ttl_ms: ACCESS_TTL, lease: 0 };
    let reissued = with(
        lapsed,
        fold::<Voucher>(&with(song_redeeming(), [Event::AccessLapsed { voucher_id: voucher_id(), node_id: node() }]))
            .decide(&issue, AFTER_WINDOW)
            .expect("issued anew"),
    );
    let mallory = redeem_as(other_node(), crate::ids::ConsumerId::new("mallory"), crate::ids::CertSerial::new("m1"), CertCheck::Valid, ProofCheck::Valid);
    check::<Voucher>(&reissued, mallory, AFTER_WINDOW, Err(Rejection::AlreadyRedeemed));
    let again = redeem_answering(other_node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid, [51; 32]);
    let events = fold::<Voucher>(&reissued).decide(&again, AFTER_WINDOW).expect("the keys' consumer redeems again");
    assert!(matches!(&events[..], [Event::RedemptionAccepted { released_media, .. }] if released_media.is_empty()), "{events:?}");
}
