//! The edge under abuse (issue 21 items 1, 2, 3 and 9), on real sockets, the attackers on
//! loopback addresses of their own (127.0.0.2 …) as other peers would be, the merchant on
//! 127.0.0.1:
//!
//! - `a_flood_leaves_the_merchant_served_and_writes_nothing`: for `FLOOD` at once,
//!   unauthenticated calls, calls that send their headers and never finish their body,
//!   garbage and silent connections, and at the node made-up preview ids, while a merchant
//!   keeps buying and its player keeps calling the node with its grant. Every purchase and
//!   every node call succeeds, the purchases' p99 stays under `MERCHANT_P99_BOUND`, every
//!   event appended meanwhile is the merchant's, no stream read is made for a credential,
//!   and the process's resident memory grows by less than `RSS_GROWTH_BOUND`. It prints
//!   its figures.
//! - one test per protection with its negative control (the limit off, or another peer).

use async_trait::async_trait;
use bytes::Bytes;
use engine::ids::Seq;
use engine::log::{AppendError, AppendRequest, Appended, EventLog, ReadError, StoredEvent, VersionConflict};
use gateways::common::client::{self, MerchantClient};
use gateways::common::cred::{Credential, ID_HEADER, SECRET_HEADER};
use gateways::node::{self, NodeArgs, NodeLimits, RunningNode};
use gateways::server::front_door::Limits;
use gateways::server::{self, EngineConfig, RunningEngine};
use proto::v1 as pb;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

/// The tests here run one at a time: the flood's load would skew the others' timing, and
/// its memory figure is the whole process's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the flood lasts (CI size).
const FLOOD: Duration = Duration::from_secs(4);
/// The bound on the merchant's purchase p99 during the flood (a purchase is three calls:
/// Reserve, Authorize, IssueVoucher). Measured on the 2-core development machine (debug
/// build, shared with other builds): see the figures the test prints.
const MERCHANT_P99_BOUND: Duration = Duration::from_millis(750);
/// The bound on the growth of the test process's resident memory over the flood.
const RSS_GROWTH_BOUND_BYTES: u64 = 64 * 1024 * 1024;

// ---- the engine's log, its reads counted ---------------------------------------------------

/// The engine's log, counting the subject reads (what a credential check used to cost).
struct CountingLog {
    inner: Arc<dyn EventLog>,
    subject_reads: AtomicU64,
}

#[async_trait]
impl EventLog for CountingLog {
    async fn append(&self, request: AppendRequest) -> Result<Result<Appended, VersionConflict>, AppendError> {
        self.inner.append(request).await
    }
    async fn read_subject(&self, subject: &str) -> Result<Vec<StoredEvent>, ReadError> {
        self.subject_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_subject(subject).await
    }
    async fn read_from(&self, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, ReadError> {
        self.inner.read_from(from, limit).await
    }
    async fn last_seq(&self) -> Result<Seq, ReadError> {
        self.inner.last_seq().await
    }
    fn follow(&self, from: Seq) -> futures::stream::BoxStream<'static, Result<StoredEvent, ReadError>> {
        self.inner.follow(from)
    }
}

// ---- fixture ---------------------------------------------------------------------------------

struct Fixture {
    dir: tempfile::TempDir,
    engine: RunningEngine,
    log: Arc<CountingLog>,
    catalog: client::CatalogClient,
    merchant_cred: Credential,
    merchant: MerchantClient,
}

