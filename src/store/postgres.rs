//! The PostgreSQL backend (`--postgres-url`): several `jobq serve` nodes on
//! one database. It owns its SQL and its migrations
//! (`migrations/postgres/*.sql`) and nothing else: policy (retries, leases,
//! limits) comes in as parameters, exactly as for the other stores.
//!
//! - Every transition is ONE conditional statement (`… where status =
//!   'running' and lease_id = …`) mirroring the rules of [`crate::job`]; a
//!   statement that matched no row re-reads the job and lets the pure rule
//!   name the refusal, so the answers are the embedded store's.
//! - Hand-out: `for update skip locked`, so two nodes never get one job and a
//!   locked head of the queue never blocks the next one.
//! - Cross-node wake-ups: every change that another node's waiters care about
//!   is announced with `pg_notify('jobq', '<node> <kind> <arg>')` once it has
//!   committed, never for a rolled-back change. Not by the statement that
//!   makes the change: a transaction that notifies holds a database-wide lock
//!   from its commit until its commit record is flushed, so notifying commits
//!   run one at a time, each waiting for its own WAL flush (measured: submits
//!   and completes queued on that lock; sending notifications apart gave
//!   +47–55% jobs/s on one node). A notifier task sends what the node's
//!   requests queued meanwhile in one statement instead. One dedicated
//!   connection per node LISTENs, reconnecting with backoff; after a
//!   reconnect it emits [`StoreEvent::Cleared`] so waiters re-read what they
//!   may have missed. Fallbacks for lost notifications: once a second, the
//!   cached pending count is refreshed and every queue that holds pending
//!   jobs is signalled (a hand-out is delayed by at most ~1 s); every 10 s,
//!   every waiter re-reads its job (a node that died between a commit and
//!   its notification delays clients on other nodes by at most ~10 s).
//! - Connection failures become [`Error::Unavailable`] (HTTP 503); the pool
//!   replaces dead connections on the next checkout, so a restarted server is
//!   picked up without a restart of jobq.
//! - Times are the broker's `now` (bigint microseconds): nodes need
//!   synchronised clocks (NTP); a skew of `s` moves lease expiry by `s`.

mod batch;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    ClaimParams, Claimed, CompleteParams, Counts, Error, FailParams, HeartbeatParams, Inserted,
    JobRecord, ListFilter, OpenError, ProgressParams, QueueActivity, Result, Store, StoreEvent,
};
use batch::Batcher;

use crate::job::{
    Completion, Idempotency, Job, JobId, LeaseId, NewJob, Queue, Status, Timestamp,
    TransitionError, LEASE_EXPIRED_ERROR,
};

/// Default `--postgres-pool-size`.
pub const POOL_SIZE_DEFAULT: usize = 16;

/// The NOTIFY channel every node LISTENs on.
const CHANNEL: &str = "jobq";

/// Key of the advisory lock that serialises migrations between nodes
/// starting at once ("jobq" in ASCII).
const MIGRATION_LOCK: i64 = 0x6a6f_6271;

/// Schema migrations, in order: (version, name, SQL). Applied in one
/// transaction under [`MIGRATION_LOCK`].
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "jobs",
        include_str!("../../migrations/postgres/0001_jobs.sql"),
    ),
    (
        2,
        "progress",
        include_str!("../../migrations/postgres/0002_progress.sql"),
    ),
    (
        3,
        "partial idempotency key index",
        include_str!("../../migrations/postgres/0003_partial_idem_index.sql"),
    ),
];

/// Progress events kept per job: the newest this many (the broker's
/// in-memory buffer keeps as many).
const PROGRESS_KEPT: i64 = 1000;

/// How long a checkout, a new connection or a recycle check may take before
/// the request is answered 503.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the pending count is refreshed and pending queues are signalled
/// (the polling fallback behind LISTEN/NOTIFY).
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// How often every waiting client re-reads its job: the fallback for an
/// end that another node committed but could not announce (it died between
/// the commit and the notification).
const RECHECK_EVERY: Duration = Duration::from_secs(10);

/// Longest pause between two attempts of the listener to reconnect.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How often the LISTEN connection is checked with a query (and how long
/// the answer may take): a connection that stopped answering is replaced.
const LISTEN_PING: Duration = Duration::from_secs(5);

/// Most changes announced in one statement.
const NOTIFY_BATCH: usize = 1024;

/// Longest a statement sending notifications may take; and the pause before
/// trying again after one failed.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// Most pollers one `r` notification wakes on a node.
const MAX_WAKES: usize = 64;

/// A transition that raced with another one (the re-read shows it is legal
/// again) is retried this many times before giving up with 503.
const RACE_RETRIES: usize = 5;

/// Most requests of one kind (inserts, completes, claims) in one statement.
const BATCH_MAX: usize = 128;

/// Insert batches under way at once. While they all run, submits queue for
/// the next one: more would mean smaller batches and more commits; fewer,
/// submits waiting for a whole commit doing nothing. Submits are many (one
/// per waiting client) and off the workers' path: a job waits for a worker
/// anyway while others are pending.
const INSERTS_IN_FLIGHT: usize = 2;

/// Complete and claim batches under way at once. Each worker runs one job
/// at a time, and waiting for a batch slot lengthens every job of that
/// worker by up to a commit (measured with 8 workers and two slots: fewer
/// jobs/s than without batches), so up to this many go at once and they
/// share a statement only beyond it, or when they arrive together.
const WORKER_BATCHES_IN_FLIGHT: usize = 8;

/// The job columns, in the order [`job_from_row`] reads them.
macro_rules! cols {
    () => {
        "id, queue, payload, headers, priority, status, attempts, created_at, started_at, \
         ended_at, lease_id, lease_expires_at, result, error, idem_key, idem_fingerprint"
    };
}

/// Number of columns in [`cols!`].
const NCOLS: usize = 16;

/// The cached pending count: exact for this node's own changes, refreshed
/// from the database for everyone else's.
#[derive(Debug, Default)]
struct PendingCache {
    /// Pending jobs, as last known.
    count: u64,
    /// Bumped by every local change, so a refresh that overlapped one does
    /// not overwrite it with an older figure.
    epoch: u64,
    /// Local changes under way. A refresh that ran while one was under way
    /// is dropped: its query may have seen the change committed before the
    /// change was added here, and would count it twice.
    in_flight: u32,
}

impl PendingCache {
    /// A local change that may move the count begins.
    fn begin(&mut self) {
        self.in_flight += 1;
        self.epoch += 1;
    }

    /// The change's effect on the count, once it has committed.
    fn adjust(&mut self, delta: i64) {
        self.count = self.count.saturating_add_signed(delta);
        self.epoch += 1;
    }

    /// The change is over (applied or failed).
    fn end(&mut self) {
        self.in_flight -= 1;
        self.epoch += 1;
    }

    /// A count read from the database by a refresh that began at `epoch`:
    /// taken only if no local change began, ended or was under way since.
    fn refreshed(&mut self, epoch: u64, total: u64) {
        if self.epoch == epoch && self.in_flight == 0 {
            self.count = total;
        }
    }
}

/// Marks a local change that may move the pending count as under way.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().end();
    }
}

/// What the store's background tasks share with it.
struct Shared {
    /// Bounded connection pool for every request.
    pool: Pool,
    /// This process's id in NOTIFY payloads (its own are ignored: the broker
    /// already woke local waiters).
    node: String,
    /// See [`PendingCache`].
    pending: Mutex<PendingCache>,
    /// Where [`StoreEvent`]s go; the receiver is handed out by `subscribe`.
    events: mpsc::UnboundedSender<StoreEvent>,
}

