//! Measures many clients waiting at once (docs/BENCHMARKS.md, "10,000
//! clients waiting at once"): `CLIENTS` connections each send a sync submit
//! (`POST /api/submit?queue=waiting`) with no worker running, so every one
//! of them is held open; once the server counts them all as waiting, the
//! server's resident memory is read from `/proc/PID/status`; then workers
//! take the jobs (complete-and-take-next) and every client must get its own
//! job's `200` answer.
//!
//! ```sh
//! scripts/bench-waiting.sh                      # starts a release server, runs this, stops it
//! cargo run --release --example waiting_clients -- URL SERVER_PID [CLIENTS] [WORKERS]
//! ```
//!
//! Each connection is a raw HTTP/1.1 request on its own socket (no pool):
//! what a client library holding a request open costs the server is the
//! point. Every wait is bounded (60 s to connect and be counted, 120 s to be
//! served); the run fails if a client is not answered `200` with its own
//! payload echoed.

use std::time::{Duration, Instant};

use jobq::client::{Client, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Connections opened at once (the server's listen backlog is finite).
const CONNECTING: usize = 256;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One client: sends the submit, reads the whole answer; returns its status
/// line and whether the body echoes `n`.
async fn client(addr: String, n: usize, connecting: &Semaphore) -> Result<(u16, bool), String> {
    let body = format!("{{\"n\":{n}}}");
    let mut sock = {
        let _slot = connecting.acquire().await.map_err(|e| e.to_string())?;
        let mut sock = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let req = format!(
            "POST /api/submit?queue=waiting&timeout=300 HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        sock
    };
    let mut answer = Vec::new();
    sock.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let echoed = text
        .split_once("\r\n\r\n")
        .is_some_and(|(_, b)| b.contains(&body));
    Ok((status, echoed))
}

async fn waiting(c: &Client) -> u64 {
    c.stats()
        .await
        .ok()
        .and_then(|s| s["waiting_clients"].as_u64())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(pid)) = (args.first(), args.get(1)) else {
        return Err("usage: waiting_clients URL SERVER_PID [CLIENTS] [WORKERS]".into());
    };
    let pid: u32 = pid.parse()?;
    let clients: usize = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
    let workers: usize = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let addr = url
        .strip_prefix("http://")
        .ok_or("the URL must be http://HOST:PORT")?
        .trim_end_matches('/')
        .to_owned();
    let api = Client::new(url)?;
    let rss_before = rss_kib(pid).ok_or("cannot read the server's VmRSS")?;

    let began = Instant::now();
    let connecting = std::sync::Arc::new(Semaphore::new(CONNECTING));
    let tasks: Vec<_> = (0..clients)
        .map(|n| {
            let (addr, connecting) = (addr.clone(), connecting.clone());
            tokio::spawn(async move { client(addr, n, &connecting).await })
        })
        .collect();

    // Every client counted as waiting (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counted = 0;
    while Instant::now() < deadline {
        counted = waiting(&api).await;
        if counted >= clients as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_waiting = began.elapsed();
    // Let the allocator and the kernel settle before reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_waiting = rss_kib(pid).ok_or("cannot read the server's VmRSS")?;
    if counted < clients as u64 {
        return Err(format!("only {counted} of {clients} clients were waiting after 60 s").into());
    }

    // Serve them: workers take batches and complete each with its payload.
    let served_from = Instant::now();
    let work: Vec<_> = (0..workers)
        .map(|_| {
            let w = api
                .worker(vec!["waiting".into()])
                .long_poll(Duration::from_millis(500));
            tokio::spawn(async move {
                let mut done = 0usize;
                let stop = Instant::now() + Duration::from_secs(120);
                while Instant::now() < stop {
                    // Complete-and-take-next until the queue is empty.
                    let mut next = w.poll().await.map_err(|e| e.to_string())?;
                    if next.is_none() {
                        break;
                    }
                    while let Some(job) = next {
                        next = w
                            .post_and_next(&job, &Outcome::Complete(job.payload.clone()))
                            .await
                            .map_err(|e| e.to_string())?;
                        done += 1;
                    }
                }
                Ok::<usize, String>(done)
            })
        })
        .collect();
    let mut completed = 0;
    for w in work {
        completed += w.await??;
    }
    let (mut ok, mut wrong) = (0usize, Vec::new());
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Ok((200, true)))) => ok += 1,
            Ok(Ok(other)) => wrong.push(format!("{other:?}")),
            Ok(Err(e)) => wrong.push(e.to_string()),
            Err(_) => wrong.push("not answered within 120 s".into()),
        }
    }
    let served = served_from.elapsed();
    println!(
        "{{\"clients\":{clients},\"all_waiting_s\":{:.2},\"rss_before_mib\":{:.1},\"rss_waiting_mib\":{:.1},\
         \"kib_per_waiting_client\":{:.2},\"completed\":{completed},\"answered_200\":{ok},\"served_s\":{:.2},\"wrong\":{}}}",
        all_waiting.as_secs_f64(),
        rss_before as f64 / 1024.0,
        rss_waiting as f64 / 1024.0,
        (rss_waiting.saturating_sub(rss_before)) as f64 / clients as f64,
        served.as_secs_f64(),
        wrong.len()
    );
    if let Some(first) = wrong.first() {
        return Err(format!("{} clients not served right; first: {first}", wrong.len()).into());
    }
    Ok(())
}
