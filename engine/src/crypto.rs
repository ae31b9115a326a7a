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
//! RSA comes from `rsa` 0.9, which is affected by RUSTSEC-2023-0071 (the Marvin timing side
//! channel on private-key operations; no 0.9 release fixes it). Private-key operations here
//! are blinded, but callers must still keep [`unwrap_key`] and [`sign`] off paths an attacker
//! can time at volume, and run them off the async runtime (about 1.5–2 ms each).

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit as _, Payload};
use hmac::{Hmac, Mac};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::sha2::{Digest as _, Sha256 as PaddingSha256};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, Pss, RsaPrivateKey, RsaPublicKey};
use std::fmt;
use std::num::NonZeroU32;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every symmetric key and derived token, in bytes.
pub const KEY_BYTES: usize = 32;
/// Length of an AES-256-GCM nonce, in bytes.
pub const NONCE_BYTES: usize = 12;
/// Smallest RSA modulus, in bits, that this module generates, parses or uses.
pub const RSA_BITS_MIN: usize = 2048;

/// Length of the AES-GCM authentication tag appended to every ciphertext, in bytes.
const AEAD_TAG_BYTES: usize = 16;

// Domain-separation labels and contexts. Changing any of them changes every derived value,
// so they carry a version.
const LABEL_AUTH_TOKEN: &[u8] = b"vouchsafe.auth-token.v1";
const LABEL_RECEIPT_TOKEN: &[u8] = b"vouchsafe.receipt-token.v1";
const LABEL_RECEIPT_PROOF: &[u8] = b"vouchsafe.receipt-proof.v1";
const LABEL_ACCESS_TOKEN: &[u8] = b"vouchsafe.access-token.v1";
const CONTEXT_NODE_ACCESS_KEY: &str = "vouchsafe 2025-01-01 node access key v1";
const CONTEXT_CREDENTIAL_HASH: &str = "vouchsafe 2025-01-01 credential secret hash v1";

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

// ---- HMAC-SHA256 ---------------------------------------------------------------------------

type HmacSha256 = Hmac<sha2::Sha256>;

fn hmac_new(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("hmac accepts keys of any length")
}

fn hmac_framed(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = hmac_new(key);
    for part in parts {
        let len = u64::try_from(part.len()).expect("a slice length fits in u64");
        mac.update(&len.to_le_bytes());
        mac.update(part);
    }
    mac
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = hmac_new(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 over `parts`, each prefixed by its length as a u64 little-endian, so that
/// different splits of the same bytes (`["ab", "c"]` and `["a", "bc"]`) give different tags.
pub fn hmac_sha256_framed(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    hmac_framed(key, parts).finalize().into_bytes().into()
}

/// Checks a [`hmac_sha256_framed`] tag in constant time; a tag of the wrong length is `false`.
pub fn verify_hmac_sha256_framed(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    tag.len() == 32 && hmac_framed(key, parts).verify_slice(tag).is_ok()
}

// ---- tokens --------------------------------------------------------------------------------

/// What a derived token is for; each purpose has its own label, so an auth token can never
/// be presented as a receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPurpose {
    /// Lets the holder of a voucher redeem it.
    Auth,
    /// Proves to a delivery node that the player holds the voucher's receipt.
    Receipt,
}

impl TokenPurpose {
    /// The domain-separation label hashed into tokens of this purpose.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            TokenPurpose::Auth => LABEL_AUTH_TOKEN,
            TokenPurpose::Receipt => LABEL_RECEIPT_TOKEN,
        }
    }
}

/// `HMAC(token_key, purpose ‖ voucher_id ‖ generation)` (framed). Deterministic, so the
/// engine re-derives a token instead of storing it; a new generation revokes the old token.
pub fn derive_token(
    token_key: &SecretKey,
    purpose: TokenPurpose,
    voucher_id: &str,
    generation: u32,
) -> Token {
    let generation_bytes = generation.to_le_bytes();
    SecretKey(hmac_sha256_framed(
        token_key.expose(),
        &[purpose.as_bytes(), voucher_id.as_bytes(), &generation_bytes],
    ))
}

/// The player's proof that it holds `receipt`, bound to the voucher, the node and a fresh
/// `challenge` chosen by the node, so a proof cannot be replayed elsewhere or later.
pub fn receipt_proof(
    receipt: &Token,
    voucher_id: &str,
    node_id: &str,
    challenge: &[u8],
) -> [u8; 32] {
    hmac_sha256_framed(
        receipt.expose(),
        &[
            LABEL_RECEIPT_PROOF,
            voucher_id.as_bytes(),
            node_id.as_bytes(),
            challenge,
        ],
    )
}

