//! `GET /metrics` (docs/metrics.md): the real binary (its figures are
//! process-wide, so each test gets a process of its own), spoken to over
//! real HTTP; the exposition text is parsed and the numbers asserted as
//! jobs flow through. `promtool check metrics` must accept the text (under
//! CI=true a missing promtool fails).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::binary::{free_port, Proc};
use common::http::{acknowledged, status_of};
use serde_json::Value;

/// Samples of one scrape, by `name{label="value",...}` with labels sorted.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let key = match series.split_once('{') {
                None => series.to_owned(),
                Some((name, labels)) => {
                    let mut parts: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    parts.sort_unstable();
                    format!("{name}{{{}}}", parts.join(","))
                }
            };
            samples.insert(key, value.parse::<f64>().expect("numeric value"));
        }
        Scrape { text, samples }
    }

    /// The sample `name` with `labels` (any order); 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let mut parts: Vec<String> =
                labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            parts.sort_unstable();
            format!("{name}{{{}}}", parts.join(","))
        };
        self.samples.get(&key).copied().unwrap_or(0.0)
    }
}

async fn scrape(http: &reqwest::Client, p: &Proc) -> Scrape {
    let r = http.get(p.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    Scrape::parse(r.text().await.unwrap())
}

/// Scrapes until `ok` holds (gauges are sampled once a second), up to 10 s.
async fn scrape_until(
    http: &reqwest::Client,
    p: &Proc,
    what: &str,
    ok: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(http, p).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never saw {what}:\n{}", s.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `promtool check metrics` on `text` when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is required under CI=true (Debian package prometheus): {e}"
            );
            eprintln!("promtool not found ({e}); exposition not checked");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- text:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An async submit to `queue`; its job id.
async fn enqueue(http: &reqwest::Client, p: &Proc, queue: &str, body: &str) -> String {
    acknowledged(
        http.post(p.url(&format!("/api/jobs?queue={queue}")))
            .body(body.to_owned()),
    )
    .await
}

/// The next job of `queue` (a long-poll of up to 5 s; it must come).
async fn poll(http: &reqwest::Client, p: &Proc, queue: &str) -> Value {
    common::http::poll(http, &p.base, &format!("?queue={queue}&wait=5"))
        .await
        .unwrap_or_else(|| panic!("no job in {queue} within 5 s"))
}

async fn post(http: &reqwest::Client, p: &Proc, path: &str, body: &str) -> u16 {
    status_of(http.post(p.url(path)).body(body.to_owned())).await
}

#[tokio::test]
async fn metrics_move_as_jobs_flow() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(&dir.path().join("data"), free_port(), &[]).await;
    let http = reqwest::Client::new();
    let q = [("queue", "mq")];

    // Two pending jobs: counted, and the gauges (sampled each second) follow.
    let first = enqueue(&http, &p, "mq", r#"{"n":1}"#).await;
    enqueue(&http, &p, "mq", r#"{"n":2}"#).await;
    let s = scrape_until(&http, &p, "2 pending in mq", |s| {
        s.get("jobq_jobs_pending", &q) == 2.0
    })
    .await;
    assert_eq!(s.get("jobq_jobs_submitted_total", &q), 2.0);
    assert_eq!(s.get("jobq_jobs_running", &q), 0.0);
    assert!(s.get("jobq_oldest_pending_age_seconds", &q) >= 0.0);
    assert!(s
        .text
        .contains("jobq_oldest_pending_age_seconds{queue=\"mq\"}"));
    assert!(
        s.get(
            "jobq_store_commit_latency_seconds_count",
            &[("backend", "embedded")]
        ) >= 1.0
    );
    assert!(
        s.get(
            "jobq_store_commit_batch_size_count",
            &[("backend", "embedded")]
        ) >= 1.0
    );
    // --sync full: the submit was acknowledged after an fsync of the WAL.
    assert!(
        s.get(
            "jobq_store_sync_latency_seconds_count",
            &[("backend", "embedded")]
        ) >= 1.0
    );

    // Hand-out and complete: queue wait and run time are observed once each.
    let a = poll(&http, &p, "mq").await;
    assert_eq!(a["job_id"], first.as_str());
    let (id, lease) = (
        a["job_id"].as_str().unwrap(),
        a["lease_id"].as_str().unwrap(),
    );
    assert_eq!(
        post(
            &http,
            &p,
            &format!("/api/worker/complete/{id}?lease={lease}"),
            "ok"
        )
        .await,
        200
    );
    let s = scrape(&http, &p).await;
    assert_eq!(s.get("jobq_jobs_completed_total", &q), 1.0);
    assert_eq!(s.get("jobq_queue_wait_seconds_count", &q), 1.0);
    assert_eq!(s.get("jobq_run_time_seconds_count", &q), 1.0);

    // A stale complete (the lease of a job that ended) is refused and counted.
    assert_eq!(
        post(
            &http,
            &p,
            &format!("/api/worker/complete/{id}?lease={}", uuid()),
            "late"
        )
        .await,
        409
    );
    let s = scrape(&http, &p).await;
    assert_eq!(
        s.get(
            "jobq_stale_worker_calls_refused_total",
            &[("op", "complete")]
        ),
        1.0
    );

    // A retried failure, then a final one.
    let b = poll(&http, &p, "mq").await;
    let id = b["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        post(
            &http,
            &p,
            &format!("/api/worker/fail/{id}"),
            r#"{"error":"x"}"#
        )
        .await,
        200
    );
    let b = poll(&http, &p, "mq").await;
    assert_eq!(b["job_id"], id.as_str());
    assert_eq!(
        post(
            &http,
            &p,
            &format!("/api/worker/fail/{id}"),
            r#"{"error":"y","retry":false}"#
        )
        .await,
        200
    );
    let s = scrape(&http, &p).await;
    assert_eq!(s.get("jobq_jobs_retried_total", &q), 1.0);
    assert_eq!(s.get("jobq_jobs_failed_total", &q), 1.0);
    assert_eq!(
        s.get("jobq_queue_wait_seconds_count", &q),
        2.0,
        "first hand-outs only"
    );
    assert_eq!(s.get("jobq_run_time_seconds_count", &q), 2.0);

    // Cancel by a client, and a clear of one queue.
    let c = enqueue(&http, &p, "mq", "c").await;
    assert_eq!(
        status_of(http.delete(p.url(&format!("/api/jobs/{c}")))).await,
        200
    );
    enqueue(&http, &p, "mclear", "1").await;
    enqueue(&http, &p, "mclear", "2").await;
    assert_eq!(
        status_of(http.delete(p.url("/api/admin/clear?queue=mclear"))).await,
        200
    );
    let s = scrape(&http, &p).await;
    assert_eq!(
        s.get(
            "jobq_jobs_cancelled_total",
            &[("queue", "mq"), ("reason", "client")]
        ),
        1.0
    );
    assert_eq!(
        s.get(
            "jobq_jobs_cancelled_total",
            &[("queue", "mclear"), ("reason", "clear")]
        ),
        2.0
    );

    // Idempotent attach: no new job.
    for _ in 0..2 {
        assert_eq!(
            status_of(
                http.post(p.url("/api/jobs?queue=mq"))
                    .header("Idempotency-Key", "k1")
                    .body("same")
            )
            .await,
            202
        );
    }
    let s = scrape(&http, &p).await;
    assert_eq!(s.get("jobq_jobs_submitted_total", &q), 4.0);
    assert_eq!(s.get("jobq_idempotent_attaches_total", &q), 1.0);

    // A sync submit: a waiting client while it waits, then its latency.
    let sync = {
        let (http, url) = (http.clone(), p.url("/api/submit?queue=msync"));
        tokio::spawn(async move { http.post(url).body("s").send().await.unwrap().status() })
    };
    scrape_until(&http, &p, "one waiting client", |s| {
        s.get("jobq_waiting_clients", &[]) == 1.0
    })
    .await;
    let j = poll(&http, &p, "msync").await;
    let id = j["job_id"].as_str().unwrap();
    assert_eq!(
        post(&http, &p, &format!("/api/worker/complete/{id}"), "r").await,
        200
    );
    assert_eq!(sync.await.unwrap(), 200);
    let s = scrape(&http, &p).await;
    assert_eq!(
        s.get(
            "jobq_sync_submit_latency_seconds_count",
            &[("outcome", "completed")]
        ),
        1.0
    );

    // A long-polling worker is seen as one.
    let lp = {
        let (http, url) = (http.clone(), p.url("/api/worker/poll?queue=nothing&wait=3"));
        tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
    };
    scrape_until(&http, &p, "one polling worker", |s| {
        s.get("jobq_polling_workers", &[]) == 1.0
    })
    .await;
    assert_eq!(lp.await.unwrap(), 204);

    // HTTP durations by route template and status; raw paths never become labels.
    assert_eq!(
        status_of(http.get(p.url(&format!("/api/jobs/{first}")))).await,
        200
    );
    assert_eq!(
        status_of(http.get(p.url(&format!("/no/such/{}", uuid())))).await,
        404
    );
    let s = scrape(&http, &p).await;
    let http_count = |m: &str, route: &str, status: &str| {
        s.get(
            "jobq_http_request_duration_seconds_count",
            &[("method", m), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http_count("POST", "/api/jobs", "202"), 7.0);
    assert_eq!(http_count("GET", "/api/jobs/{id}", "200"), 1.0);
    assert_eq!(http_count("POST", "/api/worker/complete/{id}", "409"), 1.0);
    assert_eq!(http_count("GET", "unmatched", "404"), 1.0);
    assert!(!s.text.contains(&first), "a job id became a label");

    promtool_check(&s.text);
}

#[tokio::test]
async fn rescues_and_back_pressure_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(
        &dir.path().join("data"),
        free_port(),
        &["--storage", "memory", "--lease", "0.3", "--max-queued", "1"],
    )
    .await;
    let http = reqwest::Client::new();
    let q = [("queue", "default")];
    enqueue(&http, &p, "default", "a").await;
    // The second is refused: one job is pending already.
    assert_eq!(
        status_of(http.post(p.url("/api/jobs")).body("b")).await,
        503
    );
    let s = scrape(&http, &p).await;
    assert_eq!(
        s.get(
            "jobq_submits_refused_total",
            &[("queue", "default"), ("reason", "queue_full")]
        ),
        1.0
    );
    // Taken and abandoned: the lease runs out and the job is rescued.
    poll(&http, &p, "default").await;
    let s = scrape_until(&http, &p, "a rescued lease", |s| {
        s.get(
            "jobq_lease_expiries_rescued_total",
            &[("queue", "default"), ("outcome", "pending")],
        ) == 1.0
    })
    .await;
    promtool_check(&s.text);
    // Back to pending (the gauges follow within a second).
    scrape_until(&http, &p, "the rescued job pending", |s| {
        s.get("jobq_jobs_pending", &q) == 1.0 && s.get("jobq_jobs_running", &q) == 0.0
    })
    .await;
}

#[tokio::test]
async fn metrics_off_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(
        &dir.path().join("data"),
        free_port(),
        &["--storage", "memory", "--metrics", "off"],
    )
    .await;
    let http = reqwest::Client::new();
    enqueue(&http, &p, "default", "a").await;
    let s = scrape(&http, &p).await;
    assert_eq!(
        s.get("jobq_jobs_submitted_total", &[("queue", "default")]),
        0.0
    );
    assert!(!s.text.contains("jobq_jobs_submitted_total{"), "{}", s.text);
    promtool_check(&s.text);
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}
