//! The delivery node agent (`vouchsafe node`). It registers with the engine
//! (`DeliveryService.RegisterNode`), reports its load every [`HEARTBEAT_INTERVAL_MS`],
//! follows its assignment feed (`SubscribeAssignments`) from a checkpoint persisted in
//! `<data_dir>/node-<node_id>.seq`, and serves `NodeService` to players:
//!
//! - every player call carries an access grant that the node checks locally with its access
//!   key (DESIGN.md, "Delivery access": no engine call, today's CDN signed URL);
//! - `Challenge` hands out a fresh random challenge per voucher (bounded, single use, with a
//!   TTL); `Redeem` consumes it and forwards the player's receipt proof to the engine, which
//!   decides and answers with the media keys wrapped for the player;
//! - `Download` streams the encrypted media container in [`CHUNK_BYTES`] chunks from a
//!   byte-bounded LRU cache filled from the engine's `FetchMedia`; `Confirm` compares the
//!   player's hash of what it received with the container's and reports `CompleteDelivery`
//!   or `FailDelivery`;
//! - `PlayPreview` streams the free preview clip of a preview assigned to this node and
//!   reports `EndPreview`.
//!
//! Also here: [`Reassembly`], the checked reassembly of a chunked `MediaChunk` stream that
//! nodes (from the engine) and players (from a node) share.
//!
//! What deliberately does not live here: any decision beyond the access grant (the engine
//! checks receipt proofs, certificates and the voucher's state), any media key (the node
//! never sees one; it serves ciphertext), TLS (terminated in front of the node for now).
//! The node never logs or prints a token, proof, receipt, wrapped key or its access key:
//! requests are never formatted with `Debug`, and the access key is a [`SecretKey`].

use crate::cred::{Credential, Present};
use anyhow::{bail, Context};
use engine::clock::{Clock, SystemClock};
use engine::crypto::{self, AccessDenied, SecretKey};
use engine::media::CONTAINER_BYTES_MAX;
use lru::LruCache;
use proto::v1::delivery_service_client::DeliveryServiceClient;
use proto::v1::node_service_server::{NodeService, NodeServiceServer};
use proto::v1::{
    AccessGrant, Assignment, ChallengeRequest, ChallengeResponse, CompleteDeliveryRequest, ConfirmRequest, ConfirmResponse, DownloadRequest, EndPreviewRequest,
    FailDeliveryRequest, FetchMediaRequest, HeartbeatRequest, MediaChunk, MediaPart, PlayPreviewRequest, PlayerRedeemRequest, RedeemRequest, RedeemResponse,
    RegisterNodeRequest, SubscribeAssignmentsRequest,
};
use std::collections::BTreeSet;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

/// How often the node reports its load to the engine.
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
/// Longest wait for the engine to answer a heartbeat before it counts as failed.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 5_000;
/// Bytes of media per streamed chunk, to players.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Bytes of a challenge.
pub const CHALLENGE_BYTES: usize = 32;
/// Outstanding challenges remembered (one per voucher); the least recently issued is
/// forgotten first.
pub const CHALLENGES_MAX: usize = 16_384;
/// How long an issued challenge may be answered.
pub const CHALLENGE_TTL_MS: i64 = 2 * 60 * 1000;
/// Voucher assignments remembered from the feed.
pub const ASSIGNMENTS_MAX: usize = 100_000;
/// Preview assignments remembered from the feed.
pub const PREVIEWS_MAX: usize = 16_384;
/// Vouchers whose confirmed media this node tracks, to answer `voucher_delivered`.
pub const CONFIRMED_VOUCHERS_MAX: usize = 16_384;
/// Largest request a player may send (a grant names at most 64 media; this is generous).
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Largest message the node sends to a player (a chunk plus its framing).
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// Largest message accepted from the engine (a media chunk, a redeem answer).
pub const ENGINE_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Player calls in flight at once, over all connections; more are refused with
/// `ResourceExhausted`.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;
/// Player calls in flight at once on one connection (HTTP/2 streams and tonic's limit).
pub const REQUESTS_PER_CONNECTION_MAX: usize = 64;
/// Chunks queued ahead of a slow player per response stream (flow control: the sender
/// waits when the player does not read).
pub const STREAM_BUFFER_CHUNKS: usize = 8;
/// First and largest wait before re-subscribing to the assignment feed.
pub const FEED_BACKOFF_MIN_MS: u64 = 200;
pub const FEED_BACKOFF_MAX_MS: u64 = 10_000;
/// How long `PlayPreview` waits for the feed to deliver a preview it does not know yet (a
/// player may ask right after the merchant's `Preview`).
pub const PREVIEW_WAIT_MS: u64 = 2_000;
/// The played time `EndPreview` reports for a fully streamed clip. The feed does not carry
/// the clip's duration (the engine recorded it in `PreviewStarted`) and a clip's byte length
/// is not a duration, so the node reports this fixed figure, scaled by the share of the
/// clip's bytes streamed when a player stops early.
pub const PREVIEW_PLAYED_MS: u64 = 30_000;
/// Longest wait for a TCP connection to the engine.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long `shutdown` lets in-flight streams finish before cutting them.
pub const SHUTDOWN_GRACE_MS: u64 = 30_000;
/// How long `shutdown` waits after the last stream handed over its last chunk before it
/// closes the connections (doc of `RunningNode::shutdown`).
pub const SHUTDOWN_LINGER_MS: u64 = 500;
/// How often `shutdown` looks whether the streams in flight are done.
const SHUTDOWN_POLL_MS: u64 = 20;
/// The default of `--cache-bytes-max`.
pub const CACHE_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Stripes of the fetch lock: concurrent misses on one media part fetch it from the engine
/// once (striped, so the lock table is bounded).
const FETCH_STRIPES: usize = 64;
/// Keepalive on the engine connection, so a dead engine is noticed by the feed.
const ENGINE_KEEPALIVE_MS: u64 = 20_000;

/// The engine's delivery API as this node calls it (its credential on every call).
pub type EngineClient = DeliveryServiceClient<InterceptedService<Channel, Present>>;

/// What `vouchsafe node` is started with.
#[derive(Debug)]
pub struct NodeArgs {
    /// The engine's gRPC address, e.g. `http://127.0.0.1:7400`.
    pub connect: String,
    /// The node credential (`RegisterNodeCredential`).
    pub cred: Credential,
    /// Where to serve players; port 0 picks a free port.
    pub listen: SocketAddr,
    pub slots_max: u32,
    pub region: String,
    /// Where the feed checkpoint lives.
    pub data_dir: PathBuf,
    /// Bound of the media cache, in bytes.
    pub cache_bytes_max: u64,
    /// TLS to an `https://` engine: the CA that signed its certificate, and the node's own
    /// certificate for an engine that requires client certificates (mTLS).
    pub engine_tls: EngineTls,
}

