//! The engine's gRPC surface under bad input and the wrong callers, over real loopback
//! sockets. Two tables, each run in full before anything is asserted so one run shows
//! every difference:
//!
//! - the bad-input matrix: for every RPC of the five services, the empty message, bytes
//!   that do not decode, a body over the size limit (and one exactly at it), missing and
//!   invalid credentials; and, where an RPC takes one, unknown ids, invalid fields,
//!   another merchant's voucher, another node's assignment, a wrong receipt proof, a
//!   revoked or expired certificate, a reused request id (for another command, and the
//!   same command retried). Every case asserts the exact status code and that the stream
//!   did not grow; afterwards the server still answers health checks and completes a sale.
//! - the access matrix: every role (operator, merchant owner and non-owner, node owner and
//!   non-owner, auditor, anonymous) × every RPC of MerchantService, DeliveryService,
//!   CatalogService, AuditService and AdminService, printed as a table (`--nocapture`) and compared
//!   with the expected table below.
//!
//! And two retries that must not change what was recorded: a PublishMedia reusing a
//! published media's request id, and a node changing its capacity back and forth.
//!
//! Not here: expired or replayed access tokens. The node agent checks those locally
//! (`gateways::node`), the engine never sees an access token.

mod support;

use engine::crypto::{self, RsaPrivate, SecretKey};
use gateways::common::client;
use gateways::common::cred::Credential;
use proto::v1 as pb;
use std::collections::BTreeMap;
use std::time::Duration;
use support::rpc::{Meta, Req, Rpc, Service, padded_empty, send_raw, send_typed};
use support::sale::{buy_in, credential, reserve_request, upload};
use support::{FRAME_HEADER_BYTES, Fixture, REQUEST_BYTES_MAX, UPLOAD_BYTES_MAX, start};
use tonic::{Code, Status};

// ---- the fixture (tests/support) and this file's limits ----

/// A call that takes longer than this is reported as hanging: far beyond any answer on a
/// busy machine (the engine's own deadlines are seconds), so only a hang reaches it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often, and after how long, the access matrix retries a call refused because the
/// engine's full replays (started by earlier cells) are still running.
const REPLAY_BUSY_RETRIES_MAX: usize = 100;
const REPLAY_BUSY_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Bytes that are no protobuf message: a varint that never ends.
const UNTERMINATED_VARINT: &[u8] = &[0xff, 0xff, 0xff];
/// Field 1, length-delimited, announcing 5 bytes and carrying 1.
const TRUNCATED_FIELD: &[u8] = &[0x0a, 0x05, 0x61];
/// Field 1, length-delimited, 2 bytes that are not UTF-8 (for a `string` field 1).
const INVALID_UTF8: &[u8] = &[0x0a, 0x02, 0xc3, 0x28];

// ---- one table of cases, run in full, then compared ----

#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Body {
    Typed(Req),
    Raw(Rpc, Vec<u8>),
    /// A unary call to a path no RPC has.
    Path(&'static str, Vec<u8>),
}

impl Body {
    fn rpc_name(&self) -> &'static str {
        match self {
            Body::Typed(request) => request.rpc().name(),
            Body::Raw(rpc, _) => rpc.name(),
            Body::Path(path, _) => path.trim_start_matches("/vouchsafe.v1."),
        }
    }
}

struct Case {
    category: &'static str,
    what: String,
    who: Meta,
    body: Body,
    expect: Code,
    /// Events the call appends (0 for every refusal and every retry).
    writes: u64,
    /// Text the answer must contain (for retries: the first answer's parts).
    answer_has: Vec<String>,
    /// Text the status message must contain (which check refused it).
    message_has: Option<String>,
}

fn case(category: &'static str, what: impl Into<String>, who: &Meta, request: Req, expect: Code) -> Case {
    Case { category, what: what.into(), who: who.clone(), body: Body::Typed(request), expect, writes: 0, answer_has: Vec::new(), message_has: None }
}

fn raw(category: &'static str, what: impl Into<String>, who: &Meta, rpc: Rpc, message: Vec<u8>, expect: Code) -> Case {
    Case { category, what: what.into(), who: who.clone(), body: Body::Raw(rpc, message), expect, writes: 0, answer_has: Vec::new(), message_has: None }
}

impl Case {
    fn writes(mut self, events: u64) -> Self {
        self.writes = events;
        self
    }

    fn message_has(mut self, text: impl Into<String>) -> Self {
        self.message_has = Some(text.into());
        self
    }

    fn answer_has(mut self, text: impl Into<String>) -> Self {
        self.answer_has.push(text.into());
        self
    }
}

struct Outcome {
    category: &'static str,
    rpc: &'static str,
    what: String,
    caller: String,
    expect: Code,
    got: Code,
    wrote: u64,
    problem: Option<String>,
}

async fn run(fixture: &Fixture, cases: Vec<Case>) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(cases.len());
    for case in cases {
        let rpc = case.body.rpc_name();
        let before = fixture.head().await;
        let who = &case.who;
        let call = |body: Body| async move {
            let sent = async {
                match body {
                    Body::Typed(request) => send_typed(&fixture.channel, who, request).await.map(|answered| answered.text),
                    Body::Raw(rpc, message) => send_raw(&fixture.channel, who, &rpc.path(), rpc.streaming(), message).await,
                    Body::Path(path, message) => send_raw(&fixture.channel, who, path, false, message).await,
                }
            };
            match tokio::time::timeout(CALL_TIMEOUT, sent).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!("no answer in {CALL_TIMEOUT:?}"))),
            }
        };
        let mut result = call(case.body.clone()).await;
        // Earlier Replay cells leave full replays running; a full replay beyond the engine's
        // limit is refused "retry when one has finished": as a client should, retry.
        for _ in 0..REPLAY_BUSY_RETRIES_MAX {
            match &result {
                Err(status) if status.code() == Code::ResourceExhausted && status.message().contains("full replays are running") => {
                    tokio::time::sleep(REPLAY_BUSY_RETRY_AFTER).await;
                    result = call(case.body.clone()).await;
                }
                _ => break,
            }
        }
        let wrote = fixture.head().await - before;
        let (got, message, answer) = match result {
            Ok(answer) => (Code::Ok, String::new(), answer),
            Err(status) => (status.code(), status.message().chars().take(120).collect(), String::new()),
        };
        let mut problems = Vec::new();
        if got != case.expect {
            problems.push(format!("expected {:?}, got {got:?} ({message})", case.expect));
        }
        if wrote != case.writes {
            problems.push(format!("expected {} new events, {wrote} appended", case.writes));
        }
        if let Some(part) = &case.message_has
            && got != Code::Ok
            && !message.contains(part.as_str())
        {
            problems.push(format!("the refusal does not say {part:?}: {message}"));
        }
        for part in &case.answer_has {
            if got == Code::Ok && !answer.contains(part.as_str()) {
                problems.push("the retry's answer differs from the first answer".to_string());
            }
        }
        let problem = if problems.is_empty() { None } else { Some(problems.join("; ")) };
        outcomes.push(Outcome { category: case.category, rpc, what: case.what, caller: case.who.label, expect: case.expect, got, wrote, problem });
    }
    outcomes
}

