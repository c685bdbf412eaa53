//! HTTP calls by URL, for tests that speak to a server they did not start
//! in process (a spawned `jobq serve`, several nodes) or to several at once.
//! Each call is one request; the caller bounds its loops.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

/// `GET url`, its body read as JSON (whatever the status).
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// `POST {base}/api/jobs` with `body`, which must be acknowledged (202);
/// returns the job id.
pub async fn enqueue(http: &reqwest::Client, base: &str, body: impl Into<reqwest::Body>) -> String {
    acknowledged(http.post(format!("{base}/api/jobs")).body(body)).await
}

/// [`enqueue`] with an `Idempotency-Key`.
pub async fn enqueue_keyed(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    body: impl Into<reqwest::Body>,
) -> String {
    let rb = http
        .post(format!("{base}/api/jobs"))
        .header("idempotency-key", key)
        .body(body);
    acknowledged(rb).await
}

/// The job id of an async submit `rb`, which must be acknowledged (202).
pub async fn acknowledged(rb: reqwest::RequestBuilder) -> String {
    super::id_of(&json_of(rb.send().await.unwrap(), 202).await)
}

/// Sends `rb`; the answer's status.
pub async fn status_of(rb: reqwest::RequestBuilder) -> u16 {
    rb.send().await.unwrap().status().as_u16()
}

/// The body of `r`, which must have answered `status`, as JSON.
pub async fn json_of(r: reqwest::Response, status: u16) -> Value {
    let url = r.url().clone();
    assert_eq!(r.status(), status, "{url}");
    r.json().await.unwrap()
}

/// One poll, `GET {base}/api/worker/poll{query}`: the hand-out on 200,
/// `None` on 204; any other answer fails the test.
pub async fn poll(http: &reqwest::Client, base: &str, query: &str) -> Option<Value> {
    let r = http
        .get(format!("{base}/api/worker/poll{query}"))
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => Some(r.json().await.unwrap()),
        204 => None,
        s => panic!("poll: {s}"),
    }
}

/// Completes the hand-out `job` under its lease (`?lease=`) with `body`;
/// returns the status code.
pub async fn complete(
    http: &reqwest::Client,
    base: &str,
    job: &Value,
    body: impl Into<reqwest::Body>,
) -> u16 {
    let (id, lease) = (super::id_of(job), super::lease_of(job));
    status_of(
        http.post(format!("{base}/api/worker/complete/{id}?lease={lease}"))
            .body(body),
    )
    .await
}

/// `POST url` with `body` in the background (a sync submit, usually); the
/// caller bounds the join.
pub fn spawn_post(
    http: &reqwest::Client,
    url: String,
    body: impl Into<reqwest::Body>,
) -> JoinHandle<reqwest::Response> {
    let rb = http.post(url).body(body);
    tokio::spawn(async move { rb.send().await.unwrap() })
}

/// Polls `GET {base}/health` until it answers `want`, for at most `within`.
/// Returns the answers seen before (0 for a request that got no answer,
/// e.g. while the server is not listening yet); `Err` says what was seen
/// last when time ran out.
pub async fn wait_health(
    http: &reqwest::Client,
    base: &str,
    want: u16,
    within: Duration,
) -> Result<Vec<u16>, String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let status = match http.get(format!("{base}/health")).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        if status == want {
            return Ok(seen);
        }
        seen.push(status);
        if Instant::now() >= deadline {
            return Err(format!(
                "{base}/health never answered {want} within {within:?} (last: {status})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
