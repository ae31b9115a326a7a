//! Unit tests of the node agent.

use super::service::*;
use super::state::*;
use super::*;
use crate::common::transfer::Reassembly;
use engine::crypto;
use proto::v1::{AccessGrant, Assignment, MediaChunk, MediaPart};
use tokio::sync::mpsc;

const NODE: &str = "n1";
const NOW_MS: i64 = 1_000_000;

fn grant(key: &SecretKey, node_id: &str, expires_at_ms: i64) -> AccessGrant {
    let media_ids = vec!["md1".to_string(), "md2".to_string()];
    let refs: Vec<&str> = media_ids.iter().map(String::as_str).collect();
    let access_token = crypto::access_token(key, node_id, "v1", &refs, expires_at_ms).to_vec();
    AccessGrant { voucher_id: "v1".into(), media_ids, access_expires_at_ms: expires_at_ms, access_token, token_key_id: 0 }
}

#[test]
fn a_valid_grant_passes_and_every_altered_or_expired_one_is_permission_denied() {
    let key = SecretKey::random();
    let valid = grant(&key, NODE, NOW_MS + 60_000);
    check_grant(&key, NODE, &valid, NOW_MS).expect("a fresh grant for this node passes");
    check_grant(&key, NODE, &valid, NOW_MS + 60_000).expect("valid up to and including its expiry");

    let expired = check_grant(&key, NODE, &valid, NOW_MS + 60_001).expect_err("expired");
    assert_eq!(expired.code(), tonic::Code::PermissionDenied);
    assert!(expired.message().contains("ask the merchant for a new access token"), "{}", expired.message());

    let mut alterations: Vec<(&str, AccessGrant)> = Vec::new();
    let mut other_voucher = valid.clone();
    other_voucher.voucher_id = "v2".into();
    alterations.push(("voucher", other_voucher));
    let mut fewer_media = valid.clone();
    fewer_media.media_ids.pop();
    alterations.push(("media", fewer_media));
    let mut later = valid.clone();
    later.access_expires_at_ms += 1;
    alterations.push(("expiry", later));
    let mut flipped = valid.clone();
    flipped.access_token[0] ^= 1;
    alterations.push(("token", flipped));
    let mut short = valid.clone();
    short.access_token.truncate(31);
    alterations.push(("short token", short));
    for (what, altered) in alterations {
        let status = check_grant(&key, NODE, &altered, NOW_MS).expect_err(what);
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{what}");
        assert!(!status.message().contains(&hex::encode(&valid.access_token)), "never echoes the token");
    }
    let other_node = check_grant(&key, "n2", &valid, NOW_MS).expect_err("minted for n1");
    assert_eq!(other_node.code(), tonic::Code::PermissionDenied);
    let other_key = check_grant(&SecretKey::random(), NODE, &valid, NOW_MS).expect_err("another node's key");
    assert_eq!(other_key.code(), tonic::Code::PermissionDenied);
    assert_eq!(require_grant(None).expect_err("missing").code(), tonic::Code::InvalidArgument);
    assert!(require_media_in_grant(&valid, "md2").is_ok());
    assert_eq!(require_media_in_grant(&valid, "md3").expect_err("not granted").code(), tonic::Code::PermissionDenied);
}

