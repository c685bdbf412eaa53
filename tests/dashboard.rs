//! The dashboard's server side: the page and its embedded assets, the
//! admin event stream and the job detail call, over real HTTP. (The page
//! itself is tested in a browser by scripts/test-browser.sh.)

mod common;

use std::time::Duration;

use common::{within, Kind, TestServer};
use serde_json::Value;

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let s = TestServer::start(Kind::Memory).await;
    let page = s.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    let html = String::from_utf8(page.raw.clone()).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );
    for asset in [
        "/dashboard/app.js",
        "/dashboard/app.css",
        "/dashboard/vendor/uplot/uPlot.iife.min.js",
        "/dashboard/vendor/uplot/uPlot.min.css",
    ] {
        assert!(html.contains(asset), "{asset} not linked");
        let r = s.get(asset).await;
        assert_eq!(r.status, 200, "{asset}");
        assert!(!r.raw.is_empty());
    }
    assert_eq!(s.get("/dashboard/vendor/uplot/LICENSE").await.status, 200);
    s.get("/dashboard/nope.js").await.assert_error(404);
}

/// Reads SSE events from `resp` until `n` have arrived: (event, data).
async fn read_events(mut resp: reqwest::Response, n: usize) -> Vec<(String, String)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !event.is_empty() {
                out.push((event, data));
            }
        }
    }
    out
}

#[tokio::test]
async fn events_stream_history_then_a_snapshot_each_second() {
    let s = TestServer::start(Kind::Memory).await;
    s.submit_async("?queue=dash", "x").await;
    let resp = s.http.get(s.url("/api/admin/events")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = within(
        Duration::from_secs(10),
        "three events",
        read_events(resp, 3),
    )
    .await;
    assert_eq!(events[0].0, "history");
    let history: Value = serde_json::from_str(&events[0].1).unwrap();
    assert!(history.is_array());
    // Snapshots come from the sampler, at most a second apart; the queue
    // shows up with its pending job once sampled.
    let snaps: Vec<Value> = events[1..]
        .iter()
        .map(|(e, d)| {
            assert_eq!(e, "snapshot");
            serde_json::from_str(d).unwrap()
        })
        .collect();
    let last = snaps.last().unwrap();
    assert_eq!(last["queues"]["dash"]["pending"], 1, "{last}");
    assert!(last["queues"]["dash"]["oldest_pending_s"].as_f64().unwrap() >= 0.0);
    for key in [
        "waiting_clients",
        "polling_workers",
        "uptime_s",
        "totals",
        "slot",
    ] {
        assert!(!last[key].is_null(), "{key} missing in {last}");
    }
    assert!(snaps[0]["slot"]["t"].as_u64() < snaps[1]["slot"]["t"].as_u64() || snaps.len() == 1);
}

#[tokio::test]
async fn job_detail_shows_input_headers_and_formats() {
    let s = TestServer::start(Kind::Memory).await;
    let r = s
        .send(
            s.http
                .post(s.url("/api/jobs?queue=detail"))
                .header("x-trace", "t1")
                .header("authorization", "Bearer secret")
                .body(vec![0xff, 0x00, 0x01]),
        )
        .await;
    assert_eq!(r.status, 202);
    let id = r.body["job_id"].as_str().unwrap().to_owned();
    let d = s.get(&format!("/api/admin/jobs/{id}")).await;
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(d.header("x-job-id"), id);
    assert_eq!(d.body["status"], "pending");
    assert_eq!(d.body["input"], "/wAB");
    assert_eq!(d.body["input_encoding"], "base64");
    assert_eq!(d.body["input_format"], "base64");
    assert_eq!(d.body["input_bytes"], 3);
    assert_eq!(d.body["input_kept"], true);
    assert_eq!(d.body["headers"]["x-trace"], "t1");
    assert!(d.body["headers"].get("authorization").is_none());
    assert_eq!(d.body["position"], 0);

    // Completed: the result and its format; an ended job's input is gone.
    let job = s.take("detail").await;
    assert_eq!(job["job_id"], id.as_str());
    s.complete_ok(&id, "", r#"{"ok":1}"#).await;
    let d = s.get(&format!("/api/admin/jobs/{id}")).await;
    assert_eq!(d.body["status"], "completed");
    assert_eq!(d.body["payload"]["ok"], 1);
    assert_eq!(d.body["result_format"], "json");
    assert_eq!(d.body["input_kept"], false);

    s.get("/api/admin/jobs/not-a-uuid").await.assert_error(400);
    s.get(&format!("/api/admin/jobs/{}", uuid::Uuid::new_v4()))
        .await
        .assert_error(404);
}

#[tokio::test]
async fn stats_watch_follows_the_event_stream() {
    use tokio::io::AsyncBufReadExt as _;
    let s = TestServer::start(Kind::Memory).await;
    s.submit_async("?queue=watched", "x").await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["stats", "--watch", "--json", "--url", &s.base])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let snap: Value = within(Duration::from_secs(10), "a snapshot line", async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("stats --watch ended");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["queues"]["watched"]["pending"] == 1 {
                return v;
            }
        }
    })
    .await;
    assert!(snap["slot"]["t"].as_u64().unwrap() > 0);
    child.kill().await.unwrap();
}

/// Per-queue activity, as every backend reports it through the stream
/// (PostgreSQL's is read every 5 s, the others' every second).
async fn queue_activity_reaches_the_stream(kind: Kind) {
    let s = TestServer::start(kind).await;
    for i in 0..3 {
        s.submit_async("?queue=act", format!("{i}")).await;
    }
    s.take("act").await;
    let resp = s.http.get(s.url("/api/admin/events")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let found = within(
        Duration::from_secs(20),
        "act: 2 pending, 1 running",
        async {
            let mut buf = String::new();
            loop {
                let chunk = resp.chunk().await.unwrap().expect("stream ended");
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(data.trim_start()) else {
                        continue;
                    };
                    let q = &v["queues"]["act"];
                    if q["pending"] == 2 && q["running"] == 1 {
                        return v;
                    }
                }
            }
        },
    )
    .await;
    assert!(found["queues"]["act"]["oldest_pending_s"].as_f64().unwrap() >= 0.0);
}

backend_tests!(queue_activity_reaches_the_stream);

#[tokio::test]
async fn an_open_dashboard_does_not_hold_shutdown() {
    let s = TestServer::start(Kind::Memory).await;
    let mut resp = s.http.get(s.url("/api/admin/events")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The history arrives; then the server stops while the stream is open.
    within(Duration::from_secs(5), "the history", resp.chunk())
        .await
        .unwrap();
    let stopping = tokio::spawn(s.stop());
    within(Duration::from_secs(4), "the stream to end", async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    // Well before the 5 s the connection drain would otherwise wait.
    within(Duration::from_secs(4), "the server to stop", stopping)
        .await
        .unwrap();
}
