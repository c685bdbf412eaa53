//! Client endpoints (docs/api.md, "Client"): sync and async submit, reading and
//! cancelling jobs, idempotency, payload encodings, header filtering, limits
//! and request validation.

mod common;

use std::time::{Duration, Instant};

use common::{assert_has_keys, id_of, keys, lease_of, within, Kind, Reply, TestServer, BOUND};
use serde_json::{json, Value};

backend_tests!(
    sync_submit_answers_with_the_workers_result,
    timeout_answers_202_with_location,
    prefer_wait_answers_202_and_timeout_wins,
    wait_timeout_flag_and_timeout_zero,
    async_submit_then_get_with_wait,
    get_unknown_or_malformed_id,
    cancel_pending_job_answers_waiting_client_410,
    cancel_running_job_fences_its_worker,
    idempotency_key_attaches_to_the_first_job,
    idempotency_key_reused_for_other_work_is_422,
    payload_encodings,
    headers_reach_the_worker_filtered,
    max_body_is_413,
    max_queued_is_503_with_retry_after,
    malformed_query_values_are_400,
    routing_errors_are_json,
    client_disconnect_cancels_pending_job,
    client_disconnect_leaves_running_job,
    disconnect_keeps_job_others_wait_for,
    result_ttl_forgets_ended_jobs,
);

/// RFC 3339 in UTC, e.g. `2026-11-28T14:29:07.123456Z`.
fn assert_rfc3339(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    let b = s.as_bytes();
    assert!(
        s.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':',
        "not RFC 3339: {s}"
    );
    assert!(s.ends_with('Z'), "not UTC: {s}");
}

/// A lower-case hyphenated UUID v4.
fn assert_uuid_v4(s: &str) {
    assert_eq!(s.len(), 36, "not a UUID: {s}");
    assert_eq!(&s[14..15], "4", "not a v4 UUID: {s}");
    assert!(s
        .chars()
        .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
}

/// Waits until one client waits and its job is stored (waiters register
/// before the insert).
async fn wait_one_waiting_and_stored(s: &TestServer) {
    s.wait_stat("waiting_clients", 1).await;
    s.wait_stat("pending", 1).await;
}

async fn sync_submit_answers_with_the_workers_result(kind: Kind) {
    let s = TestServer::start(kind).await;
    let (client, job) = s.submit_and_take("?timeout=10", r#"{"n":1}"#).await;
    assert_eq!(job["payload"], json!({"n": 1}));
    let id = id_of(&job);
    assert_uuid_v4(&id);
    let r = s.complete(&id, "", r#"{"ok":true}"#).await;
    assert_eq!(r.status, 200);
    let resp = TestServer::join(client).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-job-id"), id);
    assert!(resp.header("content-type").starts_with("application/json"));
    assert_eq!(
        resp.keys(),
        keys(&["job_id", "payload", "created_at", "completed_at"])
    );
    assert_eq!(resp.body["job_id"], id);
    assert_eq!(resp.body["payload"], json!({"ok": true}));
    assert_rfc3339(&resp.body["created_at"]);
    assert_rfc3339(&resp.body["completed_at"]);
    assert!(resp.body["created_at"].as_str() <= resp.body["completed_at"].as_str());
    s.stop().await;
}

/// Checks a `202` of docs/api.md and returns the job id.
fn assert_accepted(r: &Reply) -> String {
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.keys(), keys(&["job_id", "status", "location"]));
    let id = id_of(&r.body);
    let loc = format!("/api/jobs/{id}");
    assert_eq!(r.header("location"), loc);
    assert_eq!(r.body["location"], loc);
    assert_eq!(r.header("x-job-id"), id);
    id
}

async fn timeout_answers_202_with_location(kind: Kind) {
    let s = TestServer::start(kind).await;
    let t0 = Instant::now();
    let r = TestServer::join(s.spawn_submit("?timeout=0.3", "work")).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "answered too early"
    );
    let id = assert_accepted(&r);
    assert_eq!(r.body["status"], "pending");
    // The job goes on: a worker still gets it and its result is kept.
    let job = s.take("").await;
    assert_eq!(job["job_id"], id);
    s.complete_ok(&id, "", "done").await;
    let v = s.get(r.header("location")).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.body["status"], "completed");
    assert_eq!(v.body["payload"], "done");
    s.stop().await;
}

