//! Architecture invariants as checks over the source tree (after rust-analyzer's and
//! TigerBeetle's "tidy" tests): each rule names what it protects, reads the workspace's
//! `src/` folders as text, and fails with every offending `file:line`. Test code (files
//! under `tests/`, and a file's trailing `#[cfg(test)]` module) is not held to them.
//!
//! Every exception is an allowlist entry with its reason; a stale entry (one that no
//! longer matches anything) fails too, so the lists only shrink.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("replay-tests lives in the workspace").to_path_buf()
}

/// A source file's non-test lines: (1-based line number, text), comments dropped, and
/// nothing from a `#[cfg(test)]` attribute on (test modules sit at the end of a file).
struct Source {
    path: String,
    lines: Vec<(usize, String)>,
    total_lines: usize,
}

fn sources(crate_dirs: &[&str]) -> Vec<Source> {
    let root = workspace();
    let mut files = Vec::new();
    for dir in crate_dirs {
        collect(&root.join(dir).join("src"), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
            let path = file.strip_prefix(&root).expect("under the workspace").to_string_lossy().replace('\\', "/");
            let total_lines = text.lines().count();
            let mut lines = Vec::new();
            for (index, line) in text.lines().enumerate() {
                let trimmed = line.trim_start();
                if trimmed.starts_with("#[cfg(test)]") {
                    break;
                }
                if trimmed.starts_with("//") {
                    continue;
                }
                let code = match line.find("//") {
                    // A `//` inside a string literal (a URL) is kept; a trailing comment is cut.
                    Some(at) if !line[..at].contains('"') => &line[..at],
                    _ => line,
                };
                lines.push((index + 1, code.to_string()));
            }
            Source { path, lines, total_lines }
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            // Unit-test folders inside src (engine/src/domain/tests, …) are test code.
            if path.file_name().is_some_and(|name| name == "tests") {
                continue;
            }
            collect(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            if path.file_name().is_some_and(|name| name == "tests.rs" || name == "conformance.rs" || name == "testing.rs") {
                continue;
            }
            files.push(path);
        }
    }
}

/// Words of `text` followed by `::` (path roots and segments).
fn path_words(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let bytes = text.as_bytes();
    let mut start = None;
    for (index, &byte) in bytes.iter().enumerate() {
        let ident = byte.is_ascii_alphanumeric() || byte == b'_';
        match (ident, start) {
            (true, None) => start = Some(index),
            (false, Some(from)) => {
                if text[index..].starts_with("::") && (from == 0 || !text[..from].ends_with("::")) {
                    words.push(&text[from..index]);
                }
                start = None;
            }
            _ => {}
        }
    }
    words
}

/// Checks `hits` against `allowed` (path suffix, reason): every hit needs an entry, every
/// entry must still be hit.
fn judge(rule: &str, hits: Vec<(String, usize, String)>, allowed: &[(&str, &str)]) {
    let mut problems = Vec::new();
    for (path, line, text) in &hits {
        if !allowed.iter().any(|(file, _)| path.ends_with(file)) {
            problems.push(format!("{path}:{line}: {}", text.trim()));
        }
    }
    for (file, reason) in allowed {
        assert!(!reason.is_empty(), "{rule}: the allowlist entry {file} needs a reason");
        if !hits.iter().any(|(path, _, _)| path.ends_with(file)) {
            problems.push(format!("stale allowlist entry {file} (nothing there breaks the rule any more): remove it"));
        }
    }
    assert!(problems.is_empty(), "{rule}:\n  {}", problems.join("\n  "));
}

/// The functional core stays pure: `engine::domain` names nothing but std, itself and the
/// id types (no async runtime, log, store, network, serialisation or clock), so replay
/// never re-decides and the domain tests need no I/O.
/// A line of the domain that names a path outside std, the domain and the id types.
fn domain_line_reaches_out(text: &str) -> bool {
    // thiserror derives `Rejection`'s Display at compile time (no runtime, no I/O); the
    // primitive types' associated functions (`u64::from`) are std.
    const ROOTS_ALLOWED: &[&str] = &[
        "std",
        "core",
        "alloc",
        "crate",
        "super",
        "self",
        "Self",
        "thiserror",
        "u8",
        "u16",
        "u32",
        "u64",
        "u128",
        "usize",
        "i8",
        "i16",
        "i32",
        "i64",
        "i128",
        "isize",
        "f32",
        "f64",
        "str",
        "char",
        "bool",
    ];
    const CRATE_PATHS_ALLOWED: &[&str] = &["crate::domain", "crate::ids"];
    let trimmed = text.trim_start();
    // Lint attributes (`#[allow(clippy::…)]`) name no crate the code uses.
    if trimmed.starts_with("#[allow(") || trimmed.starts_with("#[expect(") {
        return false;
    }
    let foreign_root = path_words(text)
        .into_iter()
        .any(|word| word.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && !is_local_module(word) && !ROOTS_ALLOWED.contains(&word));
    let foreign_crate_path = text.match_indices("crate::").any(|(at, _)| !CRATE_PATHS_ALLOWED.iter().any(|allowed| text[at..].starts_with(allowed)));
    foreign_root || foreign_crate_path
}

#[test]
fn the_domain_imports_only_std_itself_and_the_id_types() {
    let mut hits = Vec::new();
    for source in sources(&["engine"]).into_iter().filter(|source| source.path.starts_with("engine/src/domain/")) {
        for (line, text) in &source.lines {
            if domain_line_reaches_out(text) {
                hits.push((source.path.clone(), *line, text.clone()));
            }
        }
    }
    judge(
        "engine::domain may use only std, crate::domain and crate::ids",
        hits,
        &[(
            "engine/src/domain/report.rs",
            "the seal chain's hash (blake3 derive_key over the seal's fields) is a pure function the report aggregate's decide and evolve need; no I/O",
        )],
    )
}

/// Lower-case words that are the domain's own modules or enum paths, not crates.
fn is_local_module(word: &str) -> bool {
    const LOCAL: &[&str] = &[
        "account",
        "catalog",
        "config",
        "event",
        "order",
        "party",
        "preview",
        "rejection",
        "report",
        "settlement",
        "voucher",
        "validate",
        "testing",
        "fixtures",
        "ids",
        "domain",
    ];
    LOCAL.contains(&word)
}

/// Crypto lives in one module (DESIGN.md, "Crypto (one module, one place)"): a primitive
/// called elsewhere escapes the review that module gets (constant-time compares, zeroized
/// keys, domain-separated derivations).
fn calls_a_crypto_primitive(text: &str) -> bool {
    const PRIMITIVES: &[&str] = &["rsa", "aes_gcm", "hmac", "blake3", "sha2", "subtle", "getrandom", "ed25519_dalek", "aws_lc_rs", "ring", "pkcs8", "scrypt"];
    path_words(text).iter().any(|word| PRIMITIVES.contains(word))
}

#[test]
fn crypto_primitives_are_called_only_in_engine_crypto() {
    let mut hits = Vec::new();
    for source in sources(&["proto", "engine", "projections", "gateways"]) {
        if source.path.starts_with("engine/src/crypto") {
            continue;
        }
        for (line, text) in &source.lines {
            if calls_a_crypto_primitive(text) {
                hits.push((source.path.clone(), *line, text.clone()));
            }
        }
    }
    judge(
        "a crypto primitive is called outside engine::crypto",
        hits,
        &[
            (
                "gateways/src/bench/raw.rs",
                "the raw baselines time the crates themselves (rsa's OAEP, a blake3 message id, aes-gcm decryption), not our wrappers",
            ),
            ("engine/src/domain/report.rs", "the seal chain's hash: the domain may not import engine::crypto (see the domain rule)"),
        ],
    )
}

/// One status mapping: a refusal's gRPC code is chosen in one place per program
/// (`server/status.rs`, `node/status.rs`), so the same rejection never gets two codes and
/// no internal text slips into a status by accident.
/// `Status::new(…)`, `Status::permission_denied(…)` and the like (a constructor call).
fn builds_a_status(text: &str) -> bool {
    text.match_indices("Status::").any(|(at, _)| {
        let rest = &text[at + "Status::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && rest[name.len()..].starts_with('(')
    })
}

#[test]
fn grpc_statuses_are_built_only_in_the_status_mapping_modules() {
    let mut hits = Vec::new();
    for source in sources(&["engine", "projections", "gateways"]) {
        if source.path.ends_with("/status.rs") {
            continue;
        }
        for (line, text) in &source.lines {
            if builds_a_status(text) {
                hits.push((source.path.clone(), *line, text.clone()));
            }
        }
    }
    judge(
        "a gRPC status is built outside a status mapping module",
        hits,
        &[
            ("gateways/src/cli/player.rs", "the CLI re-wraps a refusal it received (or a failed local check) for its exit code; nothing is served"),
            ("gateways/src/common/cred.rs", "the client's interceptor refuses a credential it cannot send; the status never leaves the client"),
        ],
    )
}

/// Projections only read (DESIGN.md, "Layout"): they compute advice (a node, what is due,
/// a seal draft) and never decide or append; `engine::app` does. So nothing in
/// `projections/src` names the use cases (`engine::app`), the command handler
/// (`engine::handler`, `Handler`) or an append.
fn names_a_writer(text: &str) -> bool {
    ["engine::app", "engine::handler", "Handler", "Market", ".handle::<", "log.append(", "EventLog::append"].iter().any(|needle| text.contains(needle))
}

#[test]
fn projections_name_no_use_case_handler_or_append() {
    let mut hits = Vec::new();
    for source in sources(&["projections"]) {
        for (line, text) in &source.lines {
            if names_a_writer(text) {
                hits.push((source.path.clone(), *line, text.clone()));
            }
        }
    }
    judge("projections name a use case, the handler or an append", hits, &[])
}

/// Every queue has a limit (STYLE.md): an unbounded channel turns a slow consumer into
/// unbounded memory.
fn opens_an_unbounded_channel(text: &str) -> bool {
    ["unbounded_channel", "UnboundedSender", "UnboundedReceiver", "mpsc::unbounded"].iter().any(|needle| text.contains(needle))
}

#[test]
fn no_unbounded_channel_in_src() {
    let mut hits = Vec::new();
    for source in sources(&["proto", "engine", "projections", "gateways"]) {
        for (line, text) in &source.lines {
            if opens_an_unbounded_channel(text) {
                hits.push((source.path.clone(), *line, text.clone()));
            }
        }
    }
    judge("an unbounded channel in src", hits, &[])
}

/// A file past this many lines holds more than one idea; split it by what it is about.
const SOURCE_LINES_MAX: usize = 1_200;

#[test]
fn no_source_file_passes_1200_lines() {
    let root = workspace();
    let hits = long_files(&root, &["proto", "engine", "projections", "gateways", "replay-tests"]);
    judge(&format!("a source file passes {SOURCE_LINES_MAX} lines"), hits, &[])
}

/// Files under `root`'s `dirs` longer than `SOURCE_LINES_MAX` lines: (path, lines, why).
fn long_files(root: &Path, dirs: &[&str]) -> Vec<(String, usize, String)> {
    let mut files = Vec::new();
    for dir in dirs {
        collect_all(&root.join(dir), &mut files);
    }
    let mut hits = Vec::new();
    for file in files {
        let lines = std::fs::read_to_string(&file).expect("readable").lines().count();
        if lines > SOURCE_LINES_MAX {
            let path = file.strip_prefix(root).expect("under the root").to_string_lossy().to_string();
            hits.push((path, lines, format!("{lines} lines")));
        }
    }
    hits
}

/// The line-count rule's control: a planted file one line over the limit is found (in a
/// nested folder), one at the limit and a `target` folder's are not.
#[test]
fn the_line_count_finds_a_planted_long_file() {
    let root = tempfile::tempdir().expect("temporary directory");
    let write = |path: &str, lines: usize| {
        let path = root.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, "x\n".repeat(lines)).expect("write");
    };
    write("engine/src/deep/long.rs", SOURCE_LINES_MAX + 1);
    write("engine/src/at_limit.rs", SOURCE_LINES_MAX);
    write("engine/target/generated.rs", SOURCE_LINES_MAX * 2);
    let hits = long_files(root.path(), &["engine"]);
    let found: Vec<&str> = hits.iter().map(|(path, ..)| path.as_str()).collect();
    assert_eq!(found, vec!["engine/src/deep/long.rs"]);
}

fn collect_all(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            collect_all(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The edge is one folder per program; the server, the node agent and the player never
/// import each other (a node must be deployable without the engine's code paths, a player
/// without either), and `common` imports no program.
fn imports_a_program(text: &str, programs: &[&str]) -> bool {
    programs.iter().any(|program| {
        text.contains(&format!("crate::{program}::")) || text.contains(&format!("crate::{program};")) || text.contains(&format!("crate::{{{program}"))
    })
}

#[test]
fn gateway_programs_do_not_import_each_other() {
    const PROGRAMS: &[&str] = &["server", "node", "player", "witness"];
    const ALL_PROGRAMS: &[&str] = &["server", "node", "player", "witness", "cli", "demo", "bench", "audit"];
    let mut hits = Vec::new();
    for source in sources(&["gateways"]) {
        let Some(folder) = source.path.strip_prefix("gateways/src/").and_then(|rest| rest.split_once('/')).map(|(folder, _)| folder.to_string()) else {
            continue;
        };
        let forbidden: Vec<&str> = if PROGRAMS.contains(&folder.as_str()) {
            PROGRAMS.iter().copied().filter(|program| *program != folder).collect()
        } else if folder == "common" {
            ALL_PROGRAMS.to_vec()
        } else {
            continue;
        };
        for (line, text) in &source.lines {
            if imports_a_program(text, &forbidden) {
                hits.push((source.path.clone(), *line, text.clone()));
            }
        }
    }
    judge("a gateway program imports another (server, node, player), or common imports a program", hits, &[])
}

/// The rules above must see the tree: a checker that reads nothing passes everything.
#[test]
fn the_checks_read_the_source_tree() {
    let files = sources(&["proto", "engine", "projections", "gateways"]);
    assert!(files.len() > 50, "only {} source files found under the workspace", files.len());
    assert!(files.iter().any(|source| source.path == "engine/src/domain/voucher.rs"), "the domain is read");
    assert!(files.iter().any(|source| source.path == "gateways/src/server/status.rs"), "the edge is read");
    let total: usize = files.iter().map(|source| source.total_lines).sum();
    assert!(total > 20_000, "only {total} lines read");
}

/// Negative controls: each rule's detector, fed an offending line, finds it.
#[test]
fn each_detector_catches_a_planted_violation() {
    assert_eq!(path_words("let x = tokio::spawn(async {});"), vec!["tokio"]);
    assert_eq!(path_words("use blake3::Hasher;"), vec!["blake3"]);
    assert!(path_words("engine::crypto::hash(x)") == vec!["engine"], "only the root of a path counts");
    // Each rule's detector, on a line that breaks it and on one that does not.
    assert!(domain_line_reaches_out("use tokio::sync::Mutex;") && domain_line_reaches_out("let now = std::time::SystemTime::now(); sled::open(p)"));
    assert!(domain_line_reaches_out("use crate::log::EventLog;"), "a crate path outside domain and ids");
    assert!(!domain_line_reaches_out("use crate::ids::{Millis, VoucherId};") && !domain_line_reaches_out("let total = u64::from(x) + std::cmp::max(a, b);"));
    assert!(calls_a_crypto_primitive("let hash = blake3::hash(bytes);") && calls_a_crypto_primitive("use rsa::Oaep;"));
    assert!(!calls_a_crypto_primitive("let hash = crypto::hash(bytes);"));
    assert!(builds_a_status(r#"Err(Status::permission_denied("no"))"#) && builds_a_status("tonic::Status::new(code, text)"));
    assert!(!builds_a_status("fn f() -> Result<(), Status> { status::wrong_role() }"), "naming the type is not building one");
    assert!(builds_a_status("Status::from(error)"), "a conversion builds a status too");
    assert!(names_a_writer("market.handler().handle::<Voucher>(…)") && names_a_writer("use engine::app::Market;"));
    assert!(!names_a_writer("let seal = p.unsigned_seal(1);"));
    assert!(opens_an_unbounded_channel("let (tx, rx) = tokio::sync::mpsc::unbounded_channel();"));
    assert!(!opens_an_unbounded_channel("let (tx, rx) = tokio::sync::mpsc::channel(64);"));
    assert!(
        imports_a_program("use crate::node::{Reassembly, CHALLENGE_BYTES};", &["server", "node"])
            && imports_a_program("crate::server::start(config)", &["server"])
    );
    assert!(!imports_a_program("use crate::common::transfer::Reassembly;", &["server", "node"]));
    let planted = vec![("engine/src/domain/voucher.rs".to_string(), 1, "tokio::spawn".to_string())];
    let caught = std::panic::catch_unwind(|| judge("planted", planted, &[]));
    assert!(caught.is_err(), "a violation without an allowlist entry fails");
    let stale = std::panic::catch_unwind(|| judge("stale", Vec::new(), &[("engine/src/x.rs", "gone")]));
    assert!(stale.is_err(), "an allowlist entry that matches nothing fails");
}
