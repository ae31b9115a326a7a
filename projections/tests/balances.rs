//! The balances projection over streams the real domain writes: random scripts of sales
//! (paid by the merchant or in points, in two currencies, single items and albums),
//! authorizations, refunds, expiries, hold settlements and top-ups, run through
//! `engine::app::Market` on an embedded log with a store-backed `Live` following it.
//!
//! Properties: the ledger sums to zero (overall and per currency) after every event; the
//! live, incremental state equals a rebuild from sequence 1 (balances and digest), and so
//! does the store reopened; the points accounts equal the domain's own account aggregates;
//! and at rest each points account's balance is what was topped up plus the ledger
//! balance of its `ConsumerPoints` account (the two sides of the points saga agree).
//! Negative control: a re-encoded `Authorized` whose postings do not balance is a finding
//! at its sequence, for the runner and for the auditor.

use engine::app::{EngineKeys, Market, PublishInput};
use engine::clock::{Clock, ManualClock};
use engine::crypto::{self, test_keys};
use engine::domain::account::Account;
use engine::domain::event::{Event, LedgerAccountKind, Payment, PreviewClip, Rendition, RoyaltyTerms};
use engine::ids::*;
use engine::log::embedded::EmbeddedLog;
use engine::log::{EventLog, StoredEvent};
use engine::testing::TestConsumer;
use projections::store::OpenOutcome;
use projections::{Finding, Live, Projections};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const ACCOUNTS: usize = 2;
const MERCHANTS: usize = 2;

fn req(id: &str) -> RequestId {
    RequestId::new(id)
}

fn account(index: usize) -> AccountId {
    AccountId::new(format!("acct{index}"))
}

struct World {
    dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    clock: Arc<ManualClock>,
    live: Live,
    runner: tokio::task::JoinHandle<Result<(), projections::RunError>>,
    market: Market,
    merchants: Vec<MerchantId>,
    /// The certified consumers owning the points accounts (`account(i)` is consumer i's).
    consumers: Vec<TestConsumer>,
    /// Two media in EUR (different splits), one in USD.
    media: Vec<MediaId>,
    /// Points the operator topped up per account, by the script (points merchants sold
    /// are in the ledger).
    topped_up: BTreeMap<AccountId, u64>,
}

fn song(title: &str, price_minor: u64, currency: &str, terms: RoyaltyTerms, keys: &EngineKeys) -> PublishInput {
    PublishInput {
        title: title.into(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 100_000,
        price_minor,
        currency: currency.into(),
        terms,
        renditions: vec![Rendition { name: "high".into(), bitrate_kbps: 256, content_hash: [1; 32], size_bytes: 10 }],
        preview: PreviewClip { start_ms: 0, duration_ms: 10_000 },
        image_descriptor: String::new(),
        for_sale: true,
        wrapped_media_key: crypto::wrap_key(&keys.public, &crypto::SecretKey::random()).expect("wrap"),
    }
}

fn terms(retailer_bps: u32, distributor_bps: u32, distributor: &str, owner: &str) -> RoyaltyTerms {
    RoyaltyTerms {
        retailer_bps,
        distributor_bps,
        owner_bps: 10_000 - retailer_bps - distributor_bps,
        distributor: distributor.into(),
        owner: owner.into(),
        rights_agent: "agent".into(),
    }
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("log"));
    let clock = Arc::new(ManualClock::new(Millis(1_760_000_000_000)));
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("keys"));
    let (live, outcome) = Live::open_checked(&dir.path().join("projections"), None, None, log.as_ref()).await.expect("open the projection store");
    assert_eq!(outcome, OpenOutcome::Created);
    let runner = {
        let (live, log) = (live.clone(), Arc::clone(&log));
        tokio::spawn(async move { live.run(log).await })
    };
    let market = Market::new(Arc::clone(&log), clock.clone() as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(live.clone()));
    let mut merchants = Vec::new();
    for index in 0..MERCHANTS {
        merchants.push(MerchantId(market.register_merchant("op", &req(&format!("m{index}")), "Shop").await.expect("merchant").id));
    }
    let mut consumers = Vec::new();
    for index in 0..ACCOUNTS {
        consumers.push(TestConsumer::certify(&market, "op", &account(index).0).await.expect("certify"));
    }
    let catalog = [
        song("Song A", 199, "EUR", terms(3000, 2000, "dist", "label"), &keys),
        song("Song B", 1_001, "EUR", terms(1500, 1000, "dist2", "label2"), &keys),
        song("Song C", 350, "USD", terms(3000, 2000, "dist", "label"), &keys),
    ];
    let mut media = Vec::new();
    for (index, input) in catalog.into_iter().enumerate() {
        media.push(market.publish_media("pub", &req(&format!("media{index}")), input).await.expect("publish"));
    }
    World { dir, log, clock, live, runner, market, merchants, consumers, media, topped_up: BTreeMap::new() }
}

