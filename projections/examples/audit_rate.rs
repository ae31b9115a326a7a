//! The audit replay's rate without a network: the store tests' generated stream (every
//! projection, seals, postings, points) served by an in-memory log and replayed with
//! `audit::replay_full`, as `vouchsafe audit replay` and bench case 3 run it, next to a
//! plain `Projections::apply` loop over the same events. It also prints the CPU time the
//! process used per event, which a loaded machine disturbs less than the wall-clock rate.
//! Meant for profiling the applying side (`perf record -g`). Run in release:
//!
//!     cargo run --release -p projections --example audit_rate -- [events] [rounds]

#[path = "../tests/support/mod.rs"]
mod support;

use projections::audit;
use std::time::{Duration, Instant};
use support::{VecLog, engine_public, generate, keyed, master};

const SEAL_EVERY_USAGES: u64 = 1_000;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU time used by this process so far (user and system, every thread).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&index| fields.get(index)?.parse::<u64>().ok()).sum();
    // Linux reports these in clock ticks of 1/100 s (USER_HZ).
    Duration::from_millis(ticks * 10)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let events_wanted: usize = args.next().map_or(200_000, |arg| arg.parse().expect("events: a number"));
    let rounds: usize = args.next().map_or(3, |arg| arg.parse().expect("rounds: a number"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let events = generate(11, events_wanted, SEAL_EVERY_USAGES);
    let count = events.len() as f64;
    println!("stream: {} events, {} bytes of payload", events.len(), events.iter().map(|e| e.payload.len()).sum::<usize>());
    let log = VecLog { events: events.clone(), pause_every: 0 };
    for round in 1..=rounds {
        let (cpu, started) = (cpu_time(), Instant::now());
        let mut projections = keyed();
        for event in &events {
            projections.apply(event).expect("a generated stream applies");
        }
        let (apply_s, apply_cpu) = (started.elapsed().as_secs_f64(), (cpu_time() - cpu).as_secs_f64());

        let (cpu, started) = (cpu_time(), Instant::now());
        let (report, _) = runtime.block_on(audit::replay_full(&log, &master(), &engine_public(), None, |_| {})).expect("replay");
        let (audit_s, audit_cpu) = (started.elapsed().as_secs_f64(), (cpu_time() - cpu).as_secs_f64());
        assert!(report.ok(), "{:?}", report.first_bad);
        assert_eq!(report.state_digest, hex::encode(projections.digest()), "the audit replay reaches the applied state");
        println!(
            "round {round}: apply loop {:.0} events/s ({:.2} µs CPU/event); audit replay {:.0} events/s ({:.2} µs CPU/event)",
            count / apply_s,
            apply_cpu * 1e6 / count,
            count / audit_s,
            audit_cpu * 1e6 / count
        );
    }
}
