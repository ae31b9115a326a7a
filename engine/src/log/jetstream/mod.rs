//! The JetStream event log: the production backend, on a NATS JetStream stream
//! (DESIGN.md "Subjects and streams"), with the same contract as the embedded log.
//!
//! What lives here: connecting (explicit client and JetStream options), creating and
//! verifying the two streams (the primary stream on `vs.>` and the node feed on `vsn.>`),
//! or, read-only (`connect_read_only`, for auditors), only looking up and verifying the
//! primary stream,
//! `EventLog` on top of them (append with `Nats-Msg-Id` and
//! `Nats-Expected-Last-Subject-Sequence`, reads by direct get (`direct`: back along the
//! expected sequences, else batched) and by
//! ephemeral pull consumers, `follow` that survives server restarts), and the node feed
//! (`publish_assignment`, `node_feed`).
//! What does not: event contents (`crate::wire`), server configuration (deploy/; the
//! durability of an acknowledged append rests on `sync_interval: always` on a single node,
//! or replicas 3 across failure domains), and who may read which node feed (NATS
//! permissions).
//!
//! This file holds the tunables, the log type and its `EventLog` implementation; the parts
//! sit in submodules, each with the choices it makes (PITFALLS.md, NATS section):
//! `connect` (connection options, URL credentials, the required stream settings),
//! `append` (publishing with retries, and the dedupe-before-expectation reconciliation),
//! `group_commit` (atomic batches for servers that fsync every write), `read` (ephemeral
//! pull consumers for `read_from`), `direct` (batched direct gets for `read_subject`),
//! `follow` (the `Follower` that checks sequences and divergence) and `node_feed`.
//!
//! One choice belongs to `read_subject` itself: direct get (`allow_direct`) may be answered
//! by a replica that lags the leader, so in a cluster `read_subject` can miss the newest
//! events of a subject; that is safe for decisions (the expected-sequence check catches a
//! stale read and the handler reloads), and `read_from` and `follow` use consumers, which
//! live on the stream leader.

use super::{AppendError, AppendRequest, Appended, EventLog, Expected, PAYLOAD_BYTES_MAX, ReadError, StoredEvent, VersionConflict};
use crate::ids::Seq;
use async_nats::jetstream::context::Context;
use async_nats::jetstream::stream;
use async_nats::{HeaderMap, header};
use futures::stream::{BoxStream, StreamExt as _};
use std::time::Duration;

mod append;
mod connect;
mod direct;
mod follow;
mod group_commit;
mod node_feed;
mod read;

pub use self::connect::{ConnectError, redact_url, weaker_settings};
pub use self::direct::CHAIN_EVENTS_MAX;
pub use self::group_commit::{GROUP_COMMIT_BATCH_MAX, GROUP_COMMIT_MIN, GroupCommitStats};

use self::append::{Published, check_payload, encode_idempotency_key, publish};
use self::follow::Follower;
use self::group_commit::GroupCommit;

/// The primary stream's name when none is configured.
pub const DEFAULT_STREAM: &str = "VOUCHSAFE";
/// The node feed's stream is named after the primary stream with this suffix.
pub const NODE_STREAM_SUFFIX: &str = "_NODES";
/// Subjects of the primary stream.
pub const EVENT_SUBJECTS: &str = "vs.>";
/// Subjects of the node feed; a node's assignments are on `vsn.<node_id>`.
pub const NODE_SUBJECTS: &str = "vsn.>";
const NODE_SUBJECT_PREFIX: &str = "vsn.";
/// The inbox prefix of a read-only connection: its answers (API responses, consumer
/// deliveries) arrive on `_INBOX_AUDIT.>`, so read-only users need no subscribe permission
/// on `_INBOX.>`, where the engine's answers arrive (deploy/nats-auth.conf).
pub const READ_ONLY_INBOX_PREFIX: &str = "_INBOX_AUDIT";

