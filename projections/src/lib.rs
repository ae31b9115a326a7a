//! Projections over the Vouchsafe event stream: pure `apply(state, &event)` functions in
//! stream order, a digest of their state, and a live runner that follows the log.
//!
//! Here: voucher state (`vouchers`), delivery allocation (`allocation`), the royalty log
//! with totals and seal checks (`royalty_log`, over the chain in `royalty`), the balances
//! of the double-entry settlement and of the points accounts (`balances`), and the
//! durable projection store with its checkpoints in sled (`store`), which `Live::open`
//! runs on: batches of applied events are committed with their checkpoint, and a restart
//! resumes at `checkpoint + 1` (`Live::open_checked` first checks that the log it resumes
//! on is the stream the store was built from). Each projection keeps its storage format
//! beside it (its `format` module), on the row machinery they and the store share
//! (`rows`), so that imports run one way: `rows`, then the projections, then `store`,
//! then `Live`.
//! What is deliberately not here: decisions. A projection advises (the allocator's
//! choice); the decision and its inputs are recorded in events by the engine.

pub mod allocation;
pub mod audit;
pub mod balances;
mod borrowed_key;
pub mod export;
mod live;
pub mod reads;
mod rows;
pub mod royalty;
pub mod royalty_log;
mod serde_hex;
pub mod statement;
pub mod store;
pub mod tiles;
pub mod vouchers;

pub use live::*;

use engine::domain::Recorded;
use engine::domain::event::RightsReportSealed;
use engine::ids::Seq;
use engine::log::StoredEvent;

/// Why an event could not be applied: a typed finding with its sequence, never a panic
/// (auditors replay untrusted streams).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    #[error("sequence gap: expected {expected}, found {found} (events are never deleted: this is tampering or loss)")]
    Gap { expected: Seq, found: Seq },
    #[error("event at sequence {seq} does not decode: {reason}")]
    Undecodable { seq: Seq, reason: String },
    #[error("event at sequence {seq} was stored on subject {subject}, but belongs to {expected}")]
    WrongSubject { seq: Seq, subject: String, expected: String },
    /// The event's settlement postings do not balance, or would overflow a balance: the
    /// engine never writes such an event. Nothing of it was applied.
    #[error("event at sequence {seq} breaks the settlement ledger: {error}")]
    Ledger { seq: Seq, error: balances::BalanceError },
}

impl Finding {
    /// The sequence of the event that is wrong (for a gap: the one that is missing).
    pub fn seq(&self) -> Seq {
        match self {
            Finding::Gap { expected, .. } => *expected,
            Finding::Undecodable { seq, .. } | Finding::WrongSubject { seq, .. } | Finding::Ledger { seq, .. } => *seq,
        }
    }
}

/// Stream heads remembered between seals (a seal names the head at its `last_stream_seq`),
/// at most: the newest this many. A seal that names a position further back than that
/// from itself is a seal fault, so `Live::seal` does not seal while its projections lag
/// the log by more than half of it. 100,000 heads are 4 MB; the limit was 1,000,000, and
/// a stream with no usage for a while (nothing to seal) kept up to 40 MB of heads.
pub const STREAM_HEADS_MAX: usize = 100_000;

/// The hasher every stream link starts from: blake3 in derive-key mode for the stream
/// head's context. Deriving the context's key is a hash of its own, so it is done once and
/// each link starts from a copy (the same hasher state `new_derive_key` gives).
static STREAM_LINK_HASHER: std::sync::LazyLock<engine::crypto::Hasher> =
    std::sync::LazyLock::new(|| engine::crypto::Hasher::new_derive_key("vouchsafe 2026 stream head"));

/// The running hash over stored events: `H_s = blake3(H_{s-1} ‖ s ‖ subject ‖ payload)`.
pub fn stream_link(previous: &[u8; 32], stored: &StoredEvent) -> [u8; 32] {
    let mut hasher = STREAM_LINK_HASHER.clone();
    hasher.update(previous);
    hasher.update(&stored.seq.0.to_le_bytes());
    hasher.update(&(stored.subject.len() as u64).to_le_bytes());
    hasher.update(stored.subject.as_bytes());
    hasher.update(&stored.payload);
    hasher.finalize()
}

/// A stored event, decoded ahead of applying: the auditor's reader decodes events while
/// the applying side applies earlier ones, so the two share the work
/// (`Projections::apply_prepared`). A profile of a 680k-event replay put decoding at about
/// a fifth of the applying side's work, and the stream link (`stream_link`, left to the
/// applying side since it chains) at about a seventh.
#[derive(Debug)]
pub struct Prepared {
    pub stored: StoredEvent,
    recorded: Result<Recorded, engine::wire::DecodeError>,
}

