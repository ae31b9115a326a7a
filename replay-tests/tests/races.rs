//! Races (issue 8 item 3): two engines (two `Market`s, each with its own handler, cache and
//! locks, as two processes would have) on one stream fire Authorize, Void, expiry and
//! Redeem at the same vouchers at once, and hold points on one account concurrently. A
//! model then replays each voucher's and the account's events: every transition is one
//! the lifecycle allows (a voucher is delivered at most once, a voided one is never
//! authorized or delivered, nothing happens after Delivered), and the points balance never
//! goes negative. On the embedded log and on JetStream.

mod common;

use engine::app::{Allocator, EngineKeys, Market};
use engine::clock::{Clock, ManualClock};
use engine::crypto::{self, test_keys};
use engine::domain::Event;
use engine::domain::event::Payment;
use engine::ids::*;
use engine::log::EventLog;
use std::sync::Arc;

struct OneNode(NodeId);

impl Allocator for OneNode {
    fn choose(&self, _region: Option<&str>, _holder: &str) -> Option<engine::placement::Placed> {
        Some(engine::placement::Placed { node: self.0.clone(), lease: 0 })
    }

    fn cancel(&self, _holder: &str) {}
}

const T0: i64 = 1_700_000_000_000;
const TTL_MS: u64 = 60_000;
const VOUCHERS: usize = 24;
const PRICE: u64 = 100;

/// The lifecycle as a model: the status after each event, or the violation.
fn model(events: &[Event]) -> Result<(), String> {
    #[derive(Debug, PartialEq, Clone, Copy)]
    enum S {
        None,
        Pending,
        Authorized,
        Issued,
        Redeeming,
        Delivered,
        Voided,
    }
    let mut state = S::None;
    let mut keys_to: Option<&ConsumerId> = None;
    for event in events {
        if let Event::RedemptionAccepted { consumer_id, .. } = event {
            match keys_to {
                Some(first) if first != consumer_id => return Err(format!("keys released to {first} and to {consumer_id}")),
                _ => keys_to = Some(consumer_id),
            }
        }
        let next = match (state, event) {
            (S::None, Event::Reserved { .. }) => S::Pending,
            (S::Pending, Event::Authorized { .. }) => S::Authorized,
            (S::Pending | S::Authorized, Event::Voided { .. }) => S::Voided,
            (S::Authorized, Event::VoucherIssued { .. }) => S::Issued,
            (S::Issued | S::Redeeming, Event::RedemptionAccepted { .. }) => S::Redeeming,
            (S::Redeeming, Event::DeliveryFailed { .. }) => S::Issued,
            (S::Redeeming, Event::Delivered { voucher_complete, .. }) => {
                if *voucher_complete {
                    S::Delivered
                } else {
                    S::Redeeming
                }
            }
            (state, event) => return Err(format!("{} in state {state:?}", event.name())),
        };
        state = next;
    }
    Ok(())
}

async fn decoded(log: &dyn EventLog, subject: &str) -> Vec<Event> {
    log.read_subject(subject).await.expect("read").iter().map(|stored| engine::wire::decode(&stored.payload).expect("decodes").event).collect()
}

