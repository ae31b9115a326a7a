//! The royalty log's chained entries, each with what the log keeps beside it (its key
//! commitment, its source event's sequence, the usage digest after it): in memory for
//! replays and audits; backed by the projection store, only the entries a seal or a commit
//! still needs stay in memory, and the others are read back from their `re/` rows.
//!
//! What stays resident when stored: the entries not committed yet, and of the entries not
//! sealed yet what a seal needs (`SealPart`: `Y`, `Z` and the usage digest, 96 bytes, not
//! the ciphertext): a seal is built from, and checked against, the entries since the last
//! seal under the projections' lock, so that is never a sled read. Whole entries are read
//! from sled when asked (`get`, `range`, `iter`, `detached`): exports, the tiles'
//! publisher (outside the lock), a chain resumed at start-up. Memory thus follows the
//! entries between two commits and (at 96 bytes each) two seals; what still grows with the
//! log's length is its tree (`RoyaltyLog::tree`, about 64 bytes an entry) and its seals.

use super::format::{ENTRY_PREFIX, EntryRecord};
use crate::rows::{Causes, RowError, decode_json, index_key, index_of};
use crate::royalty::ChainedEntry;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// One chained entry and what the log keeps beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEntry {
    pub chained: ChainedEntry,
    /// The entry key's commitment (what its tree leaf holds beside `Y`, `Z`).
    pub commitment: [u8; 32],
    /// Stream sequence of the entry's source event.
    pub source_seq: u64,
    /// The usage digest after this entry (what a seal's `totals_digest` commits to).
    pub usage_digest: [u8; 32],
}

impl LoggedEntry {
    pub(crate) fn of_record(record: EntryRecord) -> Self {
        LoggedEntry { chained: record.entry, commitment: record.commitment, source_seq: record.source_seq, usage_digest: record.usage_digest }
    }

    pub(crate) fn seal_part(&self) -> SealPart {
        SealPart { y: self.chained.y, z: self.chained.z, usage_digest: self.usage_digest }
    }
}

/// What a seal needs of an entry: its `Y` (the Merkle root's leaf; the head's with `Z`)
/// and the usage digest after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealPart {
    pub y: [u8; 32],
    pub z: [u8; 32],
    pub usage_digest: [u8; 32],
}

/// The chained entries of a royalty log, by position (0 = the log's first entry in this
/// log, `RoyaltyLog::entry_base` before it).
#[derive(Clone, Default)]
pub struct Entries {
    /// Entries `from..from + held.len()`.
    held: Vec<LoggedEntry>,
    /// Position of `held[0]`: 0 in memory; stored, the entries before it are in sled only.
    from: u64,
    /// The store's database, whose `re/` rows hold every committed entry (`None`: in memory).
    db: Option<sled::Db>,
    /// The newest entry once it left memory (what chains the next one and feeds the digest).
    last_released: Option<LoggedEntry>,
    /// Entries `..taken` were handed to a commit (`take_from`); they leave memory once it
    /// is written (`release`).
    taken: u64,
    /// Stored: what a seal needs of the entries `parts_from..len` (the ones not sealed yet,
    /// `release`). In memory, empty: `held` has it.
    parts: Vec<SealPart>,
    parts_from: u64,
    /// The first stored entry that could not be read: the next commit fails with it, which
    /// stops the store (as a `Rows` fault does). Shared by copies (unlike a `Rows` fault):
    /// a read that failed on a copy stops the original's commits too.
    fault: Arc<OnceLock<Arc<RowError>>>,
}

impl std::fmt::Debug for Entries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("len", &self.len())
            .field("resident", &self.held.len())
            .field("seal_parts", &self.parts.len())
            .field("stored", &self.db.is_some())
            .finish()
    }
}

/// Equal when they hold the same entries, wherever they are (O(entries): for tests).
impl PartialEq for Entries {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Entries {}

impl Entries {
    /// Entries `0..len` all stored in `db` (none of them resident); `last` is the newest and
    /// `parts` what a seal needs of the entries from `parts_from` on (to `len`).
    pub(crate) fn stored(db: sled::Db, len: u64, last: Option<LoggedEntry>, parts_from: u64, parts: Vec<SealPart>) -> Self {
        Entries { held: Vec::new(), from: len, db: Some(db), last_released: last, taken: len, parts, parts_from, fault: Arc::default() }
    }

