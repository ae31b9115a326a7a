//! The console's pages. Each admits its roles (`Console::admit`), makes the read the gRPC
//! RPC of the same figures makes (the `Api` functions behind GetStats, Totals, GetLedger,
//! ListParties, ListCatalog/SearchCatalog, ListVouchers, GetVoucher and GetStatement),
//! and renders the answer; a read's refusal (a bad period, set or cursor) is shown with
//! the RPC's own message. Query parameters are those of the RPC requests.
//! Not here: sign-in and sessions (`super`), the HTML pieces (`view`).

use super::view::{bar_chart, figure, layout, net, totals_table, utc_text};
use super::{Console, Page, html_response, status_page};
use crate::server::api::{id, voucher_view};
use crate::server::front_door::Identity;
use axum::extract::{Query, State};
use axum::response::Response;
use engine::ids::{MerchantId, VoucherId};
use http::{HeaderMap, StatusCode};
use maud::{Markup, html};
use proto::v1 as pb;
use std::sync::Arc;

/// Items a console page lists (one page of the read).
pub const PAGE_ITEMS: u32 = 50;

/// The query parameters pages take (each page reads those it needs).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Params {
    q: Option<String>,
    cursor: Option<String>,
    merchant: Option<String>,
    id: Option<String>,
    set: Option<String>,
    status: Option<String>,
    period: Option<String>,
}

macro_rules! admit {
    ($console:expr, $headers:expr, $page:expr) => {
        match $console.admit(&$headers, $page).await {
            Ok(identity) => identity,
            Err(response) => return response,
        }
    };
}

macro_rules! read {
    ($identity:expr, $read:expr) => {
        match $read {
            Ok(answer) => answer,
            Err(status) => return status_page(Some(&$identity), &status),
        }
    };
}

fn page(identity: &Identity, current: Page, refresh: bool, body: Markup) -> Response {
    html_response(StatusCode::OK, layout(current.title(), Some(identity), Some(current), refresh, body))
}

fn uptime_text(seconds: u64) -> String {
    format!("{}h {:02}m {:02}s", seconds / 3600, seconds % 3600 / 60, seconds % 60)
}

fn this_month() -> String {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    projections::royalty_log::month_of(i64::try_from(now_ms).unwrap_or(i64::MAX))
}

fn next_link(path: &str, params: &[(&str, &str)], next_cursor: &str) -> Markup {
    let query: Vec<String> = params
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .chain([("cursor", next_cursor)].iter())
        .map(|(key, value)| format!("{key}={}", url_encode(value)))
        .collect();
    html! { @if !next_cursor.is_empty() { p { a data-next="" href=(format!("{path}?{}", query.join("&"))) { "next page →" } } } }
}

fn url_encode(text: &str) -> String {
    text.bytes().map(|byte| if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) { (byte as char).to_string() } else { format!("%{byte:02X}") }).collect()
}

pub(super) async fn overview(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let identity = admit!(console, headers, Page::Overview);
    let stats = read!(identity, console.api.stats().await);
    let totals = console.api.totals_now();
    let healthy = stats.nodes.iter().filter(|node| node.healthy).count();
    let sets = [
        ("pending".to_string(), i128::from(stats.vouchers_pending)),
        ("paid, not delivered".to_string(), i128::from(stats.vouchers_undelivered)),
        ("delivered".to_string(), i128::from(stats.vouchers_delivered)),
    ];
    let body = html! {
        h1 { "Overview" }
        h2 { "The three sets" }
        div.figures {
            (figure("vouchers_pending", "pending (reserved, not paid)", stats.vouchers_pending))
            (figure("vouchers_undelivered", "paid, not delivered", stats.vouchers_undelivered))
            (figure("vouchers_delivered", "delivered", stats.vouchers_delivered))
        }
        (bar_chart("sets", "vouchers per set", &sets))
        h2 { "The engine" }
        div.figures {
            (figure("events_per_s", "events/s (last minute)", format!("{:.1}", stats.events_per_s)))
            (figure("projection_lag", "projection lag (events)", stats.projection_lag))
            (figure("stream_events", "stream head (sequence)", stats.stream_events))
            (figure("uptime", "uptime", uptime_text(stats.uptime_s)))
            (figure("nodes_healthy", "nodes healthy", format!("{healthy} of {}", stats.nodes.len())))
        }
        h2 { "The royalty log" }
        div.figures {
            (figure("royalty_entries", "royalty entries", stats.royalty_entries))
            (figure("seals", "seals", stats.seals))
            (figure("seals_verified", "seals verified", totals.seals_verified))
        }
        h2 { "Keys and certificates" }
        div.figures {
            (figure("engine_key_id", "engine key signing now", &stats.engine_key_id))
            (figure("engine_keys", "engine keys in the set", stats.engine_key_ids.len()))
            (figure("certificates_issued", "consumer certificates issued", stats.certificates_issued))
            (figure("certificates_revoked", "revoked", stats.certificates_revoked))
            (figure("certificates_expired", "expired (not revoked)", stats.certificates_expired))
        }
        @if let Some(seal) = totals.newest_seals.first() {
            p.note { "newest seal " code data-figure="newest_seal_hash" { (hex::encode(&seal.seal_hash)) } " at " (utc_text(seal.sealed_at_ms)) }
        }
    };
    page(&identity, Page::Overview, true, body)
}

