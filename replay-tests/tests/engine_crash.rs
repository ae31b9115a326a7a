//! The engine killed with SIGKILL under load, again and again, on both backends (issue 8,
//! item 1). `vouchsafe serve` runs as a child process; concurrent workers buy
//! (Reserve → Authorize → IssueVoucher, as merchants) and redeem and download at in-process
//! delivery nodes (as players), and record every acknowledged answer. At random moments
//! (a seeded schedule) the engine is killed with SIGKILL and restarted on the same port,
//! data directory and stream; workers retry whatever failed with the SAME request id, which
//! must return the first answer and write nothing new. At the end, with the engine stopped:
//! every acknowledged command's event is in the stream exactly once, no voucher is
//! delivered twice, no write exists that no acknowledged request explains, the auditor's
//! replay passes (pinned to the newest witnessed seal), its state digest equals an
//! independent rebuild, and the royalty totals the last engine process served from its live
//! projections equal the rebuild's.
//!
//! Issue 25 item 6 (`loops.rs`): three engines on one stream of a 3-node R3 cluster, with
//! one media directory, workers and nodes spread over them; each round kills one engine at
//! random (the third round a cluster node); the same checks, every engine's live totals, and
//! no node ever with more slots in use than licensed at any sequence of the stream.
//!
//! Rounds: `VOUCHSAFE_CRASH_ROUNDS` (default 5, the CI size; 20 or more for the heavy run).
//! Seed: `VOUCHSAFE_CRASH_SEED` repeats a kill schedule (the interleaving still varies).
//!
//! The `vouchsafe` binary is taken from the target directory the test runs from
//! (`target/<profile>/vouchsafe`): `cargo test --workspace` builds it, because gateways'
//! own integration tests need it; `cargo build -p gateways --bin vouchsafe` builds it for a
//! run of this crate alone. The delivery nodes run in this process (`gateways::node`) and
//! outlive every engine restart: each new engine process knows no node until the agents
//! announce themselves again at their next heartbeat, which the loop waits for and times.

use engine::domain::Event;
use engine::domain::voucher::VoucherStatus;
use engine::ids::Seq;
use engine::log::EventLog;
use gateways::common::client::{self, MerchantClient, Upload};
use gateways::common::cred::Credential;
use gateways::node::{NodeArgs, RunningNode};
use gateways::player::{Passport, Purchase, RpcError};
use proto::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

/// Kill-restart rounds when `VOUCHSAFE_CRASH_ROUNDS` is not set (the CI size).
const ROUNDS_DEFAULT: u32 = 5;
/// Concurrent workers, each a merchant and its player.
const WORKERS: usize = 6;
/// Delivery nodes (in this process) and the slots each announces.
const NODES: usize = 2;
const NODE_SLOTS_MAX: u32 = 16;
/// Consumers (passports) the workers share.
const CONSUMERS: usize = 3;
/// Media published, and the bytes of each.
const MEDIA: usize = 2;
const MEDIA_BYTES: usize = 48 * 1024;
/// The engine lives this long (uniform, after the load resumed) before it is killed.
const KILL_AFTER_MS_MIN: u64 = 100;
const KILL_AFTER_MS_MAX: u64 = 1_500;
/// One in this many acknowledged steps is deliberately sent again with its request id.
const REPEAT_ONE_IN: u64 = 8;
/// Longest one step (a command, or a delivery) may keep failing before the test fails.
const STEP_DEADLINE_MS: u64 = 60_000;
/// Longest one attempt may take before it counts as failed (and is retried).
const ATTEMPT_TIMEOUT_MS: u64 = 15_000;
/// Pause after a failed attempt, doubled for each further failure of the same step up to
/// the largest.
const RETRY_PAUSE_MS: u64 = 50;
const RETRY_PAUSE_MS_MAX: u64 = 400;
/// Longest wait for a (re)started engine to serve.
const HEALTH_DEADLINE_MS: u64 = 60_000;
/// Longest wait, after a restart, for an IssueVoucher that names a node: the node agents
/// announce themselves again at their next heartbeat.
const NODES_BACK_DEADLINE_MS: u64 = gateways::node::HEARTBEAT_INTERVAL_MS + 20_000;
/// Longest wait for the load to acknowledge something after a restart.
const LOAD_RESUME_DEADLINE_MS: u64 = 60_000;
/// Longest wait for the workers to finish their last purchase after the last round.
const DRAIN_DEADLINE_MS: u64 = 120_000;
/// Longest wait for the engine to exit after SIGTERM.
const STOP_DEADLINE_MS: u64 = 30_000;
/// How often the sealer runs in the engine under test (so seals are cut by the kills too).
const SEAL_INTERVAL_MS: u64 = 400;

// ---- the schedule --------------------------------------------------------------------------

/// splitmix64: a seeded schedule without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("VOUCHSAFE_CRASH_SEED") {
        Ok(text) if !text.is_empty() => text.parse().unwrap_or_else(|_| panic!("VOUCHSAFE_CRASH_SEED={text:?} is not a u64")),
        _ => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

