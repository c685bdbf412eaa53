//! Worker endpoints: poll, complete, fail, heartbeat.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use std::time::{Duration, Instant};

use super::{
    encode, header_str, job_json, openapi, ApiError, ApiResult, AppState, Body, Params, PathId,
    Peer,
};
use crate::broker::{
    CompleteRequest, FailRequest, Finish, HeartbeatRequest, PollRequest, ProgressRequest, MAX_BATCH,
};
use crate::job::{Job, JobId, LeaseId};

/// The poll part of a request: `queue=a,b`, `wait=N`, and `max=N` (a
/// batch poll, answered `{"jobs": [...]}`; without it one poll body).
pub(super) fn poll_request(params: &Params) -> ApiResult<(PollRequest, Option<usize>)> {
    let max = params.count("max")?.map(|n| n.min(MAX_BATCH));
    let req = PollRequest {
        queues: params.queues("queue")?,
        wait: params.secs("wait")?.unwrap_or_default(),
    };
    Ok((req, max))
}

/// Whether a complete or fail also asks for the next job (`next=1`).
pub(super) fn wants_next(params: &Params) -> ApiResult<bool> {
    match params.get("next").map(super::trim_ws) {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true" | "") => Ok(true),
        Some(v) => Err(ApiError::BadRequest(format!(
            "bad next {v:?}: expected 1 or 0"
        ))),
    }
}

/// How long after its request a hand-out must come to be checked for a
/// closed connection first. One that comes sooner was taken on a request
/// that has just arrived on that connection: a peer that closes right after
/// sending is as likely to do so after the check as before it, and the check
/// is a syscall in the path of every busy worker.
const CHECK_PEER_AFTER: Duration = Duration::from_millis(1);

/// Answers as a poll does: `204` for no job, else the job (or with a batch,
/// `{"jobs": [...]}`). A worker that went away while it waited would leave
/// the jobs leased to nobody until their leases run out: they are handed
/// back instead. `asked` is when the request arrived.
async fn handout(
    st: &AppState,
    peer: Option<Extension<Peer>>,
    jobs: Vec<Job>,
    batch: bool,
    asked: Instant,
) -> ApiResult<Response> {
    if jobs.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if asked.elapsed() >= CHECK_PEER_AFTER && peer.is_some_and(|Extension(p)| p.is_closed()) {
        tracing::debug!(jobs = jobs.len(), "poller went away; hand-out undone");
        st.broker.release_all(&jobs).await?;
        return Err(ApiError::BadRequest("the connection closed".into()));
    }
    if !batch {
        let job = &jobs[0];
        return Ok(job_json(StatusCode::OK, job.id, encode::handout(job)));
    }
    let mut body =
        Vec::with_capacity(16 + jobs.iter().map(|j| 256 + j.payload.len()).sum::<usize>());
    body.extend_from_slice(b"{\"jobs\":[");
    for (i, job) in jobs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&encode::handout(job));
    }
    body.extend_from_slice(b"]}");
    Ok(super::json(StatusCode::OK, body))
}

/// Take a job (or several with `max`)
#[utoipa::path(
    get,
    path = "/api/worker/poll",
    params(openapi::PollQuery),
    responses(
        (status = 200, description = "A job, now leased to this worker; with `max`, `{\"jobs\": [...]}`", body = openapi::HandoutOrBatch, headers(("X-Job-Id" = String)),
        links(
            ("Complete" = (operation_id = "complete", parameters(("id" = "$response.body#/job_id"), ("lease" = "$response.body#/lease_id")))),
            ("Fail" = (operation_id = "fail", parameters(("id" = "$response.body#/job_id"), ("lease" = "$response.body#/lease_id")))),
            ("Heartbeat" = (operation_id = "heartbeat", parameters(("id" = "$response.body#/job_id"), ("lease" = "$response.body#/lease_id")))),
            ("Progress" = (operation_id = "progress", parameters(("id" = "$response.body#/job_id"), ("lease" = "$response.body#/lease_id")))),
        )),
        (status = 204, description = "No job came within `wait`"),
        (status = 400, description = "Malformed queue, wait or max", body = openapi::Error),
        (status = 503, description = "Shutting down, too many long-polling workers, or the store is unusable", body = openapi::Error, headers(("Retry-After" = String))),
    ),
)]
pub async fn poll(
    State(st): State<AppState>,
    peer: Option<Extension<Peer>>,
    params: Params,
) -> ApiResult<Response> {
    let asked = Instant::now();
    let (req, max) = poll_request(&params)?;
    let jobs = match max {
        None => st.broker.poll(req).await?.into_iter().collect(),
        Some(max) => st.broker.poll_many(req, max).await?,
    };
    handout(&st, peer, jobs, max.is_some(), asked).await
}

