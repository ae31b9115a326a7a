//! The stream heads' rows: `sh/` sequence → the stream heads of the consecutive sequences
//! that end there, 32 bytes each, at most `STREAM_HEADS_PER_ROW` per row. Only the heads
//! since the last seal are kept (a seal names a stream position whose head it must match,
//! `Projections::apply`), so a seal lets go of every row before its position.
//!
//! Many heads to a row, not one row per event (format 3): sled copies a tree node for
//! every key a batch removes, so with one row per event the commit after a seal 10 s into
//! a busy stream (~100k rows removed) took about a gigabyte (heaptrack, bench memory
//! probe). The heads are part of `Projections` itself, not of one projection, so their
//! format lives with the store rather than beside a projection module.

use super::errors::StateError;
use crate::rows::{Prefix, RowWrite, index_key, index_of};
use std::collections::{BTreeMap, VecDeque};

pub(super) const STREAM_HEAD_PREFIX: &Prefix = b"sh/";
/// Stream heads in one `sh/` row, at most (32 KiB of heads).
const STREAM_HEADS_PER_ROW: u64 = 1_024;
/// Bytes of one stream head.
const STREAM_HEAD_BYTES: usize = 32;

/// The `sh/` rows a store holds, as (first, last) sequence, in order.
pub(super) type HeadRows = VecDeque<(u64, u64)>;

/// Stream heads as `Projections` holds them: (sequence, head), consecutive, in order.
type Heads = VecDeque<(u64, [u8; 32])>;

/// One `sh/` row a commit writes.
pub(super) enum Change {
    /// A new row: its last sequence and its heads.
    Row(u64, Vec<u8>),
    /// The row ending at this sequence, rewritten without the heads a seal let go of.
    Trimmed(u64, Vec<u8>),
    Gone(u64),
}

impl Change {
    pub(super) fn write(self) -> RowWrite {
        match self {
            Change::Row(last, heads) => RowWrite::Append { key: index_key(STREAM_HEAD_PREFIX, last), value: heads },
            Change::Trimmed(last, heads) => RowWrite::Put { key: index_key(STREAM_HEAD_PREFIX, last), value: heads },
            Change::Gone(last) => RowWrite::Remove { key: index_key(STREAM_HEAD_PREFIX, last) },
        }
    }
}

/// What a commit writes so that the stored rows hold `heads` (the projections' heads, a
/// contiguous range of sequences) when they hold `stored` now; and the rows stored after.
///
/// The rows that fell off the heads' front whole are removed, the one they now start in is
/// rewritten, rows are appended for what joined at their back. A row is written once,
/// trimmed at most once per seal and removed once, so this is amortized O(1) per event.
pub(super) fn changes(heads: &Heads, stored: &HeadRows) -> (Vec<Change>, HeadRows) {
    let mut changes = Vec::new();
    let memory = heads.front().zip(heads.back()).map(|(front, back)| (front.0, back.0));
    let heads_between = |first: u64, last: u64| -> Vec<u8> {
        let front = memory.map_or(first, |(front, _)| front);
        let skip = usize::try_from(first - front).unwrap_or(usize::MAX);
        heads.range(skip.min(heads.len())..).take_while(|(seq, _)| *seq <= last).flat_map(|(_, head)| *head).collect()
    };
    let mut head_rows = stored.clone();
    while let Some(&(first, last)) = head_rows.front() {
        match memory {
            Some((front, _)) if last >= front => {
                if first < front {
                    changes.push(Change::Trimmed(last, heads_between(front, last)));
                    head_rows[0] = (front, last);
                }
                break;
            }
            _ => {
                changes.push(Change::Gone(last));
                head_rows.pop_front();
            }
        }
    }
    if let Some((front, back)) = memory {
        let mut next = head_rows.back().map_or(front, |&(_, last)| last + 1).max(front);
        while next <= back {
            let last = back.min(next + STREAM_HEADS_PER_ROW - 1);
            changes.push(Change::Row(last, heads_between(next, last)));
            head_rows.push_back((next, last));
            next = last + 1;
        }
    }
    (changes, head_rows)
}

/// The heads as the store reads them back, row by row.
#[derive(Default)]
pub(super) struct Reader {
    heads: BTreeMap<u64, [u8; 32]>,
    rows: HeadRows,
}

impl Reader {
    /// Takes one stored pair; `false` when its prefix is not `sh/`.
    pub(super) fn read(&mut self, prefix: &[u8], id: &[u8], value: &[u8]) -> Result<bool, StateError> {
        if prefix != STREAM_HEAD_PREFIX {
            return Ok(false);
        }
        let last = index_of(id, "stream head")?;
        let count = value.len() / STREAM_HEAD_BYTES;
        if value.is_empty() || !value.len().is_multiple_of(STREAM_HEAD_BYTES) || count as u64 > STREAM_HEADS_PER_ROW || count as u64 > last {
            return Err(StateError::StreamHeadRow { last, bytes: value.len() });
        }
        let first = last + 1 - count as u64;
        for (seq, head) in (first..=last).zip(value.chunks_exact(STREAM_HEAD_BYTES)) {
            let head: [u8; 32] = head.try_into().expect("chunks_exact yields STREAM_HEAD_BYTES");
            if self.heads.insert(seq, head).is_some() {
                return Err(StateError::StreamHeadTwice(seq));
            }
        }
        self.rows.push_back((first, last));
        Ok(true)
    }

    /// The heads, which must be contiguous and end at the checkpoint (`last_seq`, whose
    /// head is `stream_head`); none for an empty store. With the rows they were read from.
    pub(super) fn finish(self, last_seq: u64, stream_head: [u8; 32]) -> Result<(Heads, HeadRows), StateError> {
        let heads: Heads = self.heads.into_iter().collect();
        let contiguous = heads.iter().zip(heads.iter().skip(1)).all(|((a, _), (b, _))| a + 1 == *b);
        let ends_at_checkpoint = match heads.back().copied() {
            None => last_seq == 0,
            Some((seq, head)) => contiguous && seq == last_seq && head == stream_head,
        };
        if !ends_at_checkpoint {
            return Err(StateError::StreamHeadsEnd);
        }
        Ok((heads, self.rows))
    }
}