/// PEM material for the node's connection to an `https://` engine.
#[derive(Clone, Debug, Default)]
pub struct EngineTls {
    pub ca_pem: Option<Vec<u8>>,
    /// (certificate, private key) presented in the handshake.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A snapshot of the node's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStats {
    pub cache_items: u64,
    pub cache_bytes: u64,
    pub cache_accesses: u64,
    pub cache_misses: u64,
    pub slots_in_use: u32,
    pub assignments_seen: u64,
    /// The stream sequence of the newest assignment handled (the checkpoint).
    pub last_seq: u64,
}

// ---- access grants -------------------------------------------------------------------------

/// The grant of a player call, which every `NodeService` call requires.
pub fn require_grant(grant: Option<AccessGrant>) -> Result<AccessGrant, Status> {
    grant.ok_or_else(|| Status::invalid_argument("grant is required: pass the access grant the merchant received at IssueVoucher"))
}

/// Checks a grant's access token locally, with this node's access key, at `now_ms`. Both
/// refusals are `PermissionDenied`; the messages never contain the token.
pub fn check_grant(access_key: &SecretKey, node_id: &str, grant: &AccessGrant, now_ms: i64) -> Result<(), Status> {
    let media_ids: Vec<&str> = grant.media_ids.iter().map(String::as_str).collect();
    match crypto::check_access_token(access_key, node_id, &grant.voucher_id, &media_ids, grant.access_expires_at_ms, now_ms, &grant.access_token) {
        Ok(()) => Ok(()),
        Err(AccessDenied::Expired) => Err(Status::permission_denied("access token expired; ask the merchant for a new access token")),
        Err(AccessDenied::Invalid) => Err(Status::permission_denied(
            "access token invalid for this node, voucher, media or expiry; use the grant exactly as the merchant received it at IssueVoucher",
        )),
    }
}

fn require_media_in_grant(grant: &AccessGrant, media_id: &str) -> Result<(), Status> {
    if grant.media_ids.iter().any(|granted| granted == media_id) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!("media {media_id} is not part of this grant; ask for one of the grant's media")))
    }
}

// ---- challenges ----------------------------------------------------------------------------

struct IssuedChallenge {
    challenge: [u8; CHALLENGE_BYTES],
    issued_at_ms: i64,
}

/// The challenges this node issued: one per voucher (a new one replaces the old), at most
/// `capacity` (the least recently issued is forgotten first), each answerable once within
/// [`CHALLENGE_TTL_MS`].
pub struct Challenges {
    issued: LruCache<String, IssuedChallenge>,
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

/// A media part's bytes and their blake3 hash (computed once, when fetched).
#[derive(Clone, Debug)]
pub struct CachedPart {
    pub bytes: Arc<Vec<u8>>,
    pub hash: [u8; 32],
}

/// An LRU cache bounded by the bytes it holds. A part larger than the whole bound is served
/// but not kept. Counts accesses and misses for the heartbeat.
pub struct MediaCache {
    entries: LruCache<PartKey, CachedPart>,
    bytes: u64,
    bytes_max: u64,
    accesses: u64,
    misses: u64,
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
    fn get_uncounted(&mut self, key: &PartKey) -> Option<CachedPart> {
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
    vouchers: LruCache<String, VoucherAssignment>,
    previews: LruCache<String, String>,
    seen: u64,
    last_seq: u64,
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

// ---- chunked transfers ---------------------------------------------------------------------

/// Why a chunked media stream was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("a chunk starts at offset {got} where {expected} was expected")]
    Offset { expected: u64, got: u64 },
    #[error("the total size changed from {first} to {now} during the transfer")]
    TotalChanged { first: u64, now: u64 },
    #[error("{total} bytes is over the {max}-byte limit")]
    TooLarge { total: u64, max: u64 },
    #[error("a chunk runs past the declared total of {total} bytes")]
    Overrun { total: u64 },
    #[error("an empty chunk before the end of the transfer")]
    Empty,
    #[error("the stream ended after {received} of {total} bytes; retry from offset {received}")]
    Short { received: u64, total: u64 },
}

/// Reassembles a `MediaChunk` stream: each chunk must start where the previous one ended,
/// every chunk must declare the same total, the total is bounded, and the stream must end
/// exactly at the total. A transfer resumed with a new stream from `received()` continues
/// the same reassembly.
#[derive(Debug)]
pub struct Reassembly {
    bytes: Vec<u8>,
    total: Option<u64>,
    bytes_max: u64,
}

impl Reassembly {
    pub fn new(bytes_max: usize) -> Self {
        Self { bytes: Vec::new(), total: None, bytes_max: bytes_max as u64 }
    }

    /// Bytes received so far: the offset to resume from.
    pub fn received(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn push(&mut self, chunk: MediaChunk) -> Result<(), ChunkError> {
        let total = match self.total {
            Some(first) if first != chunk.total_bytes => return Err(ChunkError::TotalChanged { first, now: chunk.total_bytes }),
            Some(first) => first,
            None => {
                if chunk.total_bytes > self.bytes_max {
                    return Err(ChunkError::TooLarge { total: chunk.total_bytes, max: self.bytes_max });
                }
                self.total = Some(chunk.total_bytes);
                // Bounded by `bytes_max` just above.
                self.bytes.reserve(usize::try_from(chunk.total_bytes).unwrap_or(0).saturating_sub(self.bytes.len()));
                chunk.total_bytes
            }
        };
        if chunk.offset != self.received() {
            return Err(ChunkError::Offset { expected: self.received(), got: chunk.offset });
        }
        if chunk.data.is_empty() && total != 0 {
            return Err(ChunkError::Empty);
        }
        if self.received() + chunk.data.len() as u64 > total {
            return Err(ChunkError::Overrun { total });
        }
        self.bytes.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// The reassembled bytes; a stream without any chunk is an empty transfer.
    pub fn finish(self) -> Result<Vec<u8>, ChunkError> {
        let total = self.total.unwrap_or(0);
        if self.received() != total {
            return Err(ChunkError::Short { received: self.received(), total });
        }
        Ok(self.bytes)
    }
}

// ---- the node ------------------------------------------------------------------------------

/// Everything the node's tasks and its `NodeService` share.
struct Shared {
    node_id: String,
    access_key: SecretKey,
    engine: EngineClient,
    /// What RegisterNode announced, sent again when a restarted engine no longer knows
    /// this node (its health registry is in memory).
    announcement: RegisterNodeRequest,
    clock: Arc<dyn Clock>,
    assignments: Mutex<Assignments>,
    /// Woken whenever the feed records an assignment (previews wait on it).
    assignment_recorded: Notify,
    challenges: Mutex<Challenges>,
    cache: Mutex<MediaCache>,
    fetch_stripes: Vec<tokio::sync::Mutex<()>>,
    /// voucher → media this node confirmed (and reported delivered).
    confirmed: Mutex<LruCache<String, BTreeSet<String>>>,
    slots_in_use: AtomicU32,
    requests: Arc<Semaphore>,
    /// Set by `shutdown`: new requests are refused while the streams in flight finish.
    draining: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn now_ms(&self) -> i64 {
        self.clock.now().0
    }

    fn stats(&self) -> NodeStats {
        let (cache_items, cache_bytes, cache_accesses, cache_misses) = {
            let cache = self.cache.lock().expect("the cache lock is never poisoned");
            (cache.items(), cache.bytes(), cache.accesses(), cache.misses())
        };
        let (assignments_seen, last_seq) = {
            let assignments = self.assignments.lock().expect("the assignments lock is never poisoned");
            (assignments.seen(), assignments.last_seq())
        };
        NodeStats { cache_items, cache_bytes, cache_accesses, cache_misses, slots_in_use: self.slots_in_use.load(Ordering::Relaxed), assignments_seen, last_seq }
    }

    fn check(&self, grant: &AccessGrant) -> Result<(), Status> {
        check_grant(&self.access_key, &self.node_id, grant, self.now_ms())
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Status::unavailable("this node is shutting down; retry with another node or later"));
        }
        self.requests.clone().try_acquire_owned().map_err(|_| Status::resource_exhausted("this node is at its limit of requests in flight; retry shortly"))
    }