async fn prefer_wait_answers_202_and_timeout_wins(kind: Kind) {
    let s = TestServer::start(kind).await;
    let rb = s
        .http
        .post(s.url("/api/submit"))
        .header("Prefer", "wait=0.3")
        .body("x");
    let r = TestServer::join(TestServer::spawn_send(rb)).await;
    let id = assert_accepted(&r);
    // `timeout` wins over `Prefer: wait` when both are given.
    let t0 = Instant::now();
    let rb = s
        .http
        .post(s.url("/api/submit?timeout=0.3"))
        .header("Prefer", "respond-async, wait=30")
        .body("y");
    let r = TestServer::join(TestServer::spawn_send(rb)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "Prefer won over timeout"
    );
    let id2 = assert_accepted(&r);
    assert_ne!(id, id2);
    // A wait preference jobq cannot read is refused, not ignored.
    for bad in ["wait", "wait=soon", "respond-async, wait=-1"] {
        let rb = s
            .http
            .post(s.url("/api/submit"))
            .header("Prefer", bad)
            .body("z");
        TestServer::join(TestServer::spawn_send(rb))
            .await
            .assert_error(400);
    }
    s.stop().await;
}

async fn wait_timeout_flag_and_timeout_zero(kind: Kind) {
    let s = TestServer::start_with(kind, &["--wait-timeout", "0.3"]).await;
    // Without `timeout`, `--wait-timeout` applies.
    let r = TestServer::join(s.spawn_submit("", "default wait")).await;
    assert_accepted(&r);
    // `timeout=0` waits forever: well past `--wait-timeout`, still waiting.
    let client = s.spawn_submit("?timeout=0", "forever");
    s.wait_stat("waiting_clients", 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!client.is_finished(), "timeout=0 did not wait");
    assert_eq!(s.stats().await["waiting_clients"], 1);
    s.take("").await;
    let job = s.take("").await;
    assert_eq!(job["payload"], "forever");
    s.complete_ok(job["job_id"].as_str().unwrap(), "", "at last")
        .await;
    TestServer::join_result(client, "at last").await;
    s.delete("/api/admin/clear").await;
    s.stop().await;
}

