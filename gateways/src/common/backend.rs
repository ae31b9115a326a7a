//! Backend selection, the same on every command that touches the log (CLI.md): the
//! embedded sled log under `--data-dir` (the default), or JetStream at `--nats-url` with
//! stream `--stream`. `--data-dir` always holds the command's local state.

use anyhow::Context;
use engine::log::EventLog;
use engine::log::embedded::EmbeddedLog;
use engine::log::jetstream::{DEFAULT_STREAM, JetStreamLog};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Local state (projection store, player files) and, without --nats-url, the embedded log.
    #[arg(long, default_value = "./vouchsafe-data")]
    pub data_dir: PathBuf,
    /// Use the JetStream log at this URL (e.g. nats://127.0.0.1:4222; comma-separated for a cluster).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// The JetStream stream name.
    #[arg(long, default_value = DEFAULT_STREAM)]
    pub stream: String,
}

impl BackendArgs {
    /// The backend's name as reported in summaries: "embedded" or "jetstream".
    pub fn name(&self) -> &'static str {
        if self.nats_url.is_some() { "jetstream" } else { "embedded" }
    }

    /// The log, and the same log as JetStream when it is one (for the node feed).
    pub async fn open_with_feed(&self) -> anyhow::Result<(Arc<dyn EventLog>, Option<Arc<JetStreamLog>>)> {
        self.open_with_feed_replicated(1).await
    }

    /// As `open_with_feed`, creating the JetStream streams with `replicas` copies when they
    /// do not exist yet (an existing stream with fewer is refused).
    pub async fn open_with_feed_replicated(&self, replicas: usize) -> anyhow::Result<(Arc<dyn EventLog>, Option<Arc<JetStreamLog>>)> {
        self.open_with_feed_options(engine::log::jetstream::StreamOptions { replicas, ..Default::default() }).await
    }

    /// As `open_with_feed`, with these JetStream stream options (ignored on the embedded log).
    pub async fn open_with_feed_options(
        &self,
        options: engine::log::jetstream::StreamOptions,
    ) -> anyhow::Result<(Arc<dyn EventLog>, Option<Arc<JetStreamLog>>)> {
        match &self.nats_url {
            Some(url) => {
                let log = Arc::new(JetStreamLog::connect_with(url, &self.stream, options).await?);
                Ok((Arc::clone(&log) as Arc<dyn EventLog>, Some(log)))
            }
            None => Ok((self.open().await?, None)),
        }
    }

    /// The log for reading only, as the auditor's commands open it: on JetStream a
    /// read-only connection (`JetStreamLog::connect_read_only`) that looks up and verifies
    /// the stream, never creates or changes one and never touches the node feed, so the
    /// `auditor` user of deploy/nats-auth.conf suffices. The embedded log opens as usual.
    pub async fn open_read_only(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        match &self.nats_url {
            Some(url) => Ok(Arc::new(JetStreamLog::connect_read_only(url, &self.stream).await?)),
            None => self.open().await,
        }
    }

    pub async fn open(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        match &self.nats_url {
            Some(url) => Ok(Arc::new(JetStreamLog::connect(url, &self.stream).await?)),
            None => {
                let dir = self.data_dir.join("log");
                let log = EmbeddedLog::open(&dir).with_context(|| format!("cannot open the embedded log in {}", dir.display()))?;
                Ok(Arc::new(log))
            }
        }
    }
}
