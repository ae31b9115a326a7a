//! Application services: one async method per use case (Reserve, Authorize, Redeem …),
//! shared by the gRPC gateways and the in-process demo. Each method resolves the inputs a
//! decision needs (catalog state, the allocator's node choice, crypto verdicts), calls
//! the handler on one aggregate, and shapes the answer. Cross-aggregate flows are sagas of
//! idempotent steps (a retry with the same request id completes what a crash interrupted):
//! - Reserve paid in points: hold on the account first (OCC there keeps the balance from
//!   going negative), then reserve the voucher;
//! - Authorize: authorize the voucher, then post the hold;
//! - Void/expiry: void the voucher, then release the hold (or credit back a posted one).
//!
//! Secrets stay here and in `crypto`: tokens are derived on demand from the engine's token
//! key, never stored, never logged; unwrapped media keys live only in a bounded cache
//! whose entries zeroize on eviction.

use crate::clock::Clock;
use crate::crypto::{self, RsaPrivate, RsaPublic, SecretKey, TokenPurpose};
use crate::domain::account::{Account, AccountCommand};
use crate::domain::catalog::{Media, MediaCommand};
use crate::domain::config::{Config, ConfigCommand};
use crate::domain::event::{MediaPublished, Payment, RightsReportSealed, VoidReason};
use crate::domain::order::{Order, OrderCommand};
use crate::domain::party::{Certificate, Consumer, ConsumerCommand, Merchant, MerchantCommand, MerchantStatus, Node, NodeCommand, NodeStatus};
use crate::domain::preview::{Preview, PreviewCommand};
use crate::domain::report::{Report, ReportCommand};
use crate::domain::voucher::{self, Authorize, CertCheck, CompleteDelivery, ProofCheck, Redeem, Reserve, Voucher, VoucherCommand};
use crate::domain::{Actor, ActorKind, Aggregate, Rejection, Root};
use crate::handler::{HandleError, Handled, Handler};
use crate::ids::*;
use crate::log::EventLog;
use crate::media::TransactionRecord;
use crate::media_store::{MediaStore, MediaStoreError, Part};
use crate::spend::SpendAuthorization;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

mod admin;
use admin::naming;
mod container;
mod delivery;
mod issue;
mod keys;
pub use keys::KeysInUse;
mod leases;
mod points;
mod publisher;
pub use publisher::PublisherKeyAdded;

pub use admin::Administered;
pub use container::{ContainerClaims, check_container, check_container_signed};

/// Unwrapped media keys kept in memory (each zeroized when evicted).
pub const MEDIA_KEY_CACHE_MAX: usize = 4096;
/// Consumers' parsed public keys kept in memory (a redemption re-wraps for one).
pub const CONSUMER_KEY_CACHE_MAX: usize = 4096;
/// The one configuration aggregate (ConfigChanged events).
pub const CONFIG_AGGREGATE: &str = "engine";
/// The audited configuration key that caps redemptions after failed deliveries.
pub const RETRIES_MAX_KEY: &str = "delivery.retries_max";
/// The audited key bounding the recoveries of one delivered purchase, and its default.
pub const RECOVERIES_MAX_KEY: &str = "delivery.recoveries_max";
pub const RECOVERIES_MAX_DEFAULT: u32 = 3;
/// `delivery.retries_max` as configured (unbounded when never set).
fn recoveries_max_of(config: &Config) -> u32 {
    config.get(RECOVERIES_MAX_KEY).map_or(RECOVERIES_MAX_DEFAULT, |max| u32::try_from(max).unwrap_or(u32::MAX))
}

/// The rental bounds and price per window in force (`rental.*`).
fn rental_terms_of(config: &Config) -> voucher::RentalTerms {
    use crate::domain::config::{RENTAL_PRICE_BPS_KEY, RENTAL_WINDOW_MS_MAX_KEY, RENTAL_WINDOW_MS_MIN_KEY};
    let get = |key| config.get(key).unwrap_or(0);
    voucher::RentalTerms { window_ms_min: get(RENTAL_WINDOW_MS_MIN_KEY), window_ms_max: get(RENTAL_WINDOW_MS_MAX_KEY), price_bps: get(RENTAL_PRICE_BPS_KEY) }
}

fn retries_max_of(config: &Config) -> u32 {
    config.get(RETRIES_MAX_KEY).map_or(u32::MAX, |max| u32::try_from(max).unwrap_or(u32::MAX))
}

/// The one report aggregate: the chain of royalty seals.
pub const REPORT_AGGREGATE: &str = "rights";
/// The first token key id: what a key directory never rotated for tokens uses.
pub const TOKEN_KEY_ID: u32 = crate::token_keys::FIRST_TOKEN_KEY_ID;

