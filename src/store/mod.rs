//! The storage seam: one trait, one implementation per backend. The broker is
//! the only caller. Every state-changing method is conditional (it applies a
//! transition of [`crate::job`] only if the job is still in the state the
//! transition needs) and reports a refusal as a typed [`Error`], never as a
//! silent overwrite. Stores hold no policy: limits and attempt counts come in
//! as parameters, and `now` is passed in so tests control time.

mod collections;
pub mod embedded;
pub mod index;
pub mod memory;
pub mod postgres;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::job::{
    Completion, Job, JobId, LeaseId, NewJob, Queue, Status, Timestamp, TransitionError,
};
pub use crate::job::{Counts, JobRecord, StatusCounts};

/// Store errors. `Unavailable` is the only one that is not the caller's doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No job with this id (never existed, or forgotten after `--result-ttl`).
    #[error("job not found")]
    NotFound,
    /// The job is not in a state that allows this operation.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// `--max-queued` pending jobs already.
    #[error("queue is full ({0} jobs pending)")]
    QueueFull(u64),
    /// The idempotency key is already used for a different body or queue.
    #[error("Idempotency-Key was already used for a different request (other body or queue)")]
    IdempotencyMismatch,
    /// The backend cannot serve requests right now (I/O error, disk full,
    /// lost database connection). Nothing was changed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What `insert` did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// A new pending job was stored.
    Created(Job),
    /// The idempotency key matched an existing job; nothing was stored.
    Existing(Job),
}

/// Parameters of a hand-out.
#[derive(Debug, Clone)]
pub struct ClaimParams {
    /// Queues in order of preference: the first non-empty one wins.
    pub queues: Vec<Queue>,
    /// The new lease's id.
    pub lease_id: LeaseId,
    /// Hand-out time.
    pub now: Timestamp,
    /// When the lease runs out unless extended.
    pub expires_at: Timestamp,
}

#[cfg(test)]
impl ClaimParams {
    /// A hand-out from the `default` queue, for the stores' unit tests.
    pub(crate) fn default_queue(lease_id: LeaseId, now: Timestamp, expires_at: Timestamp) -> Self {
        ClaimParams {
            queues: vec![Queue::default_queue()],
            lease_id,
            now,
            expires_at,
        }
    }
}

/// A hand-out.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job, now running under the new lease.
    pub job: Job,
    /// Whether any of the polled queues still holds a pending job, so the
    /// broker can pass the wake-up on to another waiting worker.
    pub more_pending: bool,
}

/// Parameters of a worker's complete.
#[derive(Debug, Clone)]
pub struct CompleteParams {
    /// The job.
    pub id: JobId,
    /// The worker's lease, when it sent one (fencing); `None` applies to the current lease.
    pub lease_id: Option<LeaseId>,
    /// The result bytes.
    pub result: Bytes,
    /// Completion time.
    pub now: Timestamp,
}

/// Parameters of a worker's fail.
#[derive(Debug, Clone)]
pub struct FailParams {
    /// The job.
    pub id: JobId,
    /// The worker's lease, if sent.
    pub lease_id: Option<LeaseId>,
    /// The worker's error text.
    pub error: String,
    /// Whether the worker allows a retry.
    pub retry: bool,
    /// `--max-attempts`.
    pub max_attempts: u32,
    /// Failure time.
    pub now: Timestamp,
}

impl FailParams {
    /// This fail applied to `job` (see [`Job::fail`]): its new status.
    pub fn apply(&self, job: &mut Job) -> Result<Status, TransitionError> {
        job.fail(
            self.lease_id.as_ref(),
            &self.error,
            self.retry,
            self.max_attempts,
            self.now,
        )
    }
}

/// Parameters of a worker's heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatParams {
    /// The job.
    pub id: JobId,
    /// The worker's lease, if sent.
    pub lease_id: Option<LeaseId>,
    /// The lease's new end.
    pub expires_at: Timestamp,
}

impl HeartbeatParams {
    /// This heartbeat applied to `job` (see [`Job::heartbeat`]).
    pub fn apply(&self, job: &mut Job) -> Result<(), TransitionError> {
        job.heartbeat(self.lease_id.as_ref(), self.expires_at)
    }
}

/// Parameters of a worker's progress event.
#[derive(Debug, Clone)]
pub struct ProgressParams {
    /// The job.
    pub id: JobId,
    /// The worker's lease, if sent.
    pub lease_id: Option<LeaseId>,
    /// The lease's new end.
    pub expires_at: Timestamp,
    /// The event's bytes.
    pub data: Bytes,
}

impl ProgressParams {
    /// The heartbeat every progress event also is.
    pub fn beat(&self) -> HeartbeatParams {
        HeartbeatParams {
            id: self.id,
            lease_id: self.lease_id,
            expires_at: self.expires_at,
        }
    }
}

