//! blake3: plain hashes, keyed hashes, key derivation and the stored form of credential
//! secrets.
//!
//! What does not live here: the HMAC-SHA256 tokens (`tokens`, which also derives the
//! per-node access key), and the choice of contexts for derived values elsewhere in the
//! engine: each caller names its own hardcoded, versioned context.

use super::SecretKey;

// A domain-separation context. Changing it changes every stored credential hash, so it
// carries a version.
const CONTEXT_CREDENTIAL_HASH: &str = "vouchsafe 2025-01-01 credential secret hash v1";

// ---- blake3 --------------------------------------------------------------------------------

/// blake3 hash (content hashes, running hashes).
pub fn hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// blake3 keyed hash (a MAC when `key` is secret).
pub fn keyed_hash(key: &SecretKey, data: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key.expose(), data).as_bytes()
}

/// blake3 `derive_key`: a key for `context` (a hardcoded, globally unique string) from
/// `material`.
pub fn derive_key(context: &str, material: &[u8]) -> SecretKey {
    SecretKey(blake3::derive_key(context, material))
}

/// The stored form of a credential secret (merchants, nodes, auditors): a blake3 hash in its
/// own `derive_key` context, so it never equals any other hash of the same bytes.
pub fn credential_hash(secret: &[u8]) -> [u8; 32] {
    blake3::derive_key(CONTEXT_CREDENTIAL_HASH, secret)
}
