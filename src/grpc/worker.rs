//! A worker on the gRPC `Work` stream (docs/grpc.md): the counterpart of
//! [`crate::client::Worker::run`] with the same handler, for
//! `jobq worker --grpc`. Client side only: it uses the generated messages,
//! never the server's modules.
//!
//! One stream carries everything: the worker grants as many credits as it
//! has free slots, the server pushes jobs, and each job's heartbeats and
//! outcome go back on the stream (its final message also returns the slot's
//! credit). If the stream breaks, the worker reconnects with backoff; jobs
//! in hand keep running, and their heartbeats and outcomes go over the
//! unary RPCs until they are done (their leases still hold: the server never
//! gives a job away while its lease holds).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use crate::client::{
    finish_jobs_in_hand, heartbeat_interval, progress_channel, run_handler, Backoff, Job, NotSent,
    Outcome, ProgressSink, ProgressTarget, RunOptions, BACKOFF_MAX, POST_RETRY_WINDOW,
};
use crate::grpc::pb;
use crate::grpc::pb::work_response::Event;
use crate::grpc::pb::worker_service_client::WorkerServiceClient;

/// How long one call (on the stream or unary) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What can stop a stream worker.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The URL is not usable.
    #[error("bad gRPC URL {url:?}: {message}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why.
        message: String,
    },
    /// The server refused the stream for a reason waiting will not fix
    /// (a bad queue name, a missing or wrong token).
    #[error("the server refused the Work stream: {0}")]
    Refused(tonic::Status),
}

/// Whether a status means "the server is away; try again".
fn is_transient(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

/// Takes jobs over one `Work` stream at a time.
#[derive(Debug, Clone)]
pub struct StreamWorker {
    /// `http://host:port` of the server's `--grpc-listen`.
    url: String,
    /// Queues in order of preference (empty: `default`).
    queues: Vec<String>,
    /// Sent as `authorization: Bearer <token>` metadata.
    token: Option<String>,
    /// PEM certificate(s) to trust for `https://` instead of the public roots.
    ca_pem: Option<Vec<u8>>,
}

/// The current stream's sending half and the answers it waits for.
struct Link {
    /// Requests to the server.
    tx: mpsc::Sender<pb::WorkRequest>,
    /// Calls waiting for their ack or error, by `seq`.
    waiting: HashMap<u64, oneshot::Sender<Event>>,
    /// Which stream this is (credits belong to one stream).
    generation: u64,
}

/// What the job tasks share with the stream loop.
struct Shared {
    client: WorkerServiceClient<Channel>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// The open stream, if any.
    link: Mutex<Option<Link>>,
    seq: AtomicU64,
}

impl Shared {
    /// A request with the token, and no deadline (the stream lives long).
    fn stream_request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    /// A unary request with the token and [`CALL_TIMEOUT`].
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = self.stream_request(msg);
        r.set_timeout(CALL_TIMEOUT);
        r
    }

    /// Sends `action` on the stream (granting `credit` with it) and waits
    /// for its answer, which comes back with the stream's generation.
    /// `Err`: no stream, or it broke before answering; with the generation
    /// when the message (and its credit) went out all the same.
    async fn on_stream(
        &self,
        action: pb::work_request::Action,
        credit: bool,
    ) -> Result<(Event, u64), Option<u64>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (answer_tx, answer_rx) = oneshot::channel();
        let (tx, generation) = {
            let mut link = self.link.lock();
            let link = link.as_mut().ok_or(None)?;
            link.waiting.insert(seq, answer_tx);
            (link.tx.clone(), link.generation)
        };
        let msg = pb::WorkRequest {
            seq,
            credits: u32::from(credit),
            action: Some(action),
            ..Default::default()
        };
        tx.send(msg).await.map_err(|_| None)?;
        match tokio::time::timeout(CALL_TIMEOUT, answer_rx).await {
            Ok(Ok(e)) => Ok((e, generation)),
            _ => Err(credit.then_some(generation)),
        }
    }

    /// A unary call's answer as a stream event.
    fn unary_answer<T>(
        r: Result<tonic::Response<T>, tonic::Status>,
        ok: impl FnOnce(T) -> pb::WorkAck,
        job_id: &str,
    ) -> Result<Event, tonic::Status> {
        match r {
            Ok(resp) => Ok(Event::Ack(ok(resp.into_inner()))),
            Err(s) if is_transient(&s) => Err(s),
            Err(s) => Ok(Event::Error(pb::WorkError {
                job_id: job_id.to_owned(),
                code: s.code() as i32,
                message: s.message().to_owned(),
                ..Default::default()
            })),
        }
    }

    /// The same action as a unary RPC (the stream is gone).
    async fn unary(&self, action: &pb::work_request::Action) -> Result<Event, tonic::Status> {
        use pb::work_request::Action;
        let mut c = self.client.clone();
        match action {
            Action::Complete(r) => Self::unary_answer(
                c.complete_job(self.request(r.clone())).await,
                |_| ack("completed"),
                &r.job_id,
            ),
            Action::Fail(r) => Self::unary_answer(
                c.fail_job(self.request(r.clone())).await,
                |f| ack(f.status),
                &r.job_id,
            ),
            Action::Heartbeat(r) => Self::unary_answer(
                c.heartbeat(self.request(r.clone())).await,
                |h| pb::WorkAck {
                    lease_expires_at: h.lease_expires_at,
                    ..ack("running")
                },
                &r.job_id,
            ),
            Action::Progress(r) => Self::unary_answer(
                c.progress(self.request(r.clone())).await,
                |p| pb::WorkAck {
                    lease_expires_at: p.lease_expires_at,
                    progress_seq: p.seq,
                    ..ack("running")
                },
                &r.job_id,
            ),
        }
    }

    /// Runs `action` on the stream, or unary when there is none. Returns
    /// the answer and the generation of the stream that got the credit, if any.
    async fn call(
        &self,
        action: pb::work_request::Action,
        credit: bool,
    ) -> Result<(Event, Option<u64>), tonic::Status> {
        let sent = match self.on_stream(action.clone(), credit).await {
            Ok((e, generation)) => return Ok((e, credit.then_some(generation))),
            Err(sent) => sent,
        };
        self.unary(&action).await.map(|e| (e, sent))
    }
}

