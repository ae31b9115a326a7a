//! The delivery node agent (`vouchsafe node`). It registers with the engine
//! (`DeliveryService.RegisterNode`), reports its load every [`HEARTBEAT_INTERVAL_MS`],
//! follows its assignment feed (`SubscribeAssignments`) from a checkpoint persisted in
//! `<data_dir>/node-<node_id>.seq`, and serves `NodeService` to players. Given several
//! engines (`--connect A,B`), its calls go to the first that answers and fail over
//! (`common::failover`): when its engine stops, the broken feed announces the node again
//! to the next engine that answers and resumes from the checkpoint, cache and grants kept.
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
//!   reports `EndPreview`;
//! - `grpc.health.v1` answers SERVING until a shutdown begins, NOT_SERVING from then on,
//!   while the calls in flight drain (so a load balancer stops sending players here).
//!
//! What deliberately does not live here: any decision beyond the access grant (the engine
//! checks receipt proofs, certificates and the voucher's state), any media key (the node
//! never sees one; it serves ciphertext). Players reach the node over TLS when it has an
//! identity (`NodeArgs::player_tls`, `node --tls-cert/--tls-key`): it then registers an
//! `https://` endpoint, which the engine hands to players in each sale.
//! The node never logs or prints a token, proof, receipt, wrapped key or its access key:
//!
//! Files: `state` (grants, challenges, the media cache, assignments, the feed checkpoint),
//! `service` (`NodeService` and its request guard), `feed` (heartbeats and the assignment
//! feed), this file (arguments, registration, start and stop).

mod feed;
mod service;
mod state;
pub mod status;
#[cfg(test)]
mod tests;

use crate::common::transfer::{CHALLENGE_BYTES, Reassembly};
use feed::{feed_loop, heartbeat_loop, stopped};
use service::{NodeApi, RequestSizeLimit, Shared};
pub use service::{derived_request_id, player_request_id};
pub use state::{
    Assignments, CachedPart, Challenges, MediaCache, PartKey, VoucherAssignment, check_grant, checkpoint_path, read_checkpoint, require_grant, write_checkpoint,
};

use crate::common::cred::{Credential, Present};
use crate::common::failover::Engines;
use anyhow::{Context, bail};
use engine::clock::{Clock, SystemClock};
use engine::crypto::SecretKey;
use lru::LruCache;
use proto::v1::RegisterNodeRequest;
use proto::v1::delivery_service_client::DeliveryServiceClient;
use proto::v1::node_service_server::NodeServiceServer;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Endpoint, Server};
use tracing::{info, warn};

/// How often the node reports its load to the engine.
pub const HEARTBEAT_INTERVAL_MS: u64 = engine::domain::config::NODE_HEARTBEAT_INTERVAL_MS;
/// Longest wait for the engine to answer a heartbeat before it counts as failed.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 5_000;
/// The shortest time between two requests for the access keys of a new token key (a grant
/// naming an unknown, newer id; a heartbeat saying the engine rotated).
pub const KEY_REFRESH_INTERVAL_MS: u64 = 1_000;
/// How long such a request may take.
pub const KEY_REFRESH_TIMEOUT_MS: u64 = 5_000;
/// Bytes of media per streamed chunk, to players.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Bytes of a challenge.
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
/// Longest a response stream waits for a player to read the next chunk before it ends the
/// stream and frees the permit (the player resumes from its offset); the default of
/// `NodeLimits::send_idle_ms`.
pub const SEND_IDLE_MS: u64 = 30_000;
/// PlayPreview calls that may wait at once for a preview id this node was not assigned
/// (yet); more are refused at once (made-up ids cost a bounded number of waits).
pub const PREVIEW_WAITS_MAX: u32 = 256;
/// Player connections from one peer (IP address, IPv6 /64), in all, and the wait for a new
/// connection's first bytes (`common::peers`).
pub const CONNECTIONS_PER_PEER_MAX: usize = 128;
pub const CONNECTIONS_MAX: usize = 4096;
pub const PREFACE_MS: u64 = 10_000;

