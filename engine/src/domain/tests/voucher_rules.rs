//! Every voucher transition and every refusal, given/when/then.

use super::fixtures::*;
use crate::domain::catalog::tests::sample;
use crate::domain::event::{Event, LedgerAccountKind, Payment, VoidReason};
use crate::domain::settlement::balanced;
use crate::domain::testing::check;
use crate::domain::voucher::{
    ACCESS_TTL_MS_MAX, CertCheck, ITEMS_MAX, ProofCheck, PurchaseSet, RESERVATION_TTL_MS_MAX, Voucher, VoucherCommand, VoucherStatus,
};
use crate::domain::{Aggregate, Rejection, fold};
use crate::ids::{CertSerial, ConsumerId, MediaId, Millis, NodeId};

fn not_found() -> Rejection {
    Rejection::NotFound { kind: "voucher", id: String::new() }
}
fn invalid(command: &'static str, state: &'static str) -> Rejection {
    Rejection::InvalidTransition { kind: "voucher", command, state }
}
fn with<T>(mut events: Vec<T>, more: impl IntoIterator<Item = T>) -> Vec<T> {
    events.extend(more);
    events
}

// ---------------------------------------------------------------- Reserve

#[test]
fn reserve_paid_by_the_merchant_records_items_price_and_expiry() {
    check::<Voucher>(&[], VoucherCommand::Reserve(reserve_cmd(&[SONG], card())), T0, Ok(vec![reserved(&[SONG], card())]));
}

#[test]
fn reserve_paid_in_points_names_the_points_account() {
    check::<Voucher>(&[], VoucherCommand::Reserve(reserve_cmd(&[SONG], points())), T0, Ok(vec![reserved(&[SONG], points())]));
}

#[test]
fn reserve_charges_the_current_price_of_each_item() {
    let mut reserve = reserve_cmd(&[("t1", 100), ("t2", 250)], card());
    // t2 was published at 999 and repriced to 250: the reservation takes 250.
    reserve.items[1].1 = fold(&[Event::MediaPublished(sample("t2", 999)), Event::PriceChanged { media_id: mid("t2"), price_minor: 250 }]);
    check::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, Ok(vec![reserved(&[("t1", 100), ("t2", 250)], card())]));
}

#[test]
fn reserve_of_unknown_media_is_not_found() {
    let mut reserve = reserve_cmd(&[SONG], card());
    reserve.items[0].1 = Default::default();
    check::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, Err(Rejection::NotFound { kind: "media", id: "song1".into() }));
}

#[test]
fn reserve_of_media_not_for_sale_is_refused() {
    let mut reserve = reserve_cmd(&[SONG], card());
    let mut published = sample("song1", 100);
    published.for_sale = false;
    reserve.items[0].1 = media_from(published);
    check::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, Err(Rejection::NotForSale("song1".into())));
}

#[test]
fn reserve_of_withdrawn_media_is_refused() {
    let mut reserve = reserve_cmd(&[("t1", 100), SONG], card());
    reserve.items[1].1 = fold(&[Event::MediaPublished(sample("song1", 100)), Event::MediaWithdrawn { media_id: mid("song1"), reason: "rights lapsed".into() }]);
    check::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, Err(Rejection::NotForSale("song1".into())));
}

#[test]
fn reserve_of_a_rendition_the_media_lacks_is_refused() {
    let mut reserve = reserve_cmd(&[SONG], card());
    reserve.rendition = "low".into();
    check_invalid::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, "rendition");
}

#[test]
fn reserve_with_a_malformed_rendition_name_is_refused() {
    let mut reserve = reserve_cmd(&[SONG], card());
    reserve.rendition = "hi gh".into();
    check_invalid::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, "rendition");
}

#[test]
fn reserve_listing_a_media_twice_is_refused() {
    check_invalid::<Voucher>(&[], VoucherCommand::Reserve(reserve_cmd(&[SONG, SONG], card())), T0, "media_ids");
}

#[test]
fn reserve_with_zero_ttl_is_refused() {
    let mut reserve = reserve_cmd(&[SONG], card());
    reserve.ttl_ms = 0;
    check_invalid::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, "ttl_ms");
}

#[test]
fn reserve_with_ttl_beyond_the_maximum_is_refused() {
    let mut reserve = reserve_cmd(&[SONG], card());
    reserve.ttl_ms = RESERVATION_TTL_MS_MAX + 1;
    check_invalid::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, "ttl_ms");
}

#[test]
fn reserve_with_the_longest_ttl_expires_that_far_ahead() {
    let mut reserve = reserve_cmd(&[SONG], card());
    reserve.ttl_ms = RESERVATION_TTL_MS_MAX;
    let mut expected = reserved(&[SONG], card());
    if let Event::Reserved { expires_at, .. } = &mut expected {
        *expires_at = T0.plus_ms(RESERVATION_TTL_MS_MAX);
    }
    check::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, Ok(vec![expected]));
}

#[test]
fn reserve_of_no_media_is_refused() {
    check_invalid::<Voucher>(&[], VoucherCommand::Reserve(reserve_cmd(&[], card())), T0, "media_ids");
}

fn many(n: usize) -> Vec<(String, u64)> {
    (0..n).map(|i| (format!("t{i}"), 1)).collect()
}

#[test]
fn reserve_of_more_media_than_a_voucher_holds_is_refused() {
    let items = many(ITEMS_MAX + 1);
    let items: Vec<(&str, u64)> = items.iter().map(|(id, price)| (id.as_str(), *price)).collect();
    check_invalid::<Voucher>(&[], VoucherCommand::Reserve(reserve_cmd(&items, card())), T0, "media_ids");
}

#[test]
fn reserve_of_the_most_media_a_voucher_holds_is_accepted() {
    let items = many(ITEMS_MAX);
    let items: Vec<(&str, u64)> = items.iter().map(|(id, price)| (id.as_str(), *price)).collect();
    check::<Voucher>(&[], VoucherCommand::Reserve(reserve_cmd(&items, card())), T0, Ok(vec![reserved(&items, card())]));
}

#[test]
fn reserve_of_media_in_different_currencies_is_refused() {
    let mut reserve = reserve_cmd(&[("t1", 100), ("t2", 100)], card());
    let mut dollars = sample("t2", 100);
    dollars.currency = "USD".into();
    reserve.items[1].1 = media_from(dollars);
    check_invalid::<Voucher>(&[], VoucherCommand::Reserve(reserve), T0, "media_ids");
}

