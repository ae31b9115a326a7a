//! The node's local state: access-grant checks, single-use challenges, the byte-bounded
//! media cache, the assignments its feed delivered, and the feed checkpoint file.

use super::status::{self};
use super::*;
use anyhow::Context;
use engine::crypto::{self, SecretKey};
use lru::LruCache;
use proto::v1::{AccessGrant, Assignment, MediaPart};
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use tonic::Status;

/// The grant of a player call, which every `NodeService` call requires.
pub fn require_grant(grant: Option<AccessGrant>) -> Result<AccessGrant, Status> {
    grant.ok_or_else(status::grant_required)
}

/// Checks a grant's access token locally, with this node's access key, at `now_ms`. Both
/// refusals are `PermissionDenied`; the messages never contain the token.
pub fn check_grant(access_key: &SecretKey, node_id: &str, grant: &AccessGrant, now_ms: i64) -> Result<(), Status> {
    let media_ids: Vec<&str> = grant.media_ids.iter().map(String::as_str).collect();
    crypto::check_access_token(access_key, node_id, &grant.voucher_id, &media_ids, grant.access_expires_at_ms, now_ms, &grant.access_token)
        .map_err(status::access_denied)
}

/// The token key a grant names: 0 (a grant made before token key rotation) is key 1.
pub fn grant_token_key_id(grant: &AccessGrant) -> u32 {
    grant.token_key_id.max(engine::token_keys::FIRST_TOKEN_KEY_ID)
}

/// The node's access keys by token key id, from RegisterNode's answer (an engine that
/// answers none names only `access_key`, token key 1's). The bytes are zeroized here.
pub fn access_keys_of(registered: &mut proto::v1::RegisterNodeResponse) -> Result<std::collections::BTreeMap<u32, SecretKey>, String> {
    let key_of = |bytes: &mut Vec<u8>| {
        let key: Result<[u8; crypto::KEY_BYTES], _> = bytes.as_slice().try_into();
        zeroize::Zeroize::zeroize(bytes);
        key.map(SecretKey::from_bytes).map_err(|_| "an access key of the wrong length".to_string())
    };
    let mut keys = std::collections::BTreeMap::new();
    if registered.access_keys.is_empty() {
        keys.insert(engine::token_keys::FIRST_TOKEN_KEY_ID, key_of(&mut registered.access_key)?);
    } else {
        zeroize::Zeroize::zeroize(&mut registered.access_key);
        for access_key in &mut registered.access_keys {
            keys.insert(access_key.token_key_id, key_of(&mut access_key.key)?);
        }
    }
    Ok(keys)
}

pub(super) fn require_media_in_grant(grant: &AccessGrant, media_id: &str) -> Result<(), Status> {
    if grant.media_ids.iter().any(|granted| granted == media_id) { Ok(()) } else { Err(status::media_not_in_grant(media_id)) }
}

// ---- challenges ----------------------------------------------------------------------------

pub(super) struct IssuedChallenge {
    pub(super) challenge: [u8; CHALLENGE_BYTES],
    pub(super) issued_at_ms: i64,
}

/// The challenges this node issued: one per voucher (a new one replaces the old), at most
/// `capacity` (the least recently issued is forgotten first), each answerable once within
/// [`CHALLENGE_TTL_MS`].
pub struct Challenges {
    pub(super) issued: LruCache<String, IssuedChallenge>,
}

impl Challenges {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self { issued: LruCache::new(capacity) }
    }

    /// A fresh random challenge for `voucher_id`.
    pub fn issue(&mut self, voucher_id: &str, now_ms: i64) -> [u8; CHALLENGE_BYTES] {
        let challenge = crypto::random_bytes::<CHALLENGE_BYTES>();
        self.issued.put(voucher_id.to_string(), IssuedChallenge { challenge, issued_at_ms: now_ms });
        challenge
    }

    /// Whether `challenge` is the one issued for `voucher_id` and still fresh. The issued
    /// challenge is consumed whatever the answer, so a wrong guess cannot be repeated.
    pub fn take(&mut self, voucher_id: &str, challenge: &[u8], now_ms: i64) -> bool {
        let Some(issued) = self.issued.pop(voucher_id) else {
            return false;
        };
        let fresh = now_ms >= issued.issued_at_ms && now_ms - issued.issued_at_ms <= CHALLENGE_TTL_MS;
        crypto::ct_eq(&issued.challenge, challenge) && fresh
    }

    pub fn len(&self) -> usize {
        self.issued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.issued.is_empty()
    }
}

// ---- the media cache -----------------------------------------------------------------------

/// One part of one media, as the cache keys it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartKey {
    pub media_id: String,
    pub part: MediaPart,
}

/// A media part's bytes and their blake3 hash (computed once, when fetched). `Bytes`, so a
/// stream hands out slices of the cached part without copying them.
#[derive(Clone, Debug)]
pub struct CachedPart {
    pub bytes: bytes::Bytes,
    pub hash: [u8; 32],
}

