//! Following a stream as it grows (`follow`, `node_feed`): the `Follower`, which runs its
//! own ephemeral pull consumer, recreates it on any doubt, and checks after every
//! reconnection that the stream did not go back under it.
//!
//! What does not live here: creating consumers and pull requests (`read`), and turning
//! what it yields into node-feed items (`node_feed`).
//!
//! A choice worth knowing (PITFALLS.md, NATS section): `follow` does not trust any client's
//! ordered consumer (nats.go #2107, nats.rs #585): it runs its own ephemeral pull consumer
//! and checks both the consumer sequence (nothing lost inside one consumer) and the stream
//! sequence (contiguous; the stream denies delete and purge, so a gap is never legitimate).
//! On any doubt or error it recreates the consumer at the next sequence it has not yet
//! yielded.

use super::read::{create_consumer, pull_messages};
use super::{FOLLOW_GAPS_MAX, FOLLOW_OUTAGE_MAX_MS, FOLLOW_RETRY_DELAY_MAX_MS, PULL_BATCH_EVENTS_MAX, RECONNECT_DELAY_STEP_MS, ReadError, StoredEvent};
use crate::ids::Seq;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures::stream::StreamExt as _;
use std::time::{Duration, Instant};

/// The state of one `follow` (or `node_feed`) stream: its own ephemeral consumer, recreated
/// at `next` whenever anything looks wrong, or after the connection was re-established.
///
/// A server can come back from a crash with less than it delivered (a tail it had not made
/// durable; nats-server #3402, #5412 and Jepsen's 2025 analysis), and new appends then
/// take the lost sequence numbers. A reader that just went on at `next` would keep events
/// the stream no longer has and skip the ones that replaced them. So every consumer after
/// the first starts with a check that the last event yielded is still in the stream, byte
/// for byte; when it is not, the follow ends with `ReadError::Diverged` and the reader
/// rebuilds from sequence 1. (A lost tail is a suffix: the last event yielded is the one
/// that goes first.)
pub(super) struct Follower {
    stream: stream::Stream,
    /// The connection's statistics: `connects` grows on every (re)connection, after which
    /// the consumer is recreated (and the check above runs), even if it survived.
    connection: std::sync::Arc<async_nats::Statistics>,
    /// `connection.connects` when the current consumer was created.
    connects: u64,
    /// `None`: every subject, and stream sequences must be contiguous. `Some`: one subject,
    /// whose sequences only increase (other subjects sit between them).
    filter: Option<String>,
    /// The next stream sequence to yield: everything before it was yielded exactly once.
    next: u64,
    /// The sequence, subject and payload of the last event yielded (shared with the event,
    /// not copied: hashing them instead cost the auditor's reader ~3 % of a replay).
    last: Option<(u64, async_nats::Subject, Bytes)>,
    messages: Option<pull::Stream>,
    /// The last consumer sequence delivered by the current consumer (each consumer starts
    /// at 1 and counts every delivery, so a jump means a lost delivery).
    consumer_seq: u64,
    /// Since when (re)creating the consumer has failed, if it currently does.
    outage_since: Option<Instant>,
    failures: u32,
    /// Consecutive recreations for a gap at `next`.
    gaps: u32,
    finished: bool,
    /// Whether a (re)start checks that the last event yielded is still there (`check_last`);
    /// off only in `JetStreamLog::follow_unchecked`, the protection-off control of tests.
    check_resume: bool,
}

impl Follower {
    pub(super) fn new(stream: stream::Stream, connection: std::sync::Arc<async_nats::Statistics>, filter: Option<String>, from: u64) -> Follower {
        Follower {
            stream,
            connection,
            connects: 0,
            filter,
            next: from.max(1),
            last: None,
            messages: None,
            consumer_seq: 0,
            outage_since: None,
            failures: 0,
            gaps: 0,
            finished: false,
            check_resume: true,
        }
    }

    /// The same follower without its resume check (`check_resume`).
    #[cfg(any(test, feature = "test-util"))]
    pub(super) fn unchecked(self) -> Follower {
        Follower { check_resume: false, ..self }
    }

