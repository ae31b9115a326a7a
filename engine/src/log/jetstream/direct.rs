//! Reading one subject's events: first back along the chain of expected sequences its
//! appends stored (`read_chain`, one plain direct get per event, each a lookup by sequence);
//! where that chain cannot be followed, in one round trip of batched direct gets (ADR-31,
//! nats-server ≥ 2.11), which async-nats 0.51 has no API for.
//!
//! A request `{"seq": s, "next_by_subj": subject, "batch": n}` on
//! `$JS.API.DIRECT.GET.<stream>` is answered with up to `n` messages of `subject` at or
//! after `s`, in sequence order, then an end-of-batch marker (status 204, `EOB`) whose
//! `Nats-Num-Pending` says how many more match. No match at all is answered with status 404.
//! Reading an aggregate was one direct get per event plus a final not-found (four round
//! trips for a redeemed voucher); it is now one, or more only for subjects longer than
//! `DIRECT_BATCH_EVENTS_MAX` events.
//!
//! The answers arrive on one subscription per connection (`<inbox>.*`), made once, each
//! request on its own reply subject under it, the way async-nats multiplexes its own
//! requests: no SUB/UNSUB per read. The subject needs no permission beyond what a plain
//! direct get needs (publish on `$JS.API.DIRECT.GET.<stream>`, subscribe on the inbox), so
//! deploy/'s users and the read-only auditor work unchanged.
//!
//! What does not live here: the checks of what was read against what was asked (the
//! caller's `read_subject`), and retries (a failed read is the caller's to retry; the
//! handlers reload on any doubt).

use super::super::ReadError;
use crate::ids::Seq;
use async_nats::{Client, Message, StatusCode};
use futures::StreamExt as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Events one batched request asks for; a longer subject takes more requests.
pub const DIRECT_BATCH_EVENTS_MAX: usize = 256;
/// Bytes one batched request asks for at most (the server's own default is 64 MiB); a
/// batch always holds at least one message, however large.
pub const DIRECT_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The most events `read_chain` follows back before it leaves the subject to batched gets:
/// a voucher has a handful; a long-lived aggregate (a node's leases, the seal chain) is
/// better read in batches, and is usually cached.
pub const CHAIN_EVENTS_MAX: usize = 16;

/// The status of the marker that ends a batch (`204 EOB`).
const END_OF_BATCH: u16 = 204;

/// One message of a batch, as the caller checks it.
pub(super) struct BatchMessage {
    pub seq: Seq,
    pub subject: String,
    pub payload: bytes::Bytes,
}

/// What one batched request returned: its messages, and whether more of the subject follow.
pub(super) struct Batch {
    pub messages: Vec<BatchMessage>,
    pub more: bool,
}

/// Batched direct gets on one connection: the shared reply subscription and the requests
/// waiting on it. Dropping it stops the task that routes the replies.
pub(super) struct DirectBatches {
    client: Client,
    /// `$JS.API.DIRECT.GET.<stream>`.
    api_subject: String,
    /// `<inbox>.`: a request's reply subject is this followed by its number.
    reply_prefix: String,
    next_request: AtomicU64,
    waiting: Arc<Mutex<Waiting>>,
    timeout: Duration,
    router: tokio::task::JoinHandle<()>,
}

type Waiting = HashMap<u64, tokio::sync::mpsc::Sender<Message>>;

impl Drop for DirectBatches {
    fn drop(&mut self) {
        self.router.abort();
    }
}

/// Unregisters a request however its read ends (answered, failed, timed out, cancelled).
struct Registration<'a> {
    waiting: &'a Mutex<Waiting>,
    request: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.request);
    }
}

