//! The `Work` stream: the whole worker protocol on one bidirectional
//! stream (docs/grpc.md, "The Work stream").
//!
//! Two tasks per stream. The *pusher* long-polls the broker for the
//! stream's queues while the worker has credits, and pushes each job it
//! gets (one credit each). The *reader* takes the worker's messages: credits
//! are added, and each action (complete, fail, heartbeat) runs concurrently
//! with the others and is answered by an ack or a per-job error, matched by
//! `seq`. A job pushed on a stream that drops stays leased until its lease
//! runs out (its worker may still be running it); the lease rescue then
//! returns it to `pending`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::error::JOB_STATUS_TRAILER;
use super::{convert, pb};
use crate::broker::{self, Broker, PollRequest};
use crate::job::{Job, Queue};

/// The server's half of a `Work` stream.
pub type WorkStream = ReceiverStream<Result<pb::WorkResponse, Status>>;

/// Longest silence of the server on a stream: one wait for a job (or for
/// credits) lasts at most this long, then a `KeepAlive` goes out, so
/// proxies with a 60 s idle limit keep the stream open.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// Messages queued for the worker before the server waits for it to read.
const OUTBOX: usize = 64;

/// Pause after a store error before the pusher polls again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Starts serving one stream; its answers come out of the returned stream.
pub fn start(
    broker: Broker,
    inbound: Streaming<pb::WorkRequest>,
    drained: CancellationToken,
) -> WorkStream {
    let (tx, rx) = mpsc::channel(OUTBOX);
    tokio::spawn(read(broker, inbound, tx, drained));
    ReceiverStream::new(rx)
}

type Outbox = mpsc::Sender<Result<pb::WorkResponse, Status>>;

/// Credits the worker granted and the pusher has not used yet.
#[derive(Default)]
struct Credits {
    /// Jobs the pusher may still push.
    left: AtomicU64,
    /// Signalled when credits are granted (stores a permit if the pusher is busy).
    granted: Notify,
    /// Cancelled when the worker drains: the pusher stops.
    drain: CancellationToken,
}

/// The reader: the worker's messages, until it closes its side (then the
/// last acks go out and the stream ends OK), breaks it, or the shutdown
/// drain ends (`UNAVAILABLE`).
async fn read(
    broker: Broker,
    mut inbound: Streaming<pb::WorkRequest>,
    tx: Outbox,
    drained: CancellationToken,
) {
    let credits = Arc::new(Credits::default());
    let mut pusher: Option<tokio::task::JoinHandle<()>> = None;
    let mut actions = FuturesUnordered::new();
    let mut open = true;
    let end: Option<Status> = loop {
        if !open && actions.is_empty() {
            break None;
        }
        tokio::select! {
            m = inbound.message(), if open => match m {
                Ok(Some(msg)) => {
                    if pusher.is_none() {
                        // The first message names the queues.
                        match convert::queues(&msg.queues) {
                            Ok(queues) => {
                                pusher = Some(tokio::spawn(push(
                                    broker.clone(),
                                    queues,
                                    credits.clone(),
                                    tx.clone(),
                                )));
                            }
                            Err(e) => break Some(e.into()),
                        }
                    } else if !msg.queues.is_empty() {
                        break Some(Status::invalid_argument(
                            "queues are read from the stream's first message only",
                        ));
                    }
                    if msg.drain {
                        credits.drain.cancel();
                    }
                    if msg.credits > 0 && !msg.drain {
                        credits.left.fetch_add(msg.credits.into(), Ordering::AcqRel);
                        credits.granted.notify_one();
                    }
                    if let Some(action) = msg.action {
                        actions.push(act(broker.clone(), msg.seq, action));
                    }
                }
                Ok(None) => open = false,
                // The worker's side broke: there is no one left to answer.
                Err(_) => break None,
            },
            Some(answer) = actions.next(), if !actions.is_empty() => {
                if tx.send(Ok(answer)).await.is_err() {
                    break None;
                }
            }
            _ = drained.cancelled() => break Some(Status::unavailable("server is shutting down")),
            _ = tx.closed() => break None,
        }
    };
    if let Some(p) = pusher {
        p.abort();
    }
    if let Some(status) = end {
        let _ = tx.send(Err(status)).await;
    }
}

