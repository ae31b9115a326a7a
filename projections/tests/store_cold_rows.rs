//! The rows that grow with the number of vouchers (voucher rows, slot holders, released
//! slots) stay cold in the projection store for a store-backed `Live`: after a commit
//! none of them is held in memory, and every answer read back from sled (rows, counts,
//! the three sets, the sweeper's list, the digest) equals the in-memory rebuild's.

mod support;

use engine::domain::voucher::VoucherStatus;
use engine::ids::Millis;
use projections::Live;
use std::sync::Arc;
use support::{VecLog, engine_public, generate, keyed, master, rebuild};

const STREAM_EVENTS: usize = 4_000;
const SEAL_EVERY_USAGES: u64 = 150;
const STATUSES: [VoucherStatus; 7] = [
    VoucherStatus::None,
    VoucherStatus::Pending,
    VoucherStatus::Authorized,
    VoucherStatus::Issued,
    VoucherStatus::Redeeming,
    VoucherStatus::Delivered,
    VoucherStatus::Voided,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_backed_live_reads_cold_rows_from_the_store_with_the_same_answers() {
    let events = generate(11, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let clean = rebuild(&events, keyed());
    assert!(clean.vouchers.vouchers.len() > 300, "the stream sells enough vouchers to matter");
    // Negative control: in memory, every row is resident.
    assert!(!clean.vouchers.vouchers.is_stored());
    assert_eq!(clean.vouchers.vouchers.resident(), clean.vouchers.vouchers.len());

    let dir = tempfile::tempdir().expect("temporary directory");
    // Stop half way, reopen, and go on: the second half reads rows the first half left
    // only in sled.
    let half = STREAM_EVENTS / 2;
    for end in [half, events.len()] {
        let (live, _) = Live::open(dir.path(), Some(&master()), Some(engine_public())).expect("open the store");
        let live = live.with_batch_events_max(97);
        live.run(Arc::new(VecLog::new(events[..end].to_vec()))).await.expect("run to the end of the stream");
        live.read(|p| {
            assert!(p.vouchers.vouchers.is_stored(), "a store-backed Live keeps its voucher rows in the store");
            assert_eq!(p.vouchers.vouchers.resident(), 0, "after the last commit no voucher row is held in memory");
        });
    }

    let (live, _) = Live::open(dir.path(), Some(&master()), Some(engine_public())).expect("reopen the store");
    live.read(|p| {
        assert_eq!(hex::encode(p.digest()), hex::encode(clean.digest()), "digest over rows read from sled");
        assert_eq!(p.vouchers, clean.vouchers, "voucher book (rows, counts, expiry index, holds)");
        assert_eq!(p.allocation, clean.allocation, "allocation (slot holders and released slots from sled)");
        for status in STATUSES {
            assert_eq!(p.vouchers.count(status), clean.vouchers.count(status), "count of {status:?}");
        }
        assert_eq!(p.vouchers.set_sizes(), clean.vouchers.set_sizes());
        assert_eq!(p.vouchers.due(Millis(i64::MAX), usize::MAX), clean.vouchers.due(Millis(i64::MAX), usize::MAX));
        for (id, row) in clean.vouchers.vouchers.iter() {
            assert_eq!(p.vouchers.vouchers.get(&id), Some(row), "row of {id:?}");
        }
        let merchant = clean.vouchers.vouchers.iter().next().map(|(_, row)| row.merchant).expect("a voucher");
        assert_eq!(p.vouchers.by_merchant(&merchant), clean.vouchers.by_merchant(&merchant));
    });
}

/// The counts kept as events apply equal a scan of the rows (they replace a scan per
/// status request).
#[test]
fn status_counts_equal_a_scan_of_the_rows() {
    let events = generate(12, STREAM_EVENTS, SEAL_EVERY_USAGES);
    let clean = rebuild(&events, keyed());
    let mut seen = 0;
    for status in STATUSES {
        let scanned = clean.vouchers.vouchers.iter().filter(|(_, row)| row.status == status).count();
        assert_eq!(clean.vouchers.count(status), scanned, "{status:?}");
        seen += scanned;
    }
    assert_eq!(seen, clean.vouchers.vouchers.len());
    assert!(clean.vouchers.count(VoucherStatus::Delivered) > 0 && clean.vouchers.count(VoucherStatus::Voided) > 0, "the stream reaches several statuses");
}
