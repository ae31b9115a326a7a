//! The NATS configurations shipped in deploy/ are valid for the nats-server the tests use
//! and keep the durability the design requires (fsync before every acknowledgement); the
//! engine's example config (deploy/engine.toml) and the TLS example in deploy/README.md
//! are valid `serve --config` files, and the example sets every key there is. The market
//! of deploy/market/ (3 engines, 3 NATS nodes of an R3 cluster, 2 delivery nodes, as
//! systemd units): every unit's command line parses with the real CLI, the engines differ
//! where they must (data dirs, ports) and agree where they must (stream, replicas 3, keys,
//! the cluster's nodes as the engine user), the NATS nodes are the cluster's with the
//! users of deploy/nats-auth.conf; each protection with a negative control.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn configs() -> Vec<PathBuf> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut found = vec![deploy.join("nats-single.conf"), deploy.join("nats-auth.conf")];
    let mut cluster: Vec<PathBuf> = std::fs::read_dir(deploy.join("nats-cluster"))
        .expect("deploy/nats-cluster exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "conf"))
        .collect();
    cluster.sort();
    assert_eq!(cluster.len(), 3, "the cluster ships three node configurations");
    found.extend(cluster);
    found
}

#[test]
fn every_shipped_nats_config_is_valid_and_fsyncs_every_write() {
    let binary = replay_tests::find_binary().unwrap_or_else(|e| panic!("{e}"));
    for config in configs() {
        let output = Command::new(&binary).arg("-c").arg(&config).arg("-t").output().expect("run nats-server -t");
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && said.contains("is valid"), "{} is not valid: {said}", config.display());
        let text = std::fs::read_to_string(&config).expect("readable config");
        assert!(text.lines().any(|line| line.trim() == "sync_interval: always"), "{} must fsync every write", config.display());
    }
}

/// deploy/nats-auth.conf (run against a real server by audit_read_only.rs) grants no user a
/// way to change, empty or remove a stream, nor a blanket wildcard; and it keeps the three
/// kinds of users.
#[test]
fn the_auth_config_grants_no_one_stream_changes_or_wildcards() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats-auth.conf");
    let text = std::fs::read_to_string(&path).expect("deploy/nats-auth.conf");
    let granted: Vec<&str> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter(|code| !code.contains("deny"))
        .flat_map(|code| code.split('"').skip(1).step_by(2))
        .collect();
    assert!(granted.contains(&"vs.>") && granted.contains(&"$JS.API.STREAM.INFO.VOUCHSAFE"), "{granted:?}");
    for subject in &granted {
        for forbidden in ["STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE", "MSG.DELETE"] {
            assert!(!subject.contains(forbidden), "deploy/nats-auth.conf grants {subject}");
        }
        assert!(![">", "$JS.>", "$JS.API.>"].contains(subject), "deploy/nats-auth.conf grants {subject}");
    }
    for user in ["user: engine", "user: auditor", "user: node-NODE_A_ID"] {
        assert!(text.contains(user), "deploy/nats-auth.conf has no {user}");
    }
}

