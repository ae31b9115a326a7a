//! A long market on both backends: thousands of steps of sales stopped at every stage,
//! access windows lapsing, nodes drained and replaced, vouchers moved and reissued,
//! refunds before and after delivery, previews played or left to lapse. Along the way (not
//! only at the end): the slots in use are exactly the vouchers and previews in progress.
//! At the end: no paid voucher is stranded (each is delivered, refunded, or can be issued
//! or redeemed on a node that serves), the live projections equal a rebuild from sequence
//! 1 with every seal verified, and the royalty totals net exactly what the model says was
//! released and not refunded. The seed is printed (`VOUCHSAFE_MARKET_SEED` repeats it).

mod common;

use engine::app::{EngineKeys, Market};
use engine::clock::{Clock, ManualClock};
use engine::crypto::{self, test_keys};
use engine::domain::event::Payment;
use engine::domain::voucher::{Voucher, VoucherStatus};
use engine::ids::*;
use engine::log::EventLog;
use std::collections::BTreeMap;
use std::sync::Arc;

const NODE_SLOTS: u32 = 6;
const CHECK_EVERY: usize = 25;
const SEED_DEFAULT: u64 = 0x10a6_0a55;

fn req(id: &str) -> RequestId {
    RequestId::new(id)
}

/// A small xorshift: the script's randomness, from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// What the model knows of one voucher.
struct Sold {
    merchant: MerchantId,
    price: u64,
    receipt: Option<crypto::SecretKey>,
    /// The keys went to alice (the usage was counted).
    released: bool,
    refunded_after_release: bool,
}

struct Market_ {
    log: Arc<dyn EventLog>,
    clock: Arc<ManualClock>,
    live: projections::Live,
    market: Arc<Market>,
    keys: Arc<EngineKeys>,
    master: crypto::SecretKey,
    merchants: Vec<MerchantId>,
    media: Vec<(MediaId, u64)>,
    nodes: Vec<NodeId>,
    consumer: ConsumerId,
    cert: CertSerial,
    sold: BTreeMap<VoucherId, Sold>,
    previews: Vec<(PreviewId, NodeId)>,
    step: usize,
}

async fn open(log: Arc<dyn EventLog>) -> Market_ {
    let clock = Arc::new(ManualClock::new(Millis(1_760_000_000_000)));
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("keys"));
    let master = crypto::SecretKey::from_bytes([21; 32]);
    let live = projections::Live::with_projections(projections::Projections::with_royalty_keys(&master, Some(keys.public.clone())));
    {
        let (live, log) = (live.clone(), Arc::clone(&log));
        tokio::spawn(async move { live.run(log).await });
    }
    let market = Arc::new(Market::new(Arc::clone(&log), clock.clone() as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(live.clone())));
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(NodeId(market.register_node("op", &req(&format!("node-{i}")), "eu", NODE_SLOTS).await.expect("node").0.id));
    }
    let mut merchants = Vec::new();
    for i in 0..2 {
        merchants.push(MerchantId(market.register_merchant("op", &req(&format!("m{i}")), "Shop").await.expect("merchant").id));
    }
    let mut media = Vec::new();
    for i in 0..2u64 {
        let input = common::song(&format!("Song {i}"), 100 + i, crypto::wrap_key(&keys.public, &crypto::SecretKey::random()).expect("wrap"));
        media.push((market.publish_media("pub", &req(&format!("media{i}")), input).await.expect("publish"), 100 + i));
    }
    let consumer = ConsumerId::new("alice");
    let der = test_keys::fixed_rsa_2().public().to_der().expect("der");
    let cert = market.certify_consumer("op", &req("cert"), &consumer, &der, 365 * 86_400_000).await.expect("cert").serial;
    Market_ { log, clock, live, market, keys, master, merchants, media, nodes, consumer, cert, sold: BTreeMap::new(), previews: Vec::new(), step: 0 }
}

impl Market_ {
    fn id(&mut self, what: &str) -> RequestId {
        self.step += 1;
        req(&format!("{what}-{}", self.step))
    }