#[test]
fn reserve_paid_from_a_malformed_points_account_is_refused() {
    let payment = Payment::Points { account: crate::ids::AccountId::new("a.1") };
    check_invalid::<Voucher>(&[], VoucherCommand::Reserve(reserve_cmd(&[SONG], payment)), T0, "points_account");
}

#[test]
fn reserve_of_an_existing_voucher_is_refused() {
    let exists = Err(Rejection::AlreadyExists { kind: "voucher", id: "v1".into() });
    check::<Voucher>(&song_pending(), VoucherCommand::Reserve(reserve_cmd(&[SONG], card())), T0, exists.clone());
    // A voided voucher's id is spent too: it is never reserved (and so sold) again.
    check::<Voucher>(&song_voided(), VoucherCommand::Reserve(reserve_cmd(&[SONG], card())), T0, exists);
}

// ---------------------------------------------------------------- Authorize

#[test]
fn authorize_settles_the_price_in_balanced_double_entry() {
    use LedgerAccountKind::*;
    let song = ("song1", 199);
    // 199 split 30 / 20 / 50 %: 59.7 -> 59, 39.8 -> 39, and the owner takes the remainder.
    let postings = vec![
        posting(MerchantClearing, "shop1", 199, 0),
        posting(Retailer, "shop1", 0, 59),
        posting(Distributor, "dist1", 0, 39),
        posting(Owner, "label1", 0, 101),
    ];
    assert!(balanced(&postings));
    check::<Voucher>(&[reserved(&[song], card())], authorize(&[song]), T0, Ok(vec![authorized(postings)]));
}

#[test]
fn authorize_of_a_points_sale_debits_the_consumer_points_account() {
    use LedgerAccountKind::*;
    let postings =
        vec![posting(ConsumerPoints, "a1", 100, 0), posting(Retailer, "shop1", 0, 30), posting(Distributor, "dist1", 0, 20), posting(Owner, "label1", 0, 50)];
    check::<Voucher>(&[reserved(&[SONG], points())], authorize(&[SONG]), T0, Ok(vec![authorized(postings)]));
}

#[test]
fn authorize_of_an_album_splits_each_item_and_omits_zero_shares() {
    use LedgerAccountKind::*;
    let items = [("t1", 100), ("t2", 10), ("t3", 1)];
    let postings = vec![
        posting(MerchantClearing, "shop1", 111, 0),
        posting(Retailer, "shop1", 0, 30),
        posting(Distributor, "dist1", 0, 20),
        posting(Owner, "label1", 0, 50),
        posting(Retailer, "shop1", 0, 3),
        posting(Distributor, "dist1", 0, 2),
        posting(Owner, "label1", 0, 5),
        posting(Owner, "label1", 0, 1),
    ];
    assert!(balanced(&postings));
    check::<Voucher>(&[reserved(&items, card())], authorize(&items), T0, Ok(vec![authorized(postings)]));
}

#[test]
fn authorize_after_expiry_is_refused() {
    check::<Voucher>(&song_pending(), authorize(&[SONG]), Millis(EXPIRES.0 + 1), Err(Rejection::Expired { expires_at: EXPIRES }));
}

#[test]
fn authorize_exactly_at_expiry_is_accepted() {
    check::<Voucher>(&song_pending(), authorize(&[SONG]), EXPIRES, Ok(vec![authorized(song_postings())]));
}

/// No existence oracle: every merchant command on another merchant's voucher, at every
/// stage of its life, is refused exactly as on a voucher that does not exist. Control: the
/// same commands by the owner are not refused as unknown, so the states compared are real.
#[test]
fn another_merchants_voucher_is_refused_exactly_as_an_unknown_one() {
    use crate::domain::voucher::NodeStanding::Gone;
    let commands = |by: crate::ids::MerchantId| {
        vec![
            authorize_by(by.clone(), &[SONG]),
            VoucherCommand::Void { merchant: by.clone() },
            VoucherCommand::Refund { merchant: by.clone(), reason: "mine".into(), chargeback: false },
            VoucherCommand::Refund { merchant: by.clone(), reason: "mine".into(), chargeback: true },
            issue_by(by.clone(), node(), ACCESS_TTL),
            moved_by(Some(by), Gone),
        ]
    };
    let stages = [song_pending(), song_authorized(), song_issued(), song_delivered()];
    for (stage, given) in stages.iter().enumerate() {
        let voucher: Voucher = fold(given);
        for (foreign, owners) in commands(other_merchant()).iter().zip(commands(merchant())) {
            let unknown = Voucher::default().decide(foreign, EXPIRES);
            assert_eq!(unknown, Err(Rejection::NotFound { kind: "voucher", id: String::new() }), "{foreign:?}");
            assert_eq!(voucher.decide(foreign, EXPIRES), unknown, "stage {stage}: {foreign:?}");
            assert_ne!(voucher.decide(&owners, EXPIRES), unknown, "the control, stage {stage}: the owner's {owners:?}");
        }
    }
}

#[test]
fn authorize_by_another_merchant_is_refused() {
    check::<Voucher>(&song_pending(), authorize_by(other_merchant(), &[SONG]), T0, Err(Rejection::NotFound { kind: "voucher", id: String::new() }));
}

#[test]
fn authorize_of_a_voided_voucher_is_refused() {
    check::<Voucher>(&song_voided(), authorize(&[SONG]), T0, Err(Rejection::Voided));
}

#[test]
fn authorize_twice_is_an_invalid_transition() {
    check::<Voucher>(&song_authorized(), authorize(&[SONG]), T0, Err(invalid("Authorize", "Authorized")));
}

#[test]
fn authorize_of_a_delivered_voucher_is_refused() {
    check::<Voucher>(&song_delivered(), authorize(&[SONG]), T0, Err(Rejection::AlreadyDelivered));
}

#[test]
fn authorize_of_an_unknown_voucher_is_not_found() {
    check::<Voucher>(&[], authorize(&[SONG]), T0, Err(not_found()));
}

#[test]
fn authorize_without_the_reserved_media_terms_is_not_found() {
    check::<Voucher>(&song_pending(), authorize(&[("other", 100)]), T0, Err(Rejection::NotFound { kind: "media", id: "song1".into() }));
}

