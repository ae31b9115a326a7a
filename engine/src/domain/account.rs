//! Prepaid points accounts (the DMOD seed), modelled like TigerBeetle's pending
//! transfers: a Reserve paid in points *holds* the price, Authorize *posts* the hold,
//! Void or expiry *releases* it. `available = balance - held` never goes negative, under
//! any interleaving, because every hold is decided on this one aggregate under OCC.
//!
//! The account is the consumer's (its id is the consumer id), and only the consumer's
//! consent spends it: a hold needs a spend authorization the shell checked against the
//! consumer's certificate (`crate::spend`), naming this account, the merchant, media the
//! purchase covers and a ceiling the price stays under, unexpired and with a nonce no
//! earlier hold used. Refusals name the broken condition, never a balance.

use super::event::{Event, PointsSale, Posting, VoidReason};
use super::voucher::CertCheck;
use super::{Aggregate, AggregateKind, Rejection, validate};
use crate::ids::{AccountId, MediaId, MerchantId, Millis, VoucherId};
use std::collections::{BTreeMap, BTreeSet};

/// Largest single credit, in points.
pub const CREDIT_POINTS_MAX: u64 = 1_000_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub amount: u64,
    pub expires_at: Millis,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub id: Option<AccountId>,
    /// Points credited minus points posted (spent).
    pub balance: u64,
    pub held: BTreeMap<VoucherId, Hold>,
    pub posted: BTreeSet<VoucherId>,
    pub released: BTreeSet<VoucherId>,
    /// Hashes of the spend authorization nonces holds used: each is good once.
    pub used_nonces: BTreeSet<[u8; 32]>,
}

/// A spend authorization as the shell found it: `signature_valid` says whether its
/// signature verified with the key of certificate standing `cert`; the rest is decided here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendConsent {
    pub account: AccountId,
    pub merchant: MerchantId,
    pub amount_max: u64,
    /// Empty: any media.
    pub media: Vec<MediaId>,
    pub nonce_hash: [u8; 32],
    pub expires_at: Millis,
    pub cert: CertCheck,
    pub signature_valid: bool,
}

/// A points sale by a merchant: the currency the consumer paid in (one point per minor unit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seller {
    pub merchant: MerchantId,
    pub currency: String,
}

impl Account {
    pub fn held_total(&self) -> u64 {
        self.held.values().map(|hold| hold.amount).sum()
    }
    /// Points that a new hold may take.
    pub fn available(&self) -> u64 {
        self.balance.saturating_sub(self.held_total())
    }
}

#[derive(Clone, Debug)]
pub enum AccountCommand {
    /// Points for the account: the operator's credit or a refund (`seller: None`), or
    /// points a merchant sold.
    Credit {
        account: AccountId,
        amount: u64,
        reason: String,
        seller: Option<Seller>,
    },
    /// A merchant's reservation of `media` paid in points, with the consumer's consent.
    Hold {
        account: AccountId,
        voucher: VoucherId,
        amount: u64,
        expires_at: Millis,
        merchant: MerchantId,
        media: Vec<MediaId>,
        consent: Option<SpendConsent>,
    },
    Post {
        voucher: VoucherId,
    },
    Release {
        voucher: VoucherId,
        reason: VoidReason,
    },
}

impl Account {
    /// Whether `consent` lets `merchant` hold `amount` points of `account` for `media` at `now`.
    fn check_consent(
        &self,
        consent: &SpendConsent,
        account: &AccountId,
        merchant: &MerchantId,
        media: &[MediaId],
        amount: u64,
        now: Millis,
    ) -> Result<(), Rejection> {
        let refuse = |reason| Err(Rejection::SpendNotAuthorized { reason });
        match consent.cert {
            CertCheck::Valid => {}
            CertCheck::Revoked => return refuse("the certificate that signed the spend authorization is revoked"),
            CertCheck::NotValid => return refuse("the certificate that signed the spend authorization is not valid at this time"),
            CertCheck::Unknown => return refuse("the spend authorization names no certificate of this consumer"),
        }
        if !consent.signature_valid {
            return refuse("the spend authorization's signature does not verify");
        }
        if &consent.account != account {
            return refuse("the spend authorization is for another points account");
        }
        if &consent.merchant != merchant {
            return refuse("the spend authorization is for another merchant");
        }
        if now > consent.expires_at {
            return refuse("the spend authorization expired");
        }
        if !consent.media.is_empty() && media.iter().any(|wanted| !consent.media.contains(wanted)) {
            return refuse("the spend authorization does not cover these media");
        }
        if amount > consent.amount_max {
            return refuse("the price exceeds the amount the spend authorization allows");
        }
        if self.used_nonces.contains(&consent.nonce_hash) {
            return refuse("the spend authorization was already used");
        }
        Ok(())
    }
}

impl Aggregate for Account {
    type Command = AccountCommand;
    const KIND: AggregateKind = AggregateKind::Account;

