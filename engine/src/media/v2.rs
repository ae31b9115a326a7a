//! Container format 2: signed by the publisher, encrypted chunk by chunk, with free and
//! encrypted components and a free preview clip.
//!
//! **Container format 2** ([`encrypt_v2`], [`parse_v2`], [`ContainerV2`]):
//! ```text
//! magic "VSMC" | u8 2 | u8 0 | u16 signature_len | u32 toc_len | u64 toc_offset
//! | publisher signature (RSA-PSS over label ‖ toc) | table of contents | body
//! ```
//! The table of contents names the media id it is signed for, the publisher's public key,
//! the length, the for-sale flag, and every body section with its offset, length and
//! blake3 hash: descriptive components (title, artist, authors, lyrics, liner notes, cover
//! and promotional art; each free to view or encrypted with the media key), the unencrypted
//! preview clip (start, duration, fades), and per rendition its chunks (each encrypted on its
//! own with AES-256-GCM under a nonce derived from rendition and chunk index, the position
//! bound into the associated data) and its index table (chunk offset, encrypted length,
//! plaintext offset, play time). Signing the table signs every byte: a container that
//! verifies is exactly what the publisher signed. A player decrypts chunk by chunk while
//! it plays; a node streams the bytes opaquely from any offset.
//!
//! **Container format 3** ([`encrypt_v3`]) is format 2 with a key per part: each rendition
//! is sealed under its own key and the encrypted components under a components key, both
//! derived from the media key with blake3 `derive_key` under labels naming the part
//! ([`rendition_key`], [`components_key`]). The engine hands a buyer only the keys of the
//! rendition bought (and the components key), so a low-rendition buyer cannot open a byte
//! of the high one. Format 2 stays readable: its parts all use the media key.
//!
//! What does not live here: format 1 (`v1`), the bounded reader (`reader`), and which
//! publisher key a caller trusts (`verify` returns the key the container names; trusting
//! it is the caller's decision).

use super::reader::{Reader, put_framed};
use super::transaction::SIGNATURE_BYTES_MAX;
use super::{CONTAINER_BYTES_MAX, ContainerError, MAGIC};
use crate::crypto::{self, RsaPrivate, RsaPublic, SecretKey};
use crate::ids::MediaId;

pub const FORMAT_VERSION_2: u8 = 2;
/// Format 2's layout with a key per rendition and one for the encrypted components.
pub const FORMAT_VERSION_3: u8 = 3;
/// Bytes of the fixed format-2 header (before the signature).
pub const HEADER_V2_BYTES: usize = 4 + 1 + 1 + 2 + 4 + 8;
/// Largest table of contents accepted, in bytes.
pub const TOC_BYTES_MAX: usize = 64 * 1024;
/// Most descriptive components (title, artist, lyrics, art …) in one container.
pub const COMPONENTS_MAX: usize = 16;
/// Most renditions (qualities) in one container.
pub const RENDITIONS_MAX: usize = 8;
/// Longest component or rendition name (a token: A-Z a-z 0-9 - _).
pub const NAME_BYTES_MAX: usize = 64;
/// Longest media type ("image/jpeg", "text/plain; charset=utf-8").
pub const MEDIA_TYPE_BYTES_MAX: usize = 128;
/// Longest publisher public key (SPKI DER; RSA up to 8192 bits fits).
pub const PUBLISHER_KEY_BYTES_MAX: usize = 2048;
/// Smallest and largest plaintext chunk of a rendition, in bytes.
pub const CHUNK_BYTES_MIN: u32 = 1024;
pub const CHUNK_BYTES_MAX: u32 = 1024 * 1024;
/// The chunk size `vouchsafe publish` uses.
pub const CHUNK_BYTES_DEFAULT: u32 = 64 * 1024;
/// Bytes of one index table entry: chunk offset u64, encrypted length u32, plaintext offset
/// u64, time u64.
pub const INDEX_ENTRY_BYTES: usize = 8 + 4 + 8 + 8;
const AEAD_TAG_BYTES: u64 = 16;
const SIGNED_LABEL_V2: &[u8] = b"vouchsafe media container v2\0";
const SIGNED_LABEL_V3: &[u8] = b"vouchsafe media container v3\0";
const CONTEXT_RENDITION_KEY: &str = "vouchsafe media rendition key v1";
const CONTEXT_COMPONENTS_KEY: &str = "vouchsafe media components key v1";
const CHUNK_AAD_LABEL: &[u8] = b"vouchsafe media chunk v2\0";
const COMPONENT_AAD_LABEL: &[u8] = b"vouchsafe media component v2\0";
const NONCE_KIND_CHUNK: u8 = 1;
const NONCE_KIND_COMPONENT: u8 = 2;

/// A descriptive component for [`encrypt_v2`]: title, artist, authors, lyrics, liner notes,
/// cover or promotional art; free to view, or encrypted with the media key.
#[derive(Clone, Copy, Debug)]
pub struct ComponentSpec<'a> {
    pub name: &'a str,
    pub media_type: &'a str,
    pub encrypted: bool,
    pub data: &'a [u8],
}

