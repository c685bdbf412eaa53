//! `jobq submit [DATA | -]`: submit a job, print its result.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{exit, exit_code, fail, secs, ConnArgs};
use crate::client::{Error, JobEvent, SubmitOptions};

/// `jobq submit` flags.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Exit codes:
  0  the job completed; its result is on stdout (with --async: its id)
  1  the server could not be reached, or another error
  2  a malformed flag or value
  3  the job failed (502); the error is on stderr
  4  the job was cancelled (410)
  5  the wait timed out (202): the job goes on; its id is on stdout,
     fetch it later with `jobq job ID`
  6  the server refused the job (400, 401, 403, 413, 422, 503, ...)")]
pub struct SubmitArgs {
    /// Where the server is.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Queue to submit to [default: default].
    #[arg(long)]
    pub queue: Option<String>,
    /// Priority (higher first).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Seconds to wait for the result (0 = forever) [default: the server's --wait-timeout].
    #[arg(long, value_parser = secs, value_name = "SECS")]
    pub timeout: Option<Duration>,
    /// Do not wait: print the job id and exit.
    #[arg(long = "async")]
    pub no_wait: bool,
    /// A repeated submit with the same key attaches to the first job.
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
    /// Print the worker's progress events as they arrive (then the result,
    /// unless it is exactly what was streamed).
    #[arg(long, conflicts_with = "no_wait")]
    pub stream: bool,
    /// The payload's Content-Type.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// The payload; `-` or nothing reads it from stdin.
    #[arg(value_name = "DATA | -")]
    pub data: Option<String>,
}

/// Submits, prints the outcome, and returns its exit code.
pub async fn run(args: SubmitArgs) -> ExitCode {
    let client = match args.conn.client() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let payload = match args.data.as_deref() {
        Some(d) if d != "-" => d.as_bytes().to_vec(),
        None if std::io::stdin().is_terminal() => {
            eprintln!(
                "jobq: error: no payload: give DATA, or pipe it in (`-` reads the terminal until Ctrl-D)"
            );
            return ExitCode::from(exit::USAGE);
        }
        _ => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                return fail(format!("cannot read the payload from stdin: {e}"));
            }
            buf
        }
    };
    let opts = SubmitOptions {
        queue: args.queue,
        priority: args.priority,
        timeout: args.timeout,
        idempotency_key: args.idempotency_key,
        content_type: args.content_type,
    };
    if args.no_wait {
        return match client.submit_async(payload, &opts).await {
            Ok(id) => {
                println!("{id}");
                ExitCode::from(exit::OK)
            }
            Err(e) => report(&e),
        };
    }
    if args.stream {
        return stream(&client, payload, &opts).await;
    }
    match client.submit(payload, &opts).await {
        Ok(done) => print_result(&done.result),
        Err(e) => report(&e),
    }
}

/// Writes a result to stdout (with a newline on a terminal).
fn print_result(result: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let mut r = out.write_all(result);
    if std::io::stdout().is_terminal() && !result.ends_with(b"\n") {
        r = r.and_then(|()| out.write_all(b"\n"));
    }
    match r.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => fail(format!("cannot write the result: {e}")),
    }
}

/// `--stream`: progress events to stdout as they come (their bytes, as a
/// payload is decoded), a gap noted on stderr, then the
/// outcome as without `--stream`; the result is not printed again when it
/// is exactly what was streamed (`jobq worker --exec --stream`).
async fn stream(
    client: &crate::client::Client,
    payload: Vec<u8>,
    opts: &SubmitOptions,
) -> ExitCode {
    use futures_util::StreamExt;
    let mut events = match client.stream(payload, opts).await {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    let mut streamed: Vec<u8> = Vec::new();
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return report(&e),
        };
        match ev {
            JobEvent::Progress { data, .. } => {
                streamed.extend_from_slice(&data);
                let mut out = std::io::stdout().lock();
                let r = out.write_all(&data).and_then(|()| out.flush());
                if let Err(e) = r {
                    return fail(format!("cannot write the output: {e}"));
                }
            }
            JobEvent::Gap { dropped } => {
                eprintln!("jobq: {dropped} progress event(s) were dropped before they reached this client");
            }
            fin => {
                return match fin.into_result() {
                    Ok(done) if done.result == streamed => ExitCode::from(exit::OK),
                    Ok(done) => {
                        if !streamed.is_empty() && !streamed.ends_with(b"\n") {
                            println!();
                        }
                        print_result(&done.result)
                    }
                    Err(e) => report(&e),
                };
            }
        }
    }
    report(&Error::Protocol(
        "the event stream ended without a final event".into(),
    ))
}

/// Prints an error (and, for a timed-out wait, the job id on stdout).
pub(crate) fn report(e: &Error) -> ExitCode {
    match e {
        Error::StillRunning { job_id } => {
            println!("{job_id}");
            eprintln!(
                "jobq: job {job_id} is not finished yet (the wait timed out); it goes on: \
                 fetch it later with `jobq job {job_id}`"
            );
        }
        Error::Rejected {
            status,
            message,
            retry_after,
            ..
        } => match retry_after {
            Some(r) => eprintln!(
                "jobq: refused ({status}): {message} (retry after {}s)",
                r.as_secs()
            ),
            None => eprintln!("jobq: refused ({status}): {message}"),
        },
        other => eprintln!("jobq: {other}"),
    }
    ExitCode::from(exit_code(e))
}
