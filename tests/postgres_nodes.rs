//! Several `jobq serve` nodes on one PostgreSQL database (docs/api.md,
//! "Guarantees"): wake-ups and results cross nodes, every job is handed out
//! once, a killed node's job is rescued by another, and nodes recover when
//! their connections are cut. The behavioural suite also runs on PostgreSQL
//! through `backend_tests!`; these are the tests only a shared database
//! needs.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{free_port, Proc};
use common::postgres::{available, with_dbname, TestDb};
use common::{http, id_of, joined, stores, Reply, TestServer, BOUND};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::task::JoinHandle;

/// Two in-process nodes on one fresh database.
async fn two_nodes(flags: &[&str]) -> (TestServer, TestServer, Arc<TestDb>) {
    let db = Arc::new(TestDb::create().await);
    let a = TestServer::start_node(&db, flags).await;
    let b = TestServer::start_node(&db, flags).await;
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
        let r = s.get(&format!("/api/worker/poll?wait={wait}")).await;
        match r.status {
            200 => return r.body,
            204 => {}
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("poll answered {other}"),
        }
    }
}

/// Completes the hand-out `job` on `s` under its lease; the status code.
async fn complete(s: &TestServer, job: &Value, body: &str) -> u16 {
    http::complete(&s.http, &s.base, job, body.to_owned()).await
}

/// Starts a sync submit on `s` in the background.
fn submit_and_wait(s: &TestServer, body: &str) -> JoinHandle<Reply> {
    s.spawn_submit("?timeout=30", body.to_owned())
}

/// Waits until `s` reports `n` jobs in `status`.
async fn wait_for_count(s: &TestServer, status: &str, n: u64) {
    s.wait_stats(
        Duration::from_secs(20),
        &format!("{n} {status} jobs"),
        |v| v[status].as_u64() == Some(n),
    )
    .await
}

/// Waits until `s` has `n` workers in a long-poll.
async fn wait_for_pollers(s: &TestServer, n: u64) {
    s.wait_stats(BOUND, "workers polling", |v| {
        v["polling_workers"].as_u64() >= Some(n)
    })
    .await
}