/// One quality of the media for [`encrypt_v2`].
#[derive(Clone, Copy, Debug)]
pub struct RenditionSpec<'a> {
    pub name: &'a str,
    pub bitrate_kbps: u32,
    pub content: &'a [u8],
}

/// The free preview clip for [`encrypt_v2`]: where it starts in the media, how long it plays,
/// how it fades in and out, and its (unencrypted) bytes.
#[derive(Clone, Copy, Debug)]
pub struct PreviewSpec<'a> {
    pub start_ms: u64,
    pub duration_ms: u64,
    pub fade_in_ms: u32,
    pub fade_out_ms: u32,
    pub media_type: &'a str,
    pub clip: &'a [u8],
}

/// What a publisher puts in a format-2 container.
#[derive(Clone, Debug)]
pub struct ContainerSpec<'a> {
    /// The media id the engine will give the publication (`ids::media_id_for(publisher,
    /// request)`): signed, so a container cannot be published as another media.
    pub media_id: &'a MediaId,
    pub length_ms: u64,
    pub for_sale: bool,
    /// Plaintext bytes per chunk ([`CHUNK_BYTES_MIN`]..=[`CHUNK_BYTES_MAX`]).
    pub chunk_bytes: u32,
    pub components: Vec<ComponentSpec<'a>>,
    pub renditions: Vec<RenditionSpec<'a>>,
    pub preview: Option<PreviewSpec<'a>>,
}

/// A region of a format-2 container's body (offsets from the body's first byte) and the
/// blake3 hash of its bytes, which the signed table of contents holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    pub offset: u64,
    pub len: u64,
    pub hash: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub media_type: String,
    pub encrypted: bool,
    pub section: Section,
}

/// One entry of a rendition's index table: where chunk `i` starts (from the start of the
/// rendition's data), its encrypted length, the plaintext offset and the play time it starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub encrypted_len: u32,
    pub plain_offset: u64,
    pub time_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenditionEntry {
    pub name: String,
    pub bitrate_kbps: u32,
    /// Plaintext bytes.
    pub size_bytes: u64,
    /// blake3 of the plaintext.
    pub content_hash: [u8; 32],
    pub chunk_bytes: u32,
    pub chunk_count: u64,
    /// The encrypted chunks, back to back.
    pub data: Section,
    /// The index table.
    pub index: Section,
    pub index_entries: Vec<IndexEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preview {
    pub start_ms: u64,
    pub duration_ms: u64,
    pub fade_in_ms: u32,
    pub fade_out_ms: u32,
    pub media_type: String,
    pub section: Section,
}

/// A parsed format-2 container, borrowing the file's bytes. Parsing checks structure and
/// bounds only; [`ContainerV2::verify`] checks the publisher's signature and every hash.
#[derive(Debug)]
pub struct ContainerV2<'a> {
    /// 2 (every part under the media key) or 3 (a key per part).
    pub format_version: u8,
    pub signature: &'a [u8],
    toc: &'a [u8],
    body: &'a [u8],
    body_start: u64,
    pub media_id: MediaId,
    pub publisher_key_der: &'a [u8],
    pub length_ms: u64,
    pub for_sale: bool,
    pub components: Vec<Component>,
    pub renditions: Vec<RenditionEntry>,
    pub preview: Option<Preview>,
}

fn chunk_nonce(rendition: usize, chunk: u64) -> [u8; crypto::NONCE_BYTES] {
    let mut nonce = [0u8; crypto::NONCE_BYTES];
    nonce[0] = NONCE_KIND_CHUNK;
    nonce[1] = u8::try_from(rendition).unwrap_or(u8::MAX);
    nonce[4..].copy_from_slice(&chunk.to_le_bytes());
    nonce
}

fn component_nonce(component: usize) -> [u8; crypto::NONCE_BYTES] {
    let mut nonce = [0u8; crypto::NONCE_BYTES];
    nonce[0] = NONCE_KIND_COMPONENT;
    nonce[1] = u8::try_from(component).unwrap_or(u8::MAX);
    nonce
}

/// A chunk's associated data binds it to its media, rendition, content and position, so
/// chunks cannot be reordered, dropped or moved between renditions.
fn chunk_aad(media_id: &MediaId, rendition: &str, content_hash: &[u8; 32], chunk: u64, chunk_count: u64) -> Vec<u8> {
    let mut aad = CHUNK_AAD_LABEL.to_vec();
    put_framed(&mut aad, media_id.0.as_bytes());
    put_framed(&mut aad, rendition.as_bytes());
    aad.extend_from_slice(content_hash);
    aad.extend_from_slice(&chunk.to_le_bytes());
    aad.extend_from_slice(&chunk_count.to_le_bytes());
    aad
}

fn component_aad(media_id: &MediaId, name: &str) -> Vec<u8> {
    let mut aad = COMPONENT_AAD_LABEL.to_vec();
    put_framed(&mut aad, media_id.0.as_bytes());
    put_framed(&mut aad, name.as_bytes());
    aad
}

