//! The media aggregate: what a publisher published, its price and terms, and whether it
//! is still for sale.

use super::event::{Event, MediaPublished, RoyaltyTerms};
use super::{Aggregate, AggregateKind, Rejection, validate};
use crate::ids::{MediaId, Millis};

/// Longest title, artist or author name accepted, in characters.
pub const TEXT_CHARS_MAX: usize = 512;
/// Most authors or renditions on one media.
pub const LIST_ITEMS_MAX: usize = 32;
/// Largest price accepted, in minor units (guards sums against overflow).
pub const PRICE_MINOR_MAX: u64 = 1_000_000_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MediaStatus {
    #[default]
    Unknown,
    Published,
    Withdrawn,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Media {
    pub status: MediaStatus,
    pub published: Option<MediaPublished>,
    pub price_minor: u64,
}

impl Media {
    pub fn id(&self) -> Option<&MediaId> {
        self.published.as_ref().map(|p| &p.media_id)
    }
    /// Whether the media can be sold now.
    pub fn on_sale(&self) -> bool {
        self.status == MediaStatus::Published && self.published.as_ref().is_some_and(|p| p.for_sale)
    }
}

// Commands live for one decision; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum MediaCommand {
    Publish(MediaPublished),
    Withdraw { reason: String },
    ChangePrice { price_minor: u64 },
}

impl Aggregate for Media {
    type Command = MediaCommand;
    const KIND: AggregateKind = AggregateKind::Media;

    fn decide(&self, command: &MediaCommand, _now: Millis) -> Result<Vec<Event>, Rejection> {
        match command {
            MediaCommand::Publish(media) => {
                if let Some(existing) = &self.published {
                    return Err(Rejection::AlreadyExists { kind: "media", id: existing.media_id.0.clone() });
                }
                validate_published(media)?;
                Ok(vec![Event::MediaPublished(media.clone())])
            }
            MediaCommand::Withdraw { reason } => {
                let media = self.published_or_not_found()?;
                if self.status == MediaStatus::Withdrawn {
                    return Ok(vec![]);
                }
                validate::text("reason", reason, TEXT_CHARS_MAX)?;
                Ok(vec![Event::MediaWithdrawn { media_id: media.media_id.clone(), reason: reason.clone() }])
            }
            MediaCommand::ChangePrice { price_minor } => {
                let media = self.published_or_not_found()?;
                if self.status == MediaStatus::Withdrawn {
                    return Err(Rejection::InvalidTransition { kind: "media", command: "ChangePrice", state: "Withdrawn" });
                }
                check_price(*price_minor)?;
                Ok(vec![Event::PriceChanged { media_id: media.media_id.clone(), price_minor: *price_minor }])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::MediaPublished(media) => {
                self.status = MediaStatus::Published;
                self.price_minor = media.price_minor;
                self.published = Some(media.clone());
            }
            Event::MediaWithdrawn { .. } => self.status = MediaStatus::Withdrawn,
            Event::PriceChanged { price_minor, .. } => self.price_minor = *price_minor,
            _ => {}
        }
        self
    }

    fn command_name(command: &MediaCommand) -> &'static str {
        match command {
            MediaCommand::Publish(_) => "PublishMedia",
            MediaCommand::Withdraw { .. } => "WithdrawMedia",
            MediaCommand::ChangePrice { .. } => "ChangePrice",
        }
    }
}

impl Media {
    fn published_or_not_found(&self) -> Result<&MediaPublished, Rejection> {
        self.published.as_ref().ok_or(Rejection::NotFound { kind: "media", id: String::new() })
    }
}

fn check_price(price_minor: u64) -> Result<(), Rejection> {
    if price_minor == 0 || price_minor > PRICE_MINOR_MAX {
        return Err(Rejection::InvalidArgument { field: "price_minor", reason: format!("must be 1..={PRICE_MINOR_MAX}") });
    }
    Ok(())
}

fn validate_published(media: &MediaPublished) -> Result<(), Rejection> {
    validate::id("media_id", &media.media_id.0)?;
    validate::id("publisher", &media.publisher)?;
    validate::text("title", &media.title, TEXT_CHARS_MAX)?;
    validate::text("artist", &media.artist, TEXT_CHARS_MAX)?;
    if media.authors.len() > LIST_ITEMS_MAX {
        return Err(Rejection::InvalidArgument { field: "authors", reason: format!("at most {LIST_ITEMS_MAX}") });
    }
    for author in &media.authors {
        validate::text("authors", author, TEXT_CHARS_MAX)?;
    }
    check_price(media.price_minor)?;
    validate::currency(&media.currency)?;
    check_terms(&media.terms)?;
    if media.renditions.is_empty() || media.renditions.len() > LIST_ITEMS_MAX {
        return Err(Rejection::InvalidArgument { field: "renditions", reason: format!("need 1..={LIST_ITEMS_MAX}") });
    }
    for rendition in &media.renditions {
        validate::id("renditions.name", &rendition.name)?;
    }
    if media.preview.start_ms.saturating_add(media.preview.duration_ms) > media.length_ms {
        return Err(Rejection::InvalidArgument { field: "preview", reason: "the clip must lie within the media".into() });
    }
    if media.length_ms == 0 {
        return Err(Rejection::InvalidArgument { field: "length_ms", reason: "must be positive".into() });
    }
    if media.wrapped_media_key.is_empty() || media.wrapped_media_key.len() > 1024 {
        return Err(Rejection::InvalidArgument { field: "wrapped_media_key", reason: "must be an RSA-OAEP ciphertext".into() });
    }
    Ok(())
}

