//! The engine's gRPC server: MerchantService, DeliveryService, CatalogService and
//! AuditService over `engine::app::Market`, with grpc.health.v1 and server reflection, the
//! live projections (allocator, sweeper, sealer) and graceful shutdown. Request messages
//! are checked and converted here (the one place RPC messages meet domain types); every
//! refusal goes through `status::from_app_error`, one exhaustive mapping.
//!
//! Identity comes only from the credential checked by `auth::FrontDoor`; no handler reads
//! an id of the caller from a request field. Secrets (credential secrets, receipts, access
//! keys) appear only in the responses that hand them to their owner, never in a log line.

use crate::auth::{self, Authenticator, FrontDoor, Identity, Limits};
use crate::media_store::{MediaStore, Part};
use crate::metrics::{Metrics, NodeLabel};
use crate::status::from_app_error;
use anyhow::Context;
use engine::app::{EngineKeys, Market, PublishInput};
use engine::clock::{Clock, SystemClock};
use engine::crypto::{RsaPublic, SecretKey};
use engine::domain::event::{Payment, PreviewClip, Rendition, RoyaltyTerms};
use engine::domain::voucher::VoucherStatus;
use engine::domain::{validate, Event, Rejection};
use engine::ids::*;
use engine::log::EventLog;
use futures::StreamExt;
use projections::Live;
use proto::v1 as pb;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Bytes per MediaChunk message.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Messages buffered per server stream before the sender waits (flow control).
pub const STREAM_BUFFER_MESSAGES: usize = 64;
/// How long an access token is valid after IssueVoucher.
pub const ACCESS_TTL_MS: u64 = 10 * 60 * 1000;
/// Concurrent requests per connection (on top of the server-wide limit).
pub const REQUESTS_PER_CONNECTION_MAX: usize = 256;
/// A node is healthy while its last heartbeat is at most this old.
pub const HEARTBEAT_STALE_MS: u64 = 30_000;
/// Longest endpoint a node may announce.
const ENDPOINT_CHARS_MAX: usize = 256;
/// Full replays (AuditService Replay and VerifyChain) running at once; more are refused
/// with ResourceExhausted (each reads and re-verifies the whole stream).
pub const REPLAYS_IN_FLIGHT_MAX: usize = 2;
/// The id of the engine's configuration aggregate (`Market::set_config` writes it).
const CONFIG_AGGREGATE: &str = "engine";
/// How often the sealer checks whether a seal is due.
const SEAL_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait between retries of the live projections after a read failure.
const PROJECTION_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest wait between dispatcher restarts after a failure.
const DISPATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often `serve` seals the royalty log by default (`seal_interval_ms` changes it).
pub const SEAL_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// Replay progress is reported every this many events.
const REPLAY_PROGRESS_EVERY_EVENTS: u64 = 10_000;

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a client CA, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub limits: Limits,
    pub access_ttl_ms: u64,
    pub sweep_interval: Duration,
    pub seal_interval: Duration,
    /// Seal when at least this many entries wait (and `seal_interval` passed).
    pub seal_entries_min: u64,
    pub tls: Option<TlsFiles>,
    /// The projection store's directory; `None` keeps the projections in memory only (they
    /// are rebuilt from sequence 1 at every start).
    pub projections_dir: Option<PathBuf>,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf, keys_dir: PathBuf) -> Self {
        Self {
            data_dir,
            keys_dir,
            limits: Limits::default(),
            access_ttl_ms: ACCESS_TTL_MS,
            sweep_interval: Duration::from_secs(1),
            seal_interval: SEAL_INTERVAL_DEFAULT,
            seal_entries_min: 1,
            tls: None,
            projections_dir: None,
        }
    }
}

/// What the engine knows of a node between events: its endpoint and its last heartbeat.
#[derive(Clone, Debug, Default)]
pub struct NodeLive {
    pub endpoint: String,
    pub last_heartbeat_ms: i64,
    pub slots_in_use: u32,
    pub cache_items: u64,
    pub cache_accesses: u64,
    pub cache_misses: u64,
}

/// Nodes that announced themselves (RegisterNode) and their heartbeats: the engine's
/// health view, in memory only. After an engine restart nodes announce themselves again
/// (a heartbeat from an unknown node is answered FailedPrecondition, which tells the node
/// agent to call RegisterNode).
pub struct NodeRegistry {
    nodes: Mutex<HashMap<NodeId, NodeLive>>,
    clock: Arc<dyn Clock>,
    /// `node.heartbeat_timeout_ms` once the operator set it, else `HEARTBEAT_STALE_MS`.
    stale_ms: std::sync::atomic::AtomicU64,
}