    /// A media part from the cache, or fetched from the engine (once, however many callers
    /// miss at the same time).
    async fn part(&self, media_id: &str, part: MediaPart) -> Result<CachedPart, Status> {
        let key = PartKey { media_id: media_id.to_string(), part };
        if let Some(hit) = self.cache.lock().expect("the cache lock is never poisoned").get(&key) {
            return Ok(hit);
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let stripe = &self.fetch_stripes[(hasher.finish() % FETCH_STRIPES as u64) as usize];
        let _fetching = stripe.lock().await;
        if let Some(hit) = self.cache.lock().expect("the cache lock is never poisoned").get_uncounted(&key) {
            return Ok(hit);
        }
        let fetched = self.fetch(media_id, part).await?;
        self.cache.lock().expect("the cache lock is never poisoned").insert(key, fetched.clone());
        Ok(fetched)
    }

    async fn fetch(&self, media_id: &str, part: MediaPart) -> Result<CachedPart, Status> {
        let mut engine = self.engine.clone();
        let request = FetchMediaRequest { media_id: media_id.to_string(), part: part.into() };
        let mut stream = engine.fetch_media(request).await.map_err(relay)?.into_inner();
        let mut reassembly = Reassembly::new(CONTAINER_BYTES_MAX);
        while let Some(chunk) = stream.message().await.map_err(relay)? {
            reassembly.push(chunk).map_err(|error| Status::internal(format!("the engine's stream of media {media_id} is malformed: {error}")))?;
        }
        let bytes = reassembly.finish().map_err(|error| Status::unavailable(format!("the engine's stream of media {media_id} broke off: {error}; retry")))?;
        let media_id_owned = media_id.to_string();
        // Parsing and hashing up to CONTAINER_BYTES_MAX is CPU work: off the async threads.
        let checked = tokio::task::spawn_blocking(move || {
            if part == MediaPart::Container {
                engine::media::parse(&bytes).map_err(|error| Status::data_loss(format!("the engine sent media {media_id_owned} as a malformed container: {error}")))?;
            }
            let hash = crypto::hash(&bytes);
            Ok::<_, Status>(CachedPart { bytes: Arc::new(bytes), hash })
        })
        .await
        .map_err(|_| Status::internal("the media check task failed"))??;
        debug!(node_id = %self.node_id, media_id, part = part.as_str_name(), size_bytes = checked.bytes.len(), "fetched media from the engine");
        Ok(checked)
    }

    /// Waits up to [`PREVIEW_WAIT_MS`] for the feed to assign `preview_id` to this node.
    async fn preview_media(&self, preview_id: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(PREVIEW_WAIT_MS);
        loop {
            let recorded = self.assignment_recorded.notified();
            tokio::pin!(recorded);
            // Registered before the look-up, so an assignment recorded in between wakes us.
            recorded.as_mut().enable();
            if let Some(media_id) = self.assignments.lock().expect("the assignments lock is never poisoned").preview_media(preview_id) {
                return Some(media_id.clone());
            }
            if tokio::time::timeout_at(deadline, recorded).await.is_err() {
                return None;
            }
        }
    }

    /// Notes that this node confirmed `media_id` of the grant's voucher; true when every
    /// media of the grant has now been confirmed here.
    fn note_confirmed(&self, grant: &AccessGrant, media_id: &str) -> bool {
        let mut confirmed = self.confirmed.lock().expect("the confirmed lock is never poisoned");
        let media = confirmed.get_or_insert_mut(grant.voucher_id.clone(), BTreeSet::new);
        media.insert(media_id.to_string());
        let complete = grant.media_ids.iter().all(|granted| media.contains(granted));
        if complete {
            confirmed.pop(&grant.voucher_id);
        }
        complete
    }
}

/// The engine's status, as the player should see it: code and message, without the engine's
/// response metadata.
fn relay(status: Status) -> Status {
    Status::new(status.code(), status.message().to_string())
}

/// A request id derived from its parts, so a retried report lands on the same id, and short
/// enough for the engine's id rules (64 characters) however long the ids are.
fn derived_request_id(prefix: &str, parts: &[&str]) -> String {
    let mut framed = Vec::new();
    for part in [prefix].iter().chain(parts) {
        framed.extend_from_slice(&(part.len() as u64).to_le_bytes());
        framed.extend_from_slice(part.as_bytes());
    }
    format!("{prefix}-{}", hex::encode(&crypto::hash(&framed)[..16]))
}

/// Holds one of the node's slots while a stream runs.
struct SlotGuard(Arc<Shared>);

impl SlotGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.slots_in_use.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.slots_in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

type ChunkStream = Pin<Box<dyn futures::Stream<Item = Result<MediaChunk, Status>> + Send>>;

fn receiver_stream(receiver: mpsc::Receiver<Result<MediaChunk, Status>>) -> ChunkStream {
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) }))
}

/// Sends `bytes[offset..]` in chunks; the number of bytes the player took.
async fn send_chunks(sender: &mpsc::Sender<Result<MediaChunk, Status>>, bytes: &[u8], offset: usize) -> usize {
    let total_bytes = bytes.len() as u64;
    if bytes.is_empty() {
        // One empty chunk tells the player the total is zero.
        sender.send(Ok(MediaChunk { offset: 0, data: Vec::new(), total_bytes })).await.ok();
        return 0;
    }
    let mut position = offset;
    while position < bytes.len() {
        let end = usize::min(position + CHUNK_BYTES, bytes.len());
        let chunk = MediaChunk { offset: position as u64, data: bytes[position..end].to_vec(), total_bytes };
        if sender.send(Ok(chunk)).await.is_err() {
            // The player went away.
            return position - offset;
        }
        position = end;
    }
    position - offset
}

