//! The store's own tests, from inside: every kind of row round-trips through a commit and
//! a reopen, the stored bytes are exactly format 16's, the chain key resumes a chain, and a checkpoint or a row that does
//! not describe the state sends the store to quarantine. (The public API is tested in
//! `tests/store*.rs`.)

use super::checkpoint::{CheckpointRecord, decode_checkpoint, encode_checkpoint, pair_hash, xor_into};
use super::*;
use crate::allocation::format::{NODE_PREFIX, NodeRecord};
use crate::balances::format::{LEDGER_PREFIX, LedgerRecord, POINTS_PREFIX};
use crate::rows::{PREFIX_BYTES, key};
use crate::royalty::ChainedEntry;
use engine::crypto::test_keys;
use engine::domain::event::{Event, MediaPublished, Payment, PreviewClip, ReservedItem, RoyaltyTerms};
use engine::domain::{Actor, Recorded};
use engine::ids::{AccountId, MediaId, MerchantId, Millis, NodeId, PreviewId, Seq, VoucherId};
use engine::log::StoredEvent;
use std::collections::BTreeSet;

fn master() -> SecretKey {
    SecretKey::from_bytes([3; 32])
}

fn stored(seq: u64, event: Event) -> StoredEvent {
    let recorded = Recorded {
        event_id: [seq as u8; 16],
        aggregate: event.aggregate(),
        aggregate_version: 1,
        recorded_at: Millis(1_767_225_600_000 + seq as i64 * 40 * 86_400_000),
        request_id: format!("r{seq}"),
        actor: Actor::engine(),
        command: "Test".into(),
        event,
    };
    StoredEvent { seq: Seq(seq), subject: recorded.aggregate.subject(), payload: engine::wire::encode(&recorded).into() }
}

/// One of every kind of stored row: a scripted stream through the whole lifecycle, with
/// points holds, settlement postings (points and merchant-paid, one refunded), a
/// drained node, a preview and a signed seal.
fn script() -> Vec<Event> {
    use engine::domain::event::LedgerAccountKind;
    use engine::domain::settlement::{Payer, SaleLine, settle};
    let voucher = |n: u32| VoucherId::new(format!("v{n}"));
    let split =
        RoyaltyTerms { retailer_bps: 3000, distributor_bps: 2000, owner_bps: 5000, distributor: "d".into(), owner: "o".into(), rights_agent: "agent".into() };
    let postings = |kind: LedgerAccountKind, payer: &str, merchant: &str| {
        settle(&Payer { kind, account: payer.into() }, merchant, &[SaleLine { price_minor: 250, terms: &split }])
    };
    let node = NodeId::new("n1");
    let media = MediaId::new("md1");
    let reserved = |n: u32, account: Option<&str>| Event::Reserved {
        voucher_id: voucher(n),
        merchant_id: MerchantId::new(format!("m{}", n % 2)),
        items: vec![ReservedItem { media_id: media.clone(), price_minor: 250 }],
        rendition: "high".into(),
        price_minor: 250,
        currency: "EUR".into(),
        expires_at: Millis(2_000_000_000_000 + i64::from(n)),
        payment: account.map_or(Payment::Merchant { payment_ref: "card".into() }, |account| Payment::Points { account: AccountId::new(account) }),
        token_key_id: 1,
        auth_generation: 1,
        rental_ms: 0,
    };
    let delivered = |n: u32| Event::Delivered {
        voucher_id: voucher(n),
        node_id: node.clone(),
        media_id: media.clone(),
        cert_serial: engine::ids::CertSerial::new("c1"),
        content_hash: [4; 32],
        size_bytes: 10,
        voucher_complete: true,
    };
    vec![
        // Entries bind their stream sequence from here on: a store must remember it.
        Event::ConfigChanged { key: engine::domain::config::ROYALTY_ENTRY_BINDING_KEY.into(), value: "1".into() },
        Event::NodeRegistered { node_id: node.clone(), region: "eu".into(), slots_max: 4, credential_hash: [1; 32] },
        Event::NodeRegistered { node_id: NodeId::new("n2"), region: "us".into(), slots_max: 2, credential_hash: [2; 32] },
        Event::SlotsLeased { node_id: node.clone(), lease: 1, holder: "e1".into(), slots: 3, until: Millis(100) },
        Event::SlotsWanted { node_id: node.clone(), holder: "e2".into(), until: Millis(90) },
        Event::MediaPublished(MediaPublished {
            media_id: media.clone(),
            publisher: "p".into(),
            title: "Song".into(),
            artist: "Artist".into(),
            authors: vec!["A".into(), "B".into()],
            length_ms: 1_000,
            price_minor: 250,
            currency: "EUR".into(),
            terms: RoyaltyTerms { retailer_bps: 1, distributor_bps: 2, owner_bps: 3, distributor: "d".into(), owner: "o".into(), rights_agent: "agent".into() },
            renditions: vec![],
            preview: PreviewClip::default(),
            image_descriptor: "cover".into(),
            for_sale: true,
            engine_key_id: String::new(),
            wrapped_media_key: vec![],
            container_format: 0,
        }),
        Event::PointsCredited { account_id: AccountId::new("a1"), amount: 1_000, reason: "top-up".into(), sale: None },
        Event::OrderPlaced {
            order_id: engine::ids::OrderId::new("o1"),
            merchant_id: MerchantId::new("m1"),
            media_id: media.clone(),
            units: 2,
            price_per_unit_minor: 40,
            settles_by: None,
        },
        Event::PointsHeld { account_id: AccountId::new("a1"), voucher_id: voucher(1), amount: 250, expires_at: Millis(5), nonce_hash: None },
        reserved(1, Some("a1")),
        reserved(2, None),
        reserved(3, None),
        Event::PointsHeld { account_id: AccountId::new("a1"), voucher_id: voucher(4), amount: 250, expires_at: Millis(6), nonce_hash: None },
        Event::Authorized {
            voucher_id: voucher(1),
            receipt_key_id: 1,
            receipt_generation: 1,
            postings: postings(LedgerAccountKind::ConsumerPoints, "a1", "m1"),
            rental_until: engine::ids::Millis(0),
        },
        Event::HoldPosted { account_id: AccountId::new("a1"), voucher_id: voucher(1), amount: 250 },
        Event::VoucherIssued {
            voucher_id: voucher(1),
            node_id: node.clone(),
            merchant_id: MerchantId::new("m1"),
            media_ids: vec![media.clone()],
            rendition: "high".into(),
            access_expires_at: Millis(9),
            previous_node: None,
            lease: 0,
        },
        Event::Authorized {
            voucher_id: voucher(2),
            receipt_key_id: 1,
            receipt_generation: 1,
            postings: postings(LedgerAccountKind::MerchantClearing, "m0", "m0"),
            rental_until: engine::ids::Millis(0),
        },
        Event::VoucherIssued {
            voucher_id: voucher(2),
            node_id: node.clone(),
            merchant_id: MerchantId::new("m0"),
            media_ids: vec![media.clone()],
            rendition: "high".into(),
            access_expires_at: Millis(9),
            previous_node: None,
            lease: 1,
        },
        delivered(1),
        Event::PreviewStarted {
            preview_id: PreviewId::new("p1"),
            media_id: media.clone(),
            node_id: NodeId::new("n2"),
            merchant_id: MerchantId::new("m0"),
            clip_ms: 10,
            lapses_at: Millis(60_010),
            lease: 0,
        },
        Event::PreviewStarted {
            preview_id: PreviewId::new("p2"),
            media_id: media.clone(),
            node_id: NodeId::new("n2"),
            merchant_id: MerchantId::new("m1"),
            clip_ms: 10,
            lapses_at: Millis(60_020),
            lease: 0,
        },
        Event::PreviewEnded { preview_id: PreviewId::new("p1"), played_ms: 7, media_id: media.clone(), node_id: NodeId::new("n2") },
        Event::NodeDrained { node_id: NodeId::new("n2") },
        Event::Voided { voucher_id: voucher(3), reason: engine::domain::event::VoidReason::TimedOut, reversal: vec![] },
        reserved(5, None),
        Event::Authorized {
            voucher_id: voucher(5),
            receipt_key_id: 1,
            receipt_generation: 1,
            postings: postings(LedgerAccountKind::MerchantClearing, "m1", "m1"),
            rental_until: engine::ids::Millis(0),
        },
        Event::Voided {
            voucher_id: voucher(5),
            reason: engine::domain::event::VoidReason::Refunded,
            reversal: engine::domain::voucher::reverse(&postings(LedgerAccountKind::MerchantClearing, "m1", "m1")),
        },
        // A publisher account: a party row with its credential (format 12).
        Event::PublisherRegistered { publisher_id: engine::ids::PublisherId::new("pu1"), name: "Label".into(), credential_hash: [9; 32], terms: split.clone() },
        Event::PublisherKeyAdded { publisher_id: engine::ids::PublisherId::new("pu1"), key_id: "k1".into(), public_key_der: vec![0x30, 1] },
    ]
}

