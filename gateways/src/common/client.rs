//! gRPC clients of the engine as the operator, a publisher and a merchant use them: the
//! `merchant` and `publish` commands, the demo and the end-to-end tests all go through
//! here. Each client presents one credential on every call (`cred::Present`).

use crate::common::cred::{Credential, Present};
pub use crate::common::failover::Engines;
use anyhow::Context;
use engine::crypto::{self, RsaPrivate, RsaPublic, SecretKey};
use engine::media::{ComponentSpec, ContainerSpec, PreviewSpec, RenditionSpec};
use proto::v1 as pb;
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub type Authed = InterceptedService<Engines, Present>;
pub type CatalogClient = pb::catalog_service_client::CatalogServiceClient<Authed>;
pub type MerchantClient = pb::merchant_service_client::MerchantServiceClient<Authed>;
pub type DeliveryClient = pb::delivery_service_client::DeliveryServiceClient<Authed>;
pub type AuditClient = pb::audit_service_client::AuditServiceClient<Authed>;
pub type AdminClient = pb::admin_service_client::AdminServiceClient<Authed>;
/// ConsumerService takes no credential: each request is signed with a passport.
pub type ConsumerClient = pb::consumer_service_client::ConsumerServiceClient<Engines>;

/// Largest message a client accepts or sends (a media container plus framing).
pub const CLIENT_MESSAGE_BYTES_MAX: usize = engine::media::CONTAINER_BYTES_MAX + 2 * 1024 * 1024;

/// Connects to `url` (`http://HOST:PORT`, or https with TLS; `ca` is the PEM of the CA
/// that signed the server's certificate: tonic is built without a system root store, so
/// https needs it even for a public CA).
pub async fn connect(url: &str, ca: Option<&[u8]>) -> anyhow::Result<Channel> {
    connect_tls(url, ca, None).await
}

/// The certificate (PEM, optionally followed by its chain) and private key (PEM) a client
/// presents to an engine that requires client certificates (mTLS).
#[derive(Clone, Copy)]
pub struct ClientIdentity<'a> {
    pub cert_pem: &'a [u8],
    pub key_pem: &'a [u8],
}

/// `connect`, presenting `identity` in the TLS handshake when given (which needs https).
/// A client certificate proves only the connection's origin: the credential is still
/// presented on every call.
pub async fn connect_tls(url: &str, ca: Option<&[u8]>, identity: Option<ClientIdentity<'_>>) -> anyhow::Result<Channel> {
    endpoint(url, ca, identity)?.connect().await.with_context(|| format!("cannot connect to the engine at {url}"))
}

/// `--connect`'s engines (one URL, or several comma-separated on one stream): connected to
/// the first that answers its health check, failing over to the others (`common::failover`).
pub async fn connect_any(connect: &str, ca: Option<&[u8]>, identity: Option<ClientIdentity<'_>>) -> anyhow::Result<Engines> {
    let urls = crate::common::failover::split_urls(connect)?;
    crate::common::failover::connect_first(&urls, |url| endpoint(url, ca, identity)).await
}

fn endpoint(url: &str, ca: Option<&[u8]>, identity: Option<ClientIdentity<'_>>) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(url.to_string()).with_context(|| format!("{url:?} is not a gRPC URL such as http://127.0.0.1:50051"))?;
    endpoint = endpoint.connect_timeout(std::time::Duration::from_secs(5)).tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some(identity) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(identity.cert_pem, identity.key_pem));
        }
        endpoint = endpoint.tls_config(tls).context("TLS client configuration")?;
    } else if identity.is_some() {
        anyhow::bail!("a client certificate needs an https:// URL, not {url:?}");
    }
    Ok(endpoint)
}

