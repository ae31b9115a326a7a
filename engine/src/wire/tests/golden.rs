//! Stability: golden encodings pin the bytes of schema version 1, and those bytes still
//! decode to the same events; changing the encoding of a stored event breaks these tests.
//!
//! What does not live here: round trips (`roundtrip`), which a change consistent in both
//! directions would still pass.

use super::examples::hash;
use crate::domain::event::{Actor, ActorKind, AggregateKind, AggregateRef, Event, Payment, Recorded, ReservedItem};
use crate::ids::{AuditorId, MediaId, MerchantId, Millis, VoucherId};
use crate::wire::{decode, encode};
use pb::envelope::Event as E;
use proto::v1 as pb;

pub(super) fn golden_reserved_event() -> Event {
    Event::Reserved {
        voucher_id: VoucherId::new("vou-1"),
        merchant_id: MerchantId::new("mer-1"),
        items: vec![ReservedItem { media_id: MediaId::new("med-1"), price_minor: 100 }, ReservedItem { media_id: MediaId::new("med-2"), price_minor: 29 }],
        rendition: "high".into(),
        price_minor: 129,
        currency: "EUR".into(),
        expires_at: Millis(1_767_225_900_000),
        payment: Payment::Merchant { payment_ref: "pay-1".into() },
        token_key_id: 3,
        auth_generation: 4,
        rental_ms: 0,
    }
}

pub(super) fn golden_reserved_pb() -> E {
    E::Reserved(pb::Reserved {
        voucher_id: "vou-1".into(),
        merchant_id: "mer-1".into(),
        items: vec![pb::ReservedItem { media_id: "med-1".into(), price_minor: 100 }, pb::ReservedItem { media_id: "med-2".into(), price_minor: 29 }],
        rendition: "high".into(),
        price_minor: 129,
        currency: "EUR".into(),
        expires_at_ms: 1_767_225_900_000,
        payment: Some(pb::reserved::Payment::Merchant(pb::MerchantPayment { payment_ref: "pay-1".into() })),
        token_key_id: 3,
        auth_generation: 4,
        rental_ms: 0,
    })
}

fn golden_recorded() -> Recorded {
    Recorded {
        event_id: [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
        aggregate: AggregateRef::new(AggregateKind::Voucher, "vou-1"),
        aggregate_version: 1,
        recorded_at: Millis(1_767_225_600_000),
        request_id: "req-1".into(),
        actor: Actor::new(ActorKind::Merchant, "mer-1"),
        command: "Reserve".into(),
        event: golden_reserved_event(),
    }
}

/// The schema-version-1 bytes of `golden_recorded`. Update only together with a
/// `schema_version` bump and an upcaster in wire.rs that still reads these bytes: events
/// already in the stream are never rewritten.
const GOLDEN_RESERVED_V1: &str = concat!(
    "0801121000112233445566778899aabbccddeeff1a0908011205766f752d3120012880d0eab6b73332057265712d313a09080212056d65722d31",
    "420752657365727665f201460a05766f752d3112056d65722d311a090a056d65642d3110641a090a056d65642d32101d220468696768288101",
    "320345555238e0f7fcb6b73342070a057061792d3150035804",
);

#[test]
fn golden_reserved_encoding_is_stable() {
    assert_eq!(hex::encode(encode(&golden_recorded())), GOLDEN_RESERVED_V1, "the wire format of schema version 1 changed");
}

#[test]
fn golden_reserved_bytes_still_decode() {
    let bytes = hex::decode(GOLDEN_RESERVED_V1).expect("the golden constant is hex");
    assert_eq!(decode(&bytes), Ok(golden_recorded()));
}

/// The auditor's events as the operator records them: the first events to use envelope
/// fields 49 and 50 and aggregate type 11.
fn golden_auditor_recorded() -> [Recorded; 2] {
    let auditor_id = AuditorId::new("aud-1");
    let recorded = |aggregate_version: u64, command: &str, event: Event| Recorded {
        event_id: [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
        aggregate: AggregateRef::new(AggregateKind::Auditor, "aud-1"),
        aggregate_version,
        recorded_at: Millis(1_767_225_600_000),
        request_id: format!("req-{aggregate_version}"),
        actor: Actor::new(ActorKind::Operator, "op-1"),
        command: command.into(),
        event,
    };
    [
        recorded(1, "RegisterAuditor", Event::AuditorRegistered { auditor_id: auditor_id.clone(), name: "Licensing Center".into(), credential_hash: hash(8) }),
        recorded(2, "RevokeAuditor", Event::AuditorRevoked { auditor_id, reason: "contract ended".into() }),
    ]
}

/// The schema-version-1 bytes of `golden_auditor_recorded`, under the same rule as
/// `GOLDEN_RESERVED_V1`.
const GOLDEN_AUDITOR_V1: [&str; 2] = [
    concat!(
        "0801121000112233445566778899aabbccddeeff1a09080b12056175642d3120012880d0eab6b73332057265712d313a08080112046f702d31",
        "420f526567697374657241756469746f728a033b0a056175642d3112104c6963656e73696e672043656e7465721a2028292a2b2c2d2e2f3031",
        "32333435363738393a3b3c3d3e3f4041424344454647",
    ),
    concat!(
        "0801121000112233445566778899aabbccddeeff1a09080b12056175642d3120022880d0eab6b73332057265712d323a08080112046f702d31",
        "420d5265766f6b6541756469746f729203170a056175642d31120e636f6e747261637420656e646564",
    ),
];

#[test]
fn golden_auditor_encodings_are_stable() {
    for (recorded, golden) in golden_auditor_recorded().iter().zip(GOLDEN_AUDITOR_V1) {
        assert_eq!(hex::encode(encode(recorded)), golden, "the wire format of {} changed", recorded.event.name());
    }
}

#[test]
fn golden_auditor_bytes_still_decode() {
    for (recorded, golden) in golden_auditor_recorded().into_iter().zip(GOLDEN_AUDITOR_V1) {
        let bytes = hex::decode(golden).expect("the golden constant is hex");
        assert_eq!(decode(&bytes), Ok(recorded));
    }
}
