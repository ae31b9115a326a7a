//! The durable projection store: every projection's state and its checkpoint in one sled
//! database, so that a restart resumes at `checkpoint + 1` and a deleted (or quarantined)
//! store is rebuilt from sequence 1 (DESIGN.md, "Projections").
//!
//! What lives here: the on-disk layout, the one conversion of projection state to and
//! from bytes (the `*Record` types), the atomic commit of a batch, and the open-time
//! checks that send a damaged store to quarantine. What does not: how events change the
//! state (the projection modules, which note what they changed in `Touched` sets) and
//! when to commit (`Live`, which commits once per batch of applied events).
//!
//! Layout, all in sled's default tree (integers big-endian, so key order is index order):
//! - `@format`      → `FORMAT_MARKER`;
//! - `@checkpoint`  → `blake3(body) ‖ body`, body = JSON `CheckpointRecord`: last applied
//!   sequence, event count, stream head and the stream head before the last event (which
//!   identify the stream, below), usage and seal counters, whether the royalty chain was
//!   computed from sequence 1, and the content digest of every state key;
//! - state keys, one per row, each a 3-byte prefix and the row's id:
//!   `vr/` voucher → row, `vh/` hold (JSON tuple) → empty, `an/` node → slots,
//!   `av/` voucher → node holding its slot, `ap/` preview → node, `ar/` released voucher,
//!   `rc/` media → catalog data, `rs/` voucher → sale, `rp/` preview → merchant,
//!   `re/` index → chained royalty entry with its source sequence and usage digest,
//!   `rt/` dimension byte ‖ key → totals line, `rl/` index → seal, `rf/` index → seal fault,
//!   `sh/` sequence → the stream heads of the consecutive sequences that end there, 32
//!   bytes each, at most `STREAM_HEADS_PER_ROW` per row (only since the last seal: a seal
//!   names a stream position whose head it must match),
//!   `bl/` JSON (currency, kind code, name) → ledger balance, `bp/` account → points
//!   balance and held.
//!
//! Format 2 added the balances and the stream head before the last event; a store of
//! format 1 fails the marker check at open and is quarantined and rebuilt (its rows would
//! read as a state without balances, which is not what its checkpoint describes). Format 3
//! keeps the stream heads in rows of up to `STREAM_HEADS_PER_ROW` instead of one row per
//! event: a seal lets go of every head before its position, and sled copies a tree node
//! for every key a batch removes, so the commit after a seal 10 s into a busy stream
//! (~100k rows removed) took about a gigabyte (heaptrack, bench memory probe); a format-2
//! store is quarantined and rebuilt.
//!
//! Commit: the state keys a batch of events changed (the projections' `Touched` sets; the
//! tails of the append-only entries, seals, faults and stream heads) and the checkpoint
//! are written in ONE `sled::Batch`, then flushed. A row touched several times in a batch
//! is written once. The changed rows are copied under the projections' lock (`prepare`)
//! and encoded and written without it (`write`), so the allocator never waits for a disk.
//! Cost per batch is proportional to the keys the batch changed (an encoding, one `get`
//! and two hashes per key), never to the total state:
//! - the checkpoint's *content digest* is an XOR of `blake3(key ‖ value)` over every state
//!   pair, updated per changed key (XOR out the old pair, XOR in the new). `Projections::
//!   digest()` cannot be stored instead: it hashes every row in order, O(state) per batch.
//!   At open, the content digest is recomputed over every pair and must match: any flipped
//!   byte, lost, extra or stale key is caught, and the store is quarantined. (XOR is
//!   enough: every key occurs once, and the threat is damage, not an adversary, who could
//!   rewrite the checkpoint as easily as the rows.) The
//!   conversion itself (that the stored rows reproduce the in-memory state) is what the
//!   tests check against `digest()`, and `ProjectionStore::stored_digest` checks on demand.
//!
//! Secrets: none is stored. The royalty chain's current `A_j` is re-derived at load from
//! the master key (`Chain::resume`: `A_0` advanced `j` times, checked against the newest
//! entry's MAC) instead of being persisted, because sled is log-structured: a rewritten
//! value stays in older segments of the file until they are cleaned, so a stored `A_j`
//! would leave earlier `A_j`s on disk, which is what forward security forbids. Without the
//! master key a loaded store computes totals and says the chain needs `A_0`, as an
//! in-memory projection does.
//!
//! Which stream: the checkpoint names its last event only through hashes, so the store
//! itself cannot tell whether the log it is run against is the one it was built from.
//! `stream_link(stream_head_before, event at last_seq)` must give `stream_head`: the log's
//! event at the checkpoint is byte for byte the one applied last. `Live::open_checked`
//! reads that one event and quarantines the store when the log lacks it or has another
//! (another `--stream`, another NATS server, a re-created log). One event, so O(1) at
//! every start; the limit is that a log equal at `last_seq` but different before it would
//! pass (an event's bytes hold its event id, aggregate version and engine time, so two
//! logs agree on one only when both were written by the same commands at the same clock).
//! A checkpoint without `stream_head_before` (none is written since format 2; only a
//! hand-edited store lacks it) cannot be checked, and is quarantined and rebuilt too.
//!
//! Not persisted: tentative allocation holds (ephemeral advice of one process), the
//! engine's public key (the caller passes it, as in memory), and the voucher indexes by
//! merchant and by expiry (a function of the rows, rebuilt at load).

use crate::allocation::{Allocation, NodeSlots};
use crate::balances::{Balances, LedgerAccount, PointsBalance};
use crate::royalty::{Chain, ChainedEntry};
use crate::royalty_log::{Dimension, MediaInfo, RoyaltyLog, Sale, SealFault, TotalsLine, EPOCH};
use crate::vouchers::{Hold, VoucherBook, VoucherRow};
use crate::Projections;
use engine::crypto::{RsaPublic, SecretKey};
use engine::domain::event::{RightsReportSealed, RoyaltyTerms};
use engine::domain::voucher::VoucherStatus;
use engine::ids::{AccountId, MediaId, MerchantId, Millis, NodeId, PreviewId, Seq, VoucherId};
use crate::serde_hex::{hex_array, hex_option};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The value of `@format`; a new layout gets a new marker (and old stores are rebuilt).
pub const FORMAT_MARKER: &[u8] = b"vouchsafe-projection-store/3";
/// sled's page cache, in bytes. It serves the commit's reads of old values and the reads
/// of cold rows (`Rows`). sled's memory is several times what it counts against this, so
/// it is what the engine's memory grows with: in the bench's memory probe (20k → 200k
/// vouchers) RSS went 224 → 507 MB with 64 MiB, 233 → 444 MB with 16 MiB, 209 → 333 MB
/// with 8 MiB. The price is CPU: a store-backed rebuild (`examples/rebuild_rate`, 200k
/// events) ran 38.7–41.2k events/s with 64 MiB and 28.3–34.8k with 8 MiB.
const CACHE_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// sled's own background flush interval. Durability of a checkpoint never depends on it
/// (every commit flushes); it only bounds how long sled's housekeeping stays in memory.
const BACKGROUND_FLUSH_INTERVAL_MS: u64 = 1_000;
/// How long `open` waits for the directory's lock before reporting the store in use.
/// Dropping a sled handle releases the lock only when sled's background threads let go
/// of it, a few milliseconds later, so a store closed and reopened at once (a restart in
/// the same process, a quarantine, a test) needs a short wait.
const LOCK_WAIT_MS_MAX: u64 = 2_000;
const LOCK_RETRY_INTERVAL_MS: u64 = 10;

const FORMAT_KEY: &[u8] = b"@format";
const CHECKPOINT_KEY: &[u8] = b"@checkpoint";
/// Keys starting with this byte are metadata, outside the content digest.
const META_PREFIX: u8 = b'@';
const PREFIX_BYTES: usize = 3;
const VOUCHER_PREFIX: &[u8; PREFIX_BYTES] = b"vr/";
const HOLD_PREFIX: &[u8; PREFIX_BYTES] = b"vh/";
const NODE_PREFIX: &[u8; PREFIX_BYTES] = b"an/";
const SLOT_VOUCHER_PREFIX: &[u8; PREFIX_BYTES] = b"av/";
const SLOT_PREVIEW_PREFIX: &[u8; PREFIX_BYTES] = b"ap/";
const RELEASED_PREFIX: &[u8; PREFIX_BYTES] = b"ar/";
const CATALOG_PREFIX: &[u8; PREFIX_BYTES] = b"rc/";
const SALE_PREFIX: &[u8; PREFIX_BYTES] = b"rs/";
const PREVIEW_MERCHANT_PREFIX: &[u8; PREFIX_BYTES] = b"rp/";
const ENTRY_PREFIX: &[u8; PREFIX_BYTES] = b"re/";
const TOTALS_PREFIX: &[u8; PREFIX_BYTES] = b"rt/";
const SEAL_PREFIX: &[u8; PREFIX_BYTES] = b"rl/";
const FAULT_PREFIX: &[u8; PREFIX_BYTES] = b"rf/";
const STREAM_HEAD_PREFIX: &[u8; PREFIX_BYTES] = b"sh/";
/// Stream heads in one `sh/` row, at most (32 KiB of heads).
const STREAM_HEADS_PER_ROW: u64 = 1_024;
/// Bytes of one stream head.
const STREAM_HEAD_BYTES: usize = 32;
const LEDGER_PREFIX: &[u8; PREFIX_BYTES] = b"bl/";
const POINTS_PREFIX: &[u8; PREFIX_BYTES] = b"bp/";

const CHECKPOINT_CHECK_BYTES: usize = 32;
const CHECKPOINT_CHECK_CONTEXT: &str = "vouchsafe 2026 projection store checkpoint v1";
const PAIR_CONTEXT: &str = "vouchsafe 2026 projection store pair v1";

// ---------------------------------------------------------------------------------------
// Change tracking, used by the projection modules.

/// Keys a projection changed since the store last committed it. Inert (records nothing)
/// until a store starts tracking the projection, so in-memory replays such as the
/// auditor's pay one branch per change and never grow. Bookkeeping, not state: it takes
/// no part in equality.
#[derive(Clone, Debug)]
pub(crate) struct Touched<K> {
    tracking: bool,
    keys: BTreeSet<K>,
}

impl<K> Default for Touched<K> {
    fn default() -> Self {
        Touched { tracking: false, keys: BTreeSet::new() }
    }
}

impl<K> PartialEq for Touched<K> {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl<K> Eq for Touched<K> {}

impl<K: Ord + Clone> Touched<K> {
    pub(crate) fn touch(&mut self, key: &K) {
        if self.tracking {
            self.keys.insert(key.clone());
        }
    }

    pub(crate) fn tracking(&self) -> bool {
        self.tracking
    }

    pub(crate) fn start(&mut self) {
        self.tracking = true;
    }