impl NodeRegistry {
    pub fn new(clock: Arc<dyn Clock>, stale_ms: u64) -> Self {
        Self { nodes: Mutex::new(HashMap::new()), clock, stale_ms: std::sync::atomic::AtomicU64::new(stale_ms) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, NodeLive>> {
        self.nodes.lock().expect("node registry lock is never poisoned")
    }

    pub fn announce(&self, node: &NodeId, endpoint: &str) {
        let now = self.clock.now().0;
        self.lock().insert(node.clone(), NodeLive { endpoint: endpoint.to_string(), last_heartbeat_ms: now, ..NodeLive::default() });
    }

    /// Records a heartbeat; `false` when the node has not announced itself.
    pub fn heartbeat(&self, node: &NodeId, beat: &pb::HeartbeatRequest) -> bool {
        let now = self.clock.now().0;
        let mut nodes = self.lock();
        let Some(live) = nodes.get_mut(node) else { return false };
        live.last_heartbeat_ms = now;
        live.slots_in_use = beat.slots_in_use;
        live.cache_items = beat.cache_items;
        live.cache_accesses = beat.cache_accesses;
        live.cache_misses = beat.cache_misses;
        true
    }

    pub fn endpoint(&self, node: &NodeId) -> String {
        self.lock().get(node).map(|n| n.endpoint.clone()).unwrap_or_default()
    }

    /// The endpoint of a node that announced itself to this engine; Unavailable for one
    /// that has not (yet): a retried IssueVoucher or Preview after an engine restart names a
    /// node the new engine has not heard from, and an empty endpoint is of no use to a player.
    pub fn endpoint_of_announced(&self, node: &NodeId) -> Result<String, Status> {
        let endpoint = self.endpoint(node);
        if endpoint.is_empty() {
            return Err(Status::unavailable(format!("delivery node {node} has not announced itself to this engine yet; retry with the same request id shortly")));
        }
        Ok(endpoint)
    }

    /// Announced, with a heartbeat no older than the stale limit.
    pub fn healthy(&self, node: &NodeId) -> bool {
        let now = self.clock.now().0;
        let stale_ms = self.stale_ms.load(std::sync::atomic::Ordering::Relaxed) as i64;
        self.lock().get(node).is_some_and(|live| now.saturating_sub(live.last_heartbeat_ms) <= stale_ms)
    }

    pub fn snapshot(&self) -> Vec<(NodeId, NodeLive)> {
        let mut nodes: Vec<_> = self.lock().iter().map(|(id, live)| (id.clone(), live.clone())).collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        nodes
    }
}

/// The allocator the engine uses: the allocation projection's choice among healthy nodes.
pub struct HealthyAllocator {
    live: Live,
    nodes: Arc<NodeRegistry>,
}

impl engine::app::Allocator for HealthyAllocator {
    fn choose(&self, region: Option<&str>, holder: &str) -> Option<NodeId> {
        self.live.choose_where(region, holder, &|node| self.nodes.healthy(node))
    }

    fn cancel(&self, holder: &str) {
        engine::app::Allocator::cancel(&self.live, holder);
    }
}

/// Events appended per second over the last minute, from (time, stream head) samples.
#[derive(Default)]
pub struct RateMeter {
    samples: Mutex<std::collections::VecDeque<(Instant, u64)>>,
}

/// Samples kept by the rate meter (one per second: a minute).
const RATE_SAMPLES_MAX: usize = 60;

impl RateMeter {
    pub fn record(&self, at: Instant, head: u64) {
        let mut samples = self.samples.lock().expect("rate meter lock is never poisoned");
        samples.push_back((at, head));
        while samples.len() > RATE_SAMPLES_MAX {
            samples.pop_front();
        }
    }

    pub fn per_second(&self) -> f64 {
        let samples = self.samples.lock().expect("rate meter lock is never poisoned");
        match (samples.front(), samples.back()) {
            (Some((t0, h0)), Some((t1, h1))) if t1 > t0 => h1.saturating_sub(*h0) as f64 / t1.duration_since(*t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// The engine's shared state.
pub struct Engine {
    pub market: Arc<Market>,
    pub live: Live,
    pub log: Arc<dyn EventLog>,
    pub metrics: Arc<Metrics>,
    pub media: MediaStore,
    pub nodes: Arc<NodeRegistry>,
    pub rate: RateMeter,
    /// Bounds the full replays running at once (`REPLAYS_IN_FLIGHT_MAX`).
    replays: Arc<tokio::sync::Semaphore>,
    /// Serializes PublishMedia (rare) so its bytes and its event stay consistent.
    publishing: tokio::sync::Mutex<()>,
    royalty_master: SecretKey,
    engine_public: RsaPublic,
    config: EngineConfig,
    started: Instant,
    shutdown: watch::Receiver<bool>,
}

impl Engine {
    /// Brings the gauges up to date (before a scrape or a stats answer).
    pub async fn refresh_metrics(&self) {
        let head = self.log.last_seq().await.map(|seq| seq.0).unwrap_or(0);
        self.metrics.stream_last_seq.set(head as i64);
        self.metrics.projection_lag.set(self.live.lag(Seq(head)) as i64);
        self.metrics.uptime_seconds.set(self.started.elapsed().as_secs() as i64);
        let (slots, issued, entries) = self.live.read(|p| {
            let slots: Vec<(NodeId, u32, u32)> = p.allocation.nodes.iter().map(|(id, n)| (id.clone(), n.in_use, n.slots_max)).collect();
            let issued = [VoucherStatus::Issued, VoucherStatus::Redeeming, VoucherStatus::Delivered].into_iter().map(|status| p.vouchers.count(status)).sum::<usize>();
            (slots, issued, p.royalty.entries.len())
        });
        for (node, in_use, max) in slots {
            let label = NodeLabel { node: node.0 };
            self.metrics.slots_in_use.get_or_create(&label).set(i64::from(in_use));
            self.metrics.slots_max.get_or_create(&label).set(i64::from(max));
        }
        for (node, live) in self.nodes.snapshot() {
            let label = NodeLabel { node: node.0 };
            self.metrics.node_cache_items.get_or_create(&label).set(live.cache_items as i64);
            self.metrics.node_cache_accesses.get_or_create(&label).set(live.cache_accesses as i64);
            self.metrics.node_cache_misses.get_or_create(&label).set(live.cache_misses as i64);
        }
        self.metrics.events_per_second.set(self.rate.per_second());
        self.metrics.vouchers_issued.set(issued as i64);
        self.metrics.royalty_entries.set(entries as i64);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A configuration value the operator set with `admin config set` (a ConfigChanged
    /// event), or `None` while it is unset (the serve setting applies).
    pub async fn configured(&self, key: &str) -> Option<u64> {
        match self.market.handler().load::<engine::domain::config::Config>(CONFIG_AGGREGATE).await {
            Ok(root) => root.state.values.get(key).copied(),
            Err(error) => {
                tracing::warn!(%error, key, "cannot read the configuration; using the serve setting");
                None
            }
        }
    }

    /// Applies the configuration recorded on the stream to what reads it synchronously.
    async fn apply_configuration(&self) {
        if let Some(stale_ms) = self.configured("node.heartbeat_timeout_ms").await {
            self.nodes.stale_ms.store(stale_ms, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A running engine: its bound address and how to stop it.
pub struct RunningEngine {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    runner: tokio::task::JoinHandle<()>,
}

impl RunningEngine {
    /// `http://ADDR` (or https with TLS) for clients.
    pub fn url(&self) -> String {
        let scheme = if self.engine.config.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Graceful shutdown: stop accepting, end the server streams, let in-flight requests
    /// finish (their events are appended and acknowledged), then stop the sweeper, the
    /// sealer and the projection runner.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let served = self.server.await.context("the gRPC server task failed")?;
        for task in self.background {
            let _ = task.await;
        }
        self.runner.abort();
        served.context("the gRPC server failed")?;
        Ok(())
    }

    /// Runs the dispatcher (`crate::dispatcher`) onto `feed`'s node-feed stream until the
    /// engine stops; a failure is logged and retried with capped backoff.
    pub fn dispatch_to(&mut self, feed: Arc<engine::log::jetstream::JetStreamLog>) {
        let log = Arc::clone(&self.engine.log);
        let mut shutdown = self.stop.subscribe();
        self.background.push(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match crate::dispatcher::run(Arc::clone(&log), Arc::clone(&feed), shutdown.clone()).await {
                    Ok(_) if *shutdown.borrow() => return,
                    Ok(published) => tracing::warn!(published, "the stream ended under the dispatcher; following again"),
                    Err(error) => tracing::warn!(%error, "the dispatcher stopped; retrying"),
                }
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(DISPATCH_BACKOFF_MAX);
            }
        }));
    }

    /// Resolves when the engine has been told to stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

/// Starts the engine on `listener` with `log`: loads the keys, rebuilds the projections
/// from the stream, then serves.
pub async fn start(config: EngineConfig, log: Arc<dyn EventLog>, listener: tokio::net::TcpListener) -> anyhow::Result<RunningEngine> {
    crate::keys::check_dir(&config.keys_dir)?;
    let keys = Arc::new(EngineKeys::new(crate::keys::load_engine_private(&config.keys_dir)?)?);
    let royalty_master = crate::keys::load_royalty_master(&config.keys_dir)?;
    let operator = crate::cred::Credential::load(&config.keys_dir.join(crate::keys::OPERATOR_CRED))?;
    let media = MediaStore::open(&config.data_dir.join("media"))?;
    let live = match &config.projections_dir {
        // Backed by the projection store: resume at its checkpoint (after checking it belongs
        // to this stream), or rebuild into it from sequence 1.
        Some(dir) => {
            let (live, outcome) = Live::open_checked(dir, Some(&royalty_master), Some(keys.public.clone()), log.as_ref()).await.with_context(|| format!("cannot open the projection store in {}", dir.display()))?;
            match outcome {
                projections::store::OpenOutcome::Created => tracing::info!(dir = %dir.display(), "new projection store: rebuilding from sequence 1"),
                projections::store::OpenOutcome::Resumed { checkpoint } => tracing::info!(dir = %dir.display(), checkpoint = checkpoint.0, "projection store resumed"),
                projections::store::OpenOutcome::Quarantined { path, reason } => {
                    tracing::warn!(dir = %dir.display(), quarantined = %path.display(), %reason, "projection store quarantined; rebuilding from sequence 1")
                }
            }
            live
        }
        None => Live::with_keys(Some(&royalty_master), Some(keys.public.clone())),
    };
    let runner = {
        let live = live.clone();
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            // A read failure (the log unreachable for a while) is retried; a finding in the
            // stream or a failing projection store stops the projections for good.
            let mut backoff = Duration::from_millis(100);
            loop {
                match live.run(Arc::clone(&log)).await {
                    Ok(()) => return,
                    Err(projections::RunError::Read(error)) => {
                        tracing::warn!(%error, "the live projections cannot read the log; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(PROJECTION_RETRY_BACKOFF_MAX);
                    }
                    Err(error) => {
                        tracing::error!(%error, "the live projections stopped; restart the engine after fixing the stream");
                        return;
                    }
                }
            }
        })
    };
    // Serve once the projections have caught up: the allocator must know every node.
    let head = log.last_seq().await.context("cannot read the stream's head")?;
    live.caught_up(head).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let nodes = Arc::new(NodeRegistry::new(Arc::clone(&clock), HEARTBEAT_STALE_MS));
    let allocator = Arc::new(HealthyAllocator { live: live.clone(), nodes: Arc::clone(&nodes) });
    let market = Arc::new(Market::new(Arc::clone(&log), clock, Arc::clone(&keys), allocator));
    let (stop, shutdown) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(Engine {
        market: Arc::clone(&market),
        live: live.clone(),
        log: Arc::clone(&log),
        metrics: Arc::clone(&metrics),
        media,
        nodes,
        rate: RateMeter::default(),
        publishing: tokio::sync::Mutex::new(()),
        replays: Arc::new(tokio::sync::Semaphore::new(REPLAYS_IN_FLIGHT_MAX)),
        royalty_master,
        engine_public: keys.public.clone(),
        config: config.clone(),
        started: Instant::now(),
        shutdown: shutdown.clone(),
    });

    let authenticator = Arc::new(Authenticator::new(Arc::clone(&market), operator.id.clone(), &operator.secret));
    let counted = Arc::clone(&metrics);
    let door = FrontDoor::new(authenticator, config.limits, Arc::new(move |code| counted.count_code(code)));
    let api = Api { engine: Arc::clone(&engine) };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::merchant_service_server::MerchantServiceServer<Api>>().await;
    health.set_serving::<pb::delivery_service_server::DeliveryServiceServer<Api>>().await;
    health.set_serving::<pb::catalog_service_server::CatalogServiceServer<Api>>().await;
    health.set_serving::<pb::audit_service_server::AuditServiceServer<Api>>().await;
    health.set_serving::<pb::admin_service_server::AdminServiceServer<Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("server reflection")?;
    // The front door enforces the real limits; tonic's own decoding limit is a backstop.
    let decode_max = config.limits.upload_bytes_max + 1024;
    let mut builder = tonic::transport::Server::builder().concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX);
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls_config(tls)?).context("TLS configuration")?;
    }
    let router = builder
        .layer(door)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(pb::merchant_service_server::MerchantServiceServer::new(api.clone()).max_decoding_message_size(decode_max))
        .add_service(pb::delivery_service_server::DeliveryServiceServer::new(api.clone()).max_decoding_message_size(decode_max))
        .add_service(pb::catalog_service_server::CatalogServiceServer::new(api.clone()).max_decoding_message_size(decode_max))
        .add_service(pb::audit_service_server::AuditServiceServer::new(api.clone()).max_decoding_message_size(decode_max))
        .add_service(pb::admin_service_server::AdminServiceServer::new(api).max_decoding_message_size(decode_max));
    let addr = listener.local_addr()?;
    // `serve_with_incoming` ignores the builder's `tcp_nodelay`, so it is set here: without
    // it Nagle's algorithm can hold a response's last small write until the client's
    // delayed ACK (up to 40 ms on Linux).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut stop_server = shutdown.clone();
    let server = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_server.wait_for(|stop| *stop).await;
            })
            .await
    });
    engine.apply_configuration().await;
    let background = vec![tokio::spawn(sweeper(Arc::clone(&engine))), tokio::spawn(sealer(Arc::clone(&engine))), tokio::spawn(rate_sampler(Arc::clone(&engine)))];
    tracing::info!(%addr, "engine serving");
    Ok(RunningEngine { addr, engine, stop, server, background, runner })
}

fn tls_config(tls: &TlsFiles) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let cert = std::fs::read(&tls.cert).with_context(|| format!("cannot read TLS certificate {}", tls.cert.display()))?;
    let key = std::fs::read(&tls.key).with_context(|| format!("cannot read TLS key {}", tls.key.display()))?;
    let mut config = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
    if let Some(ca) = &tls.client_ca {
        let ca = std::fs::read(ca).with_context(|| format!("cannot read client CA {}", ca.display()))?;
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
    }
    Ok(config)
}

/// Voids reservations past due and settles interrupted points holds, every interval.
async fn sweeper(engine: Arc<Engine>) {
    let mut shutdown = engine.shutdown.clone();
    let mut tick = tokio::time::interval(engine.config.sweep_interval);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = engine.live.sweep(&engine.market, 1024).await {
            tracing::warn!(%error, "sweep failed; retrying at the next interval");
        }
    }
}