/// How long the server remembers a `Nats-Msg-Id`. Retries of one append (ours and the
/// caller's) land well inside it; beyond it, ids derived from the request still send a late
/// retry to the same aggregate, whose state answers it (DESIGN.md "Idempotency").
pub const DUPLICATE_WINDOW_MS: u64 = 120_000;
/// Header bytes allowed on top of the payload: the stream's `max_msg_size` counts headers
/// too, so a payload of exactly `PAYLOAD_BYTES_MAX` must still fit with its headers.
pub const HEADER_BYTES_MAX: usize = 4 * 1024;
/// The largest message the streams accept (payload plus headers).
pub const MESSAGE_BYTES_MAX: usize = PAYLOAD_BYTES_MAX + HEADER_BYTES_MAX;
/// The longest idempotency key, in bytes once encoded for the header.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 1024;

/// Bounds every request to the server: API calls, direct gets, and the wait for a publish
/// ack (set on the connection and on the JetStream context alike, nats.rs #1558).
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// How long establishing the first TCP + NATS handshake may take.
pub const CONNECTION_TIMEOUT_MS: u64 = 5_000;
/// The longest pause between reconnection attempts; the client never stops trying, while
/// every request it carries stays bounded by `REQUEST_TIMEOUT_MS`.
pub const RECONNECT_DELAY_MAX_MS: u64 = 2_000;
/// Pause added per failed reconnection attempt, up to `RECONNECT_DELAY_MAX_MS`.
pub const RECONNECT_DELAY_STEP_MS: u64 = 100;
/// Client-side keepalive: a silent connection is noticed within two of these.
pub const PING_INTERVAL_MS: u64 = 10_000;
/// Commands the client queues for its connection, at most (while disconnected too).
pub const CLIENT_COMMANDS_QUEUED_MAX: usize = 8_192;
/// Publishes awaiting their ack, at most; more wait for a slot (backpressure, never an error).
pub const APPENDS_IN_FLIGHT_MAX: usize = 4_096;
/// Attempts of one publish whose outcome was unknown (timeout, lost connection) or that
/// reached no stream (server restarting); each retry carries the same id and expectation.
pub const APPEND_ATTEMPTS_MAX: u32 = 3;
/// Pause before a retry, multiplied by the attempt number.
pub const APPEND_RETRY_DELAY_MS: u64 = 250;

/// Events one pull request asks for while reading or following (a read of fewer asks
/// for what it reads). A 680k-event audit replay ran about 20 % faster with 8,192 than
/// with 1,024 (paired runs; fewer pull requests for the server to serve).
pub const PULL_BATCH_EVENTS_MAX: usize = 8_192;
/// The most events `read_range` reserves room for ahead.
const READ_RANGE_RESERVE_EVENTS_MAX: usize = 65_536;
/// How long one pull request waits on the server for events before it is renewed.
pub const PULL_EXPIRES_MS: u64 = 5_000;
/// The server's heartbeat on an idle pull request; two missed ones mean the consumer or the
/// connection is gone, and it is recreated.
pub const PULL_HEARTBEAT_MS: u64 = 1_000;
/// An ephemeral consumer the client stopped using is removed by the server after this long.
pub const CONSUMER_INACTIVE_MS: u64 = 30_000;
/// How long `follow` keeps trying to recreate its consumer before it yields
/// `ReadError::Unavailable` and ends.
pub const FOLLOW_OUTAGE_MAX_MS: u64 = 600_000;
/// The longest pause between two attempts to recreate a `follow` consumer.
pub const FOLLOW_RETRY_DELAY_MAX_MS: u64 = 2_000;
/// Consecutive consumers that skip the same sequence before `follow` reports the stream as
/// corrupt instead of recreating again (the stream denies deletes, so a gap is never real).
pub const FOLLOW_GAPS_MAX: u32 = 5;
/// How long `read_from` waits for an event below the last sequence before failing.
pub const READ_EVENT_WAIT_MS: u64 = 10_000;

/// The oldest nats-server accepted: earlier 2.12 releases lose acknowledged writes under
/// faults (Jepsen, 2025).
pub const NATS_SERVER_MIN: (u32, u32, u32) = (2, 12, 3);