pub use crate::placement::Allocator;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Rejected(Rejection),
    #[error(transparent)]
    Handle(HandleError),
    #[error("crypto failure: {0}")]
    Crypto(#[from] crypto::CryptoError),
    #[error("a blocking task failed: {0}")]
    Task(tokio::task::JoinError),
    #[error("the RSA worker pool is closed")]
    PoolClosed,
    #[error("signing a transaction record failed: {0}")]
    Sign(crate::batch_signer::SignError),
    #[error("the media store failed")]
    MediaStore(#[from] MediaStoreError),
    /// A token key id recorded on the stream that this engine's `token.key` does not hold.
    #[error("token key {key_id} is not in this engine's token.key; copy the key directory of the engine that rotated it")]
    TokenKeyMissing { key_id: u32 },
}

impl From<HandleError> for AppError {
    fn from(error: HandleError) -> Self {
        match error {
            HandleError::Rejected(rejection) => AppError::Rejected(rejection),
            other => AppError::Handle(other),
        }
    }
}

impl From<Rejection> for AppError {
    fn from(rejection: Rejection) -> Self {
        AppError::Rejected(rejection)
    }
}

/// The engine's key material, loaded from the key directory.
pub struct EngineKeys {
    /// The current key: every new signature, and media published from now on.
    pub private: RsaPrivate,
    pub public: RsaPublic,
    /// Signs each seal's C2SP checkpoint (`checkpoint.key`); without it seals have none.
    pub checkpoint: Option<crate::note::NoteSigner>,
    /// The token keys by id (`token.key`; before any rotation, id 1 derived from `engine.pem`).
    token_keys: crate::token_keys::TokenKeys,
    /// Keys rotated out, newest first: media published under them still unwrap with them.
    retired: Vec<RsaPrivate>,
    /// Every public key, the current one first (`engine.pub.pem`): what verifiers look up.
    pub set: crate::keyset::KeySet,
}

impl EngineKeys {
    pub fn new(private: RsaPrivate) -> Result<Self, crypto::CryptoError> {
        let token_keys = crate::token_keys::TokenKeys::first(Self::token_key_material_of(&private)?);
        Self::with_retired(private, Vec::new(), token_keys)
    }

    /// Token keys are derived from the engine's first private key, so there is no separate
    /// secret to lose or leak until the first rotation, which writes this material down
    /// (`token.key`) so that tokens stay what they were; a new token key id derives a new,
    /// independent token key.
    pub fn token_key_material_of(private: &RsaPrivate) -> Result<SecretKey, crypto::CryptoError> {
        let pem = private.to_pkcs8_pem()?;
        Ok(crypto::derive_key("vouchsafe 2026 token key material", pem.as_bytes()))
    }

    /// The current key, the keys rotated out (newest first) and the token keys.
    pub fn with_retired(private: RsaPrivate, retired: Vec<RsaPrivate>, token_keys: crate::token_keys::TokenKeys) -> Result<Self, crypto::CryptoError> {
        let public = private.public();
        let set = crate::keyset::KeySet::of(public.clone(), retired.iter().map(RsaPrivate::public));
        Ok(Self { private, public, checkpoint: None, token_keys, retired, set })
    }

    pub fn key_id(&self) -> String {
        self.public.key_id()
    }

    /// The private key of `key_id`: the current one or one rotated out.
    pub fn private_for(&self, key_id: &str) -> Option<&RsaPrivate> {
        std::iter::once(&self.private).chain(&self.retired).find(|key| key.public().key_id() == key_id)
    }

    /// The keys rotated out, newest first.
    pub fn retired(&self) -> &[RsaPrivate] {
        &self.retired
    }

    /// The token keys by id (`token.key`). Secrets: never log them.
    pub fn token_keys(&self) -> &crate::token_keys::TokenKeys {
        &self.token_keys
    }

    /// The token key id new receipts and access tokens use.
    pub fn token_key_id(&self) -> u32 {
        self.token_keys.current_id()
    }

    /// The token key of `key_id`; refused when this engine's `token.key` lacks it (another
    /// engine rotated and this one has not taken the file up).
    pub fn token_key(&self, key_id: u32) -> Result<SecretKey, AppError> {
        self.token_keys.key(key_id).ok_or(AppError::TokenKeyMissing { key_id })
    }
}

/// The keys a market signs with and the batch signer of transaction records under the
/// current key, swapped together by a rotation (`Market::replace_keys`), so a record always
/// names the key that signs it.
pub(crate) struct Signing {
    pub(crate) keys: Arc<EngineKeys>,
    pub(crate) transactions: Arc<crate::batch_signer::BatchSigner>,
}

#[derive(Debug)]
pub struct ReserveAnswer {
    pub voucher_id: VoucherId,
    pub expires_at: Millis,
    pub price_minor: u64,
    pub currency: String,
    /// The rental window reserved (0: a purchase).
    pub rental_ms: u64,
}

#[derive(Debug)]
pub struct AuthorizeAnswer {
    pub voucher_id: VoucherId,
    /// The receipt token; the consumer proves possession of it at redemption.
    pub receipt: crypto::Token,
    pub receipt_generation: u32,
    /// A rental's end (`Millis(0)`: not a rental).
    pub rental_until: Millis,
}

#[derive(Debug)]
pub struct IssueAnswer {
    pub voucher_id: VoucherId,
    pub node_id: NodeId,
    pub access_token: [u8; 32],
    /// The token key the access token was made under (the node checks it with that key).
    pub token_key_id: u32,
    pub access_expires_at: Millis,
    pub media_ids: Vec<MediaId>,
    /// A rental's end (`Millis(0)`: not a rental).
    pub rental_until: Millis,
}

#[derive(Debug)]
pub struct RedeemAnswer {
    pub voucher_id: VoucherId,
    /// Each media key wrapped (RSA-OAEP) for the consumer's certified public key.
    pub keys: Vec<(MediaId, Vec<u8>)>,
    /// One engine-signed transaction record per media, in the order of `keys`.
    pub transactions: Vec<SignedTransaction>,
}

/// A transaction record and the engine's RSA-PSS signature over its canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTransaction {
    pub record: TransactionRecord,
    pub signature: Vec<u8>,
}

#[derive(Debug)]
pub struct Credential {
    pub id: String,
    pub secret: SecretKey,
}

pub struct PublishInput {
    pub title: String,
    pub artist: String,
    pub authors: Vec<String>,
    pub length_ms: u64,
    pub price_minor: u64,
    pub currency: String,
    pub terms: crate::domain::event::RoyaltyTerms,
    pub renditions: Vec<crate::domain::event::Rendition>,
    pub preview: crate::domain::event::PreviewClip,
    pub image_descriptor: String,
    pub for_sale: bool,
    pub wrapped_media_key: Vec<u8>,
}

impl PublishInput {
    /// What a signed container must say for this publication to be accepted.
    pub fn claims(&self, preview_clip: bytes::Bytes) -> ContainerClaims {
        ContainerClaims {
            title: self.title.clone(),
            artist: self.artist.clone(),
            length_ms: self.length_ms,
            for_sale: self.for_sale,
            renditions: self.renditions.clone(),
            preview: self.preview,
            preview_clip,
        }
    }
}

pub struct Market {
    handler: Handler,
    /// Serializes publications (rare), so a publication's bytes and its event never
    /// interleave with another publication of the same media.
    publishing: tokio::sync::Mutex<()>,
    /// One slot lease change of a placement in flight at a time (`leases`): placements
    /// that waited place from the lease it grew rather than each growing one.
    leasing: tokio::sync::Mutex<()>,
    /// The keys and the transaction signer, swapped whole by a rotation.
    signing: std::sync::RwLock<Arc<Signing>>,
    allocator: Arc<dyn Allocator>,
    media_keys: Mutex<lru::LruCache<MediaId, SecretKey>>,
    /// Consumers' public keys, parsed once, by blake3 of their SPKI DER.
    consumer_keys: Mutex<lru::LruCache<[u8; 32], RsaPublic>>,
    /// RSA private-key work (signatures, unwrapping) on the blocking pool at once, at most:
    /// one task per core keeps the pool's threads few and busy. Public-key encryption at
    /// redemption runs inline (`wrap_purchase`).
    rsa_tasks: tokio::sync::Semaphore,
}

fn actor(kind: ActorKind, id: &str) -> Actor {
    Actor::new(kind, id)
}

