//! The checkpoint: what a commit made durable, how it is stored (`@checkpoint` →
//! `blake3(body) ‖ body`, body = JSON `CheckpointRecord`), and the content digest that ties
//! it to the state stored with it.
//!
//! The record holds the last applied sequence, the event count, the stream head and the
//! stream head before the last event (which identify the stream, below), the usage and
//! seal counters, whether the royalty chain was computed from sequence 1, and the content
//! digest of every state key.
//!
//! The *content digest* is an XOR of `blake3(key ‖ value)` over every state pair, updated
//! per changed key at commit (XOR out the old pair, XOR in the new). `Projections::
//! digest()` cannot be stored instead: it hashes every row in order, O(state) per batch.
//! At open, the content digest is recomputed over every pair and must match: any flipped
//! byte, lost, extra or stale key is caught, and the store is quarantined. (XOR is enough:
//! every key occurs once, and the threat is damage, not an adversary, who could rewrite the
//! checkpoint as easily as the rows.) The conversion itself (that the stored rows
//! reproduce the in-memory state) is what the tests check against `digest()`, and
//! `ProjectionStore::stored_digest` checks on demand.
//!
//! Which stream: the checkpoint names its last event only through hashes, so the store
//! itself cannot tell whether the log it is run against is the one it was built from.
//! `stream_link(stream_head_before, event at last_seq)` must give `stream_head`: the log's
//! event at the checkpoint is byte for byte the one applied last. `Live::open_checked`
//! reads that one event and quarantines the store when the log lacks it or has another
//! (another `--stream`, another NATS server, a re-created log). One event, so O(1) at
//! every start; the limit is that a log equal at `last_seq` but different before it would
//! pass (an event's bytes hold its event id, aggregate version and engine time, so two
//! logs agree on one only when both were written by the same commands at the same clock).
//! A checkpoint without `stream_head_before` (none is written since format 2; only a
//! hand-edited store lacks it) cannot be checked, and is quarantined and rebuilt too.

use super::errors::CheckpointError;
use crate::rows::{RowError, json};
use crate::serde_hex::{hex_array, hex_option};
use engine::ids::Seq;
use serde::{Deserialize, Serialize};

const CHECKPOINT_CHECK_BYTES: usize = 32;
const CHECKPOINT_CHECK_CONTEXT: &str = "vouchsafe 2026 projection store checkpoint v1";
const PAIR_CONTEXT: &str = "vouchsafe 2026 projection store pair v1";

/// What a commit made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last applied sequence: a restart resumes at the next one.
    pub last_seq: Seq,
    pub events: u64,
    /// The running hash over every applied event (`stream_link`).
    pub stream_head: [u8; 32],
    /// The running hash before the last applied event: `stream_link(stream_head_before,
    /// event at last_seq) == stream_head` for the stream this store was built from.
    /// `None` for an empty store, or a checkpoint that did not record it.
    pub stream_head_before: Option<[u8; 32]>,
    /// The XOR of `blake3(key ‖ value)` over every state pair (module docs).
    pub content_digest: [u8; 32],
}

/// The checkpoint as stored.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub(super) struct CheckpointRecord {
    pub(super) last_seq: u64,
    pub(super) events: u64,
    #[serde(with = "hex_array")]
    pub(super) stream_head: [u8; 32],
    /// Absent from a checkpoint that did not record it: then the stream cannot be checked.
    #[serde(default, with = "hex_option")]
    pub(super) stream_head_before: Option<[u8; 32]>,
    pub(super) usages: u64,
    pub(super) seals_verified: u64,
    /// Every event so far was applied with the royalty chain (the master key was given
    /// from sequence 1 on): only then can the chain be resumed.
    pub(super) chain_complete: bool,
    /// Royalty entries bind their stream sequence from here on (`royalty.entry_binding`).
    #[serde(default)]
    pub(super) royalty_entries_bound: bool,
    #[serde(with = "hex_array")]
    pub(super) content_digest: [u8; 32],
}

impl CheckpointRecord {
    pub(super) fn empty() -> Self {
        CheckpointRecord {
            last_seq: 0,
            events: 0,
            stream_head: [0; 32],
            stream_head_before: None,
            usages: 0,
            seals_verified: 0,
            chain_complete: true,
            royalty_entries_bound: false,
            content_digest: [0; 32],
        }
    }

    pub(super) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            last_seq: Seq(self.last_seq),
            events: self.events,
            stream_head: self.stream_head,
            stream_head_before: self.stream_head_before,
            content_digest: self.content_digest,
        }
    }
}

pub(super) fn encode_checkpoint(record: &CheckpointRecord) -> Result<Vec<u8>, RowError> {
    let body = json(record, "checkpoint")?;
    let check = engine::crypto::derive_hash(CHECKPOINT_CHECK_CONTEXT, &body);
    Ok([&check[..], &body].concat())
}

pub(super) fn decode_checkpoint(bytes: &[u8]) -> Result<CheckpointRecord, CheckpointError> {
    if bytes.len() < CHECKPOINT_CHECK_BYTES {
        return Err(CheckpointError::Truncated);
    }
    let (check, body) = bytes.split_at(CHECKPOINT_CHECK_BYTES);
    if engine::crypto::derive_hash(CHECKPOINT_CHECK_CONTEXT, body) != check {
        return Err(CheckpointError::Checksum);
    }
    serde_json::from_slice(body).map_err(CheckpointError::Json)
}

/// `blake3(len(key) ‖ key ‖ value)`: one pair's share of the content digest.
pub(super) fn pair_hash(key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut hasher = engine::crypto::Hasher::new_derive_key(PAIR_CONTEXT);
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    hasher.finalize()
}

/// Adds (or, the same operation, removes) one pair's hash to a content digest.
pub(super) fn xor_into(digest: &mut [u8; 32], hash: &[u8; 32]) {
    for (byte, other) in digest.iter_mut().zip(hash) {
        *byte ^= other;
    }
}
