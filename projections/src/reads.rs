//! The read side's indexes: what merchants and the operator ask for (issue 23), kept as
//! events apply, so that a query reads a bounded range of an index and never the stream.
//!
//! - `merchant_vouchers`: each merchant's vouchers, newest first (by the stream sequence
//!   of their `Reserved`). A row is written once, at the reservation, and never moves: a
//!   query filters by status (the voucher book's row) as it walks, reading at most
//!   `VOUCHER_SCAN_MAX` rows per page, and says where to resume.
//! - `catalog`: every published media with what a buyer sees (title, artist, price,
//!   renditions, preview), and whether it is still for sale; searched by title or artist.
//! - `statements`: per merchant and calendar month (UTC), per currency: the royalty-bearing
//!   usage (deliveries, units, refunds: the royalty log's entries, so the figures equal its
//!   totals), the sales settled and reversed, and the settlement postings by account kind
//!   (so that, over every merchant and month, they sum to the ledger).
//! - `parties`: merchants, nodes, auditors and certificates (of consumers and of
//!   duplicators' devices) with their status;
//! - `orders`: each merchant's duplication orders (units placed, bound, completed), newest
//!   first; few (a business-to-business sale), so kept in memory like the catalog;
//! - `credentials`: the merchants', nodes' and auditors' credential hashes and standing,
//!   in memory (they grow only with the operator's registrations), so the engine's front
//!   door checks a credential without reading the stream (issue 21 item 1). Loaded from
//!   the party rows when the store opens.
//!
//! The voucher and party indexes grow with vouchers and consumers, so they are ordered
//! `Rows` (in memory, or cold in the projection store's sled, read in ranges); the catalog
//! and the statements grow with media and merchant-months and stay in memory, as the
//! royalty log's catalog does. How the store keeps them: `format`. None of it feeds the
//! state digest (`Projections::digest`), which pins the decided state; this is a view of
//! it. What is not here: deciding anything, and who may read what (the gateway's).

use crate::rows::{Rows, Touched};
use crate::royalty::{Entry, UsageKind};
use crate::royalty_log::month_of;
use crate::vouchers::VoucherBook;
use engine::domain::event::{Event, LedgerAccountKind, Posting};
use engine::domain::voucher::{PurchaseSet, VoucherStatus};
use engine::ids::{CertSerial, ConsumerId, MediaId, MerchantId, Millis, OrderId, Seq, VoucherId};
use format::{MerchantVoucherRows, PartyRows};
use std::collections::{BTreeMap, HashMap};

pub(crate) mod format;

/// Vouchers a page answers at most.
pub const VOUCHER_PAGE_MAX: usize = 500;
/// Index rows one page of vouchers reads at most (a filter skips rows): a page may come
/// back short, with the cursor to go on from.
pub const VOUCHER_SCAN_MAX: usize = 2_000;
/// Media a catalog page answers at most.
pub const CATALOG_PAGE_MAX: usize = 200;
/// Media one catalog page (or search) looks at, at most.
pub const CATALOG_SCAN_MAX: usize = 5_000;
/// Parties a page answers at most.
pub const PARTY_PAGE_MAX: usize = 500;
/// Orders a page answers at most.
pub const ORDER_PAGE_MAX: usize = 200;
/// The longest cursor a caller may hand back, in bytes.
pub const CURSOR_BYTES_MAX: usize = 256;
/// The longest catalog search text, in characters.
pub const SEARCH_TEXT_CHARS_MAX: usize = 128;

/// An index key whose byte order is the index's order (as sled orders keys).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IndexKey(pub(crate) Vec<u8>);

/// What a buyer sees of a published media.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub title: String,
    pub artist: String,
    pub price_minor: u64,
    pub currency: String,
    pub renditions: Vec<String>,
    /// The free preview clip's length (0: none).
    pub preview_ms: u64,
    pub length_ms: u64,
    pub for_sale: bool,
    pub withdrawn: bool,
}

impl Listing {
    /// On sale now: published for sale and not withdrawn.
    pub fn on_sale(&self) -> bool {
        self.for_sale && !self.withdrawn
    }
}

