//! The operator's faces that are not the job API: `GET /metrics`
//! (Prometheus text), the dashboard page at `GET /` with its assets
//! (embedded in the binary: no CDN, works offline), and the admin data
//! calls only the dashboard needs: `GET /api/admin/events` (a snapshot each
//! second as Server-Sent Events) and `GET /api/admin/jobs/{id}` (a job with
//! its input and headers). Figures come from [`crate::metrics`]; this
//! module decides nothing about jobs.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};

use crate::api::encode::{self, encoding_of};
use crate::api::{job_json, ApiResult, AppState, PathId, RouteTable};
use crate::metrics;

/// A file served from the binary.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The asset `assets/<file>`, served at `/dashboard/<file>`.
macro_rules! asset {
    ($file:literal, $content_type:expr) => {
        Asset {
            path: concat!("/dashboard/", $file),
            content_type: $content_type,
            body: include_bytes!(concat!("assets/", $file)),
        }
    };
}

/// Every asset of the page, by URL path.
const ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("app.css", CSS),
    asset!("vendor/uplot/uPlot.iife.min.js", JS),
    asset!("vendor/uplot/uPlot.min.css", CSS),
    asset!("vendor/uplot/LICENSE", TEXT),
];

const INDEX: &[u8] = include_bytes!("assets/index.html");

/// The routes of this module, to merge into the API router.
pub fn routes() -> RouteTable {
    let mut r = RouteTable::default()
        .get("/", page_index)
        .get("/metrics", metrics_text)
        .get("/api/admin/events", events)
        .get("/api/admin/jobs/{id}", job_detail);
    for a in ASSETS {
        r = r.get(a.path, move || async move { page(a.body, a.content_type) });
    }
    r
}

/// Each asset's path and content type (for `/openapi.json`).
pub fn asset_paths() -> impl Iterator<Item = (&'static str, &'static str)> {
    ASSETS.iter().map(|a| (a.path, a.content_type))
}

/// The dashboard page (its data calls are admin calls)
#[utoipa::path(
    get,
    path = "/",
    responses((status = 200, description = "The page", content_type = "text/html; charset=utf-8", body = String)),
)]
pub async fn page_index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

fn page(body: &'static [u8], content_type: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary: revalidate on every load.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Prometheus metrics (text format 0.0.4)
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)),
)]
pub async fn metrics_text() -> Response {
    let mut resp = (StatusCode::OK, metrics::render()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    resp
}

/// The dashboard's figures as Server-Sent Events (`history`, then a `snapshot` each second)
///
/// `GET /api/admin/events`: `history` (the ring, oldest first) at once,
/// then a `snapshot` each second, and a keep-alive comment every 15 s,
/// until the client goes away or shutdown begins.
#[utoipa::path(
    get,
    path = "/api/admin/events",
    responses((status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String)),
)]
pub async fn events(
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = st.dash.subscribe();
    // The current snapshot (if any) follows the history at once, so a page
    // shows figures without waiting a second.
    rx.mark_changed();
    let first = Event::default()
        .event("history")
        .data(st.dash.history_json());
    let broker = st.broker.clone();
    let updates = stream::unfold(rx, move |mut rx| {
        let broker = broker.clone();
        async move {
            loop {
                rx.changed().await.ok()?;
                // Ends with shutdown, so that open dashboards do not hold the drain.
                if broker.is_stopping() {
                    return None;
                }
                let snap = rx.borrow_and_update().clone();
                if let Some(json) = snap {
                    let ev = Event::default().event("snapshot").data(&*json);
                    return Some((Ok(ev), rx));
                }
            }
        }
    });
    Sse::new(stream::once(async move { Ok(first) }).chain(updates))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A job with its input, headers and lease (the dashboard's detail view)
///
/// `GET /api/admin/jobs/{id}`: the job view plus what the detail view
/// shows: its input (while it is kept: an ended job drops it), headers,
/// lease and how each payload is encoded.
#[utoipa::path(
    get,
    path = "/api/admin/jobs/{id}",
    params(crate::api::openapi::IdPath),
    responses(
        (status = 200, description = "The job", body = crate::api::openapi::JobDetail, headers(("X-Job-Id" = String, description = "The job's id"))),
        (status = 400, description = "Malformed id", body = crate::api::openapi::Error),
        (status = 404, description = "Unknown or forgotten job", body = crate::api::openapi::Error, headers(("X-Job-Id" = String, description = "The job's id"))),
    ),
)]
pub async fn job_detail(State(st): State<AppState>, PathId(id): PathId) -> ApiResult<Response> {
    let rec = st.broker.get(id, Duration::ZERO).await?;
    let job = &rec.job;
    let mut o = encode::job_view(job, rec.position).time("lease_expires_at", job.lease_expires_at);
    if let Some(r) = &job.result {
        o = o.str("result_format", encoding_of(r));
    }
    let kept = !job.payload.is_empty() || !job.status.is_ended();
    o = o.raw("input_kept", if kept { b"true" } else { b"false" });
    if kept {
        o = o
            .payload("input", &job.payload)
            .str("input_format", encoding_of(&job.payload))
            .num("input_bytes", job.payload.len());
    }
    if !job.headers.is_empty() {
        o = o.raw("headers", &job.headers);
    }
    Ok(job_json(StatusCode::OK, id, o.finish()))
}
