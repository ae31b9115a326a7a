//! The applying side's results, pinned: the state a generated stream reaches (every
//! projection's digest, the stream head, the royalty chain's head), with and without the
//! royalty keys, as the code before the per-event CPU work (commit e477a80)
//! computed them. Work that makes applying cheaper must leave all of it byte-identical; these tests
//! fail on any difference. Also the subject check's findings, now that it compares
//! without building the subject, and the hashes now computed without copying their input
//! against their definitions.

mod support;

use bytes::Bytes;
use engine::domain::event::Event;
use engine::domain::{Actor, Recorded};
use engine::ids::{Millis, NodeId, Seq};
use engine::log::StoredEvent;
use projections::{Finding, Projections, audit};
use support::{VecLog, engine_public, generate, keyed, master, rebuild};

const STREAM_EVENTS: usize = 30_000;
/// The pinned stream has no seals: a seal carries an RSA-PSS signature, whose random salt
/// makes every generated sealed stream (and so its stream head and digest) different.
const NO_SEALS: u64 = u64::MAX;
/// The sealed stream's seals are checked by what replaying them finds instead.
const SEAL_EVERY_USAGES: u64 = 300;

/// `Projections::digest` after the generated stream, with the royalty keys.
const KEYED_DIGEST: &str = "9d741d166fca29514db6e6b60c8af1e7096d1e86c455715ee5527f2be74e4b37";
/// The same without the keys (no royalty chain).
const UNKEYED_DIGEST: &str = "77acb90a1926d45703dc0219187852cff291b4710f943142d00926fc821e1e92";
/// The running stream hash after the generated stream.
const STREAM_HEAD: &str = "6731e40c7e7f6e979f98ee1d860a4e542293ad1c4fb9e3f6c08ef1402a3f1222";
/// `Y` of the last royalty entry.
const CHAIN_HEAD_Y: &str = "10ceec2d97843001fb8612f6afcff0152800b1b4c55b8995f85d02781eeeb7ed";