/// Checks a [`receipt_proof`] in constant time.
pub fn verify_receipt_proof(
    receipt: &Token,
    voucher_id: &str,
    node_id: &str,
    challenge: &[u8],
    proof: &[u8],
) -> bool {
    verify_hmac_sha256_framed(
        receipt.expose(),
        &[
            LABEL_RECEIPT_PROOF,
            voucher_id.as_bytes(),
            node_id.as_bytes(),
            challenge,
        ],
        proof,
    )
}

/// The per-node key for delivery access tokens, derived from the engine token key with
/// blake3 `derive_key`, so a node holds only its own key and cannot mint tokens for others.
pub fn node_access_key(token_key: &SecretKey, node_id: &str) -> SecretKey {
    // The token key has a fixed length, so `token_key ‖ node_id` is unambiguous.
    let mut hasher = blake3::Hasher::new_derive_key(CONTEXT_NODE_ACCESS_KEY);
    hasher.update(token_key.expose());
    hasher.update(node_id.as_bytes());
    SecretKey(*hasher.finalize().as_bytes())
}

fn access_token_mac(
    node_key: &SecretKey,
    node_id: &str,
    voucher_id: &str,
    media_ids: &[&str],
    expires_at_ms: i64,
) -> HmacSha256 {
    let media_count = u64::try_from(media_ids.len()).expect("a slice length fits in u64");
    let mut parts: Vec<&[u8]> = Vec::with_capacity(media_ids.len() + 5);
    let media_count_bytes = media_count.to_le_bytes();
    let expires_bytes = expires_at_ms.to_le_bytes();
    parts.push(LABEL_ACCESS_TOKEN);
    parts.push(node_id.as_bytes());
    parts.push(&media_count_bytes);
    parts.extend(media_ids.iter().map(|media_id| media_id.as_bytes()));
    parts.push(voucher_id.as_bytes());
    parts.push(&expires_bytes);
    hmac_framed(node_key.expose(), &parts)
}

/// A delivery access token (a CDN signed URL's signature):
/// `HMAC(node_key, node ‖ media ids ‖ voucher ‖ expires_at_ms)` (framed, media ids counted).
pub fn access_token(
    node_key: &SecretKey,
    node_id: &str,
    voucher_id: &str,
    media_ids: &[&str],
    expires_at_ms: i64,
) -> [u8; 32] {
    access_token_mac(node_key, node_id, voucher_id, media_ids, expires_at_ms)
        .finalize()
        .into_bytes()
        .into()
}

/// Why a delivery access token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    /// The token is authentic but `now_ms` is past its expiry; ask for a fresh link.
    #[error("access token expired; request a new delivery link")]
    Expired,
    /// The token does not match the node, voucher, media or expiry it is presented with.
    #[error("access token invalid for this node, voucher, media or expiry")]
    Invalid,
}

/// Checks an [`access_token`] in constant time, then its expiry. A token is valid up to and
/// including `expires_at_ms`. Expiry is only reported for authentic tokens.
pub fn check_access_token(
    node_key: &SecretKey,
    node_id: &str,
    voucher_id: &str,
    media_ids: &[&str],
    expires_at_ms: i64,
    now_ms: i64,
    token: &[u8],
) -> Result<(), AccessDenied> {
    let mac = access_token_mac(node_key, node_id, voucher_id, media_ids, expires_at_ms);
    if token.len() != 32 || mac.verify_slice(token).is_err() {
        return Err(AccessDenied::Invalid);
    }
    if now_ms > expires_at_ms {
        return Err(AccessDenied::Expired);
    }
    Ok(())
}

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

// ---- AES-256-GCM ---------------------------------------------------------------------------

fn aead_cipher(key: &SecretKey) -> Aes256Gcm {
    Aes256Gcm::new(key.expose().into())
}