/// Prints the outcomes as a table and returns the lines of the mismatches.
fn report(title: &str, outcomes: &[Outcome]) -> Vec<String> {
    println!("\n{title}: {} cases", outcomes.len());
    println!("{:<28} {:<22} {:<26} {:<52} {:<18} {:<18} writes", "category", "rpc", "caller", "case", "expected", "got");
    let mut mismatches = Vec::new();
    for o in outcomes {
        let flag = if o.problem.is_some() { "  <-- MISMATCH" } else { "" };
        println!(
            "{:<28} {:<22} {:<26} {:<52} {:<18} {:<18} {}{flag}",
            o.category,
            o.rpc,
            o.caller,
            o.what,
            format!("{:?}", o.expect),
            format!("{:?}", o.got),
            o.wrote
        );
        if let Some(problem) = &o.problem {
            mismatches.push(format!("[{}] {} as {} ({}): {problem}", o.category, o.rpc, o.caller, o.what));
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        *counts.entry(o.category).or_default() += 1;
    }
    println!("\ncases per category:");
    for (category, count) in &counts {
        println!("  {category:<28} {count}");
    }
    mismatches
}

// ---- the world: two merchants, two nodes, an auditor, media, vouchers, certificates ----

struct World {
    fx: Fixture,
    operator: Credential,
    /// Merchant A owns every voucher, preview and order below.
    a: Credential,
    b: Credential,
    /// Node X serves A's vouchers and preview; node Y serves none of them.
    x: Credential,
    y: Credential,
    /// A node credential whose node never called RegisterNode.
    z: Credential,
    auditor: Credential,
    media: String,
    /// A's voucher, issued to X.
    sale: client::Sale,
    /// Another of A's vouchers issued to X (for FailDelivery).
    second: client::Sale,
    pending: String,
    pending_to_void: String,
    /// A reservation only the Refund access row spends (a refund before release voids it).
    pending_to_refund: String,
    authorized: String,
    expired: String,
    preview: String,
    order: String,
    consumer_der: Vec<u8>,
    alice_serial: String,
    /// Revoked.
    bob_serial: String,
    /// Valid for 1 ms, long over.
    erin_serial: String,
    /// Revoked by the access matrix.
    dave_serial: String,
    device_serial: String,
    /// The key of every consumer certificate (it signs spend authorizations and balance reads).
    consumer_key: RsaPrivate,
    /// The certificates of the points accounts acct-1 (topped up) and acct-empty.
    acct_serial: String,
    empty_serial: String,
    /// Made for the operator's changes, which act on nothing else: merchant C (suspended
    /// and reinstated), a spare auditor (revoked), a spare media (withdrawn), a media
    /// whose price changes, and consumer frank with two certificates (revoked).
    c: Credential,
    spare_auditor: Credential,
    spare_media: String,
    priced_media: String,
    frank_serials: [String; 2],
    /// A publisher the operator registered with `consumer_der` as its key (AddPublisherKey
    /// adds `spare_publisher_key_der`).
    spare_publisher: String,
    spare_publisher_key_der: Vec<u8>,
}

async fn build_world() -> World {
    let fx = start().await;
    let operator = fx.operator.clone();
    let mut catalog = client::catalog(fx.channel.clone(), operator.clone());
    let a = credential(catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "merchant-a".into(), name: "Shop A".into() }).await);
    let b = credential(catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "merchant-b".into(), name: "Shop B".into() }).await);
    let node_eu = credential(
        catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "node-eu".into(), region: "eu".into(), slots_max: 16 }).await,
    );
    let node_us = credential(
        catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "node-us".into(), region: "us".into(), slots_max: 16 }).await,
    );
    let auditor = credential(catalog.register_auditor(pb::RegisterAuditorRequest { request_id: "auditor-1".into(), name: "Agent 1".into() }).await);
    for (node, endpoint) in [(&node_eu, "http://127.0.0.1:1"), (&node_us, "http://127.0.0.1:2")] {
        client::delivery(fx.channel.clone(), node.clone())
            .register_node(pb::RegisterNodeRequest { region: String::new(), slots_max: 0, endpoint: endpoint.into() })
            .await
            .expect("the node announces its endpoint");
    }
    let media = client::publish(&mut catalog, "media-1", &fx.engine_public, upload("Song")).await.expect("publish").media_id;
    fx.settle().await;

    // The first sale goes wherever the allocator puts it; that node is X from here on.
    let mut merchant = client::merchant(fx.channel.clone(), a.clone());
    let sale = client::buy(&mut merchant, "sale", std::slice::from_ref(&media), None).await.expect("buy");
    let (x, y, x_region) = if sale.node_id == node_eu.id { (node_eu, node_us, "eu") } else { (node_us, node_eu, "us") };
    let second = buy_in(&mut merchant, "second", &media, x_region).await.expect("a sale in X's region");
    assert_eq!(second.node_id, x.id, "issued in X's region, so to X");
    let pending = merchant.reserve(reserve_request("pending-1", &media)).await.expect("reserve").into_inner().voucher_id;
    let pending_to_void = merchant.reserve(reserve_request("pending-2", &media)).await.expect("reserve").into_inner().voucher_id;
    let pending_to_refund = merchant.reserve(reserve_request("pending-3", &media)).await.expect("reserve").into_inner().voucher_id;
    let authorized = merchant.reserve(reserve_request("authorized-1", &media)).await.expect("reserve").into_inner().voucher_id;
    merchant.authorize(pb::AuthorizeRequest { request_id: "authorized-1-authorize".into(), voucher_id: authorized.clone() }).await.expect("authorize");
    let expired = merchant.reserve(pb::ReserveRequest { ttl_ms: 1, ..reserve_request("expired-1", &media) }).await.expect("reserve").into_inner().voucher_id;
    let preview = merchant
        .preview(pb::PreviewRequest { request_id: "preview-1".into(), media_id: media.clone(), region: x_region.into() })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.node_id, x.id, "started in X's region, so on X");
    let order = merchant
        .place_order(pb::PlaceOrderRequest { request_id: "order-1".into(), media_id: media.clone(), units: 2 })
        .await
        .expect("order")
        .into_inner()
        .order_id;

    // One consumer key pair for every certificate (and as a device key).
    let consumer_key = tokio::task::spawn_blocking(|| RsaPrivate::generate(2048)).await.expect("task").expect("rsa");
    let consumer_der = consumer_key.public().to_der().expect("der");
    let mut certify = async |request_id: &str, consumer: &str, validity_ms: u64| {
        catalog
            .certify_consumer(pb::CertifyConsumerRequest {
                request_id: request_id.into(),
                consumer_id: consumer.into(),
                public_key_der: consumer_der.clone(),
                validity_ms,
            })
            .await
            .expect("certify")
            .into_inner()
            .cert_serial
    };
    let alice_serial = certify("cert-alice", "alice", 86_400_000).await;
    // Alice redeems the second sale at X: its keys are released to her, so a failure
    // report with her confirm proof is X's to make (FailDelivery's access row).
    let second_redeem = pb::RedeemRequest {
        request_id: "second-redeem".into(),
        voucher_id: second.voucher_id.clone(),
        cert_serial: alice_serial.clone(),
        consumer_id: "alice".into(),
        proof: support::sale::proof(
            &second.receipt,
            &second.voucher_id,
            &x.id,
            &[5; 32],
            &support::sale::Named { consumer: "alice", cert_serial: &alice_serial, public_key_der: &consumer_der },
        ),
        challenge: vec![5; 32],
        recover: false,
    };
    client::delivery(fx.channel.clone(), x.clone()).redeem(second_redeem).await.expect("alice redeems the second sale");
    let bob_serial = certify("cert-bob", "bob", 86_400_000).await;
    let erin_serial = certify("cert-erin", "erin", 1).await;
    let dave_serial = certify("cert-dave", "dave", 86_400_000).await;
    // The duplicator's device, certified like a consumer (on the consumers' key).
    let device_serial = certify("cert-dev-1", "dev-1", 86_400_000).await;
    // Points accounts are consumers': acct-1 has points, acct-empty none.
    let acct_serial = certify("cert-acct-1", "acct-1", 86_400_000).await;
    let empty_serial = certify("cert-acct-empty", "acct-empty", 86_400_000).await;
    let frank_serials = [certify("cert-frank-1", "frank", 86_400_000).await, certify("cert-frank-2", "frank", 86_400_000).await];
    catalog
        .revoke_cert(pb::RevokeCertRequest {
            request_id: "revoke-bob".into(),
            cert_serial: bob_serial.clone(),
            reason: "lost".into(),
            consumer_id: "bob".into(),
        })
        .await
        .expect("revoke");
    catalog
        .top_up_points(pb::TopUpPointsRequest { request_id: "topup-1".into(), account_id: "acct-1".into(), amount: 500, ..Default::default() })
        .await
        .expect("top up");
    // Registered last, so the allocator never chose it for the vouchers above.
    let z = credential(
        catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "node-ap".into(), region: "ap".into(), slots_max: 1 }).await,
    );
    let c = credential(catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "merchant-c".into(), name: "Shop C".into() }).await);
    let spare_auditor =
        credential(catalog.register_auditor(pb::RegisterAuditorRequest { request_id: "auditor-spare".into(), name: "Agent spare".into() }).await);
    let spare_media = client::publish(&mut catalog, "media-spare", &fx.engine_public, upload("Spare")).await.expect("publish").media_id;
    let priced_media = client::publish(&mut catalog, "media-priced", &fx.engine_public, upload("Priced")).await.expect("publish").media_id;
    let spare_publisher = credential(
        catalog
            .register_publisher(pb::RegisterPublisherRequest {
                request_id: "publisher-spare".into(),
                name: "Spare Label".into(),
                terms: Some(client::standard_terms("label-spare")),
                public_keys_der: vec![consumer_der.clone()],
            })
            .await,
    )
    .id;
    let spare_publisher_key_der = engine::crypto::test_keys::fixed_rsa_3().public().to_der().expect("der");
    tokio::time::sleep(Duration::from_millis(5)).await;
    fx.settle().await;
    World {
        fx,
        operator,
        a,
        b,
        x,
        y,
        z,
        auditor,
        media,
        sale,
        second,
        pending,
        pending_to_void,
        pending_to_refund,
        authorized,
        expired,
        preview: preview.preview_id,
        order,
        consumer_der,
        alice_serial,
        bob_serial,
        erin_serial,
        dave_serial,
        device_serial,
        consumer_key,
        acct_serial,
        empty_serial,
        c,
        spare_auditor,
        spare_media,
        priced_media,
        frank_serials,
        spare_publisher,
        spare_publisher_key_der,
    }
}

