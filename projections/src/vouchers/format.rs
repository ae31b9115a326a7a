//! The voucher book's storage format in the projection store: the one conversion of its
//! rows and holds to and from bytes, what a commit writes of a changed book, and how the
//! store reads a book back.
//!
//! Keys (integers big-endian, as everywhere in the store):
//! - `vr/` voucher → JSON `VoucherRecord` (`VoucherRows`, kept cold in sled by `Rows`);
//! - `vh/` hold, as the JSON tuple (expiry ms, account, voucher) → empty;
//! - `vl/` access window end (`LapseKey`: 8 bytes) ‖ voucher → empty: the lapse index
//!   (format 16), kept cold in sled by `Rows`, as it grows with the vouchers issued.
//!
//! Not stored: the expiry index, the status counts and the holds' index by voucher, which
//! are functions of the rows and holds and are rebuilt while the store reads them (module
//! docs of `vouchers`). The lapse index is a function of the rows too: the store checks
//! at open that it holds exactly the rows' lapse keys (`Reader`). What is not here: the store's checks of the state as a whole and
//! its checkpoint (`store`).

use super::{Hold, VoucherBook, VoucherRow};
use crate::rows::{Prefix, RowError, RowKind, RowWrite, Rows, decode_json, json, key, keyed_by_voucher, utf8};
use engine::domain::voucher::VoucherStatus;
use engine::ids::{AccountId, MerchantId, Millis, VoucherId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

pub(crate) const VOUCHER_PREFIX: &Prefix = b"vr/";
pub(crate) const HOLD_PREFIX: &Prefix = b"vh/";
pub(crate) const LAPSE_PREFIX: &Prefix = b"vl/";

/// The lapse index: `vl/` `LapseKey` → empty.
#[derive(Debug)]
pub enum LapseRows {}

/// A voucher in the lapse index: the end of its access window, then its id, as bytes
/// whose order is (window end, voucher) order: the end as a big-endian `i64` with its sign
/// bit flipped (so that negative times order before positive ones), then the id's UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LapseKey(Vec<u8>);

/// Bytes of a lapse key's time.
const LAPSE_TIME_BYTES: usize = 8;

impl LapseKey {
    /// Before every key.
    pub(crate) const FIRST: LapseKey = LapseKey(Vec::new());

    pub(crate) fn new(at: Millis, voucher: &VoucherId) -> Self {
        let time = (at.0 as u64 ^ (1 << 63)).to_be_bytes();
        LapseKey([&time[..], voucher.0.as_bytes()].concat())
    }

    /// When the access window ends.
    pub(crate) fn at(&self) -> Millis {
        let mut time = [0u8; LAPSE_TIME_BYTES];
        time.copy_from_slice(&self.0[..LAPSE_TIME_BYTES]);
        Millis((u64::from_be_bytes(time) ^ (1 << 63)) as i64)
    }

    pub(crate) fn voucher(&self) -> VoucherId {
        VoucherId(String::from_utf8_lossy(&self.0[LAPSE_TIME_BYTES..]).into_owned())
    }
}

impl RowKind for LapseRows {
    type Key = LapseKey;
    type Value = ();
    const PREFIX: &'static Prefix = LAPSE_PREFIX;
    const ORDERED: bool = true;
    fn key_bytes(key: &LapseKey) -> &[u8] {
        &key.0
    }
    fn key_of(id: &[u8]) -> Result<LapseKey, RowError> {
        if id.len() < LAPSE_TIME_BYTES {
            return Err(RowError::Key { kind: "lapse", expected: "8 bytes of time and a voucher id" });
        }
        utf8(&id[LAPSE_TIME_BYTES..], "lapse")?;
        Ok(LapseKey(id.to_vec()))
    }
    fn encode((): &()) -> Result<Vec<u8>, RowError> {
        Ok(Vec::new())
    }
    fn decode(key: &LapseKey, bytes: &[u8]) -> Result<(), RowError> {
        if bytes.is_empty() { Ok(()) } else { Err(RowError::Value { kind: "lapse", id: key.voucher().0 }) }
    }
}

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
    Lapse(LapseKey, bool),
}

