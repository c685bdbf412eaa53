//! Client endpoints: submit (sync and async), read, cancel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::{
    encode, header_str, job_json, parse_secs, ApiError, ApiResult, AppState, Body, Params, PathId,
};
use crate::broker::{Broker, Submit, WaitOutcome};
use crate::job::{Idempotency, Job, JobId, NewJob, Queue, Status, Timestamp};

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A parsed submit request.
struct SubmitRequest {
    job: NewJob,
    /// `Some(None)`: wait forever; `None`: the server default.
    wait: Option<Option<Duration>>,
}

fn parse_submit(
    params: &Params,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> ApiResult<SubmitRequest> {
    let queue = params.queue("queue")?.unwrap_or_else(Queue::default_queue);
    let priority = match params.get("priority") {
        None => 0,
        Some(v) => v.trim().parse::<i32>().map_err(|_| {
            ApiError::BadRequest(format!(
                "bad priority {v:?}: expected an integer between -2147483648 and 2147483647"
            ))
        })?,
    };
    // `timeout` wins over `Prefer: wait=N`; 0 means wait forever.
    let wait = match params.secs("timeout")? {
        Some(t) => Some(t),
        None => prefer_wait(headers)?,
    }
    .map(|t| (!t.is_zero()).then_some(t));
    let idempotency = match header_str(headers, "idempotency-key")? {
        None => None,
        Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY => {
            return Err(ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
            )))
        }
        Some(k) => {
            let mut h = Sha256::new();
            h.update(queue.as_str().as_bytes());
            h.update([0]);
            h.update(&body);
            Some(Idempotency {
                key: k.to_owned(),
                fingerprint: h.finalize().into(),
            })
        }
    };
    Ok(SubmitRequest {
        job: NewJob {
            id: JobId::new(),
            queue,
            headers: super::worker_headers(headers),
            payload: body,
            priority,
            created_at: Timestamp::now(),
            idempotency,
        },
        wait,
    })
}

/// `Prefer: wait=N` (RFC 7240), possibly among other preferences.
fn prefer_wait(headers: &HeaderMap) -> ApiResult<Option<Duration>> {
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

fn location(id: JobId) -> String {
    format!("/api/jobs/{id}")
}

/// `202` with `Location`, for a job that goes on without the client.
fn accepted(job: &Job) -> Response {
    let loc = location(job.id);
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

/// Wraps a client's wait: cancels a still-pending job if the wait is
/// dropped (the client disconnected) before it ended. The wait, and with
/// it the client's own registration as a waiter, is dropped first, so the
/// broker sees only the clients that still wait.
struct AbandonGuard<F> {
    broker: Broker,
    id: JobId,
    armed: bool,
    wait: Option<Pin<Box<F>>>,
}

impl<F: Future> Future for AbandonGuard<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let wait = this.wait.as_mut().expect("polled after completion");
        let out = std::task::ready!(wait.as_mut().poll(cx));
        this.armed = false;
        this.wait = None;
        Poll::Ready(out)
    }
}

impl<F> Drop for AbandonGuard<F> {
    fn drop(&mut self) {
        self.wait = None;
        if self.armed {
            let (broker, id) = (self.broker.clone(), self.id);
            tokio::spawn(async move { broker.abandon(id).await });
        }
    }
}

/// `POST /api/submit`: submit and wait for the result.
pub async fn submit(
    State(st): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let req = parse_submit(&params, &headers, body)?;
    let wait = req.wait.unwrap_or(st.broker.config().wait_timeout);
    let sub = st
        .broker
        .submit(Submit {
            job: req.job,
            wait: true,
        })
        .await?;
    let id = sub.job.id;
    let Some(waiter) = sub.waiter else {
        return finished(&sub.job);
    };
    if sub.job.status.is_ended() {
        return finished(&sub.job);
    }
    let outcome = AbandonGuard {
        broker: st.broker.clone(),
        id,
        armed: sub.created,
        wait: Some(Box::pin(st.broker.wait(waiter, wait))),
    }
    .await;
    match outcome.map_err(ApiError::for_job(id))? {
        WaitOutcome::Ended(job) => finished(&job),
        WaitOutcome::TimedOut => {
            let rec = st
                .broker
                .get(id, None)
                .await
                .map_err(ApiError::for_job(id))?;
            if rec.job.status.is_ended() {
                finished(&rec.job)
            } else {
                Ok(accepted(&rec.job))
            }
        }
        WaitOutcome::ShuttingDown => Err(ApiError::ShuttingDown(Some(id))),
        WaitOutcome::Gone => Err(ApiError::JobCancelled(id)),
    }
}

/// `POST /api/jobs`: submit without waiting.
pub async fn submit_async(
    State(st): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let req = parse_submit(&params, &headers, body)?;
    let sub = st
        .broker
        .submit(Submit {
            job: req.job,
            wait: false,
        })
        .await?;
    Ok(accepted(&sub.job))
}

/// `GET /api/jobs/{id}[?wait=N]`.
pub async fn get_job(
    State(st): State<AppState>,
    PathId(id): PathId,
    params: Params,
) -> ApiResult<Response> {
    let wait = params.secs("wait")?.filter(|w| !w.is_zero());
    let rec = st
        .broker
        .get(id, wait)
        .await
        .map_err(ApiError::for_job(id))?;
    let body = encode::job_view(&rec.job, rec.position).finish();
    Ok(job_json(StatusCode::OK, id, body))
}

/// `DELETE /api/jobs/{id}`: cancel.
pub async fn cancel(State(st): State<AppState>, PathId(id): PathId) -> ApiResult<Response> {
    let job = st.broker.cancel(id).await.map_err(ApiError::for_job(id))?;
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
