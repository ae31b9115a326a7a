//! The read side against a real engine over gRPC (issue 23 items 1 and 3): a merchant's
//! vouchers in the right sets and pages, another merchant's ids answering as unknown ones
//! (control: the owner reads them), statements equal to the royalty totals and, summed
//! over merchants, to the ledger, a refund after delivery in the statement, catalog search
//! by title and artist that hides withdrawn media, and the operator's ledger (zero sum),
//! parties and points accounts.

mod support;

use engine::crypto::RsaPrivate;
use gateways::common::client;
use proto::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use support::sale::{Named, confirm, credential, proof, reserve_request, upload};
use tonic::Code;

/// Every page of the caller's list, cursor after cursor.
async fn every_voucher(merchant: &mut client::MerchantClient, set: &str, status: &str, limit: u32) -> Vec<pb::VoucherListItem> {
    let (mut items, mut cursor) = (Vec::new(), String::new());
    loop {
        let request = pb::ListVouchersRequest { set: set.into(), status: status.into(), limit, cursor: cursor.clone() };
        let page = merchant.list_vouchers(request).await.expect("list").into_inner();
        assert!(page.vouchers.len() <= limit as usize);
        items.extend(page.vouchers);
        if page.next_cursor.is_empty() {
            return items;
        }
        cursor = page.next_cursor;
    }
}

fn ids(items: &[pb::VoucherListItem]) -> Vec<String> {
    items.iter().map(|item| item.voucher_id.clone()).collect()
}

fn this_month() -> String {
    let now_ms = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis()).expect("ms");
    projections::royalty_log::month_of(now_ms)
}

/// The ledger as GetLedger answers it, by (currency, kind).
fn ledger_lines(ledger: &pb::LedgerResponse) -> BTreeMap<(String, String), i64> {
    ledger.lines.iter().filter(|line| line.balance_minor != 0).map(|line| ((line.currency.clone(), line.kind.clone()), line.balance_minor)).collect()
}

