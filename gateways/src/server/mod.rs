//! The engine's gRPC server: MerchantService, DeliveryService, CatalogService and
//! AuditService over `engine::app::Market`, with grpc.health.v1 and server reflection, the
//! live projections (allocator, sweeper, sealer) and graceful shutdown. Request messages
//! are checked and converted here (the one place RPC messages meet domain types); every
//! refusal goes through `status::from_app_error`, one exhaustive mapping.
//!
//! Identity comes only from the credential checked by `front_door::FrontDoor`; no handler reads
//! an id of the caller from a request field. Secrets (credential secrets, receipts, access
//! keys) appear only in the responses that hand them to their owner, never in a log line.

mod admin;
mod api;
mod audit;
mod catalog;
pub mod console;
mod consumer;
mod delivery;
pub mod dispatcher;
pub mod feeds;
pub mod front_door;
mod gossip;
mod identity;
pub mod jobs;
mod merchant;
pub mod metrics;
mod reads;
pub mod serve;
pub mod status;
pub mod tlog;

pub use api::Api;
pub use jobs::{RateMeter, lapse_once, relocate_once, seal_once, sweep_once};
use jobs::{key_follower, lease_keeper, rate_sampler, sealer, sweeper};

use crate::server::front_door::{Authenticator, FrontDoor, Limits};
use crate::server::metrics::{Metrics, NodeLabel};
use anyhow::Context;
use engine::app::Market;
use engine::clock::{Clock, SystemClock};
use engine::crypto::SecretKey;
use engine::domain::voucher::VoucherStatus;
use engine::ids::*;
use engine::log::EventLog;
use engine::media_store::MediaStore;
use engine::placement::{HEARTBEAT_STALE_MS, HealthyAllocator, NodeHealth};
use projections::Live;
use proto::v1 as pb;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Bytes per MediaChunk message.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Messages buffered per server stream before the sender waits (flow control).
pub const STREAM_BUFFER_MESSAGES: usize = 64;
/// How long an access token is valid after IssueVoucher.
pub const ACCESS_TTL_MS: u64 = 10 * 60 * 1000;
/// Concurrent requests per connection (on top of the server-wide limit); also the HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS` the engine announces, so a client cannot open more
/// streams on one connection than it may run.
pub const REQUESTS_PER_CONNECTION_MAX: usize = 256;
/// HTTP/2 keepalive: a ping after this much silence on a connection, which is closed when
/// the ping is not answered within `HTTP2_KEEPALIVE_TIMEOUT`: a dead or stalled peer does
/// not keep its connection (and the streams on it) forever.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest header block a request may carry (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`): a
/// request is handed to the front door only once its headers are complete, so a client
/// that sends them slowly holds no request slot, and this bounds what it holds meanwhile.
pub const HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;
/// Longest an operator's party change waits for the credential table to apply it.
pub(crate) const CREDENTIALS_APPLY_WAIT: Duration = Duration::from_secs(2);
/// Longest endpoint a node may announce.
pub(crate) const ENDPOINT_CHARS_MAX: usize = 256;
/// Full replays (AuditService Replay and VerifyChain) running at once; more are refused
/// with ResourceExhausted (each reads and re-verifies the whole stream).
pub const REPLAYS_IN_FLIGHT_MAX: usize = 2;
/// How often the sealer checks whether a seal is due.
pub(crate) const SEAL_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait between retries of the live projections after a read failure.
pub(crate) const PROJECTION_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest wait between dispatcher restarts after a failure.
pub(crate) const DISPATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often `serve` seals the royalty log by default (`seal_interval_ms` changes it).
pub const SEAL_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// Replay progress is reported every this many events.
pub(crate) const REPLAY_PROGRESS_EVERY_EVENTS: u64 = 10_000;

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
    /// How long health answers NOT_SERVING before a shutdown stops serving, so a load
    /// balancer probing it stops sending first (`serve`: `DRAIN_GRACE_DEFAULT`; in-process
    /// engines: none).
    pub drain_grace: Duration,
    /// Give out node slots only from this engine's slot leases (`SlotsLeased`), so that
    /// engines sharing a stream never over-give a node. Always on; off only in the test
    /// that shows the over-allocation it prevents (`replay-tests/tests/engines.rs`).
    pub slot_leases: bool,
    /// Where published media files live; `None`: `<data_dir>/media`. Engines sharing a
    /// stream share one (`serve --media-dir`).
    pub media_dir: Option<PathBuf>,
}