fn keyed() -> Projections {
    Projections::with_royalty_keys(&master(), Some(test_keys::fixed_rsa().public()))
}

/// The store in `dir`, opened, and its projections loaded with the master key and the
/// engine's public key.
fn keyed_store(dir: &std::path::Path) -> (ProjectionStore, Projections) {
    let (store, _) = ProjectionStore::open(dir).expect("open");
    let projections = store.load(Some(&master()), Some(test_keys::fixed_rsa().public())).expect("load");
    (store, projections)
}

/// Applies `events` to `projections` (and, when `seal`, a signed seal of the entries
/// not sealed yet); returns the stored events, for applying elsewhere byte for byte
/// (a seal's signature is randomized).
fn checkpoint_key() -> engine::note::NoteSigner {
    engine::note::NoteSigner::new("vouchsafe.test/royalty", engine::crypto::Ed25519Private::from_seed(&[9; 32])).expect("a valid key name")
}

fn apply_all(projections: &mut Projections, events: Vec<Event>, seal: bool) -> Vec<StoredEvent> {
    let mut applied = Vec::new();
    for event in events {
        applied.push(stored(projections.last_seq.0 + 1, event));
        projections.apply(applied.last().expect("just pushed")).expect("apply");
    }
    if seal {
        let mut seal = projections.unsigned_seal(1).expect("chained").expect("entries to seal");
        // With a checkpoint, so that the stored seals carry one through every round trip.
        engine::seal::sign_seal_with(&test_keys::fixed_rsa(), Some(&checkpoint_key()), &mut seal).expect("sign");
        applied.push(stored(projections.last_seq.0 + 1, Event::RightsReportSealed(seal)));
        projections.apply(applied.last().expect("just pushed")).expect("apply the seal");
    }
    applied
}

fn apply_stored(projections: &mut Projections, events: &[StoredEvent]) {
    for event in events {
        projections.apply(event).expect("apply");
    }
}

#[track_caller]
fn assert_identical(loaded: &Projections, memory: &Projections) {
    assert_eq!((loaded.last_seq, loaded.events, loaded.stream_head), (memory.last_seq, memory.events, memory.stream_head));
    assert_eq!(loaded.stream_heads, memory.stream_heads);
    assert_eq!(loaded.vouchers, memory.vouchers);
    assert_eq!(loaded.allocation, memory.allocation);
    assert_eq!(loaded.balances, memory.balances);
    assert_eq!(loaded.stream_head_before, memory.stream_head_before);
    assert_eq!(loaded.reads, memory.reads);
    let (l, m) = (&loaded.royalty, &memory.royalty);
    assert_eq!(l.catalog, m.catalog);
    assert_eq!(l.sales, m.sales);
    assert_eq!(l.previews, m.previews);
    assert_eq!(l.entries, m.entries, "each entry with its commitment, source sequence and usage digest");
    assert_eq!(l.tree, m.tree, "the tree rebuilt from the stored leaves");
    assert_eq!((l.usages, &l.totals), (m.usages, &m.totals));
    assert_eq!((&l.seals, &l.seal_times, l.seals_verified, &l.seal_faults), (&m.seals, &m.seal_times, m.seals_verified, &m.seal_faults));
    assert_eq!(l.chain.as_ref().map(|c| (c.epoch(), c.next_index(), c.head_y())), m.chain.as_ref().map(|c| (c.epoch(), c.next_index(), c.head_y())));
    assert_eq!(loaded.digest(), memory.digest());
}

