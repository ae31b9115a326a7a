//! The fuzz's generators: hostile values (text, ids, numbers, bytes), typed requests RPC
//! by RPC, raw bodies (mutations of encoded requests, hand-made fragments), and whole
//! cases.

use super::*;

// ---- hostile values ----

/// Ids of one kind: those of the world's objects (of every party), and those that
/// follow from the shared request ids (objects the cases may create) or name nothing.
#[derive(Clone, Debug)]
pub(super) struct Ids {
    pub(super) real: Vec<String>,
    pub(super) derived: Vec<String>,
}

impl Ids {
    pub(super) fn new(real: Vec<String>, derived: Vec<String>) -> Self {
        Ids { real, derived }
    }

    pub(super) fn all(&self) -> Vec<String> {
        self.real.iter().chain(&self.derived).cloned().collect()
    }
}

/// What a generated case draws its ids and valid-looking bytes from.
#[derive(Clone, Debug)]
pub(super) struct Pools {
    /// Real: shared across cases, so the same request id comes back for retries and for
    /// other commands; derived: the world's own request ids.
    pub(super) request_ids: Ids,
    pub(super) vouchers: Ids,
    pub(super) media: Ids,
    pub(super) orders: Ids,
    pub(super) previews: Ids,
    pub(super) serials: Ids,
    pub(super) consumers: Ids,
    pub(super) accounts: Ids,
    /// Nodes X, Y and Z (never the known-good node W, which no generated case names).
    pub(super) nodes: Ids,
    /// Nodes the cases may create (RegisterNodeCredential with a shared request id), which
    /// no case calls as: what RemoveNode may remove.
    pub(super) removable_nodes: Ids,
    pub(super) regions: Vec<String>,
    /// Every id of every kind, for fields that expect another kind.
    pub(super) any_ids: Vec<String>,
    /// Valid RSA SubjectPublicKeyInfo DER.
    pub(super) ders: Vec<Vec<u8>>,
    /// Valid (challenge, proof) pairs for the world's sales, for X and for Y.
    pub(super) proofs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Valid (container, wrapped key) pairs.
    pub(super) uploads: Vec<(Vec<u8>, Vec<u8>)>,
    /// Redemptions of the world's sales by X with a proof made for X, by consumers with a
    /// valid, a revoked and an expired certificate.
    pub(super) redemptions: Vec<pb::RedeemRequest>,
    /// Spend authorizations: acct-1's for merchant A (genuine, each good once) and for B,
    /// acct-empty's for A, expired, forged (a field changed after signing), garbage.
    pub(super) spends: Vec<pb::SpendAuthorization>,
    /// Balance reads: acct-1's signed now, stale, another consumer's signature, garbage.
    pub(super) points_reads: Vec<pb::GetPointsRequest>,
    /// Alice's confirm proofs for the world's sales at X (hash of ones, of zeros).
    pub(super) confirms: Vec<Vec<u8>>,
    /// What the operator's administrative changes act on.
    pub(super) admin: Sacrificial,
}

/// The ids the operator's administrative changes draw from: objects made for them, objects
/// the cases may create, and names of nothing; never merchant A or B, the world's media,
/// a consumer other cases use or the auditor. A suspension, withdrawal or revocation of
/// those would stop the rest of the run: the known-good sale every `CHECK_EVERY_CASES`
/// cases is merchant A's, of the world's media; a revoked auditor's calls would be
/// refused at the front door.
#[derive(Clone, Debug)]
pub(super) struct Sacrificial {
    /// Merchant C; merchants the cases may register (a shared request id); none.
    pub(super) merchants: Ids,
    /// The spare auditor; auditors the cases may register; none.
    pub(super) auditors: Ids,
    /// The spare media; media the cases may publish; none.
    pub(super) withdrawable: Ids,
    /// The spare media and the priced media (never withdrawn, so its price changes all
    /// run long); media the cases may publish; none.
    pub(super) priced: Ids,
    /// Consumer frank; consumers the world never certified.
    pub(super) consumers: Ids,
    /// Frank's certificates; every other serial (no serial of frank's).
    pub(super) serials: Ids,
    /// Ids of every kind but those the changes must not touch, for fields that expect
    /// another kind.
    pub(super) others: Vec<String>,
}

/// Request ids the generated cases share.
pub(super) const SHARED_REQUEST_IDS: usize = 16;
/// Genuine spend authorizations for merchant A on acct-1 in the pool.
const GENUINE_SPENDS: usize = 48;