impl World {
    /// `account`'s consent (acct-1 or acct-empty, both certified with `consumer_key`) for
    /// `merchant` to spend up to `amount_max`, expiring `ttl_ms` from now (negative: past).
    fn spend(&self, account: &str, merchant: &str, amount_max: u64, ttl_ms: i64) -> pb::SpendAuthorization {
        support::sale::spend(&self.consumer_key, account, self.serial_of(account), merchant, amount_max, ttl_ms)
    }

    /// `account`'s signed balance read, issued `skew_ms` from now.
    fn points_request(&self, account: &str, skew_ms: i64) -> pb::GetPointsRequest {
        support::sale::points_request(&self.consumer_key, account, self.serial_of(account), skew_ms)
    }

    /// The certificate of points account acct-1 or acct-empty.
    fn serial_of(&self, account: &str) -> &str {
        if account == "acct-empty" { &self.empty_serial } else { &self.acct_serial }
    }

    /// The rightful caller of each service.
    fn rightful(&self, service: Service) -> Meta {
        match service {
            Service::Merchant => Meta::of("merchant A", &self.a),
            Service::Delivery => Meta::of("node X", &self.x),
            Service::Catalog => Meta::of("operator", &self.operator),
            Service::Audit => Meta::of("auditor", &self.auditor),
            Service::Admin => Meta::of("operator", &self.operator),
            Service::Consumer => Meta::anonymous(),
        }
    }

