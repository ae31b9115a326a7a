//! The one place where domain events become bytes and bytes become domain events:
//! `Recorded` ⇄ `proto::v1::Envelope`. Decoding untrusted bytes never panics; every way it
//! can fail is a `DecodeError`. Old schema versions are upcast here when read, never
//! rewritten in the stream.

use crate::domain::event::{
    Actor, ActorKind, AggregateKind, AggregateRef, Event, LedgerAccountKind, MediaPublished, Payment, PointsSale, Posting, PreviewClip, Recorded, Rendition,
    ReservedItem, RightsReportSealed, RoyaltyTerms, SealCheckpoint, UnitCharge, VoidReason,
};
use crate::ids::{AccountId, AuditorId, CertSerial, ConsumerId, MediaId, MerchantId, Millis, NodeId, OrderId, PreviewId, PublisherId, VoucherId};
use pb::envelope::Event as E;
use prost::Message;
use proto::v1 as pb;

/// The envelope layout this build writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a protobuf envelope: {0}")]
    Protobuf(String),
    #[error("schema version {0} is newer than this build understands (max {SCHEMA_VERSION}); upgrade vouchsafe")]
    UnsupportedSchema(u32),
    #[error("envelope lacks {0}")]
    Missing(&'static str),
    #[error("field {field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the event belongs to {actual:?}, but the envelope names {named:?}")]
    WrongAggregate { named: AggregateRef, actual: AggregateRef },
}

/// Encodes a recorded event as envelope bytes.
pub fn encode(recorded: &Recorded) -> Vec<u8> {
    envelope_of(recorded).encode_to_vec()
}

/// Decodes envelope bytes (of any supported schema version) into a recorded event.
pub fn decode(bytes: &[u8]) -> Result<Recorded, DecodeError> {
    let envelope = pb::Envelope::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    recorded_of(upcast(envelope)?)
}

/// As `decode`, from bytes held in a `Bytes` (a stored event's payload), with the same
/// result for the same bytes. The envelope's byte fields (the event id, hashes) are then
/// sliced from the payload and copied once into their field; decoding from a `&[u8]`, prost
/// copies each into a `Bytes` of its own first: one allocation more per byte field, and
/// every event has one (its id). Cloning `bytes` is a reference count (or, for bytes not
/// yet shared, their one promotion to shared).
pub fn decode_shared(bytes: &bytes::Bytes) -> Result<Recorded, DecodeError> {
    let envelope = pb::Envelope::decode(bytes.clone()).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    recorded_of(upcast(envelope)?)
}

/// Brings an envelope of an older schema version to the current layout. Version 1 is the
/// first; later versions add their conversions here.
fn upcast(envelope: pb::Envelope) -> Result<pb::Envelope, DecodeError> {
    match envelope.schema_version {
        SCHEMA_VERSION => Ok(envelope),
        0 => Err(DecodeError::Missing("schema_version")),
        newer => Err(DecodeError::UnsupportedSchema(newer)),
    }
}

#[cfg(test)]
mod tests;

