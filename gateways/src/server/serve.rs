//! `vouchsafe serve`: the engine as a long-running process. Settings come from, in order
//! of precedence: command-line flags, `VOUCHSAFE_*` environment variables, a TOML config
//! file (`--config FILE`), then defaults. Key material is never a setting: only the key
//! directory's path is. Stops gracefully on SIGTERM or ctrl-c (`server::RunningEngine::shutdown`).

use crate::server::front_door::Limits;
use crate::server::{EngineConfig, TlsFiles};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The config file's shape; every field is optional.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub console_listen: Option<SocketAddr>,
    pub tlog_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub media_dir: Option<PathBuf>,
    pub keys: Option<PathBuf>,
    pub nats_url: Option<String>,
    pub stream: Option<String>,
    /// Stream replicas when the engine creates the stream (JetStream only; default 1).
    pub replicas: Option<usize>,
    /// Group commit: appends waiting together go as one atomic batch (JetStream only; for
    /// a server with `sync_interval: always`; default false).
    pub group_commit: Option<bool>,
    /// "text" (default) or "json".
    pub log_format: Option<String>,
    pub access_ttl_ms: Option<u64>,
    pub sweep_interval_ms: Option<u64>,
    pub seal_interval_ms: Option<u64>,
    pub seal_entries_min: Option<u64>,
    pub request_bytes_max: Option<usize>,
    pub upload_bytes_max: Option<usize>,
    pub requests_in_flight_max: Option<usize>,
    pub assignment_feeds_max: Option<usize>,
    pub request_read_ms: Option<u64>,
    pub upload_read_ms: Option<u64>,
    pub credential_requests_per_s: Option<u32>,
    pub credential_requests_burst: Option<u32>,
    pub peer_refusals_per_s: Option<u32>,
    pub peer_refusals_burst: Option<u32>,
    pub connections_per_peer_max: Option<usize>,
    pub connections_max: Option<usize>,
    pub preface_ms: Option<u64>,
    pub tls: Option<TlsSection>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The flags of `serve` (each overrides the environment and the file).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// gRPC address to bind, exactly (default 127.0.0.1:50051).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Plain-HTTP address for Prometheus `/metrics` (off unless given).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Plain-HTTP address for the read-only web console (off unless given; loopback unless
    /// --insecure-plaintext: sign-in sends a credential).
    #[arg(long)]
    pub console_listen: Option<SocketAddr>,
    /// Plain-HTTP address serving the royalty log as C2SP tlog-tiles, read only (off unless
    /// given; loopback unless --insecure-plaintext).
    #[arg(long)]
    pub tlog_listen: Option<SocketAddr>,
    /// A C2SP tlog-witness to send each checkpoint to, as `URL=VKEY` (its add-checkpoint
    /// prefix, http://…, and its cosignature vkey); repeatable. The checkpoint served on
    /// --tlog-listen is then the newest cosigned by --witness-quorum of them.
    #[arg(long = "witness", value_parser = parse_witness)]
    pub witnesses: Vec<(String, String)>,
    /// How many of the --witness witnesses must cosign a checkpoint before it is published
    /// (default: all of them).
    #[arg(long, requires = "witnesses")]
    pub witness_quorum: Option<usize>,
    /// Key directory from `keys init` (default <data-dir>/keys).
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Local state and, without --nats-url, the embedded log (default ./vouchsafe-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where published media files live (default <data-dir>/media): engines sharing a
    /// stream share one media directory (a shared volume), so every node can fetch every
    /// media from the engine it talks to.
    #[arg(long)]
    pub media_dir: Option<PathBuf>,
    /// Use the JetStream log at this URL.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// The JetStream stream name (default VOUCHSAFE).
    #[arg(long)]
    pub stream: Option<String>,
    /// Stream replicas when the engine creates the JetStream stream (3 on a 3-node cluster).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Group commit on JetStream: appends waiting together go as one atomic batch, made
    /// durable by one fsync (nats-server >= 2.15 with sync_interval: always).
    #[arg(long)]
    pub group_commit: bool,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Serve plain text on a non-loopback address (TLS terminated in front of the engine),
    /// or /metrics (always plain HTTP) on a non-loopback address.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// PEM certificate (leaf first, then intermediates): serve gRPC over TLS. With
    /// --tls-key, replaces the config file's [tls] section.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM of the CA whose client certificates the engine requires (mTLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Settings after merging flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub console_listen: Option<SocketAddr>,
    pub tlog_listen: Option<SocketAddr>,
    pub witnessing: Option<crate::server::tlog::Witnessing>,
    pub backend: crate::common::backend::BackendArgs,
    pub log_json: bool,
    pub engine: EngineConfig,
    pub replicas: usize,
    pub group_commit: bool,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn env_parsed<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    env(name).map(|value| value.parse::<T>().map_err(|e| anyhow::anyhow!("{name}={value:?}: {e}"))).transpose()
}

