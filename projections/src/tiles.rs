//! The royalty log as a C2SP tiled log (c2sp.org/tlog-tiles, `engine::tiles`): its
//! entries are the tree's leaves (`royalty::leaf_data`: index, epoch, `Y`, `Z` and the
//! commitment to the entry key — never the plaintext nor the key), its checkpoint the
//! newest seal's signed note. `TiledLog` follows the chain (verifying each entry, which
//! needs the master key: the commitment is derived from the chain's secret), or takes the
//! engine's own entries with their commitments (`following`, no secret), and publishes
//! each seal's checkpoint once the tree has its root; it answers a path (`get`) or lists
//! every file (`files`). Only entries under a published checkpoint are served.
//! Not here: HTTP (the gateways' `tlog` server), files on disk (`audit export`).

use crate::royalty::{self, Chain, ChainFault, ChainedEntry, LEAF_BYTES};
use engine::crypto::SecretKey;
use engine::note::{Checkpoint, SignedNote};
use engine::tiles::{self, TileRef};
use engine::tlog::Tree;
use std::collections::BTreeSet;

/// Why a checkpoint cannot be published.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the checkpoint note does not parse: {0}")]
    Note(String),
    #[error("the checkpoint names {size} entries, the tiled log has {held}")]
    Ahead { size: u64, held: u64 },
    #[error("the checkpoint at size {0} has another root than the entries' tree (a fork)")]
    Fork(u64),
    #[error("the checkpoint at size {size} is older than the one published ({published})")]
    Older { size: u64, published: u64 },
}

/// A royalty log as tiles: the leaves verified so far, their tree, the published checkpoints.
pub struct TiledLog {
    /// The chain every entry is verified along (`new`), or none: the entries come with their
    /// key commitments from the engine's own royalty log (`following`).
    chain: Option<Chain>,
    leaves: Vec<[u8; LEAF_BYTES]>,
    tree: Tree,
    /// Sizes of every published checkpoint, oldest first (their partial tiles stay served).
    sizes: Vec<u64>,
    /// The newest published checkpoint note.
    note: Option<String>,
}

impl std::fmt::Debug for TiledLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TiledLog").field("leaves", &self.leaves.len()).field("sizes", &self.sizes).finish()
    }
}

impl TiledLog {
    pub fn new(master: &SecretKey, epoch: u64) -> Self {
        Self { chain: Some(Chain::start(master, epoch)), leaves: Vec::new(), tree: Tree::default(), sizes: Vec::new(), note: None }
    }

    /// A tiled log of the engine's own royalty log, whose entries come with their key
    /// commitments (`RoyaltyLog::commitments`, computed as the chain wrote them): no chain
    /// secret is needed, so a `serve` without the royalty master key publishes tiles too.
    /// The checkpoints it publishes are still checked against the leaves' tree.
    pub fn following() -> Self {
        Self { chain: None, leaves: Vec::new(), tree: Tree::default(), sizes: Vec::new(), note: None }
    }

    /// How many entries it holds (published or not).
    pub fn entries(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The published size (0 before the first checkpoint).
    pub fn size(&self) -> u64 {
        self.sizes.last().copied().unwrap_or(0)
    }

    /// The newest published checkpoint note.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Verifies and appends the next entries of the chain (a log made by `new`).
    pub fn extend<'a>(&mut self, entries: impl IntoIterator<Item = &'a ChainedEntry>) -> Result<(), ChainFault> {
        for chained in entries {
            let Some(chain) = &mut self.chain else {
                return Err(ChainFault { index: chained.index, reason: "this tiled log has no chain to verify along: give the key commitments".into() });
            };
            let (_, commitment) = chain.verify_next_committed(chained)?;
            self.push(chained, &commitment);
        }
        Ok(())
    }

