//! Publisher accounts (issue 28, item 3), end to end over gRPC: the operator registers a
//! publisher (credential, terms, signing keys: events on its own subject); the publisher
//! publishes its own media over CatalogService with its credential; the engine accepts a
//! container only when signed by a registered key of that publisher, and the media is sold
//! under the account's terms.
//!
//! The attack next to its control: a container signed by a key the publisher never
//! registered (a stolen credential used with the thief's own key) is refused with
//! PermissionDenied, nothing stored or appended; with the registry's check out of the way
//! (the operator's own path, which consults no registry) the very same container is
//! accepted, so the refusal is the registry's doing, not a broken container.

use engine::crypto::test_keys::{fixed_rsa_2, fixed_rsa_3};
use engine::domain::event::{Event, RoyaltyTerms};
use engine::ids::RequestId;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use gateways::common::client::{self, ComponentUpload, ContainerUpload, PreviewUpload, RenditionUpload};
use gateways::common::cred::Credential;
use gateways::server::{self, EngineConfig};
use proto::v1 as pb;
use std::sync::Arc;
use tonic::Code;

fn upload(title: &str) -> ContainerUpload {
    let high: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8).collect();
    ContainerUpload {
        title: title.into(),
        artist: "The Authors".into(),
        authors: vec!["A. Writer".into()],
        length_ms: 120_000,
        price_minor: 150,
        currency: "EUR".into(),
        // What the operator's path sells under; a publisher's upload sends none.
        terms: client::standard_terms("label-1"),
        renditions: vec![RenditionUpload { name: "high".into(), bitrate_kbps: 256, content: high.clone() }],
        components: vec![ComponentUpload { name: "lyrics".into(), media_type: "text/plain".into(), encrypted: true, data: b"la la".to_vec() }],
        preview: Some(PreviewUpload {
            start_ms: 0,
            duration_ms: 10_000,
            fade_in_ms: 0,
            fade_out_ms: 0,
            media_type: "audio/mpeg".into(),
            clip: high[..2048].to_vec(),
        }),
        for_sale: true,
        image_descriptor: String::new(),
        chunk_bytes: 16 * 1024,
    }
}