/// AES-256-GCM encryption: returns `ciphertext ‖ 16-byte tag`. A nonce must never repeat
/// under one key; choosing and recording nonces is the caller's job.
///
/// # Panics
/// If `plaintext` is longer than AES-GCM's limit (about 64 GiB).
pub fn aead_seal(
    key: &SecretKey,
    nonce: &[u8; NONCE_BYTES],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    aead_cipher(key)
        .encrypt(
            nonce.into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("aes-gcm refuses only plaintexts over 64 GiB, which callers never build")
}

/// AES-256-GCM decryption of `ciphertext ‖ tag`; fails on a wrong key, nonce or `aad`, or any
/// altered byte.
pub fn aead_open(
    key: &SecretKey,
    nonce: &[u8; NONCE_BYTES],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.len() < AEAD_TAG_BYTES {
        return Err(CryptoError::Decrypt);
    }
    aead_cipher(key)
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

// ---- RSA -----------------------------------------------------------------------------------

/// The OS random number generator in the `rand_core` 0.6 shape that `rsa` 0.9 expects.
struct OsRng;

/// The `rand_core` error code reported when the OS generator fails.
const OS_RNG_FAILED: NonZeroU32 = match NonZeroU32::new(rsa::rand_core::Error::CUSTOM_START) {
    Some(code) => code,
    None => panic!("CUSTOM_START is not zero"),
};

impl rsa::rand_core::RngCore for OsRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes(random_bytes())
    }

    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes(random_bytes())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        getrandom::fill(dest).expect("the os random number generator must be available");
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        getrandom::fill(dest).map_err(|_| rsa::rand_core::Error::from(OS_RNG_FAILED))
    }
}

impl rsa::rand_core::CryptoRng for OsRng {}

fn check_bits(bits: usize) -> Result<(), CryptoError> {
    if bits < RSA_BITS_MIN {
        return Err(CryptoError::BadKey(format!(
            "rsa key has {bits} bits, at least {RSA_BITS_MIN} are required; generate a larger key"
        )));
    }
    Ok(())
}

/// An RSA private key (2048 bits or more). Zeroized on drop by `rsa`; `Debug` shows only the
/// public key id.
#[derive(Clone)]
pub struct RsaPrivate {
    key: RsaPrivateKey,
    public: RsaPublic,
}

/// An RSA public key (2048 bits or more), identified by [`RsaPublic::key_id`].
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublic {
    key: RsaPublicKey,
    id: [u8; 8],
}

impl RsaPrivate {
    fn from_key(key: RsaPrivateKey) -> Result<Self, CryptoError> {
        let public = RsaPublic::from_key(key.to_public_key())?;
        Ok(Self { key, public })
    }

    /// Generates a fresh key of `bits` bits (at least [`RSA_BITS_MIN`]). Slow: seconds.
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        check_bits(bits)?;
        let key =
            RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| CryptoError::Rsa(e.to_string()))?;
        Self::from_key(key)
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| CryptoError::BadKey(format!("not a pkcs#8 pem rsa private key: {e}")))?;
        Self::from_key(key)
    }

    /// Encodes the key as PKCS#8 PEM, in memory that is zeroized on drop.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| CryptoError::Rsa(format!("cannot encode private key: {e}")))
    }

    /// The matching public key.
    pub fn public(&self) -> RsaPublic {
        self.public.clone()
    }
}

impl fmt::Debug for RsaPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPrivate")
            .field("key_id", &self.public.key_id())
            .field("private", &"<redacted>")
            .finish()
    }
}

impl RsaPublic {
    fn from_key(key: RsaPublicKey) -> Result<Self, CryptoError> {
        check_bits(key.n().bits())?;
        let der = key
            .to_public_key_der()
            .map_err(|e| CryptoError::Rsa(format!("cannot encode public key: {e}")))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash(der.as_bytes())[..8]);
        Ok(Self { key, id })
    }

    /// Parses an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = RsaPublicKey::from_public_key_pem(pem)
            .map_err(|e| CryptoError::BadKey(format!("not an spki pem rsa public key: {e}")))?;
        Self::from_key(key)
    }

    /// Encodes the key as SPKI PEM.
    pub fn to_pem(&self) -> Result<String, CryptoError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| CryptoError::Rsa(format!("cannot encode public key: {e}")))
    }

    /// Parses an SPKI DER public key.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = RsaPublicKey::from_public_key_der(der)
            .map_err(|e| CryptoError::BadKey(format!("not an spki der rsa public key: {e}")))?;
        Self::from_key(key)
    }

    /// Encodes the key as SPKI DER.
    pub fn to_der(&self) -> Result<Vec<u8>, CryptoError> {
        self.key
            .to_public_key_der()
            .map(|der| der.into_vec())
            .map_err(|e| CryptoError::Rsa(format!("cannot encode public key: {e}")))
    }

    /// Hex of the first 8 bytes of blake3(SPKI DER): a short, stable name for the key.
    pub fn key_id(&self) -> String {
        hex::encode(self.id)
    }
}

