//! The operator's administration reaches the domain: `vouchsafe admin merchant
//! suspend|reinstate`, `admin auditor revoke`, `admin media withdraw|price` and `admin cert
//! revoke`, run as the binary against an engine in this process, each writing its event and
//! having its effect over gRPC: a suspended merchant sells nothing until reinstated; a
//! revoked auditor is refused by AuditService; a withdrawn media is not sold; a new price
//! applies to later reservations only; a revoked certificate redeems nothing. Every refusal
//! is checked against an unchanged stream head, and each refusal has its control: the same
//! call by the operator, or before the change, works.
//!
//! Repeats are what the domain decides: a second suspension, reinstatement, withdrawal or
//! revocation answers `"changed": false` and writes nothing; a price change is recorded
//! each time.

mod support;

use engine::domain::event::{ActorKind, Event, Recorded};
use engine::ids::Seq;
use gateways::common::client;
use gateways::common::cred::Credential;
use proto::v1 as pb;
use std::path::PathBuf;
use support::sale::{Named, buy_in, credential, proof, reserve_request, upload};
use tonic::Code;

struct World {
    fx: support::Fixture,
    keys: PathBuf,
    merchant: Credential,
    node: Credential,
    auditor: Credential,
    media: String,
}

/// A quiet engine with a merchant, an announced node, an auditor and one published song
/// (199 minor units).
async fn world() -> World {
    let fx = support::start().await;
    let keys = fx._dir.path().join("keys");
    let mut catalog = client::catalog(fx.channel.clone(), fx.operator.clone());
    let merchant = credential(catalog.register_merchant(pb::RegisterMerchantRequest { request_id: "reg-shop".into(), name: "Shop".into() }).await);
    let node = credential(
        catalog.register_node_credential(pb::RegisterNodeCredentialRequest { request_id: "reg-node".into(), region: "eu".into(), slots_max: 16 }).await,
    );
    let auditor = credential(catalog.register_auditor(pb::RegisterAuditorRequest { request_id: "reg-auditor".into(), name: "Agent".into() }).await);
    let mut delivery = client::delivery(fx.channel.clone(), node.clone());
    delivery
        .register_node(pb::RegisterNodeRequest { region: "eu".into(), slots_max: 16, endpoint: "http://127.0.0.1:1".into() })
        .await
        .expect("the node announces itself");
    let media = client::publish(&mut catalog, "pub-song", &fx.engine_public, upload("Song")).await.expect("publish").media_id;
    fx.settle().await;
    World { fx, keys, merchant, node, auditor, media }
}

/// What one run of the binary answered.
struct Ran {
    code: i32,
    /// The JSON object on stdout's last line (none for a usage error).
    json: Option<serde_json::Value>,
    stderr: String,
}

/// Runs `vouchsafe admin ARGS --connect URL --keys KEYS --json`.
async fn admin_cli(url: &str, keys: &std::path::Path, args: &[&str]) -> Ran {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vouchsafe"));
    command.env_remove("RUST_LOG").arg("admin").args(args).args(["--connect", url, "--keys"]).arg(keys).arg("--json");
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("the task runs").expect("run vouchsafe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout.lines().last().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}")));
    Ran { code: output.status.code().unwrap_or(-1), json, stderr: String::from_utf8_lossy(&output.stderr).into_owned() }
}

impl World {
    async fn admin(&self, args: &[&str]) -> Ran {
        admin_cli(&self.fx.engine.url(), &self.keys, args).await
    }

    /// Runs an admin command that must work; answers its JSON object.
    async fn admin_ok(&self, args: &[&str]) -> serde_json::Value {
        let ran = self.admin(args).await;
        assert_eq!(ran.code, 0, "{args:?}: {}", ran.stderr);
        ran.json.expect("a JSON answer")
    }

    /// Runs an admin command the engine must refuse with `code`; checks it wrote nothing.
    async fn admin_refused(&self, args: &[&str], code: Code) {
        let head = self.fx.head().await;
        let ran = self.admin(args).await;
        assert_eq!(ran.code, 1, "{args:?} is a refused command: {}", ran.stderr);
        assert_eq!(ran.json.as_ref().and_then(|json| json["refused"].as_str()), Some(format!("{code:?}").as_str()), "{args:?}: {}", ran.stderr);
        assert_eq!(self.fx.head().await, head, "{args:?} was refused and wrote nothing");
    }

