//! The voucher aggregate: DESIGN.md's core state machine.
//!
//! ```text
//! (none) -Reserve-> Pending -Authorize-> Authorized -IssueVoucher-> Issued(node)
//!   Pending -Expire/Void-> Voided;  Authorized -Void-> Voided
//!   Issued -Redeem-> Redeeming(node, consumer) -CompleteDelivery (last item)-> Delivered
//!   Redeeming -FailDelivery-> Issued
//!   Issued|Redeeming -LapseAccess (access window over)-> Authorized (issue it anew)
//!   Issued -IssueVoucher (window open, same node)-> Issued (the token again; no event)
//!   Issued|Redeeming -Move (node drained/removed/silent; see NodeStanding)-> Issued(new node)
//!   Issued|Redeeming|Delivered (keys released) -Refund/Chargeback-> Refunded
//!   Delivered -Recover-> Delivered (a lost copy);  Delivered -RenewAccess-> Delivered(node)
//!   a rental (window chosen at Reserve, from Authorize on): each play is Issue -> Redeem (a
//!   usage) -> CompleteDelivery (last item: Delivered, RentalPlayEnded)-> Authorized, for the
//!   next play on any node; no Issue nor Redeem after the window (`RentalEnded`)
//! ```
//! A voucher is delivered at most once (each of its media at most once); a Voided voucher
//! is never authorized or delivered; an Authorize after `expires_at` is refused; only the
//! merchant that reserved may authorize, void, issue or read it; only the node it was
//! issued to may redeem it, and only with a valid receipt proof and certificate.

use super::catalog::Media;
use super::event::{Event, LedgerAccountKind, Payment, Posting, ReservedItem, VoidReason};
use super::settlement::{Payer, SaleLine, settle};
use super::{Aggregate, AggregateKind, Rejection, validate};
use crate::ids::{CertSerial, ConsumerId, MediaId, MerchantId, Millis, NodeId, VoucherId};
use std::collections::BTreeSet;

/// Most media one voucher (an album) may buy.
pub const ITEMS_MAX: usize = 64;
/// Longest reservation accepted.
pub const RESERVATION_TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Longest access token lifetime accepted.
pub const ACCESS_TTL_MS_MAX: u64 = 24 * 3600 * 1000;
/// Most plays one rental gives: each play's challenge stays in the voucher (a challenge
/// redeems once, across plays too), so the plays bound the voucher's state.
pub const RENTAL_PLAYS_MAX: u32 = 10_000;
/// The first generation of auth and receipt tokens.
pub const FIRST_GENERATION: u32 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VoucherStatus {
    #[default]
    None,
    Pending,
    Authorized,
    Issued,
    Redeeming,
    Delivered,
    Voided,
    /// Keys were released, then the sale was refunded (or charged back): never redeemed again.
    Refunded,
}

impl VoucherStatus {
    pub fn name(self) -> &'static str {
        match self {
            VoucherStatus::None => "None",
            VoucherStatus::Pending => "Pending",
            VoucherStatus::Authorized => "Authorized",
            VoucherStatus::Issued => "Issued",
            VoucherStatus::Redeeming => "Redeeming",
            VoucherStatus::Refunded => "Refunded",
            VoucherStatus::Delivered => "Delivered",
            VoucherStatus::Voided => "Voided",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Voucher {
    pub status: VoucherStatus,
    pub id: Option<VoucherId>,
    pub merchant: Option<MerchantId>,
    pub items: Vec<ReservedItem>,
    pub rendition: String,
    pub price_minor: u64,
    pub currency: String,
    pub expires_at: Millis,
    pub payment: Option<Payment>,
    pub token_key_id: u32,
    pub auth_generation: u32,
    pub receipt_key_id: u32,
    pub receipt_generation: u32,
    pub node: Option<NodeId>,
    pub access_expires_at: Millis,
    pub consumer: Option<(ConsumerId, CertSerial)>,
    pub delivered: BTreeSet<MediaId>,
    pub void_reason: Option<VoidReason>,
    pub delivery_failures: u32,
    /// Challenges accepted redemptions answered (one per redemption: bounded by the
    /// voucher's redemptions, which failed deliveries bound, and a rental's plays
    /// `RENTAL_PLAYS_MAX`).
    pub used_challenges: Vec<[u8; 32]>,
    /// Who the media keys were released to (the first accepted redemption). Kept after a
    /// failed delivery: that consumer holds the keys, so nobody else may redeem.
    pub released_to: Option<(ConsumerId, CertSerial)>,
    /// The settlement postings of the Authorized event (reversed by a refund).
    pub postings: Vec<Posting>,
    /// Nodes the voucher moved away from (drained, removed, silent): one that comes back
    /// with a player is told it moved, not that it never had it.
    pub moved_from: Vec<NodeId>,
    /// Lost copies fetched again (`CopyRecovered`).
    pub recoveries: u32,
    /// A rental's window (0: a purchase kept for good) and its end once authorized.
    pub rental_ms: u64,
    pub rental_until: Millis,
    /// A rental's plays so far, and whether the current issue's play released its keys.
    pub rental_plays: u32,
    pub play_released: bool,
}

/// A rental's bounds and price at decision time (`rental.*` configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RentalTerms {
    pub window_ms_min: u64,
    pub window_ms_max: u64,
    /// The price of one window, in basis points of the media's price.
    pub price_bps: u64,
}

/// The price of one rental window of a media priced `price_minor`: `price_bps` of it, rounded up.
pub fn rental_price(price_minor: u64, price_bps: u64) -> u64 {
    let scaled = (u128::from(price_minor) * u128::from(price_bps)).div_ceil(10_000);
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// Whether the node a voucher is issued to still serves it, as the shell found it (the
/// node is active in the allocation and heartbeats in time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStanding {
    Serving,
    /// Drained: takes nothing new, finishes what it started (a delivery under way).
    Gone,
    /// Removed, or silent past `node.heartbeat_timeout_ms`: finishes nothing, so even a
    /// voucher whose keys it released moves (to the consumer that holds them).
    Dead,
}

/// The consumer certificate's standing at decision time, looked up by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertCheck {
    Valid,
    Revoked,
    /// Outside its validity period.
    NotValid,
    Unknown,
}

