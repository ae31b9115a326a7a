//! The rights-report aggregate: the chain of `RightsReportSealed` events. The seal's
//! contents (heads, Merkle root, totals digest, signature) are computed by the royalty-log
//! projection and the crypto module; the domain checks that seals extend each other:
//! contiguous entry ranges, the right previous-seal hash, and epochs that never go back.

use super::event::{Event, RightsReportSealed};
use super::{Aggregate, AggregateKind, Rejection};
use crate::ids::Millis;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub seals: u64,
    pub last: Option<RightsReportSealed>,
}

impl Report {
    /// The hash of a seal, which the next seal names as `prev_seal_hash`.
    pub fn seal_hash(seal: &RightsReportSealed) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("vouchsafe 2026 seal hash");
        hasher.update(&seal.epoch.to_le_bytes());
        hasher.update(&seal.first_entry.to_le_bytes());
        hasher.update(&seal.last_entry.to_le_bytes());
        hasher.update(&seal.head_y);
        hasher.update(&seal.head_z);
        hasher.update(&seal.merkle_root);
        hasher.update(&seal.totals_digest);
        hasher.update(&seal.prev_seal_hash);
        hasher.update(&seal.last_stream_seq.to_le_bytes());
        hasher.update(&seal.stream_head);
        hasher.update(&(seal.signature.len() as u64).to_le_bytes());
        hasher.update(&seal.signature);
        if let Some(checkpoint) = &seal.checkpoint {
            hasher.update(&checkpoint.framed());
        }
        *hasher.finalize().as_bytes()
    }

    /// The entry the next seal must start at.
    pub fn next_entry(&self) -> u64 {
        self.last.as_ref().map_or(0, |seal| seal.last_entry + 1)
    }
}

#[derive(Clone, Debug)]
pub enum ReportCommand {
    Seal(RightsReportSealed),
}

impl Aggregate for Report {
    type Command = ReportCommand;
    const KIND: AggregateKind = AggregateKind::Report;

    fn decide(&self, command: &ReportCommand, _now: Millis) -> Result<Vec<Event>, Rejection> {
        let ReportCommand::Seal(seal) = command;
        let expected_prev = self.last.as_ref().map_or([0u8; 32], Report::seal_hash);
        if seal.prev_seal_hash != expected_prev {
            return Err(Rejection::InvalidArgument { field: "prev_seal_hash", reason: "does not name the last seal".into() });
        }
        if seal.first_entry != self.next_entry() || seal.last_entry < seal.first_entry {
            return Err(Rejection::InvalidArgument { field: "first_entry", reason: format!("the next seal covers entries from {}", self.next_entry()) });
        }
        if self.last.as_ref().is_some_and(|last| seal.epoch < last.epoch) {
            return Err(Rejection::InvalidArgument { field: "epoch", reason: "epochs never go back".into() });
        }
        if seal.checkpoint.is_none() && self.last.as_ref().is_some_and(|last| last.checkpoint.is_some()) {
            return Err(Rejection::InvalidArgument { field: "checkpoint", reason: "the seals have checkpoints: give the engine its checkpoint.key".into() });
        }
        if seal.signature.is_empty() {
            return Err(Rejection::InvalidArgument { field: "signature", reason: "a seal must be signed".into() });
        }
        Ok(vec![Event::RightsReportSealed(seal.clone())])
    }

    fn evolve(mut self, event: &Event) -> Self {
        if let Event::RightsReportSealed(seal) = event {
            self.seals += 1;
            self.last = Some(seal.clone());
        }
        self
    }

    fn command_name(_command: &ReportCommand) -> &'static str {
        "SealRightsReport"
    }
}
