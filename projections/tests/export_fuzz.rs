//! The exported royalty log (`audit export --format log`) under hostile edits: a valid
//! export of a generated, sealed stream is mutated (bits flipped, bytes overwritten,
//! inserted or deleted, the text cut short; JSON values replaced, removed, duplicated or
//! swapped; hex digits changed; random bytes or random JSON instead of a log) and read the
//! way `gateways::audit::verify_file` reads a file (UTF-8, then `serde_json` into
//! `ExportedLog`), then checked with `export::verify_log`, pinned to the newest seal.
//!
//! Properties: reading and verifying never panic; every mutation that changed what the
//! log says is reported, either as a file that does not parse or as a verification that
//! is not ok. A mutation that changed only the text (whitespace, the case of a hex
//! digit, an escape, an unknown field) must still verify, the negative control that the
//! check tells content from form. The one documented blind spot (export.rs: "a
//! truncated tail" of unsealed entries cannot be told from a shorter log) is counted and
//! asserted as passing, not hidden.
//!
//! Case count: `VOUCHSAFE_FUZZ_CASES` (default `CASES_DEFAULT`, CI-sized). The run
//! prints its count and what became of the mutations (`--nocapture`).
//!
//! Not here: the event envelope's decoder fuzzing (engine/src/wire/tests.rs does it:
//! arbitrary bytes, mutated encodings, well-formed protobuf of any shape) and hand-picked
//! tampering with its exact finding (projections/src/export/tests.rs).

mod support;

use engine::domain::event::RightsReportSealed;
use engine::domain::report::Report;
use projections::export::{self, ExportedLog, VerifyReport};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use support::{engine_public, generate, keyed, master, rebuild};

/// The seed of a default run; `VOUCHSAFE_FUZZ_SEED` overrides it.
const SEED_DEFAULT: u64 = 0x00e4_9057;
/// Mutations in a default (CI) run; `VOUCHSAFE_FUZZ_CASES` overrides it.
const CASES_DEFAULT: u32 = 1000;
/// Events in the stream the export is made from.
const STREAM_EVENTS: usize = 200;
/// A seal every this many royalty entries.
const SEAL_EVERY_USAGES: u64 = 4;

struct Sample {
    log: ExportedLog,
    /// The file as `audit export --format log` writes it.
    text: Vec<u8>,
    document: Value,
    pin: [u8; 32],
}

fn sample() -> &'static Sample {
    static SAMPLE: OnceLock<Sample> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let events = generate(31, STREAM_EVENTS, SEAL_EVERY_USAGES);
        let projections = rebuild(&events, keyed());
        let log = export::export_log(&projections.royalty);
        let newest = log.seals.last().expect("the stream is sealed").to_seal().expect("a valid seal");
        let pin = Report::seal_hash(&newest);
        let text = serde_json::to_vec_pretty(&log).expect("json");
        let document = serde_json::from_slice(&text).expect("the export is JSON");
        Sample { log, text, document, pin }
    })
}

/// What `gateways::audit::verify_file` does with a file's bytes (without the key files).
fn read(bytes: &[u8]) -> Result<ExportedLog, String> {
    let text = std::str::from_utf8(bytes).map_err(|error| format!("not UTF-8: {error}"))?;
    serde_json::from_str(text).map_err(|error| format!("not an exported royalty log: {error}"))
}

fn verify(log: &ExportedLog, pin: Option<[u8; 32]>) -> VerifyReport {
    export::verify_log(log, &master(), &engine_public(), pin)
}

/// What a log says, free of its spelling: the seals as the verifier reads them (a hex
/// digit's case, say, is spelling).
#[derive(Debug, PartialEq)]
struct Meaning<'a> {
    format: &'a str,
    epoch: u64,
    entries: &'a [projections::royalty::ChainedEntry],
    seals: Vec<Result<RightsReportSealed, String>>,
}

fn meaning(log: &ExportedLog) -> Meaning<'_> {
    Meaning { format: &log.format, epoch: log.epoch, entries: &log.entries, seals: log.seals.iter().map(|seal| seal.to_seal()).collect() }
}

/// The documented blind spot: the same log with unsealed entries cut from its end.
fn only_unsealed_tail_cut(original: &ExportedLog, mutated: &ExportedLog) -> bool {
    let sealed = original.seals.last().map_or(0, |seal| seal.last_entry as usize + 1);
    mutated.format == original.format
        && mutated.epoch == original.epoch
        && meaning(mutated).seals == meaning(original).seals
        && mutated.entries.len() < original.entries.len()
        && mutated.entries.len() >= sealed
        && original.entries.starts_with(&mutated.entries)
}

// ---- mutations ----

