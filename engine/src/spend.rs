//! A consumer's consent to spend their points, and their signed balance reads: the bytes
//! each signature covers, signing them with the passport key, and checking them with the
//! key of the certificate the engine issued. The player signs (`player authorize-spend`,
//! `player points`); `app::Market` checks and the account aggregate decides what a checked
//! authorization allows (`domain::account::SpendConsent`). Not here: whether the
//! certificate is valid (the consumer aggregate says) or whether the nonce was used (the
//! account aggregate remembers).

use crate::crypto::{self, RsaPrivate, RsaPublic};
use crate::domain::account::SpendConsent;
use crate::domain::voucher::CertCheck;
use crate::ids::{AccountId, CertSerial, ConsumerId, MediaId, MerchantId, Millis};

/// Bytes of a spend authorization's single-use nonce.
pub const NONCE_BYTES: usize = 16;
/// Longest an authorization may be valid for, from its signing.
pub const TTL_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;
/// How far a signed balance read's `issued_at` may be from the engine's clock.
pub const POINTS_REQUEST_SKEW_MS: u64 = 5 * 60 * 1000;

/// A consumer's single-use consent to one points purchase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendAuthorization {
    /// The points account: the consumer id.
    pub account: AccountId,
    pub merchant: MerchantId,
    /// The most the purchase may cost, in points.
    pub amount_max: u64,
    /// The media the purchase may reserve; empty: any.
    pub media: Vec<MediaId>,
    pub nonce: [u8; NONCE_BYTES],
    pub expires_at: Millis,
    /// The certificate whose key signed.
    pub cert_serial: CertSerial,
    pub signature: Vec<u8>,
}

fn push_part(message: &mut Vec<u8>, part: &[u8]) {
    message.extend_from_slice(&(part.len() as u64).to_le_bytes());
    message.extend_from_slice(part);
}

impl SpendAuthorization {
    /// The bytes the signature covers: every field but the signature, length-framed.
    pub fn message(&self) -> Vec<u8> {
        let mut message = b"vouchsafe spend authorization v1\0".to_vec();
        for part in [self.account.0.as_bytes(), self.merchant.0.as_bytes(), self.cert_serial.0.as_bytes(), &self.nonce] {
            push_part(&mut message, part);
        }
        message.extend_from_slice(&self.amount_max.to_le_bytes());
        message.extend_from_slice(&self.expires_at.0.to_le_bytes());
        message.extend_from_slice(&(self.media.len() as u64).to_le_bytes());
        for media in &self.media {
            push_part(&mut message, media.0.as_bytes());
        }
        message
    }

    /// Signs with the passport key (RSA-PSS); the nonce is fresh and random.
    pub fn sign(
        passport: &RsaPrivate,
        consumer: &ConsumerId,
        cert_serial: &CertSerial,
        merchant: &MerchantId,
        amount_max: u64,
        media: Vec<MediaId>,
        expires_at: Millis,
    ) -> Result<Self, crypto::CryptoError> {
        Self::sign_with_nonce(passport, consumer, cert_serial, merchant, amount_max, media, expires_at, crypto::random_bytes::<NONCE_BYTES>())
    }

    /// [`Self::sign`] with a given nonce (tests that compare streams need the same one).
    #[allow(clippy::too_many_arguments)]
    pub fn sign_with_nonce(
        passport: &RsaPrivate,
        consumer: &ConsumerId,
        cert_serial: &CertSerial,
        merchant: &MerchantId,
        amount_max: u64,
        media: Vec<MediaId>,
        expires_at: Millis,
        nonce: [u8; NONCE_BYTES],
    ) -> Result<Self, crypto::CryptoError> {
        let mut authorization = Self {
            account: AccountId(consumer.0.clone()),
            merchant: merchant.clone(),
            amount_max,
            media,
            nonce,
            expires_at,
            cert_serial: cert_serial.clone(),
            signature: Vec::new(),
        };
        authorization.signature = crypto::sign(passport, &authorization.message())?;
        Ok(authorization)
    }

    /// Whether the signature verifies with the certificate's public key (DER). A key that
    /// does not parse verifies nothing.
    pub fn verifies_with(&self, public_key_der: &[u8]) -> bool {
        RsaPublic::from_der(public_key_der).is_ok_and(|public| crypto::verify(&public, &self.message(), &self.signature).is_ok())
    }

    /// What the account aggregate decides on: this authorization as checked against the
    /// certificate `cert` (its standing) with public key `public_key_der`.
    pub fn consent(&self, cert: CertCheck, public_key_der: &[u8]) -> SpendConsent {
        SpendConsent {
            account: self.account.clone(),
            merchant: self.merchant.clone(),
            amount_max: self.amount_max,
            media: self.media.clone(),
            nonce_hash: nonce_hash(&self.nonce),
            expires_at: self.expires_at,
            cert,
            signature_valid: cert != CertCheck::Unknown && self.verifies_with(public_key_der),
        }
    }
}