/// An ack of a unary answer, as the stream would have sent it: `status`,
/// nothing else set.
fn ack(status: impl Into<String>) -> pb::WorkAck {
    pb::WorkAck {
        status: status.into(),
        ..Default::default()
    }
}

/// A job task's end: whether its slot's credit was returned, and to which stream.
struct Done {
    credited: Option<u64>,
}

impl StreamWorker {
    /// A worker for the gRPC server at `url` (e.g. `http://127.0.0.1:50051`,
    /// or `https://` when the server has `--tls-cert`).
    pub fn new(url: &str, queues: Vec<String>, token: Option<String>) -> Self {
        StreamWorker {
            url: url.trim().trim_end_matches('/').to_owned(),
            queues,
            token,
            ca_pem: None,
        }
    }

    /// Trusts only the PEM certificate(s) in `pem` for an `https://` URL (a
    /// private CA, or the server's self-signed certificate) instead of the
    /// built-in public roots.
    pub fn ca_cert_pem(mut self, pem: &[u8]) -> Self {
        self.ca_pem = Some(pem.to_vec());
        self
    }

    /// The endpoint (TLS for `https://`, checked now rather than at each
    /// connect) and the token, as every call of this worker uses them.
    fn connection(&self) -> Result<Arc<Shared>, StreamError> {
        let bad = |message: String| StreamError::BadUrl {
            url: self.url.clone(),
            message,
        };
        let mut endpoint =
            Endpoint::from_shared(self.url.clone()).map_err(|e| bad(e.to_string()))?;
        match endpoint.uri().scheme_str() {
            Some("http") => {}
            Some("https") => {
                let tls = match &self.ca_pem {
                    Some(pem) => {
                        use rustls::pki_types::{pem::PemObject, CertificateDer};
                        // tonic would only find out at each connect, as a transient error.
                        if !CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok()) {
                            return Err(bad("the CA file holds no PEM certificate".into()));
                        }
                        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                    }
                    None => ClientTlsConfig::new().with_webpki_roots(),
                };
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| bad(format!("TLS: {e}")))?;
            }
            _ => return Err(bad("expected http:// or https://".into())),
        }
        let token = match &self.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| bad("the token is not a valid metadata value".into()))?,
            ),
            None => None,
        };
        Ok(Arc::new(Shared {
            client: WorkerServiceClient::new(
                endpoint
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(5))
                    .connect_lazy(),
            ),
            token,
            link: Mutex::new(None),
            seq: AtomicU64::new(0),
        }))
    }

    /// Runs `handler` on every job until `stop` is cancelled, then tells
    /// the server to push no more (`drain`), lets the jobs in hand finish,
    /// posts their outcomes, and returns. Semantics as [`crate::client::Worker::run`].
    ///
    /// # Errors
    /// [`StreamError::BadUrl`]; [`StreamError::Refused`] when the server
    /// refuses the stream for a reason waiting will not fix.
    pub async fn run<H, F>(
        self,
        opts: RunOptions,
        stop: CancellationToken,
        handler: H,
    ) -> Result<(), StreamError>
    where
        H: Fn(Job, CancellationToken) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        let shared = self.connection()?;
        let handler = Arc::new(handler);
        let concurrency = opts.concurrency.max(1);
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut generation = 0u64;
        let mut backoff = Backoff::new();
        let mut away = false;
        let mut result = Ok(());
        'connect: while !stop.is_cancelled() {
            generation += 1;
            let (tx, rx) = mpsc::channel(256);
            let first = pb::WorkRequest {
                queues: self.queues.clone(),
                credits: (concurrency - tasks.len()) as u32,
                ..Default::default()
            };
            let _ = tx.send(first).await;
            let mut client = shared.client.clone();
            let requests = shared.stream_request(tokio_stream::wrappers::ReceiverStream::new(rx));
            let opened = tokio::select! {
                r = client.work(requests) => r,
                _ = stop.cancelled() => break 'connect,
            };
            let mut inbound = match opened {
                Ok(r) => r.into_inner(),
                Err(s) if is_transient(&s) => {
                    if !away {
                        tracing::warn!(url = %self.url, error = %s.message(), "server is away; reconnecting with backoff (up to {}s between tries)", BACKOFF_MAX.as_secs());
                        away = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_pause()) => {}
                        _ = stop.cancelled() => break 'connect,
                    }
                    continue;
                }
                Err(s) => {
                    tracing::error!(error = %s.message(), "the server refuses the Work stream; stopping");
                    result = Err(StreamError::Refused(s));
                    break;
                }
            };
            if away {
                tracing::info!(url = %self.url, "server is back");
                away = false;
            }
            backoff = Backoff::new();
            *shared.link.lock() = Some(Link {
                tx: tx.clone(),
                waiting: HashMap::new(),
                generation,
            });
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled(), if !draining => {
                        draining = true;
                        let _ = tx.send(pb::WorkRequest { drain: true, ..Default::default() }).await;
                        if tasks.is_empty() {
                            break 'connect;
                        }
                    }
                    m = inbound.message() => match m {
                        Ok(Some(pb::WorkResponse { event: Some(event) })) => {
                            dispatch(event, &shared, &handler, &mut tasks, &stop);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(s) => {
                            tracing::warn!(error = %s.message(), "Work stream broke; reconnecting");
                            break;
                        }
                    },
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                        match done {
                            Ok(Done { credited }) if credited != Some(generation) && !draining => {
                                let _ = tx.send(pb::WorkRequest { credits: 1, ..Default::default() }).await;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "a job task panicked");
                                if !draining {
                                    let _ = tx.send(pb::WorkRequest { credits: 1, ..Default::default() }).await;
                                }
                            }
                        }
                        if draining && tasks.is_empty() {
                            break 'connect;
                        }
                    }
                }
            }
            // The stream ended: calls waiting on it fall back to the unary RPCs.
            *shared.link.lock() = None;
        }
        // Closing our side ends the stream cleanly.
        *shared.link.lock() = None;
        finish_jobs_in_hand(&mut tasks).await;
        result
    }
}