/// Debits and credits posted to one kind of ledger account, in minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostingTotals {
    pub debit_minor: u64,
    pub credit_minor: u64,
}

impl PostingTotals {
    /// Credits minus debits: what the postings moved into this kind of account.
    pub fn net_minor(&self) -> i128 {
        i128::from(self.credit_minor) - i128::from(self.debit_minor)
    }
}

/// One merchant's month in one currency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatementLine {
    /// Media keys released (the royalty log's deliveries), duplication units bound, and
    /// their royalty-bearing amount: the gross.
    pub deliveries: u64,
    pub units: u64,
    pub gross_minor: u64,
    /// Refund and chargeback adjustments after delivery, and what they took back.
    pub refunds: u64,
    pub refunded_minor: u64,
    /// Sales settled (authorized vouchers, bound units) and what their payers paid.
    pub sales: u64,
    pub sold_minor: u64,
    /// Settled sales voided or refunded (their postings reversed), and the amount.
    pub reversals: u64,
    pub reversed_minor: u64,
    /// Points the merchant sold to consumers.
    pub points_sold: u64,
    /// Every posting of the merchant's sales, reversals and points sold, by account kind.
    pub postings: BTreeMap<LedgerAccountKind, PostingTotals>,
}

impl StatementLine {
    /// The gross less what refunds took back (the royalty totals' net).
    pub fn net_minor(&self) -> i128 {
        i128::from(self.gross_minor) - i128::from(self.refunded_minor)
    }

    fn post(&mut self, postings: &[Posting]) {
        for posting in postings {
            let totals = self.postings.entry(posting.kind).or_default();
            totals.debit_minor = totals.debit_minor.saturating_add(posting.debit_minor);
            totals.credit_minor = totals.credit_minor.saturating_add(posting.credit_minor);
        }
    }
}

/// One merchant's month: previews (no currency) and a line per currency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statement {
    pub previews: u64,
    pub lines: BTreeMap<String, StatementLine>,
}

/// The kinds of party the operator lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartyKind {
    Merchant,
    Node,
    Auditor,
    /// A consumer's certificate, or a duplicator device's (certified the same way).
    Certificate,
    /// A publisher account (its credential publishes media).
    Publisher,
}

impl PartyKind {
    pub const ALL: [PartyKind; 5] = [PartyKind::Merchant, PartyKind::Node, PartyKind::Auditor, PartyKind::Certificate, PartyKind::Publisher];

    pub fn name(self) -> &'static str {
        match self {
            PartyKind::Merchant => "merchant",
            PartyKind::Node => "node",
            PartyKind::Auditor => "auditor",
            PartyKind::Certificate => "certificate",
            PartyKind::Publisher => "publisher",
        }
    }

    pub fn of_name(name: &str) -> Option<PartyKind> {
        PartyKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The first byte of the kind's index keys.
    fn code(self) -> u8 {
        match self {
            PartyKind::Merchant => b'm',
            PartyKind::Node => b'n',
            PartyKind::Auditor => b'a',
            PartyKind::Certificate => b'c',
            PartyKind::Publisher => b'u',
        }
    }

    fn of_code(code: u8) -> Option<PartyKind> {
        PartyKind::ALL.into_iter().find(|kind| kind.code() == code)
    }
}

/// A party as recorded. `status` is "active", "suspended", "drained", "removed" or
/// "revoked"; a certificate past its `not_after` reads as "expired" (`Party::status_at`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartyRow {
    pub name: String,
    pub status: String,
    pub region: String,
    pub slots_max: u32,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// The hash of a merchant's, node's or auditor's credential secret (zeros for a
    /// certificate), never the secret.
    pub credential_hash: [u8; 32],
}

/// A credential as the front door checks it: whose, its hash, and the party's status
/// ("active", "suspended", "drained", "removed", "revoked").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRow {
    pub kind: PartyKind,
    pub credential_hash: [u8; 32],
    pub status: String,
}

