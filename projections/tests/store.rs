//! The projection store through its public API: a resumed store equals a clean rebuild
//! from sequence 1, a deleted store rebuilds, the royalty master key is handled as the
//! design says (no secret stored; without the key the chain needs `A_0`), damage of every
//! kind is quarantined and rebuilt (never a panic), a directory that is not a projection
//! store is never touched, and a batch costs what it changed, not the size of the state.

mod support;

use engine::crypto::SecretKey;
use engine::ids::{Millis, Seq};
use engine::log::StoredEvent;
use projections::store::{OpenOutcome, ProjectionStore, StoreError};
use projections::{Live, Projections, SealError};
use std::path::Path;
use std::sync::Arc;
use support::{VecLog, engine_public, generate, keyed, master, rebuild};

const STREAM_EVENTS: usize = 6_000;
const SEAL_EVERY_USAGES: u64 = 150;

/// Opens a store-backed `Live` on `dir` and runs it over `events` to their end.
async fn run_to_end(dir: &Path, master: Option<&SecretKey>, events: &[StoredEvent], batch_events_max: usize) -> (Live, OpenOutcome) {
    let (live, outcome) = Live::open(dir, master, Some(engine_public())).expect("open the store");
    let live = live.with_batch_events_max(batch_events_max);
    live.run(Arc::new(VecLog::new(events.to_vec()))).await.expect("run to the end of the stream");
    (live, outcome)
}

