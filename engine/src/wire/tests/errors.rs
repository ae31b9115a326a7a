//! Precise errors: a valid envelope built by hand, broken one field at a time, and the exact
//! `DecodeError` each break must give (missing, invalid, unsupported, another aggregate).
//!
//! What does not live here: randomised damage (`fuzz`), which checks the same errors across
//! every variant.

use super::examples::{envelope_of, example, recorded};
use super::fuzz::{Field, write_fields};
use crate::domain::event::{AggregateKind, AggregateRef, Event, MediaPublished, PreviewClip, Recorded};
use crate::wire::{DecodeError, SCHEMA_VERSION, decode};
use pb::envelope::Event as E;
use prost::Message;
use proto::v1 as pb;

/// A valid Reserved envelope, built by hand; each error test below breaks exactly one
/// thing in it, and `the_base_envelope_decodes` is their negative control.
fn base_envelope() -> pb::Envelope {
    let (event, pb_event) = example(11);
    envelope_of(&recorded(event), pb_event)
}

fn with(change: impl FnOnce(&mut pb::Envelope)) -> Vec<u8> {
    let mut envelope = base_envelope();
    change(&mut envelope);
    envelope.encode_to_vec()
}

/// The envelope of variant `index`'s example with its payload changed by `change`.
fn with_event(index: usize, change: impl FnOnce(&mut E)) -> Vec<u8> {
    let (event, mut pb_event) = example(index);
    change(&mut pb_event);
    envelope_of(&recorded(event), pb_event).encode_to_vec()
}

#[track_caller]
fn assert_invalid(bytes: &[u8], expected_field: &str) {
    match decode(bytes) {
        Err(DecodeError::Invalid { field, .. }) if field == expected_field => {}
        other => panic!("expected Invalid {{ field: {expected_field:?} }}, got {other:?}"),
    }
}

#[test]
fn the_base_envelope_decodes() {
    let (event, _) = example(11);
    assert_eq!(decode(&base_envelope().encode_to_vec()), Ok(recorded(event)));
}

#[test]
fn schema_version_zero_is_missing() {
    assert_eq!(decode(&with(|e| e.schema_version = 0)), Err(DecodeError::Missing("schema_version")));
    // No bytes at all is an envelope with every field at its default.
    assert_eq!(decode(&[]), Err(DecodeError::Missing("schema_version")));
}

#[test]
fn newer_schema_versions_are_unsupported() {
    assert_eq!(decode(&with(|e| e.schema_version = 2)), Err(DecodeError::UnsupportedSchema(2)));
    assert_eq!(decode(&with(|e| e.schema_version = u32::MAX)), Err(DecodeError::UnsupportedSchema(u32::MAX)));
    assert_eq!(SCHEMA_VERSION, 1, "a schema bump needs an upcaster and a new golden test");
}

#[test]
fn missing_parts_are_named() {
    assert_eq!(decode(&with(|e| e.event = None)), Err(DecodeError::Missing("event")));
    assert_eq!(decode(&with(|e| e.aggregate = None)), Err(DecodeError::Missing("aggregate")));
    assert_eq!(decode(&with(|e| e.actor = None)), Err(DecodeError::Missing("actor")));
    assert_eq!(
        decode(&with_event(11, |e| if let E::Reserved(r) = e {
            r.payment = None
        })),
        Err(DecodeError::Missing("payment"))
    );
    assert_eq!(
        decode(&with_event(0, |e| if let E::MediaPublished(m) = e {
            m.terms = None
        })),
        Err(DecodeError::Missing("terms"))
    );
}

