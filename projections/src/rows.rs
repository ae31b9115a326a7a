//! The row machinery the projections and the projection store share, knowing no projection:
//! `Rows`, a map of rows that grow with the number of vouchers, kept in memory or cold in
//! the store's sled database; `RowKind`, what a kind of row must say (its key prefix and
//! its one conversion to and from bytes); `Touched`, the keys a projection changed since
//! the store last committed it; `RowError`, why a row cannot be read back or written; and
//! the small helpers every storage format uses (keys, ids, JSON).
//!
//! What lives elsewhere: each projection's storage format (its prefixes, its `*Record`
//! types and row kinds, in the projection's `format` module), and the store itself (open,
//! checks, quarantine, commit: `store`). This module imports neither, so the dependency
//! runs one way: rows, then each projection with its format, then the store.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Bytes of every state key's prefix (`vr/`, `an/`, ...).
pub const PREFIX_BYTES: usize = 3;

/// A state key's prefix: which kind of row the key holds.
pub type Prefix = [u8; PREFIX_BYTES];

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

    /// The keys noted since the last call, for a commit.
    pub(crate) fn take(&mut self) -> BTreeSet<K> {
        std::mem::take(&mut self.keys)
    }

    /// How many keys are noted (for the tests that in-memory replays note none).
    #[cfg(test)]
    pub(crate) fn noted(&self) -> usize {
        self.keys.len()
    }
}

// ---------------------------------------------------------------------------------------
// Errors.

