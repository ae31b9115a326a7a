//! `vouchsafe inspect FILE [--keys DIR] [--json]`: what a media file is and whether its
//! signatures hold. Two kinds of file are recognised by their magic:
//! - a published media container (`VSMC`, `engine::media`): its structure (format 1: one
//!   content hash; format 2: descriptive components, free or encrypted, renditions with
//!   their chunks and index tables, the preview clip, the for-sale flag) and, for format 2,
//!   the publisher's signature over every section (optionally pinned to a publisher key
//!   with `--publisher-key`);
//! - a player's delivered copy (`VSDC`): the engine-signed transaction record that names
//!   the purchase (voucher, delivery time, engine key, consumer certificate), checked with
//!   `--keys DIR/engine.pub.pem`, and whether the content is the content the record names.
//!
//! The file is untrusted: parsing never panics and bounds every length (`engine::media`).
//! A file that does not parse, a signature that does not verify or content that does not
//! match its record is a failed check (exit 1); a missing or unreadable key file is a
//! usage error (exit 2). What deliberately does not live here: decrypting anything (no
//! media key is needed to inspect) and any network call.

use anyhow::Context;
use engine::crypto::RsaPublic;
use engine::keyset::KeySet;
use engine::media::{self, ContainerError};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A media container (as published) or a delivered copy (as a player keeps it).
    pub file: PathBuf,
    /// Key directory holding engine.pub.pem, to check a delivered copy's transaction record.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// The publisher's public key (PEM): a format-2 container must be signed by it.
    #[arg(long)]
    pub publisher_key: Option<PathBuf>,
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// What `inspect` found (CLI.md, `inspect --json` keys, plus details).
#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct Report {
    /// "container", "delivered_copy", or null when the file is neither.
    pub kind: Option<&'static str>,
    pub format_version: Option<u8>,
    pub media_id: Option<String>,
    pub renditions: Vec<RenditionView>,
    /// Every signature in the file verifies (and a delivered copy's content matches its
    /// record); null when the file carries no signature or no key was given to check it.
    pub signature_ok: Option<bool>,
    /// Null for a published container.
    pub transaction: Option<TransactionView>,
    pub size_bytes: u64,
    /// Why the file could not be read as a media file, when it could not.
    pub error: Option<String>,
    /// Format 2: the key id of the publisher key that signed the container.
    pub publisher_key_id: Option<String>,
    /// Format 2 with `--publisher-key`: the container is signed by that key.
    pub publisher_key_ok: Option<bool>,
    /// Why the signature check failed, when it did.
    pub signature_error: Option<String>,
    pub title: Option<String>,
    pub artist: Option<String>,
    pub length_ms: Option<u64>,
    pub for_sale: Option<bool>,
    /// Format 2: the descriptive components.
    pub components: Vec<ComponentView>,
    /// Format 2: the free preview clip.
    pub preview: Option<PreviewView>,
}

#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct ComponentView {
    pub name: String,
    pub media_type: String,
    pub encrypted: bool,
    pub size_bytes: u64,
    /// A free text component's text (up to [`TEXT_SHOWN_BYTES_MAX`] bytes).
    pub text: Option<String>,
}

#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct PreviewView {
    pub start_ms: u64,
    pub duration_ms: u64,
    pub fade_in_ms: u32,
    pub fade_out_ms: u32,
    pub media_type: String,
    pub clip_bytes: u64,
}

/// Longest free text shown in a report.
pub const TEXT_SHOWN_BYTES_MAX: usize = 4096;

#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct RenditionView {
    pub name: String,
    /// blake3 of the plaintext, hex.
    pub content_hash: String,
    /// Plaintext bytes, when the file says.
    pub size_bytes: Option<u64>,
    pub bitrate_kbps: Option<u32>,
    /// Format 2: the rendition's chunks (each encrypted on its own) and their plaintext size.
    pub chunks: Option<u64>,
    pub chunk_bytes: Option<u32>,
}

