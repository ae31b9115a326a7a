//! The voucher book's storage format in the projection store: the one conversion of its
//! rows and holds to and from bytes, what a commit writes of a changed book, and how the
//! store reads a book back.
//!
//! Keys (integers big-endian, as everywhere in the store):
//! - `vr/` voucher → JSON `VoucherRecord` (`VoucherRows`, kept cold in sled by `Rows`);
//! - `vh/` hold, as the JSON tuple (expiry ms, account, voucher) → empty.
//!
//! Not stored: the expiry index, the status counts and the holds' index by voucher, which
//! are functions of the rows and holds and are rebuilt while the store reads them (module
//! docs of `vouchers`). What is not here: the store's checks of the state as a whole and
//! its checkpoint (`store`).

use super::{Hold, VoucherBook, VoucherRow};
use crate::rows::{Prefix, RowError, RowKind, RowWrite, Rows, decode_json, json, key, keyed_by_voucher};
use engine::domain::voucher::VoucherStatus;
use engine::ids::{AccountId, MerchantId, Millis, VoucherId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

pub(crate) const VOUCHER_PREFIX: &Prefix = b"vr/";
pub(crate) const HOLD_PREFIX: &Prefix = b"vh/";

/// Voucher rows: `vr/` voucher → JSON `VoucherRecord`.
#[derive(Debug)]
pub enum VoucherRows {}

#[derive(Serialize, Deserialize)]
struct VoucherRecord {
    merchant: String,
    status: String,
    expires_at_ms: i64,
    media_delivered: u32,
}

impl RowKind for VoucherRows {
    type Value = VoucherRow;
    const PREFIX: &'static Prefix = VOUCHER_PREFIX;
    keyed_by_voucher!();
    fn encode(row: &VoucherRow) -> Result<Vec<u8>, RowError> {
        json(
            &VoucherRecord {
                merchant: row.merchant.0.clone(),
                status: row.status.name().to_owned(),
                expires_at_ms: row.expires_at.0,
                media_delivered: row.media_delivered,
            },
            "voucher row",
        )
    }
    fn decode(key: &VoucherId, bytes: &[u8]) -> Result<VoucherRow, RowError> {
        let record: VoucherRecord = decode_json(bytes, "voucher row", &key.0)?;
        let status = status_of(&record.status).ok_or_else(|| RowError::Unknown {
            kind: "voucher row",
            id: key.0.clone(),
            field: "status",
            value: format!("{:?}", record.status),
        })?;
        Ok(VoucherRow { merchant: MerchantId(record.merchant), status, expires_at: Millis(record.expires_at_ms), media_delivered: record.media_delivered })
    }
}

/// The status a stored name stands for (`VoucherStatus::name`).
fn status_of(name: &str) -> Option<VoucherStatus> {
    [
        VoucherStatus::None,
        VoucherStatus::Pending,
        VoucherStatus::Authorized,
        VoucherStatus::Issued,
        VoucherStatus::Redeeming,
        VoucherStatus::Delivered,
        VoucherStatus::Voided,
        VoucherStatus::Refunded,
    ]
    .into_iter()
    .find(|status| status.name() == name)
}

fn hold_key(hold: &Hold) -> Result<Vec<u8>, RowError> {
    let (expires_at, account, voucher) = hold;
    let id = json(&(expires_at.0, &account.0, &voucher.0), "hold key")?;
    Ok(key(HOLD_PREFIX, &id))
}

/// One changed row or hold, copied out of the book under the projections' lock: the new
/// row (`None`: removed), or whether the hold is still held.
pub(crate) enum Change {
    Row(VoucherId, Option<VoucherRow>),
    Hold(Hold, bool),
}

impl Change {
    /// The key and value to store: encoded here, outside the projections' lock.
    pub(crate) fn write(self) -> Result<RowWrite, RowError> {
        Ok(match self {
            Change::Row(id, row) => RowWrite::put_or_remove(key(VOUCHER_PREFIX, id.0.as_bytes()), row.as_ref().map(VoucherRows::encode).transpose()?),
            Change::Hold(hold, held) => RowWrite::present_or_remove(hold_key(&hold)?, held),
        })
    }
}

impl VoucherBook {
    /// What changed since the last call, copied (no encoding, no I/O), for a commit.
    pub(crate) fn take_changes(&mut self) -> Result<Vec<Change>, Arc<RowError>> {
        let mut changes: Vec<Change> = self.vouchers.take_changes()?.into_iter().map(|(id, row)| Change::Row(id, row)).collect();
        for hold in self.touched_holds.take() {
            let held = self.holds.contains(&hold);
            changes.push(Change::Hold(hold, held));
        }
        Ok(changes)
    }

    /// The batch `take_changes` took is stored: its rows leave memory.
    pub(crate) fn rows_committed(&mut self) {
        self.vouchers.rows_committed();
    }

    /// After the whole book was committed (a rebuild): its rows leave memory.
    pub(crate) fn spill(&mut self, db: &sled::Db) {
        self.vouchers.spill(db);
    }
}

/// A book as the store reads it back, pair by pair: the rows are checked, counted and
/// indexed (they stay in sled), the holds collected.
#[derive(Default)]
pub(crate) struct Reader {
    indexes: VoucherBook,
    rows: usize,
    holds: BTreeSet<Hold>,
}

impl Reader {
    /// Takes one stored pair; `false` when its prefix is not this format's.
    pub(crate) fn read(&mut self, prefix: &[u8], id: &[u8], value: &[u8]) -> Result<bool, RowError> {
        match prefix {
            p if p == VOUCHER_PREFIX => {
                let id = VoucherRows::key_of(id)?;
                let row = VoucherRows::decode(&id, value)?;
                self.indexes.index_row(&id, &row);
                self.rows += 1;
            }
            p if p == HOLD_PREFIX => {
                let (expires_at, account, voucher): (i64, String, String) = decode_json(id, "hold", "key")?;
                if !value.is_empty() {
                    return Err(RowError::Value { kind: "hold", id: String::from_utf8_lossy(id).into_owned() });
                }
                self.holds.insert((Millis(expires_at), AccountId(account), VoucherId(voucher)));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The book, its rows left in `db`.
    pub(crate) fn finish(self, db: &sled::Db) -> VoucherBook {
        VoucherBook::stored(Rows::stored(db.clone(), self.rows), self.indexes, self.holds)
    }
}