    fn take(&mut self) -> BTreeSet<K> {
        std::mem::take(&mut self.keys)
    }
}

// ---------------------------------------------------------------------------------------
// Rows that grow with the number of vouchers: in memory, or cold in the store.

/// One kind of row that grows with the number of vouchers (voucher rows, slot holders,
/// released slots): its key prefix and its one conversion to and from bytes, the same
/// bytes `Change::write` stores and `read_state` checks.
pub trait RowKind {
    type Key: Ord + std::hash::Hash + Clone + std::fmt::Debug;
    type Value: Clone + PartialEq + std::fmt::Debug;
    const PREFIX: &'static [u8; PREFIX_BYTES];
    fn key_bytes(key: &Self::Key) -> &[u8];
    fn key_of(id: &[u8]) -> Result<Self::Key, String>;
    fn encode(value: &Self::Value) -> Result<Vec<u8>, CommitError>;
    fn decode(key: &Self::Key, bytes: &[u8]) -> Result<Self::Value, String>;
}

/// Voucher rows: `vr/` voucher → JSON `VoucherRecord`.
#[derive(Debug)]
pub enum VoucherRows {}

/// Slot holders: `av/` voucher → node.
#[derive(Debug)]
pub enum SlotRows {}

/// Released slots: `ar/` voucher → empty.
#[derive(Debug)]
pub enum ReleasedRows {}

/// Sales: `rs/` voucher → JSON `SaleRecord`.
#[derive(Debug)]
pub(crate) enum SaleRows {}

/// The key of a row kind keyed by voucher id (its bytes are the id's).
macro_rules! keyed_by_voucher {
    () => {
        type Key = VoucherId;
        fn key_bytes(key: &VoucherId) -> &[u8] {
            key.0.as_bytes()
        }
        fn key_of(id: &[u8]) -> Result<VoucherId, String> {
            Ok(VoucherId(utf8(id, "voucher")?))
        }
    };
}

impl RowKind for VoucherRows {
    type Value = VoucherRow;
    const PREFIX: &'static [u8; PREFIX_BYTES] = VOUCHER_PREFIX;
    keyed_by_voucher!();
    fn encode(row: &VoucherRow) -> Result<Vec<u8>, CommitError> {
        voucher_value(row)
    }
    fn decode(key: &VoucherId, bytes: &[u8]) -> Result<VoucherRow, String> {
        let record: VoucherRecord = decode_json(bytes, "voucher row", &key.0)?;
        let status = status_of(&record.status).ok_or_else(|| format!("voucher {:?} has an unknown status", key.0))?;
        Ok(VoucherRow { merchant: MerchantId(record.merchant), status, expires_at: Millis(record.expires_at_ms), media_delivered: record.media_delivered })
    }
}

impl RowKind for SlotRows {
    type Value = NodeId;
    const PREFIX: &'static [u8; PREFIX_BYTES] = SLOT_VOUCHER_PREFIX;
    keyed_by_voucher!();
    fn encode(node: &NodeId) -> Result<Vec<u8>, CommitError> {
        Ok(node.0.as_bytes().to_vec())
    }
    fn decode(_key: &VoucherId, bytes: &[u8]) -> Result<NodeId, String> {
        Ok(NodeId(utf8(bytes, "node")?))
    }
}

impl RowKind for SaleRows {
    type Value = Sale;
    const PREFIX: &'static [u8; PREFIX_BYTES] = SALE_PREFIX;
    keyed_by_voucher!();
    fn encode(sale: &Sale) -> Result<Vec<u8>, CommitError> {
        sale_value(sale)
    }
    fn decode(key: &VoucherId, bytes: &[u8]) -> Result<Sale, String> {
        let record: SaleRecord = decode_json(bytes, "sale", &key.0)?;
        let prices = record.prices.into_iter().map(|(media, price)| (MediaId(media), price)).collect();
        Ok(Sale { merchant: record.merchant, currency: record.currency, prices })
    }
}

impl RowKind for ReleasedRows {
    type Value = ();
    const PREFIX: &'static [u8; PREFIX_BYTES] = RELEASED_PREFIX;
    keyed_by_voucher!();
    fn encode(_: &()) -> Result<Vec<u8>, CommitError> {
        Ok(Vec::new())
    }
    fn decode(key: &VoucherId, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() { Ok(()) } else { Err(format!("the released slot of {:?} carries a value", key.0)) }
    }
}

/// A map of rows that grow with the number of vouchers. In memory (`Memory`: replays,
/// audits, `Live::with_keys`) it is a `HashMap` (a replay inserts or changes a row on
/// most events; with hundreds of thousands of voucher ids sharing long prefixes a
/// `BTreeMap` spent a tenth of the auditor's applying in `memcmp`), sorted only when
/// iterated, and notes changed keys for a store. Backed
/// by the projection store (`Stored`) only the rows changed since the last commit are in
/// memory (`dirty`, and `committing` while a prepared batch is being written); every
/// other row is read from sled when an event needs it, so memory does not grow with the
/// number of vouchers. Both give the same answers and the same iteration order (sled
/// orders keys bytewise, as `String`'s `Ord` does).
pub struct Rows<R: RowKind> {
    inner: RowsInner<R>,
}

enum RowsInner<R: RowKind> {
    Memory { rows: HashMap<R::Key, R::Value>, touched: Touched<R::Key> },
    Stored(StoredRows<R>),
}

struct StoredRows<R: RowKind> {
    db: sled::Db,
    /// Rows changed since the last `prepare` (`None`: removed).
    dirty: BTreeMap<R::Key, Option<R::Value>>,
    /// Rows of the batch `prepare` took and `write` is storing, until `rows_committed`.
    committing: BTreeMap<R::Key, Option<R::Value>>,
    len: usize,
    /// The first row that could not be read or decoded: the next `prepare` fails with it,
    /// which stops the store (a reopen resumes from the last good checkpoint).
    fault: Option<String>,
}

impl<R: RowKind> Default for Rows<R> {
    fn default() -> Self {
        Rows { inner: RowsInner::Memory { rows: HashMap::new(), touched: Touched::default() } }
    }
}

impl<R: RowKind> Clone for Rows<R> {
    /// A stored copy shares the sled rows and copies the uncommitted ones: a snapshot for
    /// reading, not a second writer.
    fn clone(&self) -> Self {
        let inner = match &self.inner {
            RowsInner::Memory { rows, touched } => RowsInner::Memory { rows: rows.clone(), touched: touched.clone() },
            RowsInner::Stored(stored) => RowsInner::Stored(StoredRows {
                db: stored.db.clone(),
                dirty: stored.dirty.clone(),
                committing: stored.committing.clone(),
                len: stored.len,
                fault: stored.fault.clone(),
            }),
        };
        Rows { inner }
    }
}

impl<R: RowKind> std::fmt::Debug for Rows<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            RowsInner::Memory { rows, .. } => f.debug_map().entries(sorted(rows)).finish(),
            RowsInner::Stored(stored) => f.debug_struct("StoredRows").field("len", &stored.len).field("dirty", &stored.dirty.len()).finish_non_exhaustive(),
        }
    }
}

/// Equal when they hold the same rows, whichever their mode (O(rows): for tests).
impl<R: RowKind> PartialEq for Rows<R> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<R: RowKind> Eq for Rows<R> {}

impl<R: RowKind> FromIterator<(R::Key, R::Value)> for Rows<R> {
    fn from_iter<I: IntoIterator<Item = (R::Key, R::Value)>>(rows: I) -> Self {
        Rows { inner: RowsInner::Memory { rows: rows.into_iter().collect(), touched: Touched::default() } }
    }
}

impl<R: RowKind> Rows<R> {
    /// Rows kept in sled (`db`), of which `len` are stored; none is in memory.
    fn stored(db: sled::Db, len: usize) -> Self {
        Rows { inner: RowsInner::Stored(StoredRows { db, dirty: BTreeMap::new(), committing: BTreeMap::new(), len, fault: None }) }
    }

    /// Whether the rows live in the projection store (cold rows read from sled).
    pub fn is_stored(&self) -> bool {
        matches!(self.inner, RowsInner::Stored(_))
    }

    pub fn len(&self) -> usize {
        match &self.inner {
            RowsInner::Memory { rows, .. } => rows.len(),
            RowsInner::Stored(stored) => stored.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many rows are held in memory: all of them in memory, only the uncommitted ones
    /// when stored.
    pub fn resident(&self) -> usize {
        match &self.inner {
            RowsInner::Memory { rows, .. } => rows.len(),
            RowsInner::Stored(stored) => stored.dirty.len() + stored.committing.len(),
        }
    }

    /// The row of `key` (a copy: a stored row may come from sled).
    pub fn get(&self, key: &R::Key) -> Option<R::Value> {
        match &self.inner {
            RowsInner::Memory { rows, .. } => rows.get(key).cloned(),
            RowsInner::Stored(stored) => match stored.read(key) {
                Ok(row) => row,
                Err(reason) => {
                    tracing::error!(%reason, "a projection row in the store cannot be read");
                    None
                }
            },
        }
    }

    /// `f` of the row of `key`: in memory a borrow, no copy (a replay reads rows on most
    /// events); stored, the row read from sled.
    pub fn with_row<T>(&self, key: &R::Key, f: impl FnOnce(Option<&R::Value>) -> T) -> T {
        match &self.inner {
            RowsInner::Memory { rows, .. } => f(rows.get(key)),
            RowsInner::Stored(_) => f(self.get(key).as_ref()),
        }
    }

    /// Changes the row of `key` with `change`; whether there was one. In memory this is one
    /// lookup and no copy (replays change rows on most events); stored, the row is read,
    /// changed and set.
    /// A stored row that cannot be read is a fault, as in `remove`: the next commit fails.
    pub fn update(&mut self, key: &R::Key, change: impl FnOnce(&mut R::Value)) -> bool {
        match &mut self.inner {
            RowsInner::Memory { rows, touched } => {
                let Some(row) = rows.get_mut(key) else { return false };
                change(row);
                touched.touch(key);
                true
            }
            RowsInner::Stored(stored) => match stored.read(key) {
                Ok(Some(mut row)) => {
                    change(&mut row);
                    stored.set(key.clone(), Some(row));
                    true
                }
                Ok(None) => false,
                Err(reason) => {
                    stored.fault.get_or_insert(reason);
                    false
                }
            },
        }
    }

    pub fn contains_key(&self, key: &R::Key) -> bool {
        self.get(key).is_some()
    }

    /// Sets the row of `key`; returns the previous one.
    pub fn insert(&mut self, key: R::Key, value: R::Value) -> Option<R::Value> {
        match &mut self.inner {
            RowsInner::Memory { rows, touched } => {
                touched.touch(&key);
                rows.insert(key, value)
            }
            RowsInner::Stored(stored) => stored.set(key, Some(value)),
        }
    }

    /// Removes the row of `key`; returns it.
    pub fn remove(&mut self, key: &R::Key) -> Option<R::Value> {
        match &mut self.inner {
            RowsInner::Memory { rows, touched } => {
                let old = rows.remove(key);
                if old.is_some() {
                    touched.touch(key);
                }
                old
            }
            RowsInner::Stored(stored) => match stored.read(key) {
                Ok(Some(_)) => stored.set(key.clone(), None),
                Ok(None) => None,
                Err(reason) => {
                    stored.fault.get_or_insert(reason);
                    None
                }
            },
        }
    }

    /// Every row in key order (in memory: sorted first; stored: sled's rows overlaid with
    /// the uncommitted ones).
    pub fn iter(&self) -> Box<dyn Iterator<Item = (R::Key, R::Value)> + '_> {
        match &self.inner {
            RowsInner::Memory { rows, .. } => Box::new(sorted(rows).into_iter().map(|(key, value)| (key.clone(), value.clone()))),
            RowsInner::Stored(stored) => Box::new(stored.iter()),
        }
    }

    /// Starts noting changed keys (in memory; stored rows always know theirs).
    pub(crate) fn track_changes(&mut self) {
        if let RowsInner::Memory { touched, .. } = &mut self.inner {
            touched.start();
        }
    }

    /// The rows changed since the last call, with their new values (`None`: removed), for
    /// a commit; stored, they stay readable from memory until `rows_committed`.
    pub(crate) fn take_changes(&mut self) -> Result<Vec<(R::Key, Option<R::Value>)>, CommitError> {
        match &mut self.inner {
            RowsInner::Memory { rows, touched } => Ok(touched.take().into_iter().map(|key| {
                let value = rows.get(&key).cloned();
                (key, value)
            }).collect()),
            RowsInner::Stored(stored) => {
                if let Some(reason) = &stored.fault {
                    return Err(CommitError::Storage(format!("a projection row could not be read: {reason}")));
                }
                // A batch whose write failed stays in `committing` (the store is stopped
                // then, and reads must still see it); newer changes go on top.
                let mut dirty = std::mem::take(&mut stored.dirty);
                stored.committing.append(&mut dirty);
                Ok(stored.committing.iter().map(|(key, value)| (key.clone(), value.clone())).collect())
            }
        }
    }

    /// The batch taken by `take_changes` is stored: its rows need not stay in memory.
    pub(crate) fn rows_committed(&mut self) {
        if let RowsInner::Stored(stored) = &mut self.inner {
            stored.committing.clear();
        }
    }

    /// Moves rows that are all committed to `db` out of memory (after a rebuild committed
    /// the whole state in one batch). Stored rows are left as they are.
    pub(crate) fn spill(&mut self, db: &sled::Db) {
        if let RowsInner::Memory { rows, .. } = &self.inner {
            let len = rows.len();
            *self = Rows::stored(db.clone(), len);
        }
    }
}

/// The rows of a `HashMap` in key order.
fn sorted<K: Ord, V>(rows: &HashMap<K, V>) -> Vec<(&K, &V)> {
    let mut sorted: Vec<(&K, &V)> = rows.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    sorted
}

impl<R: RowKind> StoredRows<R> {
    fn sled_key(key: &R::Key) -> Vec<u8> {
        [&R::PREFIX[..], R::key_bytes(key)].concat()
    }

