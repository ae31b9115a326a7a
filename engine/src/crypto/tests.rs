//! Tests of `engine::crypto`: published test vectors for every primitive (RFC 4231 for
//! HMAC-SHA256, the BLAKE3 team's vectors, the GCM specification's cases), round trips and
//! tampering for AEAD and RSA, token separation, and that secrets never print.
//!
//! What does not live here: tests of the formats built on these primitives (`crate::media`,
//! the wire format) and of how callers choose keys.

use super::rsa::OsRng;
use super::test_keys::{fixed_rsa, fixed_rsa_2};
use super::*;
use ::rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use ::rsa::sha2::Sha256 as PaddingSha256;
use ::rsa::traits::PublicKeyParts as _;
use ::rsa::{Oaep, RsaPrivateKey};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes([byte; KEY_BYTES])
}

// ---- HMAC: RFC 4231 section 4, HMAC-SHA-256 outputs of test cases 1–4, 6, 7 ----

#[test]
fn hmac_sha256_rfc4231() {
    let case4_key: Vec<u8> = (1u8..=25).collect();
    let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
        (vec![0x0b; 20], b"Hi There".to_vec(), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe".to_vec(), b"what do ya want for nothing?".to_vec(), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (vec![0xaa; 20], vec![0xdd; 50], "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        (case4_key, vec![0xcd; 50], "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        (vec![0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        (
            vec![0xaa; 131],
            b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        ),
    ];
    for (key, data, expected) in &cases {
        assert_eq!(hex::encode(hmac_sha256(key, data)), *expected);
    }
}

#[test]
fn hmac_framed_is_unambiguous_and_verifies() {
    let key = b"k";
    let ab_c = hmac_sha256_framed(key, &[b"ab", b"c"]);
    assert_ne!(ab_c, hmac_sha256_framed(key, &[b"a", b"bc"]));
    assert_ne!(ab_c, hmac_sha256_framed(key, &[b"abc"]));
    assert_ne!(ab_c, hmac_sha256(key, b"abc"));
    assert!(verify_hmac_sha256_framed(key, &[b"ab", b"c"], &ab_c));
    assert!(!verify_hmac_sha256_framed(key, &[b"a", b"bc"], &ab_c));
    assert!(!verify_hmac_sha256_framed(b"other", &[b"ab", b"c"], &ab_c));
    assert!(!verify_hmac_sha256_framed(key, &[b"ab", b"c"], &ab_c[..16]));
    let mut flipped = ab_c;
    flipped[31] ^= 1;
    assert!(!verify_hmac_sha256_framed(key, &[b"ab", b"c"], &flipped));
}

// ---- blake3: BLAKE3-team/BLAKE3 test_vectors/test_vectors.json (first 32 bytes) ----

const BLAKE3_KEY: &[u8; 32] = b"whats the Elvish word for friend";
const BLAKE3_CONTEXT: &str = "BLAKE3 2019-12-27 16:29:52 test vectors context";
/// (input_len, hash, keyed_hash, derive_key)
const BLAKE3_VECTORS: [(usize, &str, &str, &str); 7] = [
    (
        0,
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26",
        "2cc39783c223154fea8dfb7c1b1660f2ac2dcbd1c1de8277b0b0dd39b7e50d7d",
    ),
    (
        1,
        "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
        "6d7878dfff2f485635d39013278ae14f1454b8c0a3a2d34bc1ab38228a80c95b",
        "b3e2e340a117a499c6cf2398a19ee0d29cca2bb7404c73063382693bf66cb06c",
    ),
    (
        1023,
        "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11",
        "c951ecdf03288d0fcc96ee3413563d8a6d3589547f2c2fb36d9786470f1b9d6e",
        "74a16c1c3d44368a86e1ca6df64be6a2f64cce8f09220787450722d85725dea5",
    ),
    (
        1024,
        "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
        "75c46f6f3d9eb4f55ecaaee480db732e6c2105546f1e675003687c31719c7ba4",
        "7356cd7720d5b66b6d0697eb3177d9f8d73a4a5c5e968896eb6a689684302706",
    ),
    (
        1025,
        "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
        "357dc55de0c7e382c900fd6e320acc04146be01db6a8ce7210b7189bd664ea69",
        "effaa245f065fbf82ac186839a249707c3bddf6d3fdda22d1b95a3c970379bcb",
    ),
    (
        2048,
        "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a",
        "879cf1fa2ea0e79126cb1063617a05b6ad9d0b696d0d757cf053439f60a99dd1",
        "7b2945cb4fef70885cc5d78a87bf6f6207dd901ff239201351ffac04e1088a23",
    ),
    (
        31744,
        "62b6960e1a44bcc1eb1a611a8d6235b6b4b78f32e7abc4fb4c6cdcce94895c47",
        "efa53b389ab67c593dba624d898d0f7353ab99e4ac9d42302ee64cbf9939a419",
        "39772aef80e0ebe60596361e45b061e8f417429d529171b6764468c22928e28e",
    ),
];