/// One edit of the file's bytes.
#[derive(Clone, Debug)]
enum ByteEdit {
    FlipBit {
        at: Index,
        bit: u8,
    },
    Overwrite {
        at: Index,
        byte: u8,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Delete {
        at: Index,
        len: usize,
    },
    Truncate {
        at: Index,
    },
    /// A hex digit (anywhere in the file) replaced by another character.
    HexDigit {
        at: Index,
        to: u8,
    },
}

fn arb_byte_edit() -> impl Strategy<Value = ByteEdit> {
    let byte = prop_oneof![any::<u8>(), select(b"0123456789abcdefABCDEF\"{}[],: \n\\-.eE".to_vec())];
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| ByteEdit::FlipBit { at, bit }),
        3 => (any::<Index>(), byte.clone()).prop_map(|(at, byte)| ByteEdit::Overwrite { at, byte }),
        2 => (any::<Index>(), vec(byte, 1..4)).prop_map(|(at, bytes)| ByteEdit::Insert { at, bytes }),
        2 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| ByteEdit::Delete { at, len }),
        1 => any::<Index>().prop_map(|at| ByteEdit::Truncate { at }),
        6 => (any::<Index>(), select(b"0123456789abcdefABCDEFg".to_vec())).prop_map(|(at, to)| ByteEdit::HexDigit { at, to }),
    ]
}

fn edit_bytes(bytes: &mut Vec<u8>, edit: &ByteEdit) {
    let len = bytes.len();
    match edit {
        ByteEdit::FlipBit { at, bit } if len > 0 => bytes[at.index(len)] ^= 1 << bit,
        ByteEdit::Overwrite { at, byte } if len > 0 => bytes[at.index(len)] = *byte,
        ByteEdit::Insert { at, bytes: inserted } => {
            let at = at.index(len + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        ByteEdit::Delete { at, len: count } if len > 0 => {
            let at = at.index(len);
            bytes.drain(at..(at + count).min(len));
        }
        ByteEdit::Truncate { at } => bytes.truncate(at.index(len + 1)),
        ByteEdit::HexDigit { at, to } => {
            let digits: Vec<usize> = (0..len).filter(|&i| bytes[i].is_ascii_hexdigit()).collect();
            if !digits.is_empty() {
                bytes[digits[at.index(digits.len())]] = *to;
            }
        }
        ByteEdit::FlipBit { .. } | ByteEdit::Overwrite { .. } | ByteEdit::Delete { .. } => {}
    }
}

/// A JSON value a field might be replaced with.
fn arb_json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        select(vec![0i64, 1, 2, -1, i64::MIN, i64::MAX]).prop_map(Value::from),
        select(vec![u64::MAX, u64::MAX - 1, 1 << 53, 50_000_001]).prop_map(Value::from),
        select(vec![0.5f64, 1.0, -0.0, 1e300]).prop_map(Value::from),
        "[0-9a-f]{0,70}".prop_map(Value::String),
        ".{0,12}".prop_map(Value::String),
        Just(Value::Array(vec![])),
        Just(Value::Object(serde_json::Map::new())),
    ]
}

/// One edit of the parsed JSON, at a node picked among all of the document's nodes.
#[derive(Clone, Debug)]
enum JsonEdit {
    Replace {
        at: Index,
        with: Value,
    },
    /// Replace a string with other hex or a number with another number: the file still
    /// reads, so the verifier has to find it.
    SameType {
        at: Index,
        hex: String,
        number: u64,
    },
    /// Remove an object's key or an array's element.
    Remove {
        at: Index,
    },
    /// Insert a copy of an array element next to it.
    Duplicate {
        at: Index,
    },
    /// Swap an array element with its neighbour.
    Swap {
        at: Index,
    },
    /// Change one hex digit of a string (to another digit, or the same one in the other case).
    HexDigit {
        at: Index,
        digit: Index,
        to: char,
    },
    /// Add a key to an object.
    AddKey {
        at: Index,
        key: String,
        with: Value,
    },
    /// A number one more or one less.
    Nudge {
        at: Index,
        up: bool,
    },
}

fn arb_json_edit() -> impl Strategy<Value = JsonEdit> {
    let key = prop_oneof![
        select(vec!["format", "epoch", "entries", "seals", "index", "y", "z", "ciphertext", "signature", "unknown"]).prop_map(String::from),
        "[a-z_]{1,8}"
    ];
    prop_oneof![
        3 => (any::<Index>(), arb_json_scalar()).prop_map(|(at, with)| JsonEdit::Replace { at, with }),
        4 => (any::<Index>(), prop_oneof!["[0-9a-f]{64}", "([0-9a-f]{2}){0,40}"], prop_oneof![0u64..64, Just(u64::MAX), any::<u64>()])
            .prop_map(|(at, hex, number)| JsonEdit::SameType { at, hex, number }),
        2 => any::<Index>().prop_map(|at| JsonEdit::Remove { at }),
        1 => any::<Index>().prop_map(|at| JsonEdit::Duplicate { at }),
        1 => any::<Index>().prop_map(|at| JsonEdit::Swap { at }),
        3 => (any::<Index>(), any::<Index>(), select("0123456789abcdefABCDEFg".chars().collect::<Vec<_>>())).prop_map(|(at, digit, to)| JsonEdit::HexDigit { at, digit, to }),
        1 => (any::<Index>(), key, arb_json_scalar()).prop_map(|(at, key, with)| JsonEdit::AddKey { at, key, with }),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(at, up)| JsonEdit::Nudge { at, up }),
    ]
}

