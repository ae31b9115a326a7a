//! A long market on both backends: thousands of steps of sales stopped at every stage,
//! access windows lapsing, nodes drained, removed or gone silent (dead) and replaced,
//! deliveries failed past their retries, vouchers moved and reissued, lost copies
//! recovered (after the window through a renewed access), refunds before and after
//! delivery, previews played or left to lapse, duplication orders bound and completed.
//! Along the way (not only at the end): the slots in use are exactly the vouchers and
//! previews in progress. At the end: no paid voucher is stranded (every one not refunded
//! is driven to delivery through its merchant's reissue), the live projections equal a
//! rebuild from sequence 1 with every seal verified, and the royalty totals net exactly
//! what the model says was released, bound and not refunded, as do the DSR's summary
//! records and the merchants' statements. The seed is printed (`VOUCHSAFE_MARKET_SEED` repeats it).

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
/// Silent this long, a node is dead to the engine (`node.heartbeat_timeout_ms`).
const HEARTBEAT_TIMEOUT_MS: u64 = 30_000;
/// `delivery.retries_max` in this market: one retry, so reissues after failures happen.
const RETRIES_MAX: &str = "1";
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

/// One engine of the market: its use cases, its live projections, its health view.
struct Engine_ {
    market: Arc<Market>,
    live: projections::Live,
    health: Arc<engine::placement::NodeHealth>,
}

struct Market_ {
    log: Arc<dyn EventLog>,
    clock: Arc<ManualClock>,
    /// Engine 0's live projections and use cases: the jobs run there, the checks read them.
    live: projections::Live,
    market: Arc<Market>,
    /// Every engine on the stream; command `n` goes to engine `n % engines.len()`.
    engines: Vec<Engine_>,
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
    /// Nodes that stopped heartbeating (dead once the timeout passes).
    silent: Vec<NodeId>,
    device: (String, CertSerial),
    /// What the bound duplication units charged, each a usage.
    units_net: i128,
    recoveries: usize,
    /// Every command's answer in order (`answer`): the same seed gives the same answers
    /// over one engine and over two.
    answers: Vec<String>,
}

/// A command's answer as the transcript keeps it: what was asked, and Ok with what a
/// client sees of it, or the refusal.
fn answer<T>(request: &RequestId, result: &Result<T, engine::app::AppError>, seen: impl Fn(&T) -> String) -> String {
    match result {
        Ok(value) => format!("{} ok {}", request.0, seen(value)),
        Err(engine::app::AppError::Rejected(rejection)) => format!("{} refused {rejection:?}", request.0),
        Err(other) => format!("{} failed {other}", request.0),
    }
}

/// An engine as `serve` runs it: live projections following the log (and telling its
/// handler what another engine appended), placement from its slot leases among the nodes
/// that heartbeat.
fn start_engine(log: &Arc<dyn EventLog>, clock: &Arc<ManualClock>, keys: &Arc<EngineKeys>, master: &crypto::SecretKey, name: &str) -> Engine_ {
    let live = projections::Live::with_projections(projections::Projections::with_royalty_keys(master, Some(keys.public.clone())));
    live.set_lease_holder(name);
    let health = Arc::new(engine::placement::NodeHealth::new(clock.clone() as Arc<dyn Clock>, HEARTBEAT_TIMEOUT_MS));
    let allocator = Arc::new(engine::placement::HealthyAllocator::new(Arc::new(live.clone()), Arc::clone(&health)));
    let market = Arc::new(Market::new(Arc::clone(log), clock.clone() as Arc<dyn Clock>, Arc::clone(keys), allocator));
    let observing = Arc::downgrade(&market);
    let observer = move |subject: &str, seq| {
        if let Some(market) = observing.upgrade() {
            market.handler().observe(subject, seq);
        }
    };
    assert!(live.observe_applied(Arc::new(observer)).is_ok(), "one observer");
    // As serve's lease keeper: a share another engine asks for is given back at once.
    {
        let market = Arc::clone(&market);
        tokio::spawn(async move { market.keep_leases_as_they_change().await });
    }
    {
        let (live, log) = (live.clone(), Arc::clone(log));
        tokio::spawn(async move { live.run(log).await });
    }
    Engine_ { market, live, health }
}

