//! The royalty log as a self-contained file (`audit export --format log`), its offline
//! verification (`audit verify`), and per-delivery inclusion proofs (`audit prove`,
//! `audit check-proof`). An exported log carries entry ciphertexts, chain values and signed
//! seals; it is checked with the royalty master key and the engine's public key alone.
//! A proof bundle is checked with the engine's public key alone.
//!
//! What an exported log cannot show on its own: that its seals' `stream_head`s match the
//! event stream (that needs the stream: `audit replay`), and a truncated tail unless the
//! verifier pins the newest seal it has seen.

use crate::royalty::{self, Chain, ChainedEntry, Entry, UsageKind};
use crate::royalty_log::{RoyaltyLog, usage_digest};
use engine::crypto::{self, SecretKey};
use engine::domain::event::{RightsReportSealed, SealCheckpoint};
use engine::domain::report::Report;
use engine::keyset::EngineKeyLookup;
use engine::note::{Checkpoint, NoteVerifier, SignedNote};
use engine::tlog::Tree;
use serde::{Deserialize, Serialize};

/// The format name written in every exported log.
pub const LOG_FORMAT: &str = "vouchsafe-royalty-log/1";
/// The format name of proof bundles of seals without a checkpoint.
pub const PROOF_FORMAT: &str = "vouchsafe-inclusion-proof/1";
/// The format name of proof bundles of checkpointed seals: they also prove the entry's leaf,
/// which commits to its key, in the checkpoint's tree.
pub const PROOF_FORMAT_TREE: &str = "vouchsafe-inclusion-proof/2";
/// Most entries or seals an exported log may hold (bounds what a verifier reads).
pub const LOG_ITEMS_MAX: usize = 50_000_000;
/// Longest Merkle path accepted in a bundle (a tree of 2^64 leaves).
pub const PROOF_PATH_MAX: usize = 64;

/// A seal in exported form (hex for binary fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedSeal {
    pub epoch: u64,
    pub first_entry: u64,
    pub last_entry: u64,
    pub head_y: String,
    pub head_z: String,
    pub merkle_root: String,
    pub totals_digest: String,
    pub prev_seal_hash: String,
    pub engine_key_id: String,
    pub signature: String,
    pub last_stream_seq: u64,
    pub stream_head: String,
    /// The seal's C2SP checkpoint (absent for seals written before checkpoints were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<ExportedCheckpoint>,
}

/// A seal's checkpoint as its signed note, and the audit path of the tree's last leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedCheckpoint {
    pub note: String,
    pub last_leaf_proof: Vec<String>,
}

impl ExportedCheckpoint {
    fn of(seal: &RightsReportSealed) -> Option<Self> {
        let checkpoint = seal.checkpoint.as_ref()?;
        Some(Self { note: engine::seal::checkpoint_note(seal)?, last_leaf_proof: checkpoint.last_leaf_proof.iter().map(hex::encode).collect() })
    }

    /// The seal's checkpoint fields: the note's text and its signature by the origin's key.
    pub fn to_checkpoint(&self) -> Result<SealCheckpoint, String> {
        let note = SignedNote::parse(self.note.as_bytes()).map_err(|e| format!("checkpoint: {e}"))?;
        let checkpoint = Checkpoint::parse(&note.text).map_err(|e| e.to_string())?;
        let signature = note.signatures.into_iter().find(|(name, _)| *name == checkpoint.origin).map(|(_, signature)| signature);
        let signature = signature.ok_or_else(|| "the checkpoint is not signed by its origin's key".to_string())?;
        if self.last_leaf_proof.len() > engine::tlog::PROOF_HASHES_MAX {
            return Err("the last leaf's proof is longer than any tree".into());
        }
        let last_leaf_proof = self.last_leaf_proof.iter().map(|hash| hash32("last_leaf_proof", hash)).collect::<Result<_, _>>()?;
        Ok(SealCheckpoint { origin: checkpoint.origin, tree_size: checkpoint.size, root: checkpoint.root, signature, last_leaf_proof })
    }
}

