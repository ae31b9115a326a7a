//! `vouchsafe player …`: the reference consumer's commands — a passport, redeeming and
//! fetching a sale, previews, and the consumer's own points: spend authorizations signed
//! with the passport and the balance read through ConsumerService; protecting a passport
//! under a passphrase (`--passphrase-file`, or asked on a terminal).

use super::{ConnectArgs, Outcome, fresh_request_id, refused};
use crate::common::client;
use crate::common::cred::Credential;
use crate::player::{Passport, Purchase};
use anyhow::Context;
use proto::v1 as pb;
use std::path::PathBuf;

/// Default life of a spend authorization: an hour.
const SPEND_TTL_MS_DEFAULT: u64 = 60 * 60 * 1000;

#[derive(clap::Subcommand, Debug)]
pub enum PlayerCommand {
    /// Create a passport: an RSA key pair and a certificate from the engine.
    Passport {
        #[command(flatten)]
        connect: ConnectArgs,
        /// A credential allowed to certify consumers (the operator's).
        #[arg(long)]
        cred: PathBuf,
        /// The engine's public key (engine.pub.pem), to check the certificate.
        #[arg(long)]
        engine_key: PathBuf,
    },
    /// Redeem a sale (the JSON `merchant buy --json` printed) at its node, download,
    /// decrypt and verify every media.
    Fetch {
        /// The sale JSON file, or - for stdin.
        #[arg(long)]
        sale: PathBuf,
        /// Fetch a delivered purchase again (a lost copy) for the consumer it went to: at
        /// most `delivery.recoveries_max` times, within the sale's access window; the
        /// copy's transaction record names the recovery.
        #[arg(long)]
        recover: bool,
        #[command(flatten)]
        node: NodeTrustArgs,
    },
    /// Play a preview at a node.
    Preview {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        preview: String,
        #[command(flatten)]
        node: NodeTrustArgs,
    },
    /// Sign a single-use consent for one merchant to spend up to --amount of your points
    /// (on the --media named, or any), written 0600 to --out for the merchant's
    /// `merchant reserve|buy --spend-authorization FILE`.
    AuthorizeSpend {
        /// The merchant id (from the merchant's credential) the consent is for.
        #[arg(long)]
        merchant: String,
        /// The most the purchase may cost, in points.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        amount: u64,
        /// Media the purchase may reserve (repeat); none: any.
        #[arg(long = "media")]
        media_ids: Vec<String>,
        /// How long the consent is good for.
        #[arg(long, default_value_t = SPEND_TTL_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=engine::spend::TTL_MS_MAX))]
        ttl_ms: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Your own points balance, asked with a request signed by your passport.
    Points {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Protect an unprotected passport: its key is rewritten as encrypted PKCS#8 (PBES2,
    /// scrypt) under the passphrase from --passphrase-file or asked on the terminal.
    Protect,
    /// Delete the copies of rentals whose window is over (every player command does this
    /// first; this one does nothing else).
    Purge,
}

/// How the player reaches the delivery node the sale (or the preview) names.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeTrustArgs {
    /// PEM of the CA that signed the delivery node's TLS certificate (the node serves
    /// https://); with it, a node in plain text is refused.
    #[arg(long)]
    pub node_ca: Option<PathBuf>,
    /// Send the access grant in plain text to a node that is not on loopback (a private
    /// network of your own); without it only loopback may be plain text.
    #[arg(long)]
    pub insecure_plaintext: bool,
}

impl NodeTrustArgs {
    pub fn trust(&self) -> anyhow::Result<crate::player::NodeTrust> {
        let ca_pem = self.node_ca.as_deref().map(|path| crate::common::tls::load_ca(path, "--node-ca")).transpose()?;
        Ok(crate::player::NodeTrust { ca_pem, insecure_plaintext: self.insecure_plaintext })
    }

