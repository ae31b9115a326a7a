//! The royalty-log projection: one chained entry per released media item and per
//! `PreviewEnded`, in stream order, enriched from the catalog and the sale; royalty
//! totals; and the check of every `RightsReportSealed` against the chain it covers.
//!
//! Key release is the usage: a `RedemptionAccepted` names the media whose keys it releases
//! for the first time, and each gets its entry there, once per (voucher, media) however
//! many retries follow; a rental's every play (`rental_play` > 0) gets one per media, the
//! first with the sale's price (the window paid once), the later ones with none (pay-per-view
//! counts, the amount stays what was paid). A `Delivered` adds an entry only for a media no release counted:
//! the streams written before releases were named count at delivery, as they were sealed.
//! A duplication unit's entry is its `UnitBound` (the event that pays for it, before its
//! key leaves): voucher field = the order, consumer field = the device.
//!
//! The chain needs the epoch's `A_0`, derived from the royalty master key (the auditor's),
//! or the chain's current position, which the engine's projection store keeps
//! (`store::chain_key`). Without either this projection still computes totals, and says
//! that the royalty chain needs `A_0`.
//!
//! Which catalog, preview and totals entries changed is noted for the projection store
//! (`Touched`); sales, one per voucher, are `Rows`, which a store keeps in sled rather than
//! in memory; entries, seals and faults only grow, so the store writes their tails. How the
//! store keeps all of it: `format`.

use crate::rows::{Rows, Touched};
use crate::royalty::{self, Chain, Entry, UsageKind};
use engine::crypto::{RsaPublic, SecretKey};
use engine::domain::event::{Event, RightsReportSealed, RoyaltyTerms};
use engine::domain::report::Report;
use engine::ids::{MediaId, PreviewId, Seq};
pub use entries::{Detached, Entries, LoggedEntry, SealPart};
use format::SaleRows;
use std::collections::{BTreeMap, BTreeSet};

mod entries;
pub(crate) mod format;
mod pinned;

