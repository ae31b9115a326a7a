//! `Market::register_auditor` and `Market::revoke_auditor` on the embedded log, through the
//! public API: the secret is shown once and only its hash is recorded, a retry is refused
//! and writes nothing, revocation is idempotent, and refusals write nothing.
//!
//! What does not live here: the auditor's rules one by one (domain tests in
//! `domain::tests::party_rules`) and what an auditor credential may read (the gateway).

use engine::app::{Allocator, AppError, EngineKeys, Market};
use engine::clock::{Clock, ManualClock};
use engine::crypto::{self, RsaPrivate};
use engine::domain::Rejection;
use engine::domain::event::Event;
use engine::domain::party::{Auditor, AuditorStatus};
use engine::ids::*;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use std::sync::Arc;

/// Auditors never need a delivery node.
struct NoNode;

impl Allocator for NoNode {
    fn choose(&self, _region: Option<&str>, _holder: &str) -> Option<engine::placement::Placed> {
        None
    }

    fn cancel(&self, _holder: &str) {}
}

struct Fixture {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    market: Market,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("open log"));
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Millis(1_700_000_000_000)));
    // Public test data (engine/testdata/README.md), so the test pays for no key generation.
    let private = RsaPrivate::from_pkcs8_pem(include_str!("../testdata/rsa-2048-a.pem")).expect("engine/testdata holds a valid key");
    let keys = Arc::new(EngineKeys::new(private).expect("engine keys"));
    let market = Market::new(Arc::clone(&log), clock, keys, Arc::new(NoNode));
    Fixture { _dir: dir, log, market }
}

fn req(id: &str) -> RequestId {
    RequestId::new(id)
}

async fn auditor_state(fixture: &Fixture, auditor: &AuditorId) -> Auditor {
    fixture.market.handler().load_fresh::<Auditor>(&auditor.0).await.expect("load auditor").state.clone()
}

async fn events_on(fixture: &Fixture, auditor: &AuditorId) -> Vec<Event> {
    let subject = format!("vs.auditor.{}", auditor.0);
    let stored = fixture.log.read_subject(&subject).await.expect("read subject");
    stored.iter().map(|event| engine::wire::decode(&event.payload).expect("decode").event).collect()
}

#[tokio::test]
async fn register_auditor_shows_the_secret_once_and_records_only_its_hash() {
    let fixture = fixture();
    let credential = fixture.market.register_auditor("op", &req("aud-1"), "Licensing Center").await.expect("register auditor");
    let auditor = AuditorId(credential.id.clone());
    assert_eq!(auditor, auditor_id_for("op", &req("aud-1")), "the id is derived from the operator and request");
    let state = auditor_state(&fixture, &auditor).await;
    assert_eq!(state.status, AuditorStatus::Active);
    assert_eq!(state.name, "Licensing Center");
    assert_eq!(state.credential_hash, crypto::credential_hash(credential.secret.expose()));
    assert_ne!(&state.credential_hash[..], credential.secret.expose(), "the secret itself is never recorded");

    // A retry cannot show the secret again, and writes nothing.
    let retry = fixture.market.register_auditor("op", &req("aud-1"), "Licensing Center").await;
    assert!(matches!(&retry, Err(AppError::Rejected(Rejection::AlreadyExists { kind: "auditor credential", id })) if *id == auditor.0), "{retry:?}");
    assert_eq!(events_on(&fixture, &auditor).await.len(), 1);

    // Another request registers another auditor.
    let other = fixture.market.register_auditor("op", &req("aud-2"), "Rights Agent").await.expect("register a second auditor");
    assert_ne!(other.id, credential.id);
}

#[tokio::test]
async fn register_auditor_with_an_empty_name_is_refused_and_writes_nothing() {
    let fixture = fixture();
    let refused = fixture.market.register_auditor("op", &req("aud-1"), " ").await;
    assert!(matches!(&refused, Err(AppError::Rejected(Rejection::InvalidArgument { field: "name", .. }))), "{refused:?}");
    assert_eq!(fixture.log.last_seq().await.expect("last seq"), Seq(0));
}

#[tokio::test]
async fn revoke_auditor_once_then_no_more_events() {
    let fixture = fixture();
    let credential = fixture.market.register_auditor("op", &req("aud-1"), "Licensing Center").await.expect("register auditor");
    let auditor = AuditorId(credential.id);
    fixture.market.revoke_auditor("op", &req("revoke-1"), &auditor, "contract ended").await.expect("revoke");
    assert_eq!(auditor_state(&fixture, &auditor).await.status, AuditorStatus::Revoked);
    // The same request again, and a new request: both already in effect, nothing written.
    fixture.market.revoke_auditor("op", &req("revoke-1"), &auditor, "contract ended").await.expect("retry of revoke");
    fixture.market.revoke_auditor("op", &req("revoke-2"), &auditor, "again").await.expect("revoke a revoked auditor");
    let events = events_on(&fixture, &auditor).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1], Event::AuditorRevoked { auditor_id: auditor, reason: "contract ended".into() });
}

#[tokio::test]
async fn revoke_an_unknown_or_malformed_auditor_is_refused_and_writes_nothing() {
    let fixture = fixture();
    let unknown = fixture.market.revoke_auditor("op", &req("revoke-1"), &AuditorId::new("a-nobody"), "why").await;
    assert!(matches!(&unknown, Err(AppError::Rejected(Rejection::NotFound { kind: "auditor", .. }))), "{unknown:?}");
    let malformed = fixture.market.revoke_auditor("op", &req("revoke-2"), &AuditorId::new("a.b"), "why").await;
    assert!(matches!(&malformed, Err(AppError::Rejected(Rejection::InvalidArgument { field: "auditor_id", .. }))), "{malformed:?}");
    assert_eq!(fixture.log.last_seq().await.expect("last seq"), Seq(0));
}