/// Seals the royalty log when `seal.entries_max` entries wait, or when the seal interval
/// passed with at least `seal_entries_min` waiting (DESIGN.md: every N entries or T
/// seconds), and appends each seal to the witness file for auditors to pin. The operator's
/// `seal.*` configuration (events) wins over the serve settings.
async fn sealer(engine: Arc<Engine>) {
    let mut shutdown = engine.shutdown.clone();
    let mut last_seal = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(SEAL_CHECK_INTERVAL.min(engine.config.seal_interval)) => {}
        }
        let interval = engine.configured("seal.interval_ms").await.map_or(engine.config.seal_interval, Duration::from_millis);
        let entries_max = engine.configured("seal.entries_max").await.unwrap_or(u64::MAX);
        let waiting = engine.live.read(|p| (p.royalty.entries.len() as u64).saturating_sub(p.royalty.next_seal_entry()));
        let due = waiting >= entries_max.max(1) || (last_seal.elapsed() >= interval && waiting >= engine.config.seal_entries_min.max(1));
        if !due {
            continue;
        }
        match engine.live.seal(&engine.market, engine.config.seal_entries_min.max(1)).await {
            Ok(Some(seal)) => {
                last_seal = Instant::now();
                if let Err(error) = crate::audit::witness(&engine.config.data_dir, &seal) {
                    tracing::warn!(%error, "cannot write the witness file");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "sealing failed; retrying at the next interval"),
        }
    }
}

