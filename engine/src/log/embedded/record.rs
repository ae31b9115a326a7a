//! The on-disk layout and the record format: key prefixes, the checksummed record and its
//! decoding.
//!
//! Layout, all in the default tree, integers big-endian so that byte order is numeric order:
//! - `v`                      → `FORMAT_MARKER` (refuse to open a database that is not a log);
//! - `h`                      → the head: the last stored sequence (u64);
//! - `e/` seq                 → the record: format byte, checksum, subject, key, payload;
//! - `i/` subject 0x00 seq    → empty (the per-subject index; 0x00 never occurs in a valid
//!   subject and sorts first, so `vs.voucher.a` never scans `vs.voucher.ab`'s events);
//! - `l/` subject             → the subject's last sequence (the `Expected` check);
//! - `m/` idempotency key     → the sequence the key was first stored at (dedupe).
//!
//! What does not live here: deciding what to write (`writer`) and which records a read may
//! see (`read`, up to the durable head). The checksum detects torn, flipped or misplaced
//! records, not tampering: that is the audit replay's job.

use super::{ReadError, StoredEvent};
use crate::ids::Seq;
use bytes::Bytes;

pub(super) const FORMAT_KEY: &[u8] = b"v";
pub(super) const FORMAT_MARKER: &[u8] = b"vouchsafe-embedded-log/1";
pub(super) const HEAD_KEY: &[u8] = b"h";
pub(super) const EVENT_PREFIX: &[u8] = b"e/";
const INDEX_PREFIX: &[u8] = b"i/";
const LAST_PREFIX: &[u8] = b"l/";
const DEDUPE_PREFIX: &[u8] = b"m/";

/// The record format byte; a new layout gets a new value, old records stay readable.
pub(super) const RECORD_FORMAT_V1: u8 = 1;
/// Truncated blake3: it detects torn, flipped or misplaced records, not tampering (that is
/// the audit replay's job, DESIGN.md "Auditing"), so 128 bits are plenty.
const CHECKSUM_BYTES: usize = 16;
const CHECKSUM_CONTEXT: &str = "vouchsafe 2026 embedded log record v1";
/// Format byte + checksum + subject length (u16) + key length (u32).
const RECORD_HEADER_BYTES: usize = 1 + CHECKSUM_BYTES + 2 + 4;

pub(super) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

pub(super) fn event_key(seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(EVENT_PREFIX.len() + 8);
    key.extend_from_slice(EVENT_PREFIX);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn decode_event_key(key: &[u8]) -> Option<u64> {
    key.strip_prefix(EVENT_PREFIX).and_then(decode_u64)
}

pub(super) fn index_prefix(subject: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(INDEX_PREFIX.len() + subject.len() + 1 + 8);
    key.extend_from_slice(INDEX_PREFIX);
    key.extend_from_slice(subject.as_bytes());
    key.push(0);
    key
}

pub(super) fn index_key(subject: &str, seq: u64) -> Vec<u8> {
    let mut key = index_prefix(subject);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn last_key(subject: &str) -> Vec<u8> {
    [LAST_PREFIX, subject.as_bytes()].concat()
}

pub(super) fn dedupe_key(idempotency_key: &str) -> Vec<u8> {
    [DEDUPE_PREFIX, idempotency_key.as_bytes()].concat()
}

fn checksum(seq: u64, body: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut hasher = crate::crypto::Hasher::new_derive_key(CHECKSUM_CONTEXT);
    // The sequence is hashed although it is not stored in the value: a record copied or
    // misplaced under another key fails the check.
    hasher.update(&seq.to_be_bytes());
    hasher.update(body);
    let mut truncated = [0; CHECKSUM_BYTES];
    truncated.copy_from_slice(&hasher.finalize()[..CHECKSUM_BYTES]);
    truncated
}

/// `[format][checksum][subject len u16][subject][key len u32][key][payload]`; the checksum
/// covers the sequence and everything after it. The key is kept so that the dedupe index
/// can be rebuilt and audited from the records alone.
pub(super) fn encode_record(seq: u64, subject: &str, idempotency_key: &str, payload: &[u8]) -> Result<Vec<u8>, &'static str> {
    let subject_len = u16::try_from(subject.len()).map_err(|_| "subject longer than 65535 bytes")?;
    let key_len = u32::try_from(idempotency_key.len()).map_err(|_| "idempotency key longer than 4 GiB")?;
    let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + subject.len() + idempotency_key.len() + payload.len());
    record.push(RECORD_FORMAT_V1);
    record.extend_from_slice(&[0; CHECKSUM_BYTES]);
    record.extend_from_slice(&subject_len.to_be_bytes());
    record.extend_from_slice(subject.as_bytes());
    record.extend_from_slice(&key_len.to_be_bytes());
    record.extend_from_slice(idempotency_key.as_bytes());
    record.extend_from_slice(payload);
    let sum = checksum(seq, &record[1 + CHECKSUM_BYTES..]);
    record[1..1 + CHECKSUM_BYTES].copy_from_slice(&sum);
    Ok(record)
}

pub(super) struct DecodedRecord<'a> {
    pub(super) subject: &'a str,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) idempotency_key: &'a str,
    pub(super) payload: &'a [u8],
}

impl DecodedRecord<'_> {
    pub(super) fn into_event(self, seq: u64) -> StoredEvent {
        StoredEvent { seq: Seq(seq), subject: self.subject.to_owned(), payload: Bytes::copy_from_slice(self.payload) }
    }
}

pub(super) fn decode_record(seq: u64, record: &[u8]) -> Result<DecodedRecord<'_>, ReadError> {
    let corrupt = |reason: &str| ReadError::Corrupt { seq: Seq(seq), reason: reason.to_owned() };
    let (&format, rest) = record.split_first().ok_or_else(|| corrupt("empty record"))?;
    if format != RECORD_FORMAT_V1 {
        return Err(corrupt(&format!("unknown record format {format}")));
    }
    let (stored_sum, body) = rest.split_at_checked(CHECKSUM_BYTES).ok_or_else(|| corrupt("truncated record"))?;
    if stored_sum != checksum(seq, body) {
        return Err(corrupt("checksum mismatch"));
    }
    let (subject_len, body) = body.split_at_checked(2).ok_or_else(|| corrupt("truncated record"))?;
    let subject_len = usize::from(u16::from_be_bytes([subject_len[0], subject_len[1]]));
    let (subject, body) = body.split_at_checked(subject_len).ok_or_else(|| corrupt("truncated subject"))?;
    let (key_len, body) = body.split_at_checked(4).ok_or_else(|| corrupt("truncated record"))?;
    let key_len = u32::from_be_bytes([key_len[0], key_len[1], key_len[2], key_len[3]]);
    let key_len = usize::try_from(key_len).map_err(|_| corrupt("key length overflows"))?;
    let (key, payload) = body.split_at_checked(key_len).ok_or_else(|| corrupt("truncated key"))?;
    Ok(DecodedRecord {
        subject: std::str::from_utf8(subject).map_err(|_| corrupt("subject is not UTF-8"))?,
        idempotency_key: std::str::from_utf8(key).map_err(|_| corrupt("idempotency key is not UTF-8"))?,
        payload,
    })
}
