//! The JetStream event log: the production backend, on a NATS JetStream stream
//! (DESIGN.md "Subjects and streams"), with the same contract as the embedded log.
//!
//! What lives here: connecting (explicit client and JetStream options), creating and
//! verifying the two streams (the primary stream on `vs.>` and the node feed on `vsn.>`),
//! or, read-only (`connect_read_only`, for auditors), only looking up and verifying the
//! primary stream,
//! `EventLog` on top of them (append with `Nats-Msg-Id` and
//! `Nats-Expected-Last-Subject-Sequence`, reads by batched direct get (`direct`) and by
//! ephemeral pull consumers, `follow` that survives server restarts), and the node feed
//! (`publish_assignment`, `node_feed`).
//! What does not: event contents (`crate::wire`), server configuration (deploy/; the
//! durability of an acknowledged append rests on `sync_interval: always` on a single node,
//! or replicas 3 across failure domains), and who may read which node feed (NATS
//! permissions).
//!
//! Choices worth knowing (PITFALLS.md, NATS section):
//! - Dedupe before expectation (the contract) is what a clustered stream does, but a single
//!   nats-server 2.15.1 checks the expectation first; after a refused expectation the log
//!   looks for its own key on the subject, so both answer a retry as a duplicate.
//! - An append is answered only from its publish ack; a timeout or lost connection is
//!   `AppendError::Unknown` (the message may have been stored). Before giving up, the same
//!   publish (same `Nats-Msg-Id`, same expectation) is retried a bounded number of times;
//!   with the point above, a retry of a stored append is answered as a duplicate of the
//!   original, never as a conflict.
//! - A stream's `max_msg_size` counts headers as well as the payload (tested on 2.15.1), so
//!   the streams allow `PAYLOAD_BYTES_MAX` plus `HEADER_BYTES_MAX`.
//! - Appends are pipelined: `append` holds no lock, and every ack future is awaited by the
//!   call that created it (a cancelled call hands it to async-nats' background acker).
//! - Both the connection's request timeout and the JetStream context's timeout are set
//!   (nats.rs #1558).
//! - async-nats 0.51 ignores credentials in a server URL (nats.rs #1623: CONNECT goes out
//!   with no user), so `connect` takes `user:password@` (or a bare `token@`) from the URL
//!   itself and passes it as a connect option.
//! - `follow` does not trust any client's ordered consumer (nats.go #2107, nats.rs #585):
//!   it runs its own ephemeral pull consumer and checks both the consumer sequence (nothing
//!   lost inside one consumer) and the stream sequence (contiguous; the stream denies
//!   delete and purge, so a gap is never legitimate). On any doubt or error it recreates
//!   the consumer at the next sequence it has not yet yielded.
//! - Direct get (`allow_direct`) may be answered by a replica that lags the leader, so in a
//!   cluster `read_subject` can miss the newest events of a subject; that is safe for
//!   decisions (the expected-sequence check catches a stale read and the handler reloads),
//!   and `read_from` and `follow` use consumers, which live on the stream leader.