impl Pools {
    pub(super) fn of(w: &World) -> Pools {
        let shared: Vec<String> = (0..SHARED_REQUEST_IDS).map(|i| format!("fz-{i}")).collect();
        let world_requests = [
            "sale-reserve",
            "sale-authorize",
            "sale-issue",
            "pending-1",
            "preview-1",
            "order-1",
            "cert-alice",
            "revoke-bob",
            "topup-1",
            "merchant-a",
            "node-eu",
            "auditor-1",
            "media-1",
        ];
        let merchants = [MerchantId(w.a.id.clone()), MerchantId(w.b.id.clone())];
        let derived = |f: &dyn Fn(&MerchantId, &RequestId) -> String| -> Vec<String> {
            merchants.iter().flat_map(|m| shared.iter().map(move |r| (m, RequestId(r.clone())))).map(|(m, r)| f(m, &r)).collect()
        };
        let vouchers = Ids::new(
            vec![w.sale.voucher_id.clone(), w.second.voucher_id.clone(), w.pending.clone(), w.pending_to_void.clone(), w.authorized.clone(), w.expired.clone()],
            derived(&|m, r| engine::ids::voucher_id_for(m, r).0),
        );
        let orders = Ids::new(vec![w.order.clone()], derived(&|m, r| engine::ids::order_id_for(m, r).0));
        let previews = Ids::new(vec![w.preview.clone()], derived(&|m, r| engine::ids::preview_id_for(m, r).0));
        let mut unpublished: Vec<String> = shared.iter().map(|r| engine::ids::media_id_for(&w.operator.id, &RequestId(r.clone())).0).collect();
        unpublished.push("md-never".into());
        let media = Ids::new(vec![w.media.clone()], unpublished);
        let consumers = Ids::new(["alice", "bob", "erin", "dave"].map(String::from).to_vec(), ["carol", "nobody"].map(String::from).to_vec());
        let mut other_serials = Vec::new();
        for consumer in ["alice", "carol"] {
            for r in shared.iter().take(4) {
                other_serials.push(engine::ids::cert_serial_for(&engine::ids::ConsumerId(consumer.into()), &w.operator.id, &RequestId(r.clone())).0);
            }
        }
        let serials = Ids::new(vec![w.alice_serial.clone(), w.bob_serial.clone(), w.erin_serial.clone(), w.dave_serial.clone()], other_serials);
        let accounts = Ids::new(vec!["acct-1".into()], ["acct-empty", "alice", "fz-acct-0", "fz-acct-1"].map(String::from).to_vec());
        // Each genuine authorization is good once: enough of them that accepted points
        // purchases keep happening through a long run.
        let mut spends: Vec<pb::SpendAuthorization> = (0..GENUINE_SPENDS).map(|_| w.spend("acct-1", &w.a.id, 1_000_000, 600_000)).collect();
        spends.push(w.spend("acct-1", &w.b.id, 1_000_000, 600_000));
        spends.push(w.spend("acct-empty", &w.a.id, 1_000_000, 600_000));
        spends.push(w.spend("acct-1", &w.a.id, 1_000_000, -1));
        spends.push(w.spend("acct-1", &w.a.id, 1, 600_000));
        spends.push(pb::SpendAuthorization { amount_max: u64::MAX, ..w.spend("acct-1", &w.a.id, 1, 600_000) });
        spends.push(pb::SpendAuthorization { nonce: vec![0; 3], signature: vec![1; 5000], ..pb::SpendAuthorization::default() });
        let points_reads = vec![
            w.points_request("acct-1", &w.acct_serial, 0),
            w.points_request("acct-1", &w.acct_serial, -3_600_000),
            pb::GetPointsRequest { consumer_id: "alice".into(), cert_serial: w.alice_serial.clone(), ..w.points_request("acct-1", &w.acct_serial, 0) },
            w.points_request("bob", &w.bob_serial, 0),
            pb::GetPointsRequest { signature: vec![0; 256], ..w.points_request("acct-1", &w.acct_serial, 0) },
        ];
        let request_ids = Ids::new(shared.clone(), world_requests.map(String::from).to_vec());
        let nodes = Ids::new([&w.x, &w.y, &w.z].map(|c| c.id.clone()).to_vec(), vec!["nd-never".into()]);
        let removable_nodes =
            Ids::new(shared.iter().map(|r| engine::ids::node_id_for(&w.operator.id, &RequestId(r.clone())).0).collect(), vec!["nd-never".into()]);
        let regions: Vec<String> = ["", "eu", "us", "ap"].map(String::from).to_vec();
        let mut any_ids: Vec<String> = [&w.operator, &w.a, &w.b, &w.x, &w.y, &w.z, &w.auditor].map(|c| c.id.clone()).to_vec();
        for ids in [&vouchers, &orders, &previews, &media, &serials, &consumers, &accounts, &request_ids] {
            any_ids.extend(ids.all());
        }
        let challenge = vec![7u8; 32];
        let mut proofs = Vec::new();
        for sale in [&w.sale, &w.second] {
            for node in [&w.x.id, &w.y.id] {
                let alice = support::sale::Named { consumer: "alice", cert_serial: &w.alice_serial, public_key_der: &w.consumer_der };
                proofs.push((challenge.clone(), proof(&sale.receipt, &sale.voucher_id, node, &challenge, &alice)));
            }
        }
        let mut confirms = Vec::new();
        for sale in [&w.sale, &w.second] {
            let alice = support::sale::Named { consumer: "alice", cert_serial: &w.alice_serial, public_key_der: &w.consumer_der };
            for hash in [[1u8; 32], [0u8; 32]] {
                confirms.push(support::sale::confirm(&sale.receipt, &sale.voucher_id, &w.x.id, &w.media, &hash, &alice));
            }
        }
        let mut redemptions = Vec::new();
        for sale in [&w.sale, &w.second] {
            for (consumer, serial) in [("alice", &w.alice_serial), ("bob", &w.bob_serial), ("erin", &w.erin_serial)] {
                redemptions.push(pb::RedeemRequest {
                    request_id: String::new(),
                    voucher_id: sale.voucher_id.clone(),
                    cert_serial: serial.clone(),
                    consumer_id: consumer.into(),
                    proof: proof(
                        &sale.receipt,
                        &sale.voucher_id,
                        &w.x.id,
                        &challenge,
                        &support::sale::Named { consumer, cert_serial: serial, public_key_der: &w.consumer_der },
                    ),
                    challenge: challenge.clone(),
                    recover: false,
                });
            }
        }
        let ders = vec![w.consumer_der.clone(), w.fx.engine_public.to_der().expect("der")];
        let from_shared = |f: &dyn Fn(&RequestId) -> String| -> Vec<String> { shared.iter().map(|r| f(&RequestId(r.clone()))).collect() };
        let mut merchants = from_shared(&|r| engine::ids::merchant_id_for(&w.operator.id, r).0);
        merchants.push("m0never".into());
        let mut auditors = from_shared(&|r| engine::ids::auditor_id_for(&w.operator.id, r).0);
        auditors.push("a0never".into());
        let mut fuzz_media = from_shared(&|r| engine::ids::media_id_for(&w.operator.id, r).0);
        fuzz_media.push("md-never".into());
        let protected: Vec<String> = [&w.a.id, &w.b.id, &w.auditor.id, &w.media]
            .into_iter()
            .cloned()
            .chain(["alice", "bob", "erin", "dave", "acct-1", "acct-empty", KNOWN_GOOD_CONSUMER].map(String::from))
            .collect();
        let mut others: Vec<String> = any_ids.iter().filter(|id| !protected.contains(id)).cloned().collect();
        others.extend([&w.c.id, &w.spare_auditor.id, &w.spare_media, &w.priced_media].map(String::clone));
        others.push("frank".into());
        others.extend(w.frank_serials.iter().cloned());
        let admin = Sacrificial {
            merchants: Ids::new(vec![w.c.id.clone()], merchants),
            auditors: Ids::new(vec![w.spare_auditor.id.clone()], auditors),
            withdrawable: Ids::new(vec![w.spare_media.clone()], fuzz_media.clone()),
            priced: Ids::new(vec![w.spare_media.clone(), w.priced_media.clone()], fuzz_media),
            consumers: Ids::new(vec!["frank".into()], ["carol", "nobody"].map(String::from).to_vec()),
            serials: Ids::new(w.frank_serials.clone(), serials.all()),
            others,
        };
        Pools {
            request_ids,
            vouchers,
            media,
            orders,
            previews,
            serials,
            consumers,
            accounts,
            nodes,
            removable_nodes,
            regions,
            any_ids,
            ders,
            proofs,
            uploads: w.uploads.clone(),
            redemptions,
            spends,
            points_reads,
            confirms,
            admin,
        }
    }
}

/// How hostile a typed request is: every field hostile as often as plausible, or nearly
/// valid (plausible values eight times as likely), so that cases also get past the
/// field checks into the use cases and change state for the cases after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bias {
    Hostile,
    NearValid,
}

impl Bias {
    /// The weight of a plausible choice whose hostile weight is `weight`.
    pub(super) fn plausible(self, weight: u32) -> u32 {
        match self {
            Bias::Hostile => weight,
            Bias::NearValid => weight * 8,
        }
    }
}

pub(super) fn one_of<T: Debug + 'static>(arms: Vec<(u32, BoxedStrategy<T>)>) -> BoxedStrategy<T> {
    Union::new_weighted(arms).boxed()
}

