//! Every seal of a checkpointed stream is a C2SP checkpoint: an RFC 6962 root over all
//! royalty entries, signed as an Ed25519 note. A full audit checks each one against the tree
//! it rebuilds; an incremental audit from a pinned checkpoint leaves the entries before it
//! unchained and reaches the same state. Controls: a wrong checkpoint key, a rewritten
//! root, a forked or truncated stream, and a pin that is not on the stream all fail, each
//! at its first bad position.

mod support;

use bytes::Bytes;
use engine::crypto::test_keys;
use engine::domain::event::Event;
use engine::log::StoredEvent;
use engine::note::{Checkpoint, NoteSigner};
use projections::audit::{AuditOptions, AuditReport, replay_with};
use support::{VecLog, checkpoint_key, engine_public, generate_checkpointed, master};

const STREAM_EVENTS: usize = 3_000;
const SEAL_EVERY_USAGES: u64 = 40;

async fn audit(events: &[StoredEvent], options: AuditOptions) -> AuditReport {
    replay_with(&VecLog::new(events.to_vec()), &master(), &engine_public(), options, |_| {}).await.expect("the replay runs").0
}

fn keyed(since: Option<Checkpoint>) -> AuditOptions {
    AuditOptions { checkpoint_key: Some(checkpoint_key().verifier()), pin: None, since, ..AuditOptions::default() }
}

/// The seals of a stream, with their positions.
fn seals(events: &[StoredEvent]) -> Vec<(usize, engine::domain::event::RightsReportSealed)> {
    let mut seals = Vec::new();
    for (position, stored) in events.iter().enumerate() {
        if let Event::RightsReportSealed(seal) = engine::wire::decode(&stored.payload).expect("decodes").event {
            seals.push((position, seal));
        }
    }
    seals
}

fn checkpoint_of(seal: &engine::domain::event::RightsReportSealed) -> Checkpoint {
    let note = engine::seal::checkpoint_note(seal).expect("a checkpointed seal");
    Checkpoint::open(note.as_bytes(), &checkpoint_key().verifier()).expect("the note verifies")
}

