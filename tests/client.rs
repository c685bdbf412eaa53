//! `jobq::client` against the real server in process: submit, read, cancel,
//! the worker calls with fencing, and `Worker::run` (concurrency,
//! heartbeats, lost jobs, graceful stop).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{joined, Kind, TestServer};
use jobq::client::{Client, Error, Outcome, RunOptions, SubmitOptions, Worker};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Upper bound of any single wait in these tests.
const BOUND: Duration = Duration::from_secs(60);

fn wait(secs: u64) -> SubmitOptions {
    SubmitOptions {
        timeout: Some(Duration::from_secs(secs)),
        ..Default::default()
    }
}

async fn poll_one(w: &Worker) -> jobq::client::Job {
    tokio::time::timeout(BOUND, async {
        loop {
            if let Some(job) = w.poll().await.unwrap() {
                return job;
            }
        }
    })
    .await
    .expect("a job arrives")
}

/// `worker.run(opts, stop, handler)` in the background.
fn spawn_run<H, F>(
    worker: Worker,
    opts: RunOptions,
    stop: &CancellationToken,
    handler: H,
) -> tokio::task::JoinHandle<Result<(), Error>>
where
    H: Fn(jobq::client::Job, CancellationToken) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Outcome> + Send + 'static,
{
    let stop = stop.clone();
    tokio::spawn(async move { worker.run(opts, stop, handler).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_poll_complete_with_binary_bytes_and_fencing() {
    let s = TestServer::start(Kind::Memory).await;
    let client = Client::new(&s.base).unwrap();
    let worker = client.worker(vec![]).long_poll(Duration::from_secs(5));
    let payload = Bytes::from_static(&[0xff, 0x00, 0x01, b'a']);
    let waiting = {
        let (c, p) = (client.clone(), payload.clone());
        tokio::spawn(async move { c.submit(p, &wait(50)).await })
    };
    let job = poll_one(&worker).await;
    assert_eq!(job.payload, payload);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.queue, "default");
    assert!(!job.lease_id.is_empty());
    assert!(job.lease_expires_at.is_some());
    worker.heartbeat(&job).await.unwrap();
    let result = Bytes::from_static(&[0xfe, b'r', 0x00]);
    worker.complete(&job, result.clone()).await.unwrap();
    let done = joined(BOUND, "the submit is answered", waiting)
        .await
        .unwrap();
    assert_eq!(done.job_id, job.id);
    assert_eq!(done.result, result);
    // The job has ended: further calls about it are not this worker's.
    assert!(matches!(
        worker.heartbeat(&job).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        worker.fail(&job, "late", true).await,
        Err(Error::LeaseLost { .. })
    ));
    let view = client.job(&job.id).await.unwrap();
    assert_eq!(view.status, "completed");
    assert_eq!(view.result.as_deref(), Some(&result[..]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cancelled_still_running_and_refused() {
    let s = TestServer::start_with(Kind::Memory, &["--max-attempts", "1"]).await;
    let client = Client::new(&s.base).unwrap();
    let worker = client.worker(vec![]).long_poll(Duration::from_secs(5));

    // Failed: the worker's error, with the attempts.
    let waiting = {
        let c = client.clone();
        tokio::spawn(async move { c.submit("x", &wait(50)).await })
    };
    let job = poll_one(&worker).await;
    worker.fail(&job, "it broke", true).await.unwrap();
    match joined(BOUND, "the submit is answered", waiting).await {
        Err(Error::JobFailed {
            job_id,
            attempts,
            error,
        }) => {
            assert_eq!(job_id, job.id);
            assert_eq!(attempts, 1);
            assert_eq!(error, "it broke");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }

    // Still running: the wait times out, the job goes on.
    let opts = SubmitOptions {
        queue: Some("idle".into()),
        timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let Err(Error::StillRunning { job_id }) = client.submit("y", &opts).await else {
        panic!("expected StillRunning")
    };
    let view = client.job(&job_id).await.unwrap();
    assert_eq!(
        (view.status.as_str(), view.queue.as_str()),
        ("pending", "idle")
    );
    assert_eq!(view.position, Some(0));

    // Cancelled: the waiting client hears it.
    let waiting = {
        let c = client.clone();
        let opts = SubmitOptions {
            queue: Some("doomed".into()),
            ..wait(50)
        };
        tokio::spawn(async move { c.submit("z", &opts).await })
    };
    let id = tokio::time::timeout(BOUND, async {
        loop {
            if let Some(j) = client
                .jobs(None, Some("doomed"), None)
                .await
                .unwrap()
                .first()
            {
                return j.job_id.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(client.cancel(&id).await.unwrap().status, "cancelled");
    assert!(matches!(
        joined(BOUND, "the submit is answered", waiting).await,
        Err(Error::JobCancelled { job_id }) if job_id == id
    ));

    // Refused: cancelling twice, an unknown id, a bad status filter.
    assert!(matches!(
        client.cancel(&id).await,
        Err(Error::Rejected { status: 409, .. })
    ));
    assert!(matches!(
        client.job(&uuid::Uuid::new_v4().to_string()).await,
        Err(Error::Rejected { status: 404, .. })
    ));
    assert!(matches!(
        client.jobs(Some("bogus"), None, None).await,
        Err(Error::Rejected { status: 400, .. })
    ));

    // Async submit and the admin calls.
    let a = client
        .submit_async("later", &SubmitOptions::default())
        .await
        .unwrap();
    assert_eq!(client.job(&a).await.unwrap().status, "pending");
    let stats = client.stats().await.unwrap();
    assert!(stats["pending"].as_u64().unwrap() >= 2, "{stats}");
    assert!(client.clear(None).await.unwrap() >= 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_transient() {
    let client = Client::new("http://127.0.0.1:1").unwrap();
    let e = client.submit("x", &wait(1)).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(e.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_handles_jobs_concurrently() {
    let s = TestServer::start(Kind::Memory).await;
    let client = Client::new(&s.base).unwrap();
    let worker = client.worker(vec![]).long_poll(Duration::from_secs(2));
    let stop = CancellationToken::new();
    // Two jobs must be in hand at once to get past the barrier.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let running = spawn_run(
        worker,
        RunOptions { concurrency: 2 },
        &stop,
        move |job, _lost| {
            let barrier = barrier.clone();
            async move {
                if job.payload.starts_with(b"pair") {
                    barrier.wait().await;
                }
                Outcome::Complete(job.payload.to_ascii_uppercase().into())
            }
        },
    );
    let mut subs = vec![];
    for p in ["pair-a", "pair-b", "c", "d", "e"] {
        let c = client.clone();
        subs.push(tokio::spawn(
            async move { (p, c.submit(p, &wait(50)).await) },
        ));
    }
    for sub in subs {
        let (p, r) = joined(BOUND, "the submit is answered", sub).await;
        assert_eq!(r.unwrap().result, p.to_ascii_uppercase());
    }
    stop.cancel();
    joined(BOUND, "run returns", running).await.unwrap();
    s.stop().await;
}

/// A backlog drains through batch polls and complete-and-take-next: every
/// job done once, in its first attempt, the worker's slots never exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_drains_a_backlog_with_batches_and_fused_completes() {
    let s = TestServer::start(Kind::Memory).await;
    let client = Client::new(&s.base).unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(s.submit_async("", format!("{{\"i\":{i}}}")).await);
    }
    let worker = client.worker(vec![]).long_poll(Duration::from_secs(2));
    let stop = CancellationToken::new();
    let in_hand = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let running = {
        let (in_hand, most) = (in_hand.clone(), most.clone());
        spawn_run(
            worker,
            RunOptions { concurrency: 4 },
            &stop,
            move |job, _| {
                let (in_hand, most) = (in_hand.clone(), most.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = in_hand.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    in_hand.fetch_sub(1, SeqCst);
                    Outcome::Complete(job.payload)
                }
            },
        )
    };
    common::within(BOUND, "the backlog drains", s.wait_stat("completed", 60)).await;
    for id in &ids {
        let v = s.job(id).await.body;
        assert_eq!(
            (v["status"].as_str(), v["attempts"].as_u64()),
            (Some("completed"), Some(1)),
            "{v}"
        );
    }
    assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 4);
    stop.cancel();
    joined(BOUND, "run returns", running).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_gracefully_after_the_jobs_in_hand() {
    let s = TestServer::start(Kind::Memory).await;
    let client = Client::new(&s.base).unwrap();
    let worker = client.worker(vec![]).long_poll(Duration::from_secs(2));
    let stop = CancellationToken::new();
    let (started_tx, mut started) = mpsc::channel::<()>(1);
    let (release, released) = oneshot::channel::<()>();
    let released = std::sync::Arc::new(tokio::sync::Mutex::new(Some(released)));
    let running = spawn_run(worker, RunOptions::default(), &stop, move |_job, _lost| {
        let (started_tx, released) = (started_tx.clone(), released.clone());
        async move {
            let _ = started_tx.send(()).await;
            if let Some(rx) = released.lock().await.take() {
                let _ = rx.await;
            }
            Outcome::Complete(Bytes::from_static(b"finished"))
        }
    });
    let waiting = {
        let c = client.clone();
        tokio::spawn(async move { c.submit("x", &wait(50)).await })
    };
    tokio::time::timeout(BOUND, started.recv())
        .await
        .unwrap()
        .unwrap();
    stop.cancel();
    assert!(!running.is_finished(), "run returned with a job in hand");
    release.send(()).unwrap();
    let done = joined(BOUND, "the submit is answered", waiting)
        .await
        .unwrap();
    assert_eq!(done.result, &b"finished"[..]);
    joined(BOUND, "run returns", running).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_heartbeats_long_jobs_and_stops_lost_ones() {
    let s = TestServer::start_with(Kind::Memory, &["--lease", "2", "--max-attempts", "1"]).await;
    let client = Client::new(&s.base).unwrap();
    let worker = client.worker(vec![]).long_poll(Duration::from_secs(2));
    let stop = CancellationToken::new();
    let (lost_tx, mut lost_rx) = mpsc::channel::<String>(4);
    let running = spawn_run(
        worker,
        RunOptions { concurrency: 2 },
        &stop,
        move |job, lost| {
            let lost_tx = lost_tx.clone();
            async move {
                if job.payload == "long" {
                    // Outlives its 2 s lease: heartbeats keep it.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return Outcome::Complete(Bytes::from_static(b"kept"));
                }
                // Waits to be told the job is gone.
                if tokio::time::timeout(BOUND, lost.cancelled()).await.is_ok() {
                    let _ = lost_tx.send(job.id.clone()).await;
                }
                Outcome::Complete(Bytes::from_static(b"too late"))
            }
        },
    );
    let long = {
        let c = client.clone();
        tokio::spawn(async move { c.submit("long", &wait(50)).await })
    };
    let doomed = client
        .submit_async("doomed", &SubmitOptions::default())
        .await
        .unwrap();
    tokio::time::timeout(BOUND, async {
        while client.job(&doomed).await.unwrap().status != "running" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    client.cancel(&doomed).await.unwrap();
    let lost = tokio::time::timeout(BOUND, lost_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lost, doomed);
    let done = joined(BOUND, "the long job is answered", long)
        .await
        .unwrap();
    assert_eq!(done.result, &b"kept"[..]);
    assert_eq!(client.job(&done.job_id).await.unwrap().attempts, 1);
    assert_eq!(client.job(&doomed).await.unwrap().status, "cancelled");
    stop.cancel();
    joined(BOUND, "run returns", running).await.unwrap();
    s.stop().await;
}

/// `Client::stream` yields a handler's progress (sent with `job.progress`
/// from `Worker::run`) in order, then the result; `Client::job_events`
/// resumes after a seq; `Worker::progress` is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_through_the_client_library() {
    use futures_util::StreamExt;
    use jobq::client::JobEvent;
    let s = TestServer::start(Kind::Memory).await;
    let client = Client::new(&s.base).unwrap();
    let stop = CancellationToken::new();
    let run = spawn_run(
        client.worker(vec![]).long_poll(Duration::from_secs(5)),
        RunOptions::default(),
        &stop,
        |job, _lost| async move {
            for w in ["a", "b", "c"] {
                assert!(job.progress.send(w));
            }
            Outcome::Complete(Bytes::from_static(b"abc"))
        },
    );
    let mut events = client.stream("go", &wait(50)).await.unwrap();
    let id = events.job_id().unwrap().to_owned();
    let mut got = Vec::new();
    while let Some(e) = tokio::time::timeout(BOUND, events.next()).await.unwrap() {
        got.push(e.unwrap());
    }
    let progress = |seq, d: &'static [u8]| JobEvent::Progress {
        seq,
        data: Bytes::from_static(d),
    };
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got[..3],
        [progress(1, b"a"), progress(2, b"b"), progress(3, b"c")]
    );
    let done = got.pop().unwrap().into_result().unwrap();
    assert_eq!(
        (done.job_id.as_str(), &done.result[..]),
        (id.as_str(), &b"abc"[..])
    );

    // Re-attached after seq 2: the rest, then the outcome again.
    let again: Vec<_> = client
        .job_events(&id, Some(2))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(again[0], progress(3, b"c"));
    assert!(again[1].is_final());
    stop.cancel();
    joined(BOUND, "worker stops", run).await.unwrap();

    // Fencing: a job not (or no longer) ours is refused. (Another queue:
    // the stopped runner's last long-poll may still be open on the server.)
    let worker = client.worker(vec!["fence".into()]);
    let fence = SubmitOptions {
        queue: Some("fence".into()),
        ..Default::default()
    };
    let id = client.submit_async("x", &fence).await.unwrap();
    let job = poll_one(&worker).await;
    assert_eq!(job.id, id);
    assert_eq!(worker.progress(&job, "p").await.unwrap(), 1);
    worker.complete(&job, "r").await.unwrap();
    assert!(matches!(
        worker.progress(&job, "late").await,
        Err(Error::LeaseLost { .. })
    ));
    // A wait that runs out is the Accepted event.
    let mut ev = client
        .stream(
            "nobody",
            &SubmitOptions {
                timeout: Some(Duration::from_millis(200)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let fin = ev.next().await.unwrap().unwrap();
    assert!(matches!(fin.into_result(), Err(Error::StillRunning { .. })));
}
