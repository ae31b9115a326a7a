//! Domain events: the past-tense facts of DESIGN.md, as plain Rust types. They are
//! converted to and from the protobuf envelope only in `crate::wire`.

use crate::ids::{AccountId, AuditorId, CertSerial, ConsumerId, MediaId, MerchantId, Millis, NodeId, OrderId, PreviewId, PublisherId, VoucherId};

/// Which aggregate an event belongs to; also the second token of its subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggregateKind {
    Voucher,
    Media,
    Merchant,
    Node,
    Consumer,
    Account,
    Order,
    Preview,
    Report,
    Config,
    Auditor,
    Publisher,
}

impl AggregateKind {
    pub fn subject_token(self) -> &'static str {
        match self {
            AggregateKind::Voucher => "voucher",
            AggregateKind::Media => "media",
            AggregateKind::Merchant => "merchant",
            AggregateKind::Node => "node",
            AggregateKind::Consumer => "consumer",
            AggregateKind::Account => "account",
            AggregateKind::Order => "order",
            AggregateKind::Preview => "preview",
            AggregateKind::Report => "report",
            AggregateKind::Config => "config",
            AggregateKind::Auditor => "auditor",
            AggregateKind::Publisher => "publisher",
        }
    }
}

/// An aggregate's identity: its kind and id. Its subject is `vs.<kind>.<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateRef {
    pub kind: AggregateKind,
    pub id: String,
}

impl AggregateRef {
    pub fn new(kind: AggregateKind, id: impl Into<String>) -> Self {
        Self { kind, id: id.into() }
    }
    pub fn subject(&self) -> String {
        format!("vs.{}.{}", self.kind.subject_token(), self.id)
    }

    /// Whether `subject` is this aggregate's `subject()`, without building it: projections
    /// check every stored event's subject, and a string built per event only to compare it
    /// was one allocation of the replay's per event.
    pub fn has_subject(&self, subject: &str) -> bool {
        subject.strip_prefix("vs.").and_then(|rest| rest.strip_prefix(self.kind.subject_token())).and_then(|rest| rest.strip_prefix('.'))
            == Some(self.id.as_str())
    }

    /// Whether this is the aggregate of kind `kind` and id `id` (`Event::aggregate_key`).
    pub fn is(&self, kind: AggregateKind, id: &str) -> bool {
        self.kind == kind && self.id == id
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorKind {
    Operator,
    Merchant,
    Node,
    Publisher,
    Auditor,
    Engine,
}

impl ActorKind {
    /// The kind's stable name. Idempotency keys (and so `Nats-Msg-Id`s and event ids) are
    /// built from it, so it must never change: it is spelled out here rather than taken
    /// from `Debug`, whose output is not a format.
    pub fn name(self) -> &'static str {
        match self {
            ActorKind::Operator => "Operator",
            ActorKind::Merchant => "Merchant",
            ActorKind::Node => "Node",
            ActorKind::Publisher => "Publisher",
            ActorKind::Auditor => "Auditor",
            ActorKind::Engine => "Engine",
        }
    }
}

/// Who caused an event, as derived from the caller's credential.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl Actor {
    pub fn new(kind: ActorKind, id: impl Into<String>) -> Self {
        Self { kind, id: id.into() }
    }
    pub fn engine() -> Self {
        Self::new(ActorKind::Engine, "engine")
    }
}

/// What one bound duplication unit costs and how it settles: the merchant's clearing
/// account pays the media's price, split by its terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitCharge {
    pub merchant: MerchantId,
    pub media_id: MediaId,
    pub price_minor: u64,
    pub currency: String,
    pub postings: Vec<Posting>,
}

/// Points a merchant sold a consumer: the merchant's clearing account owes the points
/// account their price, one point per minor unit of `currency`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointsSale {
    pub merchant: MerchantId,
    pub currency: String,
    pub postings: Vec<Posting>,
}

