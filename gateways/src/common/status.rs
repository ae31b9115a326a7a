//! The one way an internal failure reaches a caller, for the server and the node alike:
//! what to do and a short error id; the detail goes to the log under that id. (Each
//! program's refusals are mapped in its own `status` module.)

use tonic::{Code, Status};

/// An internal failure as the caller sees it: what to do and a short error id. The detail
/// (file paths, backend messages) goes to the log under that id, never to the caller,
/// who may be unauthenticated. Errors carry no secret, so the log line is safe too.
pub fn with_error_id(code: Code, advice: &str, detail: &dyn std::fmt::Display) -> Status {
    let error_id = hex::encode(engine::crypto::random_bytes::<6>());
    tracing::error!(%error_id, %detail, advice, "internal error answered with an error id");
    Status::new(code, format!("{advice} (error id {error_id}; the detail is in this service's log)"))
}

/// An error with its causes, for the log line of [`with_error_id`]: the OS error under a
/// failed write, the connection failure under a transport error.
pub struct WithCauses<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
