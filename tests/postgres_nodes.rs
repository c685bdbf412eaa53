//! Several `jobq serve` nodes on one PostgreSQL database (SPEC §5): wake-ups
//! and results cross nodes, every job is handed out once, a killed node's
//! job is rescued by another, and nodes recover when their connections are
//! cut. The behavioural suite also runs on PostgreSQL through
//! `backend_tests!`; these are the tests only a shared database needs.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::free_port;
use common::postgres::{available, with_dbname, TestDb};
use common::TestServer;
use parking_lot::Mutex;
use serde_json::Value;

/// Two in-process nodes on one fresh database.
async fn two_nodes(flags: &[&str]) -> (TestServer, TestServer, Arc<TestDb>) {
    let db = Arc::new(TestDb::create().await);
    let a = TestServer::start_on(
        TestServer::postgres_backend(&db),
        vec![Box::new(db.clone()) as Box<dyn std::any::Any + Send>],
        flags,
    )
    .await;
    let b = TestServer::start_on(
        TestServer::postgres_backend(&db),
        vec![Box::new(db.clone()) as Box<dyn std::any::Any + Send>],
        flags,
    )
    .await;
    (a, b, db)
}

/// Polls `s` (long-poll of `wait` s) until it hands out a job, retrying
/// 503s (connections being replaced), for at most `within`.
async fn poll_job(s: &TestServer, wait: u32, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        assert!(
            Instant::now() < deadline,
            "no job handed out within {within:?}"
        );
        let r = s
            .http
            .get(s.url(&format!("/api/worker/poll?wait={wait}")))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => return r.json().await.unwrap(),
            204 => {}
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("poll answered {other}"),
        }
    }
}