/// `--storage postgres`.
pub struct PostgresStore {
    /// State shared with the background tasks.
    shared: Arc<Shared>,
    /// Taken once by [`Store::subscribe`].
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<StoreEvent>>>,
    /// Stops the listener and refresher (on close, or when dropped).
    stop: CancellationToken,
    /// Queues this node's notifications for the notifier task; taken on
    /// close, which lets the task send what is left and end.
    notes: Mutex<Option<mpsc::UnboundedSender<Note>>>,
    /// The notifier task, awaited on close.
    notifier: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where concurrent inserts, completes and claims meet to share a statement.
    batches: Batches,
}

/// A connection or statement failure: nothing was changed (or, for a lost
/// connection mid-commit, the caller cannot know; it gets 503 either way).
fn db_err(e: tokio_postgres::Error) -> Error {
    Error::Unavailable(format!("postgres: {}", chain(&e)))
}

/// An error with its causes (`error connecting to server: Connection refused`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    Error::Unavailable(format!("postgres connection pool: {e}"))
}

fn bad_row(what: &str) -> Error {
    Error::Unavailable(format!("postgres: unexpected row content ({what})"))
}

/// A column that cannot be read as the type asked for (`Row::get` would panic).
fn get_err(e: tokio_postgres::Error) -> Error {
    bad_row(&e.to_string())
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

/// Reads a job from the first [`NCOLS`] columns of `row`.
fn job_from_row(row: &Row) -> Result<Job> {
    let id: Uuid = row.try_get(0).map_err(get_err)?;
    let queue: String = row.try_get(1).map_err(get_err)?;
    let status: String = row.try_get(5).map_err(get_err)?;
    let attempts: i32 = row.try_get(6).map_err(get_err)?;
    let idem_key: Option<String> = row.try_get(14).map_err(get_err)?;
    let fingerprint: Option<Vec<u8>> = row.try_get(15).map_err(get_err)?;
    let idempotency = match (idem_key, fingerprint) {
        (Some(key), Some(fp)) => Some(Box::new(Idempotency {
            key,
            fingerprint: fp.try_into().map_err(|_| bad_row("fingerprint"))?,
        })),
        _ => None,
    };
    Ok(Job {
        id: JobId(id),
        queue: Queue::parse(&queue).map_err(|_| bad_row("queue"))?,
        payload: Bytes::from(row.try_get::<_, Vec<u8>>(2).map_err(get_err)?),
        headers: Bytes::from(row.try_get::<_, Vec<u8>>(3).map_err(get_err)?),
        priority: row.try_get(4).map_err(get_err)?,
        status: Status::from_str(&status).map_err(|_| bad_row("status"))?,
        attempts: u32::try_from(attempts).map_err(|_| bad_row("attempts"))?,
        created_at: Timestamp(row.try_get(7).map_err(get_err)?),
        started_at: ts(row.try_get(8).map_err(get_err)?),
        ended_at: ts(row.try_get(9).map_err(get_err)?),
        lease_id: row
            .try_get::<_, Option<Uuid>>(10)
            .map_err(get_err)?
            .map(JobId),
        lease_expires_at: ts(row.try_get(11).map_err(get_err)?),
        result: row
            .try_get::<_, Option<Vec<u8>>>(12)
            .map_err(get_err)?
            .map(Bytes::from),
        error: row.try_get(13).map_err(get_err)?,
        idempotency,
    })
}

/// Where a connection goes, for messages: never the password.
fn describe(cfg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg
        .get_dbname()
        .or(cfg.get_user())
        .unwrap_or("postgres")
        .to_owned();
    format!("postgres://{host}:{port}/{db}")
}

/// Applies the migrations this binary knows and the database lacks, in one
/// transaction under an advisory lock (nodes starting together wait for the
/// first one and then find nothing to do).
async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), String> {
    let e = |e: tokio_postgres::Error| format!("migration failed: {}", chain(&e));
    let tx = client.transaction().await.map_err(e)?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(e)?;
    tx.batch_execute(
        "create table if not exists jobq_schema_migrations (
             version integer primary key,
             name text not null,
             applied_at timestamptz not null default now())",
    )
    .await
    .map_err(e)?;
    let applied: Vec<i32> = tx
        .query("select version from jobq_schema_migrations", &[])
        .await
        .map_err(e)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(newer) = applied.iter().copied().filter(|v| *v > latest).max() {
        return Err(format!(
            "database schema version {newer} is newer than this jobq knows ({latest}); upgrade jobq"
        ));
    }
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await.map_err(e)?;
        tx.execute(
            "insert into jobq_schema_migrations (version, name) values ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(e)?;
        tracing::info!(version, name, "applied PostgreSQL migration");
    }
    tx.commit().await.map_err(e)
}

impl PostgresStore {
    /// Connects, migrates the schema, and starts the listener and the
    /// pending-count refresher. Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// [`OpenError`] naming the database (without password) when the URL is
    /// malformed, the server cannot be reached, or a migration fails.
    pub async fn open(url: &str, pool_size: usize) -> Result<Self, OpenError> {
        if url.trim().is_empty() {
            return Err(OpenError::Failed(
                "--storage postgres needs --postgres-url".into(),
            ));
        }
        let mut cfg = tokio_postgres::Config::from_str(url)
            .map_err(|e| OpenError::Failed(format!("invalid --postgres-url: {e}")))?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(POOL_TIMEOUT);
        }
        cfg.application_name("jobq");
        // Notice a silently dead connection (a partition without a reset)
        // within about half a minute instead of the OS default of hours.
        cfg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let target = describe(&cfg);
        let unreachable = |e: &dyn std::fmt::Display| {
            OpenError::Failed(format!("cannot use PostgreSQL at {target}: {e}"))
        };

        let (mut client, conn) = cfg
            .connect(NoTls)
            .await
            .map_err(|e| unreachable(&chain(&e)))?;
        let conn_task = tokio::spawn(conn);
        let migrated = migrate(&mut client).await;
        drop(client);
        let _ = conn_task.await;
        migrated.map_err(|e| unreachable(&e))?;

        let manager = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| unreachable(&e))?;

        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pool,
            node: Uuid::new_v4().simple().to_string(),
            pending: Mutex::new(PendingCache::default()),
            events: tx,
        });
        shared.refresh().await.map_err(|e| unreachable(&e))?;
        let stop = CancellationToken::new();
        tokio::spawn(listen(cfg, shared.clone(), stop.clone()));
        tokio::spawn(refresh_loop(shared.clone(), stop.clone()));
        let (notes, notes_rx) = mpsc::unbounded_channel();
        let notifier = tokio::spawn(notifier(shared.pool.clone(), shared.node.clone(), notes_rx));
        let batches = Batches::start(&shared.pool);
        tracing::info!(database = %target, pool_size, "PostgreSQL store ready");
        Ok(PostgresStore {
            shared,
            events_rx: Mutex::new(Some(rx)),
            stop,
            notes: Mutex::new(Some(notes)),
            notifier: Mutex::new(Some(notifier)),
            batches,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.shared.pool.get().await.map_err(pool_err)
    }

    /// Runs `sql` (a prepared, cached statement) and returns its rows.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
        let began = std::time::Instant::now();
        let rows = client.query(&stmt, params).await.map_err(db_err)?;
        crate::metrics::store_commit("postgres", 1, began.elapsed());
        Ok(rows)
    }

    /// The job, or `None`.
    async fn read(&self, id: JobId) -> Result<Option<Job>> {
        const SQL: &str = concat!("select ", cols!(), " from jobq_jobs where id = $1");
        self.query(SQL, &[&id.0])
            .await?
            .first()
            .map(job_from_row)
            .transpose()
    }

    /// After a conditional update matched no row: re-reads the job and lets
    /// the pure rule `rule` say why (`Ok(Some(v))`: answer `v`; `Ok(None)`:
    /// the transition is legal after all, so it raced and is retried).
    async fn refusal<T>(
        &self,
        id: JobId,
        rule: impl FnOnce(&mut Job) -> Result<Option<T>, TransitionError>,
    ) -> Result<Option<T>> {
        let mut job = self.read(id).await?.ok_or(Error::NotFound)?;
        Ok(rule(&mut job)?)
    }

    fn prefix(&self) -> String {
        format!("{} ", self.shared.node)
    }

    /// Announces a committed change of `job` to the other nodes.
    fn notify(&self, job: &Job) {
        let note = if job.status == Status::Pending {
            Note::Ready(job.queue.clone())
        } else {
            Note::Ended(job.id)
        };
        if let Some(tx) = &*self.notes.lock() {
            let _ = tx.send(note);
        }
    }
}

