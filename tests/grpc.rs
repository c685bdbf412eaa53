//! The gRPC worker API beyond the shared worker suite: the first version's
//! RPCs through a client generated from its own `worker.proto` text,
//! reflection, the `Work` stream's credits, errors, load and dropped
//! workers, shutdown, and the `--grpc-listen`/`GRPC_PORT` start-up rules.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::binary::free_port;
use common::transport::{grpc_client, WorkStream};
use common::{within, Kind, TestServer, BOUND};
use jobq::grpc::pb;
use tonic::Code;

/// Client stubs generated from tests/proto/original_worker.proto.
mod original {
    #![allow(clippy::all, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/original/worker.rs"));
}
use original::worker_service_client::WorkerServiceClient as OriginalClient;

async fn server(flags: &[&str]) -> TestServer {
    let mut f = vec!["--grpc-listen", "127.0.0.1:0"];
    f.extend_from_slice(flags);
    TestServer::start_with(Kind::Memory, &f).await
}

async fn original_client(s: &TestServer) -> OriginalClient<tonic::transport::Channel> {
    within(BOUND, "connect", OriginalClient::connect(s.grpc_url()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_rpcs_complete_an_http_sync_submit() {
    let s = server(&[]).await;
    let mut c = original_client(&s).await;
    let e = c.request_job(original::JobRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "empty queue: {e:?}");

    let client = TestServer::spawn_send(
        s.http
            .post(s.url("/api/submit"))
            .header("x-user", "ada")
            .body(r#"{"n":1}"#),
    );
    let job = within(BOUND, "a job", async {
        loop {
            match c.request_job(original::JobRequest {}).await {
                Ok(j) => return j.into_inner(),
                Err(e) if e.code() == Code::NotFound => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert_eq!(job.payload, r#"{"n":1}"#);
    assert_eq!(job.headers.get("x-user").map(String::as_str), Some("ada"));
    assert_eq!(s.job(&job.id).await.body["status"], "running");
    let done = c
        .complete_job(original::JobResult {
            job_id: job.id.clone(),
            payload: r#"{"ok":true}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.success);
    let r = TestServer::join(client).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["payload"], serde_json::json!({"ok": true}));
    assert_eq!(r.body["job_id"], job.id.as_str());

    // Unknown job: NOT_FOUND. A job not running: FAILED_PRECONDITION
    // (the same result again is idempotent and OK).
    let unknown = c
        .complete_job(original::JobResult {
            job_id: uuid::Uuid::new_v4().to_string(),
            payload: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let again = c
        .complete_job(original::JobResult {
            job_id: job.id.clone(),
            payload: r#"{"ok":true}"#.into(),
        })
        .await
        .unwrap();
    assert!(again.into_inner().success);
    let other = c
        .complete_job(original::JobResult {
            job_id: job.id.clone(),
            payload: "different".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_job_carries_binary_payload_as_base64() {
    let s = server(&[]).await;
    let mut c = original_client(&s).await;
    let id = s.submit_async("", vec![0xffu8, 0xfe, 0x00]).await;
    let job = c
        .request_job(original::JobRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.id, id);
    assert_eq!(job.payload, "//4A");
    assert_eq!(
        job.headers
            .get("x-jobq-payload-encoding")
            .map(String::as_str),
        Some("base64")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let s = server(&[]).await;
    let channel = within(
        BOUND,
        "connect",
        tonic::transport::Endpoint::from_shared(s.grpc_url())
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
    let mut c = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let first = within(BOUND, "reflection answer", answers.message())
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("not a service list: {first:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"worker.WorkerService".to_owned()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_names_the_status_of_a_cancelled_job() {
    let s = server(&[]).await;
    let mut c = grpc_client(&s).await;
    let id = s.submit_async("", "work").await;
    let job = c
        .request_job(pb::JobRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.id, id);
    assert_eq!(s.delete(&format!("/api/jobs/{id}")).await.status, 200);
    let e = c
        .heartbeat(pb::HeartbeatRequest {
            job_id: id.clone(),
            lease_id: job.lease_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.metadata().get("jobq-job-status").unwrap(), "cancelled");
    // The same on the stream.
    let mut w = WorkStream::open(&mut c, &[], 0).await;
    let answer = w
        .call(pb::work_request::Action::Heartbeat(pb::HeartbeatRequest {
            job_id: id.clone(),
            lease_id: job.lease_id,
        }))
        .await;
    let pb::work_response::Event::Error(err) = answer else {
        panic!("not an error: {answer:?}")
    };
    assert_eq!(
        (err.code, err.job_status.as_str(), err.job_id.as_str()),
        (9, "cancelled", id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_pushes_no_more_jobs_than_credits() {
    let s = server(&[]).await;
    let mut c = grpc_client(&s).await;
    for i in 0..3 {
        s.submit_async("?queue=q", format!("job {i}")).await;
    }
    let mut w = WorkStream::open(&mut c, &["q"], 2).await;
    let a = w.job(BOUND).await.expect("first job");
    let b = w.job(BOUND).await.expect("second job");
    assert_ne!(a.id, b.id);
    assert!(
        w.job(Duration::from_millis(500)).await.is_none(),
        "only 2 credits"
    );
    assert_eq!(s.stats().await["pending"], 1);
    w.grant(1).await;
    let third = w.job(BOUND).await.expect("third job after a credit");
    assert_eq!(third.queue, "q");
    // A later message may not change the queues.
    w.send(pb::WorkRequest {
        queues: vec!["other".into()],
        ..Default::default()
    })
    .await;
    let end = w.end(BOUND).await.unwrap_err();
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_with_a_bad_queue_is_refused() {
    let s = server(&[]).await;
    let mut c = grpc_client(&s).await;
    let mut w = WorkStream::open(&mut c, &["no spaces"], 1).await;
    let end = w.end(BOUND).await.unwrap_err();
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
}

/// 1,000 jobs over 4 streams: each handed out exactly once, all completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_under_load_hands_each_job_out_once() {
    const JOBS: usize = 1000;
    const STREAMS: usize = 4;
    let s = server(&[]).await;
    let mut workers = Vec::new();
    for _ in 0..STREAMS {
        let mut c = grpc_client(&s).await;
        workers.push(tokio::spawn(async move {
            let mut w = WorkStream::open(&mut c, &[], 8).await;
            let mut seen = Vec::new();
            // Each worker ends once it gets nothing for a second after the
            // submits are over (bounded by the test's deadline below).
            while let Some(job) = w.job(Duration::from_secs(2)).await {
                let answer = w
                    .call(pb::work_request::Action::Complete(pb::JobResult {
                        job_id: job.id.clone(),
                        payload: format!("done {}", job.payload),
                        lease_id: job.lease_id.clone(),
                        ..Default::default()
                    }))
                    .await;
                assert!(
                    matches!(answer, pb::work_response::Event::Ack(_)),
                    "{answer:?}"
                );
                w.grant(1).await;
                seen.push(job.id);
            }
            seen
        }));
    }
    let mut submitted = HashSet::new();
    for i in 0..JOBS {
        submitted.insert(s.submit_async("", format!("{i}")).await);
    }
    let mut handed = Vec::new();
    within(Duration::from_secs(60), "stream workers finish", async {
        for w in workers {
            handed.extend(w.await.unwrap());
        }
    })
    .await;
    let unique: HashSet<String> = handed.iter().cloned().collect();
    assert_eq!(handed.len(), JOBS, "each job handed out once");
    assert_eq!(unique, submitted);
    let st = s.stats().await;
    assert_eq!(
        (st["completed"].as_u64(), st["running"].as_u64()),
        (Some(JOBS as u64), Some(0))
    );
}

/// A stream worker that stops answering keeps its jobs until their lease
/// runs out (never given to another worker meanwhile); then they come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stream_worker_loses_its_jobs_after_the_lease() {
    let s = server(&["--lease", "1"]).await;
    let mut c = grpc_client(&s).await;
    let a = s.submit_async("", "a").await;
    let b = s.submit_async("", "b").await;
    let mut silent = WorkStream::open(&mut c, &[], 2).await;
    let got: HashSet<String> = [
        silent.job(BOUND).await.unwrap().id,
        silent.job(BOUND).await.unwrap().id,
    ]
    .into();
    assert_eq!(got, [a.clone(), b.clone()].into());
    // Another worker finds nothing while the leases hold.
    assert!(s.poll("").await.is_none());
    // The silent worker drops its stream: the jobs stay running (it may still
    // be running them) ...
    drop(silent);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.job(&a).await.body["status"], "running");
    assert!(s.poll("").await.is_none());
    // ... until the lease runs out; then another worker gets them (attempt 2).
    let first = s.take("").await;
    let second = s.take("").await;
    let again: HashSet<String> = [
        first["job_id"].as_str().unwrap().to_owned(),
        second["job_id"].as_str().unwrap().to_owned(),
    ]
    .into();
    assert_eq!(again, [a, b].into());
    assert_eq!(
        (first["attempt"].as_u64(), second["attempt"].as_u64()),
        (Some(2), Some(2))
    );
}

/// On shutdown a long-poll ends at once (UNAVAILABLE), a stream still takes
/// results during the grace, then ends UNAVAILABLE, and the server exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_long_polls_and_streams() {
    let s = server(&["--shutdown-grace", "10"]).await;
    let mut c = grpc_client(&s).await;
    let id = s.submit_async("", "in flight").await;
    let mut w = WorkStream::open(&mut c, &[], 1).await;
    let job = w.job(BOUND).await.expect("a job");
    assert_eq!(job.id, id);
    let mut poller = c.clone();
    let poll = tokio::spawn(async move {
        poller
            .request_job(pb::JobRequest {
                wait_seconds: 40,
                ..Default::default()
            })
            .await
    });
    s.wait_stat("polling_workers", 1).await;
    let stop = tokio::spawn(s.stop());
    let e = within(Duration::from_secs(3), "long-poll ends", poll)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // The running job can still be completed on the stream; that ends the drain.
    let answer = w
        .call(pb::work_request::Action::Complete(pb::JobResult {
            job_id: id,
            payload: "finished".into(),
            lease_id: job.lease_id,
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(answer, pb::work_response::Event::Ack(_)),
        "{answer:?}"
    );
    let end = w.end(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    within(Duration::from_secs(10), "server stops", stop)
        .await
        .unwrap();
}

// ------------------------------------------------------ start-up rules

/// `jobq serve` with env `env`, flags `args`; waits for HTTP health.
async fn spawn(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, u16) {
    let http_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"));
    cmd.args(["serve", "--storage", "memory", "--listen"])
        .arg(format!("127.0.0.1:{http_port}"))
        .args(args)
        .env_remove("GRPC_PORT")
        .env_remove("JOBQ_GRPC_LISTEN")
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let http = reqwest::Client::new();
    within(BOUND, "server ready", async {
        loop {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{http_port}/health"))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    (child, http_port)
}

async fn grpc_answers(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}");
    match tokio::time::timeout(
        BOUND,
        pb::worker_service_client::WorkerServiceClient::connect(url),
    )
    .await
    {
        Ok(Ok(mut c)) => {
            let e = c.request_job(pb::JobRequest::default()).await.unwrap_err();
            assert_eq!(e.code(), Code::NotFound);
            true
        }
        _ => false,
    }
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_port_env_is_honoured_and_off_disables() {
    let port = free_port();
    let p = port.to_string();
    let (child, _) = spawn(&[], &[("GRPC_PORT", &p)]).await;
    assert!(grpc_answers(port).await, "GRPC_PORT={port} serves gRPC");
    stop(child);

    let port = free_port();
    let p = port.to_string();
    let (child, _) = spawn(&["--grpc-listen", "off"], &[("GRPC_PORT", &p)]).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "off: nothing listens"
    );
    stop(child);

    // The flag (or JOBQ_GRPC_LISTEN) wins over GRPC_PORT.
    let (port, other) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{port}");
    let o = other.to_string();
    let (child, _) = spawn(&[], &[("JOBQ_GRPC_LISTEN", &addr), ("GRPC_PORT", &o)]).await;
    assert!(grpc_answers(port).await);
    assert!(std::net::TcpStream::connect(("127.0.0.1", other)).is_err());
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_port_taken_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args([
            "serve",
            "--storage",
            "memory",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            &addr,
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("jobq: error: cannot listen on"), "{err}");
    assert!(err.contains(&addr) && err.contains("gRPC"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["serve", "--storage", "memory", "--listen", "127.0.0.1:0"])
        .env("GRPC_PORT", "lots")
        .env_remove("JOBQ_GRPC_LISTEN")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GRPC_PORT"));
}

// ------------------------------------------------------ jobq worker --grpc

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_worker_over_the_stream_runs_commands() {
    let s = server(&[]).await;
    let mut w = common::binary::grpc_worker(
        &s.grpc_url(),
        &[
            "--concurrency",
            "2",
            "--exec",
            r#"p=$(cat); if [ "$JOBQ_ATTEMPT" = 1 ] && [ "$p" = "fail once" ]; then echo broken >&2; exit 3; fi; printf %s "$p" | tr a-z A-Z"#,
        ],
        std::process::Stdio::piped(),
    );
    let ok = s.spawn_submit("", "hello grpc");
    TestServer::join_result(ok, "HELLO GRPC").await;
    // A failed first attempt is retried (retry allowed), and the retry succeeds.
    let r = TestServer::join(s.spawn_submit("", "fail once")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["payload"], "FAIL ONCE");
    // Several at once.
    let many: Vec<_> = (0..10)
        .map(|i| s.spawn_submit("", format!("job {i}")))
        .collect();
    for (i, h) in many.into_iter().enumerate() {
        let r = TestServer::join(h).await;
        assert_eq!(r.body["payload"], format!("JOB {i}"), "{r:?}");
    }
    // SIGTERM: a clean exit.
    let status = common::binary::term_and_wait(&mut w).await;
    assert_eq!(status.code(), Some(0));
}

// ------------------------------------------------------ auth

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_token_is_required_as_bearer_metadata() {
    let s = server(&[
        "--worker-token",
        "worker-secret-123456",
        "--client-token",
        "client-secret-123456",
        "--admin-token",
        "admin-secret-1234567",
    ])
    .await;
    let mut c = grpc_client(&s).await;
    // A token that passes finds no job: NOT_FOUND.
    for (what, token, code) in [
        ("no token", None, Code::Unauthenticated),
        (
            "unknown token",
            Some("nobody-knows-this-one"),
            Code::Unauthenticated,
        ),
        (
            "a client's token",
            Some("client-secret-123456"),
            Code::PermissionDenied,
        ),
        (
            "the worker token",
            Some("worker-secret-123456"),
            Code::NotFound,
        ),
        (
            "the admin token",
            Some("admin-secret-1234567"),
            Code::NotFound,
        ),
    ] {
        let req = match token {
            None => tonic::Request::new(pb::JobRequest::default()),
            Some(t) => with_token(pb::JobRequest::default(), t),
        };
        let e = c.request_job(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
    }
    // The stream too.
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::WorkRequest>(1);
    let e = c
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // A job submitted with the client token, taken and completed with the worker's.
    let client = TestServer::spawn_send(
        s.http
            .post(s.url("/api/submit"))
            .bearer_auth("client-secret-123456")
            .body("secret work"),
    );
    let job = within(BOUND, "a job", async {
        loop {
            match c
                .request_job(with_token(
                    pb::JobRequest {
                        wait_seconds: 5,
                        ..Default::default()
                    },
                    "worker-secret-123456",
                ))
                .await
            {
                Ok(j) => return j.into_inner(),
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert!(!job.headers.contains_key("authorization"));
    c.complete_job(with_token(
        pb::JobResult {
            job_id: job.id,
            payload: "done".into(),
            ..Default::default()
        },
        "worker-secret-123456",
    ))
    .await
    .unwrap();
    TestServer::join_result(client, "done").await;
}
