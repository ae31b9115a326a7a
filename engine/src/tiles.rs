//! C2SP tlog-tiles (c2sp.org/tlog-tiles): the log's tree as static files any tlog client
//! reads to compute its own proofs. A tile at level `L` holds up to 256 consecutive hashes
//! of tree level `8·L` (full: 256 hashes, 8,192 bytes; the rightmost ones partial, `.p/<W>`);
//! an entry bundle holds the leaves' data, each prefixed with its length (big-endian u16).
//! Paths are `tile/<L>/<N>[.p/<W>]` and `tile/entries/<N>[.p/<W>]`, `N` in 3-digit groups,
//! all but the last prefixed `x` (`x001/x234/067`).
//!
//! Both sides live here, as text and bytes without I/O: which tiles a tree of a given size
//! has and their bytes (`TileRef::of_size`, `tile_bytes`), and a client's `TileHashes`, a
//! `SubtreeHashes` source over tiles it fetched, from which `crate::tlog` computes roots,
//! inclusion and consistency proofs. Not here: serving (the gateways' `tlog` server),
//! writing files (`audit export --format tiles`), what an entry holds (the caller's bytes).

use crate::tlog::{Hash, SubtreeHashes, node_hash};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Tree levels per tile level.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes in a full tile, entries in a full bundle.
pub const TILE_WIDTH: u64 = 256;
/// The largest entry a bundle can carry (its length is a u16).
pub const ENTRY_BYTES_MAX: usize = u16::MAX as usize;
/// The highest tile level a path may name.
pub const TILE_LEVEL_MAX: u8 = 63;

/// A tile or an entry bundle: its level (`None`: entries), index and width (256: full).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TileRef {
    pub level: Option<u8>,
    pub index: u64,
    pub width: u64,
}

/// `N` as the spec's path: 3-digit groups, all but the last prefixed with `x`.
pub fn index_path(index: u64) -> String {
    let mut groups = vec![format!("{:03}", index % 1000)];
    let mut rest = index / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

/// How many hashes tile level `level` has in the tree of `size` leaves (complete subtrees
/// of 256^level leaves).
fn hashes_at(level: u8, size: u64) -> u64 {
    size.checked_shr(TILE_HEIGHT * u32::from(level)).unwrap_or(0)
}

impl TileRef {
    /// The path below the log's prefix.
    pub fn path(&self) -> String {
        let level = match self.level {
            Some(level) => level.to_string(),
            None => "entries".to_string(),
        };
        let partial = if self.width < TILE_WIDTH { format!(".p/{}", self.width) } else { String::new() };
        format!("tile/{level}/{}{partial}", index_path(self.index))
    }

    /// Reads a path below the prefix; only the canonical form is accepted (one path per tile).
    pub fn parse(path: &str) -> Option<TileRef> {
        let rest = path.strip_prefix("tile/")?;
        let (level, rest) = rest.split_once('/')?;
        let level = match level {
            "entries" => None,
            level => Some(decimal(level).filter(|level| *level <= u64::from(TILE_LEVEL_MAX))? as u8),
        };
        let (index, width) = match rest.split_once(".p/") {
            Some((index, width)) => (index, decimal(width).filter(|width| (1..TILE_WIDTH).contains(width))?),
            None => (rest, TILE_WIDTH),
        };
        let mut parsed: u64 = 0;
        let groups: Vec<&str> = index.split('/').collect();
        for (position, group) in groups.iter().enumerate() {
            let digits = if position + 1 < groups.len() { group.strip_prefix('x')? } else { group };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            parsed = parsed.checked_mul(1000)?.checked_add(digits.parse::<u64>().ok()?)?;
        }
        let tile = TileRef { level, index: parsed, width };
        (tile.path() == path).then_some(tile)
    }

    /// Every tile and entry bundle of the tree of `size` leaves: the full ones, and the
    /// partial one at each level where there is one.
    pub fn of_size(size: u64) -> Vec<TileRef> {
        let mut tiles = Vec::new();
        for level in 0..=TILE_LEVEL_MAX {
            let hashes = hashes_at(level, size);
            if hashes == 0 {
                break;
            }
            let levels: &[Option<u8>] = if level == 0 { &[Some(0), None] } else { &[Some(level)] };
            for &tile_level in levels {
                tiles.extend((0..hashes / TILE_WIDTH).map(|index| TileRef { level: tile_level, index, width: TILE_WIDTH }));
                if !hashes.is_multiple_of(TILE_WIDTH) {
                    tiles.push(TileRef { level: tile_level, index: hashes / TILE_WIDTH, width: hashes % TILE_WIDTH });
                }
            }
        }
        tiles
    }

    /// The partial tiles of the tree of `size` leaves (what a checkpoint at that size needs
    /// beside the full tiles).
    pub fn partial_of_size(size: u64) -> Vec<TileRef> {
        Self::of_size(size).into_iter().filter(|tile| tile.width < TILE_WIDTH).collect()
    }

    /// Whether the tree of `size` leaves holds this tile's hashes (or entries).
    pub fn within(&self, size: u64) -> bool {
        let hashes = hashes_at(self.level.unwrap_or(0), size);
        self.index.checked_mul(TILE_WIDTH).and_then(|first| first.checked_add(self.width)).is_some_and(|end| end <= hashes)
    }

    /// The width this tile has in the tree of `size` leaves (`None`: it has none there).
    pub fn width_at(level: Option<u8>, index: u64, size: u64) -> Option<u64> {
        let hashes = hashes_at(level.unwrap_or(0), size);
        let first = index.checked_mul(TILE_WIDTH)?;
        (first < hashes).then(|| (hashes - first).min(TILE_WIDTH))
    }
}

fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// A hash tile's bytes from `source` (`None`: the tile is an entry bundle, or the source
/// lacks one of its hashes).
pub fn tile_bytes<S: SubtreeHashes + ?Sized>(source: &S, tile: &TileRef) -> Option<Vec<u8>> {
    let level = TILE_HEIGHT * u32::from(tile.level?);
    let mut bytes = Vec::with_capacity(tile.width as usize * 32);
    for position in 0..tile.width {
        bytes.extend_from_slice(&source.complete(level, tile.index * TILE_WIDTH + position)?);
    }
    Some(bytes)
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("an entry of {0} bytes exceeds a bundle's {ENTRY_BYTES_MAX}")]
    EntryTooLarge(usize),
    #[error("the bundle is cut inside an entry")]
    Cut,
}

