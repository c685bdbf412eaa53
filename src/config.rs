//! The server's configuration: every `serve` flag also reads `JOBQ_<FLAG>`;
//! `PORT` and `GRPC_PORT` are honoured for compatibility. The subcommands
//! that wrap it live in [`crate::cli`], which imports this module (never the
//! other way round).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};

use crate::auth::{Auth, Secret, TokenSources};
use crate::broker::BrokerConfig;
use crate::server::ServerConfig;
use crate::store::SyncMode;
use crate::tls::{Tls, TlsFiles};

/// Default `--listen`.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:3000";

/// Where jobs are kept.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// The embedded database in `--data-dir` (durable).
    Embedded,
    /// In memory only: nothing survives a restart.
    Memory,
    /// A PostgreSQL database shared by several nodes (needs `--postgres-url`).
    Postgres,
}

/// `--sync` takes the store's own type: one name for the mode everywhere.
impl ValueEnum for SyncMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[SyncMode::Full, SyncMode::Normal]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            SyncMode::Full => {
                PossibleValue::new("full").help("Answer writes once the WAL is fsynced: they survive power loss")
            }
            SyncMode::Normal => PossibleValue::new("normal").help(
                "Answer writes once they are in the WAL (they survive a crash of jobq) and fsync it within 50 ms",
            ),
        })
    }
}

/// Log line format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A feature switch.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// A non-negative number of seconds (fractions allowed).
fn secs(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 1e9"
        )),
    }
}

/// `--grpc-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcListen {
    /// No gRPC server.
    Off,
    /// Serve gRPC here.
    Addr(SocketAddr),
}

fn grpc_listen(s: &str) -> Result<GrpcListen, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(GrpcListen::Off);
    }
    s.trim()
        .parse()
        .map(GrpcListen::Addr)
        .map_err(|_| format!("{s:?} is neither an address like 127.0.0.1:50051 nor `off`"))
}

/// A positive number of seconds.
fn positive_secs(s: &str) -> Result<Duration, String> {
    secs(s).and_then(|d| {
        if d.is_zero() {
            Err("must be greater than 0".into())
        } else {
            Ok(d)
        }
    })
}

/// Parses a token flag without echoing a refused value (clap's own message
/// would print it: it may be a secret with a stray space or newline).
#[derive(Clone)]
struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        let name = arg
            .and_then(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .unwrap_or_else(|| "token".into());
        value
            .to_str()
            .ok_or(())
            .and_then(|v| v.parse::<Secret>().map_err(|_| ()))
            .map_err(|()| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("invalid value for '{name}': a token must be one or more visible ASCII characters, without spaces (value not shown)\n"),
                )
            })
    }
}