#[test]
fn blake3_official_vectors() {
    let key = SecretKey::from_bytes(*BLAKE3_KEY);
    for (input_len, expected_hash, expected_keyed, expected_derived) in BLAKE3_VECTORS {
        let input: Vec<u8> = (0..input_len).map(|i| u8::try_from(i % 251).unwrap()).collect();
        assert_eq!(hex::encode(hash(&input)), expected_hash, "hash, len {input_len}");
        assert_eq!(hex::encode(keyed_hash(&key, &input)), expected_keyed, "keyed, len {input_len}");
        let derived = derive_key(BLAKE3_CONTEXT, &input);
        assert_eq!(hex::encode(derived.expose()), expected_derived, "derive, len {input_len}");
    }
}

#[test]
fn credential_hash_is_context_separated() {
    let secret = b"merchant secret";
    assert_eq!(credential_hash(secret), credential_hash(secret));
    assert_ne!(credential_hash(secret), credential_hash(b"merchant secreT"));
    assert_ne!(credential_hash(secret), hash(secret));
    assert_ne!(credential_hash(secret), *derive_key("another context", secret).expose());
}

/// The incremental `Hasher` and `derive_hash` give exactly blake3's answers (the official
/// vectors above), whatever the split of the input into parts: stored checksums, event ids
/// and golden encodings depend on these bytes.
#[test]
fn hasher_and_derive_hash_match_the_official_vectors() {
    for (input_len, expected_hash, _, expected_derived) in BLAKE3_VECTORS {
        let input: Vec<u8> = (0..input_len).map(|i| u8::try_from(i % 251).unwrap()).collect();
        assert_eq!(hex::encode(derive_hash(BLAKE3_CONTEXT, &input)), expected_derived, "derive_hash, len {input_len}");
        for split in [0, 1, input_len / 2, input_len] {
            let (first, second) = input.split_at(split.min(input_len));
            let mut plain = Hasher::new();
            plain.update(first).update(second);
            assert_eq!(hex::encode(plain.finalize()), expected_hash, "Hasher::new, len {input_len}, split {split}");
            let mut derived = Hasher::new_derive_key(BLAKE3_CONTEXT);
            derived.update(first).update(second);
            assert_eq!(hex::encode(derived.finalize()), expected_derived, "Hasher::new_derive_key, len {input_len}, split {split}");
        }
    }
    assert_eq!(Hasher::default().finalize(), hash(b""));
}

#[test]
fn hasher_clones_are_independent_and_finalize_does_not_consume() {
    let mut prefix = Hasher::new_derive_key(BLAKE3_CONTEXT);
    prefix.update(b"shared prefix ");
    let mut a = prefix.clone();
    let mut b = prefix.clone();
    a.update(b"a");
    b.update(b"b");
    assert_eq!(a.finalize(), derive_hash(BLAKE3_CONTEXT, b"shared prefix a"));
    assert_eq!(b.finalize(), derive_hash(BLAKE3_CONTEXT, b"shared prefix b"));
    assert_eq!(prefix.finalize(), derive_hash(BLAKE3_CONTEXT, b"shared prefix "));
    assert_eq!(a.finalize(), a.finalize());
    assert_ne!(derive_hash(BLAKE3_CONTEXT, b"x"), derive_hash("another context", b"x"));
    assert_eq!(format!("{a:?}"), "Hasher { .. }");
}

