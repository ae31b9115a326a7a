//! The engine's front door, as one tower layer in front of every gRPC service: it
//! authenticates the caller from its credential metadata against the credential table the
//! live projections keep in memory (`projections::reads`, fed by the stream: an unknown id
//! costs no stream read and leaves nothing in any cache), limits the rate of each
//! credential's requests and of each peer's refused ones, checks that the caller's role may
//! call the service, reads the (unary) request body up to the service's size limit within
//! its deadline, and only then counts the request against the server's concurrency limit.
//! All of it happens before tonic decodes a byte, so unauthenticated garbage gets
//! UNAUTHENTICATED and an oversized request RESOURCE_EXHAUSTED (tonic alone would say
//! OUT_OF_RANGE), neither writes anything, and a slow or silent client holds no request
//! slot. The caller's identity travels to the handlers as a request extension and is the
//! only identity they use (never a request field).
//!
//! Health and reflection need no credential; ConsumerService needs none either (its
//! requests are signed with a consumer's passport and checked by the handler) but is
//! limited and bounded like the others. Credential checks are constant-time comparisons of
//! `crypto::credential_hash(secret)` with the hash recorded at registration; an unknown id
//! and a wrong secret get the same answer. A refused sign-in is logged at warn with the
//! peer's address and the id's shape, never the secret, while the peer is within its
//! refusal rate; past it, refusals are counted only. Every limit hit is counted in
//! /metrics as `limit_hits{limit="<the limit's configuration key>"}`.

use crate::common::cred::{ID_HEADER, SECRET_HEADER};
use crate::common::peers::Peer;
use crate::server::metrics::Metrics;
use crate::server::status;
use engine::crypto::{self, SecretKey};
use engine::ids::{MerchantId, NodeId, PublisherId};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::BodyExt;
use projections::Live;
use projections::reads::PartyKind;
use std::convert::Infallible;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;

/// Who is calling, from its credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Operator(String),
    Merchant(MerchantId),
    Node(NodeId),
    Auditor(String),
    Publisher(PublisherId),
}

impl Identity {
    pub fn role(&self) -> &'static str {
        match self {
            Identity::Operator(_) => "operator",
            Identity::Merchant(_) => "merchant",
            Identity::Node(_) => "delivery node",
            Identity::Auditor(_) => "auditor",
            Identity::Publisher(_) => "publisher",
        }
    }

    fn id(&self) -> &str {
        match self {
            Identity::Operator(id) | Identity::Auditor(id) => id,
            Identity::Merchant(id) => &id.0,
            Identity::Node(id) => &id.0,
            Identity::Publisher(id) => &id.0,
        }
    }
}

/// The services and what each may be called by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Merchant,
    Delivery,
    Catalog,
    Audit,
    Admin,
    /// ConsumerService: no credential; each request is signed with a passport, which the
    /// handler checks. It still counts against the limits and its body is bounded.
    Signed,
    /// Health checking and reflection: open to anyone.
    Open,
}

fn service_of(path: &str) -> Option<Service> {
    let service = path.strip_prefix('/')?.split('/').next()?;
    match service {
        "vouchsafe.v1.MerchantService" => Some(Service::Merchant),
        "vouchsafe.v1.DeliveryService" => Some(Service::Delivery),
        "vouchsafe.v1.CatalogService" => Some(Service::Catalog),
        "vouchsafe.v1.AuditService" => Some(Service::Audit),
        "vouchsafe.v1.AdminService" => Some(Service::Admin),
        "vouchsafe.v1.ConsumerService" => Some(Service::Signed),
        "grpc.health.v1.Health" | "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => Some(Service::Open),
        _ => None,
    }
}

/// Whether `identity` may call `method` (the path's last part) of `service`: a publisher
/// only CatalogService.PublishMedia.
fn allowed(service: Service, identity: &Identity, method: &str) -> bool {
    match (service, identity) {
        (Service::Open | Service::Signed, _) => true,
        (Service::Catalog, Identity::Publisher(_)) => method == "PublishMedia",
        (Service::Merchant, Identity::Merchant(_)) => true,
        (Service::Delivery, Identity::Node(_)) => true,
        (Service::Catalog | Service::Admin, Identity::Operator(_)) => true,
        (Service::Audit, Identity::Auditor(_) | Identity::Operator(_)) => true,
        (Service::Merchant | Service::Delivery | Service::Catalog | Service::Audit | Service::Admin, _) => false,
    }
}

