//! Serving: the accept loop, the maintenance task, and the three-step
//! shutdown (refuse new work → drain running jobs within the grace → close
//! connections and the store).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::api::{self, ApiError, AppState};
use crate::auth::{Auth, Role};

mod json_errors;
use crate::broker::{maintenance, Broker};

/// How long open connections get to finish once the drain is over.
const CONNECTION_DRAIN: Duration = Duration::from_secs(5);

/// A request's headers must arrive within this time (slow-loris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serving options that are not the broker's policy.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `--max-body`.
    pub max_body: usize,
    /// `--shutdown-grace`.
    pub shutdown_grace: Duration,
    /// Role tokens (`--client-token`, `--token-file`, ...); the same handle
    /// is reloaded on SIGHUP by whoever owns the signals.
    pub auth: Auth,
}

fn is_known_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::PATCH
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    )
}

/// The `Content-Length` a request declares, if any (hyper has already
/// refused malformed ones).
fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Warns when the server listens beyond loopback while a role is open to
/// anyone who can reach it.
fn warn_if_open(listener: &TcpListener, auth: &Auth) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    if addr.ip().is_loopback() {
        return;
    }
    let open = auth.open_roles();
    if !open.is_empty() {
        let roles: Vec<&str> = open.iter().map(|r| r.name()).collect();
        tracing::warn!(
            listen = %addr,
            open_roles = ?roles,
            "listening beyond loopback with no {} token: anyone who can reach this port may act in that role (set --client-token/--worker-token or --token-file)",
            roles.join(" or ")
        );
    }
    if !auth.requires_token(Role::Admin) {
        tracing::info!(
            "no admin token: admin endpoints answer loopback clients only (set --admin-token to reach them remotely)"
        );
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then shuts down
/// gracefully: new submits and polls get 503 at once, running jobs get
/// `shutdown_grace` to finish, then waiting clients are answered and the
/// store is closed. Taking a bound listener lets tests pass `127.0.0.1:0`.
///
/// # Errors
/// Closing the store failed (the last writes may not be durable).
pub async fn run(
    listener: TcpListener,
    broker: Broker,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop_maintenance = CancellationToken::new();
    let maintenance = tokio::spawn(maintenance::run(broker.clone(), stop_maintenance.clone()));
    let dash = crate::metrics::dash::Dash::new();
    let sampler = crate::metrics::dash::run(broker.clone(), dash.clone(), stop_maintenance.clone());
    tokio::spawn(sampler);
    warn_if_open(&listener, &cfg.auth);
    let app = api::router(AppState {
        broker: broker.clone(),
        max_body: cfg.max_body,
        auth: cfg.auth.clone(),
        dash,
    });

    let drained = CancellationToken::new();
    {
        let (broker, drained, grace) = (broker.clone(), drained.clone(), cfg.shutdown_grace);
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(
                grace_s = grace.as_secs_f64(),
                "shutting down: no new jobs; draining running ones"
            );
            broker.begin_shutdown();
            broker.drain(grace).await;
            drained.cancel();
        });
    }

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);

    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drained.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let app = app.clone();
        let max_body = cfg.max_body;
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let app = app.clone();
            // The auth layer needs the peer (admin is loopback-only without a token).
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            // A poll checks that its worker is still there before handing out.
            req.extensions_mut().insert(api::PeerSocket(fd));
            async move {
                if !is_known_method(req.method()) {
                    let m = req.method().to_string();
                    return Ok::<_, Infallible>(axum::response::IntoResponse::into_response(
                        ApiError::NotImplemented(m),
                    ));
                }
                // `--max-body` applies to every request body, also on routes
                // whose handler never reads it (heartbeat, cancel, ...).
                if declared_length(&req).is_some_and(|n| n > max_body as u64) {
                    return Ok(axum::response::IntoResponse::into_response(
                        ApiError::TooLarge(max_body),
                    ));
                }
                let resp: Response<axum::body::Body> = app.oneshot(req).await?;
                Ok(resp)
            }
        });
        let io = TokioIo::new(json_errors::JsonErrors::new(stream));
        let conn = graceful.watch(http.serve_connection(io, svc));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(CONNECTION_DRAIN) => tracing::warn!("connections still open after the drain; closing"),
    }
    stop_maintenance.cancel();
    let _ = maintenance.await;
    broker.close().await?;
    tracing::info!("shut down cleanly");
    Ok(())
}
