//! Media files: the published media container, what a publisher uploads, a node caches
//! and streams and a player decrypts; the engine-signed transaction record of one
//! delivery; and the delivered copy a player keeps (the record, its signature and the
//! decrypted content). Pure bytes in, bytes out; no I/O, no clock. The byte-level layouts
//! are specified in docs/media-format.md.
//!
//! **Container format 1** (legacy, still accepted and readable; all integers little-endian):
//! ```text
//! magic "VSMC" | u8 format_version = 1 | [u8; 12] nonce | [u8; 32] content_hash
//! | u64 ciphertext_len | ciphertext (AES-256-GCM under the media key, with the tag)
//! ```
//! `content_hash` is blake3 of the plaintext; it is also bound into the AEAD's associated
//! data, so a container whose header was swapped does not decrypt. It is not signed.
//!
//! **Container format 2** ([`seal_v2`], [`parse_v2`], [`ContainerV2`]):
//! ```text
//! magic "VSMC" | u8 2 | u8 0 | u16 signature_len | u32 toc_len | u64 toc_offset
//! | publisher signature (RSA-PSS over label ‖ toc) | table of contents | body
//! ```
//! The table of contents names the media id it is signed for, the publisher's public key,
//! the length, the for-sale flag, and every body section with its offset, length and
//! blake3 hash: descriptive components (title, artist, authors, lyrics, liner notes, cover
//! and promotional art; each free to view or sealed with the media key), the unencrypted
//! preview clip (start, duration, fades), and per rendition its chunks (each sealed on its
//! own with AES-256-GCM under a nonce derived from rendition and chunk index, the position
//! bound into the associated data) and its index table (chunk offset, sealed length,
//! plaintext offset, play time). Signing the table signs every byte: a container that
//! verifies is exactly what the publisher signed. A player decrypts chunk by chunk while
//! it plays; a node streams the bytes opaquely from any offset.
//!
//! Parsing an untrusted container never panics, checks every length against the bytes
//! present and a named limit before using it, and accepts only the canonical layout
//! (sections tile the body in table order, no trailing bytes).
//!
//! A **transaction record** names one delivery: voucher, media, rendition, node, the
//! engine's clock at redemption, the engine key id, the consumer and certificate serial and
//! the content hash. The engine signs its canonical bytes ([`TransactionRecord::message`])
//! with RSA-PSS; nothing in it is secret. A **delivered copy** (magic `VSDC`) carries the
//! record, the signature and the content, so a copy found in the wild names its purchase:
//! ```text
//! magic "VSDC" | u8 format_version = 1 | u32 record_len | record (canonical bytes)
//! | u16 signature_len | signature | u64 content_len | content
//! ```
//! The copy is stamped, not watermarked: whoever strips the header keeps the content.
//! Marking the audio itself is out of scope.

use crate::crypto::{self, CryptoError, RsaPrivate, RsaPublic, SecretKey};
use crate::ids::{CertSerial, ConsumerId, MediaId, Millis, NodeId, VoucherId};

pub const MAGIC: &[u8; 4] = b"VSMC";
pub const FORMAT_VERSION: u8 = 1;
/// Largest container accepted, in bytes.
pub const CONTAINER_BYTES_MAX: usize = 64 * 1024 * 1024;
const HEADER_BYTES: usize = 4 + 1 + 12 + 32 + 8;
const AAD_PREFIX: &[u8] = b"vouchsafe media container v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerError {
    #[error("not a media container (bad magic)")]
    BadMagic,
    #[error("unsupported container format version {0}")]
    Version(u8),
    #[error("container truncated: {needed} bytes needed, {present} present")]
    Truncated { needed: usize, present: usize },
    #[error("container of {0} bytes is over the {CONTAINER_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("{0} trailing bytes after the ciphertext")]
    Trailing(usize),
    #[error("the content does not decrypt with this media key")]
    Decrypt,
    #[error("the decrypted content does not match the container's content hash")]
    ContentHash,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("the publisher's signature over the table of contents does not verify")]
    BadSignature,
    #[error("{0} does not match the hash in the signed table of contents")]
    SectionHash(String),
    #[error("cannot sign the container: {0}")]
    Sign(String),
}

/// A bounded little-endian reader over untrusted bytes: every read checks the bytes
/// present, every length a caller reads is checked against a limit before it is used.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ContainerError> {
        let end = self.position.checked_add(len).ok_or(ContainerError::TooLarge(usize::MAX))?;
        let slice = self.bytes.get(self.position..end).ok_or(ContainerError::Truncated { needed: end, present: self.bytes.len() })?;
        self.position = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ContainerError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, ContainerError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ContainerError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ContainerError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ContainerError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, ContainerError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A length read from the input, refused above `max` before anything is allocated.
    fn bounded(&mut self, declared: u64, max: usize, what: &str) -> Result<usize, ContainerError> {
        usize::try_from(declared).ok().filter(|len| *len <= max).ok_or_else(|| ContainerError::Malformed(format!("{what} of {declared} bytes is over the {max}-byte limit")))
    }

    /// Bytes framed by a u64 length (the canonical framing of signed messages).
    fn framed(&mut self, max: usize, what: &str) -> Result<&'a [u8], ContainerError> {
        let declared = self.u64()?;
        let len = self.bounded(declared, max, what)?;
        self.take(len)
    }

    fn framed_str(&mut self, max: usize, what: &str) -> Result<&'a str, ContainerError> {
        std::str::from_utf8(self.framed(max, what)?).map_err(|_| ContainerError::Malformed(format!("{what} is not UTF-8")))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn finish(&self) -> Result<(), ContainerError> {
        match self.remaining() {
            0 => Ok(()),
            trailing => Err(ContainerError::Trailing(trailing)),
        }
    }
}

