//! The envelope's idempotency: a retried request is answered from the first, whatever
//! happened since; a request id is never reused for another command.

use super::fixtures::*;
use crate::domain::event::{Actor, ActorKind, Event, Recorded, VoidReason};
use crate::domain::voucher::{Voucher, VoucherCommand};
use crate::domain::{Aggregate, Outcome, Rejection, Root};
use crate::ids::{Millis, RequestId, Seq};

fn shop(id: &str) -> Actor {
    Actor::new(ActorKind::Merchant, id)
}
fn request(id: &str) -> RequestId {
    RequestId::new(id)
}
fn record(version: u64, actor: &Actor, request: &str, command: &str, event: Event) -> Recorded {
    Recorded {
        event_id: [version as u8; 16],
        aggregate: event.aggregate(),
        aggregate_version: version,
        recorded_at: T0,
        request_id: request.into(),
        actor: actor.clone(),
        command: command.into(),
        event,
    }
}
fn reserve() -> VoucherCommand {
    VoucherCommand::Reserve(reserve_cmd(&[SONG], card()))
}
/// A voucher reserved by `shop1` with request `r1`, applied at stream sequence 5.
fn reserved_root() -> Root<Voucher> {
    let mut root = Root::<Voucher>::default();
    root.apply(Seq(5), &record(1, &shop("shop1"), "r1", "Reserve", reserved(&[SONG], card())));
    root
}

#[test]
fn apply_advances_version_sequence_and_state() {
    let root = reserved_root();
    assert_eq!((root.version, root.last_seq), (1, Some(Seq(5))));
    assert!(root.has_applied(&shop("shop1"), &request("r1")));
    assert!(!root.has_applied(&shop("shop1"), &request("r2")));
    assert!(!root.has_applied(&shop("shop2"), &request("r1")));
    assert_eq!(root.state, crate::domain::fold::<Voucher>(&song_pending()));
}

#[test]
fn retry_of_an_applied_request_is_repeated() {
    let root = reserved_root();
    assert_eq!(root.decide(&shop("shop1"), &request("r1"), &reserve(), T0), Ok(Outcome::Repeated));
    // Negative control: without the envelope the same command is refused by the state.
    assert_eq!(root.state.decide(&reserve(), T0), Err(Rejection::AlreadyExists { kind: "voucher", id: "v1".into() }));
    // and on a fresh root it is decided.
    let fresh = Root::<Voucher>::default();
    assert_eq!(fresh.decide(&shop("shop1"), &request("r1"), &reserve(), T0), Ok(Outcome::Emit(vec![reserved(&[SONG], card())])));
}

#[test]
fn retry_after_later_events_is_still_repeated() {
    let mut root = reserved_root();
    root.apply(Seq(9), &record(2, &shop("shop1"), "r2", "Authorize", authorized(song_postings())));
    let late = Millis(EXPIRES.0 + 1_000_000);
    assert_eq!(root.decide(&shop("shop1"), &request("r1"), &reserve(), late), Ok(Outcome::Repeated));
    assert_eq!(root.decide(&shop("shop1"), &request("r2"), &authorize(&[SONG]), late), Ok(Outcome::Repeated));
    assert_eq!((root.version, root.last_seq), (2, Some(Seq(9))));
}

#[test]
fn request_id_reused_for_another_command_is_refused() {
    let root = reserved_root();
    assert_eq!(root.decide(&shop("shop1"), &request("r1"), &authorize(&[SONG]), T0), Err(Rejection::RequestIdReused { first: "Reserve".into() }));
}

#[test]
fn same_request_id_from_another_actor_is_decided_on_its_own() {
    let root = reserved_root();
    // shop2's r1 is not shop1's r1: it reaches the state, which refuses shop2.
    let theirs = authorize_by(other_merchant(), &[SONG]);
    assert_eq!(root.decide(&shop("shop2"), &request("r1"), &theirs, T0), Err(Rejection::NotFound { kind: "voucher", id: String::new() }));
    // The engine's own r1 is decided too: here the sweeper expires the reservation.
    let after = Millis(EXPIRES.0 + 1);
    assert_eq!(root.decide(&Actor::engine(), &request("r1"), &VoucherCommand::Expire, after), Ok(Outcome::Emit(vec![voided(VoidReason::TimedOut, vec![])])));
    // The same id from a node actor named like the merchant is another actor as well.
    let node_actor = Actor::new(ActorKind::Node, "shop1");
    assert_eq!(root.decide(&node_actor, &request("r1"), &authorize(&[SONG]), T0), Ok(Outcome::Emit(vec![authorized(song_postings())])));
}

#[test]
fn a_new_request_is_decided_on_the_current_state() {
    let root = reserved_root();
    assert_eq!(root.decide(&shop("shop1"), &request("r2"), &authorize(&[SONG]), T0), Ok(Outcome::Emit(vec![authorized(song_postings())])));
    assert_eq!(root.decide(&shop("shop1"), &request("r3"), &reserve(), T0), Err(Rejection::AlreadyExists { kind: "voucher", id: "v1".into() }));
}

#[test]
fn the_first_command_of_a_request_is_the_one_remembered() {
    // Two events under one request (as a multi-event command would append): the request
    // stays bound to the command recorded with its first event.
    let mut root = reserved_root();
    root.apply(Seq(6), &record(2, &shop("shop1"), "r1", "Authorize", authorized(song_postings())));
    assert_eq!(root.decide(&shop("shop1"), &request("r1"), &reserve(), T0), Ok(Outcome::Repeated));
    assert_eq!(root.decide(&shop("shop1"), &request("r1"), &authorize(&[SONG]), T0), Err(Rejection::RequestIdReused { first: "Reserve".into() }));
}