async fn open(log: Arc<dyn EventLog>, engine_count: usize) -> Market_ {
    let clock = Arc::new(ManualClock::new(Millis(1_760_000_000_000)));
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("keys"));
    let master = crypto::SecretKey::from_bytes([21; 32]);
    let engines: Vec<Engine_> = (0..engine_count).map(|n| start_engine(&log, &clock, &keys, &master, &format!("e{n}"))).collect();
    let (live, market) = (engines[0].live.clone(), Arc::clone(&engines[0].market));
    market.set_config("op", &req("retries"), "delivery.retries_max", RETRIES_MAX).await.expect("retries");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let node = NodeId(market.register_node("op", &req(&format!("node-{i}")), "eu", NODE_SLOTS).await.expect("node").0.id);
        for engine in &engines {
            engine.health.announce(&node, "http://127.0.0.1:9");
        }
        nodes.push(node);
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
    // A duplicator's device, certified like a consumer.
    let device_der = test_keys::fixed_rsa_3().public().to_der().expect("der");
    let device_cert = market.certify_consumer("op", &req("device"), &ConsumerId::new("press-1"), &device_der, 365 * 86_400_000).await.expect("device").serial;
    Market_ {
        log,
        clock,
        live,
        market,
        engines,
        keys,
        master,
        merchants,
        media,
        nodes,
        consumer,
        cert,
        sold: BTreeMap::new(),
        previews: Vec::new(),
        step: 0,
        silent: Vec::new(),
        device: ("press-1".into(), device_cert),
        units_net: 0,
        recoveries: 0,
        answers: Vec::new(),
    }
}

impl Market_ {
    /// The next command's request id, once the engine that took the previous command
    /// applied the stream's head: commands come one after another, each after the last
    /// one's answer, as from one client. (Over two engines, the next one must still catch
    /// up with what the other appended: that is the engine's to do.)
    async fn id(&mut self, what: &str) -> RequestId {
        let head = self.log.last_seq().await.expect("head");
        self.engines[self.step % self.engines.len()].live.caught_up(head).await;
        self.step += 1;
        req(&format!("{what}-{}", self.step))
    }

    /// The engine the current command goes to (they take turns).
    fn on(&self) -> &Arc<Market> {
        &self.engines[self.step % self.engines.len()].market
    }

    async fn caught_up(&self) {
        let head = self.log.last_seq().await.expect("head");
        for engine in &self.engines {
            engine.live.caught_up(head).await;
        }
    }

    async fn voucher(&self, voucher: &VoucherId) -> Voucher {
        self.market.handler().load_fresh::<Voucher>(&voucher.0).await.expect("load").state.clone()
    }

    /// A sale carried to `until`: 0 reserved, 1 paid, 2 issued, 3 redeemed, 4 delivered.
    async fn sell(&mut self, rng: &mut Rng) {
        let merchant = self.merchants[rng.below(2) as usize].clone();
        let (media, price) = self.media[rng.below(2) as usize].clone();
        let until = rng.below(6);
        let request = self.id("reserve").await;
        let ttl = if rng.below(4) == 0 { 1_000 } else { 600_000 };
        let reserved =
            self.on().reserve(&merchant, &request, std::slice::from_ref(&media), "high", ttl, Payment::Merchant { payment_ref: "c".into() }, None).await;
        self.answers.push(answer(&request, &reserved, |reserved| reserved.voucher_id.0.clone()));
        let Ok(reserved) = reserved else { return };
        let voucher = reserved.voucher_id.clone();
        self.sold.insert(voucher.clone(), Sold { merchant: merchant.clone(), price, receipt: None, released: false, refunded_after_release: false });
        if until == 0 {
            return;
        }
        let request = self.id("authorize").await;
        let authorized = self.on().authorize(&merchant, &request, &voucher).await;
        self.answers.push(answer(&request, &authorized, |_| String::new()));
        let Ok(authorized) = authorized else { return };
        let receipt = crypto::SecretKey::from_bytes(*authorized.receipt.expose());
        self.sold.get_mut(&voucher).expect("sold").receipt = Some(receipt);
        if until >= 2 {
            self.issue_and_go(&voucher, until).await;
        }
    }