#[derive(Clone, Debug)]
enum Step {
    /// `items`: 0, 1, 2 a single media; 3 the album of both EUR media.
    Sell {
        merchant: usize,
        items: usize,
        points: Option<usize>,
        authorize: bool,
    },
    Void {
        voucher: usize,
        merchant: usize,
    },
    /// By the operator (`sold_by: None`) or sold by a merchant.
    TopUp {
        account: usize,
        amount: u64,
        sold_by: Option<usize>,
    },
    Advance {
        ms: u64,
    },
    Sweep,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..MERCHANTS, 0..4usize, proptest::option::of(0..ACCOUNTS), proptest::bool::weighted(0.7))
            .prop_map(|(merchant, items, points, authorize)| Step::Sell { merchant, items, points, authorize }),
        2 => (0..12usize, 0..MERCHANTS).prop_map(|(voucher, merchant)| Step::Void { voucher, merchant }),
        1 => (0..ACCOUNTS, 1..3_000u64, proptest::option::of(0..MERCHANTS)).prop_map(|(account, amount, sold_by)| Step::TopUp { account, amount, sold_by }),
        1 => (1..90_000u64).prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::Sweep),
    ]
}

async fn run_script(w: &mut World, steps: &[Step]) {
    let mut vouchers: Vec<VoucherId> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Sell { merchant, items, points, authorize } => {
                let merchant = &w.merchants[*merchant];
                let media = match items {
                    3 => vec![w.media[0].clone(), w.media[1].clone()],
                    single => vec![w.media[*single].clone()],
                };
                // A points sale carries the consumer's authorization for this merchant.
                let (payment, spend) = match points {
                    Some(index) => (Payment::Points { account: account(*index) }, Some(w.consumers[*index].authorize_any(&w.market, merchant))),
                    None => (Payment::Merchant { payment_ref: "card".into() }, None),
                };
                // Refusals (not enough points) are part of the script: they write nothing.
                let Ok(reserved) = w.market.reserve(merchant, &req(&format!("r{i}")), &media, "high", 60_000, payment, spend.as_ref()).await else { continue };
                vouchers.push(reserved.voucher_id.clone());
                if *authorize {
                    let _ = w.market.authorize(merchant, &req(&format!("a{i}")), &reserved.voucher_id).await;
                }
            }
            Step::Void { voucher, merchant } => {
                if let Some(voucher) = vouchers.get(*voucher) {
                    let _ = w.market.void(&w.merchants[*merchant], &req(&format!("v{i}")), voucher).await;
                }
            }
            Step::TopUp { account: index, amount, sold_by: None } => {
                w.market.top_up("op", &req(&format!("t{i}")), &account(*index), *amount, "").await.expect("top up");
                *w.topped_up.entry(account(*index)).or_default() += amount;
            }
            Step::TopUp { account: index, amount, sold_by: Some(merchant) } => {
                w.market.sell_points(&w.merchants[*merchant], &req(&format!("t{i}")), &account(*index), *amount, "EUR", "").await.expect("sell points");
            }
            Step::Advance { ms } => w.clock.advance_ms(*ms as i64),
            Step::Sweep => {
                w.live.caught_up(w.log.last_seq().await.expect("last seq")).await;
                {
                    let now = w.market.now();
                    w.market.sweep(&w.live.due(now, 100), &w.live.due_holds(now, 100)).await.expect("sweep");
                }
            }
        }
    }
}

/// Applies `events` from sequence 1, checking the ledger after every event.
fn rebuild_checked(events: &[StoredEvent]) -> Projections {
    let mut projections = Projections::default();
    for event in events {
        projections.apply(event).expect("an engine-written stream applies");
        let balances = &projections.balances;
        assert_eq!(balances.sum(), Some(0), "the ledger sums to zero after sequence {}", event.seq);
        assert!(balances.sums_by_currency().values().all(|sum| *sum == Some(0)), "and in each currency, after sequence {}", event.seq);
    }
    projections
}