    fn rightful_credential(&self, service: Service) -> (&'static str, &Credential) {
        match service {
            Service::Merchant => ("merchant A", &self.a),
            Service::Delivery => ("node X", &self.x),
            Service::Catalog => ("operator", &self.operator),
            Service::Audit => ("auditor", &self.auditor),
            Service::Admin | Service::Consumer => ("operator", &self.operator),
        }
    }

    /// A caller whose role may not call the service at all.
    fn wrong_role(&self, service: Service) -> Meta {
        match service {
            Service::Merchant => Meta::of("node X", &self.x),
            Service::Delivery => Meta::of("merchant A", &self.a),
            Service::Catalog => Meta::of("auditor", &self.auditor),
            Service::Audit => Meta::of("merchant A", &self.a),
            Service::Admin => Meta::of("auditor", &self.auditor),
            // Every role may ask (the signature decides): the anonymous caller stands in.
            Service::Consumer => Meta::anonymous(),
        }
    }

    /// A proof of `sale`'s receipt, bound to `node` and `challenge`.
    /// A proof naming consumer alice, as the sale's redemptions do.
    fn proof(&self, receipt: &[u8], voucher: &str, node: &str, challenge: &[u8]) -> Vec<u8> {
        let alice = support::sale::Named { consumer: "alice", cert_serial: &self.alice_serial, public_key_der: &self.consumer_der };
        support::sale::proof(receipt, voucher, node, challenge, &alice)
    }

    /// A redemption of the sale by consumer alice, with a proof made for `node`.
    fn redeem(&self, request_id: &str, node: &str) -> pb::RedeemRequest {
        self.redeem_over(request_id, node, vec![7u8; 32])
    }

    /// The same over another challenge.
    fn redeem_over(&self, request_id: &str, node: &str, challenge: Vec<u8>) -> pb::RedeemRequest {
        pb::RedeemRequest {
            request_id: request_id.into(),
            voucher_id: self.sale.voucher_id.clone(),
            cert_serial: self.alice_serial.clone(),
            consumer_id: "alice".into(),
            proof: self.proof(&self.sale.receipt, &self.sale.voucher_id, node, &challenge),
            challenge,
            recover: false,
        }
    }

    /// A failure report by node X of `sale` (redeemed by alice), with her confirm proof of a wrong hash.
    fn fail(&self, request_id: &str, sale: &client::Sale, reason: &str) -> pb::FailDeliveryRequest {
        let alice = support::sale::Named { consumer: "alice", cert_serial: &self.alice_serial, public_key_der: &self.consumer_der };
        pb::FailDeliveryRequest {
            request_id: request_id.into(),
            voucher_id: sale.voucher_id.clone(),
            reason: reason.into(),
            media_id: self.media.clone(),
            received_hash: vec![0; 32],
            confirm_proof: support::sale::confirm(&sale.receipt, &sale.voucher_id, &self.x.id, &self.media, &[0; 32], &alice),
        }
    }

    /// A delivery report by node X of `voucher` (the sale or another), with alice's
    /// confirm proof for the sale.
    fn complete(&self, request_id: &str, voucher: &str) -> pb::CompleteDeliveryRequest {
        let alice = support::sale::Named { consumer: "alice", cert_serial: &self.alice_serial, public_key_der: &self.consumer_der };
        pb::CompleteDeliveryRequest {
            request_id: request_id.into(),
            voucher_id: voucher.into(),
            media_id: self.media.clone(),
            content_hash: vec![1; 32],
            size_bytes: 20_000,
            confirm_proof: support::sale::confirm(&self.sale.receipt, &self.sale.voucher_id, &self.x.id, &self.media, &[1; 32], &alice),
        }
    }

    fn publish_request(&self, request_id: &str) -> pb::PublishMediaRequest {
        let content = b"other content".to_vec();
        let key = SecretKey::random();
        pb::PublishMediaRequest {
            request_id: request_id.into(),
            title: "Other song".into(),
            artist: "Artist".into(),
            authors: vec!["Author".into()],
            length_ms: 60_000,
            price_minor: 99,
            currency: "EUR".into(),
            terms: Some(client::standard_terms("label-1")),
            container: engine::media::encrypt_v1(&key, &content),
            wrapped_media_key: crypto::wrap_key(&self.fx.engine_public, &key).expect("wrap for the engine"),
            for_sale: true,
            renditions: vec![pb::RenditionInput {
                name: "high".into(),
                bitrate_kbps: 256,
                content_hash: crypto::hash(&content).to_vec(),
                size_bytes: content.len() as u64,
            }],
            preview: Some(pb::PreviewClipInput { start_ms: 0, duration_ms: 30_000 }),
            image_descriptor: "cover.jpg".into(),
            preview_clip: Vec::new(),
        }
    }
}

#[path = "grpc_bad_input/access_table.rs"]
mod access_table;
#[path = "grpc_bad_input/cases.rs"]
mod cases;
#[path = "grpc_bad_input/read_access.rs"]
mod read_access;
use access_table::{EXPECTED_ACCESS, PUBLISHER_ACCESS};
#[path = "grpc_bad_input/read_cases.rs"]
mod read_cases;

