//! Tests of `engine::media`: both container formats round trip, and every truncation,
//! flipped byte or oversized length is refused without a panic; transaction records sign
//! every field; delivered copies are checked against the record and the content.
//!
//! What does not live here: the container as the gateways publish and stream it
//! (engine/tests/media_container.rs and the gateways' tests).

use super::*;
use crate::crypto::{self, SecretKey};
use crate::ids::{CertSerial, ConsumerId, MediaId, Millis, NodeId, VoucherId};

#[test]
fn encrypt_then_open_round_trips_and_a_wrong_key_fails() {
    let key = SecretKey::random();
    let content = b"a song, for sale".repeat(100);
    let bytes = encrypt_v1(&key, &content);
    assert_eq!(open(&key, &bytes).expect("opens"), content);
    assert_eq!(parse_v1(&bytes).expect("parses").content_hash, crypto::hash(&content));
    assert_eq!(open(&SecretKey::random(), &bytes), Err(ContainerError::Decrypt));
}

#[test]
fn every_truncation_and_every_flipped_bit_is_refused_without_panic() {
    let key = SecretKey::random();
    let bytes = encrypt_v1(&key, b"short content");
    for cut in 0..bytes.len() {
        assert!(open(&key, &bytes[..cut]).is_err(), "cut at {cut}");
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1 << bit;
            assert!(open(&key, &flipped).is_err(), "bit {bit} of byte {i}");
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(parse_v1(&longer).map(|_| ()), Err(ContainerError::Trailing(1)));
    let mut huge_len = bytes.clone();
    huge_len[49..57].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse_v1(&huge_len), Err(ContainerError::TooLarge(_) | ContainerError::Truncated { .. })));
}

fn record() -> TransactionRecord {
    TransactionRecord {
        voucher_id: VoucherId::new("v1"),
        media_id: MediaId::new("md1"),
        rendition: "high".into(),
        node_id: NodeId::new("n1"),
        delivered_at: Millis(1_700_000_000_123),
        engine_key_id: crypto::test_keys::fixed_rsa().public().key_id(),
        consumer_id: ConsumerId::new("alice"),
        cert_serial: CertSerial::new("c1"),
        content_hash: crypto::hash(b"the content"),
        recovery: 0,
    }
}

/// A delivery's record is version 1 byte for byte (what copies delivered before recoveries
/// carry); a recovered copy's is version 2 with its recovery number, and round-trips.
#[test]
fn a_recovered_copys_record_is_version_2_and_names_its_recovery() {
    let delivery = transaction_message(&record());
    assert!(delivery.starts_with(b"vouchsafe transaction record v1\0"));
    let recovered = TransactionRecord { recovery: 2, ..record() };
    let message = transaction_message(&recovered);
    assert!(message.starts_with(b"vouchsafe transaction record v2\0"));
    assert_eq!(message.len(), delivery.len() + 4);
    assert_eq!(TransactionRecord::decode(&message).expect("decodes"), recovered);
    // Version 2 claiming recovery 0 would be a second spelling of a delivery: refused.
    let mut zero = message.clone();
    let at = zero.len() - 4;
    zero[at..].copy_from_slice(&0u32.to_le_bytes());
    assert!(TransactionRecord::decode(&zero).is_err());
}

#[test]
fn a_transaction_record_round_trips_and_every_field_is_signed() {
    let record = record();
    let message = transaction_message(&record);
    assert_eq!(TransactionRecord::decode(&message).expect("decodes"), record);
    let engine = crypto::test_keys::fixed_rsa();
    let signature = crypto::sign(&engine, &message).expect("signs");
    verify_transaction(&engine.public(), &record, &signature).expect("verifies");
    let changed: Vec<TransactionRecord> = vec![
        TransactionRecord { voucher_id: VoucherId::new("v2"), ..record.clone() },
        TransactionRecord { media_id: MediaId::new("md2"), ..record.clone() },
        TransactionRecord { rendition: "low".into(), ..record.clone() },
        TransactionRecord { node_id: NodeId::new("n2"), ..record.clone() },
        TransactionRecord { delivered_at: Millis(record.delivered_at.0 + 1), ..record.clone() },
        TransactionRecord { consumer_id: ConsumerId::new("bob"), ..record.clone() },
        TransactionRecord { cert_serial: CertSerial::new("c2"), ..record.clone() },
        TransactionRecord { content_hash: crypto::hash(b"other content"), ..record.clone() },
        // A recovered copy's record (version 2) is not the delivery's.
        TransactionRecord { recovery: 1, ..record.clone() },
        // Field boundaries are framed: moving a byte from one id to the next changes the message.
        TransactionRecord { voucher_id: VoucherId::new("v1m"), media_id: MediaId::new("d1"), ..record.clone() },
    ];
    for other in &changed {
        assert_ne!(transaction_message(other), message, "{other:?}");
        assert_eq!(verify_transaction(&engine.public(), other, &signature), Err(TransactionError::BadSignature), "{other:?}");
    }
    // Stamped with another key: named by its key id, and refused.
    let other_engine = crypto::test_keys::fixed_rsa_2();
    assert!(matches!(verify_transaction(&other_engine.public(), &record, &signature), Err(TransactionError::KeyId { .. })));
    let forged = TransactionRecord { engine_key_id: other_engine.public().key_id(), ..record.clone() };
    let forged_signature = crypto::sign(&other_engine, &forged.message()).expect("signs");
    assert!(verify_transaction(&engine.public(), &forged, &forged_signature).is_err(), "another engine's stamp");
}

