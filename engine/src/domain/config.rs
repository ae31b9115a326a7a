//! Engine configuration as an aggregate: a change is an event, so it is audited and
//! replayed like everything else. Only known keys with valid values are accepted.

use super::event::Event;
use super::{Aggregate, AggregateKind, Rejection};
use crate::ids::Millis;
use std::collections::BTreeMap;

/// How often the delivery node agent heartbeats (`gateways::node` uses this value).
pub const NODE_HEARTBEAT_INTERVAL_MS: u64 = 5_000;

/// The shortest heartbeat timeout: twice the nodes' heartbeat interval.
pub const HEARTBEAT_TIMEOUT_MS_MIN: u64 = 2 * NODE_HEARTBEAT_INTERVAL_MS;

/// The heartbeat timeout until the operator sets one: six missed heartbeats. The engine's
/// node health view uses it (`placement::HEARTBEAT_STALE_MS`), so `admin config get` shows
/// what applies.
pub const HEARTBEAT_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Lower bounds a key takes from what it depends on, with the constraint in words: a value
/// that passes its plain range can still break the market (a heartbeat timeout below the
/// heartbeat interval makes every node look dead between two heartbeats).
pub const CONSTRAINTS: &[(&str, u64, &str)] = &[(
    "node.heartbeat_timeout_ms",
    HEARTBEAT_TIMEOUT_MS_MIN,
    "at least twice the nodes' heartbeat interval (5000 ms), so one late heartbeat does not take a node out",
)];

/// Keys whose values must keep an order, `(key, at least this key, why)`: checked whichever
/// of the two is set, against the other's value now (set, or its default).
pub const AT_LEAST: &[(&str, &str, &str)] = &[
    (
        "access.ttl_ms",
        "node.heartbeat_timeout_ms",
        "a voucher on a node gone silent moves to a serving node only once the node was silent that long, so a shorter access window lapses first (and a window of a second lapses before a player reaches its node)",
    ),
    (RENTAL_WINDOW_MS_MAX_KEY, RENTAL_WINDOW_MS_MIN_KEY, "a rental's window is chosen between the two"),
];

/// The configurable keys, each with its accepted range (inclusive) and default.
pub const KEYS: &[(&str, u64, u64, u64)] = &[
    // (key, min, max, default)
    ("seal.entries_max", 1, 1_000_000, 100),
    ("seal.interval_ms", 1_000, 86_400_000, 60_000),
    ("reservation.ttl_ms_default", 1_000, 7 * 86_400_000, 900_000),
    ("access.ttl_ms", 1_000, 86_400_000, 3_600_000),
    ("node.heartbeat_timeout_ms", 1_000, 3_600_000, HEARTBEAT_TIMEOUT_MS_DEFAULT),
    // How long after its clip an unreported preview keeps its slot (`preview::Preview`).
    ("preview.grace_ms", 1_000, 3_600_000, super::preview::PREVIEW_GRACE_MS),
    // Redemptions a voucher's consumer may make again after failed deliveries.
    ("delivery.retries_max", 0, 100, 3),
    // Lost copies a consumer may fetch again per delivered purchase (`VoucherCommand::Recover`).
    ("delivery.recoveries_max", 0, 100, 3),
    // 1: each royalty entry's nonce binds its stream sequence (from this event on), so a
    // chain rebuilt after a lost tail never reuses an entry key and nonce. The engine sets
    // it on a stream that lacks it; it is never lowered. 0 in streams written before.
    (ROYALTY_ENTRY_BINDING_KEY, 0, 1, 0),
    // The windows a buyer may choose for a rental (`merchant buy --rental-ms N`), and its
    // price per window in basis points of the media's price.
    (RENTAL_WINDOW_MS_MIN_KEY, 1_000, RENTAL_WINDOW_MS_LIMIT, 3_600_000),
    (RENTAL_WINDOW_MS_MAX_KEY, 1_000, RENTAL_WINDOW_MS_LIMIT, 7 * 86_400_000),
    (RENTAL_PRICE_BPS_KEY, 1, 10_000, 2_000),
    // How long a rotated-out engine key stays valid before it may be revoked: what it
    // signed meanwhile (by engines that had not reloaded yet) still verifies.
    (KEY_REVOKE_GRACE_MS_KEY, 1_000, 365 * 86_400_000, 7 * 86_400_000),
];

