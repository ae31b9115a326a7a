//! Publisher accounts (the seeds' authors and musicians who register): the operator
//! registers a publisher with its credential hash, its royalty terms (owner, distributor,
//! rights agent and the shares) and its signing keys; a publisher then publishes its own
//! media, whose containers must be signed by one of its registered keys, under its terms.
//!
//! Keys are recorded as the shell parsed them (`key_id`, SubjectPublicKeyInfo DER): the
//! domain parses no key and checks no signature; the shell passes which registered key
//! signed a container (`Publisher::key`). What does not live here: the signature check
//! (`engine::media`), the publication itself (`catalog`).

use super::catalog::check_terms;
use super::event::{Event, RoyaltyTerms};
use super::{Aggregate, AggregateKind, Rejection, validate};
use crate::ids::{Millis, PublisherId};
use std::collections::BTreeMap;

/// Most signing keys one publisher may hold.
pub const PUBLISHER_KEYS_MAX: usize = 16;
/// Largest public key (SubjectPublicKeyInfo DER) recorded, in bytes: RSA-8192 fits.
pub const PUBLIC_KEY_DER_BYTES_MAX: usize = 2048;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PublisherStatus {
    #[default]
    Unknown,
    Active,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publisher {
    pub status: PublisherStatus,
    pub id: Option<PublisherId>,
    pub name: String,
    pub credential_hash: [u8; 32],
    /// The terms every media this publisher publishes is sold under.
    pub terms: RoyaltyTerms,
    /// Registered signing keys: key id → SubjectPublicKeyInfo DER.
    pub keys: BTreeMap<String, Vec<u8>>,
}

/// A public key as the shell parsed it: its id (`RsaPublic::key_id`) and DER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherKey {
    pub key_id: String,
    pub public_key_der: Vec<u8>,
}

#[derive(Clone, Debug)]
pub enum PublisherCommand {
    /// The operator registers a publisher with at least one signing key.
    Register { publisher: PublisherId, name: String, credential_hash: [u8; 32], terms: RoyaltyTerms, keys: Vec<PublisherKey> },
    /// The operator adds a signing key (a key already registered is in effect).
    AddKey { key: PublisherKey },
}

impl Publisher {
    /// The registered key with `key_id`, if its DER is exactly `public_key_der`.
    pub fn key(&self, key_id: &str, public_key_der: &[u8]) -> bool {
        self.keys.get(key_id).is_some_and(|der| der.as_slice() == public_key_der)
    }

    fn id_or_empty(&self) -> PublisherId {
        self.id.clone().unwrap_or_else(|| PublisherId::new(""))
    }
}

fn check_key(key: &PublisherKey) -> Result<(), Rejection> {
    validate::id("key_id", &key.key_id)?;
    if key.public_key_der.is_empty() || key.public_key_der.len() > PUBLIC_KEY_DER_BYTES_MAX {
        return Err(Rejection::InvalidArgument { field: "public_key_der", reason: format!("must be 1..={PUBLIC_KEY_DER_BYTES_MAX} bytes") });
    }
    Ok(())
}

impl Aggregate for Publisher {
    type Command = PublisherCommand;
    const KIND: AggregateKind = AggregateKind::Publisher;