async fn start(limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let embedded: Arc<dyn EventLog> = Arc::new(engine::log::embedded::EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let log = Arc::new(CountingLog { inner: embedded, subject_reads: AtomicU64::new(0) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    // Quiet: neither the sweeper nor the sealer appends during a test.
    let config =
        EngineConfig { sweep_interval: support::QUIET, seal_interval: support::QUIET, limits, ..EngineConfig::new(dir.path().to_path_buf(), keys.clone()) };
    let engine = server::start(config, Arc::clone(&log) as Arc<dyn EventLog>, listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let mut catalog = client::catalog(channel.clone(), operator);
    let merchant_cred =
        support::sale::credential(catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await);
    let merchant = client::merchant(channel, merchant_cred.clone());
    Fixture { dir, engine, log, catalog, merchant_cred, merchant }
}

impl Fixture {
    async fn head(&self) -> u64 {
        self.log.last_seq().await.expect("head").0
    }

    async fn publish(&mut self) -> String {
        let engine_public = gateways::common::keys::load_engine_public(&self.dir.path().join("keys")).expect("public key");
        client::publish(&mut self.catalog, "pub-1", &engine_public, support::sale::upload("Song")).await.expect("publish").media_id
    }

    async fn start_node(&mut self, limits: NodeLimits) -> RunningNode {
        let cred = support::sale::credential(
            self.catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "n-1".into(), region: "eu".into(), slots_max: 5_000 }).await,
        );
        let args = NodeArgs {
            connect: self.engine.url(),
            cred,
            listen: "127.0.0.1:0".parse().expect("loopback"),
            slots_max: 5_000,
            region: "eu".into(),
            data_dir: self.dir.path().join("node"),
            cache_bytes_max: 16 * 1024 * 1024,
            engine_tls: Default::default(),
            player_tls: None,
        };
        node::start_with_limits(args, Arc::new(engine::clock::SystemClock), limits).await.expect("node starts")
    }

    fn limit_hits(&self, limit: &str) -> u64 {
        let text = self.engine.state.metrics.encode();
        let needle = format!("vouchsafe_limit_hits_total{{limit=\"{limit}\"}} ");
        text.lines().find_map(|line| line.strip_prefix(&needle)).map_or(0, |value| value.trim().parse().expect("a count"))
    }
}

// ---- raw HTTP/2 from a chosen source address -----------------------------------------------

fn attacker(last_octet: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet))
}