    fn decide(&self, command: &AccountCommand, now: Millis) -> Result<Vec<Event>, Rejection> {
        let account_id = || self.id.clone().unwrap_or_else(|| AccountId::new(""));
        match command {
            AccountCommand::Credit { account, amount, reason, seller } => {
                validate::id("account_id", &account.0)?;
                validate::text("reason", reason, 256)?;
                if *amount == 0 || *amount > CREDIT_POINTS_MAX {
                    return Err(Rejection::InvalidArgument { field: "amount", reason: format!("must be 1..={CREDIT_POINTS_MAX}") });
                }
                self.balance.checked_add(*amount).ok_or(Rejection::Overflow)?;
                let sale = match seller {
                    None => None,
                    Some(Seller { merchant, currency }) => {
                        validate::currency(currency)?;
                        let postings = vec![
                            Posting {
                                kind: super::event::LedgerAccountKind::MerchantClearing,
                                account: merchant.0.clone(),
                                debit_minor: *amount,
                                credit_minor: 0,
                            },
                            Posting {
                                kind: super::event::LedgerAccountKind::ConsumerPoints,
                                account: account.0.clone(),
                                debit_minor: 0,
                                credit_minor: *amount,
                            },
                        ];
                        Some(PointsSale { merchant: merchant.clone(), currency: currency.clone(), postings })
                    }
                };
                Ok(vec![Event::PointsCredited { account_id: account.clone(), amount: *amount, reason: reason.clone(), sale }])
            }
            AccountCommand::Hold { account, voucher, amount, expires_at, merchant, media, consent } => {
                validate::id("account_id", &account.0)?;
                // A retry of the merchant's own reservation (voucher ids are per merchant
                // and request): already held, nothing more to decide.
                if self.held.contains_key(voucher) || self.posted.contains(voucher) {
                    return Ok(vec![]);
                }
                if self.released.contains(voucher) {
                    return Err(Rejection::InvalidTransition { kind: "points hold", command: "Hold", state: "Released" });
                }
                if *amount == 0 {
                    return Err(Rejection::InvalidArgument { field: "amount", reason: "must be positive".into() });
                }
                let consent = consent.as_ref().ok_or(Rejection::SpendNotAuthorized { reason: "a points purchase needs the consumer's spend authorization" })?;
                self.check_consent(consent, account, merchant, media, *amount, now)?;
                if *amount > self.available() {
                    return Err(Rejection::InsufficientPoints);
                }
                Ok(vec![Event::PointsHeld {
                    account_id: account.clone(),
                    voucher_id: voucher.clone(),
                    amount: *amount,
                    expires_at: *expires_at,
                    nonce_hash: Some(consent.nonce_hash),
                }])
            }
            AccountCommand::Post { voucher } => {
                if self.posted.contains(voucher) {
                    return Ok(vec![]);
                }
                let hold = self.held.get(voucher).ok_or(Rejection::NoSuchHold)?;
                Ok(vec![Event::HoldPosted { account_id: account_id(), voucher_id: voucher.clone(), amount: hold.amount }])
            }
            AccountCommand::Release { voucher, reason } => {
                if self.released.contains(voucher) {
                    return Ok(vec![]);
                }
                if self.posted.contains(voucher) {
                    return Err(Rejection::InvalidTransition { kind: "points hold", command: "Release", state: "Posted" });
                }
                let hold = self.held.get(voucher).ok_or(Rejection::NoSuchHold)?;
                Ok(vec![Event::HoldReleased { account_id: account_id(), voucher_id: voucher.clone(), amount: hold.amount, reason: *reason }])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::PointsCredited { account_id, amount, .. } => {
                self.id = Some(account_id.clone());
                self.balance = self.balance.saturating_add(*amount);
            }
            Event::PointsHeld { account_id, voucher_id, amount, expires_at, nonce_hash } => {
                self.id = Some(account_id.clone());
                self.held.insert(voucher_id.clone(), Hold { amount: *amount, expires_at: *expires_at });
                if let Some(nonce_hash) = nonce_hash {
                    self.used_nonces.insert(*nonce_hash);
                }
            }
            Event::HoldPosted { voucher_id, amount, .. } => {
                self.held.remove(voucher_id);
                self.posted.insert(voucher_id.clone());
                self.balance = self.balance.saturating_sub(*amount);
            }
            Event::HoldReleased { voucher_id, .. } => {
                self.held.remove(voucher_id);
                self.released.insert(voucher_id.clone());
            }
            _ => {}
        }
        self
    }

    fn command_name(command: &AccountCommand) -> &'static str {
        match command {
            AccountCommand::Credit { .. } => "CreditPoints",
            AccountCommand::Hold { .. } => "HoldPoints",
            AccountCommand::Post { .. } => "PostHold",
            AccountCommand::Release { .. } => "ReleaseHold",
        }
    }
}
