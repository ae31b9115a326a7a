//! Merchants, auditors, delivery nodes and consumers (certificates), given/when/then.

use super::fixtures::{T0, check_invalid, consumer, merchant, node};
use crate::domain::event::Event;
use crate::domain::party::{
    Auditor, AuditorCommand, AuditorStatus, CERTS_PER_CONSUMER_MAX, Certificate, Consumer, ConsumerCommand, Merchant, MerchantCommand, MerchantStatus, Node,
    NodeCommand, SLOTS_MAX,
};
use crate::domain::testing::check;
use crate::domain::voucher::CertCheck;
use crate::domain::{Rejection, fold};
use crate::ids::{AuditorId, CertSerial, MerchantId, Millis, NodeId};

// ---------------------------------------------------------------- merchant

fn register_merchant(id: &str) -> MerchantCommand {
    MerchantCommand::Register { merchant: MerchantId::new(id), name: "Shop One".into(), credential_hash: [4; 32] }
}
fn merchant_registered() -> Event {
    Event::MerchantRegistered { merchant_id: merchant(), name: "Shop One".into(), credential_hash: [4; 32] }
}
fn suspend() -> MerchantCommand {
    MerchantCommand::Suspend { reason: "chargebacks".into() }
}

#[test]
fn register_merchant_records_name_and_credential_hash() {
    check::<Merchant>(&[], register_merchant("shop1"), T0, Ok(vec![merchant_registered()]));
}

#[test]
fn register_merchant_twice_is_refused() {
    check::<Merchant>(&[merchant_registered()], register_merchant("shop1"), T0, Err(Rejection::AlreadyExists { kind: "merchant", id: "shop1".into() }));
}

#[test]
fn register_merchant_with_a_malformed_id_or_empty_name_is_refused() {
    check_invalid::<Merchant>(&[], register_merchant("shop.1"), T0, "merchant_id");
    let nameless = MerchantCommand::Register { merchant: merchant(), name: " ".into(), credential_hash: [4; 32] };
    check_invalid::<Merchant>(&[], nameless, T0, "name");
}

#[test]
fn suspend_merchant_once() {
    let suspended = Event::MerchantSuspended { merchant_id: merchant(), reason: "chargebacks".into() };
    check::<Merchant>(&[merchant_registered()], suspend(), T0, Ok(vec![suspended.clone()]));
    check::<Merchant>(&[merchant_registered(), suspended], suspend(), T0, Ok(vec![]));
    check::<Merchant>(&[], suspend(), T0, Err(Rejection::NotFound { kind: "merchant", id: String::new() }));
}

fn reinstate() -> MerchantCommand {
    MerchantCommand::Reinstate { reason: "chargebacks settled".into() }
}

#[test]
fn reinstate_lifts_a_suspension_once() {
    let suspended = Event::MerchantSuspended { merchant_id: merchant(), reason: "chargebacks".into() };
    let reinstated = Event::MerchantReinstated { merchant_id: merchant(), reason: "chargebacks settled".into() };
    check::<Merchant>(&[merchant_registered(), suspended.clone()], reinstate(), T0, Ok(vec![reinstated.clone()]));
    let active: Merchant = fold(&[merchant_registered(), suspended.clone(), reinstated.clone()]);
    assert_eq!(active.status, MerchantStatus::Active);
    // Negative control: before the reinstatement the merchant is suspended.
    let still_suspended: Merchant = fold(&[merchant_registered(), suspended.clone()]);
    assert_eq!(still_suspended.status, MerchantStatus::Suspended);
    // Reinstating an active merchant changes nothing, as a second suspension does; it can
    // be suspended again.
    check::<Merchant>(&[merchant_registered()], reinstate(), T0, Ok(vec![]));
    check::<Merchant>(&[merchant_registered(), suspended.clone(), reinstated.clone()], reinstate(), T0, Ok(vec![]));
    check::<Merchant>(&[merchant_registered(), suspended.clone(), reinstated], suspend(), T0, Ok(vec![suspended.clone()]));
    check::<Merchant>(&[], reinstate(), T0, Err(Rejection::NotFound { kind: "merchant", id: String::new() }));
    check_invalid::<Merchant>(&[merchant_registered(), suspended], MerchantCommand::Reinstate { reason: " ".into() }, T0, "reason");
}

// ---------------------------------------------------------------- auditor

fn auditor() -> AuditorId {
    AuditorId::new("aud1")
}
fn register_auditor(id: &str) -> AuditorCommand {
    AuditorCommand::Register { auditor: AuditorId::new(id), name: "Licensing Center".into(), credential_hash: [6; 32] }
}
fn auditor_registered() -> Event {
    Event::AuditorRegistered { auditor_id: auditor(), name: "Licensing Center".into(), credential_hash: [6; 32] }
}
fn auditor_revoked() -> Event {
    Event::AuditorRevoked { auditor_id: auditor(), reason: "contract ended".into() }
}
fn revoke_auditor() -> AuditorCommand {
    AuditorCommand::Revoke { reason: "contract ended".into() }
}

