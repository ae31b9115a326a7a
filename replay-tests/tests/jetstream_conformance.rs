//! The shared `EventLog` conformance suite against a real nats-server: every case gets its
//! own server (started on a free loopback port with `sync_interval: always`, stopped by PID
//! when the case ends), and `reopen` drops the connection and connects again to the same
//! server and stream. The suite includes the regression test for nats-server #2242
//! (`duplicate_does_not_break_next_expected_append`). The whole suite runs twice: with
//! single publishes, and with group commit (`StreamOptions::group_commit`, atomic batches),
//! whose own concurrency cases are in `jetstream_group_commit.rs`.

use engine::log::EventLog;
use engine::log::conformance::Harness;
use engine::log::jetstream::{JetStreamLog, StreamOptions};
use replay_tests::NatsServer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const STREAM: &str = "CONFORMANCE";

/// Servers started for one case, and which server each open log talks to.
#[derive(Default)]
struct JetStreamHarness {
    servers: Mutex<Vec<NatsServer>>,
    urls: Mutex<HashMap<usize, String>>,
    group_commit: bool,
}

fn address(log: &Arc<dyn EventLog>) -> usize {
    Arc::as_ptr(log).cast::<()>() as usize
}

impl JetStreamHarness {
    async fn open(&self, url: String) -> Arc<dyn EventLog> {
        let log: Arc<dyn EventLog> = Arc::new(
            JetStreamLog::connect_with(&url, STREAM, StreamOptions { group_commit: self.group_commit, ..StreamOptions::default() })
                .await
                .unwrap_or_else(|error| panic!("connect to {url}: {error}")),
        );
        self.urls.lock().expect("harness lock").insert(address(&log), url);
        log
    }
}

#[async_trait::async_trait]
impl Harness for JetStreamHarness {
    async fn fresh(&self) -> Arc<dyn EventLog> {
        let server = tokio::task::spawn_blocking(NatsServer::start).await.expect("start task").unwrap_or_else(|error| panic!("{error}"));
        let url = server.url();
        self.servers.lock().expect("harness lock").push(server);
        self.open(url).await
    }

    async fn reopen(&self, log: Arc<dyn EventLog>) -> Arc<dyn EventLog> {
        let url = self.urls.lock().expect("harness lock").remove(&address(&log)).expect("a log this harness opened");
        drop(log);
        self.open(url).await
    }
}

engine::conformance_tests!(JetStreamHarness::default());

mod group_commit {
    use super::*;

    engine::conformance_tests!(JetStreamHarness { group_commit: true, ..JetStreamHarness::default() });
}
