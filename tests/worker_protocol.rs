//! One worker-protocol suite over every worker transport: HTTP, the gRPC
//! unary RPCs and the gRPC `Work` stream must behave the same for hand-out,
//! queues, leases, fencing, fail, heartbeat, progress, cancel and long-poll
//! wake-up.
//! Each case runs on its own server (memory store, gRPC on 127.0.0.1:0).

mod common;

use std::time::Duration;

use common::transport::{GrpcStream, GrpcUnary, Http, Refusal, WorkerTransport};
use common::{within, Kind, TestServer, BOUND};

async fn server(flags: &[&str]) -> TestServer {
    let mut f = vec!["--grpc-listen", "127.0.0.1:0"];
    f.extend_from_slice(flags);
    TestServer::start_with(Kind::Memory, &f).await
}

const FIVE: Duration = Duration::from_secs(5);

/// A hand-out carries the payload, the submit's headers, attempt 1, a lease;
/// the result posted reaches the waiting client.
async fn handout_and_complete<T: WorkerTransport>(s: TestServer, mut w: T) {
    let client = TestServer::spawn_send(
        s.http
            .post(s.url("/api/submit"))
            .header("x-trace", "abc")
            .header("authorization", "Bearer secret")
            .body("hello there"),
    );
    let h = w.poll(&[], FIVE).await.expect("a job");
    assert_eq!(h.payload, b"hello there", "{}", w.name());
    assert_eq!(h.headers.get("x-trace").map(String::as_str), Some("abc"));
    assert!(
        !h.headers.contains_key("authorization"),
        "credentials never reach workers"
    );
    assert_eq!(h.attempt, 1);
    assert_eq!(h.queue, "default");
    assert_eq!(h.lease_id.len(), 36, "lease id is a UUID: {h:?}");
    assert!(h.lease_expires_at.ends_with('Z'), "{h:?}");
    assert_eq!(s.job(&h.id).await.body["status"], "running");
    w.complete(&h.id, Some(&h.lease_id), b"general kenobi")
        .await
        .unwrap();
    let r = TestServer::join_result(client, "general kenobi").await;
    assert_eq!(r.body["job_id"], h.id.as_str());
    // Repeating the same complete is idempotent; another result is refused.
    w.complete(&h.id, Some(&h.lease_id), b"general kenobi")
        .await
        .unwrap();
    assert_eq!(
        w.complete(&h.id, None, b"other").await,
        Err(Refusal::Conflict)
    );
}

/// Bytes that are not UTF-8 reach the worker exactly, and its binary
/// result reaches the client (base64 with `payload_encoding`).
async fn binary_payload_and_result<T: WorkerTransport>(s: TestServer, mut w: T) {
    let client = s.spawn_submit("", vec![0xffu8, 0x00, 0x10]);
    let h = w.poll(&[], FIVE).await.expect("a job");
    assert_eq!(h.payload, vec![0xff, 0x00, 0x10], "{}", w.name());
    w.complete(&h.id, Some(&h.lease_id), &[0xfe, 0x01])
        .await
        .unwrap();
    let r = TestServer::join_result(client, "/gE=").await;
    assert_eq!(r.body["payload_encoding"], "base64");
}

/// The first non-empty queue of the list wins.
async fn queues_in_order_of_preference<T: WorkerTransport>(s: TestServer, mut w: T) {
    let b = s.submit_async("?queue=b", "in b").await;
    let h = w.poll(&["a", "b"], FIVE).await.expect("the job of b");
    assert_eq!((h.id.as_str(), h.queue.as_str()), (b.as_str(), "b"));
    let a = s.submit_async("?queue=a", "in a").await;
    let _b2 = s.submit_async("?queue=b", "in b again").await;
    let h = w.poll(&["a", "b"], FIVE).await.expect("the job of a");
    assert_eq!(h.id, a, "{}: a is preferred", w.name());
}

