//! Decoding hostile bytes never panics: arbitrary bytes, well-formed protobuf of any shape,
//! mutated and damaged encodings of every variant, bad hashes and enums inside any event,
//! and every truncation and bit flip of every example; where an error is predictable, it is
//! the precise one.
//!
//! What does not live here: the named error for each malformed field of one envelope
//! (`errors`), and the byte-exact encoding (`golden`).

use super::examples::{ACTOR_KINDS, AGGREGATE_KINDS, examples, recorded};
use super::roundtrip::{arb_recorded, config, text};
use crate::domain::event::{Actor, AggregateRef, Recorded};
use crate::wire::{DecodeError, SCHEMA_VERSION, decode, decode_shared, encode};
use pb::envelope::Event as E;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use proto::v1 as pb;

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: Index, bit: u8 },
    Overwrite { at: Index, byte: u8 },
    Insert { at: Index, byte: u8 },
    Delete { at: Index },
    Truncate { at: Index },
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => (any::<Index>(), prop_oneof![any::<u8>(), Just(0x00), Just(0x7f), Just(0x80), Just(0xff)])
            .prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        2 => any::<Index>().prop_map(|at| Mutation::Delete { at }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match mutation {
        Mutation::FlipBit { at, bit } if len > 0 => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Overwrite { at, byte } if len > 0 => bytes[at.index(len)] = *byte,
        Mutation::Insert { at, byte } => bytes.insert(at.index(len + 1), *byte),
        Mutation::Delete { at } if len > 0 => {
            bytes.remove(at.index(len));
        }
        Mutation::Truncate { at } => bytes.truncate(at.index(len + 1)),
        Mutation::FlipBit { .. } | Mutation::Overwrite { .. } | Mutation::Delete { .. } => {}
    }
}

/// Whatever `decode` accepts must be an event `encode` can write and read back unchanged:
/// the decoder never hands the domain a value the wire cannot represent.
fn check_decoded_is_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    // Decoding from a shared payload gives the same event or the same error.
    prop_assert_eq!(decode_shared(&bytes::Bytes::copy_from_slice(bytes)), decode(bytes));
    if let Ok(decoded) = decode(bytes) {
        prop_assert_eq!(&decoded.aggregate, &decoded.event.aggregate());
        prop_assert_eq!(decode(&encode(&decoded)), Ok(decoded));
    }
    Ok(())
}

/// One protobuf field with a chosen number and an arbitrary payload of any wire type.
#[derive(Clone, Debug)]
pub(super) enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
}

/// Field numbers weighted towards the envelope's and events' real ones (1..=11 and
/// 20..=48), so that the decoder gets past the first byte and into the event payloads.
fn field_number() -> impl Strategy<Value = u32> {
    prop_oneof![6 => 1u32..=11, 6 => 20u32..=51, 1 => 1u32..=536_870_911]
}

