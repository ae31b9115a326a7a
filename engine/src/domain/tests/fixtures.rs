//! Small builders shared by the rule tests: one voucher `v1` of merchant `shop1`, reserved at
//! `T0` for `TTL`, issued to `node1`, redeemed by consumer `c1` with certificate `s1`.

use crate::domain::catalog::Media;
use crate::domain::catalog::tests::sample;
use crate::domain::event::{Event, LedgerAccountKind, MediaPublished, Payment, Posting, ReservedItem};
use crate::domain::voucher::{CertCheck, CompleteDelivery, ProofCheck, Redeem, RentalTerms, Reserve, VoucherCommand};
use crate::domain::{Aggregate, Rejection, fold};
use crate::ids::{AccountId, CertSerial, ConsumerId, MediaId, MerchantId, Millis, NodeId, VoucherId};

pub const T0: Millis = Millis(1_700_000_000_000);
pub const TTL: u64 = 60_000;
pub const EXPIRES: Millis = Millis(T0.0 + TTL as i64);
/// When the fixtures issue a voucher, and for how long its access token lasts.
pub const ISSUED_AT: Millis = Millis(T0.0 + 5_000);
pub const ACCESS_TTL: u64 = 3_600_000;
/// One song at 100 minor units; terms of `sample` split it 30 / 20 / 50.
pub const SONG: (&str, u64) = ("song1", 100);
pub const ALBUM: [(&str, u64); 3] = [("t1", 100), ("t2", 100), ("t3", 100)];
/// The rental bounds in force in the fixtures: windows of 1 to 48 hours at a quarter of the price.
pub const RENTAL_TERMS: RentalTerms = RentalTerms { window_ms_min: 3_600_000, window_ms_max: 48 * 3_600_000, price_bps: 2_500 };

pub fn merchant() -> MerchantId {
    MerchantId::new("shop1")
}
pub fn other_merchant() -> MerchantId {
    MerchantId::new("shop2")
}
pub fn node() -> NodeId {
    NodeId::new("node1")
}
pub fn other_node() -> NodeId {
    NodeId::new("node2")
}
pub fn voucher_id() -> VoucherId {
    VoucherId::new("v1")
}
pub fn consumer() -> ConsumerId {
    ConsumerId::new("c1")
}
pub fn cert() -> CertSerial {
    CertSerial::new("s1")
}
pub fn account_id() -> AccountId {
    AccountId::new("a1")
}
pub fn mid(id: &str) -> MediaId {
    MediaId::new(id)
}

/// The catalog state of a published media.
pub fn media(id: &str, price_minor: u64) -> Media {
    media_from(sample(id, price_minor))
}
pub fn media_from(published: MediaPublished) -> Media {
    fold(&[Event::MediaPublished(published)])
}

pub fn card() -> Payment {
    Payment::Merchant { payment_ref: "card-1".into() }
}
pub fn points() -> Payment {
    Payment::Points { account: account_id() }
}

pub fn reserve_cmd(items: &[(&str, u64)], payment: Payment) -> Reserve {
    Reserve {
        voucher_id: voucher_id(),
        merchant: merchant(),
        items: items.iter().map(|&(id, price)| (mid(id), media(id, price))).collect(),
        rendition: "high".into(),
        ttl_ms: TTL,
        payment,
        token_key_id: 7,
        rental_ms: 0,
        rental: RENTAL_TERMS,
    }
}

/// The Reserved event `reserve_cmd(items, payment)` produces at `T0`.
pub fn reserved(items: &[(&str, u64)], payment: Payment) -> Event {
    Event::Reserved {
        voucher_id: voucher_id(),
        merchant_id: merchant(),
        items: items.iter().map(|&(id, price_minor)| ReservedItem { media_id: mid(id), price_minor }).collect(),
        rendition: "high".into(),
        price_minor: items.iter().map(|&(_, price)| price).sum(),
        currency: "EUR".into(),
        expires_at: EXPIRES,
        payment,
        token_key_id: 7,
        auth_generation: 1,
        rental_ms: 0,
    }
}

