//! The model oracle: what every accepted fuzz case did, checked against a small model of
//! who owns what (as TigerBeetle checks its state machine against a reference). The fuzz
//! reads the events each case appended and hands them here with the request and the
//! caller; every few cases it also checks the engine's projections as a whole.
//!
//! Invariants, per appended event and per answer:
//! - points are held only by a Reserve that carries the account owner's authorization for
//!   the calling merchant, verifying with the owner's key, unexpired, its nonce used once;
//! - a voucher's keys go to one consumer: every redemption of a voucher names the consumer
//!   of its first, an answered repeat of a Redeem names that consumer, and the first
//!   release names the voucher's media (the usage the royalty log counts) and later ones
//!   none;
//! - a delivery is completed or failed only after a release;
//! - a unit binds to one device key and carries a balanced charge; a repeated BindUnit
//!   answered names the recorded key;
//! - every posting set balances; a merchant reads only its own vouchers;
//! - a reservation or an order carries each media's price as the catalog stands (its
//!   publication, then every PriceChanged the operator's accepted changes appended), and
//!   names only media on sale; a preview starts only of a media not withdrawn; a price
//!   changes only while the media is published and not withdrawn.
//!
//! And over the state, every check: the ledger sums to zero in each currency, and no node
//! holds more slots than the operator licensed at its registration (a node may announce
//! fewer, never more).

use super::*;
use engine::domain::event::{ActorKind, Event, Recorded};
use engine::domain::settlement::balanced;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
pub(super) struct Oracle {
    /// voucher → the merchant that reserved it.
    owners: BTreeMap<String, String>,
    /// voucher → the consumer its keys were released to.
    released_to: BTreeMap<String, String>,
    /// node → the slots the operator licensed (its NodeRegistered).
    licensed: BTreeMap<String, u32>,
    /// Vouchers refunded (or charged back) after a release: never released again.
    refunded: BTreeSet<String>,
    pub(super) refunds: u64,
    /// (order, unit) → blake3 of the device key it is bound to.
    unit_keys: BTreeMap<(String, u32), [u8; 32]>,
    /// Spend authorization nonces (hashed by the engine) seen in holds.
    nonce_hashes: BTreeSet<[u8; 32]>,
    /// media → its price and whether it is on sale, as the stream has it so far.
    catalog: BTreeMap<String, Listing>,
    pub(super) points_holds: u64,
    pub(super) releases: u64,
    pub(super) units_charged: u64,
    /// Reserved items and orders whose price was checked against `catalog`.
    pub(super) prices_checked: u64,
    pub(super) price_changes: u64,
}

/// A published media, as the model knows it.
struct Listing {
    price_minor: u64,
    for_sale: bool,
    withdrawn: bool,
}

impl Oracle {
    /// The problem with selling `media` at `price_minor` now, if any.
    fn sold(&mut self, what: &str, media: &str, price_minor: u64) -> Option<String> {
        self.prices_checked += 1;
        match self.catalog.get(media) {
            None => Some(format!("{what} of {media}, which was never published")),
            Some(listing) if !listing.for_sale || listing.withdrawn => Some(format!("{what} of {media}, which is not for sale")),
            Some(listing) if listing.price_minor != price_minor => {
                Some(format!("{what} of {media} at {price_minor}, while its price is {}", listing.price_minor))
            }
            Some(_) => None,
        }
    }
}

impl Oracle {
    /// Learns what the world built before the fuzz (its events are not cases).
    pub(super) fn learn(&mut self, events: &[Recorded]) {
        for recorded in events {
            let _ = self.apply(recorded, None, None);
        }
    }

    /// The problems with one answered case: `events` are those appended while it ran (the
    /// engine's own jobs may have appended some of them), `caller` its credential id.
    pub(super) fn observe(&mut self, case: &Case, caller: Option<&str>, answer: &Answer, events: &[Recorded], consumer_der: &[u8]) -> Vec<String> {
        let mut problems = Vec::new();
        let Body::Typed { request, .. } = &case.body else {
            for recorded in events {
                problems.extend(self.apply(recorded, None, None));
            }
            return problems;
        };
        for recorded in events {
            let by_caller = caller.is_some_and(|caller| recorded.actor.id == caller);
            let request = by_caller.then_some(request);
            problems.extend(self.apply(recorded, request, Some(consumer_der)));
        }
        if answer.code == Code::Ok {
            problems.extend(self.answered(request, caller));
        }
        problems
    }

