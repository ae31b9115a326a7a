//! Group commit (`StreamOptions::group_commit`): appends that wait together go to the
//! server as one atomic batch, made durable by one fsync, and fall back to single publishes
//! whenever the server refuses or leaves a batch in doubt.
//!
//! What does not live here: the single publish and its retries (`append`), which every
//! refused batch falls back to, and turning on the stream's `allow_atomic` (`connect`).

use super::append::{Published, publish};
use super::{AppendError, JetStreamLog, REQUEST_TIMEOUT_MS};
use async_nats::HeaderMap;
use async_nats::jetstream::context::Context;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use std::fmt::Write as _;
use std::time::Duration;

impl JetStreamLog {
    /// What group commit did so far; `None` without it (`StreamOptions::group_commit`).
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.group_commit.as_ref().map(|group| *group.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Group commit for a server that fsyncs every write (`StreamOptions::group_commit`).
///
/// Appends queue here; one drain task sends them round after round. A round takes what is
/// waiting (one message per subject, up to `GROUP_COMMIT_BATCH_MAX`): `GROUP_COMMIT_MIN`
/// or more go as ONE atomic batch (`Nats-Batch-Id`/`-Sequence`/`-Commit`), which
/// nats-server ≥ 2.15 stores with one fsync of the stream (nats-server #8539); fewer go
/// one by one, pipelined, as without group commit. While a round is at the server, the
/// next one gathers, so the batch grows with the load: one append alone waits for one
/// round trip, a busy engine pays one fsync per batch instead of one per append.
///
/// Every message keeps its own `Nats-Msg-Id` and expectation. The server refuses a whole
/// batch when any of them fails (a lost race, a duplicate id) and stores none of it, and
/// its answer does not say which one: the members are then published one by one, so each
/// caller gets exactly the answer a single publish gives (and a batch whose commit timed
/// out resolves the same way: a member already stored answers as its own duplicate).
pub(super) struct GroupCommit {
    context: Context,
    stream: String,
    queue: std::sync::Mutex<GroupQueue>,
    stats: std::sync::Mutex<GroupCommitStats>,
}

/// What group commit did so far (`JetStreamLog::group_commit_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Atomic batches the server stored.
    pub batches: u64,
    /// Appends stored in those batches.
    pub batched: u64,
    /// Appends published one by one (small rounds and refused batches).
    pub single: u64,
    /// Batches refused as a whole (or left in doubt) whose members went one by one.
    pub refused: u64,
}

#[derive(Default)]
struct GroupQueue {
    waiting: std::collections::VecDeque<GroupMember>,
    /// A drain task runs; it empties `waiting` before it stops.
    draining: bool,
}

struct GroupMember {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    reply: tokio::sync::oneshot::Sender<Result<Published, AppendError>>,
}

/// Fewest waiting appends that go as one atomic batch (a batch has a fixed cost of a few
/// milliseconds at the server: below this, single publishes are faster).
pub const GROUP_COMMIT_MIN: usize = 32;
/// Most messages in one batch (the server's limit is 1000).
pub const GROUP_COMMIT_BATCH_MAX: usize = 512;

/// The server's answer to a batch commit.
#[derive(serde::Deserialize)]
struct BatchAck {
    #[serde(default)]
    stream: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: u64,
    error: Option<BatchAckError>,
}

#[derive(serde::Deserialize)]
struct BatchAckError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

impl GroupCommit {
    pub(super) fn new(context: Context, stream: String) -> Self {
        GroupCommit { context, stream, queue: std::sync::Mutex::new(GroupQueue::default()), stats: std::sync::Mutex::new(GroupCommitStats::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupQueue> {
        // Only pushed to and drained: a panic elsewhere leaves it consistent.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) async fn publish(self: &std::sync::Arc<Self>, subject: String, headers: HeaderMap, payload: Bytes) -> Result<Published, AppendError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push_back(GroupMember { subject, headers, payload, reply });
            !std::mem::replace(&mut queue.draining, true)
        };
        if start {
            tokio::spawn(std::sync::Arc::clone(self).drain());
        }
        answer.await.map_err(|_| AppendError::Unknown(Box::new(DrainStopped)))?
    }

    /// Sends rounds until nothing waits.
    async fn drain(self: std::sync::Arc<Self>) {
        loop {
            let round = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    queue.draining = false;
                    return;
                }
                take_round(&mut queue.waiting)
            };
            if round.len() >= GROUP_COMMIT_MIN {
                self.commit_batch(round).await;
            } else {
                self.publish_each(round).await;
            }
        }
    }