/// Why a stored row cannot be read back, or a row cannot be encoded. `kind` names the kind
/// of row (as an operator would: "voucher row", "seal"), `id` the row's id as text. The
/// cause, where there is one, is the `source()`; `Causes` states the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("sled cannot read a projection row")]
    Read(#[source] sled::Error),
    #[error("a {kind} id is not UTF-8")]
    NotUtf8 {
        kind: &'static str,
        #[source]
        source: std::string::FromUtf8Error,
    },
    #[error("a {kind} key is not {expected}")]
    Key { kind: &'static str, expected: &'static str },
    #[error("the {kind} {id:?} does not decode")]
    Json {
        kind: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the {kind} {id:?} has a malformed {field}")]
    Hex {
        kind: &'static str,
        id: String,
        field: &'static str,
        #[source]
        source: hex::FromHexError,
    },
    #[error("the {kind} {id:?} has an unknown {field} {value}")]
    Unknown { kind: &'static str, id: String, field: &'static str, value: String },
    /// A row whose presence is all it says (a hold, a released slot) carries bytes.
    #[error("the {kind} {id:?} carries a value")]
    Value { kind: &'static str, id: String },
    /// An index stored beside its rows (the lapse index) that does not hold exactly the
    /// keys its rows call for.
    #[error("the {kind} holds {stored} rows, not the {expected} its rows call for (or other ones)")]
    IndexMismatch { kind: &'static str, stored: u64, expected: u64 },
    /// A row of a numbered sequence (entries) that should be there and is not.
    #[error("the {kind} {id} is missing")]
    Missing { kind: &'static str, id: String },
    #[error("the {kind} {id:?} is stored as {stored}")]
    Misplaced { kind: &'static str, id: String, stored: String },
    /// Rows numbered by index (entries, seals, faults) that are not exactly 0..len.
    #[error("the {kind}s are not numbered 0..{len} (the last is {last})")]
    Gaps { kind: &'static str, len: u64, last: u64 },
    #[error("encoding a {kind} failed")]
    Encode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// An error and its causes (its `source()`s), joined by ": ", on one line. The store's
/// errors reach operators as text alone (a quarantine reason, a log field, the public
/// errors' `Display`), so that text has to carry the whole chain.
pub(crate) struct Causes<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Rows that grow with the number of vouchers: in memory, or cold in the store.

/// One kind of row that grows with the number of vouchers (voucher rows, slot holders,
/// released slots, sales): its key prefix and its one conversion to and from bytes, the
/// same bytes a commit stores and the store's open-time check reads back.
pub trait RowKind {
    type Key: Ord + std::hash::Hash + Clone + std::fmt::Debug;
    type Value: Clone + PartialEq + std::fmt::Debug;
    const PREFIX: &'static Prefix;
    fn key_bytes(key: &Self::Key) -> &[u8];
    fn key_of(id: &[u8]) -> Result<Self::Key, RowError>;
    fn encode(value: &Self::Value) -> Result<Vec<u8>, RowError>;
    fn decode(key: &Self::Key, bytes: &[u8]) -> Result<Self::Value, RowError>;
    /// Kept ordered in memory too (a `BTreeMap`), for kinds read in ranges (`range_from`):
    /// the read indexes. Other kinds keep a `HashMap` (module docs of `Rows`).
    const ORDERED: bool = false;
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
    Memory { rows: MemoryRows<R::Key, R::Value>, touched: Touched<R::Key> },
    Stored(StoredRows<R>),
}

/// Rows in memory: hashed (most kinds), or ordered (`RowKind::ORDERED`, read in ranges).
#[derive(Clone)]
enum MemoryRows<K, V> {
    Hashed(HashMap<K, V>),
    Ordered(BTreeMap<K, V>),
}

impl<K: Ord + std::hash::Hash, V> MemoryRows<K, V> {
    fn new(ordered: bool) -> Self {
        if ordered { MemoryRows::Ordered(BTreeMap::new()) } else { MemoryRows::Hashed(HashMap::new()) }
    }

    fn get(&self, key: &K) -> Option<&V> {
        match self {
            MemoryRows::Hashed(rows) => rows.get(key),
            MemoryRows::Ordered(rows) => rows.get(key),
        }
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            MemoryRows::Hashed(rows) => rows.get_mut(key),
            MemoryRows::Ordered(rows) => rows.get_mut(key),
        }
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            MemoryRows::Hashed(rows) => rows.insert(key, value),
            MemoryRows::Ordered(rows) => rows.insert(key, value),
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            MemoryRows::Hashed(rows) => rows.remove(key),
            MemoryRows::Ordered(rows) => rows.remove(key),
        }
    }

    fn len(&self) -> usize {
        match self {
            MemoryRows::Hashed(rows) => rows.len(),
            MemoryRows::Ordered(rows) => rows.len(),
        }
    }

    /// The rows from `start` on (all with `None`), in key order: a hashed map is sorted
    /// first (O(rows)), an ordered one is read from `start` (O(log rows) to begin).
    fn sorted_from(&self, start: Option<&K>) -> Vec<(&K, &V)> {
        match self {
            MemoryRows::Hashed(rows) => {
                let mut sorted: Vec<(&K, &V)> = rows.iter().filter(|(key, _)| start.is_none_or(|start| *key >= start)).collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                sorted
            }
            MemoryRows::Ordered(rows) => match start {
                Some(start) => rows.range(start..).collect(),
                None => rows.iter().collect(),
            },
        }
    }

    fn ordered_from<'a>(&'a self, start: &'a K) -> Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a> {
        match self {
            MemoryRows::Hashed(_) => Box::new(self.sorted_from(Some(start)).into_iter()),
            MemoryRows::Ordered(rows) => Box::new(rows.range(start..)),
        }
    }
}

struct StoredRows<R: RowKind> {
    db: sled::Db,
    /// Rows changed since the last `prepare` (`None`: removed).
    dirty: BTreeMap<R::Key, Option<R::Value>>,
    /// Rows of the batch `prepare` took and `write` is storing, until `rows_committed`.
    committing: BTreeMap<R::Key, Option<R::Value>>,
    len: usize,
    /// The first row that could not be read or decoded: the next `prepare` fails with it,
    /// which stops the store (a reopen resumes from the last good checkpoint). Shared, as
    /// a stored copy shares everything else it has of the store.
    fault: Option<Arc<RowError>>,
}

impl<R: RowKind> Default for Rows<R> {
    fn default() -> Self {
        Rows { inner: RowsInner::Memory { rows: MemoryRows::new(R::ORDERED), touched: Touched::default() } }
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
            RowsInner::Memory { rows, .. } => f.debug_map().entries(rows.sorted_from(None)).finish(),
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
        let mut memory = MemoryRows::new(R::ORDERED);
        for (key, value) in rows {
            memory.insert(key, value);
        }
        Rows { inner: RowsInner::Memory { rows: memory, touched: Touched::default() } }
    }
}

impl<R: RowKind> Rows<R> {
    /// Rows kept in sled (`db`), of which `len` are stored; none is in memory.
    pub(crate) fn stored(db: sled::Db, len: usize) -> Self {
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
                Err(error) => {
                    tracing::error!(reason = %Causes(&error), "a projection row in the store cannot be read");
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
                    stored.replace(key.clone(), Some(row), true);
                    true
                }
                Ok(None) => false,
                Err(error) => {
                    stored.fault.get_or_insert(Arc::new(error));
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

    /// Sets the row of `key`, which the caller knows is absent (an index kept in step with
    /// other rows): stored, no read of sled to find out.
    pub fn insert_absent(&mut self, key: R::Key, value: R::Value) {
        match &mut self.inner {
            RowsInner::Memory { rows, touched } => {
                touched.touch(&key);
                rows.insert(key, value);
            }
            RowsInner::Stored(stored) => stored.replace(key, Some(value), false),
        }
    }

    /// Removes the row of `key`, which the caller knows is present (as `insert_absent`).
    pub fn remove_present(&mut self, key: &R::Key) {
        match &mut self.inner {
            RowsInner::Memory { rows, touched } => {
                if rows.remove(key).is_some() {
                    touched.touch(key);
                }
            }
            RowsInner::Stored(stored) => stored.replace(key.clone(), None, true),
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
                Ok(Some(old)) => {
                    stored.replace(key.clone(), None, true);
                    Some(old)
                }
                Ok(None) => None,
                Err(error) => {
                    stored.fault.get_or_insert(Arc::new(error));
                    None
                }
            },
        }
    }

    /// Every row in key order (in memory: sorted first; stored: sled's rows overlaid with
    /// the uncommitted ones).
    pub fn iter(&self) -> Box<dyn Iterator<Item = (R::Key, R::Value)> + '_> {
        match &self.inner {
            RowsInner::Memory { rows, .. } => Box::new(rows.sorted_from(None).into_iter().map(|(key, value)| (key.clone(), value.clone()))),
            RowsInner::Stored(stored) => Box::new(stored.iter(None)),
        }
    }

    /// The rows from `start` on, in key order: what a paged read walks. Ordered kinds
    /// (`RowKind::ORDERED`) start there at once, in memory and in sled alike; a hashed kind
    /// in memory is sorted first.
    pub fn range_from<'a>(&'a self, start: &'a R::Key) -> Box<dyn Iterator<Item = (R::Key, R::Value)> + 'a> {
        match &self.inner {
            RowsInner::Memory { rows, .. } => Box::new(rows.ordered_from(start).map(|(key, value)| (key.clone(), value.clone()))),
            RowsInner::Stored(stored) => Box::new(stored.iter(Some(start))),
        }
    }

    /// Starts noting changed keys (in memory; stored rows always know theirs).
    pub(crate) fn track_changes(&mut self) {
        if let RowsInner::Memory { touched, .. } = &mut self.inner {
            touched.start();
        }
    }

    /// The rows changed since the last call, with their new values (`None`: removed), for
    /// a commit; stored, they stay readable from memory until `rows_committed`. Fails with
    /// the first stored row that could not be read since the last commit.
    pub(crate) fn take_changes(&mut self) -> Result<Changed<R>, Arc<RowError>> {
        match &mut self.inner {
            RowsInner::Memory { rows, touched } => Ok(touched
                .take()
                .into_iter()
                .map(|key| {
                    let value = rows.get(&key).cloned();
                    (key, value)
                })
                .collect()),
            RowsInner::Stored(stored) => {
                if let Some(fault) = &stored.fault {
                    return Err(Arc::clone(fault));
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

/// Rows changed since the last commit, with their new values (`None`: removed).
pub(crate) type Changed<R> = Vec<(<R as RowKind>::Key, Option<<R as RowKind>::Value>)>;

impl<R: RowKind> StoredRows<R> {
    fn sled_key(key: &R::Key) -> Vec<u8> {
        [&R::PREFIX[..], R::key_bytes(key)].concat()
    }

    fn read(&self, key: &R::Key) -> Result<Option<R::Value>, RowError> {
        if let Some(value) = self.dirty.get(key).or_else(|| self.committing.get(key)) {
            return Ok(value.clone());
        }
        match self.db.get(Self::sled_key(key)).map_err(RowError::Read)? {
            Some(bytes) => R::decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets (or with `None` removes) the row of `key`; returns the previous one.
    fn set(&mut self, key: R::Key, value: Option<R::Value>) -> Option<R::Value> {
        let old = match self.read(&key) {
            Ok(old) => old,
            Err(error) => {
                self.fault.get_or_insert(Arc::new(error));
                None
            }
        };
        self.replace(key, value, old.is_some());
        old
    }

    /// As `set`, knowing whether there was a row (read already, not read again).
    fn replace(&mut self, key: R::Key, value: Option<R::Value>, existed: bool) {
        match (existed, &value) {
            (false, Some(_)) => self.len += 1,
            (true, None) => self.len -= 1,
            _ => {}
        }
        self.dirty.insert(key, value);
    }

    /// sled's rows of this kind merged with the uncommitted ones, in key order, from
    /// `start` on (all with `None`). A row that cannot be read ends the iteration early (and
    /// is logged): the digest then differs, which is how a damaged store shows.
    fn iter<'a>(&'a self, start: Option<&'a R::Key>) -> impl Iterator<Item = (R::Key, R::Value)> + 'a {
        let overlay: BTreeMap<&R::Key, &Option<R::Value>> = match start {
            Some(start) => self.committing.range(start..).chain(self.dirty.range(start..)).collect(),
            None => self.committing.iter().chain(self.dirty.iter()).collect(),
        };
        let mut overlay = overlay.into_iter().peekable();
        // Every key of this kind from `start`: up to the prefix's successor (prefixes end
        // in '/', so the successor differs in the last byte only).
        let low = match start {
            Some(start) => Self::sled_key(start),
            None => R::PREFIX.to_vec(),
        };
        let mut high = R::PREFIX.to_vec();
        high[PREFIX_BYTES - 1] += 1;
        let mut stored = self
            .db
            .range(low..high)
            .map(|pair| {
                let (key, value) = pair.map_err(RowError::Read)?;
                let key = R::key_of(&key[PREFIX_BYTES..])?;
                Ok::<_, RowError>((key, value))
            })
            .peekable();
        let mut failed = false;
        std::iter::from_fn(move || {
            loop {
                if failed {
                    return None;
                }
                let next_stored = match stored.peek() {
                    Some(Ok((key, _))) => Some(key),
                    Some(Err(error)) => {
                        tracing::error!(reason = %Causes(error), "a projection row in the store cannot be read");
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
                    Err(error) => {
                        tracing::error!(reason = %Causes(&error), "a projection row in the store does not decode");
                        failed = true;
                        return None;
                    }
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// What a commit writes, and the helpers every storage format uses.

/// One key of a commit, as a storage format hands it to the store.
pub(crate) enum RowWrite {
    /// Insert or overwrite.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Insert a key known to be absent (the tail of an append-only sequence).
    Append {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Remove {
        key: Vec<u8>,
    },
}

impl RowWrite {
    /// A put of `value`, or with `None` the removal of `key`.
    pub(crate) fn put_or_remove(key: Vec<u8>, value: Option<Vec<u8>>) -> RowWrite {
        match value {
            Some(value) => RowWrite::Put { key, value },
            None => RowWrite::Remove { key },
        }
    }

    /// A put of an empty value (a row whose presence is all it says), or the removal.
    pub(crate) fn present_or_remove(key: Vec<u8>, present: bool) -> RowWrite {
        RowWrite::put_or_remove(key, present.then(Vec::new))
    }
}

/// The state key of `id` under `prefix`.
pub(crate) fn key(prefix: &Prefix, id: &[u8]) -> Vec<u8> {
    [&prefix[..], id].concat()
}

/// The state key of an index (big-endian, so that key order is index order).
pub(crate) fn index_key(prefix: &Prefix, index: u64) -> Vec<u8> {
    key(prefix, &index.to_be_bytes())
}

/// The index an `index_key` holds; `kind` names the row in the error.
pub(crate) fn index_of(id: &[u8], kind: &'static str) -> Result<u64, RowError> {
    let bytes: [u8; 8] = id.try_into().map_err(|_| RowError::Key { kind, expected: "8 bytes" })?;
    Ok(u64::from_be_bytes(bytes))
}

/// An id stored as its UTF-8 bytes.
pub(crate) fn utf8(bytes: &[u8], kind: &'static str) -> Result<String, RowError> {
    String::from_utf8(bytes.to_vec()).map_err(|source| RowError::NotUtf8 { kind, source })
}

/// The JSON encoding of a stored value (or of a key's parts).
pub(crate) fn json<T: Serialize>(value: &T, kind: &'static str) -> Result<Vec<u8>, RowError> {
    serde_json::to_vec(value).map_err(|source| RowError::Encode { kind, source })
}

/// A stored JSON value (or key); `kind` and `id` name the row in the error.
pub(crate) fn decode_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], kind: &'static str, id: &str) -> Result<T, RowError> {
    serde_json::from_slice(bytes).map_err(|source| RowError::Json { kind, id: id.to_owned(), source })
}

/// Checks that `map`'s keys are exactly 0..len and returns its values in order.
pub(crate) fn contiguous<T>(map: BTreeMap<u64, T>, kind: &'static str) -> Result<Vec<T>, RowError> {
    let len = map.len() as u64;
    if let Some((&last, _)) = map.iter().next_back()
        && last + 1 != len
    {
        return Err(RowError::Gaps { kind, len, last });
    }
    Ok(map.into_values().collect())
}

/// A row kind keyed by voucher id (its key bytes are the id's): the `RowKind` items a
/// format declares this way.
macro_rules! keyed_by_voucher {
    () => {
        type Key = engine::ids::VoucherId;
        fn key_bytes(key: &engine::ids::VoucherId) -> &[u8] {
            key.0.as_bytes()
        }
        fn key_of(id: &[u8]) -> Result<engine::ids::VoucherId, $crate::rows::RowError> {
            Ok(engine::ids::VoucherId($crate::rows::utf8(id, "voucher")?))
        }
    };
}
pub(crate) use keyed_by_voucher;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_states_the_whole_chain() {
        let source = serde_json::from_slice::<u8>(b"x").expect_err("not JSON");
        let expected = format!("the voucher row \"v1\" does not decode: {source}");
        let error = RowError::Json { kind: "voucher row", id: "v1".into(), source };
        assert_eq!(Causes(&error).to_string(), expected);
        assert_eq!(error.to_string(), "the voucher row \"v1\" does not decode", "the cause is the source, not in the text");
    }

    #[test]
    fn index_keys_order_as_their_indexes_and_read_back() {
        let prefix = b"xx/";
        assert!(index_key(prefix, 255) < index_key(prefix, 256));
        assert_eq!(index_of(&index_key(prefix, 7)[PREFIX_BYTES..], "row").expect("8 bytes"), 7);
        assert!(matches!(index_of(b"short", "row"), Err(RowError::Key { .. })));
        assert!(matches!(contiguous(BTreeMap::from([(0, 'a'), (2, 'b')]), "row"), Err(RowError::Gaps { len: 2, last: 2, .. })));
    }
}