    fn read(&self, key: &R::Key) -> Result<Option<R::Value>, String> {
        if let Some(value) = self.dirty.get(key).or_else(|| self.committing.get(key)) {
            return Ok(value.clone());
        }
        match self.db.get(Self::sled_key(key)).map_err(|e| e.to_string())? {
            Some(bytes) => R::decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets (or with `None` removes) the row of `key`; returns the previous one.
    fn set(&mut self, key: R::Key, value: Option<R::Value>) -> Option<R::Value> {
        let old = match self.read(&key) {
            Ok(old) => old,
            Err(reason) => {
                self.fault.get_or_insert(reason);
                None
            }
        };
        match (&old, &value) {
            (None, Some(_)) => self.len += 1,
            (Some(_), None) => self.len -= 1,
            _ => {}
        }
        self.dirty.insert(key, value);
        old
    }

    /// sled's rows of this kind merged with the uncommitted ones, in key order. A row that
    /// cannot be read ends the iteration early (and is logged): the digest then differs,
    /// which is how a damaged store shows.
    fn iter(&self) -> impl Iterator<Item = (R::Key, R::Value)> + '_ {
        let mut overlay: BTreeMap<&R::Key, &Option<R::Value>> = self.committing.iter().collect();
        overlay.extend(self.dirty.iter());
        let mut overlay = overlay.into_iter().peekable();
        let mut stored = self.db.scan_prefix(R::PREFIX).map(|pair| {
            let (key, value) = pair.map_err(|e| e.to_string())?;
            let key = R::key_of(&key[PREFIX_BYTES..])?;
            Ok::<_, String>((key, value))
        }).peekable();
        let mut failed = false;
        std::iter::from_fn(move || loop {
            if failed {
                return None;
            }
            let next_stored = match stored.peek() {
                Some(Ok((key, _))) => Some(key),
                Some(Err(reason)) => {
                    tracing::error!(%reason, "a projection row in the store cannot be read");
                    failed = true;
                    return None;
                }
                None => None,
            };
            let take_overlay = match (overlay.peek(), next_stored) {
                (Some((overlay_key, _)), Some(stored_key)) => *overlay_key <= stored_key,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return None,
            };
            if take_overlay {
                let (key, value) = overlay.next().expect("peeked");
                if next_stored == Some(key) {
                    stored.next();
                }
                match value {
                    Some(value) => return Some((key.clone(), value.clone())),
                    None => continue,
                }
            }
            let Some(Ok((key, bytes))) = stored.next() else { return None };
            match R::decode(&key, &bytes) {
                Ok(value) => return Some((key, value)),
                Err(reason) => {
                    tracing::error!(%reason, "a projection row in the store does not decode");
                    failed = true;
                    return None;
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Public types.

/// What a commit made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last applied sequence: a restart resumes at the next one.
    pub last_seq: Seq,
    pub events: u64,
    /// The running hash over every applied event (`stream_link`).
    pub stream_head: [u8; 32],
    /// The running hash before the last applied event: `stream_link(stream_head_before,
    /// event at last_seq) == stream_head` for the stream this store was built from.
    /// `None` for an empty store, or a checkpoint that did not record it.
    pub stream_head_before: Option<[u8; 32]>,
    /// The XOR of `blake3(key ‖ value)` over every state pair (module docs).
    pub content_digest: [u8; 32],
}

/// How `open` found the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenOutcome {
    /// There was no store: a new, empty one was created. Rebuild from sequence 1.
    Created,
    /// The stored state checked out; resume at `checkpoint + 1`.
    Resumed { checkpoint: Seq },
    /// The store could not be opened or was inconsistent. It was moved to `path` (never
    /// deleted, so it can be examined) and a new, empty store takes its place: rebuild
    /// from sequence 1.
    Quarantined { path: PathBuf, reason: String },
}

/// What one commit wrote, for metrics and for the tests of the per-batch cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub checkpoint: Checkpoint,
    /// Keys inserted or overwritten, the checkpoint included.
    pub keys_written: usize,
    pub keys_removed: usize,
}

/// Why a projection store could not be opened. A damaged store is not among these: it is
/// quarantined and reported as `OpenOutcome::Quarantined`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the projection store at {path} is in use or not accessible ({reason}); stop the other process or fix the permissions")]
    Unavailable { path: PathBuf, reason: String },
    #[error("{path} holds a sled database that is not a vouchsafe projection store; choose another directory (it was left untouched)")]
    Foreign { path: PathBuf },
    #[error("cannot move the damaged projection store at {path} aside ({reason}); move or delete it by hand, then start again")]
    Quarantine { path: PathBuf, reason: String },
    #[error("cannot create a projection store at {path}: {reason}; check the disk and the path")]
    Storage { path: PathBuf, reason: String },
    #[error("the royalty master key does not match the royalty chain in the projection store at {path} ({reason}); pass the key the chain was written with, or move the store away to rebuild it")]
    MasterKeyMismatch { path: PathBuf, reason: String },
    #[error("cannot read the event log to check that it is the stream the projection store at {path} was built from ({reason}); make the log reachable and start again")]
    Log { path: PathBuf, reason: String },
}

/// Why `load` cannot hand out the stored state as asked.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the store was built without the royalty master key, so its royalty chain does not start at sequence 1; rebuild from sequence 1 with the key")]
    ChainNotFromStart,
    #[error("the royalty master key does not match the stored chain: {0}")]
    MasterKeyMismatch(String),
    #[error("the stored state is inconsistent: {0}")]
    Inconsistent(String),
    #[error("reading the projection store failed: {0}")]
    Storage(String),
}

/// Why a commit failed. After any of these the store refuses further commits: the
/// projections in memory are ahead of it, and only a reopen (which resumes from the last
/// good checkpoint) brings the two together again.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("writing the projection store failed, nothing was stored: {0}")]
    Storage(String),
    #[error("flushing the projection store failed, the batch may or may not be stored: {0}; reopen the store")]
    FlushFailed(String),
    #[error("the projection store stopped after an earlier failure ({0}); reopen it")]
    Stopped(String),
    #[error("these projections were not loaded from this store (they do not note their changes); load them with ProjectionStore::load")]
    NotTracked,
    #[error("commit out of order: the batch builds on sequence {base} but the store is at {stored}; one runner per store")]
    OutOfOrder { base: Seq, stored: Seq },
}

// ---------------------------------------------------------------------------------------
// Persisted forms. The only place projection state becomes bytes and back.

#[derive(Clone, Copy, Serialize, Deserialize)]
struct CheckpointRecord {
    last_seq: u64,
    events: u64,
    #[serde(with = "hex_array")]
    stream_head: [u8; 32],
    /// Absent from a checkpoint that did not record it: then the stream cannot be checked.
    #[serde(default, with = "hex_option")]
    stream_head_before: Option<[u8; 32]>,
    usages: u64,
    seals_verified: u64,
    /// Every event so far was applied with the royalty chain (the master key was given
    /// from sequence 1 on): only then can the chain be resumed.
    chain_complete: bool,
    #[serde(with = "hex_array")]
    content_digest: [u8; 32],
}

impl CheckpointRecord {
    fn empty() -> Self {
        CheckpointRecord {
            last_seq: 0,
            events: 0,
            stream_head: [0; 32],
            stream_head_before: None,
            usages: 0,
            seals_verified: 0,
            chain_complete: true,
            content_digest: [0; 32],
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            last_seq: Seq(self.last_seq),
            events: self.events,
            stream_head: self.stream_head,
            stream_head_before: self.stream_head_before,
            content_digest: self.content_digest,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct VoucherRecord {
    merchant: String,
    status: String,
    expires_at_ms: i64,
    media_delivered: u32,
}

#[derive(Serialize, Deserialize)]
struct NodeRecord {
    region: String,
    slots_max: u32,
    in_use: u32,
    active: bool,
}

#[derive(Serialize, Deserialize)]
struct MediaRecord {
    title: String,
    artist: String,
    authors: Vec<String>,
    length_ms: u64,
    image_descriptor: String,
    retailer_bps: u32,
    distributor_bps: u32,
    owner_bps: u32,
    distributor: String,
    owner: String,
    rights_agent: String,
}

#[derive(Serialize, Deserialize)]
struct SaleRecord {
    merchant: String,
    currency: String,
    prices: Vec<(String, u64)>,
}

#[derive(Serialize, Deserialize)]
struct EntryRecord {
    entry: ChainedEntry,
    source_seq: u64,
    #[serde(with = "hex_array")]
    usage_digest: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct TotalsRecord {
    deliveries: u64,
    previews: u64,
    amount_minor: u64,
}

#[derive(Serialize, Deserialize)]
struct SealRecord {
    epoch: u64,
    first_entry: u64,
    last_entry: u64,
    #[serde(with = "hex_array")]
    head_y: [u8; 32],
    #[serde(with = "hex_array")]
    head_z: [u8; 32],
    #[serde(with = "hex_array")]
    merkle_root: [u8; 32],
    #[serde(with = "hex_array")]
    totals_digest: [u8; 32],
    #[serde(with = "hex_array")]
    prev_seal_hash: [u8; 32],
    engine_key_id: String,
    signature: String,
    last_stream_seq: u64,
    #[serde(with = "hex_array")]
    stream_head: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct LedgerRecord {
    balance_minor: i128,
}

#[derive(Serialize, Deserialize)]
struct PointsRecord {
    balance: i128,
    held: i128,
}

#[derive(Serialize, Deserialize)]
struct FaultRecord {
    seq: u64,
    first_entry: u64,
    last_entry: u64,
    reason: String,
}

fn status_of(name: &str) -> Option<VoucherStatus> {
    [
        VoucherStatus::None,
        VoucherStatus::Pending,
        VoucherStatus::Authorized,
        VoucherStatus::Issued,
        VoucherStatus::Redeeming,
        VoucherStatus::Delivered,
        VoucherStatus::Voided,
    ]
    .into_iter()
    .find(|status| status.name() == name)
}

fn dimension_byte(dimension: Dimension) -> u8 {
    match dimension {
        Dimension::Artist => 0,
        Dimension::Media => 1,
        Dimension::RightsAgent => 2,
        Dimension::Merchant => 3,
        Dimension::Period => 4,
    }
}

fn dimension_of(byte: u8) -> Option<Dimension> {
    match byte {
        0 => Some(Dimension::Artist),
        1 => Some(Dimension::Media),
        2 => Some(Dimension::RightsAgent),
        3 => Some(Dimension::Merchant),
        4 => Some(Dimension::Period),
        _ => None,
    }
}

fn key(prefix: &[u8; PREFIX_BYTES], id: &[u8]) -> Vec<u8> {
    [&prefix[..], id].concat()
}

fn index_key(prefix: &[u8; PREFIX_BYTES], index: u64) -> Vec<u8> {
    key(prefix, &index.to_be_bytes())
}

fn hold_key(hold: &Hold) -> Result<Vec<u8>, String> {
    let (expires_at, account, voucher) = hold;
    let id = serde_json::to_vec(&(expires_at.0, &account.0, &voucher.0)).map_err(|e| e.to_string())?;
    Ok(key(HOLD_PREFIX, &id))
}

fn ledger_key(account: &LedgerAccount) -> Result<Vec<u8>, String> {
    let id = serde_json::to_vec(&(&account.currency, crate::balances::kind_code(account.kind), &account.name)).map_err(|e| e.to_string())?;
    Ok(key(LEDGER_PREFIX, &id))
}

fn totals_key(dimension: Dimension, name: &str) -> Vec<u8> {
    [&TOTALS_PREFIX[..], &[dimension_byte(dimension)], name.as_bytes()].concat()
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, CommitError> {
    serde_json::to_vec(value).map_err(|e| CommitError::Storage(format!("encoding a projection row: {e}")))
}

fn voucher_value(row: &VoucherRow) -> Result<Vec<u8>, CommitError> {
    json(&VoucherRecord { merchant: row.merchant.0.clone(), status: row.status.name().to_owned(), expires_at_ms: row.expires_at.0, media_delivered: row.media_delivered })
}

fn node_value(node: &NodeSlots) -> Result<Vec<u8>, CommitError> {
    json(&NodeRecord { region: node.region.clone(), slots_max: node.slots_max, in_use: node.in_use, active: node.active })
}

fn media_value(media: &MediaInfo) -> Result<Vec<u8>, CommitError> {
    let terms = &media.terms;
    json(&MediaRecord {
        title: media.title.clone(),
        artist: media.artist.clone(),
        authors: media.authors.clone(),
        length_ms: media.length_ms,
        image_descriptor: media.image_descriptor.clone(),
        retailer_bps: terms.retailer_bps,
        distributor_bps: terms.distributor_bps,
        owner_bps: terms.owner_bps,
        distributor: terms.distributor.clone(),
        owner: terms.owner.clone(),
        rights_agent: terms.rights_agent.clone(),
    })
}

fn sale_value(sale: &Sale) -> Result<Vec<u8>, CommitError> {
    json(&SaleRecord { merchant: sale.merchant.clone(), currency: sale.currency.clone(), prices: sale.prices.iter().map(|(media, price)| (media.0.clone(), *price)).collect() })
}

fn totals_value(line: &TotalsLine) -> Result<Vec<u8>, CommitError> {
    json(&TotalsRecord { deliveries: line.deliveries, previews: line.previews, amount_minor: line.amount_minor })
}

fn seal_value(seal: &RightsReportSealed) -> Result<Vec<u8>, CommitError> {
    json(&SealRecord {
        epoch: seal.epoch,
        first_entry: seal.first_entry,
        last_entry: seal.last_entry,
        head_y: seal.head_y,
        head_z: seal.head_z,
        merkle_root: seal.merkle_root,
        totals_digest: seal.totals_digest,
        prev_seal_hash: seal.prev_seal_hash,
        engine_key_id: seal.engine_key_id.clone(),
        signature: hex::encode(&seal.signature),
        last_stream_seq: seal.last_stream_seq,
        stream_head: seal.stream_head,
    })
}

fn points_value(points: &PointsBalance) -> Result<Vec<u8>, CommitError> {
    json(&PointsRecord { balance: points.balance, held: points.held })
}

fn fault_value(fault: &SealFault) -> Result<Vec<u8>, CommitError> {
    json(&FaultRecord { seq: fault.seq.0, first_entry: fault.first_entry, last_entry: fault.last_entry, reason: fault.reason.clone() })
}

fn encode_checkpoint(record: &CheckpointRecord) -> Result<Vec<u8>, CommitError> {
    let body = json(record)?;
    let check = blake3::derive_key(CHECKPOINT_CHECK_CONTEXT, &body);
    Ok([&check[..], &body].concat())
}

fn decode_checkpoint(bytes: &[u8]) -> Result<CheckpointRecord, String> {
    if bytes.len() < CHECKPOINT_CHECK_BYTES {
        return Err("the checkpoint is truncated".into());
    }
    let (check, body) = bytes.split_at(CHECKPOINT_CHECK_BYTES);
    if blake3::derive_key(CHECKPOINT_CHECK_CONTEXT, body) != check {
        return Err("the checkpoint fails its checksum".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("the checkpoint does not decode: {e}"))
}

/// `blake3(len(key) ‖ key ‖ value)`: one pair's share of the content digest.
fn pair_hash(key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(PAIR_CONTEXT);
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    *hasher.finalize().as_bytes()
}

fn xor_into(digest: &mut [u8; 32], hash: &[u8; 32]) {
    for (byte, other) in digest.iter_mut().zip(hash) {
        *byte ^= other;
    }
}

// ---------------------------------------------------------------------------------------
// Reading the whole state (open and load).

/// Everything a store holds, decoded and checked.
struct Stored {
    projections: Projections,
    record: CheckpointRecord,
    /// The `sh/` rows, as (first, last) sequence, in order.
    head_rows: VecDeque<(u64, u64)>,
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("a {what} id is not UTF-8"))
}

fn decode_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str, id: &str) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the {what} {id:?} does not decode: {e}"))
}

fn index_of(id: &[u8], what: &str) -> Result<u64, String> {
    let bytes: [u8; 8] = id.try_into().map_err(|_| format!("a {what} key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Checks that `map`'s keys are exactly 0..len and returns its values in order.
fn contiguous<T>(map: BTreeMap<u64, T>, what: &str) -> Result<Vec<T>, String> {
    let len = map.len() as u64;
    if let Some((&last, _)) = map.iter().next_back()
        && last + 1 != len
    {
        return Err(format!("the {what}s are not numbered 0..{len} (the last is {last})"));
    }
    Ok(map.into_values().collect())
}

fn read_state(db: &sled::Db) -> Result<Stored, String> {
    let checkpoint = db.get(CHECKPOINT_KEY).map_err(|e| e.to_string())?.ok_or("the checkpoint is missing")?;
    let record = decode_checkpoint(&checkpoint)?;

    let mut digest = [0u8; 32];
    // Voucher rows, slot holders, released slots and sales stay in sled (`Rows`): here
    // they are decoded to check them, counted, and voucher rows feed the indexes.
    let mut voucher_indexes = VoucherBook::default();
    let (mut vouchers, mut slot_vouchers, mut released, mut sales) = (0usize, 0usize, 0usize, 0usize);
    let mut holds = BTreeSet::new();
    let mut nodes = BTreeMap::new();
    let mut slot_previews = BTreeMap::new();
    let mut catalog = BTreeMap::new();
    let mut preview_merchants = BTreeMap::new();
    let mut entries = BTreeMap::new();
    let mut totals = BTreeMap::new();
    let mut seals = BTreeMap::new();
    let mut faults = BTreeMap::new();
    let mut heads: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
    let mut head_rows: VecDeque<(u64, u64)> = VecDeque::new();
    let mut ledger = BTreeMap::new();
    let mut points = BTreeMap::new();

    for pair in db.iter() {
        let (key, value) = pair.map_err(|e| e.to_string())?;
        if key.first() == Some(&META_PREFIX) {
            continue;
        }
        xor_into(&mut digest, &pair_hash(&key, &value));
        if key.len() < PREFIX_BYTES {
            return Err(format!("unknown key {:?}", String::from_utf8_lossy(&key)));
        }
        let (prefix, id) = key.split_at(PREFIX_BYTES);
        match prefix {
            p if p == VOUCHER_PREFIX => {
                let id = VoucherRows::key_of(id)?;
                let row = VoucherRows::decode(&id, &value)?;
                voucher_indexes.index_row(&id, &row);
                vouchers += 1;
            }
            p if p == HOLD_PREFIX => {
                let (expires_at, account, voucher): (i64, String, String) = decode_json(id, "hold", "key")?;
                if !value.is_empty() {
                    return Err("a hold carries a value".into());
                }
                holds.insert((Millis(expires_at), AccountId(account), VoucherId(voucher)));
            }
            p if p == NODE_PREFIX => {
                let id = utf8(id, "node")?;
                let record: NodeRecord = decode_json(&value, "node", &id)?;
                nodes.insert(NodeId(id), NodeSlots { region: record.region, slots_max: record.slots_max, in_use: record.in_use, active: record.active });
            }
            p if p == SLOT_VOUCHER_PREFIX => {
                SlotRows::decode(&SlotRows::key_of(id)?, &value)?;
                slot_vouchers += 1;
            }
            p if p == SLOT_PREVIEW_PREFIX => {
                slot_previews.insert(PreviewId(utf8(id, "preview")?), NodeId(utf8(&value, "node")?));
            }
            p if p == RELEASED_PREFIX => {
                ReleasedRows::decode(&ReleasedRows::key_of(id)?, &value)?;
                released += 1;
            }
            p if p == CATALOG_PREFIX => {
                let id = utf8(id, "media")?;
                let record: MediaRecord = decode_json(&value, "catalog entry", &id)?;
                let terms = RoyaltyTerms {
                    retailer_bps: record.retailer_bps,
                    distributor_bps: record.distributor_bps,
                    owner_bps: record.owner_bps,
                    distributor: record.distributor,
                    owner: record.owner,
                    rights_agent: record.rights_agent,
                };
                let media = MediaInfo { title: record.title, artist: record.artist, authors: record.authors, length_ms: record.length_ms, image_descriptor: record.image_descriptor, terms };
                catalog.insert(MediaId(id), media);
            }
            p if p == SALE_PREFIX => {
                SaleRows::decode(&SaleRows::key_of(id)?, &value)?;
                sales += 1;
            }
            p if p == PREVIEW_MERCHANT_PREFIX => {
                preview_merchants.insert(PreviewId(utf8(id, "preview")?), utf8(&value, "merchant")?);
            }
            p if p == ENTRY_PREFIX => {
                let index = index_of(id, "royalty entry")?;
                let record: EntryRecord = decode_json(&value, "royalty entry", &index.to_string())?;
                if record.entry.index != index || record.entry.epoch != EPOCH {
                    return Err(format!("royalty entry {index} is stored as entry {} of epoch {}", record.entry.index, record.entry.epoch));
                }
                entries.insert(index, record);
            }
            p if p == TOTALS_PREFIX => {
                let (&byte, name) = id.split_first().ok_or("a totals key has no dimension")?;
                let dimension = dimension_of(byte).ok_or("a totals key has an unknown dimension")?;
                let name = utf8(name, "totals")?;
                let record: TotalsRecord = decode_json(&value, "totals line", &name)?;
                totals.insert((dimension, name), TotalsLine { deliveries: record.deliveries, previews: record.previews, amount_minor: record.amount_minor });
            }
            p if p == SEAL_PREFIX => {
                let index = index_of(id, "seal")?;
                let record: SealRecord = decode_json(&value, "seal", &index.to_string())?;
                let signature = hex::decode(&record.signature).map_err(|_| format!("seal {index} has a malformed signature"))?;
                let seal = RightsReportSealed {
                    epoch: record.epoch,
                    first_entry: record.first_entry,
                    last_entry: record.last_entry,
                    head_y: record.head_y,
                    head_z: record.head_z,
                    merkle_root: record.merkle_root,
                    totals_digest: record.totals_digest,
                    prev_seal_hash: record.prev_seal_hash,
                    engine_key_id: record.engine_key_id,
                    signature,
                    last_stream_seq: record.last_stream_seq,
                    stream_head: record.stream_head,
                };
                seals.insert(index, seal);
            }
            p if p == FAULT_PREFIX => {
                let index = index_of(id, "seal fault")?;
                let record: FaultRecord = decode_json(&value, "seal fault", &index.to_string())?;
                faults.insert(index, SealFault { seq: Seq(record.seq), first_entry: record.first_entry, last_entry: record.last_entry, reason: record.reason });
            }
            p if p == STREAM_HEAD_PREFIX => {
                let last = index_of(id, "stream head")?;
                let count = value.len() / STREAM_HEAD_BYTES;
                if value.is_empty() || value.len() % STREAM_HEAD_BYTES != 0 || count as u64 > STREAM_HEADS_PER_ROW || count as u64 > last {
                    return Err(format!("the stream heads ending at {last} are {} bytes", value.len()));
                }
                let first = last + 1 - count as u64;
                for (seq, head) in (first..=last).zip(value.chunks_exact(STREAM_HEAD_BYTES)) {
                    let head: [u8; 32] = head.try_into().expect("chunks_exact yields STREAM_HEAD_BYTES");
                    if heads.insert(seq, head).is_some() {
                        return Err(format!("two rows hold the stream head at {seq}"));
                    }
                }
                head_rows.push_back((first, last));
            }
            p if p == LEDGER_PREFIX => {
                let (currency, code, name): (String, u8, String) = decode_json(id, "ledger account", "key")?;
                let kind = crate::balances::kind_of_code(code).ok_or("a ledger account key has an unknown kind")?;
                let account = LedgerAccount::new(currency, kind, name);
                let record: LedgerRecord = decode_json(&value, "ledger account", &account.to_string())?;
                ledger.insert(account, record.balance_minor);
            }
            p if p == POINTS_PREFIX => {
                let id = utf8(id, "points account")?;
                let record: PointsRecord = decode_json(&value, "points account", &id)?;
                points.insert(AccountId(id), PointsBalance { balance: record.balance, held: record.held });
            }
            _ => return Err(format!("unknown key {:?}", String::from_utf8_lossy(&key))),
        }
    }
    if digest != record.content_digest {
        return Err("the state does not match the checkpoint's content digest (a value was altered, lost or left over)".into());
    }

    let entries = contiguous(entries, "royalty entry")?;
    let seals = contiguous(seals, "seal")?;
    let seal_faults = contiguous(faults, "seal fault")?;
    if record.events != record.last_seq {
        return Err(format!("the checkpoint counts {} events up to sequence {}", record.events, record.last_seq));
    }
    let stream_heads: VecDeque<(u64, [u8; 32])> = heads.into_iter().collect();
    let heads_contiguous = stream_heads.iter().zip(stream_heads.iter().skip(1)).all(|((a, _), (b, _))| a + 1 == *b);
    let heads_end = stream_heads.back().copied();
    let heads_ok = match heads_end {
        None => record.last_seq == 0,
        Some((seq, head)) => heads_contiguous && seq == record.last_seq && head == record.stream_head,
    };
    if !heads_ok {
        return Err("the stored stream heads do not end at the checkpoint".into());
    }
    let balances = Balances::from_parts(ledger, points);
    if balances.sum() != Some(0) {
        return Err("the stored settlement ledger does not sum to zero".into());
    }
    let entries_len = entries.len() as u64;
    if entries_len > record.usages || (record.chain_complete && entries_len != record.usages) {
        return Err(format!("{entries_len} royalty entries for {} usages", record.usages));
    }

    let mut royalty = RoyaltyLog {
        catalog,
        sales: Rows::stored(db.clone(), sales),
        previews: preview_merchants,
        usages: record.usages,
        totals,
        seals,
        seals_verified: record.seals_verified,
        seal_faults,
        ..RoyaltyLog::default()
    };
    for stored in entries {
        royalty.source_seqs.push(stored.source_seq);
        royalty.usage_digests.push(stored.usage_digest);
        royalty.entries.push(stored.entry);
    }
    let projections = Projections {
        last_seq: Seq(record.last_seq),
        events: record.events,
        stream_head: record.stream_head,
        stream_head_before: record.stream_head_before,
        stream_heads,
        vouchers: VoucherBook::stored(Rows::stored(db.clone(), vouchers), voucher_indexes, holds),
        allocation: Allocation::from_parts(nodes, Rows::stored(db.clone(), slot_vouchers), slot_previews, Rows::stored(db.clone(), released)),
        royalty,
        balances,
        tracked: false,
    };
    Ok(Stored { projections, record, head_rows })
}

// ---------------------------------------------------------------------------------------
// The store.

/// The writer's view of what is durable.
struct Writer {
    record: CheckpointRecord,
    entries: u64,
    seals: u64,
    faults: u64,
    /// The stored `sh/` rows, as (first, last) sequence, in order.
    head_rows: VecDeque<(u64, u64)>,
    /// Set after a failed commit: the store is behind the projections for good.
    failed: Option<String>,
}

impl Writer {
    fn of(stored: &Stored) -> Self {
        let royalty = &stored.projections.royalty;
        Writer {
            record: stored.record,
            entries: royalty.entries.len() as u64,
            seals: royalty.seals.len() as u64,
            faults: royalty.seal_faults.len() as u64,
            head_rows: stored.head_rows.clone(),
            failed: None,
        }
    }
}

/// One key of a commit.
enum Write {
    /// Insert or overwrite.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Insert a key known to be absent (the tail of an append-only sequence).
    Append { key: Vec<u8>, value: Vec<u8> },
    Remove { key: Vec<u8> },
}

/// One changed row, copied out of the projections: the new value, or `None` (`false`)
/// when the row is gone.
enum Change {
    Voucher(VoucherId, Option<VoucherRow>),
    Hold(Hold, bool),
    Node(NodeId, Option<NodeSlots>),
    SlotVoucher(VoucherId, Option<NodeId>),
    SlotPreview(PreviewId, Option<NodeId>),
    Released(VoucherId, bool),
    Catalog(MediaId, Option<MediaInfo>),
    Sale(VoucherId, Option<Sale>),
    PreviewMerchant(PreviewId, Option<String>),
    Totals((Dimension, String), Option<TotalsLine>),
    Entry(u64, Box<EntryRecord>),
    Seal(u64, Box<RightsReportSealed>),
    Fault(u64, SealFault),
    /// A new `sh/` row: its last sequence and its heads.
    StreamHeads(u64, Vec<u8>),
    /// The row ending at this sequence, rewritten without the heads a seal let go of.
    StreamHeadsTrimmed(u64, Vec<u8>),
    StreamHeadsGone(u64),
    Ledger(LedgerAccount, Option<i128>),
    Points(AccountId, Option<PointsBalance>),
}

impl Change {
    /// The key and value to store: the one place a changed row becomes bytes.
    fn write(self) -> Result<Write, CommitError> {
        fn put_or_remove(key: Vec<u8>, value: Option<Vec<u8>>) -> Write {
            match value {
                Some(value) => Write::Put { key, value },
                None => Write::Remove { key },
            }
        }
        let present = |present: bool| present.then(Vec::new);
        Ok(match self {
            Change::Voucher(id, row) => put_or_remove(key(VOUCHER_PREFIX, id.0.as_bytes()), row.as_ref().map(voucher_value).transpose()?),
            Change::Hold(hold, held) => put_or_remove(hold_key(&hold).map_err(CommitError::Storage)?, present(held)),
            Change::Node(id, node) => put_or_remove(key(NODE_PREFIX, id.0.as_bytes()), node.as_ref().map(node_value).transpose()?),
            Change::SlotVoucher(id, node) => put_or_remove(key(SLOT_VOUCHER_PREFIX, id.0.as_bytes()), node.map(|node| node.0.into_bytes())),
            Change::SlotPreview(id, node) => put_or_remove(key(SLOT_PREVIEW_PREFIX, id.0.as_bytes()), node.map(|node| node.0.into_bytes())),
            Change::Released(id, released) => put_or_remove(key(RELEASED_PREFIX, id.0.as_bytes()), present(released)),
            Change::Catalog(id, media) => put_or_remove(key(CATALOG_PREFIX, id.0.as_bytes()), media.as_ref().map(media_value).transpose()?),
            Change::Sale(id, sale) => put_or_remove(key(SALE_PREFIX, id.0.as_bytes()), sale.as_ref().map(sale_value).transpose()?),
            Change::PreviewMerchant(id, merchant) => put_or_remove(key(PREVIEW_MERCHANT_PREFIX, id.0.as_bytes()), merchant.map(String::into_bytes)),
            Change::Totals((dimension, name), line) => put_or_remove(totals_key(dimension, &name), line.as_ref().map(totals_value).transpose()?),
            Change::Entry(index, record) => Write::Append { key: index_key(ENTRY_PREFIX, index), value: json(&*record)? },
            Change::Seal(index, seal) => Write::Append { key: index_key(SEAL_PREFIX, index), value: seal_value(&seal)? },
            Change::Fault(index, fault) => Write::Append { key: index_key(FAULT_PREFIX, index), value: fault_value(&fault)? },
            Change::StreamHeads(last, heads) => Write::Append { key: index_key(STREAM_HEAD_PREFIX, last), value: heads },
            Change::StreamHeadsTrimmed(last, heads) => Write::Put { key: index_key(STREAM_HEAD_PREFIX, last), value: heads },
            Change::StreamHeadsGone(last) => Write::Remove { key: index_key(STREAM_HEAD_PREFIX, last) },
            Change::Ledger(account, balance) => {
                let value = balance.map(|balance_minor| json(&LedgerRecord { balance_minor })).transpose()?;
                put_or_remove(ledger_key(&account).map_err(CommitError::Storage)?, value)
            }
            Change::Points(id, points) => put_or_remove(key(POINTS_PREFIX, id.0.as_bytes()), points.as_ref().map(points_value).transpose()?),
        })
    }
}

/// A batch's changes, copied under the projections' lock and encoded and written without it.
pub(crate) struct Prepared {
    /// The checkpoint this batch builds on.
    base: Seq,
    changes: Vec<Change>,
    record: CheckpointRecord,
    entries: u64,
    seals: u64,
    faults: u64,
    head_rows: VecDeque<(u64, u64)>,
}

/// The durable projection store (module docs). One runner commits to it at a time.
pub struct ProjectionStore {
    db: sled::Db,
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// The state `open` decoded to check it, handed out by the first `load`.
    loaded: Mutex<Option<Projections>>,
}

/// Why `open_checked` did not open: refuse (leave the directory alone) or quarantine.
enum Refusal {
    Refuse(StoreError),
    Damaged(String),
}

impl std::fmt::Debug for ProjectionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl ProjectionStore {
    /// Opens (or creates) the store in `dir` and checks all of it: format marker,
    /// checkpoint, that every value decodes, and the content digest. A store that sled
    /// cannot open (or panics on) or that fails a check is quarantined (module docs) and
    /// a new, empty one is opened in its place. Never panics.
    ///
    /// A directory in use by another process, or a sled database that is not a projection
    /// store (e.g. the embedded event log), is refused and left untouched.
    pub fn open(dir: &Path) -> Result<(ProjectionStore, OpenOutcome), StoreError> {
        match Self::open_checked(dir) {
            Ok(opened) => Ok(opened),
            Err(Refusal::Refuse(error)) => Err(error),
            Err(Refusal::Damaged(reason)) => Self::quarantine_dir(dir, reason),
        }
    }

    /// Moves this store aside (as `open` does with a damaged one) and opens a new, empty
    /// store in its place: for a caller that must rebuild from sequence 1 (`LoadError`).
    pub fn quarantine(self, reason: &str) -> Result<(ProjectionStore, OpenOutcome), StoreError> {
        let dir = self.dir.clone();
        // sled releases the directory's lock when the last handle is dropped.
        drop(self);
        Self::quarantine_dir(&dir, reason.to_owned())
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last durable checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        self.lock_writer().record.checkpoint()
    }

    /// The stored state as `Projections` that note their changes for `commit`.
    ///
    /// The royalty chain: with `master`, a store whose chain was computed from sequence 1
    /// resumes it (`A_j` re-derived, checked against the newest entry's MAC: a different
    /// key is `MasterKeyMismatch`); a store built without the key cannot (its chain does
    /// not start at sequence 1: `ChainNotFromStart`, rebuild) unless it is still empty.
    /// Without `master` the chain is not computed and says it needs `A_0`; totals go on.
    pub fn load(&self, master: Option<&SecretKey>, engine_key: Option<RsaPublic>) -> Result<Projections, LoadError> {
        let taken = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let mut projections = match taken {
            Some(projections) => projections,
            None => self.read()?.projections,
        };
        let chain_complete = self.lock_writer().record.chain_complete;
        if let Some(master) = master {
            if projections.events == 0 {
                projections.royalty.chain = Some(Chain::start(master, EPOCH));
            } else if chain_complete {
                let chain = Chain::resume(master, EPOCH, projections.royalty.entries.last()).map_err(|fault| LoadError::MasterKeyMismatch(fault.to_string()))?;
                projections.royalty.chain = Some(chain);
            } else {
                return Err(LoadError::ChainNotFromStart);
            }
        } else if chain_complete && projections.royalty.usages > 0 {
            tracing::warn!(dir = %self.dir.display(), "projection store loaded without the royalty master key: the royalty chain stops here, and a later load with the key rebuilds from sequence 1");
        }
        projections.royalty.engine_key = engine_key;
        projections.track_changes();
        Ok(projections)
    }

    /// `Projections::digest()` of the stored state, read afresh: O(state), for tests and
    /// for an operator's check that the store reproduces the projections in memory.
    pub fn stored_digest(&self) -> Result<[u8; 32], LoadError> {
        Ok(self.read()?.projections.digest())
    }

    /// Writes what `projections` changed since the last commit, with the checkpoint, in one
    /// sled batch, and flushes. `projections` must come from this store's `load`.
    pub fn commit(&self, projections: &mut Projections) -> Result<Committed, CommitError> {
        let prepared = self.prepare(projections)?;
        let committed = self.write(prepared)?;
        Self::rows_committed(projections);
        Ok(committed)
    }

    /// After `write` stored a prepared batch: its rows of the kinds kept cold in sled
    /// (`Rows`) leave memory. Call under the projections' lock.
    pub(crate) fn rows_committed(projections: &mut Projections) {
        projections.vouchers.vouchers.rows_committed();
        projections.allocation.vouchers.rows_committed();
        projections.allocation.released.rows_committed();
        projections.royalty.sales.rows_committed();
    }

    /// After a rebuild in memory was committed whole: its rows of the kinds kept cold in
    /// sled leave memory, as if the projections had been loaded from the store.
    pub(crate) fn spill(&self, projections: &mut Projections) {
        projections.vouchers.vouchers.spill(&self.db);
        projections.allocation.vouchers.spill(&self.db);
        projections.allocation.released.spill(&self.db);
        projections.royalty.sales.spill(&self.db);
    }

    /// Empties the store in place, for projections rebuilt from sequence 1 beside it
    /// (`Live::rebuild`), whose next commit writes their whole state: every key removed,
    /// then the format marker and an empty checkpoint in one flushed batch. A crash in
    /// between leaves an empty directory, which the next `open` initialises (`Created`), so
    /// a rebuild from sequence 1 follows either way. Clears a failed commit's stop too.
    /// Blocking I/O.
    pub(crate) fn reset(&self) -> Result<(), CommitError> {
        let mut writer = self.lock_writer();
        let storage = |error: sled::Error| CommitError::Storage(error.to_string());
        self.db.clear().map_err(storage)?;
        let mut batch = sled::Batch::default();
        batch.insert(FORMAT_KEY, FORMAT_MARKER);
        batch.insert(CHECKPOINT_KEY, encode_checkpoint(&CheckpointRecord::empty())?);
        self.db.apply_batch(batch).map_err(storage)?;
        self.db.flush().map_err(|e| CommitError::FlushFailed(e.to_string()))?;
        *writer = Writer { record: CheckpointRecord::empty(), entries: 0, seals: 0, faults: 0, head_rows: VecDeque::new(), failed: None };
        *self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        tracing::warn!(dir = %self.dir.display(), "projection store emptied for a rebuild from sequence 1");
        Ok(())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic while holding the lock leaves `failed` or the old state: both safe to read.
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> Result<Stored, LoadError> {
        read_state(&self.db).map_err(LoadError::Inconsistent)
    }

    /// Copies what `projections` changed since the last commit and drains their change
    /// notes: cheap (no encoding, no I/O), so it runs under the projections' lock.
    pub(crate) fn prepare(&self, projections: &mut Projections) -> Result<Prepared, CommitError> {
        let writer = self.lock_writer();
        if let Some(reason) = &writer.failed {
            return Err(CommitError::Stopped(reason.clone()));
        }
        if !projections.tracked {
            return Err(CommitError::NotTracked);
        }
        let base = Seq(writer.record.last_seq);
        if projections.last_seq < base {
            return Err(CommitError::OutOfOrder { base: projections.last_seq, stored: base });
        }
        // Copies of what changed, taken under the projections' lock; encoding them (the
        // costly part) waits for `write`, which runs without it.
        let mut changes = Vec::new();
        let book = &mut projections.vouchers;
        for (id, row) in book.vouchers.take_changes()? {
            changes.push(Change::Voucher(id, row));
        }
        for hold in book.touched_holds.take() {
            let held = book.holds.contains(&hold);
            changes.push(Change::Hold(hold, held));
        }

        let allocation = &mut projections.allocation;
        for id in allocation.touched_nodes.take() {
            let node = allocation.nodes.get(&id).cloned();
            changes.push(Change::Node(id, node));
        }
        for (id, node) in allocation.vouchers.take_changes()? {
            changes.push(Change::SlotVoucher(id, node));
        }
        for id in allocation.touched_previews.take() {
            let node = allocation.previews.get(&id).cloned();
            changes.push(Change::SlotPreview(id, node));
        }
        for (id, released) in allocation.released.take_changes()? {
            changes.push(Change::Released(id, released.is_some()));
        }

        let royalty = &mut projections.royalty;
        for id in royalty.touched_catalog.take() {
            let media = royalty.catalog.get(&id).cloned();
            changes.push(Change::Catalog(id, media));
        }
        for (id, sale) in royalty.sales.take_changes()? {
            changes.push(Change::Sale(id, sale));
        }
        for id in royalty.touched_previews.take() {
            let merchant = royalty.previews.get(&id).cloned();
            changes.push(Change::PreviewMerchant(id, merchant));
        }
        for key in royalty.touched_totals.take() {
            let line = royalty.totals.get(&key).copied();
            changes.push(Change::Totals(key, line));
        }

        let balances = &mut projections.balances;
        for account in balances.touched_ledger.take() {
            let balance = balances.ledger.get(&account).copied();
            changes.push(Change::Ledger(account, balance));
        }
        for id in balances.touched_points.take() {
            let points = balances.points.get(&id).copied();
            changes.push(Change::Points(id, points));
        }

        // The append-only parts: their tails.
        let entries = royalty.entries.len() as u64;
        let stored_entries = usize::try_from(writer.entries).unwrap_or(usize::MAX);
        for (position, entry) in royalty.entries.iter().enumerate().skip(stored_entries) {
            let record = EntryRecord {
                entry: entry.clone(),
                source_seq: royalty.source_seqs.get(position).copied().unwrap_or(0),
                usage_digest: royalty.usage_digests.get(position).copied().unwrap_or([0; 32]),
            };
            changes.push(Change::Entry(position as u64, Box::new(record)));
        }
        let seals = royalty.seals.len() as u64;
        for (index, seal) in royalty.seals.iter().enumerate().skip(usize::try_from(writer.seals).unwrap_or(usize::MAX)) {
            changes.push(Change::Seal(index as u64, Box::new(seal.clone())));
        }
        let faults = royalty.seal_faults.len() as u64;
        for (index, fault) in royalty.seal_faults.iter().enumerate().skip(usize::try_from(writer.faults).unwrap_or(usize::MAX)) {
            changes.push(Change::Fault(index as u64, fault.clone()));
        }

        // Stream heads: the deque holds a contiguous range of sequences; remove the rows
        // that fell off its front whole, rewrite the one it now starts in, append rows for
        // what joined at its back. A row is written once, trimmed at most once per seal and
        // removed once, so this is amortized O(1) per event.
        let heads = &projections.stream_heads;
        let memory = heads.front().zip(heads.back()).map(|(front, back)| (front.0, back.0));
        let heads_between = |first: u64, last: u64| -> Vec<u8> {
            let front = memory.map_or(first, |(front, _)| front);
            let skip = usize::try_from(first - front).unwrap_or(usize::MAX);
            heads.range(skip.min(heads.len())..).take_while(|(seq, _)| *seq <= last).flat_map(|(_, head)| *head).collect()
        };
        let mut head_rows = writer.head_rows.clone();
        while let Some(&(first, last)) = head_rows.front() {
            match memory {
                Some((front, _)) if last >= front => {
                    if first < front {
                        changes.push(Change::StreamHeadsTrimmed(last, heads_between(front, last)));
                        head_rows[0] = (front, last);
                    }
                    break;
                }
                _ => {
                    changes.push(Change::StreamHeadsGone(last));
                    head_rows.pop_front();
                }
            }
        }
        if let Some((front, back)) = memory {
            let mut next = head_rows.back().map_or(front, |&(_, last)| last + 1).max(front);
            while next <= back {
                let last = back.min(next + STREAM_HEADS_PER_ROW - 1);
                changes.push(Change::StreamHeads(last, heads_between(next, last)));
                head_rows.push_back((next, last));
                next = last + 1;
            }
        }

        let record = CheckpointRecord {
            last_seq: projections.last_seq.0,
            events: projections.events,
            stream_head: projections.stream_head,
            stream_head_before: projections.stream_head_before,
            usages: royalty.usages,
            seals_verified: royalty.seals_verified,
            chain_complete: writer.record.chain_complete && royalty.chained(),
            content_digest: [0; 32],
        };
        Ok(Prepared { base, changes, record, entries, seals, faults, head_rows })
    }

    /// Writes a prepared batch and its checkpoint atomically and flushes (blocking I/O).
    pub(crate) fn write(&self, prepared: Prepared) -> Result<Committed, CommitError> {
        let mut writer = self.lock_writer();
        if let Some(reason) = &writer.failed {
            return Err(CommitError::Stopped(reason.clone()));
        }
        let stored = Seq(writer.record.last_seq);
        if prepared.base != stored {
            let error = CommitError::OutOfOrder { base: prepared.base, stored };
            writer.failed = Some(error.to_string());
            return Err(error);
        }
        let outcome = self.write_batch(&writer, prepared);
        match outcome {
            Ok((committed, record, lengths)) => {
                writer.record = record;
                (writer.entries, writer.seals, writer.faults, writer.head_rows) = lengths;
                Ok(committed)
            }
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, "projection store commit failed; refusing further commits until reopened");
                writer.failed = Some(error.to_string());
                Err(error)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn write_batch(&self, writer: &Writer, prepared: Prepared) -> Result<(Committed, CheckpointRecord, (u64, u64, u64, VecDeque<(u64, u64)>)), CommitError> {
        let storage = |error: sled::Error| CommitError::Storage(error.to_string());
        let mut digest = writer.record.content_digest;
        let mut batch = sled::Batch::default();
        let (mut keys_written, mut keys_removed) = (0, 0);
        for change in prepared.changes {
            match change.write()? {
                Write::Put { key, value } => {
                    if let Some(old) = self.db.get(&key).map_err(storage)? {
                        xor_into(&mut digest, &pair_hash(&key, &old));
                    }
                    xor_into(&mut digest, &pair_hash(&key, &value));
                    batch.insert(key, value);
                    keys_written += 1;
                }
                Write::Append { key, value } => {
                    xor_into(&mut digest, &pair_hash(&key, &value));
                    batch.insert(key, value);
                    keys_written += 1;
                }
                Write::Remove { key } => {
                    if let Some(old) = self.db.get(&key).map_err(storage)? {
                        xor_into(&mut digest, &pair_hash(&key, &old));
                        batch.remove(key);
                        keys_removed += 1;
                    }
                }
            }
        }
        let record = CheckpointRecord { content_digest: digest, ..prepared.record };
        batch.insert(CHECKPOINT_KEY, encode_checkpoint(&record)?);
        keys_written += 1;
        // One batch: sled applies all of it or none of it, also across a crash, so the
        // checkpoint always describes exactly the state stored with it.
        self.db.apply_batch(batch).map_err(storage)?;
        self.db.flush().map_err(|e| CommitError::FlushFailed(e.to_string()))?;
        let committed = Committed { checkpoint: record.checkpoint(), keys_written, keys_removed };
        Ok((committed, record, (prepared.entries, prepared.seals, prepared.faults, prepared.head_rows)))
    }

    fn open_checked(dir: &Path) -> Result<(ProjectionStore, OpenOutcome), Refusal> {
        // sled 0.34 has been reported to panic while recovering a damaged directory
        // (sled #1533), and reading a damaged page could too: neither may take the
        // process down.
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::open_unguarded(dir)));
        attempt.unwrap_or_else(|panic| Err(Refusal::Damaged(format!("sled panicked: {}", panic_message(panic.as_ref())))))
    }

    fn open_unguarded(dir: &Path) -> Result<(ProjectionStore, OpenOutcome), Refusal> {
        let path = dir.to_path_buf();
        let config = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES_MAX).use_compression(false).flush_every_ms(Some(BACKGROUND_FLUSH_INTERVAL_MS));
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(LOCK_WAIT_MS_MAX);
        let db = loop {
            match config.open().map_err(|error| classify_open_error(&path, error)) {
                Ok(db) => break db,
                Err(Refusal::Refuse(StoreError::Unavailable { .. })) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_INTERVAL_MS));
                }
                Err(refusal) => return Err(refusal),
            }
        };
        let damaged = |error: sled::Error| Refusal::Damaged(format!("sled: {error}"));
        let outcome = match db.get(FORMAT_KEY).map_err(damaged)? {
            Some(marker) if marker.as_ref() == FORMAT_MARKER => None,
            Some(marker) => return Err(Refusal::Damaged(format!("the format marker is {:?}, not {:?}", String::from_utf8_lossy(&marker), String::from_utf8_lossy(FORMAT_MARKER)))),
            None if db.get(CHECKPOINT_KEY).map_err(damaged)?.is_some() => return Err(Refusal::Damaged("the format marker is missing".into())),
            None if db.is_empty() => {
                // Marker and empty checkpoint in one flushed batch: a crash cannot leave a
                // half-initialised store.
                let mut batch = sled::Batch::default();
                batch.insert(FORMAT_KEY, FORMAT_MARKER);
                let checkpoint = encode_checkpoint(&CheckpointRecord::empty()).map_err(|e| Refusal::Damaged(e.to_string()))?;
                batch.insert(CHECKPOINT_KEY, checkpoint);
                db.apply_batch(batch).map_err(damaged)?;
                db.flush().map_err(damaged)?;
                Some(OpenOutcome::Created)
            }
            None => return Err(Refusal::Refuse(StoreError::Foreign { path })),
        };
        let stored = read_state(&db).map_err(Refusal::Damaged)?;
        let outcome = outcome.unwrap_or(OpenOutcome::Resumed { checkpoint: Seq(stored.record.last_seq) });
        let store = ProjectionStore { db, dir: path, writer: Mutex::new(Writer::of(&stored)), loaded: Mutex::new(Some(stored.projections)) };
        Ok((store, outcome))
    }

    fn quarantine_dir(dir: &Path, reason: String) -> Result<(ProjectionStore, OpenOutcome), StoreError> {
        let quarantine_error = |reason: String| StoreError::Quarantine { path: dir.to_path_buf(), reason };
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis());
        let name = dir.file_name().ok_or_else(|| quarantine_error("the path has no directory name".into()))?.to_string_lossy().into_owned();
        let mut path = dir.with_file_name(format!("{name}.quarantined-{unix_ms}"));
        // Two quarantines in one millisecond (a test, or a store damaged again at once).
        let mut attempt = 1;
        while path.exists() {
            path = dir.with_file_name(format!("{name}.quarantined-{unix_ms}-{attempt}"));
            attempt += 1;
        }
        std::fs::rename(dir, &path).map_err(|e| quarantine_error(e.to_string()))?;
        tracing::warn!(dir = %dir.display(), quarantined = %path.display(), %reason, "projection store quarantined; rebuilding from sequence 1");
        match Self::open_checked(dir) {
            Ok((store, _)) => Ok((store, OpenOutcome::Quarantined { path, reason })),
            Err(Refusal::Refuse(error)) => Err(error),
            Err(Refusal::Damaged(fresh)) => Err(StoreError::Storage { path: dir.to_path_buf(), reason: format!("a new store is damaged at once: {fresh}") }),
        }
    }
}

/// A directory in use or not accessible is refused; anything else sled cannot open is
/// treated as damage (quarantine), since sled reports corruption in several ways.
fn classify_open_error(path: &Path, error: sled::Error) -> Refusal {
    match &error {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied || io.to_string().contains("could not acquire lock") => {
            Refusal::Refuse(StoreError::Unavailable { path: path.to_path_buf(), reason: io.to_string() })
        }
        _ => Refusal::Damaged(format!("sled cannot open it: {error}")),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::crypto::test_keys;
    use engine::domain::event::{Event, MediaPublished, Payment, PreviewClip, ReservedItem};
    use engine::domain::{Actor, Recorded};
    use engine::log::StoredEvent;

    fn master() -> SecretKey {
        SecretKey::from_bytes([3; 32])
    }

    fn stored(seq: u64, event: Event) -> StoredEvent {
        let recorded = Recorded {
            event_id: [seq as u8; 16],
            aggregate: event.aggregate(),
            aggregate_version: 1,
            recorded_at: Millis(1_767_225_600_000 + seq as i64 * 40 * 86_400_000),
            request_id: format!("r{seq}"),
            actor: Actor::engine(),
            command: "Test".into(),
            event,
        };
        StoredEvent { seq: Seq(seq), subject: recorded.aggregate.subject(), payload: engine::wire::encode(&recorded).into() }
    }

    /// One of every kind of stored row: a scripted stream through the whole lifecycle, with
    /// points holds, settlement postings (points and merchant-paid, one refunded), a
    /// drained node, a preview and a signed seal.
    fn script() -> Vec<Event> {
        use engine::domain::event::LedgerAccountKind;
        use engine::domain::settlement::{settle, Payer, SaleLine};
        let voucher = |n: u32| VoucherId::new(format!("v{n}"));
        let split = RoyaltyTerms { retailer_bps: 3000, distributor_bps: 2000, owner_bps: 5000, distributor: "d".into(), owner: "o".into(), rights_agent: "agent".into() };
        let postings = |kind: LedgerAccountKind, payer: &str, merchant: &str| {
            settle(&Payer { kind, account: payer.into() }, merchant, &[SaleLine { price_minor: 250, terms: &split }])
        };
        let node = NodeId::new("n1");
        let media = MediaId::new("md1");
        let reserved = |n: u32, account: Option<&str>| Event::Reserved {
            voucher_id: voucher(n),
            merchant_id: MerchantId::new(format!("m{}", n % 2)),
            items: vec![ReservedItem { media_id: media.clone(), price_minor: 250 }],
            rendition: "high".into(),
            price_minor: 250,
            currency: "EUR".into(),
            expires_at: Millis(2_000_000_000_000 + i64::from(n)),
            payment: account.map_or(Payment::Merchant { payment_ref: "card".into() }, |account| Payment::Points { account: AccountId::new(account) }),
            token_key_id: 1,
            auth_generation: 1,
        };
        let delivered = |n: u32| Event::Delivered {
            voucher_id: voucher(n),
            node_id: node.clone(),
            media_id: media.clone(),
            cert_serial: engine::ids::CertSerial::new("c1"),
            content_hash: [4; 32],
            size_bytes: 10,
            voucher_complete: true,
        };
        vec![
            Event::NodeRegistered { node_id: node.clone(), region: "eu".into(), slots_max: 4, credential_hash: [1; 32] },
            Event::NodeRegistered { node_id: NodeId::new("n2"), region: "us".into(), slots_max: 2, credential_hash: [2; 32] },
            Event::MediaPublished(MediaPublished {
                media_id: media.clone(),
                publisher: "p".into(),
                title: "Song".into(),
                artist: "Artist".into(),
                authors: vec!["A".into(), "B".into()],
                length_ms: 1_000,
                price_minor: 250,
                currency: "EUR".into(),
                terms: RoyaltyTerms { retailer_bps: 1, distributor_bps: 2, owner_bps: 3, distributor: "d".into(), owner: "o".into(), rights_agent: "agent".into() },
                renditions: vec![],
                preview: PreviewClip::default(),
                image_descriptor: "cover".into(),
                for_sale: true,
                engine_key_id: String::new(),
                wrapped_media_key: vec![],
            }),
            Event::PointsCredited { account_id: AccountId::new("a1"), amount: 1_000, reason: "top-up".into() },
            Event::PointsHeld { account_id: AccountId::new("a1"), voucher_id: voucher(1), amount: 250, expires_at: Millis(5) },
            reserved(1, Some("a1")),
            reserved(2, None),
            reserved(3, None),
            Event::PointsHeld { account_id: AccountId::new("a1"), voucher_id: voucher(4), amount: 250, expires_at: Millis(6) },
            Event::Authorized { voucher_id: voucher(1), receipt_key_id: 1, receipt_generation: 1, postings: postings(LedgerAccountKind::ConsumerPoints, "a1", "m1") },
            Event::HoldPosted { account_id: AccountId::new("a1"), voucher_id: voucher(1), amount: 250 },
            Event::VoucherIssued { voucher_id: voucher(1), node_id: node.clone(), merchant_id: MerchantId::new("m1"), media_ids: vec![media.clone()], rendition: "high".into(), access_expires_at: Millis(9) },
            Event::Authorized { voucher_id: voucher(2), receipt_key_id: 1, receipt_generation: 1, postings: postings(LedgerAccountKind::MerchantClearing, "m0", "m0") },
            Event::VoucherIssued { voucher_id: voucher(2), node_id: node.clone(), merchant_id: MerchantId::new("m0"), media_ids: vec![media.clone()], rendition: "high".into(), access_expires_at: Millis(9) },
            delivered(1),
            Event::PreviewStarted { preview_id: PreviewId::new("p1"), media_id: media.clone(), node_id: NodeId::new("n2"), merchant_id: MerchantId::new("m0"), clip_ms: 10 },
            Event::PreviewStarted { preview_id: PreviewId::new("p2"), media_id: media.clone(), node_id: NodeId::new("n2"), merchant_id: MerchantId::new("m1"), clip_ms: 10 },
            Event::PreviewEnded { preview_id: PreviewId::new("p1"), played_ms: 7, media_id: media.clone(), node_id: NodeId::new("n2") },
            Event::NodeDrained { node_id: NodeId::new("n2") },
            Event::Voided { voucher_id: voucher(3), reason: engine::domain::event::VoidReason::TimedOut, reversal: vec![] },
            reserved(5, None),
            Event::Authorized { voucher_id: voucher(5), receipt_key_id: 1, receipt_generation: 1, postings: postings(LedgerAccountKind::MerchantClearing, "m1", "m1") },
            Event::Voided {
                voucher_id: voucher(5),
                reason: engine::domain::event::VoidReason::Refunded,
                reversal: engine::domain::voucher::reverse(&postings(LedgerAccountKind::MerchantClearing, "m1", "m1")),
            },
        ]
    }

    fn keyed() -> Projections {
        Projections::with_royalty_keys(&master(), Some(test_keys::fixed_rsa().public()))
    }

    /// Applies `events` to `projections` (and, when `seal`, a signed seal of the entries
    /// not sealed yet); returns the stored events, for applying elsewhere byte for byte
    /// (a seal's signature is randomized).
    fn apply_all(projections: &mut Projections, events: Vec<Event>, seal: bool) -> Vec<StoredEvent> {
        let mut applied = Vec::new();
        for event in events {
            applied.push(stored(projections.last_seq.0 + 1, event));
            projections.apply(applied.last().expect("just pushed")).expect("apply");
        }
        if seal {
            let mut seal = projections.unsigned_seal(1).expect("chained").expect("entries to seal");
            crate::royalty::sign_seal(&test_keys::fixed_rsa(), &mut seal).expect("sign");
            applied.push(stored(projections.last_seq.0 + 1, Event::RightsReportSealed(seal)));
            projections.apply(applied.last().expect("just pushed")).expect("apply the seal");
        }
        applied
    }

    fn apply_stored(projections: &mut Projections, events: &[StoredEvent]) {
        for event in events {
            projections.apply(event).expect("apply");
        }
    }

    #[track_caller]
    fn assert_identical(loaded: &Projections, memory: &Projections) {
        assert_eq!((loaded.last_seq, loaded.events, loaded.stream_head), (memory.last_seq, memory.events, memory.stream_head));
        assert_eq!(loaded.stream_heads, memory.stream_heads);
        assert_eq!(loaded.vouchers, memory.vouchers);
        assert_eq!(loaded.allocation, memory.allocation);
        assert_eq!(loaded.balances, memory.balances);
        assert_eq!(loaded.stream_head_before, memory.stream_head_before);
        let (l, m) = (&loaded.royalty, &memory.royalty);
        assert_eq!(l.catalog, m.catalog);
        assert_eq!(l.sales, m.sales);
        assert_eq!(l.previews, m.previews);
        assert_eq!((&l.entries, &l.source_seqs, &l.usage_digests), (&m.entries, &m.source_seqs, &m.usage_digests));
        assert_eq!((l.usages, &l.totals), (m.usages, &m.totals));
        assert_eq!((&l.seals, l.seals_verified, &l.seal_faults), (&m.seals, m.seals_verified, &m.seal_faults));
        assert_eq!(l.chain.as_ref().map(|c| (c.epoch(), c.next_index(), c.head_y())), m.chain.as_ref().map(|c| (c.epoch(), c.next_index(), c.head_y())));
        assert_eq!(loaded.digest(), memory.digest());
    }

    #[test]
    fn every_kind_of_row_round_trips() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut memory = keyed();
        {
            let (store, outcome) = ProjectionStore::open(dir.path()).expect("open");
            assert_eq!(outcome, OpenOutcome::Created);
            let mut projections = store.load(Some(&master()), Some(test_keys::fixed_rsa().public())).expect("load");
            // Two commits: the second rewrites and removes rows the first wrote.
            let events = script();
            let (first, second) = events.split_at(12);
            apply_stored(&mut projections, &apply_all(&mut memory, first.to_vec(), false));
            store.commit(&mut projections).expect("commit");
            apply_stored(&mut projections, &apply_all(&mut memory, second.to_vec(), true));
            let committed = store.commit(&mut projections).expect("commit");
            assert!(committed.keys_removed > 0, "holds, slots and stream heads were removed");
            assert!(projections.royalty.sales.is_stored() && projections.royalty.sales.resident() == 0, "committed sales leave memory");
            assert_identical(&projections, &memory);
        }
        assert_eq!(memory.royalty.seals_verified, 1);
        assert_eq!(memory.balances.sum(), Some(0));
        assert!(memory.balances.ledger.len() >= 6 && !memory.balances.points.is_empty(), "ledger and points rows: {:?}", memory.balances);
        assert!(memory.vouchers.holds.len() == 1 && memory.allocation.released.len() == 1, "a hold and a released slot remain");
        let (store, outcome) = ProjectionStore::open(dir.path()).expect("reopen");
        assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: memory.last_seq });
        let loaded = store.load(Some(&master()), Some(test_keys::fixed_rsa().public())).expect("load");
        assert_identical(&loaded, &memory);
        // Resumed, the chain continues exactly as the uninterrupted one.
        let (mut loaded, mut memory) = (loaded, memory);
        let more = vec![Event::PreviewEnded { preview_id: PreviewId::new("p2"), played_ms: 3, media_id: MediaId::new("md1"), node_id: NodeId::new("n2") }];
        apply_stored(&mut loaded, &apply_all(&mut memory, more, true));
        assert_identical(&loaded, &memory);
        assert_eq!(memory.royalty.seals_verified, 2);
    }

