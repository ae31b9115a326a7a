//! The read side over gRPC (issue 23): MerchantService's ListVouchers, ListOrders,
//! GetStatement, ListCatalog and SearchCatalog, and AdminService's GetLedger, ListParties and
//! GetAccountPoints. Each checks and converts its request (InvalidArgument naming the
//! field), waits a bounded time for the live projections to apply the stream as it stood
//! when the request came, reads one bounded page of an index (`projections::reads`, the
//! balances) and builds the answer. Nothing here appends. A merchant's reads take its id
//! from the front door's identity and read that merchant's index range only, so another
//! merchant's vouchers and sales are never in an answer.
//! Not here: the indexes and the queries over them (`projections::reads`), who may call
//! which service (`front_door`).

use super::api::*;
use crate::server::status;
use engine::domain::validate;
use engine::domain::voucher::{PurchaseSet, VoucherStatus};
use engine::ids::*;
use projections::balances::kind_name;
use projections::reads::{self, PartyKind, VoucherFilter};
use proto::v1 as pb;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Status;

/// Vouchers a page answers when the request names no limit.
pub const VOUCHER_PAGE_DEFAULT: usize = 50;
/// Media a catalog page answers when the request names no limit.
pub const CATALOG_PAGE_DEFAULT: usize = 50;
/// Orders a page answers when the request names no limit.
pub const ORDER_PAGE_DEFAULT: usize = 50;
/// Parties a page answers when the request names no limit.
pub const PARTY_PAGE_DEFAULT: usize = 100;
/// How long a read waits for the projections to apply what the stream held when it came
/// in (so a merchant sees the sale it just made); past it, the read answers from what is
/// applied.
pub const READ_CATCH_UP_MAX: Duration = Duration::from_secs(2);

fn limit(value: u32, default: usize, max: usize) -> Result<usize, Status> {
    match usize::try_from(value).unwrap_or(usize::MAX) {
        0 => Ok(default),
        requested if requested > max => Err(invalid("limit", &format!("must be at most {max}"))),
        requested => Ok(requested),
    }
}

/// A cursor as the caller handed it back: the hex of a page's `next`.
fn cursor(text: &str) -> Result<Option<Vec<u8>>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > 2 * reads::CURSOR_BYTES_MAX {
        return Err(status::bad_cursor());
    }
    hex::decode(text).map(Some).map_err(|_| status::bad_cursor())
}

fn next_cursor(next: Option<Vec<u8>>) -> String {
    next.map(hex::encode).unwrap_or_default()
}

const SETS: [(&str, PurchaseSet); 3] =
    [("pending", PurchaseSet::Pending), ("undelivered", PurchaseSet::PurchasedNotDelivered), ("delivered", PurchaseSet::Delivered)];

const LISTED_STATUSES: [VoucherStatus; 7] = [
    VoucherStatus::Pending,
    VoucherStatus::Authorized,
    VoucherStatus::Issued,
    VoucherStatus::Redeeming,
    VoucherStatus::Delivered,
    VoucherStatus::Voided,
    VoucherStatus::Refunded,
];

fn set_name(set: Option<PurchaseSet>) -> &'static str {
    SETS.iter().find(|(_, known)| Some(*known) == set).map_or("", |(name, _)| name)
}

fn filter_of(message: &pb::ListVouchersRequest) -> Result<VoucherFilter, Status> {
    let set = match message.set.as_str() {
        "" => None,
        name => Some(
            SETS.iter().find(|(known, _)| *known == name).map(|(_, set)| *set).ok_or_else(|| invalid("set", "must be pending, undelivered or delivered"))?,
        ),
    };
    let status = match message.status.as_str() {
        "" => None,
        name => Some(
            LISTED_STATUSES
                .into_iter()
                .find(|status| status.name() == name)
                .ok_or_else(|| invalid("status", "must be Pending, Authorized, Issued, Redeeming, Delivered, Voided or Refunded"))?,
        ),
    };
    if let (Some(set), Some(status)) = (set, status)
        && reads::set_of(status) != Some(set)
    {
        return Err(invalid("status", &format!("{} is not in the set {}", status.name(), set_name(Some(set)))));
    }
    Ok(VoucherFilter { set, status })
}

fn int64(value: i128, what: &str) -> Result<i64, Status> {
    i64::try_from(value).map_err(|_| status::figure_out_of_range(what))
}

