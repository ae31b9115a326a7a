//! `vouchsafe keys rotate engine|token|checkpoint`, `keys revoke engine`: the operator's key
//! lifecycle (issue 28). The files change here (`common::keys::rotate_*`); the running engine
//! reloads them and records the change on the stream (AdminService `RotateEngineKey`,
//! `RotateTokenKey`, `RotateCheckpointKey`, `RevokeEngineKey`).

use super::{ConnectArgs, Outcome, fresh_request_id, refused};
use crate::common::client;
use crate::common::cred::Credential;
use proto::v1 as pb;
use std::path::PathBuf;

/// Which key rotates: the engine's RSA key, the token keys (receipts, the nodes' access
/// keys) or the checkpoint note key.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotatedKey {
    Engine,
    Token,
    Checkpoint,
}

/// Which key may be revoked: the engine's (a revoked token key would strand paid vouchers'
/// receipts; a checkpoint key's old checkpoints are what witnesses cosigned).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokedKey {
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
    pub kind: RevokedKey,
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
    let request_id = args.request_id.clone().unwrap_or_else(|| fresh_request_id("rotate"));
    let kind = match args.kind {
        RotatedKey::Engine => "engine",
        RotatedKey::Token => "token",
        RotatedKey::Checkpoint => "checkpoint",
    };
    let keys = &args.keys;
    // The files change first (unless --record-only), then the engine takes them up.
    let (previous, answer) = match args.kind {
        RotatedKey::Engine => {
            let (previous, key_id) = if args.record_only {
                (None, crate::common::keys::load_engine_public(keys)?.key_id())
            } else {
                let (previous, key_id) = crate::common::keys::rotate_engine(keys)?;
                eprintln!("wrote the new engine key {key_id} to {} (the previous one, {previous}, under retired/)", keys.display());
                (Some(previous), key_id)
            };
            let answer = admin.rotate_engine_key(pb::RotateEngineKeyRequest { request_id, key_id }).await.map(|response| {
                let response = response.into_inner();
                eprintln!("the engine signs with key {} now; its set: {}", response.current_key_id, response.key_ids.join(", "));
                answer_json(&response)
            });
            (serde_json::json!(previous), answer)
        }
        RotatedKey::Token => {
            let (previous, key_id) = if args.record_only {
                (None, crate::common::keys::load_engine_keys(keys)?.token_key_id())
            } else {
                let (previous, key_id) = crate::common::keys::rotate_token(keys)?;
                eprintln!("wrote token key {key_id} to {} (token keys up to {previous} kept)", keys.join(crate::common::keys::TOKEN_KEY).display());
                (Some(previous), key_id)
            };
            let answer = admin.rotate_token_key(pb::RotateTokenKeyRequest { request_id, key_id }).await.map(|response| {
                let response = response.into_inner();
                eprintln!("receipts and access tokens are made under token key {} now; nodes take up their access keys by themselves", response.current_key_id);
                serde_json::json!({ "key_id": response.current_key_id, "key_ids": response.key_ids, "changed": response.changed })
            });
            (serde_json::json!(previous), answer)
        }
        RotatedKey::Checkpoint => {
            let (previous, vkey) = if args.record_only {
                let signer = crate::common::keys::load_checkpoint_key(keys)?.ok_or_else(|| anyhow::anyhow!("{} has no checkpoint.key", keys.display()))?;
                (None, signer.verifier().vkey())
            } else {
                let (previous, vkey) = crate::common::keys::rotate_checkpoint(keys)?;
                eprintln!("wrote the new checkpoint key to {} (the previous vkey under retired/checkpoint.vkeys)", keys.display());
                (Some(previous), vkey)
            };
            let answer = admin.rotate_checkpoint_key(pb::RotateCheckpointKeyRequest { request_id, vkey }).await.map(|response| {
                let response = response.into_inner();
                eprintln!("checkpoints are signed with {} now; give witnesses and auditors the new checkpoint.vkey (keep the old one too)", response.vkey);
                serde_json::json!({ "key_id": response.vkey, "retired_vkeys": response.retired_vkeys, "changed": response.changed })
            });
            (serde_json::json!(previous), answer)
        }
    };
    match answer {
        Ok(mut json) => {
            json["kind"] = serde_json::json!(kind);
            json["previous_key_id"] = previous;
            Ok(Outcome::Done(json))
        }
        Err(status) => {
            eprintln!(
                "the key directory holds the new {kind} key, the engine did not take it; fix what is said below, then `vouchsafe keys rotate {kind} --keys {} --record-only`",
                keys.display()
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
