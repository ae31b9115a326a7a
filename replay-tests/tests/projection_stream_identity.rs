//! A projection store pointed at another JetStream stream: the engine's data directory
//! kept while `--nats-url` changes to a server with another history. `Live::open_checked`
//! resumes on the stream the store was built from and quarantines and rebuilds on the
//! other one, to the digest a clean rebuild of that stream gives.

mod common;

use engine::app::{EngineKeys, Market};
use engine::clock::{Clock, ManualClock};
use engine::crypto::{self, test_keys};
use engine::domain::event::Payment;
use engine::ids::*;
use engine::log::EventLog;
use engine::log::jetstream::JetStreamLog;
use projections::store::OpenOutcome;
use projections::{Live, Projections, STREAM_MISMATCH};
use replay_tests::NatsServer;
use std::path::Path;
use std::sync::Arc;

fn req(id: &str) -> RequestId {
    RequestId::new(id)
}

/// A JetStream log on its own nats-server, with `sales` sales written through the market
/// (starting at `now_ms`, so two logs differ in every event's time).
async fn market_log(server: &NatsServer, now_ms: i64, sales: usize) -> Arc<dyn EventLog> {
    let log: Arc<dyn EventLog> = Arc::new(JetStreamLog::connect(&server.url(), "VOUCHSAFE").await.unwrap_or_else(|error| panic!("connect: {error}")));
    let clock = Arc::new(ManualClock::new(Millis(now_ms)));
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("keys"));
    let market = Market::new(Arc::clone(&log), clock as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(Live::new()));
    let merchant = MerchantId(market.register_merchant("op", &req("m"), "Shop").await.expect("merchant").id);
    let input = common::song("Song", 250, crypto::wrap_key(&keys.public, &crypto::SecretKey::random()).expect("wrap"));
    let media = market.publish_media("pub", &req("media"), input).await.expect("publish");
    let payer = engine::testing::TestConsumer::certify(&market, "op", "acct").await.expect("certify the payer");
    market.top_up("op", &req("top"), &payer.account(), 10_000, "").await.expect("top up");
    for sale in 0..sales {
        let (payment, spend) = if sale % 2 == 0 {
            (Payment::Points { account: payer.account() }, Some(payer.authorize_any(&market, &merchant)))
        } else {
            (Payment::Merchant { payment_ref: "card".into() }, None)
        };
        let reserved =
            market.reserve(&merchant, &req(&format!("r{sale}")), std::slice::from_ref(&media), "high", 60_000, payment, spend.as_ref()).await.expect("reserve");
        market.authorize(&merchant, &req(&format!("a{sale}")), &reserved.voucher_id).await.expect("authorize");
    }
    log
}

/// Opens the store checked against `log`, follows it until everything is committed, stops.
async fn open_and_follow(store: &Path, log: &Arc<dyn EventLog>) -> (OpenOutcome, [u8; 32]) {
    let (live, outcome) = Live::open_checked(store, None, None, log.as_ref()).await.expect("open the projection store");
    let runner = {
        let (live, log) = (live.clone(), Arc::clone(log));
        tokio::spawn(async move { live.run(log).await })
    };
    let head = log.last_seq().await.expect("last seq");
    live.committed(head).await;
    runner.abort();
    let _ = runner.await;
    (outcome, live.read(Projections::digest))
}

async fn clean_digest(log: &Arc<dyn EventLog>) -> [u8; 32] {
    let mut projections = Projections::default();
    for event in log.read_from(Seq(1), usize::MAX).await.expect("read") {
        projections.apply(&event).expect("applies");
    }
    assert_eq!(projections.balances.sum(), Some(0));
    projections.digest()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_follows_only_the_jetstream_stream_it_was_built_from() {
    let (first_server, other_server) = (NatsServer::start().unwrap_or_else(|e| panic!("{e}")), NatsServer::start().unwrap_or_else(|e| panic!("{e}")));
    let first = market_log(&first_server, 1_760_000_000_000, 6).await;
    let other = market_log(&other_server, 1_770_000_000_000, 3).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");

    let (outcome, digest) = open_and_follow(&store, &first).await;
    assert_eq!(outcome, OpenOutcome::Created);
    assert_eq!(digest, clean_digest(&first).await);
    // Negative control: the same stream resumes.
    let (outcome, _) = open_and_follow(&store, &first).await;
    assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: first.last_seq().await.expect("last seq") });

    // Another server's stream (shorter): quarantined, rebuilt to its own state.
    let (outcome, digest) = open_and_follow(&store, &other).await;
    let OpenOutcome::Quarantined { path, reason } = outcome else { panic!("expected a quarantine, got {outcome:?}") };
    assert!(reason.starts_with(STREAM_MISMATCH) && path.exists(), "{reason}");
    assert_eq!(digest, clean_digest(&other).await);

    // And back, now that the store follows the other stream (longer, and different at the
    // checkpoint): quarantined again.
    let (outcome, digest) = open_and_follow(&store, &first).await;
    assert!(matches!(&outcome, OpenOutcome::Quarantined { reason, .. } if reason.contains("is not the one the store applied")), "{outcome:?}");
    assert_eq!(digest, clean_digest(&first).await);
}
