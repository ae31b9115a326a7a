//! The reference consumer ("player"): its passport, and how it redeems a purchase at a
//! delivery node, downloads, decrypts and confirms, and plays previews.
//!
//! A passport is an RSA-2048 key pair plus the certificate the engine signs for it
//! (`CatalogService.CertifyConsumer`), kept under `<data_dir>/players/<consumer_id>/` as
//! `passport.pem` (PKCS#8, mode 0600; encrypted PKCS#8 under a passphrase when protected,
//! `passphrase`) and `certificate.json`. A purchase is what the merchant
//! hands the player after Authorize and IssueVoucher: the node, the access grant and the
//! receipt. Redemption proves possession of the receipt without sending it
//! (`receipt_proof` over the node's fresh challenge); each media key arrives wrapped for the
//! passport's key, is unwrapped on the blocking pool (RSA private-key work), and decrypts the
//! downloaded container, whose content hash `engine::media::open` checks. Each key comes
//! with the engine-signed transaction record of the delivery; the player checks that it
//! names this voucher, media and passport and the content it decrypted, and keeps a
//! *delivered copy*: the record, its signature and the content in one file; a rental's copy
//! is deleted once its window is over (`rentals`).
//!
//! Nodes are reached over TLS when they serve it (an `https://` endpoint in the sale, trusted
//! through [`NodeTrust`]), and a grant goes in plain text only to a node on loopback unless
//! the player allows it (`common::plaintext`).
//!
//! What deliberately does not live here: buying (the merchant's `Reserve`, `Authorize`,
//! `IssueVoucher`), key storage beyond the passport files, playback. Receipts, proofs, media
//! keys and private keys are never logged or printed: `Purchase` and `Passport` print only
//! ids.

use crate::common::client::CatalogClient;
use crate::common::transfer::{CHALLENGE_BYTES, Reassembly};
use anyhow::{Context, bail};
use engine::crypto::{self, RsaPrivate, RsaPublic, SecretKey};
use engine::domain::party::Certificate;
use engine::ids::{CertSerial, ConsumerId, MediaId, Millis, NodeId, VoucherId};
use engine::media::CONTAINER_BYTES_MAX;
use engine::media::TransactionRecord;
use engine::spend::SpendAuthorization;
use proto::v1::node_service_client::NodeServiceClient;
use proto::v1::{AccessGrant, CertifyConsumerRequest, ChallengeRequest, ConfirmRequest, DownloadRequest, PlayPreviewRequest, PlayerRedeemRequest};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

mod passphrase;
pub mod rentals;
pub use passphrase::{PassphraseSource, WrongPassphrase};

/// Bits of a passport's RSA key.
pub const PASSPORT_RSA_BITS: usize = 2048;
/// How long a new passport's certificate is valid.
pub const PASSPORT_VALIDITY_MS: u64 = 365 * 24 * 3600 * 1000;
/// Attempts at one download; each retry resumes from the bytes already received.
pub const DOWNLOAD_ATTEMPTS_MAX: u32 = 3;
/// Wait before the first download retry; doubled for each further one.
pub const DOWNLOAD_RETRY_BACKOFF_MS: u64 = 200;
/// Largest message accepted from a node (a chunk, or a redeem answer with up to 64 keys).
pub const NODE_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Longest wait for a TCP connection to a node.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

const PASSPORT_FILE: &str = "passport.pem";
const CERTIFICATE_FILE: &str = "certificate.json";

/// A delivery node's player API.
pub type NodeClient = NodeServiceClient<Channel>;

/// A call the player made was refused; `code` is the gRPC status code, for callers that
/// react to it (downcast the `anyhow::Error`).
#[derive(Debug, thiserror::Error)]
#[error("{call} failed ({code:?}): {message}")]
pub struct RpcError {
    pub call: &'static str,
    pub code: Code,
    pub message: String,
}

fn rpc_error(call: &'static str) -> impl FnOnce(tonic::Status) -> RpcError {
    move |status| RpcError { call, code: status.code(), message: status.message().to_string() }
}

// ---- passports -----------------------------------------------------------------------------

/// A consumer's RSA key pair and the engine's certificate for it.
#[derive(Clone)]
pub struct Passport {
    pub consumer_id: ConsumerId,
    pub private: RsaPrivate,
    pub certificate: proto::v1::Certificate,
}

impl std::fmt::Debug for Passport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passport").field("consumer_id", &self.consumer_id).field("cert_serial", &self.certificate.cert_serial).finish_non_exhaustive()
    }
}

/// `<data_dir>/players/<consumer_id>`, where a passport is kept.
pub fn passport_dir(data_dir: &Path, consumer_id: &ConsumerId) -> anyhow::Result<PathBuf> {
    if !engine::ids::is_valid_token(consumer_id.as_str()) {
        bail!("consumer id must be 1-64 characters of A-Z a-z 0-9 - _");
    }
    Ok(data_dir.join("players").join(consumer_id.as_str()))
}

/// The certificate file's shape (bytes in hex).
#[derive(serde::Serialize, serde::Deserialize)]
struct CertificateFile {
    consumer_id: String,
    cert_serial: String,
    public_key_der: String,
    not_before_ms: i64,
    not_after_ms: i64,
    engine_key_id: String,
    signature: String,
}

impl From<&proto::v1::Certificate> for CertificateFile {
    fn from(cert: &proto::v1::Certificate) -> Self {
        Self {
            consumer_id: cert.consumer_id.clone(),
            cert_serial: cert.cert_serial.clone(),
            public_key_der: hex::encode(&cert.public_key_der),
            not_before_ms: cert.not_before_ms,
            not_after_ms: cert.not_after_ms,
            engine_key_id: cert.engine_key_id.clone(),
            signature: hex::encode(&cert.signature),
        }
    }
}

