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

/// A call that takes longer than this is reported as hanging.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
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
    message_has: Option<&'static str>,
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

    fn message_has(mut self, text: &'static str) -> Self {
        self.message_has = Some(text);
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
        let call = async {
            match case.body {
                Body::Typed(request) => send_typed(&fixture.channel, &case.who, request).await,
                Body::Raw(rpc, message) => send_raw(&fixture.channel, &case.who, &rpc.path(), rpc.streaming(), message).await,
                Body::Path(path, message) => send_raw(&fixture.channel, &case.who, path, false, message).await,
            }
        };
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded(format!("no answer in {CALL_TIMEOUT:?}"))),
        };
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
        if let Some(part) = case.message_has
            && got != Code::Ok
            && !message.contains(part)
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
    let bob_serial = certify("cert-bob", "bob", 86_400_000).await;
    let erin_serial = certify("cert-erin", "erin", 1).await;
    let dave_serial = certify("cert-dave", "dave", 86_400_000).await;
    catalog
        .revoke_cert(pb::RevokeCertRequest {
            request_id: "revoke-bob".into(),
            cert_serial: bob_serial.clone(),
            reason: "lost".into(),
            consumer_id: "bob".into(),
        })
        .await
        .expect("revoke");
    catalog.top_up_points(pb::TopUpPointsRequest { request_id: "topup-1".into(), account_id: "acct-1".into(), amount: 500 }).await.expect("top up");
    // Registered last, so the allocator never chose it for the vouchers above.
    let z = credential(
        catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "node-ap".into(), region: "ap".into(), slots_max: 1 }).await,
    );
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
        authorized,
        expired,
        preview: preview.preview_id,
        order,
        consumer_der,
        alice_serial,
        bob_serial,
        erin_serial,
        dave_serial,
    }
}

impl World {
    /// The rightful caller of each service.
    fn rightful(&self, service: Service) -> Meta {
        match service {
            Service::Merchant => Meta::of("merchant A", &self.a),
            Service::Delivery => Meta::of("node X", &self.x),
            Service::Catalog => Meta::of("operator", &self.operator),
            Service::Audit => Meta::of("auditor", &self.auditor),
            Service::Admin => Meta::of("operator", &self.operator),
        }
    }

    fn rightful_credential(&self, service: Service) -> (&'static str, &Credential) {
        match service {
            Service::Merchant => ("merchant A", &self.a),
            Service::Delivery => ("node X", &self.x),
            Service::Catalog => ("operator", &self.operator),
            Service::Audit => ("auditor", &self.auditor),
            Service::Admin => ("operator", &self.operator),
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
        }
    }

    /// A proof of `sale`'s receipt, bound to `node` and `challenge`.
    fn proof(receipt: &[u8], voucher: &str, node: &str, challenge: &[u8]) -> Vec<u8> {
        support::sale::proof(receipt, voucher, node, challenge)
    }

    /// A redemption of the sale by consumer alice, with a proof made for `node`.
    fn redeem(&self, request_id: &str, node: &str) -> pb::RedeemRequest {
        let challenge = vec![7u8; 32];
        pb::RedeemRequest {
            request_id: request_id.into(),
            voucher_id: self.sale.voucher_id.clone(),
            cert_serial: self.alice_serial.clone(),
            consumer_id: "alice".into(),
            proof: Self::proof(&self.sale.receipt, &self.sale.voucher_id, node, &challenge),
            challenge,
        }
    }

