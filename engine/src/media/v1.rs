//! Container format 1: one AES-256-GCM ciphertext of the whole content under the media key.
//!
//! **Container format 1** (legacy, still accepted and readable; all integers little-endian):
//! ```text
//! magic "VSMC" | u8 format_version = 1 | [u8; 12] nonce | [u8; 32] content_hash
//! | u64 ciphertext_len | ciphertext (AES-256-GCM under the media key, with the tag)
//! ```
//! `content_hash` is blake3 of the plaintext; it is also bound into the AEAD's associated
//! data, so a container whose header was swapped does not decrypt. It is not signed.
//!
//! What does not live here: format 2 (`v2`, signed and chunked) and the choice between
//! the formats (`parse` in `mod.rs` dispatches on the version byte).

use super::{CONTAINER_BYTES_MAX, ContainerError, MAGIC};
use crate::crypto::{self, CryptoError, SecretKey};

pub const FORMAT_VERSION: u8 = 1;
const HEADER_BYTES: usize = 4 + 1 + 12 + 32 + 8;
const AAD_PREFIX: &[u8] = b"vouchsafe media container v1";

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
pub fn encrypt_v1(media_key: &SecretKey, content: &[u8]) -> Vec<u8> {
    let nonce = crypto::random_bytes::<12>();
    let content_hash = crypto::hash(content);
    let ciphertext = crypto::aead_encrypt(media_key, &nonce, &aad(&content_hash), content);
    let mut bytes = Vec::with_capacity(HEADER_BYTES + ciphertext.len());
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&content_hash);
    bytes.extend_from_slice(&(ciphertext.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&ciphertext);
    bytes
}

/// Parses a format-1 container's structure without decrypting it.
pub fn parse_v1(bytes: &[u8]) -> Result<Container<'_>, ContainerError> {
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

/// Decrypts a format-1 container and checks the content against its hash.
pub fn open(media_key: &SecretKey, bytes: &[u8]) -> Result<Vec<u8>, ContainerError> {
    let container = parse_v1(bytes)?;
    let content = crypto::aead_decrypt(media_key, &container.nonce, &aad(&container.content_hash), container.ciphertext)
        .map_err(|_: CryptoError| ContainerError::Decrypt)?;
    if !crypto::ct_eq(&crypto::hash(&content), &container.content_hash) {
        return Err(ContainerError::ContentHash);
    }
    Ok(content)
}