impl CertCheck {
    /// `Ok` for a valid certificate, else the precise refusal (`kind` names what the
    /// certificate is for in a NotFound: "certificate", "device certificate").
    pub fn require(self, kind: &'static str, serial: &CertSerial) -> Result<(), Rejection> {
        match self {
            CertCheck::Valid => Ok(()),
            CertCheck::Revoked => Err(Rejection::CertRevoked),
            CertCheck::NotValid => Err(Rejection::CertNotValid),
            CertCheck::Unknown => Err(Rejection::NotFound { kind, id: serial.0.clone() }),
        }
    }
}

/// The receipt proof's verdict, computed by the shell (crypto is not the domain's job).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofCheck {
    Valid,
    Invalid,
}

#[derive(Clone, Debug)]
pub struct Reserve {
    pub voucher_id: VoucherId,
    pub merchant: MerchantId,
    /// Each requested media with its catalog state at decision time.
    pub items: Vec<(MediaId, Media)>,
    pub rendition: String,
    pub ttl_ms: u64,
    pub payment: Payment,
    pub token_key_id: u32,
    /// A rental's window as the buyer chose it (0: a purchase), checked against `rental`.
    pub rental_ms: u64,
    pub rental: RentalTerms,
}

#[derive(Clone, Debug)]
pub struct Authorize {
    pub merchant: MerchantId,
    pub receipt_key_id: u32,
    /// The catalog state of each reserved media (for the settlement split).
    pub media: Vec<Media>,
}

#[derive(Clone, Debug)]
pub struct Redeem {
    pub node: NodeId,
    pub consumer: ConsumerId,
    pub cert_serial: CertSerial,
    pub cert: CertCheck,
    pub proof: ProofCheck,
    /// The challenge the proof answers: refused when it was answered before.
    pub challenge_hash: [u8; 32],
    /// The public key of the certificate the keys will be wrapped for.
    pub consumer_key_hash: [u8; 32],
    /// `delivery.retries_max` at decision time: redemptions allowed after failed deliveries.
    pub retries_max: u32,
}

#[derive(Clone, Debug)]
pub struct CompleteDelivery {
    pub node: NodeId,
    pub media_id: MediaId,
    pub content_hash: [u8; 32],
    pub size_bytes: u64,
    /// The player's confirm proof, as the shell found it against the receipt and the
    /// consumer the keys were released to.
    pub proof: ProofCheck,
}

#[derive(Clone, Debug)]
pub enum VoucherCommand {
    Reserve(Reserve),
    Authorize(Authorize),
    Void {
        merchant: MerchantId,
    },
    /// The merchant gives the money back: a void with the reversal while no key was
    /// released; after a release (delivered or under way) a refund, or a chargeback the
    /// payment processor made, which reverses the postings and adjusts the royalties.
    Refund {
        merchant: MerchantId,
        reason: String,
        chargeback: bool,
    },
    /// The sweeper's timeout of a Pending reservation, decided at `now`.
    Expire,
    /// The sweeper's end of an Issued voucher's access window, decided at `now`: the node's
    /// slot comes back and the voucher can be issued anew.
    LapseAccess,
    /// Moves an issued voucher nobody redeemed off a node that no longer serves it (drained,
    /// removed or silent: `old_node`, the shell's finding) to `node`, the allocator's new
    /// choice: a new access window there, the receipt unchanged; tokens for the old node
    /// stop working (the voucher is no longer assigned to it). By its merchant (reissue) or
    /// by the engine (`merchant` None: the sweeper).
    Move {
        merchant: Option<MerchantId>,
        node: NodeId,
        /// The slot lease the allocator took the slot from (0: none), recorded in the event.
        lease: u64,
        access_ttl_ms: u64,
        old_node: NodeStanding,
        /// `delivery.retries_max`: a voucher whose deliveries failed past it is issued anew.
        retries_max: u32,
    },
    /// A delivered voucher's access renewed so its consumer can recover a lost copy after
    /// the window (`Recover`): on `node`, the node it was delivered by while that serves
    /// (`old_node`), else the allocator's new choice. Needs a recovery left.
    RenewAccess {
        merchant: MerchantId,
        node: NodeId,
        access_ttl_ms: u64,
        old_node: NodeStanding,
        recoveries_max: u32,
    },
    /// `node` is the allocator's choice, recorded in the event so replay never re-decides.
    Issue {
        merchant: MerchantId,
        node: NodeId,
        /// The slot lease the allocator took the slot from (0: none), recorded in the event.
        lease: u64,
        access_ttl_ms: u64,
    },
    Redeem(Redeem),
    /// A delivered purchase fetched again by the consumer it was released to (a lost
    /// copy), at most `recoveries_max` times (`delivery.recoveries_max`).
    Recover {
        redeem: Redeem,
        recoveries_max: u32,
    },
    FailDelivery {
        node: NodeId,
        reason: String,
        /// The player's confirm proof of what it received (checked by the shell).
        proof: ProofCheck,
    },
    CompleteDelivery(CompleteDelivery),
}

