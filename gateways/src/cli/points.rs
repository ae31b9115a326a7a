//! `vouchsafe points top-up`: credit a certified consumer's points account, as the
//! operator (CatalogService.TopUpPoints) or as a merchant that sold the points and took
//! the payment (MerchantService.SellPoints, settled from its clearing account). The
//! credential file says which.

use super::{ConnectArgs, Outcome, fresh_request_id, refused};
use crate::common::client;
use crate::common::cred::Credential;
use anyhow::{Context, bail};
use proto::v1 as pb;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum PointsCommand {
    /// Credit a consumer's points account.
    TopUp {
        /// The consumer id (a points account belongs to a certified consumer).
        #[arg(long)]
        account: String,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        amount: u64,
        /// Free text kept with the credit (an invoice number, a campaign).
        #[arg(long)]
        reference: Option<String>,
        /// With a merchant's credential: the currency the consumer paid in (one point per
        /// minor unit).
        #[arg(long)]
        currency: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct PointsArgs {
    #[command(subcommand)]
    pub command: PointsCommand,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The operator's credential, or a merchant's (it sold the points).
    #[arg(long, global = true)]
    pub cred: Option<PathBuf>,
    /// Request id (a retry with the same id credits once); a fresh one when absent.
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// Print one JSON object on the last line of stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

pub async fn points(args: PointsArgs) -> anyhow::Result<Outcome> {
    let cred = args.cred.as_ref().context("--cred FILE (the operator's or a merchant's credential) is required")?;
    let credential = Credential::load(cred)?;
    let request_id = args.request_id.clone().unwrap_or_else(|| fresh_request_id("points"));
    let PointsCommand::TopUp { account, amount, reference, currency } = &args.command;
    let sold_by_merchant = credential.id.starts_with('m');
    if !sold_by_merchant && currency.is_some() {
        bail!("--currency is for a merchant selling points; the operator's credit has none");
    }
    let request = pb::TopUpPointsRequest {
        request_id,
        account_id: account.clone(),
        amount: *amount,
        reference: reference.clone().unwrap_or_default(),
        currency: currency.clone().unwrap_or_default(),
    };
    let channel = args.connect.channel().await?;
    let answer = if sold_by_merchant {
        if currency.is_none() {
            bail!("--currency CODE is required when a merchant sells points (the currency the consumer paid in)");
        }
        client::merchant(channel, credential.clone()).sell_points(request).await
    } else {
        client::catalog(channel, credential.clone()).top_up_points(request).await
    };
    match answer {
        Ok(answer) => Ok(Outcome::Done(serde_json::json!({
            "account_id": account, "credited": amount, "available": answer.into_inner().balance,
            "by": if sold_by_merchant { "merchant" } else { "operator" }, "credential_id": credential.id,
        }))),
        Err(status) => refused(status),
    }
}