impl TryFrom<CertificateFile> for proto::v1::Certificate {
    type Error = anyhow::Error;

    fn try_from(file: CertificateFile) -> anyhow::Result<Self> {
        Ok(Self {
            consumer_id: file.consumer_id,
            cert_serial: file.cert_serial,
            public_key_der: hex::decode(&file.public_key_der).context("public_key_der is not hex")?,
            not_before_ms: file.not_before_ms,
            not_after_ms: file.not_after_ms,
            engine_key_id: file.engine_key_id,
            signature: hex::decode(&file.signature).context("signature is not hex")?,
        })
    }
}

/// The domain form of a certificate received on the wire, for `verify_certificate`.
pub fn certificate_from_proto(cert: &proto::v1::Certificate) -> Certificate {
    Certificate {
        serial: CertSerial::new(cert.cert_serial.clone()),
        public_key_der: cert.public_key_der.clone(),
        not_before: Millis(cert.not_before_ms),
        not_after: Millis(cert.not_after_ms),
        engine_key_id: cert.engine_key_id.clone(),
        signature: cert.signature.clone(),
        revoked: false,
    }
}

/// Checks that `cert` certifies `public_key_der` for `consumer_id` and carries the engine's
/// signature.
pub fn check_certificate(cert: &proto::v1::Certificate, consumer_id: &ConsumerId, public_key_der: &[u8], engine_public: &RsaPublic) -> anyhow::Result<()> {
    if cert.consumer_id != consumer_id.as_str() {
        bail!("the certificate names consumer {} instead of {consumer_id}", cert.consumer_id);
    }
    if !crypto::ct_eq(&cert.public_key_der, public_key_der) {
        bail!("the certificate is for another public key (a request id reused for a new key?); certify again with a fresh request id");
    }
    if !engine::app::verify_certificate(engine_public, consumer_id, &certificate_from_proto(cert)) {
        bail!("the certificate's signature does not verify with the engine's public key; check that engine.pub.pem belongs to this engine");
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn write_new_file(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

impl Passport {
    /// The DER of the passport's public key (what the certificate certifies).
    pub fn public_key_der(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.private.public().to_der()?)
    }

    /// Writes `passport.pem` (mode 0600, plain PKCS#8) and `certificate.json` into `dir`
    /// (created, mode 0700); refuses to overwrite an existing passport, whose key would be lost.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        self.save_with(dir, None)
    }

    /// As [`Passport::save`]; with a passphrase the key is stored as encrypted PKCS#8
    /// (PBES2, scrypt, AES-256-CBC: `RsaPrivate::to_protected_pem`; about half a second).
    pub fn save_with(&self, dir: &Path, passphrase: Option<&str>) -> anyhow::Result<()> {
        create_private_dir(dir)?;
        let pem_path = dir.join(PASSPORT_FILE);
        let cert_path = dir.join(CERTIFICATE_FILE);
        for path in [&pem_path, &cert_path] {
            if path.exists() {
                bail!("{} already exists; a passport is never overwritten (move it away first)", path.display());
            }
        }
        let certificate = serde_json::to_vec_pretty(&CertificateFile::from(&self.certificate)).context("certificate as json")?;
        let pem = match passphrase {
            Some(passphrase) => self.private.to_protected_pem(passphrase.as_bytes())?,
            None => self.private.to_pkcs8_pem()?,
        };
        write_new_file(&pem_path, pem.as_bytes(), true)?;
        write_new_file(&cert_path, &certificate, false)?;
        Ok(())
    }

    /// Reads an unprotected passport saved by [`Passport::save`] and checks that its key and
    /// certificate belong together; a protected one needs [`Passport::load_with`].
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(dir, &PassphraseSource::Unavailable)
    }

    /// Reads a passport, plain (as every passport before protection was: it still loads, no
    /// passphrase asked) or protected (the passphrase from `source`, asked only then; a
    /// wrong one is a [`WrongPassphrase`] in the error chain). Blocks: scrypt takes about
    /// half a second.
    pub fn load_with(dir: &Path, source: &PassphraseSource) -> anyhow::Result<Self> {
        let pem_path = dir.join(PASSPORT_FILE);
        let cert_path = dir.join(CERTIFICATE_FILE);
        let pem = zeroize::Zeroizing::new(std::fs::read_to_string(&pem_path).with_context(|| format!("cannot read {}", pem_path.display()))?);
        let private = if RsaPrivate::is_protected_pem(&pem) {
            let passphrase = source.to_open(&pem_path)?;
            match RsaPrivate::from_protected_pem(&pem, passphrase.as_bytes()) {
                Ok(private) => private,
                Err(crypto::CryptoError::WrongPassphrase) => return Err(WrongPassphrase { path: pem_path }.into()),
                Err(error) => return Err(error).with_context(|| format!("{} is not an encrypted PKCS#8 RSA private key", pem_path.display())),
            }
        } else {
            RsaPrivate::from_pkcs8_pem(&pem).with_context(|| format!("{} is not a PKCS#8 RSA private key", pem_path.display()))?
        };
        let text = std::fs::read(&cert_path).with_context(|| format!("cannot read {}", cert_path.display()))?;
        let file: CertificateFile = serde_json::from_slice(&text).with_context(|| format!("{} is not a certificate file", cert_path.display()))?;
        let certificate = proto::v1::Certificate::try_from(file).with_context(|| format!("{} is damaged", cert_path.display()))?;
        let passport = Self { consumer_id: ConsumerId::new(certificate.consumer_id.clone()), private, certificate };
        if !crypto::ct_eq(&passport.public_key_der()?, &passport.certificate.public_key_der) {
            bail!("{} certifies another key than {}; the passport files do not belong together", cert_path.display(), pem_path.display());
        }
        Ok(passport)
    }

    /// Whether the passport in `dir` is protected by a passphrase (nothing is decrypted).
    pub fn is_protected(dir: &Path) -> anyhow::Result<bool> {
        let pem_path = dir.join(PASSPORT_FILE);
        let pem = zeroize::Zeroizing::new(std::fs::read_to_string(&pem_path).with_context(|| format!("cannot read {}", pem_path.display()))?);
        Ok(RsaPrivate::is_protected_pem(&pem))
    }

    /// Protects the plain passport in `dir` under `passphrase`: the encrypted key is written
    /// beside it (0600), checked to open with the passphrase and name the same key, then
    /// renamed over `passport.pem`, so a crash leaves the old file or the new one, never
    /// none. A protected passport is refused (nothing changes).
    pub fn protect(dir: &Path, passphrase: &str) -> anyhow::Result<()> {
        let pem_path = dir.join(PASSPORT_FILE);
        let pem = zeroize::Zeroizing::new(std::fs::read_to_string(&pem_path).with_context(|| format!("cannot read {}", pem_path.display()))?);
        if RsaPrivate::is_protected_pem(&pem) {
            bail!("{} is already protected; nothing changed", pem_path.display());
        }
        let private = RsaPrivate::from_pkcs8_pem(&pem).with_context(|| format!("{} is not a PKCS#8 RSA private key", pem_path.display()))?;
        let protected = private.to_protected_pem(passphrase.as_bytes())?;
        if RsaPrivate::from_protected_pem(&protected, passphrase.as_bytes())?.public() != private.public() {
            bail!("the protected key does not open to the same key; nothing changed");
        }
        let temporary = dir.join(format!("{PASSPORT_FILE}.protecting"));
        // A leftover of an interrupted run holds only an encrypted copy: replace it.
        let _ = std::fs::remove_file(&temporary);
        write_new_file(&temporary, protected.as_bytes(), true)?;
        std::fs::rename(&temporary, &pem_path).with_context(|| format!("cannot replace {}", pem_path.display()))?;
        std::fs::File::open(dir).and_then(|directory| directory.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(())
    }

    /// The consumer's single-use consent for `merchant` to spend up to `amount_max` of their
    /// points on `media` (empty: any), until `expires_at`, signed with this passport.
    pub fn authorize_spend(&self, merchant: &str, amount_max: u64, media: &[String], expires_at: Millis) -> anyhow::Result<SpendAuthorization> {
        let serial = CertSerial::new(self.certificate.cert_serial.clone());
        let media = media.iter().map(|m| MediaId::new(m.clone())).collect();
        Ok(SpendAuthorization::sign(&self.private, &self.consumer_id, &serial, &engine::ids::MerchantId::new(merchant), amount_max, media, expires_at)?)
    }

    /// The consumer's own points, asked with a request signed now.
    pub async fn points(&self, client: &mut crate::common::client::ConsumerClient) -> anyhow::Result<proto::v1::PointsBalanceResponse> {
        let serial = CertSerial::new(self.certificate.cert_serial.clone());
        let issued_at = engine::clock::Clock::now(&engine::clock::SystemClock);
        let signature = engine::spend::sign_points_request(&self.private, &self.consumer_id, &serial, issued_at)?;
        let request =
            proto::v1::GetPointsRequest { consumer_id: self.consumer_id.as_str().to_string(), cert_serial: serial.0, issued_at_ms: issued_at.0, signature };
        Ok(client.get_points(request).await.map(tonic::Response::into_inner).map_err(rpc_error("GetPoints"))?)
    }
}

/// Makes a passport: a fresh RSA key (generated on the blocking pool: it takes seconds),
/// certified by the engine, whose signature is checked before the passport is returned.
pub async fn create_passport(catalog: &mut CatalogClient, request_id: &str, consumer_id: &ConsumerId, engine_public: &RsaPublic) -> anyhow::Result<Passport> {
    let private = tokio::task::spawn_blocking(|| RsaPrivate::generate(PASSPORT_RSA_BITS)).await.context("the key generation task failed")??;
    let public_key_der = private.public().to_der()?;
    let request = CertifyConsumerRequest {
        request_id: request_id.to_string(),
        consumer_id: consumer_id.as_str().to_string(),
        public_key_der: public_key_der.clone(),
        validity_ms: PASSPORT_VALIDITY_MS,
    };
    let certificate = catalog.certify_consumer(request).await.map_err(rpc_error("CertifyConsumer"))?.into_inner();
    check_certificate(&certificate, consumer_id, &public_key_der, engine_public)?;
    info!(%consumer_id, cert_serial = %certificate.cert_serial, "passport certified");
    Ok(Passport { consumer_id: consumer_id.clone(), private, certificate })
}

// ---- purchases -----------------------------------------------------------------------------

/// What the merchant hands the player after Authorize and IssueVoucher.
#[derive(Clone)]
pub struct Purchase {
    pub node_endpoint: String,
    pub node_id: String,
    pub grant: AccessGrant,
    /// The receipt (32 bytes) the player proves it holds. Never logged.
    pub receipt: Vec<u8>,
    /// A rental's end (0: a purchase kept for good): each fetch is a play of its own, and
    /// the copies are deleted once it passed (`purge_ended_rentals`).
    pub rental_until_ms: i64,
}

impl std::fmt::Debug for Purchase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Purchase")
            .field("node_endpoint", &self.node_endpoint)
            .field("node_id", &self.node_id)
            .field("voucher_id", &self.grant.voucher_id)
            .field("media_ids", &self.grant.media_ids)
            .finish_non_exhaustive()
    }
}

