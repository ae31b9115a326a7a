//! Voucher state: the status of every voucher, the seed's three sets, how many vouchers
//! are in each status and the expiry index that drives the timeout sweeper.
//!
//! The rows and the points holds are the state; the expiry index and the status counts are
//! a function of the rows (the store rebuilds them at load, `index_row`), so the projection store persists
//! rows and holds only (the holds' index by voucher is rebuilt from them too; how it keeps
//! them: `format`). The rows are a `rows::Rows`: in memory for replays and audits,
//! cold in the projection store for a store-backed `Live` (only the rows changed since the
//! last commit stay in memory), so the engine's memory does not grow with the number of
//! vouchers. The expiry index holds Pending vouchers only and the holds unsettled points,
//! both live work rather than history. There is no index by merchant: nothing on the hot
//! path asks, and one would grow with every voucher (`by_merchant` scans instead).
//! Which rows and holds changed is noted for the store.

use crate::rows::{Rows, Touched};
use engine::domain::event::Event;
use engine::domain::voucher::{PurchaseSet, VoucherStatus};
use engine::ids::{AccountId, MerchantId, Millis, VoucherId};
use format::{LapseKey, LapseRows, VoucherRows};
use std::collections::{BTreeMap, BTreeSet};

pub(crate) mod format;

/// A points hold: its expiry, the account and the voucher it pays for.
pub type Hold = (Millis, AccountId, VoucherId);

