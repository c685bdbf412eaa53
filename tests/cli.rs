//! End-to-end tests of the client commands with the real `jobq` binary:
//! `worker --exec` (success, failure, timeout, long jobs, SIGTERM, server
//! restart), `submit` exit codes, the admin commands and `bench`.
//!
//! Every process is started by the test, killed by its PID (SIGKILL on
//! drop) and every wait is bounded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::free_port;
use common::http::wait_health;
use common::{joined, wait_until, Kind, TestServer};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_jobq");

/// Upper bound of any single wait in these tests (a loaded machine is slow).
const BOUND: Duration = Duration::from_secs(60);

/// `jobq ARGS` with a clean environment for the client flags.
fn jobq(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("JOBQ_URL")
        .env_remove("JOBQ_TOKEN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs `jobq ARGS` to completion: (exit code, stdout, stderr).
async fn run_jobq(args: &[&str]) -> (i32, String, String) {
    let mut c = jobq(args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::time::timeout(BOUND, c.output())
        .await
        .unwrap_or_else(|_| panic!("jobq {args:?} did not finish in time"))
        .expect("run jobq");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A long-running `jobq` process whose stderr is collected.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    lines: watch::Receiver<u64>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut c = jobq(args);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn jobq");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = watch::channel(0u64);
        {
            let log = log.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stderr).lines();
                let mut n = 0;
                while let Ok(Some(line)) = r.next_line().await {
                    let mut l = log.lock();
                    l.push_str(&line);
                    l.push('\n');
                    drop(l);
                    n += 1;
                    let _ = tx.send(n);
                }
            });
        }
        Proc { child, log, lines }
    }

    fn log(&self) -> String {
        self.log.lock().clone()
    }

    /// Waits until the log contains `needle`.
    async fn wait_log(&mut self, needle: &str) {
        let until = Instant::now() + BOUND;
        loop {
            if self.log().contains(needle) {
                return;
            }
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("log never said {needle:?}; it says:\n{}", self.log()),
            }
        }
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.id().expect("still running") as i32;
        // SAFETY: signals a process this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    async fn exit(&mut self) -> ExitStatus {
        tokio::time::timeout(BOUND, self.child.wait())
            .await
            .expect("process exits in time")
            .expect("wait")
    }
}

/// A worker for `base` running `cmd`, with extra flags.
fn worker(base: &str, cmd: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["worker", "--url", base, "--long-poll", "2", "--exec", cmd];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

/// `POST /api/submit` and its answer: (status, body, job id header).
async fn submit(s: &TestServer, query: &str, body: &'static str) -> (u16, Value, String) {
    let r = tokio::time::timeout(
        BOUND,
        s.http
            .post(s.url(&format!("/api/submit?timeout=50{query}")))
            .body(body)
            .send(),
    )
    .await
    .expect("submit answered in time")
    .unwrap();
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("x-job-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, r.json().await.unwrap(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_exec_runs_the_command_per_job() {
    let s = TestServer::start(Kind::Memory).await;
    let _upper = worker(&s.base, "tr a-z A-Z", &[]);
    let _env = worker(
        &s.base,
        r#"cat; printf ' %s %s %s' "$JOBQ_JOB_ID" "$JOBQ_ATTEMPT" "$JOBQ_QUEUE""#,
        &["--queue", "other,envq"],
    );
    // The README's quick start.
    let (code, out, err) =
        run_jobq(&["submit", "--url", &s.base, "--timeout", "50", "hello"]).await;
    assert_eq!((code, out.as_str()), (0, "HELLO"), "stderr: {err}");
    // Payload on stdin, job details in the environment.
    let (status, body, id) = submit(&s, "&queue=envq", "payload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], format!("payload {id} 1 envq"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_reports_its_stderr_tail() {
    let s = TestServer::start_with(Kind::Memory, &["--max-attempts", "1"]).await;
    let _w = worker(
        &s.base,
        r#"cat >/dev/null; echo partial; echo "line one" >&2; echo "boom: bad input" >&2; exit 3"#,
        &[],
    );
    let (status, body, id) = submit(&s, "", "x").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["job_id"], id);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("status 3"), "{error}");
    assert!(error.contains("boom: bad input"), "{error}");
    assert!(
        !error.contains("partial"),
        "stdout is not the error: {error}"
    );
    // The same through `jobq submit`: exit code 3, the error on stderr.
    let (code, out, err) = run_jobq(&["submit", "--url", &s.base, "--timeout", "50", "x"]).await;
    assert_eq!(code, 3, "stdout: {out} stderr: {err}");
    assert!(out.is_empty());
    assert!(err.contains("boom: bad input"), "{err}");
    s.stop().await;
}

/// The process id a command wrote to `path`.
fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether `pid` is gone (or a zombie waiting for init to reap it).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A worker command that starts a `sleep 300` child in its process group,
/// writes the child's pid (whole, by a rename) to `child.pid` in a new temp
/// dir, runs `then` and waits. Returns the temp dir, the pid file's path
/// and the command.
fn command_with_child(then: &str) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let p = pidfile.display();
    let cmd = format!("sleep 300 & echo $! > {p}.tmp; mv {p}.tmp {p}; {then}wait");
    (dir, pidfile, cmd)
}

