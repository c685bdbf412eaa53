//! `jobq worker --exec CMD`: runs a shell command once per job.
//!
//! The command gets the payload on stdin and the job's details in
//! `JOBQ_JOB_ID`, `JOBQ_ATTEMPT`, `JOBQ_QUEUE`, `JOBQ_LEASE_ID` and
//! `JOBQ_HEADERS` (the submit request's headers as a JSON object). Exit 0:
//! its stdout is the result. Otherwise the job fails with the tail of its
//! stderr. It runs in a process group of its own, so `--timeout`, a lost
//! lease or a second stop signal kill it and everything it started.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{exit, fail, positive_secs, secs, ConnArgs};
use crate::client::{Job, Outcome, ProgressSink, RunOptions};

/// How much of a failed command's stderr goes into the job's error.
pub const STDERR_TAIL: usize = 2048;

/// How long a command's output pipes may stay open after it exited (a
/// background child still holding them) before its process group is killed.
const PIPE_DRAIN: Duration = Duration::from_secs(5);

/// `jobq worker` flags.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
The command runs through /bin/sh -c, in a process group of its own, with the
job's payload on stdin and these environment variables:
  JOBQ_JOB_ID    the job's id
  JOBQ_ATTEMPT   which hand-out this is (1 for the first)
  JOBQ_QUEUE     the queue it came from
  JOBQ_LEASE_ID  this hand-out's lease
  JOBQ_HEADERS   the submit request's headers, as a JSON object
Exit status 0: its stdout is the job's result. Anything else: the job fails
with the last 2 KiB of its stderr. With --stream, each stdout line is also
sent as it appears to the clients streaming the job (`jobq submit --stream`). The lease is heartbeated while it runs; if
the job is cancelled or lost, or --timeout passes, the process group is killed.

SIGTERM/SIGINT: take no new jobs, finish the ones in hand, exit 0. A second
signal kills the running commands (their jobs are reported failed).
While the server is away the worker retries with backoff (up to 5 s apart)
and says so once.")]
pub struct WorkerArgs {
    /// Where the server is.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The command to run per job, through `/bin/sh -c` (e.g. 'tr a-z A-Z').
    #[arg(long, value_name = "CMD")]
    pub exec: String,
    /// Queues to take jobs from, in order of preference [default: default].
    #[arg(long, value_delimiter = ',', value_name = "Q1,Q2")]
    pub queue: Vec<String>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Seconds a command may run before it (and its process group) is killed
    /// and the job reported failed [default: no limit].
    #[arg(long, value_parser = positive_secs, value_name = "SECS")]
    pub timeout: Option<Duration>,
    /// Seconds each poll waits for a job.
    #[arg(long, default_value = "30", value_parser = secs, value_name = "SECS")]
    pub long_poll: Duration,
    /// Report failures as final (`retry: false`) instead of letting the
    /// server hand the job out again while attempts remain.
    #[arg(long)]
    pub no_retry: bool,
    /// Send each line the command writes to stdout to the job's streaming
    /// clients as a progress event, as it appears (the result is still the
    /// whole stdout).
    #[arg(long)]
    pub stream: bool,
    /// Take jobs over the gRPC `Work` stream (at `--grpc-url`) instead of
    /// HTTP long-polls: jobs are pushed as they arrive, up to --concurrency.
    #[arg(long)]
    pub grpc: bool,
    /// The server's gRPC address (its --grpc-listen), for --grpc:
    /// `https://` when the server has --tls-cert (--ca-cert applies).
    #[arg(
        long,
        env = "JOBQ_GRPC_URL",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub grpc_url: String,
}

/// What every job's command run shares.
struct ExecSpec {
    /// `--exec`.
    command: String,
    /// `--timeout`.
    timeout: Option<Duration>,
    /// `!--no-retry`.
    retry: bool,
    /// `--stream`.
    stream: bool,
    /// Cancelled on a second stop signal: kill every running command.
    kill_all: CancellationToken,
}

