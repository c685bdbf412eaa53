//! Client endpoints: submit (sync and async), read, cancel.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::{
    encode, header_str, job_json, openapi, parse_secs, ApiError, ApiResult, AppState, Body, Params,
    PathId,
};
use crate::broker::{JobStream, StreamEnd, StreamItem, SubmitRequest, SyncOutcome, WaitFor};
use crate::job::{Job, JobId, Status};

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

/// Submit a job and wait for its result
///
/// `POST /api/submit`: submit and wait for the result. A client that goes
/// away cancels its job if no worker has it yet. With
/// `Accept: text/event-stream` the answer is the job's event stream.
#[utoipa::path(
    post,
    path = "/api/submit",
    params(openapi::SubmitQuery, openapi::SubmitHeaders),
    responses(
        (status = 200, description = "A worker completed the job: its result; with `Accept: text/event-stream`, the job's events (`progress`, `gap`, then one of `result`, `failed`, `cancelled`, `accepted`)", headers(("X-Job-Id" = String)),
            content(
                (openapi::SubmitDone = "application/json"),
                (openapi::JobEvent = "text/event-stream"),
            )),
        (status = 202, description = "The wait ran out; the job goes on", body = openapi::Accepted, headers(("X-Job-Id" = String), ("Location" = String)),
        links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")))),
            ("CancelJob" = (operation_id = "cancel", parameters(("id" = "$response.body#/job_id")))),
            ("JobDetail" = (operation_id = "job_detail", parameters(("id" = "$response.body#/job_id")))),
            ("JobEvents" = (operation_id = "events", parameters(("id" = "$response.body#/job_id")))),
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
    let streaming = wants_events(&headers);
    // Not kept while the client waits: the header map (whose values also
    // pin the connection's read buffer) and the query are a part of what
    // each of up to `--max-waiting-clients` held requests costs.
    drop((params, headers));
    if streaming {
        let (job, events) = st.broker.submit_streaming(req, wait).await?;
        return Ok(event_stream(&st, job.id, events));
    }
    match st.broker.submit_and_wait(req, wait).await? {
        SyncOutcome::Ended(job) => finished(&job),
        SyncOutcome::Accepted(job) => Ok(accepted(&job)),
        SyncOutcome::Gone(id) => Err(ApiError::JobCancelled(id)),
    }
}

/// Submit a job without waiting
#[utoipa::path(
    post,
    path = "/api/jobs",
    params(openapi::SubmitQuery, openapi::SubmitHeaders),
    responses(
        (status = 202, description = "Stored (or, by idempotency key, the existing job)", body = openapi::Accepted, headers(("X-Job-Id" = String), ("Location" = String)),
        links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")))),
            ("CancelJob" = (operation_id = "cancel", parameters(("id" = "$response.body#/job_id")))),
            ("JobDetail" = (operation_id = "job_detail", parameters(("id" = "$response.body#/job_id")))),
            ("JobEvents" = (operation_id = "events", parameters(("id" = "$response.body#/job_id")))),
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

/// Read a job
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
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

/// Follow a job's progress events (Server-Sent Events)
///
/// `GET /api/jobs/{id}/events`: the job's progress events (after
/// `Last-Event-ID`, when given), then its outcome.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}/events",
    params(
        openapi::IdPath,
        ("wait" = Option<f64>, Query, minimum = 0, description = "End with `accepted` after N seconds if the job has not ended by then (default and most: 3600; 0: replay what is buffered, then the outcome or `accepted` at once)"),
        openapi::EventsHeaders,
    ),
    responses(
        (status = 200, description = "The job's buffered and live progress events, then one final event (`result`, `failed`, `cancelled`, or `accepted` once `wait` ran out)", content_type = "text/event-stream", body = openapi::JobEvent, headers(("X-Job-Id" = String))),
        (status = 400, description = "Malformed id, wait or Last-Event-ID", body = openapi::Error),
        (status = 404, description = "Unknown or forgotten job", body = openapi::Error, headers(("X-Job-Id" = String))),
        (status = 503, description = "Too many waiting clients, or the store is unusable", body = openapi::Error, headers(("Retry-After" = String))),
    ),
)]
pub async fn events(
    State(st): State<AppState>,
    PathId(id): PathId,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let wait = params.secs("wait")?;
    let after = match header_str(&headers, "last-event-id")?.map(super::trim_ws) {
        None | Some("") => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "bad Last-Event-ID {v:?}: expected the id of a progress event (a number)"
            ))
        })?,
    };
    let (_, events) = st.broker.job_events(id, after, wait).await?;
    Ok(event_stream(&st, id, events))
}

/// Whether the client asked for Server-Sent Events (`Accept: text/event-stream`).
fn wants_events(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|m| {
                m.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            })
        })
    })
}

/// A job's events as Server-Sent Events: `progress` (with `id: <seq>`),
/// `gap`, then one final event carrying the body the plain answer would
/// have had, with keep-alive comments while it is quiet.
fn event_stream(st: &AppState, id: JobId, events: JobStream) -> Response {
    let sse = events.map(|item| Ok::<_, Infallible>(sse_event(item)));
    let mut resp = Sse::new(sse)
        .keep_alive(KeepAlive::new().interval(st.sse_keepalive))
        .into_response();
    let h = resp.headers_mut();
    let mut buf = [0u8; 36];
    if let Ok(v) = HeaderValue::from_str(id.encode(&mut buf)) {
        h.insert(super::X_JOB_ID, v);
    }
    // Proxies must pass events on as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// One stream item as an SSE event.
fn sse_event(item: StreamItem) -> Event {
    match item {
        StreamItem::Progress(p) => Event::default()
            .event("progress")
            .id(p.seq.to_string())
            .data(encode::value(&p.data)),
        StreamItem::Gap(lost) => Event::default()
            .event("gap")
            .data(format!("{{\"dropped\":{lost}}}")),
        StreamItem::End(end) => {
            let (kind, body) = match end {
                StreamEnd::Ended(job) => match ApiError::for_ended(&job) {
                    None => ("result", encode::submit_done(&job)),
                    Some(e @ ApiError::JobFailed { .. }) => ("failed", e.body()),
                    Some(e) => ("cancelled", e.body()),
                },
                StreamEnd::Accepted(id, status) => (
                    "accepted",
                    encode::accepted_as(&id, status, &format!("/api/jobs/{id}")),
                ),
                StreamEnd::Gone(id) => ("cancelled", ApiError::JobCancelled(id).body()),
            };
            Event::default()
                .event(kind)
                .data(String::from_utf8_lossy(&body))
        }
    }
}

/// Cancel a pending or running job
#[utoipa::path(
    delete,
    path = "/api/jobs/{id}",
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
