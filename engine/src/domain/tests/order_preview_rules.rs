//! Licensed duplication orders and previews, given/when/then.

use super::fixtures::{T0, check_invalid, media, media_from, merchant, mid, node, other_merchant, other_node};
use crate::domain::catalog::tests::sample;
use crate::domain::event::{Event, LedgerAccountKind, UnitCharge};
use crate::domain::order::{Order, OrderCommand, UNITS_MAX};
use crate::domain::preview::{PREVIEW_GRACE_MS, Preview, PreviewCommand};
use crate::domain::settlement::{Payer, SaleLine, balanced, settle};
use crate::domain::testing::check;
use crate::domain::{Aggregate, Rejection, fold};
use crate::ids::{MerchantId, Millis, OrderId, PreviewId};

// ---------------------------------------------------------------- order

fn order_id() -> OrderId {
    OrderId::new("o1")
}
fn place(units: u32) -> OrderCommand {
    OrderCommand::Place { order: order_id(), merchant: merchant(), media_id: mid("song1"), media: media("song1", 100), units }
}
fn placed() -> Event {
    let published = sample("song1", 100);
    Event::OrderPlaced {
        order_id: order_id(),
        merchant_id: merchant(),
        media_id: mid("song1"),
        units: 3,
        price_per_unit_minor: 100,
        settles_by: Some((published.currency, published.terms)),
    }
}
/// One unit's charge: merchant clearing pays 100, split by the sample terms.
fn charge() -> UnitCharge {
    let published = sample("song1", 100);
    let payer = Payer { kind: LedgerAccountKind::MerchantClearing, account: merchant().0 };
    let postings = settle(&payer, &merchant().0, &[SaleLine { price_minor: 100, terms: &published.terms }]);
    UnitCharge { merchant: merchant(), media_id: mid("song1"), price_minor: 100, currency: "EUR".into(), postings }
}
fn bind(unit: u32, device: &str) -> OrderCommand {
    bind_by(merchant(), unit, device)
}
fn bind_by(merchant: MerchantId, unit: u32, device: &str) -> OrderCommand {
    bind_with_key(merchant, unit, device, [1; 32])
}
fn bind_with_key(merchant: MerchantId, unit: u32, device: &str, device_public_key_hash: [u8; 32]) -> OrderCommand {
    OrderCommand::BindUnit { merchant, unit, device_id: device.into(), device_public_key_hash, merchant_active: true }
}
fn bound(unit: u32, device: &str) -> Event {
    Event::UnitBound { order_id: order_id(), unit, device_id: device.into(), device_public_key_hash: [1; 32], wrapped_key_hash: None, charge: Some(charge()) }
}
fn complete_unit(unit: u32) -> OrderCommand {
    OrderCommand::CompleteUnit { merchant: merchant(), unit }
}

/// The attack: a one-unit order bound three times handed the merchant the key for free,
/// with no charge, ledger line or royalty entry. Now each unit pays as it binds: its
/// charge (a balanced settlement from the merchant's clearing account) is in the event
/// that precedes any key; an order without recorded terms binds nothing (control: the
/// same bind on an order placed with them).
#[test]
fn a_unit_pays_as_it_binds() {
    let bound = fold::<Order>(&[placed()]).decide(&bind(0, "dev-1"), T0).expect("bound");
    let [Event::UnitBound { charge: Some(charge), .. }] = &bound[..] else { panic!("one charged UnitBound: {bound:?}") };
    assert!(balanced(&charge.postings), "{charge:?}");
    assert_eq!(charge.postings[0].debit_minor, 100, "the clearing account pays the unit's price");
    let Event::OrderPlaced { order_id, merchant_id, media_id, units, price_per_unit_minor, .. } = placed() else { unreachable!("placed") };
    let unpaid = Event::OrderPlaced { order_id, merchant_id, media_id, units, price_per_unit_minor, settles_by: None };
    check::<Order>(&[unpaid], bind(0, "dev-1"), T0, Err(Rejection::InvalidTransition { kind: "order", command: "BindUnit", state: "Unpaid" }));
}

#[test]
fn place_order_reserves_units_at_the_current_price() {
    check::<Order>(&[], place(3), T0, Ok(vec![placed()]));
}

#[test]
fn place_order_twice_is_refused() {
    check::<Order>(&[placed()], place(3), T0, Err(Rejection::AlreadyExists { kind: "order", id: "o1".into() }));
}

#[test]
fn place_order_of_unknown_or_unsellable_media_is_refused() {
    let unknown = OrderCommand::Place { order: order_id(), merchant: merchant(), media_id: mid("song1"), media: Default::default(), units: 3 };
    check::<Order>(&[], unknown, T0, Err(Rejection::NotFound { kind: "media", id: "song1".into() }));
    let mut published = sample("song1", 100);
    published.for_sale = false;
    let unsellable = OrderCommand::Place { order: order_id(), merchant: merchant(), media_id: mid("song1"), media: media_from(published), units: 3 };
    check::<Order>(&[], unsellable, T0, Err(Rejection::NotForSale("song1".into())));
}

