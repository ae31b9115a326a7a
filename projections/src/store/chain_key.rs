//! The royalty chain's key file, `royalty-chain.key` in the store's directory: the one
//! secret an engine keeps of the royalty log, the chain's current position (epoch, next
//! entry, `A_j`, `Y_{j-1}`; `royalty::ChainPosition`), so that it can go on chaining after a
//! restart without the royalty master key, which stays with the auditor (forward
//! security, DESIGN.md Projections §3; ARCHITECTURE.md "Forward security").
//!
//! Why a file of its own and not a row in sled: sled is log-structured, so a rewritten
//! value stays in older segments until they are cleaned, which would leave past `A_j`s on
//! disk. This file has one fixed-size record (`RECORD_BYTES`, within one disk sector, so a
//! write of it is not torn on the devices this runs on; a torn one fails the checksum) that
//! every commit that moved the chain overwrites in place and syncs: on a file system that
//! overwrites in place (ext4, xfs) no earlier `A_j` remains in the file's blocks. A
//! copy-on-write file system (btrfs, zfs) or a snapshot of the disk keeps old blocks:
//! ARCHITECTURE.md says so.
//!
//! Order: the commit stores the entries first and the position after them, so the file
//! never runs ahead of the store after a crash; a position behind the stored entries is
//! advanced over them at load (`Chain::resume_from`, which checks their MACs).
//!
//! Not here: when to write it (`commit`), how a chain resumes (`royalty`).

use crate::royalty::ChainPosition;
use engine::crypto::{self, SecretKey};
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// The file's name in the store's directory.
pub const CHAIN_KEY_FILE: &str = "royalty-chain.key";

const MAGIC: &[u8; 8] = b"VSCHAIN1";
/// magic ‖ epoch ‖ next index ‖ `A_j` ‖ `Y_{j-1}` ‖ blake3 of what precedes.
pub const RECORD_BYTES: usize = 8 + 8 + 8 + 32 + 32 + 32;
const BODY_BYTES: usize = RECORD_BYTES - 32;

/// Why a chain key file cannot be used. Messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum ChainKeyError {
    #[error("cannot read the royalty chain key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the royalty chain key {path} is damaged ({reason})")]
    Damaged { path: PathBuf, reason: &'static str },
    #[error("cannot write the royalty chain key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The chain key file of the store in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(CHAIN_KEY_FILE)
}

/// The position in `path`; `None` when there is no such file.
pub fn read(path: &Path) -> Result<Option<ChainPosition>, ChainKeyError> {
    let mut bytes = match std::fs::read(path) {
        Ok(bytes) => zeroize::Zeroizing::new(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ChainKeyError::Read { path: path.to_path_buf(), source }),
    };
    let damaged = |reason| ChainKeyError::Damaged { path: path.to_path_buf(), reason };
    if bytes.len() != RECORD_BYTES {
        return Err(damaged("not one record long"));
    }
    if &bytes[..8] != MAGIC {
        return Err(damaged("not a chain key"));
    }
    if !crypto::ct_eq(&crypto::hash(&bytes[..BODY_BYTES]), &bytes[BODY_BYTES..]) {
        return Err(damaged("its checksum does not match"));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let mut a = [0u8; 32];
    a.copy_from_slice(&bytes[24..56]);
    let mut y_prev = [0u8; 32];
    y_prev.copy_from_slice(&bytes[56..88]);
    let position = ChainPosition { epoch: word(8), next_index: word(16), a: SecretKey::from_bytes(a), y_prev };
    a.zeroize();
    bytes.zeroize();
    Ok(Some(position))
}

/// Overwrites the record in `path` in place with `position` and syncs it (creating the
/// file, 0600, and syncing its directory the first time).
pub fn write(path: &Path, position: &ChainPosition) -> Result<(), ChainKeyError> {
    let failed = |source| ChainKeyError::Write { path: path.to_path_buf(), source };
    let mut record = zeroize::Zeroizing::new([0u8; RECORD_BYTES]);
    record[..8].copy_from_slice(MAGIC);
    record[8..16].copy_from_slice(&position.epoch.to_le_bytes());
    record[16..24].copy_from_slice(&position.next_index.to_le_bytes());
    record[24..56].copy_from_slice(position.a.expose());
    record[56..88].copy_from_slice(&position.y_prev);
    let checksum = crypto::hash(&record[..BODY_BYTES]);
    record[BODY_BYTES..].copy_from_slice(&checksum);
    let created = !path.exists();
    let mut file = open_for_overwrite(path).map_err(failed)?;
    file.write_all(&record[..]).map_err(failed)?;
    file.set_len(RECORD_BYTES as u64).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    if created && let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(failed)?;
    }
    Ok(())
}

/// Overwrites the file with zeros, syncs and removes it (a store moved aside keeps no
/// chain key: it could only ever serve to go back). Nothing to do when there is none.
pub fn wipe(path: &Path) -> Result<(), ChainKeyError> {
    let failed = |source| ChainKeyError::Write { path: path.to_path_buf(), source };
    let length = match std::fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(failed(source)),
    };
    let mut file = open_for_overwrite(path).map_err(failed)?;
    file.write_all(&vec![0u8; usize::try_from(length).unwrap_or(RECORD_BYTES)]).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    drop(file);
    std::fs::remove_file(path).map_err(failed)
}

/// The file opened for writing from its first byte, never truncated first (truncating
/// would free the old blocks with `A_j` still in them and write the new record elsewhere).
fn open_for_overwrite(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::royalty::Chain;

    fn position(master: u8, entries: usize) -> ChainPosition {
        let mut chain = Chain::start(&SecretKey::from_bytes([master; 32]), 1);
        for n in 0..entries {
            chain.append_encoded(format!("entry {n}").as_bytes());
        }
        chain.position()
    }

    #[test]
    fn a_position_written_reads_back_and_is_overwritten_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = path_in(dir.path());
        assert!(read(&path).expect("no file is no position").is_none());
        write(&path, &position(3, 1)).expect("write");
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).expect("metadata"));
        let later = position(3, 5);
        write(&path, &later).expect("overwrite");
        let read_back = read(&path).expect("read").expect("a position");
        assert_eq!((read_back.epoch, read_back.next_index, read_back.y_prev), (1, 5, later.y_prev));
        assert!(read_back.a.ct_eq(&later.a));
        let bytes = std::fs::read(&path).expect("bytes");
        assert_eq!(bytes.len(), RECORD_BYTES);
        let earlier = position(3, 1);
        assert!(!bytes.windows(32).any(|window| window == earlier.a.expose()), "the earlier A_j is gone from the file");
        #[cfg(unix)]
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).expect("metadata")), inode, "the same file, written in place");
        #[cfg(unix)]
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("metadata").permissions()) & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_record_is_refused_and_a_wiped_one_is_gone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = path_in(dir.path());
        write(&path, &position(4, 2)).expect("write");
        let mut bytes = std::fs::read(&path).expect("bytes");
        bytes[30] ^= 1;
        std::fs::write(&path, &bytes).expect("flip a bit");
        let error = read(&path).expect_err("a flipped bit fails the checksum");
        assert!(error.to_string().contains("checksum"), "{error}");
        std::fs::write(&path, &bytes[..40]).expect("truncate");
        assert!(read(&path).is_err(), "a short record is refused");
        wipe(&path).expect("wipe");
        assert!(!path.exists());
        wipe(&path).expect("wiping nothing is fine");
    }
}
