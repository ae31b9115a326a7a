//! Voucher state: the status of every voucher, the seed's three sets, how many vouchers
//! are in each status and the expiry index that drives the timeout sweeper.
//!
//! The rows and the points holds are the state; the expiry index and the status counts are
//! a function of the rows (the store rebuilds them at load, `index_row`), so the projection store persists
//! rows and holds only. The rows are a `store::Rows`: in memory for replays and audits,
//! cold in the projection store for a store-backed `Live` (only the rows changed since the
//! last commit stay in memory), so the engine's memory does not grow with the number of
//! vouchers. The expiry index holds Pending vouchers only and the holds unsettled points,
//! both live work rather than history. There is no index by merchant: nothing on the hot
//! path asks, and one would grow with every voucher (`by_merchant` scans instead).
//! Which rows and holds changed is noted for the store.

use engine::domain::event::Event;
use engine::domain::voucher::{PurchaseSet, VoucherStatus};
use crate::store::{Rows, Touched, VoucherRows};
use engine::ids::{AccountId, MerchantId, Millis, VoucherId};
use std::collections::{BTreeMap, BTreeSet};

/// A points hold: its expiry, the account and the voucher it pays for.
pub type Hold = (Millis, AccountId, VoucherId);

/// How many statuses there are (`VoucherStatus`), for the per-status counts.
const STATUSES: usize = 7;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherRow {
    pub merchant: MerchantId,
    pub status: VoucherStatus,
    pub expires_at: Millis,
    pub media_delivered: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VoucherBook {
    pub vouchers: Rows<VoucherRows>,
    /// How many rows are in each status (`status_index`): `count` without a scan.
    counts: [usize; STATUSES],
    /// Pending reservations by expiry time.
    expiry: BTreeSet<(Millis, VoucherId)>,
    /// Points held and not yet posted or released, by expiry time.
    pub holds: BTreeSet<Hold>,
    /// Holds changed since the projection store last committed this book (rows note
    /// their own changes).
    pub(crate) touched_holds: Touched<Hold>,
}

fn status_index(status: VoucherStatus) -> usize {
    match status {
        VoucherStatus::None => 0,
        VoucherStatus::Pending => 1,
        VoucherStatus::Authorized => 2,
        VoucherStatus::Issued => 3,
        VoucherStatus::Redeeming => 4,
        VoucherStatus::Delivered => 5,
        VoucherStatus::Voided => 6,
    }
}

impl VoucherBook {
    /// Feeds every row and hold to the state digest (`Projections::digest`), in a canonical order.
    pub fn digest_into(&self, field: &mut dyn FnMut(&[u8])) {
        field(&(self.vouchers.len() as u64).to_le_bytes());
        for (id, row) in self.vouchers.iter() {
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
                if let Some(old) = self.vouchers.insert(voucher_id.clone(), row.clone()) {
                    self.unindex(voucher_id, &old);
                }
                self.index(voucher_id, &row);
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
                // One change of the row, however many fields change.
                let mut before = None;
                self.vouchers.update(voucher_id, |row| {
                    row.media_delivered += 1;
                    if *voucher_complete {
                        before = Some((row.status, row.expires_at));
                        row.status = VoucherStatus::Delivered;
                    }
                });
                if let Some((old, expires_at)) = before {
                    self.restatused(voucher_id, old, expires_at, VoucherStatus::Delivered);
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, voucher_id: &VoucherId, status: VoucherStatus) {
        let mut before = None;
        self.vouchers.update(voucher_id, |row| {
            before = Some((row.status, row.expires_at));
            row.status = status;
        });
        if let Some((old, expires_at)) = before {
            self.restatused(voucher_id, old, expires_at, status);
        }
    }

    /// Keeps the expiry index and the counts in step with a row whose status went from
    /// `old` to `status`.
    fn restatused(&mut self, voucher_id: &VoucherId, old: VoucherStatus, expires_at: Millis, status: VoucherStatus) {
        if old == VoucherStatus::Pending && status != VoucherStatus::Pending {
            self.expiry.remove(&(expires_at, voucher_id.clone()));
        }
        self.counts[status_index(old)] -= 1;
        self.counts[status_index(status)] += 1;
    }

    /// Adds a row's entries to the expiry index and the counts.
    fn index(&mut self, voucher_id: &VoucherId, row: &VoucherRow) {
        self.counts[status_index(row.status)] += 1;
        if row.status == VoucherStatus::Pending {
            self.expiry.insert((row.expires_at, voucher_id.clone()));
        }
    }

    /// Removes a row's entries from the expiry index and the counts.
    fn unindex(&mut self, voucher_id: &VoucherId, row: &VoucherRow) {
        self.counts[status_index(row.status)] -= 1;
        self.expiry.remove(&(row.expires_at, voucher_id.clone()));
    }

    /// A book whose rows are in the projection store, with the indexes the store rebuilt
    /// while it checked the rows (`index_row` for each).
    pub(crate) fn stored(vouchers: Rows<VoucherRows>, indexes: VoucherBook, holds: BTreeSet<Hold>) -> Self {
        VoucherBook { vouchers, holds, ..indexes }
    }

    /// Adds one stored row to the indexes only (the store keeps the row itself).
    pub(crate) fn index_row(&mut self, voucher_id: &VoucherId, row: &VoucherRow) {
        self.index(voucher_id, row);
    }

    /// Starts noting changed rows and holds for the projection store.
    pub(crate) fn track_changes(&mut self) {
        self.vouchers.track_changes();
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

    /// The vouchers of `merchant`, in id order. A scan of every row (there is no index by
    /// merchant, module docs): for tools and tests, not for the hot path.
    pub fn by_merchant(&self, merchant: &MerchantId) -> Vec<VoucherId> {
        self.vouchers.iter().filter(|(_, row)| row.merchant == *merchant).map(|(id, _)| id).collect()
    }

    /// How many vouchers are in each of the seed's three sets.
    pub fn set_sizes(&self) -> BTreeMap<PurchaseSet, usize> {
        let mut sizes = BTreeMap::new();
        let pending = self.count(VoucherStatus::Pending);
        let not_delivered = [VoucherStatus::Authorized, VoucherStatus::Issued, VoucherStatus::Redeeming].into_iter().map(|status| self.count(status)).sum::<usize>();
        let delivered = self.count(VoucherStatus::Delivered);
        for (set, size) in [(PurchaseSet::Pending, pending), (PurchaseSet::PurchasedNotDelivered, not_delivered), (PurchaseSet::Delivered, delivered)] {
            if size > 0 {
                sizes.insert(set, size);
            }
        }
        sizes
    }

    /// How many vouchers are in `status` (kept as events apply, no scan).
    pub fn count(&self, status: VoucherStatus) -> usize {
        self.counts[status_index(status)]
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
        assert_eq!(book.by_merchant(&MerchantId::new("m")).len(), 3);
    }
}
