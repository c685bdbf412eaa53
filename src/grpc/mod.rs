//! The gRPC worker face (`proto/worker.proto`, docs/grpc.md): the first
//! version's `worker.WorkerService` kept field for field, its extensions
//! (long-poll, queues, leases, fail, heartbeat, the `Work` stream), and
//! server reflection. A thin translation onto the [`Broker`], like the HTTP
//! face: it makes no decision about a job.
//!
//! - [`convert`]: messages ↔ broker requests and jobs.
//! - [`error`]: the one mapping of broker errors to status codes.
//! - [`service`]: the unary RPCs.
//! - [`stream`]: the `Work` stream.
//! - [`worker`]: the worker side of the `Work` stream (`jobq worker --grpc`).

pub mod convert;
pub mod error;
pub mod service;
pub mod stream;
pub mod worker;

use std::time::Duration;

use futures_util::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::auth::{Auth, Role};
use crate::broker::Broker;
use crate::tls::Tls;

/// Code generated from `proto/worker.proto` (server and client).
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("worker");
}

/// The encoded descriptors of `proto/worker.proto`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("worker_descriptor");

/// Default `--grpc-listen`.
pub const GRPC_LISTEN_DEFAULT: &str = "127.0.0.1:50051";

/// The service's fully qualified name (what `grpcurl list` shows).
pub const SERVICE_NAME: &str = "worker.WorkerService";

/// The worker token check (SPEC §3): `authorization: Bearer <token>`
/// metadata, checked for the worker role on every call of the service.
fn check_worker(auth: &Auth, req: &tonic::Request<()>) -> Result<(), tonic::Status> {
    let credential = req.metadata().get("authorization").map(|v| v.as_bytes());
    let loopback = req
        .remote_addr()
        .is_some_and(|a| a.ip().to_canonical().is_loopback());
    auth.check_credential(Role::Worker, credential, loopback)
        .map_err(error::auth)
}

/// Serves the gRPC API on `listener` until `drained` is cancelled (the end
/// of the shutdown grace), then stops accepting and lets open calls finish:
/// the worker service needs the worker token when one is set; reflection
/// (the schema only) is open, like `/openapi.json`. Calls finish as follows:
/// long-polls have already ended when shutdown began, and `Work` streams end
/// with `UNAVAILABLE` at `drained`. With `tls` (`--tls-cert`) every
/// connection is TLS with ALPN `h2`, on the same identity as HTTPS (so a
/// SIGHUP reload applies to new gRPC handshakes too).
///
/// # Errors
/// The transport failed.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    auth: Auth,
    tls: Option<Tls>,
    drained: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let api = service::WorkerApi {
        broker,
        drained: drained.clone(),
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the built-in descriptor set is valid");
    // grpcurl and older tools still ask v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the built-in descriptor set is valid");
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(
            pb::worker_service_server::WorkerServiceServer::with_interceptor(
                api,
                move |req: tonic::Request<()>| check_worker(&auth, &req).map(|()| req),
            ),
        )
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    // Small messages both ways: Nagle's delay would stall each one.
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    drained.cancelled_owned(),
                )
                .await
        }
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(
                    tls_incoming(listener, &tls, drained.clone()),
                    drained.cancelled_owned(),
                )
                .await
        }
    }
}

/// Accepts on `listener` until `stop` and yields the connections whose TLS
/// handshake succeeded. Each handshake runs in a task of its own within
/// [`crate::server::TLS_HANDSHAKE_TIMEOUT`], so a slow or silent client
/// holds up nobody; a failed one is logged at debug and dropped.
fn tls_incoming(
    listener: TcpListener,
    tls: &Tls,
    stop: CancellationToken,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let acceptor = TlsAcceptor::from(tls.server_config_with_alpn(vec![b"h2".to_vec()]));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = crate::server::accept(&listener, "gRPC accept failed") => accepted,
                _ = stop.cancelled() => return,
                // The server has stopped taking connections.
                _ = tx.closed() => return,
            };
            // Small messages both ways: Nagle's delay would stall each one.
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(
                    crate::server::TLS_HANDSHAKE_TIMEOUT,
                    acceptor.accept(stream),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