async fn check_world(w: World) {
    let head = w.log.last_seq().await.expect("last seq");
    w.live.caught_up(head).await;
    w.live.committed(head).await;
    let events = w.log.read_from(Seq(1), usize::MAX).await.expect("read the log");
    let rebuilt = rebuild_checked(&events);

    // Incremental equals the rebuild from sequence 1.
    w.live.read(|live| {
        assert_eq!(live.balances, rebuilt.balances, "live balances");
        assert_eq!(live.digest(), rebuilt.digest(), "live digest");
    });

    // The points accounts mirror the domain's account aggregates, and agree with the
    // ledger once every saga has completed (the script leaves none half done).
    for index in 0..ACCOUNTS {
        let id = account(index);
        let domain = w.market.handler().load_fresh::<Account>(&id.0).await.expect("load the account").state.clone();
        let points = rebuilt.balances.points_of(&id);
        assert_eq!((points.balance, points.held), (i128::from(domain.balance), i128::from(domain.held_total())), "{id}: as the domain has it");
        assert_eq!(points.available(), i128::from(domain.available()));
        let spent: i128 =
            rebuilt.balances.ledger.iter().filter(|(a, _)| a.kind == LedgerAccountKind::ConsumerPoints && a.name == id.0).map(|(_, balance)| *balance).sum();
        let topped_up = i128::from(w.topped_up.get(&id).copied().unwrap_or(0));
        assert_eq!(points.balance, topped_up + spent, "{id}: topped up {topped_up}, ledger {spent}");
        assert!(points.balance >= 0 && points.available() >= 0, "{id}: never negative");
    }

    // The store, reopened on the same log, holds the same balances.
    w.runner.abort();
    let _ = w.runner.await;
    drop(w.market);
    drop(w.live);
    let (reopened, outcome) = Live::open_checked(&w.dir.path().join("projections"), None, None, w.log.as_ref()).await.expect("reopen");
    assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: head });
    reopened.read(|stored| {
        assert_eq!(stored.balances, rebuilt.balances, "stored balances");
        assert_eq!(stored.digest(), rebuilt.digest(), "stored digest");
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, rng_seed: proptest::test_runner::RngSeed::Fixed(engine::testing::proptest_seed(module_path!())), ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_sums_to_zero_and_a_rebuild_equals_the_live_balances(steps in proptest::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut w = world().await;
            // Points to spend from the start, so points sales do not all fail.
            for index in 0..ACCOUNTS {
                w.market.top_up("op", &req(&format!("seed{index}")), &account(index), 2_000, "").await.expect("top up");
                w.topped_up.insert(account(index), 2_000);
            }
            run_script(&mut w, &steps).await;
            check_world(w).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_market_exercises_every_kind_of_ledger_account() {
    // A fixed script, so that one run is known to reach every account kind, a refund of a
    // points sale, an expiry and both currencies.
    let mut w = world().await;
    w.market.top_up("op", &req("seed"), &account(0), 5_000, "").await.expect("top up");
    w.topped_up.insert(account(0), 5_000);
    let steps = [
        Step::Sell { merchant: 0, items: 3, points: Some(0), authorize: true },
        Step::Sell { merchant: 1, items: 2, points: None, authorize: true },
        Step::Sell { merchant: 0, items: 0, points: None, authorize: true },
        Step::Void { voucher: 0, merchant: 0 },
        Step::Sell { merchant: 1, items: 1, points: Some(0), authorize: false },
        Step::Advance { ms: 61_000 },
        Step::Sweep,
    ];
    run_script(&mut w, &steps).await;
    let head = w.log.last_seq().await.expect("last seq");
    w.live.caught_up(head).await;
    w.live.read(|p| {
        let balances = &p.balances;
        let kinds: std::collections::BTreeSet<LedgerAccountKind> = balances.ledger.keys().map(|a| a.kind).collect();
        assert_eq!(kinds.len(), 5, "every kind of ledger account: {:?}", balances.ledger);
        let currencies: Vec<&str> = balances.sums_by_currency().into_keys().collect();
        assert_eq!(currencies, vec!["EUR", "USD"]);
        let points = balances.points_of(&account(0));
        assert_eq!((points.balance, points.held), (5_000, 0), "the refunded album came back, the expired hold was released");
        assert_eq!(balances.ledger_balance("EUR", LedgerAccountKind::ConsumerPoints, "acct0"), 0, "the refund reversed the album's settlement");
        assert_eq!(balances.ledger_balance("USD", LedgerAccountKind::MerchantClearing, &w.merchants[1].0), -350);
        assert_eq!(balances.ledger_balance("EUR", LedgerAccountKind::Retailer, &w.merchants[0].0), 59, "30 % of 199; the refunded album's share is gone");
    });
    check_world(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbalanced_posting_is_a_finding_for_the_runner_and_the_auditor() {
    let w = world().await;
    let merchant = &w.merchants[0];
    let reserved = w
        .market
        .reserve(merchant, &req("r"), std::slice::from_ref(&w.media[0]), "high", 60_000, Payment::Merchant { payment_ref: "card".into() }, None)
        .await
        .expect("reserve");
    w.market.authorize(merchant, &req("a"), &reserved.voucher_id).await.expect("authorize");
    let events = w.log.read_from(Seq(1), usize::MAX).await.expect("read");
    let position =
        events.iter().position(|e| matches!(engine::wire::decode(&e.payload).expect("decode").event, Event::Authorized { .. })).expect("an Authorized");

    // Negative control: untouched, the stream applies.
    rebuild_checked(&events);

    let mut tampered = events.clone();
    let mut recorded = engine::wire::decode(&tampered[position].payload).expect("decode");
    let Event::Authorized { postings, .. } = &mut recorded.event else { unreachable!("found above") };
    postings[1].credit_minor += 1;
    tampered[position].payload = engine::wire::encode(&recorded).into();
    assert_ne!(tampered, events, "control: the stream was changed");

    let seq = tampered[position].seq;
    let mut projections = Projections::default();
    let finding = tampered.iter().find_map(|event| projections.apply(event).err()).expect("the tampered event is found");
    assert!(matches!(&finding, Finding::Ledger { seq: at, .. } if *at == seq), "{finding}");
    assert_eq!(finding.seq(), seq);
    assert_eq!((projections.last_seq.0, projections.balances.sum()), (seq.0 - 1, Some(0)), "nothing of the refused event was applied");

    // A live runner stops there, with the finding.
    let live = Live::new();
    let error = live.run(Arc::new(Served(tampered.clone()))).await.expect_err("the runner stops");
    assert!(matches!(&error, projections::RunError::Finding(Finding::Ledger { seq: at, .. }) if *at == seq), "{error}");

    // The auditor's replay names it as the first bad position.
    let report = projections::audit::replay(&Served(tampered), &crypto::SecretKey::from_bytes([1; 32]), &test_keys::fixed_rsa().public(), None, |_| {})
        .await
        .expect("replay");
    let bad = report.first_bad.expect("caught");
    assert_eq!(bad.seq, seq.0);
    assert!(bad.reason.contains("settlement ledger"), "{}", bad.reason);
}

/// A fixed list of events as a read-only log.
struct Served(Vec<StoredEvent>);

#[async_trait::async_trait]
impl EventLog for Served {
    async fn append(
        &self,
        _request: engine::log::AppendRequest,
    ) -> Result<Result<engine::log::Appended, engine::log::VersionConflict>, engine::log::AppendError> {
        Err(engine::log::AppendError::Unavailable("read-only".into()))
    }
    async fn read_subject(&self, subject: &str) -> Result<Vec<StoredEvent>, engine::log::ReadError> {
        Ok(self.0.iter().filter(|e| e.subject == subject).cloned().collect())
    }
    async fn read_from(&self, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, engine::log::ReadError> {
        Ok(self.0.iter().filter(|e| e.seq >= from).take(limit).cloned().collect())
    }
    async fn last_seq(&self) -> Result<Seq, engine::log::ReadError> {
        Ok(self.0.last().map_or(Seq(0), |e| e.seq))
    }
    fn follow(&self, from: Seq) -> futures::stream::BoxStream<'static, Result<StoredEvent, engine::log::ReadError>> {
        Box::pin(futures::stream::iter(self.0.clone().into_iter().filter(move |e| e.seq >= from).map(Ok)))
    }
}
