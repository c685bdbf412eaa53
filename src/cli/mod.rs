//! The client-side subcommands: `worker`, `submit`, `job`, `stats`, `jobs`,
//! `cancel`, `clear` and `bench`. Each speaks to a server over HTTP through
//! [`crate::client`]; none of them touches the server's modules, except
//! `bench --embedded`, which starts a server in process.
//!
//! Exit codes are in [`exit`] and documented in `docs/cli.md`.

pub mod admin;
pub mod bench;
pub mod submit;
pub mod worker;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{self, Client, URL_DEFAULT};
use crate::config::ServeArgs;

/// jobq: a synchronous job queue. A client's HTTP request is held open until
/// a worker finishes its job; the worker's result is the response.
#[derive(Parser, Debug)]
#[command(name = "jobq", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to run; without one, `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve` flags, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
// Parsed once at start-up: the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Run a shell command once per job: payload on stdin, stdout is the result.
    Worker(worker::WorkerArgs),
    /// Submit a job and print its result.
    Submit(submit::SubmitArgs),
    /// Show one job; print its result once completed.
    Job(admin::JobArgs),
    /// Show the server's counts per status and queue.
    Stats(admin::StatsArgs),
    /// List jobs, newest first.
    Jobs(admin::JobsArgs),
    /// Cancel a job.
    Cancel(admin::CancelArgs),
    /// Cancel every pending and running job and forget ended ones.
    Clear(admin::ClearArgs),
    /// Load a server through its HTTP API and report jobs/s and latency.
    Bench(bench::BenchArgs),
}

/// Exit codes of the client commands (clap's usage errors exit with 2).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The server could not be reached, or another error (bad URL, I/O).
    pub const ERROR: u8 = 1;
    /// A malformed flag or value (clap's code).
    pub const USAGE: u8 = 2;
    /// The job failed (`502`).
    pub const FAILED: u8 = 3;
    /// The job was cancelled (`410`).
    pub const CANCELLED: u8 = 4;
    /// The wait ended before the job did (`202`): its id is printed on stdout.
    pub const TIMED_OUT: u8 = 5;
    /// The server refused the request (`4xx` other than `410`, `503`).
    pub const REJECTED: u8 = 6;
}

/// Where the server is (shared by every client command).
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// The server's base URL.
    #[arg(long, env = "JOBQ_URL", default_value = URL_DEFAULT)]
    pub url: String,
    /// Sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "JOBQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate(s) to trust for an `https://` URL instead of the
    /// public roots (a private CA, or the server's self-signed certificate).
    #[arg(long, env = "JOBQ_CA_CERT", value_name = "PATH")]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl ConnArgs {
    /// A client for `--url`, with `--token` and `--ca-cert` when given.
    ///
    /// # Errors
    /// A bad URL, token or CA file.
    pub fn client(&self) -> client::Result<Client> {
        connect(&self.url, self.token.as_deref(), self.ca_cert.as_deref())
    }
}

/// A client for `url` with an optional token and private CA.
///
/// # Errors
/// A bad URL, token or CA file.
pub(crate) fn connect(
    url: &str,
    token: Option<&str>,
    ca_cert: Option<&std::path::Path>,
) -> client::Result<Client> {
    let mut b = Client::builder(url);
    if let Some(t) = token {
        b = b.token(t);
    }
    if let Some(path) = ca_cert {
        b = b.ca_cert_file(path)?;
    }
    b.build()
}

/// A non-negative number of seconds (fractions allowed).
pub(crate) fn secs(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 1e9"
        )),
    }
}

/// A positive number of seconds.
pub(crate) fn positive_secs(s: &str) -> Result<Duration, String> {
    secs(s).and_then(|d| {
        if d.is_zero() {
            Err("must be greater than 0".into())
        } else {
            Ok(d)
        }
    })
}

/// The exit code for a client error.
pub fn exit_code(e: &client::Error) -> u8 {
    use client::Error as E;
    match e {
        E::JobFailed { .. } => exit::FAILED,
        E::JobCancelled { .. } => exit::CANCELLED,
        E::StillRunning { .. } => exit::TIMED_OUT,
        E::Rejected { .. } => exit::REJECTED,
        E::Unreachable { .. } | E::Protocol(_) | E::LeaseLost { .. } => exit::ERROR,
    }
}

/// Prints `jobq: error: …` and returns [`exit::ERROR`].
pub(crate) fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("jobq: error: {msg}");
    ExitCode::from(exit::ERROR)
}

/// Logs to stderr (`RUST_LOG` overrides the `info` default).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs a client subcommand. `serve` is not one (the binary handles it).
pub fn run(cmd: Command) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    match cmd {
        Command::Serve(_) => fail("`serve` is not a client command"),
        Command::Worker(a) => {
            init_logging();
            rt.block_on(worker::run(a))
        }
        Command::Submit(a) => rt.block_on(submit::run(a)),
        Command::Job(a) => rt.block_on(admin::job(a)),
        Command::Stats(a) => rt.block_on(admin::stats(a)),
        Command::Jobs(a) => rt.block_on(admin::jobs(a)),
        Command::Cancel(a) => rt.block_on(admin::cancel(a)),
        Command::Clear(a) => rt.block_on(admin::clear(a)),
        Command::Bench(a) => rt.block_on(bench::run(a)),
    }
}

/// SIGTERM and SIGINT, as a stream: each one is seen, even when they come
/// faster than they are waited for.
pub(crate) struct StopSignals {
    /// SIGTERM.
    term: tokio::signal::unix::Signal,
    /// SIGINT.
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts listening.
    ///
    /// # Errors
    /// The signal handlers could not be installed.
    pub(crate) fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_exit_code() {
        let codes = [
            exit::OK,
            exit::ERROR,
            exit::USAGE,
            exit::FAILED,
            exit::CANCELLED,
            exit::TIMED_OUT,
            exit::REJECTED,
        ];
        let mut sorted = codes.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
    }
}
