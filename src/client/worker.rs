//! The worker side of the API: poll, complete, fail, heartbeat, and the
//! [`Worker::run`] loop that ties them together (concurrency, heartbeats
//! every third of the lease, backoff while the server is away, graceful stop).
//!
//! Every call about a job sends its `X-Lease-Id`, so a worker whose lease
//! was lost can never overwrite another worker's result.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{decode_payload, json, parse_time, refusal, Client, Error, Result};

/// Long-poll wait of [`Worker::poll`] unless [`Worker::long_poll`] says otherwise.
pub const LONG_POLL_DEFAULT: Duration = Duration::from_secs(30);

/// Heartbeat interval when the server did not say when the lease expires.
const HEARTBEAT_FALLBACK: Duration = Duration::from_secs(10);

/// How long one complete, fail or heartbeat call may take.
const JOB_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one heartbeat call may take before the next is tried.
const HEARTBEAT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Shortest heartbeat interval (a very short lease must not spin).
const HEARTBEAT_MIN: Duration = Duration::from_millis(50);

/// First and longest pause between attempts while the server is away.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a finished job's result is retried while the server is away.
pub(crate) const POST_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// Extra time a long-poll request gets beyond its wait before it is given up.
const POLL_SLACK: Duration = Duration::from_secs(30);

/// A job handed to this worker.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's id.
    pub id: String,
    /// The submitted payload, as bytes.
    pub payload: Bytes,
    /// The submit request's headers (names lower-cased, credentials removed).
    pub headers: serde_json::Map<String, serde_json::Value>,
    /// The queue it came from.
    pub queue: String,
    /// Which hand-out this is (1 for the first).
    pub attempt: u32,
    /// The fencing token of this hand-out; sent as `X-Lease-Id`.
    pub lease_id: String,
    /// When the lease runs out unless heartbeated (by the server's clock).
    pub lease_expires_at: Option<SystemTime>,
    /// What was left of the lease when the job was handed out, by the
    /// server's clock (so heartbeats do not depend on this machine's clock).
    pub lease_left: Option<Duration>,
    /// Sends progress events to the job's streaming clients, in order,
    /// while a handler run by [`Worker::run`] (or the gRPC worker) works on
    /// it; a no-op elsewhere.
    pub progress: ProgressSink,
}

/// A running job's progress events, sent in order beside its handler
/// (docs/api.md, "Progress events"). Sending never blocks: events queue
/// and go out one at a time; all are sent before the job's outcome.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<mpsc::UnboundedSender<Bytes>>);

impl ProgressSink {
    /// Queues one event. Returns false when nothing sends events for this
    /// job (no runner, or the job was lost).
    pub fn send(&self, data: impl Into<Bytes>) -> bool {
        self.0
            .as_ref()
            .is_some_and(|tx| tx.send(data.into()).is_ok())
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ProgressSink"
        } else {
            "ProgressSink(none)"
        })
    }
}

/// Why a job's progress event did not go out.
pub(crate) enum NotSent {
    /// The job is no longer this worker's (a stale lease, an unknown job).
    Lost(String),
    /// Any other failure: the event is skipped and the job goes on.
    Failed(String),
}

/// The job a sink's events belong to, and how they are sent: `send(ctx,
/// event)`, for the HTTP and the gRPC worker alike.
pub(crate) struct ProgressTarget<C, S> {
    /// The job's id, for the log.
    pub job_id: String,
    /// Cancelled when the job turns out to be no longer ours: its handler
    /// is stopped.
    pub lost: CancellationToken,
    /// What `send` needs besides the event (a client, the job).
    pub ctx: C,
    /// Sends one event.
    pub send: S,
}

/// Runs a job's progress events through `to.send`, one at a time and in
/// order, until the sink is gone or `finish` is cancelled (then what is
/// queued still goes), or the job is lost.
async fn forward_progress<C, S, F>(
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    finish: CancellationToken,
    to: ProgressTarget<C, S>,
) where
    C: Clone,
    S: Fn(C, Bytes) -> F,
    F: Future<Output = std::result::Result<(), NotSent>>,
{
    loop {
        let next = tokio::select! {
            biased;
            d = rx.recv() => d,
            _ = finish.cancelled() => rx.try_recv().ok(),
        };
        let Some(d) = next else { return };
        match (to.send)(to.ctx.clone(), d).await {
            Ok(()) => {}
            Err(NotSent::Lost(e)) => {
                tracing::warn!(job.id = %to.job_id, error = %e, "job is no longer ours; stopping it");
                to.lost.cancel();
                return;
            }
            Err(NotSent::Failed(e)) => {
                tracing::debug!(job.id = %to.job_id, error = %e, "progress event not sent");
            }
        }
    }
}

