//! Serving: the accept loop, the maintenance task, and the three-step
//! shutdown (refuse new work → drain running jobs within the grace → close
//! connections and the store).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::api::{self, ApiError, AppState};
use crate::auth::{Auth, Role};
use crate::tls::Tls;

mod conn;
mod json_errors;
use crate::broker::{maintenance, Broker};

/// How long open connections get to finish once the drain is over.
const CONNECTION_DRAIN: Duration = Duration::from_secs(5);

/// Default `--header-read-timeout`: a request's head must arrive within it
/// once it has begun (slow-loris guard).
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default `--idle-timeout`: how long a kept-alive connection may sit idle.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// Default `--tcp-keepalive`: silence before the first keepalive probe.
pub const TCP_KEEPALIVE_DEFAULT: Duration = Duration::from_secs(60);

/// Unanswered keepalive probes after which the kernel drops a connection.
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// Default `--max-header-bytes`: request line and headers together.
pub const MAX_HEADER_BYTES_DEFAULT: usize = 64 * 1024;

/// hyper's own header count limit, the default `--max-headers`.
pub const HYPER_MAX_HEADERS: usize = 100;

/// A TLS handshake (HTTP or gRPC) must be done within this time.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// `--tls-cert`/`--tls-key`: serve HTTPS (`None`: plain HTTP).
    pub tls: Option<Tls>,
    /// `--max-waiting-clients`.
    pub max_waiting_clients: usize,
    /// `--max-polling-workers`.
    pub max_polling_workers: usize,
    /// `--max-header-bytes` (`431` beyond).
    pub max_header_bytes: usize,
    /// `--max-headers` (`431` beyond).
    pub max_headers: usize,
    /// `--header-read-timeout`.
    pub header_read_timeout: Duration,
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
    /// `--tcp-keepalive` (`None`: off).
    pub tcp_keepalive: Option<Duration>,
    /// `--sse-keepalive`.
    pub sse_keepalive: Duration,
}

/// The next connection on `listener`. A failed accept (usually EMFILE) is
/// logged with `what` and retried after a pause instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    what: &'static str,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "{what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
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
    ) || m.as_str() == "QUERY"
    // QUERY (the IETF's safe method with a body) is known, so a route
    // answers it 405 like another method it does not serve, not 501.
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

/// Runs one connection until it ends, expires (idle, or a request head too
/// slow), or the server closes (then it finishes its answer in progress).
async fn drive<I, S>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    activity: std::sync::Arc<conn::Activity>,
    deadlines: conn::Deadlines,
    closing: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = axum::body::Body>,
{
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = closing.cancelled(), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            // Dropping the connection closes it: nothing is being answered.
            _ = activity.expired(deadlines) => return,
        }
    }
}

/// Warns when the server listens beyond loopback while a role is open to
/// anyone who can reach it.
fn warn_if_open(listener: &TcpListener, auth: &Auth, tls: bool) {
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
    if !tls {
        tracing::info!(
            "plain HTTP beyond loopback: tokens and payloads travel in clear text unless a TLS proxy is in front (or use --tls-cert)"
        );
    }
    if !auth.requires_token(Role::Admin) {
        tracing::info!(
            "no admin token: admin endpoints answer loopback clients only (set --admin-token to reach them remotely)"
        );
    }
}

/// Serves the HTTP API on `listener` until `shutdown` resolves, then shuts
/// down gracefully; see [`run_with_grpc`].
///
/// # Errors
/// Closing the store failed (the last writes may not be durable).
pub async fn run(
    listener: TcpListener,
    broker: Broker,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_grpc(listener, None, broker, cfg, shutdown).await
}

/// Serves the API on `listener` (and the gRPC worker API on `grpc`, if
/// given, on the same broker) until `shutdown` resolves, then shuts down
/// gracefully: new submits and polls get 503 at once, running jobs get
/// `shutdown_grace` to finish, then waiting clients are answered and the
/// store is closed. Taking a bound listener lets tests pass `127.0.0.1:0`.
///
/// # Errors
/// Closing the store failed (the last writes may not be durable).
pub async fn run_with_grpc(
    listener: TcpListener,
    grpc: Option<TcpListener>,
    broker: Broker,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop_maintenance = CancellationToken::new();
    let maintenance = tokio::spawn(maintenance::run(broker.clone(), stop_maintenance.clone()));
    let dash = crate::metrics::dash::Dash::new();
    let sampler = crate::metrics::dash::run(broker.clone(), dash.clone(), stop_maintenance.clone());
    tokio::spawn(sampler);
    warn_if_open(&listener, &cfg.auth, cfg.tls.is_some());
    let app = api::router(AppState::new(api::Shared {
        broker: broker.clone(),
        max_body: cfg.max_body,
        auth: cfg.auth.clone(),
        caps: api::limits::Caps::new(cfg.max_waiting_clients, cfg.max_polling_workers),
        dash,
        sse_keepalive: cfg.sse_keepalive,
    }));

    let drained = drain_on(shutdown, broker.clone(), cfg.shutdown_grace);
    // Long-polls end when shutdown begins; streams end once the drain is over.
    let grpc = grpc.map(|l| {
        tokio::spawn(crate::grpc::serve(
            l,
            broker.clone(),
            cfg.auth.clone(),
            cfg.tls.clone(),
            drained.clone(),
        ))
    });
    let connections = Connections::new(&cfg, app);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, "accept failed") => accepted,
            _ = drained.cancelled() => break,
        };
        connections.serve(stream, peer);
    }
    drop(listener);
    let connections = connections.close();
    let grpc_abort = grpc.as_ref().map(|t| t.abort_handle());
    let grpc_done = async {
        if let Some(task) = grpc {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server failed"),
                Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
                Ok(Ok(())) => {}
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(connections.wait(), grpc_done) } => {}
        _ = tokio::time::sleep(CONNECTION_DRAIN) => tracing::warn!("connections still open after the drain; closing"),
    }
    if let Some(a) = grpc_abort {
        a.abort();
    }
    stop_maintenance.cancel();
    let _ = maintenance.await;
    broker.close().await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Begins the shutdown once `shutdown` resolves: new submits and polls are