/// The JSON pointers of every node of `value` (the root is "").
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                pointers(child, format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{index}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// The parent's pointer and the last step of `pointer` (None for the root).
fn split(pointer: &str) -> Option<(&str, &str)> {
    pointer.rsplit_once('/')
}

fn edit_json(document: &mut Value, edit: &JsonEdit) {
    let mut all = Vec::new();
    pointers(document, String::new(), &mut all);
    let pick = |at: &Index| all[at.index(all.len())].clone();
    match edit {
        JsonEdit::Replace { at, with } => {
            if let Some(node) = document.pointer_mut(&pick(at)) {
                *node = with.clone();
            }
        }
        JsonEdit::SameType { at, hex, number } => match document.pointer_mut(&pick(at)) {
            Some(node @ Value::String(_)) => *node = Value::String(hex.clone()),
            Some(node @ Value::Number(_)) => *node = Value::from(*number),
            _ => {}
        },
        JsonEdit::Remove { at } => {
            let pointer = pick(at);
            if let Some((parent, last)) = split(&pointer) {
                match document.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(last);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(index) = last.parse::<usize>() {
                            items.remove(index);
                        }
                    }
                    _ => {}
                }
            }
        }
        JsonEdit::Duplicate { at } | JsonEdit::Swap { at } => {
            let pointer = pick(at);
            if let Some((parent, last)) = split(&pointer)
                && let Some(Value::Array(items)) = document.pointer_mut(parent)
                && let Ok(index) = last.parse::<usize>()
            {
                if matches!(edit, JsonEdit::Duplicate { .. }) {
                    let copy = items[index].clone();
                    items.insert(index, copy);
                } else if index + 1 < items.len() {
                    items.swap(index, index + 1);
                }
            }
        }
        JsonEdit::HexDigit { at, digit, to } => {
            if let Some(Value::String(text)) = document.pointer_mut(&pick(at))
                && !text.is_empty()
            {
                let mut chars: Vec<char> = text.chars().collect();
                let index = digit.index(chars.len());
                chars[index] = *to;
                *text = chars.into_iter().collect();
            }
        }
        JsonEdit::AddKey { at, key, with } => {
            if let Some(Value::Object(map)) = document.pointer_mut(&pick(at)) {
                map.insert(key.clone(), with.clone());
            }
        }
        JsonEdit::Nudge { at, up } => {
            if let Some(node) = document.pointer_mut(&pick(at))
                && let Some(number) = node.as_u64()
            {
                *node = Value::from(if *up { number.wrapping_add(1) } else { number.wrapping_sub(1) });
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Bytes(Vec<ByteEdit>),
    /// JSON edits, then written compact or pretty.
    Json(Vec<JsonEdit>, bool),
    /// Random bytes instead of a log.
    Random(Vec<u8>),
    /// A random JSON document instead of a log.
    RandomJson(Value),
}

fn arb_random_json() -> impl Strategy<Value = Value> {
    arb_json_scalar().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((select(vec!["format", "epoch", "entries", "seals", "index", "ciphertext", "y", "z"]).prop_map(String::from), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => vec(arb_byte_edit(), 1..5).prop_map(Mutation::Bytes),
        6 => (vec(arb_json_edit(), 1..4), any::<bool>()).prop_map(|(edits, pretty)| Mutation::Json(edits, pretty)),
        1 => vec(any::<u8>(), 0..512).prop_map(Mutation::Random),
        1 => arb_random_json().prop_map(Mutation::RandomJson),
    ]
}

impl Mutation {
    fn kind(&self) -> &'static str {
        match self {
            Mutation::Bytes(_) => "byte edits",
            Mutation::Json(..) => "JSON edits",
            Mutation::Random(_) => "random bytes",
            Mutation::RandomJson(_) => "random JSON",
        }
    }
}

fn apply(sample: &Sample, mutation: &Mutation) -> Vec<u8> {
    match mutation {
        Mutation::Bytes(edits) => {
            let mut bytes = sample.text.clone();
            for edit in edits {
                edit_bytes(&mut bytes, edit);
            }
            bytes
        }
        Mutation::Json(edits, pretty) => {
            let mut document = sample.document.clone();
            for edit in edits {
                edit_json(&mut document, edit);
            }
            if *pretty { serde_json::to_vec_pretty(&document) } else { serde_json::to_vec(&document) }.expect("json")
        }
        Mutation::Random(bytes) => bytes.clone(),
        Mutation::RandomJson(document) => serde_json::to_vec(document).expect("json"),
    }
}

/// What became of a mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    /// The file does not read as an exported log: reported as a failure by `verify_file`.
    Unreadable,
    /// Reads, says something else, and verification finds it.
    Caught,
    /// Reads and says the same thing (only its spelling changed): verifies.
    SameContent,
    /// The documented blind spot: unsealed entries cut from the end.
    UnsealedTailCut,
}

fn judge(sample: &Sample, bytes: &[u8]) -> Result<Verdict, String> {
    let log = match read(bytes) {
        Ok(log) => log,
        Err(_) => return Ok(Verdict::Unreadable),
    };
    let pinned = verify(&log, Some(sample.pin));
    if !pinned.chain_ok {
        // Without the pin the verifier takes other paths (a shorter log may pass): it must
        // not panic on them either. With the pin found, the two are the same check.
        verify(&log, None);
    }
    if meaning(&log) == meaning(&sample.log) {
        return if pinned.chain_ok { Ok(Verdict::SameContent) } else { Err(format!("the same content no longer verifies: {:?}", pinned.first_bad)) };
    }
    if only_unsealed_tail_cut(&sample.log, &log) {
        // Known and documented (export.rs): no seal covers those entries.
        return if pinned.chain_ok { Ok(Verdict::UnsealedTailCut) } else { Err(format!("a cut unsealed tail is reported: {:?}", pinned.first_bad)) };
    }
    if pinned.chain_ok {
        return Err(format!(
            "a changed log verifies ({} entries, {} seals verified, {} unsealed)",
            pinned.entries, pinned.seals_verified, pinned.unsealed_entries
        ));
    }
    Ok(Verdict::Caught)
}

fn cases() -> u32 {
    match std::env::var("VOUCHSAFE_FUZZ_CASES") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("VOUCHSAFE_FUZZ_CASES must be a number, not {text:?}")),
        Err(_) => CASES_DEFAULT,
    }
}