/// `serve`'s drain grace: a few health probes' worth.
pub const DRAIN_GRACE_DEFAULT: Duration = Duration::from_secs(2);

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
            drain_grace: Duration::ZERO,
            slot_leases: true,
            media_dir: None,
        }
    }
}

/// What the server's handlers and jobs share: the market, the live projections, the log,
/// the media store, node health, metrics and the settings it was started with.
pub struct EngineState {
    pub market: Arc<Market>,
    pub live: Live,
    pub log: Arc<dyn EventLog>,
    pub metrics: Arc<Metrics>,
    pub media: MediaStore,
    pub nodes: Arc<NodeHealth>,
    /// The assignment feeds open now (one per node, `Limits::assignment_feeds_max` in all).
    pub feeds: Arc<feeds::AssignmentFeeds>,
    pub rate: RateMeter,
    /// Bounds the full replays running at once (`REPLAYS_IN_FLIGHT_MAX`).
    pub(super) replays: Arc<tokio::sync::Semaphore>,
    /// The auditor's royalty master key, when the engine's key directory holds it (then the
    /// engine can also rebuild its chain and answer AuditService's replays); `None` in the
    /// forward-secure layout, where the projection store's chain key is all it keeps.
    pub(super) royalty_master: Option<SecretKey>,
    pub(super) config: EngineConfig,
    pub(super) started: Instant,
    pub(super) shutdown: watch::Receiver<bool>,
    /// This process's name on slot leases, job leases and gossip (new at each start).
    pub(super) engine_id: String,
    /// Who runs the sealer and the sweeper among the engines on the stream (`None`: this
    /// engine alone opens its log, and runs both).
    pub(super) job_leases: Option<Arc<dyn engine::log::JobLeases>>,
    /// The lock of the data directory, held while the engine runs (`identity`).
    _data_lock: std::fs::File,
}

/// How long after its holder's last renewal a job lease (sealer, sweeper) runs out, so
/// another engine takes the job over within about this long after the holder died.
pub const JOB_LEASE_TTL: Duration = Duration::from_secs(10);
/// Attempts at opening the job-lease bucket at a start, 500 ms apart.
const JOB_LEASE_OPEN_ATTEMPTS_MAX: usize = 60;

impl EngineState {
    /// Whether this engine runs job `name` now (`JOB_LEASE_TTL`): always when it alone
    /// opens its log; else while it holds the job's lease (taken, or renewed by this call).
    pub async fn runs_job(&self, name: &str) -> bool {
        let Some(leases) = &self.job_leases else { return true };
        match leases.hold(name, &self.engine_id).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, job = name, "cannot reach the job lease; not running the job this round");
                false
            }
        }
    }

    /// This process's name among the engines sharing the stream.
    pub fn engine_id(&self) -> &str {
        &self.engine_id
    }
}

