//! Auditor events (`AuditorRegistered`, `AuditorRevoked`) in a stream: every projection
//! skips them (they carry no sale, node or royalty), so the voucher book, the allocation and
//! the royalty log are those of the same stream without them; the stream head still covers
//! them, the audit stays clean, and the projection store commits and resumes across them.

mod support;

use bytes::Bytes;
use engine::domain::event::Event;
use engine::domain::{Actor, ActorKind, Recorded};
use engine::ids::{AuditorId, Millis, Seq};
use engine::log::StoredEvent;
use projections::store::OpenOutcome;
use projections::{Live, Projections};
use std::sync::Arc;
use support::{VecLog, engine_public, generate, keyed, master, rebuild};

const STREAM_EVENTS: usize = 800;
const SEAL_EVERY_USAGES: u64 = 60;

/// `events` followed by an auditor's registration and revocation, as the operator records
/// them; `name` is the auditor's name.
fn with_auditor_events(events: &[StoredEvent], name: &str) -> Vec<StoredEvent> {
    let auditor_id = AuditorId::new("a-licensing");
    let mut extended = events.to_vec();
    let appended = [
        Event::AuditorRegistered { auditor_id: auditor_id.clone(), name: name.into(), credential_hash: [3; 32] },
        Event::AuditorRevoked { auditor_id, reason: "contract ended".into() },
    ];
    for (index, event) in appended.into_iter().enumerate() {
        let seq = extended.len() as u64 + 1;
        let aggregate = event.aggregate();
        let subject = aggregate.subject();
        let recorded = Recorded {
            event_id: [seq as u8; 16],
            aggregate,
            aggregate_version: index as u64 + 1,
            recorded_at: Millis(1_800_000_000_000),
            request_id: format!("op-{seq}"),
            actor: Actor::new(ActorKind::Operator, "op"),
            command: if index == 0 { "RegisterAuditor" } else { "RevokeAuditor" }.into(),
            event,
        };
        extended.push(StoredEvent { seq: Seq(seq), subject, payload: Bytes::from(engine::wire::encode(&recorded)) });
    }
    extended
}

#[track_caller]
fn assert_projections_equal(with: &Projections, without: &Projections) {
    assert_eq!(with.vouchers, without.vouchers, "voucher book");
    assert_eq!(with.allocation, without.allocation, "allocation");
    let (w, o) = (&with.royalty, &without.royalty);
    assert_eq!((&w.entries, &w.totals, &w.seals, &w.seal_faults), (&o.entries, &o.totals, &o.seals, &o.seal_faults), "royalty log");
    assert_eq!((w.usages, w.seals_verified), (o.usages, o.seals_verified), "royalty counters");
}

#[test]
fn auditor_events_leave_every_projection_as_it_was() {
    let events = generate(11, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let without = rebuild(&events, keyed());
    let extended = with_auditor_events(&events, "Licensing Center");
    assert_eq!(extended[events.len()].subject, "vs.auditor.a-licensing");
    let with = rebuild(&extended, keyed());
    assert_projections_equal(&with, &without);
    assert_eq!((with.last_seq, with.events), (Seq(events.len() as u64 + 2), without.events + 2), "the events are counted");
    assert_ne!(with.stream_head, without.stream_head, "the stream head covers every stored event, auditor events too");
    // The state digest does not depend on what an auditor event says, only on its position.
    let renamed = rebuild(&with_auditor_events(&events, "Rights Agent"), keyed());
    assert_eq!(renamed.digest(), with.digest());
    assert_ne!(renamed.stream_head, with.stream_head, "negative control: the raw stream did change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_of_a_stream_with_auditor_events_is_clean() {
    let events = generate(12, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let extended = with_auditor_events(&events, "Licensing Center");
    let plain = projections::audit::replay(&VecLog::new(events), &master(), &engine_public(), None, |_| {}).await.expect("audit");
    let report = projections::audit::replay(&VecLog::new(extended.clone()), &master(), &engine_public(), None, |_| {}).await.expect("audit");
    assert!(report.chain_ok && report.first_bad.is_none(), "{:?}", report.first_bad);
    assert!(report.seals_verified > 0, "the stream carries seals, all verified");
    assert_eq!(report.events, extended.len() as u64);
    assert_eq!((report.royalty_entries, report.seals_verified, &report.totals), (plain.royalty_entries, plain.seals_verified, &plain.totals));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_store_commits_and_resumes_across_auditor_events() {
    let events = generate(13, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let extended = with_auditor_events(&events, "Licensing Center");
    let clean = rebuild(&extended, keyed());
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    let last = Seq(extended.len() as u64);
    for expected in [OpenOutcome::Created, OpenOutcome::Resumed { checkpoint: last }] {
        let (live, outcome) = Live::open(&store, Some(&master()), Some(engine_public())).expect("open the store");
        assert_eq!(outcome, expected);
        let live = live.with_batch_events_max(1);
        live.run(Arc::new(VecLog::new(extended.clone()))).await.expect("run to the end of the stream");
        assert_eq!(live.checkpoint(), last, "a batch of only an auditor event is committed too");
        live.read(|p| {
            assert_eq!(p.digest(), clean.digest());
            assert_eq!(p.stream_head, clean.stream_head);
        });
    }
}
