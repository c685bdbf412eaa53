//! A database row jobq cannot read (changed by hand, or by a newer or
//! broken tool) makes the calls that read it answer `503` with a JSON error;
//! it never panics a request (a panic drops the connection unanswered).

mod common;

use common::postgres::{available, TestDb};
use common::TestServer;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_answers_503_not_a_panic() {
    if !available("an_unreadable_row_answers_503_not_a_panic").await {
        return;
    }
    let db = TestDb::create().await;
    let srv = TestServer::start_on(TestServer::postgres_backend(&db), Vec::new(), &[]).await;
    assert_eq!(srv.post("/api/jobs", "x").await.status, 202);

    // A row whose queue is NULL: the schema forbids it, a hand edit did not.
    db.execute(
        "alter table jobq_jobs alter column queue drop not null; \
         insert into jobq_jobs (id, queue, payload, headers, priority, status, created_at) \
         values (gen_random_uuid(), null, '', '', 0, 'completed', 0)",
    )
    .await;

    let r = srv
        .http
        .get(format!("{}/api/admin/stats", srv.base))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string(), "{v}");

    // The server is healthy otherwise: clear and submit still work.
    assert_eq!(srv.delete("/api/admin/clear").await.status, 200);
    assert_eq!(srv.post("/api/jobs", "y").await.status, 202);
    drop(srv);
}
