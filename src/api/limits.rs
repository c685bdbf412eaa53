//! Caps on requests that hold a connection while they wait: clients waiting
//! for a result (`POST /api/submit`, `GET /api/jobs/{id}?wait=N`, a job's
//! event stream) and workers long-polling for a job (`?wait=N` on the worker
//! endpoints). Over its cap a request is answered `503` with `Retry-After`
//! at once, before it creates or takes anything; the permit is held until
//! the answer has been sent in full (an event stream holds it while open).
//!
//! Requests that answer at once (`POST /api/jobs`, a poll without `wait`)
//! are not counted: they hold nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;

/// Default `--max-waiting-clients`.
pub const MAX_WAITING_CLIENTS_DEFAULT: usize = 10_000;
/// Default `--max-polling-workers`.
pub const MAX_POLLING_WORKERS_DEFAULT: usize = 10_000;

/// The caps, shared by every connection (cheap to clone).
#[derive(Clone, Debug)]
pub struct Caps {
    /// Permits for waiting clients (`--max-waiting-clients`).
    clients: Arc<Semaphore>,
    /// `--max-waiting-clients`, for the message.
    max_clients: usize,
    /// Permits for long-polling workers (`--max-polling-workers`).
    workers: Arc<Semaphore>,
    /// `--max-polling-workers`, for the message.
    max_workers: usize,
}

impl Caps {
    /// Caps of `max_clients` waiting clients and `max_workers` long-polling
    /// workers.
    pub fn new(max_clients: usize, max_workers: usize) -> Caps {
        Caps {
            clients: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            workers: Arc::new(Semaphore::new(max_workers)),
            max_workers,
        }
    }
}

/// Which cap a request counts against.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    WaitingClient,
    PollingWorker,
}

/// Whether the query asks for a wait (`name` present and not zero; a
/// malformed value is left for the handler to refuse).
fn asks_to_wait(query: Option<&str>, name: &str) -> bool {
    query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == name && super::trim_ws(&v).parse::<f64>().is_ok_and(|s| s > 0.0))
    })
}

fn kind(method: &Method, path: &str, query: Option<&str>) -> Option<Kind> {
    if method == Method::POST && path == "/api/submit" {
        return Some(Kind::WaitingClient);
    }
    if method == Method::GET {
        if let Some(rest) = path.strip_prefix("/api/jobs/") {
            if rest.ends_with("/events") || asks_to_wait(query, "wait") {
                return Some(Kind::WaitingClient);
            }
        }
    }
    if path.starts_with("/api/worker/") && asks_to_wait(query, "wait") {
        return Some(Kind::PollingWorker);
    }
    None
}

/// The permit a request that will wait holds (`None`: it does not wait),
/// or `503` + `Retry-After` ([`ApiError::Busy`]) when it would wait beyond
/// its cap. Called by the layer in front of every route (`Front` in `api/mod.rs`), which
/// holds the permit until the answer is sent ([`hold_until_sent`]).
pub fn permit(caps: &Caps, req: &Request) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
    let (sem, what, limit) = match kind(req.method(), req.uri().path(), req.uri().query()) {
        None => return Ok(None),
        Some(Kind::WaitingClient) => (&caps.clients, "waiting clients", caps.max_clients),
        Some(Kind::PollingWorker) => (&caps.workers, "long-polling workers", caps.max_workers),
    };
    match sem.clone().try_acquire_owned() {
        Ok(permit) => Ok(Some(permit)),
        Err(_) => Err(ApiError::Busy { what, limit }),
    }
}

/// A body of known size up to this is written with its head at once (the
/// socket's send buffer holds it), so a guard need not wait for it.
const SENT_AT_ONCE: u64 = 64 * 1024;

/// `resp`, keeping `guard` alive until its body has been sent in full (or
/// the connection dropped it). A small body of known size (every JSON
/// answer) goes out with the head, so the guard is dropped now: wrapping
/// the body would cost an allocation and a dynamic call per frame.
pub fn hold_until_sent<G: Send + Unpin + 'static>(resp: Response, guard: G) -> Response {
    if http_body::Body::size_hint(resp.body())
        .exact()
        .is_some_and(|n| n <= SENT_AT_ONCE)
    {
        drop(guard);
        return resp;
    }
    resp.map(|body| {
        Body::new(Guarded {
            body,
            _guard: guard,
        })
    })
}

/// A body carrying a guard (a permit) that is dropped with it.
struct Guarded<G> {
    /// The answer's body.
    body: Body,
    /// Released when the body is dropped.
    _guard: G,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_wait_are_counted() {
        let k = |m: Method, p: &str, q: Option<&str>| kind(&m, p, q);
        assert_eq!(
            k(Method::POST, "/api/submit", None),
            Some(Kind::WaitingClient)
        );
        assert_eq!(k(Method::POST, "/api/jobs", None), None);
        assert_eq!(k(Method::GET, "/api/jobs/x", None), None);
        assert_eq!(k(Method::GET, "/api/jobs/x", Some("wait=0")), None);
        assert_eq!(
            k(Method::GET, "/api/jobs/x", Some("wait=2")),
            Some(Kind::WaitingClient)
        );
        assert_eq!(
            k(Method::GET, "/api/jobs/x/events", None),
            Some(Kind::WaitingClient)
        );
        assert_eq!(k(Method::DELETE, "/api/jobs/x", Some("wait=2")), None);
        assert_eq!(k(Method::GET, "/api/worker/poll", None), None);
        assert_eq!(
            k(Method::GET, "/api/worker/poll", Some("queue=a&wait=abc")),
            None
        );
        assert_eq!(
            k(Method::GET, "/api/worker/poll", Some("queue=a&wait=0.5")),
            Some(Kind::PollingWorker)
        );
        assert_eq!(
            k(
                Method::POST,
                "/api/worker/complete/x",
                Some("next=1&wait=5")
            ),
            Some(Kind::PollingWorker)
        );
        assert_eq!(k(Method::GET, "/api/admin/stats", Some("wait=5")), None);
    }
}
