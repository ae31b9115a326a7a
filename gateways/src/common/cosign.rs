//! The log's side of C2SP tlog-witness: `add_checkpoint` sends a checkpoint with the old
//! size and consistency proof to a witness and reads its answer (cosignature lines, the
//! recorded size of a 409, or another refusal); `cosigned_note` adds the lines that verify
//! with the witness's vkey to the note. Not here: the witness (`crate::witness` is a
//! program; this is what the engine and tests call it with).

use bytes::Bytes;
use engine::cosignature::CosignatureVerifier;
use engine::note::SignedNote;
use engine::tlog::Hash;

/// A witness's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200: its signature lines.
    Cosigned(String),
    /// 409: the size of the newest checkpoint it cosigned for the log.
    Conflict(u64),
    /// Any other status, with the witness's text.
    Refused(u16, String),
}

/// POSTs the checkpoint `note` from `old_size` with `proof` to `<prefix>/add-checkpoint`.
pub async fn add_checkpoint(prefix: &str, old_size: u64, proof: &[Hash], note: &str) -> anyhow::Result<Answer> {
    let body = engine::witness::request_body(old_size, proof, note);
    let url = format!("{}/add-checkpoint", prefix.trim_end_matches('/'));
    let answer = super::http_client::post(&url, "text/plain; charset=utf-8", Bytes::from(body)).await?;
    let text = String::from_utf8_lossy(&answer.body).to_string();
    Ok(match answer.status.as_u16() {
        200 => Answer::Cosigned(text),
        409 if answer.content_type.as_deref() == Some("text/x.tlog.size") => match text.strip_suffix('\n').and_then(|size| size.parse().ok()) {
            Some(size) => Answer::Conflict(size),
            None => Answer::Refused(409, text),
        },
        status => Answer::Refused(status, text),
    })
}

/// `note` with the lines of `answer` that are valid cosignatures by `witness` added
/// (`None`: none is).
pub fn cosigned_note(note: &str, answer: &str, witness: &CosignatureVerifier) -> Option<String> {
    let mut combined = note.to_string();
    combined.push_str(answer);
    let parsed = SignedNote::parse(combined.as_bytes()).ok()?;
    if !witness.cosigned(&parsed) {
        return None;
    }
    let original = SignedNote::parse(note.as_bytes()).ok()?;
    let mut signatures = original.signatures;
    for (name, signature) in parsed.signatures.into_iter().skip(signatures.len()) {
        if name == witness.name() && witness.verify(&parsed.text, &signature).is_some() {
            signatures.push((name, signature));
        }
    }
    Some(SignedNote { text: original.text, signatures }.format())
}