/// A lease that ran out is fenced: the old holder's complete, fail and
/// heartbeat are refused once the job was handed out again.
async fn stale_lease_is_fenced<T: WorkerTransport>(s: TestServer, mut w: T) {
    let id = s.submit_async("", "job").await;
    let first = w.poll(&[], FIVE).await.expect("first hand-out");
    s.wait_status(&id, "pending", BOUND).await;
    let second = w.poll(&[], FIVE).await.expect("second hand-out");
    assert_eq!(second.id, id);
    assert_eq!(second.attempt, 2, "{}", w.name());
    assert_ne!(second.lease_id, first.lease_id, "a new lease per hand-out");
    let old = Some(first.lease_id.as_str());
    assert_eq!(w.heartbeat(&id, old).await, Err(Refusal::Conflict));
    assert_eq!(w.complete(&id, old, b"late").await, Err(Refusal::Conflict));
    assert_eq!(w.fail(&id, old, "late", None).await, Err(Refusal::Conflict));
    w.complete(&id, Some(&second.lease_id), b"on time")
        .await
        .unwrap();
    let v = s.job(&id).await.body;
    assert_eq!(
        (v["status"].as_str(), v["payload"].as_str()),
        (Some("completed"), Some("on time"))
    );
}

/// Fail retries while attempts remain, then fails the job for good; the
/// waiting client gets 502 with the worker's error.
async fn fail_retries_then_fails<T: WorkerTransport>(s: TestServer, mut w: T) {
    let client = s.spawn_submit("", "flaky");
    let h = w.poll(&[], FIVE).await.expect("a job");
    assert_eq!(
        w.fail(&h.id, Some(&h.lease_id), "try again", None)
            .await
            .as_deref(),
        Ok("pending")
    );
    let h2 = w.poll(&[], FIVE).await.expect("the retry");
    assert_eq!((h2.id.as_str(), h2.attempt), (h.id.as_str(), 2));
    assert_eq!(
        w.fail(&h2.id, Some(&h2.lease_id), "broken for good", None)
            .await
            .as_deref(),
        Ok("failed")
    );
    let r = TestServer::join(client).await;
    r.assert_error(502);
    assert_eq!(r.body["error"], "broken for good");
    // retry=false fails at once.
    let id = s.submit_async("", "doomed").await;
    let h = w.poll(&[], FIVE).await.expect("a job");
    assert_eq!(h.id, id);
    assert_eq!(
        w.fail(&id, None, "no", Some(false)).await.as_deref(),
        Ok("failed")
    );
    assert_eq!(w.fail(&id, None, "no", None).await, Err(Refusal::Conflict));
}

/// A heartbeat extends the lease; once the job is cancelled, heartbeat and
/// complete are refused (the worker should stop).
async fn heartbeat_and_cancel<T: WorkerTransport>(s: TestServer, mut w: T) {
    let id = s.submit_async("", "long job").await;
    let h = w.poll(&[], FIVE).await.expect("a job");
    tokio::time::sleep(Duration::from_millis(20)).await; // let the clock move
    let extended = w.heartbeat(&id, Some(&h.lease_id)).await.unwrap();
    assert!(
        extended > h.lease_expires_at,
        "{extended} > {}",
        h.lease_expires_at
    );
    assert_eq!(s.delete(&format!("/api/jobs/{id}")).await.status, 200);
    assert_eq!(
        w.heartbeat(&id, Some(&h.lease_id)).await,
        Err(Refusal::Conflict),
        "{}",
        w.name()
    );
    assert_eq!(
        w.complete(&id, Some(&h.lease_id), b"x").await,
        Err(Refusal::Conflict)
    );
}

/// Unknown jobs are not found; malformed ids are invalid.
async fn unknown_and_malformed_ids<T: WorkerTransport>(_s: TestServer, mut w: T) {
    let nobody = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        w.complete(&nobody, None, b"x").await,
        Err(Refusal::NotFound)
    );
    assert_eq!(
        w.fail(&nobody, None, "x", None).await,
        Err(Refusal::NotFound)
    );
    assert_eq!(w.heartbeat(&nobody, None).await, Err(Refusal::NotFound));
    assert_eq!(
        w.complete(&nobody, Some("not-a-lease"), b"x").await,
        Err(Refusal::Invalid)
    );
}