fn arb_field(payload: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Field> {
    prop_oneof![
        3 => (field_number(), prop_oneof![0u64..4, Just(99), Just(u64::MAX), any::<u64>()]).prop_map(|(n, v)| Field::Varint(n, v)),
        1 => (field_number(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
        1 => (field_number(), any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        4 => (field_number(), payload).prop_map(|(n, v)| Field::Bytes(n, v)),
    ]
}

pub(super) fn write_fields(fields: &[Field]) -> Vec<u8> {
    let mut buf = Vec::new();
    for field in fields {
        match field {
            Field::Varint(number, value) => {
                encode_key(*number, WireType::Varint, &mut buf);
                encode_varint(*value, &mut buf);
            }
            Field::Fixed64(number, value) => {
                encode_key(*number, WireType::SixtyFourBit, &mut buf);
                buf.extend_from_slice(&value.to_le_bytes());
            }
            Field::Fixed32(number, value) => {
                encode_key(*number, WireType::ThirtyTwoBit, &mut buf);
                buf.extend_from_slice(&value.to_le_bytes());
            }
            Field::Bytes(number, value) => {
                encode_key(*number, WireType::LengthDelimited, &mut buf);
                encode_varint(value.len() as u64, &mut buf);
                buf.extend_from_slice(value);
            }
        }
    }
    buf
}

/// Well-formed protobuf of the wrong shape: random fields, nested one level (a
/// length-delimited payload is raw bytes, text, 32 bytes, or itself a field soup), behind
/// `schema_version = 1` most of the time so the decoder reaches the envelope's contents.
fn field_soup() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![vec(any::<u8>(), 0..40), "[a-z0-9-]{0,8}".prop_map(String::into_bytes), vec(any::<u8>(), 32..=32)].boxed();
    let inner = vec(arb_field(leaf.clone()), 0..10).prop_map(|fields| write_fields(&fields));
    let payload = prop_oneof![2 => leaf, 3 => inner].boxed();
    (any::<bool>(), any::<bool>(), vec(arb_field(payload), 0..14)).prop_map(|(versioned, event_id, fields)| {
        let mut prefix = Vec::new();
        if versioned {
            prefix.push(Field::Varint(1, u64::from(SCHEMA_VERSION)));
        }
        if event_id {
            prefix.push(Field::Bytes(2, vec![0x42; 16]));
        }
        prefix.extend(fields);
        write_fields(&prefix)
    })
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..4096)) {
        check_decoded_is_canonical(&bytes)?;
    }

    #[test]
    fn well_formed_protobuf_of_any_shape_never_panics(bytes in field_soup()) {
        check_decoded_is_canonical(&bytes)?;
    }
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn mutated_encodings_never_panic(recorded in arb_recorded(), mutations in vec(arb_mutation(), 1..6)) {
        let mut bytes = encode(&recorded);
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        check_decoded_is_canonical(&bytes)?;
    }
}

/// One thing wrong with an otherwise valid envelope of any event.
#[derive(Clone, Debug)]
enum Damage {
    SchemaVersion(u32),
    NoAggregate,
    AggregateType(i32),
    AggregateId(String),
    NoActor,
    ActorKind(i32),
    EventIdBytes(usize),
    NoEvent,
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    let enum_value = || prop_oneof![-2i32..=12, any::<i32>()];
    prop_oneof![
        prop_oneof![0u32..=3, any::<u32>()].prop_map(Damage::SchemaVersion),
        Just(Damage::NoAggregate),
        enum_value().prop_map(Damage::AggregateType),
        text().prop_map(Damage::AggregateId),
        Just(Damage::NoActor),
        enum_value().prop_map(Damage::ActorKind),
        (0usize..=33).prop_map(Damage::EventIdBytes),
        Just(Damage::NoEvent),
    ]
}

/// What `decode` must answer for `recorded`'s envelope with `damage` done to it, worked out
/// from the schema alone.
fn expected_after(recorded: &Recorded, damage: &Damage) -> Result<Recorded, DecodeError> {
    let aggregate_kind_of = |value: i32| AGGREGATE_KINDS.iter().find(|(_, pb_kind)| *pb_kind as i32 == value).map(|(kind, _)| *kind);
    let actor_kind_of = |value: i32| ACTOR_KINDS.iter().find(|(_, pb_kind)| *pb_kind as i32 == value).map(|(kind, _)| *kind);
    let invalid = |field: &'static str, value: i32| DecodeError::Invalid { field, reason: format!("unknown enum value {value}") };
    let wrong = |named: AggregateRef| DecodeError::WrongAggregate { named, actual: recorded.aggregate.clone() };
    match damage {
        Damage::SchemaVersion(1) => Ok(recorded.clone()),
        Damage::SchemaVersion(0) => Err(DecodeError::Missing("schema_version")),
        Damage::SchemaVersion(newer) => Err(DecodeError::UnsupportedSchema(*newer)),
        Damage::NoAggregate => Err(DecodeError::Missing("aggregate")),
        Damage::AggregateType(0) => Err(DecodeError::Missing("aggregate.type")),
        Damage::AggregateType(value) => match aggregate_kind_of(*value) {
            Some(kind) if kind == recorded.aggregate.kind => Ok(recorded.clone()),
            Some(kind) => Err(wrong(AggregateRef::new(kind, recorded.aggregate.id.clone()))),
            None => Err(invalid("aggregate.type", *value)),
        },
        Damage::AggregateId(id) if *id == recorded.aggregate.id => Ok(recorded.clone()),
        Damage::AggregateId(id) => Err(wrong(AggregateRef::new(recorded.aggregate.kind, id.clone()))),
        Damage::NoActor => Err(DecodeError::Missing("actor")),
        Damage::ActorKind(0) => Err(DecodeError::Missing("actor.kind")),
        Damage::ActorKind(value) => match actor_kind_of(*value) {
            Some(kind) => Ok(Recorded { actor: Actor::new(kind, recorded.actor.id.clone()), ..recorded.clone() }),
            None => Err(invalid("actor.kind", *value)),
        },
        Damage::EventIdBytes(16) => Ok(Recorded { event_id: [0x5e; 16], ..recorded.clone() }),
        Damage::EventIdBytes(len) => Err(DecodeError::Invalid { field: "event_id", reason: format!("must be 16 bytes, not {len}") }),
        Damage::NoEvent => Err(DecodeError::Missing("event")),
    }
}

fn damage(envelope: &mut pb::Envelope, damage: &Damage) {
    match damage {
        Damage::SchemaVersion(version) => envelope.schema_version = *version,
        Damage::NoAggregate => envelope.aggregate = None,
        Damage::AggregateType(value) => envelope.aggregate.as_mut().expect("encode writes an aggregate").r#type = *value,
        Damage::AggregateId(id) => envelope.aggregate.as_mut().expect("encode writes an aggregate").id = id.clone(),
        Damage::NoActor => envelope.actor = None,
        Damage::ActorKind(value) => envelope.actor.as_mut().expect("encode writes an actor").kind = *value,
        Damage::EventIdBytes(len) => envelope.event_id = vec![0x5e; *len],
        Damage::NoEvent => envelope.event = None,
    }
}

proptest! {
    #![proptest_config(config(1500))]

    /// The precise errors of the hand-built tests below, for envelopes of every variant.
    #[test]
    fn a_damaged_envelope_of_any_event_gets_its_precise_error(recorded in arb_recorded(), what in arb_damage()) {
        let mut envelope = pb::Envelope::decode(encode(&recorded).as_slice()).expect("encode writes a protobuf envelope");
        damage(&mut envelope, &what);
        prop_assert_eq!(decode(&envelope.encode_to_vec()), expected_after(&recorded, &what));
    }
}

/// Hash fields that events written before them lack: empty means absent.
const OPTIONAL_HASHES: [&str; 4] = ["wrapped_key_hash", "challenge_hash", "consumer_key_hash", "authorization_nonce_hash"];

/// The 32-byte fields of a protobuf event, each with the name `DecodeError` gives it. The
/// `match` has no wildcard arm, so a new event forces a look at its fixed-size fields.
fn hash_fields(event: &mut E) -> Vec<(&'static str, &mut Vec<u8>)> {
    match event {
        E::MediaPublished(m) => m.renditions.iter_mut().map(|r| ("renditions.content_hash", &mut r.content_hash)).collect(),
        E::MerchantRegistered(m) => vec![("credential_hash", &mut m.credential_hash)],
        E::AuditorRegistered(a) => vec![("credential_hash", &mut a.credential_hash)],
        E::PublisherRegistered(p) => vec![("credential_hash", &mut p.credential_hash)],
        E::NodeRegistered(n) => vec![("credential_hash", &mut n.credential_hash)],
        E::RedemptionAccepted(r) => r
            .wrapped_key_hashes
            .iter_mut()
            .map(|h| ("wrapped_key_hashes", h))
            .chain([("challenge_hash", &mut r.challenge_hash), ("consumer_key_hash", &mut r.consumer_key_hash)])
            .collect(),
        E::Delivered(d) => vec![("content_hash", &mut d.content_hash)],
        E::CopyRecovered(c) => vec![("copy_recovered.challenge_hash", &mut c.challenge_hash), ("copy_recovered.consumer_key_hash", &mut c.consumer_key_hash)],
        E::RightsReportSealed(s) => vec![
            ("head_y", &mut s.head_y),
            ("head_z", &mut s.head_z),
            ("merkle_root", &mut s.merkle_root),
            ("totals_digest", &mut s.totals_digest),
            ("prev_seal_hash", &mut s.prev_seal_hash),
            // Not `tree_root`: it is read only when the seal has a checkpoint (errors.rs).
            ("stream_head", &mut s.stream_head),
        ],
        E::UnitBound(u) => vec![("device_public_key_hash", &mut u.device_public_key_hash), ("wrapped_key_hash", &mut u.wrapped_key_hash)],
        E::PointsHeld(p) => vec![("authorization_nonce_hash", &mut p.authorization_nonce_hash)],
        E::MediaWithdrawn(_)
        | E::PriceChanged(_)
        | E::MerchantSuspended(_)
        | E::MerchantReinstated(_)
        | E::AuditorRevoked(_)
        | E::PublisherKeyAdded(_)
        | E::AccessLapsed(_)
        | E::AccessRenewed(_)
        | E::RentalPlayEnded(_)
        | E::NodeCapacityChanged(_)
        | E::SlotsLeased(_)
        | E::SlotsWanted(_)
        | E::NodeDrained(_)
        | E::NodeRemoved(_)
        | E::ConsumerCertified(_)
        | E::CertRevoked(_)
        | E::Reserved(_)
        | E::Authorized(_)
        | E::Voided(_)
        | E::Refunded(_)
        | E::VoucherIssued(_)
        | E::DeliveryFailed(_)
        | E::PreviewStarted(_)
        | E::PreviewEnded(_)
        | E::PointsCredited(_)
        | E::HoldPosted(_)
        | E::HoldReleased(_)
        | E::OrderPlaced(_)
        | E::UnitCompleted(_)
        | E::ConfigChanged(_)
        | E::EngineKeyRotated(_)
        | E::EngineKeyRevoked(_)
        | E::TokenKeyRotated(_)
        | E::CheckpointKeyRotated(_)
        | E::MerchantRentalWindowSet(_) => vec![],
    }
}

/// The enum fields of a protobuf event: the name `DecodeError` gives each, and the largest
/// value the schema defines for it. No wildcard arm, as in `hash_fields`.
fn enum_fields(event: &mut E) -> Vec<(&'static str, &mut i32, i32)> {
    let ledger_max = pb::LedgerAccountKind::Owner as i32;
    let void_max = pb::VoidReason::TimedOut as i32;
    match event {
        E::Authorized(a) => a.postings.iter_mut().map(|p| ("posting.kind", &mut p.kind, ledger_max)).collect(),
        E::Voided(v) => {
            std::iter::once(("reason", &mut v.reason, void_max)).chain(v.reversal.iter_mut().map(|p| ("posting.kind", &mut p.kind, ledger_max))).collect()
        }
        E::Refunded(r) => r.reversal.iter_mut().map(|p| ("posting.kind", &mut p.kind, ledger_max)).collect(),
        E::HoldReleased(h) => vec![("reason", &mut h.reason, void_max)],
        E::MediaPublished(_)
        | E::MediaWithdrawn(_)
        | E::PriceChanged(_)
        | E::MerchantRegistered(_)
        | E::MerchantSuspended(_)
        | E::MerchantReinstated(_)
        | E::AuditorRegistered(_)
        | E::AuditorRevoked(_)
        | E::PublisherRegistered(_)
        | E::PublisherKeyAdded(_)
        | E::AccessLapsed(_)
        | E::AccessRenewed(_)
        | E::RentalPlayEnded(_)
        | E::NodeRegistered(_)
        | E::NodeCapacityChanged(_)
        | E::SlotsLeased(_)
        | E::SlotsWanted(_)
        | E::NodeDrained(_)
        | E::NodeRemoved(_)
        | E::ConsumerCertified(_)
        | E::CertRevoked(_)
        | E::Reserved(_)
        | E::VoucherIssued(_)
        | E::RedemptionAccepted(_)
        | E::CopyRecovered(_)
        | E::DeliveryFailed(_)
        | E::Delivered(_)
        | E::PreviewStarted(_)
        | E::PreviewEnded(_)
        | E::RightsReportSealed(_)
        | E::PointsCredited(_)
        | E::PointsHeld(_)
        | E::HoldPosted(_)
        | E::OrderPlaced(_)
        | E::UnitBound(_)
        | E::UnitCompleted(_)
        | E::ConfigChanged(_)
        | E::EngineKeyRotated(_)
        | E::EngineKeyRevoked(_)
        | E::TokenKeyRotated(_)
        | E::CheckpointKeyRotated(_)
        | E::MerchantRentalWindowSet(_) => vec![],
    }
}

proptest! {
    // Events with neither a hash nor an enum are not this property's cases: they are
    // skipped and others drawn (`prop_assume!`), so every counted case tests something.
    #![proptest_config(ProptestConfig { max_global_rejects: 20_000, ..config(2000) })]

    /// One hash resized, or one enum set to any value, anywhere inside any event.
    #[test]
    fn a_bad_hash_or_enum_inside_any_event_gets_its_precise_error(
        recorded in arb_recorded(),
        which in any::<Index>(),
        len in prop_oneof![Just(32usize), 0usize..=64],
        value in prop_oneof![-1i32..=7, any::<i32>()],
    ) {
        let mut envelope = pb::Envelope::decode(encode(&recorded).as_slice()).expect("encode writes a protobuf envelope");
        let event = envelope.event.as_mut().expect("encode writes the event");
        let mut hashes = hash_fields(event);
        let expected = if !hashes.is_empty() {
            let at = which.index(hashes.len());
            let (field, bytes) = &mut hashes[at];
            **bytes = vec![0x5e; len];
            // Hashes that older events lack decode as absent when empty.
            let optional = OPTIONAL_HASHES.contains(field) && len == 0;
            (len != 32 && !optional).then(|| DecodeError::Invalid { field, reason: format!("must be 32 bytes, not {len}") })
        } else {
            let mut enums = enum_fields(event);
            prop_assume!(!enums.is_empty(), "the event has neither a hash nor an enum");
            let at = which.index(enums.len());
            let (field, slot, max) = &mut enums[at];
            **slot = value;
            match value {
                0 => Some(DecodeError::Missing(field)),
                valid if (1..=*max).contains(&valid) => None,
                unknown => Some(DecodeError::Invalid { field, reason: format!("unknown enum value {unknown}") }),
            }
        };
        let bytes = envelope.encode_to_vec();
        match expected {
            Some(error) => prop_assert_eq!(decode(&bytes), Err(error)),
            None => {
                prop_assert!(decode(&bytes).is_ok());
                check_decoded_is_canonical(&bytes)?;
            }
        }
    }
}

#[test]
fn every_truncation_and_single_bit_flip_of_every_example_is_handled() {
    for (event, _) in examples() {
        let event_name = event.name();
        let bytes = encode(&recorded(event));
        for len in 0..bytes.len() {
            assert!(check_decoded_is_canonical(&bytes[..len]).is_ok(), "{event_name}: first {len} bytes");
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                assert!(check_decoded_is_canonical(&flipped).is_ok(), "{event_name}: byte {at} bit {bit}");
            }
        }
    }
}
