//! The HTTP layer's share: one `tracing` span per request carrying its
//! method, matched route template and job id (the `{id}` of the path, or
//! the `X-Job-Id` of the answer), and the request-duration histogram by
//! route and status. Bodies, query strings and headers are never recorded
//! (they hold payloads and tokens).

use std::collections::HashSet;
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
static ROUTES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);

fn intern(route: &str) -> &'static str {
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
        // Only a well-formed id, so that nothing a client typed is logged.
        // Given when the span is made: each later `record` formats the
        // span's fields again in the text and JSON log layers.
        let path_job = route
            .contains("{id}")
            .then(|| path_id(route, req.uri().path()))
            .flatten()
            .and_then(|id| id.parse::<uuid::Uuid>().ok());
        let span = tracing::info_span!(
            "request",
            method,
            route,
            job.id = path_job.map(tracing::field::display),
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

    /// Records the answer: its duration, and the `answered` line.
    pub fn end(self, resp: &Response) {
        let took = self.began.elapsed();
        let status = resp.status().as_u16();
        // Nothing is logged in the span after this but the `answered` line,
        // so the answer's fields are recorded only when that line is logged.
        if tracing::enabled!(tracing::Level::DEBUG) {
            if let Some(id) = resp.headers().get(X_JOB_ID).and_then(|v| v.to_str().ok()) {
                self.span.record("job.id", id);
            }
            self.span.record("status", status);
            tracing::debug!(parent: &self.span, took_ms = took.as_secs_f64() * 1e3, "answered");
        }
        super::http_request(self.method, self.route, status, took);
    }
}

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
}