/// One media of a redeemed purchase, as the player received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredCopy {
    pub media_id: String,
    /// `<out_dir>/<voucher>-<media>.media`: the delivered copy (`engine::media` delivered
    /// copy format: the engine-signed transaction record, its signature, then the decrypted
    /// content; `vouchsafe inspect` checks it). Not written when the content did not
    /// decrypt and verify.
    pub path: PathBuf,
    /// blake3 of the decrypted content (the container's verified content hash); zero when the
    /// content did not decrypt.
    pub content_hash: [u8; 32],
    /// blake3 of the container bytes received (what `Confirm` reported).
    pub container_hash: [u8; 32],
    /// Whether the media key unwrapped and the content decrypted and matched its hash. A copy
    /// that does not decrypt is not confirmed to the node.
    pub decrypt_ok: bool,
    /// The node's answer to `Confirm`: every media of the voucher is now delivered.
    pub voucher_delivered: bool,
    /// When the container's first bytes arrived (the bench's time to first byte); `None`
    /// for an empty container.
    pub first_byte_at: Option<std::time::Instant>,
}

/// How a player reaches delivery nodes: the CA that signed the certificates of nodes that
/// serve TLS (`--node-ca`; tonic is built without a system root store, so an `https://`
/// node needs it), and whether plain text to a node on another machine is allowed
/// (`--insecure-plaintext`). The default: plain text on loopback only, no TLS trust.
#[derive(Clone, Debug, Default)]
pub struct NodeTrust {
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_plaintext: bool,
}