    /// The on-disk format, byte for byte: every key and value of a store that holds every
    /// kind of row, from a stream that gives the same bytes on every run (fixed clock and
    /// keys, the chain's fixed nonce, and a seal with a fixed signature, which does not
    /// verify, so that a seal fault is stored too). A change of this digest is a change of
    /// the format, which needs a new `FORMAT_MARKER` so that old stores are rebuilt rather
    /// than misread.
    #[test]
    fn the_stored_bytes_are_those_of_format_3() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (store, _) = ProjectionStore::open(dir.path()).expect("open");
        let mut projections = store.load(Some(&master()), Some(test_keys::fixed_rsa().public())).expect("load");
        let events = script();
        let (first, second) = events.split_at(12);
        apply_all(&mut projections, first.to_vec(), false);
        store.commit(&mut projections).expect("commit");
        apply_all(&mut projections, second.to_vec(), false);
        let mut seal = projections.unsigned_seal(1).expect("chained").expect("entries to seal");
        seal.engine_key_id = "k1".into();
        seal.signature = vec![0x5a; 8];
        apply_all(&mut projections, vec![Event::RightsReportSealed(seal)], false);
        store.commit(&mut projections).expect("commit");
        assert_eq!(projections.royalty.seal_faults.len(), 1, "the seal is stored with its fault");

