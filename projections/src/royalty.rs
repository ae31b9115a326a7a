//! The royalty log: a Schneier–Kelsey secure log (DESIGN.md, Projections §3), its Merkle
//! tree and its signed seals. Pure functions over entries; no I/O.
//!
//! For entry `j` of an epoch, with the evolving secret `A_j`:
//! `K_j = derive(A_j, "entry key")`, `C_j = AES-256-GCM(K_j, entry)`,
//! `Y_j = blake3(Y_{j-1} ‖ C_j)`, `Z_j = HMAC-SHA256(A_j, Y_j)`, `A_{j+1} = derive(A_j, "next")`.
//! `A_0` is derived from the royalty master key and the epoch; the running `Chain` keeps
//! only the current `A_j` (the previous one is zeroized when replaced), so whoever steals
//! the projection state later cannot rewrite earlier entries.
//!
//! Beside the chain, an RFC 6962 tree (SHA-256, `engine::tlog`) over every entry in order,
//! whose leaf is the entry's public form (`leaf_data`: position, `Y_j`, `Z_j` and a
//! commitment to `K_j`; never the plaintext). Each seal signs its root as a C2SP
//! checkpoint, so that seals are consistent with each other in O(log n) and any tlog
//! verifier can read them; the commitment binds `K_j` (AES-GCM does not commit to its
//! key), so an inclusion proof's key cannot be swapped for one that opens the ciphertext
//! to another entry.
//!
//! What the chain alone cannot detect: a truncated tail. Seals (signed with the engine's
//! RSA key, chained by `prev_seal_hash`, covering an entry range with its head `Y_n`, `Z_n`
//! and a Merkle root over the range's `Y_j`) and an auditor's pin of the newest seal close
//! that gap; entries after the last seal are protected by the MAC chain only.

use crate::serde_hex::{hex_array, hex_bytes};
use engine::crypto::{self, SecretKey};
use serde::{Deserialize, Serialize};

/// Entries larger than this (encoded) are refused when read from an untrusted export.
pub const ENTRY_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageKind {
    /// A delivered media item: royalty-bearing.
    Delivery,
    /// A preview play: usage, not a sale.
    Preview,
    /// A licensed duplication unit bound to a device: royalty-bearing.
    Duplication,
    /// A delivered item's sale refunded by the merchant: an adjustment that takes its
    /// amount back out of the totals (the delivery's entry stays in the chain).
    Refund,
    /// As `Refund`, charged back by the payment processor.
    Chargeback,
}

/// One usage record, with the seed's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: UsageKind,
    /// The stream sequence of the event this entry records.
    pub source_seq: u64,
    pub timestamp_ms: i64,
    pub title: String,
    pub artist: String,
    pub authors: Vec<String>,
    pub length_ms: u64,
    pub sale_price_minor: u64,
    pub currency: String,
    pub consumer_cert: String,
    pub voucher_id: String,
    pub media_id: String,
    pub image_descriptor: String,
    pub merchant: String,
    pub rights_agent: String,
    pub distributor: String,
    pub owner: String,
    pub played_ms: u64,
}

/// Room for an encoded entry: its field names alone take about 230 bytes, and the writer
/// grows from this instead of from nothing (three or four copies for a typical entry).
const ENTRY_ENCODED_BYTES: usize = 512;

impl Entry {
    /// The entry's bytes as the chain encrypts them: its serde_json encoding, which is also
    /// what the usage digest hashes (`royalty_log::usage_digest`), so a caller that needs
    /// both can encode once and use `Chain::append_encoded`.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ENTRY_ENCODED_BYTES);
        serde_json::to_writer(&mut bytes, self).expect("an Entry of strings and integers always serializes");
        bytes
    }
}

/// An entry as it stands in the log: its ciphertext and chain values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedEntry {
    pub epoch: u64,
    pub index: u64,
    #[serde(with = "hex_bytes")]
    pub ciphertext: Vec<u8>,
    #[serde(with = "hex_array")]
    pub y: [u8; 32],
    #[serde(with = "hex_array")]
    pub z: [u8; 32],
    /// The stream sequence of the entry's source event, when its nonce binds it (streams
    /// that record `royalty.entry_binding` = 1); absent for fixed-nonce entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_seq: Option<u64>,
}

/// Where a chain stops verifying, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("royalty entry {index}: {reason}")]
pub struct ChainFault {
    pub index: u64,
    pub reason: String,
}

/// `A_0` of an epoch, from the royalty master key.
pub fn epoch_secret(master: &SecretKey, epoch: u64) -> SecretKey {
    let mut material = master.expose().to_vec();
    material.extend_from_slice(&epoch.to_le_bytes());
    let a0 = crypto::derive_key("vouchsafe 2026 royalty epoch A0", &material);
    zeroize::Zeroize::zeroize(&mut material);
    a0
}