pub fn authorize_by(merchant: MerchantId, items: &[(&str, u64)]) -> VoucherCommand {
    VoucherCommand::Authorize(crate::domain::voucher::Authorize {
        merchant,
        receipt_key_id: 3,
        media: items.iter().map(|&(id, price)| media(id, price)).collect(),
    })
}
pub fn authorize(items: &[(&str, u64)]) -> VoucherCommand {
    authorize_by(merchant(), items)
}

pub fn posting(kind: LedgerAccountKind, account: &str, debit_minor: u64, credit_minor: u64) -> Posting {
    Posting { kind, account: account.into(), debit_minor, credit_minor }
}

/// The settlement of `SONG` paid by the merchant, worked out by hand (30 / 20 / 50 %).
pub fn song_postings() -> Vec<Posting> {
    use LedgerAccountKind::*;
    vec![posting(MerchantClearing, "shop1", 100, 0), posting(Retailer, "shop1", 0, 30), posting(Distributor, "dist1", 0, 20), posting(Owner, "label1", 0, 50)]
}

/// `song_postings` undone, as a refund records it.
pub fn reverse_song() -> Vec<Posting> {
    crate::domain::voucher::reverse(&song_postings())
}

/// The settlement of `ALBUM` paid by the merchant, worked out by hand.
pub fn album_postings() -> Vec<Posting> {
    use LedgerAccountKind::*;
    let mut postings = vec![posting(MerchantClearing, "shop1", 300, 0)];
    for _ in 0..3 {
        postings.push(posting(Retailer, "shop1", 0, 30));
        postings.push(posting(Distributor, "dist1", 0, 20));
        postings.push(posting(Owner, "label1", 0, 50));
    }
    postings
}

pub fn authorized(postings: Vec<Posting>) -> Event {
    Event::Authorized { voucher_id: voucher_id(), receipt_key_id: 3, receipt_generation: 1, postings, rental_until: Millis(0) }
}

pub fn issue_by(merchant: MerchantId, node: NodeId, access_ttl_ms: u64) -> VoucherCommand {
    VoucherCommand::Issue { merchant, node, access_ttl_ms, lease: 0 }
}

pub fn issued(items: &[(&str, u64)]) -> Event {
    Event::VoucherIssued {
        voucher_id: voucher_id(),
        node_id: node(),
        merchant_id: merchant(),
        media_ids: items.iter().map(|&(id, _)| mid(id)).collect(),
        rendition: "high".into(),
        access_expires_at: ISSUED_AT.plus_ms(ACCESS_TTL),
        previous_node: None,
        lease: 0,
    }
}

pub fn redeem_as(node: NodeId, consumer: ConsumerId, cert: CertSerial, check: CertCheck, proof: ProofCheck) -> VoucherCommand {
    redeem_answering(node, consumer, cert, check, proof, CHALLENGE)
}
/// The challenge fixture redemptions answer.
pub const CHALLENGE: [u8; 32] = [9; 32];
pub fn redeem_answering(node: NodeId, consumer: ConsumerId, cert: CertSerial, check: CertCheck, proof: ProofCheck, challenge_hash: [u8; 32]) -> VoucherCommand {
    VoucherCommand::Redeem(Redeem {
        node,
        consumer,
        cert_serial: cert,
        cert: check,
        proof,
        challenge_hash,
        consumer_key_hash: [8; 32],
        retries_max: RETRIES_MAX,
    })
}
/// `delivery.retries_max` in the fixtures.
pub const RETRIES_MAX: u32 = 2;
/// A redemption by `c1` on `node1` with a valid certificate and proof.
pub fn redeem() -> VoucherCommand {
    redeem_as(node(), consumer(), cert(), CertCheck::Valid, ProofCheck::Valid)
}