impl From<&RightsReportSealed> for ExportedSeal {
    fn from(seal: &RightsReportSealed) -> Self {
        Self {
            epoch: seal.epoch,
            first_entry: seal.first_entry,
            last_entry: seal.last_entry,
            head_y: hex::encode(seal.head_y),
            head_z: hex::encode(seal.head_z),
            merkle_root: hex::encode(seal.merkle_root),
            totals_digest: hex::encode(seal.totals_digest),
            prev_seal_hash: hex::encode(seal.prev_seal_hash),
            engine_key_id: seal.engine_key_id.clone(),
            signature: hex::encode(&seal.signature),
            last_stream_seq: seal.last_stream_seq,
            stream_head: hex::encode(seal.stream_head),
            checkpoint: ExportedCheckpoint::of(seal),
        }
    }
}

fn hash32(field: &str, text: &str) -> Result<[u8; 32], String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| format!("{field} is not 64 hex digits"))?;
    Ok(bytes)
}

impl ExportedSeal {
    pub fn to_seal(&self) -> Result<RightsReportSealed, String> {
        Ok(RightsReportSealed {
            epoch: self.epoch,
            first_entry: self.first_entry,
            last_entry: self.last_entry,
            head_y: hash32("head_y", &self.head_y)?,
            head_z: hash32("head_z", &self.head_z)?,
            merkle_root: hash32("merkle_root", &self.merkle_root)?,
            totals_digest: hash32("totals_digest", &self.totals_digest)?,
            prev_seal_hash: hash32("prev_seal_hash", &self.prev_seal_hash)?,
            engine_key_id: self.engine_key_id.clone(),
            signature: hex::decode(&self.signature).map_err(|_| "signature is not hex".to_string())?,
            last_stream_seq: self.last_stream_seq,
            stream_head: hash32("stream_head", &self.stream_head)?,
            checkpoint: self.checkpoint.as_ref().map(ExportedCheckpoint::to_checkpoint).transpose()?,
        })
    }
}

/// An exported royalty log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedLog {
    pub format: String,
    pub epoch: u64,
    pub entries: Vec<ChainedEntry>,
    pub seals: Vec<ExportedSeal>,
}

/// Exports the chain a replay computed (it must have had the master key).
pub fn export_log(royalty: &RoyaltyLog) -> ExportedLog {
    ExportedLog {
        format: LOG_FORMAT.to_string(),
        epoch: crate::royalty_log::EPOCH,
        entries: royalty.entries.chained(),
        seals: royalty.seals.iter().map(ExportedSeal::from).collect(),
    }
}

/// The first problem `verify_log` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyBad {
    /// The entry index, when the problem is in or about an entry.
    pub entry: Option<u64>,
    /// The position of the seal in the log, when the problem is in a seal.
    pub seal: Option<u64>,
    /// Where in the file the damage starts, when the file no longer parses there.
    pub byte_offset: Option<u64>,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub seals_verified: u64,
    pub unsealed_entries: u64,
    pub chain_ok: bool,
    pub first_bad: Option<VerifyBad>,
}

/// Decrypts and verifies the chain of an exported log: its entries and running usage
/// digests, or the first entry that fails.
pub fn open_entries(log: &ExportedLog, master: &SecretKey) -> (Vec<Entry>, Vec<[u8; 32]>, Option<VerifyBad>) {
    let opened = open_entries_tree(log, master);
    (opened.entries, opened.digests, opened.fault)
}

/// What `open_entries_tree` found: the entries that verify, their usage digests and the
/// RFC 6962 tree over their leaves, and the first entry that fails.
pub struct Opened {
    pub entries: Vec<Entry>,
    pub digests: Vec<[u8; 32]>,
    pub tree: Tree,
    pub fault: Option<VerifyBad>,
}

