//! Partial output streamed to the waiting client (docs/api.md, "Progress
//! events"): a worker's `POST /api/worker/progress/{id}` reaches a submit
//! answered as Server-Sent Events and `GET /api/jobs/{id}/events`, in order
//! and before exactly one final event, on every backend; and across nodes
//! on one PostgreSQL database.

mod common;

use common::sse::{SseEvent, SseReader};
use common::{id_of, keys, Kind, TestServer, BOUND};
use serde_json::{json, Value};
use std::sync::Arc;

/// A streamed submit (`POST /api/submit{query}` with `Accept: text/event-stream`).
async fn stream_submit(srv: &TestServer, query: &str, body: &'static str) -> SseReader {
    let r = SseReader::open(
        srv.http
            .post(srv.url(&format!("/api/submit{query}")))
            .body(body),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").starts_with("text/event-stream"),
        "{:?}",
        r.headers
    );
    r
}

/// `POST /api/worker/progress/{id}?lease=…` with `body`.
async fn progress(srv: &TestServer, job: &Value, body: impl Into<reqwest::Body>) -> common::Reply {
    let (id, lease) = (id_of(job), job["lease_id"].as_str().unwrap());
    srv.post(&format!("/api/worker/progress/{id}?lease={lease}"), body)
        .await
}

fn kinds(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

async fn progress_arrives_in_order_before_the_result(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let mut client = stream_submit(&srv, "", "go").await;
    let job = srv.take("").await;
    assert_eq!(client.header("x-job-id"), id_of(&job));
    let chunks: [&'static str; 4] = ["one", "{\"pct\":50}", "two words", "[1,2]"];
    for (i, c) in chunks.iter().enumerate() {
        let r = progress(&srv, &job, *c).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.keys(), keys(&["job_id", "seq", "lease_expires_at"]));
        assert_eq!(r.body["seq"], i as u64 + 1);
        assert_eq!(r.body["job_id"], id_of(&job));
        assert_eq!(r.header("x-job-id"), id_of(&job));
    }
    let lease = job["lease_id"].as_str().unwrap();
    let done = srv
        .complete(&id_of(&job), &format!("?lease={lease}"), "all done")
        .await;
    assert_eq!(done.status, 200);

    let events = client.until_final().await;
    assert_eq!(
        kinds(&events),
        ["progress", "progress", "progress", "progress", "result"]
    );
    let ids: Vec<_> = events[..4].iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "4"]);
    // Each chunk is one JSON value by the payload encoding rules.
    assert_eq!(events[0].json(), json!("one"));
    assert_eq!(events[1].json(), json!({"pct": 50}));
    assert_eq!(events[2].json(), json!("two words"));
    assert_eq!(events[3].json(), json!([1, 2]));
    // The final event carries the plain 200 body.
    let result = events[4].json();
    assert_eq!(
        keys_of(&result),
        keys(&["job_id", "payload", "created_at", "completed_at"])
    );
    assert_eq!(result["payload"], "all done");
    assert_eq!(result["job_id"], id_of(&job));
    assert!(events[4].id.is_none());
    client.assert_ends().await;
}

