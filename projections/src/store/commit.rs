//! The commit: the state keys a batch of events changed and the checkpoint, written in ONE
//! `sled::Batch`, then flushed.
//!
//! What changed: the projections' change notes (`Touched` sets and the stored `Rows`'
//! uncommitted rows), the tails of the append-only entries, seals and faults, and the
//! stream heads' rows. A row touched several times in a batch is written once. The changed
//! rows are copied under the projections' lock (`prepare`) and encoded and written without
//! it (`write`), so the allocator never waits for a disk; each projection's `format` does
//! the copying and the encoding, this module the writing. Cost per batch is proportional
//! to the keys the batch changed (an encoding, one `get` and two hashes per key for the
//! content digest, `checkpoint`), never to the total state.
//!
//! After a failed commit the store refuses every further one (`CommitError::Stopped`):
//! the projections in memory are then ahead of the store, and only a reopen, which
//! resumes from the last good checkpoint, brings the two together again.

use super::checkpoint::{CheckpointRecord, encode_checkpoint, pair_hash, xor_into};
use super::errors::CommitError;
use super::heads::{self, HeadRows};
use super::read::Stored;
use super::{CHECKPOINT_KEY, Checkpoint, FORMAT_KEY, FORMAT_MARKER, ProjectionStore, chain_key};
use crate::rows::RowWrite;
use crate::royalty::{Chain, ChainPosition};
use crate::royalty_log::format::Tails;
use crate::{Projections, allocation, balances, reads, royalty_log, vouchers};
use engine::ids::Seq;
use std::collections::VecDeque;

/// What one commit wrote, for metrics and for the tests of the per-batch cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub checkpoint: Checkpoint,
    /// Keys inserted or overwritten, the checkpoint included.
    pub keys_written: usize,
    pub keys_removed: usize,
}

/// The writer's view of what is durable.
pub(super) struct Writer {
    pub(super) record: CheckpointRecord,
    /// How many entries, seals and faults are stored.
    pub(super) tails: Tails,
    /// The stored `sh/` rows, as (first, last) sequence, in order.
    pub(super) head_rows: HeadRows,
    /// Set after a failed commit: the store is behind the projections for good.
    pub(super) failed: Option<String>,
    /// The chain position (next entry) the chain key file holds, when known: a commit
    /// writes the file only when the chain moved.
    pub(super) chain_written: Option<u64>,
}

impl Writer {
    pub(super) fn of(stored: &Stored) -> Self {
        Writer { record: stored.record, tails: stored.projections.royalty.tails(), head_rows: stored.head_rows.clone(), failed: None, chain_written: None }
    }

    fn empty() -> Self {
        Writer { record: CheckpointRecord::empty(), tails: Tails::default(), head_rows: VecDeque::new(), failed: None, chain_written: None }
    }
}

/// The rows a batch changed, copied out of the projections, by the format that writes them.
struct Changes {
    vouchers: Vec<vouchers::format::Change>,
    allocation: Vec<allocation::format::Change>,
    royalty: Vec<royalty_log::format::Change>,
    balances: Vec<balances::format::Change>,
    reads: Vec<reads::format::Change>,
    heads: Vec<heads::Change>,
}

/// A batch's changes, copied under the projections' lock and encoded and written without it.
pub(crate) struct PendingCommit {
    /// The checkpoint this batch builds on.
    pub(super) base: Seq,
    changes: Changes,
    record: CheckpointRecord,
    tails: Tails,
    head_rows: HeadRows,
    /// The chain's position after this batch, when it moved since the file was written.
    chain: Option<ChainPosition>,
}

impl ProjectionStore {
    /// Copies what `projections` changed since the last commit and drains their change
    /// notes: cheap (no encoding, no I/O), so it runs under the projections' lock.
    pub(crate) fn prepare(&self, projections: &mut Projections) -> Result<PendingCommit, CommitError> {
        let writer = self.lock_writer();
        if let Some(reason) = &writer.failed {
            return Err(CommitError::Stopped(reason.clone()));
        }
        if !projections.tracked {
            return Err(CommitError::NotTracked);
        }
        let base = Seq(writer.record.last_seq);
        if projections.last_seq < base {
            return Err(CommitError::OutOfOrder { base: projections.last_seq, stored: base });
        }
        // Copies of what changed, taken under the projections' lock; encoding them (the
        // costly part) waits for `write`, which runs without it.
        let vouchers = projections.vouchers.take_changes().map_err(CommitError::RowUnreadable)?;
        let allocation = projections.allocation.take_changes().map_err(CommitError::RowUnreadable)?;
        let (royalty, tails) = projections.royalty.take_changes(writer.tails).map_err(CommitError::RowUnreadable)?;
        let balances = projections.balances.take_changes();
        let reads = projections.reads.take_changes().map_err(CommitError::RowUnreadable)?;
        let (heads, head_rows) = heads::changes(&projections.stream_heads, &writer.head_rows);

        let log = &projections.royalty;
        let record = CheckpointRecord {
            last_seq: projections.last_seq.0,
            events: projections.events,
            stream_head: projections.stream_head,
            stream_head_before: projections.stream_head_before,
            usages: log.usages,
            seals_verified: log.seals_verified,
            chain_complete: writer.record.chain_complete && log.chained(),
            royalty_entries_bound: log.bind_seq,
            content_digest: [0; 32],
        };
        let chain = log.chain.as_ref().filter(|chain| writer.chain_written != Some(chain.next_index())).map(Chain::position);
        let changes = Changes { vouchers, allocation, royalty, balances, reads, heads };
        Ok(PendingCommit { base, changes, record, tails, head_rows, chain })
    }