// ---------------------------------------------------------------- Void

#[test]
fn void_of_a_pending_voucher_refunds_with_nothing_to_reverse() {
    check::<Voucher>(&song_pending(), VoucherCommand::Void { merchant: merchant() }, T0, Ok(vec![voided(VoidReason::Refunded, vec![])]));
}

#[test]
fn void_of_an_authorized_voucher_reverses_its_postings() {
    use LedgerAccountKind::*;
    let reversal = vec![
        posting(MerchantClearing, "shop1", 0, 100),
        posting(Retailer, "shop1", 30, 0),
        posting(Distributor, "dist1", 20, 0),
        posting(Owner, "label1", 50, 0),
    ];
    assert!(balanced(&reversal));
    check::<Voucher>(&song_authorized(), VoucherCommand::Void { merchant: merchant() }, T0, Ok(vec![voided(VoidReason::Refunded, reversal)]));
}

#[test]
fn void_of_an_issued_voucher_is_an_invalid_transition() {
    check::<Voucher>(&song_issued(), VoucherCommand::Void { merchant: merchant() }, T0, Err(invalid("Void", "Issued")));
    check::<Voucher>(&song_redeeming(), VoucherCommand::Void { merchant: merchant() }, T0, Err(invalid("Void", "Redeeming")));
}

#[test]
fn void_of_a_delivered_voucher_is_refused() {
    check::<Voucher>(&song_delivered(), VoucherCommand::Void { merchant: merchant() }, T0, Err(Rejection::AlreadyDelivered));
}

#[test]
fn void_twice_is_refused() {
    check::<Voucher>(&song_voided(), VoucherCommand::Void { merchant: merchant() }, T0, Err(Rejection::Voided));
}

#[test]
fn void_by_another_merchant_is_refused() {
    check::<Voucher>(&song_pending(), VoucherCommand::Void { merchant: other_merchant() }, T0, Err(Rejection::NotFound { kind: "voucher", id: String::new() }));
    check::<Voucher>(
        &song_authorized(),
        VoucherCommand::Void { merchant: other_merchant() },
        T0,
        Err(Rejection::NotFound { kind: "voucher", id: String::new() }),
    );
}

#[test]
fn void_of_an_unknown_voucher_is_not_found() {
    check::<Voucher>(&[], VoucherCommand::Void { merchant: merchant() }, T0, Err(not_found()));
}

// ---------------------------------------------------------------- Expire

#[test]
fn expire_after_expiry_voids_a_pending_voucher_as_timed_out() {
    check::<Voucher>(&song_pending(), VoucherCommand::Expire, Millis(EXPIRES.0 + 1), Ok(vec![voided(VoidReason::TimedOut, vec![])]));
}

#[test]
fn expire_before_or_at_expiry_is_refused() {
    let not_yet = Err(Rejection::NotExpired { expires_at: EXPIRES });
    check::<Voucher>(&song_pending(), VoucherCommand::Expire, T0, not_yet.clone());
    // At `expires_at` an Authorize is still accepted, so an Expire must not be.
    check::<Voucher>(&song_pending(), VoucherCommand::Expire, EXPIRES, not_yet);
}

#[test]
fn expire_of_an_authorized_voucher_is_an_invalid_transition() {
    check::<Voucher>(&song_authorized(), VoucherCommand::Expire, Millis(EXPIRES.0 + 1), Err(invalid("Expire", "Authorized")));
}

#[test]
fn expire_of_a_voided_or_unknown_voucher_is_refused() {
    check::<Voucher>(&song_voided(), VoucherCommand::Expire, Millis(EXPIRES.0 + 1), Err(Rejection::Voided));
    check::<Voucher>(&[], VoucherCommand::Expire, Millis(EXPIRES.0 + 1), Err(not_found()));
}

// ---------------------------------------------------------------- Issue

#[test]
fn issue_assigns_the_node_and_a_token_expiring_after_the_access_ttl() {
    check::<Voucher>(&song_authorized(), issue_by(merchant(), node(), ACCESS_TTL), ISSUED_AT, Ok(vec![issued(&[SONG])]));
}

#[test]
fn issue_of_an_album_names_every_media_in_order() {
    let given = [reserved(&ALBUM, card()), authorized(album_postings())];
    check::<Voucher>(&given, issue_by(merchant(), node(), ACCESS_TTL), ISSUED_AT, Ok(vec![issued(&ALBUM)]));
}

#[test]
fn issue_before_authorize_is_an_invalid_transition() {
    check::<Voucher>(&song_pending(), issue_by(merchant(), node(), ACCESS_TTL), ISSUED_AT, Err(invalid("IssueVoucher", "Pending")));
}

#[test]
fn issue_of_an_issued_voucher_answers_its_token_again_while_the_window_is_open_and_records_nothing() {
    // The merchant asks again (after the engine moved it, say): nothing to record.
    check::<Voucher>(&song_issued(), issue_by(merchant(), node(), ACCESS_TTL), ISSUED_AT, Ok(vec![]));
    check::<Voucher>(&song_redeeming(), issue_by(merchant(), node(), ACCESS_TTL), ISSUED_AT, Ok(vec![]));
    // Not to another node, not after the window (the sweeper lapses it first), not by another merchant.
    check::<Voucher>(&song_issued(), issue_by(merchant(), other_node(), ACCESS_TTL), ISSUED_AT, Err(invalid("IssueVoucher", "Issued")));
    let after = Millis(ISSUED_AT.0 + ACCESS_TTL as i64 + 1);
    check::<Voucher>(&song_issued(), issue_by(merchant(), node(), ACCESS_TTL), after, Err(invalid("IssueVoucher", "Issued")));
    check::<Voucher>(
        &song_issued(),
        issue_by(other_merchant(), node(), ACCESS_TTL),
        ISSUED_AT,
        Err(Rejection::NotFound { kind: "voucher", id: String::new() }),
    );
}

#[test]
fn issue_of_a_voided_voucher_is_refused() {
    check::<Voucher>(&song_voided(), issue_by(merchant(), node(), ACCESS_TTL), ISSUED_AT, Err(Rejection::Voided));
}