/// As `open_entries`, also building the tree over the verified entries' leaves.
pub fn open_entries_tree(log: &ExportedLog, master: &SecretKey) -> Opened {
    let mut chain = Chain::start(master, log.epoch);
    let mut opened =
        Opened { entries: Vec::with_capacity(log.entries.len()), digests: Vec::with_capacity(log.entries.len()), tree: Tree::default(), fault: None };
    for chained in &log.entries {
        match chain.verify_next_committed(chained) {
            Ok((entry, commitment)) => {
                let previous = opened.digests.last().copied().unwrap_or([0; 32]);
                opened.digests.push(usage_digest(&previous, &entry));
                opened.tree.push(royalty::tree_leaf_hash(chained, &commitment));
                opened.entries.push(entry);
            }
            Err(fault) => {
                opened.fault = Some(VerifyBad { entry: Some(fault.index), seal: None, byte_offset: None, reason: fault.reason });
                break;
            }
        }
    }
    opened
}

/// Verifies an exported log with the master key and the engine's public key.
pub fn verify_log(log: &ExportedLog, master: &SecretKey, engine_key: &(impl EngineKeyLookup + ?Sized), pin: Option<[u8; 32]>) -> VerifyReport {
    verify_log_with(log, master, engine_key, None, pin)
}

/// As `verify_log`; seals' checkpoints are also checked against the tree of the entries,
/// and their signatures with `checkpoint_key` when given.
pub fn verify_log_with(
    log: &ExportedLog,
    master: &SecretKey,
    engine_key: &(impl EngineKeyLookup + ?Sized),
    checkpoint_key: Option<&NoteVerifier>,
    pin: Option<[u8; 32]>,
) -> VerifyReport {
    let mut report = VerifyReport { entries: log.entries.len() as u64, seals_verified: 0, unsealed_entries: 0, chain_ok: false, first_bad: None };
    if log.format != LOG_FORMAT {
        report.first_bad = Some(VerifyBad { entry: None, seal: None, byte_offset: None, reason: format!("format {:?} is not {LOG_FORMAT}", log.format) });
        return report;
    }
    if log.entries.len() > LOG_ITEMS_MAX || log.seals.len() > LOG_ITEMS_MAX {
        report.first_bad = Some(VerifyBad { entry: None, seal: None, byte_offset: None, reason: "more entries or seals than a log may hold".into() });
        return report;
    }
    let Opened { digests, tree, fault: chain_fault, .. } = open_entries_tree(log, master);
    let verified_entries = digests.len() as u64;
    let mut first_bad = chain_fault;
    let mut checkpointed = false;
    let mut prev_hash = [0u8; 32];
    let mut next_entry = 0u64;
    let mut pinned = pin.is_none();
    for (position, exported) in log.seals.iter().enumerate() {
        let seal_fault = |reason: String| VerifyBad { entry: None, seal: Some(position as u64), byte_offset: None, reason };
        let seal = match exported.to_seal() {
            Ok(seal) => seal,
            Err(reason) => {
                first_bad.get_or_insert(seal_fault(reason));
                break;
            }
        };
        let last = usize::try_from(seal.last_entry).unwrap_or(usize::MAX);
        let problem = if !engine_key.key_for(&seal.engine_key_id).is_some_and(|key| royalty::verify_seal(key, &seal)) {
            Some("signature does not verify with the engine key".to_string())
        } else if seal.prev_seal_hash != prev_hash {
            Some("does not link to the previous seal (a seal was removed or reordered)".into())
        } else if seal.epoch != log.epoch || seal.first_entry != next_entry || seal.last_entry < seal.first_entry {
            Some(format!("does not continue the sealed range (next entry {next_entry})"))
        } else if seal.last_entry >= verified_entries {
            Some(format!("covers entries up to {} but only {verified_entries} verify (entries removed or truncated)", seal.last_entry))
        } else {
            let ys: Vec<[u8; 32]> = log.entries[seal.first_entry as usize..=last].iter().map(|e| e.y).collect();
            if log.entries[last].y != seal.head_y || log.entries[last].z != seal.head_z {
                Some("head Y/Z differ from the chain".into())
            } else if royalty::merkle_root(&ys) != seal.merkle_root {
                Some("Merkle root differs from the chain".into())
            } else if digests[last] != seal.totals_digest {
                Some("totals digest differs from the entries".into())
            } else {
                checkpoint_problem(&seal, &tree, checkpoint_key, checkpointed)
            }
        };
        if let Some(reason) = problem {
            first_bad.get_or_insert(seal_fault(reason));
            break;
        }
        checkpointed |= seal.checkpoint.is_some();
        report.seals_verified += 1;
        prev_hash = Report::seal_hash(&seal);
        next_entry = seal.last_entry + 1;
        pinned |= pin == Some(prev_hash);
    }
    if !pinned && first_bad.is_none() {
        first_bad = Some(VerifyBad {
            entry: Some(next_entry),
            seal: None,
            byte_offset: None,
            reason: "the log does not contain the pinned seal (truncated, or another log)".into(),
        });
    }
    report.unsealed_entries = verified_entries.saturating_sub(next_entry);
    report.chain_ok = first_bad.is_none();
    report.first_bad = first_bad;
    report
}

