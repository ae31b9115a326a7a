//! `--connect A,B` from a shell: two `serve` processes on one JetStream stream; a command
//! given both works while both run, and still works after A is killed (it connects to the
//! first engine that answers); given A alone it fails with exit 2 (the control). Every
//! process is started by this test and stopped by its pid.

use gateways::common::natsd::NatsServer;
use std::path::Path;
use std::process::{Command, Stdio};

mod shell;
use shell::{Running, free_port, vouchsafe, wait_for_port};

/// Runs a command to completion; (exit code, stdout, stderr).
fn run(command: &mut Command, dir: &Path) -> (i32, String, String) {
    let output = command.current_dir(dir).output().expect("run vouchsafe");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn serve(root: &Path, name: &str, nats_url: &str) -> (Running, String) {
    let port = free_port();
    let child = vouchsafe()
        .args(["serve", "--data-dir", name, "--keys", "keys", "--nats-url", nats_url, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .current_dir(root)
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let running = Running(child);
    wait_for_port(port);
    (running, format!("http://127.0.0.1:{port}"))
}

fn issue_merchant(root: &Path, name: &str, connect: &str) -> (i32, String, String) {
    let out = format!("{name}.cred");
    run(vouchsafe().args(["keys", "issue", "merchant", "--name", name, "--keys", "keys", "--out", &out, "--connect", connect, "--json"]), root)
}

#[test]
fn a_command_given_two_engines_works_after_the_first_is_killed() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    assert!(vouchsafe().args(["keys", "init", "--out", "keys"]).current_dir(root).status().expect("keys init").success());
    let (mut a, a_url) = serve(root, "engine-a", &nats.url());
    let (_b, b_url) = serve(root, "engine-b", &nats.url());
    let both = format!("{a_url},{b_url}");
    let (code, stdout, stderr) = issue_merchant(root, "shop-1", &both);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    a.0.kill().expect("kill -9 a");
    a.0.wait().expect("a is gone");
    let (code, stdout, stderr) = issue_merchant(root, "shop-2", &both);
    assert_eq!(code, 0, "b answers: {stdout}\n{stderr}");
    // The control: a alone is gone.
    let (code, _, stderr) = issue_merchant(root, "shop-3", &a_url);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&a_url), "{stderr}");
}