/// Refuses a player request over [`REQUEST_BYTES_MAX`] with `ResourceExhausted` (DESIGN.md,
/// "Gateways"), before anything is decoded; tonic's own decode limit would answer
/// `OutOfRange`. Every `NodeService` call takes one small message, so buffering it is cheap.
#[derive(Clone)]
struct RequestSizeLimit<S> {
    inner: S,
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

impl<S> tower_service::Service<HttpRequest> for RequestSizeLimit<S>
where
    S: tower_service::Service<HttpRequest, Response = HttpResponse, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        use http_body_util::BodyExt;
        // The clone that was made ready serves this call (tower's rule for `call`).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            match http_body_util::Limited::new(body, REQUEST_BYTES_MAX).collect().await {
                Ok(collected) => {
                    let body = tonic::body::Body::new(http_body_util::Full::new(collected.to_bytes()));
                    inner.call(http::Request::from_parts(parts, body)).await
                }
                Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                    Ok(Status::resource_exhausted(format!("the request is over this node's {REQUEST_BYTES_MAX}-byte limit")).into_http())
                }
                Err(error) => Ok(Status::cancelled(format!("the request body did not arrive: {error}")).into_http()),
            }
        })
    }
}

/// `NodeService`, served to players.
struct NodeApi {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn challenge(&self, request: Request<ChallengeRequest>) -> Result<Response<ChallengeResponse>, Status> {
        let _permit = self.shared.permit()?;
        let grant = require_grant(request.into_inner().grant)?;
        self.shared.check(&grant)?;
        let challenge = self.shared.challenges.lock().expect("the challenges lock is never poisoned").issue(&grant.voucher_id, self.shared.now_ms());
        Ok(Response::new(ChallengeResponse { challenge: challenge.to_vec() }))
    }

    async fn redeem(&self, request: Request<PlayerRedeemRequest>) -> Result<Response<RedeemResponse>, Status> {
        let _permit = self.shared.permit()?;
        let request = request.into_inner();
        let grant = require_grant(request.grant)?;
        self.shared.check(&grant)?;
        let issued_here = self.shared.challenges.lock().expect("the challenges lock is never poisoned").take(&grant.voucher_id, &request.challenge, self.shared.now_ms());
        if !issued_here {
            return Err(Status::permission_denied("challenge unknown, already used or expired; ask this node for a new challenge and answer it promptly"));
        }
        let mut engine = self.shared.engine.clone();
        let answer = engine
            .redeem(RedeemRequest {
                request_id: request.request_id,
                voucher_id: grant.voucher_id.clone(),
                cert_serial: request.cert_serial,
                consumer_id: request.consumer_id,
                challenge: request.challenge,
                proof: request.proof,
            })
            .await
            .map_err(relay)?
            .into_inner();
        info!(node_id = %self.shared.node_id, voucher_id = %grant.voucher_id, keys = answer.keys.len(), "redeemed");
        Ok(Response::new(answer))
    }

    type DownloadStream = ChunkStream;

    async fn download(&self, request: Request<DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let permit = self.shared.permit()?;
        let request = request.into_inner();
        let grant = require_grant(request.grant)?;
        self.shared.check(&grant)?;
        require_media_in_grant(&grant, &request.media_id)?;
        let container = self.shared.part(&request.media_id, MediaPart::Container).await?;
        let offset = usize::try_from(request.offset).ok().filter(|offset| *offset <= container.bytes.len()).ok_or_else(|| {
            Status::out_of_range(format!("offset {} is past the end of the {}-byte container; resume from at most its size", request.offset, container.bytes.len()))
        })?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        let slot = SlotGuard::new(&self.shared);
        let node_id = self.shared.node_id.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _permit = permit;
            let sent = send_chunks(&sender, &container.bytes, offset).await;
            debug!(%node_id, voucher_id = %grant.voucher_id, media_id = %request.media_id, offset, sent_bytes = sent, "download stream ended");
        });
        Ok(Response::new(receiver_stream(receiver)))
    }

    async fn confirm(&self, request: Request<ConfirmRequest>) -> Result<Response<ConfirmResponse>, Status> {
        let _permit = self.shared.permit()?;
        let request = request.into_inner();
        let grant = require_grant(request.grant)?;
        self.shared.check(&grant)?;
        require_media_in_grant(&grant, &request.media_id)?;
        let container = self.shared.part(&request.media_id, MediaPart::Container).await?;
        let mut engine = self.shared.engine.clone();
        if crypto::ct_eq(&request.received_hash, &container.hash) {
            engine
                .complete_delivery(CompleteDeliveryRequest {
                    request_id: derived_request_id("deliver", &[&grant.voucher_id, &request.media_id]),
                    voucher_id: grant.voucher_id.clone(),
                    media_id: request.media_id.clone(),
                    content_hash: container.hash.to_vec(),
                    size_bytes: container.bytes.len() as u64,
                })
                .await
                .map_err(relay)?;
            // The engine's answer does not say whether the voucher is complete, and a node
            // cannot ask (GetVoucher is the merchant's); this node knows what it confirmed.
            let voucher_delivered = self.shared.note_confirmed(&grant, &request.media_id);
            info!(node_id = %self.shared.node_id, voucher_id = %grant.voucher_id, media_id = %request.media_id, voucher_delivered, "delivered");
            Ok(Response::new(ConfirmResponse { voucher_delivered }))
        } else {
            // Each failure is its own report: a later failure of the same media must not be
            // taken for a retry of this one.
            let request_id = format!("fail-{}", hex::encode(crypto::random_bytes::<16>()));
            engine
                .fail_delivery(FailDeliveryRequest { request_id, voucher_id: grant.voucher_id.clone(), reason: "content hash mismatch".to_string() })
                .await
                .map_err(relay)?;
            warn!(node_id = %self.shared.node_id, voucher_id = %grant.voucher_id, media_id = %request.media_id, "delivery failed: content hash mismatch");
            Err(Status::data_loss("the received bytes do not match the media container; the delivery was reported failed, redeem and download again"))
        }
    }

    type PlayPreviewStream = ChunkStream;

    async fn play_preview(&self, request: Request<PlayPreviewRequest>) -> Result<Response<Self::PlayPreviewStream>, Status> {
        let permit = self.shared.permit()?;
        let preview_id = request.into_inner().preview_id;
        if !engine::ids::is_valid_token(&preview_id) {
            return Err(Status::invalid_argument("preview_id must be 1-64 characters of A-Z a-z 0-9 - _"));
        }
        let media_id = self
            .shared
            .preview_media(&preview_id)
            .await
            .ok_or_else(|| Status::not_found(format!("preview {preview_id} is not assigned to this node; ask the merchant for a preview and play it on the node it names")))?;
        let clip = self.shared.part(&media_id, MediaPart::PreviewClip).await?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        let slot = SlotGuard::new(&self.shared);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _permit = permit;
            let sent = send_chunks(&sender, &clip.bytes, 0).await;
            let played_ms = if clip.bytes.is_empty() { PREVIEW_PLAYED_MS } else { PREVIEW_PLAYED_MS.saturating_mul(sent as u64) / clip.bytes.len() as u64 };
            let mut engine = shared.engine.clone();
            let ended = engine
                .end_preview(EndPreviewRequest { request_id: derived_request_id("end", &[&preview_id]), preview_id: preview_id.clone(), played_ms })
                .await;
            match ended {
                Ok(_) => info!(node_id = %shared.node_id, %preview_id, %media_id, played_ms, "preview ended"),
                Err(status) => {
                    warn!(node_id = %shared.node_id, %preview_id, code = ?status.code(), message = status.message(), "EndPreview failed");
                    sender.send(Err(relay(status))).await.ok();
                }
            }
        });
        Ok(Response::new(receiver_stream(receiver)))
    }
}