impl fmt::Debug for RsaPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPublic")
            .field("key_id", &self.key_id())
            .finish()
    }
}

/// Wraps a symmetric key for `recipient` with RSA-OAEP-SHA256 (fresh OS randomness each call).
pub fn wrap_key(recipient: &RsaPublic, key: &SecretKey) -> Result<Vec<u8>, CryptoError> {
    recipient
        .key
        .encrypt(&mut OsRng, Oaep::new::<PaddingSha256>(), key.expose())
        .map_err(|e| CryptoError::Rsa(e.to_string()))
}

/// Unwraps a [`wrap_key`] result (blinded RSA-OAEP-SHA256). Any failure, including a
/// plaintext that is not exactly [`KEY_BYTES`] long, is [`CryptoError::Decrypt`].
pub fn unwrap_key(private: &RsaPrivate, wrapped: &[u8]) -> Result<SecretKey, CryptoError> {
    let plaintext = Zeroizing::new(
        private
            .key
            .decrypt_blinded(&mut OsRng, Oaep::new::<PaddingSha256>(), wrapped)
            .map_err(|_| CryptoError::Decrypt)?,
    );
    let bytes: [u8; KEY_BYTES] = plaintext
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(SecretKey(bytes))
}

/// Signs `message` with RSA-PSS-SHA256 (blinded, 32-byte salt).
pub fn sign(private: &RsaPrivate, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let digest = PaddingSha256::digest(message);
    private
        .key
        .sign_with_rng(&mut OsRng, Pss::new_blinded::<PaddingSha256>(), &digest)
        .map_err(|e| CryptoError::Rsa(e.to_string()))
}

/// Verifies an RSA-PSS-SHA256 signature made by [`sign`].
pub fn verify(public: &RsaPublic, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let digest = PaddingSha256::digest(message);
    public
        .key
        .verify(Pss::new::<PaddingSha256>(), &digest, signature)
        .map_err(|_| CryptoError::BadSignature)
}

/// Two fixed RSA-2048 keys for tests, so tests do not pay for key generation. They are
/// public test data (engine/testdata/) and must never protect anything real.
#[cfg(any(test, feature = "test-util"))]
pub mod test_keys {
    use super::RsaPrivate;
    use std::sync::OnceLock;

    fn parse(cell: &'static OnceLock<RsaPrivate>, pem: &str) -> RsaPrivate {
        cell.get_or_init(|| {
            RsaPrivate::from_pkcs8_pem(pem)
                .expect("engine/testdata holds valid rsa-2048 pkcs#8 keys")
        })
        .clone()
    }

    /// Test key "a" (engine/testdata/rsa-2048-a.pem).
    pub fn fixed_rsa() -> RsaPrivate {
        static KEY: OnceLock<RsaPrivate> = OnceLock::new();
        parse(&KEY, include_str!("../testdata/rsa-2048-a.pem"))
    }

