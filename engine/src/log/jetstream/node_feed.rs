//! The node feed: assignments republished from the primary stream to one stream subject
//! per delivery node (`vsn.<node_id>`), where the dispatcher resumes and each node follows
//! its own.
//!
//! What does not live here: deciding which node gets what (the dispatcher, in gateways),
//! who may read which feed (NATS permissions), and the follow machinery itself (`follow`).

use super::append::{Published, check_payload, publish};
use super::follow::Follower;
use super::{AppendError, Appended, JetStreamLog, NODE_SUBJECT_PREFIX, READ_ONLY, ReadError};
use crate::ids::Seq;
use async_nats::{HeaderMap, header};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};

impl JetStreamLog {
    /// Republishes an assignment (a `VoucherIssued` at `source_seq` of the primary stream)
    /// to node `node_id`'s feed, `vsn.<node_id>`. `Nats-Msg-Id` is the source sequence, so
    /// republishing the same source event inside the duplicate window stores nothing and
    /// answers the original feed sequence with `duplicate = true`. Beyond the window (a feed
    /// rebuilt later) it is stored again: nodes treat assignments idempotently.
    pub async fn publish_assignment(&self, node_id: &str, source_seq: Seq, payload: Bytes) -> Result<Appended, AppendError> {
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
            Published::Acked(ack) => Ok(Appended { seq: Seq(ack.sequence), duplicate: ack.duplicate }),
            // We never send an expectation on the feed.
            Published::WrongLastSequence(_) => {
                Err(AppendError::Storage(format!("the server refused an assignment on {subject} for an expectation it was not sent")))
            }
        }
    }

    /// The source sequence of the newest assignment on the node feed (its `Nats-Msg-Id`),
    /// or `Seq(0)` when the feed is empty: where a restarted dispatcher resumes. Read from
    /// the leader (`get_raw_message`), never a lagging replica.
    pub async fn last_dispatched_source_seq(&self) -> Result<Seq, ReadError> {
        let mut nodes = self.nodes.clone().ok_or_else(|| ReadError::Storage(READ_ONLY.to_owned()))?;
        let last = nodes.info().await.map_err(|error| ReadError::Unavailable(format!("node feed info: {error}")))?.state.last_sequence;
        if last == 0 {
            return Ok(Seq(0));
        }
        let message = nodes.get_raw_message(last).await.map_err(|error| ReadError::Unavailable(format!("node feed message {last}: {error}")))?;
        let id = message.headers.get(header::NATS_MESSAGE_ID).map(|value| value.as_str().to_string()).unwrap_or_default();
        id.parse::<u64>()
            .map(Seq)
            .map_err(|_| ReadError::Corrupt { seq: Seq(last), reason: format!("the node feed message has Nats-Msg-Id {id:?}, not a source sequence") })
    }

    /// Node `node_id`'s assignments from feed sequence `from` on (1 = the start), then each
    /// new one: `(feed sequence, payload)`, in order, without duplicates. Only
    /// `vsn.<node_id>` is read; other nodes' assignments never reach this stream.
    pub fn node_feed(&self, node_id: &str, from: u64) -> BoxStream<'static, Result<(u64, Bytes), ReadError>> {
        if !crate::ids::is_valid_token(node_id) {
            let error = ReadError::Unavailable(format!("node id {node_id:?} is not valid (1 to 64 of [A-Za-z0-9_-]); no feed to follow"));
            return futures::stream::once(async move { Err(error) }).boxed();
        }
        let Some(nodes) = self.nodes.clone() else {
            let error = ReadError::Storage(READ_ONLY.to_owned());
            return futures::stream::once(async move { Err(error) }).boxed();
        };
        let connects = self.context.client().statistics();
        let follower = Follower::new(nodes, connects, Some(format!("{NODE_SUBJECT_PREFIX}{node_id}")), from);
        futures::stream::unfold(follower, Follower::next_event).map(|item| item.map(|event| (event.seq.0, event.payload))).boxed()
    }
}