/// Everything public that a resumed projection must share with a clean rebuild, beyond
/// the digest (which covers rows, holds, nodes, totals and chain heads).
#[track_caller]
fn assert_same(resumed: &Projections, clean: &Projections, what: &str) {
    assert_eq!(hex::encode(resumed.digest()), hex::encode(clean.digest()), "{what}: digest");
    assert_eq!((resumed.last_seq, resumed.events, resumed.stream_head), (clean.last_seq, clean.events, clean.stream_head), "{what}: checkpoint");
    assert_eq!(resumed.vouchers, clean.vouchers, "{what}: voucher book (rows, indexes, holds)");
    assert_eq!(resumed.allocation, clean.allocation, "{what}: allocation");
    assert_eq!(resumed.balances, clean.balances, "{what}: balances");
    let (r, c) = (&resumed.royalty, &clean.royalty);
    assert_eq!(r.entries, c.entries, "{what}: royalty entries (with their sources, digests and commitments)");
    assert_eq!(r.totals, c.totals, "{what}: totals");
    assert_eq!((r.usages, r.seals_verified), (c.usages, c.seals_verified), "{what}: counters");
    assert_eq!(r.seals, c.seals, "{what}: seals");
    assert_eq!(r.seal_faults, c.seal_faults, "{what}: seal faults");
    assert_eq!(r.chained(), c.chained(), "{what}: chained");
    for index in 0..r.entries.len() as u64 {
        assert_eq!(r.usage_digest(index), c.usage_digest(index), "{what}: usage digest {index}");
    }
    assert_eq!(resumed.vouchers.due(Millis(i64::MAX), usize::MAX), clean.vouchers.due(Millis(i64::MAX), usize::MAX), "{what}: sweeper list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_reopen_equals_a_clean_rebuild() {
    let events = generate(1, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let clean = rebuild(&events, keyed());
    assert!(clean.royalty.seals.len() >= 3 && clean.royalty.seals_verified == clean.royalty.seals.len() as u64, "the stream carries verified seals");
    assert!(!clean.vouchers.holds.is_empty() && clean.royalty.entries.len() > 300, "the stream exercises holds and the royalty log");
    assert!(
        clean.balances.ledger.len() >= 8 && clean.balances.points.len() == 4 && clean.balances.sum() == Some(0),
        "the stream exercises the balances: {:?}",
        clean.balances
    );
    for split in [1, 9, 1_000, 2_345, STREAM_EVENTS - 1] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("projections");
        let (first, outcome) = run_to_end(&store, Some(&master()), &events[..split], 64).await;
        assert_eq!(outcome, OpenOutcome::Created);
        assert_eq!(first.checkpoint(), Seq(split as u64), "every batch is committed before run returns");
        drop(first);

        let (resumed, outcome) = run_to_end(&store, Some(&master()), &events, 97).await;
        assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(split as u64) }, "split {split}");
        resumed.read(|p| assert_same(p, &clean, &format!("resumed at {split}")));
        drop(resumed);

        // What is on disk reproduces the state too (the conversion, not just the digest).
        let (store, outcome) = ProjectionStore::open(&store).expect("reopen");
        assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(events.len() as u64) });
        assert_eq!(store.stored_digest().expect("stored digest"), clean.digest());
        let loaded = store.load(Some(&master()), Some(engine_public())).expect("load");
        assert_same(&loaded, &clean, &format!("loaded after {split}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_store_rebuilds_from_sequence_1() {
    let events = generate(2, 3_000, SEAL_EVERY_USAGES);
    let clean = rebuild(&events, keyed());
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    let (live, _) = run_to_end(&store, Some(&master()), &events, 256).await;
    drop(live);
    std::fs::remove_dir_all(&store).expect("delete the store");
    let (live, outcome) = run_to_end(&store, Some(&master()), &events, 256).await;
    assert_eq!(outcome, OpenOutcome::Created);
    live.read(|p| assert_same(p, &clean, "rebuilt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_master_key_the_chain_needs_a0_and_a_later_keyed_open_rebuilds() {
    let events = generate(3, 3_000, SEAL_EVERY_USAGES);
    let clean = rebuild(&events, keyed());
    let keyless_clean = rebuild(&events, Projections::default());
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");

    // A store built without the key: totals, no chain, and it says so.
    let (live, _) = run_to_end(&store, None, &events[..1_500], 128).await;
    drop(live);
    let (live, outcome) = run_to_end(&store, None, &events, 128).await;
    assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(1_500) });
    live.read(|p| {
        assert_same(p, &keyless_clean, "keyless resume");
        assert!(matches!(p.unsigned_seal(1), Err(SealError::NoMasterKey)), "the chain needs A_0");
        assert_eq!(p.royalty.totals, clean.royalty.totals, "totals do not need the key");
    });
    drop(live);

    // With the key now, the chain must start at sequence 1: quarantine and rebuild.
    let (live, outcome) = run_to_end(&store, Some(&master()), &events, 128).await;
    let OpenOutcome::Quarantined { path, reason } = outcome else { panic!("expected a rebuild, got {outcome:?}") };
    assert!(reason.contains("master key"), "{reason}");
    assert!(path.exists(), "the old store is kept for examination");
    live.read(|p| assert_same(p, &clean, "keyed rebuild"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_store_opened_without_the_key_chains_on_from_its_chain_key_and_without_that_stops() {
    let more = generate(4, 4_000, SEAL_EVERY_USAGES);
    let events = &more[..3_000];
    let clean = rebuild(events, keyed());
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    let (live, _) = run_to_end(&store, Some(&master()), &events[..1_000], 128).await;
    drop(live);
    // Forward security: the store keeps the chain's position, so the engine chains on
    // without the master key, exactly as with it.
    let (live, outcome) = run_to_end(&store, None, &events[..2_000], 128).await;
    assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(1_000) });
    live.read(|p| assert!(p.royalty.chained() && p.unsigned_seal(1).is_ok(), "chained from the chain key"));
    drop(live);
    let (live, _) = run_to_end(&store, None, events, 128).await;
    live.read(|p| assert_same(p, &clean, "chained on from the chain key"));
    drop(live);

    // The control: without the chain key and without the master key the chain stops.
    projections::store::chain_key::wipe(&projections::store::chain_key::path_in(&store)).expect("wipe the chain key");
    let clean = rebuild(&more, keyed());
    let (live, outcome) = run_to_end(&store, None, &more[..3_500], 128).await;
    assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(3_000) });
    live.read(|p| assert!(matches!(p.unsigned_seal(1), Err(SealError::NoMasterKey)), "the chain needs A_0"));
    drop(live);
    let (live, outcome) = run_to_end(&store, Some(&master()), &more, 128).await;
    assert!(matches!(outcome, OpenOutcome::Quarantined { .. }), "entries 3000..3500 were never chained: rebuild, got {outcome:?}");
    live.read(|p| assert_same(p, &clean, "keyed rebuild"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_master_key_is_refused_and_the_store_left_alone() {
    let events = generate(5, 2_000, SEAL_EVERY_USAGES);
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    let (live, _) = run_to_end(&store, Some(&master()), &events, 128).await;
    assert!(live.read(|p| !p.royalty.entries.is_empty()), "there is a chain to check the key against");
    drop(live);
    let other = SecretKey::from_bytes([8; 32]);
    match Live::open(&store, Some(&other), Some(engine_public())) {
        Err(StoreError::MasterKeyMismatch { .. }) => {}
        Err(other) => panic!("expected MasterKeyMismatch, got {other}"),
        Ok((_, outcome)) => panic!("a different master key was accepted ({outcome:?})"),
    }
    // Negative control: the right key resumes the same store.
    let (_live, outcome) = Live::open(&store, Some(&master()), Some(engine_public())).expect("the right key");
    assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(events.len() as u64) });
}

/// Loads a store built from `events`, applies `batch` and commits it: the keys written.
fn commit_batch(dir: &Path, history: &[StoredEvent], batch: &[StoredEvent]) -> usize {
    let (store, _) = ProjectionStore::open(dir).expect("open");
    let mut projections = store.load(Some(&master()), Some(engine_public())).expect("load");
    for event in history {
        projections.apply(event).expect("apply");
    }
    store.commit(&mut projections).expect("commit the history");
    for event in batch {
        projections.apply(event).expect("apply");
    }
    store.commit(&mut projections).expect("commit the batch").keys_written
}

/// Hand-made stream: `vouchers` reservations, then one Authorized per voucher in `authorize`.
fn reservations(vouchers: usize, authorize: usize) -> (Vec<StoredEvent>, Vec<StoredEvent>) {
    use engine::domain::event::{Event, Payment, ReservedItem};
    use engine::ids::{MediaId, MerchantId, VoucherId};
    let stored = |seq: usize, event: Event| {
        let recorded = engine::domain::Recorded {
            event_id: [0; 16],
            aggregate: event.aggregate(),
            aggregate_version: 1,
            recorded_at: Millis(1),
            request_id: format!("r{seq}"),
            actor: engine::domain::Actor::engine(),
            command: "Test".into(),
            event,
        };
        StoredEvent { seq: Seq(seq as u64), subject: recorded.aggregate.subject(), payload: engine::wire::encode(&recorded).into() }
    };
    let history = (1..=vouchers)
        .map(|n| {
            stored(
                n,
                Event::Reserved {
                    voucher_id: VoucherId::new(format!("v{n}")),
                    merchant_id: MerchantId::new("m"),
                    items: vec![ReservedItem { media_id: MediaId::new("md"), price_minor: 1 }],
                    rendition: "high".into(),
                    price_minor: 1,
                    currency: "EUR".into(),
                    expires_at: Millis(1_000),
                    payment: Payment::Merchant { payment_ref: "p".into() },
                    token_key_id: 1,
                    auth_generation: 1,
                    rental_ms: 0,
                },
            )
        })
        .collect();
    let batch = (1..=authorize)
        .map(|n| {
            stored(
                vouchers + n,
                Event::Authorized {
                    voucher_id: VoucherId::new(format!("v{n}")),
                    receipt_key_id: 1,
                    receipt_generation: 1,
                    postings: vec![],
                    rental_until: engine::ids::Millis(0),
                },
            )
        })
        .collect();
    (history, batch)
}

#[test]
fn a_batch_writes_what_it_changed_not_the_whole_state() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut written = Vec::new();
    for vouchers in [100, 10_000] {
        let (history, batch) = reservations(vouchers, 1);
        written.push(commit_batch(&dir.path().join(format!("small-{vouchers}")), &history, &batch));
    }
    // The voucher row, the row of the batch's stream heads and the checkpoint.
    assert_eq!(written, vec![3, 3], "one voucher changed: the same few keys whatever the state's size");
    // Negative control: the count does grow with what the batch changes.
    let (history, batch) = reservations(10_000, 500);
    let grown = commit_batch(&dir.path().join("large"), &history, &batch);
    assert!(grown > 500 + 1, "500 changed vouchers, their stream heads (one row) and the checkpoint, wrote {grown}");
}

