//! Client endpoints: submit (sync and async), read, cancel.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use super::{
    encode, header_str, job_json, openapi, parse_secs, ApiError, ApiResult, AppState, Body, Params,
    PathId,
};
use crate::broker::{SubmitRequest, SyncOutcome, WaitFor};
use crate::job::{Job, Status};

/// A parsed submit request and how long its client waits.
pub(super) fn parse_submit(
    params: &Params,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> ApiResult<(SubmitRequest, WaitFor)> {
    let priority = params
        .get("priority")
        .map(|v| {
            super::trim_ws(v).parse::<i32>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "bad priority {v:?}: expected an integer between -2147483648 and 2147483647"
                ))
            })
        })
        .transpose()?;
    // `timeout` wins over `Prefer: wait=N`; 0 means wait forever.
    let wait = match params.secs("timeout")? {
        Some(t) => Some(t),
        None => prefer_wait(headers)?,
    };
    let req = SubmitRequest {
        queue: params.queue("queue")?,
        headers: super::worker_headers(headers),
        payload: body,
        priority,
        idempotency_key: header_str(headers, "idempotency-key")?.map(str::to_owned),
    };
    Ok((req, WaitFor::from_secs(wait)))
}

/// `Prefer: wait=N` (RFC 7240), possibly among other preferences.
pub(super) fn prefer_wait(headers: &HeaderMap) -> ApiResult<Option<Duration>> {
    for value in headers.get_all("prefer") {
        let v = value
            .to_str()
            .map_err(|_| ApiError::BadRequest("header Prefer is not valid visible ASCII".into()))?;
        for pref in v.split([',', ';']) {
            let mut kv = pref.splitn(2, '=');
            if kv
                .next()
                .map(str::trim)
                .is_some_and(|k| k.eq_ignore_ascii_case("wait"))
            {
                let raw = kv.next().unwrap_or("").trim().trim_matches('"');
                return parse_secs("Prefer: wait", raw).map(Some);
            }
        }
    }
    Ok(None)
}

/// `202` with `Location`, for a job that goes on without the client.
fn accepted(job: &Job) -> Response {
    let loc = format!("/api/jobs/{}", job.id);
    let mut resp = job_json(StatusCode::ACCEPTED, job.id, encode::accepted(job, &loc));
    if let Ok(v) = HeaderValue::from_str(&loc) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The answer to a waiting client for a job that ended.
fn finished(job: &Job) -> ApiResult<Response> {
    match ApiError::for_ended(job) {
        Some(err) => Err(err),
        None => Ok(job_json(StatusCode::OK, job.id, encode::submit_done(job))),
    }
}

/// `POST /api/submit`: submit and wait for the result. A client that goes
/// away drops this future, which cancels a job no worker has yet.
#[utoipa::path(
    post,
    path = "/api/submit",
    tag = "client",
    summary = "Submit a job and wait for its result",
    params(openapi::SubmitQuery, openapi::SubmitHeaders),
    responses(
        (status = 200, description = "A worker completed the job: its result", body = openapi::SubmitDone, headers(("X-Job-Id" = String))),
        (status = 202, description = "The wait ran out; the job goes on", body = openapi::Accepted, headers(("X-Job-Id" = String), ("Location" = String)),
        links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")))),
            ("CancelJob" = (operation_id = "cancel", parameters(("id" = "$response.body#/job_id")))),
            ("JobDetail" = (operation_id = "job_detail", parameters(("id" = "$response.body#/job_id")))),
        )),
        (status = 400, description = "Malformed query value or header", body = openapi::Error),
        (status = 410, description = "The job was cancelled (or forgotten) while waited for", body = openapi::Error, headers(("X-Job-Id" = String))),
        (status = 413, description = "Body over --max-body", body = openapi::Error),
        (status = 422, description = "The Idempotency-Key belongs to another body or queue", body = openapi::Error),
        (status = 502, description = "The job failed", body = openapi::JobFailedError, headers(("X-Job-Id" = String))),
        (status = 503, description = "Queue full, store unusable, shutting down, too many waiting clients", body = openapi::Error, headers(("Retry-After" = String))),
    ),
)]
pub async fn submit(
    State(st): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let (req, wait) = parse_submit(&params, &headers, body)?;
    match st.broker.submit_and_wait(req, wait).await? {
        SyncOutcome::Ended(job) => finished(&job),
        SyncOutcome::Accepted(job) => Ok(accepted(&job)),
        SyncOutcome::Gone(id) => Err(ApiError::JobCancelled(id)),
    }
}