fn statement_currency(currency: &str, line: &reads::StatementLine) -> Result<pb::StatementCurrency, Status> {
    let mut postings = Vec::with_capacity(line.postings.len());
    for (kind, totals) in &line.postings {
        postings.push(pb::PostingTotal {
            kind: kind_name(*kind).into(),
            debit_minor: totals.debit_minor,
            credit_minor: totals.credit_minor,
            net_minor: int64(totals.net_minor(), "a posting total")?,
        });
    }
    Ok(pb::StatementCurrency {
        currency: currency.to_string(),
        deliveries: line.deliveries,
        units: line.units,
        gross_minor: line.gross_minor,
        refunds: line.refunds,
        refunded_minor: line.refunded_minor,
        net_minor: int64(line.net_minor(), "the statement's net")?,
        sales: line.sales,
        sold_minor: line.sold_minor,
        reversals: line.reversals,
        reversed_minor: line.reversed_minor,
        points_sold: line.points_sold,
        postings,
    })
}

fn catalog_item(media_id: MediaId, listing: reads::Listing) -> pb::CatalogItem {
    pb::CatalogItem {
        media_id: media_id.0,
        title: listing.title,
        artist: listing.artist,
        price_minor: listing.price_minor,
        currency: listing.currency,
        renditions: listing.renditions,
        preview_available: listing.preview_ms > 0,
        preview_ms: listing.preview_ms,
        length_ms: listing.length_ms,
    }
}

impl Api {
    /// Waits (at most `READ_CATCH_UP_MAX`) until the live projections have applied the
    /// stream as it stands now.
    async fn read_caught_up(&self) -> Result<(), Status> {
        let head = self.state.log.last_seq().await.map_err(|error| status::stream_unreadable("the read", &error))?;
        let _ = tokio::time::timeout(READ_CATCH_UP_MAX, self.state.live.caught_up(head)).await;
        Ok(())
    }

    pub(super) async fn list_vouchers(&self, merchant: &MerchantId, message: &pb::ListVouchersRequest) -> Result<pb::VoucherPage, Status> {
        let filter = filter_of(message)?;
        let limit = limit(message.limit, VOUCHER_PAGE_DEFAULT, reads::VOUCHER_PAGE_MAX)?;
        let after = cursor(&message.cursor)?;
        self.read_caught_up().await?;
        let page = self.state.live.read(|p| p.reads.vouchers_of(&p.vouchers, merchant, filter, after.as_deref(), limit));
        Ok(pb::VoucherPage {
            vouchers: page
                .items
                .into_iter()
                .map(|item| pb::VoucherListItem {
                    voucher_id: item.voucher_id.0,
                    status: item.status.name().into(),
                    set: set_name(reads::set_of(item.status)).into(),
                    reserved_seq: item.reserved_seq,
                    expires_at_ms: item.expires_at.0,
                    media_delivered: item.media_delivered,
                })
                .collect(),
            next_cursor: next_cursor(page.next),
        })
    }

    pub(super) async fn list_orders(&self, merchant: &MerchantId, message: &pb::ListOrdersRequest) -> Result<pb::OrderPage, Status> {
        let limit = limit(message.limit, ORDER_PAGE_DEFAULT, reads::ORDER_PAGE_MAX)?;
        let after = cursor(&message.cursor)?.map(|bytes| String::from_utf8(bytes).map(OrderId).map_err(|_| status::bad_cursor())).transpose()?;
        self.read_caught_up().await?;
        let page = self.state.live.read(|p| p.reads.orders_of(merchant, after.as_ref(), limit));
        Ok(pb::OrderPage {
            orders: page
                .items
                .into_iter()
                .map(|(order_id, row)| pb::OrderView {
                    order_id: order_id.0,
                    media_id: row.media_id.0,
                    units: row.units,
                    units_bound: row.units_bound,
                    units_completed: row.units_completed,
                    price_per_unit_minor: row.price_per_unit_minor,
                    currency: row.currency,
                    placed_at_ms: row.placed_at_ms,
                })
                .collect(),
            next_cursor: next_cursor(page.next),
        })
    }

    pub(super) async fn statement(&self, merchant: &MerchantId, message: &pb::GetStatementRequest) -> Result<pb::StatementResponse, Status> {
        if !reads::is_period(&message.period) {
            return Err(invalid("period", "must be a calendar month, YYYY-MM"));
        }
        self.read_caught_up().await?;
        let statement = self.state.live.read(|p| p.reads.statement(merchant, &message.period));
        let mut currencies = Vec::with_capacity(statement.lines.len());
        for (currency, line) in &statement.lines {
            currencies.push(statement_currency(currency, line)?);
        }
        Ok(pb::StatementResponse { merchant_id: merchant.0.clone(), period: message.period.clone(), previews: statement.previews, currencies })
    }