/// A sink for a job and the forwarder task that sends its events to `to`;
/// cancel the token once the handler is done, then await the task.
pub(crate) fn progress_channel<C, S, F>(
    to: ProgressTarget<C, S>,
) -> (ProgressSink, CancellationToken, tokio::task::JoinHandle<()>)
where
    C: Clone + Send + 'static,
    S: Fn(C, Bytes) -> F + Send + 'static,
    F: Future<Output = std::result::Result<(), NotSent>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let finish = CancellationToken::new();
    let task = tokio::spawn(forward_progress(rx, finish.clone(), to));
    (ProgressSink(Some(tx)), finish, task)
}

/// How long a finished job's queued progress events may take to go out
/// before its outcome is posted anyway.
const PROGRESS_DRAIN: Duration = Duration::from_secs(10);

/// At shutdown: waits for the jobs still running, logging any that panicked.
pub(crate) async fn finish_jobs_in_hand<T: 'static>(tasks: &mut JoinSet<T>) {
    if !tasks.is_empty() {
        tracing::info!(jobs = tasks.len(), "stopping: finishing the jobs in hand");
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a job task panicked");
        }
    }
}

/// Runs `handler` on `job`, its events going to `progress` (from
/// [`progress_channel`]), beside `keep_alive`, which returns only once the
/// job is lost (then `lost` is cancelled and the handler left to finish);
/// then lets the queued events go out. `None` if the job was lost: there
/// is no outcome to post. Shared by the HTTP and the gRPC worker.
pub(crate) async fn run_handler<H, F>(
    handler: &H,
    job: &Job,
    progress: (ProgressSink, CancellationToken, tokio::task::JoinHandle<()>),
    lost: &CancellationToken,
    keep_alive: impl Future<Output = ()>,
) -> Option<Outcome>
where
    H: Fn(Job, CancellationToken) -> F,
    F: Future<Output = Outcome>,
{
    let (sink, finish, forwarder) = progress;
    let work = handler(
        Job {
            progress: sink,
            ..job.clone()
        },
        lost.clone(),
    );
    tokio::pin!(work);
    // The heartbeats run beside the handler, never blocking it.
    let outcome = tokio::select! {
        o = &mut work => o,
        () = keep_alive => {
            lost.cancel();
            (&mut work).await
        }
    };
    // Every event goes out before the outcome.
    finish.cancel();
    let _ = tokio::time::timeout(PROGRESS_DRAIN, forwarder).await;
    if lost.is_cancelled() {
        return None;
    }
    Some(outcome)
}

/// How often to heartbeat: a third of what is left of the lease, at least
/// [`HEARTBEAT_MIN`]; [`HEARTBEAT_FALLBACK`] when unknown. The gRPC worker
/// uses it too, as it does [`Backoff`] and [`POST_RETRY_WINDOW`]: both
/// transports keep the same timings.
pub(crate) fn heartbeat_interval(lease_left: Option<Duration>) -> Duration {
    match lease_left {
        Some(left) => (left / 3).max(HEARTBEAT_MIN),
        None => HEARTBEAT_FALLBACK,
    }
}

/// Time left until `expires`, measured by the server's clock: its `Date`
/// header (whole seconds, so half a second is taken off), or this machine's
/// clock when the server sent no date.
fn lease_left(expires: Option<SystemTime>, server_date: Option<SystemTime>) -> Option<Duration> {
    let expires = expires?;
    Some(match server_date {
        Some(now) => expires
            .duration_since(now)
            .unwrap_or_default()
            .saturating_sub(Duration::from_millis(500)),
        None => expires
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    })
}