pub const KEY_REVOKE_GRACE_MS_KEY: &str = "keys.revoke_grace_ms";

/// The first token key id: a stream that never rotated its token key uses only this one.
pub const FIRST_TOKEN_KEY_ID: u32 = 1;

/// The shortest rental window any configuration allows.
pub const RENTAL_WINDOW_MS_FLOOR: u64 = 1_000;
/// The longest rental window any configuration allows: 30 days.
pub const RENTAL_WINDOW_MS_LIMIT: u64 = 30 * 86_400_000;
pub const RENTAL_WINDOW_MS_MIN_KEY: &str = "rental.window_ms_min";
pub const RENTAL_WINDOW_MS_MAX_KEY: &str = "rental.window_ms_max";
pub const RENTAL_PRICE_BPS_KEY: &str = "rental.price_bps";

/// The key that turns on binding royalty entries to their stream sequence.
pub const ROYALTY_ENTRY_BINDING_KEY: &str = "royalty.entry_binding";
/// Keys that may only be raised: what they turned on stays on for every later event.
pub const ONLY_RAISED: &[&str] = &[ROYALTY_ENTRY_BINDING_KEY];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub values: BTreeMap<String, u64>,
    /// The engine key signing now, once a rotation named it (`None` on a stream that never
    /// rotated: the key of `engine.pem` at the start).
    pub engine_key: Option<String>,
    /// Keys rotated out: when, and whether revoked since.
    pub retired_keys: BTreeMap<String, RetiredKey>,
    /// The token key id in use, once a rotation named it (`None`: id 1).
    pub token_key_id: Option<u32>,
    /// The checkpoint note key in use (its vkey), once a rotation named it.
    pub checkpoint_vkey: Option<String>,
    /// Checkpoint vkeys rotated out, oldest first.
    pub retired_checkpoint_vkeys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetiredKey {
    pub retired_at: Millis,
    pub revoked: bool,
}

impl Config {
    pub fn get(&self, key: &str) -> Option<u64> {
        self.values.get(key).copied().or_else(|| KEYS.iter().find(|(k, ..)| *k == key).map(|&(.., default)| default))
    }
}

#[derive(Clone, Debug)]
pub enum ConfigCommand {
    Set {
        key: String,
        value: String,
    },
    /// The engine signs with `key_id` from now on, in place of `previous_key_id`.
    RotateEngineKey {
        key_id: String,
        public_key_der: Vec<u8>,
        previous_key_id: String,
    },
    /// A retired key, past its grace period, is revoked.
    RevokeEngineKey {
        key_id: String,
    },
    /// Receipts and access tokens are made under token key `key_id` from now on.
    RotateTokenKey {
        key_id: u32,
        previous_key_id: u32,
    },
    /// Checkpoints are signed with the note key of `vkey` from now on.
    RotateCheckpointKey {
        vkey: String,
        previous_vkey: String,
    },
}

impl Aggregate for Config {
    type Command = ConfigCommand;
    const KIND: AggregateKind = AggregateKind::Config;

