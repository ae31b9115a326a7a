//! The sale-building helpers the gRPC matrix tests share: a standard upload, credentials
//! from registration answers, Reserve requests, a sale issued in a region, receipt proofs.

use engine::crypto::{self, SecretKey};
use gateways::common::client::{self, Upload};
use gateways::common::cred::Credential;
use proto::v1 as pb;
use tonic::Status;

pub fn upload(title: &str) -> Upload {
    Upload {
        title: title.into(),
        artist: "Artist".into(),
        authors: vec!["Author".into()],
        length_ms: 180_000,
        price_minor: 199,
        currency: "EUR".into(),
        terms: client::standard_terms("label-1"),
        content: (0..20_000u32).map(|i| (i % 251) as u8).collect(),
        preview_clip: b"free preview clip".to_vec(),
        image_descriptor: "cover.jpg".into(),
    }
}

pub fn credential(response: Result<tonic::Response<pb::CredentialResponse>, Status>) -> Credential {
    client::credential_of(response.expect("the operator registers a party").into_inner()).expect("a 32-byte secret")
}

pub fn reserve_request(request_id: &str, media: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        request_id: request_id.into(),
        media_ids: vec![media.into()],
        rendition: "high".into(),
        ttl_ms: 15 * 60 * 1000,
        points_account: String::new(),
        payment_ref: "card".into(),
        spend_authorization: None,
        rental_ms: 0,
    }
}

/// Reserve → Authorize → IssueVoucher, issued in `region` (so to the node of that region).
pub async fn buy_in(merchant: &mut client::MerchantClient, prefix: &str, media: &str, region: &str) -> Result<client::Sale, Status> {
    let reserved = merchant.reserve(reserve_request(&format!("{prefix}-reserve"), media)).await?.into_inner();
    let authorized =
        merchant.authorize(pb::AuthorizeRequest { request_id: format!("{prefix}-authorize"), voucher_id: reserved.voucher_id.clone() }).await?.into_inner();
    let issued = merchant
        .issue_voucher(pb::IssueVoucherRequest { request_id: format!("{prefix}-issue"), voucher_id: reserved.voucher_id.clone(), region: region.into() })
        .await?
        .into_inner();
    Ok(client::Sale {
        voucher_id: reserved.voucher_id,
        receipt: authorized.receipt,
        node_id: issued.node_id,
        node_endpoint: issued.node_endpoint,
        access_token: issued.access_token,
        access_expires_at_ms: issued.access_expires_at_ms,
        token_key_id: issued.token_key_id,
        media_ids: vec![media.to_string()],
        rental_until_ms: 0,
    })
}

/// Who a proof names: the consumer, its certificate serial and the certified key.
pub struct Named<'a> {
    pub consumer: &'a str,
    pub cert_serial: &'a str,
    pub public_key_der: &'a [u8],
}

/// A proof of a receipt, bound to `node`, `challenge` and the consumer it names.
pub fn proof(receipt: &[u8], voucher: &str, node: &str, challenge: &[u8], named: &Named<'_>) -> Vec<u8> {
    let receipt = SecretKey::from_bytes(receipt.try_into().expect("a 32-byte receipt"));
    let subject = crypto::ProofConsumer::new(named.consumer, named.cert_serial, named.public_key_der);
    crypto::receipt_proof(&receipt, voucher, node, challenge, &subject).to_vec()
}

/// The buyer's confirm proof of `media` received with `hash` at `node`, for the consumer it names.
pub fn confirm(receipt: &[u8], voucher: &str, node: &str, media: &str, hash: &[u8], named: &Named<'_>) -> Vec<u8> {
    let receipt = SecretKey::from_bytes(receipt.try_into().expect("a 32-byte receipt"));
    let subject = crypto::ProofConsumer::new(named.consumer, named.cert_serial, named.public_key_der);
    crypto::confirm_proof(&receipt, voucher, node, media, hash, &subject).to_vec()
}

/// A consumer's spend authorization (signed with `passport`, certificate `serial`) for
/// `merchant` to spend up to `amount_max` of `account`, expiring `ttl_ms` from now
/// (negative: already expired).
pub fn spend(passport: &engine::crypto::RsaPrivate, account: &str, serial: &str, merchant: &str, amount_max: u64, ttl_ms: i64) -> pb::SpendAuthorization {
    let expires_at = engine::ids::Millis(engine::clock::Clock::now(&engine::clock::SystemClock).0 + ttl_ms);
    let authorization = engine::spend::SpendAuthorization::sign(
        passport,
        &engine::ids::ConsumerId::new(account),
        &engine::ids::CertSerial::new(serial),
        &engine::ids::MerchantId::new(merchant),
        amount_max,
        Vec::new(),
        expires_at,
    )
    .expect("sign");
    gateways::common::spend::to_pb(&authorization)
}

/// A consumer's balance read signed with `passport` (certificate `serial`), issued `skew_ms` from now.
pub fn points_request(passport: &engine::crypto::RsaPrivate, consumer: &str, serial: &str, skew_ms: i64) -> pb::GetPointsRequest {
    let issued_at = engine::ids::Millis(engine::clock::Clock::now(&engine::clock::SystemClock).0 + skew_ms);
    let (id, cert) = (engine::ids::ConsumerId::new(consumer), engine::ids::CertSerial::new(serial));
    let signature = engine::spend::sign_points_request(passport, &id, &cert, issued_at).expect("sign");
    pb::GetPointsRequest { consumer_id: consumer.into(), cert_serial: serial.into(), issued_at_ms: issued_at.0, signature }
}