    /// Checks one appended event (against the request that caused it, when known) and
    /// updates the model.
    fn apply(&mut self, recorded: &Recorded, request: Option<&Req>, consumer_der: Option<&[u8]>) -> Vec<String> {
        let mut problems = Vec::new();
        match &recorded.event {
            Event::NodeRegistered { node_id, slots_max, .. } => {
                self.licensed.insert(node_id.0.clone(), *slots_max);
            }
            Event::Reserved { voucher_id, merchant_id, items, .. } => {
                self.owners.insert(voucher_id.0.clone(), merchant_id.0.clone());
                for item in items {
                    problems.extend(self.sold("a reservation", &item.media_id.0, item.price_minor));
                }
            }
            Event::OrderPlaced { media_id, price_per_unit_minor, .. } => problems.extend(self.sold("an order", &media_id.0, *price_per_unit_minor)),
            Event::PreviewStarted { media_id, .. } if self.catalog.get(&media_id.0).is_none_or(|listing| listing.withdrawn) => {
                problems.push(format!("a preview of {media_id}, which is withdrawn or was never published"));
            }
            Event::MediaPublished(media) => {
                let listing = Listing { price_minor: media.price_minor, for_sale: media.for_sale, withdrawn: false };
                self.catalog.insert(media.media_id.0.clone(), listing);
            }
            Event::PriceChanged { media_id, price_minor } => match self.catalog.get_mut(&media_id.0) {
                Some(listing) if !listing.withdrawn => {
                    listing.price_minor = *price_minor;
                    self.price_changes += 1;
                }
                _ => problems.push(format!("the price of {media_id} changed, which is withdrawn or was never published")),
            },
            Event::MediaWithdrawn { media_id, .. } => match self.catalog.get_mut(&media_id.0) {
                Some(listing) if !listing.withdrawn => listing.withdrawn = true,
                _ => problems.push(format!("{media_id} withdrawn, which is withdrawn already or was never published")),
            },
            Event::PointsHeld { account_id, nonce_hash, .. } => {
                self.points_holds += 1;
                let Some(nonce_hash) = nonce_hash else {
                    problems.push(format!("points of {account_id} held with no authorization recorded"));
                    return problems;
                };
                if !self.nonce_hashes.insert(*nonce_hash) {
                    problems.push(format!("points of {account_id} held twice on one authorization"));
                }
                if recorded.actor.kind != ActorKind::Merchant {
                    problems.push(format!("points of {account_id} held by a {:?}", recorded.actor.kind));
                }
                if let (Some(Req::Reserve(reserve)), Some(der)) = (request, consumer_der) {
                    problems.extend(consent_problem(reserve, &recorded.actor.id, &account_id.0, der));
                }
            }
            Event::RedemptionAccepted { voucher_id, .. } if self.refunded.contains(&voucher_id.0) => {
                problems.push(format!("{voucher_id} was redeemed after its refund"));
            }
            Event::Refunded { voucher_id, reversal, media_ids, .. } => {
                self.refunds += 1;
                if !self.released_to.contains_key(&voucher_id.0) {
                    problems.push(format!("{voucher_id} refunded as after a release, but no key was released (a void was due)"));
                }
                if !balanced(reversal) || media_ids.is_empty() {
                    problems.push(format!("{voucher_id}'s refund reverses unbalanced postings or adjusts no media"));
                }
                if !self.refunded.insert(voucher_id.0.clone()) {
                    problems.push(format!("{voucher_id} refunded twice"));
                }
                if recorded.actor.kind != ActorKind::Merchant || self.owners.get(&voucher_id.0) != Some(&recorded.actor.id) {
                    problems.push(format!("{voucher_id} refunded by {:?} {}, not the merchant that sold it", recorded.actor.kind, recorded.actor.id));
                }
            }
            Event::RedemptionAccepted { voucher_id, consumer_id, released_media, .. } => match self.released_to.get(&voucher_id.0) {
                None => {
                    self.released_to.insert(voucher_id.0.clone(), consumer_id.0.clone());
                    self.releases += 1;
                    if released_media.is_empty() {
                        problems.push(format!("the first release of {voucher_id} names no media: a key left without a usage"));
                    }
                }
                Some(first) if first != &consumer_id.0 => {
                    problems.push(format!("{voucher_id}'s keys went to {consumer_id} after {first}"));
                }
                Some(_) if !released_media.is_empty() => problems.push(format!("{voucher_id} released its media twice")),
                Some(_) => {}
            },
            Event::Delivered { voucher_id, .. } | Event::DeliveryFailed { voucher_id, .. } if !self.released_to.contains_key(&voucher_id.0) => {
                problems.push(format!("{voucher_id} delivered or failed before any release"));
            }
            Event::UnitBound { order_id, unit, device_public_key_hash, charge, .. } => {
                match charge {
                    Some(charge) if balanced(&charge.postings) && charge.postings.first().is_some_and(|p| p.debit_minor == charge.price_minor) => {
                        self.units_charged += 1;
                    }
                    _ => problems.push(format!("unit {unit} of {order_id} bound without a balanced charge")),
                }
                if let Some(first) = self.unit_keys.insert((order_id.0.clone(), *unit), *device_public_key_hash)
                    && first != *device_public_key_hash
                {
                    problems.push(format!("unit {unit} of {order_id} bound to a second key"));
                }
            }
            Event::Authorized { postings, .. } | Event::Voided { reversal: postings, .. } if !balanced(postings) => {
                problems.push(format!("{} postings do not balance", recorded.event.name()));
            }
            Event::PointsCredited { sale: Some(sale), .. } if !balanced(&sale.postings) => problems.push("a points sale does not balance".into()),
            _ => {}
        }
        problems
    }

