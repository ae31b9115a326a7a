//! Previews: `Preview(media)` → `PreviewStarted(node)` → `PreviewEnded(played_ms)`.
//! Previews count as usage in rights reports (not royalty-bearing sales).
//!
//! A started preview holds a slot of its node until the node reports it ended, or until
//! its clip length plus a grace period has passed (`lapses_at`, decided at the start, with
//! the audited `preview.grace_ms`, by default `PREVIEW_GRACE_MS`):
//! then the sweeper ends it (`LapsePreview`), with nothing reported played, and the slot
//! comes back.

use super::catalog::Media;
use super::event::Event;
use super::{Aggregate, AggregateKind, Rejection, validate};
use crate::ids::{MediaId, MerchantId, Millis, NodeId, PreviewId};

/// How long after its clip's length a started preview may stay unreported before the
/// sweeper ends it: the player's start-up, pauses and the node's report. The default of
/// the audited `preview.grace_ms`.
pub const PREVIEW_GRACE_MS: u64 = 60_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preview {
    pub id: Option<PreviewId>,
    pub media_id: Option<MediaId>,
    pub node: Option<NodeId>,
    pub merchant: Option<MerchantId>,
    pub clip_ms: u64,
    pub lapses_at: Millis,
    pub ended: Option<u64>,
}

// Commands live for one decision; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum PreviewCommand {
    /// `node` is the allocator's choice.
    Start {
        preview: PreviewId,
        merchant: MerchantId,
        media_id: MediaId,
        media: Media,
        node: NodeId,
        /// The slot lease the allocator took the slot from (0: none).
        lease: u64,
        /// `preview.grace_ms` when the preview starts.
        grace_ms: u64,
    },
    End {
        node: NodeId,
        played_ms: u64,
    },
    /// The sweeper's end of a preview its node never reported, decided at `now`.
    Lapse,
}

impl Aggregate for Preview {
    type Command = PreviewCommand;
    const KIND: AggregateKind = AggregateKind::Preview;

    fn decide(&self, command: &PreviewCommand, now: Millis) -> Result<Vec<Event>, Rejection> {
        match command {
            PreviewCommand::Start { preview, merchant, media_id, media, node, lease, grace_ms } => {
                if self.id.is_some() {
                    return Err(Rejection::AlreadyExists { kind: "preview", id: preview.0.clone() });
                }
                validate::id("node_id", &node.0)?;
                if media.published.is_none() {
                    return Err(Rejection::NotFound { kind: "media", id: media_id.0.clone() });
                }
                if media.status != super::catalog::MediaStatus::Published {
                    return Err(Rejection::NotForSale(media_id.0.clone()));
                }
                let clip_ms = media.published.as_ref().map_or(0, |published| published.preview.duration_ms);
                let window = i64::try_from(clip_ms.saturating_add(*grace_ms)).unwrap_or(i64::MAX);
                Ok(vec![Event::PreviewStarted {
                    preview_id: preview.clone(),
                    media_id: media_id.clone(),
                    node_id: node.clone(),
                    merchant_id: merchant.clone(),
                    clip_ms,
                    lapses_at: Millis(now.0.saturating_add(window)),
                    lease: *lease,
                }])
            }
            PreviewCommand::End { node, played_ms } => {
                if self.id.is_none() {
                    return Err(Rejection::NotFound { kind: "preview", id: String::new() });
                }
                if self.node.as_ref() != Some(node) {
                    return Err(Rejection::NotYourAssignment);
                }
                if self.ended.is_some() {
                    return Err(Rejection::InvalidTransition { kind: "preview", command: "EndPreview", state: "Ended" });
                }
                Ok(vec![Event::PreviewEnded {
                    preview_id: self.id.clone().unwrap_or_else(|| PreviewId::new("")),
                    // A node cannot report more than the clip it was given.
                    played_ms: (*played_ms).min(self.clip_ms),
                    media_id: self.media_id.clone().unwrap_or_else(|| MediaId::new("")),
                    node_id: node.clone(),
                }])
            }
            PreviewCommand::Lapse => {
                let (Some(id), Some(node)) = (&self.id, &self.node) else {
                    return Err(Rejection::NotFound { kind: "preview", id: String::new() });
                };
                if self.ended.is_some() {
                    return Err(Rejection::InvalidTransition { kind: "preview", command: "LapsePreview", state: "Ended" });
                }
                if now <= self.lapses_at {
                    return Err(Rejection::NotExpired { expires_at: self.lapses_at });
                }
                Ok(vec![Event::PreviewEnded {
                    preview_id: id.clone(),
                    played_ms: 0,
                    media_id: self.media_id.clone().unwrap_or_else(|| MediaId::new("")),
                    node_id: node.clone(),
                }])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::PreviewStarted { preview_id, media_id, node_id, merchant_id, clip_ms, lapses_at, .. } => {
                self.lapses_at = *lapses_at;
                self.id = Some(preview_id.clone());
                self.media_id = Some(media_id.clone());
                self.node = Some(node_id.clone());
                self.merchant = Some(merchant_id.clone());
                self.clip_ms = *clip_ms;
            }
            Event::PreviewEnded { played_ms, .. } => self.ended = Some(*played_ms),
            _ => {}
        }
        self
    }

    fn command_name(command: &PreviewCommand) -> &'static str {
        match command {
            PreviewCommand::Start { .. } => "Preview",
            PreviewCommand::End { .. } => "EndPreview",
            PreviewCommand::Lapse => "LapsePreview",
        }
    }
}