    fn decide(&self, command: &ConfigCommand, now: Millis) -> Result<Vec<Event>, Rejection> {
        let (key, value) = match command {
            ConfigCommand::Set { key, value } => (key, value),
            ConfigCommand::RotateEngineKey { key_id, public_key_der, previous_key_id } => {
                return self.decide_rotation(key_id, public_key_der, previous_key_id, now);
            }
            ConfigCommand::RevokeEngineKey { key_id } => return self.decide_revocation(key_id, now),
            ConfigCommand::RotateTokenKey { key_id, previous_key_id } => return self.decide_token_rotation(*key_id, *previous_key_id, now),
            ConfigCommand::RotateCheckpointKey { vkey, previous_vkey } => return self.decide_checkpoint_rotation(vkey, previous_vkey, now),
        };
        let Some(&(_, min, max, _)) = KEYS.iter().find(|(k, ..)| k == key) else {
            let known: Vec<&str> = KEYS.iter().map(|(k, ..)| *k).collect();
            return Err(Rejection::InvalidArgument { field: "key", reason: format!("unknown key; known keys: {}", known.join(", ")) });
        };
        let parsed: u64 = value.parse().map_err(|_| Rejection::InvalidArgument { field: "value", reason: format!("{key} takes a whole number") })?;
        if !(min..=max).contains(&parsed) {
            return Err(Rejection::InvalidArgument { field: "value", reason: format!("{key} must be {min}..={max}") });
        }
        if let Some(&(_, floor, constraint)) = CONSTRAINTS.iter().find(|(k, ..)| k == key)
            && parsed < floor
        {
            return Err(Rejection::InvalidArgument { field: "value", reason: format!("{key} must be {constraint}: {floor}..={max}") });
        }
        for &(longer, shorter, why) in AT_LEAST {
            if key == longer
                && let Some(floor) = self.get(shorter).filter(|floor| parsed < *floor)
            {
                return Err(Rejection::InvalidArgument { field: "value", reason: format!("{key} must be at least {shorter} (now {floor}): {why}") });
            }
            if key == shorter
                && let Some(ceiling) = self.get(longer).filter(|ceiling| parsed > *ceiling)
            {
                return Err(Rejection::InvalidArgument { field: "value", reason: format!("{key} must be at most {longer} (now {ceiling}): {why}") });
            }
        }
        if ONLY_RAISED.contains(&key.as_str()) && self.get(key).is_some_and(|current| parsed < current) {
            return Err(Rejection::InvalidArgument { field: "value", reason: format!("{key} can only be raised") });
        }
        if self.get(key) == Some(parsed) && self.values.contains_key(key) {
            return Ok(vec![]);
        }
        Ok(vec![Event::ConfigChanged { key: key.clone(), value: parsed.to_string() }])
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::ConfigChanged { key, value } => {
                if let Ok(parsed) = value.parse() {
                    self.values.insert(key.clone(), parsed);
                }
            }
            Event::EngineKeyRotated { key_id, previous_key_id, rotated_at, .. } => {
                self.retired_keys.entry(previous_key_id.clone()).or_insert(RetiredKey { retired_at: *rotated_at, revoked: false });
                self.engine_key = Some(key_id.clone());
            }
            Event::EngineKeyRevoked { key_id } => {
                if let Some(retired) = self.retired_keys.get_mut(key_id) {
                    retired.revoked = true;
                }
            }
            Event::TokenKeyRotated { key_id, .. } => self.token_key_id = Some(*key_id),
            Event::CheckpointKeyRotated { vkey, previous_vkey, .. } => {
                if !previous_vkey.is_empty() && !self.retired_checkpoint_vkeys.contains(previous_vkey) {
                    self.retired_checkpoint_vkeys.push(previous_vkey.clone());
                }
                self.checkpoint_vkey = Some(vkey.clone());
            }
            _ => {}
        }
        self
    }

    fn command_name(command: &ConfigCommand) -> &'static str {
        match command {
            ConfigCommand::Set { .. } => "SetConfig",
            ConfigCommand::RotateEngineKey { .. } => "RotateEngineKey",
            ConfigCommand::RevokeEngineKey { .. } => "RevokeEngineKey",
            ConfigCommand::RotateTokenKey { .. } => "RotateTokenKey",
            ConfigCommand::RotateCheckpointKey { .. } => "RotateCheckpointKey",
        }
    }
}

