//! The balances' storage format in the projection store: the one conversion of ledger and
//! points accounts to and from bytes, what a commit writes of changed balances, and how the
//! store reads them back.
//!
//! Keys:
//! - `bl/` JSON (currency, kind code, name) → JSON `LedgerRecord` (the ledger balance);
//! - `bp/` points account → JSON `PointsRecord` (balance and held).
//!
//! What is not here: the check that the stored ledger sums to zero, which the store makes
//! with its other checks of the state as a whole (`store`).

use super::{Balances, LedgerAccount, PointsBalance, kind_code, kind_of_code};
use crate::rows::{Prefix, RowError, RowWrite, decode_json, json, key, utf8};
use engine::ids::AccountId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(crate) const LEDGER_PREFIX: &Prefix = b"bl/";
pub(crate) const POINTS_PREFIX: &Prefix = b"bp/";

#[derive(Serialize, Deserialize)]
pub(crate) struct LedgerRecord {
    pub(crate) balance_minor: i128,
}

#[derive(Serialize, Deserialize)]
struct PointsRecord {
    balance: i128,
    held: i128,
}

fn ledger_key(account: &LedgerAccount) -> Result<Vec<u8>, RowError> {
    let id = json(&(&account.currency, kind_code(account.kind), &account.name), "ledger account key")?;
    Ok(key(LEDGER_PREFIX, &id))
}

fn points_value(points: &PointsBalance) -> Result<Vec<u8>, RowError> {
    json(&PointsRecord { balance: points.balance, held: points.held }, "points account")
}

/// One changed account, copied out of the balances under the projections' lock: its new
/// balance (`None`: no longer listed).
pub(crate) enum Change {
    Ledger(LedgerAccount, Option<i128>),
    Points(AccountId, Option<PointsBalance>),
}

impl Change {
    /// The key and value to store: encoded here, outside the projections' lock.
    pub(crate) fn write(self) -> Result<RowWrite, RowError> {
        Ok(match self {
            Change::Ledger(account, balance) => {
                let value = balance.map(|balance_minor| json(&LedgerRecord { balance_minor }, "ledger account")).transpose()?;
                RowWrite::put_or_remove(ledger_key(&account)?, value)
            }
            Change::Points(id, points) => RowWrite::put_or_remove(key(POINTS_PREFIX, id.0.as_bytes()), points.as_ref().map(points_value).transpose()?),
        })
    }
}

impl Balances {
    /// What changed since the last call, copied (no encoding, no I/O), for a commit.
    pub(crate) fn take_changes(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        for account in self.touched_ledger.take() {
            let balance = self.ledger.get(&account).copied();
            changes.push(Change::Ledger(account, balance));
        }
        for id in self.touched_points.take() {
            let points = self.points.get(&id).copied();
            changes.push(Change::Points(id, points));
        }
        changes
    }
}

/// Balances as the store reads them back, pair by pair.
#[derive(Default)]
pub(crate) struct Reader {
    ledger: BTreeMap<LedgerAccount, i128>,
    points: BTreeMap<AccountId, PointsBalance>,
}

impl Reader {
    /// Takes one stored pair; `false` when its prefix is not this format's.
    pub(crate) fn read(&mut self, prefix: &[u8], id: &[u8], value: &[u8]) -> Result<bool, RowError> {
        match prefix {
            p if p == LEDGER_PREFIX => {
                let (currency, code, name): (String, u8, String) = decode_json(id, "ledger account", "key")?;
                let kind = kind_of_code(code).ok_or_else(|| RowError::Unknown {
                    kind: "ledger account",
                    id: format!("{currency}:{name}"),
                    field: "kind",
                    value: code.to_string(),
                })?;
                let account = LedgerAccount::new(currency, kind, name);
                let record: LedgerRecord = decode_json(value, "ledger account", &account.to_string())?;
                self.ledger.insert(account, record.balance_minor);
            }
            p if p == POINTS_PREFIX => {
                let id = utf8(id, "points account")?;
                let record: PointsRecord = decode_json(value, "points account", &id)?;
                self.points.insert(AccountId(id), PointsBalance { balance: record.balance, held: record.held });
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub(crate) fn finish(self) -> Balances {
        Balances::from_parts(self.ledger, self.points)
    }
}
