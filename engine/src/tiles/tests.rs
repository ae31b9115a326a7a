use super::*;
use crate::tlog::{self, Tree};
use std::collections::BTreeMap;

#[test]
fn paths_follow_the_spec_and_only_canonical_ones_parse() {
    assert_eq!(index_path(1_234_067), "x001/x234/067");
    assert_eq!(index_path(5), "005");
    assert_eq!(index_path(1000), "x001/000");
    let tile = TileRef { level: Some(2), index: 1_234_067, width: 17 };
    assert_eq!(tile.path(), "tile/2/x001/x234/067.p/17");
    assert_eq!(TileRef::parse(&tile.path()), Some(tile));
    let bundle = TileRef { level: None, index: 3, width: TILE_WIDTH };
    assert_eq!(bundle.path(), "tile/entries/003");
    assert_eq!(TileRef::parse("tile/entries/003"), Some(bundle));
    for bad in [
        "tile/0/5",
        "tile/0/x000/005",
        "tile/00/005",
        "tile/0/005.p/0",
        "tile/0/005.p/256",
        "tile/0/005.p/07",
        "tile/64/000",
        "tile/0/x01/005",
        "tile/0/005/",
        "tiles/0/005",
        "tile/0/-05",
    ] {
        assert_eq!(TileRef::parse(bad), None, "{bad}");
    }
}

/// The spec's own example: a tree of 70,000 entries has 273 full level-0 tiles, a partial
/// one of width 112, one full level-1 tile, a partial one of width 17 and a partial level-2
/// tile of width 1; a tree of 256, a full level-0 tile and a level-1 tile of width 1.
#[test]
fn the_tiles_of_a_size_are_the_specs() {
    let tiles = TileRef::of_size(70_000);
    let count = |level: Option<u8>, width: u64| tiles.iter().filter(|tile| tile.level == level && tile.width == width).count();
    assert_eq!((count(Some(0), 256), count(Some(0), 112)), (273, 1));
    assert_eq!((count(Some(1), 256), count(Some(1), 17), count(Some(2), 1)), (1, 1, 1));
    assert_eq!((count(None, 256), count(None, 112)), (273, 1));
    assert_eq!(tiles.len(), 273 + 1 + 1 + 1 + 1 + 273 + 1);
    let small: Vec<String> = TileRef::of_size(256).iter().map(TileRef::path).collect();
    assert_eq!(small, ["tile/0/000", "tile/entries/000", "tile/1/000.p/1"]);
    assert!(TileRef::of_size(0).is_empty());
    assert_eq!(TileRef::width_at(Some(0), 273, 70_000), Some(112));
    assert_eq!(TileRef::width_at(Some(0), 274, 70_000), None);
}

#[test]
fn entry_bundles_round_trip_and_a_cut_one_is_refused() {
    let entries: [&[u8]; 3] = [b"a", b"", &[7; 300]];
    let bundle = entry_bundle(entries).expect("fits");
    assert_eq!(&bundle[..3], &[0, 1, b'a']);
    assert_eq!(parse_entry_bundle(&bundle).expect("parses"), entries);
    assert_eq!(parse_entry_bundle(&bundle[..bundle.len() - 1]), Err(BundleError::Cut));
    assert_eq!(parse_entry_bundle(&[0]), Err(BundleError::Cut));
    assert_eq!(entry_bundle([&[0u8; ENTRY_BYTES_MAX + 1][..]]), Err(BundleError::EntryTooLarge(ENTRY_BYTES_MAX + 1)));
}

/// A client holding only the tiles of the tree of 70,000 leaves (three tile levels) computes
/// the same roots, inclusion proofs and consistency proofs as the tree itself, at the
/// newest size and, through that size's partial tiles, at an older one; they verify.
/// Controls: a tile with one altered bit gives a root that is not the tree's and proofs
/// that do not verify; a missing tile gives no proof.
#[test]
fn a_client_computes_proofs_from_tiles_alone() {
    let size = 70_000u64;
    let old = 65_811u64;
    let tree = Tree::from_leaf_hashes((0..size).map(|i| tlog::leaf_hash(&i.to_be_bytes())));
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for tile in TileRef::of_size(size).into_iter().chain(TileRef::partial_of_size(old)).filter(|tile| tile.level.is_some()) {
        files.insert(tile.path(), tile_bytes(&tree, &tile).expect("the tree holds it"));
    }
    let fetch = |path: &str| files.get(path).cloned();
    let client = TileHashes::new(size, fetch);
    let root = tree.root(size).expect("root");
    assert_eq!(tlog::root_from(&client, size), Some(root));
    for index in [0, 1, 255, 256, 65_535, 65_536, 69_999] {
        let proof = tlog::inclusion_proof_from(&client, index, size).expect("from tiles");
        assert_eq!(Some(&proof), tree.inclusion_proof(index, size).as_ref());
        assert!(tlog::verify_inclusion(&tree.leaf_hashes()[index as usize], index, size, &proof, &root));
    }
    for from in [1, 255, 256, 4_097, old, size] {
        let proof = tlog::consistency_proof_from(&client, from, size).expect("from tiles");
        assert!(tlog::verify_consistency(from, size, &tree.root(from).expect("root"), &root, &proof), "{from}");
    }
    // A client that trusts the older checkpoint reads that size's partial tiles.
    let older = TileHashes::new(old, fetch);
    assert_eq!(tlog::root_from(&older, old), tree.root(old));
    assert!(older.fetched() > 0 && older.fetched() <= 4, "{} tiles for one root", older.fetched());

    let mut altered = files.clone();
    altered.get_mut("tile/1/001.p/17").expect("the partial level-1 tile")[5] ^= 1;
    let bad = TileHashes::new(size, |path: &str| altered.get(path).cloned());
    assert_ne!(tlog::root_from(&bad, size), Some(root));
    let proof = tlog::inclusion_proof_from(&bad, 69_999, size).expect("computed");
    assert!(!tlog::verify_inclusion(&tree.leaf_hashes()[69_999], 69_999, size, &proof, &root));
    let mut missing = files.clone();
    missing.remove("tile/0/273.p/112");
    let holed = TileHashes::new(size, |path: &str| missing.get(path).cloned());
    assert_eq!(tlog::inclusion_proof_from(&holed, 69_999, size), None);
}