// ---- AES-256-GCM: McGrew & Viega, "The Galois/Counter Mode of Operation", cases 13–16 ----

const GCM_KEY: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
const GCM_IV: &str = "cafebabefacedbaddecaf888";
const GCM_PLAIN: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
const GCM_CIPHER: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";

fn check_gcm(key_hex: &str, iv_hex: &str, aad_hex: &str, plain_hex: &str, ciphertext_hex: &str) {
    let key = SecretKey::from_bytes(unhex(key_hex).try_into().unwrap());
    let nonce: [u8; NONCE_BYTES] = unhex(iv_hex).try_into().unwrap();
    let (aad, plain) = (unhex(aad_hex), unhex(plain_hex));
    let sealed = aead_encrypt(&key, &nonce, &aad, &plain);
    assert_eq!(hex::encode(&sealed), ciphertext_hex);
    assert_eq!(aead_decrypt(&key, &nonce, &aad, &sealed).unwrap(), plain);
}

#[test]
fn aes256gcm_spec_case_13() {
    check_gcm(&"00".repeat(32), &"00".repeat(12), "", "", "530f8afbc74536b9a963b4f1c4cb738b");
}

#[test]
fn aes256gcm_spec_case_14() {
    let sealed = "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919";
    check_gcm(&"00".repeat(32), &"00".repeat(12), "", &"00".repeat(16), sealed);
}

#[test]
fn aes256gcm_spec_case_15() {
    let sealed = format!("{GCM_CIPHER}b094dac5d93471bdec1a502270e3cc6c");
    check_gcm(GCM_KEY, GCM_IV, "", GCM_PLAIN, &sealed);
}

#[test]
fn aes256gcm_spec_case_16() {
    // 60-byte plaintext (a partial final block) and 20 bytes of associated data.
    let sealed = format!("{}76fc6ece0f4e1768cddf8853bb2d551b", &GCM_CIPHER[..120]);
    check_gcm(GCM_KEY, GCM_IV, "feedfacedeadbeeffeedfacedeadbeefabaddad2", &GCM_PLAIN[..120], &sealed);
}

#[test]
fn aead_decrypt_into_reuses_its_buffer_and_refuses_what_aead_decrypt_refuses() {
    let (key, nonce) = (SecretKey::random(), random_bytes::<NONCE_BYTES>());
    let sealed = aead_encrypt(&key, &nonce, b"chunk-1", b"the chunk's bytes");
    let mut plaintext = b"what the buffer held before".to_vec();
    aead_decrypt_into(&key, &nonce, b"chunk-1", &sealed, &mut plaintext).expect("opens");
    assert_eq!(plaintext, b"the chunk's bytes");
    let mut flipped = sealed.clone();
    flipped[0] ^= 0x01;
    assert!(matches!(aead_decrypt_into(&key, &nonce, b"chunk-1", &flipped, &mut plaintext), Err(CryptoError::Decrypt)));
    assert!(matches!(aead_decrypt_into(&key, &nonce, b"chunk-2", &sealed, &mut plaintext), Err(CryptoError::Decrypt)));
    assert!(matches!(aead_decrypt_into(&key, &nonce, b"chunk-1", &sealed[..AEAD_TAG_BYTES - 1], &mut plaintext), Err(CryptoError::Decrypt)));
}