    fn count(&self, update: impl FnOnce(&mut GroupCommitStats)) {
        update(&mut self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Each member on its own, pipelined; every caller gets its own answer.
    async fn publish_each(&self, members: Vec<GroupMember>) {
        self.count(|stats| stats.single += members.len() as u64);
        futures::future::join_all(members.into_iter().map(|member| async move {
            let published = publish(&self.context, &self.stream, member.subject, member.headers, member.payload).await;
            // A caller that went away no longer needs its answer.
            let _ = member.reply.send(published);
        }))
        .await;
    }

    /// The members as one atomic batch; on any refusal or doubt, one by one.
    async fn commit_batch(&self, members: Vec<GroupMember>) {
        match self.send_batch(&members).await {
            Ok(first_seq) => {
                self.count(|stats| {
                    stats.batches += 1;
                    stats.batched += members.len() as u64;
                });
                for (offset, member) in members.into_iter().enumerate() {
                    let ack = PublishAck { stream: self.stream.clone(), sequence: first_seq + offset as u64, ..PublishAck::default() };
                    let _ = member.reply.send(Ok(Published::Acked(ack)));
                }
            }
            Err(reason) => {
                tracing::debug!(%reason, members = members.len(), "group commit: the batch was not stored as a whole; publishing its members one by one");
                self.count(|stats| stats.refused += 1);
                self.publish_each(members).await;
            }
        }
    }

    /// Sends one atomic batch and returns the first member's sequence.
    async fn send_batch(&self, members: &[GroupMember]) -> Result<u64, String> {
        let client = self.context.client();
        let batch_id = hex_id();
        let count = members.len();
        for (index, member) in members.iter().enumerate() {
            let mut headers = member.headers.clone();
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
            if index + 1 < count {
                client.publish_with_headers(member.subject.clone(), headers, member.payload.clone()).await.map_err(|error| error.to_string())?;
            } else {
                headers.insert("Nats-Batch-Commit", "1");
                let request =
                    async_nats::Request::new().headers(headers).payload(member.payload.clone()).timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)));
                let answer = client.send_request(member.subject.clone(), request).await.map_err(|error| error.to_string())?;
                let ack: BatchAck = serde_json::from_slice(&answer.payload).map_err(|error| format!("unreadable batch ack: {error}"))?;
                if let Some(error) = ack.error {
                    return Err(format!("batch refused ({}): {}", error.err_code, error.description));
                }
                if ack.stream != self.stream || ack.count != count as u64 || ack.seq < count as u64 {
                    return Err(format!("unexpected batch ack: stream {}, seq {}, count {} for {count} messages", ack.stream, ack.seq, ack.count));
                }
                return Ok(ack.seq + 1 - count as u64);
            }
        }
        Err("an empty batch".to_owned())
    }
}

/// Why an append's outcome is unknown when the drain task went away with it queued or in
/// flight (a panic in the task, or a runtime shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the group commit task stopped before answering")]
struct DrainStopped;

/// Up to `GROUP_COMMIT_BATCH_MAX` waiting members, at most one per subject (a batch may
/// name a subject with an expectation once); the rest keep their order in the queue.
fn take_round(waiting: &mut std::collections::VecDeque<GroupMember>) -> Vec<GroupMember> {
    let mut subjects = std::collections::HashSet::new();
    let mut round = Vec::new();
    let mut kept = std::collections::VecDeque::new();
    while let Some(member) = waiting.pop_front() {
        if round.len() < GROUP_COMMIT_BATCH_MAX && subjects.insert(member.subject.clone()) {
            round.push(member);
        } else {
            kept.push_back(member);
        }
    }
    *waiting = kept;
    round
}

/// A random batch id (32 hex characters; the server allows 64).
fn hex_id() -> String {
    let bytes = crate::crypto::random_bytes::<16>();
    bytes.iter().fold(String::with_capacity(32), |mut id, byte| {
        let _ = write!(id, "{byte:02x}");
        id
    })
}
