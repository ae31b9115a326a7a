//! Stateful cases: requests built from what the fuzz's own accepted calls answered (the
//! vouchers it reserved, the receipts of those it paid for, the nodes it issued them to),
//! so that payments, issues, redemptions and finished deliveries of its own sales are
//! frequent and the model oracle sees value move. Each keeps the hostile twists that were
//! tried by hand: the other merchant, another consumer, a revoked or an expired
//! certificate, the wrong node, a request id used before.

use super::*;

/// A step that builds on an earlier accepted one, resolved against `Memory` when sent;
/// when nothing fits yet, the case's own generated request is sent instead.
#[derive(Clone, Debug)]
pub(super) enum Link {
    /// Reserve the world's media, paid by the merchant or with one of the pool's spend
    /// authorizations (acct-1's for merchant A, mostly).
    Reserve { merchant_b: bool, spend: Option<Index>, ttl_short: bool },
    /// Authorize a voucher an accepted Reserve created.
    Authorize { pick: Index, twist: Twist },
    /// Issue a paid voucher in a region.
    Issue { pick: Index, twist: Twist, region: Index },
    /// Redeem an issued voucher for a consumer (proof made for the calling node).
    Redeem { pick: Index, twist: Twist, consumer: Index, challenge: u8 },
    /// Complete, or fail, a delivery with a consumer's confirm proof.
    Finish { pick: Index, twist: Twist, consumer: Index, fail: bool, hash: u8 },
    /// Refund (or charge back) a paid sale, at whatever stage it is.
    Refund { pick: Index, twist: Twist, chargeback: bool },
}

/// What is hostile about a linked step, if anything.
#[derive(Clone, Debug)]
pub(super) struct Twist {
    /// Sent by the other merchant, or by a node other than the assigned one.
    other_caller: bool,
    /// One of the shared request ids (used by other cases too) instead of a fresh one.
    shared_request: Option<Index>,
}

pub(super) fn arb_link() -> impl Strategy<Value = Link> {
    let twist = (proptest::bool::weighted(0.15), proptest::option::weighted(0.25, any::<Index>()))
        .prop_map(|(other_caller, shared_request)| Twist { other_caller, shared_request });
    prop_oneof![
        3 => (proptest::bool::weighted(0.2), proptest::option::weighted(0.3, any::<Index>()), proptest::bool::weighted(0.1))
            .prop_map(|(merchant_b, spend, ttl_short)| Link::Reserve { merchant_b, spend, ttl_short }),
        3 => (any::<Index>(), twist.clone()).prop_map(|(pick, twist)| Link::Authorize { pick, twist }),
        3 => (any::<Index>(), twist.clone(), any::<Index>()).prop_map(|(pick, twist, region)| Link::Issue { pick, twist, region }),
        4 => (any::<Index>(), twist.clone(), any::<Index>(), any::<u8>()).prop_map(|(pick, twist, consumer, challenge)| Link::Redeem { pick, twist, consumer, challenge }),
        3 => (any::<Index>(), twist.clone(), any::<Index>(), proptest::bool::weighted(0.3), 0..2u8)
            .prop_map(|(pick, twist, consumer, fail, hash)| Link::Finish { pick, twist, consumer, fail, hash }),
        1 => (any::<Index>(), twist, any::<bool>()).prop_map(|(pick, twist, chargeback)| Link::Refund { pick, twist, chargeback }),
    ]
}

/// One of the fuzz's own sales, as far as it got.
#[derive(Clone, Debug)]
struct Sale {
    voucher_id: String,
    merchant: Role,
    receipt: Option<Vec<u8>>,
    issued: bool,
    /// The node it was issued to, when that is one the fuzz can call as (X, Y or Z).
    node: Option<Role>,
}

/// The fuzz's own sales, learned from the answers of accepted calls.
#[derive(Default)]
pub(super) struct Memory {
    sales: Vec<Sale>,
    fresh: u64,
    /// Linked cases resolved and accepted, by kind.
    pub(super) resolved: BTreeMap<&'static str, (u64, u64)>,
}