/// One event of the stream: a job starts a task running `handler`; an ack
/// or a refusal goes to the call waiting for it.
fn dispatch<H, F>(
    event: Event,
    shared: &Arc<Shared>,
    handler: &Arc<H>,
    tasks: &mut JoinSet<Done>,
    stop: &CancellationToken,
) where
    H: Fn(Job, CancellationToken) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    match event {
        Event::Job(j) => {
            let (shared, handler, stop) = (shared.clone(), handler.clone(), stop.clone());
            tasks.spawn(async move { handle(shared, to_job(j), &*handler, stop).await });
        }
        Event::Ack(pb::WorkAck { seq, .. }) | Event::Error(pb::WorkError { seq, .. }) => {
            let waiter = shared
                .link
                .lock()
                .as_mut()
                .and_then(|l| l.waiting.remove(&seq));
            if let Some(w) = waiter {
                let _ = w.send(event);
            }
        }
        Event::KeepAlive(_) => {}
    }
}

/// A pushed `Job` as the handler's [`Job`].
fn to_job(j: pb::Job) -> Job {
    let payload = if j.payload_bytes.is_empty() {
        Bytes::from(j.payload)
    } else {
        j.payload_bytes
    };
    let mut headers = serde_json::Map::new();
    for (k, v) in j.headers {
        if k != super::convert::PAYLOAD_ENCODING_HEADER {
            headers.insert(k, serde_json::Value::String(v));
        }
    }
    let lease_left = (j.lease_ms > 0).then(|| Duration::from_millis(j.lease_ms));
    Job {
        id: j.id,
        payload,
        headers,
        queue: j.queue,
        attempt: j.attempt,
        lease_id: j.lease_id,
        lease_expires_at: humantime::parse_rfc3339(&j.lease_expires_at).ok(),
        lease_left,
        progress: ProgressSink::default(),
    }
}