#[test]
fn a_delivered_copy_round_trips_and_is_checked() {
    let engine = crypto::test_keys::fixed_rsa();
    let record = record();
    let signature = crypto::sign(&engine, &record.message()).expect("signs");
    let bytes = delivered_copy(&record, &signature, b"the content");
    let copy = parse_delivered_copy(&bytes).expect("parses");
    assert_eq!((copy.record.clone(), copy.signature, copy.content), (record.clone(), signature.as_slice(), b"the content".as_slice()));
    assert!(copy.check(&engine.public()).ok());
    assert_eq!(delivered_copy_header(&record, &signature, 11).len() + 11, bytes.len());

    // Altered content: the signature still verifies, the content does not match.
    let mut altered = bytes.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let check = parse_delivered_copy(&altered).expect("parses").check(&engine.public());
    assert!(check.signature.is_ok() && !check.content_ok && !check.ok());
    // Checked with another engine's key.
    assert!(!copy.check(&crypto::test_keys::fixed_rsa_2().public()).ok());
    // Every flipped byte outside the content is refused or fails the check.
    let content_at = bytes.len() - 11;
    for i in 0..content_at {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x40;
        if let Ok(copy) = parse_delivered_copy(&flipped) {
            assert!(!copy.check(&engine.public()).ok(), "byte {i}");
        }
    }
    for cut in 0..bytes.len() {
        assert!(parse_delivered_copy(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(parse_delivered_copy(&longer).map(|_| ()), Err(ContainerError::Trailing(1)));
    let mut huge = bytes.clone();
    huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(parse_delivered_copy(&huge), Err(ContainerError::Malformed(_))));
    let mut huge_content = bytes;
    huge_content[content_at - 8..content_at].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse_delivered_copy(&huge_content), Err(ContainerError::Malformed(_))));
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A small format-2 container: two renditions (the first spans several chunks, the
/// last one partial), free and encrypted components, and a preview clip.
fn encrypted_v2(media_key: &SecretKey) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    encrypted_as(media_key, FORMAT_VERSION_2)
}

fn encrypted_as(media_key: &SecretKey, version: u8) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (high, low) = (content(1, 5000), content(2, 1500));
    let media_id = MediaId::new("md1");
    let spec = ContainerSpec {
        media_id: &media_id,
        length_ms: 10_000,
        for_sale: true,
        chunk_bytes: CHUNK_BYTES_MIN,
        components: vec![
            ComponentSpec { name: "title", media_type: "text/plain; charset=utf-8", encrypted: false, data: b"Blue Vouchers" },
            ComponentSpec { name: "artist", media_type: "text/plain; charset=utf-8", encrypted: false, data: b"The Receipts" },
            ComponentSpec { name: "lyrics", media_type: "text/plain; charset=utf-8", encrypted: true, data: b"la la la" },
        ],
        renditions: vec![RenditionSpec { name: "high", bitrate_kbps: 256, content: &high }, RenditionSpec { name: "low", bitrate_kbps: 96, content: &low }],
        preview: Some(PreviewSpec { start_ms: 1000, duration_ms: 3000, fade_in_ms: 500, fade_out_ms: 500, media_type: "audio/mpeg", clip: b"free clip" }),
    };
    let encrypt = if version == FORMAT_VERSION_3 { encrypt_v3 } else { encrypt_v2 };
    (encrypt(&spec, media_key, &crypto::test_keys::fixed_rsa()).expect("builds"), high, low)
}

