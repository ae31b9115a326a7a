//! Reading the whole stored state back and checking it, at open and at `load`: every pair
//! is offered to the format that owns its prefix (each projection's `format::Reader`, and
//! the stream heads'), folded into the content digest, and the state as a whole is checked
//! against the checkpoint. What a single row means is each format's business; what is
//! checked here is what no single format can see (the digest, the counts against the
//! checkpoint, the ledger's sum, the stream heads' end).
//!
//! The rows that grow with the number of vouchers are decoded here to check them, and
//! then left in sled (`Rows`): the state handed out keeps only their count in memory.

use super::checkpoint::{CheckpointRecord, decode_checkpoint, pair_hash, xor_into};
use super::errors::StateError;
use super::heads::{self, HeadRows};
use super::{CHECKPOINT_KEY, META_PREFIX};
use crate::rows::PREFIX_BYTES;
use crate::{Projections, allocation, balances, reads, royalty_log, vouchers};
use engine::ids::Seq;

/// Everything a store holds, decoded and checked.
pub(super) struct Stored {
    pub(super) projections: Projections,
    pub(super) record: CheckpointRecord,
    /// The `sh/` rows, as (first, last) sequence, in order.
    pub(super) head_rows: HeadRows,
}

pub(super) fn read_state(db: &sled::Db) -> Result<Stored, StateError> {
    let checkpoint = db.get(CHECKPOINT_KEY).map_err(StateError::Read)?.ok_or(StateError::CheckpointMissing)?;
    let record = decode_checkpoint(&checkpoint)?;

    let mut digest = [0u8; 32];
    let mut vouchers = vouchers::format::Reader::default();
    let mut allocation = allocation::format::Reader::default();
    let mut royalty = royalty_log::format::Reader::default();
    let mut balances = balances::format::Reader::default();
    let mut reads = reads::format::Reader::default();
    let mut heads = heads::Reader::default();
    for pair in db.iter() {
        let (key, value) = pair.map_err(StateError::Read)?;
        if key.first() == Some(&META_PREFIX) {
            continue;
        }
        xor_into(&mut digest, &pair_hash(&key, &value));
        let unknown = || StateError::UnknownKey(String::from_utf8_lossy(&key).into_owned());
        if key.len() < PREFIX_BYTES {
            return Err(unknown());
        }
        let (prefix, id) = key.split_at(PREFIX_BYTES);
        // Each prefix belongs to exactly one format, so at most one of these takes the pair.
        let taken = vouchers.read(prefix, id, &value)?
            || allocation.read(prefix, id, &value)?
            || royalty.read(prefix, id, &value)?
            || balances.read(prefix, id, &value)?
            || reads.read(prefix, id, &value)?
            || heads.read(prefix, id, &value)?;
        if !taken {
            return Err(unknown());
        }
    }
    if digest != record.content_digest {
        return Err(StateError::ContentDigest);
    }

    let royalty = royalty.finish(db, record.usages, record.seals_verified, record.royalty_entries_bound)?;
    if record.events != record.last_seq {
        return Err(StateError::EventCount { events: record.events, last_seq: record.last_seq });
    }
    let (stream_heads, head_rows) = heads.finish(record.last_seq, record.stream_head)?;
    let balances = balances.finish();
    if balances.sum() != Some(0) {
        return Err(StateError::LedgerNotZero);
    }
    let entries = royalty.entries.len() as u64;
    if entries > record.usages || (record.chain_complete && entries != record.usages) {
        return Err(StateError::EntriesForUsages { entries, usages: record.usages });
    }

    let projections = Projections {
        last_seq: Seq(record.last_seq),
        events: record.events,
        stream_head: record.stream_head,
        stream_head_before: record.stream_head_before,
        stream_heads,
        vouchers: vouchers.finish(db)?,
        allocation: allocation.finish(db),
        royalty,
        balances,
        reads: reads.finish(db),
        tracked: false,
    };
    Ok(Stored { projections, record, head_rows })
}
