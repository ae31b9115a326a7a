//! Tests of `engine::wire`: every event survives `encode` → `decode` unchanged, each domain
//! field lands in the protobuf field the schema names for it, arbitrary and mutated bytes
//! never panic the decoder, every malformed envelope fails with its precise `DecodeError`,
//! and a golden encoding pins the bytes of schema version 1.
//!
//! What does not live here: how the log backends store these bytes (the EventLog
//! conformance suite) and whether an event's contents make sense (the domain's `decide`).

use super::{DecodeError, SCHEMA_VERSION, decode, decode_shared, encode};
use crate::domain::event::{
    Actor, ActorKind, AggregateKind, AggregateRef, Event, LedgerAccountKind, MediaPublished, Payment, Posting, PreviewClip,
    Recorded, Rendition, ReservedItem, RightsReportSealed, RoyaltyTerms, VoidReason,
};
use crate::ids::{AccountId, AuditorId, CertSerial, ConsumerId, MediaId, MerchantId, Millis, NodeId, OrderId, PreviewId, VoucherId};
use pb::envelope::Event as E;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use proto::v1 as pb;
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------
// Every variant, by hand
// ---------------------------------------------------------------------------------------

/// How many variants `Event` has. Adding a variant stops `variant_index` from compiling:
/// give the new variant the next index, raise this count, add a hand-written example with
/// its protobuf counterpart to `examples` and an arm to `arb_event`.
const VARIANT_COUNT: usize = 31;

/// The position of an event's variant, by a `match` with no wildcard arm, so that a new
/// variant cannot be added without these tests being told about it.
fn variant_index(event: &Event) -> usize {
    match event {
        Event::MediaPublished(_) => 0,
        Event::MediaWithdrawn { .. } => 1,
        Event::PriceChanged { .. } => 2,
        Event::MerchantRegistered { .. } => 3,
        Event::MerchantSuspended { .. } => 4,
        Event::NodeRegistered { .. } => 5,
        Event::NodeCapacityChanged { .. } => 6,
        Event::NodeDrained { .. } => 7,
        Event::NodeRemoved { .. } => 8,
        Event::ConsumerCertified { .. } => 9,
        Event::CertRevoked { .. } => 10,
        Event::Reserved { .. } => 11,
        Event::Authorized { .. } => 12,
        Event::Voided { .. } => 13,
        Event::VoucherIssued { .. } => 14,
        Event::RedemptionAccepted { .. } => 15,
        Event::DeliveryFailed { .. } => 16,
        Event::Delivered { .. } => 17,
        Event::PreviewStarted { .. } => 18,
        Event::PreviewEnded { .. } => 19,
        Event::RightsReportSealed(_) => 20,
        Event::PointsCredited { .. } => 21,
        Event::PointsHeld { .. } => 22,
        Event::HoldPosted { .. } => 23,
        Event::HoldReleased { .. } => 24,
        Event::OrderPlaced { .. } => 25,
        Event::UnitBound { .. } => 26,
        Event::UnitCompleted { .. } => 27,
        Event::ConfigChanged { .. } => 28,
        Event::AuditorRegistered { .. } => 29,
        Event::AuditorRevoked { .. } => 30,
    }
}

/// The schema's names for each aggregate kind, written out here independently of
/// `wire.rs` so that a swapped mapping (consistent in both directions, and so invisible to
/// a round trip) is caught.
const AGGREGATE_KINDS: [(AggregateKind, pb::AggregateType); 11] = [
    (AggregateKind::Voucher, pb::AggregateType::Voucher),
    (AggregateKind::Media, pb::AggregateType::Media),
    (AggregateKind::Merchant, pb::AggregateType::Merchant),
    (AggregateKind::Node, pb::AggregateType::Node),
    (AggregateKind::Consumer, pb::AggregateType::Consumer),
    (AggregateKind::Account, pb::AggregateType::Account),
    (AggregateKind::Order, pb::AggregateType::Order),
    (AggregateKind::Preview, pb::AggregateType::Preview),
    (AggregateKind::Report, pb::AggregateType::Report),
    (AggregateKind::Config, pb::AggregateType::Config),
    (AggregateKind::Auditor, pb::AggregateType::Auditor),
];

const ACTOR_KINDS: [(ActorKind, pb::ActorKind); 6] = [
    (ActorKind::Operator, pb::ActorKind::Operator),
    (ActorKind::Merchant, pb::ActorKind::Merchant),
    (ActorKind::Node, pb::ActorKind::Node),
    (ActorKind::Publisher, pb::ActorKind::Publisher),
    (ActorKind::Auditor, pb::ActorKind::Auditor),
    (ActorKind::Engine, pb::ActorKind::Engine),
];

const LEDGER_KINDS: [LedgerAccountKind; 5] = [
    LedgerAccountKind::ConsumerPoints,
    LedgerAccountKind::MerchantClearing,
    LedgerAccountKind::Retailer,
    LedgerAccountKind::Distributor,
    LedgerAccountKind::Owner,
];

const VOID_REASONS: [VoidReason; 2] = [VoidReason::Refunded, VoidReason::TimedOut];

fn pb_aggregate(aggregate: &AggregateRef) -> pb::AggregateRef {
    let (_, kind) = AGGREGATE_KINDS.iter().find(|(kind, _)| *kind == aggregate.kind).expect("every aggregate kind is listed");
    pb::AggregateRef { r#type: *kind as i32, id: aggregate.id.clone() }
}

fn pb_actor(actor: &Actor) -> pb::Actor {
    let (_, kind) = ACTOR_KINDS.iter().find(|(kind, _)| *kind == actor.kind).expect("every actor kind is listed");
    pb::Actor { kind: *kind as i32, id: actor.id.clone() }
}

/// A 32-byte value whose bytes differ from each other and from other seeds' values, so a
/// hash written into the wrong field (or reversed) is noticed.
fn hash(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| seed.wrapping_mul(37).wrapping_add(i as u8))
}

fn posting(kind: LedgerAccountKind, account: &str, debit_minor: u64, credit_minor: u64) -> Posting {
    Posting { kind, account: account.to_string(), debit_minor, credit_minor }
}