#[test]
fn negative_control_a_broken_config_is_caught() {
    let binary = replay_tests::find_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.conf");
    std::fs::write(&broken, "jetstream {\n  sync_interval: sometimes\n}\n").expect("write");
    let output = Command::new(&binary).arg("-c").arg(&broken).arg("-t").output().expect("run nats-server -t");
    assert!(!output.status.success(), "nats-server accepted a broken config");
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn the_engine_example_config_parses_and_sets_every_key() {
    let path = deploy_dir().join("engine.toml");
    let config = gateways::server::serve::load_file(&path).unwrap_or_else(|e| panic!("{e:#}"));
    // No `..`: a new key in `FileConfig` fails to compile here until the example has it.
    let gateways::server::serve::FileConfig {
        listen,
        metrics_listen,
        console_listen,
        tlog_listen,
        data_dir,
        media_dir,
        keys,
        nats_url,
        stream,
        replicas,
        group_commit,
        log_format,
        access_ttl_ms,
        sweep_interval_ms,
        seal_interval_ms,
        seal_entries_min,
        request_bytes_max,
        upload_bytes_max,
        requests_in_flight_max,
        assignment_feeds_max,
        request_read_ms,
        upload_read_ms,
        credential_requests_per_s,
        credential_requests_burst,
        peer_refusals_per_s,
        peer_refusals_burst,
        connections_per_peer_max,
        connections_max,
        preface_ms,
        tls,
    } = config;
    let set = [
        ("listen", listen.is_some()),
        ("metrics_listen", metrics_listen.is_some()),
        ("console_listen", console_listen.is_some()),
        ("tlog_listen", tlog_listen.is_some()),
        ("data_dir", data_dir.is_some()),
        ("media_dir", media_dir.is_some()),
        ("keys", keys.is_some()),
        ("nats_url", nats_url.is_some()),
        ("stream", stream.is_some()),
        ("replicas", replicas.is_some()),
        ("group_commit", group_commit.is_some()),
        ("log_format", log_format.is_some()),
        ("access_ttl_ms", access_ttl_ms.is_some()),
        ("sweep_interval_ms", sweep_interval_ms.is_some()),
        ("seal_interval_ms", seal_interval_ms.is_some()),
        ("seal_entries_min", seal_entries_min.is_some()),
        ("request_bytes_max", request_bytes_max.is_some()),
        ("upload_bytes_max", upload_bytes_max.is_some()),
        ("requests_in_flight_max", requests_in_flight_max.is_some()),
        ("assignment_feeds_max", assignment_feeds_max.is_some()),
        ("request_read_ms", request_read_ms.is_some()),
        ("upload_read_ms", upload_read_ms.is_some()),
        ("credential_requests_per_s", credential_requests_per_s.is_some()),
        ("credential_requests_burst", credential_requests_burst.is_some()),
        ("peer_refusals_per_s", peer_refusals_per_s.is_some()),
        ("peer_refusals_burst", peer_refusals_burst.is_some()),
        ("connections_per_peer_max", connections_per_peer_max.is_some()),
        ("connections_max", connections_max.is_some()),
        ("preface_ms", preface_ms.is_some()),
        ("tls", tls.is_some()),
    ];
    for (key, present) in set {
        assert!(present, "deploy/engine.toml does not set {key}");
    }
    let tls = tls.expect("checked above");
    assert!(tls.client_ca.is_some(), "deploy/engine.toml shows mTLS (tls.client_ca)");
    // The values pass the same checks `serve` applies at start (ranges, log format).
    let settings =
        gateways::server::serve::settings(&gateways::server::serve::ServeArgs { config: Some(path), ..Default::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(settings.engine.tls.is_some());
}

/// The ```toml blocks of deploy/README.md.
fn readme_toml_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).expect("deploy/README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_tls_example_in_the_deploy_readme_is_a_valid_serve_config() {
    let blocks = readme_toml_blocks();
    assert!(!blocks.is_empty(), "deploy/README.md shows a serve config");
    let dir = tempfile::tempdir().expect("temp dir");
    for (index, block) in blocks.iter().enumerate() {
        let path = dir.path().join(format!("readme-{index}.toml"));
        std::fs::write(&path, block).expect("write");
        let config = gateways::server::serve::load_file(&path).unwrap_or_else(|e| panic!("deploy/README.md block {index}: {e:#}\n{block}"));
        let tls = config.tls.unwrap_or_else(|| panic!("deploy/README.md block {index} has no [tls] section:\n{block}"));
        assert!(tls.client_ca.is_some(), "the README's example shows mTLS");
    }
    // Negative control: a misspelt key in the same example is refused.
    let misspelt = dir.path().join("misspelt.toml");
    std::fs::write(&misspelt, blocks[0].replace("client_ca", "client_cert_authority")).expect("write");
    let error = gateways::server::serve::load_file(&misspelt).expect_err("an unknown key is refused");
    assert!(format!("{error:#}").contains("client_cert_authority"), "{error:#}");
}

// ---------------------------------------------------------------------------------------
// The market: deploy/market/.

use clap::Parser as _;
use gateways::cli::args::{Cli, Command as CliCommand};

/// Where the units expect deploy/market/ (`cp -r deploy/market deploy/nats-cluster /etc/vouchsafe/`).
const MARKET_ETC: &str = "/etc/vouchsafe/market/";
const ENGINES: [&str; 3] = ["1", "2", "3"];
const NATS_NODES: [&str; 3] = ["n1", "n2", "n3"];
const DELIVERY_NODES: [&str; 2] = ["a", "b"];

/// A unit file's `key=value` lines per section; comments and blank lines left out.
fn unit(path: &Path) -> Result<BTreeMap<(String, String), String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut section = String::new();
    let mut entries = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';')) {
        if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            section = name.to_string();
        } else {
            let (key, value) = line.split_once('=').ok_or_else(|| format!("{}: not key=value: {line}", path.display()))?;
            entries.insert((section.clone(), key.trim().to_string()), value.trim().to_string());
        }
    }
    for (section, key) in [("Unit", "Description"), ("Service", "ExecStart"), ("Install", "WantedBy")] {
        if !entries.contains_key(&(section.to_string(), key.to_string())) {
            return Err(format!("{} has no {key} in [{section}]", path.display()));
        }
    }
    Ok(entries)
}

