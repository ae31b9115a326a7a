//! Engine configuration and the rights-report seal chain, given/when/then.

use super::fixtures::{T0, check_invalid};
use crate::domain::config::{Config, ConfigCommand};
use crate::domain::event::{Event, RightsReportSealed};
use crate::domain::fold;
use crate::domain::report::{Report, ReportCommand};
use crate::domain::testing::check;

// ---------------------------------------------------------------- config

fn set(key: &str, value: &str) -> ConfigCommand {
    ConfigCommand::Set { key: key.into(), value: value.into() }
}
fn changed(key: &str, value: &str) -> Event {
    Event::ConfigChanged { key: key.into(), value: value.into() }
}

#[test]
fn set_a_known_key_within_range() {
    check::<Config>(&[], set("seal.entries_max", "500"), T0, Ok(vec![changed("seal.entries_max", "500")]));
    // Bounds are inclusive, and the value is recorded in canonical form.
    check::<Config>(&[], set("seal.entries_max", "1"), T0, Ok(vec![changed("seal.entries_max", "1")]));
    check::<Config>(&[], set("seal.entries_max", "1000000"), T0, Ok(vec![changed("seal.entries_max", "1000000")]));
    check::<Config>(&[], set("access.ttl_ms", "0030000"), T0, Ok(vec![changed("access.ttl_ms", "30000")]));
}

#[test]
fn set_the_value_already_set_changes_nothing() {
    check::<Config>(&[changed("seal.entries_max", "500")], set("seal.entries_max", "500"), T0, Ok(vec![]));
    // Setting the default explicitly is a change: it pins the value.
    check::<Config>(&[], set("seal.entries_max", "100"), T0, Ok(vec![changed("seal.entries_max", "100")]));
}

/// What `royalty.entry_binding` turned on stays on: lowering it would put fixed nonces
/// back on later entries. Control: raising it, and setting it again, go through.
#[test]
fn the_royalty_entry_binding_is_only_raised() {
    let key = crate::domain::config::ROYALTY_ENTRY_BINDING_KEY;
    check::<Config>(&[], set(key, "1"), T0, Ok(vec![changed(key, "1")]));
    check::<Config>(&[changed(key, "1")], set(key, "1"), T0, Ok(vec![]));
    check_invalid::<Config>(&[changed(key, "1")], set(key, "0"), T0, "value");
    check_invalid::<Config>(&[], set(key, "2"), T0, "value");
}

#[test]
fn set_an_unknown_key_is_refused() {
    check_invalid::<Config>(&[], set("seal.entries", "5"), T0, "key");
}

#[test]
fn set_a_value_out_of_range_is_refused() {
    check_invalid::<Config>(&[], set("seal.entries_max", "0"), T0, "value");
    check_invalid::<Config>(&[], set("seal.entries_max", "1000001"), T0, "value");
}

/// The attack: `node.heartbeat_timeout_ms` = 1000 passed its range, and since nodes
/// heartbeat every 5 s, 7 of 10 previews failed (the setting, an event, outlived restarts).
/// Control: a value at the constraint's floor is accepted.
#[test]
fn a_value_that_breaks_a_dependent_constraint_is_refused_naming_it() {
    let refused = crate::domain::Aggregate::decide(&Config::default(), &set("node.heartbeat_timeout_ms", "1000"), T0);
    match refused {
        Err(crate::domain::Rejection::InvalidArgument { field: "value", reason }) => {
            assert!(reason.contains("twice the nodes' heartbeat interval") && reason.contains("10000"), "{reason}");
        }
        other => panic!("expected the constraint to refuse 1000, got {other:?}"),
    }
    check_invalid::<Config>(&[], set("node.heartbeat_timeout_ms", "9999"), T0, "value");
    check::<Config>(&[], set("node.heartbeat_timeout_ms", "10000"), T0, Ok(vec![changed("node.heartbeat_timeout_ms", "10000")]));
}