/// An LRU cache bounded by the bytes it holds. A part larger than the whole bound is served
/// but not kept. Counts accesses and misses for the heartbeat.
pub struct MediaCache {
    pub(super) entries: LruCache<PartKey, CachedPart>,
    pub(super) bytes: u64,
    pub(super) bytes_max: u64,
    pub(super) accesses: u64,
    pub(super) misses: u64,
}

impl MediaCache {
    pub fn new(bytes_max: u64) -> Self {
        // Unbounded by count: the byte bound below is the only bound, and it is enforced on
        // every insert.
        Self { entries: LruCache::unbounded(), bytes: 0, bytes_max, accesses: 0, misses: 0 }
    }

    /// A lookup that counts as an access (and as a miss when absent).
    pub fn get(&mut self, key: &PartKey) -> Option<CachedPart> {
        self.accesses += 1;
        let found = self.entries.get(key).cloned();
        if found.is_none() {
            self.misses += 1;
        }
        found
    }

    /// A lookup that is not counted (a re-check after waiting for a concurrent fetch).
    pub(super) fn get_uncounted(&mut self, key: &PartKey) -> Option<CachedPart> {
        self.entries.get(key).cloned()
    }

    pub fn insert(&mut self, key: PartKey, part: CachedPart) {
        let size = part.bytes.len() as u64;
        if size > self.bytes_max {
            return;
        }
        if let Some(replaced) = self.entries.put(key, part) {
            self.bytes -= replaced.bytes.len() as u64;
        }
        self.bytes += size;
        while self.bytes > self.bytes_max {
            let Some((_, evicted)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= evicted.bytes.len() as u64;
        }
    }

    pub fn items(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn accesses(&self) -> u64 {
        self.accesses
    }

    pub fn misses(&self) -> u64 {
        self.misses
    }
}

// ---- assignments ---------------------------------------------------------------------------

/// What the feed said about one voucher issued to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherAssignment {
    pub media_ids: Vec<String>,
    pub rendition: String,
    pub access_expires_at_ms: i64,
}

/// The assignments learnt from the feed, bounded (least recently used forgotten first).
pub struct Assignments {
    pub(super) vouchers: LruCache<String, VoucherAssignment>,
    pub(super) previews: LruCache<String, String>,
    pub(super) seen: u64,
    pub(super) last_seq: u64,
}

impl Assignments {
    pub fn new(vouchers_max: NonZeroUsize, previews_max: NonZeroUsize, last_seq: u64) -> Self {
        Self { vouchers: LruCache::new(vouchers_max), previews: LruCache::new(previews_max), seen: 0, last_seq }
    }

    /// Records one assignment; `false` (and nothing recorded) when its sequence is not after
    /// the last one handled (a redelivery after a reconnect).
    pub fn apply(&mut self, assignment: &Assignment) -> bool {
        if assignment.seq <= self.last_seq {
            return false;
        }
        self.last_seq = assignment.seq;
        self.seen += 1;
        if !assignment.preview_id.is_empty() {
            if let Some(media_id) = assignment.media_ids.first() {
                self.previews.put(assignment.preview_id.clone(), media_id.clone());
            }
        } else if !assignment.voucher_id.is_empty() {
            let voucher = VoucherAssignment {
                media_ids: assignment.media_ids.clone(),
                rendition: assignment.rendition.clone(),
                access_expires_at_ms: assignment.access_expires_at_ms,
            };
            self.vouchers.put(assignment.voucher_id.clone(), voucher);
        }
        true
    }

    pub fn voucher(&self, voucher_id: &str) -> Option<&VoucherAssignment> {
        self.vouchers.peek(voucher_id)
    }

    /// The media a preview plays.
    pub fn preview_media(&self, preview_id: &str) -> Option<&String> {
        self.previews.peek(preview_id)
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

// ---- the feed checkpoint -------------------------------------------------------------------

/// `<data_dir>/node-<node_id>.seq`.
pub fn checkpoint_path(data_dir: &Path, node_id: &str) -> PathBuf {
    data_dir.join(format!("node-{node_id}.seq"))
}

/// The last assignment sequence handled; 0 when there is no checkpoint yet.
pub fn read_checkpoint(path: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{} does not hold a sequence number; delete it to follow the feed from the start", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error).with_context(|| format!("cannot read the feed checkpoint {}", path.display())),
    }
}

/// Writes the checkpoint durably: a temporary file, fsync, rename over the old one, fsync
/// of the directory. A crash leaves either the old or the new checkpoint, never a torn one.
pub fn write_checkpoint(path: &Path, seq: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("seq.tmp");
    let mut file = std::fs::File::create(&temporary).with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(format!("{seq}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path).with_context(|| format!("cannot rename {} to {}", temporary.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable; not all platforms can open a directory.
        if let Ok(dir) = std::fs::File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
            dir.sync_all().ok();
        }
    }
    Ok(())
}
