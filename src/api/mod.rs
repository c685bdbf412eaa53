//! The HTTP API (docs/api.md): routing, request parsing and answer shapes.
//! Handlers only translate between HTTP and [`Broker`] calls; every error
//! becomes an [`ApiError`], whose `IntoResponse` picks the status code.

pub mod admin;
pub mod auth;
pub mod encode;
pub mod error;
pub mod jobs;
pub mod limits;
pub mod openapi;
#[cfg(test)]
mod proptests;
pub mod workers;

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use bytes::Bytes;

use crate::broker::{Broker, MAX_WAIT};
use crate::job::{is_private_header, JobId, Queue};
pub use error::{ApiError, ApiResult};

/// The header naming the job an answer is about.
pub const X_JOB_ID: HeaderName = HeaderName::from_static("x-job-id");

/// The connection a request came on, put on every request by the accept
/// loop (one extension for both, as each costs a map insert per request):
/// the peer's address (admin endpoints answer loopback peers without a
/// token) and the socket's raw descriptor, open for as long as the request
/// is being handled, to learn whether the peer is still there.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The peer's address.
    pub addr: std::net::SocketAddr,
    /// The connection's socket.
    pub fd: std::os::fd::RawFd,
}

impl Peer {
    /// Whether the peer has closed or reset the connection: a read would see
    /// end-of-file or an error. Reads nothing (a pipelined request stays).
    pub fn is_closed(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: the descriptor belongs to the connection that is serving
        // this request, so it is open; MSG_PEEK leaves the data in place.
        let n = unsafe {
            libc::recv(
                self.fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true,
            n if n > 0 => false,
            _ => !matches!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        }
    }
}

/// Shared state of all handlers: one `Arc`, as axum clones the state for
/// every request (six reference counts shared by every core, otherwise).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of one server.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    /// The job lifecycle.
    pub broker: Broker,
    /// `--max-body`, for the 413 message.
    pub max_body: usize,
    /// Role tokens, checked in front of every route ([`auth::require_role`]).
    pub auth: crate::auth::Auth,
    /// Caps on waiting clients and long-polling workers ([`limits::cap_waiting`]).
    pub caps: limits::Caps,
    /// This server's dashboard figures (the per-second ring).
    pub dash: crate::metrics::dash::Dash,
    /// `--sse-keepalive`: the comment interval of event streams.
    pub sse_keepalive: Duration,
}

/// The routes of the API, and a record of every (method, path) they serve,
/// so that `tests/openapi.rs` can hold the router and `/openapi.json` to
/// each other. `HEAD` is served for every `GET` route (by axum) and not
/// recorded.
pub struct RouteTable {
    router: Router<AppState>,
    served: Vec<(Method, &'static str)>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            router: Router::new(),
            served: Vec::new(),
        }
    }
}

impl RouteTable {
    fn add(mut self, method: Method, path: &'static str, mr: MethodRouter<AppState>) -> Self {
        self.served.push((method, path));
        // axum merges a second method router on the same path into the first.
        self.router = self.router.route(path, mr);
        self
    }

    /// `GET path` (and `HEAD`).
    pub fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::GET, path, axum::routing::get(h))
    }

    /// `POST path`.
    pub fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::POST, path, axum::routing::post(h))
    }

    /// `DELETE path`.
    pub fn delete<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::DELETE, path, axum::routing::delete(h))
    }

    /// `GET path` whose `HEAD` is refused (405) rather than served by the
    /// `GET` handler.
    pub fn get_without_head<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.add(
            Method::GET,
            path,
            axum::routing::get(h).head(|| async { ApiError::MethodNotAllowed }),
        )
    }

    /// Both tables' routes.
    pub fn merge(mut self, other: RouteTable) -> Self {
        self.served.extend(other.served);
        self.router = self.router.merge(other.router);
        self
    }

    /// Every (method, path) served, e.g. `("GET", "/api/jobs/{id}")`.
    pub fn served(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .served
            .iter()
            .map(|(m, p)| (m.as_str().to_owned(), (*p).to_owned()))
            .collect();
        v.sort();
        v
    }
}

/// Every route of docs/api.md.
pub fn routes() -> RouteTable {
    RouteTable::default()
        .post("/api/submit", jobs::submit)
        .post("/api/jobs", jobs::submit_async)
        .get("/api/jobs/{id}", jobs::get_job)
        .delete("/api/jobs/{id}", jobs::cancel)
        .get("/api/jobs/{id}/events", jobs::events)
        // A HEAD would hand out a job whose payload nobody receives (axum
        // answers HEAD with the GET handler unless told otherwise).
        .get_without_head("/api/worker/poll", workers::poll)
        .post("/api/worker/complete/{id}", workers::complete)
        .post("/api/worker/fail/{id}", workers::fail)
        .post("/api/worker/heartbeat/{id}", workers::heartbeat)
        .post("/api/worker/progress/{id}", workers::progress)
        .get("/api/admin/stats", admin::stats)
        .delete("/api/admin/clear", admin::clear)
        .get("/api/admin/next", admin::next)
        .get("/api/admin/jobs", admin::jobs)
        .get("/health", admin::health)
        .get("/openapi.json", openapi::openapi_json)
        .merge(crate::dashboard::routes())
}