        let mut hasher = blake3::Hasher::new();
        let mut dump = String::new();
        let mut prefixes = BTreeSet::new();
        for pair in store.db.iter() {
            let (key, value) = pair.expect("read");
            for part in [&key, &value] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            prefixes.insert(String::from_utf8_lossy(&key[..PREFIX_BYTES.min(key.len())]).into_owned());
            dump.push_str(&format!("{} = {}\n", hex::encode(&key), String::from_utf8_lossy(&value).escape_debug()));
        }
        let expected = ["@ch", "@fo", "an/", "ap/", "ar/", "av/", "bl/", "bp/", "rc/", "re/", "rf/", "rl/", "rp/", "rs/", "rt/", "sh/", "vh/", "vr/"];
        assert_eq!(prefixes, expected.into_iter().map(str::to_owned).collect(), "every kind of row is stored");
        assert_eq!(hex::encode(hasher.finalize().as_bytes()), "8c4aa95837102d059e850b42fedf5a5530276861ff5282bb432fda5609370309", "the stored bytes changed:\n{dump}");
    }

    #[test]
    fn a_seal_trims_the_stored_row_of_stream_heads_it_falls_in() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut memory = keyed();
        {
            let (store, _) = ProjectionStore::open(dir.path()).expect("open");
            let mut projections = store.load(Some(&master()), Some(test_keys::fixed_rsa().public())).expect("load");
            apply_stored(&mut projections, &apply_all(&mut memory, script(), false));
            store.commit(&mut projections).expect("commit");
            // The seal names the last stored event: the one row keeps only its head.
            apply_stored(&mut projections, &apply_all(&mut memory, vec![], true));
            store.commit(&mut projections).expect("commit");
            assert_eq!(memory.stream_heads.len(), 2, "the sealed position's head and the seal's");
            assert_eq!(store.lock_writer().head_rows.iter().map(|(first, last)| last - first + 1).sum::<u64>(), 2);
        }
        let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
        let loaded = store.load(Some(&master()), Some(test_keys::fixed_rsa().public())).expect("load");
        assert_identical(&loaded, &memory);
    }

