//! The decision of a C2SP tlog-witness (c2sp.org/tlog-witness) on an `add-checkpoint`
//! request, as a pure function: the request body (`old <size>`, at most 63 base64
//! consistency-proof lines, an empty line, the checkpoint note), the logs the witness
//! knows (origin → the log's note verifier) and the newest checkpoint it cosigned for that
//! origin. The answer is the checkpoint to cosign, or a refusal carrying the HTTP status
//! the spec prescribes: 400 malformed (or an old size above the checkpoint's), 404 unknown
//! origin, 403 no trusted signature verifies, 409 the old size is not the one recorded (or
//! the same size with another root: a fork), 422 the consistency proof does not verify.
//! Not here: storing the new size atomically and answering (the `witness` program), the
//! cosignature itself (`crate::cosignature`).

use crate::note::{Checkpoint, NoteVerifier, SignedNote};
use crate::tlog::{self, Hash};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::collections::BTreeMap;

/// Most consistency-proof lines a request may carry.
pub const PROOF_LINES_MAX: usize = 63;
/// The largest request body read.
pub const REQUEST_BYTES_MAX: usize = crate::note::NOTE_BYTES_MAX + (PROOF_LINES_MAX + 1) * 64;

/// A parsed `add-checkpoint` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old_size: u64,
    pub proof: Vec<Hash>,
    pub note: SignedNote,
}

/// What the witness recorded for a log: the newest checkpoint it cosigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    pub size: u64,
    #[serde(with = "hex_hash")]
    pub root: Hash,
}

mod hex_hash {
    pub fn serialize<S: serde::Serializer>(hash: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(hash))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text: String = serde::Deserialize::deserialize(deserializer)?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&text, &mut hash).map_err(serde::de::Error::custom)?;
        Ok(hash)
    }
}

/// Why a witness does not cosign.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("unknown log origin {0:?}")]
    UnknownLog(String),
    #[error("no signature by a key trusted for {0:?} verifies")]
    Forbidden(String),
    #[error("the old size is not {recorded}, the size of the newest checkpoint cosigned")]
    WrongOldSize { recorded: u64 },
    #[error("a checkpoint of size {size} with another root was cosigned (a fork)")]
    Fork { size: u64 },
    #[error("the consistency proof does not verify")]
    BadProof,
}

impl Refusal {
    /// The HTTP status the spec gives it.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::UnknownLog(_) => 404,
            Refusal::Forbidden(_) => 403,
            Refusal::WrongOldSize { .. } | Refusal::Fork { .. } => 409,
            Refusal::BadProof => 422,
        }
    }

    /// The recorded size a 409 answer carries (`text/x.tlog.size`).
    pub fn recorded_size(&self) -> Option<u64> {
        match self {
            Refusal::WrongOldSize { recorded } => Some(*recorded),
            Refusal::Fork { size } => Some(*size),
            _ => None,
        }
    }
}

/// The request body of `add-checkpoint` for `note` from `old_size` with `proof`.
pub fn request_body(old_size: u64, proof: &[Hash], note: &str) -> String {
    let mut body = format!("old {old_size}\n");
    for hash in proof {
        body.push_str(&BASE64.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// Parses a request body (bounded).
pub fn parse_request(body: &[u8]) -> Result<AddCheckpoint, Refusal> {
    let bad = |reason: &str| Refusal::BadRequest(reason.to_string());
    if body.len() > REQUEST_BYTES_MAX {
        return Err(bad("larger than a request may be"));
    }
    let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
    let (head, note) = text.split_once("\n\n").ok_or_else(|| bad("no empty line before the checkpoint"))?;
    let mut lines = head.split('\n');
    let old = lines.next().and_then(|line| line.strip_prefix("old ")).ok_or_else(|| bad("the first line is not `old <size>`"))?;
    if old.is_empty() || !old.bytes().all(|b| b.is_ascii_digit()) || (old.len() > 1 && old.starts_with('0')) {
        return Err(bad("the old size is not a decimal number without leading zeros"));
    }
    let old_size = old.parse().map_err(|_| bad("the old size does not fit 64 bits"))?;
    let mut proof = Vec::new();
    for line in lines {
        if proof.len() == PROOF_LINES_MAX {
            return Err(bad("more than 63 proof lines"));
        }
        proof.push(BASE64.decode(line).ok().and_then(|hash| Hash::try_from(hash).ok()).ok_or_else(|| bad("a proof line is not a base64 SHA-256 hash"))?);
    }
    let note = SignedNote::parse(note.as_bytes()).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    Ok(AddCheckpoint { old_size, proof, note })
}

/// The witness's decision: the checkpoint to cosign (and record), or the refusal.
pub fn decide(request: &AddCheckpoint, logs: &BTreeMap<String, NoteVerifier>, recorded: Option<Recorded>) -> Result<Checkpoint, Refusal> {
    let checkpoint = Checkpoint::parse(&request.note.text).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let verifier = logs.get(&checkpoint.origin).ok_or_else(|| Refusal::UnknownLog(checkpoint.origin.clone()))?;
    request.note.open(verifier).map_err(|_| Refusal::Forbidden(checkpoint.origin.clone()))?;
    if request.old_size > checkpoint.size {
        return Err(Refusal::BadRequest(format!("the old size {} is above the checkpoint's {}", request.old_size, checkpoint.size)));
    }
    let recorded_size = recorded.map_or(0, |recorded| recorded.size);
    if request.old_size != recorded_size {
        return Err(Refusal::WrongOldSize { recorded: recorded_size });
    }
    match recorded {
        None => {
            if !request.proof.is_empty() {
                return Err(Refusal::BadProof);
            }
        }
        Some(recorded) if recorded.size == checkpoint.size => {
            if recorded.root != checkpoint.root {
                return Err(Refusal::Fork { size: recorded.size });
            }
            if !request.proof.is_empty() {
                return Err(Refusal::BadProof);
            }
        }
        Some(recorded) => {
            if !tlog::verify_consistency(recorded.size, checkpoint.size, &recorded.root, &checkpoint.root, &request.proof) {
                return Err(Refusal::BadProof);
            }
        }
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests;