    /// Connects to the node at `endpoint`. Not reaching it, or a TLS handshake it fails, is
    /// an environment problem (exit 2), not a refusal.
    async fn connect(&self, endpoint: &str) -> anyhow::Result<crate::player::NodeClient> {
        crate::player::connect_node_with(endpoint, &self.trust()?).await
    }
}

#[derive(clap::Args, Debug)]
pub struct PlayerArgs {
    #[command(subcommand)]
    pub command: PlayerCommand,
    /// The consumer id (names the passport under <data-dir>/players/).
    #[arg(long, global = true, default_value = "player")]
    pub consumer: String,
    /// Where passports and delivered copies live.
    #[arg(long, global = true, default_value = "./vouchsafe-data")]
    pub data_dir: PathBuf,
    /// Print one JSON object on the last line of stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// The passport's passphrase: the first line of FILE (for scripts). Without it the
    /// passphrase is asked on the terminal, when stdin is one. `player passport` protects
    /// the new passport with it; commands that use a protected passport open it with it.
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// Opens the consumer's passport (asking for its passphrase only if it is protected). A
/// wrong passphrase is a refused check (exit 1), a missing passport or passphrase source a
/// usage error (exit 2).
fn open_passport(dir: &std::path::Path, consumer: &str, source: &crate::player::PassphraseSource) -> anyhow::Result<Result<Passport, Outcome>> {
    match Passport::load_with(dir, source) {
        Ok(passport) => Ok(Ok(passport)),
        Err(error) => match error.downcast::<crate::player::WrongPassphrase>() {
            Ok(wrong) => Ok(Err(Outcome::Refused(tonic::Status::unauthenticated(wrong.to_string())))),
            Err(error) if !dir.join("passport.pem").exists() => {
                Err(error.context(format!("no passport for {consumer}; run `vouchsafe player passport` first")))
            }
            Err(error) => Err(error),
        },
    }
}

fn rpc_refusal(error: anyhow::Error) -> anyhow::Result<Outcome> {
    match error.downcast::<crate::player::RpcError>() {
        Ok(rpc) => Ok(Outcome::Refused(tonic::Status::new(rpc.code, format!("{}: {}", rpc.call, rpc.message)))),
        Err(error) => match error.downcast::<tonic::Status>() {
            Ok(status) => refused(status),
            Err(error) => Err(error),
        },
    }
}

pub async fn player(args: PlayerArgs) -> anyhow::Result<Outcome> {
    let consumer = engine::ids::ConsumerId(args.consumer.clone());
    let dir = crate::player::passport_dir(&args.data_dir, &consumer)?;
    let source = crate::player::PassphraseSource::from_args(args.passphrase_file.clone());
    // A rental's copy is kept no longer than its window, whatever the command.
    let now_ms = engine::clock::Clock::now(&engine::clock::SystemClock).0;
    let purged = crate::player::rentals::purge_ended_rentals(&dir, now_ms)?;
    for copy in &purged {
        eprintln!("deleted {}: its rental ended", copy.display());
    }
    match args.command {
        PlayerCommand::Purge => Ok(Outcome::Done(serde_json::json!({ "consumer_id": consumer.0, "deleted": purged }))),
        PlayerCommand::Passport { connect, cred, engine_key } => {
            let engine_public = crate::common::keys::engine_public_from_file(&engine_key)?;
            let mut catalog = client::catalog(connect.channel().await?, Credential::load(&cred)?);
            let passport = match crate::player::create_passport(&mut catalog, &fresh_request_id("passport"), &consumer, &engine_public).await {
                Ok(passport) => passport,
                Err(error) => return rpc_refusal(error),
            };
            let passphrase = source.to_protect(&format!("the passport of {}", consumer.0))?;
            passport.save_with(&dir, passphrase.as_deref().map(String::as_str))?;
            let protected = passphrase.is_some();
            eprintln!("passport for {} (certificate {}) saved in {}", consumer.0, passport.certificate.cert_serial, dir.display());
            if !protected {
                eprintln!("its key is not protected by a passphrase; `vouchsafe player protect --passphrase-file FILE` protects it");
            }
            Ok(Outcome::Done(
                serde_json::json!({ "consumer_id": consumer.0, "cert_serial": passport.certificate.cert_serial, "dir": dir, "protected": protected }),
            ))
        }
        PlayerCommand::Fetch { sale, recover, node } => {
            let text = if sale.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                text
            } else {
                std::fs::read_to_string(&sale).with_context(|| format!("cannot read {}", sale.display()))?
            };
            let last = text.lines().rev().find(|line| !line.trim().is_empty()).context("the sale file is empty")?;
            let sale: serde_json::Value = serde_json::from_str(last).context("the sale is not the JSON `merchant buy --json` prints")?;
            let field = |name: &str| sale[name].as_str().map(str::to_string).with_context(|| format!("the sale has no {name:?}"));
            let purchase = Purchase {
                node_endpoint: field("node_endpoint")?,
                node_id: field("node_id")?,
                grant: pb::AccessGrant {
                    voucher_id: field("voucher_id")?,
                    media_ids: sale["media_ids"]
                        .as_array()
                        .context("the sale has no media_ids")?
                        .iter()
                        .filter_map(|m| m.as_str().map(str::to_string))
                        .collect(),
                    access_expires_at_ms: sale["access_expires_at_ms"].as_i64().context("the sale has no access_expires_at_ms")?,
                    access_token: hex::decode(field("access_token")?).context("access_token is not hex")?,
                    // A sale written before token key rotation: key 1.
                    token_key_id: sale["token_key_id"].as_u64().map_or(Ok(0), u32::try_from).context("token_key_id is not a token key id")?,
                },
                receipt: hex::decode(field("receipt")?).context("receipt is not hex")?,
                // A rental (`merchant buy --rental-ms`): its copies go once the window is over.
                rental_until_ms: sale["rental_until_ms"].as_i64().unwrap_or(0),
            };
            let passport = match open_passport(&dir, &consumer.0, &source)? {
                Ok(passport) => passport,
                Err(refused) => return Ok(refused),
            };
            let mut at_node = node.connect(&purchase.node_endpoint).await?;
            let fetched = if recover {
                crate::player::recover_and_download_on(&mut at_node, &purchase, &passport, &fresh_request_id("recover"), &dir).await
            } else {
                crate::player::redeem_and_download_on(&mut at_node, &purchase, &passport, &fresh_request_id("redeem"), &dir).await
            };
            let copies = match fetched {
                Ok(copies) => copies,
                Err(error) => return rpc_refusal(error),
            };
            let all_ok = copies.iter().all(|copy| copy.decrypt_ok);
            for copy in &copies {
                eprintln!("{} {}: {}", copy.media_id, if copy.decrypt_ok { "decrypted and verified" } else { "FAILED to decrypt" }, copy.path.display());
            }
            let value = serde_json::json!({
                "voucher_id": purchase.grant.voucher_id,
                "copies": copies.iter().map(|c| serde_json::json!({ "media_id": c.media_id, "path": c.path, "content_hash": hex::encode(c.content_hash), "decrypt_ok": c.decrypt_ok })).collect::<Vec<_>>(),
                "decrypt_ok": all_ok,
            });
            if all_ok { Ok(Outcome::Done(value)) } else { Ok(Outcome::Refused(tonic::Status::data_loss("a delivered copy did not decrypt and verify"))) }
        }
        PlayerCommand::AuthorizeSpend { merchant, amount, media_ids, ttl_ms, out } => {
            let passport = match open_passport(&dir, &consumer.0, &source)? {
                Ok(passport) => passport,
                Err(refused) => return Ok(refused),
            };
            let expires_at = engine::clock::Clock::now(&engine::clock::SystemClock).plus_ms(ttl_ms);
            let authorization = passport.authorize_spend(&merchant, amount, &media_ids, expires_at)?;
            let value = crate::common::spend::to_json(&authorization);
            crate::common::keys::write_private(&out, format!("{value}\n").as_bytes())?;
            eprintln!("wrote {} (0600): {} may spend up to {amount} points of {} once, until {}", out.display(), merchant, consumer.0, expires_at.0);
            Ok(Outcome::Done(serde_json::json!({
                "account_id": authorization.account.0, "merchant_id": authorization.merchant.0, "amount_max": authorization.amount_max,
                "expires_at_ms": authorization.expires_at.0, "out": out,
            })))
        }
        PlayerCommand::Points { connect } => {
            let passport = match open_passport(&dir, &consumer.0, &source)? {
                Ok(passport) => passport,
                Err(refused) => return Ok(refused),
            };
            let mut consumer_client = client::consumer(connect.channel().await?);
            match passport.points(&mut consumer_client).await {
                Ok(points) => Ok(Outcome::Done(serde_json::json!({
                    "account_id": points.account_id, "balance": points.balance, "held": points.held, "available": points.available,
                }))),
                Err(error) => rpc_refusal(error),
            }
        }
        PlayerCommand::Protect => {
            if !dir.join("passport.pem").exists() {
                anyhow::bail!("no passport for {}; run `vouchsafe player passport` first", consumer.0);
            }
            if Passport::is_protected(&dir)? {
                anyhow::bail!("the passport of {} is already protected; nothing changed", consumer.0);
            }
            let Some(passphrase) = source.to_protect(&format!("the passport of {}", consumer.0))? else {
                anyhow::bail!("no passphrase: give --passphrase-file FILE (or run on a terminal to be asked); nothing changed");
            };
            Passport::protect(&dir, &passphrase)?;
            eprintln!("the passport of {} in {} is now protected by a passphrase", consumer.0, dir.display());
            Ok(Outcome::Done(serde_json::json!({ "consumer_id": consumer.0, "dir": dir, "protected": true })))
        }
        PlayerCommand::Preview { endpoint, preview, node } => match crate::player::play_preview_on(&mut node.connect(&endpoint).await?, &preview).await {
            Ok(clip) => Ok(Outcome::Done(serde_json::json!({ "preview_id": preview, "clip_bytes": clip.len() }))),
            Err(error) => rpc_refusal(error),
        },
    }
}