/// The node's limits on what players may hold (`start_with_limits`; `start` takes the
/// defaults above). Connections refused are counted in `NodeStats::connections_refused`.
#[derive(Clone, Copy, Debug)]
pub struct NodeLimits {
    pub send_idle_ms: u64,
    pub preview_waits_max: u32,
    pub connections: crate::common::peers::ConnectionLimits,
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            send_idle_ms: SEND_IDLE_MS,
            preview_waits_max: PREVIEW_WAITS_MAX,
            connections: crate::common::peers::ConnectionLimits {
                connections_per_peer_max: CONNECTIONS_PER_PEER_MAX,
                connections_max: CONNECTIONS_MAX,
                preface_ms: PREFACE_MS,
            },
        }
    }
}
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
/// Several engines (`--connect A,B`): a call that finds its engine gone goes to the next
/// (`common::failover`); the feed then re-announces and resumes from its checkpoint there.
pub type EngineClient = DeliveryServiceClient<InterceptedService<Engines, Present>>;

/// What `vouchsafe node` is started with.
#[derive(Debug)]
pub struct NodeArgs {
    /// The engine's gRPC address, e.g. `http://127.0.0.1:7400`; several engines on one
    /// stream comma-separated.
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
    /// The certificate and key players see: with it the node serves players over TLS and
    /// registers an `https://` endpoint; without it, plain gRPC (`http://`).
    pub player_tls: Option<crate::common::tls::ServerIdentity>,
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
    /// PlayPreview calls waiting for their preview to be assigned here (they hold no permit).
    pub preview_waits: u32,
    /// Connections closed at accept by `NodeLimits::connections` (per peer, in all) or for
    /// a missing preface.
    pub connections_refused: u64,
    pub assignments_seen: u64,
    /// The stream sequence of the newest assignment handled (the checkpoint).
    pub last_seq: u64,
}

// ---- access grants -------------------------------------------------------------------------

/// A started node: its identity, address and counters, and the handle to stop it.
pub struct RunningNode {
    shared: Arc<Shared>,
    engines: Engines,
    endpoint: String,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    tasks: Vec<JoinHandle<()>>,
    health: tonic_health::server::HealthReporter,
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

    /// Where players reach this node, e.g. `http://127.0.0.1:40123`, or `https://…` when it
    /// serves TLS (as registered).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The URL of the engine the node talks to now (of `--connect`'s, after failovers).
    pub fn engine_url(&self) -> &str {
        self.engines.current_url()
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
        let Self { shared, shutdown, mut server, tasks, health, .. } = self;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
        shared.draining.store(true, Ordering::Relaxed);
        // Draining is visible from this moment: health says NOT_SERVING while in-flight
        // calls and streams finish.
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
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
/// ("all interfaces") address, which no client can dial; `https` when the node serves TLS.
fn advertised_endpoint(local_addr: SocketAddr, tls: bool) -> String {
    let advertised = match local_addr {
        SocketAddr::V4(addr) if addr.ip().is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        SocketAddr::V6(addr) if addr.ip().is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
        other => other,
    };
    if advertised != local_addr {
        warn!(%local_addr, %advertised, "listening on all interfaces; registering the loopback address, which only local players can reach");
    }
    format!("{}://{advertised}", if tls { "https" } else { "http" })
}

/// Connects to the engine and registers; the client and the registration's node id and
/// access keys by token key id.
async fn register(
    args: &NodeArgs,
    credential: Credential,
    endpoint: &str,
) -> anyhow::Result<(EngineClient, Engines, String, std::collections::BTreeMap<u32, SecretKey>)> {
    let urls = crate::common::failover::split_urls(&args.connect)?;
    let channel = crate::common::failover::connect_first(&urls, |url| engine_endpoint(url, &args.engine_tls)).await?;
    let mut engine = DeliveryServiceClient::with_interceptor(channel.clone(), Present(Arc::new(credential)))
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
    let access_keys = state::access_keys_of(&mut registered).map_err(|problem| anyhow::anyhow!("the engine answered RegisterNode with {problem}"))?;
    // The operator's licence decides: the engine records at most the licensed slots and the
    // registered region, whatever the flags say.
    if registered.slots_max != 0 && registered.slots_max < args.slots_max {
        warn!(announced = args.slots_max, licensed = registered.slots_max, "the engine records the slots this node is licensed for, fewer than --slots");
    }
    if !registered.region.is_empty() && registered.region != args.region {
        warn!(flag = %args.region, registered = %registered.region, "this node was registered in another region than --region; the engine uses the registered one");
    }
    Ok((engine, channel, registered.node_id, access_keys))
}

/// The endpoint of one engine URL: TLS for `https://`, keepalive so a dead engine is noticed.
fn engine_endpoint(url: &str, engine_tls: &EngineTls) -> anyhow::Result<Endpoint> {
    let mut engine_endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("--connect {url} is not a URL such as http://127.0.0.1:7400"))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_millis(ENGINE_KEEPALIVE_MS))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &engine_tls.ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &engine_tls.client_identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        engine_endpoint = engine_endpoint.tls_config(tls).context("TLS configuration for the engine connection")?;
    } else if engine_tls.client_identity.is_some() {
        bail!("a client certificate needs an https:// engine URL, not {url}");
    }
    Ok(engine_endpoint)
}

