//! HMAC-SHA256 and the tokens built on it: derived auth and receipt tokens, the player's
//! proof of holding a receipt, and the per-node delivery access tokens with their keys.
//!
//! What does not live here: where the token key comes from and how long a token lives
//! (the callers' business), and the plain blake3 functions (`hashing`), although the per-node
//! key is derived with blake3's `derive_key` mode here, next to the tokens it signs.

use super::{SecretKey, Token};
use hmac::{Hmac, KeyInit as _, Mac};

// Domain-separation labels and contexts. Changing any of them changes every derived value,
// so they carry a version.
const LABEL_AUTH_TOKEN: &[u8] = b"vouchsafe.auth-token.v1";
const LABEL_RECEIPT_TOKEN: &[u8] = b"vouchsafe.receipt-token.v1";
const LABEL_RECEIPT_PROOF: &[u8] = b"vouchsafe.receipt-proof.v2";
const LABEL_CONFIRM_PROOF: &[u8] = b"vouchsafe.confirm-proof.v1";
const LABEL_ACCESS_TOKEN: &[u8] = b"vouchsafe.access-token.v1";
const CONTEXT_NODE_ACCESS_KEY: &str = "vouchsafe 2025-01-01 node access key v1";

// ---- HMAC-SHA256 ---------------------------------------------------------------------------

type HmacSha256 = Hmac<sha2::Sha256>;

fn hmac_new(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("hmac accepts keys of any length")
}

fn hmac_framed(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = hmac_new(key);
    for part in parts {
        let len = u64::try_from(part.len()).expect("a slice length fits in u64");
        mac.update(&len.to_le_bytes());
        mac.update(part);
    }
    mac
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = hmac_new(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 over `parts`, each prefixed by its length as a u64 little-endian, so that
/// different splits of the same bytes (`["ab", "c"]` and `["a", "bc"]`) give different tags.
pub fn hmac_sha256_framed(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    hmac_framed(key, parts).finalize().into_bytes().into()
}

/// Checks a [`hmac_sha256_framed`] tag in constant time; a tag of the wrong length is `false`.
pub fn verify_hmac_sha256_framed(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    tag.len() == 32 && hmac_framed(key, parts).verify_slice(tag).is_ok()
}

// ---- tokens --------------------------------------------------------------------------------

/// What a derived token is for; each purpose has its own label, so an auth token can never
/// be presented as a receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPurpose {
    /// Lets the holder of a voucher redeem it.
    Auth,
    /// Proves to a delivery node that the player holds the voucher's receipt.
    Receipt,
}

impl TokenPurpose {
    /// The domain-separation label hashed into tokens of this purpose.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            TokenPurpose::Auth => LABEL_AUTH_TOKEN,
            TokenPurpose::Receipt => LABEL_RECEIPT_TOKEN,
        }
    }
}

/// `HMAC(token_key, purpose ‖ voucher_id ‖ generation)` (framed). Deterministic, so the
/// engine re-derives a token instead of storing it; a new generation revokes the old token.
pub fn derive_token(token_key: &SecretKey, purpose: TokenPurpose, voucher_id: &str, generation: u32) -> Token {
    let generation_bytes = generation.to_le_bytes();
    SecretKey(hmac_sha256_framed(token_key.expose(), &[purpose.as_bytes(), voucher_id.as_bytes(), &generation_bytes]))
}

/// The consumer a receipt proof names: whoever answers the node's challenge also says who
/// receives the media keys, and the proof covers it, so nobody between the player and the
/// engine (the node, or anyone on the link) can put another passport in the Redeem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProofConsumer<'a> {
    pub consumer_id: &'a str,
    pub cert_serial: &'a str,
    /// `hash` of the certificate's public key (SPKI DER).
    pub key_hash: [u8; 32],
}

impl<'a> ProofConsumer<'a> {
    pub fn new(consumer_id: &'a str, cert_serial: &'a str, public_key_der: &[u8]) -> Self {
        Self { consumer_id, cert_serial, key_hash: super::hash(public_key_der) }
    }
}

fn receipt_proof_parts<'a>(voucher_id: &'a str, node_id: &'a str, challenge: &'a [u8], consumer: &'a ProofConsumer<'a>) -> [&'a [u8]; 7] {
    [
        LABEL_RECEIPT_PROOF,
        voucher_id.as_bytes(),
        node_id.as_bytes(),
        challenge,
        consumer.consumer_id.as_bytes(),
        consumer.cert_serial.as_bytes(),
        &consumer.key_hash,
    ]
}

/// The player's proof that it holds `receipt`, bound to the voucher, the node, a fresh
/// `challenge` chosen by the node (so a proof cannot be replayed elsewhere or later) and
/// the consumer who will receive the keys (so it cannot be used for another passport).
pub fn receipt_proof(receipt: &Token, voucher_id: &str, node_id: &str, challenge: &[u8], consumer: &ProofConsumer<'_>) -> [u8; 32] {
    hmac_sha256_framed(receipt.expose(), &receipt_proof_parts(voucher_id, node_id, challenge, consumer))
}

