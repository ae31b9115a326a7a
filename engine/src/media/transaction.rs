//! The transaction record of one delivery, its signature by the engine, and batch
//! signatures (one RSA signature over the Merkle root of many records).
//!
//! A **transaction record** names one delivery: voucher, media, rendition, node, the
//! engine's clock at redemption, the engine key id, the consumer and certificate serial and
//! the content hash. The engine signs its canonical bytes ([`TransactionRecord::message`])
//! with RSA-PSS, alone or in a batch; nothing in it is secret.
//!
//! What does not live here: the delivered copy that carries a record (`delivered`), the
//! Merkle tree itself (`crate::merkle`) and when the engine batches (`crate::batch_signer`).

use super::ContainerError;
use super::reader::{Reader, put_framed};
use crate::crypto::{self, CryptoError, RsaPrivate, RsaPublic};
use crate::ids::{CertSerial, ConsumerId, MediaId, Millis, NodeId, VoucherId};

const TRANSACTION_LABEL: &[u8] = b"vouchsafe transaction record v1\0";
/// A recovered copy's record: version 1's fields, then the recovery number (u32 LE).
/// A delivery's record stays version 1, byte for byte.
const TRANSACTION_LABEL_V2: &[u8] = b"vouchsafe transaction record v2\0";
/// Longest id or name in a transaction record, in bytes (ids are at most 64).
pub const RECORD_FIELD_BYTES_MAX: usize = 256;
/// Longest signature accepted in a delivered copy (RSA up to 8192 bits).
pub const SIGNATURE_BYTES_MAX: usize = 1024;
pub(super) const RECORD_BYTES_MAX: usize = TRANSACTION_LABEL.len() + 7 * (8 + RECORD_FIELD_BYTES_MAX) + 8 + 32 + 4;

/// One delivery of one media, as the engine signs it at Redeem. Nothing here is secret:
/// ids, the engine's clock and the content hash of the rendition the voucher bought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionRecord {
    pub voucher_id: VoucherId,
    pub media_id: MediaId,
    /// The rendition the voucher bought (its name in the media's catalog entry).
    pub rendition: String,
    /// The delivery node the voucher was issued to.
    pub node_id: NodeId,
    /// The engine's clock when it answered the redemption.
    pub delivered_at: Millis,
    /// The key id of the engine key that signs the record.
    pub engine_key_id: String,
    pub consumer_id: ConsumerId,
    pub cert_serial: CertSerial,
    /// blake3 of the rendition's plaintext content.
    pub content_hash: [u8; 32],
    /// 0 for the delivery; n for the n-th recovery of a lost copy (`CopyRecovered`).
    pub recovery: u32,
}

/// Why a transaction record does not name a delivery by this engine.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransactionError {
    #[error("the record names engine key {record}, not the given key {given}; check the engine.pub.pem used")]
    KeyId { record: String, given: String },
    #[error("the engine's signature over the transaction record does not verify")]
    BadSignature,
}

impl TransactionRecord {
    /// The canonical bytes the engine's signature covers: a versioned label, then each
    /// text field framed by its u64 length, then `delivered_at` (i64) and the content hash.
    pub fn message(&self) -> Vec<u8> {
        let mut message = if self.recovery == 0 { TRANSACTION_LABEL.to_vec() } else { TRANSACTION_LABEL_V2.to_vec() };
        for part in self.text_fields() {
            put_framed(&mut message, part.as_bytes());
        }
        message.extend_from_slice(&self.delivered_at.0.to_le_bytes());
        message.extend_from_slice(&self.content_hash);
        if self.recovery != 0 {
            message.extend_from_slice(&self.recovery.to_le_bytes());
        }
        message
    }

    fn text_fields(&self) -> [&str; 7] {
        [&self.voucher_id.0, &self.media_id.0, &self.rendition, &self.node_id.0, &self.engine_key_id, &self.consumer_id.0, &self.cert_serial.0]
    }

    /// Parses canonical bytes made by [`TransactionRecord::message`]; anything else
    /// (another label, an over-long field, trailing bytes) is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContainerError> {
        let mut reader = Reader::new(bytes);
        let version2 = match reader.take(TRANSACTION_LABEL.len())? {
            label if label == TRANSACTION_LABEL => false,
            label if label == TRANSACTION_LABEL_V2 => true,
            _ => return Err(ContainerError::Malformed("not a version 1 or 2 transaction record".into())),
        };
        let mut text = || reader.framed_str(RECORD_FIELD_BYTES_MAX, "a transaction record field").map(str::to_string);
        let (voucher_id, media_id, rendition, node_id, engine_key_id, consumer_id, cert_serial) =
            (text()?, text()?, text()?, text()?, text()?, text()?, text()?);
        let delivered_at = Millis(reader.i64()?);
        let content_hash = reader.array::<32>()?;
        let recovery = if version2 { reader.u32()? } else { 0 };
        if version2 && recovery == 0 {
            return Err(ContainerError::Malformed("a version 2 transaction record with recovery 0".into()));
        }
        reader.finish()?;
        Ok(Self {
            voucher_id: VoucherId(voucher_id),
            media_id: MediaId(media_id),
            rendition,
            node_id: NodeId(node_id),
            delivered_at,
            engine_key_id,
            consumer_id: ConsumerId(consumer_id),
            cert_serial: CertSerial(cert_serial),
            content_hash,
            recovery,
        })
    }
}

/// The canonical bytes of a transaction record (what the engine signs).
pub fn transaction_message(record: &TransactionRecord) -> Vec<u8> {
    record.message()
}