fn pb_posting(kind: pb::LedgerAccountKind, account: &str, debit_minor: u64, credit_minor: u64) -> pb::Posting {
    pb::Posting { kind: kind as i32, account: account.to_string(), debit_minor, credit_minor }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

/// One hand-written value of every variant (some twice, to reach both arms of a nested
/// enum), each with the protobuf message the schema says it becomes. Every field has a
/// distinct value so that two fields swapped by the codec are caught.
fn examples() -> Vec<(Event, E)> {
    vec![
        (
            Event::MediaPublished(MediaPublished {
                media_id: MediaId::new("med-1"),
                publisher: "pub-1".into(),
                title: "Título ♪ 歌".into(),
                artist: "The Artist".into(),
                authors: strings(&["author-a", "author-b"]),
                length_ms: 215_000,
                price_minor: 129,
                currency: "EUR".into(),
                terms: RoyaltyTerms {
                    retailer_bps: 3000,
                    distributor_bps: 2000,
                    owner_bps: 5000,
                    distributor: "dist-1".into(),
                    owner: "own-1".into(),
                    rights_agent: "agent-1".into(),
                },
                renditions: vec![
                    Rendition { name: "low".into(), bitrate_kbps: 128, content_hash: hash(1), size_bytes: 3_000_000 },
                    Rendition { name: "high".into(), bitrate_kbps: 320, content_hash: hash(2), size_bytes: 8_000_000 },
                ],
                preview: PreviewClip { start_ms: 30_000, duration_ms: 15_000 },
                image_descriptor: "img:cover-1".into(),
                for_sale: true,
                engine_key_id: "ek-1".into(),
                wrapped_media_key: vec![9, 8, 7, 6],
            }),
            E::MediaPublished(pb::MediaPublished {
                media_id: "med-1".into(),
                publisher: "pub-1".into(),
                title: "Título ♪ 歌".into(),
                artist: "The Artist".into(),
                authors: strings(&["author-a", "author-b"]),
                length_ms: 215_000,
                price_minor: 129,
                currency: "EUR".into(),
                terms: Some(pb::RoyaltyTerms {
                    retailer_bps: 3000,
                    distributor_bps: 2000,
                    owner_bps: 5000,
                    distributor: "dist-1".into(),
                    owner: "own-1".into(),
                    rights_agent: "agent-1".into(),
                }),
                renditions: vec![
                    pb::Rendition { name: "low".into(), bitrate_kbps: 128, content_hash: hash(1).to_vec(), size_bytes: 3_000_000 },
                    pb::Rendition { name: "high".into(), bitrate_kbps: 320, content_hash: hash(2).to_vec(), size_bytes: 8_000_000 },
                ],
                preview: Some(pb::PreviewClip { start_ms: 30_000, duration_ms: 15_000 }),
                image_descriptor: "img:cover-1".into(),
                for_sale: true,
                engine_key_id: "ek-1".into(),
                wrapped_media_key: vec![9, 8, 7, 6],
            }),
        ),
        (
            Event::MediaWithdrawn { media_id: MediaId::new("med-1"), reason: "takedown notice".into() },
            E::MediaWithdrawn(pb::MediaWithdrawn { media_id: "med-1".into(), reason: "takedown notice".into() }),
        ),
        (
            Event::PriceChanged { media_id: MediaId::new("med-1"), price_minor: 199 },
            E::PriceChanged(pb::PriceChanged { media_id: "med-1".into(), price_minor: 199 }),
        ),
        (
            Event::MerchantRegistered { merchant_id: MerchantId::new("mer-1"), name: "Record Shop".into(), credential_hash: hash(3) },
            E::MerchantRegistered(pb::MerchantRegistered {
                merchant_id: "mer-1".into(),
                name: "Record Shop".into(),
                credential_hash: hash(3).to_vec(),
            }),
        ),
        (
            Event::MerchantSuspended { merchant_id: MerchantId::new("mer-1"), reason: "chargebacks".into() },
            E::MerchantSuspended(pb::MerchantSuspended { merchant_id: "mer-1".into(), reason: "chargebacks".into() }),
        ),
        (
            Event::AuditorRegistered { auditor_id: AuditorId::new("aud-1"), name: "Licensing Center".into(), credential_hash: hash(8) },
            E::AuditorRegistered(pb::AuditorRegistered {
                auditor_id: "aud-1".into(),
                name: "Licensing Center".into(),
                credential_hash: hash(8).to_vec(),
            }),
        ),
        (
            Event::AuditorRevoked { auditor_id: AuditorId::new("aud-1"), reason: "contract ended".into() },
            E::AuditorRevoked(pb::AuditorRevoked { auditor_id: "aud-1".into(), reason: "contract ended".into() }),
        ),
        (
            Event::NodeRegistered { node_id: NodeId::new("node-1"), region: "eu-west".into(), slots_max: 64, credential_hash: hash(4) },
            E::NodeRegistered(pb::NodeRegistered {
                node_id: "node-1".into(),
                region: "eu-west".into(),
                slots_max: 64,
                credential_hash: hash(4).to_vec(),
            }),
        ),
        (
            Event::NodeCapacityChanged { node_id: NodeId::new("node-1"), slots_max: 128 },
            E::NodeCapacityChanged(pb::NodeCapacityChanged { node_id: "node-1".into(), slots_max: 128 }),
        ),
        (Event::NodeDrained { node_id: NodeId::new("node-1") }, E::NodeDrained(pb::NodeDrained { node_id: "node-1".into() })),
        (Event::NodeRemoved { node_id: NodeId::new("node-2") }, E::NodeRemoved(pb::NodeRemoved { node_id: "node-2".into() })),
        (
            Event::ConsumerCertified {
                consumer_id: ConsumerId::new("con-1"),
                cert_serial: CertSerial::new("serial-1"),
                public_key_der: vec![0x30, 0x82, 0x01, 0x22],
                not_before: Millis(1_767_225_600_000),
                not_after: Millis(1_798_761_600_000),
                engine_key_id: "ek-2".into(),
                signature: vec![0x5a, 0xa5],
            },
            E::ConsumerCertified(pb::ConsumerCertified {
                consumer_id: "con-1".into(),
                cert_serial: "serial-1".into(),
                public_key_der: vec![0x30, 0x82, 0x01, 0x22],
                not_before_ms: 1_767_225_600_000,
                not_after_ms: 1_798_761_600_000,
                engine_key_id: "ek-2".into(),
                signature: vec![0x5a, 0xa5],
            }),
        ),
        (
            Event::CertRevoked { consumer_id: ConsumerId::new("con-1"), cert_serial: CertSerial::new("serial-1"), reason: "key lost".into() },
            E::CertRevoked(pb::CertRevoked { consumer_id: "con-1".into(), cert_serial: "serial-1".into(), reason: "key lost".into() }),
        ),
        (golden_reserved_event(), golden_reserved_pb()),
        (
            Event::Reserved {
                voucher_id: VoucherId::new("vou-2"),
                merchant_id: MerchantId::new("mer-2"),
                items: vec![],
                rendition: "low".into(),
                price_minor: 0,
                currency: "JPY".into(),
                expires_at: Millis(-1),
                payment: Payment::Points { account: AccountId::new("acc-9") },
                token_key_id: 0,
                auth_generation: u32::MAX,
            },
            E::Reserved(pb::Reserved {
                voucher_id: "vou-2".into(),
                merchant_id: "mer-2".into(),
                items: vec![],
                rendition: "low".into(),
                price_minor: 0,
                currency: "JPY".into(),
                expires_at_ms: -1,
                payment: Some(pb::reserved::Payment::Points(pb::PointsPayment { account_id: "acc-9".into() })),
                token_key_id: 0,
                auth_generation: u32::MAX,
            }),
        ),
        (
            Event::Authorized {
                voucher_id: VoucherId::new("vou-1"),
                receipt_key_id: 5,
                receipt_generation: 6,
                postings: vec![
                    posting(LedgerAccountKind::MerchantClearing, "mer-1", 129, 0),
                    posting(LedgerAccountKind::Retailer, "mer-1", 0, 39),
                    posting(LedgerAccountKind::Distributor, "dist-1", 0, 26),
                    posting(LedgerAccountKind::Owner, "own-1", 0, 64),
                ],
            },
            E::Authorized(pb::Authorized {
                voucher_id: "vou-1".into(),
                receipt_key_id: 5,
                receipt_generation: 6,
                postings: vec![
                    pb_posting(pb::LedgerAccountKind::MerchantClearing, "mer-1", 129, 0),
                    pb_posting(pb::LedgerAccountKind::Retailer, "mer-1", 0, 39),
                    pb_posting(pb::LedgerAccountKind::Distributor, "dist-1", 0, 26),
                    pb_posting(pb::LedgerAccountKind::Owner, "own-1", 0, 64),
                ],
            }),
        ),
        (
            Event::Voided {
                voucher_id: VoucherId::new("vou-1"),
                reason: VoidReason::Refunded,
                reversal: vec![posting(LedgerAccountKind::ConsumerPoints, "acc-1", 0, 129)],
            },
            E::Voided(pb::Voided {
                voucher_id: "vou-1".into(),
                reason: pb::VoidReason::Refunded as i32,
                reversal: vec![pb_posting(pb::LedgerAccountKind::ConsumerPoints, "acc-1", 0, 129)],
            }),
        ),
        (
            Event::Voided { voucher_id: VoucherId::new("vou-2"), reason: VoidReason::TimedOut, reversal: vec![] },
            E::Voided(pb::Voided { voucher_id: "vou-2".into(), reason: pb::VoidReason::TimedOut as i32, reversal: vec![] }),
        ),
        (
            Event::VoucherIssued {
                voucher_id: VoucherId::new("vou-1"),
                node_id: NodeId::new("node-1"),
                merchant_id: MerchantId::new("mer-1"),
                media_ids: vec![MediaId::new("med-1"), MediaId::new("med-2")],
                rendition: "high".into(),
                access_expires_at: Millis(1_767_312_000_000),
            },
            E::VoucherIssued(pb::VoucherIssued {
                voucher_id: "vou-1".into(),
                node_id: "node-1".into(),
                merchant_id: "mer-1".into(),
                media_ids: strings(&["med-1", "med-2"]),
                rendition: "high".into(),
                access_expires_at_ms: 1_767_312_000_000,
            }),
        ),
        (
            Event::RedemptionAccepted {
                voucher_id: VoucherId::new("vou-1"),
                node_id: NodeId::new("node-1"),
                consumer_id: ConsumerId::new("con-1"),
                cert_serial: CertSerial::new("serial-1"),
                wrapped_key_hashes: vec![hash(5), hash(6)],
            },
            E::RedemptionAccepted(pb::RedemptionAccepted {
                voucher_id: "vou-1".into(),
                node_id: "node-1".into(),
                consumer_id: "con-1".into(),
                cert_serial: "serial-1".into(),
                wrapped_key_hashes: vec![hash(5).to_vec(), hash(6).to_vec()],
            }),
        ),
        (
            Event::DeliveryFailed { voucher_id: VoucherId::new("vou-1"), node_id: NodeId::new("node-1"), reason: "disk full".into() },
            E::DeliveryFailed(pb::DeliveryFailed { voucher_id: "vou-1".into(), node_id: "node-1".into(), reason: "disk full".into() }),
        ),
        (
            Event::Delivered {
                voucher_id: VoucherId::new("vou-1"),
                node_id: NodeId::new("node-1"),
                media_id: MediaId::new("med-1"),
                cert_serial: CertSerial::new("serial-1"),
                content_hash: hash(7),
                size_bytes: 8_000_000,
                voucher_complete: true,
            },
            E::Delivered(pb::Delivered {
                voucher_id: "vou-1".into(),
                node_id: "node-1".into(),
                media_id: "med-1".into(),
                cert_serial: "serial-1".into(),
                content_hash: hash(7).to_vec(),
                size_bytes: 8_000_000,
                voucher_complete: true,
            }),
        ),
        (
            Event::PreviewStarted {
                preview_id: PreviewId::new("pre-1"),
                media_id: MediaId::new("med-1"),
                node_id: NodeId::new("node-1"),
                merchant_id: MerchantId::new("mer-1"),
                clip_ms: 15_000,
            },
            E::PreviewStarted(pb::PreviewStarted {
                preview_id: "pre-1".into(),
                media_id: "med-1".into(),
                node_id: "node-1".into(),
                merchant_id: "mer-1".into(),
                clip_ms: 15_000,
            }),
        ),
        (
            Event::PreviewEnded {
                preview_id: PreviewId::new("pre-1"),
                played_ms: 12_000,
                media_id: MediaId::new("med-1"),
                node_id: NodeId::new("node-1"),
            },
            E::PreviewEnded(pb::PreviewEnded { preview_id: "pre-1".into(), played_ms: 12_000, media_id: "med-1".into(), node_id: "node-1".into() }),
        ),
        (
            Event::RightsReportSealed(RightsReportSealed {
                epoch: 3,
                first_entry: 100,
                last_entry: 199,
                head_y: hash(8),
                head_z: hash(9),
                merkle_root: hash(10),
                totals_digest: hash(11),
                prev_seal_hash: hash(12),
                engine_key_id: "ek-3".into(),
                signature: vec![1, 2, 3, 4],
                last_stream_seq: 4242,
                stream_head: hash(13),
            }),
            E::RightsReportSealed(pb::RightsReportSealed {
                epoch: 3,
                first_entry: 100,
                last_entry: 199,
                head_y: hash(8).to_vec(),
                head_z: hash(9).to_vec(),
                merkle_root: hash(10).to_vec(),
                totals_digest: hash(11).to_vec(),
                prev_seal_hash: hash(12).to_vec(),
                engine_key_id: "ek-3".into(),
                signature: vec![1, 2, 3, 4],
                last_stream_seq: 4242,
                stream_head: hash(13).to_vec(),
            }),
        ),
        (
            Event::PointsCredited { account_id: AccountId::new("acc-1"), amount: 5000, reason: "top-up".into() },
            E::PointsCredited(pb::PointsCredited { account_id: "acc-1".into(), amount: 5000, reason: "top-up".into() }),
        ),
        (
            Event::PointsHeld {
                account_id: AccountId::new("acc-1"),
                voucher_id: VoucherId::new("vou-1"),
                amount: 129,
                expires_at: Millis(1_767_225_900_000),
            },
            E::PointsHeld(pb::PointsHeld { account_id: "acc-1".into(), voucher_id: "vou-1".into(), amount: 129, expires_at_ms: 1_767_225_900_000 }),
        ),
        (
            Event::HoldPosted { account_id: AccountId::new("acc-1"), voucher_id: VoucherId::new("vou-1"), amount: 129 },
            E::HoldPosted(pb::HoldPosted { account_id: "acc-1".into(), voucher_id: "vou-1".into(), amount: 129 }),
        ),
        (
            Event::HoldReleased {
                account_id: AccountId::new("acc-1"),
                voucher_id: VoucherId::new("vou-2"),
                amount: 77,
                reason: VoidReason::TimedOut,
            },
            E::HoldReleased(pb::HoldReleased {
                account_id: "acc-1".into(),
                voucher_id: "vou-2".into(),
                amount: 77,
                reason: pb::VoidReason::TimedOut as i32,
            }),
        ),
        (
            Event::OrderPlaced {
                order_id: OrderId::new("ord-1"),
                merchant_id: MerchantId::new("mer-1"),
                media_id: MediaId::new("med-1"),
                units: 500,
                price_per_unit_minor: 80,
            },
            E::OrderPlaced(pb::OrderPlaced {
                order_id: "ord-1".into(),
                merchant_id: "mer-1".into(),
                media_id: "med-1".into(),
                units: 500,
                price_per_unit_minor: 80,
            }),
        ),
        (
            Event::UnitBound {
                order_id: OrderId::new("ord-1"),
                unit: 17,
                device_id: "dev-1".into(),
                device_public_key_hash: hash(13),
                wrapped_key_hash: hash(14),
            },
            E::UnitBound(pb::UnitBound {
                order_id: "ord-1".into(),
                unit: 17,
                device_id: "dev-1".into(),
                device_public_key_hash: hash(13).to_vec(),
                wrapped_key_hash: hash(14).to_vec(),
            }),
        ),
        (
            Event::UnitCompleted { order_id: OrderId::new("ord-1"), unit: 18 },
            E::UnitCompleted(pb::UnitCompleted { order_id: "ord-1".into(), unit: 18 }),
        ),
        (
            Event::ConfigChanged { key: "reservation_ttl_ms".into(), value: "300000".into() },
            E::ConfigChanged(pb::ConfigChanged { key: "reservation_ttl_ms".into(), value: "300000".into() }),
        ),
    ]
}

/// The one `(Event, protobuf event)` example of a variant.
fn example(index: usize) -> (Event, E) {
    examples().into_iter().find(|(event, _)| variant_index(event) == index).expect("every variant has an example")
}

/// Wraps an event in fixed envelope metadata.
fn recorded(event: Event) -> Recorded {
    Recorded {
        event_id: [0x0e; 16],
        aggregate: event.aggregate(),
        aggregate_version: 7,
        recorded_at: Millis(1_767_225_600_123),
        request_id: "req-1".into(),
        actor: Actor::new(ActorKind::Merchant, "mer-1"),
        command: "Reserve".into(),
        event,
    }
}

/// The envelope the schema says `recorded` becomes, with `event` as its payload; built
/// field by field here rather than by `wire.rs`.
fn envelope_of(recorded: &Recorded, event: E) -> pb::Envelope {
    pb::Envelope {
        schema_version: 1,
        event_id: recorded.event_id.to_vec(),
        aggregate: Some(pb_aggregate(&recorded.aggregate)),
        aggregate_version: recorded.aggregate_version,
        recorded_at_ms: recorded.recorded_at.0,
        request_id: recorded.request_id.clone(),
        actor: Some(pb_actor(&recorded.actor)),
        command: recorded.command.clone(),
        event: Some(event),
    }
}

#[test]
fn the_examples_cover_every_variant() {
    let covered: BTreeSet<usize> = examples().iter().map(|(event, _)| variant_index(event)).collect();
    let all: BTreeSet<usize> = (0..VARIANT_COUNT).collect();
    assert_eq!(covered, all, "every Event variant needs a hand-written example in `examples`");
}

#[test]
fn every_example_encodes_to_the_fields_the_schema_names_and_back() {
    for (event, pb_event) in examples() {
        let name = event.name();
        let recorded = recorded(event);
        let expected = envelope_of(&recorded, pb_event);
        let bytes = encode(&recorded);
        let written = pb::Envelope::decode(bytes.as_slice()).expect("encode writes a protobuf envelope");
        assert_eq!(written, expected, "{name}: encode must write each field where the schema names it");
        assert_eq!(decode(&expected.encode_to_vec()), Ok(recorded.clone()), "{name}: decode must read each field from where the schema names it");
        assert_eq!(decode_shared(&bytes::Bytes::from(bytes)), Ok(recorded), "{name}: decode_shared reads what decode reads");
    }
}

#[test]
fn every_aggregate_kind_is_written_and_read_by_its_schema_name() {
    // Each aggregate kind is reached through an example event that belongs to it.
    let examples = examples();
    for (kind, pb_kind) in AGGREGATE_KINDS {
        let (event, pb_event) = examples.iter().find(|(event, _)| event.aggregate().kind == kind).expect("an example per aggregate kind");
        let recorded = recorded(event.clone());
        let envelope = envelope_of(&recorded, pb_event.clone());
        assert_eq!(envelope.aggregate.as_ref().map(|a| a.r#type), Some(pb_kind as i32));
        assert_eq!(pb::Envelope::decode(encode(&recorded).as_slice()), Ok(envelope.clone()), "{kind:?}");
        assert_eq!(decode(&envelope.encode_to_vec()), Ok(recorded), "{kind:?}");
    }
}

#[test]
fn every_actor_kind_is_written_and_read_by_its_schema_name() {
    let (event, pb_event) = example(11);
    for (kind, pb_kind) in ACTOR_KINDS {
        let recorded = Recorded { actor: Actor::new(kind, format!("actor-{kind:?}")), ..recorded(event.clone()) };
        let envelope = envelope_of(&recorded, pb_event.clone());
        assert_eq!(envelope.actor.as_ref().map(|a| a.kind), Some(pb_kind as i32));
        assert_eq!(pb::Envelope::decode(encode(&recorded).as_slice()), Ok(envelope.clone()), "{kind:?}");
        assert_eq!(decode(&envelope.encode_to_vec()), Ok(recorded), "{kind:?}");
    }
}

#[test]
fn metadata_extremes_round_trip() {
    let (event, _) = example(11);
    for (aggregate_version, recorded_at) in [(0, i64::MIN), (u64::MAX, i64::MAX), (1, -1), (u64::MAX - 1, 0)] {
        let recorded = Recorded {
            event_id: [0xff; 16],
            aggregate_version,
            recorded_at: Millis(recorded_at),
            request_id: String::new(),
            command: "☃\u{0}\u{10ffff}".into(),
            ..recorded(event.clone())
        };
        assert_eq!(decode(&encode(&recorded)), Ok(recorded));
    }
    let zero_id = Recorded { event_id: [0; 16], ..recorded(event) };
    assert_eq!(decode(&encode(&zero_id)), Ok(zero_id), "an all-zero event id is still 16 bytes on the wire");
}

// ---------------------------------------------------------------------------------------
// Round trip of arbitrary events
// ---------------------------------------------------------------------------------------

/// Strings: empty, id-like, arbitrary printable unicode, and anything at all (controls,
/// NUL, astral-plane characters).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9_-]{1,24}", any::<String>(), "(?s).{0,12}", Just("票 🎵 \u{0} \u{10ffff}".to_string()),]
}

fn id<T: std::fmt::Debug + 'static>(make: fn(String) -> T) -> impl Strategy<Value = T> {
    text().prop_map(make)
}

fn u64s() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(1), Just(u64::MAX - 1), Just(u64::MAX), any::<u64>()]
}

