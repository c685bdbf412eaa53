//! The broker: the only API for a job's lifecycle. It makes every decision
//! about a job (ids, timestamps from its [`Clock`], idempotency
//! fingerprints, defaults, wait times, leases, attempts, back-pressure,
//! shutdown), applies transitions through the [`Store`], and wakes whoever
//! waits on a change. Faces (HTTP, gRPC, the dashboard) parse a request into
//! one of the structs of [`request`], call one method here, and render what
//! it returns; they never see the store.

pub mod clock;
pub mod events;
pub mod maintenance;
pub mod request;
pub mod waiters;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::job::{
    Completion, Counts, Idempotency, Job, JobId, JobRecord, LeaseId, NewJob, Queue, Status,
    Timestamp, TransitionError,
};
use crate::metrics::{self, CancelReason};
use crate::store::{
    self, ClaimParams, Claimed, CompleteParams, FailParams, HeartbeatParams, Inserted, ListFilter,
    ProgressParams, Store, StoreEvent,
};
pub use clock::{Clock, ManualClock, SystemClock};
use events::{EventHub, Subscription};
pub use events::{Progress, MAX_EVENT_BYTES};
pub use request::{
    CompleteRequest, FailRequest, Finish, HeartbeatRequest, ListRequest, PollRequest,
    ProgressRequest, SubmitRequest, WaitFor,
};
use waiters::{AnyNotified, JobWaiters, QueueSignals, Waiter, Wake};