fn chunk_count(size_bytes: u64, chunk_bytes: u32) -> u64 {
    size_bytes.div_ceil(u64::from(chunk_bytes))
}

fn is_token(value: &str) -> bool {
    crate::ids::is_valid_token(value)
}

fn is_media_type(value: &str) -> bool {
    !value.is_empty() && value.len() <= MEDIA_TYPE_BYTES_MAX && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn malformed(reason: impl Into<String>) -> ContainerError {
    ContainerError::Malformed(reason.into())
}

/// The play time at which plaintext byte `plain_offset` starts, assuming a constant bitrate.
fn time_at(plain_offset: u64, size_bytes: u64, length_ms: u64) -> u64 {
    if size_bytes == 0 {
        return 0;
    }
    u64::try_from(u128::from(plain_offset) * u128::from(length_ms) / u128::from(size_bytes)).unwrap_or(u64::MAX)
}

/// The expected index entry `i` of a rendition (everything but the time is arithmetic).
fn index_entry(i: u64, size_bytes: u64, chunk_bytes: u32) -> (u64, u32, u64) {
    let chunk_bytes = u64::from(chunk_bytes);
    let plain_offset = i * chunk_bytes;
    let plain_len = chunk_bytes.min(size_bytes - plain_offset);
    (i * (chunk_bytes + AEAD_TAG_BYTES), u32::try_from(plain_len + AEAD_TAG_BYTES).unwrap_or(u32::MAX), plain_offset)
}

fn check_spec(spec: &ContainerSpec<'_>) -> Result<(), ContainerError> {
    if !is_token(&spec.media_id.0) {
        return Err(malformed("the media id is not a token"));
    }
    if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&spec.chunk_bytes) {
        return Err(malformed(format!("chunk size {} is outside {CHUNK_BYTES_MIN}..={CHUNK_BYTES_MAX}", spec.chunk_bytes)));
    }
    if spec.components.len() > COMPONENTS_MAX {
        return Err(malformed(format!("more than {COMPONENTS_MAX} components")));
    }
    if spec.renditions.is_empty() || spec.renditions.len() > RENDITIONS_MAX {
        return Err(malformed(format!("a container needs 1..={RENDITIONS_MAX} renditions")));
    }
    for (i, component) in spec.components.iter().enumerate() {
        if !is_token(component.name) || !is_media_type(component.media_type) {
            return Err(malformed(format!("component {i} needs a token name and a printable media type")));
        }
        if spec.components[..i].iter().any(|other| other.name == component.name) {
            return Err(malformed(format!("component {:?} appears twice", component.name)));
        }
    }
    for (i, rendition) in spec.renditions.iter().enumerate() {
        if !is_token(rendition.name) || spec.renditions[..i].iter().any(|other| other.name == rendition.name) {
            return Err(malformed(format!("rendition {i} needs a unique token name")));
        }
        if rendition.content.is_empty() {
            return Err(malformed(format!("rendition {:?} is empty", rendition.name)));
        }
    }
    if let Some(preview) = &spec.preview {
        check_preview(preview.start_ms, preview.duration_ms, preview.fade_in_ms, preview.fade_out_ms, spec.length_ms)?;
        if !is_media_type(preview.media_type) {
            return Err(malformed("the preview clip needs a printable media type"));
        }
    }
    Ok(())
}

fn check_preview(start_ms: u64, duration_ms: u64, fade_in_ms: u32, fade_out_ms: u32, length_ms: u64) -> Result<(), ContainerError> {
    if start_ms.checked_add(duration_ms).is_none_or(|end| end > length_ms) {
        return Err(malformed("the preview clip ends after the media"));
    }
    if u64::from(fade_in_ms) + u64::from(fade_out_ms) > duration_ms {
        return Err(malformed("the preview's fades are longer than the clip"));
    }
    Ok(())
}

fn put_section(toc: &mut Vec<u8>, section: &Section) {
    toc.extend_from_slice(&section.offset.to_le_bytes());
    toc.extend_from_slice(&section.len.to_le_bytes());
    toc.extend_from_slice(&section.hash);
}

fn push_section(body: &mut Vec<u8>, bytes: &[u8]) -> Section {
    let section = Section { offset: body.len() as u64, len: bytes.len() as u64, hash: crypto::hash(bytes) };
    body.extend_from_slice(bytes);
    section
}

/// The message the publisher signs: a versioned label and the table of contents, which
/// holds the hash of every section (so every byte of the container is signed).
fn signed_message(version: u8, toc: &[u8]) -> Vec<u8> {
    let mut message = if version == FORMAT_VERSION_3 { SIGNED_LABEL_V3 } else { SIGNED_LABEL_V2 }.to_vec();
    message.extend_from_slice(toc);
    message
}

/// The key of rendition `name` of a format-3 container of `media_id`.
pub fn rendition_key(media_key: &SecretKey, media_id: &MediaId, name: &str) -> SecretKey {
    let mut material = media_key.expose().to_vec();
    put_framed(&mut material, media_id.0.as_bytes());
    put_framed(&mut material, name.as_bytes());
    let key = crypto::derive_key(CONTEXT_RENDITION_KEY, &material);
    zeroize::Zeroize::zeroize(&mut material);
    key
}