/// What is wrong with a seal's checkpoint: its tree size must be the entries sealed, its root
/// and last leaf's path the tree's, its signature `checkpoint_key`'s (when given); and after
/// a seal with a checkpoint every seal has one.
fn checkpoint_problem(seal: &RightsReportSealed, tree: &Tree, checkpoint_key: Option<&NoteVerifier>, checkpointed: bool) -> Option<String> {
    let Some(checkpoint) = &seal.checkpoint else {
        return checkpointed.then(|| "has no checkpoint, though an earlier seal had one".to_string());
    };
    if checkpoint.tree_size != seal.last_entry + 1 {
        return Some(format!("checkpoint names tree size {}, not the {} entries sealed", checkpoint.tree_size, seal.last_entry + 1));
    }
    if let Some(problem) = crate::royalty_log::checkpoint_problem(tree, checkpoint) {
        return Some(problem);
    }
    let verifier = checkpoint_key?;
    let note = Checkpoint { origin: checkpoint.origin.clone(), size: checkpoint.tree_size, root: checkpoint.root };
    if checkpoint.origin != verifier.name() || !verifier.verify(&note.text(), &checkpoint.signature) {
        return Some("checkpoint signature does not verify with the checkpoint key".into());
    }
    None
}

/// Everything a rights holder needs to check one royalty entry offline, with the engine's
/// public key alone: the entry's ciphertext and its key `K_j`, its chain values, its path in
/// the Merkle tree of its seal's range, and the signed seal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofBundle {
    pub format: String,
    pub epoch: u64,
    pub entry_index: u64,
    /// `Y_{j-1}` (the epoch's genesis value for the first entry).
    pub y_prev: String,
    pub ciphertext: String,
    pub y: String,
    /// `K_j`: decrypts this entry only; derived one-way from `A_j`.
    pub entry_key: String,
    /// The stream sequence the entry's nonce binds (absent for fixed-nonce entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_seq: Option<u64>,
    pub merkle_path: Vec<String>,
    pub seal: ExportedSeal,
    /// `Z_j` (format 2): with `Y_j` and the key's commitment, the entry's tree leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z: Option<String>,
    /// The leaf's audit path in the seal's checkpoint tree (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_proof: Option<Vec<String>>,
}

/// A proven entry, and whether its key was checked against the commitment in the signed
/// tree (`false` only for seals from before checkpoints: their bundles carry the key alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proven {
    pub entry: Entry,
    pub key_committed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error("the exported log does not verify: {0}")]
    Unverified(String),
    #[error("no delivery of voucher {0} is in the royalty log")]
    NotFound(String),
    #[error("the delivery of voucher {voucher} is entry {entry}, not sealed yet; prove it after the next seal")]
    NotSealed { voucher: String, entry: u64 },
}

