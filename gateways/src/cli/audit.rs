//! `audit replay` and `audit statement`, locally (the log and the auditor's keys) or with
//! `--connect URL --cred auditor.cred` over a running engine's AuditService; both print
//! the same human summary on stderr and the same `--json` object. Exit codes: 0 clean,
//! 1 the replay found a problem or the engine refused, 2 usage or environment.

use super::ConnectArgs;
use crate::audit;
use crate::common::backend::BackendArgs;
use crate::common::client;
use crate::common::cred::Credential;
use anyhow::Context;
use projections::statement::{HOLDER_NAME_CHARS_MAX, Holder};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where an auditor's command runs: on the log (the default) or at a running engine.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// Ask a running engine's AuditService (its gRPC endpoint) instead of reading the log;
    /// needs --cred. Several engines on one stream comma-separated (failover).
    #[arg(long, requires = "cred")]
    pub connect: Option<String>,
    /// The auditor's (or operator's) credential file, with --connect.
    #[arg(long, requires = "connect")]
    pub cred: Option<PathBuf>,
    /// With --connect https://…: PEM of the CA that signed the engine's certificate.
    #[arg(long, requires = "connect")]
    pub ca: Option<PathBuf>,
    /// With --connect http:// to a non-loopback engine: send the credential in plain text.
    #[arg(long, requires = "connect")]
    pub insecure_plaintext: bool,
}

/// Whose statement: exactly one of the three.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct HolderArgs {
    /// The rights owner named in the media's royalty terms.
    #[arg(long, value_parser = parse_holder_name)]
    pub owner: Option<String>,
    /// The artist of the media.
    #[arg(long, value_parser = parse_holder_name)]
    pub artist: Option<String>,
    /// The rights agent named in the media's royalty terms.
    #[arg(long, value_parser = parse_holder_name)]
    pub rights_agent: Option<String>,
}

impl HolderArgs {
    fn holder(&self) -> (Holder, &str) {
        match (&self.owner, &self.artist, &self.rights_agent) {
            (Some(name), _, _) => (Holder::Owner, name),
            (_, Some(name), _) => (Holder::Artist, name),
            (_, _, Some(name)) => (Holder::RightsAgent, name),
            // clap's group requires one.
            (None, None, None) => (Holder::Artist, ""),
        }
    }
}

/// A holder's name as the engine takes it (`validate::text`): not empty, not too long, no
/// control characters.
pub fn parse_holder_name(value: &str) -> Result<String, String> {
    engine::domain::validate::text("name", value, HOLDER_NAME_CHARS_MAX).map_err(|rejection| rejection.to_string())?;
    Ok(value.to_string())
}

async fn audit_client(remote: &RemoteArgs) -> anyhow::Result<client::AuditClient> {
    let connect = remote.connect.clone().context("--connect is required here")?;
    let cred = Credential::load(remote.cred.as_deref().context("--cred is required with --connect")?)?;
    let args = ConnectArgs { connect, ca: remote.ca.clone(), client_cert: None, client_key: None, insecure_plaintext: remote.insecure_plaintext };
    Ok(client::audit(args.channel().await?, cred))
}

fn refused(status: tonic::Status, json: bool) -> anyhow::Result<ExitCode> {
    match super::refused(status)? {
        outcome @ super::Outcome::Refused(_) => Ok(outcome.report(json)),
        super::Outcome::Done(_) => Ok(ExitCode::from(1)),
    }
}

/// `audit replay`'s checkpoint options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CheckpointArgs {
    /// An incremental audit from this checkpoint (a signed note an earlier audit saved):
    /// entries before it are covered by its root, the chain and tree resume at its seal.
    #[arg(long, requires = "keys")]
    pub checkpoint: Option<PathBuf>,
    /// The checkpoint verifier key, if not the key directory's checkpoint.vkey.
    #[arg(long, requires = "keys")]
    pub checkpoint_vkey: Option<PathBuf>,
    /// After a clean audit, write the newest seal's checkpoint here (the next --checkpoint).
    #[arg(long, requires = "keys")]
    pub save_checkpoint: Option<PathBuf>,
    /// A witness's cosignature vkey file (repeatable): the --checkpoint must carry the
    /// cosignatures of --witness-quorum of them, or the audit fails (exit 1).
    #[arg(long = "witness-vkey", requires = "checkpoint")]
    pub witness_vkeys: Vec<PathBuf>,
    /// How many of the --witness-vkey witnesses must have cosigned (default: all of them).
    #[arg(long, requires = "witness_vkeys")]
    pub witness_quorum: Option<usize>,
}