/// Pieces of text that break naive handling: bidi overrides, zero-width and NUL
/// characters, emoji and ZWJ sequences, combining marks, lookalikes, path and subject
/// syntax, quotes and escapes.
pub(super) const WEIRD: &[&str] = &[
    "\u{202E}",
    "\u{202D}",
    "\u{200F}",
    "\u{200B}",
    "\u{FEFF}",
    "\0",
    "\u{1F3B5}",
    "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
    "e\u{301}",
    "\u{301}",
    "\u{FFFD}",
    "\u{10FFFF}",
    "\u{130}",
    "\u{FB01}",
    "\u{2028}",
    "\u{7F}",
    "\u{1B}[31m",
    "\u{FF21}",
    "\u{430}",
    "%00",
    "../",
    "/",
    ".",
    "*",
    ">",
    " ",
    "\\",
    "\"",
    "'",
    "vs.voucher.>",
    "${x}",
    "\r\n",
];

/// Text that no field should choke on.
pub(super) fn hostile_text() -> BoxedStrategy<String> {
    let weird = vec(prop_oneof![select(WEIRD).prop_map(String::from), "[a-z0-9_-]{1,4}"], 1..8).prop_map(|parts| parts.concat());
    one_of(vec![
        (3, Just(String::new()).boxed()),
        (2, select(vec![" ", "   ", "\t", "\n", "\r\n", "\u{3000}", "\u{A0}", "\u{2028}"]).prop_map(String::from).boxed()),
        (4, "[A-Za-z0-9_-]{1,64}".boxed()),
        (1, "[A-Za-z0-9_-]{65,70}".boxed()),
        (1, select(vec![64usize, 65, 256, 257, 4096, 60_000, 70_000]).prop_map(|n| "x".repeat(n)).boxed()),
        (5, weird.boxed()),
        (2, ".{1,40}".boxed()),
    ])
}

/// An id field: usually one of the right kind (the world's, of any party, or one the
/// shared request ids derive), sometimes one of another kind, one nearly right, or
/// hostile text.
pub(super) fn id_field(ids: &Ids, any_ids: &[String], b: Bias) -> BoxedStrategy<String> {
    let all = ids.all();
    let near_miss = (select(all.clone()), select(WEIRD), any::<bool>())
        .prop_map(|(id, weird, before)| if before { format!("{weird}{id}") } else { format!("{id}{weird}") });
    one_of(vec![
        (b.plausible(5), select(ids.real.clone()).boxed()),
        (b.plausible(3), select(ids.derived.clone()).boxed()),
        (2, select(any_ids.to_vec()).boxed()),
        (1, select(all).prop_map(|id| id.to_uppercase()).boxed()),
        (2, near_miss.boxed()),
        (4, hostile_text()),
    ])
}

pub(super) fn request_id(p: &Pools, b: Bias) -> BoxedStrategy<String> {
    id_field(&p.request_ids, &p.any_ids, b)
}

/// Free text (names, reasons, titles): plausible or hostile.
pub(super) fn free_text(b: Bias) -> BoxedStrategy<String> {
    one_of(vec![
        (b.plausible(2), select(vec!["Shop C", "disk full", "lost", "Song", "EUR", "cover.jpg", "label-1"]).prop_map(String::from).boxed()),
        (5, hostile_text()),
    ])
}

pub(super) fn u64_field(plausible: u64, b: Bias) -> BoxedStrategy<u64> {
    one_of(vec![
        (b.plausible(3), Just(plausible).boxed()),
        (
            6,
            select(vec![
                0,
                1,
                2,
                999,
                1000,
                u64::from(u32::MAX),
                u64::from(u32::MAX) + 1,
                i64::MAX as u64 - 1,
                i64::MAX as u64,
                i64::MAX as u64 + 1,
                u64::MAX - 1,
                u64::MAX,
            ])
            .boxed(),
        ),
        (2, any::<u64>().boxed()),
    ])
}

pub(super) fn u32_field(plausible: u32, b: Bias) -> BoxedStrategy<u32> {
    one_of(vec![
        (b.plausible(3), Just(plausible).boxed()),
        (6, select(vec![0, 1, 2, 10_000, 10_001, 100_000, 100_001, i32::MAX as u32, i32::MAX as u32 + 1, u32::MAX - 1, u32::MAX]).boxed()),
        (2, any::<u32>().boxed()),
    ])
}

/// A bytes field: empty, random of telling lengths, or one of `valid` intact, with a bit
/// flipped, or cut short.
pub(super) fn bytes_field(valid: &[Vec<u8>], b: Bias) -> BoxedStrategy<Vec<u8>> {
    let mut arms = vec![
        (2, Just(Vec::new()).boxed()),
        (3, vec(any::<u8>(), 0..80).boxed()),
        (3, select(vec![1usize, 15, 16, 31, 32, 33, 64, 65, 256, 294]).prop_flat_map(|n| vec(any::<u8>(), n..=n)).boxed()),
        (1, vec(any::<u8>(), 0..4096).boxed()),
    ];
    if !valid.is_empty() {
        let flipped = (select(valid.to_vec()), any::<Index>(), 0u8..8).prop_map(|(mut bytes, at, bit)| {
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
            bytes
        });
        let cut = (select(valid.to_vec()), any::<Index>()).prop_map(|(mut bytes, at)| {
            bytes.truncate(at.index(bytes.len()));
            bytes
        });
        arms.push((b.plausible(4), select(valid.to_vec()).boxed()));
        arms.push((2, flipped.boxed()));
        arms.push((1, cut.boxed()));
    }
    one_of(arms)
}

pub(super) fn region(p: &Pools, b: Bias) -> BoxedStrategy<String> {
    one_of(vec![(b.plausible(4), select(p.regions.clone()).boxed()), (2, hostile_text())])
}

pub(super) fn endpoint(b: Bias) -> BoxedStrategy<String> {
    one_of(vec![
        (b.plausible(3), Just("http://127.0.0.1:1".to_string()).boxed()),
        (
            2,
            (select(vec!["http://", "https://", "ftp://", "HTTP://", " http://", "", "http:/", "javascript:"]), hostile_text())
                .prop_map(|(scheme, rest)| format!("{scheme}{rest}"))
                .boxed(),
        ),
        (1, select(vec![249usize, 250, 256, 257, 10_000]).prop_map(|n| format!("http://{}", "h".repeat(n))).boxed()),
        (2, hostile_text()),
    ])
}

// ---- requests, RPC by RPC ----

/// The operator's changes to parties and the catalog, whose ids come from `Sacrificial`.
pub(super) fn administrative(rpc: Rpc) -> bool {
    matches!(rpc, Rpc::SuspendMerchant | Rpc::ReinstateMerchant | Rpc::RevokeAuditor | Rpc::WithdrawMedia | Rpc::ChangePrice | Rpc::RevokeCerts)
}