/// The attack this closes: a buyer of the low rendition received the key that opens the
/// high one too. In format 3 the low buyer's keys open the low rendition and the
/// encrypted components, and not one chunk of the high rendition; the control is format
/// 2, where the same purchase keys (the media key) open everything.
#[test]
fn a_low_rendition_buyer_cannot_decrypt_a_byte_of_the_high_one() {
    let media_key = SecretKey::random();
    let media_id = MediaId::new("md1");
    let (bytes, high, low) = encrypted_as(&media_key, FORMAT_VERSION_3);
    let Parsed::V2(container) = parse(&bytes).expect("parses") else { panic!("format 3 parses as the format-2 layout") };
    assert_eq!(container.format_version, FORMAT_VERSION_3);
    container.verify().expect("verifies");
    let keys = purchase_keys(FORMAT_VERSION_3, &media_key, &media_id, "low");
    assert_eq!(container.open_rendition(&keys.rendition, 1).expect("the low rendition"), low);
    let (lyrics, _) = container.component("lyrics").expect("lyrics");
    assert_eq!(container.open_component(&keys.components, lyrics).expect("the components key opens lyrics"), b"la la la");
    let high_chunks = container.renditions[0].chunk_count;
    for chunk in 0..high_chunks {
        assert_eq!(container.decrypt_chunk(&keys.rendition, 0, chunk), Err(ContainerError::Decrypt), "high chunk {chunk}");
        assert_eq!(container.decrypt_chunk(&keys.components, 0, chunk), Err(ContainerError::Decrypt), "high chunk {chunk}");
        assert_eq!(container.decrypt_chunk(&media_key, 0, chunk), Err(ContainerError::Decrypt), "the media key itself opens no part");
    }
    let high_keys = purchase_keys(FORMAT_VERSION_3, &media_key, &media_id, "high");
    assert_eq!(container.open_rendition(&high_keys.rendition, 0).expect("the high buyer's"), high);
    assert!(!keys.rendition.ct_eq(&high_keys.rendition) && !keys.rendition.ct_eq(&keys.components));

    // Control, the protection off: format 2, where a buyer of either gets the media key.
    let (bytes, high, _) = encrypted_v2(&media_key);
    let Parsed::V2(container) = parse(&bytes).expect("parses") else { panic!("format 2") };
    let keys = purchase_keys(FORMAT_VERSION_2, &media_key, &media_id, "low");
    assert_eq!(container.open_rendition(&keys.rendition, 0).expect("format 2: the low buyer opens the high rendition"), high);
}

/// A format-3 container relabelled format 2 (or back) no longer verifies: the signature
/// covers the version's label.
#[test]
fn the_format_version_is_signed() {
    let (mut bytes, _, _) = encrypted_as(&SecretKey::random(), FORMAT_VERSION_3);
    bytes[4] = FORMAT_VERSION_2;
    let Parsed::V2(container) = parse(&bytes).expect("parses") else { panic!("format 2 layout") };
    assert_eq!(container.verify().map(|_| ()), Err(ContainerError::BadSignature));
}

#[test]
fn a_format_2_container_round_trips() {
    let key = SecretKey::random();
    let (bytes, high, low) = encrypted_v2(&key);
    let Parsed::V2(container) = parse(&bytes).expect("parses") else { panic!("format 2") };
    assert_eq!(container.verify().expect("verifies").key_id(), crypto::test_keys::fixed_rsa().public().key_id());
    assert_eq!(container.media_id, MediaId::new("md1"));
    assert!(container.for_sale);
    assert_eq!(container.renditions.iter().map(|r| (r.name.as_str(), r.size_bytes, r.chunk_count)).collect::<Vec<_>>(), [("high", 5000, 5), ("low", 1500, 2)]);
    assert_eq!(container.open_rendition(&key, 0).expect("high"), high);
    assert_eq!(container.open_rendition(&key, 1).expect("low"), low);
    assert_eq!(container.free_component("title"), Some(b"Blue Vouchers".as_slice()));
    assert_eq!(container.free_component("lyrics"), None, "encrypted");
    let (lyrics, _) = container.component("lyrics").expect("lyrics");
    assert_eq!(container.open_component(&key, lyrics).expect("opens"), b"la la la");
    assert_eq!(container.open_component(&SecretKey::random(), lyrics), Err(ContainerError::Decrypt));
    assert_eq!(container.preview_clip(), Some(b"free clip".as_slice()));
    assert_eq!(container.open_rendition(&SecretKey::random(), 0), Err(ContainerError::Decrypt));
    // Into a sink: the same plaintext chunk by chunk; a sink's error stops the decryption
    // and comes back as the sink's.
    let mut streamed = Vec::new();
    let mut chunks = 0;
    let opened = container.open_rendition_into(&key, 0, |plaintext| {
        streamed.extend_from_slice(plaintext);
        chunks += 1;
        Ok::<(), &str>(())
    });
    assert_eq!(opened, Ok(Ok(5000)));
    assert_eq!((streamed, chunks), (high.clone(), 5));
    let mut calls = 0;
    let refused = container.open_rendition_into(&key, 0, |_| {
        calls += 1;
        Err("disk full")
    });
    assert_eq!((refused, calls), (Ok(Err("disk full")), 1));
    assert_eq!(container.open_rendition_into(&SecretKey::random(), 0, |_| Ok::<(), &str>(())), Err(ContainerError::Decrypt));
    // Chunks cannot be swapped between positions or renditions.
    let (first, _) = container.chunk_range(0, 0).expect("chunk 0");
    let (second, len) = container.chunk_range(0, 1).expect("chunk 1");
    let encrypted_second = &bytes[second as usize..(second + len) as usize];
    assert!(container.open_chunk(&key, 0, 1, encrypted_second).is_ok());
    assert_eq!(container.open_chunk(&key, 0, 0, encrypted_second), Err(ContainerError::Decrypt));
    assert_eq!(container.open_chunk(&key, 1, 1, encrypted_second), Err(ContainerError::Decrypt));
    assert!(first < second);
}