fn put_framed(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u64).to_le_bytes());
    out.extend_from_slice(part);
}

/// A parsed container header with a borrowed ciphertext.
#[derive(Debug)]
pub struct Container<'a> {
    pub format_version: u8,
    pub nonce: [u8; 12],
    pub content_hash: [u8; 32],
    pub ciphertext: &'a [u8],
}

fn aad(content_hash: &[u8; 32]) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(content_hash);
    aad
}

/// Encrypts `content` under `media_key` with a fresh random nonce.
pub fn seal(media_key: &SecretKey, content: &[u8]) -> Vec<u8> {
    let nonce = crypto::random_bytes::<12>();
    let content_hash = crypto::hash(content);
    let ciphertext = crypto::aead_seal(media_key, &nonce, &aad(&content_hash), content);
    let mut bytes = Vec::with_capacity(HEADER_BYTES + ciphertext.len());
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&content_hash);
    bytes.extend_from_slice(&(ciphertext.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&ciphertext);
    bytes
}

/// Parses a format-1 container's structure without decrypting it.
pub fn parse_v1(bytes: &[u8]) -> Result<Container<'_>, ContainerError> {
    if bytes.len() > CONTAINER_BYTES_MAX {
        return Err(ContainerError::TooLarge(bytes.len()));
    }
    if bytes.len() < 5 {
        return Err(ContainerError::Truncated { needed: HEADER_BYTES, present: bytes.len() });
    }
    if &bytes[..4] != MAGIC {
        return Err(ContainerError::BadMagic);
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(ContainerError::Version(bytes[4]));
    }
    if bytes.len() < HEADER_BYTES {
        return Err(ContainerError::Truncated { needed: HEADER_BYTES, present: bytes.len() });
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&bytes[5..17]);
    let mut content_hash = [0u8; 32];
    content_hash.copy_from_slice(&bytes[17..49]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[49..57]);
    let declared = u64::from_le_bytes(len);
    let body = &bytes[HEADER_BYTES..];
    let declared = usize::try_from(declared).map_err(|_| ContainerError::TooLarge(usize::MAX))?;
    if declared > body.len() {
        return Err(ContainerError::Truncated { needed: HEADER_BYTES.saturating_add(declared), present: bytes.len() });
    }
    if declared < body.len() {
        return Err(ContainerError::Trailing(body.len() - declared));
    }
    Ok(Container { format_version: FORMAT_VERSION, nonce, content_hash, ciphertext: body })
}

/// Decrypts a format-1 container and checks the content against its hash.
pub fn open(media_key: &SecretKey, bytes: &[u8]) -> Result<Vec<u8>, ContainerError> {
    let container = parse_v1(bytes)?;
    let content = crypto::aead_open(media_key, &container.nonce, &aad(&container.content_hash), container.ciphertext).map_err(|_: CryptoError| ContainerError::Decrypt)?;
    if !crypto::ct_eq(&crypto::hash(&content), &container.content_hash) {
        return Err(ContainerError::ContentHash);
    }
    Ok(content)
}

// ---- container format 2 --------------------------------------------------------------------

pub const FORMAT_VERSION_2: u8 = 2;
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
/// Bytes of one index table entry: chunk offset u64, sealed length u32, plaintext offset
/// u64, time u64.
pub const INDEX_ENTRY_BYTES: usize = 8 + 4 + 8 + 8;
const AEAD_TAG_BYTES: u64 = 16;
const SIGNED_LABEL_V2: &[u8] = b"vouchsafe media container v2\0";
const CHUNK_AAD_LABEL: &[u8] = b"vouchsafe media chunk v2\0";
const COMPONENT_AAD_LABEL: &[u8] = b"vouchsafe media component v2\0";
const NONCE_KIND_CHUNK: u8 = 1;
const NONCE_KIND_COMPONENT: u8 = 2;

/// A descriptive component for [`seal_v2`]: title, artist, authors, lyrics, liner notes,
/// cover or promotional art; free to view, or encrypted with the media key.
#[derive(Clone, Copy, Debug)]
pub struct ComponentSpec<'a> {
    pub name: &'a str,
    pub media_type: &'a str,
    pub encrypted: bool,
    pub data: &'a [u8],
}

/// One quality of the media for [`seal_v2`].
#[derive(Clone, Copy, Debug)]
pub struct RenditionSpec<'a> {
    pub name: &'a str,
    pub bitrate_kbps: u32,
    pub content: &'a [u8],
}

/// The free preview clip for [`seal_v2`]: where it starts in the media, how long it plays,
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
/// rendition's data), its sealed length, the plaintext offset and the play time it starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub sealed_len: u32,
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
    /// The sealed chunks, back to back.
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

/// A parsed container of any supported format version.
#[derive(Debug)]
pub enum Parsed<'a> {
    V1(Container<'a>),
    V2(Box<ContainerV2<'a>>),
}

impl Parsed<'_> {
    pub fn format_version(&self) -> u8 {
        match self {
            Parsed::V1(_) => FORMAT_VERSION,
            Parsed::V2(_) => FORMAT_VERSION_2,
        }
    }
}

