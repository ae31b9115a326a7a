//! Shared by the projection store tests: a deterministic generated event stream that
//! exercises every projection (vouchers through their whole lifecycle, points top-ups,
//! holds and refunds, settlement postings and their reversals, nodes and slots, previews,
//! multi-item deliveries, month changes, and seals signed with the test engine key), an in-memory `EventLog` over a fixed list of events, and a file
//! format for handing a stream to a child process.
//!
//! The stream is built with the public API only: `engine::wire::encode` of `Recorded`
//! events, with seals from `Projections::unsigned_seal` signed by `royalty::sign_seal`.
#![allow(dead_code)]

use bytes::Bytes;
use engine::crypto::{RsaPublic, SecretKey, test_keys};
use engine::domain::event::{Event, LedgerAccountKind, MediaPublished, Payment, Posting, PreviewClip, ReservedItem, RoyaltyTerms, VoidReason};
use engine::domain::settlement::{Payer, SaleLine, settle};
use engine::domain::{Actor, Recorded};
use engine::ids::*;
use engine::log::{AppendError, AppendRequest, Appended, EventLog, ReadError, StoredEvent, VersionConflict};
use futures::stream::{BoxStream, StreamExt as _};
use projections::Projections;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::Path;

/// The royalty master key of every test stream.
pub fn master() -> SecretKey {
    SecretKey::from_bytes([7; 32])
}

pub fn engine_public() -> RsaPublic {
    test_keys::fixed_rsa().public()
}

/// The checkpoint key of the checkpointed test streams (`generate_checkpointed`).
pub fn checkpoint_key() -> engine::note::NoteSigner {
    engine::note::NoteSigner::new("vouchsafe.test/royalty", engine::crypto::Ed25519Private::from_seed(&[9; 32])).expect("a valid key name")
}

/// Keyed projections, as the engine and the auditor run them.
pub fn keyed() -> Projections {
    Projections::with_royalty_keys(&master(), Some(engine_public()))
}

/// A clean in-memory rebuild from sequence 1.
pub fn rebuild(events: &[StoredEvent], mut projections: Projections) -> Projections {
    for event in events {
        projections.apply(event).expect("a generated stream applies");
    }
    projections
}

/// splitmix64: deterministic, dependency-free randomness for generators and kill points.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n ≥ 1).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone)]
struct Sale {
    merchant: MerchantId,
    items: Vec<MediaId>,
    prices: Vec<u64>,
    account: Option<AccountId>,
    node: Option<NodeId>,
    delivered: usize,
    /// The settlement of the authorization (reversed by a refund).
    postings: Vec<Posting>,
    /// The points hold was posted (a refund credits the points back).
    posted: bool,
}

/// Every generated media's split.
fn terms(index: u64) -> RoyaltyTerms {
    RoyaltyTerms {
        retailer_bps: 3000,
        distributor_bps: 2000,
        owner_bps: 5000,
        distributor: "dist".into(),
        owner: "label".into(),
        rights_agent: format!("agent{}", index % 2),
    }
}

/// Builds the stream event by event.
struct Generator {
    rng: Rng,
    now_ms: i64,
    events: Vec<StoredEvent>,
    versions: BTreeMap<String, u64>,
    tracker: Projections,
    nodes: Vec<NodeId>,
    media: Vec<MediaId>,
    pending: Vec<VoucherId>,
    authorized: Vec<VoucherId>,
    issued: Vec<VoucherId>,
    redeeming: Vec<VoucherId>,
    sales: BTreeMap<VoucherId, Sale>,
    previews: Vec<(PreviewId, MediaId, NodeId)>,
    next_id: u64,
    usages_since_seal: u64,
    seal_every_usages: u64,
    checkpoint_key: Option<engine::note::NoteSigner>,
}

impl Generator {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn push(&mut self, event: Event) {
        let seq = self.events.len() as u64 + 1;
        let aggregate = event.aggregate();
        let subject = aggregate.subject();
        let version = self.versions.entry(subject.clone()).or_insert(0);
        *version += 1;
        let mut event_id = [0u8; 16];
        event_id.copy_from_slice(&blake3::hash(&seq.to_le_bytes()).as_bytes()[..16]);
        let recorded = Recorded {
            event_id,
            aggregate,
            aggregate_version: *version,
            recorded_at: Millis(self.now_ms),
            request_id: format!("gen-{seq}"),
            actor: Actor::engine(),
            command: "Generated".into(),
            event,
        };
        let stored = StoredEvent { seq: Seq(seq), subject, payload: Bytes::from(engine::wire::encode(&recorded)) };
        self.tracker.apply(&stored).expect("the generator's own events apply");
        self.events.push(stored);
    }

