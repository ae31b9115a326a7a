//! `vouchsafe witness`: a C2SP tlog-witness (c2sp.org/tlog-witness) over plain HTTP, `POST
//! /add-checkpoint`. It knows the logs given with `--log ORIGIN=VKEY`, decides each request
//! with `engine::witness::decide` against the newest checkpoint it cosigned for the origin,
//! and only after that checkpoint's size and root are durable (a temp file, fsync, rename,
//! fsync of the directory: `state.json` in `--data-dir`) answers with its `cosignature/v1`
//! line (Ed25519, timestamped with this machine's clock). Requests are decided one at a
//! time (one lock over check and store), so two cannot roll the recorded size back.
//! Refusals carry the spec's status: 400, 403, 404, 409 (`text/x.tlog.size`: the recorded
//! size), 422. Not here: the decision (engine), the log's side (`common::cosign`).

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use engine::cosignature::Cosigner;
use engine::note::NoteVerifier;
use engine::witness::{self, Recorded};
use http::{StatusCode, header};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The state file in the witness's data directory.
pub const STATE_FILE: &str = "state.json";

#[derive(clap::Args, Debug, Clone)]
pub struct WitnessArgs {
    /// Address to serve add-checkpoint on (plain HTTP; loopback unless --insecure-plaintext).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The witness's private key file (`keys witness` writes one).
    #[arg(long)]
    pub key: PathBuf,
    /// A log it witnesses: its origin and the vkey of its checkpoint key (repeatable).
    #[arg(long = "log", required = true, value_parser = parse_log)]
    pub logs: Vec<(String, String)>,
    /// Where the newest cosigned checkpoint of each log is kept (default ./vouchsafe-witness).
    #[arg(long, default_value = "vouchsafe-witness")]
    pub data_dir: PathBuf,
    /// Listen on a non-loopback address in plain HTTP (the requests carry only signed,
    /// public checkpoints; a TLS proxy in front is still the better way).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// `ORIGIN=VKEY`; the vkey's name must be the origin.
pub fn parse_log(value: &str) -> Result<(String, String), String> {
    let (origin, vkey) = value.split_once('=').ok_or("expected ORIGIN=VKEY")?;
    let verifier = NoteVerifier::from_vkey(vkey).map_err(|e| format!("{origin}: {e}"))?;
    if verifier.name() != origin {
        return Err(format!("the vkey's name {:?} is not the origin {origin:?}", verifier.name()));
    }
    Ok((origin.to_string(), vkey.to_string()))
}

/// The witness: its key, the logs it knows and what it recorded (behind one lock).
pub struct Witness {
    cosigner: Cosigner,
    logs: BTreeMap<String, NoteVerifier>,
    state_file: PathBuf,
    recorded: tokio::sync::Mutex<BTreeMap<String, Recorded>>,
    /// The sizes this process cosigned, by origin, in order (the newest
    /// `COSIGNED_KEPT_MAX` of each): what it saw, for its operator and tests.
    cosigned: std::sync::Mutex<BTreeMap<String, std::collections::VecDeque<u64>>>,
}

/// Cosigned sizes kept per log in memory (`Witness::cosigned_sizes`).
const COSIGNED_KEPT_MAX: usize = 1024;

impl Witness {
    pub fn open(args: &WitnessArgs) -> anyhow::Result<Self> {
        crate::common::keys::warn_if_loose(&args.key);
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(&args.key).with_context(|| format!("cannot read {}", args.key.display()))?);
        let cosigner = Cosigner::from_private_line(&text)
            .map_err(|_| anyhow::anyhow!("{} is not a witness private key (PRIVATE+KEY+<name>+<id>+<key>, type 0x04)", args.key.display()))?;
        // A log named twice (`--log O=OLD --log O=NEW`, a rotated checkpoint key): both keys
        // verify its checkpoints, the last one given first.
        let mut logs: BTreeMap<String, NoteVerifier> = BTreeMap::new();
        for (origin, vkey) in &args.logs {
            let verifier = NoteVerifier::from_vkey(vkey)?;
            let merged = match logs.remove(origin) {
                Some(earlier) => verifier.with_older(&earlier)?,
                None => verifier,
            };
            logs.insert(origin.clone(), merged);
        }
        std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
        let state_file = args.data_dir.join(STATE_FILE);
        let recorded = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is not a witness state file", state_file.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", state_file.display())),
        };
        Ok(Self { cosigner, logs, state_file, recorded: tokio::sync::Mutex::new(recorded), cosigned: Default::default() })
    }

    pub fn vkey(&self) -> String {
        self.cosigner.verifier().vkey()
    }

    /// The sizes of `origin` this process cosigned, oldest first (the newest
    /// `COSIGNED_KEPT_MAX`).
    pub fn cosigned_sizes(&self, origin: &str) -> Vec<u64> {
        let cosigned = self.cosigned.lock().expect("the cosigned sizes' lock is never poisoned");
        cosigned.get(origin).map(|sizes| sizes.iter().copied().collect()).unwrap_or_default()
    }

    /// Decides a request body; on success the new record is durable before the cosignature
    /// line is returned.
    pub async fn add_checkpoint(&self, body: &[u8]) -> Result<String, witness::Refusal> {
        let request = witness::parse_request(body)?;
        let mut recorded = self.recorded.lock().await;
        let origin = engine::note::Checkpoint::parse(&request.note.text).map(|checkpoint| checkpoint.origin).unwrap_or_default();
        let checkpoint = witness::decide(&request, &self.logs, recorded.get(&origin).copied())?;
        let mut next = recorded.clone();
        next.insert(checkpoint.origin.clone(), Recorded { size: checkpoint.size, root: checkpoint.root });
        let bytes = serde_json::to_vec_pretty(&next).expect("sizes and hex roots serialize");
        let file = self.state_file.clone();
        match tokio::task::spawn_blocking(move || write_durably(&file, &bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(error = format!("{error:#}"), "cannot store the witness state; not cosigning");
                return Err(witness::Refusal::BadRequest("the witness cannot store its state now; retry later".into()));
            }
            Err(error) => {
                tracing::error!(%error, "storing the witness state failed");
                return Err(witness::Refusal::BadRequest("the witness cannot store its state now; retry later".into()));
            }
        }
        *recorded = next;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
        tracing::info!(origin = %checkpoint.origin, size = checkpoint.size, "cosigned");
        {
            let mut cosigned = self.cosigned.lock().expect("the cosigned sizes' lock is never poisoned");
            let sizes = cosigned.entry(checkpoint.origin.clone()).or_default();
            if sizes.len() == COSIGNED_KEPT_MAX {
                sizes.pop_front();
            }
            sizes.push_back(checkpoint.size);
        }
        Ok(self.cosigner.line(&request.note.text, now))
    }
}