impl Voucher {
    pub fn id_or_empty(&self) -> VoucherId {
        self.id.clone().unwrap_or_else(|| VoucherId::new(""))
    }

    fn exists(&self) -> Result<(), Rejection> {
        if self.status == VoucherStatus::None { Err(Rejection::NotFound { kind: "voucher", id: String::new() }) } else { Ok(()) }
    }

    /// Another merchant's voucher is refused exactly as one that does not exist, so the
    /// answer never tells merchant B that merchant A's voucher is there (no existence oracle).
    fn owned_by(&self, merchant: &MerchantId) -> Result<(), Rejection> {
        self.exists()?;
        if self.merchant.as_ref() == Some(merchant) { Ok(()) } else { Err(Rejection::NotFound { kind: "voucher", id: String::new() }) }
    }

    fn assigned_to(&self, node: &NodeId) -> Result<(), Rejection> {
        self.exists()?;
        if self.node.as_ref() == Some(node) {
            Ok(())
        } else if self.moved_from.contains(node) {
            Err(Rejection::VoucherMoved)
        } else {
            Err(Rejection::NotYourAssignment)
        }
    }

    fn transition(&self, command: &'static str) -> Rejection {
        match self.status {
            VoucherStatus::Voided => Rejection::Voided,
            VoucherStatus::Delivered => Rejection::AlreadyDelivered,
            status => Rejection::InvalidTransition { kind: "voucher", command, state: status.name() },
        }
    }

    pub fn is_rental(&self) -> bool {
        self.rental_ms > 0
    }

    /// Whether media keys are out with a consumer: for a purchase since its first release,
    /// for a rental only while a play's release is under way (each play is issued anew).
    pub fn keys_out(&self) -> bool {
        if self.is_rental() { self.play_released } else { self.released_to.is_some() }
    }

    /// A rental whose window is over at `now` is refused; anything else passes (a rental
    /// not paid for yet has no window: `rental_until` is set at Authorize).
    fn rental_open(&self, now: Millis) -> Result<(), Rejection> {
        let started = self.is_rental() && self.rental_until.0 > 0;
        if started && now > self.rental_until { Err(Rejection::RentalEnded { ended_at: self.rental_until }) } else { Ok(()) }
    }

    /// A rental's next play, refused past `RENTAL_PLAYS_MAX` (a play under way goes on).
    fn rental_play_left(&self) -> Result<(), Rejection> {
        if self.is_rental() && !self.play_released && self.rental_plays >= RENTAL_PLAYS_MAX {
            Err(Rejection::RentalPlaysExhausted { plays_max: RENTAL_PLAYS_MAX })
        } else {
            Ok(())
        }
    }

    /// An access window from `now`: a rental's never passes the rental's end.
    fn access_until(&self, now: Millis, access_ttl_ms: u64) -> Millis {
        let until = now.plus_ms(access_ttl_ms);
        if self.is_rental() { until.min(self.rental_until) } else { until }
    }

    pub fn media_ids(&self) -> Vec<MediaId> {
        self.items.iter().map(|item| item.media_id.clone()).collect()
    }

    /// The seed's three sets: pending purchases; purchased, not delivered; delivered.
    pub fn set(&self) -> Option<PurchaseSet> {
        match self.status {
            VoucherStatus::Pending => Some(PurchaseSet::Pending),
            VoucherStatus::Authorized | VoucherStatus::Issued | VoucherStatus::Redeeming => Some(PurchaseSet::PurchasedNotDelivered),
            VoucherStatus::Delivered => Some(PurchaseSet::Delivered),
            VoucherStatus::None | VoucherStatus::Voided | VoucherStatus::Refunded => None,
        }
    }

