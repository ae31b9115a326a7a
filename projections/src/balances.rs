//! Balances: the accounts of the double-entry settlement, and the prepaid points accounts.
//!
//! **The settlement ledger** mirrors the postings the domain records, and nothing else:
//! an `Authorized` sale carries its settlement (`engine::domain::settlement::settle`), a
//! `Voided` refund carries the reversal of it (`engine::domain::voucher::reverse`; a
//! voucher voided before it was authorized carries none), and a bound duplication unit
//! (`UnitBound`) carries its own charge, in the currency it names. A ledger account is named by
//! the sale's currency and the posting's kind and account name:
//! - `ConsumerPoints(account)`: the payer of a sale paid in prepaid points;
//! - `MerchantClearing(merchant)`: the payer of a sale whose payment the merchant took
//!   (card, cash): the "payments received" side, the merchant's clearing account that
//!   owes the sale's price to the split;
//! - `Retailer(merchant)`, `Distributor(name)`, `Owner(name)`: the split, per each
//!   media's terms (rounding remainders go to the owner).
//!
//! A balance is credits minus debits, in minor units, as `i128` (postings carry `u64`).
//! The payer's debit equals the split's credits in every event the engine writes, so each
//! event's postings balance by themselves and no counter-account has to be invented: the
//! sum over all ledger accounts is exactly zero after every event (`sum`). An event whose
//! postings do not balance, or that would overflow a balance, is refused as a whole
//! (`BalanceError`; nothing of it is applied), and `Projections::apply` reports it as a
//! `Finding` with its sequence: the ledger never holds a state that does not sum to zero.
//!
//! **Points accounts** follow the account aggregate's events, as
//! `engine::domain::account::Account` computes them: `balance` = points credited minus
//! points posted, `held` = points held and not yet posted or released, `available` =
//! `balance - held`. An operator's top-up (`PointsCredited` without a sale) is recorded
//! by the domain without a posting: points are the consumer's prepaid money, outside the
//! settlement ledger until spent, so they appear here and not in the ledger. Points a
//! merchant sold carry their postings (`MerchantClearing(merchant)` debit,
//! `ConsumerPoints(account)` credit, in the currency the consumer paid), posted like a
//! sale's. The two views meet through the points saga (hold at Reserve, post after
//! Authorize, credit back after a refund): once every saga has completed, an account's
//! `balance` equals its operator top-ups (not counting the refunds' credits) plus the
//! ledger balances of `ConsumerPoints(account)` over all currencies (what merchants sold
//! plus what refunds reversed minus what its sales settled). Between the steps of
//! a saga the two differ by design, so that equation is checked by the tests at rest, not
//! here. The domain never lets a points balance go
//! negative; a stream that does shows it here as a negative amount (it is not refused:
//! the projection stays consistent, and the account is visible).
//!
//! Currencies: a posting carries none, but the sale it settles does (`Reserved`, earlier on
//! the same voucher), and adding euros to dollars gives no balance. So the caller passes
//! the sale's currency with the event (`Projections::apply` takes it from the royalty
//! log's record of the sale; empty when the stream never reserved the voucher) and every
//! ledger account is kept per currency. Each sale is in one currency, so the ledger also
//! sums to zero in each currency. Points are one currency of their own: a sale paid in
//! points debits the points 1:1 in the sale's minor units, as the domain decides it.
//!
//! Which ledger and points accounts changed is noted for the projection store (`Touched`);
//! how the store keeps them: `format`.
//! What is not here: deciding anything (the domain splits and checks) and the history of
//! postings (the stream is the history).

use crate::rows::Touched;
use engine::domain::event::{Event, LedgerAccountKind, Posting};
use engine::ids::AccountId;
use std::collections::BTreeMap;

pub(crate) mod format;

/// One account of the settlement ledger: the currency of the sales it settles, and a
/// posting's kind and account name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LedgerAccount {
    pub currency: String,
    pub kind: LedgerAccountKind,
    pub name: String,
}