#[test]
fn place_order_of_no_or_too_many_units_is_refused() {
    check_invalid::<Order>(&[], place(0), T0, "units");
    check_invalid::<Order>(&[], place(UNITS_MAX + 1), T0, "units");
}

#[test]
fn bind_unit_to_a_device() {
    check::<Order>(&[placed()], bind(0, "dev-a"), T0, Ok(vec![bound(0, "dev-a")]));
    check::<Order>(&[placed()], bind(2, "dev-a"), T0, Ok(vec![bound(2, "dev-a")]));
}

#[test]
fn rebind_to_the_same_device_is_already_in_effect() {
    check::<Order>(&[placed(), bound(0, "dev-a")], bind(0, "dev-a"), T0, Ok(vec![]));
}

#[test]
fn rebind_to_another_device_is_refused() {
    check::<Order>(&[placed(), bound(0, "dev-a")], bind(0, "dev-b"), T0, Err(Rejection::AlreadyExists { kind: "unit binding", id: "0".into() }));
}

/// The attack: a one-unit order bound three times, each time with a new key, gave the
/// merchant the clear media key three times (and no charge). A unit binds once, to one
/// key: the same device id with another key is refused. Control: the same pair is in effect.
#[test]
fn a_bound_unit_never_binds_another_key() {
    let given = [placed(), bound(0, "dev-a")];
    let other_key = bind_with_key(merchant(), 0, "dev-a", [7; 32]);
    check::<Order>(&given, other_key, T0, Err(Rejection::AlreadyExists { kind: "unit binding", id: "0".into() }));
    check::<Order>(&given, bind(0, "dev-a"), T0, Ok(vec![]));
}

#[test]
fn a_suspended_merchant_binds_nothing() {
    let suspended =
        OrderCommand::BindUnit { merchant: merchant(), unit: 0, device_id: "dev-a".into(), device_public_key_hash: [1; 32], merchant_active: false };
    check::<Order>(&[placed()], suspended, T0, Err(Rejection::MerchantSuspended));
}

#[test]
fn bind_of_a_unit_outside_the_order_is_refused() {
    check_invalid::<Order>(&[placed()], bind(3, "dev-a"), T0, "unit");
    check_invalid::<Order>(&[placed()], complete_unit(3), T0, "unit");
}

#[test]
fn bind_to_a_malformed_device_id_is_refused() {
    check_invalid::<Order>(&[placed()], bind(0, "dev a"), T0, "device_id");
}

#[test]
fn complete_unit_before_bind_is_an_invalid_transition() {
    check::<Order>(&[placed()], complete_unit(0), T0, Err(Rejection::InvalidTransition { kind: "unit", command: "CompleteUnit", state: "Unbound" }));
}

#[test]
fn complete_unit_counts_once() {
    let completed = Event::UnitCompleted { order_id: order_id(), unit: 0 };
    check::<Order>(&[placed(), bound(0, "dev-a")], complete_unit(0), T0, Ok(vec![completed.clone()]));
    check::<Order>(&[placed(), bound(0, "dev-a"), completed], complete_unit(0), T0, Ok(vec![]));
}

#[test]
fn another_merchants_order_is_refused() {
    check::<Order>(&[placed()], bind_by(other_merchant(), 0, "dev-a"), T0, Err(Rejection::NotFound { kind: "order", id: String::new() }));
    let given = [placed(), bound(0, "dev-a")];
    check::<Order>(
        &given,
        OrderCommand::CompleteUnit { merchant: other_merchant(), unit: 0 },
        T0,
        Err(Rejection::NotFound { kind: "order", id: String::new() }),
    );
}

#[test]
fn unknown_order_is_not_found() {
    check::<Order>(&[], bind(0, "dev-a"), T0, Err(Rejection::NotFound { kind: "order", id: String::new() }));
}

// ---------------------------------------------------------------- preview

fn preview_id() -> PreviewId {
    PreviewId::new("p1")
}
fn start() -> PreviewCommand {
    PreviewCommand::Start {
        preview: preview_id(),
        merchant: merchant(),
        media_id: mid("song1"),
        media: media("song1", 100),
        node: node(),
        grace_ms: PREVIEW_GRACE_MS,
        lease: 0,
    }
}
/// When a preview started at T0 lapses: `sample`'s 30 s clip and the grace period later.
fn lapses_at() -> Millis {
    Millis(T0.0 + 30_000 + PREVIEW_GRACE_MS as i64)
}
fn started() -> Event {
    Event::PreviewStarted {
        preview_id: preview_id(),
        media_id: mid("song1"),
        node_id: node(),
        merchant_id: merchant(),
        clip_ms: 30_000,
        lapses_at: lapses_at(),
        lease: 0,
    }
}
fn ended(played_ms: u64) -> Event {
    Event::PreviewEnded { preview_id: preview_id(), played_ms, media_id: mid("song1"), node_id: node() }
}