/// A new job's row, for a batched insert.
struct InsertRow {
    id: Uuid,
    queue: Queue,
    payload: Bytes,
    headers: Bytes,
    priority: i32,
    created_at: i64,
    key: Option<String>,
    fingerprint: Option<Vec<u8>>,
}

/// The arguments of one complete's conditional update.
struct CompleteRow {
    id: Uuid,
    lease: Option<Uuid>,
    result: Bytes,
    now: i64,
}

/// One claim of one queue; `polled` are all the queues of the poll (for
/// [`Claimed::more_pending`]).
struct ClaimRow {
    queue: Queue,
    polled: Vec<Queue>,
    lease: Uuid,
    now: i64,
    expires_at: i64,
}

/// The three batchers. Each answers every caller with its own outcome:
/// `Some(job)` when its row changed, `None` when its condition did not hold
/// (the caller then re-reads the job and names the refusal, as before).
struct Batches {
    /// `Some`: inserted; `None`: the idempotency key is taken.
    insert: Batcher<InsertRow, Option<Job>>,
    /// `Some`: completed; `None`: not running under that lease.
    complete: Batcher<CompleteRow, Option<Job>>,
    /// `Some`: handed out; `None`: nothing pending in that queue.
    claim: Batcher<ClaimRow, Option<Claimed>>,
}

impl Batches {
    fn start(pool: &Pool) -> Self {
        let p = pool.clone();
        let insert = Batcher::start(BATCH_MAX, INSERTS_IN_FLIGHT, move |rows| {
            let p = p.clone();
            async move { each_row(&p, &rows, |p, r| Box::pin(insert_rows(p, r))).await }
        });
        let p = pool.clone();
        let complete = Batcher::start(BATCH_MAX, WORKER_BATCHES_IN_FLIGHT, move |rows| {
            let p = p.clone();
            async move { each_row(&p, &rows, |p, r| Box::pin(complete_rows(p, r))).await }
        });
        let p = pool.clone();
        let claim = Batcher::start(BATCH_MAX, WORKER_BATCHES_IN_FLIGHT, move |rows| {
            let p = p.clone();
            async move { claim_batch(&p, rows).await }
        });
        Batches {
            insert,
            complete,
            claim,
        }
    }
}

/// A batch statement that failed. `alone`: PostgreSQL refused the statement
/// itself (a row's data, a deadlock between two batches), so each row is
/// tried alone and one bad row does not fail the others. Otherwise (the
/// connection was lost, the pool timed out) every row gets the same 503.
struct BatchError {
    alone: bool,
    error: Error,
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(e: tokio_postgres::Error) -> Self {
        BatchError {
            alone: e.code().is_some(),
            error: db_err(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for BatchError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        BatchError {
            alone: false,
            error: pool_err(e),
        }
    }
}

/// The answers of one statement on a batch of rows: one per row, in order.
type RowsResult<O> = std::result::Result<Vec<Result<O>>, BatchError>;

/// A statement on a batch of rows, borrowing them.
type RowsFuture<'a, O> = Pin<Box<dyn Future<Output = RowsResult<O>> + Send + 'a>>;

/// Runs `stmt` on all `rows` in one statement; if PostgreSQL refuses it,
/// runs it on each row alone (one after another: this is the rare path).
async fn each_row<R, O>(
    pool: &Pool,
    rows: &[R],
    stmt: impl for<'a> Fn(&'a Pool, &'a [R]) -> RowsFuture<'a, O>,
) -> Vec<Result<O>> {
    let whole = stmt(pool, rows).await;
    match whole {
        Ok(out) => out,
        Err(e) if e.alone && rows.len() > 1 => {
            tracing::debug!(error = %e.error, rows = rows.len(), "batch refused; trying its rows alone");
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(match stmt(pool, std::slice::from_ref(row)).await {
                    Ok(mut one) => one
                        .pop()
                        .unwrap_or_else(|| Err(Error::Unavailable("no answer".into()))),
                    Err(e) => Err(e.error),
                });
            }
            out
        }
        Err(e) => {
            let text = e.error.to_string();
            rows.iter()
                .map(|_| Err(Error::Unavailable(text.clone())))
                .collect()
        }
    }
}

/// Runs `sql` (prepared once per connection) on a connection of the pool.
async fn batch_query(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    rows: usize,
) -> std::result::Result<Vec<Row>, BatchError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(sql).await?;
    let began = std::time::Instant::now();
    let out = client.query(&stmt, params).await?;
    crate::metrics::store_commit("postgres", rows, began.elapsed());
    Ok(out)
}

/// The `i`th row's answer among `found` (returned rows keyed by row index):
/// `Some(job)` if the statement returned its row.
fn answers<T>(n: usize, found: Vec<(usize, Result<T>)>) -> Vec<Result<Option<T>>> {
    let mut out: Vec<Result<Option<T>>> = (0..n).map(|_| Ok(None)).collect();
    for (i, r) in found {
        if let Some(slot) = out.get_mut(i) {
            *slot = r.map(Some);
        }
    }
    out
}

/// Inserts new jobs in one statement; a taken idempotency key (by an
/// earlier job or one earlier in the same batch) is a `None`.
async fn insert_rows<'a>(pool: &'a Pool, rows: &'a [InsertRow]) -> RowsResult<Option<Job>> {
    const SQL: &str = concat!(
        "with ins as (insert into jobq_jobs ",
        "(id, queue, payload, headers, priority, status, created_at, idem_key, idem_fingerprint) ",
        "select v_id, v_queue, v_payload, v_headers, v_priority, 'pending', v_created, v_key, v_fp ",
        "from unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[], $5::int4[], $6::int8[], ",
        "$7::text[], $8::bytea[]) ",
        "as v(v_id, v_queue, v_payload, v_headers, v_priority, v_created, v_key, v_fp) ",
        "on conflict (idem_key) where idem_key is not null do nothing returning ",
        cols!(),
        ") select ins.* from ins"
    );
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let queues: Vec<&str> = rows.iter().map(|r| r.queue.as_str()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_ref()).collect();
    let headers: Vec<&[u8]> = rows.iter().map(|r| r.headers.as_ref()).collect();
    let priorities: Vec<i32> = rows.iter().map(|r| r.priority).collect();
    let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.key.as_deref()).collect();
    let fps: Vec<Option<&[u8]>> = rows.iter().map(|r| r.fingerprint.as_deref()).collect();
    let returned = batch_query(
        pool,
        SQL,
        &[
            &ids,
            &queues,
            &payloads,
            &headers,
            &priorities,
            &created,
            &keys,
            &fps,
        ],
        rows.len(),
    )
    .await?;
    let index: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut found = Vec::with_capacity(returned.len());
    for row in &returned {
        let id: Uuid = row.try_get(0).map_err(|e| BatchError {
            alone: false,
            error: get_err(e),
        })?;
        if let Some(&i) = index.get(&id) {
            found.push((i, job_from_row(row)));
        }
    }
    Ok(answers(rows.len(), found))
}

