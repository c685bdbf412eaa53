//! The HTTP layer's share: one `tracing` span per request (at `debug`)
//! carrying its method, matched route template and job id (the `{id}` of
//! the path, or the `X-Job-Id` of the answer), an `error` line with those
//! fields for every answer the server's failure caused, and the
//! request-duration histogram by route and status. Bodies, query strings and headers are never recorded
//! (they hold payloads and tokens).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use parking_lot::Mutex;
use tracing::field::Empty;
use tracing::Span;

use crate::api::X_JOB_ID;

/// Route label of a request that matched no route (bounded cardinality:
/// the raw path is never a label).
const UNMATCHED: &str = "unmatched";

/// Route templates as `'static` labels. The set is bounded by the router's
/// routes, so leaking each once is fine.
static ROUTES: LazyLock<Mutex<HashSet<&'static str, foldhash::fast::RandomState>>> =
    LazyLock::new(Default::default);

fn intern(route: &str) -> &'static str {
    // Each thread remembers the routes it has seen, by the address of the
    // router's own string (checked by content, as a router dropped in a
    // test may leave its address to another): the shared set's lock,
    // taken by every request on every core, is then taken once per route
    // and thread.
    thread_local! {
        static SEEN: std::cell::RefCell<HashMap<usize, &'static str, foldhash::fast::RandomState>> =
            Default::default();
    }
    let addr = route.as_ptr() as usize;
    SEEN.with_borrow_mut(|seen| match seen.get(&addr) {
        Some(&interned) if interned == route => interned,
        _ => {
            let interned = intern_shared(route);
            seen.insert(addr, interned);
            interned
        }
    })
}

fn intern_shared(route: &str) -> &'static str {
    let mut routes = ROUTES.lock();
    if let Some(r) = routes.get(route) {
        return r;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    routes.insert(leaked);
    leaked
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The path segment where the route template has `{id}`.
fn path_id<'a>(template: &str, path: &'a str) -> Option<&'a str> {
    let pos = template.split('/').position(|s| s == "{id}")?;
    path.split('/').nth(pos)
}

/// One request's span and duration: begun before the request runs, ended
/// with its answer (by the layer in front of every route, `Front` in `api/mod.rs`).
pub struct Tracked {
    span: Span,
    method: &'static str,
    route: &'static str,
    began: Instant,
}

impl Tracked {
    /// Makes the request's span (not entered) and starts its clock.
    pub fn begin(req: &Request) -> Tracked {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED, |m| intern(m.as_str()));
        let method = method_label(req.method());
        // A `debug` span, as tower-http's: made (its fields formatted by
        // the log layers) only when `debug` lines are logged. At `info` it
        // cost ~20k instructions per job, a sixth of the memory store's
        // whole cost; a server fault is logged with the same fields by
        // `end` instead. The id is given when the span is made (only a
        // well-formed one, so that nothing a client typed is logged): each
        // later `record` formats the span's fields again.
        let span = tracing::debug_span!(
            "request",
            method,
            route,
            job.id = route
                .contains("{id}")
                .then(|| path_id(route, req.uri().path()))
                .flatten()
                .and_then(|id| id.parse::<uuid::Uuid>().ok())
                .map(tracing::field::display),
            status = Empty
        );
        Tracked {
            span,
            method,
            route,
            began: Instant::now(),
        }
    }

    /// The request's span, to enter while its work runs.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Records the answer: its duration, and the `answered` line (at
    /// `debug`); a [`ServerFault`] is logged at `error` with the request's
    /// fields whatever the level, as an operator must see it.
    pub fn end(self, resp: &Response) {
        let took = self.began.elapsed();
        let status = resp.status().as_u16();
        let job_id = || resp.headers().get(X_JOB_ID).and_then(|v| v.to_str().ok());
        if let Some(ServerFault(error)) = resp.extensions().get::<ServerFault>() {
            tracing::error!(
                method = self.method,
                route = self.route,
                status,
                job.id = job_id(),
                took_ms = took.as_secs_f64() * 1e3,
                error,
                "storage unavailable"
            );
        }
        if !self.span.is_disabled() {
            // Nothing is logged in the span after this but the `answered`
            // line, so the answer's fields are recorded only for it.
            if let Some(id) = job_id() {
                self.span.record("job.id", id);
            }
            self.span.record("status", status);
            tracing::debug!(parent: &self.span, took_ms = took.as_secs_f64() * 1e3, "answered");
        }
        super::http_request(self.method, self.route, status, took);
    }
}

/// Carried by an answer (as a response extension) when the server failed,
/// not the request: the cause, for the `error` line of [`Tracked::end`].
#[derive(Clone, Debug)]
pub struct ServerFault(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_found_where_the_template_has_it() {
        assert_eq!(path_id("/api/jobs/{id}", "/api/jobs/abc"), Some("abc"));
        assert_eq!(
            path_id("/api/worker/complete/{id}", "/api/worker/complete/x"),
            Some("x")
        );
        assert_eq!(path_id("/api/submit", "/api/submit"), None);
        assert!(std::ptr::eq(intern("/a/{id}"), intern("/a/{id}")));
    }

    /// Log lines of `f` run under a text subscriber at `level`.
    fn logged(level: tracing::Level, f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().clone();
        String::from_utf8(bytes).expect("text")
    }

    fn answer(status: u16, fault: Option<&str>) -> Response {
        let mut resp = Response::new(axum::body::Body::empty());
        *resp.status_mut() = axum::http::StatusCode::from_u16(status).expect("a status");
        if let Some(f) = fault {
            resp.extensions_mut().insert(ServerFault(f.into()));
        }
        resp
    }

    /// At the default level no request span is made, yet a server fault is
    /// logged with the request's fields; at `debug` every request ends
    /// with an `answered` line in its span.
    #[test]
    fn a_server_fault_is_logged_with_the_request_at_any_level() {
        let req = || {
            Request::builder()
                .method("POST")
                .uri("/api/submit")
                .body(axum::body::Body::empty())
                .expect("a request")
        };
        let info = logged(tracing::Level::INFO, || {
            let t = Tracked::begin(&req());
            assert!(t.span().is_disabled(), "no span at info");
            t.end(&answer(200, None));
            Tracked::begin(&req()).end(&answer(503, Some("disk full")));
        });
        assert_eq!(info.lines().count(), 1, "{info}");
        for part in [
            "ERROR",
            "storage unavailable",
            "method=\"POST\"",
            "route=\"unmatched\"",
            "status=503",
            "error=\"disk full\"",
        ] {
            assert!(info.contains(part), "{part} missing in {info}");
        }
        let debug = logged(tracing::Level::DEBUG, || {
            Tracked::begin(&req()).end(&answer(202, None));
        });
        assert!(
            debug.contains("request{method=\"POST\" route=\"unmatched\" status=202}")
                && debug.contains("answered"),
            "{debug}"
        );
    }
}