    /// ListCatalog (`text` None) and SearchCatalog.
    pub(super) async fn catalog_page(&self, text: Option<&str>, cursor_text: &str, requested: u32) -> Result<pb::CatalogPage, Status> {
        if let Some(text) = text {
            validate::text("text", text, reads::SEARCH_TEXT_CHARS_MAX).map_err(|r| status::from_rejection(&r))?;
        }
        let limit = limit(requested, CATALOG_PAGE_DEFAULT, reads::CATALOG_PAGE_MAX)?;
        let after = cursor(cursor_text)?.map(|bytes| String::from_utf8(bytes).map(MediaId).map_err(|_| status::bad_cursor())).transpose()?;
        self.read_caught_up().await?;
        let page = self.state.live.read(|p| p.reads.catalog_page(text, after.as_ref(), limit));
        Ok(pb::CatalogPage {
            items: page.items.into_iter().map(|(media_id, listing)| catalog_item(media_id, listing)).collect(),
            next_cursor: next_cursor(page.next),
        })
    }

    pub(super) async fn ledger(&self) -> Result<pb::LedgerResponse, Status> {
        self.read_caught_up().await?;
        // Per currency and kind: the sum of the balances and how many accounts hold them.
        let (lines, sums, sum) = self.state.live.read(|p| {
            let mut lines: BTreeMap<(String, &'static str), (i128, u32)> = BTreeMap::new();
            for (account, balance) in &p.balances.ledger {
                let line = lines.entry((account.currency.clone(), kind_name(account.kind))).or_default();
                line.0 = line.0.saturating_add(*balance);
                line.1 = line.1.saturating_add(1);
            }
            let sums: Vec<(String, Option<i128>)> = p.balances.sums_by_currency().into_iter().map(|(currency, sum)| (currency.to_string(), sum)).collect();
            (lines, sums, p.balances.sum())
        });
        let mut answer = pb::LedgerResponse::default();
        for ((currency, kind), (balance, accounts)) in lines {
            answer.lines.push(pb::LedgerLine { currency, kind: kind.into(), balance_minor: int64(balance, "a ledger balance")?, accounts });
        }
        for (currency, sum) in sums {
            let sum = sum.ok_or_else(|| status::figure_out_of_range("a currency's ledger sum"))?;
            answer.sums.push(pb::LedgerSum { currency, sum_minor: int64(sum, "a currency's ledger sum")? });
        }
        answer.sum_minor = int64(sum.ok_or_else(|| status::figure_out_of_range("the ledger's sum"))?, "the ledger's sum")?;
        Ok(answer)
    }

    pub(super) async fn parties(&self, message: &pb::ListPartiesRequest) -> Result<pb::PartiesPage, Status> {
        let kind = match message.kind.as_str() {
            "" => None,
            name => Some(PartyKind::of_name(name).ok_or_else(|| invalid("kind", "must be merchant, node, auditor or certificate"))?),
        };
        let limit = limit(message.limit, PARTY_PAGE_DEFAULT, reads::PARTY_PAGE_MAX)?;
        let after = cursor(&message.cursor)?;
        self.read_caught_up().await?;
        let now = self.market().now();
        let page = self.state.live.read(|p| p.reads.parties_page(kind, after.as_deref(), limit));
        Ok(pb::PartiesPage {
            parties: page
                .items
                .into_iter()
                .map(|party| pb::PartyView {
                    kind: party.kind.name().into(),
                    status: party.status_at(now).into(),
                    id: party.id,
                    name: party.row.name,
                    region: party.row.region,
                    slots_max: party.row.slots_max,
                    consumer_id: party.consumer_id,
                    not_before_ms: party.row.not_before_ms,
                    not_after_ms: party.row.not_after_ms,
                })
                .collect(),
            next_cursor: next_cursor(page.next),
        })
    }

    pub(super) async fn account_points(&self, message: &pb::AccountPointsRequest) -> Result<pb::PointsBalanceResponse, Status> {
        let account = id("account_id", &message.account_id, AccountId)?;
        self.read_caught_up().await?;
        let points = self.state.live.read(|p| p.balances.points.get(&account).copied());
        let points = points.ok_or_else(|| status::from_rejection(&engine::domain::Rejection::NotFound { kind: "points account", id: account.0.clone() }))?;
        let points_u64 = |value: i128, what: &str| u64::try_from(value).map_err(|_| status::figure_out_of_range(what));
        Ok(pb::PointsBalanceResponse {
            balance: points_u64(points.balance, "the points balance")?,
            held: points_u64(points.held, "the points held")?,
            available: points_u64(points.available(), "the points available")?,
            account_id: account.0,
        })
    }
}