/// Checks that `signature` is `engine`'s signature over `record`, and that the record names
/// that key: either an RSA-PSS signature over the record itself, or a batch signature
/// (`TransactionBatch`) whose Merkle path leads from the record to a root `engine` signed.
pub fn verify_transaction(engine: &RsaPublic, record: &TransactionRecord, signature: &[u8]) -> Result<(), TransactionError> {
    if record.engine_key_id != engine.key_id() {
        return Err(TransactionError::KeyId { record: record.engine_key_id.clone(), given: engine.key_id() });
    }
    let message = record.message();
    if let Some(batch) = BatchSignature::parse(signature) {
        let root = crate::merkle::root_from_proof(&crypto::hash(&message), batch.index as usize, batch.size as usize, &batch.path);
        if root.is_some_and(|root| crypto::verify(engine, &batch_root_message(&root, batch.size), batch.root_signature).is_ok()) {
            return Ok(());
        }
    }
    // A plain signature (or, with odds of 2^-32, one that merely starts like a batch).
    crypto::verify(engine, &message, signature).map_err(|_| TransactionError::BadSignature)
}

// ---- batch signatures ------------------------------------------------------------------------

/// The start of a batch signature; a plain RSA signature is just the signature bytes.
pub const BATCH_SIGNATURE_MAGIC: &[u8; 4] = b"VSTB";
pub const BATCH_SIGNATURE_VERSION: u8 = 1;
/// Most records one batch signature covers: a path of at most 10 hashes, so a batch
/// signature stays under `SIGNATURE_BYTES_MAX` with keys up to RSA-4096.
pub const TRANSACTION_BATCH_MAX: usize = 1024;
const BATCH_LABEL: &[u8] = b"vouchsafe transaction batch v1\0";
/// Longest Merkle path accepted (a tree of up to 2^16 leaves).
const BATCH_PATH_MAX: usize = 16;

/// The bytes the engine signs for a batch: a label, the Merkle root over the records'
/// hashes (`blake3(TransactionRecord::message)`, RFC 6962 leaves) and the batch size.
pub fn batch_root_message(root: &[u8; 32], size: u32) -> Vec<u8> {
    let mut message = BATCH_LABEL.to_vec();
    message.extend_from_slice(root);
    message.extend_from_slice(&size.to_le_bytes());
    message
}

/// The signature of one record in a batch: its position, the batch size, its Merkle path
/// and the engine's signature over the root (`batch_root_message`). One RSA private-key
/// operation signs the whole batch, which is what lets redemptions outrun the ≈ 600
/// signatures per second and core of RSA-2048 (ARCHITECTURE.md).
///
/// Bytes: `VSTB`, version 1, index (u32 LE), size (u32 LE), path length (u8), the path's
/// hashes (32 bytes each, from the leaf up), signature length (u16 LE), the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSignature<'a> {
    pub index: u32,
    pub size: u32,
    pub path: Vec<[u8; 32]>,
    pub root_signature: &'a [u8],
}

impl<'a> BatchSignature<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(4 + 1 + 4 + 4 + 1 + 32 * self.path.len() + 2 + self.root_signature.len());
        bytes.extend_from_slice(BATCH_SIGNATURE_MAGIC);
        bytes.push(BATCH_SIGNATURE_VERSION);
        bytes.extend_from_slice(&self.index.to_le_bytes());
        bytes.extend_from_slice(&self.size.to_le_bytes());
        bytes.push(u8::try_from(self.path.len()).unwrap_or(u8::MAX));
        for hash in &self.path {
            bytes.extend_from_slice(hash);
        }
        bytes.extend_from_slice(&u16::try_from(self.root_signature.len()).unwrap_or(u16::MAX).to_le_bytes());
        bytes.extend_from_slice(self.root_signature);
        bytes
    }

    /// Parses untrusted bytes; `None` unless they are exactly a batch signature.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut reader = Reader::new(bytes);
        if reader.take(4).ok()? != BATCH_SIGNATURE_MAGIC || reader.u8().ok()? != BATCH_SIGNATURE_VERSION {
            return None;
        }
        let index = reader.u32().ok()?;
        let size = reader.u32().ok()?;
        let path_len = usize::from(reader.u8().ok()?);
        if path_len > BATCH_PATH_MAX || index >= size {
            return None;
        }
        let path = (0..path_len).map(|_| reader.array::<32>()).collect::<Result<Vec<_>, _>>().ok()?;
        let signature_len = usize::from(reader.u16().ok()?);
        let root_signature = reader.take(signature_len).ok()?;
        reader.finish().ok()?;
        Some(Self { index, size, path, root_signature })
    }
}

/// Signs `records` with one RSA-PSS signature over the Merkle root of their hashes; one
/// batch signature per record, in order. At most `TRANSACTION_BATCH_MAX` records.
pub fn sign_transaction_batch(private: &RsaPrivate, records: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, CryptoError> {
    let leaves: Vec<[u8; 32]> = records.iter().map(|message| crypto::hash(message)).collect();
    let (root, paths) = crate::merkle::root_and_proofs(&leaves);
    let size = u32::try_from(leaves.len()).unwrap_or(u32::MAX);
    let root_signature = crypto::sign(private, &batch_root_message(&root, size))?;
    Ok(paths
        .into_iter()
        .enumerate()
        .map(|(index, path)| BatchSignature { index: u32::try_from(index).unwrap_or(u32::MAX), size, path, root_signature: &root_signature }.encode())
        .collect())
}