/// Starts a node on the system clock: binds `listen`, registers, starts the heartbeat, the
/// feed and the player service.
pub async fn start(args: NodeArgs) -> anyhow::Result<RunningNode> {
    start_with_clock(args, Arc::new(SystemClock)).await
}

/// [`start`] with the clock that access tokens and challenges are checked against.
pub async fn start_with_clock(args: NodeArgs, clock: Arc<dyn Clock>) -> anyhow::Result<RunningNode> {
    start_with_limits(args, clock, NodeLimits::default()).await
}

/// [`start_with_clock`] with limits of its own.
pub async fn start_with_limits(args: NodeArgs, clock: Arc<dyn Clock>, limits: NodeLimits) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let local_addr = listener.local_addr().context("the listener has no local address")?;
    let endpoint = advertised_endpoint(local_addr, args.player_tls.is_some());
    // TLS is set up before registering, so a node that cannot serve it never announces it.
    let mut builder = Server::builder();
    if let Some(identity) = &args.player_tls {
        builder = builder.tls_config(identity.server_config()).context("the node's TLS certificate and key do not make a TLS configuration")?;
    }
    let (engine, engines, node_id, access_keys) = register(&args, args.cred.clone(), &endpoint).await?;
    let checkpoint = checkpoint_path(&args.data_dir, &node_id);
    let last_seq = read_checkpoint(&checkpoint)?;
    info!(%node_id, region = %args.region, %endpoint, slots_max = args.slots_max, last_seq, "registered with the engine");

    let shared = Arc::new(Shared {
        node_id,
        access_keys: Mutex::new(access_keys),
        key_refresh: tokio::sync::Mutex::new(None),
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
        preview_waits: AtomicU32::new(0),
        connections_refused: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        requests: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
        limits,
        draining: std::sync::atomic::AtomicBool::new(false),
    });

    let (shutdown, shutdown_receiver) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(heartbeat_loop(shared.clone(), shutdown_receiver.clone())),
        tokio::spawn(feed_loop(shared.clone(), checkpoint, shutdown_receiver.clone())),
    ];
    let service =
        NodeServiceServer::new(NodeApi { shared: shared.clone() }).max_decoding_message_size(REQUEST_BYTES_MAX).max_encoding_message_size(RESPONSE_BYTES_MAX);
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    let refused_connections = Arc::clone(&shared.connections_refused);
    let admission = crate::common::peers::Admission::new(
        limits.connections,
        Arc::new(move |_| {
            refused_connections.fetch_add(1, Ordering::Relaxed);
        }),
    );
    let incoming = crate::common::peers::incoming(listener, admission);
    let mut server_shutdown = shutdown_receiver;
    let server = tokio::spawn(
        builder
            .layer(tower_layer::layer_fn(|inner| RequestSizeLimit { inner }))
            .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
            .max_concurrent_streams(u32::try_from(REQUESTS_PER_CONNECTION_MAX).expect("a small limit fits in u32"))
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move { stopped(&mut server_shutdown).await }),
    );
    Ok(RunningNode { shared, engines, endpoint, local_addr, shutdown, server, tasks, health })
}

/// The node's health, for the whole server (the empty name) and for `NodeService`.
async fn set_health(health: &tonic_health::server::HealthReporter, status: tonic_health::ServingStatus) {
    for service in ["", <NodeServiceServer<NodeApi> as tonic::server::NamedService>::NAME] {
        health.set_service_status(service, status).await;
    }
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