/// A store built with the master key, committed at the end of `script()` (entries and a
/// seal), and the projections that built it.
fn committed_with_master(dir: &std::path::Path) -> Projections {
    let mut memory = keyed();
    let (store, mut projections) = keyed_store(dir);
    apply_stored(&mut projections, &apply_all(&mut memory, script(), true));
    store.commit(&mut projections).expect("commit");
    assert!(memory.royalty.entries.len() >= 2, "the script records usages");
    memory
}

fn another_usage(memory: &mut Projections) -> Vec<StoredEvent> {
    apply_all(
        memory,
        vec![Event::PreviewEnded { preview_id: PreviewId::new("p2"), played_ms: 3, media_id: MediaId::new("md1"), node_id: NodeId::new("n2") }],
        false,
    )
}

/// Forward security: the engine keeps the chain's current position, not the master key,
/// and chains on from it after a restart exactly as an uninterrupted chain would.
#[test]
fn a_store_chains_on_from_its_chain_key_without_the_master_key() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut memory = committed_with_master(dir.path());
    let key = chain_key::read(&chain_key::path_in(dir.path())).expect("read").expect("the commit wrote the chain key");
    let position = memory.royalty.chain.as_ref().expect("chained").position();
    assert_eq!((key.next_index, key.y_prev), (position.next_index, position.y_prev));
    assert!(key.a.ct_eq(&position.a), "the file holds the current A_j");
    let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
    let mut loaded = store.load(None, Some(test_keys::fixed_rsa().public())).expect("load without the master key");
    assert!(loaded.royalty.chained(), "chained from the chain key");
    assert_identical(&loaded, &memory);
    apply_stored(&mut loaded, &another_usage(&mut memory));
    assert_identical(&loaded, &memory);
    store.commit(&mut loaded).expect("commit");
    let moved = chain_key::read(&chain_key::path_in(dir.path())).expect("read").expect("a chain key");
    assert_eq!(moved.next_index, position.next_index + 1, "the commit moved the chain key with the new entry");

    // The control: without the chain key (and without the master key) nothing chains.
    chain_key::wipe(&chain_key::path_in(dir.path())).expect("wipe");
    drop((store, loaded));
    let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
    assert!(!store.load(None, None).expect("load").royalty.chained(), "no key, no chain: the royalty chain needs A_0");
}

/// A crash after the entries were stored and before the chain key was: the key lags the
/// store and is advanced over the stored entries (their MACs checked). A key ahead of the
/// store, or one from another chain, is refused: A cannot go back.
#[test]
fn a_chain_key_behind_the_store_is_advanced_and_one_ahead_or_foreign_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut memory = committed_with_master(dir.path());
    let path = chain_key::path_in(dir.path());
    let behind = std::fs::read(&path).expect("the chain key");
    {
        let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
        let mut loaded = store.load(None, None).expect("load");
        apply_stored(&mut loaded, &another_usage(&mut memory));
        store.commit(&mut loaded).expect("commit");
    }
    let ahead = std::fs::read(&path).expect("the chain key");
    std::fs::write(&path, &behind).expect("as a crash before the key was written leaves it");
    let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
    let loaded = store.load(None, Some(test_keys::fixed_rsa().public())).expect("a lagging chain key is advanced");
    assert_identical(&loaded, &memory);
    drop((store, loaded));

    // Ahead: the store of a moment ago (one entry fewer) with the newer key.
    let older = tempfile::tempdir().expect("temporary directory");
    committed_with_master(older.path());
    std::fs::write(chain_key::path_in(older.path()), &ahead).expect("the newer key");
    let (store, _) = ProjectionStore::open(older.path()).expect("open");
    match store.load(None, None) {
        Err(LoadError::ChainKey(reason)) => assert!(reason.contains("cannot go back"), "{reason}"),
        other => panic!("a key ahead of the store must be refused, got {:?}", other.map(|p| p.last_seq)),
    }
    // With the master key the chain is re-derived and the key file is not needed.
    assert!(store.load(Some(&master()), None).expect("the master key resumes").royalty.chained());
    drop(store);

    // Foreign: the chain key of another master key's chain.
    let foreign = tempfile::tempdir().expect("temporary directory");
    let mut chain = crate::royalty::Chain::start(&SecretKey::from_bytes([8; 32]), crate::royalty_log::EPOCH);
    chain.append_encoded(b"someone else's entry");
    chain_key::write(&chain_key::path_in(foreign.path()), &chain.position()).expect("write");
    std::fs::copy(chain_key::path_in(foreign.path()), &path).expect("swap the key in");
    let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
    match store.load(None, None) {
        Err(LoadError::ChainKey(reason)) => assert!(reason.contains("does not"), "{reason}"),
        other => panic!("another chain's key must be refused, got {:?}", other.map(|p| p.last_seq)),
    }
}

#[test]
fn a_quarantined_store_keeps_no_chain_key() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store_dir = dir.path().join("projections");
    committed_with_master(&store_dir);
    assert!(chain_key::path_in(&store_dir).exists());
    let (store, _) = ProjectionStore::open(&store_dir).expect("reopen");
    let (_, outcome) = store.quarantine("a test").expect("quarantine");
    let OpenOutcome::Quarantined { path, .. } = outcome else { panic!("quarantined: {outcome:?}") };
    assert!(path.exists() && !chain_key::path_in(&path).exists(), "the store moved aside without its chain key");
}