#[test]
fn unspecified_enum_values_are_missing() {
    let unspecified_aggregate = with(|e| e.aggregate.as_mut().expect("base has an aggregate").r#type = 0);
    assert_eq!(decode(&unspecified_aggregate), Err(DecodeError::Missing("aggregate.type")));
    let unspecified_actor = with(|e| e.actor.as_mut().expect("base has an actor").kind = 0);
    assert_eq!(decode(&unspecified_actor), Err(DecodeError::Missing("actor.kind")));
    assert_eq!(
        decode(&with_event(13, |e| if let E::Voided(v) = e {
            v.reason = 0
        })),
        Err(DecodeError::Missing("reason"))
    );
    assert_eq!(
        decode(&with_event(24, |e| if let E::HoldReleased(h) = e {
            h.reason = 0
        })),
        Err(DecodeError::Missing("reason"))
    );
    assert_eq!(
        decode(&with_event(12, |e| if let E::Authorized(a) = e {
            a.postings[2].kind = 0
        })),
        Err(DecodeError::Missing("posting.kind"))
    );
}

#[test]
fn unknown_enum_values_are_invalid() {
    for value in [99, 13, -1, i32::MAX, i32::MIN] {
        assert_invalid(&with(|e| e.aggregate.as_mut().expect("base has an aggregate").r#type = value), "aggregate.type");
    }
    for value in [99, 7, -1] {
        assert_invalid(&with(|e| e.actor.as_mut().expect("base has an actor").kind = value), "actor.kind");
    }
    for value in [42, 3, -1] {
        assert_invalid(
            &with_event(13, |e| {
                if let E::Voided(v) = e {
                    v.reason = value
                }
            }),
            "reason",
        );
        assert_invalid(
            &with_event(24, |e| {
                if let E::HoldReleased(h) = e {
                    h.reason = value
                }
            }),
            "reason",
        );
    }
    for value in [42, 6, -1] {
        assert_invalid(
            &with_event(12, |e| {
                if let E::Authorized(a) = e {
                    a.postings[1].kind = value
                }
            }),
            "posting.kind",
        );
        assert_invalid(
            &with_event(13, |e| {
                if let E::Voided(v) = e {
                    v.reversal[0].kind = value
                }
            }),
            "posting.kind",
        );
    }
}

/// Every fixed-size hash in the schema, with the variant whose example carries it and a
/// function that overwrites it in that example's protobuf.
type HashField = (&'static str, usize, fn(&mut E, Vec<u8>));

const HASH_FIELDS: [HashField; 17] = [
    ("credential_hash", 3, |e, b| {
        if let E::MerchantRegistered(m) = e {
            m.credential_hash = b
        }
    }),
    ("credential_hash", 29, |e, b| {
        if let E::AuditorRegistered(a) = e {
            a.credential_hash = b
        }
    }),
    ("credential_hash", 5, |e, b| {
        if let E::NodeRegistered(n) = e {
            n.credential_hash = b
        }
    }),
    ("renditions.content_hash", 0, |e, b| {
        if let E::MediaPublished(m) = e {
            m.renditions[1].content_hash = b
        }
    }),
    ("wrapped_key_hashes", 15, |e, b| {
        if let E::RedemptionAccepted(r) = e {
            r.wrapped_key_hashes[1] = b
        }
    }),
    ("content_hash", 17, |e, b| {
        if let E::Delivered(d) = e {
            d.content_hash = b
        }
    }),
    ("head_y", 20, |e, b| {
        if let E::RightsReportSealed(s) = e {
            s.head_y = b
        }
    }),
    ("head_z", 20, |e, b| {
        if let E::RightsReportSealed(s) = e {
            s.head_z = b
        }
    }),
    ("merkle_root", 20, |e, b| {
        if let E::RightsReportSealed(s) = e {
            s.merkle_root = b
        }
    }),
    ("totals_digest", 20, |e, b| {
        if let E::RightsReportSealed(s) = e {
            s.totals_digest = b
        }
    }),
    ("prev_seal_hash", 20, |e, b| {
        if let E::RightsReportSealed(s) = e {
            s.prev_seal_hash = b
        }
    }),
    ("stream_head", 20, |e, b| {
        if let E::RightsReportSealed(s) = e {
            s.stream_head = b
        }
    }),
    ("tree_root", 20, |e, b| {
        if let E::RightsReportSealed(s) = e {
            s.tree_root = b
        }
    }),
    ("device_public_key_hash", 26, |e, b| {
        if let E::UnitBound(u) = e {
            u.device_public_key_hash = b
        }
    }),
    ("wrapped_key_hash", 26, |e, b| {
        if let E::UnitBound(u) = e {
            u.wrapped_key_hash = b
        }
    }),
    ("challenge_hash", 15, |e, b| {
        if let E::RedemptionAccepted(r) = e {
            r.challenge_hash = b
        }
    }),
    ("consumer_key_hash", 15, |e, b| {
        if let E::RedemptionAccepted(r) = e {
            r.consumer_key_hash = b
        }
    }),
];

/// Hashes that events written before the field existed lack: empty decodes as absent.
const OPTIONAL_HASH_FIELDS: [&str; 3] = ["wrapped_key_hash", "challenge_hash", "consumer_key_hash"];

#[test]
fn hashes_of_the_wrong_length_are_invalid() {
    for (field, index, set) in HASH_FIELDS {
        // Negative control: a fresh 32-byte value in the same place decodes.
        let (event, _) = example(index);
        let fine = with_event(index, |e| set(e, vec![0xab; 32]));
        assert!(decode(&fine).is_ok(), "{field} of {}: 32 bytes must decode", event.name());
        if OPTIONAL_HASH_FIELDS.contains(&field) {
            let absent = with_event(index, |e| set(e, Vec::new()));
            assert!(decode(&absent).is_ok(), "{field} of {}: absent decodes", event.name());
        }
        for len in [31, 33, 0, 16] {
            if len == 0 && OPTIONAL_HASH_FIELDS.contains(&field) {
                continue;
            }
            let bytes = with_event(index, |e| set(e, vec![0xab; len]));
            match decode(&bytes) {
                Err(DecodeError::Invalid { field: got, reason }) => {
                    assert_eq!(got, field, "{} with a {len}-byte {field}", event.name());
                    assert!(reason.contains("32") && reason.contains(&len.to_string()), "{field}: {reason}");
                }
                other => panic!("{} with a {len}-byte {field}: expected Invalid, got {other:?}", event.name()),
            }
        }
    }
}

#[test]
fn event_ids_other_than_16_bytes_are_invalid() {
    for len in [15, 17, 0, 32] {
        match decode(&with(|e| e.event_id = vec![7; len])) {
            Err(DecodeError::Invalid { field: "event_id", reason }) => assert!(reason.contains(&len.to_string()), "{reason}"),
            other => panic!("a {len}-byte event id: expected Invalid, got {other:?}"),
        }
    }
}

#[test]
fn an_envelope_naming_another_aggregate_is_refused() {
    let voucher = AggregateRef::new(AggregateKind::Voucher, "vou-1");
    let other_id = with(|e| e.aggregate = Some(pb::AggregateRef { r#type: pb::AggregateType::Voucher as i32, id: "vou-2".into() }));
    assert_eq!(decode(&other_id), Err(DecodeError::WrongAggregate { named: AggregateRef::new(AggregateKind::Voucher, "vou-2"), actual: voucher.clone() }));
    let other_kind = with(|e| e.aggregate = Some(pb::AggregateRef { r#type: pb::AggregateType::Media as i32, id: "vou-1".into() }));
    assert_eq!(decode(&other_kind), Err(DecodeError::WrongAggregate { named: AggregateRef::new(AggregateKind::Media, "vou-1"), actual: voucher }));
    // Events with a fixed aggregate id are checked too.
    let (sealed, pb_sealed) = example(20);
    let mut envelope = envelope_of(&recorded(sealed), pb_sealed);
    envelope.aggregate = Some(pb::AggregateRef { r#type: pb::AggregateType::Report as i32, id: "other".into() });
    assert_eq!(
        decode(&envelope.encode_to_vec()),
        Err(DecodeError::WrongAggregate {
            named: AggregateRef::new(AggregateKind::Report, "other"),
            actual: AggregateRef::new(AggregateKind::Report, "rights"),
        })
    );
}

#[test]
fn bytes_that_are_not_protobuf_are_refused() {
    // Wire type 7 does not exist.
    assert!(matches!(decode(&[0xff]), Err(DecodeError::Protobuf(_))));
    // A length running past the end.
    assert!(matches!(decode(&[0x08, 0x01, 0x32, 0x05, b'a']), Err(DecodeError::Protobuf(_))));
    // request_id (field 6) that is not UTF-8.
    assert!(matches!(decode(&[0x08, 0x01, 0x32, 0x01, 0xff]), Err(DecodeError::Protobuf(_))));
    // A varint longer than ten bytes.
    assert!(matches!(decode(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(DecodeError::Protobuf(_))));
}

#[test]
fn unknown_fields_are_ignored_but_unknown_events_are_missing() {
    // proto3: a field this build does not know (here 15) is skipped, so a v1 writer may
    // add optional metadata without breaking older readers.
    let (event, _) = example(11);
    let mut bytes = base_envelope().encode_to_vec();
    bytes.extend(write_fields(&[Field::Varint(15, 3), Field::Bytes(19, b"future".to_vec())]));
    assert_eq!(decode(&bytes), Ok(recorded(event)));
    // An event in a oneof member this build does not know (here 999; events are numbered
    // upward from 20) leaves `event` unset: it is refused as missing, never mistaken for
    // another event.
    let mut unknown_event = with(|e| e.event = None);
    unknown_event.extend(write_fields(&[Field::Bytes(999, write_fields(&[Field::Bytes(1, b"x".to_vec())]))]));
    assert_eq!(decode(&unknown_event), Err(DecodeError::Missing("event")));
}

#[test]
fn a_media_published_without_preview_decodes_as_no_preview_clip() {
    // Pins current behaviour: `terms` is required but a missing `preview` is read as a
    // zero clip (`unwrap_or_default` in wire.rs). encode always writes `preview`, so only
    // a foreign writer could omit it.
    let (event, _) = example(0);
    let bytes = with_event(0, |e| {
        if let E::MediaPublished(m) = e {
            m.preview = None
        }
    });
    let Ok(Recorded { event: Event::MediaPublished(decoded), .. }) = decode(&bytes) else {
        panic!("a MediaPublished without preview must decode");
    };
    let Event::MediaPublished(original) = event else { unreachable!("example 0 is MediaPublished") };
    assert_eq!(decoded, MediaPublished { preview: PreviewClip::default(), ..original });
}