#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct TransactionView {
    pub voucher_id: String,
    /// Milliseconds since the Unix epoch, by the engine's clock at redemption.
    pub delivered_at: i64,
    /// The consumer certificate's serial.
    pub consumer_cert: String,
    /// The engine's signature over the record verifies with the given engine key; null
    /// without `--keys`.
    pub signature_ok: Option<bool>,
    /// Why the signature does not verify, when it does not.
    pub signature_error: Option<String>,
    pub consumer_id: String,
    pub media_id: String,
    pub rendition: String,
    pub node_id: String,
    pub engine_key_id: String,
    pub content_hash: String,
    /// The content is the content the record names.
    pub content_ok: bool,
}

impl Report {
    /// Whether the check passed: the file parsed, and nothing that was checked failed.
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && self.signature_ok != Some(false)
            && self.publisher_key_ok != Some(false)
            && self.transaction.as_ref().is_none_or(|transaction| transaction.content_ok && transaction.signature_ok != Some(false))
    }

    fn empty(kind: Option<&'static str>, size_bytes: u64) -> Self {
        Self {
            kind,
            format_version: None,
            media_id: None,
            renditions: Vec::new(),
            signature_ok: None,
            transaction: None,
            size_bytes,
            error: None,
            publisher_key_id: None,
            publisher_key_ok: None,
            signature_error: None,
            title: None,
            artist: None,
            length_ms: None,
            for_sale: None,
            components: Vec::new(),
            preview: None,
        }
    }

    fn unreadable(size_bytes: u64, error: ContainerError) -> Self {
        Self { signature_ok: Some(false), error: Some(error.to_string()), ..Self::empty(None, size_bytes) }
    }
}

/// Inspects a file's bytes; `engine` checks a delivered copy's transaction record,
/// `publisher` pins the key a format-2 container must be signed by.
pub fn inspect_bytes(bytes: &[u8], engine: Option<&RsaPublic>, publisher: Option<&RsaPublic>) -> Report {
    inspect_bytes_with(bytes, engine.cloned().map(KeySet::single).as_ref(), publisher)
}

/// As `inspect_bytes`, a delivered copy's record checked with the key of `engine`'s set
/// that it names (signed before or after a rotation).
pub fn inspect_bytes_with(bytes: &[u8], engine: Option<&KeySet>, publisher: Option<&RsaPublic>) -> Report {
    let size_bytes = bytes.len() as u64;
    match bytes.get(..4) {
        Some(magic) if magic == media::DELIVERED_MAGIC => match media::parse_delivered_copy(bytes) {
            Ok(copy) => delivered_copy(&copy, engine, size_bytes),
            Err(error) => Report::unreadable(size_bytes, error),
        },
        _ => match media::parse(bytes) {
            Ok(media::Parsed::V1(container)) => Report {
                format_version: Some(container.format_version),
                // Format 1 names neither its media nor its renditions, and is not signed.
                renditions: vec![RenditionView {
                    name: "content".into(),
                    content_hash: hex::encode(container.content_hash),
                    size_bytes: None,
                    bitrate_kbps: None,
                    chunks: None,
                    chunk_bytes: None,
                }],
                ..Report::empty(Some("container"), size_bytes)
            },
            Ok(media::Parsed::V2(container)) => container_v2(&container, publisher, size_bytes),
            Err(error) => Report::unreadable(size_bytes, error),
        },
    }
}