#[test]
fn aead_round_trip_and_tamper() {
    let (key, nonce) = (SecretKey::random(), random_bytes::<NONCE_BYTES>());
    let sealed = aead_encrypt(&key, &nonce, b"media-1", b"the media bytes");
    assert_eq!(sealed.len(), b"the media bytes".len() + AEAD_TAG_BYTES);
    assert_eq!(aead_decrypt(&key, &nonce, b"media-1", &sealed).unwrap(), b"the media bytes");
    assert!(matches!(aead_decrypt(&SecretKey::random(), &nonce, b"media-1", &sealed), Err(CryptoError::Decrypt)));
    assert!(aead_decrypt(&key, &nonce, b"media-2", &sealed).is_err());
    assert!(aead_decrypt(&key, &[0u8; NONCE_BYTES], b"media-1", &sealed).is_err());
    for index in [0, sealed.len() - 1] {
        let mut flipped = sealed.clone();
        flipped[index] ^= 0x01;
        assert!(aead_decrypt(&key, &nonce, b"media-1", &flipped).is_err(), "bit flip at {index}");
    }
    assert!(aead_decrypt(&key, &nonce, b"media-1", &sealed[..AEAD_TAG_BYTES - 1]).is_err());
    assert!(aead_decrypt(&key, &nonce, b"media-1", &sealed[..sealed.len() - 1]).is_err());
}

// ---- RSA ----

#[test]
fn rsa_wrap_unwrap() {
    let (private, other) = (fixed_rsa(), fixed_rsa_2());
    let media_key = SecretKey::random();
    let wrapped = wrap_key(&private.public(), &media_key).unwrap();
    assert_eq!(wrapped.len(), 256);
    assert!(unwrap_key(&private, &wrapped).unwrap().ct_eq(&media_key));
    // OAEP is randomized: wrapping twice gives different ciphertexts.
    assert_ne!(wrapped, wrap_key(&private.public(), &media_key).unwrap());
    assert!(matches!(unwrap_key(&other, &wrapped), Err(CryptoError::Decrypt)));
    let mut flipped = wrapped.clone();
    flipped[100] ^= 0x01;
    assert!(unwrap_key(&private, &flipped).is_err());
}

#[test]
fn several_keys_wrap_in_one_operation_and_unwrap_only_as_that_many() {
    let private = fixed_rsa();
    let (first, second) = (SecretKey::random(), SecretKey::random());
    let wrapped = wrap_keys(&private.public(), &[&first, &second]).unwrap();
    assert_eq!(wrapped.len(), 256, "one RSA block");
    let keys = unwrap_keys(&private, &wrapped, 2).unwrap();
    assert!(keys[0].ct_eq(&first) && keys[1].ct_eq(&second));
    assert!(matches!(unwrap_keys(&private, &wrapped, 1), Err(CryptoError::Decrypt)));
    assert!(matches!(unwrap_key(&private, &wrapped), Err(CryptoError::Decrypt)), "two keys are not one");
    assert!(matches!(unwrap_keys(&fixed_rsa_2(), &wrapped, 2), Err(CryptoError::Decrypt)));
}

#[test]
fn rsa_unwrap_refuses_wrong_length_plaintext() {
    let private = fixed_rsa();
    let short = private.public.key.encrypt(&mut OsRng, Oaep::new::<PaddingSha256>(), &[7u8; 16]).unwrap();
    assert!(matches!(unwrap_key(&private, &short), Err(CryptoError::Decrypt)));
}

#[test]
fn rsa_sign_verify() {
    let (private, other) = (fixed_rsa(), fixed_rsa_2());
    let public = private.public();
    let signature = sign(&private, b"sealed report 42").unwrap();
    verify(&public, b"sealed report 42", &signature).unwrap();
    assert!(matches!(verify(&public, b"sealed report 43", &signature), Err(CryptoError::BadSignature)));
    let mut altered = signature.clone();
    altered[10] ^= 0x80;
    assert!(verify(&public, b"sealed report 42", &altered).is_err());
    assert!(verify(&public, b"sealed report 42", &signature[1..]).is_err());
    assert!(verify(&other.public(), b"sealed report 42", &signature).is_err());
}

