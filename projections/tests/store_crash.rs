//! Crash consistency of the projection store, through its public API: a child process
//! (this same test binary, re-executed) runs a store-backed `Live` over a generated stream
//! in batches and prints each checkpoint it commits; the parent kills it with SIGKILL,
//! reopens the store and checks that it holds exactly the state of a clean rebuild of the
//! events up to its checkpoint (so no event was applied twice or skipped), that every
//! checkpoint the child reported survived, and that resuming from there ends at the digest
//! of a clean rebuild from sequence 1. Several rounds on one store, so each recovery also
//! starts from a previously crashed store.
//!
//! Two ways to choose the moment: right after a reported commit (the next batch is being
//! applied or written), and at random times during a long run of small batches (anywhere:
//! applying, encoding, inside sled's batch or its flush).
//!
//! What this does not test: power loss (SIGKILL leaves the OS page cache intact, so it
//! proves the write ordering and sled's recovery, not the fsync).
#![cfg(unix)]

mod support;

use engine::ids::Seq;
use engine::log::StoredEvent;
use projections::Live;
use projections::store::{OpenOutcome, ProjectionStore};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Rng, VecLog, engine_public, generate, keyed, master, rebuild};

/// Set in the child's environment: the store directory (its presence makes a child).
const CHILD_STORE_ENV: &str = "VOUCHSAFE_STORE_CRASH_STORE";
const CHILD_STREAM_ENV: &str = "VOUCHSAFE_STORE_CRASH_STREAM";
const CHILD_BATCH_ENV: &str = "VOUCHSAFE_STORE_CRASH_BATCH";
const CHILD_TEST_ENV: &str = "VOUCHSAFE_STORE_CRASH_TEST";
/// Set by a person to repeat a run's kill points (each run prints its seed).
const KILL_SEED_ENV: &str = "VOUCHSAFE_STORE_CRASH_SEED";
const STREAM_EVENTS: usize = 20_000;
const SEAL_EVERY_USAGES: u64 = 300;
const ROUNDS: usize = 6;
/// Events per batch in each round: one event per commit up to the default limit.
const ROUND_BATCH_EVENTS: [usize; ROUNDS] = [1, 5, 16, 64, 256, 1024];
/// A child that never gets killed stops waiting for lines after this long.
const CHILD_SILENCE_MAX_MS: u64 = 60_000;
const COMMITTED_PREFIX: &str = "COMMITTED ";
const OPENED_PREFIX: &str = "OPENED ";
const DONE_PREFIX: &str = "DONE ";

/// How the parent picks the moment to kill.
#[derive(Clone, Copy)]
enum KillAt {
    /// When the child reports a checkpoint at or past a random target sequence.
    Checkpoint,
    /// A random delay after the child reports a checkpoint at or past a random target
    /// sequence: anywhere in the batch after it (applying, encoding, inside sled's batch or
    /// its flush), and always after a commit, however fast or busy the machine.
    RandomTime { delay_ms_max: u64 },
}

#[test]
fn store_survives_kill_9_right_after_commits() {
    crash_rounds("store_survives_kill_9_right_after_commits", KillAt::Checkpoint, 11);
}

#[test]
fn store_survives_kill_9_at_random_times() {
    crash_rounds("store_survives_kill_9_at_random_times", KillAt::RandomTime { delay_ms_max: 20 }, 12);
}