/// Parses a container of any supported version without decrypting or verifying it.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, ContainerError> {
    if bytes.len() > CONTAINER_BYTES_MAX {
        return Err(ContainerError::TooLarge(bytes.len()));
    }
    match bytes.get(4) {
        Some(&FORMAT_VERSION_2) if bytes.get(..4) == Some(MAGIC.as_slice()) => parse_v2(bytes).map(|container| Parsed::V2(Box::new(container))),
        _ => parse_v1(bytes).map(Parsed::V1),
    }
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
fn signed_message_v2(toc: &[u8]) -> Vec<u8> {
    let mut message = SIGNED_LABEL_V2.to_vec();
    message.extend_from_slice(toc);
    message
}

/// Builds a format-2 container: each encrypted component and every rendition chunk sealed
/// with `media_key` (AES-256-GCM, a distinct nonce per chunk), an index table per rendition,
/// the free preview clip, and a table of contents signed with the publisher's key.
///
/// A media key must seal exactly one container: the nonces are derived from positions.
pub fn seal_v2(spec: &ContainerSpec<'_>, media_key: &SecretKey, publisher: &RsaPrivate) -> Result<Vec<u8>, ContainerError> {
    check_spec(spec)?;
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
            push_section(&mut body, &crypto::aead_seal(media_key, &component_nonce(i), &component_aad(spec.media_id, component.name), component.data))
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
        let data_start = body.len();
        let mut index = Vec::with_capacity(4 + INDEX_ENTRY_BYTES * usize::try_from(count).unwrap_or(0));
        index.extend_from_slice(&u32::try_from(count).map_err(|_| malformed("too many chunks"))?.to_le_bytes());
        for (i, chunk) in rendition.content.chunks(spec.chunk_bytes as usize).enumerate() {
            let i = i as u64;
            let (offset, sealed_len, plain_offset) = index_entry(i, size_bytes, spec.chunk_bytes);
            body.extend_from_slice(&crypto::aead_seal(media_key, &chunk_nonce(r, i), &chunk_aad(spec.media_id, rendition.name, &content_hash, i, count), chunk));
            index.extend_from_slice(&offset.to_le_bytes());
            index.extend_from_slice(&sealed_len.to_le_bytes());
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
    let signature = crypto::sign(publisher, &signed_message_v2(&toc)).map_err(|error| ContainerError::Sign(error.to_string()))?;
    if signature.is_empty() || signature.len() > SIGNATURE_BYTES_MAX {
        return Err(ContainerError::Sign(format!("a {}-byte signature does not fit the format", signature.len())));
    }
    let total = HEADER_V2_BYTES + signature.len() + toc.len() + body.len();
    if total > CONTAINER_BYTES_MAX {
        return Err(ContainerError::TooLarge(total));
    }
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT_VERSION_2);
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
    let end = offset.checked_add(len).filter(|end| *end <= body_len).ok_or_else(|| malformed(format!("a section of {len} bytes at body offset {offset} ends past the body ({body_len} bytes)")))?;
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
        let entry = IndexEntry { offset: reader.u64()?, sealed_len: reader.u32()?, plain_offset: reader.u64()?, time_ms: reader.u64()? };
        if (entry.offset, entry.sealed_len, entry.plain_offset) != index_entry(i, size_bytes, chunk_bytes) {
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
    if version != FORMAT_VERSION_2 {
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
            return Err(malformed(format!("rendition {name:?}'s data is {} bytes, not {} sealed bytes", data.len, size_bytes + count * AEAD_TAG_BYTES)));
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
    Ok(ContainerV2 { signature, toc, body, body_start: body_start as u64, media_id, publisher_key_der, length_ms, for_sale, components, renditions, preview })
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
        crypto::verify(&publisher, &signed_message_v2(self.toc), self.signature).map_err(|_| ContainerError::BadSignature)?;
        let sections = self
            .components
            .iter()
            .map(|component| (format!("component {:?}", component.name), component.section))
            .chain(self.preview.iter().map(|preview| ("the preview clip".to_string(), preview.section)))
            .chain(self.renditions.iter().flat_map(|rendition| [(format!("rendition {:?}", rendition.name), rendition.data), (format!("the index of {:?}", rendition.name), rendition.index)]));
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

    /// A component's plaintext: free ones as they are, encrypted ones opened with the key.
    pub fn open_component(&self, media_key: &SecretKey, index: usize) -> Result<Vec<u8>, ContainerError> {
        let component = self.components.get(index).ok_or_else(|| malformed(format!("no component {index}")))?;
        let bytes = self.section(&component.section);
        if !component.encrypted {
            return Ok(bytes.to_vec());
        }
        crypto::aead_open(media_key, &component_nonce(index), &component_aad(&self.media_id, &component.name), bytes).map_err(|_| ContainerError::Decrypt)
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
        Some((self.body_start + entry.data.offset + index.offset, u64::from(index.sealed_len)))
    }

    /// The chunk that plays at `time_ms` (the last chunk starting at or before it).
    pub fn chunk_at(&self, rendition: usize, time_ms: u64) -> Option<u64> {
        let entries = &self.renditions.get(rendition)?.index_entries;
        let after = entries.partition_point(|entry| entry.time_ms <= time_ms);
        Some(after.saturating_sub(1) as u64)
    }

    /// Decrypts and authenticates one chunk of a rendition, given the sealed chunk's bytes
    /// (from this container, or from a node's stream at [`ContainerV2::chunk_range`]).
    pub fn open_chunk(&self, media_key: &SecretKey, rendition: usize, chunk: u64, sealed: &[u8]) -> Result<Vec<u8>, ContainerError> {
        let entry = self.renditions.get(rendition).ok_or_else(|| malformed(format!("no rendition {rendition}")))?;
        if chunk >= entry.chunk_count {
            return Err(malformed(format!("rendition {:?} has {} chunks", entry.name, entry.chunk_count)));
        }
        let aad = chunk_aad(&self.media_id, &entry.name, &entry.content_hash, chunk, entry.chunk_count);
        crypto::aead_open(media_key, &chunk_nonce(rendition, chunk), &aad, sealed).map_err(|_| ContainerError::Decrypt)
    }

    /// Decrypts chunk `chunk` of a rendition from this container's bytes.
    pub fn decrypt_chunk(&self, media_key: &SecretKey, rendition: usize, chunk: u64) -> Result<Vec<u8>, ContainerError> {
        let (offset, len) = self.chunk_range(rendition, chunk).ok_or_else(|| malformed(format!("no chunk {chunk} in rendition {rendition}")))?;
        let start = offset.checked_sub(self.body_start).ok_or_else(|| malformed("a chunk lies before the body"))?;
        let sealed = section_slice(self.body, &Section { offset: start, len, hash: [0; 32] }).ok_or_else(|| malformed("a chunk lies outside the body"))?;
        self.open_chunk(media_key, rendition, chunk, sealed)
    }

    /// Decrypts a whole rendition chunk by chunk (each authenticated as it comes, as a
    /// player does while it plays) and checks the result against the content hash.
    pub fn open_rendition(&self, media_key: &SecretKey, rendition: usize) -> Result<Vec<u8>, ContainerError> {
        let entry = self.renditions.get(rendition).ok_or_else(|| malformed(format!("no rendition {rendition}")))?;
        let mut content = Vec::with_capacity(usize::try_from(entry.size_bytes).unwrap_or(0));
        for chunk in 0..entry.chunk_count {
            content.extend_from_slice(&self.decrypt_chunk(media_key, rendition, chunk)?);
        }
        if !crypto::ct_eq(&crypto::hash(&content), &entry.content_hash) {
            return Err(ContainerError::ContentHash);
        }
        Ok(content)
    }
}

// ---- transaction records -------------------------------------------------------------------

const TRANSACTION_LABEL: &[u8] = b"vouchsafe transaction record v1\0";
/// Longest id or name in a transaction record, in bytes (ids are at most 64).
pub const RECORD_FIELD_BYTES_MAX: usize = 256;
/// Longest signature accepted in a delivered copy (RSA up to 8192 bits).
pub const SIGNATURE_BYTES_MAX: usize = 1024;
const RECORD_BYTES_MAX: usize = TRANSACTION_LABEL.len() + 7 * (8 + RECORD_FIELD_BYTES_MAX) + 8 + 32;

/// One delivery of one media, as the engine signs it at Redeem. Nothing here is secret:
/// ids, the engine's clock and the content hash of the rendition the voucher bought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionRecord {
    pub voucher_id: VoucherId,
    pub media_id: MediaId,
    /// The rendition the voucher bought (its name in the media's catalog entry).
    pub rendition: String,
    /// The delivery node the voucher was issued to.
    pub node_id: NodeId,
    /// The engine's clock when it answered the redemption.
    pub delivered_at: Millis,
    /// The key id of the engine key that signs the record.
    pub engine_key_id: String,
    pub consumer_id: ConsumerId,
    pub cert_serial: CertSerial,
    /// blake3 of the rendition's plaintext content.
    pub content_hash: [u8; 32],
}

/// Why a transaction record does not name a delivery by this engine.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransactionError {
    #[error("the record names engine key {record}, not the given key {given}; check the engine.pub.pem used")]
    KeyId { record: String, given: String },
    #[error("the engine's signature over the transaction record does not verify")]
    BadSignature,
}