    /// A seal must name a position whose head a replay still holds: not one before the
    /// previous seal's position (heads before it are let go), reported as such, not as an
    /// altered event.
    #[test]
    fn a_seal_naming_a_position_whose_head_is_gone_is_a_fault() {
        let mut memory = keyed();
        let history = apply_all(&mut memory, script(), true);
        let sealed_at = memory.royalty.seals.last().expect("sealed").last_stream_seq;
        let more = apply_all(&mut memory, vec![Event::PreviewEnded { preview_id: PreviewId::new("p2"), played_ms: 3, media_id: MediaId::new("md1"), node_id: NodeId::new("n2") }], false);
        // Negative control first: the same seal naming the projections' own position verifies.
        for (position, verifies) in [(None, true), (Some(sealed_at - 1), false)] {
            let mut seal = memory.unsigned_seal(1).expect("chained").expect("an entry to seal");
            if let Some(position) = position {
                seal.last_stream_seq = position;
            }
            crate::royalty::sign_seal(&test_keys::fixed_rsa(), &mut seal).expect("sign");
            let mut replay = keyed();
            for event in history.iter().chain(&more) {
                replay.apply(event).expect("apply");
            }
            replay.apply(&stored(memory.last_seq.0 + 1, Event::RightsReportSealed(seal))).expect("apply the seal");
            if verifies {
                assert_eq!((replay.royalty.seals_verified, replay.royalty.seal_faults.len()), (2, 0));
            } else {
                let fault = replay.royalty.seal_faults.last().expect("a seal fault");
                assert!(fault.reason.contains("no longer known"), "{}", fault.reason);
            }
        }
    }

