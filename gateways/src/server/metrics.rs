//! The engine's Prometheus figures and the plain-HTTP `/metrics` endpoint that serves
//! them (Prometheus scrapes HTTP/1.1, which the gRPC port does not speak). Counters are
//! bumped where things happen; gauges are read when scraped from the live projections and
//! the log, so they are never stale.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

/// Every figure the engine reports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered with each non-OK gRPC code.
    pub rejections: Family<CodeLabel, Counter>,
    /// Requests answered OK.
    pub requests_ok: Counter,
    pub stream_last_seq: Gauge,
    pub projection_lag: Gauge,
    pub slots_in_use: Family<NodeLabel, Gauge>,
    pub slots_max: Family<NodeLabel, Gauge>,
    pub node_cache_items: Family<NodeLabel, Gauge>,
    pub node_cache_accesses: Family<NodeLabel, Gauge>,
    pub node_cache_misses: Family<NodeLabel, Gauge>,
    pub events_per_second: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub vouchers_issued: Gauge,
    pub royalty_entries: Gauge,
    pub uptime_seconds: Gauge,
    /// Requests refused (or streams ended) by a named limit.
    pub limit_hits: Family<LimitLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vouchsafe");
        let rejections = Family::<CodeLabel, Counter>::default();
        registry.register("rejections", "requests refused or failed, by gRPC code", rejections.clone());
        let requests_ok = Counter::default();
        registry.register("requests_ok", "requests answered OK", requests_ok.clone());
        let stream_last_seq = Gauge::default();
        registry.register("stream_last_seq", "sequence of the last event in the stream (events appended)", stream_last_seq.clone());
        let projection_lag = Gauge::default();
        registry.register("projection_lag_events", "events the live projections are behind the stream", projection_lag.clone());
        let slots_in_use = Family::<NodeLabel, Gauge>::default();
        registry.register("node_slots_in_use", "delivery slots in use per node", slots_in_use.clone());
        let slots_max = Family::<NodeLabel, Gauge>::default();
        registry.register("node_slots_max", "delivery slots per node", slots_max.clone());
        let node_cache_items = Family::<NodeLabel, Gauge>::default();
        registry.register("node_cache_items", "media parts in each node's cache (from its heartbeat)", node_cache_items.clone());
        let node_cache_accesses = Family::<NodeLabel, Gauge>::default();
        registry.register("node_cache_accesses", "media cache accesses per node (from its heartbeat)", node_cache_accesses.clone());
        let node_cache_misses = Family::<NodeLabel, Gauge>::default();
        registry.register("node_cache_misses", "media cache misses per node (from its heartbeat)", node_cache_misses.clone());
        let events_per_second = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register("events_per_second", "events appended per second over the last minute", events_per_second.clone());
        let vouchers_issued = Gauge::default();
        registry.register("vouchers_issued", "vouchers issued to a node (issued, redeeming or delivered)", vouchers_issued.clone());
        let royalty_entries = Gauge::default();
        registry.register("royalty_entries", "entries in the royalty log", royalty_entries.clone());
        let uptime_seconds = Gauge::default();
        registry.register("uptime_seconds", "seconds since the engine started", uptime_seconds.clone());
        let limit_hits = Family::<LimitLabel, Counter>::default();
        registry.register("limit_hits", "requests refused or streams ended by a named limit", limit_hits.clone());
        Self {
            registry,
            rejections,
            requests_ok,
            stream_last_seq,
            projection_lag,
            slots_in_use,
            slots_max,
            node_cache_items,
            node_cache_accesses,
            node_cache_misses,
            events_per_second,
            vouchers_issued,
            royalty_entries,
            uptime_seconds,
            limit_hits,
        }
    }

    /// A named limit was hit (`assignment_feeds_max`, …).
    pub fn count_limit(&self, limit: &str) {
        self.limit_hits.get_or_create(&LimitLabel { limit: limit.to_string() }).inc();
    }

    pub fn count_code(&self, code: tonic::Code) {
        if code == tonic::Code::Ok {
            self.requests_ok.inc();
        } else {
            self.rejections.get_or_create(&CodeLabel { code: format!("{code:?}") }).inc();
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves `GET /metrics` until `shutdown` resolves. `refresh` updates the gauges first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            let refresh = Arc::clone(&refresh);
            async move {
                refresh().await;
                ([(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
