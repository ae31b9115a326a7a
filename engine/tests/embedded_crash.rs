//! Crash recovery of the embedded event log, through its public API only: a child process
//! (this same test binary, re-executed) appends with many concurrent appenders and prints
//! every acknowledgement; the parent kills it with SIGKILL mid-stream, reopens the log and
//! checks that every acknowledged append is there exactly once, intact, at its sequence,
//! with sequences contiguous from 1. Three rounds on the same directory, so each recovery
//! also starts from a previously crashed log.
//!
//! What this does not test: power loss (SIGKILL leaves the OS page cache intact, so it
//! proves the write ordering, not the fsync; the fsync before each acknowledgement is
//! checked by reading the code and by `group_commit_flushes_once_per_batch`).
#![cfg(unix)]

use engine::ids::Seq;
use engine::log::embedded::EmbeddedLog;
use engine::log::{AppendRequest, EventLog, Expected, StoredEvent};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TEST_NAME: &str = "embedded_log_keeps_every_acknowledged_append_across_kill_9";
/// Set in the child's environment: the log directory (its presence makes the test a child).
const CHILD_DIR_ENV: &str = "VOUCHSAFE_CRASH_CHILD_DIR";
/// Set in the child's environment: the round, so that keys never repeat across rounds.
const CHILD_ROUND_ENV: &str = "VOUCHSAFE_CRASH_CHILD_ROUND";
/// Acknowledgements the parent reads before each kill: early, mid and late in a run.
const ACKS_BEFORE_KILL: [usize; 3] = [300, 1_500, 5_000];
const CHILD_APPENDERS: usize = 64;
const CHILD_SUBJECTS: u64 = 16;
/// Every `CHILD_OCC_EVERY`-th appender chains `Expected::LastSeq` on its own subject.
const CHILD_OCC_EVERY: usize = 4;
/// A child that is never killed (parent gone) stops by itself after this long.
const CHILD_LIFETIME_MAX_MS: u64 = 60_000;
/// Payload filler sizes vary up to this, so batches carry records of different lengths.
const PAYLOAD_FILLER_BYTES_MAX: usize = 3_000;
const READ_PAGE_EVENTS: usize = 1_000;
const ACK_PREFIX: &str = "ACK ";

/// The payload for a key: the key, a separator and pseudo-random filler derived from the
/// key, so that the parent can recompute it and any torn or mixed-up record shows.
fn payload_for(key: &str) -> Vec<u8> {
    let mut reader = blake3::Hasher::new().update(key.as_bytes()).finalize_xof();
    let mut length = [0u8; 2];
    reader.fill(&mut length);
    let mut filler = vec![0u8; usize::from(u16::from_le_bytes(length)) % PAYLOAD_FILLER_BYTES_MAX];
    reader.fill(&mut filler);
    [key.as_bytes(), b"|", &filler].concat()
}

fn key_of(event: &StoredEvent) -> String {
    let end = event.payload.iter().position(|byte| *byte == b'|').unwrap_or(event.payload.len());
    String::from_utf8_lossy(&event.payload[..end]).into_owned()
}

#[test]
fn embedded_log_keeps_every_acknowledged_append_across_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        let round = std::env::var(CHILD_ROUND_ENV).expect("round set with the directory");
        run_child(Path::new(&dir), &round);
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // Every acknowledgement of every round: seq → (subject, key).
    let mut acked: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for (round, acks_before_kill) in ACKS_BEFORE_KILL.into_iter().enumerate() {
        let child = Command::new(std::env::current_exe().expect("test binary path"))
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout);
        let mut round_acks = 0;
        let mut line = String::new();
        let mut killed = false;
        loop {
            line.clear();
            let read = lines.read_line(&mut line).expect("read the child's stdout");
            if read == 0 {
                break;
            }
            // A line without its newline was cut by the kill: its append was acknowledged
            // but we cannot know which it was, so it is not counted.
            if !line.ends_with('\n') {
                continue;
            }
            if let Some((seq, subject, key)) = parse_ack(&line) {
                let previous = acked.insert(seq, (subject, key.clone()));
                assert!(previous.is_none(), "sequence {seq} acknowledged twice ({key} and {previous:?})");
                round_acks += 1;
                if round_acks == acks_before_kill && !killed {
                    child.0.kill().expect("SIGKILL the child");
                    killed = true;
                }
            }
        }
        let status = child.0.wait().expect("wait for the child");
        assert!(killed, "round {round}: the child exited ({status}) after {round_acks} acknowledgements, before the kill");
        assert_eq!(status.signal(), Some(9), "round {round}: the child must die of SIGKILL, not {status}");

        runtime.block_on(verify(dir.path(), round, &acked));
    }
}