/// A worker's call about a job it holds: the job, the query, and the
/// fencing token (`?lease=` or `X-Lease-Id`). Read from the request's parts:
/// a `HeaderMap` argument would copy every header of the request.
pub struct Fenced {
    id: JobId,
    params: Params,
    lease: Option<LeaseId>,
}

impl<S: Send + Sync> FromRequestParts<S> for Fenced {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let PathId(id) = PathId::from_request_parts(parts, state).await?;
        let params = Params::from_request_parts(parts, state).await?;
        let lease = lease(&params, &parts.headers)?;
        Ok(Fenced { id, params, lease })
    }
}

/// The fencing token: `?lease=` or `X-Lease-Id`.
pub(super) fn lease(params: &Params, headers: &HeaderMap) -> ApiResult<Option<LeaseId>> {
    let raw = match params.get("lease") {
        Some(v) => Some(v),
        None => header_str(headers, "x-lease-id")?,
    };
    raw.map(|v| {
        super::trim_ws(v)
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("malformed lease id {v:?}: expected a UUID")))
    })
    .transpose()
}

/// Post a job's result (any bytes; empty is stored as `{}`)
///
/// `POST /api/worker/complete/{id}`: the body is the result.
#[utoipa::path(
    post,
    path = "/api/worker/complete/{id}",
    params(openapi::IdPath, openapi::LeaseQuery, openapi::LeaseHeader, openapi::NextQuery, openapi::PollQuery),
    responses(
        (status = 200, description = "Completed (or, with `next`, the next job as a poll answers)", body = openapi::CompletedOrNext, headers(("X-Job-Id" = String))),
        openapi::FinishAnswers,
    ),
)]
pub async fn complete(
    State(st): State<AppState>,
    peer: Option<Extension<Peer>>,
    Fenced { id, params, lease }: Fenced,
    Body(body): Body,
) -> ApiResult<Response> {
    let asked = Instant::now();
    let done = CompleteRequest {
        id,
        lease,
        result: body,
    };
    // The poll's parameters are checked with or without `next`: a
    // malformed one is refused before anything is applied.
    let (next, max) = poll_request(&params)?;
    if wants_next(&params)? {
        let (_, jobs) = st
            .broker
            .finish_and_next(Finish::Complete(done), next, max.unwrap_or(1))
            .await?;
        return handout(&st, peer, jobs, max.is_some(), asked).await;
    }
    st.broker.complete(done).await?;
    let body = encode::Obj::with_capacity(80)
        .str("message", "Job completed")
        .id("job_id", &id)
        .finish();
    Ok(job_json(StatusCode::OK, id, body))
}

#[derive(Deserialize)]
struct FailBody {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    retry: Option<bool>,
}