fn rounds() -> u32 {
    match std::env::var("VOUCHSAFE_CRASH_ROUNDS") {
        Ok(text) if !text.is_empty() => {
            let rounds: u32 = text.parse().unwrap_or_else(|_| panic!("VOUCHSAFE_CRASH_ROUNDS={text:?} is not a number"));
            assert!(rounds >= 1, "VOUCHSAFE_CRASH_ROUNDS must be at least 1");
            rounds
        }
        _ => ROUNDS_DEFAULT,
    }
}

// ---- the engine process --------------------------------------------------------------------

/// `target/<profile>/vouchsafe`, next to the `deps` directory this test runs from.
fn vouchsafe_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test runs from target/<profile>/deps");
    let binary = profile_dir.join(format!("vouchsafe{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p gateways --bin vouchsafe` (the README's `cargo test --workspace` builds it for gateways' own integration tests)",
        binary.display()
    );
    warn_if_stale(&binary);
    binary
}

/// Warns (does not fail: sources may be edited while a run is under way) when a source
/// file of a crate the binary is built from is newer than the binary.
fn warn_if_stale(binary: &Path) {
    fn newest(dir: &Path, newest_seen: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                newest(&path, newest_seen);
            } else if path.extension().is_some_and(|ext| ext == "rs" || ext == "proto")
                && let Ok(modified) = entry.metadata().and_then(|m| m.modified())
                && newest_seen.as_ref().is_none_or(|(seen, _)| modified > *seen)
            {
                *newest_seen = Some((modified, path));
            }
        }
    }
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else { return };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest_seen = None;
    for krate in ["proto", "engine/src", "projections/src", "gateways/src"] {
        newest(&workspace.join(krate), &mut newest_seen);
    }
    if let Some((modified, path)) = newest_seen
        && modified > built
    {
        eprintln!("warning: {} is older than {}; run `cargo build -p gateways --bin vouchsafe` to test the current sources", binary.display(), path.display());
    }
}

/// Where one run keeps its files. The directory is kept (and named) when the test fails.
struct RunDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl RunDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        Self { dir: Some(dir), path }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("engine_crash: the run's files (engine logs engine-<n>.log, keys, data) are kept in {}", kept.display());
        }
    }
}

/// The engine child process; killed (SIGKILL) and reaped on drop, so a failed assertion
/// never leaves it running.
struct EngineProcess {
    child: Option<Child>,
}

impl EngineProcess {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: `Child::kill` sends SIGKILL on Unix.
    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the engine");
            child.wait().expect("reap the engine");
        }
    }

    /// SIGTERM, then the exit status (a graceful stop exits 0).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", child.id());
        let deadline = Instant::now() + Duration::from_millis(STOP_DEADLINE_MS);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the engine") {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                panic!("the engine did not stop within {STOP_DEADLINE_MS} ms of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// How the engines are started, every time the same (port, keys, data directory, backend;
/// one media directory for all).
struct Launch {
    binary: PathBuf,
    root: PathBuf,
    /// One port per engine.
    ports: Vec<u16>,
    nats_url: Option<String>,
    /// `serve --replicas` (3 on the R3 cluster).
    replicas: usize,
    started: u32,
}

impl Launch {
    fn url(&self) -> String {
        self.url_of(0)
    }

    fn url_of(&self, engine: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[engine])
    }

    fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir_of(0)
    }

    fn data_dir_of(&self, engine: usize) -> PathBuf {
        if engine == 0 { self.root.join("engine") } else { self.root.join(format!("engine{engine}")) }
    }

    fn spawn(&mut self) -> EngineProcess {
        self.spawn_engine(0)
    }

    fn spawn_engine(&mut self, engine: usize) -> EngineProcess {
        self.started += 1;
        let log_path = self.root.join(format!("engine-{}.log", self.started));
        let log = std::fs::File::create(&log_path).expect("engine log file");
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.ports[engine]))
            .arg("--data-dir")
            .arg(self.data_dir_of(engine))
            .arg("--media-dir")
            .arg(self.root.join("media"))
            .arg("--keys")
            .arg(self.keys());
        if let Some(url) = &self.nats_url {
            command.arg("--nats-url").arg(url).arg("--replicas").arg(self.replicas.to_string());
        }
        for (name, _) in std::env::vars() {
            if name.starts_with("VOUCHSAFE_") {
                command.env_remove(name);
            }
        }
        command.env("VOUCHSAFE_SEAL_INTERVAL_MS", SEAL_INTERVAL_MS.to_string()).env("RUST_LOG", "info");
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("spawn vouchsafe serve");
        EngineProcess { child: Some(child) }
    }
}

/// Waits until the engine answers grpc.health.v1 Check; the time it took.
async fn wait_healthy(url: &str, engine: &mut EngineProcess) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(HEALTH_DEADLINE_MS);
    loop {
        if let Some(child) = engine.child.as_mut()
            && let Some(status) = child.try_wait().expect("poll the engine")
        {
            panic!("the engine exited while starting: {status:?} (see its engine-<n>.log)");
        }
        let attempt = async {
            let channel = client::connect(url, None).await?;
            client::check_serving(channel, url).await
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "the engine at {url} did not serve within {HEALTH_DEADLINE_MS} ms");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A channel that (re)connects on demand: it outlives engine restarts.
fn lazy_channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_string()).expect("engine url").connect_timeout(Duration::from_secs(2)).tcp_nodelay(true).connect_lazy()
}