/// The file of deploy/market/ a path under `MARKET_ETC` names.
fn in_market(market: &Path, etc_path: &str) -> Result<PathBuf, String> {
    let name = etc_path.strip_prefix(MARKET_ETC).ok_or_else(|| format!("{etc_path} is not under {MARKET_ETC}"))?;
    let local = market.join(name);
    if local.is_file() { Ok(local) } else { Err(format!("{etc_path}: deploy/market/{name} does not exist")) }
}

/// The instance's command line: `%i` replaced, `${VAR}` from its EnvironmentFile.
fn command_line(market: &Path, unit_name: &str, instance: &str) -> Result<Vec<String>, String> {
    let entries = unit(&market.join(unit_name))?;
    let mut line = entries[&("Service".to_string(), "ExecStart".to_string())].replace("%i", instance);
    if let Some(env_file) = entries.get(&("Service".to_string(), "EnvironmentFile".to_string())) {
        let env_file = in_market(market, &env_file.replace("%i", instance))?;
        let text = std::fs::read_to_string(&env_file).map_err(|e| format!("{}: {e}", env_file.display()))?;
        for assignment in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
            let (name, value) = assignment.split_once('=').ok_or_else(|| format!("{}: not NAME=value: {assignment}", env_file.display()))?;
            line = line.replace(&format!("${{{name}}}"), value);
        }
    }
    if line.contains("${") || line.contains('%') {
        return Err(format!("{unit_name} ({instance}): unexpanded {line}"));
    }
    Ok(line.split_whitespace().map(str::to_string).collect())
}

/// The instance's `vouchsafe …` command, parsed by the real CLI.
fn vouchsafe_command(market: &Path, unit_name: &str, instance: &str) -> Result<CliCommand, String> {
    let argv = command_line(market, unit_name, instance)?;
    if argv.first().map(String::as_str) != Some("/usr/local/bin/vouchsafe") {
        return Err(format!("{unit_name} ({instance}) does not run /usr/local/bin/vouchsafe: {argv:?}"));
    }
    let parsed = Cli::try_parse_from(std::iter::once("vouchsafe".to_string()).chain(argv.into_iter().skip(1)));
    parsed.map(|cli| cli.command).map_err(|e| format!("{unit_name} ({instance}) does not parse: {e}"))
}