#[test]
fn register_auditor_records_name_and_credential_hash() {
    check::<Auditor>(&[], register_auditor("aud1"), T0, Ok(vec![auditor_registered()]));
    let registered: Auditor = fold(&[auditor_registered()]);
    assert_eq!(registered, Auditor { status: AuditorStatus::Active, id: Some(auditor()), name: "Licensing Center".into(), credential_hash: [6; 32] });
}

#[test]
fn register_auditor_twice_is_refused() {
    let refused = Err(Rejection::AlreadyExists { kind: "auditor", id: "aud1".into() });
    check::<Auditor>(&[auditor_registered()], register_auditor("aud1"), T0, refused.clone());
    // A revoked auditor's id is not reissued either: its credential hash stays on record.
    check::<Auditor>(&[auditor_registered(), auditor_revoked()], register_auditor("aud1"), T0, refused);
}

#[test]
fn register_auditor_with_a_malformed_id_or_bad_name_is_refused() {
    check_invalid::<Auditor>(&[], register_auditor("aud.1"), T0, "auditor_id");
    check_invalid::<Auditor>(&[], register_auditor(""), T0, "auditor_id");
    for name in [" ", "Licensing\nCenter", &"x".repeat(257)] {
        let bad_name = AuditorCommand::Register { auditor: auditor(), name: name.into(), credential_hash: [6; 32] };
        check_invalid::<Auditor>(&[], bad_name, T0, "name");
    }
    // Negative control: 256 characters is the most a name may have.
    let longest = AuditorCommand::Register { auditor: auditor(), name: "x".repeat(256), credential_hash: [6; 32] };
    check::<Auditor>(&[], longest, T0, Ok(vec![Event::AuditorRegistered { auditor_id: auditor(), name: "x".repeat(256), credential_hash: [6; 32] }]));
}

#[test]
fn revoke_auditor_once() {
    check::<Auditor>(&[auditor_registered()], revoke_auditor(), T0, Ok(vec![auditor_revoked()]));
    check::<Auditor>(&[auditor_registered(), auditor_revoked()], revoke_auditor(), T0, Ok(vec![]));
    let revoked: Auditor = fold(&[auditor_registered(), auditor_revoked()]);
    assert_eq!(revoked.status, AuditorStatus::Revoked);
}

#[test]
fn revoke_an_unknown_auditor_is_not_found() {
    check::<Auditor>(&[], revoke_auditor(), T0, Err(Rejection::NotFound { kind: "auditor", id: String::new() }));
}

#[test]
fn revoke_auditor_without_a_reason_is_refused() {
    check_invalid::<Auditor>(&[auditor_registered()], AuditorCommand::Revoke { reason: "".into() }, T0, "reason");
}

#[test]
fn auditor_events_belong_to_the_auditor_subject() {
    assert_eq!(auditor_registered().aggregate().subject(), "vs.auditor.aud1");
    assert_eq!(auditor_revoked().aggregate().subject(), "vs.auditor.aud1");
    // Merchant events leave an auditor untouched, and the other way round.
    let auditor_state: Auditor = fold(&[merchant_registered()]);
    assert_eq!(auditor_state, Auditor::default());
    let merchant_state: Merchant = fold(&[auditor_registered()]);
    assert_eq!(merchant_state, Merchant::default());
}

// ---------------------------------------------------------------- node

fn register_node(slots_max: u32) -> NodeCommand {
    NodeCommand::Register { node: node(), region: "eu-west".into(), slots_max, credential_hash: [5; 32] }
}
fn node_registered() -> Event {
    Event::NodeRegistered { node_id: node(), region: "eu-west".into(), slots_max: 10, credential_hash: [5; 32] }
}

#[test]
fn register_node_records_region_and_slots() {
    check::<Node>(&[], register_node(10), T0, Ok(vec![node_registered()]));
}

#[test]
fn register_node_twice_is_refused() {
    check::<Node>(&[node_registered()], register_node(10), T0, Err(Rejection::AlreadyExists { kind: "node", id: "node1".into() }));
}

#[test]
fn register_node_with_no_or_too_many_slots_is_refused() {
    check_invalid::<Node>(&[], register_node(0), T0, "slots_max");
    check_invalid::<Node>(&[], register_node(SLOTS_MAX + 1), T0, "slots_max");
    let bad_id = NodeCommand::Register { node: NodeId::new("n/1"), region: "eu".into(), slots_max: 1, credential_hash: [0; 32] };
    check_invalid::<Node>(&[], bad_id, T0, "node_id");
}

