//! The one place where the gRPC face picks a status code: every
//! [`broker::Error`] (malformed requests included, as `Invalid`) becomes a
//! [`tonic::Status`] here (the unary RPCs return
//! it; the `Work` stream copies its code and message into a `WorkError`).

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::broker;
use crate::job::TransitionError;

/// Trailer naming a job's status when a call was refused because of it
/// (`cancelled`, `completed`, ...): a worker's heartbeat learns this way
/// that its job was cancelled.
pub const JOB_STATUS_TRAILER: &str = "jobq-job-status";

/// A malformed field of a request: `INVALID_ARGUMENT`.
pub fn invalid(msg: impl Into<String>) -> broker::Error {
    broker::Error::Invalid(msg.into())
}

impl From<broker::Error> for Status {
    fn from(e: broker::Error) -> Self {
        let code = match &e {
            broker::Error::ShuttingDown(_) => Code::Unavailable,
            broker::Error::NotFound(_) => Code::NotFound,
            broker::Error::Conflict(..) => Code::FailedPrecondition,
            broker::Error::QueueFull(_) => Code::ResourceExhausted,
            broker::Error::IdempotencyMismatch => Code::FailedPrecondition,
            broker::Error::Invalid(_) => Code::InvalidArgument,
            broker::Error::EventTooLarge(_) => Code::OutOfRange,
            broker::Error::Unavailable(m) => {
                tracing::error!(error = %m, "storage unavailable");
                return Status::unavailable("storage is unavailable; retry later");
            }
        };
        let mut meta = MetadataMap::new();
        if let broker::Error::Conflict(
            _,
            TransitionError::NotRunning(s)
            | TransitionError::AlreadyEnded(s)
            | TransitionError::NotPending(s),
        ) = &e
        {
            meta.insert(JOB_STATUS_TRAILER, MetadataValue::from_static(s.as_str()));
        }
        Status::with_metadata(code, e.to_string(), meta)
    }
}

/// A refused worker token: `UNAUTHENTICATED` (missing, malformed, unknown)
/// or `PERMISSION_DENIED` (a token of another role).
pub fn auth(e: AuthError) -> Status {
    if e.is_unauthenticated() {
        Status::unauthenticated(e.to_string())
    } else {
        Status::permission_denied(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobId, Status as JobStatus};

    #[test]
    fn codes_follow_the_contract() {
        let id = JobId::new();
        assert_eq!(
            Status::from(broker::Error::NotFound(id)).code(),
            Code::NotFound
        );
        let s = Status::from(broker::Error::Conflict(
            id,
            TransitionError::NotRunning(JobStatus::Cancelled),
        ));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.metadata().get(JOB_STATUS_TRAILER).unwrap(), "cancelled");
        let s = Status::from(broker::Error::Conflict(id, TransitionError::StaleLease));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.metadata().get(JOB_STATUS_TRAILER).is_none());
        assert_eq!(
            Status::from(broker::Error::ShuttingDown(None)).code(),
            Code::Unavailable
        );
        let s = Status::from(broker::Error::Unavailable("disk on fire".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("disk"), "internal text is not echoed");
        assert_eq!(Status::from(invalid("bad")).code(), Code::InvalidArgument);
        use crate::auth::Role;
        assert_eq!(
            auth(AuthError::Missing(Role::Worker)).code(),
            Code::Unauthenticated
        );
        assert_eq!(auth(AuthError::Unknown).code(), Code::Unauthenticated);
        assert_eq!(
            auth(AuthError::WrongRole(Role::Worker)).code(),
            Code::PermissionDenied
        );
    }
}