#[test]
fn challenges_are_single_use_fresh_bounded_and_per_voucher() {
    let mut challenges = Challenges::new(NonZeroUsize::new(2).expect("two"));
    let first = challenges.issue("v1", NOW_MS);
    assert!(challenges.take("v1", &first, NOW_MS + 10), "the issued challenge is accepted");
    assert!(!challenges.take("v1", &first, NOW_MS + 10), "but only once");

    let issued = challenges.issue("v1", NOW_MS);
    assert!(!challenges.take("v2", &issued, NOW_MS), "bound to its voucher");
    assert!(challenges.take("v1", &issued, NOW_MS));

    let issued = challenges.issue("v1", NOW_MS);
    let mut wrong = issued;
    wrong[0] ^= 1;
    assert!(!challenges.take("v1", &wrong, NOW_MS), "a wrong answer is refused");
    assert!(!challenges.take("v1", &issued, NOW_MS), "and burns the challenge");

    let stale = challenges.issue("v1", NOW_MS);
    assert!(!challenges.take("v1", &stale, NOW_MS + CHALLENGE_TTL_MS + 1), "expired");
    let edge = challenges.issue("v1", NOW_MS);
    assert!(challenges.take("v1", &edge, NOW_MS + CHALLENGE_TTL_MS), "fresh up to the TTL");

    let replaced = challenges.issue("v1", NOW_MS);
    let newer = challenges.issue("v1", NOW_MS);
    assert_ne!(replaced, newer, "random");
    assert!(!challenges.take("v1", &replaced, NOW_MS), "a new challenge replaces the old one");

    let a = challenges.issue("a", NOW_MS);
    let b = challenges.issue("b", NOW_MS);
    let c = challenges.issue("c", NOW_MS);
    assert_eq!(challenges.len(), 2, "bounded");
    assert!(!challenges.take("a", &a, NOW_MS), "the oldest is forgotten");
    assert!(challenges.take("b", &b, NOW_MS));
    assert!(challenges.take("c", &c, NOW_MS));
    assert!(challenges.is_empty());
}

fn part(size: usize, fill: u8) -> CachedPart {
    let bytes = vec![fill; size];
    CachedPart { hash: crypto::hash(&bytes), bytes: bytes::Bytes::from(bytes) }
}

fn key(media_id: &str) -> PartKey {
    PartKey { media_id: media_id.into(), part: MediaPart::Container }
}

#[test]
fn the_media_cache_is_bounded_by_bytes_evicts_least_recent_and_counts() {
    let mut cache = MediaCache::new(100);
    assert!(cache.get(&key("a")).is_none());
    cache.insert(key("a"), part(40, 1));
    cache.insert(key("b"), part(40, 2));
    assert_eq!((cache.items(), cache.bytes()), (2, 80));
    assert_eq!(cache.get(&key("a")).expect("a is cached").bytes[0], 1, "a is now most recent");
    cache.insert(key("c"), part(40, 3));
    assert!(cache.bytes() <= 100, "never over the bound");
    assert!(cache.get(&key("b")).is_none(), "b, least recently used, was evicted");
    assert!(cache.get(&key("a")).is_some());
    assert!(cache.get(&key("c")).is_some());
    assert_eq!((cache.accesses(), cache.misses()), (5, 2));

    cache.insert(key("huge"), part(101, 4));
    assert!(cache.get(&key("huge")).is_none(), "a part over the whole bound is not kept");
    assert_eq!(cache.items(), 2);

    cache.insert(key("a"), part(10, 5));
    assert_eq!(cache.bytes(), 50, "a replaced entry's bytes are given back");
    let clip = PartKey { media_id: "a".into(), part: MediaPart::PreviewClip };
    assert!(cache.get(&clip).is_none(), "parts of one media are separate entries");
    assert!(cache.get_uncounted(&key("a")).is_some());
    assert_eq!((cache.accesses(), cache.misses()), (7, 4), "uncounted look-ups are not counted");
}

fn assignment(seq: u64, voucher_id: &str, preview_id: &str) -> Assignment {
    Assignment {
        seq,
        voucher_id: voucher_id.into(),
        media_ids: vec!["md1".into()],
        rendition: "high".into(),
        access_expires_at_ms: NOW_MS,
        preview_id: preview_id.into(),
    }
}

#[test]
fn assignments_skip_redeliveries_and_stay_bounded() {
    let two = NonZeroUsize::new(2).expect("two");
    let mut assignments = Assignments::new(two, two, 10);
    assert!(!assignments.apply(&assignment(10, "v0", "")), "at or before the checkpoint: already handled");
    assert!(assignments.apply(&assignment(11, "v1", "")));
    assert!(assignments.apply(&assignment(12, "", "p1")));
    assert!(!assignments.apply(&assignment(12, "v9", "")), "a redelivery");
    assert_eq!((assignments.seen(), assignments.last_seq()), (2, 12));
    assert_eq!(assignments.voucher("v1").expect("assigned").media_ids, vec!["md1".to_string()]);
    assert_eq!(assignments.preview_media("p1").map(String::as_str), Some("md1"));
    assert!(assignments.voucher("v9").is_none());
    assert!(assignments.apply(&assignment(13, "v2", "")));
    assert!(assignments.apply(&assignment(14, "v3", "")));
    assert!(assignments.voucher("v1").is_none(), "bounded: the oldest voucher is forgotten");
    assert!(assignments.voucher("v3").is_some());
}

