//! The read commands (issue 23): `merchant list` and `merchant statement` (a merchant's
//! own vouchers and month), `catalog search|list` (what is on sale), and `admin ledger`,
//! `admin parties`, `admin points` (the operator's). Each calls one read RPC (a list
//! follows the cursors it is answered until it has `--limit` items or nothing follows)
//! and turns the answer into the `--json` object; the answers carry no secret.
//! Argument shapes live beside the commands they extend (`MerchantCommand`,
//! `AdminCommand`, `CatalogArgs` here).

use super::{ConnectArgs, Outcome, refused};
use crate::common::client;
use crate::common::cred::Credential;
use anyhow::Context;
use proto::v1 as pb;
use std::path::PathBuf;

/// Pages one list command reads at most (each a bounded read): a list with a rare filter
/// stops there and prints the cursor to go on from.
pub const LIST_PAGES_MAX: usize = 1_000;

/// The seed's three sets, as `merchant list --set` names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SetArg {
    /// Reserved, not paid yet.
    Pending,
    /// Paid, not delivered yet (authorized, issued, being redeemed).
    Undelivered,
    /// Delivered.
    Delivered,
}

impl SetArg {
    fn name(self) -> &'static str {
        match self {
            SetArg::Pending => "pending",
            SetArg::Undelivered => "undelivered",
            SetArg::Delivered => "delivered",
        }
    }
}

/// A `--period`: a calendar month, YYYY-MM.
pub fn parse_period(value: &str) -> Result<String, String> {
    if projections::reads::is_period(value) { Ok(value.to_string()) } else { Err(format!("{value:?} is not a calendar month YYYY-MM")) }
}

fn voucher_json(item: &pb::VoucherListItem) -> serde_json::Value {
    serde_json::json!({
        "voucher_id": item.voucher_id, "status": item.status, "set": item.set, "reserved_seq": item.reserved_seq,
        "expires_at_ms": item.expires_at_ms, "media_delivered": item.media_delivered,
    })
}

/// `merchant list`: the merchant's vouchers, newest first, up to `limit` of them.
pub async fn merchant_list(
    merchant: &mut client::MerchantClient,
    set: Option<SetArg>,
    status: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
) -> Result<serde_json::Value, tonic::Status> {
    let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut vouchers = Vec::new();
    let mut cursor = cursor.unwrap_or_default().to_string();
    for _ in 0..LIST_PAGES_MAX {
        let remaining = u32::try_from(wanted - vouchers.len()).unwrap_or(u32::MAX).min(projections::reads::VOUCHER_PAGE_MAX as u32);
        let request = pb::ListVouchersRequest {
            set: set.map(SetArg::name).unwrap_or_default().into(),
            status: status.unwrap_or_default().into(),
            limit: remaining,
            cursor: cursor.clone(),
        };
        let page = merchant.list_vouchers(request).await?.into_inner();
        vouchers.extend(page.vouchers.iter().map(voucher_json));
        cursor = page.next_cursor;
        if cursor.is_empty() || vouchers.len() >= wanted {
            break;
        }
    }
    Ok(serde_json::json!({ "set": set.map(SetArg::name), "status": status, "vouchers": vouchers, "next_cursor": cursor }))
}

