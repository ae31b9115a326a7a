//! Reading by ephemeral pull consumers: `read_from` over an exact range, the consumers and
//! pull requests `follow` uses too, and starting the batched direct gets (`direct`).
//!
//! What does not live here: `read_subject` (in `mod.rs`, over `direct`) and following the
//! stream as it grows (`follow`), and retrying an unavailable read (the caller,
//! `EventLog::read_from`).

use super::{
    CONSUMER_INACTIVE_MS, ConnectError, JetStreamLog, PULL_BATCH_EVENTS_MAX, PULL_EXPIRES_MS, PULL_HEARTBEAT_MS, READ_EVENT_WAIT_MS,
    READ_RANGE_RESERVE_EVENTS_MAX, REQUEST_TIMEOUT_MS, ReadError, StoredEvent, direct,
};
use crate::ids::Seq;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::stream;
use futures::stream::StreamExt as _;
use std::time::Duration;

impl JetStreamLog {
    pub(super) async fn read_from_once(&self, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, ReadError> {
        let first = from.0.max(1);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last = self.last_seq_once().await?.0;
        if first > last {
            return Ok(Vec::new());
        }
        let wanted = (last - first + 1).min(limit as u64);
        let end = first + wanted - 1;
        let consumer = create_consumer(&self.events, None, first).await.map_err(|error| ReadError::Unavailable(error.to_string()))?;
        let read = read_range(&consumer, first, end).await;
        // Best effort: an ephemeral consumer left behind expires after CONSUMER_INACTIVE_MS.
        if let Err(error) = self.events.delete_consumer(&consumer.cached_info().name).await {
            tracing::debug!(%error, "could not delete a read consumer; it expires on its own");
        }
        read
    }

    pub(super) async fn last_seq_once(&self) -> Result<Seq, ReadError> {
        let info = self.events.get_info().await.map_err(|error| ReadError::Unavailable(format!("stream info: {error}")))?;
        Ok(Seq(info.state.last_sequence))
    }
}

pub(super) async fn start_direct(context: &Context, stream: &str) -> Result<direct::DirectBatches, ConnectError> {
    direct::DirectBatches::start(context.client(), stream, Duration::from_millis(REQUEST_TIMEOUT_MS)).await.map_err(|error| ConnectError::StreamInfo {
        stream: stream.to_owned(),
        reason: format!("cannot subscribe to this connection's inbox for direct gets: {error}"),
    })
}

/// An ephemeral pull consumer from stream sequence `from`, optionally on one subject: no
/// acks, in memory, one replica (on the stream leader), removed by the server once unused.
pub(super) async fn create_consumer(
    stream: &stream::Stream,
    filter: Option<&str>,
    from: u64,
) -> Result<consumer::Consumer<pull::Config>, async_nats::jetstream::stream::ConsumerError> {
    stream
        .create_consumer(pull::Config {
            durable_name: None,
            name: None,
            description: Some("vouchsafe reader".to_owned()),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ack_policy: AckPolicy::None,
            replay_policy: ReplayPolicy::Instant,
            filter_subject: filter.unwrap_or_default().to_owned(),
            inactive_threshold: Duration::from_millis(CONSUMER_INACTIVE_MS),
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        })
        .await
}

/// Pull requests of `batch_events` (at most `PULL_BATCH_EVENTS_MAX`) events each.
pub(super) async fn pull_messages(
    consumer: &consumer::Consumer<pull::Config>,
    batch_events: usize,
) -> Result<pull::Stream, async_nats::jetstream::consumer::StreamError> {
    consumer
        .stream()
        .max_messages_per_batch(batch_events.clamp(1, PULL_BATCH_EVENTS_MAX))
        .expires(Duration::from_millis(PULL_EXPIRES_MS))
        .heartbeat(Duration::from_millis(PULL_HEARTBEAT_MS))
        .messages()
        .await
}

/// Reads exactly the events `first..=end` (all stored: the stream never deletes) from a
/// consumer that starts at `first`.
async fn read_range(consumer: &consumer::Consumer<pull::Config>, first: u64, end: u64) -> Result<Vec<StoredEvent>, ReadError> {
    let count = usize::try_from(end - first + 1).unwrap_or(usize::MAX);
    let mut messages = pull_messages(consumer, count).await.map_err(|error| ReadError::Unavailable(format!("pull: {error}")))?;
    let mut events = Vec::with_capacity(count.min(READ_RANGE_RESERVE_EVENTS_MAX));
    let mut next = first;
    while next <= end {
        let message = tokio::time::timeout(Duration::from_millis(READ_EVENT_WAIT_MS), messages.next())
            .await
            .map_err(|_| ReadError::Unavailable(format!("no event {next} within {READ_EVENT_WAIT_MS} ms although the stream holds it")))?;
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => return Err(ReadError::Unavailable(format!("pull: {error}"))),
            None => {
                return Err(ReadError::Unavailable("the pull consumer ended early".to_owned()));
            }
        };
        let event = stored_event(&message)?;
        if event.seq.0 != next {
            return Err(ReadError::Corrupt { seq: Seq(next), reason: format!("expected sequence {next}, the consumer delivered {}", event.seq) });
        }
        next += 1;
        events.push(event);
    }
    Ok(events)
}

fn stored_event(message: &async_nats::jetstream::Message) -> Result<StoredEvent, ReadError> {
    let info = message.info().map_err(|error| ReadError::Storage(format!("malformed delivery: {error}")))?;
    Ok(StoredEvent { seq: Seq(info.stream_sequence), subject: message.subject.to_string(), payload: message.payload.clone() })
}
