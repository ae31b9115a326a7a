//! The engine's front door, as one tower layer in front of every gRPC service: it
//! authenticates the caller from its credential metadata (parties in the aggregate cache
//! at once; others with a bounded number of stream reads, and made-up ids leave nothing in
//! the cache), checks that the caller's role may call the service, only then counts the
//! request against the server's concurrency limit, and buffers
//! the (unary) request body up to the service's size limit. All of it happens before
//! tonic decodes a byte, so unauthenticated garbage gets UNAUTHENTICATED and an oversized
//! request RESOURCE_EXHAUSTED (tonic alone would say OUT_OF_RANGE), and neither writes
//! anything. The caller's identity travels to the handlers as a request extension and is
//! the only identity they use (never a request field).
//!
//! Health and reflection need no credential; ConsumerService needs none either (its
//! requests are signed with a consumer's passport and checked by the handler) but is
//! limited and bounded like the others. Credential checks are constant-time
//! comparisons of `crypto::credential_hash(secret)` with the hash recorded at registration;
//! an unknown id and a wrong secret get the same answer.

use crate::common::cred::{ID_HEADER, SECRET_HEADER};
use crate::server::status;
use engine::app::Market;
use engine::crypto::{self, SecretKey};
use engine::domain::party::{Auditor, AuditorStatus, Merchant, MerchantStatus, Node, NodeStatus};
use engine::ids::{MerchantId, NodeId};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;

/// Who is calling, from its credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Operator(String),
    Merchant(MerchantId),
    Node(NodeId),
    Auditor(String),
}

impl Identity {
    pub fn role(&self) -> &'static str {
        match self {
            Identity::Operator(_) => "operator",
            Identity::Merchant(_) => "merchant",
            Identity::Node(_) => "delivery node",
            Identity::Auditor(_) => "auditor",
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

fn allowed(service: Service, identity: &Identity) -> bool {
    match (service, identity) {
        (Service::Open | Service::Signed, _) => true,
        (Service::Merchant, Identity::Merchant(_)) => true,
        (Service::Delivery, Identity::Node(_)) => true,
        (Service::Catalog | Service::Admin, Identity::Operator(_)) => true,
        (Service::Audit, Identity::Auditor(_) | Identity::Operator(_)) => true,
        (Service::Merchant | Service::Delivery | Service::Catalog | Service::Audit | Service::Admin, _) => false,
    }
}

/// Request body limits, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Every request except the catalog's uploads.
    pub request_bytes_max: usize,
    /// CatalogService.PublishMedia (it carries the media container).
    pub upload_bytes_max: usize,
    /// Requests served at once by the whole server.
    pub requests_in_flight_max: usize,
    /// Assignment feeds (SubscribeAssignments streams) open at once; each node has at most
    /// one (a new one replaces the old).
    pub assignment_feeds_max: usize,
}

/// The default limit for every request body but PublishMedia's.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// The default limit for PublishMedia bodies: a media container plus 1 MiB of fields.
pub const UPLOAD_BYTES_MAX: usize = engine::media::CONTAINER_BYTES_MAX + 1024 * 1024;
/// The default number of requests the whole server serves at once.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 2048;
/// The default number of assignment feeds open at once (each reads the whole stream).
pub const ASSIGNMENT_FEEDS_MAX: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_bytes_max: REQUEST_BYTES_MAX,
            upload_bytes_max: UPLOAD_BYTES_MAX,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX,
            assignment_feeds_max: ASSIGNMENT_FEEDS_MAX,
        }
    }
}

/// Credential checks that read the stream at once (a party not in the aggregate cache):
/// made-up ids cost at most this many reads, and parties in the cache never wait for them.
pub const CREDENTIAL_READS_MAX: usize = 64;

/// Checks credentials against what the stream recorded.
pub struct Authenticator {
    market: Arc<Market>,
    operator_id: String,
    operator_hash: [u8; 32],
    reads: Arc<tokio::sync::Semaphore>,
}

impl Authenticator {
    pub fn new(market: Arc<Market>, operator_id: String, operator_secret: &SecretKey) -> Self {
        let reads = Arc::new(tokio::sync::Semaphore::new(CREDENTIAL_READS_MAX));
        Self { market, operator_id, operator_hash: crypto::credential_hash(operator_secret.expose()), reads }
    }

    /// The party `id` as recorded: from the aggregate cache, or read from the stream under
    /// a bounded number of reads. A party that does not exist is not cached (made-up ids
    /// evict nothing) and reads as the default (unknown) state.
    async fn party<A: engine::domain::Aggregate + Clone>(&self, id: &str) -> Result<A, Status> {
        let handler = self.market.handler();
        if let Some(root) = handler.peek::<A>(id) {
            return Ok(root.state.clone());
        }
        let _read = self.reads.try_acquire().map_err(|_| status::credential_reads_busy(CREDENTIAL_READS_MAX))?;
        let root = handler.load_existing::<A>(id).await.map_err(|e| status::credential_check_unavailable(&e))?;
        Ok(root.map(|root| root.state.clone()).unwrap_or_default())
    }

