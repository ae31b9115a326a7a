//! Every cryptographic primitive Vouchsafe uses, in one place (DESIGN.md, "Crypto").
//!
//! What lives here: secret keys that zeroize on drop and never print; OS randomness;
//! constant-time comparison; HMAC-SHA256 (auth and receipt tokens, the player's proof of
//! holding a receipt, delivery access tokens); blake3 (hashing, keyed hashing, key
//! derivation, credential hashes); AES-256-GCM (media and royalty-entry encryption); and
//! RSA-2048+ (OAEP-SHA256 media-key wrapping, PSS-SHA256 signatures) with PEM/DER encoding.
//!
//! What deliberately does not: which key is used for what, key storage and rotation,
//! nonce bookkeeping, caching of parsed keys and unwrapped media keys, and running RSA
//! private-key work on a blocking pool. Those belong to the callers, which know the
//! context. This module does no I/O besides reading OS randomness and logs nothing.
//!
//! RSA operations (OAEP wrap and unwrap, PSS sign and verify) run in aws-lc-rs, whose
//! private-key operations are constant-time and blinded; the `rsa` crate 0.9 only parses,
//! encodes and generates keys, so RUSTSEC-2023-0071 (the Marvin timing side channel on its
//! private-key operations) no longer reaches an operation (SECURITY.md). Callers still run
//! private-key work off the async runtime (a signature is about 1 ms).
//!
//! This file holds what every primitive shares (the key type, randomness, constant-time
//! comparison, the error, the fixed test keys); the primitives sit in private submodules by
//! family (`tokens`: HMAC-SHA256 and the tokens built on it, `hashing`: blake3, `aead`:
//! AES-256-GCM, `rsa`: RSA keys, wrapping and signatures, aws-lc-rs inside, `ed25519`:
//! SHA-256 and Ed25519 for Merkle trees and signed notes) and are re-exported here, so
//! callers only ever name `crate::crypto::…`.

mod aead;
mod ed25519;
mod hashing;
mod rsa;
mod tokens;

pub use self::aead::{aead_decrypt, aead_decrypt_into, aead_encrypt};
pub use self::ed25519::{ED25519_KEY_BYTES, ED25519_SIGNATURE_BYTES, Ed25519Private, Ed25519Public, sha256};
pub use self::hashing::{Hasher, credential_hash, derive_hash, derive_key, hash, keyed_hash};
pub use self::rsa::{RsaPrivate, RsaPublic, SCRYPT_LOG_N_MAX, SCRYPT_R_MAX, sign, unwrap_key, unwrap_keys, verify, wrap_key, wrap_keys};
pub use self::tokens::{
    AccessDenied, ProofConsumer, TokenPurpose, access_token, check_access_token, confirm_proof, derive_token, hmac_sha256, hmac_sha256_framed, node_access_key,
    receipt_proof, verify_confirm_proof, verify_hmac_sha256_framed, verify_receipt_proof,
};

use std::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every symmetric key and derived token, in bytes.
pub const KEY_BYTES: usize = 32;
/// Length of an AES-256-GCM nonce, in bytes.
pub const NONCE_BYTES: usize = 12;
/// Smallest RSA modulus, in bits, that this module generates, parses or uses.
pub const RSA_BITS_MIN: usize = 2048;

/// Length of the AES-GCM authentication tag appended to every ciphertext, in bytes.
const AEAD_TAG_BYTES: usize = 16;

/// Why a cryptographic operation failed. Messages never contain key, token or MAC bytes.
#[derive(thiserror::Error, Debug)]
pub enum CryptoError {
    /// Authenticated decryption or key unwrapping failed.
    #[error("decryption failed: wrong key, wrong associated data or tampered ciphertext")]
    Decrypt,
    /// A signature does not verify under the given public key.
    #[error("signature does not verify: wrong key, altered message or altered signature")]
    BadSignature,
    /// A key could not be parsed or is too weak.
    #[error("bad key: {0}")]
    BadKey(String),
    /// The RSA library refused an operation.
    #[error("rsa operation failed: {0}")]
    Rsa(String),
    /// A passphrase does not open a protected private key (or the key inside is damaged:
    /// the two cannot be told apart, and are one answer).
    #[error("the passphrase does not open this key")]
    WrongPassphrase,
    /// The operating system's random number generator failed.
    #[error("os randomness unavailable; check the host's entropy source")]
    Random,
}

/// A 32-byte symmetric secret: zeroized on drop, never printed, compared in constant time.
///
/// There is deliberately no `PartialEq`, so `==` cannot be used by mistake; use
/// [`SecretKey::ct_eq`].
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_BYTES]);

/// Derived auth and receipt tokens are secrets too.
pub type Token = SecretKey;

impl SecretKey {
    /// Wraps existing key bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// Draws a fresh key from the OS random number generator.
    ///
    /// # Panics
    /// If the OS random number generator fails (see [`random_bytes`]).
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// The raw key bytes, for handing to a primitive or for sealed storage. Never log them.
    pub fn expose(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// Compares two keys in constant time.
    pub fn ct_eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// `N` bytes from the OS random number generator.
///
/// # Panics
/// If the OS random number generator fails, which on supported platforms happens only when
/// the host is broken; continuing with predictable keys would be worse than stopping.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the os random number generator must be available");
    bytes
}

/// Compares two byte strings in constant time (for equal lengths); `false` for different lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Two fixed RSA-2048 keys for tests, so tests do not pay for key generation. They are
/// public test data (engine/testdata/) and must never protect anything real.
#[cfg(any(test, feature = "test-util"))]
pub mod test_keys {
    use super::RsaPrivate;
    use std::sync::OnceLock;

    fn parse(cell: &'static OnceLock<RsaPrivate>, pem: &str) -> RsaPrivate {
        cell.get_or_init(|| RsaPrivate::from_pkcs8_pem(pem).expect("engine/testdata holds valid rsa-2048 pkcs#8 keys")).clone()
    }

    /// Test key "a" (engine/testdata/rsa-2048-a.pem).
    pub fn fixed_rsa() -> RsaPrivate {
        static KEY: OnceLock<RsaPrivate> = OnceLock::new();
        parse(&KEY, include_str!("../../testdata/rsa-2048-a.pem"))
    }

    /// Test key "b" (engine/testdata/rsa-2048-b.pem), distinct from [`fixed_rsa`].
    pub fn fixed_rsa_2() -> RsaPrivate {
        static KEY: OnceLock<RsaPrivate> = OnceLock::new();
        parse(&KEY, include_str!("../../testdata/rsa-2048-b.pem"))
    }

    /// Test key "c" (engine/testdata/rsa-2048-c.pem), distinct from both.
    pub fn fixed_rsa_3() -> RsaPrivate {
        static KEY: OnceLock<RsaPrivate> = OnceLock::new();
        parse(&KEY, include_str!("../../testdata/rsa-2048-c.pem"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
