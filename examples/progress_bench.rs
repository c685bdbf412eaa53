//! Measures progress events (docs/BENCHMARKS.md, "Progress events"):
//!
//! - **latency**: `STREAMS` clients each submit a job with
//!   `Accept: text/event-stream`; a worker takes them all and, for each job,
//!   posts a progress event every `INTERVAL_MS` for `SECS` seconds. Latency is
//!   from just before the worker's `POST /api/worker/progress/{id}` is sent to
//!   the moment the client has parsed the event (same process, same clock).
//! - **throughput**: one job, one streaming client, one worker posting events
//!   one after another (each after the previous `200`, as an in-order worker
//!   does) for `SECS` seconds: events per second received by the client.
//!
//! ```sh
//! scripts/bench-progress.sh      # starts a release server, runs both, stops it
//! cargo run --release --example progress_bench -- URL [STREAMS] [INTERVAL_MS] [SECS]
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jobq::client::{Client, JobEvent, SubmitOptions};
use parking_lot::Mutex;

type Sent = Arc<Mutex<HashMap<(String, u64), Instant>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let streams: usize = args.get(1).map_or(Ok(100), |s| s.parse())?;
    let interval = Duration::from_millis(args.get(2).map_or(Ok(50), |s| s.parse())?);
    let secs = Duration::from_secs(args.get(3).map_or(Ok(10), |s| s.parse())?);
    let client = Client::new(&url)?;
    latency(&client, streams, interval, secs).await?;
    throughput(&client, secs).await?;
    Ok(())
}

fn wait_forever() -> SubmitOptions {
    SubmitOptions {
        timeout: Some(Duration::from_secs(600)),
        queue: Some("progress-bench".into()),
        ..Default::default()
    }
}

/// Takes `n` jobs of the bench queue.
async fn take(client: &Client, n: usize) -> Result<Vec<jobq::client::Job>, jobq::client::Error> {
    let worker = client
        .worker(vec!["progress-bench".into()])
        .long_poll(Duration::from_secs(5));
    let mut jobs = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs.len() < n && Instant::now() < deadline {
        jobs.extend(worker.poll_many(Some((n - jobs.len()).min(100))).await?);
    }
    Ok(jobs)
}

async fn latency(
    client: &Client,
    streams: usize,
    interval: Duration,
    secs: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let sent: Sent = Arc::default();
    let mut readers = Vec::new();
    for _ in 0..streams {
        let mut events = client.stream("bench", &wait_forever()).await?;
        let sent = sent.clone();
        readers.push(tokio::spawn(async move {
            let id = events.job_id().unwrap_or_default().to_owned();
            let mut lat = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            while let Some(Ok(ev)) = events.next().await {
                match ev {
                    JobEvent::Progress { seq, .. } => {
                        let now = Instant::now();
                        // The worker records the send time before posting.
                        if let Some(t) = sent.lock().remove(&(id.clone(), seq)) {
                            let _ = lat.record(now.duration_since(t).as_micros() as u64);
                        }
                    }
                    e if e.is_final() => break,
                    _ => {}
                }
            }
            lat
        }));
    }
    let jobs = take(client, streams).await?;
    assert_eq!(jobs.len(), streams, "every streamed job was handed out");
    let worker = client.worker(vec!["progress-bench".into()]);
    let began = Instant::now();
    let mut posters = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        let (worker, sent) = (worker.clone(), sent.clone());
        posters.push(tokio::spawn(async move {
            // Spread the streams over the interval.
            tokio::time::sleep(interval.mul_f64(i as f64 / streams as f64)).await;
            let mut tick = tokio::time::interval(interval);
            let mut seq = 0u64;
            while began.elapsed() < secs {
                tick.tick().await;
                seq += 1;
                sent.lock().insert((job.id.clone(), seq), Instant::now());
                worker
                    .progress(&job, format!("event {seq}"))
                    .await
                    .expect("progress accepted");
            }
            worker
                .complete(&job, "done")
                .await
                .expect("complete accepted");
            seq
        }));
    }
    let mut posted = 0;
    for p in posters {
        posted += p.await?;
    }
    let mut all = hdrhistogram::Histogram::<u64>::new(3)?;
    for r in readers {
        all.add(r.await?)?;
    }
    println!(
        "latency: {streams} streams, an event each {} ms per stream, {} s: {posted} events posted, {} received; \
         p50 {} us, p90 {} us, p99 {} us, max {} us",
        interval.as_millis(),
        secs.as_secs(),
        all.len(),
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.9),
        all.value_at_quantile(0.99),
        all.max()
    );
    Ok(())
}

async fn throughput(client: &Client, secs: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let mut events = client.stream("bench", &wait_forever()).await?;
    let job = take(client, 1).await?.pop().ok_or("no job handed out")?;
    let worker = client.worker(vec!["progress-bench".into()]);
    let reader = tokio::spawn(async move {
        let (mut n, mut last, mut gaps) = (0u64, 0u64, 0u64);
        while let Some(Ok(ev)) = events.next().await {
            match ev {
                JobEvent::Progress { seq, .. } => {
                    assert!(seq > last, "in order");
                    last = seq;
                    n += 1;
                }
                JobEvent::Gap { dropped } => gaps += dropped,
                _ => break,
            }
        }
        (n, gaps)
    });
    let began = Instant::now();
    let mut posted = 0u64;
    while began.elapsed() < secs {
        worker.progress(&job, "token ").await?;
        posted += 1;
    }
    let took = began.elapsed();
    worker.complete(&job, "done").await?;
    let (received, gaps) = reader.await?;
    println!(
        "throughput: one job, events posted one after another for {:.1} s: {posted} posted ({:.0}/s), \
         {received} received in order, {gaps} dropped",
        took.as_secs_f64(),
        posted as f64 / took.as_secs_f64()
    );
    Ok(())
}
