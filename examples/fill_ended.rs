//! Fills a server with ended jobs, for `scripts/bench-ended.sh`
//! (docs/BENCHMARKS.md, "Ended jobs off the heap"): `CLIENTS` clients make
//! exactly `N` sync submits of a 100-byte JSON payload between them, and
//! `WORKERS` workers echo each payload back as its result, taking the next
//! job with the same request (`complete?next=1`). Prints the count and the
//! rate; exits non-zero if any submit failed.
//!
//! ```sh
//! cargo run --release --example fill_ended -- URL [N] [CLIENTS] [WORKERS]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobq::client::{Client, Outcome, SubmitOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let n: u64 = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let clients: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let workers: usize = args.get(3).map_or(Ok(8), |s| s.parse())?;
    let client = Client::new(&url)?;
    let (next, done, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let began = Instant::now();

    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (worker, done) = (
            client
                .worker(vec!["default".into()])
                .long_poll(Duration::from_millis(500)),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < n {
                let Ok(Some(mut job)) = worker.poll().await else {
                    continue;
                };
                loop {
                    let echo = Outcome::Complete(job.payload.clone());
                    match worker.post_and_next(&job, &echo).await {
                        Ok(Some(next)) => job = next,
                        _ => break,
                    }
                }
            }
        }));
    }
    for _ in 0..clients {
        let (client, next, done, failed) =
            (client.clone(), next.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let opts = SubmitOptions {
                timeout: Some(Duration::from_secs(60)),
                ..Default::default()
            };
            while next.fetch_add(1, Ordering::Relaxed) < n {
                // 100 bytes of JSON, like syncbench's default payload.
                let body = format!("{{\"pad\":\"{:088}\"}}", 0);
                if client.submit(body, &opts).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % 100_000 == 0 {
                    eprintln!(
                        "{d} jobs, {:.0} jobs/s",
                        d as f64 / began.elapsed().as_secs_f64()
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = began.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "{n} sync submits in {secs:.1} s ({:.0} jobs/s), {failed} failed",
        n as f64 / secs
    );
    if failed > 0 {
        return Err(format!("{failed} submits failed").into());
    }
    Ok(())
}