/// The witness policy of `--witness-vkey`/`--witness-quorum` (`None` without witnesses).
pub fn witness_policy(checkpoints: &CheckpointArgs) -> anyhow::Result<Option<engine::cosignature::WitnessPolicy>> {
    if checkpoints.witness_vkeys.is_empty() {
        return Ok(None);
    }
    let witnesses = checkpoints
        .witness_vkeys
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            engine::cosignature::CosignatureVerifier::from_vkey(&text)
                .with_context(|| format!("{} is not a witness vkey (<name>+<id>+<key>, type 0x04)", file.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let quorum = checkpoints.witness_quorum.unwrap_or(witnesses.len());
    if quorum == 0 || quorum > witnesses.len() {
        anyhow::bail!("--witness-quorum {quorum}: between 1 and the {} witness vkeys given", witnesses.len());
    }
    Ok(Some(engine::cosignature::WitnessPolicy { witnesses, quorum }))
}

/// Whether the pinned checkpoint meets the witness policy: `Err(reason)` when it does not.
fn check_witnesses(checkpoints: &CheckpointArgs) -> anyhow::Result<Result<(), String>> {
    let (Some(policy), Some(file)) = (witness_policy(checkpoints)?, &checkpoints.checkpoint) else { return Ok(Ok(())) };
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let note = engine::note::SignedNote::parse(&bytes).map_err(|e| anyhow::anyhow!("--checkpoint {}: {e}", file.display()))?;
    Ok(policy.check(&note).map(|names| eprintln!("the checkpoint is cosigned by {}", names.join(", "))))
}

/// Runs a local replay with the checkpoint options.
/// `audit handover`: exit 0 with the store built, 1 when the stream does not verify (no
/// store is written), 2 on a usage or environment error.
pub fn handover(backend: &BackendArgs, keys: &Path, out: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    match runtime.block_on(audit::handover::handover(backend, keys, out))? {
        Ok(handover) => {
            eprintln!(
                "handover: the stream verifies; a projection store of {} events ({} royalty entries, the chain key at entry {}) is in {}\nmove it to the engine host as <data-dir>/projections, then start the engine (state digest {})",
                handover.last_seq,
                handover.royalty_entries,
                handover.chain_next_entry,
                handover.store.display(),
                handover.state_digest
            );
            if json {
                println!("{}", serde_json::to_string(&handover)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(report) => {
            eprintln!("{}\nhandover: FAILED: the stream does not verify, so no store was built", audit::describe(&report));
            if json {
                println!("{}", serde_json::json!({ "store": null, "audit_ok": false, "first_bad": report.first_bad }));
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn replay_local(
    runtime: &tokio::runtime::Runtime,
    backend: &BackendArgs,
    keys: &Path,
    pin: Option<[u8; 32]>,
    checkpoints: &CheckpointArgs,
) -> anyhow::Result<projections::audit::AuditReport> {
    let checkpoint_key = audit::checkpoints::verifier(keys, checkpoints.checkpoint_vkey.as_deref())?;
    let since = match &checkpoints.checkpoint {
        None => None,
        Some(file) => {
            let verifier =
                checkpoint_key.as_ref().context("--checkpoint needs the checkpoint verifier key: checkpoint.vkey in --keys, or --checkpoint-vkey")?;
            // The pin is the auditor's own input: one that does not verify is a usage error.
            let checkpoint = audit::checkpoints::read(file, verifier)?.map_err(|reason| anyhow::anyhow!("--checkpoint {reason}"))?;
            Some(checkpoint)
        }
    };
    runtime.block_on(audit::replay_with(backend, keys, projections::audit::AuditOptions { checkpoint_key, pin, since, ..Default::default() }))
}

pub fn replay(
    backend: &BackendArgs,
    keys: Option<&Path>,
    pin: Option<[u8; 32]>,
    checkpoints: &CheckpointArgs,
    json: bool,
    remote: &RemoteArgs,
) -> anyhow::Result<ExitCode> {
    if let Err(reason) = check_witnesses(checkpoints)? {
        // A checkpoint the witnesses did not cosign may be a view shown to this auditor only.
        eprintln!("audit replay: FAILED: the pinned checkpoint does not meet the witness policy: {reason}");
        if json {
            // The contract's keys, for a replay that did not run: nothing read, the reason.
            println!(
                "{}",
                serde_json::json!({
                    "events": 0, "first_seq": 0, "last_seq": 0, "state_digest": "", "royalty_entries": 0, "seals_verified": 0,
                    "chain_ok": false, "first_bad": { "seq": null, "entry": null, "reason": format!("witness policy: {reason}") },
                    "totals": {}, "events_per_s": 0.0,
                })
            );
        }
        return Ok(ExitCode::from(1));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let report = match keys {
        Some(keys) => replay_local(&runtime, backend, keys, pin, checkpoints)?,
        None => match runtime.block_on(async { audit::remote::replay(&mut audit_client(remote).await?, pin).await })? {
            Ok(report) => report,
            Err(status) => return refused(status, json),
        },
    };
    eprintln!("{}", audit::describe(&report));
    if let (Some(file), Some(note), true) = (&checkpoints.save_checkpoint, &report.checkpoint, report.ok()) {
        std::fs::write(file, note).with_context(|| format!("cannot write {}", file.display()))?;
        let seal = report.newest_seal.as_deref().unwrap_or_default();
        eprintln!("saved the newest checkpoint to {}; pin the next audit with --checkpoint {} --pin {seal}", file.display(), file.display());
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `audit consistency`'s files.
pub struct ConsistencyFiles {
    pub old: PathBuf,
    pub new: PathBuf,
    pub proof: Option<PathBuf>,
    pub out: Option<PathBuf>,
}

/// `audit consistency`: 0 consistent, 1 not (or a checkpoint that does not verify), 2 usage.
pub fn consistency(backend: &BackendArgs, files: &ConsistencyFiles, keys: &Path, vkey: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    use audit::checkpoints;
    let verifier = checkpoints::verifier(keys, vkey)?.context("audit consistency needs the checkpoint verifier key: checkpoint.vkey in --keys, or --vkey")?;
    let failed = |reason: String| -> anyhow::Result<ExitCode> {
        eprintln!("consistency: FAILED: {reason}");
        if json {
            println!("{}", serde_json::json!({ "consistent": false, "proof": [], "reason": reason }));
        }
        Ok(ExitCode::from(1))
    };
    let (old, new) = match (checkpoints::read(&files.old, &verifier)?, checkpoints::read(&files.new, &verifier)?) {
        (Ok(old), Ok(new)) => (old, new),
        (Err(reason), _) | (_, Err(reason)) => return failed(reason),
    };
    let proof = match &files.proof {
        Some(file) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            match checkpoints::parse_proof(&text) {
                Ok(proof) => proof,
                Err(reason) => return failed(format!("{}: {reason}", file.display())),
            }
        }
        None => {
            let runtime = tokio::runtime::Runtime::new()?;
            match runtime.block_on(checkpoints::prove_from_stream(backend, keys, &old, &new))? {
                Ok(proof) => proof,
                Err(reason) => return failed(reason),
            }
        }
    };
    let found = checkpoints::check(&old, &new, &proof);
    if let (Some(out), true) = (&files.out, found.consistent) {
        std::fs::write(out, checkpoints::format_proof(&proof)).with_context(|| format!("cannot write {}", out.display()))?;
    }
    match &found.reason {
        None => eprintln!("consistency: the tree of {} entries extends the tree of {} ({} proof hashes): OK", new.size, old.size, proof.len()),
        Some(reason) => eprintln!("consistency: FAILED: {reason}"),
    }
    if json {
        println!("{}", serde_json::to_string(&found)?);
    }
    Ok(if found.consistent { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn statement(backend: &BackendArgs, keys: Option<&Path>, holder: &HolderArgs, period: &str, json: bool, remote: &RemoteArgs) -> anyhow::Result<ExitCode> {
    let (holder, name) = holder.holder();
    let runtime = tokio::runtime::Runtime::new()?;
    let (statement, stamp) = match keys {
        Some(keys) => runtime.block_on(audit::statement(backend, keys, holder, name, period))?,
        None => match runtime.block_on(async { audit::remote::statement(&mut audit_client(remote).await?, holder, name, period).await })? {
            Ok(answer) => answer,
            Err(status) => return refused(status, json),
        },
    };
    eprintln!("{}", audit::describe_statement(&statement, &stamp));
    if json {
        println!("{}", audit::statement_json(&statement, &stamp));
    }
    Ok(ExitCode::SUCCESS)
}
