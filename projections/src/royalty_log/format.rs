//! The royalty log's storage format in the projection store: the one conversion of its
//! catalog, sales, preview merchants, chained entries, totals, seals and seal faults to and
//! from bytes, what a commit writes of a changed log, and how the store reads one back.
//!
//! Keys (integers big-endian, so that key order is index order):
//! - `rc/` media → JSON `MediaRecord` (catalog data and royalty terms);
//! - `rs/` voucher → JSON `SaleRecord` (`SaleRows`, kept cold in sled by `Rows`);
//! - `rp/` preview → merchant;
//! - `re/` index → JSON `EntryRecord`: the chained entry with its source sequence, the
//!   usage digest after it, its leaf hash in the tree (the tree's upper levels are
//!   rebuilt from the leaves at load) and its key commitment (format 15);
//! - `rt/` dimension byte ‖ key → JSON `TotalsRecord`;
//! - `rl/` index → JSON `SealRecord`; `rf/` index → JSON `FaultRecord`;
//! - `rk/` engine key id → `revoked` (a key the stream revoked: seals it signs later are faults).
//!
//! Entries, seals and faults only grow, so a commit writes their tails (`Tails`: how many
//! the store holds). The usage and seal counters are in the store's checkpoint. Not stored:
//! the chain's current `A_j` (in the chain key file or re-derived from the master key, `store` module docs)
//! and the engine's public key (the caller passes it).

