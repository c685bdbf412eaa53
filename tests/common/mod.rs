//! Test harness: the real server, in process, on an ephemeral port, spoken
//! to over real HTTP. One behavioural suite runs against every backend
//! through [`backend_tests!`]. Every helper that more than one test file
//! needs lives here or in a submodule: [`binary`] (the built binary as a
//! child process), [`http`] (calls by URL, for servers not started in
//! process), [`postgres`] (a database of each test's own), [`sse`] (an event
//! stream reader), [`pki`] (test
//! certificates) and [`stores`]
//! (the backend each [`Kind`] runs on, and store-level factories).
#![allow(dead_code)]

pub mod binary;
pub mod http;
pub mod netns;
pub mod pki;
pub mod postgres;
pub mod sse;
pub mod stores;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use jobq::broker::Broker;
use jobq::cli::Cli;
use jobq::store::Backend;
use serde_json::Value;
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
    /// The TLS identity when started with `--tls-cert` (`base` is then
    /// `https://`), for reload tests.
    pub tls: Option<jobq::tls::Tls>,
    /// The gRPC address, when the test asked for one with `--grpc-listen`
    /// (`127.0.0.1:0`); without it no gRPC server runs, so parallel tests
    /// never collide on port 50051.
    pub grpc_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// Kept alive for the server's lifetime (embedded data dir and the like).
    _guards: Vec<stores::Guard>,
}

impl TestServer {
    /// Starts a server with default flags.
    pub async fn start(kind: Kind) -> Self {
        Self::start_with(kind, &[]).await
    }

    /// Starts a server with extra `serve` flags, e.g. `&["--lease", "1"]`.
    pub async fn start_with(kind: Kind, flags: &[&str]) -> Self {
        let (backend, guards) = stores::backend(kind, stores::SERVER_POOL).await;
        Self::start_on(backend, guards, flags).await
    }

    /// The backend of a node on `db` (several servers may share one).
    pub fn postgres_backend(db: &postgres::TestDb) -> Backend {
        stores::postgres_backend(&db.url, stores::SERVER_POOL)
    }

    /// Starts a node on the shared database `db` (kept alive as long as the node).
    pub async fn start_node(db: &Arc<postgres::TestDb>, flags: &[&str]) -> Self {
        Self::start_on(
            Self::postgres_backend(db),
            vec![Box::new(db.clone()) as stores::Guard],
            flags,
        )
        .await
    }

    /// Starts a server on `backend`, keeping `guards` alive as long as it.
    pub async fn start_on(backend: Backend, guards: Vec<stores::Guard>, flags: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on_listener(backend, guards, flags, listener).await
    }

    /// As [`TestServer::start_on`], serving on `listener` (e.g. one bound in
    /// another network namespace); `base` names its local address.
    pub async fn start_on_listener(
        backend: Backend,
        guards: Vec<stores::Guard>,
        flags: &[&str],
        listener: tokio::net::TcpListener,
    ) -> Self {
        let mut argv = vec!["jobq", "serve"];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(&argv).expect("valid test flags");
        let Some(jobq::cli::Command::Serve(args)) = cli.command else {
            unreachable!()
        };
        let store = stores::open(&backend).await;
        let addr = listener.local_addr().unwrap();
        let grpc = match args.grpc_listen {
            Some(jobq::config::GrpcListen::Addr(a)) => {
                Some(tokio::net::TcpListener::bind(a).await.expect("bind gRPC"))
            }
            _ => None,
        };
        let grpc_addr = grpc.as_ref().map(|l| l.local_addr().unwrap());
        let broker = Broker::new(store, args.broker_config());
        let (tx, rx) = oneshot::channel::<()>();
        let cfg = args.server_config().expect("server config");
        let tls = cfg.tls.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let handle = tokio::spawn(jobq::server::run_with_grpc(
            listener,
            grpc,
            broker,
            cfg,
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            base: format!("{scheme}://{addr}"),
            addr,
            http: reqwest::Client::new(),
            tls,
            grpc_addr,
            stop: Some(tx),
            handle: Some(handle),
            _guards: guards,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `http://` + the gRPC address (panics if the test did not ask for gRPC).
    pub fn grpc_url(&self) -> String {
        format!(
            "http://{}",
            self.grpc_addr.expect("started with --grpc-listen")
        )
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

/// Bound for any single wait in a test: nothing legitimate takes this long.
pub const BOUND: Duration = Duration::from_secs(10);

/// A finished HTTP exchange: status, headers and the body (parsed as JSON
/// when it is JSON; `Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    /// Status code as a number.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as JSON (`Null` when empty; `Value::String` of the text otherwise).
    pub body: Value,
    /// Raw body.
    pub raw: Vec<u8>,
}

impl Reply {
    /// Reads a response in full.
    pub async fn of(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let raw = r.bytes().await.expect("read body").to_vec();
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
            raw,
        }
    }

    /// A header as text (panics if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing in {self:?}"))
            .to_str()
            .unwrap()
    }

    /// The sorted keys of the JSON object body.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .body
            .as_object()
            .unwrap_or_else(|| panic!("body is not a JSON object: {self:?}"))
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    }

    /// Asserts an error answer of docs/api.md ("Errors"): this status, a
    /// JSON content type and a body with a non-empty string `error`.
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "unexpected answer: {self:?}");
        let ct = self
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "content-type {ct:?} of {self:?}"
        );
        let e = self.body["error"].as_str();
        assert!(
            e.is_some_and(|e| !e.is_empty()),
            "no error sentence in {self:?}"
        );
    }
}