#[test]
fn seeking_decrypts_from_any_chunk_the_same_bytes_as_a_full_decryption() {
    let key = SecretKey::random();
    let (bytes, high, _) = encrypted_v2(&key);
    let Parsed::V2(container) = parse(&bytes).expect("parses") else { panic!("format 2") };
    let full = container.open_rendition(&key, 0).expect("full");
    assert_eq!(full, high);
    let entry = &container.renditions[0];
    for start in 0..entry.chunk_count {
        let mut tail = Vec::new();
        for chunk in start..entry.chunk_count {
            // From the node's byte range, as a player streaming from an offset gets it.
            let (offset, len) = container.chunk_range(0, chunk).expect("range");
            tail.extend_from_slice(&container.open_chunk(&key, 0, chunk, &bytes[offset as usize..(offset + len) as usize]).expect("chunk"));
        }
        let plain_offset = entry.index_entries[start as usize].plain_offset as usize;
        assert_eq!(tail, full[plain_offset..], "from chunk {start}");
    }
    // The index maps play time to chunks: 5000 bytes over 10 s, 1024-byte chunks.
    assert_eq!(container.chunk_at(0, 0), Some(0));
    assert_eq!(container.chunk_at(0, 2047), Some(0));
    assert_eq!(container.chunk_at(0, 2048), Some(1));
    assert_eq!(container.chunk_at(0, 9_999), Some(4));
}

#[test]
fn every_flipped_byte_and_truncation_of_a_format_2_container_is_refused() {
    let key = SecretKey::random();
    let (bytes, _, _) = encrypted_v2(&key);
    for cut in 0..bytes.len() {
        assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x01;
        let accepted = match parse(&flipped) {
            Ok(Parsed::V2(container)) => container.verify().is_ok(),
            Ok(Parsed::V1(_)) | Err(_) => false,
        };
        assert!(!accepted, "a flipped bit at byte {i} was accepted as signed");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(parse(&longer), Err(ContainerError::Trailing(1))));
    // Oversized lengths are clean errors: the signature and toc lengths in the header.
    let mut huge = bytes.clone();
    huge[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(matches!(parse(&huge), Err(ContainerError::Malformed(_))));
    let mut huge = bytes;
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(parse(&huge), Err(ContainerError::Malformed(_))));
}

#[test]
fn a_container_re_signed_by_another_key_names_that_key() {
    let key = SecretKey::random();
    let media_id = MediaId::new("md1");
    let spec = ContainerSpec {
        media_id: &media_id,
        length_ms: 0,
        for_sale: false,
        chunk_bytes: CHUNK_BYTES_DEFAULT,
        components: Vec::new(),
        renditions: vec![RenditionSpec { name: "high", bitrate_kbps: 256, content: b"x" }],
        preview: None,
    };
    let other = crypto::test_keys::fixed_rsa_2();
    let bytes = encrypt_v2(&spec, &key, &other).expect("builds");
    let Parsed::V2(container) = parse(&bytes).expect("parses") else { panic!("format 2") };
    assert_eq!(container.verify().expect("self-consistent").key_id(), other.public().key_id());
    assert_ne!(container.verify().expect("verifies").key_id(), crypto::test_keys::fixed_rsa().public().key_id());
    // Bad specs are refused before anything is encrypted.
    let bad = ContainerSpec { chunk_bytes: 10, ..spec.clone() };
    assert!(matches!(encrypt_v2(&bad, &key, &other), Err(ContainerError::Malformed(_))));
    let bad = ContainerSpec { renditions: Vec::new(), ..spec.clone() };
    assert!(encrypt_v2(&bad, &key, &other).is_err());
    let bad = ContainerSpec {
        preview: Some(PreviewSpec { start_ms: 0, duration_ms: 1, fade_in_ms: 0, fade_out_ms: 0, media_type: "audio/mpeg", clip: b"" }),
        ..spec
    };
    assert!(encrypt_v2(&bad, &key, &other).is_err(), "a preview past the media's end");
}