impl TransactionRecord {
    /// The canonical bytes the engine's signature covers: a versioned label, then each
    /// text field framed by its u64 length, then `delivered_at` (i64) and the content hash.
    pub fn message(&self) -> Vec<u8> {
        let mut message = TRANSACTION_LABEL.to_vec();
        for part in self.text_fields() {
            put_framed(&mut message, part.as_bytes());
        }
        message.extend_from_slice(&self.delivered_at.0.to_le_bytes());
        message.extend_from_slice(&self.content_hash);
        message
    }

    fn text_fields(&self) -> [&str; 7] {
        [&self.voucher_id.0, &self.media_id.0, &self.rendition, &self.node_id.0, &self.engine_key_id, &self.consumer_id.0, &self.cert_serial.0]
    }

    /// Parses canonical bytes made by [`TransactionRecord::message`]; anything else
    /// (another label, an over-long field, trailing bytes) is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContainerError> {
        let mut reader = Reader::new(bytes);
        if reader.take(TRANSACTION_LABEL.len())? != TRANSACTION_LABEL {
            return Err(ContainerError::Malformed("not a version 1 transaction record".into()));
        }
        let mut text = || reader.framed_str(RECORD_FIELD_BYTES_MAX, "a transaction record field").map(str::to_string);
        let (voucher_id, media_id, rendition, node_id, engine_key_id, consumer_id, cert_serial) = (text()?, text()?, text()?, text()?, text()?, text()?, text()?);
        let delivered_at = Millis(reader.i64()?);
        let content_hash = reader.array::<32>()?;
        reader.finish()?;
        Ok(Self {
            voucher_id: VoucherId(voucher_id),
            media_id: MediaId(media_id),
            rendition,
            node_id: NodeId(node_id),
            delivered_at,
            engine_key_id,
            consumer_id: ConsumerId(consumer_id),
            cert_serial: CertSerial(cert_serial),
            content_hash,
        })
    }
}

/// The canonical bytes of a transaction record (what the engine signs).
pub fn transaction_message(record: &TransactionRecord) -> Vec<u8> {
    record.message()
}

