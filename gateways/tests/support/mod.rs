//! What the gRPC front-door tests share (`grpc_bad_input.rs`, `grpc_fuzz.rs`): an engine
//! in this process on an embedded log, kept quiet (neither the sweeper nor the sealer
//! appends during a test, so every refusal is checked against an unchanged stream head),
//! and the front door's limits they probe. Each test binary uses its own part of it.
#![allow(dead_code)]

pub mod rpc;
pub mod sale;

use engine::crypto;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use gateways::common::client;
use gateways::common::cred::Credential;
use gateways::server::{self, EngineConfig, RunningEngine};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Long enough that neither the sweeper nor the sealer appends during a test.
pub const QUIET: Duration = Duration::from_secs(3600);
/// The front door's limits these tests probe, as the server defines them.
pub use gateways::server::front_door::{REQUEST_BYTES_MAX, UPLOAD_BYTES_MAX};
/// gRPC's frame header: compression flag and length, before each message.
pub const FRAME_HEADER_BYTES: usize = 5;

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub engine: RunningEngine,
    pub log: Arc<dyn EventLog>,
    pub operator: Credential,
    pub channel: Channel,
    pub engine_public: crypto::RsaPublic,
    /// The vkey of the engine's checkpoint key (`checkpoint.vkey`).
    pub checkpoint_vkey: String,
}

/// A quiet engine with fresh keys, its log, a channel to it and the operator's credential.
pub async fn start() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let config = EngineConfig { sweep_interval: QUIET, seal_interval: QUIET, ..EngineConfig::new(dir.path().to_path_buf(), keys.clone()) };
    assert_eq!(config.limits.request_bytes_max, REQUEST_BYTES_MAX, "the engine runs with the default limits these tests probe");
    assert_eq!(config.limits.upload_bytes_max, UPLOAD_BYTES_MAX, "the engine runs with the default limits these tests probe");
    let engine = server::start(config, Arc::clone(&log), listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let engine_public = gateways::common::keys::load_engine_public(&keys).expect("public key");
    let checkpoint_vkey = gateways::common::keys::load_checkpoint_vkey(&keys).expect("vkey loads").expect("keys init writes one").vkey();
    Fixture { _dir: dir, engine, log, operator, channel, engine_public, checkpoint_vkey }
}

impl Fixture {
    pub async fn head(&self) -> u64 {
        self.log.last_seq().await.expect("the stream head").0
    }

    /// Waits until the live projections (the allocator among them) have applied the stream.
    pub async fn settle(&self) {
        let head = self.log.last_seq().await.expect("the stream head");
        self.engine.state.live.caught_up(head).await;
    }
}
