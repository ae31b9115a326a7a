//! Rentals, given/when/then: a window chosen at Reserve within the configured bounds and
//! priced per window, started at Authorize; each play issued anew, each play's key release a
//! usage of its own; no Issue nor Redeem after the window (`RentalEnded`), with the play just
//! before the end accepted as the negative control.

use super::fixtures::*;
use crate::domain::event::{Event, Payment, ReservedItem};
use crate::domain::testing::check;
use crate::domain::voucher::{Voucher, VoucherCommand, VoucherStatus};
use crate::domain::{Aggregate, Rejection, fold};
use crate::ids::Millis;

/// The window the fixtures' buyer chooses: two hours.
const RENTAL_MS: u64 = 2 * 3_600_000;
/// When the rental is paid for (its window starts), and when it ends.
const AUTHORIZED_AT: Millis = Millis(T0.0 + 1_000);
const RENTAL_UNTIL: Millis = Millis(AUTHORIZED_AT.0 + RENTAL_MS as i64);
/// A quarter (`RENTAL_TERMS.price_bps`) of the song's 100.
const SONG_RENTAL_PRICE: u64 = 25;

fn rent(rental_ms: u64) -> VoucherCommand {
    let mut reserve = reserve_cmd(&[SONG], card());
    reserve.rental_ms = rental_ms;
    VoucherCommand::Reserve(reserve)
}

fn rental_reserved() -> Event {
    let Event::Reserved { voucher_id, merchant_id, rendition, currency, expires_at, payment, token_key_id, auth_generation, .. } = reserved(&[SONG], card())
    else {
        unreachable!("reserved() builds a Reserved")
    };
    Event::Reserved {
        voucher_id,
        merchant_id,
        items: vec![ReservedItem { media_id: mid(SONG.0), price_minor: SONG_RENTAL_PRICE }],
        rendition,
        price_minor: SONG_RENTAL_PRICE,
        currency,
        expires_at,
        payment,
        token_key_id,
        auth_generation,
        rental_ms: RENTAL_MS,
    }
}

fn rental_authorized() -> Vec<Event> {
    vec![
        rental_reserved(),
        Event::Authorized { voucher_id: voucher_id(), receipt_key_id: 3, receipt_generation: 1, postings: vec![], rental_until: RENTAL_UNTIL },
    ]
}

/// The play's issue to `node` at `at` (its access window as the rental caps it).
fn play_issued(node: crate::ids::NodeId, at: Millis) -> Event {
    Event::VoucherIssued {
        voucher_id: voucher_id(),
        node_id: node,
        merchant_id: merchant(),
        media_ids: vec![mid(SONG.0)],
        rendition: "high".into(),
        access_expires_at: at.plus_ms(ACCESS_TTL).min(RENTAL_UNTIL),
        previous_node: None,
        lease: 0,
    }
}

fn play_redeemed(node: crate::ids::NodeId, challenge: [u8; 32], play: u32) -> Event {
    let Event::RedemptionAccepted { voucher_id, consumer_id, cert_serial, wrapped_key_hashes, consumer_key_hash, released_media, .. } =
        redemption_answering(consumer(), cert(), challenge)
    else {
        unreachable!("redemption_answering() builds a RedemptionAccepted")
    };
    Event::RedemptionAccepted {
        voucher_id,
        node_id: node,
        consumer_id,
        cert_serial,
        wrapped_key_hashes,
        challenge_hash: Some(challenge),
        consumer_key_hash,
        released_media,
        rental_play: play,
    }
}

/// The first play, from its issue on `node1` to its end.
fn first_play() -> Vec<Event> {
    let mut events = rental_authorized();
    events.extend([
        play_issued(node(), ISSUED_AT),
        play_redeemed(node(), CHALLENGE, 1),
        delivered("song1", true),
        Event::RentalPlayEnded { voucher_id: voucher_id(), node_id: node(), play: 1 },
    ]);
    events
}

#[test]
fn a_rental_is_priced_per_window_and_records_the_window_chosen() {
    check::<Voucher>(&[], rent(RENTAL_MS), T0, Ok(vec![rental_reserved()]));
}