    fn decide_reserve(&self, reserve: &Reserve, now: Millis) -> Result<Vec<Event>, Rejection> {
        if self.status != VoucherStatus::None {
            return Err(Rejection::AlreadyExists { kind: "voucher", id: reserve.voucher_id.0.clone() });
        }
        validate::id("rendition", &reserve.rendition)?;
        if reserve.items.is_empty() || reserve.items.len() > ITEMS_MAX {
            return Err(Rejection::InvalidArgument { field: "media_ids", reason: format!("need 1..={ITEMS_MAX} media") });
        }
        if reserve.ttl_ms == 0 || reserve.ttl_ms > RESERVATION_TTL_MS_MAX {
            return Err(Rejection::InvalidArgument { field: "ttl_ms", reason: format!("must be 1..={RESERVATION_TTL_MS_MAX}") });
        }
        let RentalTerms { window_ms_min, window_ms_max, .. } = reserve.rental;
        if reserve.rental_ms > 0 && !(window_ms_min..=window_ms_max).contains(&reserve.rental_ms) {
            let reason = format!(
                "a rental window must be {window_ms_min}..={window_ms_max} ms (the operator's rental.window_ms_min..max and the merchant's own rental window)"
            );
            return Err(Rejection::InvalidArgument { field: "rental_ms", reason });
        }
        let mut seen = BTreeSet::new();
        let mut items = Vec::with_capacity(reserve.items.len());
        let mut currency: Option<&str> = None;
        for (media_id, media) in &reserve.items {
            if !seen.insert(media_id) {
                return Err(Rejection::InvalidArgument { field: "media_ids", reason: format!("{media_id} is listed twice") });
            }
            let Some(published) = &media.published else {
                return Err(Rejection::NotFound { kind: "media", id: media_id.0.clone() });
            };
            if !media.on_sale() {
                return Err(Rejection::NotForSale(media_id.0.clone()));
            }
            if !published.renditions.iter().any(|r| r.name == reserve.rendition) {
                return Err(Rejection::InvalidArgument { field: "rendition", reason: format!("media {media_id} has no rendition {:?}", reserve.rendition) });
            }
            match currency {
                None => currency = Some(&published.currency),
                Some(c) if c != published.currency => {
                    return Err(Rejection::InvalidArgument { field: "media_ids", reason: "media priced in different currencies".into() });
                }
                Some(_) => {}
            }
            let price_minor = if reserve.rental_ms > 0 { rental_price(media.price_minor, reserve.rental.price_bps) } else { media.price_minor };
            items.push(ReservedItem { media_id: media_id.clone(), price_minor });
        }
        let price_minor = items.iter().try_fold(0u64, |sum, item| sum.checked_add(item.price_minor)).ok_or(Rejection::Overflow)?;
        if let Payment::Points { account } = &reserve.payment {
            validate::id("points_account", &account.0)?;
        }
        Ok(vec![Event::Reserved {
            voucher_id: reserve.voucher_id.clone(),
            merchant_id: reserve.merchant.clone(),
            items,
            rendition: reserve.rendition.clone(),
            price_minor,
            currency: currency.unwrap_or_default().to_string(),
            expires_at: now.plus_ms(reserve.ttl_ms),
            payment: reserve.payment.clone(),
            token_key_id: reserve.token_key_id,
            auth_generation: FIRST_GENERATION,
            rental_ms: reserve.rental_ms,
        }])
    }

    fn decide_authorize(&self, authorize: &Authorize, now: Millis) -> Result<Vec<Event>, Rejection> {
        self.owned_by(&authorize.merchant)?;
        if self.status != VoucherStatus::Pending {
            return Err(self.transition("Authorize"));
        }
        if now > self.expires_at {
            return Err(Rejection::Expired { expires_at: self.expires_at });
        }
        let payer = match &self.payment {
            Some(Payment::Points { account }) => Payer { kind: LedgerAccountKind::ConsumerPoints, account: account.0.clone() },
            _ => Payer { kind: LedgerAccountKind::MerchantClearing, account: self.merchant.as_ref().map(|m| m.0.clone()).unwrap_or_default() },
        };
        let mut lines = Vec::with_capacity(self.items.len());
        for item in &self.items {
            let terms = authorize
                .media
                .iter()
                .find_map(|media| media.published.as_ref().filter(|p| p.media_id == item.media_id))
                .map(|published| &published.terms)
                .ok_or_else(|| Rejection::NotFound { kind: "media", id: item.media_id.0.clone() })?;
            lines.push(SaleLine { price_minor: item.price_minor, terms });
        }
        let retailer = self.merchant.as_ref().map(|m| m.0.as_str()).unwrap_or_default();
        let postings = settle(&payer, retailer, &lines);
        // A rental's window starts when it is paid for.
        let rental_until = if self.is_rental() { now.plus_ms(self.rental_ms) } else { Millis(0) };
        Ok(vec![Event::Authorized {
            voucher_id: self.id_or_empty(),
            receipt_key_id: authorize.receipt_key_id,
            receipt_generation: FIRST_GENERATION,
            postings,
            rental_until,
        }])
    }