// ---- what the load records -----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Step {
    Idle = 0,
    Reserve = 1,
    Authorize = 2,
    Issue = 3,
    Deliver = 4,
}

const STEPS: [Step; 5] = [Step::Idle, Step::Reserve, Step::Authorize, Step::Issue, Step::Deliver];

impl Step {
    fn from_u8(value: u8) -> Step {
        STEPS[usize::from(value)]
    }
}

/// One acknowledged answer.
#[derive(Clone, Debug)]
enum Ack {
    Reserved {
        voucher: String,
        request: String,
    },
    Authorized {
        voucher: String,
        request: String,
    },
    Issued {
        voucher: String,
        request: String,
        node: String,
    },
    /// Redeem answered OK (inside a delivery that completed).
    Redeemed {
        voucher: String,
        request: String,
    },
    /// Confirm answered OK for this media: the node's CompleteDelivery was acknowledged.
    Delivered {
        voucher: String,
        media: String,
    },
}

#[derive(Default)]
struct Stats {
    /// Failed attempts that were retried, per step.
    retries: [AtomicU64; 5],
    /// Steps that succeeded on a retry after at least one failure.
    recovered: AtomicU64,
    /// Deliberate repeats of an acknowledged request: each returned the first answer.
    repeats: AtomicU64,
    /// Failed attempts by step and code.
    errors: Mutex<BTreeMap<String, u64>>,
}

struct Load {
    /// The engines' URLs; worker `i` talks to `urls[i % urls.len()]`.
    urls: Vec<String>,
    media: Vec<String>,
    passports: Vec<Passport>,
    out_dir: PathBuf,
    ledger: Mutex<Vec<Ack>>,
    acks: AtomicU64,
    /// IssueVoucher answers that named a node's endpoint (the node had announced itself to
    /// the engine process that answered).
    endpoints: AtomicU64,
    stats: Stats,
    stop: AtomicBool,
    steps: Vec<AtomicU8>,
}

impl Load {
    fn ack(&self, ack: Ack) {
        self.ledger.lock().expect("ledger lock").push(ack);
        self.acks.fetch_add(1, Ordering::Relaxed);
    }

    fn set_step(&self, worker: usize, step: Step) {
        self.steps[worker].store(step as u8, Ordering::Relaxed);
    }

    fn failed(&self, step: Step, code: &str) {
        self.stats.retries[step as usize].fetch_add(1, Ordering::Relaxed);
        *self.stats.errors.lock().expect("errors lock").entry(format!("{step:?}/{code}")).or_default() += 1;
    }
}

/// Codes a crash window produces: the connection broke or was refused, the answer did not
/// come, the engine is (re)starting, or no node has announced itself to the new process yet.
fn transient(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted)
}

fn retry_pause(failures: u64) -> Duration {
    Duration::from_millis((RETRY_PAUSE_MS << failures.saturating_sub(1).min(8)).min(RETRY_PAUSE_MS_MAX))
}

/// Calls until OK, retrying transient failures with the same request (the caller's
/// closure builds the same message every time). A non-transient refusal fails the test.
async fn retry<T, F, Fut>(load: &Load, step: Step, call: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_millis(STEP_DEADLINE_MS);
    let mut failures = 0u64;
    loop {
        let outcome = match tokio::time::timeout(Duration::from_millis(ATTEMPT_TIMEOUT_MS), call()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer within the test's attempt timeout")),
        };
        match outcome {
            Ok(answer) => {
                if failures > 0 {
                    load.stats.recovered.fetch_add(1, Ordering::Relaxed);
                }
                return answer;
            }
            Err(status) => {
                assert!(transient(status.code()), "{step:?}: a refusal that no crash explains: {:?}: {}", status.code(), status.message());
                assert!(Instant::now() < deadline, "{step:?}: still failing after {STEP_DEADLINE_MS} ms: {:?}: {}", status.code(), status.message());
                load.failed(step, &format!("{:?}", status.code()));
                failures += 1;
                tokio::time::sleep(retry_pause(failures)).await;
            }
        }
    }
}

fn reserve_call(merchant: &MerchantClient, request: &pb::ReserveRequest) -> impl Future<Output = Result<pb::ReserveResponse, tonic::Status>> + use<> {
    let (mut merchant, request) = (merchant.clone(), request.clone());
    async move { merchant.reserve(request).await.map(tonic::Response::into_inner) }
}

fn authorize_call(merchant: &MerchantClient, request: &pb::AuthorizeRequest) -> impl Future<Output = Result<pb::AuthorizeResponse, tonic::Status>> + use<> {
    let (mut merchant, request) = (merchant.clone(), request.clone());
    async move { merchant.authorize(request).await.map(tonic::Response::into_inner) }
}