/// Waits (bounded) until the command's child `pid` is gone.
async fn wait_killed(pid: i32) {
    let gone = format!("the command's child {pid} is killed");
    wait_until(BOUND, &gone, || is_dead(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group() {
    let s = TestServer::start_with(Kind::Memory, &["--max-attempts", "1"]).await;
    let (_dir, pidfile, cmd) = command_with_child("echo 'about to hang' >&2; ");
    let _w = worker(&s.base, &cmd, &["--timeout", "1"]);
    let t0 = Instant::now();
    let (status, body, _) = submit(&s, "", "x").await;
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("timed out after 1s"), "{error}");
    assert!(error.contains("about to hang"), "{error}");
    assert!(t0.elapsed() < Duration::from_secs(40));
    // The background `sleep` was in the command's process group: killed too.
    let pid = read_pid(&pidfile);
    wait_killed(pid).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_job_that_outlives_its_lease() {
    let s = TestServer::start_with(Kind::Memory, &["--lease", "2", "--max-attempts", "1"]).await;
    let _w = worker(&s.base, "cat >/dev/null; sleep 5; echo done", &[]);
    let (status, body, id) = submit(&s, "", "x").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "done\n");
    let job = s.job(&id).await.body;
    assert_eq!(job["attempts"], 1, "the lease never lapsed: {job}");
    s.stop().await;
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_job_in_hand_then_exits_0() {
    let s = TestServer::start(Kind::Memory).await;
    let dir = tempfile::tempdir().unwrap();
    let (started, go) = (dir.path().join("started"), dir.path().join("go"));
    mkfifo(&go);
    let cmd = format!(
        "cat >/dev/null; : > {}; read line < {}; printf 'finished %s' \"$line\"",
        started.display(),
        go.display()
    );
    let mut w = worker(&s.base, &cmd, &[]);
    let client = s.spawn_submit("?timeout=50", "x");
    wait_until(BOUND, "the job started", || started.exists()).await;
    w.signal(libc::SIGTERM);
    w.wait_log("stop signal").await;
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "the worker left before its job was done"
    );
    // Let the command finish: it was not killed by the worker's SIGTERM.
    let fifo = go.clone();
    tokio::time::timeout(
        BOUND,
        tokio::task::spawn_blocking(move || std::fs::write(fifo, "ok\n").unwrap()),
    )
    .await
    .expect("the command still reads its FIFO")
    .unwrap();
    let resp = joined(BOUND, "the client is answered", client).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body["payload"], "finished ok");
    let st = w.exit().await;
    assert_eq!(st.code(), Some(0), "log:\n{}", w.log());
    s.stop().await;
}

/// `jobq serve` on `addr`, ready to answer.
async fn serve(addr: &str) -> Proc {
    let p = Proc::spawn(&[
        "serve",
        "--storage",
        "memory",
        "--listen",
        addr,
        "--grpc-listen",
        "off",
        "--shutdown-grace",
        "1",
    ]);
    let http = reqwest::Client::new();
    if let Err(e) = wait_health(&http, &format!("http://{addr}"), 200, BOUND).await {
        panic!("server on {addr} never came up: {e}");
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_after_a_server_restart() {
    let addr = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{addr}");
    let mut server = serve(&addr).await;
    let mut w = worker(&base, "tr a-z A-Z", &[]);
    w.wait_log("jobq worker started").await;

    server.signal(libc::SIGTERM);
    assert_eq!(server.exit().await.code(), Some(0));
    w.wait_log("server is away").await;

    let mut server = serve(&addr).await;
    let http = reqwest::Client::new();
    let r = tokio::time::timeout(
        BOUND,
        http.post(format!("{base}/api/submit?timeout=50"))
            .body("again")
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["payload"], "AGAIN");
    w.wait_log("server is back").await;
    let log = w.log();
    assert_eq!(
        log.matches("server is away").count(),
        1,
        "said once, not in a loop:\n{log}"
    );
    w.signal(libc::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(0));
    server.signal(libc::SIGTERM);
    assert_eq!(server.exit().await.code(), Some(0));
}

fn is_uuid(s: &str) -> bool {
    s.trim().parse::<uuid::Uuid>().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_exit_codes() {
    let s = TestServer::start(Kind::Memory).await;
    let url = s.base.as_str();

    // --async: the id, exit 0.
    let (code, out, _) =
        run_jobq(&["submit", "--url", url, "--queue", "idle", "--async", "a"]).await;
    assert_eq!(code, 0);
    assert!(is_uuid(&out), "{out}");

    // The wait times out: exit 5, the id on stdout to fetch later.
    let (code, out, err) = run_jobq(&[
        "submit",
        "--url",
        url,
        "--queue",
        "idle",
        "--timeout",
        "0.3",
        "b",
    ])
    .await;
    assert_eq!(code, 5, "{err}");
    assert!(is_uuid(&out), "{out}");
    assert!(err.contains("jobq job"), "{err}");
    let (code, _, _) = run_jobq(&["job", "--url", url, out.trim()]).await;
    assert_eq!(code, 5, "still pending");

    // Cancelled while waiting: exit 4 (and `jobq cancel` works).
    let mut waiting = jobq(&[
        "submit",
        "--url",
        url,
        "--queue",
        "doomed",
        "--timeout",
        "50",
        "c",
    ]);
    waiting.stdout(Stdio::piped()).stderr(Stdio::piped());
    let waiting = waiting.spawn().unwrap();
    let until = Instant::now() + BOUND;
    let id = loop {
        let list = s.get("/api/admin/jobs?queue=doomed").await.body;
        if let Some(id) = list["jobs"][0]["job_id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < until, "the submit never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (code, out, _) = run_jobq(&["cancel", "--url", url, &id]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&id));
    let out = tokio::time::timeout(BOUND, waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    // Refused (422: an idempotency key reused for another body): exit 6.
    let submit_keyed = |body| async move {
        run_jobq(&[
            "submit",
            "--url",
            url,
            "--queue",
            "idle",
            "--async",
            "--idempotency-key",
            "k",
            body,
        ])
        .await
    };
    let (code, _, _) = submit_keyed("one").await;
    assert_eq!(code, 0);
    let (code, _, err) = submit_keyed("two").await;
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("422"), "{err}");

    // No server: exit 1. A malformed flag: exit 2.
    let (code, _, err) = run_jobq(&["submit", "--url", "http://127.0.0.1:1", "x"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    let (code, _, err) = run_jobq(&["submit", "--timeout", "soon", "x"]).await;
    assert_eq!(code, 2, "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_reads_stdin() {
    let s = TestServer::start(Kind::Memory).await;
    let _w = worker(&s.base, "tr a-z A-Z", &[]);
    let mut c = jobq(&["submit", "--url", &s.base, "--timeout", "50", "-"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"from stdin\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"FROM STDIN\n");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands() {
    let s = TestServer::start(Kind::Memory).await;
    let url = s.base.as_str();
    let mut ids = vec![];
    for body in ["one", "two"] {
        let (code, out, _) =
            run_jobq(&["submit", "--url", url, "--queue", "adm", "--async", body]).await;
        assert_eq!(code, 0);
        ids.push(out.trim().to_owned());
    }
    let (code, out, _) = run_jobq(&["stats", "--url", url]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("QUEUE"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("adm ")), "{out}");
    let (code, out, _) = run_jobq(&["stats", "--url", url, "--json"]).await;
    assert_eq!(code, 0);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["pending"], 2);

    let (code, out, _) = run_jobq(&["jobs", "--url", url, "--status", "pending"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("JOB ID"), "{out}");
    assert!(ids.iter().all(|id| out.contains(id)), "{out}");
    let (code, out, _) = run_jobq(&["jobs", "--url", url, "--queue", "adm", "--json"]).await;
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let (code, _, err) = run_jobq(&["jobs", "--url", url, "--status", "bogus"]).await;
    assert_eq!(code, 6, "{err}");

    let (code, out, _) = run_jobq(&["clear", "--url", url, "--queue", "adm", "--json"]).await;
    assert_eq!(code, 0);
    let cleared: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cleared["cancelled"], 2);
    let (code, out, _) = run_jobq(&["job", "--url", url, "--json", &ids[0]]).await;
    assert_eq!(code, 4);
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["status"], "cancelled");
    let (code, _, err) = run_jobq(&["cancel", "--url", url, &ids[0]]).await;
    assert_eq!(code, 6, "cancelling an ended job is refused: {err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_embedded_verifies_every_result() {
    let (code, out, err) = run_jobq(&[
        "bench",
        "--embedded",
        "--clients",
        "2",
        "--workers",
        "2",
        "--duration",
        "1",
        "--payload-bytes",
        "64",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(r["jobs"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["mismatches"], 0);
    assert_eq!(r["errors"], 0);
    assert!(r["jobs_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["latency_ms"]["max"].as_f64().unwrap() >= r["latency_ms"]["p99"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_kills_its_command() {
    let s = TestServer::start_with(Kind::Memory, &["--lease", "2"]).await;
    let (_dir, pidfile, cmd) = command_with_child("");
    let mut w = worker(&s.base, &cmd, &[]);
    let id = s.submit_async("", "x").await;
    wait_until(BOUND, "the job started", || pidfile.exists()).await;
    let pid = read_pid(&pidfile);
    assert_eq!(s.delete(&format!("/api/jobs/{id}")).await.status, 200);
    // The next heartbeat gets 409: the worker kills the command's group.
    w.wait_log("killed its command").await;
    wait_killed(pid).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_kills_the_running_commands() {
    let s = TestServer::start_with(Kind::Memory, &["--max-attempts", "1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let cmd = format!("cat >/dev/null; : > {}; exec sleep 300", started.display());
    let mut w = worker(&s.base, &cmd, &[]);
    let client = s.spawn_submit("?timeout=50", "x");
    wait_until(BOUND, "the job started", || started.exists()).await;
    w.signal(libc::SIGTERM);
    w.wait_log("stop signal").await;
    w.signal(libc::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(0), "log:\n{}", w.log());
    let resp = joined(BOUND, "the client is answered", client).await;
    assert_eq!(resp.status, 502);
    let body = resp.body;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("worker was stopped"),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_sent_as_a_bearer_header() {
    use tokio::io::AsyncReadExt;
    // A one-shot HTTP server that records the request head.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let head = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "request head incomplete");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = r#"{"total":0,"pending":0,"running":0,"completed":0}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8(buf).unwrap().to_ascii_lowercase()
    });
    let (code, out, err) = run_jobq(&["stats", "--url", &url, "--token", "SeKrIt", "--json"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let head = tokio::time::timeout(BOUND, head).await.unwrap().unwrap();
    assert!(head.starts_with("get /api/admin/stats "), "{head}");
    assert!(
        head.contains("\r\nauthorization: bearer sekrit\r\n"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_max_body_fails_the_job() {
    let s = TestServer::start_with(Kind::Memory, &["--max-body", "1000"]).await;
    let _w = worker(
        &s.base,
        "cat >/dev/null; head -c 5000 /dev/zero | tr '\\0' x",
        &[],
    );
    let (status, body, _) = submit(&s, "", "x").await;
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("result was refused"), "{error}");
    s.stop().await;
}

/// `worker --exec --stream` sends each stdout line as it appears (over HTTP
/// and over the gRPC stream); `submit --stream` prints them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stream_sends_lines_as_they_appear() {
    let s = TestServer::start_with(Kind::Memory, &["--grpc-listen", "127.0.0.1:0"]).await;
    let dir = tempfile::tempdir().unwrap();
    for (transport, extra) in [
        ("http", vec![]),
        (
            "grpc",
            vec!["--grpc".to_owned(), "--grpc-url".to_owned(), s.grpc_url()],
        ),
    ] {
        let gate = dir.path().join(format!("go-{transport}"));
        let cmd = format!(
            "echo first; while [ ! -e {g} ]; do sleep 0.02; done; printf second",
            g = gate.display()
        );
        let extra: Vec<&str> = std::iter::once("--stream")
            .chain(extra.iter().map(String::as_str))
            .collect();
        let _w = worker(&s.base, &cmd, &extra);
        let mut client =
            common::sse::SseReader::open(s.http.post(s.url("/api/submit?timeout=50")).body("x"))
                .await;
        // The first line arrives while the command still runs.
        let first = client.next_within(BOUND).await.expect("first line");
        assert_eq!(
            (first.event.as_str(), first.json()),
            ("progress", Value::from("first\n")),
            "{transport}"
        );
        std::fs::write(&gate, b"").unwrap();
        let rest = client.until_final().await;
        let kinds: Vec<_> = rest.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(kinds, ["progress", "result"], "{transport}");
        assert_eq!(rest[0].json(), Value::from("second"));
        assert_eq!(rest[1].json()["payload"], "first\nsecond", "{transport}");
    }

    // `submit --stream` prints the lines as they come, and not twice.
    let _w = worker(&s.base, "echo one; echo two", &["--stream"]);
    let (code, out, err) = run_jobq(&[
        "submit",
        "--url",
        &s.base,
        "--stream",
        "--timeout",
        "50",
        "x",
    ])
    .await;
    assert_eq!((code, out.as_str()), (0, "one\ntwo\n"), "stderr: {err}");
    s.stop().await;
}