    fn decide(&self, command: &PublisherCommand, _now: Millis) -> Result<Vec<Event>, Rejection> {
        match command {
            PublisherCommand::Register { publisher, name, credential_hash, terms, keys } => {
                if self.status != PublisherStatus::Unknown {
                    return Err(Rejection::AlreadyExists { kind: "publisher", id: publisher.0.clone() });
                }
                validate::id("publisher_id", &publisher.0)?;
                validate::text("name", name, 256)?;
                check_terms(terms)?;
                if keys.is_empty() || keys.len() > PUBLISHER_KEYS_MAX {
                    return Err(Rejection::InvalidArgument { field: "public_keys", reason: format!("need 1..={PUBLISHER_KEYS_MAX} signing keys") });
                }
                let mut events = vec![Event::PublisherRegistered {
                    publisher_id: publisher.clone(),
                    name: name.clone(),
                    credential_hash: *credential_hash,
                    terms: terms.clone(),
                }];
                let mut seen = std::collections::BTreeSet::new();
                for key in keys {
                    check_key(key)?;
                    if seen.insert(key.key_id.clone()) {
                        events.push(Event::PublisherKeyAdded {
                            publisher_id: publisher.clone(),
                            key_id: key.key_id.clone(),
                            public_key_der: key.public_key_der.clone(),
                        });
                    }
                }
                Ok(events)
            }
            PublisherCommand::AddKey { key } => {
                if self.status == PublisherStatus::Unknown {
                    return Err(Rejection::NotFound { kind: "publisher", id: String::new() });
                }
                check_key(key)?;
                if self.key(&key.key_id, &key.public_key_der) {
                    return Ok(vec![]);
                }
                if self.keys.contains_key(&key.key_id) {
                    return Err(Rejection::AlreadyExists { kind: "publisher key", id: key.key_id.clone() });
                }
                if self.keys.len() >= PUBLISHER_KEYS_MAX {
                    return Err(Rejection::InvalidArgument { field: "public_keys", reason: format!("at most {PUBLISHER_KEYS_MAX} signing keys") });
                }
                Ok(vec![Event::PublisherKeyAdded { publisher_id: self.id_or_empty(), key_id: key.key_id.clone(), public_key_der: key.public_key_der.clone() }])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::PublisherRegistered { publisher_id, name, credential_hash, terms } => {
                self.status = PublisherStatus::Active;
                self.id = Some(publisher_id.clone());
                self.name = name.clone();
                self.credential_hash = *credential_hash;
                self.terms = terms.clone();
            }
            Event::PublisherKeyAdded { key_id, public_key_der, .. } => {
                self.keys.insert(key_id.clone(), public_key_der.clone());
            }
            _ => {}
        }
        self
    }

    fn command_name(command: &PublisherCommand) -> &'static str {
        match command {
            PublisherCommand::Register { .. } => "RegisterPublisher",
            PublisherCommand::AddKey { .. } => "AddPublisherKey",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Aggregate;

    fn terms() -> RoyaltyTerms {
        RoyaltyTerms {
            retailer_bps: 3000,
            distributor_bps: 2000,
            owner_bps: 5000,
            distributor: "dist-1".into(),
            owner: "label-1".into(),
            rights_agent: "agent-1".into(),
        }
    }

    fn key(id: &str, byte: u8) -> PublisherKey {
        PublisherKey { key_id: id.into(), public_key_der: vec![byte; 300] }
    }

    fn register(keys: Vec<PublisherKey>) -> PublisherCommand {
        PublisherCommand::Register { publisher: PublisherId::new("p1"), name: "Label".into(), credential_hash: [7; 32], terms: terms(), keys }
    }

    fn fold(events: &[Event]) -> Publisher {
        events.iter().fold(Publisher::default(), |state, event| state.evolve(event))
    }

    #[test]
    fn a_publisher_is_registered_with_its_terms_and_keys_and_holds_only_those() {
        let events = Publisher::default().decide(&register(vec![key("k1", 1), key("k1", 1), key("k2", 2)]), Millis(0)).expect("registered");
        assert_eq!(events.len(), 3, "registered, then each key once: {events:?}");
        let publisher = fold(&events);
        assert_eq!((publisher.status, &publisher.terms), (PublisherStatus::Active, &terms()));
        assert!(publisher.key("k1", &[1; 300]) && publisher.key("k2", &[2; 300]));
        // The control: a key not registered, or an id with other bytes, is not the publisher's.
        assert!(!publisher.key("k3", &[3; 300]) && !publisher.key("k1", &[2; 300]));
        assert!(matches!(publisher.decide(&register(vec![key("k1", 1)]), Millis(0)), Err(Rejection::AlreadyExists { .. })));
        // Adding: a new key is an event, the same key again nothing, another key under a known id refused.
        let added = publisher.decide(&PublisherCommand::AddKey { key: key("k3", 3) }, Millis(0)).expect("added");
        assert!(matches!(&added[..], [Event::PublisherKeyAdded { key_id, .. }] if key_id == "k3"));
        assert_eq!(publisher.decide(&PublisherCommand::AddKey { key: key("k1", 1) }, Millis(0)), Ok(vec![]));
        assert!(publisher.decide(&PublisherCommand::AddKey { key: key("k1", 9) }, Millis(0)).is_err());
        assert!(Publisher::default().decide(&PublisherCommand::AddKey { key: key("k1", 1) }, Millis(0)).is_err(), "no such publisher");
    }

    #[test]
    fn a_registration_needs_settling_terms_and_at_least_one_key() {
        assert!(Publisher::default().decide(&register(vec![]), Millis(0)).is_err(), "no key");
        let mut bad = terms();
        bad.owner_bps = 1;
        let command = PublisherCommand::Register {
            publisher: PublisherId::new("p1"),
            name: "Label".into(),
            credential_hash: [7; 32],
            terms: bad,
            keys: vec![key("k1", 1)],
        };
        assert!(Publisher::default().decide(&command, Millis(0)).is_err(), "shares that do not sum to 10000");
        assert!(Publisher::default().decide(&register(vec![PublisherKey { key_id: "k1".into(), public_key_der: vec![] }]), Millis(0)).is_err());
        let many = (0..=PUBLISHER_KEYS_MAX).map(|i| key(&format!("k{i}"), 1)).collect();
        assert!(Publisher::default().decide(&register(many), Millis(0)).is_err(), "bounded");
    }
}
