//! Every variant, by hand: one hand-written example of each `Event` variant with its
//! protobuf counterpart, checked field by field against the schema's names, and the
//! schema's names for aggregate and actor kinds written out independently of `wire.rs`.
//!
//! What does not live here: arbitrary events (`roundtrip`) and broken bytes (`fuzz`,
//! `errors`); the examples are shared with them (`example`, `recorded`, `envelope_of`).

use super::golden::{golden_reserved_event, golden_reserved_pb};
use crate::domain::event::{
    Actor, ActorKind, AggregateKind, AggregateRef, Event, LedgerAccountKind, MediaPublished, Payment, PointsSale, Posting, PreviewClip, Recorded, Rendition,
    RightsReportSealed, RoyaltyTerms, SealCheckpoint, UnitCharge, VoidReason,
};
use crate::ids::{AccountId, AuditorId, CertSerial, ConsumerId, MediaId, MerchantId, Millis, NodeId, OrderId, PreviewId, PublisherId, VoucherId};
use crate::wire::{decode, decode_shared, encode};
use pb::envelope::Event as E;
use prost::Message;
use proto::v1 as pb;
use std::collections::BTreeSet;

/// How many variants `Event` has. Adding a variant stops `variant_index` from compiling:
/// give the new variant the next index, raise this count, add a hand-written example with
/// its protobuf counterpart to `examples` and an arm to `arb_event`.
pub(super) const VARIANT_COUNT: usize = 46;

/// The position of an event's variant, by a `match` with no wildcard arm, so that a new
/// variant cannot be added without these tests being told about it.
pub(super) fn variant_index(event: &Event) -> usize {
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
        Event::AccessLapsed { .. } => 31,
        Event::MerchantReinstated { .. } => 32,
        Event::Refunded { .. } => 33,
        Event::CopyRecovered { .. } => 34,
        Event::AccessRenewed { .. } => 35,
        Event::PublisherRegistered { .. } => 36,
        Event::PublisherKeyAdded { .. } => 37,
        Event::SlotsLeased { .. } => 38,
        Event::SlotsWanted { .. } => 39,
        Event::RentalPlayEnded { .. } => 40,
        Event::EngineKeyRotated { .. } => 41,
        Event::EngineKeyRevoked { .. } => 42,
        Event::MerchantRentalWindowSet { .. } => 43,
        Event::TokenKeyRotated { .. } => 44,
        Event::CheckpointKeyRotated { .. } => 45,
    }
}

/// The schema's names for each aggregate kind, written out here independently of
/// `wire.rs` so that a swapped mapping (consistent in both directions, and so invisible to
/// a round trip) is caught.
pub(super) const AGGREGATE_KINDS: [(AggregateKind, pb::AggregateType); 12] = [
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
    (AggregateKind::Publisher, pb::AggregateType::Publisher),
];

pub(super) const ACTOR_KINDS: [(ActorKind, pb::ActorKind); 6] = [
    (ActorKind::Operator, pb::ActorKind::Operator),
    (ActorKind::Merchant, pb::ActorKind::Merchant),
    (ActorKind::Node, pb::ActorKind::Node),
    (ActorKind::Publisher, pb::ActorKind::Publisher),
    (ActorKind::Auditor, pb::ActorKind::Auditor),
    (ActorKind::Engine, pb::ActorKind::Engine),
];

pub(super) const LEDGER_KINDS: [LedgerAccountKind; 5] = [
    LedgerAccountKind::ConsumerPoints,
    LedgerAccountKind::MerchantClearing,
    LedgerAccountKind::Retailer,
    LedgerAccountKind::Distributor,
    LedgerAccountKind::Owner,
];

pub(super) const VOID_REASONS: [VoidReason; 2] = [VoidReason::Refunded, VoidReason::TimedOut];

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
pub(super) fn hash(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| seed.wrapping_mul(37).wrapping_add(i as u8))
}

