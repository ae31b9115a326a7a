//! Prepaid points accounts (the DMOD seed), modelled like TigerBeetle's pending
//! transfers: a Reserve paid in points *holds* the price, Authorize *posts* the hold,
//! Void or expiry *releases* it. `available = balance - held` never goes negative, under
//! any interleaving, because every hold is decided on this one aggregate under OCC.

use super::event::{Event, VoidReason};
use super::{Aggregate, AggregateKind, Rejection, validate};
use crate::ids::{AccountId, Millis, VoucherId};
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
    Credit { account: AccountId, amount: u64, reason: String },
    Hold { account: AccountId, voucher: VoucherId, amount: u64, expires_at: Millis },
    Post { voucher: VoucherId },
    Release { voucher: VoucherId, reason: VoidReason },
}

impl Aggregate for Account {
    type Command = AccountCommand;
    const KIND: AggregateKind = AggregateKind::Account;

    fn decide(&self, command: &AccountCommand, _now: Millis) -> Result<Vec<Event>, Rejection> {
        let account_id = || self.id.clone().unwrap_or_else(|| AccountId::new(""));
        match command {
            AccountCommand::Credit { account, amount, reason } => {
                validate::id("account_id", &account.0)?;
                validate::text("reason", reason, 256)?;
                if *amount == 0 || *amount > CREDIT_POINTS_MAX {
                    return Err(Rejection::InvalidArgument { field: "amount", reason: format!("must be 1..={CREDIT_POINTS_MAX}") });
                }
                self.balance.checked_add(*amount).ok_or(Rejection::Overflow)?;
                Ok(vec![Event::PointsCredited { account_id: account.clone(), amount: *amount, reason: reason.clone() }])
            }
            AccountCommand::Hold { account, voucher, amount, expires_at } => {
                validate::id("account_id", &account.0)?;
                if self.held.contains_key(voucher) || self.posted.contains(voucher) {
                    return Ok(vec![]);
                }
                if self.released.contains(voucher) {
                    return Err(Rejection::InvalidTransition { kind: "points hold", command: "Hold", state: "Released" });
                }
                if *amount == 0 {
                    return Err(Rejection::InvalidArgument { field: "amount", reason: "must be positive".into() });
                }
                let available = self.available();
                if *amount > available {
                    return Err(Rejection::InsufficientPoints { available, needed: *amount });
                }
                Ok(vec![Event::PointsHeld { account_id: account.clone(), voucher_id: voucher.clone(), amount: *amount, expires_at: *expires_at }])
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
            Event::PointsHeld { account_id, voucher_id, amount, expires_at } => {
                self.id = Some(account_id.clone());
                self.held.insert(voucher_id.clone(), Hold { amount: *amount, expires_at: *expires_at });
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