// ---- background tasks ----------------------------------------------------------------------

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender also means stop.
    shutdown.wait_for(|stop| *stop).await.ok();
}

async fn heartbeat_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            _ = ticker.tick() => {}
        }
        let stats = shared.stats();
        let request = HeartbeatRequest { slots_in_use: stats.slots_in_use, cache_items: stats.cache_items, cache_accesses: stats.cache_accesses, cache_misses: stats.cache_misses };
        let mut engine = shared.engine.clone();
        match tokio::time::timeout(Duration::from_millis(HEARTBEAT_TIMEOUT_MS), engine.heartbeat(request)).await {
            Ok(Ok(_)) => debug!(node_id = %shared.node_id, slots_in_use = stats.slots_in_use, "heartbeat"),
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                // The engine restarted and forgot this node: announce it again.
                match engine.register_node(shared.announcement.clone()).await {
                    Ok(_) => info!(node_id = %shared.node_id, "announced again to a restarted engine"),
                    Err(status) => warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), "announcing again failed; retrying at the next interval"),
                }
            }
            Ok(Err(status)) => warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), "heartbeat failed; retrying at the next interval"),
            Err(_) => warn!(node_id = %shared.node_id, timeout_ms = HEARTBEAT_TIMEOUT_MS, "heartbeat timed out; retrying at the next interval"),
        }
    }
}

async fn feed_loop(shared: Arc<Shared>, checkpoint: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let mut backoff_ms = FEED_BACKOFF_MIN_MS;
    let mut resubscribing = false;
    loop {
        let after_seq = shared.assignments.lock().expect("the assignments lock is never poisoned").last_seq();
        let mut engine = shared.engine.clone();
        if resubscribing {
            // The feed broke: the engine may have restarted and forgotten this node.
            // Announce again now rather than at the next heartbeat, so sales resume at once.
            let announced = tokio::select! {
                () = stopped(&mut shutdown) => return,
                announced = engine.register_node(shared.announcement.clone()) => announced,
            };
            if let Err(status) = announced {
                warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), backoff_ms, "cannot announce to the engine; retrying");
                tokio::select! {
                    () = stopped(&mut shutdown) => return,
                    () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                }
                backoff_ms = (backoff_ms * 2).min(FEED_BACKOFF_MAX_MS);
                continue;
            }
        }
        resubscribing = true;
        let subscribed = tokio::select! {
            () = stopped(&mut shutdown) => return,
            subscribed = engine.subscribe_assignments(SubscribeAssignmentsRequest { after_seq }) => subscribed,
        };
        match subscribed {
            Ok(response) => {
                backoff_ms = FEED_BACKOFF_MIN_MS;
                debug!(node_id = %shared.node_id, after_seq, "following the assignment feed");
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        () = stopped(&mut shutdown) => return,
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(assignment)) => {
                            backoff_ms = FEED_BACKOFF_MIN_MS;
                            if let Err(error) = record(&shared, &checkpoint, assignment).await {
                                warn!(node_id = %shared.node_id, error = format!("{error:#}"), "cannot persist the feed checkpoint; re-subscribing");
                                break;
                            }
                        }
                        Ok(None) => {
                            debug!(node_id = %shared.node_id, "the assignment feed ended; re-subscribing");
                            break;
                        }
                        Err(status) => {
                            warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), "the assignment feed failed; re-subscribing");
                            break;
                        }
                    }
                }
            }
            Err(status) => warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), backoff_ms, "cannot subscribe to the assignment feed; retrying"),
        }
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
        }
        backoff_ms = (backoff_ms * 2).min(FEED_BACKOFF_MAX_MS);
    }
}

/// Records one assignment and persists the checkpoint after it.
async fn record(shared: &Arc<Shared>, checkpoint: &Path, assignment: Assignment) -> anyhow::Result<()> {
    let recorded = shared.assignments.lock().expect("the assignments lock is never poisoned").apply(&assignment);
    if !recorded {
        return Ok(());
    }
    shared.assignment_recorded.notify_waiters();
    if assignment.preview_id.is_empty() {
        debug!(node_id = %shared.node_id, seq = assignment.seq, voucher_id = %assignment.voucher_id, media = assignment.media_ids.len(), "voucher assigned");
    } else {
        debug!(node_id = %shared.node_id, seq = assignment.seq, preview_id = %assignment.preview_id, "preview assigned");
    }
    let path = checkpoint.to_path_buf();
    let seq = assignment.seq;
    tokio::task::spawn_blocking(move || write_checkpoint(&path, seq)).await.context("the checkpoint task failed")?
}

// ---- starting and stopping -----------------------------------------------------------------

/// A started node: its identity, address and counters, and the handle to stop it.
pub struct RunningNode {
    shared: Arc<Shared>,
    endpoint: String,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode").field("node_id", &self.shared.node_id).field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl RunningNode {
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Where players reach this node, e.g. `http://127.0.0.1:40123` (as registered).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> NodeStats {
        self.shared.stats()
    }

    /// What the feed said about a voucher, if it has been assigned here.
    pub fn assignment(&self, voucher_id: &str) -> Option<VoucherAssignment> {
        self.shared.assignments.lock().expect("the assignments lock is never poisoned").voucher(voucher_id).cloned()
    }