#[test]
fn node_capacity_drain_and_removal() {
    let drained = Event::NodeDrained { node_id: node() };
    check::<Node>(
        &[node_registered()],
        NodeCommand::ChangeCapacity { slots_max: 6 },
        T0,
        Ok(vec![Event::NodeCapacityChanged { node_id: node(), slots_max: 6 }]),
    );
    check_invalid::<Node>(&[node_registered()], NodeCommand::ChangeCapacity { slots_max: 0 }, T0, "slots_max");
    check::<Node>(&[node_registered()], NodeCommand::Drain, T0, Ok(vec![drained.clone()]));
    check::<Node>(&[node_registered(), drained.clone()], NodeCommand::Drain, T0, Ok(vec![]));
    check::<Node>(&[node_registered(), drained], NodeCommand::Remove, T0, Ok(vec![Event::NodeRemoved { node_id: node() }]));
}

/// The node decided its own capacity (`--slots 64` on a node licensed for 4): now the
/// operator's licence is the ceiling; a node may announce less and come back up to it.
#[test]
fn a_node_announces_at_most_the_slots_it_is_licensed_for() {
    let changed = |slots_max| Event::NodeCapacityChanged { node_id: node(), slots_max };
    check::<Node>(&[node_registered()], NodeCommand::ChangeCapacity { slots_max: 64 }, T0, Ok(vec![]));
    check::<Node>(&[node_registered(), changed(4)], NodeCommand::ChangeCapacity { slots_max: 64 }, T0, Ok(vec![changed(10)]));
    check::<Node>(&[node_registered()], NodeCommand::ChangeCapacity { slots_max: 4 }, T0, Ok(vec![changed(4)]));
    let node: Node = crate::domain::fold(&[node_registered(), changed(4)]);
    assert_eq!((node.slots_max, node.licensed_slots), (4, 10));
}

#[test]
fn a_removed_node_is_unavailable_and_an_unknown_one_not_found() {
    let removed = [node_registered(), Event::NodeRemoved { node_id: node() }];
    check::<Node>(&removed, NodeCommand::Drain, T0, Err(Rejection::NodeUnavailable));
    check::<Node>(&removed, NodeCommand::ChangeCapacity { slots_max: 5 }, T0, Err(Rejection::NodeUnavailable));
    check::<Node>(&[], NodeCommand::Drain, T0, Err(Rejection::NotFound { kind: "node", id: String::new() }));
}

// ---------------------------------------------------------------- consumer

const NOT_BEFORE: Millis = T0;
const NOT_AFTER: Millis = Millis(T0.0 + 1_000_000);

fn certificate(serial: &str) -> Certificate {
    Certificate {
        serial: CertSerial::new(serial),
        public_key_der: vec![1; 270],
        not_before: NOT_BEFORE,
        not_after: NOT_AFTER,
        engine_key_id: "k1".into(),
        signature: vec![2; 256],
        revoked: false,
    }
}
fn certify(serial: &str) -> ConsumerCommand {
    ConsumerCommand::Certify { consumer: consumer(), cert: certificate(serial) }
}
fn certified(serial: &str) -> Event {
    Event::ConsumerCertified {
        consumer_id: consumer(),
        cert_serial: CertSerial::new(serial),
        public_key_der: vec![1; 270],
        not_before: NOT_BEFORE,
        not_after: NOT_AFTER,
        engine_key_id: "k1".into(),
        signature: vec![2; 256],
    }
}
fn revoked(serial: &str) -> Event {
    Event::CertRevoked { consumer_id: consumer(), cert_serial: CertSerial::new(serial), reason: "key lost".into() }
}
fn revoke(serial: &str) -> ConsumerCommand {
    ConsumerCommand::Revoke { serial: CertSerial::new(serial), reason: "key lost".into() }
}

#[test]
fn certify_records_the_certificate() {
    check::<Consumer>(&[], certify("s1"), T0, Ok(vec![certified("s1")]));
    check::<Consumer>(&[certified("s1")], certify("s2"), T0, Ok(vec![certified("s2")]));
}

#[test]
fn certify_a_serial_twice_is_refused() {
    check::<Consumer>(&[certified("s1")], certify("s1"), T0, Err(Rejection::AlreadyExists { kind: "certificate", id: "s1".into() }));
}

#[test]
fn certify_with_empty_or_inverted_validity_is_refused() {
    for not_after in [NOT_BEFORE, Millis(NOT_BEFORE.0 - 1)] {
        let mut cert = certificate("s1");
        cert.not_after = not_after;
        check_invalid::<Consumer>(&[], ConsumerCommand::Certify { consumer: consumer(), cert }, T0, "validity_ms");
    }
}

#[test]
fn certify_without_a_public_key_is_refused() {
    let mut cert = certificate("s1");
    cert.public_key_der.clear();
    check_invalid::<Consumer>(&[], ConsumerCommand::Certify { consumer: consumer(), cert }, T0, "public_key_der");
}