/// Report a failure (retried while attempts remain, unless `retry` is false)
///
/// `POST /api/worker/fail/{id}` with `{"error": "...", "retry": true}`.
#[utoipa::path(
    post,
    path = "/api/worker/fail/{id}",
    params(openapi::IdPath, openapi::LeaseQuery, openapi::LeaseHeader, openapi::NextQuery, openapi::PollQuery),
    request_body(content = openapi::FailReport, description = "`{\"error\": ..., \"retry\": ...}`; an empty body counts as `{}`"),
    responses(
        (status = 200, description = "Recorded (or, with `next`, the next job as a poll answers)", body = openapi::FailedOrNext, headers(("X-Job-Id" = String))),
        openapi::FinishAnswers,
    ),
)]
pub async fn fail(
    State(st): State<AppState>,
    peer: Option<Extension<Peer>>,
    Fenced { id, params, lease }: Fenced,
    Body(body): Body,
) -> ApiResult<Response> {
    let asked = Instant::now();
    let parsed: FailBody = if body.iter().all(u8::is_ascii_whitespace) {
        FailBody {
            error: None,
            retry: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "fail body must be a JSON object like {{\"error\": \"...\", \"retry\": true}}: {e}"
            ))
        })?
    };
    let error = match parsed.error {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    let failed = FailRequest {
        id,
        lease,
        error,
        retry: parsed.retry,
    };
    // The poll's parameters are checked with or without `next`: a
    // malformed one is refused before anything is applied.
    let (next, max) = poll_request(&params)?;
    if wants_next(&params)? {
        let (_, jobs) = st
            .broker
            .finish_and_next(Finish::Fail(failed), next, max.unwrap_or(1))
            .await?;
        return handout(&st, peer, jobs, max.is_some(), asked).await;
    }
    let job = st.broker.fail(failed).await?;
    let body = encode::Obj::with_capacity(80)
        .id("job_id", &id)
        .str("status", job.status.as_str())
        .num("attempts", job.attempts)
        .finish();
    Ok(job_json(StatusCode::OK, id, body))
}

/// Extend the lease
#[utoipa::path(
    post,
    path = "/api/worker/heartbeat/{id}",
    params(openapi::IdPath, openapi::LeaseQuery, openapi::LeaseHeader),
    responses(
        (status = 200, description = "Extended", body = openapi::HeartbeatDone, headers(("X-Job-Id" = String))),
        openapi::LeaseCallRefusals,
        (status = 409, description = "No longer this worker's job: stop working on it", body = openapi::Error, headers(("X-Job-Id" = String))),
    ),
)]
pub async fn heartbeat(
    State(st): State<AppState>,
    Fenced { id, lease, .. }: Fenced,
) -> ApiResult<Response> {
    let job = st.broker.heartbeat(HeartbeatRequest { id, lease }).await?;
    let body = encode::Obj::with_capacity(96)
        .id("job_id", &id)
        .time("lease_expires_at", job.lease_expires_at)
        .finish();
    Ok(job_json(StatusCode::OK, id, body))
}

/// Send a progress event to the job's streaming clients (extends the lease)
///
/// `POST /api/worker/progress/{id}`: one progress event (any body) for the
/// job's streaming clients; fenced and extending the lease like a heartbeat.
#[utoipa::path(
    post,
    path = "/api/worker/progress/{id}",
    params(openapi::IdPath, openapi::LeaseQuery, openapi::LeaseHeader),
    responses(
        (status = 200, description = "Sent; the lease is extended", body = openapi::ProgressDone, headers(("X-Job-Id" = String))),
        openapi::LeaseCallRefusals,
        (status = 409, description = "Not running, or no longer this worker's job: stop working on it", body = openapi::Error, headers(("X-Job-Id" = String))),
        (status = 413, description = "An event over 64 KiB", body = openapi::Error),
    ),
)]
pub async fn progress(
    State(st): State<AppState>,
    Fenced { id, lease, .. }: Fenced,
    Body(body): Body,
) -> ApiResult<Response> {
    let (job, seq) = st
        .broker
        .progress(ProgressRequest {
            id,
            lease,
            data: body,
        })
        .await?;
    let body = encode::Obj::with_capacity(112)
        .id("job_id", &id)
        .num("seq", seq)
        .time("lease_expires_at", job.lease_expires_at)
        .finish();
    Ok(job_json(StatusCode::OK, id, body))
}