/// refused, running jobs get `grace` to finish. The token is cancelled
/// once that drain is over.
fn drain_on(
    shutdown: impl Future<Output = ()> + Send + 'static,
    broker: Broker,
    grace: Duration,
) -> CancellationToken {
    let drained = CancellationToken::new();
    let done = drained.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: no new jobs; draining running ones"
        );
        broker.begin_shutdown();
        broker.drain(grace).await;
        done.cancel();
    });
    drained
}

/// What every accepted HTTP connection is served with, and the tasks
/// serving them.
struct Connections {
    app: axum::Router,
    http: hyper::server::conn::http1::Builder,
    tls: Option<tokio_rustls::TlsAcceptor>,
    deadlines: conn::Deadlines,
    keepalive: Option<socket2::TcpKeepalive>,
    max_body: usize,
    /// Cancelled once the drain is over: connections finish their answer
    /// in progress and close.
    closing: CancellationToken,
    tasks: TaskTracker,
}

impl Connections {
    fn new(cfg: &ServerConfig, app: axum::Router) -> Self {
        let mut http = hyper::server::conn::http1::Builder::new();
        // No hyper header timer: [`conn`] keeps the header and idle deadlines.
        http.header_read_timeout(None)
            .max_header_size(cfg.max_header_bytes)
            .keep_alive(true);
        if cfg.max_headers != HYPER_MAX_HEADERS {
            // Only when changed: hyper then keeps headers on the heap (slower).
            http.max_headers(cfg.max_headers);
        }
        Connections {
            app,
            http,
            tls: cfg
                .tls
                .as_ref()
                .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config())),
            deadlines: conn::Deadlines {
                idle: cfg.idle_timeout,
                header: cfg.header_read_timeout,
            },
            keepalive: cfg.tcp_keepalive.map(|t| {
                socket2::TcpKeepalive::new()
                    .with_time(t)
                    .with_interval((t / 3).max(Duration::from_secs(1)))
                    .with_retries(TCP_KEEPALIVE_RETRIES)
            }),
            max_body: cfg.max_body,
            closing: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Serves one accepted connection on a task of its own.
    fn serve(&self, stream: tokio::net::TcpStream, peer: std::net::SocketAddr) {
        let _ = stream.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        if let Some(ka) = &self.keepalive {
            // A long-poll whose peer vanished is noticed by the probes.
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(ka);
        }
        let activity = conn::Activity::new();
        let (app, max_body) = (self.app.clone(), self.max_body);
        let svc_activity = activity.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let app = app.clone();
            let in_flight = svc_activity.request_started();
            // The auth layer needs the peer's address (admin is loopback-only
            // without a token); a poll checks that its worker is still there
            // before handing out.
            req.extensions_mut().insert(api::Peer { addr: peer, fd });
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
                // In flight until its body is sent (an event stream included).
                Ok(api::limits::hold_until_sent(resp, in_flight))
            }
        });
        let (http, closing, deadlines) = (self.http.clone(), self.closing.clone(), self.deadlines);
        match &self.tls {
            None => {
                let io = TokioIo::new(json_errors::JsonErrors::new(stream, activity.clone()));
                self.tasks.spawn(drive(
                    http.serve_connection(io, svc),
                    activity,
                    deadlines,
                    closing,
                ));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                self.tasks.spawn(async move {
                    // A failed or stalled handshake just ends the connection.
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let io = TokioIo::new(json_errors::JsonErrors::new(stream, activity.clone()));
                    drive(http.serve_connection(io, svc), activity, deadlines, closing).await;
                });
            }
        }
    }

    /// Tells every connection to close once its answer in progress is out;
    /// wait on the tracker for them to be gone.
    fn close(self) -> TaskTracker {
        self.closing.cancel();
        self.tasks.close();
        self.tasks
    }
}
