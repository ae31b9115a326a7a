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
        Rejection::NotYourAssignment => Code::PermissionDenied,
        Rejection::VoucherMoved => Code::FailedPrecondition,
        Rejection::BadProof => Code::PermissionDenied,
        Rejection::ChallengeUsed => Code::PermissionDenied,
        Rejection::DeliveryRetriesExhausted { .. } | Rejection::RecoveriesExhausted { .. } => Code::FailedPrecondition,
        Rejection::CertRevoked => Code::PermissionDenied,
        Rejection::CertNotValid => Code::PermissionDenied,
        Rejection::MerchantSuspended => Code::PermissionDenied,
        Rejection::UnregisteredPublisherKey { .. } => Code::PermissionDenied,
        Rejection::Expired { .. } => Code::FailedPrecondition,
        Rejection::NotExpired { .. } => Code::FailedPrecondition,
        // The rental's window is over: no play is issued or redeemed; a new rental is.
        Rejection::RentalEnded { .. } | Rejection::RentalPlaysExhausted { .. } => Code::FailedPrecondition,
        Rejection::Voided => Code::FailedPrecondition,
        Rejection::AlreadyDelivered => Code::FailedPrecondition,
        Rejection::AlreadyRedeemed => Code::FailedPrecondition,
        Rejection::InvalidTransition { .. } => Code::FailedPrecondition,
        Rejection::InsufficientPoints => Code::FailedPrecondition,
        Rejection::SpendNotAuthorized { .. } => Code::PermissionDenied,
        Rejection::UnverifiedRequest { .. } => Code::PermissionDenied,
        Rejection::NoSuchHold => Code::FailedPrecondition,
        Rejection::NotForSale(_) => Code::FailedPrecondition,
        Rejection::NodeUnavailable => Code::FailedPrecondition,
        // A capacity limit is hit: every node's slots are taken.
        Rejection::NoNodeAvailable | Rejection::PreviewQuotaReached => Code::ResourceExhausted,
        Rejection::NodeStillServes | Rejection::KeysReleased | Rejection::SlotLeaseLost => Code::FailedPrecondition,
        Rejection::Overflow => Code::OutOfRange,
        // Another rotation came first, or the retired key's grace has not passed.
        Rejection::KeyRotationStale { .. } | Rejection::KeyInGrace { .. } => Code::FailedPrecondition,
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
                AppendError::Unknown(_) => with_error_id(Code::Unavailable, "the append's outcome is unknown; retry with the same request id", append),
                AppendError::Unavailable(_) => with_error_id(Code::Unavailable, "the event log is unavailable; retry with the same request id", append),
                AppendError::Storage(_) => with_error_id(Code::Internal, "the event log failed to store the event", append),
            },
            HandleError::Read(_) => with_error_id(Code::Unavailable, "the event log could not be read; retry with the same request id", handle),
            HandleError::Decode { .. } => with_error_id(Code::DataLoss, "a stored event does not decode", handle),
        },
        // Crypto errors carry no key material; still, say no more than that it failed.
        AppError::Crypto(_) => with_error_id(Code::Internal, "a cryptographic operation failed", error),
        AppError::Task(_) | AppError::PoolClosed | AppError::Sign(_) => with_error_id(Code::Internal, "an internal task failed", error),
        AppError::MediaStore(store) => media_store_failed("the media store failed", store),
        // The id is public (it is on the stream); the operator copies the key directory.
        AppError::TokenKeyMissing { .. } => Status::failed_precondition(error.to_string()),
    }
}

pub use crate::common::status::with_error_id;

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

pub fn credential_rate_limit(requests_per_s: u32) -> Status {
    Status::resource_exhausted(format!("this credential is over its limit of {requests_per_s} requests per second; retry shortly, or spread the load"))
}

pub fn peer_refusal_rate_limit(refusals_per_s: u32) -> Status {
    Status::resource_exhausted(format!(
        "too many refused requests from this address (more than {refusals_per_s} per second); check the credential file, then retry later"
    ))
}

