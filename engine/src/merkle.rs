//! Merkle trees with RFC 6962 hashing (leaves and nodes domain-separated, an unbalanced
//! tree split at the largest power of two): the royalty seals' root over `Y_j`
//! (`projections::royalty`) and the engine's batched transaction signatures
//! (`media::TransactionBatch`).

use crate::crypto;

pub fn leaf_hash(y: &[u8; 32]) -> [u8; 32] {
    let mut bytes = [0u8; 33];
    bytes[1..].copy_from_slice(y);
    crypto::hash(&bytes)
}

pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut bytes = [0u8; 65];
    bytes[0] = 1;
    bytes[1..33].copy_from_slice(left);
    bytes[33..].copy_from_slice(right);
    crypto::hash(&bytes)
}

fn split(n: usize) -> usize {
    // The largest power of two smaller than n (RFC 6962 §2.1).
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The Merkle root over the leaves `ys` (the hash of nothing for an empty range).
pub fn merkle_root(ys: &[[u8; 32]]) -> [u8; 32] {
    match ys.len() {
        0 => crypto::hash(b""),
        1 => leaf_hash(&ys[0]),
        n => {
            let k = split(n);
            node_hash(&merkle_root(&ys[..k]), &merkle_root(&ys[k..]))
        }
    }
}

/// The audit path of leaf `index` (siblings from the leaf up).
pub fn merkle_proof(ys: &[[u8; 32]], index: usize) -> Vec<[u8; 32]> {
    let mut path = Vec::new();
    fn walk(ys: &[[u8; 32]], index: usize, path: &mut Vec<[u8; 32]>) {
        if ys.len() <= 1 {
            return;
        }
        let k = split(ys.len());
        if index < k {
            walk(&ys[..k], index, path);
            path.push(merkle_root(&ys[k..]));
        } else {
            walk(&ys[k..], index - k, path);
            path.push(merkle_root(&ys[..k]));
        }
    }
    if index < ys.len() {
        walk(ys, index, &mut path);
    }
    path
}

/// Checks that `y` is leaf `index` of a tree of `size` leaves with root `root`.
pub fn verify_merkle_proof(y: &[u8; 32], index: usize, size: usize, path: &[[u8; 32]], root: &[u8; 32]) -> bool {
    root_from_proof(y, index, size, path).is_some_and(|computed| crypto::ct_eq(&computed, root))
}

/// The root a tree of `size` leaves has if `y` is its leaf `index` with audit path `path`
/// (`None`: the path does not fit a tree of that size).
pub fn root_from_proof(y: &[u8; 32], index: usize, size: usize, path: &[[u8; 32]]) -> Option<[u8; 32]> {
    fn climb(hash: [u8; 32], index: usize, size: usize, path: &[[u8; 32]]) -> Option<[u8; 32]> {
        if size <= 1 {
            return path.is_empty().then_some(hash);
        }
        let (last, rest) = path.split_last()?;
        let k = split(size);
        if index < k {
            climb(hash, index, k, rest).map(|left| node_hash(&left, last))
        } else {
            climb(hash, index - k, size - k, rest).map(|right| node_hash(last, &right))
        }
    }
    if index >= size {
        return None;
    }
    climb(leaf_hash(y), index, size, path)
}

/// The root over `leaves` and every leaf's audit path (as `merkle_proof` gives it), in
/// O(n log n) hashes: what a batch signer hands out.
pub fn root_and_proofs(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<Vec<[u8; 32]>>) {
    fn build(leaves: &[[u8; 32]], paths: &mut [Vec<[u8; 32]>]) -> [u8; 32] {
        if leaves.len() == 1 {
            return leaf_hash(&leaves[0]);
        }
        let k = split(leaves.len());
        let (left_paths, right_paths) = paths.split_at_mut(k);
        let left = build(&leaves[..k], left_paths);
        let right = build(&leaves[k..], right_paths);
        for path in left_paths {
            path.push(right);
        }
        for path in right_paths {
            path.push(left);
        }
        node_hash(&left, &right)
    }
    if leaves.is_empty() {
        return (merkle_root(leaves), Vec::new());
    }
    let mut paths = vec![Vec::new(); leaves.len()];
    let root = build(leaves, &mut paths);
    (root, paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_proofs_agree_with_root_and_proof_for_every_size() {
        for size in 1..=40usize {
            let leaves: Vec<[u8; 32]> = (0..size).map(|i| crypto::hash(&i.to_le_bytes())).collect();
            let (root, paths) = root_and_proofs(&leaves);
            assert_eq!(root, merkle_root(&leaves), "size {size}");
            for (index, path) in paths.iter().enumerate() {
                assert_eq!(path, &merkle_proof(&leaves, index), "size {size} index {index}");
                assert_eq!(root_from_proof(&leaves[index], index, size, path), Some(root));
                assert!(verify_merkle_proof(&leaves[index], index, size, path, &root));
            }
            assert_eq!(root_from_proof(&leaves[0], size, size, &paths[0]), None, "an index past the end");
        }
    }
}