/// Filter for [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only jobs in this status.
    pub status: Option<Status>,
    /// Only jobs of this queue.
    pub queue: Option<Queue>,
    /// At most this many (newest first by `created_at`).
    pub limit: usize,
}

/// What one queue holds right now (the dashboard's and `/metrics`' gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueActivity {
    /// Pending jobs.
    pub pending: u64,
    /// Running jobs.
    pub running: u64,
    /// When the oldest pending job was submitted (`None`: none pending).
    pub oldest_pending: Option<Timestamp>,
}

/// A change that local waiters must hear about and the broker did not
/// signal itself: made elsewhere (another node on a shared database), or a
/// job made claimable before its insert returned (the embedded store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A job became pending in this queue (submitted, retried, rescued).
    JobReady(Queue),
    /// This job ended (completed, failed, cancelled).
    JobEnded(JobId),
    /// A progress event numbered `seq` of this job was kept by another node
    /// (read it with [`Store::progress_since`]).
    Progress(JobId, u64),
    /// Many jobs changed at once (a clear), or changes may have been
    /// missed: every waiter re-reads its job.
    Cleared,
}

/// Persistence for jobs. Cheap operations are still `async` so that backends
/// doing I/O (group commit, network) fit behind the same seam.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new pending job, unless its idempotency key is already taken
    /// (then returns that job) or `max_pending` jobs are pending.
    /// The job must be stored before any worker can claim it (the embedded
    /// store: committed to its WAL), and durable, as far as the backend
    /// promises durability, before this returns; so must the job an
    /// idempotency key attaches to, as it stands when returned.
    async fn insert(&self, job: NewJob, max_pending: u64) -> Result<Inserted>;

    /// As [`Store::insert`], for a submit whose client is answered only
    /// with the job's result (a sync submit): a backend whose durability is
    /// an fsync may let this insert wait for the next fsync that another
    /// change asks for (the job's complete, usually, which the write order
    /// makes durable only after the insert), within a bound of its own.
    /// It still returns only once the job is durable, and the job is
    /// claimable as soon as `insert` would make it so.
    async fn insert_for_result(&self, job: NewJob, max_pending: u64) -> Result<Inserted> {
        self.insert(job, max_pending).await
    }

    /// Hands out the best pending job of the first non-empty queue
    /// (highest priority, then oldest), or `None`.
    async fn claim(&self, p: &ClaimParams) -> Result<Option<Claimed>>;

    /// The job `claim` would hand out now, without taking it.
    async fn peek(&self, queues: &[Queue]) -> Result<Option<Job>>;

    /// Applies [`Job::complete`]. Returns the job as it now stands.
    async fn complete(&self, p: &CompleteParams) -> Result<(Job, Completion)>;

    /// A busy worker's complete-and-take-next: [`Store::complete`], then,
    /// only if that succeeded, [`Store::claim`] with `next`. The claim's own
    /// outcome is apart, so a complete that was applied is reported even if
    /// the claim fails. A backend may make both one transaction (PostgreSQL:
    /// one statement, one commit); this default makes them two calls.
    async fn complete_and_claim(
        &self,
        p: &CompleteParams,
        next: &ClaimParams,
    ) -> Result<((Job, Completion), Result<Option<Claimed>>)> {
        let done = self.complete(p).await?;
        Ok((done, self.claim(next).await))
    }

    /// Whether [`Store::complete_and_claim`] does more than its default
    /// (one transaction); the broker uses it only then, so the other stores
    /// take the complete-and-next path they always took.
    fn fuses_complete_and_claim(&self) -> bool {
        false
    }

    /// Applies [`Job::fail`]. Returns the job as it now stands.
    async fn fail(&self, p: &FailParams) -> Result<Job>;

    /// Applies [`Job::heartbeat`]. Returns the job as it now stands.
    async fn heartbeat(&self, p: &HeartbeatParams) -> Result<Job>;

    /// A progress event of a running job: applies [`Job::heartbeat`]
    /// (fenced like it, extending the lease) and, on a store shared by
    /// several nodes, keeps the event for the others and numbers it.
    /// Returns the job as it now stands and the event's number (`None`:
    /// this store does not number events; the broker does).
    async fn progress(&self, p: &ProgressParams) -> Result<(Job, Option<u64>)> {
        let job = self.heartbeat(&p.beat()).await?;
        Ok((job, None))
    }

    /// Job `id`'s progress events after `after`, oldest first, as kept by a
    /// shared store ([`Store::progress`] numbered them), with the highest
    /// `seq` it no longer keeps (older ones count as dropped). Stores that
    /// keep no events return nothing.
    async fn progress_since(&self, id: JobId, after: u64) -> Result<(Vec<(u64, Bytes)>, u64)> {
        let _ = (id, after);
        Ok((Vec::new(), 0))
    }

    /// Whether [`Store::progress`] keeps events for other nodes (read them
    /// with [`Store::progress_since`]).
    fn shares_progress(&self) -> bool {
        false
    }

    /// Applies [`Job::release`]: the hand-out under `lease_id` reached no
    /// worker. Returns the job as it now stands (pending).
    async fn release(&self, id: JobId, lease_id: LeaseId) -> Result<Job>;

    /// Applies [`Job::cancel`]; with `only_pending`, refuses running jobs too
    /// (a disconnected client cancels only what no worker has started).
    async fn cancel(&self, id: JobId, only_pending: bool, now: Timestamp) -> Result<Job>;

    /// Cancels every pending and running job (of one queue, if given) and
    /// forgets every ended one. Returns the ids of the jobs it cancelled.
    async fn clear(&self, queue: Option<&Queue>, now: Timestamp) -> Result<Vec<JobId>>;

    /// One job, with its queue position while pending.
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>>;

    /// Jobs, newest first.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>>;

    /// Counts per status and queue.
    async fn counts(&self) -> Result<Counts>;

    /// Pending and running jobs per queue, with the oldest pending job's
    /// submit time; queues with neither are left out.
    async fn activity(&self) -> Result<std::collections::BTreeMap<String, QueueActivity>>;

    /// Whether [`Store::activity`] is cheap enough to call every second
    /// (an in-memory index); a shared database is asked less often.
    fn activity_is_cheap(&self) -> bool {
        true
    }

    /// Applies [`Job::expire_lease`] to every running job whose lease ran out
    /// by `now`. Returns the jobs it changed, as they now stand.
    async fn rescue_expired(&self, now: Timestamp, max_attempts: u32) -> Result<Vec<Job>>;

    /// Forgets jobs that ended more than `ttl` before `now`. Returns how many.
    async fn purge_expired(&self, ttl: Duration, now: Timestamp) -> Result<u64>;

    /// Pending jobs, for back-pressure. May be approximate for shared stores.
    fn pending_count(&self) -> u64;

    /// Changes the broker did not make itself, for it to relay to local
    /// waiters: those of other processes sharing this store, and jobs that
    /// become claimable before `insert` returns. Called once, by the broker;
    /// `None` for stores that have none.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>> {
        None
    }

    /// Whether the store itself sends [`StoreEvent::JobReady`] for the jobs
    /// it inserts (the embedded store does, as soon as a job is claimable,
    /// before `insert` returns), so the broker must not wake a worker again.
    fn announces_inserts(&self) -> bool {
        false
    }

    /// Whether the store can serve requests (for `/health`).
    async fn healthy(&self) -> bool {
        true
    }

    /// Makes everything written so far durable and releases resources.
    /// Called once at shutdown; later calls may fail.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// When the embedded store's commits reach the disk (`--sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fdatasync the WAL before acknowledging a write: it survives power loss.
    #[default]
    Full,
    /// Acknowledge once written to the WAL (it survives a crash of jobq,
    /// `kill -9`) and fdatasync it within 50 ms: a crash of the machine
    /// loses at most that much.
    Normal,
}