async fn race(log: Arc<dyn EventLog>) {
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("keys"));
    let clock_a = Arc::new(ManualClock::new(Millis(T0)));
    let setup = Market::new(Arc::clone(&log), clock_a.clone() as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(OneNode(NodeId::new("x"))));
    let (node, _) = setup.register_node("op", &RequestId::new("n"), "eu", 1000).await.expect("node");
    let node = NodeId(node.id);
    let merchant = MerchantId(setup.register_merchant("op", &RequestId::new("m"), "Shop").await.expect("merchant").id);
    let wrapped = crypto::wrap_key(&keys.public, &crypto::SecretKey::random()).expect("wrap");
    let media = setup.publish_media("pub", &RequestId::new("md"), common::song("Song", PRICE, wrapped)).await.expect("publish");
    let consumer = ConsumerId::new("alice");
    let cert = setup
        .certify_consumer("op", &RequestId::new("c"), &consumer, &test_keys::fixed_rsa_2().public().to_der().expect("der"), 86_400_000)
        .await
        .expect("certify");
    // Bob races alice for every voucher's keys (with a valid proof of the receipt).
    let bob = engine::testing::TestConsumer::certify(&setup, "op", "bob").await.expect("certify bob");
    let payer = engine::testing::TestConsumer::certify(&setup, "op", "acct-race").await.expect("certify the payer");
    let account = payer.account();
    // Enough points for about half the reservations: concurrent holds must never overdraw.
    setup.top_up("op", &RequestId::new("topup"), &account, PRICE * (VOUCHERS as u64) / 2, "").await.expect("top up");

    // Two engines on the same stream; B's clock is past every reservation's expiry.
    let a = Arc::new(Market::new(Arc::clone(&log), clock_a.clone() as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(OneNode(node.clone()))));
    let clock_b = Arc::new(ManualClock::new(Millis(T0 + TTL_MS as i64 + 1)));
    let b = Arc::new(Market::new(Arc::clone(&log), clock_b as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(OneNode(node.clone()))));

    // Reservations: half paid in points (racing holds on one account), from both engines.
    let mut reserves = tokio::task::JoinSet::new();
    for i in 0..VOUCHERS {
        // Both engines reserve (B's reservations expire later by B's clock; the race below is about A's).
        let market = if i % 4 == 3 { Arc::clone(&b) } else { Arc::clone(&a) };
        let (merchant, media, account) = (merchant.clone(), media.clone(), account.clone());
        // Each points reservation carries its own authorization from the payer.
        let spend = (i % 2 == 0).then(|| payer.authorize(&merchant, u64::MAX, &[], Millis(T0 + 3_600_000)));
        reserves.spawn(async move {
            let payment = if i % 2 == 0 { Payment::Points { account } } else { Payment::Merchant { payment_ref: format!("card-{i}") } };
            market
                .reserve(&merchant, &RequestId::new(format!("r{i}")), std::slice::from_ref(&media), "high", TTL_MS, payment, spend.as_ref())
                .await
                .map(|answer| answer.voucher_id)
        });
    }
    let mut vouchers = Vec::new();
    while let Some(joined) = reserves.join_next().await {
        if let Ok(voucher) = joined.expect("task") {
            vouchers.push(voucher);
        }
    }
    assert!(vouchers.len() >= VOUCHERS / 2, "the merchant-paid half and some points-paid ones reserve: {}", vouchers.len());

    // Every voucher at once: A authorizes, issues, then redeems for alice while B redeems
    // the same voucher for bob (both proofs valid); A and B void; B expires; B authorizes
    // under its own request id.
    let mut racers = tokio::task::JoinSet::new();
    for voucher in &vouchers {
        for racer in 0..5 {
            let (a, b, merchant, voucher, node, consumer, serial, media) =
                (Arc::clone(&a), Arc::clone(&b), merchant.clone(), voucher.clone(), node.clone(), consumer.clone(), cert.serial.clone(), media.clone());
            let bob = bob.clone();
            racers.spawn(async move {
                match racer {
                    0 => {
                        if let Ok(authorized) = a.authorize(&merchant, &RequestId::new(format!("a-{voucher}")), &voucher).await
                            && a.issue(&merchant, &RequestId::new(format!("i-{voucher}")), &voucher, None, 600_000).await.is_ok()
                        {
                            let challenge = [7u8; 32];
                            let subject = crypto::ProofConsumer::new(&consumer.0, &serial.0, &test_keys::fixed_rsa_2().public().to_der().expect("der"));
                            let proof = crypto::receipt_proof(&authorized.receipt, &voucher.0, &node.0, &challenge, &subject);
                            let bob_der = bob.passport.public().to_der().expect("der");
                            let bob_subject = crypto::ProofConsumer::new(&bob.id.0, &bob.serial.0, &bob_der);
                            let bob_challenge = [8u8; 32];
                            let bob_proof = crypto::receipt_proof(&authorized.receipt, &voucher.0, &node.0, &bob_challenge, &bob_subject);
                            let (alice_request, bob_request) = (RequestId::new(format!("d-{voucher}")), RequestId::new(format!("d2-{voucher}")));
                            let (for_alice, for_bob) = tokio::join!(
                                a.redeem(&node, &alice_request, &voucher, &consumer, &serial, &challenge, &proof),
                                b.redeem(&node, &bob_request, &voucher, &bob.id, &bob.serial, &bob_challenge, &bob_proof),
                            );
                            assert!(for_alice.is_err() || for_bob.is_err(), "{voucher}: both consumers got the keys");
                            if for_alice.is_ok() {
                                let confirm = crypto::confirm_proof(&authorized.receipt, &voucher.0, &node.0, &media.0, &[1; 32], &subject);
                                let _ = a.complete_delivery(&node, &RequestId::new(format!("c-{voucher}")), &voucher, &media, [1; 32], 10, &confirm).await;
                            }
                        }
                    }
                    1 => {
                        let _ = a.void(&merchant, &RequestId::new(format!("va-{voucher}")), &voucher).await;
                    }
                    2 => {
                        let _ = b.void(&merchant, &RequestId::new(format!("vb-{voucher}")), &voucher).await;
                    }
                    3 => {
                        let _ = b.expire(&voucher).await;
                    }
                    _ => {
                        // A second authorization from the other engine, under its own request id.
                        let _ = b.authorize(&merchant, &RequestId::new(format!("a2-{voucher}")), &voucher).await;
                    }
                }
            });
        }
    }
    while let Some(joined) = racers.join_next().await {
        joined.expect("no racer panicked");
    }

    // The model over what was written.
    let mut violations = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for voucher in &vouchers {
        let events = decoded(log.as_ref(), &format!("vs.voucher.{voucher}")).await;
        if let Err(violation) = model(&events) {
            violations.push(format!("{voucher}: {violation}"));
        }
        let last = events.last().map(Event::name).unwrap_or("none");
        *outcomes.entry(last).or_default() += 1;
    }
    // The account: replaying its events, the available balance never goes negative.
    let mut balance: i128 = 0;
    let mut held = std::collections::BTreeMap::new();
    // Per voucher: points posted minus points refunded; a voided voucher must net zero.
    let mut charged = std::collections::BTreeMap::<String, i128>::new();
    for event in decoded(log.as_ref(), &format!("vs.account.{account}")).await {
        match event {
            Event::PointsCredited { amount, reason, .. } => {
                balance += i128::from(amount);
                if let Some(voucher) = reason.strip_prefix("refund ") {
                    *charged.entry(voucher.to_string()).or_default() -= i128::from(amount);
                }
            }
            Event::PointsHeld { voucher_id, amount, .. } => {
                held.insert(voucher_id, amount);
            }
            Event::HoldPosted { voucher_id, amount, .. } => {
                held.remove(&voucher_id);
                balance -= i128::from(amount);
                *charged.entry(voucher_id.0.clone()).or_default() += i128::from(amount);
            }
            Event::HoldReleased { voucher_id, .. } => {
                held.remove(&voucher_id);
            }
            other => violations.push(format!("account: unexpected {}", other.name())),
        }
        let available = balance - held.values().map(|amount| i128::from(*amount)).sum::<i128>();
        if available < 0 {
            violations.push(format!("account overdrawn: available {available}"));
        }
    }
    for voucher in &vouchers {
        let voided = decoded(log.as_ref(), &format!("vs.voucher.{voucher}")).await.iter().any(|event| matches!(event, Event::Voided { .. }));
        let net = charged.get(&voucher.0).copied().unwrap_or(0);
        if voided && net != 0 {
            violations.push(format!("{voucher}: voided, yet the consumer is charged {net} points"));
        }
        if !(0..=i128::from(PRICE)).contains(&net) {
            violations.push(format!("{voucher}: charged {net} points for a {PRICE}-point voucher"));
        }
    }
    eprintln!("races: {} vouchers, final events {outcomes:?}, account balance {balance}, {} holds open", vouchers.len(), held.len());
    assert!(violations.is_empty(), "lifecycle or balance broken:\n{}", violations.join("\n"));
    // Negative control: the model does catch a broken lifecycle.
    let reserved = decoded(log.as_ref(), &format!("vs.voucher.{}", vouchers[0])).await;
    let mut broken = reserved.clone();
    broken.push(reserved[0].clone());
    assert!(model(&broken).is_err(), "a second Reserved is caught by the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_racing_on_the_embedded_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    race(Arc::new(engine::log::embedded::EmbeddedLog::open(&dir.path().join("log")).expect("log"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_racing_on_jetstream() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    race(Arc::new(engine::log::jetstream::JetStreamLog::connect(&server.url(), "VOUCHSAFE").await.expect("connect"))).await;
}