    fn decide_redeem(&self, redeem: &Redeem, now: Millis) -> Result<Vec<Event>, Rejection> {
        self.assigned_to(&redeem.node)?;
        self.rental_open(now)?;
        self.rental_play_left()?;
        let redeemer = (redeem.consumer.clone(), redeem.cert_serial.clone());
        let retry = match self.status {
            // Once released, the keys are that consumer's: a failed delivery may be retried
            // by the same consumer only, and only so often; with the certificate the keys
            // went to or a newer one of the same consumer (a lost passport replaced: the
            // keys are re-wrapped for the certificate that redeems, no new usage).
            VoucherStatus::Issued if self.released_to.as_ref().is_some_and(|(consumer, _)| *consumer != redeem.consumer) => {
                return Err(Rejection::AlreadyRedeemed);
            }
            VoucherStatus::Issued if self.delivery_failures > redeem.retries_max => {
                return Err(Rejection::DeliveryRetriesExhausted { retries_max: redeem.retries_max });
            }
            VoucherStatus::Issued => false,
            // A node restarted mid-delivery and asks again for the same consumer: the
            // redemption stands (after the same checks: a certificate revoked since must
            // not get keys re-wrapped); anyone else is refused.
            VoucherStatus::Redeeming if self.consumer.as_ref() == Some(&redeemer) => true,
            VoucherStatus::Redeeming => return Err(Rejection::AlreadyRedeemed),
            _ => return Err(self.transition("Redeem")),
        };
        redeem.cert.require("certificate", &redeem.cert_serial)?;
        if redeem.proof != ProofCheck::Valid {
            return Err(Rejection::BadProof);
        }
        // A challenge answered once is spent at the engine too: a Redeem replayed by
        // whoever saw it (the node, the link) gets nothing.
        if self.used_challenges.contains(&redeem.challenge_hash) {
            return Err(Rejection::ChallengeUsed);
        }
        if retry {
            return Ok(vec![]);
        }
        // The first release of the keys is the usage; a retry after a failed delivery
        // re-wraps them for the same consumer and is not counted again. A rental's every
        // play releases them anew: each play's first release is a usage (pay-per-view).
        let (released_media, rental_play) = match (self.is_rental(), self.play_released, &self.released_to) {
            (true, false, _) => (self.media_ids(), self.rental_plays.saturating_add(1)),
            (false, _, None) => (self.media_ids(), 0),
            _ => (Vec::new(), 0),
        };
        Ok(vec![Event::RedemptionAccepted {
            voucher_id: self.id_or_empty(),
            node_id: redeem.node.clone(),
            consumer_id: redeem.consumer.clone(),
            cert_serial: redeem.cert_serial.clone(),
            wrapped_key_hashes: Vec::new(),
            challenge_hash: Some(redeem.challenge_hash),
            consumer_key_hash: Some(redeem.consumer_key_hash),
            released_media,
            rental_play,
        }])
    }

    fn decide_recover(&self, redeem: &Redeem, recoveries_max: u32) -> Result<Vec<Event>, Rejection> {
        self.assigned_to(&redeem.node)?;
        if self.status != VoucherStatus::Delivered {
            return Err(Rejection::InvalidTransition { kind: "voucher", command: "Recover", state: self.status.name() });
        }
        // The consumer the keys went to (with this certificate or a renewed one).
        if self.released_to.as_ref().is_none_or(|(consumer, _)| *consumer != redeem.consumer) {
            return Err(Rejection::AlreadyRedeemed);
        }
        if self.recoveries >= recoveries_max {
            return Err(Rejection::RecoveriesExhausted { recoveries_max });
        }
        redeem.cert.require("certificate", &redeem.cert_serial)?;
        if redeem.proof != ProofCheck::Valid {
            return Err(Rejection::BadProof);
        }
        if self.used_challenges.contains(&redeem.challenge_hash) {
            return Err(Rejection::ChallengeUsed);
        }
        Ok(vec![Event::CopyRecovered {
            voucher_id: self.id_or_empty(),
            node_id: redeem.node.clone(),
            consumer_id: redeem.consumer.clone(),
            cert_serial: redeem.cert_serial.clone(),
            challenge_hash: redeem.challenge_hash,
            consumer_key_hash: redeem.consumer_key_hash,
            recovery: self.recoveries + 1,
        }])
    }

    fn decide_renew(
        &self,
        merchant: &MerchantId,
        node: &NodeId,
        access_ttl_ms: u64,
        old_node: NodeStanding,
        recoveries_max: u32,
        now: Millis,
    ) -> Result<Vec<Event>, Rejection> {
        self.owned_by(merchant)?;
        if self.status != VoucherStatus::Delivered {
            return Err(self.transition("IssueVoucher"));
        }
        if self.recoveries >= recoveries_max {
            return Err(Rejection::RecoveriesExhausted { recoveries_max });
        }
        validate::id("node_id", &node.0)?;
        let current = self.node.clone().ok_or_else(|| self.transition("IssueVoucher"))?;
        let serving = old_node == NodeStanding::Serving;
        if serving != (*node == current) {
            let reason = if serving { "must be the node the voucher was delivered by, which still serves it" } else { "is the node the voucher leaves" };
            return Err(Rejection::InvalidArgument { field: "node_id", reason: reason.into() });
        }
        if serving && now <= self.access_expires_at {
            // The window is still open: the access token the merchant asks for is the one it has.
            return Ok(vec![]);
        }
        if access_ttl_ms == 0 || access_ttl_ms > ACCESS_TTL_MS_MAX {
            return Err(Rejection::InvalidArgument { field: "access_ttl_ms", reason: format!("must be 1..={ACCESS_TTL_MS_MAX}") });
        }
        Ok(vec![Event::AccessRenewed {
            voucher_id: self.id_or_empty(),
            node_id: node.clone(),
            previous_node: (!serving).then_some(current),
            access_expires_at: now.plus_ms(access_ttl_ms),
        }])
    }

