//! SHA-256 and Ed25519 (RFC 8032): the hash of RFC 6962 Merkle trees and the signature of
//! C2SP signed notes (the royalty log's checkpoints).
//!
//! What does not live here: the note and checkpoint text and the key ID and vkey formats
//! (`crate::note`), the tree (`crate::tlog`), and where the key is stored (the gateways'
//! `keys` module).

use super::{CryptoError, random_bytes};
use ed25519_dalek::Signer as _;
use sha2::Digest as _;
use std::fmt;

/// Length of an Ed25519 public key and of its private seed, in bytes.
pub const ED25519_KEY_BYTES: usize = 32;
/// Length of an Ed25519 signature, in bytes.
pub const ED25519_SIGNATURE_BYTES: usize = 64;

/// SHA-256 of the concatenation of `parts` (framing, where needed, is the caller's).
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// An Ed25519 private key: zeroized on drop (`ed25519-dalek`'s `zeroize` feature), never
/// printed.
#[derive(Clone)]
pub struct Ed25519Private(ed25519_dalek::SigningKey);

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ed25519Public(ed25519_dalek::VerifyingKey);

impl Ed25519Private {
    /// A fresh key from the OS random number generator.
    pub fn generate() -> Self {
        let mut seed: [u8; ED25519_KEY_BYTES] = random_bytes();
        let key = Self(ed25519_dalek::SigningKey::from_bytes(&seed));
        zeroize::Zeroize::zeroize(&mut seed);
        key
    }

    /// The key of a 32-byte RFC 8032 seed.
    pub fn from_seed(seed: &[u8; ED25519_KEY_BYTES]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for the key file only. Never log it.
    pub fn seed(&self) -> [u8; ED25519_KEY_BYTES] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> Ed25519Public {
        Ed25519Public(self.0.verifying_key())
    }

    /// The RFC 8032 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; ED25519_SIGNATURE_BYTES] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for Ed25519Private {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Private(<redacted>)")
    }
}

impl Ed25519Public {
    /// A public key from its 32 bytes; refused if they are not a point on the curve.
    pub fn from_bytes(bytes: &[u8; ED25519_KEY_BYTES]) -> Result<Self, CryptoError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes).map(Self).map_err(|_| CryptoError::BadKey("not an ed25519 public key".into()))
    }

    pub fn to_bytes(&self) -> [u8; ED25519_KEY_BYTES] {
        self.0.to_bytes()
    }

    /// Checks a signature strictly (RFC 8032, no malleable or small-order forms).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| CryptoError::BadSignature)?;
        self.0.verify_strict(message, &signature).map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Debug for Ed25519Public {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519Public({})", hex::encode(self.to_bytes()))
    }
}
