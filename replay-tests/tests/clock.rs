//! Time: the engine's clock decides expiry, and the decision is an event. A clock that
//! jumps backwards does not revive a voided reservation; two engines whose clocks disagree
//! (skew) expire a reservation once, never twice; a clock behind the reservation's expiry
//! does not expire it early.

mod common;

use engine::app::{Allocator, EngineKeys, Market};
use engine::clock::{Clock, ManualClock};
use engine::crypto::{self, test_keys};
use engine::domain::event::Payment;
use engine::domain::{Event, Rejection};
use engine::ids::*;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
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

struct World {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    keys: Arc<EngineKeys>,
    node: NodeId,
    merchant: MerchantId,
    media: MediaId,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("open log"));
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("keys"));
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Millis(T0)));
    let setup = Market::new(Arc::clone(&log), Arc::clone(&clock), Arc::clone(&keys), Arc::new(OneNode(NodeId::new("x"))));
    let (node, _) = setup.register_node("op", &RequestId::new("n"), "eu", 8).await.expect("node");
    let merchant = MerchantId(setup.register_merchant("op", &RequestId::new("m"), "Shop").await.expect("merchant").id);
    let wrapped = crypto::wrap_key(&keys.public, &crypto::SecretKey::random()).expect("wrap");
    let media = setup.publish_media("pub", &RequestId::new("md"), common::song("Song", 100, wrapped)).await.expect("publish");
    World { _dir: dir, log, keys, node: NodeId(node.id), merchant, media }
}

/// A market of its own on the shared log, with its own manual clock.
fn engine(world: &World, now: i64) -> (Market, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Millis(now)));
    let market = Market::new(Arc::clone(&world.log), clock.clone() as Arc<dyn Clock>, Arc::clone(&world.keys), Arc::new(OneNode(world.node.clone())));
    (market, clock)
}

async fn voided_events(world: &World, voucher: &VoucherId) -> usize {
    let events = world.log.read_subject(&format!("vs.voucher.{voucher}")).await.expect("read");
    events.iter().filter(|stored| matches!(engine::wire::decode(&stored.payload).expect("decodes").event, Event::Voided { .. })).count()
}

async fn reserve(market: &Market, world: &World, request: &str) -> VoucherId {
    market
        .reserve(
            &world.merchant,
            &RequestId::new(request),
            std::slice::from_ref(&world.media),
            "high",
            TTL_MS,
            Payment::Merchant { payment_ref: "card".into() },
            None,
        )
        .await
        .expect("reserve")
        .voucher_id
}

#[tokio::test]
async fn a_clock_jumping_backwards_does_not_revive_an_expired_reservation() {
    let world = world().await;
    let (market, clock) = engine(&world, T0);
    let voucher = reserve(&market, &world, "r1").await;
    clock.set(Millis(T0 + TTL_MS as i64 + 1));
    assert!(market.expire(&voucher).await.expect("expire"), "the sweeper voids it once it is past due");
    assert_eq!(voided_events(&world, &voucher).await, 1);
    // The clock jumps back before the expiry: the voucher stays voided.
    clock.set(Millis(T0));
    let authorize = market.authorize(&world.merchant, &RequestId::new("a1"), &voucher).await.expect_err("a voided voucher is never authorized");
    assert!(matches!(authorize, engine::app::AppError::Rejected(Rejection::Voided | Rejection::InvalidTransition { .. })), "{authorize:?}");
    assert!(!market.expire(&voucher).await.expect("a second expiry is answered, not applied"));
    assert_eq!(voided_events(&world, &voucher).await, 1, "expired once");
}

#[tokio::test]
async fn a_clock_behind_the_expiry_does_not_expire_early() {
    let world = world().await;
    let (market, clock) = engine(&world, T0);
    let voucher = reserve(&market, &world, "r1").await;
    clock.set(Millis(T0 + TTL_MS as i64 - 1));
    let refused = market.expire(&voucher).await.expect_err("not due yet");
    assert!(matches!(refused, engine::app::AppError::Rejected(Rejection::NotExpired { .. })), "{refused:?}");
    assert_eq!(voided_events(&world, &voucher).await, 0);
    // A clock that jumps back further still does not expire it, and the sale goes on.
    clock.set(Millis(T0 - 3_600_000));
    assert!(market.expire(&voucher).await.is_err());
    market.authorize(&world.merchant, &RequestId::new("a1"), &voucher).await.expect("still valid: authorized");
    assert_eq!(voided_events(&world, &voucher).await, 0);
}

#[tokio::test]
async fn two_engines_with_skewed_clocks_expire_once() {
    let world = world().await;
    let (ahead, _) = engine(&world, T0 + TTL_MS as i64 + 10_000);
    let (behind, _) = engine(&world, T0);
    let voucher = reserve(&behind, &world, "r1").await;
    // The engine whose clock is ahead sees the reservation due and voids it; the one behind
    // then finds it voided (the event is the fact), and its own sweep writes nothing.
    let (first, second) = tokio::join!(ahead.expire(&voucher), behind.expire(&voucher));
    assert!(first.expect("the engine ahead expires it"), "the engine ahead voids it");
    assert!(second.is_err() || second.as_ref().is_ok_and(|voided| !voided), "the engine behind never voids it a second time: {second:?}");
    assert_eq!(voided_events(&world, &voucher).await, 1);
    let late = behind.authorize(&world.merchant, &RequestId::new("a1"), &voucher).await.expect_err("voided by the other engine");
    assert!(matches!(late, engine::app::AppError::Rejected(_)), "{late:?}");
    assert_eq!(voided_events(&world, &voucher).await, 1, "still once");
}