    /// Stops gracefully: new requests are refused (Unavailable) while the calls and
    /// streams in flight finish, then the server stops accepting and closes its connections
    /// (all of it within [`SHUTDOWN_GRACE_MS`]), then the heartbeat and the feed stop.
    ///
    /// The server is told to stop only once every download has handed its last chunk over
    /// and `SHUTDOWN_LINGER_MS` more have passed: hyper closes an HTTP/2 connection as soon
    /// as its last stream is written, and a close with the client's window updates still
    /// unread makes the kernel send a reset that can destroy the stream's tail before a
    /// slow player reads it.
    pub async fn shutdown(self) {
        let Self { shared, shutdown, mut server, tasks, .. } = self;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
        shared.draining.store(true, Ordering::Relaxed);
        let idle = || shared.slots_in_use.load(Ordering::Relaxed) == 0 && shared.requests.available_permits() == REQUESTS_IN_FLIGHT_MAX;
        while !idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
        }
        tokio::time::sleep(Duration::from_millis(SHUTDOWN_LINGER_MS).min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
        shutdown.send_replace(true);
        match tokio::time::timeout_at(deadline.max(tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_LINGER_MS)), &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(node_id = %shared.node_id, %error, "the node server stopped with an error"),
            Ok(Err(error)) => warn!(node_id = %shared.node_id, %error, "the node server task failed"),
            Err(_) => {
                warn!(node_id = %shared.node_id, grace_ms = SHUTDOWN_GRACE_MS, "streams still running after the grace period; cutting them");
                server.abort();
            }
        }
        for task in tasks {
            task.await.ok();
        }
        info!(node_id = %shared.node_id, "node stopped");
    }
}

/// The address players are told: the bound address, with loopback instead of an unspecified
/// ("all interfaces") address, which no client can dial.
fn advertised_endpoint(local_addr: SocketAddr) -> String {
    let advertised = match local_addr {
        SocketAddr::V4(addr) if addr.ip().is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        SocketAddr::V6(addr) if addr.ip().is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
        other => other,
    };
    if advertised != local_addr {
        warn!(%local_addr, %advertised, "listening on all interfaces; registering the loopback address, which only local players can reach");
    }
    format!("http://{advertised}")
}

/// Connects to the engine and registers; the client and the registration's node id and
/// access key.
async fn register(args: &NodeArgs, credential: Credential, endpoint: &str) -> anyhow::Result<(EngineClient, String, SecretKey)> {
    let mut engine_endpoint = Endpoint::from_shared(args.connect.clone())
        .with_context(|| format!("--connect {} is not a URL such as http://127.0.0.1:7400", args.connect))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_millis(ENGINE_KEEPALIVE_MS))
        .keep_alive_while_idle(true);
    if args.connect.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &args.engine_tls.ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &args.engine_tls.client_identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        engine_endpoint = engine_endpoint.tls_config(tls).context("TLS configuration for the engine connection")?;
    } else if args.engine_tls.client_identity.is_some() {
        bail!("a client certificate needs an https:// engine URL, not {}", args.connect);
    }
    let channel = engine_endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the engine at {}; is `vouchsafe serve` running there?", args.connect))?;
    let mut engine = DeliveryServiceClient::with_interceptor(channel, Present(Arc::new(credential)))
        .max_decoding_message_size(ENGINE_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(ENGINE_MESSAGE_BYTES_MAX);
    let request = RegisterNodeRequest { region: args.region.clone(), slots_max: args.slots_max, endpoint: endpoint.to_string() };
    let mut registered = engine
        .register_node(request)
        .await
        .map_err(|status| anyhow::anyhow!("the engine refused RegisterNode ({:?}): {}", status.code(), status.message()))?
        .into_inner();
    if !engine::ids::is_valid_token(&registered.node_id) {
        bail!("the engine answered RegisterNode with an unusable node id");
    }
    let access_key: [u8; crypto::KEY_BYTES] = registered.access_key.as_slice().try_into().map_err(|_| anyhow::anyhow!("the engine answered RegisterNode with an access key of the wrong length"))?;
    zeroize::Zeroize::zeroize(&mut registered.access_key);
    Ok((engine, registered.node_id, SecretKey::from_bytes(access_key)))
}

/// Starts a node on the system clock: binds `listen`, registers, starts the heartbeat, the
/// feed and the player service.
pub async fn start(args: NodeArgs) -> anyhow::Result<RunningNode> {
    start_with_clock(args, Arc::new(SystemClock)).await
}

/// [`start`] with the clock that access tokens and challenges are checked against.
pub async fn start_with_clock(args: NodeArgs, clock: Arc<dyn Clock>) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let local_addr = listener.local_addr().context("the listener has no local address")?;
    let endpoint = advertised_endpoint(local_addr);
    let (engine, node_id, access_key) = register(&args, args.cred.clone(), &endpoint).await?;
    let checkpoint = checkpoint_path(&args.data_dir, &node_id);
    let last_seq = read_checkpoint(&checkpoint)?;
    info!(%node_id, region = %args.region, %endpoint, slots_max = args.slots_max, last_seq, "registered with the engine");

    let shared = Arc::new(Shared {
        node_id,
        access_key,
        engine,
        announcement: RegisterNodeRequest { region: args.region.clone(), slots_max: args.slots_max, endpoint: endpoint.clone() },
        clock,
        assignments: Mutex::new(Assignments::new(
            NonZeroUsize::new(ASSIGNMENTS_MAX).expect("ASSIGNMENTS_MAX is not zero"),
            NonZeroUsize::new(PREVIEWS_MAX).expect("PREVIEWS_MAX is not zero"),
            last_seq,
        )),
        assignment_recorded: Notify::new(),
        challenges: Mutex::new(Challenges::new(NonZeroUsize::new(CHALLENGES_MAX).expect("CHALLENGES_MAX is not zero"))),
        cache: Mutex::new(MediaCache::new(args.cache_bytes_max)),
        fetch_stripes: (0..FETCH_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        confirmed: Mutex::new(LruCache::new(NonZeroUsize::new(CONFIRMED_VOUCHERS_MAX).expect("CONFIRMED_VOUCHERS_MAX is not zero"))),
        slots_in_use: AtomicU32::new(0),
        requests: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
        draining: std::sync::atomic::AtomicBool::new(false),
    });

    let (shutdown, shutdown_receiver) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(heartbeat_loop(shared.clone(), shutdown_receiver.clone())),
        tokio::spawn(feed_loop(shared.clone(), checkpoint, shutdown_receiver.clone())),
    ];
    let service = NodeServiceServer::new(NodeApi { shared: shared.clone() })
        .max_decoding_message_size(REQUEST_BYTES_MAX)
        .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server_shutdown = shutdown_receiver;
    let server = tokio::spawn(
        Server::builder()
            .layer(tower_layer::layer_fn(|inner| RequestSizeLimit { inner }))
            .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
            .max_concurrent_streams(u32::try_from(REQUESTS_PER_CONNECTION_MAX).expect("a small limit fits in u32"))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move { stopped(&mut server_shutdown).await }),
    );
    Ok(RunningNode { shared, endpoint, local_addr, shutdown, server, tasks })
}