fn issue_call(merchant: &MerchantClient, request: &pb::IssueVoucherRequest) -> impl Future<Output = Result<pb::IssueVoucherResponse, tonic::Status>> + use<> {
    let (mut merchant, request) = (merchant.clone(), request.clone());
    async move { merchant.issue_voucher(request).await.map(tonic::Response::into_inner) }
}

/// IssueVoucher until it names the node's endpoint. A repeated IssueVoucher reaching an
/// engine process that the chosen node has not announced itself to yet is answered OK with
/// an empty endpoint; the merchant asks again with the same request id.
async fn issue_with_endpoint(
    load: &Load,
    merchant: &MerchantClient,
    request: &pb::IssueVoucherRequest,
    first: &mut Option<pb::IssueVoucherResponse>,
) -> pb::IssueVoucherResponse {
    let deadline = Instant::now() + Duration::from_millis(STEP_DEADLINE_MS);
    loop {
        let issued = retry(load, Step::Issue, || issue_call(merchant, request)).await;
        match first {
            None => {
                load.ack(Ack::Issued { voucher: issued.voucher_id.clone(), request: request.request_id.clone(), node: issued.node_id.clone() });
                *first = Some(issued.clone());
            }
            Some(first) => assert_eq!(
                (&issued.voucher_id, &issued.node_id, &issued.access_token, issued.access_expires_at_ms),
                (&first.voucher_id, &first.node_id, &first.access_token, first.access_expires_at_ms),
                "a retried IssueVoucher returns the first answer"
            ),
        }
        if !issued.node_endpoint.is_empty() {
            load.endpoints.fetch_add(1, Ordering::Relaxed);
            return issued;
        }
        assert!(Instant::now() < deadline, "IssueVoucher {} still names no endpoint for node {}", request.request_id, issued.node_id);
        load.failed(Step::Issue, "OkWithoutEndpoint");
        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS * 4)).await;
    }
}

/// One purchase, from Reserve to the confirmed download of every media.
async fn purchase(load: &Load, worker: usize, merchant: &MerchantClient, rng: &mut Rng, passport: &Passport, prefix: &str) {
    let media_ids = if rng.below(4) == 0 { load.media.clone() } else { vec![load.media[rng.below(load.media.len() as u64) as usize].clone()] };

    load.set_step(worker, Step::Reserve);
    let reserve = pb::ReserveRequest {
        request_id: format!("{prefix}-reserve"),
        media_ids: media_ids.clone(),
        rendition: "high".into(),
        ttl_ms: 15 * 60 * 1000,
        points_account: String::new(),
        payment_ref: format!("card-{prefix}"),
        spend_authorization: None,
        rental_ms: 0,
    };
    let reserved = retry(load, Step::Reserve, || reserve_call(merchant, &reserve)).await;
    let voucher = reserved.voucher_id.clone();
    load.ack(Ack::Reserved { voucher: voucher.clone(), request: reserve.request_id.clone() });
    if rng.below(REPEAT_ONE_IN) == 0 {
        let again = retry(load, Step::Reserve, || reserve_call(merchant, &reserve)).await;
        assert_eq!(
            (&again.voucher_id, again.expires_at_ms, again.price_minor),
            (&voucher, reserved.expires_at_ms, reserved.price_minor),
            "a repeated Reserve returns the first answer"
        );
        load.stats.repeats.fetch_add(1, Ordering::Relaxed);
    }

    load.set_step(worker, Step::Authorize);
    let authorize = pb::AuthorizeRequest { request_id: format!("{prefix}-authorize"), voucher_id: voucher.clone() };
    let authorized = retry(load, Step::Authorize, || authorize_call(merchant, &authorize)).await;
    load.ack(Ack::Authorized { voucher: voucher.clone(), request: authorize.request_id.clone() });
    if rng.below(REPEAT_ONE_IN) == 0 {
        let again = retry(load, Step::Authorize, || authorize_call(merchant, &authorize)).await;
        assert_eq!(
            (&again.receipt, again.receipt_generation),
            (&authorized.receipt, authorized.receipt_generation),
            "a repeated Authorize returns the first receipt"
        );
        load.stats.repeats.fetch_add(1, Ordering::Relaxed);
    }

    load.set_step(worker, Step::Issue);
    let issue = pb::IssueVoucherRequest { request_id: format!("{prefix}-issue"), voucher_id: voucher.clone(), region: String::new() };
    let mut first_issue = None;
    let mut issued = issue_with_endpoint(load, merchant, &issue, &mut first_issue).await;
    if rng.below(REPEAT_ONE_IN) == 0 {
        issued = issue_with_endpoint(load, merchant, &issue, &mut first_issue).await;
        load.stats.repeats.fetch_add(1, Ordering::Relaxed);
    }

    load.set_step(worker, Step::Deliver);
    let grant = pb::AccessGrant {
        voucher_id: voucher.clone(),
        media_ids: media_ids.clone(),
        access_expires_at_ms: issued.access_expires_at_ms,
        access_token: issued.access_token.clone(),
        token_key_id: issued.token_key_id,
    };
    let purchase = Purchase {
        node_endpoint: issued.node_endpoint.clone(),
        node_id: issued.node_id.clone(),
        grant,
        receipt: authorized.receipt.clone(),
        rental_until_ms: 0,
    };
    let redeem_request = format!("{prefix}-redeem");
    let deadline = Instant::now() + Duration::from_millis(STEP_DEADLINE_MS);
    let mut failures = 0u64;
    let copies = loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(ATTEMPT_TIMEOUT_MS),
            gateways::player::redeem_and_download(&purchase, passport, &redeem_request, &load.out_dir),
        )
        .await;
        let (code, message) = match attempt {
            Ok(Ok(copies)) => break copies,
            Ok(Err(error)) => match error.downcast_ref::<RpcError>() {
                Some(rpc) => (rpc.code, format!("{error:#}")),
                None => panic!("delivery of {voucher}: a failure that no crash explains: {error:#}"),
            },
            Err(_) => (Code::DeadlineExceeded, "no answer within the test's attempt timeout".to_string()),
        };
        assert!(transient(code), "delivery of {voucher}: a refusal that no crash explains: {message}");
        assert!(Instant::now() < deadline, "delivery of {voucher}: still failing after {STEP_DEADLINE_MS} ms: {message}");
        load.failed(Step::Deliver, &format!("{code:?}"));
        failures += 1;
        tokio::time::sleep(retry_pause(failures)).await;
    };
    if failures > 0 {
        load.stats.recovered.fetch_add(1, Ordering::Relaxed);
    }
    let delivered: BTreeSet<&String> = copies.iter().map(|copy| &copy.media_id).collect();
    assert_eq!(delivered, media_ids.iter().collect(), "{voucher}: every media of the grant is delivered");
    assert!(copies.iter().all(|copy| copy.decrypt_ok), "{voucher}: every delivered copy decrypts");
    // The node forwards the player's request id in its own namespace; that id is what the
    // stream records.
    load.ack(Ack::Redeemed { voucher: voucher.clone(), request: gateways::node::player_request_id(&voucher, &redeem_request) });
    for copy in copies {
        load.ack(Ack::Delivered { voucher: voucher.clone(), media: copy.media_id });
    }
    load.set_step(worker, Step::Idle);
}

