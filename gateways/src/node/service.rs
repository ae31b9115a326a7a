//! `NodeService`, served to players, with what its handlers share (`Shared`): the engine
//! client, the state, the slot guard, chunked sending, and the request-size guard.

use super::state::*;
use super::status::{self, relay};
use super::*;
use engine::clock::Clock;
use engine::crypto::{self, SecretKey};
use engine::media::CONTAINER_BYTES_MAX;
use lru::LruCache;
use proto::v1::node_service_server::NodeService;
use proto::v1::{
    AccessGrant, ChallengeRequest, ChallengeResponse, CompleteDeliveryRequest, ConfirmRequest, ConfirmResponse, DownloadRequest, EndPreviewRequest,
    FailDeliveryRequest, FetchMediaRequest, MediaChunk, MediaPart, PlayPreviewRequest, PlayerRedeemRequest, RedeemRequest, RedeemResponse, RegisterNodeRequest,
    RegisterNodeResponse,
};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

// ---- the node ------------------------------------------------------------------------------

/// Everything the node's tasks and its `NodeService` share.
pub(super) struct Shared {
    pub(super) node_id: String,
    /// The access keys by token key id; a grant naming a newer id than these makes the
    /// node announce itself again to get the key (`check`).
    pub(super) access_keys: Mutex<BTreeMap<u32, SecretKey>>,
    /// When the node last asked the engine for its access keys (at most once a second).
    pub(super) key_refresh: tokio::sync::Mutex<Option<std::time::Instant>>,
    pub(super) engine: EngineClient,
    /// What RegisterNode announced, sent again when a restarted engine no longer knows
    /// this node (its health registry is in memory).
    pub(super) announcement: RegisterNodeRequest,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) assignments: Mutex<Assignments>,
    /// Woken whenever the feed records an assignment (previews wait on it).
    pub(super) assignment_recorded: Notify,
    pub(super) challenges: Mutex<Challenges>,
    pub(super) cache: Mutex<MediaCache>,
    pub(super) fetch_stripes: Vec<tokio::sync::Mutex<()>>,
    /// voucher → media this node confirmed (and reported delivered).
    pub(super) confirmed: Mutex<LruCache<String, BTreeSet<String>>>,
    pub(super) slots_in_use: AtomicU32,
    /// PlayPreview calls waiting for the feed to assign their preview id here.
    pub(super) preview_waits: AtomicU32,
    /// Connections closed at accept (`common::peers`).
    pub(super) connections_refused: Arc<std::sync::atomic::AtomicU64>,
    pub(super) requests: Arc<Semaphore>,
    pub(super) limits: NodeLimits,
    /// Set by `shutdown`: new requests are refused while the streams in flight finish.
    pub(super) draining: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(super) fn now_ms(&self) -> i64 {
        self.clock.now().0
    }

    pub(super) fn stats(&self) -> NodeStats {
        let (cache_items, cache_bytes, cache_accesses, cache_misses) = {
            let cache = self.cache.lock().expect("the cache lock is never poisoned");
            (cache.items(), cache.bytes(), cache.accesses(), cache.misses())
        };
        let (assignments_seen, last_seq) = {
            let assignments = self.assignments.lock().expect("the assignments lock is never poisoned");
            (assignments.seen(), assignments.last_seq())
        };
        NodeStats {
            cache_items,
            cache_bytes,
            cache_accesses,
            cache_misses,
            slots_in_use: self.slots_in_use.load(Ordering::Relaxed),
            preview_waits: self.preview_waits.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            assignments_seen,
            last_seq,
        }
    }

    /// Checks a grant with the access key of the token key it names, first asking the
    /// engine for its keys when the grant names a newer id than this node holds (a rotation
    /// since it registered; at most once per `KEY_REFRESH_INTERVAL_MS`).
    pub(super) async fn check(&self, grant: &AccessGrant) -> Result<(), Status> {
        let key_id = grant_token_key_id(grant);
        let (known, newest) = self.access_key(key_id);
        if let Some(key) = known {
            return check_grant(&key, &self.node_id, grant, self.now_ms());
        }
        if key_id > newest {
            self.refresh_access_keys(Some(key_id)).await;
            if let (Some(key), _) = self.access_key(key_id) {
                return check_grant(&key, &self.node_id, grant, self.now_ms());
            }
        }
        Err(status::access_denied(engine::crypto::AccessDenied::Invalid))
    }

    /// The access key of `key_id` if held, and the newest id held.
    fn access_key(&self, key_id: u32) -> (Option<SecretKey>, u32) {
        let keys = self.access_keys.lock().expect("the access keys lock is never poisoned");
        (keys.get(&key_id).cloned(), keys.keys().next_back().copied().unwrap_or(0))
    }

    /// Whether this node holds the access key of `key_id`.
    pub(super) fn holds_access_key(&self, key_id: u32) -> bool {
        self.access_key(key_id).0.is_some()
    }

    /// Takes the access keys of a RegisterNode answer.
    pub(super) fn take_access_keys(&self, registered: &mut RegisterNodeResponse) {
        match access_keys_of(registered) {
            Ok(keys) => self.access_keys.lock().expect("the access keys lock is never poisoned").extend(keys),
            Err(problem) => warn!(node_id = %self.node_id, %problem, "the engine's RegisterNode answer had an unusable access key"),
        }
    }

    /// Announces the node again to get the access keys of every token key the engine holds
    /// (once per interval, however many callers ask; `wanted` is already held: nothing).
    pub(super) async fn refresh_access_keys(&self, wanted: Option<u32>) {
        let mut last = self.key_refresh.lock().await;
        if wanted.is_some_and(|key_id| self.holds_access_key(key_id)) {
            return;
        }
        if last.is_some_and(|at| at.elapsed() < Duration::from_millis(KEY_REFRESH_INTERVAL_MS)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let mut engine = self.engine.clone();
        match tokio::time::timeout(Duration::from_millis(KEY_REFRESH_TIMEOUT_MS), engine.register_node(self.announcement.clone())).await {
            Ok(Ok(answer)) => {
                self.take_access_keys(&mut answer.into_inner());
                info!(node_id = %self.node_id, "took up the access keys of a new token key");
            }
            Ok(Err(status)) => {
                warn!(node_id = %self.node_id, code = ?status.code(), message = status.message(), "could not get the access keys of a new token key")
            }
            Err(_) => warn!(node_id = %self.node_id, "asking for the access keys of a new token key timed out"),
        }
    }

    pub(super) fn permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(status::shutting_down());
        }
        self.requests.clone().try_acquire_owned().map_err(|_| status::requests_in_flight_limit())
    }

    /// A media part from the cache, or fetched from the engine (once, however many callers
    /// miss at the same time).
    pub(super) async fn part(&self, media_id: &str, part: MediaPart) -> Result<CachedPart, Status> {
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

    pub(super) async fn fetch(&self, media_id: &str, part: MediaPart) -> Result<CachedPart, Status> {
        let mut engine = self.engine.clone();
        let request = FetchMediaRequest { media_id: media_id.to_string(), part: part.into() };
        let mut stream = engine.fetch_media(request).await.map_err(relay)?.into_inner();
        let mut reassembly = Reassembly::new(CONTAINER_BYTES_MAX);
        while let Some(chunk) = stream.message().await.map_err(relay)? {
            reassembly.push(chunk).map_err(|error| status::engine_stream_malformed(media_id, &error))?;
        }
        let bytes = reassembly.finish().map_err(|error| status::engine_stream_broke_off(media_id, &error))?;
        let media_id_owned = media_id.to_string();
        // Parsing and hashing up to CONTAINER_BYTES_MAX is CPU work: off the async threads.
        let checked = tokio::task::spawn_blocking(move || {
            if part == MediaPart::Container {
                engine::media::parse(&bytes).map_err(|error| status::engine_container_malformed(&media_id_owned, &error))?;
            }
            let hash = crypto::hash(&bytes);
            Ok::<_, Status>(CachedPart { bytes: bytes::Bytes::from(bytes), hash })
        })
        .await
        .map_err(|error| status::check_task_failed(&error))??;
        debug!(node_id = %self.node_id, media_id, part = part.as_str_name(), size_bytes = checked.bytes.len(), "fetched media from the engine");
        Ok(checked)
    }

    /// Waits up to [`PREVIEW_WAIT_MS`] for the feed to assign `preview_id` to this node
    /// (counted in `preview_waits` meanwhile).
    pub(super) async fn preview_media(&self, preview_id: &str) -> Result<String, Status> {
        if let Some(media_id) = self.assignments.lock().expect("the assignments lock is never poisoned").preview_media(preview_id) {
            return Ok(media_id.clone());
        }
        // Not assigned here (yet): wait for the feed, unless `preview_waits_max` calls
        // already wait (a flood of made-up ids): then this one is refused at once.
        let Some(_waiting) = WaitGuard::enter_below(&self.preview_waits, self.limits.preview_waits_max) else {
            return Err(status::preview_waits_limit(self.limits.preview_waits_max));
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(PREVIEW_WAIT_MS);
        loop {
            let recorded = self.assignment_recorded.notified();
            tokio::pin!(recorded);
            // Registered before the look-up, so an assignment recorded in between wakes us.
            recorded.as_mut().enable();
            if let Some(media_id) = self.assignments.lock().expect("the assignments lock is never poisoned").preview_media(preview_id) {
                return Ok(media_id.clone());
            }
            if tokio::time::timeout_at(deadline, recorded).await.is_err() {
                return Err(status::preview_not_here(preview_id));
            }
        }
    }

    /// Notes that this node confirmed `media_id` of the grant's voucher; true when every
    /// media of the grant has now been confirmed here.
    pub(super) fn note_confirmed(&self, grant: &AccessGrant, media_id: &str) -> bool {
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

/// A request id derived from its parts, so a retried report lands on the same id, and short
/// enough for the engine's id rules (64 characters) however long the ids are.
pub fn derived_request_id(prefix: &str, parts: &[&str]) -> String {
    let mut framed = Vec::new();
    for part in [prefix].iter().chain(parts) {
        framed.extend_from_slice(&(part.len() as u64).to_le_bytes());
        framed.extend_from_slice(part.as_bytes());
    }
    format!("{prefix}-{}", hex::encode(&crypto::hash(&framed)[..16]))
}

/// The request id the node forwards for a player's Redeem: derived from the player's own
/// (so a player's retry is the engine's retry) in the "player" namespace, which no id the
/// node derives for itself shares.
pub fn player_request_id(voucher_id: &str, player_request_id: &str) -> String {
    derived_request_id("player", &[voucher_id, player_request_id])
}

/// Holds one of the node's slots while a stream runs.
pub(super) struct SlotGuard(Arc<Shared>);

impl SlotGuard {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        shared.slots_in_use.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.slots_in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) type ChunkStream = Pin<Box<dyn futures::Stream<Item = Result<MediaChunk, Status>> + Send>>;

pub(super) fn receiver_stream(receiver: mpsc::Receiver<Result<MediaChunk, Status>>) -> ChunkStream {
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) }))
}

