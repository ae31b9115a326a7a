//! Round trip of arbitrary events: proptest strategies that reach every variant and every
//! field's extremes, and the property that `decode(encode(x)) == x` with canonical bytes.
//!
//! What does not live here: the hand-written examples (`examples`) and hostile input
//! (`fuzz`), which reuses these strategies (`arb_recorded`).

use super::examples::{ACTOR_KINDS, LEDGER_KINDS, VARIANT_COUNT, VOID_REASONS, variant_index};
use crate::domain::event::{
    Actor, Event, MediaPublished, Payment, PointsSale, Posting, PreviewClip, Recorded, Rendition, ReservedItem, RightsReportSealed, RoyaltyTerms,
    SealCheckpoint, UnitCharge, VoidReason,
};
use crate::ids::{AccountId, AuditorId, CertSerial, ConsumerId, MediaId, MerchantId, Millis, NodeId, OrderId, PreviewId, PublisherId, VoucherId};
use crate::wire::{decode, encode};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use std::collections::BTreeSet;

/// Strings: empty, id-like, arbitrary printable unicode, and anything at all (controls,
/// NUL, astral-plane characters).
pub(super) fn text() -> impl Strategy<Value = String> {
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
    let posting = (select(LEDGER_KINDS.to_vec()), text(), u64s(), u64s()).prop_map(|(kind, account, debit_minor, credit_minor)| Posting {
        kind,
        account,
        debit_minor,
        credit_minor,
    });
    vec(posting, 0..5)
}

fn arb_terms() -> impl Strategy<Value = RoyaltyTerms> {
    (u32s(), u32s(), u32s(), text(), text(), text()).prop_map(|(retailer_bps, distributor_bps, owner_bps, distributor, owner, rights_agent)| RoyaltyTerms {
        retailer_bps,
        distributor_bps,
        owner_bps,
        distributor,
        owner,
        rights_agent,
    })
}

fn arb_media_published() -> impl Strategy<Value = MediaPublished> {
    let terms = arb_terms();
    let rendition = (text(), u32s(), hash32(), u64s()).prop_map(|(name, bitrate_kbps, content_hash, size_bytes)| Rendition {
        name,
        bitrate_kbps,
        content_hash,
        size_bytes,
    });
    (
        (id(MediaId), text(), text(), text(), vec(text(), 0..4), u64s(), u64s(), text()),
        (terms, vec(rendition, 0..4), u64s(), u64s(), text(), any::<bool>(), text(), bytes()),
        any::<u8>(),
    )
        .prop_map(
            |(
                (media_id, publisher, title, artist, authors, length_ms, price_minor, currency),
                (terms, renditions, start_ms, duration_ms, image_descriptor, for_sale, engine_key_id, wrapped_media_key),
                container_format,
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
                container_format,
            },
        )
}

fn arb_reserved() -> impl Strategy<Value = Event> {
    let item = (id(MediaId), u64s()).prop_map(|(media_id, price_minor)| ReservedItem { media_id, price_minor });
    let payment = prop_oneof![text().prop_map(|payment_ref| Payment::Merchant { payment_ref }), id(AccountId).prop_map(|account| Payment::Points { account }),];
    (id(VoucherId), id(MerchantId), vec(item, 0..5), text(), u64s(), text(), millis(), payment, u32s(), u32s(), u64s()).prop_map(
        |(voucher_id, merchant_id, items, rendition, price_minor, currency, expires_at, payment, token_key_id, auth_generation, rental_ms)| Event::Reserved {
            voucher_id,
            merchant_id,
            items,
            rendition,
            price_minor,
            currency,
            expires_at,
            payment,
            token_key_id,
            auth_generation,
            rental_ms,
        },
    )
}

fn arb_rights_report_sealed() -> impl Strategy<Value = Event> {
    (u64s(), u64s(), u64s(), hash32(), hash32(), hash32(), hash32(), hash32(), text(), bytes(), (u64s(), hash32(), arb_seal_checkpoint())).prop_map(
        |(
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
            (last_stream_seq, stream_head, checkpoint),
        )| {
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
                checkpoint,
            })
        },
    )
}

/// A seal's checkpoint or none; a present one has an origin (empty means none on the wire).
fn arb_seal_checkpoint() -> impl Strategy<Value = Option<SealCheckpoint>> {
    proptest::option::of((text(), u64s(), hash32(), bytes(), vec(hash32(), 0..4)).prop_map(|(origin, tree_size, root, signature, last_leaf_proof)| {
        SealCheckpoint { origin: format!("o{origin}"), tree_size, root, signature, last_leaf_proof }
    }))
}