#[test]
fn every_kind_of_row_round_trips() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut memory = keyed();
    {
        let (store, outcome) = ProjectionStore::open(dir.path()).expect("open");
        assert_eq!(outcome, OpenOutcome::Created);
        let mut projections = store.load(Some(&master()), Some(test_keys::fixed_rsa().public())).expect("load");
        // Two commits: the second rewrites and removes rows the first wrote.
        let events = script();
        let (first, second) = events.split_at(12);
        apply_stored(&mut projections, &apply_all(&mut memory, first.to_vec(), false));
        store.commit(&mut projections).expect("commit");
        apply_stored(&mut projections, &apply_all(&mut memory, second.to_vec(), true));
        let committed = store.commit(&mut projections).expect("commit");
        assert!(committed.keys_removed > 0, "holds, slots and stream heads were removed");
        assert!(projections.royalty.sales.is_stored() && projections.royalty.sales.resident() == 0, "committed sales leave memory");
        assert_identical(&projections, &memory);
    }
    assert_eq!(memory.royalty.seals_verified, 1);
    assert_eq!(memory.balances.sum(), Some(0));
    assert!(memory.balances.ledger.len() >= 6 && !memory.balances.points.is_empty(), "ledger and points rows: {:?}", memory.balances);
    assert!(memory.vouchers.holds.len() == 1 && memory.allocation.released.len() == 1, "a hold and a released slot remain");
    let (store, outcome) = ProjectionStore::open(dir.path()).expect("reopen");
    assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: memory.last_seq });
    let loaded = store.load(Some(&master()), Some(test_keys::fixed_rsa().public())).expect("load");
    assert_identical(&loaded, &memory);
    // Resumed, the chain continues exactly as the uninterrupted one.
    let (mut loaded, mut memory) = (loaded, memory);
    let more = vec![Event::PreviewEnded { preview_id: PreviewId::new("p2"), played_ms: 3, media_id: MediaId::new("md1"), node_id: NodeId::new("n2") }];
    apply_stored(&mut loaded, &apply_all(&mut memory, more, true));
    assert_identical(&loaded, &memory);
    assert_eq!(memory.royalty.seals_verified, 2);
}

/// Issue 26 (memory): in a store, a committed royalty entry leaves memory and is read back
/// from its `re/` row; of the entries since the last seal what a seal needs (`SealPart`)
/// stays, so a seal is built and checked without a sled read. The control: an `re/` row
/// altered under the loaded projections is what they read (the entry no longer reads, and
/// the next commit fails with it), so the entries really came from sled.
#[test]
fn sealed_entries_leave_memory_and_are_read_back_from_the_store() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut memory = keyed();
    let (store, mut loaded) = keyed_store(dir.path());
    apply_stored(&mut loaded, &apply_all(&mut memory, script(), true));
    assert_eq!(loaded.royalty.entries.resident(), loaded.royalty.entries.len(), "uncommitted entries are in memory");
    store.commit(&mut loaded).expect("commit");
    let sealed = loaded.royalty.entries.len();
    assert!(sealed >= 2, "the script records usages");
    assert_eq!(loaded.royalty.entries.resident(), 0, "committed: out of memory");
    assert_eq!(loaded.royalty.entries.seal_parts_held(), 0, "sealed: nothing kept for a seal");
    assert_eq!(memory.royalty.entries.resident(), sealed, "in memory (a replay) every entry stays");
    assert_identical(&loaded, &memory);
    assert_eq!(loaded.royalty.entries.get(0).map(|e| e.into_owned()), memory.royalty.entries.get(0).map(|e| e.into_owned()), "read back from sled");

    // A new entry, committed but not sealed, stays; the seal built from it is the same.
    apply_stored(&mut loaded, &another_usage(&mut memory));
    store.commit(&mut loaded).expect("commit");
    assert_eq!(loaded.royalty.entries.resident(), 0, "committed: out of memory");
    assert_eq!(loaded.royalty.entries.seal_parts_held(), 1, "not sealed yet: what a seal needs of it stays");
    let unsigned = |p: &Projections| p.unsigned_seal(1).expect("chained").expect("an entry to seal");
    assert_eq!(unsigned(&loaded), unsigned(&memory));
    assert_eq!(loaded.royalty.entries.range(0, sealed as u64 + 1), memory.royalty.entries.range(0, sealed as u64 + 1));
    drop((store, loaded));
    let (store, mut loaded) = keyed_store(dir.path());
    assert_eq!((loaded.royalty.entries.resident(), loaded.royalty.entries.seal_parts_held()), (0, 1), "reopened: only the unsealed entry's seal part");
    assert_identical(&loaded, &memory);

    // The newest entry's row altered: the seal is still built (from memory), the same.
    let newest = loaded.royalty.entries.len() as u64 - 1;
    store.db.insert(crate::rows::index_key(crate::royalty_log::format::ENTRY_PREFIX, newest), b"{}".to_vec()).expect("alter the row");
    assert_eq!(unsigned(&loaded), unsigned(&memory), "no sled read builds the seal");
    assert!(loaded.royalty.entries.get(newest).is_some(), "the newest entry is kept");

    // The control: alter entry 0's row under the loaded projections.
    store.db.insert(crate::rows::index_key(crate::royalty_log::format::ENTRY_PREFIX, 0), b"{}".to_vec()).expect("alter the row");
    assert!(loaded.royalty.entries.get(0).is_none(), "the altered row is what is read");
    assert_eq!(loaded.royalty.entries.get(1).map(|e| e.into_owned()), memory.royalty.entries.get(1).map(|e| e.into_owned()), "the others still read");
    apply_stored(&mut loaded, &another_usage(&mut memory));
    let failed = store.commit(&mut loaded).expect_err("the unreadable entry stops the store");
    assert!(format!("{failed:?}").contains("royalty entry"), "{failed:?}");
}

