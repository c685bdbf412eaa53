//! The HTTP face of [`crate::auth`]: a check in front of every route
//! picks the endpoint's role from the route the request matched (its
//! template, e.g. `/api/jobs/{id}`, so no spelling of a path can reach a
//! route under another role's prefix) and lets the request through only if
//! the caller may act in it. The peer address comes from the
//! [`Peer`] extension the accept loop puts on every request; without
//! it the peer counts as remote (fail closed).

use axum::extract::{MatchedPath, Request};
use axum::http::header::AUTHORIZATION;

use super::{ApiError, Peer};
use crate::auth::{Auth, Role};

/// Whether the peer that sent `req` is on loopback.
pub fn peer_is_loopback(req: &Request) -> bool {
    req.extensions()
        .get::<Peer>()
        .is_some_and(|peer| peer.addr.ip().to_canonical().is_loopback())
}

/// Refuses with [`ApiError::Auth`] (`401`/`403`) unless the caller may
/// act in the role of the matched route; open routes and unrouted paths
/// (answered `404` by the fallback) pass untouched. Called by the layer in
/// front of every route (`Front` in `api/mod.rs`).
pub fn require_role(auth: &Auth, req: &Request) -> Result<(), ApiError> {
    let role = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| Role::for_http_path(m.as_str()));
    if let Some(role) = role {
        // A second Authorization header is ignored: the first must do.
        let credential = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        if let Err(e) = auth.check_credential(role, credential, peer_is_loopback(req)) {
            return Err(ApiError::Auth(e));
        }
    }
    Ok(())
}
