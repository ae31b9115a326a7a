//! Property tests of the media container parsers over untrusted bytes: random mutations
//! (flipped bits, overwritten bytes, huge length fields, insertions, deletions and
//! truncations) of a valid format-2 container never panic the parser, and no mutated
//! container is ever accepted as signed. Every part of a format-2 container, free parts
//! included, is covered by the publisher's signature (through the hashes in the signed
//! table of contents). The same holds for delivered copies: a mutated copy never passes
//! its check.

use engine::crypto::{self, RsaPrivate, SecretKey};
use engine::ids::{CertSerial, ConsumerId, MediaId, Millis, NodeId, VoucherId};
use engine::media::{self, ComponentSpec, ContainerSpec, Parsed, PreviewSpec, RenditionSpec, TransactionRecord};
use proptest::prelude::*;
use std::sync::OnceLock;

fn publisher() -> &'static RsaPrivate {
    static KEY: OnceLock<RsaPrivate> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivate::from_pkcs8_pem(include_str!("../testdata/rsa-2048-a.pem")).expect("engine/testdata holds a valid key"))
}

/// One valid container, sealed once (RSA signing is the slow part).
fn container() -> &'static (Vec<u8>, SecretKey) {
    static CONTAINER: OnceLock<(Vec<u8>, SecretKey)> = OnceLock::new();
    CONTAINER.get_or_init(|| {
        let key = SecretKey::random();
        let high: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let low: Vec<u8> = (0..1100u32).map(|i| (i % 13) as u8).collect();
        let media_id = MediaId::new("md1");
        let spec = ContainerSpec {
            media_id: &media_id,
            length_ms: 4_000,
            for_sale: true,
            chunk_bytes: media::CHUNK_BYTES_MIN,
            components: vec![
                ComponentSpec { name: "title", media_type: "text/plain", encrypted: false, data: b"Song" },
                ComponentSpec { name: "liner_notes", media_type: "text/plain", encrypted: true, data: b"recorded in one take" },
                ComponentSpec { name: "cover", media_type: "image/png", encrypted: false, data: &[0x89, b'P', b'N', b'G'] },
            ],
            renditions: vec![RenditionSpec { name: "high", bitrate_kbps: 256, content: &high }, RenditionSpec { name: "low", bitrate_kbps: 96, content: &low }],
            preview: Some(PreviewSpec { start_ms: 0, duration_ms: 1000, fade_in_ms: 100, fade_out_ms: 100, media_type: "audio/mpeg", clip: b"clip" }),
        };
        (media::encrypt_v2(&spec, &key, publisher()).expect("builds"), key)
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    Overwrite {
        at: usize,
        byte: u8,
    },
    /// A little-endian length field set to a huge or random value.
    Length {
        at: usize,
        value: u64,
        width: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
        (any::<usize>(), prop_oneof![Just(u64::MAX), Just(u64::from(u32::MAX)), Just(1u64 << 40), any::<u64>()], prop_oneof![Just(2u8), Just(4), Just(8)])
            .prop_map(|(at, value, width)| Mutation::Length { at, value, width }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
    ]
}

fn apply(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    for mutation in mutations {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match mutation {
            Mutation::FlipBit { at, bit } => bytes[at % len] ^= 1 << bit,
            Mutation::Overwrite { at, byte } => bytes[at % len] = *byte,
            Mutation::Length { at, value, width } => {
                let width = usize::from(*width);
                if len >= width {
                    let at = at % (len - width + 1);
                    bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
            }
            Mutation::Insert { at, bytes: inserted } => {
                let at = at % (len + 1);
                bytes.splice(at..at, inserted.iter().copied());
            }
            Mutation::Delete { at, len: deleted } => {
                let at = at % len;
                let end = (at + deleted).min(len);
                bytes.drain(at..end);
            }
            Mutation::Truncate { len: keep } => bytes.truncate(keep % len),
        }
    }
    bytes
}

/// Whether a container is accepted as signed: it parses as format 2 and verifies.
fn accepted_as_signed(bytes: &[u8]) -> bool {
    match media::parse(bytes) {
        Ok(Parsed::V2(container)) => container.verify().is_ok(),
        Ok(Parsed::V1(_)) | Err(_) => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, rng_seed: proptest::test_runner::RngSeed::Fixed(engine::testing::proptest_seed(module_path!())), ..ProptestConfig::default() })]

    #[test]
    fn mutated_format_2_containers_never_panic_and_are_never_accepted(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let (original, key) = container();
        let mutated = apply(original, &mutations);
        prop_assume!(&mutated != original);
        prop_assert!(!accepted_as_signed(&mutated), "a mutated container verified: {mutations:?}");
        // Whatever still parses is safe to use: decrypting and seeking fail cleanly or
        // succeed, never panic.
        if let Ok(Parsed::V2(container)) = media::parse(&mutated) {
            for rendition in 0..container.renditions.len() {
                let _ = container.open_rendition(key, rendition);
                let _ = container.chunk_at(rendition, u64::MAX);
                let _ = container.chunk_range(rendition, u64::MAX);
            }
            for component in 0..container.components.len() {
                let _ = container.open_component(key, component);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_after_the_magic_never_panic_the_parsers(version in prop_oneof![Just(1u8), Just(2u8), any::<u8>()], tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = b"VSMC".to_vec();
        bytes.push(version);
        bytes.extend_from_slice(&tail);
        prop_assert!(!accepted_as_signed(&bytes));
        let mut copy = b"VSDC".to_vec();
        copy.push(version);
        copy.extend_from_slice(&tail);
        let _ = media::parse_delivered_copy(&copy);
    }

    #[test]
    fn mutated_delivered_copies_never_pass_their_check(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let original = delivered_copy();
        let mutated = apply(original, &mutations);
        prop_assume!(&mutated != original);
        if let Ok(copy) = media::parse_delivered_copy(&mutated) {
            prop_assert!(!copy.check(&publisher().public()).ok(), "a mutated copy passed: {mutations:?}");
        }
    }
}

fn delivered_copy() -> &'static Vec<u8> {
    static COPY: OnceLock<Vec<u8>> = OnceLock::new();
    COPY.get_or_init(|| {
        let engine = publisher();
        let content = b"the delivered content".repeat(20);
        let record = TransactionRecord {
            voucher_id: VoucherId::new("v1"),
            media_id: MediaId::new("md1"),
            rendition: "high".into(),
            node_id: NodeId::new("n1"),
            delivered_at: Millis(1_000),
            engine_key_id: engine.public().key_id(),
            consumer_id: ConsumerId::new("alice"),
            cert_serial: CertSerial::new("c1"),
            content_hash: crypto::hash(&content),
            recovery: 0,
        };
        let signature = crypto::sign(engine, &record.message()).expect("signs");
        media::delivered_copy(&record, &signature, &content)
    })
}

#[test]
fn the_unmutated_container_and_copy_are_accepted() {
    // The control for the properties above: the originals do verify.
    assert!(accepted_as_signed(&container().0));
    let copy = media::parse_delivered_copy(delivered_copy()).expect("parses");
    assert!(copy.check(&publisher().public()).ok());
}
