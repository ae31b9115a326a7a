//! Voucher state: the status of every voucher, the seed's three sets, lookups by merchant
//! and the expiry index that drives the timeout sweeper.
//!
//! The rows and the points holds are the state; the by-merchant and expiry indexes are a
//! function of the rows (`from_parts` rebuilds them), so the projection store persists
//! rows and holds only. Which rows and holds changed is noted for the store (`Touched`).

use engine::domain::event::Event;
use engine::domain::voucher::{PurchaseSet, VoucherStatus};
use crate::store::Touched;
use engine::ids::{AccountId, MerchantId, Millis, VoucherId};
use std::collections::{BTreeMap, BTreeSet};

/// A points hold: its expiry, the account and the voucher it pays for.
pub type Hold = (Millis, AccountId, VoucherId);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherRow {
    pub merchant: MerchantId,
    pub status: VoucherStatus,
    pub expires_at: Millis,
    pub media_delivered: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VoucherBook {
    pub vouchers: BTreeMap<VoucherId, VoucherRow>,
    by_merchant: BTreeMap<MerchantId, BTreeSet<VoucherId>>,
    /// Pending reservations by expiry time.
    expiry: BTreeSet<(Millis, VoucherId)>,
    /// Points held and not yet posted or released, by expiry time.
    pub holds: BTreeSet<Hold>,
    /// Rows and holds changed since the projection store last committed this book.
    pub(crate) touched_vouchers: Touched<VoucherId>,
    pub(crate) touched_holds: Touched<Hold>,
}

impl VoucherBook {
    /// Feeds every row and hold to the state digest (`Projections::digest`), in a canonical order.
    pub fn digest_into(&self, field: &mut dyn FnMut(&[u8])) {
        field(&(self.vouchers.len() as u64).to_le_bytes());
        for (id, row) in &self.vouchers {
            field(id.0.as_bytes());
            field(row.merchant.0.as_bytes());
            field(row.status.name().as_bytes());
            field(&row.expires_at.0.to_le_bytes());
            field(&row.media_delivered.to_le_bytes());
        }
        field(&(self.holds.len() as u64).to_le_bytes());
        for (expires_at, account, voucher) in &self.holds {
            field(&expires_at.0.to_le_bytes());
            field(account.0.as_bytes());
            field(voucher.0.as_bytes());
        }
    }

    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Reserved { voucher_id, merchant_id, expires_at, .. } => {
                let row = VoucherRow { merchant: merchant_id.clone(), status: VoucherStatus::Pending, expires_at: *expires_at, media_delivered: 0 };
                // A second Reserved for the same voucher (only in a malformed stream) replaces
                // the row; its old index entries go too, so the indexes stay a function of
                // the rows, which is what lets the store persist rows only.
                if let Some(old) = self.vouchers.insert(voucher_id.clone(), row) {
                    self.unindex(voucher_id, &old);
                }
                self.by_merchant.entry(merchant_id.clone()).or_default().insert(voucher_id.clone());
                self.expiry.insert((*expires_at, voucher_id.clone()));
                self.touched_vouchers.touch(voucher_id);
            }
            Event::Authorized { voucher_id, .. } => self.set_status(voucher_id, VoucherStatus::Authorized),
            Event::PointsHeld { account_id, voucher_id, expires_at, .. } => {
                let hold = (*expires_at, account_id.clone(), voucher_id.clone());
                self.touched_holds.touch(&hold);
                self.holds.insert(hold);
            }
            Event::HoldPosted { account_id, voucher_id, .. } | Event::HoldReleased { account_id, voucher_id, .. } => {
                let settled: Vec<Hold> = self.holds.iter().filter(|(_, account, voucher)| account == account_id && voucher == voucher_id).cloned().collect();
                for hold in settled {
                    self.holds.remove(&hold);
                    self.touched_holds.touch(&hold);
                }
            }
            Event::Voided { voucher_id, .. } => self.set_status(voucher_id, VoucherStatus::Voided),
            Event::VoucherIssued { voucher_id, .. } | Event::DeliveryFailed { voucher_id, .. } => self.set_status(voucher_id, VoucherStatus::Issued),
            Event::RedemptionAccepted { voucher_id, .. } => self.set_status(voucher_id, VoucherStatus::Redeeming),
            Event::Delivered { voucher_id, voucher_complete, .. } => {
                if let Some(row) = self.vouchers.get_mut(voucher_id) {
                    row.media_delivered += 1;
                    self.touched_vouchers.touch(voucher_id);
                }
                if *voucher_complete {
                    self.set_status(voucher_id, VoucherStatus::Delivered);
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, voucher_id: &VoucherId, status: VoucherStatus) {
        if let Some(row) = self.vouchers.get_mut(voucher_id) {
            if row.status == VoucherStatus::Pending && status != VoucherStatus::Pending {
                self.expiry.remove(&(row.expires_at, voucher_id.clone()));
            }
            row.status = status;
            self.touched_vouchers.touch(voucher_id);
        }
    }

    /// Removes a row's entries from the by-merchant and expiry indexes.
    fn unindex(&mut self, voucher_id: &VoucherId, row: &VoucherRow) {
        if let Some(vouchers) = self.by_merchant.get_mut(&row.merchant) {
            vouchers.remove(voucher_id);
            if vouchers.is_empty() {
                self.by_merchant.remove(&row.merchant);
            }
        }
        self.expiry.remove(&(row.expires_at, voucher_id.clone()));
    }

    /// A book from its persisted parts (rows and holds), with the indexes rebuilt: a
    /// voucher is listed under its merchant, and in the expiry index while it is Pending.
    pub(crate) fn from_parts(vouchers: BTreeMap<VoucherId, VoucherRow>, holds: BTreeSet<Hold>) -> Self {
        let mut book = VoucherBook { holds, ..VoucherBook::default() };
        for (voucher_id, row) in &vouchers {
            book.by_merchant.entry(row.merchant.clone()).or_default().insert(voucher_id.clone());
            if row.status == VoucherStatus::Pending {
                book.expiry.insert((row.expires_at, voucher_id.clone()));
            }
        }
        book.vouchers = vouchers;
        book
    }

    /// Starts noting changed rows and holds for the projection store.
    pub(crate) fn track_changes(&mut self) {
        self.touched_vouchers.start();
        self.touched_holds.start();
    }

    /// Pending reservations whose expiry is before `now`: the sweeper's work list.
    pub fn due(&self, now: Millis, limit: usize) -> Vec<VoucherId> {
        self.expiry.iter().take_while(|(expires_at, _)| *expires_at < now).take(limit).map(|(_, id)| id.clone()).collect()
    }

    /// Holds past their expiry at `now`: the sweeper settles each against its voucher.
    pub fn due_holds(&self, now: Millis, limit: usize) -> Vec<(AccountId, VoucherId)> {
        self.holds.iter().take_while(|(expires_at, ..)| *expires_at < now).take(limit).map(|(_, a, v)| (a.clone(), v.clone())).collect()
    }

    pub fn by_merchant(&self, merchant: &MerchantId) -> impl Iterator<Item = &VoucherId> {
        self.by_merchant.get(merchant).into_iter().flatten()
    }

    /// How many vouchers are in each of the seed's three sets.
    pub fn set_sizes(&self) -> BTreeMap<PurchaseSet, usize> {
        let mut sizes = BTreeMap::new();
        for row in self.vouchers.values() {
            let set = match row.status {
                VoucherStatus::Pending => PurchaseSet::Pending,
                VoucherStatus::Authorized | VoucherStatus::Issued | VoucherStatus::Redeeming => PurchaseSet::PurchasedNotDelivered,
                VoucherStatus::Delivered => PurchaseSet::Delivered,
                VoucherStatus::None | VoucherStatus::Voided => continue,
            };
            *sizes.entry(set).or_insert(0) += 1;
        }
        sizes
    }

    pub fn count(&self, status: VoucherStatus) -> usize {
        self.vouchers.values().filter(|row| row.status == status).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::domain::event::{Payment, ReservedItem, VoidReason};
    use engine::ids::MediaId;

    fn reserved(id: &str, expires_at: i64) -> Event {
        Event::Reserved {
            voucher_id: VoucherId::new(id),
            merchant_id: MerchantId::new("m"),
            items: vec![ReservedItem { media_id: MediaId::new("md"), price_minor: 1 }],
            rendition: "high".into(),
            price_minor: 1,
            currency: "EUR".into(),
            expires_at: Millis(expires_at),
            payment: Payment::Merchant { payment_ref: "p".into() },
            token_key_id: 1,
            auth_generation: 1,
        }
    }

    #[test]
    fn expiry_index_lists_only_pending_past_due() {
        let mut book = VoucherBook::default();
        book.apply(&reserved("a", 10));
        book.apply(&reserved("b", 20));
        book.apply(&reserved("c", 5));
        book.apply(&Event::Voided { voucher_id: VoucherId::new("c"), reason: VoidReason::Refunded, reversal: vec![] });
        assert_eq!(book.due(Millis(15), 10), vec![VoucherId::new("a")]);
        assert_eq!(book.due(Millis(25), 10), vec![VoucherId::new("a"), VoucherId::new("b")]);
        assert_eq!(book.set_sizes().get(&PurchaseSet::Pending), Some(&2));
        assert_eq!(book.by_merchant(&MerchantId::new("m")).count(), 3);
    }
}