    fn decide_complete(&self, complete: &CompleteDelivery) -> Result<Vec<Event>, Rejection> {
        self.assigned_to(&complete.node)?;
        let known = self.items.iter().any(|item| item.media_id == complete.media_id);
        if !known {
            return Err(Rejection::InvalidArgument { field: "media_id", reason: "not part of this voucher".into() });
        }
        if self.delivered.contains(&complete.media_id) {
            // Redelivery of the completion (a node retry): already in effect.
            return Ok(vec![]);
        }
        if self.status != VoucherStatus::Redeeming {
            return Err(self.transition("CompleteDelivery"));
        }
        if complete.proof != ProofCheck::Valid {
            return Err(Rejection::BadProof);
        }
        let (_, cert_serial) = self.consumer.clone().ok_or(Rejection::InvalidTransition { kind: "voucher", command: "CompleteDelivery", state: "Issued" })?;
        let voucher_complete = self.delivered.len() + 1 == self.items.len();
        let mut events = vec![Event::Delivered {
            voucher_id: self.id_or_empty(),
            node_id: complete.node.clone(),
            media_id: complete.media_id.clone(),
            cert_serial,
            content_hash: complete.content_hash,
            size_bytes: complete.size_bytes,
            voucher_complete,
        }];
        // A rental's play is over (its slot comes back with the Delivered): the voucher
        // waits for its next play, issued anew.
        if self.is_rental() && voucher_complete {
            events.push(Event::RentalPlayEnded { voucher_id: self.id_or_empty(), node_id: complete.node.clone(), play: self.rental_plays });
        }
        Ok(events)
    }
}

/// The postings that undo `postings` (debits become credits and back).
pub fn reverse(postings: &[Posting]) -> Vec<Posting> {
    postings.iter().map(|p| Posting { kind: p.kind, account: p.account.clone(), debit_minor: p.credit_minor, credit_minor: p.debit_minor }).collect()
}

/// The seed's three sets of purchases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PurchaseSet {
    Pending,
    PurchasedNotDelivered,
    Delivered,
}

impl Aggregate for Voucher {
    type Command = VoucherCommand;
    const KIND: AggregateKind = AggregateKind::Voucher;