impl Prepared {
    pub fn new(stored: StoredEvent) -> Prepared {
        let recorded = engine::wire::decode_shared(&stored.payload);
        Prepared { stored, recorded }
    }
}

/// Every projection, applied in stream order.
#[derive(Debug, Default)]
pub struct Projections {
    pub last_seq: Seq,
    pub events: u64,
    /// The running hash over every applied event (`stream_link`).
    pub stream_head: [u8; 32],
    /// The running hash before the last applied event, so that `stream_head` can be
    /// recomputed from the event at `last_seq` alone: `stream_link(before, event)`. The
    /// projection store checks a log with it (`Live::open_checked`). `None` when unknown
    /// (nothing applied yet, or loaded from a checkpoint that did not record it).
    pub(crate) stream_head_before: Option<[u8; 32]>,
    stream_heads: std::collections::VecDeque<(u64, [u8; 32])>,
    pub vouchers: vouchers::VoucherBook,
    pub allocation: allocation::Allocation,
    pub royalty: royalty_log::RoyaltyLog,
    pub balances: balances::Balances,
    /// The read side's indexes (merchants' vouchers, catalog, statements, parties).
    pub reads: reads::Reads,
    /// The projections note what they change, for a projection store (`store::load`).
    tracked: bool,
}

impl Projections {
    /// Projections that also compute the royalty chain (they hold the master key) and
    /// check seal signatures with the engine's public key.
    pub fn with_royalty_keys(master: &engine::crypto::SecretKey, engine_key: Option<engine::crypto::RsaPublic>) -> Self {
        Self { royalty: royalty_log::RoyaltyLog::with_keys(master, engine_key), ..Self::default() }
    }

    /// Starts noting changes in every projection, for the projection store's commits.
    pub(crate) fn track_changes(&mut self) {
        self.tracked = true;
        self.vouchers.track_changes();
        self.allocation.track_changes();
        self.royalty.track_changes();
        self.balances.track_changes();
        self.reads.track_changes();
    }

    /// The seal of the royalty entries not sealed yet, unsigned, when at least
    /// `entries_min` (≥ 1) are waiting: what `Live::seal` signs and appends.
    pub fn unsigned_seal(&self, entries_min: u64) -> Result<Option<RightsReportSealed>, SealError> {
        use engine::domain::report::Report;
        let log = &self.royalty;
        if !log.chained() {
            return Err(SealError::NoMasterKey);
        }
        let first = log.next_seal_entry();
        let count = log.entries.len() as u64;
        if count < first.saturating_add(entries_min.max(1)) {
            return Ok(None);
        }
        let last = count - 1;
        // The entries not sealed yet: what a seal needs of them is in memory, also in a
        // store (`royalty_log::Entries`).
        let parts = log.entries.seal_parts(first, count);
        if parts.len() as u64 != count - first {
            return Err(SealError::EntriesUnreadable { first, count });
        }
        let ys: Vec<[u8; 32]> = parts.iter().map(|part| part.y).collect();
        let head = &parts[parts.len() - 1];
        // The checkpoint's tree part; the engine names the origin and signs the note.
        let size = last + 1;
        let checkpoint = engine::domain::event::SealCheckpoint {
            origin: String::new(),
            tree_size: size,
            root: log.tree.root(size).ok_or(SealError::TreeBehind { tree: log.tree.size(), entries: count })?,
            signature: Vec::new(),
            last_leaf_proof: log.tree.inclusion_proof(last, size).ok_or(SealError::TreeBehind { tree: log.tree.size(), entries: count })?,
        };
        Ok(Some(RightsReportSealed {
            epoch: royalty_log::EPOCH,
            first_entry: first,
            last_entry: last,
            head_y: head.y,
            head_z: head.z,
            merkle_root: royalty::merkle_root(&ys),
            totals_digest: head.usage_digest,
            prev_seal_hash: log.seals.last().map_or([0; 32], Report::seal_hash),
            engine_key_id: String::new(),
            signature: vec![],
            last_stream_seq: self.last_seq.0,
            stream_head: self.stream_head,
            checkpoint: Some(checkpoint),
        }))
    }

    /// Applies one stored event; the next sequence must follow the last one applied.
    pub fn apply(&mut self, stored: &StoredEvent) -> Result<Recorded, Finding> {
        self.apply_decoded(stored, engine::wire::decode_shared(&stored.payload))
    }