/// The cluster node's client address (`listen:` of deploy/nats-cluster/<node>.conf).
fn cluster_listen(cluster: &Path, node: &str) -> Result<String, String> {
    let path = cluster.join(format!("{node}.conf"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let listen = text.lines().find_map(|line| line.trim().strip_prefix("listen:")).ok_or_else(|| format!("{} has no listen", path.display()))?;
    Ok(listen.trim().to_string())
}

/// The `authorization { … }` block of a NATS configuration, from its first line on.
fn authorization_block(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let start = text.find("\nauthorization {").ok_or_else(|| format!("{} has no authorization block", path.display()))?;
    Ok(text[start + 1..].to_string())
}

/// Everything wrong with the market in `market` (deploy/market/, beside `market/../nats-cluster`).
fn market_problems(market: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let cluster = market.join("../nats-cluster");
    // The NATS nodes: the cluster's configurations with the users of nats-auth.conf.
    let mut client_addresses = Vec::new();
    for node in NATS_NODES {
        match command_line(market, "vouchsafe-nats@.service", node) {
            Ok(argv) if argv.len() == 3 && argv[0] == "/usr/local/bin/nats-server" && argv[1] == "-c" => match in_market(market, &argv[2]) {
                Ok(config) => {
                    let text = std::fs::read_to_string(&config).unwrap_or_default();
                    for include in [format!("include \"../nats-cluster/{node}.conf\""), "include \"users.conf\"".to_string()] {
                        if !text.lines().any(|line| line.trim() == include) {
                            problems.push(format!("{}: no line {include}", config.display()));
                        }
                    }
                }
                Err(problem) => problems.push(problem),
            },
            Ok(argv) => problems.push(format!("vouchsafe-nats@{node} runs {argv:?}, not /usr/local/bin/nats-server -c FILE")),
            Err(problem) => problems.push(problem),
        }
        match cluster_listen(&cluster, node) {
            Ok(listen) => client_addresses.push(listen),
            Err(problem) => problems.push(problem),
        }
    }
    let auth = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats-auth.conf");
    match (authorization_block(&market.join("users.conf")), authorization_block(&auth)) {
        (Ok(users), Ok(proven)) if users == proven => {
            // The engine user's grants for several engines (audit_read_only.rs runs them).
            for subject in ["\"vsg.VOUCHSAFE.>\"", "\"$KV.vsjobs-VOUCHSAFE.>\"", "\"$JS.API.STREAM.CREATE.KV_vsjobs-VOUCHSAFE\""] {
                if !users.contains(subject) {
                    problems.push(format!("users.conf does not grant the engine {subject}"));
                }
            }
        }
        (Ok(_), Ok(_)) => problems.push("users.conf's authorization block is not deploy/nats-auth.conf's".to_string()),
        (Err(problem), _) | (_, Err(problem)) => problems.push(problem),
    }
    // The engines: one stream of 3 replicas on the cluster, each its own data dir and ports.
    let mut engine_urls = Vec::new();
    let mut data_dirs = BTreeMap::new();
    let mut ports = BTreeMap::new();
    let mut shared = std::collections::BTreeSet::new();
    for engine in ENGINES {
        let args = match vouchsafe_command(market, "vouchsafe-engine@.service", engine) {
            Ok(CliCommand::Serve(args)) => args,
            Ok(_) => {
                problems.push(format!("vouchsafe-engine@{engine} does not run `vouchsafe serve`"));
                continue;
            }
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let config = match args.config.as_deref().map(|path| in_market(market, &path.to_string_lossy())) {
            Some(Ok(config)) => config,
            Some(Err(problem)) => {
                problems.push(problem);
                continue;
            }
            None => {
                problems.push(format!("vouchsafe-engine@{engine} has no --config"));
                continue;
            }
        };
        let settings = match gateways::server::serve::settings(&gateways::server::serve::ServeArgs { config: Some(config.clone()), ..args }) {
            Ok(settings) => settings,
            Err(error) => {
                problems.push(format!("{}: {error:#}", config.display()));
                continue;
            }
        };
        if settings.replicas != 3 {
            problems.push(format!("engine {engine}: replicas {} (the market's stream has 3)", settings.replicas));
        }
        let nats_url = settings.backend.nats_url.clone().unwrap_or_default();
        let servers: Vec<&str> = nats_url.split(',').collect();
        for address in &client_addresses {
            if !servers.iter().any(|server| server.starts_with("nats://engine:") && server.ends_with(&format!("@{address}"))) {
                problems.push(format!("engine {engine}: nats_url does not name cluster node {address} as the engine user"));
            }
        }
        shared.insert((settings.backend.stream.clone(), settings.engine.keys_dir.clone(), settings.group_commit));
        if let Some(other) = data_dirs.insert(settings.engine.data_dir.clone(), engine) {
            problems.push(format!("engines {other} and {engine} share the data_dir {}", settings.engine.data_dir.display()));
        }
        for address in [Some(settings.listen), settings.metrics_listen, settings.console_listen, settings.tlog_listen].into_iter().flatten() {
            if let Some(other) = ports.insert(address, format!("engine {engine}")) {
                problems.push(format!("engine {engine} listens on {address}, as {other} does"));
            }
        }
        engine_urls.push(format!("http://{}", settings.listen));
    }
    if shared.len() > 1 {
        problems.push(format!("the engines do not share one stream, keys and group commit: {shared:?}"));
    }
    // The delivery nodes: each talks to an engine of the market, a different one each.
    let mut node_engines = std::collections::BTreeSet::new();
    for node in DELIVERY_NODES {
        match vouchsafe_command(market, "vouchsafe-node@.service", node) {
            Ok(CliCommand::Node(args)) => {
                if !engine_urls.contains(&args.connect.connect) {
                    problems.push(format!("node {node} connects to {}, no engine of the market", args.connect.connect));
                }
                node_engines.insert(args.connect.connect.clone());
                if let Some(other) = data_dirs.insert(args.data_dir.clone(), node) {
                    problems.push(format!("node {node} shares the data_dir {} with {other}", args.data_dir.display()));
                }
                if let Some(other) = ports.insert(args.listen, format!("node {node}")) {
                    problems.push(format!("node {node} listens on {}, as {other} does", args.listen));
                }
            }
            Ok(_) => problems.push(format!("vouchsafe-node@{node} does not run `vouchsafe node`")),
            Err(problem) => problems.push(problem),
        }
    }
    if node_engines.len() != DELIVERY_NODES.len() {
        problems.push(format!("the delivery nodes talk to {} engine(s), not one each", node_engines.len()));
    }
    problems
}

/// deploy/market and deploy/nats-cluster copied side by side into a temporary directory,
/// for a negative control to break.
fn market_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    for folder in ["market", "nats-cluster"] {
        std::fs::create_dir(dir.path().join(folder)).expect("mkdir");
        for entry in std::fs::read_dir(deploy_dir().join(folder)).expect("deploy folder") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.path().join(folder).join(path.file_name().expect("a file name"))).expect("copy");
        }
    }
    let market = dir.path().join("market");
    (dir, market)
}