#[test]
fn issue_by_another_merchant_is_refused() {
    check::<Voucher>(
        &song_authorized(),
        issue_by(other_merchant(), node(), ACCESS_TTL),
        ISSUED_AT,
        Err(Rejection::NotFound { kind: "voucher", id: String::new() }),
    );
}

#[test]
fn issue_to_a_malformed_node_id_is_refused() {
    check_invalid::<Voucher>(&song_authorized(), issue_by(merchant(), NodeId::new("node.1"), ACCESS_TTL), ISSUED_AT, "node_id");
}

#[test]
fn issue_with_zero_or_too_long_access_ttl_is_refused() {
    check_invalid::<Voucher>(&song_authorized(), issue_by(merchant(), node(), 0), ISSUED_AT, "access_ttl_ms");
    check_invalid::<Voucher>(&song_authorized(), issue_by(merchant(), node(), ACCESS_TTL_MS_MAX + 1), ISSUED_AT, "access_ttl_ms");
}

// ---------------------------------------------------------------- Redeem

#[test]
fn redeem_on_the_assigned_node_with_valid_cert_and_proof_is_accepted() {
    check::<Voucher>(&song_issued(), redeem(), ISSUED_AT, Ok(vec![redemption()]));
}

#[test]
fn redeem_on_another_node_is_refused() {
    let when = redeem_as(other_node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid);
    check::<Voucher>(&song_issued(), when, ISSUED_AT, Err(Rejection::NotYourAssignment));
}

#[test]
fn redeem_before_issue_is_refused_as_not_assigned() {
    check::<Voucher>(&song_authorized(), redeem(), ISSUED_AT, Err(Rejection::NotYourAssignment));
}

#[test]
fn redeem_with_a_bad_proof_is_refused() {
    let when = redeem_as(node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Invalid);
    check::<Voucher>(&song_issued(), when, ISSUED_AT, Err(Rejection::BadProof));
}

#[test]
fn redeem_with_a_revoked_cert_is_refused() {
    let when = redeem_as(node(), consumer(), cert(), CertCheck::Revoked, ProofCheck::Valid);
    check::<Voucher>(&song_issued(), when, ISSUED_AT, Err(Rejection::CertRevoked));
}

#[test]
fn redeem_with_a_cert_outside_its_validity_is_refused() {
    let when = redeem_as(node(), consumer(), cert(), CertCheck::NotValid, ProofCheck::Valid);
    check::<Voucher>(&song_issued(), when, ISSUED_AT, Err(Rejection::CertNotValid));
}

#[test]
fn redeem_with_an_unknown_cert_is_not_found() {
    let when = redeem_as(node(), consumer(), cert(), CertCheck::Unknown, ProofCheck::Valid);
    check::<Voucher>(&song_issued(), when, ISSUED_AT, Err(Rejection::NotFound { kind: "certificate", id: "s1".into() }));
}

/// A challenge the node issued for the retry (the one the first redemption answered is spent).
const FRESH_CHALLENGE: [u8; 32] = [10; 32];

#[test]
fn redeem_retry_by_the_same_consumer_is_already_in_effect() {
    let retry = redeem_answering(node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid, FRESH_CHALLENGE);
    check::<Voucher>(&song_redeeming(), retry, ISSUED_AT, Ok(vec![]));
}

/// A Redeem replayed by whoever saw it (the node, the link) answers a spent challenge and
/// gets nothing, even for the consumer the voucher is being redeemed by. Control: the same
/// Redeem over a fresh challenge is in effect.
#[test]
fn a_challenge_answered_once_redeems_nothing_again() {
    check::<Voucher>(&song_redeeming(), redeem(), ISSUED_AT, Err(Rejection::ChallengeUsed));
    let given = with(song_redeeming(), [delivery_failed()]);
    check::<Voucher>(&given, redeem(), ISSUED_AT, Err(Rejection::ChallengeUsed));
    let fresh = redeem_answering(node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid, FRESH_CHALLENGE);
    check::<Voucher>(&given, fresh, ISSUED_AT, Ok(vec![redemption_releasing(consumer(), cert(), FRESH_CHALLENGE, &[])]));
}

#[test]
fn redeem_retry_still_requires_a_valid_proof() {
    let when = redeem_as(node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Invalid);
    check::<Voucher>(&song_redeeming(), when, ISSUED_AT, Err(Rejection::BadProof));
}

/// A retry after the consumer's certificate was revoked must not be answered "in effect":
/// the shell would re-wrap and send the media keys for a revoked key. (The proof is
/// re-checked on this path; the certificate is not.)
#[test]
fn redeem_retry_still_requires_an_unrevoked_cert() {
    let when = redeem_as(node(), consumer(), cert(), CertCheck::Revoked, ProofCheck::Valid);
    check::<Voucher>(&song_redeeming(), when, ISSUED_AT, Err(Rejection::CertRevoked));
}

#[test]
fn redeem_by_another_consumer_while_redeeming_is_refused() {
    let other_consumer = redeem_as(node(), ConsumerId::new("c2"), CertSerial::new("s2"), CertCheck::Valid, ProofCheck::Valid);
    check::<Voucher>(&song_redeeming(), other_consumer, ISSUED_AT, Err(Rejection::AlreadyRedeemed));
    let other_cert = redeem_as(node(), consumer(), CertSerial::new("s2"), CertCheck::Valid, ProofCheck::Valid);
    check::<Voucher>(&song_redeeming(), other_cert, ISSUED_AT, Err(Rejection::AlreadyRedeemed));
}

#[test]
fn redeem_of_a_delivered_voucher_is_refused() {
    check::<Voucher>(&song_delivered(), redeem(), ISSUED_AT, Err(Rejection::AlreadyDelivered));
}

/// A Voided voucher was never issued (Void is refused from Issued on), so no node is
/// assigned to it and the assignment check answers first: the node learns nothing more.
#[test]
fn redeem_of_a_voided_voucher_is_refused_as_not_assigned() {
    check::<Voucher>(&song_voided(), redeem(), ISSUED_AT, Err(Rejection::NotYourAssignment));
    let voided_after_authorize = with(song_authorized(), [voided(VoidReason::Refunded, vec![])]);
    check::<Voucher>(&voided_after_authorize, redeem(), ISSUED_AT, Err(Rejection::NotYourAssignment));
}

#[test]
fn redeem_of_an_unknown_voucher_is_not_found() {
    check::<Voucher>(&[], redeem(), ISSUED_AT, Err(not_found()));
}