    pub fn len(&self) -> usize {
        usize::try_from(self.from).unwrap_or(usize::MAX) + self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many whole entries are in memory.
    pub fn resident(&self) -> usize {
        self.held.len()
    }

    /// Of how many entries (stored, not sealed yet) what a seal needs is in memory.
    pub fn seal_parts_held(&self) -> usize {
        self.parts.len()
    }

    /// Whether the entries live in the projection store.
    pub fn is_stored(&self) -> bool {
        self.db.is_some()
    }

    pub(crate) fn push(&mut self, entry: LoggedEntry) {
        self.last_released = None;
        if self.db.is_some() {
            self.parts.push(entry.seal_part());
        }
        self.held.push(entry);
    }

    /// What a seal needs of the entries `first..end` (fewer when the log is shorter): from
    /// memory for the entries not sealed yet, read from the store for older ones.
    pub fn seal_parts(&self, first: u64, end: u64) -> Vec<SealPart> {
        let end = end.min(self.len() as u64);
        if first >= end {
            return Vec::new();
        }
        if self.db.is_none() {
            return self.resident_range(first, end).iter().map(LoggedEntry::seal_part).collect();
        }
        if first >= self.parts_from {
            let offset = |position: u64| usize::try_from(position - self.parts_from).unwrap_or(usize::MAX).min(self.parts.len());
            return self.parts[offset(first)..offset(end)].to_vec();
        }
        self.range(first, end).iter().map(LoggedEntry::seal_part).collect()
    }

    /// The newest entry.
    pub fn last(&self) -> Option<&LoggedEntry> {
        self.held.last().or(self.last_released.as_ref())
    }

    /// The entry at `position` (a copy when it is read from sled).
    pub fn get(&self, position: u64) -> Option<Cow<'_, LoggedEntry>> {
        if position >= self.from {
            return self.held.get(usize::try_from(position - self.from).ok()?).map(Cow::Borrowed);
        }
        // The newest entry is kept even once it left memory (no sled read for it).
        if let Some(last) = self.last_released.as_ref().filter(|last| last.chained.index + 1 == self.from && position + 1 == self.from) {
            return Some(Cow::Borrowed(last));
        }
        self.read_stored(position..position + 1).next().map(Cow::Owned)
    }

    /// The entries at `first..end` (fewer when the log is shorter), in order.
    pub fn range(&self, first: u64, end: u64) -> Vec<LoggedEntry> {
        let end = end.min(self.len() as u64);
        if first >= end {
            return Vec::new();
        }
        let mut entries = Vec::with_capacity(usize::try_from(end - first).unwrap_or(0));
        entries.extend(self.read_stored(first..end.min(self.from)));
        entries.extend(self.resident_range(first, end).iter().cloned());
        entries
    }

    /// The resident entries among `first..end`.
    pub(crate) fn resident_range(&self, first: u64, end: u64) -> &[LoggedEntry] {
        let offset = |position: u64| usize::try_from(position.saturating_sub(self.from)).unwrap_or(usize::MAX).min(self.held.len());
        &self.held[offset(first)..offset(end).max(offset(first))]
    }

    /// Every entry in order: those in sled read as the iteration reaches them.
    pub fn iter(&self) -> impl Iterator<Item = Cow<'_, LoggedEntry>> + '_ {
        self.read_stored(0..self.from).map(Cow::Owned).chain(self.held.iter().map(Cow::Borrowed))
    }

    /// Every chained entry, in order (what an export carries).
    pub fn chained(&self) -> Vec<ChainedEntry> {
        self.iter().map(|entry| entry.into_owned().chained).collect()
    }

    /// A copy of the entries at `first..end` that reads sled only when asked
    /// (`Detached::read`), so a caller can take it under the projections' lock and read
    /// outside it: committed entries never change.
    pub fn detached(&self, first: u64, end: u64) -> Detached {
        let end = end.min(self.len() as u64);
        Detached { db: self.db.clone(), stored: first.min(end)..end.min(self.from).max(first.min(end)), held: self.resident_range(first, end).to_vec() }
    }

    /// The entries from `stored` on, for a commit (the store holds `stored` of them); they
    /// stay in memory until `release`. Fails with the first stored entry that could not be
    /// read since the last commit.
    pub(crate) fn take_from(&mut self, stored: u64) -> Result<&[LoggedEntry], Arc<RowError>> {
        if let Some(fault) = self.fault.get() {
            return Err(Arc::clone(fault));
        }
        self.taken = self.len() as u64;
        Ok(self.resident_range(stored, self.taken))
    }