/// The front door's limits (`serve` reads each from its configuration key, the field's
/// name; deploy/engine.toml documents them). A rate or deadline of 0 turns that limit off.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Every request except the catalog's uploads, in bytes.
    pub request_bytes_max: usize,
    /// CatalogService.PublishMedia (it carries the media container), in bytes.
    pub upload_bytes_max: usize,
    /// Requests served at once by the whole server.
    pub requests_in_flight_max: usize,
    /// Assignment feeds (SubscribeAssignments streams) open at once; each node has at most
    /// one (a new one replaces the old).
    pub assignment_feeds_max: usize,
    /// Longest a request's body may take to arrive once its headers did (every call but
    /// uploads), in ms: a client that stops sending is answered DEADLINE_EXCEEDED.
    pub request_read_ms: u64,
    /// The same for PublishMedia's body (up to `upload_bytes_max`), in ms.
    pub upload_read_ms: u64,
    /// Requests per second one credential may make, on average ...
    pub credential_requests_per_s: u32,
    /// ... and at once after a quiet spell.
    pub credential_requests_burst: u32,
    /// Refused requests (no, or a wrong, credential; a role that may not call the
    /// service; no such service) per second one peer may cause before its further
    /// refusals are answered RESOURCE_EXHAUSTED and no longer logged one by one ...
    pub peer_refusals_per_s: u32,
    /// ... and at once.
    pub peer_refusals_burst: u32,
    /// Connections one peer (IP address, IPv6 /64) may hold open (`common::peers`).
    pub connections_per_peer_max: usize,
    /// Connections open at once over every peer.
    pub connections_max: usize,
    /// Longest wait for a new connection's first bytes, in ms.
    pub preface_ms: u64,
}

/// The default limit for every request body but PublishMedia's.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// The default limit for PublishMedia bodies: a media container plus 1 MiB of fields.
pub const UPLOAD_BYTES_MAX: usize = engine::media::CONTAINER_BYTES_MAX + 1024 * 1024;
/// The default number of requests the whole server serves at once.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 2048;
/// The default number of assignment feeds open at once (each reads the whole stream).
pub const ASSIGNMENT_FEEDS_MAX: usize = 256;
/// The default deadline on a request body (64 KiB at most: even a slow link sends it in
/// well under this).
pub const REQUEST_READ_MS: u64 = 10_000;
/// The default deadline on an upload's body (64 MiB in 10 minutes: about 110 kB/s).
pub const UPLOAD_READ_MS: u64 = 600_000;
/// The default rate of one credential: several times what one merchant drives in the
/// bench (about 1,100 requests/s each at the engine's maximum on 2 cores).
pub const CREDENTIAL_REQUESTS_PER_S: u32 = 10_000;
pub const CREDENTIAL_REQUESTS_BURST: u32 = 20_000;
/// The default rate of one peer's refused requests: a client with a bad credential file
/// (or a test suite probing refusals) sees each refusal's own code; a guesser or a flood
/// past it gets RESOURCE_EXHAUSTED, and the log a count instead of a line per request.
pub const PEER_REFUSALS_PER_S: u32 = 50;
pub const PEER_REFUSALS_BURST: u32 = 2_000;
/// The default connections of one peer (the bench opens 16 merchants' channels and its
/// nodes' from one address) and in all.
pub const CONNECTIONS_PER_PEER_MAX: usize = 256;
pub const CONNECTIONS_MAX: usize = 10_000;
/// The default wait for a new connection's first bytes.
pub const PREFACE_MS: u64 = 10_000;
/// Peers whose refusals are tracked at once; refusing peers are forgotten once their
/// budget has refilled (`retain_recent`), and past this many a new refusing peer counts
/// as over its rate (it is refused all the same, only not logged).
pub const REFUSING_PEERS_MAX: usize = 65_536;

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_bytes_max: REQUEST_BYTES_MAX,
            upload_bytes_max: UPLOAD_BYTES_MAX,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX,
            assignment_feeds_max: ASSIGNMENT_FEEDS_MAX,
            request_read_ms: REQUEST_READ_MS,
            upload_read_ms: UPLOAD_READ_MS,
            credential_requests_per_s: CREDENTIAL_REQUESTS_PER_S,
            credential_requests_burst: CREDENTIAL_REQUESTS_BURST,
            peer_refusals_per_s: PEER_REFUSALS_PER_S,
            peer_refusals_burst: PEER_REFUSALS_BURST,
            connections_per_peer_max: CONNECTIONS_PER_PEER_MAX,
            connections_max: CONNECTIONS_MAX,
            preface_ms: PREFACE_MS,
        }
    }
}