pub(super) fn arb_request(rpc: Rpc, p: &Pools, b: Bias) -> BoxedStrategy<Req> {
    let rid = request_id(p, b);
    let voucher = || id_field(&p.vouchers, &p.any_ids, b);
    let media = || id_field(&p.media, &p.any_ids, b);
    let order = || id_field(&p.orders, &p.any_ids, b);
    let serial = || id_field(&p.serials, &p.any_ids, b);
    let consumer = || id_field(&p.consumers, &p.any_ids, b);
    let account = || id_field(&p.accounts, &p.any_ids, b);
    match rpc {
        Rpc::Reserve => {
            // The admin pool's priced media alone too: the model oracle checks that a
            // reservation carries the price the last accepted ChangePrice set.
            let media_ids = one_of(vec![
                (b.plausible(2), Just(p.media.real.clone()).boxed()),
                (b.plausible(1), select(p.admin.priced.real.clone()).prop_map(|media| vec![media]).boxed()),
                (4, vec(media(), 0..4).boxed()),
                (1, vec(select(p.media.all()), 0..300).boxed()),
            ]);
            let rendition = one_of(vec![(b.plausible(4), Just("high".to_string()).boxed()), (2, hostile_text())]);
            let points = one_of(vec![(b.plausible(3), Just(String::new()).boxed()), (b.plausible(2), Just("acct-1".to_string()).boxed()), (2, account())]);
            let spend = one_of(vec![
                (b.plausible(2), Just(None).boxed()),
                (b.plausible(6), select(p.spends.clone()).prop_map(Some).boxed()),
                (1, Just(Some(pb::SpendAuthorization::default())).boxed()),
            ]);
            (rid, media_ids, rendition, u64_field(900_000, b), points, free_text(b), spend)
                .prop_map(|(request_id, media_ids, rendition, ttl_ms, points_account, payment_ref, spend_authorization)| {
                    Req::Reserve(pb::ReserveRequest {
                        request_id,
                        media_ids,
                        rendition,
                        ttl_ms,
                        points_account,
                        payment_ref,
                        spend_authorization,
                        rental_ms: 0,
                    })
                })
                .boxed()
        }
        Rpc::Authorize => (rid, voucher()).prop_map(|(request_id, voucher_id)| Req::Authorize(pb::AuthorizeRequest { request_id, voucher_id })).boxed(),
        Rpc::Void => (rid, voucher()).prop_map(|(request_id, voucher_id)| Req::Void(pb::VoidRequest { request_id, voucher_id })).boxed(),
        Rpc::Refund => (rid, voucher(), free_text(b), any::<bool>())
            .prop_map(|(request_id, voucher_id, reason, chargeback)| Req::Refund(pb::RefundRequest { request_id, voucher_id, reason, chargeback }))
            .boxed(),
        Rpc::IssueVoucher => (rid, voucher(), region(p, b))
            .prop_map(|(request_id, voucher_id, region)| Req::IssueVoucher(pb::IssueVoucherRequest { request_id, voucher_id, region }))
            .boxed(),
        Rpc::Preview => {
            (rid, media(), region(p, b)).prop_map(|(request_id, media_id, region)| Req::Preview(pb::PreviewRequest { request_id, media_id, region })).boxed()
        }
        Rpc::GetVoucher => voucher().prop_map(|voucher_id| Req::GetVoucher(pb::GetVoucherRequest { voucher_id })).boxed(),
        Rpc::PlaceOrder => (rid, media(), u32_field(2, b))
            .prop_map(|(request_id, media_id, units)| Req::PlaceOrder(pb::PlaceOrderRequest { request_id, media_id, units }))
            .boxed(),
        Rpc::BindUnit => {
            // Devices are certified like consumers: the consumers' ids and serials, crossed.
            let device = id_field(&Ids::new(p.consumers.real.clone(), vec!["dev-2".into()]), &p.any_ids, b);
            (rid, order(), u32_field(0, b), device, bytes_field(&p.ders, b), serial())
                .prop_map(|(request_id, order_id, unit, device_id, device_public_key_der, device_cert_serial)| {
                    Req::BindUnit(pb::BindUnitRequest { request_id, order_id, unit, device_id, device_public_key_der, device_cert_serial })
                })
                .boxed()
        }
        Rpc::CompleteUnit => (rid, order(), u32_field(0, b))
            .prop_map(|(request_id, order_id, unit)| Req::CompleteUnit(pb::CompleteUnitRequest { request_id, order_id, unit }))
            .boxed(),
        Rpc::RegisterNode => (region(p, b), u32_field(0, b), endpoint(b))
            .prop_map(|(region, slots_max, endpoint)| Req::RegisterNode(pb::RegisterNodeRequest { region, slots_max, endpoint }))
            .boxed(),
        Rpc::Heartbeat => (u32_field(1, b), u64_field(1, b), u64_field(1, b), u64_field(0, b))
            .prop_map(|(slots_in_use, cache_items, cache_accesses, cache_misses)| {
                Req::Heartbeat(pb::HeartbeatRequest { slots_in_use, cache_items, cache_accesses, cache_misses })
            })
            .boxed(),
        Rpc::SubscribeAssignments => u64_field(0, b).prop_map(|after_seq| Req::SubscribeAssignments(pb::SubscribeAssignmentsRequest { after_seq })).boxed(),
        Rpc::Redeem => {
            let pair = one_of(vec![(b.plausible(3), select(p.proofs.clone()).boxed()), (3, (bytes_field(&[vec![7u8; 32]], b), bytes_field(&[], b)).boxed())]);
            let fields =
                (rid.clone(), voucher(), serial(), consumer(), pair).prop_map(|(request_id, voucher_id, cert_serial, consumer_id, (challenge, proof))| {
                    Req::Redeem(pb::RedeemRequest { request_id, voucher_id, cert_serial, consumer_id, challenge, proof, recover: false })
                });
            // A redemption whose parts belong together (a sale, its proof, a certificate),
            // so that some get past every check.
            let coherent =
                (select(p.redemptions.clone()), rid).prop_map(|(redemption, request_id)| Req::Redeem(pb::RedeemRequest { request_id, ..redemption }));
            one_of(vec![(b.plausible(1), coherent.boxed()), (2, fields.boxed())])
        }
        Rpc::CompleteDelivery => {
            let confirm = bytes_field(&p.confirms, b);
            (rid, voucher(), media(), bytes_field(&[vec![1u8; 32]], b), u64_field(20_000, b), confirm)
                .prop_map(|(request_id, voucher_id, media_id, content_hash, size_bytes, confirm_proof)| {
                    Req::CompleteDelivery(pb::CompleteDeliveryRequest { request_id, voucher_id, media_id, content_hash, size_bytes, confirm_proof })
                })
                .boxed()
        }
        Rpc::FailDelivery => (rid, voucher(), free_text(b), media(), bytes_field(&[vec![0u8; 32]], b), bytes_field(&p.confirms, b))
            .prop_map(|(request_id, voucher_id, reason, media_id, received_hash, confirm_proof)| {
                Req::FailDelivery(pb::FailDeliveryRequest { request_id, voucher_id, reason, media_id, received_hash, confirm_proof })
            })
            .boxed(),
        Rpc::EndPreview => (rid, id_field(&p.previews, &p.any_ids, b), u64_field(1000, b))
            .prop_map(|(request_id, preview_id, played_ms)| Req::EndPreview(pb::EndPreviewRequest { request_id, preview_id, played_ms }))
            .boxed(),
        Rpc::FetchMedia => {
            let part =
                one_of(vec![(b.plausible(4), select(vec![1, 2]).boxed()), (2, select(vec![0, 3, -1, i32::MAX, i32::MIN]).boxed()), (1, any::<i32>().boxed())]);
            (media(), part).prop_map(|(media_id, part)| Req::FetchMedia(pb::FetchMediaRequest { media_id, part })).boxed()
        }
        Rpc::PublishMedia => arb_publish(p, rid, b),
        // The account's terms and keys: valid, broken or none (the keys from the DER pool,
        // flipped, cut or random).
        Rpc::RegisterPublisher => (rid, free_text(b), arb_terms(b), vec(bytes_field(&p.ders, b), 0..3))
            .prop_map(|(request_id, name, terms, public_keys_der)| {
                Req::RegisterPublisher(pb::RegisterPublisherRequest { request_id, name, terms, public_keys_der })
            })
            .boxed(),
        Rpc::AddPublisherKey => (rid, free_text(b), bytes_field(&p.ders, b))
            .prop_map(|(request_id, publisher_id, public_key_der)| {
                Req::AddPublisherKey(pb::AddPublisherKeyRequest { request_id, publisher_id, public_key_der })
            })
            .boxed(),
        Rpc::RegisterMerchant => {
            (rid, free_text(b)).prop_map(|(request_id, name)| Req::RegisterMerchant(pb::RegisterMerchantRequest { request_id, name })).boxed()
        }
        Rpc::RegisterNodeCredential => (rid, region(p, b), u32_field(4, b))
            .prop_map(|(request_id, region, slots_max)| Req::RegisterNodeCredential(pb::RegisterNodeCredentialRequest { request_id, region, slots_max }))
            .boxed(),
        Rpc::CertifyConsumer => (rid, consumer(), bytes_field(&p.ders, b), u64_field(86_400_000, b))
            .prop_map(|(request_id, consumer_id, public_key_der, validity_ms)| {
                Req::CertifyConsumer(pb::CertifyConsumerRequest { request_id, consumer_id, public_key_der, validity_ms })
            })
            .boxed(),
        Rpc::RevokeCert => (rid, serial(), free_text(b), consumer())
            .prop_map(|(request_id, cert_serial, reason, consumer_id)| Req::RevokeCert(pb::RevokeCertRequest { request_id, cert_serial, reason, consumer_id }))
            .boxed(),
        Rpc::TopUpPoints => (rid, account(), u64_field(100, b), free_text(b))
            .prop_map(|(request_id, account_id, amount, reference)| {
                Req::TopUpPoints(pb::TopUpPointsRequest { request_id, account_id, amount, reference, currency: String::new() })
            })
            .boxed(),
        Rpc::SellPoints => {
            let currency = one_of(vec![(b.plausible(3), Just("EUR".to_string()).boxed()), (2, hostile_text())]);
            (rid, account(), u64_field(100, b), free_text(b), currency)
                .prop_map(|(request_id, account_id, amount, reference, currency)| {
                    Req::SellPoints(pb::TopUpPointsRequest { request_id, account_id, amount, reference, currency })
                })
                .boxed()
        }
        Rpc::GetPoints => {
            let reads = p.points_reads.clone();
            one_of(vec![
                (b.plausible(3), select(reads).boxed()),
                (
                    2,
                    (consumer(), serial(), any::<i64>(), vec(any::<u8>(), 0..600))
                        .prop_map(|(consumer_id, cert_serial, issued_at_ms, signature)| pb::GetPointsRequest {
                            consumer_id,
                            cert_serial,
                            issued_at_ms,
                            signature,
                        })
                        .boxed(),
                ),
            ])
            .prop_map(Req::GetPoints)
            .boxed()
        }
        Rpc::RegisterAuditor => {
            (rid, free_text(b)).prop_map(|(request_id, name)| Req::RegisterAuditor(pb::RegisterAuditorRequest { request_id, name })).boxed()
        }
        Rpc::Replay => bytes_field(&[], b).prop_map(|pinned_seal_hash| Req::Replay(pb::ReplayRequest { pinned_seal_hash })).boxed(),
        Rpc::VerifyChain => Just(Req::VerifyChain(pb::VerifyChainRequest {})).boxed(),
        Rpc::Totals => Just(Req::Totals(pb::TotalsRequest {})).boxed(),
        Rpc::GetStats => Just(Req::GetStats(pb::GetStatsRequest {})).boxed(),
        Rpc::GetConfig => Just(Req::GetConfig(pb::GetConfigRequest {})).boxed(),
        Rpc::SetConfig => {
            // The known keys, at and beyond their bounds, as numbers and as anything else;
            // but not the sealer's (`seal.interval_ms`, `seal.entries_max`): an accepted one
            // lets the sealer append in the middle of later cases, which this harness must
            // see as quiet (`QUIET`) to tell what each case wrote. Their values are checked
            // by the same code as the others'.
            let settable = || engine::domain::config::KEYS.iter().filter(|(key, ..)| !key.starts_with("seal."));
            let known: Vec<String> = settable().map(|(key, ..)| key.to_string()).collect();
            let key = one_of(vec![(b.plausible(4), select(known).boxed()), (2, hostile_text())]);
            let bounds: Vec<String> = settable()
                .flat_map(|(_, min, max, default)| [*min, *max, *default, min.saturating_sub(1), max.saturating_add(1)])
                .map(|n| n.to_string())
                .collect();
            let value = one_of(vec![
                (b.plausible(4), select(bounds).boxed()),
                (2, u64_field(60_000, b).prop_map(|n| n.to_string()).boxed()),
                (1, select(vec!["-1".to_string(), "1e6".into(), "0x10".into(), " 5000".into(), "18446744073709551616".into()]).boxed()),
                (2, hostile_text()),
            ]);
            (rid, key, value).prop_map(|(request_id, key, value)| Req::SetConfig(pb::SetConfigRequest { request_id, key, value })).boxed()
        }
        Rpc::DrainNode => {
            (rid, id_field(&p.nodes, &p.any_ids, b)).prop_map(|(request_id, node_id)| Req::DrainNode(pb::NodeAdminRequest { request_id, node_id })).boxed()
        }
        Rpc::RemoveNode => {
            // A removed node's credential stops working, so the nodes the cases call as
            // (X, Y, Z) are never removed: their later calls would be judged as theirs.
            let callers = &p.nodes.real;
            let others: Vec<String> = p.any_ids.iter().filter(|id| !callers.contains(id)).cloned().collect();
            (rid, id_field(&p.removable_nodes, &others, b))
                .prop_map(|(request_id, node_id)| Req::RemoveNode(pb::NodeAdminRequest { request_id, node_id }))
                .boxed()
        }
        Rpc::SuspendMerchant | Rpc::ReinstateMerchant => {
            let suspend = rpc == Rpc::SuspendMerchant;
            (rid, id_field(&p.admin.merchants, &p.admin.others, b), free_text(b))
                .prop_map(move |(request_id, merchant_id, reason)| {
                    let message = pb::MerchantAdminRequest { request_id, merchant_id, reason };
                    if suspend { Req::SuspendMerchant(message) } else { Req::ReinstateMerchant(message) }
                })
                .boxed()
        }
        Rpc::RevokeAuditor => (rid, id_field(&p.admin.auditors, &p.admin.others, b), free_text(b))
            .prop_map(|(request_id, auditor_id, reason)| Req::RevokeAuditor(pb::AuditorAdminRequest { request_id, auditor_id, reason }))
            .boxed(),
        Rpc::WithdrawMedia => (rid, id_field(&p.admin.withdrawable, &p.admin.others, b), free_text(b))
            .prop_map(|(request_id, media_id, reason)| Req::WithdrawMedia(pb::WithdrawMediaRequest { request_id, media_id, reason }))
            .boxed(),
        Rpc::ChangePrice => {
            let max = engine::domain::catalog::PRICE_MINOR_MAX;
            let price = one_of(vec![
                (b.plausible(3), select(vec![99u64, 199, 250, 1000]).boxed()),
                (2, select(vec![max - 1, max, max + 1]).boxed()),
                (3, u64_field(250, b)),
            ]);
            (rid, id_field(&p.admin.priced, &p.admin.others, b), price)
                .prop_map(|(request_id, media_id, price_minor)| Req::ChangePrice(pb::ChangePriceRequest { request_id, media_id, price_minor }))
                .boxed()
        }
        Rpc::RevokeCerts => {
            // One serial, or every certificate, as the handler wants exactly one of them;
            // and, hostile, both or neither.
            let serial = id_field(&p.admin.serials, &p.admin.others, b);
            let which = one_of(vec![
                (b.plausible(3), serial.clone().prop_map(|serial| (serial, false)).boxed()),
                (b.plausible(2), Just((String::new(), true)).boxed()),
                (1, serial.prop_map(|serial| (serial, true)).boxed()),
                (1, Just((String::new(), false)).boxed()),
            ]);
            (rid, id_field(&p.admin.consumers, &p.admin.others, b), which, free_text(b))
                .prop_map(|(request_id, consumer_id, (cert_serial, every_cert), reason)| {
                    Req::RevokeCerts(pb::RevokeCertsRequest { request_id, consumer_id, cert_serial, reason, every_cert })
                })
                .boxed()
        }
        Rpc::ListVouchers => {
            let set =
                one_of(vec![(b.plausible(3), select(vec!["", "pending", "undelivered", "delivered"]).prop_map(String::from).boxed()), (2, hostile_text())]);
            let statuses = vec!["", "Pending", "Authorized", "Issued", "Redeeming", "Delivered", "Voided", "Refunded", "None", "pending"];
            let status = one_of(vec![(b.plausible(3), select(statuses).prop_map(String::from).boxed()), (2, hostile_text())]);
            (set, status, u32_field(10, b), cursor(b))
                .prop_map(|(set, status, limit, cursor)| Req::ListVouchers(pb::ListVouchersRequest { set, status, limit, cursor }))
                .boxed()
        }
        Rpc::GetStatement => {
            let period =
                one_of(vec![(b.plausible(3), select(vec!["2026-01", "1999-12", "2026-13", "2026-00"]).prop_map(String::from).boxed()), (2, hostile_text())]);
            period.prop_map(|period| Req::GetStatement(pb::GetStatementRequest { period })).boxed()
        }
        Rpc::ListCatalog => (cursor(b), u32_field(10, b)).prop_map(|(cursor, limit)| Req::ListCatalog(pb::ListCatalogRequest { cursor, limit })).boxed(),
        Rpc::SearchCatalog => (free_text(b), cursor(b), u32_field(10, b))
            .prop_map(|(text, cursor, limit)| Req::SearchCatalog(pb::SearchCatalogRequest { text, cursor, limit }))
            .boxed(),
        Rpc::GetLedger => Just(Req::GetLedger(pb::GetLedgerRequest {})).boxed(),
        // A key id the key directory does not hold as its current key: FAILED_PRECONDITION
        // (no key file is written by a call: `keys rotate` writes them).
        Rpc::RotateEngineKey => {
            (rid, free_text(b)).prop_map(|(request_id, key_id)| Req::RotateEngineKey(pb::RotateEngineKeyRequest { request_id, key_id })).boxed()
        }
        Rpc::RevokeEngineKey => {
            (rid, free_text(b)).prop_map(|(request_id, key_id)| Req::RevokeEngineKey(pb::RevokeEngineKeyRequest { request_id, key_id })).boxed()
        }
        Rpc::RotateTokenKey => {
            (rid, u32_field(8, b)).prop_map(|(request_id, key_id)| Req::RotateTokenKey(pb::RotateTokenKeyRequest { request_id, key_id })).boxed()
        }
        Rpc::RotateCheckpointKey => {
            (rid, free_text(b)).prop_map(|(request_id, vkey)| Req::RotateCheckpointKey(pb::RotateCheckpointKeyRequest { request_id, vkey })).boxed()
        }
        Rpc::SetRentalWindow => {
            let bound = || {
                one_of(vec![
                    (b.plausible(3), select(vec![0u64, 999, 1_000, 3_600_000, 30 * 86_400_000, 30 * 86_400_000 + 1]).boxed()),
                    (2, u64_field(86_400_000, b)),
                ])
            };
            (rid, bound(), bound())
                .prop_map(|(request_id, window_ms_min, window_ms_max)| {
                    Req::SetRentalWindow(pb::SetRentalWindowRequest { request_id, window_ms_min, window_ms_max })
                })
                .boxed()
        }
        Rpc::ListOrders => (u32_field(10, b), cursor(b)).prop_map(|(limit, cursor)| Req::ListOrders(pb::ListOrdersRequest { limit, cursor })).boxed(),
        Rpc::ListParties => {
            let kind = one_of(vec![
                (b.plausible(3), select(vec!["", "merchant", "node", "auditor", "certificate"]).prop_map(String::from).boxed()),
                (2, hostile_text()),
            ]);
            (kind, cursor(b), u32_field(10, b)).prop_map(|(kind, cursor, limit)| Req::ListParties(pb::ListPartiesRequest { kind, cursor, limit })).boxed()
        }
        Rpc::GetAccountPoints => account().prop_map(|account_id| Req::GetAccountPoints(pb::AccountPointsRequest { account_id })).boxed(),
        Rpc::Statement => {
            let holder = one_of(vec![
                (b.plausible(3), select(vec!["owner", "artist", "rights_agent", "merchant", ""]).prop_map(String::from).boxed()),
                (2, hostile_text()),
            ]);
            let period = one_of(vec![(b.plausible(3), select(vec!["2026-01", "1999-12", "2026-13"]).prop_map(String::from).boxed()), (2, hostile_text())]);
            (holder, free_text(b), period).prop_map(|(holder, name, period)| Req::Statement(pb::RightsStatementRequest { holder, name, period })).boxed()
        }
    }
}

