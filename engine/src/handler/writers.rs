//! Whether another engine appends to this engine's stream: the follower applies every
//! event in order (`Handler::observe`), and this engine knows which appends were its own.
//! An applied event is another engine's when no append of this engine claims its
//! sequence, once every append that was under way when it was applied has finished (the
//! follower may apply an event before the append that stored it has its answer).

use crate::ids::Seq;
use std::collections::{BTreeSet, VecDeque};

/// How many of its own appends not yet applied an engine remembers: far more than a
/// follower lags by. One forgotten only makes a single engine check subject heads.
const OWN_APPENDS_TRACKED_MAX: usize = 65_536;

#[derive(Debug, Default)]
pub(super) struct Writers {
    next_ticket: u64,
    /// Appends under way, by ticket.
    in_flight: BTreeSet<u64>,
    /// This engine's appends the follower has not applied yet.
    own: BTreeSet<Seq>,
    /// Applied events no append claimed yet, with the tickets given out by then.
    unclaimed: VecDeque<(Seq, u64)>,
    /// Another engine appended (sticky).
    others: bool,
}

impl Writers {
    /// An append starts: its ticket, for `finished`.
    pub(super) fn starting(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.in_flight.insert(ticket);
        ticket
    }

    /// The append `ticket` finished, storing `seq` (None: it stored nothing, or its outcome
    /// is unknown).
    pub(super) fn finished(&mut self, ticket: u64, seq: Option<Seq>) {
        self.in_flight.remove(&ticket);
        if let Some(seq) = seq {
            match self.unclaimed.iter().position(|(applied, _)| *applied == seq) {
                Some(index) => {
                    self.unclaimed.remove(index);
                }
                None => {
                    self.own.insert(seq);
                    if self.own.len() > OWN_APPENDS_TRACKED_MAX {
                        self.own.pop_first();
                    }
                }
            }
        }
        self.judge();
    }

    /// The follower applied the event at `seq`.
    pub(super) fn applied(&mut self, seq: Seq) {
        if !self.own.remove(&seq) && !self.others {
            self.unclaimed.push_back((seq, self.next_ticket));
        }
        // Applied in order: an own append older than this one is not coming any more.
        while self.own.first().is_some_and(|first| *first < seq) {
            self.own.pop_first();
        }
        self.judge();
    }

    /// An unclaimed event whose possible appenders all finished is another engine's.
    fn judge(&mut self) {
        let oldest_in_flight = self.in_flight.first().copied().unwrap_or(u64::MAX);
        while let Some((_, tickets)) = self.unclaimed.front() {
            if oldest_in_flight < *tickets {
                break;
            }
            self.unclaimed.pop_front();
            self.others = true;
        }
        if self.others {
            self.unclaimed.clear();
        }
    }

    pub(super) fn others(&self) -> bool {
        self.others
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The follower may apply this engine's event before its append has the answer: not
    /// another engine's. An event nobody here appended is, once the appends under way
    /// when it was applied have finished without claiming it.
    #[test]
    fn own_appends_applied_early_are_not_another_engines() {
        let mut writers = Writers::default();
        let first = writers.starting();
        writers.applied(Seq(1));
        assert!(!writers.others(), "an append is under way: it may be ours");
        writers.finished(first, Some(Seq(1)));
        assert!(!writers.others(), "it was");
        let second = writers.starting();
        writers.finished(second, Some(Seq(2)));
        writers.applied(Seq(2));
        assert!(!writers.others(), "applied after its answer: ours");
        let third = writers.starting();
        writers.applied(Seq(3));
        let later = writers.starting();
        writers.finished(third, None);
        assert!(writers.others(), "the append under way stored nothing: seq 3 is another engine's, whatever starts later");
        writers.finished(later, Some(Seq(4)));
        assert!(writers.others(), "sticky");
        let mut alone = Writers::default();
        alone.applied(Seq(1));
        assert!(alone.others(), "nothing under way: another engine's at once");
    }
}