// ---------------------------------------------------------------- FailDelivery

fn fail_on(node: NodeId, reason: &str) -> VoucherCommand {
    VoucherCommand::FailDelivery { node, reason: reason.into(), proof: ProofCheck::Valid }
}

/// The attack: whoever saw the access grant (the node, the link) sent Confirms with a
/// wrong hash and so failed the buyer's delivery, spending the consumer's retries. Now
/// a delivery is completed or failed only with the buyer's confirm proof; control: the
/// same reports with a valid proof (the other tests here).
#[test]
fn a_delivery_is_completed_or_failed_only_with_the_buyers_confirm_proof() {
    let forged = VoucherCommand::FailDelivery { node: node(), reason: "content hash mismatch".into(), proof: ProofCheck::Invalid };
    check::<Voucher>(&song_redeeming(), forged, ISSUED_AT, Err(Rejection::BadProof));
    let VoucherCommand::CompleteDelivery(complete) = complete("song1") else { unreachable!("complete builds a CompleteDelivery") };
    let forged = VoucherCommand::CompleteDelivery(crate::domain::voucher::CompleteDelivery { proof: ProofCheck::Invalid, ..complete });
    check::<Voucher>(&song_redeeming(), forged, ISSUED_AT, Err(Rejection::BadProof));
    check::<Voucher>(&song_redeeming(), fail_on(node(), "disk full"), ISSUED_AT, Ok(vec![delivery_failed()]));
}

#[test]
fn fail_delivery_returns_the_voucher_to_issued() {
    check::<Voucher>(&song_redeeming(), fail_on(node(), "disk full"), ISSUED_AT, Ok(vec![delivery_failed()]));
    let after: Voucher = fold(&with(song_redeeming(), [delivery_failed()]));
    assert_eq!((after.status, after.consumer, after.delivery_failures), (VoucherStatus::Issued, None, 1));
}

#[test]
fn redeem_after_a_failed_delivery_is_accepted_again() {
    let given = with(song_redeeming(), [delivery_failed()]);
    let again = redeem_answering(node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid, FRESH_CHALLENGE);
    // The keys were released at the first redemption (the usage); the retry releases none.
    check::<Voucher>(&given, again, ISSUED_AT, Ok(vec![redemption_releasing(consumer(), cert(), FRESH_CHALLENGE, &[])]));
}

/// Key release is the usage: the first redemption names every media whose key it releases
/// (what the royalty log counts), a retry names none, so a delivery counts once however
/// many retries.
#[test]
fn the_first_redemption_releases_every_item_and_a_retry_none() {
    let album = [ALBUM[0].0, ALBUM[1].0, ALBUM[2].0];
    let first: Vec<Event> = with(album_issued(), []);
    let redeemed = fold::<Voucher>(&first).decide(&redeem(), ISSUED_AT).expect("the first redemption");
    assert!(matches!(&redeemed[..], [Event::RedemptionAccepted { released_media, .. }] if released_media.iter().map(|m| m.0.as_str()).eq(album)));
    let mut given = first;
    given.extend(redeemed);
    given.push(delivery_failed());
    let retry = redeem_answering(node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid, FRESH_CHALLENGE);
    check::<Voucher>(&given, retry, ISSUED_AT, Ok(vec![redemption_releasing(consumer(), cert(), FRESH_CHALLENGE, &[])]));
}

/// The attack: a Confirm with a wrong hash put the voucher back to Issued, and another
/// consumer redeemed it while the first held the keys (22 redemptions alternating two
/// consumers, one royalty entry). The keys were released to the first consumer: nobody
/// else redeems, whatever the certificate. Control: the first consumer may (above), also
/// with a newer certificate (a lost passport replaced), releasing nothing anew; not with a
/// revoked one.
#[test]
fn after_a_failed_delivery_only_the_consumer_holding_the_keys_redeems() {
    let given = with(song_redeeming(), [delivery_failed()]);
    let other = redeem_answering(node(), ConsumerId::new("c2"), CertSerial::new("s2"), CertCheck::Valid, ProofCheck::Valid, FRESH_CHALLENGE);
    check::<Voucher>(&given, other, ISSUED_AT, Err(Rejection::AlreadyRedeemed));
    let new_cert = redeem_answering(node(), consumer(), CertSerial::new("s2"), CertCheck::Valid, ProofCheck::Valid, FRESH_CHALLENGE);
    check::<Voucher>(&given, new_cert, ISSUED_AT, Ok(vec![redemption_releasing(consumer(), CertSerial::new("s2"), FRESH_CHALLENGE, &[])]));
    let revoked = redeem_answering(node(), consumer(), CertSerial::new("s2"), CertCheck::Revoked, ProofCheck::Valid, FRESH_CHALLENGE);
    check::<Voucher>(&given, revoked, ISSUED_AT, Err(Rejection::CertRevoked));
    let after: Voucher = fold(&given);
    assert_eq!(after.released_to, Some((consumer(), cert())), "the release outlives the failure");
}

/// Failed deliveries may be retried `delivery.retries_max` times, no more: each retry is a
/// key release the royalty log must account for.
#[test]
fn redemptions_after_failed_deliveries_are_capped_by_retries_max() {
    let mut given = song_redeeming();
    for failure in 0..=RETRIES_MAX {
        given.push(delivery_failed());
        let mut challenge = FRESH_CHALLENGE;
        challenge[0] = failure as u8 + 100;
        let again = redeem_answering(node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid, challenge);
        if failure < RETRIES_MAX {
            check::<Voucher>(&given, again, ISSUED_AT, Ok(vec![redemption_releasing(consumer(), cert(), challenge, &[])]));
            given.push(redemption_releasing(consumer(), cert(), challenge, &[]));
        } else {
            check::<Voucher>(&given, again, ISSUED_AT, Err(Rejection::DeliveryRetriesExhausted { retries_max: RETRIES_MAX }));
        }
    }
}

#[test]
fn fail_delivery_on_another_node_is_refused() {
    check::<Voucher>(&song_redeeming(), fail_on(other_node(), "disk full"), ISSUED_AT, Err(Rejection::NotYourAssignment));
}

#[test]
fn fail_delivery_without_a_reason_is_refused() {
    check_invalid::<Voucher>(&song_redeeming(), fail_on(node(), "  "), ISSUED_AT, "reason");
}