pub(super) async fn nodes(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let identity = admit!(console, headers, Page::Nodes);
    let stats = read!(identity, console.api.stats().await);
    let body = html! {
        h1 { "Delivery nodes" }
        table {
            tr { th { "node" } th { "region" } th { "status" } th { "health" } th { "slots in use" } th { "slots licensed" } th { "cache items" } th { "cache accesses" } th { "cache misses" } th { "endpoint" } }
            @for node in &stats.nodes {
                tr data-row=(format!("node/{}", node.node_id)) {
                    td data-col="node_id" { code { (node.node_id) } }
                    td data-col="region" { (node.region) }
                    td data-col="status" { (node.status) }
                    td data-col="health" class=(if node.healthy { "ok" } else { "bad" }) { (if node.healthy { "healthy" } else { "silent" }) }
                    td.n data-col="streams_in_use" { (node.streams_in_use) }
                    td.n data-col="streams_max" { (node.streams_max) }
                    td.n data-col="cache_items" { (node.cache_items) }
                    td.n data-col="cache_accesses" { (node.cache_accesses) }
                    td.n data-col="cache_misses" { (node.cache_misses) }
                    td data-col="endpoint" { (node.endpoint) }
                }
            }
        }
        (bar_chart("slots", "slots in use", &stats.nodes.iter().map(|node| (node.node_id.clone(), i128::from(node.streams_in_use))).collect::<Vec<_>>()))
    };
    page(&identity, Page::Nodes, true, body)
}

pub(super) async fn catalog(State(console): State<Arc<Console>>, headers: HeaderMap, Query(params): Query<Params>) -> Response {
    let identity = admit!(console, headers, Page::Catalog);
    let text = params.q.as_deref().filter(|text| !text.is_empty());
    let cursor = params.cursor.unwrap_or_default();
    let catalog = read!(identity, console.api.catalog_page(text, &cursor, PAGE_ITEMS).await);
    let body = html! {
        h1 { "Catalog (on sale)" }
        form.inline method="get" action="/catalog" { input type="text" name="q" value=[text] placeholder="title or artist"; button type="submit" { "search" } }
        table {
            tr { th { "media" } th { "title" } th { "artist" } th { "price (minor)" } th { "currency" } th { "renditions" } th { "preview (ms)" } th { "length (ms)" } }
            @for item in &catalog.items {
                tr data-row=(format!("media/{}", item.media_id)) {
                    td data-col="media_id" { code { (item.media_id) } }
                    td data-col="title" { (item.title) }
                    td data-col="artist" { (item.artist) }
                    td.n data-col="price_minor" { (item.price_minor) }
                    td data-col="currency" { (item.currency) }
                    td data-col="renditions" { (item.renditions.join(", ")) }
                    td.n data-col="preview_ms" { (item.preview_ms) }
                    td.n data-col="length_ms" { (item.length_ms) }
                }
            }
        }
        (next_link("/catalog", &[("q", text.unwrap_or_default())], &catalog.next_cursor))
    };
    page(&identity, Page::Catalog, false, body)
}