fn replace_in(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("readable");
    assert!(text.contains(from), "{} has no {from}", path.display());
    std::fs::write(path, text.replace(from, to)).expect("write");
}

#[test]
fn the_market_units_parse_with_the_cli_and_make_one_market() {
    let problems = market_problems(&deploy_dir().join("market"));
    assert!(problems.is_empty(), "deploy/market: {problems:#?}");
}

#[test]
fn the_market_nats_nodes_are_valid_cluster_nodes_with_users() {
    let binary = replay_tests::find_binary().unwrap_or_else(|e| panic!("{e}"));
    for node in NATS_NODES {
        let config = deploy_dir().join("market").join(format!("nats-{node}.conf"));
        let output = Command::new(&binary).arg("-c").arg(&config).arg("-t").output().expect("run nats-server -t");
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && said.contains("is valid"), "{} is not valid: {said}", config.display());
    }
    // Negative control: `-t` reads the includes (a missing one is refused), so the valid
    // files above were checked with the cluster's settings and the users in them.
    let (_dir, market) = market_copy();
    replace_in(&market.join("nats-n1.conf"), "include \"users.conf\"", "include \"no-such-users.conf\"");
    let output = Command::new(&binary).arg("-c").arg(market.join("nats-n1.conf")).arg("-t").output().expect("run nats-server -t");
    assert!(!output.status.success(), "nats-server accepted a configuration whose include is missing");
}

#[test]
fn negative_controls_a_broken_market_is_caught() {
    type Break = (&'static str, &'static str, &'static str, &'static str);
    let breaks: [Break; 6] = [
        ("engine-2.toml", "/var/lib/vouchsafe/engine-2", "/var/lib/vouchsafe/engine-1", "share the data_dir"),
        ("engine-3.toml", "replicas = 3", "replicas = 1", "replicas 1"),
        ("engine-3.toml", "127.0.0.1:50053", "127.0.0.1:50052", "listens on 127.0.0.1:50052"),
        ("engine-1.toml", "@127.0.0.1:4224\"", "@127.0.0.1:4225\"", "does not name cluster node 127.0.0.1:4224"),
        ("vouchsafe-node@.service", "--data-dir", "--data-dri", "does not parse"),
        ("users.conf", "\"vsg.VOUCHSAFE.>\"", "\"vsg.OTHER.>\"", "not deploy/nats-auth.conf's"),
    ];
    for (file, from, to, expected) in breaks {
        let (_dir, market) = market_copy();
        assert!(market_problems(&market).is_empty(), "the untouched copy is a good market");
        replace_in(&market.join(file), from, to);
        let problems = market_problems(&market);
        assert!(
            problems.iter().any(|problem| problem.contains(expected)),
            "{file} with {to} instead of {from}: expected a problem with {expected:?}, got {problems:#?}"
        );
    }
    // Node b talking to the same engine as node a.
    let (_dir, market) = market_copy();
    replace_in(&market.join("node-b.env"), "127.0.0.1:50052", "127.0.0.1:50051");
    let problems = market_problems(&market);
    assert!(problems.iter().any(|problem| problem.contains("not one each")), "{problems:#?}");
}