/// Samples the stream head every second for `events_per_s`.
async fn rate_sampler(engine: Arc<Engine>) {
    let mut shutdown = engine.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        if let Ok(head) = engine.log.last_seq().await {
            engine.rate.record(Instant::now(), head.0);
        }
    }
}

/// All four services over one engine.
#[derive(Clone)]
pub struct Api {
    engine: Arc<Engine>,
}

fn fail(error: engine::app::AppError) -> Status {
    from_app_error(&error)
}

fn invalid(field: &'static str, reason: &str) -> Status {
    crate::status::from_rejection(&Rejection::InvalidArgument { field, reason: reason.to_string() })
}

fn id<T>(field: &'static str, value: &str, wrap: impl FnOnce(String) -> T) -> Result<T, Status> {
    validate::id(field, value).map_err(|r| crate::status::from_rejection(&r))?;
    Ok(wrap(value.to_string()))
}

fn request_id(value: &str) -> Result<RequestId, Status> {
    id("request_id", value, RequestId)
}

fn hash32(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], Status> {
    bytes.try_into().map_err(|_| invalid(field, "must be 32 bytes"))
}

fn region(value: &str) -> Option<&str> {
    if value.is_empty() { None } else { Some(value) }
}

impl Api {
    /// Counts the answer's code and wraps it.
    fn answer<T>(&self, result: Result<T, Status>) -> Result<Response<T>, Status> {
        match result {
            Ok(message) => {
                self.engine.metrics.count_code(tonic::Code::Ok);
                Ok(Response::new(message))
            }
            Err(status) => {
                self.engine.metrics.count_code(status.code());
                Err(status)
            }
        }
    }

    fn merchant<T>(request: &Request<T>) -> Result<MerchantId, Status> {
        match auth::identity(request)? {
            Identity::Merchant(merchant) => Ok(merchant),
            other => Err(Status::permission_denied(format!("a {} credential may not act as a merchant", other.role()))),
        }
    }

    fn node<T>(request: &Request<T>) -> Result<NodeId, Status> {
        match auth::identity(request)? {
            Identity::Node(node) => Ok(node),
            other => Err(Status::permission_denied(format!("a {} credential may not act as a delivery node", other.role()))),
        }
    }

    fn operator<T>(request: &Request<T>) -> Result<String, Status> {
        match auth::identity(request)? {
            Identity::Operator(operator) => Ok(operator),
            other => Err(Status::permission_denied(format!("a {} credential may not act as the operator", other.role()))),
        }
    }

    fn market(&self) -> &Market {
        &self.engine.market
    }
}

fn voucher_view(voucher: &engine::domain::voucher::Voucher) -> pb::VoucherView {
    pb::VoucherView {
        voucher_id: voucher.id.as_ref().map(|v| v.0.clone()).unwrap_or_default(),
        merchant_id: voucher.merchant.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
        status: voucher.status.name().to_string(),
        media_ids: voucher.items.iter().map(|item| item.media_id.0.clone()).collect(),
        node_id: voucher.node.as_ref().map(|n| n.0.clone()).unwrap_or_default(),
        expires_at_ms: voucher.expires_at.0,
        delivered_media_ids: voucher.delivered.iter().map(|m| m.0.clone()).collect(),
    }
}

fn certificate_message(consumer: &ConsumerId, cert: &engine::domain::party::Certificate) -> pb::Certificate {
    pb::Certificate {
        consumer_id: consumer.0.clone(),
        cert_serial: cert.serial.0.clone(),
        public_key_der: cert.public_key_der.clone(),
        not_before_ms: cert.not_before.0,
        not_after_ms: cert.not_after.0,
        engine_key_id: cert.engine_key_id.clone(),
        signature: cert.signature.clone(),
    }
}