impl EngineState {
    /// Brings the gauges up to date (before a scrape or a stats answer).
    pub async fn refresh_metrics(&self) {
        let head = self.log.last_seq().await.map(|seq| seq.0).unwrap_or(0);
        self.metrics.stream_last_seq.set(head as i64);
        self.metrics.projection_lag.set(self.live.lag(Seq(head)) as i64);
        self.metrics.uptime_seconds.set(self.started.elapsed().as_secs() as i64);
        let (slots, issued, entries) = self.live.read(|p| {
            let slots: Vec<(NodeId, u32, u32)> = p.allocation.nodes.iter().map(|(id, n)| (id.clone(), n.in_use, n.slots_max)).collect();
            let issued =
                [VoucherStatus::Issued, VoucherStatus::Redeeming, VoucherStatus::Delivered].into_iter().map(|status| p.vouchers.count(status)).sum::<usize>();
            (slots, issued, p.royalty.entries.len())
        });
        for (node, in_use, max) in slots {
            let label = NodeLabel { node: node.0 };
            self.metrics.slots_in_use.get_or_create(&label).set(i64::from(in_use));
            self.metrics.slots_max.get_or_create(&label).set(i64::from(max));
        }
        for (node, live) in self.nodes.snapshot() {
            let label = NodeLabel { node: node.0 };
            self.metrics.node_cache_items.get_or_create(&label).set(live.beat.cache_items as i64);
            self.metrics.node_cache_accesses.get_or_create(&label).set(live.beat.cache_accesses as i64);
            self.metrics.node_cache_misses.get_or_create(&label).set(live.beat.cache_misses as i64);
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
        match self.market.configured(key).await {
            Ok(value) => value,
            Err(error) => {
                tracing::warn!(%error, key, "cannot read the configuration; using the serve setting");
                None
            }
        }
    }

    /// Waits (at most `CREDENTIALS_APPLY_WAIT`) until the live projections have applied the
    /// stream up to its head: after a registration, suspension, drain, removal or revocation,
    /// so that the front door's credential table knows it before the operator's answer
    /// leaves (another engine learns it as its own projections follow the stream).
    pub(super) async fn credentials_applied(&self) {
        match self.log.last_seq().await {
            Ok(head) => {
                if tokio::time::timeout(CREDENTIALS_APPLY_WAIT, self.live.caught_up(head)).await.is_err() {
                    tracing::warn!(head = head.0, "the credential table is behind the stream; the change applies when the projections catch up");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the stream's head; the credential change applies when the projections catch up"),
        }
    }

    /// Applies the configuration recorded on the stream to what reads it synchronously.
    pub(super) async fn apply_configuration(&self) {
        if let Some(stale_ms) = self.configured("node.heartbeat_timeout_ms").await {
            self.nodes.set_stale_ms(stale_ms);
        }
    }
}

/// A running engine: its bound address and how to stop it.
pub struct RunningEngine {
    pub addr: SocketAddr,
    pub state: Arc<EngineState>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    runner: tokio::task::JoinHandle<()>,
    health: tonic_health::server::HealthReporter,
    /// The front door's credential check, which the console's sign-in uses too.
    authenticator: Arc<Authenticator>,
}

/// Every service the engine reports health for (the empty name, the whole server, too).
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
    for service in [
        "",
        <pb::merchant_service_server::MerchantServiceServer<Api> as tonic::server::NamedService>::NAME,
        <pb::delivery_service_server::DeliveryServiceServer<Api> as tonic::server::NamedService>::NAME,
        <pb::catalog_service_server::CatalogServiceServer<Api> as tonic::server::NamedService>::NAME,
        <pb::audit_service_server::AuditServiceServer<Api> as tonic::server::NamedService>::NAME,
        <pb::admin_service_server::AdminServiceServer<Api> as tonic::server::NamedService>::NAME,
        <pb::consumer_service_server::ConsumerServiceServer<Api> as tonic::server::NamedService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

impl RunningEngine {
    /// `http://ADDR` (or https with TLS) for clients.
    pub fn url(&self) -> String {
        let scheme = if self.state.config.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Graceful shutdown: stop accepting, end the server streams, let in-flight requests
    /// finish (their events are appended and acknowledged), then stop the sweeper, the
    /// sealer and the projection runner.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // Draining is visible from the moment it begins: health says NOT_SERVING while the
        // server still answers, for `drain_grace`, then the server stops.
        set_health(&self.health, false).await;
        if !self.state.config.drain_grace.is_zero() {
            tokio::time::sleep(self.state.config.drain_grace).await;
        }
        let _ = self.stop.send(true);
        let served = self.server.await.context("the gRPC server task failed")?;
        for task in self.background {
            let _ = task.await;
        }
        self.runner.abort();
        served.context("the gRPC server failed")?;
        Ok(())
    }

    /// Runs the dispatcher (`crate::server::dispatcher`) onto `feed`'s node-feed stream until the
    /// engine stops; a failure is logged and retried with capped backoff.
    pub fn dispatch_to(&mut self, feed: Arc<engine::log::jetstream::JetStreamLog>) {
        let log = Arc::clone(&self.state.log);
        let mut shutdown = self.stop.subscribe();
        self.background.push(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match crate::server::dispatcher::run(Arc::clone(&log), Arc::clone(&feed), shutdown.clone()).await {
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

    /// Serves the read-only web console (`console`) on `listener` until the engine stops.
    pub fn serve_console(&mut self, listener: tokio::net::TcpListener) {
        let api = Api { state: Arc::clone(&self.state) };
        let authenticator = Arc::clone(&self.authenticator);
        let mut stopping = self.stop.subscribe();
        self.background.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            if let Err(error) = console::serve(listener, api, authenticator, shutdown).await {
                tracing::error!(%error, "the console stopped serving");
            }
        }));
    }

    /// Publishes the royalty log as C2SP tlog-tiles (`tlog`): served on `listener` when
    /// given, and each checkpoint sent to the witnesses when given, until the engine stops.
    pub fn publish_tlog(&mut self, listener: Option<tokio::net::TcpListener>, witnessing: Option<tlog::Witnessing>) {
        let witnessed = witnessing.is_some();
        let site = Arc::new(tlog::TlogSite::new(Arc::clone(&self.state), witnessing));
        if witnessed {
            self.background.push(tokio::spawn(tlog::cosign_loop(Arc::clone(&site), self.stop.subscribe())));
        }
        if let Some(listener) = listener {
            let mut stopping = self.stop.subscribe();
            self.background.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                };
                if let Err(error) = tlog::serve(listener, site, shutdown).await {
                    tracing::error!(%error, "the tiles stopped serving");
                }
            }));
        }
    }