    #[test]
    fn change_notes_are_inert_until_a_store_tracks_the_projections() {
        let mut memory = keyed();
        apply_all(&mut memory, script(), true);
        assert!(memory.vouchers.touched_holds.keys.is_empty() && memory.royalty.touched_totals.keys.is_empty(), "an in-memory replay keeps no change notes");
        memory.track_changes();
        apply_all(&mut memory, vec![Event::NodeDrained { node_id: NodeId::new("n1") }], false);
        assert_eq!(memory.allocation.touched_nodes.keys.len(), 1, "negative control: tracked projections do");
    }

    /// Builds a committed store from the script, then rewrites its checkpoint with `edit`
    /// applied (and a valid checksum), and reopens it.
    fn reopen_with_checkpoint(edit: impl FnOnce(&mut CheckpointRecord)) -> OpenOutcome {
        let dir = tempfile::tempdir().expect("temporary directory");
        {
            let (store, _) = ProjectionStore::open(dir.path()).expect("open");
            let mut projections = store.load(Some(&master()), None).expect("load");
            apply_all(&mut projections, script(), true);
            store.commit(&mut projections).expect("commit");
            let mut record = decode_checkpoint(&store.db.get(CHECKPOINT_KEY).expect("get").expect("checkpoint")).expect("decode");
            edit(&mut record);
            store.db.insert(CHECKPOINT_KEY, encode_checkpoint(&record).expect("encode")).expect("insert");
            store.db.flush().expect("flush");
        }
        let (_store, outcome) = ProjectionStore::open(dir.path()).expect("reopen");
        outcome
    }

