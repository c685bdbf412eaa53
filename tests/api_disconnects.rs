//! Clients and workers that go away mid-request (raw TCP, closed without
//! reading the answer): a sync submit's job that no worker has is
//! cancelled, however early the client left, and a job handed out in a
//! poll answer that cannot be delivered goes back to pending.

mod common;

use std::time::Duration;

use common::{within, Kind, TestServer, BOUND};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Rounds per test: each defect showed in a fraction of the runs.
const ROUNDS: usize = 30;

/// Sends `head` (a full request) on a fresh connection and closes it at
/// once, reading nothing.
async fn send_and_vanish(srv: &TestServer, head: &str) {
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    drop(s);
}

/// A client that closes its connection right after its sync submit leaves
/// no pending job behind, even when it goes while the submit's insert is
/// still being committed (the embedded store's group commit).
async fn a_submit_abandoned_at_once_is_cancelled(kind: Kind) {
    let srv = TestServer::start(kind).await;
    for i in 0..ROUNDS {
        let body = format!("{{\"round\":{i}}}");
        let head = format!(
            "POST /api/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        send_and_vanish(&srv, &head).await;
    }
    within(BOUND, "every abandoned submit is cancelled", async {
        loop {
            let r = srv.get("/api/admin/jobs?limit=1000").await;
            assert_eq!(r.status, 200);
            let jobs = r.body["jobs"].as_array().unwrap().clone();
            // (hyper drops a request whose connection closed before it was
            // dispatched: those made no job at all)
            let cancelled = jobs.iter().filter(|j| j["status"] == "cancelled").count();
            if !jobs.is_empty() && cancelled == jobs.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(srv.stats().await["pending"], 0);
}

/// A worker whose long-poll connection closed just as a job arrived: the
/// hand-out is undone (pending, attempt not counted) instead of leaving the
/// job leased to nobody until its lease runs out.
async fn a_hand_out_to_a_closed_poll_is_undone(kind: Kind) {
    let srv = TestServer::start(kind).await;
    for i in 0..ROUNDS {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /api/worker/poll?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        srv.wait_stat("polling_workers", 1).await;
        // Close and submit at the same moment: whichever the server sees
        // first, no worker may end up holding the job.
        drop(s);
        let id = srv.submit_async("", format!("{{\"round\":{i}}}")).await;
        srv.wait_stat("polling_workers", 0).await;
        let view = within(BOUND, "the job settles as pending", async {
            loop {
                let v = srv.job(&id).await.body;
                if v["status"] == "pending" {
                    return v;
                }
                assert_eq!(v["status"], "running", "{v}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(view["attempts"], 0, "round {i}: {view}");
        // Take it for real, so the next round starts on an empty queue.
        let j = srv.take("").await;
        assert_eq!(j["job_id"], id.as_str());
        assert_eq!(j["attempt"], 1, "the undone hand-out is not counted");
        srv.complete(&id, "", "done").await;
    }
}

backend_tests!(
    a_submit_abandoned_at_once_is_cancelled,
    a_hand_out_to_a_closed_poll_is_undone
);
