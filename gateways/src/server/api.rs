//! What every gRPC service shares: the `Api` handle over the engine, the caller's role
//! from the front door's identity, and the request conversions (ids, hashes, regions) that
//! refuse with InvalidArgument through the one status mapping.

use super::*;
use crate::server::front_door::{self, Identity};
use crate::server::status::from_app_error;
use engine::app::Market;
use engine::domain::{Rejection, validate};
use engine::ids::*;
use proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// All four services over one engine.
#[derive(Clone)]
pub struct Api {
    pub(super) state: Arc<EngineState>,
}

pub(super) fn fail(error: engine::app::AppError) -> Status {
    from_app_error(&error)
}

pub(super) fn invalid(field: &'static str, reason: &str) -> Status {
    crate::server::status::from_rejection(&Rejection::InvalidArgument { field, reason: reason.to_string() })
}

pub(super) fn id<T>(field: &'static str, value: &str, wrap: impl FnOnce(String) -> T) -> Result<T, Status> {
    validate::id(field, value).map_err(|r| crate::server::status::from_rejection(&r))?;
    Ok(wrap(value.to_string()))
}

pub(super) fn request_id(value: &str) -> Result<RequestId, Status> {
    id("request_id", value, RequestId)
}

pub(super) fn hash32(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], Status> {
    bytes.try_into().map_err(|_| invalid(field, "must be 32 bytes"))
}

pub(super) fn region(value: &str) -> Option<&str> {
    if value.is_empty() { None } else { Some(value) }
}

impl Api {
    /// Counts the answer's code and wraps it.
    pub(super) fn answer<T>(&self, result: Result<T, Status>) -> Result<Response<T>, Status> {
        match result {
            Ok(message) => {
                self.state.metrics.count_code(tonic::Code::Ok);
                Ok(Response::new(message))
            }
            Err(status) => {
                self.state.metrics.count_code(status.code());
                Err(status)
            }
        }
    }

    pub(super) fn merchant<T>(request: &Request<T>) -> Result<MerchantId, Status> {
        match front_door::identity(request)? {
            Identity::Merchant(merchant) => Ok(merchant),
            other => Err(crate::server::status::role_may_not_act_as(other.role(), "a merchant")),
        }
    }

    pub(super) fn node<T>(request: &Request<T>) -> Result<NodeId, Status> {
        match front_door::identity(request)? {
            Identity::Node(node) => Ok(node),
            other => Err(crate::server::status::role_may_not_act_as(other.role(), "a delivery node")),
        }
    }

    /// Who publishes: the operator (its own media, any key, the request's terms) or a
    /// publisher (its registered keys, its account's terms). Any other caller is refused
    /// (the front door never lets one reach PublishMedia).
    pub(super) fn publishing<T>(request: &Request<T>) -> Result<Publishing, Status> {
        match front_door::identity(request)? {
            Identity::Operator(operator) => Ok(Publishing::Operator(operator)),
            Identity::Publisher(publisher) => Ok(Publishing::Publisher(publisher)),
            other => Err(crate::server::status::role_may_not_act_as(other.role(), "the operator or a publisher")),
        }
    }

    pub(super) fn operator<T>(request: &Request<T>) -> Result<String, Status> {
        match front_door::identity(request)? {
            Identity::Operator(operator) => Ok(operator),
            other => Err(crate::server::status::role_may_not_act_as(other.role(), "the operator")),
        }
    }

    pub(super) fn market(&self) -> &Market {
        &self.state.market
    }

    /// Any voucher by id, for the operator's console (a merchant's find is GetVoucher's
    /// `Market::get_voucher`); an unknown id is NotFound and leaves nothing in the cache.
    pub(super) async fn any_voucher(&self, voucher: &VoucherId) -> Result<engine::domain::voucher::Voucher, Status> {
        let root = self.market().handler().load_existing::<engine::domain::voucher::Voucher>(&voucher.0).await.map_err(|error| fail(error.into()))?;
        root.map(|root| root.state.clone())
            .ok_or_else(|| crate::server::status::from_rejection(&Rejection::NotFound { kind: "voucher", id: voucher.0.clone() }))
    }
}

/// Who calls PublishMedia (`Api::publishing`).
pub(super) enum Publishing {
    Operator(String),
    Publisher(PublisherId),
}

pub(super) fn voucher_view(voucher: &engine::domain::voucher::Voucher, node_endpoint: String) -> pb::VoucherView {
    pb::VoucherView {
        voucher_id: voucher.id.as_ref().map(|v| v.0.clone()).unwrap_or_default(),
        merchant_id: voucher.merchant.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
        status: voucher.status.name().to_string(),
        media_ids: voucher.items.iter().map(|item| item.media_id.0.clone()).collect(),
        node_id: voucher.node.as_ref().map(|n| n.0.clone()).unwrap_or_default(),
        expires_at_ms: voucher.expires_at.0,
        delivered_media_ids: voucher.delivered.iter().map(|m| m.0.clone()).collect(),
        node_endpoint,
        rental_until_ms: voucher.rental_until.0,
        rental_plays: voucher.rental_plays,
    }
}

pub(super) fn certificate_message(consumer: &ConsumerId, cert: &engine::domain::party::Certificate) -> pb::Certificate {
    pb::Certificate {
        consumer_id: consumer.0.clone(),
        cert_serial: cert.serial.0.clone(),
        public_key_der: cert.public_key_der.clone(),
        not_before_ms: cert.not_before.0,
        not_after_ms: cert.not_after.0,
        engine_key_id: cert.engine_key_id.clone(),
        signature: cert.signature.clone(),
    }
}
