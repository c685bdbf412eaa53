//! A client written with `jobq::client`: submits its argument and prints
//! the result (see `examples/worker.rs` for the worker side).
//!
//! ```sh
//! cargo run --example submit -- hello      # prints HELLO
//! ```
//!
//! `JOBQ_URL` names another server (default `http://127.0.0.1:3000`).

use std::time::Duration;

use jobq::client::{Client, Error, SubmitOptions};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("JOBQ_URL").unwrap_or_else(|_| jobq::client::URL_DEFAULT.into());
    let payload = std::env::args().nth(1).unwrap_or_else(|| "hello".into());
    let client = Client::new(&url)?;
    let opts = SubmitOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    match client.submit(payload, &opts).await {
        Ok(done) => println!("{}", String::from_utf8_lossy(&done.result)),
        // The wait ended first: the job goes on; read it later.
        Err(Error::StillRunning { job_id }) => {
            let view = client.job_wait(&job_id, Duration::from_secs(30)).await?;
            println!("job {job_id} is {}", view.status);
        }
        Err(e) => return Err(e),
    }
    Ok(())
}