    fn pick(&mut self, len: usize) -> usize {
        self.rng.below(len as u64) as usize
    }

    fn any_node(&mut self) -> NodeId {
        let index = self.pick(self.nodes.len());
        self.nodes[index].clone()
    }

    fn any_media(&mut self) -> MediaId {
        let index = self.pick(self.media.len());
        self.media[index].clone()
    }

    fn take(list: &mut Vec<VoucherId>, index: usize) -> VoucherId {
        list.swap_remove(index)
    }

    fn setup(&mut self) {
        for (index, region) in ["eu", "eu", "us"].into_iter().enumerate() {
            let node_id = NodeId::new(format!("node{index}"));
            self.push(Event::NodeRegistered { node_id: node_id.clone(), region: region.into(), slots_max: 50, credential_hash: [index as u8; 32] });
            self.nodes.push(node_id);
        }
        for index in 0..5u64 {
            let media_id = MediaId::new(format!("media{index}"));
            self.push(Event::MediaPublished(MediaPublished {
                media_id: media_id.clone(),
                publisher: "pub".into(),
                title: format!("Track {index}"),
                artist: format!("Artist {}", index % 3),
                authors: vec![format!("Author {index}")],
                length_ms: 180_000 + index,
                price_minor: 100 + 50 * index,
                currency: "EUR".into(),
                terms: terms(index),
                renditions: vec![],
                preview: PreviewClip { start_ms: 0, duration_ms: 30_000 },
                image_descriptor: format!("cover{index}.jpg"),
                for_sale: true,
                engine_key_id: String::new(),
                wrapped_media_key: vec![index as u8; 8],
                container_format: 0,
            }));
            self.media.push(media_id);
        }
        for index in 0..4 {
            self.top_up(AccountId::new(format!("acct{index}")));
        }
    }

    fn top_up(&mut self, account_id: AccountId) {
        let amount = 1_000 + self.rng.below(100_000);
        self.push(Event::PointsCredited { account_id, amount, reason: "top-up".into(), sale: None });
    }

    fn step(&mut self) {
        // Mostly seconds apart; now and then a few days, so totals span several months.
        self.now_ms += if self.rng.chance(1) { 3 * 86_400_000 } else { self.rng.below(5_000) as i64 };
        match self.rng.below(100) {
            0..=21 => self.reserve(),
            22..=35 if !self.pending.is_empty() => self.authorize(),
            36..=39 if !self.pending.is_empty() => self.void_pending(),
            40..=41 if !self.authorized.is_empty() => self.refund(),
            42..=53 if !self.authorized.is_empty() => self.issue(),
            54..=63 if !self.issued.is_empty() => self.redeem(),
            64..=66 if !self.redeeming.is_empty() => self.fail_delivery(),
            67..=80 if !self.redeeming.is_empty() => self.deliver(),
            81..=87 => self.start_preview(),
            88..=93 if !self.previews.is_empty() => self.end_preview(),
            94 => {
                let node_id = self.any_node();
                let slots_max = 20 + self.rng.below(60) as u32;
                self.push(Event::NodeCapacityChanged { node_id, slots_max });
            }
            95 if self.rng.chance(10) => {
                let node_id = NodeId::new(self.id("node"));
                self.push(Event::NodeRegistered { node_id: node_id.clone(), region: "us".into(), slots_max: 30, credential_hash: [9; 32] });
                if let Some(old) = self.nodes.first().cloned()
                    && self.nodes.len() > 3
                {
                    self.push(Event::NodeDrained { node_id: old });
                }
                self.nodes.push(node_id);
            }
            96 => {
                let account_id = AccountId::new(format!("acct{}", self.rng.below(4)));
                self.top_up(account_id);
            }
            _ => self.push(Event::ConfigChanged { key: "noise".into(), value: self.now_ms.to_string() }),
        }
        if self.usages_since_seal >= self.seal_every_usages {
            self.seal();
        }
    }