/// Sends `bytes[offset..]` in chunks (slices of the cached part, not copies); the number
/// of bytes the player took. A player that does not take a chunk for `idle_ms` loses the
/// stream (and its permit).
pub(super) async fn send_chunks(sender: &mpsc::Sender<Result<MediaChunk, Status>>, bytes: &bytes::Bytes, offset: usize, idle_ms: u64) -> usize {
    let total_bytes = bytes.len() as u64;
    if bytes.is_empty() {
        // One empty chunk tells the player the total is zero.
        sender.send(Ok(MediaChunk { offset: 0, data: bytes::Bytes::new(), total_bytes })).await.ok();
        return 0;
    }
    let mut position = offset;
    while position < bytes.len() {
        let end = usize::min(position + CHUNK_BYTES, bytes.len());
        let chunk = MediaChunk { offset: position as u64, data: bytes.slice(position..end), total_bytes };
        // A player that stops reading holds its permit only so long: the stream ends.
        match tokio::time::timeout(Duration::from_millis(idle_ms), sender.send(Ok(chunk))).await {
            Ok(Ok(())) => {}
            // The player went away, or did not read for `idle_ms` (`NodeLimits::send_idle_ms`).
            Ok(Err(_)) | Err(_) => return position - offset,
        }
        position = end;
    }
    position - offset
}

