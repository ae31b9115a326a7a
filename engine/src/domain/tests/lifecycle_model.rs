//! A proptest state-machine model of the voucher lifecycle: random operations on three
//! vouchers paid by card or from one shared points account, by two merchants, delivered by
//! two nodes to two consumers, under a clock that only moves forward. Each operation is
//! decided on the current state through the envelope (`Root`), the way the shell does it,
//! with plausible right-or-wrong inputs; what is emitted is appended. After every step the
//! histories are checked against DESIGN.md's rules and replayed from scratch.

use crate::domain::account::{Account, AccountCommand, SpendConsent};
use crate::domain::catalog::Media;
use crate::domain::catalog::tests::sample;
use crate::domain::event::{Actor, ActorKind, Event, Payment, Posting, Recorded, VoidReason};
use crate::domain::settlement::balanced;
use crate::domain::voucher::{
    Authorize, CertCheck, CompleteDelivery, NodeStanding, ProofCheck, Redeem, Reserve, Voucher, VoucherCommand, VoucherStatus, reverse,
};
use crate::domain::{Aggregate, Outcome, Rejection, Root, fold};
use crate::ids::{AccountId, CertSerial, ConsumerId, MediaId, MerchantId, Millis, NodeId, RequestId, Seq, VoucherId};
use proptest::prelude::*;

/// `delivery.retries_max` in the model.
const RETRIES_MAX: u32 = 2;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

const VOUCHERS: usize = 3;
const T0: Millis = Millis(1_700_000_000_000);

fn merchant(i: usize) -> MerchantId {
    MerchantId::new(["shop1", "shop2"][i])
}
fn node(i: usize) -> NodeId {
    NodeId::new(["node1", "node2"][i])
}
fn consumer(i: usize) -> (ConsumerId, CertSerial) {
    (ConsumerId::new(["c1", "c2"][i]), CertSerial::new(["s1", "s2"][i]))
}
fn voucher_id(i: usize) -> VoucherId {
    VoucherId::new(format!("v{i}"))
}
fn account_id() -> AccountId {
    AccountId::new("a1")
}