/// How the streams are created when they do not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Copies of every event across the cluster: 1 on a single node, 3 in production.
    pub replicas: usize,
    /// Group commit (`GroupCommit`): appends waiting together go to the server as one
    /// atomic batch, made durable by one fsync on nats-server ≥ 2.15. For servers with
    /// `sync_interval: always`, where every message otherwise costs its own fsync; with the
    /// default lazy sync a batch costs more than the messages it holds. Needs the stream's
    /// `allow_atomic` (set on the stream when missing).
    pub group_commit: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { replicas: 1, group_commit: false }
    }
}

/// The JetStream event log. Cloning the connection is cheap; `follow` and `node_feed`
/// streams keep it open after the log itself is dropped.
pub struct JetStreamLog {
    context: Context,
    events: stream::Stream,
    /// The node feed; `None` exactly on a read-only connection, which neither appends nor
    /// touches the node feed.
    nodes: Option<stream::Stream>,
    /// `Some` with `StreamOptions::group_commit`.
    group_commit: Option<std::sync::Arc<GroupCommit>>,
    /// Batched direct gets for `read_subject`.
    direct: direct::DirectBatches,
}

/// What a read-only connection answers to an append or a node-feed operation.
const READ_ONLY: &str = "this connection is read-only (connect_read_only); appends and the node feed need the engine's connection";

type AppendResult = Result<Result<Appended, VersionConflict>, AppendError>;

impl JetStreamLog {
    /// The primary stream's name.
    pub fn stream_name(&self) -> &str {
        &self.events.cached_info().config.name
    }

    /// The node feed's stream name; `None` on a read-only connection.
    pub fn node_stream_name(&self) -> Option<&str> {
        self.nodes.as_ref().map(|nodes| nodes.cached_info().config.name.as_str())
    }
}

/// Gossip over core NATS (not JetStream: nothing is stored), on `vsg.<stream>.<topic>`,
/// outside the streams' subjects.
struct NatsGossip {
    client: async_nats::Client,
    prefix: String,
}

#[async_trait::async_trait]
impl super::Gossip for NatsGossip {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), AppendError> {
        let payload = bytes::Bytes::from(payload);
        check_payload(&payload)?;
        self.client.publish(format!("{}.{topic}", self.prefix), payload).await.map_err(|error| AppendError::Unavailable(error.to_string()))
    }

    async fn listen(&self, topic: &str) -> Result<BoxStream<'static, Vec<u8>>, ReadError> {
        let subscriber = self.client.subscribe(format!("{}.{topic}", self.prefix)).await.map_err(|error| ReadError::Unavailable(error.to_string()))?;
        Ok(subscriber.map(|message| message.payload.to_vec()).boxed())
    }
}

/// Job leases in a JetStream key-value bucket (`vsjobs-<stream>`) whose entries age out
/// after the ttl: `create` takes a job nobody holds (its key absent or aged out), `update`
/// with the last revision renews it, and fails once another took it.
struct KvJobLeases {
    store: async_nats::jetstream::kv::Store,
    /// The revision of each job this process holds, as last written.
    held: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

#[async_trait::async_trait]
impl super::JobLeases for KvJobLeases {
    async fn hold(&self, name: &str, holder: &str) -> Result<bool, ReadError> {
        use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
        let held = self.held.lock().expect("job lease lock is never poisoned").get(name).copied();
        let value = bytes::Bytes::from(holder.to_string());
        if let Some(revision) = held {
            match self.store.update(name, value.clone(), revision).await {
                Ok(revision) => {
                    self.held.lock().expect("job lease lock is never poisoned").insert(name.to_string(), revision);
                    return Ok(true);
                }
                // Ran out (aged away) or taken: try to take it afresh below.
                Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                    self.held.lock().expect("job lease lock is never poisoned").remove(name);
                }
                Err(error) => return Err(ReadError::Unavailable(format!("cannot renew the {name} lease: {error}"))),
            }
        }
        match self.store.create(name, value).await {
            Ok(revision) => {
                self.held.lock().expect("job lease lock is never poisoned").insert(name.to_string(), revision);
                Ok(true)
            }
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(ReadError::Unavailable(format!("cannot take the {name} lease: {error}"))),
        }
    }
}