/// `stored` with its event changed by `change` (same sequence and subject).
fn rewrite(stored: &StoredEvent, change: impl FnOnce(&mut Event)) -> StoredEvent {
    let mut recorded = engine::wire::decode(&stored.payload).expect("decodes");
    change(&mut recorded.event);
    StoredEvent { seq: stored.seq, subject: stored.subject.clone(), payload: Bytes::from(engine::wire::encode(&recorded)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seal_is_a_verified_checkpoint_and_an_incremental_audit_reaches_the_full_state() {
    let events = generate_checkpointed(41, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let seals = seals(&events);
    assert!(seals.len() >= 4, "enough seals: {}", seals.len());
    let full = audit(&events, keyed(None)).await;
    assert!(full.ok(), "{:?}", full.first_bad);
    assert_eq!(full.seals_verified, seals.len() as u64);
    let newest = Checkpoint::open(full.checkpoint.as_deref().expect("the newest checkpoint").as_bytes(), &checkpoint_key().verifier()).expect("verifies");
    assert_eq!(newest.size, seals.last().expect("sealed").1.last_entry + 1);

    for (_, seal) in [&seals[0], &seals[seals.len() / 2], seals.last().expect("sealed")] {
        let since = checkpoint_of(seal);
        let incremental = audit(&events, keyed(Some(since.clone()))).await;
        assert!(incremental.ok(), "from size {}: {:?}", since.size, incremental.first_bad);
        assert_eq!(
            (&incremental.state_digest, incremental.royalty_entries, incremental.seals_verified, &incremental.checkpoint),
            (&full.state_digest, full.royalty_entries, full.seals_verified, &full.checkpoint),
            "from size {}",
            since.size
        );
        assert_eq!(serde_json::to_string(&incremental.totals).expect("json"), serde_json::to_string(&full.totals).expect("json"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_rewritten_roots_forks_and_cuts_fail_at_their_first_bad_seal() {
    let events = generate_checkpointed(42, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let seals = seals(&events);
    let (middle_position, middle) = seals[seals.len() / 2].clone();
    let since = checkpoint_of(&middle);

    // Another checkpoint key (same name): the first seal fails.
    let stranger = NoteSigner::new(checkpoint_key().name(), engine::crypto::Ed25519Private::from_seed(&[10; 32])).expect("key");
    let report = audit(&events, AuditOptions { checkpoint_key: Some(stranger.verifier()), ..AuditOptions::default() }).await;
    let bad = report.first_bad.expect("another key fails");
    assert_eq!(bad.seq, events[seals[0].0].seq.0, "{}", bad.reason);
    assert!(bad.reason.contains("checkpoint signature"), "{}", bad.reason);

    // A later seal's root rewritten and every signature redone (the engine's keys stolen):
    // the tree the auditor rebuilds disagrees at that seal, in a full audit and from the pin.
    let (late_position, _) = *seals.last().expect("sealed");
    let mut rerooted = events.clone();
    rerooted[late_position] = rewrite(&events[late_position], |event| {
        if let Event::RightsReportSealed(seal) = event {
            let checkpoint = seal.checkpoint.as_mut().expect("checkpointed");
            checkpoint.origin.clear();
            checkpoint.root[0] ^= 1;
            engine::seal::sign_seal_with(&test_keys::fixed_rsa(), Some(&checkpoint_key()), seal).expect("sign");
        }
    });
    for options in [keyed(None), keyed(Some(since.clone()))] {
        let bad = audit(&rerooted, options).await.first_bad.expect("a rewritten root fails");
        assert_eq!(bad.seq, rerooted[late_position].seq.0, "{}", bad.reason);
        assert!(bad.reason.contains("checkpoint root differs"), "{}", bad.reason);
    }

    // Pinned to a checkpoint this stream never signed (a fork at the same size): the seal at
    // that size fails.
    let forked = Checkpoint { root: [7; 32], ..since.clone() };
    let bad = audit(&events, keyed(Some(forked))).await.first_bad.expect("a forked pin fails");
    assert_eq!(bad.seq, events[middle_position].seq.0, "{}", bad.reason);
    assert!(bad.reason.contains("forked"), "{}", bad.reason);

    // Another stream (another seed) with this stream's pin: it never shows the pinned root.
    let other = generate_checkpointed(43, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let bad = audit(&other, keyed(Some(since.clone()))).await.first_bad.expect("another log fails");
    assert!(bad.reason.contains("forked") || bad.reason.contains("pinned"), "{}", bad.reason);

    // Cut before the pinned seal: the pin is never met.
    let cut = &events[..middle_position];
    let bad = audit(cut, keyed(Some(since.clone()))).await.first_bad.expect("a cut stream fails");
    assert_eq!((bad.seq, bad.entry), (middle_position as u64 + 1, Some(since.size)), "{}", bad.reason);
    assert!(bad.reason.contains("no seal with the pinned checkpoint"), "{}", bad.reason);

    // Control: the untouched stream passes from the same pin.
    assert!(audit(&events, keyed(Some(since))).await.ok());
}

/// Consistency proofs between any two seals' checkpoints, from the tree a full replay
/// rebuilds, verify; against a forked old root they do not.
#[test]
fn checkpoints_of_one_stream_are_consistent_with_each_other() {
    let events = generate_checkpointed(44, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let projections = support::rebuild(&events, support::keyed());
    let checkpoints: Vec<Checkpoint> = seals(&events).iter().map(|(_, seal)| checkpoint_of(seal)).collect();
    let tree = &projections.royalty.tree;
    for old in &checkpoints {
        for new in checkpoints.iter().filter(|new| new.size >= old.size) {
            let proof = tree.consistency_proof(old.size, new.size).expect("sizes in the tree");
            assert!(engine::tlog::verify_consistency(old.size, new.size, &old.root, &new.root, &proof));
            let mut forked = old.root;
            forked[31] ^= 1;
            assert!(old.size == new.size || !engine::tlog::verify_consistency(old.size, new.size, &forked, &new.root, &proof));
        }
    }
}

/// A known limit, asserted: a checkpoint binds the tree of entries, not the events before
/// it. An operator who alters an event before the pinned checkpoint and re-signs every seal
/// with its own keys (new stream heads, links and signatures, the checkpoints' roots kept)
/// passes an incremental audit from the checkpoint alone, which does not rebuild the
/// entries it covers. The full audit catches it, and so does an incremental audit that
/// also pins that seal's hash (`--pin`, which binds the stream head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_prefix_is_caught_by_the_seal_pin_not_by_the_checkpoint_alone() {
    use engine::domain::report::Report;
    let events = generate_checkpointed(45, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let seals = seals(&events);
    let (pin_position, pinned) = seals[seals.len() / 2].clone();
    let since = checkpoint_of(&pinned);
    let seal_pin = Report::seal_hash(&pinned);
    let preview = (0..pin_position)
        .find(|&position| matches!(engine::wire::decode(&events[position].payload).expect("decodes").event, Event::PreviewEnded { .. }))
        .expect("a preview before the pin");
    let mut forged = events.clone();
    forged[preview] = rewrite(&events[preview], |event| {
        if let Event::PreviewEnded { played_ms, .. } = event {
            *played_ms += 1;
        }
    });
    let (mut head, mut heads, mut previous) = ([0u8; 32], Vec::with_capacity(forged.len()), [0u8; 32]);
    for stored in forged.iter_mut() {
        if matches!(engine::wire::decode(&stored.payload).expect("decodes").event, Event::RightsReportSealed(_)) {
            *stored = rewrite(stored, |event| {
                if let Event::RightsReportSealed(seal) = event {
                    seal.stream_head = heads[seal.last_stream_seq as usize - 1];
                    seal.prev_seal_hash = previous;
                    seal.checkpoint.as_mut().expect("checkpointed").origin.clear();
                    engine::seal::sign_seal_with(&test_keys::fixed_rsa(), Some(&checkpoint_key()), seal).expect("sign");
                    previous = Report::seal_hash(seal);
                }
            });
        }
        head = projections::stream_link(&head, stored);
        heads.push(head);
    }
    assert!(!audit(&forged, keyed(None)).await.ok(), "the full audit rebuilds the entries and catches it");
    // Wrong, and known: the checkpoint alone passes the rewritten prefix.
    assert!(audit(&forged, keyed(Some(since.clone()))).await.ok(), "the checkpoint binds the tree, not the events");
    let pinned_too = AuditOptions { pin: Some(seal_pin), ..keyed(Some(since.clone())) };
    let bad = audit(&forged, pinned_too.clone()).await.first_bad.expect("the seal pin catches it");
    assert!(bad.reason.contains("pinned seal"), "{}", bad.reason);
    // Control: the untouched stream passes with both pins.
    assert!(audit(&events, pinned_too).await.ok());
}
