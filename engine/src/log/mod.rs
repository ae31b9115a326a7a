//! The event log abstraction: the stream of record, behind one small trait with two
//! backends (embedded sled here; JetStream in `jetstream`) that pass one shared
//! conformance suite (`conformance`, behind the `test-util` feature).
//!
//! The log knows subjects, sequences, idempotency keys and opaque payload bytes. It knows
//! nothing of the domain: encoding is `crate::wire`'s job.
//!
//! Semantics every backend guarantees (the conformance suite checks each):
//! - sequences start at 1 and are contiguous; an append acknowledged with `Seq(n)` is
//!   durable before the acknowledgement and is read back at `n` forever;
//! - `Expected` is checked against the last sequence stored on the same subject
//!   (JetStream's `Nats-Expected-Last-Subject-Sequence`); a mismatch is a `VersionConflict`
//!   and stores nothing;
//! - an append whose idempotency key was already stored (within the dedupe window; the
//!   embedded log never forgets) stores nothing and answers the original sequence with
//!   `duplicate = true`. Dedupe takes precedence over the expectation check, so a retried
//!   append whose first attempt succeeded is not a conflict. (A clustered nats-server
//!   checks in that order; a single nats-server 2.15 checks the expectation first, and the
//!   JetStream backend reconciles: after a refused expectation it looks for its own key.)
//! - reads return events in sequence order; `follow` yields every event from a sequence on,
//!   then waits for new ones, with no gap and no duplicate.

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod embedded;
pub mod jetstream;

use crate::ids::Seq;
use bytes::Bytes;
use futures::stream::BoxStream;

/// What the appender believes the subject's last sequence is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// No check.
    Any,
    /// The subject has no events yet.
    Empty,
    /// The subject's last event is at this sequence.
    LastSeq(Seq),
}

/// One append: a subject (`vs.<aggregate>.<id>`), the expectation, the idempotency key
/// (`Nats-Msg-Id`) and the encoded envelope.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub subject: String,
    pub expected: Expected,
    pub idempotency_key: String,
    pub payload: Bytes,
}

/// An acknowledged append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: Seq,
    /// The idempotency key was already stored; `seq` is the original's.
    pub duplicate: bool,
}

/// The subject moved on since the appender read it: reload and decide again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("version conflict on {subject}: expected {expected:?}, last stored {actual:?}")]
pub struct VersionConflict {
    pub subject: String,
    pub expected: Expected,
    /// The subject's last sequence when the append was refused, if the backend knows it.
    pub actual: Option<Seq>,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: Seq,
    pub subject: String,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("subject {0:?} is not valid for this log (tokens of [A-Za-z0-9_-], '.' separated, under `vs.`)")]
    InvalidSubject(String),
    #[error("payload of {size} bytes exceeds the log's limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// The append may or may not have been stored: retry with the same idempotency key. The
    /// source says why the outcome is unknown (no ack after the last attempt, a failed
    /// flush, a writer or task that stopped); each backend supplies its own typed cause, so
    /// the shared type names no backend's errors.
    #[error("append outcome unknown ({0}); retry with the same request id")]
    Unknown(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("event log storage failed: {0}")]
    Storage(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("event log storage failed: {0}")]
    Storage(String),
    #[error("stored record at sequence {seq} is corrupt: {reason}")]
    Corrupt { seq: Seq, reason: String },
    /// A `follow` found that the log no longer holds what it yielded at `seq` (a server
    /// came back from a crash without its last writes): whatever was built from the
    /// events yielded must be rebuilt from sequence 1.
    #[error("the stream went back under this reader: at sequence {seq}, {reason}; rebuild from sequence 1")]
    Diverged { seq: Seq, reason: String },
}