/// One party of a page: its kind, id (a certificate's is its serial, with its consumer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    pub kind: PartyKind,
    pub id: String,
    pub consumer_id: String,
    pub row: PartyRow,
}

impl Party {
    /// The status at `now`: a certificate not revoked but past its validity is "expired".
    pub fn status_at(&self, now: Millis) -> &str {
        if self.kind == PartyKind::Certificate && self.row.status == "active" && now.0 > self.row.not_after_ms { "expired" } else { &self.row.status }
    }
}

/// One voucher of a merchant's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherItem {
    pub voucher_id: VoucherId,
    pub status: VoucherStatus,
    /// The stream sequence of its reservation: the list's order (newest first).
    pub reserved_seq: u64,
    /// The end of its current window (the reservation's, then the access window's).
    pub expires_at: Millis,
    pub media_delivered: u32,
}

/// Which of a merchant's vouchers a list shows: every one, a set, a status, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VoucherFilter {
    pub set: Option<PurchaseSet>,
    pub status: Option<VoucherStatus>,
}

impl VoucherFilter {
    fn admits(&self, status: VoucherStatus) -> bool {
        self.set.is_none_or(|set| set_of(status) == Some(set)) && self.status.is_none_or(|wanted| wanted == status)
    }
}

/// The seed's set a status belongs to (none for a voucher voided, refunded or unknown).
pub fn set_of(status: VoucherStatus) -> Option<PurchaseSet> {
    match status {
        VoucherStatus::Pending => Some(PurchaseSet::Pending),
        VoucherStatus::Authorized | VoucherStatus::Issued | VoucherStatus::Redeeming => Some(PurchaseSet::PurchasedNotDelivered),
        VoucherStatus::Delivered => Some(PurchaseSet::Delivered),
        VoucherStatus::None | VoucherStatus::Voided | VoucherStatus::Refunded => None,
    }
}

/// A page of answers: the items, where the next page starts (`None`: nothing follows),
/// and how many rows were read to make it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Vec<u8>>,
    pub scanned: usize,
}

/// A duplication order as its merchant sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRow {
    pub merchant: MerchantId,
    pub media_id: MediaId,
    pub units: u32,
    pub units_bound: u32,
    pub units_completed: u32,
    pub price_per_unit_minor: u64,
    /// Empty for an order placed before units were paid.
    pub currency: String,
    /// The stream sequence of its `OrderPlaced`: the list's order, newest first.
    pub placed_seq: u64,
    pub placed_at_ms: i64,
}

/// The read indexes (module docs).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub(crate) merchant_vouchers: Rows<MerchantVoucherRows>,
    pub orders: BTreeMap<OrderId, OrderRow>,
    /// (merchant, `u64::MAX` - the order's sequence, order): each merchant's orders, newest
    /// first (a function of `orders`, rebuilt at load).
    pub(crate) orders_by_merchant: std::collections::BTreeSet<(MerchantId, u64, OrderId)>,
    pub(crate) touched_orders: Touched<OrderId>,
    pub(crate) parties: Rows<PartyRows>,
    /// Merchants', nodes' and auditors' credentials by id (module docs).
    pub(crate) credentials: HashMap<String, CredentialRow>,
    pub catalog: BTreeMap<MediaId, Listing>,
    /// By (merchant, "YYYY-MM").
    pub statements: BTreeMap<(MerchantId, String), Statement>,
    pub(crate) touched_catalog: Touched<MediaId>,
    pub(crate) touched_statements: Touched<(MerchantId, String)>,
    /// Consumer certificates counted for `admin stats` (a function of the certificate
    /// rows, rebuilt at load).
    pub certificates: CertificateCounts,
}

/// Consumer certificates issued and revoked, and the ones not revoked by the end of their
/// validity, so that those expired at any time are counted without reading every row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateCounts {
    pub issued: u64,
    pub revoked: u64,
    /// Certificates not revoked, by `not_after` (ms): how many end then.
    active_until: BTreeMap<i64, u64>,
}

