//! Appending: one publish answered from its ack, with bounded retries, the idempotency
//! key encoded for its header, and the reconciliation that answers a retried append as a
//! duplicate even where the server checks the expectation first.
//!
//! What does not live here: batching appends together (`group_commit`), and the node feed's
//! own publishes (`node_feed`, which reuses `publish`).
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
//! - Appends are pipelined: `append` holds no lock, and every ack future is awaited by the
//!   call that created it (a cancelled call hands it to async-nats' background acker).

use super::{
    APPEND_ATTEMPTS_MAX, APPEND_RETRY_DELAY_MS, AppendError, Expected, JetStreamLog, MESSAGE_BYTES_MAX, PAYLOAD_BYTES_MAX, READ_ATTEMPTS_MAX,
    READ_RETRY_BACKOFF_MIN_MS,
};
use async_nats::jetstream::context::{Context, PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, header};
use bytes::Bytes;
use std::fmt::Write as _;
use std::time::Duration;

/// Publishes of one append answered 10164 with nothing of ours found (a message on the
/// subject in flight), before that answer is taken for a conflict.
pub(super) const IN_FLIGHT_ATTEMPTS_MAX: u32 = 4;
/// The first pause before publishing again after such an answer; it doubles.
pub(super) const IN_FLIGHT_PAUSE_MIN_MS: u64 = 25;

impl JetStreamLog {
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
    pub(super) async fn stored_by_expected_append(&self, subject: &str, expected: Expected, actual: Option<u64>, message_id: &str) -> Option<u64> {
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
        (candidate.subject.as_str() == subject && stored_id.as_str() == message_id).then_some(candidate.sequence)
    }
}

pub(super) fn check_payload(payload: &Bytes) -> Result<(), AppendError> {
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(AppendError::TooLarge { size: payload.len(), max: PAYLOAD_BYTES_MAX });
    }
    Ok(())
}

/// A header value carries visible ASCII only. Keys made of it (the derived keys are hex)
/// travel as they are; any other byte, and '%', is percent-encoded, so distinct keys stay
/// distinct. The empty key becomes a lone "%", which no encoding produces.
pub(super) fn encode_idempotency_key(key: &str) -> String {
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

pub(super) enum Published {
    Acked(PublishAck),
    /// The expectation failed; the subject's last sequence as the server reported it.
    WrongLastSequence(Option<u64>),
}

/// One publish, answered from its ack. Retries (same headers, hence same id and
/// expectation) when the outcome is unknown or no stream answered.
pub(super) async fn publish(context: &Context, stream: &str, subject: String, headers: HeaderMap, payload: Bytes) -> Result<Published, AppendError> {
    // Whether some attempt may have been stored: then the final answer is Unknown.
    let mut unknown: Option<PublishError> = None;
    let mut unavailable = String::new();
    for attempt in 1..=APPEND_ATTEMPTS_MAX {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(APPEND_RETRY_DELAY_MS * u64::from(attempt - 1))).await;
        }
        let ack = match context.publish_with_headers(subject.clone(), headers.clone(), payload.clone()).await {
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
                    return Ok(Published::WrongLastSequence(parse_wrong_last_sequence(&error.to_string())));
                }
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                    unknown = Some(error);
                }
                // No responders: nothing received the message, so nothing was stored.
                PublishErrorKind::StreamNotFound => unavailable = error.to_string(),
                PublishErrorKind::MaxPayloadExceeded => {
                    return Err(AppendError::Storage(format!(
                        "the server refused the message size ({error}); raise max_payload to at least {MESSAGE_BYTES_MAX} bytes"
                    )));
                }
                PublishErrorKind::WrongLastMessageId | PublishErrorKind::MaxAckPending | PublishErrorKind::Other => {
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
        Some(error) => Err(AppendError::Unknown(Box::new(NoAck { attempts: APPEND_ATTEMPTS_MAX, source: error }))),
        None => Err(AppendError::Unavailable(format!("{unavailable} after {APPEND_ATTEMPTS_MAX} attempts; is JetStream up and the stream present?"))),
    }
}

/// Why a publish's outcome is unknown: its last attempt got no ack (a timeout or a lost
/// connection), so the server may have stored it; the source is async-nats' error.
#[derive(Debug, thiserror::Error)]
#[error("{source} after {attempts} attempts")]
struct NoAck {
    attempts: u32,
    #[source]
    source: PublishError,
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
        let digits: String = text[index + MARKER.len()..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_servers_wrong_last_sequence() {
        assert_eq!(parse_wrong_last_sequence("wrong last sequence: wrong last sequence: 3 (code 400, error code 10071)"), Some(3));
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
}