async fn tcp_from(source: IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

async fn h2_from(source: IpAddr, to: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tcp_from(source, to).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A gRPC request's HTTP/2 head with these metadata.
fn grpc_head(to: SocketAddr, path: &str, metadata: &[(&str, String)]) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://{to}{path}")).header("content-type", "application/grpc").header("te", "trailers");
    for (name, value) in metadata {
        request = request.header(*name, value.as_str());
    }
    request.body(()).expect("a request")
}

/// One message framed for gRPC.
fn framed(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Bytes::from(frame)
}

/// The grpc-status of the answer (from its headers, or its trailers).
async fn grpc_code(response: h2::client::ResponseFuture) -> Option<i32> {
    let response = response.await.ok()?;
    if let Some(code) = response.headers().get("grpc-status") {
        return code.to_str().ok()?.parse().ok();
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    body.trailers().await.ok()??.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A whole unary call: its grpc-status.
async fn call(client: &mut h2::client::SendRequest<Bytes>, head: http::Request<()>, message: Bytes) -> Option<i32> {
    let mut ready = client.clone().ready().await.ok()?;
    let (response, mut body) = ready.send_request(head, false).ok()?;
    // The front door may answer (and end the stream) before the body is sent: that answer counts.
    let _ = body.send_data(message, true);
    *client = ready;
    grpc_code(response).await
}

fn made_up_credential(index: u64) -> [(&'static str, String); 2] {
    [(ID_HEADER, format!("m{index:016x}")), (SECRET_HEADER, hex::encode(engine::crypto::random_bytes::<32>()))]
}

fn merchant_metadata(cred: &Credential) -> [(&'static str, String); 2] {
    [(ID_HEADER, cred.id.clone()), (SECRET_HEADER, hex::encode(cred.secret.expose()))]
}

fn reserve_message() -> Bytes {
    framed(&support::sale::reserve_request("flood", "md-none"))
}

/// Resident memory of this process (engine, node and clients): (now, peak), in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .expect(name)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    sorted[((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len()) - 1]
}

// ---- the flood -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_leaves_the_merchant_served_and_writes_nothing() {
    let _serial = SERIAL.lock().await;
    let limits = Limits { request_read_ms: 1_000, preface_ms: 1_000, connections_per_peer_max: 32, peer_refusals_burst: 200, ..Limits::default() };
    let mut fixture = start(limits).await;
    let media = fixture.publish().await;
    let node = fixture
        .start_node(NodeLimits {
            preview_waits_max: 64,
            connections: gateways::common::peers::ConnectionLimits { connections_per_peer_max: 32, connections_max: 1024, preface_ms: 1_000 },
            ..NodeLimits::default()
        })
        .await;
    let engine_addr = fixture.engine.addr;
    let node_addr = node.local_addr();
    // A second merchant, the attacker that opens requests and never finishes them.
    let slow_cred =
        support::sale::credential(fixture.catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-slow".into(), name: "Slow".into() }).await);
    // Warm up (the first purchase fills caches), then the baseline without a flood.
    client::buy(&mut fixture.merchant, "warm", std::slice::from_ref(&media), None).await.expect("warm-up purchase");
    let mut baseline = Vec::new();
    for index in 0..10 {
        let started = Instant::now();
        client::buy(&mut fixture.merchant, &format!("base-{index}"), std::slice::from_ref(&media), None).await.expect("baseline purchase");
        baseline.push(started.elapsed());
    }
    baseline.sort();
    let reads_before = fixture.log.subject_reads.load(Ordering::Relaxed);
    let head_before = fixture.head().await;
    let credentials_before = fixture.engine.state.live.read(|p| p.reads.credentials_len());
    let (rss_before, _) = rss();
    let until = Instant::now() + FLOOD;
    let sent = Arc::new(AtomicU64::new(0));
    let mut flood = tokio::task::JoinSet::new();

    // Unauthenticated calls: 4 connections from 127.0.0.2, made-up ids and secrets.
    for connection in 0..4u64 {
        let sent = Arc::clone(&sent);
        flood.spawn(async move {
            let mut client = h2_from(attacker(2), engine_addr).await;
            let mut codes = Vec::new();
            let mut index = connection << 40;
            while Instant::now() < until {
                let head = grpc_head(engine_addr, "/vouchsafe.v1.MerchantService/Reserve", &made_up_credential(index));
                sent.fetch_add(1, Ordering::Relaxed);
                codes.push(call(&mut client, head, reserve_message()).await);
                index += 1;
            }
            ("unauthenticated", codes)
        });
    }
    // Requests that never finish: 2 connections from 127.0.0.3, 64 streams each, headers
    // and two bytes of body, with a valid merchant credential, again as each is cut.
    for _ in 0..2 {
        let sent = Arc::clone(&sent);
        let metadata = merchant_metadata(&slow_cred);
        flood.spawn(async move {
            let client = h2_from(attacker(3), engine_addr).await;
            let mut streams = tokio::task::JoinSet::new();
            for _ in 0..64 {
                let client = client.clone();
                let metadata = metadata.clone();
                let sent = Arc::clone(&sent);
                streams.spawn(async move {
                    let mut codes = Vec::new();
                    while Instant::now() < until {
                        let Ok(mut ready) = client.clone().ready().await else { break };
                        let Ok((response, mut body)) = ready.send_request(grpc_head(engine_addr, "/vouchsafe.v1.MerchantService/Reserve", &metadata), false)
                        else {
                            break;
                        };
                        sent.fetch_add(1, Ordering::Relaxed);
                        let _ = body.send_data(Bytes::from_static(&[0, 0]), false);
                        codes.push(grpc_code(response).await);
                        drop(body);
                    }
                    codes
                });
            }
            let mut codes = Vec::new();
            while let Some(joined) = streams.join_next().await {
                codes.extend(joined.expect("slow stream task"));
            }
            ("never finished", codes)
        });
    }
    // Garbage and silence: from 127.0.0.4, connections that send random bytes, and more
    // silent connections than the peer may hold, to the engine and to the node.
    for target in [engine_addr, node_addr] {
        let sent = Arc::clone(&sent);
        flood.spawn(async move {
            let mut codes = Vec::new();
            let mut silent = Vec::new();
            while Instant::now() < until {
                use tokio::io::AsyncWriteExt;
                if let Ok(mut tcp) = tcp_from(attacker(4), target).await {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let _ = tcp.write_all(&engine::crypto::random_bytes::<32>()).await;
                    let _ = tcp.write_all(&engine::crypto::random_bytes::<32>()).await;
                    codes.push(None);
                }
                if silent.len() < 40
                    && let Ok(tcp) = tcp_from(attacker(4), target).await
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                    silent.push(tcp);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ("garbage", codes)
        });
    }
    // Made-up preview ids at the node: 8 connections × 60 streams from 127.0.0.5, again and again.
    for connection in 0..8u64 {
        let sent = Arc::clone(&sent);
        flood.spawn(async move {
            let client = h2_from(attacker(5), node_addr).await;
            let mut streams = tokio::task::JoinSet::new();
            for stream in 0..60u64 {
                let mut client = client.clone();
                let sent = Arc::clone(&sent);
                streams.spawn(async move {
                    let mut codes = Vec::new();
                    let mut round = 0u64;
                    while Instant::now() < until {
                        let message = framed(&pb::PlayPreviewRequest { preview_id: format!("made-up-{connection}-{stream}-{round}") });
                        sent.fetch_add(1, Ordering::Relaxed);
                        codes.push(call(&mut client, grpc_head(node_addr, "/vouchsafe.v1.NodeService/PlayPreview", &[]), message).await);
                        round += 1;
                    }
                    codes
                });
            }
            let mut codes = Vec::new();
            while let Some(joined) = streams.join_next().await {
                codes.extend(joined.expect("preview stream task"));
            }
            ("made-up previews", codes)
        });
    }

    // Meanwhile the merchant buys, and its player asks the node for a challenge each time.
    let mut latencies = Vec::new();
    let mut node_calls = 0;
    let mut index = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let sale =
            client::buy(&mut fixture.merchant, &format!("flood-{index}"), std::slice::from_ref(&media), None).await.expect("a purchase during the flood");
        latencies.push(started.elapsed());
        let mut at_node = gateways::player::connect_node(node.endpoint()).await.expect("connect to the node");
        at_node.challenge(pb::ChallengeRequest { grant: Some(sale.grant()) }).await.expect("a call with a valid grant during the flood");
        node_calls += 1;
        index += 1;
    }
    let mut codes = std::collections::BTreeMap::<(&str, String), u64>::new();
    while let Some(joined) = flood.join_next().await {
        let (kind, answers) = joined.expect("flood task");
        for code in answers {
            *codes.entry((kind, code.map_or("none".into(), |code| format!("{:?}", tonic::Code::from(code))))).or_default() += 1;
        }
    }
    let (rss_after, rss_peak) = rss();
    let head_after = fixture.head().await;
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));

    // Every event appended during the flood is the merchant's.
    let appended = fixture.log.read_from(Seq(head_before + 1), usize::MAX).await.expect("read the flood's events");
    let foreign: Vec<String> = appended
        .iter()
        .map(|stored| engine::wire::decode(&stored.payload).expect("decodes"))
        .filter(|recorded| recorded.actor.id != fixture.merchant_cred.id)
        .map(|recorded| format!("{} by {}", recorded.command, recorded.actor.id))
        .collect();
    let reads_during = fixture.log.subject_reads.load(Ordering::Relaxed) - reads_before;
    eprintln!(
        "flood figures: requests sent {} over {:?} ({codes:?}); merchant purchases {} p50 {:?} p99 {:?} (baseline p50 {:?} p99 {:?}); node calls with a grant {node_calls}; \
         events appended {} (writes for the flood {}); stream subject reads {reads_during}; RSS {} -> {} MiB, peak {} MiB; limit hits: request_read_ms {}, \
         peer_refusals_per_s {}, connections_per_peer_max {}, preface_ms {}; node preview waits now {}, connections refused {}",
        sent.load(Ordering::Relaxed),
        FLOOD,
        latencies.len(),
        p50,
        p99,
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.99),
        head_after - head_before,
        foreign.len(),
        rss_before >> 20,
        rss_after >> 20,
        rss_peak >> 20,
        fixture.limit_hits("request_read_ms"),
        fixture.limit_hits("peer_refusals_per_s"),
        fixture.limit_hits("connections_per_peer_max"),
        fixture.limit_hits("preface_ms"),
        node.stats().preview_waits,
        node.stats().connections_refused,
    );
    assert!(latencies.len() >= 5, "the merchant kept buying: {} purchases", latencies.len());
    assert!(p99 <= MERCHANT_P99_BOUND, "the merchant's p99 {p99:?} is over {MERCHANT_P99_BOUND:?}");
    assert!(foreign.is_empty(), "the flood wrote: {foreign:?}");
    assert_eq!(head_after - head_before, appended.len() as u64);
    assert_eq!(reads_during, 0, "no credential check read the stream");
    assert_eq!(fixture.engine.state.live.read(|p| p.reads.credentials_len()), credentials_before, "made-up ids added no credential");
    assert!(rss_after.saturating_sub(rss_before) < RSS_GROWTH_BOUND_BYTES, "RSS grew from {rss_before} to {rss_after} bytes");
    // Each attack met its limit.
    let count = |kind: &str, code: &str| codes.get(&(kind, code.to_string())).copied().unwrap_or(0);
    assert!(count("unauthenticated", "Unauthenticated") > 0 && count("unauthenticated", "ResourceExhausted") > 0, "{codes:?}");
    assert!(count("never finished", "DeadlineExceeded") > 0, "{codes:?}");
    assert!(fixture.limit_hits("connections_per_peer_max") > 0 && fixture.limit_hits("preface_ms") > 0);
    assert!(count("made-up previews", "ResourceExhausted") > 0, "{codes:?}");
    assert!(node.stats().connections_refused > 0);
    node.shutdown().await;
    fixture.engine.shutdown().await.expect("shutdown");
}

// ---- each protection, with its control -----------------------------------------------------

/// The limits on (low, so a test reaches them) and off (rates and the read deadline 0, a
/// long preface wait), for the controls.
fn low_limits() -> Limits {
    Limits {
        credential_requests_per_s: 5,
        credential_requests_burst: 5,
        peer_refusals_per_s: 1,
        peer_refusals_burst: 5,
        request_read_ms: 300,
        preface_ms: 300,
        ..Limits::default()
    }
}

fn limits_off() -> Limits {
    Limits { credential_requests_per_s: 0, peer_refusals_per_s: 0, request_read_ms: 0, preface_ms: 10_000, ..Limits::default() }
}

fn get_voucher_message() -> Bytes {
    framed(&pb::GetVoucherRequest { voucher_id: "v-none".into() })
}

const GET_VOUCHER: &str = "/vouchsafe.v1.MerchantService/GetVoucher";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_front_door_limit_holds_and_is_off_in_its_control() {
    let _serial = SERIAL.lock().await;
    let on = start(low_limits()).await;
    let off = start(limits_off()).await;
    let code = |code: Option<i32>| code.map(tonic::Code::from);
    for fixture in [&on, &off] {
        let addr = fixture.engine.addr;
        // Checks before slots: an unknown id reads nothing from the stream. Control: a
        // merchant's GetVoucher of an unknown voucher does (the counter sees reads).
        let reads = fixture.log.subject_reads.load(Ordering::Relaxed);
        let mut stranger = h2_from(attacker(6), addr).await;
        let refused = call(&mut stranger, grpc_head(addr, GET_VOUCHER, &made_up_credential(1)), get_voucher_message()).await;
        assert_eq!(code(refused), Some(tonic::Code::Unauthenticated));
        assert_eq!(fixture.log.subject_reads.load(Ordering::Relaxed), reads, "an unknown id costs no stream read");
        let mut merchant = h2_from(attacker(7), addr).await;
        let answered = call(&mut merchant, grpc_head(addr, GET_VOUCHER, &merchant_metadata(&fixture.merchant_cred)), get_voucher_message()).await;
        assert_eq!(code(answered), Some(tonic::Code::NotFound));
        assert!(fixture.log.subject_reads.load(Ordering::Relaxed) > reads, "the control: a voucher look-up reads the stream");
    }

    // Per credential: 5 at once, then RESOURCE_EXHAUSTED. Control: the limit off.
    for (fixture, limited) in [(&on, true), (&off, false)] {
        let addr = fixture.engine.addr;
        let mut merchant = h2_from(attacker(8), addr).await;
        let mut codes = Vec::new();
        for _ in 0..12 {
            codes.push(code(call(&mut merchant, grpc_head(addr, GET_VOUCHER, &merchant_metadata(&fixture.merchant_cred)), get_voucher_message()).await));
        }
        let exhausted = codes.iter().filter(|code| **code == Some(tonic::Code::ResourceExhausted)).count();
        assert_eq!(exhausted > 0, limited, "{codes:?}");
        assert_eq!(fixture.limit_hits("credential_requests_per_s") > 0, limited);
    }

    // Per peer: 5 refusals at once, then RESOURCE_EXHAUSTED (counted, not logged); the same
    // peer's valid credential is served all the same, and another peer has its own budget.
    // Control: the limit off, every refusal is UNAUTHENTICATED.
    for (fixture, limited) in [(&on, true), (&off, false)] {
        let addr = fixture.engine.addr;
        let mut guesser = h2_from(attacker(9), addr).await;
        let mut codes = Vec::new();
        for index in 0..12 {
            codes.push(code(call(&mut guesser, grpc_head(addr, GET_VOUCHER, &made_up_credential(index)), get_voucher_message()).await));
        }
        assert_eq!(codes.iter().filter(|code| **code == Some(tonic::Code::Unauthenticated)).count(), if limited { 5 } else { 12 }, "{codes:?}");
        // (after the credential's own budget, spent above, has a token again)
        tokio::time::sleep(Duration::from_millis(400)).await;
        let valid = call(&mut guesser, grpc_head(addr, GET_VOUCHER, &merchant_metadata(&fixture.merchant_cred)), get_voucher_message()).await;
        assert_eq!(code(valid), Some(tonic::Code::NotFound), "a valid credential from the same peer is served");
        let mut other = h2_from(attacker(10), addr).await;
        let other_code = call(&mut other, grpc_head(addr, GET_VOUCHER, &made_up_credential(99)), get_voucher_message()).await;
        assert_eq!(code(other_code), Some(tonic::Code::Unauthenticated), "another peer's budget is its own");
    }

    // A body that never finishes: DEADLINE_EXCEEDED after request_read_ms, holding no slot
    // meanwhile. Control: without the deadline the request is still open a second later.
    for (fixture, limited) in [(&on, true), (&off, false)] {
        let addr = fixture.engine.addr;
        let client = h2_from(attacker(11), addr).await;
        let mut ready = client.ready().await.expect("ready");
        let (response, mut body) = ready.send_request(grpc_head(addr, GET_VOUCHER, &merchant_metadata(&fixture.merchant_cred)), false).expect("send");
        body.send_data(Bytes::from_static(&[0, 0]), false).expect("two bytes");
        let answered = tokio::time::timeout(Duration::from_millis(1_500), grpc_code(response)).await;
        match limited {
            true => assert_eq!(answered.ok().flatten().map(tonic::Code::from), Some(tonic::Code::DeadlineExceeded)),
            false => assert!(answered.is_err(), "the control: no deadline, no answer yet"),
        }
        assert_eq!(fixture.limit_hits("request_read_ms") > 0, limited);
    }

    // A connection that never speaks is closed after preface_ms. Control: a long wait.
    for (fixture, limited) in [(&on, true), (&off, false)] {
        use tokio::io::AsyncReadExt;
        let mut silent = tcp_from(attacker(12), fixture.engine.addr).await.expect("connect");
        // The server speaks first (its SETTINGS); then, for a silent client, the end.
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_millis(1_500), silent.read_to_end(&mut received)).await;
        match limited {
            true => assert!(read.is_ok(), "closed after preface_ms"),
            false => assert!(read.is_err(), "the control: still open"),
        }
        assert_eq!(fixture.limit_hits("preface_ms") > 0, limited);
    }
    on.engine.shutdown().await.expect("shutdown");
    off.engine.shutdown().await.expect("shutdown");
}