#[async_trait::async_trait]
impl EventLog for JetStreamLog {
    async fn append(&self, request: AppendRequest) -> AppendResult {
        if !super::is_valid_subject(&request.subject) {
            return Err(AppendError::InvalidSubject(request.subject));
        }
        check_payload(&request.payload)?;
        if self.nodes.is_none() {
            return Err(AppendError::Storage(READ_ONLY.to_owned()));
        }
        let message_id = encode_idempotency_key(&request.idempotency_key);
        if message_id.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(AppendError::Storage(format!(
                "idempotency key of {} bytes exceeds the log's limit of {IDEMPOTENCY_KEY_BYTES_MAX} bytes; use a shorter key",
                message_id.len()
            )));
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_ID, message_id.clone());
        match request.expected {
            Expected::Any => {}
            Expected::Empty => {
                headers.insert(header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
            }
            Expected::LastSeq(seq) => {
                headers.insert(header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, seq.0.to_string());
            }
        }
        // A clustered stream answers 10164 (wrong last sequence, the stored one unsaid) while
        // a message on the subject is in flight, which after a leader change can be this
        // very append's earlier attempt, not yet stored: then nothing is found, the outcome
        // is open, and the same publish is sent again once it has landed (a duplicate then,
        // or a refusal that says the sequence). Only a definite answer is a conflict.
        let mut in_flight_pause = Duration::from_millis(append::IN_FLIGHT_PAUSE_MIN_MS);
        for attempt in 1.. {
            let published = match &self.group_commit {
                Some(group) => group.publish(request.subject.clone(), headers.clone(), request.payload.clone()).await?,
                None => publish(&self.context, self.stream_name(), request.subject.clone(), headers.clone(), request.payload.clone()).await?,
            };
            let actual = match published {
                Published::Acked(ack) => return Ok(Ok(Appended { seq: Seq(ack.sequence), duplicate: ack.duplicate })),
                Published::WrongLastSequence(actual) => actual.filter(|seq| *seq > 0),
            };
            if let Some(original) = self.stored_by_expected_append(&request.subject, request.expected, actual, &message_id).await {
                return Ok(Ok(Appended { seq: Seq(original), duplicate: true }));
            }
            if actual.is_some() || attempt >= append::IN_FLIGHT_ATTEMPTS_MAX {
                return Ok(Err(VersionConflict { subject: request.subject, expected: request.expected, actual: actual.map(Seq) }));
            }
            tracing::debug!(subject = %request.subject, attempt, "wrong last sequence with a message in flight; publishing again once it landed");
            tokio::time::sleep(in_flight_pause).await;
            in_flight_pause *= 2;
        }
        unreachable!("the loop returns by its last attempt")
    }

    async fn read_subject(&self, subject: &str) -> Result<Vec<StoredEvent>, ReadError> {
        // Nothing is ever stored on an invalid subject; and a wildcard must not reach the
        // server, where it would match other subjects.
        if !super::is_valid_subject(subject) {
            return Ok(Vec::new());
        }
        if let Some(chain) = self.direct.read_chain(subject).await? {
            return Ok(chain.into_iter().map(|message| StoredEvent { seq: message.seq, subject: message.subject, payload: message.payload }).collect());
        }
        let mut events = Vec::new();
        let mut next = 1u64;
        loop {
            let batch = self.direct.next_batch(subject, next).await?;
            for message in batch.messages {
                if message.seq.0 < next || message.subject != subject {
                    return Err(ReadError::Corrupt {
                        seq: message.seq,
                        reason: format!("asked for {subject} at or after {next}, got {} at {}", message.subject, message.seq),
                    });
                }
                next = message.seq.0 + 1;
                events.push(StoredEvent { seq: message.seq, subject: message.subject, payload: message.payload });
            }
            if !batch.more {
                return Ok(events);
            }
        }
    }

