//! The read indexes event by event: the catalog's search, the parties' statuses, a
//! cursor that cannot leave its merchant's range, and the period check.

use super::*;
use engine::domain::event::{MediaPublished, Payment, PreviewClip, Rendition, ReservedItem, RoyaltyTerms};
use engine::ids::{AuditorId, NodeId};

fn published(id: &str, title: &str, artist: &str, for_sale: bool) -> Event {
    Event::MediaPublished(MediaPublished {
        media_id: MediaId::new(id),
        publisher: "op".into(),
        title: title.into(),
        artist: artist.into(),
        authors: vec![],
        length_ms: 1000,
        price_minor: 99,
        currency: "EUR".into(),
        terms: RoyaltyTerms::default(),
        renditions: vec![Rendition { name: "high".into(), ..Rendition::default() }],
        preview: PreviewClip { start_ms: 0, duration_ms: 300 },
        image_descriptor: String::new(),
        for_sale,
        engine_key_id: String::new(),
        wrapped_media_key: vec![],
        container_format: 3,
    })
}

fn reserved(voucher: &str, merchant: &str) -> Event {
    Event::Reserved {
        voucher_id: VoucherId::new(voucher),
        merchant_id: MerchantId::new(merchant),
        items: vec![ReservedItem { media_id: MediaId::new("md"), price_minor: 1 }],
        rendition: "high".into(),
        price_minor: 1,
        currency: "EUR".into(),
        expires_at: Millis(9),
        payment: Payment::Merchant { payment_ref: "p".into() },
        token_key_id: 1,
        auth_generation: 1,
        rental_ms: 0,
    }
}

fn applied(events: &[Event]) -> (Reads, VoucherBook) {
    let (mut reads, mut book) = (Reads::default(), VoucherBook::default());
    for (index, event) in events.iter().enumerate() {
        book.apply(event);
        reads.apply(Seq(index as u64 + 1), event, 0, None);
    }
    (reads, book)
}

#[test]
fn search_finds_by_title_or_artist_and_only_what_is_on_sale() {
    let (mut reads, _) = applied(&[
        published("md1", "Blue Monday", "New Order", true),
        published("md2", "Ceremony", "New Order", true),
        published("md3", "Monday Morning", "Someone", false),
        published("md4", "Monday Again", "Other", true),
    ]);
    let ids = |page: Page<(MediaId, Listing)>| page.items.into_iter().map(|(id, _)| id.0).collect::<Vec<_>>();
    assert_eq!(ids(reads.catalog_page(Some("monday"), None, 10)), ["md1", "md4"], "by title, ignoring case; not the one not for sale");
    assert_eq!(ids(reads.catalog_page(Some("NEW ORDER"), None, 10)), ["md1", "md2"], "by artist");
    let first = reads.catalog_page(None, None, 2);
    assert_eq!(ids(first.clone()), ["md1", "md2"]);
    let after = MediaId(String::from_utf8(first.next.expect("more")).expect("utf-8"));
    assert_eq!(ids(reads.catalog_page(None, Some(&after), 2)), ["md4"], "the cursor goes on where the page stopped");
    reads.apply(Seq(5), &Event::MediaWithdrawn { media_id: MediaId::new("md4"), reason: "takedown".into() }, 0, None);
    reads.apply(Seq(6), &Event::PriceChanged { media_id: MediaId::new("md1"), price_minor: 150 }, 0, None);
    let page = reads.catalog_page(Some("monday"), None, 10);
    assert_eq!(page.items.iter().map(|(id, listing)| (id.0.as_str(), listing.price_minor)).collect::<Vec<_>>(), [("md1", 150)], "withdrawn media is hidden");
    assert_eq!((page.items[0].1.renditions.clone(), page.items[0].1.preview_ms), (vec!["high".to_string()], 300));
}