/// Connections per peer, at the engine: one past the cap is closed at accept and counted;
/// another peer still connects (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_past_its_connections_is_closed_at_accept_and_another_is_not() {
    let _serial = SERIAL.lock().await;
    use tokio::io::AsyncReadExt;
    let fixture = start(Limits { connections_per_peer_max: 3, ..Limits::default() }).await;
    let addr = fixture.engine.addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(h2_from(attacker(13), addr).await);
    }
    let mut fourth = tcp_from(attacker(13), addr).await.expect("the kernel accepts");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed at accept: {read:?}");
    assert!(fixture.limit_hits("connections_per_peer_max") >= 1);
    let mut other = h2_from(attacker(14), addr).await;
    let answered = call(&mut other, grpc_head(addr, GET_VOUCHER, &merchant_metadata(&fixture.merchant_cred)), get_voucher_message()).await;
    assert_eq!(answered.map(tonic::Code::from), Some(tonic::Code::NotFound), "the control: another peer is served");
    fixture.engine.shutdown().await.expect("shutdown");
}

/// A player that stops reading a preview loses its permit and slot after send_idle_ms.
/// Control: with a long idle bound the stream still holds its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_stops_reading_loses_its_slot_after_the_idle_bound() {
    let _serial = SERIAL.lock().await;
    const CLIP_BYTES: usize = 4 * 1024 * 1024;
    for (send_idle_ms, freed) in [(300, true), (60_000, false)] {
        let mut fixture = start(Limits::default()).await;
        let engine_public = gateways::common::keys::load_engine_public(&fixture.dir.path().join("keys")).expect("public key");
        let upload = client::Upload { preview_clip: (0..CLIP_BYTES as u32).map(|i| (i % 251) as u8).collect(), ..support::sale::upload("Clip") };
        let media = client::publish(&mut fixture.catalog, "pub-clip", &engine_public, upload).await.expect("publish").media_id;
        let node = fixture.start_node(NodeLimits { send_idle_ms, ..NodeLimits::default() }).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let preview = loop {
            let request = pb::PreviewRequest { request_id: "preview-1".into(), media_id: media.clone(), region: String::new() };
            match fixture.merchant.preview(request).await {
                Ok(preview) => break preview.into_inner(),
                Err(status) if status.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(status) => panic!("the preview: {status:?}"),
            }
        };
        let mut player = gateways::player::connect_node(node.endpoint()).await.expect("connect");
        let mut stream = player.play_preview(pb::PlayPreviewRequest { preview_id: preview.preview_id }).await.expect("plays").into_inner();
        stream.message().await.expect("a chunk").expect("the first chunk");
        // Then the player reads nothing more.
        let slot_held = Instant::now() + Duration::from_secs(5);
        while node.stats().slots_in_use == 0 && Instant::now() < slot_held {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(node.stats().slots_in_use == 0, freed, "send_idle_ms {send_idle_ms}: slots in use {}", node.stats().slots_in_use);
        drop(stream);
        node.shutdown().await;
        fixture.engine.shutdown().await.expect("shutdown");
    }
}
