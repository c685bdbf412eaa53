//! Many clients and workers at once, and graceful shutdown (docs/api.md,
//! "Shutdown" and "Guarantees").

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http, id_of, keys, within, Kind, Reply, TestServer};
use serde_json::json;

backend_tests!(
    many_sync_clients_many_workers,
    shutdown_lets_running_job_finish,
    shutdown_grace_over_answers_503,
);

const CLIENTS: usize = 500;
const WORKERS: usize = 8;

async fn many_sync_clients_many_workers(kind: Kind) {
    let s = TestServer::start(kind).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| s.spawn_submit("?timeout=60", json!({ "n": n }).to_string()))
        .collect();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (http, base) = (s.http.clone(), s.base.clone());
            let (seen, done) = (seen.clone(), done.clone());
            tokio::spawn(async move {
                let mut mine = 0;
                while done.load(Ordering::SeqCst) < CLIENTS {
                    let Some(job) = http::poll(&http, &base, "?wait=0.5").await else {
                        continue;
                    };
                    let id = id_of(&job);
                    assert!(
                        seen.lock().unwrap().insert(id.clone()),
                        "job {id} handed out twice"
                    );
                    assert_eq!(job["attempt"], 1);
                    let result = json!({"n": job["payload"]["n"], "job": id, "worker": w});
                    let r = http
                        .post(format!("{base}/api/worker/complete/{id}"))
                        .header("X-Lease-Id", job["lease_id"].as_str().unwrap())
                        .body(result.to_string())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    done.fetch_add(1, Ordering::SeqCst);
                    mine += 1;
                }
                mine
            })
        })
        .collect();
    let replies = within(Duration::from_secs(60), "all clients answered", async {
        let mut out = Vec::with_capacity(CLIENTS);
        for c in clients {
            out.push(c.await.expect("client task"));
        }
        out
    })
    .await;
    let mut per_worker = Vec::new();
    for w in workers {
        per_worker.push(
            within(Duration::from_secs(5), "workers stop", w)
                .await
                .expect("worker"),
        );
    }
    assert_eq!(per_worker.iter().sum::<usize>(), CLIENTS);
    let mut ids = HashSet::new();
    for (n, r) in replies.iter().enumerate() {
        assert_eq!(r.status, 200, "client {n}: {r:?}");
        let id = r.body["job_id"].as_str().unwrap();
        assert_eq!(r.header("x-job-id"), id);
        // Each client receives exactly its own result.
        assert_eq!(r.body["payload"]["n"], n, "client {n} got {r:?}");
        assert_eq!(r.body["payload"]["job"], id, "client {n} got {r:?}");
        assert!(ids.insert(id.to_owned()), "two clients share job {id}");
    }
    assert_eq!(seen.lock().unwrap().len(), CLIENTS);
    s.assert_stats(&[
        ("completed", CLIENTS as u64),
        ("total", CLIENTS as u64),
        ("waiting_clients", 0),
    ])
    .await;
    s.stop().await;
}

async fn shutdown_lets_running_job_finish(kind: Kind) {
    let s = TestServer::start_with(kind, &["--shutdown-grace", "10"]).await;
    let (client, job) = s.submit_and_take("?timeout=30", "in flight").await;
    let id = id_of(&job);
    let (http, base) = (s.http.clone(), s.base.clone());
    let stopping = tokio::spawn(s.stop());
    let before = http::wait_health(&http, &base, 503, Duration::from_secs(5))
        .await
        .expect("shutdown begins");
    assert!(before.iter().all(|&st| st == 200), "{before:?}");

    // No new work during the drain.
    let answer =
        |rb: reqwest::RequestBuilder| async move { Reply::of(rb.send().await.unwrap()).await };
    let r = answer(http.post(format!("{base}/api/submit")).body("new")).await;
    r.assert_error(503);
    assert!(r.header("retry-after").parse::<u64>().is_ok());
    let r = answer(http.post(format!("{base}/api/jobs")).body("new")).await;
    r.assert_error(503);
    let r = answer(http.get(format!("{base}/api/worker/poll"))).await;
    r.assert_error(503);

    // The running job's worker can still finish, and its client gets the result.
    let r = answer(
        http.post(format!("{base}/api/worker/complete/{id}"))
            .header("X-Lease-Id", job["lease_id"].as_str().unwrap())
            .body("finished during the grace"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    TestServer::join_result(client, "finished during the grace").await;
    within(Duration::from_secs(10), "server stops", stopping)
        .await
        .expect("stop");
}

async fn shutdown_grace_over_answers_503(kind: Kind) {
    let s = TestServer::start_with(kind, &["--shutdown-grace", "0.5"]).await;
    let (client, job) = s.submit_and_take("?timeout=30", "never finished").await;
    let id = id_of(&job);
    let stopping = tokio::spawn(s.stop());
    let r = TestServer::join(client).await;
    r.assert_error(503);
    assert_eq!(r.keys(), keys(&["error", "job_id"]));
    assert_eq!(r.body["job_id"], id);
    within(Duration::from_secs(10), "server stops", stopping)
        .await
        .expect("stop");
}