impl Change {
    /// The key and value to store: encoded here, outside the projections' lock.
    pub(crate) fn write(self) -> Result<RowWrite, RowError> {
        Ok(match self {
            Change::Row(id, row) => RowWrite::put_or_remove(key(VOUCHER_PREFIX, id.0.as_bytes()), row.as_ref().map(VoucherRows::encode).transpose()?),
            Change::Hold(hold, held) => RowWrite::present_or_remove(hold_key(&hold)?, held),
            Change::Lapse(lapse, present) => RowWrite::present_or_remove(key(LAPSE_PREFIX, &lapse.0), present),
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
        changes.extend(self.lapsing.take_changes()?.into_iter().map(|(lapse, present)| Change::Lapse(lapse, present.is_some())));
        Ok(changes)
    }

    /// The batch `take_changes` took is stored: its rows and lapse rows leave memory.
    pub(crate) fn rows_committed(&mut self) {
        self.vouchers.rows_committed();
        self.lapsing.rows_committed();
    }

    /// After the whole book was committed (a rebuild): its rows and lapse rows leave memory.
    pub(crate) fn spill(&mut self, db: &sled::Db) {
        self.vouchers.spill(db);
        self.lapsing.spill(db);
    }
}

/// A set of keys as the store checks it: how many, and the XOR of their hashes (equal for
/// the same set, whatever the order the keys come in).
#[derive(Default, PartialEq, Eq)]
struct KeySet {
    count: u64,
    hash: [u8; 32],
}

impl KeySet {
    fn add(&mut self, key: &[u8]) {
        self.count += 1;
        let hash = engine::crypto::hash(key);
        self.hash.iter_mut().zip(hash).for_each(|(byte, other)| *byte ^= other);
    }
}

/// A book as the store reads it back, pair by pair: the rows are checked, counted and
/// indexed (they stay in sled), the holds collected, and the lapse rows checked against
/// the rows (they stay in sled too).
#[derive(Default)]
pub(crate) struct Reader {
    indexes: VoucherBook,
    rows: usize,
    holds: BTreeSet<Hold>,
    /// The lapse rows stored, and the lapse keys the voucher rows call for.
    lapses_stored: KeySet,
    lapses_expected: KeySet,
}

impl Reader {
    /// Takes one stored pair; `false` when its prefix is not this format's.
    pub(crate) fn read(&mut self, prefix: &[u8], id: &[u8], value: &[u8]) -> Result<bool, RowError> {
        match prefix {
            p if p == VOUCHER_PREFIX => {
                let id = VoucherRows::key_of(id)?;
                let row = VoucherRows::decode(&id, value)?;
                if self.indexes.index_row(&id, &row) {
                    self.lapses_expected.add(&LapseKey::new(row.expires_at, &id).0);
                }
                self.rows += 1;
            }
            p if p == LAPSE_PREFIX => {
                let lapse = LapseRows::key_of(id)?;
                LapseRows::decode(&lapse, value)?;
                self.lapses_stored.add(&lapse.0);
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

    /// The book, its rows and lapse rows left in `db`; the lapse rows must be exactly the
    /// rows' lapse keys.
    pub(crate) fn finish(self, db: &sled::Db) -> Result<VoucherBook, RowError> {
        if self.lapses_stored != self.lapses_expected {
            return Err(RowError::IndexMismatch { kind: "lapse index", stored: self.lapses_stored.count, expected: self.lapses_expected.count });
        }
        let lapsing = Rows::stored(db.clone(), usize::try_from(self.lapses_stored.count).unwrap_or(usize::MAX));
        Ok(VoucherBook::stored(Rows::stored(db.clone(), self.rows), lapsing, self.indexes, self.holds))
    }
}
