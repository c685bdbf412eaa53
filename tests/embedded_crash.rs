//! Durability of the embedded store (docs/api.md, "Guarantees"): the real
//! binary is killed with SIGKILL at several points and restarted on the same
//! data dir; every acknowledged job and result must be there, none twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use common::binary::{free_port, start_fails, Proc};
use common::http::{enqueue, enqueue_keyed, get_json, json_of, spawn_post, status_of};
use common::{id_of, lease_of};
use serde_json::Value;

/// Every job, from the admin list of the server at `base`.
async fn list_all(http: &reqwest::Client, base: &str) -> Vec<Value> {
    let v = get_json_of(http, format!("{base}/api/admin/jobs?limit=1000")).await;
    v["jobs"].as_array().unwrap().clone()
}

/// A client re-submitting `body` with its idempotency `key`
/// (`POST {base}/api/submit`): the answer, which must be a 200 (the stored
/// result, at once).
async fn resubmit(http: &reqwest::Client, base: &str, key: &str, body: String) -> Value {
    let r = http
        .post(format!("{base}/api/submit"))
        .header("idempotency-key", key)
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    json_of(r, 200).await
}

/// Completes job `id` (no lease) with `body`; the answer's status.
async fn complete(http: &reqwest::Client, p: &Proc, id: &str, body: String) -> u16 {
    status_of(
        http.post(p.url(&format!("/api/worker/complete/{id}")))
            .body(body),
    )
    .await
}

/// Submits a small job (`POST /api/jobs`) every `every_ms` until the answer
/// is `want`, and returns that answer; the answers before it must be
/// `meanwhile`; `what` names the change when 10 s pass first.
async fn enqueue_until(
    http: &reqwest::Client,
    p: &Proc,
    (meanwhile, want): (u16, u16),
    every_ms: u64,
    what: &str,
) -> reqwest::Response {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .post(p.url("/api/jobs"))
            .body("\"small\"")
            .send()
            .await
            .unwrap();
        if r.status() == want {
            return r;
        }
        assert_eq!(r.status(), meanwhile, "before: {what}");
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
    }
}

/// A server started with `flags` on a new data dir (`data` in the returned
/// temp dir), and an HTTP client.
async fn start_fresh(flags: &[&str]) -> (tempfile::TempDir, PathBuf, Proc, reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = Proc::start(&data, free_port(), flags).await;
    (dir, data, p, reqwest::Client::new())
}

/// One poll of the default queue.
async fn poll(http: &reqwest::Client, p: &Proc) -> Option<Value> {
    common::http::poll(http, &p.base, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_submit_burst_loses_no_acknowledged_job() {
    let (_dir, data, mut p, http) = start_fresh(&[]).await;

    // 400 async submits from 16 concurrent senders; kill -9 once 100 are acknowledged.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let mut senders = Vec::new();
    for s in 0..16 {
        let (http, url, ack_tx) = (http.clone(), p.url("/api/jobs"), ack_tx.clone());
        senders.push(tokio::spawn(async move {
            for n in 0..25 {
                let key = format!("k-{s}-{n}");
                let r = http
                    .post(&url)
                    .header("idempotency-key", &key)
                    .body(format!("{{\"s\":{s},\"n\":{n}}}"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        let v: Value = r.json().await.unwrap();
                        let _ = ack_tx.send((key, id_of(&v)));
                    }
                    _ => return, // the server is gone
                }
            }
        }));
    }
    drop(ack_tx);
    let mut acked: HashMap<String, String> = HashMap::new();
    while let Some((k, id)) = tokio::time::timeout(Duration::from_secs(20), ack_rx.recv())
        .await
        .unwrap()
    {
        acked.insert(k, id);
        if acked.len() == 100 {
            p.kill9();
            break;
        }
    }
    for s in senders {
        let _ = s.await;
    }
    // Late acknowledgements that raced with the kill count too.
    while let Ok(Some((k, id))) =
        tokio::time::timeout(Duration::from_millis(100), ack_rx.recv()).await
    {
        acked.insert(k, id);
    }
    assert!(acked.len() >= 100);

    let p = Proc::start(&data, free_port(), &[]).await;
    let jobs = list_all(&http, &p.base).await;
    let ids: HashSet<&str> = jobs.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), jobs.len(), "no job twice");
    for (key, id) in &acked {
        assert!(
            ids.contains(id.as_str()),
            "acknowledged job {id} ({key}) lost"
        );
    }
    assert!(jobs.iter().all(|j| j["status"] == "pending"));
    assert!(jobs.len() <= 400);
    // Re-submitting an acknowledged key attaches to the stored job.
    let (key, id) = acked.iter().next().unwrap();
    assert_eq!(&enqueue_keyed(&http, &p.base, key, body_of(key)).await, id);
    assert_eq!(
        list_all(&http, &p.base).await.len(),
        jobs.len(),
        "no new job for a known key"
    );
}