#[test]
fn the_sample_export_verifies_and_has_sealed_and_unsealed_entries() {
    let sample = sample();
    let report = verify(&sample.log, Some(sample.pin));
    assert!(report.chain_ok, "{:?}", report.first_bad);
    assert!(report.seals_verified >= 3, "{} seals", report.seals_verified);
    assert!(report.entries >= 20, "{} entries", report.entries);
    assert_eq!(read(&sample.text).expect("reads back"), sample.log);
}

#[test]
fn mutated_exported_logs_never_verify_unless_only_their_spelling_changed() {
    let sample = sample();
    let cases = cases();
    let verdicts: RefCell<BTreeMap<(&str, Verdict), u64>> = RefCell::new(BTreeMap::new());
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    // A fixed seed by default (CI is repeatable); `VOUCHSAFE_FUZZ_SEED` sets another.
    let seed = std::env::var("VOUCHSAFE_FUZZ_SEED")
        .ok()
        .map_or(SEED_DEFAULT, |text| text.trim().parse().unwrap_or_else(|_| panic!("VOUCHSAFE_FUZZ_SEED must be a number, not {text:?}")));
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let started = std::time::Instant::now();
    let result = runner.run(&arb_mutation(), |mutation| {
        let bytes = apply(sample, &mutation);
        let verdict = judge(sample, &bytes).map_err(TestCaseError::fail)?;
        *verdicts.borrow_mut().entry((mutation.kind(), verdict)).or_default() += 1;
        Ok(())
    });
    let verdicts = verdicts.into_inner();
    println!(
        "exported log fuzz: {cases} mutations, seed {seed}, of a log of {} entries and {} seals in {:.1?} (VOUCHSAFE_FUZZ_CASES, VOUCHSAFE_FUZZ_SEED)",
        sample.log.entries.len(),
        sample.log.seals.len(),
        started.elapsed()
    );
    for ((kind, verdict), count) in &verdicts {
        println!("  {kind:<14} {verdict:?}: {count}");
    }
    if let Err(failure) = result {
        panic!("seed {seed}: {failure}");
    }
    // Negative control: the mutations get past the parser often enough to test the verifier.
    let caught: u64 = verdicts.iter().filter(|((_, verdict), _)| *verdict == Verdict::Caught).map(|(_, count)| count).sum();
    assert!(caught * 5 >= u64::from(cases), "at least a fifth of the mutations are read and then caught by verification: {verdicts:?}");
}