fn decode<M: prost::Message + Default>(answer: &Answer) -> Option<M> {
    M::decode(hex::decode(&answer.response).ok()?.as_slice()).ok()
}

impl Memory {
    /// Learns from an accepted typed Reserve, Authorize or IssueVoucher sent as `role`.
    pub(super) fn learn(&mut self, world: &World, case: &Case, role: Role, answer: &Answer) {
        if answer.code != Code::Ok || answer.wrote == 0 {
            return;
        }
        let Body::Typed { request, .. } = &case.body else { return };
        match request {
            Req::Reserve(_) => {
                if let Some(reserved) = decode::<pb::ReserveResponse>(answer) {
                    self.sales.push(Sale { voucher_id: reserved.voucher_id, merchant: role, receipt: None, issued: false, node: None });
                }
            }
            Req::Authorize(request) => {
                let receipt = decode::<pb::AuthorizeResponse>(answer).map(|authorized| authorized.receipt);
                if let Some(sale) = self.sales.iter_mut().find(|sale| sale.voucher_id == request.voucher_id) {
                    sale.receipt = receipt;
                }
            }
            Req::IssueVoucher(request) => {
                let node_id = decode::<pb::IssueVoucherResponse>(answer).map(|issued| issued.node_id).unwrap_or_default();
                let node = [Role::NodeX, Role::NodeY, Role::NodeZ].into_iter().find(|role| world.credential_of(*role).id == node_id);
                if let Some(sale) = self.sales.iter_mut().find(|sale| sale.voucher_id == request.voucher_id) {
                    sale.issued = true;
                    sale.node = node;
                }
            }
            _ => {}
        }
    }

    fn request_id(&mut self, twist: &Twist, pools: &Pools) -> String {
        match &twist.shared_request {
            Some(index) => pools.request_ids.real[index.index(pools.request_ids.real.len())].clone(),
            None => {
                self.fresh += 1;
                format!("chain-{}", self.fresh)
            }
        }
    }

