//! No existence oracle (issue 21 item 7): merchant B asking about merchant A's voucher or
//! order, by any MerchantService RPC that takes its id (GetVoucher, Authorize, Void, Refund,
//! a chargeback, IssueVoucher; CompleteUnit for an order), gets exactly the answer an id
//! that was never used gets: the same code, the same message once the id asked for is
//! written as `<id>`, the same details; and nothing is written. The unknown ids have the
//! real ids' form (derived from A's own request ids that A never sent).
//!
//! Controls: A, asking the same RPCs about its own vouchers, is answered otherwise (so the
//! comparison can fail and the vouchers are real), and A still reads its voucher.

mod support;

use engine::ids::{MerchantId, RequestId, order_id_for, voucher_id_for};
use gateways::common::client;
use proto::v1 as pb;
use support::sale::{credential, reserve_request, upload};
use support::start;
use tonic::{Code, Status};

/// What a caller learns from a refusal, with the id it asked about written as `<id>`.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    code: Code,
    message: String,
    details: Vec<u8>,
}

fn learned(status: Status, asked: &str) -> Refusal {
    Refusal { code: status.code(), message: status.message().replace(asked, "<id>"), details: status.details().to_vec() }
}

/// Every merchant RPC that takes a voucher id, sent by `merchant` about `voucher_id`
/// (request ids made unique by `tag`): what each answered.
async fn ask_about(merchant: &mut client::MerchantClient, tag: &str, voucher_id: &str) -> Vec<(&'static str, Result<String, Refusal>)> {
    let id = || voucher_id.to_string();
    let request = |rpc: &str| format!("{tag}-{rpc}");
    let refund = |rpc: &str, chargeback| pb::RefundRequest { request_id: request(rpc), voucher_id: id(), reason: "mine".into(), chargeback };
    let mut answers = Vec::new();
    let get = merchant.get_voucher(pb::GetVoucherRequest { voucher_id: id() }).await;
    answers.push(("GetVoucher", get.map(|ok| ok.into_inner().status).map_err(|status| learned(status, voucher_id))));
    let authorize = merchant.authorize(pb::AuthorizeRequest { request_id: request("authorize"), voucher_id: id() }).await;
    answers.push(("Authorize", authorize.map(|_| "authorized".to_string()).map_err(|status| learned(status, voucher_id))));
    let issue = merchant.issue_voucher(pb::IssueVoucherRequest { request_id: request("issue"), voucher_id: id(), region: String::new() }).await;
    answers.push(("IssueVoucher", issue.map(|ok| ok.into_inner().node_id).map_err(|status| learned(status, voucher_id))));
    let chargeback = merchant.refund(refund("chargeback", true)).await;
    answers.push(("Refund (chargeback)", chargeback.map(|ok| ok.into_inner().status).map_err(|status| learned(status, voucher_id))));
    let refunded = merchant.refund(refund("refund", false)).await;
    answers.push(("Refund", refunded.map(|ok| ok.into_inner().status).map_err(|status| learned(status, voucher_id))));
    let void = merchant.void(pb::VoidRequest { request_id: request("void"), voucher_id: id() }).await;
    answers.push(("Void", void.map(|_| "voided".to_string()).map_err(|status| learned(status, voucher_id))));
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_merchants_voucher_answers_every_rpc_exactly_as_an_unknown_one() {
    let fx = start().await;
    let mut catalog = client::catalog(fx.channel.clone(), fx.operator.clone());
    let a = credential(catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "merchant-a".into(), name: "Shop A".into() }).await);
    let b = credential(catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "merchant-b".into(), name: "Shop B".into() }).await);
    let node = credential(
        catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "node-1".into(), region: "eu".into(), slots_max: 8 }).await,
    );
    client::delivery(fx.channel.clone(), node)
        .register_node(pb::RegisterNodeRequest { region: String::new(), slots_max: 0, endpoint: "http://127.0.0.1:1".into() })
        .await
        .expect("the node announces its endpoint");
    let media = client::publish(&mut catalog, "media-1", &fx.engine_public, upload("Song")).await.expect("publish").media_id;
    fx.settle().await;

    // A's vouchers at each stage, and an order.
    let mut merchant_a = client::merchant(fx.channel.clone(), a.clone());
    let pending = merchant_a.reserve(reserve_request("pending", &media)).await.expect("reserve").into_inner().voucher_id;
    let authorized = merchant_a.reserve(reserve_request("authorized", &media)).await.expect("reserve").into_inner().voucher_id;
    merchant_a.authorize(pb::AuthorizeRequest { request_id: "authorized-authorize".into(), voucher_id: authorized.clone() }).await.expect("authorize");
    let issued = client::buy(&mut merchant_a, "issued", std::slice::from_ref(&media), None).await.expect("buy").voucher_id;
    let order = merchant_a
        .place_order(pb::PlaceOrderRequest { request_id: "order".into(), media_id: media.clone(), units: 1 })
        .await
        .expect("order")
        .into_inner()
        .order_id;
    fx.settle().await;
    let a_id = MerchantId::new(a.id.clone());
    let unknown_voucher = voucher_id_for(&a_id, &RequestId::new("never-reserved")).0;
    let unknown_order = order_id_for(&a_id, &RequestId::new("never-placed")).0;

    let head = fx.head().await;
    let mut merchant_b = client::merchant(fx.channel.clone(), b);
    let as_unknown = ask_about(&mut merchant_b, "unknown", &unknown_voucher).await;
    for (rpc, answer) in &as_unknown {
        let refusal = answer.as_ref().expect_err("an unknown voucher is refused");
        assert_eq!((refusal.code, refusal.message.as_str()), (Code::NotFound, "unknown voucher \"<id>\""), "{rpc}");
    }
    let mut differences = Vec::new();
    for (stage, voucher_id) in [("pending", &pending), ("authorized", &authorized), ("issued", &issued)] {
        let as_foreign = ask_about(&mut merchant_b, stage, voucher_id).await;
        for ((rpc, foreign), (_, unknown)) in as_foreign.iter().zip(&as_unknown) {
            if foreign != unknown {
                differences.push(format!("{rpc} on A's {stage} voucher: {foreign:?}, an unknown one: {unknown:?}"));
            }
        }
    }
    let complete_unit = |order_id: &str, tag: &str| {
        let mut merchant = merchant_b.clone();
        let order_id = order_id.to_string();
        let request = pb::CompleteUnitRequest { request_id: format!("{tag}-complete"), order_id: order_id.clone(), unit: 0 };
        async move { merchant.complete_unit(request).await.map(|_| ()).map_err(|status| learned(status, &order_id)) }
    };
    let (foreign_order, unknown_order) = (complete_unit(&order, "foreign").await, complete_unit(&unknown_order, "unknown").await);
    assert_eq!(unknown_order.as_ref().map_err(|refusal| refusal.code), Err(Code::NotFound), "{unknown_order:?}");
    if foreign_order != unknown_order {
        differences.push(format!("CompleteUnit on A's order: {foreign_order:?}, an unknown one: {unknown_order:?}"));
    }
    assert!(differences.is_empty(), "merchant B can tell A's ids from unknown ones:\n{}", differences.join("\n"));
    assert_eq!(fx.head().await, head, "nothing was written for B's requests");

    // The controls: A's own vouchers are answered otherwise (the comparison can fail), and A
    // still reads its voucher.
    let owners = ask_about(&mut merchant_a, "owner", &issued).await;
    let told_apart: Vec<&str> = owners.iter().zip(&as_unknown).filter(|((_, own), (_, unknown))| own != unknown).map(|((rpc, _), _)| *rpc).collect();
    assert_eq!(told_apart.len(), as_unknown.len(), "every RPC answers the owner otherwise; the same for {:?}", owners);
    let view = merchant_a.get_voucher(pb::GetVoucherRequest { voucher_id: issued.clone() }).await.expect("the owner reads its voucher").into_inner();
    assert_eq!(view.voucher_id, issued);
    fx.engine.shutdown().await.expect("graceful shutdown");
}