use super::{
    AppendError, AppendRequest, Appended, EventLog, Expected, PAYLOAD_BYTES_MAX, ReadError,
    StoredEvent, VersionConflict,
};
use crate::ids::Seq;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::context::{Context, ContextBuilder, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{
    self, DiscardPolicy, PersistenceMode, RetentionPolicy, StorageType,
};
use async_nats::{ConnectOptions, HeaderMap, ServerAddr, header};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

mod direct;

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

/// Why `connect` failed. Each message says what to do next; credentials in the URL are
/// never shown.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "{url:?} is not a NATS URL ({reason}); use e.g. nats://127.0.0.1:4222, comma-separated for a cluster"
    )]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to nats at {url}: {reason}; is nats-server running and reachable?")]
    Unreachable { url: String, reason: String },
    #[error(
        "nats at {url} has JetStream disabled; enable it with a `jetstream {{ store_dir: ..., sync_interval: always }}` block (deploy/ has configurations)"
    )]
    JetStreamDisabled { url: String },
    #[error("nats-server {found} at {url} is older than the required {}.{}.{} (earlier releases lose acknowledged writes under faults); upgrade it", NATS_SERVER_MIN.0, NATS_SERVER_MIN.1, NATS_SERVER_MIN.2)]
    ServerTooOld { url: String, found: String },
    #[error(
        "{0:?} is not a valid stream name (letters, digits, '-' and '_'; no spaces, '.', '*' or '>')"
    )]
    InvalidStreamName(String),
    #[error("stream {stream} exists with weaker settings than vouchsafe requires: {}; fix the stream (e.g. `nats stream edit {stream}`) or choose another stream name", differences.join("; "))]
    WeakerStream {
        stream: String,
        differences: Vec<String>,
    },
    #[error(
        "cannot create stream {stream} on {subjects}: {reason}; check the server's JetStream limits and that no other stream claims {subjects}"
    )]
    CreateStream {
        stream: String,
        subjects: String,
        reason: String,
    },
    #[error(
        "cannot read stream {stream}: {reason}; is JetStream ready (a cluster needs a quorum), and may this user read it ($JS.API.STREAM.INFO.{stream})?"
    )]
    StreamInfo { stream: String, reason: String },
    #[error(
        "stream {stream} does not exist at {url}, and a read-only connection never creates it; check --stream, or start the engine on this server first (it creates the stream)"
    )]
    MissingStream { url: String, stream: String },
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
    /// Connects to `url` (comma-separated URLs for a cluster) and creates or verifies the
    /// primary stream `stream` and its node feed, with one replica.
    pub async fn connect(url: &str, stream: &str) -> Result<JetStreamLog, ConnectError> {
        Self::connect_with(url, stream, StreamOptions::default()).await
    }

    /// `connect` with explicit stream options (replicas for a cluster).
    pub async fn connect_with(
        url: &str,
        stream: &str,
        options: StreamOptions,
    ) -> Result<JetStreamLog, ConnectError> {
        let node_stream = format!("{stream}{NODE_STREAM_SUFFIX}");
        for name in [stream, node_stream.as_str()] {
            if !is_valid_stream_name(name) {
                return Err(ConnectError::InvalidStreamName(name.to_owned()));
            }
        }
        let context = connect_context(url, None).await?;
        let mut events = ensure_stream(
            &context,
            required_config(stream, EVENT_SUBJECTS, options.replicas),
        )
        .await?;
        if options.group_commit && !events.cached_info().config.allow_atomic_publish {
            let mut config = events.cached_info().config.clone();
            config.allow_atomic_publish = true;
            context.update_stream(config).await.map_err(|error| ConnectError::CreateStream {
                stream: stream.to_owned(),
                subjects: EVENT_SUBJECTS.to_owned(),
                reason: format!("group commit needs atomic batch publish (allow_atomic, nats-server >= 2.12), and turning it on failed: {error}"),
            })?;
            events = context.get_stream(stream).await.map_err(|error| stream_info_error(stream, &error))?;
        }
        let nodes = ensure_stream(
            &context,
            required_config(&node_stream, NODE_SUBJECTS, options.replicas),
        )
        .await?;
        let group_commit = options.group_commit.then(|| {
            std::sync::Arc::new(GroupCommit::new(context.clone(), stream.to_owned()))
        });
        let direct = start_direct(&context, stream).await?;
        Ok(JetStreamLog {
            context,
            events,
            nodes: Some(nodes),
            group_commit,
            direct,
        })
    }

    /// Connects read-only, as an auditor: looks up the primary stream `stream` and verifies
    /// it as `connect` does, but never creates or changes a stream and never touches the
    /// node feed. Reads need only what deploy/nats-auth.conf grants its `auditor` user
    /// (stream info, ephemeral pull consumers and direct gets on `stream`, answers on
    /// `READ_ONLY_INBOX_PREFIX`); appends are refused without reaching the server.
    pub async fn connect_read_only(url: &str, stream: &str) -> Result<JetStreamLog, ConnectError> {
        if !is_valid_stream_name(stream) {
            return Err(ConnectError::InvalidStreamName(stream.to_owned()));
        }
        let context = connect_context(url, Some(READ_ONLY_INBOX_PREFIX)).await?;
        let required = required_config(stream, EVENT_SUBJECTS, StreamOptions::default().replicas);
        let events = match context.get_stream(stream).await {
            Ok(events) => events,
            Err(error) if is_stream_not_found(&error) => {
                return Err(ConnectError::MissingStream {
                    url: redact_url(url),
                    stream: stream.to_owned(),
                });
            }
            Err(error) => return Err(stream_info_error(stream, &error)),
        };
        let events = verified(events, &required)?;
        let direct = start_direct(&context, stream).await?;
        Ok(JetStreamLog {
            context,
            events,
            nodes: None,
            group_commit: None,
            direct,
        })
    }

    /// What group commit did so far; `None` without it (`StreamOptions::group_commit`).
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.group_commit.as_ref().map(|group| *group.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The primary stream's name.
    pub fn stream_name(&self) -> &str {
        &self.events.cached_info().config.name
    }

    /// The node feed's stream name; `None` on a read-only connection.
    pub fn node_stream_name(&self) -> Option<&str> {
        self.nodes
            .as_ref()
            .map(|nodes| nodes.cached_info().config.name.as_str())
    }

    /// Republishes an assignment (a `VoucherIssued` at `source_seq` of the primary stream)
    /// to node `node_id`'s feed, `vsn.<node_id>`. `Nats-Msg-Id` is the source sequence, so
    /// republishing the same source event inside the duplicate window stores nothing and
    /// answers the original feed sequence with `duplicate = true`. Beyond the window (a feed
    /// rebuilt later) it is stored again: nodes treat assignments idempotently.
    pub async fn publish_assignment(
        &self,
        node_id: &str,
        source_seq: Seq,
        payload: Bytes,
    ) -> Result<Appended, AppendError> {
        let subject = format!("{NODE_SUBJECT_PREFIX}{node_id}");
        if !crate::ids::is_valid_token(node_id) {
            return Err(AppendError::InvalidSubject(subject));
        }
        check_payload(&payload)?;
        let Some(stream) = self.node_stream_name() else {
            return Err(AppendError::Storage(READ_ONLY.to_owned()));
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_ID, source_seq.0.to_string());
        match publish(&self.context, stream, subject.clone(), headers, payload).await? {
            Published::Acked(ack) => Ok(Appended {
                seq: Seq(ack.sequence),
                duplicate: ack.duplicate,
            }),
            // We never send an expectation on the feed.
            Published::WrongLastSequence(_) => Err(AppendError::Storage(format!(
                "the server refused an assignment on {subject} for an expectation it was not sent"
            ))),
        }
    }

    /// The source sequence of the newest assignment on the node feed (its `Nats-Msg-Id`),
    /// or `Seq(0)` when the feed is empty: where a restarted dispatcher resumes. Read from
    /// the leader (`get_raw_message`), never a lagging replica.
    pub async fn last_dispatched_source_seq(&self) -> Result<Seq, ReadError> {
        let mut nodes = self
            .nodes
            .clone()
            .ok_or_else(|| ReadError::Storage(READ_ONLY.to_owned()))?;
        let last = nodes.info().await.map_err(|error| ReadError::Unavailable(format!("node feed info: {error}")))?.state.last_sequence;
        if last == 0 {
            return Ok(Seq(0));
        }
        let message = nodes.get_raw_message(last).await.map_err(|error| ReadError::Unavailable(format!("node feed message {last}: {error}")))?;
        let id = message.headers.get(header::NATS_MESSAGE_ID).map(|value| value.as_str().to_string()).unwrap_or_default();
        id.parse::<u64>().map(Seq).map_err(|_| ReadError::Corrupt { seq: Seq(last), reason: format!("the node feed message has Nats-Msg-Id {id:?}, not a source sequence") })
    }

    /// Node `node_id`'s assignments from feed sequence `from` on (1 = the start), then each
    /// new one: `(feed sequence, payload)`, in order, without duplicates. Only
    /// `vsn.<node_id>` is read; other nodes' assignments never reach this stream.
    pub fn node_feed(
        &self,
        node_id: &str,
        from: u64,
    ) -> BoxStream<'static, Result<(u64, Bytes), ReadError>> {
        if !crate::ids::is_valid_token(node_id) {
            let error = ReadError::Unavailable(format!(
                "node id {node_id:?} is not valid (1 to 64 of [A-Za-z0-9_-]); no feed to follow"
            ));
            return futures::stream::once(async move { Err(error) }).boxed();
        }
        let Some(nodes) = self.nodes.clone() else {
            let error = ReadError::Storage(READ_ONLY.to_owned());
            return futures::stream::once(async move { Err(error) }).boxed();
        };
        let connects = self.context.client().statistics();
        let follower = Follower::new(nodes, connects, Some(format!("{NODE_SUBJECT_PREFIX}{node_id}")), from);
        futures::stream::unfold(follower, Follower::next_event)
            .map(|item| item.map(|event| (event.seq.0, event.payload)))
            .boxed()
    }

    /// After a refused expectation: whether this very append (same subject, expectation and
    /// key) was stored before, and at which sequence. A single (non-clustered) nats-server
    /// 2.15.1 checks `Nats-Expected-Last-Subject-Sequence` *before* `Nats-Msg-Id`, so the
    /// retry of a stored append comes back as "wrong last sequence" rather than as a
    /// duplicate (a clustered stream dedupes first); the contract wants the duplicate on
    /// both. Such an append was stored right after the sequence it
    /// expected, so it is the subject's first event after that sequence: one read on the
    /// conflict path, from the stream leader (never a lagging replica). Any failure of that
    /// read reports the conflict, which is safe: the caller reloads and finds its request
    /// already applied.
    async fn stored_by_expected_append(
        &self,
        subject: &str,
        expected: Expected,
        actual: Option<u64>,
        message_id: &str,
    ) -> Option<u64> {
        let after = match expected {
            Expected::Any => return None,
            Expected::Empty => 0,
            Expected::LastSeq(seq) => seq.0,
        };
        // With the stored sequence known and not past the expectation, nothing of ours can be
        // there; unknown (10164), look.
        if actual.is_some_and(|actual| actual <= after) {
            return None;
        }
        // During a leader change the lookup itself can fail for a moment ("no responders",
        // a timeout): retry it briefly, since a wrongly reported conflict makes the caller
        // re-decide on a state that already holds its own append. "Not found" is an answer.
        let mut backoff = Duration::from_millis(READ_RETRY_BACKOFF_MIN_MS);
        let mut attempt = 1;
        let candidate = loop {
            match self.events.raw_message_builder().next_by_subject(subject.to_owned()).sequence(after + 1).send().await {
                Ok(candidate) => break candidate,
                Err(error) if attempt < READ_ATTEMPTS_MAX && !matches!(error.kind(), async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound) => {
                    tracing::debug!(%error, attempt, "looking up our own append failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(_) => return None,
            }
        };
        let stored_id = candidate.headers.get(header::NATS_MESSAGE_ID)?;
        (candidate.subject.as_str() == subject && stored_id.as_str() == message_id)
            .then_some(candidate.sequence)
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
                headers.insert(
                    header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    seq.0.to_string(),
                );
            }
        }
        let published = match &self.group_commit {
            Some(group) => group.publish(request.subject.clone(), headers, request.payload).await?,
            None => {
                publish(
                    &self.context,
                    self.stream_name(),
                    request.subject.clone(),
                    headers,
                    request.payload,
                )
                .await?
            }
        };
        Ok(match published {
            Published::Acked(ack) => Ok(Appended {
                seq: Seq(ack.sequence),
                duplicate: ack.duplicate,
            }),
            Published::WrongLastSequence(actual) => {
                let actual = actual.filter(|seq| *seq > 0);
                if let Some(original) = self
                    .stored_by_expected_append(
                        &request.subject,
                        request.expected,
                        actual,
                        &message_id,
                    )
                    .await
                {
                    return Ok(Ok(Appended {
                        seq: Seq(original),
                        duplicate: true,
                    }));
                }
                Err(VersionConflict {
                    subject: request.subject,
                    expected: request.expected,
                    actual: actual.map(Seq),
                })
            }
        })
    }

    async fn read_subject(&self, subject: &str) -> Result<Vec<StoredEvent>, ReadError> {
        // Nothing is ever stored on an invalid subject; and a wildcard must not reach the
        // server, where it would match other subjects.
        if !super::is_valid_subject(subject) {
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        let mut next = 1u64;
        loop {
            let batch = self.direct.next_batch(subject, next).await?;
            for message in batch.messages {
                if message.seq.0 < next || message.subject != subject {
                    return Err(ReadError::Corrupt {
                        seq: message.seq,
                        reason: format!(
                            "asked for {subject} at or after {next}, got {} at {}",
                            message.subject, message.seq
                        ),
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

    fn follow(&self, from: Seq) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
        let follower = Follower::new(self.events.clone(), self.context.client().statistics(), None, from.0);
        futures::stream::unfold(follower, Follower::next_event).boxed()
    }
}

/// Attempts of one `read_from` while the stream is unavailable.
const READ_ATTEMPTS_MAX: u32 = 6;
/// The first wait between those attempts (doubled each time).
const READ_RETRY_BACKOFF_MIN_MS: u64 = 200;

impl JetStreamLog {
    async fn read_from_once(&self, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, ReadError> {
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
        let consumer = create_consumer(&self.events, None, first)
            .await
            .map_err(|error| ReadError::Unavailable(error.to_string()))?;
        let read = read_range(&consumer, first, end).await;
        // Best effort: an ephemeral consumer left behind expires after CONSUMER_INACTIVE_MS.
        if let Err(error) = self
            .events
            .delete_consumer(&consumer.cached_info().name)
            .await
        {
            tracing::debug!(%error, "could not delete a read consumer; it expires on its own");
        }
        read
    }

    async fn last_seq_once(&self) -> Result<Seq, ReadError> {
        let info = self
            .events
            .get_info()
            .await
            .map_err(|error| ReadError::Unavailable(format!("stream info: {error}")))?;
        Ok(Seq(info.state.last_sequence))
    }
}

// ---------------------------------------------------------------------------------------
// Connecting and the streams.

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .name("vouchsafe")
        .connection_timeout(Duration::from_millis(CONNECTION_TIMEOUT_MS))
        .request_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
        .ping_interval(Duration::from_millis(PING_INTERVAL_MS))
        .client_capacity(CLIENT_COMMANDS_QUEUED_MAX)
        // A server process keeps trying; each request on the connection stays bounded.
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let step = RECONNECT_DELAY_STEP_MS.saturating_mul(attempts as u64);
            Duration::from_millis(step.min(RECONNECT_DELAY_MAX_MS))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connection established"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("nats connection lost; reconnecting")
                }
                other => tracing::warn!(event = %other, "nats connection event"),
            }
        })
}

/// Checks the URL, connects, checks the server (JetStream on, version) and builds the
/// JetStream context; answers arrive on `inbox_prefix` (async-nats' `_INBOX` when `None`).
async fn connect_context(url: &str, inbox_prefix: Option<&str>) -> Result<Context, ConnectError> {
    let shown = redact_url(url);
    let addresses = url
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<ServerAddr>()
                .map_err(|error| ConnectError::InvalidUrl {
                    url: redact_url(part),
                    reason: error.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addresses.is_empty() {
        return Err(ConnectError::InvalidUrl {
            url: shown,
            reason: "no server given".to_owned(),
        });
    }
    let credentials = url_credentials(&addresses).map_err(|reason| ConnectError::InvalidUrl {
        url: shown.clone(),
        reason,
    })?;
    let mut options = connect_options();
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    match credentials {
        Some((user, Some(password))) => options = options.user_and_password(user, password),
        Some((token, None)) => options = options.token(token),
        None => {}
    }
    let client = options
        .connect(addresses)
        .await
        .map_err(|error| ConnectError::Unreachable {
            url: shown.clone(),
            reason: error.to_string(),
        })?;
    let info = client.server_info();
    if !info.jetstream {
        return Err(ConnectError::JetStreamDisabled { url: shown });
    }
    match parse_server_version(&info.version) {
        Some(version) if version >= NATS_SERVER_MIN => {}
        _ => {
            return Err(ConnectError::ServerTooOld {
                url: shown,
                found: info.version.clone(),
            });
        }
    }
    Ok(ContextBuilder::new()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .ack_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .max_ack_inflight(APPENDS_IN_FLIGHT_MAX)
        .backpressure_on_inflight(true)
        .build(client))
}

/// The credentials in the servers' URLs, percent-decoded: `(user, Some(password))` for
/// `user:password@`, `(token, None)` for a bare `token@`. Every server that names some must
/// name the same. The reason for a refusal never shows them.
fn url_credentials(addresses: &[ServerAddr]) -> Result<Option<(String, Option<String>)>, String> {
    let decode = |text: &str| {
        percent_decode(text)
            .ok_or_else(|| "the credentials are not valid percent-encoded UTF-8".to_owned())
    };
    let mut found = None;
    for address in addresses {
        let Some(user) = address.username() else {
            continue;
        };
        let credentials = (decode(user)?, address.password().map(decode).transpose()?);
        match &found {
            Some(previous) if *previous != credentials => {
                return Err(
                    "the servers' URLs carry different credentials; give every server the same"
                        .to_owned(),
                );
            }
            _ => found = Some(credentials),
        }
    }
    Ok(found)
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The settings vouchsafe requires of a stream, passed explicitly rather than relying on
/// server defaults.
fn required_config(name: &str, subjects: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        description: Some(format!(
            "vouchsafe stream of record ({subjects}); events are immutable"
        )),
        subjects: vec![subjects.to_owned()],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        num_replicas: replicas,
        // No limits, and a full stream refuses new events rather than dropping old ones.
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        max_age: Duration::ZERO,
        max_consumers: -1,
        discard: DiscardPolicy::New,
        max_message_size: i32::try_from(MESSAGE_BYTES_MAX)
            .expect("MESSAGE_BYTES_MAX is a few hundred KiB"),
        duplicate_window: Duration::from_millis(DUPLICATE_WINDOW_MS),
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        allow_direct: true,
        persist_mode: Some(PersistenceMode::Default),
        ..Default::default()
    }
}

/// Gets the stream, creating it if it is missing, and refuses one weaker than `required`.
async fn ensure_stream(
    context: &Context,
    required: stream::Config,
) -> Result<stream::Stream, ConnectError> {
    let name = required.name.clone();
    let stream = match context.get_stream(&name).await {
        Ok(stream) => stream,
        Err(error) if is_stream_not_found(&error) => {
            match context.create_stream(required.clone()).await {
                Ok(stream) => stream,
                Err(error) => match context.get_stream(&name).await {
                    // Another process created it meanwhile: verify theirs.
                    Ok(stream) => stream,
                    Err(_) => {
                        return Err(ConnectError::CreateStream {
                            stream: name,
                            subjects: required.subjects.join(","),
                            reason: error.to_string(),
                        });
                    }
                },
            }
        }
        Err(error) => return Err(stream_info_error(&name, &error)),
    };
    verified(stream, &required)
}

/// The stream, unless it is weaker than `required`.
fn verified(
    stream: stream::Stream,
    required: &stream::Config,
) -> Result<stream::Stream, ConnectError> {
    let differences = weaker_settings(&stream.cached_info().config, required);
    if differences.is_empty() {
        Ok(stream)
    } else {
        Err(ConnectError::WeakerStream {
            stream: required.name.clone(),
            differences,
        })
    }
}

fn is_stream_not_found(error: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;
    matches!(error.kind(), GetStreamErrorKind::JetStream(inner) if inner.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn stream_info_error(
    name: &str,
    error: &async_nats::jetstream::context::GetStreamError,
) -> ConnectError {
    ConnectError::StreamInfo {
        stream: name.to_owned(),
        reason: error.to_string(),
    }
}

/// Every setting of `found` that is weaker than `required`, described for the operator.
/// Stronger settings (more replicas, a longer duplicate window, larger messages) pass.
pub fn weaker_settings(found: &stream::Config, required: &stream::Config) -> Vec<String> {
    let mut differences = Vec::new();
    let mut differ = |setting: &str, found: String, required: String| {
        differences.push(format!("{setting} is {found} (required: {required})"));
    };
    if found.storage != StorageType::File {
        differ("storage", format!("{:?}", found.storage), "File".into());
    }
    if found.num_replicas < required.num_replicas {
        differ(
            "replicas",
            found.num_replicas.to_string(),
            format!("at least {}", required.num_replicas),
        );
    }
    if found.retention != RetentionPolicy::Limits {
        differ(
            "retention",
            format!("{:?}", found.retention),
            "Limits".into(),
        );
    }
    if !found.deny_delete {
        differ("deny_delete", "false".into(), "true".into());
    }
    if !found.deny_purge {
        differ("deny_purge", "false".into(), "true".into());
    }
    if found.allow_rollup {
        differ(
            "allow_rollup",
            "true".into(),
            "false (a rollup purges events)".into(),
        );
    }
    if found.discard != DiscardPolicy::New {
        differ(
            "discard",
            format!("{:?}", found.discard),
            "New (never drop old events)".into(),
        );
    }
    for (setting, value) in [
        ("max_msgs", found.max_messages),
        ("max_bytes", found.max_bytes),
        ("max_msgs_per_subject", found.max_messages_per_subject),
    ] {
        if value > 0 {
            differ(setting, value.to_string(), "unlimited".into());
        }
    }
    if !found.max_age.is_zero() {
        differ(
            "max_age",
            format!("{:?}", found.max_age),
            "unlimited".into(),
        );
    }
    if found.duplicate_window < required.duplicate_window {
        differ(
            "duplicate_window",
            format!("{:?}", found.duplicate_window),
            format!("at least {:?}", required.duplicate_window),
        );
    }
    if found.max_message_size > 0 && found.max_message_size < required.max_message_size {
        differ(
            "max_msg_size",
            found.max_message_size.to_string(),
            format!("at least {}", required.max_message_size),
        );
    }
    if !found.allow_direct {
        differ("allow_direct", "false".into(), "true".into());
    }
    for subject in &required.subjects {
        if !found.subjects.contains(subject) {
            differ(
                "subjects",
                format!("{:?}", found.subjects),
                format!("to include {subject}"),
            );
        }
    }
    if found.sealed {
        differ("sealed", "true".into(), "false".into());
    }
    if found.no_ack {
        differ("no_ack", "true".into(), "false".into());
    }
    if found.mirror.is_some() {
        differ(
            "mirror",
            "set".into(),
            "none (a mirror cannot be appended to)".into(),
        );
    }
    if matches!(found.persist_mode, Some(PersistenceMode::Async)) {
        differ(
            "persist_mode",
            "async".into(),
            "default (acknowledge after the write)".into(),
        );
    }
    if found.allow_message_ttl {
        differ(
            "allow_msg_ttl",
            "true".into(),
            "false (a TTL deletes events)".into(),
        );
    }
    if found.subject_delete_marker_ttl.is_some() {
        differ("subject_delete_marker_ttl", "set".into(), "none".into());
    }
    if found.allow_message_counter {
        differ("allow_msg_counter", "true".into(), "false".into());
    }
    differences
}

fn is_valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `2.15.1` or `2.12.3-RC.1` into (2, 15, 1).
fn parse_server_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(str::parse::<u32>);
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

/// The URL with any user info replaced, fit for messages and logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let part = part.trim();
            let (scheme, rest) = match part.find("://") {
                Some(index) => part.split_at(index + 3),
                None => ("", part),
            };
            match rest.rfind('@') {
                Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
                None => part.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------
// Appending.

fn check_payload(payload: &Bytes) -> Result<(), AppendError> {
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(AppendError::TooLarge {
            size: payload.len(),
            max: PAYLOAD_BYTES_MAX,
        });
    }
    Ok(())
}

/// A header value carries visible ASCII only. Keys made of it (the derived keys are hex)
/// travel as they are; any other byte, and '%', is percent-encoded, so distinct keys stay
/// distinct. The empty key becomes a lone "%", which no encoding produces.
fn encode_idempotency_key(key: &str) -> String {
    if key.is_empty() {
        return "%".to_owned();
    }
    let plain = |b: u8| (0x21..=0x7e).contains(&b) && b != b'%';
    if key.bytes().all(plain) {
        return key.to_owned();
    }
    let mut encoded = String::with_capacity(key.len() * 3);
    for b in key.bytes() {
        if plain(b) {
            encoded.push(char::from(b));
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    encoded
}

enum Published {
    Acked(PublishAck),
    /// The expectation failed; the subject's last sequence as the server reported it.
    WrongLastSequence(Option<u64>),
}

/// One publish, answered from its ack. Retries (same headers, hence same id and
/// expectation) when the outcome is unknown or no stream answered.
async fn publish(
    context: &Context,
    stream: &str,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<Published, AppendError> {
    // Whether some attempt may have been stored: then the final answer is Unknown.
    let mut unknown: Option<String> = None;
    let mut unavailable = String::new();
    for attempt in 1..=APPEND_ATTEMPTS_MAX {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(
                APPEND_RETRY_DELAY_MS * u64::from(attempt - 1),
            ))
            .await;
        }
        let ack = match context
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
        {
            // The ack future is awaited right here, by the call that answers the caller.
            Ok(ack_future) => ack_future.await,
            Err(error) => Err(error),
        };
        match ack {
            Ok(ack) if ack.stream == stream => return Ok(Published::Acked(ack)),
            Ok(ack) => {
                return Err(AppendError::Storage(format!(
                    "{subject} was stored in stream {} instead of {stream}; check the server's stream subjects",
                    ack.stream
                )));
            }
            Err(error) => match error.kind() {
                PublishErrorKind::WrongLastSequence => {
                    return Ok(Published::WrongLastSequence(parse_wrong_last_sequence(
                        &error.to_string(),
                    )));
                }
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                    unknown = Some(error.to_string());
                }
                // No responders: nothing received the message, so nothing was stored.
                PublishErrorKind::StreamNotFound => unavailable = error.to_string(),
                PublishErrorKind::MaxPayloadExceeded => {
                    return Err(AppendError::Storage(format!(
                        "the server refused the message size ({error}); raise max_payload to at least {MESSAGE_BYTES_MAX} bytes"
                    )));
                }
                PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::MaxAckPending
                | PublishErrorKind::Other => {
                    let text = error.to_string();
                    // A replicated stream reports a lost race as 10164, "wrong last
                    // sequence" without the stored sequence; async-nats knows only 10071.
                    if is_wrong_last_sequence_without_seq(&text) {
                        return Ok(Published::WrongLastSequence(None));
                    }
                    // 503: JetStream (or the stream's leader) is not available right now;
                    // the message was refused, not stored.
                    if text.contains("code 503") {
                        unavailable = text;
                    } else {
                        return Err(AppendError::Storage(text));
                    }
                }
            },
        }
    }
    match unknown {
        Some(reason) => Err(AppendError::Unknown(format!(
            "{reason} after {APPEND_ATTEMPTS_MAX} attempts"
        ))),
        None => Err(AppendError::Unavailable(format!(
            "{unavailable} after {APPEND_ATTEMPTS_MAX} attempts; is JetStream up and the stream present?"
        ))),
    }
}

/// nats-server's `JSStreamWrongLastSequenceConstantErr` (error code 10164): the expected
/// last subject sequence did not hold, but the server does not say what it is (a clustered
/// stream refusing while another message on the subject is in flight).
fn is_wrong_last_sequence_without_seq(text: &str) -> bool {
    text.contains("error code 10164")
}

/// The server reports "wrong last sequence: N"; N is the subject's last sequence.
fn parse_wrong_last_sequence(text: &str) -> Option<u64> {
    // async-nats repeats the kind before the server's text ("wrong last sequence: wrong
    // last sequence: 3 (code 400, ...)"): take the occurrence followed by digits.
    const MARKER: &str = "wrong last sequence: ";
    text.match_indices(MARKER).find_map(|(index, _)| {
        let digits: String = text[index + MARKER.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

// ---------------------------------------------------------------------------------------
// Reading.

async fn start_direct(context: &Context, stream: &str) -> Result<direct::DirectBatches, ConnectError> {
    direct::DirectBatches::start(context.client(), stream, Duration::from_millis(REQUEST_TIMEOUT_MS))
        .await
        .map_err(|error| ConnectError::StreamInfo { stream: stream.to_owned(), reason: format!("cannot subscribe to this connection's inbox for direct gets: {error}") })
}

/// An ephemeral pull consumer from stream sequence `from`, optionally on one subject: no
/// acks, in memory, one replica (on the stream leader), removed by the server once unused.
async fn create_consumer(
    stream: &stream::Stream,
    filter: Option<&str>,
    from: u64,
) -> Result<consumer::Consumer<pull::Config>, async_nats::jetstream::stream::ConsumerError> {
    stream
        .create_consumer(pull::Config {
            durable_name: None,
            name: None,
            description: Some("vouchsafe reader".to_owned()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
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
async fn pull_messages(
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
async fn read_range(
    consumer: &consumer::Consumer<pull::Config>,
    first: u64,
    end: u64,
) -> Result<Vec<StoredEvent>, ReadError> {
    let count = usize::try_from(end - first + 1).unwrap_or(usize::MAX);
    let mut messages = pull_messages(consumer, count)
        .await
        .map_err(|error| ReadError::Unavailable(format!("pull: {error}")))?;
    let mut events = Vec::with_capacity(count.min(READ_RANGE_RESERVE_EVENTS_MAX));
    let mut next = first;
    while next <= end {
        let message = tokio::time::timeout(
            Duration::from_millis(READ_EVENT_WAIT_MS),
            messages.next(),
        )
        .await
        .map_err(|_| {
            ReadError::Unavailable(format!(
                "no event {next} within {READ_EVENT_WAIT_MS} ms although the stream holds it"
            ))
        })?;
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => return Err(ReadError::Unavailable(format!("pull: {error}"))),
            None => {
                return Err(ReadError::Unavailable(
                    "the pull consumer ended early".to_owned(),
                ));
            }
        };
        let event = stored_event(&message)?;
        if event.seq.0 != next {
            return Err(ReadError::Corrupt {
                seq: Seq(next),
                reason: format!(
                    "expected sequence {next}, the consumer delivered {}",
                    event.seq
                ),
            });
        }
        next += 1;
        events.push(event);
    }
    Ok(events)
}

fn stored_event(message: &async_nats::jetstream::Message) -> Result<StoredEvent, ReadError> {
    let info = message
        .info()
        .map_err(|error| ReadError::Storage(format!("malformed delivery: {error}")))?;
    Ok(StoredEvent {
        seq: Seq(info.stream_sequence),
        subject: message.subject.to_string(),
        payload: message.payload.clone(),
    })
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
struct GroupCommit {
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
    fn new(context: Context, stream: String) -> Self {
        GroupCommit { context, stream, queue: std::sync::Mutex::new(GroupQueue::default()), stats: std::sync::Mutex::new(GroupCommitStats::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupQueue> {
        // Only pushed to and drained: a panic elsewhere leaves it consistent.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn publish(self: &std::sync::Arc<Self>, subject: String, headers: HeaderMap, payload: Bytes) -> Result<Published, AppendError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push_back(GroupMember { subject, headers, payload, reply });
            !std::mem::replace(&mut queue.draining, true)
        };
        if start {
            tokio::spawn(std::sync::Arc::clone(self).drain());
        }
        answer.await.map_err(|_| AppendError::Unknown("the group commit task stopped before answering".to_owned()))?
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
                let request = async_nats::Request::new().headers(headers).payload(member.payload.clone()).timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)));
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
struct Follower {
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
}

impl Follower {
    fn new(stream: stream::Stream, connection: std::sync::Arc<async_nats::Statistics>, filter: Option<String>, from: u64) -> Follower {
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
        }
    }

    async fn next_event(mut self) -> Option<(Result<StoredEvent, ReadError>, Follower)> {
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
                tracing::warn!(
                    expected = self.consumer_seq + 1,
                    delivered = consumer_seq,
                    "follow: the consumer skipped a delivery; recreating it"
                );
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
                        reason: format!(
                            "consumers skip from {} to {stream_seq} although the stream denies deletes",
                            self.next
                        ),
                    };
                    return Some((Err(error), self));
                }
                tracing::warn!(
                    expected = self.next,
                    delivered = stream_seq,
                    "follow: gap in stream sequences; recreating the consumer"
                );
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
            let event = StoredEvent {
                seq: Seq(stream_seq),
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
            };
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
                    Ok(consumer) => pull_messages(&consumer, PULL_BATCH_EVENTS_MAX)
                        .await
                        .map_err(|error| error.to_string()),
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
                        return Err(ReadError::Unavailable(format!(
                            "cannot follow from {} for {FOLLOW_OUTAGE_MAX_MS} ms: {reason}",
                            self.next
                        )));
                    }
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(%reason, next = self.next, "follow: cannot create a consumer; retrying");
                    let pause = (RECONNECT_DELAY_STEP_MS * u64::from(self.failures))
                        .min(FOLLOW_RETRY_DELAY_MAX_MS);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    }

    /// Whether the last event yielded is still in the stream at its sequence, byte for
    /// byte (struct docs); nothing to check before the first.
    async fn check_last(&self) -> Result<(), CheckFailed> {
        let Some((seq, subject, payload)) = &self.last else { return Ok(()) };
        let seq = *seq;
        let diverged = |reason: String| {
            CheckFailed::Diverged(ReadError::Diverged { seq: Seq(seq), reason })
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_servers_wrong_last_sequence() {
        assert_eq!(
            parse_wrong_last_sequence(
                "wrong last sequence: wrong last sequence: 3 (code 400, error code 10071)"
            ),
            Some(3)
        );
        assert_eq!(parse_wrong_last_sequence("wrong last sequence: 0"), Some(0));
        assert!(is_wrong_last_sequence_without_seq("publish failed: wrong last sequence (code 400, error code 10164)"));
        assert!(!is_wrong_last_sequence_without_seq("wrong last sequence: 3 (code 400, error code 10071)"));
        assert!(!is_wrong_last_sequence_without_seq("insufficient resources (code 503, error code 10023)"));
        assert_eq!(parse_wrong_last_sequence("wrong last sequence"), None);
    }

    #[test]
    fn keys_are_encoded_injectively_for_the_header() {
        assert_eq!(encode_idempotency_key("abc-123"), "abc-123");
        assert_eq!(encode_idempotency_key(""), "%");
        assert_eq!(encode_idempotency_key("a b"), "a%20b");
        assert_eq!(encode_idempotency_key("a%20b"), "a%2520b");
        assert_eq!(encode_idempotency_key("x\r\ny"), "x%0D%0Ay");
        assert_eq!(encode_idempotency_key("ä"), "%C3%A4");
    }

    #[test]
    fn credentials_never_show_in_urls() {
        assert_eq!(
            redact_url("nats://user:secret@10.0.0.1:4222, nats://10.0.0.2:4222"),
            "nats://***@10.0.0.1:4222,nats://10.0.0.2:4222"
        );
        assert_eq!(redact_url("tok@host:4222"), "***@host:4222");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[test]
    fn credentials_are_taken_from_the_urls() {
        let addresses = |url: &str| -> Vec<ServerAddr> {
            url.split(',')
                .map(|part| part.parse().expect("a server address"))
                .collect()
        };
        let user = |user: &str, password: Option<&str>| {
            Ok(Some((user.to_owned(), password.map(str::to_owned))))
        };
        assert_eq!(
            url_credentials(&addresses("nats://127.0.0.1:4222")),
            Ok(None)
        );
        assert_eq!(
            url_credentials(&addresses("nats://auditor:s3cret@h1:4222,nats://h2:4222")),
            user("auditor", Some("s3cret"))
        );
        assert_eq!(
            url_credentials(&addresses("nats://a%40b:p%3Aw%25d@h1:4222")),
            user("a@b", Some("p:w%d"))
        );
        assert_eq!(
            url_credentials(&addresses("nats://tok@h1:4222")),
            user("tok", None)
        );
        assert_eq!(
            url_credentials(&addresses("nats://u:p@h1:4222,nats://u:p@h2:4222")),
            user("u", Some("p"))
        );
        let refused = url_credentials(&addresses("nats://u:p@h1:4222,nats://u:q@h2:4222"))
            .expect_err("different credentials");
        assert!(
            !refused.contains(":p") && !refused.contains(":q"),
            "{refused}"
        );
        assert!(url_credentials(&addresses("nats://u:%ff@h1:4222")).is_err());
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("50%"), None);
    }

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_server_version("v2.12.3-RC.1"), Some((2, 12, 3)));
        assert!(parse_server_version("2.12.1").expect("parses") < NATS_SERVER_MIN);
        assert_eq!(parse_server_version("dev"), None);
    }

    #[test]
    fn the_required_config_is_not_weaker_than_itself_and_each_weakening_is_named() {
        let required = required_config("VS", EVENT_SUBJECTS, 3);
        assert!(weaker_settings(&required, &required).is_empty());
        let stronger = stream::Config {
            num_replicas: 5,
            duplicate_window: Duration::from_secs(600),
            max_message_size: -1,
            ..required.clone()
        };
        assert!(weaker_settings(&stronger, &required).is_empty());
        let cases: Vec<(&str, stream::Config)> = vec![
            (
                "deny_delete",
                stream::Config {
                    deny_delete: false,
                    ..required.clone()
                },
            ),
            (
                "deny_purge",
                stream::Config {
                    deny_purge: false,
                    ..required.clone()
                },
            ),
            (
                "storage",
                stream::Config {
                    storage: StorageType::Memory,
                    ..required.clone()
                },
            ),
            (
                "replicas",
                stream::Config {
                    num_replicas: 1,
                    ..required.clone()
                },
            ),
            (
                "max_msgs",
                stream::Config {
                    max_messages: 10,
                    ..required.clone()
                },
            ),
            (
                "max_age",
                stream::Config {
                    max_age: Duration::from_secs(60),
                    ..required.clone()
                },
            ),
            (
                "discard",
                stream::Config {
                    discard: DiscardPolicy::Old,
                    ..required.clone()
                },
            ),
            (
                "duplicate_window",
                stream::Config {
                    duplicate_window: Duration::from_secs(1),
                    ..required.clone()
                },
            ),
            (
                "allow_direct",
                stream::Config {
                    allow_direct: false,
                    ..required.clone()
                },
            ),
            (
                "retention",
                stream::Config {
                    retention: RetentionPolicy::WorkQueue,
                    ..required.clone()
                },
            ),
            (
                "persist_mode",
                stream::Config {
                    persist_mode: Some(PersistenceMode::Async),
                    ..required.clone()
                },
            ),
            (
                "subjects",
                stream::Config {
                    subjects: vec!["vs.voucher.>".into()],
                    ..required.clone()
                },
            ),
        ];
        for (setting, found) in cases {
            let differences = weaker_settings(&found, &required);
            assert_eq!(differences.len(), 1, "{setting}: {differences:?}");
            assert!(
                differences[0].starts_with(setting),
                "{setting}: {differences:?}"
            );
        }
    }
}