/// A read's cursor: none, the hex of bytes (what pages answer, or not), or hostile text.
fn cursor(b: Bias) -> BoxedStrategy<String> {
    one_of(vec![(b.plausible(3), Just(String::new()).boxed()), (3, vec(any::<u8>(), 0..300).prop_map(hex::encode).boxed()), (2, hostile_text())])
}

/// Royalty terms: the standard ones, arbitrary ones (shares and names), or none.
fn arb_terms(b: Bias) -> BoxedStrategy<Option<pb::RoyaltyTermsInput>> {
    let bps = || u32_field(3000, b);
    let terms = (bps(), bps(), bps(), free_text(b), free_text(b), free_text(b)).prop_map(
        |(retailer_bps, distributor_bps, owner_bps, distributor, owner, rights_agent)| pb::RoyaltyTermsInput {
            retailer_bps,
            distributor_bps,
            owner_bps,
            distributor,
            owner,
            rights_agent,
        },
    );
    one_of(vec![(b.plausible(3), Just(Some(client::standard_terms("label-1"))).boxed()), (3, terms.prop_map(Some).boxed()), (1, Just(None).boxed())])
}

pub(super) fn arb_publish(p: &Pools, rid: BoxedStrategy<String>, b: Bias) -> BoxedStrategy<Req> {
    let bps = || u32_field(3000, b);
    let terms = (bps(), bps(), bps(), free_text(b), free_text(b), free_text(b)).prop_map(
        |(retailer_bps, distributor_bps, owner_bps, distributor, owner, rights_agent)| pb::RoyaltyTermsInput {
            retailer_bps,
            distributor_bps,
            owner_bps,
            distributor,
            owner,
            rights_agent,
        },
    );
    let terms =
        one_of(vec![(b.plausible(3), Just(Some(client::standard_terms("label-1"))).boxed()), (3, terms.prop_map(Some).boxed()), (1, Just(None).boxed())]);
    let containers: Vec<Vec<u8>> = p.uploads.iter().map(|(container, _)| container.clone()).collect();
    let wrapped: Vec<Vec<u8>> = p.uploads.iter().map(|(_, key)| key.clone()).collect();
    let upload = one_of(vec![(b.plausible(3), select(p.uploads.clone()).boxed()), (3, (bytes_field(&containers, b), bytes_field(&wrapped, b)).boxed())]);
    let rendition = (free_text(b), u32_field(256, b), bytes_field(&[vec![3u8; 32]], b), u64_field(300, b))
        .prop_map(|(name, bitrate_kbps, content_hash, size_bytes)| pb::RenditionInput { name, bitrate_kbps, content_hash, size_bytes });
    let renditions = one_of(vec![
        (b.plausible(3), Just(vec![pb::RenditionInput { name: "high".into(), bitrate_kbps: 256, content_hash: vec![3; 32], size_bytes: 300 }]).boxed()),
        (3, vec(rendition, 0..4).boxed()),
    ]);
    let preview = one_of(vec![
        (b.plausible(2), Just(Some(pb::PreviewClipInput { start_ms: 0, duration_ms: 30_000 })).boxed()),
        (2, (u64_field(0, b), u64_field(30_000, b)).prop_map(|(start_ms, duration_ms)| Some(pb::PreviewClipInput { start_ms, duration_ms })).boxed()),
        (1, Just(None).boxed()),
    ]);
    let head = (rid, free_text(b), free_text(b), vec(free_text(b), 0..3), u64_field(60_000, b), u64_field(99, b), free_text(b));
    let tail = (terms, upload, any::<bool>(), renditions, preview, free_text(b), bytes_field(&[], b));
    (head, tail)
        .prop_map(
            |(
                (request_id, title, artist, authors, length_ms, price_minor, currency),
                (terms, (container, wrapped_media_key), for_sale, renditions, preview, image_descriptor, preview_clip),
            )| {
                Req::PublishMedia(pb::PublishMediaRequest {
                    request_id,
                    title,
                    artist,
                    authors,
                    length_ms,
                    price_minor,
                    currency,
                    terms,
                    container,
                    wrapped_media_key,
                    for_sale,
                    renditions,
                    preview,
                    image_descriptor,
                    preview_clip,
                })
            },
        )
        .boxed()
}