    async fn caught_up(&self) {
        self.live.caught_up(self.log.last_seq().await.expect("head")).await;
    }

    async fn voucher(&self, voucher: &VoucherId) -> Voucher {
        self.market.handler().load_fresh::<Voucher>(&voucher.0).await.expect("load").state.clone()
    }

    /// A sale carried to `until`: 0 reserved, 1 paid, 2 issued, 3 redeemed, 4 delivered.
    async fn sell(&mut self, rng: &mut Rng) {
        let merchant = self.merchants[rng.below(2) as usize].clone();
        let (media, price) = self.media[rng.below(2) as usize].clone();
        let until = rng.below(5);
        let request = self.id("reserve");
        let ttl = if rng.below(4) == 0 { 1_000 } else { 600_000 };
        let Ok(reserved) =
            self.market.reserve(&merchant, &request, std::slice::from_ref(&media), "high", ttl, Payment::Merchant { payment_ref: "c".into() }, None).await
        else {
            return;
        };
        let voucher = reserved.voucher_id.clone();
        self.sold.insert(voucher.clone(), Sold { merchant: merchant.clone(), price, receipt: None, released: false, refunded_after_release: false });
        if until == 0 {
            return;
        }
        let request = self.id("authorize");
        let Ok(authorized) = self.market.authorize(&merchant, &request, &voucher).await else { return };
        let receipt = crypto::SecretKey::from_bytes(*authorized.receipt.expose());
        self.sold.get_mut(&voucher).expect("sold").receipt = Some(receipt);
        if until >= 2 {
            self.issue_and_go(&voucher, until).await;
        }
    }

    /// Issues (or reissues) `voucher`, then redeems and delivers it as far as `until` says.
    async fn issue_and_go(&mut self, voucher: &VoucherId, until: u64) {
        let merchant = self.sold[voucher].merchant.clone();
        let request = self.id("issue");
        let Ok(issued) = self.market.issue(&merchant, &request, voucher, None, 30_000).await else { return };
        if until < 3 {
            return;
        }
        let receipt = crypto::SecretKey::from_bytes(*self.sold[voucher].receipt.as_ref().expect("paid").expose());
        let challenge = crypto::random_bytes::<32>();
        let (consumer, cert, der) = (self.consumer.0.clone(), self.cert.0.clone(), test_keys::fixed_rsa_2().public().to_der().expect("der"));
        let subject = crypto::ProofConsumer::new(&consumer, &cert, &der);
        let proof = crypto::receipt_proof(&receipt, &voucher.0, &issued.node_id.0, &challenge, &subject);
        let request = self.id("redeem");
        if self.market.redeem(&issued.node_id, &request, voucher, &self.consumer, &self.cert, &challenge, &proof).await.is_err() {
            return;
        }
        self.sold.get_mut(voucher).expect("sold").released = true;
        if until < 4 {
            return;
        }
        let media = issued.media_ids[0].clone();
        let confirm = crypto::confirm_proof(&receipt, &voucher.0, &issued.node_id.0, &media.0, &[1; 32], &subject);
        let request = self.id("complete");
        self.market.complete_delivery(&issued.node_id, &request, voucher, &media, [1; 32], 1, &confirm).await.expect("delivered");
    }

    async fn refund(&mut self, rng: &mut Rng) {
        if self.sold.is_empty() {
            return;
        }
        let voucher = self.sold.keys().nth(rng.below(self.sold.len() as u64) as usize).expect("a voucher").clone();
        let merchant = self.sold[&voucher].merchant.clone();
        let request = self.id("refund");
        if let Ok(status) = self.market.refund(&merchant, &request, &voucher, "the customer asked", rng.below(3) == 0).await
            && status == VoucherStatus::Refunded
        {
            self.sold.get_mut(&voucher).expect("sold").refunded_after_release = true;
        }
    }