/// How many statuses there are (`VoucherStatus`), for the per-status counts.
const STATUSES: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherRow {
    pub merchant: MerchantId,
    pub status: VoucherStatus,
    /// When the row's current window ends: the reservation's expiry while Pending, the
    /// access window's once issued.
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
    /// Issued vouchers (and those being redeemed) by the end of their access window: the
    /// sweeper lapses them so their node's slot comes back. Rows, so that in a store they
    /// are in sled (a voucher stays issued for its whole access window, so this grows with
    /// the vouchers sold), read in key order, which is window order (`LapseKey`).
    pub(crate) lapsing: Rows<LapseRows>,
    /// Points held and not yet posted or released, by expiry time.
    pub holds: BTreeSet<Hold>,
    /// The same holds by voucher (each with its expiry and account): HoldPosted and
    /// HoldReleased name a hold by account and voucher only, and `holds` is ordered by
    /// expiry, so without this they would scan every hold (holds left by interrupted sagas
    /// stay until the sweeper settles them, so there can be many). A function of `holds`
    /// (`hold_index_of`), changed with it in `hold` and `settle`, each list in `holds`'
    /// order, so that it is the same however it was built (the store rebuilds it).
    holds_by_voucher: BTreeMap<VoucherId, Vec<(Millis, AccountId)>>,
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
        VoucherStatus::Refunded => 7,
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
                // the rows, which is what lets the store persist rows only. The indexes need
                // only the row's status and expiry, so the row itself moves into the rows.
                let (status, expires_at) = (row.status, row.expires_at);
                if let Some(old) = self.vouchers.insert(voucher_id.clone(), row) {
                    self.unindex(voucher_id, old.status, old.expires_at);
                }
                self.index(voucher_id, status, expires_at);
            }
            Event::Authorized { voucher_id, .. } => self.set_status(voucher_id, VoucherStatus::Authorized),
            Event::PointsHeld { account_id, voucher_id, expires_at, .. } => self.hold(*expires_at, account_id, voucher_id),
            Event::HoldPosted { account_id, voucher_id, .. } | Event::HoldReleased { account_id, voucher_id, .. } => self.settle(account_id, voucher_id),
            Event::Voided { voucher_id, .. } => self.set_status(voucher_id, VoucherStatus::Voided),
            Event::Refunded { voucher_id, .. } => self.set_status(voucher_id, VoucherStatus::Refunded),
            Event::VoucherIssued { voucher_id, access_expires_at, .. } => {
                // The row's window is now the access window.
                let mut before = None;
                self.vouchers.update(voucher_id, |row| {
                    before = Some((row.status, row.expires_at));
                    row.status = VoucherStatus::Issued;
                    row.expires_at = *access_expires_at;
                });
                if let Some((old, expires_at)) = before {
                    self.unindex(voucher_id, old, expires_at);
                    self.index(voucher_id, VoucherStatus::Issued, *access_expires_at);
                }
            }
            Event::DeliveryFailed { voucher_id, .. } => self.set_status(voucher_id, VoucherStatus::Issued),
            // A rental's play over: paid and unissued again, for its next play.
            Event::AccessLapsed { voucher_id, .. } | Event::RentalPlayEnded { voucher_id, .. } => self.set_status(voucher_id, VoucherStatus::Authorized),
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

    /// Adds a hold to `holds` and to its index.
    fn hold(&mut self, expires_at: Millis, account_id: &AccountId, voucher_id: &VoucherId) {
        let hold = (expires_at, account_id.clone(), voucher_id.clone());
        self.touched_holds.touch(&hold);
        // A repeated PointsHeld (only in a malformed stream) is one hold, in the index too.
        if self.holds.insert(hold) {
            // Kept in `holds`' order, so that the index is the same however it was built.
            let held = self.holds_by_voucher.entry(voucher_id.clone()).or_default();
            let entry = (expires_at, account_id.clone());
            let at = held.binary_search(&entry).unwrap_or_else(|at| at);
            held.insert(at, entry);
        }
    }

    /// Removes every hold of `account_id` for `voucher_id` (whatever its expiry), as the
    /// index finds them: one lookup by voucher, not a scan of every hold.
    fn settle(&mut self, account_id: &AccountId, voucher_id: &VoucherId) {
        let Some(held) = self.holds_by_voucher.get_mut(voucher_id) else { return };
        let mut index = 0;
        while index < held.len() {
            if held[index].1 != *account_id {
                index += 1;
                continue;
            }
            let (expires_at, account) = held.remove(index);
            let hold = (expires_at, account, voucher_id.clone());
            self.holds.remove(&hold);
            self.touched_holds.touch(&hold);
        }
        if held.is_empty() {
            self.holds_by_voucher.remove(voucher_id);
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
        // Issued or under way: the access window can lapse.
        let lapses = |status: VoucherStatus| matches!(status, VoucherStatus::Issued | VoucherStatus::Redeeming);
        // The lapse index is in step with the rows: whether the key is there follows from
        // the old status, so a store need not read it (`insert_absent`, `remove_present`).
        if lapses(old) && !lapses(status) {
            self.lapsing.remove_present(&LapseKey::new(expires_at, voucher_id));
        }
        if lapses(status) && !lapses(old) {
            self.lapsing.insert_absent(LapseKey::new(expires_at, voucher_id), ());
        }
        self.counts[status_index(old)] -= 1;
        self.counts[status_index(status)] += 1;
    }

    /// Adds the entries of a row (its status and expiry) to the indexes and the counts.
    fn index(&mut self, voucher_id: &VoucherId, status: VoucherStatus, expires_at: Millis) {
        if self.index_in_memory(voucher_id, status, expires_at) {
            self.lapsing.insert_absent(LapseKey::new(expires_at, voucher_id), ());
        }
    }

    /// Adds a row to the expiry index and the counts (in memory); whether its access
    /// window can lapse (it belongs in `lapsing`).
    fn index_in_memory(&mut self, voucher_id: &VoucherId, status: VoucherStatus, expires_at: Millis) -> bool {
        self.counts[status_index(status)] += 1;
        if status == VoucherStatus::Pending {
            self.expiry.insert((expires_at, voucher_id.clone()));
        }
        matches!(status, VoucherStatus::Issued | VoucherStatus::Redeeming)
    }

    /// Removes the entries of a row (its status and expiry) from the indexes and the counts.
    fn unindex(&mut self, voucher_id: &VoucherId, status: VoucherStatus, expires_at: Millis) {
        self.counts[status_index(status)] -= 1;
        if status == VoucherStatus::Pending {
            self.expiry.remove(&(expires_at, voucher_id.clone()));
        }
        if matches!(status, VoucherStatus::Issued | VoucherStatus::Redeeming) {
            self.lapsing.remove_present(&LapseKey::new(expires_at, voucher_id));
        }
    }

    /// A book whose rows and lapse index are in the projection store, with the in-memory
    /// indexes the store rebuilt while it checked the rows (`index_row` for each).
    fn stored(vouchers: Rows<VoucherRows>, lapsing: Rows<LapseRows>, indexes: VoucherBook, holds: BTreeSet<Hold>) -> Self {
        VoucherBook { vouchers, lapsing, holds_by_voucher: hold_index_of(&holds), holds, ..indexes }
    }

    /// Adds one stored row to the in-memory indexes only (the store keeps the row and its
    /// lapse row itself); whether the row belongs in the lapse index.
    fn index_row(&mut self, voucher_id: &VoucherId, row: &VoucherRow) -> bool {
        self.index_in_memory(voucher_id, row.status, row.expires_at)
    }

    /// Starts noting changed rows and holds for the projection store.
    pub(crate) fn track_changes(&mut self) {
        self.vouchers.track_changes();
        self.lapsing.track_changes();
        self.touched_holds.start();
    }

    /// Pending reservations whose expiry is before `now`: the sweeper's work list.
    pub fn due(&self, now: Millis, limit: usize) -> Vec<VoucherId> {
        self.expiry.iter().take_while(|(expires_at, _)| *expires_at < now).take(limit).map(|(_, id)| id.clone()).collect()
    }

    /// Issued vouchers whose access window ended before `now`: the sweeper lapses each (its
    /// node's slot comes back; the merchant may issue it anew).
    pub fn due_lapses(&self, now: Millis, limit: usize) -> Vec<VoucherId> {
        self.lapsing.range_from(&LapseKey::FIRST).map(|(key, ())| key).take_while(|key| key.at() < now).take(limit).map(|key| key.voucher()).collect()
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
        let not_delivered =
            [VoucherStatus::Authorized, VoucherStatus::Issued, VoucherStatus::Redeeming].into_iter().map(|status| self.count(status)).sum::<usize>();
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

/// The index of `holds` by voucher (`VoucherBook::holds_by_voucher`), built from scratch.
fn hold_index_of(holds: &BTreeSet<Hold>) -> BTreeMap<VoucherId, Vec<(Millis, AccountId)>> {
    let mut index: BTreeMap<VoucherId, Vec<(Millis, AccountId)>> = BTreeMap::new();
    for (expires_at, account, voucher) in holds {
        index.entry(voucher.clone()).or_default().push((*expires_at, account.clone()));
    }
    index
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
            rental_ms: 0,
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

    fn held(account: &str, voucher: &str, expires_at: i64) -> Event {
        Event::PointsHeld {
            account_id: AccountId::new(account),
            voucher_id: VoucherId::new(voucher),
            amount: 1,
            expires_at: Millis(expires_at),
            nonce_hash: None,
        }
    }

    fn posted(account: &str, voucher: &str) -> Event {
        Event::HoldPosted { account_id: AccountId::new(account), voucher_id: VoucherId::new(voucher), amount: 1 }
    }

    fn released(account: &str, voucher: &str) -> Event {
        Event::HoldReleased { account_id: AccountId::new(account), voucher_id: VoucherId::new(voucher), amount: 1, reason: VoidReason::TimedOut }
    }

    /// What settling meant before the index: every hold of the account for the voucher,
    /// found by a scan of all holds.
    fn settled_by_scan(holds: &mut BTreeSet<Hold>, account: &str, voucher: &str) {
        holds.retain(|(_, a, v)| !(a.as_str() == account && v.as_str() == voucher));
    }

    #[test]
    fn a_hold_is_settled_through_the_index_by_account_and_voucher() {
        let mut book = VoucherBook::default();
        for event in [held("a", "v1", 30), held("a", "v1", 10), held("b", "v1", 20), held("a", "v2", 5), held("a", "v1", 10)] {
            book.apply(&event);
        }
        assert_eq!(book.holds.len(), 4, "the repeated hold is one");
        assert_eq!(book.holds_by_voucher, hold_index_of(&book.holds), "the index is in step, in holds' order");
        book.apply(&posted("a", "v1"));
        let left: Vec<Hold> = book.holds.iter().cloned().collect();
        assert_eq!(
            left,
            vec![(Millis(5), AccountId::new("a"), VoucherId::new("v2")), (Millis(20), AccountId::new("b"), VoucherId::new("v1"))],
            "both of a's holds for v1 went, whatever their expiry"
        );
        book.apply(&released("b", "v1"));
        book.apply(&released("a", "v9"));
        assert_eq!(book.holds.len(), 1);
        assert_eq!(book.holds_by_voucher, hold_index_of(&book.holds));
        assert!(!book.holds_by_voucher.contains_key(&VoucherId::new("v1")), "a voucher without holds leaves the index");
    }

    #[test]
    fn an_index_out_of_step_with_the_holds_would_leave_a_hold_unsettled() {
        // Negative control: the index, not a scan, is what finds a hold to settle, so one
        // out of step with `holds` is visible both to the check the tests use and in the result.
        let mut book = VoucherBook::default();
        book.apply(&held("a", "v1", 10));
        book.holds_by_voucher.clear();
        assert_ne!(book.holds_by_voucher, hold_index_of(&book.holds), "the check sees an index out of step");
        book.apply(&posted("a", "v1"));
        assert_eq!(book.holds.len(), 1, "the hold the index lost is not settled");
    }

    #[test]
    fn a_stored_book_rebuilds_the_hold_index() {
        let mut book = VoucherBook::default();
        for event in [held("b", "v1", 20), held("a", "v1", 20), held("a", "v2", 5), posted("a", "v2"), held("c", "v3", 1)] {
            book.apply(&event);
        }
        let stored = VoucherBook::stored(book.vouchers.clone(), book.lapsing.clone(), VoucherBook::default(), book.holds.clone());
        assert_eq!(stored, book, "the same book, index included, however it was built");
        let mut stored = stored;
        stored.apply(&released("a", "v1"));
        book.apply(&released("a", "v1"));
        assert_eq!(stored.holds, book.holds);
        assert_eq!(stored.holds.len(), 2);
    }

    #[test]
    fn issued_vouchers_lapse_in_window_order() {
        let mut book = VoucherBook::default();
        let node = engine::ids::NodeId::new("n");
        let issued = |id: &str, access: i64| Event::VoucherIssued {
            voucher_id: VoucherId::new(id),
            node_id: node.clone(),
            merchant_id: MerchantId::new("m"),
            media_ids: vec![MediaId::new("md")],
            rendition: "high".into(),
            access_expires_at: Millis(access),
            previous_node: None,
            lease: 0,
        };
        for (id, access) in [("a", 30), ("b", -5), ("c", 10), ("d", 10)] {
            book.apply(&reserved(id, 1));
            let authorized =
                Event::Authorized { voucher_id: VoucherId::new(id), receipt_key_id: 1, receipt_generation: 1, postings: vec![], rental_until: Millis(0) };
            book.apply(&authorized);
            book.apply(&issued(id, access));
        }
        book.apply(&Event::Delivered {
            voucher_id: VoucherId::new("c"),
            node_id: node.clone(),
            media_id: MediaId::new("md"),
            cert_serial: engine::ids::CertSerial::new("c1"),
            content_hash: [0; 32],
            size_bytes: 1,
            voucher_complete: true,
        });
        let ids = |ids: Vec<VoucherId>| ids.into_iter().map(|id| id.0).collect::<Vec<_>>();
        assert_eq!(ids(book.due_lapses(Millis(11), 10)), ["b", "d"], "a delivered voucher does not lapse; a window before 1970 comes first");
        assert_eq!(ids(book.due_lapses(Millis(31), 10)), ["b", "d", "a"]);
        assert_eq!(ids(book.due_lapses(Millis(31), 1)), ["b"]);
        assert!(book.due(Millis(100), 10).is_empty(), "none is pending");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(engine::testing::proptest_seed(module_path!())), ..proptest::test_runner::Config::default() })]

        /// Lapse keys order as (window end, voucher) does, and give both back.
        #[test]
        fn lapse_keys_order_as_their_time_and_voucher(a in (proptest::num::i64::ANY, "[a-z0-9-]{0,6}"), b in (proptest::num::i64::ANY, "[a-z0-9-]{0,6}")) {
            let key = |(at, id): &(i64, String)| LapseKey::new(Millis(*at), &VoucherId::new(id));
            let (ka, kb) = (key(&a), key(&b));
            proptest::prop_assert_eq!(ka.cmp(&kb), (a.0, &a.1).cmp(&(b.0, &b.1)));
            proptest::prop_assert_eq!((ka.at(), ka.voucher()), (Millis(a.0), VoucherId::new(&a.1)));
        }

        /// The index settles exactly the holds a scan of every hold would, and stays a
        /// function of the holds, over any mix of holds, posts and releases.
        #[test]
        fn the_hold_index_settles_what_a_scan_would(ops in proptest::collection::vec((0u8..3, 0u8..3, 0u8..4, 0i64..4), 0..60)) {
            let mut book = VoucherBook::default();
            let mut model: BTreeSet<Hold> = BTreeSet::new();
            for (op, account, voucher, expires_at) in ops {
                let (account, voucher) = (format!("a{account}"), format!("v{voucher}"));
                match op {
                    0 => {
                        book.apply(&held(&account, &voucher, expires_at));
                        model.insert((Millis(expires_at), AccountId::new(&account), VoucherId::new(&voucher)));
                    }
                    1 => {
                        book.apply(&posted(&account, &voucher));
                        settled_by_scan(&mut model, &account, &voucher);
                    }
                    _ => {
                        book.apply(&released(&account, &voucher));
                        settled_by_scan(&mut model, &account, &voucher);
                    }
                }
                proptest::prop_assert_eq!(&book.holds, &model);
                proptest::prop_assert_eq!(&book.holds_by_voucher, &hold_index_of(&book.holds));
            }
        }
    }
}