/// The operations moved from the `rsa` crate to aws-lc-rs; what the engine wrapped and
/// signed before must still open and verify, and the other way round (the formats are the
/// standard ones): each direction checked against the `rsa` crate's own OAEP and PSS.
#[test]
fn aws_lc_and_the_rsa_crate_read_each_others_wrapped_keys_and_signatures() {
    use ::rsa::pss::{BlindedSigningKey, Signature, VerifyingKey};
    use ::rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Verifier as _};
    let private = fixed_rsa();
    let media_key = SecretKey::random();
    // Wrapped by the rsa crate (as before), unwrapped here; and back.
    let wrapped_before = private.public.key.encrypt(&mut OsRng, Oaep::new::<PaddingSha256>(), media_key.expose()).unwrap();
    assert!(unwrap_key(&private, &wrapped_before).unwrap().ct_eq(&media_key));
    let wrapped_now = wrap_key(&private.public(), &media_key).unwrap();
    assert_eq!(private.key.decrypt(Oaep::new::<PaddingSha256>(), &wrapped_now).unwrap(), media_key.expose());
    // Signed by the rsa crate (PSS, SHA-256, 32-byte salt), verified here; and back.
    let signed_before = BlindedSigningKey::<PaddingSha256>::new(private.key.clone()).sign_with_rng(&mut OsRng, b"seal 7").to_vec();
    verify(&private.public(), b"seal 7", &signed_before).unwrap();
    let signed_now = sign(&private, b"seal 7").unwrap();
    let verifying = VerifyingKey::<PaddingSha256>::new(private.public.key.clone());
    verifying.verify(b"seal 7", &Signature::try_from(signed_now.as_slice()).unwrap()).unwrap();
    assert!(verifying.verify(b"seal 8", &Signature::try_from(signed_now.as_slice()).unwrap()).is_err(), "control: another message");
}

#[test]
fn rsa_encoding_round_trips() {
    let (private, other) = (fixed_rsa(), fixed_rsa_2());
    let public = private.public();
    let pem = private.to_pkcs8_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let reparsed = RsaPrivate::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(reparsed.public(), public);
    assert_eq!(RsaPublic::from_pem(&public.to_pem().unwrap()).unwrap(), public);
    let der = public.to_der().unwrap();
    assert_eq!(RsaPublic::from_der(&der).unwrap(), public);
    assert_eq!(public.key_id(), hex::encode(&hash(&der)[..8]));
    assert_eq!(public.key_id().len(), 16);
    assert_ne!(public, other.public());
    assert_ne!(public.key_id(), other.public().key_id());
    assert!(RsaPublic::from_der(&der[1..]).is_err());
    assert!(matches!(RsaPrivate::from_pkcs8_pem("not a key"), Err(CryptoError::BadKey(_))));
}