/// Completes jobs in one statement, each only if running (under its lease,
/// when given). When two rows name the same job, at most one applies; the
/// other is a `None` and its caller re-reads the job, as after a race.
async fn complete_rows<'a>(pool: &'a Pool, rows: &'a [CompleteRow]) -> RowsResult<Option<Job>> {
    const SQL: &str = concat!(
        "with u as (update jobq_jobs set status = 'completed', result = v_result, error = null, ",
        "ended_at = v_now, lease_expires_at = null ",
        "from unnest($1::uuid[], $2::uuid[], $3::bytea[], $4::int8[]) with ordinality ",
        "as v(v_id, v_lease, v_result, v_now, v_n) ",
        "where id = v_id and status = 'running' and (v_lease is null or lease_id = v_lease) ",
        "returning ",
        cols!(),
        ", v_n) select u.* from u"
    );
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let leases: Vec<Option<Uuid>> = rows.iter().map(|r| r.lease).collect();
    let results: Vec<&[u8]> = rows.iter().map(|r| r.result.as_ref()).collect();
    let nows: Vec<i64> = rows.iter().map(|r| r.now).collect();
    let returned = batch_query(pool, SQL, &[&ids, &leases, &results, &nows], rows.len()).await?;
    Ok(answers(
        rows.len(),
        numbered(&returned, NCOLS, job_from_row)?,
    ))
}

/// Returned rows with the 1-based row number in column `at`, as
/// (index, decoded row).
fn numbered<T>(
    returned: &[Row],
    at: usize,
    decode: impl Fn(&Row) -> Result<T>,
) -> std::result::Result<Vec<(usize, Result<T>)>, BatchError> {
    returned
        .iter()
        .map(|row| {
            let n: i64 = row.try_get(at).map_err(|e| BatchError {
                alone: false,
                error: get_err(e),
            })?;
            Ok((usize::try_from(n - 1).unwrap_or(usize::MAX), decode(row)))
        })
        .collect()
}

/// Claims for several polls at once: those of one queue (and the same
/// polled queues) share one statement that takes as many jobs.
async fn claim_batch(pool: &Pool, rows: Vec<ClaimRow>) -> Vec<Result<Option<Claimed>>> {
    let mut out: Vec<Result<Option<Claimed>>> = (0..rows.len()).map(|_| Ok(None)).collect();
    let mut rest: Vec<(usize, ClaimRow)> = rows.into_iter().enumerate().collect();
    while !rest.is_empty() {
        let (queue, polled) = (rest[0].1.queue.clone(), rest[0].1.polled.clone());
        let (group, others): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|(_, r)| r.queue == queue && r.polled == polled);
        rest = others;
        let (at, group): (Vec<usize>, Vec<ClaimRow>) = group.into_iter().unzip();
        let answers = each_row(pool, &group, |p, r| Box::pin(claim_rows(p, r))).await;
        for (i, a) in at.into_iter().zip(answers) {
            out[i] = a;
        }
    }
    out
}

/// Takes up to `rows.len()` jobs of one queue in one statement (best
/// first), the first for the first row, and so on.
async fn claim_rows<'a>(pool: &'a Pool, rows: &'a [ClaimRow]) -> RowsResult<Option<Claimed>> {
    const SQL: &str = concat!(
        "with picked as (select id, priority, seq from jobq_jobs ",
        "where status = 'pending' and queue = $1 ",
        "order by priority desc, seq limit $2 for update skip locked), ",
        "n as (select id as n_id, row_number() over (order by priority desc, seq) as n_rn from picked), ",
        "l as (select * from unnest($3::uuid[], $4::int8[], $5::int8[]) with ordinality ",
        "as l(l_lease, l_now, l_expires, l_rn)), ",
        "u as (update jobq_jobs set status = 'running', attempts = attempts + 1, ",
        "started_at = l_now, lease_id = l_lease, lease_expires_at = l_expires ",
        "from n join l on l_rn = n_rn where id = n_id and status = 'pending' returning ",
        cols!(),
        ", exists (select 1 from jobq_jobs p where p.status = 'pending' ",
        "and p.queue = any($6) and p.id not in (select n_id from n)), l_rn) ",
        "select u.* from u"
    );
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let limit = rows.len() as i64;
    let leases: Vec<Uuid> = rows.iter().map(|r| r.lease).collect();
    let nows: Vec<i64> = rows.iter().map(|r| r.now).collect();
    let expires: Vec<i64> = rows.iter().map(|r| r.expires_at).collect();
    let polled: Vec<&str> = first.polled.iter().map(|q| q.as_str()).collect();
    let returned = batch_query(
        pool,
        SQL,
        &[
            &first.queue.as_str(),
            &limit,
            &leases,
            &nows,
            &expires,
            &polled,
        ],
        rows.len(),
    )
    .await?;
    let found = numbered(&returned, NCOLS + 1, |row| {
        Ok(Claimed {
            job: job_from_row(row)?,
            more_pending: row.try_get(NCOLS).map_err(|_| bad_row("more"))?,
        })
    })?;
    Ok(answers(rows.len(), found))
}

/// A committed change other nodes' waiters care about.
#[derive(Debug)]
enum Note {
    /// A job is pending in this queue.
    Ready(Queue),
    /// This job has ended.
    Ended(JobId),
    /// This job has a progress event numbered so.
    Progress(JobId, u64),
}

/// Sends the notifications queued by this node's requests until the sending
/// side is dropped: whatever queued while the previous statement ran goes
/// into the next one, as `<node> r <queue> <n>` (n jobs became pending
/// there: wake up to n pollers) and `<node> e <id>` payloads.
///
/// When a statement fails (PostgreSQL unreachable, its NOTIFY queue full),
/// those notifications are lost. The next statement that succeeds also sends
/// `<node> c`, on which other nodes' waiters re-read their jobs; while that
/// is owed, a statement is tried every [`NOTIFY_TIMEOUT`] even if nothing
/// new happens.
async fn notifier(pool: Pool, node: String, mut rx: mpsc::UnboundedReceiver<Note>) {
    let mut lost = false;
    let mut open = true;
    let mut tries_after_close = 0;
    loop {
        let mut ready: BTreeMap<Queue, usize> = BTreeMap::new();
        let mut ended: Vec<JobId> = Vec::new();
        // The last event per job is enough: a node reads all it lacks.
        let mut progress: Vec<(JobId, u64)> = Vec::new();
        let mut add = |n: Note| match n {
            Note::Ready(q) => *ready.entry(q).or_default() += 1,
            Note::Ended(id) => ended.push(id),
            Note::Progress(id, seq) => match progress.iter_mut().find(|(j, _)| *j == id) {
                Some(p) => p.1 = p.1.max(seq),
                None => progress.push((id, seq)),
            },
        };
        if open {
            let first = if lost {
                tokio::time::timeout(NOTIFY_TIMEOUT, rx.recv()).await.ok()
            } else {
                Some(rx.recv().await)
            };
            match first {
                Some(Some(n)) => {
                    add(n);
                    for _ in 1..NOTIFY_BATCH {
                        match rx.try_recv() {
                            Ok(n) => add(n),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                open = false;
                                break;
                            }
                        }
                    }
                }
                Some(None) => open = false,
                None => {}
            }
        } else if lost && tries_after_close < 3 {
            tries_after_close += 1;
            tokio::time::sleep(NOTIFY_TIMEOUT / 4).await;
        } else {
            return;
        }
        let mut payloads: Vec<String> =
            Vec::with_capacity(ready.len() + progress.len() + ended.len() + 1);
        if lost {
            payloads.push(format!("{node} c"));
        }
        payloads.extend(ready.iter().map(|(q, n)| format!("{node} r {q} {n}")));
        // Before the ends: a job's events reach other nodes before its end does.
        payloads.extend(
            progress
                .iter()
                .map(|(id, seq)| format!("{node} p {id} {seq}")),
        );
        payloads.extend(ended.iter().map(|id| format!("{node} e {id}")));
        if payloads.is_empty() {
            continue;
        }
        match send_notifications(&pool, &payloads).await {
            Ok(()) if lost => {
                tracing::info!("notifying other nodes again; told them to re-read their jobs");
                lost = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !lost {
                    tracing::warn!(error = %e, "cannot notify other nodes; will tell them to re-read");
                }
                lost = true;
            }
        }
    }
}

