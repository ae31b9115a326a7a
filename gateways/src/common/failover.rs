//! Failover between engines: `--connect URL[,URL…]` names several engines on one stream,
//! and [`Engines`] is the tower service every engine client (CLI, demo, node agent) sends
//! its calls through. It starts on the first engine whose health service answers; a call
//! that finds its engine gone (a transport error: refused, reset, the engine died before
//! answering) or answered Unavailable ("retry with the same request id") is sent again,
//! byte for byte (so with the same request id), to the next engine, at most
//! [`FAILOVER_ATTEMPTS_MAX`] times. Idempotency is by request id across engines, so a
//! command that did reach the first engine is `Repeated` on the second. Any other answer,
//! a refusal included, is final. The engine that answered stays the one used.
//!
//! Not here: tonic's `Channel::balance_list`, which spreads calls and drops an endpoint
//! whose connection failed for good, and never resends a call; nor retries of a stream
//! that broke after its first answer (the node's feed re-subscribes from its checkpoint).

use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower_service::Service;

/// Most engines one `--connect` may name.
pub const ENGINE_URLS_MAX: usize = 16;
/// Most times one call is sent (the first try included), across engines.
pub const FAILOVER_ATTEMPTS_MAX: usize = 4;
/// Pause before a call goes round the engines again (every one failed once).
const FAILOVER_ROUND_PAUSE_MS: u64 = 250;
/// The gRPC status code Unavailable, as the `grpc-status` header carries it.
const GRPC_UNAVAILABLE: &str = "14";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One or more engines on one stream, tried in order (a clone shares the current choice).
#[derive(Clone)]
pub struct Engines {
    shared: Arc<Shared>,
}

struct Shared {
    /// (URL, channel); the channels past the first that answered connect lazily.
    engines: Vec<(String, Channel)>,
    current: AtomicUsize,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines").field("urls", &self.urls()).field("current", &self.current_url()).finish()
    }
}

impl From<Channel> for Engines {
    /// One engine, no failover (the URL is not known: an empty string).
    fn from(channel: Channel) -> Self {
        Self::new(vec![(String::new(), channel)], 0)
    }
}

impl Engines {
    fn new(engines: Vec<(String, Channel)>, current: usize) -> Self {
        Self { shared: Arc::new(Shared { engines, current: AtomicUsize::new(current) }) }
    }

    /// The URL of the engine calls go to now.
    pub fn current_url(&self) -> &str {
        &self.shared.engines[self.current()].0
    }

    pub fn urls(&self) -> Vec<&str> {
        self.shared.engines.iter().map(|(url, _)| url.as_str()).collect()
    }

    fn current(&self) -> usize {
        self.shared.current.load(Ordering::Relaxed) % self.shared.engines.len()
    }
}

/// The engine URLs of a `--connect` value: comma-separated, blanks around them ignored.
pub fn split_urls(connect: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = connect.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_string).collect();
    anyhow::ensure!(!urls.is_empty(), "--connect names no engine; give a URL such as http://127.0.0.1:50051 (several: comma-separated)");
    anyhow::ensure!(urls.len() <= ENGINE_URLS_MAX, "--connect names {} engines; at most {ENGINE_URLS_MAX}", urls.len());
    Ok(urls)
}

