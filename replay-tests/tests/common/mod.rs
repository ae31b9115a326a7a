//! Fixtures shared by the end-to-end tests (each test binary includes this module).

use engine::app::PublishInput;
use engine::domain::event::{PreviewClip, Rendition, RoyaltyTerms};

/// A publishable song: one "high" rendition, a 10 s preview clip, a 30/20/50 split.
pub fn song(title: &str, price_minor: u64, wrapped_media_key: Vec<u8>) -> PublishInput {
    PublishInput {
        title: title.to_string(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 100_000,
        price_minor,
        currency: "EUR".into(),
        terms: RoyaltyTerms {
            retailer_bps: 3000,
            distributor_bps: 2000,
            owner_bps: 5000,
            distributor: "d".into(),
            owner: "o".into(),
            rights_agent: "a".into(),
        },
        renditions: vec![Rendition { name: "high".into(), bitrate_kbps: 256, content_hash: [1; 32], size_bytes: 10 }],
        preview: PreviewClip { start_ms: 0, duration_ms: 10_000 },
        image_descriptor: String::new(),
        for_sale: true,
        wrapped_media_key,
    }
}