impl LedgerAccount {
    pub fn new(currency: impl Into<String>, kind: LedgerAccountKind, name: impl Into<String>) -> Self {
        LedgerAccount { currency: currency.into(), kind, name: name.into() }
    }
}

crate::borrowed_key::borrowed_key! {
    /// A ledger account's parts, borrowed: what looking an account up needs, so that
    /// applying a posting to an account the ledger already holds builds no key (a posting
    /// names an account by the sale's currency and its kind and name, not by a
    /// `LedgerAccount`). Ordered as `LedgerAccount` is (currency, kind, name), which is what
    /// lets `LedgerAccount` lend itself as one (`Borrow`).
    trait LedgerKey for LedgerAccount, parts (&str, LedgerAccountKind, &str) = |account| (&account.currency, account.kind, &account.name)
}

impl std::fmt::Display for LedgerAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} ({})", kind_name(self.kind), self.name, self.currency)
    }
}

/// A prepaid points account, in points (minor units of the points currency).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PointsBalance {
    /// Points credited minus points posted (spent).
    pub balance: i128,
    /// Points held for reservations, not yet posted or released.
    pub held: i128,
}

impl PointsBalance {
    /// Points a new hold may take (`balance - held`), as the domain computes them.
    pub fn available(&self) -> i128 {
        self.balance.saturating_sub(self.held)
    }
}

/// Why an event cannot be applied to the balances. Nothing of such an event is applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    #[error("the postings do not balance: debits {debits_minor}, credits {credits_minor} (minor units)")]
    Unbalanced { debits_minor: u128, credits_minor: u128 },
    #[error("the balance of {account} would overflow")]
    Overflow { account: String },
}

/// The balances projection (module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    /// Every ledger account a posting named, with its balance (credits − debits). An
    /// account stays listed when its balance returns to zero (a refunded sale).
    pub ledger: BTreeMap<LedgerAccount, i128>,
    /// Every points account an account event named.
    pub points: BTreeMap<AccountId, PointsBalance>,
    /// What changed since the projection store last committed these balances.
    pub(crate) touched_ledger: Touched<LedgerAccount>,
    pub(crate) touched_points: Touched<AccountId>,
}

impl Balances {
    /// Applies one event: all of it, or (with an error) nothing. `currency` is the
    /// currency of the sale the event settles (an `Authorized` or `Voided` voucher's
    /// `Reserved` currency; empty when unknown, when the event carries no postings, or for
    /// any other event).
    pub fn apply(&mut self, event: &Event, currency: &str) -> Result<(), BalanceError> {
        match event {
            Event::Authorized { postings, .. } | Event::Voided { reversal: postings, .. } | Event::Refunded { reversal: postings, .. } => {
                self.post(postings, currency)
            }
            // A duplication unit is a sale of its own, in the currency it names.
            Event::UnitBound { charge: Some(charge), .. } => self.post(&charge.postings, &charge.currency),
            Event::PointsCredited { account_id, amount, sale: None, .. } => self.points_change(account_id, i128::from(*amount), 0),
            Event::PointsCredited { account_id, amount, sale: Some(sale), .. } => {
                // Points a merchant sold: its clearing account owes them to the consumer's
                // points (in the currency paid). All or nothing: the points change cannot
                // fail once the postings are in, so check it first.
                let current = self.points_of(account_id);
                current.balance.checked_add(i128::from(*amount)).ok_or_else(|| BalanceError::Overflow { account: format!("points:{}", account_id.0) })?;
                self.post(&sale.postings, &sale.currency)?;
                self.points_change(account_id, i128::from(*amount), 0)
            }
            Event::PointsHeld { account_id, amount, .. } => self.points_change(account_id, 0, i128::from(*amount)),
            Event::HoldPosted { account_id, amount, .. } => self.points_change(account_id, -i128::from(*amount), -i128::from(*amount)),
            Event::HoldReleased { account_id, amount, .. } => self.points_change(account_id, 0, -i128::from(*amount)),
            _ => Ok(()),
        }
    }