    /// Issues (or reissues) `voucher`, then redeems and delivers it as far as `until` says
    /// (5: the delivery fails, the player reporting a broken copy).
    async fn issue_and_go(&mut self, voucher: &VoucherId, until: u64) {
        let merchant = self.sold[voucher].merchant.clone();
        let request = self.id("issue").await;
        // Short and long access windows: some lapse within a tick, some outlive a node.
        let ttl = if self.step.is_multiple_of(2) { 30_000 } else { 300_000 };
        let issued = self.on().issue(&merchant, &request, voucher, None, ttl).await;
        self.answers.push(answer(&request, &issued, |issued| issued.node_id.0.clone()));
        let Ok(issued) = issued else { return };
        if until < 3 {
            return;
        }
        let receipt = crypto::SecretKey::from_bytes(*self.sold[voucher].receipt.as_ref().expect("paid").expose());
        let challenge = crypto::random_bytes::<32>();
        let (consumer, cert, der) = (self.consumer.0.clone(), self.cert.0.clone(), test_keys::fixed_rsa_2().public().to_der().expect("der"));
        let subject = crypto::ProofConsumer::new(&consumer, &cert, &der);
        let proof = crypto::receipt_proof(&receipt, &voucher.0, &issued.node_id.0, &challenge, &subject);
        let request = self.id("redeem").await;
        let redeemed = self.on().redeem(&issued.node_id, &request, voucher, &self.consumer, &self.cert, &challenge, &proof).await;
        self.answers.push(answer(&request, &redeemed, |_| String::new()));
        if redeemed.is_err() {
            return;
        }
        self.sold.get_mut(voucher).expect("sold").released = true;
        if until < 4 {
            return;
        }
        let media = issued.media_ids[0].clone();
        if until == 5 {
            let broken = [2u8; 32];
            let confirm = crypto::confirm_proof(&receipt, &voucher.0, &issued.node_id.0, &media.0, &broken, &subject);
            let request = self.id("fail").await;
            self.on().fail_delivery(&issued.node_id, &request, voucher, "broken copy", &media, &broken, &confirm).await.expect("failed");
            return;
        }
        let confirm = crypto::confirm_proof(&receipt, &voucher.0, &issued.node_id.0, &media.0, &[1; 32], &subject);
        let request = self.id("complete").await;
        self.on().complete_delivery(&issued.node_id, &request, voucher, &media, [1; 32], 1, &confirm).await.expect("delivered");
    }

    /// The buyer lost a delivered copy: the merchant's reissue gives the access (renewed
    /// after the window, on a serving node), and alice recovers it there.
    async fn recover(&mut self, rng: &mut Rng) {
        let delivered: Vec<VoucherId> = self.sold.iter().filter(|(_, sold)| sold.released && !sold.refunded_after_release).map(|(id, _)| id.clone()).collect();
        if delivered.is_empty() {
            return;
        }
        let voucher = delivered[rng.below(delivered.len() as u64) as usize].clone();
        if self.voucher(&voucher).await.status != VoucherStatus::Delivered {
            return;
        }
        let merchant = self.sold[&voucher].merchant.clone();
        let request = self.id("renew").await;
        let access = self.on().issue(&merchant, &request, &voucher, None, 30_000).await;
        self.answers.push(answer(&request, &access, |access| access.node_id.0.clone()));
        let Ok(access) = access else { return };
        let receipt = crypto::SecretKey::from_bytes(*self.sold[&voucher].receipt.as_ref().expect("paid").expose());
        let challenge = crypto::random_bytes::<32>();
        let der = test_keys::fixed_rsa_2().public().to_der().expect("der");
        let subject = crypto::ProofConsumer::new(&self.consumer.0, &self.cert.0, &der);
        let proof = crypto::receipt_proof(&receipt, &voucher.0, &access.node_id.0, &challenge, &subject);
        let request = self.id("recover").await;
        let recovered = self.on().recover(&access.node_id, &request, &voucher, &self.consumer, &self.cert, &challenge, &proof).await;
        self.answers.push(answer(&request, &recovered, |_| String::new()));
        match recovered {
            Ok(_) => self.recoveries += 1,
            Err(engine::app::AppError::Rejected(engine::domain::Rejection::RecoveriesExhausted { .. })) => {}
            Err(other) => panic!("the buyer's recovery of {voucher} failed: {other:?}"),
        }
    }

