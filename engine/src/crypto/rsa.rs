//! RSA-2048+: key types with PEM/DER encoding, OAEP-SHA256 key wrapping and PSS-SHA256
//! signatures, all drawing randomness from the OS.
//!
//! Two implementations, each where it serves: the operations (OAEP encryption and
//! decryption, PSS signing and verification) run in aws-lc-rs, constant-time and about ten
//! times faster than the `rsa` crate on this machine (ARCHITECTURE.md, "RSA"); the `rsa`
//! crate parses, encodes and generates keys (no secret-dependent timing to speak of there:
//! generation happens once per key, offline). A key is parsed once and held in both forms.
//! The formats are the standard ones either way (OAEP with SHA-256 and MGF1-SHA-256, empty
//! label; PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt), so everything wrapped or
//! signed before still opens and verifies, and the tests cross-check the two.
//!
//! What does not live here: the fixed test keys (`super::test_keys`, next to the key type
//! tests share), batching signatures under a Merkle root (`crate::media`,
//! `crate::batch_signer`), and keeping private-key work off the async runtime (the callers'
//! job, see the module docs on RUSTSEC-2023-0071).

use super::{CryptoError, KEY_BYTES, RSA_BITS_MIN, SecretKey, hash, random_bytes};
use ::rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use ::rsa::traits::PublicKeyParts;
use ::rsa::{RsaPrivateKey, RsaPublicKey};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{RSA_PSS_2048_8192_SHA256, RSA_PSS_SHA256, RsaKeyPair, UnparsedPublicKey};
use pkcs8::der::pem::PemLabel;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Largest scrypt work factor (log2 N) a protected key may ask for: 2^20 with r = 8 is 1 GiB.
pub const SCRYPT_LOG_N_MAX: u32 = 20;
/// Largest scrypt block size (r) a protected key may ask for.
pub const SCRYPT_R_MAX: u32 = 8;

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

/// An RSA private key (2048 bits or more), held as `rsa` parsed it (zeroized on drop) and
/// as aws-lc-rs uses it for decryption and signing; `Debug` shows only the public key id.
#[derive(Clone)]
pub struct RsaPrivate {
    pub(super) key: RsaPrivateKey,
    pub(super) public: RsaPublic,
    operations: Arc<PrivateOperations>,
}

/// The aws-lc-rs forms of one private key.
struct PrivateOperations {
    signing: RsaKeyPair,
    decrypting: OaepPrivateDecryptingKey,
}

/// An RSA public key (2048 bits or more), identified by [`RsaPublic::key_id`].
#[derive(Clone)]
pub struct RsaPublic {
    pub(super) key: RsaPublicKey,
    id: [u8; 8],
    /// SubjectPublicKeyInfo DER: what verification reads.
    der: Arc<[u8]>,
    encrypting: Arc<OaepPublicEncryptingKey>,
}

impl PartialEq for RsaPublic {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for RsaPublic {}

impl RsaPrivate {
    fn from_key(key: RsaPrivateKey) -> Result<Self, CryptoError> {
        let public = RsaPublic::from_key(key.to_public_key())?;
        let pkcs8 = key.to_pkcs8_der().map_err(|e| CryptoError::Rsa(format!("cannot encode private key: {e}")))?;
        let rejected = |e: aws_lc_rs::error::KeyRejected| CryptoError::BadKey(format!("rsa private key refused: {e}"));
        let signing = RsaKeyPair::from_pkcs8(pkcs8.as_bytes()).map_err(rejected)?;
        let decrypting = OaepPrivateDecryptingKey::new(PrivateDecryptingKey::from_pkcs8(pkcs8.as_bytes()).map_err(rejected)?)
            .map_err(|_| CryptoError::BadKey("rsa private key refused for oaep".into()))?;
        Ok(Self { key, public, operations: Arc::new(PrivateOperations { signing, decrypting }) })
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

    /// Encodes the key as encrypted PKCS#8 PEM (`-----BEGIN ENCRYPTED PRIVATE KEY-----`):
    /// PBES2 with scrypt (the recommended N = 2^17, r = 8, p = 1: 128 MiB and about half a
    /// second, so each guess costs as much), AES-256-CBC, a fresh salt and IV from the OS.
    /// The standard form, so `openssl pkcs8` and other tools read it too.
    pub fn to_protected_pem(&self, passphrase: &[u8]) -> Result<Zeroizing<String>, CryptoError> {
        if passphrase.is_empty() {
            return Err(CryptoError::BadKey("an empty passphrase protects nothing".into()));
        }
        self.key.to_pkcs8_encrypted_pem(OsRng, passphrase, LineEnding::LF).map_err(|e| CryptoError::Rsa(format!("cannot encrypt private key: {e}")))
    }

    /// Parses an encrypted PKCS#8 PEM private key written by [`RsaPrivate::to_protected_pem`]
    /// (or any PBES2 one). A passphrase that does not open it is [`CryptoError::WrongPassphrase`],
    /// whatever failed inside (padding, or garbage that is no key): the two are one answer,
    /// so a guess learns nothing more. Scrypt costs beyond [`SCRYPT_LOG_N_MAX`] and
    /// [`SCRYPT_R_MAX`] are refused before any work, as PBES1 (weak) is.
    pub fn from_protected_pem(pem: &str, passphrase: &[u8]) -> Result<Self, CryptoError> {
        let (label, document) = pkcs8::SecretDocument::from_pem(pem).map_err(|e| CryptoError::BadKey(format!("not a pem document: {e}")))?;
        if label != pkcs8::EncryptedPrivateKeyInfo::PEM_LABEL {
            return Err(CryptoError::BadKey(format!("a {label:?} pem, not an encrypted private key")));
        }
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes())
            .map_err(|e| CryptoError::BadKey(format!("not an encrypted pkcs#8 private key: {e}")))?;
        let pkcs8::pkcs5::EncryptionScheme::Pbes2(scheme) = &info.encryption_algorithm else {
            return Err(CryptoError::BadKey("only pbes2 protects a key (pbes1 is weak)".into()));
        };
        if let Some(scrypt) = scheme.kdf.scrypt()
            && (scrypt.cost_parameter > 1 << SCRYPT_LOG_N_MAX || u32::from(scrypt.block_size) > SCRYPT_R_MAX || scrypt.parallelization > 16)
        {
            return Err(CryptoError::BadKey("the key's scrypt cost is beyond what this program spends".into()));
        }
        let plain = info.decrypt(passphrase).map_err(|_| CryptoError::WrongPassphrase)?;
        let key = RsaPrivateKey::from_pkcs8_der(plain.as_bytes()).map_err(|_| CryptoError::WrongPassphrase)?;
        Self::from_key(key)
    }