fn parse_ack(line: &str) -> Option<(u64, String, String)> {
    let mut fields = line.strip_prefix(ACK_PREFIX)?.split_whitespace();
    let seq = fields.next()?.parse().ok()?;
    let subject = fields.next()?.to_owned();
    let key = fields.next()?.to_owned();
    Some((seq, subject, key))
}

async fn verify(dir: &Path, round: usize, acked: &BTreeMap<u64, (String, String)>) {
    let log = match EmbeddedLog::open(dir) {
        Ok(log) => log,
        Err(error) => panic!(
            "!!! SLED COULD NOT REOPEN THE EMBEDDED LOG AFTER kill -9 (round {round}): {error} !!! \
             The embedded log needs another durable layout (PITFALLS.md, sled section)."
        ),
    };
    let head = log.last_seq().await.expect("last_seq").0;
    let mut events = Vec::new();
    while (events.len() as u64) < head {
        let page = log.read_from(Seq(events.len() as u64 + 1), READ_PAGE_EVENTS).await.expect("read after the crash");
        assert!(!page.is_empty(), "read_from stopped before the head {head}");
        events.extend(page);
    }
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.seq, Seq(index as u64 + 1), "round {round}: sequences contiguous from 1");
    }
    let mut seq_by_key: HashMap<String, u64> = HashMap::new();
    for event in &events {
        let key = key_of(event);
        assert_eq!(&event.payload[..], &payload_for(&key)[..], "round {round}: event {} intact", event.seq);
        if let Some(first) = seq_by_key.insert(key.clone(), event.seq.0) {
            panic!("round {round}: key {key} stored twice, at {first} and {}", event.seq);
        }
    }
    for (seq, (subject, key)) in acked {
        let event = events.get(*seq as usize - 1).unwrap_or_else(|| panic!("round {round}: acknowledged sequence {seq} ({key}) lost; the log ends at {head}"));
        assert_eq!((&event.subject, &key_of(event)), (subject, key), "round {round}: event {seq}");
    }
    let unacknowledged = events.len() - acked.len();
    eprintln!(
        "round {round}: {} acknowledged appends all present; {unacknowledged} stored without an acknowledgement \
         reaching the parent (in flight at the kill, or cut lines); head {head}",
        acked.len()
    );
    // The log still works after recovery: a retried acknowledged key is a duplicate and
    // the sequence continues.
    if let Some((seq, (subject, key))) = acked.iter().next_back() {
        let retry = log
            .append(AppendRequest { subject: subject.clone(), expected: Expected::Any, idempotency_key: key.clone(), payload: payload_for(key).into() })
            .await
            .expect("append after recovery")
            .expect("no conflict with Any");
        assert_eq!((retry.seq.0, retry.duplicate), (*seq, true), "round {round}: dedupe survives the crash");
    }
}

/// Kills the child if the parent fails an assertion, so no appender outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child: appends until killed, printing one line per acknowledgement.
fn run_child(dir: &Path, round: &str) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("child runtime");
    runtime.block_on(async {
        let log = Arc::new(EmbeddedLog::open(dir).expect("child: open the log"));
        let deadline = Instant::now() + Duration::from_millis(CHILD_LIFETIME_MAX_MS);
        let appenders: Vec<_> = (0..CHILD_APPENDERS)
            .map(|appender| {
                let log = Arc::clone(&log);
                let round = round.to_owned();
                tokio::spawn(async move {
                    let chained = appender % CHILD_OCC_EVERY == 0;
                    let mut expected = Expected::Empty;
                    for index in 0u64.. {
                        if Instant::now() > deadline {
                            return;
                        }
                        let key = format!("r{round}-a{appender}-{index}");
                        let subject = if chained {
                            format!("vs.crash.r{round}.own{appender}")
                        } else {
                            format!("vs.crash.s{}", (appender as u64 + index) % CHILD_SUBJECTS)
                        };
                        let outcome = log
                            .append(AppendRequest {
                                subject: subject.clone(),
                                expected: if chained { expected } else { Expected::Any },
                                idempotency_key: key.clone(),
                                payload: payload_for(&key).into(),
                            })
                            .await;
                        let appended = match outcome {
                            Ok(Ok(appended)) => appended,
                            Ok(Err(conflict)) => {
                                panic!("child: conflict on an appender's own subject: {conflict}")
                            }
                            Err(error) => panic!("child: append failed: {error}"),
                        };
                        expected = Expected::LastSeq(appended.seq);
                        let mut stdout = std::io::stdout().lock();
                        let printed = writeln!(stdout, "{ACK_PREFIX}{} {subject} {key}", appended.seq).and_then(|()| stdout.flush());
                        if printed.is_err() {
                            // The parent is gone.
                            std::process::exit(1);
                        }
                    }
                })
            })
            .collect();
        for appender in appenders {
            if let Err(error) = appender.await {
                eprintln!("child: appender failed: {error}");
                std::process::exit(2);
            }
        }
    });
    std::process::exit(0)
}