/// The epoch every chain currently starts in (key rotation will add epochs).
pub const EPOCH: u64 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MediaInfo {
    pub(crate) title: String,
    pub(crate) artist: String,
    pub(crate) authors: Vec<String>,
    pub(crate) length_ms: u64,
    pub(crate) image_descriptor: String,
    pub(crate) terms: RoyaltyTerms,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sale {
    pub(crate) merchant: String,
    pub(crate) currency: String,
    pub(crate) prices: BTreeMap<MediaId, u64>,
    /// The media of this sale whose usage has an entry.
    pub(crate) counted: BTreeSet<MediaId>,
}

/// A totals dimension (DESIGN.md: by artist, track, rights agent, merchant, period).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Dimension {
    Artist,
    Media,
    RightsAgent,
    Merchant,
    /// Calendar month (UTC), "YYYY-MM".
    Period,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TotalsLine {
    pub deliveries: u64,
    pub previews: u64,
    /// Royalty-bearing sale amount (deliveries and duplication units), in minor units.
    pub amount_minor: u64,
    /// Licensed duplication units bound.
    pub units: u64,
    /// Refund and chargeback adjustments, and the sale amount they took back (the net is
    /// `amount_minor - refunded_minor`).
    pub refunds: u64,
    pub refunded_minor: u64,
}

impl TotalsLine {
    /// Adds one usage: the one rule for every totals line and statement.
    pub fn count(&mut self, entry: &Entry) {
        match entry.kind {
            UsageKind::Delivery => {
                self.deliveries += 1;
                self.amount_minor = self.amount_minor.saturating_add(entry.sale_price_minor);
            }
            UsageKind::Preview => self.previews += 1,
            UsageKind::Duplication => {
                self.units += 1;
                self.amount_minor = self.amount_minor.saturating_add(entry.sale_price_minor);
            }
            UsageKind::Refund | UsageKind::Chargeback => {
                self.refunds += 1;
                self.refunded_minor = self.refunded_minor.saturating_add(entry.sale_price_minor);
            }
        }
    }

    /// The royalty-bearing amount after refunds and chargebacks.
    pub fn net_minor(&self) -> i128 {
        i128::from(self.amount_minor) - i128::from(self.refunded_minor)
    }
}

/// Why a recorded seal does not match the chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("seal at sequence {seq} (entries {first_entry}..={last_entry}): {reason}")]
pub struct SealFault {
    pub seq: Seq,
    pub first_entry: u64,
    pub last_entry: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct RoyaltyLog {
    pub(crate) catalog: BTreeMap<MediaId, MediaInfo>,
    /// The sale of every reserved voucher: what a delivery's entry names.
    pub(crate) sales: Rows<SaleRows>,
    /// The merchant of each started preview.
    pub(crate) previews: BTreeMap<PreviewId, String>,
    pub(crate) chain: Option<Chain>,
    pub(crate) engine_key: Option<RsaPublic>,
    /// The engine's keys before `engine_key` (a rotated key set, `engine::keyset`): a seal
    /// is checked with the key its `engine_key_id` names.
    pub(crate) older_engine_keys: Vec<RsaPublic>,
    /// Engine keys the stream revoked (`EngineKeyRevoked`): a seal they sign after that is a fault.
    pub revoked_engine_keys: BTreeSet<String>,
    /// Take the keys that `EngineKeyRotated` events announce as engine keys: the engine's own
    /// live view (`Live`), which trusts its stream, so the seals of another engine's new key
    /// check out; never an audit, whose keys are the auditor's `engine.pub.pem`.
    pub(crate) learns_engine_keys: bool,
    /// The chained entries, in order, each with its key commitment (with them the tiles'
    /// leaves are served without any chain secret, `tiles::TiledLog::following`), its
    /// source event's sequence and the usage digest after it (what a seal's
    /// `totals_digest` commits to); in a store, mostly in sled (`entries`).
    pub entries: Entries,
    /// The RFC 6962 tree over every entry's leaf (`royalty::leaf_data`), beside the chain.
    pub tree: engine::tlog::Tree,
    /// The checkpoint key (`checkpoint.vkey`) seals' checkpoints are checked with, when given.
    pub(crate) checkpoint_key: Option<engine::note::NoteVerifier>,
    /// Usage counted (with or without the chain).
    pub usages: u64,
    pub totals: BTreeMap<(Dimension, String), TotalsLine>,
    pub seals: Vec<RightsReportSealed>,
    /// When each seal was recorded (its event's `recorded_at`), beside `seals`; 0 for a
    /// seal a store kept before the times were.
    pub seal_times: Vec<i64>,
    pub seals_verified: u64,
    pub seal_faults: Vec<SealFault>,
    /// Entries bind their source event's stream sequence (the stream recorded
    /// `royalty.entry_binding` = 1 before them).
    pub(crate) bind_seq: bool,
    /// Index of `entries[0]`: 0, unless the log continues from a pinned checkpoint.
    pub entry_base: u64,
    /// The usage digest before `entries[0]` (the pinned seal's `totals_digest`).
    pub(crate) usage_digest_base: [u8; 32],
    /// An incremental audit's pinned checkpoint, until its seal is met (`pinned`).
    pub(crate) pinned: Option<Box<pinned::Pinned>>,
    /// The entries the event being applied recorded, for the read indexes' statements
    /// (`Projections::apply` drains it after each event; empty between events).
    pub(crate) recorded: Vec<Entry>,
    /// What changed since the projection store last committed this log.
    pub(crate) touched_catalog: Touched<MediaId>,
    pub(crate) touched_previews: Touched<PreviewId>,
    pub(crate) touched_totals: Touched<(Dimension, String)>,
    /// A revocation was applied since the projection store last committed this log.
    pub(crate) touched_revocations: bool,
}

impl RoyaltyLog {
    /// A log that can chain (it holds the master key) and check seal signatures.
    pub fn with_keys(master: &SecretKey, engine_key: Option<RsaPublic>) -> Self {
        Self { chain: Some(Chain::start(master, EPOCH)), engine_key, ..Self::default() }
    }

    /// Seals are checked with the key of a set their `engine_key_id` names: `engine_key` and
    /// these older ones (`engine.pub.pem` after a rotation).
    pub fn with_older_engine_keys(mut self, older: Vec<RsaPublic>) -> Self {
        self.older_engine_keys = older;
        self
    }

    /// Seals' checkpoints are also checked with this key (the vkey of `checkpoint.key`).
    pub fn with_checkpoint_key(mut self, checkpoint_key: Option<engine::note::NoteVerifier>) -> Self {
        self.checkpoint_key = checkpoint_key;
        self
    }

    /// Starts noting changes for the projection store.
    pub(crate) fn track_changes(&mut self) {
        self.touched_catalog.start();
        self.sales.track_changes();
        self.touched_previews.start();
        self.touched_totals.start();
    }

    /// Whether the royalty chain is being computed (the master key was given).
    pub fn chained(&self) -> bool {
        self.chain.is_some()
    }

    /// Entries in the log (those before a pinned checkpoint included).
    pub fn entry_count(&self) -> u64 {
        self.entry_base + self.entries.len() as u64
    }

    /// The next entry a seal must start at.
    pub fn next_seal_entry(&self) -> u64 {
        self.seals.last().map_or(0, |seal| seal.last_entry + 1)
    }

    /// The usage digest after entry `index`.
    pub fn usage_digest(&self, index: u64) -> Option<[u8; 32]> {
        Some(self.entries.get(index.checked_sub(self.entry_base)?)?.usage_digest)
    }

    /// Applies one event. For a seal, `sealed_head` is the stream head at the seal's
    /// `last_stream_seq` as this replay computed it (`None`: that position is unknown).
    pub fn apply(&mut self, seq: Seq, event: &Event, recorded_at_ms: i64, sealed_head: Option<[u8; 32]>) {
        match event {
            Event::MediaPublished(media) => {
                self.catalog.insert(
                    media.media_id.clone(),
                    MediaInfo {
                        title: media.title.clone(),
                        artist: media.artist.clone(),
                        authors: media.authors.clone(),
                        length_ms: media.length_ms,
                        image_descriptor: media.image_descriptor.clone(),
                        terms: media.terms.clone(),
                    },
                );
                self.touched_catalog.touch(&media.media_id);
            }
            Event::Reserved { voucher_id, merchant_id, items, currency, .. } => {
                let prices = items.iter().map(|item| (item.media_id.clone(), item.price_minor)).collect();
                self.sales.insert(voucher_id.clone(), Sale { merchant: merchant_id.0.clone(), currency: currency.clone(), prices, counted: BTreeSet::new() });
            }
            Event::PreviewStarted { preview_id, merchant_id, .. } => {
                self.previews.insert(preview_id.clone(), merchant_id.0.clone());
                self.touched_previews.touch(preview_id);
            }
            Event::RedemptionAccepted { voucher_id, cert_serial, released_media, rental_play, .. } => {
                for media_id in released_media {
                    self.count_usage(seq, recorded_at_ms, voucher_id, media_id, &cert_serial.0, *rental_play > 0);
                }
            }
            Event::Delivered { voucher_id, media_id, cert_serial, .. } => self.count_usage(seq, recorded_at_ms, voucher_id, media_id, &cert_serial.0, false),
            Event::Refunded { voucher_id, chargeback, media_ids, .. } => {
                let kind = if *chargeback { UsageKind::Chargeback } else { UsageKind::Refund };
                for media_id in media_ids {
                    self.count_adjustment(kind, seq, recorded_at_ms, voucher_id, media_id);
                }
            }
            Event::PreviewEnded { preview_id, played_ms, media_id, .. } => {
                let merchant = self.previews.get(preview_id).cloned().unwrap_or_default();
                let entry = self.entry(UsageKind::Preview, seq, recorded_at_ms, media_id, "", "", &merchant, 0, "", *played_ms);
                self.record(entry);
            }
            Event::UnitBound { order_id, device_id, charge: Some(charge), .. } => {
                let (media, price, currency) = (&charge.media_id, charge.price_minor, charge.currency.as_str());
                let entry =
                    self.entry(UsageKind::Duplication, seq, recorded_at_ms, media, order_id.as_str(), device_id, &charge.merchant.0, price, currency, 0);
                self.record(entry);
            }
            Event::RightsReportSealed(seal) => {
                self.check_seal(seq, seal, sealed_head);
                self.seal_times.push(recorded_at_ms);
            }
            Event::EngineKeyRotated { key_id, public_key_der, .. } => {
                self.check_key_window(seq, key_id);
                let known = self.engine_key.iter().chain(&self.older_engine_keys).any(|key| key.key_id() == *key_id);
                if self.learns_engine_keys
                    && !known
                    && let Ok(key) = RsaPublic::from_der(public_key_der)
                {
                    self.older_engine_keys.push(key);
                }
            }
            Event::EngineKeyRevoked { key_id } => {
                self.revoked_engine_keys.insert(key_id.clone());
                self.touched_revocations = true;
            }
            Event::ConfigChanged { key, value } if key == engine::domain::config::ROYALTY_ENTRY_BINDING_KEY => self.bind_seq = value == "1",
            _ => {}
        }
    }

    /// The entry of one media item's usage on `voucher_id`, unless it has one already; a
    /// rental's play (`play`) always has one, with the price only the first time.
    fn count_usage(&mut self, seq: Seq, recorded_at_ms: i64, voucher_id: &engine::ids::VoucherId, media_id: &MediaId, cert_serial: &str, play: bool) {
        let entry = self.sales.with_row(voucher_id, |sale| {
            let counted = sale.is_some_and(|sale| sale.counted.contains(media_id));
            if counted && !play {
                return None;
            }
            let price = if counted { 0 } else { sale.and_then(|sale| sale.prices.get(media_id).copied()).unwrap_or(0) };
            let (merchant, currency) = sale.map_or(("", ""), |sale| (sale.merchant.as_str(), sale.currency.as_str()));
            Some(self.entry(UsageKind::Delivery, seq, recorded_at_ms, media_id, voucher_id.as_str(), cert_serial, merchant, price, currency, 0))
        });
        let Some(entry) = entry else { return };
        self.sales.update(voucher_id, |sale| {
            sale.counted.insert(media_id.clone());
        });
        self.record(entry);
    }

    /// The adjustment entry of a refunded (or charged back) item whose usage was counted:
    /// its sale amount comes back out of the totals. Nothing for an item never counted.
    fn count_adjustment(&mut self, kind: UsageKind, seq: Seq, recorded_at_ms: i64, voucher_id: &engine::ids::VoucherId, media_id: &MediaId) {
        let entry = self.sales.with_row(voucher_id, |sale| {
            let sale = sale.filter(|sale| sale.counted.contains(media_id))?;
            let price = sale.prices.get(media_id).copied().unwrap_or(0);
            Some(self.entry(kind, seq, recorded_at_ms, media_id, voucher_id.as_str(), "", &sale.merchant, price, &sale.currency, 0))
        });
        if let Some(entry) = entry {
            self.record(entry);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        kind: UsageKind,
        seq: Seq,
        timestamp_ms: i64,
        media_id: &MediaId,
        voucher_id: &str,
        consumer_cert: &str,
        merchant: &str,
        sale_price_minor: u64,
        currency: &str,
        played_ms: u64,
    ) -> Entry {
        let media = self.catalog.get(media_id).cloned().unwrap_or_default();
        Entry {
            kind,
            source_seq: seq.0,
            timestamp_ms,
            title: media.title,
            artist: media.artist,
            authors: media.authors,
            length_ms: media.length_ms,
            sale_price_minor,
            currency: currency.to_string(),
            consumer_cert: consumer_cert.to_string(),
            voucher_id: voucher_id.to_string(),
            media_id: media_id.0.clone(),
            image_descriptor: media.image_descriptor,
            merchant: merchant.to_string(),
            rights_agent: media.terms.rights_agent,
            distributor: media.terms.distributor,
            owner: media.terms.owner,
            played_ms,
        }
    }

    fn record(&mut self, entry: Entry) {
        add_to_totals(&mut self.totals, &entry);
        if self.touched_totals.tracking() {
            for key in totals_keys(&entry) {
                self.touched_totals.touch(&key);
            }
        }
        let index = self.usages;
        self.usages += 1;
        let bound = self.bind_seq.then_some(entry.source_seq);
        if self.chain.is_some() {
            self.chain_entry(&entry.encode(), bound, entry.source_seq);
        } else if self.pinned.is_some() {
            self.wait_for_pin(index, &entry, bound);
        }
        self.recorded.push(entry);
    }

    /// Chains one encoded entry: its ciphertext, usage digest and tree leaf.
    fn chain_entry(&mut self, encoded: &[u8], bound: Option<u64>, source_seq: u64) {
        let Some(chain) = &mut self.chain else { return };
        let previous = self.entries.last().map_or(self.usage_digest_base, |last| last.usage_digest);
        let usage_digest = usage_digest_of_encoded(&previous, encoded);
        let (chained, commitment) = chain.append_committed(encoded, bound);
        self.tree.push(royalty::tree_leaf_hash(&chained, &commitment));
        self.entries.push(LoggedEntry { chained, commitment, source_seq, usage_digest });
    }

    /// An engine key is valid from the event that rotates it in until the one that revokes
    /// it: a seal it signed before its rotation was recorded is a fault (found at the
    /// rotation, `seq`), as one it signs after its revocation is (`check_seal`).
    fn check_key_window(&mut self, seq: Seq, key_id: &str) {
        if self.engine_key.is_none() {
            return;
        }
        if let Some(early) = self.seals.iter().find(|seal| seal.engine_key_id == key_id) {
            self.seal_faults.push(SealFault {
                seq,
                first_entry: early.first_entry,
                last_entry: early.last_entry,
                reason: format!("signed with the engine key {key_id} before the stream rotated it in (at this sequence): outside the key's validity"),
            });
        }
    }

    fn check_seal(&mut self, seq: Seq, seal: &RightsReportSealed, sealed_head: Option<[u8; 32]>) {
        let fault = |reason: String| SealFault { seq, first_entry: seal.first_entry, last_entry: seal.last_entry, reason };
        let expected_prev = self.seals.last().map_or([0; 32], Report::seal_hash);
        let problem = if seal.prev_seal_hash != expected_prev {
            Some("does not link to the previous seal".to_string())
        } else if seal.first_entry != self.next_seal_entry() || seal.last_entry < seal.first_entry {
            Some(format!("does not continue the sealed range (next entry {})", self.next_seal_entry()))
        } else if self.engine_key.is_some() && self.revoked_engine_keys.contains(&seal.engine_key_id) {
            Some(format!("signed with the engine key {}, which the stream revoked before this seal", seal.engine_key_id))
        } else if let Some(current) = &self.engine_key
            && !std::iter::once(current).chain(&self.older_engine_keys).any(|key| royalty::verify_seal(key, seal))
        {
            Some("signature does not verify with the engine key it names".to_string())
        } else if seal.last_stream_seq >= seq.0 {
            Some(format!("names stream position {}, not before the seal itself", seal.last_stream_seq))
        } else if sealed_head.is_none() {
            Some(format!(
                "names stream position {}, whose head is no longer known (before the previous seal's position, or more than {} events before the seal)",
                seal.last_stream_seq,
                crate::STREAM_HEADS_MAX
            ))
        } else if sealed_head != Some(seal.stream_head) {
            Some(format!("the stream up to sequence {} differs from what the seal signed (an event was altered)", seal.last_stream_seq))
        } else {
            None
        };
        // An incremental audit: the seal of the pinned checkpoint starts the chain and tree.
        let pinned_before = self.pinned.is_some();
        let problem = match problem {
            None if pinned_before => self.meet_pinned(seal),
            problem => problem,
        };
        // The pinned seal itself is checked by the checkpoint it carries, not by its range.
        let at_pin = pinned_before && self.chain.is_some();
        let problem = problem.or_else(|| {
            // Without the chain (no master key, or before the pinned checkpoint) only the
            // signature, links and stream head are checked.
            self.chain.as_ref().filter(|_| !at_pin)?;
            let count = self.entry_count();
            let Some(last) = seal.last_entry.checked_sub(self.entry_base).filter(|_| seal.last_entry < count) else {
                return Some(format!("covers entries up to {} but the log has {count}", seal.last_entry));
            };
            // The entries since the last seal: in memory, also in a store (`entries`).
            let first = seal.first_entry.saturating_sub(self.entry_base);
            let parts = self.entries.seal_parts(first, last + 1);
            let (Some(head), true) = (parts.last(), parts.len() as u64 == last + 1 - first) else {
                // Only a store's read error (which stops the store) gets here.
                return Some(format!("covers entries {}..={} that cannot be read back", seal.first_entry, seal.last_entry));
            };
            let ys: Vec<[u8; 32]> = parts.iter().map(|part| part.y).collect();
            if head.y != seal.head_y || head.z != seal.head_z {
                Some("head Y/Z differ from the chain".into())
            } else if royalty::merkle_root(&ys) != seal.merkle_root {
                Some("Merkle root differs from the chain".into())
            } else if head.usage_digest != seal.totals_digest {
                Some("totals digest differs from the entries".into())
            } else {
                seal.checkpoint.as_ref().and_then(|checkpoint| {
                    if checkpoint.tree_size != seal.last_entry + 1 {
                        Some(format!("checkpoint names tree size {}, not the {} entries sealed", checkpoint.tree_size, seal.last_entry + 1))
                    } else {
                        checkpoint_problem(&self.tree, checkpoint)
                    }
                })
            }
        });
        let problem = problem.or_else(|| self.checkpoint_signature_problem(seal));
        if at_pin {
            self.pinned = None;
        }
        match problem {
            Some(reason) => self.seal_faults.push(fault(reason)),
            None => self.seals_verified += 1,
        }
        self.seals.push(seal.clone());
    }

    /// Whether a seal's checkpoint is signed by the checkpoint key (when one is given), and a
    /// seal after one with a checkpoint has one too (dropping them is not a way back).
    fn checkpoint_signature_problem(&self, seal: &RightsReportSealed) -> Option<String> {
        let Some(checkpoint) = &seal.checkpoint else {
            let earlier = self.seals.iter().any(|earlier| earlier.checkpoint.is_some());
            return earlier.then(|| "has no checkpoint, though an earlier seal had one".to_string());
        };
        let verifier = self.checkpoint_key.as_ref()?;
        let note = engine::note::Checkpoint { origin: checkpoint.origin.clone(), size: checkpoint.tree_size, root: checkpoint.root };
        if checkpoint.origin != verifier.name() {
            Some(format!("checkpoint origin {:?} is not the checkpoint key's {:?}", checkpoint.origin, verifier.name()))
        } else if !verifier.verify(&note.text(), &checkpoint.signature) {
            Some("checkpoint signature does not verify with the checkpoint key".into())
        } else {
            None
        }
    }

    /// Feeds the state digest: the chain head, the usage digest, the totals and seals.
    pub fn digest_into(&self, field: &mut dyn FnMut(&[u8])) {
        field(&self.usages.to_le_bytes());
        field(&self.entry_count().to_le_bytes());
        // After a pinned checkpoint and no entry since, the chain's head is its last entry's Y.
        let head_y = match (self.entries.last(), &self.chain) {
            (Some(entry), _) => entry.chained.y,
            (None, Some(chain)) if self.entry_base > 0 => chain.head_y(),
            (None, _) => [0; 32],
        };
        field(&head_y);
        field(&self.entries.last().map_or(self.usage_digest_base, |last| last.usage_digest));
        field(&(self.totals.len() as u64).to_le_bytes());
        for ((dimension, key), line) in &self.totals {
            field(&[*dimension as u8]);
            field(key.as_bytes());
            field(&line.deliveries.to_le_bytes());
            field(&line.previews.to_le_bytes());
            field(&line.amount_minor.to_le_bytes());
            // Only lines with adjustments feed these (states without any keep their digest).
            if line.refunds > 0 {
                field(&line.refunds.to_le_bytes());
                field(&line.refunded_minor.to_le_bytes());
            }
        }
        field(&(self.seals.len() as u64).to_le_bytes());
        field(&self.seals.last().map_or([0; 32], Report::seal_hash));
    }
}

/// What is wrong with a seal's checkpoint against the tree: its size must be the sealed
/// entries', its root and its last leaf's audit path the tree's.
pub fn checkpoint_problem(tree: &engine::tlog::Tree, checkpoint: &engine::domain::event::SealCheckpoint) -> Option<String> {
    let size = checkpoint.tree_size;
    let Some(root) = tree.root(size) else { return Some(format!("checkpoint names tree size {size} but the tree has {}", tree.size())) };
    if root != checkpoint.root {
        return Some(format!("checkpoint root differs from the tree of the first {size} entries"));
    }
    let last = size.checked_sub(1).and_then(|last| tree.inclusion_proof(last, size));
    if last.as_deref() != Some(checkpoint.last_leaf_proof.as_slice()) {
        return Some("checkpoint's last-leaf proof differs from the tree".into());
    }
    None
}

/// The running digest of usage lines: `T_j = blake3(T_{j-1} ‖ canonical entry j)`.
pub fn usage_digest(previous: &[u8; 32], entry: &Entry) -> [u8; 32] {
    usage_digest_of_encoded(previous, &entry.encode())
}

/// The same over an entry already encoded (`Entry::encode`), which the royalty log has
/// anyway for its chain link.
fn usage_digest_of_encoded(previous: &[u8; 32], encoded: &[u8]) -> [u8; 32] {
    let mut hasher = engine::crypto::Hasher::new();
    hasher.update(previous);
    hasher.update(encoded);
    hasher.finalize()
}

/// The totals line of every dimension that one usage counts in.
fn totals_keys(entry: &Entry) -> [(Dimension, String); 5] {
    [
        (Dimension::Artist, entry.artist.clone()),
        (Dimension::Media, entry.media_id.clone()),
        (Dimension::RightsAgent, entry.rights_agent.clone()),
        (Dimension::Merchant, entry.merchant.clone()),
        (Dimension::Period, month_of(entry.timestamp_ms)),
    ]
}

crate::borrowed_key::borrowed_key! {
    /// A totals line's key, borrowed: adding a usage to a line the totals already hold
    /// builds no `String`.
    trait TotalsKey for (Dimension, String), parts (Dimension, &str) = |line| (line.0, &line.1)
}

/// Adds one usage to the totals of every dimension.
pub fn add_to_totals(totals: &mut BTreeMap<(Dimension, String), TotalsLine>, entry: &Entry) {
    let month = month_of(entry.timestamp_ms);
    for (dimension, key) in [
        (Dimension::Artist, entry.artist.as_str()),
        (Dimension::Media, entry.media_id.as_str()),
        (Dimension::RightsAgent, entry.rights_agent.as_str()),
        (Dimension::Merchant, entry.merchant.as_str()),
        (Dimension::Period, month.as_str()),
    ] {
        let line = match totals.get_mut(&(dimension, key) as &dyn TotalsKey) {
            Some(line) => line,
            None => totals.entry((dimension, key.to_string())).or_default(),
        };
        line.count(entry);
    }
}

/// "YYYY-MM" (UTC) of a Unix time in milliseconds (Howard Hinnant's civil-from-days).
pub fn month_of(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    use engine::domain::event::{Payment, ReservedItem};
    use engine::ids::{CertSerial, ConsumerId, MerchantId, Millis, NodeId, VoucherId};

    fn reserved(voucher: &str, media: &[&str]) -> Event {
        Event::Reserved {
            voucher_id: VoucherId::new(voucher),
            merchant_id: MerchantId::new("m1"),
            items: media.iter().map(|m| ReservedItem { media_id: MediaId::new(*m), price_minor: 100 }).collect(),
            rendition: "high".into(),
            price_minor: 100 * media.len() as u64,
            currency: "EUR".into(),
            expires_at: Millis(9),
            payment: Payment::Merchant { payment_ref: "card".into() },
            token_key_id: 1,
            auth_generation: 1,
            rental_ms: 0,
        }
    }
    fn redeemed(voucher: &str, released: &[&str]) -> Event {
        played(voucher, released, 0)
    }
    /// A redemption starting a rental's play `play` (0: not a rental).
    fn played(voucher: &str, released: &[&str], play: u32) -> Event {
        Event::RedemptionAccepted {
            voucher_id: VoucherId::new(voucher),
            node_id: NodeId::new("n1"),
            consumer_id: ConsumerId::new("alice"),
            cert_serial: CertSerial::new("c1"),
            wrapped_key_hashes: Vec::new(),
            challenge_hash: None,
            consumer_key_hash: None,
            released_media: released.iter().map(|m| MediaId::new(*m)).collect(),
            rental_play: play,
        }
    }
    fn delivered(voucher: &str, media: &str) -> Event {
        Event::Delivered {
            voucher_id: VoucherId::new(voucher),
            node_id: NodeId::new("n1"),
            media_id: MediaId::new(media),
            cert_serial: CertSerial::new("c1"),
            content_hash: [1; 32],
            size_bytes: 1,
            voucher_complete: false,
        }
    }
    fn usages_after(events: &[Event]) -> (u64, Vec<u64>) {
        let mut log = RoyaltyLog::default();
        for (index, event) in events.iter().enumerate() {
            log.apply(Seq(index as u64 + 1), event, 0, None);
        }
        (log.usages, log.totals.get(&(Dimension::Media, "md1".into())).map(|line| line.deliveries).into_iter().collect())
    }

    /// The attack this closes: 22 redemptions of one voucher after failed Confirms gave
    /// two consumers the key while the log counted the one delivery. Now the release is the
    /// usage: counted at the first redemption, before any Confirm, and once however many
    /// retries and deliveries follow.
    #[test]
    fn key_release_is_the_usage_counted_once() {
        let released = [reserved("v1", &["md1", "md2"]), redeemed("v1", &["md1", "md2"])];
        assert_eq!(usages_after(&released), (2, vec![1]), "counted at release, with no Confirm");
        let mut retried = released.to_vec();
        for _ in 0..3 {
            retried.push(redeemed("v1", &[]));
        }
        retried.extend([delivered("v1", "md1"), delivered("v1", "md2")]);
        assert_eq!(usages_after(&retried), (2, vec![1]), "retries and deliveries add nothing");
        // A stream written before releases were named (the protection's absence): the
        // redemption counts nothing and the delivery counts, as it was sealed.
        let legacy = [reserved("v1", &["md1"]), redeemed("v1", &[]), redeemed("v1", &[])];
        assert_eq!(usages_after(&legacy), (0, vec![]), "redemptions of old streams count nothing");
        let legacy = [reserved("v1", &["md1"]), redeemed("v1", &[]), delivered("v1", "md1"), delivered("v1", "md1")];
        assert_eq!(usages_after(&legacy), (1, vec![1]), "old streams count each media at its first delivery");
    }

    /// A rental's every play is a usage (pay-per-view), counted once per play however many
    /// retries follow within it; the window's price is in the first play's entry only.
    #[test]
    fn each_rental_play_is_a_usage_counted_once() {
        let mut events = vec![reserved("v1", &["md1"])];
        for play in 1..=3 {
            events.push(played("v1", &["md1"], play));
            // A retry within the play (a failed delivery redeemed again) releases nothing new.
            events.push(played("v1", &[], 0));
            events.push(delivered("v1", "md1"));
        }
        assert_eq!(usages_after(&events), (3, vec![3]), "three plays, three usages");
        let mut log = RoyaltyLog::default();
        for (index, event) in events.iter().enumerate() {
            log.apply(Seq(index as u64 + 1), event, 0, None);
        }
        assert_eq!(log.totals[&(Dimension::Media, "md1".into())].amount_minor, 100, "the window was paid once");
        // Control: the same releases without the play numbers (a purchase) count once.
        let bought: Vec<Event> = events
            .iter()
            .map(|event| {
                if let Event::RedemptionAccepted { released_media, .. } = event {
                    redeemed("v1", &released_media.iter().map(|m| m.as_str()).collect::<Vec<_>>())
                } else {
                    event.clone()
                }
            })
            .collect();
        assert_eq!(usages_after(&bought), (1, vec![1]));
    }

    /// A refund (or chargeback) after the release is one adjustment entry per counted item,
    /// chained like any entry: the totals keep the gross and the amount taken back, so the
    /// net is zero; an item never counted gets no adjustment.
    #[test]
    fn a_refund_after_release_adjusts_each_counted_item_once() {
        let refunded = |media: &[&str], chargeback: bool| Event::Refunded {
            voucher_id: VoucherId::new("v1"),
            reason: "asked".into(),
            chargeback,
            reversal: vec![],
            media_ids: media.iter().map(|m| MediaId::new(*m)).collect(),
        };
        let master = engine::crypto::SecretKey::from_bytes([3; 32]);
        let mut log = RoyaltyLog::with_keys(&master, None);
        let events = [reserved("v1", &["md1", "md2"]), redeemed("v1", &["md1"]), refunded(&["md1", "md2"], true)];
        for (index, event) in events.iter().enumerate() {
            log.apply(Seq(index as u64 + 1), event, 0, None);
        }
        assert_eq!(log.usages, 2, "the delivery, then one adjustment: md2 was never counted");
        assert_eq!(log.entries.len(), 2, "the adjustment is chained");
        let line = log.totals[&(Dimension::Media, "md1".into())];
        assert_eq!((line.deliveries, line.amount_minor, line.refunds, line.refunded_minor, line.net_minor()), (1, 100, 1, 100, 0));
        assert!(!log.totals.contains_key(&(Dimension::Media, "md2".into())), "nothing for the item never counted");
        // Control: without the refund the sale stands.
        let mut kept = RoyaltyLog::with_keys(&master, None);
        for (index, event) in events[..2].iter().enumerate() {
            kept.apply(Seq(index as u64 + 1), event, 0, None);
        }
        assert_eq!(kept.totals[&(Dimension::Media, "md1".into())].net_minor(), 100);
    }

    /// A bound duplication unit is a royalty-bearing usage (its own kind), at its charge's
    /// price; a unit bound before units were paid (no charge) counts nothing.
    #[test]
    fn a_paid_unit_is_a_duplication_usage() {
        use engine::domain::event::UnitCharge;
        use engine::ids::OrderId;
        let bound = |charge: Option<UnitCharge>| Event::UnitBound {
            order_id: OrderId::new("o1"),
            unit: 0,
            device_id: "dev-1".into(),
            device_public_key_hash: [1; 32],
            wrapped_key_hash: None,
            charge,
        };
        let charge =
            UnitCharge { merchant: MerchantId::new("m1"), media_id: MediaId::new("md1"), price_minor: 80, currency: "EUR".into(), postings: Vec::new() };
        let mut log = RoyaltyLog::default();
        log.apply(Seq(1), &bound(Some(charge)), 0, None);
        log.apply(Seq(2), &bound(None), 0, None);
        assert_eq!(log.usages, 1, "the paid unit, not the unpaid one");
        let line = log.totals[&(Dimension::Media, "md1".to_string())];
        assert_eq!((line.units, line.deliveries, line.amount_minor), (1, 0, 80));
    }

    #[test]
    fn months_from_unix_time() {
        assert_eq!(month_of(0), "1970-01");
        assert_eq!(month_of(951_782_400_000), "2000-02"); // 2000-02-29
        assert_eq!(month_of(1_795_392_000_000), "2026-11"); // 2026-11-23
        assert_eq!(month_of(-1), "1969-12");
    }
}
