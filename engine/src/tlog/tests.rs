use super::*;

/// The eight leaves of the RFC 6962 test vectors (certificate-transparency's
/// `merkle_tree_test`), and the roots of their first 1..=8.
const LEAVES: [&[u8]; 8] = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
];
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn tree() -> Tree {
    Tree::from_leaf_hashes(LEAVES.iter().map(|leaf| leaf_hash(leaf)))
}

fn hex_all(proof: &[Hash]) -> Vec<String> {
    proof.iter().map(hex::encode).collect()
}

#[test]
fn roots_match_the_rfc6962_vectors() {
    let tree = tree();
    assert_eq!(hex::encode(tree.root(0).expect("empty")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    for (size, root) in ROOTS.iter().enumerate() {
        assert_eq!(hex::encode(tree.root(size as u64 + 1).expect("root")), *root, "size {}", size + 1);
    }
    assert_eq!(tree.root(9), None, "past the end");
}

#[test]
fn inclusion_proofs_match_the_rfc6962_vectors_and_verify() {
    let tree = tree();
    let vectors: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (index, size, expected) in vectors {
        let proof = tree.inclusion_proof(index, size).expect("in range");
        assert_eq!(hex_all(&proof), expected, "leaf {index} of {size}");
        let leaf = leaf_hash(LEAVES[index as usize]);
        let root = tree.root(size).expect("root");
        assert!(verify_inclusion(&leaf, index, size, &proof, &root));
        // Controls: another leaf, another position, a wrong root, a cut or altered path.
        assert!(!verify_inclusion(&leaf_hash(b"other"), index, size, &proof, &root));
        assert!(!verify_inclusion(&leaf, index + 1, size, &proof, &root));
        assert!(!verify_inclusion(&leaf, index, size, &proof, &leaf_hash(b"root")));
        if let Some((_, shorter)) = proof.split_last() {
            assert!(!verify_inclusion(&leaf, index, size, shorter, &root));
            let mut altered = proof.clone();
            altered[0][0] ^= 1;
            assert!(!verify_inclusion(&leaf, index, size, &altered, &root));
        }
    }
    assert_eq!(tree.inclusion_proof(8, 8), None);
}

#[test]
fn consistency_proofs_match_the_rfc6962_vectors_and_verify() {
    let tree = tree();
    let vectors: [(u64, u64, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (2, 5, &["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    ];
    for (old, new, expected) in vectors {
        let proof = tree.consistency_proof(old, new).expect("in range");
        assert_eq!(hex_all(&proof), expected, "{old} -> {new}");
        let (old_root, new_root) = (tree.root(old).expect("old"), tree.root(new).expect("new"));
        assert!(verify_consistency(old, new, &old_root, &new_root, &proof));
    }
}

/// Every pair of sizes up to 40 leaves: proofs verify, and each control fails (a forked
/// old tree, a wrong new root, sizes swapped or shifted, a dropped or altered hash).
#[test]
fn consistency_and_inclusion_hold_for_every_size_and_every_fork_fails() {
    let leaves: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let tree = Tree::from_leaf_hashes(leaves.iter().copied());
    for new in 1..=40u64 {
        let new_root = tree.root(new).expect("root");
        let naive = naive_root(&leaves[..new as usize]);
        assert_eq!(new_root, naive, "size {new}");
        for index in 0..new {
            let proof = tree.inclusion_proof(index, new).expect("proof");
            assert!(verify_inclusion(&leaves[index as usize], index, new, &proof, &new_root));
        }
        let last = tree.inclusion_proof(new - 1, new).expect("proof");
        let (mut frontier, root) = Frontier::from_last_leaf(&leaves[new as usize - 1], new, &last).expect("frontier");
        assert_eq!(root, new_root, "the frontier of {new}");
        // A tree continued from the frontier answers every question about sizes from
        // `new` on as the whole tree does, and none about an earlier size.
        let mut continued = Tree::from_frontier(&frontier);
        assert_eq!(continued.size(), new);
        for leaf in &leaves[new as usize..] {
            continued.push(*leaf);
        }
        for size in new..=40 {
            assert_eq!(continued.root(size), tree.root(size), "root {size} from the frontier of {new}");
            // The last leaf of the frontier's own size climbs inside its last subtree, which
            // the frontier holds only whole: from there on every last leaf's path is known.
            if size > new {
                assert_eq!(continued.inclusion_proof(size - 1, size), tree.inclusion_proof(size - 1, size), "last leaf of {size} from {new}");
            }
            for later in size..=40 {
                assert_eq!(continued.consistency_proof(size, later), tree.consistency_proof(size, later), "{size} -> {later} from {new}");
            }
        }
        if new > 1 {
            assert_eq!(continued.root(1), None, "a size inside the frontier of {new}'s first subtree");
            assert_eq!(continued.inclusion_proof(0, new), None, "an old leaf's path");
        }
        for (size, leaf) in leaves.iter().enumerate().skip(new as usize) {
            frontier.push(*leaf);
            assert_eq!(frontier.root(), tree.root(size as u64 + 1).expect("root"), "frontier from {new} at {}", size + 1);
        }
        for old in 1..new {
            let old_root = tree.root(old).expect("root");
            let proof = tree.consistency_proof(old, new).expect("proof");
            assert!(verify_consistency(old, new, &old_root, &new_root, &proof), "{old} -> {new}");
            let mut forked = leaves[..old as usize].to_vec();
            forked[0][0] ^= 1;
            assert!(!verify_consistency(old, new, &naive_root(&forked), &new_root, &proof), "a forked old tree {old} -> {new}");
            assert!(!verify_consistency(old, new, &old_root, &old_root, &proof), "a wrong new root {old} -> {new}");
            assert!(!verify_consistency(old + 1, new, &old_root, &new_root, &proof), "a shifted old size {old} -> {new}");
            // Not a control: a shifted new size. The proof of 1 -> 3 also "verifies" 1 -> 4
            // with the root of 3 (RFC 9162's algorithm cannot tell them apart); the size is
            // bound to its root by the checkpoint's signature, not by the proof.
            if let Some((_, shorter)) = proof.split_last() {
                assert!(!verify_consistency(old, new, &old_root, &new_root, shorter), "a dropped hash {old} -> {new}");
            }
            let mut altered = proof.clone();
            altered[0][31] ^= 1;
            assert!(!verify_consistency(old, new, &old_root, &new_root, &altered), "an altered hash {old} -> {new}");
        }
    }
    let mut empty = Frontier::default();
    assert_eq!(empty.root(), empty_root());
    empty.push(leaves[0]);
    assert_eq!(empty.root(), leaves[0]);
    assert_eq!(Frontier::from_last_leaf(&leaves[0], 0, &[]), None);
    assert_eq!(Frontier::from_last_leaf(&leaves[4], 5, &[]), None, "a proof too short for the size");
}

/// The RFC's definition, computed from scratch: the oracle for `Tree`.
fn naive_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
        }
    }
}