/// Keys that depend on each other keep their order whichever is set: an access window
/// shorter than the heartbeat timeout lapses before the engine can move a voucher off a node
/// gone silent (and `access.ttl_ms` = 1000, within its plain range, lapsed sales before
/// players reached their nodes). Refused naming the other key and its value now; controls:
/// equal values are accepted in both directions, and the default pair is in order.
#[test]
fn keys_that_depend_on_each_other_keep_their_order_whichever_is_set() {
    let reason = |given: &[Event], command: ConfigCommand| match crate::domain::Aggregate::decide(&fold::<Config>(given), &command, T0) {
        Err(crate::domain::Rejection::InvalidArgument { field: "value", reason }) => reason,
        other => panic!("expected a refusal naming the constraint, got {other:?}"),
    };
    let access = reason(&[], set("access.ttl_ms", "1000"));
    assert!(access.contains("at least node.heartbeat_timeout_ms (now 30000)") && access.contains("gone silent"), "{access}");
    let heartbeat = reason(&[changed("access.ttl_ms", "20000")], set("node.heartbeat_timeout_ms", "20001"));
    assert!(heartbeat.contains("at most access.ttl_ms (now 20000)"), "{heartbeat}");
    check_invalid::<Config>(&[changed("node.heartbeat_timeout_ms", "60000")], set("access.ttl_ms", "59999"), T0, "value");
    // The controls.
    check::<Config>(&[changed("node.heartbeat_timeout_ms", "60000")], set("access.ttl_ms", "60000"), T0, Ok(vec![changed("access.ttl_ms", "60000")]));
    check::<Config>(
        &[changed("access.ttl_ms", "20000")],
        set("node.heartbeat_timeout_ms", "20000"),
        T0,
        Ok(vec![changed("node.heartbeat_timeout_ms", "20000")]),
    );
    let defaults = Config::default();
    for &(longer, shorter, _) in crate::domain::config::AT_LEAST {
        assert!(defaults.get(longer) >= defaults.get(shorter), "the defaults keep {longer} >= {shorter}");
    }
}

#[test]
fn set_a_value_that_is_not_a_whole_number_is_refused() {
    for value in ["ten", "-1", "1.5", "", " 5"] {
        check_invalid::<Config>(&[], set("seal.entries_max", value), T0, "value");
    }
}

#[test]
fn config_reads_defaults_until_changed() {
    let config: Config = fold(&[changed("seal.entries_max", "500")]);
    assert_eq!(config.get("seal.entries_max"), Some(500));
    assert_eq!(config.get("seal.interval_ms"), Some(60_000));
    assert_eq!(config.get("nope"), None);
}

// ---------------------------------------------------------------- rights report

fn seal(epoch: u64, first_entry: u64, last_entry: u64, prev_seal_hash: [u8; 32]) -> RightsReportSealed {
    RightsReportSealed {
        epoch,
        first_entry,
        last_entry,
        head_y: [1; 32],
        head_z: [2; 32],
        merkle_root: [3; 32],
        totals_digest: [4; 32],
        prev_seal_hash,
        engine_key_id: "k1".into(),
        signature: vec![5; 256],
        last_stream_seq: last_entry + 100,
        stream_head: [4; 32],
        checkpoint: None,
    }
}
fn sealed(seal: &RightsReportSealed) -> Event {
    Event::RightsReportSealed(seal.clone())
}

#[test]
fn first_seal_starts_at_entry_zero_after_the_zero_hash() {
    let first = seal(1, 0, 9, [0; 32]);
    check::<Report>(&[], ReportCommand::Seal(first.clone()), T0, Ok(vec![sealed(&first)]));
    check_invalid::<Report>(&[], ReportCommand::Seal(seal(1, 1, 9, [0; 32])), T0, "first_entry");
    check_invalid::<Report>(&[], ReportCommand::Seal(seal(1, 0, 9, [9; 32])), T0, "prev_seal_hash");
}

#[test]
fn seals_chain_by_hash_and_contiguous_entries() {
    let first = seal(1, 0, 9, [0; 32]);
    let second = seal(1, 10, 19, Report::seal_hash(&first));
    check::<Report>(&[sealed(&first)], ReportCommand::Seal(second.clone()), T0, Ok(vec![sealed(&second)]));
    let third = seal(2, 20, 20, Report::seal_hash(&second));
    check::<Report>(&[sealed(&first), sealed(&second)], ReportCommand::Seal(third.clone()), T0, Ok(vec![sealed(&third)]));
    let report: Report = fold(&[sealed(&first), sealed(&second)]);
    assert_eq!((report.seals, report.next_entry()), (2, 20));
}

#[test]
fn seal_naming_the_wrong_previous_seal_is_refused() {
    let first = seal(1, 0, 9, [0; 32]);
    check_invalid::<Report>(&[sealed(&first)], ReportCommand::Seal(seal(1, 10, 19, [0; 32])), T0, "prev_seal_hash");
    let mut tampered = first.clone();
    tampered.signature[0] ^= 1;
    check_invalid::<Report>(&[sealed(&first)], ReportCommand::Seal(seal(1, 10, 19, Report::seal_hash(&tampered))), T0, "prev_seal_hash");
}

#[test]
fn seal_leaving_a_gap_or_overlap_in_entries_is_refused() {
    let first = seal(1, 0, 9, [0; 32]);
    let prev = Report::seal_hash(&first);
    check_invalid::<Report>(&[sealed(&first)], ReportCommand::Seal(seal(1, 11, 19, prev)), T0, "first_entry");
    check_invalid::<Report>(&[sealed(&first)], ReportCommand::Seal(seal(1, 9, 19, prev)), T0, "first_entry");
    check_invalid::<Report>(&[sealed(&first)], ReportCommand::Seal(seal(1, 10, 9, prev)), T0, "first_entry");
}

