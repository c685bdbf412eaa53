//! Admin endpoints and `/health` (docs/api.md, "Admin", "Health").

mod common;

use std::time::{Duration, Instant};

use common::{id_of, keys, Kind, TestServer};
use serde_json::{json, Value};

backend_tests!(
    health_is_ok,
    stats_keys_and_counts,
    admin_next_peeks_without_taking,
    admin_jobs_filters_newest_first,
    clear_answers_waiting_clients_410_at_once,
    clear_one_queue,
);

async fn health_is_ok(kind: Kind) {
    let s = TestServer::start(kind).await;
    let r = s.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"status": "ok"}));
    s.stop().await;
}

const STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

fn assert_counts(st: &Value, want: [u64; 5]) {
    for (k, n) in STATUSES.iter().zip(want) {
        assert_eq!(st[k], n, "{k} in {st}");
    }
    assert_eq!(st["total"], want.iter().sum::<u64>(), "total in {st}");
}

async fn stats_keys_and_counts(kind: Kind) {
    let s = TestServer::start(kind).await;
    let st = s.stats().await;
    let mut want = keys(&[
        "total",
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
        "waiting_clients",
        "polling_workers",
        "queues",
        "uptime_s",
    ]);
    let mut have: Vec<String> = st.as_object().unwrap().keys().cloned().collect();
    have.sort();
    have.retain(|k| want.contains(k));
    want.sort();
    assert_eq!(have, want, "stats keys: {st}");
    for k in &want {
        if k != "queues" {
            assert!(st[k].is_u64(), "{k} is not an integer: {st}");
        }
    }
    assert!(st["queues"].is_object());
    assert_counts(&st, [0; 5]);

    // One job in each status.
    let [done, failed, running, cancelled] = s
        .submit_each([("", "c"), ("", "f"), ("", "r"), ("", "x")])
        .await;
    assert_eq!(id_of(&s.take("").await), done);
    s.complete(&done, "", "ok").await;
    assert_eq!(id_of(&s.take("").await), failed);
    s.post(
        &format!("/api/worker/fail/{failed}"),
        r#"{"error":"no","retry":false}"#,
    )
    .await;
    assert_eq!(id_of(&s.take("").await), running);
    assert_eq!(
        s.delete(&format!("/api/jobs/{cancelled}")).await.status,
        200
    );
    s.submit_async("?queue=gpu", "p").await;
    let st = s.stats().await;
    assert_counts(&st, [1, 1, 1, 1, 1]);
    let d = &st["queues"]["default"];
    assert_eq!(
        (
            &d["pending"],
            &d["running"],
            &d["completed"],
            &d["failed"],
            &d["cancelled"]
        ),
        (&json!(0), &json!(1), &json!(1), &json!(1), &json!(1)),
        "{st}"
    );
    assert_eq!(st["queues"]["gpu"]["pending"], 1, "{st}");
    assert_eq!(st["waiting_clients"], 0);
    assert_eq!(st["polling_workers"], 0);

    // Waiting clients and polling workers are counted while they wait.
    let client = s.spawn_submit("?timeout=10&queue=w", "w");
    s.wait_stat("waiting_clients", 1).await;
    let worker = TestServer::spawn_send(s.http.get(s.url("/api/worker/poll?wait=10&queue=idle")));
    s.wait_stat("polling_workers", 1).await;
    s.submit_async("?queue=idle", "wake").await;
    assert_eq!(TestServer::join(worker).await.status, 200);
    s.wait_stat("polling_workers", 0).await;
    let w = s.take("w").await;
    s.complete(&id_of(&w), "", "x").await;
    assert_eq!(TestServer::join(client).await.status, 200);
    s.wait_stat("waiting_clients", 0).await;
    let st = s.stats().await;
    assert_eq!(st["total"], 7);
    assert!(st["uptime_s"].is_u64());
    // Nothing left running: the shutdown need not wait for it.
    s.delete("/api/admin/clear").await;
    s.stop().await;
}

