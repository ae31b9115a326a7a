//! The durable projection store: every projection's state and its checkpoint in one sled
//! database, so that a restart resumes at `checkpoint + 1` and a deleted (or quarantined)
//! store is rebuilt from sequence 1 (DESIGN.md, "Projections").
//!
//! What lives here: the store itself, `ProjectionStore`, with the open-time checks that
//! send a damaged store to quarantine (`open`), the checkpoint and the content digest
//! (`checkpoint`), the reading and checking of the whole stored state (`read`), the atomic
//! commit of a batch (`commit`), the stream heads' rows (`heads`) and the store's errors
//! (`errors`). What does not: the row machinery (`crate::rows`); each projection's storage
//! format, the one conversion of its state to and from bytes (its `format` module, beside
//! the projection); how events change the state (the projection modules, which note what
//! they changed in `Touched` sets); and when to commit (`Live`, which commits once per
//! batch of applied events).
//!
//! Layout, all in sled's default tree (integers big-endian, so key order is index order):
//! - `@format`      → `FORMAT_MARKER`;
//! - `@checkpoint`  → `blake3(body) ‖ body`, body = JSON `CheckpointRecord` (`checkpoint`);
//! - state keys, one per row, each a 3-byte prefix and the row's id, each prefix owned by
//!   one format: `vr/` `vh/` `vl/` (`vouchers::format`), `an/` `av/` `ap/` `ar/`
//!   (`allocation::format`), `rc/` `rs/` `rp/` `re/` `rt/` `rl/` `rf/` `rk/`
//!   (`royalty_log::format`), `bl/` `bp/` (`balances::format`), `qv/` `qp/` `qc/` `qs/` `qo/`
//!   (`reads::format`), `sh/` (`heads`).
//!
//! Format 2 added the balances and the stream head before the last event; format 3 keeps
//! the stream heads many to a row (`heads`); format 8 adds the read indexes (`reads`),
//! format 10 their orders, the credential hashes in their party rows and each seal's
//! time, format 11 the royalty log's RFC 6962 tree and its seals' checkpoints, format 12
//! publishers among the parties (kind `u`) and their credentials, format 15 each royalty
//! entry's key commitment (the tiles' leaves without a chain secret), format 16 the vouchers'
//! lapse index (so that it is in sled, not memory). A store of
//! an older format fails the marker check at open and is quarantined and rebuilt.
//!
//! Secrets: one, the royalty chain's current position (`A_j`), in a file of its own beside
//! sled's, `royalty-chain.key` (`chain_key`: overwritten in place at each commit that moved
//! the chain, never a sled row, because sled is log-structured and a rewritten value stays
//! in older segments until they are cleaned, which would leave earlier `A_j`s on disk).
//! So the engine chains on after a restart without the royalty master key, which stays
//! with the auditor (forward security). With the master key a load re-derives `A_j`
//! instead (`Chain::resume`, checked against the newest entry's MAC) and the file follows
//! at the next commit. With neither, a loaded store computes totals and says the chain
//! needs `A_0`, as an in-memory projection does. A store moved aside (quarantine) has its
//! chain key wiped first.
//!
//! Not persisted: tentative allocation holds (ephemeral advice of one process), the
//! engine's public key (the caller passes it, as in memory), and the voucher indexes by
//! merchant and by expiry (a function of the rows, rebuilt at load).

pub mod chain_key;
mod checkpoint;
mod commit;
mod errors;
mod heads;
mod open;
mod read;
#[cfg(test)]
mod tests;

pub use crate::allocation::format::{ReleasedRows, SlotRows};
pub use crate::rows::{RowError, RowKind, Rows};
pub use crate::vouchers::format::VoucherRows;
pub use checkpoint::Checkpoint;
pub use commit::Committed;
pub use errors::{CheckpointError, CommitError, LoadError, StateError, StoreError};
pub use open::OpenOutcome;

use crate::Projections;
use crate::royalty::Chain;
use crate::royalty_log::EPOCH;
use commit::Writer;
use engine::crypto::{RsaPublic, SecretKey};
use read::{Stored, read_state};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The value of `@format`; a new layout gets a new marker (and old stores are rebuilt).
pub const FORMAT_MARKER: &[u8] = b"vouchsafe-projection-store/16";

const FORMAT_KEY: &[u8] = b"@format";
const CHECKPOINT_KEY: &[u8] = b"@checkpoint";
/// Keys starting with this byte are metadata, outside the content digest.
const META_PREFIX: u8 = b'@';

/// The durable projection store (module docs). One runner commits to it at a time.
pub struct ProjectionStore {
    db: sled::Db,
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// The state `open` decoded to check it, handed out by the first `load`.
    loaded: Mutex<Option<Projections>>,
}

impl std::fmt::Debug for ProjectionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl ProjectionStore {
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
                let last = projections.royalty.entries.last().map(|last| &last.chained);
                let chain = Chain::resume(master, EPOCH, last).map_err(LoadError::MasterKeyMismatch)?;
                projections.royalty.chain = Some(chain);
            } else {
                return Err(LoadError::ChainNotFromStart);
            }
        } else if let Some(position) = chain_key::read(&chain_key::path_in(&self.dir)).map_err(|error| LoadError::ChainKey(error.to_string()))? {
            if projections.events > 0 && !chain_complete {
                return Err(LoadError::ChainNotFromStart);
            }
            // The entries from the one before the key's position: usually the newest few.
            let entries = &projections.royalty.entries;
            let held = entries.len() as u64;
            let tail = entries.detached(position.next_index.saturating_sub(1), held).read().map_err(|error| LoadError::Inconsistent(error.into()))?;
            let tail: Vec<_> = tail.into_iter().map(|entry| entry.chained).collect();
            let chain = Chain::resume_from_tail(position, EPOCH, held, &tail).map_err(|fault| LoadError::ChainKey(fault.to_string()))?;
            self.lock_writer().chain_written = Some(chain.next_index());
            projections.royalty.chain = Some(chain);
        } else if chain_complete && projections.royalty.usages > 0 {
            tracing::warn!(dir = %self.dir.display(), "projection store loaded without the royalty master key or a chain key: the royalty chain stops here, and a later load with the key rebuilds from sequence 1");
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
        projections.vouchers.rows_committed();
        projections.allocation.rows_committed();
        projections.royalty.rows_committed();
        projections.reads.rows_committed();
    }

    /// After a rebuild in memory was committed whole: its rows of the kinds kept cold in
    /// sled leave memory, as if the projections had been loaded from the store.
    pub(crate) fn spill(&self, projections: &mut Projections) {
        projections.vouchers.spill(&self.db);
        projections.allocation.spill(&self.db);
        projections.royalty.spill(&self.db);
        projections.reads.spill(&self.db);
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic while holding the lock leaves `failed` or the old state: both safe to read.
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> Result<Stored, LoadError> {
        read_state(&self.db).map_err(LoadError::Inconsistent)
    }
}
