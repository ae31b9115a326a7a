//! RFC 6962 (RFC 9162 §2.1) Merkle trees with SHA-256, the tree of the C2SP transparency
//! logs: leaves `SHA-256(0x00 ‖ leaf)`, nodes `SHA-256(0x01 ‖ left ‖ right)`, an unbalanced
//! tree split at the largest power of two below its size. The royalty log keeps one over all
//! its entries (`projections::royalty`), and every seal signs its root as a checkpoint
//! (`crate::note`).
//!
//! Hand-written rather than a crate (`ct-merkle` keeps leaves, not hashes, and proves
//! consistency only from the tree's own current size): a `Tree` keeps every complete
//! subtree's hash (what tlog tiles serve), so a root at any earlier size, an inclusion proof
//! and a consistency proof each cost O(log n) hashes; `Frontier` is the compact range an
//! incremental auditor extends from a checkpoint. Tested with the RFC 6962 vectors of the
//! Certificate Transparency test suite. Not here: what a leaf holds (the caller's bytes),
//! the older blake3 tree of the RSA seals (`crate::merkle`).

use crate::crypto;

pub type Hash = [u8; 32];

/// Longest proof a verifier accepts: an inclusion proof in a tree of 2^64 leaves has 64
/// hashes, a consistency proof at most one more per level.
pub const PROOF_HASHES_MAX: usize = 128;

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    crypto::sha256(&[&[0], data])
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    crypto::sha256(&[&[1], left, right])
}

/// The root of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    crypto::sha256(&[])
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// A tree that keeps the hash of every complete subtree: level 0 holds the leaf hashes,
/// level `l` the hash of each aligned run of 2^l leaves. About two hashes per leaf.
///
/// A tree started from a frontier (`Tree::from_frontier`, an incremental auditor's) holds
/// only the frontier's subtrees below its size: every root, inclusion proof and
/// consistency proof from its size on needs no other (each subtree they name inside the
/// old tree is maximal there, so a frontier node), nor does an inclusion proof of a later
/// leaf; one that would (an older leaf's, the frontier's own last leaf's) is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    levels: Vec<Level>,
}

/// The stored hashes of one level: positions `start..start + nodes.len()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Level {
    start: u64,
    nodes: Vec<Hash>,
}

impl Level {
    fn get(&self, position: u64) -> Option<Hash> {
        let offset = usize::try_from(position.checked_sub(self.start)?).ok()?;
        self.nodes.get(offset).copied()
    }

    fn end(&self) -> u64 {
        self.start + self.nodes.len() as u64
    }
}

impl Tree {
    /// The tree that continues from `frontier`: its size and subtrees, no older hashes.
    pub fn from_frontier(frontier: &Frontier) -> Self {
        let size = frontier.size;
        let levels_count = (u64::BITS - size.leading_zeros()) as usize;
        let mut levels: Vec<Level> = (0..levels_count).map(|level| Level { start: size >> level, nodes: Vec::new() }).collect();
        // The frontier's nodes, largest first, are the set bits of the size from the top.
        let mut nodes = frontier.nodes.iter();
        for level in (0..levels_count).rev() {
            if size >> level & 1 == 1 {
                let node = *nodes.next().expect("a frontier has a node per set bit of its size");
                levels[level] = Level { start: (size >> level) - 1, nodes: vec![node] };
            }
        }
        Tree { levels }
    }

    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut tree = Tree::default();
        for leaf in leaves {
            tree.push(leaf);
        }
        tree
    }

    /// Appends a leaf (its hash, `leaf_hash`) and every subtree it completes.
    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Level::default());
        }
        let mut position = self.levels[0].end();
        self.levels[0].nodes.push(leaf);
        let mut level = 0;
        while !position.is_multiple_of(2) {
            let left = self.levels[level].get(position - 1).expect("a left sibling is stored or a frontier node");
            let right = self.levels[level].get(position).expect("just stored");
            level += 1;
            position /= 2;
            if self.levels.len() == level {
                self.levels.push(Level { start: position, nodes: Vec::new() });
            }
            self.levels[level].nodes.push(node_hash(&left, &right));
        }
    }

    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, Level::end)
    }

    /// The leaf hashes held (all of them, unless the tree started from a frontier).
    pub fn leaf_hashes(&self) -> &[Hash] {
        self.levels.first().map_or(&[], |leaves| leaves.nodes.as_slice())
    }

    /// The root of the first `size` leaves (`None`: the tree is smaller, or that size is
    /// before the frontier it started from).
    pub fn root(&self, size: u64) -> Option<Hash> {
        if size > self.size() {
            return None;
        }
        root_from(self, size)
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 6962 §2.1.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if size > self.size() {
            return None;
        }
        inclusion_proof_from(self, index, size)
    }

    /// The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves
    /// (RFC 6962 §2.1.2); empty when `old` is 0 or equals `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if new > self.size() {
            return None;
        }
        consistency_proof_from(self, old, new)
    }
}

