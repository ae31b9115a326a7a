//! RSA-2048+: key types with PEM/DER encoding, OAEP-SHA256 key wrapping and PSS-SHA256
//! signatures, all drawing randomness from the OS.
//!
//! What does not live here: the fixed test keys (`super::test_keys`, next to the key type
//! tests share), batching signatures under a Merkle root (`crate::media`,
//! `crate::batch_signer`), and keeping private-key work off the async runtime (the callers'
//! job, see the module docs on RUSTSEC-2023-0071).

use super::{CryptoError, KEY_BYTES, RSA_BITS_MIN, SecretKey, hash, random_bytes};
use ::rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use ::rsa::sha2::{Digest as _, Sha256 as PaddingSha256};
use ::rsa::traits::PublicKeyParts;
use ::rsa::{Oaep, Pss, RsaPrivateKey, RsaPublicKey};
use std::fmt;
use std::num::NonZeroU32;
use zeroize::Zeroizing;

/// The OS random number generator in the `rand_core` 0.6 shape that `rsa` 0.9 expects.
pub(super) struct OsRng;

/// The `rand_core` error code reported when the OS generator fails.
const OS_RNG_FAILED: NonZeroU32 = match NonZeroU32::new(rsa::rand_core::Error::CUSTOM_START) {
    Some(code) => code,
    None => panic!("CUSTOM_START is not zero"),
};

impl rsa::rand_core::RngCore for OsRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes(random_bytes())
    }

    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes(random_bytes())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        getrandom::fill(dest).expect("the os random number generator must be available");
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        getrandom::fill(dest).map_err(|_| rsa::rand_core::Error::from(OS_RNG_FAILED))
    }
}

impl rsa::rand_core::CryptoRng for OsRng {}

fn check_bits(bits: usize) -> Result<(), CryptoError> {
    if bits < RSA_BITS_MIN {
        return Err(CryptoError::BadKey(format!("rsa key has {bits} bits, at least {RSA_BITS_MIN} are required; generate a larger key")));
    }
    Ok(())
}

/// An RSA private key (2048 bits or more). Zeroized on drop by `rsa`; `Debug` shows only the
/// public key id.
#[derive(Clone)]
pub struct RsaPrivate {
    pub(super) key: RsaPrivateKey,
    pub(super) public: RsaPublic,
}

/// An RSA public key (2048 bits or more), identified by [`RsaPublic::key_id`].
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublic {
    pub(super) key: RsaPublicKey,
    id: [u8; 8],
}

impl RsaPrivate {
    fn from_key(key: RsaPrivateKey) -> Result<Self, CryptoError> {
        let public = RsaPublic::from_key(key.to_public_key())?;
        Ok(Self { key, public })
    }

    /// Generates a fresh key of `bits` bits (at least [`RSA_BITS_MIN`]). Slow: seconds.
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        check_bits(bits)?;
        let key = RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| CryptoError::Rsa(e.to_string()))?;
        Self::from_key(key)
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| CryptoError::BadKey(format!("not a pkcs#8 pem rsa private key: {e}")))?;
        Self::from_key(key)
    }

    /// Encodes the key as PKCS#8 PEM, in memory that is zeroized on drop.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        self.key.to_pkcs8_pem(LineEnding::LF).map_err(|e| CryptoError::Rsa(format!("cannot encode private key: {e}")))
    }

    /// The matching public key.
    pub fn public(&self) -> RsaPublic {
        self.public.clone()
    }
}

impl fmt::Debug for RsaPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPrivate").field("key_id", &self.public.key_id()).field("private", &"<redacted>").finish()
    }
}