/// The stream heads since the last seal are stored many to a row (format 3): with rare
/// seals they span several rows, a seal trims the row its position falls
/// in and removes the rows before it, and a reopened store resumes as a clean rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_heads_are_stored_many_to_a_row() {
    let events = generate(8, 10_000, 900);
    let clean = rebuild(&events, keyed());
    let sealed_at = clean.royalty.seals.last().expect("the stream carries a seal").last_stream_seq;
    let heads = events.len() as u64 - sealed_at + 1;
    assert!(heads > 2 * 1_024, "the heads since the last seal span several rows: {heads}");
    for (split, batch_events_max) in [(1_500, 5_000), (7_100, 700), (9_999, 10_000)] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("projections");
        drop(run_to_end(&store, Some(&master()), &events[..split], batch_events_max).await);
        let (resumed, outcome) = run_to_end(&store, Some(&master()), &events, batch_events_max).await;
        assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(split as u64) });
        resumed.read(|p| assert_same(p, &clean, &format!("resumed at {split}")));
        drop(resumed);
        let mut rows = 0;
        damage(&store, |db| rows = db.scan_prefix(b"sh/").count());
        // One row per commit (of up to 1,024 heads each), not one per event: `Live` commits
        // whatever batch the follower had ready, dozens of events at least from a `VecLog`.
        assert!(rows >= 2 && rows as u64 * 8 <= heads, "{heads} heads in {rows} rows, split {split}");
        let (store, outcome) = ProjectionStore::open(&store).expect("reopen");
        assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(events.len() as u64) });
        assert_eq!(store.stored_digest().expect("stored digest"), clean.digest());
    }
}