/// Checks a [`receipt_proof`] in constant time.
pub fn verify_receipt_proof(receipt: &Token, voucher_id: &str, node_id: &str, challenge: &[u8], consumer: &ProofConsumer<'_>, proof: &[u8]) -> bool {
    verify_hmac_sha256_framed(receipt.expose(), &receipt_proof_parts(voucher_id, node_id, challenge, consumer), proof)
}

fn confirm_proof_parts<'a>(
    voucher_id: &'a str,
    node_id: &'a str,
    media_id: &'a str,
    received_hash: &'a [u8],
    consumer: &'a ProofConsumer<'a>,
) -> [&'a [u8]; 8] {
    [
        LABEL_CONFIRM_PROOF,
        voucher_id.as_bytes(),
        node_id.as_bytes(),
        media_id.as_bytes(),
        received_hash,
        consumer.consumer_id.as_bytes(),
        consumer.cert_serial.as_bytes(),
        &consumer.key_hash,
    ]
}

/// The player's proof, with its Confirm, that the buyer (who holds `receipt`) reports this
/// delivery of `media_id` with `received_hash`: the node forwards it, and the engine
/// completes or fails a delivery only with it. Its own label: never a redemption proof.
pub fn confirm_proof(receipt: &Token, voucher_id: &str, node_id: &str, media_id: &str, received_hash: &[u8], consumer: &ProofConsumer<'_>) -> [u8; 32] {
    hmac_sha256_framed(receipt.expose(), &confirm_proof_parts(voucher_id, node_id, media_id, received_hash, consumer))
}

/// Checks a [`confirm_proof`] in constant time.
pub fn verify_confirm_proof(
    receipt: &Token,
    voucher_id: &str,
    node_id: &str,
    media_id: &str,
    received_hash: &[u8],
    consumer: &ProofConsumer<'_>,
    proof: &[u8],
) -> bool {
    verify_hmac_sha256_framed(receipt.expose(), &confirm_proof_parts(voucher_id, node_id, media_id, received_hash, consumer), proof)
}

/// The per-node key for delivery access tokens, derived from the engine token key with
/// blake3 `derive_key`, so a node holds only its own key and cannot mint tokens for others.
pub fn node_access_key(token_key: &SecretKey, node_id: &str) -> SecretKey {
    // The token key has a fixed length, so `token_key ‖ node_id` is unambiguous.
    let mut hasher = blake3::Hasher::new_derive_key(CONTEXT_NODE_ACCESS_KEY);
    hasher.update(token_key.expose());
    hasher.update(node_id.as_bytes());
    SecretKey(*hasher.finalize().as_bytes())
}

fn access_token_mac(node_key: &SecretKey, node_id: &str, voucher_id: &str, media_ids: &[&str], expires_at_ms: i64) -> HmacSha256 {
    let media_count = u64::try_from(media_ids.len()).expect("a slice length fits in u64");
    let mut parts: Vec<&[u8]> = Vec::with_capacity(media_ids.len() + 5);
    let media_count_bytes = media_count.to_le_bytes();
    let expires_bytes = expires_at_ms.to_le_bytes();
    parts.push(LABEL_ACCESS_TOKEN);
    parts.push(node_id.as_bytes());
    parts.push(&media_count_bytes);
    parts.extend(media_ids.iter().map(|media_id| media_id.as_bytes()));
    parts.push(voucher_id.as_bytes());
    parts.push(&expires_bytes);
    hmac_framed(node_key.expose(), &parts)
}

/// A delivery access token (a CDN signed URL's signature):
/// `HMAC(node_key, node ‖ media ids ‖ voucher ‖ expires_at_ms)` (framed, media ids counted).
pub fn access_token(node_key: &SecretKey, node_id: &str, voucher_id: &str, media_ids: &[&str], expires_at_ms: i64) -> [u8; 32] {
    access_token_mac(node_key, node_id, voucher_id, media_ids, expires_at_ms).finalize().into_bytes().into()
}

/// Why a delivery access token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    /// The token is authentic but `now_ms` is past its expiry; ask for a fresh link.
    #[error("access token expired; request a new delivery link")]
    Expired,
    /// The token does not match the node, voucher, media or expiry it is presented with.
    #[error("access token invalid for this node, voucher, media or expiry")]
    Invalid,
}

/// Checks an [`access_token`] in constant time, then its expiry. A token is valid up to and
/// including `expires_at_ms`. Expiry is only reported for authentic tokens.
pub fn check_access_token(
    node_key: &SecretKey,
    node_id: &str,
    voucher_id: &str,
    media_ids: &[&str],
    expires_at_ms: i64,
    now_ms: i64,
    token: &[u8],
) -> Result<(), AccessDenied> {
    let mac = access_token_mac(node_key, node_id, voucher_id, media_ids, expires_at_ms);
    if token.len() != 32 || mac.verify_slice(token).is_err() {
        return Err(AccessDenied::Invalid);
    }
    if now_ms > expires_at_ms {
        return Err(AccessDenied::Expired);
    }
    Ok(())
}
