//! Prepaid points: holds, posts and releases, given/when/then.

use super::fixtures::{EXPIRES, T0, account_id, check_invalid, merchant, mid, other_merchant};
use crate::domain::account::{Account, AccountCommand, CREDIT_POINTS_MAX, Seller, SpendConsent};
use crate::domain::event::{Event, LedgerAccountKind, PointsSale, Posting, VoidReason};
use crate::domain::testing::check;
use crate::domain::voucher::CertCheck;
use crate::domain::{Aggregate, Rejection, fold};
use crate::ids::{AccountId, Millis, VoucherId};

fn v(id: &str) -> VoucherId {
    VoucherId::new(id)
}
fn credited(amount: u64) -> Event {
    Event::PointsCredited { account_id: account_id(), amount, reason: "top-up".into(), sale: None }
}
/// A distinct nonce hash per voucher name (each hold uses its own authorization).
fn nonce_of(voucher: &str) -> [u8; 32] {
    let mut nonce = [0u8; 32];
    nonce[..voucher.len()].copy_from_slice(voucher.as_bytes());
    nonce
}
fn held(voucher: &str, amount: u64) -> Event {
    Event::PointsHeld { account_id: account_id(), voucher_id: v(voucher), amount, expires_at: EXPIRES, nonce_hash: Some(nonce_of(voucher)) }
}
/// The consumer's consent as the shell finds a genuine authorization for `voucher`'s hold.
fn consent_for(voucher: &str) -> SpendConsent {
    SpendConsent {
        account: account_id(),
        merchant: merchant(),
        amount_max: 1_000,
        media: vec![mid("song1")],
        nonce_hash: nonce_of(voucher),
        expires_at: EXPIRES,
        cert: CertCheck::Valid,
        signature_valid: true,
    }
}
fn hold_with(voucher: &str, amount: u64, consent: Option<SpendConsent>) -> AccountCommand {
    AccountCommand::Hold { account: account_id(), voucher: v(voucher), amount, expires_at: EXPIRES, merchant: merchant(), media: vec![mid("song1")], consent }
}
fn posted(voucher: &str, amount: u64) -> Event {
    Event::HoldPosted { account_id: account_id(), voucher_id: v(voucher), amount }
}
fn released(voucher: &str, amount: u64) -> Event {
    Event::HoldReleased { account_id: account_id(), voucher_id: v(voucher), amount, reason: VoidReason::TimedOut }
}
fn credit(amount: u64) -> AccountCommand {
    AccountCommand::Credit { account: account_id(), amount, reason: "top-up".into(), seller: None }
}
fn hold(voucher: &str, amount: u64) -> AccountCommand {
    hold_with(voucher, amount, Some(consent_for(voucher)))
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
fn hold_beyond_the_available_points_is_refused_without_stating_the_balance() {
    check::<Account>(&[credited(500)], hold("v1", 501), T0, Err(Rejection::InsufficientPoints));
    check::<Account>(&[], hold("v1", 1), T0, Err(Rejection::InsufficientPoints));
    let message = Rejection::InsufficientPoints.to_string();
    assert!(!message.chars().any(|c| c.is_ascii_digit()), "{message}");
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
    check::<Account>(&given, hold("v3", 201), T0, Err(Rejection::InsufficientPoints));
    check::<Account>(&given, hold("v3", 200), T0, Ok(vec![held("v3", 200)]));

    given.extend([released("v1", 300), posted("v2", 500)]);
    let account: Account = fold(&given);
    assert_eq!((account.balance, account.held_total(), account.available()), (500, 0, 500));
    check::<Account>(&given, hold("v3", 501), T0, Err(Rejection::InsufficientPoints));
    assert_eq!(account.posted.into_iter().collect::<Vec<_>>(), vec![v("v2")]);
    assert_eq!(account.released.into_iter().collect::<Vec<_>>(), vec![v("v1")]);
}

#[test]
fn credit_with_a_malformed_account_id_is_refused() {
    let when = AccountCommand::Credit { account: AccountId::new("a 1"), amount: 5, reason: "top-up".into(), seller: None };
    check_invalid::<Account>(&[], when, T0, "account_id");
}

// ---- the consumer's consent ----

fn refused(reason: &'static str) -> Result<Vec<Event>, Rejection> {
    Err(Rejection::SpendNotAuthorized { reason })
}

/// The attack that worked: a merchant spent an account it had no consent for. Each way an
/// authorization can be wrong is refused; the control (the same hold with the genuine
/// consent) goes through, so each refusal is the check's doing.
#[test]
fn a_hold_needs_the_consumers_consent_for_this_merchant_media_amount_and_time() {
    let given = [credited(500)];
    check::<Account>(&given, hold("v1", 300), T0, Ok(vec![held("v1", 300)]));
    check::<Account>(&given, hold_with("v1", 300, None), T0, refused("a points purchase needs the consumer's spend authorization"));
    type Break = fn(&mut SpendConsent);
    let cases: [(Break, &'static str); 9] = [
        (|c| c.signature_valid = false, "the spend authorization's signature does not verify"),
        (|c| c.cert = CertCheck::Revoked, "the certificate that signed the spend authorization is revoked"),
        (|c| c.cert = CertCheck::NotValid, "the certificate that signed the spend authorization is not valid at this time"),
        (|c| c.cert = CertCheck::Unknown, "the spend authorization names no certificate of this consumer"),
        (|c| c.account = AccountId::new("someone-else"), "the spend authorization is for another points account"),
        (|c| c.merchant = other_merchant(), "the spend authorization is for another merchant"),
        (|c| c.expires_at = Millis(T0.0 - 1), "the spend authorization expired"),
        (|c| c.media = vec![mid("another-song")], "the spend authorization does not cover these media"),
        (|c| c.amount_max = 299, "the price exceeds the amount the spend authorization allows"),
    ];
    for (breaks, reason) in cases {
        let mut consent = consent_for("v1");
        breaks(&mut consent);
        check::<Account>(&given, hold_with("v1", 300, Some(consent)), T0, refused(reason));
    }
    // At the limits: exactly the ceiling, at the expiry instant, any media when none named.
    let mut at_limits = consent_for("v1");
    (at_limits.amount_max, at_limits.expires_at, at_limits.media) = (300, T0, Vec::new());
    check::<Account>(&given, hold_with("v1", 300, Some(at_limits)), T0, Ok(vec![held("v1", 300)]));
}

#[test]
fn an_authorization_is_good_for_one_hold_even_after_that_hold_is_released() {
    let reuse = |voucher: &str| hold_with(voucher, 100, Some(consent_for("v1")));
    check::<Account>(&[credited(500), held("v1", 100)], reuse("v2"), T0, refused("the spend authorization was already used"));
    check::<Account>(&[credited(500), held("v1", 100), released("v1", 100)], reuse("v2"), T0, refused("the spend authorization was already used"));
    // Control: a fresh authorization for the second purchase.
    check::<Account>(&[credited(500), held("v1", 100)], hold("v2", 100), T0, Ok(vec![held("v2", 100)]));
    // A stream written before consent (no nonce recorded) reserves nothing.
    let old = Event::PointsHeld { account_id: account_id(), voucher_id: v("v0"), amount: 1, expires_at: EXPIRES, nonce_hash: None };
    let account: Account = fold(&[credited(5), old]);
    assert!(account.used_nonces.is_empty());
}

#[test]
fn points_a_merchant_sells_are_settled_from_its_clearing_account() {
    let seller = Seller { merchant: merchant(), currency: "EUR".into() };
    let when = AccountCommand::Credit { account: account_id(), amount: 250, reason: "top-up".into(), seller: Some(seller.clone()) };
    let postings = vec![
        Posting { kind: LedgerAccountKind::MerchantClearing, account: merchant().0, debit_minor: 250, credit_minor: 0 },
        Posting { kind: LedgerAccountKind::ConsumerPoints, account: account_id().0, debit_minor: 0, credit_minor: 250 },
    ];
    let sale = PointsSale { merchant: merchant(), currency: "EUR".into(), postings };
    check::<Account>(&[], when, T0, Ok(vec![Event::PointsCredited { account_id: account_id(), amount: 250, reason: "top-up".into(), sale: Some(sale) }]));
    let bad =
        AccountCommand::Credit { account: account_id(), amount: 250, reason: "top-up".into(), seller: Some(Seller { currency: "euro".into(), ..seller }) };
    check_invalid::<Account>(&[], bad, T0, "currency");
}
