//! Media files: the published media container, what a publisher uploads, a node caches
//! and streams and a player decrypts; the engine-signed transaction record of one
//! delivery; and the delivered copy a player keeps (the record, its signature and the
//! decrypted content). Pure bytes in, bytes out; no I/O, no clock. The byte-level layouts
//! are specified in docs/media-format.md.
//!
//! Parsing an untrusted container never panics, checks every length against the bytes
//! present and a named limit before using it, and accepts only the canonical layout
//! (sections tile the body in table order, no trailing bytes).
//!
//! This file holds what every format shares: the container magic and size limit, the error
//! type, and `parse`, which dispatches on the format version. The formats sit in
//! submodules, each with its byte layout: `v1` (container format 1), `v2` (container
//! format 2), `transaction` (the signed transaction record and batch signatures) and
//! `delivered` (the delivered copy); `reader` is the bounded reader they all parse with.
//! Everything public is re-exported here, so callers only ever name `crate::media::…`.

mod delivered;
mod reader;
mod transaction;
mod v1;
mod v2;

pub use self::delivered::{CopyCheck, DELIVERED_FORMAT_VERSION, DELIVERED_MAGIC, DeliveredCopy, delivered_copy, delivered_copy_header, parse_delivered_copy};
pub use self::transaction::{
    BATCH_SIGNATURE_MAGIC, BATCH_SIGNATURE_VERSION, BatchSignature, RECORD_FIELD_BYTES_MAX, SIGNATURE_BYTES_MAX, TRANSACTION_BATCH_MAX, TransactionError,
    TransactionRecord, batch_root_message, sign_transaction_batch, transaction_message, verify_transaction,
};
pub use self::v1::{Container, FORMAT_VERSION, encrypt_v1, open, parse_v1};
pub use self::v2::{
    CHUNK_BYTES_DEFAULT, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, COMPONENTS_MAX, Component, ComponentSpec, ContainerSpec, ContainerV2, FORMAT_VERSION_2,
    FORMAT_VERSION_3, HEADER_V2_BYTES, INDEX_ENTRY_BYTES, IndexEntry, MEDIA_TYPE_BYTES_MAX, NAME_BYTES_MAX, PUBLISHER_KEY_BYTES_MAX, Preview, PreviewSpec,
    PurchaseKeys, RENDITIONS_MAX, RenditionEntry, RenditionSpec, Section, TOC_BYTES_MAX, components_key, encrypt_v2, encrypt_v3, parse_v2, purchase_keys,
    rendition_key,
};

pub const MAGIC: &[u8; 4] = b"VSMC";
/// Largest container accepted, in bytes.
pub const CONTAINER_BYTES_MAX: usize = 64 * 1024 * 1024;

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
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("the publisher's signature over the table of contents does not verify")]
    BadSignature,
    #[error("{0} does not match the hash in the signed table of contents")]
    SectionHash(String),
    #[error("cannot sign the container: {0}")]
    Sign(String),
}

/// A parsed container of any supported format version.
#[derive(Debug)]
pub enum Parsed<'a> {
    V1(Container<'a>),
    V2(Box<ContainerV2<'a>>),
}

impl Parsed<'_> {
    pub fn format_version(&self) -> u8 {
        match self {
            Parsed::V1(_) => FORMAT_VERSION,
            Parsed::V2(container) => container.format_version,
        }
    }
}

/// Parses a container of any supported version without decrypting or verifying it.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, ContainerError> {
    if bytes.len() > CONTAINER_BYTES_MAX {
        return Err(ContainerError::TooLarge(bytes.len()));
    }
    match bytes.get(4) {
        Some(&(FORMAT_VERSION_2 | FORMAT_VERSION_3)) if bytes.get(..4) == Some(MAGIC.as_slice()) => {
            parse_v2(bytes).map(|container| Parsed::V2(Box::new(container)))
        }
        _ => parse_v1(bytes).map(Parsed::V1),
    }
}

#[cfg(test)]
mod tests;
