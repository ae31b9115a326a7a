//! The real nats-server the JetStream tests run against: it is installed, new enough,
//! starts on loopback with JetStream on, and stops by PID.

use replay_tests::{NATS_SERVER_MIN, NatsServer};

#[test]
fn starts_a_jetstream_server_on_loopback_and_stops_it() {
    let mut server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    assert!(server.version >= NATS_SERVER_MIN);
    let info = server.info().expect("INFO from the server");
    assert_eq!(info["jetstream"], serde_json::Value::Bool(true), "JetStream must be enabled: {info}");
    assert_eq!(info["host"], "127.0.0.1");
    let pid = server.pid();
    server.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(" Z ")).unwrap_or(true),
        "server {pid} still running"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err(), "port still accepting");
}