/// Temp file, fsync, rename over `file`, fsync of the directory.
fn write_durably(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = file.parent().context("the state file has a directory")?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(file).with_context(|| format!("cannot rename onto {}", file.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: axum::body::Bytes) -> Response {
    match witness.add_checkpoint(&body).await {
        Ok(line) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line).into_response(),
        Err(refusal) => {
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            match refusal.recorded_size() {
                Some(size) => (status, [(header::CONTENT_TYPE, "text/x.tlog.size")], format!("{size}\n")).into_response(),
                None => (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{refusal}\n")).into_response(),
            }
        }
    }
}

pub fn router(witness: Arc<Witness>) -> axum::Router {
    axum::Router::new()
        .route("/add-checkpoint", axum::routing::post(add_checkpoint))
        .layer(DefaultBodyLimit::max(witness::REQUEST_BYTES_MAX))
        .with_state(witness)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(witness)).with_graceful_shutdown(shutdown).await
}

/// `vouchsafe witness …` until `shutdown` resolves (SIGTERM or ctrl-c from the CLI).
pub async fn run(args: WitnessArgs, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    crate::common::plaintext::check_listen(args.listen, false, args.insecure_plaintext, "the witness")?;
    let witness = Arc::new(Witness::open(&args)?);
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("witness {} for {} log(s) on http://{}/add-checkpoint", witness.vkey(), args.logs.len(), listener.local_addr()?);
    serve(listener, witness, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The whole command line is consistent (clap's own checks), and `witness` parses its
    /// logs: a vkey whose name is not the origin, or that is no vkey, is refused.
    #[test]
    fn the_witness_command_line_parses_and_checks_its_logs() {
        crate::cli::args::Cli::command().debug_assert();
        let log = engine::note::NoteSigner::generate("example.test/log").expect("key").verifier().vkey();
        let parsed = crate::cli::args::Cli::try_parse_from([
            "vouchsafe",
            "witness",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "w.key",
            "--log",
            &format!("example.test/log={log}"),
        ]);
        assert!(matches!(parsed.map(|cli| cli.command), Ok(crate::cli::args::Command::Witness(_))));
        assert!(parse_log(&format!("other.test/log={log}")).is_err(), "the vkey names another origin");
        assert!(parse_log("example.test/log=not-a-vkey").is_err());
        assert!(parse_log(&log).is_err(), "no ORIGIN=");
    }
}