fn u32s() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), any::<u32>()]
}

fn millis() -> impl Strategy<Value = Millis> {
    prop_oneof![Just(i64::MIN), Just(-1), Just(0), Just(i64::MAX), any::<i64>()].prop_map(Millis)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

fn hash32() -> impl Strategy<Value = [u8; 32]> {
    prop_oneof![Just([0; 32]), Just([0xff; 32]), prop::array::uniform32(any::<u8>())]
}

fn void_reason() -> impl Strategy<Value = VoidReason> {
    select(VOID_REASONS.to_vec())
}

fn postings() -> impl Strategy<Value = Vec<Posting>> {
    let posting = (select(LEDGER_KINDS.to_vec()), text(), u64s(), u64s())
        .prop_map(|(kind, account, debit_minor, credit_minor)| Posting { kind, account, debit_minor, credit_minor });
    vec(posting, 0..5)
}

fn arb_media_published() -> impl Strategy<Value = MediaPublished> {
    let terms = (u32s(), u32s(), u32s(), text(), text(), text()).prop_map(
        |(retailer_bps, distributor_bps, owner_bps, distributor, owner, rights_agent)| RoyaltyTerms {
            retailer_bps,
            distributor_bps,
            owner_bps,
            distributor,
            owner,
            rights_agent,
        },
    );
    let rendition = (text(), u32s(), hash32(), u64s())
        .prop_map(|(name, bitrate_kbps, content_hash, size_bytes)| Rendition { name, bitrate_kbps, content_hash, size_bytes });
    (
        (id(MediaId), text(), text(), text(), vec(text(), 0..4), u64s(), u64s(), text()),
        (terms, vec(rendition, 0..4), u64s(), u64s(), text(), any::<bool>(), text(), bytes()),
    )
        .prop_map(
            |(
                (media_id, publisher, title, artist, authors, length_ms, price_minor, currency),
                (terms, renditions, start_ms, duration_ms, image_descriptor, for_sale, engine_key_id, wrapped_media_key),
            )| MediaPublished {
                media_id,
                publisher,
                title,
                artist,
                authors,
                length_ms,
                price_minor,
                currency,
                terms,
                renditions,
                preview: PreviewClip { start_ms, duration_ms },
                image_descriptor,
                for_sale,
                engine_key_id,
                wrapped_media_key,
            },
        )
}

fn arb_reserved() -> impl Strategy<Value = Event> {
    let item = (id(MediaId), u64s()).prop_map(|(media_id, price_minor)| ReservedItem { media_id, price_minor });
    let payment = prop_oneof![
        text().prop_map(|payment_ref| Payment::Merchant { payment_ref }),
        id(AccountId).prop_map(|account| Payment::Points { account }),
    ];
    (id(VoucherId), id(MerchantId), vec(item, 0..5), text(), u64s(), text(), millis(), payment, u32s(), u32s()).prop_map(
        |(voucher_id, merchant_id, items, rendition, price_minor, currency, expires_at, payment, token_key_id, auth_generation)| {
            Event::Reserved { voucher_id, merchant_id, items, rendition, price_minor, currency, expires_at, payment, token_key_id, auth_generation }
        },
    )
}

fn arb_rights_report_sealed() -> impl Strategy<Value = Event> {
    (u64s(), u64s(), u64s(), hash32(), hash32(), hash32(), hash32(), hash32(), text(), bytes(), (u64s(), hash32())).prop_map(
        |(epoch, first_entry, last_entry, head_y, head_z, merkle_root, totals_digest, prev_seal_hash, engine_key_id, signature, (last_stream_seq, stream_head))| {
            Event::RightsReportSealed(RightsReportSealed {
                epoch,
                first_entry,
                last_entry,
                head_y,
                head_z,
                merkle_root,
                totals_digest,
                prev_seal_hash,
                engine_key_id,
                signature,
                last_stream_seq,
                stream_head,
            })
        },
    )
}

/// Any event of any variant, every field arbitrary. A new variant also needs an arm here;
/// `arb_event_reaches_every_variant` notices when it is missing.
fn arb_event() -> BoxedStrategy<Event> {
    prop_oneof![
        arb_media_published().prop_map(Event::MediaPublished),
        (id(MediaId), text()).prop_map(|(media_id, reason)| Event::MediaWithdrawn { media_id, reason }),
        (id(MediaId), u64s()).prop_map(|(media_id, price_minor)| Event::PriceChanged { media_id, price_minor }),
        (id(MerchantId), text(), hash32())
            .prop_map(|(merchant_id, name, credential_hash)| Event::MerchantRegistered { merchant_id, name, credential_hash }),
        (id(MerchantId), text()).prop_map(|(merchant_id, reason)| Event::MerchantSuspended { merchant_id, reason }),
        (id(AuditorId), text(), hash32())
            .prop_map(|(auditor_id, name, credential_hash)| Event::AuditorRegistered { auditor_id, name, credential_hash }),
        (id(AuditorId), text()).prop_map(|(auditor_id, reason)| Event::AuditorRevoked { auditor_id, reason }),
        (id(NodeId), text(), u32s(), hash32())
            .prop_map(|(node_id, region, slots_max, credential_hash)| Event::NodeRegistered { node_id, region, slots_max, credential_hash }),
        (id(NodeId), u32s()).prop_map(|(node_id, slots_max)| Event::NodeCapacityChanged { node_id, slots_max }),
        id(NodeId).prop_map(|node_id| Event::NodeDrained { node_id }),
        id(NodeId).prop_map(|node_id| Event::NodeRemoved { node_id }),
        (id(ConsumerId), id(CertSerial), bytes(), millis(), millis(), text(), bytes()).prop_map(
            |(consumer_id, cert_serial, public_key_der, not_before, not_after, engine_key_id, signature)| Event::ConsumerCertified {
                consumer_id,
                cert_serial,
                public_key_der,
                not_before,
                not_after,
                engine_key_id,
                signature,
            }
        ),
        (id(ConsumerId), id(CertSerial), text())
            .prop_map(|(consumer_id, cert_serial, reason)| Event::CertRevoked { consumer_id, cert_serial, reason }),
        arb_reserved(),
        (id(VoucherId), u32s(), u32s(), postings()).prop_map(|(voucher_id, receipt_key_id, receipt_generation, postings)| {
            Event::Authorized { voucher_id, receipt_key_id, receipt_generation, postings }
        }),
        (id(VoucherId), void_reason(), postings()).prop_map(|(voucher_id, reason, reversal)| Event::Voided { voucher_id, reason, reversal }),
        (id(VoucherId), id(NodeId), id(MerchantId), vec(id(MediaId), 0..4), text(), millis()).prop_map(
            |(voucher_id, node_id, merchant_id, media_ids, rendition, access_expires_at)| Event::VoucherIssued {
                voucher_id,
                node_id,
                merchant_id,
                media_ids,
                rendition,
                access_expires_at,
            }
        ),
        (id(VoucherId), id(NodeId), id(ConsumerId), id(CertSerial), vec(hash32(), 0..4)).prop_map(
            |(voucher_id, node_id, consumer_id, cert_serial, wrapped_key_hashes)| Event::RedemptionAccepted {
                voucher_id,
                node_id,
                consumer_id,
                cert_serial,
                wrapped_key_hashes,
            }
        ),
        (id(VoucherId), id(NodeId), text()).prop_map(|(voucher_id, node_id, reason)| Event::DeliveryFailed { voucher_id, node_id, reason }),
        (id(VoucherId), id(NodeId), id(MediaId), id(CertSerial), hash32(), u64s(), any::<bool>()).prop_map(
            |(voucher_id, node_id, media_id, cert_serial, content_hash, size_bytes, voucher_complete)| Event::Delivered {
                voucher_id,
                node_id,
                media_id,
                cert_serial,
                content_hash,
                size_bytes,
                voucher_complete,
            }
        ),
        (id(PreviewId), id(MediaId), id(NodeId), id(MerchantId), u64s()).prop_map(|(preview_id, media_id, node_id, merchant_id, clip_ms)| {
            Event::PreviewStarted { preview_id, media_id, node_id, merchant_id, clip_ms }
        }),
        (id(PreviewId), u64s(), id(MediaId), id(NodeId))
            .prop_map(|(preview_id, played_ms, media_id, node_id)| Event::PreviewEnded { preview_id, played_ms, media_id, node_id }),
        arb_rights_report_sealed(),
        (id(AccountId), u64s(), text()).prop_map(|(account_id, amount, reason)| Event::PointsCredited { account_id, amount, reason }),
        (id(AccountId), id(VoucherId), u64s(), millis())
            .prop_map(|(account_id, voucher_id, amount, expires_at)| Event::PointsHeld { account_id, voucher_id, amount, expires_at }),
        (id(AccountId), id(VoucherId), u64s()).prop_map(|(account_id, voucher_id, amount)| Event::HoldPosted { account_id, voucher_id, amount }),
        (id(AccountId), id(VoucherId), u64s(), void_reason())
            .prop_map(|(account_id, voucher_id, amount, reason)| Event::HoldReleased { account_id, voucher_id, amount, reason }),
        (id(OrderId), id(MerchantId), id(MediaId), u32s(), u64s()).prop_map(|(order_id, merchant_id, media_id, units, price_per_unit_minor)| {
            Event::OrderPlaced { order_id, merchant_id, media_id, units, price_per_unit_minor }
        }),
        (id(OrderId), u32s(), text(), hash32(), hash32()).prop_map(|(order_id, unit, device_id, device_public_key_hash, wrapped_key_hash)| {
            Event::UnitBound { order_id, unit, device_id, device_public_key_hash, wrapped_key_hash }
        }),
        (id(OrderId), u32s()).prop_map(|(order_id, unit)| Event::UnitCompleted { order_id, unit }),
        (text(), text()).prop_map(|(key, value)| Event::ConfigChanged { key, value }),
    ]
    .boxed()
}

/// Any recorded event; its `aggregate` is the event's own, as `decode` requires.
fn arb_recorded() -> impl Strategy<Value = Recorded> {
    let actor = (select(ACTOR_KINDS.map(|(kind, _)| kind).to_vec()), text()).prop_map(|(kind, id)| Actor { kind, id });
    (prop::array::uniform16(any::<u8>()), u64s(), millis(), text(), actor, text(), arb_event()).prop_map(
        |(event_id, aggregate_version, recorded_at, request_id, actor, command, event)| Recorded {
            event_id,
            aggregate: event.aggregate(),
            aggregate_version,
            recorded_at,
            request_id,
            actor,
            command,
            event,
        },
    )
}

#[test]
fn arb_event_reaches_every_variant() {
    let mut runner = TestRunner::deterministic();
    let strategy = arb_event();
    let mut seen = BTreeSet::new();
    for _ in 0..2000 {
        let event = strategy.new_tree(&mut runner).expect("the event strategy never rejects").current();
        seen.insert(variant_index(&event));
    }
    assert_eq!(seen, (0..VARIANT_COUNT).collect::<BTreeSet<_>>(), "arb_event must generate every Event variant");
}

/// Test-case budgets, chosen to keep this module under ~15 s in a debug build while
/// giving the decoder over 10 000 hostile inputs.
fn config(cases: u32) -> ProptestConfig {
    // No persistence file: a failure prints its minimal input; record it as a test here.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn every_recorded_event_round_trips(recorded in arb_recorded()) {
        let bytes = encode(&recorded);
        prop_assert_eq!(decode(&bytes), Ok(recorded.clone()));
        // Deterministic: the same event always has the same bytes (idempotent appends
        // compare them).
        prop_assert_eq!(encode(&recorded), bytes);
    }
}

