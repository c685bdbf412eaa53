//! Test harness: the real server, in process, on an ephemeral port, spoken
//! to over real HTTP. One behavioural suite runs against every backend
//! through [`backend_tests!`].
#![allow(dead_code)]

pub mod postgres;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use jobq::broker::Broker;
use jobq::config::Cli;
use jobq::store::Backend;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which backend a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `--storage memory`.
    Memory,
    /// `--storage embedded` in a fresh temporary data dir.
    Embedded,
    /// `--postgres-url` on a fresh database of the test's own.
    Postgres,
}

/// A running server.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// A client with no timeout of its own (tests bound their waits).
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// Kept alive for the server's lifetime (embedded data dir and the like).
    _guards: Vec<Box<dyn std::any::Any + Send>>,
}

impl TestServer {
    /// Starts a server with default flags.
    pub async fn start(kind: Kind) -> Self {
        Self::start_with(kind, &[]).await
    }

    /// Starts a server with extra `serve` flags, e.g. `&["--lease", "1"]`.
    pub async fn start_with(kind: Kind, flags: &[&str]) -> Self {
        let (backend, guards): (Backend, Vec<Box<dyn std::any::Any + Send>>) = match kind {
            Kind::Memory => (Backend::Memory, Vec::new()),
            Kind::Embedded => {
                let dir = tempfile::tempdir().expect("temp dir");
                let backend = Backend::Embedded {
                    data_dir: dir.path().to_owned(),
                    sync: jobq::store::embedded::Sync::Full,
                };
                (
                    backend,
                    vec![Box::new(dir) as Box<dyn std::any::Any + Send>],
                )
            }
            Kind::Postgres => {
                let db = postgres::TestDb::create().await;
                (
                    Self::postgres_backend(&db),
                    vec![Box::new(db) as Box<dyn std::any::Any + Send>],
                )
            }
        };
        Self::start_on(backend, guards, flags).await
    }

    /// The backend of a node on `db` (several servers may share one).
    pub fn postgres_backend(db: &postgres::TestDb) -> Backend {
        Backend::Postgres {
            url: db.url.clone(),
            pool_size: 16,
        }
    }

    /// Starts a server on `backend`, keeping `guards` alive as long as it.
    pub async fn start_on(
        backend: Backend,
        guards: Vec<Box<dyn std::any::Any + Send>>,
        flags: &[&str],
    ) -> Self {
        let mut argv = vec!["jobq", "serve"];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(&argv).expect("valid test flags");
        let Some(jobq::config::Command::Serve(args)) = cli.command else {
            unreachable!()
        };
        let store = jobq::store::open(&backend).await.expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let broker = Broker::new(store, args.broker_config());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(jobq::server::run(
            listener,
            broker,
            args.server_config(),
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::new(),
            stop: Some(tx),
            handle: Some(handle),
            _guards: guards,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends SIGTERM's equivalent and waits (bounded) for a clean exit.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("server stops within 30 s")
                .expect("server task")
                .expect("clean shutdown");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Generates one `#[tokio::test]` per backend for each named `async fn(Kind)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Kind::Memory).await
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Kind::Embedded).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !$crate::common::postgres::available(stringify!($name)).await {
                        return;
                    }
                    super::$name($crate::common::Kind::Postgres).await
                }
            )*
        }
    };
}
pub mod binary;