/// A sync submit in the background, and the job handed to a worker
/// (one long-poll: the submit wakes it).
async fn submit_and_take(
    http: &reqwest::Client,
    p: &Proc,
    body: &'static str,
) -> (tokio::task::JoinHandle<reqwest::Response>, Value) {
    let client = spawn_post(http, p.url("/api/submit"), body);
    let job = common::http::poll(http, &p.base, "?wait=10")
        .await
        .expect("no job within the long-poll");
    (client, job)
}

/// Submits `n` jobs, `{"i":0}` to `{"i":n-1}`, each acknowledged.
async fn enqueue_numbered(http: &reqwest::Client, p: &Proc, n: usize) {
    for i in 0..n {
        enqueue(http, &p.base, format!("{{\"i\":{i}}}")).await;
    }
}

/// Takes `n` jobs of the default queue (they must be there); their ids.
async fn take_ids(http: &reqwest::Client, p: &Proc, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    for _ in 0..n {
        ids.insert(id_of(&poll(http, p).await.expect("a job")));
    }
    ids
}

fn body_of(key: &str) -> String {
    let mut it = key.trim_start_matches("k-").split('-');
    let (s, n) = (it.next().unwrap(), it.next().unwrap());
    format!("{{\"s\":{s},\"n\":{n}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_jobs_running_returns_them_to_pending() {
    let (_dir, data, mut p, http) = start_fresh(&[]).await;
    enqueue_numbered(&http, &p, 20).await;
    let running = take_ids(&http, &p, 5).await;
    // Hand-outs are written within 100 ms (docs/storage.md); then a
    // durable write puts them in front of it in the log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    enqueue(&http, &p.base, "{\"i\":20}".to_owned()).await;
    p.kill9();

    let p = Proc::start(&data, free_port(), &[]).await;
    let jobs = list_all(&http, &p.base).await;
    assert_eq!(jobs.len(), 21);
    for j in &jobs {
        assert_eq!(j["status"], "pending", "{j}");
        let was_running = running.contains(j["job_id"].as_str().unwrap());
        assert_eq!(j["attempts"], if was_running { 1 } else { 0 }, "{j}");
    }
    // They are handed out again, attempt 2.
    let mut seen = 0;
    while let Some(j) = poll(&http, &p).await {
        if running.contains(j["job_id"].as_str().unwrap()) {
            assert_eq!(j["attempt"], 2);
            seen += 1;
        }
    }
    assert_eq!(seen, 5);
}

/// A restart ends every lease through the same rule as a lease that ran
/// out: a job that has had `--max-attempts` hand-outs is failed, not handed
/// out once more; the failure is written, so a second restart agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_a_job_out_of_attempts_fails_it_at_restart() {
    let flags = ["--max-attempts", "1"];
    let (_dir, data, mut p, http) = start_fresh(&flags).await;
    enqueue(&http, &p.base, "{\"last\":true}").await;
    let j = poll(&http, &p).await.expect("a job");
    assert_eq!(j["attempt"], 1);
    let id = id_of(&j);
    // Let the deferred hand-out write reach the log (docs/storage.md).
    tokio::time::sleep(Duration::from_millis(300)).await;
    enqueue(&http, &p.base, "{\"other\":true}").await;
    p.kill9();

    for round in 0..2 {
        let mut p = Proc::start(&data, free_port(), &flags).await;
        let v = get_json_of(&http, p.url(&format!("/api/jobs/{id}"))).await;
        assert_eq!(v["status"], "failed", "round {round}: {v}");
        assert_eq!(v["attempts"], 1, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("restarted"),
            "round {round}: {v}"
        );
        assert!(v["completed_at"].is_string(), "{v}");
        p.kill9();
    }
}

