//! Per-delivery proofs in the C2SP `tlog-proof@v1` format (`.tlog-proof` files): the
//! entry's index, its inclusion proof in the newest checkpoint's tree, that checkpoint
//! verbatim, and as extra data what rebuilds the leaf and opens the entry (the previous `Y`,
//! the ciphertext, `Z`, the entry key and the bound sequence). The extra data is not
//! trusted: the leaf binds `Y` (so the ciphertext), `Z` and the key's commitment, and the
//! checkpoint's signature binds the root. Checked with the checkpoint verifier key alone.

use super::{ExportedLog, ProveError, Proven, hash32, open_entries_tree};
use crate::royalty::{self, Chain, ChainedEntry, UsageKind};
use engine::crypto::{self, SecretKey};
use engine::note::{Checkpoint, NoteVerifier, TlogProof};
use serde::{Deserialize, Serialize};

/// The extra data's format name.
const EXTRA_FORMAT: &str = "vouchsafe-royalty-entry/1";

#[derive(Serialize, Deserialize)]
struct Extra {
    format: String,
    epoch: u64,
    y_prev: String,
    ciphertext: String,
    z: String,
    entry_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bound_seq: Option<u64>,
}

/// A `.tlog-proof` for every delivery of `voucher_id` against the newest seal's checkpoint
/// (`None` in the list: the delivery is after it, not provable yet).
pub fn prove_tlog(
    log: &ExportedLog,
    master: &SecretKey,
    engine_key: &(impl engine::keyset::EngineKeyLookup + ?Sized),
    voucher_id: &str,
) -> Result<Vec<(u64, String)>, ProveError> {
    let report = super::verify_log(log, master, engine_key, None);
    if let Some(bad) = report.first_bad {
        return Err(ProveError::Unverified(bad.reason));
    }
    let newest = log.seals.last().map(|seal| seal.to_seal()).transpose().map_err(ProveError::Unverified)?;
    let checkpoint = newest.as_ref().and_then(|seal| seal.checkpoint.clone());
    let note = newest.as_ref().and_then(engine::seal::checkpoint_note);
    let tree = open_entries_tree(log, master).tree;
    let mut chain = Chain::start(master, log.epoch);
    let mut y_prev = royalty::genesis(log.epoch);
    let mut proofs = Vec::new();
    for chained in &log.entries {
        let entry_key = chain.next_entry_key();
        let entry = chain.verify_next(chained).map_err(|fault| ProveError::Unverified(fault.to_string()))?;
        if entry.kind == UsageKind::Delivery && entry.voucher_id == voucher_id {
            let (Some(checkpoint), Some(note)) = (&checkpoint, &note) else {
                return Err(ProveError::NotSealed { voucher: voucher_id.to_string(), entry: chained.index });
            };
            if chained.index >= checkpoint.tree_size {
                return Err(ProveError::NotSealed { voucher: voucher_id.to_string(), entry: chained.index });
            }
            let proof =
                tree.inclusion_proof(chained.index, checkpoint.tree_size).ok_or_else(|| ProveError::Unverified("the tree misses a sealed entry".into()))?;
            let extra = Extra {
                format: EXTRA_FORMAT.into(),
                epoch: chained.epoch,
                y_prev: hex::encode(y_prev),
                ciphertext: hex::encode(&chained.ciphertext),
                z: hex::encode(chained.z),
                entry_key: hex::encode(entry_key.expose()),
                bound_seq: chained.bound_seq,
            };
            let extra = serde_json::to_vec(&extra).expect("strings and integers serialize");
            let text = TlogProof { extra: Some(extra), index: chained.index, proof, checkpoint: note.clone() }.format();
            proofs.push((chained.index, text));
        }
        y_prev = chained.y;
    }
    if proofs.is_empty() {
        return Err(ProveError::NotFound(voucher_id.to_string()));
    }
    Ok(proofs)
}

/// Checks a `.tlog-proof` with the checkpoint verifier key alone: the checkpoint's
/// signature, the leaf rebuilt from the extra data in the tree at the index, and the entry
/// it opens to.
pub fn check_tlog_proof(text: &str, checkpoint_key: &NoteVerifier) -> Result<Proven, String> {
    let proof = TlogProof::parse(text).map_err(|e| e.to_string())?;
    let checkpoint = Checkpoint::open(proof.checkpoint.as_bytes(), checkpoint_key).map_err(|e| format!("the checkpoint: {e}"))?;
    let extra = proof.extra.as_deref().ok_or("the proof carries no entry (extra data)")?;
    let extra: Extra = serde_json::from_slice(extra).map_err(|_| "the extra data is not a royalty entry's".to_string())?;
    if extra.format != EXTRA_FORMAT {
        return Err(format!("the extra data's format {:?} is not {EXTRA_FORMAT}", extra.format));
    }
    let ciphertext = hex::decode(&extra.ciphertext).map_err(|_| "the ciphertext is not hex".to_string())?;
    if ciphertext.len() > royalty::ENTRY_BYTES_MAX {
        return Err("the ciphertext exceeds the entry size limit".into());
    }
    let y = royalty::running_hash(&hash32("y_prev", &extra.y_prev)?, &ciphertext);
    let entry_key = SecretKey::from_bytes(hash32("entry_key", &extra.entry_key)?);
    let chained = ChainedEntry { epoch: extra.epoch, index: proof.index, ciphertext: Vec::new(), y, z: hash32("z", &extra.z)?, bound_seq: extra.bound_seq };
    let leaf = royalty::tree_leaf_hash(&chained, &royalty::key_commitment(&entry_key));
    if !engine::tlog::verify_inclusion(&leaf, proof.index, checkpoint.size, &proof.proof, &checkpoint.root) {
        return Err("the entry is not in the checkpoint's tree at this index".into());
    }
    let plaintext = crypto::aead_decrypt(&entry_key, &royalty::nonce(extra.bound_seq), &royalty::aad(extra.epoch, proof.index), &ciphertext)
        .map_err(|_| "the entry key does not decrypt the ciphertext".to_string())?;
    let entry = serde_json::from_slice(&plaintext).map_err(|_| "the plaintext is not a royalty entry".to_string())?;
    Ok(Proven { entry, key_committed: true })
}