async fn worker(load: Arc<Load>, index: usize, merchant: Credential, seed: u64) -> u64 {
    let merchant = client::merchant(lazy_channel(&load.urls[index % load.urls.len()]), merchant);
    let mut rng = Rng(seed);
    let passport = load.passports[index % load.passports.len()].clone();
    let mut purchases = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        purchase(&load, index, &merchant, &mut rng, &passport, &format!("w{index}-{purchases}")).await;
        purchases += 1;
    }
    purchases
}

// ---- setup ---------------------------------------------------------------------------------

struct Market {
    operator: Credential,
    merchants: Vec<Credential>,
    nodes: Vec<Credential>,
    media: Vec<String>,
    passports: Vec<Passport>,
}

async fn set_up_market(url: &str, keys: &Path) -> Market {
    let channel = client::connect(url, None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let mut catalog = client::catalog(channel, operator.clone());
    let engine_public = gateways::common::keys::load_engine_public(keys).expect("engine public key");
    let mut media = Vec::new();
    for index in 0..MEDIA {
        let upload = Upload {
            title: format!("Song {index}"),
            artist: format!("Artist {index}"),
            authors: vec!["Author".into()],
            length_ms: 120_000,
            price_minor: 100 + 50 * index as u64,
            currency: "EUR".into(),
            terms: client::standard_terms("label"),
            content: (0..MEDIA_BYTES).map(|i| ((i * (7 + index)) % 251) as u8).collect(),
            preview_clip: b"clip".to_vec(),
            image_descriptor: String::new(),
        };
        media.push(client::publish(&mut catalog, &format!("publish-{index}"), &engine_public, upload).await.expect("publish").media_id);
    }
    let mut merchants = Vec::new();
    for index in 0..WORKERS {
        let response = catalog
            .register_merchant(pb::RegisterMerchantRequest { request_id: format!("merchant-{index}"), name: format!("Shop {index}") })
            .await
            .expect("register merchant");
        merchants.push(client::credential_of(response.into_inner()).expect("merchant credential"));
    }
    let mut nodes = Vec::new();
    for index in 0..NODES {
        let request = pb::RegisterNodeCredentialRequest { request_id: format!("node-{index}"), region: "eu".into(), slots_max: NODE_SLOTS_MAX };
        let response = catalog.register_node_credential(request).await.expect("register node");
        nodes.push(client::credential_of(response.into_inner()).expect("node credential"));
    }
    let mut passports = Vec::new();
    for index in 0..CONSUMERS {
        let consumer = engine::ids::ConsumerId(format!("consumer-{index}"));
        passports.push(gateways::player::create_passport(&mut catalog, &format!("cert-{index}"), &consumer, &engine_public).await.expect("passport"));
    }
    Market { operator, merchants, nodes, media, passports }
}

async fn start_node(url: &str, credential: &Credential, data_dir: &Path) -> RunningNode {
    gateways::node::start(NodeArgs {
        connect: url.to_string(),
        cred: credential.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        slots_max: NODE_SLOTS_MAX,
        region: "eu".into(),
        data_dir: data_dir.to_path_buf(),
        cache_bytes_max: 16 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node starts")
}

// ---- the checks ----------------------------------------------------------------------------

/// One event on a voucher's subject: its name, its request id, and the media it delivered.
type VoucherEvent = (&'static str, String, Option<String>);

struct Figures {
    events: u64,
    vouchers: usize,
    delivered_media: usize,
    seals: u64,
    royalty_entries: u64,
}

/// Everything the stream says, read once after the last engine stopped.
/// The stream as read back once the last engine stopped.
struct StreamView {
    /// Every voucher's events, in stream order.
    by_voucher: BTreeMap<String, Vec<VoucherEvent>>,
    /// The node each voucher was issued to.
    issued_to: BTreeMap<String, String>,
    /// Each voucher's status in an independent rebuild.
    statuses: BTreeMap<String, VoucherStatus>,
}

/// The stream's view, and an independent rebuild of the projections, event by event.
async fn read_stream(log: &dyn EventLog, master: &engine::crypto::SecretKey, public: &engine::crypto::RsaPublic) -> (StreamView, projections::Projections) {
    let mut view = StreamView { by_voucher: BTreeMap::new(), issued_to: BTreeMap::new(), statuses: BTreeMap::new() };
    let mut rebuilt = projections::Projections::with_royalty_keys(master, Some(public.clone()));
    let mut event_ids = BTreeSet::new();
    let mut from = Seq(1);
    loop {
        let batch = log.read_from(from, 1000).await.expect("read the stream");
        let Some(last) = batch.last() else { break };
        from = Seq(last.seq.0 + 1);
        for stored in &batch {
            rebuilt.apply(stored).expect("every event applies");
            let recorded = engine::wire::decode(&stored.payload).expect("every event decodes");
            assert!(event_ids.insert(recorded.event_id), "event id {} is stored twice (seq {})", hex::encode(recorded.event_id), stored.seq.0);
            if let Some(voucher) = stored.subject.strip_prefix("vs.voucher.") {
                let media = match &recorded.event {
                    Event::Delivered { media_id, .. } => Some(media_id.0.clone()),
                    Event::VoucherIssued { node_id, .. } => {
                        view.issued_to.insert(voucher.to_string(), node_id.0.clone());
                        None
                    }
                    _ => None,
                };
                view.by_voucher.entry(voucher.to_string()).or_default().push((recorded.event.name(), recorded.request_id.clone(), media));
            }
        }
    }
    view.statuses = rebuilt.vouchers.vouchers.iter().map(|(voucher, row)| (voucher.0.clone(), row.status)).collect();
    (view, rebuilt)
}

/// What the ledger of acknowledged answers and the stream disagree on (empty when the
/// crash loop kept its promises).
fn violations(view: &StreamView, ledger: &[Ack]) -> Vec<String> {
    let mut found = Vec::new();
    let events_of = |voucher: &str| view.by_voucher.get(voucher).map(Vec::as_slice).unwrap_or_default();
    let count = |voucher: &str, name: &str, request: &str| events_of(voucher).iter().filter(|(n, r, _)| *n == name && r == request).count();
    // Every acknowledged command's event, exactly once.
    let mut acked_vouchers = BTreeSet::new();
    for ack in ledger {
        let (voucher, times) = match ack {
            Ack::Reserved { voucher, request } => (voucher, count(voucher, "Reserved", request)),
            Ack::Authorized { voucher, request } => (voucher, count(voucher, "Authorized", request)),
            Ack::Issued { voucher, request, node } => {
                if view.issued_to.get(voucher) != Some(node) {
                    found.push(format!("{voucher}: acknowledged as issued to {node}, the stream says {:?}", view.issued_to.get(voucher)));
                }
                (voucher, count(voucher, "VoucherIssued", request))
            }
            Ack::Redeemed { voucher, request } => (voucher, count(voucher, "RedemptionAccepted", request)),
            Ack::Delivered { voucher, media } => {
                (voucher, events_of(voucher).iter().filter(|(n, _, m)| *n == "Delivered" && m.as_deref() == Some(media.as_str())).count())
            }
        };
        if times != 1 {
            found.push(format!("{voucher}: the acknowledged {ack:?} is in the stream {times} times, not exactly once"));
        }
        acked_vouchers.insert(voucher.clone());
    }
    // No write that no acknowledged request explains, no voucher delivered twice, every
    // purchase Delivered.
    for (voucher, events) in &view.by_voucher {
        if !acked_vouchers.contains(voucher) {
            found.push(format!("{voucher} is in the stream but no acknowledged request created it: {events:?}"));
        }
        let mut delivered: BTreeMap<&Option<String>, u32> = BTreeMap::new();
        for (name, request, media) in events {
            if *name == "Delivered" {
                *delivered.entry(media).or_default() += 1;
            }
            if *name == "DeliveryFailed" {
                found.push(format!("{voucher}: a delivery failed ({request})"));
            }
        }
        if delivered.values().any(|times| *times > 1) {
            found.push(format!("{voucher}: delivered twice: {delivered:?}"));
        }
        for name in ["Reserved", "Authorized", "VoucherIssued"] {
            if events.iter().filter(|(n, _, _)| *n == name).count() > 1 {
                found.push(format!("{voucher}: more than one {name}: {events:?}"));
            }
        }
        let status = view.statuses.get(voucher);
        if status != Some(&VoucherStatus::Delivered) {
            found.push(format!("{voucher}: {status:?} after a rebuild, not Delivered"));
        }
    }
    found
}

/// Negative controls: the checks find a lost acknowledged write, an unexplained write and a
/// second delivery when they are planted.
fn violations_are_caught(view: &StreamView, ledger: &[Ack]) {
    let mut lost = ledger.to_vec();
    lost.push(Ack::Authorized { voucher: "v-never-written".into(), request: "w9-9-authorize".into() });
    assert!(violations(view, &lost).iter().any(|v| v.contains("v-never-written") && v.contains("0 times")), "a lost acknowledged write is caught");
    let first_reserve = ledger.iter().position(|ack| matches!(ack, Ack::Reserved { .. })).expect("something was reserved");
    let Ack::Reserved { voucher: unexplained, .. } = &ledger[first_reserve] else { unreachable!("found above") };
    let forgotten: Vec<Ack> = ledger.iter().filter(|ack| !matches!(ack, Ack::Reserved { voucher, .. } | Ack::Authorized { voucher, .. } | Ack::Issued { voucher, .. } | Ack::Redeemed { voucher, .. } | Ack::Delivered { voucher, .. } if voucher == unexplained)).cloned().collect();
    assert!(
        violations(view, &forgotten).iter().any(|v| v.contains(unexplained.as_str()) && v.contains("no acknowledged request")),
        "an unexplained write is caught"
    );
    let mut twice = StreamView { by_voucher: view.by_voucher.clone(), issued_to: view.issued_to.clone(), statuses: view.statuses.clone() };
    let (voucher, events) = twice.by_voucher.iter_mut().find(|(_, events)| events.iter().any(|(n, _, _)| *n == "Delivered")).expect("something was delivered");
    let delivered = events.iter().find(|(n, _, _)| *n == "Delivered").cloned().expect("found above");
    events.push(delivered);
    let voucher = voucher.clone();
    assert!(violations(&twice, ledger).iter().any(|v| v.contains(voucher.as_str()) && v.contains("delivered twice")), "a second delivery is caught");
}

async fn check_stream(
    log: &dyn EventLog,
    ledger: &[Ack],
    keys: &Path,
    pin: Option<[u8; 32]>,
    live_totals: &BTreeMap<(String, String), (u64, u64, u64)>,
    projections_dir: &Path,
) -> Figures {
    let master = gateways::common::keys::load_royalty_master(keys).expect("royalty master key");
    let public = gateways::common::keys::load_engine_public(keys).expect("engine public key");
    let (view, rebuilt) = read_stream(log, &master, &public).await;
    let found = violations(&view, ledger);
    assert!(found.is_empty(), "{} violations, first ones: {:#?}", found.len(), &found[..found.len().min(10)]);
    violations_are_caught(&view, ledger);
    for (voucher, events) in &view.by_voucher {
        let read = log.read_subject(&format!("vs.voucher.{voucher}")).await.expect("read a voucher's subject");
        assert_eq!(read.len(), events.len(), "{voucher}: read_subject and read_from agree");
    }

    // The auditor's replay passes, pinned to the newest witnessed seal, and reproduces the
    // independent rebuild; the live projections of the last engine process agree.
    let report = projections::audit::replay(log, &master, &public, pin, |_| {}).await.expect("audit replay reads the stream");
    assert!(report.ok(), "the audit fails: chain_ok {}, first bad {:?}", report.chain_ok, report.first_bad);
    assert_eq!(report.state_digest, hex::encode(rebuilt.digest()), "the audit's state digest is a clean rebuild's");
    let rebuilt_totals: BTreeMap<(String, String), (u64, u64, u64)> = rebuilt
        .royalty
        .totals
        .iter()
        .map(|((dimension, key), line)| ((format!("{dimension:?}"), key.clone()), (line.deliveries, line.previews, line.amount_minor)))
        .collect();
    if &rebuilt_totals != live_totals {
        explain_live_difference(log, projections_dir, &master, &public, &rebuilt).await;
    }
    assert_eq!(&rebuilt_totals, live_totals, "the royalty totals the engine served from its live projections equal a clean rebuild's");

    Figures {
        events: report.events,
        vouchers: view.by_voucher.len(),
        delivered_media: ledger.iter().filter(|ack| matches!(ack, Ack::Delivered { .. })).count(),
        seals: report.seals_verified,
        royalty_entries: report.royalty_entries,
    }
}

/// Before a failed comparison of live and rebuilt totals: which usages the last engine's
/// projection store counted that a rebuild does not (and the reverse), by source sequence,
/// with what the stream holds at each of those sequences.
async fn explain_live_difference(
    log: &dyn EventLog,
    projections_dir: &Path,
    master: &engine::crypto::SecretKey,
    public: &engine::crypto::RsaPublic,
    rebuilt: &projections::Projections,
) {
    let opened = projections::Live::open(projections_dir, Some(master), Some(public.clone()));
    let Ok((stored, _)) = opened else {
        eprintln!("engine_crash: the engine's projection store in {} does not open: {:?}", projections_dir.display(), opened.err());
        return;
    };
    let (stored_seqs, stored_last) = stored.read(|p| (p.royalty.entries.iter().map(|entry| entry.source_seq).collect::<Vec<_>>(), p.last_seq));
    let rebuilt_seqs: std::collections::BTreeSet<u64> = rebuilt.royalty.entries.iter().map(|entry| entry.source_seq).collect();
    let stored_set: std::collections::BTreeSet<u64> = stored_seqs.iter().copied().collect();
    eprintln!(
        "engine_crash: the engine's projection store: checkpoint {stored_last}, {} usages; rebuild: last {}, {} usages",
        stored_seqs.len(),
        rebuilt.last_seq,
        rebuilt_seqs.len()
    );
    for (label, seqs) in [("only in the engine's store", stored_set.difference(&rebuilt_seqs)), ("only in the rebuild", rebuilt_seqs.difference(&stored_set))] {
        for seq in seqs.take(20) {
            let at = log.read_from(Seq(*seq), 1).await.ok().and_then(|events| events.into_iter().next());
            let described = at.map(|event| match engine::wire::decode(&event.payload) {
                Ok(recorded) => format!("{} {:?} request {}", event.subject, engine::domain::Event::name(&recorded.event), recorded.request_id),
                Err(error) => format!("{} undecodable: {error}", event.subject),
            });
            eprintln!("engine_crash:   usage at seq {seq} {label}; the stream holds there: {described:?}");
        }
    }
}

/// The royalty totals from the engine's live projections, once they have applied the
/// whole stream (the engine's `projection_lag` is 0: after the last kill its follower may
/// still be recreating its consumer) and two reads in a row agree.
async fn live_totals(url: &str, operator: &Credential) -> BTreeMap<(String, String), (u64, u64, u64)> {
    let channel = client::connect(url, None).await.expect("connect");
    let mut audit = client::audit(channel.clone(), operator.clone());
    let mut admin = client::admin(channel, operator.clone());
    let mut previous = None;
    for _ in 0..200 {
        let lag = admin.get_stats(pb::GetStatsRequest {}).await.map(|stats| stats.into_inner().projection_lag);
        if lag.as_ref().is_ok_and(|lag| *lag == 0) {
            let lines = audit.totals(pb::TotalsRequest {}).await.expect("Totals").into_inner().lines;
            let totals: BTreeMap<_, _> =
                lines.into_iter().map(|line| ((line.dimension, line.key), (line.deliveries, line.previews, line.amount_minor))).collect();
            if previous.as_ref() == Some(&totals) {
                return totals;
            }
            previous = Some(totals);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the engine's live projections did not catch up with the stream and settle within 60 s");
}

/// Waits until every replica of the stream is current (a cluster node restarted in the last
/// round may still be catching up, and a leader elected a moment ago may still be applying
/// what was committed): the checks must read the whole stream.
async fn settled_cluster(url: &str) {
    let addresses: Vec<async_nats::ServerAddr> = url.split(',').map(|address| address.parse().expect("a server address")).collect();
    let client = async_nats::connect(addresses).await.expect("connect to the cluster");
    let context = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = match context.get_stream(engine::log::jetstream::DEFAULT_STREAM).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) => info.cluster.as_ref().is_some_and(|cluster| {
                    cluster.leader.is_some() && cluster.replicas.iter().all(|peer| peer.current && !peer.offline && peer.lag.unwrap_or(0) == 0)
                }),
                Err(_) => false,
            },
            Err(_) => false,
        };
        if current {
            return;
        }
        assert!(Instant::now() < deadline, "the stream's replicas did not all become current within 60 s of the last restart");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---- the loop ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    JetStream,
}

/// What is killed each round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// The engine process (kill -9, restarted on the same port and data).
    Engine,
    /// One of three engines on one stream of a 3-node cluster (replicas 3), chosen at
    /// random each round, and once a cluster node (issue 25 item 6).
    OneOfEngines,
    /// The nats-server under the running engine (kill -9, restarted on the same port and
    /// store; `sync_interval: always`): the engine stays up and its client reconnects.
    Nats,
    /// One node of a 3-node cluster holding the stream with replicas 3 (each round the
    /// next node, leader or not), restarted on the same ports and store.
    ClusterNode,
}

#[path = "engine_crash/loops.rs"]
mod loops;