/// One statement sending `payloads` on the channel, bounded by [`NOTIFY_TIMEOUT`].
async fn send_notifications(pool: &Pool, payloads: &[String]) -> Result<()> {
    const SQL: &str = "select pg_notify('jobq', n) from unnest($1::text[]) as n";
    tokio::time::timeout(NOTIFY_TIMEOUT, async {
        let client = pool.get().await.map_err(pool_err)?;
        let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
        client.execute(&stmt, &[&payloads]).await.map_err(db_err)?;
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(Error::Unavailable("timed out".into())))
}

impl Shared {
    /// Call before a statement that may change the pending count; keep the
    /// guard until the change is applied with [`Shared::adjust_pending`].
    fn change(&self) -> InFlight<'_> {
        self.pending.lock().begin();
        InFlight(self)
    }

    /// Applies a local change to the pending count.
    fn adjust_pending(&self, delta: i64) {
        self.pending.lock().adjust(delta);
    }

    /// Reads the pending count per queue from the database, stores the total
    /// and signals every queue that has pending jobs (the polling fallback).
    async fn refresh(&self) -> Result<()> {
        let epoch = self.pending.lock().epoch;
        // (A change under way now bumps the epoch when it ends.)
        let client = self.pool.get().await.map_err(pool_err)?;
        let stmt = client
            .prepare_cached(
                "select queue, count(*) from jobq_jobs where status = 'pending' group by queue",
            )
            .await
            .map_err(db_err)?;
        let rows = client.query(&stmt, &[]).await.map_err(db_err)?;
        let mut total = 0u64;
        for row in &rows {
            let n: i64 = row.try_get(1).map_err(get_err)?;
            total += n.max(0) as u64;
            if let Ok(q) = Queue::parse(row.try_get::<_, &str>(0).map_err(get_err)?) {
                let _ = self.events.send(StoreEvent::JobReady(q));
            }
        }
        self.pending.lock().refreshed(epoch, total);
        Ok(())
    }
}

/// The polling fallbacks: refreshes the pending count and signals pending
/// queues every [`REFRESH_EVERY`], and has every waiter re-read its job
/// every [`RECHECK_EVERY`], until `stop`.
async fn refresh_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.reset();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = recheck.tick() => {
                let _ = shared.events.send(StoreEvent::Cleared);
                continue;
            }
            _ = tick.tick() => {}
        }
        if let Err(e) = shared.refresh().await {
            tracing::debug!(error = %e, "pending-count refresh failed; will retry");
        }
    }
}

/// Parses a notification payload `<node> <kind> [arg]` into the event and
/// how many times to deliver it (`r <queue> <n>`: n jobs became pending, so
/// up to n pollers are woken); `None` for this node's own and for anything
/// malformed.
fn parse_notification(own: &str, payload: &str) -> Option<(StoreEvent, usize)> {
    let mut parts = payload.splitn(3, ' ');
    let node = parts.next()?;
    if node == own {
        return None;
    }
    match (parts.next()?, parts.next()) {
        ("r", Some(arg)) => {
            // Without a count (a node of an earlier version): one job.
            let (q, n) = match arg.split_once(' ') {
                Some((q, n)) => (q, n.parse::<usize>().ok()?),
                None => (arg, 1),
            };
            let q = Queue::parse(q).ok()?;
            Some((StoreEvent::JobReady(q), n.clamp(1, MAX_WAKES)))
        }
        ("e", Some(id)) => id.parse().ok().map(|id| (StoreEvent::JobEnded(id), 1)),
        ("p", Some(arg)) => {
            let (id, seq) = arg.split_once(' ')?;
            Some((StoreEvent::Progress(id.parse().ok()?, seq.parse().ok()?), 1))
        }
        ("c", _) => Some((StoreEvent::Cleared, 1)),
        _ => None,
    }
}