/// Sorted key list, for comparing with [`Reply::keys`].
pub fn keys(k: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = k.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Awaits `f`, failing the test if it takes longer than `d`.
pub async fn within<F: std::future::Future>(d: Duration, what: &str, f: F) -> F::Output {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {d:?}: {what}"))
}

/// Joins the task `h`, failing the test if it takes longer than `d` or panicked.
pub async fn joined<T>(d: Duration, what: &str, h: JoinHandle<T>) -> T {
    within(d, what, h).await.expect("task")
}

/// Checks `cond` every 20 ms until it holds, failing the test after `d`.
pub async fn wait_until(d: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + d;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {d:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `job_id` of a job view or hand-out.
pub fn id_of(job: &Value) -> String {
    job["job_id"].as_str().expect("job_id").to_owned()
}

/// The `lease_id` of a hand-out.
pub fn lease_of(job: &Value) -> &str {
    job["lease_id"].as_str().expect("lease_id")
}

/// Asserts that the JSON object `v` (a `what`) has every key of `keys`.
pub fn assert_has_keys(v: &Value, keys: &[&str], what: &str) {
    for k in keys {
        assert!(v.get(k).is_some(), "{what} lacks {k}: {v}");
    }
}

impl TestServer {
    /// Sends `rb` and reads the answer in full, bounded by [`BOUND`].
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Reply {
        within(BOUND, "HTTP exchange", async {
            Reply::of(rb.send().await.expect("send request")).await
        })
        .await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(self.url(path))).await
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.send(self.http.post(self.url(path)).body(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.http.delete(self.url(path))).await
    }

    /// `POST /api/jobs{query}`: submits without waiting; returns the job id.
    pub async fn submit_async(&self, query: &str, body: impl Into<reqwest::Body>) -> String {
        let r = self.post(&format!("/api/jobs{query}"), body).await;
        assert_eq!(r.status, 202, "async submit: {r:?}");
        r.body["job_id"].as_str().expect("job_id").to_owned()
    }

    /// [`TestServer::submit_async`] of each `(query, body)`, in order; their ids.
    pub async fn submit_each<const N: usize>(&self, jobs: [(&str, &str); N]) -> [String; N] {
        let mut ids = Vec::with_capacity(N);
        for (query, body) in jobs {
            ids.push(self.submit_async(query, body.to_owned()).await);
        }
        ids.try_into().expect("one id per job")
    }

    /// Starts a sync submit (`POST /api/submit{query}`) in the background.
    pub fn spawn_submit(&self, query: &str, body: impl Into<reqwest::Body>) -> JoinHandle<Reply> {
        let rb = self
            .http
            .post(self.url(&format!("/api/submit{query}")))
            .body(body);
        Self::spawn_send(rb)
    }

    /// A sync submit (`POST /api/submit{query}`) in the background, and its
    /// job as a poll of the default queue hands it out.
    pub async fn submit_and_take(
        &self,
        query: &str,
        body: impl Into<reqwest::Body>,
    ) -> (JoinHandle<Reply>, Value) {
        let client = self.spawn_submit(query, body);
        (client, self.take("").await)
    }

    /// Sends `rb` in the background (the caller bounds the join).
    pub fn spawn_send(rb: reqwest::RequestBuilder) -> JoinHandle<Reply> {
        tokio::spawn(async move { Reply::of(rb.send().await.expect("send request")).await })
    }

    /// Joins a background request, bounded by [`BOUND`].
    pub async fn join(h: JoinHandle<Reply>) -> Reply {
        joined(BOUND, "background request", h).await
    }

    /// One poll (`GET /api/worker/poll{query}`): the hand-out, or `None` on 204.
    pub async fn poll(&self, query: &str) -> Option<Value> {
        let r = self.get(&format!("/api/worker/poll{query}")).await;
        match r.status {
            200 => Some(r.body),
            204 => None,
            _ => panic!("poll: {r:?}"),
        }
    }

    /// Takes the next job of `queues` (comma list, `""` for the default
    /// queue), long-polling up to 5 s; panics if none arrives.
    pub async fn take(&self, queues: &str) -> Value {
        let q = if queues.is_empty() {
            "?wait=5".to_owned()
        } else {
            format!("?wait=5&queue={queues}")
        };
        self.poll(&q)
            .await
            .unwrap_or_else(|| panic!("no job arrived in queue(s) {queues:?} within 5 s"))
    }

    /// `POST /api/worker/complete/{id}{query}` with `body`.
    pub async fn complete(&self, id: &str, query: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.post(&format!("/api/worker/complete/{id}{query}"), body)
            .await
    }

    /// [`TestServer::complete`], which must be accepted (200).
    pub async fn complete_ok(&self, id: &str, query: &str, body: impl Into<reqwest::Body>) {
        let r = self.complete(id, query, body).await;
        assert_eq!(r.status, 200, "complete {id}{query}: {r:?}");
    }

    /// `POST /api/worker/fail/{id}{query}` with the JSON `body`.
    pub async fn fail(&self, id: &str, query: &str, body: &str) -> Reply {
        self.post(&format!("/api/worker/fail/{id}{query}"), body.to_owned())
            .await
    }

    /// `POST /api/worker/heartbeat/{id}{query}`.
    pub async fn heartbeat(&self, id: &str, query: &str) -> Reply {
        self.post(&format!("/api/worker/heartbeat/{id}{query}"), "")
            .await
    }

    /// Joins a sync submit (bounded), which must be answered 200 with the
    /// result `payload`; returns the answer.
    pub async fn join_result(h: JoinHandle<Reply>, payload: &str) -> Reply {
        let r = Self::join(h).await;
        assert_eq!(r.status, 200, "sync submit: {r:?}");
        assert_eq!(r.body["payload"], payload, "sync submit's result: {r:?}");
        r
    }

    /// `GET /api/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Reply {
        self.get(&format!("/api/jobs/{id}")).await
    }

    /// `GET /api/admin/stats` (asserts 200).
    pub async fn stats(&self) -> Value {
        let r = self.get("/api/admin/stats").await;
        assert_eq!(r.status, 200, "stats: {r:?}");
        r.body
    }

    /// Asserts the figures `want` of one `/api/admin/stats` answer.
    pub async fn assert_stats(&self, want: &[(&str, u64)]) {
        let st = self.stats().await;
        for (key, n) in want {
            assert_eq!(st[key], *n, "stats {key} in {st}");
        }
    }

    /// Waits (bounded) until `/api/admin/stats` has `key == want`.
    pub async fn wait_stat(&self, key: &str, want: u64) {
        self.wait_stats(BOUND, &format!("stats {key} == {want}"), |st| {
            st[key] == want
        })
        .await
    }

    /// Waits (bounded by `d`) until `/api/admin/stats` satisfies `cond`.
    pub async fn wait_stats(&self, d: Duration, what: &str, cond: impl Fn(&Value) -> bool) {
        within(d, what, async {
            loop {
                if cond(&self.stats().await) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Waits (bounded by `d`) until job `id` has `status`; returns its view.
    pub async fn wait_status(&self, id: &str, status: &str, d: Duration) -> Value {
        within(d, &format!("job {id} becomes {status}"), async {
            loop {
                let r = self.job(id).await;
                if r.status == 200 && r.body["status"] == status {
                    return r.body;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Waits (bounded by `d`) until `GET /api/jobs/{id}` answers 404.
    pub async fn wait_gone(&self, id: &str, d: Duration) {
        within(d, &format!("job {id} is forgotten"), async {
            loop {
                if self.job(id).await.status == 404 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
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
pub mod transport;