    /// Checks what an accepted request was answered, beyond what it appended.
    fn answered(&self, request: &Req, caller: Option<&str>) -> Vec<String> {
        let mut problems = Vec::new();
        match request {
            Req::GetVoucher(get) => {
                if let Some(owner) = self.owners.get(&get.voucher_id)
                    && Some(owner.as_str()) != caller
                {
                    problems.push(format!("{caller:?} read {}, which {owner} reserved", get.voucher_id));
                }
            }
            Req::Redeem(redeem) if self.released_to.get(&redeem.voucher_id).is_some_and(|first| first != &redeem.consumer_id) => {
                problems.push(format!("a Redeem of {} was answered to {}, not to the consumer holding its keys", redeem.voucher_id, redeem.consumer_id));
            }
            Req::BindUnit(bind) => {
                let key = crypto::hash(&bind.device_public_key_der);
                if self.unit_keys.get(&(bind.order_id.clone(), bind.unit)).is_some_and(|bound| *bound != key) {
                    problems.push(format!("a BindUnit of unit {} of {} was answered for a key it is not bound to", bind.unit, bind.order_id));
                }
            }
            _ => {}
        }
        problems
    }
}

/// Whether `reserve`, by `merchant`, carried the consent of `account`'s owner: the engine
/// held points, so an authorization must name them both and verify with the owner's key.
fn consent_problem(reserve: &pb::ReserveRequest, merchant: &str, account: &str, consumer_der: &[u8]) -> Option<String> {
    let Some(authorization) = &reserve.spend_authorization else {
        return Some(format!("points of {account} held without any spend authorization"));
    };
    if authorization.account_id != account || authorization.merchant_id != merchant {
        return Some(format!(
            "points of {account} held for {merchant} on an authorization for {:?} by {:?}",
            authorization.account_id, authorization.merchant_id
        ));
    }
    if !gateways::common::spend::from_pb(authorization).is_ok_and(|a| a.verifies_with(consumer_der)) {
        return Some(format!("points of {account} held on an authorization that does not verify"));
    }
    if authorization.expires_at_ms < engine::clock::Clock::now(&engine::clock::SystemClock).0 {
        return Some(format!("points of {account} held on an expired authorization"));
    }
    None
}

/// The state as a whole: the ledger sums to zero in each currency.
impl Oracle {
    /// Node slots within their licence: no node holds more slots than the operator
    /// licensed at its registration (announcing may lower a node's capacity, never raise it).
    pub(super) fn slot_problems(&self, world: &World) -> Vec<String> {
        let in_use: Vec<(String, u32)> = world.fx.engine.state.live.read(|p| p.allocation.nodes.iter().map(|(id, node)| (id.0.clone(), node.in_use)).collect());
        self.over_licence(&in_use)
    }

    fn over_licence(&self, in_use: &[(String, u32)]) -> Vec<String> {
        in_use
            .iter()
            .filter(|(id, used)| *used > self.licensed.get(id).copied().unwrap_or(0))
            .map(|(id, used)| format!("node {id} holds {used} slots, licensed {:?}", self.licensed.get(id)))
            .collect()
    }
}