// ---------------------------------------------------------------------------------------
// Decoding hostile bytes never panics
// ---------------------------------------------------------------------------------------

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
enum Field {
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

fn write_fields(fields: &[Field]) -> Vec<u8> {
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

/// The 32-byte fields of a protobuf event, each with the name `DecodeError` gives it. The
/// `match` has no wildcard arm, so a new event forces a look at its fixed-size fields.
fn hash_fields(event: &mut E) -> Vec<(&'static str, &mut Vec<u8>)> {
    match event {
        E::MediaPublished(m) => m.renditions.iter_mut().map(|r| ("renditions.content_hash", &mut r.content_hash)).collect(),
        E::MerchantRegistered(m) => vec![("credential_hash", &mut m.credential_hash)],
        E::AuditorRegistered(a) => vec![("credential_hash", &mut a.credential_hash)],
        E::NodeRegistered(n) => vec![("credential_hash", &mut n.credential_hash)],
        E::RedemptionAccepted(r) => r.wrapped_key_hashes.iter_mut().map(|h| ("wrapped_key_hashes", h)).collect(),
        E::Delivered(d) => vec![("content_hash", &mut d.content_hash)],
        E::RightsReportSealed(s) => vec![
            ("head_y", &mut s.head_y),
            ("head_z", &mut s.head_z),
            ("merkle_root", &mut s.merkle_root),
            ("totals_digest", &mut s.totals_digest),
            ("prev_seal_hash", &mut s.prev_seal_hash),
            ("stream_head", &mut s.stream_head),
        ],
        E::UnitBound(u) => vec![("device_public_key_hash", &mut u.device_public_key_hash), ("wrapped_key_hash", &mut u.wrapped_key_hash)],
        E::MediaWithdrawn(_)
        | E::PriceChanged(_)
        | E::MerchantSuspended(_)
        | E::AuditorRevoked(_)
        | E::NodeCapacityChanged(_)
        | E::NodeDrained(_)
        | E::NodeRemoved(_)
        | E::ConsumerCertified(_)
        | E::CertRevoked(_)
        | E::Reserved(_)
        | E::Authorized(_)
        | E::Voided(_)
        | E::VoucherIssued(_)
        | E::DeliveryFailed(_)
        | E::PreviewStarted(_)
        | E::PreviewEnded(_)
        | E::PointsCredited(_)
        | E::PointsHeld(_)
        | E::HoldPosted(_)
        | E::HoldReleased(_)
        | E::OrderPlaced(_)
        | E::UnitCompleted(_)
        | E::ConfigChanged(_) => vec![],
    }
}

/// The enum fields of a protobuf event: the name `DecodeError` gives each, and the largest
/// value the schema defines for it. No wildcard arm, as in `hash_fields`.
fn enum_fields(event: &mut E) -> Vec<(&'static str, &mut i32, i32)> {
    let ledger_max = pb::LedgerAccountKind::Owner as i32;
    let void_max = pb::VoidReason::TimedOut as i32;
    match event {
        E::Authorized(a) => a.postings.iter_mut().map(|p| ("posting.kind", &mut p.kind, ledger_max)).collect(),
        E::Voided(v) => std::iter::once(("reason", &mut v.reason, void_max))
            .chain(v.reversal.iter_mut().map(|p| ("posting.kind", &mut p.kind, ledger_max)))
            .collect(),
        E::HoldReleased(h) => vec![("reason", &mut h.reason, void_max)],
        E::MediaPublished(_)
        | E::MediaWithdrawn(_)
        | E::PriceChanged(_)
        | E::MerchantRegistered(_)
        | E::MerchantSuspended(_)
        | E::AuditorRegistered(_)
        | E::AuditorRevoked(_)
        | E::NodeRegistered(_)
        | E::NodeCapacityChanged(_)
        | E::NodeDrained(_)
        | E::NodeRemoved(_)
        | E::ConsumerCertified(_)
        | E::CertRevoked(_)
        | E::Reserved(_)
        | E::VoucherIssued(_)
        | E::RedemptionAccepted(_)
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
        | E::ConfigChanged(_) => vec![],
    }
}

proptest! {
    #![proptest_config(config(2000))]

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
            (len != 32).then(|| DecodeError::Invalid { field, reason: format!("must be 32 bytes, not {len}") })
        } else {
            let mut enums = enum_fields(event);
            if enums.is_empty() {
                return Ok(());
            }
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

// ---------------------------------------------------------------------------------------
// Precise errors
// ---------------------------------------------------------------------------------------

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
        decode(&with_event(11, |e| if let E::Reserved(r) = e { r.payment = None })),
        Err(DecodeError::Missing("payment"))
    );
    assert_eq!(
        decode(&with_event(0, |e| if let E::MediaPublished(m) = e { m.terms = None })),
        Err(DecodeError::Missing("terms"))
    );
}

#[test]
fn unspecified_enum_values_are_missing() {
    let unspecified_aggregate = with(|e| e.aggregate.as_mut().expect("base has an aggregate").r#type = 0);
    assert_eq!(decode(&unspecified_aggregate), Err(DecodeError::Missing("aggregate.type")));
    let unspecified_actor = with(|e| e.actor.as_mut().expect("base has an actor").kind = 0);
    assert_eq!(decode(&unspecified_actor), Err(DecodeError::Missing("actor.kind")));
    assert_eq!(decode(&with_event(13, |e| if let E::Voided(v) = e { v.reason = 0 })), Err(DecodeError::Missing("reason")));
    assert_eq!(decode(&with_event(24, |e| if let E::HoldReleased(h) = e { h.reason = 0 })), Err(DecodeError::Missing("reason")));
    assert_eq!(
        decode(&with_event(12, |e| if let E::Authorized(a) = e { a.postings[2].kind = 0 })),
        Err(DecodeError::Missing("posting.kind"))
    );
}

#[test]
fn unknown_enum_values_are_invalid() {
    for value in [99, 12, -1, i32::MAX, i32::MIN] {
        assert_invalid(&with(|e| e.aggregate.as_mut().expect("base has an aggregate").r#type = value), "aggregate.type");
    }
    for value in [99, 7, -1] {
        assert_invalid(&with(|e| e.actor.as_mut().expect("base has an actor").kind = value), "actor.kind");
    }
    for value in [42, 3, -1] {
        assert_invalid(&with_event(13, |e| if let E::Voided(v) = e { v.reason = value }), "reason");
        assert_invalid(&with_event(24, |e| if let E::HoldReleased(h) = e { h.reason = value }), "reason");
    }
    for value in [42, 6, -1] {
        assert_invalid(&with_event(12, |e| if let E::Authorized(a) = e { a.postings[1].kind = value }), "posting.kind");
        assert_invalid(&with_event(13, |e| if let E::Voided(v) = e { v.reversal[0].kind = value }), "posting.kind");
    }
}

/// Every fixed-size hash in the schema, with the variant whose example carries it and a
/// function that overwrites it in that example's protobuf.
type HashField = (&'static str, usize, fn(&mut E, Vec<u8>));

const HASH_FIELDS: [HashField; 14] = [
    ("credential_hash", 3, |e, b| if let E::MerchantRegistered(m) = e { m.credential_hash = b }),
    ("credential_hash", 29, |e, b| if let E::AuditorRegistered(a) = e { a.credential_hash = b }),
    ("credential_hash", 5, |e, b| if let E::NodeRegistered(n) = e { n.credential_hash = b }),
    ("renditions.content_hash", 0, |e, b| if let E::MediaPublished(m) = e { m.renditions[1].content_hash = b }),
    ("wrapped_key_hashes", 15, |e, b| if let E::RedemptionAccepted(r) = e { r.wrapped_key_hashes[1] = b }),
    ("content_hash", 17, |e, b| if let E::Delivered(d) = e { d.content_hash = b }),
    ("head_y", 20, |e, b| if let E::RightsReportSealed(s) = e { s.head_y = b }),
    ("head_z", 20, |e, b| if let E::RightsReportSealed(s) = e { s.head_z = b }),
    ("merkle_root", 20, |e, b| if let E::RightsReportSealed(s) = e { s.merkle_root = b }),
    ("totals_digest", 20, |e, b| if let E::RightsReportSealed(s) = e { s.totals_digest = b }),
    ("prev_seal_hash", 20, |e, b| if let E::RightsReportSealed(s) = e { s.prev_seal_hash = b }),
    ("stream_head", 20, |e, b| if let E::RightsReportSealed(s) = e { s.stream_head = b }),
    ("device_public_key_hash", 26, |e, b| if let E::UnitBound(u) = e { u.device_public_key_hash = b }),
    ("wrapped_key_hash", 26, |e, b| if let E::UnitBound(u) = e { u.wrapped_key_hash = b }),
];

#[test]
fn hashes_of_the_wrong_length_are_invalid() {
    for (field, index, set) in HASH_FIELDS {
        // Negative control: a fresh 32-byte value in the same place decodes.
        let (event, _) = example(index);
        let fine = with_event(index, |e| set(e, vec![0xab; 32]));
        assert!(decode(&fine).is_ok(), "{field} of {}: 32 bytes must decode", event.name());
        for len in [31, 33, 0, 16] {
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
    assert_eq!(
        decode(&other_id),
        Err(DecodeError::WrongAggregate { named: AggregateRef::new(AggregateKind::Voucher, "vou-2"), actual: voucher.clone() })
    );
    let other_kind = with(|e| e.aggregate = Some(pb::AggregateRef { r#type: pb::AggregateType::Media as i32, id: "vou-1".into() }));
    assert_eq!(
        decode(&other_kind),
        Err(DecodeError::WrongAggregate { named: AggregateRef::new(AggregateKind::Media, "vou-1"), actual: voucher })
    );
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
    let bytes = with_event(0, |e| if let E::MediaPublished(m) = e { m.preview = None });
    let Ok(Recorded { event: Event::MediaPublished(decoded), .. }) = decode(&bytes) else {
        panic!("a MediaPublished without preview must decode");
    };
    let Event::MediaPublished(original) = event else { unreachable!("example 0 is MediaPublished") };
    assert_eq!(decoded, MediaPublished { preview: PreviewClip::default(), ..original });
}

// ---------------------------------------------------------------------------------------
// Stability
// ---------------------------------------------------------------------------------------

fn golden_reserved_event() -> Event {
    Event::Reserved {
        voucher_id: VoucherId::new("vou-1"),
        merchant_id: MerchantId::new("mer-1"),
        items: vec![
            ReservedItem { media_id: MediaId::new("med-1"), price_minor: 100 },
            ReservedItem { media_id: MediaId::new("med-2"), price_minor: 29 },
        ],
        rendition: "high".into(),
        price_minor: 129,
        currency: "EUR".into(),
        expires_at: Millis(1_767_225_900_000),
        payment: Payment::Merchant { payment_ref: "pay-1".into() },
        token_key_id: 3,
        auth_generation: 4,
    }
}

fn golden_reserved_pb() -> E {
    E::Reserved(pb::Reserved {
        voucher_id: "vou-1".into(),
        merchant_id: "mer-1".into(),
        items: vec![
            pb::ReservedItem { media_id: "med-1".into(), price_minor: 100 },
            pb::ReservedItem { media_id: "med-2".into(), price_minor: 29 },
        ],
        rendition: "high".into(),
        price_minor: 129,
        currency: "EUR".into(),
        expires_at_ms: 1_767_225_900_000,
        payment: Some(pb::reserved::Payment::Merchant(pb::MerchantPayment { payment_ref: "pay-1".into() })),
        token_key_id: 3,
        auth_generation: 4,
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
        recorded(
            1,
            "RegisterAuditor",
            Event::AuditorRegistered { auditor_id: auditor_id.clone(), name: "Licensing Center".into(), credential_hash: hash(8) },
        ),
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
