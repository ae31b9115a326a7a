//! `vouchsafe admin`: the operator's administration over AdminService (statistics,
//! configuration, nodes, merchants, auditors, media, consumers' certificates; the ledger,
//! the parties and points accounts, read in `reads`), with the
//! operator credential from `--keys DIR`. Every change is an audited event on the stream;
//! `--json` prints the answer's object (CLI.md), a refusal exits 1.

use super::{ConnectArgs, Outcome, fresh_request_id, refused};
use crate::common::client;
use crate::common::cred::Credential;
use anyhow::Context;
use proto::v1 as pb;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum AdminCommand {
    /// Uptime, vouchers issued, per-node streams and cache figures, projection lag, events/s.
    Stats,
    /// Engine configuration (audited: a change is an event).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Delivery nodes.
    Node {
        #[command(subcommand)]
        command: NodeAdminCommand,
    },
    /// Merchants: suspend (it sells nothing) and reinstate.
    Merchant {
        #[command(subcommand)]
        command: MerchantAdminCommand,
    },
    /// Auditors: revoke a read-only credential.
    Auditor {
        #[command(subcommand)]
        command: AuditorAdminCommand,
    },
    /// Publishers: register another signing key.
    Publisher {
        #[command(subcommand)]
        command: PublisherAdminCommand,
    },
    /// Media: withdraw from sale, change the price.
    Media {
        #[command(subcommand)]
        command: MediaAdminCommand,
    },
    /// Consumers' certificates: revoke (the consumer can no longer redeem with them).
    Cert {
        #[command(subcommand)]
        command: CertAdminCommand,
    },
    /// The ledger: balances per currency and account kind, and their sums (zero).
    Ledger,
    /// Merchants, nodes, auditors and certificates (consumers', devices') with their status.
    Parties {
        #[arg(long, value_enum)]
        kind: Option<super::reads::PartyKindArg>,
        /// At most this many parties.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        /// Go on from a `next_cursor` an earlier answer printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One points account: balance, held, available.
    Points {
        #[arg(long = "account", value_name = "ID")]
        account_id: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Every key with its value, range and whether it was set.
    Get,
    /// Set one key (validated by the engine).
    Set { key: String, value: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum NodeAdminCommand {
    /// No new work for the node; what it holds finishes.
    Drain { node_id: String },
    /// Remove the node for good: no new work, no redemptions.
    Remove { node_id: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum MerchantAdminCommand {
    /// The merchant sells nothing until reinstated (MerchantSuspended).
    Suspend {
        merchant_id: String,
        /// Why, as recorded in the event.
        #[arg(long, default_value = "suspended by the operator")]
        reason: String,
    },
    /// The merchant sells again (MerchantReinstated).
    Reinstate {
        merchant_id: String,
        /// Why, as recorded in the event.
        #[arg(long, default_value = "reinstated by the operator")]
        reason: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditorAdminCommand {
    /// The auditor's credential no longer opens AuditService (AuditorRevoked).
    Revoke {
        auditor_id: String,
        /// Why, as recorded in the event.
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PublisherAdminCommand {
    /// Another key the publisher's containers may be signed with (PublisherKeyAdded).
    AddKey {
        publisher_id: String,
        /// The key's public half (SPKI PEM).
        #[arg(long = "publisher-key")]
        publisher_key: PathBuf,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum MediaAdminCommand {
    /// No new reservations of the media (MediaWithdrawn); what was sold stays deliverable.
    Withdraw {
        media_id: String,
        /// Why, as recorded in the event.
        #[arg(long, default_value = "withdrawn by the operator")]
        reason: String,
    },
    /// The price, in minor units, for reservations from now on (PriceChanged).
    Price {
        media_id: String,
        #[arg(value_name = "MINOR")]
        price_minor: u64,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CertAdminCommand {
    /// Revoke the consumer's certificate --serial, or without it every certificate it
    /// holds that is not revoked yet (CertRevoked each).
    Revoke {
        /// The consumer whose certificates are revoked.
        #[arg(long = "consumer", value_name = "ID")]
        consumer_id: String,
        /// The one certificate to revoke; without it, every certificate not yet revoked.
        #[arg(long = "serial", value_name = "S", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        cert_serial: Option<String>,
        /// Why, as recorded in the event.
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The key directory holding operator.cred.
    #[arg(long, global = true)]
    pub keys: Option<PathBuf>,
    /// Request id for a change (a fresh one when absent).
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// Print one JSON object on the last line of stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

fn config_json(config: &pb::ConfigResponse) -> serde_json::Value {
    serde_json::json!({
        "config": config.entries.iter().map(|e| serde_json::json!({ "key": e.key, "value": e.value, "min": e.min, "max": e.max, "set": e.set })).collect::<Vec<_>>(),
    })
}

pub async fn admin(args: AdminArgs) -> anyhow::Result<Outcome> {
    let keys = args.keys.as_ref().context("--keys DIR (holding operator.cred) is required")?;
    let operator = Credential::load(&keys.join(crate::common::keys::OPERATOR_CRED))?;
    let mut admin = client::admin(args.connect.channel().await?, operator);
    let request_id = args.request_id.clone().unwrap_or_else(|| fresh_request_id("admin"));
    // A key file is read before anything is sent: a missing or malformed one is a usage error.
    let publisher_key_der = match &args.command {
        AdminCommand::Publisher { command: PublisherAdminCommand::AddKey { publisher_key, .. } } => {
            let pem = std::fs::read_to_string(publisher_key).with_context(|| format!("cannot read {}", publisher_key.display()))?;
            let key = engine::crypto::RsaPublic::from_pem(&pem).with_context(|| format!("{} is not an RSA public key (SPKI PEM)", publisher_key.display()))?;
            Some(key.to_der()?)
        }
        _ => None,
    };
    let answer: Result<serde_json::Value, tonic::Status> = async {
        Ok(match &args.command {
            AdminCommand::Stats => {
                let stats = admin.get_stats(pb::GetStatsRequest {}).await?.into_inner();
                serde_json::json!({
                    "uptime_s": stats.uptime_s,
                    "vouchers_issued": stats.vouchers_issued,
                    "nodes": stats.nodes.iter().map(|n| serde_json::json!({
                        "node_id": n.node_id, "streams_max": n.streams_max, "streams_in_use": n.streams_in_use,
                        "cache_items": n.cache_items, "cache_accesses": n.cache_accesses, "cache_misses": n.cache_misses,
                        "healthy": n.healthy, "endpoint": n.endpoint, "status": n.status, "region": n.region,
                    })).collect::<Vec<_>>(),
                    "projection_lag": stats.projection_lag,
                    "events_per_s": stats.events_per_s,
                    "stream_events": stats.stream_events,
                    "royalty_entries": stats.royalty_entries,
                    "seals": stats.seals,
                    "vouchers_pending": stats.vouchers_pending,
                    "vouchers_delivered": stats.vouchers_delivered,
                    "certificates_issued": stats.certificates_issued,
                    "certificates_revoked": stats.certificates_revoked,
                    "certificates_expired": stats.certificates_expired,
                    "engine_key_id": stats.engine_key_id,
                    "engine_key_ids": stats.engine_key_ids,
                    "engine_keys_revoked": stats.engine_keys_revoked,
                    "token_key_id": stats.token_key_id,
                    "token_key_ids": stats.token_key_ids,
                    "checkpoint_vkey": stats.checkpoint_vkey,
                })
            }
            AdminCommand::Config { command: ConfigCommand::Get } => config_json(&admin.get_config(pb::GetConfigRequest {}).await?.into_inner()),
            AdminCommand::Config { command: ConfigCommand::Set { key, value } } => {
                config_json(&admin.set_config(pb::SetConfigRequest { request_id, key: key.clone(), value: value.clone() }).await?.into_inner())
            }
            AdminCommand::Node { command: NodeAdminCommand::Drain { node_id } } => {
                let answer = admin.drain_node(pb::NodeAdminRequest { request_id, node_id: node_id.clone() }).await?.into_inner();
                serde_json::json!({ "node_id": answer.node_id, "status": answer.status })
            }
            AdminCommand::Node { command: NodeAdminCommand::Remove { node_id } } => {
                let answer = admin.remove_node(pb::NodeAdminRequest { request_id, node_id: node_id.clone() }).await?.into_inner();
                serde_json::json!({ "node_id": answer.node_id, "status": answer.status })
            }
            AdminCommand::Merchant { command } => {
                let (merchant_id, reason) = match command {
                    MerchantAdminCommand::Suspend { merchant_id, reason } | MerchantAdminCommand::Reinstate { merchant_id, reason } => (merchant_id, reason),
                };
                let message = pb::MerchantAdminRequest { request_id, merchant_id: merchant_id.clone(), reason: reason.clone() };
                let answer = match command {
                    MerchantAdminCommand::Suspend { .. } => admin.suspend_merchant(message).await?,
                    MerchantAdminCommand::Reinstate { .. } => admin.reinstate_merchant(message).await?,
                }
                .into_inner();
                serde_json::json!({ "merchant_id": answer.merchant_id, "status": answer.status, "changed": answer.changed })
            }
            AdminCommand::Auditor { command: AuditorAdminCommand::Revoke { auditor_id, reason } } => {
                let message = pb::AuditorAdminRequest { request_id, auditor_id: auditor_id.clone(), reason: reason.clone() };
                let answer = admin.revoke_auditor(message).await?.into_inner();
                serde_json::json!({ "auditor_id": answer.auditor_id, "status": answer.status, "changed": answer.changed })
            }
            AdminCommand::Publisher { command: PublisherAdminCommand::AddKey { publisher_id, .. } } => {
                let message = pb::AddPublisherKeyRequest {
                    request_id,
                    publisher_id: publisher_id.clone(),
                    public_key_der: publisher_key_der.clone().unwrap_or_default(),
                };
                let answer = admin.add_publisher_key(message).await?.into_inner();
                serde_json::json!({ "publisher_id": answer.publisher_id, "key_id": answer.key_id, "changed": answer.changed, "keys": answer.keys })
            }
            AdminCommand::Media { command } => {
                let answer = match command {
                    MediaAdminCommand::Withdraw { media_id, reason } => {
                        admin.withdraw_media(pb::WithdrawMediaRequest { request_id, media_id: media_id.clone(), reason: reason.clone() }).await?
                    }
                    MediaAdminCommand::Price { media_id, price_minor } => {
                        admin.change_price(pb::ChangePriceRequest { request_id, media_id: media_id.clone(), price_minor: *price_minor }).await?
                    }
                }
                .into_inner();
                serde_json::json!({
                    "media_id": answer.media_id, "status": answer.status, "price_minor": answer.price_minor,
                    "currency": answer.currency, "changed": answer.changed,
                })
            }
            AdminCommand::Cert { command: CertAdminCommand::Revoke { consumer_id, cert_serial, reason } } => {
                let message = pb::RevokeCertsRequest {
                    request_id,
                    consumer_id: consumer_id.clone(),
                    cert_serial: cert_serial.clone().unwrap_or_default(),
                    reason: reason.clone(),
                    every_cert: cert_serial.is_none(),
                };
                let answer = admin.revoke_certs(message).await?.into_inner();
                serde_json::json!({ "consumer_id": answer.consumer_id, "cert_serials": answer.cert_serials, "changed": answer.changed })
            }
            AdminCommand::Ledger => super::reads::admin_ledger(&mut admin).await?,
            AdminCommand::Parties { kind, limit, cursor } => {
                super::reads::admin_parties(&mut admin, kind.map(super::reads::PartyKindArg::name), *limit, cursor.as_deref()).await?
            }
            AdminCommand::Points { account_id } => super::reads::admin_points(&mut admin, account_id).await?,
        })
    }
    .await;
    match answer {
        Ok(value) => Ok(Outcome::Done(value)),
        Err(status) => refused(status),
    }
}