/// All routes of docs/api.md, behind their guards.
pub fn router(state: AppState) -> Router {
    routes()
        .router
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(Front(state.clone()))
        .with_state(state)
}

/// Everything in front of the routes, as one hand-written layer (a `from_fn`
/// middleware costs a clone of the inner service, a `Next` and a boxed
/// future per request; three of them were ~10% of a job's instructions):
/// the request's span and duration (outermost, so that refusals are counted
/// and logged too), the role check, then the caps (a caller is
/// authenticated before it is counted against one).
/// (Holds the state, one `Arc`: axum clones a route's service per request.)
#[derive(Clone)]
struct Front(AppState);

impl<S> tower::Layer<S> for Front {
    type Service = FrontService<S>;

    fn layer(&self, inner: S) -> FrontService<S> {
        FrontService {
            front: self.clone(),
            inner,
        }
    }
}

/// A route behind [`Front`].
#[derive(Clone)]
struct FrontService<S> {
    front: Front,
    inner: S,
}

impl<S> tower::Service<Request> for FrontService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = FrontFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let tracked = crate::metrics::http::Tracked::begin(&req);
        let state = {
            let _in = tracked.span().enter();
            match auth::require_role(&self.front.0.auth, &req)
                .and_then(|()| limits::permit(&self.front.0.caps, &req))
            {
                Ok(permit) => FrontState::Running {
                    answer: self.inner.call(req),
                    permit,
                },
                Err(refused) => FrontState::Refused(Some(refused.into_response())),
            }
        };
        FrontFuture {
            tracked: Some(tracked),
            state,
        }
    }
}

/// The answer of a route behind [`Front`].
struct FrontFuture<F> {
    /// Taken when the answer is ready.
    tracked: Option<crate::metrics::http::Tracked>,
    state: FrontState<F>,
}

enum FrontState<F> {
    /// Refused before the route ran (taken when polled).
    Refused(Option<Response>),
    /// The route runs; the permit (if it waits) is held until its answer is sent.
    Running {
        answer: F,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
}

impl<F> Future for FrontFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let resp = match &mut this.state {
            FrontState::Refused(resp) => resp.take().expect("polled after its answer"),
            FrontState::Running { answer, permit } => {
                let _in = this.tracked.as_ref().map(|t| t.span().enter());
                let Ok(resp) = ready!(Pin::new(answer).poll(cx));
                match permit.take() {
                    Some(p) => limits::hold_until_sent(resp, p),
                    None => resp,
                }
            }
        };
        if let Some(t) = this.tracked.take() {
            t.end(&resp);
        }
        Poll::Ready(Ok(resp))
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON answer about job `id` (carries `X-Job-Id`).
pub fn job_json(status: StatusCode, id: JobId, body: Vec<u8>) -> Response {
    let mut resp = json(status, body);
    let mut buf = [0u8; 36];
    if let Ok(v) = HeaderValue::from_str(id.encode(&mut buf)) {
        resp.headers_mut().insert(X_JOB_ID, v);
    }
    resp
}

/// The request body, limited to `--max-body` (413 beyond).
///
/// The bytes are copied into an allocation of their own: a small body is a
/// slice of the connection's read buffer, and keeping the slice (as a job's
/// payload or result) would keep that whole buffer alive for as long.
/// (The limit is applied here rather than by axum's `DefaultBodyLimit`
/// layer: every body is read through this extractor, and that layer costs
/// an extension per request, the one that made the request's map grow.)
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limited = http_body_util::Limited::new(req.into_body(), state.max_body);
        match http_body_util::BodyExt::collect(limited).await {
            Ok(collected) => Ok(Body(Bytes::copy_from_slice(&collected.to_bytes()))),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(ApiError::TooLarge(state.max_body))
            }
            Err(e) => Err(ApiError::BadRequest(format!(
                "could not read the request body: {e}"
            ))),
        }
    }
}

/// The `{id}` path segment, parsed as a job id (400 if it is not a UUID).
pub struct PathId(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(format!("malformed path: {}", e.body_text())))?;
        raw.parse()
            .map(PathId)
            .map_err(|_| ApiError::BadRequest(format!("malformed job id {raw:?}: expected a UUID")))
    }
}

/// The query string as name/value pairs.
pub struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let pairs = parts
            .uri
            .query()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Params(pairs))
    }
}