#[test]
fn parties_carry_their_status() {
    let (mut reads, _) = applied(&[
        Event::MerchantRegistered { merchant_id: MerchantId::new("m1"), name: "Shop".into(), credential_hash: [1; 32] },
        Event::NodeRegistered { node_id: NodeId::new("n1"), region: "eu".into(), slots_max: 4, credential_hash: [2; 32] },
        Event::AuditorRegistered { auditor_id: AuditorId::new("a1"), name: "Agent".into(), credential_hash: [3; 32] },
        Event::ConsumerCertified {
            consumer_id: ConsumerId::new("alice"),
            cert_serial: CertSerial::new("c1"),
            public_key_der: vec![],
            not_before: Millis(0),
            not_after: Millis(100),
            engine_key_id: String::new(),
            signature: vec![],
        },
    ]);
    let standing = |reads: &Reads, id: &str| reads.credential(id).map(|row| (row.kind, row.credential_hash[0], row.status.clone()));
    assert_eq!(standing(&reads, "m1"), Some((PartyKind::Merchant, 1, "active".to_string())));
    assert_eq!(standing(&reads, "alice"), None, "a certificate is no credential");
    assert_eq!(standing(&reads, "m2"), None, "an unknown id is not in the table");
    for event in [
        Event::MerchantSuspended { merchant_id: MerchantId::new("m1"), reason: "r".into() },
        Event::NodeDrained { node_id: NodeId::new("n1") },
        Event::AuditorRevoked { auditor_id: AuditorId::new("a1"), reason: "r".into() },
    ] {
        reads.apply(Seq(9), &event, 0, None);
    }
    let page = reads.parties_page(None, None, 10);
    let seen: Vec<(PartyKind, &str, &str, &str)> =
        page.items.iter().map(|p| (p.kind, p.id.as_str(), p.consumer_id.as_str(), p.status_at(Millis(50)))).collect();
    assert_eq!(
        seen,
        [
            (PartyKind::Auditor, "a1", "", "revoked"),
            (PartyKind::Certificate, "c1", "alice", "active"),
            (PartyKind::Merchant, "m1", "", "suspended"),
            (PartyKind::Node, "n1", "", "drained"),
        ]
    );
    assert_eq!(page.items[1].status_at(Millis(101)), "expired", "past its validity");
    assert_eq!(standing(&reads, "m1"), Some((PartyKind::Merchant, 1, "suspended".to_string())));
    assert_eq!(standing(&reads, "n1"), Some((PartyKind::Node, 2, "drained".to_string())));
    assert_eq!(standing(&reads, "a1"), Some((PartyKind::Auditor, 3, "revoked".to_string())));
    assert_eq!(reads.credentials_len(), 3);
    assert!(reads.has_certificate(&ConsumerId::new("alice"), &CertSerial::new("c1")));
    let nodes = reads.parties_page(Some(PartyKind::Node), None, 10);
    assert_eq!(nodes.items.iter().map(|p| (p.id.as_str(), p.row.region.as_str(), p.row.slots_max)).collect::<Vec<_>>(), [("n1", "eu", 4)]);
    // One at a time, cursor after cursor, the same parties.
    let (mut after, mut one_by_one) = (None, Vec::new());
    loop {
        let page = reads.parties_page(None, after.as_deref(), 1);
        one_by_one.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(one_by_one, reads.parties_page(None, None, 10).items);
}

#[test]
fn a_cursor_reads_its_own_merchants_range_only() {
    let (reads, book) = applied(&[reserved("v1", "m1"), reserved("v2", "m2"), reserved("v3", "m1"), reserved("v4", "m2")]);
    let ids = |page: &Page<VoucherItem>| page.items.iter().map(|item| item.voucher_id.0.clone()).collect::<Vec<_>>();
    let m1 = MerchantId::new("m1");
    let first = reads.vouchers_of(&book, &m1, VoucherFilter::default(), None, 1);
    assert_eq!(ids(&first), ["v3"], "newest first");
    let second = reads.vouchers_of(&book, &m1, VoucherFilter::default(), first.next.as_deref(), 1);
    assert_eq!((ids(&second), second.next), (vec!["v1".to_string()], None));
    // m2's own cursor, and a cursor from before everything, handed to m1: still m1's only.
    let m2_page = reads.vouchers_of(&book, &MerchantId::new("m2"), VoucherFilter::default(), None, 1);
    let foreign = reads.vouchers_of(&book, &m1, VoucherFilter::default(), m2_page.next.as_deref(), 10);
    assert!(ids(&foreign).iter().all(|id| id == "v1" || id == "v3"), "{:?}", ids(&foreign));
    assert!(reads.vouchers_of(&book, &m1, VoucherFilter::default(), Some(&[0xff; 12]), 10).items.is_empty(), "past the end: nothing");
    // Control: m2 sees its own.
    assert_eq!(ids(&reads.vouchers_of(&book, &MerchantId::new("m2"), VoucherFilter::default(), None, 10)), ["v4", "v2"]);
    let pending = VoucherFilter { set: Some(PurchaseSet::Pending), status: None };
    assert_eq!(reads.vouchers_of(&book, &m1, pending, None, 10).items.len(), 2);
    let delivered = VoucherFilter { set: Some(PurchaseSet::Delivered), status: None };
    assert!(reads.vouchers_of(&book, &m1, delivered, None, 10).items.is_empty());
}

#[test]
fn periods_are_calendar_months() {
    for good in ["2026-01", "1999-12", "0001-09"] {
        assert!(is_period(good), "{good}");
    }
    for bad in ["2026-13", "2026-00", "2026-1", "26-01", "2026/01", "２０２６-01", "2026-01-01", ""] {
        assert!(!is_period(bad), "{bad}");
    }
}

fn placed(order: &str, merchant: &str, units: u32) -> Event {
    Event::OrderPlaced {
        order_id: OrderId::new(order),
        merchant_id: MerchantId::new(merchant),
        media_id: MediaId::new("md"),
        units,
        price_per_unit_minor: 40,
        settles_by: Some(("EUR".into(), RoyaltyTerms::default())),
    }
}

#[test]
fn orders_are_each_merchants_own_newest_first_with_their_units() {
    let bound = |order: &str, unit: u32| Event::UnitBound {
        order_id: OrderId::new(order),
        unit,
        device_id: "press-1".into(),
        device_public_key_hash: [1; 32],
        wrapped_key_hash: None,
        charge: None,
    };
    let (reads, _) = applied(&[
        placed("o1", "shop", 2),
        placed("o2", "other", 5),
        placed("o3", "shop", 3),
        bound("o1", 0),
        bound("o1", 1),
        Event::UnitCompleted { order_id: OrderId::new("o1"), unit: 0 },
    ]);
    let shop = MerchantId::new("shop");
    let first = reads.orders_of(&shop, None, 1);
    assert_eq!(first.items.iter().map(|(id, _)| id.0.as_str()).collect::<Vec<_>>(), ["o3"], "newest first");
    let next = OrderId(String::from_utf8(first.next.clone().expect("more follow")).expect("utf-8"));
    let second = reads.orders_of(&shop, Some(&next), 10);
    let (id, row) = &second.items[0];
    assert_eq!((id.0.as_str(), row.units, row.units_bound, row.units_completed, row.currency.as_str()), ("o1", 2, 2, 1, "EUR"));
    assert_eq!((second.items.len(), second.next.clone()), (1, None), "the end");
    // Another merchant's order as a cursor reads nothing of it or of the shop's.
    assert!(reads.orders_of(&MerchantId::new("other"), Some(&next), 10).items.is_empty());
    assert_eq!(reads.orders_of(&MerchantId::new("other"), None, 10).items.len(), 1);
    assert!(reads.orders_of(&MerchantId::new("nobody"), None, 10).items.is_empty());
}

/// `admin stats` counts certificates issued, revoked and expired (issue 28): a revoked
/// certificate is not also expired; a second revocation counts nothing (the stored rows
/// give the counts back: `store::tests::certificate_counts_come_back_from_the_stored_rows`).
#[test]
fn certificates_are_counted_issued_revoked_and_expired_at_any_time() {
    let certified = |consumer: &str, serial: &str, not_after: i64| Event::ConsumerCertified {
        consumer_id: ConsumerId::new(consumer),
        cert_serial: CertSerial::new(serial),
        public_key_der: vec![],
        not_before: Millis(0),
        not_after: Millis(not_after),
        engine_key_id: String::new(),
        signature: vec![],
    };
    let revoked = |consumer: &str, serial: &str| Event::CertRevoked {
        consumer_id: ConsumerId::new(consumer),
        cert_serial: CertSerial::new(serial),
        reason: "lost".into(),
    };
    let (reads, _) =
        applied(&[certified("alice", "c1", 100), certified("bob", "c2", 200), certified("carol", "c3", 300), revoked("bob", "c2"), revoked("bob", "c2")]);
    let counts = &reads.certificates;
    assert_eq!((counts.issued, counts.revoked), (3, 1));
    assert_eq!([50, 101, 250, 301].map(|now| counts.expired_at(now)), [0, 1, 1, 2], "c2 is revoked, never counted as expired");
}
