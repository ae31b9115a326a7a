//! The same command script on the embedded log and on JetStream yields the same events in
//! the same order and the same projection state digest.
//!
//! Three fields are randomized by design and are normalized before comparing: the hash of
//! a merchant's or node's credential (the credential secret is random), the PSS signature
//! of a consumer certificate (random salt) and the hash of a media key wrapped for a
//! consumer (random OAEP padding). Everything else must match byte for byte.

mod common;

use engine::app::{Allocator, EngineKeys, Market};
use engine::clock::{Clock, ManualClock};
use engine::crypto::{self, test_keys};
use engine::domain::event::{Event, Payment, Recorded};
use engine::ids::*;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use engine::log::jetstream::JetStreamLog;
use std::sync::Arc;

struct OneNode(NodeId);

impl Allocator for OneNode {
    fn choose(&self, _region: Option<&str>, _holder: &str) -> Option<engine::placement::Placed> {
        Some(engine::placement::Placed { node: self.0.clone(), lease: 0 })
    }

    fn cancel(&self, _holder: &str) {}
}

fn req(id: &str) -> RequestId {
    RequestId::new(id)
}

/// Runs a fixed script of commands covering every voucher path; returns nothing, the log
/// is the result.
async fn script(log: Arc<dyn EventLog>, wrapped_media_key: Vec<u8>) {
    let clock = Arc::new(ManualClock::new(Millis(1_750_000_000_000)));
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("keys"));
    let node = node_id_for("op", &req("node-1"));
    let market = Market::new(log, clock.clone() as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(OneNode(node.clone())));
    market.register_node("op", &req("node-1"), "eu", 16).await.expect("node");
    let merchant = MerchantId(market.register_merchant("op", &req("m-1"), "Shop").await.expect("merchant").id);
    let input = common::song("Song", 300, wrapped_media_key);
    let media = market.publish_media("pub", &req("media-1"), input).await.expect("publish");
    let consumer = ConsumerId::new("alice");
    let player = test_keys::fixed_rsa_2();
    let player_der = player.public().to_der().expect("der");
    let cert = market.certify_consumer("op", &req("c-1"), &consumer, &player_der, 86_400_000).await.expect("cert");
    let payer = engine::testing::TestConsumer::certify(&market, "op", "acct").await.expect("certify the payer");
    let account = payer.account();
    market.top_up("op", &req("top"), &account, 1_000, "").await.expect("top up");
    let merchant_pays = || Payment::Merchant { payment_ref: "card".into() };
    for i in 0..6 {
        clock.advance_ms(10);
        let (payment, spend) =
            if i % 2 == 0 { (merchant_pays(), None) } else { (Payment::Points { account: account.clone() }, Some(payer.authorize_any(&market, &merchant))) };
        let voucher = market
            .reserve(&merchant, &req(&format!("r{i}")), std::slice::from_ref(&media), "high", 60_000, payment, spend.as_ref())
            .await
            .expect("reserve")
            .voucher_id;
        match i {
            0 => {
                market.void(&merchant, &req("void0"), &voucher).await.expect("void");
            }
            1 => {
                clock.advance_ms(60_001);
                market.expire(&voucher).await.expect("expire");
            }
            _ => {
                let receipt = market.authorize(&merchant, &req(&format!("a{i}")), &voucher).await.expect("authorize").receipt;
                market.issue(&merchant, &req(&format!("i{i}")), &voucher, None, 60_000).await.expect("issue");
                let challenge = [i as u8; 32];
                let subject = crypto::ProofConsumer::new(&consumer.0, &cert.serial.0, &player_der);
                let proof = crypto::receipt_proof(&receipt, &voucher.0, &node.0, &challenge, &subject);
                market.redeem(&node, &req(&format!("d{i}")), &voucher, &consumer, &cert.serial, &challenge, &proof).await.expect("redeem");
                let confirm = crypto::confirm_proof(&receipt, &voucher.0, &node.0, &media.0, &[2; 32], &subject);
                market.complete_delivery(&node, &req(&format!("done{i}")), &voucher, &media, [2; 32], 10, &confirm).await.expect("deliver");
            }
        }
    }
    let (preview, preview_node) = market.preview(&merchant, &req("pv"), &media, None).await.expect("preview");
    market.end_preview(&preview_node, &req("pv-end"), &preview, 5_000).await.expect("end preview");
}

async fn events_and_digest(log: &Arc<dyn EventLog>) -> (Vec<(String, Recorded)>, [u8; 32]) {
    let stored = log.read_from(Seq(1), usize::MAX).await.expect("read");
    let mut projections = projections::Projections::default();
    let mut events = Vec::new();
    for event in &stored {
        let mut recorded = projections.apply(event).expect("applies");
        match &mut recorded.event {
            Event::MerchantRegistered { credential_hash, .. } | Event::NodeRegistered { credential_hash, .. } => *credential_hash = [0; 32],
            Event::ConsumerCertified { signature, .. } => *signature = b"normalized: PSS salt is random".to_vec(),
            Event::RedemptionAccepted { wrapped_key_hashes, .. } => wrapped_key_hashes.iter_mut().for_each(|h| *h = [0; 32]),
            _ => {}
        }
        events.push((event.subject.clone(), recorded));
    }
    (events, projections.digest())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_script_gives_the_same_events_and_digest_on_both_backends() {
    let keys = test_keys::fixed_rsa();
    // One wrapping of the media key for both runs (OAEP is randomized).
    let wrapped = crypto::wrap_key(&keys.public(), &crypto::SecretKey::random()).expect("wrap");

    let dir = tempfile::tempdir().expect("temp dir");
    let embedded: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(dir.path()).expect("embedded log"));
    script(Arc::clone(&embedded), wrapped.clone()).await;

    let server = replay_tests::NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let jetstream: Arc<dyn EventLog> = Arc::new(JetStreamLog::connect(&server.url(), "CROSS").await.expect("connect"));
    script(Arc::clone(&jetstream), wrapped).await;

    let (embedded_events, embedded_digest) = events_and_digest(&embedded).await;
    let (jetstream_events, jetstream_digest) = events_and_digest(&jetstream).await;
    assert!(embedded_events.len() > 30, "the script covers the lifecycle ({} events)", embedded_events.len());
    assert_eq!(embedded_events.len(), jetstream_events.len());
    for (position, (left, right)) in embedded_events.iter().zip(&jetstream_events).enumerate() {
        assert_eq!(left, right, "event {} differs between the backends", position + 1);
    }
    assert_eq!(embedded_digest, jetstream_digest);
    assert_ne!(embedded_digest, projections::Projections::default().digest(), "the digest covers the state");
}