/// Longest wait a request may ask for (a submit's `timeout` or `Prefer:
/// wait`, a poll's or a `GET`'s `wait`): one hour. Longer values are clamped,
/// so no request holds a connection and a waiter slot for longer than this
/// by asking (a submit that waits longer gets `202` and can wait again on
/// `GET /api/jobs/{id}?wait=N`). `timeout=0` still means "forever".
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Longest accepted `Idempotency-Key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Default `limit` of a job listing.
pub const LIST_DEFAULT: usize = 100;

/// Largest `limit` of a job listing.
pub const LIST_MAX: usize = 1000;

/// Most jobs one batch poll (`max`) hands out.
pub const MAX_BATCH: usize = 100;

/// The error a failing worker reports when it gives no text.
pub const FAIL_ERROR_DEFAULT: &str = "worker reported failure";

/// Why the broker refused or could not do what was asked. Every face maps
/// these once (HTTP in `api::error`); store errors never reach a face.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server is shutting down and takes no new work (with the job a
    /// waiting client was waiting for, if any).
    #[error("server is shutting down")]
    ShuttingDown(Option<JobId>),
    /// No such job (never existed, or forgotten after `--result-ttl`).
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job is not in a state that allows this call.
    #[error("{1}")]
    Conflict(JobId, TransitionError),
    /// Back-pressure: `--max-queued` jobs are pending.
    #[error("queue is full ({0} jobs pending); retry later")]
    QueueFull(u64),
    /// An `Idempotency-Key` reused for a different body or queue.
    #[error("Idempotency-Key was already used for a different request (other body or queue)")]
    IdempotencyMismatch,
    /// A request value the broker refuses (the text says which and why).
    #[error("{0}")]
    Invalid(String),
    /// A progress event larger than [`MAX_EVENT_BYTES`].
    #[error("a progress event may be at most {0} bytes")]
    EventTooLarge(usize),
    /// The store cannot serve right now; nothing was changed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// Maps a store error about job `id`.
    fn about(id: JobId) -> impl FnOnce(store::Error) -> Error {
        move |e| match e {
            store::Error::NotFound => Error::NotFound(id),
            store::Error::Transition(t) => Error::Conflict(id, t),
            other => other.into(),
        }
    }
}

impl From<store::Error> for Error {
    /// For store calls about no one job (insert, claim, clear, listings).
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::QueueFull(n) => Error::QueueFull(n),
            store::Error::IdempotencyMismatch => Error::IdempotencyMismatch,
            store::Error::Unavailable(m) => Error::Unavailable(m),
            // Only calls about one job report these, and they map them with `about`.
            store::Error::NotFound => Error::Unavailable("the store lost a job".into()),
            store::Error::Transition(t) => Error::Unavailable(format!("unexpected refusal: {t}")),
        }
    }
}

/// `Result` with the broker's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Policy knobs, from the command line.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// How long a sync submit waits by default; `None` waits forever.
    pub wait_timeout: Option<Duration>,
    /// Lease length for a hand-out and for each heartbeat.
    pub lease: Duration,
    /// Hand-outs after which a job that keeps failing or expiring is failed.
    pub max_attempts: u32,
    /// How long ended jobs stay readable.
    pub result_ttl: Duration,
    /// Back-pressure: submits are refused while this many jobs are pending.
    pub max_queued: u64,
    /// How often expired leases are rescued and old jobs purged.
    pub maintenance_interval: Duration,
}

impl BrokerConfig {
    /// Defaults of the documented flags (docs/configuration.md).
    pub fn new() -> Self {
        BrokerConfig {
            wait_timeout: Some(Duration::from_secs(60)),
            lease: Duration::from_secs(60),
            max_attempts: 3,
            result_ttl: Duration::from_secs(3600),
            max_queued: 1_000_000,
            maintenance_interval: Duration::from_millis(250),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A cheap-to-clone handle on the broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    cfg: BrokerConfig,
    /// Wall-clock time for every timestamp the broker writes.
    clock: Arc<dyn Clock>,
    waiters: Arc<JobWaiters>,
    signals: QueueSignals,
    /// Progress events of running (and recently ended) jobs.
    events: EventHub,
    /// False once shutdown began: submits and polls are refused.
    accepting: AtomicBool,
    /// Cancelled when shutdown begins: long-polls return at once.
    stopping: CancellationToken,
    /// Cancelled when the shutdown grace ends: waiting clients are answered 503.
    grace_over: CancellationToken,
    /// Signalled whenever a running job stops running (drain waits on it).
    released: Notify,
    started: Instant,
}

/// How a sync submit ended for its client.
#[derive(Debug)]
pub enum SyncOutcome {
    /// The job ended (completed, failed or cancelled), or had already
    /// ended when an idempotent submit attached to it.
    Ended(Box<Job>),
    /// The wait ran out first; the job goes on.
    Accepted(Box<Job>),
    /// The job was forgotten while the client waited (a clear): it counts
    /// as cancelled.
    Gone(JobId),
}

/// How a wait for a job's end ended.
#[derive(Debug)]
enum WaitOutcome {
    /// The job ended; this is how it stands.
    Ended(Box<Job>),
    /// The wait time passed first.
    TimedOut,
    /// The shutdown grace ran out first.
    ShuttingDown,
    /// The job was forgotten meanwhile (a clear).
    Gone,
}

/// Server-wide counters for `/api/admin/stats`.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Per status and queue.
    pub counts: Counts,
    /// Clients waiting for a job to end.
    pub waiting_clients: usize,
    /// Workers in a long-poll.
    pub polling_workers: usize,
    /// Seconds since start.
    pub uptime_s: u64,
}

/// What the server holds right now, per queue (see [`Broker::activity`]).
#[derive(Debug, Clone)]
pub struct Activity {
    /// Pending and running jobs per queue, with the oldest pending one.
    pub queues: std::collections::BTreeMap<String, store::QueueActivity>,
    /// Clients waiting for a job to end.
    pub waiting_clients: usize,
    /// Workers in a long-poll.
    pub polling_workers: usize,
    /// The broker's clock when this was read.
    pub now: Timestamp,
    /// Seconds since start.
    pub uptime_s: u64,
}

/// Counts how a sync submit was answered, and how long it was held.
fn record_sync(r: &Result<SyncOutcome>, began: Instant) {
    metrics::sync_answered(
        match r {
            Ok(SyncOutcome::Ended(job)) => metrics::SyncOutcome::of(job.status),
            Ok(SyncOutcome::Accepted(_)) => metrics::SyncOutcome::Accepted,
            Ok(SyncOutcome::Gone(_)) => metrics::SyncOutcome::Cancelled,
            Err(_) => metrics::SyncOutcome::Error,
        },
        began.elapsed(),
    );
}

/// One item of a job's event stream ([`Broker::submit_streaming`],
/// [`Broker::job_events`]).
#[derive(Debug)]
pub enum StreamItem {
    /// A progress event.
    Progress(Progress),
    /// This many events were dropped before this reader got them.
    Gap(u64),
    /// The last item: how the stream ended.
    End(StreamEnd),
}

impl From<events::Item> for StreamItem {
    fn from(i: events::Item) -> Self {
        match i {
            events::Item::Progress(p) => StreamItem::Progress(p),
            events::Item::Gap(n) => StreamItem::Gap(n),
        }
    }
}

/// How a job's event stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The job ended (completed, failed or cancelled).
    Ended(Box<Job>),
    /// The wait stopped first (time ran out, shutdown): the job goes on,
    /// in this status.
    Accepted(JobId, Status),
    /// The job was forgotten meanwhile (a clear): it counts as cancelled.
    Gone(JobId),
}

/// A job's event stream.
pub type JobStream = Pin<Box<dyn futures_util::Stream<Item = StreamItem> + Send>>;

/// How soon a submit's insert must be durable.
#[derive(Clone, Copy)]
enum Durability {
    /// Its client is answered once it is stored.
    Now,
    /// Its client is answered with the job's result (or a 202 after its
    /// wait), which [`Store::insert_for_result`] makes durable in time.
    WithResult,
}

/// A staged sync submit: the job, its client's registration (`None` when
/// it had already ended) and the guard that cancels it if the client leaves.
struct Staged {
    job: Job,
    waiter: Option<Waiter>,
    guard: AbandonOnDrop,
}

/// Counts a submit refused with 503 (back-pressure or shutdown).
fn refused(queue: &Option<Queue>, e: &Error) {
    let reason = match e {
        Error::QueueFull(_) => metrics::RefusedReason::QueueFull,
        Error::ShuttingDown(_) => metrics::RefusedReason::ShuttingDown,
        _ => return,
    };
    match queue {
        Some(q) => metrics::refused(q, reason),
        None => metrics::refused(&Queue::default_queue(), reason),
    }
}

/// Counts a worker call refused because its lease is stale or the job no
/// longer runs.
fn stale(e: &Error, op: &'static str) {
    if let Error::Conflict(_, TransitionError::StaleLease | TransitionError::NotRunning(_)) = e {
        metrics::stale_refused(op);
    }
}

/// The queues a poll names; none means `default`.
fn polled(queues: &[Queue]) -> Vec<Queue> {
    if queues.is_empty() {
        vec![Queue::default_queue()]
    } else {
        queues.to_vec()
    }
}

/// Jobs a batch poll has taken so far; handed back if it is dropped.
struct HeldJobs {
    broker: Broker,
    jobs: Vec<Job>,
}

impl Drop for HeldJobs {
    fn drop(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let (broker, jobs) = (self.broker.clone(), std::mem::take(&mut self.jobs));
        tokio::spawn(async move {
            let _ = broker.release_all(&jobs).await;
        });
    }
}

/// Hands back the job of a claim still running when its poll was dropped.
struct ReleaseOnDrop<T: Send + 'static> {
    broker: Broker,
    claiming: Option<tokio::task::JoinHandle<T>>,
    /// The job the claim took, from what its task returned.
    taken: fn(T) -> Option<Job>,
}

impl<T: Send + 'static> Drop for ReleaseOnDrop<T> {
    fn drop(&mut self) {
        let Some(claiming) = self.claiming.take() else {
            return;
        };
        let (broker, taken) = (self.broker.clone(), self.taken);
        tokio::spawn(async move {
            if let Some(job) = claiming.await.ok().and_then(taken) {
                if let Some(lease) = job.lease_id {
                    tracing::debug!(job.id = %job.id, "poll dropped during its claim; hand-out undone");
                    let _ = broker.release(job.id, lease).await;
                }
            }
        });
    }
}

/// Runs `fut` in place if it finishes at once, else as a task of its own
/// whose job (per `taken`) is handed back if the caller is dropped first.
async fn drop_safe<T: Send + 'static>(
    broker: &Broker,
    mut fut: Pin<Box<dyn Future<Output = T> + Send>>,
    taken: fn(T) -> Option<Job>,
) -> std::result::Result<T, tokio::task::JoinError> {
    match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => {
            let mut guard = ReleaseOnDrop {
                broker: broker.clone(),
                claiming: Some(tokio::spawn(fut)),
                taken,
            };
            let r = guard.claiming.as_mut().expect("just set").await;
            guard.claiming = None;
            r
        }
    }
}

/// A store insert that owns what it needs, so it can outlive its caller.
type InsertFuture = Pin<Box<dyn Future<Output = store::Result<Inserted>> + Send>>;

/// Cancels a sync submit's job if the submit is dropped (its client went
/// away) before the job ended, even while its insert is still committing:
/// the insert's future, polled in place by the submit, is then handed to a
/// task of its own that finishes it and cancels the job after it. The
/// client's own waiter is dropped first, so the broker sees only the
/// clients that still wait.
struct AbandonOnDrop {
    broker: Broker,
    id: JobId,
    /// Whether dropping now cancels the job.
    armed: bool,
    waiter: Option<Waiter>,
    /// The insert while it has not finished (boxed, so it can be moved to a
    /// task when the submit is dropped mid-commit).
    inserting: Option<InsertFuture>,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.waiter = None;
        let inserting = self.inserting.take();
        if !self.armed && inserting.is_none() {
            return;
        }
        let (broker, id) = (self.broker.clone(), self.id);
        tokio::spawn(async move {
            if let Some(insert) = inserting {
                match insert.await {
                    Ok(Inserted::Created(_)) => {}
                    _ => return, // not stored, or attached to another client's job
                }
            }
            broker.abandon(id).await
        });
    }
}

impl Broker {
    /// A broker over `store`, reading time from the system clock.
    ///
    /// Must be called inside a Tokio runtime when the store emits events
    /// (a task relays them to local waiters).
    pub fn new(store: Arc<dyn Store>, cfg: BrokerConfig) -> Self {
        Self::with_clock(store, cfg, Arc::new(SystemClock))
    }

    /// A broker over `store` whose timestamps come from `clock` (tests).
    pub fn with_clock(store: Arc<dyn Store>, cfg: BrokerConfig, clock: Arc<dyn Clock>) -> Self {
        let events = store.subscribe();
        let broker = Broker {
            inner: Arc::new(Inner {
                store,
                cfg,
                clock,
                waiters: Arc::new(JobWaiters::default()),
                signals: QueueSignals::default(),
                events: EventHub::default(),
                accepting: AtomicBool::new(true),
                stopping: CancellationToken::new(),
                grace_over: CancellationToken::new(),
                released: Notify::new(),
                started: Instant::now(),
            }),
        };
        if let Some(mut events) = events {
            // Holds only a weak handle, so the relay ends with the broker.
            let weak = Arc::downgrade(&broker.inner);
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    let Some(inner) = weak.upgrade() else { break };
                    Broker { inner }.on_store_event(ev);
                }
            });
        }
        broker
    }

    /// Relays a change made by another process to local waiters.
    fn on_store_event(&self, ev: StoreEvent) {
        match ev {
            StoreEvent::JobReady(q) => self.inner.signals.job_ready(&q),
            StoreEvent::JobEnded(id) => {
                self.inner.events.ended(id);
                self.inner.waiters.wake(id, None);
                self.inner.released.notify_waiters();
            }
            StoreEvent::Progress(id, seq) => {
                // Fetched only for jobs someone here streams.
                let last = self.inner.events.last_seq(id);
                if seq > last && self.inner.events.is_watched(id) {
                    let broker = self.clone();
                    tokio::spawn(async move { broker.fetch_progress(id, last).await });
                }
            }
            StoreEvent::Cleared => {
                self.inner.waiters.wake_all();
                self.inner.released.notify_waiters();
            }
        }
    }

    /// The policy in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.cfg
    }

    fn store(&self) -> &dyn Store {
        &*self.inner.store
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn check_accepting(&self) -> Result<()> {
        if self.inner.accepting.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::ShuttingDown(None))
        }
    }

    /// Turns a client's request into the job to store: id, time, defaults,
    /// and the idempotency fingerprint (queue and body: a key reused for
    /// other work is refused).
    fn new_job(&self, req: SubmitRequest) -> Result<NewJob> {
        let queue = req.queue.unwrap_or_else(Queue::default_queue);
        let idempotency = match req.idempotency_key {
            None => None,
            Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY => {
                return Err(Error::Invalid(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
                )))
            }
            Some(key) => {
                let mut h = Sha256::new();
                h.update(queue.as_str().as_bytes());
                h.update([0]);
                h.update(&req.payload);
                Some(Idempotency {
                    key,
                    fingerprint: h.finalize().into(),
                })
            }
        };
        Ok(NewJob {
            id: JobId::new(),
            queue,
            payload: req.payload,
            headers: req.headers,
            priority: req.priority.unwrap_or(0),
            created_at: self.now(),
            idempotency,
        })
    }

    /// Stores a job without waiting for it (or finds the one its
    /// idempotency key names). Returns the job as it stands.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`], [`Error::Invalid`] (idempotency key),
    /// [`Error::QueueFull`], [`Error::IdempotencyMismatch`], [`Error::Unavailable`].
    pub async fn enqueue(&self, req: SubmitRequest) -> Result<Job> {
        let queue = req.queue.clone();
        self.check_accepting().inspect_err(|e| refused(&queue, e))?;
        let job = self.new_job(req)?;
        match self
            .store()
            .insert(job, self.inner.cfg.max_queued)
            .await
            .map_err(Error::from)
            .inspect_err(|e| refused(&queue, e))?
        {
            Inserted::Created(job) => {
                metrics::submitted(&job.queue);
                self.announce(&job);
                Ok(job)
            }
            Inserted::Existing(job) => {
                metrics::attached(&job.queue);
                Ok(job)
            }
        }
    }

    /// Stores a job and waits for it to end, up to `wait`. Dropping the
    /// returned future (the client went away) cancels the job if no worker
    /// has it yet and no other client waits for it.
    ///
    /// # Errors
    /// As [`Broker::enqueue`]; [`Error::ShuttingDown`] with the job's id when
    /// the shutdown grace ran out during the wait.
    pub async fn submit_and_wait(&self, req: SubmitRequest, wait: WaitFor) -> Result<SyncOutcome> {
        let (began, queue) = (Instant::now(), req.queue.clone());
        let r = self.submit_and_wait_inner(req, wait).await;
        if let Err(e) = &r {
            refused(&queue, e);
        }
        record_sync(&r, began);
        r
    }

    async fn submit_and_wait_inner(
        &self,
        req: SubmitRequest,
        wait: WaitFor,
    ) -> Result<SyncOutcome> {
        // Its client is answered with the job's result, which is durable
        // only after the job: the insert need not have an fsync of its own.
        let staged = self.stage(req, Durability::WithResult).await?;
        self.finish_submit(staged, wait).await
    }

    /// A sync submit's first half: the job is stored (or, by its
    /// idempotency key, found) and its client registered to wait for it.
    async fn stage(&self, req: SubmitRequest, durability: Durability) -> Result<Staged> {
        self.check_accepting()?;
        let job = self.new_job(req)?;
        let id = job.id;
        let mut guard = AbandonOnDrop {
            broker: self.clone(),
            id,
            armed: false,
            // Registered before the job becomes visible: no wake-up is lost.
            waiter: Some(self.inner.waiters.register_submitter(id)),
            inserting: None,
        };
        let inserted = self.insert_drop_safe(job, durability, &mut guard).await?;
        let (job, waiter) = match inserted {
            Inserted::Created(job) => {
                metrics::submitted(&job.queue);
                self.announce(&job);
                guard.armed = true;
                (job, guard.waiter.take())
            }
            Inserted::Existing(mut job) => {
                // Attached by idempotency key: wait for the first submit's job.
                metrics::attached(&job.queue);
                guard.waiter = None;
                let mut waiter = None;
                if !job.status.is_ended() {
                    waiter = Some(self.inner.waiters.register_submitter(job.id));
                    // It may have ended between insert and registration.
                    if let Some(rec) = self
                        .store()
                        .get(job.id)
                        .await
                        .map_err(Error::about(job.id))?
                    {
                        job = rec.job;
                    }
                }
                (job, waiter)
            }
        };
        Ok(Staged { job, waiter, guard })
    }

    /// A sync submit's second half: waits for the staged job to end, up to `wait`.
    async fn finish_submit(&self, staged: Staged, wait: WaitFor) -> Result<SyncOutcome> {
        let Staged {
            job,
            waiter,
            mut guard,
        } = staged;
        let id = job.id;
        let (Some(waiter), false) = (waiter, job.status.is_ended()) else {
            guard.armed = false;
            return Ok(SyncOutcome::Ended(Box::new(job)));
        };
        let outcome = self.wait(waiter, self.wait_limit(wait)).await;
        guard.armed = false;
        match outcome? {
            WaitOutcome::Ended(job) => Ok(SyncOutcome::Ended(job)),
            WaitOutcome::Gone => Ok(SyncOutcome::Gone(id)),
            WaitOutcome::ShuttingDown => Err(Error::ShuttingDown(Some(id))),
            WaitOutcome::TimedOut => match self.store().get(id).await.map_err(Error::about(id))? {
                None => Ok(SyncOutcome::Gone(id)),
                Some(rec) if rec.job.status.is_ended() => Ok(SyncOutcome::Ended(Box::new(rec.job))),
                Some(rec) => Ok(SyncOutcome::Accepted(Box::new(rec.job))),
            },
        }
    }

    /// A sync submit whose client reads the job's progress events as they
    /// come: stores the job as [`Broker::submit_and_wait`] does (its errors
    /// come back here, before any event), then returns the job and its
    /// event stream, which ends with exactly one [`StreamItem::End`].
    /// Dropping the stream is the client going away (a pending job is
    /// cancelled, as for a plain sync submit).
    ///
    /// # Errors
    /// As [`Broker::enqueue`].
    pub async fn submit_streaming(
        &self,
        req: SubmitRequest,
        wait: WaitFor,
    ) -> Result<(Job, JobStream)> {
        let (began, queue) = (Instant::now(), req.queue.clone());
        // Answered (its head, then events) once stored: at once.
        let staged = self
            .stage(req, Durability::Now)
            .await
            .inspect_err(|e| refused(&queue, e))?;
        let job = staged.job.clone();
        let sub = self.inner.events.subscribe(job.id, 0);
        let broker = self.clone();
        let id = job.id;
        let end = async move {
            let r = broker.finish_submit(staged, wait).await;
            record_sync(&r, began);
            match r {
                Ok(SyncOutcome::Ended(job)) => StreamEnd::Ended(job),
                Ok(SyncOutcome::Accepted(job)) => StreamEnd::Accepted(job.id, job.status),
                Ok(SyncOutcome::Gone(id)) => StreamEnd::Gone(id),
                Err(_) => broker.still_going(id).await,
            }
        };
        Ok((job, self.stream(id, sub, end)))
    }

    /// Job `id`'s progress events after `after` (a `Last-Event-ID`; 0: all
    /// still buffered), then live ones, ending with exactly one
    /// [`StreamItem::End`]: the job's outcome once it ends (at once for a
    /// job that has), or `Accepted` once `wait` (`None`: [`MAX_WAIT`], and
    /// at most that) has passed. Reading it does not keep the job:
    /// dropping the stream changes nothing.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Unavailable`].
    pub async fn job_events(
        &self,
        id: JobId,
        after: u64,
        wait: Option<Duration>,
    ) -> Result<(Job, JobStream)> {
        let wait = wait.map_or(MAX_WAIT, |w| w.min(MAX_WAIT));
        let waiter = self.inner.waiters.register(id);
        let job = self
            .store()
            .get(id)
            .await
            .map_err(Error::about(id))?
            .ok_or(Error::NotFound(id))?
            .job;
        let sub = self.inner.events.subscribe(id, after);
        let broker = self.clone();
        let now = job.clone();
        let end = async move {
            if now.status.is_ended() {
                return StreamEnd::Ended(Box::new(now));
            }
            match broker.wait(waiter, Some(wait)).await {
                Ok(WaitOutcome::Ended(job)) => StreamEnd::Ended(job),
                Ok(WaitOutcome::Gone) => StreamEnd::Gone(id),
                Ok(WaitOutcome::TimedOut | WaitOutcome::ShuttingDown) | Err(_) => {
                    broker.still_going(id).await
                }
            }
        };
        Ok((job, self.stream(id, sub, end)))
    }

    /// The end of a stream whose wait stopped before its job ended (time
    /// ran out, shutdown, the store failed): the job goes on.
    async fn still_going(&self, id: JobId) -> StreamEnd {
        match self.store().get(id).await {
            Ok(Some(rec)) if rec.job.status.is_ended() => StreamEnd::Ended(Box::new(rec.job)),
            Ok(Some(rec)) => StreamEnd::Accepted(id, rec.job.status),
            Ok(None) => StreamEnd::Gone(id),
            Err(_) => StreamEnd::Accepted(id, Status::Pending),
        }
    }

    /// Progress events from the subscription until `end` resolves, then the
    /// ones published before it (read from a shared store too, where events
    /// from other nodes may still be on their way), then the end.
    fn stream(
        &self,
        id: JobId,
        sub: Subscription,
        end: impl Future<Output = StreamEnd> + Send + 'static,
    ) -> JobStream {
        struct St {
            broker: Broker,
            id: JobId,
            sub: Subscription,
            end: Option<Pin<Box<dyn Future<Output = StreamEnd> + Send>>>,
            fin: Option<StreamEnd>,
            /// Whether the shared store was read at the start and at the end.
            synced: (bool, bool),
            done: bool,
        }
        let shared = self.store().shares_progress();
        let st = St {
            broker: self.clone(),
            id,
            sub,
            end: Some(Box::pin(end)),
            fin: None,
            synced: (!shared, !shared),
            done: false,
        };
        Box::pin(futures_util::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            if !st.synced.0 {
                st.synced.0 = true;
                st.broker.fetch_progress(st.id, st.sub.cursor()).await;
            }
            loop {
                enum Step {
                    Yield(StreamItem),
                    Sync,
                    Ended(StreamEnd),
                    Again,
                }
                let step = {
                    // Enabled before the look at the buffer: no event is missed.
                    let changed = st.sub.changed();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    if let Some(item) = st.sub.try_next() {
                        Step::Yield(item.into())
                    } else if st.fin.is_some() {
                        if st.synced.1 {
                            Step::Yield(StreamItem::End(st.fin.take().expect("checked")))
                        } else {
                            Step::Sync
                        }
                    } else if let Some(end) = st.end.as_mut() {
                        tokio::select! {
                            fin = end => Step::Ended(fin),
                            _ = &mut changed => Step::Again,
                        }
                    } else {
                        return None;
                    }
                };
                match step {
                    Step::Yield(item) => {
                        st.done = matches!(item, StreamItem::End(_));
                        return Some((item, st));
                    }
                    Step::Sync => {
                        st.synced.1 = true;
                        st.broker.fetch_progress(st.id, st.sub.cursor()).await;
                    }
                    Step::Ended(fin) => {
                        st.end = None;
                        st.fin = Some(fin);
                    }
                    Step::Again => {}
                }
            }
        }))
    }

    /// Reads job `id`'s events after `after` from a shared store into the hub.
    async fn fetch_progress(&self, id: JobId, after: u64) {
        match self.store().progress_since(id, after).await {
            Ok((events, dropped_upto)) => {
                let events = events
                    .into_iter()
                    .map(|(seq, data)| Progress { seq, data })
                    .collect();
                self.inner.events.insert(id, events, dropped_upto);
            }
            Err(e) => tracing::debug!(job.id = %id, error = %e, "could not read progress events"),
        }
    }

    /// A worker's progress event: fenced and extending the lease like a
    /// heartbeat, then handed to every client streaming the job. Returns
    /// the job as it now stands and the event's number.
    ///
    /// # Errors
    /// [`Error::EventTooLarge`]; as [`Broker::heartbeat`].
    pub async fn progress(&self, req: ProgressRequest) -> Result<(Job, u64)> {
        if req.data.len() > MAX_EVENT_BYTES {
            return Err(Error::EventTooLarge(MAX_EVENT_BYTES));
        }
        let p = ProgressParams {
            id: req.id,
            lease_id: req.lease,
            expires_at: self.now() + self.inner.cfg.lease,
            data: req.data,
        };
        let (job, seq) = self
            .store()
            .progress(&p)
            .await
            .map_err(Error::about(req.id))
            .inspect_err(|e| stale(e, "progress"))?;
        let seq = match seq {
            Some(seq) => {
                self.inner
                    .events
                    .insert(req.id, vec![Progress { seq, data: p.data }], 0);
                seq
            }
            None => self.inner.events.publish(req.id, p.data),
        };
        metrics::progress(&job.queue);
        Ok((job, seq))
    }

    /// Inserts `job`, polling the insert in place (a task per submit would
    /// cost a spawn and, worse, run the commit before the other ready
    /// requests have queued their changes, shrinking the group commit).
    /// The future is held by `guard` until it finishes: a caller dropped
    /// meanwhile hands it to a task, and its job is cancelled once stored.
    async fn insert_drop_safe(
        &self,
        job: NewJob,
        durability: Durability,
        guard: &mut AbandonOnDrop,
    ) -> Result<Inserted> {
        let store = self.inner.store.clone();
        let max = self.inner.cfg.max_queued;
        let insert = guard.inserting.insert(Box::pin(async move {
            match durability {
                Durability::Now => store.insert(job, max).await,
                Durability::WithResult => store.insert_for_result(job, max).await,
            }
        }));
        let r = insert.await;
        guard.inserting = None;
        Ok(r?)
    }

    /// A new job is stored: wake one worker polling its queue, unless the
    /// store has already done so (it wakes them as soon as the job is claimable).
    fn announce(&self, job: &Job) {
        if !self.inner.store.announces_inserts() {
            self.inner.signals.job_ready(&job.queue);
        }
    }

    /// The wait a sync submit gets.
    fn wait_limit(&self, wait: WaitFor) -> Option<Duration> {
        match wait {
            WaitFor::ServerDefault => self.inner.cfg.wait_timeout,
            WaitFor::Forever => None,
            WaitFor::Up(d) => Some(d.min(MAX_WAIT)),
        }
    }

    /// Waits until the job of `waiter` ends, `timeout` passes (`None`: no
    /// limit) or the shutdown grace runs out.
    async fn wait(&self, mut waiter: Waiter, timeout: Option<Duration>) -> Result<WaitOutcome> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        let id = waiter.job_id();
        loop {
            // Biased: a job that ended wins over a deadline that passed at
            // the same moment (its worker's complete during the shutdown
            // grace also ends the drain; its client must get the result).
            let wake = tokio::select! {
                biased;
                w = waiter.recv() => w,
                _ = &mut sleep => return Ok(WaitOutcome::TimedOut),
                _ = self.inner.grace_over.cancelled() => return Ok(WaitOutcome::ShuttingDown),
            };
            let job = match wake {
                Wake::Ended(job) => job,
                Wake::Changed => match self.store().get(id).await.map_err(Error::about(id))? {
                    Some(rec) => Box::new(rec.job),
                    None => return Ok(WaitOutcome::Gone),
                },
            };
            if job.status.is_ended() {
                return Ok(WaitOutcome::Ended(job));
            }
            // Not ended after all (a change seen elsewhere): wait again.
            waiter = if waiter.is_submitter() {
                self.inner.waiters.register_submitter(id)
            } else {
                self.inner.waiters.register(id)
            };
            if let Some(rec) = self.store().get(id).await.map_err(Error::about(id))? {
                if rec.job.status.is_ended() {
                    return Ok(WaitOutcome::Ended(Box::new(rec.job)));
                }
            }
        }
    }

    /// One job with its queue position; with a non-zero `wait`, first waits
    /// up to that long (capped at [`MAX_WAIT`]) for it to end.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Unavailable`].
    pub async fn get(&self, id: JobId, wait: Duration) -> Result<JobRecord> {
        let waiter = (!wait.is_zero()).then(|| self.inner.waiters.register(id));
        let rec = self
            .store()
            .get(id)
            .await
            .map_err(Error::about(id))?
            .ok_or(Error::NotFound(id))?;
        let (Some(waiter), false) = (waiter, rec.job.status.is_ended()) else {
            return Ok(rec);
        };
        match self.wait(waiter, Some(wait.min(MAX_WAIT))).await? {
            WaitOutcome::Ended(job) => Ok(JobRecord {
                job: *job,
                position: None,
            }),
            WaitOutcome::Gone => Err(Error::NotFound(id)),
            WaitOutcome::TimedOut | WaitOutcome::ShuttingDown => self
                .store()
                .get(id)
                .await
                .map_err(Error::about(id))?
                .ok_or(Error::NotFound(id)),
        }
    }

    /// Cancels a pending or running job; its waiting clients are answered.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] (already ended), [`Error::Unavailable`].
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        let job = self
            .store()
            .cancel(id, false, self.now())
            .await
            .map_err(Error::about(id))?;
        metrics::ended(&job, Some(CancelReason::Client));
        self.ended(&job, Status::Running);
        Ok(job)
    }

    /// Cancels job `id` if no worker has it yet: its client went away.
    /// Not while other clients that submitted it still wait for it (they
    /// attached to it by its `Idempotency-Key`); watchers (`GET ?wait`) do
    /// not keep it.
    async fn abandon(&self, id: JobId) {
        if self.inner.waiters.has_submitter(id) {
            tracing::debug!(job.id = %id, "client went away; others still wait, job kept");
            return;
        }
        match self.store().cancel(id, true, self.now()).await {
            Ok(job) => {
                metrics::ended(&job, Some(CancelReason::Disconnect));
                self.inner.events.ended(id);
                tracing::debug!(job.id = %id, "client went away; pending job cancelled");
                self.inner.waiters.wake(id, Some(&job));
            }
            Err(store::Error::Transition(_) | store::Error::NotFound) => {}
            Err(e) => tracing::warn!(job.id = %id, error = %e, "could not cancel abandoned job"),
        }
    }

    /// Hands out a job from the first non-empty of the request's queues,
    /// waiting up to its `wait` (capped at [`MAX_WAIT`]) for one to arrive.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] (also when shutdown begins during the wait);
    /// [`Error::Unavailable`].
    pub async fn poll(&self, req: PollRequest) -> Result<Option<Job>> {
        self.check_accepting()?;
        let queues = if req.queues.is_empty() {
            vec![Queue::default_queue()]
        } else {
            req.queues
        };
        let wait = req.wait.min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let signals = if wait.is_zero() {
            Vec::new()
        } else {
            self.inner.signals.signals(&queues)
        };
        let _polling = (!wait.is_zero()).then(|| self.inner.signals.polling());
        loop {
            let mut notified = AnyNotified::new(&signals);
            if let Some(job) = self.claim(&queues).await? {
                // A wake-up for this very job must not wake another poll.
                notified.consume();
                return Ok(Some(job));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::select! {
                _ = notified.wait() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.inner.stopping.cancelled() => return Err(Error::ShuttingDown(None)),
            }
        }
    }

    /// Hands out up to `max` jobs (capped at [`MAX_BATCH`]): waits as
    /// [`Broker::poll`] does for the first, then takes whatever else is
    /// pending at once. Empty when none came within the wait.
    ///
    /// # Errors
    /// As [`Broker::poll`].
    pub async fn poll_many(&self, req: PollRequest, max: usize) -> Result<Vec<Job>> {
        let queues = polled(&req.queues);
        let Some(first) = self.poll(req).await? else {
            return Ok(Vec::new());
        };
        self.take_more(first, &queues, max).await
    }

    /// `first`, and up to `max` (capped at [`MAX_BATCH`]) in all with
    /// whatever else of `queues` is pending now.
    async fn take_more(&self, first: Job, queues: &[Queue], max: usize) -> Result<Vec<Job>> {
        let max = max.clamp(1, MAX_BATCH);
        // Held, so that the jobs taken so far are handed back if this is
        // dropped (or fails) while it takes the next.
        let mut held = HeldJobs {
            broker: self.clone(),
            jobs: Vec::with_capacity(max),
        };
        held.jobs.push(first);
        while held.jobs.len() < max {
            match self.claim(queues).await? {
                Some(job) => held.jobs.push(job),
                None => break,
            }
        }
        Ok(std::mem::take(&mut held.jobs))
    }

    /// Hands back jobs taken for a worker who will never get them.
    ///
    /// # Errors
    /// The first failure; the rest are still tried.
    pub async fn release_all(&self, jobs: &[Job]) -> Result<()> {
        let mut first = Ok(());
        for job in jobs {
            if let Some(lease) = job.lease_id {
                if let Err(e) = self.release(job.id, lease).await {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }

    /// Complete-and-take-next (or fail-and-take-next): records the outcome
    /// exactly as [`Broker::complete`] or [`Broker::fail`] does (same
    /// fencing, same errors; on an error no job is taken), then hands out
    /// up to `max` jobs as [`Broker::poll_many`] does. One request per job
    /// for a busy worker.
    ///
    /// # Errors
    /// As [`Broker::complete`] or [`Broker::fail`], then as [`Broker::poll`].
    pub async fn finish_and_next(
        &self,
        outcome: Finish,
        next: PollRequest,
        max: usize,
    ) -> Result<(Job, Vec<Job>)> {
        let req = match outcome {
            // The complete and the first claim in one store call, where the
            // store makes that one transaction (PostgreSQL), unless no claim
            // may be made.
            Finish::Complete(req)
                if self.store().fuses_complete_and_claim() && self.check_accepting().is_ok() =>
            {
                req
            }
            Finish::Complete(req) => {
                let job = self.complete(req).await?;
                return Ok((job, self.poll_many(next, max).await?));
            }
            Finish::Fail(req) => {
                let job = self.fail(req).await?;
                return Ok((job, self.poll_many(next, max).await?));
            }
        };
        let queues = polled(&next.queues);
        // As in `poll`: registered before the claim, so that a wake-up for
        // the job it takes can be consumed rather than wake another poll.
        let signals = if next.wait.is_zero() {
            Vec::new()
        } else {
            self.inner.signals.signals(&queues)
        };
        let mut notified = AnyNotified::new(&signals);
        let (job, first) = self.complete_and_claim(req, &queues).await?;
        let Some(first) = first else {
            drop(notified);
            return Ok((job, self.poll_many(next, max).await?));
        };
        notified.consume();
        drop(notified);
        Ok((job, self.take_more(first, &queues, max).await?))
    }

    /// [`Broker::complete`] and one claim of `queues` in one store call.
    /// Drop-safe like [`Broker::claim`]: when it does not finish at once it
    /// runs as a task of its own, which also wakes the job's client, and
    /// the job it took is handed back if the worker's request is gone.
    async fn complete_and_claim(
        &self,
        req: CompleteRequest,
        queues: &[Queue],
    ) -> Result<(Job, Option<Job>)> {
        let id = req.id;
        let p = self.complete_params(req);
        let next = self.claim_params(queues);
        let broker = self.clone();
        let call = Box::pin(async move {
            let ((job, how), claimed) = broker
                .store()
                .complete_and_claim(&p, &next)
                .await
                .map_err(Error::about(id))
                .inspect_err(|e| stale(e, "complete"))?;
            broker.completed(&job, how);
            Ok((job, claimed?))
        });
        let (job, claimed) = drop_safe(self, call, |r: Result<(Job, Option<Claimed>)>| {
            r.ok().and_then(|(_, c)| c).map(|c| c.job)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("complete task failed: {e}")))??;
        Ok((job, claimed.map(|c| self.took(c, queues))))
    }

    /// A hand-out of `queues` under a new lease, from now.
    fn claim_params(&self, queues: &[Queue]) -> ClaimParams {
        let now = self.now();
        ClaimParams {
            queues: queues.to_vec(),
            lease_id: LeaseId::new(),
            now,
            expires_at: now + self.inner.cfg.lease,
        }
    }

    /// A claim took `claimed` from `queues`.
    fn took(&self, claimed: Claimed, queues: &[Queue]) -> Job {
        metrics::handed_out(&claimed.job);
        if claimed.more_pending {
            // Pass the wake-up on: this worker may have been woken for another queue.
            for q in queues {
                self.inner.signals.job_ready(q);
            }
        }
        claimed.job
    }

    /// One claim. Drop-safe like a sync submit's insert: a claim that does
    /// not finish at once (a database round trip, a payload read from disk)
    /// runs as a task of its own, and if the poll is dropped meanwhile (its
    /// worker went away) the job it took is handed back.
    async fn claim(&self, queues: &[Queue]) -> Result<Option<Job>> {
        let p = self.claim_params(queues);
        let store = self.inner.store.clone();
        let claim = Box::pin(async move { store.claim(&p).await });
        let claimed = drop_safe(self, claim, |r: store::Result<Option<Claimed>>| {
            r.ok().flatten().map(|c| c.job)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("claim task failed: {e}")))??;
        Ok(claimed.map(|c| self.took(c, queues)))
    }

    /// Undoes the hand-out of job `id` under `lease`: its answer could not be
    /// delivered (the worker's connection had closed). The job is pending
    /// again, the attempt not counted, and another worker is woken for it.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] (no longer running under
    /// that lease), [`Error::Unavailable`].
    pub async fn release(&self, id: JobId, lease: LeaseId) -> Result<Job> {
        let job = self
            .store()
            .release(id, lease)
            .await
            .map_err(Error::about(id))?;
        self.after_release(&job);
        Ok(job)
    }

    /// The job a poll of `queues` (empty: `default`) would get, without taking it.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    pub async fn peek(&self, queues: &[Queue]) -> Result<Option<Job>> {
        if queues.is_empty() {
            return Ok(self.store().peek(&[Queue::default_queue()]).await?);
        }
        Ok(self.store().peek(queues).await?)
    }

    /// Records a worker's result; the waiting client gets it. An empty
    /// result is stored as `{}` (what the first version did).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] (not running, stale lease),
    /// [`Error::Unavailable`].
    pub async fn complete(&self, req: CompleteRequest) -> Result<Job> {
        let id = req.id;
        let p = self.complete_params(req);
        let (job, how) = self
            .store()
            .complete(&p)
            .await
            .map_err(Error::about(id))
            .inspect_err(|e| stale(e, "complete"))?;
        self.completed(&job, how);
        Ok(job)
    }

    /// The store's parameters of a worker's complete.
    fn complete_params(&self, req: CompleteRequest) -> CompleteParams {
        CompleteParams {
            id: req.id,
            lease_id: req.lease,
            result: if req.result.is_empty() {
                Bytes::from_static(b"{}")
            } else {
                req.result
            },
            now: self.now(),
        }
    }

    /// A complete was applied (`how`): its waiting clients get the job.
    fn completed(&self, job: &Job, how: Completion) {
        if how == Completion::Completed {
            metrics::ended(job, None);
            self.ended(job, Status::Running);
        }
    }

    /// Records a worker's failure: back to pending while attempts remain and
    /// the request allows a retry (the default), else failed (the waiting
    /// client gets its error).
    ///
    /// # Errors
    /// As [`Broker::complete`].
    pub async fn fail(&self, req: FailRequest) -> Result<Job> {
        let id = req.id;
        let p = FailParams {
            id,
            lease_id: req.lease,
            error: req.error.unwrap_or_else(|| FAIL_ERROR_DEFAULT.to_owned()),
            retry: req.retry.unwrap_or(true),
            max_attempts: self.inner.cfg.max_attempts,
            now: self.now(),
        };
        let job = self
            .store()
            .fail(&p)
            .await
            .map_err(Error::about(id))
            .inspect_err(|e| stale(e, "fail"))?;
        match job.status {
            Status::Pending => metrics::retried(&job),
            _ => metrics::ended(&job, None),
        }
        self.after_release(&job);
        Ok(job)
    }

    /// Extends a running job's lease by `--lease` from now.
    ///
    /// # Errors
    /// As [`Broker::complete`].
    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<Job> {
        let expires = self.now() + self.inner.cfg.lease;
        self.store()
            .heartbeat(&HeartbeatParams {
                id: req.id,
                lease_id: req.lease,
                expires_at: expires,
            })
            .await
            .map_err(Error::about(req.id))
            .inspect_err(|e| stale(e, "heartbeat"))
    }

    /// Cancels every pending and running job (of `queue`, if given) and
    /// forgets ended ones. Returns how many jobs were cancelled.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    pub async fn clear(&self, queue: Option<&Queue>) -> Result<usize> {
        let cancelled = self.store().clear(queue, self.now()).await?;
        metrics::cleared(queue, cancelled.len());
        for id in &cancelled {
            self.inner.events.ended(*id);
            self.inner.waiters.wake(*id, None);
        }
        self.inner.released.notify_waiters();
        Ok(cancelled.len())
    }

    /// Jobs, newest first.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    pub async fn list(&self, req: ListRequest) -> Result<Vec<Job>> {
        let filter = ListFilter {
            status: req.status,
            queue: req.queue,
            limit: req.limit.unwrap_or(LIST_DEFAULT).clamp(1, LIST_MAX),
        };
        Ok(self.store().list(&filter).await?)
    }

    /// Counters for the admin API.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    pub async fn stats(&self) -> Result<Stats> {
        Ok(Stats {
            counts: self.store().counts().await?,
            waiting_clients: self.inner.waiters.len(),
            polling_workers: self.inner.signals.polling_count(),
            uptime_s: self.inner.started.elapsed().as_secs(),
        })
    }

    /// What each queue holds, with the waiting clients and polling workers:
    /// the figures of the dashboard and the gauges of `/metrics`.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    pub async fn activity(&self) -> Result<Activity> {
        Ok(Activity {
            queues: self.store().activity().await?,
            waiting_clients: self.inner.waiters.len(),
            polling_workers: self.inner.signals.polling_count(),
            now: self.now(),
            uptime_s: self.inner.started.elapsed().as_secs(),
        })
    }

    /// Whether [`Broker::activity`] is cheap enough to ask every second.
    pub fn activity_is_cheap(&self) -> bool {
        self.store().activity_is_cheap()
    }

    /// Whether the store can serve, and the server is not shutting down.
    pub async fn healthy(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire) && self.store().healthy().await
    }

    /// A job left `Running` (`was`) or ended: wake whoever waits on it.
    fn ended(&self, job: &Job, was: Status) {
        if job.status.is_ended() {
            self.inner.events.ended(job.id);
            self.inner.waiters.wake(job.id, Some(job));
        }
        if was == Status::Running {
            self.inner.released.notify_waiters();
        }
    }

    /// A running job was given up (failed by its worker, or its lease ran out).
    fn after_release(&self, job: &Job) {
        if job.status == Status::Pending {
            self.inner.signals.job_ready(&job.queue);
        }
        self.ended(job, Status::Running);
    }

    /// One maintenance pass: rescue expired leases, purge old jobs.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    pub async fn maintain(&self, purge: bool) -> Result<(usize, u64)> {
        let now = self.now();
        self.inner.events.reap(self.store().shares_progress());
        let rescued = self
            .store()
            .rescue_expired(now, self.inner.cfg.max_attempts)
            .await?;
        for job in &rescued {
            metrics::rescued(job);
            self.after_release(job);
        }
        let purged = if purge {
            self.store()
                .purge_expired(self.inner.cfg.result_ttl, now)
                .await?
        } else {
            0
        };
        Ok((rescued.len(), purged))
    }

    /// Shutdown, step 1: refuse new submits and polls, end long-polls.
    pub fn begin_shutdown(&self) {
        self.inner.accepting.store(false, Ordering::Release);
        self.inner.stopping.cancel();
    }

    /// Shutdown, step 2: give running jobs up to `grace` to finish, then
    /// answer every client still waiting with 503.
    pub async fn drain(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let running = match self.store().counts().await {
                Ok(c) => c.total[Status::Running.index()],
                Err(_) => 0,
            };
            if running == 0 {
                break;
            }
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(running, "shutdown grace over; unfinished jobs stay stored");
                    break;
                }
            }
        }
        self.inner.grace_over.cancel();
    }

    /// Shutdown, step 3: flush and close the store.
    ///
    /// # Errors
    /// The store's `Unavailable`.
    pub async fn close(&self) -> Result<()> {
        Ok(self.store().close().await?)
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;
    use crate::job::{Completion, Counts, JobRecord};
    use crate::store::{embedded::EmbeddedStore, memory::MemoryStore, SyncMode};

    fn submit(body: &'static str) -> SubmitRequest {
        SubmitRequest {
            queue: None,
            payload: Bytes::from_static(body.as_bytes()),
            headers: Bytes::from_static(b"{}"),
            priority: None,
            idempotency_key: None,
        }
    }

    /// A submit wakes one polling worker once: the embedded store announces
    /// the job itself as soon as it is claimable, so the broker must not
    /// signal again (a second signal would leave a wake-up behind that sends
    /// the next long-poll on an empty claim).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submit_wakes_a_polling_worker_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), SyncMode::Normal, 3).unwrap());
        let broker = Broker::new(store, BrokerConfig::new());
        let poller = {
            let b = broker.clone();
            tokio::spawn(async move {
                b.poll(PollRequest {
                    queues: Vec::new(),
                    wait: Duration::from_secs(10),
                })
                .await
            })
        };
        // Let the poll register, make its first (empty) claim and wait. A
        // job published before that claim would be taken by it, and the
        // store's announcement, relayed a moment later, would then find no
        // waiter and stay as a permit: a spurious (harmless) wake-up, but
        // not what this test is about.
        while broker.inner.signals.polling_count() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.enqueue(submit("a")).await.unwrap();
        let job = poller.await.unwrap().unwrap().expect("the job");
        assert_eq!(job.payload, "a");
        // Any second wake-up (the broker's own, or the store's relayed
        // event) has arrived by now.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let signal = broker.inner.signals.signals(&[Queue::default_queue()]);
        assert!(
            signal[0].notified().now_or_never().is_none(),
            "a wake-up was left behind: the worker was signalled twice"
        );
    }

    /// Time comes from the injected clock: a lease runs out when the clock
    /// says so, with no sleeping.
    #[tokio::test]
    async fn leases_expire_by_the_injected_clock() {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let cfg = BrokerConfig {
            lease: Duration::from_secs(30),
            max_attempts: 2,
            ..BrokerConfig::new()
        };
        let broker = Broker::with_clock(Arc::new(MemoryStore::new()), cfg, Arc::new(clock.clone()));
        let job = broker.enqueue(submit("x")).await.unwrap();
        assert_eq!(job.created_at, Timestamp(1_000_000));
        let poll = || broker.poll(PollRequest::default());
        let running = poll().await.unwrap().expect("handed out");
        assert_eq!(running.lease_expires_at, Some(Timestamp(31_000_000)));
        clock.advance(Duration::from_secs(29));
        assert_eq!(broker.maintain(false).await.unwrap().0, 0, "lease holds");
        clock.advance(Duration::from_secs(1));
        assert_eq!(broker.maintain(false).await.unwrap().0, 1, "lease ran out");
        let again = poll().await.unwrap().expect("handed out again");
        assert_eq!(again.attempts, 2);
        clock.advance(Duration::from_secs(30));
        broker.maintain(false).await.unwrap();
        let rec = broker.get(job.id, Duration::ZERO).await.unwrap();
        assert_eq!(rec.job.status, Status::Failed);
        assert_eq!(rec.job.ended_at, Some(Timestamp(61_000_000)));
        assert_eq!(
            rec.job.error.as_deref(),
            Some(&*crate::job::lease_expired_error(2))
        );
    }

    /// The broker fills in what a request leaves out.
    #[tokio::test]
    async fn defaults_are_the_brokers() {
        let broker = Broker::new(Arc::new(MemoryStore::new()), BrokerConfig::new());
        let long_key = "k".repeat(MAX_IDEMPOTENCY_KEY + 1);
        let err = broker
            .enqueue(SubmitRequest {
                idempotency_key: Some(long_key),
                ..submit("x")
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        let job = broker.enqueue(submit("x")).await.unwrap();
        assert_eq!((job.queue.as_str(), job.priority), ("default", 0));
        let lease = broker
            .poll(PollRequest::default())
            .await
            .unwrap()
            .unwrap()
            .lease_id;
        let failed = broker
            .fail(FailRequest {
                id: job.id,
                lease,
                error: None,
                retry: Some(false),
            })
            .await
            .unwrap();
        assert_eq!(failed.error.as_deref(), Some(FAIL_ERROR_DEFAULT));
        let job = broker.enqueue(submit("y")).await.unwrap();
        broker.poll(PollRequest::default()).await.unwrap().unwrap();
        let done = broker
            .complete(CompleteRequest {
                id: job.id,
                lease: None,
                result: Bytes::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            done.result.as_deref(),
            Some(&b"{}"[..]),
            "an empty result is stored as {{}}"
        );
    }

    /// The memory store, with every claim taking 50 ms after it took its
    /// job (as a database round trip or a payload read from disk would).
    struct SlowClaims(MemoryStore);

    #[async_trait::async_trait]
    impl Store for SlowClaims {
        async fn insert(&self, job: NewJob, max: u64) -> store::Result<Inserted> {
            self.0.insert(job, max).await
        }
        async fn claim(&self, p: &ClaimParams) -> store::Result<Option<Claimed>> {
            let c = self.0.claim(p).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            c
        }
        async fn peek(&self, q: &[Queue]) -> store::Result<Option<Job>> {
            self.0.peek(q).await
        }
        async fn complete(&self, p: &CompleteParams) -> store::Result<(Job, Completion)> {
            self.0.complete(p).await
        }
        async fn fail(&self, p: &FailParams) -> store::Result<Job> {
            self.0.fail(p).await
        }
        async fn heartbeat(&self, p: &HeartbeatParams) -> store::Result<Job> {
            self.0.heartbeat(p).await
        }
        async fn release(&self, id: JobId, l: LeaseId) -> store::Result<Job> {
            self.0.release(id, l).await
        }
        async fn cancel(&self, id: JobId, only: bool, t: Timestamp) -> store::Result<Job> {
            self.0.cancel(id, only, t).await
        }
        async fn clear(&self, q: Option<&Queue>, t: Timestamp) -> store::Result<Vec<JobId>> {
            self.0.clear(q, t).await
        }
        async fn get(&self, id: JobId) -> store::Result<Option<JobRecord>> {
            self.0.get(id).await
        }
        async fn list(&self, f: &ListFilter) -> store::Result<Vec<Job>> {
            self.0.list(f).await
        }
        async fn counts(&self) -> store::Result<Counts> {
            self.0.counts().await
        }
        async fn activity(
            &self,
        ) -> store::Result<std::collections::BTreeMap<String, store::QueueActivity>> {
            self.0.activity().await
        }
        async fn rescue_expired(&self, t: Timestamp, max: u32) -> store::Result<Vec<Job>> {
            self.0.rescue_expired(t, max).await
        }
        async fn purge_expired(&self, ttl: Duration, t: Timestamp) -> store::Result<u64> {
            self.0.purge_expired(ttl, t).await
        }
        fn pending_count(&self) -> u64 {
            self.0.pending_count()
        }
    }

    /// A poll dropped while its claim is under way (its worker went away)
    /// hands the job back: pending, the attempt not counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_dropped_during_its_claim_hands_the_job_back() {
        let broker = Broker::new(
            Arc::new(SlowClaims(MemoryStore::new())),
            BrokerConfig::new(),
        );
        let job = broker.enqueue(submit("x")).await.unwrap();
        let poll = {
            let b = broker.clone();
            tokio::spawn(async move { b.poll(PollRequest::default()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        poll.abort();
        assert!(poll.await.unwrap_err().is_cancelled());
        let settled = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let j = broker.get(job.id, Duration::ZERO).await.unwrap().job;
                if j.status == Status::Pending {
                    return j;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the job is handed back");
        assert_eq!(settled.attempts, 0);
        let again = broker.poll(PollRequest::default()).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (job.id, 1));
    }
}