pub(super) async fn merchants(State(console): State<Arc<Console>>, headers: HeaderMap, Query(params): Query<Params>) -> Response {
    let identity = admit!(console, headers, Page::Merchants);
    let request = pb::ListPartiesRequest { kind: "merchant".into(), cursor: params.cursor.unwrap_or_default(), limit: PAGE_ITEMS };
    let parties = read!(identity, console.api.parties(&request).await);
    let totals = console.api.totals_now();
    let sales = |merchant: &str| totals.lines.iter().find(|line| line.dimension == "Merchant" && line.key == merchant).cloned().unwrap_or_default();
    let month = this_month();
    let body = html! {
        h1 { "Merchants" }
        p.note { "Sales are the royalty totals by merchant (deliveries and units, gross, refunds, net); the statement is the merchant's month." }
        table {
            tr { th { "merchant" } th { "name" } th { "status" } th { "deliveries" } th { "units" } th { "gross (minor)" } th { "refunds" } th { "net (minor)" } th { "" } }
            @for party in &parties.parties {
                @let line = sales(&party.id);
                tr data-row=(format!("merchant/{}", party.id)) {
                    td data-col="merchant_id" { code { (party.id) } }
                    td data-col="name" { (party.name) }
                    td data-col="status" { (party.status) }
                    td.n data-col="deliveries" { (line.deliveries) }
                    td.n data-col="units" { (line.units) }
                    td.n data-col="amount_minor" { (line.amount_minor) }
                    td.n data-col="refunds" { (line.refunds) }
                    td.n data-col="net_minor" { (net(&line)) }
                    td {
                        a href=(format!("/statement?merchant={}&period={month}", url_encode(&party.id))) { "statement" } " · "
                        a href=(format!("/vouchers?merchant={}", url_encode(&party.id))) { "vouchers" }
                    }
                }
            }
        }
        (next_link("/merchants", &[], &parties.next_cursor))
    };
    page(&identity, Page::Merchants, false, body)
}

/// The merchant a page is about: a merchant's own (whatever the query says); for the
/// operator, the `merchant` parameter (checked as the RPCs check ids), if any.
fn merchant_of(identity: &Identity, params: &Params) -> Result<Option<MerchantId>, tonic::Status> {
    match identity {
        Identity::Merchant(merchant) => Ok(Some(merchant.clone())),
        _ => params.merchant.as_deref().filter(|id| !id.is_empty()).map(|merchant| id("merchant_id", merchant, MerchantId)).transpose(),
    }
}

fn merchant_picker(path: &str, extra: &[(&str, &str)]) -> Markup {
    html! {
        form.inline method="get" action=(path) {
            input type="text" name="merchant" placeholder="merchant id";
            @for (name, value) in extra { input type="hidden" name=(name) value=(value); }
            button type="submit" { "show" }
        }
        p.note { "The merchants are listed on " a href="/merchants" { "Merchants" } "." }
    }
}

pub(super) async fn vouchers(State(console): State<Arc<Console>>, headers: HeaderMap, Query(params): Query<Params>) -> Response {
    let identity = admit!(console, headers, Page::Vouchers);
    let merchant = read!(identity, merchant_of(&identity, &params));
    let find = html! {
        form.inline method="get" action="/vouchers" {
            input type="text" name="id" placeholder="voucher id";
            @if let (Identity::Operator(_), Some(merchant)) = (&identity, &merchant) { input type="hidden" name="merchant" value=(merchant.0); }
            button type="submit" { "find" }
        }
    };
    if let Some(voucher_id) = params.id.as_deref().filter(|id| !id.is_empty()) {
        let voucher_id = read!(identity, id("voucher_id", voucher_id, VoucherId));
        // A merchant's find is GetVoucher's (another's voucher answers as an unknown one);
        // the operator reads any.
        let state = match &identity {
            Identity::Merchant(merchant) => read!(identity, console.api.market().get_voucher(merchant, &voucher_id).await.map_err(crate::server::api::fail)),
            _ => read!(identity, console.api.any_voucher(&voucher_id).await),
        };
        let endpoint = state.node.as_ref().and_then(|node| console.api.state.nodes.endpoint(node)).unwrap_or_default();
        let view = voucher_view(&state, endpoint);
        let body = html! {
            h1 { "Voucher " code { (view.voucher_id) } }
            (find)
            table {
                tr { th { "merchant" } td data-figure="merchant_id" { (view.merchant_id) } }
                tr { th { "status" } td data-figure="status" { (view.status) } }
                tr { th { "media" } td data-figure="media_ids" { (view.media_ids.join(", ")) } }
                tr { th { "delivered media" } td data-figure="delivered_media_ids" { (view.delivered_media_ids.join(", ")) } }
                tr { th { "node" } td data-figure="node_id" { (view.node_id) } }
                tr { th { "expires at" } td data-figure="expires_at" { (utc_text(view.expires_at_ms)) } }
            }
        };
        return page(&identity, Page::Vouchers, false, body);
    }
    let Some(merchant) = merchant else {
        return page(&identity, Page::Vouchers, false, html! { h1 { "Vouchers" } (find) (merchant_picker("/vouchers", &[])) });
    };
    let set = params.set.unwrap_or_default();
    let status = params.status.unwrap_or_default();
    let request = pb::ListVouchersRequest { set: set.clone(), status: status.clone(), limit: PAGE_ITEMS, cursor: params.cursor.unwrap_or_default() };
    let list = read!(identity, console.api.list_vouchers(&merchant, &request).await);
    let merchant_param = if matches!(identity, Identity::Operator(_)) { merchant.0.as_str() } else { "" };
    let body = html! {
        h1 { "Vouchers of " code data-figure="merchant" { (merchant.0) } }
        (find)
        p {
            @for (name, label) in [("", "all"), ("pending", "pending"), ("undelivered", "paid, not delivered"), ("delivered", "delivered")] {
                @let href = if merchant_param.is_empty() { format!("/vouchers?set={name}") } else { format!("/vouchers?merchant={}&set={name}", url_encode(merchant_param)) };
                a href=(href) class=[(set == name).then_some("ok")] { (label) } " "
            }
        }
        table {
            tr { th { "voucher" } th { "status" } th { "set" } th { "reserved at (sequence)" } th { "expires" } th { "media delivered" } }
            @for voucher in &list.vouchers {
                tr data-row=(format!("voucher/{}", voucher.voucher_id)) {
                    td data-col="voucher_id" { code { (voucher.voucher_id) } }
                    td data-col="status" { (voucher.status) }
                    td data-col="set" { (voucher.set) }
                    td.n data-col="reserved_seq" { (voucher.reserved_seq) }
                    td data-col="expires_at" { (utc_text(voucher.expires_at_ms)) }
                    td.n data-col="media_delivered" { (voucher.media_delivered) }
                }
            }
        }
        (next_link("/vouchers", &[("merchant", merchant_param), ("set", &set), ("status", &status)], &list.next_cursor))
    };
    page(&identity, Page::Vouchers, false, body)
}

