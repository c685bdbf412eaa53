//! An echo worker written with `jobq::client`: every job's result is its
//! payload, byte for byte. The Rust side of the worker benchmarks
//! (`sdk/python/BENCHMARKS.md` compares it with the Python SDK's echo worker
//! and `jobq worker --exec cat`).
//!
//! ```sh
//! cargo run --release --example echo_worker -- 8     # concurrency 8
//! ```
//!
//! `JOBQ_URL` names the server (default `http://127.0.0.1:3000`), `JOBQ_TOKEN`
//! its worker token, `JOBQ_QUEUE` the queue (default `default`). Ctrl-C or SIGTERM stops it after the jobs
//! in hand.

use jobq::client::{Client, Outcome, RunOptions};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), jobq::client::Error> {
    let url = std::env::var("JOBQ_URL").unwrap_or_else(|_| jobq::client::URL_DEFAULT.into());
    let queue = std::env::var("JOBQ_QUEUE").unwrap_or_else(|_| "default".into());
    let concurrency = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let client = match std::env::var("JOBQ_TOKEN") {
        Ok(token) if !token.is_empty() => Client::with_token(&url, &token)?,
        _ => Client::new(&url)?,
    };
    let worker = client.worker(vec![queue]);

    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        on_signal.cancel();
    });

    worker
        .run(RunOptions { concurrency }, stop, |job, _lost| async move {
            Outcome::Complete(job.payload)
        })
        .await
}