async fn admin_next_peeks_without_taking(kind: Kind) {
    let s = TestServer::start(kind).await;
    let r = s.get("/api/admin/next").await;
    assert_eq!(r.status, 204);
    assert!(r.raw.is_empty());
    let _low = s.submit_async("", "low").await;
    let rb = s
        .http
        .post(s.url("/api/jobs?priority=2"))
        .header("X-Tag", "peek")
        .body(r#"{"hi":1}"#);
    let high = id_of(&s.send(rb).await.body);
    let other = s.submit_async("?queue=q2", "other").await;
    for _ in 0..2 {
        let r = s.get("/api/admin/next").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-job-id"), high);
        assert_eq!(r.body["job_id"], high);
        assert_eq!(r.body["status"], "pending");
        assert_eq!(r.body["payload"], json!({"hi": 1}));
        assert_eq!(r.body["headers"]["x-tag"], "peek");
    }
    assert_eq!(s.job(&high).await.body["status"], "pending");
    assert_eq!(s.stats().await["running"], 0);
    // The peeked job is what a poll gets.
    assert_eq!(id_of(&s.take("").await), high);
    let r = s.get("/api/admin/next?queue=q2").await;
    assert_eq!(r.body["job_id"], other);
    let r = s.get("/api/admin/next?queue=empty,q2").await;
    assert_eq!(r.body["job_id"], other);
    assert_eq!(s.get("/api/admin/next?queue=empty").await.status, 204);
    s.complete(&high, "", "").await;
    s.stop().await;
}

async fn admin_jobs_filters_newest_first(kind: Kind) {
    let s = TestServer::start(kind).await;
    let mut ids = Vec::new();
    for (i, q) in ["a", "a", "b", "a", "b"].iter().enumerate() {
        ids.push(s.submit_async(&format!("?queue={q}"), format!("{i}")).await);
    }
    let taken = s.take("a").await;
    assert_eq!(id_of(&taken), ids[0]);
    s.complete(&ids[0], "", "done").await;

    let list = |q: &'static str| {
        let s = &s;
        async move {
            let r = s.get(&format!("/api/admin/jobs{q}")).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.keys(), keys(&["jobs"]));
            r.body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(id_of)
                .collect::<Vec<_>>()
        }
    };
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(list("").await, newest_first);
    assert_eq!(list("?limit=2").await, newest_first[..2].to_vec());
    assert_eq!(list("?queue=b").await, vec![ids[4].clone(), ids[2].clone()]);
    assert_eq!(list("?status=completed").await, vec![ids[0].clone()]);
    assert_eq!(
        list("?status=pending&queue=a").await,
        vec![ids[3].clone(), ids[1].clone()]
    );
    assert_eq!(list("?status=failed").await, Vec::<String>::new());
    assert_eq!(list("?limit=100000").await.len(), 5);

    // Entries are job views.
    let r = s.get("/api/admin/jobs?status=completed").await;
    let v = &r.body["jobs"][0];
    assert_eq!(v["queue"], "a");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["payload"], "done");
    assert!(v["created_at"].is_string() && v["completed_at"].is_string());
    s.stop().await;
}

async fn clear_answers_waiting_clients_410_at_once(kind: Kind) {
    let s = TestServer::start(kind).await;
    // A completed job, a running one and two pending ones, each with a client.
    let (done, done_job) = s.submit_and_take("?timeout=30", "done").await;
    let done_id = id_of(&done_job);
    s.complete_ok(&done_id, "", "r").await;
    TestServer::join_result(done, "r").await;
    let (running, running_job) = s.submit_and_take("?timeout=30", "running").await;
    let running_id = id_of(&running_job);
    let pending: Vec<_> = (0..2)
        .map(|i| s.spawn_submit("?timeout=30&queue=other", format!("p{i}")))
        .collect();
    s.wait_stat("waiting_clients", 3).await;
    // Waiters register before the insert: wait until the job is stored too.
    s.wait_stat("pending", 2).await;

    let t0 = Instant::now();
    let r = s.delete("/api/admin/clear").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        json!({"message": "Queue cleared successfully", "cancelled": 3})
    );
    let mut answered = Vec::new();
    for h in std::iter::once(running).chain(pending) {
        let r = TestServer::join(h).await;
        r.assert_error(410);
        assert_eq!(r.keys(), keys(&["error", "job_id"]));
        assert_eq!(r.header("x-job-id"), r.body["job_id"].as_str().unwrap());
        answered.push(id_of(&r.body));
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "clients answered after {:?}",
        t0.elapsed()
    );
    assert_eq!(answered[0], running_id);
    // Cancelled jobs stay known; ended ones are forgotten.
    for id in &answered {
        assert_eq!(s.job(id).await.body["status"], "cancelled");
    }
    s.job(&done_id).await.assert_error(404);
    // The running job's worker is refused.
    let lease = running_job["lease_id"].as_str().unwrap();
    s.complete(&running_id, &format!("?lease={lease}"), "late")
        .await
        .assert_error(409);
    s.complete(&running_id, "", "late").await.assert_error(409);
    assert!(s.poll("?queue=other").await.is_none());
    s.assert_stats(&[("cancelled", 3), ("total", 3), ("waiting_clients", 0)])
        .await;
    s.stop().await;
}

async fn clear_one_queue(kind: Kind) {
    let s = TestServer::start(kind).await;
    let [a, b] = s.submit_each([("?queue=a", "a"), ("?queue=b", "b")]).await;
    let r = s.delete("/api/admin/clear?queue=a").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["cancelled"], 1);
    assert_eq!(s.job(&a).await.body["status"], "cancelled");
    assert_eq!(s.job(&b).await.body["status"], "pending");
    assert_eq!(id_of(&s.take("b").await), b);
    // Clearing an empty queue cancels nothing.
    let r = s.delete("/api/admin/clear?queue=nothing").await;
    assert_eq!(r.body["cancelled"], 0);
    s.complete_ok(&b, "", "").await;
    s.stop().await;
}
