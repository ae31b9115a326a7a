//! The auditor's checkpoint commands: reading C2SP checkpoint notes with the checkpoint
//! verifier key (`checkpoint.vkey`), `audit consistency` (an RFC 6962 consistency proof
//! between two checkpoints, read from a file or computed from the stream's tree), and the
//! incremental `audit replay --checkpoint`. Proof files hold one base64 hash per line, as
//! the C2SP tlog-witness protocol sends them.

use anyhow::{Context, bail};
use engine::note::{Checkpoint, NoteVerifier};
use engine::tlog::{Hash, PROOF_HASHES_MAX};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The checkpoint verifier key: `explicit` (a vkey file), else the key directory's
/// `checkpoint.vkey` (`None` when it has none: a key directory from before checkpoints).
pub fn verifier(keys_dir: &Path, explicit: Option<&Path>) -> anyhow::Result<Option<NoteVerifier>> {
    match explicit {
        Some(file) => crate::common::keys::load_checkpoint_vkey_file(file).map(Some),
        None => crate::common::keys::load_checkpoint_vkey(keys_dir),
    }
}

/// Reads a checkpoint note from `file`: `Ok(Err(reason))` when it is not one, or does not
/// verify with `verifier` (a failed check); `Err` when it cannot be read.
pub fn read(file: &Path, verifier: &NoteVerifier) -> anyhow::Result<Result<Checkpoint, String>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(Checkpoint::open(&bytes, verifier).map_err(|error| format!("{}: {error}", file.display())))
}

/// A proof file's hashes (one base64 hash a line).
pub fn parse_proof(text: &str) -> Result<Vec<Hash>, String> {
    let mut proof = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        if proof.len() == PROOF_HASHES_MAX {
            return Err(format!("more than {PROOF_HASHES_MAX} hashes"));
        }
        let hash = BASE64.decode(line.trim()).ok().and_then(|bytes| Hash::try_from(bytes).ok());
        proof.push(hash.ok_or_else(|| format!("line {} is not a base64 SHA-256 hash", number + 1))?);
    }
    Ok(proof)
}

pub fn format_proof(proof: &[Hash]) -> String {
    proof.iter().map(|hash| format!("{}\n", BASE64.encode(hash))).collect()
}

/// What `audit consistency` found.
#[derive(Debug, serde::Serialize)]
pub struct Consistency {
    pub old_size: u64,
    pub new_size: u64,
    pub consistent: bool,
    /// The proof's hashes in base64 (empty when it could not be had).
    pub proof: Vec<String>,
    /// Why the checkpoints are not consistent (null when they are).
    pub reason: Option<String>,
}

/// Checks that `new` extends `old` with `proof`.
pub fn check(old: &Checkpoint, new: &Checkpoint, proof: &[Hash]) -> Consistency {
    let consistent = old.origin == new.origin && engine::tlog::verify_consistency(old.size, new.size, &old.root, &new.root, proof);
    let reason = (!consistent).then(|| {
        if old.origin != new.origin {
            format!("the checkpoints are of two logs ({:?} and {:?})", old.origin, new.origin)
        } else if old.size > new.size {
            format!("the old checkpoint ({}) is larger than the new one ({})", old.size, new.size)
        } else {
            format!("the proof does not show the tree of {} entries extending the tree of {} (a forked log, or a wrong proof)", new.size, old.size)
        }
    });
    Consistency { old_size: old.size, new_size: new.size, consistent, proof: proof.iter().map(|hash| BASE64.encode(hash)).collect(), reason }
}

/// The consistency proof from the stream's own tree (a verified replay): `Err(reason)`
/// when the stream's tree has another root at either size (a fork) or is smaller.
pub async fn prove_from_stream(
    backend: &crate::common::backend::BackendArgs,
    keys_dir: &Path,
    old: &Checkpoint,
    new: &Checkpoint,
) -> anyhow::Result<Result<Vec<Hash>, String>> {
    let (_, exported, _) = super::rebuild(backend, keys_dir).await?;
    let master = crate::common::keys::load_royalty_master(keys_dir)?;
    let opened = projections::export::open_entries_tree(&exported, &master);
    if let Some(fault) = opened.fault {
        bail!("the rebuilt royalty log does not verify at entry {:?}: {}", fault.entry, fault.reason);
    }
    let tree = opened.tree;
    for checkpoint in [old, new] {
        match tree.root(checkpoint.size) {
            None => return Ok(Err(format!("the stream's royalty log has {} entries, fewer than the checkpoint's {}", tree.size(), checkpoint.size))),
            Some(root) if root != checkpoint.root => {
                return Ok(Err(format!("the stream's tree of {} entries has another root than the checkpoint (a forked log)", checkpoint.size)));
            }
            Some(_) => {}
        }
    }
    Ok(tree.consistency_proof(old.size, new.size).ok_or_else(|| format!("no proof from size {} to {}", old.size, new.size)))
}
