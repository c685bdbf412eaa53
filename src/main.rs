//! The `jobq` binary: parse flags, set up logging, open the store, serve;
//! the client subcommands are handed to [`jobq::cli::run`].

use std::process::ExitCode;

use clap::Parser;
use jobq::broker::Broker;
use jobq::cli::{Cli, Command};
use jobq::config::{LogFormat, ServeArgs};
use tracing_subscriber::EnvFilter;

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
        Some(client_command) => return jobq::cli::run(client_command),
    };
    init_logging(args.log_format);
    jobq::metrics::set_enabled(args.metrics == jobq::config::Switch::On);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fatal(format!("cannot start the async runtime: {e}")),
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(format!("{e:#}")),
    }
}

fn fatal(msg: String) -> ExitCode {
    eprintln!("jobq: error: {msg}");
    ExitCode::FAILURE
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: in a file or a journal the escape codes
    // are noise, and styling each field of every request's span cost about
    // a twentieth of the server's instructions per job.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let addr = args.listen_addr().map_err(anyhow::Error::msg)?;
    let cfg = args.server_config()?;
    reload_on_hangup(cfg.auth.clone(), cfg.tls.clone())?;
    let store = jobq::store::open(&args.backend()).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let grpc =
        match args.grpc_listen_addr().map_err(anyhow::Error::msg)? {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} (gRPC, --grpc-listen): {e}")
            })?),
            None => None,
        };
    let grpc_listen = match &grpc {
        Some(l) => l.local_addr()?.to_string(),
        None => "off".to_owned(),
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        grpc_listen,
        storage = ?args.effective_storage(),
        tls = args.tls_cert.is_some(),
        "jobq {} serving",
        env!("CARGO_PKG_VERSION")
    );
    raise_open_files_limit(cfg.max_waiting_clients.max(cfg.max_polling_workers));
    let broker = Broker::new(store, args.broker_config());
    jobq::server::run_with_grpc(listener, grpc, broker, cfg, shutdown_signal()).await
}

/// Raises the soft limit on open files to the hard limit, as Go programs
/// (the first jobq) do at start: every waiting client and polling worker
/// holds a socket, and the usual soft limit of 1,024 is far below the
/// default caps. Warns when even the hard limit is below either cap (both
/// full at once is rarer; the warning would then show on common machines).
fn raise_open_files_limit(sockets: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
        lim.rlim_cur
    };
    // A few files more than sockets: the store, the log, the listeners.
    if (raised as u128) < sockets as u128 + 64 {
        tracing::warn!(
            open_files = raised,
            "the open-files limit (ulimit -n) is below --max-waiting-clients or --max-polling-workers: \
             connections beyond it wait in the listen queue until one closes; raise it, or lower the caps"
        );
    }
}

/// Re-reads the token file and the TLS certificate and key on every SIGHUP
/// (instead of SIGHUP's default, exiting). What fails to load stays as it was.
fn reload_on_hangup(auth: jobq::auth::Auth, tls: Option<jobq::tls::Tls>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match auth.reload() {
                Ok(counts) => tracing::info!(%counts, "SIGHUP: tokens reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: tokens not reloaded; the previous ones stay in force")
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %tls.files().cert.display(), "SIGHUP: TLS certificate reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the previous one stays in force")
                    }
                }
            }
        }
    });
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
