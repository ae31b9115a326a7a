//! This engine's name among the engines sharing a stream (its slot leases, job leases and
//! gossip carry it), kept in `<data-dir>/engine.id` so that an engine restarted on its data
//! directory carries on with the slot leases it held rather than waiting for them to be
//! taken over. The data directory is locked (`engine.lock`) while the engine runs, so two
//! engines never share a name.

use anyhow::Context;
use std::fs::{File, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

const ID_FILE: &str = "engine.id";
const LOCK_FILE: &str = "engine.lock";
/// How long a start waits for the lock of an engine stopping in this process.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The engine's name and the lock held for as long as the file lives.
pub(super) fn engine_identity(data_dir: &Path) -> anyhow::Result<(String, File)> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let lock_path = data_dir.join(LOCK_FILE);
    let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).with_context(|| format!("cannot open {}", lock_path.display()))?;
    let waiting = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if waiting.elapsed() < LOCK_WAIT => std::thread::sleep(Duration::from_millis(50)),
            Err(TryLockError::WouldBlock) => {
                anyhow::bail!("another engine runs with the data directory {}: each engine needs its own --data-dir", data_dir.display())
            }
            Err(TryLockError::Error(error)) => return Err(error).with_context(|| format!("cannot lock {}", lock_path.display())),
        }
    }
    let id_path = data_dir.join(ID_FILE);
    let id = match std::fs::read_to_string(&id_path) {
        Ok(id) if engine::ids::is_valid_token(id.trim()) => id.trim().to_string(),
        Ok(_) => anyhow::bail!("{} does not hold an engine name; remove it to get a new one", id_path.display()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("e{}", hex::encode(engine::crypto::random_bytes::<8>()));
            let temp = data_dir.join(format!("{ID_FILE}.tmp"));
            std::fs::write(&temp, format!("{id}\n")).with_context(|| format!("cannot write {}", temp.display()))?;
            File::open(&temp).and_then(|file| file.sync_all()).with_context(|| format!("cannot sync {}", temp.display()))?;
            std::fs::rename(&temp, &id_path).with_context(|| format!("cannot write {}", id_path.display()))?;
            id
        }
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", id_path.display())),
    };
    Ok((id, lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_keeps_its_engine_name_and_serves_one_engine_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (first, lock) = engine_identity(dir.path()).expect("first start");
        assert!(engine::ids::is_valid_token(&first));
        let refused = engine_identity(dir.path()).expect_err("a second engine on the same directory");
        assert!(refused.to_string().contains("another engine"), "{refused:#}");
        drop(lock);
        let (again, _lock) = engine_identity(dir.path()).expect("restart");
        assert_eq!(again, first, "a restart carries on under the same name");
        let other = tempfile::tempdir().expect("temp dir");
        assert_ne!(engine_identity(other.path()).expect("another directory").0, first);
    }
}
