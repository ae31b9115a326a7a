//! A stream that goes back under its readers, against a real nats-server.
//!
//! A JetStream server can come back from a crash without a tail it had already delivered
//! (nats-server #3402, #5412; Jepsen 2025), and new appends then take the lost sequence
//! numbers. A follower must notice (`ReadError::Diverged`) instead of keeping what the
//! stream lost and skipping what replaced it, and the live projections must then rebuild
//! from sequence 1. Losing a tail on demand is not something a server does, so these tests
//! delete the stream and re-create it with a shorter or different history, which is the
//! same situation for a reader. Controls: the protection off (a follower without the
//! resume check mixes the two histories silently), and a plain restart that loses nothing
//! (no divergence reported).

mod common;

use engine::app::{EngineKeys, Market};
use engine::clock::{Clock, SystemClock};
use engine::crypto::{self, test_keys};
use engine::domain::event::Payment;
use engine::ids::*;
use engine::log::jetstream::JetStreamLog;
use engine::log::{AppendRequest, EventLog, Expected, ReadError, StoredEvent};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

const STREAM: &str = "BACK";
const WAIT: Duration = Duration::from_secs(20);

async fn append(log: &JetStreamLog, subject: &str, payload: &str) -> Seq {
    let request = AppendRequest {
        subject: subject.into(),
        expected: Expected::Any,
        idempotency_key: format!("{subject}-{payload}"),
        payload: bytes::Bytes::from(payload.to_owned()),
    };
    log.append(request).await.expect("append").expect("no expectation, no conflict").seq
}

/// Deletes the stream (and its node feed) behind every reader's back and re-creates them
/// empty, the way a server that lost everything it had would come back.
async fn recreate(url: &str) -> JetStreamLog {
    let client = async_nats::connect(url).await.expect("connect");
    let context = async_nats::jetstream::new(client);
    context.delete_stream(STREAM).await.expect("delete the stream");
    context.delete_stream(format!("{STREAM}_NODES")).await.expect("delete the node feed");
    JetStreamLog::connect(url, STREAM).await.expect("re-create the stream")
}

async fn next(follow: &mut futures::stream::BoxStream<'static, Result<StoredEvent, ReadError>>) -> Result<StoredEvent, ReadError> {
    tokio::time::timeout(WAIT, follow.next()).await.expect("the follower answers within 20 s").expect("the follow stream goes on until an error")
}

#[tokio::test]
async fn a_follower_reports_a_stream_that_lost_what_it_delivered() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    let url = server.url();
    let log = JetStreamLog::connect(&url, STREAM).await.expect("connect");
    for n in 1..=5 {
        append(&log, &format!("vs.t.e{n}"), &format!("first history {n}")).await;
    }
    let mut follow = log.follow(Seq(1));
    for n in 1..=5 {
        assert_eq!(next(&mut follow).await.expect("reads").seq, Seq(n));
    }

    // Shorter: the stream no longer holds sequence 5.
    let shorter = recreate(&url).await;
    for n in 1..=3 {
        append(&shorter, &format!("vs.t.e{n}"), &format!("first history {n}")).await;
    }
    match next(&mut follow).await {
        Err(ReadError::Diverged { seq, reason }) => {
            assert_eq!(seq, Seq(5));
            assert!(reason.contains("no longer holds"), "{reason}");
        }
        other => panic!("a shorter stream is reported as Diverged at 5, not {other:?}"),
    }
    assert!(follow.next().await.is_none(), "the follow ends after reporting it");

    // Different: sequence 5 is there, with another event.
    let mut follow = shorter.follow(Seq(1));
    for n in 1..=3 {
        assert_eq!(next(&mut follow).await.expect("reads").seq, Seq(n));
    }
    let different = recreate(&url).await;
    for n in 1..=6 {
        append(&different, &format!("vs.t.e{n}"), &format!("second history {n}")).await;
    }
    match next(&mut follow).await {
        Err(ReadError::Diverged { seq, reason }) => {
            assert_eq!(seq, Seq(3));
            assert!(reason.contains("another event"), "{reason}");
        }
        other => panic!("a stream with another event at 3 is reported as Diverged at 3, not {other:?}"),
    }
    drop(server);
}