/// `merchant statement`: one month's figures.
pub async fn merchant_statement(merchant: &mut client::MerchantClient, period: &str) -> Result<serde_json::Value, tonic::Status> {
    let statement = merchant.get_statement(pb::GetStatementRequest { period: period.to_string() }).await?.into_inner();
    let currencies: Vec<serde_json::Value> = statement
        .currencies
        .iter()
        .map(|line| {
            serde_json::json!({
                "currency": line.currency, "deliveries": line.deliveries, "units": line.units, "gross_minor": line.gross_minor,
                "refunds": line.refunds, "refunded_minor": line.refunded_minor, "net_minor": line.net_minor,
                "sales": line.sales, "sold_minor": line.sold_minor, "reversals": line.reversals, "reversed_minor": line.reversed_minor,
                "points_sold": line.points_sold,
                "postings": line.postings.iter().map(|p| serde_json::json!({
                    "kind": p.kind, "debit_minor": p.debit_minor, "credit_minor": p.credit_minor, "net_minor": p.net_minor,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(serde_json::json!({ "merchant_id": statement.merchant_id, "period": statement.period, "previews": statement.previews, "currencies": currencies }))
}

#[derive(clap::Subcommand, Debug)]
pub enum CatalogCommand {
    /// Media on sale whose title or artist contains TEXT (ignoring case).
    Search { text: String },
    /// Every media on sale.
    List,
}

#[derive(clap::Args, Debug)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub command: CatalogCommand,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The merchant's credential file (required).
    #[arg(long, global = true)]
    pub cred: Option<PathBuf>,
    /// At most this many media.
    #[arg(long, global = true, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Go on from a `next_cursor` an earlier answer printed.
    #[arg(long, global = true)]
    pub cursor: Option<String>,
    /// Print one JSON object on the last line of stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `catalog search|list`: the media on sale, with price, renditions and preview.
pub async fn catalog(args: CatalogArgs) -> anyhow::Result<Outcome> {
    let cred = args.cred.as_ref().context("--cred FILE (a merchant's credential) is required")?;
    let mut merchant = client::merchant(args.connect.channel().await?, Credential::load(cred)?);
    let wanted = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut cursor = args.cursor.clone().unwrap_or_default();
    for _ in 0..LIST_PAGES_MAX {
        let remaining = u32::try_from(wanted - items.len()).unwrap_or(u32::MAX).min(projections::reads::CATALOG_PAGE_MAX as u32);
        let answer = match &args.command {
            CatalogCommand::Search { text } => {
                merchant.search_catalog(pb::SearchCatalogRequest { text: text.clone(), cursor: cursor.clone(), limit: remaining }).await
            }
            CatalogCommand::List => merchant.list_catalog(pb::ListCatalogRequest { cursor: cursor.clone(), limit: remaining }).await,
        };
        let page = match answer {
            Ok(page) => page.into_inner(),
            Err(status) => return refused(status),
        };
        items.extend(page.items.iter().map(|item| {
            serde_json::json!({
                "media_id": item.media_id, "title": item.title, "artist": item.artist, "price_minor": item.price_minor,
                "currency": item.currency, "renditions": item.renditions, "preview_available": item.preview_available,
                "preview_ms": item.preview_ms, "length_ms": item.length_ms,
            })
        }));
        cursor = page.next_cursor;
        if cursor.is_empty() || items.len() >= wanted {
            break;
        }
    }
    Ok(Outcome::Done(serde_json::json!({ "items": items, "next_cursor": cursor })))
}

/// `admin ledger`: balances per currency and account kind, the sums (zero).
pub async fn admin_ledger(admin: &mut client::AdminClient) -> Result<serde_json::Value, tonic::Status> {
    let ledger = admin.get_ledger(pb::GetLedgerRequest {}).await?.into_inner();
    Ok(serde_json::json!({
        "lines": ledger.lines.iter().map(|line| serde_json::json!({
            "currency": line.currency, "kind": line.kind, "balance_minor": line.balance_minor, "accounts": line.accounts,
        })).collect::<Vec<_>>(),
        "sums": ledger.sums.iter().map(|sum| serde_json::json!({ "currency": sum.currency, "sum_minor": sum.sum_minor })).collect::<Vec<_>>(),
        "sum_minor": ledger.sum_minor,
    }))
}

/// The kinds of party `admin parties --kind` names.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PartyKindArg {
    Merchant,
    Node,
    Auditor,
    /// Consumers' and duplication devices' certificates.
    Certificate,
    /// Publisher accounts.
    Publisher,
}

impl PartyKindArg {
    pub fn name(self) -> &'static str {
        match self {
            PartyKindArg::Merchant => "merchant",
            PartyKindArg::Node => "node",
            PartyKindArg::Auditor => "auditor",
            PartyKindArg::Certificate => "certificate",
            PartyKindArg::Publisher => "publisher",
        }
    }
}

/// `admin parties`: every party (of a kind) with its status, up to `limit`.
pub async fn admin_parties(admin: &mut client::AdminClient, kind: Option<&str>, limit: u32, cursor: Option<&str>) -> Result<serde_json::Value, tonic::Status> {
    let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut parties = Vec::new();
    let mut cursor = cursor.unwrap_or_default().to_string();
    for _ in 0..LIST_PAGES_MAX {
        let remaining = u32::try_from(wanted - parties.len()).unwrap_or(u32::MAX).min(projections::reads::PARTY_PAGE_MAX as u32);
        let request = pb::ListPartiesRequest { kind: kind.unwrap_or_default().into(), cursor: cursor.clone(), limit: remaining };
        let page = admin.list_parties(request).await?.into_inner();
        parties.extend(page.parties.iter().map(|party| {
            serde_json::json!({
                "kind": party.kind, "id": party.id, "name": party.name, "status": party.status, "region": party.region,
                "slots_max": party.slots_max, "consumer_id": party.consumer_id, "not_before_ms": party.not_before_ms,
                "not_after_ms": party.not_after_ms,
            })
        }));
        cursor = page.next_cursor;
        if cursor.is_empty() || parties.len() >= wanted {
            break;
        }
    }
    Ok(serde_json::json!({ "parties": parties, "next_cursor": cursor }))
}

/// `admin points --account`: one points account.
pub async fn admin_points(admin: &mut client::AdminClient, account: &str) -> Result<serde_json::Value, tonic::Status> {
    let points = admin.get_account_points(pb::AccountPointsRequest { account_id: account.to_string() }).await?.into_inner();
    Ok(serde_json::json!({ "account_id": points.account_id, "balance": points.balance, "held": points.held, "available": points.available }))
}