#[test]
fn seal_going_back_an_epoch_is_refused() {
    let first = seal(2, 0, 9, [0; 32]);
    check_invalid::<Report>(&[sealed(&first)], ReportCommand::Seal(seal(1, 10, 19, Report::seal_hash(&first))), T0, "epoch");
}

#[test]
fn unsigned_seal_is_refused() {
    let mut unsigned = seal(1, 0, 9, [0; 32]);
    unsigned.signature.clear();
    check_invalid::<Report>(&[], ReportCommand::Seal(unsigned), T0, "signature");
}

/// Once a seal carries a checkpoint, the next must too (a way back to seals without one
/// would drop what witnesses and incremental auditors rely on).
#[test]
fn a_seal_without_a_checkpoint_after_one_with_is_refused() {
    let mut first = seal(1, 0, 9, [0; 32]);
    first.checkpoint =
        Some(crate::domain::event::SealCheckpoint { origin: "o".into(), tree_size: 10, root: [1; 32], signature: vec![2; 68], last_leaf_proof: vec![] });
    let second = seal(1, 10, 19, Report::seal_hash(&first));
    check_invalid::<Report>(&[sealed(&first)], ReportCommand::Seal(second.clone()), T0, "checkpoint");
    // Control: after a seal without one, a seal without one is fine.
    let plain = seal(1, 0, 9, [0; 32]);
    let next = seal(1, 10, 19, Report::seal_hash(&plain));
    assert!(crate::domain::Aggregate::decide(&fold::<Report>(&[sealed(&plain)]), &ReportCommand::Seal(next), T0).is_ok());
}

#[test]
fn seal_hash_covers_the_chained_fields() {
    let base = seal(1, 0, 9, [0; 32]);
    let hash = Report::seal_hash(&base);
    let variants: [fn(&mut RightsReportSealed); 9] = [
        |s| s.epoch += 1,
        |s| s.first_entry += 1,
        |s| s.last_entry += 1,
        |s| s.head_y[0] ^= 1,
        |s| s.head_z[0] ^= 1,
        |s| s.merkle_root[0] ^= 1,
        |s| s.totals_digest[0] ^= 1,
        |s| s.prev_seal_hash[0] ^= 1,
        |s| s.signature.push(0),
    ];
    for change in variants {
        let mut changed = base.clone();
        change(&mut changed);
        assert_ne!(Report::seal_hash(&changed), hash, "{changed:?}");
    }
}

// ---------------------------------------------------------------- engine key rotation

fn rotate(key_id: &str, previous: &str) -> ConfigCommand {
    ConfigCommand::RotateEngineKey { key_id: key_id.into(), public_key_der: vec![0x30, 1], previous_key_id: previous.into() }
}
fn rotated(key_id: &str, previous: &str, at: crate::ids::Millis) -> Event {
    Event::EngineKeyRotated { key_id: key_id.into(), public_key_der: vec![0x30, 1], previous_key_id: previous.into(), rotated_at: at }
}
fn revoke(key_id: &str) -> ConfigCommand {
    ConfigCommand::RevokeEngineKey { key_id: key_id.into() }
}

/// A rotation names a new key and the key it replaces, which must be the one the engine
/// signs with now: two operators rotating at once cannot both win. A retry changes nothing;
/// an old key cannot come back.
#[test]
fn an_engine_key_rotates_from_the_current_key_to_a_new_one() {
    check::<Config>(&[], rotate("k2", "k1"), T0, Ok(vec![rotated("k2", "k1", T0)]));
    check::<Config>(&[rotated("k2", "k1", T0)], rotate("k2", "k1"), T0, Ok(vec![]));
    check::<Config>(&[rotated("k2", "k1", T0)], rotate("k3", "k2"), T0, Ok(vec![rotated("k3", "k2", T0)]));
    check::<Config>(&[rotated("k2", "k1", T0)], rotate("k3", "k1"), T0, Err(crate::domain::Rejection::KeyRotationStale { current: "k2".into() }));
    check_invalid::<Config>(&[rotated("k2", "k1", T0)], rotate("k1", "k2"), T0, "key_id");
    check_invalid::<Config>(&[], rotate("k1", "k1"), T0, "key_id");
}

