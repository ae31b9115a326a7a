//! Opening a store and quarantining a damaged one.
//!
//! `open` checks all of a store before it is used: the format marker, the checkpoint,
//! that every value decodes, and the content digest (`read`). A store that sled cannot
//! open (or panics on) or that fails a check is moved aside, never deleted, so that it
//! can be examined (`<dir>.quarantined-<unix ms>`), and a new, empty store takes its place,
//! which the caller rebuilds from sequence 1. A directory in use by another process, or a
//! sled database that is not a projection store (e.g. the embedded event log), is refused
//! instead and left untouched: neither is damage.
//!
//! A store of an older format fails the marker check and is quarantined and rebuilt: its
//! rows would read as a state other than the one its checkpoint describes (format 1 had no
//! balances; format 2 kept one stream head row per event, `heads`; format 3 counted a
//! sale's usage at delivery only; format 4 did not record whether entries bind their
//! stream sequence; format 5 kept an issued voucher's reservation expiry, not its access
//! window).

use super::checkpoint::{CheckpointRecord, encode_checkpoint};
use super::commit::Writer;
use super::errors::{Damage, StoreError};
use super::read::read_state;
use super::{CHECKPOINT_KEY, FORMAT_KEY, FORMAT_MARKER, ProjectionStore};
use crate::rows::Causes;
use engine::ids::Seq;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// Why `open_checked` did not open: refuse (leave the directory alone) or quarantine.
enum Refusal {
    Refuse(StoreError),
    Damaged(Damage),
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
            Err(Refusal::Damaged(damage)) => Self::quarantine_dir(dir, Causes(&damage).to_string()),
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

    fn open_checked(dir: &Path) -> Result<(ProjectionStore, OpenOutcome), Refusal> {
        // sled 0.34 has been reported to panic while recovering a damaged directory
        // (sled #1533), and reading a damaged page could too: neither may take the
        // process down.
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::open_unguarded(dir)));
        attempt.unwrap_or_else(|panic| Err(Refusal::Damaged(Damage::Panic(engine::panic::message(panic.as_ref())))))
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
        let damaged = |error: sled::Error| Refusal::Damaged(Damage::Sled(error));
        let outcome = match db.get(FORMAT_KEY).map_err(damaged)? {
            Some(marker) if marker.as_ref() == FORMAT_MARKER => None,
            Some(marker) => {
                let (found, expected) = (String::from_utf8_lossy(&marker).into_owned(), String::from_utf8_lossy(FORMAT_MARKER).into_owned());
                return Err(Refusal::Damaged(Damage::Marker { found, expected }));
            }
            None if db.get(CHECKPOINT_KEY).map_err(damaged)?.is_some() => return Err(Refusal::Damaged(Damage::MarkerMissing)),
            None if db.is_empty() => {
                // Marker and empty checkpoint in one flushed batch: a crash cannot leave a
                // half-initialised store.
                let mut batch = sled::Batch::default();
                batch.insert(FORMAT_KEY, FORMAT_MARKER);
                let checkpoint = encode_checkpoint(&CheckpointRecord::empty()).map_err(|error| Refusal::Damaged(Damage::Init(error)))?;
                batch.insert(CHECKPOINT_KEY, checkpoint);
                db.apply_batch(batch).map_err(damaged)?;
                db.flush().map_err(damaged)?;
                Some(OpenOutcome::Created)
            }
            None => return Err(Refusal::Refuse(StoreError::Foreign { path })),
        };
        let stored = read_state(&db).map_err(|error| Refusal::Damaged(Damage::State(error)))?;
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
        // The chain key could only ever serve to go back to this store's position: wiped.
        if let Err(error) = super::chain_key::wipe(&super::chain_key::path_in(dir)) {
            tracing::warn!(dir = %dir.display(), %error, "the quarantined store's royalty chain key could not be wiped; delete it by hand");
        }
        std::fs::rename(dir, &path).map_err(|e| quarantine_error(e.to_string()))?;
        tracing::warn!(dir = %dir.display(), quarantined = %path.display(), %reason, "projection store quarantined; rebuilding from sequence 1");
        match Self::open_checked(dir) {
            Ok((store, _)) => Ok((store, OpenOutcome::Quarantined { path, reason })),
            Err(Refusal::Refuse(error)) => Err(error),
            Err(Refusal::Damaged(fresh)) => {
                Err(StoreError::Storage { path: dir.to_path_buf(), reason: format!("a new store is damaged at once: {}", Causes(&fresh)) })
            }
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
        _ => Refusal::Damaged(Damage::Open(error)),
    }
}