fn keys_of(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

async fn a_failed_job_ends_with_failed(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let mut client = stream_submit(&srv, "", "go").await;
    let job = srv.take("").await;
    assert_eq!(progress(&srv, &job, "partial").await.status, 200);
    let lease = job["lease_id"].as_str().unwrap();
    let r = srv
        .post(
            &format!("/api/worker/fail/{}?lease={lease}", id_of(&job)),
            r#"{"error":"model exploded","retry":false}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let events = client.until_final().await;
    assert_eq!(kinds(&events), ["progress", "failed"]);
    let body = events[1].json();
    assert_eq!(keys_of(&body), keys(&["attempts", "error", "job_id"]));
    assert_eq!(body["error"], "model exploded");
    assert_eq!(body["attempts"], 1);
    client.assert_ends().await;
}

async fn a_cancelled_job_ends_with_cancelled(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let mut client = stream_submit(&srv, "", "go").await;
    let id = client.header("x-job-id").to_owned();
    let r = srv.delete(&format!("/api/jobs/{id}")).await;
    assert_eq!(r.status, 200);
    let events = client.until_final().await;
    assert_eq!(kinds(&events), ["cancelled"]);
    let body = events[0].json();
    assert_eq!(keys_of(&body), keys(&["error", "job_id"]));
    assert_eq!(body["job_id"], id.as_str());
}

async fn a_wait_that_runs_out_ends_with_accepted(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let mut client = stream_submit(&srv, "?timeout=0.3", "nobody works").await;
    let events = client.until_final().await;
    assert_eq!(kinds(&events), ["accepted"]);
    let body = events[0].json();
    assert_eq!(keys_of(&body), keys(&["job_id", "location", "status"]));
    assert_eq!(body["status"], "pending");
    let id = body["job_id"].as_str().unwrap();
    assert_eq!(body["location"], format!("/api/jobs/{id}"));
    // The job goes on.
    assert_eq!(srv.job(id).await.body["status"], "pending");
}

async fn a_quiet_stream_gets_keepalive_comments(kind: Kind) {
    let srv = TestServer::start_with(kind, &["--sse-keepalive", "0.2"]).await;
    let mut client = stream_submit(&srv, "?timeout=1.2", "quiet").await;
    let events = client.until_final().await;
    assert_eq!(kinds(&events), ["accepted"]);
    assert!(
        client.comments >= 2,
        "{} keep-alive comments in 1.2 s at one per 0.2 s",
        client.comments
    );
}

async fn events_resume_after_last_event_id(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let id = srv.submit_async("", "later").await;
    let job = srv.take("").await;
    for c in ["a", "b", "c"] {
        assert_eq!(progress(&srv, &job, c).await.status, 200);
    }
    let url = srv.url(&format!("/api/jobs/{id}/events"));
    let mut resumed = SseReader::open(srv.http.get(&url).header("last-event-id", "1")).await;
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.header("x-job-id"), id);
    let b = resumed.next().await.unwrap();
    assert_eq!((b.event.as_str(), b.id.as_deref()), ("progress", Some("2")));
    assert_eq!(b.json(), json!("b"));
    assert_eq!(resumed.next().await.unwrap().id.as_deref(), Some("3"));
    // With a wait that runs out: what is buffered, then `accepted`.
    let mut bounded = SseReader::open(
        srv.http
            .get(format!("{url}?wait=0.2"))
            .header("last-event-id", "2"),
    )
    .await;
    let got = bounded.until_final().await;
    assert_eq!(kinds(&got), ["progress", "accepted"]);
    assert_eq!(got[1].json()["status"], "running");
    // Live events follow the replayed ones.
    assert_eq!(progress(&srv, &job, "d").await.body["seq"], 4);
    let d = resumed.next().await.unwrap();
    assert_eq!((d.id.as_deref(), d.json()), (Some("4"), json!("d")));
    let lease = job["lease_id"].as_str().unwrap();
    srv.complete(&id, &format!("?lease={lease}"), "out").await;
    let end = resumed.until_final().await;
    assert_eq!(kinds(&end), ["result"]);
    assert_eq!(end[0].json()["payload"], "out");

    // After the end: the buffered events and the final event again.
    let mut late = SseReader::open(srv.http.get(&url)).await;
    let all = late.until_final().await;
    assert_eq!(
        kinds(&all),
        ["progress", "progress", "progress", "progress", "result"]
    );
    let mut late = SseReader::open(srv.http.get(&url).header("last-event-id", "4")).await;
    assert_eq!(kinds(&late.until_final().await), ["result"]);
}

async fn a_full_buffer_is_reported_as_a_gap(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let id = srv.submit_async("", "chatty").await;
    let job = srv.take("").await;
    let extra = 5;
    for i in 0..(jobq::broker::events::BUFFER_EVENTS + extra) {
        let r = progress(&srv, &job, format!("{i}")).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let url = srv.url(&format!("/api/jobs/{id}/events"));
    let mut reader = SseReader::open(srv.http.get(&url)).await;
    let gap = reader.next().await.unwrap();
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.json(), json!({"dropped": extra}));
    let first = reader.next().await.unwrap();
    assert_eq!(first.id.as_deref(), Some("6"));
    assert_eq!(first.json(), json!(5));
}

async fn progress_is_fenced_like_a_heartbeat(kind: Kind) {
    let srv = TestServer::start_with(kind, &["--lease", "30"]).await;
    let id = srv.submit_async("", "x").await;
    // Not running yet.
    let r = srv
        .post(&format!("/api/worker/progress/{id}"), "early")
        .await;
    r.assert_error(409);
    let job = srv.take("").await;
    let before = job["lease_expires_at"].as_str().unwrap().to_owned();
    // A stale lease is refused; without a lease the current one applies.
    let stale = "00000000-0000-4000-8000-000000000000";
    let r = srv
        .post(&format!("/api/worker/progress/{id}?lease={stale}"), "x")
        .await;
    r.assert_error(409);
    let r = srv
        .send(
            srv.http
                .post(srv.url(&format!("/api/worker/progress/{id}")))
                .header("x-lease-id", job["lease_id"].as_str().unwrap())
                .body("by header"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // It extends the lease.
    assert!(r.body["lease_expires_at"].as_str().unwrap() > before.as_str());
    // Too large.
    let big = vec![b'x'; jobq::broker::MAX_EVENT_BYTES + 1];
    progress(&srv, &job, big).await.assert_error(413);
    // Unknown and malformed ids.
    let unknown = "6f1c1d2e-0000-4000-8000-000000000000";
    srv.post(&format!("/api/worker/progress/{unknown}"), "x")
        .await
        .assert_error(404);
    srv.post("/api/worker/progress/nope", "x")
        .await
        .assert_error(400);
    // Ended: refused.
    let lease = job["lease_id"].as_str().unwrap();
    srv.complete(&id, &format!("?lease={lease}"), "r").await;
    progress(&srv, &job, "late").await.assert_error(409);
    // The events route refuses what it cannot serve.
    srv.get(&format!("/api/jobs/{unknown}/events"))
        .await
        .assert_error(404);
    srv.get("/api/jobs/nope/events").await.assert_error(400);
    srv.get(&format!("/api/jobs/{id}/events?wait=-1"))
        .await
        .assert_error(400);
    let r = srv
        .send(
            srv.http
                .get(srv.url(&format!("/api/jobs/{id}/events")))
                .header("last-event-id", "seven"),
        )
        .await;
    r.assert_error(400);
}

async fn a_client_leaving_a_pending_stream_cancels_it(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let client = stream_submit(&srv, "", "abandoned").await;
    let id = client.header("x-job-id").to_owned();
    drop(client);
    srv.wait_status(&id, "cancelled", BOUND).await;
}

async fn a_client_leaving_a_running_stream_leaves_the_job_running(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let mut client = stream_submit(&srv, "", "keep going").await;
    let job = srv.take("").await;
    assert_eq!(progress(&srv, &job, "p").await.status, 200);
    assert_eq!(client.next().await.unwrap().event, "progress");
    drop(client);
    let id = id_of(&job);
    srv.wait_stat("waiting_clients", 0).await;
    assert_eq!(srv.job(&id).await.body["status"], "running");
    let lease = job["lease_id"].as_str().unwrap();
    let r = srv.complete(&id, &format!("?lease={lease}"), "kept").await;
    assert_eq!(r.status, 200);
    assert_eq!(srv.job(&id).await.body["payload"], "kept");
}

async fn a_plain_submit_is_unchanged(kind: Kind) {
    let srv = TestServer::start(kind).await;
    let (client, job) = srv.submit_and_take("", "plain").await;
    assert_eq!(progress(&srv, &job, "ignored").await.status, 200);
    let lease = job["lease_id"].as_str().unwrap();
    srv.complete(&id_of(&job), &format!("?lease={lease}"), "R")
        .await;
    let r = TestServer::join(client).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.body["payload"], "R");
}

backend_tests!(
    progress_arrives_in_order_before_the_result,
    a_failed_job_ends_with_failed,
    a_cancelled_job_ends_with_cancelled,
    a_wait_that_runs_out_ends_with_accepted,
    a_quiet_stream_gets_keepalive_comments,
    events_resume_after_last_event_id,
    a_full_buffer_is_reported_as_a_gap,
    progress_is_fenced_like_a_heartbeat,
    a_client_leaving_a_pending_stream_cancels_it,
    a_client_leaving_a_running_stream_leaves_the_job_running,
    a_plain_submit_is_unchanged,
);

/// A client waiting on node A receives, in order, the progress a worker
/// posts to node B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_posted_on_one_node_reaches_a_client_on_another() {
    if !common::postgres::available("progress_across_nodes").await {
        return;
    }
    let db = Arc::new(common::postgres::TestDb::create().await);
    let a = TestServer::start_node(&db, &[]).await;
    let b = TestServer::start_node(&db, &[]).await;
    let mut client = stream_submit(&a, "", "across").await;
    let job = b.take("").await;
    for i in 1..=20 {
        let r = progress(&b, &job, format!("{{\"i\":{i}}}")).await;
        assert_eq!(r.body["seq"], i);
    }
    // Live, while the job still runs (through the other node's notification).
    for i in 1..=20 {
        let e = client.next().await.expect("an event");
        assert_eq!(e.event, "progress");
        assert_eq!(e.id.as_deref(), Some(i.to_string().as_str()));
        assert_eq!(e.json(), json!({"i": i}));
    }
    let lease = job["lease_id"].as_str().unwrap();
    b.complete(&id_of(&job), &format!("?lease={lease}"), "end")
        .await;
    let events = client.until_final().await;
    assert_eq!(kinds(&events), ["result"]);

    // A late reader on node A gets them from the database.
    let url = a.url(&format!("/api/jobs/{}/events", id_of(&job)));
    let mut late = SseReader::open(a.http.get(&url).header("last-event-id", "18")).await;
    let tail = late.until_final().await;
    assert_eq!(kinds(&tail), ["progress", "progress", "result"]);
    assert_eq!(tail[0].id.as_deref(), Some("19"));
}

/// A real SSE client (curl -N) reads a stream end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_a_stream_end_to_end() {
    let curl = std::process::Command::new("curl").arg("--version").output();
    if curl.is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "curl is required under CI=true"
        );
        eprintln!("curl_reads_a_stream_end_to_end: skipped: curl not found");
        return;
    }
    let srv = TestServer::start(Kind::Memory).await;
    let url = srv.url("/api/submit");
    let child = tokio::process::Command::new("curl")
        .args(["-sN", "-X", "POST", "-H", "Accept: text/event-stream"])
        .args(["--max-time", "10", "--data-binary", "words", &url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl");
    let job = srv.take("").await;
    for w in ["hello", "there"] {
        assert_eq!(progress(&srv, &job, w).await.status, 200);
    }
    let lease = job["lease_id"].as_str().unwrap();
    srv.complete(&id_of(&job), &format!("?lease={lease}"), "hello there")
        .await;
    let out = common::within(BOUND, "curl exits", child.wait_with_output())
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let expected_start = "event: progress\nid: 1\ndata: \"hello\"\n\nevent: progress\nid: 2\ndata: \"there\"\n\nevent: result\ndata: {";
    assert!(text.starts_with(expected_start), "{text}");
    assert!(text.ends_with("}\n\n"), "{text}");
    assert!(text.contains("\"payload\":\"hello there\""), "{text}");
}
