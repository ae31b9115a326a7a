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
    /// needs --cred.
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

pub fn replay(backend: &BackendArgs, keys: Option<&Path>, pin: Option<&str>, json: bool, remote: &RemoteArgs) -> anyhow::Result<ExitCode> {
    let pin = pin.map(audit::parse_pin).transpose()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = match keys {
        Some(keys) => runtime.block_on(audit::replay(backend, keys, pin))?,
        None => match runtime.block_on(async { audit::remote::replay(&mut audit_client(remote).await?, pin).await })? {
            Ok(report) => report,
            Err(status) => return refused(status, json),
        },
    };
    eprintln!("{}", audit::describe(&report));
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
