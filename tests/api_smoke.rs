//! A first end-to-end check: submit, poll, complete over real HTTP.

mod common;

use common::{http, Kind, TestServer};
use serde_json::Value;

backend_tests!(submit_poll_complete);

async fn submit_poll_complete(kind: Kind) {
    let s = TestServer::start(kind).await;
    let client = http::spawn_post(&s.http, s.url("/api/submit?timeout=10"), r#"{"n":1}"#);
    // One long-poll: the submit wakes it.
    let job = http::poll(&s.http, &s.base, "?wait=10")
        .await
        .expect("a job (200)");
    assert_eq!(job["payload"], serde_json::json!({"n": 1}));
    assert_eq!(job["attempt"], 1);
    let id = job["job_id"].as_str().unwrap();
    let r = s
        .http
        .post(s.url(&format!("/api/worker/complete/{id}")))
        .body(r#"{"ok":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let resp = client.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-job-id"], id);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["job_id"], id);
    assert_eq!(body["payload"], serde_json::json!({"ok": true}));
    s.stop().await;
}