/// Asks the engine's health service (open to every caller) whether it serves, so that a
/// connection the server refuses fails here rather than on the first command: with TLS 1.3
/// the server checks a client certificate only after the client's side of the handshake
/// is done, and a plain-text client only learns it spoke to a TLS port when it reads.
pub async fn check_serving(channel: Channel, url: &str) -> anyhow::Result<()> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let Err(status) = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await else { return Ok(()) };
    // The status's message is often just "transport error"; the cause (a TLS alert such as
    // CertificateRequired) is in its sources.
    let mut why = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(&status);
    while let Some(cause) = source {
        why = format!("{why}: {cause}");
        source = cause.source();
    }
    let hint = if url.starts_with("https://") {
        "check that --ca names the CA of the engine's certificate, and pass --client-cert and --client-key when the engine requires client certificates"
    } else {
        "if the engine serves TLS, connect with https:// (and --ca for a private CA)"
    };
    anyhow::bail!("the engine at {url} did not answer ({why}); {hint}")
}

fn authed(engines: impl Into<Engines>, credential: Credential) -> Authed {
    InterceptedService::new(engines.into(), Present(Arc::new(credential)))
}

pub fn catalog(channel: impl Into<Engines>, credential: Credential) -> CatalogClient {
    pb::catalog_service_client::CatalogServiceClient::new(authed(channel, credential))
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
}

pub fn merchant(channel: impl Into<Engines>, credential: Credential) -> MerchantClient {
    pb::merchant_service_client::MerchantServiceClient::new(authed(channel, credential))
}

pub fn delivery(channel: impl Into<Engines>, credential: Credential) -> DeliveryClient {
    pb::delivery_service_client::DeliveryServiceClient::new(authed(channel, credential)).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
}

pub fn audit(channel: impl Into<Engines>, credential: Credential) -> AuditClient {
    pb::audit_service_client::AuditServiceClient::new(authed(channel, credential))
}

pub fn admin(channel: impl Into<Engines>, credential: Credential) -> AdminClient {
    pb::admin_service_client::AdminServiceClient::new(authed(channel, credential))
}

pub fn consumer(channel: impl Into<Engines>) -> ConsumerClient {
    pb::consumer_service_client::ConsumerServiceClient::new(channel.into())
}

/// A credential from a CredentialResponse.
pub fn credential_of(response: pb::CredentialResponse) -> anyhow::Result<Credential> {
    let secret: [u8; 32] = response.secret.as_slice().try_into().context("the engine returned a credential secret that is not 32 bytes")?;
    Ok(Credential::new(response.id, SecretKey::from_bytes(secret)))
}

/// What a publisher uploads for one media.
pub struct Upload {
    pub title: String,
    pub artist: String,
    pub authors: Vec<String>,
    pub length_ms: u64,
    pub price_minor: u64,
    pub currency: String,
    pub terms: pb::RoyaltyTermsInput,
    pub content: Vec<u8>,
    pub preview_clip: Vec<u8>,
    pub image_descriptor: String,
}

/// A published media: its id and the hash of its plaintext.
#[derive(Clone, Debug)]
pub struct Published {
    pub media_id: String,
    /// blake3 of the plaintext of the "high" rendition (or the only one).
    pub content_hash: [u8; 32],
    pub container_bytes: usize,
    /// Every rendition's name and plaintext hash, in the container's order.
    pub renditions: Vec<(String, [u8; 32])>,
    /// The container's format version (1: `publish`, 2: `publish_container`).
    pub format_version: u8,
}