pub(super) async fn statement(State(console): State<Arc<Console>>, headers: HeaderMap, Query(params): Query<Params>) -> Response {
    let identity = admit!(console, headers, Page::Statement);
    let merchant = read!(identity, merchant_of(&identity, &params));
    let period = params.period.clone().filter(|period| !period.is_empty()).unwrap_or_else(this_month);
    let Some(merchant) = merchant else {
        return page(&identity, Page::Statement, false, html! { h1 { "Statement" } (merchant_picker("/statement", &[("period", &period)])) });
    };
    let statement = read!(identity, console.api.statement(&merchant, &pb::GetStatementRequest { period: period.clone() }).await);
    let body = html! {
        h1 { "Statement of " code data-figure="merchant" { (statement.merchant_id) } " for " span data-figure="period" { (statement.period) } }
        form.inline method="get" action="/statement" {
            @if matches!(identity, Identity::Operator(_)) { input type="hidden" name="merchant" value=(merchant.0); }
            input type="text" name="period" value=(period) placeholder="YYYY-MM";
            button type="submit" { "show" }
        }
        div.figures { (figure("previews", "previews", statement.previews)) }
        @for line in &statement.currencies {
            h2 { (line.currency) }
            table {
                tr { th { "figure" } th { "value" } }
                @for (name, value) in [
                    ("sales", i128::from(line.sales)), ("sold_minor", i128::from(line.sold_minor)), ("deliveries", i128::from(line.deliveries)),
                    ("units", i128::from(line.units)), ("gross_minor", i128::from(line.gross_minor)), ("refunds", i128::from(line.refunds)),
                    ("refunded_minor", i128::from(line.refunded_minor)), ("net_minor", i128::from(line.net_minor)), ("reversals", i128::from(line.reversals)),
                    ("reversed_minor", i128::from(line.reversed_minor)), ("points_sold", i128::from(line.points_sold)),
                ] {
                    tr data-row=(format!("{}/{name}", line.currency)) { td { (name.replace('_', " ")) } td.n data-col="value" { (value) } }
                }
            }
            table {
                tr { th { "postings by account kind" } th { "debit (minor)" } th { "credit (minor)" } th { "net (minor)" } }
                @for posting in &line.postings {
                    tr data-row=(format!("{}/posting/{}", line.currency, posting.kind)) {
                        td { (posting.kind) }
                        td.n data-col="debit_minor" { (posting.debit_minor) }
                        td.n data-col="credit_minor" { (posting.credit_minor) }
                        td.n data-col="net_minor" { (posting.net_minor) }
                    }
                }
            }
        }
        @if statement.currencies.is_empty() { p.note { "no sales in this month" } }
    };
    page(&identity, Page::Statement, false, body)
}