/// Runs the worker until SIGTERM/SIGINT (then finishes the jobs in hand;
/// a second signal kills them) or until the server refuses it.
pub async fn run(args: WorkerArgs) -> ExitCode {
    let client = match args.conn.client() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let worker = client.worker(args.queue.clone()).long_poll(args.long_poll);
    let stop = CancellationToken::new();
    let spec = Arc::new(ExecSpec {
        command: args.exec.clone(),
        timeout: args.timeout,
        retry: !args.no_retry,
        stream: args.stream,
        kill_all: CancellationToken::new(),
    });
    let mut signals = match super::StopSignals::new() {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot listen for stop signals: {e}")),
    };
    {
        let (stop, kill_all) = (stop.clone(), spec.kill_all.clone());
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!("stop signal: finishing the jobs in hand (a second signal kills them)");
            stop.cancel();
            signals.next().await;
            tracing::warn!("second stop signal: killing running commands");
            kill_all.cancel();
        });
    }
    tracing::info!(
        url = %if args.grpc { args.grpc_url.as_str() } else { client.base_url() },
        queues = ?args.queue,
        concurrency = args.concurrency,
        command = %args.exec,
        "jobq worker started"
    );
    let opts = RunOptions {
        concurrency: args.concurrency as usize,
    };
    let handler = move |job, lost| run_command(spec.clone(), job, lost);
    let r = if args.grpc {
        let mut w = crate::grpc::worker::StreamWorker::new(
            &args.grpc_url,
            args.queue.clone(),
            args.conn.token.clone(),
        );
        if let Some(path) = &args.conn.ca_cert {
            match std::fs::read(path) {
                Ok(pem) => w = w.ca_cert_pem(&pem),
                Err(e) => {
                    return fail(format!(
                        "cannot read CA certificate {}: {e}",
                        path.display()
                    ))
                }
            }
        }
        w.run(opts, stop, handler).await.map_err(|e| e.to_string())
    } else {
        worker
            .run(opts, stop, handler)
            .await
            .map_err(|e| e.to_string())
    };
    match r {
        Ok(()) => {
            tracing::info!("worker stopped");
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(e),
    }
}

/// How a command run ended.
enum End {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut(Duration),
    Lost,
    Killed,
}

/// Kills the process group `pgid` (a command and everything it started).
fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no
        // memory is involved. The group is ours: its leader is our child,
        // not yet reaped, or a member still holds our pipes open.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Reads everything.
async fn read_all(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = r.read_to_end(&mut out).await;
    out
}

/// Reads everything, sending each line (with its newline) as a progress
/// event as soon as it is complete; a last line without one goes at the end.
async fn read_streaming(r: impl AsyncRead + Unpin, progress: ProgressSink) -> Vec<u8> {
    let mut r = tokio::io::BufReader::new(r);
    let mut out = Vec::new();
    loop {
        let start = out.len();
        match r.read_until(b'\n', &mut out).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                progress.send(Bytes::copy_from_slice(&out[start..]));
            }
        }
    }
    out
}