/// The statements of `merchants` for `period`, their postings' net summed by (currency, kind).
async fn statement_postings(merchants: &mut [client::MerchantClient], period: &str) -> BTreeMap<(String, String), i64> {
    let mut sums: BTreeMap<(String, String), i64> = BTreeMap::new();
    for merchant in merchants {
        let statement = merchant.get_statement(pb::GetStatementRequest { period: period.into() }).await.expect("statement").into_inner();
        for line in statement.currencies {
            for posting in line.postings {
                *sums.entry((line.currency.clone(), posting.kind)).or_default() += posting.net_minor;
            }
        }
    }
    sums.retain(|_, net| *net != 0);
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_read_their_own_business_and_the_operator_reads_everything() {
    let fx = support::start().await;
    let mut catalog = client::catalog(fx.channel.clone(), fx.operator.clone());
    let mut admin = client::admin(fx.channel.clone(), fx.operator.clone());
    let a = credential(catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "merchant-a".into(), name: "Shop A".into() }).await);
    let b = credential(catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "merchant-b".into(), name: "Shop B".into() }).await);
    let node = credential(
        catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "node-1".into(), region: "eu".into(), slots_max: 16 }).await,
    );
    client::delivery(fx.channel.clone(), node.clone())
        .register_node(pb::RegisterNodeRequest { region: String::new(), slots_max: 0, endpoint: "http://127.0.0.1:1".into() })
        .await
        .expect("the node announces itself");
    let publish = async |catalog: &mut client::CatalogClient, request_id: &str, title: &str, artist: &str| {
        let upload = client::Upload { artist: artist.into(), ..upload(title) };
        client::publish(catalog, request_id, &fx.engine_public, upload).await.expect("publish").media_id
    };
    let monday = publish(&mut catalog, "media-1", "Blue Monday", "New Order").await;
    let ceremony = publish(&mut catalog, "media-2", "Ceremony", "New Order").await;
    let spare = publish(&mut catalog, "media-3", "Spare Song", "Someone Else").await;
    let key = tokio::task::spawn_blocking(|| RsaPrivate::generate(2048)).await.expect("task").expect("rsa");
    let der = key.public().to_der().expect("der");
    let alice_serial = catalog
        .certify_consumer(pb::CertifyConsumerRequest {
            request_id: "cert-alice".into(),
            consumer_id: "alice".into(),
            public_key_der: der.clone(),
            validity_ms: 86_400_000,
        })
        .await
        .expect("certify")
        .into_inner()
        .cert_serial;
    fx.settle().await;

    // A: a delivered sale, an issued one, two reservations and a voided one; B: one sale.
    let mut merchant_a = client::merchant(fx.channel.clone(), a.clone());
    let mut merchant_b = client::merchant(fx.channel.clone(), b.clone());
    let delivered = client::buy(&mut merchant_a, "a-1", std::slice::from_ref(&monday), None).await.expect("buy");
    let alice = Named { consumer: "alice", cert_serial: &alice_serial, public_key_der: &der };
    let mut delivery = client::delivery(fx.channel.clone(), node.clone());
    let redeem = pb::RedeemRequest {
        request_id: "a-1-redeem".into(),
        voucher_id: delivered.voucher_id.clone(),
        cert_serial: alice_serial.clone(),
        consumer_id: "alice".into(),
        proof: proof(&delivered.receipt, &delivered.voucher_id, &node.id, &[9; 32], &alice),
        challenge: vec![9; 32],
        recover: false,
    };
    delivery.redeem(redeem).await.expect("alice redeems");
    let complete = pb::CompleteDeliveryRequest {
        request_id: "a-1-complete".into(),
        voucher_id: delivered.voucher_id.clone(),
        media_id: monday.clone(),
        content_hash: vec![1; 32],
        size_bytes: 20_000,
        confirm_proof: confirm(&delivered.receipt, &delivered.voucher_id, &node.id, &monday, &[1; 32], &alice),
    };
    delivery.complete_delivery(complete).await.expect("delivered");
    let issued = client::buy(&mut merchant_a, "a-2", std::slice::from_ref(&ceremony), None).await.expect("buy");
    let pending_1 = merchant_a.reserve(reserve_request("a-3", &monday)).await.expect("reserve").into_inner().voucher_id;
    let pending_2 = merchant_a.reserve(reserve_request("a-4", &ceremony)).await.expect("reserve").into_inner().voucher_id;
    let voided = merchant_a.reserve(reserve_request("a-5", &monday)).await.expect("reserve").into_inner().voucher_id;
    merchant_a.void(pb::VoidRequest { request_id: "a-5-void".into(), voucher_id: voided.clone() }).await.expect("void");
    let b_sale = client::buy(&mut merchant_b, "b-1", std::slice::from_ref(&ceremony), None).await.expect("buy");
    fx.settle().await;

    // A's list: all of A's vouchers and none of B's, newest first, two to a page.
    let all = every_voucher(&mut merchant_a, "", "", 2).await;
    assert_eq!(ids(&all), [&voided, &pending_2, &pending_1, &issued.voucher_id, &delivered.voucher_id].map(String::clone), "newest first");
    assert!(all.windows(2).all(|pair| pair[0].reserved_seq > pair[1].reserved_seq));
    assert_eq!(ids(&every_voucher(&mut merchant_a, "pending", "", 1).await), [&pending_2, &pending_1].map(String::clone));
    assert_eq!(ids(&every_voucher(&mut merchant_a, "undelivered", "", 10).await), std::slice::from_ref(&issued.voucher_id));
    let delivered_set = every_voucher(&mut merchant_a, "delivered", "", 10).await;
    assert_eq!((ids(&delivered_set), delivered_set[0].media_delivered, delivered_set[0].set.as_str()), (vec![delivered.voucher_id.clone()], 1, "delivered"));
    assert_eq!(ids(&every_voucher(&mut merchant_a, "", "Voided", 10).await), std::slice::from_ref(&voided));
    // B sees its own only; A's ids answer B exactly as made-up ids do (control: A reads them).
    assert_eq!(ids(&every_voucher(&mut merchant_b, "", "", 10).await), std::slice::from_ref(&b_sale.voucher_id));
    let unknown = merchant_b.get_voucher(pb::GetVoucherRequest { voucher_id: "v0unknown".into() }).await.expect_err("unknown");
    let foreign = merchant_b.get_voucher(pb::GetVoucherRequest { voucher_id: delivered.voucher_id.clone() }).await.expect_err("A's voucher");
    assert_eq!((foreign.code(), unknown.code()), (Code::NotFound, Code::NotFound));
    assert_eq!(foreign.message().replace(&delivered.voucher_id, "ID"), unknown.message().replace("v0unknown", "ID"), "the same answer as an unknown id");
    merchant_a.get_voucher(pb::GetVoucherRequest { voucher_id: delivered.voucher_id.clone() }).await.expect("the owner reads it");
    // A cursor of A's, handed to B, reads B's range: nothing of A's.
    let a_page = merchant_a.list_vouchers(pb::ListVouchersRequest { limit: 1, ..Default::default() }).await.expect("list").into_inner();
    let b_with_a_cursor =
        merchant_b.list_vouchers(pb::ListVouchersRequest { cursor: a_page.next_cursor, limit: 10, ..Default::default() }).await.expect("list").into_inner();
    assert!(ids(&b_with_a_cursor.vouchers).iter().all(|id| *id == b_sale.voucher_id), "{:?}", ids(&b_with_a_cursor.vouchers));

    // A's statement: what the royalty totals and the ledger say.
    let period = this_month();
    let statement = merchant_a.get_statement(pb::GetStatementRequest { period: period.clone() }).await.expect("statement").into_inner();
    assert_eq!((statement.merchant_id.as_str(), statement.period.as_str()), (a.id.as_str(), period.as_str()));
    let [eur] = statement.currencies.as_slice() else { panic!("one currency: {statement:?}") };
    assert_eq!(
        (eur.currency.as_str(), eur.sales, eur.sold_minor, eur.deliveries, eur.gross_minor, eur.refunds, eur.net_minor),
        ("EUR", 2, 398, 1, 199, 0, 199)
    );
    let mut audit = client::audit(fx.channel.clone(), fx.operator.clone());
    let totals = audit.totals(pb::TotalsRequest {}).await.expect("totals").into_inner();
    let a_totals = totals.lines.iter().find(|line| line.dimension == "Merchant" && line.key == a.id).expect("A's totals line");
    assert_eq!(
        (eur.deliveries, eur.gross_minor, eur.refunds, eur.refunded_minor),
        (a_totals.deliveries, a_totals.amount_minor, a_totals.refunds, a_totals.refunded_minor)
    );
    let clearing = eur.postings.iter().find(|p| p.kind == "merchant_clearing").expect("A's clearing");
    assert_eq!((clearing.debit_minor, clearing.net_minor), (398, -398), "A's payments settle both sales");
    let ledger = admin.get_ledger(pb::GetLedgerRequest {}).await.expect("ledger").into_inner();
    assert_eq!(ledger.sum_minor, 0);
    assert!(ledger.sums.iter().all(|sum| sum.sum_minor == 0) && !ledger.sums.is_empty());
    let mut both = [merchant_a.clone(), merchant_b.clone()];
    assert_eq!(statement_postings(&mut both, &period).await, ledger_lines(&ledger), "A's and B's postings are the whole ledger");
    let other_month = merchant_a.get_statement(pb::GetStatementRequest { period: "1999-01".into() }).await.expect("statement").into_inner();
    assert!(other_month.currencies.is_empty() && other_month.previews == 0, "nothing in another month");

    // A refund after delivery: a reversal and a royalty adjustment; the ledger still sums to zero.
    let refund = pb::RefundRequest { request_id: "a-1-refund".into(), voucher_id: delivered.voucher_id.clone(), reason: "asked".into(), chargeback: false };
    merchant_a.refund(refund).await.expect("refund");
    let statement = merchant_a.get_statement(pb::GetStatementRequest { period: period.clone() }).await.expect("statement").into_inner();
    let eur = &statement.currencies[0];
    assert_eq!((eur.refunds, eur.refunded_minor, eur.net_minor, eur.reversals, eur.reversed_minor), (1, 199, 0, 1, 199));
    let ledger = admin.get_ledger(pb::GetLedgerRequest {}).await.expect("ledger").into_inner();
    assert_eq!(ledger.sum_minor, 0);
    assert_eq!(statement_postings(&mut both, &period).await, ledger_lines(&ledger));
    assert!(every_voucher(&mut merchant_a, "delivered", "", 10).await.is_empty(), "a refunded voucher is in no set");
    assert_eq!(ids(&every_voucher(&mut merchant_a, "", "Refunded", 10).await), std::slice::from_ref(&delivered.voucher_id));

    // The catalog: by title, by artist, ignoring case; what is withdrawn is gone.
    let search = async |merchant: &mut client::MerchantClient, text: &str| -> BTreeSet<String> {
        let page = merchant.search_catalog(pb::SearchCatalogRequest { text: text.into(), ..Default::default() }).await.expect("search").into_inner();
        page.items.into_iter().map(|item| item.media_id).collect()
    };
    assert_eq!(search(&mut merchant_b, "monday").await, BTreeSet::from([monday.clone()]));
    assert_eq!(search(&mut merchant_b, "NEW ORDER").await, BTreeSet::from([monday.clone(), ceremony.clone()]));
    assert_eq!(search(&mut merchant_b, "spare").await, BTreeSet::from([spare.clone()]), "control: listed before the withdrawal");
    let listed = merchant_a.list_catalog(pb::ListCatalogRequest { limit: 1, ..Default::default() }).await.expect("list").into_inner();
    assert_eq!(listed.items.len(), 1);
    let item = &listed.items[0];
    assert!(item.price_minor == 199 && item.currency == "EUR" && !item.renditions.is_empty() && !listed.next_cursor.is_empty(), "{item:?}");
    admin
        .withdraw_media(pb::WithdrawMediaRequest { request_id: "withdraw-3".into(), media_id: spare.clone(), reason: "takedown".into() })
        .await
        .expect("withdraw");
    assert!(search(&mut merchant_b, "spare").await.is_empty(), "withdrawn media is not for sale");
    let whole = merchant_a.list_catalog(pb::ListCatalogRequest::default()).await.expect("list").into_inner();
    assert_eq!(whole.items.iter().map(|item| item.media_id.clone()).collect::<BTreeSet<_>>(), BTreeSet::from([monday.clone(), ceremony.clone()]));

    // The operator: parties with their status, a points account, an unknown one.
    admin
        .suspend_merchant(pb::MerchantAdminRequest { request_id: "suspend-b".into(), merchant_id: b.id.clone(), reason: "chargebacks".into() })
        .await
        .expect("suspend");
    let parties = admin.list_parties(pb::ListPartiesRequest::default()).await.expect("parties").into_inner().parties;
    let status_of = |kind: &str, id: &str| parties.iter().find(|p| p.kind == kind && p.id == id).map(|p| p.status.clone());
    assert_eq!(status_of("merchant", &a.id).as_deref(), Some("active"));
    assert_eq!(status_of("merchant", &b.id).as_deref(), Some("suspended"));
    assert_eq!(status_of("node", &node.id).as_deref(), Some("active"));
    let certificate = parties.iter().find(|p| p.kind == "certificate" && p.id == alice_serial).expect("alice's certificate");
    assert_eq!((certificate.consumer_id.as_str(), certificate.status.as_str()), ("alice", "active"));
    let nodes = admin.list_parties(pb::ListPartiesRequest { kind: "node".into(), ..Default::default() }).await.expect("parties").into_inner();
    assert_eq!(nodes.parties.iter().map(|p| (p.id.as_str(), p.region.as_str(), p.slots_max)).collect::<Vec<_>>(), [(node.id.as_str(), "eu", 16)]);
    catalog
        .top_up_points(pb::TopUpPointsRequest { request_id: "topup".into(), account_id: "alice".into(), amount: 700, ..Default::default() })
        .await
        .expect("top up");
    let points = admin.get_account_points(pb::AccountPointsRequest { account_id: "alice".into() }).await.expect("points").into_inner();
    assert_eq!((points.account_id.as_str(), points.balance, points.held, points.available), ("alice", 700, 0, 700));
    let unknown = admin.get_account_points(pb::AccountPointsRequest { account_id: "nobody".into() }).await.expect_err("no such account");
    assert_eq!(unknown.code(), Code::NotFound);
    fx.engine.shutdown().await.expect("graceful shutdown");
}