/// Connects to a node's `NodeService` with the default [`NodeTrust`] (plain text on
/// loopback only).
pub async fn connect_node(endpoint: &str) -> anyhow::Result<NodeClient> {
    connect_node_with(endpoint, &NodeTrust::default()).await
}

/// Connects to a node's `NodeService`: over TLS to an `https://` node, trusting
/// `trust.ca_pem`; in plain text only where `plaintext::check_node_url` allows it. The TLS
/// handshake happens here, so a node whose certificate the CA did not sign is refused
/// before any grant is sent.
pub async fn connect_node_with(endpoint: &str, trust: &NodeTrust) -> anyhow::Result<NodeClient> {
    crate::common::plaintext::check_node_url(endpoint, trust.ca_pem.is_some(), trust.insecure_plaintext)?;
    let mut node_endpoint = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("node endpoint {endpoint:?} is not a URL such as https://node.example:7500"))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true);
    let tls = node_endpoint.uri().scheme_str().is_some_and(|scheme| scheme.eq_ignore_ascii_case("https"));
    if tls {
        let mut config = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &trust.ca_pem {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        node_endpoint = node_endpoint.tls_config(config).context("TLS configuration for the delivery node")?;
    }
    let channel = node_endpoint.connect().await.with_context(|| {
        let hint = if tls { "; check that --node-ca names the CA that signed the node's certificate" } else { "" };
        format!("cannot reach the delivery node at {endpoint:?}{hint}")
    })?;
    Ok(NodeServiceClient::new(channel).max_decoding_message_size(NODE_MESSAGE_BYTES_MAX))
}

/// Redeems a purchase at its node and downloads, decrypts, writes and confirms every media.
pub async fn redeem_and_download(purchase: &Purchase, passport: &Passport, request_id: &str, out_dir: &Path) -> anyhow::Result<Vec<DeliveredCopy>> {
    let mut node = connect_node(&purchase.node_endpoint).await?;
    redeem_and_download_on(&mut node, purchase, passport, request_id, out_dir).await
}

/// [`redeem_and_download`] over an existing connection to the purchase's node.
pub async fn redeem_and_download_on(
    node: &mut NodeClient,
    purchase: &Purchase,
    passport: &Passport,
    request_id: &str,
    out_dir: &Path,
) -> anyhow::Result<Vec<DeliveredCopy>> {
    fetch_on(node, purchase, passport, request_id, out_dir, false).await
}

/// Fetches a delivered purchase again for the consumer it was released to (a lost copy),
/// within the grant's access window: the engine allows `delivery.recoveries_max` of them,
/// and each copy's transaction record names its recovery. Not a new sale.
pub async fn recover_and_download(purchase: &Purchase, passport: &Passport, request_id: &str, out_dir: &Path) -> anyhow::Result<Vec<DeliveredCopy>> {
    let mut node = connect_node(&purchase.node_endpoint).await?;
    recover_and_download_on(&mut node, purchase, passport, request_id, out_dir).await
}

/// [`recover_and_download`] over an existing connection to the purchase's node.
pub async fn recover_and_download_on(
    node: &mut NodeClient,
    purchase: &Purchase,
    passport: &Passport,
    request_id: &str,
    out_dir: &Path,
) -> anyhow::Result<Vec<DeliveredCopy>> {
    fetch_on(node, purchase, passport, request_id, out_dir, true).await
}