    fn complete(&self, request_id: &str, voucher: &str) -> pb::CompleteDeliveryRequest {
        pb::CompleteDeliveryRequest {
            request_id: request_id.into(),
            voucher_id: voucher.into(),
            media_id: self.media.clone(),
            content_hash: vec![1; 32],
            size_bytes: 20_000,
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

/// What the default (all-empty) message gets from the rightful caller: the RPCs that take
/// no required field answer; every other one names the missing field.
fn empty_message_code(rpc: Rpc) -> Code {
    match rpc {
        Rpc::Heartbeat | Rpc::SubscribeAssignments | Rpc::Replay | Rpc::VerifyChain | Rpc::Totals | Rpc::GetStats | Rpc::GetConfig => Code::Ok,
        _ => Code::InvalidArgument,
    }
}

fn bad_input_cases(w: &World) -> Vec<Case> {
    let mut cases = Vec::new();
    let a = Meta::of("merchant A", &w.a);
    let b = Meta::of("merchant B", &w.b);
    let x = Meta::of("node X (assigned)", &w.x);
    let y = Meta::of("node Y (not assigned)", &w.y);
    let z = Meta::of("node Z (never announced)", &w.z);
    let op = Meta::of("operator", &w.operator);
    let auditor = Meta::of("auditor", &w.auditor);
    let sale = &w.sale.voucher_id;

    // Per RPC: the empty message, undecodable bytes, size limits, credentials.
    for &rpc in Rpc::ALL {
        let service = rpc.service();
        let rightful = w.rightful(service);
        cases.push(case("empty message", "all fields empty", &rightful, rpc.empty(), empty_message_code(rpc)));
        // gRPC's status for a message that does not parse (tonic: "failed to decode Protobuf message").
        cases.push(raw("undecodable bytes", "unterminated varint", &rightful, rpc, UNTERMINATED_VARINT.to_vec(), Code::Internal).message_has("decode"));
        cases.push(raw("undecodable bytes", "truncated field 1", &rightful, rpc, TRUNCATED_FIELD.to_vec(), Code::Internal).message_has("decode"));
        if rpc.field_one_is_string() {
            cases.push(raw("undecodable bytes", "string field 1 not UTF-8", &rightful, rpc, INVALID_UTF8.to_vec(), Code::Internal).message_has("decode"));
        }
        cases.push(raw("undecodable, no credential", "unterminated varint", &Meta::anonymous(), rpc, UNTERMINATED_VARINT.to_vec(), Code::Unauthenticated));
        cases.push(raw("undecodable, wrong role", "unterminated varint", &w.wrong_role(service), rpc, UNTERMINATED_VARINT.to_vec(), Code::PermissionDenied));
        if service != Service::Catalog {
            let limit = rpc.body_limit();
            cases.push(
                raw(
                    "oversized",
                    format!("body {} bytes (limit + 1)", limit + 1),
                    &rightful,
                    rpc,
                    padded_empty(limit + 1 - FRAME_HEADER_BYTES),
                    Code::ResourceExhausted,
                )
                .message_has("limit"),
            );
            cases.push(raw(
                "oversized, no credential",
                format!("body {} bytes", limit + 1),
                &Meta::anonymous(),
                rpc,
                padded_empty(limit + 1 - FRAME_HEADER_BYTES),
                Code::Unauthenticated,
            ));
            // Negative control: a body exactly at the limit is served (as the empty message).
            cases.push(raw(
                "at the size limit",
                format!("body {limit} bytes (the limit)"),
                &rightful,
                rpc,
                padded_empty(limit - FRAME_HEADER_BYTES),
                empty_message_code(rpc),
            ));
        }
        let (label, credential) = w.rightful_credential(service);
        cases.push(case("credentials", "no metadata", &Meta::anonymous(), rpc.empty(), Code::Unauthenticated));
        cases.push(case("credentials", "right id, wrong secret", &Meta::wrong_secret(label, credential), rpc.empty(), Code::Unauthenticated));
        cases.push(case("credentials", "unknown id", &Meta::unknown_id(label, credential), rpc.empty(), Code::Unauthenticated));
        cases.push(case("credentials", "id without secret", &Meta::id_only(label, credential), rpc.empty(), Code::Unauthenticated));
        cases.push(case("credentials", "secret not hex", &Meta::secret_not_hex(label, credential), rpc.empty(), Code::Unauthenticated));
    }
    // Only PublishMedia takes uploads: the catalog's other calls have the small limit.
    cases.push(
        raw(
            "oversized",
            "RegisterMerchant body 70000 bytes (over the 64 KiB limit)",
            &op,
            Rpc::RegisterMerchant,
            padded_empty(70_000),
            Code::ResourceExhausted,
        )
        .message_has("limit"),
    );
    cases.push(raw(
        "at the size limit",
        format!("RegisterMerchant body {REQUEST_BYTES_MAX} bytes (the limit)"),
        &op,
        Rpc::RegisterMerchant,
        padded_empty(REQUEST_BYTES_MAX - FRAME_HEADER_BYTES),
        Code::InvalidArgument,
    ));
    cases.push(
        raw(
            "oversized",
            format!("body {} bytes (upload limit + 1)", UPLOAD_BYTES_MAX + 1),
            &op,
            Rpc::PublishMedia,
            padded_empty(UPLOAD_BYTES_MAX + 1 - FRAME_HEADER_BYTES),
            Code::ResourceExhausted,
        )
        .message_has("limit"),
    );

    // Paths no RPC has: the front door knows the services, tonic the methods.
    let nope = |what: &str, who: &Meta, path: &'static str, expect: Code| Case {
        body: Body::Path(path, Vec::new()),
        ..case("unknown method", what, who, Rpc::Totals.empty(), expect)
    };
    cases.push(nope("a method MerchantService lacks", &a, "/vouchsafe.v1.MerchantService/Refund", Code::Unimplemented));
    cases.push(nope("a method MerchantService lacks", &Meta::anonymous(), "/vouchsafe.v1.MerchantService/Refund", Code::Unauthenticated));
    cases.push(nope("NodeService (served by nodes)", &a, "/vouchsafe.v1.NodeService/Redeem", Code::Unimplemented));
    cases.push(nope("a service that does not exist", &a, "/vouchsafe.v1.Nope/Reserve", Code::Unimplemented));
    cases.push(nope("a service that does not exist", &Meta::anonymous(), "/vouchsafe.v1.Nope/Reserve", Code::Unimplemented));

    // Unknown ids.
    let unknown = "unknown";
    let nf = Code::NotFound;
    cases.push(case("unknown id", "media never published", &a, Req::Reserve(reserve_request("unk-reserve", "md-never")), nf));
    cases.push(case(
        "unknown id",
        "voucher never reserved",
        &a,
        Req::Authorize(pb::AuthorizeRequest { request_id: "unk-authorize".into(), voucher_id: "v-never".into() }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "voucher never reserved",
        &a,
        Req::Void(pb::VoidRequest { request_id: "unk-void".into(), voucher_id: "v-never".into() }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "voucher never reserved",
        &a,
        Req::IssueVoucher(pb::IssueVoucherRequest { request_id: "unk-issue".into(), voucher_id: "v-never".into(), region: String::new() }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "media never published",
        &a,
        Req::Preview(pb::PreviewRequest { request_id: "unk-preview".into(), media_id: "md-never".into(), region: String::new() }),
        nf,
    ));
    cases.push(case("unknown id", "voucher never reserved", &a, Req::GetVoucher(pb::GetVoucherRequest { voucher_id: "v-never".into() }), nf));
    cases.push(case(
        "unknown id",
        "media never published",
        &a,
        Req::PlaceOrder(pb::PlaceOrderRequest { request_id: "unk-order".into(), media_id: "md-never".into(), units: 1 }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "order never placed",
        &a,
        Req::BindUnit(pb::BindUnitRequest {
            request_id: "unk-bind".into(),
            order_id: "o-never".into(),
            unit: 0,
            device_id: "dev-1".into(),
            device_public_key_der: w.consumer_der.clone(),
        }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "order never placed",
        &a,
        Req::CompleteUnit(pb::CompleteUnitRequest { request_id: "unk-unit".into(), order_id: "o-never".into(), unit: 0 }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "voucher never reserved",
        &x,
        Req::Redeem(pb::RedeemRequest { voucher_id: "v-never".into(), ..w.redeem("unk-redeem-1", &w.x.id) }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "certificate serial unknown",
        &x,
        Req::Redeem(pb::RedeemRequest { cert_serial: unknown.into(), ..w.redeem("unk-redeem-2", &w.x.id) }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "consumer never certified",
        &x,
        Req::Redeem(pb::RedeemRequest { consumer_id: "nobody".into(), ..w.redeem("unk-redeem-3", &w.x.id) }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "bob's serial, consumer alice",
        &x,
        Req::Redeem(pb::RedeemRequest { cert_serial: w.bob_serial.clone(), ..w.redeem("unk-redeem-4", &w.x.id) }),
        nf,
    ));
    cases.push(case("unknown id", "voucher never reserved", &x, Req::CompleteDelivery(w.complete("unk-complete", "v-never")), nf));
    cases.push(case(
        "unknown id",
        "voucher never reserved",
        &x,
        Req::FailDelivery(pb::FailDeliveryRequest { request_id: "unk-fail".into(), voucher_id: "v-never".into(), reason: "disk".into() }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "preview never started",
        &x,
        Req::EndPreview(pb::EndPreviewRequest { request_id: "unk-end".into(), preview_id: "p-never".into(), played_ms: 1 }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "media never published",
        &x,
        Req::FetchMedia(pb::FetchMediaRequest { media_id: "md-never".into(), part: pb::MediaPart::Container as i32 }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "consumer never certified",
        &op,
        Req::RevokeCert(pb::RevokeCertRequest {
            request_id: "unk-revoke-1".into(),
            cert_serial: w.alice_serial.clone(),
            reason: "lost".into(),
            consumer_id: "nobody".into(),
        }),
        nf,
    ));
    cases.push(case(
        "unknown id",
        "serial unknown for alice",
        &op,
        Req::RevokeCert(pb::RevokeCertRequest {
            request_id: "unk-revoke-2".into(),
            cert_serial: unknown.into(),
            reason: "lost".into(),
            consumer_id: "alice".into(),
        }),
        nf,
    ));

    // Fields that decode but break a rule.
    let ia = Code::InvalidArgument;
    cases.push(case("invalid field", "voucher id with a space", &a, Req::GetVoucher(pb::GetVoucherRequest { voucher_id: "not an id".into() }), ia));
    cases.push(case("invalid field", "voucher id of 65 characters", &a, Req::GetVoucher(pb::GetVoucherRequest { voucher_id: "v".repeat(65) }), ia));
    cases.push(case(
        "invalid field",
        "request id with a slash",
        &a,
        Req::Authorize(pb::AuthorizeRequest { request_id: "a/b".into(), voucher_id: sale.clone() }),
        ia,
    ));
    cases.push(case("invalid field", "ttl_ms 0", &a, Req::Reserve(pb::ReserveRequest { ttl_ms: 0, ..reserve_request("inv-reserve-1", &w.media) }), ia));
    cases.push(case(
        "invalid field",
        "ttl_ms 10 years",
        &a,
        Req::Reserve(pb::ReserveRequest { ttl_ms: 10 * 365 * 86_400_000, ..reserve_request("inv-reserve-2", &w.media) }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "a media listed twice",
        &a,
        Req::Reserve(pb::ReserveRequest { media_ids: vec![w.media.clone(), w.media.clone()], ..reserve_request("inv-reserve-3", &w.media) }),
        ia,
    ));
    cases.push(case("invalid field", "no media", &a, Req::Reserve(pb::ReserveRequest { media_ids: vec![], ..reserve_request("inv-reserve-4", &w.media) }), ia));
    cases.push(case(
        "invalid field",
        "unknown rendition",
        &a,
        Req::Reserve(pb::ReserveRequest { rendition: "8k".into(), ..reserve_request("inv-reserve-5", &w.media) }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "points account with a space",
        &a,
        Req::Reserve(pb::ReserveRequest { points_account: "my account".into(), ..reserve_request("inv-reserve-6", &w.media) }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "units 0",
        &a,
        Req::PlaceOrder(pb::PlaceOrderRequest { request_id: "inv-order".into(), media_id: w.media.clone(), units: 0 }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "unit 5 of a 2-unit order",
        &a,
        Req::BindUnit(pb::BindUnitRequest {
            request_id: "inv-bind-1".into(),
            order_id: w.order.clone(),
            unit: 5,
            device_id: "dev-1".into(),
            device_public_key_der: w.consumer_der.clone(),
        }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "device key not RSA",
        &a,
        Req::BindUnit(pb::BindUnitRequest {
            request_id: "inv-bind-2".into(),
            order_id: w.order.clone(),
            unit: 0,
            device_id: "dev-1".into(),
            device_public_key_der: vec![1, 2, 3],
        }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "endpoint ftp://",
        &x,
        Req::RegisterNode(pb::RegisterNodeRequest { region: String::new(), slots_max: 0, endpoint: "ftp://127.0.0.1:1".into() }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "endpoint of 300 characters",
        &x,
        Req::RegisterNode(pb::RegisterNodeRequest { region: String::new(), slots_max: 0, endpoint: format!("http://{}", "h".repeat(293)) }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "challenge of 8 bytes",
        &x,
        Req::Redeem(pb::RedeemRequest { challenge: vec![7; 8], ..w.redeem("inv-redeem", &w.x.id) }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "content hash of 5 bytes",
        &x,
        Req::CompleteDelivery(pb::CompleteDeliveryRequest { content_hash: vec![1; 5], ..w.complete("inv-complete-1", sale) }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "media not in the voucher",
        &x,
        Req::CompleteDelivery(pb::CompleteDeliveryRequest { media_id: "md-other".into(), ..w.complete("inv-complete-2", sale) }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "empty reason",
        &x,
        Req::FailDelivery(pb::FailDeliveryRequest { request_id: "inv-fail".into(), voucher_id: sale.clone(), reason: String::new() }),
        ia,
    ));
    cases.push(case("invalid field", "part unspecified", &x, Req::FetchMedia(pb::FetchMediaRequest { media_id: w.media.clone(), part: 0 }), ia));
    cases.push(case("invalid field", "part 99", &x, Req::FetchMedia(pb::FetchMediaRequest { media_id: w.media.clone(), part: 99 }), ia));
    cases.push(case(
        "invalid field",
        "container not a container",
        &op,
        Req::PublishMedia(pb::PublishMediaRequest { container: vec![1, 2, 3], ..w.publish_request("inv-publish-1") }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "wrapped key not for the engine",
        &op,
        Req::PublishMedia(pb::PublishMediaRequest { wrapped_media_key: vec![9; 256], ..w.publish_request("inv-publish-2") }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "no royalty terms",
        &op,
        Req::PublishMedia(pb::PublishMediaRequest { terms: None, ..w.publish_request("inv-publish-3") }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "empty name",
        &op,
        Req::RegisterMerchant(pb::RegisterMerchantRequest { request_id: "inv-merchant".into(), name: String::new() }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "slots_max 0",
        &op,
        Req::RegisterNodeCredential(pb::RegisterNodeCredentialRequest { request_id: "inv-node".into(), region: "eu".into(), slots_max: 0 }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "public key not RSA",
        &op,
        Req::CertifyConsumer(pb::CertifyConsumerRequest {
            request_id: "inv-cert-1".into(),
            consumer_id: "carol".into(),
            public_key_der: vec![1, 2, 3],
            validity_ms: 1000,
        }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "validity 0",
        &op,
        Req::CertifyConsumer(pb::CertifyConsumerRequest {
            request_id: "inv-cert-2".into(),
            consumer_id: "carol".into(),
            public_key_der: w.consumer_der.clone(),
            validity_ms: 0,
        }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "empty reason",
        &op,
        Req::RevokeCert(pb::RevokeCertRequest {
            request_id: "inv-revoke".into(),
            cert_serial: w.alice_serial.clone(),
            reason: String::new(),
            consumer_id: "alice".into(),
        }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "amount 0",
        &op,
        Req::TopUpPoints(pb::TopUpPointsRequest { request_id: "inv-topup".into(), account_id: "acct-2".into(), amount: 0 }),
        ia,
    ));
    cases.push(case(
        "invalid field",
        "empty name",
        &op,
        Req::RegisterAuditor(pb::RegisterAuditorRequest { request_id: "inv-auditor".into(), name: String::new() }),
        ia,
    ));
    cases.push(case("invalid field", "pinned seal hash of 5 bytes", &auditor, Req::Replay(pb::ReplayRequest { pinned_seal_hash: vec![1; 5] }), ia));

    // Merchant B on merchant A's vouchers and order.
    let pd = Code::PermissionDenied;
    cases.push(case("merchant B on A's", "A's issued voucher", &b, Req::GetVoucher(pb::GetVoucherRequest { voucher_id: sale.clone() }), pd));
    cases.push(case("merchant B on A's", "A's pending voucher", &b, Req::GetVoucher(pb::GetVoucherRequest { voucher_id: w.pending.clone() }), pd));
    cases.push(case(
        "merchant B on A's",
        "A's issued voucher",
        &b,
        Req::Authorize(pb::AuthorizeRequest { request_id: "b-authorize-1".into(), voucher_id: sale.clone() }),
        pd,
    ));
    cases.push(case(
        "merchant B on A's",
        "A's pending voucher",
        &b,
        Req::Authorize(pb::AuthorizeRequest { request_id: "b-authorize-2".into(), voucher_id: w.pending.clone() }),
        pd,
    ));
    cases.push(case("merchant B on A's", "A's issued voucher", &b, Req::Void(pb::VoidRequest { request_id: "b-void-1".into(), voucher_id: sale.clone() }), pd));
    cases.push(case(
        "merchant B on A's",
        "A's pending voucher",
        &b,
        Req::Void(pb::VoidRequest { request_id: "b-void-2".into(), voucher_id: w.pending.clone() }),
        pd,
    ));
    cases.push(case(
        "merchant B on A's",
        "A's issued voucher",
        &b,
        Req::IssueVoucher(pb::IssueVoucherRequest { request_id: "b-issue-1".into(), voucher_id: sale.clone(), region: String::new() }),
        pd,
    ));
    cases.push(case(
        "merchant B on A's",
        "A's authorized voucher",
        &b,
        Req::IssueVoucher(pb::IssueVoucherRequest { request_id: "b-issue-2".into(), voucher_id: w.authorized.clone(), region: String::new() }),
        pd,
    ));
    cases.push(case(
        "merchant B on A's",
        "A's order",
        &b,
        Req::BindUnit(pb::BindUnitRequest {
            request_id: "b-bind".into(),
            order_id: w.order.clone(),
            unit: 0,
            device_id: "dev-b".into(),
            device_public_key_der: w.consumer_der.clone(),
        }),
        pd,
    ));
    cases.push(case(
        "merchant B on A's",
        "A's order",
        &b,
        Req::CompleteUnit(pb::CompleteUnitRequest { request_id: "b-unit".into(), order_id: w.order.clone(), unit: 0 }),
        pd,
    ));
    // A's reservation ids are derived from (merchant, request id): B's same request id is B's own.
    cases.push(case("merchant B on A's", "A's request id is B's own voucher", &b, Req::Reserve(reserve_request("sale-reserve", "md-never")), nf));

    // Node Y on node X's assignments.
    cases.push(case("node Y on X's", "a valid proof made for Y", &y, Req::Redeem(w.redeem("y-redeem-1", &w.y.id)), pd));
    cases.push(case("node Y on X's", "X's proof", &y, Req::Redeem(w.redeem("y-redeem-2", &w.x.id)), pd));
    cases.push(case("node Y on X's", "X's voucher", &y, Req::CompleteDelivery(w.complete("y-complete", sale)), pd));
    cases.push(case(
        "node Y on X's",
        "X's voucher",
        &y,
        Req::FailDelivery(pb::FailDeliveryRequest { request_id: "y-fail".into(), voucher_id: sale.clone(), reason: "disk".into() }),
        pd,
    ));
    cases.push(case(
        "node Y on X's",
        "X's preview",
        &y,
        Req::EndPreview(pb::EndPreviewRequest { request_id: "y-end".into(), preview_id: w.preview.clone(), played_ms: 1000 }),
        pd,
    ));

    // Wrong receipt proofs, presented by the assigned node for a valid certificate.
    let challenge = vec![7u8; 32];
    let proof_case = |what: &str, request_id: &str, proof: Vec<u8>| {
        case("wrong receipt proof", what, &x, Req::Redeem(pb::RedeemRequest { proof, ..w.redeem(request_id, &w.x.id) }), pd)
    };
    cases.push(proof_case("32 random bytes", "bad-proof-1", crypto::random_bytes::<32>().to_vec()));
    cases.push(proof_case("empty", "bad-proof-2", Vec::new()));
    cases.push(proof_case("bound to node Y", "bad-proof-3", World::proof(&w.sale.receipt, sale, &w.y.id, &challenge)));
    cases.push(proof_case("another voucher's receipt", "bad-proof-4", World::proof(&w.second.receipt, sale, &w.x.id, &challenge)));
    cases.push(proof_case("bound to another voucher", "bad-proof-5", World::proof(&w.sale.receipt, &w.second.voucher_id, &w.x.id, &challenge)));
    cases.push(proof_case("over another challenge", "bad-proof-6", World::proof(&w.sale.receipt, sale, &w.x.id, &[8u8; 32])));
    cases.push(proof_case("the access token instead", "bad-proof-7", w.sale.access_token.clone()));

    // Certificates.
    cases.push(
        case(
            "certificate",
            "revoked (bob)",
            &x,
            Req::Redeem(pb::RedeemRequest { consumer_id: "bob".into(), cert_serial: w.bob_serial.clone(), ..w.redeem("cert-redeem-1", &w.x.id) }),
            pd,
        )
        .message_has("revoked"),
    );
    cases.push(
        case(
            "certificate",
            "expired (erin)",
            &x,
            Req::Redeem(pb::RedeemRequest { consumer_id: "erin".into(), cert_serial: w.erin_serial.clone(), ..w.redeem("cert-redeem-2", &w.x.id) }),
            pd,
        )
        .message_has("not valid at this time"),
    );

    // The voucher's state forbids the command.
    let fp = Code::FailedPrecondition;
    cases.push(
        case(
            "wrong state",
            "reservation expired",
            &a,
            Req::Authorize(pb::AuthorizeRequest { request_id: "st-authorize-1".into(), voucher_id: w.expired.clone() }),
            fp,
        )
        .message_has("expired at"),
    );
    cases.push(case(
        "wrong state",
        "already issued",
        &a,
        Req::Authorize(pb::AuthorizeRequest { request_id: "st-authorize-2".into(), voucher_id: sale.clone() }),
        fp,
    ));
    cases.push(case("wrong state", "already issued", &a, Req::Void(pb::VoidRequest { request_id: "st-void".into(), voucher_id: sale.clone() }), fp));
    cases.push(case(
        "wrong state",
        "still pending",
        &a,
        Req::IssueVoucher(pb::IssueVoucherRequest { request_id: "st-issue".into(), voucher_id: w.pending.clone(), region: String::new() }),
        fp,
    ));
    cases.push(case(
        "wrong state",
        "unit not bound",
        &a,
        Req::CompleteUnit(pb::CompleteUnitRequest { request_id: "st-unit".into(), order_id: w.order.clone(), unit: 1 }),
        fp,
    ));
    cases.push(case(
        "wrong state",
        "points account empty",
        &a,
        Req::Reserve(pb::ReserveRequest { points_account: "acct-empty".into(), ..reserve_request("st-reserve", &w.media) }),
        fp,
    ));
    cases.push(case("wrong state", "not redeemed yet", &x, Req::CompleteDelivery(w.complete("st-complete", sale)), fp));
    cases.push(case("wrong state", "never announced (RegisterNode)", &z, Req::Heartbeat(pb::HeartbeatRequest::default()), fp));

    // A request id reused for another command on the same voucher.
    cases.push(case(
        "request id reused",
        "Authorize's id for Void",
        &a,
        Req::Void(pb::VoidRequest { request_id: "sale-authorize".into(), voucher_id: sale.clone() }),
        ia,
    ));
    cases.push(case(
        "request id reused",
        "IssueVoucher's id for Authorize",
        &a,
        Req::Authorize(pb::AuthorizeRequest { request_id: "sale-issue".into(), voucher_id: sale.clone() }),
        ia,
    ));
    cases.push(case(
        "request id reused",
        "Reserve's id for IssueVoucher",
        &a,
        Req::IssueVoucher(pb::IssueVoucherRequest { request_id: "sale-reserve".into(), voucher_id: sale.clone(), region: String::new() }),
        ia,
    ));
    cases.push(case(
        "request id reused",
        "Certify's id for Revoke",
        &op,
        Req::RevokeCert(pb::RevokeCertRequest {
            request_id: "cert-alice".into(),
            cert_serial: w.alice_serial.clone(),
            reason: "lost".into(),
            consumer_id: "alice".into(),
        }),
        ia,
    ));

    // The same request retried: the first answer, nothing new written.
    let debug = |bytes: &[u8]| format!("{bytes:?}");
    cases.push(
        case(
            "retried request",
            "Reserve sale-reserve",
            &a,
            Req::Reserve(pb::ReserveRequest { payment_ref: "card-sale".into(), ..reserve_request("sale-reserve", &w.media) }),
            Code::Ok,
        )
        .answer_has(sale.clone()),
    );
    cases.push(
        case(
            "retried request",
            "Authorize sale-authorize",
            &a,
            Req::Authorize(pb::AuthorizeRequest { request_id: "sale-authorize".into(), voucher_id: sale.clone() }),
            Code::Ok,
        )
        .answer_has(debug(&w.sale.receipt)),
    );
    cases.push(
        case(
            "retried request",
            "IssueVoucher sale-issue",
            &a,
            Req::IssueVoucher(pb::IssueVoucherRequest { request_id: "sale-issue".into(), voucher_id: sale.clone(), region: String::new() }),
            Code::Ok,
        )
        .answer_has(w.sale.node_id.clone())
        .answer_has(debug(&w.sale.access_token)),
    );
    cases.push(
        case(
            "retried request",
            "Preview preview-1",
            &a,
            Req::Preview(pb::PreviewRequest { request_id: "preview-1".into(), media_id: w.media.clone(), region: String::new() }),
            Code::Ok,
        )
        .answer_has(w.preview.clone()),
    );
    cases.push(
        case(
            "retried request",
            "PlaceOrder order-1",
            &a,
            Req::PlaceOrder(pb::PlaceOrderRequest { request_id: "order-1".into(), media_id: w.media.clone(), units: 2 }),
            Code::Ok,
        )
        .answer_has(w.order.clone()),
    );
    cases.push(
        case(
            "retried request",
            "CertifyConsumer cert-alice",
            &op,
            Req::CertifyConsumer(pb::CertifyConsumerRequest {
                request_id: "cert-alice".into(),
                consumer_id: "alice".into(),
                public_key_der: w.consumer_der.clone(),
                validity_ms: 86_400_000,
            }),
            Code::Ok,
        )
        .answer_has(w.alice_serial.clone()),
    );
    cases.push(case(
        "retried request",
        "RevokeCert revoke-bob",
        &op,
        Req::RevokeCert(pb::RevokeCertRequest {
            request_id: "revoke-bob".into(),
            cert_serial: w.bob_serial.clone(),
            reason: "lost".into(),
            consumer_id: "bob".into(),
        }),
        Code::Ok,
    ));
    cases.push(
        case(
            "retried request",
            "TopUpPoints topup-1",
            &op,
            Req::TopUpPoints(pb::TopUpPointsRequest { request_id: "topup-1".into(), account_id: "acct-1".into(), amount: 500 }),
            Code::Ok,
        )
        .answer_has("balance: 500"),
    );
    // By the documented idempotency rule (same request id, same command: the first answer),
    // a "retry" that asks for something else gets the first reservation, not a refusal.
    cases.push(
        case(
            "retried request",
            "Reserve sale-reserve, other ttl",
            &a,
            Req::Reserve(pb::ReserveRequest { ttl_ms: 60_000, ..reserve_request("sale-reserve", &w.media) }),
            Code::Ok,
        )
        .answer_has(sale.clone()),
    );
    // A credential's secret is shown once: its retry is refused, not answered.
    cases.push(case(
        "retried request",
        "RegisterMerchant merchant-a",
        &op,
        Req::RegisterMerchant(pb::RegisterMerchantRequest { request_id: "merchant-a".into(), name: "Shop A".into() }),
        Code::AlreadyExists,
    ));
    cases.push(case(
        "retried request",
        "RegisterNodeCredential node-eu",
        &op,
        Req::RegisterNodeCredential(pb::RegisterNodeCredentialRequest { request_id: "node-eu".into(), region: "eu".into(), slots_max: 16 }),
        Code::AlreadyExists,
    ));
    cases.push(case(
        "retried request",
        "RegisterAuditor auditor-1",
        &op,
        Req::RegisterAuditor(pb::RegisterAuditorRequest { request_id: "auditor-1".into(), name: "Agent 1".into() }),
        Code::AlreadyExists,
    ));
    cases.push(case(
        "retried request",
        "RevokeCert of a revoked cert, new id",
        &op,
        Req::RevokeCert(pb::RevokeCertRequest {
            request_id: "revoke-bob-again".into(),
            cert_serial: w.bob_serial.clone(),
            reason: "lost".into(),
            consumer_id: "bob".into(),
        }),
        Code::Ok,
    ));

    // Which check refused it, where the code alone could come from another one.
    for case in &mut cases {
        if case.message_has.is_none() {
            case.message_has = match (case.category, case.expect) {
                ("merchant B on A's", Code::PermissionDenied) => Some("belongs to another merchant"),
                ("node Y on X's", _) => Some("not assigned to this delivery node"),
                ("wrong receipt proof", _) => Some("receipt proof does not verify"),
                ("request id reused", _) => Some("request id was already used"),
                ("undecodable, wrong role", _) => Some("may not call"),
                ("undecodable, no credential" | "oversized, no credential", _) => Some("missing"),
                (_, Code::NotFound) => Some("unknown"),
                _ => None,
            };
        }
    }
    cases
}

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
    let leaked = tokio::time::timeout(Duration::from_millis(300), feeds[1].message()).await;
    assert!(leaked.is_err(), "node Y's feed carried someone else's assignment: {:?}", leaked.map(|m| m.map(|a| a.map(|a| a.voucher_id))));
    drop(feeds);

    let x = Meta::of("node X (assigned)", &world.x);
    let a = Meta::of("merchant A", &world.a);
    let sale = &world.sale.voucher_id;
    let ia = Code::InvalidArgument;
    let after = vec![
        case("after the refusals", "alice redeems", &x, Req::Redeem(world.redeem("good-redeem", &world.x.id)), Code::Ok).writes(1),
        case("after the refusals", "the same redemption retried", &x, Req::Redeem(world.redeem("good-redeem", &world.x.id)), Code::Ok),
        case("after the refusals", "alice again, new id (node restart)", &x, Req::Redeem(world.redeem("good-redeem-2", &world.x.id)), Code::Ok),
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

/// The expected table: "allowed" or the exact code of the refusal. The owner is merchant A
/// (for vouchers, previews and orders A made) and node X (for what was assigned to X);
/// where an RPC names nothing owned (Reserve, Preview, PlaceOrder, RegisterNode, Heartbeat,
/// SubscribeAssignments, FetchMedia) the "other" merchant or node is simply another one.
const EXPECTED_ACCESS: &[(&str, [&str; 7])] = &[
    //                              operator            merchant owner      merchant other      node owner          node other          auditor             anonymous
    (
        "Reserve",
        /*             */ ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Authorize",
        /*           */
        ["PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Void",
        /*                */
        ["PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "IssueVoucher",
        /*        */ ["PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Preview",
        /*             */ ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "GetVoucher",
        /*          */
        ["PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "PlaceOrder",
        /*          */ ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "BindUnit",
        /*            */
        ["PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "CompleteUnit",
        /*        */ ["PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RegisterNode",
        /*        */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "allowed", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Heartbeat",
        /*           */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "allowed", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "SubscribeAssignments",
        /**/ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "allowed", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Redeem",
        /*              */
        ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "CompleteDelivery",
        /*    */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "FailDelivery",
        /*        */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "EndPreview",
        /*          */
        ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "FetchMedia",
        /*          */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "allowed", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "PublishMedia",
        /*        */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RegisterMerchant",
        /*    */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RegisterNodeCredential",
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "CertifyConsumer",
        /*     */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RevokeCert",
        /*          */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "TopUpPoints",
        /*         */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RegisterAuditor",
        /*     */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Replay",
        /*              */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "Unauthenticated"],
    ),
    (
        "VerifyChain",
        /*         */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "Unauthenticated"],
    ),
    (
        "Totals",
        /*              */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "Unauthenticated"],
    ),
    (
        "GetStats",
        /*            */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "GetConfig",
        /*           */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "SetConfig",
        /*           */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "DrainNode",
        /*           */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RemoveNode",
        /*          */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
];

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
            }),
            Rpc::CompleteUnit => Req::CompleteUnit(pb::CompleteUnitRequest { request_id: "acc-unit".into(), order_id: self.order.clone(), unit: 0 }),
            Rpc::RegisterNode => Req::RegisterNode(pb::RegisterNodeRequest { region: String::new(), slots_max: 0, endpoint: "http://127.0.0.1:3".into() }),
            Rpc::Heartbeat => Req::Heartbeat(pb::HeartbeatRequest { slots_in_use: 1, cache_items: 1, cache_accesses: 1, cache_misses: 0 }),
            Rpc::SubscribeAssignments => Req::SubscribeAssignments(pb::SubscribeAssignmentsRequest { after_seq: 0 }),
            Rpc::Redeem => Req::Redeem(self.redeem("acc-redeem", &self.x.id)),
            Rpc::CompleteDelivery => Req::CompleteDelivery(self.complete("acc-complete", &sale)),
            Rpc::FailDelivery => Req::FailDelivery(pb::FailDeliveryRequest {
                request_id: "acc-fail".into(),
                voucher_id: self.second.voucher_id.clone(),
                reason: "disk full".into(),
            }),
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
            Rpc::TopUpPoints => Req::TopUpPoints(pb::TopUpPointsRequest { request_id: "acc-topup".into(), account_id: "acct-1".into(), amount: 100 }),
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
        }
    }
}

fn cell(code: Code) -> String {
    if code == Code::Ok { "allowed".to_string() } else { format!("{code:?}") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_matrix_every_role_by_every_rpc() {
    let world = build_world().await;
    assert_eq!(EXPECTED_ACCESS.len(), Rpc::ALL.len(), "one expected row per RPC");
    let mut actual: Vec<(Rpc, Vec<(String, u64)>)> = Vec::new();
    let mut mismatches = Vec::new();
    // RPC by RPC, every role in turn: each request is refused before any state check for
    // every role but the rightful one, so the one allowed call changes nothing the others see.
    for (&rpc, (name, expected)) in Rpc::ALL.iter().zip(EXPECTED_ACCESS) {
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

/// RegisterNode carries the node's capacity; every change is an event. Changing it back
/// and forth must keep working (each change is a new request, not a retry of an old one).
///
/// The bug this catches: `register_node` in gateways/src/server.rs names the change
/// `capacity-{node}-{slots_max}`, so a change to a value the node had announced before is
/// taken for a retry of that earlier request and dropped, while the node is told it worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_changes_its_capacity_back_and_forth() {
    let fx = start().await;
    let mut catalog = client::catalog(fx.channel.clone(), fx.operator.clone());
    let node = credential(
        catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "node-1".into(), region: "eu".into(), slots_max: 4 }).await,
    );
    let mut delivery = client::delivery(fx.channel.clone(), node.clone());
    let mut recorded = Vec::new();
    for slots_max in [8, 4, 8, 4] {
        let head = fx.head().await;
        delivery
            .register_node(pb::RegisterNodeRequest { region: String::new(), slots_max, endpoint: "http://127.0.0.1:1".into() })
            .await
            .expect("register node");
        let state = fx.engine.state.market.handler().load::<engine::domain::party::Node>(&node.id).await.expect("load the node").state.clone();
        recorded.push((slots_max, state.slots_max, fx.head().await - head));
    }
    assert_eq!(recorded, vec![(8, 8, 1), (4, 4, 1), (8, 8, 1), (4, 4, 1)], "(announced, recorded, events appended) per RegisterNode");
    fx.engine.shutdown().await.expect("graceful shutdown");
}
