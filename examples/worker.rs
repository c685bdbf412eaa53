//! A worker written with `jobq::client`: upper-cases every payload of the
//! `default` queue, two jobs at a time, until Ctrl-C (then it finishes the
//! jobs in hand).
//!
//! ```sh
//! cargo run --release                      # the server, in one terminal
//! cargo run --example worker               # this worker, in another
//! cargo run --example submit -- hello      # prints HELLO
//! ```
//!
//! `JOBQ_URL` names another server (default `http://127.0.0.1:3000`).

use jobq::client::{Client, Outcome, RunOptions};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), jobq::client::Error> {
    let url = std::env::var("JOBQ_URL").unwrap_or_else(|_| jobq::client::URL_DEFAULT.into());
    let worker = Client::new(&url)?.worker(vec!["default".into()]);

    let stop = CancellationToken::new();
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_ctrl_c.cancel();
    });

    println!("working for {url}; Ctrl-C stops");
    worker
        .run(
            RunOptions { concurrency: 2 },
            stop,
            |job, _lost| async move {
                // `_lost` is cancelled if the job is cancelled or its lease lost
                // while we work: a long handler should stop then.
                match std::str::from_utf8(&job.payload) {
                    Ok(text) => Outcome::Complete(text.to_uppercase().into()),
                    Err(_) => Outcome::Fail {
                        error: "payload is not UTF-8".into(),
                        retry: false,
                    },
                }
            },
        )
        .await
}