impl CertificateCounts {
    pub(crate) fn certified(&mut self, not_after_ms: i64) {
        self.issued += 1;
        *self.active_until.entry(not_after_ms).or_default() += 1;
    }

    pub(crate) fn revoked_one(&mut self, not_after_ms: i64) {
        self.revoked += 1;
        if let Some(count) = self.active_until.get_mut(&not_after_ms) {
            *count -= 1;
            if *count == 0 {
                self.active_until.remove(&not_after_ms);
            }
        }
    }

    /// Certificates not revoked whose validity ended before `now_ms`.
    pub fn expired_at(&self, now_ms: i64) -> u64 {
        self.active_until.range(..now_ms).map(|(_, count)| count).sum()
    }
}

/// The key bytes every index key of `merchant`'s vouchers starts with.
fn merchant_prefix(merchant: &MerchantId) -> Vec<u8> {
    let id = merchant.0.as_bytes();
    let mut prefix = Vec::with_capacity(2 + id.len() + 8 + 32);
    prefix.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
    prefix.extend_from_slice(&id[..id.len().min(usize::from(u16::MAX))]);
    prefix
}

/// The index key of a merchant's voucher: newest (highest sequence) first.
fn merchant_voucher_key(merchant: &MerchantId, seq: Seq, voucher: &VoucherId) -> IndexKey {
    let mut key = merchant_prefix(merchant);
    key.extend_from_slice(&(u64::MAX - seq.0).to_be_bytes());
    key.extend_from_slice(voucher.0.as_bytes());
    IndexKey(key)
}

/// The index key of a party; a certificate's names its consumer and serial.
fn party_key(kind: PartyKind, id: &str, serial: Option<&CertSerial>) -> IndexKey {
    let mut key = vec![kind.code()];
    key.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
    key.extend_from_slice(&id.as_bytes()[..id.len().min(usize::from(u16::MAX))]);
    if let Some(serial) = serial {
        key.extend_from_slice(serial.0.as_bytes());
    }
    IndexKey(key)
}

/// (kind, id, serial) of a party key; `None` for bytes no `party_key` makes.
fn parse_party_key(key: &[u8]) -> Option<(PartyKind, String, String)> {
    let (&code, rest) = key.split_first()?;
    let kind = PartyKind::of_code(code)?;
    let length = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let id = String::from_utf8(rest.get(2..2 + length)?.to_vec()).ok()?;
    let serial = String::from_utf8(rest[2 + length..].to_vec()).ok()?;
    Some((kind, id, serial))
}

impl Reads {
    /// Starts noting changes for the projection store.
    pub(crate) fn track_changes(&mut self) {
        self.merchant_vouchers.track_changes();
        self.parties.track_changes();
        self.touched_catalog.start();
        self.touched_statements.start();
        self.touched_orders.start();
    }