pub(super) fn posting(kind: LedgerAccountKind, account: &str, debit_minor: u64, credit_minor: u64) -> Posting {
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
pub(super) fn examples() -> Vec<(Event, E)> {
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
                container_format: 3,
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
                container_format: 3,
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
            E::MerchantRegistered(pb::MerchantRegistered { merchant_id: "mer-1".into(), name: "Record Shop".into(), credential_hash: hash(3).to_vec() }),
        ),
        (
            Event::MerchantSuspended { merchant_id: MerchantId::new("mer-1"), reason: "chargebacks".into() },
            E::MerchantSuspended(pb::MerchantSuspended { merchant_id: "mer-1".into(), reason: "chargebacks".into() }),
        ),
        (
            Event::MerchantReinstated { merchant_id: MerchantId::new("mer-1"), reason: "chargebacks settled".into() },
            E::MerchantReinstated(pb::MerchantReinstated { merchant_id: "mer-1".into(), reason: "chargebacks settled".into() }),
        ),
        (
            Event::AuditorRegistered { auditor_id: AuditorId::new("aud-1"), name: "Licensing Center".into(), credential_hash: hash(8) },
            E::AuditorRegistered(pb::AuditorRegistered { auditor_id: "aud-1".into(), name: "Licensing Center".into(), credential_hash: hash(8).to_vec() }),
        ),
        (
            Event::AuditorRevoked { auditor_id: AuditorId::new("aud-1"), reason: "contract ended".into() },
            E::AuditorRevoked(pb::AuditorRevoked { auditor_id: "aud-1".into(), reason: "contract ended".into() }),
        ),
        (
            Event::PublisherRegistered {
                publisher_id: PublisherId::new("pub-1"),
                name: "Label".into(),
                credential_hash: hash(9),
                terms: RoyaltyTerms {
                    retailer_bps: 3000,
                    distributor_bps: 2000,
                    owner_bps: 5000,
                    distributor: "dist-1".into(),
                    owner: "label-1".into(),
                    rights_agent: "agent-1".into(),
                },
            },
            E::PublisherRegistered(pb::PublisherRegistered {
                publisher_id: "pub-1".into(),
                name: "Label".into(),
                credential_hash: hash(9).to_vec(),
                terms: Some(pb::RoyaltyTerms {
                    retailer_bps: 3000,
                    distributor_bps: 2000,
                    owner_bps: 5000,
                    distributor: "dist-1".into(),
                    owner: "label-1".into(),
                    rights_agent: "agent-1".into(),
                }),
            }),
        ),
        (
            Event::PublisherKeyAdded { publisher_id: PublisherId::new("pub-1"), key_id: "0011223344556677".into(), public_key_der: vec![0x30, 0x82, 1, 2] },
            E::PublisherKeyAdded(pb::PublisherKeyAdded {
                publisher_id: "pub-1".into(),
                key_id: "0011223344556677".into(),
                public_key_der: vec![0x30, 0x82, 1, 2],
            }),
        ),
        (
            Event::AccessLapsed { voucher_id: VoucherId::new("vou-1"), node_id: NodeId::new("node-1") },
            E::AccessLapsed(pb::AccessLapsed { voucher_id: "vou-1".into(), node_id: "node-1".into() }),
        ),
        (
            Event::AccessRenewed {
                voucher_id: VoucherId::new("vou-1"),
                node_id: NodeId::new("node-2"),
                previous_node: Some(NodeId::new("node-1")),
                access_expires_at: Millis(1_700_000_300_000),
            },
            E::AccessRenewed(pb::AccessRenewed {
                voucher_id: "vou-1".into(),
                node_id: "node-2".into(),
                previous_node_id: "node-1".into(),
                access_expires_at_ms: 1_700_000_300_000,
            }),
        ),
        (
            Event::NodeRegistered { node_id: NodeId::new("node-1"), region: "eu-west".into(), slots_max: 64, credential_hash: hash(4) },
            E::NodeRegistered(pb::NodeRegistered { node_id: "node-1".into(), region: "eu-west".into(), slots_max: 64, credential_hash: hash(4).to_vec() }),
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
                rental_ms: 86_400_000,
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
                rental_ms: 86_400_000,
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
                rental_until: Millis(1_767_312_000_000),
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
                rental_until_ms: 1_767_312_000_000,
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
            Event::CopyRecovered {
                voucher_id: VoucherId::new("vou-1"),
                node_id: NodeId::new("node-1"),
                consumer_id: ConsumerId::new("con-1"),
                cert_serial: CertSerial::new("ser-2"),
                challenge_hash: [7; 32],
                consumer_key_hash: [8; 32],
                recovery: 1,
            },
            E::CopyRecovered(pb::CopyRecovered {
                voucher_id: "vou-1".into(),
                node_id: "node-1".into(),
                consumer_id: "con-1".into(),
                cert_serial: "ser-2".into(),
                challenge_hash: vec![7; 32],
                consumer_key_hash: vec![8; 32],
                recovery: 1,
            }),
        ),
        (
            Event::Refunded {
                voucher_id: VoucherId::new("vou-1"),
                reason: "card charged back".into(),
                chargeback: true,
                reversal: vec![posting(LedgerAccountKind::MerchantClearing, "mer-1", 0, 129)],
                media_ids: vec![MediaId::new("med-1")],
            },
            E::Refunded(pb::Refunded {
                voucher_id: "vou-1".into(),
                reason: "card charged back".into(),
                chargeback: true,
                reversal: vec![pb_posting(pb::LedgerAccountKind::MerchantClearing, "mer-1", 0, 129)],
                media_ids: vec!["med-1".into()],
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
                previous_node: None,
                lease: 3,
            },
            E::VoucherIssued(pb::VoucherIssued {
                voucher_id: "vou-1".into(),
                node_id: "node-1".into(),
                merchant_id: "mer-1".into(),
                media_ids: strings(&["med-1", "med-2"]),
                rendition: "high".into(),
                access_expires_at_ms: 1_767_312_000_000,
                previous_node_id: String::new(),
                lease: 3,
            }),
        ),
        (
            Event::RedemptionAccepted {
                voucher_id: VoucherId::new("vou-1"),
                node_id: NodeId::new("node-1"),
                consumer_id: ConsumerId::new("con-1"),
                cert_serial: CertSerial::new("serial-1"),
                wrapped_key_hashes: vec![hash(5), hash(6)],
                challenge_hash: Some(hash(7)),
                consumer_key_hash: Some(hash(8)),
                released_media: vec![MediaId::new("med-1"), MediaId::new("med-2")],
                rental_play: 3,
            },
            E::RedemptionAccepted(pb::RedemptionAccepted {
                voucher_id: "vou-1".into(),
                node_id: "node-1".into(),
                consumer_id: "con-1".into(),
                cert_serial: "serial-1".into(),
                wrapped_key_hashes: vec![hash(5).to_vec(), hash(6).to_vec()],
                challenge_hash: hash(7).to_vec(),
                consumer_key_hash: hash(8).to_vec(),
                released_media_ids: vec!["med-1".into(), "med-2".into()],
                rental_play: 3,
            }),
        ),
        (
            Event::RentalPlayEnded { voucher_id: VoucherId::new("vou-1"), node_id: NodeId::new("node-1"), play: 3 },
            E::RentalPlayEnded(pb::RentalPlayEnded { voucher_id: "vou-1".into(), node_id: "node-1".into(), play: 3 }),
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
                lapses_at: Millis(1_700_000_075_000),
                lease: 2,
            },
            E::PreviewStarted(pb::PreviewStarted {
                preview_id: "pre-1".into(),
                media_id: "med-1".into(),
                node_id: "node-1".into(),
                merchant_id: "mer-1".into(),
                clip_ms: 15_000,
                lapses_at_ms: 1_700_000_075_000,
                lease: 2,
            }),
        ),
        (
            Event::SlotsLeased { node_id: NodeId::new("node-1"), lease: 4, holder: "e-1a2b".into(), slots: 16, until: Millis(1_700_000_060_000) },
            E::SlotsLeased(pb::SlotsLeased { node_id: "node-1".into(), lease: 4, holder: "e-1a2b".into(), slots: 16, until_ms: 1_700_000_060_000 }),
        ),
        (
            Event::SlotsWanted { node_id: NodeId::new("node-1"), holder: "e-3c4d".into(), until: Millis(1_700_000_015_000) },
            E::SlotsWanted(pb::SlotsWanted { node_id: "node-1".into(), holder: "e-3c4d".into(), until_ms: 1_700_000_015_000 }),
        ),
        (
            Event::PreviewEnded { preview_id: PreviewId::new("pre-1"), played_ms: 12_000, media_id: MediaId::new("med-1"), node_id: NodeId::new("node-1") },
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
                checkpoint: Some(SealCheckpoint {
                    origin: "vouchsafe.example/royalty".into(),
                    tree_size: 200,
                    root: hash(14),
                    signature: vec![5; 68],
                    last_leaf_proof: vec![hash(15), hash(16)],
                }),
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
                checkpoint_origin: "vouchsafe.example/royalty".into(),
                tree_size: 200,
                tree_root: hash(14).to_vec(),
                checkpoint_signature: vec![5; 68],
                last_leaf_proof: vec![hash(15).to_vec(), hash(16).to_vec()],
            }),
        ),
        (
            Event::PointsCredited { account_id: AccountId::new("acc-1"), amount: 5000, reason: "top-up".into(), sale: None },
            E::PointsCredited(pb::PointsCredited { account_id: "acc-1".into(), amount: 5000, reason: "top-up".into(), ..Default::default() }),
        ),
        (
            Event::PointsCredited {
                account_id: AccountId::new("acc-1"),
                amount: 700,
                reason: "top-up inv-9".into(),
                sale: Some(PointsSale {
                    merchant: MerchantId::new("mer-1"),
                    currency: "EUR".into(),
                    postings: vec![
                        Posting { kind: LedgerAccountKind::MerchantClearing, account: "mer-1".into(), debit_minor: 700, credit_minor: 0 },
                        Posting { kind: LedgerAccountKind::ConsumerPoints, account: "acc-1".into(), debit_minor: 0, credit_minor: 700 },
                    ],
                }),
            },
            E::PointsCredited(pb::PointsCredited {
                account_id: "acc-1".into(),
                amount: 700,
                reason: "top-up inv-9".into(),
                seller_merchant_id: "mer-1".into(),
                currency: "EUR".into(),
                postings: vec![
                    pb::Posting { kind: pb::LedgerAccountKind::MerchantClearing as i32, account: "mer-1".into(), debit_minor: 700, credit_minor: 0 },
                    pb::Posting { kind: pb::LedgerAccountKind::ConsumerPoints as i32, account: "acc-1".into(), debit_minor: 0, credit_minor: 700 },
                ],
            }),
        ),
        (
            Event::PointsHeld {
                account_id: AccountId::new("acc-1"),
                voucher_id: VoucherId::new("vou-1"),
                amount: 129,
                expires_at: Millis(1_767_225_900_000),
                nonce_hash: Some(hash(21)),
            },
            E::PointsHeld(pb::PointsHeld {
                account_id: "acc-1".into(),
                voucher_id: "vou-1".into(),
                amount: 129,
                expires_at_ms: 1_767_225_900_000,
                authorization_nonce_hash: hash(21).to_vec(),
            }),
        ),
        (
            Event::HoldPosted { account_id: AccountId::new("acc-1"), voucher_id: VoucherId::new("vou-1"), amount: 129 },
            E::HoldPosted(pb::HoldPosted { account_id: "acc-1".into(), voucher_id: "vou-1".into(), amount: 129 }),
        ),
        (
            Event::HoldReleased { account_id: AccountId::new("acc-1"), voucher_id: VoucherId::new("vou-2"), amount: 77, reason: VoidReason::TimedOut },
            E::HoldReleased(pb::HoldReleased { account_id: "acc-1".into(), voucher_id: "vou-2".into(), amount: 77, reason: pb::VoidReason::TimedOut as i32 }),
        ),
        (
            Event::OrderPlaced {
                order_id: OrderId::new("ord-1"),
                merchant_id: MerchantId::new("mer-1"),
                media_id: MediaId::new("med-1"),
                units: 500,
                price_per_unit_minor: 80,
                settles_by: Some((
                    "EUR".into(),
                    RoyaltyTerms {
                        retailer_bps: 3000,
                        distributor_bps: 2000,
                        owner_bps: 5000,
                        distributor: "dist-1".into(),
                        owner: "own-1".into(),
                        rights_agent: "agent-1".into(),
                    },
                )),
            },
            E::OrderPlaced(pb::OrderPlaced {
                order_id: "ord-1".into(),
                merchant_id: "mer-1".into(),
                media_id: "med-1".into(),
                units: 500,
                price_per_unit_minor: 80,
                currency: "EUR".into(),
                terms: Some(pb::RoyaltyTerms {
                    retailer_bps: 3000,
                    distributor_bps: 2000,
                    owner_bps: 5000,
                    distributor: "dist-1".into(),
                    owner: "own-1".into(),
                    rights_agent: "agent-1".into(),
                }),
            }),
        ),
        (
            Event::UnitBound {
                order_id: OrderId::new("ord-1"),
                unit: 17,
                device_id: "dev-1".into(),
                device_public_key_hash: hash(13),
                wrapped_key_hash: Some(hash(14)),
                charge: Some(UnitCharge {
                    merchant: MerchantId::new("mer-1"),
                    media_id: MediaId::new("med-1"),
                    price_minor: 80,
                    currency: "EUR".into(),
                    postings: vec![
                        Posting { kind: LedgerAccountKind::MerchantClearing, account: "mer-1".into(), debit_minor: 80, credit_minor: 0 },
                        Posting { kind: LedgerAccountKind::Owner, account: "own-1".into(), debit_minor: 0, credit_minor: 80 },
                    ],
                }),
            },
            E::UnitBound(pb::UnitBound {
                order_id: "ord-1".into(),
                unit: 17,
                device_id: "dev-1".into(),
                device_public_key_hash: hash(13).to_vec(),
                wrapped_key_hash: hash(14).to_vec(),
                merchant_id: "mer-1".into(),
                media_id: "med-1".into(),
                price_minor: 80,
                currency: "EUR".into(),
                postings: vec![
                    pb::Posting { kind: pb::LedgerAccountKind::MerchantClearing as i32, account: "mer-1".into(), debit_minor: 80, credit_minor: 0 },
                    pb::Posting { kind: pb::LedgerAccountKind::Owner as i32, account: "own-1".into(), debit_minor: 0, credit_minor: 80 },
                ],
            }),
        ),
        (Event::UnitCompleted { order_id: OrderId::new("ord-1"), unit: 18 }, E::UnitCompleted(pb::UnitCompleted { order_id: "ord-1".into(), unit: 18 })),
        (
            Event::ConfigChanged { key: "reservation_ttl_ms".into(), value: "300000".into() },
            E::ConfigChanged(pb::ConfigChanged { key: "reservation_ttl_ms".into(), value: "300000".into() }),
        ),
        (
            Event::EngineKeyRotated { key_id: "k2".into(), public_key_der: vec![0x30, 2], previous_key_id: "k1".into(), rotated_at: Millis(1_700) },
            E::EngineKeyRotated(pb::EngineKeyRotated {
                key_id: "k2".into(),
                public_key_der: vec![0x30, 2],
                previous_key_id: "k1".into(),
                rotated_at_ms: 1_700,
            }),
        ),
        (Event::EngineKeyRevoked { key_id: "k1".into() }, E::EngineKeyRevoked(pb::EngineKeyRevoked { key_id: "k1".into() })),
        (
            Event::TokenKeyRotated { key_id: 2, previous_key_id: 1, rotated_at: Millis(1_800) },
            E::TokenKeyRotated(pb::TokenKeyRotated { key_id: 2, previous_key_id: 1, rotated_at_ms: 1_800 }),
        ),
        (
            Event::CheckpointKeyRotated { vkey: "log+0a0b0c0d+AQ".into(), previous_vkey: "log+01020304+Ag".into(), rotated_at: Millis(1_900) },
            E::CheckpointKeyRotated(pb::CheckpointKeyRotated { vkey: "log+0a0b0c0d+AQ".into(), previous_vkey: "log+01020304+Ag".into(), rotated_at_ms: 1_900 }),
        ),
        (
            Event::MerchantRentalWindowSet { merchant_id: MerchantId::new("mer-1"), window_ms_min: 3_600_000, window_ms_max: 7_200_000 },
            E::MerchantRentalWindowSet(pb::MerchantRentalWindowSet { merchant_id: "mer-1".into(), window_ms_min: 3_600_000, window_ms_max: 7_200_000 }),
        ),
    ]
}

/// The one `(Event, protobuf event)` example of a variant.
pub(super) fn example(index: usize) -> (Event, E) {
    examples().into_iter().find(|(event, _)| variant_index(event) == index).expect("every variant has an example")
}

/// Wraps an event in fixed envelope metadata.
pub(super) fn recorded(event: Event) -> Recorded {
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
pub(super) fn envelope_of(recorded: &Recorded, event: E) -> pb::Envelope {
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