    fn decide(&self, command: &VoucherCommand, now: Millis) -> Result<Vec<Event>, Rejection> {
        match command {
            VoucherCommand::Reserve(reserve) => self.decide_reserve(reserve, now),
            VoucherCommand::Authorize(authorize) => self.decide_authorize(authorize, now),
            VoucherCommand::Void { merchant } => {
                self.owned_by(merchant)?;
                match self.status {
                    // Paid and unissued again after its keys went out (a delivery that lapsed):
                    // a void would keep the usage and give the money back.
                    VoucherStatus::Authorized if self.released_to.is_some() => Err(Rejection::KeysReleased),
                    VoucherStatus::Pending | VoucherStatus::Authorized => {
                        Ok(vec![Event::Voided { voucher_id: self.id_or_empty(), reason: VoidReason::Refunded, reversal: reverse(&self.postings) }])
                    }
                    _ => Err(self.transition("Void")),
                }
            }
            VoucherCommand::Refund { merchant, reason, chargeback } => {
                self.owned_by(merchant)?;
                validate::text("reason", reason, 256)?;
                match (self.status, &self.released_to) {
                    (VoucherStatus::Pending | VoucherStatus::Authorized | VoucherStatus::Issued, None) => {
                        Ok(vec![Event::Voided { voucher_id: self.id_or_empty(), reason: VoidReason::Refunded, reversal: reverse(&self.postings) }])
                    }
                    (VoucherStatus::Authorized | VoucherStatus::Issued | VoucherStatus::Redeeming | VoucherStatus::Delivered, Some(_)) => {
                        Ok(vec![Event::Refunded {
                            voucher_id: self.id_or_empty(),
                            reason: reason.clone(),
                            chargeback: *chargeback,
                            reversal: reverse(&self.postings),
                            media_ids: self.items.iter().map(|item| item.media_id.clone()).collect(),
                        }])
                    }
                    _ => Err(self.transition("Refund")),
                }
            }
            VoucherCommand::LapseAccess => {
                self.exists()?;
                let node = self.node.clone().ok_or_else(|| self.transition("LapseAccess"))?;
                match self.status {
                    // Issued (never redeemed, or back after a failed delivery), or a delivery
                    // that did not finish in the window (the node refuses its token since):
                    // the slot comes back; the voucher is paid and can be issued anew (for the
                    // consumer holding its keys, if they went out).
                    VoucherStatus::Issued | VoucherStatus::Redeeming if now > self.access_expires_at => {
                        Ok(vec![Event::AccessLapsed { voucher_id: self.id_or_empty(), node_id: node }])
                    }
                    VoucherStatus::Issued | VoucherStatus::Redeeming => Err(Rejection::NotExpired { expires_at: self.access_expires_at }),
                    _ => Err(self.transition("LapseAccess")),
                }
            }
            VoucherCommand::Expire => {
                self.exists()?;
                match self.status {
                    VoucherStatus::Pending if now > self.expires_at => {
                        Ok(vec![Event::Voided { voucher_id: self.id_or_empty(), reason: VoidReason::TimedOut, reversal: vec![] }])
                    }
                    VoucherStatus::Pending => Err(Rejection::NotExpired { expires_at: self.expires_at }),
                    _ => Err(self.transition("Expire")),
                }
            }
            VoucherCommand::Issue { merchant, node, lease, access_ttl_ms } => {
                self.owned_by(merchant)?;
                // Already issued to this node (or a delivery under way there), its window
                // open: the merchant asks again for the access token (after the engine moved
                // it, say); nothing to record.
                let issued = matches!(self.status, VoucherStatus::Issued | VoucherStatus::Redeeming);
                if issued && self.node.as_ref() == Some(node) && now <= self.access_expires_at {
                    return Ok(vec![]);
                }
                // Whatever state its last play left it in, a rental past its window plays no more.
                self.rental_open(now)?;
                self.rental_play_left()?;
                if self.status != VoucherStatus::Authorized {
                    return Err(self.transition("IssueVoucher"));
                }
                validate::id("node_id", &node.0)?;
                if *access_ttl_ms == 0 || *access_ttl_ms > ACCESS_TTL_MS_MAX {
                    return Err(Rejection::InvalidArgument { field: "access_ttl_ms", reason: format!("must be 1..={ACCESS_TTL_MS_MAX}") });
                }
                Ok(vec![Event::VoucherIssued {
                    voucher_id: self.id_or_empty(),
                    node_id: node.clone(),
                    merchant_id: merchant.clone(),
                    media_ids: self.media_ids(),
                    rendition: self.rendition.clone(),
                    access_expires_at: self.access_until(now, *access_ttl_ms),
                    previous_node: None,
                    lease: *lease,
                }])
            }
            VoucherCommand::Move { merchant, node, lease, access_ttl_ms, old_node, retries_max } => {
                if let Some(merchant) = merchant {
                    self.owned_by(merchant)?;
                }
                self.exists()?;
                let previous = self.node.clone().ok_or_else(|| self.transition("Move"))?;
                // An issued voucher whose keys never went out moves off a node gone. One whose
                // keys went out stays with the node that released them, unless its deliveries
                // failed past the retries: then it is issued anew (to the same consumer, with
                // fresh retries), even on the same node.
                // A node that finishes nothing (removed, silent) lets go of a voucher under
                // way too: its keys' consumer redeems again at the new node (not a new usage).
                // A rental's keys are out only while a play's release is under way.
                let exhausted = self.keys_out() && self.delivery_failures > *retries_max;
                let dead = *old_node == NodeStanding::Dead && matches!(self.status, VoucherStatus::Issued | VoucherStatus::Redeeming);
                if !dead && (self.status != VoucherStatus::Issued || (self.keys_out() && !exhausted)) {
                    return Err(self.transition("Move"));
                }
                self.rental_open(now)?;
                if *old_node == NodeStanding::Serving && !exhausted {
                    return Err(Rejection::NodeStillServes);
                }
                validate::id("node_id", &node.0)?;
                if *node == previous && !exhausted {
                    return Err(Rejection::InvalidArgument { field: "node_id", reason: "is the node the voucher leaves".into() });
                }
                if *access_ttl_ms == 0 || *access_ttl_ms > ACCESS_TTL_MS_MAX {
                    return Err(Rejection::InvalidArgument { field: "access_ttl_ms", reason: format!("must be 1..={ACCESS_TTL_MS_MAX}") });
                }
                Ok(vec![Event::VoucherIssued {
                    voucher_id: self.id_or_empty(),
                    node_id: node.clone(),
                    merchant_id: self.merchant.clone().unwrap_or_else(|| MerchantId::new("")),
                    media_ids: self.media_ids(),
                    rendition: self.rendition.clone(),
                    access_expires_at: self.access_until(now, *access_ttl_ms),
                    previous_node: Some(previous),
                    lease: *lease,
                }])
            }
            VoucherCommand::RenewAccess { merchant, node, access_ttl_ms, old_node, recoveries_max } => {
                self.decide_renew(merchant, node, *access_ttl_ms, *old_node, *recoveries_max, now)
            }
            VoucherCommand::Redeem(redeem) => self.decide_redeem(redeem, now),
            VoucherCommand::Recover { redeem, recoveries_max } => self.decide_recover(redeem, *recoveries_max),
            VoucherCommand::FailDelivery { node, reason, proof } => {
                self.assigned_to(node)?;
                validate::text("reason", reason, 512)?;
                match self.status {
                    // Only the buyer reports a failure: a node or a link that saw the grant
                    // cannot spend the consumer's retries.
                    VoucherStatus::Redeeming | VoucherStatus::Issued if *proof != ProofCheck::Valid => Err(Rejection::BadProof),
                    VoucherStatus::Redeeming | VoucherStatus::Issued => {
                        Ok(vec![Event::DeliveryFailed { voucher_id: self.id_or_empty(), node_id: node.clone(), reason: reason.clone() }])
                    }
                    _ => Err(self.transition("FailDelivery")),
                }
            }
            VoucherCommand::CompleteDelivery(complete) => self.decide_complete(complete),
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::Reserved {
                voucher_id,
                merchant_id,
                items,
                rendition,
                price_minor,
                currency,
                expires_at,
                payment,
                token_key_id,
                auth_generation,
                rental_ms,
            } => {
                self.rental_ms = *rental_ms;
                self.status = VoucherStatus::Pending;
                self.id = Some(voucher_id.clone());
                self.merchant = Some(merchant_id.clone());
                self.items = items.clone();
                self.rendition = rendition.clone();
                self.price_minor = *price_minor;
                self.currency = currency.clone();
                self.expires_at = *expires_at;
                self.payment = Some(payment.clone());
                self.token_key_id = *token_key_id;
                self.auth_generation = *auth_generation;
            }
            Event::Authorized { receipt_key_id, receipt_generation, postings, rental_until, .. } => {
                self.status = VoucherStatus::Authorized;
                self.rental_until = *rental_until;
                self.postings = postings.clone();
                self.receipt_key_id = *receipt_key_id;
                self.receipt_generation = *receipt_generation;
            }
            Event::Voided { reason, .. } => {
                self.status = VoucherStatus::Voided;
                self.void_reason = Some(*reason);
            }
            Event::CopyRecovered { challenge_hash, recovery, .. } => {
                self.recoveries = *recovery;
                self.used_challenges.push(*challenge_hash);
            }
            Event::Refunded { .. } => {
                self.status = VoucherStatus::Refunded;
                self.consumer = None;
            }
            Event::VoucherIssued { node_id, access_expires_at, previous_node, .. } => {
                self.moved_from.extend(previous_node.iter().filter(|previous| *previous != node_id).cloned());
                if previous_node.is_some() {
                    // Issued anew: fresh retries.
                    self.delivery_failures = 0;
                }
                self.status = VoucherStatus::Issued;
                self.node = Some(node_id.clone());
                self.access_expires_at = *access_expires_at;
                self.consumer = None;
                if self.is_rental() {
                    // A rental's new play: nothing of it released nor delivered yet, fresh retries.
                    self.play_released = false;
                    self.delivered.clear();
                    self.delivery_failures = 0;
                }
            }
            Event::AccessRenewed { node_id, previous_node, access_expires_at, .. } => {
                self.moved_from.extend(previous_node.iter().filter(|previous| *previous != node_id).cloned());
                self.node = Some(node_id.clone());
                self.access_expires_at = *access_expires_at;
            }
            Event::RedemptionAccepted { consumer_id, cert_serial, challenge_hash, rental_play, .. } => {
                if *rental_play > 0 {
                    self.rental_plays = *rental_play;
                    self.play_released = true;
                }
                self.status = VoucherStatus::Redeeming;
                self.consumer = Some((consumer_id.clone(), cert_serial.clone()));
                self.released_to.get_or_insert_with(|| (consumer_id.clone(), cert_serial.clone()));
                self.used_challenges.extend(challenge_hash);
            }
            Event::AccessLapsed { .. } => {
                // Paid and unissued again: the merchant may issue it anew.
                self.status = VoucherStatus::Authorized;
                self.node = None;
                self.consumer = None;
                self.play_released = false;
            }
            Event::RentalPlayEnded { .. } => {
                // Paid and unissued again: the next play is issued anew, on any node.
                self.status = VoucherStatus::Authorized;
                self.node = None;
                self.consumer = None;
                self.play_released = false;
            }
            Event::DeliveryFailed { .. } => {
                self.status = VoucherStatus::Issued;
                self.consumer = None;
                self.delivery_failures += 1;
            }
            Event::Delivered { media_id, voucher_complete, .. } => {
                self.delivered.insert(media_id.clone());
                if *voucher_complete {
                    self.status = VoucherStatus::Delivered;
                }
            }
            _ => {}
        }
        self
    }

