//! The functional core: every aggregate's `decide` and `evolve`. No async, no I/O, no
//! clock, no randomness: `now`, the chosen node, proof checks and ids arrive as arguments,
//! and what was decided is recorded in the events, so replay never re-decides.
//!
//! Architecture Invariant: nothing under `domain` imports tokio, async-nats, sled, rsa or
//! any other I/O or crypto crate. (Proofs are verified by the shell, which passes the
//! verdict in the command.)

pub mod account;
pub mod catalog;
pub mod config;
pub mod event;
pub mod order;
pub mod party;
pub mod preview;
pub mod publisher;
pub mod rejection;
pub mod report;
pub mod settlement;
pub mod voucher;

#[cfg(test)]
mod tests;

use crate::ids::{Millis, RequestId, Seq};
pub use event::{Actor, ActorKind, AggregateKind, AggregateRef, Event, Recorded};
pub use rejection::Rejection;
use std::collections::BTreeMap;

/// An aggregate: a consistency boundary with its own subject in the stream.
pub trait Aggregate: Default + Clone + std::fmt::Debug + Send + Sync + 'static {
    type Command: std::fmt::Debug;
    const KIND: AggregateKind;

    /// The pure decision: which events the command produces in this state at `now`.
    /// An empty list means the command is already in effect (an idempotent no-op).
    fn decide(&self, command: &Self::Command, now: Millis) -> Result<Vec<Event>, Rejection>;

    /// Applies one of this aggregate's events. Never fails: events are facts.
    fn evolve(self, event: &Event) -> Self;

    /// The command's name as recorded in the envelope.
    fn command_name(command: &Self::Command) -> &'static str;
}

/// An aggregate's state plus what the envelope adds: its version, its last stream
/// sequence (the OCC expectation) and the requests already applied to it (idempotency).
#[derive(Clone, Debug, Default)]
pub struct Root<A> {
    pub state: A,
    /// Number of events applied.
    pub version: u64,
    /// Stream sequence of the last event applied; `None` when the aggregate is new.
    pub last_seq: Option<Seq>,
    requests: BTreeMap<(Actor, String), String>,
}

/// The result of deciding on a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// New events to append (possibly none, when the command is already in effect).
    Emit(Vec<Event>),
    /// The same request was applied before: answer from the current state.
    Repeated,
}

impl<A: Aggregate> Root<A> {
    pub fn decide(&self, actor: &Actor, request: &RequestId, command: &A::Command, now: Millis) -> Result<Outcome, Rejection> {
        let name = A::command_name(command);
        if let Some(first) = self.requests.get(&(actor.clone(), request.0.clone())) {
            return if first == name { Ok(Outcome::Repeated) } else { Err(Rejection::RequestIdReused { first: first.clone() }) };
        }
        self.state.decide(command, now).map(Outcome::Emit)
    }

    pub fn apply(&mut self, seq: Seq, recorded: &Recorded) {
        let state = std::mem::take(&mut self.state);
        self.state = state.evolve(&recorded.event);
        self.version += 1;
        self.last_seq = Some(seq);
        self.requests.entry((recorded.actor.clone(), recorded.request_id.clone())).or_insert_with(|| recorded.command.clone());
    }

    /// Whether a request was already applied.
    pub fn has_applied(&self, actor: &Actor, request: &RequestId) -> bool {
        self.requests.contains_key(&(actor.clone(), request.0.clone()))
    }
}

/// Folds events into a state: the replay of an aggregate.
pub fn fold<A: Aggregate>(events: &[Event]) -> A {
    events.iter().fold(A::default(), |state, event| state.evolve(event))
}

/// Shared validation helpers for commands built from untrusted input.
pub mod validate {
    use super::Rejection;

    pub fn id(field: &'static str, value: &str) -> Result<(), Rejection> {
        if crate::ids::is_valid_token(value) {
            Ok(())
        } else {
            Err(Rejection::InvalidArgument { field, reason: "must be 1-64 characters of A-Z a-z 0-9 - _".into() })
        }
    }

    pub fn text(field: &'static str, value: &str, max_chars: usize) -> Result<(), Rejection> {
        if value.trim().is_empty() {
            return Err(Rejection::InvalidArgument { field, reason: "must not be empty".into() });
        }
        if value.chars().count() > max_chars {
            return Err(Rejection::InvalidArgument { field, reason: format!("must be at most {max_chars} characters") });
        }
        if value.chars().any(char::is_control) {
            return Err(Rejection::InvalidArgument { field, reason: "must not contain control characters".into() });
        }
        Ok(())
    }

    pub fn currency(value: &str) -> Result<(), Rejection> {
        if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(())
        } else {
            Err(Rejection::InvalidArgument { field: "currency", reason: "must be an ISO 4217 code like EUR".into() })
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! The given/when/then helper shared by every aggregate's tests.
    use super::*;

    #[track_caller]
    pub fn check<A: Aggregate>(given: &[Event], when: A::Command, now: Millis, expect: Result<Vec<Event>, Rejection>) {
        let state: A = fold(given);
        let decided = state.decide(&when, now);
        assert_eq!(decided, expect, "given {given:#?}\nwhen {when:#?}");
    }
}
