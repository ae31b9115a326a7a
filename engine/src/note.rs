//! C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, and the checkpoints they
//! carry (c2sp.org/tlog-checkpoint): the standard form of a royalty seal, which any tlog
//! verifier or witness can read. Text only; no I/O.
//!
//! A note is a text ending in a newline, a blank line, then lines `— <key name>
//! base64(key ID ‖ signature)`. An Ed25519 key's ID is `SHA-256(name ‖ 0x0A ‖ 0x01 ‖
//! public key)[:4]`; its verifier key (vkey) is `<name>+<hex key ID>+base64(0x01 ‖ public
//! key)` and its private key file `PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 ‖ seed)`, as
//! Go's `golang.org/x/mod/sumdb/note` writes them. A checkpoint's text is its origin, its
//! tree size in decimal and its root in base64, a line each; the key name is the origin.
//! Not here: the tree (`crate::tlog`), where keys are stored (the gateways' `keys`).

use crate::crypto::{self, ED25519_KEY_BYTES, Ed25519Private, Ed25519Public};
use crate::tlog::Hash;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt;

/// The signature type byte of Ed25519 note signatures.
pub const SIGNATURE_TYPE_ED25519: u8 = 0x01;
/// Largest note a verifier reads, in bytes (a checkpoint with dozens of cosignatures fits).
pub const NOTE_BYTES_MAX: usize = 64 * 1024;
/// Most signature lines a verifier reads (the spec asks for at least 16).
pub const NOTE_SIGNATURES_MAX: usize = 100;
/// A key ID and an Ed25519 signature: what a note's signature line carries.
pub const NOTE_SIGNATURE_BYTES: usize = 4 + crypto::ED25519_SIGNATURE_BYTES;

pub(crate) const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("key name {0:?} is empty or holds a space or '+'")]
    KeyName(String),
    #[error("not a key line: {0}")]
    KeyLine(&'static str),
    #[error("not a signed note: {0}")]
    Malformed(String),
    #[error("the note carries no signature by {0}")]
    Unsigned(String),
    #[error("the signature by {0} does not verify (altered text, or another key)")]
    BadSignature(String),
    #[error("not a checkpoint: {0}")]
    Checkpoint(String),
}

pub(crate) fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+' || c.is_control()) {
        return Err(NoteError::KeyName(name.to_string()));
    }
    Ok(())
}

/// `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]`.
pub fn key_id(name: &str, public: &Ed25519Public) -> [u8; 4] {
    let hash = crypto::sha256(&[name.as_bytes(), b"\n", &[SIGNATURE_TYPE_ED25519], &public.to_bytes()]);
    [hash[0], hash[1], hash[2], hash[3]]
}

/// Splits `name+hexid+base64(0x01 ‖ key)` and checks the type byte and the ID.
fn parse_key_line(line: &str) -> Result<(String, [u8; 4], [u8; ED25519_KEY_BYTES]), NoteError> {
    parse_typed_key_line(line, SIGNATURE_TYPE_ED25519)
}

/// `name+hexid+base64(type ‖ key)`: a vkey line (a public key), or the body of a private
/// key line (a seed: the caller zeroizes what it passed; the line is a secret then).
pub(crate) fn key_line(name: &str, id: [u8; 4], type_byte: u8, key: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(1 + key.len());
    bytes.push(type_byte);
    bytes.extend_from_slice(key);
    let line = format!("{name}+{}+{}", hex::encode(id), BASE64.encode(&bytes));
    zeroize::Zeroize::zeroize(&mut bytes);
    line
}

/// A private key line `PRIVATE+KEY+name+hexid+base64(type ‖ seed)`, its key ID and key for
/// the caller to check; errors never quote the line.
pub(crate) fn parse_private_line(line: &str, type_byte: u8) -> Result<(String, [u8; 4], Ed25519Private), NoteError> {
    let rest = line.trim().strip_prefix(PRIVATE_KEY_PREFIX).ok_or(NoteError::KeyLine("a private key line starts with PRIVATE+KEY+"))?;
    let (name, id, mut seed) = parse_typed_key_line(rest, type_byte)?;
    let key = Ed25519Private::from_seed(&seed);
    zeroize::Zeroize::zeroize(&mut seed);
    Ok((name, id, key))
}

/// The private key line of `key` (a secret: for the key file only).
pub(crate) fn private_line(name: &str, id: [u8; 4], type_byte: u8, key: &Ed25519Private) -> String {
    let mut seed = key.seed();
    let line = format!("{PRIVATE_KEY_PREFIX}{}", key_line(name, id, type_byte, &seed));
    zeroize::Zeroize::zeroize(&mut seed);
    line
}

