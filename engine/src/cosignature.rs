//! C2SP `cosignature/v1` (c2sp.org/tlog-cosignature): a witness's timestamped Ed25519
//! signature over a checkpoint it verified, a note signature line whose key ID is
//! `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)[:4]` and whose bytes are key ID ‖ timestamp
//! (big-endian u64) ‖ signature over `"cosignature/v1\ntime <t>\n"` followed by the
//! checkpoint's note text. Keys as in `crate::note` with type byte 0x04 (vkey
//! `<name>+<hex id>+base64(0x04 ‖ key)`, private line `PRIVATE+KEY+…`). Text only; no I/O,
//! no clock (the time is the caller's). Not here: what a witness checks before cosigning
//! (`crate::witness`).

use crate::crypto::{self, ED25519_KEY_BYTES, Ed25519Private, Ed25519Public};
use crate::note::{NoteError, SignedNote, check_name, key_line, parse_private_line, parse_typed_key_line, private_line};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::collections::BTreeSet;
use std::fmt;

/// The signature type byte of Ed25519 cosignatures.
pub const SIGNATURE_TYPE_COSIGNATURE: u8 = 0x04;
/// Key ID, timestamp and Ed25519 signature: a cosignature line's bytes.
pub const COSIGNATURE_BYTES: usize = 4 + 8 + crypto::ED25519_SIGNATURE_BYTES;

/// `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)[:4]`.
pub fn key_id(name: &str, public: &Ed25519Public) -> [u8; 4] {
    let hash = crypto::sha256(&[name.as_bytes(), b"\n", &[SIGNATURE_TYPE_COSIGNATURE], &public.to_bytes()]);
    [hash[0], hash[1], hash[2], hash[3]]
}

/// What a cosignature signs: the header, the time line, then the checkpoint's note text.
pub fn message(text: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// A cosigner (a witness's key). Never printed.
#[derive(Clone)]
pub struct Cosigner {
    name: String,
    id: [u8; 4],
    key: Ed25519Private,
}

impl fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cosigner").field("name", &self.name).field("key", &"<redacted>").finish()
    }
}

impl Cosigner {
    pub fn new(name: &str, key: Ed25519Private) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Self { name: name.to_string(), id: key_id(name, &key.public()), key })
    }

    pub fn generate(name: &str) -> Result<Self, NoteError> {
        Self::new(name, Ed25519Private::generate())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier { name: self.name.clone(), id: self.id, key: self.key.public() }
    }

    /// Key ID ‖ timestamp ‖ signature over the checkpoint's note `text` at `timestamp`.
    pub fn cosign(&self, text: &str, timestamp: u64) -> [u8; COSIGNATURE_BYTES] {
        let mut signature = [0u8; COSIGNATURE_BYTES];
        signature[..4].copy_from_slice(&self.id);
        signature[4..12].copy_from_slice(&timestamp.to_be_bytes());
        signature[12..].copy_from_slice(&self.key.sign(&message(text, timestamp)));
        signature
    }

    /// The note signature line of `cosign`.
    pub fn line(&self, text: &str, timestamp: u64) -> String {
        format!("\u{2014} {} {}\n", self.name, BASE64.encode(self.cosign(text, timestamp)))
    }

    /// The private key file's line. A secret: for the key file only.
    pub fn to_private_line(&self) -> String {
        private_line(&self.name, self.id, SIGNATURE_TYPE_COSIGNATURE, &self.key)
    }

    /// Reads a private key line (type 0x04); its ID must match. Errors never quote the line.
    pub fn from_private_line(line: &str) -> Result<Self, NoteError> {
        let (name, id, key) = parse_private_line(line, SIGNATURE_TYPE_COSIGNATURE)?;
        let cosigner = Self::new(&name, key)?;
        if cosigner.id != id {
            return Err(NoteError::KeyLine("the key id does not match the key"));
        }
        Ok(cosigner)
    }
}

/// A witness's public key (a type-0x04 vkey).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    id: [u8; 4],
    key: Ed25519Public,
}

impl CosignatureVerifier {
    pub fn from_vkey(line: &str) -> Result<Self, NoteError> {
        let (name, id, key) = parse_typed_key_line(line, SIGNATURE_TYPE_COSIGNATURE)?;
        let key = Ed25519Public::from_bytes(&key).map_err(|_| NoteError::KeyLine("not an ed25519 public key"))?;
        if key_id(&name, &key) != id {
            return Err(NoteError::KeyLine("the key id does not match the key"));
        }
        Ok(Self { name, id, key })
    }

    pub fn vkey(&self) -> String {
        key_line(&self.name, self.id, SIGNATURE_TYPE_COSIGNATURE, &self.key.to_bytes())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The timestamp of `signature` if it is this key's cosignature over `text`.
    pub fn verify(&self, text: &str, signature: &[u8]) -> Option<u64> {
        if signature.len() != COSIGNATURE_BYTES || signature[..4] != self.id {
            return None;
        }
        let timestamp = u64::from_be_bytes(signature[4..12].try_into().expect("8 bytes"));
        self.key.verify(&message(text, timestamp), &signature[12..]).ok().map(|()| timestamp)
    }

    /// Whether `note` carries a valid cosignature of this key (lines of other keys are
    /// ignored; one of this key's that does not verify fails it).
    pub fn cosigned(&self, note: &SignedNote) -> bool {
        let mut mine = note.signatures.iter().filter(|(name, signature)| *name == self.name && signature.get(..4) == Some(&self.id[..])).peekable();
        mine.peek().is_some() && mine.all(|(_, signature)| self.verify(&note.text, signature).is_some())
    }
}

/// A witness policy: at least `quorum` of `witnesses` (distinct keys) must have cosigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessPolicy {
    pub witnesses: Vec<CosignatureVerifier>,
    pub quorum: usize,
}

impl WitnessPolicy {
    /// Which of the policy's witnesses cosigned `note`, or why the policy is not met.
    pub fn check(&self, note: &SignedNote) -> Result<Vec<String>, String> {
        let keys: BTreeSet<[u8; ED25519_KEY_BYTES]> = self.witnesses.iter().map(|witness| witness.key.to_bytes()).collect();
        let mut counted = BTreeSet::new();
        let mut names = Vec::new();
        for witness in &self.witnesses {
            if witness.cosigned(note) && counted.insert(witness.key.to_bytes()) {
                names.push(witness.name.clone());
            }
        }
        if names.len() >= self.quorum && self.quorum > 0 {
            Ok(names)
        } else {
            Err(format!("{} of the {} witnesses' keys cosigned the checkpoint; the policy needs {}", names.len(), keys.len(), self.quorum))
        }
    }
}

#[cfg(test)]
mod tests;
