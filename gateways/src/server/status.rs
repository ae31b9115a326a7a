//! The one mapping from refusals and failures to gRPC statuses. Both matches are
//! exhaustive with no `_` arm: a new `Rejection` or error variant does not compile until it
//! is given a code. Messages say what to do next and never contain a token, key, receipt
//! or MAC (rejections and errors carry none).

use engine::app::AppError;
use engine::domain::Rejection;
use engine::handler::HandleError;
use engine::log::AppendError;
use tonic::{Code, Status};

/// The status code of a refusal.
pub fn rejection_code(rejection: &Rejection) -> Code {
    match rejection {
        Rejection::InvalidArgument { .. } => Code::InvalidArgument,
        Rejection::RequestIdReused { .. } => Code::InvalidArgument,
        Rejection::NotFound { .. } => Code::NotFound,
        Rejection::AlreadyExists { .. } => Code::AlreadyExists,
        Rejection::NotYourVoucher => Code::PermissionDenied,
        Rejection::NotYourAssignment => Code::PermissionDenied,
        Rejection::BadProof => Code::PermissionDenied,
        Rejection::ChallengeUsed => Code::PermissionDenied,
        Rejection::DeliveryRetriesExhausted { .. } => Code::FailedPrecondition,
        Rejection::CertRevoked => Code::PermissionDenied,
        Rejection::CertNotValid => Code::PermissionDenied,
        Rejection::MerchantSuspended => Code::PermissionDenied,
        Rejection::Expired { .. } => Code::FailedPrecondition,
        Rejection::NotExpired { .. } => Code::FailedPrecondition,
        Rejection::Voided => Code::FailedPrecondition,
        Rejection::AlreadyDelivered => Code::FailedPrecondition,
        Rejection::AlreadyRedeemed => Code::FailedPrecondition,
        Rejection::InvalidTransition { .. } => Code::FailedPrecondition,
        Rejection::InsufficientPoints { .. } => Code::FailedPrecondition,
        Rejection::NoSuchHold => Code::FailedPrecondition,
        Rejection::NotForSale(_) => Code::FailedPrecondition,
        Rejection::NodeUnavailable => Code::FailedPrecondition,
        // A capacity limit is hit: every node's slots are taken.
        Rejection::NoNodeAvailable => Code::ResourceExhausted,
        Rejection::Overflow => Code::OutOfRange,
    }
}

pub fn from_rejection(rejection: &Rejection) -> Status {
    Status::new(rejection_code(rejection), rejection.to_string())
}

/// The status of a failed use case.
pub fn from_app_error(error: &AppError) -> Status {
    match error {
        AppError::Rejected(rejection) => from_rejection(rejection),
        AppError::Handle(handle) => match handle {
            HandleError::Rejected(rejection) => from_rejection(rejection),
            HandleError::Contended(_) => Status::aborted(handle.to_string()),
            HandleError::Append(append) => match append {
                AppendError::InvalidSubject(_) => Status::invalid_argument(append.to_string()),
                AppendError::TooLarge { .. } => Status::resource_exhausted(append.to_string()),
                // It may have been stored: the client retries with the same request id.
                AppendError::Unknown(_) => Status::unavailable(append.to_string()),
                AppendError::Unavailable(_) => Status::unavailable(append.to_string()),
                AppendError::Storage(_) => Status::internal(append.to_string()),
            },
            HandleError::Read(_) => Status::unavailable(handle.to_string()),
            HandleError::Decode { .. } => Status::data_loss(handle.to_string()),
        },
        // Crypto errors carry no key material; still, say no more than that it failed.
        AppError::Crypto(_) => Status::internal("a cryptographic operation failed"),
        AppError::Task(_) | AppError::PoolClosed | AppError::Sign(_) => Status::internal(error.to_string()),
        AppError::MediaStore(store) => media_store_failed("the media store failed", store),
    }
}

// ---- the edge's own refusals ------------------------------------------------------------
// Refusals that come from the server itself rather than from a use case: credentials,
// limits, the caller's role, and failures of the stream or the media store while serving.

/// A credential that is unknown or whose secret is wrong: one answer for both, so the
/// answer does not tell which ids exist.
pub fn unknown_credential() -> Status {
    Status::unauthenticated("unknown credential id or wrong secret; check the credential file")
}

pub fn malformed_secret(header: &str) -> Status {
    Status::unauthenticated(format!("{header} must be 64 hex digits"))
}

pub fn missing_credential(id_header: &str, secret_header: &str) -> Status {
    Status::unauthenticated(format!("missing {id_header} / {secret_header} metadata; pass a credential file with --cred"))
}

/// A handler reached without the front door's identity: a wiring bug, refused safely.
pub fn no_checked_credential() -> Status {
    Status::unauthenticated("no credential was checked for this call")
}

pub fn credential_check_unavailable(error: &HandleError) -> Status {
    Status::unavailable(format!("cannot check the credential now: {error}"))
}

pub fn no_such_service(path: &str) -> Status {
    Status::unimplemented(format!("no such service: {path}"))
}

pub fn role_may_not_call(role: &str, method: &str) -> Status {
    Status::permission_denied(format!("a {role} credential may not call {method}"))
}