#[test]
fn the_checkpoint_round_trips_replaces_atomically_and_refuses_garbage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = checkpoint_path(dir.path(), NODE);
    assert_eq!(path.file_name().and_then(|name| name.to_str()), Some("node-n1.seq"));
    assert_eq!(read_checkpoint(&path).expect("missing is zero"), 0);
    write_checkpoint(&path, 42).expect("written");
    assert_eq!(read_checkpoint(&path).expect("reads"), 42);
    write_checkpoint(&path, u64::MAX).expect("rewritten");
    assert_eq!(read_checkpoint(&path).expect("reads"), u64::MAX);
    assert!(!path.with_extension("seq.tmp").exists(), "no temporary file is left behind");
    std::fs::write(&path, "not a number").expect("write");
    let error = read_checkpoint(&path).expect_err("garbage");
    assert!(format!("{error:#}").contains("delete it"), "{error:#}");
}

#[tokio::test]
async fn chunks_are_sent_from_the_offset_and_reassemble() {
    let bytes: Vec<u8> = (0..(CHUNK_BYTES * 2 + 10)).map(|i| (i % 251) as u8).collect();
    for offset in [0, 1, CHUNK_BYTES, bytes.len()] {
        let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        let source = bytes::Bytes::from(bytes.clone());
        let sending = tokio::spawn(async move { send_chunks(&sender, &source, offset, SEND_IDLE_MS).await });
        let mut reassembly = Reassembly::new(bytes.len());
        // Resume as a player would: the bytes before `offset` were received earlier.
        if offset > 0 {
            reassembly.push(chunk(0, &bytes[..offset], bytes.len() as u64)).expect("earlier part");
        }
        while let Some(item) = receiver.recv().await {
            let item = item.expect("no error");
            assert!(item.data.len() <= CHUNK_BYTES);
            reassembly.push(item).expect("contiguous");
        }
        assert_eq!(sending.await.expect("sender"), bytes.len() - offset);
        assert_eq!(reassembly.finish().expect("complete"), bytes, "offset {offset}");
    }
}

#[test]
fn derived_request_ids_are_deterministic_distinct_and_valid() {
    let voucher = format!("v{}", "a".repeat(32));
    let media = format!("md{}", "b".repeat(32));
    let id = derived_request_id("deliver", &[&voucher, &media]);
    assert_eq!(id, derived_request_id("deliver", &[&voucher, &media]));
    assert_ne!(id, derived_request_id("deliver", &[&voucher, "md2"]));
    assert_ne!(derived_request_id("x", &["ab", "c"]), derived_request_id("x", &["a", "bc"]), "framed");
    assert!(engine::ids::is_valid_token(&id), "{id}");
    assert!(id.starts_with("deliver-"));
}

#[test]
fn an_unspecified_listen_address_is_advertised_as_loopback() {
    assert_eq!(advertised_endpoint("127.0.0.1:7000".parse().expect("addr"), false), "http://127.0.0.1:7000");
    assert_eq!(advertised_endpoint("0.0.0.0:7001".parse().expect("addr"), false), "http://127.0.0.1:7001");
    assert_eq!(advertised_endpoint("[::]:7002".parse().expect("addr"), false), "http://[::1]:7002");
    // A node serving TLS announces https, which the engine hands players in each sale.
    assert_eq!(advertised_endpoint("127.0.0.1:7003".parse().expect("addr"), true), "https://127.0.0.1:7003");
}

fn chunk(offset: u64, data: &[u8], total_bytes: u64) -> MediaChunk {
    MediaChunk { offset, data: bytes::Bytes::copy_from_slice(data), total_bytes }
}
