//! Worker endpoints: poll, complete, fail, heartbeat.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

use super::{
    encode, header_str, job_json, ApiError, ApiResult, AppState, Body, Params, PathId, PeerSocket,
};
use crate::broker::{CompleteRequest, FailRequest, HeartbeatRequest, PollRequest};
use crate::job::LeaseId;

/// `GET /api/worker/poll[?queue=a,b][&wait=N]`.
pub async fn poll(
    State(st): State<AppState>,
    peer: Option<Extension<PeerSocket>>,
    params: Params,
) -> ApiResult<Response> {
    let req = PollRequest {
        queues: params.queues("queue")?,
        wait: params.secs("wait")?.unwrap_or_default(),
    };
    let Some(job) = st.broker.poll(req).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    // A worker that went away during its long-poll would leave the job
    // leased to nobody until the lease runs out: hand it back instead.
    if let (Some(Extension(peer)), Some(lease)) = (peer, job.lease_id) {
        if peer.is_closed() {
            tracing::debug!(job.id = %job.id, "poller went away; hand-out undone");
            st.broker.release(job.id, lease).await?;
            return Err(ApiError::BadRequest("the connection closed".into()));
        }
    }
    Ok(job_json(StatusCode::OK, job.id, encode::handout(&job)))
}

/// The fencing token: `?lease=` or `X-Lease-Id`.
fn lease(params: &Params, headers: &HeaderMap) -> ApiResult<Option<LeaseId>> {
    let raw = match params.get("lease") {
        Some(v) => Some(v),
        None => header_str(headers, "x-lease-id")?,
    };
    raw.map(|v| {
        v.trim()
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("malformed lease id {v:?}: expected a UUID")))
    })
    .transpose()
}

/// `POST /api/worker/complete/{id}`: the body is the result.
pub async fn complete(
    State(st): State<AppState>,
    PathId(id): PathId,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    st.broker
        .complete(CompleteRequest {
            id,
            lease: lease(&params, &headers)?,
            result: body,
        })
        .await?;
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

/// `POST /api/worker/fail/{id}` with `{"error": "...", "retry": true}`.
pub async fn fail(
    State(st): State<AppState>,
    PathId(id): PathId,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let lease = lease(&params, &headers)?;
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
    let job = st
        .broker
        .fail(FailRequest {
            id,
            lease,
            error,
            retry: parsed.retry,
        })
        .await?;
    let body = encode::Obj::with_capacity(80)
        .id("job_id", &id)
        .str("status", job.status.as_str())
        .num("attempts", job.attempts)
        .finish();
    Ok(job_json(StatusCode::OK, id, body))
}

/// `POST /api/worker/heartbeat/{id}`: extend the lease.
pub async fn heartbeat(
    State(st): State<AppState>,
    PathId(id): PathId,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let job = st
        .broker
        .heartbeat(HeartbeatRequest {
            id,
            lease: lease(&params, &headers)?,
        })
        .await?;
    let body = encode::Obj::with_capacity(96)
        .id("job_id", &id)
        .time("lease_expires_at", job.lease_expires_at)
        .finish();
    Ok(job_json(StatusCode::OK, id, body))
}
