//! The auditor's replay catches every kind of tampering with the exact first bad position,
//! and each case has a negative control: the untouched stream passes, and the mutation
//! really changed what the auditor reads.

use engine::crypto::{SecretKey, test_keys};
use engine::domain::event::Event;
use engine::domain::report::Report;
use engine::ids::Seq;
use engine::log::{AppendError, AppendRequest, Appended, EventLog, ReadError, StoredEvent, VersionConflict};
use futures::stream::BoxStream;
use gateways::common::backend::BackendArgs;
use gateways::demo::{self, DemoArgs};
use projections::audit::{self, AuditReport};

/// A read-only stream served from memory: what a tampered store would hand the auditor.
struct Served(Vec<StoredEvent>);

#[async_trait::async_trait]
impl EventLog for Served {
    async fn append(&self, _request: AppendRequest) -> Result<Result<Appended, VersionConflict>, AppendError> {
        Err(AppendError::Unavailable("the audit test log is read-only".into()))
    }
    async fn read_subject(&self, subject: &str) -> Result<Vec<StoredEvent>, ReadError> {
        Ok(self.0.iter().filter(|e| e.subject == subject).cloned().collect())
    }
    async fn read_from(&self, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, ReadError> {
        Ok(self.0.iter().filter(|e| e.seq >= from).take(limit).cloned().collect())
    }
    async fn last_seq(&self) -> Result<Seq, ReadError> {
        Ok(self.0.last().map_or(Seq(0), |e| e.seq))
    }
    fn follow(&self, from: Seq) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
        Box::pin(futures::stream::iter(self.0.clone().into_iter().filter(move |e| e.seq >= from).map(Ok)))
    }
}

struct Recorded {
    _dir: tempfile::TempDir,
    events: Vec<StoredEvent>,
    master: SecretKey,
    public: engine::crypto::RsaPublic,
    last_seal_hash: [u8; 32],
}

async fn recorded_stream() -> Recorded {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = BackendArgs { data_dir: dir.path().to_path_buf(), nats_url: None, stream: "VOUCHSAFE".into() };
    let keys_dir = dir.path().join("keys");
    let summary = demo::run(DemoArgs {
        backend: backend.clone(),
        keys_dir: keys_dir.clone(),
        vouchers: 30,
        connect: None,
        engine_tls: Default::default(),
        node_tls: false,
    })
    .await
    .expect("demo");
    assert!(summary.audit_ok && summary.seals >= 2);
    let log = backend.open().await.expect("open");
    let events = log.read_from(Seq(1), usize::MAX).await.expect("read");
    let master = gateways::common::keys::load_royalty_master(&keys_dir).expect("master");
    let public = gateways::common::keys::load_engine_public(&keys_dir).expect("public");
    let last_seal_hash = seals(&events).last().map(|(_, seal)| Report::seal_hash(seal)).expect("a seal");
    Recorded { _dir: dir, events, master, public, last_seal_hash }
}

fn seals(events: &[StoredEvent]) -> Vec<(usize, engine::domain::event::RightsReportSealed)> {
    events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match engine::wire::decode(&e.payload).ok()?.event {
            Event::RightsReportSealed(seal) => Some((i, seal)),
            _ => None,
        })
        .collect()
}

fn position_of(events: &[StoredEvent], wanted: &str) -> usize {
    events.iter().position(|e| engine::wire::decode(&e.payload).is_ok_and(|r| r.event.name() == wanted)).expect("event present")
}

async fn audit(r: &Recorded, events: Vec<StoredEvent>, pin: Option<[u8; 32]>) -> AuditReport {
    audit::replay(&Served(events), &r.master, &r.public, pin, |_| {}).await.expect("replay runs")
}