/// The key of the encrypted components of a format-3 container of `media_id`.
pub fn components_key(media_key: &SecretKey, media_id: &MediaId) -> SecretKey {
    let mut material = media_key.expose().to_vec();
    put_framed(&mut material, media_id.0.as_bytes());
    let key = crypto::derive_key(CONTEXT_COMPONENTS_KEY, &material);
    zeroize::Zeroize::zeroize(&mut material);
    key
}

/// What a buyer of one rendition needs: its key and the components key (format 2: the
/// media key for both).
pub struct PurchaseKeys {
    pub rendition: SecretKey,
    pub components: SecretKey,
}

/// The keys a buyer of `rendition` of a container of `format_version` gets.
pub fn purchase_keys(format_version: u8, media_key: &SecretKey, media_id: &MediaId, rendition: &str) -> PurchaseKeys {
    if format_version == FORMAT_VERSION_3 {
        PurchaseKeys { rendition: rendition_key(media_key, media_id, rendition), components: components_key(media_key, media_id) }
    } else {
        PurchaseKeys { rendition: media_key.clone(), components: media_key.clone() }
    }
}

/// Builds a format-2 container: each encrypted component and every rendition chunk encrypted
/// with `media_key` (AES-256-GCM, a distinct nonce per chunk), an index table per rendition,
/// the free preview clip, and a table of contents signed with the publisher's key.
///
/// A media key must encrypt exactly one container: the nonces are derived from positions.
pub fn encrypt_v2(spec: &ContainerSpec<'_>, media_key: &SecretKey, publisher: &RsaPrivate) -> Result<Vec<u8>, ContainerError> {
    encrypt_signed(spec, media_key, publisher, FORMAT_VERSION_2)
}

/// Builds a format-3 container: as [`encrypt_v2`], each rendition under its
/// [`rendition_key`] and the encrypted components under the [`components_key`].
pub fn encrypt_v3(spec: &ContainerSpec<'_>, media_key: &SecretKey, publisher: &RsaPrivate) -> Result<Vec<u8>, ContainerError> {
    encrypt_signed(spec, media_key, publisher, FORMAT_VERSION_3)
}