    /// Applies one prepared event, as `apply` does.
    pub fn apply_prepared(&mut self, prepared: Prepared) -> Result<Recorded, Finding> {
        self.apply_decoded(&prepared.stored, prepared.recorded)
    }

    /// `apply` of an event already decoded.
    fn apply_decoded(&mut self, stored: &StoredEvent, recorded: Result<Recorded, engine::wire::DecodeError>) -> Result<Recorded, Finding> {
        let expected = Seq(self.last_seq.0 + 1);
        if stored.seq != expected {
            return Err(Finding::Gap { expected, found: stored.seq });
        }
        let recorded = recorded.map_err(|e| Finding::Undecodable { seq: stored.seq, reason: e.to_string() })?;
        if !recorded.aggregate.has_subject(&stored.subject) {
            return Err(Finding::WrongSubject { seq: stored.seq, subject: stored.subject.clone(), expected: recorded.aggregate.subject() });
        }
        // The only projection that can refuse an event goes first: a refused event leaves
        // every projection as it was.
        // The sale's currency names the ledger accounts of postings; without postings (a
        // voucher voided before it was authorized) there is none to name and no lookup.
        // The statements name the sale's merchant too: one lookup serves both.
        let sale: Option<(String, String)> = match &recorded.event {
            engine::domain::event::Event::Authorized { voucher_id, postings, .. }
            | engine::domain::event::Event::Voided { voucher_id, reversal: postings, .. }
            | engine::domain::event::Event::Refunded { voucher_id, reversal: postings, .. }
                if !postings.is_empty() =>
            {
                self.royalty.sales.with_row(voucher_id, |sale| sale.map(|sale| (sale.merchant.clone(), sale.currency.clone())))
            }
            _ => None,
        };
        let currency = sale.as_ref().map_or("", |(_, currency)| currency.as_str());
        self.balances.apply(&recorded.event, currency).map_err(|error| Finding::Ledger { seq: stored.seq, error })?;
        self.stream_head_before = Some(self.stream_head);
        self.stream_head = stream_link(&self.stream_head, stored);
        self.stream_heads.push_back((stored.seq.0, self.stream_head));
        if self.stream_heads.len() > STREAM_HEADS_MAX {
            self.stream_heads.pop_front();
        }
        let sealed_head = match &recorded.event {
            engine::domain::event::Event::RightsReportSealed(seal) => {
                let head = self.stream_heads.iter().find(|(seq, _)| *seq == seal.last_stream_seq).map(|(_, head)| *head);
                // The next seal names a later position: forget the heads before this one.
                while self.stream_heads.front().is_some_and(|(seq, _)| *seq < seal.last_stream_seq) {
                    self.stream_heads.pop_front();
                }
                head
            }
            _ => None,
        };
        self.vouchers.apply(&recorded.event);
        self.allocation.apply(&recorded.event);
        self.royalty.apply(stored.seq, &recorded.event, recorded.recorded_at.0, sealed_head);
        let sale = sale.as_ref().map(|(merchant, currency)| (merchant.as_str(), currency.as_str()));
        self.reads.apply(stored.seq, &recorded.event, recorded.recorded_at.0, sale);
        for entry in self.royalty.recorded.drain(..) {
            self.reads.count_usage(&entry);
        }
        self.last_seq = stored.seq;
        self.events += 1;
        Ok(recorded)
    }

    /// blake3 over a canonical encoding of every projection's state: the same for the same
    /// stream whatever the backend and however the events were batched.
    pub fn digest(&self) -> [u8; 32] {
        // v2: with the balances.
        let mut hasher = engine::crypto::Hasher::new_derive_key("vouchsafe 2026 state digest v2");
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(&self.last_seq.0.to_le_bytes());
        field(&self.events.to_le_bytes());
        self.vouchers.digest_into(&mut field);
        self.allocation.digest_into(&mut field);
        self.royalty.digest_into(&mut field);
        self.balances.digest_into(&mut field);
        hasher.finalize()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the royalty chain needs the royalty master key (A_0 of the epoch); pass --keys with royalty-master.key")]
    NoMasterKey,
    /// Our own bug: every chained entry has its leaf in the tree.
    #[error("the royalty tree has {tree} leaves but the chain {entries} entries")]
    TreeBehind { tree: u64, entries: u64 },
    /// The projection store cannot read back entries to seal (its fault stops the store).
    #[error("the royalty entries {first}..{count} cannot be read back from the projection store")]
    EntriesUnreadable { first: u64, count: u64 },
}
