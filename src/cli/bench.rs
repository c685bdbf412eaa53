//! `jobq bench`: load through the real HTTP API. `--clients` tasks submit
//! synchronously in a loop, `--workers` tasks poll (HTTP long-polls, or with
//! `--grpc` one gRPC `Work` stream each) and echo each payload back as the
//! result; every result is checked against the payload its request sent
//! (each payload is unique), and latencies go into a histogram. With
//! `--server-pid` the server's CPU time per job is reported too.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{exit, fail, positive_secs, secs};
use crate::client::{SubmitOptions, URL_DEFAULT};

/// How long one bench submit may wait before it counts as an error.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest latency the histogram records, in microseconds (one hour).
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// `jobq bench` flags.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The server to load [default: $JOBQ_URL, else http://127.0.0.1:3000].
    #[arg(long, conflicts_with = "embedded")]
    pub url: Option<String>,
    /// Start a server inside this process, with in-memory storage
    /// (`--storage memory`: nothing on disk) on an ephemeral loopback port,
    /// and load that one. Measures the server and HTTP stack, not a store.
    #[arg(long)]
    pub embedded: bool,
    /// Sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "JOBQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate(s) to trust for an `https://` URL (a private CA).
    #[arg(long, env = "JOBQ_CA_CERT", value_name = "PATH")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Concurrent polling workers.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub workers: u32,
    /// Seconds to submit for (jobs in flight then finish).
    #[arg(long, default_value = "10", value_parser = positive_secs, value_name = "SECS")]
    pub duration: Duration,
    /// Size of each payload.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=(64 << 20)))]
    pub payload_bytes: u64,
    /// Seconds each worker poll waits for a job.
    #[arg(long, default_value = "5", value_parser = secs, value_name = "SECS")]
    pub long_poll: Duration,
    /// Queue the bench jobs go through.
    #[arg(long, default_value = "bench")]
    pub queue: String,
    /// Print the report as JSON (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Workers take jobs over gRPC `Work` streams (one stream each) instead
    /// of HTTP long-polls; clients still submit over HTTP.
    #[arg(long)]
    pub grpc: bool,
    /// The server's gRPC address, for `--grpc` [default: http://127.0.0.1:50051;
    /// with --embedded, the embedded server's].
    #[arg(long, value_name = "URL")]
    pub grpc_url: Option<String>,
    /// With `--grpc`: jobs each stream may hold at once (its credits).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub credits: u32,
    /// The server's process id: report its CPU time (user + system, from
    /// /proc/PID/stat) per completed job.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
}

/// CPU time (user + system) of process `pid` so far, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// One `--grpc` bench worker: a `Work` stream granted `credits`, each job's
/// payload sent back as its result with one credit, until `stop`.
async fn grpc_worker(
    url: String,
    queue: String,
    credits: u32,
    token: Option<String>,
    stop: CancellationToken,
) -> Result<(), String> {
    use crate::grpc::pb;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad gRPC URL {url:?}: {e}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot reach the gRPC server at {url}: {e}"))?;
    let mut client = pb::worker_service_client::WorkerServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let _ = tx
        .send(pb::WorkRequest {
            queues: vec![queue],
            credits,
            ..Default::default()
        })
        .await;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| "the token is not a valid metadata value".to_owned())?;
        req.metadata_mut().insert("authorization", v);
    }
    let mut inbound = client
        .work(req)
        .await
        .map_err(|s| format!("Work stream refused: {}", s.message()))?
        .into_inner();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => {
                let _ = tx.send(pb::WorkRequest { drain: true, ..Default::default() }).await;
                return Ok(());
            }
            m = inbound.message() => m,
        };
        match msg {
            Ok(Some(pb::WorkResponse {
                event: Some(pb::work_response::Event::Job(j)),
            })) => {
                let (payload, result) = if j.payload_bytes.is_empty() {
                    (j.payload, bytes::Bytes::new())
                } else {
                    (String::new(), j.payload_bytes)
                };
                let done = pb::WorkRequest {
                    credits: 1,
                    action: Some(pb::work_request::Action::Complete(pb::JobResult {
                        job_id: j.id,
                        payload,
                        lease_id: j.lease_id,
                        result,
                    })),
                    ..Default::default()
                };
                if tx.send(done).await.is_err() {
                    return Err("Work stream closed".into());
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("Work stream ended".into()),
            Err(s) => return Err(format!("Work stream failed: {}", s.message())),
        }
    }
}

/// What the clients counted.
#[derive(Default)]
struct Tally {
    /// Results that matched their request.
    ok: AtomicU64,
    /// Submits that did not complete.
    errors: AtomicU64,
    /// Results that did not match their request: must stay 0.
    mismatches: AtomicU64,
    /// The first error, for the report.
    first_error: Mutex<Option<String>>,
}