/// Issue 26 (memory): a rebuild in memory committed whole and then spilled (as
/// `Live::rebuild` does): its committed entries leave memory, what a seal needs of the one
/// not sealed stays, and the log reads, seals and commits on as the in-memory one.
#[test]
fn a_rebuild_committed_whole_spills_its_entries_to_the_store() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut reference = keyed();
    let mut rebuilt = keyed();
    rebuilt.track_changes();
    apply_stored(&mut rebuilt, &apply_all(&mut reference, script(), true));
    apply_stored(&mut rebuilt, &another_usage(&mut reference));
    let (store, _) = ProjectionStore::open(dir.path()).expect("open");
    let prepared = store.prepare(&mut rebuilt).expect("prepare");
    store.write(prepared).expect("write");
    assert_eq!(rebuilt.royalty.entries.resident(), rebuilt.royalty.entries.len(), "before the spill, in memory");
    store.spill(&mut rebuilt);
    let entries = &rebuilt.royalty.entries;
    assert_eq!((entries.resident(), entries.seal_parts_held()), (0, 1), "spilled: the unsealed entry's seal part only");
    assert_eq!(rebuilt.royalty.entries, reference.royalty.entries, "read back from sled");
    let unsigned = |p: &Projections| p.unsigned_seal(1).expect("chained").expect("an entry to seal");
    assert_eq!(unsigned(&rebuilt), unsigned(&reference));
    apply_stored(&mut rebuilt, &another_usage(&mut reference));
    store.commit(&mut rebuilt).expect("commit after the spill");
    assert_eq!((rebuilt.royalty.entries.resident(), rebuilt.royalty.entries.seal_parts_held()), (0, 2));
    assert_eq!(rebuilt.royalty.entries, reference.royalty.entries);
    assert_identical(&rebuilt, &reference);
}

/// The on-disk format, byte for byte: every key and value of a store that holds every
/// kind of row, from a stream that gives the same bytes on every run (fixed clock and
/// keys, the chain's fixed nonce, and a seal with a fixed signature, which does not
/// verify, so that a seal fault is stored too). A change of this digest is a change of
/// the format, which needs a new `FORMAT_MARKER` so that old stores are rebuilt rather
/// than misread.
#[test]
fn the_stored_bytes_are_those_of_format_16() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (store, mut projections) = keyed_store(dir.path());
    let events = script();
    let (first, second) = events.split_at(12);
    apply_all(&mut projections, first.to_vec(), false);
    store.commit(&mut projections).expect("commit");
    apply_all(&mut projections, second.to_vec(), false);
    let mut seal = projections.unsigned_seal(1).expect("chained").expect("entries to seal");
    seal.engine_key_id = "k1".into();
    seal.signature = vec![0x5a; 8];
    let checkpoint = seal.checkpoint.as_mut().expect("a draft has the tree's part");
    checkpoint.origin = "vouchsafe.test/royalty".into();
    checkpoint.signature = vec![0xa5; 68];
    apply_all(&mut projections, vec![Event::RightsReportSealed(seal)], false);
    store.commit(&mut projections).expect("commit");
    assert_eq!(projections.royalty.seal_faults.len(), 1, "the seal is stored with its fault");

    let mut hasher = engine::crypto::Hasher::new();
    let mut dump = String::new();
    let mut prefixes = BTreeSet::new();
    for pair in store.db.iter() {
        let (key, value) = pair.expect("read");
        for part in [&key, &value] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        prefixes.insert(String::from_utf8_lossy(&key[..PREFIX_BYTES.min(key.len())]).into_owned());
        dump.push_str(&format!("{} = {}\n", hex::encode(&key), String::from_utf8_lossy(&value).escape_debug()));
    }
    let expected = [
        "@ch", "@fo", "an/", "ap/", "ar/", "av/", "bl/", "bp/", "qc/", "qo/", "qp/", "qs/", "qv/", "rc/", "re/", "rf/", "rl/", "rp/", "rs/", "rt/", "sh/",
        "vh/", "vl/", "vr/",
    ];
    assert_eq!(prefixes, expected.into_iter().map(str::to_owned).collect(), "every kind of row is stored");
    assert_eq!(hex::encode(hasher.finalize()), "6969cfb45baf49cfc9fe4983e932f810d6aa3d78f1d941d08e1c632664f87672", "the stored bytes changed:\n{dump}");
}

#[test]
fn a_seal_trims_the_stored_row_of_stream_heads_it_falls_in() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut memory = keyed();
    {
        let (store, mut projections) = keyed_store(dir.path());
        apply_stored(&mut projections, &apply_all(&mut memory, script(), false));
        store.commit(&mut projections).expect("commit");
        // The seal names the last stored event: the one row keeps only its head.
        apply_stored(&mut projections, &apply_all(&mut memory, vec![], true));
        store.commit(&mut projections).expect("commit");
        assert_eq!(memory.stream_heads.len(), 2, "the sealed position's head and the seal's");
        assert_eq!(store.lock_writer().head_rows.iter().map(|(first, last)| last - first + 1).sum::<u64>(), 2);
    }
    let (_store, loaded) = keyed_store(dir.path());
    assert_identical(&loaded, &memory);
}

/// A seal must name a position whose head a replay still holds: not one before the
/// previous seal's position (heads before it are let go), reported as such, not as an
/// altered event.
#[test]
fn a_seal_naming_a_position_whose_head_is_gone_is_a_fault() {
    let mut memory = keyed();
    let history = apply_all(&mut memory, script(), true);
    let sealed_at = memory.royalty.seals.last().expect("sealed").last_stream_seq;
    let more = apply_all(
        &mut memory,
        vec![Event::PreviewEnded { preview_id: PreviewId::new("p2"), played_ms: 3, media_id: MediaId::new("md1"), node_id: NodeId::new("n2") }],
        false,
    );
    // Negative control first: the same seal naming the projections' own position verifies.
    for (position, verifies) in [(None, true), (Some(sealed_at - 1), false)] {
        let mut seal = memory.unsigned_seal(1).expect("chained").expect("an entry to seal");
        if let Some(position) = position {
            seal.last_stream_seq = position;
        }
        engine::seal::sign_seal_with(&test_keys::fixed_rsa(), Some(&checkpoint_key()), &mut seal).expect("sign");
        let mut replay = keyed();
        for event in history.iter().chain(&more) {
            replay.apply(event).expect("apply");
        }
        replay.apply(&stored(memory.last_seq.0 + 1, Event::RightsReportSealed(seal))).expect("apply the seal");
        if verifies {
            assert_eq!((replay.royalty.seals_verified, replay.royalty.seal_faults.len()), (2, 0));
        } else {
            let fault = replay.royalty.seal_faults.last().expect("a seal fault");
            assert!(fault.reason.contains("no longer known"), "{}", fault.reason);
        }
    }
}

