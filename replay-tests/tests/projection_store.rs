//! The durable projection store end to end: the market on the embedded log, with a
//! store-backed `Live` as its allocator and sealer. Stopped and reopened, the projections
//! resume at their checkpoint and go on (allocating, chaining, sealing) exactly as if they
//! had never stopped: the state equals a clean rebuild from sequence 1 and the auditor's
//! replay. A deleted store rebuilds from sequence 1 to the same digest.

mod common;

use engine::app::{EngineKeys, Market};
use engine::clock::{Clock, ManualClock};
use engine::crypto::{self, SecretKey, test_keys};
use engine::domain::event::Payment;
use engine::ids::*;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use projections::store::OpenOutcome;
use projections::{Live, Projections};
use std::path::Path;
use std::sync::Arc;

fn req(id: &str) -> RequestId {
    RequestId::new(id)
}

fn master() -> SecretKey {
    SecretKey::from_bytes([5; 32])
}

/// The market and a running store-backed `Live` as its allocator.
struct Running {
    live: Live,
    market: Market,
    runner: tokio::task::JoinHandle<Result<(), projections::RunError>>,
}

impl Running {
    async fn start(store: &Path, log: &Arc<dyn EventLog>, clock: &Arc<ManualClock>, keys: &Arc<EngineKeys>) -> (Running, OpenOutcome) {
        let (live, outcome) = Live::open(store, Some(&master()), Some(keys.public.clone())).expect("open the projection store");
        let runner = {
            let (live, log) = (live.clone(), Arc::clone(log));
            tokio::spawn(async move { live.run(log).await })
        };
        let market = Market::new(Arc::clone(log), clock.clone() as Arc<dyn Clock>, Arc::clone(keys), Arc::new(live.clone()));
        (Running { live, market, runner }, outcome)
    }

    /// Waits until everything in the log is applied and committed, then stops the runner
    /// and drops every handle on the store, so it can be opened again.
    async fn stop(self, log: &Arc<dyn EventLog>) -> Snapshot {
        let head = log.last_seq().await.expect("last seq");
        self.live.caught_up(head).await;
        self.live.committed(head).await;
        assert_eq!((self.live.lag(head), self.live.checkpoint()), (0, head));
        self.runner.abort();
        let _ = self.runner.await;
        let snapshot = self.live.read(|p| Snapshot {
            digest: p.digest(),
            entries: p.royalty.entries.chained(),
            seals: p.royalty.seals.len(),
            seals_verified: p.royalty.seals_verified,
        });
        drop(self.market);
        drop(self.live);
        snapshot
    }
}

/// What the test compares of a stopped `Live`.
struct Snapshot {
    digest: [u8; 32],
    entries: Vec<projections::royalty::ChainedEntry>,
    seals: usize,
    seals_verified: u64,
}

async fn setup(market: &Market, keys: &EngineKeys) -> (MerchantId, MediaId) {
    market.register_node("op", &req("node-1"), "eu", 8).await.expect("register node");
    let merchant = MerchantId(market.register_merchant("op", &req("m-1"), "Shop").await.expect("merchant").id);
    let media_key = crypto::SecretKey::random();
    let input = common::song("Song", 250, crypto::wrap_key(&keys.public, &media_key).expect("wrap"));
    let media = market.publish_media("pub", &req("media-1"), input).await.expect("publish");
    (merchant, media)
}