/// A retired key is revoked only after the grace period (what engines that had not yet
/// reloaded signed meanwhile still verifies); the current key never; a second revocation
/// changes nothing.
#[test]
fn a_retired_engine_key_is_revoked_only_after_its_grace_period() {
    let grace = crate::domain::config::KEY_REVOKE_GRACE_MS_KEY;
    let history = [changed(grace, "60000"), rotated("k2", "k1", T0)];
    let until = T0.plus_ms(60_000);
    check::<Config>(&history, revoke("k1"), T0.plus_ms(59_999), Err(crate::domain::Rejection::KeyInGrace { until }));
    check::<Config>(&history, revoke("k1"), until, Ok(vec![Event::EngineKeyRevoked { key_id: "k1".into() }]));
    let revoked = [changed(grace, "60000"), rotated("k2", "k1", T0), Event::EngineKeyRevoked { key_id: "k1".into() }];
    check::<Config>(&revoked, revoke("k1"), until, Ok(vec![]));
    check_invalid::<Config>(&history, revoke("k2"), until, "key_id");
    check::<Config>(&history, revoke("k9"), until, Err(crate::domain::Rejection::NotFound { kind: "retired engine key", id: "k9".into() }));
    let state = fold::<Config>(&revoked);
    assert!(state.key_revoked("k1") && !state.key_revoked("k2"));
}

// ---------------------------------------------------------------- token and checkpoint keys

fn token_rotated(key_id: u32, previous_key_id: u32) -> Event {
    Event::TokenKeyRotated { key_id, previous_key_id, rotated_at: T0 }
}

/// Token key ids only grow, from the one in use (1 on a stream that never rotated): a retry
/// changes nothing, a rotation from an older id is stale, an old id cannot come back.
#[test]
fn a_token_key_rotates_to_a_higher_id_from_the_one_in_use() {
    let rotate = |key_id, previous_key_id| ConfigCommand::RotateTokenKey { key_id, previous_key_id };
    check::<Config>(&[], rotate(2, 1), T0, Ok(vec![token_rotated(2, 1)]));
    check::<Config>(&[token_rotated(2, 1)], rotate(2, 1), T0, Ok(vec![]));
    check::<Config>(&[token_rotated(2, 1)], rotate(3, 2), T0, Ok(vec![token_rotated(3, 2)]));
    check::<Config>(&[token_rotated(2, 1)], rotate(3, 1), T0, Err(crate::domain::Rejection::KeyRotationStale { current: "token key 2".into() }));
    check_invalid::<Config>(&[token_rotated(3, 2)], rotate(2, 3), T0, "key_id");
    check_invalid::<Config>(&[], rotate(1, 1), T0, "key_id");
    assert_eq!(fold::<Config>(&[token_rotated(2, 1), token_rotated(3, 2)]).token_key_id, Some(3));
}

/// A checkpoint key rotation keeps the log's origin; a retry changes nothing; a retired key
/// cannot come back; a rotation from a key that is no longer current is stale.
#[test]
fn a_checkpoint_key_rotates_within_the_logs_origin() {
    let rotate = |vkey: &str, previous: &str| ConfigCommand::RotateCheckpointKey { vkey: vkey.into(), previous_vkey: previous.into() };
    let rotated = |vkey: &str, previous: &str| Event::CheckpointKeyRotated { vkey: vkey.into(), previous_vkey: previous.into(), rotated_at: T0 };
    check::<Config>(&[], rotate("log+02+B", "log+01+A"), T0, Ok(vec![rotated("log+02+B", "log+01+A")]));
    let once = [rotated("log+02+B", "log+01+A")];
    check::<Config>(&once, rotate("log+02+B", "log+01+A"), T0, Ok(vec![]));
    check::<Config>(&once, rotate("log+03+C", "log+02+B"), T0, Ok(vec![rotated("log+03+C", "log+02+B")]));
    check::<Config>(&once, rotate("log+03+C", "log+01+A"), T0, Err(crate::domain::Rejection::KeyRotationStale { current: "log+02+B".into() }));
    check_invalid::<Config>(&once, rotate("log+01+A", "log+02+B"), T0, "vkey");
    check_invalid::<Config>(&[], rotate("other+02+B", "log+01+A"), T0, "vkey");
    check_invalid::<Config>(&[], rotate("not a vkey", "log+01+A"), T0, "vkey");
    // Base64 may hold '+': the key is what follows the second one.
    check::<Config>(&[], rotate("log+02+B+c/d=", "log+01+A"), T0, Ok(vec![rotated("log+02+B+c/d=", "log+01+A")]));
    let state = fold::<Config>(&[rotated("log+02+B", "log+01+A"), rotated("log+03+C", "log+02+B")]);
    assert_eq!(
        (state.checkpoint_vkey.as_deref(), state.retired_checkpoint_vkeys.clone()),
        (Some("log+03+C"), vec!["log+01+A".to_string(), "log+02+B".to_string()])
    );
}
