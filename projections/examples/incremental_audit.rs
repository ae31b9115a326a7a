//! Full vs incremental audit on one generated, checkpointed stream (every projection,
//! seals with C2SP checkpoints): `audit::replay_with` from sequence 1, then from a pinned
//! checkpoint (the seal nearest `pin_percent` of the stream), both served by an in-memory
//! log; the two must reach the same state digest. Also prints the checkpoint note's size
//! and the consistency proof's. Run in release:
//!
//!     cargo run --release -p projections --example incremental_audit -- [events] [pin_percent] [rounds]

#[path = "../tests/support/mod.rs"]
mod support;

use engine::domain::event::Event;
use projections::audit::{AuditOptions, replay_with};
use std::time::Instant;
use support::{VecLog, checkpoint_key, engine_public, generate_checkpointed, master};

const SEAL_EVERY_USAGES: u64 = 1_000;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let events_wanted: usize = args.next().map_or(200_000, |arg| arg.parse().expect("events: a number"));
    let pin_percent: usize = args.next().map_or(90, |arg| arg.parse().expect("pin_percent: a number"));
    let rounds: usize = args.next().map_or(3, |arg| arg.parse().expect("rounds: a number"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let events = generate_checkpointed(11, events_wanted, SEAL_EVERY_USAGES);
    let seals: Vec<(usize, engine::domain::event::RightsReportSealed)> = events
        .iter()
        .enumerate()
        .filter_map(|(position, stored)| match engine::wire::decode(&stored.payload).expect("decodes").event {
            Event::RightsReportSealed(seal) => Some((position, seal)),
            _ => None,
        })
        .collect();
    let target = events.len() * pin_percent / 100;
    let (pin_position, pinned_seal) = seals.iter().min_by_key(|(position, _)| position.abs_diff(target)).expect("a seal").clone();
    let note = engine::seal::checkpoint_note(&pinned_seal).expect("a checkpoint");
    let since = engine::note::Checkpoint::open(note.as_bytes(), &checkpoint_key().verifier()).expect("verifies");
    let newest = engine::seal::checkpoint_note(&seals.last().expect("sealed").1).expect("a checkpoint");
    let newest = engine::note::Checkpoint::open(newest.as_bytes(), &checkpoint_key().verifier()).expect("verifies");
    println!(
        "stream: {} events, {} bytes of payload, {} seals; pinned checkpoint at event {} of {}, tree size {} of {}",
        events.len(),
        events.iter().map(|e| e.payload.len()).sum::<usize>(),
        seals.len(),
        pin_position + 1,
        events.len(),
        since.size,
        newest.size
    );
    println!("checkpoint note: {} bytes", note.len());
    let log = VecLog { events: events.clone(), pause_every: 0 };
    let options = |since| AuditOptions { checkpoint_key: Some(checkpoint_key().verifier()), pin: None, since, ..AuditOptions::default() };
    for round in 1..=rounds {
        let started = Instant::now();
        let (full, projections) = runtime.block_on(replay_with(&log, &master(), &engine_public(), options(None), |_| {})).expect("replay");
        let full_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let (incremental, _) = runtime.block_on(replay_with(&log, &master(), &engine_public(), options(Some(since.clone())), |_| {})).expect("replay");
        let incremental_s = started.elapsed().as_secs_f64();
        assert!(full.ok() && incremental.ok(), "{:?} {:?}", full.first_bad, incremental.first_bad);
        assert_eq!(full.state_digest, incremental.state_digest, "the same state");
        let proof = projections.royalty.tree.consistency_proof(since.size, newest.size).expect("sizes in the tree");
        assert!(engine::tlog::verify_consistency(since.size, newest.size, &since.root, &newest.root, &proof));
        println!(
            "round {round}: full audit {full_s:.2} s ({} entries chained), incremental {incremental_s:.2} s ({} entries chained), saved {:.0} %; consistency proof {} -> {}: {} hashes, {} bytes",
            full.royalty_entries,
            full.royalty_entries - since.size,
            (1.0 - incremental_s / full_s) * 100.0,
            since.size,
            newest.size,
            proof.len(),
            proof.len() * 32
        );
    }
}
