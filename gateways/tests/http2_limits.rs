//! The engine's HTTP/2 limits, as a raw HTTP/2 client sees them: the engine announces
//! `SETTINGS_MAX_CONCURRENT_STREAMS` = `REQUESTS_PER_CONNECTION_MAX`, so one connection
//! cannot open more streams than it may run. Control: a tonic server built without the
//! setting announces no limit (the protection off).

use gateways::server::{self, EngineConfig, REQUESTS_PER_CONNECTION_MAX};
use std::sync::Arc;

/// The stream limit a peer announced: after one request's answer, the peer's first frame
/// (its SETTINGS) has certainly been applied.
async fn announced_streams(addr: std::net::SocketAddr) -> usize {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut client, mut connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let request = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a request");
    client = client.ready().await.expect("ready");
    let (response, mut body) = client.send_request(request, false).expect("send");
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("an empty gRPC message");
    tokio::select! {
        answered = response => { answered.expect("an answer"); }
        closed = &mut connection => panic!("the connection closed first: {closed:?}"),
    }
    connection.max_concurrent_send_streams()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_announces_its_per_connection_stream_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    gateways::common::keys::init(&dir.path().join("keys")).expect("keys");
    let log: Arc<dyn engine::log::EventLog> = Arc::new(engine::log::embedded::EmbeddedLog::open(&dir.path().join("log")).expect("log"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let engine = server::start(EngineConfig::new(dir.path().join("engine"), dir.path().join("keys")), log, listener).await.expect("engine");
    assert_eq!(announced_streams(addr).await, REQUESTS_PER_CONNECTION_MAX);
    engine.shutdown().await.expect("shutdown");

    // Control, the protection off: the same health service on a tonic server without the
    // setting announces no stream limit.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let plain =
        tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    assert!(announced_streams(addr).await > REQUESTS_PER_CONNECTION_MAX, "a server without the setting sets no limit");
    plain.abort();
}