use super::{Dimension, EPOCH, Entries, LoggedEntry, MediaInfo, RoyaltyLog, Sale, SealFault, TotalsLine};
use crate::rows::{Prefix, RowError, RowKind, RowWrite, Rows, contiguous, decode_json, index_key, index_of, json, key, keyed_by_voucher, utf8};
use crate::royalty::ChainedEntry;
use crate::serde_hex::hex_array;
use engine::domain::event::{RightsReportSealed, RoyaltyTerms, SealCheckpoint};
use engine::ids::{MediaId, PreviewId, Seq, VoucherId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const CATALOG_PREFIX: &Prefix = b"rc/";
pub(crate) const SALE_PREFIX: &Prefix = b"rs/";
pub(crate) const PREVIEW_MERCHANT_PREFIX: &Prefix = b"rp/";
pub(crate) const ENTRY_PREFIX: &Prefix = b"re/";
pub(crate) const TOTALS_PREFIX: &Prefix = b"rt/";
pub(crate) const SEAL_PREFIX: &Prefix = b"rl/";
pub(crate) const FAULT_PREFIX: &Prefix = b"rf/";
pub(crate) const REVOKED_KEY_PREFIX: &Prefix = b"rk/";

/// Sales: `rs/` voucher → JSON `SaleRecord`.
#[derive(Debug)]
pub(crate) enum SaleRows {}

#[derive(Serialize, Deserialize)]
struct MediaRecord {
    title: String,
    artist: String,
    authors: Vec<String>,
    length_ms: u64,
    image_descriptor: String,
    retailer_bps: u32,
    distributor_bps: u32,
    owner_bps: u32,
    distributor: String,
    owner: String,
    rights_agent: String,
}

#[derive(Serialize, Deserialize)]
struct SaleRecord {
    merchant: String,
    currency: String,
    prices: Vec<(String, u64)>,
    /// The media whose usage has an entry.
    #[serde(default)]
    counted: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct EntryRecord {
    pub(super) entry: ChainedEntry,
    pub(super) source_seq: u64,
    #[serde(with = "hex_array")]
    pub(super) usage_digest: [u8; 32],
    #[serde(with = "hex_array")]
    leaf_hash: [u8; 32],
    /// The entry key's commitment (what its leaf holds beside `Y`, `Z`).
    #[serde(with = "hex_array")]
    pub(super) commitment: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct TotalsRecord {
    deliveries: u64,
    previews: u64,
    amount_minor: u64,
    #[serde(default)]
    units: u64,
    #[serde(default)]
    refunds: u64,
    #[serde(default)]
    refunded_minor: u64,
}

#[derive(Serialize, Deserialize)]
struct SealRecord {
    epoch: u64,
    first_entry: u64,
    last_entry: u64,
    #[serde(with = "hex_array")]
    head_y: [u8; 32],
    #[serde(with = "hex_array")]
    head_z: [u8; 32],
    #[serde(with = "hex_array")]
    merkle_root: [u8; 32],
    #[serde(with = "hex_array")]
    totals_digest: [u8; 32],
    #[serde(with = "hex_array")]
    prev_seal_hash: [u8; 32],
    engine_key_id: String,
    signature: String,
    last_stream_seq: u64,
    #[serde(with = "hex_array")]
    stream_head: [u8; 32],
    /// When the seal was recorded (absent in rows written before seal times were kept: 0).
    #[serde(default)]
    sealed_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint: Option<CheckpointRecord>,
}

/// A seal's checkpoint (`SealCheckpoint`).
#[derive(Serialize, Deserialize)]
struct CheckpointRecord {
    origin: String,
    tree_size: u64,
    #[serde(with = "hex_array")]
    root: [u8; 32],
    signature: String,
    last_leaf_proof: Vec<String>,
}

impl CheckpointRecord {
    fn of(checkpoint: &SealCheckpoint) -> Self {
        Self {
            origin: checkpoint.origin.clone(),
            tree_size: checkpoint.tree_size,
            root: checkpoint.root,
            signature: hex::encode(&checkpoint.signature),
            last_leaf_proof: checkpoint.last_leaf_proof.iter().map(hex::encode).collect(),
        }
    }

    fn checkpoint(self, index: u64) -> Result<SealCheckpoint, RowError> {
        let hex_error = |field: &'static str| move |source| RowError::Hex { kind: "seal", id: index.to_string(), field, source };
        let signature = hex::decode(&self.signature).map_err(hex_error("checkpoint signature"))?;
        let mut last_leaf_proof = Vec::with_capacity(self.last_leaf_proof.len());
        for text in &self.last_leaf_proof {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(text, &mut hash).map_err(hex_error("last leaf proof"))?;
            last_leaf_proof.push(hash);
        }
        Ok(SealCheckpoint { origin: self.origin, tree_size: self.tree_size, root: self.root, signature, last_leaf_proof })
    }
}

#[derive(Serialize, Deserialize)]
struct FaultRecord {
    seq: u64,
    first_entry: u64,
    last_entry: u64,
    reason: String,
}

impl RowKind for SaleRows {
    type Value = Sale;
    const PREFIX: &'static Prefix = SALE_PREFIX;
    keyed_by_voucher!();
    fn encode(sale: &Sale) -> Result<Vec<u8>, RowError> {
        json(
            &SaleRecord {
                merchant: sale.merchant.clone(),
                currency: sale.currency.clone(),
                prices: sale.prices.iter().map(|(media, price)| (media.0.clone(), *price)).collect(),
                counted: sale.counted.iter().map(|media| media.0.clone()).collect(),
            },
            "sale",
        )
    }
    fn decode(key: &VoucherId, bytes: &[u8]) -> Result<Sale, RowError> {
        let record: SaleRecord = decode_json(bytes, "sale", &key.0)?;
        let prices = record.prices.into_iter().map(|(media, price)| (MediaId(media), price)).collect();
        let counted = record.counted.into_iter().map(MediaId).collect();
        Ok(Sale { merchant: record.merchant, currency: record.currency, prices, counted })
    }
}

/// The stable one-byte code of a totals dimension (store keys).
fn dimension_byte(dimension: Dimension) -> u8 {
    match dimension {
        Dimension::Artist => 0,
        Dimension::Media => 1,
        Dimension::RightsAgent => 2,
        Dimension::Merchant => 3,
        Dimension::Period => 4,
    }
}

fn dimension_of(byte: u8) -> Option<Dimension> {
    match byte {
        0 => Some(Dimension::Artist),
        1 => Some(Dimension::Media),
        2 => Some(Dimension::RightsAgent),
        3 => Some(Dimension::Merchant),
        4 => Some(Dimension::Period),
        _ => None,
    }
}

fn totals_key(dimension: Dimension, name: &str) -> Vec<u8> {
    [&TOTALS_PREFIX[..], &[dimension_byte(dimension)], name.as_bytes()].concat()
}

fn media_value(media: &MediaInfo) -> Result<Vec<u8>, RowError> {
    let terms = &media.terms;
    let record = MediaRecord {
        title: media.title.clone(),
        artist: media.artist.clone(),
        authors: media.authors.clone(),
        length_ms: media.length_ms,
        image_descriptor: media.image_descriptor.clone(),
        retailer_bps: terms.retailer_bps,
        distributor_bps: terms.distributor_bps,
        owner_bps: terms.owner_bps,
        distributor: terms.distributor.clone(),
        owner: terms.owner.clone(),
        rights_agent: terms.rights_agent.clone(),
    };
    json(&record, "catalog entry")
}

fn totals_value(line: &TotalsLine) -> Result<Vec<u8>, RowError> {
    let record = TotalsRecord {
        deliveries: line.deliveries,
        previews: line.previews,
        amount_minor: line.amount_minor,
        units: line.units,
        refunds: line.refunds,
        refunded_minor: line.refunded_minor,
    };
    json(&record, "totals line")
}

fn seal_value(seal: &RightsReportSealed, sealed_at_ms: i64) -> Result<Vec<u8>, RowError> {
    let record = SealRecord {
        epoch: seal.epoch,
        first_entry: seal.first_entry,
        last_entry: seal.last_entry,
        head_y: seal.head_y,
        head_z: seal.head_z,
        merkle_root: seal.merkle_root,
        totals_digest: seal.totals_digest,
        prev_seal_hash: seal.prev_seal_hash,
        engine_key_id: seal.engine_key_id.clone(),
        signature: hex::encode(&seal.signature),
        last_stream_seq: seal.last_stream_seq,
        stream_head: seal.stream_head,
        sealed_at_ms,
        checkpoint: seal.checkpoint.as_ref().map(CheckpointRecord::of),
    };
    json(&record, "seal")
}

fn fault_value(fault: &SealFault) -> Result<Vec<u8>, RowError> {
    json(&FaultRecord { seq: fault.seq.0, first_entry: fault.first_entry, last_entry: fault.last_entry, reason: fault.reason.clone() }, "seal fault")
}

/// One changed catalog entry, sale, preview merchant or totals line (the new value;
/// `None`: removed), or one appended entry, seal or fault, copied out of the log under
/// the projections' lock.
pub(crate) enum Change {
    Catalog(MediaId, Option<MediaInfo>),
    Sale(VoucherId, Option<Sale>),
    PreviewMerchant(PreviewId, Option<String>),
    Totals((Dimension, String), Option<TotalsLine>),
    Entry(u64, Box<EntryRecord>),
    Seal(u64, Box<RightsReportSealed>, i64),
    Fault(u64, SealFault),
    RevokedKey(String),
}

impl Change {
    /// The key and value to store: encoded here, outside the projections' lock.
    pub(crate) fn write(self) -> Result<RowWrite, RowError> {
        Ok(match self {
            Change::Catalog(id, media) => RowWrite::put_or_remove(key(CATALOG_PREFIX, id.0.as_bytes()), media.as_ref().map(media_value).transpose()?),
            Change::Sale(id, sale) => RowWrite::put_or_remove(key(SALE_PREFIX, id.0.as_bytes()), sale.as_ref().map(SaleRows::encode).transpose()?),
            Change::PreviewMerchant(id, merchant) => RowWrite::put_or_remove(key(PREVIEW_MERCHANT_PREFIX, id.0.as_bytes()), merchant.map(String::into_bytes)),
            Change::Totals((dimension, name), line) => RowWrite::put_or_remove(totals_key(dimension, &name), line.as_ref().map(totals_value).transpose()?),
            Change::Entry(index, record) => RowWrite::Append { key: index_key(ENTRY_PREFIX, index), value: json(&*record, "royalty entry")? },
            Change::Seal(index, seal, sealed_at_ms) => RowWrite::Append { key: index_key(SEAL_PREFIX, index), value: seal_value(&seal, sealed_at_ms)? },
            Change::Fault(index, fault) => RowWrite::Append { key: index_key(FAULT_PREFIX, index), value: fault_value(&fault)? },
            Change::RevokedKey(key_id) => RowWrite::Put { key: key(REVOKED_KEY_PREFIX, key_id.as_bytes()), value: b"revoked".to_vec() },
        })
    }
}

/// How many entries, seals and seal faults a store holds: the append-only parts of the log
/// whose tails a commit writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tails {
    pub(crate) entries: u64,
    pub(crate) seals: u64,
    pub(crate) faults: u64,
}

impl RoyaltyLog {
    /// What changed since the last call, copied (no encoding, no I/O), for a commit, with
    /// the tails the store holds once it is written; `stored` is what it holds now.
    pub(crate) fn take_changes(&mut self, stored: Tails) -> Result<(Vec<Change>, Tails), Arc<RowError>> {
        let mut changes = Vec::new();
        for id in self.touched_catalog.take() {
            let media = self.catalog.get(&id).cloned();
            changes.push(Change::Catalog(id, media));
        }
        for (id, sale) in self.sales.take_changes()? {
            changes.push(Change::Sale(id, sale));
        }
        for id in self.touched_previews.take() {
            let merchant = self.previews.get(&id).cloned();
            changes.push(Change::PreviewMerchant(id, merchant));
        }
        if std::mem::take(&mut self.touched_revocations) {
            changes.extend(self.revoked_engine_keys.iter().cloned().map(Change::RevokedKey));
        }
        for key in self.touched_totals.take() {
            let line = self.totals.get(&key).copied();
            changes.push(Change::Totals(key, line));
        }
        let skip = |stored: u64| usize::try_from(stored).unwrap_or(usize::MAX);
        let leaves = self.tree.leaf_hashes();
        for (position, entry) in (stored.entries..).zip(self.entries.take_from(stored.entries)?) {
            let record = EntryRecord {
                entry: entry.chained.clone(),
                source_seq: entry.source_seq,
                usage_digest: entry.usage_digest,
                leaf_hash: leaves.get(skip(position)).copied().unwrap_or([0; 32]),
                commitment: entry.commitment,
            };
            changes.push(Change::Entry(position, Box::new(record)));
        }
        for (index, seal) in self.seals.iter().enumerate().skip(skip(stored.seals)) {
            changes.push(Change::Seal(index as u64, Box::new(seal.clone()), self.seal_times.get(index).copied().unwrap_or(0)));
        }
        for (index, fault) in self.seal_faults.iter().enumerate().skip(skip(stored.faults)) {
            changes.push(Change::Fault(index as u64, fault.clone()));
        }
        Ok((changes, self.tails()))
    }

    /// How many entries, seals and faults this log holds.
    pub(crate) fn tails(&self) -> Tails {
        Tails { entries: self.entries.len() as u64, seals: self.seals.len() as u64, faults: self.seal_faults.len() as u64 }
    }

    /// The batch `take_changes` took is stored: its sales leave memory, and so do its
    /// entries already sealed (`Entries::release`).
    pub(crate) fn rows_committed(&mut self) {
        self.sales.rows_committed();
        self.entries.release(self.next_seal_entry());
    }

    /// After the whole log was committed (a rebuild): its sales and sealed entries leave memory.
    pub(crate) fn spill(&mut self, db: &sled::Db) {
        self.sales.spill(db);
        self.entries.spill(db, self.next_seal_entry());
    }
}

/// A log as the store reads it back, pair by pair: sales checked and counted (they stay
/// in sled), everything else collected.
#[derive(Default)]
pub(crate) struct Reader {
    catalog: BTreeMap<MediaId, MediaInfo>,
    sales: usize,
    previews: BTreeMap<PreviewId, String>,
    /// How many entries were read (they come in index order, and stay in sled), with each
    /// one's leaf hash in the tree (its upper levels rebuilt from them) and the newest.
    entries: u64,
    tree: engine::tlog::Tree,
    last_entry: Option<EntryRecord>,
    totals: BTreeMap<(Dimension, String), TotalsLine>,
    seals: BTreeMap<u64, (RightsReportSealed, i64)>,
    faults: BTreeMap<u64, SealFault>,
    revoked_keys: std::collections::BTreeSet<String>,
}

impl Reader {
    /// Takes one stored pair; `false` when its prefix is not this format's.
    pub(crate) fn read(&mut self, prefix: &[u8], id: &[u8], value: &[u8]) -> Result<bool, RowError> {
        match prefix {
            p if p == CATALOG_PREFIX => {
                let id = utf8(id, "media")?;
                let record: MediaRecord = decode_json(value, "catalog entry", &id)?;
                let terms = RoyaltyTerms {
                    retailer_bps: record.retailer_bps,
                    distributor_bps: record.distributor_bps,
                    owner_bps: record.owner_bps,
                    distributor: record.distributor,
                    owner: record.owner,
                    rights_agent: record.rights_agent,
                };
                let media = MediaInfo {
                    title: record.title,
                    artist: record.artist,
                    authors: record.authors,
                    length_ms: record.length_ms,
                    image_descriptor: record.image_descriptor,
                    terms,
                };
                self.catalog.insert(MediaId(id), media);
            }
            p if p == SALE_PREFIX => {
                SaleRows::decode(&SaleRows::key_of(id)?, value)?;
                self.sales += 1;
            }
            p if p == PREVIEW_MERCHANT_PREFIX => {
                self.previews.insert(PreviewId(utf8(id, "preview")?), utf8(value, "merchant")?);
            }
            p if p == ENTRY_PREFIX => {
                let index = index_of(id, "royalty entry")?;
                let record: EntryRecord = decode_json(value, "royalty entry", &index.to_string())?;
                if record.entry.index != index || record.entry.epoch != EPOCH {
                    return Err(RowError::Misplaced {
                        kind: "royalty entry",
                        id: index.to_string(),
                        stored: format!("entry {} of epoch {}", record.entry.index, record.entry.epoch),
                    });
                }
                // sled hands the rows over in key order: index order.
                if index != self.entries {
                    return Err(RowError::Gaps { kind: "royalty entry", len: self.entries + 1, last: index });
                }
                self.entries += 1;
                self.tree.push(record.leaf_hash);
                self.last_entry = Some(record);
            }
            p if p == TOTALS_PREFIX => {
                let (&byte, name) = id.split_first().ok_or(RowError::Key { kind: "totals", expected: "a dimension byte and a name" })?;
                let dimension = dimension_of(byte).ok_or_else(|| RowError::Unknown {
                    kind: "totals line",
                    id: String::from_utf8_lossy(name).into_owned(),
                    field: "dimension",
                    value: byte.to_string(),
                })?;
                let name = utf8(name, "totals")?;
                let record: TotalsRecord = decode_json(value, "totals line", &name)?;
                self.totals.insert(
                    (dimension, name),
                    TotalsLine {
                        deliveries: record.deliveries,
                        previews: record.previews,
                        amount_minor: record.amount_minor,
                        units: record.units,
                        refunds: record.refunds,
                        refunded_minor: record.refunded_minor,
                    },
                );
            }
            p if p == SEAL_PREFIX => {
                let index = index_of(id, "seal")?;
                let record: SealRecord = decode_json(value, "seal", &index.to_string())?;
                let signature =
                    hex::decode(&record.signature).map_err(|source| RowError::Hex { kind: "seal", id: index.to_string(), field: "signature", source })?;
                let seal = RightsReportSealed {
                    epoch: record.epoch,
                    first_entry: record.first_entry,
                    last_entry: record.last_entry,
                    head_y: record.head_y,
                    head_z: record.head_z,
                    merkle_root: record.merkle_root,
                    totals_digest: record.totals_digest,
                    prev_seal_hash: record.prev_seal_hash,
                    engine_key_id: record.engine_key_id,
                    signature,
                    last_stream_seq: record.last_stream_seq,
                    stream_head: record.stream_head,
                    checkpoint: record.checkpoint.map(|checkpoint| checkpoint.checkpoint(index)).transpose()?,
                };
                self.seals.insert(index, (seal, record.sealed_at_ms));
            }
            p if p == FAULT_PREFIX => {
                let index = index_of(id, "seal fault")?;
                let record: FaultRecord = decode_json(value, "seal fault", &index.to_string())?;
                self.faults
                    .insert(index, SealFault { seq: Seq(record.seq), first_entry: record.first_entry, last_entry: record.last_entry, reason: record.reason });
            }
            p if p == REVOKED_KEY_PREFIX => {
                self.revoked_keys.insert(utf8(id, "revoked engine key")?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The log, its sales and sealed entries left in `db`, with the counters the store's
    /// checkpoint holds. Entries, seals and faults must be numbered 0..len.
    pub(crate) fn finish(self, db: &sled::Db, usages: u64, seals_verified: u64, bind_seq: bool) -> Result<RoyaltyLog, RowError> {
        let (seals, seal_times) = contiguous(self.seals, "seal")?.into_iter().unzip();
        let seal_faults = contiguous(self.faults, "seal fault")?;
        let mut log = RoyaltyLog {
            catalog: self.catalog,
            sales: Rows::stored(db.clone(), self.sales),
            previews: self.previews,
            usages,
            totals: self.totals,
            seals,
            seal_times,
            seals_verified,
            seal_faults,
            bind_seq,
            revoked_engine_keys: self.revoked_keys,
            tree: self.tree,
            ..RoyaltyLog::default()
        };
        // What a seal needs of the entries not sealed yet stays in memory (`entries`).
        let unsealed = log.next_seal_entry().min(self.entries);
        let all = Entries::stored(db.clone(), self.entries, self.last_entry.map(LoggedEntry::of_record), self.entries, Vec::new());
        let parts = all.detached(unsealed, self.entries).read()?.iter().map(LoggedEntry::seal_part).collect();
        log.entries = Entries::stored(db.clone(), self.entries, all.last().cloned(), unsealed, parts);
        Ok(log)
    }
}