    /// Applies one event at stream position `seq`, recorded at `recorded_at_ms`. `sale` is
    /// the (merchant, currency) of the voucher a settlement event (`Authorized`, `Voided`,
    /// `Refunded`) names, as the royalty log recorded its reservation.
    pub fn apply(&mut self, seq: Seq, event: &Event, recorded_at_ms: i64, sale: Option<(&str, &str)>) {
        match event {
            Event::Reserved { voucher_id, merchant_id, .. } => {
                self.merchant_vouchers.insert(merchant_voucher_key(merchant_id, seq, voucher_id), ());
            }
            Event::MediaPublished(media) => {
                let listing = Listing {
                    title: media.title.clone(),
                    artist: media.artist.clone(),
                    price_minor: media.price_minor,
                    currency: media.currency.clone(),
                    renditions: media.renditions.iter().map(|rendition| rendition.name.clone()).collect(),
                    preview_ms: media.preview.duration_ms,
                    length_ms: media.length_ms,
                    for_sale: media.for_sale,
                    withdrawn: false,
                };
                self.catalog.insert(media.media_id.clone(), listing);
                self.touched_catalog.touch(&media.media_id);
            }
            Event::OrderPlaced { order_id, merchant_id, media_id, units, price_per_unit_minor, settles_by } => {
                let row = OrderRow {
                    merchant: merchant_id.clone(),
                    media_id: media_id.clone(),
                    units: *units,
                    units_bound: 0,
                    units_completed: 0,
                    price_per_unit_minor: *price_per_unit_minor,
                    currency: settles_by.as_ref().map(|(currency, _)| currency.clone()).unwrap_or_default(),
                    placed_seq: seq.0,
                    placed_at_ms: recorded_at_ms,
                };
                self.insert_order(order_id.clone(), row);
            }
            Event::UnitCompleted { order_id, .. } => self.order(order_id, |row| row.units_completed = row.units_completed.saturating_add(1)),
            Event::MediaWithdrawn { media_id, .. } => self.listing(media_id, |listing| listing.withdrawn = true),
            Event::PriceChanged { media_id, price_minor } => self.listing(media_id, |listing| listing.price_minor = *price_minor),
            Event::MerchantRegistered { merchant_id, name, credential_hash } => {
                let row = PartyRow { name: name.clone(), status: "active".into(), credential_hash: *credential_hash, ..PartyRow::default() };
                self.register(PartyKind::Merchant, &merchant_id.0, row);
            }
            Event::MerchantSuspended { merchant_id, .. } => self.party_status(PartyKind::Merchant, &merchant_id.0, None, "suspended"),
            Event::MerchantReinstated { merchant_id, .. } => self.party_status(PartyKind::Merchant, &merchant_id.0, None, "active"),
            Event::AuditorRegistered { auditor_id, name, credential_hash } => {
                let row = PartyRow { name: name.clone(), status: "active".into(), credential_hash: *credential_hash, ..PartyRow::default() };
                self.register(PartyKind::Auditor, &auditor_id.0, row);
            }
            Event::AuditorRevoked { auditor_id, .. } => self.party_status(PartyKind::Auditor, &auditor_id.0, None, "revoked"),
            Event::PublisherRegistered { publisher_id, name, credential_hash, .. } => {
                let row = PartyRow { name: name.clone(), status: "active".into(), credential_hash: *credential_hash, ..PartyRow::default() };
                self.register(PartyKind::Publisher, &publisher_id.0, row);
            }
            Event::NodeRegistered { node_id, region, slots_max, credential_hash } => {
                let row = PartyRow {
                    status: "active".into(),
                    region: region.clone(),
                    slots_max: *slots_max,
                    credential_hash: *credential_hash,
                    ..PartyRow::default()
                };
                self.register(PartyKind::Node, &node_id.0, row);
            }
            Event::NodeCapacityChanged { node_id, slots_max } => {
                self.parties.update(&party_key(PartyKind::Node, &node_id.0, None), |row| row.slots_max = *slots_max);
            }
            Event::NodeDrained { node_id } => self.party_status(PartyKind::Node, &node_id.0, None, "drained"),
            Event::NodeRemoved { node_id } => self.party_status(PartyKind::Node, &node_id.0, None, "removed"),
            Event::ConsumerCertified { consumer_id, cert_serial, not_before, not_after, .. } => {
                self.certificates.certified(not_after.0);
                let row = PartyRow { status: "active".into(), not_before_ms: not_before.0, not_after_ms: not_after.0, ..PartyRow::default() };
                self.parties.insert(party_key(PartyKind::Certificate, &consumer_id.0, Some(cert_serial)), row);
            }
            Event::CertRevoked { consumer_id, cert_serial, .. } => {
                let key = party_key(PartyKind::Certificate, &consumer_id.0, Some(cert_serial));
                if let Some(row) = self.parties.get(&key).filter(|row| row.status == "active") {
                    self.certificates.revoked_one(row.not_after_ms);
                }
                self.party_status(PartyKind::Certificate, &consumer_id.0, Some(cert_serial), "revoked");
            }
            Event::Authorized { postings, .. } if !postings.is_empty() => {
                if let Some((merchant, currency)) = sale {
                    self.statement_line(merchant, recorded_at_ms, currency, |line| {
                        line.sales += 1;
                        line.sold_minor = line.sold_minor.saturating_add(postings.iter().map(|p| p.debit_minor).fold(0, u64::saturating_add));
                        line.post(postings);
                    });
                }
            }
            Event::Voided { reversal, .. } | Event::Refunded { reversal, .. } if !reversal.is_empty() => {
                if let Some((merchant, currency)) = sale {
                    self.statement_line(merchant, recorded_at_ms, currency, |line| {
                        line.reversals += 1;
                        line.reversed_minor = line.reversed_minor.saturating_add(reversal.iter().map(|p| p.debit_minor).fold(0, u64::saturating_add));
                        line.post(reversal);
                    });
                }
            }
            Event::UnitBound { order_id, charge, .. } => {
                self.order(order_id, |row| row.units_bound = row.units_bound.saturating_add(1));
                if let Some(charge) = charge {
                    self.statement_line(&charge.merchant.0, recorded_at_ms, &charge.currency, |line| {
                        line.sales += 1;
                        line.sold_minor = line.sold_minor.saturating_add(charge.price_minor);
                        line.post(&charge.postings);
                    });
                }
            }
            Event::PointsCredited { amount, sale: Some(points_sale), .. } => {
                self.statement_line(&points_sale.merchant.0, recorded_at_ms, &points_sale.currency, |line| {
                    line.points_sold = line.points_sold.saturating_add(*amount);
                    line.post(&points_sale.postings);
                });
            }
            _ => {}
        }
    }