/// A protected key is the standard encrypted PKCS#8: PBES2 with scrypt (memory-hard) and
/// AES-256-CBC, under a fresh salt each time; it opens with its passphrase only, and the
/// plain PKCS#8 parser (what an attacker holding the file has without the passphrase)
/// does not read it. Control: the plain PEM of the same key opens with no passphrase at all.
#[test]
fn a_protected_key_is_pbes2_scrypt_and_opens_only_with_its_passphrase() {
    let private = fixed_rsa();
    let protected = private.to_protected_pem(b"correct horse").unwrap();
    assert!(RsaPrivate::is_protected_pem(&protected) && protected.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    assert_eq!(RsaPrivate::from_protected_pem(&protected, b"correct horse").unwrap().public(), private.public());
    assert!(matches!(RsaPrivate::from_protected_pem(&protected, b"correct horsf"), Err(CryptoError::WrongPassphrase)));
    assert!(matches!(RsaPrivate::from_protected_pem(&protected, b""), Err(CryptoError::WrongPassphrase)));
    assert!(matches!(RsaPrivate::from_pkcs8_pem(&protected), Err(CryptoError::BadKey(_))), "the plain parser cannot read it");
    // The control: the unprotected form of the same key needs nothing.
    let plain = private.to_pkcs8_pem().unwrap();
    assert!(!RsaPrivate::is_protected_pem(&plain));
    assert_eq!(RsaPrivate::from_pkcs8_pem(&plain).unwrap().public(), private.public());
    assert!(matches!(RsaPrivate::from_protected_pem(&plain, b"correct horse"), Err(CryptoError::BadKey(_))), "a plain key is not a protected one");
    // The structure: PBES2, scrypt at the recommended cost, AES-256-CBC; salts differ.
    let (_, document) = pkcs8::SecretDocument::from_pem(&protected).unwrap();
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes()).unwrap();
    let pkcs8::pkcs5::EncryptionScheme::Pbes2(scheme) = &info.encryption_algorithm else { panic!("pbes2") };
    let scrypt = scheme.kdf.scrypt().expect("scrypt, a memory-hard kdf");
    assert_eq!((scrypt.cost_parameter, scrypt.block_size, scrypt.parallelization), (1 << 17, 8, 1));
    assert!(matches!(scheme.encryption, pkcs8::pkcs5::pbes2::EncryptionScheme::Aes256Cbc { .. }));
    assert!(!info.encrypted_data.windows(16).any(|w| plain.as_bytes().windows(16).any(|p| p == w)), "no plaintext in the file");
    let again = private.to_protected_pem(b"correct horse").unwrap();
    assert_ne!(*again, *protected, "a fresh salt and iv each time");
    assert!(!format!("{:?}", RsaPrivate::from_protected_pem(&protected, b"x").err()).contains("horse"));
    assert!(matches!(private.to_protected_pem(b""), Err(CryptoError::BadKey(_))), "an empty passphrase protects nothing");
}

/// A protected key that asks for more scrypt memory than the bound is refused before any
/// work (a hostile file cannot make the player allocate gigabytes). Control: the same file
/// at a small cost gets as far as the passphrase.
#[test]
fn a_protected_key_beyond_the_scrypt_bound_is_refused_before_deriving() {
    use pkcs8::der::Encode as _;
    let forge = |log_n: u8| {
        let (salt, iv) = ([7u8; 16], [9u8; 16]);
        let params = pkcs8::pkcs5::scrypt::Params::new(log_n, 8, 1, 32).unwrap();
        let scheme = pkcs8::pkcs5::pbes2::Parameters::scrypt_aes256cbc(params, &salt, &iv).unwrap();
        let info = pkcs8::EncryptedPrivateKeyInfo { encryption_algorithm: scheme.into(), encrypted_data: &[0u8; 64] };
        pkcs8::der::pem::encode_string("ENCRYPTED PRIVATE KEY", LineEnding::LF, &info.to_der().unwrap()).unwrap()
    };
    let beyond = u8::try_from(SCRYPT_LOG_N_MAX + 1).unwrap();
    assert!(matches!(RsaPrivate::from_protected_pem(&forge(beyond), b"pw"), Err(CryptoError::BadKey(reason)) if reason.contains("scrypt cost")));
    assert!(matches!(RsaPrivate::from_protected_pem(&forge(10), b"pw"), Err(CryptoError::WrongPassphrase)), "the control: a small cost is tried");
}

#[test]
fn rsa_small_keys_are_refused() {
    assert!(matches!(RsaPrivate::generate(1024), Err(CryptoError::BadKey(_))));
    let small = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
    let pem = small.to_pkcs8_pem(LineEnding::LF).unwrap();
    assert!(matches!(RsaPrivate::from_pkcs8_pem(&pem), Err(CryptoError::BadKey(_))));
    let der = small.to_public_key().to_public_key_der().unwrap();
    assert!(matches!(RsaPublic::from_der(der.as_bytes()), Err(CryptoError::BadKey(_))));
    let public_pem = small.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
    assert!(matches!(RsaPublic::from_pem(&public_pem), Err(CryptoError::BadKey(_))));
}

#[test]
fn fixed_test_keys_are_distinct_2048_bit_keys() {
    let (a, b) = (fixed_rsa(), fixed_rsa_2());
    assert_eq!(a.key.n().bits(), 2048);
    assert_eq!(b.key.n().bits(), 2048);
    assert_ne!(a.public(), b.public());
}