/// Splits `name+hexid+base64(type ‖ key)` for an Ed25519 key of signature type `type_byte`.
pub(crate) fn parse_typed_key_line(line: &str, type_byte: u8) -> Result<(String, [u8; 4], [u8; ED25519_KEY_BYTES]), NoteError> {
    let mut parts = line.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::KeyLine("expected <name>+<key id>+<key>"));
    };
    check_name(name)?;
    let mut key_id = [0u8; 4];
    if id.len() != 8 || hex::decode_to_slice(id, &mut key_id).is_err() {
        return Err(NoteError::KeyLine("the key id is not 8 hex digits"));
    }
    let bytes = BASE64.decode(key).map_err(|_| NoteError::KeyLine("the key is not base64"))?;
    let Some((_, key)) = bytes.split_first().filter(|(key_type, _)| **key_type == type_byte) else {
        return Err(NoteError::KeyLine(if type_byte == SIGNATURE_TYPE_ED25519 {
            "not an ed25519 key (type 0x01)"
        } else {
            "not an ed25519 cosignature key (type 0x04)"
        }));
    };
    let key: [u8; ED25519_KEY_BYTES] = key.try_into().map_err(|_| NoteError::KeyLine("an ed25519 key has 32 bytes"))?;
    Ok((name.to_string(), key_id, key))
}

/// A note signer: a key name and an Ed25519 private key. Never printed.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    key: Ed25519Private,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner").field("name", &self.name).field("key", &"<redacted>").finish()
    }
}

impl NoteSigner {
    pub fn new(name: &str, key: Ed25519Private) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Self { name: name.to_string(), id: key_id(name, &key.public()), key })
    }

    /// A fresh key for `name`.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        Self::new(name, Ed25519Private::generate())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), id: self.id, key: self.key.public(), older: Vec::new() }
    }

    /// Key ID ‖ Ed25519 signature over `text` (which must end in a newline).
    pub fn sign(&self, text: &str) -> [u8; NOTE_SIGNATURE_BYTES] {
        let mut signature = [0u8; NOTE_SIGNATURE_BYTES];
        signature[..4].copy_from_slice(&self.id);
        signature[4..].copy_from_slice(&self.key.sign(text.as_bytes()));
        signature
    }

    /// The private key file's line. A secret: for the key file only.
    pub fn to_private_line(&self) -> String {
        private_line(&self.name, self.id, SIGNATURE_TYPE_ED25519, &self.key)
    }

    /// Reads a private key line; its ID must match the key. Errors never quote the line.
    pub fn from_private_line(line: &str) -> Result<Self, NoteError> {
        let (name, id, key) = parse_private_line(line, SIGNATURE_TYPE_ED25519)?;
        let signer = Self::new(&name, key)?;
        if signer.id != id {
            return Err(NoteError::KeyLine("the key id does not match the key"));
        }
        Ok(signer)
    }
}

/// A note verifier: a key name, ID and Ed25519 public key (a vkey line), and the keys of
/// the same name it replaced (a rotated checkpoint key): a signature by any of them, found
/// by its key ID, verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: Ed25519Public,
    older: Vec<([u8; 4], Ed25519Public)>,
}

impl NoteVerifier {
    /// Reads a vkey line `<name>+<hex key id>+base64(0x01 ‖ public key)`; several lines
    /// (newest first, one name) make a key set whose first key is the current one.
    pub fn from_vkey(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
        let mut verifier = Self::from_vkey_line(lines.next().unwrap_or_default())?;
        for line in lines {
            verifier = verifier.with_older(&Self::from_vkey_line(line)?)?;
        }
        Ok(verifier)
    }

    fn from_vkey_line(line: &str) -> Result<Self, NoteError> {
        let (name, id, key) = parse_key_line(line)?;
        let key = Ed25519Public::from_bytes(&key).map_err(|_| NoteError::KeyLine("not an ed25519 public key"))?;
        if key_id(&name, &key) != id {
            return Err(NoteError::KeyLine("the key id does not match the key"));
        }
        Ok(Self { name, id, key, older: Vec::new() })
    }

    /// This key with `older`'s keys (same name) accepted too.
    pub fn with_older(mut self, older: &NoteVerifier) -> Result<Self, NoteError> {
        if older.name != self.name {
            return Err(NoteError::KeyLine("the keys of one log share its name"));
        }
        for (id, key) in std::iter::once((older.id, older.key)).chain(older.older.iter().copied()) {
            if id != self.id && !self.older.iter().any(|(known, _)| *known == id) {
                self.older.push((id, key));
            }
        }
        Ok(self)
    }