    /// Counts one royalty entry in its merchant's statement (the royalty log's usage, so
    /// that statements and totals agree entry for entry).
    pub fn count_usage(&mut self, entry: &Entry) {
        if entry.merchant.is_empty() {
            return;
        }
        let key = (MerchantId(entry.merchant.clone()), month_of(entry.timestamp_ms));
        self.touched_statements.touch(&key);
        let statement = self.statements.entry(key).or_default();
        if entry.kind == UsageKind::Preview {
            statement.previews += 1;
            return;
        }
        let line = statement.lines.entry(entry.currency.clone()).or_default();
        let amount = entry.sale_price_minor;
        match entry.kind {
            UsageKind::Delivery => {
                line.deliveries += 1;
                line.gross_minor = line.gross_minor.saturating_add(amount);
            }
            UsageKind::Duplication => {
                line.units += 1;
                line.gross_minor = line.gross_minor.saturating_add(amount);
            }
            UsageKind::Refund | UsageKind::Chargeback => {
                line.refunds += 1;
                line.refunded_minor = line.refunded_minor.saturating_add(amount);
            }
            UsageKind::Preview => {}
        }
    }

    fn listing(&mut self, media_id: &MediaId, change: impl FnOnce(&mut Listing)) {
        if let Some(listing) = self.catalog.get_mut(media_id) {
            change(listing);
            self.touched_catalog.touch(media_id);
        }
    }

    fn party_status(&mut self, kind: PartyKind, id: &str, serial: Option<&CertSerial>, status: &str) {
        self.parties.update(&party_key(kind, id, serial), |row| row.status = status.to_string());
        if let Some(credential) = self.credentials.get_mut(id).filter(|credential| credential.kind == kind) {
            credential.status = status.to_string();
        }
    }

    /// A merchant, node or auditor registered: its party row and its credential.
    fn register(&mut self, kind: PartyKind, id: &str, row: PartyRow) {
        self.credentials.insert(id.to_string(), CredentialRow { kind, credential_hash: row.credential_hash, status: row.status.clone() });
        self.parties.insert(party_key(kind, id, None), row);
    }

    /// The credential of the merchant, node or auditor `id`, if one was registered. An
    /// in-memory look-up: no stream read, nothing cached for an id that does not exist.
    pub fn credential(&self, id: &str) -> Option<&CredentialRow> {
        self.credentials.get(id)
    }

    /// Credentials known (merchants, nodes and auditors registered).
    pub fn credentials_len(&self) -> usize {
        self.credentials.len()
    }