/// A long-poll of up to 20 s on `s`, in the background.
fn spawn_long_poll(s: &TestServer) -> JoinHandle<Reply> {
    TestServer::spawn_send(s.http.get(s.url("/api/worker/poll?wait=20")))
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
    let worker = spawn_long_poll(&b);
    wait_for_pollers(&b, 1).await;
    let client = submit_and_wait(&a, r#"{"n":1}"#);
    let r = joined(Duration::from_secs(10), "worker on B woken", worker).await;
    assert_eq!(r.status, 200);
    let job = r.body;
    assert_eq!(job["payload"], serde_json::json!({"n": 1}));
    assert_eq!(complete(&b, &job, r#"{"done":true}"#).await, 200);

    let resp = joined(Duration::from_secs(10), "client on A answered", client).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body["job_id"], job["job_id"]);
    assert_eq!(resp.body["payload"], serde_json::json!({"done": true}));

    // The result is readable on both nodes.
    for s in [&a, &b] {
        assert_eq!(s.job(&id_of(&job)).await.body["status"], "completed");
    }
    a.stop().await;
    b.stop().await;
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
            a.submit_async("", format!("{{\"round\":{round},\"n\":{n}}}"))
                .await;
        }
        for p in pollers {
            let (at, job) = joined(Duration::from_secs(10), "poller on B woken", p).await;
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
    let listed = b.get("/api/admin/jobs?status=pending").await.body;
    let id = id_of(&listed["jobs"][0]);
    assert_eq!(b.delete(&format!("/api/jobs/{id}")).await.status, 200);
    let resp = joined(
        Duration::from_secs(10),
        "cancel reached the client on A",
        client,
    )
    .await;
    assert_eq!(resp.status, 410);

    let c1 = submit_and_wait(&a, "two");
    let c2 = submit_and_wait(&b, "three");
    wait_for_count(&a, "pending", 2).await;
    assert_eq!(b.delete("/api/admin/clear").await.status, 200);
    for c in [c1, c2] {
        let resp = joined(Duration::from_secs(10), "clear reached every client", c).await;
        assert_eq!(resp.status, 410);
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
                ids.push(http::enqueue(http, base, format!("{{\"i\":{i}}}")).await);
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
                let Some(job) = http::poll(http, base, "?wait=1").await else {
                    continue;
                };
                assert_eq!(job["attempt"], 1, "a job was handed out twice");
                let id = id_of(&job);
                assert!(seen.lock().insert(id.clone()), "job {id} handed out twice");
                assert_eq!(http::complete(http, base, &job, "ok").await, 200);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_job_is_handed_out_again_by_another_node() {
    if !available("killed_node_job_is_handed_out_again_by_another_node").await {
        return;
    }
    let db = Arc::new(TestDb::create().await);
    // Node A is the real binary (its data dir is unused: PostgreSQL holds the jobs).
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--postgres-url", &db.url, "--lease", "2"];
    let mut node_a = Proc::start(&dir.path().join("data"), free_port(), &flags).await;
    let http = reqwest::Client::new();
    let b = TestServer::start_node(&db, &["--lease", "2"]).await;

    http::enqueue(&http, &node_a.base, "survive").await;
    let first = http::poll(&http, &node_a.base, "")
        .await
        .expect("a job (200)");
    assert_eq!(first["attempt"], 1);

    // kill -9 node A while its job runs.
    node_a.kill9();
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
        acked.insert(a.submit_async("", format!("{i}")).await);
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
        let meanwhile = http::wait_health(&s.http, &s.base, 200, Duration::from_secs(20))
            .await
            .expect("node recovers");
        assert!(meanwhile.iter().all(|&st| st == 503), "{meanwhile:?}");
    }
    let mut done = HashSet::new();
    let mut waited_job = None;
    while done.len() < 21 {
        let job = poll_job(&b, 2, Duration::from_secs(30)).await;
        let id = id_of(&job);
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
    let resp = joined(
        Duration::from_secs(15),
        "waiting client on A answered after reconnect",
        waiting,
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body["job_id"], waited_job.as_str());
    assert_eq!(
        resp.body["payload"],
        format!("result-{waited_job}").as_str()
    );
    assert_eq!(
        db.scalar("select count(*) from jobq_jobs where status = 'completed'")
            .await,
        21
    );

    // New cross-node traffic works after the reconnect too.
    let client = submit_and_wait(&b, "after");
    let job = poll_job(&a, 5, Duration::from_secs(15)).await;
    assert_eq!(complete(&a, &job, "fine").await, 200);
    let resp = joined(Duration::from_secs(15), "client on B answered", client).await;
    assert_eq!(resp.status, 200);
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
    if let Err(e) = http::wait_health(&s.http, &s.base, status, within).await {
        panic!("{e}");
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
        stores::postgres_backend(&via_proxy, 4),
        vec![Box::new(db.clone()) as stores::Guard],
        &[],
    )
    .await;
    let b = TestServer::start_node(&db, &[]).await;

    // Acknowledged before the cut: a queued job and a client waiting on A.
    let queued = a.submit_async("", "queued").await;
    let waiting = submit_and_wait(&a, "waited-for");
    wait_for_count(&b, "pending", 2).await;

    proxy.down();
    wait_for_health(&a, 503, Duration::from_secs(15)).await;
    let r = a.post("/api/jobs", "refused").await;
    assert_eq!(r.status, 503, "a submit A cannot store is refused");
    assert!(r.headers.contains_key("retry-after"));
    wait_for_health(&b, 200, Duration::from_secs(5)).await;

    // While A is cut off, B's worker runs both jobs: A misses the NOTIFY.
    let mut waited_id = None;
    for _ in 0..2 {
        let job = poll_job(&b, 2, Duration::from_secs(10)).await;
        if job["payload"] == "waited-for" {
            waited_id = Some(id_of(&job));
        } else {
            assert_eq!(job["job_id"], queued.as_str());
        }
        assert_eq!(complete(&b, &job, "\"from B\"").await, 200);
    }
    let waited_id = waited_id.expect("waited-for job handed out");

    proxy.up();
    wait_for_health(&a, 200, Duration::from_secs(20)).await;
    // A re-LISTENs, tells its waiters to re-read, and the client is answered.
    let resp = joined(
        Duration::from_secs(20),
        "client on A answered after A reconnected",
        waiting,
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body["job_id"], waited_id.as_str());
    assert_eq!(resp.body["payload"], "from B");
    assert_eq!(a.job(&queued).await.body["status"], "completed");

    // And A takes work again, woken by B's NOTIFY on its new LISTEN.
    let worker = spawn_long_poll(&a);
    wait_for_pollers(&a, 1).await;
    let client = submit_and_wait(&b, "after");
    let r = joined(Duration::from_secs(10), "A's worker woken", worker).await;
    assert_eq!(r.status, 200);
    assert_eq!(complete(&a, &r.body, "fine").await, 200);
    let resp = joined(Duration::from_secs(10), "client on B answered", client).await;
    assert_eq!(resp.status, 200);
    a.stop().await;
    b.stop().await;
    drop(proxy);
}