/// Checks that `signature` is `engine`'s signature over `record`, and that the record names
/// that key: either an RSA-PSS signature over the record itself, or a batch signature
/// (`TransactionBatch`) whose Merkle path leads from the record to a root `engine` signed.
pub fn verify_transaction(engine: &RsaPublic, record: &TransactionRecord, signature: &[u8]) -> Result<(), TransactionError> {
    if record.engine_key_id != engine.key_id() {
        return Err(TransactionError::KeyId { record: record.engine_key_id.clone(), given: engine.key_id() });
    }
    let message = record.message();
    if let Some(batch) = BatchSignature::parse(signature) {
        let root = crate::merkle::root_from_proof(&crypto::hash(&message), batch.index as usize, batch.size as usize, &batch.path);
        if root.is_some_and(|root| crypto::verify(engine, &batch_root_message(&root, batch.size), batch.root_signature).is_ok()) {
            return Ok(());
        }
    }
    // A plain signature (or, with odds of 2^-32, one that merely starts like a batch).
    crypto::verify(engine, &message, signature).map_err(|_| TransactionError::BadSignature)
}

// ---- batch signatures ------------------------------------------------------------------------

/// The start of a batch signature; a plain RSA signature is just the signature bytes.
pub const BATCH_SIGNATURE_MAGIC: &[u8; 4] = b"VSTB";
pub const BATCH_SIGNATURE_VERSION: u8 = 1;
/// Most records one batch signature covers: a path of at most 10 hashes, so a batch
/// signature stays under `SIGNATURE_BYTES_MAX` with keys up to RSA-4096.
pub const TRANSACTION_BATCH_MAX: usize = 1024;
const BATCH_LABEL: &[u8] = b"vouchsafe transaction batch v1\0";
/// Longest Merkle path accepted (a tree of up to 2^16 leaves).
const BATCH_PATH_MAX: usize = 16;

/// The bytes the engine signs for a batch: a label, the Merkle root over the records'
/// hashes (`blake3(TransactionRecord::message)`, RFC 6962 leaves) and the batch size.
pub fn batch_root_message(root: &[u8; 32], size: u32) -> Vec<u8> {
    let mut message = BATCH_LABEL.to_vec();
    message.extend_from_slice(root);
    message.extend_from_slice(&size.to_le_bytes());
    message
}

/// The signature of one record in a batch: its position, the batch size, its Merkle path
/// and the engine's signature over the root (`batch_root_message`). One RSA private-key
/// operation signs the whole batch, which is what lets redemptions outrun the ≈ 600
/// signatures per second and core of RSA-2048 (ARCHITECTURE.md).
///
/// Bytes: `VSTB`, version 1, index (u32 LE), size (u32 LE), path length (u8), the path's
/// hashes (32 bytes each, from the leaf up), signature length (u16 LE), the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSignature<'a> {
    pub index: u32,
    pub size: u32,
    pub path: Vec<[u8; 32]>,
    pub root_signature: &'a [u8],
}

impl<'a> BatchSignature<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(4 + 1 + 4 + 4 + 1 + 32 * self.path.len() + 2 + self.root_signature.len());
        bytes.extend_from_slice(BATCH_SIGNATURE_MAGIC);
        bytes.push(BATCH_SIGNATURE_VERSION);
        bytes.extend_from_slice(&self.index.to_le_bytes());
        bytes.extend_from_slice(&self.size.to_le_bytes());
        bytes.push(u8::try_from(self.path.len()).unwrap_or(u8::MAX));
        for hash in &self.path {
            bytes.extend_from_slice(hash);
        }
        bytes.extend_from_slice(&u16::try_from(self.root_signature.len()).unwrap_or(u16::MAX).to_le_bytes());
        bytes.extend_from_slice(self.root_signature);
        bytes
    }

    /// Parses untrusted bytes; `None` unless they are exactly a batch signature.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut reader = Reader::new(bytes);
        if reader.take(4).ok()? != BATCH_SIGNATURE_MAGIC || reader.u8().ok()? != BATCH_SIGNATURE_VERSION {
            return None;
        }
        let index = reader.u32().ok()?;
        let size = reader.u32().ok()?;
        let path_len = usize::from(reader.u8().ok()?);
        if path_len > BATCH_PATH_MAX || index >= size {
            return None;
        }
        let path = (0..path_len).map(|_| reader.array::<32>()).collect::<Result<Vec<_>, _>>().ok()?;
        let signature_len = usize::from(reader.u16().ok()?);
        let root_signature = reader.take(signature_len).ok()?;
        reader.finish().ok()?;
        Some(Self { index, size, path, root_signature })
    }
}

/// Signs `records` with one RSA-PSS signature over the Merkle root of their hashes; one
/// batch signature per record, in order. At most `TRANSACTION_BATCH_MAX` records.
pub fn sign_transaction_batch(private: &RsaPrivate, records: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, CryptoError> {
    let leaves: Vec<[u8; 32]> = records.iter().map(|message| crypto::hash(message)).collect();
    let (root, paths) = crate::merkle::root_and_proofs(&leaves);
    let size = u32::try_from(leaves.len()).unwrap_or(u32::MAX);
    let root_signature = crypto::sign(private, &batch_root_message(&root, size))?;
    Ok(paths
        .into_iter()
        .enumerate()
        .map(|(index, path)| BatchSignature { index: u32::try_from(index).unwrap_or(u32::MAX), size, path, root_signature: &root_signature }.encode())
        .collect())
}

// ---- delivered copies ----------------------------------------------------------------------

pub const DELIVERED_MAGIC: &[u8; 4] = b"VSDC";
pub const DELIVERED_FORMAT_VERSION: u8 = 1;

/// A parsed delivered copy, borrowing from the file's bytes.
#[derive(Debug)]
pub struct DeliveredCopy<'a> {
    pub format_version: u8,
    pub record: TransactionRecord,
    pub signature: &'a [u8],
    pub content: &'a [u8],
}