    /// Resolves when the engine has been told to stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

/// Why an engine without the royalty master key cannot chain, and what to do.
fn bail_chain_needs_handover(config: &EngineConfig) -> anyhow::Result<()> {
    anyhow::bail!(
        "the royalty chain cannot start: the key directory {} holds no royalty-master.key and the projection store no chain key ({}); ask the auditor for a handover (`vouchsafe audit handover --keys AUDITOR_KEYS --out DIR`) and start with DIR as <data-dir>/projections (README, Forward security)",
        config.keys_dir.display(),
        config.projections_dir.as_ref().map_or_else(|| "none: this engine keeps its projections in memory".to_string(), |dir| dir.display().to_string())
    )
}

/// Starts the engine on `listener` with `log`: loads the keys, rebuilds the projections
/// from the stream, then serves.
pub async fn start(config: EngineConfig, log: Arc<dyn EventLog>, listener: tokio::net::TcpListener) -> anyhow::Result<RunningEngine> {
    crate::common::keys::check_dir(&config.keys_dir)?;
    let keys = Arc::new(crate::common::keys::load_engine_keys(&config.keys_dir)?);
    let royalty_master = crate::common::keys::load_royalty_master_if_present(&config.keys_dir)?;
    let operator = crate::common::cred::Credential::load(&config.keys_dir.join(crate::common::keys::OPERATOR_CRED))?;
    let media = MediaStore::open(&config.media_dir.clone().unwrap_or_else(|| config.data_dir.join("media")))?;
    // Without the master key only a store with its chain key can chain: refused before a
    // store is created, so the auditor's handover can take its place.
    if royalty_master.is_none() && !config.projections_dir.as_deref().is_some_and(|dir| projections::store::chain_key::path_in(dir).exists()) {
        bail_chain_needs_handover(&config)?;
    }
    let live = match &config.projections_dir {
        // Backed by the projection store: resume at its checkpoint (after checking it belongs
        // to this stream), or rebuild into it from sequence 1.
        Some(dir) => {
            let (live, outcome) = Live::open_checked(dir, royalty_master.as_ref(), Some(keys.public.clone()), log.as_ref())
                .await
                .with_context(|| format!("cannot open the projection store in {}", dir.display()))?;
            match outcome {
                projections::store::OpenOutcome::Created => tracing::info!(dir = %dir.display(), "new projection store: rebuilding from sequence 1"),
                projections::store::OpenOutcome::Resumed { checkpoint } => {
                    tracing::info!(dir = %dir.display(), checkpoint = checkpoint.0, "projection store resumed")
                }
                projections::store::OpenOutcome::Quarantined { path, reason } => {
                    tracing::warn!(dir = %dir.display(), quarantined = %path.display(), %reason, "projection store quarantined; rebuilding from sequence 1")
                }
            }
            live
        }
        None => Live::with_keys(royalty_master.as_ref(), Some(keys.public.clone())),
    };
    // An engine that cannot chain would release media keys without usage records.
    if !live.read(|p| p.royalty.chained()) {
        bail_chain_needs_handover(&config)?;
    }
    // Seals signed with keys rotated out still check out in the engine's own view.
    live.add_older_engine_keys(keys.retired().iter().map(engine::crypto::RsaPrivate::public).collect());
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
    // This engine's name on the slot leases, kept with its data directory (locked while it
    // runs): a restart carries on with its leases; a dead engine's leases are taken over
    // once they run out (`engine::placement::LEASE_TERMS`).
    let (engine_id, data_lock) = identity::engine_identity(&config.data_dir)?;
    if config.slot_leases {
        live.set_lease_holder(&engine_id);
    }
    tracing::info!(engine = %engine_id, "engine started");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let nodes = Arc::new(NodeHealth::new(Arc::clone(&clock), HEARTBEAT_STALE_MS));
    let allocator = Arc::new(HealthyAllocator::new(Arc::new(live.clone()), Arc::clone(&nodes)));
    let market = Arc::new(Market::new(Arc::clone(&log), clock, Arc::clone(&keys), allocator));
    // What another engine appends reaches this engine's checks once the projections apply it.
    // (Weak: the market holds the projections as its allocator.)
    let observing = Arc::downgrade(&market);
    let observer = move |subject: &str, seq| {
        if let Some(market) = observing.upgrade() {
            market.handler().observe(subject, seq);
        }
    };
    if live.observe_applied(Arc::new(observer)).is_err() {
        anyhow::bail!("the live projections already tell another engine what they apply");
    }
    // Royalty entries from here on bind their stream sequence (once per stream).
    market.bind_royalty_entries().await.context("cannot record the royalty entry binding")?;
    // The job-lease bucket answers once the cluster has its leaders (a node just restarted).
    let mut job_lease_attempts = 0;
    let job_leases = loop {
        match log.job_leases(JOB_LEASE_TTL).await {
            Ok(leases) => break leases,
            Err(error) if job_lease_attempts < JOB_LEASE_OPEN_ATTEMPTS_MAX => {
                job_lease_attempts += 1;
                tracing::warn!(%error, "cannot open the job leases yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context("cannot open the job leases (sealer, sweeper)"),
        }
    };
    let (stop, shutdown) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(EngineState {
        market: Arc::clone(&market),
        live: live.clone(),
        log: Arc::clone(&log),
        metrics: Arc::clone(&metrics),
        media,
        nodes,
        feeds: feeds::AssignmentFeeds::new(config.limits.assignment_feeds_max),
        rate: RateMeter::default(),
        replays: Arc::new(tokio::sync::Semaphore::new(REPLAYS_IN_FLIGHT_MAX)),
        royalty_master,
        config: config.clone(),
        started: Instant::now(),
        shutdown: shutdown.clone(),
        engine_id,
        job_leases,
        _data_lock: data_lock,
    });

    let authenticator = Arc::new(Authenticator::new(live.clone(), operator.id.clone(), &operator.secret));
    let door = FrontDoor::new(Arc::clone(&authenticator), config.limits, Arc::clone(&metrics));
    let api = Api { state: Arc::clone(&state) };
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, true).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("server reflection")?;
    // The front door enforces the real limits; tonic's own decoding limit is a backstop.
    let decode_max = config.limits.upload_bytes_max + 1024;
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .max_concurrent_streams(u32::try_from(REQUESTS_PER_CONNECTION_MAX).expect("a small limit fits in u32"))
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(HEADER_LIST_BYTES_MAX);
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
        .add_service(pb::admin_service_server::AdminServiceServer::new(api.clone()).max_decoding_message_size(decode_max))
        .add_service(pb::consumer_service_server::ConsumerServiceServer::new(api).max_decoding_message_size(decode_max));
    let addr = listener.local_addr()?;
    // `serve_with_incoming` ignores the builder's `tcp_nodelay`, so `peers::incoming` sets
    // it: without it Nagle's algorithm can hold a response's last small write until the
    // client's delayed ACK (up to 40 ms on Linux).
    // Connections are admitted per peer and in all, and must speak within `preface_ms`.
    let counted = Arc::clone(&metrics);
    let admission = crate::common::peers::Admission::new(config.limits.connections(), Arc::new(move |refusal| counted.count_limit(refusal.limit_name())));
    let incoming = crate::common::peers::incoming(listener, admission);
    let mut stop_server = shutdown.clone();
    let server = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_server.wait_for(|stop| *stop).await;
            })
            .await
    });
    state.apply_configuration().await;
    // Keys the directory rotated while the engine was down are recorded before the jobs sign
    // anything with them.
    let last_seal = keys_of_last_seal(&state);
    match state.market.record_keys_at_start(&state.engine_id, last_seal.as_ref()).await {
        Ok(recorded) if !recorded.is_empty() => tracing::warn!(keys = ?recorded, "recorded key rotations the key directory made while the engine was down"),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not record the key directory's rotations at start; the key follower retries"),
    }
    let background = vec![
        tokio::spawn(sweeper(Arc::clone(&state))),
        tokio::spawn(lease_keeper(Arc::clone(&state))),
        tokio::spawn(sealer(Arc::clone(&state))),
        tokio::spawn(rate_sampler(Arc::clone(&state))),
        tokio::spawn(key_follower(Arc::clone(&state))),
        tokio::spawn(gossip::listen(Arc::clone(&state))),
    ];
    tracing::info!(%addr, "engine serving");
    Ok(RunningEngine { addr, state, stop, server, background, runner, health, authenticator })
}