fn crash_rounds(test_name: &str, kill_at: KillAt, seed: u64) {
    if let Some(store) = std::env::var_os(CHILD_STORE_ENV)
        && std::env::var(CHILD_TEST_ENV).as_deref() == Ok(test_name)
    {
        let stream = std::env::var_os(CHILD_STREAM_ENV).expect("stream file set with the store");
        let batch = std::env::var(CHILD_BATCH_ENV).expect("batch size set with the store").parse().expect("batch size");
        run_child(Path::new(&store), Path::new(&stream), batch);
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("projections");
    let stream_file = dir.path().join("stream.bin");
    let events = generate(seed, STREAM_EVENTS, SEAL_EVERY_USAGES);
    support::write_stream(&stream_file, &events);
    // Each run kills at different points; the seed is printed so a failure can be repeated.
    let kill_seed = std::env::var(KILL_SEED_ENV)
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(seed, |elapsed| elapsed.as_nanos() as u64));
    eprintln!("{test_name}: kill points from seed {kill_seed} (set {KILL_SEED_ENV} to repeat them)");
    let mut rng = Rng::new(kill_seed);
    let mut resumed_rounds = 0;
    let mut mid_run_kills = 0;
    for (round, batch_events) in ROUND_BATCH_EVENTS.into_iter().enumerate() {
        let child = Command::new(std::env::current_exe().expect("test binary path"))
            .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
            .env(CHILD_STORE_ENV, &store)
            .env(CHILD_STREAM_ENV, &stream_file)
            .env(CHILD_BATCH_ENV, batch_events.to_string())
            .env(CHILD_TEST_ENV, test_name)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let mut child = KillOnDrop(child);
        let lines = read_lines(child.0.stdout.take().expect("piped stdout"));

        let mut opened_at = None;
        let mut reported = 0;
        let mut target = u64::MAX;
        let mut deadline = None;
        let mut killed = false;
        loop {
            if let Some(at) = deadline
                && !killed
                && Instant::now() >= at
            {
                child.0.kill().expect("SIGKILL the child");
                killed = true;
                deadline = None;
            }
            let timeout = deadline.map_or(Duration::from_millis(CHILD_SILENCE_MAX_MS), |deadline: Instant| deadline.saturating_duration_since(Instant::now()));
            match lines.recv_timeout(timeout) {
                Ok(line) => {
                    if let Some(seq) = number_after(&line, OPENED_PREFIX) {
                        opened_at = Some(seq);
                        target = seq + 1 + rng.below(((events.len() as u64 - seq) / 3).max(1));
                    } else if let Some(seq) = number_after(&line, COMMITTED_PREFIX) {
                        reported = reported.max(seq);
                        if seq >= target && !killed && deadline.is_none() {
                            match kill_at {
                                KillAt::Checkpoint => {
                                    child.0.kill().expect("SIGKILL the child");
                                    killed = true;
                                }
                                KillAt::RandomTime { delay_ms_max } => deadline = Some(Instant::now() + Duration::from_millis(rng.below(delay_ms_max + 1))),
                            }
                        }
                    } else if line.contains(DONE_PREFIX) {
                        eprintln!("round {round}: the child finished before the kill");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if deadline.is_some() && !killed => {
                    child.0.kill().expect("SIGKILL the child");
                    killed = true;
                    deadline = None;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("round {round}: the child went silent"),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = child.0.wait().expect("wait for the child");
        let opened_at = opened_at.unwrap_or_else(|| panic!("round {round}: the child never opened the store ({status})"));
        if killed {
            assert_eq!(status.signal(), Some(9), "round {round}: the child must die of SIGKILL, not {status}");
        } else {
            assert!(status.success(), "round {round}: the child failed: {status}");
        }

        let checkpoint = verify_after_crash(&store, &events, reported, round);
        if checkpoint > opened_at {
            resumed_rounds += 1;
        }
        if killed && checkpoint < events.len() as u64 {
            mid_run_kills += 1;
        }
        eprintln!("round {round} (batches of {batch_events}): opened at {opened_at}, last reported {reported}, recovered checkpoint {checkpoint}");
    }
    // Negative controls: the rounds really crashed mid-run, and recovery really resumed.
    // Every kill comes after a reported commit in the first third of what was left, so
    // every round resumes; a round reaches the end before its kill only if the child
    // applies a third of the stream within `delay_ms_max`.
    assert!(mid_run_kills >= ROUNDS / 2, "only {mid_run_kills} of {ROUNDS} rounds were killed before the end of the stream");
    assert_eq!(resumed_rounds, ROUNDS, "every round is killed after a commit it reported");

    // Finally resume to the end: exactly a clean rebuild from sequence 1.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let clean = rebuild(&events, keyed());
    runtime.block_on(async {
        let (live, outcome) = Live::open(&store, Some(&master()), Some(engine_public())).expect("open after the last crash");
        assert!(matches!(outcome, OpenOutcome::Resumed { .. }), "{outcome:?}");
        live.run(Arc::new(VecLog::new(events.clone()))).await.expect("resume to the end");
        live.read(|p| {
            assert_eq!(hex::encode(p.digest()), hex::encode(clean.digest()), "final digest");
            assert_eq!((p.last_seq, p.events, p.stream_head), (clean.last_seq, clean.events, clean.stream_head));
            assert_eq!(p.royalty.entries, clean.royalty.entries);
            assert_eq!(
                (&p.royalty.seals, p.royalty.seals_verified, &p.royalty.seal_faults),
                (&clean.royalty.seals, clean.royalty.seals_verified, &clean.royalty.seal_faults)
            );
        });
    });
}

/// Reopens the store after a crash: it must hold exactly the state of the events up to its
/// checkpoint, which is at least the last checkpoint the child reported. Returns it.
fn verify_after_crash(store: &Path, events: &[StoredEvent], reported: u64, round: usize) -> u64 {
    let (store, outcome) = ProjectionStore::open(store).unwrap_or_else(|error| panic!("round {round}: reopening failed: {error}"));
    let checkpoint = match outcome {
        OpenOutcome::Resumed { checkpoint } => checkpoint.0,
        other => panic!(
            "round {round}: after kill -9 the store was not resumed but {other:?}; sled lost or damaged a committed batch \
             (PITFALLS.md, sled section: quarantine and rebuild would recover, but the test expects sled to survive)"
        ),
    };
    assert!(checkpoint >= reported, "round {round}: the child reported checkpoint {reported} but the store is at {checkpoint}: a flushed commit was lost");
    assert!(checkpoint <= events.len() as u64);
    let prefix = rebuild(&events[..checkpoint as usize], keyed());
    assert_eq!(store.checkpoint().last_seq, Seq(checkpoint));
    assert_eq!(store.stored_digest().expect("stored digest"), prefix.digest(), "round {round}: the stored state is the state at its checkpoint");
    let loaded = store.load(Some(&master()), Some(engine_public())).expect("load");
    assert_eq!((loaded.stream_head, loaded.events), (prefix.stream_head, prefix.events), "round {round}: every event up to the checkpoint applied once");
    assert_eq!(loaded.royalty.entries, prefix.royalty.entries, "round {round}: royalty entries");
    checkpoint
}

/// The number after `prefix` in `line` (libtest may have printed "test … " before it).
fn number_after(line: &str, prefix: &str) -> Option<u64> {
    let start = line.find(prefix)? + prefix.len();
    line[start..].trim().parse().ok()
}

/// The child's stdout, line by line, on a thread (so the parent can time its kill).
fn read_lines(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        // A line cut by the kill has no newline: it is dropped, as it may be half-written.
        while reader.read_line(&mut line).is_ok_and(|read| read > 0) && line.ends_with('\n') {
            if sender.send(line.trim_end().to_owned()).is_err() {
                return;
            }
            line.clear();
        }
    });
    receiver
}

/// Kills the child if the parent fails an assertion, so no child outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child: resumes the store and runs to the end of the stream, printing each commit.
fn run_child(store: &Path, stream: &Path, batch_events: usize) -> ! {
    let events = support::read_stream(stream);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("child runtime");
    runtime.block_on(async {
        let (live, _) = Live::open(store, Some(&master()), Some(engine_public())).expect("child: open the store");
        let live = live.with_batch_events_max(batch_events);
        let print = |line: String| {
            let mut stdout = std::io::stdout().lock();
            if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                // The parent is gone.
                std::process::exit(1);
            }
        };
        print(format!("{OPENED_PREFIX}{}", live.checkpoint()));
        let mut checkpoints = live.watch_checkpoint();
        let printer = tokio::spawn(async move {
            while checkpoints.changed().await.is_ok() {
                let seq = *checkpoints.borrow_and_update();
                print(format!("{COMMITTED_PREFIX}{seq}"));
            }
        });
        // Pauses end batches early now and then, so batch sizes vary below the limit.
        let log = VecLog { events, pause_every: (batch_events as u64 * 3).max(7) };
        live.run(Arc::new(log)).await.expect("child: run");
        print(format!("{COMMITTED_PREFIX}{}", live.checkpoint()));
        print(format!("{DONE_PREFIX}{}", live.checkpoint()));
        printer.abort();
    });
    std::process::exit(0)
}