    /// The events appended after sequence `after`.
    async fn events_after(&self, after: u64) -> Vec<Recorded> {
        let head = self.fx.head().await;
        if head <= after {
            return Vec::new();
        }
        let stored = self.fx.log.read_from(Seq(after + 1), usize::try_from(head - after).expect("a count")).await.expect("read the stream");
        stored.iter().map(|event| engine::wire::decode(&event.payload).expect("the engine writes events that decode")).collect()
    }

    /// Runs an admin change that must work and write exactly `expected`, by the operator.
    async fn admin_writes(&self, args: &[&str], expected: &[Event]) -> serde_json::Value {
        let head = self.fx.head().await;
        let answer = self.admin_ok(args).await;
        let events = self.events_after(head).await;
        let written: Vec<&Event> = events.iter().map(|recorded| &recorded.event).collect();
        assert_eq!(written, expected.iter().collect::<Vec<_>>(), "{args:?}");
        for recorded in &events {
            assert_eq!((recorded.actor.kind, recorded.actor.id.as_str()), (ActorKind::Operator, self.fx.operator.id.as_str()), "{args:?}");
        }
        answer
    }

    fn shop(&self) -> client::MerchantClient {
        client::merchant(self.fx.channel.clone(), self.merchant.clone())
    }
}

fn merchant_id(world: &World) -> engine::ids::MerchantId {
    engine::ids::MerchantId::new(&world.merchant.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_merchant_sells_nothing_until_reinstated() {
    let w = world().await;
    let mut shop = w.shop();
    // Control: the merchant sells before the suspension.
    shop.reserve(reserve_request("before", &w.media)).await.expect("an active merchant reserves");

    let suspended = Event::MerchantSuspended { merchant_id: merchant_id(&w), reason: "chargebacks".into() };
    let answer = w.admin_writes(&["merchant", "suspend", &w.merchant.id, "--reason", "chargebacks"], &[suspended]).await;
    assert_eq!(answer, serde_json::json!({ "merchant_id": w.merchant.id, "status": "suspended", "changed": true }));
    let head = w.fx.head().await;
    let refused = shop.reserve(reserve_request("during", &w.media)).await.expect_err("a suspended merchant sells nothing");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("suspended"), "{refused:?}");
    assert_eq!(w.fx.head().await, head, "the refused reservation wrote nothing");
    // A second suspension is the domain's no-op: answered, nothing written.
    let again = w.admin_writes(&["merchant", "suspend", &w.merchant.id], &[]).await;
    assert_eq!(again, serde_json::json!({ "merchant_id": w.merchant.id, "status": "suspended", "changed": false }));

    // Reinstated (the default reason when --reason is absent), it sells again.
    let reinstated = Event::MerchantReinstated { merchant_id: merchant_id(&w), reason: "reinstated by the operator".into() };
    let answer = w.admin_writes(&["merchant", "reinstate", &w.merchant.id], &[reinstated]).await;
    assert_eq!(answer, serde_json::json!({ "merchant_id": w.merchant.id, "status": "active", "changed": true }));
    shop.reserve(reserve_request("after", &w.media)).await.expect("a reinstated merchant sells again");
    let again = w.admin_writes(&["merchant", "reinstate", &w.merchant.id], &[]).await;
    assert_eq!(again["changed"], false, "reinstating an active merchant changes nothing");

    // Bad input: a precise status, nothing written.
    w.admin_refused(&["merchant", "suspend", "m0unknown"], Code::NotFound).await;
    w.admin_refused(&["merchant", "reinstate", "m0unknown"], Code::NotFound).await;
    w.admin_refused(&["merchant", "suspend", ""], Code::InvalidArgument).await;
    w.admin_refused(&["merchant", "suspend", "m.1"], Code::InvalidArgument).await;
    w.admin_refused(&["merchant", "suspend", &w.merchant.id, "--reason", " "], Code::InvalidArgument).await;
    // A node's id names no merchant.
    w.admin_refused(&["merchant", "suspend", &w.node.id], Code::NotFound).await;
    let status = w.admin_ok(&["merchant", "suspend", &w.merchant.id, "--request-id", "late"]).await;
    assert_eq!(status["changed"], true, "control: the refusals above left the merchant suspendable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_auditor_can_no_longer_verify_or_replay() {
    let w = world().await;
    let mut audit = client::audit(w.fx.channel.clone(), w.auditor.clone());
    // Control: the auditor verifies and reads totals before the revocation.
    audit.verify_chain(pb::VerifyChainRequest {}).await.expect("an active auditor verifies");
    audit.totals(pb::TotalsRequest {}).await.expect("an active auditor reads totals");

    let revoked = Event::AuditorRevoked { auditor_id: engine::ids::AuditorId::new(&w.auditor.id), reason: "contract ended".into() };
    let answer = w.admin_writes(&["auditor", "revoke", &w.auditor.id, "--reason", "contract ended"], &[revoked]).await;
    assert_eq!(answer, serde_json::json!({ "auditor_id": w.auditor.id, "status": "revoked", "changed": true }));

    let head = w.fx.head().await;
    let verify = audit.verify_chain(pb::VerifyChainRequest {}).await.expect_err("a revoked auditor verifies nothing");
    assert_eq!(verify.code(), Code::Unauthenticated, "{verify:?}");
    let totals = audit.totals(pb::TotalsRequest {}).await.expect_err("a revoked auditor reads nothing");
    assert_eq!(totals.code(), Code::Unauthenticated, "{totals:?}");
    let replay = audit.replay(pb::ReplayRequest::default()).await.expect_err("a revoked auditor replays nothing");
    assert_eq!(replay.code(), Code::Unauthenticated, "{replay:?}");
    assert_eq!(w.fx.head().await, head, "the refused calls wrote nothing");
    // Control: AuditService itself still answers the operator.
    let mut operator_audit = client::audit(w.fx.channel.clone(), w.fx.operator.clone());
    operator_audit.verify_chain(pb::VerifyChainRequest {}).await.expect("the operator still verifies");

    let again = w.admin_writes(&["auditor", "revoke", &w.auditor.id], &[]).await;
    assert_eq!(again["changed"], false, "revoking a revoked auditor changes nothing");
    w.admin_refused(&["auditor", "revoke", "a0unknown"], Code::NotFound).await;
    w.admin_refused(&["auditor", "revoke", ""], Code::InvalidArgument).await;
    w.admin_refused(&["auditor", "revoke", &w.merchant.id], Code::NotFound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_applies_to_later_reservations_and_a_withdrawn_media_is_not_sold() {
    let w = world().await;
    let mut shop = w.shop();
    let media_id = engine::ids::MediaId::new(&w.media);
    let earlier = shop.reserve(reserve_request("at-199", &w.media)).await.expect("reserve").into_inner();
    assert_eq!(earlier.price_minor, 199, "the published price");

    let answer = w.admin_writes(&["media", "price", &w.media, "250"], &[Event::PriceChanged { media_id: media_id.clone(), price_minor: 250 }]).await;
    assert_eq!(answer, serde_json::json!({ "media_id": w.media, "status": "published", "price_minor": 250, "currency": "EUR", "changed": true }));
    let later = shop.reserve(reserve_request("at-250", &w.media)).await.expect("reserve").into_inner();
    assert_eq!(later.price_minor, 250, "a reservation after the change carries the new price");
    // The earlier reservation keeps its price, on the stream and when it is paid.
    let reserved_prices = |events: &[Recorded], voucher: &str| -> Vec<u64> {
        events
            .iter()
            .filter_map(|recorded| match &recorded.event {
                Event::Reserved { voucher_id, items, .. } if voucher_id.0 == voucher => Some(items.iter().map(|item| item.price_minor).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    let stream = w.events_after(0).await;
    assert_eq!(reserved_prices(&stream, &earlier.voucher_id), [199]);
    assert_eq!(reserved_prices(&stream, &later.voucher_id), [250]);
    let head = w.fx.head().await;
    shop.authorize(pb::AuthorizeRequest { request_id: "pay-199".into(), voucher_id: earlier.voucher_id.clone() }).await.expect("authorize");
    let paid: Vec<u64> = w
        .events_after(head)
        .await
        .iter()
        .filter_map(|recorded| match &recorded.event {
            Event::Authorized { postings, .. } => Some(postings.iter().map(|posting| posting.debit_minor).sum::<u64>()),
            _ => None,
        })
        .collect();
    assert_eq!(paid, [199], "the earlier reservation is paid at its own price");

    // The domain refuses a zero price; the command line refuses a negative one (a usage error).
    w.admin_refused(&["media", "price", &w.media, "0"], Code::InvalidArgument).await;
    w.admin_refused(&["media", "price", &w.media, &(engine::domain::catalog::PRICE_MINOR_MAX + 1).to_string()], Code::InvalidArgument).await;
    let head = w.fx.head().await;
    let negative = w.admin(&["media", "price", &w.media, "-5"]).await;
    assert_eq!(negative.code, 2, "a negative price is a usage error: {}", negative.stderr);
    assert_eq!(w.fx.head().await, head);
    w.admin_refused(&["media", "price", "md-unknown", "300"], Code::NotFound).await;
    w.admin_refused(&["media", "withdraw", "md-unknown"], Code::NotFound).await;
    w.admin_refused(&["media", "withdraw", ""], Code::InvalidArgument).await;
    // The same price again is recorded again: the domain decides a price change each time.
    w.admin_writes(&["media", "price", &w.media, "250"], &[Event::PriceChanged { media_id: media_id.clone(), price_minor: 250 }]).await;

    // Withdrawn, the media is not sold; a withdrawn media's price no longer changes.
    let withdrawn = Event::MediaWithdrawn { media_id: media_id.clone(), reason: "takedown notice".into() };
    let answer = w.admin_writes(&["media", "withdraw", &w.media, "--reason", "takedown notice"], &[withdrawn]).await;
    assert_eq!((answer["status"].as_str(), answer["changed"].as_bool()), (Some("withdrawn"), Some(true)));
    let head = w.fx.head().await;
    let refused = shop.reserve(reserve_request("withdrawn", &w.media)).await.expect_err("a withdrawn media is not sold");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("not for sale"), "{refused:?}");
    assert_eq!(w.fx.head().await, head, "the refused reservation wrote nothing");
    let again = w.admin_writes(&["media", "withdraw", &w.media], &[]).await;
    assert_eq!(again["changed"], false, "withdrawing a withdrawn media changes nothing");
    w.admin_refused(&["media", "price", &w.media, "300"], Code::FailedPrecondition).await;
    // Control: what was reserved before the withdrawal is still paid and issued.
    shop.authorize(pb::AuthorizeRequest { request_id: "pay-250".into(), voucher_id: later.voucher_id.clone() }).await.expect("authorize what was reserved");
}

/// A consumer with two certificates, and the world's merchant and node ready to sell to it.
struct Consumer {
    key_der: Vec<u8>,
    serials: [String; 2],
}

async fn certify(w: &World, consumer: &str) -> Consumer {
    let key = tokio::task::spawn_blocking(|| engine::crypto::RsaPrivate::generate(2048)).await.expect("task").expect("rsa");
    let key_der = key.public().to_der().expect("der");
    let mut catalog = client::catalog(w.fx.channel.clone(), w.fx.operator.clone());
    let mut serials = Vec::new();
    for index in 0..2 {
        let cert = catalog
            .certify_consumer(pb::CertifyConsumerRequest {
                request_id: format!("cert-{consumer}-{index}"),
                consumer_id: consumer.into(),
                public_key_der: key_der.clone(),
                validity_ms: 86_400_000,
            })
            .await
            .expect("certify")
            .into_inner();
        serials.push(cert.cert_serial);
    }
    Consumer { key_der, serials: serials.try_into().expect("two serials") }
}

/// The node's Redeem of `sale` for `consumer` with certificate `serial`.
fn redeem(sale: &client::Sale, node: &str, consumer: &str, serial: &str, key_der: &[u8], request: &str) -> pb::RedeemRequest {
    let challenge = engine::crypto::random_bytes::<32>();
    let named = Named { consumer, cert_serial: serial, public_key_der: key_der };
    pb::RedeemRequest {
        request_id: request.into(),
        voucher_id: sale.voucher_id.clone(),
        cert_serial: serial.into(),
        consumer_id: consumer.into(),
        challenge: challenge.to_vec(),
        proof: proof(&sale.receipt, &sale.voucher_id, node, &challenge, &named),
        recover: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_can_no_longer_redeem() {
    let w = world().await;
    let alice = certify(&w, "alice").await;
    let mut shop = w.shop();
    let mut node = client::delivery(w.fx.channel.clone(), w.node.clone());
    let sales = [buy_in(&mut shop, "s1", &w.media, "eu").await.expect("buy"), buy_in(&mut shop, "s2", &w.media, "eu").await.expect("buy")];
    // Control: the certificate redeems before its revocation.
    node.redeem(redeem(&sales[0], &w.node.id, "alice", &alice.serials[0], &alice.key_der, "r1")).await.expect("a valid certificate redeems");

    let revoked = |serial: &str, reason: &str| Event::CertRevoked {
        consumer_id: engine::ids::ConsumerId::new("alice"),
        cert_serial: engine::ids::CertSerial::new(serial),
        reason: reason.into(),
    };
    let answer = w
        .admin_writes(
            &["cert", "revoke", "--consumer", "alice", "--serial", &alice.serials[0], "--reason", "key lost"],
            &[revoked(&alice.serials[0], "key lost")],
        )
        .await;
    assert_eq!(answer, serde_json::json!({ "consumer_id": "alice", "cert_serials": [alice.serials[0]], "changed": true }));
    let head = w.fx.head().await;
    let refused = node.redeem(redeem(&sales[1], &w.node.id, "alice", &alice.serials[0], &alice.key_der, "r2")).await.expect_err("a revoked certificate");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    assert_eq!(w.fx.head().await, head, "the refused redemption wrote nothing");
    let again = w.admin_writes(&["cert", "revoke", "--consumer", "alice", "--serial", &alice.serials[0]], &[]).await;
    assert_eq!(again, serde_json::json!({ "consumer_id": "alice", "cert_serials": [], "changed": false }));

    // Without --serial: every certificate not yet revoked (here the second), one event each.
    let answer = w.admin_writes(&["cert", "revoke", "--consumer", "alice"], &[revoked(&alice.serials[1], "revoked by the operator")]).await;
    assert_eq!(answer["cert_serials"], serde_json::json!([alice.serials[1]]));
    let refused = node.redeem(redeem(&sales[1], &w.node.id, "alice", &alice.serials[1], &alice.key_der, "r3")).await.expect_err("revoked too");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let again = w.admin_writes(&["cert", "revoke", "--consumer", "alice"], &[]).await;
    assert_eq!(again["changed"], false, "a consumer with no valid certificate left: nothing to revoke");

    w.admin_refused(&["cert", "revoke", "--consumer", "nobody"], Code::NotFound).await;
    w.admin_refused(&["cert", "revoke", "--consumer", "nobody", "--serial", &alice.serials[0]], Code::NotFound).await;
    w.admin_refused(&["cert", "revoke", "--consumer", "alice", "--serial", "no-such-serial"], Code::NotFound).await;
    w.admin_refused(&["cert", "revoke", "--consumer", ""], Code::InvalidArgument).await;
    // An empty --serial does not mean "every certificate": the command line refuses it.
    let head = w.fx.head().await;
    let empty = w.admin(&["cert", "revoke", "--consumer", "alice", "--serial", ""]).await;
    assert_eq!(empty.code, 2, "{}", empty.stderr);
    assert_eq!(w.fx.head().await, head);
    // Nor over gRPC: a request with neither a serial nor every_cert, or with both, is refused.
    let mut admin = client::admin(w.fx.channel.clone(), w.fx.operator.clone());
    for (serial, every_cert) in [("", false), (alice.serials[1].as_str(), true)] {
        let message = pb::RevokeCertsRequest {
            request_id: format!("bad-{every_cert}"),
            consumer_id: "alice".into(),
            cert_serial: serial.into(),
            reason: "x".into(),
            every_cert,
        };
        let refused = admin.revoke_certs(message).await.expect_err("one of serial and every_cert");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    assert_eq!(w.fx.head().await, head);
}

type Answered = Result<(), tonic::Status>;

fn ok<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Answered {
    result.map(drop)
}

/// Calls every new admin RPC once, as `admin`, with requests naming real parties and media.
async fn call_every_admin_change(admin: &mut client::AdminClient, w: &World, tag: &str) -> Vec<(&'static str, Answered)> {
    let rid = |rpc: &str| format!("{tag}-{rpc}");
    vec![
        (
            "SuspendMerchant",
            ok(admin.suspend_merchant(pb::MerchantAdminRequest { request_id: rid("suspend"), merchant_id: w.merchant.id.clone(), reason: "r".into() }).await),
        ),
        (
            "ReinstateMerchant",
            ok(admin
                .reinstate_merchant(pb::MerchantAdminRequest { request_id: rid("reinstate"), merchant_id: w.merchant.id.clone(), reason: "r".into() })
                .await),
        ),
        ("ChangePrice", ok(admin.change_price(pb::ChangePriceRequest { request_id: rid("price"), media_id: w.media.clone(), price_minor: 300 }).await)),
        (
            "WithdrawMedia",
            ok(admin.withdraw_media(pb::WithdrawMediaRequest { request_id: rid("withdraw"), media_id: w.media.clone(), reason: "r".into() }).await),
        ),
        (
            "RevokeCerts",
            ok(admin
                .revoke_certs(pb::RevokeCertsRequest {
                    request_id: rid("certs"),
                    consumer_id: "bob".into(),
                    cert_serial: String::new(),
                    reason: "r".into(),
                    every_cert: true,
                })
                .await),
        ),
        (
            "RevokeAuditor",
            ok(admin.revoke_auditor(pb::AuditorAdminRequest { request_id: rid("auditor"), auditor_id: w.auditor.id.clone(), reason: "r".into() }).await),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_change_is_the_operators_alone() {
    let w = world().await;
    certify(&w, "bob").await;
    let head = w.fx.head().await;
    let others = [
        ("merchant", Some(w.merchant.clone()), Code::PermissionDenied),
        ("node", Some(w.node.clone()), Code::PermissionDenied),
        ("auditor", Some(w.auditor.clone()), Code::PermissionDenied),
        ("unknown id", Some(Credential::new("m0unknown", engine::crypto::SecretKey::random())), Code::Unauthenticated),
    ];
    for (role, credential, expected) in others {
        let mut admin = client::admin(w.fx.channel.clone(), credential.expect("a credential"));
        for (rpc, answered) in call_every_admin_change(&mut admin, &w, role).await {
            let code = answered.expect_err("only the operator administers").code();
            assert_eq!(code, expected, "{role} calling {rpc}");
        }
    }
    // With no credential at all.
    let anonymous = pb::admin_service_client::AdminServiceClient::new(w.fx.channel.clone())
        .suspend_merchant(pb::MerchantAdminRequest { request_id: "anon".into(), merchant_id: w.merchant.id.clone(), reason: "r".into() })
        .await
        .expect_err("no credential");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    // The command line with a merchant's credential in place of the operator's.
    let impostor = tempfile::tempdir().expect("temp dir");
    w.merchant.save(&impostor.path().join("operator.cred")).expect("save the merchant's credential");
    let ran = admin_cli(&w.fx.engine.url(), impostor.path(), &["merchant", "suspend", &w.merchant.id]).await;
    assert_eq!((ran.code, ran.json.as_ref().and_then(|json| json["refused"].as_str())), (1, Some("PermissionDenied")), "{}", ran.stderr);
    assert_eq!(w.fx.head().await, head, "every refusal wrote nothing");

    // Control: the operator's same calls work, each writing its event.
    let mut admin = client::admin(w.fx.channel.clone(), w.fx.operator.clone());
    for (rpc, answered) in call_every_admin_change(&mut admin, &w, "operator").await {
        answered.unwrap_or_else(|status| panic!("the operator calls {rpc}: {status:?}"));
    }
    let written: Vec<&'static str> = w.events_after(head).await.iter().map(|recorded| recorded.event.name()).collect();
    assert_eq!(
        written,
        ["MerchantSuspended", "MerchantReinstated", "PriceChanged", "MediaWithdrawn", "CertRevoked", "CertRevoked", "AuditorRevoked"],
        "one event per change (bob's two certificates: two revocations)"
    );
}