/// Royalty terms that can settle a sale: shares summing to 10000 basis points, and the
/// distributor, owner and rights agent named by ids.
pub fn check_terms(terms: &RoyaltyTerms) -> Result<(), Rejection> {
    let total_bps = u64::from(terms.retailer_bps) + u64::from(terms.distributor_bps) + u64::from(terms.owner_bps);
    if total_bps != 10_000 {
        return Err(Rejection::InvalidArgument { field: "terms", reason: format!("shares must sum to 10000 basis points, not {total_bps}") });
    }
    validate::id("terms.distributor", &terms.distributor)?;
    validate::id("terms.owner", &terms.owner)?;
    validate::id("terms.rights_agent", &terms.rights_agent)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::event::{PreviewClip, Rendition};
    use crate::domain::testing::check;

    pub fn sample(media_id: &str, price_minor: u64) -> MediaPublished {
        MediaPublished {
            media_id: MediaId::new(media_id),
            publisher: "pub1".into(),
            title: "Song".into(),
            artist: "Artist".into(),
            authors: vec!["Author".into()],
            length_ms: 180_000,
            price_minor,
            currency: "EUR".into(),
            terms: RoyaltyTerms {
                retailer_bps: 3000,
                distributor_bps: 2000,
                owner_bps: 5000,
                distributor: "dist1".into(),
                owner: "label1".into(),
                rights_agent: "agent1".into(),
            },
            renditions: vec![Rendition { name: "high".into(), bitrate_kbps: 256, content_hash: [7; 32], size_bytes: 1000 }],
            preview: PreviewClip { start_ms: 0, duration_ms: 30_000 },
            image_descriptor: "cover.jpg".into(),
            for_sale: true,
            engine_key_id: "k1".into(),
            wrapped_media_key: vec![1; 256],
            container_format: 0,
        }
    }

    #[test]
    fn publish_then_withdraw_and_reprice() {
        let media = sample("m1", 100);
        check::<Media>(&[], MediaCommand::Publish(media.clone()), Millis(0), Ok(vec![Event::MediaPublished(media.clone())]));
        let published = [Event::MediaPublished(media.clone())];
        check::<Media>(&published, MediaCommand::Publish(media.clone()), Millis(0), Err(Rejection::AlreadyExists { kind: "media", id: "m1".into() }));
        check::<Media>(
            &published,
            MediaCommand::ChangePrice { price_minor: 250 },
            Millis(0),
            Ok(vec![Event::PriceChanged { media_id: MediaId::new("m1"), price_minor: 250 }]),
        );
        let withdrawn = [published[0].clone(), Event::MediaWithdrawn { media_id: MediaId::new("m1"), reason: "gone".into() }];
        check::<Media>(&withdrawn, MediaCommand::Withdraw { reason: "again".into() }, Millis(0), Ok(vec![]));
        check::<Media>(
            &withdrawn,
            MediaCommand::ChangePrice { price_minor: 5 },
            Millis(0),
            Err(Rejection::InvalidTransition { kind: "media", command: "ChangePrice", state: "Withdrawn" }),
        );
    }

    #[test]
    fn publish_validation() {
        let mut bad_terms = sample("m1", 100);
        bad_terms.terms.owner_bps = 4000;
        assert!(matches!(Media::default().decide(&MediaCommand::Publish(bad_terms), Millis(0)), Err(Rejection::InvalidArgument { field: "terms", .. })));
        let mut no_title = sample("m1", 100);
        no_title.title = "  ".into();
        assert!(matches!(Media::default().decide(&MediaCommand::Publish(no_title), Millis(0)), Err(Rejection::InvalidArgument { field: "title", .. })));
        let mut bad_id = sample("m.1", 100);
        bad_id.media_id = MediaId::new("m.1");
        assert!(matches!(Media::default().decide(&MediaCommand::Publish(bad_id), Millis(0)), Err(Rejection::InvalidArgument { field: "media_id", .. })));
        assert!(matches!(
            Media::default().decide(&MediaCommand::Publish(sample("m1", 0)), Millis(0)),
            Err(Rejection::InvalidArgument { field: "price_minor", .. })
        ));
    }
}