// ---- tokens ----

#[test]
fn derive_token_is_deterministic_and_separated() {
    let token = derive_token(&key(1), TokenPurpose::Auth, "v-1", 0);
    assert!(token.ct_eq(&derive_token(&key(1), TokenPurpose::Auth, "v-1", 0)));
    assert!(!token.ct_eq(&derive_token(&key(1), TokenPurpose::Receipt, "v-1", 0)));
    assert!(!token.ct_eq(&derive_token(&key(1), TokenPurpose::Auth, "v-2", 0)));
    assert!(!token.ct_eq(&derive_token(&key(1), TokenPurpose::Auth, "v-1", 1)));
    assert!(!token.ct_eq(&derive_token(&key(2), TokenPurpose::Auth, "v-1", 0)));
    assert_ne!(TokenPurpose::Auth.as_bytes(), TokenPurpose::Receipt.as_bytes());
}

#[test]
fn receipt_proof_binds_node_challenge_voucher_receipt_and_consumer() {
    let receipt = derive_token(&key(1), TokenPurpose::Receipt, "v-1", 0);
    let other_receipt = derive_token(&key(1), TokenPurpose::Receipt, "v-1", 1);
    let alice = ProofConsumer::new("alice", "c-1", b"alice's public key");
    let proof = receipt_proof(&receipt, "v-1", "node-a", b"challenge-1", &alice);
    assert!(verify_receipt_proof(&receipt, "v-1", "node-a", b"challenge-1", &alice, &proof));
    assert!(!verify_receipt_proof(&receipt, "v-1", "node-b", b"challenge-1", &alice, &proof));
    assert!(!verify_receipt_proof(&receipt, "v-1", "node-a", b"challenge-2", &alice, &proof));
    assert!(!verify_receipt_proof(&receipt, "v-2", "node-a", b"challenge-1", &alice, &proof));
    assert!(!verify_receipt_proof(&other_receipt, "v-1", "node-a", b"challenge-1", &alice, &proof));
    assert!(!verify_receipt_proof(&receipt, "v-1", "node-a", b"challenge-1", &alice, &proof[..31]));
    // Another passport in the Redeem: another consumer, another certificate of the same
    // consumer, or the same serial with another key (a forged certificate) all fail.
    for other in [
        ProofConsumer::new("mallory", "c-1", b"alice's public key"),
        ProofConsumer::new("alice", "c-2", b"alice's public key"),
        ProofConsumer::new("alice", "c-1", b"mallory's public key"),
    ] {
        assert!(!verify_receipt_proof(&receipt, "v-1", "node-a", b"challenge-1", &other, &proof), "{other:?}");
    }
}

#[test]
fn access_token_checks() {
    let token_key = key(9);
    let node_key = node_access_key(&token_key, "node-a");
    let media: &[&str] = &["m-1", "m-2"];
    let token = access_token(&node_key, "node-a", "v-1", media, 1_000);
    let check = |node_key: &SecretKey, node: &str, voucher: &str, media: &[&str], expires: i64, now: i64| {
        check_access_token(node_key, node, voucher, media, expires, now, &token)
    };
    assert_eq!(check(&node_key, "node-a", "v-1", media, 1_000, 999), Ok(()));
    assert_eq!(check(&node_key, "node-a", "v-1", media, 1_000, 1_000), Ok(()));
    assert_eq!(check(&node_key, "node-a", "v-1", media, 1_000, 1_001), Err(AccessDenied::Expired));
    assert_eq!(check(&node_key, "node-a", "v-1", media, 2_000, 1_001), Err(AccessDenied::Invalid));
    assert_eq!(check(&node_key, "node-a", "v-2", media, 1_000, 0), Err(AccessDenied::Invalid));
    assert_eq!(check(&node_key, "node-a", "v-1", &["m-1"], 1_000, 0), Err(AccessDenied::Invalid));
    assert_eq!(check(&node_key, "node-a", "v-1", &["m-2", "m-1"], 1_000, 0), Err(AccessDenied::Invalid));
    assert_eq!(check(&node_key, "node-a", "v-1", &["m-1m-2"], 1_000, 0), Err(AccessDenied::Invalid));
    assert_eq!(check(&node_key, "node-b", "v-1", media, 1_000, 0), Err(AccessDenied::Invalid));
    let other_node_key = node_access_key(&token_key, "node-b");
    assert!(!other_node_key.ct_eq(&node_key));
    assert!(node_access_key(&token_key, "node-a").ct_eq(&node_key));
    assert!(!node_access_key(&key(8), "node-a").ct_eq(&node_key));
    assert_eq!(check(&other_node_key, "node-a", "v-1", media, 1_000, 0), Err(AccessDenied::Invalid));
    assert_eq!(check_access_token(&node_key, "node-a", "v-1", media, 1_000, 0, &token[..16]), Err(AccessDenied::Invalid));
}

