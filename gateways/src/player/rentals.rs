//! The player's rentals: a rental's copies are kept no longer than its window. Each play of a
//! rental notes `<dir>/rentals/<voucher>.json` (the voucher, its end and the media played);
//! `purge_ended_rentals` deletes the copies (`<dir>/<voucher>-<media>.media`) and the note of
//! every rental whose window is over. Every `vouchsafe player` command purges first, and
//! `player purge` does nothing else.
//!
//! Not here: the window's enforcement, which is the engine's (no play is issued or redeemed
//! after it) and the node's (an access grant never outlives it). Deleting the copy is the
//! reference player keeping its side of the rental, not a protection against a player that
//! does not.

use anyhow::Context;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Most rental notes one purge reads: a bound on the work of a command.
pub const RENTAL_NOTES_MAX: usize = 10_000;

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Eq)]
struct RentalNote {
    voucher_id: String,
    rental_until_ms: i64,
    media_ids: BTreeSet<String>,
}

fn notes_dir(dir: &Path) -> PathBuf {
    dir.join("rentals")
}

/// Where the copy of `media_id` bought with `voucher_id` lives (as `fetch` writes it).
pub fn copy_path(dir: &Path, voucher_id: &str, media_id: &str) -> PathBuf {
    dir.join(format!("{voucher_id}-{media_id}.media"))
}

/// Notes that the copies of `media_ids` of the rental `voucher_id` must go once
/// `rental_until_ms` passed (added to what earlier plays noted).
pub fn note_rental(dir: &Path, voucher_id: &str, rental_until_ms: i64, media_ids: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(engine::ids::is_valid_token(voucher_id), "the voucher id is not 1-64 characters of A-Z a-z 0-9 - _");
    let notes = notes_dir(dir);
    std::fs::create_dir_all(&notes).with_context(|| format!("cannot create {}", notes.display()))?;
    let path = notes.join(format!("{voucher_id}.json"));
    let mut note = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(RentalNote { voucher_id: voucher_id.into(), rental_until_ms, media_ids: BTreeSet::new() }),
        Err(_) => RentalNote { voucher_id: voucher_id.into(), rental_until_ms, media_ids: BTreeSet::new() },
    };
    note.rental_until_ms = rental_until_ms;
    note.media_ids.extend(media_ids.iter().cloned());
    let bytes = serde_json::to_vec(&note).context("a rental note is plain JSON")?;
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Deletes the copies and the note of every rental whose window ended before `now_ms`; the
/// copies deleted. A note that does not parse, or names ids that are not plain tokens, is
/// left alone (it names no copy this player wrote).
pub fn purge_ended_rentals(dir: &Path, now_ms: i64) -> anyhow::Result<Vec<PathBuf>> {
    let notes = notes_dir(dir);
    let entries = match std::fs::read_dir(&notes) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", notes.display())),
    };
    let mut deleted = Vec::new();
    for entry in entries.take(RENTAL_NOTES_MAX) {
        let path = entry.with_context(|| format!("cannot read {}", notes.display()))?.path();
        let Ok(note) = std::fs::read(&path).map_err(|_| ()).and_then(|bytes| serde_json::from_slice::<RentalNote>(&bytes).map_err(|_| ())) else {
            continue;
        };
        let plain = std::iter::once(&note.voucher_id).chain(&note.media_ids).all(|id| engine::ids::is_valid_token(id));
        if !plain || now_ms <= note.rental_until_ms {
            continue;
        }
        for media_id in &note.media_ids {
            let copy = copy_path(dir, &note.voucher_id, media_id);
            match std::fs::remove_file(&copy) {
                Ok(()) => deleted.push(copy),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).with_context(|| format!("cannot delete {}", copy.display())),
            }
        }
        std::fs::remove_file(&path).with_context(|| format!("cannot delete {}", path.display()))?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rental_copy_goes_after_its_window_and_a_purchase_stays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rented = copy_path(dir.path(), "v1", "m1");
        let bought = copy_path(dir.path(), "v2", "m1");
        std::fs::write(&rented, b"rented").expect("write");
        std::fs::write(&bought, b"bought").expect("write");
        note_rental(dir.path(), "v1", 1_000, &["m1".into()]).expect("noted");
        // Within the window (and at its last millisecond) the copy stays: the control.
        assert!(purge_ended_rentals(dir.path(), 1_000).expect("purge").is_empty());
        assert!(rented.exists());
        assert_eq!(purge_ended_rentals(dir.path(), 1_001).expect("purge"), vec![rented.clone()]);
        assert!(!rented.exists() && bought.exists(), "only the rental's copy goes");
        assert!(purge_ended_rentals(dir.path(), 5_000).expect("purge again").is_empty(), "its note went with it");
    }

    #[test]
    fn a_note_naming_paths_outside_the_player_is_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(notes_dir(dir.path())).expect("dir");
        let outside = dir.path().join("outside.media");
        std::fs::write(&outside, b"x").expect("write");
        let note = serde_json::json!({ "voucher_id": "..", "rental_until_ms": 0, "media_ids": ["../outside"] });
        std::fs::write(notes_dir(dir.path()).join("bad.json"), note.to_string()).expect("write");
        assert!(purge_ended_rentals(dir.path(), 10).expect("purge").is_empty());
        assert!(outside.exists());
    }
}
