//! The read indexes (`projections::reads`) against what they must agree with, over
//! generated streams that exercise every projection: each merchant's voucher pages,
//! followed cursor by cursor, give exactly its vouchers (a scan of the voucher book),
//! newest first, each in the set its status belongs to; statements summed over merchants
//! equal the ledger per currency and account kind, and per merchant the royalty totals;
//! and a store reopened mid-stream answers as the projections in memory do.

mod support;

use engine::domain::event::LedgerAccountKind;
use engine::domain::voucher::{PurchaseSet, VoucherStatus};
use engine::ids::{MerchantId, VoucherId};
use projections::Projections;
use projections::reads::{Page, VoucherFilter, VoucherItem, set_of};
use projections::royalty_log::Dimension;
use projections::store::ProjectionStore;
use std::collections::{BTreeMap, BTreeSet};
use support::{engine_public, generate, keyed, master, rebuild};

/// Every page of `merchant`'s list under `filter`, cursor after cursor.
fn every_page(projections: &Projections, merchant: &MerchantId, filter: VoucherFilter, limit: usize) -> Vec<Page<VoucherItem>> {
    let mut pages = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = projections.reads.vouchers_of(&projections.vouchers, merchant, filter, after.as_deref(), limit);
        assert!(page.items.len() <= limit, "a page holds at most its limit");
        let next = page.next.clone();
        pages.push(page);
        match next {
            Some(next) => after = Some(next),
            None => return pages,
        }
    }
}

fn merchants(projections: &Projections) -> BTreeSet<MerchantId> {
    projections.vouchers.vouchers.iter().map(|(_, row)| row.merchant).collect()
}

#[test]
fn voucher_pages_are_each_merchants_vouchers_newest_first() {
    let projections = rebuild(&generate(11, 3_000, 40), keyed());
    let all = merchants(&projections);
    assert!(all.len() >= 2, "several merchants sell: {all:?}");
    for merchant in &all {
        let expected: BTreeSet<VoucherId> = projections.vouchers.by_merchant(merchant).into_iter().collect();
        let items: Vec<VoucherItem> = every_page(&projections, merchant, VoucherFilter::default(), 7).into_iter().flat_map(|page| page.items).collect();
        let listed: BTreeSet<VoucherId> = items.iter().map(|item| item.voucher_id.clone()).collect();
        assert_eq!(listed, expected, "every voucher of {merchant:?} and no other, once");
        assert_eq!(items.len(), expected.len(), "no voucher twice across pages");
        assert!(items.windows(2).all(|pair| pair[0].reserved_seq > pair[1].reserved_seq), "newest first");
        for set in [PurchaseSet::Pending, PurchaseSet::PurchasedNotDelivered, PurchaseSet::Delivered] {
            let filter = VoucherFilter { set: Some(set), status: None };
            let in_set: Vec<VoucherItem> = every_page(&projections, merchant, filter, 5).into_iter().flat_map(|page| page.items).collect();
            let expected: Vec<&VoucherItem> = items.iter().filter(|item| set_of(item.status) == Some(set)).collect();
            assert_eq!(in_set.iter().collect::<Vec<_>>(), expected, "{set:?} of {merchant:?}");
        }
        let voided = VoucherFilter { set: None, status: Some(VoucherStatus::Voided) };
        let listed = every_page(&projections, merchant, voided, 50).into_iter().flat_map(|page| page.items).count();
        assert_eq!(listed, items.iter().filter(|item| item.status == VoucherStatus::Voided).count());
    }
    // Control: a filter no voucher passes still walks the whole range, a bounded read at a
    // time, and answers nothing.
    let merchant = all.first().expect("a merchant");
    let none = VoucherFilter { set: Some(PurchaseSet::Pending), status: Some(VoucherStatus::Delivered) };
    let pages = every_page(&projections, merchant, none, 10);
    assert!(pages.iter().all(|page| page.items.is_empty() && page.scanned <= projections::reads::VOUCHER_SCAN_MAX));
    assert_eq!(pages.iter().map(|page| page.scanned).sum::<usize>(), projections.vouchers.by_merchant(merchant).len());
}

#[test]
fn statements_add_up_to_the_ledger_and_to_the_royalty_totals() {
    let projections = rebuild(&generate(12, 3_000, 40), keyed());
    let mut by_kind: BTreeMap<(String, LedgerAccountKind), i128> = BTreeMap::new();
    let mut by_merchant: BTreeMap<String, (u64, u64, u64, u64, u64)> = BTreeMap::new();
    for ((merchant, period), statement) in &projections.reads.statements {
        assert!(projections::reads::is_period(period), "{period}");
        let totals = by_merchant.entry(merchant.0.clone()).or_default();
        totals.4 += statement.previews;
        for (currency, line) in &statement.lines {
            for (kind, posted) in &line.postings {
                *by_kind.entry((currency.clone(), *kind)).or_default() += posted.net_minor();
            }
            totals.0 += line.deliveries;
            totals.1 += line.units;
            totals.2 += line.gross_minor;
            totals.3 += line.refunded_minor;
        }
    }
    let mut ledger: BTreeMap<(String, LedgerAccountKind), i128> = BTreeMap::new();
    for (account, balance) in &projections.balances.ledger {
        *ledger.entry((account.currency.clone(), account.kind)).or_default() += balance;
    }
    ledger.retain(|_, balance| *balance != 0);
    by_kind.retain(|_, balance| *balance != 0);
    assert!(!ledger.is_empty(), "the stream settles sales");
    assert_eq!(by_kind, ledger, "every posting is some merchant's, in its month");
    assert_eq!(projections.balances.by_kind().into_iter().filter(|(_, balance)| *balance != 0).collect::<BTreeMap<_, _>>(), ledger);
    for (merchant, (deliveries, units, gross, refunded, previews)) in by_merchant {
        let line = projections.royalty.totals.get(&(Dimension::Merchant, merchant.clone())).copied().unwrap_or_default();
        assert_eq!(
            (deliveries, units, gross, refunded, previews),
            (line.deliveries, line.units, line.amount_minor, line.refunded_minor, line.previews),
            "{merchant}"
        );
    }
}