/// `jobq serve` flags.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:3000, or 0.0.0.0:$PORT when PORT is set].
    #[arg(long, env = "JOBQ_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// gRPC worker API address, or `off` [default: 127.0.0.1:50051, or
    /// 0.0.0.0:$GRPC_PORT when GRPC_PORT is set].
    #[arg(long, env = "JOBQ_GRPC_LISTEN", value_parser = grpc_listen)]
    pub grpc_listen: Option<GrpcListen>,

    /// Directory of the embedded store.
    #[arg(long, env = "JOBQ_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Where jobs are kept.
    #[arg(long, env = "JOBQ_STORAGE", value_enum, default_value_t = Storage::Embedded)]
    pub storage: Storage,

    /// Embedded store: `full` answers writes once fsynced (survives power
    /// loss); `normal` once written, fsyncing within 50 ms (survives `kill -9`;
    /// a power cut loses at most the last 50 ms).
    #[arg(long, env = "JOBQ_SYNC", value_enum, default_value_t = SyncMode::Full)]
    pub sync: SyncMode,

    /// PostgreSQL connection URL; implies `--storage postgres`.
    #[arg(long, env = "JOBQ_POSTGRES_URL", required_if_eq("storage", "postgres"))]
    pub postgres_url: Option<String>,

    /// Most PostgreSQL connections this node opens for requests (plus one for LISTEN).
    #[arg(long, env = "JOBQ_POSTGRES_POOL_SIZE", default_value_t = crate::store::postgres::POOL_SIZE_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub postgres_pool_size: usize,

    /// How long a sync submit waits for its result, in seconds (0 = forever).
    #[arg(long, env = "JOBQ_WAIT_TIMEOUT", default_value = "60", value_parser = secs)]
    pub wait_timeout: Duration,

    /// Seconds a polled job stays with its worker without a heartbeat or result.
    #[arg(long, env = "JOBQ_LEASE", default_value = "60", value_parser = positive_secs)]
    pub lease: Duration,

    /// Hand-outs after which a job that keeps failing is failed for good.
    #[arg(long, env = "JOBQ_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Seconds an ended job (and its result) stays readable.
    #[arg(long, env = "JOBQ_RESULT_TTL", default_value = "3600", value_parser = secs)]
    pub result_ttl: Duration,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "JOBQ_MAX_BODY", default_value_t = 10 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=(1 << 32)))]
    pub max_body: u64,

    /// Submits are refused (503) while this many jobs are pending.
    #[arg(long, env = "JOBQ_MAX_QUEUED", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued: u64,

    /// Token clients must send as `Authorization: Bearer TOKEN` on
    /// `/api/submit` and `/api/jobs…` (repeat the flag for several).
    #[arg(long, env = "JOBQ_CLIENT_TOKEN", hide_env_values = true, value_name = "TOKEN", value_parser = SecretParser)]
    pub client_token: Vec<Secret>,

    /// Token workers must send on `/api/worker/…` (repeatable).
    #[arg(long, env = "JOBQ_WORKER_TOKEN", hide_env_values = true, value_name = "TOKEN", value_parser = SecretParser)]
    pub worker_token: Vec<Secret>,

    /// Token for `/api/admin/…`, accepted on every endpoint (repeatable).
    /// Without one, admin endpoints answer loopback clients only.
    #[arg(long, env = "JOBQ_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN", value_parser = SecretParser)]
    pub admin_token: Vec<Secret>,

    /// File of `ROLE TOKEN` lines (`#` comments), added to the token flags
    /// and re-read on SIGHUP, so tokens can rotate without a restart.
    #[arg(long, env = "JOBQ_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// PEM certificate chain (leaf first): serve HTTPS instead of plain
    /// HTTP. Re-read on SIGHUP. Needs `--tls-key`.
    #[arg(long, env = "JOBQ_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`. Re-read on SIGHUP.
    #[arg(long, env = "JOBQ_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Most clients waiting at once for a result (`POST /api/submit`,
    /// `GET /api/jobs/{id}?wait=N`); more get 503 + Retry-After.
    #[arg(long, env = "JOBQ_MAX_WAITING_CLIENTS", default_value_t = crate::api::limits::MAX_WAITING_CLIENTS_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub max_waiting_clients: usize,

    /// Most workers long-polling at once (`?wait=N`); more get 503 + Retry-After.
    #[arg(long, env = "JOBQ_MAX_POLLING_WORKERS", default_value_t = crate::api::limits::MAX_POLLING_WORKERS_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub max_polling_workers: usize,

    /// Largest request line plus headers, in bytes (431 beyond).
    #[arg(long, env = "JOBQ_MAX_HEADER_BYTES", default_value_t = crate::server::MAX_HEADER_BYTES_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=262_144))]
    pub max_header_bytes: usize,

    /// Most request headers (431 beyond).
    #[arg(long, env = "JOBQ_MAX_HEADERS", default_value_t = crate::server::HYPER_MAX_HEADERS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub max_headers: usize,

    /// Seconds a request's head may take to arrive once it has begun; a
    /// slower client is disconnected (slow-loris guard).
    #[arg(long, env = "JOBQ_HEADER_READ_TIMEOUT", default_value = "10", value_parser = positive_secs)]
    pub header_read_timeout: Duration,

    /// Seconds a kept-alive connection may sit idle between requests.
    #[arg(long, env = "JOBQ_IDLE_TIMEOUT", default_value = "60", value_parser = positive_secs)]
    pub idle_timeout: Duration,

    /// Seconds of silence on a connection before TCP keepalive probes start
    /// (then every third of it, at least 1 s; 3 unanswered probes drop it).
    /// 0 = off.
    #[arg(long, env = "JOBQ_TCP_KEEPALIVE", default_value = "60", value_parser = secs)]
    pub tcp_keepalive: Duration,

    /// Seconds between keep-alive comments on a quiet event stream (a
    /// streamed submit, `GET /api/jobs/{id}/events`), so proxies keep it open.
    #[arg(long, env = "JOBQ_SSE_KEEPALIVE", default_value = "15", value_parser = positive_secs)]
    pub sse_keepalive: Duration,

    /// Seconds running jobs get to finish on SIGTERM/SIGINT.
    #[arg(long, env = "JOBQ_SHUTDOWN_GRACE", default_value = "30", value_parser = secs)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "JOBQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Record metrics and dashboard figures (`off` leaves `/metrics` and the
    /// dashboard's figures at zero; for measuring their cost).
    #[arg(long, env = "JOBQ_METRICS", value_enum, default_value_t = Switch::On)]
    pub metrics: Switch,
}

