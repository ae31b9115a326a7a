//! The dispatcher: a projection of the primary stream onto the JetStream node feeds. Each
//! `VoucherIssued` and `PreviewStarted` is republished, with its original envelope bytes,
//! to `vsn.<node_id>` with `Nats-Msg-Id` = its source sequence (DESIGN.md, Subjects and
//! streams), so a node (or a NATS-native consumer with permissions on its own subject
//! only) sees exactly its own assignments.
//!
//! Restartable: it resumes after the source sequence of the feed's newest message; a
//! republish inside the duplicate window is deduped by the server. Rebuildable: with the
//! feed stream deleted it starts from sequence 1. Nodes treat assignments idempotently
//! (beyond the duplicate window a rebuilt feed may repeat one).

use engine::domain::Event;
use engine::ids::{NodeId, Seq};
use engine::log::jetstream::JetStreamLog;
use engine::log::{EventLog, StoredEvent};
use futures::StreamExt;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("reading the stream failed: {0}")]
    Read(#[from] engine::log::ReadError),
    #[error("event {seq} does not decode: {reason}")]
    Decode { seq: u64, reason: String },
    #[error("publishing to the node feed failed: {0}")]
    Publish(#[from] engine::log::AppendError),
}

/// The node an event assigns work to, if it is an assignment.
pub fn assigned_node(event: &Event) -> Option<&NodeId> {
    match event {
        Event::VoucherIssued { node_id, .. } | Event::PreviewStarted { node_id, .. } => Some(node_id),
        _ => None,
    }
}

/// Republishes one stored event if it is an assignment; `true` when it was one.
pub async fn dispatch_one(feed: &JetStreamLog, stored: &StoredEvent) -> Result<bool, DispatchError> {
    // Assignments live on voucher and preview subjects; skip the rest without decoding.
    if !(stored.subject.starts_with("vs.voucher.") || stored.subject.starts_with("vs.preview.")) {
        return Ok(false);
    }
    let recorded = engine::wire::decode(&stored.payload).map_err(|error| DispatchError::Decode { seq: stored.seq.0, reason: error.to_string() })?;
    let Some(node) = assigned_node(&recorded.event) else { return Ok(false) };
    feed.publish_assignment(node.as_str(), stored.seq, stored.payload.clone()).await?;
    Ok(true)
}

/// Follows `source` from after the feed's newest assignment until the stream ends or
/// `shutdown` fires. Returns how many assignments it published.
pub async fn run(source: Arc<dyn EventLog>, feed: Arc<JetStreamLog>, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Result<u64, DispatchError> {
    let resume = feed.last_dispatched_source_seq().await?;
    let mut events = source.follow(Seq(resume.0 + 1));
    let mut published = 0;
    loop {
        let next = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(published),
            next = events.next() => next,
        };
        let Some(stored) = next else { return Ok(published) };
        if dispatch_one(&feed, &stored?).await? {
            published += 1;
        }
    }
}