// ---- secrets never print; constant-time comparison ----

#[test]
fn debug_never_shows_secret_bytes() {
    let secret = SecretKey::from_bytes(random_bytes());
    let printed = format!("{secret:?} {:#?}", secret);
    assert_eq!(format!("{secret:?}"), "SecretKey(<redacted>)");
    assert!(!printed.contains(&hex::encode(secret.expose())));
    assert!(!printed.contains(&format!("{:?}", secret.expose())));

    let private = fixed_rsa();
    let printed = format!("{private:?} {:#?}", private);
    let d = ::rsa::traits::PrivateKeyParts::d(&private.key).to_bytes_be();
    assert!(!printed.contains(&hex::encode(&d)));
    assert!(!printed.contains(&hex::encode(&d).to_uppercase()));
    assert!(!printed.contains(&::rsa::traits::PrivateKeyParts::d(&private.key).to_string()));
    let pem = private.to_pkcs8_pem().unwrap();
    assert!(!printed.contains(&pem.lines().nth(5).unwrap().to_string()));
    assert!(printed.contains(&private.public().key_id()));
    assert!(format!("{:?}", private.public()).contains(&private.public().key_id()));
}

#[test]
fn ct_eq_compares_bytes_and_lengths() {
    assert!(ct_eq(b"same bytes", b"same bytes"));
    assert!(ct_eq(b"", b""));
    assert!(!ct_eq(b"same bytes", b"same bytez"));
    assert!(!ct_eq(b"same", b"same bytes"));
    assert!(key(1).ct_eq(&key(1)));
    assert!(!key(1).ct_eq(&key(2)));
}

#[test]
fn random_draws_differ() {
    assert_ne!(random_bytes::<32>(), random_bytes::<32>());
    assert!(!SecretKey::random().ct_eq(&SecretKey::random()));
}

/// Known answers: SHA-256 of "abc" (FIPS 180-2) and RFC 8032 §7.1 test 1 (empty message).
#[test]
fn sha256_and_ed25519_known_answers() {
    assert_eq!(hex::encode(sha256(&[b"a", b"bc"])), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let seed: [u8; 32] = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap().try_into().unwrap();
    let private = Ed25519Private::from_seed(&seed);
    assert_eq!(hex::encode(private.public().to_bytes()), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    let signature = private.sign(b"");
    assert_eq!(
        hex::encode(signature),
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    );
    assert!(private.public().verify(b"", &signature).is_ok());
    // Controls: another message, a flipped bit, a short signature, another key.
    assert!(private.public().verify(b"x", &signature).is_err());
    let mut flipped = signature;
    flipped[10] ^= 1;
    assert!(private.public().verify(b"", &flipped).is_err());
    assert!(private.public().verify(b"", &signature[..63]).is_err());
    assert!(Ed25519Private::generate().public().verify(b"", &signature).is_err());
    assert!(!format!("{private:?}").contains(&hex::encode(seed)), "the seed never prints");
}
