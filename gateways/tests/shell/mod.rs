//! What the tests that drive the `vouchsafe` binary from a shell share: the command (with
//! the environment it must not inherit), a child killed on drop, a free loopback port and
//! the wait until something listens on it.
#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub fn vouchsafe() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vouchsafe"));
    command.env_remove("VOUCHSAFE_LISTEN").env_remove("RUST_LOG");
    command
}

/// Kills the child on drop (a failed assertion must not leave a server running).
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port} after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command in `dir` to completion: its exit code, the last line of stdout as JSON
/// (null when it is not), and stderr.
pub fn run(command: &mut Command, dir: &std::path::Path) -> (i32, serde_json::Value, String) {
    let output = command.current_dir(dir).output().expect("run vouchsafe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), value, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `player passport` for `consumer` against the engine at `url`, with the operator's
/// credential and engine key of `root/keys`, the player's files under `root/players`.
pub fn passport(root: &std::path::Path, url: &str, consumer: &str) -> (i32, serde_json::Value, String) {
    run(
        vouchsafe().args([
            "player",
            "passport",
            "--connect",
            url,
            "--cred",
            "keys/operator.cred",
            "--engine-key",
            "keys/engine.pub.pem",
            "--consumer",
            consumer,
            "--data-dir",
            "players",
            "--json",
        ]),
        root,
    )
}

/// `merchant buy` of `media` with `shop.cred` into the sale file `sale` (retried for up to
/// 30 s while the node is not placed yet), then `player fetch` of it as alice, which must
/// decrypt: the fetch's JSON.
pub fn buy_and_fetch(root: &std::path::Path, url: &str, media: &str, sale: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, bought, stderr) =
            run(vouchsafe().args(["merchant", "buy", "--media", media, "--connect", url, "--cred", "shop.cred", "--out", sale, "--json"]), root);
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no purchase succeeded: {bought} {stderr}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, fetched, stderr) = run(vouchsafe().args(["player", "fetch", "--sale", sale, "--consumer", "alice", "--data-dir", "players", "--json"]), root);
    assert_eq!((code, &fetched["decrypt_ok"]), (0, &serde_json::json!(true)), "{fetched} {stderr}");
    fetched
}

/// A delivery node for the engine at `url`: its credential issued with `root/keys` into
/// `node.cred`, its agent started in `root` (data under `node/`) and listening; killed on drop.
pub fn start_node(root: &std::path::Path, url: &str) -> Running {
    start_node_at(root, url).0
}

/// As `start_node`; also the port the node listens on.
pub fn start_node_at(root: &std::path::Path, url: &str) -> (Running, u16) {
    let (code, issued, stderr) = run(vouchsafe().args(["keys", "issue", "node", "--keys", "keys", "--out", "node.cred", "--connect", url, "--json"]), root);
    assert_eq!(code, 0, "{issued} {stderr}");
    let node_port = free_port();
    let node = vouchsafe()
        .args(["node", "--connect", url, "--cred", "node.cred", "--listen", &format!("127.0.0.1:{node_port}"), "--data-dir", "node"])
        .current_dir(root)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node starts");
    let node = Running(node);
    wait_for_port(node_port);
    (node, node_port)
}

/// Runs a command in `dir` to completion: its exit code and the last line of stdout as
/// JSON, which it must be (the panic shows stdout and stderr).
pub fn json(command: &mut Command, dir: &std::path::Path) -> (i32, serde_json::Value) {
    let output = command.current_dir(dir).output().expect("run vouchsafe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let value = serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap_or(-1), value)
}

/// A market from a shell: `keys init` into `root/keys`, `serve` (data under `root/engine`)
/// on a free loopback port with `extra` arguments and `env`, listening, and the merchant
/// credential `root/shop.cred`. The engine (stopped by pid on drop), its URL and what
/// `keys issue merchant --json` printed.
pub fn open_market(root: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (Running, String, serde_json::Value) {
    assert!(vouchsafe().args(["keys", "init", "--out", "keys"]).current_dir(root).status().expect("keys init").success());
    let (serve, url) = serve(root, extra, env);
    let (code, merchant) =
        json(vouchsafe().args(["keys", "issue", "merchant", "--name", "Shop", "--keys", "keys", "--out", "shop.cred", "--connect", &url, "--json"]), root);
    assert_eq!(code, 0, "{merchant}");
    (serve, url, merchant)
}

/// `serve` with the keys of `root/keys` and its data under `root/engine`, on a free loopback
/// port with `extra` arguments and `env`, once it listens: the engine and its URL.
pub fn serve(root: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut command = vouchsafe();
    command.args(["serve", "--data-dir", "engine", "--keys", "keys", "--listen", &format!("127.0.0.1:{port}")]).args(extra);
    for (key, value) in env {
        command.env(key, value);
    }
    let serve = Running(command.current_dir(root).stderr(std::process::Stdio::null()).spawn().expect("serve starts"));
    wait_for_port(port);
    (serve, url)
}

/// Writes `bytes` to `root/name` and publishes it with the operator's credential: the
/// media id.
pub fn publish(root: &std::path::Path, url: &str, name: &str, bytes: &[u8]) -> String {
    std::fs::write(root.join(name), bytes).expect("write the media file");
    let (code, published) =
        json(vouchsafe().args(["publish", "--connect", url, "--cred", "keys/operator.cred", "--engine-key", "keys/engine.pub.pem", name, "--json"]), root);
    assert_eq!(code, 0, "{published}");
    published["media"][0]["media_id"].as_str().expect("media id").to_string()
}