impl Limits {
    /// The connection part, for `common::peers`.
    pub fn connections(&self) -> crate::common::peers::ConnectionLimits {
        crate::common::peers::ConnectionLimits {
            connections_per_peer_max: self.connections_per_peer_max,
            connections_max: self.connections_max,
            preface_ms: self.preface_ms,
        }
    }
}

/// Checks credentials against the credential table of the live projections.
pub struct Authenticator {
    live: Live,
    operator_id: String,
    operator_hash: [u8; 32],
}

impl Authenticator {
    pub fn new(live: Live, operator_id: String, operator_secret: &SecretKey) -> Self {
        Self { live, operator_id, operator_hash: crypto::credential_hash(operator_secret.expose()) }
    }

    /// The identity behind `id` + `secret_hex`, or UNAUTHENTICATED. Reads memory only.
    pub fn authenticate(&self, id: &str, secret_hex: &str) -> Result<Identity, Status> {
        let refused = status::unknown_credential;
        let mut secret = [0u8; 32];
        if secret_hex.len() != 64 || hex::decode_to_slice(secret_hex, &mut secret).is_err() {
            return Err(status::malformed_secret(SECRET_HEADER));
        }
        let presented = crypto::credential_hash(&secret);
        zeroize::Zeroize::zeroize(&mut secret);
        if !engine::ids::is_valid_token(id) {
            return Err(refused());
        }
        let (identity, recorded, active) = if id == self.operator_id {
            (Some(Identity::Operator(id.to_string())), self.operator_hash, true)
        } else {
            match self.live.read(|projections| projections.reads.credential(id).cloned()) {
                Some(row) => {
                    let status = row.status.as_str();
                    let (identity, active) = match row.kind {
                        PartyKind::Auditor => (Identity::Auditor(id.to_string()), status == "active"),
                        PartyKind::Publisher => (Identity::Publisher(PublisherId(id.to_string())), status == "active"),
                        // A suspended merchant still authenticates: the use cases refuse what it may not do.
                        PartyKind::Merchant => (Identity::Merchant(MerchantId(id.to_string())), true),
                        PartyKind::Node => (Identity::Node(NodeId(id.to_string())), status == "active" || status == "drained"),
                        PartyKind::Certificate => (Identity::Auditor(id.to_string()), false),
                    };
                    (Some(identity), row.credential_hash, active)
                }
                None => (None, [0u8; 32], false),
            }
        };
        // Compare even for unknown ids (their recorded hash is zeros), so timing says nothing.
        let matches = crypto::ct_eq(&presented, &recorded);
        match identity {
            Some(identity) if matches && active => Ok(identity),
            _ => Err(refused()),
        }
    }

    /// Whether an identity checked earlier (a console session) still stands: an auditor
    /// not revoked since, a merchant still registered. The operator and nodes always do.
    /// Reads memory only (the credential table).
    pub async fn still_admitted(&self, identity: &Identity) -> Result<bool, Status> {
        let row = |id: &str| self.live.read(|projections| projections.reads.credential(id).cloned());
        Ok(match identity {
            Identity::Operator(_) | Identity::Node(_) => true,
            Identity::Auditor(id) => row(id).is_some_and(|row| row.kind == PartyKind::Auditor && row.status == "active"),
            Identity::Merchant(id) => row(&id.0).is_some_and(|row| row.kind == PartyKind::Merchant),
            Identity::Publisher(id) => row(&id.0).is_some_and(|row| row.kind == PartyKind::Publisher && row.status == "active"),
        })
    }
}

/// A keyed rate limiter, or none when its rate is 0 (the limit is off).
fn keyed<K: std::hash::Hash + Eq + Clone>(per_s: u32, burst: u32) -> Option<Arc<DefaultKeyedRateLimiter<K>>> {
    let per_s = NonZeroU32::new(per_s)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_s);
    Some(Arc::new(RateLimiter::keyed(Quota::per_second(per_s).allow_burst(burst))))
}