/// Which backend to open, and where.
#[derive(Debug, Clone)]
pub enum Backend {
    /// In memory, nothing survives a restart.
    Memory,
    /// SQLite in `data_dir`.
    Embedded {
        /// `--data-dir`.
        data_dir: std::path::PathBuf,
        /// `--sync`.
        sync: SyncMode,
        /// `--max-attempts`: a job running when the server stopped goes back
        /// to pending only while it has attempts left.
        max_attempts: u32,
    },
    /// A PostgreSQL database shared by any number of nodes.
    Postgres {
        /// `--postgres-url`, e.g. `postgres://user@host:5432/jobq`.
        url: String,
        /// `--postgres-pool-size`: most connections this node opens for requests.
        pool_size: usize,
    },
}

/// Why a store could not be opened (start-up errors: one clear line each).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The backend refused to start; the text names the path or address.
    #[error("{0}")]
    Failed(String),
}

/// Opens (and for durable backends, recovers) the store.
///
/// # Errors
/// [`OpenError`] naming the path or address that failed.
pub async fn open(backend: &Backend) -> Result<std::sync::Arc<dyn Store>, OpenError> {
    match backend {
        Backend::Memory => Ok(std::sync::Arc::new(memory::MemoryStore::new())),
        Backend::Embedded {
            data_dir,
            sync,
            max_attempts,
        } => {
            let (dir, sync, max) = (data_dir.clone(), *sync, *max_attempts);
            // Opening reads every job into memory: keep it off the async threads.
            let store =
                tokio::task::spawn_blocking(move || embedded::EmbeddedStore::open(&dir, sync, max))
                    .await
                    .map_err(|e| {
                        OpenError::Failed(format!("opening the embedded store panicked: {e}"))
                    })??;
            Ok(std::sync::Arc::new(store))
        }
        Backend::Postgres { url, pool_size } => Ok(std::sync::Arc::new(
            postgres::PostgresStore::open(url, *pool_size).await?,
        )),
    }
}