use cases::bad_input_cases;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_bad_input_with_the_exact_code_and_writes_nothing() {
    let world = build_world().await;
    let cases = bad_input_cases(&world);
    let outcomes = run(&world.fx, cases).await;
    let mut mismatches = report("bad-input matrix", &outcomes);

    // Afterwards the engine still serves: health, a read, and the sale goes through.
    let fx = &world.fx;
    let mut health = tonic_health::pb::health_client::HealthClient::new(fx.channel.clone());
    let serving = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health").into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let view = client::merchant(fx.channel.clone(), world.a.clone())
        .get_voucher(pb::GetVoucherRequest { voucher_id: world.sale.voucher_id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!((view.status.as_str(), view.node_id.as_str()), ("Issued", world.x.id.as_str()), "the refusals left the sale as it was");

    // Each node's assignment feed carries its own assignments only: X gets the two sales
    // and the preview; Y, with none, gets nothing.
    let mut feeds = Vec::new();
    for node in [&world.x, &world.y] {
        let mut delivery = client::delivery(fx.channel.clone(), node.clone());
        feeds.push(delivery.subscribe_assignments(pb::SubscribeAssignmentsRequest { after_seq: 0 }).await.expect("subscribe").into_inner());
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let next =
            tokio::time::timeout(CALL_TIMEOUT, feeds[0].message()).await.expect("X's assignments arrive").expect("the feed is open").expect("an assignment");
        got.push(if next.preview_id.is_empty() { next.voucher_id } else { next.preview_id });
    }
    got.sort();
    let mut want = vec![world.sale.voucher_id.clone(), world.second.voucher_id.clone(), world.preview.clone()];
    want.sort();
    assert_eq!(got, want, "X's feed");
    // A sentinel sale goes to Y (the least loaded): the feed is in stream order, so if any
    // of X's assignments had leaked to Y it would arrive before the sentinel.
    let sentinel = buy_in(&mut client::merchant(fx.channel.clone(), world.a.clone()), "sentinel-y", &world.media, "").await.expect("sentinel");
    assert_eq!(sentinel.node_id, world.y.id, "the least-loaded allocator gives the sentinel to Y");
    let first = tokio::time::timeout(CALL_TIMEOUT, feeds[1].message()).await.expect("Y's sentinel arrives").expect("the feed is open").expect("an assignment");
    assert_eq!(first.voucher_id, sentinel.voucher_id, "node Y's feed carried someone else's assignment before its own");
    drop(feeds);

    let x = Meta::of("node X (assigned)", &world.x);
    let a = Meta::of("merchant A", &world.a);
    let sale = &world.sale.voucher_id;
    let ia = Code::InvalidArgument;
    let after = vec![
        case("after the refusals", "alice redeems", &x, Req::Redeem(world.redeem("good-redeem", &world.x.id)), Code::Ok).writes(1),
        case("after the refusals", "the same redemption retried", &x, Req::Redeem(world.redeem("good-redeem", &world.x.id)), Code::Ok),
        case(
            "after the refusals",
            "alice again, new id, the spent challenge (a replay)",
            &x,
            Req::Redeem(world.redeem("good-redeem-2", &world.x.id)),
            Code::PermissionDenied,
        )
        .message_has("challenge"),
        case(
            "after the refusals",
            "alice again, new id, a new challenge (node restart)",
            &x,
            Req::Redeem(world.redeem_over("good-redeem-3", &world.x.id, vec![11u8; 32])),
            Code::Ok,
        ),
        case("after the refusals", "Redeem's id for CompleteDelivery", &x, Req::CompleteDelivery(world.complete("good-redeem", sale)), ia),
        case(
            "after the refusals",
            "Authorize's id for Void",
            &a,
            Req::Void(pb::VoidRequest { request_id: "sale-authorize".into(), voucher_id: sale.clone() }),
            ia,
        ),
        case("after the refusals", "X completes", &x, Req::CompleteDelivery(world.complete("good-complete", sale)), Code::Ok).writes(1),
        case("after the refusals", "the completion retried", &x, Req::CompleteDelivery(world.complete("good-complete", sale)), Code::Ok),
        case("after the refusals", "redeem a delivered voucher", &x, Req::Redeem(world.redeem("late-redeem", &world.x.id)), Code::FailedPrecondition),
        case(
            "after the refusals",
            "void a delivered voucher",
            &a,
            Req::Void(pb::VoidRequest { request_id: "late-void".into(), voucher_id: sale.clone() }),
            Code::FailedPrecondition,
        ),
        case("after the refusals", "the delivered voucher", &a, Req::GetVoucher(pb::GetVoucherRequest { voucher_id: sale.clone() }), Code::Ok)
            .answer_has("status: \"Delivered\""),
    ];
    let outcomes = run(fx, after).await;
    mismatches.extend(report("after the refusals", &outcomes));
    assert!(mismatches.is_empty(), "{} mismatches between the engine and the design:\n{}", mismatches.len(), mismatches.join("\n"));
    world.fx.engine.shutdown().await.expect("graceful shutdown");
}

// ---- the access matrix ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Operator,
    MerchantOwner,
    MerchantOther,
    NodeOwner,
    NodeOther,
    Auditor,
    Anonymous,
}

const ROLES: [Role; 7] = [Role::Operator, Role::MerchantOwner, Role::MerchantOther, Role::NodeOwner, Role::NodeOther, Role::Auditor, Role::Anonymous];
const ROLE_NAMES: [&str; 7] = ["operator", "merchant owner", "merchant other", "node owner", "node other", "auditor", "anonymous"];

impl World {
    fn role(&self, role: Role) -> Meta {
        match role {
            Role::Operator => Meta::of("operator", &self.operator),
            Role::MerchantOwner => Meta::of("merchant owner", &self.a),
            Role::MerchantOther => Meta::of("merchant other", &self.b),
            Role::NodeOwner => Meta::of("node owner", &self.x),
            Role::NodeOther => Meta::of("node other", &self.y),
            Role::Auditor => Meta::of("auditor", &self.auditor),
            Role::Anonymous => Meta::anonymous(),
        }
    }

    /// The request the rightful owner of each RPC makes successfully (once).
    fn access_request(&self, rpc: Rpc) -> Req {
        let sale = self.sale.voucher_id.clone();
        match rpc {
            Rpc::Reserve => Req::Reserve(reserve_request("acc-reserve", &self.media)),
            Rpc::Authorize => Req::Authorize(pb::AuthorizeRequest { request_id: "acc-authorize".into(), voucher_id: self.pending.clone() }),
            Rpc::Void => Req::Void(pb::VoidRequest { request_id: "acc-void".into(), voucher_id: self.pending_to_void.clone() }),
            Rpc::Refund => Req::Refund(pb::RefundRequest {
                request_id: "acc-refund".into(),
                voucher_id: self.pending_to_refund.clone(),
                reason: "the customer changed their mind".into(),
                chargeback: false,
            }),
            Rpc::IssueVoucher => {
                Req::IssueVoucher(pb::IssueVoucherRequest { request_id: "acc-issue".into(), voucher_id: self.authorized.clone(), region: String::new() })
            }
            Rpc::Preview => Req::Preview(pb::PreviewRequest { request_id: "acc-preview".into(), media_id: self.media.clone(), region: String::new() }),
            Rpc::GetVoucher => Req::GetVoucher(pb::GetVoucherRequest { voucher_id: sale }),
            Rpc::PlaceOrder => Req::PlaceOrder(pb::PlaceOrderRequest { request_id: "acc-order".into(), media_id: self.media.clone(), units: 1 }),
            Rpc::BindUnit => Req::BindUnit(pb::BindUnitRequest {
                request_id: "acc-bind".into(),
                order_id: self.order.clone(),
                unit: 0,
                device_id: "dev-1".into(),
                device_public_key_der: self.consumer_der.clone(),
                device_cert_serial: self.device_serial.clone(),
            }),
            Rpc::CompleteUnit => Req::CompleteUnit(pb::CompleteUnitRequest { request_id: "acc-unit".into(), order_id: self.order.clone(), unit: 0 }),
            Rpc::RegisterNode => Req::RegisterNode(pb::RegisterNodeRequest { region: String::new(), slots_max: 0, endpoint: "http://127.0.0.1:3".into() }),
            Rpc::Heartbeat => Req::Heartbeat(pb::HeartbeatRequest { slots_in_use: 1, cache_items: 1, cache_accesses: 1, cache_misses: 0 }),
            Rpc::SubscribeAssignments => Req::SubscribeAssignments(pb::SubscribeAssignmentsRequest { after_seq: 0 }),
            Rpc::Redeem => Req::Redeem(self.redeem("acc-redeem", &self.x.id)),
            Rpc::CompleteDelivery => Req::CompleteDelivery(self.complete("acc-complete", &sale)),
            Rpc::FailDelivery => Req::FailDelivery(self.fail("acc-fail", &self.second, "disk full")),
            Rpc::EndPreview => Req::EndPreview(pb::EndPreviewRequest { request_id: "acc-end".into(), preview_id: self.preview.clone(), played_ms: 1000 }),
            Rpc::FetchMedia => Req::FetchMedia(pb::FetchMediaRequest { media_id: self.media.clone(), part: pb::MediaPart::Container as i32 }),
            Rpc::PublishMedia => Req::PublishMedia(self.publish_request("acc-publish")),
            Rpc::RegisterMerchant => Req::RegisterMerchant(pb::RegisterMerchantRequest { request_id: "acc-merchant".into(), name: "Shop C".into() }),
            Rpc::RegisterNodeCredential => {
                Req::RegisterNodeCredential(pb::RegisterNodeCredentialRequest { request_id: "acc-node".into(), region: "sa".into(), slots_max: 1 })
            }
            Rpc::CertifyConsumer => Req::CertifyConsumer(pb::CertifyConsumerRequest {
                request_id: "acc-cert".into(),
                consumer_id: "carol".into(),
                public_key_der: self.consumer_der.clone(),
                validity_ms: 86_400_000,
            }),
            Rpc::RevokeCert => Req::RevokeCert(pb::RevokeCertRequest {
                request_id: "acc-revoke".into(),
                cert_serial: self.dave_serial.clone(),
                reason: "lost".into(),
                consumer_id: "dave".into(),
            }),
            Rpc::TopUpPoints => {
                Req::TopUpPoints(pb::TopUpPointsRequest { request_id: "acc-topup".into(), account_id: "acct-1".into(), amount: 100, ..Default::default() })
            }
            Rpc::SellPoints => Req::SellPoints(pb::TopUpPointsRequest {
                request_id: "acc-sell".into(),
                account_id: "acct-1".into(),
                amount: 100,
                currency: "EUR".into(),
                ..Default::default()
            }),
            Rpc::GetPoints => Req::GetPoints(self.points_request("acct-1", 0)),
            Rpc::RegisterAuditor => Req::RegisterAuditor(pb::RegisterAuditorRequest { request_id: "acc-auditor".into(), name: "Agent 2".into() }),
            Rpc::Replay => Req::Replay(pb::ReplayRequest::default()),
            Rpc::VerifyChain => Req::VerifyChain(pb::VerifyChainRequest {}),
            Rpc::Totals => Req::Totals(pb::TotalsRequest {}),
            Rpc::GetStats => Req::GetStats(pb::GetStatsRequest {}),
            Rpc::GetConfig => Req::GetConfig(pb::GetConfigRequest {}),
            // The value every engine starts with: the row changes nothing a later row sees.
            Rpc::SetConfig => Req::SetConfig(pb::SetConfigRequest { request_id: "acc-config".into(), key: "access.ttl_ms".into(), value: "600000".into() }),
            // Node Z never announced itself: draining and removing it disturbs no other row.
            Rpc::DrainNode => Req::DrainNode(pb::NodeAdminRequest { request_id: "acc-drain".into(), node_id: self.z.id.clone() }),
            Rpc::RemoveNode => Req::RemoveNode(pb::NodeAdminRequest { request_id: "acc-remove".into(), node_id: self.z.id.clone() }),
            // The administrative changes act on the objects made for them, which no other row
            // uses: C is suspended, then reinstated (by the next row); the spare auditor is
            // revoked, the spare media withdrawn, the priced media's price changed, and
            // every certificate of frank revoked.
            Rpc::SuspendMerchant => Req::SuspendMerchant(pb::MerchantAdminRequest {
                request_id: "acc-suspend".into(),
                merchant_id: self.c.id.clone(),
                reason: "chargebacks".into(),
            }),
            Rpc::ReinstateMerchant => Req::ReinstateMerchant(pb::MerchantAdminRequest {
                request_id: "acc-reinstate".into(),
                merchant_id: self.c.id.clone(),
                reason: "cleared".into(),
            }),
            Rpc::RevokeAuditor => Req::RevokeAuditor(pb::AuditorAdminRequest {
                request_id: "acc-revoke-auditor".into(),
                auditor_id: self.spare_auditor.id.clone(),
                reason: "left".into(),
            }),
            Rpc::WithdrawMedia => Req::WithdrawMedia(pb::WithdrawMediaRequest {
                request_id: "acc-withdraw".into(),
                media_id: self.spare_media.clone(),
                reason: "takedown".into(),
            }),
            Rpc::ChangePrice => {
                Req::ChangePrice(pb::ChangePriceRequest { request_id: "acc-price".into(), media_id: self.priced_media.clone(), price_minor: 250 })
            }
            Rpc::RevokeCerts => Req::RevokeCerts(pb::RevokeCertsRequest {
                request_id: "acc-revoke-certs".into(),
                consumer_id: "frank".into(),
                cert_serial: String::new(),
                reason: "device lost".into(),
                every_cert: true,
            }),
            Rpc::ListVouchers
            | Rpc::GetStatement
            | Rpc::ListCatalog
            | Rpc::SearchCatalog
            | Rpc::GetLedger
            | Rpc::ListParties
            | Rpc::GetAccountPoints
            | Rpc::ListOrders
            | Rpc::Statement => read_access::access_request(rpc),
            Rpc::RegisterPublisher => Req::RegisterPublisher(pb::RegisterPublisherRequest {
                request_id: "acc-publisher".into(),
                name: "Label 2".into(),
                terms: Some(client::standard_terms("label-2")),
                public_keys_der: vec![self.consumer_der.clone()],
            }),
            Rpc::AddPublisherKey => Req::AddPublisherKey(pb::AddPublisherKeyRequest {
                request_id: "acc-publisher-key".into(),
                publisher_id: self.spare_publisher.clone(),
                public_key_der: self.spare_publisher_key_der.clone(),
            }),
            Rpc::RotateEngineKey => {
                Req::RotateEngineKey(pb::RotateEngineKeyRequest { request_id: "acc-rotate".into(), key_id: self.fx.engine_public.key_id() })
            }
            Rpc::RevokeEngineKey => Req::RevokeEngineKey(pb::RevokeEngineKeyRequest { request_id: "acc-revoke".into(), key_id: "no-such-key".into() }),
            Rpc::RotateTokenKey => Req::RotateTokenKey(pb::RotateTokenKeyRequest { request_id: "acc-rotate-token".into(), key_id: 1 }),
            Rpc::RotateCheckpointKey => {
                Req::RotateCheckpointKey(pb::RotateCheckpointKeyRequest { request_id: "acc-rotate-checkpoint".into(), vkey: self.fx.checkpoint_vkey.clone() })
            }
            Rpc::SetRentalWindow => {
                Req::SetRentalWindow(pb::SetRentalWindowRequest { request_id: "acc-window".into(), window_ms_min: 3_600_000, window_ms_max: 7_200_000 })
            }
        }
    }
}

fn cell(code: Code) -> String {
    if code == Code::Ok { "allowed".to_string() } else { format!("{code:?}") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_matrix_every_role_by_every_rpc() {
    let world = build_world().await;
    let expected_access: Vec<&(&str, [&str; 7])> = EXPECTED_ACCESS.iter().chain(read_access::READ_ACCESS).chain(PUBLISHER_ACCESS).collect();
    assert_eq!(expected_access.len(), Rpc::ALL.len(), "one expected row per RPC");
    let mut actual: Vec<(Rpc, Vec<(String, u64)>)> = Vec::new();
    let mut mismatches = Vec::new();
    // RPC by RPC, every role in turn: each request is refused before any state check for
    // every role but the rightful one, so the one allowed call changes nothing the others see.
    for (&rpc, (name, expected)) in Rpc::ALL.iter().zip(expected_access) {
        assert_eq!(rpc.name(), *name, "the expected table follows Rpc::ALL");
        let mut row = Vec::new();
        for (index, role) in ROLES.into_iter().enumerate() {
            let who = world.role(role);
            let before = world.fx.head().await;
            let mut result = tokio::time::timeout(CALL_TIMEOUT, send_typed(&world.fx.channel, &who, world.access_request(rpc))).await;
            // The Replay cells above only read a stream's headers; the engine goes on
            // replaying for them until the whole stream is sent, and refuses a full replay
            // beyond its limit with ResourceExhausted, "retry when one has finished": as a
            // client should, retry until those have ended.
            for _ in 0..REPLAY_BUSY_RETRIES_MAX {
                match &result {
                    Ok(Err(status)) if status.code() == Code::ResourceExhausted && status.message().contains("full replays are running") => {
                        tokio::time::sleep(REPLAY_BUSY_RETRY_AFTER).await;
                        result = tokio::time::timeout(CALL_TIMEOUT, send_typed(&world.fx.channel, &who, world.access_request(rpc))).await;
                    }
                    _ => break,
                }
            }
            let wrote = world.fx.head().await - before;
            let (code, message) = match result {
                Ok(Ok(_)) => (Code::Ok, String::new()),
                Ok(Err(status)) => (status.code(), status.message().to_string()),
                Err(_) => (Code::DeadlineExceeded, "no answer".to_string()),
            };
            let got = cell(code);
            if got != expected[index] {
                mismatches.push(format!("{name} as {}: expected {}, got {got} ({message})", ROLE_NAMES[index], expected[index]));
            }
            if code != Code::Ok && wrote != 0 {
                mismatches.push(format!("{name} as {}: refused with {got} but {wrote} events were appended", ROLE_NAMES[index]));
            }
            row.push((got, wrote));
        }
        actual.push((rpc, row));
    }

    println!("\naccess matrix ({} RPCs × {} roles; \"+n\": events the allowed call appended)", Rpc::ALL.len(), ROLES.len());
    print!("{:<34}", "service/rpc");
    for name in ROLE_NAMES {
        print!(" {name:<18}");
    }
    println!();
    for (rpc, row) in &actual {
        print!("{:<34}", format!("{}/{}", rpc.service().full_name().trim_start_matches("vouchsafe.v1."), rpc.name()));
        for (got, wrote) in row {
            let text = if *wrote > 0 { format!("{got} +{wrote}") } else { got.clone() };
            print!(" {text:<18}");
        }
        println!();
    }
    let allowed = actual.iter().flat_map(|(_, row)| row).filter(|(got, _)| got == "allowed").count();
    println!("{allowed} allowed, {} refused", actual.len() * ROLES.len() - allowed);
    assert!(mismatches.is_empty(), "{} cells differ from the expected access matrix:\n{}", mismatches.len(), mismatches.join("\n"));
    world.fx.engine.shutdown().await.expect("graceful shutdown");
}

// ---- retries that must not change what was recorded ----

async fn fetch_container(delivery: &mut client::DeliveryClient, media: &str) -> Vec<u8> {
    use futures::StreamExt;
    let mut chunks =
        delivery.fetch_media(pb::FetchMediaRequest { media_id: media.into(), part: pb::MediaPart::Container as i32 }).await.expect("fetch").into_inner();
    let mut container = Vec::new();
    while let Some(chunk) = chunks.next().await {
        container.extend_from_slice(&chunk.expect("chunk").data);
    }
    container
}

/// A PublishMedia that is refused, or answered as the retry of an earlier one, stores no
/// bytes: the stream recorded the first container's wrapped key and content hash, every
/// sale delivers that container, and DESIGN.md says a refusal writes nothing.
///
/// The bug this catches: `publish_media` in gateways/src/server.rs puts the container (and
/// preview clip) into the media store under `media_id_for(publisher, request_id)` before
/// the market decides, so a refused request or a "retry" with other bytes replaces the
/// published container; consumers then get the recorded key for a container sealed under
/// another one. (engine/src/app.rs `publish_media` also caches the new media key on a
/// repeated request.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_retried_publish_stores_no_bytes() {
    let world = build_world().await;
    let fx = &world.fx;
    let mut catalog = client::catalog(fx.channel.clone(), world.operator.clone());
    let mut delivery = client::delivery(fx.channel.clone(), world.x.clone());
    let published = fetch_container(&mut delivery, &world.media).await;
    let head = fx.head().await;
    let mut problems = Vec::new();

    // Refused (the wrapped key is not for the engine's key), reusing the published media's request id.
    let other = world.publish_request("media-1");
    let refused = catalog.publish_media(pb::PublishMediaRequest { wrapped_media_key: vec![9; 256], ..other.clone() }).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    if fetch_container(&mut delivery, &world.media).await != published {
        problems.push("a refused PublishMedia with the request id of a published media replaced its container");
    }

    // Answered as a retry (same request id, same command): the first answer and nothing else.
    let retried = catalog.publish_media(other).await.expect("a retry is answered").into_inner();
    assert_eq!(retried.media_id, world.media, "the retry answers the first media id");
    if fetch_container(&mut delivery, &world.media).await != published {
        problems.push("a retried PublishMedia (same request id, other bytes) replaced the published container");
    }

    // Refused with a new request id: no bytes are left behind under the id it would have had.
    let fresh = pb::PublishMediaRequest { wrapped_media_key: vec![9; 256], ..world.publish_request("fresh-refused") };
    let refused = catalog.publish_media(fresh).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let orphan = engine::ids::media_id_for(&world.operator.id, &engine::ids::RequestId("fresh-refused".into()));
    if fx.engine.state.media.get(&orphan.0, engine::media_store::Part::Container).await.expect("read the media store").is_some() {
        problems.push("a refused PublishMedia left its container in the media store");
    }
    assert_eq!(fx.head().await, head, "nothing appended");
    assert!(problems.is_empty(), "{problems:#?}");
    world.fx.engine.shutdown().await.expect("graceful shutdown");
}

/// RegisterNode carries the node's capacity, within its licence; every change is an event.
/// Changing it back and forth must keep working (each change is a new request, not a
/// retry of an old one).
///
/// The bug this catches: `register_node` in gateways/src/server.rs names the change
/// `capacity-{node}-{slots_max}`, so a change to a value the node had announced before is
/// taken for a retry of that earlier request and dropped, while the node is told it worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_changes_its_capacity_back_and_forth() {
    let fx = start().await;
    let mut catalog = client::catalog(fx.channel.clone(), fx.operator.clone());
    let node = credential(
        catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "node-1".into(), region: "eu".into(), slots_max: 8 }).await,
    );
    let mut delivery = client::delivery(fx.channel.clone(), node.clone());
    let mut recorded = Vec::new();
    // Licensed for 8: below it the node's announcement stands; above it the licence does
    // (the node decided its own capacity: `--slots 64` on a node licensed for 4 got 64).
    for slots_max in [4, 8, 4, 64, 2] {
        let head = fx.head().await;
        let answer = delivery
            .register_node(pb::RegisterNodeRequest { region: "us".into(), slots_max, endpoint: "http://127.0.0.1:1".into() })
            .await
            .expect("register node")
            .into_inner();
        let state = fx.engine.state.market.handler().load::<engine::domain::party::Node>(&node.id).await.expect("load the node").state.clone();
        assert_eq!((answer.slots_max, answer.region.as_str(), state.region.as_str()), (state.slots_max, "eu", "eu"), "the registered region stands");
        recorded.push((slots_max, state.slots_max, fx.head().await - head));
    }
    assert_eq!(recorded, vec![(4, 4, 1), (8, 8, 1), (4, 4, 1), (64, 8, 1), (2, 2, 1)], "(announced, recorded, events appended) per RegisterNode");
    fx.engine.shutdown().await.expect("graceful shutdown");
}

