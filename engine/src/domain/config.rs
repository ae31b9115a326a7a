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
    ("node.heartbeat_timeout_ms", 1_000, 3_600_000, 15_000),
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
];

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
}

impl Config {
    pub fn get(&self, key: &str) -> Option<u64> {
        self.values.get(key).copied().or_else(|| KEYS.iter().find(|(k, ..)| *k == key).map(|&(.., default)| default))
    }
}

#[derive(Clone, Debug)]
pub enum ConfigCommand {
    Set { key: String, value: String },
}

impl Aggregate for Config {
    type Command = ConfigCommand;
    const KIND: AggregateKind = AggregateKind::Config;

    fn decide(&self, command: &ConfigCommand, _now: Millis) -> Result<Vec<Event>, Rejection> {
        let ConfigCommand::Set { key, value } = command;
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
        if let Event::ConfigChanged { key, value } = event
            && let Ok(parsed) = value.parse()
        {
            self.values.insert(key.clone(), parsed);
        }
        self
    }

    fn command_name(_command: &ConfigCommand) -> &'static str {
        "SetConfig"
    }
}
