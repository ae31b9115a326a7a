//! The node's one mapping to gRPC statuses: every refusal a player (or the engine's
//! stream to this node) can get from the node is chosen here, so one situation never gets
//! two codes. Messages say what to do next and never contain a token, proof or key.

use crate::common::status::{WithCauses, with_error_id};
use engine::crypto::AccessDenied;
use tonic::{Code, Status};

pub fn grant_required() -> Status {
    Status::invalid_argument("grant is required: pass the access grant the merchant received at IssueVoucher")
}

pub fn access_denied(denied: AccessDenied) -> Status {
    match denied {
        AccessDenied::Expired => Status::permission_denied("access token expired; ask the merchant for a new access token"),
        AccessDenied::Invalid => Status::permission_denied(
            "access token invalid for this node, voucher, media or expiry; use the grant exactly as the merchant received it at IssueVoucher",
        ),
    }
}

pub fn media_not_in_grant(media_id: &str) -> Status {
    Status::permission_denied(format!("media {media_id} is not part of this grant; ask for one of the grant's media"))
}

pub fn challenge_refused() -> Status {
    Status::permission_denied("challenge unknown, already used or expired; ask this node for a new challenge and answer it promptly")
}

pub fn shutting_down() -> Status {
    Status::unavailable("this node is shutting down; retry with another node or later")
}

pub fn requests_in_flight_limit() -> Status {
    Status::resource_exhausted("this node is at its limit of requests in flight; retry shortly")
}

pub fn request_too_large(request_bytes_max: usize) -> Status {
    Status::resource_exhausted(format!("the request is over this node's {request_bytes_max}-byte limit"))
}

pub fn request_body_lost(error: &dyn std::fmt::Display) -> Status {
    Status::cancelled(format!("the request body did not arrive: {error}"))
}

pub fn offset_past_end(offset: u64, container_bytes: usize) -> Status {
    Status::out_of_range(format!("offset {offset} is past the end of the {container_bytes}-byte container; resume from at most its size"))
}

pub fn malformed_confirm() -> Status {
    Status::invalid_argument("a Confirm needs the 32-byte received_hash and the 32-byte proof of the receipt (crypto::confirm_proof)")
}

pub fn content_mismatch() -> Status {
    Status::data_loss("the received bytes do not match the media container; the delivery was reported failed, redeem and download again")
}

pub fn malformed_request_id() -> Status {
    Status::invalid_argument("request_id must be 1-64 characters of A-Z a-z 0-9 - _")
}

pub fn malformed_preview_id() -> Status {
    Status::invalid_argument("preview_id must be 1-64 characters of A-Z a-z 0-9 - _")
}

pub fn preview_waits_limit(preview_waits_max: u32) -> Status {
    Status::resource_exhausted(format!(
        "{preview_waits_max} calls already wait here for previews this node does not know yet; play a preview the merchant started, or retry shortly"
    ))
}

pub fn preview_not_here(preview_id: &str) -> Status {
    Status::not_found(format!("preview {preview_id} is not assigned to this node; ask the merchant for a preview and play it on the node it names"))
}

/// The engine's media stream to this node broke the chunking rules.
pub fn engine_stream_malformed(media_id: &str, error: &dyn std::fmt::Display) -> Status {
    with_error_id(Code::Internal, &format!("the engine's stream of media {media_id} is malformed"), error)
}

pub fn engine_stream_broke_off(media_id: &str, error: &dyn std::fmt::Display) -> Status {
    with_error_id(Code::Unavailable, &format!("the engine's stream of media {media_id} broke off; retry"), error)
}

pub fn engine_container_malformed(media_id: &str, error: &dyn std::fmt::Display) -> Status {
    with_error_id(Code::DataLoss, &format!("the engine sent media {media_id} as a malformed container"), error)
}

pub fn check_task_failed(error: &dyn std::fmt::Display) -> Status {
    with_error_id(Code::Internal, "the media check task failed", error)
}

/// The engine's status, as the player should see it: code and message, without the
/// engine's response metadata. A status the engine never sent (this node could not reach
/// it: the connection failed, broke off or timed out; tonic then keeps the cause as its
/// source) says how this node reaches the engine (addresses, OS errors): the player gets
/// its code, advice and an error id, the log the detail.
pub fn relay(status: tonic::Status) -> Status {
    if std::error::Error::source(&status).is_some() {
        return with_error_id(status.code(), "this node cannot reach the engine now; retry shortly", &WithCauses(&status));
    }
    Status::new(status.code(), status.message().to_string())
}