/// Refuses a player request over [`REQUEST_BYTES_MAX`] with `ResourceExhausted` (DESIGN.md,
/// "Gateways"), before anything is decoded; tonic's own decode limit would answer
/// `OutOfRange`. Every `NodeService` call takes one small message, so buffering it is cheap.
#[derive(Clone)]
pub(super) struct RequestSizeLimit<S> {
    pub(super) inner: S,
}

pub(super) type HttpRequest = http::Request<tonic::body::Body>;
pub(super) type HttpResponse = http::Response<tonic::body::Body>;

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
                    Ok(status::request_too_large(REQUEST_BYTES_MAX).into_http())
                }
                Err(error) => Ok(status::request_body_lost(&error).into_http()),
            }
        })
    }
}

/// `NodeService`, served to players.
pub(super) struct NodeApi {
    pub(super) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn challenge(&self, request: Request<ChallengeRequest>) -> Result<Response<ChallengeResponse>, Status> {
        // Checks before permits: a request without a valid grant takes no slot of the node.
        let grant = require_grant(request.into_inner().grant)?;
        self.shared.check(&grant).await?;
        let _permit = self.shared.permit()?;
        let challenge = self.shared.challenges.lock().expect("the challenges lock is never poisoned").issue(&grant.voucher_id, self.shared.now_ms());
        Ok(Response::new(ChallengeResponse { challenge: challenge.to_vec() }))
    }