async fn fetch_on(
    node: &mut NodeClient,
    purchase: &Purchase,
    passport: &Passport,
    request_id: &str,
    out_dir: &Path,
    recover: bool,
) -> anyhow::Result<Vec<DeliveredCopy>> {
    let grant = &purchase.grant;
    let voucher_id = grant.voucher_id.as_str();
    // The ids name the output files: refuse anything that is not a plain token.
    for id in std::iter::once(voucher_id).chain(grant.media_ids.iter().map(String::as_str)) {
        if !engine::ids::is_valid_token(id) {
            bail!("the grant holds an id that is not 1-64 characters of A-Z a-z 0-9 - _; ask the merchant for the grant again");
        }
    }
    let receipt: [u8; crypto::KEY_BYTES] = purchase
        .receipt
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("the receipt must be {} bytes; ask the merchant for it again", crypto::KEY_BYTES))?;
    let receipt = SecretKey::from_bytes(receipt);

    let challenge = node.challenge(ChallengeRequest { grant: Some(grant.clone()) }).await.map_err(rpc_error("Challenge"))?.into_inner().challenge;
    if challenge.len() != CHALLENGE_BYTES {
        bail!("the node sent a {}-byte challenge instead of {CHALLENGE_BYTES}", challenge.len());
    }
    // The proof names this passport: the node (or anyone on the link) cannot put another
    // consumer in the Redeem.
    let subject = crypto::ProofConsumer::new(passport.consumer_id.as_str(), &passport.certificate.cert_serial, &passport.certificate.public_key_der);
    let proof = crypto::receipt_proof(&receipt, voucher_id, &purchase.node_id, &challenge, &subject);
    let redeem = PlayerRedeemRequest {
        grant: Some(grant.clone()),
        request_id: request_id.to_string(),
        consumer_id: passport.consumer_id.as_str().to_string(),
        cert_serial: passport.certificate.cert_serial.clone(),
        challenge,
        proof: proof.to_vec(),
        recover,
    };
    let answer = node.redeem(redeem).await.map_err(rpc_error("Redeem"))?.into_inner();
    if answer.voucher_id != voucher_id {
        bail!("the node answered for voucher {} instead of {voucher_id}", answer.voucher_id);
    }
    if answer.keys.is_empty() {
        bail!("the redemption was accepted without any media key; report this to the merchant");
    }
    debug!(%voucher_id, keys = answer.keys.len(), "redeemed");

    tokio::fs::create_dir_all(out_dir).await.with_context(|| format!("cannot create {}", out_dir.display()))?;
    // Noted before any copy is written, so no copy of a rental outlives its note.
    if purchase.rental_until_ms > 0 {
        rentals::note_rental(out_dir, voucher_id, purchase.rental_until_ms, &grant.media_ids)?;
    }
    let private = Arc::new(passport.private.clone());
    let mut copies = Vec::with_capacity(answer.keys.len());
    for key in answer.keys {
        if !grant.media_ids.contains(&key.media_id) {
            bail!("the node sent a key for media {}, which the grant does not name", key.media_id);
        }
        let (container, first_byte_at) = download(node, grant, &key.media_id).await?;
        let private = private.clone();
        let wrapped = key.wrapped_key;
        let expected = Expected { voucher_id: voucher_id.to_string(), media_id: key.media_id.clone(), passport: passport.certificate.clone() };
        let (transaction, signature) = (key.transaction, key.transaction_signature);
        let path = rentals::copy_path(out_dir, voucher_id, &key.media_id);
        let copy_path = path.clone();
        // RSA private-key work, decrypting up to CONTAINER_BYTES_MAX and writing the copy as
        // it is decrypted: the blocking pool.
        let (container_hash, written) = tokio::task::spawn_blocking(move || {
            let container_hash = crypto::hash(&container);
            let written = match transaction_from_proto(transaction.as_ref()).and_then(|record| expected.check(&record).map(|()| record)) {
                Ok(record) => write_copy(&private, &wrapped, &container, &record, &signature, &copy_path),
                Err(reason) => Ok(Err(reason)),
            };
            (container_hash, written)
        })
        .await
        .context("the decryption task failed")?;
        let content_hash = match written.with_context(|| format!("cannot write {}", path.display()))? {
            Ok(content_hash) => content_hash,
            Err(reason) => {
                // Not confirmed: the node would record a delivery the consumer cannot use.
                warn!(%voucher_id, media_id = %key.media_id, %reason, "the media did not decrypt and verify; not confirming it");
                copies.push(DeliveredCopy {
                    media_id: key.media_id,
                    path,
                    content_hash: [0; 32],
                    container_hash,
                    decrypt_ok: false,
                    voucher_delivered: false,
                    first_byte_at,
                });
                continue;
            }
        };
        // The Confirm proves the receipt too: only the buyer completes (or fails) it.
        let proof = crypto::confirm_proof(&receipt, voucher_id, &purchase.node_id, &key.media_id, &container_hash, &subject).to_vec();
        // A rental's play names itself, so the engine completes each play (not the first only).
        let play_id = if purchase.rental_until_ms > 0 { request_id.to_string() } else { String::new() };
        let confirm = ConfirmRequest { grant: Some(grant.clone()), media_id: key.media_id.clone(), received_hash: container_hash.to_vec(), proof, play_id };
        let confirmed = node.confirm(confirm).await.map_err(rpc_error("Confirm"))?.into_inner();
        info!(%voucher_id, media_id = %key.media_id, path = %path.display(), voucher_delivered = confirmed.voucher_delivered, "delivered");
        copies.push(DeliveredCopy {
            media_id: key.media_id,
            path,
            content_hash,
            container_hash,
            decrypt_ok: true,
            voucher_delivered: confirmed.voucher_delivered,
            first_byte_at,
        });
    }
    Ok(copies)
}

/// What a delivery's transaction record must name: this voucher and media, this passport.
struct Expected {
    voucher_id: String,
    media_id: String,
    passport: proto::v1::Certificate,
}