    /// The entries a commit took are stored: they leave memory, and what a seal needs of
    /// the entries before `unsealed` (the first not sealed yet) does too. In memory
    /// nothing leaves.
    pub(crate) fn release(&mut self, unsealed: u64) {
        if self.db.is_none() {
            return;
        }
        if self.taken > self.from {
            let count = usize::try_from(self.taken - self.from).unwrap_or(usize::MAX).min(self.held.len());
            if count == self.held.len() {
                self.last_released = self.held.pop();
            }
            self.held.drain(..count.min(self.held.len()));
            self.from = self.taken;
        }
        let cut = unsealed.min(self.len() as u64);
        if cut > self.parts_from {
            self.parts.drain(..usize::try_from(cut - self.parts_from).unwrap_or(usize::MAX).min(self.parts.len()));
            self.parts_from = cut;
        }
    }

    /// The entries a commit took (`take_from`, a rebuild's whole state) are in `db`: from
    /// now on stored, out of memory but what a seal needs of those from `unsealed` on.
    pub(crate) fn spill(&mut self, db: &sled::Db, unsealed: u64) {
        if self.db.is_none() {
            let from = unsealed.min(self.len() as u64);
            self.parts = self.resident_range(from, self.len() as u64).iter().map(LoggedEntry::seal_part).collect();
            self.parts_from = from;
            self.db = Some(db.clone());
        }
        self.release(unsealed);
    }

    /// The stored entries at `range` (all below `from`), read from sled in order. An entry
    /// that cannot be read ends the iteration (logged, and kept as the fault the next
    /// commit reports).
    fn read_stored(&self, range: std::ops::Range<u64>) -> impl Iterator<Item = LoggedEntry> + '_ {
        let end = range.end.min(self.from);
        let rows = self.db.as_ref().map(|db| stored_rows(db, range.start, end));
        rows.into_iter().flatten().map_while(|read| match read {
            Ok(entry) => Some(entry),
            Err(error) => {
                tracing::error!(reason = %Causes(&error), "a royalty entry in the projection store cannot be read");
                let _ = self.fault.set(Arc::new(error));
                None
            }
        })
    }
}

/// The `re/` rows at `first..end` read back in order; the first that cannot be read, or
/// is missing, is the last item.
fn stored_rows(db: &sled::Db, first: u64, end: u64) -> impl Iterator<Item = Result<LoggedEntry, RowError>> + use<> {
    let mut rows = (first < end).then(|| db.range(index_key(ENTRY_PREFIX, first)..index_key(ENTRY_PREFIX, end)));
    let mut expected = first;
    std::iter::from_fn(move || {
        if expected >= end {
            return None;
        }
        let read = match rows.as_mut().and_then(Iterator::next) {
            Some(pair) => pair.map_err(RowError::Read).and_then(|(key, value)| decode_row(&key, &value, expected)),
            None => Err(RowError::Missing { kind: "royalty entry", id: expected.to_string() }),
        };
        expected = if read.is_ok() { expected + 1 } else { end };
        Some(read)
    })
}

/// One `re/` row read back as the entry at `expected`.
fn decode_row(key: &[u8], value: &[u8], expected: u64) -> Result<LoggedEntry, RowError> {
    let index = index_of(&key[ENTRY_PREFIX.len()..], "royalty entry")?;
    let record: EntryRecord = decode_json(value, "royalty entry", &index.to_string())?;
    if index != expected || record.entry.index != index {
        return Err(RowError::Misplaced { kind: "royalty entry", id: expected.to_string(), stored: format!("entry {}", record.entry.index) });
    }
    Ok(LoggedEntry::of_record(record))
}

/// Entries taken under the projections' lock, read outside it (`Entries::detached`).
pub struct Detached {
    db: Option<sled::Db>,
    stored: std::ops::Range<u64>,
    held: Vec<LoggedEntry>,
}

impl Detached {
    /// The entries, in order; an error names the first stored one that cannot be read.
    pub fn read(self) -> Result<Vec<LoggedEntry>, RowError> {
        let mut entries = Vec::with_capacity(usize::try_from(self.stored.end - self.stored.start).unwrap_or(0) + self.held.len());
        if let Some(db) = &self.db {
            for read in stored_rows(db, self.stored.start, self.stored.end) {
                entries.push(read?);
            }
        }
        entries.extend(self.held);
        Ok(entries)
    }
}