#[test]
fn fail_delivery_after_delivery_is_refused() {
    check::<Voucher>(&song_delivered(), fail_on(node(), "disk full"), ISSUED_AT, Err(Rejection::AlreadyDelivered));
}

// ---------------------------------------------------------------- CompleteDelivery

#[test]
fn complete_delivery_of_a_single_song_completes_the_voucher() {
    check::<Voucher>(&song_redeeming(), complete("song1"), ISSUED_AT, Ok(vec![delivered("song1", true)]));
    let after: Voucher = fold(&song_delivered());
    assert_eq!(after.status, VoucherStatus::Delivered);
}

#[test]
fn complete_delivery_of_an_album_completes_the_voucher_only_with_the_last_item() {
    let mut given = album_redeeming();
    // Out of order on purpose: completion counts items, not positions.
    for (item, last) in [("t2", false), ("t3", false), ("t1", true)] {
        check::<Voucher>(&given, complete(item), ISSUED_AT, Ok(vec![delivered(item, last)]));
        given.push(delivered(item, last));
        let status = fold::<Voucher>(&given).status;
        assert_eq!(status, if last { VoucherStatus::Delivered } else { VoucherStatus::Redeeming });
    }
}

#[test]
fn complete_delivery_of_an_item_already_delivered_delivers_nothing_again() {
    check::<Voucher>(&song_delivered(), complete("song1"), ISSUED_AT, Ok(vec![]));
    let mid_album = with(album_redeeming(), [delivered("t1", false)]);
    check::<Voucher>(&mid_album, complete("t1"), ISSUED_AT, Ok(vec![]));
}

#[test]
fn complete_delivery_of_media_outside_the_voucher_is_refused() {
    check_invalid::<Voucher>(&song_redeeming(), complete("t1"), ISSUED_AT, "media_id");
}

#[test]
fn complete_delivery_on_another_node_is_refused() {
    check::<Voucher>(&song_redeeming(), complete_on(other_node(), "song1"), ISSUED_AT, Err(Rejection::NotYourAssignment));
}

#[test]
fn complete_delivery_before_redeem_is_an_invalid_transition() {
    check::<Voucher>(&song_issued(), complete("song1"), ISSUED_AT, Err(invalid("CompleteDelivery", "Issued")));
    let failed = with(song_redeeming(), [delivery_failed()]);
    check::<Voucher>(&failed, complete("song1"), ISSUED_AT, Err(invalid("CompleteDelivery", "Issued")));
}

#[test]
fn album_interrupted_by_a_failed_delivery_finishes_for_the_next_redeemer() {
    let (c2, s2) = (ConsumerId::new("c2"), CertSerial::new("s2"));
    let mut given = with(album_redeeming(), [delivered("t1", false), delivery_failed(), redemption_by(c2, s2.clone())]);
    check::<Voucher>(&given, complete("t1"), ISSUED_AT, Ok(vec![]));
    check::<Voucher>(&given, complete("t2"), ISSUED_AT, Ok(vec![delivered_to(s2.clone(), "t2", false)]));
    given.push(delivered_to(s2.clone(), "t2", false));
    check::<Voucher>(&given, complete("t3"), ISSUED_AT, Ok(vec![delivered_to(s2, "t3", true)]));
}

// ---------------------------------------------------------------- the seed's three sets

#[test]
fn purchase_sets_follow_the_status() {
    let album_part = with(album_redeeming(), [delivered("t1", false)]);
    let cases: [(Vec<Event>, Option<PurchaseSet>); 8] = [
        (vec![], None),
        (song_pending(), Some(PurchaseSet::Pending)),
        (song_authorized(), Some(PurchaseSet::PurchasedNotDelivered)),
        (song_issued(), Some(PurchaseSet::PurchasedNotDelivered)),
        (song_redeeming(), Some(PurchaseSet::PurchasedNotDelivered)),
        (album_part, Some(PurchaseSet::PurchasedNotDelivered)),
        (song_delivered(), Some(PurchaseSet::Delivered)),
        (song_voided(), None),
    ];
    for (given, expected) in cases {
        assert_eq!(fold::<Voucher>(&given).set(), expected, "given {given:#?}");
    }
}

#[test]
fn command_names_match_the_recorded_commands() {
    let names: Vec<&str> = [
        VoucherCommand::Reserve(reserve_cmd(&[SONG], card())),
        authorize(&[SONG]),
        VoucherCommand::Void { merchant: merchant() },
        VoucherCommand::Expire,
        issue_by(merchant(), node(), 1),
        redeem(),
        fail_on(node(), "x"),
        complete("song1"),
    ]
    .iter()
    .map(Voucher::command_name)
    .collect();
    assert_eq!(names, ["Reserve", "Authorize", "Void", "Expire", "IssueVoucher", "Redeem", "FailDelivery", "CompleteDelivery"]);
}

#[test]
fn folding_the_history_rebuilds_every_field() {
    let voucher: Voucher = fold(&song_delivered());
    assert_eq!(voucher.id, Some(crate::ids::VoucherId::new("v1")));
    assert_eq!(voucher.merchant, Some(merchant()));
    assert_eq!((voucher.price_minor, voucher.currency.as_str(), voucher.expires_at), (100, "EUR", EXPIRES));
    assert_eq!((voucher.token_key_id, voucher.auth_generation, voucher.receipt_key_id, voucher.receipt_generation), (7, 1, 3, 1));
    assert_eq!((voucher.node, voucher.access_expires_at), (Some(node()), ISSUED_AT.plus_ms(ACCESS_TTL)));
    assert_eq!(voucher.consumer, Some((consumer(), cert())));
    assert_eq!(voucher.delivered.into_iter().collect::<Vec<MediaId>>(), vec![mid("song1")]);
    assert_eq!(voucher.postings, song_postings());
    assert_eq!(fold::<Voucher>(&song_voided()).void_reason, Some(VoidReason::Refunded));
}

// ---------------------------------------------------------------- access lapses