#[tonic::async_trait]
impl pb::merchant_service_server::MerchantService for Api {
    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let media_ids = message.media_ids.iter().map(|m| id("media_ids", m, MediaId)).collect::<Result<Vec<_>, _>>()?;
            let payment = if message.points_account.is_empty() {
                Payment::Merchant { payment_ref: message.payment_ref.clone() }
            } else {
                Payment::Points { account: id("points_account", &message.points_account, AccountId)? }
            };
            let answer = self.market().reserve(&merchant, &request_id, &media_ids, &message.rendition, message.ttl_ms, payment).await.map_err(fail)?;
            Ok(pb::ReserveResponse { voucher_id: answer.voucher_id.0, expires_at_ms: answer.expires_at.0, price_minor: answer.price_minor, currency: answer.currency })
        }
        .await;
        self.answer(result)
    }

    async fn authorize(&self, request: Request<pb::AuthorizeRequest>) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let answer = self.market().authorize(&merchant, &request_id, &voucher).await.map_err(fail)?;
            Ok(pb::AuthorizeResponse { voucher_id: answer.voucher_id.0, receipt: answer.receipt.expose().to_vec(), receipt_generation: answer.receipt_generation })
        }
        .await;
        self.answer(result)
    }

    async fn void(&self, request: Request<pb::VoidRequest>) -> Result<Response<pb::VoidResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            self.market().void(&merchant, &request_id, &voucher).await.map_err(fail)?;
            Ok(pb::VoidResponse { voucher_id: voucher.0 })
        }
        .await;
        self.answer(result)
    }

    async fn issue_voucher(&self, request: Request<pb::IssueVoucherRequest>) -> Result<Response<pb::IssueVoucherResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let access_ttl_ms = self.engine.configured("access.ttl_ms").await.unwrap_or(self.engine.config.access_ttl_ms);
            let answer = self.market().issue(&merchant, &request_id, &voucher, region(&message.region), access_ttl_ms).await.map_err(fail)?;
            Ok(pb::IssueVoucherResponse {
                voucher_id: answer.voucher_id.0,
                node_endpoint: self.engine.nodes.endpoint_of_announced(&answer.node_id)?,
                node_id: answer.node_id.0,
                access_token: answer.access_token.to_vec(),
                access_expires_at_ms: answer.access_expires_at.0,
            })
        }
        .await;
        self.answer(result)
    }

    async fn preview(&self, request: Request<pb::PreviewRequest>) -> Result<Response<pb::PreviewResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let media = id("media_id", &message.media_id, MediaId)?;
            let (preview, node) = self.market().preview(&merchant, &request_id, &media, region(&message.region)).await.map_err(fail)?;
            Ok(pb::PreviewResponse { preview_id: preview.0, node_endpoint: self.engine.nodes.endpoint_of_announced(&node)?, node_id: node.0 })
        }
        .await;
        self.answer(result)
    }

    async fn get_voucher(&self, request: Request<pb::GetVoucherRequest>) -> Result<Response<pb::VoucherView>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let voucher = id("voucher_id", &request.get_ref().voucher_id, VoucherId)?;
            let state = self.market().get_voucher(&merchant, &voucher).await.map_err(fail)?;
            Ok(voucher_view(&state))
        }
        .await;
        self.answer(result)
    }

    async fn place_order(&self, request: Request<pb::PlaceOrderRequest>) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let media = id("media_id", &message.media_id, MediaId)?;
            let order = self.market().place_order(&merchant, &request_id, &media, message.units).await.map_err(fail)?;
            Ok(pb::PlaceOrderResponse { order_id: order.0 })
        }
        .await;
        self.answer(result)
    }

    async fn bind_unit(&self, request: Request<pb::BindUnitRequest>) -> Result<Response<pb::BindUnitResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let order = id("order_id", &message.order_id, OrderId)?;
            validate::id("device_id", &message.device_id).map_err(|r| crate::status::from_rejection(&r))?;
            let wrapped = self
                .market()
                .bind_unit(&merchant, &request_id, &order, message.unit, &message.device_id, &message.device_public_key_der)
                .await
                .map_err(fail)?;
            Ok(pb::BindUnitResponse { wrapped_media_key: wrapped })
        }
        .await;
        self.answer(result)
    }

    async fn complete_unit(&self, request: Request<pb::CompleteUnitRequest>) -> Result<Response<pb::CompleteUnitResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let order = id("order_id", &message.order_id, OrderId)?;
            self.market().complete_unit(&merchant, &request_id, &order, message.unit).await.map_err(fail)?;
            Ok(pb::CompleteUnitResponse {})
        }
        .await;
        self.answer(result)
    }
}

/// Streams `bytes` from `offset` as MediaChunks through a bounded channel.
fn chunk_stream(bytes: bytes::Bytes, offset: usize) -> ReceiverStream<Result<pb::MediaChunk, Status>> {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER_MESSAGES);
    tokio::spawn(async move {
        let total = bytes.len() as u64;
        let mut position = offset.min(bytes.len());
        loop {
            let end = (position + CHUNK_BYTES).min(bytes.len());
            let chunk = pb::MediaChunk { offset: position as u64, data: bytes.slice(position..end).to_vec(), total_bytes: total };
            if sender.send(Ok(chunk)).await.is_err() || end == bytes.len() {
                return;
            }
            position = end;
        }
    });
    ReceiverStream::new(receiver)
}

