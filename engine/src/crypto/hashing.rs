//! blake3: plain hashes, keyed hashes, key derivation, context-separated hashes, an
//! incremental `Hasher` for input that arrives in parts, and the stored form of credential
//! secrets.
//!
//! What does not live here: the HMAC-SHA256 tokens (`tokens`, which also derives the
//! per-node access key), and the choice of contexts for derived values elsewhere in the
//! engine: each caller names its own hardcoded, versioned context.

use super::SecretKey;
use std::fmt;

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

/// blake3 in its `derive_key` mode, as plain bytes: a hash of `input` that no hash in
/// another `context` (a hardcoded, globally unique, versioned string) can equal. For
/// derived values that are not secrets (ids, checksums, check values); a key comes from
/// [`derive_key`], which keeps it in a [`SecretKey`].
pub fn derive_hash(context: &'static str, input: &[u8]) -> [u8; 32] {
    blake3::derive_key(context, input)
}

/// An incremental blake3 hash, for input fed in parts: [`Hasher::new`] gives what [`hash`]
/// gives for the concatenated parts, [`Hasher::new_derive_key`] what [`derive_hash`] gives.
/// A thin wrapper, so callers name no hash crate; cloning copies the state (a fixed-size
/// copy, no allocation), so a hasher set up once can be cloned for each use.
#[derive(Clone)]
pub struct Hasher(blake3::Hasher);

impl Hasher {
    /// A plain blake3 hasher.
    pub fn new() -> Self {
        Self(blake3::Hasher::new())
    }

    /// A blake3 hasher in `derive_key` mode for `context` (a hardcoded, globally unique,
    /// versioned string).
    pub fn new_derive_key(context: &'static str) -> Self {
        Self(blake3::Hasher::new_derive_key(context))
    }

    /// Feeds `input`; parts are concatenated as they are, so a caller that needs the
    /// boundaries between variable-length parts frames them itself.
    pub fn update(&mut self, input: &[u8]) -> &mut Self {
        self.0.update(input);
        self
    }

    /// The hash of everything fed so far; the hasher stays usable.
    pub fn finalize(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Shows nothing of the state: what was fed in may be secret.
impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher").finish_non_exhaustive()
    }
}