    fn statement_line(&mut self, merchant: &str, recorded_at_ms: i64, currency: &str, change: impl FnOnce(&mut StatementLine)) {
        if merchant.is_empty() {
            return;
        }
        let key = (MerchantId(merchant.to_string()), month_of(recorded_at_ms));
        self.touched_statements.touch(&key);
        change(self.statements.entry(key).or_default().lines.entry(currency.to_string()).or_default());
    }

    // ---- queries: each reads a bounded range ----

    /// A page of `merchant`'s vouchers, newest first, that `filter` admits, from `after`
    /// (a `next` this merchant's earlier page gave; `None`: the newest). At most `limit`
    /// (≤ `VOUCHER_PAGE_MAX`) items, at most `VOUCHER_SCAN_MAX` rows read: `next` says
    /// where to go on whenever rows remain. Only `merchant`'s index range is read, so a
    /// cursor cannot reach another merchant's vouchers.
    pub fn vouchers_of(&self, book: &VoucherBook, merchant: &MerchantId, filter: VoucherFilter, after: Option<&[u8]>, limit: usize) -> Page<VoucherItem> {
        let limit = limit.clamp(1, VOUCHER_PAGE_MAX);
        let prefix = merchant_prefix(merchant);
        let start = IndexKey([prefix.as_slice(), after.unwrap_or_default()].concat());
        let mut page = Page { items: Vec::new(), next: None, scanned: 0 };
        for (key, ()) in self.merchant_vouchers.range_from(&start) {
            let Some(suffix) = key.0.strip_prefix(prefix.as_slice()) else { break };
            if page.items.len() == limit || page.scanned == VOUCHER_SCAN_MAX {
                page.next = Some(suffix.to_vec());
                break;
            }
            page.scanned += 1;
            let Some((seq, voucher)) = suffix.split_first_chunk::<8>() else { continue };
            let Ok(voucher) = String::from_utf8(voucher.to_vec()) else { continue };
            let voucher_id = VoucherId(voucher);
            let Some(row) = book.vouchers.get(&voucher_id) else { continue };
            if filter.admits(row.status) {
                page.items.push(VoucherItem {
                    reserved_seq: u64::MAX - u64::from_be_bytes(*seq),
                    voucher_id,
                    status: row.status,
                    expires_at: row.expires_at,
                    media_delivered: row.media_delivered,
                });
            }
        }
        page
    }

    /// A page of the media on sale (`Listing::on_sale`), in media id order from `after`,
    /// whose title or artist contains `text` (ignoring case; `None`: every one). At most
    /// `limit` (≤ `CATALOG_PAGE_MAX`) items, at most `CATALOG_SCAN_MAX` media looked at.
    pub fn catalog_page(&self, text: Option<&str>, after: Option<&MediaId>, limit: usize) -> Page<(MediaId, Listing)> {
        let limit = limit.clamp(1, CATALOG_PAGE_MAX);
        let needle = text.map(str::to_lowercase);
        let matches = |listing: &Listing| {
            needle.as_deref().is_none_or(|needle| listing.title.to_lowercase().contains(needle) || listing.artist.to_lowercase().contains(needle))
        };
        let mut page = Page { items: Vec::new(), next: None, scanned: 0 };
        let range: Box<dyn Iterator<Item = (&MediaId, &Listing)>> = match after {
            Some(after) => Box::new(self.catalog.range(after..)),
            None => Box::new(self.catalog.iter()),
        };
        for (media_id, listing) in range {
            if page.items.len() == limit || page.scanned == CATALOG_SCAN_MAX {
                page.next = Some(media_id.0.as_bytes().to_vec());
                break;
            }
            page.scanned += 1;
            if listing.on_sale() && matches(listing) {
                page.items.push((media_id.clone(), listing.clone()));
            }
        }
        page
    }

