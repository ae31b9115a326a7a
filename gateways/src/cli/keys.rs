//! `vouchsafe keys rotate|revoke engine`: the operator's key lifecycle (issue 28). The files
//! change here (`common::keys::rotate_engine`); the running engine reloads them and records
//! the change on the stream (AdminService `RotateEngineKey`, `RevokeEngineKey`).

use super::{ConnectArgs, Outcome, fresh_request_id, refused};
use crate::common::client;
use crate::common::cred::Credential;
use proto::v1 as pb;
use std::path::PathBuf;

/// Which key: only the engine's RSA key rotates so far (token and checkpoint keys: issue 28).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotatedKey {
    Engine,
}

#[derive(clap::Args, Debug)]
pub struct RotateArgs {
    pub kind: RotatedKey,
    /// The engine's key directory (its operator.cred authenticates the call).
    #[arg(long)]
    pub keys: PathBuf,
    /// Write no new key: have the engine record the one the directory holds already (after
    /// a rotation whose call to the engine failed).
    #[arg(long)]
    pub record_only: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub request_id: Option<String>,
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    pub kind: RotatedKey,
    /// The retired key's id (`keys rotate` printed it as `previous_key_id`).
    #[arg(long)]
    pub key_id: String,
    #[arg(long)]
    pub keys: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub request_id: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn answer_json(response: &pb::EngineKeyResponse) -> serde_json::Value {
    serde_json::json!({ "key_id": response.current_key_id, "key_ids": response.key_ids, "changed": response.changed })
}

pub async fn rotate(args: RotateArgs) -> anyhow::Result<Outcome> {
    let operator = Credential::load(&args.keys.join(crate::common::keys::OPERATOR_CRED))?;
    let mut admin = client::admin(args.connect.channel().await?, operator);
    let (previous, key_id) = if args.record_only {
        (None, crate::common::keys::load_engine_public(&args.keys)?.key_id())
    } else {
        let (previous, key_id) = crate::common::keys::rotate_engine(&args.keys)?;
        eprintln!("wrote the new engine key {key_id} to {} (the previous one, {previous}, under retired/)", args.keys.display());
        (Some(previous), key_id)
    };
    let request_id = args.request_id.clone().unwrap_or_else(|| fresh_request_id("rotate"));
    match admin.rotate_engine_key(pb::RotateEngineKeyRequest { request_id, key_id: key_id.clone() }).await {
        Ok(response) => {
            let response = response.into_inner();
            let mut json = answer_json(&response);
            json["previous_key_id"] = serde_json::json!(previous);
            eprintln!("the engine signs with key {} now; its set: {}", response.current_key_id, response.key_ids.join(", "));
            Ok(Outcome::Done(json))
        }
        Err(status) => {
            eprintln!(
                "the key directory holds the new key {key_id}, the engine did not take it; fix what is said below, then `vouchsafe keys rotate engine --keys {} --record-only`",
                args.keys.display()
            );
            refused(status)
        }
    }
}

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<Outcome> {
    let operator = Credential::load(&args.keys.join(crate::common::keys::OPERATOR_CRED))?;
    let mut admin = client::admin(args.connect.channel().await?, operator);
    let request_id = args.request_id.clone().unwrap_or_else(|| fresh_request_id("revoke"));
    match admin.revoke_engine_key(pb::RevokeEngineKeyRequest { request_id, key_id: args.key_id.clone() }).await {
        Ok(response) => {
            let response = response.into_inner();
            eprintln!("engine key {} is revoked{}", args.key_id, if response.changed { "" } else { " (it was already)" });
            let mut json = answer_json(&response);
            json["revoked_key_id"] = serde_json::json!(args.key_id);
            Ok(Outcome::Done(json))
        }
        Err(status) => refused(status),
    }
}