    /// A duplication order: two units of a media, one bound to the certified device (it
    /// pays as it binds) and completed.
    async fn order(&mut self, rng: &mut Rng) {
        let merchant = self.merchants[rng.below(2) as usize].clone();
        let (media, price) = self.media[rng.below(2) as usize].clone();
        let request = self.id("order").await;
        let order = self.on().place_order(&merchant, &request, &media, 2).await.expect("order placed");
        let request = self.id("bind").await;
        let device_der = test_keys::fixed_rsa_3().public().to_der().expect("der");
        let (device, serial) = self.device.clone();
        self.on().bind_unit(&merchant, &request, &order, 0, &device, &serial, &device_der).await.expect("unit bound");
        self.units_net += i128::from(price);
        let request = self.id("unit").await;
        self.on().complete_unit(&merchant, &request, &order, 0).await.expect("unit completed");
    }

    async fn refund(&mut self, rng: &mut Rng) {
        if self.sold.is_empty() {
            return;
        }
        let voucher = self.sold.keys().nth(rng.below(self.sold.len() as u64) as usize).expect("a voucher").clone();
        let merchant = self.sold[&voucher].merchant.clone();
        let request = self.id("refund").await;
        let refunded = self.on().refund(&merchant, &request, &voucher, "the customer asked", rng.below(3) == 0).await;
        self.answers.push(answer(&request, &refunded, |status| format!("{status:?}")));
        if let Ok(status) = refunded
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
        let request = self.id("preview").await;
        let previewed = self.on().preview(&merchant, &request, &media, None).await;
        self.answers.push(answer(&request, &previewed, |(preview, node)| format!("{} {}", preview.0, node.0)));
        if let Ok((preview, node)) = previewed {
            if rng.below(2) == 0 {
                let request = self.id("end").await;
                self.on().end_preview(&node, &request, &preview, 1_000).await.expect("end");
            } else {
                self.previews.push((preview, node));
            }
        }
    }

    /// Time passes and the engine's jobs run: expiries, lapses, moves.
    async fn tick(&mut self, rng: &mut Rng) {
        self.clock.advance_ms(i64::try_from(1 + rng.below(50_000)).expect("small"));
        self.heartbeats();
        self.caught_up().await;
        let swept = gateways::server::sweep_once(&self.live, &self.market, 1_000).await.expect("sweep");
        let lapsed = gateways::server::lapse_once(&self.live, &self.market, 1_000).await.expect("lapse");
        self.caught_up().await;
        let moved = gateways::server::relocate_once(&self.live, &self.market, 30_000, 1_000).await.expect("relocate");
        self.answers.push(format!("tick {} swept {swept:?} lapsed {lapsed:?} moved {moved}", self.step));
        // Every engine looks after its own slot leases (and takes over those that ran out).
        for engine in &self.engines {
            engine.market.keep_leases().await.expect("slot leases");
        }
    }

    /// Every node still running heartbeats at the engine's now.
    fn heartbeats(&self) {
        for node in self.nodes.iter().chain(&self.silent) {
            if !self.silent.contains(node) {
                for engine in &self.engines {
                    engine.health.heartbeat(node, engine::placement::Heartbeat::default());
                }
            }
        }
    }

    /// A node leaves holding vouchers, some mid-delivery: drained (it finishes what it
    /// started), removed, or dead (it stops heartbeating); a fresh one registers.
    async fn retire(&mut self, rng: &mut Rng) -> &'static str {
        let node = self.nodes.remove(rng.below(self.nodes.len() as u64) as usize);
        let how = match rng.below(3) {
            0 => {
                let request = self.id("drain").await;
                self.on().drain_node("op", &request, &node).await.expect("drain");
                "drain"
            }
            1 => {
                let request = self.id("remove").await;
                self.on().remove_node("op", &request, &node).await.expect("remove");
                "remove"
            }
            _ => {
                self.silent.push(node);
                "die"
            }
        };
        let request = self.id("node").await;
        let fresh = NodeId(self.on().register_node("op", &request, "eu", NODE_SLOTS).await.expect("node").0.id);
        for engine in &self.engines {
            engine.health.announce(&fresh, "http://127.0.0.1:9");
        }
        self.nodes.push(fresh);
        how
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