pub fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid vouchsafe config", path.display()))
}

/// Merges the sources. Precedence: flag > VOUCHSAFE_* environment > file > default.
pub fn settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    let listen = match args.listen {
        Some(listen) => listen,
        None => match env_parsed::<SocketAddr>("VOUCHSAFE_LISTEN")? {
            Some(listen) => listen,
            None => file.listen.unwrap_or(DEFAULT_LISTEN.parse().context("default listen address")?),
        },
    };
    let metrics_listen = args.metrics_listen.or(env_parsed("VOUCHSAFE_METRICS_LISTEN")?).or(file.metrics_listen);
    let console_listen = args.console_listen.or(env_parsed("VOUCHSAFE_CONSOLE_LISTEN")?).or(file.console_listen);
    let tlog_listen = args.tlog_listen.or(env_parsed("VOUCHSAFE_TLOG_LISTEN")?).or(file.tlog_listen);
    let data_dir =
        args.data_dir.clone().or(env("VOUCHSAFE_DATA_DIR").map(PathBuf::from)).or(file.data_dir).unwrap_or_else(|| PathBuf::from("./vouchsafe-data"));
    let keys = args.keys.clone().or(env("VOUCHSAFE_KEYS").map(PathBuf::from)).or(file.keys).unwrap_or_else(|| data_dir.join("keys"));
    let nats_url = args.nats_url.clone().or(env("VOUCHSAFE_NATS_URL")).or(file.nats_url);
    let stream = args.stream.clone().or(env("VOUCHSAFE_STREAM")).or(file.stream).unwrap_or_else(|| engine::log::jetstream::DEFAULT_STREAM.to_string());
    let replicas = match args.replicas {
        Some(replicas) => replicas,
        None => env_parsed::<usize>("VOUCHSAFE_REPLICAS")?.or(file.replicas).unwrap_or(1),
    };
    anyhow::ensure!((1..=5).contains(&replicas), "replicas must be 1..=5");
    let group_commit = args.group_commit || env_parsed::<bool>("VOUCHSAFE_GROUP_COMMIT")?.or(file.group_commit).unwrap_or(false);
    let log_format = if args.log_json { Some("json".to_string()) } else { env("VOUCHSAFE_LOG_FORMAT").or(file.log_format) };
    let log_json = match log_format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => anyhow::bail!("log_format must be \"text\" or \"json\", not {other:?}"),
    };
    let defaults = Limits::default();
    let limits = Limits {
        request_bytes_max: env_parsed("VOUCHSAFE_REQUEST_BYTES_MAX")?.or(file.request_bytes_max).unwrap_or(defaults.request_bytes_max),
        upload_bytes_max: env_parsed("VOUCHSAFE_UPLOAD_BYTES_MAX")?.or(file.upload_bytes_max).unwrap_or(defaults.upload_bytes_max),
        requests_in_flight_max: env_parsed("VOUCHSAFE_REQUESTS_IN_FLIGHT_MAX")?.or(file.requests_in_flight_max).unwrap_or(defaults.requests_in_flight_max),
        assignment_feeds_max: env_parsed("VOUCHSAFE_ASSIGNMENT_FEEDS_MAX")?.or(file.assignment_feeds_max).unwrap_or(defaults.assignment_feeds_max),
        request_read_ms: env_parsed("VOUCHSAFE_REQUEST_READ_MS")?.or(file.request_read_ms).unwrap_or(defaults.request_read_ms),
        upload_read_ms: env_parsed("VOUCHSAFE_UPLOAD_READ_MS")?.or(file.upload_read_ms).unwrap_or(defaults.upload_read_ms),
        credential_requests_per_s: env_parsed("VOUCHSAFE_CREDENTIAL_REQUESTS_PER_S")?
            .or(file.credential_requests_per_s)
            .unwrap_or(defaults.credential_requests_per_s),
        credential_requests_burst: env_parsed("VOUCHSAFE_CREDENTIAL_REQUESTS_BURST")?
            .or(file.credential_requests_burst)
            .unwrap_or(defaults.credential_requests_burst),
        peer_refusals_per_s: env_parsed("VOUCHSAFE_PEER_REFUSALS_PER_S")?.or(file.peer_refusals_per_s).unwrap_or(defaults.peer_refusals_per_s),
        peer_refusals_burst: env_parsed("VOUCHSAFE_PEER_REFUSALS_BURST")?.or(file.peer_refusals_burst).unwrap_or(defaults.peer_refusals_burst),
        connections_per_peer_max: env_parsed("VOUCHSAFE_CONNECTIONS_PER_PEER_MAX")?
            .or(file.connections_per_peer_max)
            .unwrap_or(defaults.connections_per_peer_max),
        connections_max: env_parsed("VOUCHSAFE_CONNECTIONS_MAX")?.or(file.connections_max).unwrap_or(defaults.connections_max),
        preface_ms: env_parsed("VOUCHSAFE_PREFACE_MS")?.or(file.preface_ms).unwrap_or(defaults.preface_ms),
    };
    anyhow::ensure!(limits.connections_per_peer_max >= 1, "connections_per_peer_max must be at least 1");
    anyhow::ensure!(limits.connections_max >= limits.connections_per_peer_max, "connections_max must be at least connections_per_peer_max");
    anyhow::ensure!(limits.preface_ms >= 100, "preface_ms must be at least 100");
    anyhow::ensure!(limits.assignment_feeds_max >= 1, "assignment_feeds_max must be at least 1");
    anyhow::ensure!(limits.request_bytes_max >= 1024, "request_bytes_max must be at least 1024");
    anyhow::ensure!(limits.requests_in_flight_max >= 1, "requests_in_flight_max must be at least 1");
    let mut engine = EngineConfig::new(data_dir.clone(), keys);
    engine.projections_dir = Some(data_dir.join("projections"));
    engine.media_dir = args.media_dir.clone().or(env("VOUCHSAFE_MEDIA_DIR").map(PathBuf::from)).or(file.media_dir);
    engine.drain_grace = crate::server::DRAIN_GRACE_DEFAULT;
    engine.limits = limits;
    if let Some(ttl) = env_parsed("VOUCHSAFE_ACCESS_TTL_MS")?.or(file.access_ttl_ms) {
        // As the audited `access.ttl_ms`: not below the shortest heartbeat timeout, or
        // vouchers on a node gone silent lapse before they can move (engine::domain::config).
        let floor = engine::domain::config::HEARTBEAT_TIMEOUT_MS_MIN;
        anyhow::ensure!(ttl >= floor, "access_ttl_ms must be at least {floor} (the shortest node.heartbeat_timeout_ms)");
        engine.access_ttl_ms = ttl;
    }
    if let Some(ms) = env_parsed::<u64>("VOUCHSAFE_SWEEP_INTERVAL_MS")?.or(file.sweep_interval_ms) {
        engine.sweep_interval = Duration::from_millis(ms.max(10));
    }
    if let Some(ms) = env_parsed::<u64>("VOUCHSAFE_SEAL_INTERVAL_MS")?.or(file.seal_interval_ms) {
        engine.seal_interval = Duration::from_millis(ms.max(10));
    }
    if let Some(entries) = env_parsed("VOUCHSAFE_SEAL_ENTRIES_MIN")?.or(file.seal_entries_min) {
        engine.seal_entries_min = entries;
    }
    engine.tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: args.tls_client_ca.clone() }),
        _ => file.tls.map(|tls| TlsFiles { cert: tls.cert, key: tls.key, client_ca: tls.client_ca }),
    };
    let backend = crate::common::backend::BackendArgs { data_dir, nats_url, stream };
    crate::common::plaintext::check_listen(listen, engine.tls.is_some(), args.insecure_plaintext, "gRPC")?;
    if let Some(metrics) = metrics_listen {
        // /metrics is always plain HTTP: on a non-loopback address only when asked.
        crate::common::plaintext::check_listen(metrics, false, args.insecure_plaintext, "/metrics")?;
    }
    if let Some(console) = console_listen {
        // The console is plain HTTP and its sign-in carries a credential's secret.
        crate::common::plaintext::check_listen(console, false, args.insecure_plaintext, "the console")?;
    }
    if let Some(tlog) = tlog_listen {
        // Public data, but the rule is one: plain text off loopback only when asked.
        crate::common::plaintext::check_listen(tlog, false, args.insecure_plaintext, "the tiles")?;
    }
    let witnessing = match args.witnesses.as_slice() {
        [] => None,
        witnesses => {
            let witnesses = witnesses
                .iter()
                .map(|(url, vkey)| Ok((url.clone(), engine::cosignature::CosignatureVerifier::from_vkey(vkey)?)))
                .collect::<Result<Vec<_>, engine::note::NoteError>>()?;
            let quorum = args.witness_quorum.unwrap_or(witnesses.len());
            if quorum == 0 || quorum > witnesses.len() {
                anyhow::bail!("--witness-quorum {quorum}: between 1 and the {} witnesses given", witnesses.len());
            }
            Some(crate::server::tlog::Witnessing { witnesses, quorum })
        }
    };
    Ok(Settings { listen, metrics_listen, console_listen, tlog_listen, witnessing, backend, log_json, engine, replicas, group_commit })
}