async fn async_submit_then_get_with_wait(kind: Kind) {
    let s = TestServer::start(kind).await;
    let r = s.post("/api/jobs", "first").await;
    let first = assert_accepted(&r);
    assert_eq!(r.body["status"], "pending");
    let r = s.post("/api/jobs", r#"{"second":true}"#).await;
    let id = assert_accepted(&r);

    // Pending view: timestamps null until set, position = jobs ahead.
    let v = s.job(&id).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.header("x-job-id"), id);
    assert_has_keys(
        &v.body,
        &[
            "job_id",
            "queue",
            "status",
            "attempts",
            "created_at",
            "started_at",
            "completed_at",
            "position",
        ],
        "view",
    );
    assert_eq!(v.body["job_id"], id);
    assert_eq!(v.body["queue"], "default");
    assert_eq!(v.body["status"], "pending");
    assert_eq!(v.body["attempts"], 0);
    assert_rfc3339(&v.body["created_at"]);
    assert_eq!(v.body["started_at"], Value::Null);
    assert_eq!(v.body["completed_at"], Value::Null);
    assert_eq!(v.body["position"], 1);
    assert!(v.body.get("payload").is_none(), "no result yet: {v:?}");
    assert_eq!(s.job(&first).await.body["position"], 0);

    // `?wait=N` on a job that does not end answers the view as it stands.
    let t0 = Instant::now();
    let v = s.get(&format!("/api/jobs/{id}?wait=0.3")).await;
    assert!(t0.elapsed() >= Duration::from_millis(250));
    assert_eq!(v.status, 200);
    assert_eq!(v.body["status"], "pending");

    // `?wait=N` answers as soon as the job ends.
    let waiting = TestServer::spawn_send(s.http.get(s.url(&format!("/api/jobs/{id}?wait=10"))));
    assert_eq!(s.take("").await["job_id"], first);
    let job = s.take("").await;
    assert_eq!(job["job_id"], id);
    assert_eq!(job["payload"], json!({"second": true}));
    let v = s.job(&id).await;
    assert_eq!(v.body["status"], "running");
    assert_eq!(v.body["attempts"], 1);
    assert_rfc3339(&v.body["started_at"]);
    assert!(v.body.get("position").is_none() || v.body["position"].is_null());
    let t0 = Instant::now();
    s.complete_ok(&id, "", r#"[1,2,3]"#).await;
    let v = TestServer::join(waiting).await;
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(v.status, 200);
    assert_eq!(v.header("x-job-id"), id);
    assert_eq!(v.body["status"], "completed");
    assert_eq!(v.body["payload"], json!([1, 2, 3]));
    assert_rfc3339(&v.body["completed_at"]);
    s.complete_ok(&first, "", "").await;
    s.stop().await;
}

async fn get_unknown_or_malformed_id(kind: Kind) {
    let s = TestServer::start(kind).await;
    let unknown = "0b6f3f5e-4b8a-4c1e-9a55-8f2d1f0c9e21";
    let r = s.job(unknown).await;
    r.assert_error(404);
    let r = s.get(&format!("/api/jobs/{unknown}?wait=1")).await;
    r.assert_error(404);
    let r = s.job("not-a-uuid").await;
    r.assert_error(400);
    let r = s.job("1234").await;
    r.assert_error(400);
    s.stop().await;
}

async fn cancel_pending_job_answers_waiting_client_410(kind: Kind) {
    let s = TestServer::start(kind).await;
    let client = s.spawn_submit("?timeout=10", "to cancel");
    wait_one_waiting_and_stored(&s).await;
    let id = s.get("/api/admin/jobs").await.body["jobs"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s.delete(&format!("/api/jobs/{id}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-job-id"), id);
    assert_eq!(r.body["job_id"], id);
    assert_eq!(r.body["status"], "cancelled");
    assert_rfc3339(&r.body["completed_at"]);

    let resp = TestServer::join(client).await;
    resp.assert_error(410);
    assert_eq!(resp.keys(), keys(&["error", "job_id"]));
    assert_eq!(resp.body["job_id"], id);
    assert_eq!(resp.header("x-job-id"), id);

    // A worker never sees it.
    assert!(s.poll("").await.is_none());
    assert_eq!(s.job(&id).await.body["status"], "cancelled");
    // Second cancel: the job has already ended.
    s.delete(&format!("/api/jobs/{id}")).await.assert_error(409);
    s.delete("/api/jobs/0b6f3f5e-4b8a-4c1e-9a55-8f2d1f0c9e21")
        .await
        .assert_error(404);
    s.delete("/api/jobs/nope").await.assert_error(400);
    s.stop().await;
}

async fn cancel_running_job_fences_its_worker(kind: Kind) {
    let s = TestServer::start(kind).await;
    let (client, job) = s.submit_and_take("?timeout=10", "running").await;
    let id = job["job_id"].as_str().unwrap();
    let r = s.delete(&format!("/api/jobs/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "cancelled");
    TestServer::join(client).await.assert_error(410);
    // The worker learns it should stop, and its result is refused.
    s.heartbeat(id, "").await.assert_error(409);
    let c = s.complete(id, "", "late result").await;
    c.assert_error(409);
    assert_eq!(c.header("x-job-id"), id);
    let lease = lease_of(&job);
    s.complete(id, &format!("?lease={lease}"), "late")
        .await
        .assert_error(409);
    assert_eq!(s.job(id).await.body["status"], "cancelled");
    s.stop().await;
}

async fn idempotency_key_attaches_to_the_first_job(kind: Kind) {
    let s = TestServer::start(kind).await;
    let submit = |key: &str| {
        s.http
            .post(s.url("/api/submit?timeout=10"))
            .header("Idempotency-Key", key)
            .body(r#"{"task":"once"}"#)
    };
    let first = TestServer::spawn_send(submit("k-1"));
    wait_one_waiting_and_stored(&s).await;
    let second = TestServer::spawn_send(submit("k-1"));
    s.wait_stat("waiting_clients", 2).await;
    // The async endpoint shares the key namespace.
    let r = s
        .send(
            s.http
                .post(s.url("/api/jobs"))
                .header("Idempotency-Key", "k-1")
                .body(r#"{"task":"once"}"#),
        )
        .await;
    let id_async = assert_accepted(&r);

    let job = s.take("").await;
    let id = id_of(&job);
    assert_eq!(id_async, id);
    assert!(s.poll("").await.is_none(), "a second job was created");
    s.complete_ok(&id, "", r#"{"answer":42}"#).await;
    for h in [first, second] {
        let r = TestServer::join(h).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["job_id"], id);
        assert_eq!(r.header("x-job-id"), id);
        assert_eq!(r.body["payload"], json!({"answer": 42}));
    }
    // After the end: answered at once with the kept result.
    let r = within(
        Duration::from_secs(2),
        "attach to ended job",
        s.send(submit("k-1")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["job_id"], id);
    assert_eq!(r.body["payload"], json!({"answer": 42}));
    assert_eq!(s.stats().await["total"], 1);
    s.stop().await;
}

async fn idempotency_key_reused_for_other_work_is_422(kind: Kind) {
    let s = TestServer::start(kind).await;
    let post = |path: &str, key: &str, body: &'static str| {
        s.http
            .post(s.url(path))
            .header("Idempotency-Key", key)
            .body(body)
    };
    let r = s.send(post("/api/jobs", "k-2", "body A")).await;
    let id = assert_accepted(&r);
    let r = s.send(post("/api/jobs", "k-2", "body A")).await;
    assert_eq!(assert_accepted(&r), id);
    s.send(post("/api/jobs", "k-2", "body B"))
        .await
        .assert_error(422);
    s.send(post("/api/submit?timeout=1", "k-2", "body B"))
        .await
        .assert_error(422);
    // Same body, other queue.
    s.send(post("/api/jobs?queue=other", "k-2", "body A"))
        .await
        .assert_error(422);
    assert_eq!(s.stats().await["total"], 1);
    s.stop().await;
}

async fn payload_encodings(kind: Kind) {
    let s = TestServer::start(kind).await;
    // JSON is embedded as JSON, text as a string, other bytes as base64.
    let cases: Vec<(Vec<u8>, Value, Option<&str>)> = vec![
        (br#"{"a":[1,"b"]}"#.to_vec(), json!({"a": [1, "b"]}), None),
        (b"42".to_vec(), json!(42), None),
        (
            b"plain text \"quoted\"".to_vec(),
            json!("plain text \"quoted\""),
            None,
        ),
        (vec![0xff, 0x00, 0x10], json!("/wAQ"), Some("base64")),
    ];
    for (bytes, want, enc) in cases {
        let (client, job) = s.submit_and_take("?timeout=10", bytes.clone()).await;
        assert_eq!(job["payload"], want, "hand-out of {bytes:?}");
        assert_eq!(job.get("payload_encoding").and_then(Value::as_str), enc);
        let id = id_of(&job);
        // The worker echoes the bytes back as its result.
        s.complete_ok(&id, "", bytes.clone()).await;
        let r = TestServer::join(client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["payload"], want, "result of {bytes:?}");
        assert_eq!(r.body.get("payload_encoding").and_then(Value::as_str), enc);
        let v = s.job(&id).await;
        assert_eq!(v.body["payload"], want, "view of {bytes:?}");
        assert_eq!(v.body.get("payload_encoding").and_then(Value::as_str), enc);
    }
    // An empty result is stored as `{}`.
    let (client, job) = s.submit_and_take("?timeout=10", "").await;
    assert_eq!(job["payload"], "");
    let id = job["job_id"].as_str().unwrap();
    s.complete_ok(id, "", "").await;
    let r = TestServer::join(client).await;
    assert_eq!(r.body["payload"], json!({}));
    s.stop().await;
}

async fn headers_reach_the_worker_filtered(kind: Kind) {
    let s = TestServer::start(kind).await;
    let rb = s
        .http
        .post(s.url("/api/submit?timeout=10"))
        .header("Authorization", "Bearer client-secret")
        .header("Cookie", "session=abc")
        .header("Proxy-Authorization", "Basic eA==")
        .header("Connection", "keep-alive")
        .header("Keep-Alive", "timeout=5")
        .header("TE", "trailers")
        .header("Proxy-Connection", "keep-alive")
        .header("X-Trace-Id", "Trace-42")
        .header("Content-Type", "text/plain")
        .body("hello");
    let client = TestServer::spawn_send(rb);
    let job = s.take("").await;
    let h = job["headers"].as_object().expect("headers object");
    assert_eq!(h.get("x-trace-id"), Some(&json!("Trace-42")), "{h:?}");
    assert_eq!(h.get("content-type"), Some(&json!("text/plain")));
    for (name, _) in h.iter() {
        assert_eq!(name, &name.to_ascii_lowercase(), "not lower-cased: {name}");
    }
    for private in [
        "authorization",
        "cookie",
        "proxy-authorization",
        "connection",
        "keep-alive",
        "te",
        "proxy-connection",
        "content-length",
    ] {
        assert!(
            !h.contains_key(private),
            "{private} reached the worker: {h:?}"
        );
    }
    let text = serde_json::to_string(&job).unwrap();
    assert!(!text.contains("client-secret"), "token leaked: {text}");
    let id = job["job_id"].as_str().unwrap();
    s.complete(id, "", "ok").await;
    assert_eq!(TestServer::join(client).await.status, 200);
    s.stop().await;
}

async fn max_body_is_413(kind: Kind) {
    let s = TestServer::start_with(kind, &["--max-body", "100"]).await;
    let big = vec![b'x'; 101];
    s.post("/api/submit?timeout=1", big.clone())
        .await
        .assert_error(413);
    s.post("/api/jobs", big.clone()).await.assert_error(413);
    // Exactly the limit is fine.
    let id = s.submit_async("", vec![b'y'; 100]).await;
    // The limit applies to every body, a worker's result included.
    let job = s.take("").await;
    assert_eq!(job["job_id"], id);
    s.complete(&id, "", big.clone()).await.assert_error(413);
    assert_eq!(s.job(&id).await.body["status"], "running");
    // Even endpoints that ignore their body refuse an oversized one, and
    // do nothing.
    s.post(&format!("/api/worker/heartbeat/{id}"), big.clone())
        .await
        .assert_error(413);
    s.send(
        s.http
            .delete(s.url(&format!("/api/jobs/{id}")))
            .body(big.clone()),
    )
    .await
    .assert_error(413);
    assert_eq!(s.job(&id).await.body["status"], "running");
    assert_eq!(s.stats().await["total"], 1);
    s.complete_ok(&id, "", "ok").await;
    s.stop().await;
}

async fn max_queued_is_503_with_retry_after(kind: Kind) {
    let s = TestServer::start_with(kind, &["--max-queued", "2"]).await;
    s.submit_async("", "1").await;
    s.submit_async("?queue=other", "2").await;
    for r in [
        s.post("/api/jobs", "3").await,
        s.post("/api/submit?timeout=1", "3").await,
    ] {
        r.assert_error(503);
        let secs: u64 = r
            .header("retry-after")
            .parse()
            .expect("Retry-After in seconds");
        assert!(secs >= 1);
    }
    // A hand-out frees a place (only `pending` jobs count).
    s.take("").await;
    s.submit_async("", "4").await;
    s.post("/api/jobs", "5").await.assert_error(503);
    // Nothing left running: the shutdown need not wait for it.
    s.delete("/api/admin/clear").await;
    s.stop().await;
}

async fn malformed_query_values_are_400(kind: Kind) {
    let s = TestServer::start(kind).await;
    let id = s.submit_async("", "x").await;
    let cases = [
        ("POST", "/api/submit?priority=abc".to_owned()),
        ("POST", "/api/jobs?priority=1.5".to_owned()),
        ("POST", "/api/submit?timeout=-1".to_owned()),
        ("POST", "/api/submit?timeout=soon".to_owned()),
        ("POST", "/api/jobs?queue=bad%20name".to_owned()),
        ("POST", "/api/jobs?queue=a,b".to_owned()),
        ("POST", "/api/jobs?queue=".to_owned()),
        ("GET", "/api/worker/poll?wait=x".to_owned()),
        ("GET", "/api/worker/poll?wait=-2".to_owned()),
        ("GET", "/api/worker/poll?queue=no/slash".to_owned()),
        ("GET", "/api/worker/poll?queue=a,,b".to_owned()),
        ("GET", format!("/api/jobs/{id}?wait=x")),
        ("GET", "/api/admin/jobs?limit=0".to_owned()),
        ("GET", "/api/admin/jobs?limit=ten".to_owned()),
        ("GET", "/api/admin/jobs?status=bogus".to_owned()),
        ("GET", "/api/admin/jobs?queue=b%21d".to_owned()),
        ("GET", "/api/admin/next?queue=%20".to_owned()),
        ("DELETE", "/api/admin/clear?queue=x%2Cy".to_owned()),
    ];
    for (method, path) in cases {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = s.send(s.http.request(m, s.url(&path)).body("x")).await;
        assert_eq!(r.status, 400, "{method} {path}: {r:?}");
        r.assert_error(400);
    }
    // Nothing was created or taken by the refused requests.
    s.assert_stats(&[("total", 1), ("pending", 1)]).await;
    s.stop().await;
}

async fn routing_errors_are_json(kind: Kind) {
    let s = TestServer::start(kind).await;
    s.get("/no/such/route").await.assert_error(404);
    s.post("/api/nope", "x").await.assert_error(404);
    s.get("/api/submit").await.assert_error(405);
    s.delete("/api/worker/poll").await.assert_error(405);
    s.post("/api/admin/stats", "").await.assert_error(405);
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    s.send(s.http.request(brew, s.url("/api/submit")))
        .await
        .assert_error(501);
    s.stop().await;
}

/// Sends `request` on a fresh connection (after `before`, answered first on
/// the same connection) and reads the answer to it until the server closes
/// the connection: (status, JSON body).
async fn raw_answer(s: &TestServer, before: Option<&[u8]>, request: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    if let Some(first) = before {
        c.write_all(first).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = within(BOUND, "the first answer", c.read(&mut buf))
            .await
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200 "),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    c.write_all(request).await.unwrap();
    let mut out = Vec::new();
    within(BOUND, "the error answer and close", c.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let status = head[9..12].parse().unwrap();
    assert!(
        head.lines().any(|l| l == "content-type: application/json"),
        "{head}"
    );
    (status, serde_json::from_str(body).expect("a JSON body"))
}

/// Requests the HTTP parser refuses before any handler runs still get a
/// JSON error, and an HTTP version other than 1.0 and 1.1 gets 505.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_requests_get_json_errors() {
    let s = TestServer::start(Kind::Memory).await;
    let cases: [(&[u8], u16); 5] = [
        (b"GARBAGE\r\n\r\n", 400),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            400,
        ),
        (b"GET /health HTTP/1.1\r\nbad header line\r\n\r\n", 400),
        (b"GET /health HTTP/3.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /health HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    ];
    for (request, status) in cases {
        let (got, body) = raw_answer(&s, None, request).await;
        assert_eq!(got, status, "{:?}", String::from_utf8_lossy(request));
        assert!(body["error"].is_string(), "{body}");
    }
    // On a connection that already served a request, too.
    let ok = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let (got, body) = raw_answer(&s, Some(ok), b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n").await;
    assert_eq!(got, 505);
    assert!(
        body["error"].as_str().unwrap().contains("HTTP/2.0"),
        "{body}"
    );
    s.stop().await;
}

/// Joins the request of an [`impatient_client`], which must have given up.
async fn assert_gave_up(h: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>) {
    let r = within(BOUND, "impatient client", h).await.unwrap();
    assert!(
        r.is_err_and(|e| e.is_timeout()),
        "expected a client timeout"
    );
}

/// A client that gives up (closes its connection) after `ms` milliseconds.
fn impatient_client(ms: u64) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(ms))
        .build()
        .unwrap()
}

async fn client_disconnect_cancels_pending_job(kind: Kind) {
    let s = TestServer::start(kind).await;
    let impatient = impatient_client(1000);
    let client = tokio::spawn(
        impatient
            .post(s.url("/api/submit?timeout=30"))
            .body("never mind")
            .send(),
    );
    wait_one_waiting_and_stored(&s).await;
    let list = s.get("/api/admin/jobs").await;
    let id = id_of(&list.body["jobs"][0]);
    // Someone watching the job does not keep it alive.
    let watcher = TestServer::spawn_send(s.http.get(s.url(&format!("/api/jobs/{id}?wait=10"))));
    s.wait_stat("waiting_clients", 2).await;
    assert_gave_up(client).await;
    let v = s
        .wait_status(&id, "cancelled", Duration::from_secs(5))
        .await;
    assert_eq!(v["attempts"], 0);
    let w = TestServer::join(watcher).await;
    assert_eq!(w.status, 200);
    assert_eq!(w.body["status"], "cancelled");
    assert!(s.poll("").await.is_none(), "a worker saw a cancelled job");
    assert_eq!(s.stats().await["waiting_clients"], 0);
    s.stop().await;
}

async fn client_disconnect_leaves_running_job(kind: Kind) {
    let s = TestServer::start(kind).await;
    let impatient = impatient_client(500);
    let rb = impatient
        .post(s.url("/api/submit?timeout=30"))
        .body("keep going");
    let client = tokio::spawn(rb.send());
    let job = s.take("").await;
    let id = id_of(&job);
    assert_gave_up(client).await;
    // Give a (wrong) cancellation every chance to land before checking.
    s.wait_stat("waiting_clients", 0).await;
    assert_eq!(s.job(&id).await.body["status"], "running");
    s.complete_ok(&id, "", "kept").await;
    let v = s.job(&id).await;
    assert_eq!(v.body["status"], "completed");
    assert_eq!(v.body["payload"], "kept");
    s.stop().await;
}

async fn result_ttl_forgets_ended_jobs(kind: Kind) {
    let s = TestServer::start_with(kind, &["--result-ttl", "0.5"]).await;
    let keyed = |body: &'static str| {
        s.http
            .post(s.url("/api/jobs"))
            .header("Idempotency-Key", "ttl-key")
            .body(body)
    };
    let done = assert_accepted(&s.send(keyed("a")).await);
    let pending = s.submit_async("?queue=slow", "b").await;
    let job = s.take("").await;
    assert_eq!(job["job_id"], done);
    s.complete_ok(&done, "", "r").await;
    assert_eq!(s.job(&done).await.status, 200);
    s.wait_gone(&done, Duration::from_secs(5)).await;
    s.job(&done).await.assert_error(404);
    // Its idempotency key is free again: other work under it is a new job.
    let again = assert_accepted(&s.send(keyed("other work")).await);
    assert_ne!(again, done);
    // A job that has not ended is never forgotten.
    assert_eq!(s.job(&pending).await.body["status"], "pending");
    assert_eq!(s.stats().await["total"], 2);
    s.stop().await;
}

async fn disconnect_keeps_job_others_wait_for(kind: Kind) {
    let s = TestServer::start(kind).await;
    let impatient = impatient_client(1000);
    let first = tokio::spawn(
        impatient
            .post(s.url("/api/submit?timeout=30"))
            .header("Idempotency-Key", "shared")
            .body("work")
            .send(),
    );
    wait_one_waiting_and_stored(&s).await;
    let second = TestServer::spawn_send(
        s.http
            .post(s.url("/api/submit?timeout=10"))
            .header("Idempotency-Key", "shared")
            .body("work"),
    );
    s.wait_stat("waiting_clients", 2).await;
    assert_gave_up(first).await;
    s.wait_stat("waiting_clients", 1).await;
    // The job the second client still waits for is not cancelled.
    let job = s.take("").await;
    let id = job["job_id"].as_str().unwrap();
    s.complete_ok(id, "", "for the second").await;
    TestServer::join_result(second, "for the second").await;
    s.stop().await;
}