    pub(super) async fn next_event(mut self) -> Option<(Result<StoredEvent, ReadError>, Follower)> {
        loop {
            if self.finished {
                return None;
            }
            let Some(messages) = self.messages.as_mut() else {
                if let Err(error) = self.start().await {
                    self.finished = true;
                    return Some((Err(error), self));
                }
                continue;
            };
            let message = match messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, next = self.next, "follow: consumer failed; recreating it");
                    self.messages = None;
                    continue;
                }
                None => {
                    self.messages = None;
                    continue;
                }
            };
            let (consumer_seq, stream_seq) = match message.info() {
                Ok(info) => (info.consumer_sequence, info.stream_sequence),
                Err(error) => {
                    tracing::warn!(%error, "follow: malformed delivery; recreating the consumer");
                    self.messages = None;
                    continue;
                }
            };
            if consumer_seq != self.consumer_seq + 1 {
                tracing::warn!(expected = self.consumer_seq + 1, delivered = consumer_seq, "follow: the consumer skipped a delivery; recreating it");
                self.messages = None;
                continue;
            }
            self.consumer_seq = consumer_seq;
            if self.connection.connects.load(std::sync::atomic::Ordering::Relaxed) != self.connects {
                // Reconnected since the consumer was created: what it delivers may no longer
                // be the stream (struct docs). Check, and go on from a new consumer.
                tracing::info!(next = self.next, "follow: the connection was re-established; checking the stream and recreating the consumer");
                self.messages = None;
                continue;
            }
            if stream_seq < self.next {
                // Already yielded (a redelivery): never twice.
                continue;
            }
            if self.filter.is_none() && stream_seq != self.next {
                self.gaps += 1;
                if self.gaps > FOLLOW_GAPS_MAX {
                    self.finished = true;
                    let error = ReadError::Corrupt {
                        seq: Seq(self.next),
                        reason: format!("consumers skip from {} to {stream_seq} although the stream denies deletes", self.next),
                    };
                    return Some((Err(error), self));
                }
                tracing::warn!(expected = self.next, delivered = stream_seq, "follow: gap in stream sequences; recreating the consumer");
                self.messages = None;
                continue;
            }
            if let Some(filter) = &self.filter
                && message.subject.as_str() != filter
            {
                tracing::warn!("follow: a delivery outside the filter; recreating the consumer");
                self.messages = None;
                continue;
            }
            self.gaps = 0;
            self.next = stream_seq + 1;
            let event = StoredEvent { seq: Seq(stream_seq), subject: message.subject.to_string(), payload: message.payload.clone() };
            self.last = Some((stream_seq, message.subject.clone(), message.payload.clone()));
            return Some((Ok(event), self));
        }
    }

    /// Creates the consumer at `next`, retrying with a growing pause for up to
    /// `FOLLOW_OUTAGE_MAX_MS`.
    async fn start(&mut self) -> Result<(), ReadError> {
        loop {
            let connects = self.connection.connects.load(std::sync::atomic::Ordering::Relaxed);
            let created = match self.check_last().await {
                Err(CheckFailed::Diverged(error)) => return Err(error),
                Err(CheckFailed::Unavailable(reason)) => Err(reason),
                Ok(()) => match create_consumer(&self.stream, self.filter.as_deref(), self.next).await {
                    Ok(consumer) => pull_messages(&consumer, PULL_BATCH_EVENTS_MAX).await.map_err(|error| error.to_string()),
                    Err(error) => Err(error.to_string()),
                },
            };
            match created {
                Ok(messages) => {
                    self.messages = Some(messages);
                    self.connects = connects;
                    self.consumer_seq = 0;
                    self.outage_since = None;
                    self.failures = 0;
                    return Ok(());
                }
                Err(reason) => {
                    let since = *self.outage_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(FOLLOW_OUTAGE_MAX_MS) {
                        return Err(ReadError::Unavailable(format!("cannot follow from {} for {FOLLOW_OUTAGE_MAX_MS} ms: {reason}", self.next)));
                    }
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(%reason, next = self.next, "follow: cannot create a consumer; retrying");
                    let pause = (RECONNECT_DELAY_STEP_MS * u64::from(self.failures)).min(FOLLOW_RETRY_DELAY_MAX_MS);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    }

    /// Whether the last event yielded is still in the stream at its sequence, byte for
    /// byte (struct docs); nothing to check before the first.
    async fn check_last(&self) -> Result<(), CheckFailed> {
        let Some((seq, subject, payload)) = self.last.as_ref().filter(|_| self.check_resume) else { return Ok(()) };
        let seq = *seq;
        let diverged = |reason: String| CheckFailed::Diverged(ReadError::Diverged { seq: Seq(seq), reason });
        match self.stream.get_raw_message(seq).await {
            Ok(message) if message.subject == *subject && message.payload == *payload => Ok(()),
            Ok(_) => Err(diverged("the stream holds another event there now (it lost a tail in a crash and new appends took its sequences)".to_owned())),
            Err(error) if matches!(error.kind(), async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound) => {
                Err(diverged("the stream no longer holds an event there (it lost a tail in a crash, or was re-created)".to_owned()))
            }
            Err(error) => Err(CheckFailed::Unavailable(format!("checking event {seq}: {error}"))),
        }
    }
}

/// Why `Follower::check_last` did not pass.
enum CheckFailed {
    Diverged(ReadError),
    /// The stream could not be asked; retried like a failed consumer creation.
    Unavailable(String),
}