    fn reserve(&mut self) {
        let voucher_id = VoucherId::new(self.id("v"));
        let merchant = MerchantId::new(format!("merchant{}", self.rng.below(3)));
        let count = 1 + self.rng.below(2) as usize;
        let items: Vec<MediaId> = (0..count).map(|_| self.any_media()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let expires_at = Millis(self.now_ms + 600_000);
        let prices: Vec<u64> = (0..items.len() as u64).map(|index| 99 + index).collect();
        let price_minor: u64 = prices.iter().sum();
        let account = self.rng.chance(30).then(|| AccountId::new(format!("acct{}", self.rng.below(4))));
        if let Some(account_id) = &account {
            self.push(Event::PointsHeld { account_id: account_id.clone(), voucher_id: voucher_id.clone(), amount: price_minor, expires_at, nonce_hash: None });
        }
        let payment = match &account {
            Some(account) => Payment::Points { account: account.clone() },
            None => Payment::Merchant { payment_ref: "card".into() },
        };
        self.push(Event::Reserved {
            voucher_id: voucher_id.clone(),
            merchant_id: merchant.clone(),
            items: items.iter().zip(&prices).map(|(media_id, price_minor)| ReservedItem { media_id: media_id.clone(), price_minor: *price_minor }).collect(),
            rendition: "high".into(),
            price_minor,
            currency: "EUR".into(),
            expires_at,
            payment,
            token_key_id: 1,
            auth_generation: 1,
            rental_ms: 0,
        });
        self.sales.insert(voucher_id.clone(), Sale { merchant, items, prices, account, node: None, delivered: 0, postings: vec![], posted: false });
        self.pending.push(voucher_id);
    }

    fn authorize(&mut self) {
        let index = self.pick(self.pending.len());
        let voucher_id = Self::take(&mut self.pending, index);
        let sale = self.sales.get_mut(&voucher_id).expect("sale of a pending voucher");
        let payer = match &sale.account {
            Some(account) => Payer { kind: LedgerAccountKind::ConsumerPoints, account: account.0.clone() },
            None => Payer { kind: LedgerAccountKind::MerchantClearing, account: sale.merchant.0.clone() },
        };
        let split = terms(0);
        let lines: Vec<SaleLine<'_>> = sale.prices.iter().map(|&price_minor| SaleLine { price_minor, terms: &split }).collect();
        sale.postings = settle(&payer, &sale.merchant.0, &lines);
        let (postings, account, amount) = (sale.postings.clone(), sale.account.clone(), sale.prices.iter().sum());
        self.push(Event::Authorized {
            voucher_id: voucher_id.clone(),
            receipt_key_id: 1,
            receipt_generation: 1,
            postings,
            rental_until: engine::ids::Millis(0),
        });
        if let Some(account_id) = account {
            // Now and then the posting is "lost" (an interrupted saga): the hold stays.
            if self.rng.chance(80) {
                self.push(Event::HoldPosted { account_id, voucher_id: voucher_id.clone(), amount });
                self.sales.get_mut(&voucher_id).expect("sale").posted = true;
            }
        }
        self.authorized.push(voucher_id);
    }

    fn void_pending(&mut self) {
        let index = self.pick(self.pending.len());
        let voucher_id = Self::take(&mut self.pending, index);
        let reason = if self.rng.chance(50) { VoidReason::TimedOut } else { VoidReason::Refunded };
        self.push(Event::Voided { voucher_id: voucher_id.clone(), reason, reversal: vec![] });
        if let Some(account_id) = self.sales[&voucher_id].account.clone() {
            let amount = self.sales[&voucher_id].prices.iter().sum();
            self.push(Event::HoldReleased { account_id, voucher_id, amount, reason });
        }
    }

    fn refund(&mut self) {
        let index = self.pick(self.authorized.len());
        let voucher_id = Self::take(&mut self.authorized, index);
        let sale = self.sales[&voucher_id].clone();
        self.push(Event::Voided { voucher_id: voucher_id.clone(), reason: VoidReason::Refunded, reversal: engine::domain::voucher::reverse(&sale.postings) });
        if let (Some(account_id), true) = (sale.account, sale.posted) {
            let amount = sale.prices.iter().sum();
            self.push(Event::PointsCredited { account_id, amount, reason: format!("refund {voucher_id}"), sale: None });
        }
    }

    fn issue(&mut self) {
        let index = self.pick(self.authorized.len());
        let voucher_id = Self::take(&mut self.authorized, index);
        let node_id = self.any_node();
        let sale = self.sales.get_mut(&voucher_id).expect("sale of an authorized voucher");
        sale.node = Some(node_id.clone());
        let (merchant_id, media_ids) = (sale.merchant.clone(), sale.items.clone());
        self.push(Event::VoucherIssued {
            voucher_id: voucher_id.clone(),
            node_id,
            merchant_id,
            media_ids,
            rendition: "high".into(),
            access_expires_at: Millis(self.now_ms + 60_000),
            previous_node: None,
            lease: 0,
        });
        self.issued.push(voucher_id);
    }

    fn redeem(&mut self) {
        let index = self.pick(self.issued.len());
        let voucher_id = Self::take(&mut self.issued, index);
        let node_id = self.sales[&voucher_id].node.clone().expect("issued to a node");
        let consumer = format!("consumer{}", self.rng.below(5));
        self.push(Event::RedemptionAccepted {
            voucher_id: voucher_id.clone(),
            node_id,
            consumer_id: ConsumerId::new(consumer.clone()),
            cert_serial: CertSerial::new(format!("cert-{consumer}")),
            wrapped_key_hashes: vec![[1; 32]],
            // As events written before these fields existed: the golden digests stay.
            challenge_hash: None,
            consumer_key_hash: None,
            released_media: Vec::new(),
            rental_play: 0,
        });
        self.redeeming.push(voucher_id);
    }

    fn fail_delivery(&mut self) {
        let index = self.pick(self.redeeming.len());
        let voucher_id = Self::take(&mut self.redeeming, index);
        let node_id = self.sales[&voucher_id].node.clone().expect("issued to a node");
        self.push(Event::DeliveryFailed { voucher_id: voucher_id.clone(), node_id, reason: "network".into() });
        self.issued.push(voucher_id);
    }

    fn deliver(&mut self) {
        let index = self.pick(self.redeeming.len());
        let voucher_id = self.redeeming[index].clone();
        let sale = self.sales.get_mut(&voucher_id).expect("sale of a redeeming voucher");
        let media_id = sale.items[sale.delivered].clone();
        sale.delivered += 1;
        let voucher_complete = sale.delivered == sale.items.len();
        let node_id = sale.node.clone().expect("issued to a node");
        self.push(Event::Delivered {
            voucher_id: voucher_id.clone(),
            node_id,
            media_id,
            cert_serial: CertSerial::new("cert"),
            content_hash: [2; 32],
            size_bytes: 1_000,
            voucher_complete,
        });
        self.usages_since_seal += 1;
        if voucher_complete {
            self.redeeming.swap_remove(index);
        }
    }

    fn start_preview(&mut self) {
        let preview_id = PreviewId::new(self.id("p"));
        let media_id = self.any_media();
        let node_id = self.any_node();
        let merchant_id = MerchantId::new(format!("merchant{}", self.rng.below(3)));
        self.push(Event::PreviewStarted {
            preview_id: preview_id.clone(),
            media_id: media_id.clone(),
            node_id: node_id.clone(),
            merchant_id,
            clip_ms: 30_000,
            lapses_at: Millis(0),
            lease: 0,
        });
        self.previews.push((preview_id, media_id, node_id));
    }

    fn end_preview(&mut self) {
        let index = self.pick(self.previews.len());
        let (preview_id, media_id, node_id) = self.previews.swap_remove(index);
        let played_ms = self.rng.below(30_000);
        self.push(Event::PreviewEnded { preview_id, played_ms, media_id, node_id });
        self.usages_since_seal += 1;
    }

    fn seal(&mut self) {
        let Ok(Some(mut seal)) = self.tracker.unsigned_seal(1) else { return };
        engine::seal::sign_seal_with(&test_keys::fixed_rsa(), self.checkpoint_key.as_ref(), &mut seal).expect("sign a seal");
        self.push(Event::RightsReportSealed(seal));
        self.usages_since_seal = 0;
    }
}

/// A deterministic stream of about `count` events (at least `count`), sealed every
/// `seal_every_usages` royalty entries.
pub fn generate(seed: u64, count: usize, seal_every_usages: u64) -> Vec<StoredEvent> {
    generate_with(seed, count, seal_every_usages, None)
}

/// As `generate`, each seal a C2SP checkpoint signed with `checkpoint_key()`.
pub fn generate_checkpointed(seed: u64, count: usize, seal_every_usages: u64) -> Vec<StoredEvent> {
    generate_with(seed, count, seal_every_usages, Some(checkpoint_key()))
}

fn generate_with(seed: u64, count: usize, seal_every_usages: u64, checkpoint_key: Option<engine::note::NoteSigner>) -> Vec<StoredEvent> {
    let mut generator = Generator {
        rng: Rng::new(seed),
        now_ms: 1_767_225_600_000, // 2026-01-01
        events: Vec::with_capacity(count + 16),
        versions: BTreeMap::new(),
        tracker: keyed(),
        nodes: vec![],
        media: vec![],
        pending: vec![],
        authorized: vec![],
        issued: vec![],
        redeeming: vec![],
        sales: BTreeMap::new(),
        previews: vec![],
        next_id: 0,
        usages_since_seal: 0,
        seal_every_usages,
        checkpoint_key,
    };
    generator.setup();
    while generator.events.len() < count {
        generator.step();
    }
    let tracker = &generator.tracker;
    assert!(tracker.royalty.seal_faults.is_empty(), "the generator's seals verify: {:?}", tracker.royalty.seal_faults);
    generator.events
}

/// A fixed list of events behind the `EventLog` trait: reads and a `follow` that yields
/// every event from a sequence on, pausing (returning `Pending` once) at pseudo-random
/// places so that `ready_chunks` ends batches of varied sizes, then ends.
pub struct VecLog {
    pub events: Vec<StoredEvent>,
    /// `follow` pauses before about one event in this many (0: never).
    pub pause_every: u64,
}

impl VecLog {
    pub fn new(events: Vec<StoredEvent>) -> Self {
        VecLog { events, pause_every: 50 }
    }
}

#[async_trait::async_trait]
impl EventLog for VecLog {
    async fn append(&self, _request: AppendRequest) -> Result<Result<Appended, VersionConflict>, AppendError> {
        Err(AppendError::Unavailable("a VecLog is read-only".into()))
    }

