//! Media files: the published media container (format version 1 here), what a publisher
//! uploads, a node caches and streams and a player decrypts; the engine-signed
//! transaction record of one delivery; and the delivered copy a player keeps (the record,
//! its signature and the decrypted content). Pure bytes in, bytes out; no I/O, no clock.
//!
//! Container format 1 layout (all integers little-endian):
//! ```text
//! magic "VSMC" | u8 format_version = 1 | [u8; 12] nonce | [u8; 32] content_hash
//! | u64 ciphertext_len | ciphertext (AES-256-GCM under the media key, with the tag)
//! ```
//! `content_hash` is blake3 of the plaintext; it is also bound into the AEAD's associated
//! data, so a container whose header was swapped does not decrypt. Parsing an untrusted
//! container never panics and checks every length against the bytes present and
//! `CONTAINER_BYTES_MAX`. (The richer, signed, chunked layout of the media-container issue
//! will be format version 2; version 1 stays readable.)
//!
//! A **transaction record** names one delivery: voucher, media, rendition, node, the
//! engine's clock at redemption, the engine key id, the consumer and certificate serial and
//! the content hash. The engine signs its canonical bytes ([`TransactionRecord::message`])
//! with RSA-PSS; nothing in it is secret. A **delivered copy** (magic `VSDC`) carries the
//! record, the signature and the content, so a copy found in the wild names its purchase:
//! ```text
//! magic "VSDC" | u8 format_version = 1 | u32 record_len | record (canonical bytes)
//! | u16 signature_len | signature | u64 content_len | content
//! ```
//! The copy is stamped, not watermarked: whoever strips the header keeps the content.
//! Marking the audio itself is out of scope.

use crate::crypto::{self, CryptoError, RsaPublic, SecretKey};
use crate::ids::{CertSerial, ConsumerId, MediaId, Millis, NodeId, VoucherId};

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
    #[error("malformed: {0}")]
    Malformed(String),
}

/// A bounded little-endian reader over untrusted bytes: every read checks the bytes
/// present, every length a caller reads is checked against a limit before it is used.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ContainerError> {
        let end = self.position.checked_add(len).ok_or(ContainerError::TooLarge(usize::MAX))?;
        let slice = self.bytes.get(self.position..end).ok_or(ContainerError::Truncated { needed: end, present: self.bytes.len() })?;
        self.position = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ContainerError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, ContainerError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ContainerError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ContainerError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ContainerError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, ContainerError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A length read from the input, refused above `max` before anything is allocated.
    fn bounded(&mut self, declared: u64, max: usize, what: &str) -> Result<usize, ContainerError> {
        usize::try_from(declared).ok().filter(|len| *len <= max).ok_or_else(|| ContainerError::Malformed(format!("{what} of {declared} bytes is over the {max}-byte limit")))
    }

    /// Bytes framed by a u64 length (the canonical framing of signed messages).
    fn framed(&mut self, max: usize, what: &str) -> Result<&'a [u8], ContainerError> {
        let declared = self.u64()?;
        let len = self.bounded(declared, max, what)?;
        self.take(len)
    }

    fn framed_str(&mut self, max: usize, what: &str) -> Result<&'a str, ContainerError> {
        std::str::from_utf8(self.framed(max, what)?).map_err(|_| ContainerError::Malformed(format!("{what} is not UTF-8")))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn finish(&self) -> Result<(), ContainerError> {
        match self.remaining() {
            0 => Ok(()),
            trailing => Err(ContainerError::Trailing(trailing)),
        }
    }
}

fn put_framed(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u64).to_le_bytes());
    out.extend_from_slice(part);
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

// ---- transaction records -------------------------------------------------------------------

const TRANSACTION_LABEL: &[u8] = b"vouchsafe transaction record v1\0";
/// Longest id or name in a transaction record, in bytes (ids are at most 64).
pub const RECORD_FIELD_BYTES_MAX: usize = 256;
/// Longest signature accepted in a delivered copy (RSA up to 8192 bits).
pub const SIGNATURE_BYTES_MAX: usize = 1024;
const RECORD_BYTES_MAX: usize = TRANSACTION_LABEL.len() + 7 * (8 + RECORD_FIELD_BYTES_MAX) + 8 + 32;

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
        let mut message = TRANSACTION_LABEL.to_vec();
        for part in self.text_fields() {
            put_framed(&mut message, part.as_bytes());
        }
        message.extend_from_slice(&self.delivered_at.0.to_le_bytes());
        message.extend_from_slice(&self.content_hash);
        message
    }

    fn text_fields(&self) -> [&str; 7] {
        [&self.voucher_id.0, &self.media_id.0, &self.rendition, &self.node_id.0, &self.engine_key_id, &self.consumer_id.0, &self.cert_serial.0]
    }

    /// Parses canonical bytes made by [`TransactionRecord::message`]; anything else
    /// (another label, an over-long field, trailing bytes) is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContainerError> {
        let mut reader = Reader::new(bytes);
        if reader.take(TRANSACTION_LABEL.len())? != TRANSACTION_LABEL {
            return Err(ContainerError::Malformed("not a version 1 transaction record".into()));
        }
        let mut text = || reader.framed_str(RECORD_FIELD_BYTES_MAX, "a transaction record field").map(str::to_string);
        let (voucher_id, media_id, rendition, node_id, engine_key_id, consumer_id, cert_serial) = (text()?, text()?, text()?, text()?, text()?, text()?, text()?);
        let delivered_at = Millis(reader.i64()?);
        let content_hash = reader.array::<32>()?;
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
        })
    }
}

