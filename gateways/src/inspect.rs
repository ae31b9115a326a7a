//! `vouchsafe inspect FILE [--keys DIR] [--json]`: what a media file is and whether its
//! signatures hold. Two kinds of file are recognised by their magic:
//! - a published media container (`VSMC`, `engine::media`): its structure;
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
use engine::media::{self, ContainerError};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A media container (as published) or a delivered copy (as a player keeps it).
    pub file: PathBuf,
    /// Key directory holding engine.pub.pem, to check a delivered copy's transaction record.
    #[arg(long)]
    pub keys: Option<PathBuf>,
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
}

#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct RenditionView {
    pub name: String,
    /// blake3 of the plaintext, hex.
    pub content_hash: String,
    /// Plaintext bytes, when the file says.
    pub size_bytes: Option<u64>,
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
        self.error.is_none() && self.signature_ok != Some(false) && self.transaction.as_ref().is_none_or(|transaction| transaction.content_ok && transaction.signature_ok != Some(false))
    }

    fn unreadable(size_bytes: u64, error: ContainerError) -> Self {
        Self { kind: None, format_version: None, media_id: None, renditions: Vec::new(), signature_ok: Some(false), transaction: None, size_bytes, error: Some(error.to_string()) }
    }
}

/// Inspects a file's bytes; `engine` checks a delivered copy's transaction record.
pub fn inspect_bytes(bytes: &[u8], engine: Option<&RsaPublic>) -> Report {
    let size_bytes = bytes.len() as u64;
    match bytes.get(..4) {
        Some(magic) if magic == media::DELIVERED_MAGIC => match media::parse_delivered_copy(bytes) {
            Ok(copy) => delivered_copy(&copy, engine, size_bytes),
            Err(error) => Report::unreadable(size_bytes, error),
        },
        _ => match media::parse(bytes) {
            Ok(container) => Report {
                kind: Some("container"),
                format_version: Some(container.format_version),
                // Format 1 names neither its media nor its renditions, and is not signed.
                media_id: None,
                renditions: vec![RenditionView { name: "content".into(), content_hash: hex::encode(container.content_hash), size_bytes: None }],
                signature_ok: None,
                transaction: None,
                size_bytes,
                error: None,
            },
            Err(error) => Report::unreadable(size_bytes, error),
        },
    }
}

fn delivered_copy(copy: &media::DeliveredCopy<'_>, engine: Option<&RsaPublic>, size_bytes: u64) -> Report {
    let record = &copy.record;
    let content_ok = copy.content_ok();
    let signature = engine.map(|engine| media::verify_transaction(engine, record, copy.signature));
    let signature_ok = signature.as_ref().map(Result::is_ok);
    Report {
        kind: Some("delivered_copy"),
        format_version: Some(copy.format_version),
        media_id: Some(record.media_id.0.clone()),
        renditions: vec![RenditionView { name: record.rendition.clone(), content_hash: hex::encode(record.content_hash), size_bytes: Some(copy.content.len() as u64) }],
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
        size_bytes,
        error: None,
    }
}

/// Reads the file and the keys and inspects; `Err` only for usage or environment errors.
pub fn run(args: &InspectArgs) -> anyhow::Result<Report> {
    let engine = args.keys.as_deref().map(crate::keys::load_engine_public).transpose()?;
    let metadata = std::fs::metadata(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    // Nothing valid is larger than a container plus a delivered copy's header: refuse to
    // read a huge file into memory.
    let limit = media::CONTAINER_BYTES_MAX as u64 + 64 * 1024;
    if metadata.len() > limit {
        return Ok(Report::unreadable(metadata.len(), ContainerError::TooLarge(usize::try_from(metadata.len()).unwrap_or(usize::MAX))));
    }
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    Ok(inspect_bytes(&bytes, engine.as_ref()))
}

/// A few lines for a person (stderr).
pub fn describe(report: &Report) -> String {
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "OK",
        Some(false) => "FAILED",
        None => "not checked",
    };
    let Some(kind) = report.kind else {
        return format!("not a readable media file: {}", report.error.as_deref().unwrap_or("unknown error"));
    };
    let mut lines = vec![format!(
        "{kind}, format {}, {} bytes{}",
        report.format_version.map_or_else(|| "?".into(), |version| version.to_string()),
        report.size_bytes,
        report.media_id.as_ref().map(|id| format!(", media {id}")).unwrap_or_default()
    )];
    for rendition in &report.renditions {
        lines.push(format!("  rendition {:?}: content {}{}", rendition.name, rendition.content_hash, rendition.size_bytes.map(|size| format!(", {size} bytes")).unwrap_or_default()));
    }
    if let Some(transaction) = &report.transaction {
        lines.push(format!(
            "  transaction: voucher {}, delivered at {} ms, consumer {} (certificate {}), node {}, engine key {}",
            transaction.voucher_id, transaction.delivered_at, transaction.consumer_id, transaction.consumer_cert, transaction.node_id, transaction.engine_key_id
        ));
        lines.push(format!("  engine signature: {}{}", verdict(transaction.signature_ok), transaction.signature_error.as_ref().map(|why| format!(" ({why})")).unwrap_or_default()));
        if transaction.signature_ok.is_none() {
            lines.push("  (pass --keys DIR with the engine's engine.pub.pem to check the signature)".into());
        }
        lines.push(format!("  content matches the record: {}", if transaction.content_ok { "OK" } else { "FAILED" }));
    } else {
        lines.push(format!("  signature: {}", if report.signature_ok.is_none() { "none (format 1 containers are not signed)" } else { verdict(report.signature_ok) }));
    }
    lines.join("\n")
}