/// Runs a node until `shutdown` completes, then stops it gracefully. Fails when the node
/// cannot start or its server stops on its own.
pub async fn run(args: NodeArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let mut node = start(args).await?;
    tokio::pin!(shutdown);
    let server_ended = tokio::select! {
        () = &mut shutdown => None,
        ended = &mut node.server => Some(ended),
    };
    match server_ended {
        None => {
            node.shutdown().await;
            Ok(())
        }
        Some(ended) => {
            node.shutdown.send_replace(true);
            for task in node.tasks.drain(..) {
                task.await.ok();
            }
            match ended {
                Ok(Ok(())) => bail!("the node server stopped on its own"),
                Ok(Err(error)) => Err(error).context("the node server failed"),
                Err(error) => Err(error).context("the node server task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "n1";
    const NOW_MS: i64 = 1_000_000;

    fn grant(key: &SecretKey, node_id: &str, expires_at_ms: i64) -> AccessGrant {
        let media_ids = vec!["md1".to_string(), "md2".to_string()];
        let refs: Vec<&str> = media_ids.iter().map(String::as_str).collect();
        let access_token = crypto::access_token(key, node_id, "v1", &refs, expires_at_ms).to_vec();
        AccessGrant { voucher_id: "v1".into(), media_ids, access_expires_at_ms: expires_at_ms, access_token }
    }

    #[test]
    fn a_valid_grant_passes_and_every_altered_or_expired_one_is_permission_denied() {
        let key = SecretKey::random();
        let valid = grant(&key, NODE, NOW_MS + 60_000);
        check_grant(&key, NODE, &valid, NOW_MS).expect("a fresh grant for this node passes");
        check_grant(&key, NODE, &valid, NOW_MS + 60_000).expect("valid up to and including its expiry");

        let expired = check_grant(&key, NODE, &valid, NOW_MS + 60_001).expect_err("expired");
        assert_eq!(expired.code(), tonic::Code::PermissionDenied);
        assert!(expired.message().contains("ask the merchant for a new access token"), "{}", expired.message());

        let mut alterations: Vec<(&str, AccessGrant)> = Vec::new();
        let mut other_voucher = valid.clone();
        other_voucher.voucher_id = "v2".into();
        alterations.push(("voucher", other_voucher));
        let mut fewer_media = valid.clone();
        fewer_media.media_ids.pop();
        alterations.push(("media", fewer_media));
        let mut later = valid.clone();
        later.access_expires_at_ms += 1;
        alterations.push(("expiry", later));
        let mut flipped = valid.clone();
        flipped.access_token[0] ^= 1;
        alterations.push(("token", flipped));
        let mut short = valid.clone();
        short.access_token.truncate(31);
        alterations.push(("short token", short));
        for (what, altered) in alterations {
            let status = check_grant(&key, NODE, &altered, NOW_MS).expect_err(what);
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{what}");
            assert!(!status.message().contains(&hex::encode(&valid.access_token)), "never echoes the token");
        }
        let other_node = check_grant(&key, "n2", &valid, NOW_MS).expect_err("minted for n1");
        assert_eq!(other_node.code(), tonic::Code::PermissionDenied);
        let other_key = check_grant(&SecretKey::random(), NODE, &valid, NOW_MS).expect_err("another node's key");
        assert_eq!(other_key.code(), tonic::Code::PermissionDenied);
        assert_eq!(require_grant(None).expect_err("missing").code(), tonic::Code::InvalidArgument);
        assert!(require_media_in_grant(&valid, "md2").is_ok());
        assert_eq!(require_media_in_grant(&valid, "md3").expect_err("not granted").code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn challenges_are_single_use_fresh_bounded_and_per_voucher() {
        let mut challenges = Challenges::new(NonZeroUsize::new(2).expect("two"));
        let first = challenges.issue("v1", NOW_MS);
        assert!(challenges.take("v1", &first, NOW_MS + 10), "the issued challenge is accepted");
        assert!(!challenges.take("v1", &first, NOW_MS + 10), "but only once");

        let issued = challenges.issue("v1", NOW_MS);
        assert!(!challenges.take("v2", &issued, NOW_MS), "bound to its voucher");
        assert!(challenges.take("v1", &issued, NOW_MS));

        let issued = challenges.issue("v1", NOW_MS);
        let mut wrong = issued;
        wrong[0] ^= 1;
        assert!(!challenges.take("v1", &wrong, NOW_MS), "a wrong answer is refused");
        assert!(!challenges.take("v1", &issued, NOW_MS), "and burns the challenge");

        let stale = challenges.issue("v1", NOW_MS);
        assert!(!challenges.take("v1", &stale, NOW_MS + CHALLENGE_TTL_MS + 1), "expired");
        let edge = challenges.issue("v1", NOW_MS);
        assert!(challenges.take("v1", &edge, NOW_MS + CHALLENGE_TTL_MS), "fresh up to the TTL");

        let replaced = challenges.issue("v1", NOW_MS);
        let newer = challenges.issue("v1", NOW_MS);
        assert_ne!(replaced, newer, "random");
        assert!(!challenges.take("v1", &replaced, NOW_MS), "a new challenge replaces the old one");

        let a = challenges.issue("a", NOW_MS);
        let b = challenges.issue("b", NOW_MS);
        let c = challenges.issue("c", NOW_MS);
        assert_eq!(challenges.len(), 2, "bounded");
        assert!(!challenges.take("a", &a, NOW_MS), "the oldest is forgotten");
        assert!(challenges.take("b", &b, NOW_MS));
        assert!(challenges.take("c", &c, NOW_MS));
        assert!(challenges.is_empty());
    }

    fn part(size: usize, fill: u8) -> CachedPart {
        let bytes = vec![fill; size];
        CachedPart { hash: crypto::hash(&bytes), bytes: Arc::new(bytes) }
    }

    fn key(media_id: &str) -> PartKey {
        PartKey { media_id: media_id.into(), part: MediaPart::Container }
    }

    #[test]
    fn the_media_cache_is_bounded_by_bytes_evicts_least_recent_and_counts() {
        let mut cache = MediaCache::new(100);
        assert!(cache.get(&key("a")).is_none());
        cache.insert(key("a"), part(40, 1));
        cache.insert(key("b"), part(40, 2));
        assert_eq!((cache.items(), cache.bytes()), (2, 80));
        assert_eq!(cache.get(&key("a")).expect("a is cached").bytes[0], 1, "a is now most recent");
        cache.insert(key("c"), part(40, 3));
        assert!(cache.bytes() <= 100, "never over the bound");
        assert!(cache.get(&key("b")).is_none(), "b, least recently used, was evicted");
        assert!(cache.get(&key("a")).is_some());
        assert!(cache.get(&key("c")).is_some());
        assert_eq!((cache.accesses(), cache.misses()), (5, 2));

        cache.insert(key("huge"), part(101, 4));
        assert!(cache.get(&key("huge")).is_none(), "a part over the whole bound is not kept");
        assert_eq!(cache.items(), 2);

        cache.insert(key("a"), part(10, 5));
        assert_eq!(cache.bytes(), 50, "a replaced entry's bytes are given back");
        let clip = PartKey { media_id: "a".into(), part: MediaPart::PreviewClip };
        assert!(cache.get(&clip).is_none(), "parts of one media are separate entries");
        assert!(cache.get_uncounted(&key("a")).is_some());
        assert_eq!((cache.accesses(), cache.misses()), (7, 4), "uncounted look-ups are not counted");
    }

    fn assignment(seq: u64, voucher_id: &str, preview_id: &str) -> Assignment {
        Assignment {
            seq,
            voucher_id: voucher_id.into(),
            media_ids: vec!["md1".into()],
            rendition: "high".into(),
            access_expires_at_ms: NOW_MS,
            preview_id: preview_id.into(),
        }
    }

    #[test]
    fn assignments_skip_redeliveries_and_stay_bounded() {
        let two = NonZeroUsize::new(2).expect("two");
        let mut assignments = Assignments::new(two, two, 10);
        assert!(!assignments.apply(&assignment(10, "v0", "")), "at or before the checkpoint: already handled");
        assert!(assignments.apply(&assignment(11, "v1", "")));
        assert!(assignments.apply(&assignment(12, "", "p1")));
        assert!(!assignments.apply(&assignment(12, "v9", "")), "a redelivery");
        assert_eq!((assignments.seen(), assignments.last_seq()), (2, 12));
        assert_eq!(assignments.voucher("v1").expect("assigned").media_ids, vec!["md1".to_string()]);
        assert_eq!(assignments.preview_media("p1").map(String::as_str), Some("md1"));
        assert!(assignments.voucher("v9").is_none());
        assert!(assignments.apply(&assignment(13, "v2", "")));
        assert!(assignments.apply(&assignment(14, "v3", "")));
        assert!(assignments.voucher("v1").is_none(), "bounded: the oldest voucher is forgotten");
        assert!(assignments.voucher("v3").is_some());
    }

    #[test]
    fn the_checkpoint_round_trips_replaces_atomically_and_refuses_garbage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = checkpoint_path(dir.path(), NODE);
        assert_eq!(path.file_name().and_then(|name| name.to_str()), Some("node-n1.seq"));
        assert_eq!(read_checkpoint(&path).expect("missing is zero"), 0);
        write_checkpoint(&path, 42).expect("written");
        assert_eq!(read_checkpoint(&path).expect("reads"), 42);
        write_checkpoint(&path, u64::MAX).expect("rewritten");
        assert_eq!(read_checkpoint(&path).expect("reads"), u64::MAX);
        assert!(!path.with_extension("seq.tmp").exists(), "no temporary file is left behind");
        std::fs::write(&path, "not a number").expect("write");
        let error = read_checkpoint(&path).expect_err("garbage");
        assert!(format!("{error:#}").contains("delete it"), "{error:#}");
    }

    fn chunk(offset: u64, data: &[u8], total_bytes: u64) -> MediaChunk {
        MediaChunk { offset, data: data.to_vec(), total_bytes }
    }

    #[test]
    fn reassembly_accepts_contiguous_chunks_and_refuses_every_inconsistency() {
        let mut whole = Reassembly::new(10);
        whole.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(whole.received(), 3);
        whole.push(chunk(3, b"de", 5)).expect("second");
        assert_eq!(whole.finish().expect("complete"), b"abcde");

        assert_eq!(Reassembly::new(10).finish().expect("no chunks is an empty transfer"), b"");
        let mut empty = Reassembly::new(10);
        empty.push(chunk(0, b"", 0)).expect("an empty total");
        assert_eq!(empty.finish().expect("empty"), b"");

        let mut gap = Reassembly::new(10);
        gap.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(gap.push(chunk(4, b"e", 5)), Err(ChunkError::Offset { expected: 3, got: 4 }));
        let mut resent = Reassembly::new(10);
        resent.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(resent.push(chunk(0, b"abc", 5)), Err(ChunkError::Offset { expected: 3, got: 0 }));
        let mut changed = Reassembly::new(10);
        changed.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(changed.push(chunk(3, b"de", 6)), Err(ChunkError::TotalChanged { first: 5, now: 6 }));
        assert_eq!(Reassembly::new(10).push(chunk(0, b"a", 11)), Err(ChunkError::TooLarge { total: 11, max: 10 }));
        assert_eq!(Reassembly::new(10).push(chunk(0, b"abcdef", 5)), Err(ChunkError::Overrun { total: 5 }));
        assert_eq!(Reassembly::new(10).push(chunk(0, b"", 5)), Err(ChunkError::Empty));
        let mut short = Reassembly::new(10);
        short.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(short.finish(), Err(ChunkError::Short { received: 3, total: 5 }));
    }

    #[tokio::test]
    async fn chunks_are_sent_from_the_offset_and_reassemble() {
        let bytes: Vec<u8> = (0..(CHUNK_BYTES * 2 + 10)).map(|i| (i % 251) as u8).collect();
        for offset in [0, 1, CHUNK_BYTES, bytes.len()] {
            let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
            let source = bytes.clone();
            let sending = tokio::spawn(async move { send_chunks(&sender, &source, offset).await });
            let mut reassembly = Reassembly::new(bytes.len());
            // Resume as a player would: the bytes before `offset` were received earlier.
            if offset > 0 {
                reassembly.push(chunk(0, &bytes[..offset], bytes.len() as u64)).expect("earlier part");
            }
            while let Some(item) = receiver.recv().await {
                let item = item.expect("no error");
                assert!(item.data.len() <= CHUNK_BYTES);
                reassembly.push(item).expect("contiguous");
            }
            assert_eq!(sending.await.expect("sender"), bytes.len() - offset);
            assert_eq!(reassembly.finish().expect("complete"), bytes, "offset {offset}");
        }
    }

    #[test]
    fn derived_request_ids_are_deterministic_distinct_and_valid() {
        let voucher = format!("v{}", "a".repeat(32));
        let media = format!("md{}", "b".repeat(32));
        let id = derived_request_id("deliver", &[&voucher, &media]);
        assert_eq!(id, derived_request_id("deliver", &[&voucher, &media]));
        assert_ne!(id, derived_request_id("deliver", &[&voucher, "md2"]));
        assert_ne!(derived_request_id("x", &["ab", "c"]), derived_request_id("x", &["a", "bc"]), "framed");
        assert!(engine::ids::is_valid_token(&id), "{id}");
        assert!(id.starts_with("deliver-"));
    }

    #[test]
    fn an_unspecified_listen_address_is_advertised_as_loopback() {
        assert_eq!(advertised_endpoint("127.0.0.1:7000".parse().expect("addr")), "http://127.0.0.1:7000");
        assert_eq!(advertised_endpoint("0.0.0.0:7001".parse().expect("addr")), "http://127.0.0.1:7001");
        assert_eq!(advertised_endpoint("[::]:7002".parse().expect("addr")), "http://[::1]:7002");
    }
}