/// The canonical bytes of a transaction record (what the engine signs).
pub fn transaction_message(record: &TransactionRecord) -> Vec<u8> {
    record.message()
}

/// Checks that `signature` is `engine`'s RSA-PSS signature over `record`, and that the
/// record names that key.
pub fn verify_transaction(engine: &RsaPublic, record: &TransactionRecord, signature: &[u8]) -> Result<(), TransactionError> {
    if record.engine_key_id != engine.key_id() {
        return Err(TransactionError::KeyId { record: record.engine_key_id.clone(), given: engine.key_id() });
    }
    crypto::verify(engine, &record.message(), signature).map_err(|_| TransactionError::BadSignature)
}

// ---- delivered copies ----------------------------------------------------------------------

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

    fn record() -> TransactionRecord {
        TransactionRecord {
            voucher_id: VoucherId::new("v1"),
            media_id: MediaId::new("md1"),
            rendition: "high".into(),
            node_id: NodeId::new("n1"),
            delivered_at: Millis(1_700_000_000_123),
            engine_key_id: crypto::test_keys::fixed_rsa().public().key_id(),
            consumer_id: ConsumerId::new("alice"),
            cert_serial: CertSerial::new("c1"),
            content_hash: crypto::hash(b"the content"),
        }
    }

    #[test]
    fn a_transaction_record_round_trips_and_every_field_is_signed() {
        let record = record();
        let message = transaction_message(&record);
        assert_eq!(TransactionRecord::decode(&message).expect("decodes"), record);
        let engine = crypto::test_keys::fixed_rsa();
        let signature = crypto::sign(&engine, &message).expect("signs");
        verify_transaction(&engine.public(), &record, &signature).expect("verifies");
        let changed: Vec<TransactionRecord> = vec![
            TransactionRecord { voucher_id: VoucherId::new("v2"), ..record.clone() },
            TransactionRecord { media_id: MediaId::new("md2"), ..record.clone() },
            TransactionRecord { rendition: "low".into(), ..record.clone() },
            TransactionRecord { node_id: NodeId::new("n2"), ..record.clone() },
            TransactionRecord { delivered_at: Millis(record.delivered_at.0 + 1), ..record.clone() },
            TransactionRecord { consumer_id: ConsumerId::new("bob"), ..record.clone() },
            TransactionRecord { cert_serial: CertSerial::new("c2"), ..record.clone() },
            TransactionRecord { content_hash: crypto::hash(b"other content"), ..record.clone() },
            // Field boundaries are framed: moving a byte from one id to the next changes the message.
            TransactionRecord { voucher_id: VoucherId::new("v1m"), media_id: MediaId::new("d1"), ..record.clone() },
        ];
        for other in &changed {
            assert_ne!(transaction_message(other), message, "{other:?}");
            assert_eq!(verify_transaction(&engine.public(), other, &signature), Err(TransactionError::BadSignature), "{other:?}");
        }
        // Stamped with another key: named by its key id, and refused.
        let other_engine = crypto::test_keys::fixed_rsa_2();
        assert!(matches!(verify_transaction(&other_engine.public(), &record, &signature), Err(TransactionError::KeyId { .. })));
        let forged = TransactionRecord { engine_key_id: other_engine.public().key_id(), ..record.clone() };
        let forged_signature = crypto::sign(&other_engine, &forged.message()).expect("signs");
        assert!(verify_transaction(&engine.public(), &forged, &forged_signature).is_err(), "another engine's stamp");
    }

    #[test]
    fn a_delivered_copy_round_trips_and_is_checked() {
        let engine = crypto::test_keys::fixed_rsa();
        let record = record();
        let signature = crypto::sign(&engine, &record.message()).expect("signs");
        let bytes = delivered_copy(&record, &signature, b"the content");
        let copy = parse_delivered_copy(&bytes).expect("parses");
        assert_eq!((copy.record.clone(), copy.signature, copy.content), (record.clone(), signature.as_slice(), b"the content".as_slice()));
        assert!(copy.check(&engine.public()).ok());
        assert_eq!(delivered_copy_header(&record, &signature, 11).len() + 11, bytes.len());

        // Altered content: the signature still verifies, the content does not match.
        let mut altered = bytes.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let check = parse_delivered_copy(&altered).expect("parses").check(&engine.public());
        assert!(check.signature.is_ok() && !check.content_ok && !check.ok());
        // Checked with another engine's key.
        assert!(!copy.check(&crypto::test_keys::fixed_rsa_2().public()).ok());
        // Every flipped byte outside the content is refused or fails the check.
        let content_at = bytes.len() - 11;
        for i in 0..content_at {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x40;
            if let Ok(copy) = parse_delivered_copy(&flipped) {
                assert!(!copy.check(&engine.public()).ok(), "byte {i}");
            }
        }
        for cut in 0..bytes.len() {
            assert!(parse_delivered_copy(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(parse_delivered_copy(&longer).map(|_| ()), Err(ContainerError::Trailing(1)));
        let mut huge = bytes.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_delivered_copy(&huge), Err(ContainerError::Malformed(_))));
        let mut huge_content = bytes;
        huge_content[content_at - 8..content_at].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse_delivered_copy(&huge_content), Err(ContainerError::Malformed(_))));
    }
}