/// A unique payload of (at least) `len` bytes.
fn payload(client: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut p = format!("bench:{client}:{seq}:").into_bytes();
    if p.len() < len {
        p.resize(len, b'x');
    }
    p
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// A server inside this process, for `--embedded`.
struct Embedded {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_embedded(grpc: bool) -> anyhow::Result<(String, Option<String>, Embedded)> {
    let cli = super::Cli::try_parse_from(["jobq", "serve", "--storage", "memory"])?;
    let Some(super::Command::Serve(args)) = cli.command else {
        anyhow::bail!("could not build the embedded server's flags");
    };
    let store = crate::store::open(&crate::store::Backend::Memory).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Never the default port 50051: an ephemeral one, only when asked for.
    let grpc = match grpc {
        true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
        false => None,
    };
    let grpc_url = match &grpc {
        Some(l) => Some(format!("http://{}", l.local_addr()?)),
        None => None,
    };
    let broker = crate::broker::Broker::new(store, args.broker_config());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(crate::server::run_with_grpc(
        listener,
        grpc,
        broker,
        args.server_config()?,
        async move {
            let _ = rx.await;
        },
    ));
    Ok((
        format!("http://{addr}"),
        grpc_url,
        Embedded { stop, handle },
    ))
}

/// Runs the bench and prints its report.
pub async fn run(a: BenchArgs) -> ExitCode {
    let (url, embedded_grpc, embedded) = if a.embedded {
        match start_embedded(a.grpc).await {
            Ok((u, g, e)) => (u, g, Some(e)),
            Err(e) => return fail(format!("cannot start the embedded server: {e:#}")),
        }
    } else {
        let url = a
            .url
            .clone()
            .or_else(|| std::env::var("JOBQ_URL").ok())
            .unwrap_or_else(|| URL_DEFAULT.into());
        (url, None, None)
    };
    let grpc_url = a
        .grpc_url
        .clone()
        .or(embedded_grpc)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let client = match super::connect(&url, a.token.as_deref(), a.ca_cert.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = client.stats().await {
        if e.is_transient() {
            return fail(e);
        }
    }

    let stop_workers = CancellationToken::new();
    let grpc_failed = Arc::new(Mutex::new(None::<String>));
    let mut workers = if a.grpc {
        spawn_grpc_workers(&a, grpc_url, &stop_workers, &grpc_failed)
    } else {
        spawn_http_workers(&a, &client, &stop_workers)
    };
    let cpu_before = a.server_pid.and_then(cpu_time);
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let clients = spawn_clients(&a, &client, &tally, start + a.duration);
    let hist = follow(&a, clients, &tally, start).await;
    let elapsed = start.elapsed();
    let cpu_after = a.server_pid.and_then(cpu_time);
    stop_workers.cancel();
    while workers.join_next().await.is_some() {}
    if let Some(e) = embedded {
        let _ = e.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), e.handle).await;
    }

    let ok = tally.ok.load(Ordering::Relaxed);
    let report = Report {
        ok,
        errors: tally.errors.load(Ordering::Relaxed),
        mismatches: tally.mismatches.load(Ordering::Relaxed),
        elapsed,
        hist,
        first_error: tally
            .first_error
            .lock()
            .clone()
            .or_else(|| grpc_failed.lock().clone()),
        cpu_us_per_job: match (cpu_before, cpu_after) {
            (Some(b), Some(e)) if ok > 0 => {
                Some(e.saturating_sub(b).as_secs_f64() * 1e6 / ok as f64)
            }
            _ => None,
        },
    };
    report.print(&a, &url);
    if report.mismatches > 0 {
        eprintln!(
            "jobq: error: {} result(s) did not belong to their request",
            report.mismatches
        );
        return ExitCode::from(exit::ERROR);
    }
    if ok == 0 || report.errors > 0 {
        return ExitCode::from(exit::ERROR);
    }
    ExitCode::from(exit::OK)
}

/// `--workers` HTTP workers, each long-polling and echoing every payload
/// back as its result until `stop`.
fn spawn_http_workers(
    a: &BenchArgs,
    client: &crate::client::Client,
    stop: &CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..a.workers {
        let w = client.worker(vec![a.queue.clone()]).long_poll(a.long_poll);
        let stop = stop.clone();
        workers.spawn(async move {
            loop {
                let polled = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = w.poll() => r,
                };
                match polled {
                    Ok(Some(job)) => {
                        let _ = w.complete(&job, job.payload.clone()).await;
                    }
                    Ok(None) => {}
                    Err(_) => {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                }
            }
        });
    }
    workers
}

/// `--workers` gRPC stream workers (see [`grpc_worker`]); the first one to
/// fail leaves its error in `failed`.
fn spawn_grpc_workers(
    a: &BenchArgs,
    url: String,
    stop: &CancellationToken,
    failed: &Arc<Mutex<Option<String>>>,
) -> tokio::task::JoinSet<()> {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..a.workers {
        let (url, queue, token) = (url.clone(), a.queue.clone(), a.token.clone());
        let (stop, failed) = (stop.clone(), failed.clone());
        let credits = a.credits;
        workers.spawn(async move {
            if let Err(e) = grpc_worker(url, queue, credits, token, stop).await {
                failed.lock().get_or_insert(e);
            }
        });
    }
    workers
}

/// `--clients` clients, each submitting unique payloads synchronously until
/// `deadline` and checking every result; each returns its latencies.
fn spawn_clients(
    a: &BenchArgs,
    client: &crate::client::Client,
    tally: &Arc<Tally>,
    deadline: Instant,
) -> tokio::task::JoinSet<Histogram<u64>> {
    let opts = SubmitOptions {
        queue: Some(a.queue.clone()),
        timeout: Some(SUBMIT_TIMEOUT),
        ..Default::default()
    };
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..a.clients {
        let (client, tally, opts) = (client.clone(), tally.clone(), opts.clone());
        let len = a.payload_bytes as usize;
        clients.spawn(async move {
            let mut hist = new_histogram();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let p = bytes::Bytes::from(payload(c, seq, len));
                let t0 = Instant::now();
                match client.submit(p.clone(), &opts).await {
                    Ok(done) if done.result == p => {
                        let us = t0.elapsed().as_micros().clamp(1, LATENCY_MAX_US as u128);
                        let _ = hist.record(us as u64);
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        tally.mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        tally
                            .first_error
                            .lock()
                            .get_or_insert_with(|| e.to_string());
                        if e.is_transient() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            hist
        });
    }
    clients
}

/// Shows progress (unless `--json`) until every client is done; their
/// latencies merged.
async fn follow(
    a: &BenchArgs,
    mut clients: tokio::task::JoinSet<Histogram<u64>>,
    tally: &Tally,
    start: Instant,
) -> Histogram<u64> {
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(a.duration.as_millis() as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
                .expect("valid template"),
        );
        b
    };
    let mut hist = new_histogram();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut last_n, mut last_t) = (0u64, Instant::now());
    loop {
        tokio::select! {
            done = clients.join_next() => match done {
                Some(Ok(h)) => { let _ = hist.add(&h); }
                Some(Err(e)) => { tally.first_error.lock().get_or_insert_with(|| e.to_string()); }
                None => break,
            },
            _ = tick.tick() => {
                let n = tally.ok.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (n - last_n) as f64 / now.duration_since(last_t).as_secs_f64().max(1e-3);
                (last_n, last_t) = (n, now);
                bar.set_position((now.duration_since(start).as_millis() as u64).min(a.duration.as_millis() as u64));
                bar.set_message(format!("{n} jobs, {rate:.0} jobs/s"));
            }
        }
    }
    bar.finish_and_clear();
    hist
}

/// What a bench measured.
struct Report {
    ok: u64,
    errors: u64,
    mismatches: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    first_error: Option<String>,
    cpu_us_per_job: Option<f64>,
}

impl Report {
    /// Prints the report, as JSON with `--json`.
    fn print(&self, a: &BenchArgs, url: &str) {
        let Report {
            ok,
            errors,
            mismatches,
            elapsed,
            ref hist,
            ref first_error,
            cpu_us_per_job,
        } = *self;
        let rate = ok as f64 / elapsed.as_secs_f64();
        let ms = |us: u64| us as f64 / 1000.0;
        let (p50, p90, p99, max) = if ok == 0 {
            (0.0, 0.0, 0.0, 0.0)
        } else {
            (
                ms(hist.value_at_quantile(0.50)),
                ms(hist.value_at_quantile(0.90)),
                ms(hist.value_at_quantile(0.99)),
                ms(hist.max()),
            )
        };
        if a.json {
            let report = json!({
                "url": url,
                "embedded": a.embedded,
                "clients": a.clients,
                "workers": a.workers,
                "worker_transport": if a.grpc { "grpc-stream" } else { "http" },
                "credits": a.grpc.then_some(a.credits),
                "server_cpu_us_per_job": cpu_us_per_job,
                "duration_s": elapsed.as_secs_f64(),
                "payload_bytes": a.payload_bytes,
                "jobs": ok,
                "errors": errors,
                "mismatches": mismatches,
                "jobs_per_s": rate,
                "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max},
                "first_error": first_error,
            });
            println!("{report}");
            return;
        }
        let what = if a.embedded {
            format!("{url} (embedded, memory storage)")
        } else {
            url.to_owned()
        };
        let workers = if a.grpc {
            format!("gRPC stream workers ({} credits each)", a.credits)
        } else {
            "HTTP workers".to_owned()
        };
        println!(
            "jobq bench: {} clients, {} {workers}, {:.1}s, {}-byte payloads, {what}",
            a.clients,
            a.workers,
            elapsed.as_secs_f64(),
            a.payload_bytes
        );
        println!("jobs:        {ok} completed, {errors} errors, {mismatches} mismatched results");
        println!("throughput:  {rate:.1} jobs/s");
        println!(
            "latency:     p50 {p50:.2} ms   p90 {p90:.2} ms   p99 {p99:.2} ms   max {max:.2} ms"
        );
        if let Some(cpu) = cpu_us_per_job {
            println!("server CPU:  {cpu:.1} µs/job");
        }
        if let Some(e) = first_error {
            println!("first error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_unique_and_sized() {
        assert_eq!(payload(1, 2, 100).len(), 100);
        assert_ne!(payload(1, 2, 100), payload(2, 1, 100));
        assert_ne!(payload(1, 12, 0), payload(11, 2, 0));
        assert!(std::str::from_utf8(&payload(1, 2, 0)).is_ok());
    }
}