/// Connects to the first of `urls` that accepts a connection and whose health service
/// answers; the others connect when a call fails over to them. `endpoint_of` builds each
/// URL's endpoint (TLS, timeouts). With one URL the error is that engine's own.
pub async fn connect_first(urls: &[String], endpoint_of: impl Fn(&str) -> anyhow::Result<Endpoint>) -> anyhow::Result<Engines> {
    let endpoints = urls.iter().map(|url| endpoint_of(url)).collect::<anyhow::Result<Vec<Endpoint>>>()?;
    let engines_from = |index: usize, channel: Channel| {
        let engines = urls
            .iter()
            .zip(&endpoints)
            .enumerate()
            .map(|(other, (url, endpoint))| (url.clone(), if other == index { channel.clone() } else { endpoint.connect_lazy() }))
            .collect();
        Engines::new(engines, index)
    };
    let mut failures = Vec::new();
    // An engine that says it is draining (stopping) is used only when no other answers.
    let mut draining_engine = None;
    for (index, (url, endpoint)) in urls.iter().zip(&endpoints).enumerate() {
        let answered = async {
            let channel = endpoint.connect().await.with_context(|| format!("cannot connect to the engine at {url}; is `vouchsafe serve` running there?"))?;
            super::client::check_serving(channel.clone(), url).await?;
            anyhow::Ok(channel)
        }
        .await;
        match answered {
            Ok(channel) if urls.len() > 1 && draining(channel.clone()).await => {
                failures.push(format!("the engine at {url} is draining"));
                draining_engine = draining_engine.or(Some((index, channel)));
            }
            Ok(channel) => return Ok(engines_from(index, channel)),
            Err(error) if urls.len() == 1 => return Err(error),
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    if let Some((index, channel)) = draining_engine {
        tracing::warn!(engine = %urls[index], "every other engine failed; using one that is draining");
        return Ok(engines_from(index, channel));
    }
    anyhow::bail!("no engine answered: {}", failures.join("; "))
}

/// Whether the engine's health says NOT_SERVING: it is draining (`serve`'s `drain_grace`).
async fn draining(channel: Channel) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
    answer.is_ok_and(|answer| answer.into_inner().status == ServingStatus::NotServing as i32)
}

impl Service<http::Request<Body>> for Engines {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for its engine's channel to be ready (in `call`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let engines = self.clone();
        Box::pin(async move {
            let count = engines.shared.engines.len();
            let first = engines.current();
            if count == 1 {
                let mut channel = engines.shared.engines[0].1.clone();
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                return Ok(channel.call(request).await?);
            }
            // Every request body of the engine's services is one message (no client
            // streaming), so it is kept to be sent again.
            let (parts, body) = request.into_parts();
            let body: Bytes = body.collect().await?.to_bytes();
            let mut attempt = 0;
            loop {
                if attempt > 0 && attempt % count == 0 {
                    tokio::time::sleep(Duration::from_millis(FAILOVER_ROUND_PAUSE_MS)).await;
                }
                let index = (first + attempt) % count;
                let (url, channel) = &engines.shared.engines[index];
                let mut channel = channel.clone();
                let request = http::Request::from_parts(parts.clone(), Body::new(http_body_util::Full::new(body.clone())));
                let answered = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                    Ok(()) => channel.call(request).await,
                    Err(error) => Err(error),
                };
                let unavailable = match &answered {
                    Ok(response) => response.headers().get("grpc-status").is_some_and(|code| code == GRPC_UNAVAILABLE),
                    Err(_) => true,
                };
                attempt += 1;
                if !unavailable {
                    engines.shared.current.store(index, Ordering::Relaxed);
                }
                if !unavailable || attempt == FAILOVER_ATTEMPTS_MAX {
                    return Ok(answered?);
                }
                match &answered {
                    Ok(_) => tracing::warn!(engine = %url, attempt, "the engine answered Unavailable; sending the call to the next engine"),
                    Err(error) => tracing::warn!(engine = %url, attempt, %error, "the engine did not answer; sending the call to the next engine"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_names_one_or_several_engines() {
        assert_eq!(split_urls("http://127.0.0.1:50051").expect("one"), ["http://127.0.0.1:50051"]);
        assert_eq!(split_urls(" http://127.0.0.1:50051 , http://127.0.0.1:50061,").expect("two"), ["http://127.0.0.1:50051", "http://127.0.0.1:50061"]);
        assert!(split_urls(" , ").is_err(), "no engine");
        let too_many = vec!["http://127.0.0.1:1"; ENGINE_URLS_MAX + 1].join(",");
        assert!(split_urls(&too_many).is_err(), "past ENGINE_URLS_MAX");
    }

    #[test]
    fn every_engine_of_a_list_is_checked_for_plain_text() {
        use crate::common::plaintext::check_url;
        assert!(check_url("http://127.0.0.1:50051,http://127.0.0.1:50061", false).is_ok());
        let refused = check_url("http://127.0.0.1:50051,http://10.1.2.3:50061", false).expect_err("the second is remote");
        assert!(refused.to_string().contains("10.1.2.3"), "{refused}");
        assert!(check_url("http://127.0.0.1:50051,http://10.1.2.3:50061", true).is_ok(), "asked for");
    }

    #[tokio::test]
    async fn a_call_with_every_engine_gone_fails_after_its_attempts() {
        let urls = closed_ports(2);
        let engines = Engines::new(urls.iter().map(|url| (url.clone(), Endpoint::from_shared(url.clone()).expect("url").connect_lazy())).collect(), 0);
        let mut health = tonic_health::pb::health_client::HealthClient::new(engines.clone());
        let started = std::time::Instant::now();
        let call = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
        let failed = tokio::time::timeout(Duration::from_secs(30), call).await.expect("bounded: it gives up").expect_err("nobody answers");
        // Each round of the two engines but the last is followed by a pause.
        let rounds = FAILOVER_ATTEMPTS_MAX.div_ceil(2) as u32;
        assert!(started.elapsed() >= Duration::from_millis(FAILOVER_ROUND_PAUSE_MS) * (rounds - 1), "it went round: {:?}", started.elapsed());
        assert_ne!(failed.code(), tonic::Code::Ok);
        assert_eq!(engines.current_url(), urls[0], "no engine answered: the choice stays");
    }

    fn closed_ports(count: usize) -> Vec<String> {
        // Loopback ports bound, then closed again.
        (0..count)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port())
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    #[tokio::test]
    async fn with_no_engine_answering_each_reason_is_given() {
        let urls = closed_ports(2);
        let error = connect_first(&urls, |url| Ok(Endpoint::from_shared(url.to_string())?)).await.expect_err("nobody answers");
        let error = format!("{error:#}");
        assert!(error.starts_with("no engine answered"), "{error}");
        assert!(urls.iter().all(|url| error.contains(url.as_str())), "{error}");
    }
}