/// An entry bundle: each entry prefixed with its length (big-endian u16).
pub fn entry_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, BundleError> {
    let mut bundle = Vec::new();
    for entry in entries {
        let length = u16::try_from(entry.len()).map_err(|_| BundleError::EntryTooLarge(entry.len()))?;
        bundle.extend_from_slice(&length.to_be_bytes());
        bundle.extend_from_slice(entry);
    }
    Ok(bundle)
}

/// The entries of a bundle.
pub fn parse_entry_bundle(mut bundle: &[u8]) -> Result<Vec<&[u8]>, BundleError> {
    let mut entries = Vec::new();
    while let Some((length, rest)) = bundle.split_first_chunk::<2>() {
        let length = usize::from(u16::from_be_bytes(*length));
        if rest.len() < length {
            return Err(BundleError::Cut);
        }
        let (entry, rest) = rest.split_at(length);
        entries.push(entry);
        bundle = rest;
    }
    if bundle.is_empty() { Ok(entries) } else { Err(BundleError::Cut) }
}

/// The tiles a client fetched, by (level, index): `None` for one it could not have.
type FetchedTiles = BTreeMap<(u8, u64), Option<Vec<Hash>>>;

/// A client's view of a tiled log at a size it trusts (a verified checkpoint's): fetches
/// the tiles a proof needs through `fetch` (a path below the prefix → its bytes), once
/// each, at the widths that size implies, and answers `SubtreeHashes` from them. A tile of
/// the wrong length is as missing; wrong hashes give a proof that does not verify.
pub struct TileHashes<F: Fn(&str) -> Option<Vec<u8>>> {
    size: u64,
    fetch: F,
    tiles: RefCell<FetchedTiles>,
}

impl<F: Fn(&str) -> Option<Vec<u8>>> TileHashes<F> {
    pub fn new(size: u64, fetch: F) -> Self {
        Self { size, fetch, tiles: RefCell::new(BTreeMap::new()) }
    }

    /// How many tiles were fetched (or tried).
    pub fn fetched(&self) -> usize {
        self.tiles.borrow().len()
    }

    fn tile(&self, level: u8, index: u64) -> Option<Vec<Hash>> {
        if let Some(tile) = self.tiles.borrow().get(&(level, index)) {
            return tile.clone();
        }
        let tile = TileRef::width_at(Some(level), index, self.size).and_then(|width| {
            let bytes = (self.fetch)(&TileRef { level: Some(level), index, width }.path())?;
            (bytes.len() as u64 == width * 32).then(|| bytes.chunks_exact(32).map(|hash| Hash::try_from(hash).expect("chunks of 32")).collect())
        });
        self.tiles.borrow_mut().insert((level, index), tile.clone());
        tile
    }
}

impl<F: Fn(&str) -> Option<Vec<u8>>> SubtreeHashes for TileHashes<F> {
    fn complete(&self, level: u32, index: u64) -> Option<Hash> {
        let tile_level = u8::try_from(level / TILE_HEIGHT).ok()?;
        let height = level % TILE_HEIGHT;
        let first = index.checked_shl(height)?;
        let tile = self.tile(tile_level, first / TILE_WIDTH)?;
        let start = usize::try_from(first % TILE_WIDTH).ok()?;
        let mut hashes: Vec<Hash> = tile.get(start..start + (1usize << height))?.to_vec();
        while hashes.len() > 1 {
            hashes = hashes.chunks_exact(2).map(|pair| node_hash(&pair[0], &pair[1])).collect();
        }
        hashes.first().copied()
    }
}

#[cfg(test)]
mod tests;