    /// A page of parties (of `kind`, or every kind: merchants, nodes, auditors, then
    /// certificates), in key order from `after`; at most `limit` (≤ `PARTY_PAGE_MAX`).
    pub fn parties_page(&self, kind: Option<PartyKind>, after: Option<&[u8]>, limit: usize) -> Page<Party> {
        let limit = limit.clamp(1, PARTY_PAGE_MAX);
        let floor = kind.map(|kind| vec![kind.code()]).unwrap_or_default();
        let start = IndexKey(match after {
            Some(after) if after > floor.as_slice() => after.to_vec(),
            _ => floor.clone(),
        });
        let mut page = Page { items: Vec::new(), next: None, scanned: 0 };
        for (key, row) in self.parties.range_from(&start) {
            if !key.0.starts_with(&floor) {
                break;
            }
            if page.items.len() == limit {
                page.next = Some(key.0);
                break;
            }
            page.scanned += 1;
            let Some((kind, id, serial)) = parse_party_key(&key.0) else { continue };
            let party = match kind {
                PartyKind::Certificate => Party { kind, id: serial, consumer_id: id, row },
                _ => Party { kind, id, consumer_id: String::new(), row },
            };
            page.items.push(party);
        }
        page
    }

    /// The statement of `merchant` for `period` ("YYYY-MM"); empty when nothing happened.
    fn insert_order(&mut self, order_id: OrderId, row: OrderRow) {
        if let Some(old) = self.orders.get(&order_id) {
            self.orders_by_merchant.remove(&(old.merchant.clone(), u64::MAX - old.placed_seq, order_id.clone()));
        }
        self.orders_by_merchant.insert((row.merchant.clone(), u64::MAX - row.placed_seq, order_id.clone()));
        self.touched_orders.touch(&order_id);
        self.orders.insert(order_id, row);
    }

    fn order(&mut self, order_id: &OrderId, change: impl FnOnce(&mut OrderRow)) {
        if let Some(row) = self.orders.get_mut(order_id) {
            change(row);
            self.touched_orders.touch(order_id);
        }
    }

    /// `merchant`'s orders, newest first, after the order `after` (a page's last), at most
    /// `limit`; the page's `next` is the last order's id when more follow.
    pub fn orders_of(&self, merchant: &MerchantId, after: Option<&OrderId>, limit: usize) -> Page<(OrderId, OrderRow)> {
        let start = match after.and_then(|order| self.orders.get(order).filter(|row| row.merchant == *merchant).map(|row| (order, row))) {
            Some((order, row)) => std::ops::Bound::Excluded((merchant.clone(), u64::MAX - row.placed_seq, order.clone())),
            None if after.is_some() => return Page { items: Vec::new(), next: None, scanned: 0 },
            None => std::ops::Bound::Included((merchant.clone(), 0, OrderId(String::new()))),
        };
        let mut items: Vec<(OrderId, OrderRow)> = self
            .orders_by_merchant
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(owner, ..)| owner == merchant)
            .take(limit + 1)
            .filter_map(|(_, _, order)| self.orders.get(order).map(|row| (order.clone(), row.clone())))
            .collect();
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(|(order, _)| order.0.as_bytes().to_vec()) } else { None };
        let scanned = items.len() + usize::from(more);
        Page { items, next, scanned }
    }

    pub fn statement(&self, merchant: &MerchantId, period: &str) -> Statement {
        self.statements.get(&(merchant.clone(), period.to_string())).cloned().unwrap_or_default()
    }

    /// Whether `consumer` holds a certificate `serial` (a party lookup, for tests and tools).
    pub fn has_certificate(&self, consumer: &ConsumerId, serial: &CertSerial) -> bool {
        self.parties.contains_key(&party_key(PartyKind::Certificate, &consumer.0, Some(serial)))
    }
}

/// Whether `period` is a calendar month as statements name them: "YYYY-MM", month 01-12.
pub fn is_period(period: &str) -> bool {
    let bytes = period.as_bytes();
    bytes.len() == 7 && bytes[4] == b'-' && bytes[..4].iter().chain(&bytes[5..]).all(u8::is_ascii_digit) && matches!(period[5..].parse::<u8>(), Ok(1..=12))
}

#[cfg(test)]
mod tests;