/// The stream of record.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends one event. Concurrent calls on different subjects are pipelined by the
    /// backend (group commit); the outer `Result` is for failures, the inner one for the
    /// expected race the caller handles by re-deciding.
    async fn append(&self, request: AppendRequest) -> Result<Result<Appended, VersionConflict>, AppendError>;

    /// All events of one subject, in order.
    async fn read_subject(&self, subject: &str) -> Result<Vec<StoredEvent>, ReadError>;

    /// Up to `limit` events with sequence >= `from`, in order.
    async fn read_from(&self, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, ReadError>;

    /// The last stored sequence (`Seq(0)` when empty).
    async fn last_seq(&self) -> Result<Seq, ReadError>;

    /// The sequence of the newest event on `subject` as the log's authority has it (`None`
    /// when it has none): never a lagging copy's answer, which `read_subject` may be (a
    /// JetStream replica answering a direct get). Checked before refusing on a state read.
    async fn subject_last_seq(&self, subject: &str) -> Result<Option<Seq>, ReadError> {
        Ok(self.read_subject(subject).await?.last().map(|stored| stored.seq))
    }

    /// Whether `read_subject` may answer from a copy that lags (a replicated JetStream
    /// stream's direct gets); readers that must see the newest state then confirm with
    /// `subject_last_seq`.
    fn reads_may_lag(&self) -> bool {
        false
    }

    /// Every event with sequence >= `from`, then each new one as it is appended.
    fn follow(&self, from: Seq) -> BoxStream<'static, Result<StoredEvent, ReadError>>;

    /// What engines sharing this log tell each other without recording it (node health):
    /// `None` for a log one process alone opens (the embedded log), where there is nobody
    /// to tell.
    fn gossip(&self) -> Option<std::sync::Arc<dyn Gossip>> {
        None
    }

    /// Leases of the jobs one engine alone runs at a time among those sharing this log
    /// (the sealer, the sweeper), each running out `ttl` after its last renewal: `None` for
    /// a log one process alone opens, whose engine runs every job.
    async fn job_leases(&self, ttl: std::time::Duration) -> Result<Option<std::sync::Arc<dyn JobLeases>>, ReadError> {
        let _ = ttl;
        Ok(None)
    }
}

/// Job leases (`EventLog::job_leases`): a job is held by one holder at a time, who renews
/// it by calling `hold` again within the ttl; once it ran out, the next caller takes it.
#[async_trait::async_trait]
pub trait JobLeases: Send + Sync + 'static {
    /// Whether `holder` holds job `name` now: renewed if it held it, taken if nobody does.
    async fn hold(&self, name: &str, holder: &str) -> Result<bool, ReadError>;
}

/// Messages between the engines sharing a log, not recorded and not ordered: what is lost
/// is sent again soon (a heartbeat), so delivery is at most once. Bounded in size by the
/// backend (`PAYLOAD_BYTES_MAX`).
#[async_trait::async_trait]
pub trait Gossip: Send + Sync + 'static {
    /// Sends `payload` on `topic` (a subject token) to every engine listening, this one too.
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), AppendError>;
    /// What arrives on `topic` from now on.
    async fn listen(&self, topic: &str) -> Result<BoxStream<'static, Vec<u8>>, ReadError>;
}

/// Maximum size of one event payload, in bytes (JetStream's default max_payload is 1 MiB;
/// events are far smaller: media content never travels in events).
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024;

/// Checks a subject: `vs.` followed by tokens of `[A-Za-z0-9_-]`, separated by dots.
pub fn is_valid_subject(subject: &str) -> bool {
    let Some(rest) = subject.strip_prefix("vs.") else { return false };
    !rest.is_empty()
        && subject.len() <= 256
        && rest.split('.').all(|token| !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

#[cfg(test)]
mod tests {
    use super::AppendError;

    /// Callers build an unknown outcome from plain text too (`"timeout".into()`, as the
    /// gateways' status mapping tests do); the message keeps its shape either way.
    #[test]
    fn an_unknown_outcome_names_its_cause_and_how_to_retry() {
        let error = AppendError::Unknown("timeout".into());
        assert_eq!(error.to_string(), "append outcome unknown (timeout); retry with the same request id");
        let source = std::error::Error::source(&error).expect("the cause is the source");
        assert_eq!(source.to_string(), "timeout");
    }
}
