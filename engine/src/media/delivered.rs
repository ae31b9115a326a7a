//! The delivered copy a player keeps: the transaction record, the engine's signature and
//! the decrypted content, so a copy found in the wild names its purchase.
//!
//! ```text
//! magic "VSDC" | u8 format_version = 1 | u32 record_len | record (canonical bytes)
//! | u16 signature_len | signature | u64 content_len | content
//! ```
//! The copy is stamped, not watermarked: whoever strips the header keeps the content.
//! Marking the audio itself is out of scope.
//!
//! What does not live here: the record and its signature (`transaction`), and decrypting
//! the content (the container formats).

use super::reader::Reader;
use super::transaction::{RECORD_BYTES_MAX, SIGNATURE_BYTES_MAX, TransactionError, TransactionRecord, verify_transaction};
use super::{CONTAINER_BYTES_MAX, ContainerError};
use crate::crypto::{self, RsaPublic};

pub const DELIVERED_MAGIC: &[u8; 4] = b"VSDC";
pub const DELIVERED_FORMAT_VERSION: u8 = 1;

/// A parsed delivered copy, borrowing from the file's bytes.
#[derive(Debug)]
pub struct DeliveredCopy<'a> {
    pub format_version: u8,
    pub record: TransactionRecord,
    pub signature: &'a [u8],
    pub content: &'a [u8],
}

/// What checking a delivered copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCheck {
    /// The engine's signature over the record verifies (and the record names that key).
    pub signature: Result<(), TransactionError>,
    /// The content is what the record's content hash names.
    pub content_ok: bool,
}

impl CopyCheck {
    pub fn ok(&self) -> bool {
        self.signature.is_ok() && self.content_ok
    }
}

impl DeliveredCopy<'_> {
    /// Checks the record's signature with the engine's public key and the content against
    /// the record's content hash.
    pub fn check(&self, engine: &RsaPublic) -> CopyCheck {
        CopyCheck { signature: verify_transaction(engine, &self.record, self.signature), content_ok: self.content_ok() }
    }

    /// The content is what the record names (no key needed).
    pub fn content_ok(&self) -> bool {
        crypto::ct_eq(&crypto::hash(self.content), &self.record.content_hash)
    }
}

/// The header of a delivered copy: everything before the content, which follows it
/// (`content_len` bytes), so a player can write the content as it decrypts it.
pub fn delivered_copy_header(record: &TransactionRecord, signature: &[u8], content_len: u64) -> Vec<u8> {
    let message = record.message();
    let mut header = Vec::with_capacity(4 + 1 + 4 + message.len() + 2 + signature.len() + 8);
    header.extend_from_slice(DELIVERED_MAGIC);
    header.push(DELIVERED_FORMAT_VERSION);
    header.extend_from_slice(&(message.len() as u32).to_le_bytes());
    header.extend_from_slice(&message);
    header.extend_from_slice(&(signature.len() as u16).to_le_bytes());
    header.extend_from_slice(signature);
    header.extend_from_slice(&content_len.to_le_bytes());
    header
}

/// A whole delivered copy: the header and the content.
pub fn delivered_copy(record: &TransactionRecord, signature: &[u8], content: &[u8]) -> Vec<u8> {
    let mut bytes = delivered_copy_header(record, signature, content.len() as u64);
    bytes.extend_from_slice(content);
    bytes
}

/// Parses an untrusted delivered copy (never panics; every length is bounded).
pub fn parse_delivered_copy(bytes: &[u8]) -> Result<DeliveredCopy<'_>, ContainerError> {
    if bytes.len() > CONTAINER_BYTES_MAX.saturating_add(RECORD_BYTES_MAX + SIGNATURE_BYTES_MAX + 64) {
        return Err(ContainerError::TooLarge(bytes.len()));
    }
    let mut reader = Reader::new(bytes);
    if reader.take(4)? != DELIVERED_MAGIC {
        return Err(ContainerError::BadMagic);
    }
    let format_version = reader.u8()?;
    if format_version != DELIVERED_FORMAT_VERSION {
        return Err(ContainerError::Version(format_version));
    }
    let record_len = reader.u32()?;
    let record_len = reader.bounded(u64::from(record_len), RECORD_BYTES_MAX, "the transaction record")?;
    let record = TransactionRecord::decode(reader.take(record_len)?)?;
    let signature_len = reader.u16()?;
    let signature_len = reader.bounded(u64::from(signature_len), SIGNATURE_BYTES_MAX, "the signature")?;
    let signature = reader.take(signature_len)?;
    let content_len = reader.u64()?;
    let content_len = reader.bounded(content_len, CONTAINER_BYTES_MAX, "the content")?;
    let content = reader.take(content_len)?;
    reader.finish()?;
    Ok(DeliveredCopy { format_version, record, signature, content })
}