    /// Picks up a paid voucher where it stands: issue it anew after a lapse or a move, or
    /// finish its delivery.
    async fn resume(&mut self, rng: &mut Rng) {
        let paid: Vec<VoucherId> = self.sold.iter().filter(|(_, sold)| sold.receipt.is_some()).map(|(id, _)| id.clone()).collect();
        if paid.is_empty() {
            return;
        }
        let voucher = paid[rng.below(paid.len() as u64) as usize].clone();
        let state = self.voucher(&voucher).await;
        match state.status {
            VoucherStatus::Authorized | VoucherStatus::Issued => self.issue_and_go(&voucher, 4).await,
            _ => {}
        }
    }

    async fn preview(&mut self, rng: &mut Rng) {
        let merchant = self.merchants[rng.below(2) as usize].clone();
        let media = self.media[rng.below(2) as usize].0.clone();
        let request = self.id("preview");
        if let Ok((preview, node)) = self.market.preview(&merchant, &request, &media, None).await {
            if rng.below(2) == 0 {
                let request = self.id("end");
                self.market.end_preview(&node, &request, &preview, 1_000).await.expect("end");
            } else {
                self.previews.push((preview, node));
            }
        }
    }

    /// Time passes and the engine's jobs run: expiries, lapses, moves.
    async fn tick(&mut self, rng: &mut Rng) {
        self.clock.advance_ms(i64::try_from(1 + rng.below(50_000)).expect("small"));
        self.caught_up().await;
        gateways::server::sweep_once(&self.live, &self.market, 1_000).await.expect("sweep");
        gateways::server::lapse_once(&self.live, &self.market, 1_000).await.expect("lapse");
        self.caught_up().await;
        gateways::server::relocate_once(&self.live, &self.market, 30_000, 1_000).await.expect("relocate");
    }

    /// The operator drains a node holding vouchers and registers a fresh one.
    async fn drain(&mut self, rng: &mut Rng) {
        let node = self.nodes.remove(rng.below(self.nodes.len() as u64) as usize);
        let request = self.id("drain");
        self.market.drain_node("op", &request, &node).await.expect("drain");
        let request = self.id("node");
        self.nodes.push(NodeId(self.market.register_node("op", &request, "eu", NODE_SLOTS).await.expect("node").0.id));
    }

    /// Slots in use = vouchers issued and not yet delivered, lapsed, moved away or
    /// refunded + previews not ended, node by node.
    async fn check_slots(&self, when: &str) {
        self.caught_up().await;
        let mut expected: BTreeMap<NodeId, u32> = BTreeMap::new();
        for voucher in self.sold.keys() {
            let state = self.voucher(voucher).await;
            if matches!(state.status, VoucherStatus::Issued | VoucherStatus::Redeeming) {
                *expected.entry(state.node.clone().expect("issued to a node")).or_default() += 1;
            }
        }
        for (preview, node) in &self.previews {
            let ended = self.market.handler().load_fresh::<engine::domain::preview::Preview>(&preview.0).await.expect("load").state.ended.is_some();
            if !ended {
                *expected.entry(node.clone()).or_default() += 1;
            }
        }
        let actual: BTreeMap<NodeId, u32> =
            self.live.read(|p| p.allocation.nodes.iter().filter(|(_, node)| node.in_use > 0).map(|(id, node)| (id.clone(), node.in_use)).collect());
        assert_eq!(actual, expected, "{when}: the slots in use are exactly the vouchers and previews in progress");
    }

