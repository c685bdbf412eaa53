//! The API's error type and the one place that picks a status code for it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::encode::Obj;
use crate::broker;
use crate::job::{JobId, Status, TransitionError};

/// Every way an API call can end other than success.
#[derive(Debug)]
pub enum ApiError {
    /// A malformed path id, query value, header or body.
    BadRequest(String),
    /// No such route.
    NoRoute,
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// A method this server does not know at all.
    NotImplemented(String),
    /// No such job (or forgotten after `--result-ttl`).
    JobNotFound(JobId),
    /// The job is not in a state that allows this call.
    Conflict(Option<JobId>, TransitionError),
    /// Body over `--max-body`.
    TooLarge(usize),
    /// A progress event over its limit.
    EventTooLarge(usize),
    /// Idempotency key reused for a different request.
    IdempotencyMismatch(Option<JobId>),
    /// Back-pressure: too many pending jobs.
    QueueFull(u64),
    /// The server is shutting down.
    ShuttingDown(Option<JobId>),
    /// The store cannot serve right now.
    Unavailable(String),
    /// The job failed: `502` to its waiting client.
    JobFailed {
        /// The job.
        job_id: JobId,
        /// Hand-outs it had.
        attempts: u32,
        /// The worker's (or the lease rescuer's) error.
        error: String,
    },
    /// The job was cancelled or its queue cleared: `410` to its waiting client.
    JobCancelled(JobId),
    /// Too many requests of this kind are waiting (`--max-waiting-clients`,
    /// `--max-polling-workers`): `503` with `Retry-After`.
    Busy {
        /// "waiting clients" or "long-polling workers".
        what: &'static str,
        /// The cap.
        limit: usize,
    },
    /// The caller may not act in the endpoint's role: `401` or `403`.
    Auth(crate::auth::AuthError),
}

/// `Result` with [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// The answer a waiting client gets for a job that ended without a result.
    pub fn for_ended(job: &crate::job::Job) -> Option<ApiError> {
        match job.status {
            Status::Failed => Some(ApiError::JobFailed {
                job_id: job.id,
                attempts: job.attempts,
                error: job.error.clone().unwrap_or_else(|| "job failed".into()),
            }),
            Status::Cancelled => Some(ApiError::JobCancelled(job.id)),
            _ => None,
        }
    }
}

impl From<broker::Error> for ApiError {
    fn from(e: broker::Error) -> Self {
        match e {
            broker::Error::ShuttingDown(id) => ApiError::ShuttingDown(id),
            broker::Error::NotFound(id) => ApiError::JobNotFound(id),
            broker::Error::Conflict(id, t) => ApiError::Conflict(Some(id), t),
            broker::Error::QueueFull(n) => ApiError::QueueFull(n),
            broker::Error::IdempotencyMismatch => ApiError::IdempotencyMismatch(None),
            broker::Error::Invalid(m) => ApiError::BadRequest(m),
            broker::Error::EventTooLarge(max) => ApiError::EventTooLarge(max),
            broker::Error::Unavailable(msg) => ApiError::Unavailable(msg),
        }
    }
}

/// What an error answer says: its status, sentence, job and `Retry-After`.
struct Answer {
    status: StatusCode,
    message: String,
    job_id: Option<JobId>,
    retry_after: Option<u32>,
}

impl Answer {
    /// An answer that names no job and asks for no retry.
    fn new(status: StatusCode, message: impl Into<String>) -> Answer {
        Answer {
            status,
            message: message.into(),
            job_id: None,
            retry_after: None,
        }
    }

    /// Names the job, when known.
    fn job(self, job_id: Option<JobId>) -> Answer {
        Answer { job_id, ..self }
    }

    /// Adds `Retry-After: secs`.
    fn retry_after(self, secs: u32) -> Answer {
        Answer {
            retry_after: Some(secs),
            ..self
        }
    }
}

impl ApiError {
    /// The one place that picks a status code.
    fn answer(&self) -> Answer {
        match self {
            ApiError::BadRequest(m) => Answer::new(StatusCode::BAD_REQUEST, m.clone()),
            ApiError::NoRoute => Answer::new(StatusCode::NOT_FOUND, "no such route"),
            ApiError::MethodNotAllowed => Answer::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            ),
            ApiError::NotImplemented(m) => Answer::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("method {m} is not implemented"),
            ),
            ApiError::JobNotFound(id) => {
                Answer::new(StatusCode::NOT_FOUND, format!("job {id} not found")).job(Some(*id))
            }
            ApiError::Conflict(id, t) => Answer::new(StatusCode::CONFLICT, t.to_string()).job(*id),
            ApiError::TooLarge(max) => Answer::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than the limit of {max} bytes"),
            ),
            ApiError::EventTooLarge(max) => Answer::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a progress event may be at most {max} bytes"),
            ),
            ApiError::IdempotencyMismatch(id) => Answer::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                broker::Error::IdempotencyMismatch.to_string(),
            )
            .job(*id),
            ApiError::QueueFull(n) => Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("queue is full ({n} jobs pending); retry later"),
            )
            .retry_after(1),
            ApiError::ShuttingDown(id) => {
                Answer::new(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down")
                    .job(*id)
                    .retry_after(5)
            }
            // Logged with the request's fields when answered (`ServerFault`).
            ApiError::Unavailable(_) => Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage is unavailable; retry later",
            )
            .retry_after(1),
            ApiError::JobFailed { job_id, error, .. } => {
                Answer::new(StatusCode::BAD_GATEWAY, error.clone()).job(Some(*job_id))
            }
            ApiError::JobCancelled(id) => {
                Answer::new(StatusCode::GONE, "job was cancelled").job(Some(*id))
            }
            ApiError::Busy { what, limit } => Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("too many {what} (the limit is {limit}); retry later"),
            )
            .retry_after(1),
            ApiError::Auth(e) if e.is_unauthenticated() => {
                Answer::new(StatusCode::UNAUTHORIZED, e.to_string())
            }
            ApiError::Auth(e) => Answer::new(StatusCode::FORBIDDEN, e.to_string()),
        }
    }
}

impl ApiError {
    /// The JSON body of this error's answer (also the `data` of a stream's
    /// `failed` and `cancelled` events).
    pub fn body(&self) -> Vec<u8> {
        let Answer {
            message, job_id, ..
        } = self.answer();
        self.body_of(&message, job_id)
    }

    fn body_of(&self, message: &str, job_id: Option<JobId>) -> Vec<u8> {
        let mut body = Obj::with_capacity(128).str("error", message);
        if let Some(id) = job_id {
            body = body.id("job_id", &id);
        }
        if let ApiError::JobFailed { attempts, .. } = self {
            body = body.num("attempts", *attempts);
        }
        body.finish()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let Answer {
            status,
            message,
            job_id,
            retry_after,
        } = self.answer();
        let mut resp = super::json(status, self.body_of(&message, job_id));
        let h = resp.headers_mut();
        if let Some(id) = job_id {
            if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                h.insert(super::X_JOB_ID, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ApiError::Unavailable(m) = self {
            resp.extensions_mut()
                .insert(crate::metrics::http::ServerFault(m));
        }
        resp
    }
}