    #[test]
    fn a_checkpoint_that_does_not_describe_the_state_is_quarantined() {
        // Negative control: rewriting the checkpoint unchanged keeps the store.
        assert!(matches!(reopen_with_checkpoint(|_| {}), OpenOutcome::Resumed { .. }));
        let wrong_digest = reopen_with_checkpoint(|record| record.content_digest[0] ^= 1);
        assert!(matches!(&wrong_digest, OpenOutcome::Quarantined { reason, .. } if reason.contains("content digest")), "{wrong_digest:?}");
        let ahead = reopen_with_checkpoint(|record| {
            record.last_seq += 1;
            record.events += 1;
        });
        assert!(matches!(&ahead, OpenOutcome::Quarantined { reason, .. } if reason.contains("stream heads")), "{ahead:?}");
        let counts = reopen_with_checkpoint(|record| record.events += 1);
        assert!(matches!(counts, OpenOutcome::Quarantined { .. }), "{counts:?}");
        let usages = reopen_with_checkpoint(|record| record.usages += 1);
        assert!(matches!(&usages, OpenOutcome::Quarantined { reason, .. } if reason.contains("usages")), "{usages:?}");
    }

    #[test]
    fn a_stored_ledger_that_does_not_sum_to_zero_is_quarantined() {
        // Rewrites one ledger row and the checkpoint's content digest to match, so that
        // only the ledger check can see it; unchanged (`delta` 0) it is the negative control.
        let reopen_with_ledger_delta = |delta: i128| {
            let dir = tempfile::tempdir().expect("temporary directory");
            // A store below the temporary directory, so that its quarantine stays in it.
            let path = dir.path().join("store");
            {
                let (store, _) = ProjectionStore::open(&path).expect("open");
                let mut projections = store.load(None, None).expect("load");
                apply_all(&mut projections, script(), false);
                store.commit(&mut projections).expect("commit");
                let (key, old) = store.db.scan_prefix(LEDGER_PREFIX).next().expect("a ledger row").expect("read");
                let mut record: LedgerRecord = serde_json::from_slice(&old).expect("decode");
                record.balance_minor += delta;
                let new = serde_json::to_vec(&record).expect("encode");
                let mut checkpoint = decode_checkpoint(&store.db.get(CHECKPOINT_KEY).expect("get").expect("checkpoint")).expect("decode");
                xor_into(&mut checkpoint.content_digest, &pair_hash(&key, &old));
                xor_into(&mut checkpoint.content_digest, &pair_hash(&key, &new));
                store.db.insert(&key, new).expect("insert");
                store.db.insert(CHECKPOINT_KEY, encode_checkpoint(&checkpoint).expect("encode")).expect("insert");
                store.db.flush().expect("flush");
            }
            let (_store, outcome) = ProjectionStore::open(&path).expect("reopen");
            outcome
        };
        assert!(matches!(reopen_with_ledger_delta(0), OpenOutcome::Resumed { .. }));
        let outcome = reopen_with_ledger_delta(1);
        assert!(matches!(&outcome, OpenOutcome::Quarantined { reason, .. } if reason.contains("does not sum to zero")), "{outcome:?}");
    }

    #[test]
    fn a_store_of_format_1_is_quarantined_and_rebuilt() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store");
        {
            let (store, _) = ProjectionStore::open(&path).expect("open");
            let mut projections = store.load(None, None).expect("load");
            apply_all(&mut projections, script(), false);
            store.commit(&mut projections).expect("commit");
            // What a format-1 store was: no balance rows, the old marker.
            for key in store.db.scan_prefix(LEDGER_PREFIX).keys().chain(store.db.scan_prefix(POINTS_PREFIX).keys()).collect::<Vec<_>>() {
                store.db.remove(key.expect("key")).expect("remove");
            }
            store.db.insert(FORMAT_KEY, &b"vouchsafe-projection-store/1"[..]).expect("insert");
            store.db.flush().expect("flush");
        }
        let (store, outcome) = ProjectionStore::open(&path).expect("reopen");
        assert!(matches!(&outcome, OpenOutcome::Quarantined { reason, .. } if reason.contains("format marker")), "{outcome:?}");
        assert_eq!(store.checkpoint().last_seq, Seq(0), "rebuilt from sequence 1");
    }

    #[test]
    fn an_altered_value_that_still_decodes_is_caught_by_the_content_digest() {
        let dir = tempfile::tempdir().expect("temporary directory");
        {
            let (store, _) = ProjectionStore::open(dir.path()).expect("open");
            let mut projections = store.load(None, None).expect("load");
            apply_all(&mut projections, script(), false);
            store.commit(&mut projections).expect("commit");
            let key = key(NODE_PREFIX, b"n1");
            let mut node: NodeRecord = serde_json::from_slice(&store.db.get(&key).expect("get").expect("node")).expect("decode");
            node.slots_max += 1;
            store.db.insert(key, serde_json::to_vec(&node).expect("encode")).expect("insert");
            store.db.flush().expect("flush");
        }
        let (_store, outcome) = ProjectionStore::open(dir.path()).expect("reopen");
        assert!(matches!(&outcome, OpenOutcome::Quarantined { reason, .. } if reason.contains("content digest")), "{outcome:?}");
    }

    #[test]
    fn a_failed_commit_stops_the_store_until_it_is_reopened() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (store, _) = ProjectionStore::open(dir.path()).expect("open");
        let mut projections = store.load(None, None).expect("load");
        apply_all(&mut projections, script(), false);
        let prepared = store.prepare(&mut projections).expect("prepare");
        // A batch built on another checkpoint (a second runner) is refused, and so is
        // everything after it: the projections in memory are ahead of the store for good.
        let stale = Prepared { base: Seq(99), ..prepared };
        assert!(matches!(store.write(stale), Err(CommitError::OutOfOrder { .. })));
        assert!(matches!(store.commit(&mut projections), Err(CommitError::Stopped(_))));
        // Loaded projections read their cold rows from the store, so they hold it open too.
        drop((store, projections));
        let (store, outcome) = ProjectionStore::open(dir.path()).expect("reopen");
        assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(0) }, "nothing was stored");
        drop(store);
    }

    #[test]
    fn a_resumed_chain_continues_the_uninterrupted_one() {
        let entry = |n: u64| crate::royalty::Entry {
            kind: crate::royalty::UsageKind::Delivery,
            source_seq: n,
            timestamp_ms: 0,
            title: String::new(),
            artist: String::new(),
            authors: vec![],
            length_ms: 0,
            sale_price_minor: n,
            currency: String::new(),
            consumer_cert: String::new(),
            voucher_id: String::new(),
            media_id: String::new(),
            image_descriptor: String::new(),
            merchant: String::new(),
            rights_agent: String::new(),
            distributor: String::new(),
            owner: String::new(),
            played_ms: 0,
        };
        let mut chain = Chain::start(&master(), EPOCH);
        let entries: Vec<ChainedEntry> = (0..5).map(|n| chain.append(&entry(n))).collect();
        let mut resumed = Chain::resume(&master(), EPOCH, entries.last()).expect("the right key");
        assert_eq!((resumed.next_index(), resumed.head_y()), (chain.next_index(), chain.head_y()));
        assert_eq!(resumed.append(&entry(5)), chain.append(&entry(5)), "the same next entry: the same A_5");
        assert!(Chain::resume(&SecretKey::from_bytes([4; 32]), EPOCH, entries.last()).is_err(), "another master key");
        assert!(Chain::resume(&master(), EPOCH + 1, entries.last()).is_err(), "another epoch");
    }
}