    async fn finish(&mut self) {
        self.check_slots("at the end").await;
        // No paid voucher is stranded: every one not refunded is delivered, through its
        // merchant's reissue where it lapsed, sits on a node that left, or ran out of retries.
        let paid: Vec<VoucherId> = self.sold.iter().filter(|(_, sold)| sold.receipt.is_some()).map(|(id, _)| id.clone()).collect();
        for voucher in &paid {
            for _ in 0..2 {
                match self.voucher(voucher).await.status {
                    VoucherStatus::Authorized | VoucherStatus::Issued | VoucherStatus::Redeeming => self.issue_and_go(voucher, 4).await,
                    _ => break,
                }
                self.caught_up().await;
            }
            let status = self.voucher(voucher).await.status;
            assert!(matches!(status, VoucherStatus::Delivered | VoucherStatus::Refunded | VoucherStatus::Voided), "{voucher} is stranded: {status:?}");
        }
        let driven = paid.len();
        self.check_slots("after every paid voucher was delivered").await;
        let mut released_net: i128 = self.units_net;
        for sold in self.sold.values() {
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
        assert_eq!(net, released_net, "the totals net the released sales and bound units less the refunded sales");
        assert_eq!(rebuilt.balances.sum(), Some(0), "the ledger balances");
        // The DSR's summaries net the same (an auditor's replay, no engine secret).
        let (report, audited) = projections::audit::replay_full(self.log.as_ref(), &self.master, &self.keys.public, None, |_| {}).await.expect("audit");
        assert!(report.ok(), "the audit is clean");
        let exported = projections::export::export_log(&audited.royalty);
        let (entries, _, fault) = projections::export::open_entries(&exported, &self.master);
        assert!(fault.is_none(), "{fault:?}");
        let dsr = gateways::audit::dsr::dsr(&entries, &gateways::audit::dsr::DsrParties::default(), &report.state_digest[..16], 0).text;
        let usage_net: i128 = dsr
            .lines()
            .filter(|l| l.starts_with("SY01.01\t"))
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .map(|r| gateways::audit::dsr::minor_units(r[11], r[10]).expect("an amount in the currency's units"))
            .sum();
        assert_eq!(usage_net, released_net, "the DSR's summaries net the same");
        // And the merchants' statements (every month of every merchant), as the engine serves them.
        let statement_net: i128 =
            self.live.read(|p| p.reads.statements.values().flat_map(|statement| statement.lines.values()).map(|line| line.net_minor()).sum());
        assert_eq!(statement_net, released_net, "the statements net the same");
        for merchant in &self.merchants {
            let months: Vec<String> = self.live.read(|p| p.reads.statements.keys().filter(|(m, _)| m == merchant).map(|(_, month)| month.clone()).collect());
            let served: i128 =
                months.iter().map(|month| self.live.read(|p| p.reads.statement(merchant, month)).lines.values().map(|l| l.net_minor()).sum::<i128>()).sum();
            let totals: i128 = rebuilt
                .royalty
                .totals
                .iter()
                .filter(|((dimension, key), _)| *dimension == projections::royalty_log::Dimension::Merchant && key == &merchant.0)
                .map(|(_, line)| line.net_minor())
                .sum();
            assert_eq!(served, totals, "{merchant}: its statements net its royalty totals");
        }
        eprintln!("finish: {driven} paid vouchers accounted for, {} recoveries, DSR net {usage_net}", self.recoveries);
    }
}

async fn long_market(log: Arc<dyn EventLog>, steps: usize, name: &str) {
    long_market_on(log, steps, name, 1).await;
}

/// The long market with its commands taking turns over `engine_count` engines on one log;
/// every command's answer, in order.
async fn long_market_on(log: Arc<dyn EventLog>, steps: usize, name: &str, engine_count: usize) -> Vec<String> {
    let seed = std::env::var("VOUCHSAFE_MARKET_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(SEED_DEFAULT);
    eprintln!("{name}: {steps} steps from seed {seed} (VOUCHSAFE_MARKET_SEED repeats it)");
    let mut rng = Rng(seed | 1);
    let mut m = open(log, engine_count).await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for step in 0..steps {
        let what = match rng.below(100) {
            0..=39 => {
                m.sell(&mut rng).await;
                "sell"
            }
            40..=47 => {
                m.refund(&mut rng).await;
                "refund"
            }
            48..=61 => {
                m.resume(&mut rng).await;
                "resume"
            }
            62..=69 => {
                m.preview(&mut rng).await;
                "preview"
            }
            70..=73 => {
                m.recover(&mut rng).await;
                "recover"
            }
            74..=75 => {
                m.order(&mut rng).await;
                "order"
            }
            76..=97 => {
                m.tick(&mut rng).await;
                "tick"
            }
            _ => m.retire(&mut rng).await,
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
    // Moves, and among them deliveries under way (redeemed at the node they left).
    let (mut moved, mut moved_under_way) = (0, 0);
    let mut under_way = std::collections::BTreeSet::new();
    for event in &stored {
        match engine::wire::decode(&event.payload).expect("decode").event {
            engine::domain::Event::RedemptionAccepted { voucher_id, .. } => {
                under_way.insert(voucher_id);
            }
            engine::domain::Event::VoucherIssued { voucher_id, previous_node, .. } => {
                moved += usize::from(previous_node.is_some());
                moved_under_way += usize::from(under_way.remove(&voucher_id) && previous_node.is_some());
            }
            engine::domain::Event::Delivered { voucher_id, .. }
            | engine::domain::Event::DeliveryFailed { voucher_id, .. }
            | engine::domain::Event::AccessLapsed { voucher_id, .. } => {
                under_way.remove(&voucher_id);
            }
            _ => {}
        }
    }
    eprintln!("{name}: {moved} moves, {moved_under_way} of deliveries under way");
    assert!(moved_under_way >= 1, "no delivery under way moved off a node that finishes nothing");
    let floors = [
        ("AccessLapsed", 5),
        ("Refunded", 5),
        ("Voided", 5),
        ("Delivered", 20),
        ("PreviewEnded", 5),
        ("NodeDrained", 1),
        ("NodeRemoved", 1),
        ("DeliveryFailed", 5),
        ("CopyRecovered", 3),
        ("UnitBound", 3),
        ("UnitCompleted", 3),
    ];
    for (name, floor) in floors {
        assert!(events.get(name).copied().unwrap_or(0) >= floor, "{name} fewer than {floor} times: {events:?}");
    }
    assert!(moved >= 1, "no voucher moved off a drained node: {events:?}");
    std::mem::take(&mut m.answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_market_on_the_embedded_log_keeps_its_slots_strands_nothing_and_nets_its_royalties() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log: Arc<dyn EventLog> = Arc::new(engine::log::embedded::EmbeddedLog::open(dir.path()).expect("log"));
    long_market(log, 5_000, "embedded").await;
}

/// On JetStream, over one engine and (issue 25) over two engines on one stream (each with
/// its live projections, caches, health view and slot leases) taking turns at every
/// command: both pass every check, along the way and at the end, and give the same
/// answer to every command, refusals and the nodes chosen included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_market_on_jetstream_over_one_engine_and_over_two_keeps_its_slots_and_answers_the_same() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let one: Arc<dyn EventLog> = Arc::new(engine::log::jetstream::JetStreamLog::connect(&server.url(), "LONG").await.expect("connect"));
    let alone = long_market_on(one, 1_200, "jetstream", 1).await;
    drop(server);
    // A stream of the same name on a server of its own: the same subjects, the same ids.
    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let two: Arc<dyn EventLog> = Arc::new(engine::log::jetstream::JetStreamLog::connect(&server.url(), "LONG").await.expect("connect"));
    let shared = long_market_on(two, 1_200, "jetstream, two engines", 2).await;
    drop(server);
    let differ: Vec<(usize, &String, &String)> = alone.iter().zip(&shared).enumerate().filter(|(_, (a, b))| a != b).map(|(n, (a, b))| (n, a, b)).collect();
    eprintln!("{} answers over one engine, {} over two; {} differ", alone.len(), shared.len(), differ.len());
    for (n, a, b) in differ.iter().take(10) {
        eprintln!("answer {n}: one engine `{a}`, two engines `{b}`");
    }
    assert!(differ.is_empty() && alone.len() == shared.len(), "two engines answered otherwise than one");
}