    async fn finish(&self) {
        self.check_slots("at the end").await;
        // No paid voucher is stranded.
        let mut released_net: i128 = 0;
        for (voucher, sold) in &self.sold {
            let state = self.voucher(voucher).await;
            // Issued and never redeemed: on a node that serves (a drained node's vouchers
            // moved). A delivery under way stays with the node that released the keys (a
            // drained node finishes what it started).
            let stranded =
                state.status == VoucherStatus::Issued && state.released_to.is_none() && !self.market.allocator().serves(state.node.as_ref().expect("a node"));
            assert!(!stranded, "{voucher} is {:?} on a node that no longer serves it", state.status);
            if sold.released {
                released_net += i128::from(sold.price);
            }
            if sold.refunded_after_release {
                assert!(sold.released, "a refund after release without a release");
                released_net -= i128::from(sold.price);
            }
        }
        // Seal, then: live equals a rebuild, every seal verified, totals net what the model says.
        self.caught_up().await;
        gateways::server::seal_once(&self.live, &self.market, 1).await.expect("seal");
        self.caught_up().await;
        let stored = self.log.read_from(Seq(1), usize::MAX).await.expect("read");
        let mut rebuilt = projections::Projections::with_royalty_keys(&self.master, Some(self.keys.public.clone()));
        for event in &stored {
            rebuilt.apply(event).expect("applies");
        }
        assert!(rebuilt.royalty.seal_faults.is_empty(), "{:?}", rebuilt.royalty.seal_faults);
        assert_eq!(self.live.read(projections::Projections::digest), rebuilt.digest(), "live = rebuild from sequence 1");
        let net: i128 = rebuilt
            .royalty
            .totals
            .iter()
            .filter(|((dimension, _), _)| *dimension == projections::royalty_log::Dimension::Merchant)
            .map(|(_, line)| line.net_minor())
            .sum();
        assert_eq!(net, released_net, "the totals net the released sales less the refunded ones");
        assert_eq!(rebuilt.balances.sum(), Some(0), "the ledger balances");
    }
}

async fn long_market(log: Arc<dyn EventLog>, steps: usize, name: &str) {
    let seed = std::env::var("VOUCHSAFE_MARKET_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(SEED_DEFAULT);
    eprintln!("{name}: {steps} steps from seed {seed} (VOUCHSAFE_MARKET_SEED repeats it)");
    let mut rng = Rng(seed | 1);
    let mut m = open(log).await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for step in 0..steps {
        let what = match rng.below(100) {
            0..=44 => {
                m.sell(&mut rng).await;
                "sell"
            }
            45..=54 => {
                m.refund(&mut rng).await;
                "refund"
            }
            55..=69 => {
                m.resume(&mut rng).await;
                "resume"
            }
            70..=79 => {
                m.preview(&mut rng).await;
                "preview"
            }
            80..=97 => {
                m.tick(&mut rng).await;
                "tick"
            }
            _ => {
                m.drain(&mut rng).await;
                "drain"
            }
        };
        *counts.entry(what).or_default() += 1;
        if step % CHECK_EVERY == CHECK_EVERY - 1 {
            m.check_slots(&format!("after step {step}")).await;
        }
    }
    m.finish().await;
    let stored = m.log.read_from(Seq(1), usize::MAX).await.expect("read");
    let mut events: BTreeMap<&'static str, usize> = BTreeMap::new();
    for event in &stored {
        *events.entry(engine::wire::decode(&event.payload).expect("decode").event.name()).or_default() += 1;
    }
    eprintln!("{name}: steps {counts:?}; events {events:?}");
    // The run reached what it claims to test.
    let moved = stored
        .iter()
        .filter(|e| matches!(engine::wire::decode(&e.payload).expect("decode").event, engine::domain::Event::VoucherIssued { previous_node: Some(_), .. }))
        .count();
    for (name, floor) in [("AccessLapsed", 5), ("Refunded", 5), ("Voided", 5), ("Delivered", 20), ("PreviewEnded", 5), ("NodeDrained", 2)] {
        assert!(events.get(name).copied().unwrap_or(0) >= floor, "{name} fewer than {floor} times: {events:?}");
    }
    assert!(moved >= 1, "no voucher moved off a drained node: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_market_on_the_embedded_log_keeps_its_slots_strands_nothing_and_nets_its_royalties() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log: Arc<dyn EventLog> = Arc::new(engine::log::embedded::EmbeddedLog::open(dir.path()).expect("log"));
    long_market(log, 2_000, "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_market_on_jetstream_keeps_its_slots_strands_nothing_and_nets_its_royalties() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let log: Arc<dyn EventLog> = Arc::new(engine::log::jetstream::JetStreamLog::connect(&server.url(), "LONG").await.expect("connect"));
    long_market(log, 600, "jetstream").await;
    drop(server);
}
