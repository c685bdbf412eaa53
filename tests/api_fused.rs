//! Two requests per job: complete-and-take-next (`?next=1` on complete and
//! fail) and batch poll (`?max=N`), on every backend.

mod common;

use std::collections::HashSet;

use common::{id_of, keys, lease_of, Kind, Reply, TestServer};
use serde_json::Value;

/// The keys of a poll body.
const POLL_KEYS: &[&str] = &[
    "job_id",
    "payload",
    "headers",
    "queue",
    "attempt",
    "priority",
    "lease_id",
    "lease_expires_at",
    "created_at",
];

/// Completes the hand-out `job` under its lease with `?next=1` and `extra`
/// parameters (`&max=5`, say).
async fn complete_next(srv: &TestServer, job: &Value, extra: &str, body: &str) -> Reply {
    let query = format!("?next=1{extra}&lease={}", lease_of(job));
    srv.complete(&id_of(job), &query, body.to_owned()).await
}

async fn complete_with_next_answers_the_next_job(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let [a, b] = srv
        .submit_each([("", "{\"n\":1}"), ("", "{\"n\":2}")])
        .await;
    let first = srv.take("").await;
    assert_eq!(id_of(&first), a);
    let r = complete_next(&srv, &first, "", "done").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.keys(), keys(POLL_KEYS));
    assert_eq!(id_of(&r.body), b);
    assert_eq!(r.header("x-job-id"), b);
    assert_eq!(r.body["payload"]["n"], 2);
    assert_eq!(srv.job(&a).await.body["status"], "completed");
    assert_eq!(srv.job(&b).await.body["status"], "running");

    // Nothing left: 204 once the wait is over (0 by default: at once).
    let r = complete_next(&srv, &r.body, "", "").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.raw.is_empty());
    assert_eq!(srv.job(&b).await.body["payload"], serde_json::json!({}));

    // With a wait, a job submitted meanwhile arrives on the same request.
    let c = srv.submit_async("", "{\"n\":3}").await;
    let third = srv.take("").await;
    let lease = lease_of(&third);
    let fused = TestServer::spawn_send(
        srv.http
            .post(srv.url(&format!(
                "/api/worker/complete/{c}?next=1&wait=5&lease={lease}"
            )))
            .body("ok"),
    );
    srv.wait_stat("polling_workers", 1).await;
    let d = srv.submit_async("", "{\"n\":4}").await;
    let r = TestServer::join(fused).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(id_of(&r.body), d);
}

async fn a_refused_complete_or_fail_applies_nothing(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let a = srv.submit_async("", "a").await;
    srv.take("").await;
    let b = srv.submit_async("", "b").await;
    let stale = uuid::Uuid::new_v4();
    let unknown = uuid::Uuid::new_v4().to_string();
    for (id, query, status) in [
        (&a, format!("?next=1&lease={stale}"), 409),
        (&unknown, "?next=1".to_owned(), 404),
        (&a, "?next=maybe".to_owned(), 400),
        (&a, "?next=1&max=0".to_owned(), 400),
        // The poll's parameters are checked without `next` too.
        (&a, "?wait=soon".to_owned(), 400),
        (&a, "?max=0".to_owned(), 400),
        (&a, "?queue=no%20spaces".to_owned(), 400),
    ] {
        let r = srv.complete(id, &query, "x").await;
        assert_eq!(r.status, status, "complete {id}{query}: {r:?}");
        r.assert_error(status);
    }
    for query in ["?wait=soon", "?max=0", "?next=maybe"] {
        let r = srv.fail(&a, query, "").await;
        assert_eq!(r.status, 400, "fail {a}{query}: {r:?}");
        r.assert_error(400);
    }
    assert_eq!(
        srv.job(&a).await.body["status"],
        "running",
        "nothing applied"
    );
    let v = srv.job(&b).await.body;
    assert_eq!(
        (v["status"].as_str(), v["attempts"].as_u64()),
        (Some("pending"), Some(0))
    );
}

async fn fail_with_next_answers_the_next_job(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let a = srv.submit_async("", "a").await;
    let job = srv.take("").await;
    let next = format!("?next=1&lease={}", lease_of(&job));
    let b = srv.submit_async("", "b").await;
    let r = srv
        .fail(&a, &next, "{\"error\":\"bad input\",\"retry\":false}")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(id_of(&r.body), b);
    let v = srv.job(&a).await.body;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"], "bad input");
    // A stale fail takes nothing either.
    srv.fail(&a, &next, "{}").await.assert_error(409);
}

async fn batch_poll_hands_out_up_to_max(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let r = srv.get("/api/worker/poll?max=3").await;
    assert_eq!(r.status, 204, "{r:?}");
    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(srv.submit_async("", format!("{{\"i\":{i}}}")).await);
    }
    let r = srv.get("/api/worker/poll?max=3").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.keys(), keys(&["jobs"]));
    let jobs = r.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    let mut got = HashSet::new();
    for j in jobs {
        let mut k: Vec<String> = j.as_object().unwrap().keys().cloned().collect();
        k.sort();
        assert_eq!(k, keys(POLL_KEYS));
        assert!(got.insert(id_of(j)), "a job twice in one batch");
        assert_eq!(srv.job(&id_of(j)).await.body["status"], "running");
    }
    // Oldest first, like single polls.
    assert_eq!(jobs[0]["payload"]["i"], 0);
    // The rest: fewer than max, then none.
    let r = srv.get("/api/worker/poll?max=10&wait=1").await;
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 2);
    for j in r.body["jobs"].as_array().unwrap() {
        assert!(got.insert(id_of(j)));
    }
    assert_eq!(got, ids);
    srv.get("/api/worker/poll?max=abc").await.assert_error(400);
    // Without max the answer is unchanged: one poll body.
    let e = srv.submit_async("", "e").await;
    let one = srv.poll("").await.expect("a job");
    assert_eq!(id_of(&one), e);
    // complete-and-take-next with a batch.
    for i in 0..2 {
        srv.submit_async("", format!("{{\"more\":{i}}}")).await;
    }
    let r = complete_next(&srv, &one, "&max=5", "ok").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 2);
}

backend_tests!(
    complete_with_next_answers_the_next_job,
    a_refused_complete_or_fail_applies_nothing,
    fail_with_next_answers_the_next_job,
    batch_poll_hands_out_up_to_max,
);