#[tonic::async_trait]
impl pb::delivery_service_server::DeliveryService for Api {
    async fn register_node(&self, request: Request<pb::RegisterNodeRequest>) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let endpoint = message.endpoint.trim();
            if endpoint.len() > ENDPOINT_CHARS_MAX || !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid("endpoint", "must be an http:// or https:// URL of at most 256 characters"));
            }
            let root = self.market().handler().load::<engine::domain::party::Node>(&node.0).await.map_err(|e| fail(e.into()))?;
            if message.slots_max != 0 && message.slots_max != root.state.slots_max {
                // The node's own view of its capacity wins; the change is an event. The
                // request id names the version it changes, so 8 → 4 → 8 is two changes, while
                // a retried announcement of the same change stays one.
                let command = engine::domain::party::NodeCommand::ChangeCapacity { slots_max: message.slots_max };
                let request_id = RequestId(format!("capacity-v{}-{}", root.version, message.slots_max));
                let by = engine::domain::Actor::new(engine::domain::ActorKind::Node, &node.0);
                self.market().handler().handle::<engine::domain::party::Node>(&node.0, &by, &request_id, &command).await.map_err(|e| fail(e.into()))?;
            }
            self.engine.nodes.announce(&node, endpoint);
            let access_key = self.market().node_access_key(&node);
            Ok(pb::RegisterNodeResponse { node_id: node.0, access_key: access_key.expose().to_vec() })
        }
        .await;
        self.answer(result)
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let result = (|| {
            let node = Self::node(&request)?;
            if !self.engine.nodes.heartbeat(&node, request.get_ref()) {
                return Err(Status::failed_precondition("this node has not announced itself to this engine; call RegisterNode"));
            }
            Ok(pb::HeartbeatResponse {})
        })();
        self.answer(result)
    }

    type SubscribeAssignmentsStream = ReceiverStream<Result<pb::Assignment, Status>>;

    async fn subscribe_assignments(&self, request: Request<pb::SubscribeAssignmentsRequest>) -> Result<Response<Self::SubscribeAssignmentsStream>, Status> {
        let node = match Self::node(&request) {
            Ok(node) => node,
            Err(status) => return self.answer(Err(status)),
        };
        let from = Seq(request.get_ref().after_seq.saturating_add(1));
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_MESSAGES);
        let mut events = self.engine.log.follow(from);
        let mut shutdown = self.engine.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    _ = sender.closed() => return,
                    next = events.next() => next,
                };
                let Some(stored) = next else { return };
                let stored = match stored {
                    Ok(stored) => stored,
                    Err(error) => {
                        let _ = sender.send(Err(Status::unavailable(format!("reading the stream failed: {error}; resubscribe")))).await;
                        return;
                    }
                };
                // Only this node's events: cheap subject filters first, then decode.
                if !(stored.subject.starts_with("vs.voucher.") || stored.subject.starts_with("vs.preview.")) {
                    continue;
                }
                let recorded = match engine::wire::decode(&stored.payload) {
                    Ok(recorded) => recorded,
                    Err(error) => {
                        let _ = sender.send(Err(Status::data_loss(format!("event {} does not decode: {error}", stored.seq.0)))).await;
                        return;
                    }
                };
                let assignment = match recorded.event {
                    Event::VoucherIssued { voucher_id, node_id, media_ids, rendition, access_expires_at, .. } if node_id == node => pb::Assignment {
                        seq: stored.seq.0,
                        voucher_id: voucher_id.0,
                        media_ids: media_ids.into_iter().map(|m| m.0).collect(),
                        rendition,
                        access_expires_at_ms: access_expires_at.0,
                        preview_id: String::new(),
                    },
                    Event::PreviewStarted { preview_id, media_id, node_id, .. } if node_id == node => pb::Assignment {
                        seq: stored.seq.0,
                        voucher_id: String::new(),
                        media_ids: vec![media_id.0],
                        rendition: "preview".into(),
                        access_expires_at_ms: 0,
                        preview_id: preview_id.0,
                    },
                    _ => continue,
                };
                if sender.send(Ok(assignment)).await.is_err() {
                    return;
                }
            }
        });
        self.answer(Ok(ReceiverStream::new(receiver)))
    }

    async fn redeem(&self, request: Request<pb::RedeemRequest>) -> Result<Response<pb::RedeemResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let consumer = id("consumer_id", &message.consumer_id, ConsumerId)?;
            let serial = id("cert_serial", &message.cert_serial, CertSerial)?;
            let answer = self.market().redeem(&node, &request_id, &voucher, &consumer, &serial, &message.challenge, &message.proof).await.map_err(fail)?;
            Ok(pb::RedeemResponse {
                voucher_id: answer.voucher_id.0,
                keys: answer
                    .keys
                    .into_iter()
                    .zip(answer.transactions)
                    .map(|((media, wrapped), signed)| pb::WrappedKey {
                        media_id: media.0,
                        wrapped_key: wrapped,
                        transaction: Some(transaction_to_proto(signed.record)),
                        transaction_signature: signed.signature,
                    })
                    .collect(),
            })
        }
        .await;
        self.answer(result)
    }

    async fn complete_delivery(&self, request: Request<pb::CompleteDeliveryRequest>) -> Result<Response<pb::CompleteDeliveryResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let media = id("media_id", &message.media_id, MediaId)?;
            let content_hash = hash32("content_hash", &message.content_hash)?;
            self.market().complete_delivery(&node, &request_id, &voucher, &media, content_hash, message.size_bytes).await.map_err(fail)?;
            Ok(pb::CompleteDeliveryResponse {})
        }
        .await;
        self.answer(result)
    }

    async fn fail_delivery(&self, request: Request<pb::FailDeliveryRequest>) -> Result<Response<pb::FailDeliveryResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            self.market().fail_delivery(&node, &request_id, &voucher, &message.reason).await.map_err(fail)?;
            Ok(pb::FailDeliveryResponse {})
        }
        .await;
        self.answer(result)
    }

    async fn end_preview(&self, request: Request<pb::EndPreviewRequest>) -> Result<Response<pb::EndPreviewResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let preview = id("preview_id", &message.preview_id, PreviewId)?;
            self.market().end_preview(&node, &request_id, &preview, message.played_ms).await.map_err(fail)?;
            Ok(pb::EndPreviewResponse {})
        }
        .await;
        self.answer(result)
    }

    type FetchMediaStream = ReceiverStream<Result<pb::MediaChunk, Status>>;

    async fn fetch_media(&self, request: Request<pb::FetchMediaRequest>) -> Result<Response<Self::FetchMediaStream>, Status> {
        let result = async {
            Self::node(&request)?;
            let message = request.get_ref();
            let media = id("media_id", &message.media_id, MediaId)?;
            let part = match pb::MediaPart::try_from(message.part) {
                Ok(pb::MediaPart::Container) => Part::Container,
                Ok(pb::MediaPart::PreviewClip) => Part::PreviewClip,
                Ok(pb::MediaPart::Unspecified) | Err(_) => return Err(invalid("part", "must be MEDIA_PART_CONTAINER or MEDIA_PART_PREVIEW_CLIP")),
            };
            let bytes = self
                .engine
                .media
                .get(&media.0, part)
                .await
                .map_err(|error| Status::internal(format!("cannot read the media store: {error:#}")))?
                .ok_or_else(|| crate::status::from_rejection(&Rejection::NotFound { kind: "media part", id: media.0.clone() }))?;
            Ok(chunk_stream(bytes, 0))
        }
        .await;
        self.answer(result)
    }
}