fn tls_config(tls: &TlsFiles) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let mut config = crate::common::tls::ServerIdentity::load(&tls.cert, &tls.key)?.server_config();
    if let Some(ca) = &tls.client_ca {
        let ca = crate::common::tls::load_ca(ca, "client CA")?;
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
    }
    Ok(config)
}

/// The keys the newest seal the projections hold was signed with: its engine key id, and
/// the vkey of the key directory's checkpoint key (current or retired) whose key hash its
/// checkpoint signature names.
fn keys_of_last_seal(state: &EngineState) -> Option<engine::app::KeysInUse> {
    let (engine_key_id, key_hash) = state.live.read(|projections| {
        let seal = projections.royalty.seals.last()?;
        Some((seal.engine_key_id.clone(), seal.checkpoint.as_ref().and_then(|checkpoint| checkpoint.signature.get(..4).map(hex::encode))))
    })?;
    let vkeys = crate::common::keys::load_checkpoint_vkey(&state.config.keys_dir).ok().flatten().map(|verifier| verifier.vkeys()).unwrap_or_default();
    let checkpoint_vkey = key_hash.and_then(|hash| vkeys.into_iter().find(|vkey| vkey.split('+').nth(1) == Some(hash.as_str())));
    Some(engine::app::KeysInUse { engine_key_id, checkpoint_vkey })
}
