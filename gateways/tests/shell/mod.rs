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