pub fn request_read_deadline(read_ms: u64) -> Status {
    Status::deadline_exceeded(format!("the request body did not arrive within {read_ms} ms; send the whole request at once"))
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

/// A replay that recomputes the royalty chain asked of an engine that does not hold the
/// royalty master key (forward security: the key stays with the auditor).
pub fn royalty_master_with_the_auditor(what: &str) -> Status {
    Status::failed_precondition(format!(
        "{what} recomputes the royalty chain from its first entry, which needs the royalty master key, and this engine does not hold it (it stays with the auditor): run `vouchsafe audit replay` against the stream with the auditor's keys"
    ))
}

/// The engine's key directory does not load for a rotation (the reason names files, never
/// key material).
pub fn key_directory_unloadable(error: &anyhow::Error) -> Status {
    Status::failed_precondition(format!("the key directory does not load: {error:#}; fix it and rotate again"))
}

pub fn key_directory_task_failed(error: &dyn std::fmt::Display) -> Status {
    with_error_id(Code::Internal, "loading the key directory failed", error)
}

/// A rotation asked for a key the engine's key directory does not hold as its current one
/// (`file`: `engine.pem`, `token.key` or `checkpoint.key`; `kind`: what `keys rotate` takes).
pub fn key_directory_not_rotated(file: &str, kind: &str, found: &str, asked: &str) -> Status {
    // Checkpoint vkeys are long: name the key by its hash (the vkey's middle part).
    let short = |key: &str| key.split('+').nth(1).unwrap_or(key).chars().take(64).collect::<String>();
    Status::failed_precondition(format!(
        "the key directory's {file} is key {}, not {}: run `vouchsafe keys rotate {kind}` on this engine's key directory",
        short(found),
        short(asked)
    ))
}

/// The stream could not be read while serving (a replay, a feed, the head).
pub fn stream_unreadable(what: &str, error: &dyn std::fmt::Display) -> Status {
    with_error_id(Code::Unavailable, &format!("{what} could not read the stream; retry"), error)
}

/// An event of the stream does not decode: the stream is damaged, not the request.
pub fn event_undecodable(seq: u64, error: &dyn std::fmt::Display) -> Status {
    with_error_id(Code::DataLoss, &format!("event {seq} does not decode"), error)
}

pub fn media_store_failed(what: &str, error: &engine::media_store::MediaStoreError) -> Status {
    with_error_id(Code::Internal, what, &crate::common::status::WithCauses(error))
}

pub fn node_not_announced(node: &str) -> Status {
    Status::unavailable(format!("delivery node {node} has not announced itself to this engine yet; retry with the same request id shortly"))
}

pub fn assignment_feeds_full(feeds_max: usize) -> Status {
    Status::resource_exhausted(format!("the engine serves its limit of {feeds_max} assignment feeds; retry later"))
}

/// A newer SubscribeAssignments of the same node ended this one.
pub fn assignment_feed_replaced() -> Status {
    Status::aborted("a newer SubscribeAssignments of this node replaced this feed; one feed per node")
}

/// A figure of a read does not fit its field (a sum past what int64 or uint64 holds).
pub fn figure_out_of_range(what: &str) -> Status {
    Status::out_of_range(format!("{what} does not fit its field; ask the operator to check the ledger"))
}

/// A read's cursor that no page of this engine answered.
pub fn bad_cursor() -> Status {
    from_rejection(&Rejection::InvalidArgument { field: "cursor", reason: "is not a next_cursor this engine answered".into() })
}

/// A statement asked of a stream whose replay found something: the auditor replays it
/// (`audit replay`) to see what.
pub fn stream_not_clean(seq: u64) -> Status {
    Status::data_loss(format!("the stream does not audit clean (first bad at sequence {seq}); no statement; run audit replay"))
}

/// The replayed royalty log's entries did not open with the master key.
pub fn royalty_log_unopened(entry: Option<u64>, reason: &dyn std::fmt::Display) -> Status {
    let entry = entry.map(|entry| format!(" at entry {entry}")).unwrap_or_default();
    with_error_id(Code::DataLoss, &format!("the royalty log does not open{entry}; no statement"), reason)
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
            Rejection::NotYourAssignment,
            Rejection::VoucherMoved,
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
            Rejection::InsufficientPoints,
            Rejection::SpendNotAuthorized { reason: "the spend authorization expired" },
            Rejection::UnverifiedRequest { reason: "the request is not signed" },
            Rejection::NoSuchHold,
            Rejection::NotForSale("md1".into()),
            Rejection::NodeUnavailable,
            Rejection::NoNodeAvailable,
            Rejection::PreviewQuotaReached,
            Rejection::NodeStillServes,
            Rejection::SlotLeaseLost,
            Rejection::KeysReleased,
            Rejection::Overflow,
            Rejection::ChallengeUsed,
            Rejection::DeliveryRetriesExhausted { retries_max: 3 },
            Rejection::RecoveriesExhausted { recoveries_max: 3 },
            Rejection::RentalEnded { ended_at: Millis(5) },
            Rejection::RentalPlaysExhausted { plays_max: 3 },
            Rejection::KeyRotationStale { current: "k2".into() },
            Rejection::KeyInGrace { until: Millis(5) },
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
            Code::FailedPrecondition,
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
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::FailedPrecondition,
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

    /// The attack: internal error text (file paths, backend messages) reached callers,
    /// unauthenticated ones too. Now the caller gets what to do and an error id; the detail
    /// goes to the log. Control: the errors themselves do carry the detail.
    #[test]
    fn internal_failures_reach_the_caller_as_an_error_id_without_their_detail() {
        let path = "/var/lib/vouchsafe/secret-layout/log.sled";
        let failures: Vec<(Box<dyn std::fmt::Display>, Status)> = vec![
            {
                let error = AppError::Handle(HandleError::Append(AppendError::Storage(format!("{path}: permission denied"))));
                let status = from_app_error(&error);
                (Box::new(error), status)
            },
            {
                let error = AppError::Handle(HandleError::Append(AppendError::Unavailable(format!("nats://10.1.2.3:4222 {path}"))));
                let status = from_app_error(&error);
                (Box::new(error), status)
            },
            {
                let error = engine::media_store::MediaStoreError::Write { path: path.into(), source: std::io::Error::other("disk full") };
                let status = media_store_failed("cannot store the container", &error);
                (Box::new(error), status)
            },
            {
                let error = AppError::Handle(HandleError::Read(engine::log::ReadError::Storage(path.into())));
                let status = from_app_error(&error);
                (Box::new(error), status)
            },
        ];
        for (error, status) in failures {
            assert!(error.to_string().contains(path), "the control: the error carries the detail: {error}");
            assert!(!status.message().contains(path) && !status.message().contains("10.1.2.3"), "the detail leaked: {}", status.message());
            let id = status.message().split("error id ").nth(1).and_then(|rest| rest.split(';').next()).expect("an error id");
            assert!(id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()), "{}", status.message());
        }
        let retry = from_app_error(&AppError::Handle(HandleError::Append(AppendError::Unavailable("down".into()))));
        assert!(retry.message().contains("retry with the same request id"), "what to do survives: {}", retry.message());
    }
}