/// The answer's `Date` header.
fn server_date(resp: &reqwest::Response) -> Option<SystemTime> {
    let v = resp.headers().get(reqwest::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok()
}

/// A poll's `200` answer, as the server sends it (fields as in docs/api.md).
#[derive(Deserialize)]
struct Handout {
    job_id: String,
    payload: Box<RawValue>,
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_expires_at: Option<String>,
}

/// A batch poll's answer.
#[derive(Deserialize)]
struct Batch {
    jobs: Vec<Handout>,
}

/// Which shape a poll-shaped answer has: one job (it has a payload), a
/// batch (`jobs`), or (from a server that ignores `next`) a plain
/// complete's or fail's answer, which hands out nothing. (Not an untagged
/// enum: serde cannot buffer the raw payload values through one.)
#[derive(Deserialize)]
struct Shape<'a> {
    #[serde(borrow, default)]
    jobs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// The jobs of a poll-shaped answer (`204`: none).
async fn handouts(resp: reqwest::Response) -> Result<Vec<Job>> {
    if resp.status() == StatusCode::NO_CONTENT {
        return Ok(Vec::new());
    }
    let date = server_date(&resp);
    let body: Box<RawValue> = json(resp).await?;
    let malformed = |e: serde_json::Error| Error::Protocol(format!("malformed hand-out: {e}"));
    let shape: Shape<'_> = serde_json::from_str(body.get()).map_err(malformed)?;
    let hs: Vec<Handout> = match (shape.jobs, shape.payload) {
        (Some(_), _) => {
            serde_json::from_str::<Batch>(body.get())
                .map_err(malformed)?
                .jobs
        }
        (None, Some(_)) => vec![serde_json::from_str(body.get()).map_err(malformed)?],
        (None, None) => Vec::new(),
    };
    hs.into_iter()
        .map(|h| {
            let expires = h.lease_expires_at.as_deref().and_then(parse_time);
            Ok(Job {
                payload: decode_payload(&h.payload, h.payload_encoding.as_deref())?,
                id: h.job_id,
                headers: h.headers,
                queue: h.queue,
                attempt: h.attempt,
                lease_id: h.lease_id,
                lease_expires_at: expires,
                progress: ProgressSink::default(),
                lease_left: lease_left(expires, date),
            })
        })
        .collect()
}

/// What a handler made of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Post this result (`complete`).
    Complete(Bytes),
    /// Post a failure (`fail`); `retry: false` fails the job for good.
    Fail {
        /// The error the waiting client will see if this was the last attempt.
        error: String,
        /// Whether the job may be handed out again.
        retry: bool,
    },
}

/// Options of [`Worker::run`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Jobs handled at once (at least 1).
    pub concurrency: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { concurrency: 1 }
    }
}

/// Exponential backoff between [`BACKOFF_FIRST`] and [`BACKOFF_MAX`].
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(BACKOFF_FIRST)
    }
    pub(crate) fn next_pause(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
}

/// Takes jobs from one server's queues. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The server.
    client: Client,
    /// `?queue=a,b` (empty: the server's `default` queue).
    queues: Vec<String>,
    /// `?wait=N` of each poll.
    wait: Duration,
}

impl Worker {
    pub(super) fn new(client: Client, queues: Vec<String>) -> Self {
        Worker {
            client,
            queues,
            wait: LONG_POLL_DEFAULT,
        }
    }