    /// Whether `pem` is an encrypted PKCS#8 private key (by its label; nothing is decrypted).
    pub fn is_protected_pem(pem: &str) -> bool {
        pem.trim_start().starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
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
        let rejected = |e: aws_lc_rs::error::KeyRejected| CryptoError::BadKey(format!("rsa public key refused: {e}"));
        let encrypting = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(der.as_bytes()).map_err(rejected)?)
            .map_err(|_| CryptoError::BadKey("rsa public key refused for oaep".into()))?;
        Ok(Self { key, id, der: Arc::from(der.as_bytes()), encrypting: Arc::new(encrypting) })
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
        Ok(self.der.to_vec())
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
    encrypt(recipient, key.expose())
}

/// Unwraps a key wrapped by [`wrap_key`]. Any failure is the same opaque `Decrypt` error.
pub fn unwrap_key(private: &RsaPrivate, wrapped: &[u8]) -> Result<SecretKey, CryptoError> {
    let plaintext = decrypt(private, wrapped)?;
    let bytes: [u8; KEY_BYTES] = plaintext.as_slice().try_into().map_err(|_| CryptoError::Decrypt)?;
    Ok(SecretKey(bytes))
}

/// Wraps several symmetric keys for `recipient` in one RSA-OAEP-SHA256 block (at most as
/// many as one block holds: 5 for a 2048-bit key).
pub fn wrap_keys(recipient: &RsaPublic, keys: &[&SecretKey]) -> Result<Vec<u8>, CryptoError> {
    let mut plaintext = Zeroizing::new(Vec::with_capacity(keys.len() * KEY_BYTES));
    for key in keys {
        plaintext.extend_from_slice(key.expose());
    }
    encrypt(recipient, &plaintext)
}

/// Unwraps `count` keys wrapped by [`wrap_keys`]. Any failure is the same opaque `Decrypt` error.
pub fn unwrap_keys(private: &RsaPrivate, wrapped: &[u8], count: usize) -> Result<Vec<SecretKey>, CryptoError> {
    let plaintext = decrypt(private, wrapped)?;
    if count == 0 || plaintext.len() != count * KEY_BYTES {
        return Err(CryptoError::Decrypt);
    }
    Ok(plaintext.chunks_exact(KEY_BYTES).map(|chunk| SecretKey(chunk.try_into().expect("chunks_exact gives KEY_BYTES"))).collect())
}

fn encrypt(recipient: &RsaPublic, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key = &recipient.encrypting;
    if plaintext.len() > key.max_plaintext_size(&OAEP_SHA256_MGF1SHA256) {
        return Err(CryptoError::Rsa(format!("{} bytes do not fit one rsa-oaep block of this key", plaintext.len())));
    }
    let mut ciphertext = vec![0u8; key.ciphertext_size()];
    let written =
        key.encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut ciphertext, None).map_err(|_| CryptoError::Rsa("rsa-oaep encryption failed".into()))?.len();
    ciphertext.truncate(written);
    Ok(ciphertext)
}

fn decrypt(private: &RsaPrivate, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let key = &private.operations.decrypting;
    let mut plaintext = Zeroizing::new(vec![0u8; key.min_output_size()]);
    let written = key.decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut plaintext, None).map_err(|_| CryptoError::Decrypt)?.len();
    plaintext.truncate(written);
    Ok(plaintext)
}

/// Signs `message` with RSA-PSS-SHA256 (MGF1-SHA256, 32-byte salt; aws-lc blinds the
/// private-key operation).
pub fn sign(private: &RsaPrivate, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key = &private.operations.signing;
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(&RSA_PSS_SHA256, &aws_lc_rs::rand::SystemRandom::new(), message, &mut signature).map_err(|_| CryptoError::Rsa("rsa-pss signing failed".into()))?;
    Ok(signature)
}

/// Verifies an RSA-PSS-SHA256 signature made by [`sign`].
pub fn verify(public: &RsaPublic, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, &public.der[..]).verify(message, signature).map_err(|_| CryptoError::BadSignature)
}