/// The layer: wraps the router of gRPC services.
#[derive(Clone)]
pub struct FrontDoor {
    authenticator: Arc<Authenticator>,
    limits: Limits,
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Keyed by credential id: only ids the table knows get a key (bounded by the parties).
    credentials: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    /// Keyed by refusing peer (at most `REFUSING_PEERS_MAX`).
    refusals: Option<Arc<DefaultKeyedRateLimiter<Peer>>>,
    metrics: Arc<Metrics>,
}

impl FrontDoor {
    /// Every request refused here is counted in `metrics` by code, and by limit when a
    /// limit refused it.
    pub fn new(authenticator: Arc<Authenticator>, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            authenticator,
            limits,
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits.requests_in_flight_max)),
            credentials: keyed(limits.credential_requests_per_s, limits.credential_requests_burst),
            refusals: keyed(limits.peer_refusals_per_s, limits.peer_refusals_burst),
            metrics,
        }
    }

    /// Whether `peer` may still be told (and the log told) about a refusal one by one.
    fn refusal_within_rate(&self, peer: Option<Peer>) -> bool {
        let (Some(limiter), Some(peer)) = (&self.refusals, peer) else {
            return true;
        };
        if limiter.len() >= REFUSING_PEERS_MAX {
            limiter.retain_recent();
            if limiter.len() >= REFUSING_PEERS_MAX {
                return false;
            }
        }
        limiter.check_key(&peer).is_ok()
    }
}

impl<S> tower_layer::Layer<S> for FrontDoor {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, door: self.clone() }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    door: FrontDoor,
}

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

impl<S> tower_service::Service<Request> for Guarded<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was made ready serves this call (tower's rule for `call`).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let door = self.door.clone();
        Box::pin(async move {
            match admit(&door, request).await {
                Ok((request, _permit)) => {
                    let mut inner = inner;
                    inner.call(request).await
                }
                Err(refusal) => {
                    if let Some(limit) = refusal.limit {
                        door.metrics.count_limit(limit);
                    }
                    door.metrics.count_code(refusal.status.code());
                    Ok(refusal.status.into_http())
                }
            }
        })
    }
}

/// Why the front door refused a request: the answer, and the limit that refused it if one did.
struct Refused {
    status: Status,
    limit: Option<&'static str>,
}

impl From<Status> for Refused {
    fn from(status: Status) -> Self {
        Refused { status, limit: None }
    }
}

fn by_limit(limit: &'static str, status: Status) -> Refused {
    Refused { status, limit: Some(limit) }
}

/// The peer a request came from (over TLS too).
fn peer_of(request: &Request) -> Option<Peer> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    let addr = extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.get_ref().remote_addr()))?;
    Some(Peer::of(&addr))
}

/// The checks, in order: service, credential and role (memory only), the credential's
/// rate, the body within its size and deadline, then a request slot.
async fn admit(door: &FrontDoor, request: Request) -> Result<(Request, Option<tokio::sync::OwnedSemaphorePermit>), Refused> {
    let peer = peer_of(&request);
    let path = request.uri().path().to_string();
    let service = match service_of(&path) {
        Some(service) => service,
        None => return Err(refuse_peer(door, peer, status::no_such_service(&path), "no such service")),
    };
    if service == Service::Open {
        return Ok((request, None));
    }
    let (mut parts, body) = request.into_parts();
    let identity = if service == Service::Signed {
        None
    } else {
        let (id, secret) = {
            let header = |name: &str| parts.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string);
            (header(ID_HEADER), header(SECRET_HEADER).map(zeroize::Zeroizing::new))
        };
        let (Some(id), Some(secret)) = (id, secret) else {
            return Err(refuse_peer(door, peer, status::missing_credential(ID_HEADER, SECRET_HEADER), "no credential"));
        };
        let identity = match door.authenticator.authenticate(&id, &secret) {
            Ok(identity) => identity,
            Err(refusal) => return Err(refuse_peer(door, peer, refusal, "refused sign-in")),
        };
        if !allowed(service, &identity, parts.uri.path().rsplit('/').next().unwrap_or_default()) {
            let refusal = status::role_may_not_call(identity.role(), parts.uri.path().trim_start_matches('/'));
            return Err(refuse_peer(door, peer, refusal, "role may not call the service"));
        }
        if let Some(limiter) = &door.credentials
            && limiter.check_key(&identity.id().to_string()).is_err()
        {
            return Err(by_limit("credential_requests_per_s", status::credential_rate_limit(door.limits.credential_requests_per_s)));
        }
        Some(identity)
    };
    // Only PublishMedia carries a media container; every other call is small.
    let upload = parts.uri.path() == "/vouchsafe.v1.CatalogService/PublishMedia";
    let (limit, limit_name, read_ms, read_name) = if upload {
        (door.limits.upload_bytes_max, "upload_bytes_max", door.limits.upload_read_ms, "upload_read_ms")
    } else {
        (door.limits.request_bytes_max, "request_bytes_max", door.limits.request_read_ms, "request_read_ms")
    };
    // Every RPC takes a single request message: read it whole, within the limit and the
    // deadline, before it takes a request slot, so a slow client holds none.
    let collect = http_body_util::Limited::new(body, limit).collect();
    let collected = if read_ms == 0 {
        collect.await
    } else {
        match tokio::time::timeout(Duration::from_millis(read_ms), collect).await {
            Ok(collected) => collected,
            Err(_) => return Err(by_limit(read_name, status::request_read_deadline(read_ms))),
        }
    };
    let collected = collected.map_err(|error| {
        if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            by_limit(limit_name, status::request_too_large(limit))
        } else {
            Refused::from(status::request_body_lost(&error))
        }
    })?;
    // Only now, checked and read, does the request take one of the server's request slots.
    let permit = Arc::clone(&door.in_flight)
        .try_acquire_owned()
        .map_err(|_| by_limit("requests_in_flight_max", status::requests_in_flight_limit(door.limits.requests_in_flight_max)))?;
    if let Some(identity) = identity {
        parts.extensions.insert(identity);
    }
    let body = tonic::body::Body::new(http_body_util::Full::new(collected.to_bytes()));
    Ok((http::Request::from_parts(parts, body), Some(permit)))
}

