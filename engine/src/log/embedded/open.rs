//! Opening the embedded log: sled's configuration, waiting out sled's directory lock,
//! catching a panic in sled's recovery, checking the format marker and that the head agrees
//! with the last record, and starting the writer thread.
//!
//! What does not live here: the writer's work once started (`writer`), and the record
//! format the check decodes (`record`).

use super::record::{EVENT_PREFIX, FORMAT_KEY, FORMAT_MARKER, HEAD_KEY, decode_event_key, decode_record, decode_u64};
use super::writer::{WriterStats, run_writer};
use super::{APPEND_QUEUE_DEPTH_MAX, BACKGROUND_FLUSH_INTERVAL_MS, CACHE_BYTES_MAX, EmbeddedLog, OpenError, Shared};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// How long `open` waits for sled's directory lock. sled releases the lock of a dropped
/// database through epoch-based reclamation, so a reopen in the same process right after a
/// drop can find it still held for a moment (seen in about 1 in 30 test runs on a loaded
/// machine); a lock held by another process is still an error after the wait.
const LOCK_WAIT_MS: u64 = 2_000;

/// `config.open()`, retried while the only problem is sled's directory lock, with any panic
/// caught (sled 0.34 has been reported to panic on damaged directories, sled #1533).
pub(super) fn open_waiting_for_lock(config: &sled::Config) -> std::thread::Result<sled::Result<sled::Db>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(LOCK_WAIT_MS);
    loop {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match &opened {
            Ok(Err(sled::Error::Io(error))) if error.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => return opened,
        }
    }
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<EmbeddedLog, OpenError> {
        let path = dir.to_path_buf();
        let config = sled::Config::new()
            .path(dir)
            // Appends are the whole workload; disk space is cheap next to fsync time.
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES_MAX)
            .use_compression(false)
            .flush_every_ms(Some(BACKGROUND_FLUSH_INTERVAL_MS));
        // sled 0.34 has been reported to panic while recovering a damaged directory
        // (sled #1533); a panic must not take the process down with it.
        let opened = open_waiting_for_lock(&config);
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(error)) => return Err(open_error(&path, error)),
            Err(panic) => {
                return Err(OpenError::Panicked { path, reason: crate::panic::message(panic.as_ref()) });
            }
        };
        let head = recover_head(&db, &path)?;

        let (sender, receiver) = mpsc::channel(APPEND_QUEUE_DEPTH_MAX);
        let (head_sender, head_receiver) = watch::channel(head);
        let stats = Arc::new(WriterStats::default());
        let writer = {
            let db = db.clone();
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("vouchsafe-log-writer".to_owned())
                .spawn(move || run_writer(db, receiver, head_sender, stats, head))
                .map_err(|error| OpenError::Thread(error.to_string()))?
        };
        Ok(EmbeddedLog { shared: Arc::new(Shared { db, head: head_receiver }), stats, sender: Some(sender), writer: Some(writer) })
    }
}

fn open_error(path: &Path, error: sled::Error) -> OpenError {
    match error {
        sled::Error::Corruption { at, .. } => OpenError::Corrupt { path: path.to_path_buf(), reason: format!("sled found corruption at {at:?}") },
        other => OpenError::Storage { path: path.to_path_buf(), reason: other.to_string() },
    }
}

/// Checks the format marker and that the head key agrees with the last record, and returns
/// the head. A fresh directory gets its marker here (flushed, so a crash cannot leave a
/// half-initialised log).
fn recover_head(db: &sled::Db, path: &Path) -> Result<u64, OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt { path: path.to_path_buf(), reason };
    let storage = |error: sled::Error| open_error(path, error);

    match db.get(FORMAT_KEY).map_err(storage)? {
        Some(marker) if marker.as_ref() == FORMAT_MARKER => {}
        Some(marker) => {
            return Err(OpenError::NotAnEventLog { path: path.to_path_buf(), found: Some(String::from_utf8_lossy(&marker).into_owned()) });
        }
        None if db.is_empty() => {
            db.insert(FORMAT_KEY, FORMAT_MARKER).map_err(storage)?;
            db.flush().map_err(storage)?;
            return Ok(0);
        }
        None => {
            return Err(OpenError::NotAnEventLog { path: path.to_path_buf(), found: None });
        }
    }

    let head = match db.get(HEAD_KEY).map_err(storage)? {
        Some(bytes) => decode_u64(&bytes).ok_or_else(|| corrupt("the head key is not 8 bytes".to_owned()))?,
        None => 0,
    };
    // Batches are atomic, so the last record is exactly the head; anything else means the
    // database lost or invented writes and must not be appended to.
    let last_record = match db.scan_prefix(EVENT_PREFIX).next_back() {
        None => None,
        Some(entry) => {
            let (key, record) = entry.map_err(storage)?;
            let seq = decode_event_key(&key).ok_or_else(|| corrupt("a record key is malformed".to_owned()))?;
            decode_record(seq, &record).map_err(|error| corrupt(error.to_string()))?;
            Some(seq)
        }
    };
    if last_record.unwrap_or(0) != head {
        return Err(corrupt(format!("the head says {head} but the last record is {last_record:?}")));
    }
    Ok(head)
}