/// The `Y_{-1}` an epoch's chain starts from.
pub fn genesis(epoch: u64) -> [u8; 32] {
    let mut bytes = b"vouchsafe 2026 royalty genesis".to_vec();
    bytes.extend_from_slice(&epoch.to_le_bytes());
    crypto::hash(&bytes)
}

/// The nonce of an entry ciphertext: fixed for entries that bind no sequence (`K_j`
/// encrypts one message, unless a chain is rebuilt after a lost tail), else the entry's
/// stream sequence, so a rebuilt chain's entry j, from another event, gets another nonce.
pub fn nonce(bound_seq: Option<u64>) -> [u8; crypto::NONCE_BYTES] {
    let mut nonce = [0; crypto::NONCE_BYTES];
    if let Some(seq) = bound_seq {
        nonce[0] = 1;
        nonce[4..].copy_from_slice(&seq.to_le_bytes());
    }
    nonce
}

/// The associated data of entry `index` of `epoch` (binds a ciphertext to its position).
pub fn aad(epoch: u64, index: u64) -> [u8; 16] {
    let mut aad = [0u8; 16];
    aad[..8].copy_from_slice(&epoch.to_le_bytes());
    aad[8..].copy_from_slice(&index.to_le_bytes());
    aad
}

/// `Y_j = blake3(Y_{j-1} ‖ C_j)` (`crypto::hash` of the concatenation), hashed in two
/// parts rather than copied into one buffer first.
pub fn running_hash(y_prev: &[u8; 32], ciphertext: &[u8]) -> [u8; 32] {
    let mut hasher = engine::crypto::Hasher::new();
    hasher.update(y_prev);
    hasher.update(ciphertext);
    hasher.finalize()
}

/// A chain's position as persisted (`Chain::position`): the epoch, the next entry's
/// index, its secret `A_j` and the last running hash.
pub struct ChainPosition {
    pub epoch: u64,
    pub next_index: u64,
    pub a: SecretKey,
    pub y_prev: [u8; 32],
}

impl std::fmt::Debug for ChainPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainPosition").field("epoch", &self.epoch).field("next_index", &self.next_index).field("a", &"<redacted>").finish()
    }
}

/// The chain's position: the secret for the next entry and the last running hash. Used
/// both to write (the engine) and to verify (the auditor, who starts from the master key).
pub struct Chain {
    epoch: u64,
    next_index: u64,
    a: SecretKey,
    y_prev: [u8; 32],
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("epoch", &self.epoch).field("next_index", &self.next_index).field("a", &"<redacted>").finish()
    }
}

