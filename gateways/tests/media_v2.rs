//! Media container format 2 end to end over gRPC: a publisher signs a two-rendition
//! container with descriptive data (one part encrypted) and a preview clip; the engine
//! checks it at PublishMedia (signature, media-id binding, agreement with the request) and
//! refuses, writing nothing, a container that was altered, signed for another media, or
//! that disagrees with the request; a node streams it opaquely, also from any offset; a
//! player buys the "low" rendition, decrypts it chunk by chunk and keeps a delivered copy
//! whose transaction record names that rendition; `inspect` shows the container's structure.

use engine::crypto::{self, RsaPrivate, SecretKey};
use engine::ids::{ConsumerId, MediaId, RequestId};
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use engine::media::{self, Parsed};
use gateways::common::client::{self, ComponentUpload, ContainerUpload, PreviewUpload, RenditionUpload};
use gateways::common::cred::Credential;
use gateways::node::{self, NodeArgs};
use gateways::player::{self, Purchase};
use gateways::server::{self, EngineConfig};
use proto::v1 as pb;
use std::sync::Arc;
use tonic::Code;

fn content(seed: u32, size_bytes: usize) -> Vec<u8> {
    (0..size_bytes as u32).map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8).collect()
}

fn publisher_key() -> RsaPrivate {
    RsaPrivate::from_pkcs8_pem(include_str!("../../engine/testdata/rsa-2048-b.pem")).expect("test key b")
}

fn upload(title: &str, high: &[u8], low: &[u8]) -> ContainerUpload {
    ContainerUpload {
        title: title.into(),
        artist: "The Receipts".into(),
        authors: vec!["A. Writer".into(), "B. Composer".into()],
        length_ms: 200_000,
        price_minor: 150,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        renditions: vec![
            RenditionUpload { name: "high".into(), bitrate_kbps: 256, content: high.to_vec() },
            RenditionUpload { name: "low".into(), bitrate_kbps: 96, content: low.to_vec() },
        ],
        components: vec![
            ComponentUpload { name: "lyrics".into(), media_type: "text/plain; charset=utf-8".into(), encrypted: true, data: b"only buyers read this".to_vec() },
            ComponentUpload { name: "cover".into(), media_type: "image/png".into(), encrypted: false, data: vec![0x89, b'P', b'N', b'G', 1, 2, 3] },
        ],
        preview: Some(PreviewUpload {
            start_ms: 10_000,
            duration_ms: 20_000,
            fade_in_ms: 1_000,
            fade_out_ms: 2_000,
            media_type: "audio/mpeg".into(),
            clip: low[..4096].to_vec(),
        }),
        for_sale: true,
        image_descriptor: "cover.png".into(),
        chunk_bytes: 16 * 1024,
    }
}

/// A PublishMedia request for `container`, as `publish_container` would send it.
fn request_for(request_id: &str, container: Vec<u8>, wrapped_media_key: Vec<u8>, upload: &ContainerUpload) -> pb::PublishMediaRequest {
    let preview = upload.preview.as_ref().expect("preview");
    pb::PublishMediaRequest {
        request_id: request_id.into(),
        title: upload.title.clone(),
        artist: upload.artist.clone(),
        authors: upload.authors.clone(),
        length_ms: upload.length_ms,
        price_minor: upload.price_minor,
        currency: upload.currency.clone(),
        terms: Some(upload.terms.clone()),
        container,
        wrapped_media_key,
        for_sale: upload.for_sale,
        renditions: upload
            .renditions
            .iter()
            .map(|r| pb::RenditionInput {
                name: r.name.clone(),
                bitrate_kbps: r.bitrate_kbps,
                content_hash: crypto::hash(&r.content).to_vec(),
                size_bytes: r.content.len() as u64,
            })
            .collect(),
        preview: Some(pb::PreviewClipInput { start_ms: preview.start_ms, duration_ms: preview.duration_ms }),
        image_descriptor: String::new(),
        preview_clip: preview.clip.clone(),
    }
}