/// Heartbeats `job` every third of its lease until the server says it is no
/// longer ours.
async fn keep_alive(shared: &Shared, job: &Job) {
    let every = heartbeat_interval(job.lease_left);
    let mut next = every;
    loop {
        tokio::time::sleep(next).await;
        let beat = pb::work_request::Action::Heartbeat(pb::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_id: job.lease_id.clone(),
        });
        match shared.call(beat, false).await {
            Ok((Event::Ack(_), _)) => next = every,
            Ok((Event::Error(e), _)) if e.code != Code::Unavailable as i32 => {
                tracing::warn!(job.id = %job.id, error = %e.message, "job is no longer ours; stopping it");
                return;
            }
            _ => next = every.min(Duration::from_secs(1)),
        }
    }
}

/// Runs one job: the handler beside its heartbeats, then posts the outcome
/// (returning the slot's credit with it).
async fn handle<H, F>(shared: Arc<Shared>, job: Job, handler: &H, stop: CancellationToken) -> Done
where
    H: Fn(Job, CancellationToken) -> F,
    F: Future<Output = Outcome>,
{
    let lost = CancellationToken::new();
    // Each event waits for its ack before the next goes: they stay in order.
    let progress = progress_channel(ProgressTarget {
        job_id: job.id.clone(),
        lost: lost.clone(),
        ctx: (shared.clone(), job.clone()),
        send: |(shared, job): (Arc<Shared>, Job), data| async move {
            let action = pb::work_request::Action::Progress(pb::ProgressRequest {
                job_id: job.id.clone(),
                lease_id: job.lease_id.clone(),
                data,
            });
            match shared.call(action, false).await {
                Ok((Event::Error(e), _))
                    if e.code == Code::FailedPrecondition as i32
                        || e.code == Code::NotFound as i32 =>
                {
                    Err(NotSent::Lost(e.message))
                }
                Ok((Event::Error(e), _)) => Err(NotSent::Failed(e.message)),
                Ok(_) => Ok(()),
                Err(s) => Err(NotSent::Failed(s.message().to_owned())),
            }
        },
    });
    let heartbeats = keep_alive(&shared, &job);
    let Some(outcome) = run_handler(handler, &job, progress, &lost, heartbeats).await else {
        return Done { credited: None };
    };
    let action = match outcome {
        Outcome::Complete(result) => {
            let (payload, result) = match String::from_utf8(result.to_vec()) {
                Ok(s) => (s, Bytes::new()),
                Err(_) => (String::new(), result),
            };
            pb::work_request::Action::Complete(pb::JobResult {
                job_id: job.id.clone(),
                payload,
                lease_id: job.lease_id.clone(),
                result,
            })
        }
        Outcome::Fail { error, retry } => pb::work_request::Action::Fail(pb::FailRequest {
            job_id: job.id.clone(),
            lease_id: job.lease_id.clone(),
            error,
            retry: Some(retry),
        }),
    };
    let deadline = Instant::now() + POST_RETRY_WINDOW;
    let mut backoff = Backoff::new();
    loop {
        match shared.call(action.clone(), !stop.is_cancelled()).await {
            Ok((Event::Error(e), credited)) => {
                tracing::warn!(job.id = %job.id, error = %e.message, "could not post the job's outcome");
                return Done { credited };
            }
            Ok((_, credited)) => return Done { credited },
            Err(s) if Instant::now() < deadline => {
                tracing::debug!(job.id = %job.id, error = %s.message(), "server away; retrying the outcome");
                tokio::time::sleep(backoff.next_pause()).await;
            }
            Err(s) => {
                tracing::warn!(job.id = %job.id, error = %s.message(), "could not post the job's outcome");
                return Done { credited: None };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn pushed_job_becomes_a_handler_job() {
        let j = to_job(pb::Job {
            id: "id".into(),
            payload: "//4=".into(),
            headers: [
                ("x-a".to_owned(), "b".to_owned()),
                ("x-jobq-payload-encoding".to_owned(), "base64".to_owned()),
            ]
            .into(),
            payload_bytes: Bytes::from_static(&[0xff, 0xfe]),
            lease_ms: 3000,
            lease_expires_at: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        });
        assert_eq!(&j.payload[..], &[0xff, 0xfe]);
        assert_eq!(j.headers.len(), 1);
        assert_eq!(j.lease_left, Some(Duration::from_secs(3)));
        assert_eq!(heartbeat_interval(j.lease_left), Duration::from_secs(1));
        assert!(j
            .lease_expires_at
            .is_some_and(|t| t > SystemTime::UNIX_EPOCH));
    }
}
