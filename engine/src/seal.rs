//! The royalty seal's signature: the bytes a `RightsReportSealed` signature covers, and
//! signing and checking them with the engine's RSA key. The engine signs a seal the
//! projections drafted (`app::Market::seal`); auditors and exports check it. Not here:
//! what a seal commits to (the royalty-log projection computes it) and whether it may
//! extend the chain (the report aggregate decides).

use crate::crypto::{self, RsaPrivate, RsaPublic};
use crate::domain::event::RightsReportSealed;
use crate::note::{Checkpoint, NoteSigner};

/// The bytes a seal's signature covers: every field but the signature (the checkpoint's,
/// Ed25519 signature included, appended when there is one).
pub fn seal_message(seal: &RightsReportSealed) -> Vec<u8> {
    let mut message = b"vouchsafe rights report seal v1\0".to_vec();
    for number in [seal.epoch, seal.first_entry, seal.last_entry, seal.last_stream_seq] {
        message.extend_from_slice(&number.to_le_bytes());
    }
    for hash in [&seal.head_y, &seal.head_z, &seal.merkle_root, &seal.totals_digest, &seal.prev_seal_hash, &seal.stream_head] {
        message.extend_from_slice(hash);
    }
    message.extend_from_slice(&(seal.engine_key_id.len() as u64).to_le_bytes());
    message.extend_from_slice(seal.engine_key_id.as_bytes());
    if let Some(checkpoint) = &seal.checkpoint {
        message.extend_from_slice(&checkpoint.framed());
    }
    message
}

/// Signs a seal (RSA-PSS) in place with the engine's key. A drafted checkpoint (no origin
/// yet) is dropped: only `sign_seal_with` a checkpoint key completes one.
pub fn sign_seal(private: &RsaPrivate, seal: &mut RightsReportSealed) -> Result<(), crypto::CryptoError> {
    sign_seal_with(private, None, seal)
}

/// Signs a seal: first its drafted checkpoint as a C2SP signed note with `checkpoint_key`
/// (whose name becomes the origin; without a key the draft is dropped), then the whole seal,
/// checkpoint included, with the engine's RSA key.
pub fn sign_seal_with(private: &RsaPrivate, checkpoint_key: Option<&NoteSigner>, seal: &mut RightsReportSealed) -> Result<(), crypto::CryptoError> {
    match (checkpoint_key, seal.checkpoint.as_mut()) {
        (Some(signer), Some(checkpoint)) => {
            checkpoint.origin = signer.name().to_string();
            let note = Checkpoint { origin: checkpoint.origin.clone(), size: checkpoint.tree_size, root: checkpoint.root };
            checkpoint.signature = signer.sign(&note.text()).to_vec();
        }
        (None, Some(checkpoint)) if checkpoint.origin.is_empty() => seal.checkpoint = None,
        _ => {}
    }
    seal.engine_key_id = private.public().key_id();
    seal.signature = crypto::sign(private, &seal_message(seal))?;
    Ok(())
}

/// A seal's checkpoint as a signed note (`None`: a seal without one).
pub fn checkpoint_note(seal: &RightsReportSealed) -> Option<String> {
    let checkpoint = seal.checkpoint.as_ref()?;
    let note = Checkpoint { origin: checkpoint.origin.clone(), size: checkpoint.tree_size, root: checkpoint.root };
    Some(note.note(&checkpoint.origin, &checkpoint.signature))
}

/// Checks a seal's signature with the engine's public key.
pub fn verify_seal(public: &RsaPublic, seal: &RightsReportSealed) -> bool {
    seal.engine_key_id == public.key_id() && crypto::verify(public, &seal_message(seal), &seal.signature).is_ok()
}