    /// Test key "b" (engine/testdata/rsa-2048-b.pem), distinct from [`fixed_rsa`].
    pub fn fixed_rsa_2() -> RsaPrivate {
        static KEY: OnceLock<RsaPrivate> = OnceLock::new();
        parse(&KEY, include_str!("../testdata/rsa-2048-b.pem"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::test_keys::{fixed_rsa, fixed_rsa_2};
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes([byte; KEY_BYTES])
    }

    // ---- HMAC: RFC 4231 section 4, HMAC-SHA-256 outputs of test cases 1–4, 6, 7 ----

    #[test]
    fn hmac_sha256_rfc4231() {
        let case4_key: Vec<u8> = (1u8..=25).collect();
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (vec![0x0b; 20], b"Hi There".to_vec(), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (b"Jefe".to_vec(), b"what do ya want for nothing?".to_vec(), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            (vec![0xaa; 20], vec![0xdd; 50], "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
            (case4_key, vec![0xcd; 50], "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
            (vec![0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, expected) in &cases {
            assert_eq!(hex::encode(hmac_sha256(key, data)), *expected);
        }
    }

    #[test]
    fn hmac_framed_is_unambiguous_and_verifies() {
        let key = b"k";
        let ab_c = hmac_sha256_framed(key, &[b"ab", b"c"]);
        assert_ne!(ab_c, hmac_sha256_framed(key, &[b"a", b"bc"]));
        assert_ne!(ab_c, hmac_sha256_framed(key, &[b"abc"]));
        assert_ne!(ab_c, hmac_sha256(key, b"abc"));
        assert!(verify_hmac_sha256_framed(key, &[b"ab", b"c"], &ab_c));
        assert!(!verify_hmac_sha256_framed(key, &[b"a", b"bc"], &ab_c));
        assert!(!verify_hmac_sha256_framed(b"other", &[b"ab", b"c"], &ab_c));
        assert!(!verify_hmac_sha256_framed(key, &[b"ab", b"c"], &ab_c[..16]));
        let mut flipped = ab_c;
        flipped[31] ^= 1;
        assert!(!verify_hmac_sha256_framed(key, &[b"ab", b"c"], &flipped));
    }

    // ---- blake3: BLAKE3-team/BLAKE3 test_vectors/test_vectors.json (first 32 bytes) ----

    const BLAKE3_KEY: &[u8; 32] = b"whats the Elvish word for friend";
    const BLAKE3_CONTEXT: &str = "BLAKE3 2019-12-27 16:29:52 test vectors context";
    /// (input_len, hash, keyed_hash, derive_key)
    const BLAKE3_VECTORS: [(usize, &str, &str, &str); 7] = [
        (
            0,
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26",
            "2cc39783c223154fea8dfb7c1b1660f2ac2dcbd1c1de8277b0b0dd39b7e50d7d",
        ),
        (
            1,
            "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
            "6d7878dfff2f485635d39013278ae14f1454b8c0a3a2d34bc1ab38228a80c95b",
            "b3e2e340a117a499c6cf2398a19ee0d29cca2bb7404c73063382693bf66cb06c",
        ),
        (
            1023,
            "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11",
            "c951ecdf03288d0fcc96ee3413563d8a6d3589547f2c2fb36d9786470f1b9d6e",
            "74a16c1c3d44368a86e1ca6df64be6a2f64cce8f09220787450722d85725dea5",
        ),
        (
            1024,
            "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
            "75c46f6f3d9eb4f55ecaaee480db732e6c2105546f1e675003687c31719c7ba4",
            "7356cd7720d5b66b6d0697eb3177d9f8d73a4a5c5e968896eb6a689684302706",
        ),
        (
            1025,
            "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
            "357dc55de0c7e382c900fd6e320acc04146be01db6a8ce7210b7189bd664ea69",
            "effaa245f065fbf82ac186839a249707c3bddf6d3fdda22d1b95a3c970379bcb",
        ),
        (
            2048,
            "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a",
            "879cf1fa2ea0e79126cb1063617a05b6ad9d0b696d0d757cf053439f60a99dd1",
            "7b2945cb4fef70885cc5d78a87bf6f6207dd901ff239201351ffac04e1088a23",
        ),
        (
            31744,
            "62b6960e1a44bcc1eb1a611a8d6235b6b4b78f32e7abc4fb4c6cdcce94895c47",
            "efa53b389ab67c593dba624d898d0f7353ab99e4ac9d42302ee64cbf9939a419",
            "39772aef80e0ebe60596361e45b061e8f417429d529171b6764468c22928e28e",
        ),
    ];

    #[test]
    fn blake3_official_vectors() {
        let key = SecretKey::from_bytes(*BLAKE3_KEY);
        for (input_len, expected_hash, expected_keyed, expected_derived) in BLAKE3_VECTORS {
            let input: Vec<u8> = (0..input_len)
                .map(|i| u8::try_from(i % 251).unwrap())
                .collect();
            assert_eq!(
                hex::encode(hash(&input)),
                expected_hash,
                "hash, len {input_len}"
            );
            assert_eq!(
                hex::encode(keyed_hash(&key, &input)),
                expected_keyed,
                "keyed, len {input_len}"
            );
            let derived = derive_key(BLAKE3_CONTEXT, &input);
            assert_eq!(
                hex::encode(derived.expose()),
                expected_derived,
                "derive, len {input_len}"
            );
        }
    }

    #[test]
    fn credential_hash_is_context_separated() {
        let secret = b"merchant secret";
        assert_eq!(credential_hash(secret), credential_hash(secret));
        assert_ne!(credential_hash(secret), credential_hash(b"merchant secreT"));
        assert_ne!(credential_hash(secret), hash(secret));
        assert_ne!(
            credential_hash(secret),
            *derive_key("another context", secret).expose()
        );
    }

    // ---- AES-256-GCM: McGrew & Viega, "The Galois/Counter Mode of Operation", cases 13–16 ----

    const GCM_KEY: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    const GCM_IV: &str = "cafebabefacedbaddecaf888";
    const GCM_PLAIN: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
    const GCM_CIPHER: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";

    fn check_gcm(key_hex: &str, iv_hex: &str, aad_hex: &str, plain_hex: &str, sealed_hex: &str) {
        let key = SecretKey::from_bytes(unhex(key_hex).try_into().unwrap());
        let nonce: [u8; NONCE_BYTES] = unhex(iv_hex).try_into().unwrap();
        let (aad, plain) = (unhex(aad_hex), unhex(plain_hex));
        let sealed = aead_seal(&key, &nonce, &aad, &plain);
        assert_eq!(hex::encode(&sealed), sealed_hex);
        assert_eq!(aead_open(&key, &nonce, &aad, &sealed).unwrap(), plain);
    }

    #[test]
    fn aes256gcm_spec_case_13() {
        check_gcm(
            &"00".repeat(32),
            &"00".repeat(12),
            "",
            "",
            "530f8afbc74536b9a963b4f1c4cb738b",
        );
    }

    #[test]
    fn aes256gcm_spec_case_14() {
        let sealed = "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919";
        check_gcm(
            &"00".repeat(32),
            &"00".repeat(12),
            "",
            &"00".repeat(16),
            sealed,
        );
    }

    #[test]
    fn aes256gcm_spec_case_15() {
        let sealed = format!("{GCM_CIPHER}b094dac5d93471bdec1a502270e3cc6c");
        check_gcm(GCM_KEY, GCM_IV, "", GCM_PLAIN, &sealed);
    }

    #[test]
    fn aes256gcm_spec_case_16() {
        // 60-byte plaintext (a partial final block) and 20 bytes of associated data.
        let sealed = format!("{}76fc6ece0f4e1768cddf8853bb2d551b", &GCM_CIPHER[..120]);
        check_gcm(
            GCM_KEY,
            GCM_IV,
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            &GCM_PLAIN[..120],
            &sealed,
        );
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let (key, nonce) = (SecretKey::random(), random_bytes::<NONCE_BYTES>());
        let sealed = aead_seal(&key, &nonce, b"media-1", b"the media bytes");
        assert_eq!(sealed.len(), b"the media bytes".len() + AEAD_TAG_BYTES);
        assert_eq!(
            aead_open(&key, &nonce, b"media-1", &sealed).unwrap(),
            b"the media bytes"
        );
        assert!(matches!(
            aead_open(&SecretKey::random(), &nonce, b"media-1", &sealed),
            Err(CryptoError::Decrypt)
        ));
        assert!(aead_open(&key, &nonce, b"media-2", &sealed).is_err());
        assert!(aead_open(&key, &[0u8; NONCE_BYTES], b"media-1", &sealed).is_err());
        for index in [0, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[index] ^= 0x01;
            assert!(
                aead_open(&key, &nonce, b"media-1", &flipped).is_err(),
                "bit flip at {index}"
            );
        }
        assert!(aead_open(&key, &nonce, b"media-1", &sealed[..AEAD_TAG_BYTES - 1]).is_err());
        assert!(aead_open(&key, &nonce, b"media-1", &sealed[..sealed.len() - 1]).is_err());
    }

    // ---- RSA ----

    #[test]
    fn rsa_wrap_unwrap() {
        let (private, other) = (fixed_rsa(), fixed_rsa_2());
        let media_key = SecretKey::random();
        let wrapped = wrap_key(&private.public(), &media_key).unwrap();
        assert_eq!(wrapped.len(), 256);
        assert!(unwrap_key(&private, &wrapped).unwrap().ct_eq(&media_key));
        // OAEP is randomized: wrapping twice gives different ciphertexts.
        assert_ne!(wrapped, wrap_key(&private.public(), &media_key).unwrap());
        assert!(matches!(
            unwrap_key(&other, &wrapped),
            Err(CryptoError::Decrypt)
        ));
        let mut flipped = wrapped.clone();
        flipped[100] ^= 0x01;
        assert!(unwrap_key(&private, &flipped).is_err());
    }

    #[test]
    fn rsa_unwrap_refuses_wrong_length_plaintext() {
        let private = fixed_rsa();
        let short = private
            .public
            .key
            .encrypt(&mut OsRng, Oaep::new::<PaddingSha256>(), &[7u8; 16])
            .unwrap();
        assert!(matches!(
            unwrap_key(&private, &short),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn rsa_sign_verify() {
        let (private, other) = (fixed_rsa(), fixed_rsa_2());
        let public = private.public();
        let signature = sign(&private, b"sealed report 42").unwrap();
        verify(&public, b"sealed report 42", &signature).unwrap();
        assert!(matches!(
            verify(&public, b"sealed report 43", &signature),
            Err(CryptoError::BadSignature)
        ));
        let mut altered = signature.clone();
        altered[10] ^= 0x80;
        assert!(verify(&public, b"sealed report 42", &altered).is_err());
        assert!(verify(&public, b"sealed report 42", &signature[1..]).is_err());
        assert!(verify(&other.public(), b"sealed report 42", &signature).is_err());
    }

    #[test]
    fn rsa_encoding_round_trips() {
        let (private, other) = (fixed_rsa(), fixed_rsa_2());
        let public = private.public();
        let pem = private.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let reparsed = RsaPrivate::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(reparsed.public(), public);
        assert_eq!(
            RsaPublic::from_pem(&public.to_pem().unwrap()).unwrap(),
            public
        );
        let der = public.to_der().unwrap();
        assert_eq!(RsaPublic::from_der(&der).unwrap(), public);
        assert_eq!(public.key_id(), hex::encode(&hash(&der)[..8]));
        assert_eq!(public.key_id().len(), 16);
        assert_ne!(public, other.public());
        assert_ne!(public.key_id(), other.public().key_id());
        assert!(RsaPublic::from_der(&der[1..]).is_err());
        assert!(matches!(
            RsaPrivate::from_pkcs8_pem("not a key"),
            Err(CryptoError::BadKey(_))
        ));
    }

    #[test]
    fn rsa_small_keys_are_refused() {
        assert!(matches!(
            RsaPrivate::generate(1024),
            Err(CryptoError::BadKey(_))
        ));
        let small = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let pem = small.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert!(matches!(
            RsaPrivate::from_pkcs8_pem(&pem),
            Err(CryptoError::BadKey(_))
        ));
        let der = small.to_public_key().to_public_key_der().unwrap();
        assert!(matches!(
            RsaPublic::from_der(der.as_bytes()),
            Err(CryptoError::BadKey(_))
        ));
        let public_pem = small
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        assert!(matches!(
            RsaPublic::from_pem(&public_pem),
            Err(CryptoError::BadKey(_))
        ));
    }

    #[test]
    fn fixed_test_keys_are_distinct_2048_bit_keys() {
        let (a, b) = (fixed_rsa(), fixed_rsa_2());
        assert_eq!(a.key.n().bits(), 2048);
        assert_eq!(b.key.n().bits(), 2048);
        assert_ne!(a.public(), b.public());
    }

    // ---- tokens ----

    #[test]
    fn derive_token_is_deterministic_and_separated() {
        let token = derive_token(&key(1), TokenPurpose::Auth, "v-1", 0);
        assert!(token.ct_eq(&derive_token(&key(1), TokenPurpose::Auth, "v-1", 0)));
        assert!(!token.ct_eq(&derive_token(&key(1), TokenPurpose::Receipt, "v-1", 0)));
        assert!(!token.ct_eq(&derive_token(&key(1), TokenPurpose::Auth, "v-2", 0)));
        assert!(!token.ct_eq(&derive_token(&key(1), TokenPurpose::Auth, "v-1", 1)));
        assert!(!token.ct_eq(&derive_token(&key(2), TokenPurpose::Auth, "v-1", 0)));
        assert_ne!(
            TokenPurpose::Auth.as_bytes(),
            TokenPurpose::Receipt.as_bytes()
        );
    }

    #[test]
    fn receipt_proof_binds_node_challenge_voucher_and_receipt() {
        let receipt = derive_token(&key(1), TokenPurpose::Receipt, "v-1", 0);
        let other_receipt = derive_token(&key(1), TokenPurpose::Receipt, "v-1", 1);
        let proof = receipt_proof(&receipt, "v-1", "node-a", b"challenge-1");
        assert!(verify_receipt_proof(
            &receipt,
            "v-1",
            "node-a",
            b"challenge-1",
            &proof
        ));
        assert!(!verify_receipt_proof(
            &receipt,
            "v-1",
            "node-b",
            b"challenge-1",
            &proof
        ));
        assert!(!verify_receipt_proof(
            &receipt,
            "v-1",
            "node-a",
            b"challenge-2",
            &proof
        ));
        assert!(!verify_receipt_proof(
            &receipt,
            "v-2",
            "node-a",
            b"challenge-1",
            &proof
        ));
        assert!(!verify_receipt_proof(
            &other_receipt,
            "v-1",
            "node-a",
            b"challenge-1",
            &proof
        ));
        assert!(!verify_receipt_proof(
            &receipt,
            "v-1",
            "node-a",
            b"challenge-1",
            &proof[..31]
        ));
    }

    #[test]
    fn access_token_checks() {
        let token_key = key(9);
        let node_key = node_access_key(&token_key, "node-a");
        let media: &[&str] = &["m-1", "m-2"];
        let token = access_token(&node_key, "node-a", "v-1", media, 1_000);
        let check = |node_key: &SecretKey,
                     node: &str,
                     voucher: &str,
                     media: &[&str],
                     expires: i64,
                     now: i64| {
            check_access_token(node_key, node, voucher, media, expires, now, &token)
        };
        assert_eq!(check(&node_key, "node-a", "v-1", media, 1_000, 999), Ok(()));
        assert_eq!(
            check(&node_key, "node-a", "v-1", media, 1_000, 1_000),
            Ok(())
        );
        assert_eq!(
            check(&node_key, "node-a", "v-1", media, 1_000, 1_001),
            Err(AccessDenied::Expired)
        );
        assert_eq!(
            check(&node_key, "node-a", "v-1", media, 2_000, 1_001),
            Err(AccessDenied::Invalid)
        );
        assert_eq!(
            check(&node_key, "node-a", "v-2", media, 1_000, 0),
            Err(AccessDenied::Invalid)
        );
        assert_eq!(
            check(&node_key, "node-a", "v-1", &["m-1"], 1_000, 0),
            Err(AccessDenied::Invalid)
        );
        assert_eq!(
            check(&node_key, "node-a", "v-1", &["m-2", "m-1"], 1_000, 0),
            Err(AccessDenied::Invalid)
        );
        assert_eq!(
            check(&node_key, "node-a", "v-1", &["m-1m-2"], 1_000, 0),
            Err(AccessDenied::Invalid)
        );
        assert_eq!(
            check(&node_key, "node-b", "v-1", media, 1_000, 0),
            Err(AccessDenied::Invalid)
        );
        let other_node_key = node_access_key(&token_key, "node-b");
        assert!(!other_node_key.ct_eq(&node_key));
        assert!(node_access_key(&token_key, "node-a").ct_eq(&node_key));
        assert!(!node_access_key(&key(8), "node-a").ct_eq(&node_key));
        assert_eq!(
            check(&other_node_key, "node-a", "v-1", media, 1_000, 0),
            Err(AccessDenied::Invalid)
        );
        assert_eq!(
            check_access_token(&node_key, "node-a", "v-1", media, 1_000, 0, &token[..16]),
            Err(AccessDenied::Invalid)
        );
    }

    // ---- secrets never print; constant-time comparison ----

    #[test]
    fn debug_never_shows_secret_bytes() {
        let secret = SecretKey::from_bytes(random_bytes());
        let printed = format!("{secret:?} {:#?}", secret);
        assert_eq!(format!("{secret:?}"), "SecretKey(<redacted>)");
        assert!(!printed.contains(&hex::encode(secret.expose())));
        assert!(!printed.contains(&format!("{:?}", secret.expose())));

        let private = fixed_rsa();
        let printed = format!("{private:?} {:#?}", private);
        let d = rsa::traits::PrivateKeyParts::d(&private.key).to_bytes_be();
        assert!(!printed.contains(&hex::encode(&d)));
        assert!(!printed.contains(&hex::encode(&d).to_uppercase()));
        assert!(!printed.contains(&rsa::traits::PrivateKeyParts::d(&private.key).to_string()));
        let pem = private.to_pkcs8_pem().unwrap();
        assert!(!printed.contains(&pem.lines().nth(5).unwrap().to_string()));
        assert!(printed.contains(&private.public().key_id()));
        assert!(format!("{:?}", private.public()).contains(&private.public().key_id()));
    }

    #[test]
    fn ct_eq_compares_bytes_and_lengths() {
        assert!(ct_eq(b"same bytes", b"same bytes"));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"same bytes", b"same bytez"));
        assert!(!ct_eq(b"same", b"same bytes"));
        assert!(key(1).ct_eq(&key(1)));
        assert!(!key(1).ct_eq(&key(2)));
    }

    #[test]
    fn random_draws_differ() {
        assert_ne!(random_bytes::<32>(), random_bytes::<32>());
        assert!(!SecretKey::random().ct_eq(&SecretKey::random()));
    }
}
