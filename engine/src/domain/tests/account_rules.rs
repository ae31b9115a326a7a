//! Prepaid points: holds, posts and releases, given/when/then.

use super::fixtures::{EXPIRES, T0, account_id, check_invalid};
use crate::domain::account::{Account, AccountCommand, CREDIT_POINTS_MAX};
use crate::domain::event::{Event, VoidReason};
use crate::domain::testing::check;
use crate::domain::{Aggregate, Rejection, fold};
use crate::ids::VoucherId;

fn v(id: &str) -> VoucherId {
    VoucherId::new(id)
}
fn credited(amount: u64) -> Event {
    Event::PointsCredited { account_id: account_id(), amount, reason: "top-up".into() }
}
fn held(voucher: &str, amount: u64) -> Event {
    Event::PointsHeld { account_id: account_id(), voucher_id: v(voucher), amount, expires_at: EXPIRES }
}
fn posted(voucher: &str, amount: u64) -> Event {
    Event::HoldPosted { account_id: account_id(), voucher_id: v(voucher), amount }
}
fn released(voucher: &str, amount: u64) -> Event {
    Event::HoldReleased { account_id: account_id(), voucher_id: v(voucher), amount, reason: VoidReason::TimedOut }
}
fn credit(amount: u64) -> AccountCommand {
    AccountCommand::Credit { account: account_id(), amount, reason: "top-up".into() }
}
fn hold(voucher: &str, amount: u64) -> AccountCommand {
    AccountCommand::Hold { account: account_id(), voucher: v(voucher), amount, expires_at: EXPIRES }
}
fn post(voucher: &str) -> AccountCommand {
    AccountCommand::Post { voucher: v(voucher) }
}
fn release(voucher: &str) -> AccountCommand {
    AccountCommand::Release { voucher: v(voucher), reason: VoidReason::TimedOut }
}

#[test]
fn credit_adds_points() {
    check::<Account>(&[], credit(500), T0, Ok(vec![credited(500)]));
    let account: Account = fold(&[credited(500), credited(20)]);
    assert_eq!((account.balance, account.available()), (520, 520));
}

#[test]
fn credit_of_zero_or_more_than_the_maximum_is_refused() {
    check_invalid::<Account>(&[], credit(0), T0, "amount");
    check_invalid::<Account>(&[], credit(CREDIT_POINTS_MAX + 1), T0, "amount");
    check::<Account>(&[], credit(CREDIT_POINTS_MAX), T0, Ok(vec![credited(CREDIT_POINTS_MAX)]));
}

#[test]
fn credit_that_would_overflow_the_balance_is_refused() {
    // No history of capped credits reaches this quickly, so start from the state itself.
    let nearly_full = Account { id: Some(account_id()), balance: u64::MAX - 10, ..Account::default() };
    assert_eq!(nearly_full.decide(&credit(11), T0), Err(Rejection::Overflow));
    assert_eq!(nearly_full.decide(&credit(10), T0), Ok(vec![credited(10)]));
}

#[test]
fn hold_within_the_available_points_is_accepted() {
    check::<Account>(&[credited(500)], hold("v1", 300), T0, Ok(vec![held("v1", 300)]));
    check::<Account>(&[credited(500)], hold("v1", 500), T0, Ok(vec![held("v1", 500)]));
}

#[test]
fn hold_beyond_the_available_points_is_refused_with_both_amounts() {
    check::<Account>(&[credited(500)], hold("v1", 501), T0, Err(Rejection::InsufficientPoints { available: 500, needed: 501 }));
    check::<Account>(&[], hold("v1", 1), T0, Err(Rejection::InsufficientPoints { available: 0, needed: 1 }));
}

#[test]
fn hold_of_zero_points_is_refused() {
    check_invalid::<Account>(&[credited(500)], hold("v1", 0), T0, "amount");
}

#[test]
fn hold_again_for_the_same_voucher_takes_nothing_more() {
    check::<Account>(&[credited(500), held("v1", 300)], hold("v1", 300), T0, Ok(vec![]));
    check::<Account>(&[credited(500), held("v1", 300), posted("v1", 300)], hold("v1", 300), T0, Ok(vec![]));
}

#[test]
fn hold_again_after_release_is_refused() {
    let given = [credited(500), held("v1", 300), released("v1", 300)];
    check::<Account>(&given, hold("v1", 300), T0, Err(Rejection::InvalidTransition { kind: "points hold", command: "Hold", state: "Released" }));
}

#[test]
fn post_spends_the_held_points() {
    let given = [credited(500), held("v1", 300)];
    check::<Account>(&given, post("v1"), T0, Ok(vec![posted("v1", 300)]));
    let account: Account = fold(&[credited(500), held("v1", 300), posted("v1", 300)]);
    assert_eq!((account.balance, account.held_total(), account.available()), (200, 0, 200));
}

#[test]
fn post_twice_spends_once() {
    check::<Account>(&[credited(500), held("v1", 300), posted("v1", 300)], post("v1"), T0, Ok(vec![]));
}

#[test]
fn post_without_a_hold_is_refused() {
    check::<Account>(&[credited(500)], post("v1"), T0, Err(Rejection::NoSuchHold));
    check::<Account>(&[credited(500), held("v1", 300), released("v1", 300)], post("v1"), T0, Err(Rejection::NoSuchHold));
}

#[test]
fn release_returns_the_held_points() {
    let given = [credited(500), held("v1", 300)];
    check::<Account>(&given, release("v1"), T0, Ok(vec![released("v1", 300)]));
    let account: Account = fold(&[credited(500), held("v1", 300), released("v1", 300)]);
    assert_eq!((account.balance, account.available()), (500, 500));
}

#[test]
fn release_twice_releases_once() {
    check::<Account>(&[credited(500), held("v1", 300), released("v1", 300)], release("v1"), T0, Ok(vec![]));
}

#[test]
fn release_after_post_is_refused() {
    let given = [credited(500), held("v1", 300), posted("v1", 300)];
    check::<Account>(&given, release("v1"), T0, Err(Rejection::InvalidTransition { kind: "points hold", command: "Release", state: "Posted" }));
}

#[test]
fn release_without_a_hold_is_refused() {
    check::<Account>(&[credited(500)], release("v1"), T0, Err(Rejection::NoSuchHold));
}

#[test]
fn available_points_are_the_balance_less_every_open_hold() {
    let mut given = vec![credited(1000), held("v1", 300), held("v2", 500)];
    let account: Account = fold(&given);
    assert_eq!((account.balance, account.held_total(), account.available()), (1000, 800, 200));
    check::<Account>(&given, hold("v3", 201), T0, Err(Rejection::InsufficientPoints { available: 200, needed: 201 }));
    check::<Account>(&given, hold("v3", 200), T0, Ok(vec![held("v3", 200)]));

    given.extend([released("v1", 300), posted("v2", 500)]);
    let account: Account = fold(&given);
    assert_eq!((account.balance, account.held_total(), account.available()), (500, 0, 500));
    check::<Account>(&given, hold("v3", 501), T0, Err(Rejection::InsufficientPoints { available: 500, needed: 501 }));
    assert_eq!(account.posted.into_iter().collect::<Vec<_>>(), vec![v("v2")]);
    assert_eq!(account.released.into_iter().collect::<Vec<_>>(), vec![v("v1")]);
}

#[test]
fn credit_with_a_malformed_account_id_is_refused() {
    let when = AccountCommand::Credit { account: crate::ids::AccountId::new("a 1"), amount: 5, reason: "top-up".into() };
    check_invalid::<Account>(&[], when, T0, "account_id");
}
