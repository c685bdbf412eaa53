//! jobq: a synchronous job queue with an HTTP API (see `docs/api.md`;
//! the module map is `docs/architecture.md`).
//!
//! # Layout
//! - [`config`]: command line and environment.
//! - [`auth`]: role tokens and the decision who may call what (no HTTP types).
//! - [`tls`]: the server's certificate and key, reloadable (rustls).
//! - [`job`]: domain types and the state machine (pure, no I/O).
//! - [`store`]: the storage trait and its backends.
//! - [`broker`]: the only API for a job's lifecycle; waiters and wake-ups.
//! - [`api`]: HTTP handlers, thin translations onto the broker.
//! - [`grpc`]: the gRPC worker API (`proto/worker.proto`), thin onto the broker.
//! - [`server`]: accept loops (HTTP and gRPC), maintenance task, graceful shutdown.
//! - [`metrics`]: Prometheus families, hooks, the dashboard's per-second ring.
//! - [`dashboard`]: `GET /metrics`, the dashboard page and its data calls.
//! - [`client`]: a Rust client and worker for the HTTP API.
//! - [`cli`]: the client-side subcommands (`worker`, `submit`, admin, `bench`).
//!
//! Dependencies point one way: `api`, `grpc` → `broker` → `store` → `job`.
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod grpc;
pub mod job;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