    /// Every vkey line: the current key, then the older ones.
    pub fn vkeys(&self) -> Vec<String> {
        std::iter::once(self.vkey()).chain(self.older.iter().map(|(id, key)| vkey_line(&self.name, *id, key))).collect()
    }

    fn knows(&self, id: &[u8]) -> bool {
        id == self.id || self.older.iter().any(|(known, _)| known == id)
    }

    /// The current key's vkey line.
    pub fn vkey(&self) -> String {
        vkey_line(&self.name, self.id, &self.key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` (key ID ‖ Ed25519 signature) is by this key, or one of its older
    /// keys, over `text`.
    pub fn verify(&self, text: &str, signature: &[u8]) -> bool {
        if signature.len() != NOTE_SIGNATURE_BYTES {
            return false;
        }
        let key = if signature[..4] == self.id { Some(&self.key) } else { self.older.iter().find(|(id, _)| signature[..4] == *id).map(|(_, key)| key) };
        key.is_some_and(|key| key.verify(text.as_bytes(), &signature[4..]).is_ok())
    }
}

fn vkey_line(name: &str, id: [u8; 4], key: &Ed25519Public) -> String {
    key_line(name, id, SIGNATURE_TYPE_ED25519, &key.to_bytes())
}

/// A parsed signed note: its text (with the final newline) and its signature lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedNote {
    pub text: String,
    pub signatures: Vec<(String, Vec<u8>)>,
}

impl SignedNote {
    /// Parses a note (bounded; UTF-8 without control characters but newlines).
    pub fn parse(bytes: &[u8]) -> Result<Self, NoteError> {
        let malformed = |reason: &str| NoteError::Malformed(reason.to_string());
        if bytes.len() > NOTE_BYTES_MAX {
            return Err(malformed("larger than a note may be"));
        }
        let note = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8"))?;
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(malformed("holds a control character"));
        }
        let split = note.rfind("\n\n").ok_or_else(|| malformed("no blank line before the signatures"))?;
        let (text, block) = (&note[..=split], &note[split + 2..]);
        if !block.ends_with('\n') {
            return Err(malformed("the signatures do not end in a newline"));
        }
        let mut signatures = Vec::new();
        for line in block.lines() {
            if signatures.len() == NOTE_SIGNATURES_MAX {
                return Err(malformed("too many signatures"));
            }
            let rest = line.strip_prefix("\u{2014} ").ok_or_else(|| malformed("a signature line starts with an em dash and a space"))?;
            let (name, signature) = rest.split_once(' ').ok_or_else(|| malformed("a signature line names its key, then the signature"))?;
            check_name(name)?;
            let signature = BASE64.decode(signature).map_err(|_| malformed("a signature is not base64"))?;
            if signature.len() < 4 {
                return Err(malformed("a signature is shorter than its key id"));
            }
            signatures.push((name.to_string(), signature));
        }
        if signatures.is_empty() {
            return Err(malformed("no signature"));
        }
        Ok(Self { text: text.to_string(), signatures })
    }

    /// The note's bytes.
    pub fn format(&self) -> String {
        let mut note = self.text.clone();
        note.push('\n');
        for (name, signature) in &self.signatures {
            note.push_str(&format!("\u{2014} {name} {}\n", BASE64.encode(signature)));
        }
        note
    }

    /// Checks the signature of `verifier`'s key (name and ID both match; other keys'
    /// signatures are ignored, as the spec asks): its text, once verified.
    pub fn open(&self, verifier: &NoteVerifier) -> Result<&str, NoteError> {
        let mut known = self.signatures.iter().filter(|(name, signature)| *name == verifier.name && verifier.knows(&signature[..4])).peekable();
        if known.peek().is_none() {
            return Err(NoteError::Unsigned(verifier.vkey()));
        }
        if known.all(|(_, signature)| verifier.verify(&self.text, signature)) { Ok(&self.text) } else { Err(NoteError::BadSignature(verifier.name.clone())) }
    }
}

/// A C2SP tlog checkpoint: the origin, the tree size and its RFC 6962 root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// `origin\nsize\nbase64(root)\n`: the note text.
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, BASE64.encode(self.root))
    }

    /// Reads a checkpoint's text; extension lines after the root are ignored.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |reason: &str| NoteError::Checkpoint(reason.to_string());
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|origin| !origin.is_empty()).ok_or_else(|| bad("no origin line"))?;
        let size = lines.next().ok_or_else(|| bad("no size line"))?;
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) || (size.len() > 1 && size.starts_with('0')) {
            return Err(bad("the size is not a decimal number without leading zeros"));
        }
        let size = size.parse().map_err(|_| bad("the size does not fit 64 bits"))?;
        let root = lines.next().ok_or_else(|| bad("no root line"))?;
        let root = BASE64.decode(root).ok().and_then(|root| Hash::try_from(root).ok()).ok_or_else(|| bad("the root is not 32 bytes of base64"))?;
        if !text.ends_with('\n') {
            return Err(bad("the text does not end in a newline"));
        }
        Ok(Self { origin: origin.to_string(), size, root })
    }

    /// The signed note of this checkpoint with one signature by `signer` (whose name is the origin).
    pub fn sign(&self, signer: &NoteSigner) -> (String, [u8; NOTE_SIGNATURE_BYTES]) {
        let signature = signer.sign(&self.text());
        (self.note(signer.name(), &signature), signature)
    }

    /// The signed note of this checkpoint with `signature` (key ID ‖ signature) by `name`.
    pub fn note(&self, name: &str, signature: &[u8]) -> String {
        SignedNote { text: self.text(), signatures: vec![(name.to_string(), signature.to_vec())] }.format()
    }

    /// A checkpoint note verified with `verifier`, whose name must be the origin.
    pub fn open(note: &[u8], verifier: &NoteVerifier) -> Result<Self, NoteError> {
        let note = SignedNote::parse(note)?;
        let checkpoint = Checkpoint::parse(note.open(verifier)?)?;
        if checkpoint.origin != verifier.name {
            return Err(NoteError::Checkpoint(format!("origin {:?} is not the key's name {:?}", checkpoint.origin, verifier.name)));
        }
        Ok(checkpoint)
    }
}

/// The first line of a C2SP offline proof (c2sp.org/tlog-proof).
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A C2SP `tlog-proof@v1`: optional opaque extra data (unauthenticated: the application
/// must bind it through the leaf), the entry's index, its inclusion proof, and the
/// checkpoint note verbatim. Stored as `.tlog-proof` files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, as the log issued it.
    pub checkpoint: String,
}

impl TlogProof {
    pub fn format(&self) -> String {
        let mut text = format!("{TLOG_PROOF_HEADER}\n");
        if let Some(extra) = &self.extra {
            text.push_str(&format!("extra {}\n", BASE64.encode(extra)));
        }
        text.push_str(&format!("index {}\n", self.index));
        for hash in &self.proof {
            text.push_str(&format!("{}\n", BASE64.encode(hash)));
        }
        text.push('\n');
        text.push_str(&self.checkpoint);
        text
    }

    /// Parses a proof (bounded like a note, plus the proof's hashes and extra data).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |reason: &str| NoteError::Malformed(format!("tlog-proof: {reason}"));
        if text.len() > NOTE_BYTES_MAX * 4 {
            return Err(bad("larger than a proof may be"));
        }
        let rest =
            text.strip_prefix(TLOG_PROOF_HEADER).and_then(|rest| rest.strip_prefix('\n')).ok_or_else(|| bad("the first line is not c2sp.org/tlog-proof@v1"))?;
        let (head, checkpoint) = rest.split_once("\n\n").ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n').peekable();
        let extra = match lines.peek().and_then(|line| line.strip_prefix("extra ")) {
            Some(extra) => {
                let extra = BASE64.decode(extra).map_err(|_| bad("the extra data is not base64"))?;
                lines.next();
                Some(extra)
            }
            None => None,
        };
        let index = lines.next().and_then(|line| line.strip_prefix("index ")).ok_or_else(|| bad("no index line"))?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || (index.len() > 1 && index.starts_with('0')) {
            return Err(bad("the index is not a decimal number without leading zeros"));
        }
        let index = index.parse().map_err(|_| bad("the index does not fit 64 bits"))?;
        let mut proof = Vec::new();
        for line in lines {
            if proof.len() == crate::tlog::PROOF_HASHES_MAX {
                return Err(bad("a longer proof than any tree needs"));
            }
            let hash = BASE64.decode(line).ok().and_then(|hash| Hash::try_from(hash).ok()).ok_or_else(|| bad("a proof line is not a base64 SHA-256 hash"))?;
            proof.push(hash);
        }
        Ok(Self { extra, index, proof, checkpoint: checkpoint.to_string() })
    }
}

#[cfg(test)]
mod tests;
