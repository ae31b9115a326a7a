//! Rebuild rates of the projections, for ARCHITECTURE.md's figures: a generated stream
//! (the store tests' generator: every projection, seals, postings, points) applied from
//! sequence 1 in memory, and through a store-backed `Live` (sled, one commit per
//! `BATCH_EVENTS_MAX` events), then the store reopened with its full check and the stream
//! check. Run in release:
//!
//!     cargo run --release -p projections --example rebuild_rate -- [events] [rounds]

#[path = "../tests/support/mod.rs"]
mod support;

use projections::Live;
use std::sync::Arc;
use std::time::Instant;
use support::{VecLog, engine_public, generate, keyed, master};

const SEAL_EVERY_USAGES: u64 = 1_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let events_wanted: usize = args.next().map_or(100_000, |arg| arg.parse().expect("events: a number"));
    let rounds: usize = args.next().map_or(3, |arg| arg.parse().expect("rounds: a number"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let events = generate(11, events_wanted, SEAL_EVERY_USAGES);
    let count = events.len() as f64;
    println!("stream: {} events, {} bytes of payload", events.len(), events.iter().map(|e| e.payload.len()).sum::<usize>());
    for round in 1..=rounds {
        let started = Instant::now();
        let mut projections = keyed();
        for event in &events {
            projections.apply(event).expect("a generated stream applies");
        }
        let memory_s = started.elapsed().as_secs_f64();
        let digest = projections.digest();

        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("projections");
        let log = Arc::new(VecLog { events: events.clone(), pause_every: 0 });
        let (stored_s, stored_digest) = runtime.block_on(async {
            let started = Instant::now();
            let (live, _) = Live::open_checked(&store, Some(&master()), Some(engine_public()), log.as_ref()).await.expect("open");
            live.run(log.clone()).await.expect("run");
            (started.elapsed().as_secs_f64(), live.read(|p| p.digest()))
        });
        assert_eq!(stored_digest, digest, "the store-backed rebuild reaches the in-memory state");
        let reopen_s = runtime.block_on(async {
            let started = Instant::now();
            let (_live, outcome) = Live::open_checked(&store, Some(&master()), Some(engine_public()), log.as_ref()).await.expect("reopen");
            assert!(matches!(outcome, projections::store::OpenOutcome::Resumed { .. }), "{outcome:?}");
            started.elapsed().as_secs_f64()
        });
        println!(
            "round {round}: in memory {:.0} events/s ({memory_s:.2} s); store-backed {:.0} events/s ({stored_s:.2} s); reopen with full check and stream check {reopen_s:.2} s",
            count / memory_s,
            count / stored_s
        );
    }
}
