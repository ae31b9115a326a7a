//! An incremental audit: the royalty log continued from a checkpoint the auditor pinned
//! (a seal's C2SP checkpoint it verified before). The entries before the checkpoint's
//! tree size are counted into the totals but neither encrypted, MACed nor hashed: the
//! pinned root covers them. At the seal that carries the pinned checkpoint the chain
//! resumes from the seal's head (`Z` must verify under the master key) and the tree from
//! its frontier: the last leaf, rebuilt from the head and the entry key's commitment, is
//! proven against the pinned root by the seal's last-leaf path, which gives the frontier
//! (RFC 6962 subtrees of the old tree). Every later seal's checkpoint must then follow from
//! that frontier and the new entries: the tree cannot fork or shrink without a seal fault.
//! The entries recorded between the pinned size and its seal wait in `pending`.
//!
//! Not here: the stream's other events, which the replay applies and checks as always.

use super::{RoyaltyLog, SealFault};
use crate::royalty::{self, Chain, ChainedEntry, Entry};
use engine::crypto::SecretKey;
use engine::domain::event::RightsReportSealed;
use engine::ids::Seq;
use engine::note::Checkpoint;
use engine::tlog::{Frontier, Tree};

/// Entries recorded after the pinned tree size before its seal appears: more means the
/// stream has no such seal (a seal follows its entries within a few events).
pub const PINNED_PENDING_MAX: usize = 100_000;

/// The pinned checkpoint, the key to resume the chain with, and the entries waiting for it.
#[derive(Debug)]
pub(crate) struct Pinned {
    checkpoint: Checkpoint,
    master: SecretKey,
    pending: Vec<(Vec<u8>, Option<u64>, u64)>,
}

impl RoyaltyLog {
    /// A log for an incremental audit from `checkpoint` (already verified by the caller):
    /// chained from the checkpoint's seal on.
    pub fn pinned_at(master: &SecretKey, engine_key: Option<engine::crypto::RsaPublic>, checkpoint: Checkpoint) -> Self {
        let pinned = Pinned { checkpoint, master: master.clone(), pending: Vec::new() };
        Self { engine_key, pinned: Some(Box::new(pinned)), ..Self::default() }
    }

    /// The pinned checkpoint whose seal the stream has not shown yet (`None`: met, or no pin).
    pub fn pin_unmet(&self) -> Option<&Checkpoint> {
        self.pinned.as_ref().map(|pinned| &pinned.checkpoint)
    }

    /// Entry `index` before the chain resumed: nothing to do before the pinned size, kept
    /// for later after it.
    pub(super) fn wait_for_pin(&mut self, index: u64, entry: &Entry, bound: Option<u64>) {
        let Some(pinned) = &mut self.pinned else { return };
        if index < pinned.checkpoint.size {
            return;
        }
        if pinned.pending.len() == PINNED_PENDING_MAX {
            let size = pinned.checkpoint.size;
            self.pinned = None;
            self.seal_faults.push(SealFault {
                seq: Seq(entry.source_seq),
                first_entry: size,
                last_entry: size,
                reason: format!("no seal with the pinned checkpoint within {PINNED_PENDING_MAX} entries after its size (a forked or rewritten log)"),
            });
            return;
        }
        pinned.pending.push((entry.encode(), bound, entry.source_seq));
    }

    /// A seal whose links, signature and stream head check, met while the pin is unmet:
    /// a seal before the pinned size passes; the one at it must carry the pinned checkpoint
    /// and starts the chain and the tree; one past it means the pin is not on this stream.
    pub(super) fn meet_pinned(&mut self, seal: &RightsReportSealed) -> Option<String> {
        let pinned = self.pinned.as_ref()?;
        let size = pinned.checkpoint.size;
        let sealed = seal.last_entry + 1;
        if sealed < size {
            return None;
        }
        if sealed > size {
            return Some(format!("passes the pinned tree size {size} without its checkpoint (a forked or rewritten log)"));
        }
        let Some(checkpoint) = &seal.checkpoint else { return Some("is at the pinned tree size but has no checkpoint".into()) };
        if checkpoint.origin != pinned.checkpoint.origin || checkpoint.tree_size != size || checkpoint.root != pinned.checkpoint.root {
            return Some(format!("has another checkpoint at tree size {size} than the pinned one (a forked log)"));
        }
        let head = ChainedEntry { epoch: seal.epoch, index: seal.last_entry, ciphertext: Vec::new(), y: seal.head_y, z: seal.head_z, bound_seq: None };
        let (chain, commitment) = match Chain::resume_committed(&pinned.master, super::EPOCH, &head) {
            Ok(resumed) => resumed,
            Err(fault) => return Some(format!("pinned seal's head: {}", fault.reason)),
        };
        let last_leaf = royalty::tree_leaf_hash(&head, &commitment);
        let frontier = match Frontier::from_last_leaf(&last_leaf, size, &checkpoint.last_leaf_proof) {
            Some((frontier, root)) if root == pinned.checkpoint.root => frontier,
            _ => return Some("pinned seal's head is not the last leaf of the pinned tree".into()),
        };
        let pending = self.pinned.as_mut().map(|pinned| std::mem::take(&mut pinned.pending)).unwrap_or_default();
        self.chain = Some(chain);
        self.tree = Tree::from_frontier(&frontier);
        self.entry_base = size;
        self.usage_digest_base = seal.totals_digest;
        for (encoded, bound, source_seq) in pending {
            self.chain_entry(&encoded, bound, source_seq);
        }
        None
    }
}