/// The dedicated LISTEN connection (outside the pool): connects, LISTENs,
/// relays other nodes' notifications, and on any failure reconnects with
/// exponential backoff. After every (re)connect it emits
/// [`StoreEvent::Cleared`]: waiters re-read their job, since notifications
/// sent while it was away are lost.
async fn listen(cfg: tokio_postgres::Config, shared: Arc<Shared>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match cfg.connect(NoTls).await {
            Ok((client, mut conn)) => {
                let (ntx, mut nrx) = mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(|cx| conn.poll_message(cx));
                    while let Some(msg) = messages.next().await {
                        match msg {
                            Ok(AsyncMessage::Notification(n)) => {
                                if ntx.send(n.payload().to_owned()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "PostgreSQL LISTEN connection lost");
                                break;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("listen {CHANNEL}")).await {
                    Ok(()) => {
                        tracing::debug!("listening for other nodes' changes");
                        backoff = Duration::from_millis(100);
                        let _ = shared.events.send(StoreEvent::Cleared);
                        let mut ping = tokio::time::interval(LISTEN_PING);
                        ping.tick().await;
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => {
                                    driver.abort();
                                    return;
                                }
                                _ = ping.tick() => {
                                    let alive = tokio::time::timeout(
                                        LISTEN_PING,
                                        client.simple_query("select 1"),
                                    )
                                    .await;
                                    if !matches!(alive, Ok(Ok(_))) {
                                        tracing::warn!("LISTEN connection stopped answering; reconnecting");
                                        break;
                                    }
                                }
                                msg = nrx.recv() => match msg {
                                    Some(p) => {
                                        if let Some((ev, n)) = parse_notification(&shared.node, &p) {
                                            for _ in 1..n {
                                                let _ = shared.events.send(ev.clone());
                                            }
                                            let _ = shared.events.send(ev);
                                        }
                                    }
                                    None => break,
                                },
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed; will reconnect"),
                }
                driver.abort();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect the LISTEN connection; will retry")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert(&self, job: NewJob, max_pending: u64) -> Result<Inserted> {
        // Keeps a concurrent refresh of the pending count from counting it twice.
        let _change = self.shared.change();
        const BY_KEY: &str = concat!("select ", cols!(), " from jobq_jobs where idem_key = $1");
        let key = job.idempotency.as_ref().map(|i| i.key.clone());
        let fingerprint = job.idempotency.as_ref().map(|i| i.fingerprint.to_vec());
        let existing = |row: &Row| -> Result<Inserted> {
            let found = job_from_row(row)?;
            if found.idempotency.as_ref().map(|i| i.fingerprint)
                == job.idempotency.as_ref().map(|i| i.fingerprint)
            {
                Ok(Inserted::Existing(found))
            } else {
                Err(Error::IdempotencyMismatch)
            }
        };
        for _ in 0..RACE_RETRIES {
            let pending = self.pending_count();
            if pending >= max_pending {
                if let Some(k) = &key {
                    if let Some(row) = self.query(BY_KEY, &[k]).await?.first() {
                        return existing(row);
                    }
                }
                return Err(Error::QueueFull(pending));
            }
            let row = InsertRow {
                id: job.id.0,
                queue: job.queue.clone(),
                payload: job.payload.clone(),
                headers: job.headers.clone(),
                priority: job.priority,
                created_at: job.created_at.0,
                key: key.clone(),
                fingerprint: fingerprint.clone(),
            };
            if let Some(job) = self.batches.insert.call(row).await? {
                self.shared.adjust_pending(1);
                self.notify(&job);
                return Ok(Inserted::Created(job));
            }
            // The key is taken: attach to its job (unless it was forgotten
            // in the meantime; then try again).
            if let Some(k) = &key {
                if let Some(row) = self.query(BY_KEY, &[k]).await?.first() {
                    return existing(row);
                }
            }
        }
        Err(Error::Unavailable(
            "idempotency key kept changing hands; retry".into(),
        ))
    }

    async fn claim(&self, p: &ClaimParams) -> Result<Option<Claimed>> {
        // Keeps a concurrent refresh of the pending count from counting it twice.
        let _change = self.shared.change();
        for q in &p.queues {
            let row = ClaimRow {
                queue: q.clone(),
                polled: p.queues.clone(),
                lease: p.lease_id.0,
                now: p.now.0,
                expires_at: p.expires_at.0,
            };
            if let Some(claimed) = self.batches.claim.call(row).await? {
                self.shared.adjust_pending(-1);
                return Ok(Some(claimed));
            }
        }
        Ok(None)
    }

    async fn peek(&self, queues: &[Queue]) -> Result<Option<Job>> {
        const SQL: &str = concat!(
            "select ",
            cols!(),
            " from jobq_jobs where status = 'pending' and queue = $1 ",
            "order by priority desc, seq limit 1"
        );
        for q in queues {
            if let Some(row) = self.query(SQL, &[&q.as_str()]).await?.first() {
                return job_from_row(row).map(Some);
            }
        }
        Ok(None)
    }

    async fn complete(&self, p: &CompleteParams) -> Result<(Job, Completion)> {
        for _ in 0..RACE_RETRIES {
            let row = CompleteRow {
                id: p.id.0,
                lease: p.lease_id.map(|l| l.0),
                result: p.result.clone(),
                now: p.now.0,
            };
            if let Some(job) = self.batches.complete.call(row).await? {
                self.notify(&job);
                return Ok((job, Completion::Completed));
            }
            let mut seen = None;
            let done = self
                .refusal(p.id, |j| {
                    let r = j.clone().complete(p.lease_id.as_ref(), &p.result, p.now);
                    seen = Some(j.clone());
                    match r? {
                        Completion::AlreadyCompleted => Ok(Some(())),
                        Completion::Completed => Ok(None),
                    }
                })
                .await?;
            if let (Some(()), Some(job)) = (done, seen) {
                return Ok((job, Completion::AlreadyCompleted));
            }
        }
        Err(Error::Unavailable("job kept changing; retry".into()))
    }

    async fn complete_and_claim(
        &self,
        p: &CompleteParams,
        next: &ClaimParams,
    ) -> Result<((Job, Completion), Result<Option<Claimed>>)> {
        // One statement, so one transaction and one commit: the complete,
        // then (only if it applied) a hand-out from the first polled queue.
        const SQL: &str = concat!(
            "with c as (update jobq_jobs set status = 'completed', result = $3, error = null, ",
            "ended_at = $4, lease_expires_at = null ",
            "where id = $1 and status = 'running' and ($2::uuid is null or lease_id = $2) ",
            "returning ",
            cols!(),
            "), picked as (select id as nid from jobq_jobs ",
            "where status = 'pending' and queue = $5 and exists (select 1 from c) ",
            "order by priority desc, seq limit 1 for update skip locked), ",
            "u as (update jobq_jobs set status = 'running', attempts = attempts + 1, ",
            "started_at = $7, lease_id = $6, lease_expires_at = $8 ",
            "from picked where id = picked.nid and status = 'pending' returning ",
            cols!(),
            ", exists (select 1 from jobq_jobs p where p.status = 'pending' ",
            "and p.queue = any($9) and p.id <> picked.nid)) ",
            "select c.*, null::bool, false from c union all select u.*, true from u"
        );
        let Some(first) = next.queues.first() else {
            let done = self.complete(p).await?;
            return Ok((done, Ok(None)));
        };
        // Keeps a concurrent refresh of the pending count from counting it twice.
        let _change = self.shared.change();
        let lease = p.lease_id.map(|l| l.0);
        let polled: Vec<&str> = next.queues.iter().map(|q| q.as_str()).collect();
        let rows = self
            .query(
                SQL,
                &[
                    &p.id.0,
                    &lease,
                    &p.result.as_ref(),
                    &p.now.0,
                    &first.as_str(),
                    &next.lease_id.0,
                    &next.now.0,
                    &next.expires_at.0,
                    &polled,
                ],
            )
            .await?;
        let mut completed = None;
        let mut claimed = None;
        for row in &rows {
            let job = job_from_row(row)?;
            if row.try_get(NCOLS + 1).map_err(|_| bad_row("kind"))? {
                let more_pending = row.try_get(NCOLS).map_err(|_| bad_row("more"))?;
                claimed = Some(Claimed { job, more_pending });
            } else {
                completed = Some(job);
            }
        }
        let Some(job) = completed else {
            // Not running under that lease: the complete's own path names
            // the refusal (or the idempotent repeat), as without `next`.
            let done = self.complete(p).await?;
            return Ok((done, self.claim(next).await));
        };
        self.notify(&job);
        if claimed.is_some() {
            self.shared.adjust_pending(-1);
            return Ok(((job, Completion::Completed), Ok(claimed)));
        }
        // The first queue was empty; the others, in order, as `claim` does.
        let claimed = if next.queues.len() > 1 {
            let rest = ClaimParams {
                queues: next.queues[1..].to_vec(),
                ..next.clone()
            };
            self.claim(&rest).await
        } else {
            Ok(None)
        };
        Ok(((job, Completion::Completed), claimed))
    }

    fn fuses_complete_and_claim(&self) -> bool {
        true
    }

    async fn fail(&self, p: &FailParams) -> Result<Job> {
        // Keeps a concurrent refresh of the pending count from counting it twice.
        let _change = self.shared.change();
        const SQL: &str = concat!(
            "with u as (update jobq_jobs set error = $3, ",
            "status = case when $4 and attempts < $5 then 'pending' else 'failed' end, ",
            "ended_at = case when $4 and attempts < $5 then ended_at else $6 end, ",
            "lease_expires_at = null ",
            "where id = $1 and status = 'running' and ($2::uuid is null or lease_id = $2) ",
            "returning ",
            cols!(),
            ") select u.* from u"
        );
        let lease = p.lease_id.map(|l| l.0);
        let max = i32::try_from(p.max_attempts).unwrap_or(i32::MAX);
        for _ in 0..RACE_RETRIES {
            let rows = self
                .query(SQL, &[&p.id.0, &lease, &p.error, &p.retry, &max, &p.now.0])
                .await?;
            if let Some(row) = rows.first() {
                let job = job_from_row(row)?;
                if job.status == Status::Pending {
                    self.shared.adjust_pending(1);
                }
                self.notify(&job);
                return Ok(job);
            }
            self.refusal(p.id, |j| p.apply(j).map(|_| None::<()>))
                .await?;
        }
        Err(Error::Unavailable("job kept changing; retry".into()))
    }

    async fn heartbeat(&self, p: &HeartbeatParams) -> Result<Job> {
        const SQL: &str = concat!(
            "update jobq_jobs set lease_expires_at = $3 ",
            "where id = $1 and status = 'running' and ($2::uuid is null or lease_id = $2) ",
            "returning ",
            cols!()
        );
        let lease = p.lease_id.map(|l| l.0);
        for _ in 0..RACE_RETRIES {
            let rows = self.query(SQL, &[&p.id.0, &lease, &p.expires_at.0]).await?;
            if let Some(row) = rows.first() {
                return job_from_row(row);
            }
            self.refusal(p.id, |j| p.apply(j).map(|_| None::<()>))
                .await?;
        }
        Err(Error::Unavailable("job kept changing; retry".into()))
    }

    async fn progress(&self, p: &ProgressParams) -> Result<(Job, Option<u64>)> {
        const SQL: &str = concat!(
            "with upd as (update jobq_jobs set lease_expires_at = $3, progress_seq = progress_seq + 1 ",
            "where id = $1 and status = 'running' and ($2::uuid is null or lease_id = $2) ",
            "returning ",
            cols!(),
            ", progress_seq), ",
            "ins as (insert into jobq_progress (job_id, seq, data) select id, progress_seq, $4 from upd) ",
            "select * from upd"
        );
        const TRIM: &str = "delete from jobq_progress where job_id = $1 and seq <= $2";
        let lease = p.lease_id.map(|l| l.0);
        let data: &[u8] = &p.data;
        for _ in 0..RACE_RETRIES {
            let rows = self
                .query(SQL, &[&p.id.0, &lease, &p.expires_at.0, &data])
                .await?;
            if let Some(row) = rows.first() {
                let job = job_from_row(row)?;
                let seq: i64 = row.try_get(NCOLS).map_err(get_err)?;
                if seq > PROGRESS_KEPT && seq % 100 == 0 {
                    // Trimmed in steps, not with every event.
                    self.query(TRIM, &[&p.id.0, &(seq - PROGRESS_KEPT)]).await?;
                }
                let seq = seq.max(0) as u64;
                if let Some(tx) = &*self.notes.lock() {
                    let _ = tx.send(Note::Progress(p.id, seq));
                }
                return Ok((job, Some(seq)));
            }
            self.refusal(p.id, |j| p.beat().apply(j).map(|_| None::<()>))
                .await?;
        }
        Err(Error::Unavailable("job kept changing; retry".into()))
    }

    fn shares_progress(&self) -> bool {
        true
    }

    async fn progress_since(&self, id: JobId, after: u64) -> Result<(Vec<(u64, Bytes)>, u64)> {
        const SQL: &str = "select seq, data from jobq_progress where job_id = $1 and seq > $2 \
                           order by seq limit 1000";
        let after_i = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self.query(SQL, &[&id.0, &after_i]).await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get(0).map_err(get_err)?;
            let data: Vec<u8> = row.try_get(1).map_err(get_err)?;
            events.push((seq.max(0) as u64, Bytes::from(data)));
        }
        // Trimmed events before the first one kept count as dropped.
        let dropped_upto = match events.first() {
            Some((first, _)) if *first > after + 1 => first - 1,
            _ => 0,
        };
        Ok((events, dropped_upto))
    }

    async fn release(&self, id: JobId, lease_id: LeaseId) -> Result<Job> {
        // Keeps a concurrent refresh of the pending count from counting it twice.
        let _change = self.shared.change();
        const SQL: &str = concat!(
            "update jobq_jobs set status = 'pending', attempts = greatest(attempts - 1, 0), ",
            "started_at = case when attempts <= 1 then null else started_at end, ",
            "lease_id = null, lease_expires_at = null ",
            "where id = $1 and status = 'running' and lease_id = $2 returning ",
            cols!()
        );
        for _ in 0..RACE_RETRIES {
            let rows = self.query(SQL, &[&id.0, &lease_id.0]).await?;
            if let Some(row) = rows.first() {
                let job = job_from_row(row)?;
                self.shared.adjust_pending(1);
                self.notify(&job);
                return Ok(job);
            }
            self.refusal(id, |j| j.release(&lease_id).map(|_| None::<()>))
                .await?;
        }
        Err(Error::Unavailable("job kept changing; retry".into()))
    }

    async fn cancel(&self, id: JobId, only_pending: bool, now: Timestamp) -> Result<Job> {
        // Keeps a concurrent refresh of the pending count from counting it twice.
        let _change = self.shared.change();
        const SQL: &str = concat!(
            "with old as (select id as cid, status as old_status from jobq_jobs ",
            "where id = $1 and (status = 'pending' or (not $2 and status = 'running')) for update), ",
            "u as (update jobq_jobs set status = 'cancelled', ended_at = $3, lease_expires_at = null ",
            "from old where id = old.cid returning ",
            cols!(),
            ", old.old_status) select u.* from u"
        );
        for _ in 0..RACE_RETRIES {
            let rows = self.query(SQL, &[&id.0, &only_pending, &now.0]).await?;
            if let Some(row) = rows.first() {
                let was: String = row.try_get(NCOLS).map_err(|_| bad_row("old status"))?;
                if was == "pending" {
                    self.shared.adjust_pending(-1);
                }
                let job = job_from_row(row)?;
                self.notify(&job);
                return Ok(job);
            }
            self.refusal(id, |j| {
                if only_pending {
                    j.abandon(now)
                } else {
                    j.cancel(now)
                }
                .map(|_| None::<()>)
            })
            .await?;
        }
        Err(Error::Unavailable("job kept changing; retry".into()))
    }

    async fn clear(&self, queue: Option<&Queue>, now: Timestamp) -> Result<Vec<JobId>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let q = queue.map(|q| q.as_str());
        tx.execute(
            "delete from jobq_jobs where status in ('completed', 'failed', 'cancelled') \
             and ($1::text is null or queue = $1)",
            &[&q],
        )
        .await
        .map_err(db_err)?;
        let rows = tx
            .query(
                "update jobq_jobs set status = 'cancelled', ended_at = $2, lease_expires_at = null \
                 where status in ('pending', 'running') and ($1::text is null or queue = $1) \
                 returning id",
                &[&q, &now.0],
            )
            .await
            .map_err(db_err)?;
        tx.execute(
            "select pg_notify('jobq', $1)",
            &[&format!("{}c", self.prefix())],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        drop(client);
        if let Err(e) = self.shared.refresh().await {
            tracing::debug!(error = %e, "pending-count refresh after clear failed");
        }
        rows.iter()
            .map(|r| r.try_get(0).map(JobId).map_err(get_err))
            .collect()
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        const SQL: &str = concat!(
            "select ",
            cols!(),
            ", case when j.status = 'pending' then (select count(*) from jobq_jobs p ",
            "where p.status = 'pending' and p.queue = j.queue and (p.priority > j.priority ",
            "or (p.priority = j.priority and p.seq < j.seq))) end ",
            "from jobq_jobs j where j.id = $1"
        );
        let rows = self.query(SQL, &[&id.0]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let position: Option<i64> = row.try_get(NCOLS).map_err(|_| bad_row("position"))?;
        Ok(Some(JobRecord {
            job: job_from_row(row)?,
            position: position.map(|n| n.max(0) as u64),
        }))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>> {
        const SQL: &str = concat!(
            "select ",
            cols!(),
            " from jobq_jobs where ($1::text is null or status = $1) ",
            "and ($2::text is null or queue = $2) ",
            "order by created_at desc, seq desc limit $3"
        );
        let status = filter.status.map(|s| s.as_str());
        let queue = filter.queue.as_ref().map(|q| q.as_str());
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        self.query(SQL, &[&status, &queue, &limit])
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }

    async fn counts(&self) -> Result<Counts> {
        let rows = self
            .query(
                "select queue, status, count(*) from jobq_jobs group by queue, status",
                &[],
            )
            .await?;
        let mut counts = Counts {
            total: [0; 5],
            queues: BTreeMap::new(),
        };
        for row in &rows {
            let queue: String = row.try_get(0).map_err(get_err)?;
            let status: &str = row.try_get(1).map_err(get_err)?;
            let n: i64 = row.try_get(2).map_err(get_err)?;
            let s = Status::from_str(status).map_err(|_| bad_row("status"))?;
            counts.total[s.index()] += n as u64;
            counts.queues.entry(queue).or_default()[s.index()] += n as u64;
        }
        Ok(counts)
    }

    async fn activity(&self) -> Result<BTreeMap<String, QueueActivity>> {
        // Only pending and running rows: the partial indexes cover them,
        // and the ended jobs kept for --result-ttl are not visited.
        let rows = self
            .query(
                "select queue, status, count(*), min(created_at) from jobq_jobs \
                 where status in ('pending', 'running') group by queue, status",
                &[],
            )
            .await?;
        let mut out: BTreeMap<String, QueueActivity> = BTreeMap::new();
        for row in &rows {
            let queue: String = row.get(0);
            let status: &str = row.get(1);
            let n = row.get::<_, i64>(2).max(0) as u64;
            let entry = out.entry(queue).or_default();
            if status == "pending" {
                entry.pending = n;
                entry.oldest_pending = row.get::<_, Option<i64>>(3).map(Timestamp);
            } else {
                entry.running = n;
            }
        }
        Ok(out)
    }

    fn activity_is_cheap(&self) -> bool {
        false
    }

    async fn rescue_expired(&self, now: Timestamp, max_attempts: u32) -> Result<Vec<Job>> {
        // Keeps a concurrent refresh of the pending count from counting it twice.
        let _change = self.shared.change();
        const SQL: &str = concat!(
            "with x as (select id as xid from jobq_jobs where status = 'running' ",
            "and lease_expires_at <= $1 for update skip locked), ",
            "u as (update jobq_jobs set ",
            "status = case when attempts >= $2 then 'failed' else 'pending' end, ",
            "error = case when attempts >= $2 then $3 || attempts || $4 else error end, ",
            "ended_at = case when attempts >= $2 then $1 else ended_at end, ",
            "lease_expires_at = null ",
            "from x where id = x.xid and status = 'running' and lease_expires_at <= $1 returning ",
            cols!(),
            ") select u.* from u"
        );
        let max = i32::try_from(max_attempts).unwrap_or(i32::MAX);
        let jobs: Vec<Job> = self
            .query(
                SQL,
                &[
                    &now.0,
                    &max,
                    &LEASE_EXPIRED_ERROR[0],
                    &LEASE_EXPIRED_ERROR[1],
                ],
            )
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<_>>()?;
        for job in &jobs {
            self.notify(job);
        }
        let back = jobs.iter().filter(|j| j.status == Status::Pending).count();
        if back > 0 {
            self.shared.adjust_pending(back as i64);
        }
        Ok(jobs)
    }

    async fn purge_expired(&self, ttl: Duration, now: Timestamp) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "delete from jobq_jobs where status in ('completed', 'failed', 'cancelled') \
                 and ended_at <= $1",
            )
            .await
            .map_err(db_err)?;
        client
            .execute(&stmt, &[&(now - ttl).0])
            .await
            .map_err(db_err)
    }

    fn pending_count(&self) -> u64 {
        self.shared.pending.lock().count
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<StoreEvent>> {
        self.events_rx.lock().take()
    }

    async fn healthy(&self) -> bool {
        let check = async {
            let client = self.shared.pool.get().await.ok()?;
            client.simple_query("select 1").await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(Some(_))
        )
    }

    async fn close(&self) -> Result<()> {
        // Send the last notifications (a client on another node may wait
        // for a job that ended here during the shutdown grace).
        drop(self.notes.lock().take());
        let notifier = self.notifier.lock().take();
        if let Some(mut task) = notifier {
            if tokio::time::timeout(NOTIFY_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                task.abort();
                tracing::warn!("notifications to other nodes not all sent before closing");
            }
        }
        self.stop.cancel();
        self.shared.pool.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_from_other_nodes_are_parsed() {
        let id = JobId::new();
        let emails = StoreEvent::JobReady(Queue::parse("emails").unwrap());
        assert_eq!(
            parse_notification("me", "other r emails 3"),
            Some((emails.clone(), 3))
        );
        assert_eq!(
            parse_notification("me", "other r emails 1000"),
            Some((emails.clone(), MAX_WAKES))
        );
        assert_eq!(
            parse_notification("me", "other r emails"),
            Some((emails, 1)),
            "an earlier version's note"
        );
        assert_eq!(
            parse_notification("me", &format!("other e {id}")),
            Some((StoreEvent::JobEnded(id), 1))
        );
        assert_eq!(
            parse_notification("me", "other c"),
            Some((StoreEvent::Cleared, 1))
        );
        assert_eq!(
            parse_notification("me", &format!("other p {id} 7")),
            Some((StoreEvent::Progress(id, 7), 1))
        );
        assert_eq!(parse_notification("me", &format!("other p {id}")), None);
        assert_eq!(parse_notification("me", &format!("other p {id} x")), None);
    }

    #[test]
    fn a_refresh_never_counts_a_local_change_twice() {
        // A submit commits, a refresh reads the count with it, then the
        // submit adds itself: the refresh must not be taken.
        let mut p = PendingCache::default();
        p.begin();
        let epoch = p.epoch;
        p.adjust(1);
        p.refreshed(epoch, 1);
        p.end();
        assert_eq!(p.count, 1);
        // The refresh began after the commit, before the submit added itself.
        let mut p = PendingCache::default();
        p.begin();
        let epoch = p.epoch;
        p.refreshed(epoch, 1);
        p.adjust(1);
        p.end();
        assert_eq!(p.count, 1, "not 2");
        // Nothing under way: the database's figure wins.
        let epoch = p.epoch;
        p.refreshed(epoch, 7);
        assert_eq!(p.count, 7);
    }

    #[test]
    fn own_and_malformed_notifications_are_ignored() {
        assert_eq!(parse_notification("me", "me r default"), None);
        assert_eq!(parse_notification("me", "other e not-a-uuid"), None);
        assert_eq!(parse_notification("me", "other x"), None);
        assert_eq!(parse_notification("me", "other r emails many"), None);
        assert_eq!(parse_notification("me", ""), None);
    }

    #[test]
    fn descriptions_never_show_the_password() {
        let cfg =
            tokio_postgres::Config::from_str("postgres://u:secret@db.example:6543/jobs").unwrap();
        let d = describe(&cfg);
        assert_eq!(d, "postgres://db.example:6543/jobs");
        assert!(!d.contains("secret"));
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (v, _, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1);
        }
    }
}