impl ServeArgs {
    /// The address to listen on: `--listen`/`JOBQ_LISTEN`, else `0.0.0.0:$PORT`,
    /// else the default.
    ///
    /// # Errors
    /// `PORT` is set but not a port number.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        if let Some(a) = self.listen {
            return Ok(a);
        }
        match std::env::var("PORT") {
            Ok(p) => p
                .trim()
                .parse::<u16>()
                .map(|port| SocketAddr::from(([0, 0, 0, 0], port)))
                .map_err(|_| format!("PORT={p:?} is not a port number")),
            Err(_) => Ok(LISTEN_DEFAULT.parse().expect("valid default")),
        }
    }

    /// The gRPC address: `--grpc-listen`/`JOBQ_GRPC_LISTEN`, else
    /// `0.0.0.0:$GRPC_PORT`, else the default; `None` when `off`.
    ///
    /// # Errors
    /// `GRPC_PORT` is set but not a port number.
    pub fn grpc_listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.grpc_listen {
            Some(GrpcListen::Off) => return Ok(None),
            Some(GrpcListen::Addr(a)) => return Ok(Some(a)),
            None => {}
        }
        match std::env::var("GRPC_PORT") {
            Ok(p) => p
                .trim()
                .parse::<u16>()
                .map(|port| Some(SocketAddr::from(([0, 0, 0, 0], port))))
                .map_err(|_| format!("GRPC_PORT={p:?} is not a port number")),
            Err(_) => Ok(Some(
                crate::grpc::GRPC_LISTEN_DEFAULT
                    .parse()
                    .expect("valid default"),
            )),
        }
    }

    /// The storage backend these flags select.
    pub fn backend(&self) -> crate::store::Backend {
        use crate::store::Backend;
        match self.effective_storage() {
            Storage::Memory => Backend::Memory,
            Storage::Embedded => Backend::Embedded {
                data_dir: self.data_dir.clone(),
                sync: self.sync,
                max_attempts: self.max_attempts,
            },
            Storage::Postgres => Backend::Postgres {
                url: self.postgres_url.clone().unwrap_or_default(),
                pool_size: self.postgres_pool_size,
            },
        }
    }

    /// The backend in use: `--postgres-url` implies `postgres` whatever
    /// `--storage` says.
    pub fn effective_storage(&self) -> Storage {
        if self.postgres_url.is_some() {
            Storage::Postgres
        } else {
            self.storage
        }
    }

    /// The broker's policy.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            wait_timeout: (!self.wait_timeout.is_zero()).then_some(self.wait_timeout),
            lease: self.lease,
            max_attempts: self.max_attempts,
            result_ttl: self.result_ttl,
            max_queued: self.max_queued,
            // Rescue expired leases well within one lease, at most every second.
            maintenance_interval: (self.lease / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
        }
    }

    /// Where the role tokens come from.
    pub fn token_sources(&self) -> TokenSources {
        TokenSources {
            client: self.client_token.clone(),
            worker: self.worker_token.clone(),
            admin: self.admin_token.clone(),
            file: self.token_file.clone(),
        }
    }

    /// The server's options, loading what they name (the token file, the
    /// TLS certificate and key).
    ///
    /// # Errors
    /// A file named by a flag cannot be read or is malformed.
    pub fn server_config(&self) -> Result<ServerConfig, LoadError> {
        Ok(ServerConfig {
            max_body: self.max_body as usize,
            shutdown_grace: self.shutdown_grace,
            auth: Auth::load(self.token_sources())?,
            max_waiting_clients: self.max_waiting_clients,
            max_polling_workers: self.max_polling_workers,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            tcp_keepalive: (!self.tcp_keepalive.is_zero()).then_some(self.tcp_keepalive),
            sse_keepalive: self.sse_keepalive,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(Tls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                })?),
                _ => None,
            },
        })
    }
}