/// Damages a closed store's sled database directly (waiting, as `open` does, for sled's
/// background threads to release the lock of the handle just dropped).
fn damage(dir: &Path, harm: impl FnOnce(&sled::Db)) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(error) if std::time::Instant::now() < deadline && error.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(error) => panic!("raw open: {error}"),
        }
    };
    harm(&db);
    db.flush().expect("raw flush");
}

/// Builds a store from `events`, damages it, reopens, checks that the reopened store then
/// matches a clean rebuild and that a quarantined store was kept; returns the outcome.
async fn damaged_then_reopened(events: &[StoredEvent], harm: impl FnOnce(&sled::Db)) -> OpenOutcome {
    let clean = rebuild(events, keyed());
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    drop(run_to_end(&store, Some(&master()), events, 128).await);
    damage(&store, harm);
    let (live, outcome) = run_to_end(&store, Some(&master()), events, 128).await;
    live.read(|p| assert_same(p, &clean, "after reopening a damaged store"));
    if let OpenOutcome::Quarantined { path, .. } = &outcome {
        assert!(path.exists() && path.starts_with(dir.path()), "the damaged store is kept beside it, at {}", path.display());
    }
    outcome
}

fn first_key_with_prefix(db: &sled::Db, prefix: &[u8]) -> sled::IVec {
    db.scan_prefix(prefix).next().expect("a key with the prefix").expect("read").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_stores_are_quarantined_and_rebuilt() {
    let events = generate(6, 1_500, SEAL_EVERY_USAGES);
    // Negative control: an undamaged store resumes.
    let untouched = damaged_then_reopened(&events, |_| {}).await;
    assert_eq!(untouched, OpenOutcome::Resumed { checkpoint: Seq(events.len() as u64) });

    let flip_last_byte = |prefix: &'static [u8]| {
        move |db: &sled::Db| {
            let key = first_key_with_prefix(db, prefix);
            let mut value = db.get(&key).expect("get").expect("value").to_vec();
            let last = value.len() - 1;
            value[last] ^= 0x01;
            db.insert(key, value).expect("insert");
        }
    };
    type Harm = Box<dyn FnOnce(&sled::Db)>;
    let cases: Vec<(&str, Harm)> = vec![
        ("a flipped byte in a voucher row", Box::new(flip_last_byte(b"vr/"))),
        ("a flipped byte in a royalty entry", Box::new(flip_last_byte(b"re/"))),
        ("a flipped byte in a stream head", Box::new(flip_last_byte(b"sh/"))),
        (
            "a value that does not decode",
            Box::new(|db: &sled::Db| {
                let key = first_key_with_prefix(db, b"an/");
                db.insert(key, &b"not a node"[..]).expect("insert");
            }),
        ),
        (
            "a lost row",
            Box::new(|db: &sled::Db| {
                let key = first_key_with_prefix(db, b"rt/");
                db.remove(key).expect("remove");
            }),
        ),
        (
            "a left-over row",
            Box::new(|db: &sled::Db| {
                db.insert(&b"ar/ghost"[..], &b""[..]).expect("insert");
            }),
        ),
        (
            "a flipped byte in the checkpoint",
            Box::new(|db: &sled::Db| {
                let mut value = db.get(b"@checkpoint").expect("get").expect("checkpoint").to_vec();
                let middle = value.len() / 2;
                value[middle] ^= 0x20;
                db.insert(b"@checkpoint", value).expect("insert");
            }),
        ),
        (
            "a wrong format marker",
            Box::new(|db: &sled::Db| {
                db.insert(b"@format", &b"vouchsafe-projection-store/0"[..]).expect("insert");
            }),
        ),
        (
            "a missing format marker",
            Box::new(|db: &sled::Db| {
                db.remove(b"@format").expect("remove");
            }),
        ),
    ];
    for (what, harm) in cases {
        let outcome = damaged_then_reopened(&events, harm).await;
        match outcome {
            OpenOutcome::Quarantined { reason, .. } => eprintln!("{what}: quarantined ({reason})"),
            other => panic!("{what}: expected quarantine, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_sled_cannot_open_is_quarantined_not_a_panic() {
    let events = generate(7, 500, SEAL_EVERY_USAGES);
    let clean = rebuild(&events, keyed());
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    drop(run_to_end(&store, Some(&master()), &events, 128).await);
    // Overwrite sled's own files with garbage.
    for entry in std::fs::read_dir(&store).expect("list the store") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::write(&path, vec![0xA5; 4096]).expect("garble");
        }
    }
    let (live, outcome) = run_to_end(&store, Some(&master()), &events, 128).await;
    assert!(matches!(outcome, OpenOutcome::Quarantined { .. }), "got {outcome:?}");
    live.read(|p| assert_same(p, &clean, "rebuilt"));
}

#[tokio::test]
async fn an_event_log_directory_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log_dir = dir.path().join("log");
    {
        let log = engine::log::embedded::EmbeddedLog::open(&log_dir).expect("open the log");
        let request = engine::log::AppendRequest {
            subject: "vs.test.a".into(),
            expected: engine::log::Expected::Any,
            idempotency_key: "k".into(),
            payload: bytes::Bytes::from_static(b"x"),
        };
        engine::log::EventLog::append(&log, request).await.expect("append").expect("no conflict");
    }
    match ProjectionStore::open(&log_dir) {
        Err(StoreError::Foreign { .. }) => {}
        Err(other) => panic!("expected Foreign, got {other}"),
        Ok((_, outcome)) => panic!("the event log was opened as a projection store ({outcome:?})"),
    }
    assert!(log_dir.exists());
    let log = engine::log::embedded::EmbeddedLog::open(&log_dir).expect("the log still opens");
    assert_eq!(engine::log::EventLog::last_seq(&log).await.expect("last seq"), Seq(1));
}