#[test]
fn certify_beyond_the_certificates_per_consumer_is_refused() {
    let given: Vec<Event> = (0..CERTS_PER_CONSUMER_MAX).map(|i| certified(&format!("s{i}"))).collect();
    check_invalid::<Consumer>(&given, certify("extra"), T0, "consumer_id");
}

#[test]
fn revoke_marks_the_certificate_once() {
    check::<Consumer>(&[certified("s1")], revoke("s1"), T0, Ok(vec![revoked("s1")]));
    check::<Consumer>(&[certified("s1"), revoked("s1")], revoke("s1"), T0, Ok(vec![]));
    check::<Consumer>(&[certified("s1")], revoke("s2"), T0, Err(Rejection::NotFound { kind: "certificate", id: "s2".into() }));
}

#[test]
fn revoke_all_revokes_every_valid_certificate_once() {
    let revoke_all = || ConsumerCommand::RevokeAll { reason: "key lost".into() };
    check::<Consumer>(&[certified("s1"), certified("s2")], revoke_all(), T0, Ok(vec![revoked("s1"), revoked("s2")]));
    check::<Consumer>(&[certified("s1"), certified("s2"), revoked("s1")], revoke_all(), T0, Ok(vec![revoked("s2")]));
    check::<Consumer>(&[certified("s1"), revoked("s1")], revoke_all(), T0, Ok(vec![]));
    check::<Consumer>(&[], revoke_all(), T0, Err(Rejection::NotFound { kind: "consumer", id: String::new() }));
    check_invalid::<Consumer>(&[certified("s1")], ConsumerCommand::RevokeAll { reason: "".into() }, T0, "reason");
}

#[test]
fn cert_check_reports_the_standing_at_a_time() {
    let consumer: Consumer = fold(&[certified("s1"), certified("s2"), revoked("s2")]);
    let s1 = CertSerial::new("s1");
    assert_eq!(consumer.cert_check(&s1, NOT_BEFORE), CertCheck::Valid);
    assert_eq!(consumer.cert_check(&s1, NOT_AFTER), CertCheck::Valid);
    assert_eq!(consumer.cert_check(&s1, Millis(NOT_BEFORE.0 - 1)), CertCheck::NotValid);
    assert_eq!(consumer.cert_check(&s1, Millis(NOT_AFTER.0 + 1)), CertCheck::NotValid);
    assert_eq!(consumer.cert_check(&CertSerial::new("s2"), T0), CertCheck::Revoked);
    assert_eq!(consumer.cert_check(&CertSerial::new("s3"), T0), CertCheck::Unknown);
}

/// A merchant's own rental windows (issue 28 item 5): set, set again (no change), cleared
/// with 0..0; refused below a second, above 30 days, inverted, or with only one bound.
#[test]
fn a_merchant_sets_its_own_rental_windows_within_what_any_rental_allows() {
    use crate::domain::party::{Merchant, MerchantCommand};
    let registered = Event::MerchantRegistered { merchant_id: MerchantId::new("m1"), name: "Shop".into(), credential_hash: [1; 32] };
    let window = |min: u64, max: u64| MerchantCommand::SetRentalWindow { window_ms_min: min, window_ms_max: max };
    let set = |min: u64, max: u64| Event::MerchantRentalWindowSet { merchant_id: MerchantId::new("m1"), window_ms_min: min, window_ms_max: max };
    check::<Merchant>(std::slice::from_ref(&registered), window(7_200_000, 10_800_000), T0, Ok(vec![set(7_200_000, 10_800_000)]));
    check::<Merchant>(&[registered.clone(), set(7_200_000, 10_800_000)], window(7_200_000, 10_800_000), T0, Ok(vec![]));
    check::<Merchant>(&[registered.clone(), set(7_200_000, 10_800_000)], window(0, 0), T0, Ok(vec![set(0, 0)]));
    check::<Merchant>(std::slice::from_ref(&registered), window(0, 0), T0, Ok(vec![]));
    check_invalid::<Merchant>(std::slice::from_ref(&registered), window(999, 10_000), T0, "window_ms_min");
    check_invalid::<Merchant>(std::slice::from_ref(&registered), window(0, 10_000), T0, "window_ms_min");
    check_invalid::<Merchant>(std::slice::from_ref(&registered), window(20_000, 10_000), T0, "window_ms_max");
    check_invalid::<Merchant>(std::slice::from_ref(&registered), window(1_000, 30 * 86_400_000 + 1), T0, "window_ms_max");
    let state = crate::domain::fold::<Merchant>(&[registered, set(7_200_000, 10_800_000)]);
    assert_eq!(state.rental_window_ms, Some((7_200_000, 10_800_000)));
}