/// Sells, delivers and previews `n` times through the market (the allocator is the live
/// projection, so each issue and preview needs a node with a free slot).
async fn sell(market: &Market, merchant: &MerchantId, media: &MediaId, n: usize, tag: &str) {
    let player = test_keys::fixed_rsa_2();
    let consumer = ConsumerId::new("carol");
    let player_der = player.public().to_der().expect("der");
    let cert = market.certify_consumer("op", &req(&format!("{tag}-cert")), &consumer, &player_der, 86_400_000).await.expect("certify");
    for i in 0..n {
        let voucher = market
            .reserve(merchant, &req(&format!("{tag}-r{i}")), std::slice::from_ref(media), "high", 60_000, Payment::Merchant { payment_ref: "c".into() }, None)
            .await
            .expect("reserve")
            .voucher_id;
        let receipt = market.authorize(merchant, &req(&format!("{tag}-a{i}")), &voucher).await.expect("authorize").receipt;
        let node = market.issue(merchant, &req(&format!("{tag}-i{i}")), &voucher, None, 60_000).await.expect("issue").node_id;
        let challenge = [i as u8; 32];
        let subject = crypto::ProofConsumer::new(&consumer.0, &cert.serial.0, &player_der);
        let proof = crypto::receipt_proof(&receipt, &voucher.0, &node.0, &challenge, &subject);
        market.redeem(&node, &req(&format!("{tag}-d{i}")), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect("redeem");
        let confirm = crypto::confirm_proof(&receipt, &voucher.0, &node.0, &media.0, &[3; 32], &subject);
        market.complete_delivery(&node, &req(&format!("{tag}-done{i}")), &voucher, media, [3; 32], 10, &confirm).await.expect("deliver");
        let (preview, node) = market.preview(merchant, &req(&format!("{tag}-p{i}")), media, None).await.expect("preview");
        market.end_preview(&node, &req(&format!("{tag}-pe{i}")), &preview, 1_000).await.expect("end preview");
    }
    // One reservation left pending, for the sweeper's index.
    market
        .reserve(merchant, &req(&format!("{tag}-pending")), std::slice::from_ref(media), "high", 60_000, Payment::Merchant { payment_ref: "c".into() }, None)
        .await
        .expect("reserve");
}

async fn clean_rebuild(log: &Arc<dyn EventLog>, keys: &EngineKeys) -> Projections {
    let stored = log.read_from(Seq(1), usize::MAX).await.expect("read the log");
    let mut projections = Projections::with_royalty_keys(&master(), Some(keys.public.clone()));
    for event in &stored {
        projections.apply(event).expect("applies");
    }
    projections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_resumes_its_projections_and_a_deleted_store_rebuilds() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("open log"));
    let clock = Arc::new(ManualClock::new(Millis(1_700_000_000_000)));
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("engine keys"));

    // First run: sell, seal.
    let (running, outcome) = Running::start(&store, &log, &clock, &keys).await;
    assert_eq!(outcome, OpenOutcome::Created);
    let (merchant, media) = setup(&running.market, &keys).await;
    sell(&running.market, &merchant, &media, 3, "b1").await;
    running.live.caught_up(log.last_seq().await.expect("seq")).await;
    let first_seal = gateways::server::seal_once(&running.live, &running.market, 1).await.expect("seal").expect("a seal");
    let stopped_at = log.last_seq().await.expect("seq");
    running.stop(&log).await;

    // Second run: resumes at the checkpoint; the allocator, the chain and the sealer go on.
    let (running, outcome) = Running::start(&store, &log, &clock, &keys).await;
    assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: stopped_at });
    sell(&running.market, &merchant, &media, 2, "b2").await;
    running.live.caught_up(log.last_seq().await.expect("seq")).await;
    let second_seal = gateways::server::seal_once(&running.live, &running.market, 1).await.expect("seal").expect("a second seal");
    assert_eq!(second_seal.first_entry, first_seal.last_entry + 1, "the resumed chain continues the sealed range");
    assert_eq!(second_seal.prev_seal_hash, engine::domain::report::Report::seal_hash(&first_seal));
    let (due, sizes) = running.live.read(|p| (p.vouchers.due(Millis(i64::MAX), 10).len(), p.vouchers.set_sizes()));
    assert_eq!(due, 2, "both pending reservations are in the expiry index after the restart");
    assert_eq!(sizes.get(&engine::domain::voucher::PurchaseSet::Delivered), Some(&5));
    let resumed = running.stop(&log).await;

    let clean = clean_rebuild(&log, &keys).await;
    assert_eq!(hex::encode(resumed.digest), hex::encode(clean.digest()), "resumed digest equals a clean rebuild");
    assert_eq!(resumed.entries, clean.royalty.entries.chained());
    assert_eq!((resumed.seals, resumed.seals_verified), (2, 2), "both seals verified by the resumed projection");
    assert!(clean.royalty.seal_faults.is_empty(), "{:?}", clean.royalty.seal_faults);
    let audit = projections::audit::replay(log.as_ref(), &master(), &keys.public, Some(engine::domain::report::Report::seal_hash(&second_seal)), |_| {})
        .await
        .expect("audit replay");
    assert!(audit.ok(), "{:?}", audit.first_bad);
    assert_eq!(audit.state_digest, hex::encode(clean.digest()));

    // A deleted store rebuilds from sequence 1 to the same digest.
    std::fs::remove_dir_all(&store).expect("delete the store");
    let (running, outcome) = Running::start(&store, &log, &clock, &keys).await;
    assert_eq!(outcome, OpenOutcome::Created);
    let rebuilt = running.stop(&log).await;
    assert_eq!(hex::encode(rebuilt.digest), hex::encode(clean.digest()), "rebuilt digest equals a clean rebuild");
}