/// Any event of any variant, every field arbitrary. A new variant also needs an arm here;
/// `arb_event_reaches_every_variant` notices when it is missing.
fn arb_event() -> BoxedStrategy<Event> {
    prop_oneof![
        arb_media_published().prop_map(Event::MediaPublished),
        (id(MediaId), text()).prop_map(|(media_id, reason)| Event::MediaWithdrawn { media_id, reason }),
        (id(MediaId), u64s()).prop_map(|(media_id, price_minor)| Event::PriceChanged { media_id, price_minor }),
        (id(MerchantId), text(), hash32()).prop_map(|(merchant_id, name, credential_hash)| Event::MerchantRegistered { merchant_id, name, credential_hash }),
        (id(MerchantId), text()).prop_map(|(merchant_id, reason)| Event::MerchantSuspended { merchant_id, reason }),
        (id(MerchantId), text()).prop_map(|(merchant_id, reason)| Event::MerchantReinstated { merchant_id, reason }),
        (id(AuditorId), text(), hash32()).prop_map(|(auditor_id, name, credential_hash)| Event::AuditorRegistered { auditor_id, name, credential_hash }),
        (id(AuditorId), text()).prop_map(|(auditor_id, reason)| Event::AuditorRevoked { auditor_id, reason }),
        (id(PublisherId), text(), hash32(), arb_terms()).prop_map(|(publisher_id, name, credential_hash, terms)| Event::PublisherRegistered {
            publisher_id,
            name,
            credential_hash,
            terms
        }),
        (id(PublisherId), text(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(publisher_id, key_id, public_key_der)| Event::PublisherKeyAdded {
            publisher_id,
            key_id,
            public_key_der
        }),
        (id(VoucherId), id(NodeId)).prop_map(|(voucher_id, node_id)| Event::AccessLapsed { voucher_id, node_id }),
        (id(VoucherId), id(NodeId), proptest::option::of("[a-z0-9_-]{1,24}".prop_map(NodeId)), millis())
            .prop_map(|(voucher_id, node_id, previous_node, access_expires_at)| Event::AccessRenewed { voucher_id, node_id, previous_node, access_expires_at }),
        (id(NodeId), id(String::from), millis()).prop_map(|(node_id, holder, until)| Event::SlotsWanted { node_id, holder, until }),
        (id(NodeId), u64s(), id(String::from), u32s(), millis()).prop_map(|(node_id, lease, holder, slots, until)| Event::SlotsLeased {
            node_id,
            lease,
            holder,
            slots,
            until
        }),
        (id(NodeId), text(), u32s(), hash32()).prop_map(|(node_id, region, slots_max, credential_hash)| Event::NodeRegistered {
            node_id,
            region,
            slots_max,
            credential_hash
        }),
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
        (id(ConsumerId), id(CertSerial), text()).prop_map(|(consumer_id, cert_serial, reason)| Event::CertRevoked { consumer_id, cert_serial, reason }),
        arb_reserved(),
        (id(VoucherId), u32s(), u32s(), postings(), millis()).prop_map(|(voucher_id, receipt_key_id, receipt_generation, postings, rental_until)| {
            Event::Authorized { voucher_id, receipt_key_id, receipt_generation, postings, rental_until }
        }),
        (id(VoucherId), void_reason(), postings()).prop_map(|(voucher_id, reason, reversal)| Event::Voided { voucher_id, reason, reversal }),
        (id(VoucherId), id(NodeId), id(ConsumerId), id(CertSerial), hash32(), hash32(), u32s()).prop_map(
            |(voucher_id, node_id, consumer_id, cert_serial, challenge_hash, consumer_key_hash, recovery)| Event::CopyRecovered {
                voucher_id,
                node_id,
                consumer_id,
                cert_serial,
                challenge_hash,
                consumer_key_hash,
                recovery
            }
        ),
        (id(VoucherId), text(), any::<bool>(), postings(), proptest::collection::vec(id(MediaId), 0..3))
            .prop_map(|(voucher_id, reason, chargeback, reversal, media_ids)| Event::Refunded { voucher_id, reason, chargeback, reversal, media_ids }),
        (id(VoucherId), id(NodeId), id(MerchantId), vec(id(MediaId), 0..4), text(), millis(), proptest::option::of("[a-z0-9_-]{1,24}".prop_map(NodeId)))
            .prop_map(|(voucher_id, node_id, merchant_id, media_ids, rendition, access_expires_at, previous_node)| Event::VoucherIssued {
                voucher_id,
                node_id,
                merchant_id,
                media_ids,
                rendition,
                access_expires_at,
                previous_node,
                lease: 0,
            }),
        (
            (id(VoucherId), id(NodeId), id(ConsumerId), id(CertSerial)),
            (vec(hash32(), 0..4), proptest::option::of(hash32()), proptest::option::of(hash32()), vec(id(MediaId), 0..4), u32s())
        )
            .prop_map(
                |((voucher_id, node_id, consumer_id, cert_serial), (wrapped_key_hashes, challenge_hash, consumer_key_hash, released_media, rental_play))| {
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
                    }
                }
            ),
        (id(VoucherId), id(NodeId), u32s()).prop_map(|(voucher_id, node_id, play)| Event::RentalPlayEnded { voucher_id, node_id, play }),
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
        (id(PreviewId), id(MediaId), id(NodeId), id(MerchantId), u64s(), any::<i64>()).prop_map(
            |(preview_id, media_id, node_id, merchant_id, clip_ms, lapses_at)| Event::PreviewStarted {
                preview_id,
                media_id,
                node_id,
                merchant_id,
                clip_ms,
                lapses_at: Millis(lapses_at),
                lease: 0
            }
        ),
        (id(PreviewId), u64s(), id(MediaId), id(NodeId)).prop_map(|(preview_id, played_ms, media_id, node_id)| Event::PreviewEnded {
            preview_id,
            played_ms,
            media_id,
            node_id
        }),
        arb_rights_report_sealed(),
        (id(AccountId), u64s(), text(), proptest::option::of(("[a-z0-9]{1,12}".prop_map(MerchantId), text(), postings()))).prop_map(
            |(account_id, amount, reason, sale)| {
                let sale = sale.map(|(merchant, currency, postings)| PointsSale { merchant, currency, postings });
                Event::PointsCredited { account_id, amount, reason, sale }
            }
        ),
        (id(AccountId), id(VoucherId), u64s(), millis(), proptest::option::of(hash32()))
            .prop_map(|(account_id, voucher_id, amount, expires_at, nonce_hash)| Event::PointsHeld { account_id, voucher_id, amount, expires_at, nonce_hash }),
        (id(AccountId), id(VoucherId), u64s()).prop_map(|(account_id, voucher_id, amount)| Event::HoldPosted { account_id, voucher_id, amount }),
        (id(AccountId), id(VoucherId), u64s(), void_reason()).prop_map(|(account_id, voucher_id, amount, reason)| Event::HoldReleased {
            account_id,
            voucher_id,
            amount,
            reason
        }),
        (id(OrderId), id(MerchantId), id(MediaId), u32s(), u64s(), proptest::option::of((text(), arb_terms()))).prop_map(
            |(order_id, merchant_id, media_id, units, price_per_unit_minor, settles_by)| Event::OrderPlaced {
                order_id,
                merchant_id,
                media_id,
                units,
                price_per_unit_minor,
                settles_by
            }
        ),
        (
            (id(OrderId), u32s(), text(), hash32(), proptest::option::of(hash32())),
            proptest::option::of((id(MerchantId), "[a-z0-9]{1,12}".prop_map(MediaId), u64s(), text(), postings()))
        )
            .prop_map(|((order_id, unit, device_id, device_public_key_hash, wrapped_key_hash), charge)| {
                let charge =
                    charge.map(|(merchant, media_id, price_minor, currency, postings)| UnitCharge { merchant, media_id, price_minor, currency, postings });
                Event::UnitBound { order_id, unit, device_id, device_public_key_hash, wrapped_key_hash, charge }
            }),
        (id(OrderId), u32s()).prop_map(|(order_id, unit)| Event::UnitCompleted { order_id, unit }),
        (text(), text()).prop_map(|(key, value)| Event::ConfigChanged { key, value }),
        (text(), bytes(), text(), millis()).prop_map(|(key_id, public_key_der, previous_key_id, rotated_at)| Event::EngineKeyRotated {
            key_id,
            public_key_der,
            previous_key_id,
            rotated_at
        }),
        text().prop_map(|key_id| Event::EngineKeyRevoked { key_id }),
        (u32s(), u32s(), millis()).prop_map(|(key_id, previous_key_id, rotated_at)| Event::TokenKeyRotated { key_id, previous_key_id, rotated_at }),
        (text(), text(), millis()).prop_map(|(vkey, previous_vkey, rotated_at)| Event::CheckpointKeyRotated { vkey, previous_vkey, rotated_at }),
        (id(MerchantId), u64s(), u64s()).prop_map(|(merchant_id, window_ms_min, window_ms_max)| Event::MerchantRentalWindowSet {
            merchant_id,
            window_ms_min,
            window_ms_max
        }),
    ]
    .boxed()
}

/// Any recorded event; its `aggregate` is the event's own, as `decode` requires.
pub(super) fn arb_recorded() -> impl Strategy<Value = Recorded> {
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
pub(super) fn config(cases: u32) -> ProptestConfig {
    // No persistence file: a failure prints its minimal input; record it as a test here.
    let rng_seed = proptest::test_runner::RngSeed::Fixed(crate::testing::proptest_seed(module_path!()));
    ProptestConfig { cases, failure_persistence: None, rng_seed, ..ProptestConfig::default() }
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