impl Market {
    pub fn new(log: Arc<dyn EventLog>, clock: Arc<dyn Clock>, keys: Arc<EngineKeys>, allocator: Arc<dyn Allocator>) -> Self {
        Self {
            handler: Handler::new(log, clock),
            publishing: tokio::sync::Mutex::new(()),
            leasing: tokio::sync::Mutex::new(()),
            signing: std::sync::RwLock::new(Arc::new(Signing { transactions: crate::batch_signer::BatchSigner::new(keys.private.clone()), keys })),
            allocator,
            media_keys: Mutex::new(lru::LruCache::new(NonZeroUsize::new(MEDIA_KEY_CACHE_MAX).unwrap_or(NonZeroUsize::MIN))),
            consumer_keys: Mutex::new(lru::LruCache::new(NonZeroUsize::new(CONSUMER_KEY_CACHE_MAX).unwrap_or(NonZeroUsize::MIN))),
            rsa_tasks: tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, NonZeroUsize::get)),
        }
    }

    /// The node placement the market decides with (which nodes still serve, `relocate`).
    /// `delivery.retries_max` now.
    pub(crate) async fn retries_max(&self) -> Result<u32, AppError> {
        Ok(retries_max_of(&self.config().await?))
    }

    pub fn allocator(&self) -> &Arc<dyn Allocator> {
        &self.allocator
    }

    pub fn handler(&self) -> &Handler {
        &self.handler
    }

    /// The keys signing now (a rotation replaces them: take them once per use case).
    pub fn keys(&self) -> Arc<EngineKeys> {
        Arc::clone(&self.signing().keys)
    }

    pub(crate) fn signing(&self) -> Arc<Signing> {
        Arc::clone(&self.signing.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Signs with `keys` from now on (a rotation, `Market::rotate_engine_key`): use cases
    /// under way finish with the keys they took.
    pub(crate) fn replace_keys(&self, keys: Arc<EngineKeys>) {
        let signing = Arc::new(Signing { transactions: crate::batch_signer::BatchSigner::new(keys.private.clone()), keys });
        *self.signing.write().unwrap_or_else(std::sync::PoisonError::into_inner) = signing;
    }

    pub fn now(&self) -> Millis {
        self.handler.clock().now()
    }

    async fn media(&self, media_id: &MediaId) -> Result<Media, AppError> {
        crate::domain::validate::id("media_id", &media_id.0)?;
        Ok(self.handler.load::<Media>(&media_id.0).await?.state.clone())
    }

    async fn voucher_of(&self, voucher_id: &VoucherId) -> Result<Arc<Root<Voucher>>, AppError> {
        crate::domain::validate::id("voucher_id", &voucher_id.0)?;
        Ok(self.handler.load_current::<Voucher>(&voucher_id.0).await?)
    }

    /// `merchant`'s own voucher. Another merchant's answers exactly as one that does not
    /// exist (no existence oracle), and before anything else about it is looked at (its
    /// media, its node), so no later check can tell the two apart either.
    async fn merchants_voucher(&self, merchant: &MerchantId, voucher_id: &VoucherId) -> Result<Arc<Root<Voucher>>, AppError> {
        let root = self.voucher_of(voucher_id).await?;
        if root.state.status == voucher::VoucherStatus::None || root.state.merchant.as_ref() != Some(merchant) {
            return Err(Rejection::NotFound { kind: "voucher", id: voucher_id.0.clone() }.into());
        }
        Ok(root)
    }

    /// The rental windows `merchant` offers (0, 0: the operator's bounds); a reservation's
    /// window must be within both.
    pub async fn set_rental_window(&self, merchant: &MerchantId, request: &RequestId, window_ms_min: u64, window_ms_max: u64) -> Result<bool, AppError> {
        let command = crate::domain::party::MerchantCommand::SetRentalWindow { window_ms_min, window_ms_max };
        let handled = self.handler.handle::<Merchant>(&merchant.0, &actor(ActorKind::Merchant, &merchant.0), request, &command).await?;
        Ok(!handled.appended.is_empty())
    }

    async fn active_merchant(&self, merchant: &MerchantId) -> Result<(), AppError> {
        match self.handler.load::<Merchant>(&merchant.0).await?.state.status {
            MerchantStatus::Active => Ok(()),
            MerchantStatus::Suspended => Err(Rejection::MerchantSuspended.into()),
            MerchantStatus::Unknown => Err(Rejection::NotFound { kind: "merchant", id: merchant.0.clone() }.into()),
        }
    }

    // ---- operator / catalog ----

    pub async fn register_merchant(&self, operator: &str, request: &RequestId, name: &str) -> Result<Credential, AppError> {
        let merchant = merchant_id_for(operator, request);
        let secret = SecretKey::random();
        let command =
            MerchantCommand::Register { merchant: merchant.clone(), name: name.to_string(), credential_hash: crypto::credential_hash(secret.expose()) };
        let handled = self.handler.handle::<Merchant>(&merchant.0, &actor(ActorKind::Operator, operator), request, &command).await?;
        if handled.repeated {
            // The secret was shown once; a retry cannot show it again.
            return Err(Rejection::AlreadyExists { kind: "merchant credential", id: merchant.0 }.into());
        }
        Ok(Credential { id: merchant.0, secret })
    }

    /// Registers an auditor (a rights agent, the licensing center) with a read-only
    /// credential. The secret is shown once; a retry of the request is refused.
    pub async fn register_auditor(&self, operator: &str, request: &RequestId, name: &str) -> Result<Credential, AppError> {
        use crate::domain::party::{Auditor, AuditorCommand};
        let auditor = auditor_id_for(operator, request);
        let secret = SecretKey::random();
        let command = AuditorCommand::Register { auditor: auditor.clone(), name: name.to_string(), credential_hash: crypto::credential_hash(secret.expose()) };
        let handled = self.handler.handle::<Auditor>(&auditor.0, &actor(ActorKind::Operator, operator), request, &command).await?;
        if handled.repeated {
            // The secret was shown once; a retry cannot show it again.
            return Err(Rejection::AlreadyExists { kind: "auditor credential", id: auditor.0 }.into());
        }
        Ok(Credential { id: auditor.0, secret })
    }

    pub async fn register_node(&self, operator: &str, request: &RequestId, region: &str, slots_max: u32) -> Result<(Credential, SecretKey), AppError> {
        let node = node_id_for(operator, request);
        let secret = SecretKey::random();
        let command =
            NodeCommand::Register { node: node.clone(), region: region.to_string(), slots_max, credential_hash: crypto::credential_hash(secret.expose()) };
        let handled = self.handler.handle::<Node>(&node.0, &actor(ActorKind::Operator, operator), request, &command).await?;
        if handled.repeated {
            return Err(Rejection::AlreadyExists { kind: "node credential", id: node.0 }.into());
        }
        let access_key = self.node_access_key(&node)?;
        Ok((Credential { id: node.0, secret }, access_key))
    }

    /// The node's key for checking access tokens locally, under the current token key.
    pub fn node_access_key(&self, node: &NodeId) -> Result<SecretKey, AppError> {
        let keys = self.keys();
        Ok(crypto::node_access_key(&keys.token_key(keys.token_key_id())?, &node.0))
    }

    /// The node's access keys under every token key this engine holds, newest first, by
    /// token key id: access tokens name the id they were made under.
    pub fn node_access_keys(&self, node: &NodeId) -> Result<Vec<(u32, SecretKey)>, AppError> {
        let keys = self.keys();
        keys.token_keys().ids().into_iter().map(|id| Ok((id, crypto::node_access_key(&keys.token_key(id)?, &node.0)))).collect()
    }

    /// Publishes a media with its bytes (PublishMedia): the container (and preview clip) is
    /// checked against the request before anything is stored or appended; then, unless the
    /// media is already published, the bytes go to `store` first, so a published media
    /// always has them; a refused publication removes them again, and a crash before the
    /// append leaves a file no event refers to, which the retry overwrites. A media that is
    /// published keeps its bytes: a retry (or a refused reuse of its request id) is
    /// answered without touching them.
    pub async fn publish(
        &self,
        publisher: &str,
        request: &RequestId,
        input: PublishInput,
        container: bytes::Bytes,
        preview_clip: bytes::Bytes,
        store: &MediaStore,
    ) -> Result<MediaId, AppError> {
        let media_id = media_id_for(publisher, request);
        let container_format = self.check_container(&media_id, container.clone(), input.claims(preview_clip.clone())).await?;
        self.store_and_publish(publisher, request, input, container, preview_clip, store, container_format).await
    }

    /// The rest of [`Market::publish`], once the container is checked: the bytes stored,
    /// the event appended, the bytes removed again if the append is refused.
    #[allow(clippy::too_many_arguments)] // the parts of one PublishMedia request
    async fn store_and_publish(
        &self,
        publisher: &str,
        request: &RequestId,
        input: PublishInput,
        container: bytes::Bytes,
        preview_clip: bytes::Bytes,
        store: &MediaStore,
        container_format: u8,
    ) -> Result<MediaId, AppError> {
        let media_id = media_id_for(publisher, request);
        let _publishing = self.publishing.lock().await;
        let fresh = self.handler.load::<Media>(&media_id.0).await?.state.published.is_none();
        if fresh {
            store.put(&media_id.0, Part::Container, container).await?;
            if !preview_clip.is_empty() {
                store.put(&media_id.0, Part::PreviewClip, preview_clip).await?;
            }
        }
        match self.publish_media_as(publisher, request, input, container_format).await {
            Ok(media) => Ok(media),
            Err(error) => {
                if fresh {
                    store.remove(&media_id.0).await;
                }
                Err(error)
            }
        }
    }

    /// A node announced itself (RegisterNode) with the capacity it declares (0: unchanged):
    /// a change is recorded as an event, and the node gets its access key. The request id
    /// names the version it changes, so 8 → 4 → 8 is two changes, while a retried
    /// announcement of the same change stays one.
    /// Answers the node's access key and what the engine records of it: the slots it
    /// serves (its announcement, within the licence) and its registered region.
    pub async fn announce_node(&self, node: &NodeId, slots_max: u32) -> Result<(SecretKey, Node), AppError> {
        let root = self.handler.load::<Node>(&node.0).await?;
        let granted = slots_max.min(root.state.licensed_slots);
        let state = if slots_max != 0 && granted != root.state.slots_max {
            let request = RequestId(format!("capacity-v{}-{}", root.version, granted));
            let handled = self.handler.handle::<Node>(&node.0, &actor(ActorKind::Node, &node.0), &request, &NodeCommand::ChangeCapacity { slots_max }).await?;
            handled.root.state.clone()
        } else {
            root.state.clone()
        };
        Ok((self.node_access_key(node)?, state))
    }

    /// The audited configuration (ConfigChanged events).
    pub async fn config(&self) -> Result<Config, AppError> {
        Ok(self.handler.load::<Config>(CONFIG_AGGREGATE).await?.state.clone())
    }

    /// A configuration value the operator set with `admin config set`, or `None` while it
    /// is unset (the serve setting applies).
    pub async fn configured(&self, key: &str) -> Result<Option<u64>, AppError> {
        Ok(self.config().await?.values.get(key).copied())
    }

    pub async fn publish_media(&self, publisher: &str, request: &RequestId, input: PublishInput) -> Result<MediaId, AppError> {
        self.publish_media_as(publisher, request, input, 0).await
    }

    /// [`Market::publish_media`] of a container in `container_format` (checked by the caller).
    async fn publish_media_as(&self, publisher: &str, request: &RequestId, input: PublishInput, container_format: u8) -> Result<MediaId, AppError> {
        let media_id = media_id_for(publisher, request);
        // A wrapped key that does not unwrap with our key would make every sale
        // undeliverable: refuse it now, and keep the key so the first redemption does not
        // pay for a second private-key operation.
        let (media_key, engine_key_id) = self.unwrap_media_key_uncached(&input.wrapped_media_key, None).await.map_err(|_| Rejection::InvalidArgument {
            field: "wrapped_media_key",
            reason: "does not unwrap with the engine's key; wrap the media key for engine.pub.pem".into(),
        })?;
        let published = MediaPublished {
            media_id: media_id.clone(),
            publisher: publisher.to_string(),
            title: input.title,
            artist: input.artist,
            authors: input.authors,
            length_ms: input.length_ms,
            price_minor: input.price_minor,
            currency: input.currency,
            terms: input.terms,
            renditions: input.renditions,
            preview: input.preview,
            image_descriptor: input.image_descriptor,
            for_sale: input.for_sale,
            engine_key_id,
            wrapped_media_key: input.wrapped_media_key,
            container_format,
        };
        let handled = self.handler.handle::<Media>(&media_id.0, &actor(ActorKind::Publisher, publisher), request, &MediaCommand::Publish(published)).await?;
        if !handled.repeated {
            // A retry is answered from the first publication: its key stays the cached one.
            self.media_keys.lock().expect("media key cache lock is never poisoned").put(media_id.clone(), media_key);
        }
        Ok(media_id)
    }

    /// Checks an uploaded container before anything is stored or appended (see
    /// [`check_container`]); hashing up to `CONTAINER_BYTES_MAX` runs on the blocking pool.
    pub async fn check_container(&self, media_id: &MediaId, container: bytes::Bytes, claims: ContainerClaims) -> Result<u8, AppError> {
        let media_id = media_id.clone();
        let checked = tokio::task::spawn_blocking(move || check_container(&container, &media_id, &claims)).await.map_err(AppError::Task)?;
        Ok(checked?)
    }

    pub async fn certify_consumer(
        &self,
        operator: &str,
        request: &RequestId,
        consumer: &ConsumerId,
        public_key_der: &[u8],
        validity_ms: u64,
    ) -> Result<Certificate, AppError> {
        crate::domain::validate::id("consumer_id", &consumer.0)?;
        RsaPublic::from_der(public_key_der)
            .map_err(|_| Rejection::InvalidArgument { field: "public_key_der", reason: "not an RSA-2048+ SubjectPublicKeyInfo".into() })?;
        let serial = cert_serial_for(consumer, operator, request);
        let existing = self.handler.load::<Consumer>(&consumer.0).await?;
        if let Some(cert) = existing.state.certs.get(&serial) {
            // A retry: the first answer (the certificate as signed then).
            return Ok(cert.clone());
        }
        let now = self.now();
        let not_after = now.plus_ms(validity_ms);
        let message = certificate_message(consumer, &serial, public_key_der, now, not_after);
        let signature = self.sign(message).await?;
        let cert = Certificate {
            serial,
            public_key_der: public_key_der.to_vec(),
            not_before: now,
            not_after,
            engine_key_id: self.keys().key_id(),
            signature,
            revoked: false,
        };
        let command = ConsumerCommand::Certify { consumer: consumer.clone(), cert: cert.clone() };
        self.handler.handle::<Consumer>(&consumer.0, &actor(ActorKind::Operator, operator), request, &command).await?;
        Ok(cert)
    }

    pub async fn revoke_cert(&self, operator: &str, request: &RequestId, consumer: &ConsumerId, serial: &CertSerial, reason: &str) -> Result<(), AppError> {
        let command = ConsumerCommand::Revoke { serial: serial.clone(), reason: reason.to_string() };
        self.handler.handle::<Consumer>(&consumer.0, &actor(ActorKind::Operator, operator), request, &command).await?;
        Ok(())
    }

    pub async fn drain_node(&self, operator: &str, request: &RequestId, node: &NodeId) -> Result<(), AppError> {
        crate::domain::validate::id("node_id", &node.0)?;
        self.handler.handle::<Node>(&node.0, &actor(ActorKind::Operator, operator), request, &NodeCommand::Drain).await?;
        Ok(())
    }

    /// Removes a delivery node for good: it gets no new work and can no longer redeem.
    pub async fn remove_node(&self, operator: &str, request: &RequestId, node: &NodeId) -> Result<(), AppError> {
        crate::domain::validate::id("node_id", &node.0)?;
        self.handler.handle::<Node>(&node.0, &actor(ActorKind::Operator, operator), request, &NodeCommand::Remove).await?;
        Ok(())
    }

    /// Turns on binding each royalty entry to its stream sequence, on a stream that lacks
    /// it (an engine does this as it starts; every engine under the same request id, so the
    /// stream records it once). The entries after the event use it; earlier ones, sealed as
    /// they were, keep the fixed nonce.
    pub async fn bind_royalty_entries(&self) -> Result<(), AppError> {
        let key = crate::domain::config::ROYALTY_ENTRY_BINDING_KEY;
        if self.config().await?.get(key) == Some(1) {
            return Ok(());
        }
        let command = ConfigCommand::Set { key: key.to_string(), value: "1".into() };
        self.handler.handle::<Config>(CONFIG_AGGREGATE, &Actor::engine(), &RequestId::new("royalty-entry-binding-v1"), &command).await?;
        Ok(())
    }

    pub async fn set_config(&self, operator: &str, request: &RequestId, key: &str, value: &str) -> Result<(), AppError> {
        let command = ConfigCommand::Set { key: key.to_string(), value: value.to_string() };
        self.handler.handle::<Config>(CONFIG_AGGREGATE, &actor(ActorKind::Operator, operator), request, &command).await?;
        Ok(())
    }

    // ---- merchant ----

    /// A reservation; a points payment carries its consumer's spend authorization.
    #[allow(clippy::too_many_arguments)] // the fields of one ReserveRequest, no more
    pub async fn reserve(
        &self,
        merchant: &MerchantId,
        request: &RequestId,
        media_ids: &[MediaId],
        rendition: &str,
        ttl_ms: u64,
        payment: Payment,
        spend: Option<&SpendAuthorization>,
    ) -> Result<ReserveAnswer, AppError> {
        self.reserve_rental(merchant, request, media_ids, rendition, ttl_ms, payment, spend, 0).await
    }

    /// A reservation of a rental of `rental_ms` (0: a purchase kept for good), checked
    /// against the `rental.*` bounds in force and priced per window.
    #[allow(clippy::too_many_arguments)] // the fields of one ReserveRequest, no more
    pub async fn reserve_rental(
        &self,
        merchant: &MerchantId,
        request: &RequestId,
        media_ids: &[MediaId],
        rendition: &str,
        ttl_ms: u64,
        payment: Payment,
        spend: Option<&SpendAuthorization>,
        rental_ms: u64,
    ) -> Result<ReserveAnswer, AppError> {
        crate::domain::validate::id("request_id", &request.0)?;
        if spend.is_some() && !matches!(payment, Payment::Points { .. }) {
            return Err(Rejection::InvalidArgument { field: "spend_authorization", reason: "only a points purchase carries one".into() }.into());
        }
        self.active_merchant(merchant).await?;
        if media_ids.is_empty() || media_ids.len() > voucher::ITEMS_MAX {
            return Err(Rejection::InvalidArgument { field: "media_ids", reason: format!("need 1..={} media", voucher::ITEMS_MAX) }.into());
        }
        let voucher_id = voucher_id_for(merchant, request);
        let mut items = Vec::with_capacity(media_ids.len());
        for media_id in media_ids {
            items.push((media_id.clone(), self.media(media_id).await?));
        }
        let command = VoucherCommand::Reserve(Reserve {
            voucher_id: voucher_id.clone(),
            merchant: merchant.clone(),
            items,
            rendition: rendition.to_string(),
            ttl_ms,
            payment: payment.clone(),
            token_key_id: self.keys().token_key_id(),
            rental_ms,
            rental: if rental_ms > 0 {
                let operator = rental_terms_of(&self.config().await?);
                // The merchant's own windows, within the operator's.
                match self.handler.load::<Merchant>(&merchant.0).await?.state.rental_window_ms {
                    Some((min, max)) => {
                        voucher::RentalTerms { window_ms_min: operator.window_ms_min.max(min), window_ms_max: operator.window_ms_max.min(max), ..operator }
                    }
                    None => operator,
                }
            } else {
                voucher::RentalTerms { window_ms_min: 0, window_ms_max: 0, price_bps: 0 }
            },
        });
        let by = actor(ActorKind::Merchant, &merchant.0);
        // Only a points payment needs the voucher before its reservation (to hold points
        // once); a new voucher is not in the cache, and loading it costs a subject read
        // that `handle` saves by assuming a new aggregate.
        if let Payment::Points { account } = &payment {
            let existing = self.handler.load::<Voucher>(&voucher_id.0).await?;
            if !existing.has_applied(&by, request) {
                // Check the reservation itself before holding points for it.
                let decided = existing.state.decide(&command, self.now())?;
                let Some(crate::domain::Event::Reserved { price_minor, expires_at, .. }) = decided.first() else {
                    return Err(Rejection::AlreadyExists { kind: "voucher", id: voucher_id.0 }.into());
                };
                let consent = match spend {
                    Some(authorization) => Some(self.spend_consent(authorization).await?),
                    None => None,
                };
                let hold = AccountCommand::Hold {
                    account: account.clone(),
                    voucher: voucher_id.clone(),
                    amount: *price_minor,
                    expires_at: *expires_at,
                    merchant: merchant.clone(),
                    media: media_ids.to_vec(),
                    consent,
                };
                self.handler.handle::<Account>(&account.0, &by, &account_request_for(request, &voucher_id), &hold).await?;
            }
        }
        let handled = self.handler.handle::<Voucher>(&voucher_id.0, &by, request, &command).await?;
        let state = &handled.root.state;
        Ok(ReserveAnswer {
            voucher_id,
            expires_at: state.expires_at,
            price_minor: state.price_minor,
            currency: state.currency.clone(),
            rental_ms: state.rental_ms,
        })
    }

    pub async fn authorize(&self, merchant: &MerchantId, request: &RequestId, voucher_id: &VoucherId) -> Result<AuthorizeAnswer, AppError> {
        self.active_merchant(merchant).await?;
        let root = self.merchants_voucher(merchant, voucher_id).await?;
        let mut media = Vec::with_capacity(root.state.items.len());
        for item in &root.state.items {
            media.push(self.media(&item.media_id).await?);
        }
        // The handler builds the next state in place when it holds the only reference.
        drop(root);
        let by = actor(ActorKind::Merchant, &merchant.0);
        let command = VoucherCommand::Authorize(Authorize { merchant: merchant.clone(), receipt_key_id: self.keys().token_key_id(), media });
        let handled = self.handler.handle::<Voucher>(&voucher_id.0, &by, request, &command).await.map_err(|error| naming(error, &voucher_id.0))?;
        let state = &handled.root.state;
        if let Some(Payment::Points { account }) = &state.payment {
            self.handler
                .handle::<Account>(&account.0, &by, &account_request_for(request, voucher_id), &AccountCommand::Post { voucher: voucher_id.clone() })
                .await?;
        }
        let receipt = crypto::derive_token(&self.keys().token_key(state.receipt_key_id)?, TokenPurpose::Receipt, &voucher_id.0, state.receipt_generation);
        Ok(AuthorizeAnswer { voucher_id: voucher_id.clone(), receipt, receipt_generation: state.receipt_generation, rental_until: state.rental_until })
    }

    pub async fn void(&self, merchant: &MerchantId, request: &RequestId, voucher_id: &VoucherId) -> Result<(), AppError> {
        self.merchants_voucher(merchant, voucher_id).await?;
        let by = actor(ActorKind::Merchant, &merchant.0);
        let void = VoucherCommand::Void { merchant: merchant.clone() };
        let handled = self.handler.handle::<Voucher>(&voucher_id.0, &by, request, &void).await.map_err(|error| naming(error, &voucher_id.0))?;
        self.settle_void(&by, request, voucher_id, &handled.root.state, VoidReason::Refunded).await
    }

    /// Gives a sale's money back (`VoucherCommand::Refund`): a void with the reversal while
    /// no key was released, else a refund or chargeback; points paid come back to the
    /// consumer's account. The voucher's status after it (Voided or Refunded).
    pub async fn refund(
        &self,
        merchant: &MerchantId,
        request: &RequestId,
        voucher_id: &VoucherId,
        reason: &str,
        chargeback: bool,
    ) -> Result<voucher::VoucherStatus, AppError> {
        self.merchants_voucher(merchant, voucher_id).await?;
        let by = actor(ActorKind::Merchant, &merchant.0);
        let command = VoucherCommand::Refund { merchant: merchant.clone(), reason: reason.to_string(), chargeback };
        let handled = self.handler.handle::<Voucher>(&voucher_id.0, &by, request, &command).await.map_err(|error| naming(error, &voucher_id.0))?;
        let state = &handled.root.state;
        self.settle_void(&by, request, voucher_id, state, VoidReason::Refunded).await?;
        Ok(state.status)
    }

    /// The sweeper's timeout of one reservation (decided at the engine clock's now).
    /// `true` when this call voided it; `false` when it was already expired (another
    /// sweeper got there first: the same engine request, answered without a new event).
    pub async fn expire(&self, voucher_id: &VoucherId) -> Result<bool, AppError> {
        let by = Actor::engine();
        let request = RequestId(format!("expire-{}", voucher_id.0));
        let handled = self.handler.handle::<Voucher>(&voucher_id.0, &by, &request, &VoucherCommand::Expire).await?;
        self.settle_void(&by, &request, voucher_id, &handled.root.state, VoidReason::TimedOut).await?;
        Ok(!handled.appended.is_empty())
    }

    /// Settles a points hold past its expiry against its voucher: released when the voucher
    /// never came to be (a crash between the hold and the reservation) or was voided;
    /// the voucher expired first when it is still pending; posted when the voucher was
    /// authorized (a crash between the authorization and the posting).
    pub async fn settle_hold(&self, account: &AccountId, voucher_id: &VoucherId) -> Result<(), AppError> {
        let by = Actor::engine();
        let request = RequestId(format!("settle-{}", voucher_id.0));
        let voucher = self.voucher_of(voucher_id).await?.state.clone();
        let command = match voucher.status {
            voucher::VoucherStatus::Pending => return self.expire(voucher_id).await.map(|_| ()),
            voucher::VoucherStatus::None | voucher::VoucherStatus::Voided => {
                AccountCommand::Release { voucher: voucher_id.clone(), reason: VoidReason::TimedOut }
            }
            _ => AccountCommand::Post { voucher: voucher_id.clone() },
        };
        self.handler.handle::<Account>(&account.0, &by, &request, &command).await?;
        Ok(())
    }

    async fn settle_void(&self, by: &Actor, request: &RequestId, voucher_id: &VoucherId, state: &Voucher, reason: VoidReason) -> Result<(), AppError> {
        let Some(Payment::Points { account }) = &state.payment else { return Ok(()) };
        let account_request = account_request_for(request, voucher_id);
        // An Authorize racing this Void (in this engine or another) may post the hold
        // between our read of the account and our Release: the Release is then refused
        // (the hold is posted), and the points must come back as a refund instead. The
        // second look reads the account from the stream, not from this engine's cache.
        for attempt in 0..2 {
            let account_root =
                if attempt == 0 { self.handler.load::<Account>(&account.0).await? } else { self.handler.load_fresh::<Account>(&account.0).await? };
            let command = if account_root.state.posted.contains(voucher_id) {
                // Authorized, then refunded: the points come back as a credit.
                AccountCommand::Credit { account: account.clone(), amount: state.price_minor, reason: format!("refund {}", voucher_id.0), seller: None }
            } else if account_root.state.held.contains_key(voucher_id) {
                AccountCommand::Release { voucher: voucher_id.clone(), reason }
            } else {
                return Ok(());
            };
            match self.handler.handle::<Account>(&account.0, by, &account_request, &command).await {
                Ok(_) => return Ok(()),
                Err(HandleError::Rejected(Rejection::NoSuchHold | Rejection::InvalidTransition { kind: "points hold", .. })) if attempt == 0 => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    pub async fn get_voucher(&self, merchant: &MerchantId, voucher_id: &VoucherId) -> Result<Voucher, AppError> {
        Ok(self.merchants_voucher(merchant, voucher_id).await?.state.clone())
    }

    pub async fn preview(&self, merchant: &MerchantId, request: &RequestId, media_id: &MediaId, region: Option<&str>) -> Result<(PreviewId, NodeId), AppError> {
        self.active_merchant(merchant).await?;
        let preview = preview_id_for(merchant, request);
        let existing = self.handler.load::<Preview>(&preview.0).await?;
        let media = self.media(media_id).await?;
        let grace_ms = self.configured("preview.grace_ms").await?.unwrap_or(crate::domain::preview::PREVIEW_GRACE_MS);
        let by = actor(ActorKind::Merchant, &merchant.0);
        let start = |placed: crate::placement::Placed| PreviewCommand::Start {
            preview: preview.clone(),
            merchant: merchant.clone(),
            media_id: media_id.clone(),
            media: media.clone(),
            node: placed.node,
            lease: placed.lease,
            grace_ms,
        };
        let (placed, held) = match &existing.state.node {
            Some(node) => (crate::placement::Placed { node: node.clone(), lease: 0 }, false),
            None => {
                self.refused_before_placing(&preview.0, &existing, &by, request, &start(crate::placement::Placed::probe())).await?;
                match self.place_preview(region, &preview.0, merchant).await? {
                    Some(placed) => (placed, true),
                    None => {
                        // Tell a full market from this merchant's preview quota: would a
                        // sale's choice (held, then given back at once) find a node, or
                        // lease a slot for one?
                        let lease = |order| self.allocator.lease_wish(order, region, None).is_some();
                        let quota = self.allocator.choose(region, &preview.0).is_some()
                            || lease(crate::placement::Order::Load)
                            || lease(crate::placement::Order::Leased);
                        self.allocator.cancel(&preview.0);
                        return Err(if quota { Rejection::PreviewQuotaReached } else { Rejection::NoNodeAvailable }.into());
                    }
                }
            }
        };
        let command = start(placed);
        let result = self.handler.handle::<Preview>(&preview.0, &by, request, &command).await;
        if held && result.as_ref().map_or(true, |handled| handled.appended.is_empty()) {
            self.allocator.cancel(&preview.0);
        }
        let node = result?.root.state.node.clone().ok_or(Rejection::NoNodeAvailable)?;
        Ok((preview, node))
    }

    pub async fn place_order(&self, merchant: &MerchantId, request: &RequestId, media_id: &MediaId, units: u32) -> Result<OrderId, AppError> {
        self.active_merchant(merchant).await?;
        let order = order_id_for(merchant, request);
        let media = self.media(media_id).await?;
        let command = OrderCommand::Place { order: order.clone(), merchant: merchant.clone(), media_id: media_id.clone(), media, units };
        self.handler.handle::<Order>(&order.0, &actor(ActorKind::Merchant, &merchant.0), request, &command).await?;
        Ok(order)
    }

    /// Binds one unit of a duplication order to a device and returns the media key
    /// wrapped for that device's public key.
    #[allow(clippy::too_many_arguments)] // the fields of one BindUnitRequest
    pub async fn bind_unit(
        &self,
        merchant: &MerchantId,
        request: &RequestId,
        order: &OrderId,
        unit: u32,
        device_id: &str,
        device_cert_serial: &CertSerial,
        device_public_key_der: &[u8],
    ) -> Result<Vec<u8>, AppError> {
        // A unit binds only to a device the operator certified: its key is the certificate's.
        crate::domain::validate::id("device_cert_serial", &device_cert_serial.0)?;
        let device = self.handler.load::<Consumer>(device_id).await?;
        device.state.cert_check(device_cert_serial, self.now()).require("device certificate", device_cert_serial)?;
        let certified = device.state.certs.get(device_cert_serial).map(|cert| cert.public_key_der.clone()).unwrap_or_default();
        drop(device);
        if !device_public_key_der.is_empty() && device_public_key_der != certified.as_slice() {
            return Err(Rejection::InvalidArgument { field: "device_public_key_der", reason: "is not the key the device certificate names".into() }.into());
        }
        let device_public_key_der = certified.as_slice();
        let device_key = RsaPublic::from_der(device_public_key_der)
            .map_err(|_| Rejection::InvalidArgument { field: "device_public_key_der", reason: "not an RSA-2048+ SubjectPublicKeyInfo".into() })?;
        let merchant_active = matches!(self.handler.load::<Merchant>(&merchant.0).await?.state.status, MerchantStatus::Active);
        let command = OrderCommand::BindUnit {
            merchant: merchant.clone(),
            unit,
            device_id: device_id.to_string(),
            device_public_key_hash: crypto::hash(device_public_key_der),
            merchant_active,
        };
        // Decided first (ownership, suspension, the unit, one key per unit); the media key is
        // wrapped only for the key the order records for the unit, after the decision.
        let handled = self
            .handler
            .handle::<Order>(&order.0, &actor(ActorKind::Merchant, &merchant.0), request, &command)
            .await
            .map_err(|error| naming(error, &order.0))?;
        let order_state = &handled.root.state;
        if order_state.merchant.as_ref() != Some(merchant) || order_state.bound_keys.get(&unit) != Some(&crypto::hash(device_public_key_der)) {
            // A repeated request id answered without deciding: it must name what was bound.
            return Err(Rejection::AlreadyExists { kind: "unit binding", id: unit.to_string() }.into());
        }
        let media_id = order_state.media_id.clone().ok_or(Rejection::NotFound { kind: "order", id: order.0.clone() })?;
        let media = self.media(&media_id).await?;
        self.rewrap_for(&media, &device_key).await
    }

    pub async fn complete_unit(&self, merchant: &MerchantId, request: &RequestId, order: &OrderId, unit: u32) -> Result<(), AppError> {
        let command = OrderCommand::CompleteUnit { merchant: merchant.clone(), unit };
        self.handler.handle::<Order>(&order.0, &actor(ActorKind::Merchant, &merchant.0), request, &command).await.map_err(|error| naming(error, &order.0))?;
        Ok(())
    }

    // ---- the engine's own jobs: sealing and sweeping ----

    /// Signs a seal the royalty-log projection drafted (`Projections::seal_draft`) with the
    /// engine's key on the blocking pool, and appends it to the report aggregate, which
    /// checks that it extends the chain of seals. `None` when another sealer covered these
    /// entries first (the same seal retried, or a seal over an overlapping range): the
    /// chain stands and nothing is appended.
    pub async fn seal(&self, draft: RightsReportSealed) -> Result<Option<RightsReportSealed>, AppError> {
        let keys = self.keys();
        let seal = {
            let _permit = self.rsa_tasks.acquire().await.map_err(|_| AppError::PoolClosed)?;
            tokio::task::spawn_blocking(move || {
                let mut seal = draft;
                crate::seal::sign_seal_with(&keys.private, keys.checkpoint.as_ref(), &mut seal).map(|()| seal)
            })
            .await
            .map_err(AppError::Task)??
        };
        let request = RequestId(format!("seal-{}-{}", seal.epoch, seal.first_entry));
        match self.handler.handle::<Report>(REPORT_AGGREGATE, &Actor::engine(), &request, &ReportCommand::Seal(seal.clone())).await {
            Ok(handled) if handled.repeated => Ok(None),
            Ok(_) => Ok(Some(seal)),
            Err(HandleError::Rejected(no_key @ Rejection::InvalidArgument { field: "checkpoint", .. })) => Err(HandleError::Rejected(no_key).into()),
            // Another sealer covered these entries first: the chain of seals stands.
            Err(HandleError::Rejected(Rejection::InvalidArgument { .. })) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// One sweep at the engine clock's now over what the projections found due: voids each
    /// reservation past due, then settles each points hold past due (an interrupted saga).
    /// A refusal means another sweeper, or the merchant, got there first. Returns
    /// (expired, holds settled).
    /// Ends each due voucher's unused access window at the engine clock's now (`AccessLapsed`:
    /// the node's slot comes back, the voucher can be issued anew); how many this call
    /// lapsed. A voucher redeemed or lapsed meanwhile is left as it is.
    pub async fn lapse_accesses(&self, due: &[VoucherId]) -> Result<usize, AppError> {
        let mut lapsed = 0;
        for voucher_id in due {
            let request = RequestId(format!("lapse-{}-{}", voucher_id.0, self.voucher_of(voucher_id).await?.version));
            match self.handler.handle::<Voucher>(&voucher_id.0, &Actor::engine(), &request, &VoucherCommand::LapseAccess).await {
                Ok(handled) if !handled.appended.is_empty() => lapsed += 1,
                Ok(_) | Err(HandleError::Rejected(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(lapsed)
    }

    /// Ends started previews whose node never reported them within the clip and its grace
    /// (`PreviewCommand::Lapse`, at the engine clock): their slots come back. Previews no
    /// longer due (ended meanwhile) are skipped. How many it ended.
    pub async fn lapse_previews(&self, due: &[PreviewId]) -> Result<usize, AppError> {
        let mut lapsed = 0;
        for preview in due {
            let request = RequestId(format!("lapse-{}", preview.0));
            match self.handler.handle::<Preview>(&preview.0, &Actor::engine(), &request, &PreviewCommand::Lapse).await {
                Ok(handled) if !handled.appended.is_empty() => lapsed += 1,
                Ok(_) | Err(HandleError::Rejected(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(lapsed)
    }

    pub async fn sweep(&self, due: &[VoucherId], due_holds: &[(AccountId, VoucherId)]) -> Result<(usize, usize), AppError> {
        let mut expired = 0;
        for voucher in due {
            match self.expire(voucher).await {
                Ok(true) => expired += 1,
                Ok(false) | Err(AppError::Rejected(_)) => {}
                Err(error) => return Err(error),
            }
        }
        let mut settled = 0;
        for (account, voucher) in due_holds {
            match self.settle_hold(account, voucher).await {
                Ok(()) => settled += 1,
                Err(AppError::Rejected(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok((expired, settled))
    }

    // ---- crypto on the blocking pool ----

    async fn sign(&self, message: Vec<u8>) -> Result<Vec<u8>, AppError> {
        let keys = self.keys();
        let _permit = self.rsa_tasks.acquire().await.map_err(|_| AppError::PoolClosed)?;
        tokio::task::spawn_blocking(move || crypto::sign(&keys.private, &message)).await.map_err(AppError::Task)?.map_err(AppError::from)
    }

    /// Unwraps a media key with the engine key `key_id` names (a media published before a
    /// rotation names a key rotated out), or, for a new publication (`None`), with the
    /// current key and then the ones rotated out (a publisher that wrapped for the key of a
    /// moment ago); returns the key and the id of the engine key that unwrapped it.
    async fn unwrap_media_key_uncached(&self, wrapped: &[u8], key_id: Option<&str>) -> Result<(SecretKey, String), AppError> {
        let keys = self.keys();
        let wrapped = wrapped.to_vec();
        let key_id = key_id.map(str::to_string);
        let _permit = self.rsa_tasks.acquire().await.map_err(|_| AppError::PoolClosed)?;
        tokio::task::spawn_blocking(move || {
            let candidates: Vec<&RsaPrivate> = match &key_id {
                // An id the set does not know (an engine key from before ids were kept) is the current key's.
                Some(id) => vec![keys.private_for(id).unwrap_or(&keys.private)],
                None => std::iter::once(&keys.private).chain(keys.retired()).collect(),
            };
            let mut outcome = Err(crypto::CryptoError::Decrypt);
            for private in candidates {
                outcome = crypto::unwrap_key(private, &wrapped).map(|key| (key, private.public().key_id()));
                if outcome.is_ok() {
                    break;
                }
            }
            outcome
        })
        .await
        .map_err(AppError::Task)?
        .map_err(AppError::from)
    }

    /// The media key, unwrapped once (an RSA private-key operation) and then cached.
    async fn media_key(&self, media: &Media) -> Result<SecretKey, AppError> {
        let published = media.published.as_ref().ok_or(Rejection::NotFound { kind: "media", id: String::new() })?;
        if let Some(key) = self.media_keys.lock().expect("media key cache lock is never poisoned").get(&published.media_id) {
            return Ok(key.clone());
        }
        let (key, _) = self.unwrap_media_key_uncached(&published.wrapped_media_key, Some(&published.engine_key_id)).await?;
        self.media_keys.lock().expect("media key cache lock is never poisoned").put(published.media_id.clone(), key.clone());
        Ok(key)
    }

    /// A consumer's public key, parsed once per key (an LRU of [`CONSUMER_KEY_CACHE_MAX`]).
    fn consumer_key(&self, public_key_der: &[u8]) -> Result<RsaPublic, AppError> {
        let id = crypto::hash(public_key_der);
        if let Some(key) = self.consumer_keys.lock().expect("consumer key cache lock is never poisoned").get(&id) {
            return Ok(key.clone());
        }
        let key = RsaPublic::from_der(public_key_der)?;
        self.consumer_keys.lock().expect("consumer key cache lock is never poisoned").put(id, key.clone());
        Ok(key)
    }

    /// The keys a buyer of `rendition` gets, wrapped for it in one RSA-OAEP operation: for
    /// a format-3 container only that rendition's key and the components key; otherwise
    /// the media key (formats 1 and 2 have one key for everything).
    async fn wrap_purchase(&self, media: &Media, media_id: &MediaId, rendition: &str, recipient: &RsaPublic) -> Result<Vec<u8>, AppError> {
        let format = media.published.as_ref().map_or(0, |published| published.container_format);
        if format != crate::media::FORMAT_VERSION_3 {
            return self.rewrap_for(media, recipient).await;
        }
        let keys = crate::media::purchase_keys(format, &self.media_key(media).await?, media_id, rendition);
        // A public-key operation: about 20 µs with aws-lc-rs, less than handing it to the
        // blocking pool and back costs (issue 26 item 2), so it runs here. Private-key
        // operations (0.5–2 ms) stay on the pool.
        Ok(crypto::wrap_keys(recipient, &[&keys.rendition, &keys.components])?)
    }

    async fn rewrap_for(&self, media: &Media, recipient: &RsaPublic) -> Result<Vec<u8>, AppError> {
        let key = self.media_key(media).await?;
        // As in `wrap_purchase`: a public-key operation, on this thread.
        Ok(crypto::wrap_key(recipient, &key)?)
    }
}

/// The canonical bytes a consumer certificate's signature covers.
pub fn certificate_message(consumer: &ConsumerId, serial: &CertSerial, public_key_der: &[u8], not_before: Millis, not_after: Millis) -> Vec<u8> {
    let mut message = b"vouchsafe consumer certificate v1\0".to_vec();
    for part in [consumer.0.as_bytes(), serial.0.as_bytes(), public_key_der] {
        message.extend_from_slice(&(part.len() as u64).to_le_bytes());
        message.extend_from_slice(part);
    }
    message.extend_from_slice(&not_before.0.to_le_bytes());
    message.extend_from_slice(&not_after.0.to_le_bytes());
    message
}

/// Verifies a consumer certificate against the engine's public key.
pub fn verify_certificate(engine: &RsaPublic, consumer: &ConsumerId, cert: &Certificate) -> bool {
    let message = certificate_message(consumer, &cert.serial, &cert.public_key_der, cert.not_before, cert.not_after);
    crypto::verify(engine, &message, &cert.signature).is_ok()
}

/// A handled command's outcome, re-exported for callers that need the aggregate.
pub type HandledVoucher = Handled<Voucher>;