/// Encrypts the content under a fresh media key, wraps the key for the engine's public
/// key, and publishes the container. The media key never leaves this function in clear.
pub async fn publish(catalog: &mut CatalogClient, request_id: &str, engine_public: &RsaPublic, upload: Upload) -> anyhow::Result<Published> {
    let media_key = SecretKey::random();
    let content_hash = crypto::hash(&upload.content);
    let size_bytes = upload.content.len() as u64;
    let (container, wrapped_media_key) = {
        let content = upload.content;
        let engine_public = engine_public.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
            Ok((engine::media::encrypt_v1(&media_key, &content), crypto::wrap_key(&engine_public, &media_key)?))
        })
        .await
        .context("the encryption task failed")??
    };
    let container_bytes = container.len();
    let request = pb::PublishMediaRequest {
        request_id: request_id.to_string(),
        title: upload.title,
        artist: upload.artist,
        authors: upload.authors,
        length_ms: upload.length_ms,
        price_minor: upload.price_minor,
        currency: upload.currency,
        terms: Some(upload.terms),
        container,
        wrapped_media_key,
        for_sale: true,
        renditions: vec![pb::RenditionInput { name: "high".into(), bitrate_kbps: 256, content_hash: content_hash.to_vec(), size_bytes }],
        // The first 30 s (or the whole media when shorter) is the free preview.
        preview: (upload.length_ms > 0).then(|| pb::PreviewClipInput { start_ms: 0, duration_ms: upload.length_ms.min(30_000) }),
        image_descriptor: upload.image_descriptor,
        preview_clip: upload.preview_clip,
    };
    let media_id = catalog.publish_media(request).await?.into_inner().media_id;
    Ok(Published { media_id, content_hash, container_bytes, renditions: vec![("high".into(), content_hash)], format_version: engine::media::FORMAT_VERSION })
}

/// One quality of a media for [`publish_container`].
#[derive(Clone, Debug)]
pub struct RenditionUpload {
    pub name: String,
    pub bitrate_kbps: u32,
    pub content: Vec<u8>,
}

/// A descriptive component beyond title, artist and authors (which are always free text):
/// lyrics, liner notes, cover or promotional art, free to view or encrypted.
#[derive(Clone, Debug)]
pub struct ComponentUpload {
    pub name: String,
    pub media_type: String,
    pub encrypted: bool,
    pub data: Vec<u8>,
}

/// The free preview clip: its window in the media, its fades and its bytes.
#[derive(Clone, Debug)]
pub struct PreviewUpload {
    pub start_ms: u64,
    pub duration_ms: u64,
    pub fade_in_ms: u32,
    pub fade_out_ms: u32,
    pub media_type: String,
    pub clip: Vec<u8>,
}

