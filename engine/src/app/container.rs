//! The check of an uploaded media container against its PublishMedia request: the
//! catalog entry and the signed file never disagree.

use super::*;

/// What a PublishMedia request says about its media, which a signed (format 2) container
/// must say too: the catalog entry and the signed file never disagree.
#[derive(Clone, Debug)]
pub struct ContainerClaims {
    pub title: String,
    pub artist: String,
    pub length_ms: u64,
    pub for_sale: bool,
    pub renditions: Vec<crate::domain::event::Rendition>,
    pub preview: crate::domain::event::PreviewClip,
    pub preview_clip: bytes::Bytes,
}

fn container_refused(reason: impl Into<String>) -> Rejection {
    Rejection::InvalidArgument { field: "container", reason: reason.into() }
}

/// Checks an uploaded media container. Format 1 (legacy, unsigned) is checked for
/// structure only. Format 2 must carry a publisher signature that verifies over every
/// section, be signed for `media_id` (the id this publication gets, so a signed container
/// cannot be published as another media), and agree with `claims`: the same renditions
/// (name, bitrate, size, content hash, in order), free `title` and `artist` components equal
/// to the request's, the same length, for-sale flag, preview window and preview clip bytes.
/// Returns the format version.
pub fn check_container(container: &[u8], media_id: &MediaId, claims: &ContainerClaims) -> Result<u8, Rejection> {
    check_container_signed(container, media_id, claims).map(|(format_version, _)| format_version)
}

/// [`check_container`], also answering the key that signed the container (none for the
/// unsigned format 1): what a publisher's registered keys are checked against.
pub fn check_container_signed(container: &[u8], media_id: &MediaId, claims: &ContainerClaims) -> Result<(u8, Option<RsaPublic>), Rejection> {
    use crate::media::{ContainerError, Parsed};
    let container = match crate::media::parse(container).map_err(|error: ContainerError| container_refused(error.to_string()))? {
        Parsed::V1(_) => return Ok((crate::media::FORMAT_VERSION, None)),
        Parsed::V2(container) => container,
    };
    let publisher = container.verify().map_err(|error| container_refused(format!("{error}; sign the container with the publisher key it names")))?;
    if container.media_id != *media_id {
        return Err(container_refused(format!(
            "the container is signed for media {}, but this publication is media {} (media_id_for(publisher, request_id)); build it for that id",
            container.media_id, media_id
        )));
    }
    let text = |name: &str| container.free_component(name).and_then(|bytes| std::str::from_utf8(bytes).ok());
    if text("title") != Some(claims.title.as_str()) || text("artist") != Some(claims.artist.as_str()) {
        return Err(container_refused("the request's title and artist must equal the container's free title and artist components"));
    }
    if container.length_ms != claims.length_ms || container.for_sale != claims.for_sale {
        return Err(container_refused("the request's length_ms and for_sale must equal the container's"));
    }
    let signed: Vec<(&str, u32, u64, [u8; 32])> =
        container.renditions.iter().map(|r| (r.name.as_str(), r.bitrate_kbps, r.size_bytes, r.content_hash)).collect();
    let claimed: Vec<(&str, u32, u64, [u8; 32])> = claims.renditions.iter().map(|r| (r.name.as_str(), r.bitrate_kbps, r.size_bytes, r.content_hash)).collect();
    if signed != claimed {
        return Err(container_refused("the request's renditions must list the container's renditions (name, bitrate, size, content hash) in order"));
    }
    let (window, clip) = match &container.preview {
        Some(preview) => {
            (crate::domain::event::PreviewClip { start_ms: preview.start_ms, duration_ms: preview.duration_ms }, container.preview_clip().unwrap_or_default())
        }
        None => (crate::domain::event::PreviewClip::default(), &[][..]),
    };
    if window != claims.preview || !crypto::ct_eq(clip, &claims.preview_clip) {
        return Err(container_refused("the request's preview window and preview clip must be the container's"));
    }
    tracing::debug!(media_id = %media_id, publisher_key_id = %publisher.key_id(), "signed container checked");
    Ok((container.format_version, Some(publisher)))
}