// ---- raw bodies ----

/// One thing done to an encoded message.
#[derive(Clone, Debug)]
pub(super) enum Mutation {
    FlipBit { at: Index, bit: u8 },
    Overwrite { at: Index, byte: u8 },
    Insert { at: Index, byte: u8 },
    Delete { at: Index },
    Truncate { at: Index },
}

pub(super) fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => (any::<Index>(), prop_oneof![any::<u8>(), Just(0x00), Just(0x7f), Just(0x80), Just(0xff)]).prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        2 => any::<Index>().prop_map(|at| Mutation::Delete { at }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

pub(super) fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match mutation {
        Mutation::FlipBit { at, bit } if len > 0 => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Overwrite { at, byte } if len > 0 => bytes[at.index(len)] = *byte,
        Mutation::Insert { at, byte } => bytes.insert(at.index(len + 1), *byte),
        Mutation::Delete { at } if len > 0 => {
            bytes.remove(at.index(len));
        }
        Mutation::Truncate { at } => bytes.truncate(at.index(len + 1)),
        Mutation::FlipBit { .. } | Mutation::Overwrite { .. } | Mutation::Delete { .. } => {}
    }
}

/// A piece of protobuf that is malformed, or well-formed with the wrong type for a field.
#[derive(Clone, Debug)]
pub(super) enum Fragment {
    /// A varint field whose value never ends.
    TruncatedVarint { field: u32, continued: usize },
    /// A varint of 11 bytes (more than any 64-bit value needs).
    OverlongVarint { field: u32 },
    /// A field with the wire type the schema does not give it (or does), framed correctly.
    WireType { field: u32, wire_type: u8, value: u64 },
    /// A length-delimited field announcing more bytes than follow.
    ShortLength { field: u32, announced: u64, carried: usize },
    /// A length-delimited field that is not UTF-8.
    InvalidUtf8 { field: u32 },
    /// A start-group with no end, or a stray end-group.
    Group { field: u32, start: bool },
    /// Field number 0.
    FieldZero,
    /// A negative number as a 10-byte varint.
    Negative { field: u32, value: i64 },
    /// A nested message field full of garbage.
    Nested { field: u32, bytes: Vec<u8> },
}