#[test]
fn a_store_in_use_is_refused_not_quarantined() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    let (_first, outcome) = ProjectionStore::open(&store).expect("first open");
    assert_eq!(outcome, OpenOutcome::Created);
    match ProjectionStore::open(&store) {
        Err(StoreError::Unavailable { .. }) => {}
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok((_, outcome)) => panic!("a store in use was opened twice ({outcome:?})"),
    }
    let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("list").filter_map(Result::ok).map(|entry| entry.file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("projections")], "nothing was quarantined");
}

#[test]
fn projections_not_loaded_from_the_store_are_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (store, _) = ProjectionStore::open(dir.path()).expect("open");
    let mut projections = keyed();
    assert!(matches!(store.commit(&mut projections), Err(projections::store::CommitError::NotTracked)));
}

/// A keyless engine (forward security) whose log went back under it cannot rebuild its
/// royalty chain from sequence 1: `rebuild` refuses, naming the auditor's handover, rather
/// than carrying on without usage records. Control: with the master key it rebuilds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_store_refuses_a_rebuild_from_sequence_1_and_names_the_handover() {
    let events = generate(6, 1_500, SEAL_EVERY_USAGES);
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    drop(run_to_end(&store, Some(&master()), &events, 128).await);
    let (live, _) = run_to_end(&store, None, &events, 128).await;
    assert!(live.read(|p| p.royalty.chained()), "chained from the chain key");
    match live.rebuild(&VecLog::new(events.clone())).await {
        Err(projections::RunError::Diverged(reason)) => assert!(reason.contains("audit handover"), "{reason}"),
        other => panic!("a keyless rebuild must be refused, got {:?}", other.map(|seq| seq.0)),
    }
    assert!(live.read(|p| p.royalty.chained()), "the projections it had are kept");
    drop(live);
    let (live, _) = Live::open(&store, Some(&master()), Some(engine_public())).expect("open with the master key");
    assert_eq!(live.rebuild(&VecLog::new(events.clone())).await.expect("the master key rebuilds"), Seq(events.len() as u64));
}