impl SubtreeHashes for Tree {
    fn complete(&self, level: u32, index: u64) -> Option<Hash> {
        self.levels.get(level as usize)?.get(index)
    }
}

/// Where proofs read the hashes of complete subtrees: a `Tree` in memory, or a client's
/// tiles (`crate::tiles::TileHashes`). Proofs and roots at a size need only the complete
/// subtrees inside that size.
pub trait SubtreeHashes {
    /// MTH of the aligned run of 2^`level` leaves at position `index` (leaves
    /// `index·2^level ..`), or `None` when this source does not hold it.
    fn complete(&self, level: u32, index: u64) -> Option<Hash>;
}

/// MTH(D[lo:hi]), 0 ≤ lo < hi: every run the RFC's recursion names is either an aligned
/// complete subtree or splits into one and a shorter right part.
fn subtree<S: SubtreeHashes + ?Sized>(source: &S, lo: u64, hi: u64) -> Option<Hash> {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return source.complete(level, lo >> level);
    }
    let k = split(n);
    Some(node_hash(&subtree(source, lo, lo + k)?, &subtree(source, lo + k, hi)?))
}

/// The root of the tree of the first `size` leaves, from `source`.
pub fn root_from<S: SubtreeHashes + ?Sized>(source: &S, size: u64) -> Option<Hash> {
    match size {
        0 => Some(empty_root()),
        size => subtree(source, 0, size),
    }
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 6962 §2.1.1), from `source`.
pub fn inclusion_proof_from<S: SubtreeHashes + ?Sized>(source: &S, index: u64, size: u64) -> Option<Vec<Hash>> {
    if index >= size {
        return None;
    }
    let mut proof = Vec::new();
    path(source, index, 0, size, &mut proof)?;
    Some(proof)
}

fn path<S: SubtreeHashes + ?Sized>(source: &S, m: u64, lo: u64, hi: u64, proof: &mut Vec<Hash>) -> Option<()> {
    let n = hi - lo;
    if n <= 1 {
        return Some(());
    }
    let k = split(n);
    if m < k {
        path(source, m, lo, lo + k, proof)?;
        proof.push(subtree(source, lo + k, hi)?);
    } else {
        path(source, m - k, lo + k, hi, proof)?;
        proof.push(subtree(source, lo, lo + k)?);
    }
    Some(())
}

/// The consistency proof from the tree of `old` leaves to the tree of `new` leaves (RFC 6962
/// §2.1.2), from `source`; empty when `old` is 0 or equals `new`.
pub fn consistency_proof_from<S: SubtreeHashes + ?Sized>(source: &S, old: u64, new: u64) -> Option<Vec<Hash>> {
    if old > new {
        return None;
    }
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(source, old, 0, new, true, &mut proof)?;
    }
    Some(proof)
}