    /// Checks that `postings` balance, computes every new balance, then stores them.
    fn post(&mut self, postings: &[Posting], currency: &str) -> Result<(), BalanceError> {
        if postings.is_empty() {
            return Ok(());
        }
        let debits_minor: u128 = postings.iter().map(|p| u128::from(p.debit_minor)).sum();
        let credits_minor: u128 = postings.iter().map(|p| u128::from(p.credit_minor)).sum();
        if debits_minor != credits_minor {
            return Err(BalanceError::Unbalanced { debits_minor, credits_minor });
        }
        let key = |posting| ledger_key(currency, posting);
        // New balances first, so an overflow leaves every balance as it was: `next[i]` is
        // the balance of posting i's account after it. An account named twice in one
        // event takes both lines (the later line starts from the earlier one's balance).
        // Accounts are looked up by their borrowed parts: no key is built unless an
        // account is new (or the store is noting changes).
        let mut next: Vec<i128> = Vec::with_capacity(postings.len());
        for (index, posting) in postings.iter().enumerate() {
            let account = key(posting);
            let current = match postings[..index].iter().rposition(|earlier| key(earlier) == account) {
                Some(earlier) => next[earlier],
                None => self.ledger.get(&account as &dyn LedgerKey).copied().unwrap_or(0),
            };
            let balance = current
                .checked_add(i128::from(posting.credit_minor))
                .and_then(|balance| balance.checked_sub(i128::from(posting.debit_minor)))
                .ok_or_else(|| BalanceError::Overflow { account: LedgerAccount::new(currency, posting.kind, posting.account.as_str()).to_string() })?;
            next.push(balance);
        }
        // Each account takes the balance after the last line that names it.
        for (index, (posting, balance)) in postings.iter().zip(next).enumerate() {
            let account = key(posting);
            if postings[index + 1..].iter().any(|later| key(later) == account) {
                continue;
            }
            if self.touched_ledger.tracking() {
                self.touched_ledger.touch(&LedgerAccount::new(currency, posting.kind, posting.account.as_str()));
            }
            match self.ledger.get_mut(&account as &dyn LedgerKey) {
                Some(stored) => *stored = balance,
                None => {
                    self.ledger.insert(LedgerAccount::new(currency, posting.kind, posting.account.as_str()), balance);
                }
            }
        }
        Ok(())
    }

    fn points_change(&mut self, account_id: &AccountId, balance_delta: i128, held_delta: i128) -> Result<(), BalanceError> {
        let overflow = || BalanceError::Overflow { account: format!("points:{}", account_id.0) };
        let changed = |current: PointsBalance| -> Result<PointsBalance, BalanceError> {
            Ok(PointsBalance {
                balance: current.balance.checked_add(balance_delta).ok_or_else(overflow)?,
                held: current.held.checked_add(held_delta).ok_or_else(overflow)?,
            })
        };
        // One lookup for an account the projection knows; its id is copied only when new.
        match self.points.get_mut(account_id) {
            Some(points) => *points = changed(*points)?,
            None => {
                let next = changed(PointsBalance::default())?;
                self.points.insert(account_id.clone(), next);
            }
        }
        self.touched_points.touch(account_id);
        Ok(())
    }

    /// The sum of every ledger balance: zero after every applied event. `None` if the sum
    /// itself overflows `i128` (only a state that was not built by `apply` can).
    pub fn sum(&self) -> Option<i128> {
        self.ledger.values().try_fold(0i128, |sum, balance| sum.checked_add(*balance))
    }

    /// The sum of the ledger balances in each currency (each is zero, as `sum` is).
    pub fn sums_by_currency(&self) -> BTreeMap<&str, Option<i128>> {
        let mut sums: BTreeMap<&str, Option<i128>> = BTreeMap::new();
        for (account, balance) in &self.ledger {
            let sum = sums.entry(account.currency.as_str()).or_insert(Some(0));
            *sum = sum.and_then(|sum| sum.checked_add(*balance));
        }
        sums
    }