fn envelope_of(recorded: &Recorded) -> pb::Envelope {
    pb::Envelope {
        schema_version: SCHEMA_VERSION,
        event_id: recorded.event_id.to_vec(),
        aggregate: Some(pb::AggregateRef { r#type: aggregate_type(recorded.aggregate.kind) as i32, id: recorded.aggregate.id.clone() }),
        aggregate_version: recorded.aggregate_version,
        recorded_at_ms: recorded.recorded_at.0,
        request_id: recorded.request_id.clone(),
        actor: Some(pb::Actor { kind: actor_kind(recorded.actor.kind) as i32, id: recorded.actor.id.clone() }),
        command: recorded.command.clone(),
        event: Some(event_to_pb(&recorded.event)),
    }
}

fn recorded_of(envelope: pb::Envelope) -> Result<Recorded, DecodeError> {
    let aggregate = envelope.aggregate.ok_or(DecodeError::Missing("aggregate"))?;
    let aggregate = AggregateRef::new(aggregate_kind_of(aggregate.r#type)?, aggregate.id);
    let actor = envelope.actor.ok_or(DecodeError::Missing("actor"))?;
    let event = event_of_pb(envelope.event.ok_or(DecodeError::Missing("event"))?)?;
    let (kind, id) = event.aggregate_key();
    if !aggregate.is(kind, id) {
        return Err(DecodeError::WrongAggregate { named: aggregate, actual: event.aggregate() });
    }
    Ok(Recorded {
        event_id: array::<16>("event_id", &envelope.event_id)?,
        aggregate,
        aggregate_version: envelope.aggregate_version,
        recorded_at: Millis(envelope.recorded_at_ms),
        request_id: envelope.request_id,
        actor: Actor { kind: actor_kind_of(actor.kind)?, id: actor.id },
        command: envelope.command,
        event,
    })
}

fn array<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], DecodeError> {
    bytes.try_into().map_err(|_| DecodeError::Invalid { field, reason: format!("must be {N} bytes, not {}", bytes.len()) })
}

/// A seal's checkpoint fields: none when the origin is empty (seals written before).
fn seal_checkpoint(origin: String, tree_size: u64, root: &[u8], signature: Vec<u8>, proof: &[Vec<u8>]) -> Result<Option<SealCheckpoint>, DecodeError> {
    if origin.is_empty() {
        return Ok(None);
    }
    if proof.len() > crate::tlog::PROOF_HASHES_MAX {
        return Err(DecodeError::Invalid { field: "last_leaf_proof", reason: format!("at most {} hashes", crate::tlog::PROOF_HASHES_MAX) });
    }
    let last_leaf_proof = proof.iter().map(|hash| array("last_leaf_proof", hash)).collect::<Result<_, _>>()?;
    Ok(Some(SealCheckpoint { origin, tree_size, root: array("tree_root", root)?, signature, last_leaf_proof }))
}

fn aggregate_type(kind: AggregateKind) -> pb::AggregateType {
    use pb::AggregateType as T;
    match kind {
        AggregateKind::Voucher => T::Voucher,
        AggregateKind::Media => T::Media,
        AggregateKind::Merchant => T::Merchant,
        AggregateKind::Node => T::Node,
        AggregateKind::Consumer => T::Consumer,
        AggregateKind::Account => T::Account,
        AggregateKind::Order => T::Order,
        AggregateKind::Preview => T::Preview,
        AggregateKind::Report => T::Report,
        AggregateKind::Config => T::Config,
        AggregateKind::Auditor => T::Auditor,
        AggregateKind::Publisher => T::Publisher,
    }
}

fn aggregate_kind_of(value: i32) -> Result<AggregateKind, DecodeError> {
    use pb::AggregateType as T;
    Ok(match T::try_from(value).map_err(|_| invalid_enum("aggregate.type", value))? {
        T::Voucher => AggregateKind::Voucher,
        T::Media => AggregateKind::Media,
        T::Merchant => AggregateKind::Merchant,
        T::Node => AggregateKind::Node,
        T::Consumer => AggregateKind::Consumer,
        T::Account => AggregateKind::Account,
        T::Order => AggregateKind::Order,
        T::Preview => AggregateKind::Preview,
        T::Report => AggregateKind::Report,
        T::Config => AggregateKind::Config,
        T::Auditor => AggregateKind::Auditor,
        T::Publisher => AggregateKind::Publisher,
        T::Unspecified => return Err(DecodeError::Missing("aggregate.type")),
    })
}

fn actor_kind(kind: ActorKind) -> pb::ActorKind {
    use pb::ActorKind as K;
    match kind {
        ActorKind::Operator => K::Operator,
        ActorKind::Merchant => K::Merchant,
        ActorKind::Node => K::Node,
        ActorKind::Publisher => K::Publisher,
        ActorKind::Auditor => K::Auditor,
        ActorKind::Engine => K::Engine,
    }
}

fn actor_kind_of(value: i32) -> Result<ActorKind, DecodeError> {
    use pb::ActorKind as K;
    Ok(match K::try_from(value).map_err(|_| invalid_enum("actor.kind", value))? {
        K::Operator => ActorKind::Operator,
        K::Merchant => ActorKind::Merchant,
        K::Node => ActorKind::Node,
        K::Publisher => ActorKind::Publisher,
        K::Auditor => ActorKind::Auditor,
        K::Engine => ActorKind::Engine,
        K::Unspecified => return Err(DecodeError::Missing("actor.kind")),
    })
}

fn invalid_enum(field: &'static str, value: i32) -> DecodeError {
    DecodeError::Invalid { field, reason: format!("unknown enum value {value}") }
}

fn void_reason(reason: VoidReason) -> pb::VoidReason {
    match reason {
        VoidReason::Refunded => pb::VoidReason::Refunded,
        VoidReason::TimedOut => pb::VoidReason::TimedOut,
    }
}

fn void_reason_of(value: i32) -> Result<VoidReason, DecodeError> {
    match pb::VoidReason::try_from(value).map_err(|_| invalid_enum("reason", value))? {
        pb::VoidReason::Refunded => Ok(VoidReason::Refunded),
        pb::VoidReason::TimedOut => Ok(VoidReason::TimedOut),
        pb::VoidReason::Unspecified => Err(DecodeError::Missing("reason")),
    }
}

fn ledger_kind(kind: LedgerAccountKind) -> pb::LedgerAccountKind {
    use pb::LedgerAccountKind as K;
    match kind {
        LedgerAccountKind::ConsumerPoints => K::ConsumerPoints,
        LedgerAccountKind::MerchantClearing => K::MerchantClearing,
        LedgerAccountKind::Retailer => K::Retailer,
        LedgerAccountKind::Distributor => K::Distributor,
        LedgerAccountKind::Owner => K::Owner,
    }
}

fn ledger_kind_of(value: i32) -> Result<LedgerAccountKind, DecodeError> {
    use pb::LedgerAccountKind as K;
    Ok(match K::try_from(value).map_err(|_| invalid_enum("posting.kind", value))? {
        K::ConsumerPoints => LedgerAccountKind::ConsumerPoints,
        K::MerchantClearing => LedgerAccountKind::MerchantClearing,
        K::Retailer => LedgerAccountKind::Retailer,
        K::Distributor => LedgerAccountKind::Distributor,
        K::Owner => LedgerAccountKind::Owner,
        K::Unspecified => return Err(DecodeError::Missing("posting.kind")),
    })
}

fn postings_to_pb(postings: &[Posting]) -> Vec<pb::Posting> {
    postings
        .iter()
        .map(|p| pb::Posting { kind: ledger_kind(p.kind) as i32, account: p.account.clone(), debit_minor: p.debit_minor, credit_minor: p.credit_minor })
        .collect()
}

fn postings_of(postings: Vec<pb::Posting>) -> Result<Vec<Posting>, DecodeError> {
    postings
        .into_iter()
        .map(|p| Ok(Posting { kind: ledger_kind_of(p.kind)?, account: p.account, debit_minor: p.debit_minor, credit_minor: p.credit_minor }))
        .collect()
}

fn hashes_of(field: &'static str, hashes: Vec<Vec<u8>>) -> Result<Vec<[u8; 32]>, DecodeError> {
    hashes.iter().map(|h| array::<32>(field, h)).collect()
}

/// An optional 32-byte hash: absent (empty) in events written before the field existed.
fn optional_hash(field: &'static str, bytes: &[u8]) -> Result<Option<[u8; 32]>, DecodeError> {
    if bytes.is_empty() { Ok(None) } else { array::<32>(field, bytes).map(Some) }
}

fn ids_to_strings<T: AsRef<str>>(ids: &[T]) -> Vec<String> {
    ids.iter().map(|id| id.as_ref().to_string()).collect()
}

macro_rules! impl_as_ref {
    ($($t:ty),*) => { $(impl AsRef<str> for $t { fn as_ref(&self) -> &str { &self.0 } })* };
}
impl_as_ref!(MediaId);

fn terms_to_pb(terms: &RoyaltyTerms) -> pb::RoyaltyTerms {
    pb::RoyaltyTerms {
        retailer_bps: terms.retailer_bps,
        distributor_bps: terms.distributor_bps,
        owner_bps: terms.owner_bps,
        distributor: terms.distributor.clone(),
        owner: terms.owner.clone(),
        rights_agent: terms.rights_agent.clone(),
    }
}

fn terms_of(terms: pb::RoyaltyTerms) -> RoyaltyTerms {
    RoyaltyTerms {
        retailer_bps: terms.retailer_bps,
        distributor_bps: terms.distributor_bps,
        owner_bps: terms.owner_bps,
        distributor: terms.distributor,
        owner: terms.owner,
        rights_agent: terms.rights_agent,
    }
}

fn media_published_to_pb(m: &MediaPublished) -> pb::MediaPublished {
    pb::MediaPublished {
        media_id: m.media_id.0.clone(),
        publisher: m.publisher.clone(),
        title: m.title.clone(),
        artist: m.artist.clone(),
        authors: m.authors.clone(),
        length_ms: m.length_ms,
        price_minor: m.price_minor,
        currency: m.currency.clone(),
        terms: Some(terms_to_pb(&m.terms)),
        renditions: m
            .renditions
            .iter()
            .map(|r| pb::Rendition { name: r.name.clone(), bitrate_kbps: r.bitrate_kbps, content_hash: r.content_hash.to_vec(), size_bytes: r.size_bytes })
            .collect(),
        preview: Some(pb::PreviewClip { start_ms: m.preview.start_ms, duration_ms: m.preview.duration_ms }),
        image_descriptor: m.image_descriptor.clone(),
        for_sale: m.for_sale,
        engine_key_id: m.engine_key_id.clone(),
        wrapped_media_key: m.wrapped_media_key.clone(),
        container_format: u32::from(m.container_format),
    }
}

fn media_published_of(m: pb::MediaPublished) -> Result<MediaPublished, DecodeError> {
    let terms = m.terms.ok_or(DecodeError::Missing("terms"))?;
    let preview = m.preview.unwrap_or_default();
    Ok(MediaPublished {
        media_id: MediaId(m.media_id),
        publisher: m.publisher,
        title: m.title,
        artist: m.artist,
        authors: m.authors,
        length_ms: m.length_ms,
        price_minor: m.price_minor,
        currency: m.currency,
        terms: terms_of(terms),
        renditions: m
            .renditions
            .into_iter()
            .map(|r| {
                Ok(Rendition {
                    name: r.name,
                    bitrate_kbps: r.bitrate_kbps,
                    content_hash: array::<32>("renditions.content_hash", &r.content_hash)?,
                    size_bytes: r.size_bytes,
                })
            })
            .collect::<Result<_, DecodeError>>()?,
        preview: PreviewClip { start_ms: preview.start_ms, duration_ms: preview.duration_ms },
        image_descriptor: m.image_descriptor,
        for_sale: m.for_sale,
        engine_key_id: m.engine_key_id,
        wrapped_media_key: m.wrapped_media_key,
        container_format: u8::try_from(m.container_format).map_err(|_| DecodeError::Invalid { field: "container_format", reason: "must be 0..=255".into() })?,
    })
}

fn event_to_pb(event: &Event) -> E {
    match event {
        Event::MediaPublished(m) => E::MediaPublished(media_published_to_pb(m)),
        Event::MediaWithdrawn { media_id, reason } => E::MediaWithdrawn(pb::MediaWithdrawn { media_id: media_id.0.clone(), reason: reason.clone() }),
        Event::PriceChanged { media_id, price_minor } => E::PriceChanged(pb::PriceChanged { media_id: media_id.0.clone(), price_minor: *price_minor }),
        Event::MerchantRegistered { merchant_id, name, credential_hash } => {
            E::MerchantRegistered(pb::MerchantRegistered { merchant_id: merchant_id.0.clone(), name: name.clone(), credential_hash: credential_hash.to_vec() })
        }
        Event::MerchantSuspended { merchant_id, reason } => {
            E::MerchantSuspended(pb::MerchantSuspended { merchant_id: merchant_id.0.clone(), reason: reason.clone() })
        }
        Event::MerchantRentalWindowSet { merchant_id, window_ms_min, window_ms_max } => E::MerchantRentalWindowSet(pb::MerchantRentalWindowSet {
            merchant_id: merchant_id.0.clone(),
            window_ms_min: *window_ms_min,
            window_ms_max: *window_ms_max,
        }),
        Event::MerchantReinstated { merchant_id, reason } => {
            E::MerchantReinstated(pb::MerchantReinstated { merchant_id: merchant_id.0.clone(), reason: reason.clone() })
        }
        Event::AuditorRegistered { auditor_id, name, credential_hash } => {
            E::AuditorRegistered(pb::AuditorRegistered { auditor_id: auditor_id.0.clone(), name: name.clone(), credential_hash: credential_hash.to_vec() })
        }
        Event::AuditorRevoked { auditor_id, reason } => E::AuditorRevoked(pb::AuditorRevoked { auditor_id: auditor_id.0.clone(), reason: reason.clone() }),
        Event::PublisherRegistered { publisher_id, name, credential_hash, terms } => E::PublisherRegistered(pb::PublisherRegistered {
            publisher_id: publisher_id.0.clone(),
            name: name.clone(),
            credential_hash: credential_hash.to_vec(),
            terms: Some(terms_to_pb(terms)),
        }),
        Event::PublisherKeyAdded { publisher_id, key_id, public_key_der } => {
            E::PublisherKeyAdded(pb::PublisherKeyAdded { publisher_id: publisher_id.0.clone(), key_id: key_id.clone(), public_key_der: public_key_der.clone() })
        }
        Event::AccessLapsed { voucher_id, node_id } => E::AccessLapsed(pb::AccessLapsed { voucher_id: voucher_id.0.clone(), node_id: node_id.0.clone() }),
        Event::AccessRenewed { voucher_id, node_id, previous_node, access_expires_at } => E::AccessRenewed(pb::AccessRenewed {
            voucher_id: voucher_id.0.clone(),
            node_id: node_id.0.clone(),
            previous_node_id: previous_node.as_ref().map(|node| node.0.clone()).unwrap_or_default(),
            access_expires_at_ms: access_expires_at.0,
        }),
        Event::NodeRegistered { node_id, region, slots_max, credential_hash } => E::NodeRegistered(pb::NodeRegistered {
            node_id: node_id.0.clone(),
            region: region.clone(),
            slots_max: *slots_max,
            credential_hash: credential_hash.to_vec(),
        }),
        Event::NodeCapacityChanged { node_id, slots_max } => {
            E::NodeCapacityChanged(pb::NodeCapacityChanged { node_id: node_id.0.clone(), slots_max: *slots_max })
        }
        Event::SlotsLeased { node_id, lease, holder, slots, until } => {
            E::SlotsLeased(pb::SlotsLeased { node_id: node_id.0.clone(), lease: *lease, holder: holder.clone(), slots: *slots, until_ms: until.0 })
        }
        Event::SlotsWanted { node_id, holder, until } => {
            E::SlotsWanted(pb::SlotsWanted { node_id: node_id.0.clone(), holder: holder.clone(), until_ms: until.0 })
        }
        Event::NodeDrained { node_id } => E::NodeDrained(pb::NodeDrained { node_id: node_id.0.clone() }),
        Event::NodeRemoved { node_id } => E::NodeRemoved(pb::NodeRemoved { node_id: node_id.0.clone() }),
        Event::ConsumerCertified { consumer_id, cert_serial, public_key_der, not_before, not_after, engine_key_id, signature } => {
            E::ConsumerCertified(pb::ConsumerCertified {
                consumer_id: consumer_id.0.clone(),
                cert_serial: cert_serial.0.clone(),
                public_key_der: public_key_der.clone(),
                not_before_ms: not_before.0,
                not_after_ms: not_after.0,
                engine_key_id: engine_key_id.clone(),
                signature: signature.clone(),
            })
        }
        Event::CertRevoked { consumer_id, cert_serial, reason } => {
            E::CertRevoked(pb::CertRevoked { consumer_id: consumer_id.0.clone(), cert_serial: cert_serial.0.clone(), reason: reason.clone() })
        }
        Event::Reserved { voucher_id, merchant_id, items, rendition, price_minor, currency, expires_at, payment, token_key_id, auth_generation, rental_ms } => {
            E::Reserved(pb::Reserved {
                voucher_id: voucher_id.0.clone(),
                merchant_id: merchant_id.0.clone(),
                items: items.iter().map(|i| pb::ReservedItem { media_id: i.media_id.0.clone(), price_minor: i.price_minor }).collect(),
                rendition: rendition.clone(),
                price_minor: *price_minor,
                currency: currency.clone(),
                expires_at_ms: expires_at.0,
                payment: Some(match payment {
                    Payment::Merchant { payment_ref } => pb::reserved::Payment::Merchant(pb::MerchantPayment { payment_ref: payment_ref.clone() }),
                    Payment::Points { account } => pb::reserved::Payment::Points(pb::PointsPayment { account_id: account.0.clone() }),
                }),
                token_key_id: *token_key_id,
                auth_generation: *auth_generation,
                rental_ms: *rental_ms,
            })
        }
        Event::Authorized { voucher_id, receipt_key_id, receipt_generation, postings, rental_until } => E::Authorized(pb::Authorized {
            voucher_id: voucher_id.0.clone(),
            receipt_key_id: *receipt_key_id,
            receipt_generation: *receipt_generation,
            postings: postings_to_pb(postings),
            rental_until_ms: rental_until.0,
        }),
        Event::Voided { voucher_id, reason, reversal } => {
            E::Voided(pb::Voided { voucher_id: voucher_id.0.clone(), reason: void_reason(*reason) as i32, reversal: postings_to_pb(reversal) })
        }
        Event::CopyRecovered { voucher_id, node_id, consumer_id, cert_serial, challenge_hash, consumer_key_hash, recovery } => {
            E::CopyRecovered(pb::CopyRecovered {
                voucher_id: voucher_id.0.clone(),
                node_id: node_id.0.clone(),
                consumer_id: consumer_id.0.clone(),
                cert_serial: cert_serial.0.clone(),
                challenge_hash: challenge_hash.to_vec(),
                consumer_key_hash: consumer_key_hash.to_vec(),
                recovery: *recovery,
            })
        }
        Event::Refunded { voucher_id, reason, chargeback, reversal, media_ids } => E::Refunded(pb::Refunded {
            voucher_id: voucher_id.0.clone(),
            reason: reason.clone(),
            chargeback: *chargeback,
            reversal: postings_to_pb(reversal),
            media_ids: media_ids.iter().map(|media| media.0.clone()).collect(),
        }),
        Event::VoucherIssued { voucher_id, node_id, merchant_id, media_ids, rendition, access_expires_at, previous_node, lease } => {
            E::VoucherIssued(pb::VoucherIssued {
                voucher_id: voucher_id.0.clone(),
                node_id: node_id.0.clone(),
                merchant_id: merchant_id.0.clone(),
                media_ids: ids_to_strings(media_ids),
                rendition: rendition.clone(),
                access_expires_at_ms: access_expires_at.0,
                previous_node_id: previous_node.as_ref().map(|node| node.0.clone()).unwrap_or_default(),
                lease: *lease,
            })
        }
        Event::RedemptionAccepted {
            voucher_id,
            node_id,
            consumer_id,
            cert_serial,
            wrapped_key_hashes,
            challenge_hash,
            consumer_key_hash,
            released_media,
            rental_play,
        } => E::RedemptionAccepted(pb::RedemptionAccepted {
            voucher_id: voucher_id.0.clone(),
            node_id: node_id.0.clone(),
            consumer_id: consumer_id.0.clone(),
            cert_serial: cert_serial.0.clone(),
            wrapped_key_hashes: wrapped_key_hashes.iter().map(|h| h.to_vec()).collect(),
            challenge_hash: challenge_hash.map(|h| h.to_vec()).unwrap_or_default(),
            consumer_key_hash: consumer_key_hash.map(|h| h.to_vec()).unwrap_or_default(),
            released_media_ids: released_media.iter().map(|m| m.0.clone()).collect(),
            rental_play: *rental_play,
        }),
        Event::RentalPlayEnded { voucher_id, node_id, play } => {
            E::RentalPlayEnded(pb::RentalPlayEnded { voucher_id: voucher_id.0.clone(), node_id: node_id.0.clone(), play: *play })
        }
        Event::DeliveryFailed { voucher_id, node_id, reason } => {
            E::DeliveryFailed(pb::DeliveryFailed { voucher_id: voucher_id.0.clone(), node_id: node_id.0.clone(), reason: reason.clone() })
        }
        Event::Delivered { voucher_id, node_id, media_id, cert_serial, content_hash, size_bytes, voucher_complete } => E::Delivered(pb::Delivered {
            voucher_id: voucher_id.0.clone(),
            node_id: node_id.0.clone(),
            media_id: media_id.0.clone(),
            cert_serial: cert_serial.0.clone(),
            content_hash: content_hash.to_vec(),
            size_bytes: *size_bytes,
            voucher_complete: *voucher_complete,
        }),
        Event::PreviewStarted { preview_id, media_id, node_id, merchant_id, clip_ms, lapses_at, lease } => E::PreviewStarted(pb::PreviewStarted {
            preview_id: preview_id.0.clone(),
            media_id: media_id.0.clone(),
            node_id: node_id.0.clone(),
            merchant_id: merchant_id.0.clone(),
            clip_ms: *clip_ms,
            lapses_at_ms: lapses_at.0,
            lease: *lease,
        }),
        Event::PreviewEnded { preview_id, played_ms, media_id, node_id } => E::PreviewEnded(pb::PreviewEnded {
            preview_id: preview_id.0.clone(),
            played_ms: *played_ms,
            media_id: media_id.0.clone(),
            node_id: node_id.0.clone(),
        }),
        Event::RightsReportSealed(s) => E::RightsReportSealed(pb::RightsReportSealed {
            epoch: s.epoch,
            first_entry: s.first_entry,
            last_entry: s.last_entry,
            head_y: s.head_y.to_vec(),
            head_z: s.head_z.to_vec(),
            merkle_root: s.merkle_root.to_vec(),
            totals_digest: s.totals_digest.to_vec(),
            prev_seal_hash: s.prev_seal_hash.to_vec(),
            engine_key_id: s.engine_key_id.clone(),
            signature: s.signature.clone(),
            last_stream_seq: s.last_stream_seq,
            stream_head: s.stream_head.to_vec(),
            checkpoint_origin: s.checkpoint.as_ref().map(|c| c.origin.clone()).unwrap_or_default(),
            tree_size: s.checkpoint.as_ref().map_or(0, |c| c.tree_size),
            tree_root: s.checkpoint.as_ref().map(|c| c.root.to_vec()).unwrap_or_default(),
            checkpoint_signature: s.checkpoint.as_ref().map(|c| c.signature.clone()).unwrap_or_default(),
            last_leaf_proof: s.checkpoint.as_ref().map(|c| c.last_leaf_proof.iter().map(|h| h.to_vec()).collect()).unwrap_or_default(),
        }),
        Event::PointsCredited { account_id, amount, reason, sale } => E::PointsCredited(pb::PointsCredited {
            account_id: account_id.0.clone(),
            amount: *amount,
            reason: reason.clone(),
            seller_merchant_id: sale.as_ref().map(|sale| sale.merchant.0.clone()).unwrap_or_default(),
            currency: sale.as_ref().map(|sale| sale.currency.clone()).unwrap_or_default(),
            postings: sale.as_ref().map(|sale| postings_to_pb(&sale.postings)).unwrap_or_default(),
        }),
        Event::PointsHeld { account_id, voucher_id, amount, expires_at, nonce_hash } => E::PointsHeld(pb::PointsHeld {
            account_id: account_id.0.clone(),
            voucher_id: voucher_id.0.clone(),
            amount: *amount,
            expires_at_ms: expires_at.0,
            authorization_nonce_hash: nonce_hash.map(|h| h.to_vec()).unwrap_or_default(),
        }),
        Event::HoldPosted { account_id, voucher_id, amount } => {
            E::HoldPosted(pb::HoldPosted { account_id: account_id.0.clone(), voucher_id: voucher_id.0.clone(), amount: *amount })
        }
        Event::HoldReleased { account_id, voucher_id, amount, reason } => E::HoldReleased(pb::HoldReleased {
            account_id: account_id.0.clone(),
            voucher_id: voucher_id.0.clone(),
            amount: *amount,
            reason: void_reason(*reason) as i32,
        }),
        Event::OrderPlaced { order_id, merchant_id, media_id, units, price_per_unit_minor, settles_by } => E::OrderPlaced(pb::OrderPlaced {
            order_id: order_id.0.clone(),
            merchant_id: merchant_id.0.clone(),
            media_id: media_id.0.clone(),
            units: *units,
            price_per_unit_minor: *price_per_unit_minor,
            currency: settles_by.as_ref().map(|(currency, _)| currency.clone()).unwrap_or_default(),
            terms: settles_by.as_ref().map(|(_, terms)| terms_to_pb(terms)),
        }),
        Event::UnitBound { order_id, unit, device_id, device_public_key_hash, wrapped_key_hash, charge } => E::UnitBound(pb::UnitBound {
            order_id: order_id.0.clone(),
            unit: *unit,
            device_id: device_id.clone(),
            device_public_key_hash: device_public_key_hash.to_vec(),
            wrapped_key_hash: wrapped_key_hash.map(|h| h.to_vec()).unwrap_or_default(),
            merchant_id: charge.as_ref().map(|c| c.merchant.0.clone()).unwrap_or_default(),
            media_id: charge.as_ref().map(|c| c.media_id.0.clone()).unwrap_or_default(),
            price_minor: charge.as_ref().map_or(0, |c| c.price_minor),
            currency: charge.as_ref().map(|c| c.currency.clone()).unwrap_or_default(),
            postings: charge.as_ref().map(|c| postings_to_pb(&c.postings)).unwrap_or_default(),
        }),
        Event::UnitCompleted { order_id, unit } => E::UnitCompleted(pb::UnitCompleted { order_id: order_id.0.clone(), unit: *unit }),
        Event::ConfigChanged { key, value } => E::ConfigChanged(pb::ConfigChanged { key: key.clone(), value: value.clone() }),
        Event::EngineKeyRotated { key_id, public_key_der, previous_key_id, rotated_at } => E::EngineKeyRotated(pb::EngineKeyRotated {
            key_id: key_id.clone(),
            public_key_der: public_key_der.clone(),
            previous_key_id: previous_key_id.clone(),
            rotated_at_ms: rotated_at.0,
        }),
        Event::EngineKeyRevoked { key_id } => E::EngineKeyRevoked(pb::EngineKeyRevoked { key_id: key_id.clone() }),
        Event::TokenKeyRotated { key_id, previous_key_id, rotated_at } => {
            E::TokenKeyRotated(pb::TokenKeyRotated { key_id: *key_id, previous_key_id: *previous_key_id, rotated_at_ms: rotated_at.0 })
        }
        Event::CheckpointKeyRotated { vkey, previous_vkey, rotated_at } => {
            E::CheckpointKeyRotated(pb::CheckpointKeyRotated { vkey: vkey.clone(), previous_vkey: previous_vkey.clone(), rotated_at_ms: rotated_at.0 })
        }
    }
}

fn event_of_pb(event: E) -> Result<Event, DecodeError> {
    Ok(match event {
        E::MediaPublished(m) => Event::MediaPublished(media_published_of(m)?),
        E::MediaWithdrawn(e) => Event::MediaWithdrawn { media_id: MediaId(e.media_id), reason: e.reason },
        E::PriceChanged(e) => Event::PriceChanged { media_id: MediaId(e.media_id), price_minor: e.price_minor },
        E::MerchantRegistered(e) => {
            Event::MerchantRegistered { merchant_id: MerchantId(e.merchant_id), name: e.name, credential_hash: array("credential_hash", &e.credential_hash)? }
        }
        E::MerchantSuspended(e) => Event::MerchantSuspended { merchant_id: MerchantId(e.merchant_id), reason: e.reason },
        E::MerchantReinstated(e) => Event::MerchantReinstated { merchant_id: MerchantId(e.merchant_id), reason: e.reason },
        E::MerchantRentalWindowSet(e) => {
            Event::MerchantRentalWindowSet { merchant_id: MerchantId(e.merchant_id), window_ms_min: e.window_ms_min, window_ms_max: e.window_ms_max }
        }
        E::AuditorRegistered(e) => {
            Event::AuditorRegistered { auditor_id: AuditorId(e.auditor_id), name: e.name, credential_hash: array("credential_hash", &e.credential_hash)? }
        }
        E::AuditorRevoked(e) => Event::AuditorRevoked { auditor_id: AuditorId(e.auditor_id), reason: e.reason },
        E::PublisherRegistered(e) => Event::PublisherRegistered {
            publisher_id: PublisherId(e.publisher_id),
            name: e.name,
            credential_hash: array("credential_hash", &e.credential_hash)?,
            terms: terms_of(e.terms.ok_or(DecodeError::Missing("terms"))?),
        },
        E::PublisherKeyAdded(e) => Event::PublisherKeyAdded { publisher_id: PublisherId(e.publisher_id), key_id: e.key_id, public_key_der: e.public_key_der },
        E::AccessLapsed(e) => Event::AccessLapsed { voucher_id: VoucherId(e.voucher_id), node_id: NodeId(e.node_id) },
        E::AccessRenewed(e) => Event::AccessRenewed {
            voucher_id: VoucherId(e.voucher_id),
            node_id: NodeId(e.node_id),
            previous_node: (!e.previous_node_id.is_empty()).then_some(NodeId(e.previous_node_id)),
            access_expires_at: Millis(e.access_expires_at_ms),
        },
        E::NodeRegistered(e) => Event::NodeRegistered {
            node_id: NodeId(e.node_id),
            region: e.region,
            slots_max: e.slots_max,
            credential_hash: array("credential_hash", &e.credential_hash)?,
        },
        E::NodeCapacityChanged(e) => Event::NodeCapacityChanged { node_id: NodeId(e.node_id), slots_max: e.slots_max },
        E::SlotsWanted(e) => Event::SlotsWanted { node_id: NodeId(e.node_id), holder: e.holder, until: Millis(e.until_ms) },
        E::SlotsLeased(e) => Event::SlotsLeased { node_id: NodeId(e.node_id), lease: e.lease, holder: e.holder, slots: e.slots, until: Millis(e.until_ms) },
        E::NodeDrained(e) => Event::NodeDrained { node_id: NodeId(e.node_id) },
        E::NodeRemoved(e) => Event::NodeRemoved { node_id: NodeId(e.node_id) },
        E::ConsumerCertified(e) => Event::ConsumerCertified {
            consumer_id: ConsumerId(e.consumer_id),
            cert_serial: CertSerial(e.cert_serial),
            public_key_der: e.public_key_der,
            not_before: Millis(e.not_before_ms),
            not_after: Millis(e.not_after_ms),
            engine_key_id: e.engine_key_id,
            signature: e.signature,
        },
        E::CertRevoked(e) => Event::CertRevoked { consumer_id: ConsumerId(e.consumer_id), cert_serial: CertSerial(e.cert_serial), reason: e.reason },
        E::Reserved(e) => Event::Reserved {
            voucher_id: VoucherId(e.voucher_id),
            merchant_id: MerchantId(e.merchant_id),
            items: e.items.into_iter().map(|i| ReservedItem { media_id: MediaId(i.media_id), price_minor: i.price_minor }).collect(),
            rendition: e.rendition,
            price_minor: e.price_minor,
            currency: e.currency,
            expires_at: Millis(e.expires_at_ms),
            payment: match e.payment.ok_or(DecodeError::Missing("payment"))? {
                pb::reserved::Payment::Merchant(p) => Payment::Merchant { payment_ref: p.payment_ref },
                pb::reserved::Payment::Points(p) => Payment::Points { account: AccountId(p.account_id) },
            },
            token_key_id: e.token_key_id,
            auth_generation: e.auth_generation,
            rental_ms: e.rental_ms,
        },
        E::Authorized(e) => Event::Authorized {
            voucher_id: VoucherId(e.voucher_id),
            receipt_key_id: e.receipt_key_id,
            receipt_generation: e.receipt_generation,
            postings: postings_of(e.postings)?,
            rental_until: Millis(e.rental_until_ms),
        },
        E::Voided(e) => Event::Voided { voucher_id: VoucherId(e.voucher_id), reason: void_reason_of(e.reason)?, reversal: postings_of(e.reversal)? },
        E::CopyRecovered(e) => Event::CopyRecovered {
            voucher_id: VoucherId(e.voucher_id),
            node_id: NodeId(e.node_id),
            consumer_id: ConsumerId(e.consumer_id),
            cert_serial: CertSerial(e.cert_serial),
            // Required here (optional in RedemptionAccepted, for events from before them).
            challenge_hash: array::<32>("copy_recovered.challenge_hash", &e.challenge_hash)?,
            consumer_key_hash: array::<32>("copy_recovered.consumer_key_hash", &e.consumer_key_hash)?,
            recovery: e.recovery,
        },
        E::Refunded(e) => Event::Refunded {
            voucher_id: VoucherId(e.voucher_id),
            reason: e.reason,
            chargeback: e.chargeback,
            reversal: postings_of(e.reversal)?,
            media_ids: e.media_ids.into_iter().map(MediaId).collect(),
        },
        E::VoucherIssued(e) => Event::VoucherIssued {
            voucher_id: VoucherId(e.voucher_id),
            node_id: NodeId(e.node_id),
            merchant_id: MerchantId(e.merchant_id),
            media_ids: e.media_ids.into_iter().map(MediaId).collect(),
            rendition: e.rendition,
            access_expires_at: Millis(e.access_expires_at_ms),
            previous_node: (!e.previous_node_id.is_empty()).then_some(NodeId(e.previous_node_id)),
            lease: e.lease,
        },
        E::RedemptionAccepted(e) => Event::RedemptionAccepted {
            voucher_id: VoucherId(e.voucher_id),
            node_id: NodeId(e.node_id),
            consumer_id: ConsumerId(e.consumer_id),
            cert_serial: CertSerial(e.cert_serial),
            wrapped_key_hashes: hashes_of("wrapped_key_hashes", e.wrapped_key_hashes)?,
            challenge_hash: optional_hash("challenge_hash", &e.challenge_hash)?,
            consumer_key_hash: optional_hash("consumer_key_hash", &e.consumer_key_hash)?,
            released_media: e.released_media_ids.into_iter().map(MediaId).collect(),
            rental_play: e.rental_play,
        },
        E::RentalPlayEnded(e) => Event::RentalPlayEnded { voucher_id: VoucherId(e.voucher_id), node_id: NodeId(e.node_id), play: e.play },
        E::DeliveryFailed(e) => Event::DeliveryFailed { voucher_id: VoucherId(e.voucher_id), node_id: NodeId(e.node_id), reason: e.reason },
        E::Delivered(e) => Event::Delivered {
            voucher_id: VoucherId(e.voucher_id),
            node_id: NodeId(e.node_id),
            media_id: MediaId(e.media_id),
            cert_serial: CertSerial(e.cert_serial),
            content_hash: array("content_hash", &e.content_hash)?,
            size_bytes: e.size_bytes,
            voucher_complete: e.voucher_complete,
        },
        E::PreviewStarted(e) => Event::PreviewStarted {
            preview_id: PreviewId(e.preview_id),
            media_id: MediaId(e.media_id),
            node_id: NodeId(e.node_id),
            merchant_id: MerchantId(e.merchant_id),
            clip_ms: e.clip_ms,
            lapses_at: Millis(e.lapses_at_ms),
            lease: e.lease,
        },
        E::PreviewEnded(e) => {
            Event::PreviewEnded { preview_id: PreviewId(e.preview_id), played_ms: e.played_ms, media_id: MediaId(e.media_id), node_id: NodeId(e.node_id) }
        }
        E::RightsReportSealed(s) => Event::RightsReportSealed(RightsReportSealed {
            epoch: s.epoch,
            first_entry: s.first_entry,
            last_entry: s.last_entry,
            head_y: array("head_y", &s.head_y)?,
            head_z: array("head_z", &s.head_z)?,
            merkle_root: array("merkle_root", &s.merkle_root)?,
            totals_digest: array("totals_digest", &s.totals_digest)?,
            prev_seal_hash: array("prev_seal_hash", &s.prev_seal_hash)?,
            engine_key_id: s.engine_key_id,
            signature: s.signature,
            last_stream_seq: s.last_stream_seq,
            stream_head: array("stream_head", &s.stream_head)?,
            checkpoint: seal_checkpoint(s.checkpoint_origin, s.tree_size, &s.tree_root, s.checkpoint_signature, &s.last_leaf_proof)?,
        }),
        E::PointsCredited(e) => Event::PointsCredited {
            account_id: AccountId(e.account_id),
            amount: e.amount,
            reason: e.reason,
            sale: if e.seller_merchant_id.is_empty() {
                None
            } else {
                Some(PointsSale { merchant: MerchantId(e.seller_merchant_id), currency: e.currency, postings: postings_of(e.postings)? })
            },
        },
        E::PointsHeld(e) => Event::PointsHeld {
            account_id: AccountId(e.account_id),
            voucher_id: VoucherId(e.voucher_id),
            amount: e.amount,
            expires_at: Millis(e.expires_at_ms),
            nonce_hash: optional_hash("authorization_nonce_hash", &e.authorization_nonce_hash)?,
        },
        E::HoldPosted(e) => Event::HoldPosted { account_id: AccountId(e.account_id), voucher_id: VoucherId(e.voucher_id), amount: e.amount },
        E::HoldReleased(e) => Event::HoldReleased {
            account_id: AccountId(e.account_id),
            voucher_id: VoucherId(e.voucher_id),
            amount: e.amount,
            reason: void_reason_of(e.reason)?,
        },
        E::OrderPlaced(e) => Event::OrderPlaced {
            order_id: OrderId(e.order_id),
            merchant_id: MerchantId(e.merchant_id),
            media_id: MediaId(e.media_id),
            units: e.units,
            price_per_unit_minor: e.price_per_unit_minor,
            settles_by: e.terms.map(|terms| (e.currency, terms_of(terms))),
        },
        E::UnitBound(e) => Event::UnitBound {
            order_id: OrderId(e.order_id),
            unit: e.unit,
            device_id: e.device_id,
            device_public_key_hash: array("device_public_key_hash", &e.device_public_key_hash)?,
            wrapped_key_hash: optional_hash("wrapped_key_hash", &e.wrapped_key_hash)?,
            charge: if e.media_id.is_empty() {
                None
            } else {
                Some(UnitCharge {
                    merchant: MerchantId(e.merchant_id),
                    media_id: MediaId(e.media_id),
                    price_minor: e.price_minor,
                    currency: e.currency,
                    postings: postings_of(e.postings)?,
                })
            },
        },
        E::UnitCompleted(e) => Event::UnitCompleted { order_id: OrderId(e.order_id), unit: e.unit },
        E::ConfigChanged(e) => Event::ConfigChanged { key: e.key, value: e.value },
        E::EngineKeyRotated(e) => Event::EngineKeyRotated {
            key_id: e.key_id,
            public_key_der: e.public_key_der,
            previous_key_id: e.previous_key_id,
            rotated_at: Millis(e.rotated_at_ms),
        },
        E::EngineKeyRevoked(e) => Event::EngineKeyRevoked { key_id: e.key_id },
        E::TokenKeyRotated(e) => Event::TokenKeyRotated { key_id: e.key_id, previous_key_id: e.previous_key_id, rotated_at: Millis(e.rotated_at_ms) },
        E::CheckpointKeyRotated(e) => Event::CheckpointKeyRotated { vkey: e.vkey, previous_vkey: e.previous_vkey, rotated_at: Millis(e.rotated_at_ms) },
    })
}