/// Reads everything, keeping the last `keep` bytes.
async fn read_tail(mut r: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut tail = Vec::with_capacity(keep * 2);
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > keep * 2 {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

/// The stderr tail as one readable string.
fn tail_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

fn with_tail(msg: String, tail: &[u8]) -> String {
    let t = tail_text(tail);
    if t.is_empty() {
        msg
    } else {
        format!("{msg}: {t}")
    }
}

/// Runs the command for one job.
async fn run_command(spec: Arc<ExecSpec>, job: Job, lost: CancellationToken) -> Outcome {
    let failed = |error: String| Outcome::Fail {
        error,
        retry: spec.retry,
    };
    let mut child = match command(&spec, &job).spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start `{}`: {e}", spec.command)),
    };
    let Some(pgid) = child.id() else {
        return failed("the command vanished before it could be watched".into());
    };
    tracing::debug!(job.id = %job.id, attempt = job.attempt, pid = pgid, "running command");
    if let Some(mut stdin) = child.stdin.take() {
        let payload = job.payload.clone();
        // A command that does not read its stdin closes the pipe: ignore EPIPE.
        tokio::spawn(async move {
            let _ = stdin.write_all(&payload).await;
        });
    }
    let stdout = child.stdout.take().expect("piped");
    let mut out = if spec.stream {
        tokio::spawn(read_streaming(stdout, job.progress.clone()))
    } else {
        tokio::spawn(read_all(stdout))
    };
    let mut err = tokio::spawn(read_tail(child.stderr.take().expect("piped"), STDERR_TAIL));

    let deadline = async {
        match spec.timeout {
            Some(t) => {
                tokio::time::sleep(t).await;
                t
            }
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        s = child.wait() => End::Exited(s),
        t = deadline => End::TimedOut(t),
        _ = lost.cancelled() => End::Lost,
        _ = spec.kill_all.cancelled() => End::Killed,
    };
    if !matches!(end, End::Exited(_)) {
        kill_group(pgid);
        let _ = child.wait().await;
    }
    // A background process the command left behind may still hold the pipes.
    let drained = tokio::time::timeout(PIPE_DRAIN, async {
        let o = (&mut out).await.unwrap_or_default();
        let e = (&mut err).await.unwrap_or_default();
        (o, e)
    })
    .await;
    let (stdout, stderr) = match drained {
        Ok(v) => v,
        Err(_) => {
            kill_group(pgid);
            (out.await.unwrap_or_default(), err.await.unwrap_or_default())
        }
    };
    outcome(end, &job, stdout, &stderr, failed)
}

/// `--exec`'s command for `job`: its payload on stdin, its id, attempt,
/// queue, lease and headers in the environment, in a process group of its
/// own (killed as one).
fn command(spec: &ExecSpec, job: &Job) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .env("JOBQ_JOB_ID", &job.id)
        .env("JOBQ_ATTEMPT", job.attempt.to_string())
        .env("JOBQ_QUEUE", &job.queue)
        .env("JOBQ_LEASE_ID", &job.lease_id)
        .env(
            "JOBQ_HEADERS",
            serde_json::Value::Object(job.headers.clone()).to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// What a command's end makes of its job: its stdout as the result, or a
/// failure saying why (with the tail of its stderr).
fn outcome(
    end: End,
    job: &Job,
    stdout: Vec<u8>,
    stderr: &[u8],
    failed: impl Fn(String) -> Outcome,
) -> Outcome {
    match end {
        End::Exited(Ok(st)) if st.success() => {
            tracing::debug!(job.id = %job.id, bytes = stdout.len(), "command succeeded");
            Outcome::Complete(Bytes::from(stdout))
        }
        End::Exited(Ok(st)) => {
            let how = match (
                st.code(),
                std::os::unix::process::ExitStatusExt::signal(&st),
            ) {
                (Some(c), _) => format!("command exited with status {c}"),
                (None, Some(s)) => format!("command was killed by signal {s}"),
                _ => "command failed".to_owned(),
            };
            tracing::info!(job.id = %job.id, "{how}");
            failed(with_tail(how, stderr))
        }
        End::Exited(Err(e)) => failed(format!("could not wait for the command: {e}")),
        End::TimedOut(t) => {
            tracing::warn!(job.id = %job.id, "command timed out; killed its process group");
            failed(with_tail(
                format!(
                    "command timed out after {}s and was killed",
                    t.as_secs_f64()
                ),
                stderr,
            ))
        }
        End::Lost => {
            tracing::warn!(job.id = %job.id, "job is no longer ours; killed its command");
            failed("job was lost or cancelled; command killed".into())
        }
        End::Killed => failed("worker was stopped; command killed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_keeps_the_end() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let t = read_tail(&data[..], 100).await;
        assert_eq!(t, &data[data.len() - 100..]);
        let short = read_tail(&b"oops\n"[..], 100).await;
        assert_eq!(tail_text(&short), "oops");
    }
}