    /// The identity behind `id` + `secret_hex`, or UNAUTHENTICATED.
    pub async fn authenticate(&self, id: &str, secret_hex: &str) -> Result<Identity, Status> {
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
            (Identity::Operator(id.to_string()), self.operator_hash, true)
        } else if id.starts_with('a') {
            let auditor = self.party::<Auditor>(id).await?;
            (Identity::Auditor(id.to_string()), auditor.credential_hash, auditor.status == AuditorStatus::Active)
        } else if id.starts_with('m') {
            let merchant = self.party::<Merchant>(id).await?;
            // A suspended merchant still authenticates: the use cases refuse what it may not do.
            (Identity::Merchant(MerchantId(id.to_string())), merchant.credential_hash, merchant.status != MerchantStatus::Unknown)
        } else if id.starts_with('n') {
            let node = self.party::<Node>(id).await?;
            (Identity::Node(NodeId(id.to_string())), node.credential_hash, matches!(node.status, NodeStatus::Active | NodeStatus::Drained))
        } else {
            return Err(refused());
        };
        // Compare even for unknown ids (their recorded hash is zeros), so timing says nothing.
        let matches = crypto::ct_eq(&presented, &recorded);
        if matches && active { Ok(identity) } else { Err(refused()) }
    }
}

impl Authenticator {
    /// Whether an identity checked earlier (a console session) still stands: an auditor
    /// not revoked since, a merchant still registered. The operator and nodes always do.
    pub async fn still_admitted(&self, identity: &Identity) -> Result<bool, Status> {
        Ok(match identity {
            Identity::Operator(_) | Identity::Node(_) => true,
            Identity::Auditor(id) => self.party::<Auditor>(id).await?.status == AuditorStatus::Active,
            Identity::Merchant(id) => self.party::<Merchant>(&id.0).await?.status != MerchantStatus::Unknown,
        })
    }
}

/// The layer: wraps the router of gRPC services.
#[derive(Clone)]
pub struct FrontDoor {
    authenticator: Arc<Authenticator>,
    limits: Limits,
    in_flight: Arc<tokio::sync::Semaphore>,
    refused: Arc<dyn Fn(tonic::Code) + Send + Sync>,
}

impl FrontDoor {
    /// `refused` is told the code of every request refused here (for the metrics).
    pub fn new(authenticator: Arc<Authenticator>, limits: Limits, refused: Arc<dyn Fn(tonic::Code) + Send + Sync>) -> Self {
        Self { authenticator, limits, in_flight: Arc::new(tokio::sync::Semaphore::new(limits.requests_in_flight_max)), refused }
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
                Err(status) => {
                    (door.refused)(status.code());
                    Ok(status.into_http())
                }
            }
        })
    }
}

async fn admit(door: &FrontDoor, request: Request) -> Result<(Request, Option<tokio::sync::OwnedSemaphorePermit>), Status> {
    let Some(service) = service_of(request.uri().path()) else {
        return Err(status::no_such_service(request.uri().path()));
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
            return Err(status::missing_credential(ID_HEADER, SECRET_HEADER));
        };
        let identity = door.authenticator.authenticate(&id, &secret).await?;
        if !allowed(service, &identity) {
            return Err(status::role_may_not_call(identity.role(), parts.uri.path().trim_start_matches('/')));
        }
        Some(identity)
    };
    // Only now, checked, does the request take one of the server's request slots.
    let permit = Arc::clone(&door.in_flight).try_acquire_owned().map_err(|_| status::requests_in_flight_limit(door.limits.requests_in_flight_max))?;
    // Only PublishMedia carries a media container; every other call is small.
    let limit = if parts.uri.path() == "/vouchsafe.v1.CatalogService/PublishMedia" { door.limits.upload_bytes_max } else { door.limits.request_bytes_max };
    // Every RPC takes a single request message: buffer it whole, within the limit.
    let collected = http_body_util::Limited::new(body, limit).collect().await.map_err(|error| {
        if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() { status::request_too_large(limit) } else { status::request_body_lost(&error) }
    })?;
    if let Some(identity) = identity {
        parts.extensions.insert(identity);
    }
    let body = tonic::body::Body::new(http_body_util::Full::new(collected.to_bytes()));
    Ok((http::Request::from_parts(parts, body), Some(permit)))
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
        ];
        let expected = [
            (Service::Merchant, [false, true, false, false]),
            (Service::Delivery, [false, false, true, false]),
            (Service::Catalog, [true, false, false, false]),
            (Service::Audit, [true, false, false, true]),
            (Service::Admin, [true, false, false, false]),
            (Service::Signed, [true, true, true, true]),
            (Service::Open, [true, true, true, true]),
        ];
        for (service, allowed_roles) in expected {
            for (identity, expect) in identities.iter().zip(allowed_roles) {
                assert_eq!(allowed(service, identity), expect, "{service:?} × {identity:?}");
            }
        }
        assert_eq!(service_of("/vouchsafe.v1.MerchantService/Reserve"), Some(Service::Merchant));
        assert_eq!(service_of("/grpc.health.v1.Health/Check"), Some(Service::Open));
        assert_eq!(service_of("/vouchsafe.v1.ConsumerService/GetPoints"), Some(Service::Signed));
        assert_eq!(service_of("/vouchsafe.v1.Nope/Reserve"), None);
        assert_eq!(service_of(""), None);
    }
}