#[test]
fn start_preview_takes_the_clip_length() {
    check::<Preview>(&[], start(), T0, Ok(vec![started()]));
}

#[test]
fn an_unreported_preview_lapses_after_its_clip_and_the_grace_period_with_nothing_played() {
    let after = Millis(lapses_at().0 + 1);
    check::<Preview>(&[started()], PreviewCommand::Lapse, after, Ok(vec![ended(0)]));
    // Not before its window ends, not once ended (by its node or a lapse), not unknown.
    check::<Preview>(&[started()], PreviewCommand::Lapse, lapses_at(), Err(Rejection::NotExpired { expires_at: lapses_at() }));
    let twice = Err(Rejection::InvalidTransition { kind: "preview", command: "LapsePreview", state: "Ended" });
    check::<Preview>(&[started(), ended(12_000)], PreviewCommand::Lapse, after, twice.clone());
    check::<Preview>(&[started(), ended(0)], PreviewCommand::Lapse, after, twice);
    check::<Preview>(&[], PreviewCommand::Lapse, after, Err(Rejection::NotFound { kind: "preview", id: String::new() }));
    // A preview started before the window was recorded (lapses_at 0) is due at once.
    let legacy = Event::PreviewStarted {
        preview_id: preview_id(),
        media_id: mid("song1"),
        node_id: node(),
        merchant_id: merchant(),
        clip_ms: 30_000,
        lapses_at: Millis(0),
        lease: 0,
    };
    check::<Preview>(&[legacy], PreviewCommand::Lapse, T0, Ok(vec![ended(0)]));
    // The node's report after a lapse is refused: the preview ended.
    let late = PreviewCommand::End { node: node(), played_ms: 1 };
    check::<Preview>(&[started(), ended(0)], late, after, Err(Rejection::InvalidTransition { kind: "preview", command: "EndPreview", state: "Ended" }));
}

#[test]
fn start_preview_twice_is_refused() {
    check::<Preview>(&[started()], start(), T0, Err(Rejection::AlreadyExists { kind: "preview", id: "p1".into() }));
}

#[test]
fn start_preview_of_unknown_or_withdrawn_media_is_refused() {
    let unknown = PreviewCommand::Start {
        preview: preview_id(),
        merchant: merchant(),
        media_id: mid("song1"),
        media: Default::default(),
        node: node(),
        grace_ms: PREVIEW_GRACE_MS,
        lease: 0,
    };
    check::<Preview>(&[], unknown, T0, Err(Rejection::NotFound { kind: "media", id: "song1".into() }));
    let withdrawn = fold(&[Event::MediaPublished(sample("song1", 100)), Event::MediaWithdrawn { media_id: mid("song1"), reason: "gone".into() }]);
    let when = PreviewCommand::Start {
        preview: preview_id(),
        merchant: merchant(),
        media_id: mid("song1"),
        media: withdrawn,
        node: node(),
        grace_ms: PREVIEW_GRACE_MS,
        lease: 0,
    };
    check::<Preview>(&[], when, T0, Err(Rejection::NotForSale("song1".into())));
}

#[test]
fn end_preview_records_the_played_time() {
    check::<Preview>(&[started()], PreviewCommand::End { node: node(), played_ms: 12_345 }, T0, Ok(vec![ended(12_345)]));
}

#[test]
fn end_preview_caps_the_played_time_at_the_clip() {
    check::<Preview>(&[started()], PreviewCommand::End { node: node(), played_ms: 30_001 }, T0, Ok(vec![ended(30_000)]));
    check::<Preview>(&[started()], PreviewCommand::End { node: node(), played_ms: u64::MAX }, T0, Ok(vec![ended(30_000)]));
}

#[test]
fn end_preview_twice_is_an_invalid_transition() {
    let when = PreviewCommand::End { node: node(), played_ms: 1 };
    check::<Preview>(&[started(), ended(10)], when, T0, Err(Rejection::InvalidTransition { kind: "preview", command: "EndPreview", state: "Ended" }));
}

#[test]
fn end_preview_on_another_node_is_refused() {
    check::<Preview>(&[started()], PreviewCommand::End { node: other_node(), played_ms: 1 }, T0, Err(Rejection::NotYourAssignment));
}

#[test]
fn end_of_an_unknown_preview_is_not_found() {
    check::<Preview>(&[], PreviewCommand::End { node: node(), played_ms: 1 }, T0, Err(Rejection::NotFound { kind: "preview", id: String::new() }));
}