#[test]
fn change_notes_are_inert_until_a_store_tracks_the_projections() {
    let mut memory = keyed();
    apply_all(&mut memory, script(), true);
    assert!(memory.vouchers.touched_holds.noted() == 0 && memory.royalty.touched_totals.noted() == 0, "an in-memory replay keeps no change notes");
    memory.track_changes();
    apply_all(&mut memory, vec![Event::NodeDrained { node_id: NodeId::new("n1") }], false);
    assert_eq!(memory.allocation.touched_nodes.noted(), 1, "negative control: tracked projections do");
}

/// Builds a committed store from the script, then rewrites its checkpoint with `edit`
/// applied (and a valid checksum), and reopens it.
fn reopen_with_checkpoint(edit: impl FnOnce(&mut CheckpointRecord)) -> OpenOutcome {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let (store, _) = ProjectionStore::open(dir.path()).expect("open");
        let mut projections = store.load(Some(&master()), None).expect("load");
        apply_all(&mut projections, script(), true);
        store.commit(&mut projections).expect("commit");
        let mut record = decode_checkpoint(&store.db.get(CHECKPOINT_KEY).expect("get").expect("checkpoint")).expect("decode");
        edit(&mut record);
        store.db.insert(CHECKPOINT_KEY, encode_checkpoint(&record).expect("encode")).expect("insert");
        store.db.flush().expect("flush");
    }
    let (_store, outcome) = ProjectionStore::open(dir.path()).expect("reopen");
    outcome
}

#[test]
fn a_checkpoint_that_does_not_describe_the_state_is_quarantined() {
    // Negative control: rewriting the checkpoint unchanged keeps the store.
    assert!(matches!(reopen_with_checkpoint(|_| {}), OpenOutcome::Resumed { .. }));
    let wrong_digest = reopen_with_checkpoint(|record| record.content_digest[0] ^= 1);
    assert!(matches!(&wrong_digest, OpenOutcome::Quarantined { reason, .. } if reason.contains("content digest")), "{wrong_digest:?}");
    let ahead = reopen_with_checkpoint(|record| {
        record.last_seq += 1;
        record.events += 1;
    });
    assert!(matches!(&ahead, OpenOutcome::Quarantined { reason, .. } if reason.contains("stream heads")), "{ahead:?}");
    let counts = reopen_with_checkpoint(|record| record.events += 1);
    assert!(matches!(counts, OpenOutcome::Quarantined { .. }), "{counts:?}");
    let usages = reopen_with_checkpoint(|record| record.usages += 1);
    assert!(matches!(&usages, OpenOutcome::Quarantined { reason, .. } if reason.contains("usages")), "{usages:?}");
}

/// A store of `script()` (no seal) in which `rewrite` replaces one stored pair (it returns
/// the old key and value, and the new key and value), with the checkpoint's content digest
/// made to match so that only the check under test can see it; reopened. The store lives
/// below the returned directory, its quarantine too.
fn reopen_with_pair_rewritten(rewrite: impl FnOnce(&sled::Db) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>)) -> (ProjectionStore, OpenOutcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("store");
    {
        let (store, _) = ProjectionStore::open(&path).expect("open");
        let mut projections = store.load(None, None).expect("load");
        apply_all(&mut projections, script(), false);
        store.commit(&mut projections).expect("commit");
        let (key, old, new_key, new) = rewrite(&store.db);
        let mut checkpoint = decode_checkpoint(&store.db.get(CHECKPOINT_KEY).expect("get").expect("checkpoint")).expect("decode");
        xor_into(&mut checkpoint.content_digest, &pair_hash(&key, &old));
        xor_into(&mut checkpoint.content_digest, &pair_hash(&new_key, &new));
        store.db.remove(&key).expect("remove");
        store.db.insert(&new_key, new).expect("insert");
        store.db.insert(CHECKPOINT_KEY, encode_checkpoint(&checkpoint).expect("encode")).expect("insert");
        store.db.flush().expect("flush");
    }
    let (store, outcome) = ProjectionStore::open(&path).expect("reopen");
    (store, outcome, dir)
}

#[test]
fn a_stored_ledger_that_does_not_sum_to_zero_is_quarantined() {
    // One ledger row rewritten; unchanged (`delta` 0) it is the negative control.
    let reopen_with_ledger_delta = |delta: i128| {
        let (_store, outcome, _dir) = reopen_with_pair_rewritten(|db| {
            let (key, old) = db.scan_prefix(LEDGER_PREFIX).next().expect("a ledger row").expect("read");
            let mut record: LedgerRecord = serde_json::from_slice(&old).expect("decode");
            record.balance_minor += delta;
            (key.to_vec(), old.to_vec(), key.to_vec(), serde_json::to_vec(&record).expect("encode"))
        });
        outcome
    };
    assert!(matches!(reopen_with_ledger_delta(0), OpenOutcome::Resumed { .. }));
    let outcome = reopen_with_ledger_delta(1);
    assert!(matches!(&outcome, OpenOutcome::Quarantined { reason, .. } if reason.contains("does not sum to zero")), "{outcome:?}");
}

/// Issue 26 (memory): the lapse index lives in sled beside the voucher rows; at open the
/// store checks it holds exactly the rows' lapse keys. A lapse row moved to another time
/// is quarantined; rewritten unchanged it is the negative control. Loaded, the index is not
/// in memory, and the sweeper's work list reads it from sled.
#[test]
fn a_lapse_index_that_does_not_match_the_voucher_rows_is_quarantined() {
    use crate::vouchers::format::LAPSE_PREFIX;
    let reopen_with_lapse_moved = |moved: bool| {
        reopen_with_pair_rewritten(|db| {
            let (key, value) = db.scan_prefix(LAPSE_PREFIX).next().expect("a lapse row").expect("read");
            let mut new_key = key.to_vec();
            new_key[PREFIX_BYTES + 7] ^= u8::from(moved);
            (key.to_vec(), value.to_vec(), new_key, value.to_vec())
        })
    };
    let (store, outcome, _dir) = reopen_with_lapse_moved(false);
    assert!(matches!(outcome, OpenOutcome::Resumed { .. }), "{outcome:?}");
    let loaded = store.load(None, None).expect("load");
    assert_eq!(loaded.vouchers.lapsing.resident(), 0, "the lapse index stays in sled");
    assert_eq!(loaded.vouchers.due_lapses(Millis(i64::MAX), 10).len(), loaded.vouchers.lapsing.len(), "read from sled");
    assert!(!loaded.vouchers.lapsing.is_empty(), "the script leaves an issued voucher");
    let (_store, outcome, _dir) = reopen_with_lapse_moved(true);
    assert!(matches!(&outcome, OpenOutcome::Quarantined { reason, .. } if reason.contains("lapse index")), "{outcome:?}");
}