    async fn redeem(&self, request: Request<PlayerRedeemRequest>) -> Result<Response<RedeemResponse>, Status> {
        let request = request.into_inner();
        let grant = require_grant(request.grant)?;
        self.shared.check(&grant).await?;
        let _permit = self.shared.permit()?;
        if !engine::ids::is_valid_token(&request.request_id) {
            return Err(status::malformed_request_id());
        }
        let issued_here =
            self.shared.challenges.lock().expect("the challenges lock is never poisoned").take(&grant.voucher_id, &request.challenge, self.shared.now_ms());
        if !issued_here {
            return Err(status::challenge_refused());
        }
        let mut engine = self.shared.engine.clone();
        let answer = engine
            .redeem(RedeemRequest {
                // The engine knows requests by (this node, request id): a player's id goes
                // into a namespace of its own, so it can never equal an id the node derives
                // for its own reports ("deliver-…", "end-…") and make them fail for good.
                request_id: player_request_id(&grant.voucher_id, &request.request_id),
                voucher_id: grant.voucher_id.clone(),
                cert_serial: request.cert_serial,
                consumer_id: request.consumer_id,
                challenge: request.challenge,
                proof: request.proof,
                recover: request.recover,
            })
            .await
            .map_err(relay)?
            .into_inner();
        info!(node_id = %self.shared.node_id, voucher_id = %grant.voucher_id, keys = answer.keys.len(), "redeemed");
        Ok(Response::new(answer))
    }

    type DownloadStream = ChunkStream;