impl DirectBatches {
    /// Subscribes to a fresh inbox of `client` (its custom inbox prefix included, so a
    /// read-only user's answers stay on its own prefix) and starts routing replies.
    pub async fn start(client: Client, stream: &str, timeout: Duration) -> Result<DirectBatches, async_nats::SubscribeError> {
        let inbox = client.new_inbox();
        let mut subscriber = client.subscribe(format!("{inbox}.*")).await?;
        let reply_prefix = format!("{inbox}.");
        let waiting: Arc<Mutex<Waiting>> = Arc::default();
        let router = tokio::spawn({
            let (waiting, reply_prefix) = (Arc::clone(&waiting), reply_prefix.clone());
            async move {
                while let Some(message) = subscriber.next().await {
                    let Some(request) = message.subject.as_str().strip_prefix(reply_prefix.as_str()).and_then(|number| number.parse::<u64>().ok()) else {
                        continue;
                    };
                    let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(sender) = waiting.get(&request) {
                        // The channel holds a whole batch, so it is full only if the server
                        // sent more than asked for: the read then fails on the closed
                        // channel instead of missing a message.
                        if sender.try_send(message).is_err() {
                            waiting.remove(&request);
                        }
                    }
                    // A reply nobody waits for belongs to a read that already ended.
                }
            }
        });
        Ok(DirectBatches {
            client,
            api_subject: format!("$JS.API.DIRECT.GET.{stream}"),
            reply_prefix,
            next_request: AtomicU64::new(1),
            waiting,
            timeout,
            router,
        })
    }

    /// Up to `DIRECT_BATCH_EVENTS_MAX` messages of `subject` at or after `from`, in the
    /// order the server sent them (the caller checks the order).
    pub async fn next_batch(&self, subject: &str, from: u64) -> Result<Batch, ReadError> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        // A batch, its end marker, and room for nothing else.
        let (sender, mut replies) = tokio::sync::mpsc::channel(DIRECT_BATCH_EVENTS_MAX + 1);
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).insert(request, sender);
        let _registration = Registration { waiting: &self.waiting, request };
        let body = serde_json::json!({
            "seq": from,
            "next_by_subj": subject,
            "batch": DIRECT_BATCH_EVENTS_MAX,
            "max_bytes": DIRECT_BATCH_BYTES_MAX,
        });
        self.client
            .publish_with_reply(self.api_subject.clone(), format!("{}{request}", self.reply_prefix), body.to_string().into())
            .await
            .map_err(|error| ReadError::Unavailable(format!("direct get: {error}")))?;
        let mut messages = Vec::new();
        loop {
            let reply = match tokio::time::timeout(self.timeout, replies.recv()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    return Err(ReadError::Storage(format!(
                        "direct get of {subject}: the server sent more than the {DIRECT_BATCH_EVENTS_MAX} messages asked for"
                    )));
                }
                Err(_) => return Err(ReadError::Unavailable(format!("direct get of {subject}: no answer within {} ms", self.timeout.as_millis()))),
            };
            match reply.status {
                None | Some(StatusCode::OK) => messages.push(batch_message(&reply)?),
                Some(status) if status.as_u16() == END_OF_BATCH => {
                    // The end of the batch; more of the subject when the batch was cut short.
                    let pending = header_number(&reply, "Nats-Num-Pending")
                        .ok_or_else(|| ReadError::Storage("direct get: an end-of-batch marker without Nats-Num-Pending".to_owned()))?;
                    return Ok(Batch { messages, more: pending > 0 });
                }
                Some(StatusCode::NOT_FOUND) if messages.is_empty() => return Ok(Batch { messages, more: false }),
                Some(status @ StatusCode::NO_RESPONDERS) => {
                    return Err(ReadError::Unavailable(format!("direct get: {status} {}", reply.description.as_deref().unwrap_or(""))));
                }
                Some(status) => return Err(ReadError::Storage(format!("direct get: {status} {}", reply.description.as_deref().unwrap_or("")))),
            }
        }
    }
}