/// The hole: a voucher never redeemed kept its node slot for good, and could not be issued
/// again ("not allowed while the voucher is Issued"). Past its access window it lapses:
/// the slot comes back (the event names the node) and the voucher is paid and unissued,
/// so the merchant issues it anew. Control: inside the window nothing lapses. A delivery
/// that did not finish in the window (the node refuses its token since) lapses too.
#[test]
fn an_unused_access_window_lapses_and_the_voucher_can_be_issued_again() {
    let window_end = ISSUED_AT.plus_ms(ACCESS_TTL);
    let after = Millis(window_end.0 + 1);
    let lapsed = Event::AccessLapsed { voucher_id: voucher_id(), node_id: node() };
    check::<Voucher>(&song_issued(), VoucherCommand::LapseAccess, after, Ok(vec![lapsed.clone()]));
    check::<Voucher>(&song_issued(), VoucherCommand::LapseAccess, window_end, Err(Rejection::NotExpired { expires_at: window_end }));
    check::<Voucher>(&song_redeeming(), VoucherCommand::LapseAccess, window_end, Err(Rejection::NotExpired { expires_at: window_end }));
    check::<Voucher>(&song_redeeming(), VoucherCommand::LapseAccess, after, Ok(vec![lapsed.clone()]));
    // After a failed delivery the window still ends it.
    check::<Voucher>(&with(song_redeeming(), [delivery_failed()]), VoucherCommand::LapseAccess, after, Ok(vec![lapsed.clone()]));
    let state: Voucher = fold(&with(song_issued(), [lapsed.clone()]));
    assert_eq!((state.status, state.node.clone()), (VoucherStatus::Authorized, None));
    let reissue = issue_by(merchant(), other_node(), ACCESS_TTL);
    let decided = state.decide(&reissue, after).expect("issued anew");
    assert!(matches!(&decided[..], [Event::VoucherIssued { node_id, .. }] if *node_id == other_node()), "{decided:?}");
    check::<Voucher>(
        &with(song_issued(), [lapsed]),
        VoucherCommand::LapseAccess,
        after,
        Err(Rejection::InvalidTransition { kind: "voucher", command: "LapseAccess", state: "Authorized" }),
    );
}

// ---------------------------------------------------------------- refunds and chargebacks

fn refund(chargeback: bool) -> VoucherCommand {
    VoucherCommand::Refund { merchant: merchant(), reason: "the customer asked".into(), chargeback }
}

fn song_reversal() -> Vec<crate::domain::event::Posting> {
    song_postings().iter().map(|p| crate::domain::event::Posting { debit_minor: p.credit_minor, credit_minor: p.debit_minor, ..p.clone() }).collect()
}

fn refunded(chargeback: bool) -> Event {
    Event::Refunded { voucher_id: voucher_id(), reason: "the customer asked".into(), chargeback, reversal: song_reversal(), media_ids: vec![mid("song1")] }
}

#[test]
fn a_refund_before_any_key_is_released_voids_with_the_reversal() {
    check::<Voucher>(&song_pending(), refund(false), T0, Ok(vec![voided(VoidReason::Refunded, vec![])]));
    check::<Voucher>(&song_authorized(), refund(false), T0, Ok(vec![voided(VoidReason::Refunded, song_reversal())]));
    // Issued, never redeemed: nothing was released, so a void (the slot comes back).
    check::<Voucher>(&song_issued(), refund(true), ISSUED_AT, Ok(vec![voided(VoidReason::Refunded, song_reversal())]));
}

#[test]
fn a_refund_after_a_release_reverses_the_sale_and_names_the_media_to_adjust() {
    assert!(balanced(&song_reversal()));
    check::<Voucher>(&song_delivered(), refund(false), T0, Ok(vec![refunded(false)]));
    check::<Voucher>(&song_delivered(), refund(true), T0, Ok(vec![refunded(true)]));
    // A delivery under way, or failed after the keys went out: refunded too.
    check::<Voucher>(&song_redeeming(), refund(false), T0, Ok(vec![refunded(false)]));
}

#[test]
fn a_refunded_voucher_is_never_redeemed_or_refunded_again() {
    let given = with(song_delivered(), [refunded(false)]);
    check::<Voucher>(&given, refund(false), T0, Err(invalid("Refund", "Refunded")));
    check::<Voucher>(&given, redeem(), ISSUED_AT, Err(invalid("Redeem", "Refunded")));
    let issue = VoucherCommand::Issue { merchant: merchant(), node: node(), access_ttl_ms: 1_000, lease: 0 };
    check::<Voucher>(&given, issue, T0, Err(invalid("IssueVoucher", "Refunded")));
    assert_eq!(fold::<Voucher>(&given).status, VoucherStatus::Refunded);
    assert_eq!(fold::<Voucher>(&given).set(), None, "in none of the three sets");
}

#[test]
fn a_refund_is_the_selling_merchants_with_a_reason_and_not_of_a_voided_voucher() {
    check::<Voucher>(
        &song_delivered(),
        VoucherCommand::Refund { merchant: other_merchant(), reason: "mine".into(), chargeback: false },
        T0,
        Err(Rejection::NotFound { kind: "voucher", id: String::new() }),
    );
    check_invalid::<Voucher>(&song_delivered(), VoucherCommand::Refund { merchant: merchant(), reason: " ".into(), chargeback: false }, T0, "reason");
    check::<Voucher>(&song_voided(), refund(false), T0, Err(Rejection::Voided));
    check::<Voucher>(&[], refund(false), T0, Err(not_found()));
}

// ---------------------------------------------------------------- moving off a node gone

