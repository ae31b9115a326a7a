//! The bad-input table: per RPC the empty message, undecodable bytes, size limits and
//! credentials, then the hand-picked refusals RPC by RPC, each with its exact code.

use super::*;

/// What the default (all-empty) message gets from the rightful caller: the RPCs that take
/// no required field answer; every other one names the missing field.
pub(super) fn refund_pb(request_id: &str, voucher_id: &str) -> pb::RefundRequest {
    pb::RefundRequest { request_id: request_id.into(), voucher_id: voucher_id.into(), reason: "the bank reversed it".into(), chargeback: false }
}

fn empty_message_code(rpc: Rpc) -> Code {
    match rpc {
        Rpc::Heartbeat | Rpc::SubscribeAssignments | Rpc::Replay | Rpc::VerifyChain | Rpc::Totals | Rpc::GetStats | Rpc::GetConfig => Code::Ok,
        Rpc::ListVouchers | Rpc::ListCatalog | Rpc::GetLedger | Rpc::ListParties | Rpc::ListOrders => Code::Ok,
        _ => Code::InvalidArgument,
    }
}

pub(super) fn bad_input_cases(w: &World) -> Vec<Case> {
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
        if service == Service::Consumer {
            // No credential to check: the signed request is the handler's, whoever sends it;
            // the body limit holds all the same.
            let limit = rpc.body_limit();
            let body = padded_empty(limit + 1 - FRAME_HEADER_BYTES);
            cases.push(raw("oversized", format!("body {} bytes (limit + 1)", limit + 1), &rightful, rpc, body, Code::ResourceExhausted).message_has("limit"));
            cases.push(case("credentials", "an operator credential signs nothing", &op, rpc.empty(), Code::InvalidArgument));
            continue;
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
    cases.push(nope("a method MerchantService lacks", &a, "/vouchsafe.v1.MerchantService/Teleport", Code::Unimplemented));
    cases.push(nope("a method MerchantService lacks", &Meta::anonymous(), "/vouchsafe.v1.MerchantService/Teleport", Code::Unauthenticated));
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
            device_cert_serial: w.device_serial.clone(),
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
        Req::FailDelivery(pb::FailDeliveryRequest { voucher_id: "v-never".into(), ..w.fail("unk-fail", &w.sale, "disk") }),
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
            device_cert_serial: w.device_serial.clone(),
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
            device_cert_serial: w.device_serial.clone(),
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
    cases.push(case("invalid field", "empty reason", &x, Req::FailDelivery(w.fail("inv-fail", &w.sale, "")), ia));
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
        Req::TopUpPoints(pb::TopUpPointsRequest { request_id: "inv-topup".into(), account_id: "acct-1".into(), amount: 0, ..Default::default() }),
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

    // Merchant B on merchant A's vouchers and order. No existence oracle: another
    // merchant's voucher (order) answers every RPC as an unknown one, word for word
    // (`unknown voucher "<id>"`); a voucher id that was never reserved is the control.
    cases.push(
        case("merchant B on A's", "A's issued voucher", &b, Req::GetVoucher(pb::GetVoucherRequest { voucher_id: sale.clone() }), nf)
            .message_has(format!("unknown voucher {sale:?}")),
    );
    cases.push(
        case("merchant B on A's", "A's pending voucher", &b, Req::GetVoucher(pb::GetVoucherRequest { voucher_id: w.pending.clone() }), nf)
            .message_has(format!("unknown voucher {:?}", w.pending)),
    );
    cases.push(
        case("merchant B on A's", "a voucher never reserved (control)", &b, Req::GetVoucher(pb::GetVoucherRequest { voucher_id: "v-never".into() }), nf)
            .message_has("unknown voucher \"v-never\""),
    );
    cases.push(
        case(
            "merchant B on A's",
            "A's issued voucher",
            &b,
            Req::Authorize(pb::AuthorizeRequest { request_id: "b-authorize-1".into(), voucher_id: sale.clone() }),
            nf,
        )
        .message_has(format!("unknown voucher {:?}", sale)),
    );
    cases.push(
        case(
            "merchant B on A's",
            "A's pending voucher",
            &b,
            Req::Authorize(pb::AuthorizeRequest { request_id: "b-authorize-2".into(), voucher_id: w.pending.clone() }),
            nf,
        )
        .message_has(format!("unknown voucher {:?}", w.pending)),
    );
    cases.push(
        case("merchant B on A's", "A's issued voucher", &b, Req::Void(pb::VoidRequest { request_id: "b-void-1".into(), voucher_id: sale.clone() }), nf)
            .message_has(format!("unknown voucher {:?}", sale)),
    );
    let refund = |request_id: &str, voucher_id: &str, reason: &str| {
        Req::Refund(pb::RefundRequest { request_id: request_id.into(), voucher_id: voucher_id.into(), reason: reason.into(), chargeback: false })
    };
    cases.push(
        case("merchant B on A's", "A's issued voucher refunded", &b, refund("b-refund-1", sale, "mine now"), nf)
            .message_has(format!("unknown voucher {:?}", sale)),
    );
    cases.push(
        case(
            "merchant B on A's",
            "A's issued voucher charged back",
            &b,
            Req::Refund(pb::RefundRequest { chargeback: true, ..refund_pb("b-refund-2", sale) }),
            nf,
        )
        .message_has(format!("unknown voucher {:?}", sale)),
    );
    cases.push(case("bad field", "refund without a reason", &a, refund("a-refund-1", sale, ""), Code::InvalidArgument));
    cases.push(case("bad field", "refund with a blank reason", &a, refund("a-refund-2", sale, "   "), Code::InvalidArgument));
    cases.push(case("bad field", "refund reason over 256 characters", &a, refund("a-refund-3", sale, &"r".repeat(257)), Code::InvalidArgument));
    cases.push(case("unknown id", "refund of a voucher never reserved", &a, refund("a-refund-4", "v-never", "why"), Code::NotFound));
    cases.push(
        case("merchant B on A's", "A's pending voucher", &b, Req::Void(pb::VoidRequest { request_id: "b-void-2".into(), voucher_id: w.pending.clone() }), nf)
            .message_has(format!("unknown voucher {:?}", w.pending)),
    );
    cases.push(
        case(
            "merchant B on A's",
            "A's issued voucher",
            &b,
            Req::IssueVoucher(pb::IssueVoucherRequest { request_id: "b-issue-1".into(), voucher_id: sale.clone(), region: String::new() }),
            nf,
        )
        .message_has(format!("unknown voucher {:?}", sale)),
    );
    cases.push(
        case(
            "merchant B on A's",
            "A's authorized voucher",
            &b,
            Req::IssueVoucher(pb::IssueVoucherRequest { request_id: "b-issue-2".into(), voucher_id: w.authorized.clone(), region: String::new() }),
            nf,
        )
        .message_has(format!("unknown voucher {:?}", w.authorized)),
    );
    cases.push(
        case(
            "merchant B on A's",
            "A's order",
            &b,
            Req::BindUnit(pb::BindUnitRequest {
                request_id: "b-bind".into(),
                order_id: w.order.clone(),
                unit: 0,
                device_id: "dev-1".into(),
                device_public_key_der: w.consumer_der.clone(),
                device_cert_serial: w.device_serial.clone(),
            }),
            nf,
        )
        .message_has(format!("unknown order {:?}", w.order)),
    );
    cases.push(
        case(
            "merchant B on A's",
            "A's order",
            &b,
            Req::CompleteUnit(pb::CompleteUnitRequest { request_id: "b-unit".into(), order_id: w.order.clone(), unit: 0 }),
            nf,
        )
        .message_has(format!("unknown order {:?}", w.order)),
    );
    // A's reservation ids are derived from (merchant, request id): B's same request id is B's own.
    cases.push(case("merchant B on A's", "A's request id is B's own voucher", &b, Req::Reserve(reserve_request("sale-reserve", "md-never")), nf));

    // Node Y on node X's assignments.
    let pd = Code::PermissionDenied;
    cases.push(case("node Y on X's", "a valid proof made for Y", &y, Req::Redeem(w.redeem("y-redeem-1", &w.y.id)), pd));
    cases.push(case("node Y on X's", "X's proof", &y, Req::Redeem(w.redeem("y-redeem-2", &w.x.id)), pd));
    cases.push(case("node Y on X's", "X's voucher", &y, Req::CompleteDelivery(w.complete("y-complete", sale)), pd));
    // Only the buyer completes or fails a delivery: the node alone (or the link) cannot.
    // (The second sale is being redeemed by alice; `complete` proves the first sale's receipt.)
    let second = &w.second.voucher_id;
    let forged = pb::CompleteDeliveryRequest { confirm_proof: vec![9; 32], ..w.complete("cp-complete", second) };
    cases.push(case("confirm proof", "CompleteDelivery, forged", &x, Req::CompleteDelivery(forged), pd).message_has("proof"));
    let other_voucher = w.complete("cp-complete-2", second);
    cases.push(case("confirm proof", "CompleteDelivery, another voucher's proof", &x, Req::CompleteDelivery(other_voucher), pd).message_has("proof"));
    let missing = pb::CompleteDeliveryRequest { confirm_proof: Vec::new(), ..w.complete("cp-complete-3", second) };
    cases.push(case("confirm proof", "CompleteDelivery, none", &x, Req::CompleteDelivery(missing), ia).message_has("confirm_proof"));
    let forged = pb::FailDeliveryRequest { confirm_proof: vec![9; 32], ..w.fail("cp-fail", &w.second, "disk") };
    cases.push(case("confirm proof", "FailDelivery, forged", &x, Req::FailDelivery(forged), pd).message_has("proof"));
    let other_media = pb::FailDeliveryRequest { received_hash: vec![3; 32], ..w.fail("cp-fail-2", &w.second, "disk") };
    cases.push(case("confirm proof", "FailDelivery, proof of another hash", &x, Req::FailDelivery(other_media), pd).message_has("proof"));
    cases.push(case("node Y on X's", "X's voucher", &y, Req::FailDelivery(w.fail("y-fail", &w.sale, "disk")), pd));
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
    cases.push(proof_case("bound to node Y", "bad-proof-3", w.proof(&w.sale.receipt, sale, &w.y.id, &challenge)));
    cases.push(proof_case("another voucher's receipt", "bad-proof-4", w.proof(&w.second.receipt, sale, &w.x.id, &challenge)));
    cases.push(proof_case("bound to another voucher", "bad-proof-5", w.proof(&w.sale.receipt, &w.second.voucher_id, &w.x.id, &challenge)));
    cases.push(proof_case("over another challenge", "bad-proof-6", w.proof(&w.sale.receipt, sale, &w.x.id, &[8u8; 32])));
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
    // Points: the consumer's consent, and refusals that never state a balance.
    let empty_account = w.spend("acct-empty", &w.a.id, 10_000, 60_000);
    cases.push(
        case(
            "wrong state",
            "points account empty (with its owner's consent)",
            &a,
            Req::Reserve(pb::ReserveRequest {
                points_account: "acct-empty".into(),
                spend_authorization: Some(empty_account),
                ..reserve_request("st-reserve", &w.media)
            }),
            fp,
        )
        .message_has("cannot cover"),
    );
    let points = |label: &'static str, account: &str, authorization: Option<pb::SpendAuthorization>, request_id: &str, expect: Code, has: &'static str| {
        case(
            "spend authorization",
            label,
            &a,
            Req::Reserve(pb::ReserveRequest { points_account: account.into(), spend_authorization: authorization, ..reserve_request(request_id, &w.media) }),
            expect,
        )
        .message_has(has)
    };
    let genuine = w.spend("acct-1", &w.a.id, 10_000, 60_000);
    let pd = Code::PermissionDenied;
    cases.push(points("none (another's account)", "acct-1", None, "sp-none", pd, "needs the consumer's spend authorization"));
    cases.push(points("for merchant B", "acct-1", Some(w.spend("acct-1", &w.b.id, 10_000, 60_000)), "sp-other", pd, "another merchant"));
    let forged = pb::SpendAuthorization { amount_max: 1_000_000, ..genuine.clone() };
    cases.push(points("ceiling raised after signing", "acct-1", Some(forged), "sp-forged", pd, "signature does not verify"));
    cases.push(points("expired", "acct-1", Some(w.spend("acct-1", &w.a.id, 10_000, -1)), "sp-expired", pd, "expired"));
    cases.push(points("ceiling under the price", "acct-1", Some(w.spend("acct-1", &w.a.id, 1, 60_000)), "sp-ceiling", pd, "exceeds"));
    cases.push(points("for another account", "acct-empty", Some(genuine.clone()), "sp-account", pd, "another points account"));
    let revoked = pb::SpendAuthorization { cert_serial: w.bob_serial.clone(), ..w.spend("acct-1", &w.a.id, 10_000, 60_000) };
    cases.push(points("by an unknown certificate", "acct-1", Some(revoked), "sp-cert", pd, "no certificate"));
    let short_nonce = pb::SpendAuthorization { nonce: vec![1; 3], ..genuine.clone() };
    cases.push(points("nonce of 3 bytes", "acct-1", Some(short_nonce), "sp-nonce", ia, "spend_authorization.nonce"));
    cases.push(points("without a points account", "", Some(genuine), "sp-card", ia, "spend_authorization"));
    cases.push(
        case(
            "spend authorization",
            "SellPoints to no consumer",
            &a,
            Req::SellPoints(pb::TopUpPointsRequest {
                request_id: "sp-sell".into(),
                account_id: "nobody".into(),
                amount: 5,
                currency: "EUR".into(),
                ..Default::default()
            }),
            Code::NotFound,
        )
        .message_has("consumer"),
    );
    cases.push(case(
        "spend authorization",
        "SellPoints in no currency",
        &a,
        Req::SellPoints(pb::TopUpPointsRequest { request_id: "sp-sell-2".into(), account_id: "acct-1".into(), amount: 5, ..Default::default() }),
        ia,
    ));
    cases.push(case(
        "spend authorization",
        "TopUpPoints by the operator with a currency",
        &op,
        Req::TopUpPoints(pb::TopUpPointsRequest {
            request_id: "sp-top".into(),
            account_id: "acct-1".into(),
            amount: 5,
            currency: "EUR".into(),
            ..Default::default()
        }),
        ia,
    ));
    let anonymous = Meta::anonymous();
    let read =
        |label: &'static str, request: pb::GetPointsRequest, expect: Code| case("consumer's balance", label, &anonymous, Req::GetPoints(request), expect);
    cases.push(read("signed now by the consumer", w.points_request("acct-1", 0), Code::Ok).answer_has("balance: 500"));
    cases.push(read("signed 10 minutes ago", w.points_request("acct-1", -600_000), pd));
    let other = pb::GetPointsRequest { consumer_id: "alice".into(), cert_serial: w.alice_serial.clone(), ..w.points_request("acct-1", 0) };
    cases.push(read("acct-1's signature for alice", other, pd));
    cases.push(read("no signature", pb::GetPointsRequest { signature: Vec::new(), ..w.points_request("acct-1", 0) }, ia));
    let unknown = pb::GetPointsRequest { consumer_id: "nobody".into(), ..w.points_request("acct-1", 0) };
    cases.push(read("an unknown consumer", unknown, pd).message_has("not signed by a valid certificate"));
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
            Req::TopUpPoints(pb::TopUpPointsRequest { request_id: "topup-1".into(), account_id: "acct-1".into(), amount: 500, ..Default::default() }),
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

    // The operator's changes, refused with the codes admin_reach.rs documents and writing
    // nothing; where a real object is named, it is one made for them (merchant C, the spare
    // auditor, the spare and the priced media, consumer frank), never one another case uses.
    let c = &w.c.id;
    let suspend = |request_id: &str, merchant_id: &str, reason: &str| {
        Req::SuspendMerchant(pb::MerchantAdminRequest { request_id: request_id.into(), merchant_id: merchant_id.into(), reason: reason.into() })
    };
    let reinstate = |request_id: &str, merchant_id: &str| {
        Req::ReinstateMerchant(pb::MerchantAdminRequest { request_id: request_id.into(), merchant_id: merchant_id.into(), reason: "cleared".into() })
    };
    let revoke_auditor = |request_id: &str, auditor_id: &str, reason: &str| {
        Req::RevokeAuditor(pb::AuditorAdminRequest { request_id: request_id.into(), auditor_id: auditor_id.into(), reason: reason.into() })
    };
    let withdraw = |request_id: &str, media_id: &str, reason: &str| {
        Req::WithdrawMedia(pb::WithdrawMediaRequest { request_id: request_id.into(), media_id: media_id.into(), reason: reason.into() })
    };
    let price = |request_id: &str, media_id: &str, price_minor: u64| {
        Req::ChangePrice(pb::ChangePriceRequest { request_id: request_id.into(), media_id: media_id.into(), price_minor })
    };
    let revoke_certs = |request_id: &str, consumer_id: &str, cert_serial: &str, every_cert: bool| {
        Req::RevokeCerts(pb::RevokeCertsRequest {
            request_id: request_id.into(),
            consumer_id: consumer_id.into(),
            cert_serial: cert_serial.into(),
            reason: "device lost".into(),
            every_cert,
        })
    };
    let max = engine::domain::catalog::PRICE_MINOR_MAX;
    let frank = &w.frank_serials[0];
    let admin = [
        ("unknown id", "merchant never registered", suspend("adm-suspend-1", "m0unknown", "chargebacks"), nf),
        ("unknown id", "node X's id as a merchant's", suspend("adm-suspend-2", &w.x.id, "chargebacks"), nf),
        ("invalid field", "empty merchant id", suspend("adm-suspend-3", "", "chargebacks"), ia),
        ("invalid field", "merchant id m.1", suspend("adm-suspend-4", "m.1", "chargebacks"), ia),
        ("invalid field", "merchant C, reason a space", suspend("adm-suspend-5", c, " "), ia),
        ("invalid field", "merchant C, empty reason", suspend("adm-suspend-6", c, ""), ia),
        ("invalid field", "merchant C, request id with a slash", suspend("a/b", c, "chargebacks"), ia),
        ("unknown id", "merchant never registered", reinstate("adm-reinstate-1", "m0unknown"), nf),
        ("invalid field", "empty merchant id", reinstate("adm-reinstate-2", ""), ia),
        ("unknown id", "auditor never registered", revoke_auditor("adm-auditor-1", "a0unknown", "left"), nf),
        ("unknown id", "merchant C's id as an auditor's", revoke_auditor("adm-auditor-2", c, "left"), nf),
        ("invalid field", "empty auditor id", revoke_auditor("adm-auditor-3", "", "left"), ia),
        ("invalid field", "spare auditor, empty reason", revoke_auditor("adm-auditor-4", &w.spare_auditor.id, ""), ia),
        ("unknown id", "media never published", withdraw("adm-withdraw-1", "md-unknown", "takedown"), nf),
        ("invalid field", "empty media id", withdraw("adm-withdraw-2", "", "takedown"), ia),
        ("invalid field", "media id with a space", withdraw("adm-withdraw-3", "md 1", "takedown"), ia),
        ("invalid field", "spare media, reason a space", withdraw("adm-withdraw-4", &w.spare_media, " "), ia),
        ("unknown id", "media never published", price("adm-price-1", "md-unknown", 300), nf),
        ("invalid field", "empty media id", price("adm-price-2", "", 300), ia),
        ("invalid field", "price 0", price("adm-price-3", &w.priced_media, 0), ia),
        ("invalid field", "price over the maximum", price("adm-price-4", &w.priced_media, max + 1), ia),
        ("invalid field", "price u64::MAX", price("adm-price-5", &w.priced_media, u64::MAX), ia),
        ("invalid field", "neither a serial nor every_cert", revoke_certs("adm-certs-1", "frank", "", false), ia),
        ("invalid field", "a serial and every_cert", revoke_certs("adm-certs-2", "frank", frank, true), ia),
        ("invalid field", "empty consumer id", revoke_certs("adm-certs-3", "", "", true), ia),
        ("invalid field", "serial with a space", revoke_certs("adm-certs-4", "frank", "not a serial", false), ia),
        ("unknown id", "consumer never certified, every_cert", revoke_certs("adm-certs-5", "nobody", "", true), nf),
        ("unknown id", "consumer never certified, frank's serial", revoke_certs("adm-certs-6", "nobody", frank, false), nf),
        ("unknown id", "serial unknown for frank", revoke_certs("adm-certs-7", "frank", "serial-unknown", false), nf),
        ("unknown id", "alice's serial for frank", revoke_certs("adm-certs-8", "frank", &w.alice_serial, false), nf),
    ];
    for (category, what, request, expect) in admin {
        cases.push(case(category, what, &op, request, expect));
    }
    // A change already in effect is answered and writes nothing (C is active).
    cases.push(case("no change", "reinstate active merchant C", &op, reinstate("adm-reinstate-3", c), Code::Ok).answer_has("changed: false"));

    // Key rotation (issue 28): a key the key directory does not hold, a revocation of the
    // current key or of an unknown one; a merchant's rental window outside what any rental allows.
    let current_key = w.fx.engine_public.key_id();
    let rotate = |request_id: &str, key_id: &str| Req::RotateEngineKey(pb::RotateEngineKeyRequest { request_id: request_id.into(), key_id: key_id.into() });
    let revoke_key = |request_id: &str, key_id: &str| Req::RevokeEngineKey(pb::RevokeEngineKeyRequest { request_id: request_id.into(), key_id: key_id.into() });
    cases.push(
        case("key rotation", "to a key the key directory does not hold", &op, rotate("key-1", "0123456789abcdef"), Code::FailedPrecondition)
            .message_has("keys rotate engine"),
    );
    cases.push(
        case(
            "key rotation",
            "to a token key token.key does not hold",
            &op,
            Req::RotateTokenKey(pb::RotateTokenKeyRequest { request_id: "key-4".into(), key_id: 7 }),
            Code::FailedPrecondition,
        )
        .message_has("keys rotate token"),
    );
    let other_vkey = engine::note::NoteSigner::generate("other.example/log").expect("a note key").verifier().vkey();
    cases.push(
        case(
            "key rotation",
            "to a checkpoint key the key directory does not hold",
            &op,
            Req::RotateCheckpointKey(pb::RotateCheckpointKeyRequest { request_id: "key-5".into(), vkey: other_vkey }),
            Code::FailedPrecondition,
        )
        .message_has("keys rotate checkpoint"),
    );
    cases.push(case("key rotation", "revoke the current key", &op, revoke_key("key-2", &current_key), ia).message_has("rotate to a new key first"));
    cases.push(case("key rotation", "revoke a key never rotated out", &op, revoke_key("key-3", "0123456789abcdef"), Code::NotFound));
    let window = |request_id: &str, min: u64, max: u64| {
        Req::SetRentalWindow(pb::SetRentalWindowRequest { request_id: request_id.into(), window_ms_min: min, window_ms_max: max })
    };
    for (what, request, field) in [
        ("a window below a second", window("win-1", 999, 3_600_000), "window_ms_min"),
        ("a minimum above the maximum", window("win-2", 7_200_000, 3_600_000), "window_ms_max"),
        ("a maximum over 30 days", window("win-3", 3_600_000, 30 * 86_400_000 + 1), "window_ms_max"),
        ("a maximum with no minimum", window("win-4", 0, 3_600_000), "window_ms_min"),
    ] {
        cases.push(case("rental window", what, &a, request, ia).message_has(field));
    }

    cases.extend(super::read_cases::read_cases(w));

    // Which check refused it, where the code alone could come from another one.
    for case in &mut cases {
        if case.message_has.is_none() {
            case.message_has = match (case.category, case.expect) {
                ("node Y on X's", _) => Some("not assigned to this delivery node"),
                ("wrong receipt proof", _) => Some("receipt proof does not verify"),
                ("request id reused", _) => Some("request id was already used"),
                ("undecodable, wrong role", _) => Some("may not call"),
                ("undecodable, no credential" | "oversized, no credential", _) => Some("missing"),
                (_, Code::NotFound) => Some("unknown"),
                _ => None,
            }
            .map(String::from);
        }
    }
    cases
}
