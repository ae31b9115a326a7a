//! Refusals are values. Every way a command can be refused is one variant here; the
//! gateway maps each to a gRPC status in one exhaustive match, so a new variant forces a
//! choice of code. Messages never contain tokens, keys, receipts or MACs.

use crate::ids::Millis;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The request decodes but breaks a rule (missing field, bad id, absurd value).
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("unknown {kind} {id:?}")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("the voucher is not assigned to this delivery node")]
    NotYourAssignment,
    #[error("the voucher moved to another delivery node (this one no longer served it): ask the merchant for its new access token")]
    VoucherMoved,
    #[error("the reservation expired at {}; reserve again", expires_at.0)]
    Expired { expires_at: Millis },
    /// A rental's window is over: no play is issued or redeemed after `ended_at`.
    #[error("the rental ended at {}; rent it again for another window", ended_at.0)]
    RentalEnded { ended_at: Millis },
    #[error("this rental was played {plays_max} times already, the most one rental gives; rent it again")]
    RentalPlaysExhausted { plays_max: u32 },
    #[error("the reservation has not expired yet (expires at {})", expires_at.0)]
    NotExpired { expires_at: Millis },
    #[error("the voucher was voided")]
    Voided,
    #[error("the voucher was already delivered")]
    AlreadyDelivered,
    #[error("the voucher is being redeemed by another consumer")]
    AlreadyRedeemed,
    #[error("{command} is not allowed while the {kind} is {state}")]
    InvalidTransition { kind: &'static str, command: &'static str, state: &'static str },
    #[error("the receipt proof does not verify")]
    BadProof,
    #[error("this challenge was already answered; ask the node for a new challenge")]
    ChallengeUsed,
    #[error("the delivery failed more than {retries_max} times; ask the merchant for a refund or a reissue")]
    DeliveryRetriesExhausted { retries_max: u32 },
    #[error("this purchase was recovered {recoveries_max} times already (delivery.recoveries_max)")]
    RecoveriesExhausted { recoveries_max: u32 },
    #[error("the consumer certificate is revoked")]
    CertRevoked,
    #[error("the consumer certificate is not valid at this time")]
    CertNotValid,
    /// Never states a balance: the refusal reaches the merchant, not the account's owner.
    #[error("the points account cannot cover this purchase")]
    InsufficientPoints,
    #[error("{reason}")]
    SpendNotAuthorized { reason: &'static str },
    /// A request signed with a consumer's passport that does not verify (or is stale).
    #[error("{reason}")]
    UnverifiedRequest { reason: &'static str },
    #[error("no points are held for this voucher")]
    NoSuchHold,
    #[error("the media {0:?} is not for sale")]
    NotForSale(String),
    #[error("the merchant is suspended")]
    MerchantSuspended,
    /// A publisher's container signed by a key the operator did not register for it.
    #[error(
        "the container is signed by key {key_id}, which is not a registered key of this publisher; sign with a registered key or ask the operator to register this one"
    )]
    UnregisteredPublisherKey { key_id: String },
    #[error("the delivery node is drained or removed")]
    NodeUnavailable,
    #[error("no healthy delivery node has a free slot; retry later")]
    NoNodeAvailable,
    #[error("the slot lease belongs to another engine now (it let the lease run out); lease anew")]
    SlotLeaseLost,
    #[error("the voucher's delivery node still serves it: a reissue moves a voucher only off a drained, removed or silent node (or once its access lapsed)")]
    NodeStillServes,
    #[error("the voucher's media keys were released: give the money back with a refund, which also adjusts the royalties")]
    KeysReleased,
    #[error("this merchant's previews already hold their share of every node with a free slot; retry when one ends")]
    PreviewQuotaReached,
    #[error("the request id was already used for a different command ({first}); use a new request id")]
    RequestIdReused { first: String },
    #[error("the engine signs with key {current} now, not the one this rotation replaces; rotate from the current key")]
    KeyRotationStale { current: String },
    #[error("the key is in its grace period after its rotation; it can be revoked from {}", until.0)]
    KeyInGrace { until: Millis },
    #[error("a balance or count would overflow")]
    Overflow,
}