impl Expected {
    /// The player cannot check the engine's signature without the engine's key set
    /// (`vouchsafe inspect --keys` does, with the key the record names); it checks that the
    /// record is about this delivery and this passport. Not that it names the engine key that
    /// certified the passport: the engine key may have rotated since (`keys rotate engine`).
    fn check(&self, record: &TransactionRecord) -> Result<(), String> {
        let fields = [
            ("voucher", record.voucher_id.as_str(), self.voucher_id.as_str()),
            ("media", record.media_id.as_str(), self.media_id.as_str()),
            ("consumer", record.consumer_id.as_str(), self.passport.consumer_id.as_str()),
            ("certificate", record.cert_serial.as_str(), self.passport.cert_serial.as_str()),
        ];
        match fields.iter().find(|(_, got, want)| got != want) {
            Some((what, got, want)) => Err(format!("the transaction record names {what} {got:?} instead of {want:?}")),
            None => Ok(()),
        }
    }
}

/// The domain form of a transaction record received on the wire.
pub fn transaction_from_proto(record: Option<&proto::v1::TransactionRecord>) -> Result<TransactionRecord, String> {
    let record = record.ok_or("the redemption carries no transaction record")?;
    let content_hash: [u8; 32] = record.content_hash.as_slice().try_into().map_err(|_| "the transaction record's content hash is not 32 bytes".to_string())?;
    Ok(TransactionRecord {
        voucher_id: VoucherId::new(record.voucher_id.clone()),
        media_id: MediaId::new(record.media_id.clone()),
        rendition: record.rendition.clone(),
        node_id: NodeId::new(record.node_id.clone()),
        delivered_at: Millis(record.delivered_at_ms),
        engine_key_id: record.engine_key_id.clone(),
        consumer_id: ConsumerId::new(record.consumer_id.clone()),
        cert_serial: CertSerial::new(record.cert_serial.clone()),
        content_hash,
        recovery: record.recovery,
    })
}

/// Decrypts the rendition the record names, checks it is the content the record names, and
/// writes the delivered copy to `path`; the content hash. A format-2 or 3 container must
/// carry a publisher signature that verifies over every section and be the media the record
/// names; its rendition is decrypted chunk by chunk, each chunk authenticated on its own (as
/// a player decrypts while it plays) and written as it comes, then the whole is checked
/// against the signed content hash. The copy is written to a temporary file renamed to
/// `path` only once everything checked, so no copy is left of content that did not verify.
/// Format 3 sends the key of that rendition (and the components key) only, formats 1 and 2
/// the media key. The outer error is the file's; the inner one says why the content was
/// refused.
fn write_copy(
    private: &RsaPrivate,
    wrapped: &[u8],
    container: &[u8],
    record: &TransactionRecord,
    signature: &[u8],
    path: &Path,
) -> std::io::Result<Result<[u8; 32], String>> {
    let unwrap_media_key = || crypto::unwrap_key(private, wrapped).map_err(|error| error.to_string());
    let parsed = match engine::media::parse(container) {
        Ok(parsed) => parsed,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let container = match parsed {
        engine::media::Parsed::V1(_) => {
            let content = match unwrap_media_key().and_then(|key| engine::media::open(&key, container).map_err(|error| error.to_string())) {
                Ok(content) => content,
                Err(reason) => return Ok(Err(reason)),
            };
            let content_hash = crypto::hash(&content);
            if !crypto::ct_eq(&content_hash, &record.content_hash) {
                return Ok(Err("the decrypted content is not the content the transaction record names".into()));
            }
            std::fs::write(path, engine::media::delivered_copy(record, signature, &content))?;
            return Ok(Ok(content_hash));
        }
        engine::media::Parsed::V2(container) => container,
    };
    let key = if container.format_version == engine::media::FORMAT_VERSION_3 {
        crypto::unwrap_keys(private, wrapped, 2).map(|mut keys| keys.swap_remove(0)).map_err(|error| format!("the purchase keys: {error}"))
    } else {
        unwrap_media_key()
    };
    let checked = key.and_then(|key| {
        container.verify().map_err(|error| format!("the container's publisher signature: {error}"))?;
        if container.media_id != record.media_id {
            return Err(format!("the container is media {}, the transaction record names {}", container.media_id, record.media_id));
        }
        let (index, rendition) = container.rendition(&record.rendition).ok_or_else(|| format!("the container has no rendition {:?}", record.rendition))?;
        if !crypto::ct_eq(&rendition.content_hash, &record.content_hash) {
            return Err(format!("rendition {:?} is not the content the transaction record names", record.rendition));
        }
        Ok((key, index, rendition.size_bytes))
    });
    let (key, index, size_bytes) = match checked {
        Ok(checked) => checked,
        Err(reason) => return Ok(Err(reason)),
    };
    let temporary = path.with_extension("part");
    let written = write_rendition(&container, &key, index, &engine::media::delivered_copy_header(record, signature, size_bytes), &temporary, path);
    if !matches!(written, Ok(Ok(()))) {
        // Nothing of content that did not verify, or of a failed write, is kept.
        let _ = std::fs::remove_file(&temporary);
    }
    Ok(written?.map(|()| record.content_hash))
}

/// Writes `header` and then rendition `index` of `container` as it decrypts to `temporary`,
/// renamed to `path` once the whole rendition decrypted and matched its hash. The outer error
/// is the file's; the inner one says why the content was refused.
fn write_rendition(
    container: &engine::media::ContainerV2<'_>,
    key: &SecretKey,
    index: usize,
    header: &[u8],
    temporary: &Path,
    path: &Path,
) -> std::io::Result<Result<(), String>> {
    let mut file = std::fs::File::create(temporary)?;
    file.write_all(header)?;
    match container.open_rendition_into(key, index, |plaintext| file.write_all(plaintext)) {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(error),
        Err(error) => return Ok(Err(error.to_string())),
    }
    // Written in the chunks as they were decrypted; closed before the rename.
    drop(file);
    std::fs::rename(temporary, path)?;
    Ok(Ok(()))
}

/// Whether a failed stream is worth resuming (the connection, not the request, failed).
fn resumable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted)
}