/// The wire form of an engine-signed transaction record (the player rebuilds the canonical
/// bytes from these fields).
fn transaction_to_proto(record: engine::media::TransactionRecord) -> pb::TransactionRecord {
    pb::TransactionRecord {
        voucher_id: record.voucher_id.0,
        media_id: record.media_id.0,
        rendition: record.rendition,
        node_id: record.node_id.0,
        delivered_at_ms: record.delivered_at.0,
        engine_key_id: record.engine_key_id,
        consumer_id: record.consumer_id.0,
        cert_serial: record.cert_serial.0,
        content_hash: record.content_hash.to_vec(),
    }
}

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for Api {
    async fn publish_media(&self, request: Request<pb::PublishMediaRequest>) -> Result<Response<pb::PublishMediaResponse>, Status> {
        let result = async {
            let publisher = Self::operator(&request)?;
            let mut message = request.into_inner();
            let request_id = request_id(&message.request_id)?;
            let container = bytes::Bytes::from(std::mem::take(&mut message.container));
            let terms = message.terms.as_ref().ok_or_else(|| invalid("terms", "royalty terms are required"))?;
            let renditions = message
                .renditions
                .iter()
                .map(|r| Ok(Rendition { name: r.name.clone(), bitrate_kbps: r.bitrate_kbps, content_hash: hash32("renditions.content_hash", &r.content_hash)?, size_bytes: r.size_bytes }))
                .collect::<Result<Vec<_>, Status>>()?;
            let preview = message.preview.map(|p| PreviewClip { start_ms: p.start_ms, duration_ms: p.duration_ms }).unwrap_or_default();
            let media_id = media_id_for(&publisher, &request_id);
            // A signed (format 2) container must verify, be signed for this media id and
            // say what the request says; refused before anything is stored.
            let claims = engine::app::ContainerClaims {
                title: message.title.clone(),
                artist: message.artist.clone(),
                length_ms: message.length_ms,
                for_sale: message.for_sale,
                renditions: renditions.clone(),
                preview,
                preview_clip: message.preview_clip.clone(),
            };
            self.market().check_container(&media_id, container.clone(), claims).await.map_err(fail)?;
            // One publication at a time: the check below and the bytes written after it
            // must not interleave with another publication of the same media.
            let _publishing = self.engine.publishing.lock().await;
            let existing = self.market().handler().load::<engine::domain::catalog::Media>(&media_id.0).await.map_err(|e| fail(e.into()))?;
            // A media that is published keeps its bytes: a retry (or a refused reuse of its
            // request id) is answered by the market without touching them. Otherwise the
            // bytes go first, so a published media always has them; a refusal removes them
            // again, and a crash before the append leaves a file no event refers to, which
            // the retry overwrites.
            let fresh = existing.state.published.is_none();
            if fresh {
                self.engine.media.put(&media_id.0, Part::Container, container).await.map_err(|e| Status::internal(format!("cannot store the container: {e:#}")))?;
                if !message.preview_clip.is_empty() {
                    self.engine.media.put(&media_id.0, Part::PreviewClip, bytes::Bytes::from(message.preview_clip)).await.map_err(|e| Status::internal(format!("cannot store the preview clip: {e:#}")))?;
                }
            }
            let input = PublishInput {
                title: message.title,
                artist: message.artist,
                authors: message.authors,
                length_ms: message.length_ms,
                price_minor: message.price_minor,
                currency: message.currency,
                terms: RoyaltyTerms {
                    retailer_bps: terms.retailer_bps,
                    distributor_bps: terms.distributor_bps,
                    owner_bps: terms.owner_bps,
                    distributor: terms.distributor.clone(),
                    owner: terms.owner.clone(),
                    rights_agent: terms.rights_agent.clone(),
                },
                renditions,
                preview,
                image_descriptor: message.image_descriptor,
                for_sale: message.for_sale,
                wrapped_media_key: message.wrapped_media_key,
            };
            let media = match self.market().publish_media(&publisher, &request_id, input).await {
                Ok(media) => media,
                Err(error) => {
                    if fresh {
                        self.engine.media.remove(&media_id.0).await;
                    }
                    return Err(fail(error));
                }
            };
            Ok(pb::PublishMediaResponse { media_id: media.0 })
        }
        .await;
        self.answer(result)
    }

    async fn register_merchant(&self, request: Request<pb::RegisterMerchantRequest>) -> Result<Response<pb::CredentialResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let credential = self.market().register_merchant(&operator, &request_id, &message.name).await.map_err(fail)?;
            Ok(pb::CredentialResponse { id: credential.id, secret: credential.secret.expose().to_vec() })
        }
        .await;
        self.answer(result)
    }

    async fn register_node_credential(&self, request: Request<pb::RegisterNodeCredentialRequest>) -> Result<Response<pb::CredentialResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let (credential, _access_key) = self.market().register_node(&operator, &request_id, &message.region, message.slots_max).await.map_err(fail)?;
            Ok(pb::CredentialResponse { id: credential.id, secret: credential.secret.expose().to_vec() })
        }
        .await;
        self.answer(result)
    }

    async fn register_auditor(&self, request: Request<pb::RegisterAuditorRequest>) -> Result<Response<pb::CredentialResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let credential = self.market().register_auditor(&operator, &request_id, &message.name).await.map_err(fail)?;
            Ok(pb::CredentialResponse { id: credential.id, secret: credential.secret.expose().to_vec() })
        }
        .await;
        self.answer(result)
    }

    async fn certify_consumer(&self, request: Request<pb::CertifyConsumerRequest>) -> Result<Response<pb::Certificate>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let consumer = id("consumer_id", &message.consumer_id, ConsumerId)?;
            let cert = self.market().certify_consumer(&operator, &request_id, &consumer, &message.public_key_der, message.validity_ms).await.map_err(fail)?;
            Ok(certificate_message(&consumer, &cert))
        }
        .await;
        self.answer(result)
    }

    async fn revoke_cert(&self, request: Request<pb::RevokeCertRequest>) -> Result<Response<pb::RevokeCertResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let consumer = id("consumer_id", &message.consumer_id, ConsumerId)?;
            let serial = id("cert_serial", &message.cert_serial, CertSerial)?;
            self.market().revoke_cert(&operator, &request_id, &consumer, &serial, &message.reason).await.map_err(fail)?;
            Ok(pb::RevokeCertResponse {})
        }
        .await;
        self.answer(result)
    }

    async fn top_up_points(&self, request: Request<pb::TopUpPointsRequest>) -> Result<Response<pb::TopUpPointsResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let account = id("account_id", &message.account_id, AccountId)?;
            let balance = self.market().top_up(&operator, &request_id, &account, message.amount).await.map_err(fail)?;
            Ok(pb::TopUpPointsResponse { balance })
        }
        .await;
        self.answer(result)
    }
}

fn replays_busy() -> Status {
    Status::resource_exhausted(format!("{REPLAYS_IN_FLIGHT_MAX} full replays are running; retry when one has finished"))
}