/// The hole: each request with a made-up credential id cost a stream read and left an
/// empty aggregate in the engine's cache (4,096 entries), evicting vouchers in flight, and
/// took a request slot before its credential was checked. Now made-up ids are answered
/// Unauthenticated and leave nothing in the cache; control, the lookup the front door used
/// before (`Handler::load`) caches every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_credential_ids_leave_nothing_in_the_aggregate_cache() {
    let fx = start().await;
    let handler = fx.engine.state.market.handler();
    let ids: Vec<String> = (0..200).map(|i| format!("m-made-up-{i}")).collect();
    let head = fx.head().await;
    for id in &ids {
        let who = Meta { label: "made up".into(), id: Some(id.clone()), secret_hex: Some("ab".repeat(32)) };
        let refused = send_typed(&fx.channel, &who, Rpc::GetVoucher.empty()).await.expect_err("unknown id");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    assert_eq!(fx.head().await, head, "nothing written");
    let cached = ids.iter().filter(|id| handler.peek::<engine::domain::party::Merchant>(id).is_some()).count();
    assert_eq!(cached, 0, "made-up ids left aggregates in the cache");
    // Control: the lookup without the protection caches each id it is asked for.
    handler.load::<engine::domain::party::Merchant>(&ids[0]).await.expect("load");
    assert!(handler.peek::<engine::domain::party::Merchant>(&ids[0]).is_some(), "Handler::load caches an empty aggregate");
    fx.engine.shutdown().await.expect("graceful shutdown");
}