/// The protection off: a follower without the resume check goes on from where it was
/// after the stream lost its tail and new appends took those sequences. It has yielded the
/// lost events 4 and 5, never yields the ones that replaced them, and carries on with the
/// new history's 6 as if nothing happened: what the check above reports as Diverged.
#[tokio::test]
async fn without_the_resume_check_a_follower_mixes_two_histories_silently() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    let url = server.url();
    let log = JetStreamLog::connect(&url, STREAM).await.expect("connect");
    for n in 1..=5 {
        append(&log, &format!("vs.t.e{n}"), &format!("first history {n}")).await;
    }
    let mut follow = log.follow_unchecked(Seq(1));
    for n in 1..=5 {
        assert_eq!(next(&mut follow).await.expect("reads").seq, Seq(n));
    }
    let shorter = recreate(&url).await;
    for n in 1..=3 {
        append(&shorter, &format!("vs.t.e{n}"), &format!("first history {n}")).await;
    }
    for n in 4..=6 {
        append(&shorter, &format!("vs.t.e{n}"), &format!("second history {n}")).await;
    }
    let event = next(&mut follow).await.expect("no divergence is reported with the check off");
    assert_eq!(
        (event.seq, event.payload.as_ref()),
        (Seq(6), b"second history 6".as_slice()),
        "the unchecked follower skipped the events that replaced the lost tail"
    );
    drop(server);
}