pub fn redemption_by(consumer: ConsumerId, cert: CertSerial) -> Event {
    redemption_answering(consumer, cert, CHALLENGE)
}
/// The first redemption of the song voucher: it releases the song's key.
pub fn redemption_answering(consumer: ConsumerId, cert: CertSerial, challenge_hash: [u8; 32]) -> Event {
    redemption_releasing(consumer, cert, challenge_hash, &[SONG.0])
}
/// A redemption releasing the keys of `media` for the first time (none on a retry).
pub fn redemption_releasing(consumer: ConsumerId, cert: CertSerial, challenge_hash: [u8; 32], media: &[&str]) -> Event {
    Event::RedemptionAccepted {
        voucher_id: voucher_id(),
        node_id: node(),
        consumer_id: consumer,
        cert_serial: cert,
        wrapped_key_hashes: Vec::new(),
        challenge_hash: Some(challenge_hash),
        consumer_key_hash: Some([8; 32]),
        released_media: media.iter().map(|m| mid(m)).collect(),
        rental_play: 0,
    }
}
pub fn redemption() -> Event {
    redemption_by(consumer(), cert())
}

pub fn complete_on(node: NodeId, media_id: &str) -> VoucherCommand {
    VoucherCommand::CompleteDelivery(CompleteDelivery { node, media_id: mid(media_id), content_hash: [7; 32], size_bytes: 1000, proof: ProofCheck::Valid })
}
pub fn complete(media_id: &str) -> VoucherCommand {
    complete_on(node(), media_id)
}

pub fn delivered_to(cert: CertSerial, media_id: &str, voucher_complete: bool) -> Event {
    Event::Delivered {
        voucher_id: voucher_id(),
        node_id: node(),
        media_id: mid(media_id),
        cert_serial: cert,
        content_hash: [7; 32],
        size_bytes: 1000,
        voucher_complete,
    }
}
pub fn delivered(media_id: &str, voucher_complete: bool) -> Event {
    delivered_to(cert(), media_id, voucher_complete)
}

pub fn delivery_failed() -> Event {
    Event::DeliveryFailed { voucher_id: voucher_id(), node_id: node(), reason: "disk full".into() }
}

pub fn voided(reason: crate::domain::event::VoidReason, reversal: Vec<Posting>) -> Event {
    Event::Voided { voucher_id: voucher_id(), reason, reversal }
}

// ---- the single song's history, one step at a time ----

pub fn song_pending() -> Vec<Event> {
    vec![reserved(&[SONG], card())]
}
pub fn song_authorized() -> Vec<Event> {
    let mut events = song_pending();
    events.push(authorized(song_postings()));
    events
}
pub fn song_issued() -> Vec<Event> {
    let mut events = song_authorized();
    events.push(issued(&[SONG]));
    events
}
pub fn song_redeeming() -> Vec<Event> {
    let mut events = song_issued();
    events.push(redemption());
    events
}
pub fn song_delivered() -> Vec<Event> {
    let mut events = song_redeeming();
    events.push(delivered("song1", true));
    events
}
pub fn song_voided() -> Vec<Event> {
    let mut events = song_pending();
    events.push(voided(crate::domain::event::VoidReason::Refunded, vec![]));
    events
}

pub fn album_issued() -> Vec<Event> {
    vec![reserved(&ALBUM, card()), authorized(album_postings()), issued(&ALBUM)]
}
pub fn album_redeeming() -> Vec<Event> {
    let mut events = album_issued();
    events.push(redemption_releasing(consumer(), cert(), CHALLENGE, &[ALBUM[0].0, ALBUM[1].0, ALBUM[2].0]));
    events
}

/// Like `testing::check` for refusals whose reason is prose: only the refused field is
/// compared, so rewording a message does not break the rule's test.
#[track_caller]
pub fn check_invalid<A: Aggregate>(given: &[Event], when: A::Command, now: Millis, field: &str) {
    let decided = fold::<A>(given).decide(&when, now);
    assert!(
        matches!(&decided, Err(Rejection::InvalidArgument { field: f, .. }) if *f == field),
        "expected InvalidArgument {{ field: {field:?} }}, got {decided:?}\ngiven {given:#?}\nwhen {when:#?}"
    );
}