/// What checking a delivered copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCheck {
    /// The engine's signature over the record verifies (and the record names that key).
    pub signature: Result<(), TransactionError>,
    /// The content is what the record's content hash names.
    pub content_ok: bool,
}

impl CopyCheck {
    pub fn ok(&self) -> bool {
        self.signature.is_ok() && self.content_ok
    }
}

impl DeliveredCopy<'_> {
    /// Checks the record's signature with the engine's public key and the content against
    /// the record's content hash.
    pub fn check(&self, engine: &RsaPublic) -> CopyCheck {
        CopyCheck { signature: verify_transaction(engine, &self.record, self.signature), content_ok: self.content_ok() }
    }

    /// The content is what the record names (no key needed).
    pub fn content_ok(&self) -> bool {
        crypto::ct_eq(&crypto::hash(self.content), &self.record.content_hash)
    }
}

/// The header of a delivered copy: everything before the content, which follows it
/// (`content_len` bytes), so a player can write the content as it decrypts it.
pub fn delivered_copy_header(record: &TransactionRecord, signature: &[u8], content_len: u64) -> Vec<u8> {
    let message = record.message();
    let mut header = Vec::with_capacity(4 + 1 + 4 + message.len() + 2 + signature.len() + 8);
    header.extend_from_slice(DELIVERED_MAGIC);
    header.push(DELIVERED_FORMAT_VERSION);
    header.extend_from_slice(&(message.len() as u32).to_le_bytes());
    header.extend_from_slice(&message);
    header.extend_from_slice(&(signature.len() as u16).to_le_bytes());
    header.extend_from_slice(signature);
    header.extend_from_slice(&content_len.to_le_bytes());
    header
}

/// A whole delivered copy: the header and the content.
pub fn delivered_copy(record: &TransactionRecord, signature: &[u8], content: &[u8]) -> Vec<u8> {
    let mut bytes = delivered_copy_header(record, signature, content.len() as u64);
    bytes.extend_from_slice(content);
    bytes
}

