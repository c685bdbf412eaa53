//! The broker: the only API for a job's lifecycle. It decides policy (wait
//! times, leases, attempts, back-pressure, shutdown), applies transitions
//! through the [`Store`], and wakes whoever waits on a change. Handlers
//! (HTTP, and later gRPC) are thin translations onto these methods.

pub mod maintenance;
pub mod waiters;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::job::{Completion, Job, JobId, LeaseId, NewJob, Queue, Status, Timestamp};
use crate::store::{
    self, ClaimParams, CompleteParams, Counts, FailParams, Inserted, JobRecord, ListFilter, Store,
    StoreEvent,
};
use waiters::{AnyNotified, JobWaiters, QueueSignals, Waiter, Wake};

/// Broker errors: the store's, plus refusals that are the broker's own policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server is shutting down and takes no new work.
    #[error("server is shutting down")]
    ShuttingDown,
    /// A store refusal or failure.
    #[error(transparent)]
    Store(#[from] store::Error),
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
    /// Defaults of SPEC §1.
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
    waiters: Arc<JobWaiters>,
    signals: QueueSignals,
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

/// A new job as the API layer hands it over.
#[derive(Debug)]
pub struct Submit {
    /// The job.
    pub job: NewJob,
    /// Whether the caller will wait for the job to end (registers a waiter).
    pub wait: bool,
}

/// What a submit produced.
#[derive(Debug)]
pub struct Submission {
    /// The job as it stands (new, or the one its idempotency key names).
    pub job: Job,
    /// Whether this submit created the job (false: attached by idempotency key).
    pub created: bool,
    /// Registered before the job became visible, when the caller waits.
    pub waiter: Option<Waiter>,
}

/// How a wait for a job's end ended.
#[derive(Debug)]
pub enum WaitOutcome {
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

impl Broker {
    /// A broker over `store`.
    ///
    /// Must be called inside a Tokio runtime when the store emits events
    /// (a task relays them to local waiters).
    pub fn new(store: Arc<dyn Store>, cfg: BrokerConfig) -> Self {
        let events = store.subscribe();
        let broker = Broker {
            inner: Arc::new(Inner {
                store,
                cfg,
                waiters: Arc::new(JobWaiters::default()),
                signals: QueueSignals::default(),
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
                self.inner.waiters.wake(id, None);
                self.inner.released.notify_waiters();
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

    fn check_accepting(&self) -> Result<()> {
        if self.inner.accepting.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::ShuttingDown)
        }
    }

    /// Stores a new job (or attaches to the one its idempotency key names).
    ///
    /// # Errors
    /// [`Error::ShuttingDown`]; the store's `QueueFull`, `IdempotencyMismatch`, `Unavailable`.
    pub async fn submit(&self, s: Submit) -> Result<Submission> {
        self.check_accepting()?;
        let mut waiter = s
            .wait
            .then(|| self.inner.waiters.register_submitter(s.job.id));
        match self
            .store()
            .insert(s.job, self.inner.cfg.max_queued)
            .await?
        {
            Inserted::Created(job) => {
                self.inner.signals.job_ready(&job.queue);
                Ok(Submission {
                    job,
                    created: true,
                    waiter,
                })
            }
            Inserted::Existing(job) => {
                let mut job = job;
                if s.wait && !job.status.is_ended() {
                    waiter = Some(self.inner.waiters.register_submitter(job.id));
                    // It may have ended between insert and registration.
                    if let Some(rec) = self.store().get(job.id).await? {
                        job = rec.job;
                    }
                } else {
                    waiter = None;
                }
                Ok(Submission {
                    job,
                    created: false,
                    waiter,
                })
            }
        }
    }

    /// Waits until the job of `waiter` ends, `timeout` passes (`None`: no
    /// limit) or the shutdown grace runs out.
    pub async fn wait(&self, mut waiter: Waiter, timeout: Option<Duration>) -> Result<WaitOutcome> {
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
                Wake::Changed => match self.store().get(id).await? {
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
            if let Some(rec) = self.store().get(id).await? {
                if rec.job.status.is_ended() {
                    return Ok(WaitOutcome::Ended(Box::new(rec.job)));
                }
            }
        }
    }

    /// One job with its queue position; with `wait`, first waits up to that
    /// long for it to end.
    ///
    /// # Errors
    /// The store's `NotFound` and `Unavailable`.
    pub async fn get(&self, id: JobId, wait: Option<Duration>) -> Result<JobRecord> {
        let waiter = wait.map(|_| self.inner.waiters.register(id));
        let rec = self.store().get(id).await?.ok_or(store::Error::NotFound)?;
        let (Some(waiter), false) = (waiter, rec.job.status.is_ended()) else {
            return Ok(rec);
        };
        match self.wait(waiter, wait).await? {
            WaitOutcome::Ended(job) => Ok(JobRecord {
                job: *job,
                position: None,
            }),
            WaitOutcome::Gone => Err(store::Error::NotFound.into()),
            WaitOutcome::TimedOut | WaitOutcome::ShuttingDown => {
                Ok(self.store().get(id).await?.ok_or(store::Error::NotFound)?)
            }
        }
    }

    /// Cancels a pending or running job; its waiting clients are answered.
    ///
    /// # Errors
    /// The store's `NotFound`, `Transition` (already ended) and `Unavailable`.
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        let job = self.store().cancel(id, false, Timestamp::now()).await?;
        self.ended(&job, Status::Running);
        Ok(job)
    }

    /// Cancels job `id` if no worker has it yet: its client went away.
    /// Not while other clients that submitted it still wait for it (they
    /// attached to it by its `Idempotency-Key`); watchers (`GET ?wait`) do
    /// not keep it.
    pub async fn abandon(&self, id: JobId) {
        if self.inner.waiters.has_submitter(id) {
            tracing::debug!(job.id = %id, "client went away; others still wait, job kept");
            return;
        }
        match self.store().cancel(id, true, Timestamp::now()).await {
            Ok(job) => {
                tracing::debug!(job.id = %id, "client went away; pending job cancelled");
                self.inner.waiters.wake(id, Some(&job));
            }
            Err(store::Error::Transition(_) | store::Error::NotFound) => {}
            Err(e) => tracing::warn!(job.id = %id, error = %e, "could not cancel abandoned job"),
        }
    }

    /// Hands out a job from the first non-empty of `queues`, waiting up to
    /// `wait` for one to arrive.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] (also when shutdown begins during the wait);
    /// the store's `Unavailable`.
    pub async fn poll(&self, queues: &[Queue], wait: Duration) -> Result<Option<Job>> {
        self.check_accepting()?;
        let deadline = tokio::time::Instant::now() + wait;
        let signals = if wait.is_zero() {
            Vec::new()
        } else {
            self.inner.signals.signals(queues)
        };
        let _polling = (!wait.is_zero()).then(|| self.inner.signals.polling());
        loop {
            let mut notified = AnyNotified::new(&signals);
            if let Some(job) = self.claim(queues).await? {
                return Ok(Some(job));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::select! {
                _ = notified.wait() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.inner.stopping.cancelled() => return Err(Error::ShuttingDown),
            }
        }
    }

    async fn claim(&self, queues: &[Queue]) -> Result<Option<Job>> {
        let now = Timestamp::now();
        let p = ClaimParams {
            queues: queues.to_vec(),
            lease_id: LeaseId::new(),
            now,
            expires_at: now + self.inner.cfg.lease,
        };
        let Some(claimed) = self.store().claim(&p).await? else {
            return Ok(None);
        };
        if claimed.more_pending {
            // Pass the wake-up on: this worker may have been woken for another queue.
            for q in queues {
                self.inner.signals.job_ready(q);
            }
        }
        Ok(Some(claimed.job))
    }

    /// The job a poll of `queues` would get, without taking it.
    ///
    /// # Errors
    /// The store's `Unavailable`.
    pub async fn peek(&self, queues: &[Queue]) -> Result<Option<Job>> {
        Ok(self.store().peek(queues).await?)
    }

    /// Records a worker's result; the waiting client gets it.
    ///
    /// # Errors
    /// The store's `NotFound`, `Transition` (not running, stale lease), `Unavailable`.
    pub async fn complete(
        &self,
        id: JobId,
        lease_id: Option<LeaseId>,
        result: Bytes,
    ) -> Result<Job> {
        let p = CompleteParams {
            id,
            lease_id,
            result,
            now: Timestamp::now(),
        };
        let (job, how) = self.store().complete(&p).await?;
        if how == Completion::Completed {
            self.ended(&job, Status::Running);
        }
        Ok(job)
    }

    /// Records a worker's failure: back to pending while attempts remain and
    /// `retry` allows, else failed (the waiting client gets 502).
    ///
    /// # Errors
    /// As [`Broker::complete`].
    pub async fn fail(
        &self,
        id: JobId,
        lease_id: Option<LeaseId>,
        error: String,
        retry: bool,
    ) -> Result<Job> {
        let p = FailParams {
            id,
            lease_id,
            error,
            retry,
            max_attempts: self.inner.cfg.max_attempts,
            now: Timestamp::now(),
        };
        let job = self.store().fail(&p).await?;
        self.after_release(&job);
        Ok(job)
    }

    /// Extends a running job's lease by `--lease` from now.
    ///
    /// # Errors
    /// As [`Broker::complete`].
    pub async fn heartbeat(&self, id: JobId, lease_id: Option<LeaseId>) -> Result<Job> {
        let expires = Timestamp::now() + self.inner.cfg.lease;
        Ok(self.store().heartbeat(id, lease_id, expires).await?)
    }

    /// Cancels every pending and running job (of `queue`, if given) and
    /// forgets ended ones. Returns how many jobs were cancelled.
    ///
    /// # Errors
    /// The store's `Unavailable`.
    pub async fn clear(&self, queue: Option<&Queue>) -> Result<usize> {
        let cancelled = self.store().clear(queue, Timestamp::now()).await?;
        for id in &cancelled {
            self.inner.waiters.wake(*id, None);
        }
        self.inner.released.notify_waiters();
        Ok(cancelled.len())
    }

    /// Jobs, newest first.
    ///
    /// # Errors
    /// The store's `Unavailable`.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>> {
        Ok(self.store().list(filter).await?)
    }

    /// Counters for the admin API.
    ///
    /// # Errors
    /// The store's `Unavailable`.
    pub async fn stats(&self) -> Result<Stats> {
        Ok(Stats {
            counts: self.store().counts().await?,
            waiting_clients: self.inner.waiters.len(),
            polling_workers: self.inner.signals.polling_count(),
            uptime_s: self.inner.started.elapsed().as_secs(),
        })
    }

    /// Whether the store can serve, and the server is not shutting down.
    pub async fn healthy(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire) && self.store().healthy().await
    }

    /// A job left `Running` (`was`) or ended: wake whoever waits on it.
    fn ended(&self, job: &Job, was: Status) {
        if job.status.is_ended() {
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
    /// The store's `Unavailable`.
    pub async fn maintain(&self, purge: bool) -> Result<(usize, u64)> {
        let now = Timestamp::now();
        let rescued = self
            .store()
            .rescue_expired(now, self.inner.cfg.max_attempts)
            .await?;
        for job in &rescued {
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