/// Downloads one media container, resuming from the bytes received when the stream breaks;
/// with the moment its first bytes arrived.
async fn download(node: &mut NodeClient, grant: &AccessGrant, media_id: &str) -> anyhow::Result<(Vec<u8>, Option<std::time::Instant>)> {
    let mut reassembly = Reassembly::new(CONTAINER_BYTES_MAX);
    let mut first_byte_at = None;
    let mut backoff_ms = DOWNLOAD_RETRY_BACKOFF_MS;
    let mut attempt = 1;
    loop {
        let request = DownloadRequest { grant: Some(grant.clone()), media_id: media_id.to_string(), offset: reassembly.received() };
        let failure = match node.download(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(chunk)) => {
                            first_byte_at = first_byte_at.or_else(|| (!chunk.data.is_empty()).then(std::time::Instant::now));
                            reassembly.push(chunk).with_context(|| format!("the node's stream of media {media_id} is malformed"))?
                        }
                        Ok(None) => {
                            let container = reassembly.finish().with_context(|| format!("the download of media {media_id} is incomplete"))?;
                            return Ok((container, first_byte_at));
                        }
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        if attempt == DOWNLOAD_ATTEMPTS_MAX || !resumable(failure.code()) {
            return Err(rpc_error("Download")(failure).into());
        }
        warn!(media_id, attempt, received_bytes = reassembly.received(), code = ?failure.code(), "download interrupted; resuming");
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms *= 2;
        attempt += 1;
    }
}

/// Plays a preview at the node the merchant's `Preview` named: the free clip's bytes.
pub async fn play_preview(node_endpoint: &str, preview_id: &str) -> anyhow::Result<Vec<u8>> {
    play_preview_on(&mut connect_node(node_endpoint).await?, preview_id).await
}