impl Chain {
    pub fn start(master: &SecretKey, epoch: u64) -> Self {
        Self { epoch, next_index: 0, a: epoch_secret(master, epoch), y_prev: genesis(epoch) }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// `Y` of the last entry (the genesis value before the first).
    pub fn head_y(&self) -> [u8; 32] {
        self.y_prev
    }

    /// The chain positioned after `last`, the newest entry of the epoch's log (`None`: no
    /// entry yet, the chain starts at `A_0`), re-derived from the master key: `A_j` is
    /// `A_0` advanced `j` times. `last.z` must verify under the re-derived `A_{j-1}`, which
    /// proves the master key is the one the log was written with.
    ///
    /// This is how the projection store resumes a chain without ever storing a chain
    /// secret: it costs one derivation per entry at start-up (`store` explains why).
    pub fn resume(master: &SecretKey, epoch: u64, last: Option<&ChainedEntry>) -> Result<Chain, ChainFault> {
        match last {
            None => Ok(Chain::start(master, epoch)),
            Some(last) => Ok(Chain::resume_committed(master, epoch, last)?.0),
        }
    }

    /// Where the chain stands: what the engine persists (`store::chain_key`) instead of
    /// the master key, so it can go on chaining after a restart while no past `A_j` (nor
    /// `A_0`) stays on its host. The copy of `A_j` is zeroized when dropped.
    pub fn position(&self) -> ChainPosition {
        ChainPosition { epoch: self.epoch, next_index: self.next_index, a: self.a.clone(), y_prev: self.y_prev }
    }

    /// The chain continued from a persisted `position` over the epoch's `entries` (all of
    /// them, from index 0): the position may lag the entries (a crash after the entries
    /// were stored, before the position was): `A` is then advanced over the missing
    /// entries, checking each one's MAC. A position ahead of the entries (they are older
    /// than the key: `A` cannot go back) or one that does not belong to them (another `Y`
    /// before it) is refused.
    pub fn resume_from(position: ChainPosition, epoch: u64, entries: &[ChainedEntry]) -> Result<Chain, ChainFault> {
        let from = usize::try_from(position.next_index.saturating_sub(1)).unwrap_or(usize::MAX).min(entries.len());
        Chain::resume_from_tail(position, epoch, entries.len() as u64, &entries[from..])
    }

    /// As `resume_from`, given only how many entries the epoch's log `held` and its `tail`
    /// from the entry before the position on (from index 0 at position 0): what a caller
    /// whose entries are mostly in a store reads.
    pub fn resume_from_tail(position: ChainPosition, epoch: u64, held: u64, tail: &[ChainedEntry]) -> Result<Chain, ChainFault> {
        let fault = |index: u64, reason: String| ChainFault { index, reason };
        if position.epoch != epoch {
            return Err(fault(position.next_index, format!("the chain key belongs to epoch {}, expected {epoch}", position.epoch)));
        }
        if position.next_index > held {
            return Err(fault(
                position.next_index,
                format!(
                    "the chain key is at entry {}, past the {held} entries stored: the entries are older than the key, which cannot go back",
                    position.next_index
                ),
            ));
        }
        let (before, after) = match position.next_index.checked_sub(1) {
            None => (genesis(epoch), tail),
            Some(_) => match tail.split_first() {
                Some((previous, after)) => (previous.y, after),
                None => return Err(fault(position.next_index, "the entry before the chain key's position is not in the tail given".into())),
            },
        };
        if !crypto::ct_eq(&before, &position.y_prev) {
            return Err(fault(position.next_index, "the chain key does not follow the stored entries (another running hash before it)".into()));
        }
        let ChainPosition { next_index, a, y_prev, .. } = position;
        let mut chain = Chain { epoch, next_index, a, y_prev };
        for chained in after {
            let z = crypto::hmac_sha256(chain.a.expose(), &chained.y);
            if chained.index != chain.next_index || !crypto::ct_eq(&z, &chained.z) {
                return Err(fault(chain.next_index, "a stored entry after the chain key's position does not verify under it".into()));
            }
            chain.advance(chained.y);
        }
        if chain.next_index != held {
            return Err(fault(chain.next_index, format!("the tail given ends before the {held} entries stored")));
        }
        Ok(chain)
    }

    fn advance(&mut self, y: [u8; 32]) {
        // Replacing `a` drops (and so zeroizes) A_j: forward security.
        self.a = crypto::derive_key("vouchsafe 2026 royalty next", self.a.expose());
        self.y_prev = y;
        self.next_index += 1;
    }

    /// As `resume`, with the key commitment of `last` (what its tree leaf holds).
    pub fn resume_committed(master: &SecretKey, epoch: u64, last: &ChainedEntry) -> Result<(Chain, [u8; 32]), ChainFault> {
        let mut chain = Chain::start(master, epoch);
        let fault = |reason: &str| ChainFault { index: last.index, reason: reason.to_string() };
        if last.epoch != epoch {
            return Err(fault(&format!("belongs to epoch {}, expected {epoch}", last.epoch)));
        }
        for _ in 0..last.index {
            chain.a = crypto::derive_key("vouchsafe 2026 royalty next", chain.a.expose());
        }
        let z = crypto::hmac_sha256(chain.a.expose(), &last.y);
        if !crypto::ct_eq(&z, &last.z) {
            return Err(fault("MAC Z does not verify under this master key"));
        }
        let commitment = key_commitment(&chain.next_entry_key());
        chain.next_index = last.index;
        chain.advance(last.y);
        Ok((chain, commitment))
    }

    /// `K_j` of the next entry: what an inclusion proof reveals so a rights holder can read
    /// that one entry. It is derived one-way from `A_j`, so it exposes no other key.
    pub fn next_entry_key(&self) -> SecretKey {
        crypto::derive_key("vouchsafe 2026 royalty entry key", self.a.expose())
    }

    /// Appends an entry: encrypts it under `K_j` and extends the hash and MAC chains.
    pub fn append(&mut self, entry: &Entry) -> ChainedEntry {
        self.append_encoded(&entry.encode())
    }

    /// As `append`, for an entry already encoded (`Entry::encode`): the same chained entry.
    pub fn append_encoded(&mut self, encoded: &[u8]) -> ChainedEntry {
        self.append_encoded_bound(encoded, None)
    }

    /// As `append_encoded`, the nonce binding the source event's stream sequence when given.
    pub fn append_encoded_bound(&mut self, encoded: &[u8], bound_seq: Option<u64>) -> ChainedEntry {
        self.append_committed(encoded, bound_seq).0
    }

    /// As `append_encoded_bound`, with the entry key's commitment (`key_commitment`).
    pub fn append_committed(&mut self, encoded: &[u8], bound_seq: Option<u64>) -> (ChainedEntry, [u8; 32]) {
        let entry_key = self.next_entry_key();
        let commitment = key_commitment(&entry_key);
        let ciphertext = crypto::aead_encrypt(&entry_key, &nonce(bound_seq), &aad(self.epoch, self.next_index), encoded);
        let y = running_hash(&self.y_prev, &ciphertext);
        let z = crypto::hmac_sha256(self.a.expose(), &y);
        let chained = ChainedEntry { epoch: self.epoch, index: self.next_index, ciphertext, y, z, bound_seq };
        self.advance(y);
        (chained, commitment)
    }

    /// Verifies the next entry of the chain and returns its plaintext; on success the chain
    /// moves past it.
    pub fn verify_next(&mut self, chained: &ChainedEntry) -> Result<Entry, ChainFault> {
        Ok(self.verify_next_committed(chained)?.0)
    }

    /// As `verify_next`, with the entry key's commitment (`key_commitment`).
    pub fn verify_next_committed(&mut self, chained: &ChainedEntry) -> Result<(Entry, [u8; 32]), ChainFault> {
        let fault = |reason: &str| ChainFault { index: self.next_index, reason: reason.to_string() };
        if chained.epoch != self.epoch {
            return Err(fault(&format!("belongs to epoch {}, expected {}", chained.epoch, self.epoch)));
        }
        if chained.index != self.next_index {
            return Err(fault(&format!("is numbered {}: an entry was removed, reordered or inserted", chained.index)));
        }
        if chained.ciphertext.len() > ENTRY_BYTES_MAX {
            return Err(fault("ciphertext exceeds the entry size limit"));
        }
        let y = running_hash(&self.y_prev, &chained.ciphertext);
        if !crypto::ct_eq(&y, &chained.y) {
            return Err(fault("running hash Y does not follow from the previous entry and this ciphertext"));
        }
        let z = crypto::hmac_sha256(self.a.expose(), &y);
        if !crypto::ct_eq(&z, &chained.z) {
            return Err(fault("MAC Z does not verify under this epoch's key"));
        }
        let entry_key = self.next_entry_key();
        let plaintext = crypto::aead_decrypt(&entry_key, &nonce(chained.bound_seq), &aad(self.epoch, self.next_index), &chained.ciphertext)
            .map_err(|_| fault("ciphertext does not decrypt"))?;
        let entry: Entry = serde_json::from_slice(&plaintext).map_err(|_| fault("plaintext is not an entry"))?;
        if chained.bound_seq.is_some_and(|seq| seq != entry.source_seq) {
            return Err(fault("binds another stream sequence than its event's"));
        }
        let commitment = key_commitment(&entry_key);
        self.advance(y);
        Ok((entry, commitment))
    }
}

// ---- the RFC 6962 tree over every entry (`engine::tlog`) ----

/// Bytes of a leaf: index, epoch, `Y_j`, `Z_j`, the key commitment.
pub const LEAF_BYTES: usize = 8 + 8 + 32 + 32 + 32;

/// A commitment to an entry key `K_j`: it reveals nothing of the key and binds it, so a
/// proof's key is checked against the tree rather than trusted.
pub fn key_commitment(entry_key: &SecretKey) -> [u8; 32] {
    crypto::sha256(&[b"vouchsafe 2026 royalty entry key commitment\0", entry_key.expose()])
}

/// An entry's leaf in the tree, its public form: `index ‖ epoch` (big-endian), `Y_j` (which
/// chains the ciphertext's hash), `Z_j` (its MAC) and the commitment to `K_j`.
pub fn leaf_data(chained: &ChainedEntry, key_commitment: &[u8; 32]) -> [u8; LEAF_BYTES] {
    let mut leaf = [0u8; LEAF_BYTES];
    leaf[..8].copy_from_slice(&chained.index.to_be_bytes());
    leaf[8..16].copy_from_slice(&chained.epoch.to_be_bytes());
    leaf[16..48].copy_from_slice(&chained.y);
    leaf[48..80].copy_from_slice(&chained.z);
    leaf[80..].copy_from_slice(key_commitment);
    leaf
}

/// `SHA-256(0x00 ‖ leaf_data)`.
pub fn tree_leaf_hash(chained: &ChainedEntry, key_commitment: &[u8; 32]) -> [u8; 32] {
    engine::tlog::leaf_hash(&leaf_data(chained, key_commitment))
}

// ---- Merkle tree over Y_j: `engine::merkle` (shared with the transaction batches) ----

#[cfg(test)]
use engine::merkle::{leaf_hash, node_hash};
pub use engine::merkle::{merkle_proof, merkle_root, verify_merkle_proof};

// ---- seals ----

pub use engine::seal::{seal_message, sign_seal, verify_seal};

#[cfg(test)]
mod tests;