/// What a publisher uploads for one media as a signed, chunked, multi-rendition
/// (format 2) container.
#[derive(Clone, Debug)]
pub struct ContainerUpload {
    pub title: String,
    pub artist: String,
    pub authors: Vec<String>,
    pub length_ms: u64,
    pub price_minor: u64,
    pub currency: String,
    pub terms: pb::RoyaltyTermsInput,
    pub renditions: Vec<RenditionUpload>,
    pub components: Vec<ComponentUpload>,
    pub preview: Option<PreviewUpload>,
    pub for_sale: bool,
    pub image_descriptor: String,
    /// Plaintext bytes per encrypted chunk (`engine::media::CHUNK_BYTES_DEFAULT`).
    pub chunk_bytes: u32,
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Builds a format-2 container (every rendition encrypted in chunks under a fresh media key,
/// the descriptive data, the preview clip, the table of contents signed with
/// `publisher_key`), wraps the media key for the engine and publishes it. The container is
/// signed for the media id the engine will give it (`ids::media_id_for(publisher_id,
/// request_id)`; `publisher_id` is the id of the credential `catalog` presents). The media
/// key never leaves this function in clear.
pub async fn publish_container(
    catalog: &mut CatalogClient,
    publisher_id: &str,
    request_id: &str,
    engine_public: &RsaPublic,
    publisher_key: &RsaPrivate,
    upload: ContainerUpload,
) -> anyhow::Result<Published> {
    let media_id = engine::ids::media_id_for(publisher_id, &engine::ids::RequestId::new(request_id));
    let renditions: Vec<pb::RenditionInput> = upload
        .renditions
        .iter()
        .map(|rendition| pb::RenditionInput {
            name: rendition.name.clone(),
            bitrate_kbps: rendition.bitrate_kbps,
            content_hash: crypto::hash(&rendition.content).to_vec(),
            size_bytes: rendition.content.len() as u64,
        })
        .collect();
    let hashes: Vec<(String, [u8; 32])> = upload.renditions.iter().map(|rendition| (rendition.name.clone(), crypto::hash(&rendition.content))).collect();
    let content_hash =
        hashes.iter().find(|(name, _)| name == "high").or(hashes.first()).map(|(_, hash)| *hash).context("a media needs at least one rendition")?;
    let preview = upload.preview.as_ref().map(|preview| pb::PreviewClipInput { start_ms: preview.start_ms, duration_ms: preview.duration_ms });
    let preview_clip = upload.preview.as_ref().map(|preview| preview.clip.clone()).unwrap_or_default();
    let (container, wrapped_media_key) = {
        let (upload, engine_public, publisher_key, media_id) = (upload.clone(), engine_public.clone(), publisher_key.clone(), media_id.clone());
        // AES over every chunk, hashing every section and an RSA signature: the blocking pool.
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
            let media_key = SecretKey::random();
            let authors = upload.authors.join("\n");
            let mut components = vec![
                ComponentSpec { name: "title", media_type: TEXT_PLAIN, encrypted: false, data: upload.title.as_bytes() },
                ComponentSpec { name: "artist", media_type: TEXT_PLAIN, encrypted: false, data: upload.artist.as_bytes() },
            ];
            if !authors.is_empty() {
                components.push(ComponentSpec { name: "authors", media_type: TEXT_PLAIN, encrypted: false, data: authors.as_bytes() });
            }
            components.extend(upload.components.iter().map(|c| ComponentSpec {
                name: &c.name,
                media_type: &c.media_type,
                encrypted: c.encrypted,
                data: &c.data,
            }));
            let spec = ContainerSpec {
                media_id: &media_id,
                length_ms: upload.length_ms,
                for_sale: upload.for_sale,
                chunk_bytes: upload.chunk_bytes,
                components,
                renditions: upload.renditions.iter().map(|r| RenditionSpec { name: &r.name, bitrate_kbps: r.bitrate_kbps, content: &r.content }).collect(),
                preview: upload.preview.as_ref().map(|p| PreviewSpec {
                    start_ms: p.start_ms,
                    duration_ms: p.duration_ms,
                    fade_in_ms: p.fade_in_ms,
                    fade_out_ms: p.fade_out_ms,
                    media_type: &p.media_type,
                    clip: &p.clip,
                }),
            };
            // Format 3: a key per rendition, so a buyer gets the key of what it bought only.
            let container = engine::media::encrypt_v3(&spec, &media_key, &publisher_key).context("cannot build the media container")?;
            Ok((container, crypto::wrap_key(&engine_public, &media_key)?))
        })
        .await
        .context("the container task failed")??
    };
    let container_bytes = container.len();
    let request = pb::PublishMediaRequest {
        request_id: request_id.to_string(),
        title: upload.title,
        artist: upload.artist,
        authors: upload.authors,
        length_ms: upload.length_ms,
        price_minor: upload.price_minor,
        currency: upload.currency,
        // A publisher's media is sold under its account's terms: it sends none.
        terms: (!engine::ids::is_publisher_id(publisher_id)).then_some(upload.terms),
        container,
        wrapped_media_key,
        for_sale: upload.for_sale,
        renditions,
        preview,
        image_descriptor: upload.image_descriptor,
        preview_clip,
    };
    let published = catalog.publish_media(request).await?.into_inner().media_id;
    anyhow::ensure!(
        published == media_id.0,
        "the engine published media {published}, but the container is signed for {media_id}; is {publisher_id} the id of the credential in use?"
    );
    Ok(Published { media_id: published, content_hash, container_bytes, renditions: hashes, format_version: engine::media::FORMAT_VERSION_3 })
}

/// A sale as the merchant completes it: what the player needs to redeem.
#[derive(Clone, Debug)]
pub struct Sale {
    pub voucher_id: String,
    pub receipt: Vec<u8>,
    pub node_id: String,
    pub node_endpoint: String,
    pub access_token: Vec<u8>,
    pub access_expires_at_ms: i64,
    /// The token key the access token was made under.
    pub token_key_id: u32,
    pub media_ids: Vec<String>,
    /// A rental's end (0: a purchase kept for good): the player deletes its copies after it.
    pub rental_until_ms: i64,
}