impl Config {
    fn decide_rotation(&self, key_id: &str, public_key_der: &[u8], previous_key_id: &str, now: Millis) -> Result<Vec<Event>, Rejection> {
        if self.engine_key.as_deref() == Some(key_id) {
            return Ok(vec![]); // this rotation happened: a retry
        }
        if key_id.is_empty() || public_key_der.is_empty() || key_id == previous_key_id {
            return Err(Rejection::InvalidArgument { field: "key_id", reason: "a rotation names a new key and its public key".into() });
        }
        if self.retired_keys.contains_key(key_id) {
            return Err(Rejection::InvalidArgument { field: "key_id", reason: "this key was rotated out before; a rotation needs a new key".into() });
        }
        if let Some(current) = self.engine_key.as_deref().filter(|current| *current != previous_key_id) {
            return Err(Rejection::KeyRotationStale { current: current.to_string() });
        }
        Ok(vec![Event::EngineKeyRotated {
            key_id: key_id.to_string(),
            public_key_der: public_key_der.to_vec(),
            previous_key_id: previous_key_id.to_string(),
            rotated_at: now,
        }])
    }

    fn decide_revocation(&self, key_id: &str, now: Millis) -> Result<Vec<Event>, Rejection> {
        if self.engine_key.as_deref() == Some(key_id) {
            return Err(Rejection::InvalidArgument { field: "key_id", reason: "the engine signs with this key now: rotate to a new key first".into() });
        }
        let retired = self.retired_keys.get(key_id).ok_or_else(|| Rejection::NotFound { kind: "retired engine key", id: key_id.to_string() })?;
        if retired.revoked {
            return Ok(vec![]);
        }
        let grace_ms = self.get(KEY_REVOKE_GRACE_MS_KEY).unwrap_or(0);
        let until = retired.retired_at.plus_ms(grace_ms);
        if now < until {
            return Err(Rejection::KeyInGrace { until });
        }
        Ok(vec![Event::EngineKeyRevoked { key_id: key_id.to_string() }])
    }

    /// Token key ids only grow: a rotation names the next key from the one in use.
    fn decide_token_rotation(&self, key_id: u32, previous_key_id: u32, now: Millis) -> Result<Vec<Event>, Rejection> {
        let current = self.token_key_id.unwrap_or(FIRST_TOKEN_KEY_ID);
        if self.token_key_id == Some(key_id) {
            return Ok(vec![]); // this rotation happened: a retry
        }
        if previous_key_id != current {
            return Err(Rejection::KeyRotationStale { current: format!("token key {current}") });
        }
        if key_id <= current {
            return Err(Rejection::InvalidArgument { field: "key_id", reason: format!("a token key rotation names a new id above {current}") });
        }
        Ok(vec![Event::TokenKeyRotated { key_id, previous_key_id, rotated_at: now }])
    }

    /// A new checkpoint key keeps the log's origin (the note key's name) and was never used.
    fn decide_checkpoint_rotation(&self, vkey: &str, previous_vkey: &str, now: Millis) -> Result<Vec<Event>, Rejection> {
        if self.checkpoint_vkey.as_deref() == Some(vkey) {
            return Ok(vec![]); // a retry
        }
        let origin = |line: &str| line.split('+').next().unwrap_or_default().to_string();
        if vkey.is_empty() || vkey == previous_vkey || vkey.splitn(3, '+').count() != 3 {
            return Err(Rejection::InvalidArgument { field: "vkey", reason: "a rotation names a new checkpoint vkey, <origin>+<key hash>+<key>".into() });
        }
        if !previous_vkey.is_empty() && origin(vkey) != origin(previous_vkey) {
            return Err(Rejection::InvalidArgument { field: "vkey", reason: "a new checkpoint key keeps the log's origin as its name".into() });
        }
        if self.retired_checkpoint_vkeys.iter().any(|retired| retired == vkey) {
            return Err(Rejection::InvalidArgument { field: "vkey", reason: "this checkpoint key was rotated out before; a rotation needs a new key".into() });
        }
        if let Some(current) = self.checkpoint_vkey.as_deref().filter(|current| *current != previous_vkey) {
            return Err(Rejection::KeyRotationStale { current: current.to_string() });
        }
        Ok(vec![Event::CheckpointKeyRotated { vkey: vkey.to_string(), previous_vkey: previous_vkey.to_string(), rotated_at: now }])
    }

    /// Whether `key_id` is revoked (signatures it makes from now on are not valid).
    pub fn key_revoked(&self, key_id: &str) -> bool {
        self.retired_keys.get(key_id).is_some_and(|retired| retired.revoked)
    }
}