impl RsaPublic {
    fn from_key(key: RsaPublicKey) -> Result<Self, CryptoError> {
        check_bits(key.n().bits())?;
        let der = key.to_public_key_der().map_err(|e| CryptoError::Rsa(format!("cannot encode public key: {e}")))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash(der.as_bytes())[..8]);
        Ok(Self { key, id })
    }

    /// Parses an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = RsaPublicKey::from_public_key_pem(pem).map_err(|e| CryptoError::BadKey(format!("not an spki pem rsa public key: {e}")))?;
        Self::from_key(key)
    }

    /// Encodes the key as SPKI PEM.
    pub fn to_pem(&self) -> Result<String, CryptoError> {
        self.key.to_public_key_pem(LineEnding::LF).map_err(|e| CryptoError::Rsa(format!("cannot encode public key: {e}")))
    }

    /// Parses an SPKI DER public key.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = RsaPublicKey::from_public_key_der(der).map_err(|e| CryptoError::BadKey(format!("not an spki der rsa public key: {e}")))?;
        Self::from_key(key)
    }

    /// Encodes the key as SPKI DER.
    pub fn to_der(&self) -> Result<Vec<u8>, CryptoError> {
        self.key.to_public_key_der().map(|der| der.into_vec()).map_err(|e| CryptoError::Rsa(format!("cannot encode public key: {e}")))
    }

    /// Hex of the first 8 bytes of blake3(SPKI DER): a short, stable name for the key.
    pub fn key_id(&self) -> String {
        hex::encode(self.id)
    }
}

impl fmt::Debug for RsaPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPublic").field("key_id", &self.key_id()).finish()
    }
}

/// Wraps a symmetric key for `recipient` with RSA-OAEP-SHA256 (fresh OS randomness each call).
pub fn wrap_key(recipient: &RsaPublic, key: &SecretKey) -> Result<Vec<u8>, CryptoError> {
    recipient.key.encrypt(&mut OsRng, Oaep::new::<PaddingSha256>(), key.expose()).map_err(|e| CryptoError::Rsa(e.to_string()))
}

/// Unwraps a [`wrap_key`] result (blinded RSA-OAEP-SHA256). Any failure, including a
/// plaintext that is not exactly [`KEY_BYTES`] long, is [`CryptoError::Decrypt`].
pub fn unwrap_key(private: &RsaPrivate, wrapped: &[u8]) -> Result<SecretKey, CryptoError> {
    let plaintext = Zeroizing::new(private.key.decrypt_blinded(&mut OsRng, Oaep::new::<PaddingSha256>(), wrapped).map_err(|_| CryptoError::Decrypt)?);
    let bytes: [u8; KEY_BYTES] = plaintext.as_slice().try_into().map_err(|_| CryptoError::Decrypt)?;
    Ok(SecretKey(bytes))
}

/// Wraps several symmetric keys for `recipient` in one RSA-OAEP-SHA256 operation (their
/// concatenation; OAEP-SHA256 with a 2048-bit key carries up to 190 bytes, five keys).
pub fn wrap_keys(recipient: &RsaPublic, keys: &[&SecretKey]) -> Result<Vec<u8>, CryptoError> {
    let mut plaintext = Zeroizing::new(Vec::with_capacity(keys.len() * KEY_BYTES));
    for key in keys {
        plaintext.extend_from_slice(key.expose());
    }
    recipient.key.encrypt(&mut OsRng, Oaep::new::<PaddingSha256>(), &plaintext).map_err(|e| CryptoError::Rsa(e.to_string()))
}

/// Unwraps a [`wrap_keys`] result of exactly `count` keys (blinded); anything else is
/// [`CryptoError::Decrypt`].
pub fn unwrap_keys(private: &RsaPrivate, wrapped: &[u8], count: usize) -> Result<Vec<SecretKey>, CryptoError> {
    let plaintext = Zeroizing::new(private.key.decrypt_blinded(&mut OsRng, Oaep::new::<PaddingSha256>(), wrapped).map_err(|_| CryptoError::Decrypt)?);
    if plaintext.len() != count * KEY_BYTES {
        return Err(CryptoError::Decrypt);
    }
    Ok(plaintext.chunks_exact(KEY_BYTES).map(|chunk| SecretKey(chunk.try_into().expect("chunks_exact gives KEY_BYTES"))).collect())
}

/// Signs `message` with RSA-PSS-SHA256 (blinded, 32-byte salt).
pub fn sign(private: &RsaPrivate, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let digest = PaddingSha256::digest(message);
    private.key.sign_with_rng(&mut OsRng, Pss::new_blinded::<PaddingSha256>(), &digest).map_err(|e| CryptoError::Rsa(e.to_string()))
}

/// Verifies an RSA-PSS-SHA256 signature made by [`sign`].
pub fn verify(public: &RsaPublic, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let digest = PaddingSha256::digest(message);
    public.key.verify(Pss::new::<PaddingSha256>(), &digest, signature).map_err(|_| CryptoError::BadSignature)
}