pub(super) fn arb_fragment() -> impl Strategy<Value = Fragment> {
    let field = || prop_oneof![8 => 1u32..=15, 1 => 16u32..=1000, 1 => Just(536_870_911u32)];
    prop_oneof![
        2 => (field(), 0usize..12).prop_map(|(field, continued)| Fragment::TruncatedVarint { field, continued }),
        1 => field().prop_map(|field| Fragment::OverlongVarint { field }),
        4 => (field(), select(vec![0u8, 1, 2, 5]), any::<u64>()).prop_map(|(field, wire_type, value)| Fragment::WireType { field, wire_type, value }),
        2 => (field(), prop_oneof![Just(u64::MAX), Just(1u64 << 32), 1u64..100], 0usize..8).prop_map(|(field, announced, carried)| Fragment::ShortLength { field, announced, carried }),
        2 => field().prop_map(|field| Fragment::InvalidUtf8 { field }),
        1 => (field(), any::<bool>()).prop_map(|(field, start)| Fragment::Group { field, start }),
        1 => Just(Fragment::FieldZero),
        2 => (field(), prop_oneof![Just(-1i64), Just(i64::MIN), any::<i64>()]).prop_map(|(field, value)| Fragment::Negative { field, value }),
        1 => (field(), vec(any::<u8>(), 0..40)).prop_map(|(field, bytes)| Fragment::Nested { field, bytes }),
    ]
}