/// Four media: three in EUR and one in USD, so some baskets mix currencies.
fn catalog() -> Vec<(MediaId, Media)> {
    [("m0", 100, "EUR"), ("m1", 250, "EUR"), ("m2", 40, "EUR"), ("m3", 70, "USD")]
        .into_iter()
        .map(|(id, price, currency)| {
            let mut published = sample(id, price);
            published.currency = currency.into();
            (MediaId::new(id), fold(&[Event::MediaPublished(published)]))
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Tick(u64),
    /// Moves the clock to `offset` ms around voucher `v`'s expiry (never backwards).
    ToExpiry {
        v: usize,
        offset: i64,
    },
    Credit(u64),
    /// `mask` picks media from the catalog; `merchant` is who reserves.
    Reserve {
        v: usize,
        merchant: usize,
        mask: u8,
        points: bool,
        ttl_ms: u64,
    },
    /// `right`: the owning merchant (or assigned node) acts, else the other one.
    Authorize {
        v: usize,
        right: bool,
    },
    Void {
        v: usize,
        right: bool,
    },
    Refund {
        v: usize,
        right: bool,
        chargeback: bool,
    },
    /// Consumer `consumer` recovers `v`'s delivered copy at its node.
    Recover {
        v: usize,
        consumer: usize,
    },
    /// Moves `v` to node `node` as if its node were serving (0), drained (1), or removed
    /// or silent (2).
    Move {
        v: usize,
        node: usize,
        standing: u8,
    },
    /// `v`'s merchant (or, not `right`, the other one) renews a delivered voucher's access
    /// on `node`, its node standing as in `Move`.
    Renew {
        v: usize,
        right: bool,
        node: usize,
        standing: u8,
    },
    Expire {
        v: usize,
    },
    /// The sweeper's end of `v`'s access window, at the clock's now (moved past the
    /// window first when `past`).
    Lapse {
        v: usize,
        past: bool,
    },
    Issue {
        v: usize,
        right: bool,
        node: usize,
        ttl_ok: bool,
    },
    Redeem {
        v: usize,
        right: bool,
        consumer: usize,
        cert: CertCheck,
        proof_ok: bool,
    },
    Fail {
        v: usize,
        right: bool,
    },
    /// `item` indexes the voucher's items when `in_voucher`, else the catalog.
    Complete {
        v: usize,
        right: bool,
        item: usize,
        in_voucher: bool,
    },
    /// Re-sends an applied request: the same command, or (`same` false) another one.
    Retry {
        k: usize,
        same: bool,
    },
    /// The voucher's natural next command (so long lifecycles are common), with the
    /// inputs still right or wrong at random; `pick` varies basket, payment, item, consumer.
    Next {
        v: usize,
        right: bool,
        pick: u8,
    },
}

fn right() -> impl Strategy<Value = bool> {
    prop::bool::weighted(0.85)
}

/// A catalog mask, biased to albums in one currency so multi-item deliveries are common.
fn basket() -> impl Strategy<Value = u8> {
    prop_oneof![2 => prop::sample::select(vec![0b011u8, 0b101, 0b110, 0b111]), 1 => 1u8..16]
}

fn op() -> impl Strategy<Value = Op> {
    let cert = prop_oneof![6 => Just(CertCheck::Valid), 1 => Just(CertCheck::Revoked), 1 => Just(CertCheck::NotValid), 1 => Just(CertCheck::Unknown)];
    prop_oneof![
        2 => (0u64..40_000).prop_map(Op::Tick),
        1 => (0..VOUCHERS, prop_oneof![Just(-1i64), Just(0), Just(1), -2_000i64..2_000]).prop_map(|(v, offset)| Op::ToExpiry { v, offset }),
        1 => (1u64..800).prop_map(Op::Credit),
        3 => (0..VOUCHERS, 0..2usize, basket(), any::<bool>(), 1u64..60_000)
            .prop_map(|(v, merchant, mask, points, ttl_ms)| Op::Reserve { v, merchant, mask, points, ttl_ms }),
        3 => (0..VOUCHERS, right()).prop_map(|(v, right)| Op::Authorize { v, right }),
        1 => (0..VOUCHERS, right()).prop_map(|(v, right)| Op::Void { v, right }),
        1 => (0..VOUCHERS, right(), any::<bool>()).prop_map(|(v, right, chargeback)| Op::Refund { v, right, chargeback }),
        2 => (0..VOUCHERS, 0..2usize, 0..3u8).prop_map(|(v, node, standing)| Op::Move { v, node, standing }),
        2 => (0..VOUCHERS, right(), 0..2usize, 0..3u8).prop_map(|(v, right, node, standing)| Op::Renew { v, right, node, standing }),
        1 => (0..VOUCHERS, 0..2usize).prop_map(|(v, consumer)| Op::Recover { v, consumer }),
        1 => (0..VOUCHERS).prop_map(|v| Op::Expire { v }),
        1 => (0..VOUCHERS, any::<bool>()).prop_map(|(v, past)| Op::Lapse { v, past }),
        3 => (0..VOUCHERS, right(), 0..2usize, prop::bool::weighted(0.9))
            .prop_map(|(v, right, node, ttl_ok)| Op::Issue { v, right, node, ttl_ok }),
        3 => (0..VOUCHERS, right(), 0..2usize, cert, prop::bool::weighted(0.85))
            .prop_map(|(v, right, consumer, cert, proof_ok)| Op::Redeem { v, right, consumer, cert, proof_ok }),
        1 => (0..VOUCHERS, right()).prop_map(|(v, right)| Op::Fail { v, right }),
        5 => (0..VOUCHERS, right(), 0..4usize, prop::bool::weighted(0.9))
            .prop_map(|(v, right, item, in_voucher)| Op::Complete { v, right, item, in_voucher }),
        1 => (any::<usize>(), prop::bool::weighted(0.7)).prop_map(|(k, same)| Op::Retry { k, same }),
        8 => (0..VOUCHERS, right(), any::<u8>()).prop_map(|(v, right, pick)| Op::Next { v, right, pick }),
    ]
}

/// One aggregate's envelope and full history, each event with the time it was decided.
struct Stream<A: Aggregate> {
    root: Root<A>,
    events: Vec<(Millis, Event)>,
}

impl<A: Aggregate> Stream<A> {
    fn new() -> Self {
        Self { root: Root::default(), events: Vec::new() }
    }

    fn decide(&self, actor: &Actor, request: &RequestId, command: &A::Command, now: Millis) -> Result<Outcome, Rejection> {
        self.root.decide(actor, request, command, now)
    }

    fn append(&mut self, actor: &Actor, request: &RequestId, command: &A::Command, events: Vec<Event>, now: Millis) {
        for event in events {
            let version = self.root.version + 1;
            let recorded = Recorded {
                event_id: [0; 16],
                aggregate: event.aggregate(),
                aggregate_version: version,
                recorded_at: now,
                request_id: request.0.clone(),
                actor: actor.clone(),
                command: A::command_name(command).to_string(),
                event: event.clone(),
            };
            self.root.apply(Seq(version), &recorded);
            self.events.push((now, event));
        }
    }
}

/// How often the interesting paths were reached, over all cases (so the model is not vacuous).
#[derive(Default)]
struct Coverage {
    delivered_vouchers: Cell<u32>,
    timed_out: Cell<u32>,
    refunded_after_authorize: Cell<u32>,
    refunded_after_release: Cell<u32>,
    moved: Cell<u32>,
    moved_under_way: Cell<u32>,
    lapsed_under_way: Cell<u32>,
    renewed: Cell<u32>,
    recovered: Cell<u32>,
    points_posted: Cell<u32>,
    insufficient_points: Cell<u32>,
    repeated: Cell<u32>,
    redelivered_after_failure: Cell<u32>,
    partial_albums: Cell<u32>,
    repeated_completions: Cell<u32>,
}

fn bump(counter: &Cell<u32>) {
    counter.set(counter.get() + 1);
}

struct World {
    now: Millis,
    requests: u64,
    catalog: Vec<(MediaId, Media)>,
    vouchers: Vec<Stream<Voucher>>,
    account: Stream<Account>,
    /// Requests that wrote events: (voucher, actor, request, command), for retries.
    applied: Vec<(usize, Actor, RequestId, VoucherCommand)>,
}

fn emitted(outcome: Result<Outcome, Rejection>) -> Result<Result<Vec<Event>, Rejection>, TestCaseError> {
    match outcome {
        Ok(Outcome::Emit(events)) => Ok(Ok(events)),
        Ok(Outcome::Repeated) => Err(TestCaseError::fail("a fresh request id was answered as a repeat")),
        Err(rejection) => Ok(Err(rejection)),
    }
}

fn points_payment(voucher: &Voucher) -> bool {
    matches!(voucher.payment, Some(Payment::Points { .. }))
}

impl World {
    fn new() -> Self {
        Self { now: T0, requests: 0, catalog: catalog(), vouchers: (0..VOUCHERS).map(|_| Stream::new()).collect(), account: Stream::new(), applied: Vec::new() }
    }

    fn request(&mut self) -> RequestId {
        self.requests += 1;
        RequestId::new(format!("r{}", self.requests))
    }

    fn owner_or(&self, v: usize, right: bool) -> MerchantId {
        let owner = self.vouchers[v].root.state.merchant.clone().unwrap_or_else(|| merchant(0));
        if right {
            owner
        } else if owner == merchant(0) {
            merchant(1)
        } else {
            merchant(0)
        }
    }

    fn node_or(&self, v: usize, right: bool) -> NodeId {
        let assigned = self.vouchers[v].root.state.node.clone().unwrap_or_else(|| node(0));
        if right {
            assigned
        } else if assigned == node(0) {
            node(1)
        } else {
            node(0)
        }
    }

    /// Decides a command on voucher `v` and on the points account in one saga step: both
    /// are appended, or neither.
    fn voucher_step(&mut self, v: usize, actor: Actor, command: VoucherCommand) -> Result<Result<Vec<Event>, Rejection>, TestCaseError> {
        let request = self.request();
        let decided = emitted(self.vouchers[v].decide(&actor, &request, &command, self.now))?;
        let Ok(events) = &decided else { return Ok(decided) };
        if events.is_empty() {
            return Ok(decided);
        }
        let before = self.vouchers[v].root.state.clone();
        let account_command = if points_payment(&before) || matches!(&command, VoucherCommand::Reserve(r) if matches!(r.payment, Payment::Points { .. })) {
            self.account_command(&before, &events[0])
        } else {
            None
        };
        if let Some(account_command) = account_command {
            let engine = Actor::engine();
            match emitted(self.account.decide(&engine, &request, &account_command, self.now))? {
                Ok(account_events) => {
                    prop_assert!(!account_events.is_empty(), "{account_command:?} changed nothing on the account");
                    self.account.append(&engine, &request, &account_command, account_events, self.now);
                }
                Err(Rejection::InsufficientPoints) if matches!(account_command, AccountCommand::Hold { .. }) => {
                    return Ok(Err(Rejection::InsufficientPoints));
                }
                Err(rejection) => return Err(TestCaseError::fail(format!("{account_command:?} refused: {rejection:?}"))),
            }
        }
        self.vouchers[v].append(&actor, &request, &command, events.clone(), self.now);
        self.applied.push((v, actor, request, command));
        Ok(decided)
    }

    /// The points-account side of a voucher event, if it has one.
    fn account_command(&self, before: &Voucher, event: &Event) -> Option<AccountCommand> {
        let voucher = match event {
            Event::Reserved { voucher_id, .. } | Event::Authorized { voucher_id, .. } | Event::Voided { voucher_id, .. } => voucher_id.clone(),
            _ => return None,
        };
        match event {
            Event::Reserved { price_minor, expires_at, merchant_id, items, .. } => {
                // The consumer signed one authorization for this purchase, for this merchant
                // (the shell checked its signature; the account rules test each refusal).
                let media: Vec<MediaId> = items.iter().map(|item| item.media_id.clone()).collect();
                let mut nonce_hash = [0u8; 32];
                nonce_hash[..voucher.0.len().min(32)].copy_from_slice(&voucher.0.as_bytes()[..voucher.0.len().min(32)]);
                let consent = SpendConsent {
                    account: account_id(),
                    merchant: merchant_id.clone(),
                    amount_max: *price_minor,
                    media: media.clone(),
                    nonce_hash,
                    expires_at: *expires_at,
                    cert: CertCheck::Valid,
                    signature_valid: true,
                };
                Some(AccountCommand::Hold {
                    account: account_id(),
                    voucher,
                    amount: *price_minor,
                    expires_at: *expires_at,
                    merchant: merchant_id.clone(),
                    media,
                    consent: Some(consent),
                })
            }
            Event::Authorized { .. } => Some(AccountCommand::Post { voucher }),
            Event::Voided { reason, .. } if before.status == VoucherStatus::Pending => Some(AccountCommand::Release { voucher, reason: *reason }),
            // A refund after the points were spent gives them back as a credit.
            Event::Voided { .. } | Event::Refunded { .. } => {
                Some(AccountCommand::Credit { account: account_id(), amount: before.price_minor, reason: format!("refund {voucher}"), seller: None })
            }
            _ => None,
        }
    }

    /// The command that moves voucher `v` along its lifecycle, as an `Op`.
    fn next_op(&self, v: usize, right: bool, pick: u8) -> Op {
        let state = &self.vouchers[v].root.state;
        let pick = usize::from(pick);
        match state.status {
            VoucherStatus::None => {
                let masks = [0b001, 0b011, 0b101, 0b110, 0b111, 0b1000];
                Op::Reserve { v, merchant: pick % 2, mask: masks[pick % masks.len()], points: pick % 3 == 0, ttl_ms: 30_000 + 1_000 * (pick as u64) }
            }
            VoucherStatus::Pending => Op::Authorize { v, right },
            VoucherStatus::Authorized => Op::Issue { v, right, node: pick % 2, ttl_ok: pick % 16 != 0 },
            VoucherStatus::Issued => Op::Redeem { v, right, consumer: pick % 2, cert: CertCheck::Valid, proof_ok: pick % 8 != 0 },
            VoucherStatus::Redeeming => Op::Complete { v, right, item: pick, in_voucher: true },
            VoucherStatus::Delivered | VoucherStatus::Voided | VoucherStatus::Refunded => Op::Tick(1_000),
        }
    }

    fn apply(&mut self, op: &Op, coverage: &Coverage) -> Result<(), TestCaseError> {
        if let Op::Next { v, right, pick } = *op {
            return self.apply(&self.next_op(v, right, pick), coverage);
        }
        let shop = |m: &MerchantId| Actor::new(ActorKind::Merchant, m.0.clone());
        let node_actor = |n: &NodeId| Actor::new(ActorKind::Node, n.0.clone());
        match *op {
            Op::Tick(ms) => self.now = self.now.plus_ms(ms),
            Op::ToExpiry { v, offset } => {
                let state = &self.vouchers[v].root.state;
                if state.status != VoucherStatus::None {
                    self.now = self.now.max(Millis(state.expires_at.0 + offset));
                }
            }
            Op::Credit(amount) => {
                let request = self.request();
                let command = AccountCommand::Credit { account: account_id(), amount, reason: "top-up".into(), seller: None };
                let engine = Actor::new(ActorKind::Operator, "op");
                let events = emitted(self.account.decide(&engine, &request, &command, self.now))?;
                prop_assert!(events.is_ok(), "credit refused: {events:?}");
                self.account.append(&engine, &request, &command, events.unwrap_or_default(), self.now);
            }
            Op::Reserve { v, merchant: m, mask, points, ttl_ms } => {
                let items = self.catalog.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, item)| item.clone()).collect();
                let payment = if points { Payment::Points { account: account_id() } } else { Payment::Merchant { payment_ref: format!("pay-{v}") } };
                let command = VoucherCommand::Reserve(Reserve {
                    voucher_id: voucher_id(v),
                    merchant: merchant(m),
                    items,
                    rendition: "high".into(),
                    ttl_ms,
                    payment,
                    token_key_id: 1,
                    rental_ms: 0,
                    rental: crate::domain::voucher::RentalTerms { window_ms_min: 0, window_ms_max: 0, price_bps: 0 },
                });
                if let Err(Rejection::InsufficientPoints) = self.voucher_step(v, shop(&merchant(m)), command)? {
                    bump(&coverage.insufficient_points);
                }
            }
            Op::Authorize { v, right } => {
                let by = self.owner_or(v, right);
                let exists = self.vouchers[v].root.state.status != VoucherStatus::None;
                let points = points_payment(&self.vouchers[v].root.state);
                let command = VoucherCommand::Authorize(Authorize {
                    merchant: by.clone(),
                    receipt_key_id: 1,
                    media: self.catalog.iter().map(|(_, media)| media.clone()).collect(),
                });
                let decided = self.voucher_step(v, shop(&by), command)?;
                if exists && !right {
                    prop_assert_eq!(&decided, &Err(Rejection::NotFound { kind: "voucher", id: String::new() }), "another merchant authorized");
                }
                if points && decided.as_ref().is_ok_and(|events| !events.is_empty()) {
                    bump(&coverage.points_posted);
                }
            }
            Op::Void { v, right } => {
                let by = self.owner_or(v, right);
                let before = self.vouchers[v].root.state.status;
                let decided = self.voucher_step(v, shop(&by), VoucherCommand::Void { merchant: by.clone() })?;
                if before != VoucherStatus::None && !right {
                    prop_assert_eq!(&decided, &Err(Rejection::NotFound { kind: "voucher", id: String::new() }), "another merchant voided");
                }
                if before == VoucherStatus::Authorized && decided.is_ok() {
                    bump(&coverage.refunded_after_authorize);
                }
            }
            Op::Refund { v, right, chargeback } => {
                let by = self.owner_or(v, right);
                let before = self.vouchers[v].root.state.status;
                let command = VoucherCommand::Refund { merchant: by.clone(), reason: "asked".into(), chargeback };
                let decided = self.voucher_step(v, shop(&by), command)?;
                if before != VoucherStatus::None && !right {
                    prop_assert_eq!(&decided, &Err(Rejection::NotFound { kind: "voucher", id: String::new() }), "another merchant refunded");
                }
                if decided.as_ref().is_ok_and(|events| events.iter().any(|e| matches!(e, Event::Refunded { .. }))) {
                    bump(&coverage.refunded_after_release);
                }
            }
            Op::Recover { v, consumer: c } => {
                let state = &self.vouchers[v].root.state;
                let Some(at) = state.node.clone() else { return Ok(()) };
                let owner = state.released_to.as_ref().map(|(consumer, _)| consumer.clone());
                let (consumer_id, cert_serial) = consumer(c);
                let mut challenge = [0u8; 32];
                challenge[..8].copy_from_slice(&self.requests.to_le_bytes());
                let redeem = Redeem {
                    node: at.clone(),
                    consumer: consumer_id.clone(),
                    cert_serial,
                    cert: CertCheck::Valid,
                    proof: ProofCheck::Valid,
                    challenge_hash: challenge,
                    consumer_key_hash: [c as u8; 32],
                    retries_max: RETRIES_MAX,
                };
                let decided = self.voucher_step(v, node_actor(&at), VoucherCommand::Recover { redeem, recoveries_max: 2 })?;
                if decided.as_ref().is_ok_and(|events| !events.is_empty()) {
                    prop_assert_eq!(owner, Some(consumer_id), "a copy recovered by someone its keys did not go to");
                    bump(&coverage.recovered);
                }
            }
            Op::Move { v, node: n, standing } => {
                let state = &self.vouchers[v].root.state;
                let (released, exhausted) = (state.released_to.is_some(), state.delivery_failures > RETRIES_MAX);
                let old_node = standing_of(standing);
                let command = VoucherCommand::Move { merchant: None, node: node(n), access_ttl_ms: 3_600_000, old_node, retries_max: RETRIES_MAX, lease: 0 };
                let decided = self.voucher_step(v, Actor::engine(), command)?;
                let moved = decided.is_ok_and(|events| !events.is_empty());
                if old_node == NodeStanding::Serving {
                    prop_assert!(!moved || exhausted, "moved off a node that still serves it");
                }
                // Keys out: only a node that finishes nothing lets go (or retries ran out).
                prop_assert!(!moved || !released || exhausted || old_node == NodeStanding::Dead, "a delivery under way moved off a node {old_node:?}");
                if moved {
                    bump(&coverage.moved);
                    if released {
                        bump(&coverage.moved_under_way);
                    }
                }
            }
            Op::Renew { v, right, node: n, standing } => {
                // A renewal is asked for once the window is over (a lost copy found later).
                if self.vouchers[v].root.state.status == VoucherStatus::Delivered {
                    self.now = self.now.max(self.vouchers[v].root.state.access_expires_at.plus_ms(1));
                }
                let by = self.owner_or(v, right);
                let state = &self.vouchers[v].root.state;
                let (exists, delivered) = (state.status != VoucherStatus::None, state.status == VoucherStatus::Delivered);
                let command = VoucherCommand::RenewAccess {
                    merchant: by.clone(),
                    node: node(n),
                    access_ttl_ms: 3_600_000,
                    old_node: standing_of(standing),
                    recoveries_max: 2,
                };
                let decided = self.voucher_step(v, shop(&by), command)?;
                if exists && !right {
                    prop_assert_eq!(&decided, &Err(Rejection::NotFound { kind: "voucher", id: String::new() }), "another merchant renewed");
                }
                if decided.is_ok_and(|events| !events.is_empty()) {
                    prop_assert!(delivered, "renewed a voucher not delivered");
                    bump(&coverage.renewed);
                }
            }
            Op::Lapse { v, past } => {
                if past && self.vouchers[v].root.state.node.is_some() {
                    self.now = self.now.max(self.vouchers[v].root.state.access_expires_at.plus_ms(1));
                }
                let under_way = self.vouchers[v].root.state.status == VoucherStatus::Redeeming;
                if self.voucher_step(v, Actor::engine(), VoucherCommand::LapseAccess)?.is_ok_and(|events| !events.is_empty()) && under_way {
                    bump(&coverage.lapsed_under_way);
                }
            }
            Op::Expire { v } => {
                if self.voucher_step(v, Actor::engine(), VoucherCommand::Expire)?.is_ok_and(|events| !events.is_empty()) {
                    bump(&coverage.timed_out);
                }
            }
            Op::Issue { v, right, node: n, ttl_ok } => {
                let by = self.owner_or(v, right);
                let exists = self.vouchers[v].root.state.status != VoucherStatus::None;
                let command = VoucherCommand::Issue { merchant: by.clone(), node: node(n), access_ttl_ms: if ttl_ok { 3_600_000 } else { 0 }, lease: 0 };
                let decided = self.voucher_step(v, shop(&by), command)?;
                if exists && !right {
                    prop_assert_eq!(&decided, &Err(Rejection::NotFound { kind: "voucher", id: String::new() }), "another merchant issued");
                }
            }
            Op::Redeem { v, right, consumer: c, cert, proof_ok } => {
                let at = self.node_or(v, right);
                let state = &self.vouchers[v].root.state;
                let (exists, assigned, failures) = (state.status != VoucherStatus::None, state.node.as_ref() == Some(&at), state.delivery_failures);
                let (consumer_id, cert_serial) = consumer(c);
                let proof = if proof_ok { ProofCheck::Valid } else { ProofCheck::Invalid };
                let command = VoucherCommand::Redeem(Redeem {
                    node: at.clone(),
                    consumer: consumer_id,
                    cert_serial,
                    cert,
                    proof,
                    // A fresh challenge per step (the node issues one per Redeem); the request
                    // counter never repeats.
                    challenge_hash: {
                        let mut challenge = [0u8; 32];
                        challenge[..8].copy_from_slice(&self.requests.to_le_bytes());
                        challenge
                    },
                    consumer_key_hash: [c as u8; 32],
                    retries_max: RETRIES_MAX,
                });
                let decided = self.voucher_step(v, node_actor(&at), command)?;
                if exists && !assigned {
                    prop_assert!(matches!(&decided, Err(Rejection::NotYourAssignment | Rejection::VoucherMoved)), "an unassigned node redeemed: {decided:?}");
                }
                if decided.as_ref().is_ok_and(|events| !events.is_empty()) {
                    prop_assert!(cert == CertCheck::Valid && proof_ok, "redemption accepted with {cert:?}, proof ok {proof_ok}");
                    // A voucher's keys go to one consumer, ever (`released_to` keeps its first certificate).
                    let released = self.vouchers[v].root.state.released_to.clone();
                    prop_assert_eq!(released, Some(consumer(c)), "keys released to a second consumer");
                    if failures > 0 {
                        bump(&coverage.redelivered_after_failure);
                    }
                }
            }
            Op::Fail { v, right } => {
                let at = self.node_or(v, right);
                let state = &self.vouchers[v].root.state;
                let (exists, assigned) = (state.status != VoucherStatus::None, state.node.as_ref() == Some(&at));
                // The player's confirm proof verifies only once keys were released (the shell).
                let proof = if state.released_to.is_some() { ProofCheck::Valid } else { ProofCheck::Invalid };
                let decided = self.voucher_step(v, node_actor(&at), VoucherCommand::FailDelivery { node: at.clone(), reason: "stream reset".into(), proof })?;
                if exists && !assigned {
                    prop_assert!(
                        matches!(&decided, Err(Rejection::NotYourAssignment | Rejection::VoucherMoved)),
                        "an unassigned node failed a delivery: {decided:?}"
                    );
                }
            }
            Op::Complete { v, right, item, in_voucher } => {
                let at = self.node_or(v, right);
                let state = &self.vouchers[v].root.state;
                let media_id = if in_voucher && !state.items.is_empty() {
                    state.items[item % state.items.len()].media_id.clone()
                } else {
                    self.catalog[item % self.catalog.len()].0.clone()
                };
                let (exists, assigned) = (state.status != VoucherStatus::None, state.node.as_ref() == Some(&at));
                let proof = if state.released_to.is_some() { ProofCheck::Valid } else { ProofCheck::Invalid };
                let command = VoucherCommand::CompleteDelivery(CompleteDelivery { node: at.clone(), media_id, content_hash: [3; 32], size_bytes: 10, proof });
                let decided = self.voucher_step(v, node_actor(&at), command)?;
                if exists && !assigned {
                    prop_assert!(matches!(&decided, Err(Rejection::NotYourAssignment | Rejection::VoucherMoved)), "an unassigned node delivered: {decided:?}");
                }
                match &decided {
                    Ok(events) if events.is_empty() => bump(&coverage.repeated_completions),
                    Ok(events) if events.iter().any(|e| matches!(e, Event::Delivered { voucher_complete: true, .. })) => bump(&coverage.delivered_vouchers),
                    Ok(_) => bump(&coverage.partial_albums),
                    Err(_) => {}
                }
            }
            Op::Next { .. } => unreachable!("mapped to a concrete op above"),
            Op::Retry { k, same } => {
                if self.applied.is_empty() {
                    return Ok(());
                }
                let (v, actor, request, command) = self.applied[k % self.applied.len()].clone();
                let first = Voucher::command_name(&command);
                let stream = &self.vouchers[v];
                if same {
                    prop_assert_eq!(stream.decide(&actor, &request, &command, self.now), Ok(Outcome::Repeated));
                    bump(&coverage.repeated);
                } else {
                    let other = if first == "Expire" { VoucherCommand::Void { merchant: merchant(0) } } else { VoucherCommand::Expire };
                    prop_assert_eq!(stream.decide(&actor, &request, &other, self.now), Err(Rejection::RequestIdReused { first: first.to_string() }));
                }
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        for (v, stream) in self.vouchers.iter().enumerate() {
            voucher_history(&stream.events).map_err(|e| format!("voucher {v}: {e}"))?;
            replays(stream).map_err(|e| format!("voucher {v}: {e}"))?;
            delivered_means_every_item(&stream.root.state).map_err(|e| format!("voucher {v}: {e}"))?;
        }
        account_history(&self.account.events, &self.account.root.state)?;
        replays(&self.account)?;
        self.saga_agrees()
    }

    /// Each points voucher's hold is where its status says: held while Pending, posted once
    /// Authorized, released when voided before that.
    fn saga_agrees(&self) -> Result<(), String> {
        let account = &self.account.root.state;
        for stream in &self.vouchers {
            let voucher = &stream.root.state;
            if !points_payment(voucher) {
                continue;
            }
            let id = voucher.id_or_empty();
            let authorized = stream.events.iter().any(|(_, e)| matches!(e, Event::Authorized { .. }));
            let expected = match voucher.status {
                VoucherStatus::Pending => account.held.contains_key(&id),
                VoucherStatus::Voided if !authorized => account.released.contains(&id),
                _ => account.posted.contains(&id),
            };
            if !expected {
                return Err(format!("{id} is {:?} but its hold is not where it should be: {account:?}", voucher.status));
            }
        }
        Ok(())
    }
}

/// (f) folding the full history from scratch equals the incrementally evolved state.
fn replays<A: Aggregate + PartialEq>(stream: &Stream<A>) -> Result<(), String> {
    let events: Vec<Event> = stream.events.iter().map(|(_, e)| e.clone()).collect();
    let replayed: A = fold(&events);
    if replayed != stream.root.state {
        return Err(format!("replay {replayed:?} differs from incremental {:?}", stream.root.state));
    }
    if stream.root.version != events.len() as u64 {
        return Err(format!("version {} after {} events", stream.root.version, events.len()));
    }
    Ok(())
}

/// (a) each media delivered at most once, only while redeemed, by the assigned node;
/// (b) nothing happens to a voucher after it is Voided; (c) no Authorize decided after
/// `expires_at`; (e) every settlement balances and moves exactly the price, and a refund
/// reverses it. Every event must also follow an edge of DESIGN.md's diagram.
fn voucher_history(events: &[(Millis, Event)]) -> Result<(), String> {
    use VoucherStatus as S;
    let mut status = S::None;
    let mut expires = None;
    let mut price = 0u64;
    let mut items = 0usize;
    let mut postings: Vec<Posting> = Vec::new();
    let mut node = None;
    let mut delivered = BTreeSet::new();
    let mut released = false;
    let mut failures = 0u32;
    for (at, event) in events {
        if status == S::Voided || status == S::Refunded {
            return Err(format!("{} after {status:?}", event.name()));
        }
        let (from, to): (&[VoucherStatus], VoucherStatus) = match event {
            Event::Reserved { .. } => (&[S::None], S::Pending),
            Event::Authorized { .. } => (&[S::Pending], S::Authorized),
            // Issued only while no key was released (then a refund is a `Refunded`).
            Event::Voided { .. } if !released => (&[S::Pending, S::Authorized, S::Issued], S::Voided),
            Event::Voided { .. } => return Err("Voided after a key was released".into()),
            Event::Refunded { .. } if released => (&[S::Authorized, S::Issued, S::Redeeming, S::Delivered], S::Refunded),
            Event::AccessLapsed { .. } => (&[S::Issued, S::Redeeming], S::Authorized),
            Event::Refunded { .. } => return Err("Refunded before any key was released".into()),
            Event::VoucherIssued { previous_node: None, .. } => (&[S::Authorized], S::Issued),
            // A move: an issued voucher whose keys never went out, or whose deliveries
            // failed past the retries (issued anew); or, off a node that finishes nothing,
            // one under way (which node stood how is checked where the move is decided).
            Event::VoucherIssued { previous_node: Some(_), .. } if !released || failures > RETRIES_MAX => (&[S::Issued], S::Issued),
            Event::VoucherIssued { .. } => (&[S::Issued, S::Redeeming], S::Issued),
            Event::AccessRenewed { .. } => (&[S::Delivered], S::Delivered),
            Event::RedemptionAccepted { .. } => (&[S::Issued], S::Redeeming),
            // The domain also accepts a failure report before redemption; it changes nothing.
            Event::DeliveryFailed { .. } => (&[S::Redeeming, S::Issued], S::Issued),
            Event::Delivered { voucher_complete: true, .. } => (&[S::Redeeming], S::Delivered),
            Event::Delivered { .. } => (&[S::Redeeming], S::Redeeming),
            Event::CopyRecovered { .. } => (&[S::Delivered], S::Delivered),
            other => return Err(format!("foreign event {}", other.name())),
        };
        if !from.contains(&status) {
            return Err(format!("{} while {status:?}", event.name()));
        }
        match event {
            Event::Reserved { expires_at, price_minor, items: reserved, .. } => {
                (expires, price, items) = (Some(*expires_at), *price_minor, reserved.len());
            }
            Event::Authorized { postings: settled, .. } => {
                if expires.is_none_or(|expires_at| *at > expires_at) {
                    return Err(format!("Authorized at {at:?}, after expiry {expires:?}"));
                }
                if !balanced(settled) {
                    return Err(format!("unbalanced postings {settled:?}"));
                }
                let debited: u64 = settled.iter().map(|p| p.debit_minor).sum();
                if debited != price {
                    return Err(format!("settled {debited} for a price of {price}"));
                }
                postings = settled.clone();
            }
            Event::VoucherIssued { node_id, previous_node, .. } => {
                let anew = failures > RETRIES_MAX;
                if previous_node.is_some() {
                    failures = 0;
                }
                if previous_node.is_some() && (previous_node != &node || (previous_node.as_ref() == Some(node_id) && !anew)) {
                    return Err(format!("moved from {previous_node:?} while on {node:?}, to {node_id}"));
                }
                node = Some(node_id.clone());
            }
            Event::AccessRenewed { node_id, previous_node, .. } => {
                if previous_node.is_some() && (previous_node != &node || previous_node.as_ref() == Some(node_id)) {
                    return Err(format!("access renewed from {previous_node:?} while on {node:?}, to {node_id}"));
                }
                if previous_node.is_none() && node.as_ref() != Some(node_id) {
                    return Err(format!("access renewed on {node_id} while on {node:?} without a move"));
                }
                node = Some(node_id.clone());
            }
            // The keys go out once: a redemption after the first releases nothing anew.
            Event::RedemptionAccepted { released_media, .. } if released && !released_media.is_empty() => {
                return Err(format!("keys of {released_media:?} released a second time"));
            }
            Event::RedemptionAccepted { node_id, .. } if node.as_ref() != Some(node_id) => {
                return Err(format!("redeemed on {node_id} while assigned to {node:?}"));
            }
            Event::Delivered { media_id, node_id, voucher_complete, .. } => {
                if node.as_ref() != Some(node_id) {
                    return Err(format!("{media_id} delivered by {node_id} while assigned to {node:?}"));
                }
                if !delivered.insert(media_id.clone()) {
                    return Err(format!("{media_id} delivered twice"));
                }
                if *voucher_complete != (delivered.len() == items) {
                    return Err(format!("voucher_complete {voucher_complete} after {} of {items} items", delivered.len()));
                }
            }
            Event::Voided { reversal, .. } | Event::Refunded { reversal, .. } if *reversal != reverse(&postings) => {
                return Err(format!("reversal {reversal:?} does not undo {postings:?}"));
            }
            Event::RedemptionAccepted { .. } => released = true,
            Event::DeliveryFailed { .. } => failures += 1,
            Event::AccessLapsed { .. } => node = None,
            _ => {}
        }
        status = to;
    }
    Ok(())
}

/// A voucher is Delivered exactly when every one of its items is.
fn delivered_means_every_item(voucher: &Voucher) -> Result<(), String> {
    let all = !voucher.items.is_empty() && voucher.delivered.len() == voucher.items.len();
    // A refund after the delivery keeps what was delivered.
    if all != (voucher.status == VoucherStatus::Delivered) && voucher.status != VoucherStatus::Refunded {
        return Err(format!("{:?} with {} of {} items delivered", voucher.status, voucher.delivered.len(), voucher.items.len()));
    }
    Ok(())
}

/// (d) the balance is credits less posted holds and never below what is held (so
/// `available()` never needs its saturation); every hold ends in exactly one of held,
/// posted or released, for the amount held.
fn account_history(events: &[(Millis, Event)], account: &Account) -> Result<(), String> {
    let mut credits = 0u128;
    let mut spent = 0u128;
    let mut holds: BTreeMap<VoucherId, u64> = BTreeMap::new();
    for (_, event) in events {
        match event {
            Event::PointsCredited { amount, .. } => credits += u128::from(*amount),
            Event::PointsHeld { voucher_id, amount, .. } => {
                if holds.insert(voucher_id.clone(), *amount).is_some() {
                    return Err(format!("{voucher_id} held twice"));
                }
            }
            Event::HoldPosted { voucher_id, amount, .. } | Event::HoldReleased { voucher_id, amount, .. } => {
                if holds.get(voucher_id) != Some(amount) {
                    return Err(format!("{} of {amount} for {voucher_id}, which holds {:?}", event.name(), holds.get(voucher_id)));
                }
                if matches!(event, Event::HoldPosted { .. }) {
                    spent += u128::from(*amount);
                }
            }
            other => return Err(format!("foreign event {}", other.name())),
        }
    }
    if u128::from(account.balance) + spent != credits {
        return Err(format!("balance {} but credits {credits} less spent {spent}", account.balance));
    }
    if account.balance < account.held_total() {
        return Err(format!("holds {} exceed the balance {}", account.held_total(), account.balance));
    }
    let held: BTreeSet<&VoucherId> = account.held.keys().collect();
    let posted: BTreeSet<&VoucherId> = account.posted.iter().collect();
    let released: BTreeSet<&VoucherId> = account.released.iter().collect();
    let all: BTreeSet<&VoucherId> = holds.keys().collect();
    let parts = held.len() + posted.len() + released.len();
    let union: BTreeSet<&VoucherId> = held.iter().chain(&posted).chain(&released).copied().collect();
    if union != all || parts != all.len() {
        return Err(format!("held {held:?}, posted {posted:?}, released {released:?} do not partition {all:?}"));
    }
    Ok(())
}

fn standing_of(standing: u8) -> NodeStanding {
    [NodeStanding::Serving, NodeStanding::Gone, NodeStanding::Dead][usize::from(standing % 3)]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..100)
}

#[test]
fn lifecycle_rules_hold_under_any_interleaving() {
    let rng_seed = proptest::test_runner::RngSeed::Fixed(crate::testing::proptest_seed("lifecycle_rules_hold_under_any_interleaving"));
    let config = Config { cases: Config::default().cases.max(256), failure_persistence: None, rng_seed, ..Config::default() };
    let coverage = Coverage::default();
    let result = TestRunner::new(config).run(&ops(), |ops| {
        let mut world = World::new();
        for (step, op) in ops.iter().enumerate() {
            world.apply(op, &coverage)?;
            world.check().map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {e}")))?;
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The model must actually reach the paths it claims to check.
    let reached = [
        ("delivered vouchers", &coverage.delivered_vouchers),
        ("timed out reservations", &coverage.timed_out),
        ("refunds after authorize", &coverage.refunded_after_authorize),
        ("refunds after a release", &coverage.refunded_after_release),
        ("vouchers moved off a node gone", &coverage.moved),
        ("deliveries under way moved off a node that finishes nothing", &coverage.moved_under_way),
        ("delivered vouchers' access renewed", &coverage.renewed),
        ("deliveries under way lapsed", &coverage.lapsed_under_way),
        ("lost copies recovered", &coverage.recovered),
        ("points posted", &coverage.points_posted),
        ("insufficient points", &coverage.insufficient_points),
        ("repeated requests", &coverage.repeated),
        ("redemptions after a failed delivery", &coverage.redelivered_after_failure),
        ("partly delivered albums", &coverage.partial_albums),
        ("repeated completions", &coverage.repeated_completions),
    ];
    if std::env::var_os("MODEL_COVERAGE").is_some() {
        for (what, count) in reached {
            eprintln!("{what}: {}", count.get());
        }
    }
    for (what, count) in reached {
        assert!(count.get() > 0, "the model never reached {what}");
    }
}

// ---- negative controls: each history check catches the breach it is for ----

fn good_history() -> Vec<(Millis, Event)> {
    use super::fixtures as f;
    f::song_delivered().into_iter().map(|e| (T0, e)).collect()
}

#[test]
fn model_accepts_a_correct_history() {
    assert_eq!(voucher_history(&good_history()), Ok(()));
}

#[test]
fn model_catches_a_second_delivery() {
    let mut history = good_history();
    history.push(history[history.len() - 1].clone());
    assert!(voucher_history(&history).is_err());
}

#[test]
fn model_catches_a_delivery_without_redemption() {
    let mut history = good_history();
    history.remove(3); // RedemptionAccepted
    assert!(voucher_history(&history).is_err());
}

#[test]
fn model_catches_a_transition_off_the_diagram() {
    use super::fixtures as f;
    let mut history: Vec<(Millis, Event)> = f::song_issued().into_iter().map(|e| (T0, e)).collect();
    let issued = history.last().expect("issued").clone();
    history.push(issued);
    assert!(voucher_history(&history).is_err_and(|e| e.contains("VoucherIssued while Issued")));
    // Once a key is released, money comes back only as a refund, never a void (and a
    // refund only after a release).
    let mut history: Vec<(Millis, Event)> = f::song_redeeming().into_iter().map(|e| (T0, e)).collect();
    history.push((T0, f::voided(VoidReason::Refunded, f::reverse_song())));
    assert!(voucher_history(&history).is_err_and(|e| e.contains("after a key was released")));
    let mut history: Vec<(Millis, Event)> = f::song_issued().into_iter().map(|e| (T0, e)).collect();
    let refunded = Event::Refunded { voucher_id: f::voucher_id(), reason: "r".into(), chargeback: false, reversal: f::reverse_song(), media_ids: vec![] };
    history.push((T0, refunded));
    assert!(voucher_history(&history).is_err_and(|e| e.contains("before any key was released")));
}

#[test]
fn model_catches_a_voucher_stuck_short_of_delivered() {
    use super::fixtures as f;
    let mut early: Voucher = fold(&f::album_redeeming());
    assert_eq!(delivered_means_every_item(&early), Ok(()));
    early.status = VoucherStatus::Delivered;
    assert!(delivered_means_every_item(&early).is_err());
    let mut stuck: Voucher = fold(&f::song_delivered());
    stuck.status = VoucherStatus::Redeeming;
    assert!(delivered_means_every_item(&stuck).is_err());
}

#[test]
fn model_catches_events_after_void() {
    use super::fixtures as f;
    let mut history: Vec<(Millis, Event)> = f::song_voided().into_iter().map(|e| (T0, e)).collect();
    history.push((T0, f::authorized(f::song_postings())));
    assert!(voucher_history(&history).is_err());
}

#[test]
fn model_catches_an_authorize_after_expiry() {
    let mut history = good_history();
    history[1].0 = Millis(super::fixtures::EXPIRES.0 + 1);
    assert!(voucher_history(&history).is_err());
}

#[test]
fn model_catches_unbalanced_postings() {
    let mut history = good_history();
    if let Event::Authorized { postings, .. } = &mut history[1].1 {
        postings[1].credit_minor += 1;
    }
    assert!(voucher_history(&history).is_err());
}

#[test]
fn model_catches_an_account_that_spends_points_not_held() {
    let v = VoucherId::new("v1");
    let events = vec![
        (T0, Event::PointsCredited { account_id: account_id(), amount: 100, reason: "x".into(), sale: None }),
        (T0, Event::PointsHeld { account_id: account_id(), voucher_id: v.clone(), amount: 60, expires_at: T0, nonce_hash: None }),
        (T0, Event::HoldPosted { account_id: account_id(), voucher_id: v.clone(), amount: 60 }),
    ];
    let account: Account = fold(&events.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>());
    assert_eq!(account_history(&events, &account), Ok(()));
    let mut overspent = events.clone();
    overspent[2].1 = Event::HoldPosted { account_id: account_id(), voucher_id: v.clone(), amount: 70 };
    assert!(account_history(&overspent, &fold(&overspent.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>())).is_err());
    let mut lost = account.clone();
    lost.posted.clear();
    assert!(account_history(&events, &lost).is_err());
    // Two holds the domain would never grant together: only the underflow check objects.
    let over_held = vec![
        events[0].clone(),
        events[1].clone(),
        (T0, Event::PointsHeld { account_id: account_id(), voucher_id: VoucherId::new("v2"), amount: 60, expires_at: T0, nonce_hash: None }),
    ];
    let state: Account = fold(&over_held.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>());
    assert_eq!(state.available(), 0, "saturation hides the underflow");
    assert!(account_history(&over_held, &state).is_err_and(|e| e.contains("exceed")));
}

#[test]
fn model_catches_a_state_that_replay_does_not_rebuild() {
    let mut stream = Stream::<Voucher>::new();
    let actor = Actor::new(ActorKind::Merchant, "shop1");
    let command = VoucherCommand::Expire;
    let history = good_history();
    stream.append(&actor, &RequestId::new("r1"), &command, history.into_iter().map(|(_, e)| e).collect(), T0);
    assert_eq!(replays(&stream), Ok(()));
    stream.root.state.delivered.clear();
    assert!(replays(&stream).is_err());
}