/// A file named by a `serve` flag could not be loaded (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `--token-file`, or tokens given twice.
    #[error(transparent)]
    Auth(#[from] crate::auth::LoadError),
    /// `--tls-cert`/`--tls-key`.
    #[error(transparent)]
    Tls(#[from] crate::tls::LoadError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_spec() {
        let cli = Cli::try_parse_from(["jobq"]).unwrap();
        let s = cli.serve;
        assert_eq!(s.storage, Storage::Embedded);
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.wait_timeout, Duration::from_secs(60));
        assert_eq!(s.lease, Duration::from_secs(60));
        assert_eq!(s.max_attempts, 3);
        assert_eq!(s.result_ttl, Duration::from_secs(3600));
        assert_eq!(s.max_body, 10 * 1024 * 1024);
        assert_eq!(s.max_queued, 1_000_000);
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    }

    #[test]
    fn serve_subcommand_takes_the_same_flags() {
        let cli = Cli::try_parse_from(["jobq", "serve", "--lease", "1.5", "--storage", "memory"])
            .unwrap();
        let Some(Command::Serve(s)) = cli.command else {
            panic!("expected serve")
        };
        assert_eq!(s.lease, Duration::from_millis(1500));
        assert_eq!(s.storage, Storage::Memory);
    }

    #[test]
    fn postgres_url_implies_postgres_storage() {
        let cli = Cli::try_parse_from(["jobq", "--postgres-url", "postgres://db/jobq"]).unwrap();
        assert_eq!(cli.serve.effective_storage(), Storage::Postgres);
        assert_eq!(cli.serve.postgres_pool_size, 16);
        let cli = Cli::try_parse_from(["jobq", "serve", "--postgres-pool-size", "4"]).unwrap();
        let Some(Command::Serve(s)) = cli.command else {
            panic!("expected serve")
        };
        assert_eq!(s.postgres_pool_size, 4);
        assert_eq!(s.effective_storage(), Storage::Embedded);
    }

    #[test]
    fn postgres_storage_needs_a_url() {
        let err = Cli::try_parse_from(["jobq", "--storage", "postgres"]).unwrap_err();
        assert!(err.to_string().contains("--postgres-url"), "{err}");
        assert!(Cli::try_parse_from(["jobq", "--postgres-pool-size", "0"]).is_err());
    }

    #[test]
    fn token_flags_repeat_and_never_echo_a_refused_value() {
        let cli = Cli::try_parse_from([
            "jobq",
            "--client-token",
            "c1",
            "--client-token",
            "c2",
            "--admin-token",
            "a1",
            "--token-file",
            "/etc/jobq/tokens",
        ])
        .unwrap();
        let t = cli.serve.token_sources();
        assert_eq!(t.client.len(), 2);
        assert_eq!(t.admin[0].expose(), "a1");
        assert!(t.worker.is_empty());
        assert_eq!(
            t.file.as_deref(),
            Some(std::path::Path::new("/etc/jobq/tokens"))
        );
        let err = Cli::try_parse_from(["jobq", "--worker-token", "sec ret"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--worker-token"), "{err}");
        assert!(!err.contains("sec ret"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["jobq", "--lease", "0"]).is_err());
        assert!(Cli::try_parse_from(["jobq", "--wait-timeout", "-1"]).is_err());
        assert!(Cli::try_parse_from(["jobq", "--max-attempts", "0"]).is_err());
        assert!(Cli::try_parse_from(["jobq", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["jobq", "--grpc-listen", "nowhere"]).is_err());
    }

    #[test]
    fn grpc_listen_takes_an_address_or_off() {
        let cli = Cli::try_parse_from(["jobq", "--grpc-listen", "off"]).unwrap();
        assert_eq!(cli.serve.grpc_listen_addr(), Ok(None));
        let cli = Cli::try_parse_from(["jobq", "--grpc-listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(
            cli.serve.grpc_listen_addr(),
            Ok(Some("127.0.0.1:0".parse().unwrap()))
        );
    }
}
