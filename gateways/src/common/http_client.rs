//! A small HTTP/1.1 client over hyper (already built for tonic): what the tlog programs
//! need of one — a tiles client's GET and a log's POST to a witness (`add-checkpoint`) —
//! with a deadline per request and a bound on the answer's size. Plain `http://` only: the
//! tiles and checkpoints are public and signed; a witness behind TLS sits behind a proxy.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::time::Duration;

/// The largest answer read (a full tile is 8 KiB; an entry bundle at most 256 × 64 KiB).
pub const ANSWER_BYTES_MAX: usize = 17 * 1024 * 1024;
/// How long a request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer: its status, content type and body.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// GET `url`.
pub async fn get(url: &str) -> anyhow::Result<Answer> {
    request(http::Method::GET, url, None, Bytes::new()).await
}

/// POST `body` (of `content_type`) to `url`.
pub async fn post(url: &str, content_type: &str, body: Bytes) -> anyhow::Result<Answer> {
    request(http::Method::POST, url, Some(content_type), body).await
}

async fn request(method: http::Method, url: &str, content_type: Option<&str>, body: Bytes) -> anyhow::Result<Answer> {
    tokio::time::timeout(REQUEST_TIMEOUT, send(method, url, content_type, body))
        .await
        .with_context(|| format!("{url}: no answer within {REQUEST_TIMEOUT:?}"))?
}

async fn send(method: http::Method, url: &str, content_type: Option<&str>, body: Bytes) -> anyhow::Result<Answer> {
    let uri: http::Uri = url.parse().with_context(|| format!("not a URL: {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url}: only http:// URLs are supported");
    }
    let authority = uri.authority().with_context(|| format!("{url}: no host"))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port)).await.with_context(|| format!("cannot connect to {authority}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.context("HTTP handshake")?;
    let driver = tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let mut request = http::Request::builder().method(method).uri(path).header(http::header::HOST, authority.as_str());
    if let Some(content_type) = content_type {
        request = request.header(http::header::CONTENT_TYPE, content_type);
    }
    let response = sender.send_request(request.body(Full::new(body))?).await.with_context(|| format!("{url}: the request failed"))?;
    let status = response.status();
    let content_type = response.headers().get(http::header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).map(str::to_string);
    let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
        .collect()
        .await
        .map_err(|error| anyhow::anyhow!("{url}: the answer could not be read: {error}"))?
        .to_bytes();
    driver.abort();
    Ok(Answer { status, content_type, body })
}
