//! The published media container, format version 1: what a publisher uploads, what a
//! node caches and streams, and what a player decrypts. Pure bytes in, bytes out; no I/O.
//!
//! Layout (all integers little-endian):
//! ```text
//! magic "VSMC" | u8 format_version = 1 | [u8; 12] nonce | [u8; 32] content_hash
//! | u64 ciphertext_len | ciphertext (AES-256-GCM under the media key, with the tag)
//! ```
//! `content_hash` is blake3 of the plaintext; it is also bound into the AEAD's associated
//! data, so a container whose header was swapped does not decrypt. Parsing an untrusted
//! container never panics and checks every length against the bytes present and
//! `CONTAINER_BYTES_MAX`. (The richer, signed, chunked layout of the media-container issue
//! will be format version 2; version 1 stays readable.)

use crate::crypto::{self, CryptoError, SecretKey};

pub const MAGIC: &[u8; 4] = b"VSMC";
pub const FORMAT_VERSION: u8 = 1;
/// Largest container accepted, in bytes.
pub const CONTAINER_BYTES_MAX: usize = 64 * 1024 * 1024;
const HEADER_BYTES: usize = 4 + 1 + 12 + 32 + 8;
const AAD_PREFIX: &[u8] = b"vouchsafe media container v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerError {
    #[error("not a media container (bad magic)")]
    BadMagic,
    #[error("unsupported container format version {0}")]
    Version(u8),
    #[error("container truncated: {needed} bytes needed, {present} present")]
    Truncated { needed: usize, present: usize },
    #[error("container of {0} bytes is over the {CONTAINER_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("{0} trailing bytes after the ciphertext")]
    Trailing(usize),
    #[error("the content does not decrypt with this media key")]
    Decrypt,
    #[error("the decrypted content does not match the container's content hash")]
    ContentHash,
}

/// A parsed container header with a borrowed ciphertext.
#[derive(Debug)]
pub struct Container<'a> {
    pub format_version: u8,
    pub nonce: [u8; 12],
    pub content_hash: [u8; 32],
    pub ciphertext: &'a [u8],
}

fn aad(content_hash: &[u8; 32]) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(content_hash);
    aad
}

/// Encrypts `content` under `media_key` with a fresh random nonce.
pub fn seal(media_key: &SecretKey, content: &[u8]) -> Vec<u8> {
    let nonce = crypto::random_bytes::<12>();
    let content_hash = crypto::hash(content);
    let ciphertext = crypto::aead_seal(media_key, &nonce, &aad(&content_hash), content);
    let mut bytes = Vec::with_capacity(HEADER_BYTES + ciphertext.len());
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&content_hash);
    bytes.extend_from_slice(&(ciphertext.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&ciphertext);
    bytes
}

/// Parses a container's structure without decrypting it.
pub fn parse(bytes: &[u8]) -> Result<Container<'_>, ContainerError> {
    if bytes.len() > CONTAINER_BYTES_MAX {
        return Err(ContainerError::TooLarge(bytes.len()));
    }
    if bytes.len() < 5 {
        return Err(ContainerError::Truncated { needed: HEADER_BYTES, present: bytes.len() });
    }
    if &bytes[..4] != MAGIC {
        return Err(ContainerError::BadMagic);
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(ContainerError::Version(bytes[4]));
    }
    if bytes.len() < HEADER_BYTES {
        return Err(ContainerError::Truncated { needed: HEADER_BYTES, present: bytes.len() });
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&bytes[5..17]);
    let mut content_hash = [0u8; 32];
    content_hash.copy_from_slice(&bytes[17..49]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[49..57]);
    let declared = u64::from_le_bytes(len);
    let body = &bytes[HEADER_BYTES..];
    let declared = usize::try_from(declared).map_err(|_| ContainerError::TooLarge(usize::MAX))?;
    if declared > body.len() {
        return Err(ContainerError::Truncated { needed: HEADER_BYTES.saturating_add(declared), present: bytes.len() });
    }
    if declared < body.len() {
        return Err(ContainerError::Trailing(body.len() - declared));
    }
    Ok(Container { format_version: FORMAT_VERSION, nonce, content_hash, ciphertext: body })
}

/// Decrypts a container and checks the content against its hash.
pub fn open(media_key: &SecretKey, bytes: &[u8]) -> Result<Vec<u8>, ContainerError> {
    let container = parse(bytes)?;
    let content = crypto::aead_open(media_key, &container.nonce, &aad(&container.content_hash), container.ciphertext).map_err(|_: CryptoError| ContainerError::Decrypt)?;
    if !crypto::ct_eq(&crypto::hash(&content), &container.content_hash) {
        return Err(ContainerError::ContentHash);
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_a_wrong_key_fails() {
        let key = SecretKey::random();
        let content = b"a song, for sale".repeat(100);
        let bytes = seal(&key, &content);
        assert_eq!(open(&key, &bytes).expect("opens"), content);
        assert_eq!(parse(&bytes).expect("parses").content_hash, crypto::hash(&content));
        assert_eq!(open(&SecretKey::random(), &bytes), Err(ContainerError::Decrypt));
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused_without_panic() {
        let key = SecretKey::random();
        let bytes = seal(&key, b"short content");
        for cut in 0..bytes.len() {
            assert!(open(&key, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                assert!(open(&key, &flipped).is_err(), "bit {bit} of byte {i}");
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(parse(&longer).map(|_| ()), Err(ContainerError::Trailing(1)));
        let mut huge_len = bytes.clone();
        huge_len[49..57].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&huge_len), Err(ContainerError::TooLarge(_) | ContainerError::Truncated { .. })));
    }
}