/// A waiting worker is woken by a submit (well before its wait ends).
async fn long_poll_wakes_on_submit<T: WorkerTransport>(s: TestServer, mut w: T) {
    let submit = async {
        s.wait_stat("polling_workers", 1).await;
        s.submit_async("", "wake up").await
    };
    let (h, id) = within(FIVE, "long-poll wakes", async {
        tokio::join!(w.poll(&[], Duration::from_secs(30)), submit)
    })
    .await;
    assert_eq!(h.expect("a job").id, id);
}

/// Without jobs, a poll gets none.
async fn empty_poll_gets_nothing<T: WorkerTransport>(s: TestServer, mut w: T) {
    assert!(w.poll(&[], Duration::ZERO).await.is_none());
    assert!(w.poll(&[], Duration::from_millis(300)).await.is_none());
    assert_eq!(s.stats().await["running"], 0);
}

/// The suite's tests on one transport, in module `$module`: each case gets
/// a server of its own (with its flags) and a worker made by `$connect`.
macro_rules! suite_on {
    ($module:ident, $connect:path; $($name:ident $(($flags:expr))?),* $(,)?) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let s = server(&[$($flags)?]).await;
                    let w = $connect(&s).await;
                    super::$name(s, w).await
                }
            )*
        }
    };
}

/// [`Http::new`], async like the gRPC transports' `new`, for [`suite_on!`].
async fn http_worker(s: &TestServer) -> Http {
    Http::new(s)
}

/// The suite on every transport.
macro_rules! suite {
    ($($cases:tt)*) => {
        suite_on!(http, http_worker; $($cases)*);
        suite_on!(grpc, GrpcUnary::new; $($cases)*);
        suite_on!(stream, GrpcStream::new; $($cases)*);
    };
}

/// Progress events reach a streaming client in order; they are fenced and
/// extend the lease like a heartbeat.
async fn progress_events<T: WorkerTransport>(s: TestServer, mut w: T) {
    let mut client =
        common::sse::SseReader::open(s.http.post(s.url("/api/submit")).body("stream me")).await;
    let h = w.poll(&[], FIVE).await.expect("a job");
    let (one, first_lease) = w.progress(&h.id, Some(&h.lease_id), b"one").await.unwrap();
    let (two, _) = w.progress(&h.id, None, b"{\"n\":2}").await.unwrap();
    assert_eq!((one, two), (1, 2), "{}", w.name());
    assert!(
        first_lease.as_str() >= h.lease_expires_at.as_str(),
        "extends the lease"
    );
    let stale = "00000000-0000-4000-8000-000000000000";
    assert_eq!(
        w.progress(&h.id, Some(stale), b"x").await,
        Err(Refusal::Conflict),
        "{}",
        w.name()
    );
    let nobody = "6f1c1d2e-0000-4000-8000-000000000000";
    assert_eq!(w.progress(nobody, None, b"x").await, Err(Refusal::NotFound));
    let e1 = client.next().await.unwrap();
    let e2 = client.next().await.unwrap();
    assert_eq!(
        (e1.id.as_deref(), e1.json()),
        (Some("1"), serde_json::json!("one"))
    );
    assert_eq!(
        (e2.id.as_deref(), e2.json()),
        (Some("2"), serde_json::json!({"n": 2}))
    );
    w.complete(&h.id, Some(&h.lease_id), b"done").await.unwrap();
    let fin = client.next().await.unwrap();
    assert_eq!(fin.event, "result", "{}", w.name());
    assert_eq!(
        w.progress(&h.id, Some(&h.lease_id), b"late").await,
        Err(Refusal::Conflict)
    );
}

suite!(
    progress_events,
    handout_and_complete,
    binary_payload_and_result,
    queues_in_order_of_preference,
    stale_lease_is_fenced("--lease=0.5"),
    fail_retries_then_fails("--max-attempts=2"),
    heartbeat_and_cancel,
    unknown_and_malformed_ids,
    long_poll_wakes_on_submit,
    empty_poll_gets_nothing,
);