async fn complete(s: &TestServer, job: &Value, body: &str) -> u16 {
    let id = job["job_id"].as_str().unwrap();
    let lease = job["lease_id"].as_str().unwrap();
    s.http
        .post(s.url(&format!("/api/worker/complete/{id}?lease={lease}")))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Starts a sync submit on `s` in the background.
fn submit_and_wait(s: &TestServer, body: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let (http, url, body) = (
        s.http.clone(),
        s.url("/api/submit?timeout=30"),
        body.to_owned(),
    );
    tokio::spawn(async move { http.post(url).body(body).send().await.unwrap() })
}

/// Waits until `s` reports `n` jobs in `status`.
async fn wait_for_count(s: &TestServer, status: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.http.get(s.url("/api/admin/stats")).send().await.unwrap();
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            if v[status].as_u64() == Some(n) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "never saw {n} {status} jobs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn test_database_names_are_swapped_into_urls() {
    assert_eq!(
        with_dbname("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(with_dbname("postgres://h", "x"), "postgres://h/x");
    assert_eq!(
        with_dbname("postgres://h/db?sslmode=disable", "x"),
        "postgres://h/x?sslmode=disable"
    );
    assert_eq!(with_dbname("host=h user=u", "x"), "host=h user=u dbname=x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_on_a_complete_on_b() {
    if !available("submit_on_a_complete_on_b").await {
        return;
    }
    let (a, b, _db) = two_nodes(&[]).await;

    // A worker long-polls on B before the job exists: NOTIFY must wake it.
    let worker = {
        let http = b.http.clone();
        let url = b.url("/api/worker/poll?wait=20");
        tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        })
    };
    wait_for_polling(&b).await;
    let client = submit_and_wait(&a, r#"{"n":1}"#);
    let job = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker on B woken")
        .unwrap();
    assert_eq!(job["payload"], serde_json::json!({"n": 1}));
    assert_eq!(complete(&b, &job, r#"{"done":true}"#).await, 200);

    let resp = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("client on A answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["job_id"], job["job_id"]);
    assert_eq!(body["payload"], serde_json::json!({"done": true}));

    // The result is readable on both nodes.
    for s in [&a, &b] {
        let id = job["job_id"].as_str().unwrap();
        let v: Value = s
            .http
            .get(s.url(&format!("/api/jobs/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "completed");
    }
    a.stop().await;
    b.stop().await;
}

/// Waits until `s` has a worker in a long-poll.
async fn wait_for_polling(s: &TestServer) {
    wait_for_pollers(s, 1).await
}

/// Waits until `s` has `n` workers in a long-poll.
async fn wait_for_pollers(s: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = s
            .http
            .get(s.url("/api/admin/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["polling_workers"].as_u64() >= Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "worker never started polling");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Notifications, not the once-a-second fallback, wake pollers on other
/// nodes: in every round both pollers on B get the jobs submitted on A
/// within 400 ms. (The fallback alone would pass a round 40% of the time,
/// all six rounds 0.4% of the time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submitted_on_one_node_wake_pollers_on_another_at_once() {
    if !available("jobs_submitted_on_one_node_wake_pollers_on_another_at_once").await {
        return;
    }
    let (a, b, _db) = two_nodes(&[]).await;
    for round in 0..6 {
        let pollers: Vec<_> = (0..2)
            .map(|_| {
                let (http, url) = (b.http.clone(), b.url("/api/worker/poll?wait=20"));
                tokio::spawn(async move {
                    let r = http.get(url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    (Instant::now(), r.json::<Value>().await.unwrap())
                })
            })
            .collect();
        wait_for_pollers(&b, 2).await;
        let submitted = Instant::now();
        for n in 0..2 {
            let r = a
                .http
                .post(a.url("/api/jobs"))
                .body(format!("{{\"round\":{round},\"n\":{n}}}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
        for p in pollers {
            let (at, job) = tokio::time::timeout(Duration::from_secs(10), p)
                .await
                .expect("poller on B woken")
                .unwrap();
            let waited = at.saturating_duration_since(submitted);
            assert!(
                waited < Duration::from_millis(400),
                "round {round}: a poller on B got its job {waited:?} after the submits on A"
            );
            assert_eq!(job["payload"]["round"], round);
            assert_eq!(complete(&b, &job, "{}").await, 200);
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_clear_reach_clients_on_other_nodes() {
    if !available("cancel_and_clear_reach_clients_on_other_nodes").await {
        return;
    }
    let (a, b, _db) = two_nodes(&[]).await;

    let client = submit_and_wait(&a, "one");
    wait_for_count(&b, "pending", 1).await;
    let listed: Value = b
        .http
        .get(b.url("/api/admin/jobs?status=pending"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = listed["jobs"][0]["job_id"].as_str().unwrap().to_owned();
    let r = b
        .http
        .delete(b.url(&format!("/api/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let resp = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("cancel reached the client on A")
        .unwrap();
    assert_eq!(resp.status(), 410);

    let c1 = submit_and_wait(&a, "two");
    let c2 = submit_and_wait(&b, "three");
    wait_for_count(&a, "pending", 2).await;
    let r = b
        .http
        .delete(b.url("/api/admin/clear"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for c in [c1, c2] {
        let resp = tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .expect("clear reached every client")
            .unwrap();
        assert_eq!(resp.status(), 410);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_jobs_each_handed_out_exactly_once() {
    if !available("thousand_jobs_each_handed_out_exactly_once").await {
        return;
    }
    const JOBS: usize = 1000;
    let (a, b, _db) = two_nodes(&[]).await;
    // (client, base URL) of each node, shareable between tasks.
    let nodes = Arc::new([
        (a.http.clone(), a.base.clone()),
        (b.http.clone(), b.base.clone()),
    ]);

    // Submit from both nodes at once.
    let mut submitters = Vec::new();
    for t in 0..8 {
        let nodes = nodes.clone();
        submitters.push(tokio::spawn(async move {
            let (http, base) = &nodes[t % 2];
            let mut ids = Vec::new();
            for i in (t..JOBS).step_by(8) {
                let r = http
                    .post(format!("{base}/api/jobs"))
                    .body(format!("{{\"i\":{i}}}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                let v: Value = r.json().await.unwrap();
                ids.push(v["job_id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    // Workers on both nodes, running while the submits go on.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (nodes, seen) = (nodes.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            let (http, base) = &nodes[w % 2];
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen.lock().len() < JOBS {
                assert!(Instant::now() < deadline, "workers did not finish in time");
                let r = http
                    .get(format!("{base}/api/worker/poll?wait=1"))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 204 {
                    continue;
                }
                assert_eq!(r.status(), 200);
                let job: Value = r.json().await.unwrap();
                assert_eq!(job["attempt"], 1, "a job was handed out twice");
                let id = job["job_id"].as_str().unwrap().to_owned();
                assert!(seen.lock().insert(id.clone()), "job {id} handed out twice");
                let lease = job["lease_id"].as_str().unwrap();
                let r = http
                    .post(format!("{base}/api/worker/complete/{id}?lease={lease}"))
                    .body("ok")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    let mut submitted = HashSet::new();
    for s in submitters {
        submitted.extend(s.await.unwrap());
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(submitted.len(), JOBS);
    assert_eq!(*seen.lock(), submitted);
    wait_for_count(&a, "completed", JOBS as u64).await;
    wait_for_count(&b, "completed", JOBS as u64).await;
    a.stop().await;
    b.stop().await;
}

/// Kills the child on drop (a failing test leaves no server behind).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_job_is_handed_out_again_by_another_node() {
    if !available("killed_node_job_is_handed_out_again_by_another_node").await {
        return;
    }
    let db = Arc::new(TestDb::create().await);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args([
            "serve",
            "--postgres-url",
            &db.url,
            "--listen",
            &listen,
            "--grpc-listen",
            "off",
            "--lease",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start jobq");
    let mut child = Child(child);
    let http = reqwest::Client::new();
    let a = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{a}/health")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "node A never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = TestServer::start_on(
        TestServer::postgres_backend(&db),
        vec![Box::new(db.clone()) as Box<dyn std::any::Any + Send>],
        &["--lease", "2"],
    )
    .await;

    let r = http
        .post(format!("{a}/api/jobs"))
        .body("survive")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http
        .get(format!("{a}/api/worker/poll"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["attempt"], 1);

    // kill -9 node A while its job runs.
    child.0.kill().expect("kill -9 node A");
    child.0.wait().unwrap();
    let killed_at = Instant::now();

    let again = poll_job(&b, 5, Duration::from_secs(20)).await;
    assert_eq!(again["job_id"], first["job_id"]);
    assert_eq!(again["attempt"], 2);
    assert_eq!(again["payload"], "survive");
    assert!(
        killed_at.elapsed() >= Duration::from_millis(500),
        "handed out again before the lease could have run out"
    );
    assert_eq!(complete(&b, &again, "done").await, 200);
    // The old lease is fenced off.
    assert_eq!(complete(&b, &first, "late").await, 409);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_when_postgres_drops_their_connections() {
    if !available("nodes_recover_when_postgres_drops_their_connections").await {
        return;
    }
    let (a, b, db) = two_nodes(&[]).await;

    // Acknowledged work before the cut: 20 queued jobs and one waiting client.
    let mut acked = HashSet::new();
    for i in 0..20 {
        let r = a
            .http
            .post(a.url("/api/jobs"))
            .body(format!("{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        acked.insert(v["job_id"].as_str().unwrap().to_owned());
    }
    let waiting = submit_and_wait(&a, "waited-for");
    wait_for_count(&b, "pending", 21).await;

    let ended = db.terminate_connections().await;
    assert!(
        ended >= 2,
        "expected both nodes' connections, ended {ended}"
    );

    // Both nodes serve again (503 meanwhile at most), and nothing acked is lost.
    for s in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = s.http.get(s.url("/health")).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            assert_eq!(r.status(), 503);
            assert!(Instant::now() < deadline, "node never recovered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut done = HashSet::new();
    let mut waited_job = None;
    while done.len() < 21 {
        let job = poll_job(&b, 2, Duration::from_secs(30)).await;
        let id = job["job_id"].as_str().unwrap().to_owned();
        if job["payload"] == "waited-for" {
            waited_job = Some(id.clone());
        } else {
            assert!(acked.contains(&id), "unknown job {id}");
        }
        let status = loop {
            let s = complete(&b, &job, &format!("result-{id}")).await;
            if s != 503 {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status, 200);
        assert!(done.insert(id));
    }
    let waited_job = waited_job.expect("the waited-for job was handed out");
    // The client on A hears of the completion on B after A re-LISTENed.
    let resp = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("waiting client on A answered after reconnect")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["job_id"], waited_job.as_str());
    assert_eq!(body["payload"], format!("result-{waited_job}").as_str());
    assert_eq!(
        db.scalar("select count(*) from jobq_jobs where status = 'completed'")
            .await,
        21
    );

    // New cross-node traffic works after the reconnect too.
    let client = submit_and_wait(&b, "after");
    let job = poll_job(&a, 5, Duration::from_secs(15)).await;
    assert_eq!(complete(&a, &job, "fine").await, 200);
    let resp = tokio::time::timeout(Duration::from_secs(15), client)
        .await
        .expect("client on B answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_is_one_clear_line() {
    let port = free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args([
            "--postgres-url",
            &format!("postgres://jobq:secret@127.0.0.1:{port}/jobq"),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "off")
        .output()
        .expect("run jobq");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}/jobq")),
        "stderr names the database: {err}"
    );
    assert!(!err.contains("secret"), "password leaked: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Waits until `/health` on `s` answers `status`.
async fn wait_for_health(s: &TestServer, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = s.http.get(s.url("/health")).send().await.unwrap();
        if r.status().as_u16() == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/health never answered {status} (last {})",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cut_off_from_postgres_answers_503_then_recovers() {
    if !available("node_cut_off_from_postgres_answers_503_then_recovers").await {
        return;
    }
    let db = Arc::new(TestDb::create().await);
    let Some((proxy, via_proxy)) = common::postgres::proxied(&db).await else {
        eprintln!("skipped: JOBQ_TEST_POSTGRES_URL is not a TCP address");
        return;
    };
    // Node A reaches PostgreSQL through the proxy, node B directly.
    let a = TestServer::start_on(
        jobq::store::Backend::Postgres {
            url: via_proxy,
            pool_size: 4,
        },
        vec![Box::new(db.clone()) as Box<dyn std::any::Any + Send>],
        &[],
    )
    .await;
    let b = TestServer::start_on(
        TestServer::postgres_backend(&db),
        vec![Box::new(db.clone()) as Box<dyn std::any::Any + Send>],
        &[],
    )
    .await;

    // Acknowledged before the cut: a queued job and a client waiting on A.
    let r = a
        .http
        .post(a.url("/api/jobs"))
        .body("queued")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let queued: Value = r.json().await.unwrap();
    let waiting = submit_and_wait(&a, "waited-for");
    wait_for_count(&b, "pending", 2).await;

    proxy.down();
    wait_for_health(&a, 503, Duration::from_secs(15)).await;
    let r = a
        .http
        .post(a.url("/api/jobs"))
        .body("refused")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a submit A cannot store is refused");
    assert!(r.headers().contains_key("retry-after"));
    wait_for_health(&b, 200, Duration::from_secs(5)).await;

    // While A is cut off, B's worker runs both jobs: A misses the NOTIFY.
    let mut waited_id = None;
    for _ in 0..2 {
        let job = poll_job(&b, 2, Duration::from_secs(10)).await;
        if job["payload"] == "waited-for" {
            waited_id = Some(job["job_id"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(job["job_id"], queued["job_id"]);
        }
        assert_eq!(complete(&b, &job, "\"from B\"").await, 200);
    }
    let waited_id = waited_id.expect("waited-for job handed out");

    proxy.up();
    wait_for_health(&a, 200, Duration::from_secs(20)).await;
    // A re-LISTENs, tells its waiters to re-read, and the client is answered.
    let resp = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("client on A answered after A reconnected")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["job_id"], waited_id.as_str());
    assert_eq!(body["payload"], "from B");
    let id = queued["job_id"].as_str().unwrap();
    let v: Value = a
        .http
        .get(a.url(&format!("/api/jobs/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "completed");

    // And A takes work again, woken by B's NOTIFY on its new LISTEN.
    let worker = {
        let (http, url) = (a.http.clone(), a.url("/api/worker/poll?wait=20"));
        tokio::spawn(async move { http.get(url).send().await.unwrap() })
    };
    wait_for_polling(&a).await;
    let client = submit_and_wait(&b, "after");
    let r = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("A's worker woken")
        .unwrap();
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(complete(&a, &job, "fine").await, 200);
    let resp = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("client on B answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
    a.stop().await;
    b.stop().await;
    drop(proxy);
}