impl Params {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name` as a number of seconds (`None` when absent).
    pub fn secs(&self, name: &str) -> ApiResult<Option<Duration>> {
        self.get(name).map(|v| parse_secs(name, v)).transpose()
    }

    /// `name` as a positive integer (`None` when absent). Any number of
    /// digits is accepted: one too large for `usize` counts as `usize::MAX`,
    /// since every count is clamped to a limit anyway.
    pub fn count(&self, name: &str) -> ApiResult<Option<usize>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let digits = trim_ws(v);
        let digits = digits.strip_prefix('+').unwrap_or(digits);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::BadRequest(format!(
                "bad {name} {v:?}: expected a positive integer"
            )));
        }
        match digits.parse::<usize>() {
            Ok(0) => Err(ApiError::BadRequest(format!(
                "bad {name} {v:?}: expected a positive integer"
            ))),
            Ok(n) => Ok(Some(n)),
            // Only digits, so the only failure left is overflow.
            Err(_) => Ok(Some(usize::MAX)),
        }
    }

    /// `name` as a list of queues (`a,b`); empty when absent (the broker's default).
    pub fn queues(&self, name: &str) -> ApiResult<Vec<Queue>> {
        let Some(v) = self.get(name) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Queue> = Vec::new();
        for part in v.split(',') {
            let q = Queue::parse(trim_ws(part))
                .map_err(|e| ApiError::BadRequest(format!("bad {name}: {e}")))?;
            if !out.contains(&q) {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// `name` as one queue name (`None` when absent).
    pub fn queue(&self, name: &str) -> ApiResult<Option<Queue>> {
        self.get(name)
            .map(|v| Queue::parse(v).map_err(|e| ApiError::BadRequest(format!("bad {name}: {e}"))))
            .transpose()
    }
}

/// `s` without surrounding whitespace as JSON counts it (space, tab, CR,
/// LF): query values may be padded, but `1\u{a0}` is not a number and
/// `a\u{a0}` not a queue name (Unicode's `trim` took both).
pub fn trim_ws(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\r', '\n'])
}

/// A non-negative number of seconds (fractions allowed), clamped to [`MAX_WAIT`].
pub fn parse_secs(name: &str, v: &str) -> ApiResult<Duration> {
    match trim_ws(v).parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => {
            let d = Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64()));
            // Below a nanosecond a positive value would round to zero,
            // which means "wait forever" to a submit.
            Ok(if s > 0.0 && d.is_zero() {
                Duration::from_nanos(1)
            } else {
                d
            })
        }
        _ => Err(ApiError::BadRequest(format!(
            "bad {name} {v:?}: expected a non-negative number of seconds"
        ))),
    }
}

/// A header's value as text (400 if it is not visible ASCII).
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::BadRequest(format!("header {name} is not valid visible ASCII"))
            })
        })
        .transpose()
}

/// The headers a worker sees, as a JSON object (`name: value`; repeated
/// headers joined with `, `).
pub fn worker_headers(headers: &HeaderMap) -> Bytes {
    let mut obj = encode::Obj::with_capacity(32 * headers.len());
    for name in headers.keys() {
        if is_private_header(name.as_str()) {
            continue;
        }
        let mut values = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        let joined: Cow<'_, str> = match (values.next(), values.next()) {
            (Some(one), None) => one,
            (Some(a), Some(b)) => {
                let mut s = format!("{a}, {b}");
                for v in values {
                    s.push_str(", ");
                    s.push_str(&v);
                }
                Cow::Owned(s)
            }
            (None, _) => continue,
        };
        obj = obj.str(name.as_str(), &joined);
    }
    Bytes::from(obj.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_headers_never_reach_workers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer secret"),
            ("cookie", "a=b"),
            ("proxy-authorization", "x"),
            ("connection", "keep-alive"),
            ("content-length", "3"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
            ("x-trace", "1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h.append("x-trace", HeaderValue::from_static("2"));
        let v: serde_json::Value = serde_json::from_slice(&worker_headers(&h)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"content-type": "text/plain", "x-trace": "1, 2"})
        );
    }

    #[test]
    fn counts_of_any_size_are_clamped_not_refused() {
        // Schemathesis sent 2^63 (beyond the int64 the document claimed);
        // counts beyond usize were refused, unlike any other count above
        // the limit ("counts as the limit"): clamped now too.
        let p = |v: &str| Params(vec![("max".into(), v.into())]).count("max");
        assert_eq!(p("9223372036854775808").unwrap(), Some(1 << 63));
        assert_eq!(
            p("99999999999999999999999999999").unwrap(),
            Some(usize::MAX)
        );
        assert_eq!(p(" +7 ").unwrap(), Some(7));
        // Found by schemathesis: a no-break space was trimmed as whitespace.
        assert!(p("7\u{a0}").is_err());
        for bad in ["0", "000", "-1", "1.5", "", "+", "1e3", "abc"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_are_validated() {
        assert_eq!(
            parse_secs("wait", "1.5").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_secs("wait", "1e300").unwrap(), MAX_WAIT);
        assert_eq!(
            parse_secs("wait", "7200").unwrap(),
            Duration::from_secs(3600)
        );
        // Found by the property tests: this rounded to zero, "forever".
        assert_eq!(
            parse_secs("timeout", "1e-10").unwrap(),
            Duration::from_nanos(1)
        );
        assert_eq!(parse_secs("timeout", "-0").unwrap(), Duration::ZERO);
        assert!(parse_secs("wait", "1\u{a0}").is_err());
        assert_eq!(parse_secs("wait", " 2\t").unwrap(), Duration::from_secs(2));
        for bad in ["-1", "abc", "NaN", "inf", ""] {
            assert!(parse_secs("wait", bad).is_err(), "{bad}");
        }
    }
}