/// Parses an untrusted delivered copy (never panics; every length is bounded).
pub fn parse_delivered_copy(bytes: &[u8]) -> Result<DeliveredCopy<'_>, ContainerError> {
    if bytes.len() > CONTAINER_BYTES_MAX.saturating_add(RECORD_BYTES_MAX + SIGNATURE_BYTES_MAX + 64) {
        return Err(ContainerError::TooLarge(bytes.len()));
    }
    let mut reader = Reader::new(bytes);
    if reader.take(4)? != DELIVERED_MAGIC {
        return Err(ContainerError::BadMagic);
    }
    let format_version = reader.u8()?;
    if format_version != DELIVERED_FORMAT_VERSION {
        return Err(ContainerError::Version(format_version));
    }
    let record_len = reader.u32()?;
    let record_len = reader.bounded(u64::from(record_len), RECORD_BYTES_MAX, "the transaction record")?;
    let record = TransactionRecord::decode(reader.take(record_len)?)?;
    let signature_len = reader.u16()?;
    let signature_len = reader.bounded(u64::from(signature_len), SIGNATURE_BYTES_MAX, "the signature")?;
    let signature = reader.take(signature_len)?;
    let content_len = reader.u64()?;
    let content_len = reader.bounded(content_len, CONTAINER_BYTES_MAX, "the content")?;
    let content = reader.take(content_len)?;
    reader.finish()?;
    Ok(DeliveredCopy { format_version, record, signature, content })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_a_wrong_key_fails() {
        let key = SecretKey::random();
        let content = b"a song, for sale".repeat(100);
        let bytes = seal(&key, &content);
        assert_eq!(open(&key, &bytes).expect("opens"), content);
        assert_eq!(parse_v1(&bytes).expect("parses").content_hash, crypto::hash(&content));
        assert_eq!(open(&SecretKey::random(), &bytes), Err(ContainerError::Decrypt));
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused_without_panic() {
        let key = SecretKey::random();
        let bytes = seal(&key, b"short content");
        for cut in 0..bytes.len() {
            assert!(open(&key, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                assert!(open(&key, &flipped).is_err(), "bit {bit} of byte {i}");
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(parse_v1(&longer).map(|_| ()), Err(ContainerError::Trailing(1)));
        let mut huge_len = bytes.clone();
        huge_len[49..57].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse_v1(&huge_len), Err(ContainerError::TooLarge(_) | ContainerError::Truncated { .. })));
    }

    fn record() -> TransactionRecord {
        TransactionRecord {
            voucher_id: VoucherId::new("v1"),
            media_id: MediaId::new("md1"),
            rendition: "high".into(),
            node_id: NodeId::new("n1"),
            delivered_at: Millis(1_700_000_000_123),
            engine_key_id: crypto::test_keys::fixed_rsa().public().key_id(),
            consumer_id: ConsumerId::new("alice"),
            cert_serial: CertSerial::new("c1"),
            content_hash: crypto::hash(b"the content"),
        }
    }

    #[test]
    fn a_transaction_record_round_trips_and_every_field_is_signed() {
        let record = record();
        let message = transaction_message(&record);
        assert_eq!(TransactionRecord::decode(&message).expect("decodes"), record);
        let engine = crypto::test_keys::fixed_rsa();
        let signature = crypto::sign(&engine, &message).expect("signs");
        verify_transaction(&engine.public(), &record, &signature).expect("verifies");
        let changed: Vec<TransactionRecord> = vec![
            TransactionRecord { voucher_id: VoucherId::new("v2"), ..record.clone() },
            TransactionRecord { media_id: MediaId::new("md2"), ..record.clone() },
            TransactionRecord { rendition: "low".into(), ..record.clone() },
            TransactionRecord { node_id: NodeId::new("n2"), ..record.clone() },
            TransactionRecord { delivered_at: Millis(record.delivered_at.0 + 1), ..record.clone() },
            TransactionRecord { consumer_id: ConsumerId::new("bob"), ..record.clone() },
            TransactionRecord { cert_serial: CertSerial::new("c2"), ..record.clone() },
            TransactionRecord { content_hash: crypto::hash(b"other content"), ..record.clone() },
            // Field boundaries are framed: moving a byte from one id to the next changes the message.
            TransactionRecord { voucher_id: VoucherId::new("v1m"), media_id: MediaId::new("d1"), ..record.clone() },
        ];
        for other in &changed {
            assert_ne!(transaction_message(other), message, "{other:?}");
            assert_eq!(verify_transaction(&engine.public(), other, &signature), Err(TransactionError::BadSignature), "{other:?}");
        }
        // Stamped with another key: named by its key id, and refused.
        let other_engine = crypto::test_keys::fixed_rsa_2();
        assert!(matches!(verify_transaction(&other_engine.public(), &record, &signature), Err(TransactionError::KeyId { .. })));
        let forged = TransactionRecord { engine_key_id: other_engine.public().key_id(), ..record.clone() };
        let forged_signature = crypto::sign(&other_engine, &forged.message()).expect("signs");
        assert!(verify_transaction(&engine.public(), &forged, &forged_signature).is_err(), "another engine's stamp");
    }

    #[test]
    fn a_delivered_copy_round_trips_and_is_checked() {
        let engine = crypto::test_keys::fixed_rsa();
        let record = record();
        let signature = crypto::sign(&engine, &record.message()).expect("signs");
        let bytes = delivered_copy(&record, &signature, b"the content");
        let copy = parse_delivered_copy(&bytes).expect("parses");
        assert_eq!((copy.record.clone(), copy.signature, copy.content), (record.clone(), signature.as_slice(), b"the content".as_slice()));
        assert!(copy.check(&engine.public()).ok());
        assert_eq!(delivered_copy_header(&record, &signature, 11).len() + 11, bytes.len());

        // Altered content: the signature still verifies, the content does not match.
        let mut altered = bytes.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let check = parse_delivered_copy(&altered).expect("parses").check(&engine.public());
        assert!(check.signature.is_ok() && !check.content_ok && !check.ok());
        // Checked with another engine's key.
        assert!(!copy.check(&crypto::test_keys::fixed_rsa_2().public()).ok());
        // Every flipped byte outside the content is refused or fails the check.
        let content_at = bytes.len() - 11;
        for i in 0..content_at {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x40;
            if let Ok(copy) = parse_delivered_copy(&flipped) {
                assert!(!copy.check(&engine.public()).ok(), "byte {i}");
            }
        }
        for cut in 0..bytes.len() {
            assert!(parse_delivered_copy(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(parse_delivered_copy(&longer).map(|_| ()), Err(ContainerError::Trailing(1)));
        let mut huge = bytes.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_delivered_copy(&huge), Err(ContainerError::Malformed(_))));
        let mut huge_content = bytes;
        huge_content[content_at - 8..content_at].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse_delivered_copy(&huge_content), Err(ContainerError::Malformed(_))));
    }

    fn content(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// A small format-2 container: two renditions (the first spans several chunks, the
    /// last one partial), free and encrypted components, and a preview clip.
    fn sealed_v2(media_key: &SecretKey) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (high, low) = (content(1, 5000), content(2, 1500));
        let media_id = MediaId::new("md1");
        let spec = ContainerSpec {
            media_id: &media_id,
            length_ms: 10_000,
            for_sale: true,
            chunk_bytes: CHUNK_BYTES_MIN,
            components: vec![
                ComponentSpec { name: "title", media_type: "text/plain; charset=utf-8", encrypted: false, data: b"Blue Vouchers" },
                ComponentSpec { name: "artist", media_type: "text/plain; charset=utf-8", encrypted: false, data: b"The Receipts" },
                ComponentSpec { name: "lyrics", media_type: "text/plain; charset=utf-8", encrypted: true, data: b"la la la" },
            ],
            renditions: vec![RenditionSpec { name: "high", bitrate_kbps: 256, content: &high }, RenditionSpec { name: "low", bitrate_kbps: 96, content: &low }],
            preview: Some(PreviewSpec { start_ms: 1000, duration_ms: 3000, fade_in_ms: 500, fade_out_ms: 500, media_type: "audio/mpeg", clip: b"free clip" }),
        };
        (seal_v2(&spec, media_key, &crypto::test_keys::fixed_rsa()).expect("seals"), high, low)
    }

    #[test]
    fn a_format_2_container_round_trips() {
        let key = SecretKey::random();
        let (bytes, high, low) = sealed_v2(&key);
        let Parsed::V2(container) = parse(&bytes).expect("parses") else { panic!("format 2") };
        assert_eq!(container.verify().expect("verifies").key_id(), crypto::test_keys::fixed_rsa().public().key_id());
        assert_eq!(container.media_id, MediaId::new("md1"));
        assert!(container.for_sale);
        assert_eq!(container.renditions.iter().map(|r| (r.name.as_str(), r.size_bytes, r.chunk_count)).collect::<Vec<_>>(), [("high", 5000, 5), ("low", 1500, 2)]);
        assert_eq!(container.open_rendition(&key, 0).expect("high"), high);
        assert_eq!(container.open_rendition(&key, 1).expect("low"), low);
        assert_eq!(container.free_component("title"), Some(b"Blue Vouchers".as_slice()));
        assert_eq!(container.free_component("lyrics"), None, "encrypted");
        let (lyrics, _) = container.component("lyrics").expect("lyrics");
        assert_eq!(container.open_component(&key, lyrics).expect("opens"), b"la la la");
        assert_eq!(container.open_component(&SecretKey::random(), lyrics), Err(ContainerError::Decrypt));
        assert_eq!(container.preview_clip(), Some(b"free clip".as_slice()));
        assert_eq!(container.open_rendition(&SecretKey::random(), 0), Err(ContainerError::Decrypt));
        // Chunks cannot be swapped between positions or renditions.
        let (first, _) = container.chunk_range(0, 0).expect("chunk 0");
        let (second, len) = container.chunk_range(0, 1).expect("chunk 1");
        let sealed_second = &bytes[second as usize..(second + len) as usize];
        assert!(container.open_chunk(&key, 0, 1, sealed_second).is_ok());
        assert_eq!(container.open_chunk(&key, 0, 0, sealed_second), Err(ContainerError::Decrypt));
        assert_eq!(container.open_chunk(&key, 1, 1, sealed_second), Err(ContainerError::Decrypt));
        assert!(first < second);
    }

    #[test]
    fn seeking_decrypts_from_any_chunk_the_same_bytes_as_a_full_decryption() {
        let key = SecretKey::random();
        let (bytes, high, _) = sealed_v2(&key);
        let Parsed::V2(container) = parse(&bytes).expect("parses") else { panic!("format 2") };
        let full = container.open_rendition(&key, 0).expect("full");
        assert_eq!(full, high);
        let entry = &container.renditions[0];
        for start in 0..entry.chunk_count {
            let mut tail = Vec::new();
            for chunk in start..entry.chunk_count {
                // From the node's byte range, as a player streaming from an offset gets it.
                let (offset, len) = container.chunk_range(0, chunk).expect("range");
                tail.extend_from_slice(&container.open_chunk(&key, 0, chunk, &bytes[offset as usize..(offset + len) as usize]).expect("chunk"));
            }
            let plain_offset = entry.index_entries[start as usize].plain_offset as usize;
            assert_eq!(tail, full[plain_offset..], "from chunk {start}");
        }
        // The index maps play time to chunks: 5000 bytes over 10 s, 1024-byte chunks.
        assert_eq!(container.chunk_at(0, 0), Some(0));
        assert_eq!(container.chunk_at(0, 2047), Some(0));
        assert_eq!(container.chunk_at(0, 2048), Some(1));
        assert_eq!(container.chunk_at(0, 9_999), Some(4));
    }

    #[test]
    fn every_flipped_byte_and_truncation_of_a_format_2_container_is_refused() {
        let key = SecretKey::random();
        let (bytes, _, _) = sealed_v2(&key);
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            let accepted = match parse(&flipped) {
                Ok(Parsed::V2(container)) => container.verify().is_ok(),
                Ok(Parsed::V1(_)) | Err(_) => false,
            };
            assert!(!accepted, "a flipped bit at byte {i} was accepted as signed");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(parse(&longer), Err(ContainerError::Trailing(1))));
        // Oversized lengths are clean errors: the signature and toc lengths in the header.
        let mut huge = bytes.clone();
        huge[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(parse(&huge), Err(ContainerError::Malformed(_))));
        let mut huge = bytes;
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&huge), Err(ContainerError::Malformed(_))));
    }

    #[test]
    fn a_container_re_signed_by_another_key_names_that_key() {
        let key = SecretKey::random();
        let media_id = MediaId::new("md1");
        let spec = ContainerSpec {
            media_id: &media_id,
            length_ms: 0,
            for_sale: false,
            chunk_bytes: CHUNK_BYTES_DEFAULT,
            components: Vec::new(),
            renditions: vec![RenditionSpec { name: "high", bitrate_kbps: 256, content: b"x" }],
            preview: None,
        };
        let other = crypto::test_keys::fixed_rsa_2();
        let bytes = seal_v2(&spec, &key, &other).expect("seals");
        let Parsed::V2(container) = parse(&bytes).expect("parses") else { panic!("format 2") };
        assert_eq!(container.verify().expect("self-consistent").key_id(), other.public().key_id());
        assert_ne!(container.verify().expect("verifies").key_id(), crypto::test_keys::fixed_rsa().public().key_id());
        // Bad specs are refused before anything is sealed.
        let bad = ContainerSpec { chunk_bytes: 10, ..spec.clone() };
        assert!(matches!(seal_v2(&bad, &key, &other), Err(ContainerError::Malformed(_))));
        let bad = ContainerSpec { renditions: Vec::new(), ..spec.clone() };
        assert!(seal_v2(&bad, &key, &other).is_err());
        let bad = ContainerSpec { preview: Some(PreviewSpec { start_ms: 0, duration_ms: 1, fade_in_ms: 0, fade_out_ms: 0, media_type: "audio/mpeg", clip: b"" }), ..spec };
        assert!(seal_v2(&bad, &key, &other).is_err(), "a preview past the media's end");
    }
}