pub(super) async fn royalty(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let identity = admit!(console, headers, Page::Royalty);
    let totals = console.api.totals_now();
    let chain = if totals.seal_faults == 0 {
        html! { span.ok data-figure="chain" { "chain verified up to seal " (totals.seals_verified) } }
    } else {
        html! { span.bad data-figure="chain" { (totals.seal_faults) " seals do not match the chain" } }
    };
    let body = html! {
        h1 { "Royalty log" }
        div.figures {
            (figure("royalty_entries", "entries", totals.royalty_entries))
            (figure("seals", "seals", totals.seals))
            (figure("seals_verified", "seals verified", totals.seals_verified))
            (figure("unsealed", "entries not yet sealed", totals.royalty_entries.saturating_sub(totals.newest_seals.first().map_or(0, |seal| seal.last_entry + 1))))
        }
        p { (chain) " (each seal checked against the chain as the engine applied it: signature, link, range, stream head, Merkle root, usage digest)" }
        h2 { "Newest seals" }
        table {
            tr { th { "seal" } th { "hash" } th { "sealed at" } th { "entries" } th { "stream up to" } }
            @for seal in &totals.newest_seals {
                tr data-row=(format!("seal/{}", seal.index + 1)) {
                    td.n data-col="number" { (seal.index + 1) }
                    td data-col="hash" { code { (hex::encode(&seal.seal_hash)) } }
                    td data-col="sealed_at" { (utc_text(seal.sealed_at_ms)) }
                    td data-col="entries" { (seal.first_entry) "–" (seal.last_entry) }
                    td.n data-col="last_stream_seq" { (seal.last_stream_seq) }
                }
            }
        }
        h2 { "Newest checkpoint" }
        @match totals.newest_seals.first().map(|seal| seal.checkpoint_note.as_str()).filter(|note| !note.is_empty()) {
            Some(note) => {
                p { "The newest seal as a C2SP checkpoint, signed with the log's Ed25519 key (" code { "checkpoint.vkey" } "):" }
                pre data-figure="newest_checkpoint" { (note) }
            }
            None => p.note { "No seal carries a checkpoint yet." }
        }
        p.note { "An auditor verifies independently with " code { "vouchsafe audit replay --connect URL --cred auditor.cred" } "." }
    };
    page(&identity, Page::Royalty, false, body)
}

pub(super) async fn totals(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let identity = admit!(console, headers, Page::Totals);
    let totals = console.api.totals_now();
    let body = html! {
        h1 { "Royalty totals" }
        @for (dimension, prefix, title) in [("Artist", "artist", "By artist"), ("Merchant", "merchant", "By merchant"), ("Period", "month", "By month")] {
            @let lines: Vec<&pb::TotalsLine> = totals.lines.iter().filter(|line| line.dimension == dimension).collect();
            h2 { (title) }
            (bar_chart(prefix, &format!("net (minor units) {}", title.to_lowercase()), &lines.iter().map(|line| (line.key.clone(), net(line))).collect::<Vec<_>>()))
            (totals_table(prefix, prefix, &lines))
        }
    };
    page(&identity, Page::Totals, false, body)
}

pub(super) async fn ledger(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let identity = admit!(console, headers, Page::Ledger);
    let ledger = read!(identity, console.api.ledger().await);
    let body = html! {
        h1 { "Ledger" }
        div.figures { (figure("sum_minor", "sum of every balance (zero)", ledger.sum_minor)) }
        table {
            tr { th { "currency" } th { "account kind" } th { "balance (minor)" } th { "accounts" } }
            @for line in &ledger.lines {
                tr data-row=(format!("{}/{}", line.currency, line.kind)) {
                    td { (line.currency) } td { (line.kind) }
                    td.n data-col="balance_minor" { (line.balance_minor) }
                    td.n data-col="accounts" { (line.accounts) }
                }
            }
        }
        h2 { "Sums per currency" }
        table {
            tr { th { "currency" } th { "sum (minor)" } }
            @for sum in &ledger.sums { tr data-row=(format!("sum/{}", sum.currency)) { td { (sum.currency) } td.n data-col="sum_minor" { (sum.sum_minor) } } }
        }
        (bar_chart("ledger", "balances by account kind", &ledger.lines.iter().map(|line| (format!("{} {}", line.currency, line.kind), i128::from(line.balance_minor))).collect::<Vec<_>>()))
    };
    page(&identity, Page::Ledger, false, body)
}