/// Inclusion proofs for every delivery of `voucher_id` in a (verified) exported log.
pub fn prove(log: &ExportedLog, master: &SecretKey, engine_key: &(impl EngineKeyLookup + ?Sized), voucher_id: &str) -> Result<Vec<ProofBundle>, ProveError> {
    let report = verify_log(log, master, engine_key, None);
    if let Some(bad) = report.first_bad {
        return Err(ProveError::Unverified(bad.reason));
    }
    let tree = open_entries_tree(log, master).tree;
    let mut chain = Chain::start(master, log.epoch);
    let mut bundles = Vec::new();
    let mut y_prev = royalty::genesis(log.epoch);
    for chained in &log.entries {
        let entry_key = chain.next_entry_key();
        let entry = chain.verify_next(chained).map_err(|fault| ProveError::Unverified(fault.to_string()))?;
        if entry.kind == UsageKind::Delivery && entry.voucher_id == voucher_id {
            let seal = log
                .seals
                .iter()
                .find(|seal| seal.first_entry <= chained.index && chained.index <= seal.last_entry)
                .ok_or_else(|| ProveError::NotSealed { voucher: voucher_id.to_string(), entry: chained.index })?;
            let range = &log.entries[seal.first_entry as usize..=seal.last_entry as usize];
            let ys: Vec<[u8; 32]> = range.iter().map(|e| e.y).collect();
            let path = royalty::merkle_proof(&ys, (chained.index - seal.first_entry) as usize);
            let checkpoint = seal.to_seal().map_err(ProveError::Unverified)?.checkpoint;
            let tree_proof = match &checkpoint {
                None => None,
                Some(checkpoint) => Some(
                    tree.inclusion_proof(chained.index, checkpoint.tree_size).ok_or_else(|| ProveError::Unverified("the tree misses a sealed entry".into()))?,
                ),
            };
            bundles.push(ProofBundle {
                format: if tree_proof.is_some() { PROOF_FORMAT_TREE } else { PROOF_FORMAT }.to_string(),
                z: tree_proof.as_ref().map(|_| hex::encode(chained.z)),
                tree_proof: tree_proof.map(|proof| proof.iter().map(hex::encode).collect()),
                epoch: log.epoch,
                entry_index: chained.index,
                y_prev: hex::encode(y_prev),
                ciphertext: hex::encode(&chained.ciphertext),
                y: hex::encode(chained.y),
                entry_key: hex::encode(entry_key.expose()),
                bound_seq: chained.bound_seq,
                merkle_path: path.iter().map(hex::encode).collect(),
                seal: seal.clone(),
            });
        }
        y_prev = chained.y;
    }
    if bundles.is_empty() {
        return Err(ProveError::NotFound(voucher_id.to_string()));
    }
    Ok(bundles)
}

/// Checks a proof bundle with the engine's public key alone and returns the proven entry.
pub fn check_proof(bundle: &ProofBundle, engine_key: &(impl EngineKeyLookup + ?Sized)) -> Result<Entry, String> {
    check_proof_with(bundle, engine_key, None).map(|proven| proven.entry)
}