    async fn download(&self, request: Request<DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let request = request.into_inner();
        let grant = require_grant(request.grant)?;
        self.shared.check(&grant).await?;
        require_media_in_grant(&grant, &request.media_id)?;
        let permit = self.shared.permit()?;
        let container = self.shared.part(&request.media_id, MediaPart::Container).await?;
        let offset = usize::try_from(request.offset)
            .ok()
            .filter(|offset| *offset <= container.bytes.len())
            .ok_or_else(|| status::offset_past_end(request.offset, container.bytes.len()))?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        let slot = SlotGuard::new(&self.shared);
        let node_id = self.shared.node_id.clone();
        let shared_idle_ms = self.shared.limits.send_idle_ms;
        tokio::spawn(async move {
            let _slot = slot;
            let _permit = permit;
            let sent = send_chunks(&sender, &container.bytes, offset, shared_idle_ms).await;
            debug!(%node_id, voucher_id = %grant.voucher_id, media_id = %request.media_id, offset, sent_bytes = sent, "download stream ended");
        });
        Ok(Response::new(receiver_stream(receiver)))
    }

    async fn confirm(&self, request: Request<ConfirmRequest>) -> Result<Response<ConfirmResponse>, Status> {
        let request = request.into_inner();
        let grant = require_grant(request.grant)?;
        self.shared.check(&grant).await?;
        require_media_in_grant(&grant, &request.media_id)?;
        let _permit = self.shared.permit()?;
        // The node cannot check the proof (it never sees the receipt): the engine does.
        if request.proof.len() != 32 || request.received_hash.len() != 32 {
            return Err(status::malformed_confirm());
        }
        let container = self.shared.part(&request.media_id, MediaPart::Container).await?;
        let mut engine = self.shared.engine.clone();
        if crypto::ct_eq(&request.received_hash, &container.hash) {
            engine
                .complete_delivery(CompleteDeliveryRequest {
                    // A rental's play is a completion of its own (the player names its play);
                    // otherwise one per (voucher, media), however often the player confirms.
                    request_id: if request.play_id.is_empty() {
                        derived_request_id("deliver", &[&grant.voucher_id, &request.media_id])
                    } else {
                        derived_request_id("deliver-play", &[&grant.voucher_id, &request.media_id, &request.play_id])
                    },
                    voucher_id: grant.voucher_id.clone(),
                    media_id: request.media_id.clone(),
                    content_hash: container.hash.to_vec(),
                    size_bytes: container.bytes.len() as u64,
                    confirm_proof: request.proof.clone(),
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
                .fail_delivery(FailDeliveryRequest {
                    request_id,
                    voucher_id: grant.voucher_id.clone(),
                    reason: "content hash mismatch".to_string(),
                    media_id: request.media_id.clone(),
                    received_hash: request.received_hash.clone(),
                    confirm_proof: request.proof.clone(),
                })
                .await
                .map_err(relay)?;
            warn!(node_id = %self.shared.node_id, voucher_id = %grant.voucher_id, media_id = %request.media_id, "delivery failed: content hash mismatch");
            Err(status::content_mismatch())
        }
    }

    type PlayPreviewStream = ChunkStream;

    async fn play_preview(&self, request: Request<PlayPreviewRequest>) -> Result<Response<Self::PlayPreviewStream>, Status> {
        let preview_id = request.into_inner().preview_id;
        if !engine::ids::is_valid_token(&preview_id) {
            return Err(status::malformed_preview_id());
        }
        // PlayPreview takes no credential: a preview id this node was not assigned waits for
        // the feed (bounded) without holding a permit, so a flood of made-up ids starves no
        // player holding a grant.
        let media_id = self.shared.preview_media(&preview_id).await?;
        let permit = self.shared.permit()?;
        let clip = self.shared.part(&media_id, MediaPart::PreviewClip).await?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        let slot = SlotGuard::new(&self.shared);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _permit = permit;
            let sent = send_chunks(&sender, &clip.bytes, 0, shared.limits.send_idle_ms).await;
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

/// Counts a waiting call up, and down when it ends, however it ends.
struct WaitGuard<'a>(&'a AtomicU32);

impl<'a> WaitGuard<'a> {
    /// Counts a call in, unless `max` already are.
    fn enter_below(counter: &'a AtomicU32, max: u32) -> Option<Self> {
        counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waiting| (waiting < max).then_some(waiting + 1)).ok()?;
        Some(Self(counter))
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