/// `POST /api/jobs`: submit without waiting.
#[utoipa::path(
    post,
    path = "/api/jobs",
    tag = "client",
    summary = "Submit a job without waiting",
    params(openapi::SubmitQuery, openapi::SubmitHeaders),
    responses(
        (status = 202, description = "Stored (or, by idempotency key, the existing job)", body = openapi::Accepted, headers(("X-Job-Id" = String), ("Location" = String)),
        links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")))),
            ("CancelJob" = (operation_id = "cancel", parameters(("id" = "$response.body#/job_id")))),
            ("JobDetail" = (operation_id = "job_detail", parameters(("id" = "$response.body#/job_id")))),
        )),
        (status = 400, description = "Malformed query value or header", body = openapi::Error),
        (status = 413, description = "Body over --max-body", body = openapi::Error),
        (status = 422, description = "The Idempotency-Key belongs to another body or queue", body = openapi::Error),
        (status = 503, description = "Queue full, store unusable, or shutting down", body = openapi::Error, headers(("Retry-After" = String))),
    ),
)]
pub async fn submit_async(
    State(st): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let (req, _) = parse_submit(&params, &headers, body)?;
    Ok(accepted(&st.broker.enqueue(req).await?))
}

/// `GET /api/jobs/{id}[?wait=N]`.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "client",
    summary = "Read a job",
    params(
        openapi::IdPath,
        ("wait" = Option<f64>, Query, minimum = 0, description = "Hold up to N seconds until the job has ended (default 0; above 3600 counts as 3600)"),
    ),
    responses(
        (status = 200, description = "The job as it stands", body = openapi::JobView, headers(("X-Job-Id" = String))),
        (status = 400, description = "Malformed id or wait", body = openapi::Error),
        (status = 404, description = "Unknown or forgotten job", body = openapi::Error, headers(("X-Job-Id" = String))),
        (status = 503, description = "Too many waiting clients, or the store is unusable", body = openapi::Error, headers(("Retry-After" = String))),
    ),
)]
pub async fn get_job(
    State(st): State<AppState>,
    PathId(id): PathId,
    params: Params,
) -> ApiResult<Response> {
    let wait = params.secs("wait")?.unwrap_or_default();
    let rec = st.broker.get(id, wait).await?;
    let body = encode::job_view(&rec.job, rec.position).finish();
    Ok(job_json(StatusCode::OK, id, body))
}

/// `DELETE /api/jobs/{id}`: cancel.
#[utoipa::path(
    delete,
    path = "/api/jobs/{id}",
    tag = "client",
    summary = "Cancel a pending or running job",
    params(openapi::IdPath),
    responses(
        (status = 200, description = "Cancelled: the job view", body = openapi::JobView, headers(("X-Job-Id" = String))),
        (status = 400, description = "Malformed id", body = openapi::Error),
        (status = 404, description = "Unknown or forgotten job", body = openapi::Error, headers(("X-Job-Id" = String))),
        (status = 409, description = "The job has already ended", body = openapi::Error, headers(("X-Job-Id" = String))),
    ),
)]
pub async fn cancel(State(st): State<AppState>, PathId(id): PathId) -> ApiResult<Response> {
    let job = st.broker.cancel(id).await?;
    debug_assert_eq!(job.status, Status::Cancelled);
    Ok(job_json(
        StatusCode::OK,
        id,
        encode::job_view(&job, None).finish(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(v: &'static str) -> ApiResult<Option<Duration>> {
        let mut h = HeaderMap::new();
        h.insert("prefer", HeaderValue::from_static(v));
        prefer_wait(&h)
    }

    #[test]
    fn prefer_wait_is_found_among_other_preferences() {
        assert_eq!(prefer("wait=5").unwrap(), Some(Duration::from_secs(5)));
        assert_eq!(
            prefer("respond-async, wait=2").unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            prefer("handling=lenient; Wait = 3").unwrap(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(prefer("return=minimal").unwrap(), None);
        assert!(prefer("wait=soon").is_err());
    }
}