/// Hand-outs are written deferred (docs/storage.md) and skipped when the
/// job changes first; once the deferred writes are in, a kill must find
/// completed jobs completed (a stale hand-out never overwrites them) and
/// running ones with their attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_deferred_writes_keeps_completions_and_attempts() {
    let (_dir, data, mut p, http) = start_fresh(&[]).await;
    enqueue_numbered(&http, &p, 10).await;
    let mut completed = HashSet::new();
    for _ in 0..5 {
        let j = poll(&http, &p).await.expect("a job");
        let id = id_of(&j);
        let r = complete(&http, &p, &id, format!("{{\"done\":\"{id}\"}}")).await;
        assert_eq!(r, 200);
        completed.insert(id);
    }
    let running = take_ids(&http, &p, 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.kill9();

    let p = Proc::start(&data, free_port(), &[]).await;
    let jobs = list_all(&http, &p.base).await;
    assert_eq!(jobs.len(), 10);
    for j in &jobs {
        let id = j["job_id"].as_str().unwrap();
        if completed.contains(id) {
            assert_eq!(j["status"], "completed", "{j}");
            assert_eq!(j["attempts"], 1, "{j}");
            assert_eq!(j["payload"]["done"], id, "{j}");
        } else {
            assert_eq!(j["status"], "pending", "{j}");
            let attempts = if running.contains(id) { 1 } else { 0 };
            assert_eq!(j["attempts"], attempts, "{j}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_right_after_completes_keeps_every_result() {
    let (_dir, data, mut p, http) = start_fresh(&[]).await;
    for i in 0..50 {
        enqueue_keyed(
            &http,
            &p.base,
            &format!("key-{i}"),
            format!("{{\"i\":{i}}}"),
        )
        .await;
    }
    let mut done = HashMap::new();
    while let Some(j) = poll(&http, &p).await {
        let id = id_of(&j);
        let i = j["payload"]["i"].as_u64().unwrap();
        let r = complete(&http, &p, &id, format!("{{\"result\":{}}}", i * 10)).await;
        assert_eq!(r, 200);
        done.insert(id, i);
    }
    assert_eq!(done.len(), 50);
    p.kill9();

    let p = Proc::start(&data, free_port(), &[]).await;
    for (id, i) in &done {
        let v = get_json_of(&http, p.url(&format!("/api/jobs/{id}"))).await;
        assert_eq!(v["status"], "completed");
        assert_eq!(v["payload"]["result"], i * 10);
    }
    // A client re-submitting with its key gets the stored result at once.
    let (id, i) = done.iter().next().unwrap();
    let v = resubmit(
        &http,
        &p.base,
        &format!("key-{i}"),
        format!("{{\"i\":{i}}}"),
    )
    .await;
    assert_eq!(v["job_id"], id.as_str());
    assert_eq!(v["payload"]["result"], i * 10);
    let stats = get_json(&http, &p.url("/api/admin/stats")).await;
    assert_eq!(stats["total"], 50);
    assert_eq!(stats["completed"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_job_finish_and_exits_zero() {
    let (_dir, data, mut p, http) = start_fresh(&["--shutdown-grace", "20"]).await;
    let (client, job) = submit_and_take(&http, &p, "\"work\"").await;
    let id = id_of(&job);
    p.term();
    // New submits are refused while the running job drains.
    let what = "submits still accepted after SIGTERM";
    let r = enqueue_until(&http, &p, (202, 503), 10, what).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(complete(&http, &p, &id, "\"done\"".into()).await, 200);
    let resp = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(json_of(resp, 200).await["payload"], "done");
    let st = p.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(st.code(), Some(0), "{}", p.log_text());

    // The result was stored.
    let p = Proc::start(&data, free_port(), &[]).await;
    let v = get_json(&http, &p.url(&format!("/api/jobs/{id}"))).await;
    assert_eq!(v["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_over_answers_waiting_clients_503_and_keeps_their_jobs() {
    let (_dir, data, mut p, http) = start_fresh(&["--shutdown-grace", "0.5"]).await;
    let (client, job) = submit_and_take(&http, &p, "\"stuck\"").await;
    p.term();
    let resp = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .unwrap()
        .unwrap();
    let v = json_of(resp, 503).await;
    assert_eq!(v["job_id"], job["job_id"]);
    assert!(v["error"].is_string());
    assert_eq!(p.wait_exit(Duration::from_secs(15)).await.code(), Some(0));

    let p = Proc::start(&data, free_port(), &[]).await;
    let v = get_json(
        &http,
        &p.url(&format!("/api/jobs/{}", job["job_id"].as_str().unwrap())),
    )
    .await;
    assert_eq!(
        v["status"], "pending",
        "unfinished work is served after restart"
    );
}

fn assert_one_line_failure(code: Option<i32>, stderr: &str, mentions: &str) {
    assert_ne!(code, Some(0), "{stderr}");
    assert!(code.is_some(), "killed by a signal: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains(mentions),
        "{line:?} should mention {mentions:?}"
    );
}

#[test]
fn start_up_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");

    // A data dir that cannot be created (a file is in the way).
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let bad_dir = file.join("sub");
    let (code, err) = start_fails(&["--data-dir", bad_dir.to_str().unwrap(), "--listen", &listen]);
    assert_one_line_failure(code, &err, bad_dir.to_str().unwrap());

    // A database file that is not a database at all.
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("jobq.db"), vec![0x42u8; 8192]).unwrap();
    let (code, err) = start_fails(&["--data-dir", corrupt.to_str().unwrap(), "--listen", &listen]);
    assert_one_line_failure(code, &err, "jobq.db");

    // A SQLite database of another program, and one of a newer jobq.
    for (name, sql, says) in [
        (
            "foreign",
            "CREATE TABLE customers (id INTEGER PRIMARY KEY)",
            "not a jobq database",
        ),
        (
            "newer",
            "PRAGMA application_id = 1785684593; PRAGMA user_version = 99;",
            "newer",
        ),
    ] {
        let data = dir.path().join(name);
        std::fs::create_dir(&data).unwrap();
        rusqlite::Connection::open(data.join("jobq.db"))
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        let (code, err) = start_fails(&["--data-dir", data.to_str().unwrap(), "--listen", &listen]);
        assert_one_line_failure(code, &err, says);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_serves_one_process_at_a_time() {
    let (_dir, data, _p, _) = start_fresh(&[]).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, err) = start_fails(&["--data-dir", data.to_str().unwrap(), "--listen", &listen]);
    assert_one_line_failure(code, &err, "in use by another jobq process");
}

#[test]
fn malformed_flags_exit_2_naming_the_flag() {
    let (code, err) = start_fails(&["--lease", "soon"]);
    assert_eq!(code, Some(2));
    assert!(
        err.lines().next().unwrap_or("").contains("--lease"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_answers_503_then_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Files may not grow past 1 MiB: the WAL fills up after a few submits.
    let mut p = Proc::start_limited(&data, free_port(), &[], Some(1 << 20)).await;
    let http = reqwest::Client::new();
    let big = "x".repeat(64 * 1024);
    let mut acked = Vec::new();
    let mut refused = false;
    for i in 0..64 {
        let r = http
            .post(p.url("/api/jobs"))
            .body(format!("\"{i}{big}\""))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => acked.push(
                r.json::<Value>().await.unwrap()["job_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                let v: Value = r.json().await.unwrap();
                assert!(v["error"].is_string());
                refused = true;
                break;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(refused, "the file size limit was never hit");
    assert!(!acked.is_empty());
    // Reads go on; health says the store is unusable; writes are refused.
    let read = http.get(p.url(&format!("/api/jobs/{}", acked[0])));
    assert_eq!(status_of(read).await, 200);
    assert_eq!(status_of(http.get(p.url("/health"))).await, 503);
    assert_eq!(
        status_of(http.post(p.url("/api/jobs")).body("small")).await,
        503
    );

    // Space returns: writes are taken again within a few retries.
    p.unlimit_files();
    let r = enqueue_until(&http, &p, (503, 202), 100, "store did not recover").await;
    acked.push(id_of(&json_of(r, 202).await));
    assert_eq!(status_of(http.get(p.url("/health"))).await, 200);
    p.kill9();

    let p = Proc::start(&data, free_port(), &[]).await;
    let jobs = list_all(&http, &p.base).await;
    let ids: HashSet<&str> = jobs.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    for id in &acked {
        assert!(ids.contains(id.as_str()), "acknowledged job {id} lost");
    }
    assert_eq!(
        ids.len(),
        acked.len(),
        "a refused submit must not appear later"
    );
}

/// Jobs restored at start-up are handed out with their input read back
/// through the store's one connection, while submits and completes commit
/// through it too: every request must be answered (none left behind by a
/// reader holding the connection), every result must reach its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_jobs_are_served_while_new_writes_commit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = Proc::start(&data, free_port(), &[]).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Every fourth input is too big to be kept in the job row (docs/storage.md).
    for i in 0..200 {
        let pad = if i % 4 == 0 {
            "x".repeat(2000)
        } else {
            String::new()
        };
        enqueue(
            &http,
            &p.base,
            format!("{{\"restored\":{i},\"pad\":\"{pad}\"}}"),
        )
        .await;
    }
    p.term();
    assert!(p.wait_exit(Duration::from_secs(10)).await.success());

    let p = Proc::start(&data, free_port(), &[]).await;
    // 8 echo workers, until both the restored and the new jobs are done
    // (or a minute has passed: the checks below then fail).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (http, done) = (http.clone(), done.clone());
        let base = p.base.clone();
        workers.push(tokio::spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while done.load(std::sync::atomic::Ordering::SeqCst) < 400
                && std::time::Instant::now() < deadline
            {
                let Some(j) = common::http::poll(&http, &base, "?wait=1").await else {
                    continue;
                };
                let id = id_of(&j);
                let r = http
                    .post(format!("{base}/api/worker/complete/{id}"))
                    .body(j["payload"].to_string());
                assert_eq!(status_of(r).await, 200);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    // 200 new synchronous submits from 8 clients meanwhile; each gets its own payload back.
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, url) = (http.clone(), p.url("/api/submit"));
        clients.push(tokio::spawn(async move {
            for n in 0..25 {
                let body = format!("{{\"c\":{c},\"n\":{n}}}");
                let r = http.post(&url).body(body.clone()).send().await.unwrap();
                let v = json_of(r, 200).await;
                assert_eq!(v["payload"], serde_json::from_str::<Value>(&body).unwrap());
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    for w in workers {
        w.await.unwrap();
    }
    let jobs = list_all(&http, &p.base).await;
    assert_eq!(jobs.len(), 400);
    assert!(jobs.iter().all(|j| j["status"] == "completed"), "all done");
    let restored: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["payload"].get("restored").is_some())
        .collect();
    assert_eq!(restored.len(), 200, "restored inputs read back intact");
    for j in restored {
        let i = j["payload"]["restored"].as_u64().unwrap();
        let pad = j["payload"]["pad"].as_str().unwrap().len();
        assert_eq!(pad, if i % 4 == 0 { 2000 } else { 0 }, "{j}");
    }
}

/// Ended jobs are held as compact records once their final write is
/// committed (by the next maintenance pass), and read back from the
/// database when asked for: before and after a `kill -9` and restart,
/// `GET`, the admin list, an idempotent attach and a repeated complete give
/// each of them whole (result, error, timestamps, attempts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_ended_jobs_whole_for_every_read() {
    let (_dir, data, mut p, http) = start_fresh(&[]).await;
    let mut completed = Vec::new();
    for i in 0..20 {
        enqueue_keyed(
            &http,
            &p.base,
            &format!("whole-{i}"),
            format!("{{\"i\":{i}}}"),
        )
        .await;
        let job = poll(&http, &p).await.expect("a job");
        let body = format!("{{\"r\":{}}}", i * 10);
        assert_eq!(
            common::http::complete(&http, &p.base, &job, body.clone()).await,
            200
        );
        completed.push((i, job, body));
    }
    let failed = enqueue(&http, &p.base, "{\"f\":1}").await;
    for (retry, error) in [(true, "first"), (false, "last")] {
        let job = poll(&http, &p).await.expect("a job");
        assert_eq!(id_of(&job), failed);
        let r = http
            .post(p.url(&format!("/api/worker/fail/{failed}")))
            .header("x-lease-id", lease_of(&job))
            .json(&serde_json::json!({ "error": error, "retry": retry }));
        assert_eq!(status_of(r).await, 200);
    }
    let cancelled = enqueue(&http, &p.base, "{\"c\":1}").await;
    poll(&http, &p).await.expect("a job");
    let cancel = http.delete(p.url(&format!("/api/jobs/{cancelled}")));
    assert_eq!(status_of(cancel).await, 200);

    // A sync submit: its client is answered from the completion in memory.
    let (client, job) = submit_and_take(&http, &p, "{\"sync\":1}").await;
    let synced = id_of(&job);
    assert_eq!(
        common::http::complete(&http, &p.base, &job, "{\"s\":1}").await,
        200
    );
    let answered = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .unwrap()
        .unwrap();
    let answered = json_of(answered, 200).await;

    let get = |p: &Proc, id: &str| get_json_of(&http, p.url(&format!("/api/jobs/{id}")));
    let mut ids: Vec<String> = completed.iter().map(|(_, j, _)| id_of(j)).collect();
    ids.extend([failed.clone(), cancelled.clone(), synced.clone()]);
    let mut held = HashMap::new();
    for id in &ids {
        held.insert(id.clone(), get(&p, id).await);
    }
    // The maintenance pass (about every second) moves them to disk: read
    // back, they are what was read from memory.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut before = HashMap::new();
    for id in &ids {
        before.insert(id.clone(), get(&p, id).await);
    }
    assert_eq!(before, held);
    // Read back from disk: what its client was answered from memory.
    let s = &before[&synced];
    for key in ["payload", "created_at", "completed_at"] {
        assert_eq!(s[key], answered[key], "{key}: {s} vs {answered}");
    }
    assert_eq!(
        (&s["status"], &s["attempts"]),
        (&"completed".into(), &1.into()),
        "{s}"
    );
    assert!(s["started_at"].as_str().is_some(), "{s}");
    let f = &before[&failed];
    assert_eq!(
        (&f["status"], &f["attempts"]),
        (&"failed".into(), &2.into()),
        "{f}"
    );
    assert_eq!(f["error"], "last", "{f}");
    assert_eq!(before[&cancelled]["status"], "cancelled");
    let listed_before = list_all(&http, &p.base).await;

    let check = |p: &Proc| {
        let (http, p_base) = (http.clone(), p.base.clone());
        let (before, completed, listed_before) =
            (before.clone(), completed.clone(), listed_before.clone());
        async move {
            for (id, want) in &before {
                let got = get_json_of(&http, format!("{p_base}/api/jobs/{id}")).await;
                assert_eq!(&got, want, "GET {id}");
            }
            assert_eq!(list_all(&http, &p_base).await, listed_before, "list");
            for (i, job, body) in completed.iter().take(3) {
                let id = id_of(job);
                // A client re-submitting with its key gets the stored result.
                let key = format!("whole-{i}");
                let v = resubmit(&http, &p_base, &key, format!("{{\"i\":{i}}}")).await;
                assert_eq!(v["job_id"], id.as_str());
                assert_eq!(v["payload"]["r"], i * 10);
                // The worker repeating its complete under its lease: a repeat.
                assert_eq!(
                    common::http::complete(&http, &p_base, job, body.clone()).await,
                    200
                );
                assert_eq!(
                    common::http::complete(&http, &p_base, job, "{\"other\":1}").await,
                    200
                );
            }
            let stats = get_json(&http, &format!("{p_base}/api/admin/stats")).await;
            assert_eq!(
                (&stats["total"], &stats["completed"], &stats["failed"]),
                (&23.into(), &21.into(), &1.into()),
                "{stats}"
            );
        }
    };
    check(&p).await;
    p.kill9();
    let p = Proc::start(&data, free_port(), &[]).await;
    check(&p).await;
}

/// `GET url`'s body as JSON, which must be a `200`.
async fn get_json_of(http: &reqwest::Client, url: String) -> Value {
    json_of(http.get(&url).send().await.unwrap(), 200).await
}