/// `--witness URL=VKEY`: an http:// prefix and a cosignature vkey (checked here).
pub fn parse_witness(value: &str) -> Result<(String, String), String> {
    let (url, vkey) = value.split_once('=').ok_or("expected URL=VKEY")?;
    if !url.starts_with("http://") {
        return Err(format!("{url}: a witness is reached over http:// (TLS: a proxy of your own)"));
    }
    engine::cosignature::CosignatureVerifier::from_vkey(vkey).map_err(|e| format!("{url}: {e}"))?;
    Ok((url.to_string(), vkey.to_string()))
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn terminate_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// How long a start waits for a JetStream that does not answer yet (leaders being elected).
pub const START_WAIT: Duration = Duration::from_secs(60);

/// A failure to open the log that waiting can cure: nothing answered in time, or a
/// cluster still forming has too few peers up to place a replicated stream (a cluster
/// that never gets them fails after `START_WAIT`).
fn transient(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}");
    ["timed out", "no responders", "deadline has elapsed", "JetStream not enabled", "no stream found", "no suitable peers for placement"]
        .iter()
        .any(|cause| text.contains(cause))
}

/// Runs the engine until `shutdown` resolves, then stops gracefully.
pub async fn run(settings: Settings, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.backend.data_dir).with_context(|| format!("cannot create {}", settings.backend.data_dir.display()))?;
    let keys_dir = &settings.engine.keys_dir;
    if crate::common::keys::is_empty(keys_dir) {
        anyhow::bail!("no keys in {}; run `vouchsafe keys init --out {}` first", keys_dir.display(), keys_dir.display());
    }
    if keys_dir.join(crate::common::keys::ROYALTY_MASTER).exists() {
        tracing::warn!(
            keys = %keys_dir.display(),
            "royalty-master.key is on the engine host: whoever takes this host can derive every past royalty entry key; once this engine's projection store holds its chain key, move the file to the auditor (README, Forward security)"
        );
    }
    let options = engine::log::jetstream::StreamOptions { replicas: settings.replicas, group_commit: settings.group_commit };
    // A cluster electing its streams' leaders (a node just restarted) answers nothing for a
    // while: a start waits for it, within `START_WAIT`, rather than exiting.
    let waiting = std::time::Instant::now();
    let (log, feed) = loop {
        match settings.backend.open_with_feed_options(options).await {
            Ok(opened) => break opened,
            Err(error) if transient(&error) && waiting.elapsed() < START_WAIT => {
                tracing::warn!(error = format!("{error:#}"), "JetStream is not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    };
    let listener = tokio::net::TcpListener::bind(settings.listen).await.with_context(|| format!("cannot listen on {}", settings.listen))?;
    let mut running = crate::server::start(settings.engine.clone(), log, listener).await?;
    if let Some(feed) = feed {
        // On JetStream the node feeds (vsn.<node>) are filled too, for NATS-native nodes.
        running.dispatch_to(feed);
    }
    eprintln!("vouchsafe engine serving gRPC on {} ({} backend)", running.url(), settings.backend.name());
    if let Some(addr) = settings.console_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for the console"))?;
        eprintln!("console on http://{}/", listener.local_addr()?);
        running.serve_console(listener);
    }
    let tlog_listener = match settings.tlog_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for the tiles"))?;
            eprintln!("tiles on http://{}/checkpoint", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    if tlog_listener.is_some() || settings.witnessing.is_some() {
        running.publish_tlog(tlog_listener, settings.witnessing.clone());
    }
    let metrics_task = match settings.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for metrics"))?;
            eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
            let state = Arc::clone(&running.state);
            let refresh: Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync> = Arc::new(move || {
                let state = Arc::clone(&state);
                Box::pin(async move { state.refresh_metrics().await })
            });
            let mut stopping = running.stopping();
            Some(tokio::spawn(crate::server::metrics::serve(listener, Arc::clone(&running.state.metrics), refresh, async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            })))
        }
        None => None,
    };
    shutdown.await;
    eprintln!("shutting down: finishing in-flight requests");
    running.shutdown().await?;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    eprintln!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a start waits out: a cluster forming (the first start of an R3 market once
    /// failed on this, `engine_crash`), or electing; not a stream configured otherwise.
    #[test]
    fn a_start_waits_out_a_forming_cluster_but_not_a_conflicting_stream() {
        let forming = anyhow::anyhow!(
            "cannot create stream VOUCHSAFE_NODES on vsn.>: jetstream error: no suitable peers for placement, peer offline (code 400, error code 10005)"
        );
        assert!(transient(&forming));
        assert!(transient(&anyhow::anyhow!("reading the stream info: timed out")));
        let conflict = anyhow::anyhow!("stream VOUCHSAFE exists with 1 replicas, 3 asked: refusing to change it");
        assert!(!transient(&conflict));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("engine.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:6000\"\ndata_dir = \"/tmp/vs\"\nseal_interval_ms = 500\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n")
            .expect("write");
        let from_file = settings(&ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect("settings");
        assert_eq!(from_file.listen.port(), 6000);
        assert_eq!(from_file.backend.data_dir, PathBuf::from("/tmp/vs"));
        assert_eq!(from_file.engine.keys_dir, PathBuf::from("/tmp/vs/keys"));
        assert_eq!(from_file.engine.seal_interval, Duration::from_millis(500));
        assert!(from_file.engine.tls.is_some());
        let flagged =
            settings(&ServeArgs { config: Some(path), listen: Some("127.0.0.1:7000".parse().expect("addr")), ..ServeArgs::default() }).expect("settings");
        assert_eq!(flagged.listen.port(), 7000);
        let defaults = settings(&ServeArgs::default()).expect("settings");
        assert_eq!(defaults.listen.to_string(), DEFAULT_LISTEN);
        assert!(defaults.engine.tls.is_none());
    }

    /// `--tls-cert`/`--tls-key` replace the file's [tls] section, and TLS from the flags
    /// lets gRPC listen off loopback. Control: the same address without them is refused.
    #[test]
    fn tls_flags_beat_the_file_and_allow_a_public_listen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("engine.toml");
        std::fs::write(&path, "[tls]\ncert = \"file.pem\"\nkey = \"file.key\"\nclient_ca = \"file-ca.pem\"\n").expect("write");
        let flagged = ServeArgs { config: Some(path), tls_cert: Some("flag.pem".into()), tls_key: Some("flag.key".into()), ..ServeArgs::default() };
        let tls = settings(&flagged).expect("settings").engine.tls.expect("TLS");
        assert_eq!((tls.cert, tls.key, tls.client_ca), (PathBuf::from("flag.pem"), PathBuf::from("flag.key"), None));
        let public = ServeArgs { listen: Some("0.0.0.0:50051".parse().expect("addr")), ..ServeArgs::default() };
        assert!(settings(&public).is_err(), "plain text on 0.0.0.0");
        let with_tls = ServeArgs { tls_cert: Some("flag.pem".into()), tls_key: Some("flag.key".into()), tls_client_ca: Some("ca.pem".into()), ..public };
        let tls = settings(&with_tls).expect("TLS on 0.0.0.0").engine.tls.expect("TLS");
        assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));
    }

    /// The serve setting of the access window keeps the audited key's floor: a window under
    /// the shortest heartbeat timeout is refused naming it. Control: the floor itself is taken.
    #[test]
    fn an_access_window_under_the_shortest_heartbeat_timeout_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("engine.toml");
        std::fs::write(&path, "access_ttl_ms = 1000\n").expect("write");
        let error = settings(&ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).expect_err("a one-second window");
        assert!(format!("{error:#}").contains("at least 10000 (the shortest node.heartbeat_timeout_ms)"), "{error:#}");
        std::fs::write(&path, "access_ttl_ms = 10000\n").expect("write");
        let taken = settings(&ServeArgs { config: Some(path), ..ServeArgs::default() }).expect("the floor");
        assert_eq!(taken.engine.access_ttl_ms, 10_000);
    }

    /// `--witness URL=VKEY` takes an http:// prefix and a cosignature vkey; the quorum is
    /// between 1 and the witnesses given (default all). Controls: a note vkey, https, k > n.
    #[test]
    fn witnesses_and_their_quorum_are_checked() {
        let witness = engine::cosignature::Cosigner::generate("witness.test/w1").expect("key").verifier().vkey();
        let log = engine::note::NoteSigner::generate("witness.test/w1").expect("key").verifier().vkey();
        let parsed = parse_witness(&format!("http://127.0.0.1:8082={witness}")).expect("parses");
        assert!(parse_witness(&format!("http://127.0.0.1:8082={log}")).is_err(), "a note key is no witness key");
        assert!(parse_witness(&format!("https://w.example={witness}")).is_err());
        let args = ServeArgs { witnesses: vec![parsed], ..Default::default() };
        assert_eq!(settings(&args).expect("settings").witnessing.expect("witnesses").quorum, 1);
        assert!(settings(&ServeArgs { witness_quorum: Some(2), ..args }).is_err(), "two of one");
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("engine.toml");
        std::fs::write(&path, "listn = \"127.0.0.1:6000\"\n").expect("write");
        let error = settings(&ServeArgs { config: Some(path), ..ServeArgs::default() }).expect_err("typo refused");
        assert!(format!("{error:#}").contains("listn"), "{error:#}");
    }

    /// `serve` on a non-loopback address without TLS is refused unless asked (plain text
    /// would carry credentials, receipts and proofs where others can listen), and so is a
    /// non-loopback /metrics. Controls: loopback, and the explicit flag.
    #[test]
    fn plain_text_off_loopback_is_refused_unless_asked() {
        let public = ServeArgs { listen: Some("0.0.0.0:50051".parse().expect("addr")), ..Default::default() };
        let refused = settings(&public).expect_err("plain text on 0.0.0.0");
        assert!(format!("{refused:#}").contains("--insecure-plaintext"), "{refused:#}");
        settings(&ServeArgs { insecure_plaintext: true, ..public.clone() }).expect("asked for");
        settings(&ServeArgs { listen: Some("127.0.0.1:50051".parse().expect("addr")), ..Default::default() }).expect("loopback");
        let metrics = ServeArgs { metrics_listen: Some("0.0.0.0:9464".parse().expect("addr")), ..Default::default() };
        assert!(settings(&metrics).is_err(), "a public /metrics needs the flag");
        settings(&ServeArgs { insecure_plaintext: true, ..metrics }).expect("asked for");
        let console = ServeArgs { console_listen: Some("0.0.0.0:8080".parse().expect("addr")), ..Default::default() };
        let refused = settings(&console).expect_err("a public console needs the flag");
        assert!(format!("{refused:#}").contains("the console") && format!("{refused:#}").contains("--insecure-plaintext"), "{refused:#}");
        settings(&ServeArgs { insecure_plaintext: true, ..console }).expect("asked for");
        let local = settings(&ServeArgs { console_listen: Some("127.0.0.1:8080".parse().expect("addr")), ..Default::default() }).expect("loopback");
        assert_eq!(local.console_listen, Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(settings(&ServeArgs::default()).expect("defaults").console_listen, None, "off unless given");
        let tiles = ServeArgs { tlog_listen: Some("0.0.0.0:8081".parse().expect("addr")), ..Default::default() };
        assert!(format!("{:#}", settings(&tiles).expect_err("public tiles need the flag")).contains("the tiles"));
        settings(&ServeArgs { insecure_plaintext: true, ..tiles }).expect("asked for");
        assert_eq!(settings(&ServeArgs::default()).expect("defaults").tlog_listen, None, "off unless given");
    }
}