    /// The ledger's balances summed per currency and account kind (what the operator's
    /// ledger shows; each currency's kinds sum to zero, as `sums_by_currency` says).
    pub fn by_kind(&self) -> BTreeMap<(String, LedgerAccountKind), i128> {
        let mut sums: BTreeMap<(String, LedgerAccountKind), i128> = BTreeMap::new();
        for (account, balance) in &self.ledger {
            let sum = sums.entry((account.currency.clone(), account.kind)).or_default();
            *sum = sum.saturating_add(*balance);
        }
        sums
    }

    /// The balance of one ledger account (zero if no posting named it).
    pub fn ledger_balance(&self, currency: &str, kind: LedgerAccountKind, name: &str) -> i128 {
        self.ledger.get(&(currency, kind, name) as &dyn LedgerKey).copied().unwrap_or(0)
    }

    /// A points account (zeros if no event named it).
    pub fn points_of(&self, account: &AccountId) -> PointsBalance {
        self.points.get(account).copied().unwrap_or_default()
    }

    /// Balances from their persisted parts.
    fn from_parts(ledger: BTreeMap<LedgerAccount, i128>, points: BTreeMap<AccountId, PointsBalance>) -> Self {
        Balances { ledger, points, ..Balances::default() }
    }

    /// Starts noting changes for the projection store.
    pub(crate) fn track_changes(&mut self) {
        self.touched_ledger.start();
        self.touched_points.start();
    }

    /// The canonical encoding for `Projections::digest`: every ledger account (currency,
    /// kind code, name, balance) and every points account (id, balance, held), in key
    /// order; integers little-endian, `i128` as 16 bytes.
    pub(crate) fn digest_into(&self, field: &mut dyn FnMut(&[u8])) {
        field(&(self.ledger.len() as u64).to_le_bytes());
        for (account, balance) in &self.ledger {
            field(account.currency.as_bytes());
            field(&[kind_code(account.kind)]);
            field(account.name.as_bytes());
            field(&balance.to_le_bytes());
        }
        field(&(self.points.len() as u64).to_le_bytes());
        for (account, points) in &self.points {
            field(account.0.as_bytes());
            field(&points.balance.to_le_bytes());
            field(&points.held.to_le_bytes());
        }
    }
}

/// The account a posting of a sale in `currency` names, as borrowed parts (`LedgerKey`).
fn ledger_key<'a>(currency: &'a str, posting: &'a Posting) -> (&'a str, LedgerAccountKind, &'a str) {
    (currency, posting.kind, posting.account.as_str())
}

/// The stable one-byte code of a ledger account kind (digest and store keys).
pub(crate) fn kind_code(kind: LedgerAccountKind) -> u8 {
    match kind {
        LedgerAccountKind::ConsumerPoints => 0,
        LedgerAccountKind::MerchantClearing => 1,
        LedgerAccountKind::Retailer => 2,
        LedgerAccountKind::Distributor => 3,
        LedgerAccountKind::Owner => 4,
    }
}

pub(crate) fn kind_of_code(code: u8) -> Option<LedgerAccountKind> {
    match code {
        0 => Some(LedgerAccountKind::ConsumerPoints),
        1 => Some(LedgerAccountKind::MerchantClearing),
        2 => Some(LedgerAccountKind::Retailer),
        3 => Some(LedgerAccountKind::Distributor),
        4 => Some(LedgerAccountKind::Owner),
        _ => None,
    }
}