/// A signed container for `media_id`, built from `upload` (title/artist components as
/// `publish_container` writes them), and the media key wrapped for the engine.
fn container_for(media_id: &MediaId, upload: &ContainerUpload, engine_public: &crypto::RsaPublic) -> (Vec<u8>, Vec<u8>) {
    let (container, wrapped, _) = seal_with_key(media_id, upload, engine_public);
    (container, wrapped)
}

/// [`seal`], also returning the media key (a test plays the player that unwrapped it).
fn seal_with_key(media_id: &MediaId, upload: &ContainerUpload, engine_public: &crypto::RsaPublic) -> (Vec<u8>, Vec<u8>, SecretKey) {
    let key = SecretKey::random();
    let preview = upload.preview.as_ref().expect("preview");
    let spec = media::ContainerSpec {
        media_id,
        length_ms: upload.length_ms,
        for_sale: upload.for_sale,
        chunk_bytes: upload.chunk_bytes,
        components: vec![
            media::ComponentSpec { name: "title", media_type: "text/plain; charset=utf-8", encrypted: false, data: upload.title.as_bytes() },
            media::ComponentSpec { name: "artist", media_type: "text/plain; charset=utf-8", encrypted: false, data: upload.artist.as_bytes() },
        ],
        renditions: upload.renditions.iter().map(|r| media::RenditionSpec { name: &r.name, bitrate_kbps: r.bitrate_kbps, content: &r.content }).collect(),
        preview: Some(media::PreviewSpec {
            start_ms: preview.start_ms,
            duration_ms: preview.duration_ms,
            fade_in_ms: preview.fade_in_ms,
            fade_out_ms: preview.fade_out_ms,
            media_type: &preview.media_type,
            clip: &preview.clip,
        }),
    };
    let container = media::encrypt_v2(&spec, &key, &publisher_key()).expect("builds");
    let wrapped = crypto::wrap_key(engine_public, &key).expect("wraps");
    (container, wrapped, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_multi_rendition_container_is_checked_published_streamed_and_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let engine = server::start(EngineConfig::new(dir.path().to_path_buf(), keys.clone()), Arc::clone(&log), listener).await.expect("engine starts");
    let channel = client::connect(&engine.url(), None).await.expect("connect");
    let operator = Credential::load(&keys.join("operator.cred")).expect("operator credential");
    let engine_public = gateways::common::keys::load_engine_public(&keys).expect("public key");
    let mut catalog = client::catalog(channel.clone(), operator.clone());

    // Refusals first: each is InvalidArgument and writes nothing.
    let (high, low) = (content(1, 100_000), content(2, 40_000));
    let song = upload("Blue Vouchers", &high, &low);
    let head = log.last_seq().await.expect("head");
    let refuse = |request: pb::PublishMediaRequest| {
        let mut catalog = catalog.clone();
        async move { catalog.publish_media(request).await.expect_err("refused") }
    };
    let own_id = |request_id: &str| engine::ids::media_id_for(&operator.id, &RequestId::new(request_id));
    // Signed for another media id (another request id).
    let (container, wrapped) = container_for(&own_id("other-request"), &song, &engine_public);
    let refused = refuse(request_for("pub-1", container, wrapped, &song)).await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("signed for media"), "{}", refused.message());
    // A flipped byte in a signed part (the free cover or the title; here: the last byte).
    let (mut container, wrapped) = container_for(&own_id("pub-1"), &song, &engine_public);
    let last = container.len() - 1;
    container[last] ^= 1;
    let refused = refuse(request_for("pub-1", container, wrapped, &song)).await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // A request that disagrees with the signed container (another title, another clip).
    let (container, wrapped) = container_for(&own_id("pub-1"), &song, &engine_public);
    let refused = refuse(pb::PublishMediaRequest { title: "Another Title".into(), ..request_for("pub-1", container.clone(), wrapped.clone(), &song) }).await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let refused =
        refuse(pb::PublishMediaRequest { preview_clip: b"another clip".to_vec(), ..request_for("pub-1", container.clone(), wrapped.clone(), &song) }).await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let mut renamed = request_for("pub-1", container, wrapped, &song);
    renamed.renditions[1].name = "medium".into();
    assert_eq!(refuse(renamed).await.code(), Code::InvalidArgument);
    assert_eq!(log.last_seq().await.expect("head"), head, "refused publications write nothing");
    assert!(engine.state.media.get(&own_id("pub-1").0, engine::media_store::Part::Container).await.expect("store").is_none(), "nor store bytes");

    // The real publication.
    let published = client::publish_container(&mut catalog, &operator.id, "pub-1", &engine_public, &publisher_key(), song.clone()).await.expect("publish");
    assert_eq!(published.format_version, 3, "new publications have a key per rendition");
    assert_eq!(published.media_id, own_id("pub-1").0);
    assert_eq!(published.content_hash, crypto::hash(&high));
    let stored = engine.state.media.get(&published.media_id, engine::media_store::Part::Container).await.expect("store").expect("stored");
    let report = gateways::cli::inspect::inspect_bytes(&stored, None, Some(&publisher_key().public()));
    assert_eq!(
        (report.kind, report.format_version, report.signature_ok, report.publisher_key_ok),
        (Some("container"), Some(3), Some(true), Some(true)),
        "{report:?}"
    );
    assert_eq!(report.media_id.as_deref(), Some(published.media_id.as_str()));
    assert_eq!(
        report.renditions.iter().map(|r| (r.name.as_str(), r.size_bytes, r.chunks)).collect::<Vec<_>>(),
        [("high", Some(100_000), Some(7)), ("low", Some(40_000), Some(3))]
    );
    assert_eq!((report.title.as_deref(), report.for_sale, report.transaction.is_none()), (Some("Blue Vouchers"), Some(true), true));
    let lyrics = report.components.iter().find(|c| c.name == "lyrics").expect("lyrics");
    assert!(lyrics.encrypted && lyrics.text.is_none(), "{lyrics:?}");
    assert_eq!(report.components.iter().find(|c| c.name == "authors").and_then(|c| c.text.as_deref()), Some("A. Writer\nB. Composer"));
    let preview = report.preview.as_ref().expect("preview");
    assert_eq!((preview.start_ms, preview.duration_ms, preview.fade_in_ms, preview.fade_out_ms, preview.clip_bytes), (10_000, 20_000, 1_000, 2_000, 4096));
    // Pinned to another publisher key, the same container fails.
    let other = RsaPrivate::from_pkcs8_pem(include_str!("../../engine/testdata/rsa-2048-a.pem")).expect("key a");
    assert!(!gateways::cli::inspect::inspect_bytes(&stored, None, Some(&other.public())).ok());

    // A node, a player and a sale of the low rendition.
    let merchant_cred = client::credential_of(
        catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect("merchant").into_inner(),
    )
    .expect("cred");
    let mut merchant = client::merchant(channel.clone(), merchant_cred);
    let node_cred = client::credential_of(
        catalog
            .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "n-1".into(), region: "eu".into(), slots_max: 4 })
            .await
            .expect("node")
            .into_inner(),
    )
    .expect("cred");
    let node = node::start(NodeArgs {
        connect: engine.url(),
        cred: node_cred,
        listen: "127.0.0.1:0".parse().expect("loopback"),
        slots_max: 4,
        region: "eu".into(),
        data_dir: dir.path().join("node"),
        cache_bytes_max: 16 * 1024 * 1024,
        engine_tls: Default::default(),
        player_tls: None,
    })
    .await
    .expect("node starts");
    let alice = ConsumerId::new("alice");
    let passport = player::create_passport(&mut catalog, "cert-alice", &alice, &engine_public).await.expect("passport");

    // The free preview plays the container's clip.
    let previewed = merchant
        .preview(pb::PreviewRequest { request_id: "preview-1".into(), media_id: published.media_id.clone(), region: String::new() })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(player::play_preview(&previewed.node_endpoint, &previewed.preview_id).await.expect("plays"), low[..4096]);

    // A second media published from a container built here, so the test knows its media
    // key and can play the player that unwrapped it.
    let second = upload("Track Two", &content(3, 50_000), &content(4, 30_000));
    let (container_two, wrapped_two, key_two) = seal_with_key(&own_id("pub-2"), &second, &engine_public);
    let second_id = catalog.publish_media(request_for("pub-2", container_two.clone(), wrapped_two, &second)).await.expect("publish").into_inner().media_id;
    let album = [published.media_id.clone(), second_id.clone()];
    let sale = client::buy_rendition(&mut merchant, "sale-1", &album, "low", None).await.expect("buy");
    let purchase = Purchase {
        node_endpoint: sale.node_endpoint.clone(),
        node_id: sale.node_id.clone(),
        grant: sale.grant(),
        receipt: sale.receipt.clone(),
        rental_until_ms: 0,
    };

    // The node streams the container opaquely, from any offset: the low rendition's chunks
    // fetched from the offset of each chunk decrypt, one by one, to the same bytes as the
    // matching range of a full decryption.
    let Parsed::V2(container) = media::parse(&container_two).expect("parses") else { panic!("format 2") };
    let (low_index, low_entry) = container.rendition("low").expect("low");
    let full = container.open_rendition(&key_two, low_index).expect("full decryption");
    let mut at_node = player::connect_node(node.endpoint()).await.expect("connect");
    for start in 0..low_entry.chunk_count {
        let (offset, _) = container.chunk_range(low_index, start).expect("chunk");
        let mut stream =
            at_node.download(pb::DownloadRequest { grant: Some(sale.grant()), media_id: second_id.clone(), offset }).await.expect("download").into_inner();
        let mut tail = Vec::new();
        while let Some(chunk) = stream.message().await.expect("stream") {
            tail.extend_from_slice(&chunk.data);
        }
        assert_eq!(tail, container_two[offset as usize..], "the node streams from the offset asked for");
        let mut played = Vec::new();
        for chunk in start..low_entry.chunk_count {
            let (at, len) = container.chunk_range(low_index, chunk).expect("chunk");
            let sealed = &tail[(at - offset) as usize..(at - offset + len) as usize];
            played.extend_from_slice(&container.open_chunk(&key_two, low_index, chunk, sealed).expect("authenticated chunk"));
        }
        let from = low_entry.index_entries[start as usize].plain_offset as usize;
        assert_eq!(played, full[from..], "from chunk {start}");
    }

    let out = dir.path().join("copies");
    let copies = player::redeem_and_download(&purchase, &passport, "redeem-1", &out).await.expect("delivered");
    assert_eq!(copies.len(), 2);
    assert!(copies.iter().all(|copy| copy.decrypt_ok) && copies[1].voucher_delivered, "{copies:?}");
    assert_eq!(copies[0].content_hash, crypto::hash(&low));
    let written = std::fs::read(&copies[0].path).expect("written");
    let copy = media::parse_delivered_copy(&written).expect("a delivered copy");
    assert_eq!(copy.content, low.as_slice());
    assert_eq!(
        (copy.record.rendition.as_str(), copy.record.media_id.as_str(), copy.record.voucher_id.as_str()),
        ("low", published.media_id.as_str(), sale.voucher_id.as_str())
    );
    assert!(copy.check(&engine_public).ok());
    let report = gateways::cli::inspect::inspect_bytes(&written, Some(&engine_public), None);
    assert!(report.ok() && report.signature_ok == Some(true), "{report:?}");
    let second_copy =
        media::parse_delivered_copy(&std::fs::read(&copies[1].path).expect("written")).map(|copy| copy.content.to_vec()).expect("a delivered copy");
    assert_eq!(second_copy, full, "the second track's low rendition");

    // The first media is format 3: a buyer of its low rendition gets keys that open the low
    // rendition and the lyrics and not one chunk of the high rendition (the attack: one key
    // opened every rendition); control, a buyer of the high rendition opens it.
    let Parsed::V2(sealed) = media::parse(&stored).expect("parses") else { panic!("format 3 container") };
    assert_eq!(sealed.format_version, media::FORMAT_VERSION_3);
    let (high_index, high_entry) = sealed.rendition("high").expect("high");
    let (low_index, _) = sealed.rendition("low").expect("low");
    let (lyrics, _) = sealed.component("lyrics").expect("lyrics");
    for (rendition, request) in [("low", "sale-low"), ("high", "sale-high")] {
        let sale = client::buy_rendition(&mut merchant, request, std::slice::from_ref(&published.media_id), rendition, None).await.expect("buy");
        let challenge = at_node.challenge(pb::ChallengeRequest { grant: Some(sale.grant()) }).await.expect("challenge").into_inner().challenge;
        let receipt = SecretKey::from_bytes(sale.receipt.as_slice().try_into().expect("32-byte receipt"));
        let subject = crypto::ProofConsumer::new("alice", &passport.certificate.cert_serial, &passport.certificate.public_key_der);
        let redeem = pb::PlayerRedeemRequest {
            grant: Some(sale.grant()),
            request_id: format!("{request}-redeem"),
            consumer_id: "alice".into(),
            cert_serial: passport.certificate.cert_serial.clone(),
            proof: crypto::receipt_proof(&receipt, &sale.voucher_id, &sale.node_id, &challenge, &subject).to_vec(),
            challenge,
            recover: false,
        };
        let answer = at_node.redeem(redeem).await.expect("redeemed").into_inner();
        let keys = crypto::unwrap_keys(&passport.private, &answer.keys[0].wrapped_key, 2).expect("the rendition and components keys");
        assert!(crypto::unwrap_key(&passport.private, &answer.keys[0].wrapped_key).is_err(), "not the media key");
        assert_eq!(sealed.open_component(&keys[1], lyrics).expect("lyrics"), b"only buyers read this");
        if rendition == "low" {
            assert_eq!(sealed.open_rendition(&keys[0], low_index).expect("the low rendition"), low);
            for chunk in 0..high_entry.chunk_count {
                for key in &keys {
                    assert!(sealed.decrypt_chunk(key, high_index, chunk).is_err(), "a low buyer's key opened high chunk {chunk}");
                }
            }
        } else {
            assert_eq!(sealed.open_rendition(&keys[0], high_index).expect("control: the high buyer's"), high);
            assert!(sealed.decrypt_chunk(&keys[0], low_index, 0).is_err(), "and not the low one");
        }
    }

    node.shutdown().await;
    engine.shutdown().await.expect("graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_command_builds_a_signed_container_from_files_and_inspect_shows_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    let keys = root.join("keys");
    gateways::common::keys::init(&keys).expect("keys init");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(&root.join("log")).expect("embedded log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let engine = server::start(EngineConfig::new(root.join("engine"), keys.clone()), Arc::clone(&log), listener).await.expect("engine starts");
    let (high, low) = (content(5, 70_000), content(6, 20_000));
    for (name, bytes) in [
        ("song.flac", &high[..]),
        ("song-96k.mp3", &low[..]),
        ("lyrics.txt", b"la la la"),
        ("notes.txt", b"recorded live"),
        ("cover.png", &[0x89, b'P', b'N', b'G']),
    ] {
        std::fs::write(root.join(name), bytes).expect("write input");
    }
    let url = engine.url();
    let run = |args: Vec<String>| {
        let root = root.clone();
        tokio::task::spawn_blocking(move || {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_vouchsafe")).args(&args).current_dir(&root).output().expect("run vouchsafe");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let value: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or(serde_json::Value::Null);
            (output.status.code().unwrap_or(-1), value, String::from_utf8_lossy(&output.stderr).into_owned())
        })
    };
    let publish: Vec<String> = [
        "publish",
        "--connect",
        &url,
        "--cred",
        "keys/operator.cred",
        "--engine-key",
        "keys/engine.pub.pem",
        "--data-dir",
        "publisher-data",
        "--rendition",
        "high=song.flac",
        "--rendition",
        "low:96=song-96k.mp3",
        "--title",
        "Live Song",
        "--artist",
        "The Band",
        "--lyrics",
        "lyrics.txt",
        "--encrypt",
        "lyrics",
        "--liner-notes",
        "notes.txt",
        "--cover",
        "cover.png",
        "--length-ms",
        "60000",
        "--preview-start-ms",
        "6000",
        "--preview-ms",
        "12000",
        "--fade-in-ms",
        "500",
        "--fade-out-ms",
        "1500",
        "--not-for-sale",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    let (code, published, stderr) = run(publish.clone()).await.expect("publish ran");
    assert_eq!(code, 0, "{published} {stderr}");
    let media = &published["media"][0];
    assert_eq!((media["format_version"].as_u64(), media["for_sale"].as_bool()), (Some(3), Some(false)), "{published}");
    assert!(
        root.join("publisher-data/publisher/publisher.pem").is_file() && root.join("publisher-data/publisher/publisher.pub.pem").is_file(),
        "the default publisher key is kept"
    );
    let media_id = media["media_id"].as_str().expect("media id").to_string();
    // Publishing the same files again is answered from the first publication.
    let (code, again, stderr) = run(publish).await.expect("publish ran");
    assert_eq!((code, again["media"][0]["media_id"].as_str()), (0, Some(media_id.as_str())), "{stderr}");

    let stored = engine.state.media.get(&media_id, engine::media_store::Part::Container).await.expect("store").expect("stored");
    std::fs::write(root.join("published.vsmc"), &stored).expect("write");
    let inspect = ["inspect", "published.vsmc", "--publisher-key", "publisher-data/publisher/publisher.pub.pem", "--json"].map(String::from).to_vec();
    let (code, report, stderr) = run(inspect.clone()).await.expect("inspect ran");
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(
        (report["format_version"].as_u64(), report["signature_ok"].as_bool(), report["publisher_key_ok"].as_bool()),
        (Some(3), Some(true), Some(true)),
        "{report}"
    );
    assert_eq!(report["media_id"], media_id.as_str());
    assert_eq!(report["transaction"], serde_json::Value::Null);
    assert_eq!(
        report["renditions"].as_array().map(|r| r.iter().map(|r| (r["name"].as_str(), r["bitrate_kbps"].as_u64())).collect::<Vec<_>>()),
        Some(vec![(Some("high"), Some(256)), (Some("low"), Some(96))])
    );
    assert_eq!((report["title"].as_str(), report["artist"].as_str(), report["for_sale"].as_bool()), (Some("Live Song"), Some("The Band"), Some(false)));
    let components = report["components"].as_array().expect("components");
    let component = |name: &str| components.iter().find(|c| c["name"] == name).cloned().unwrap_or_default();
    assert_eq!((component("lyrics")["encrypted"].as_bool(), component("liner_notes")["text"].as_str()), (Some(true), Some("recorded live")));
    assert_eq!(component("cover")["media_type"], "image/png");
    let preview = &report["preview"];
    assert_eq!(
        (preview["start_ms"].as_u64(), preview["duration_ms"].as_u64(), preview["fade_in_ms"].as_u64(), preview["fade_out_ms"].as_u64()),
        (Some(6000), Some(12000), Some(500), Some(1500))
    );
    // The clip is the matching byte range of the smallest rendition: 20 000 bytes over 60 s.
    assert_eq!(preview["clip_bytes"].as_u64(), Some(4000));
    assert!(stderr.contains("free to view") && stderr.contains("encrypted"), "{stderr}");

    // A flipped byte in the free cover fails inspect (exit 1).
    let mut flipped = stored.to_vec();
    let Parsed::V2(container) = media::parse(&stored).expect("parses") else { panic!("format 2") };
    let (_, cover) = container.component("cover").expect("cover");
    assert_eq!(container.section(&cover.section), [0x89, b'P', b'N', b'G']);
    let cover_at = stored.windows(4).position(|w| w == [0x89, b'P', b'N', b'G']).expect("the cover bytes");
    flipped[cover_at + 1] ^= 0x20;
    std::fs::write(root.join("published.vsmc"), &flipped).expect("write");
    let (code, report, _) = run(inspect).await.expect("inspect ran");
    assert_eq!((code, report["signature_ok"].as_bool()), (1, Some(false)), "{report}");
    assert!(report["signature_error"].as_str().unwrap_or_default().contains("cover"), "{report}");
    engine.shutdown().await.expect("graceful shutdown");
}