#[test]
fn a_store_of_format_1_is_quarantined_and_rebuilt() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("store");
    {
        let (store, _) = ProjectionStore::open(&path).expect("open");
        let mut projections = store.load(None, None).expect("load");
        apply_all(&mut projections, script(), false);
        store.commit(&mut projections).expect("commit");
        // What a format-1 store was: no balance rows, the old marker.
        for key in store.db.scan_prefix(LEDGER_PREFIX).keys().chain(store.db.scan_prefix(POINTS_PREFIX).keys()).collect::<Vec<_>>() {
            store.db.remove(key.expect("key")).expect("remove");
        }
        store.db.insert(FORMAT_KEY, &b"vouchsafe-projection-store/1"[..]).expect("insert");
        store.db.flush().expect("flush");
    }
    let (store, outcome) = ProjectionStore::open(&path).expect("reopen");
    assert!(matches!(&outcome, OpenOutcome::Quarantined { reason, .. } if reason.contains("format marker")), "{outcome:?}");
    assert_eq!(store.checkpoint().last_seq, Seq(0), "rebuilt from sequence 1");
}

#[test]
fn an_altered_value_that_still_decodes_is_caught_by_the_content_digest() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let (store, _) = ProjectionStore::open(dir.path()).expect("open");
        let mut projections = store.load(None, None).expect("load");
        apply_all(&mut projections, script(), false);
        store.commit(&mut projections).expect("commit");
        let key = key(NODE_PREFIX, b"n1");
        let mut node: NodeRecord = serde_json::from_slice(&store.db.get(&key).expect("get").expect("node")).expect("decode");
        node.slots_max += 1;
        store.db.insert(key, serde_json::to_vec(&node).expect("encode")).expect("insert");
        store.db.flush().expect("flush");
    }
    let (_store, outcome) = ProjectionStore::open(dir.path()).expect("reopen");
    assert!(matches!(&outcome, OpenOutcome::Quarantined { reason, .. } if reason.contains("content digest")), "{outcome:?}");
}

#[test]
fn a_failed_commit_stops_the_store_until_it_is_reopened() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (store, _) = ProjectionStore::open(dir.path()).expect("open");
    let mut projections = store.load(None, None).expect("load");
    apply_all(&mut projections, script(), false);
    let prepared = store.prepare(&mut projections).expect("prepare");
    // A batch built on another checkpoint (a second runner) is refused, and so is
    // everything after it: the projections in memory are ahead of the store for good.
    let mut stale = prepared;
    stale.base = Seq(99);
    assert!(matches!(store.write(stale), Err(CommitError::OutOfOrder { .. })));
    assert!(matches!(store.commit(&mut projections), Err(CommitError::Stopped(_))));
    // Loaded projections read their cold rows from the store, so they hold it open too.
    drop((store, projections));
    let (store, outcome) = ProjectionStore::open(dir.path()).expect("reopen");
    assert_eq!(outcome, OpenOutcome::Resumed { checkpoint: Seq(0) }, "nothing was stored");
    drop(store);
}

#[test]
fn a_resumed_chain_continues_the_uninterrupted_one() {
    let entry = |n: u64| crate::royalty::Entry {
        kind: crate::royalty::UsageKind::Delivery,
        source_seq: n,
        timestamp_ms: 0,
        title: String::new(),
        artist: String::new(),
        authors: vec![],
        length_ms: 0,
        sale_price_minor: n,
        currency: String::new(),
        consumer_cert: String::new(),
        voucher_id: String::new(),
        media_id: String::new(),
        image_descriptor: String::new(),
        merchant: String::new(),
        rights_agent: String::new(),
        distributor: String::new(),
        owner: String::new(),
        played_ms: 0,
    };
    let mut chain = Chain::start(&master(), EPOCH);
    let entries: Vec<ChainedEntry> = (0..5).map(|n| chain.append(&entry(n))).collect();
    let mut resumed = Chain::resume(&master(), EPOCH, entries.last()).expect("the right key");
    assert_eq!((resumed.next_index(), resumed.head_y()), (chain.next_index(), chain.head_y()));
    assert_eq!(resumed.append(&entry(5)), chain.append(&entry(5)), "the same next entry: the same A_5");
    assert!(Chain::resume(&SecretKey::from_bytes([4; 32]), EPOCH, entries.last()).is_err(), "another master key");
    assert!(Chain::resume(&master(), EPOCH + 1, entries.last()).is_err(), "another epoch");
}