    /// Writes a prepared batch and its checkpoint atomically and flushes (blocking I/O).
    pub(crate) fn write(&self, prepared: PendingCommit) -> Result<Committed, CommitError> {
        let mut writer = self.lock_writer();
        if let Some(reason) = &writer.failed {
            return Err(CommitError::Stopped(reason.clone()));
        }
        let stored = Seq(writer.record.last_seq);
        if prepared.base != stored {
            let error = CommitError::OutOfOrder { base: prepared.base, stored };
            writer.failed = Some(error.to_string());
            return Err(error);
        }
        let chain = prepared.chain.as_ref().map(|position| position.next_index);
        match self.write_batch(&writer, prepared) {
            Ok((committed, stored)) => {
                (writer.record, writer.tails, writer.head_rows) = (stored.record, stored.tails, stored.head_rows);
                if chain.is_some() {
                    writer.chain_written = chain;
                }
                Ok(committed)
            }
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, "projection store commit failed; refusing further commits until reopened");
                writer.failed = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Encodes and writes a prepared batch; returns what it wrote and what is durable now.
    fn write_batch(&self, writer: &Writer, prepared: PendingCommit) -> Result<(Committed, Durable), CommitError> {
        let PendingCommit { changes, record, tails, head_rows, chain, .. } = prepared;
        let Changes { vouchers, allocation, royalty, balances, reads, heads } = changes;
        let writes = vouchers
            .into_iter()
            .map(vouchers::format::Change::write)
            .chain(allocation.into_iter().map(allocation::format::Change::write))
            .chain(royalty.into_iter().map(royalty_log::format::Change::write))
            .chain(balances.into_iter().map(balances::format::Change::write))
            .chain(reads.into_iter().map(reads::format::Change::write))
            .chain(heads.into_iter().map(|change| Ok(change.write())));
        let mut digest = writer.record.content_digest;
        let mut batch = sled::Batch::default();
        let (mut keys_written, mut keys_removed) = (0, 0);
        for write in writes {
            match write.map_err(CommitError::Encode)? {
                RowWrite::Put { key, value } => {
                    if let Some(old) = self.db.get(&key).map_err(CommitError::Storage)? {
                        xor_into(&mut digest, &pair_hash(&key, &old));
                    }
                    xor_into(&mut digest, &pair_hash(&key, &value));
                    batch.insert(key, value);
                    keys_written += 1;
                }
                RowWrite::Append { key, value } => {
                    xor_into(&mut digest, &pair_hash(&key, &value));
                    batch.insert(key, value);
                    keys_written += 1;
                }
                RowWrite::Remove { key } => {
                    if let Some(old) = self.db.get(&key).map_err(CommitError::Storage)? {
                        xor_into(&mut digest, &pair_hash(&key, &old));
                        batch.remove(key);
                        keys_removed += 1;
                    }
                }
            }
        }
        let record = CheckpointRecord { content_digest: digest, ..record };
        batch.insert(CHECKPOINT_KEY, encode_checkpoint(&record).map_err(CommitError::Encode)?);
        keys_written += 1;
        // One batch: sled applies all of it or none of it, also across a crash, so the
        // checkpoint always describes exactly the state stored with it.
        self.db.apply_batch(batch).map_err(CommitError::Storage)?;
        self.db.flush().map_err(CommitError::FlushFailed)?;
        // After the entries are durable, never before: the chain key may lag the store
        // after a crash (it is advanced at load), never run ahead of it.
        if let Some(position) = chain {
            chain_key::write(&chain_key::path_in(&self.dir), &position).map_err(|error| CommitError::ChainKey(error.to_string()))?;
        }
        let committed = Committed { checkpoint: record.checkpoint(), keys_written, keys_removed };
        Ok((committed, Durable { record, tails, head_rows }))
    }

    /// Empties the store in place, for projections rebuilt from sequence 1 beside it
    /// (`Live::rebuild`), whose next commit writes their whole state: every key removed,
    /// then the format marker and an empty checkpoint in one flushed batch. A crash in
    /// between leaves an empty directory, which the next `open` initialises (`Created`), so
    /// a rebuild from sequence 1 follows either way. Clears a failed commit's stop too.
    /// Blocking I/O.
    pub(crate) fn reset(&self) -> Result<(), CommitError> {
        let mut writer = self.lock_writer();
        self.db.clear().map_err(CommitError::Storage)?;
        let mut batch = sled::Batch::default();
        batch.insert(FORMAT_KEY, FORMAT_MARKER);
        batch.insert(CHECKPOINT_KEY, encode_checkpoint(&CheckpointRecord::empty()).map_err(CommitError::Encode)?);
        self.db.apply_batch(batch).map_err(CommitError::Storage)?;
        self.db.flush().map_err(CommitError::FlushFailed)?;
        *writer = Writer::empty();
        *self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        tracing::warn!(dir = %self.dir.display(), "projection store emptied for a rebuild from sequence 1");
        Ok(())
    }
}

/// What is durable after a batch was written: the writer's new view.
struct Durable {
    record: CheckpointRecord,
    tails: Tails,
    head_rows: HeadRows,
}