/// `acting_as` is the role the handler needs, with its article ("a merchant").
pub fn role_may_not_act_as(role: &str, acting_as: &str) -> Status {
    Status::permission_denied(format!("a {role} credential may not act as {acting_as}"))
}

pub fn requests_in_flight_limit(requests_in_flight_max: usize) -> Status {
    Status::resource_exhausted(format!("the engine is serving its limit of {requests_in_flight_max} requests; retry shortly"))
}

pub fn request_too_large(request_bytes_max: usize) -> Status {
    Status::resource_exhausted(format!("the request is over the {request_bytes_max}-byte limit of this service"))
}

pub fn request_body_lost(error: &dyn std::fmt::Display) -> Status {
    Status::cancelled(format!("the request body did not arrive: {error}"))
}

pub fn replays_busy(replays_in_flight_max: usize) -> Status {
    Status::resource_exhausted(format!("{replays_in_flight_max} full replays are running; retry when one has finished"))
}

/// The stream could not be read while serving (a replay, a feed, the head).
pub fn stream_unreadable(what: &str, error: &dyn std::fmt::Display) -> Status {
    Status::unavailable(format!("{what} could not read the stream: {error}; retry"))
}

/// An event of the stream does not decode: the stream is damaged, not the request.
pub fn event_undecodable(seq: u64, error: &dyn std::fmt::Display) -> Status {
    Status::data_loss(format!("event {seq} does not decode: {error}"))
}

pub fn media_store_failed(what: &str, error: &engine::media_store::MediaStoreError) -> Status {
    Status::internal(format!("{what}: {error}"))
}

pub fn node_not_announced(node: &str) -> Status {
    Status::unavailable(format!("delivery node {node} has not announced itself to this engine yet; retry with the same request id shortly"))
}

pub fn node_must_register() -> Status {
    Status::failed_precondition("this node has not announced itself to this engine; call RegisterNode")
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::ids::{Millis, Seq};

    fn every_rejection() -> Vec<Rejection> {
        vec![
            Rejection::InvalidArgument { field: "ttl_ms", reason: "must be positive".into() },
            Rejection::RequestIdReused { first: "Reserve".into() },
            Rejection::NotFound { kind: "voucher", id: "v1".into() },
            Rejection::AlreadyExists { kind: "merchant", id: "m1".into() },
            Rejection::NotYourVoucher,
            Rejection::NotYourAssignment,
            Rejection::BadProof,
            Rejection::CertRevoked,
            Rejection::CertNotValid,
            Rejection::MerchantSuspended,
            Rejection::Expired { expires_at: Millis(5) },
            Rejection::NotExpired { expires_at: Millis(5) },
            Rejection::Voided,
            Rejection::AlreadyDelivered,
            Rejection::AlreadyRedeemed,
            Rejection::InvalidTransition { kind: "voucher", command: "Void", state: "Issued" },
            Rejection::InsufficientPoints { available: 1, needed: 2 },
            Rejection::NoSuchHold,
            Rejection::NotForSale("md1".into()),
            Rejection::NodeUnavailable,
            Rejection::NoNodeAvailable,
            Rejection::Overflow,
        ]
    }

    #[test]
    fn every_rejection_gets_a_precise_code_and_a_message() {
        let expected = [
            Code::InvalidArgument,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::OutOfRange,
        ];
        let rejections = every_rejection();
        assert_eq!(rejections.len(), expected.len());
        for (rejection, code) in rejections.iter().zip(expected) {
            let status = from_rejection(rejection);
            assert_eq!(status.code(), code, "{rejection:?}");
            assert!(!status.message().is_empty());
            assert_ne!(status.code(), Code::Internal, "a refusal is never Internal");
            assert_ne!(status.code(), Code::Unknown);
        }
    }

    #[test]
    fn failures_map_to_retryable_or_internal_codes() {
        let cases = [
            (AppError::Handle(HandleError::Contended(16)), Code::Aborted),
            (AppError::Handle(HandleError::Append(AppendError::Unknown("timeout".into()))), Code::Unavailable),
            (AppError::Handle(HandleError::Append(AppendError::Unavailable("down".into()))), Code::Unavailable),
            (AppError::Handle(HandleError::Append(AppendError::TooLarge { size: 2, max: 1 })), Code::ResourceExhausted),
            (AppError::Handle(HandleError::Append(AppendError::Storage("disk".into()))), Code::Internal),
            (AppError::Handle(HandleError::Decode { seq: Seq(3), error: engine::wire::DecodeError::Missing("event") }), Code::DataLoss),
            (AppError::Crypto(engine::crypto::CryptoError::Decrypt), Code::Internal),
            (AppError::Rejected(Rejection::Voided), Code::FailedPrecondition),
        ];
        for (error, code) in cases {
            assert_eq!(from_app_error(&error).code(), code, "{error}");
        }
        let unknown = from_app_error(&AppError::Handle(HandleError::Append(AppendError::Unknown("timeout".into()))));
        assert!(unknown.message().contains("same request id"), "tells the caller how to retry: {}", unknown.message());
    }
}