fn container_v2(container: &media::ContainerV2<'_>, publisher: Option<&RsaPublic>, size_bytes: u64) -> Report {
    let verified = container.verify();
    let text = |name: &str| container.free_component(name).and_then(|bytes| std::str::from_utf8(bytes).ok()).map(str::to_string);
    let components = container
        .components
        .iter()
        .map(|component| {
            let bytes = container.section(&component.section);
            let shown = !component.encrypted && component.media_type.starts_with("text/") && bytes.len() <= TEXT_SHOWN_BYTES_MAX;
            ComponentView {
                name: component.name.clone(),
                media_type: component.media_type.clone(),
                encrypted: component.encrypted,
                size_bytes: component.section.len,
                text: shown.then(|| String::from_utf8_lossy(bytes).into_owned()),
            }
        })
        .collect();
    let renditions = container
        .renditions
        .iter()
        .map(|rendition| RenditionView {
            name: rendition.name.clone(),
            content_hash: hex::encode(rendition.content_hash),
            size_bytes: Some(rendition.size_bytes),
            bitrate_kbps: Some(rendition.bitrate_kbps),
            chunks: Some(rendition.chunk_count),
            chunk_bytes: Some(rendition.chunk_bytes),
        })
        .collect();
    let preview = container.preview.as_ref().map(|preview| PreviewView {
        start_ms: preview.start_ms,
        duration_ms: preview.duration_ms,
        fade_in_ms: preview.fade_in_ms,
        fade_out_ms: preview.fade_out_ms,
        media_type: preview.media_type.clone(),
        clip_bytes: preview.section.len,
    });
    let publisher_key_id = container.publisher_key().ok().map(|key| key.key_id());
    Report {
        format_version: Some(container.format_version),
        media_id: Some(container.media_id.0.clone()),
        renditions,
        signature_ok: Some(verified.is_ok()),
        signature_error: verified.as_ref().err().map(ToString::to_string),
        publisher_key_ok: publisher.map(|pinned| publisher_key_id.as_deref() == Some(pinned.key_id().as_str())),
        publisher_key_id,
        title: text("title"),
        artist: text("artist"),
        length_ms: Some(container.length_ms),
        for_sale: Some(container.for_sale),
        components,
        preview,
        ..Report::empty(Some("container"), size_bytes)
    }
}

fn delivered_copy(copy: &media::DeliveredCopy<'_>, engine: Option<&KeySet>, size_bytes: u64) -> Report {
    let record = &copy.record;
    let content_ok = copy.content_ok();
    let signature = engine.map(|set| media::verify_transaction(set.get(&record.engine_key_id).unwrap_or(set.current()), record, copy.signature));
    let signature_ok = signature.as_ref().map(Result::is_ok);
    Report {
        format_version: Some(copy.format_version),
        media_id: Some(record.media_id.0.clone()),
        renditions: vec![RenditionView {
            name: record.rendition.clone(),
            content_hash: hex::encode(record.content_hash),
            size_bytes: Some(copy.content.len() as u64),
            bitrate_kbps: None,
            chunks: None,
            chunk_bytes: None,
        }],
        signature_ok: signature_ok.map(|ok| ok && content_ok),
        transaction: Some(TransactionView {
            voucher_id: record.voucher_id.0.clone(),
            delivered_at: record.delivered_at.0,
            consumer_cert: record.cert_serial.0.clone(),
            signature_ok,
            signature_error: signature.and_then(Result::err).map(|error| error.to_string()),
            consumer_id: record.consumer_id.0.clone(),
            media_id: record.media_id.0.clone(),
            rendition: record.rendition.clone(),
            node_id: record.node_id.0.clone(),
            engine_key_id: record.engine_key_id.clone(),
            content_hash: hex::encode(record.content_hash),
            content_ok,
        }),
        ..Report::empty(Some("delivered_copy"), size_bytes)
    }
}

