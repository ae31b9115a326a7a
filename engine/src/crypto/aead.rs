//! AES-256-GCM: encrypting and decrypting with a caller-chosen nonce and associated data.
//!
//! What does not live here: nonce bookkeeping (a nonce must never repeat under one key, and
//! only the caller knows its positions or counters) and the container formats built on it
//! (`crate::media`).

use super::{AEAD_TAG_BYTES, CryptoError, NONCE_BYTES, SecretKey};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, AeadInOut as _, KeyInit as _, Payload};

fn aead_cipher(key: &SecretKey) -> Aes256Gcm {
    Aes256Gcm::new(key.expose().into())
}

/// AES-256-GCM encryption: returns `ciphertext ‖ 16-byte tag`. A nonce must never repeat
/// under one key; choosing and recording nonces is the caller's job.
///
/// # Panics
/// If `plaintext` is longer than AES-GCM's limit (about 64 GiB).
pub fn aead_encrypt(key: &SecretKey, nonce: &[u8; NONCE_BYTES], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    aead_cipher(key).encrypt(nonce.into(), Payload { msg: plaintext, aad }).expect("aes-gcm refuses only plaintexts over 64 GiB, which callers never build")
}

/// AES-256-GCM decryption of `ciphertext ‖ tag`; fails on a wrong key, nonce or `aad`, or any
/// altered byte.
pub fn aead_decrypt(key: &SecretKey, nonce: &[u8; NONCE_BYTES], aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.len() < AEAD_TAG_BYTES {
        return Err(CryptoError::Decrypt);
    }
    aead_cipher(key).decrypt(nonce.into(), Payload { msg: ciphertext, aad }).map_err(|_| CryptoError::Decrypt)
}

/// AES-256-GCM decryption of `ciphertext ‖ tag` into `plaintext` (cleared first, then
/// holding the plaintext; on failure its content is unspecified and must not be used), so a
/// caller opening many chunks reuses one buffer instead of allocating one per chunk.
pub fn aead_decrypt_into(key: &SecretKey, nonce: &[u8; NONCE_BYTES], aad: &[u8], ciphertext: &[u8], plaintext: &mut Vec<u8>) -> Result<(), CryptoError> {
    let Some(data_len) = ciphertext.len().checked_sub(AEAD_TAG_BYTES) else {
        return Err(CryptoError::Decrypt);
    };
    let (data, tag) = ciphertext.split_at(data_len);
    let tag: [u8; AEAD_TAG_BYTES] = tag.try_into().map_err(|_| CryptoError::Decrypt)?;
    plaintext.clear();
    plaintext.extend_from_slice(data);
    aead_cipher(key).decrypt_inout_detached(nonce.into(), aad, plaintext.as_mut_slice().into(), &tag.into()).map_err(|_| CryptoError::Decrypt)
}