/// How a sale's price is split, in basis points of the price.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RoyaltyTerms {
    pub retailer_bps: u32,
    pub distributor_bps: u32,
    pub owner_bps: u32,
    pub distributor: String,
    pub owner: String,
    pub rights_agent: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Rendition {
    pub name: String,
    pub bitrate_kbps: u32,
    pub content_hash: [u8; 32],
    pub size_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PreviewClip {
    pub start_ms: u64,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaPublished {
    pub media_id: MediaId,
    pub publisher: String,
    pub title: String,
    pub artist: String,
    pub authors: Vec<String>,
    pub length_ms: u64,
    pub price_minor: u64,
    pub currency: String,
    pub terms: RoyaltyTerms,
    pub renditions: Vec<Rendition>,
    pub preview: PreviewClip,
    pub image_descriptor: String,
    pub for_sale: bool,
    pub engine_key_id: String,
    /// The media key wrapped for the engine's RSA key: ciphertext, not a secret.
    pub wrapped_media_key: Vec<u8>,
    /// The container format checked at publication (3: a key per rendition; 0: not
    /// recorded, in events written before, and for media published without a container).
    pub container_format: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payment {
    /// The merchant took payment itself (card, invoice …); `payment_ref` is its reference.
    Merchant { payment_ref: String },
    /// Prepaid points from a consumer account, held at Reserve, posted at Authorize.
    Points { account: AccountId },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedItem {
    pub media_id: MediaId,
    pub price_minor: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LedgerAccountKind {
    ConsumerPoints,
    MerchantClearing,
    Retailer,
    Distributor,
    Owner,
}

/// One line of a double-entry posting: exactly one of debit or credit is non-zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    pub kind: LedgerAccountKind,
    pub account: String,
    pub debit_minor: u64,
    pub credit_minor: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VoidReason {
    Refunded,
    TimedOut,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RightsReportSealed {
    pub epoch: u64,
    pub first_entry: u64,
    pub last_entry: u64,
    pub head_y: [u8; 32],
    pub head_z: [u8; 32],
    pub merkle_root: [u8; 32],
    pub totals_digest: [u8; 32],
    pub prev_seal_hash: [u8; 32],
    pub engine_key_id: String,
    pub signature: Vec<u8>,
    pub last_stream_seq: u64,
    /// Running hash over every stored event up to `last_stream_seq`.
    pub stream_head: [u8; 32],
    /// The seal as a C2SP checkpoint; `None` in seals written before checkpoints were.
    pub checkpoint: Option<SealCheckpoint>,
}

/// A seal's C2SP tlog checkpoint (`crate::note::Checkpoint`): the note is
/// `origin\ntree_size\nbase64(root)\n`, then a blank line and `— origin base64(signature)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealCheckpoint {
    /// The log's origin, which is also the checkpoint key's name.
    pub origin: String,
    /// Entries in the tree: every entry up to the seal's `last_entry`.
    pub tree_size: u64,
    /// RFC 6962 SHA-256 root of the tree over the entries' leaves.
    pub root: [u8; 32],
    /// Key ID ‖ Ed25519 signature of the checkpoint note; empty in a draft.
    pub signature: Vec<u8>,
    /// Audit path of the tree's last leaf: with that leaf (rebuilt from `head_y`, `head_z`
    /// and the entry key), where an incremental auditor's tree starts.
    pub last_leaf_proof: Vec<[u8; 32]>,
}

impl SealCheckpoint {
    /// Every field, framed (lengths before variable parts): what the seal's RSA signature
    /// and the seal hash append to their older bytes when a seal has a checkpoint, so that
    /// seals without one keep their signature and hash.
    pub fn framed(&self) -> Vec<u8> {
        let mut bytes = b"checkpoint v1\0".to_vec();
        bytes.extend_from_slice(&(self.origin.len() as u64).to_le_bytes());
        bytes.extend_from_slice(self.origin.as_bytes());
        bytes.extend_from_slice(&self.tree_size.to_le_bytes());
        bytes.extend_from_slice(&self.root);
        bytes.extend_from_slice(&(self.signature.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&self.signature);
        bytes.extend_from_slice(&(self.last_leaf_proof.len() as u64).to_le_bytes());
        for hash in &self.last_leaf_proof {
            bytes.extend_from_slice(hash);
        }
        bytes
    }
}

/// Every domain event. Each belongs to exactly one aggregate (see `Event::aggregate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    MediaPublished(MediaPublished),
    MediaWithdrawn {
        media_id: MediaId,
        reason: String,
    },
    PriceChanged {
        media_id: MediaId,
        price_minor: u64,
    },
    MerchantRegistered {
        merchant_id: MerchantId,
        name: String,
        credential_hash: [u8; 32],
    },
    MerchantSuspended {
        merchant_id: MerchantId,
        reason: String,
    },
    /// The operator lifted a suspension: the merchant may sell again.
    MerchantReinstated {
        merchant_id: MerchantId,
        reason: String,
    },
    /// The rental windows a merchant offers, within the operator's bounds (0..0: those).
    MerchantRentalWindowSet {
        merchant_id: MerchantId,
        window_ms_min: u64,
        window_ms_max: u64,
    },
    AuditorRegistered {
        auditor_id: AuditorId,
        name: String,
        credential_hash: [u8; 32],
    },
    /// An issued voucher's access window ended with no delivery under way: the node's slot
    /// comes back and the voucher can be issued again.
    AccessLapsed {
        voucher_id: VoucherId,
        node_id: NodeId,
    },
    /// A delivered voucher's access renewed for a lost copy's recovery after its window:
    /// on `node_id` until `access_expires_at`; `previous_node` when the node that delivered
    /// it no longer serves (its tokens stop working). No slot, no usage.
    AccessRenewed {
        voucher_id: VoucherId,
        node_id: NodeId,
        previous_node: Option<NodeId>,
        access_expires_at: Millis,
    },
    AuditorRevoked {
        auditor_id: AuditorId,
        reason: String,
    },
    /// The operator registered a publisher: its credential's hash and the royalty terms
    /// every media it publishes is sold under.
    PublisherRegistered {
        publisher_id: PublisherId,
        name: String,
        credential_hash: [u8; 32],
        terms: RoyaltyTerms,
    },
    /// A signing key of the publisher's (`key_id` = `RsaPublic::key_id`, SPKI DER): its
    /// containers must be signed by one of these.
    PublisherKeyAdded {
        publisher_id: PublisherId,
        key_id: String,
        public_key_der: Vec<u8>,
    },
    NodeRegistered {
        node_id: NodeId,
        region: String,
        slots_max: u32,
        credential_hash: [u8; 32],
    },
    NodeCapacityChanged {
        node_id: NodeId,
        slots_max: u32,
    },
    /// An engine's share of a node's slots (see `party::SlotLease`): created, resized,
    /// renewed, or taken over from a holder past its `until`; slots 0 gives it back.
    SlotsLeased {
        node_id: NodeId,
        lease: u64,
        holder: String,
        slots: u32,
        until: Millis,
    },
    /// An engine (`holder`) found every slot of the node leased by others and asks for a
    /// fair share of them until `until`; cleared when its lease there grows
    /// (`party::Node::wants`).
    SlotsWanted {
        node_id: NodeId,
        holder: String,
        until: Millis,
    },
    NodeDrained {
        node_id: NodeId,
    },
    NodeRemoved {
        node_id: NodeId,
    },
    ConsumerCertified {
        consumer_id: ConsumerId,
        cert_serial: CertSerial,
        public_key_der: Vec<u8>,
        not_before: Millis,
        not_after: Millis,
        engine_key_id: String,
        signature: Vec<u8>,
    },
    CertRevoked {
        consumer_id: ConsumerId,
        cert_serial: CertSerial,
        reason: String,
    },
    Reserved {
        voucher_id: VoucherId,
        merchant_id: MerchantId,
        items: Vec<ReservedItem>,
        rendition: String,
        price_minor: u64,
        currency: String,
        expires_at: Millis,
        payment: Payment,
        token_key_id: u32,
        auth_generation: u32,
        /// A rental's window, chosen by the buyer within the configured bounds (the items'
        /// prices are per window); 0: a purchase kept for good.
        rental_ms: u64,
    },
    Authorized {
        voucher_id: VoucherId,
        receipt_key_id: u32,
        receipt_generation: u32,
        postings: Vec<Posting>,
        /// A rental's end: the authorization's time plus its window (`Millis(0)`: not a rental).
        rental_until: Millis,
    },
    Voided {
        voucher_id: VoucherId,
        reason: VoidReason,
        reversal: Vec<Posting>,
    },
    /// A delivered purchase fetched again by the consumer it was released to (a lost copy):
    /// the keys re-wrapped for the certificate named, not a new usage. `recovery` counts
    /// the voucher's recoveries (1 for the first).
    CopyRecovered {
        voucher_id: VoucherId,
        node_id: NodeId,
        consumer_id: ConsumerId,
        cert_serial: CertSerial,
        challenge_hash: [u8; 32],
        consumer_key_hash: [u8; 32],
        recovery: u32,
    },
    /// A sale refunded (or charged back) after its keys were released: the settlement
    /// reversed, and one royalty adjustment entry per media whose usage was counted.
    Refunded {
        voucher_id: VoucherId,
        reason: String,
        chargeback: bool,
        reversal: Vec<Posting>,
        media_ids: Vec<MediaId>,
    },
    VoucherIssued {
        voucher_id: VoucherId,
        node_id: NodeId,
        merchant_id: MerchantId,
        media_ids: Vec<MediaId>,
        rendition: String,
        access_expires_at: Millis,
        /// The node the voucher was issued to before, when it moved (its node drained,
        /// removed or silent); `None` for the first issue.
        previous_node: Option<NodeId>,
        /// The slot lease the slot came from (`SlotsLeased`); 0 when none.
        lease: u64,
    },
    RedemptionAccepted {
        voucher_id: VoucherId,
        node_id: NodeId,
        consumer_id: ConsumerId,
        cert_serial: CertSerial,
        /// Hashes of the wrapped keys, in events written before keys were wrapped after the
        /// decision; empty since.
        wrapped_key_hashes: Vec<[u8; 32]>,
        /// The challenge the proof answered (`None` in older events): it redeems once.
        challenge_hash: Option<[u8; 32]>,
        /// The public key the keys are wrapped for (`None` in older events).
        consumer_key_hash: Option<[u8; 32]>,
        /// The media whose keys are released here for the first time: the usage the
        /// royalty log counts (empty on a retry, and in events from before that rule).
        released_media: Vec<MediaId>,
        /// A rental's play this redemption starts (1, 2 …): each play's release is a usage
        /// of its own (pay-per-view). 0: not a rental, or a retry within a play.
        rental_play: u32,
    },
    /// A rental's play finished (after its last `Delivered`): paid and unissued again, for
    /// the next play while the window lasts.
    RentalPlayEnded {
        voucher_id: VoucherId,
        node_id: NodeId,
        play: u32,
    },
    DeliveryFailed {
        voucher_id: VoucherId,
        node_id: NodeId,
        reason: String,
    },
    Delivered {
        voucher_id: VoucherId,
        node_id: NodeId,
        media_id: MediaId,
        cert_serial: CertSerial,
        content_hash: [u8; 32],
        size_bytes: u64,
        voucher_complete: bool,
    },
    PreviewStarted {
        preview_id: PreviewId,
        media_id: MediaId,
        node_id: NodeId,
        merchant_id: MerchantId,
        clip_ms: u64,
        /// When the sweeper may end it unreported (`preview::PREVIEW_GRACE_MS`); `Millis(0)`
        /// in events from before the window (due at once).
        lapses_at: Millis,
        /// The slot lease the slot came from (`SlotsLeased`); 0 when none.
        lease: u64,
    },
    PreviewEnded {
        preview_id: PreviewId,
        played_ms: u64,
        media_id: MediaId,
        node_id: NodeId,
    },
    RightsReportSealed(RightsReportSealed),
    PointsCredited {
        account_id: AccountId,
        amount: u64,
        reason: String,
        /// Points a merchant sold (it took the consumer's payment); `None` for an
        /// operator's credit or a refund.
        sale: Option<PointsSale>,
    },
    PointsHeld {
        account_id: AccountId,
        voucher_id: VoucherId,
        amount: u64,
        expires_at: Millis,
        /// blake3 of the consumer's spend authorization nonce: each is good for one hold.
        /// `None` only in streams written before spending needed consent.
        nonce_hash: Option<[u8; 32]>,
    },
    HoldPosted {
        account_id: AccountId,
        voucher_id: VoucherId,
        amount: u64,
    },
    HoldReleased {
        account_id: AccountId,
        voucher_id: VoucherId,
        amount: u64,
        reason: VoidReason,
    },
    OrderPlaced {
        order_id: OrderId,
        merchant_id: MerchantId,
        media_id: MediaId,
        units: u32,
        price_per_unit_minor: u64,
        /// The currency and the media's terms each bound unit settles by (`None` in orders
        /// placed before units were paid: they bind no more units).
        settles_by: Option<(String, RoyaltyTerms)>,
    },
    UnitBound {
        order_id: OrderId,
        unit: u32,
        device_id: String,
        device_public_key_hash: [u8; 32],
        /// The hash of the wrapped key, in events written before keys were wrapped after
        /// the decision; `None` since (the key is named by `device_public_key_hash`).
        wrapped_key_hash: Option<[u8; 32]>,
        /// The unit's charge, settled as it binds: a usage and a sale (`None` in events
        /// written before units were paid).
        charge: Option<UnitCharge>,
    },
    UnitCompleted {
        order_id: OrderId,
        unit: u32,
    },
    ConfigChanged {
        key: String,
        value: String,
    },
    /// The engine signs with a new RSA key from now on (`keys rotate engine`); the previous
    /// one is retired: what it signed still verifies, by its key id.
    EngineKeyRotated {
        key_id: String,
        public_key_der: Vec<u8>,
        previous_key_id: String,
        rotated_at: Millis,
    },
    /// A retired engine key is revoked (`keys revoke engine`, after the grace period):
    /// nothing it signs after this event is valid.
    EngineKeyRevoked {
        key_id: String,
    },
    /// New receipts and access tokens use token key `key_id` from now on (`keys rotate
    /// token`); tokens made under older ids stay valid.
    TokenKeyRotated {
        key_id: u32,
        previous_key_id: u32,
        rotated_at: Millis,
    },
    /// Checkpoints are signed with the note key of `vkey` from now on (`keys rotate
    /// checkpoint`); what `previous_vkey` signed still verifies with it.
    CheckpointKeyRotated {
        vkey: String,
        previous_vkey: String,
        rotated_at: Millis,
    },
}

impl Event {
    /// The aggregate this event belongs to (and so the subject it is appended on).
    pub fn aggregate(&self) -> AggregateRef {
        let (kind, id) = self.aggregate_key();
        AggregateRef::new(kind, id)
    }

    /// The kind and id of `aggregate()`, borrowed: what checking an envelope against its
    /// event needs, without copying the id.
    pub fn aggregate_key(&self) -> (AggregateKind, &str) {
        use AggregateKind as K;
        match self {
            Event::MediaPublished(e) => (K::Media, e.media_id.as_str()),
            Event::MediaWithdrawn { media_id, .. } | Event::PriceChanged { media_id, .. } => (K::Media, media_id.as_str()),
            Event::MerchantRegistered { merchant_id, .. }
            | Event::MerchantSuspended { merchant_id, .. }
            | Event::MerchantReinstated { merchant_id, .. }
            | Event::MerchantRentalWindowSet { merchant_id, .. } => (K::Merchant, merchant_id.as_str()),
            Event::AuditorRegistered { auditor_id, .. } | Event::AuditorRevoked { auditor_id, .. } => (K::Auditor, auditor_id.as_str()),
            Event::PublisherRegistered { publisher_id, .. } | Event::PublisherKeyAdded { publisher_id, .. } => (K::Publisher, publisher_id.as_str()),
            Event::NodeRegistered { node_id, .. }
            | Event::NodeCapacityChanged { node_id, .. }
            | Event::SlotsLeased { node_id, .. }
            | Event::SlotsWanted { node_id, .. }
            | Event::NodeDrained { node_id }
            | Event::NodeRemoved { node_id } => (K::Node, node_id.as_str()),
            Event::ConsumerCertified { consumer_id, .. } | Event::CertRevoked { consumer_id, .. } => (K::Consumer, consumer_id.as_str()),
            Event::Reserved { voucher_id, .. }
            | Event::Authorized { voucher_id, .. }
            | Event::Voided { voucher_id, .. }
            | Event::Refunded { voucher_id, .. }
            | Event::CopyRecovered { voucher_id, .. }
            | Event::VoucherIssued { voucher_id, .. }
            | Event::RedemptionAccepted { voucher_id, .. }
            | Event::DeliveryFailed { voucher_id, .. }
            | Event::Delivered { voucher_id, .. }
            | Event::AccessLapsed { voucher_id, .. }
            | Event::AccessRenewed { voucher_id, .. }
            | Event::RentalPlayEnded { voucher_id, .. } => (K::Voucher, voucher_id.as_str()),
            Event::PreviewStarted { preview_id, .. } | Event::PreviewEnded { preview_id, .. } => (K::Preview, preview_id.as_str()),
            Event::RightsReportSealed(_) => (K::Report, "rights"),
            Event::PointsCredited { account_id, .. }
            | Event::PointsHeld { account_id, .. }
            | Event::HoldPosted { account_id, .. }
            | Event::HoldReleased { account_id, .. } => (K::Account, account_id.as_str()),
            Event::OrderPlaced { order_id, .. } | Event::UnitBound { order_id, .. } | Event::UnitCompleted { order_id, .. } => (K::Order, order_id.as_str()),
            Event::ConfigChanged { .. }
            | Event::EngineKeyRotated { .. }
            | Event::EngineKeyRevoked { .. }
            | Event::TokenKeyRotated { .. }
            | Event::CheckpointKeyRotated { .. } => (K::Config, "engine"),
        }
    }

    /// A short stable name, for logs, metrics and findings.
    pub fn name(&self) -> &'static str {
        match self {
            Event::MediaPublished(_) => "MediaPublished",
            Event::MediaWithdrawn { .. } => "MediaWithdrawn",
            Event::PriceChanged { .. } => "PriceChanged",
            Event::MerchantRegistered { .. } => "MerchantRegistered",
            Event::MerchantSuspended { .. } => "MerchantSuspended",
            Event::MerchantReinstated { .. } => "MerchantReinstated",
            Event::MerchantRentalWindowSet { .. } => "MerchantRentalWindowSet",
            Event::AuditorRegistered { .. } => "AuditorRegistered",
            Event::AuditorRevoked { .. } => "AuditorRevoked",
            Event::PublisherRegistered { .. } => "PublisherRegistered",
            Event::PublisherKeyAdded { .. } => "PublisherKeyAdded",
            Event::AccessLapsed { .. } => "AccessLapsed",
            Event::AccessRenewed { .. } => "AccessRenewed",
            Event::NodeRegistered { .. } => "NodeRegistered",
            Event::NodeCapacityChanged { .. } => "NodeCapacityChanged",
            Event::SlotsLeased { .. } => "SlotsLeased",
            Event::SlotsWanted { .. } => "SlotsWanted",
            Event::NodeDrained { .. } => "NodeDrained",
            Event::NodeRemoved { .. } => "NodeRemoved",
            Event::ConsumerCertified { .. } => "ConsumerCertified",
            Event::CertRevoked { .. } => "CertRevoked",
            Event::Reserved { .. } => "Reserved",
            Event::Authorized { .. } => "Authorized",
            Event::Voided { .. } => "Voided",
            Event::Refunded { .. } => "Refunded",
            Event::CopyRecovered { .. } => "CopyRecovered",
            Event::VoucherIssued { .. } => "VoucherIssued",
            Event::RedemptionAccepted { .. } => "RedemptionAccepted",
            Event::DeliveryFailed { .. } => "DeliveryFailed",
            Event::Delivered { .. } => "Delivered",
            Event::RentalPlayEnded { .. } => "RentalPlayEnded",
            Event::PreviewStarted { .. } => "PreviewStarted",
            Event::PreviewEnded { .. } => "PreviewEnded",
            Event::RightsReportSealed(_) => "RightsReportSealed",
            Event::PointsCredited { .. } => "PointsCredited",
            Event::PointsHeld { .. } => "PointsHeld",
            Event::HoldPosted { .. } => "HoldPosted",
            Event::HoldReleased { .. } => "HoldReleased",
            Event::OrderPlaced { .. } => "OrderPlaced",
            Event::UnitBound { .. } => "UnitBound",
            Event::UnitCompleted { .. } => "UnitCompleted",
            Event::ConfigChanged { .. } => "ConfigChanged",
            Event::EngineKeyRotated { .. } => "EngineKeyRotated",
            Event::EngineKeyRevoked { .. } => "EngineKeyRevoked",
            Event::TokenKeyRotated { .. } => "TokenKeyRotated",
            Event::CheckpointKeyRotated { .. } => "CheckpointKeyRotated",
        }
    }
}

/// An event with its envelope metadata, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub event_id: [u8; 16],
    pub aggregate: AggregateRef,
    /// Number of events in the aggregate including this one.
    pub aggregate_version: u64,
    pub recorded_at: Millis,
    pub request_id: String,
    pub actor: Actor,
    /// The command that produced the event ("Reserve", "Expire" …).
    pub command: String,
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KINDS: [AggregateKind; 12] = [
        AggregateKind::Voucher,
        AggregateKind::Media,
        AggregateKind::Merchant,
        AggregateKind::Node,
        AggregateKind::Consumer,
        AggregateKind::Account,
        AggregateKind::Order,
        AggregateKind::Preview,
        AggregateKind::Report,
        AggregateKind::Config,
        AggregateKind::Auditor,
        AggregateKind::Publisher,
    ];

    #[test]
    fn has_subject_is_equality_with_the_built_subject() {
        let voucher = AggregateRef::new(AggregateKind::Voucher, "v1");
        assert!(voucher.has_subject("vs.voucher.v1"));
        // Negative controls: every near miss is refused, as comparing with `subject()` does.
        for other in [
            "vs.voucher.v12",
            "vs.voucher.v",
            "vs.voucher.",
            "vs.voucher",
            "vs.vouchers.v1",
            "vs.media.v1",
            "xs.voucher.v1",
            "voucher.v1",
            "vs.voucher.V1",
            "vs.voucher..v1",
            "",
        ] {
            assert!(!voucher.has_subject(other), "{other}");
        }
        let dotted = AggregateRef::new(AggregateKind::Node, "a.b");
        assert!(dotted.has_subject("vs.node.a.b") && !dotted.has_subject("vs.node.a"));
        assert!(AggregateRef::new(AggregateKind::Config, "").has_subject("vs.config."));
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(crate::testing::proptest_seed(module_path!())), ..ProptestConfig::default() })]

        #[test]
        fn has_subject_agrees_with_subject(kind in 0..KINDS.len(), other in 0..KINDS.len(), id in "[a-z.]{0,6}", candidate in "(vs\\.)?[a-z.]{0,14}", cut in 0usize..20) {
            let aggregate = AggregateRef::new(KINDS[kind], id.clone());
            let subject = aggregate.subject();
            prop_assert!(aggregate.has_subject(&subject));
            let near = [
                candidate.clone(),
                subject[..cut.min(subject.len())].to_string(),
                format!("{subject}{candidate}"),
                AggregateRef::new(KINDS[other], id.clone()).subject(),
                AggregateRef::new(KINDS[kind], candidate.clone()).subject(),
            ];
            for candidate in near {
                prop_assert_eq!(aggregate.has_subject(&candidate), candidate == subject, "{}", candidate);
            }
        }
    }

    #[test]
    fn aggregate_key_is_aggregate_borrowed() {
        let event = Event::NodeDrained { node_id: NodeId::new("n1") };
        assert_eq!(event.aggregate_key(), (AggregateKind::Node, "n1"));
        assert!(event.aggregate().is(AggregateKind::Node, "n1"));
        assert!(!event.aggregate().is(AggregateKind::Node, "n2") && !event.aggregate().is(AggregateKind::Media, "n1"));
    }
}

#[cfg(test)]
mod actor_kind_tests {
    use super::ActorKind;

    /// Stored idempotency keys were built from `Debug` before `name` existed: the names
    /// must stay exactly those, or a retry after an upgrade would not dedupe.
    #[test]
    fn names_are_the_spellings_stored_keys_were_built_with() {
        for (kind, stored) in [
            (ActorKind::Operator, "Operator"),
            (ActorKind::Merchant, "Merchant"),
            (ActorKind::Node, "Node"),
            (ActorKind::Publisher, "Publisher"),
            (ActorKind::Auditor, "Auditor"),
            (ActorKind::Engine, "Engine"),
        ] {
            assert_eq!(kind.name(), stored);
        }
    }
}