    async fn read_subject(&self, subject: &str) -> Result<Vec<StoredEvent>, ReadError> {
        Ok(self.events.iter().filter(|event| event.subject == subject).cloned().collect())
    }

    async fn read_from(&self, from: Seq, limit: usize) -> Result<Vec<StoredEvent>, ReadError> {
        let start = usize::try_from(from.0.max(1) - 1).unwrap_or(usize::MAX);
        Ok(self.events.iter().skip(start).take(limit).cloned().collect())
    }

    async fn last_seq(&self) -> Result<Seq, ReadError> {
        Ok(Seq(self.events.len() as u64))
    }

    fn follow(&self, from: Seq) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
        let start = usize::try_from(from.0.max(1) - 1).unwrap_or(usize::MAX);
        let events: Vec<StoredEvent> = self.events.iter().skip(start).cloned().collect();
        let pause_every = self.pause_every;
        futures::stream::iter(events)
            .then(move |event| async move {
                if pause_every > 0 && u64::from(blake3::hash(&event.seq.0.to_le_bytes()).as_bytes()[0]).is_multiple_of(pause_every) {
                    tokio::task::yield_now().await;
                }
                Ok(event)
            })
            .boxed()
    }
}

/// Writes a stream to a file (seq, subject, payload; lengths little-endian), for a child.
pub fn write_stream(path: &Path, events: &[StoredEvent]) {
    let mut bytes = Vec::new();
    for event in events {
        bytes.extend_from_slice(&event.seq.0.to_le_bytes());
        bytes.extend_from_slice(&(event.subject.len() as u32).to_le_bytes());
        bytes.extend_from_slice(event.subject.as_bytes());
        bytes.extend_from_slice(&(event.payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&event.payload);
    }
    std::fs::File::create(path).and_then(|mut file| file.write_all(&bytes)).expect("write the stream file");
}

pub fn read_stream(path: &Path) -> Vec<StoredEvent> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|mut file| file.read_to_end(&mut bytes)).expect("read the stream file");
    let mut rest = &bytes[..];
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head.to_vec()
    };
    let mut events = Vec::new();
    let mut read = 0;
    while read < bytes.len() {
        let seq = u64::from_le_bytes(take(8).try_into().expect("8 bytes"));
        let subject_len = u32::from_le_bytes(take(4).try_into().expect("4 bytes")) as usize;
        let subject = String::from_utf8(take(subject_len)).expect("UTF-8 subject");
        let payload_len = u32::from_le_bytes(take(4).try_into().expect("4 bytes")) as usize;
        let payload = Bytes::from(take(payload_len));
        read += 16 + subject_len + payload_len;
        events.push(StoredEvent { seq: Seq(seq), subject, payload });
    }
    events
}