/// What the stream records of a nonce (the nonce itself is not secret, but the record
/// needs only to recognise it).
pub fn nonce_hash(nonce: &[u8; NONCE_BYTES]) -> [u8; 32] {
    crypto::derive_hash("vouchsafe spend authorization nonce v1", nonce)
}

/// The bytes a consumer signs to read their own points balance.
pub fn points_request_message(consumer: &ConsumerId, cert_serial: &CertSerial, issued_at: Millis) -> Vec<u8> {
    let mut message = b"vouchsafe points balance request v1\0".to_vec();
    push_part(&mut message, consumer.0.as_bytes());
    push_part(&mut message, cert_serial.0.as_bytes());
    message.extend_from_slice(&issued_at.0.to_le_bytes());
    message
}

/// Signs a balance read with the passport key.
pub fn sign_points_request(passport: &RsaPrivate, consumer: &ConsumerId, cert_serial: &CertSerial, issued_at: Millis) -> Result<Vec<u8>, crypto::CryptoError> {
    crypto::sign(passport, &points_request_message(consumer, cert_serial, issued_at))
}

/// Whether a balance read's signature verifies with the certificate's public key (DER).
pub fn verify_points_request(public_key_der: &[u8], consumer: &ConsumerId, cert_serial: &CertSerial, issued_at: Millis, signature: &[u8]) -> bool {
    RsaPublic::from_der(public_key_der)
        .is_ok_and(|public| crypto::verify(&public, &points_request_message(consumer, cert_serial, issued_at), signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_keys::{fixed_rsa, fixed_rsa_2};

    fn signed() -> SpendAuthorization {
        SpendAuthorization::sign(
            &fixed_rsa(),
            &ConsumerId::new("alice"),
            &CertSerial::new("c1"),
            &MerchantId::new("m1"),
            500,
            vec![MediaId::new("song")],
            Millis(1_000),
        )
        .expect("sign")
    }

    #[test]
    fn an_authorization_verifies_with_its_key_only() {
        let authorization = signed();
        let key = fixed_rsa().public().to_der().expect("der");
        assert!(authorization.verifies_with(&key));
        assert!(!authorization.verifies_with(&fixed_rsa_2().public().to_der().expect("der")), "another passport's key");
        assert!(!authorization.verifies_with(b"not a key"));
    }

    #[test]
    fn every_field_is_signed() {
        let key = fixed_rsa().public().to_der().expect("der");
        let changes: [fn(&mut SpendAuthorization); 7] = [
            |a| a.account = AccountId::new("bob"),
            |a| a.merchant = MerchantId::new("m2"),
            |a| a.amount_max += 1,
            |a| a.media.push(MediaId::new("other")),
            |a| a.nonce[0] ^= 1,
            |a| a.expires_at = Millis(a.expires_at.0 + 1),
            |a| a.cert_serial = CertSerial::new("c2"),
        ];
        for (index, change) in changes.iter().enumerate() {
            let mut authorization = signed();
            change(&mut authorization);
            assert!(!authorization.verifies_with(&key), "field change {index} still verifies");
        }
    }

    #[test]
    fn nonces_are_fresh_and_consent_records_their_hash() {
        let (first, second) = (signed(), signed());
        assert_ne!(first.nonce, second.nonce);
        let key = fixed_rsa().public().to_der().expect("der");
        let consent = first.consent(CertCheck::Valid, &key);
        assert!(consent.signature_valid);
        assert_eq!(consent.nonce_hash, nonce_hash(&first.nonce));
        assert!(!first.consent(CertCheck::Unknown, &key).signature_valid, "no certificate, no valid signature");
    }

    #[test]
    fn a_balance_read_is_bound_to_consumer_certificate_and_time() {
        let (alice, serial) = (ConsumerId::new("alice"), CertSerial::new("c1"));
        let signature = sign_points_request(&fixed_rsa(), &alice, &serial, Millis(5)).expect("sign");
        let key = fixed_rsa().public().to_der().expect("der");
        assert!(verify_points_request(&key, &alice, &serial, Millis(5), &signature));
        assert!(!verify_points_request(&key, &ConsumerId::new("bob"), &serial, Millis(5), &signature));
        assert!(!verify_points_request(&key, &alice, &CertSerial::new("c2"), Millis(5), &signature));
        assert!(!verify_points_request(&key, &alice, &serial, Millis(6), &signature));
    }
}