    /// Sets how long one poll may wait for a job (0 = answer at once).
    pub fn long_poll(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Asks for a job, waiting up to the long-poll time (`GET /api/worker/poll`).
    /// `None`: no job came.
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Rejected`] (`503` while the server
    /// shuts down; see [`Error::is_transient`]).
    pub async fn poll(&self) -> Result<Option<Job>> {
        Ok(self.poll_many(None).await?.into_iter().next())
    }

    /// A batch poll (`GET /api/worker/poll?max=N`): up to `max` jobs, the
    /// first waited for as [`Worker::poll`] does. `None` asks for one job
    /// with a plain poll.
    ///
    /// # Errors
    /// As [`Worker::poll`].
    pub async fn poll_many(&self, max: Option<usize>) -> Result<Vec<Job>> {
        let c = &self.client;
        let mut q = self.next_query();
        if let Some(max) = max {
            q.push(("max", max.to_string()));
        }
        let req = c
            .http
            .get(c.url("/api/worker/poll"))
            .query(&q)
            .timeout(self.wait + POLL_SLACK);
        let resp = c.send(req).await?;
        match resp.status() {
            StatusCode::OK | StatusCode::NO_CONTENT => handouts(resp).await,
            _ => Err(refusal(resp).await),
        }
    }

    /// The poll part of a poll or a complete-and-take-next.
    fn next_query(&self) -> Vec<(&'static str, String)> {
        let mut q: Vec<(&str, String)> = vec![("wait", self.wait.as_secs_f64().to_string())];
        if !self.queues.is_empty() {
            q.push(("queue", self.queues.join(",")));
        }
        q
    }

    fn job_call(&self, what: &str, job: &Job) -> reqwest::RequestBuilder {
        let c = &self.client;
        let mut req = c
            .http
            .post(c.url(&format!("/api/worker/{what}/{}", job.id)))
            .timeout(JOB_CALL_TIMEOUT);
        if !job.lease_id.is_empty() {
            req = req.header("x-lease-id", &job.lease_id);
        }
        req
    }

    /// Maps a worker call's refusal: `409` means the job is not ours any more.
    async fn job_refusal(job: &Job, resp: reqwest::Response) -> Error {
        if resp.status() == StatusCode::CONFLICT {
            return Error::LeaseLost {
                job_id: job.id.clone(),
            };
        }
        refusal(resp).await
    }

    /// Posts the job's outcome and asks for the next job on the same request
    /// (`?next=1`, answered at once: `wait=0`). `None`: no job was pending.
    ///
    /// # Errors
    /// As [`Worker::complete`]; on an error no job was taken.
    pub async fn post_and_next(&self, job: &Job, outcome: &Outcome) -> Result<Option<Job>> {
        let mut q = self.next_query();
        q[0].1 = "0".into();
        q.push(("next", "1".into()));
        let req = match outcome {
            Outcome::Complete(result) => self.job_call("complete", job).body(result.clone()),
            Outcome::Fail { error, retry } => self
                .job_call("fail", job)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::json!({ "error": error, "retry": retry }).to_string()),
        };
        let resp = self.client.send(req.query(&q)).await?;
        match resp.status() {
            StatusCode::OK | StatusCode::NO_CONTENT => Ok(handouts(resp).await?.into_iter().next()),
            _ => Err(Self::job_refusal(job, resp).await),
        }
    }

    /// Posts the job's result (`POST /api/worker/complete/{id}`).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] (cancelled, or the lease went to another worker),
    /// [`Error::Rejected`] (`404`: the server forgot the job), [`Error::Unreachable`].
    pub async fn complete(&self, job: &Job, result: impl Into<Bytes>) -> Result<()> {
        let resp = self
            .client
            .send(self.job_call("complete", job).body(result.into()))
            .await?;
        if resp.status() == StatusCode::OK {
            Ok(())
        } else {
            Err(Self::job_refusal(job, resp).await)
        }
    }

    /// Reports a failure (`POST /api/worker/fail/{id}`). With `retry` the
    /// server hands the job out again while attempts remain.
    ///
    /// # Errors
    /// As [`Worker::complete`].
    pub async fn fail(&self, job: &Job, error: &str, retry: bool) -> Result<()> {
        let body = serde_json::json!({ "error": error, "retry": retry });
        let resp = self
            .client
            .send(
                self.job_call("fail", job)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string()),
            )
            .await?;
        if resp.status() == StatusCode::OK {
            Ok(())
        } else {
            Err(Self::job_refusal(job, resp).await)
        }
    }

    /// Sends one progress event (`POST /api/worker/progress/{id}`) to the
    /// job's streaming clients; it extends the lease like a heartbeat.
    /// Returns the event's number.
    ///
    /// # Errors
    /// [`Error::LeaseLost`]: stop working on the job; [`Error::Rejected`]
    /// with `413` for an event over the server's limit. Others as
    /// [`Worker::complete`].
    pub async fn progress(&self, job: &Job, data: impl Into<Bytes>) -> Result<u64> {
        let resp = self
            .client
            .send(self.job_call("progress", job).body(data.into()))
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(Self::job_refusal(job, resp).await);
        }
        #[derive(Deserialize)]
        struct Sent {
            seq: u64,
        }
        Ok(json::<Sent>(resp).await?.seq)
    }

    /// Extends the lease (`POST /api/worker/heartbeat/{id}`); returns what
    /// is now left of it (by the server's clock) when the server said.
    ///
    /// # Errors
    /// [`Error::LeaseLost`]: stop working on the job. Others as [`Worker::complete`].
    pub async fn heartbeat(&self, job: &Job) -> Result<Option<Duration>> {
        let resp = self.client.send(self.job_call("heartbeat", job)).await?;
        if resp.status() != StatusCode::OK {
            return Err(Self::job_refusal(job, resp).await);
        }
        let date = server_date(&resp);
        #[derive(Deserialize)]
        struct Beat {
            #[serde(default)]
            lease_expires_at: Option<String>,
        }
        let b: Beat = json(resp).await?;
        Ok(lease_left(
            b.lease_expires_at.as_deref().and_then(parse_time),
            date,
        ))
    }

    /// Runs `handler` on every job until `stop` is cancelled, then lets the
    /// jobs in hand finish, posts their outcomes, and returns.
    ///
    /// Up to `opts.concurrency` jobs run at once. While a job runs, its lease
    /// is heartbeated every third of the lease; if the server says the job is
    /// no longer ours (cancelled, lost), the token passed to the handler is
    /// cancelled: the handler should stop, and its outcome is discarded.
    /// While the server is away, polling backs off (100 ms doubling up to
    /// 5 s); that is logged once when it starts and once when it ends.
    ///
    /// # Errors
    /// The server refused to hand out jobs for a reason that waiting will not
    /// fix (e.g. `401`, `403`, a malformed queue name); jobs in hand are
    /// finished first.
    pub async fn run<H, F>(
        self,
        opts: RunOptions,
        stop: CancellationToken,
        handler: H,
    ) -> Result<()>
    where
        H: Fn(Job, CancellationToken) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let slots = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut backoff = Backoff::new();
        let mut away = false;
        let mut result = Ok(());
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a job task panicked");
                }
            }
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            // Every free slot is filled by one batch poll.
            let mut permits = vec![permit];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let max = (permits.len() > 1).then_some(permits.len());
            // Dropping a poll that is in flight is safe: the server hands
            // back a job it could not deliver (or its lease runs out).
            let polled = tokio::select! {
                biased;
                r = self.poll_many(max) => r,
                _ = stop.cancelled() => break,
            };
            match polled {
                Ok(jobs) => {
                    if away {
                        tracing::info!(url = %self.client.base, "server is back; polling again");
                        away = false;
                    }
                    backoff = Backoff::new();
                    for (job, permit) in jobs.into_iter().zip(permits) {
                        let (me, handler, stop) = (self.clone(), handler.clone(), stop.clone());
                        tasks.spawn(async move {
                            // While busy, each outcome takes the next job
                            // with it: one request per job.
                            let mut next = Some(job);
                            while let Some(job) = next {
                                next = me.handle(job, &*handler, &stop).await;
                            }
                            drop(permit);
                        });
                    }
                }
                Err(e) if e.is_transient() => {
                    if !away {
                        tracing::warn!(error = %e, "server is away; retrying with backoff (up to {}s between tries)", BACKOFF_MAX.as_secs());
                        away = true;
                    }
                    let pause = backoff.next_pause();
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the server refuses to hand out jobs; stopping");
                    result = Err(e);
                    break;
                }
            }
        }
        while tasks.try_join_next().is_some() {}
        finish_jobs_in_hand(&mut tasks).await;
        result
    }

    /// Heartbeats `job` every third of its lease until the server says it is
    /// no longer ours; returns then.
    async fn keep_alive(&self, job: &Job, span: &tracing::Span) {
        let mut next_beat = heartbeat_interval(job.lease_left);
        loop {
            tokio::time::sleep(next_beat).await;
            let beat = tokio::time::timeout(HEARTBEAT_CALL_TIMEOUT, self.heartbeat(job)).await;
            match beat {
                Ok(Ok(left)) => next_beat = heartbeat_interval(left),
                Ok(Err(e @ (Error::LeaseLost { .. } | Error::Rejected { status: 404, .. }))) => {
                    tracing::warn!(parent: span, error = %e, "job is no longer ours; stopping it");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(parent: span, error = %e, "heartbeat failed; trying again soon");
                    next_beat = next_beat.min(Duration::from_secs(1));
                }
                Err(_) => {
                    tracing::debug!(parent: span, "heartbeat timed out; trying again soon");
                    next_beat = next_beat.min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs one job: the handler alongside its heartbeats, then posts the
    /// outcome, taking the next job with it unless `stop` is cancelled.
    async fn handle<H, F>(&self, job: Job, handler: &H, stop: &CancellationToken) -> Option<Job>
    where
        H: Fn(Job, CancellationToken) -> F,
        F: Future<Output = Outcome>,
    {
        let span = tracing::info_span!("job", job.id = %job.id, attempt = job.attempt);
        tracing::debug!(parent: &span, "running");
        let lost = CancellationToken::new();
        let progress = progress_channel(ProgressTarget {
            job_id: job.id.clone(),
            lost: lost.clone(),
            ctx: (self.clone(), job.clone()),
            send: |(me, job): (Self, Job), data| async move {
                match me.progress(&job, data).await {
                    Ok(_) => Ok(()),
                    Err(e @ (Error::LeaseLost { .. } | Error::Rejected { status: 404, .. })) => {
                        Err(NotSent::Lost(e.to_string()))
                    }
                    Err(e) => Err(NotSent::Failed(e.to_string())),
                }
            },
        });
        let heartbeats = self.keep_alive(&job, &span);
        let mut outcome = run_handler(handler, &job, progress, &lost, heartbeats).await?;
        let deadline = Instant::now() + POST_RETRY_WINDOW;
        let mut backoff = Backoff::new();
        // Only the first try takes the next job: a retry may follow an
        // answer that was lost, job and all.
        let mut fused = !stop.is_cancelled();
        loop {
            let r = match (&outcome, fused) {
                (o, true) => self.post_and_next(&job, o).await,
                (Outcome::Complete(result), false) => {
                    self.complete(&job, result.clone()).await.map(|()| None)
                }
                (Outcome::Fail { error, retry }, false) => {
                    self.fail(&job, error, *retry).await.map(|()| None)
                }
            };
            fused = false;
            match r {
                Ok(next) => {
                    tracing::debug!(parent: &span, "outcome posted");
                    return next;
                }
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(backoff.next_pause()).await;
                }
                // A result over the server's --max-body: fail the job rather
                // than leave it running until its lease runs out.
                Err(Error::Rejected {
                    status: 413,
                    message,
                    ..
                }) if matches!(outcome, Outcome::Complete(_)) => {
                    tracing::warn!(parent: &span, "the result is too large for the server; failing the job");
                    outcome = Outcome::Fail {
                        error: format!("the worker's result was refused: {message}"),
                        retry: false,
                    };
                }
                Err(e) => {
                    tracing::warn!(parent: &span, error = %e, "could not post the job's outcome");
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_every_third_of_the_lease() {
        assert_eq!(
            heartbeat_interval(Some(Duration::from_secs(60))),
            Duration::from_secs(20)
        );
        assert_eq!(heartbeat_interval(Some(Duration::ZERO)), HEARTBEAT_MIN);
        assert_eq!(heartbeat_interval(None), HEARTBEAT_FALLBACK);
    }

    #[test]
    fn the_lease_is_measured_by_the_servers_clock() {
        let server_now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let expires = server_now + Duration::from_secs(60);
        // Whatever this machine's clock says, the server's date decides.
        assert_eq!(
            lease_left(Some(expires), Some(server_now)),
            Some(Duration::from_millis(59_500))
        );
        assert_eq!(
            lease_left(Some(server_now), Some(expires)),
            Some(Duration::ZERO)
        );
        assert_eq!(lease_left(None, Some(server_now)), None);
        let local = lease_left(Some(SystemTime::now() + Duration::from_secs(30)), None).unwrap();
        assert!(local > Duration::from_secs(29) && local <= Duration::from_secs(30));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new();
        let pauses: Vec<_> = (0..8).map(|_| b.next_pause()).collect();
        assert_eq!(pauses[0], BACKOFF_FIRST);
        assert_eq!(pauses[1], BACKOFF_FIRST * 2);
        assert_eq!(*pauses.last().unwrap(), BACKOFF_MAX);
    }
}