/// [`play_preview`] over an existing connection to the node.
pub async fn play_preview_on(node: &mut NodeClient, preview_id: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = node.play_preview(PlayPreviewRequest { preview_id: preview_id.to_string() }).await.map_err(rpc_error("PlayPreview"))?.into_inner();
    let mut reassembly = Reassembly::new(CONTAINER_BYTES_MAX);
    while let Some(chunk) = stream.message().await.map_err(rpc_error("PlayPreview"))? {
        reassembly.push(chunk).with_context(|| format!("the node's stream of preview {preview_id} is malformed"))?;
    }
    reassembly.finish().with_context(|| format!("the preview {preview_id} is incomplete"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_key() -> RsaPrivate {
        RsaPrivate::from_pkcs8_pem(include_str!("../../../engine/testdata/rsa-2048-a.pem")).expect("test key a")
    }

    fn consumer_key() -> RsaPrivate {
        RsaPrivate::from_pkcs8_pem(include_str!("../../../engine/testdata/rsa-2048-b.pem")).expect("test key b")
    }

    /// A certificate as the engine would sign it.
    fn certify(engine: &RsaPrivate, consumer_id: &ConsumerId, public_key_der: &[u8]) -> proto::v1::Certificate {
        let serial = CertSerial::new("c1");
        let (not_before, not_after) = (Millis(1_000), Millis(2_000));
        let message = engine::app::certificate_message(consumer_id, &serial, public_key_der, not_before, not_after);
        proto::v1::Certificate {
            consumer_id: consumer_id.as_str().to_string(),
            cert_serial: serial.0,
            public_key_der: public_key_der.to_vec(),
            not_before_ms: not_before.0,
            not_after_ms: not_after.0,
            engine_key_id: engine.public().key_id(),
            signature: crypto::sign(engine, &message).expect("signs"),
        }
    }

    #[test]
    fn a_certificate_is_accepted_only_for_its_consumer_key_and_engine() {
        let engine = engine_key();
        let consumer = ConsumerId::new("alice");
        let private = consumer_key();
        let der = private.public().to_der().expect("der");
        let cert = certify(&engine, &consumer, &der);
        check_certificate(&cert, &consumer, &der, &engine.public()).expect("verifies");

        let other_engine = consumer_key();
        assert!(check_certificate(&cert, &consumer, &der, &other_engine.public()).is_err(), "another engine's key");
        assert!(check_certificate(&cert, &ConsumerId::new("bob"), &der, &engine.public()).is_err(), "another consumer");
        let other_der = engine.public().to_der().expect("der");
        assert!(check_certificate(&cert, &consumer, &other_der, &engine.public()).is_err(), "another public key");
        let mut forged = cert.clone();
        forged.not_after_ms += 1;
        assert!(check_certificate(&forged, &consumer, &der, &engine.public()).is_err(), "an altered validity");
        let mut bad_signature = cert;
        bad_signature.signature[0] ^= 1;
        assert!(check_certificate(&bad_signature, &consumer, &der, &engine.public()).is_err(), "an altered signature");
    }

    #[test]
    fn a_passport_saves_and_loads_and_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let consumer = ConsumerId::new("alice");
        let private = consumer_key();
        let certificate = certify(&engine_key(), &consumer, &private.public().to_der().expect("der"));
        let passport = Passport { consumer_id: consumer.clone(), private, certificate };
        let home = passport_dir(dir.path(), &consumer).expect("a valid id");
        assert_eq!(home, dir.path().join("players").join("alice"));
        passport.save(&home).expect("saved");

        let loaded = Passport::load(&home).expect("loads");
        assert_eq!(loaded.consumer_id, consumer);
        assert_eq!(loaded.certificate, passport.certificate);
        assert_eq!(loaded.private.public(), passport.private.public());
        check_certificate(&loaded.certificate, &consumer, &loaded.public_key_der().expect("der"), &engine_key().public()).expect("still verifies");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(home.join(PASSPORT_FILE)).expect("pem").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the private key is readable by its owner only");
        }
        assert!(passport.save(&home).is_err(), "never overwritten");
        assert!(!format!("{loaded:?}").contains("PRIVATE KEY"), "Debug shows ids only");

        // Negative control: a certificate for another key does not load with this key.
        let other_dir = dir.path().join("mismatched");
        let mismatched = Passport { certificate: certify(&engine_key(), &consumer, &engine_key().public().to_der().expect("der")), ..passport };
        mismatched.save(&other_dir).expect("saved");
        assert!(Passport::load(&other_dir).is_err(), "key and certificate do not belong together");
        assert!(passport_dir(dir.path(), &ConsumerId::new("../etc")).is_err(), "ids never escape the data dir");
    }

    /// The attack: whoever copies `passport.pem` signs as the consumer. With the protection
    /// off (a plain passport, as before) the copied file loads with no passphrase at all;
    /// protected, it loads only with the passphrase: none is a usage error, a wrong one a
    /// `WrongPassphrase`. `protect` turns the plain passport into the protected one in
    /// place, and refuses to protect twice.
    #[test]
    fn a_protected_passport_opens_only_with_its_passphrase() {
        let dir = tempfile::tempdir().expect("temp dir");
        let consumer = ConsumerId::new("alice");
        let private = consumer_key();
        let certificate = certify(&engine_key(), &consumer, &private.public().to_der().expect("der"));
        let passport = Passport { consumer_id: consumer, private, certificate };
        let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
        std::fs::write(&right, "correct horse\n").expect("write");
        std::fs::write(&wrong, "correct hors\n").expect("write");
        let (plain_home, protected_home) = (dir.path().join("plain"), dir.path().join("protected"));

        // Protection off: the thief's copy of a plain passport opens without a passphrase.
        passport.save(&plain_home).expect("saved");
        assert!(!Passport::is_protected(&plain_home).expect("reads"));
        assert_eq!(Passport::load(&plain_home).expect("a plain passport needs nothing").private.public(), passport.private.public());

        // Protection on.
        passport.save_with(&protected_home, Some("correct horse")).expect("saved");
        assert!(Passport::is_protected(&protected_home).expect("reads"));
        let none = Passport::load(&protected_home).expect_err("no passphrase source");
        assert!(format!("{none:#}").contains("--passphrase-file"), "{none:#}");
        let refused = Passport::load_with(&protected_home, &PassphraseSource::File(wrong.clone())).expect_err("a wrong passphrase");
        assert!(refused.downcast_ref::<WrongPassphrase>().is_some(), "{refused:#}");
        assert!(!format!("{refused:#}").contains("hors"), "the error never quotes the passphrase: {refused:#}");
        let opened = Passport::load_with(&protected_home, &PassphraseSource::File(right.clone())).expect("the right passphrase");
        assert_eq!(opened.private.public(), passport.private.public());
        // A plain passport still loads with a passphrase source given (it is not asked for).
        Passport::load_with(&plain_home, &PassphraseSource::File(wrong.clone())).expect("plain: the passphrase is not used");

        // `protect` turns the plain passport into a protected one, once.
        Passport::protect(&plain_home, "correct horse").expect("protected");
        assert!(Passport::is_protected(&plain_home).expect("reads"));
        assert!(Passport::load(&plain_home).is_err(), "the copy no longer opens without the passphrase");
        assert!(Passport::load_with(&plain_home, &PassphraseSource::File(wrong)).expect_err("wrong").downcast_ref::<WrongPassphrase>().is_some());
        assert_eq!(Passport::load_with(&plain_home, &PassphraseSource::File(right)).expect("opens").private.public(), passport.private.public());
        assert!(Passport::protect(&plain_home, "another").is_err(), "protected twice");
        assert!(!plain_home.join("passport.pem.protecting").exists(), "no leftover");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(plain_home.join(PASSPORT_FILE)).expect("pem").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "still readable by its owner only");
        }
    }

    #[test]
    fn a_purchase_never_prints_its_receipt_or_token() {
        let purchase = Purchase {
            node_endpoint: "http://127.0.0.1:1".into(),
            node_id: "n1".into(),
            grant: AccessGrant {
                voucher_id: "v1".into(),
                media_ids: vec!["md1".into()],
                access_expires_at_ms: 1,
                access_token: vec![0xAB; 32],
                token_key_id: 0,
            },
            receipt: vec![0xCD; 32],
            rental_until_ms: 0,
        };
        let printed = format!("{purchase:?}");
        assert!(printed.contains("v1") && !printed.contains("205") && !printed.contains("171"), "{printed}");
    }

    #[test]
    fn only_connection_failures_are_resumed() {
        assert!(resumable(Code::Unavailable));
        assert!(!resumable(Code::PermissionDenied));
        assert!(!resumable(Code::DataLoss));
        assert!(!resumable(Code::OutOfRange));
    }
}