pub(super) fn write_fragment(fragment: &Fragment, out: &mut Vec<u8>) {
    match fragment {
        Fragment::TruncatedVarint { field, continued } => {
            key(*field, 0, out);
            out.extend(std::iter::repeat_n(0xff, *continued + 1));
        }
        Fragment::OverlongVarint { field } => {
            key(*field, 0, out);
            out.extend(std::iter::repeat_n(0xff, 10));
            out.push(0x01);
        }
        Fragment::WireType { field, wire_type, value } => {
            key(*field, *wire_type, out);
            match wire_type {
                0 => varint(*value, out),
                1 => out.extend_from_slice(&value.to_le_bytes()),
                5 => out.extend_from_slice(&(*value as u32).to_le_bytes()),
                _ => {
                    let bytes = value.to_le_bytes();
                    let length = (*value % 9) as usize;
                    varint(length as u64, out);
                    out.extend_from_slice(&bytes[..length.min(8)]);
                    out.extend(std::iter::repeat_n(b'a', length.saturating_sub(8)));
                }
            }
        }
        Fragment::ShortLength { field, announced, carried } => {
            key(*field, 2, out);
            varint(*announced, out);
            out.extend(std::iter::repeat_n(b'b', (*carried).min(*announced as usize)));
        }
        Fragment::InvalidUtf8 { field } => {
            key(*field, 2, out);
            out.extend_from_slice(&[0x02, 0xc3, 0x28]);
        }
        Fragment::Group { field, start } => key(*field, if *start { 3 } else { 4 }, out),
        Fragment::FieldZero => out.extend_from_slice(&[0x02, 0x00]),
        Fragment::Negative { field, value } => {
            key(*field, 0, out);
            varint(*value as u64, out);
        }
        Fragment::Nested { field, bytes } => {
            key(*field, 2, out);
            varint(bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }
    }
}

/// What a case sends.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(super) enum Body {
    Typed { near_valid: bool, request: Req },
    Raw { how: &'static str, bytes: Vec<u8> },
}

impl Body {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Body::Typed { near_valid: false, .. } => "typed: hostile fields",
            Body::Typed { near_valid: true, .. } => "typed: nearly valid",
            Body::Raw { how, .. } => how,
        }
    }

    pub(super) fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Typed { request, .. } => request.encode(),
            Body::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

pub(super) fn arb_body(rpc: Rpc, p: &Pools) -> BoxedStrategy<Body> {
    let typed = arb_request(rpc, p, Bias::Hostile);
    let near_valid = arb_request(rpc, p, Bias::NearValid).prop_map(|request| Body::Typed { near_valid: true, request });
    let mutated = (typed.clone(), vec(arb_mutation(), 1..5)).prop_map(|(request, mutations)| {
        let mut bytes = request.encode();
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        Body::Raw { how: "raw: mutated encoding", bytes }
    });
    let malformed = (typed.clone(), any::<bool>(), vec(arb_fragment(), 1..4)).prop_map(|(request, prefix, fragments)| {
        let mut bytes = if prefix { request.encode() } else { Vec::new() };
        for fragment in &fragments {
            write_fragment(fragment, &mut bytes);
        }
        Body::Raw { how: "raw: malformed protobuf", bytes }
    });
    let random = vec(any::<u8>(), 0..300).prop_map(|bytes| Body::Raw { how: "raw: random bytes", bytes });
    // Another RPC's request, well-formed: fields of the wrong types and meanings. An
    // administrative change gets only the other changes' requests, which name sacrificial
    // objects: it would act on whatever another request names where its ids are (a
    // Preview's media and region read as a WithdrawMedia's media and reason). RemoveNode
    // likewise: another request naming node Y where its node id is would remove Y, whose
    // later calls the judge still takes for Y's (seed 3 at 10,000 cases found it).
    let guarded = administrative(rpc) || rpc == Rpc::RemoveNode;
    let others: Vec<Rpc> = Rpc::ALL.iter().copied().filter(|&other| other != rpc && (!guarded || administrative(other))).collect();
    let pools = p.clone();
    let other = select(others)
        .prop_flat_map(move |other| arb_request(other, &pools, Bias::NearValid))
        .prop_map(|request| Body::Raw { how: "raw: another RPC's message", bytes: request.encode() });
    let mut arms = vec![
        (7, typed.prop_map(|request| Body::Typed { near_valid: false, request }).boxed()),
        (7, near_valid.boxed()),
        (3, mutated.boxed()),
        (3, malformed.boxed()),
        (1, random.boxed()),
        (1, other.boxed()),
    ];
    if rpc != Rpc::PublishMedia {
        let limit = rpc.body_limit();
        let oversized = select(vec![limit - FRAME_HEADER_BYTES, limit + 1 - FRAME_HEADER_BYTES, limit * 2])
            .prop_map(|bytes| Body::Raw { how: "raw: at or over the size limit", bytes: padded_empty(bytes) });
        arms.push((1, oversized.boxed()));
    }
    one_of(arms)
}

#[derive(Clone, Debug)]
pub(super) struct Case {
    pub(super) rpc: Rpc,
    pub(super) caller: Caller,
    pub(super) body: Body,
    /// Send the previous case again instead (an immediate retry).
    pub(super) retry: bool,
    /// Build the request from the fuzz's own earlier sales instead, when one fits (`chain`).
    pub(super) link: Option<super::chain::Link>,
}

pub(super) fn arb_case(p: &Pools) -> BoxedStrategy<Case> {
    let pools = p.clone();
    // Every RPC, with the steps of a sale more often than the rest, so that vouchers get
    // past Reserve before a Void ends them and the later steps meet live state.
    let rpc = one_of(
        Rpc::ALL
            .iter()
            .map(|&rpc| (if matches!(rpc, Rpc::Reserve | Rpc::Authorize | Rpc::IssueVoucher | Rpc::Redeem) { 3 } else { 1 }, Just(rpc).boxed()))
            .collect(),
    );
    rpc.prop_flat_map(move |rpc| {
        (Just(rpc), arb_caller(), arb_body(rpc, &pools), proptest::bool::weighted(0.08), proptest::option::weighted(0.35, super::chain::arb_link()))
    })
    .prop_map(|(rpc, caller, body, retry, link)| Case { rpc, caller, body, retry, link })
    .boxed()
}