fn moved_by(merchant: Option<crate::ids::MerchantId>, standing: crate::domain::voucher::NodeStanding) -> VoucherCommand {
    VoucherCommand::Move { merchant, node: other_node(), access_ttl_ms: ACCESS_TTL, old_node: standing, retries_max: RETRIES_MAX, lease: 0 }
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

#[test]
fn an_issued_voucher_moves_off_a_node_gone_by_its_merchant_or_the_engine() {
    use crate::domain::voucher::NodeStanding::{Gone, Serving};
    check::<Voucher>(&song_issued(), moved_by(Some(merchant()), Gone), T0, Ok(vec![moved_to_other_node(T0)]));
    check::<Voucher>(&song_issued(), moved_by(None, Gone), T0, Ok(vec![moved_to_other_node(T0)]));
    // Not while its node serves it, not by another merchant, not to the node it leaves.
    check::<Voucher>(&song_issued(), moved_by(Some(merchant()), Serving), T0, Err(Rejection::NodeStillServes));
    check::<Voucher>(&song_issued(), moved_by(Some(other_merchant()), Gone), T0, Err(Rejection::NotFound { kind: "voucher", id: String::new() }));
    let same = VoucherCommand::Move { merchant: None, node: node(), access_ttl_ms: ACCESS_TTL, old_node: Gone, retries_max: RETRIES_MAX, lease: 0 };
    check_invalid::<Voucher>(&song_issued(), same, T0, "node_id");
    // Once the keys went out (a redemption, even a failed delivery since), it stays.
    check::<Voucher>(&song_redeeming(), moved_by(None, Gone), T0, Err(invalid("Move", "Redeeming")));
    check::<Voucher>(&song_delivered(), moved_by(None, Gone), T0, Err(Rejection::AlreadyDelivered));
    check::<Voucher>(&song_authorized(), moved_by(None, Gone), T0, Err(invalid("Move", "Authorized")));
}

#[test]
fn after_a_move_only_the_new_node_redeems() {
    let given = with(song_issued(), [moved_to_other_node(T0)]);
    // The node it left is told it moved; any other node that it is not its voucher.
    check::<Voucher>(&given, redeem(), ISSUED_AT, Err(Rejection::VoucherMoved));
    let elsewhere = redeem_as(crate::ids::NodeId::new("node3"), ConsumerId::new("alice"), CertSerial::new("c1"), CertCheck::Valid, ProofCheck::Valid);
    check::<Voucher>(&given, elsewhere, ISSUED_AT, Err(Rejection::NotYourAssignment));
    let state = fold::<Voucher>(&given);
    assert_eq!((state.status, state.node), (VoucherStatus::Issued, Some(other_node())));
}

// ---------------------------------------------------------------- lost copies

fn recover_as(consumer: &str, cert: &str, challenge: u8) -> VoucherCommand {
    let VoucherCommand::Redeem(redeem) =
        redeem_answering(node(), ConsumerId::new(consumer), CertSerial::new(cert), CertCheck::Valid, ProofCheck::Valid, [challenge; 32])
    else {
        unreachable!("redeem_answering builds a Redeem")
    };
    VoucherCommand::Recover { redeem, recoveries_max: 2 }
}

fn recovered(cert: &str, challenge: u8, recovery: u32) -> Event {
    let Some(Event::RedemptionAccepted { consumer_key_hash: Some(consumer_key_hash), consumer_id, .. }) = song_redeeming().pop() else {
        unreachable!("song_redeeming ends with its redemption")
    };
    Event::CopyRecovered {
        voucher_id: voucher_id(),
        node_id: node(),
        consumer_id,
        cert_serial: CertSerial::new(cert),
        challenge_hash: [challenge; 32],
        consumer_key_hash,
        recovery,
    }
}

#[test]
fn a_delivered_purchase_is_recovered_by_its_consumer_a_bounded_number_of_times() {
    let (consumer, cert) = match song_redeeming().pop() {
        Some(Event::RedemptionAccepted { consumer_id, cert_serial, .. }) => (consumer_id.0, cert_serial.0),
        _ => unreachable!("song_redeeming ends with its redemption"),
    };
    check::<Voucher>(&song_delivered(), recover_as(&consumer, &cert, 40), ISSUED_AT, Ok(vec![recovered(&cert, 40, 1)]));
    // A renewed certificate of the same consumer recovers too.
    check::<Voucher>(&song_delivered(), recover_as(&consumer, "renewed", 41), ISSUED_AT, Ok(vec![recovered("renewed", 41, 1)]));
    let twice = with(song_delivered(), [recovered(&cert, 40, 1), recovered(&cert, 41, 2)]);
    check::<Voucher>(&twice, recover_as(&consumer, &cert, 42), ISSUED_AT, Err(Rejection::RecoveriesExhausted { recoveries_max: 2 }));
    // Another consumer, an answered challenge, a voucher not delivered: refused.
    check::<Voucher>(&song_delivered(), recover_as("mallory", "m1", 43), ISSUED_AT, Err(Rejection::AlreadyRedeemed));
    check::<Voucher>(&with(song_delivered(), [recovered(&cert, 40, 1)]), recover_as(&consumer, &cert, 40), ISSUED_AT, Err(Rejection::ChallengeUsed));
    check::<Voucher>(&song_issued(), recover_as(&consumer, &cert, 44), ISSUED_AT, Err(invalid("Recover", "Issued")));
    let state = fold::<Voucher>(&twice);
    assert_eq!((state.status, state.recoveries), (VoucherStatus::Delivered, 2), "a recovery changes nothing else");
}

#[test]
fn a_voucher_whose_deliveries_failed_past_the_retries_is_issued_anew_with_fresh_retries() {
    use crate::domain::voucher::NodeStanding::Serving;
    // Redeemed and failed RETRIES_MAX + 1 times: the consumer holding the keys is stuck.
    let mut given = song_issued();
    for _ in 0..=RETRIES_MAX {
        given.extend([redemption(), delivery_failed()]);
    }
    check::<Voucher>(&given, redeem(), ISSUED_AT, Err(Rejection::DeliveryRetriesExhausted { retries_max: RETRIES_MAX }));
    // Reissued even while its node serves, even to the same node: fresh retries.
    let anew =
        VoucherCommand::Move { merchant: Some(merchant()), node: node(), access_ttl_ms: ACCESS_TTL, old_node: Serving, retries_max: RETRIES_MAX, lease: 0 };
    let decided = crate::domain::voucher::Voucher::decide(&fold::<Voucher>(&given), &anew, T0).expect("issued anew");
    let after = with(given.clone(), decided.clone());
    assert!(matches!(&decided[..], [Event::VoucherIssued { previous_node: Some(previous), node_id, .. }] if previous == node_id));
    assert_eq!(fold::<Voucher>(&after).delivery_failures, 0, "fresh retries");
    let fresh = redeem_answering(node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid, [77; 32]);
    assert!(fold::<Voucher>(&after).decide(&fresh, ISSUED_AT).is_ok(), "the same consumer redeems again");
    // Control: one failure short of the limit, the keys stay where they are.
    let mut short = song_issued();
    for _ in 0..RETRIES_MAX {
        short.extend([redemption(), delivery_failed()]);
    }
    check::<Voucher>(&short, anew, T0, Err(invalid("Move", "Issued")));
}
