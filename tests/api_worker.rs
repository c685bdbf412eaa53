//! Worker endpoints (docs/api.md, "Worker"): poll, complete, fail, heartbeat,
//! leases and fencing, priorities and named queues, long-poll wake-ups.

mod common;

use std::time::{Duration, Instant};

use common::{assert_has_keys, id_of, keys, lease_of, Kind, TestServer};
use serde_json::json;

backend_tests!(
    poll_without_jobs_is_204,
    poll_hands_out_a_job,
    head_poll_takes_nothing,
    complete_errors,
    fail_with_retry_goes_back_to_pending,
    fail_without_retry_answers_client_502,
    fail_at_max_attempts_answers_client_502,
    heartbeat_extends_the_lease,
    expired_lease_is_redelivered,
    expired_leases_at_max_attempts_fail_the_job,
    fencing_by_lease_id,
    priorities_higher_first,
    named_queues_first_non_empty_wins,
    long_poll_wakes_up_promptly,
);

const UNKNOWN: &str = "3f1d2c4b-5a6e-4f70-8a91-b2c3d4e5f607";

async fn poll_without_jobs_is_204(kind: Kind) {
    let s = TestServer::start(kind).await;
    let r = s.get("/api/worker/poll").await;
    assert_eq!(r.status, 204);
    assert!(r.raw.is_empty(), "204 with a body: {r:?}");
    let t0 = Instant::now();
    let r = s.get("/api/worker/poll?wait=0.3&queue=a,b").await;
    assert_eq!(r.status, 204);
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "long-poll did not wait"
    );
    assert!(r.raw.is_empty());
    // Jobs in another queue are not handed out to a default-queue poll.
    s.submit_async("?queue=elsewhere", "x").await;
    assert!(s.poll("").await.is_none());
    s.stop().await;
}

async fn poll_hands_out_a_job(kind: Kind) {
    let s = TestServer::start(kind).await;
    let id = s.submit_async("?priority=3", r#"{"k":"v"}"#).await;
    let r = s.get("/api/worker/poll").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-job-id"), id);
    assert_has_keys(
        &r.body,
        &[
            "job_id",
            "payload",
            "headers",
            "queue",
            "attempt",
            "lease_id",
            "lease_expires_at",
        ],
        "hand-out",
    );
    assert_eq!(r.body["job_id"], id);
    assert_eq!(r.body["payload"], json!({"k": "v"}));
    assert!(r.body["headers"].is_object());
    assert_eq!(r.body["queue"], "default");
    assert_eq!(r.body["attempt"], 1);
    assert_eq!(r.body["lease_id"].as_str().unwrap().len(), 36);
    assert!(r.body["lease_expires_at"].as_str().unwrap().ends_with('Z'));
    let v = s.job(&id).await.body;
    assert_eq!(v["status"], "running");
    assert_eq!(v["attempts"], 1);
    assert!(v["started_at"].is_string());
    // Not handed out twice while the lease holds.
    assert!(s.poll("").await.is_none());
    s.complete_ok(&id, "", "").await;
    s.stop().await;
}

async fn head_poll_takes_nothing(kind: Kind) {
    let s = TestServer::start(kind).await;
    let id = s.submit_async("", "x").await;
    let r = s.send(s.http.head(s.url("/api/worker/poll"))).await;
    assert_eq!(r.status, 405, "{r:?}");
    let v = s.job(&id).await.body;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["attempts"], 0);
    assert_eq!(id_of(&s.take("").await), id);
    s.complete_ok(&id, "", "").await;
    s.stop().await;
}

/// `fail` and `heartbeat` on job `id` are refused with 409: it is not
/// running.
async fn fail_and_heartbeat_refused(s: &TestServer, id: &str) {
    s.fail(id, "", "{}").await.assert_error(409);
    s.heartbeat(id, "").await.assert_error(409);
}