/// Negative control of the check itself: a restart that lost nothing is no divergence.
#[tokio::test]
async fn a_follower_goes_on_across_a_restart_that_lost_nothing() {
    let mut server = replay_tests::NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    let log = JetStreamLog::connect(&server.url(), STREAM).await.expect("connect");
    for n in 1..=5 {
        append(&log, &format!("vs.t.e{n}"), &format!("event {n}")).await;
    }
    let mut follow = log.follow(Seq(1));
    for n in 1..=5 {
        assert_eq!(next(&mut follow).await.expect("reads").seq, Seq(n));
    }
    server.restart().unwrap_or_else(|error| panic!("restart nats-server: {error}"));
    // The client reconnects on its own; the append retries until the stream answers.
    let deadline = tokio::time::Instant::now() + WAIT;
    let sixth = loop {
        let request =
            AppendRequest { subject: "vs.t.e6".into(), expected: Expected::Any, idempotency_key: "e6".into(), payload: bytes::Bytes::from_static(b"event 6") };
        match log.append(request).await {
            Ok(appended) => break appended.expect("no expectation, no conflict").seq,
            Err(error) if tokio::time::Instant::now() < deadline => {
                eprintln!("append after the restart: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("append after the restart: {error}"),
        }
    };
    assert_eq!(sixth, Seq(6));
    let event = next(&mut follow).await.expect("a restart that lost nothing is no divergence");
    assert_eq!((event.seq, event.payload.as_ref()), (Seq(6), b"event 6".as_slice()));
    drop(server);
}

/// Sells and delivers one voucher through `market`; request ids from `tag`.
async fn deliver_one(market: &Market, merchant: &MerchantId, media: &MediaId, consumer: &ConsumerId, cert: &CertSerial, tag: &str) {
    let req = |step: &str| RequestId::new(format!("{tag}-{step}"));
    let reserved = market
        .reserve(merchant, &req("r"), std::slice::from_ref(media), "high", 600_000, Payment::Merchant { payment_ref: tag.into() }, None)
        .await
        .expect("reserve");
    let authorized = market.authorize(merchant, &req("a"), &reserved.voucher_id).await.expect("authorize");
    let issued = market.issue(merchant, &req("i"), &reserved.voucher_id, None, 600_000).await.expect("issue");
    let challenge = [7; 32];
    let subject = crypto::ProofConsumer::new(&consumer.0, &cert.0, &test_keys::fixed_rsa_2().public().to_der().expect("der"));
    let proof = crypto::receipt_proof(&authorized.receipt, &issued.voucher_id.0, &issued.node_id.0, &challenge, &subject);
    market.redeem(&issued.node_id, &req("d"), &issued.voucher_id, consumer, cert, &challenge, &proof).await.expect("redeem");
    let confirm = crypto::confirm_proof(&authorized.receipt, &issued.voucher_id.0, &issued.node_id.0, &media.0, &[1; 32], &subject);
    market.complete_delivery(&issued.node_id, &req("c"), &issued.voucher_id, media, [1; 32], 10, &confirm).await.expect("deliver");
}

/// The state digest and delivery count of a clean rebuild of `log`.
async fn rebuilt(log: &dyn EventLog, master: &crypto::SecretKey, keys: &EngineKeys) -> ([u8; 32], u64) {
    let mut projections = projections::Projections::with_royalty_keys(master, Some(keys.public.clone()));
    let mut from = Seq(1);
    loop {
        let events = log.read_from(from, 1024).await.expect("read");
        let Some(last) = events.last() else { break };
        from = Seq(last.seq.0 + 1);
        for event in &events {
            projections.apply(event).expect("applies");
        }
    }
    (projections.digest(), deliveries(&projections))
}

fn deliveries(projections: &projections::Projections) -> u64 {
    projections.royalty.totals.iter().filter(|((dimension, _), _)| format!("{dimension:?}") == "Merchant").map(|(_, line)| line.deliveries).sum()
}

#[tokio::test]
async fn live_projections_rebuild_when_the_stream_goes_back() {
    let server = replay_tests::NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    let url = server.url();
    let log = Arc::new(JetStreamLog::connect(&url, STREAM).await.expect("connect"));
    let dyn_log: Arc<dyn EventLog> = Arc::clone(&log) as Arc<dyn EventLog>;
    let keys = Arc::new(EngineKeys::new(test_keys::fixed_rsa()).expect("keys"));
    let master = crypto::SecretKey::from_bytes([11; 32]);
    let store_dir = tempfile::tempdir().expect("temp dir");
    let (live, _) =
        projections::Live::open_checked(store_dir.path(), Some(&master), Some(keys.public.clone()), log.as_ref()).await.expect("open the projection store");
    let runner = {
        let (live, log) = (live.clone(), Arc::clone(&dyn_log));
        tokio::spawn(async move { live.run(log).await })
    };
    let market = Market::new(Arc::clone(&dyn_log), Arc::new(SystemClock) as Arc<dyn Clock>, Arc::clone(&keys), Arc::new(live.clone()));
    market.register_node("op", &RequestId::new("node"), "eu", 8).await.expect("node");
    let merchant = MerchantId(market.register_merchant("op", &RequestId::new("merchant"), "Shop").await.expect("merchant").id);
    let input = common::song("Song", 100, crypto::wrap_key(&keys.public, &crypto::SecretKey::random()).expect("wrap"));
    let media = market.publish_media("pub", &RequestId::new("media"), input).await.expect("publish");
    let consumer = ConsumerId::new("alice");
    let cert = market
        .certify_consumer("op", &RequestId::new("cert"), &consumer, &test_keys::fixed_rsa_2().public().to_der().expect("der"), 86_400_000)
        .await
        .expect("cert")
        .serial;
    let setup_head = log.last_seq().await.expect("head");
    for n in 0..3 {
        deliver_one(&market, &merchant, &media, &consumer, &cert, &format!("first-{n}")).await;
    }
    let head = log.last_seq().await.expect("head");
    live.caught_up(head).await;
    assert_eq!(live.read(deliveries), 3);

    // The server "comes back" with only the set-up and the first sale (the same events at
    // the same sequences), and two other sales are appended after it: the live projections
    // applied two deliveries the stream no longer has.
    let history = log.read_from(Seq(1), 10_000).await.expect("read the first history");
    let kept = setup_head.0 as usize + 6;
    let back = recreate(&url).await;
    for event in &history[..kept] {
        let request = AppendRequest {
            subject: event.subject.clone(),
            expected: Expected::Any,
            idempotency_key: format!("replay-{}", event.seq.0),
            payload: event.payload.clone(),
        };
        let appended = back.append(request).await.expect("append").expect("no conflict");
        assert_eq!(appended.seq, event.seq);
    }
    for n in 0..2 {
        deliver_one(&market, &merchant, &media, &consumer, &cert, &format!("second-{n}")).await;
    }

    // The live projections notice, rebuild, and end up equal to a clean rebuild: 3
    // deliveries (1 kept + 2 new), not 5.
    let (digest, delivered) = rebuilt(log.as_ref(), &master, &keys).await;
    assert_eq!(delivered, 3, "the stream now holds 3 deliveries");
    let deadline = tokio::time::Instant::now() + WAIT;
    while live.read(projections::Projections::digest) != digest {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the live projections did not rebuild within 20 s: {} deliveries counted, the stream holds {delivered}",
            live.read(deliveries)
        );
        assert!(!runner.is_finished(), "the live runner stopped: {:?}", runner.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(live.read(deliveries), 3);
    // The store was rebuilt too: it holds the same state, committed at the stream's head.
    let head = log.last_seq().await.expect("head");
    live.committed(head).await;
    runner.abort();
    drop(live);
    drop(market);
    let (reopened, outcome) =
        projections::Live::open_checked(store_dir.path(), Some(&master), Some(keys.public.clone()), log.as_ref()).await.expect("reopen the store");
    assert!(
        matches!(outcome, projections::store::OpenOutcome::Resumed { checkpoint } if checkpoint == head),
        "the rebuilt store resumes at the head: {outcome:?}"
    );
    assert_eq!(reopened.read(projections::Projections::digest), digest, "the rebuilt store holds the rebuilt state");
    drop(server);
}