fn encrypt_signed(spec: &ContainerSpec<'_>, media_key: &SecretKey, publisher: &RsaPrivate, version: u8) -> Result<Vec<u8>, ContainerError> {
    check_spec(spec)?;
    let part_key = |rendition: Option<&str>| match (version, rendition) {
        (FORMAT_VERSION_3, Some(name)) => rendition_key(media_key, spec.media_id, name),
        (FORMAT_VERSION_3, None) => components_key(media_key, spec.media_id),
        _ => media_key.clone(),
    };
    let components_key = part_key(None);
    let publisher_key_der = publisher.public().to_der().map_err(|error| ContainerError::Sign(error.to_string()))?;
    let mut body = Vec::new();
    let mut toc = Vec::new();
    put_framed(&mut toc, spec.media_id.0.as_bytes());
    put_framed(&mut toc, &publisher_key_der);
    toc.extend_from_slice(&spec.length_ms.to_le_bytes());
    toc.push(u8::from(spec.for_sale));
    toc.extend_from_slice(&(spec.components.len() as u32).to_le_bytes());
    for (i, component) in spec.components.iter().enumerate() {
        let section = if component.encrypted {
            push_section(&mut body, &crypto::aead_encrypt(&components_key, &component_nonce(i), &component_aad(spec.media_id, component.name), component.data))
        } else {
            push_section(&mut body, component.data)
        };
        put_framed(&mut toc, component.name.as_bytes());
        put_framed(&mut toc, component.media_type.as_bytes());
        toc.push(u8::from(component.encrypted));
        put_section(&mut toc, &section);
    }
    match &spec.preview {
        Some(preview) => {
            let section = push_section(&mut body, preview.clip);
            toc.push(1);
            toc.extend_from_slice(&preview.start_ms.to_le_bytes());
            toc.extend_from_slice(&preview.duration_ms.to_le_bytes());
            toc.extend_from_slice(&preview.fade_in_ms.to_le_bytes());
            toc.extend_from_slice(&preview.fade_out_ms.to_le_bytes());
            put_framed(&mut toc, preview.media_type.as_bytes());
            put_section(&mut toc, &section);
        }
        None => toc.push(0),
    }
    toc.extend_from_slice(&(spec.renditions.len() as u32).to_le_bytes());
    for (r, rendition) in spec.renditions.iter().enumerate() {
        let size_bytes = rendition.content.len() as u64;
        let content_hash = crypto::hash(rendition.content);
        let count = chunk_count(size_bytes, spec.chunk_bytes);
        let key = part_key(Some(rendition.name));
        let data_start = body.len();
        let mut index = Vec::with_capacity(4 + INDEX_ENTRY_BYTES * usize::try_from(count).unwrap_or(0));
        index.extend_from_slice(&u32::try_from(count).map_err(|_| malformed("too many chunks"))?.to_le_bytes());
        for (i, chunk) in rendition.content.chunks(spec.chunk_bytes as usize).enumerate() {
            let i = i as u64;
            let (offset, encrypted_len, plain_offset) = index_entry(i, size_bytes, spec.chunk_bytes);
            body.extend_from_slice(&crypto::aead_encrypt(&key, &chunk_nonce(r, i), &chunk_aad(spec.media_id, rendition.name, &content_hash, i, count), chunk));
            index.extend_from_slice(&offset.to_le_bytes());
            index.extend_from_slice(&encrypted_len.to_le_bytes());
            index.extend_from_slice(&plain_offset.to_le_bytes());
            index.extend_from_slice(&time_at(plain_offset, size_bytes, spec.length_ms).to_le_bytes());
        }
        let data = &body[data_start..];
        let data_section = Section { offset: data_start as u64, len: data.len() as u64, hash: crypto::hash(data) };
        let index_section = push_section(&mut body, &index);
        put_framed(&mut toc, rendition.name.as_bytes());
        toc.extend_from_slice(&rendition.bitrate_kbps.to_le_bytes());
        toc.extend_from_slice(&size_bytes.to_le_bytes());
        toc.extend_from_slice(&content_hash);
        toc.extend_from_slice(&spec.chunk_bytes.to_le_bytes());
        put_section(&mut toc, &data_section);
        put_section(&mut toc, &index_section);
    }
    if toc.len() > TOC_BYTES_MAX {
        return Err(malformed(format!("the table of contents is over {TOC_BYTES_MAX} bytes")));
    }
    let signature = crypto::sign(publisher, &signed_message(version, &toc)).map_err(|error| ContainerError::Sign(error.to_string()))?;
    if signature.is_empty() || signature.len() > SIGNATURE_BYTES_MAX {
        return Err(ContainerError::Sign(format!("a {}-byte signature does not fit the format", signature.len())));
    }
    let total = HEADER_V2_BYTES + signature.len() + toc.len() + body.len();
    if total > CONTAINER_BYTES_MAX {
        return Err(ContainerError::TooLarge(total));
    }
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(MAGIC);
    bytes.push(version);
    bytes.push(0);
    bytes.extend_from_slice(&(signature.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&(toc.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&((HEADER_V2_BYTES + signature.len()) as u64).to_le_bytes());
    bytes.extend_from_slice(&signature);
    bytes.extend_from_slice(&toc);
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Reads a section reference and checks that it starts exactly where the previous one
/// ended (sections tile the body in table order: no gaps, no overlaps) and fits the body.
fn read_section(reader: &mut Reader<'_>, next_offset: &mut u64, body_len: u64) -> Result<Section, ContainerError> {
    let offset = reader.u64()?;
    let len = reader.u64()?;
    let hash = reader.array::<32>()?;
    if offset != *next_offset {
        return Err(malformed(format!("a section starts at body offset {offset} instead of {next_offset}")));
    }
    let end = offset
        .checked_add(len)
        .filter(|end| *end <= body_len)
        .ok_or_else(|| malformed(format!("a section of {len} bytes at body offset {offset} ends past the body ({body_len} bytes)")))?;
    *next_offset = end;
    Ok(Section { offset, len, hash })
}

fn read_token(reader: &mut Reader<'_>, what: &str) -> Result<String, ContainerError> {
    let value = reader.framed_str(NAME_BYTES_MAX, what)?;
    if !is_token(value) {
        return Err(malformed(format!("{what} is not a token (A-Z a-z 0-9 - _)")));
    }
    Ok(value.to_string())
}

fn read_media_type(reader: &mut Reader<'_>) -> Result<String, ContainerError> {
    let value = reader.framed_str(MEDIA_TYPE_BYTES_MAX, "a media type")?;
    if !is_media_type(value) {
        return Err(malformed("a media type is not printable ASCII"));
    }
    Ok(value.to_string())
}

fn read_flag(reader: &mut Reader<'_>, what: &str) -> Result<bool, ContainerError> {
    match reader.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(malformed(format!("{what} is {other}, not 0 or 1"))),
    }
}

fn read_index(bytes: &[u8], size_bytes: u64, chunk_bytes: u32, count: u64, length_ms: u64) -> Result<Vec<IndexEntry>, ContainerError> {
    let mut reader = Reader::new(bytes);
    if u64::from(reader.u32()?) != count {
        return Err(malformed("an index table's entry count does not match its rendition"));
    }
    // The section's length was checked against `count` before this, so the allocation
    // is bounded by the bytes present.
    let mut entries = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut previous_time_ms = 0;
    for i in 0..count {
        let entry = IndexEntry { offset: reader.u64()?, encrypted_len: reader.u32()?, plain_offset: reader.u64()?, time_ms: reader.u64()? };
        if (entry.offset, entry.encrypted_len, entry.plain_offset) != index_entry(i, size_bytes, chunk_bytes) {
            return Err(malformed(format!("index entry {i} does not locate chunk {i}")));
        }
        if entry.time_ms < previous_time_ms || entry.time_ms > length_ms {
            return Err(malformed(format!("index entry {i}'s time is out of order or past the media's end")));
        }
        previous_time_ms = entry.time_ms;
        entries.push(entry);
    }
    reader.finish()?;
    Ok(entries)
}

/// Parses a format-2 container's structure: header, table of contents, sections and index
/// tables. Never panics; every length is checked against the bytes present and a named
/// limit before use; the layout is canonical (no gaps, no trailing bytes).
pub fn parse_v2(bytes: &[u8]) -> Result<ContainerV2<'_>, ContainerError> {
    if bytes.len() > CONTAINER_BYTES_MAX {
        return Err(ContainerError::TooLarge(bytes.len()));
    }
    let mut header = Reader::new(bytes);
    if header.take(4)? != MAGIC {
        return Err(ContainerError::BadMagic);
    }
    let version = header.u8()?;
    if version != FORMAT_VERSION_2 && version != FORMAT_VERSION_3 {
        return Err(ContainerError::Version(version));
    }
    if header.u8()? != 0 {
        return Err(malformed("the reserved header byte is not zero"));
    }
    let signature_len = header.u16()?;
    let signature_len = header.bounded(u64::from(signature_len), SIGNATURE_BYTES_MAX, "the signature")?;
    if signature_len == 0 {
        return Err(malformed("the container is not signed"));
    }
    let toc_len = header.u32()?;
    let toc_len = header.bounded(u64::from(toc_len), TOC_BYTES_MAX, "the table of contents")?;
    let toc_offset = header.u64()?;
    if toc_offset != (HEADER_V2_BYTES + signature_len) as u64 {
        return Err(malformed(format!("the table of contents is at {toc_offset}, not right after the signature")));
    }
    let signature = header.take(signature_len)?;
    let toc = header.take(toc_len)?;
    let body_start = header.position;
    let body = &bytes[body_start..];
    let body_len = body.len() as u64;

    let mut reader = Reader::new(toc);
    let media_id = MediaId(read_token(&mut reader, "the media id")?);
    let publisher_key_der = reader.framed(PUBLISHER_KEY_BYTES_MAX, "the publisher key")?;
    let length_ms = reader.u64()?;
    let for_sale = read_flag(&mut reader, "the for-sale flag")?;
    let mut next_offset = 0u64;
    let component_count = reader.u32()? as usize;
    if component_count > COMPONENTS_MAX {
        return Err(malformed(format!("{component_count} components, at most {COMPONENTS_MAX}")));
    }
    let mut components: Vec<Component> = Vec::with_capacity(component_count);
    for _ in 0..component_count {
        let name = read_token(&mut reader, "a component name")?;
        let media_type = read_media_type(&mut reader)?;
        let encrypted = read_flag(&mut reader, "a component's encrypted flag")?;
        let section = read_section(&mut reader, &mut next_offset, body_len)?;
        if components.iter().any(|other| other.name == name) {
            return Err(malformed(format!("component {name:?} appears twice")));
        }
        if encrypted && section.len < AEAD_TAG_BYTES {
            return Err(malformed(format!("encrypted component {name:?} is shorter than its tag")));
        }
        components.push(Component { name, media_type, encrypted, section });
    }
    let preview = if read_flag(&mut reader, "the preview flag")? {
        let (start_ms, duration_ms, fade_in_ms, fade_out_ms) = (reader.u64()?, reader.u64()?, reader.u32()?, reader.u32()?);
        check_preview(start_ms, duration_ms, fade_in_ms, fade_out_ms, length_ms)?;
        let media_type = read_media_type(&mut reader)?;
        let section = read_section(&mut reader, &mut next_offset, body_len)?;
        Some(Preview { start_ms, duration_ms, fade_in_ms, fade_out_ms, media_type, section })
    } else {
        None
    };
    let rendition_count = reader.u32()? as usize;
    if rendition_count == 0 || rendition_count > RENDITIONS_MAX {
        return Err(malformed(format!("{rendition_count} renditions, a container holds 1..={RENDITIONS_MAX}")));
    }
    let mut renditions: Vec<RenditionEntry> = Vec::with_capacity(rendition_count);
    for _ in 0..rendition_count {
        let name = read_token(&mut reader, "a rendition name")?;
        if renditions.iter().any(|other| other.name == name) {
            return Err(malformed(format!("rendition {name:?} appears twice")));
        }
        let bitrate_kbps = reader.u32()?;
        let size_bytes = reader.u64()?;
        if size_bytes == 0 || size_bytes > CONTAINER_BYTES_MAX as u64 {
            return Err(malformed(format!("rendition {name:?} declares {size_bytes} bytes")));
        }
        let content_hash = reader.array::<32>()?;
        let chunk_bytes = reader.u32()?;
        if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&chunk_bytes) {
            return Err(malformed(format!("rendition {name:?} has chunks of {chunk_bytes} bytes")));
        }
        let count = chunk_count(size_bytes, chunk_bytes);
        let data = read_section(&mut reader, &mut next_offset, body_len)?;
        // Bounded: size ≤ CONTAINER_BYTES_MAX and count ≤ size / CHUNK_BYTES_MIN + 1.
        if data.len != size_bytes + count * AEAD_TAG_BYTES {
            return Err(malformed(format!("rendition {name:?}'s data is {} bytes, not {} encrypted bytes", data.len, size_bytes + count * AEAD_TAG_BYTES)));
        }
        let index = read_section(&mut reader, &mut next_offset, body_len)?;
        if index.len != 4 + count * INDEX_ENTRY_BYTES as u64 {
            return Err(malformed(format!("rendition {name:?}'s index table has the wrong length for {count} chunks")));
        }
        let index_bytes = section_slice(body, &index).ok_or_else(|| malformed("an index table lies outside the body"))?;
        let index_entries = read_index(index_bytes, size_bytes, chunk_bytes, count, length_ms)?;
        renditions.push(RenditionEntry { name, bitrate_kbps, size_bytes, content_hash, chunk_bytes, chunk_count: count, data, index, index_entries });
    }
    reader.finish()?;
    if next_offset != body_len {
        return Err(ContainerError::Trailing(usize::try_from(body_len - next_offset).unwrap_or(usize::MAX)));
    }
    Ok(ContainerV2 {
        format_version: version,
        signature,
        toc,
        body,
        body_start: body_start as u64,
        media_id,
        publisher_key_der,
        length_ms,
        for_sale,
        components,
        renditions,
        preview,
    })
}