/// Issue 28, an engine key's validity starts at its rotation: a seal the new key signed
/// before the stream rotated it in is a fault, found at the rotation. The control: the same
/// seal after the rotation verifies and nothing is found.
#[test]
fn a_seal_signed_with_a_key_before_its_rotation_is_outside_the_keys_validity() {
    let (old, new) = (test_keys::fixed_rsa(), test_keys::fixed_rsa_2());
    let rotated = || {
        let mut projections = Projections::with_royalty_keys(&master(), Some(new.public()));
        projections.royalty.older_engine_keys = vec![old.public()];
        apply_all(&mut projections, script(), true);
        another_usage(&mut projections);
        projections
    };
    let seal_with_new = |projections: &mut Projections| {
        let mut seal = projections.unsigned_seal(1).expect("chained").expect("entries to seal");
        engine::seal::sign_seal_with(&new, Some(&checkpoint_key()), &mut seal).expect("sign");
        let event = stored(projections.last_seq.0 + 1, Event::RightsReportSealed(seal));
        projections.apply(&event).expect("apply the seal");
    };
    let rotation = Event::EngineKeyRotated {
        key_id: new.public().key_id(),
        public_key_der: new.public().to_der().expect("der"),
        previous_key_id: old.public().key_id(),
        rotated_at: Millis(1),
    };
    let mut early = rotated();
    seal_with_new(&mut early);
    assert!(early.royalty.seal_faults.is_empty(), "the signature itself verifies");
    apply_all(&mut early, vec![rotation.clone()], false);
    let fault = early.royalty.seal_faults.last().expect("a fault at the rotation").reason.clone();
    assert!(fault.contains("before the stream rotated it in"), "{fault}");

    let mut in_order = rotated();
    apply_all(&mut in_order, vec![rotation], false);
    seal_with_new(&mut in_order);
    assert!(in_order.royalty.seal_faults.is_empty(), "control: signed after the rotation, nothing is found");
    assert_eq!(in_order.royalty.seals_verified, early.royalty.seals_verified);
}

/// Issue 28, rotation: seals signed with the engine key of before a rotation still verify
/// with the rotated set (its older keys found by id); once the stream revokes that key, a
/// seal it signs is a fault, while the new key's seals verify. Controls: without the older
/// key the old seal faults; without the revocation the old key's later seal verifies. The
/// revocation survives a commit and a reload.
#[test]
fn seals_verify_with_the_key_they_name_and_a_revoked_keys_later_seal_is_a_fault() {
    let (old, new) = (test_keys::fixed_rsa(), test_keys::fixed_rsa_2());
    let rotated = || {
        let mut projections = Projections::with_royalty_keys(&master(), Some(new.public()));
        projections.royalty.older_engine_keys = vec![old.public()];
        projections
    };
    let seal_with = |projections: &mut Projections, key: &engine::crypto::RsaPrivate| {
        let mut seal = projections.unsigned_seal(1).expect("chained").expect("entries to seal");
        engine::seal::sign_seal_with(key, Some(&checkpoint_key()), &mut seal).expect("sign");
        let event = stored(projections.last_seq.0 + 1, Event::RightsReportSealed(seal));
        projections.apply(&event).expect("apply the seal");
    };
    let mut projections = rotated();
    apply_all(&mut projections, script(), true);
    assert_eq!((projections.royalty.seals_verified, projections.royalty.seal_faults.len()), (1, 0), "the old key's seal verifies after the rotation");
    let mut only_new = Projections::with_royalty_keys(&master(), Some(new.public()));
    apply_all(&mut only_new, script(), true);
    assert_eq!(only_new.royalty.seal_faults.len(), 1, "control: without the older key the old seal does not verify");

    let mut unrevoked = rotated();
    apply_all(&mut unrevoked, script(), true);
    another_usage(&mut unrevoked);
    seal_with(&mut unrevoked, &old);
    assert!(unrevoked.royalty.seal_faults.is_empty(), "control: not revoked, the old key's later seal verifies");

    apply_all(&mut projections, vec![Event::EngineKeyRevoked { key_id: old.public().key_id() }], false);
    another_usage(&mut projections);
    seal_with(&mut projections, &old);
    let fault = projections.royalty.seal_faults.last().expect("a fault").reason.clone();
    assert!(fault.contains("revoked"), "{fault}");
    let (faults, verified) = (projections.royalty.seal_faults.len(), projections.royalty.seals_verified);
    let (preview, media, node) = (PreviewId::new("p3"), MediaId::new("md1"), NodeId::new("n2"));
    let started = Event::PreviewStarted {
        preview_id: preview.clone(),
        media_id: media.clone(),
        node_id: node.clone(),
        merchant_id: MerchantId::new("m0"),
        clip_ms: 10,
        lapses_at: Millis(90_000),
        lease: 0,
    };
    apply_all(&mut projections, vec![started, Event::PreviewEnded { preview_id: preview, played_ms: 4, media_id: media, node_id: node }], false);
    seal_with(&mut projections, &new);
    assert_eq!((projections.royalty.seal_faults.len(), projections.royalty.seals_verified), (faults, verified + 1), "the new key's seal verifies");

    // Stored and loaded, the revocation is still known.
    let dir = tempfile::tempdir().expect("temporary directory");
    let (store, _) = ProjectionStore::open(dir.path()).expect("open");
    let mut loaded = store.load(Some(&master()), Some(new.public())).expect("load");
    apply_all(&mut loaded, script(), false);
    apply_all(&mut loaded, vec![Event::EngineKeyRevoked { key_id: old.public().key_id() }], false);
    store.commit(&mut loaded).expect("commit");
    drop((store, loaded));
    let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
    let loaded = store.load(Some(&master()), Some(new.public())).expect("load");
    assert!(loaded.royalty.revoked_engine_keys.contains(&old.public().key_id()), "the revocation survives a reload");
}

#[test]
fn certificate_counts_come_back_from_the_stored_rows() {
    let certified = |consumer: &str, not_after: i64| Event::ConsumerCertified {
        consumer_id: engine::ids::ConsumerId::new(consumer),
        cert_serial: engine::ids::CertSerial::new(format!("{consumer}-1")),
        public_key_der: vec![],
        not_before: Millis(0),
        not_after: Millis(not_after),
        engine_key_id: String::new(),
        signature: vec![],
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let counts = {
        let (store, _) = ProjectionStore::open(dir.path()).expect("open");
        let mut projections = store.load(Some(&master()), None).expect("load");
        let revoked =
            Event::CertRevoked { consumer_id: engine::ids::ConsumerId::new("bob"), cert_serial: engine::ids::CertSerial::new("bob-1"), reason: "lost".into() };
        apply_all(&mut projections, vec![certified("alice", 100), certified("bob", 200), certified("carol", 300), revoked], false);
        store.commit(&mut projections).expect("commit");
        projections.reads.certificates.clone()
    };
    assert_eq!((counts.issued, counts.revoked, counts.expired_at(1_000)), (3, 1, 2));
    let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
    assert_eq!(store.load(Some(&master()), None).expect("load").reads.certificates, counts);
}