fn account_terms() -> pb::RoyaltyTermsInput {
    pb::RoyaltyTermsInput {
        retailer_bps: 2500,
        distributor_bps: 1500,
        owner_bps: 6000,
        distributor: "indie-dist".into(),
        owner: "owl-records".into(),
        rights_agent: "agent-7".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publisher_publishes_only_containers_signed_by_its_registered_keys_under_its_terms() {
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
    let (registered_key, foreign_key) = (fixed_rsa_2(), fixed_rsa_3());

    // The operator registers the publisher with one signing key and its terms.
    let register = pb::RegisterPublisherRequest {
        request_id: "publisher-1".into(),
        name: "Owl Records".into(),
        terms: Some(account_terms()),
        public_keys_der: vec![registered_key.public().to_der().expect("der")],
    };
    let publisher = client::credential_of(catalog.register_publisher(register.clone()).await.expect("registered").into_inner()).expect("credential");
    assert!(engine::ids::is_publisher_id(&publisher.id), "{}", publisher.id);
    let events = log.read_subject(&format!("vs.publisher.{}", publisher.id)).await.expect("read");
    let decoded: Vec<Event> = events.iter().map(|stored| engine::wire::decode(&stored.payload).expect("decode").event).collect();
    assert!(
        matches!(&decoded[..], [Event::PublisherRegistered { .. }, Event::PublisherKeyAdded { key_id, .. }] if *key_id == registered_key.public().key_id()),
        "{decoded:?}"
    );
    // Registration is the operator's: a publisher cannot register another, nor a merchant.
    let mut as_publisher = client::catalog(channel.clone(), publisher.clone());
    let refused =
        as_publisher.register_publisher(pb::RegisterPublisherRequest { request_id: "p-2".into(), ..register.clone() }).await.expect_err("operator only");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused =
        as_publisher.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect_err("publish only");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The attack: the publisher's credential with a key it never registered. Refused with
    // PermissionDenied, naming the key; nothing appended, no bytes stored.
    let head = log.last_seq().await.expect("head");
    let media_of = |publisher_id: &str, request_id: &str| engine::ids::media_id_for(publisher_id, &RequestId::new(request_id)).0;
    let refused = client::publish_container(&mut as_publisher, &publisher.id, "song-x", &engine_public, &foreign_key, upload("Stolen"))
        .await
        .expect_err("unregistered key");
    let status = refused.downcast_ref::<tonic::Status>().expect("a gRPC refusal");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(&foreign_key.public().key_id()) && status.message().contains("not a registered key"), "{}", status.message());
    assert_eq!(log.last_seq().await.expect("head"), head, "a refused publication writes nothing");
    let stored = engine.state.media.get(&media_of(&publisher.id, "song-x"), engine::media_store::Part::Container).await.expect("store");
    assert!(stored.is_none(), "nor stores bytes");

    // The control with the protection off: the operator's path, which consults no
    // registry, takes the very same kind of container signed by the same foreign key.
    let published =
        client::publish_container(&mut catalog, &operator.id, "song-x", &engine_public, &foreign_key, upload("Stolen")).await.expect("the operator's path");
    assert_eq!(published.media_id, media_of(&operator.id, "song-x"));

    // The publisher's own key: published, under the account's terms (not the request's).
    let published =
        client::publish_container(&mut as_publisher, &publisher.id, "song-1", &engine_public, &registered_key, upload("Owl Song")).await.expect("published");
    assert_eq!(published.media_id, media_of(&publisher.id, "song-1"));
    let events = log.read_subject(&format!("vs.media.{}", published.media_id)).await.expect("read");
    let Event::MediaPublished(media) = engine::wire::decode(&events[0].payload).expect("decode").event else { panic!("a publication") };
    let terms = account_terms();
    let expected = RoyaltyTerms {
        retailer_bps: terms.retailer_bps,
        distributor_bps: terms.distributor_bps,
        owner_bps: terms.owner_bps,
        distributor: terms.distributor,
        owner: terms.owner,
        rights_agent: terms.rights_agent,
    };
    assert_eq!((media.publisher.as_str(), &media.terms), (publisher.id.as_str(), &expected), "the account's terms");
    assert!(engine.state.media.get(&published.media_id, engine::media_store::Part::Container).await.expect("store").is_some());

    // The operator registers the other key too (AdminService, an event): now it signs for
    // the publisher. The publisher cannot add keys itself.
    let mut as_publisher_admin = client::admin(channel.clone(), publisher.clone());
    let add = pb::AddPublisherKeyRequest {
        request_id: "add-1".into(),
        publisher_id: publisher.id.clone(),
        public_key_der: foreign_key.public().to_der().expect("der"),
    };
    assert_eq!(as_publisher_admin.add_publisher_key(add.clone()).await.expect_err("operator only").code(), Code::PermissionDenied);
    let mut admin = client::admin(channel.clone(), operator.clone());
    let added = admin.add_publisher_key(add.clone()).await.expect("added").into_inner();
    assert_eq!((added.key_id.as_str(), added.changed, added.keys), (foreign_key.public().key_id().as_str(), true, 2));
    let again = admin.add_publisher_key(pb::AddPublisherKeyRequest { request_id: "add-2".into(), ..add }).await.expect("in effect").into_inner();
    assert!(!again.changed && again.keys == 2, "{again:?}");
    let unknown =
        pb::AddPublisherKeyRequest { request_id: "add-3".into(), publisher_id: "pu-none".into(), public_key_der: foreign_key.public().to_der().expect("der") };
    assert_eq!(admin.add_publisher_key(unknown).await.expect_err("no such publisher").code(), Code::NotFound);
    let published = client::publish_container(&mut as_publisher, &publisher.id, "song-x", &engine_public, &foreign_key, upload("Second Key"))
        .await
        .expect("now registered");
    assert_eq!(published.media_id, media_of(&publisher.id, "song-x"));

    // A merchant may not publish at all.
    let merchant = client::credential_of(
        catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "m-1".into(), name: "Shop".into() }).await.expect("merchant").into_inner(),
    )
    .expect("credential");
    let mut as_merchant = client::catalog(channel.clone(), merchant.clone());
    let refused =
        client::publish_container(&mut as_merchant, &merchant.id, "song-2", &engine_public, &registered_key, upload("Shop Song")).await.expect_err("no");
    assert_eq!(refused.downcast_ref::<tonic::Status>().expect("a gRPC refusal").code(), Code::PermissionDenied);
    engine.shutdown().await.expect("shutdown");
}