/// The name of a ledger account kind, for people (messages, reports).
pub fn kind_name(kind: LedgerAccountKind) -> &'static str {
    match kind {
        LedgerAccountKind::ConsumerPoints => "consumer_points",
        LedgerAccountKind::MerchantClearing => "merchant_clearing",
        LedgerAccountKind::Retailer => "retailer",
        LedgerAccountKind::Distributor => "distributor",
        LedgerAccountKind::Owner => "owner",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LedgerAccountKind::*;
    use engine::domain::event::{RoyaltyTerms, VoidReason};
    use engine::domain::settlement::{Payer, SaleLine, settle};
    use engine::domain::voucher::reverse;
    use engine::ids::{Millis, VoucherId};

    fn terms() -> RoyaltyTerms {
        RoyaltyTerms {
            retailer_bps: 3000,
            distributor_bps: 2000,
            owner_bps: 5000,
            distributor: "dist".into(),
            owner: "label".into(),
            rights_agent: "agent".into(),
        }
    }

    /// The postings the domain writes for a sale of `prices` by merchant `m1`.
    fn sale(payer: Payer, prices: &[u64]) -> Vec<Posting> {
        let terms = terms();
        let lines: Vec<SaleLine<'_>> = prices.iter().map(|&price_minor| SaleLine { price_minor, terms: &terms }).collect();
        settle(&payer, "m1", &lines)
    }

    fn authorized(postings: Vec<Posting>) -> Event {
        Event::Authorized { voucher_id: VoucherId::new("v"), receipt_key_id: 1, receipt_generation: 1, postings, rental_until: engine::ids::Millis(0) }
    }

    fn voided(reversal: Vec<Posting>) -> Event {
        Event::Voided { voucher_id: VoucherId::new("v"), reason: VoidReason::Refunded, reversal }
    }

    fn card() -> Payer {
        Payer { kind: MerchantClearing, account: "m1".into() }
    }

    #[test]
    fn a_merchant_paid_sale_moves_the_price_from_clearing_to_the_split() {
        let mut balances = Balances::default();
        balances.apply(&authorized(sale(card(), &[199])), "EUR").expect("balanced");
        // 199 * 30 % = 59, 199 * 20 % = 39, the owner takes the remainder 101.
        assert_eq!(balances.ledger_balance("EUR", MerchantClearing, "m1"), -199);
        assert_eq!(balances.ledger_balance("EUR", Retailer, "m1"), 59);
        assert_eq!(balances.ledger_balance("EUR", Distributor, "dist"), 39);
        assert_eq!(balances.ledger_balance("EUR", Owner, "label"), 101);
        assert_eq!(balances.sum(), Some(0));
    }

    #[test]
    fn each_currency_has_its_own_accounts_and_sums_to_zero() {
        let mut balances = Balances::default();
        balances.apply(&authorized(sale(card(), &[199])), "EUR").expect("balanced");
        balances.apply(&authorized(sale(card(), &[500])), "USD").expect("balanced");
        assert_eq!((balances.ledger_balance("EUR", Retailer, "m1"), balances.ledger_balance("USD", Retailer, "m1")), (59, 150));
        let sums: Vec<(&str, Option<i128>)> = balances.sums_by_currency().into_iter().collect();
        assert_eq!(sums, vec![("EUR", Some(0)), ("USD", Some(0))]);
    }

    #[test]
    fn a_refund_reverses_the_sale_and_the_accounts_stay_listed_at_zero() {
        let postings = sale(Payer { kind: ConsumerPoints, account: "a1".into() }, &[100, 250]);
        let mut balances = Balances::default();
        balances.apply(&authorized(postings.clone()), "EUR").expect("balanced");
        assert_eq!(balances.ledger_balance("EUR", ConsumerPoints, "a1"), -350);
        assert_eq!(balances.sum(), Some(0));
        balances.apply(&voided(reverse(&postings)), "EUR").expect("balanced");
        assert_eq!(balances.sum(), Some(0));
        assert!(balances.ledger.values().all(|balance| *balance == 0), "{:?}", balances.ledger);
        assert_eq!(balances.ledger.len(), 4, "payer, retailer, distributor and owner stay listed");
        // A void before authorization carries no reversal and changes nothing.
        let before = balances.clone();
        balances.apply(&voided(vec![]), "EUR").expect("nothing to post");
        assert_eq!(balances, before);
    }

    #[test]
    fn points_accounts_follow_hold_post_release_and_credit() {
        let account = AccountId::new("a1");
        let held = |voucher: &str, amount: u64| Event::PointsHeld {
            account_id: account.clone(),
            voucher_id: VoucherId::new(voucher),
            amount,
            expires_at: Millis(9),
            nonce_hash: None,
        };
        let mut balances = Balances::default();
        for event in [Event::PointsCredited { account_id: account.clone(), amount: 500, reason: "top-up".into(), sale: None }, held("v1", 200), held("v2", 100)]
        {
            balances.apply(&event, "").expect("apply");
        }
        assert_eq!(balances.points_of(&account), PointsBalance { balance: 500, held: 300 });
        assert_eq!(balances.points_of(&account).available(), 200);
        balances.apply(&Event::HoldPosted { account_id: account.clone(), voucher_id: VoucherId::new("v1"), amount: 200 }, "").expect("post");
        balances
            .apply(&Event::HoldReleased { account_id: account.clone(), voucher_id: VoucherId::new("v2"), amount: 100, reason: VoidReason::TimedOut }, "")
            .expect("release");
        assert_eq!(balances.points_of(&account), PointsBalance { balance: 300, held: 0 });
        assert!(balances.ledger.is_empty(), "points movements are not ledger postings");
        assert_eq!(balances.points_of(&AccountId::new("other")), PointsBalance::default());
    }

    #[test]
    fn unbalanced_postings_are_refused_and_change_nothing() {
        let mut balances = Balances::default();
        balances.apply(&authorized(sale(card(), &[199])), "EUR").expect("balanced");
        let before = balances.clone();
        // Negative control: the same sale, with one credit raised by one minor unit.
        let mut tampered = sale(card(), &[199]);
        tampered[1].credit_minor += 1;
        assert_eq!(balances.apply(&authorized(tampered), "EUR"), Err(BalanceError::Unbalanced { debits_minor: 199, credits_minor: 200 }));
        assert_eq!(balances, before, "nothing of the refused event was applied");
        assert_eq!(balances.sum(), Some(0));
    }

    #[test]
    fn an_overflow_is_a_typed_error_not_a_panic() {
        let mut balances = Balances::default();
        balances.ledger.insert(LedgerAccount::new("EUR", Retailer, "m1"), i128::MAX - 10);
        balances.ledger.insert(LedgerAccount::new("EUR", Owner, "elsewhere"), -(i128::MAX - 10));
        let before = balances.clone();
        let error = balances.apply(&authorized(sale(card(), &[1_000])), "EUR").expect_err("the retailer's balance overflows");
        assert_eq!(error, BalanceError::Overflow { account: "retailer:m1 (EUR)".into() });
        assert_eq!(balances, before, "the clearing account's debit was not applied either");

        let account = AccountId::new("a1");
        balances.points.insert(account.clone(), PointsBalance { balance: i128::MAX, held: 0 });
        let credited = Event::PointsCredited { account_id: account.clone(), amount: 1, reason: "top-up".into(), sale: None };
        assert_eq!(balances.apply(&credited, ""), Err(BalanceError::Overflow { account: "points:a1".into() }));
    }

    #[test]
    fn points_a_merchant_sold_are_owed_by_its_clearing_account_all_or_nothing() {
        let account = AccountId::new("alice");
        let sold = |amount: u64| Event::PointsCredited {
            account_id: account.clone(),
            amount,
            reason: "top-up".into(),
            sale: Some(engine::domain::event::PointsSale {
                merchant: engine::ids::MerchantId::new("m1"),
                currency: "EUR".into(),
                postings: vec![
                    Posting { kind: MerchantClearing, account: "m1".into(), debit_minor: amount, credit_minor: 0 },
                    Posting { kind: ConsumerPoints, account: "alice".into(), debit_minor: 0, credit_minor: amount },
                ],
            }),
        };
        let mut balances = Balances::default();
        balances.apply(&sold(300), "").expect("sold");
        assert_eq!(balances.points_of(&account), PointsBalance { balance: 300, held: 0 });
        assert_eq!(balances.ledger_balance("EUR", MerchantClearing, "m1"), -300);
        assert_eq!(balances.ledger_balance("EUR", ConsumerPoints, "alice"), 300);
        assert_eq!(balances.sum(), Some(0));
        // A points overflow refuses the whole event: the postings are not applied either.
        balances.points.insert(account.clone(), PointsBalance { balance: i128::MAX, held: 0 });
        let before = balances.clone();
        assert_eq!(balances.apply(&sold(1), ""), Err(BalanceError::Overflow { account: "points:alice".into() }));
        assert_eq!(balances, before);
    }

    #[test]
    fn the_sum_sees_a_state_that_does_not_balance() {
        // Negative control for `sum`: a ledger not built by `apply`.
        let mut balances = Balances::default();
        balances.ledger.insert(LedgerAccount::new("EUR", Owner, "label"), 1);
        assert_eq!(balances.sum(), Some(1));
        balances.ledger.insert(LedgerAccount::new("USD", Retailer, "m1"), i128::MAX);
        assert_eq!(balances.sum(), None);
    }

    #[test]
    fn an_account_named_twice_in_one_event_takes_both_lines() {
        let line = |kind, account: &str, debit_minor, credit_minor| Posting { kind, account: account.into(), debit_minor, credit_minor };
        let mut balances = Balances::default();
        balances
            .apply(
                &authorized(vec![line(MerchantClearing, "m1", 10, 0), line(Retailer, "m1", 0, 4), line(Owner, "o", 0, 1), line(Retailer, "m1", 0, 5)]),
                "EUR",
            )
            .expect("balanced");
        assert_eq!(balances.ledger_balance("EUR", Retailer, "m1"), 9);
        assert_eq!(balances.ledger.len(), 3);
        assert_eq!(balances.sum(), Some(0));
        // The second line of the same account overflows: nothing of the event is applied,
        // not even the first line, and the account named is the one that overflowed.
        balances.ledger.insert(LedgerAccount::new("EUR", Owner, "o"), i128::MAX - 2);
        balances.ledger.insert(LedgerAccount::new("EUR", Distributor, "sink"), -(i128::MAX - 2) - 1);
        let before = balances.clone();
        let error = balances
            .apply(&authorized(vec![line(MerchantClearing, "m1", 4, 0), line(Owner, "o", 0, 2), line(Owner, "o", 0, 2)]), "EUR")
            .expect_err("overflows");
        assert_eq!(error, BalanceError::Overflow { account: "owner:o (EUR)".into() });
        assert_eq!(balances, before);
    }

    fn arb_account() -> impl proptest::strategy::Strategy<Value = LedgerAccount> {
        use proptest::prelude::*;
        ("[A-Z]{0,2}", 0usize..5, "[a-c]{0,3}")
            .prop_map(|(currency, kind, name)| LedgerAccount::new(currency, [ConsumerPoints, MerchantClearing, Retailer, Distributor, Owner][kind], name))
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(engine::testing::proptest_seed(module_path!())), ..proptest::test_runner::Config::default() })]

        /// The contract that lets `LedgerAccount` lend itself as a `LedgerKey`: the
        /// borrowed parts order as the account does, so a lookup by parts finds exactly the
        /// account with those parts (and a lookup with any part different finds nothing).
        #[test]
        fn borrowed_ledger_keys_order_and_find_as_accounts_do(accounts in proptest::collection::vec(arb_account(), 1..20), probe in arb_account()) {
            for pair in accounts.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                proptest::prop_assert_eq!(a.cmp(b), (a as &dyn LedgerKey).cmp(&(b.currency.as_str(), b.kind, b.name.as_str()) as &dyn LedgerKey));
            }
            let ledger: BTreeMap<LedgerAccount, i128> = accounts.iter().enumerate().map(|(index, account)| (account.clone(), index as i128)).collect();
            for account in accounts.iter().chain([&probe]) {
                let parts = (account.currency.as_str(), account.kind, account.name.as_str());
                proptest::prop_assert_eq!(ledger.get(&parts as &dyn LedgerKey), ledger.get(account));
            }
        }
    }

    #[test]
    fn kind_codes_round_trip() {
        for kind in [ConsumerPoints, MerchantClearing, Retailer, Distributor, Owner] {
            assert_eq!(kind_of_code(kind_code(kind)), Some(kind));
        }
        assert_eq!(kind_of_code(5), None);
    }
}