/// A refusal of `peer`'s request: logged at warn (the peer and what was wrong, never a
/// secret) while the peer is within its refusal rate; past it, answered RESOURCE_EXHAUSTED
/// and counted only.
fn refuse_peer(door: &FrontDoor, peer: Option<Peer>, refusal: Status, what: &'static str) -> Refused {
    if door.refusal_within_rate(peer) {
        let peer = peer.map(|peer| peer.to_string()).unwrap_or_default();
        tracing::warn!(%peer, code = ?refusal.code(), what, "request refused at the front door");
        Refused::from(refusal)
    } else {
        by_limit("peer_refusals_per_s", status::peer_refusal_rate_limit(door.limits.peer_refusals_per_s))
    }
}

/// The caller's identity, put there by the front door.
pub fn identity<T>(request: &tonic::Request<T>) -> Result<Identity, Status> {
    request.extensions().get::<Identity>().cloned().ok_or_else(status::no_checked_credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_admits_exactly_its_roles() {
        let identities = [
            Identity::Operator("operator".into()),
            Identity::Merchant(MerchantId("m1".into())),
            Identity::Node(NodeId("n1".into())),
            Identity::Auditor("au1".into()),
            Identity::Publisher(PublisherId("pu1".into())),
        ];
        let expected = [
            (Service::Merchant, [false, true, false, false, false]),
            (Service::Delivery, [false, false, true, false, false]),
            (Service::Catalog, [true, false, false, false, false]),
            (Service::Audit, [true, false, false, true, false]),
            (Service::Admin, [true, false, false, false, false]),
            (Service::Signed, [true, true, true, true, true]),
            (Service::Open, [true, true, true, true, true]),
        ];
        for (service, allowed_roles) in expected {
            for (identity, expect) in identities.iter().zip(allowed_roles) {
                assert_eq!(allowed(service, identity, "RegisterMerchant"), expect, "{service:?} × {identity:?}");
            }
        }
        // A publisher may publish, and do nothing else in the catalog; the operator both.
        assert!(allowed(Service::Catalog, &identities[4], "PublishMedia") && allowed(Service::Catalog, &identities[0], "PublishMedia"));
        assert!(!allowed(Service::Catalog, &identities[1], "PublishMedia"), "a merchant does not publish");
        assert_eq!(service_of("/vouchsafe.v1.MerchantService/Reserve"), Some(Service::Merchant));
        assert_eq!(service_of("/grpc.health.v1.Health/Check"), Some(Service::Open));
        assert_eq!(service_of("/vouchsafe.v1.ConsumerService/GetPoints"), Some(Service::Signed));
        assert_eq!(service_of("/vouchsafe.v1.Nope/Reserve"), None);
        assert_eq!(service_of(""), None);
    }
}
