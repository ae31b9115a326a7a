//! Identifier newtypes. Ids are opaque strings on the wire; the newtypes stop a `NodeId`
//! from being passed where a `VoucherId` is meant. Deterministic ids (voucher ids, event
//! ids) are derived here from their inputs so that a retried command lands on the same
//! aggregate however long after the first attempt.

use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

string_id!(/// A voucher: one sale of one or more media.
    VoucherId);
string_id!(/// A merchant, as registered by the operator.
    MerchantId);
string_id!(/// An auditor (rights agent, licensing center), as registered by the operator: holds
    /// a read-only credential.
    AuditorId);
string_id!(/// A publisher (an author or label), as registered by the operator: publishes its own
    /// media, signed by its registered keys.
    PublisherId);
string_id!(/// A delivery node.
    NodeId);
string_id!(/// A published media item.
    MediaId);
string_id!(/// A consumer (player owner); personal data never enters events, only this id.
    ConsumerId);
string_id!(/// A consumer certificate serial.
    CertSerial);
string_id!(/// A prepaid points account.
    AccountId);
string_id!(/// A licensed duplication order.
    OrderId);
string_id!(/// A preview session.
    PreviewId);
string_id!(/// A merchant's (or other caller's) request id; retries reuse it.
    RequestId);

/// A position in the event stream; the first event has sequence 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Milliseconds since the Unix epoch, by the engine's clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Millis(pub i64);

impl Millis {
    pub fn plus_ms(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
    }
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = crate::crypto::Hasher::new_derive_key("vouchsafe 2026 id derivation");
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    // 128 bits of the hash: collision-free in practice, short enough for NATS subjects.
    hex::encode(&hasher.finalize()[..16])
}

/// The voucher id for a merchant's request: the same request id always names the same
/// voucher, so a retry beyond any dedupe window still finds the first answer.
pub fn voucher_id_for(merchant: &MerchantId, request: &RequestId) -> VoucherId {
    VoucherId(format!("v{}", short_hash(&[b"voucher", merchant.0.as_bytes(), request.0.as_bytes()])))
}

/// The duplication order id for a merchant's request.
pub fn order_id_for(merchant: &MerchantId, request: &RequestId) -> OrderId {
    OrderId(format!("o{}", short_hash(&[b"order", merchant.0.as_bytes(), request.0.as_bytes()])))
}

/// The preview id for a merchant's request.
pub fn preview_id_for(merchant: &MerchantId, request: &RequestId) -> PreviewId {
    PreviewId(format!("p{}", short_hash(&[b"preview", merchant.0.as_bytes(), request.0.as_bytes()])))
}

/// The merchant id the operator's request registers.
/// The request id of a points-saga step on an account, for the step of `request` on
/// `voucher`. One account serves many vouchers, and request ids are remembered per
/// aggregate: the merchant's own request id there would collide between vouchers (the
/// Authorize of one taken for a retry of, or a reuse of, another's Reserve). Derived, so a
/// retry of the same request on the same voucher lands on the same account request.
pub fn account_request_for(request: &RequestId, voucher: &VoucherId) -> RequestId {
    RequestId(format!("ar{}", short_hash(&[b"account request", request.0.as_bytes(), voucher.0.as_bytes()])))
}

pub fn merchant_id_for(operator: &str, request: &RequestId) -> MerchantId {
    MerchantId(format!("m{}", short_hash(&[b"merchant", operator.as_bytes(), request.0.as_bytes()])))
}

/// The auditor id the operator's request registers. The prefix `a` is used by no other
/// derived id (`v`, `o`, `p`, `m`, `n`, `md`, `c`).
pub fn auditor_id_for(operator: &str, request: &RequestId) -> AuditorId {
    AuditorId(format!("a{}", short_hash(&[b"auditor", operator.as_bytes(), request.0.as_bytes()])))
}

/// The publisher id the operator's request registers. The prefix `pu` is no other derived
/// id's (a preview's `p` is followed by hex digits).
pub fn publisher_id_for(operator: &str, request: &RequestId) -> PublisherId {
    PublisherId(format!("pu{}", short_hash(&[b"publisher", operator.as_bytes(), request.0.as_bytes()])))
}

/// Whether `id` is a publisher's (`publisher_id_for`): a client tells a publisher's
/// credential from the operator's by it.
pub fn is_publisher_id(id: &str) -> bool {
    id.starts_with("pu")
}

/// The delivery node id the operator's request registers.
pub fn node_id_for(operator: &str, request: &RequestId) -> NodeId {
    NodeId(format!("n{}", short_hash(&[b"node", operator.as_bytes(), request.0.as_bytes()])))
}

/// The media id a publisher's request publishes.
pub fn media_id_for(publisher: &str, request: &RequestId) -> MediaId {
    MediaId(format!("md{}", short_hash(&[b"media", publisher.as_bytes(), request.0.as_bytes()])))
}

