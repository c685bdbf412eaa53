//! Admin endpoints and `/health`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{encode, job_json, json, openapi, ApiError, ApiResult, AppState, Params};
use crate::broker::ListRequest;
use crate::job::Status;

/// Job counts by status and queue
#[utoipa::path(
    get,
    path = "/api/admin/stats",
    responses((status = 200, description = "The counters", body = openapi::Stats)),
)]
pub async fn stats(State(st): State<AppState>) -> ApiResult<Response> {
    let s = st.broker.stats().await?;
    Ok(json(StatusCode::OK, encode::stats(&s)))
}

/// Cancel every pending and running job and forget the ended ones
#[utoipa::path(
    delete,
    path = "/api/admin/clear",
    params(("queue" = Option<String>, Query, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "Only this queue")),
    responses(
        (status = 200, description = "Cleared", body = openapi::Cleared),
        (status = 400, description = "Malformed queue", body = openapi::Error),
    ),
)]
pub async fn clear(State(st): State<AppState>, params: Params) -> ApiResult<Response> {
    let queue = params.queue("queue")?;
    let n = st.broker.clear(queue.as_ref()).await?;
    let body = encode::Obj::with_capacity(64)
        .str("message", "Queue cleared successfully")
        .num("cancelled", n)
        .finish();
    Ok(json(StatusCode::OK, body))
}

/// The job a poll would get next, without taking it
#[utoipa::path(
    get,
    path = "/api/admin/next",
    params(("queue" = Option<String>, Query, pattern = "^[ \\t\\r\\n]*[A-Za-z0-9._:-]{1,128}[ \\t\\r\\n]*(,[ \\t\\r\\n]*[A-Za-z0-9._:-]{1,128}[ \\t\\r\\n]*)*$", description = "`a,b,…` as for a poll (default `default`)")),
    responses(
        (status = 200, description = "The next job", body = openapi::JobWithInput, headers(("X-Job-Id" = String))),
        (status = 204, description = "None is pending"),
        (status = 400, description = "Malformed queue", body = openapi::Error),
    ),
)]
pub async fn next(State(st): State<AppState>, params: Params) -> ApiResult<Response> {
    let queues = params.queues("queue")?;
    match st.broker.peek(&queues).await? {
        Some(job) => Ok(job_json(
            StatusCode::OK,
            job.id,
            encode::job_with_input(&job, Some(0)),
        )),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// List jobs, newest first
#[utoipa::path(
    get,
    path = "/api/admin/jobs",
    params(openapi::ListQuery),
    responses(
        (status = 200, description = "The jobs", body = openapi::JobList),
        (status = 400, description = "Malformed status, queue or limit", body = openapi::Error),
    ),
)]
pub async fn jobs(State(st): State<AppState>, params: Params) -> ApiResult<Response> {
    let status = params
        .get("status")
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<Status>().map_err(ApiError::BadRequest))
        .transpose()?;
    let limit = params.count("limit")?;
    let jobs = st
        .broker
        .list(ListRequest {
            status,
            queue: params.queue("queue")?,
            limit,
        })
        .await?;
    let mut body = Vec::with_capacity(64 + 256 * jobs.len());
    body.extend_from_slice(b"{\"jobs\":[");
    for (i, job) in jobs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&encode::job_view(job, None).finish());
    }
    body.extend_from_slice(b"]}");
    Ok(json(StatusCode::OK, body))
}

/// Liveness
#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "`{\"status\": \"ok\"}`", body = openapi::Health),
        (status = 503, description = "The store cannot be written, or the server is shutting down", body = openapi::Health),
    ),
)]
pub async fn health(State(st): State<AppState>) -> Response {
    if st.broker.healthy().await {
        json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
    } else {
        let body = encode::Obj::with_capacity(64)
            .str("status", "unavailable")
            .str(
                "error",
                if st.broker.is_stopping() {
                    "shutting down"
                } else {
                    "storage is unavailable"
                },
            )
            .finish();
        json(StatusCode::SERVICE_UNAVAILABLE, body)
    }
}
