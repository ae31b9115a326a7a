//! Helpers for tests of the market (behind the `test-util` feature): a certified consumer
//! with a passport, and its signed spend authorizations, so tests pay in points the way
//! the player does.

use crate::app::{AppError, Market};
use crate::crypto::RsaPrivate;
use crate::crypto::test_keys::fixed_rsa;
use crate::ids::{AccountId, CertSerial, ConsumerId, MediaId, MerchantId, Millis, RequestId};
use crate::spend::{NONCE_BYTES, SpendAuthorization};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A consumer the engine certified, holding the passport key.
#[derive(Clone, Debug)]
pub struct TestConsumer {
    pub id: ConsumerId,
    pub passport: RsaPrivate,
    pub serial: CertSerial,
    /// Nonces count up, so two runs of one script write the same stream.
    nonces: Arc<AtomicU64>,
}

impl TestConsumer {
    /// Certifies `id` (as `operator`) with the fixed test key, valid for a year.
    pub async fn certify(market: &Market, operator: &str, id: &str) -> Result<Self, AppError> {
        let passport = fixed_rsa();
        let public_key_der = passport.public().to_der()?;
        let id = ConsumerId::new(id);
        let cert = market.certify_consumer(operator, &RequestId::new(format!("certify-{}", id.0)), &id, &public_key_der, 365 * 24 * 3_600_000).await?;
        Ok(Self { id, passport, serial: cert.serial, nonces: Arc::new(AtomicU64::new(0)) })
    }

    /// The consumer's points account.
    pub fn account(&self) -> AccountId {
        AccountId(self.id.0.clone())
    }

    /// A fresh single-use authorization for `merchant` to spend up to `amount_max` on
    /// `media` (empty: any), valid until `expires_at`.
    pub fn authorize(&self, merchant: &MerchantId, amount_max: u64, media: &[MediaId], expires_at: Millis) -> SpendAuthorization {
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..8].copy_from_slice(&self.nonces.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        SpendAuthorization::sign_with_nonce(&self.passport, &self.id, &self.serial, merchant, amount_max, media.to_vec(), expires_at, nonce)
            .expect("the fixed test key signs")
    }

    /// An authorization for `merchant` to spend any amount on anything for the next hour
    /// of `market`'s clock.
    pub fn authorize_any(&self, market: &Market, merchant: &MerchantId) -> SpendAuthorization {
        self.authorize(merchant, u64::MAX, &[], market.now().plus_ms(3_600_000))
    }
}

/// The seed of a randomized test that has no fixed one: `PROPTEST_RNG_SEED` when set
/// (proptest's own variable), else drawn from the clock. Printed with the test's name (the
/// harness shows it when the test fails), so any run can be repeated with
/// `PROPTEST_RNG_SEED=<seed>`.
pub fn proptest_seed(test: &str) -> u64 {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |elapsed| elapsed.as_nanos() as u64));
    eprintln!("{test}: seed {seed} (PROPTEST_RNG_SEED={seed} repeats this run)");
    seed
}
