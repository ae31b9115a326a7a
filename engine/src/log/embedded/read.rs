//! Reading: ranges and subjects on a blocking thread, and `follow`, which waits on the
//! durable head. Reads never see beyond the durable head (the last sequence whose flush
//! returned), so no reader can act on an event that a crash could still take back.
//!
//! What does not live here: the record format (`record`), and moving the head (`writer`).
//! Contiguity is checked against what must be there, so a lost record is reported as
//! corrupt, never skipped.

use super::record::{decode_event_key, decode_record, decode_u64, event_key, index_prefix};
use super::{FOLLOW_BATCH_EVENTS_MAX, Shared};
use crate::ids::Seq;
use crate::log::{ReadError, StoredEvent};
use std::collections::VecDeque;
use std::sync::Weak;
use tokio::sync::watch;

pub(super) async fn run_blocking<T: Send + 'static>(read: impl FnOnce() -> Result<T, ReadError> + Send + 'static) -> Result<T, ReadError> {
    tokio::task::spawn_blocking(read).await.map_err(|error| ReadError::Storage(format!("the read task failed: {error}")))?
}

/// The state of one `follow` stream.
pub(super) struct Follow {
    pub(super) shared: Weak<Shared>,
    pub(super) head: watch::Receiver<u64>,
    /// The next sequence to read: everything before it has been read exactly once.
    pub(super) next: u64,
    pub(super) buffered: VecDeque<StoredEvent>,
    /// An error met after the buffered events: yielded once they are, then the stream ends
    /// (skipping past it would be a gap).
    pub(super) failure: Option<ReadError>,
    pub(super) finished: bool,
}

impl Follow {
    pub(super) async fn next_event(mut self) -> Option<(Result<StoredEvent, ReadError>, Follow)> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            if let Some(error) = self.failure.take() {
                self.finished = true;
                return Some((Err(error), self));
            }
            // Mark the current head seen *before* reading, so that a flush landing after
            // the read still wakes `changed` below: no lost wake-up, hence no stall.
            let head = *self.head.borrow_and_update();
            if head >= self.next {
                let Some(shared) = self.shared.upgrade() else {
                    self.failure = Some(ReadError::Unavailable("the event log was closed".to_owned()));
                    continue;
                };
                let from = Seq(self.next);
                let read = run_blocking(move || Ok(read_range_blocking(&shared, from, FOLLOW_BATCH_EVENTS_MAX))).await;
                let (events, failure) = match read {
                    Ok(read) => read,
                    Err(error) => (Vec::new(), Some(error)),
                };
                for event in events {
                    // read_range already checks contiguity; this guards the no-gap,
                    // no-duplicate promise locally as well.
                    if event.seq.0 != self.next {
                        self.failure =
                            Some(ReadError::Corrupt { seq: Seq(self.next), reason: format!("expected sequence {} next, read {}", self.next, event.seq) });
                        break;
                    }
                    self.next += 1;
                    self.buffered.push_back(event);
                }
                self.failure = self.failure.take().or(failure);
                if self.buffered.is_empty() && self.failure.is_none() {
                    self.failure = Some(ReadError::Corrupt { seq: from, reason: "record missing below the head".to_owned() });
                }
                continue;
            }
            if self.head.changed().await.is_err() {
                // The writer is gone (log dropped or writer died): nothing new will come.
                self.failure = Some(ReadError::Unavailable("the event log was closed".to_owned()));
            }
        }
    }
}

pub(super) fn read_from_blocking(shared: &Shared, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, ReadError> {
    match read_range_blocking(shared, from, limit) {
        (events, None) => Ok(events),
        (_, Some(error)) => Err(error),
    }
}

/// Up to `limit` durable events from `from` on, and the error that stopped the read early,
/// if any, with the good events before it (so `follow` can yield them first).
fn read_range_blocking(shared: &Shared, from: Seq, limit: usize) -> (Vec<StoredEvent>, Option<ReadError>) {
    let head = shared.durable_head();
    let first = from.0.max(1);
    if limit == 0 || first > head {
        return (Vec::new(), None);
    }
    // Contiguity is checked against what must be there, so a lost record is reported as
    // corrupt instead of silently skipped.
    let last = head.min(first.saturating_add(limit as u64 - 1));
    let capacity = usize::try_from(last - first + 1).unwrap_or(usize::MAX).min(FOLLOW_BATCH_EVENTS_MAX);
    let mut events = Vec::with_capacity(capacity);
    let mut expected = first;
    for entry in shared.db.range(event_key(first)..=event_key(last)) {
        let decoded = entry.map_err(read_storage_error).and_then(|(key, record)| match decode_event_key(&key) {
            Some(seq) if seq == expected => decode_record(seq, &record).map(|decoded| decoded.into_event(seq)),
            _ => Err(ReadError::Corrupt { seq: Seq(expected), reason: "record missing".to_owned() }),
        });
        match decoded {
            Ok(event) => events.push(event),
            Err(error) => return (events, Some(error)),
        }
        expected += 1;
    }
    if expected <= last {
        return (events, Some(ReadError::Corrupt { seq: Seq(expected), reason: "record missing".to_owned() }));
    }
    (events, None)
}

pub(super) fn read_subject_blocking(shared: &Shared, subject: &str) -> Result<Vec<StoredEvent>, ReadError> {
    if !crate::log::is_valid_subject(subject) {
        // Nothing is ever stored under an invalid subject.
        return Ok(Vec::new());
    }
    let head = shared.durable_head();
    let prefix = index_prefix(subject);
    let mut events = Vec::new();
    for entry in shared.db.scan_prefix(&prefix) {
        let (key, _) = entry.map_err(read_storage_error)?;
        let seq = key.get(prefix.len()..).and_then(decode_u64).ok_or_else(|| ReadError::Storage(format!("malformed index key for {subject}")))?;
        if seq > head {
            // Written but not yet flushed: not acknowledged, not visible.
            break;
        }
        let record = shared
            .db
            .get(event_key(seq))
            .map_err(read_storage_error)?
            .ok_or_else(|| ReadError::Corrupt { seq: Seq(seq), reason: "indexed record missing".to_owned() })?;
        let decoded = decode_record(seq, &record)?;
        if decoded.subject != subject {
            return Err(ReadError::Corrupt { seq: Seq(seq), reason: format!("indexed under {subject} but stored under {}", decoded.subject) });
        }
        events.push(decoded.into_event(seq));
    }
    Ok(events)
}

fn read_storage_error(error: sled::Error) -> ReadError {
    ReadError::Storage(error.to_string())
}