fn keep_alive() -> pb::WorkResponse {
    pb::WorkResponse {
        event: Some(pb::work_response::Event::KeepAlive(pb::KeepAlive {})),
    }
}

/// The pusher: while credits remain, long-polls the broker and pushes each
/// job it gets. Ends when the stream closes or shutdown begins (the reader
/// still takes results until the drain is over).
async fn push(broker: Broker, queues: Vec<Queue>, credits: Arc<Credits>, tx: Outbox) {
    loop {
        while credits.left.load(Ordering::Acquire) == 0 {
            tokio::select! {
                _ = credits.granted.notified() => {}
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if tx.send(Ok(keep_alive())).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                _ = credits.drain.cancelled() => return,
            }
        }
        let poll = PollRequest {
            queues: queues.clone(),
            wait: KEEPALIVE,
        };
        let got = tokio::select! {
            r = broker.poll(poll) => r,
            _ = tx.closed() => return,
            // Dropping a poll is safe: a job claimed at that instant comes
            // back when its lease runs out.
            _ = credits.drain.cancelled() => return,
        };
        let mut handed = None;
        let msg = match got {
            Ok(Some(job)) => {
                credits.left.fetch_sub(1, Ordering::AcqRel);
                handed = job.lease_id.map(|l| (job.id, l));
                pb::WorkResponse {
                    event: Some(pb::work_response::Event::Job(convert::handout(
                        &job,
                        broker.config().lease,
                    ))),
                }
            }
            Ok(None) => keep_alive(),
            Err(broker::Error::ShuttingDown(_)) => return,
            Err(e) => {
                tracing::warn!(error = %e, "Work stream: poll failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER_ERROR) => continue,
                    _ = tx.closed() => return,
                }
            }
        };
        if tx.send(Ok(msg)).await.is_err() {
            // The stream closed before the job was queued for the worker:
            // it never reached one, so it is handed back at once. (A job
            // already queued when the stream drops stays leased until its
            // lease runs out: its worker may have it.)
            if let Some((id, lease)) = handed {
                let _ = broker.release(id, lease).await;
            }
            return;
        }
    }
}

/// Runs one action and renders its answer.
async fn act(broker: Broker, seq: u64, action: pb::work_request::Action) -> pb::WorkResponse {
    use pb::work_request::Action;
    let mut progress_seq = 0;
    let (job_id, done): (String, broker::Result<Job>) = match action {
        Action::Complete(r) => (
            r.job_id.clone(),
            async { broker.complete(convert::complete(r)?).await }.await,
        ),
        Action::Fail(r) => (
            r.job_id.clone(),
            async { broker.fail(convert::fail(r)?).await }.await,
        ),
        Action::Heartbeat(r) => {
            let done = async { broker.heartbeat(convert::heartbeat(&r)?).await }.await;
            (r.job_id, done)
        }
        Action::Progress(r) => (
            r.job_id.clone(),
            async {
                let (job, seq) = broker.progress(convert::progress(r)?).await?;
                progress_seq = seq;
                Ok(job)
            }
            .await,
        ),
    };
    let event = match done {
        Ok(job) => pb::work_response::Event::Ack(pb::WorkAck {
            seq,
            job_id,
            status: job.status.as_str().to_owned(),
            // Set while running: the heartbeat's new lease end.
            lease_expires_at: job
                .lease_expires_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            progress_seq,
        }),
        Err(e) => {
            let status = Status::from(e);
            pb::work_response::Event::Error(pb::WorkError {
                seq,
                job_id,
                code: status.code() as i32,
                message: status.message().to_owned(),
                job_status: status
                    .metadata()
                    .get(JOB_STATUS_TRAILER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            })
        }
    };
    pb::WorkResponse { event: Some(event) }
}