fn reencode(event: &StoredEvent, change: impl FnOnce(&mut engine::domain::Recorded)) -> StoredEvent {
    let mut recorded = engine::wire::decode(&event.payload).expect("decode");
    change(&mut recorded);
    StoredEvent { payload: engine::wire::encode(&recorded).into(), ..event.clone() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tampering_is_caught_at_its_first_bad_position() {
    let r = recorded_stream().await;
    let clean = audit(&r, r.events.clone(), Some(r.last_seal_hash)).await;
    assert!(clean.ok(), "negative control: the untouched stream passes: {:?}", clean.first_bad);

    // (what, the tampered stream, a pin, the expected first bad sequence)
    type Case = (&'static str, Vec<StoredEvent>, Option<[u8; 32]>, u64);
    let mut cases: Vec<Case> = Vec::new();
    let n = r.events.len();

    // A field no projection keeps (a delivery's content hash), altered in a well-formed
    // event: the covering seal's stream head no longer matches.
    let delivered = position_of(&r.events, "Delivered");
    let covering_seal = seals(&r.events).into_iter().find(|(_, seal)| seal.last_stream_seq > delivered as u64).expect("a seal covers it").0;
    let mut altered = r.events.clone();
    altered[delivered] = reencode(&r.events[delivered], |rec| {
        if let Event::Delivered { content_hash, .. } = &mut rec.event {
            content_hash[0] ^= 1;
        }
    });
    cases.push(("altered content hash of a delivery", altered, None, covering_seal as u64 + 1));

    // A delivery's price rewritten in a well-formed event: the chain recomputes differently
    // and the seal over it no longer matches.
    let reserved = position_of(&r.events, "Reserved");
    let mut repriced = r.events.clone();
    repriced[reserved] = reencode(&r.events[reserved], |rec| {
        if let Event::Reserved { items, .. } = &mut rec.event {
            items[0].price_minor += 1;
        }
    });
    let first_seal_seq = seals(&r.events)[0].0 as u64 + 1;
    cases.push(("re-priced sale (well-formed)", repriced, None, first_seal_seq));

    // A deleted event (gap), a duplicated event, two events reordered.
    let mut deleted = r.events.clone();
    deleted.remove(10);
    cases.push(("deleted event", deleted, None, 11));
    let mut duplicated = r.events.clone();
    duplicated.insert(11, r.events[10].clone());
    cases.push(("duplicated event", duplicated, None, 12));
    let mut reordered = r.events.clone();
    reordered.swap(20, 21);
    cases.push(("reordered events", reordered, None, 21));

    // Truncating the tail after a seal, while pinned to the last seal.
    let (last_seal_index, _) = *seals(&r.events).last().expect("seal");
    cases.push(("dropped the last seal while pinned", r.events[..last_seal_index].to_vec(), Some(r.last_seal_hash), last_seal_index as u64 + 1));

    // A seal re-signed with another key.
    let mut foreign = r.events.clone();
    foreign[last_seal_index] = reencode(&r.events[last_seal_index], |rec| {
        if let Event::RightsReportSealed(seal) = &mut rec.event {
            projections::royalty::sign_seal(&test_keys::fixed_rsa_2(), seal).expect("sign");
        }
    });
    cases.push(("seal signed with another key", foreign, None, last_seal_index as u64 + 1));

    // A seal whose totals disagree (validly signed with the engine key: an insider).
    let engine_private = gateways::common::keys::load_engine_private(r._dir.path().join("keys").as_path()).expect("engine key");
    let mut wrong_totals = r.events.clone();
    wrong_totals[last_seal_index] = reencode(&r.events[last_seal_index], |rec| {
        if let Event::RightsReportSealed(seal) = &mut rec.event {
            seal.totals_digest[0] ^= 1;
            projections::royalty::sign_seal(&engine_private, seal).expect("sign");
        }
    });
    cases.push(("seal with disagreeing totals", wrong_totals, None, last_seal_index as u64 + 1));

    for (what, events, pin, expected_seq) in cases {
        assert_ne!(events, r.events, "negative control for {what}: the mutation changed the stream");
        let report = audit(&r, events, pin).await;
        let bad = report.first_bad.clone().unwrap_or_else(|| panic!("{what}: not caught"));
        assert!(!report.ok());
        assert_eq!(bad.seq, expected_seq, "{what}: first bad at {bad:?}");
    }
    assert!(n > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_anywhere_in_a_sealed_event_is_caught() {
    let r = recorded_stream().await;
    let (first_seal, _) = seals(&r.events)[0];
    // Every byte position of one event before the first seal, one bit each.
    let target = first_seal / 2;
    for byte in 0..r.events[target].payload.len() {
        let mut events = r.events.clone();
        let mut payload = events[target].payload.to_vec();
        payload[byte] ^= 0x10;
        events[target].payload = payload.into();
        let report = audit(&r, events, None).await;
        let bad = report.first_bad.unwrap_or_else(|| panic!("a flipped bit at byte {byte} of event {} was not caught", target + 1));
        // Either the event itself no longer decodes or applies, or the seal over it fails.
        assert!(bad.seq == target as u64 + 1 || bad.seq == first_seal as u64 + 1, "byte {byte}: {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_master_key_fails_the_chain_at_the_first_seal() {
    let r = recorded_stream().await;
    let report = audit::replay(&Served(r.events.clone()), &SecretKey::from_bytes([9; 32]), &r.public, None, |_| {}).await.expect("replay");
    let bad = report.first_bad.expect("caught");
    assert_eq!(bad.entry, Some(0));
    assert!(bad.reason.contains("head Y/Z"), "{}", bad.reason);
}