fn first_bad_text(report: &projections::audit::AuditReport) -> String {
    report.first_bad.as_ref().map(|bad| serde_json::to_string(bad).unwrap_or_else(|_| bad.reason.clone())).unwrap_or_default()
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for Api {
    type ReplayStream = ReceiverStream<Result<pb::ReplayProgress, Status>>;

    async fn replay(&self, request: Request<pb::ReplayRequest>) -> Result<Response<Self::ReplayStream>, Status> {
        let pin = match request.get_ref().pinned_seal_hash.as_slice() {
            [] => None,
            bytes => match hash32("pinned_seal_hash", bytes) {
                Ok(pin) => Some(pin),
                Err(status) => return self.answer(Err(status)),
            },
        };
        let permit = match Arc::clone(&self.engine.replays).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => return self.answer(Err(replays_busy())),
        };
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_MESSAGES);
        let engine = Arc::clone(&self.engine);
        tokio::spawn(async move {
            let _permit = permit;
            let progress_sender = sender.clone();
            let mut reported = 0u64;
            let report = projections::audit::replay(engine.log.as_ref(), &engine.royalty_master, &engine.engine_public, pin, move |events| {
                if events >= reported + REPLAY_PROGRESS_EVERY_EVENTS {
                    reported = events;
                    // Progress is best effort: a slow reader skips updates, never the result.
                    let _ = progress_sender.try_send(Ok(pb::ReplayProgress { events, ..Default::default() }));
                }
            })
            .await;
            let last = match report {
                Ok(report) => Ok(pb::ReplayProgress {
                    events: report.events,
                    last_seq: report.last_seq,
                    done: true,
                    chain_ok: report.chain_ok,
                    state_digest: hex::decode(&report.state_digest).unwrap_or_default(),
                    first_bad: first_bad_text(&report),
                }),
                Err(error) => Err(Status::unavailable(format!("the replay could not read the stream: {error}"))),
            };
            let _ = sender.send(last).await;
        });
        self.answer(Ok(ReceiverStream::new(receiver)))
    }

    async fn verify_chain(&self, _request: Request<pb::VerifyChainRequest>) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let result = async {
            let _permit = Arc::clone(&self.engine.replays).try_acquire_owned().map_err(|_| replays_busy())?;
            let report = projections::audit::replay(self.engine.log.as_ref(), &self.engine.royalty_master, &self.engine.engine_public, None, |_| {})
                .await
                .map_err(|error| Status::unavailable(format!("the replay could not read the stream: {error}")))?;
            Ok(pb::VerifyChainResponse { entries: report.royalty_entries, seals_verified: report.seals_verified, chain_ok: report.chain_ok, first_bad: first_bad_text(&report) })
        }
        .await;
        self.answer(result)
    }

    async fn totals(&self, _request: Request<pb::TotalsRequest>) -> Result<Response<pb::TotalsResponse>, Status> {
        let lines = self.engine.live.read(|p| {
            p.royalty
                .totals
                .iter()
                .map(|((dimension, key), line)| pb::TotalsLine {
                    dimension: format!("{dimension:?}"),
                    key: key.clone(),
                    deliveries: line.deliveries,
                    previews: line.previews,
                    amount_minor: line.amount_minor,
                })
                .collect()
        });
        self.answer(Ok(pb::TotalsResponse { lines }))
    }
}

fn config_response(config: &engine::domain::config::Config) -> pb::ConfigResponse {
    pb::ConfigResponse {
        entries: engine::domain::config::KEYS
            .iter()
            .map(|&(key, min, max, default)| pb::ConfigEntry { key: key.to_string(), value: config.values.get(key).copied().unwrap_or(default), min, max, set: config.values.contains_key(key) })
            .collect(),
    }
}

fn node_status_name(status: engine::domain::party::NodeStatus) -> &'static str {
    match status {
        engine::domain::party::NodeStatus::Unknown => "unknown",
        engine::domain::party::NodeStatus::Active => "active",
        engine::domain::party::NodeStatus::Drained => "drained",
        engine::domain::party::NodeStatus::Removed => "removed",
    }
}

impl Api {
    /// The statistics the seed's administration module lists, and a modern operator expects.
    pub async fn stats(&self) -> Result<pb::StatsResponse, Status> {
        let head = self.engine.log.last_seq().await.map_err(|error| Status::unavailable(format!("cannot read the stream's head: {error}")))?;
        let (allocation, issued, pending, delivered, entries, seals) = self.engine.live.read(|p| {
            let allocation: Vec<(NodeId, projections::allocation::NodeSlots)> = p.allocation.nodes.iter().map(|(id, slots)| (id.clone(), slots.clone())).collect();
            let issued = [VoucherStatus::Issued, VoucherStatus::Redeeming, VoucherStatus::Delivered].into_iter().map(|status| p.vouchers.count(status)).sum::<usize>();
            (allocation, issued, p.vouchers.count(VoucherStatus::Pending), p.vouchers.count(VoucherStatus::Delivered), p.royalty.entries.len(), p.royalty.seals.len())
        });
        let live: HashMap<NodeId, NodeLive> = self.engine.nodes.snapshot().into_iter().collect();
        let mut nodes = Vec::with_capacity(allocation.len());
        for (node_id, slots) in allocation {
            let status = self.market().handler().load::<engine::domain::party::Node>(&node_id.0).await.map_err(|e| fail(e.into()))?.state.status;
            let announced = live.get(&node_id).cloned().unwrap_or_default();
            nodes.push(pb::NodeStatsView {
                healthy: self.engine.nodes.healthy(&node_id),
                node_id: node_id.0,
                streams_max: slots.slots_max,
                streams_in_use: slots.in_use,
                cache_items: announced.cache_items,
                cache_accesses: announced.cache_accesses,
                cache_misses: announced.cache_misses,
                endpoint: announced.endpoint,
                status: node_status_name(status).to_string(),
                region: slots.region,
            });
        }
        Ok(pb::StatsResponse {
            uptime_s: self.engine.uptime().as_secs(),
            vouchers_issued: issued as u64,
            nodes,
            projection_lag: self.engine.live.lag(head),
            events_per_s: self.engine.rate.per_second(),
            stream_events: head.0,
            royalty_entries: entries as u64,
            seals: seals as u64,
            vouchers_pending: pending as u64,
            vouchers_delivered: delivered as u64,
        })
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Api {
    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let result = async {
            Self::operator(&request)?;
            self.stats().await
        }
        .await;
        self.answer(result)
    }

    async fn get_config(&self, request: Request<pb::GetConfigRequest>) -> Result<Response<pb::ConfigResponse>, Status> {
        let result = async {
            Self::operator(&request)?;
            let config = self.market().handler().load::<engine::domain::config::Config>(CONFIG_AGGREGATE).await.map_err(|e| fail(e.into()))?.state.clone();
            Ok(config_response(&config))
        }
        .await;
        self.answer(result)
    }

    async fn set_config(&self, request: Request<pb::SetConfigRequest>) -> Result<Response<pb::ConfigResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            self.market().set_config(&operator, &request_id, &message.key, &message.value).await.map_err(fail)?;
            self.engine.apply_configuration().await;
            let config = self.market().handler().load::<engine::domain::config::Config>(CONFIG_AGGREGATE).await.map_err(|e| fail(e.into()))?.state.clone();
            Ok(config_response(&config))
        }
        .await;
        self.answer(result)
    }

    async fn drain_node(&self, request: Request<pb::NodeAdminRequest>) -> Result<Response<pb::NodeAdminResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let node = id("node_id", &message.node_id, NodeId)?;
            self.market().drain_node(&operator, &request_id, &node).await.map_err(fail)?;
            Ok(pb::NodeAdminResponse { node_id: node.0, status: "drained".into() })
        }
        .await;
        self.answer(result)
    }

    async fn remove_node(&self, request: Request<pb::NodeAdminRequest>) -> Result<Response<pb::NodeAdminResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let node = id("node_id", &message.node_id, NodeId)?;
            self.market().remove_node(&operator, &request_id, &node).await.map_err(fail)?;
            Ok(pb::NodeAdminResponse { node_id: node.0, status: "removed".into() })
        }
        .await;
        self.answer(result)
    }
}