pub(super) fn state_problems(world: &World) -> Vec<String> {
    world.fx.engine.state.live.read(|projections| {
        projections
            .balances
            .sums_by_currency()
            .into_iter()
            .filter(|(_, sum)| *sum != Some(0))
            .map(|(currency, sum)| format!("the ledger sums to {sum:?} in {currency}"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::domain::event::{Actor, LedgerAccountKind, MediaPublished, Payment, Posting, PreviewClip, ReservedItem, RoyaltyTerms, UnitCharge};
    use engine::ids::{AccountId, CertSerial, ConsumerId, MediaId, MerchantId, Millis, NodeId, OrderId, VoucherId};

    fn recorded(actor: Actor, event: Event) -> Recorded {
        Recorded {
            event_id: [0; 16],
            aggregate: event.aggregate(),
            aggregate_version: 1,
            recorded_at: Millis(0),
            request_id: "r".into(),
            actor,
            command: "Test".into(),
            event,
        }
    }
    fn node() -> Actor {
        Actor::new(ActorKind::Node, "n1")
    }
    fn redeemed(consumer: &str, released: &[&str]) -> Recorded {
        recorded(
            node(),
            Event::RedemptionAccepted {
                voucher_id: VoucherId::new("v1"),
                node_id: NodeId::new("n1"),
                consumer_id: ConsumerId::new(consumer),
                cert_serial: CertSerial::new("c"),
                wrapped_key_hashes: Vec::new(),
                challenge_hash: None,
                consumer_key_hash: None,
                released_media: released.iter().map(|m| MediaId::new(*m)).collect(),
                rental_play: 0,
            },
        )
    }
    fn bound(key: u8, charged: bool) -> Recorded {
        let postings = vec![
            Posting { kind: LedgerAccountKind::MerchantClearing, account: "m1".into(), debit_minor: 5, credit_minor: 0 },
            Posting { kind: LedgerAccountKind::Owner, account: "o".into(), debit_minor: 0, credit_minor: 5 },
        ];
        let charge =
            charged.then(|| UnitCharge { merchant: MerchantId::new("m1"), media_id: MediaId::new("md"), price_minor: 5, currency: "EUR".into(), postings });
        recorded(
            Actor::new(ActorKind::Merchant, "m1"),
            Event::UnitBound {
                order_id: OrderId::new("o1"),
                unit: 0,
                device_id: "d".into(),
                device_public_key_hash: [key; 32],
                wrapped_key_hash: None,
                charge,
            },
        )
    }
    fn held(nonce: Option<[u8; 32]>) -> Recorded {
        recorded(
            Actor::new(ActorKind::Merchant, "m1"),
            Event::PointsHeld { account_id: AccountId::new("alice"), voucher_id: VoucherId::new("v9"), amount: 1, expires_at: Millis(9), nonce_hash: nonce },
        )
    }
    fn operator() -> Actor {
        Actor::new(ActorKind::Operator, "o1")
    }
    fn published(price_minor: u64) -> Recorded {
        recorded(
            operator(),
            Event::MediaPublished(MediaPublished {
                media_id: MediaId::new("md"),
                publisher: "o1".into(),
                title: "Song".into(),
                artist: "Artist".into(),
                authors: Vec::new(),
                length_ms: 1,
                price_minor,
                currency: "EUR".into(),
                terms: RoyaltyTerms::default(),
                renditions: Vec::new(),
                preview: PreviewClip::default(),
                image_descriptor: String::new(),
                for_sale: true,
                engine_key_id: String::new(),
                wrapped_media_key: Vec::new(),
                container_format: 0,
            }),
        )
    }
    fn repriced(price_minor: u64) -> Recorded {
        recorded(operator(), Event::PriceChanged { media_id: MediaId::new("md"), price_minor })
    }
    fn withdrawn() -> Recorded {
        recorded(operator(), Event::MediaWithdrawn { media_id: MediaId::new("md"), reason: "gone".into() })
    }
    fn reserved(price_minor: u64) -> Recorded {
        reserved_as("v2", price_minor)
    }
    fn refunded(by: &str) -> Recorded {
        recorded(
            Actor::new(ActorKind::Merchant, by),
            Event::Refunded {
                voucher_id: VoucherId::new("v1"),
                reason: "asked".into(),
                chargeback: false,
                reversal: vec![],
                media_ids: vec![MediaId::new("md")],
            },
        )
    }
    fn reserved_as(voucher: &str, price_minor: u64) -> Recorded {
        recorded(
            Actor::new(ActorKind::Merchant, "m1"),
            Event::Reserved {
                voucher_id: VoucherId::new(voucher),
                merchant_id: MerchantId::new("m1"),
                items: vec![ReservedItem { media_id: MediaId::new("md"), price_minor }],
                rendition: "high".into(),
                price_minor,
                currency: "EUR".into(),
                expires_at: Millis(9),
                payment: Payment::Merchant { payment_ref: String::new() },
                token_key_id: 0,
                auth_generation: 1,
                rental_ms: 0,
            },
        )
    }
    fn flags(events: &[Recorded], expect: Option<&str>) {
        let mut oracle = Oracle::default();
        let problems: Vec<String> = events.iter().flat_map(|event| oracle.apply(event, None, None)).collect();
        match expect {
            None => assert!(problems.is_empty(), "{problems:?}"),
            Some(text) => assert!(problems.iter().any(|p| p.contains(text)), "expected {text:?} in {problems:?}"),
        }
    }

    /// Each invariant flags a planted violation, and passes its clean twin.
    #[test]
    fn the_model_oracle_flags_each_broken_invariant() {
        flags(&[redeemed("alice", &["md"]), redeemed("alice", &[])], None);
        flags(&[redeemed("alice", &["md"]), redeemed("bob", &[])], Some("went to bob after alice"));
        flags(&[redeemed("alice", &[])], Some("without a usage"));
        flags(&[redeemed("alice", &["md"]), redeemed("alice", &["md"])], Some("released its media twice"));
        let delivered = recorded(
            node(),
            Event::Delivered {
                voucher_id: VoucherId::new("v1"),
                node_id: NodeId::new("n1"),
                media_id: MediaId::new("md"),
                cert_serial: CertSerial::new("c"),
                content_hash: [0; 32],
                size_bytes: 1,
                voucher_complete: true,
            },
        );
        flags(&[redeemed("alice", &["md"]), delivered.clone()], None);
        flags(&[delivered], Some("before any release"));
        flags(&[bound(1, true), bound(1, true)], None);
        flags(&[bound(1, false)], Some("without a balanced charge"));
        flags(&[bound(1, true), bound(2, true)], Some("second key"));
        flags(&[held(Some([1; 32])), held(Some([2; 32]))], None);
        flags(&[held(None)], Some("no authorization recorded"));
        flags(&[held(Some([1; 32])), held(Some([1; 32]))], Some("twice on one authorization"));
        flags(&[published(199), reserved(199), repriced(250), reserved(250)], None);
        flags(&[published(199), repriced(250), reserved(199)], Some("at 199, while its price is 250"));
        flags(&[reserved(199)], Some("never published"));
        flags(&[published(199), withdrawn(), reserved(199)], Some("not for sale"));
        flags(&[published(199), withdrawn(), repriced(250)], Some("the price of md changed"));
        flags(&[published(199), withdrawn(), withdrawn()], Some("withdrawn already"));
        let sold = || vec![published(199), reserved_as("v1", 199), redeemed("alice", &["md"])];
        flags(&[sold(), vec![refunded("m1")]].concat(), None);
        flags(&[sold(), vec![refunded("m1"), redeemed("alice", &[])]].concat(), Some("redeemed after its refund"));
        flags(&[sold(), vec![refunded("m1"), refunded("m1")]].concat(), Some("refunded twice"));
        flags(&[sold(), vec![refunded("m2")]].concat(), Some("not the merchant that sold it"));
        flags(&[published(199), reserved_as("v1", 199), refunded("m1")], Some("no key was released"));

        // Slots within the licence (control: at the licence).
        let mut oracle = Oracle::default();
        oracle.licensed.insert("n1".into(), 4);
        assert!(oracle.over_licence(&[("n1".into(), 4)]).is_empty());
        assert!(oracle.over_licence(&[("n1".into(), 5)]).iter().any(|p| p.contains("holds 5 slots")));
        assert!(!oracle.over_licence(&[("n-unknown".into(), 1)]).is_empty(), "a node never registered holds nothing");

        // Answers: a merchant reads only its own vouchers.
        let mut oracle = Oracle::default();
        oracle.owners.insert("v1".into(), "m1".into());
        let get = Req::GetVoucher(pb::GetVoucherRequest { voucher_id: "v1".into() });
        assert!(oracle.answered(&get, Some("m1")).is_empty());
        assert!(oracle.answered(&get, Some("m2")).iter().any(|p| p.contains("which m1 reserved")));
    }
}
