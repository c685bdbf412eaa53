//! Admin endpoints and `/health`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{encode, job_json, json, ApiError, ApiResult, AppState, Params};
use crate::broker::ListRequest;
use crate::job::Status;

/// `GET /api/admin/stats`.
pub async fn stats(State(st): State<AppState>) -> ApiResult<Response> {
    let s = st.broker.stats().await?;
    Ok(json(StatusCode::OK, encode::stats(&s)))
}

/// `DELETE /api/admin/clear[?queue=q]`.
pub async fn clear(State(st): State<AppState>, params: Params) -> ApiResult<Response> {
    let queue = params.queue("queue")?;
    let n = st.broker.clear(queue.as_ref()).await?;
    let body = encode::Obj::with_capacity(64)
        .str("message", "Queue cleared successfully")
        .num("cancelled", n)
        .finish();
    Ok(json(StatusCode::OK, body))
}

/// `GET /api/admin/next[?queue=a,b]`: peek.
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

/// `GET /api/admin/jobs?status=&queue=&limit=`.
pub async fn jobs(State(st): State<AppState>, params: Params) -> ApiResult<Response> {
    let status = params
        .get("status")
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<Status>().map_err(ApiError::BadRequest))
        .transpose()?;
    let limit = match params.get("limit") {
        None => None,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "bad limit {v:?}: expected a positive integer"
                )))
            }
        },
    };
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

/// `GET /health`.
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