    fn command_name(command: &VoucherCommand) -> &'static str {
        match command {
            VoucherCommand::Reserve(_) => "Reserve",
            VoucherCommand::Authorize(_) => "Authorize",
            VoucherCommand::Void { .. } => "Void",
            VoucherCommand::Refund { chargeback: false, .. } => "Refund",
            VoucherCommand::Refund { chargeback: true, .. } => "Chargeback",
            VoucherCommand::Expire => "Expire",
            VoucherCommand::LapseAccess => "LapseAccess",
            VoucherCommand::Issue { .. } => "IssueVoucher",
            // A merchant's move is its IssueVoucher: a retry with the same request id, routed
            // to Issue once the voucher sits on a serving node, is the same command.
            VoucherCommand::Move { merchant: Some(_), .. } => "IssueVoucher",
            VoucherCommand::Move { merchant: None, .. } => "MoveVoucher",
            // Asked for with IssueVoucher, like a reissue.
            VoucherCommand::RenewAccess { .. } => "IssueVoucher",
            VoucherCommand::Redeem(_) => "Redeem",
            VoucherCommand::Recover { .. } => "Recover",
            VoucherCommand::FailDelivery { .. } => "FailDelivery",
            VoucherCommand::CompleteDelivery(_) => "CompleteDelivery",
        }
    }
}