#[test]
fn the_generated_stream_reaches_the_pinned_state() {
    let events = generate(11, STREAM_EVENTS, NO_SEALS);
    let keyed = rebuild(&events, keyed());
    let unkeyed = rebuild(&events, Projections::default());
    let found = (
        hex::encode(keyed.digest()),
        hex::encode(unkeyed.digest()),
        hex::encode(keyed.stream_head),
        hex::encode(keyed.royalty.entries.last().expect("the stream delivers").chained.y),
    );
    assert_eq!(found, (KEYED_DIGEST.to_string(), UNKEYED_DIGEST.to_string(), STREAM_HEAD.to_string(), CHAIN_HEAD_Y.to_string()));
    assert!(!keyed.vouchers.holds.is_empty(), "the stream leaves holds open");
    assert_eq!(keyed.balances.sum(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_replay_reaches_the_pinned_state() {
    let log = VecLog::new(generate(11, STREAM_EVENTS, NO_SEALS));
    let (report, projections) = audit::replay_full(&log, &master(), &engine_public(), None, |_| {}).await.expect("replay");
    assert!(report.ok(), "{:?}", report.first_bad);
    assert_eq!(report.state_digest, KEYED_DIGEST);
    assert_eq!(hex::encode(projections.stream_head), STREAM_HEAD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seal_of_a_sealed_stream_verifies_in_a_replay_and_an_audit() {
    let events = generate(11, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let applied = rebuild(&events, keyed());
    let royalty = &applied.royalty;
    assert!(royalty.seal_faults.is_empty(), "{:?}", royalty.seal_faults.first());
    assert!(
        royalty.seals.len() > 10 && royalty.seals_verified == royalty.seals.len() as u64,
        "{} of {} seals verified",
        royalty.seals_verified,
        royalty.seals.len()
    );
    let (report, _) = audit::replay_full(&VecLog::new(events), &master(), &engine_public(), None, |_| {}).await.expect("replay");
    assert!(report.ok(), "{:?}", report.first_bad);
    assert_eq!((report.state_digest, report.seals_verified), (hex::encode(applied.digest()), royalty.seals_verified));
}

fn stored(seq: u64, subject: &str, event: Event) -> StoredEvent {
    let recorded = Recorded {
        event_id: [1; 16],
        aggregate: event.aggregate(),
        aggregate_version: 1,
        recorded_at: Millis(0),
        request_id: "r".into(),
        actor: Actor::engine(),
        command: "Test".into(),
        event,
    };
    StoredEvent { seq: Seq(seq), subject: subject.to_string(), payload: Bytes::from(engine::wire::encode(&recorded)) }
}

#[test]
fn an_event_on_another_subject_is_a_finding_and_changes_nothing() {
    let drained = || Event::NodeDrained { node_id: NodeId::new("n1") };
    for subject in ["vs.node.n12", "vs.node.n", "vs.nodes.n1", "vs.media.n1", "vs.node", ""] {
        let mut projections = Projections::default();
        let finding = projections.apply(&stored(1, subject, drained())).expect_err(subject);
        assert_eq!(finding, Finding::WrongSubject { seq: Seq(1), subject: subject.to_string(), expected: "vs.node.n1".into() });
        assert_eq!((projections.last_seq, projections.events), (Seq(0), 0), "nothing of it was applied");
    }
    // Control: the same event on its own subject applies.
    let mut projections = Projections::default();
    projections.apply(&stored(1, "vs.node.n1", drained())).expect("its own subject");
    assert_eq!(projections.last_seq, Seq(1));
}

/// Inputs around blake3's block (64 bytes) and chunk (1,024 bytes) boundaries.
const LENGTHS: [usize; 10] = [0, 1, 31, 32, 63, 64, 65, 1_023, 1_024, 4_097];

fn bytes(length: usize, seed: u8) -> Vec<u8> {
    (0..length).map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn the_running_hash_is_blake3_of_the_concatenation() {
    for length in LENGTHS {
        let (y_prev, ciphertext) = ([length as u8; 32], bytes(length, 7));
        let concatenated = [&y_prev[..], &ciphertext].concat();
        assert_eq!(projections::royalty::running_hash(&y_prev, &ciphertext), engine::crypto::hash(&concatenated), "{length} bytes");
        // Control: a different previous Y gives a different hash.
        assert_ne!(projections::royalty::running_hash(&[!(length as u8); 32], &ciphertext), engine::crypto::hash(&concatenated));
    }
}

#[test]
fn a_stream_link_is_the_derive_key_hash_of_its_parts() {
    for (round, length) in LENGTHS.into_iter().enumerate() {
        let stored = StoredEvent { seq: Seq(round as u64 + 1), subject: format!("vs.node.n{round}"), payload: Bytes::from(bytes(length, 3)) };
        let previous = [round as u8; 32];
        let mut expected = blake3::Hasher::new_derive_key("vouchsafe 2026 stream head");
        expected.update(&previous);
        expected.update(&stored.seq.0.to_le_bytes());
        expected.update(&(stored.subject.len() as u64).to_le_bytes());
        expected.update(stored.subject.as_bytes());
        expected.update(&stored.payload);
        // Twice: each link starts from a fresh copy of the keyed hasher, not from the last.
        assert_eq!(projections::stream_link(&previous, &stored), *expected.finalize().as_bytes(), "{length} bytes");
        assert_eq!(projections::stream_link(&previous, &stored), *expected.finalize().as_bytes());
        assert_ne!(projections::stream_link(&[0xff; 32], &stored), *expected.finalize().as_bytes(), "control: another previous head");
    }
}

#[test]
fn an_entry_appended_encoded_is_the_entry_appended() {
    use projections::royalty::{Chain, Entry, UsageKind};
    let master = engine::crypto::SecretKey::from_bytes([9; 32]);
    let (mut plain, mut encoded) = (Chain::start(&master, 1), Chain::start(&master, 1));
    for index in 0..3u64 {
        let entry = Entry {
            kind: UsageKind::Preview,
            source_seq: index,
            timestamp_ms: 5,
            title: "t\"q".into(),
            artist: "a".into(),
            authors: vec!["x".into()],
            length_ms: 1,
            sale_price_minor: 0,
            currency: String::new(),
            consumer_cert: String::new(),
            voucher_id: String::new(),
            media_id: format!("m{index}"),
            image_descriptor: String::new(),
            merchant: "m".into(),
            rights_agent: "r".into(),
            distributor: "d".into(),
            owner: "o".into(),
            played_ms: index,
        };
        assert_eq!(entry.encode(), serde_json::to_vec(&entry).expect("serializes"), "the encoding the usage digest hashes");
        assert_eq!(encoded.append_encoded(&entry.encode()), plain.append(&entry), "entry {index}");
    }
}