    /// Appends the next entries with their key commitments; with a chain (`new`) each is
    /// verified and its commitment must be the chain's.
    pub fn extend_committed<'a>(&mut self, entries: impl IntoIterator<Item = (&'a ChainedEntry, &'a [u8; 32])>) -> Result<(), ChainFault> {
        for (chained, commitment) in entries {
            if chained.index != self.entries() {
                return Err(ChainFault { index: self.entries(), reason: format!("is numbered {}: entries must come in order", chained.index) });
            }
            if let Some(chain) = &mut self.chain {
                let (_, verified) = chain.verify_next_committed(chained)?;
                if verified != *commitment {
                    return Err(ChainFault { index: chained.index, reason: "the key commitment is not the chain's".into() });
                }
            }
            self.push(chained, commitment);
        }
        Ok(())
    }

    fn push(&mut self, chained: &ChainedEntry, commitment: &[u8; 32]) {
        let leaf = royalty::leaf_data(chained, commitment);
        self.tree.push(engine::tlog::leaf_hash(&leaf));
        self.leaves.push(leaf);
    }

    /// Publishes a checkpoint note (signed by the log; its signatures are the caller's to
    /// check) once the tree of its size has its root; a newer note of the same size (more
    /// cosignatures) replaces the old one.
    pub fn publish(&mut self, note: &str) -> Result<(), PublishError> {
        let parsed = SignedNote::parse(note.as_bytes()).map_err(|e| PublishError::Note(e.to_string()))?;
        let checkpoint = Checkpoint::parse(&parsed.text).map_err(|e| PublishError::Note(e.to_string()))?;
        if checkpoint.size > self.entries() {
            return Err(PublishError::Ahead { size: checkpoint.size, held: self.entries() });
        }
        if self.tree.root(checkpoint.size) != Some(checkpoint.root) {
            return Err(PublishError::Fork(checkpoint.size));
        }
        if checkpoint.size < self.size() {
            return Err(PublishError::Older { size: checkpoint.size, published: self.size() });
        }
        if checkpoint.size > self.size() || self.sizes.is_empty() {
            self.sizes.push(checkpoint.size);
        }
        self.note = Some(note.to_string());
        Ok(())
    }

    /// The consistency proof from the tree of `old` entries to the published size.
    pub fn consistency_proof(&self, old: u64) -> Option<Vec<engine::tlog::Hash>> {
        self.tree.consistency_proof(old, self.size())
    }

    /// The consistency proof from `old` entries to `new`, a published size or below.
    pub fn consistency_proof_to(&self, old: u64, new: u64) -> Option<Vec<engine::tlog::Hash>> {
        if new > self.size() {
            return None;
        }
        self.tree.consistency_proof(old, new)
    }

    /// The file at `path` below the log's prefix: `checkpoint`, a tile or an entry bundle
    /// within the published size (`None`: no such file).
    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        if path == "checkpoint" {
            return self.note.as_ref().map(|note| note.as_bytes().to_vec());
        }
        let tile = TileRef::parse(path)?;
        if !tile.within(self.size()) {
            return None;
        }
        self.bytes(&tile)
    }

    fn bytes(&self, tile: &TileRef) -> Option<Vec<u8>> {
        match tile.level {
            Some(_) => tiles::tile_bytes(&self.tree, tile),
            None => {
                let first = usize::try_from(tile.index * tiles::TILE_WIDTH).ok()?;
                let leaves = self.leaves.get(first..first + usize::try_from(tile.width).ok()?)?;
                tiles::entry_bundle(leaves.iter().map(|leaf| leaf.as_slice())).ok()
            }
        }
    }

    /// Every file of the published log: the checkpoint, the tiles and bundles of its size,
    /// and the partial ones of each earlier checkpoint (clients holding it read those).
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let Some(note) = &self.note else { return Vec::new() };
        let mut refs: BTreeSet<TileRef> = TileRef::of_size(self.size()).into_iter().collect();
        refs.extend(self.sizes.iter().flat_map(|size| TileRef::partial_of_size(*size)));
        let mut files = vec![("checkpoint".to_string(), note.as_bytes().to_vec())];
        files.extend(refs.iter().filter_map(|tile| Some((tile.path(), self.bytes(tile)?))));
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::royalty::{Entry, UsageKind};
    use engine::note::NoteSigner;
    use engine::tiles::TileHashes;

    fn entry(n: u64) -> Entry {
        Entry {
            kind: UsageKind::Delivery,
            source_seq: n + 1,
            timestamp_ms: 1_767_225_600_000 + n as i64,
            title: format!("track {n}"),
            artist: "artist".into(),
            authors: vec![],
            length_ms: 1,
            sale_price_minor: 100,
            currency: "EUR".into(),
            consumer_cert: String::new(),
            voucher_id: format!("v{n}"),
            media_id: "md1".into(),
            image_descriptor: String::new(),
            merchant: "m".into(),
            rights_agent: "agent".into(),
            distributor: "d".into(),
            owner: "o".into(),
            played_ms: 0,
        }
    }

    /// A chain of `n` entries, the tree the writer built over it and a checkpoint signer.
    fn chain(n: u64) -> (SecretKey, Vec<ChainedEntry>, Tree, NoteSigner) {
        let master = SecretKey::from_bytes([9; 32]);
        let mut writer = Chain::start(&master, 1);
        let mut tree = Tree::default();
        let entries = (0..n)
            .map(|i| {
                let (chained, commitment) = writer.append_committed(&entry(i).encode(), Some(i + 1));
                tree.push(royalty::tree_leaf_hash(&chained, &commitment));
                chained
            })
            .collect();
        (master, entries, tree, NoteSigner::generate("example.test/royalty").expect("key"))
    }

    fn note(tree: &Tree, size: u64, signer: &NoteSigner) -> String {
        Checkpoint { origin: signer.name().into(), size, root: tree.root(size).expect("root") }.sign(signer).0
    }

    /// The tiles of a log whose writer built its own tree: a client reading only the files
    /// gets the writer's roots and proofs at both published sizes, and each bundle's entries
    /// hash to the level-0 tile. Controls: a fork is refused; nothing past the published size
    /// is served; an entry out of the chain is refused.
    #[test]
    fn a_client_reading_the_files_gets_the_writers_tree() {
        let (master, entries, tree, signer) = chain(300);
        let mut tiled = TiledLog::new(&master, 1);
        tiled.extend(&entries[..270]).expect("chain verifies");
        tiled.publish(&note(&tree, 260, &signer)).expect("published");
        let forked = Checkpoint { origin: signer.name().into(), size: 270, root: [1; 32] }.sign(&signer).0;
        assert_eq!(tiled.publish(&forked), Err(PublishError::Fork(270)));
        assert!(matches!(tiled.publish(&note(&tree, 280, &signer)), Err(PublishError::Ahead { .. })));
        tiled.extend(&entries[270..]).expect("chain verifies");
        tiled.publish(&note(&tree, 300, &signer)).expect("published");
        assert!(matches!(tiled.publish(&note(&tree, 260, &signer)), Err(PublishError::Older { .. })));

        let files: std::collections::BTreeMap<String, Vec<u8>> = tiled.files().into_iter().collect();
        let paths: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "checkpoint",
                "tile/0/000",
                "tile/0/001.p/4",
                "tile/0/001.p/44",
                "tile/1/000.p/1",
                "tile/entries/000",
                "tile/entries/001.p/4",
                "tile/entries/001.p/44"
            ]
        );
        assert_eq!(files["tile/0/000"].len(), 8192);
        for (path, bytes) in &files {
            assert_eq!(tiled.get(path).as_ref(), Some(bytes), "{path}");
        }
        assert_eq!(tiled.get("tile/0/001.p/45"), None, "past the published size");
        let fetch = |path: &str| files.get(path).cloned();
        for size in [260, 300] {
            let client = TileHashes::new(size, fetch);
            assert_eq!(engine::tlog::root_from(&client, size), tree.root(size));
            let proof = engine::tlog::inclusion_proof_from(&client, 257, size).expect("from tiles");
            assert!(engine::tlog::verify_inclusion(&tree.leaf_hashes()[257], 257, size, &proof, &tree.root(size).expect("root")));
        }
        let bundle = tiles::parse_entry_bundle(&files["tile/entries/001.p/44"]).expect("bundle");
        let level0 = &files["tile/0/001.p/44"];
        assert_eq!(bundle.len(), 44);
        for (leaf, hash) in bundle.iter().zip(level0.chunks_exact(32)) {
            assert_eq!(engine::tlog::leaf_hash(leaf).as_slice(), hash);
        }
        let mut out_of_order = TiledLog::new(&master, 1);
        assert!(out_of_order.extend(&entries[1..2]).is_err(), "entry 1 before entry 0");
    }
}