#[test]
fn a_rental_window_outside_the_bounds_is_refused_and_the_bounds_themselves_are_accepted() {
    check_invalid::<Voucher>(&[], rent(RENTAL_TERMS.window_ms_min - 1), T0, "rental_ms");
    check_invalid::<Voucher>(&[], rent(RENTAL_TERMS.window_ms_max + 1), T0, "rental_ms");
    for rental_ms in [RENTAL_TERMS.window_ms_min, RENTAL_TERMS.window_ms_max] {
        let decided = Voucher::default().decide(&rent(rental_ms), T0).expect("a window within the bounds");
        assert!(matches!(&decided[..], [Event::Reserved { rental_ms: chosen, price_minor: SONG_RENTAL_PRICE, .. }] if *chosen == rental_ms), "{decided:?}");
    }
}

#[test]
fn the_window_starts_when_the_rental_is_paid_for() {
    let decided = fold::<Voucher>(&[rental_reserved()]).decide(&authorize(&[("song1", 100)]), AUTHORIZED_AT).expect("authorized");
    assert!(matches!(&decided[..], [Event::Authorized { rental_until, .. }] if *rental_until == RENTAL_UNTIL), "{decided:?}");
    // A purchase has no window.
    let decided = fold::<Voucher>(&song_pending()).decide(&authorize(&[SONG]), AUTHORIZED_AT).expect("authorized");
    assert!(matches!(&decided[..], [Event::Authorized { rental_until: Millis(0), .. }]), "{decided:?}");
}

#[test]
fn a_play_access_window_never_passes_the_rental_end() {
    let late = Millis(RENTAL_UNTIL.0 - 60_000);
    check::<Voucher>(&rental_authorized(), issue_by(merchant(), node(), ACCESS_TTL), late, Ok(vec![play_issued(node(), late)]));
    let Event::VoucherIssued { access_expires_at, .. } = play_issued(node(), late) else { unreachable!() };
    assert_eq!(access_expires_at, RENTAL_UNTIL);
}

#[test]
fn the_last_item_of_a_play_ends_the_play_and_the_rental_waits_for_the_next() {
    let mut given = rental_authorized();
    given.extend([play_issued(node(), ISSUED_AT), play_redeemed(node(), CHALLENGE, 1)]);
    let ended = Event::RentalPlayEnded { voucher_id: voucher_id(), node_id: node(), play: 1 };
    check::<Voucher>(&given, complete("song1"), ISSUED_AT, Ok(vec![delivered("song1", true), ended]));
    let after = fold::<Voucher>(&first_play());
    assert_eq!((after.status, after.node.clone(), after.rental_plays), (VoucherStatus::Authorized, None, 1));
}

#[test]
fn every_play_is_a_usage_of_its_own_on_any_node() {
    let second_at = Millis(ISSUED_AT.0 + 600_000);
    let mut given = first_play();
    check::<Voucher>(&given, issue_by(merchant(), other_node(), ACCESS_TTL), second_at, Ok(vec![play_issued(other_node(), second_at)]));
    given.push(play_issued(other_node(), second_at));
    let redeem =
        redeem_answering(other_node(), consumer(), cert(), crate::domain::voucher::CertCheck::Valid, crate::domain::voucher::ProofCheck::Valid, [4; 32]);
    check::<Voucher>(&given, redeem.clone(), second_at, Ok(vec![play_redeemed(other_node(), [4; 32], 2)]));
    // The same play asked again (a node retrying for the same consumer) is no new usage.
    given.push(play_redeemed(other_node(), [4; 32], 2));
    let retry =
        redeem_answering(other_node(), consumer(), cert(), crate::domain::voucher::CertCheck::Valid, crate::domain::voucher::ProofCheck::Valid, [5; 32]);
    check::<Voucher>(&given, retry, second_at, Ok(vec![]));
}

#[test]
fn a_retry_after_a_failed_delivery_in_the_same_play_is_no_new_usage() {
    let mut given = rental_authorized();
    given.extend([play_issued(node(), ISSUED_AT), play_redeemed(node(), CHALLENGE, 1), delivery_failed()]);
    let retry = redeem_answering(node(), consumer(), cert(), crate::domain::voucher::CertCheck::Valid, crate::domain::voucher::ProofCheck::Valid, [6; 32]);
    let mut expected = play_redeemed(node(), [6; 32], 0);
    if let Event::RedemptionAccepted { released_media, .. } = &mut expected {
        released_media.clear();
    }
    check::<Voucher>(&given, retry, ISSUED_AT, Ok(vec![expected]));
}