    /// The request `link` stands for now, as a case sent by its (or a twisted) caller; `None`
    /// while no sale has reached the step it builds on.
    pub(super) fn resolve(&mut self, link: &Link, world: &World, pools: &Pools) -> Option<Case> {
        let pick = |sales: &[Sale], stage: &dyn Fn(&Sale) -> bool, index: &Index| -> Option<Sale> {
            let candidates: Vec<&Sale> = sales.iter().filter(|sale| stage(sale)).collect();
            (!candidates.is_empty()).then(|| candidates[index.index(candidates.len())].clone())
        };
        let other_merchant = |role: Role| if role == Role::MerchantA { Role::MerchantB } else { Role::MerchantA };
        let other_node = |role: Role| if role == Role::NodeX { Role::NodeY } else { Role::NodeX };
        let consumers = [("alice", &world.alice_serial), ("bob", &world.bob_serial), ("erin", &world.erin_serial), ("dave", &world.dave_serial)];
        let (kind, role, request) = match link {
            Link::Reserve { merchant_b, spend, ttl_short } => {
                let role = if *merchant_b { Role::MerchantB } else { Role::MerchantA };
                self.fresh += 1;
                let mut request = reserve_request(&format!("chain-{}", self.fresh), &world.media);
                if *ttl_short {
                    request.ttl_ms = 1;
                }
                if let Some(spend) = spend {
                    let authorization = pools.spends[spend.index(pools.spends.len())].clone();
                    request.points_account = authorization.account_id.clone();
                    request.spend_authorization = Some(authorization);
                }
                ("reserve", role, Req::Reserve(request))
            }
            Link::Authorize { pick: index, twist } => {
                let sale = pick(&self.sales, &|sale| sale.receipt.is_none(), index)?;
                let role = if twist.other_caller { other_merchant(sale.merchant) } else { sale.merchant };
                ("authorize", role, Req::Authorize(pb::AuthorizeRequest { request_id: self.request_id(twist, pools), voucher_id: sale.voucher_id }))
            }
            Link::Issue { pick: index, twist, region } => {
                let sale = pick(&self.sales, &|sale| sale.receipt.is_some() && !sale.issued, index)?;
                let role = if twist.other_caller { other_merchant(sale.merchant) } else { sale.merchant };
                let region = pools.regions[region.index(pools.regions.len())].clone();
                let request = pb::IssueVoucherRequest { request_id: self.request_id(twist, pools), voucher_id: sale.voucher_id, region };
                ("issue", role, Req::IssueVoucher(request))
            }
            Link::Redeem { pick: index, twist, consumer, challenge } => {
                let sale = pick(&self.sales, &|sale| sale.node.is_some(), index)?;
                let assigned = sale.node.expect("picked as issued");
                let role = if twist.other_caller { other_node(assigned) } else { assigned };
                let (consumer, serial) = consumers[consumer.index(consumers.len())];
                let named = support::sale::Named { consumer, cert_serial: serial, public_key_der: &world.consumer_der };
                let challenge = vec![*challenge; 32];
                let receipt = sale.receipt.expect("issued after payment");
                let request = pb::RedeemRequest {
                    request_id: self.request_id(twist, pools),
                    voucher_id: sale.voucher_id.clone(),
                    cert_serial: serial.clone(),
                    consumer_id: consumer.into(),
                    proof: proof(&receipt, &sale.voucher_id, &world.credential_of(role).id, &challenge, &named),
                    challenge,
                    recover: false,
                };
                ("redeem", role, Req::Redeem(request))
            }
            Link::Refund { pick: index, twist, chargeback } => {
                let sale = pick(&self.sales, &|sale| sale.receipt.is_some(), index)?;
                let role = if twist.other_caller { other_merchant(sale.merchant) } else { sale.merchant };
                let request = pb::RefundRequest {
                    request_id: self.request_id(twist, pools),
                    voucher_id: sale.voucher_id,
                    reason: "the customer asked".into(),
                    chargeback: *chargeback,
                };
                ("refund", role, Req::Refund(request))
            }
            Link::Finish { pick: index, twist, consumer, fail, hash } => {
                let sale = pick(&self.sales, &|sale| sale.node.is_some(), index)?;
                let assigned = sale.node.expect("picked as issued");
                let role = if twist.other_caller { other_node(assigned) } else { assigned };
                let (consumer, serial) = consumers[consumer.index(consumers.len())];
                let named = support::sale::Named { consumer, cert_serial: serial, public_key_der: &world.consumer_der };
                let hash = [*hash; 32];
                let receipt = sale.receipt.expect("issued after payment");
                let confirm_proof = support::sale::confirm(&receipt, &sale.voucher_id, &world.credential_of(role).id, &world.media, &hash, &named);
                let request_id = self.request_id(twist, pools);
                if *fail {
                    let request = pb::FailDeliveryRequest {
                        request_id,
                        voucher_id: sale.voucher_id,
                        reason: "the player reports a bad copy".into(),
                        media_id: world.media.clone(),
                        received_hash: hash.to_vec(),
                        confirm_proof,
                    };
                    ("fail", role, Req::FailDelivery(request))
                } else {
                    let request = pb::CompleteDeliveryRequest {
                        request_id,
                        voucher_id: sale.voucher_id,
                        media_id: world.media.clone(),
                        content_hash: hash.to_vec(),
                        size_bytes: 20_000,
                        confirm_proof,
                    };
                    ("complete", role, Req::CompleteDelivery(request))
                }
            }
        };
        self.resolved.entry(kind).or_default().0 += 1;
        Some(Case { rpc: request.rpc(), caller: Caller::As(role), body: Body::Typed { near_valid: true, request }, retry: false, link: None })
    }

    /// Counts an accepted linked case of `kind` (the name `resolve` gave it).
    pub(super) fn accepted(&mut self, case: &Case) {
        let kind = match case.rpc {
            Rpc::Reserve => "reserve",
            Rpc::Authorize => "authorize",
            Rpc::IssueVoucher => "issue",
            Rpc::Redeem => "redeem",
            Rpc::FailDelivery => "fail",
            Rpc::Refund => "refund",
            _ => "complete",
        };
        self.resolved.entry(kind).or_default().1 += 1;
    }
}