async fn complete_errors(kind: Kind) {
    let s = TestServer::start(kind).await;
    let r = s.complete(UNKNOWN, "", "x").await;
    r.assert_error(404);
    s.complete("not-a-uuid", "", "x").await.assert_error(400);
    s.fail(UNKNOWN, "", "{}").await.assert_error(404);
    s.fail("zzz", "", "{}").await.assert_error(400);
    s.heartbeat(UNKNOWN, "").await.assert_error(404);
    s.heartbeat("12", "").await.assert_error(400);

    // A pending job is not running: 409 for all three.
    let id = s.submit_async("", "p").await;
    s.complete(&id, "", "x").await.assert_error(409);
    fail_and_heartbeat_refused(&s, &id).await;
    assert_eq!(s.job(&id).await.body["status"], "pending");

    let job = s.take("").await;
    let r = s.complete(&id, "", r#"{"r":1}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.keys(), keys(&["message", "job_id"]));
    assert_eq!(r.body["message"], "Job completed");
    assert_eq!(r.body["job_id"], id);
    assert_eq!(r.header("x-job-id"), id);
    // Completed: fail and heartbeat are refused.
    fail_and_heartbeat_refused(&s, &id).await;
    // A malformed lease id is a malformed request.
    s.complete(&id, "?lease=nope", "x").await.assert_error(400);
    let _ = job;
    s.stop().await;
}

async fn fail_with_retry_goes_back_to_pending(kind: Kind) {
    let s = TestServer::start(kind).await;
    let (client, job) = s.submit_and_take("?timeout=10", "try me").await;
    let id = id_of(&job);
    let r = s
        .fail(&id, "", r#"{"error":"transient","retry":true}"#)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["job_id"], id);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.header("x-job-id"), id);
    assert_eq!(s.job(&id).await.body["status"], "pending");
    // `retry` defaults to true.
    let again = s.take("").await;
    assert_eq!(id_of(&again), id);
    assert_eq!(again["attempt"], 2);
    assert_ne!(again["lease_id"], job["lease_id"]);
    let r = s.fail(&id, "", r#"{"error":"again"}"#).await;
    assert_eq!(r.body["status"], "pending");
    let third = s.take("").await;
    assert_eq!(third["attempt"], 3);
    s.complete_ok(&id, "", "finally").await;
    TestServer::join_result(client, "finally").await;
    s.stop().await;
}

/// Joins the sync submit `client`, which must get the `502` of a failed job.
async fn assert_failed(
    client: tokio::task::JoinHandle<common::Reply>,
    id: &str,
    attempts: u64,
    error: Option<&str>,
) {
    let r = TestServer::join(client).await;
    r.assert_error(502);
    assert_eq!(r.keys(), keys(&["error", "job_id", "attempts"]));
    assert_eq!(r.body["job_id"], id);
    assert_eq!(r.body["attempts"], attempts);
    assert_eq!(r.header("x-job-id"), id);
    if let Some(e) = error {
        assert_eq!(r.body["error"], e);
    }
}

async fn fail_without_retry_answers_client_502(kind: Kind) {
    let s = TestServer::start(kind).await;
    let (client, job) = s.submit_and_take("?timeout=10", "bad input").await;
    let id = id_of(&job);
    let r = s
        .fail(&id, "", r#"{"error":"cannot parse input","retry":false}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "failed");
    assert_failed(client, &id, 1, Some("cannot parse input")).await;
    let v = s.job(&id).await.body;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"], "cannot parse input");
    assert!(v["completed_at"].is_string());
    assert!(s.poll("").await.is_none(), "a failed job was handed out");
    s.complete(&id, "", "late").await.assert_error(409);
    s.stop().await;
}

async fn fail_at_max_attempts_answers_client_502(kind: Kind) {
    let s = TestServer::start_with(kind, &["--max-attempts", "2"]).await;
    let (client, job) = s.submit_and_take("?timeout=10", "flaky").await;
    let id = id_of(&job);
    let r = s.fail(&id, "", r#"{"error":"one"}"#).await;
    assert_eq!(r.body["status"], "pending");
    assert_eq!(s.take("").await["attempt"], 2);
    let r = s.fail(&id, "", r#"{"error":"two","retry":true}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "failed");
    assert_failed(client, &id, 2, Some("two")).await;
    assert!(s.poll("").await.is_none());
    s.assert_stats(&[("failed", 1), ("pending", 0)]).await;
    s.stop().await;
}

async fn heartbeat_extends_the_lease(kind: Kind) {
    let s = TestServer::start_with(kind, &["--lease", "1"]).await;
    let (client, job) = s.submit_and_take("?timeout=10", "long task").await;
    let id = id_of(&job);
    let lease = lease_of(&job).to_owned();
    let mut last = job["lease_expires_at"].as_str().unwrap().to_owned();
    // Work for 2 s (twice the lease), heartbeating every 300 ms.
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hb = if n % 2 == 0 {
            s.heartbeat(&id, &format!("?lease={lease}")).await
        } else {
            s.send(
                s.http
                    .post(s.url(&format!("/api/worker/heartbeat/{id}")))
                    .header("X-Lease-Id", &lease),
            )
            .await
        };
        assert_eq!(hb.status, 200, "{hb:?}");
        assert_eq!(hb.keys(), keys(&["job_id", "lease_expires_at"]));
        assert_eq!(hb.body["job_id"], id);
        let exp = hb.body["lease_expires_at"].as_str().unwrap().to_owned();
        assert!(exp > last, "lease not extended: {exp} <= {last}");
        last = exp;
        n += 1;
        // Nobody else gets the job meanwhile.
        assert!(
            s.poll("").await.is_none(),
            "re-delivered despite heartbeats"
        );
    }
    // Without a lease id the heartbeat applies to the current lease.
    assert_eq!(s.heartbeat(&id, "").await.status, 200);
    let v = s.job(&id).await.body;
    assert_eq!(v["status"], "running");
    assert_eq!(v["attempts"], 1);
    s.complete_ok(&id, &format!("?lease={lease}"), "done").await;
    TestServer::join_result(client, "done").await;
    s.stop().await;
}

async fn expired_lease_is_redelivered(kind: Kind) {
    let s = TestServer::start_with(kind, &["--lease", "1"]).await;
    let (client, first) = s.submit_and_take("?timeout=10", "redo").await;
    let id = id_of(&first);
    let t0 = Instant::now();
    // The first worker vanishes; a second one long-polls and gets the job
    // once the lease has run out.
    let second = s.take("").await;
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "re-delivered late: {waited:?}"
    );
    assert_eq!(id_of(&second), id);
    // Not before the first lease ran out (RFC 3339 UTC with fixed-width
    // fractions compares as text).
    let restarted = s.job(&id).await.body["started_at"].clone();
    let expired = first["lease_expires_at"].as_str().unwrap();
    assert!(
        restarted.as_str().unwrap() >= expired,
        "re-delivered at {restarted} before the lease ran out at {expired}"
    );
    assert_eq!(second["attempt"], 2);
    assert_ne!(second["lease_id"], first["lease_id"]);
    assert_eq!(second["payload"], "redo");
    let lease = lease_of(&second);
    s.complete_ok(&id, &format!("?lease={lease}"), "second")
        .await;
    TestServer::join_result(client, "second").await;
    s.stop().await;
}

async fn expired_leases_at_max_attempts_fail_the_job(kind: Kind) {
    let s = TestServer::start_with(kind, &["--lease", "0.5", "--max-attempts", "2"]).await;
    let (client, job) = s.submit_and_take("?timeout=10", "abandoned").await;
    let id = id_of(&job);
    assert_eq!(s.take("").await["attempt"], 2);
    assert_failed(client, &id, 2, None).await;
    let v = s.job(&id).await.body;
    assert_eq!(v["status"], "failed");
    assert!(v["error"].is_string());
    s.stop().await;
}

async fn fencing_by_lease_id(kind: Kind) {
    let s = TestServer::start_with(kind, &["--lease", "1"]).await;
    let (client, stale) = s.submit_and_take("?timeout=10", "fenced").await;
    let id = id_of(&stale);
    let l1 = lease_of(&stale).to_owned();
    let current = s.take("").await; // after the first lease ran out
    assert_eq!(id_of(&current), id);
    let l2 = lease_of(&current).to_owned();
    // Keep the current lease alive while the stale worker tries its luck.
    assert_eq!(s.heartbeat(&id, &format!("?lease={l2}")).await.status, 200);
    let with_header = |path: String, lease: &str| {
        s.http
            .post(s.url(&path))
            .header("X-Lease-Id", lease)
            .body("stale result")
    };
    s.complete(&id, &format!("?lease={l1}"), "stale result")
        .await
        .assert_error(409);
    s.send(with_header(format!("/api/worker/complete/{id}"), &l1))
        .await
        .assert_error(409);
    s.heartbeat(&id, &format!("?lease={l1}"))
        .await
        .assert_error(409);
    s.send(with_header(format!("/api/worker/fail/{id}"), &l1).body(r#"{"error":"stale"}"#))
        .await
        .assert_error(409);
    assert_eq!(s.job(&id).await.body["status"], "running");
    assert_eq!(
        s.send(with_header(format!("/api/worker/heartbeat/{id}"), &l2))
            .await
            .status,
        200
    );

    // The current lease completes, and may repeat itself.
    let r = s
        .send(
            s.http
                .post(s.url(&format!("/api/worker/complete/{id}")))
                .header("X-Lease-Id", &l2)
                .body("fresh result"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let again = s
        .complete(&id, &format!("?lease={l2}"), "fresh result")
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["message"], "Job completed");
    // A repeat by the same lease changes nothing, whatever it sends.
    let again = s
        .complete(&id, &format!("?lease={l2}"), "other bytes")
        .await;
    assert_eq!(again.status, 200);
    // Without a lease: the same bytes are a repeat, other bytes a conflict.
    s.complete_ok(&id, "", "fresh result").await;
    s.complete(&id, "", "other result").await.assert_error(409);
    s.complete(&id, &format!("?lease={l1}"), "fresh result")
        .await
        .assert_error(409);

    TestServer::join_result(client, "fresh result").await;
    let v = s.job(&id).await.body;
    assert_eq!(v["payload"], "fresh result");
    assert_eq!(v["attempts"], 2);
    s.stop().await;
}

async fn priorities_higher_first(kind: Kind) {
    let s = TestServer::start(kind).await;
    let [low, normal, high_a, high_b, urgent] = s
        .submit_each([
            ("?priority=-1", "low"),
            ("", "normal"),
            ("?priority=5", "high a"),
            ("?priority=5", "high b"),
            ("?priority=100", "urgent"),
        ])
        .await;
    assert_eq!(s.job(&low).await.body["position"], 4);
    assert_eq!(s.job(&urgent).await.body["position"], 0);
    let mut order = Vec::new();
    while let Some(job) = s.poll("").await {
        order.push(id_of(&job));
        assert!(order.len() <= 5, "more hand-outs than jobs");
    }
    // Higher first; equal priorities in arrival order.
    assert_eq!(order, vec![urgent, high_a, high_b, normal, low]);
    s.delete("/api/admin/clear").await;
    s.stop().await;
}

async fn named_queues_first_non_empty_wins(kind: Kind) {
    let s = TestServer::start(kind).await;
    let [b1, b2, c1, d1] = s
        .submit_each([
            ("?queue=b", "b1"),
            ("?queue=b", "b2"),
            ("?queue=c&priority=9", "c1"),
            ("", "d1"),
        ])
        .await;
    // `a` is empty, so `b` wins even though `c` holds a higher priority.
    let j = s.poll("?queue=a,b,c").await.expect("a job");
    assert_eq!(id_of(&j), b1);
    assert_eq!(j["queue"], "b");
    let j = s.poll("?queue=c,b").await.expect("a job");
    assert_eq!(id_of(&j), c1);
    assert_eq!(j["queue"], "c");
    assert!(s.poll("?queue=a,c").await.is_none());
    // Without `queue`, only `default`.
    let j = s.poll("").await.expect("a job");
    assert_eq!(id_of(&j), d1);
    assert!(s.poll("").await.is_none());
    assert!(s.poll("?queue=default").await.is_none());
    let j = s.poll("?queue=b").await.expect("a job");
    assert_eq!(id_of(&j), b2);
    let v = s.job(&b2).await.body;
    assert_eq!(v["queue"], "b");
    s.delete("/api/admin/clear").await;
    s.stop().await;
}

async fn long_poll_wakes_up_promptly(kind: Kind) {
    let s = TestServer::start(kind).await;
    for (poll_q, submit_q) in [("", ""), ("?queue=x,y", "?queue=y")] {
        let path = if poll_q.is_empty() {
            "/api/worker/poll?wait=10".to_owned()
        } else {
            format!("/api/worker/poll{poll_q}&wait=10")
        };
        let worker = TestServer::spawn_send(s.http.get(s.url(&path)));
        s.wait_stat("polling_workers", 1).await;
        let t0 = Instant::now();
        let id = s.submit_async(submit_q, "wake up").await;
        let r = TestServer::join(worker).await;
        let latency = t0.elapsed();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["job_id"], id);
        assert!(
            latency < Duration::from_secs(1),
            "long-poll woke after {latency:?}"
        );
        s.wait_stat("polling_workers", 0).await;
    }

    // Several long-polling workers, several jobs at once: each worker wakes.
    let workers: Vec<_> = (0..3)
        .map(|_| TestServer::spawn_send(s.http.get(s.url("/api/worker/poll?wait=10&queue=many"))))
        .collect();
    s.wait_stat("polling_workers", 3).await;
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(s.submit_async("?queue=many", format!("{i}")).await);
    }
    let mut got = Vec::new();
    for w in workers {
        let r = TestServer::join(w).await;
        assert_eq!(r.status, 200, "{r:?}");
        got.push(id_of(&r.body));
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "woke after {:?}",
        t0.elapsed()
    );
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "each job to exactly one worker");

    // A job failed with retry wakes a long-polling worker.
    let id = s.submit_async("?queue=retry", "r").await;
    assert_eq!(id_of(&s.take("retry").await), id);
    let worker = TestServer::spawn_send(s.http.get(s.url("/api/worker/poll?wait=10&queue=retry")));
    s.wait_stat("polling_workers", 1).await;
    let t0 = Instant::now();
    let r = s.fail(&id, "", r#"{"error":"retry me"}"#).await;
    assert_eq!(r.body["status"], "pending");
    let r = TestServer::join(worker).await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "woke after {:?}",
        t0.elapsed()
    );
    assert_eq!(r.body["job_id"], id);
    assert_eq!(r.body["attempt"], 2);
    s.delete("/api/admin/clear").await;
    s.stop().await;
}