impl DirectBatches {
    /// One plain (unbatched) direct get: `{"last_by_subj": subject}` or `{"seq": s}`.
    /// `None` when the server has no such message (404).
    pub async fn get_one(&self, body: String) -> Result<Option<Message>, ReadError> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        // One answer: the message or a status.
        let (sender, mut replies) = tokio::sync::mpsc::channel(1);
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).insert(request, sender);
        let _registration = Registration { waiting: &self.waiting, request };
        self.client
            .publish_with_reply(self.api_subject.clone(), format!("{}{request}", self.reply_prefix), body.into())
            .await
            .map_err(|error| ReadError::Unavailable(format!("direct get: {error}")))?;
        let reply = match tokio::time::timeout(self.timeout, replies.recv()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(ReadError::Storage("direct get: the server sent more than one answer".to_owned())),
            Err(_) => return Err(ReadError::Unavailable(format!("direct get: no answer within {} ms", self.timeout.as_millis()))),
        };
        match reply.status {
            None | Some(StatusCode::OK) => Ok(Some(reply)),
            Some(StatusCode::NOT_FOUND) => Ok(None),
            Some(status @ StatusCode::NO_RESPONDERS) => {
                Err(ReadError::Unavailable(format!("direct get: {status} {}", reply.description.as_deref().unwrap_or(""))))
            }
            Some(status) => Err(ReadError::Storage(format!("direct get: {status} {}", reply.description.as_deref().unwrap_or("")))),
        }
    }

    /// A subject's events read backwards from its newest, one plain direct get each, by the
    /// `Nats-Expected-Last-Subject-Sequence` every append of this log stores with its event:
    /// the server stored the event only if that was the subject's last sequence then (0:
    /// none), and the stream denies deletes, so the chain names every earlier event of the
    /// subject. Each get is a lookup by sequence, where a batched `next_by_subj` read walks
    /// the message block from one event of the subject to the next (every event stored in
    /// between: about a third of nats-server's CPU per redemption in the bench profile).
    /// `Ok(None)` when the chain cannot be followed (an event without the header, or with
    /// the header that moves the check to another subject, a sequence gone, more than
    /// `CHAIN_EVENTS_MAX` events): the caller reads the subject with batched gets instead.
    pub async fn read_chain(&self, subject: &str) -> Result<Option<Vec<BatchMessage>>, ReadError> {
        let mut newest_first: Vec<BatchMessage> = Vec::new();
        let Some(mut reply) = self.get_one(serde_json::json!({ "last_by_subj": subject }).to_string()).await? else {
            return Ok(Some(newest_first));
        };
        loop {
            let Some((message, previous)) = chain_link(&reply, subject) else {
                return Ok(None);
            };
            let seq = message.seq.0;
            if newest_first.last().is_some_and(|later| later.seq.0 <= seq) || previous >= seq {
                return Ok(None);
            }
            newest_first.push(message);
            if previous == 0 {
                newest_first.reverse();
                return Ok(Some(newest_first));
            }
            if newest_first.len() >= CHAIN_EVENTS_MAX {
                return Ok(None);
            }
            reply = match self.get_one(format!("{{\"seq\":{previous}}}")).await? {
                Some(reply) => reply,
                None => return Ok(None),
            };
            if header_number(&reply, "Nats-Sequence") != Some(previous) {
                return Ok(None);
            }
        }
    }
}

/// The event of one plain direct get on `subject`, and the subject's sequence before it as
/// its append expected; `None` when it is on another subject or lacks either header.
fn chain_link(reply: &Message, subject: &str) -> Option<(BatchMessage, u64)> {
    let headers = reply.headers.as_ref()?;
    if headers.get("Nats-Subject")?.as_str() != subject || headers.get("Nats-Expected-Last-Subject-Sequence-Subject").is_some() {
        return None;
    }
    let seq = header_number(reply, "Nats-Sequence")?;
    let previous = header_number(reply, "Nats-Expected-Last-Subject-Sequence")?;
    Some((BatchMessage { seq: Seq(seq), subject: subject.to_owned(), payload: reply.payload.clone() }, previous))
}

fn header_number(message: &Message, name: &str) -> Option<u64> {
    message.headers.as_ref()?.get(name)?.as_str().parse().ok()
}

/// A message of a batch. Only a batched answer carries `Nats-Num-Pending`: without it the
/// server ignored `batch` and will send nothing more, so the read would look complete.
fn batch_message(reply: &Message) -> Result<BatchMessage, ReadError> {
    let headers = reply.headers.as_ref().ok_or_else(|| ReadError::Storage("direct get: a message without headers".to_owned()))?;
    let seq = header_number(reply, "Nats-Sequence").ok_or_else(|| ReadError::Storage("direct get: a message without Nats-Sequence".to_owned()))?;
    if header_number(reply, "Nats-Num-Pending").is_none() {
        return Err(ReadError::Storage(format!("direct get: the server answered without batching (needs nats-server >= 2.11), at sequence {seq}")));
    }
    let subject = headers
        .get("Nats-Subject")
        .map(|value| value.as_str().to_owned())
        .ok_or_else(|| ReadError::Storage(format!("direct get: the message at {seq} has no Nats-Subject")))?;
    Ok(BatchMessage { seq: Seq(seq), subject, payload: reply.payload.clone() })
}