#[test]
fn a_reopened_store_answers_as_the_projections_in_memory() {
    let events = generate(13, 2_000, 40);
    let dir = tempfile::tempdir().expect("temporary directory");
    let memory = rebuild(&events, keyed());
    {
        let (store, _) = ProjectionStore::open(dir.path()).expect("open");
        let mut projections = store.load(Some(&master()), Some(engine_public())).expect("load");
        let (first, second) = events.split_at(events.len() / 2);
        for event in first {
            projections.apply(event).expect("apply");
        }
        store.commit(&mut projections).expect("commit");
        for event in second {
            projections.apply(event).expect("apply");
        }
        store.commit(&mut projections).expect("commit");
    }
    let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
    let loaded = store.load(Some(&master()), Some(engine_public())).expect("load");
    assert_eq!(loaded.reads, memory.reads);
    for merchant in merchants(&memory) {
        let stored = every_page(&loaded, &merchant, VoucherFilter::default(), 9);
        assert_eq!(stored, every_page(&memory, &merchant, VoucherFilter::default(), 9), "the same pages from sled as from memory");
    }
    let parties = |projections: &Projections| projections.reads.parties_page(None, None, projections::reads::PARTY_PAGE_MAX);
    assert!(!parties(&memory).items.is_empty());
    assert_eq!(parties(&loaded), parties(&memory));
    // The front door's credential table comes back from the party rows, hash and standing.
    assert!(memory.reads.credentials_len() > 0, "the generated stream registers parties");
    assert_eq!(loaded.reads.credentials_len(), memory.reads.credentials_len());
    for party in parties(&memory).items.iter().filter(|party| party.kind != projections::reads::PartyKind::Certificate) {
        assert_eq!(loaded.reads.credential(&party.id), memory.reads.credential(&party.id), "{}", party.id);
    }
}

/// Duplication orders survive a commit and a reopen: the same rows, the same pages.
#[test]
fn a_reopened_store_keeps_each_merchants_orders() {
    use engine::domain::event::Event;
    use engine::domain::{Actor, Recorded};
    use engine::ids::{MediaId, Millis, OrderId, Seq};
    let events: Vec<Event> = vec![
        Event::OrderPlaced {
            order_id: OrderId::new("o1"),
            merchant_id: MerchantId::new("shop"),
            media_id: MediaId::new("md"),
            units: 3,
            price_per_unit_minor: 40,
            settles_by: None,
        },
        Event::UnitCompleted { order_id: OrderId::new("o1"), unit: 0 },
        Event::OrderPlaced {
            order_id: OrderId::new("o2"),
            merchant_id: MerchantId::new("shop"),
            media_id: MediaId::new("md"),
            units: 1,
            price_per_unit_minor: 40,
            settles_by: None,
        },
    ];
    let mut versions = BTreeMap::new();
    let stored: Vec<engine::log::StoredEvent> = events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            let version = versions.entry(event.aggregate().subject()).or_insert(0u64);
            *version += 1;
            let aggregate = event.aggregate();
            let recorded = Recorded {
                event_id: [index as u8; 16],
                aggregate_version: *version,
                recorded_at: Millis(1_767_225_600_000),
                request_id: format!("o-{index}"),
                actor: Actor::engine(),
                command: "Test".into(),
                aggregate,
                event,
            };
            let subject = recorded.aggregate.subject();
            engine::log::StoredEvent { seq: Seq(index as u64 + 1), subject, payload: bytes::Bytes::from(engine::wire::encode(&recorded)) }
        })
        .collect();
    let memory = rebuild(&stored, keyed());
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let (store, _) = ProjectionStore::open(dir.path()).expect("open");
        let mut projections = store.load(Some(&master()), Some(engine_public())).expect("load");
        for event in &stored {
            projections.apply(event).expect("apply");
        }
        store.commit(&mut projections).expect("commit");
    }
    let (store, _) = ProjectionStore::open(dir.path()).expect("reopen");
    let loaded = store.load(Some(&master()), Some(engine_public())).expect("load");
    assert_eq!(loaded.reads, memory.reads);
    let shop = MerchantId::new("shop");
    let page = loaded.reads.orders_of(&shop, None, 10);
    assert_eq!(page.items.iter().map(|(id, row)| (id.0.as_str(), row.units_completed)).collect::<Vec<_>>(), [("o2", 0), ("o1", 1)]);
}