/// Checks a proof bundle with the engine's public key (and the checkpoint key, when given).
/// A checkpointed seal's bundle must prove the entry's leaf in the checkpoint's tree, whose
/// leaf commits to the entry key: a key the bundle carries is never trusted alone there.
pub fn check_proof_with(bundle: &ProofBundle, engine_key: &(impl EngineKeyLookup + ?Sized), checkpoint_key: Option<&NoteVerifier>) -> Result<Proven, String> {
    if bundle.format != PROOF_FORMAT && bundle.format != PROOF_FORMAT_TREE {
        return Err(format!("format {:?} is neither {PROOF_FORMAT} nor {PROOF_FORMAT_TREE}", bundle.format));
    }
    if bundle.merkle_path.len() > PROOF_PATH_MAX {
        return Err("the Merkle path is longer than any tree".into());
    }
    let seal = bundle.seal.to_seal()?;
    if !engine_key.key_for(&seal.engine_key_id).is_some_and(|key| royalty::verify_seal(key, &seal)) {
        return Err("the seal's signature does not verify with the engine key".into());
    }
    if seal.epoch != bundle.epoch || bundle.entry_index < seal.first_entry || bundle.entry_index > seal.last_entry {
        return Err("the entry is not in the seal's range".into());
    }
    let y_prev = hash32("y_prev", &bundle.y_prev)?;
    let y = hash32("y", &bundle.y)?;
    let ciphertext = hex::decode(&bundle.ciphertext).map_err(|_| "ciphertext is not hex".to_string())?;
    if royalty::running_hash(&y_prev, &ciphertext) != y {
        return Err("the ciphertext is not the one chained as Y".into());
    }
    let path: Vec<[u8; 32]> = bundle.merkle_path.iter().map(|node| hash32("merkle_path", node)).collect::<Result<_, _>>()?;
    let size = (seal.last_entry - seal.first_entry + 1) as usize;
    let position = (bundle.entry_index - seal.first_entry) as usize;
    if !royalty::verify_merkle_proof(&y, position, size, &path, &seal.merkle_root) {
        return Err("Y is not in the sealed Merkle tree at this position".into());
    }
    let entry_key = SecretKey::from_bytes(hash32("entry_key", &bundle.entry_key)?);
    let key_committed = match &seal.checkpoint {
        None => false,
        Some(checkpoint) => {
            let (Some(z), Some(tree_proof)) = (&bundle.z, &bundle.tree_proof) else {
                return Err("the seal has a checkpoint but the bundle does not prove the entry in its tree".into());
            };
            if tree_proof.len() > engine::tlog::PROOF_HASHES_MAX {
                return Err("the tree proof is longer than any tree".into());
            }
            let tree_proof: Vec<[u8; 32]> = tree_proof.iter().map(|node| hash32("tree_proof", node)).collect::<Result<_, _>>()?;
            let chained = ChainedEntry { epoch: bundle.epoch, index: bundle.entry_index, ciphertext: Vec::new(), y, z: hash32("z", z)?, bound_seq: None };
            let leaf = royalty::tree_leaf_hash(&chained, &royalty::key_commitment(&entry_key));
            if !engine::tlog::verify_inclusion(&leaf, bundle.entry_index, checkpoint.tree_size, &tree_proof, &checkpoint.root) {
                return Err("the entry (its key's commitment included) is not in the checkpoint's tree at this position".into());
            }
            if let Some(verifier) = checkpoint_key {
                let note = Checkpoint { origin: checkpoint.origin.clone(), size: checkpoint.tree_size, root: checkpoint.root };
                if checkpoint.origin != verifier.name() || !verifier.verify(&note.text(), &checkpoint.signature) {
                    return Err("the seal's checkpoint signature does not verify with the checkpoint key".into());
                }
            }
            true
        }
    };
    let plaintext = crypto::aead_decrypt(&entry_key, &royalty::nonce(bundle.bound_seq), &royalty::aad(bundle.epoch, bundle.entry_index), &ciphertext)
        .map_err(|_| "the entry key does not decrypt the ciphertext".to_string())?;
    let entry = serde_json::from_slice(&plaintext).map_err(|_| "the plaintext is not a royalty entry".to_string())?;
    Ok(Proven { entry, key_committed })
}

/// Verifies what a damaged file held up to its damage: the first bad position is an entry
/// that fails before the damage, else the damage itself.
pub fn verify_damaged(
    damage: &Damage,
    master: &SecretKey,
    engine_key: &(impl EngineKeyLookup + ?Sized),
    checkpoint_key: Option<&NoteVerifier>,
) -> VerifyReport {
    let mut report = verify_log_with(&damage.partial, master, engine_key, checkpoint_key, None);
    let earlier = report.first_bad.take().filter(|bad| bad.seal.is_none() && bad.entry.zip(damage.entry).is_some_and(|(bad, damaged)| bad < damaged));
    report.first_bad = Some(earlier.unwrap_or_else(|| VerifyBad {
        entry: damage.entry,
        seal: damage.seal,
        byte_offset: Some(damage.byte_offset),
        reason: damage.reason.clone(),
    }));
    report.chain_ok = false;
    report
}

mod lines;
mod tlog_proof;
pub use lines::{Damage, LOG_FORMAT_LINES, read_log, write_lines};
pub use tlog_proof::{check_tlog_proof, prove_tlog};

#[cfg(test)]
mod tests;