#[test]
fn a_rental_is_the_first_consumer_s_only() {
    let second_at = Millis(ISSUED_AT.0 + 600_000);
    let mut given = first_play();
    given.push(play_issued(node(), second_at));
    let other = crate::ids::ConsumerId::new("c2");
    let redeem = redeem_answering(node(), other, cert(), crate::domain::voucher::CertCheck::Valid, crate::domain::voucher::ProofCheck::Valid, [4; 32]);
    check::<Voucher>(&given, redeem, second_at, Err(Rejection::AlreadyRedeemed));
}

/// The refusal after the window is what stops the play: the same redemption at the window's
/// last millisecond is accepted.
#[test]
fn a_redemption_after_the_window_is_refused_and_one_at_its_end_is_not() {
    let mut given = rental_authorized();
    given.push(play_issued(node(), Millis(RENTAL_UNTIL.0 - 60_000)));
    check::<Voucher>(&given, redeem(), RENTAL_UNTIL, Ok(vec![play_redeemed(node(), CHALLENGE, 1)]));
    check::<Voucher>(&given, redeem(), Millis(RENTAL_UNTIL.0 + 1), Err(Rejection::RentalEnded { ended_at: RENTAL_UNTIL }));
}

#[test]
fn no_play_is_issued_after_the_window_and_one_at_its_end_is() {
    let given = first_play();
    check::<Voucher>(&given, issue_by(merchant(), node(), ACCESS_TTL), RENTAL_UNTIL, Ok(vec![play_issued(node(), RENTAL_UNTIL)]));
    check::<Voucher>(&given, issue_by(merchant(), node(), ACCESS_TTL), Millis(RENTAL_UNTIL.0 + 1), Err(Rejection::RentalEnded { ended_at: RENTAL_UNTIL }));
}

#[test]
fn a_purchase_keeps_its_one_usage_and_no_window() {
    // The negative control of the per-play count: a purchase's second redemption (after a
    // failed delivery) releases nothing new, and no time refuses it.
    let mut given = song_redeeming();
    given.push(delivery_failed());
    let retry = redeem_answering(node(), consumer(), cert(), crate::domain::voucher::CertCheck::Valid, crate::domain::voucher::ProofCheck::Valid, [6; 32]);
    let decided = fold::<Voucher>(&given).decide(&retry, Millis(RENTAL_UNTIL.0 + 1)).expect("a purchase has no window");
    assert!(matches!(&decided[..], [Event::RedemptionAccepted { released_media, rental_play: 0, .. }] if released_media.is_empty()), "{decided:?}");
    assert!(!fold::<Voucher>(&given).is_rental() && matches!(card(), Payment::Merchant { .. }));
}

#[test]
fn a_play_issued_within_the_window_and_left_unplayed_is_not_issued_again_after_it() {
    let mut given = first_play();
    given.push(play_issued(node(), Millis(RENTAL_UNTIL.0 - 60_000)));
    check::<Voucher>(
        &given,
        issue_by(merchant(), other_node(), ACCESS_TTL),
        Millis(RENTAL_UNTIL.0 + 1),
        Err(Rejection::RentalEnded { ended_at: RENTAL_UNTIL }),
    );
    // A rental not paid for yet has no window to be over: it is authorized as any reservation.
    let decided = fold::<Voucher>(&[rental_reserved()]).decide(&authorize(&[("song1", 100)]), Millis(T0.0 + 2));
    assert!(decided.is_ok(), "{decided:?}");
}

#[test]
fn a_rental_gives_at_most_rental_plays_max_plays() {
    use crate::domain::voucher::RENTAL_PLAYS_MAX;
    let mut given = first_play();
    let Some(Event::RedemptionAccepted { rental_play, .. }) = given.iter_mut().find(|event| matches!(event, Event::RedemptionAccepted { .. })) else {
        unreachable!("the first play redeems")
    };
    *rental_play = RENTAL_PLAYS_MAX;
    check::<Voucher>(&given, issue_by(merchant(), node(), ACCESS_TTL), ISSUED_AT, Err(Rejection::RentalPlaysExhausted { plays_max: RENTAL_PLAYS_MAX }));
    // One play fewer: the next is issued (the control).
    let mut one_left = first_play();
    if let Some(Event::RedemptionAccepted { rental_play, .. }) = one_left.iter_mut().find(|event| matches!(event, Event::RedemptionAccepted { .. })) {
        *rental_play = RENTAL_PLAYS_MAX - 1;
    }
    check::<Voucher>(&one_left, issue_by(merchant(), node(), ACCESS_TTL), ISSUED_AT, Ok(vec![play_issued(node(), ISSUED_AT)]));
}