    async fn read_from(&self, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, ReadError> {
        // A cluster that just lost or regained a node answers "no responders" or times out
        // until it has elected a stream leader again: retry an unavailable read a few times
        // with backoff (about 6 s in all) before giving up. Corruption is never retried.
        let mut backoff = Duration::from_millis(READ_RETRY_BACKOFF_MIN_MS);
        for attempt in 1.. {
            match self.read_from_once(from, limit).await {
                Err(ReadError::Unavailable(reason)) if attempt < READ_ATTEMPTS_MAX => {
                    tracing::debug!(attempt, %reason, "read unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns by its last attempt")
    }

    async fn last_seq(&self) -> Result<Seq, ReadError> {
        self.last_seq_once().await
    }

    async fn job_leases(&self, ttl: std::time::Duration) -> Result<Option<std::sync::Arc<dyn super::JobLeases>>, ReadError> {
        if self.nodes.is_none() {
            return Ok(None);
        }
        let config = async_nats::jetstream::kv::Config {
            bucket: format!("vsjobs-{}", self.stream_name()),
            description: "which engine runs the sealer and the sweeper".into(),
            history: 1,
            max_age: ttl,
            num_replicas: self.events.cached_info().config.num_replicas,
            ..Default::default()
        };
        let store =
            self.context.create_key_value(config).await.map_err(|error| ReadError::Unavailable(format!("cannot open the job lease bucket: {error}")))?;
        Ok(Some(std::sync::Arc::new(KvJobLeases { store, held: Default::default() })))
    }

    fn reads_may_lag(&self) -> bool {
        self.events.cached_info().config.num_replicas > 1
    }

    /// From the stream leader (`STREAM.MSG.GET`, last by subject), never a replica.
    async fn subject_last_seq(&self, subject: &str) -> Result<Option<Seq>, ReadError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.events.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(Seq(message.sequence))),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(ReadError::Unavailable(format!("the last event of {subject}: {error}"))),
        }
    }

    fn gossip(&self) -> Option<std::sync::Arc<dyn super::Gossip>> {
        // A read-only connection (an auditor) neither speaks nor needs to listen.
        self.nodes.as_ref()?;
        Some(std::sync::Arc::new(NatsGossip { client: self.context.client(), prefix: format!("vsg.{}", self.stream_name()) }))
    }

    fn follow(&self, from: Seq) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
        let follower = Follower::new(self.events.clone(), self.context.client().statistics(), None, from.0);
        futures::stream::unfold(follower, Follower::next_event).boxed()
    }
}

impl JetStreamLog {
    /// What `read_subject` reads along the subject's chain of expected sequences alone
    /// (`direct::read_chain`): `None` where it falls back to batched gets. For tests that
    /// show which subjects take which path.
    #[cfg(any(test, feature = "test-util"))]
    pub async fn read_subject_chain(&self, subject: &str) -> Result<Option<Vec<Seq>>, ReadError> {
        Ok(self.direct.read_chain(subject).await?.map(|chain| chain.iter().map(|message| message.seq).collect()))
    }

    /// `follow` with its resume check switched off: after a stream lost a tail, it goes on
    /// from where it was, silently mixing two histories. Only for the protection-off
    /// control of the tests that show the check (`stream_went_back.rs`).
    #[cfg(any(test, feature = "test-util"))]
    pub fn follow_unchecked(&self, from: Seq) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
        let follower = Follower::new(self.events.clone(), self.context.client().statistics(), None, from.0).unchecked();
        futures::stream::unfold(follower, Follower::next_event).boxed()
    }
}

/// Attempts of one `read_from` while the stream is unavailable.
const READ_ATTEMPTS_MAX: u32 = 6;
/// The first wait between those attempts (doubled each time).
const READ_RETRY_BACKOFF_MIN_MS: u64 = 200;