fn section_slice<'a>(body: &'a [u8], section: &Section) -> Option<&'a [u8]> {
    let start = usize::try_from(section.offset).ok()?;
    let end = usize::try_from(section.offset.checked_add(section.len)?).ok()?;
    body.get(start..end)
}

impl<'a> ContainerV2<'a> {
    /// The bytes of a section of this container (empty if it lies outside the body, which
    /// parsing rules out).
    pub fn section(&self, section: &Section) -> &'a [u8] {
        section_slice(self.body, section).unwrap_or_default()
    }

    /// The publisher's public key, as the signed table of contents names it.
    pub fn publisher_key(&self) -> Result<RsaPublic, ContainerError> {
        RsaPublic::from_der(self.publisher_key_der).map_err(|error| malformed(format!("the publisher key: {error}")))
    }

    /// Checks the publisher's signature over the table of contents and the hash of every
    /// section against it: a container that verifies is, byte for byte, what the holder of
    /// the publisher key signed.
    pub fn verify(&self) -> Result<RsaPublic, ContainerError> {
        let publisher = self.publisher_key()?;
        crypto::verify(&publisher, &signed_message(self.format_version, self.toc), self.signature).map_err(|_| ContainerError::BadSignature)?;
        let sections = self
            .components
            .iter()
            .map(|component| (format!("component {:?}", component.name), component.section))
            .chain(self.preview.iter().map(|preview| ("the preview clip".to_string(), preview.section)))
            .chain(self.renditions.iter().flat_map(|rendition| {
                [(format!("rendition {:?}", rendition.name), rendition.data), (format!("the index of {:?}", rendition.name), rendition.index)]
            }));
        for (what, section) in sections {
            if !crypto::ct_eq(&crypto::hash(self.section(&section)), &section.hash) {
                return Err(ContainerError::SectionHash(what));
            }
        }
        Ok(publisher)
    }

    pub fn rendition(&self, name: &str) -> Option<(usize, &RenditionEntry)> {
        self.renditions.iter().enumerate().find(|(_, rendition)| rendition.name == name)
    }

    pub fn component(&self, name: &str) -> Option<(usize, &Component)> {
        self.components.iter().enumerate().find(|(_, component)| component.name == name)
    }

    /// A free component's bytes; `None` for an encrypted one.
    pub fn free_component(&self, name: &str) -> Option<&'a [u8]> {
        self.component(name).filter(|(_, component)| !component.encrypted).map(|(_, component)| self.section(&component.section))
    }

    /// A component's plaintext: free ones as they are, encrypted ones opened with the key
    /// (format 2: the media key; format 3: the components key).
    pub fn open_component(&self, media_key: &SecretKey, index: usize) -> Result<Vec<u8>, ContainerError> {
        let component = self.components.get(index).ok_or_else(|| malformed(format!("no component {index}")))?;
        let bytes = self.section(&component.section);
        if !component.encrypted {
            return Ok(bytes.to_vec());
        }
        crypto::aead_decrypt(media_key, &component_nonce(index), &component_aad(&self.media_id, &component.name), bytes).map_err(|_| ContainerError::Decrypt)
    }

    /// The free preview clip.
    pub fn preview_clip(&self) -> Option<&'a [u8]> {
        self.preview.as_ref().map(|preview| self.section(&preview.section))
    }

    /// The absolute byte range `(offset, len)` of a rendition's chunk in the container:
    /// what a player asks a node for to start playing there.
    pub fn chunk_range(&self, rendition: usize, chunk: u64) -> Option<(u64, u64)> {
        let entry = self.renditions.get(rendition)?;
        let index = entry.index_entries.get(usize::try_from(chunk).ok()?)?;
        Some((self.body_start + entry.data.offset + index.offset, u64::from(index.encrypted_len)))
    }

    /// The chunk that plays at `time_ms` (the last chunk starting at or before it).
    pub fn chunk_at(&self, rendition: usize, time_ms: u64) -> Option<u64> {
        let entries = &self.renditions.get(rendition)?.index_entries;
        let after = entries.partition_point(|entry| entry.time_ms <= time_ms);
        Some(after.saturating_sub(1) as u64)
    }

    /// Decrypts and authenticates one chunk of a rendition, given the encrypted chunk's bytes
    /// (from this container, or from a node's stream at [`ContainerV2::chunk_range`]), with
    /// the rendition's key (format 2: the media key; format 3: its [`rendition_key`]).
    pub fn open_chunk(&self, media_key: &SecretKey, rendition: usize, chunk: u64, encrypted: &[u8]) -> Result<Vec<u8>, ContainerError> {
        let entry = self.renditions.get(rendition).ok_or_else(|| malformed(format!("no rendition {rendition}")))?;
        if chunk >= entry.chunk_count {
            return Err(malformed(format!("rendition {:?} has {} chunks", entry.name, entry.chunk_count)));
        }
        let aad = chunk_aad(&self.media_id, &entry.name, &entry.content_hash, chunk, entry.chunk_count);
        crypto::aead_decrypt(media_key, &chunk_nonce(rendition, chunk), &aad, encrypted).map_err(|_| ContainerError::Decrypt)
    }

    /// Decrypts chunk `chunk` of a rendition from this container's bytes.
    pub fn decrypt_chunk(&self, media_key: &SecretKey, rendition: usize, chunk: u64) -> Result<Vec<u8>, ContainerError> {
        let (offset, len) = self.chunk_range(rendition, chunk).ok_or_else(|| malformed(format!("no chunk {chunk} in rendition {rendition}")))?;
        let start = offset.checked_sub(self.body_start).ok_or_else(|| malformed("a chunk lies before the body"))?;
        let encrypted = section_slice(self.body, &Section { offset: start, len, hash: [0; 32] }).ok_or_else(|| malformed("a chunk lies outside the body"))?;
        self.open_chunk(media_key, rendition, chunk, encrypted)
    }

    /// Decrypts a whole rendition chunk by chunk (each authenticated as it comes, as a
    /// player does while it plays) and checks the result against the content hash.
    pub fn open_rendition(&self, media_key: &SecretKey, rendition: usize) -> Result<Vec<u8>, ContainerError> {
        let size_bytes = self.renditions.get(rendition).map_or(0, |entry| usize::try_from(entry.size_bytes).unwrap_or(0));
        let mut content = Vec::with_capacity(size_bytes);
        let Ok(_) = self.open_rendition_into(media_key, rendition, |plaintext| {
            content.extend_from_slice(plaintext);
            Ok::<(), std::convert::Infallible>(())
        })?;
        Ok(content)
    }

    /// Decrypts a whole rendition chunk by chunk into `sink`, each chunk authenticated
    /// before it is handed over (one buffer for every chunk, no copy of the whole
    /// rendition), hashing the plaintext as it goes; the content length once every chunk
    /// went to `sink` and the content hash matched. On any error (`ContentHash` included,
    /// which can only be known at the end) the caller must discard what `sink` received.
    /// The outer error is the container's, the inner one the sink's.
    pub fn open_rendition_into<E>(
        &self,
        media_key: &SecretKey,
        rendition: usize,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<u64, E>, ContainerError> {
        let entry = self.renditions.get(rendition).ok_or_else(|| malformed(format!("no rendition {rendition}")))?;
        let mut hasher = crypto::Hasher::new();
        let mut plaintext = Vec::with_capacity(usize::try_from(entry.chunk_bytes).unwrap_or(0));
        let mut content_len = 0u64;
        for chunk in 0..entry.chunk_count {
            let (offset, len) = self.chunk_range(rendition, chunk).ok_or_else(|| malformed(format!("no chunk {chunk} in rendition {rendition}")))?;
            let start = offset.checked_sub(self.body_start).ok_or_else(|| malformed("a chunk lies before the body"))?;
            let encrypted =
                section_slice(self.body, &Section { offset: start, len, hash: [0; 32] }).ok_or_else(|| malformed("a chunk lies outside the body"))?;
            let aad = chunk_aad(&self.media_id, &entry.name, &entry.content_hash, chunk, entry.chunk_count);
            crypto::aead_decrypt_into(media_key, &chunk_nonce(rendition, chunk), &aad, encrypted, &mut plaintext).map_err(|_| ContainerError::Decrypt)?;
            hasher.update(&plaintext);
            content_len += plaintext.len() as u64;
            if let Err(error) = sink(&plaintext) {
                return Ok(Err(error));
            }
        }
        if !crypto::ct_eq(&hasher.finalize(), &entry.content_hash) {
            return Err(ContainerError::ContentHash);
        }
        Ok(Ok(content_len))
    }
}