fn subproof<S: SubtreeHashes + ?Sized>(source: &S, m: u64, lo: u64, hi: u64, complete: bool, proof: &mut Vec<Hash>) -> Option<()> {
    let n = hi - lo;
    if m == n {
        if !complete {
            proof.push(subtree(source, lo, hi)?);
        }
        return Some(());
    }
    let k = split(n);
    if m <= k {
        subproof(source, m, lo, lo + k, complete, proof)?;
        proof.push(subtree(source, lo + k, hi)?);
    } else {
        subproof(source, m - k, lo + k, hi, false, proof)?;
        proof.push(subtree(source, lo, lo + k)?);
    }
    Some(())
}

/// The root a tree of `size` leaves has if `leaf` (a leaf hash) is its leaf `index` with
/// audit path `proof` (RFC 9162 §2.1.3.2); `None`: the proof does not fit that tree.
pub fn root_from_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash]) -> Option<Hash> {
    if index >= size || proof.len() > PROOF_HASHES_MAX {
        return None;
    }
    let (mut f, mut s, mut root) = (index, size - 1, *leaf);
    for sibling in proof {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            root = node_hash(sibling, &root);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            root = node_hash(&root, sibling);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(root)
}

/// Whether `proof` shows that leaf hash `leaf` is leaf `index` of the tree with `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    root_from_inclusion(leaf, index, size, proof).is_some_and(|computed| crypto::ct_eq(&computed, root))
}

/// Whether `proof` shows that the tree of `old_size` leaves with `old_root` is a prefix of
/// the tree of `new_size` leaves with `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(old_size: u64, new_size: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old_size > new_size || proof.len() > PROOF_HASHES_MAX {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    let mut path = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else { return false };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut old, mut new) = (*first, *first);
    for node in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            old = node_hash(node, &old);
            new = node_hash(node, &new);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            new = node_hash(&new, node);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && crypto::ct_eq(&old, old_root) && crypto::ct_eq(&new, new_root)
}

/// The compact range of a tree: the hashes of the complete subtrees its size decomposes into
/// (largest first), enough to append leaves and compute each new root without the older
/// leaves. An incremental auditor starts one from a checkpoint (`Frontier::from_last_leaf`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the tree of `size` leaves whose last leaf hash is `last_leaf` with
    /// audit path `proof`, and that tree's root (which the caller compares with the root it
    /// trusts; the proof binds the last leaf to it). `None`: the proof does not fit.
    pub fn from_last_leaf(last_leaf: &Hash, size: u64, proof: &[Hash]) -> Option<(Frontier, Hash)> {
        let inner = size.checked_sub(1).map(|_| size.trailing_zeros() as usize)?;
        if proof.len() != inner + size.count_ones() as usize - 1 {
            return None;
        }
        // The last leaf's path climbs its own complete subtree first (left siblings), then
        // passes every other subtree of the decomposition, right to left.
        let (within, others) = proof.split_at(inner);
        let last = within.iter().fold(*last_leaf, |node, sibling| node_hash(sibling, &node));
        let mut nodes: Vec<Hash> = others.iter().rev().copied().collect();
        nodes.push(last);
        let frontier = Frontier { size, nodes };
        let root = frontier.root();
        Some((frontier, root))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        self.nodes.push(leaf);
        self.size += 1;
        let mut size = self.size;
        while size & 1 == 0 {
            let right = self.nodes.pop().expect("a size with its lowest bit clear has two subtrees to merge");
            let left = self.nodes.pop().expect("a size with its lowest bit clear has two subtrees to merge");
            self.nodes.push(node_hash(&left, &right));
            size >>= 1;
        }
    }

    pub fn root(&self) -> Hash {
        let Some((last, rest)) = self.nodes.split_last() else { return empty_root() };
        rest.iter().rev().fold(*last, |root, node| node_hash(node, &root))
    }
}

#[cfg(test)]
mod tests;
