//! The read indexes' storage format in the projection store: the one conversion of their
//! rows to and from bytes, what a commit writes of changed indexes, and how the store reads
//! them back.
//!
//! Keys:
//! - `qv/` merchant voucher index key (`u16` length ‖ merchant ‖ `u64::MAX - seq` ‖
//!   voucher, big-endian) → empty (`MerchantVoucherRows`, ordered, cold in sled);
//! - `qp/` party key (kind byte ‖ `u16` length ‖ id ‖ serial) → JSON `PartyRecord`
//!   (`PartyRows`, ordered, cold in sled);
//! - `qc/` media → JSON `ListingRecord`;
//! - `qs/` JSON (merchant, period) → JSON `StatementRecord`;
//! - `qo/` order → JSON `OrderRecord`.
//!
//! What is not here: the store's checks of the state as a whole (`store`).

use super::{CredentialRow, IndexKey, Listing, OrderRow, PartyKind, PartyRow, PostingTotals, Reads, Statement, StatementLine};
use crate::balances::{kind_code, kind_of_code};
use crate::rows::{Prefix, RowError, RowKind, RowWrite, Rows, decode_json, json, key, utf8};
use engine::ids::{MediaId, MerchantId, OrderId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub(crate) const MERCHANT_VOUCHER_PREFIX: &Prefix = b"qv/";
pub(crate) const PARTY_PREFIX: &Prefix = b"qp/";
pub(crate) const LISTING_PREFIX: &Prefix = b"qc/";
pub(crate) const STATEMENT_PREFIX: &Prefix = b"qs/";
pub(crate) const ORDER_PREFIX: &Prefix = b"qo/";

#[derive(Serialize, Deserialize)]
struct OrderRecord {
    merchant: String,
    media_id: String,
    units: u32,
    units_bound: u32,
    units_completed: u32,
    price_per_unit_minor: u64,
    currency: String,
    placed_seq: u64,
    placed_at_ms: i64,
}

fn order_value(row: &OrderRow) -> Result<Vec<u8>, RowError> {
    let record = OrderRecord {
        merchant: row.merchant.0.clone(),
        media_id: row.media_id.0.clone(),
        units: row.units,
        units_bound: row.units_bound,
        units_completed: row.units_completed,
        price_per_unit_minor: row.price_per_unit_minor,
        currency: row.currency.clone(),
        placed_seq: row.placed_seq,
        placed_at_ms: row.placed_at_ms,
    };
    json(&record, "order")
}

fn order_of(record: OrderRecord) -> OrderRow {
    OrderRow {
        merchant: MerchantId(record.merchant),
        media_id: MediaId(record.media_id),
        units: record.units,
        units_bound: record.units_bound,
        units_completed: record.units_completed,
        price_per_unit_minor: record.price_per_unit_minor,
        currency: record.currency,
        placed_seq: record.placed_seq,
        placed_at_ms: record.placed_at_ms,
    }
}

/// Each merchant's vouchers, newest first: `qv/` index key → empty.
#[derive(Debug)]
pub enum MerchantVoucherRows {}

/// Parties: `qp/` party key → JSON `PartyRecord`.
#[derive(Debug)]
pub enum PartyRows {}

impl RowKind for MerchantVoucherRows {
    type Key = IndexKey;
    type Value = ();
    const PREFIX: &'static Prefix = MERCHANT_VOUCHER_PREFIX;
    const ORDERED: bool = true;
    fn key_bytes(key: &IndexKey) -> &[u8] {
        &key.0
    }
    fn key_of(id: &[u8]) -> Result<IndexKey, RowError> {
        Ok(IndexKey(id.to_vec()))
    }
    fn encode(_: &()) -> Result<Vec<u8>, RowError> {
        Ok(Vec::new())
    }
    fn decode(key: &IndexKey, bytes: &[u8]) -> Result<(), RowError> {
        if bytes.is_empty() { Ok(()) } else { Err(RowError::Value { kind: "merchant voucher index row", id: hex::encode(&key.0) }) }
    }
}

#[derive(Serialize, Deserialize)]
struct PartyRecord {
    name: String,
    status: String,
    region: String,
    slots_max: u32,
    not_before_ms: i64,
    not_after_ms: i64,
    #[serde(with = "crate::serde_hex::hex_array")]
    credential_hash: [u8; 32],
}

impl RowKind for PartyRows {
    type Key = IndexKey;
    type Value = PartyRow;
    const PREFIX: &'static Prefix = PARTY_PREFIX;
    const ORDERED: bool = true;
    fn key_bytes(key: &IndexKey) -> &[u8] {
        &key.0
    }
    fn key_of(id: &[u8]) -> Result<IndexKey, RowError> {
        Ok(IndexKey(id.to_vec()))
    }
    fn encode(row: &PartyRow) -> Result<Vec<u8>, RowError> {
        let record = PartyRecord {
            name: row.name.clone(),
            status: row.status.clone(),
            region: row.region.clone(),
            slots_max: row.slots_max,
            not_before_ms: row.not_before_ms,
            not_after_ms: row.not_after_ms,
            credential_hash: row.credential_hash,
        };
        json(&record, "party")
    }
    fn decode(key: &IndexKey, bytes: &[u8]) -> Result<PartyRow, RowError> {
        let record: PartyRecord = decode_json(bytes, "party", &hex::encode(&key.0))?;
        Ok(PartyRow {
            name: record.name,
            status: record.status,
            region: record.region,
            slots_max: record.slots_max,
            not_before_ms: record.not_before_ms,
            not_after_ms: record.not_after_ms,
            credential_hash: record.credential_hash,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct ListingRecord {
    title: String,
    artist: String,
    price_minor: u64,
    currency: String,
    renditions: Vec<String>,
    preview_ms: u64,
    length_ms: u64,
    for_sale: bool,
    withdrawn: bool,
}

#[derive(Serialize, Deserialize)]
struct LineRecord {
    currency: String,
    deliveries: u64,
    units: u64,
    gross_minor: u64,
    refunds: u64,
    refunded_minor: u64,
    sales: u64,
    sold_minor: u64,
    reversals: u64,
    reversed_minor: u64,
    points_sold: u64,
    /// (kind code, debit, credit).
    postings: Vec<(u8, u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct StatementRecord {
    previews: u64,
    lines: Vec<LineRecord>,
}

fn listing_value(listing: &Listing) -> Result<Vec<u8>, RowError> {
    let record = ListingRecord {
        title: listing.title.clone(),
        artist: listing.artist.clone(),
        price_minor: listing.price_minor,
        currency: listing.currency.clone(),
        renditions: listing.renditions.clone(),
        preview_ms: listing.preview_ms,
        length_ms: listing.length_ms,
        for_sale: listing.for_sale,
        withdrawn: listing.withdrawn,
    };
    json(&record, "catalog listing")
}

fn statement_key(merchant: &MerchantId, period: &str) -> Result<Vec<u8>, RowError> {
    Ok(key(STATEMENT_PREFIX, &json(&(&merchant.0, period), "statement key")?))
}

fn statement_value(statement: &Statement) -> Result<Vec<u8>, RowError> {
    let lines = statement
        .lines
        .iter()
        .map(|(currency, line)| LineRecord {
            currency: currency.clone(),
            deliveries: line.deliveries,
            units: line.units,
            gross_minor: line.gross_minor,
            refunds: line.refunds,
            refunded_minor: line.refunded_minor,
            sales: line.sales,
            sold_minor: line.sold_minor,
            reversals: line.reversals,
            reversed_minor: line.reversed_minor,
            points_sold: line.points_sold,
            postings: line.postings.iter().map(|(kind, totals)| (kind_code(*kind), totals.debit_minor, totals.credit_minor)).collect(),
        })
        .collect();
    json(&StatementRecord { previews: statement.previews, lines }, "statement")
}

fn statement_of(record: StatementRecord, id: &str) -> Result<Statement, RowError> {
    let mut lines = BTreeMap::new();
    for line in record.lines {
        let mut postings = BTreeMap::new();
        for (code, debit_minor, credit_minor) in line.postings {
            let kind = kind_of_code(code).ok_or_else(|| RowError::Unknown { kind: "statement", id: id.to_string(), field: "kind", value: code.to_string() })?;
            postings.insert(kind, PostingTotals { debit_minor, credit_minor });
        }
        let statement_line = StatementLine {
            deliveries: line.deliveries,
            units: line.units,
            gross_minor: line.gross_minor,
            refunds: line.refunds,
            refunded_minor: line.refunded_minor,
            sales: line.sales,
            sold_minor: line.sold_minor,
            reversals: line.reversals,
            reversed_minor: line.reversed_minor,
            points_sold: line.points_sold,
            postings,
        };
        lines.insert(line.currency, statement_line);
    }
    Ok(Statement { previews: record.previews, lines })
}

/// One changed row, copied out of the indexes under the projections' lock.
pub(crate) enum Change {
    Voucher(IndexKey, Option<()>),
    Party(IndexKey, Option<PartyRow>),
    Listing(MediaId, Option<Listing>),
    Statement((MerchantId, String), Option<Statement>),
    Order(OrderId, Option<OrderRow>),
}

impl Change {
    /// The key and value to store: encoded here, outside the projections' lock.
    pub(crate) fn write(self) -> Result<RowWrite, RowError> {
        Ok(match self {
            Change::Voucher(id, row) => RowWrite::present_or_remove(key(MERCHANT_VOUCHER_PREFIX, &id.0), row.is_some()),
            Change::Party(id, row) => RowWrite::put_or_remove(key(PARTY_PREFIX, &id.0), row.as_ref().map(PartyRows::encode).transpose()?),
            Change::Listing(id, listing) => RowWrite::put_or_remove(key(LISTING_PREFIX, id.0.as_bytes()), listing.as_ref().map(listing_value).transpose()?),
            Change::Statement((merchant, period), statement) => {
                RowWrite::put_or_remove(statement_key(&merchant, &period)?, statement.as_ref().map(statement_value).transpose()?)
            }
            Change::Order(id, row) => RowWrite::put_or_remove(key(ORDER_PREFIX, id.0.as_bytes()), row.as_ref().map(order_value).transpose()?),
        })
    }
}

impl Reads {
    /// What changed since the last call, copied (no encoding, no I/O), for a commit.
    pub(crate) fn take_changes(&mut self) -> Result<Vec<Change>, Arc<RowError>> {
        let mut changes: Vec<Change> = self.merchant_vouchers.take_changes()?.into_iter().map(|(id, row)| Change::Voucher(id, row)).collect();
        changes.extend(self.parties.take_changes()?.into_iter().map(|(id, row)| Change::Party(id, row)));
        for id in self.touched_catalog.take() {
            let listing = self.catalog.get(&id).cloned();
            changes.push(Change::Listing(id, listing));
        }
        for id in self.touched_statements.take() {
            let statement = self.statements.get(&id).cloned();
            changes.push(Change::Statement(id, statement));
        }
        for id in self.touched_orders.take() {
            let row = self.orders.get(&id).cloned();
            changes.push(Change::Order(id, row));
        }
        Ok(changes)
    }

    /// The batch `take_changes` took is stored: its rows leave memory.
    pub(crate) fn rows_committed(&mut self) {
        self.merchant_vouchers.rows_committed();
        self.parties.rows_committed();
    }

    /// After the whole state was committed (a rebuild): its rows leave memory.
    pub(crate) fn spill(&mut self, db: &sled::Db) {
        self.merchant_vouchers.spill(db);
        self.parties.spill(db);
    }
}

/// The indexes as the store reads them back, pair by pair: the ordered rows are checked
/// and counted (they stay in sled), the catalog and statements collected.
#[derive(Default)]
pub(crate) struct Reader {
    vouchers: usize,
    parties: usize,
    certificates: super::CertificateCounts,
    credentials: HashMap<String, CredentialRow>,
    catalog: BTreeMap<MediaId, Listing>,
    statements: BTreeMap<(MerchantId, String), Statement>,
    orders: BTreeMap<OrderId, OrderRow>,
}

impl Reader {
    /// Takes one stored pair; `false` when its prefix is not this format's.
    pub(crate) fn read(&mut self, prefix: &[u8], id: &[u8], value: &[u8]) -> Result<bool, RowError> {
        match prefix {
            p if p == MERCHANT_VOUCHER_PREFIX => {
                MerchantVoucherRows::decode(&MerchantVoucherRows::key_of(id)?, value)?;
                self.vouchers += 1;
            }
            p if p == PARTY_PREFIX => {
                let key = PartyRows::key_of(id)?;
                let row = PartyRows::decode(&key, value)?;
                // Merchants', nodes' and auditors' credentials stay in memory (few: the
                // operator registers them); the rows themselves stay cold in sled.
                match super::parse_party_key(&key.0) {
                    Some((PartyKind::Certificate, ..)) => {
                        self.certificates.certified(row.not_after_ms);
                        if row.status != "active" {
                            self.certificates.revoked_one(row.not_after_ms);
                        }
                    }
                    Some((kind, party_id, _)) => {
                        self.credentials.insert(party_id, CredentialRow { kind, credential_hash: row.credential_hash, status: row.status });
                    }
                    None => {}
                }
                self.parties += 1;
            }
            p if p == LISTING_PREFIX => {
                let id = utf8(id, "catalog listing")?;
                let record: ListingRecord = decode_json(value, "catalog listing", &id)?;
                let listing = Listing {
                    title: record.title,
                    artist: record.artist,
                    price_minor: record.price_minor,
                    currency: record.currency,
                    renditions: record.renditions,
                    preview_ms: record.preview_ms,
                    length_ms: record.length_ms,
                    for_sale: record.for_sale,
                    withdrawn: record.withdrawn,
                };
                self.catalog.insert(MediaId(id), listing);
            }
            p if p == STATEMENT_PREFIX => {
                let (merchant, period): (String, String) = decode_json(id, "statement", "key")?;
                let name = format!("{merchant}/{period}");
                let record: StatementRecord = decode_json(value, "statement", &name)?;
                self.statements.insert((MerchantId(merchant), period), statement_of(record, &name)?);
            }
            p if p == ORDER_PREFIX => {
                let id = utf8(id, "order")?;
                let record: OrderRecord = decode_json(value, "order", &id)?;
                self.orders.insert(OrderId(id), order_of(record));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The indexes, their ordered rows left in `db`.
    pub(crate) fn finish(self, db: &sled::Db) -> Reads {
        Reads {
            merchant_vouchers: Rows::stored(db.clone(), self.vouchers),
            parties: Rows::stored(db.clone(), self.parties),
            orders_by_merchant: self.orders.iter().map(|(id, row)| (row.merchant.clone(), u64::MAX - row.placed_seq, id.clone())).collect(),
            credentials: self.credentials,
            certificates: self.certificates,
            catalog: self.catalog,
            statements: self.statements,
            orders: self.orders,
            ..Reads::default()
        }
    }
}