/// The serial of the certificate the operator's request issues to a consumer: a retry
/// names the same certificate, and concurrent requests never collide.
pub fn cert_serial_for(consumer: &ConsumerId, operator: &str, request: &RequestId) -> CertSerial {
    CertSerial(format!("c{}", short_hash(&[b"cert", consumer.0.as_bytes(), operator.as_bytes(), request.0.as_bytes()])))
}

/// The idempotency key (`Nats-Msg-Id`) of the event a command produces: a hash of who
/// asked, which request, which aggregate, and the index of the event within the command.
pub fn idempotency_key(actor: &str, request: &RequestId, subject: &str, index: usize) -> String {
    short_hash(&[b"msg", actor.as_bytes(), request.0.as_bytes(), subject.as_bytes(), &(index as u64).to_le_bytes()])
}

/// Whether a string is acceptable as an id and as a NATS subject token: 1..=64 bytes of
/// ASCII letters, digits, '-' and '_'.
pub fn is_valid_token(value: &str) -> bool {
    !value.is_empty() && value.len() <= 64 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voucher_ids_are_deterministic_and_distinct() {
        let merchant = MerchantId::new("m1");
        let a = voucher_id_for(&merchant, &RequestId::new("r1"));
        assert_eq!(a, voucher_id_for(&merchant, &RequestId::new("r1")));
        assert_ne!(a, voucher_id_for(&merchant, &RequestId::new("r2")));
        assert_ne!(a, voucher_id_for(&MerchantId::new("m2"), &RequestId::new("r1")));
        assert!(is_valid_token(a.as_str()));
        let operator_request = RequestId::new("r1");
        for id in [
            merchant_id_for("op", &operator_request).0,
            auditor_id_for("op", &operator_request).0,
            node_id_for("op", &operator_request).0,
            media_id_for("op", &operator_request).0,
            cert_serial_for(&ConsumerId::new("x".repeat(64)), "op", &operator_request).0,
        ] {
            assert!(is_valid_token(&id), "{id} must be a valid id and subject token");
        }
        assert_ne!(merchant_id_for("op", &operator_request).0[1..], node_id_for("op", &operator_request).0[1..], "kinds are domain-separated");
        assert_ne!(merchant_id_for("op", &operator_request).0[1..], auditor_id_for("op", &operator_request).0[1..], "kinds are domain-separated");
    }

    #[test]
    fn derived_id_prefixes_tell_the_kinds_apart() {
        let request = RequestId::new("r1");
        let merchant = MerchantId::new("m1");
        let consumer = ConsumerId::new("c1");
        let ids = [
            ("voucher", voucher_id_for(&merchant, &request).0),
            ("order", order_id_for(&merchant, &request).0),
            ("preview", preview_id_for(&merchant, &request).0),
            ("merchant", merchant_id_for("op", &request).0),
            ("auditor", auditor_id_for("op", &request).0),
            ("node", node_id_for("op", &request).0),
            ("media", media_id_for("op", &request).0),
            ("cert", cert_serial_for(&consumer, "op", &request).0),
        ];
        // Each id is its kind's prefix then 32 lowercase hex digits, and no two kinds share a
        // prefix, so an id read in a log line or a credential file names its kind.
        let prefixes: Vec<&str> = ids.iter().map(|(_, id)| &id[..id.len() - 32]).collect();
        for ((kind, id), prefix) in ids.iter().zip(&prefixes) {
            assert!(id[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{kind}: {id}");
        }
        let distinct: std::collections::BTreeSet<&str> = prefixes.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "prefixes {prefixes:?} must differ per kind");
        assert_eq!(auditor_id_for("op", &request).0.as_bytes()[0], b'a');
    }

    #[test]
    fn length_prefixing_prevents_ambiguous_concatenation() {
        let a = voucher_id_for(&MerchantId::new("ab"), &RequestId::new("c"));
        let b = voucher_id_for(&MerchantId::new("a"), &RequestId::new("bc"));
        assert_ne!(a, b);
    }

    /// Derived ids are stored in events and handed to merchants, so their bytes must never
    /// change: pinned to what the derivation gave before it moved behind `crypto::Hasher`.
    #[test]
    fn derived_ids_are_stable() {
        assert_eq!(voucher_id_for(&MerchantId::new("m1"), &RequestId::new("r1")).0, "v3107a50f9466bc266134f5d3940922bb");
    }

    #[test]
    fn token_validation() {
        assert!(is_valid_token("node-1_a"));
        assert!(!is_valid_token(""));
        assert!(!is_valid_token("a.b"));
        assert!(!is_valid_token("a b"));
        assert!(!is_valid_token("*"));
        assert!(!is_valid_token(&"x".repeat(65)));
    }
}