impl Sale {
    pub fn grant(&self) -> pb::AccessGrant {
        pb::AccessGrant {
            voucher_id: self.voucher_id.clone(),
            media_ids: self.media_ids.clone(),
            access_expires_at_ms: self.access_expires_at_ms,
            access_token: self.access_token.clone(),
            token_key_id: self.token_key_id,
        }
    }
}

/// Reserve → Authorize → IssueVoucher with request ids `<prefix>-reserve` etc., for the
/// "high" rendition.
/// A purchase paid in points: the account and the consumer's spend authorization
/// (`player authorize-spend`); without one the engine refuses the purchase.
#[derive(Clone, Debug)]
pub struct PointsPayment {
    pub account: String,
    pub authorization: Option<pb::SpendAuthorization>,
}

impl PointsPayment {
    /// Paid from the account the authorization names.
    pub fn authorized(authorization: pb::SpendAuthorization) -> Self {
        Self { account: authorization.account_id.clone(), authorization: Some(authorization) }
    }
}

/// With `points`, the purchase is paid from a consumer's points account.
pub async fn buy(merchant: &mut MerchantClient, prefix: &str, media_ids: &[String], points: Option<&PointsPayment>) -> Result<Sale, tonic::Status> {
    buy_rendition(merchant, prefix, media_ids, "high", points).await
}

/// [`buy`] of a named rendition.
pub async fn buy_rendition(
    merchant: &mut MerchantClient,
    prefix: &str,
    media_ids: &[String],
    rendition: &str,
    points: Option<&PointsPayment>,
) -> Result<Sale, tonic::Status> {
    buy_with(merchant, prefix, media_ids, rendition, points, 0).await
}

/// [`buy_rendition`], of a rental of `rental_ms` when it is not 0 (a window within the
/// engine's `rental.*` bounds, priced per window).
pub async fn buy_with(
    merchant: &mut MerchantClient,
    prefix: &str,
    media_ids: &[String],
    rendition: &str,
    points: Option<&PointsPayment>,
    rental_ms: u64,
) -> Result<Sale, tonic::Status> {
    let reserved = merchant
        .reserve(pb::ReserveRequest {
            request_id: format!("{prefix}-reserve"),
            media_ids: media_ids.to_vec(),
            rendition: rendition.into(),
            ttl_ms: 15 * 60 * 1000,
            points_account: points.map(|points| points.account.clone()).unwrap_or_default(),
            payment_ref: if points.is_some() { String::new() } else { format!("card-{prefix}") },
            spend_authorization: points.and_then(|points| points.authorization.clone()),
            rental_ms,
        })
        .await?
        .into_inner();
    let authorized =
        merchant.authorize(pb::AuthorizeRequest { request_id: format!("{prefix}-authorize"), voucher_id: reserved.voucher_id.clone() }).await?.into_inner();
    let issued = merchant
        .issue_voucher(pb::IssueVoucherRequest { request_id: format!("{prefix}-issue"), voucher_id: reserved.voucher_id.clone(), region: String::new() })
        .await?
        .into_inner();
    Ok(Sale {
        voucher_id: reserved.voucher_id,
        receipt: authorized.receipt,
        node_id: issued.node_id,
        node_endpoint: issued.node_endpoint,
        access_token: issued.access_token,
        access_expires_at_ms: issued.access_expires_at_ms,
        token_key_id: issued.token_key_id,
        media_ids: media_ids.to_vec(),
        rental_until_ms: authorized.rental_until_ms,
    })
}

/// Royalty terms used by the demo and tests: 30% retailer, 20% distributor, 50% owner.
pub fn standard_terms(owner: &str) -> pb::RoyaltyTermsInput {
    pb::RoyaltyTermsInput {
        retailer_bps: 3000,
        distributor_bps: 2000,
        owner_bps: 5000,
        distributor: "dist-1".into(),
        owner: owner.into(),
        rights_agent: "agent-1".into(),
    }
}