/// Reads the file and the keys and inspects; `Err` only for usage or environment errors.
pub fn run(args: &InspectArgs) -> anyhow::Result<Report> {
    let engine = args.keys.as_deref().map(crate::common::keys::load_engine_keyset).transpose()?;
    let publisher = args
        .publisher_key
        .as_deref()
        .map(|path| -> anyhow::Result<RsaPublic> {
            let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            RsaPublic::from_pem(&pem).with_context(|| format!("{} is not an RSA public key", path.display()))
        })
        .transpose()?;
    let metadata = std::fs::metadata(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    // Nothing valid is larger than a container plus a delivered copy's header: refuse to
    // read a huge file into memory.
    let limit = media::CONTAINER_BYTES_MAX as u64 + 64 * 1024;
    if metadata.len() > limit {
        return Ok(Report::unreadable(metadata.len(), ContainerError::TooLarge(usize::try_from(metadata.len()).unwrap_or(usize::MAX))));
    }
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    Ok(inspect_bytes_with(&bytes, engine.as_ref(), publisher.as_ref()))
}

/// Text read from the file, shown as text: control characters (a newline that would start
/// a fake "signature: OK" line, an escape sequence that erases the real verdict on a
/// terminal), line and paragraph separators, and the invisible characters that reorder or
/// hide what a terminal shows (bidirectional overrides and isolates, zero-width marks) are
/// printed escaped, never raw.
fn shown(text: &str) -> String {
    let hidden = |c: char| c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
    text.chars().map(|c| if hidden(c) { c.escape_default().collect::<String>() } else { c.to_string() }).collect()
}

/// A few lines for a person (stderr).
pub fn describe(report: &Report) -> String {
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "OK",
        Some(false) => "FAILED",
        None => "not checked",
    };
    let Some(kind) = report.kind else {
        return format!("not a readable media file: {}", shown(report.error.as_deref().unwrap_or("unknown error")));
    };
    let mut lines = vec![format!(
        "{kind}, format {}, {} bytes{}",
        report.format_version.map_or_else(|| "?".into(), |version| version.to_string()),
        report.size_bytes,
        report.media_id.as_ref().map(|id| format!(", media {}", shown(id))).unwrap_or_default()
    )];
    if let (Some(title), Some(artist)) = (&report.title, &report.artist) {
        lines.push(format!("  {title:?} by {artist:?}"));
    }
    if let (Some(length_ms), Some(for_sale)) = (report.length_ms, report.for_sale) {
        lines.push(format!("  {length_ms} ms, {}", if for_sale { "for sale" } else { "not for sale" }));
    }
    for component in &report.components {
        lines.push(format!(
            "  component {:?} ({}): {} bytes, {}",
            component.name,
            shown(&component.media_type),
            component.size_bytes,
            if component.encrypted { "encrypted" } else { "free to view" }
        ));
    }
    for rendition in &report.renditions {
        let chunks = match (rendition.chunks, rendition.chunk_bytes) {
            (Some(chunks), Some(chunk_bytes)) => format!(", {chunks} chunks of {chunk_bytes} bytes"),
            _ => String::new(),
        };
        let bitrate = rendition.bitrate_kbps.map(|kbps| format!(", {kbps} kbps")).unwrap_or_default();
        lines.push(format!(
            "  rendition {:?}: content {}{}{bitrate}{chunks}",
            rendition.name,
            shown(&rendition.content_hash),
            rendition.size_bytes.map(|size| format!(", {size} bytes")).unwrap_or_default()
        ));
    }
    if let Some(preview) = &report.preview {
        lines.push(format!(
            "  preview clip (free): {} bytes of {}, from {} ms for {} ms, fades {} ms in / {} ms out",
            preview.clip_bytes,
            shown(&preview.media_type),
            preview.start_ms,
            preview.duration_ms,
            preview.fade_in_ms,
            preview.fade_out_ms
        ));
    }
    if let Some(key_id) = &report.publisher_key_id {
        lines.push(format!(
            "  publisher key {}{}",
            shown(key_id),
            match report.publisher_key_ok {
                Some(true) => " (the pinned key)",
                Some(false) => " (NOT the pinned --publisher-key)",
                None => "",
            }
        ));
    }
    if let Some(transaction) = &report.transaction {
        lines.push(format!(
            "  transaction: voucher {}, delivered at {} ms, consumer {} (certificate {}), node {}, engine key {}",
            shown(&transaction.voucher_id),
            transaction.delivered_at,
            shown(&transaction.consumer_id),
            shown(&transaction.consumer_cert),
            shown(&transaction.node_id),
            shown(&transaction.engine_key_id)
        ));
        lines.push(format!(
            "  engine signature: {}{}",
            verdict(transaction.signature_ok),
            transaction.signature_error.as_ref().map(|why| format!(" ({})", shown(why))).unwrap_or_default()
        ));
        if transaction.signature_ok.is_none() {
            lines.push("  (pass --keys DIR with the engine's engine.pub.pem to check the signature)".into());
        }
        lines.push(format!("  content matches the record: {}", if transaction.content_ok { "OK" } else { "FAILED" }));
    } else {
        let why = report.signature_error.as_ref().map(|why| format!(" ({})", shown(why))).unwrap_or_default();
        lines.push(format!(
            "  publisher signature: {}{why}",
            if report.signature_ok.is_none() { "none (format 1 containers are not signed)" } else { verdict(report.signature_ok) }
        ));
    }
    lines.join("\n")
}
