//! The default backend (`--storage embedded`): SQLite in WAL mode in
//! `--data-dir`, with every job also held in an in-memory [`Index`] that
//! serves all reads and hand-outs.
//!
//! Writes are committed in batches (group commit, see [`log`]): whatever
//! arrived while the previous batch was being written goes into the next
//! transaction, so one commit and one fsync cover many requests. Changes are
//! applied to the index and queued under the index lock, so the log order is
//! the order in which they happened.
//!
//! Inputs (payload and headers) of up to 1 KiB are kept in the job row;
//! larger ones live in a table of their own and are read back at hand-out
//! for jobs loaded at start-up, so a restart with a million large pending
//! jobs reads and holds only their metadata.
//!
//! What waits for the disk (see `docs/storage.md`): a submit (workers can
//! take the job once it is committed), a complete, a fail, a cancel, a clear and a
//! lease rescue. A hand-out is written deferred, up to 100 ms later, and not
//! at all if the job changes first (its next write carries the attempt
//! count): a restart returns running jobs to pending anyway. Heartbeats are
//! not written.
//!
//! When a batch cannot be committed (disk full), the store turns read-only:
//! writes answer `Unavailable` (503) at once, reads go on, and a background
//! thread retries the batch until it commits, then writes are taken again.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

mod log;

use log::{Durable, Log, Op};

use super::index::Index;
use super::{
    ClaimParams, Claimed, CompleteParams, Counts, Error, FailParams, Inserted, JobRecord,
    ListFilter, OpenError, Result, Store, StoreEvent, SyncMode,
};
use crate::job::{Completion, Idempotency, Job, JobId, LeaseId, NewJob, Queue, Status, Timestamp};

/// File name of the database inside `--data-dir`.
pub const DB_FILE: &str = "jobq.db";

/// `PRAGMA application_id` of a jobq database ("jobq" in ASCII), so a file
/// that is not ours is recognised instead of being written into.
const APPLICATION_ID: i32 = 0x6a6f_6271;

/// Schema migrations; `PRAGMA user_version` is how many have been applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_jobs.sql"),
    include_str!("../../../migrations/sqlite/0002_no_running_index.sql"),
    include_str!("../../../migrations/sqlite/0003_inline_inputs.sql"),
];

/// Name of the lock file that keeps a second process off the data dir.
const LOCK_FILE: &str = "jobq.lock";

/// `--storage embedded`.
pub struct EmbeddedStore {
    index: Mutex<Index>,
    log: Arc<Log>,
    /// Tells the broker that a job became claimable (see `insert`).
    events: tokio::sync::mpsc::UnboundedSender<StoreEvent>,
    events_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>>>,
    /// Held (locked) for the store's lifetime.
    _lock: std::fs::File,
    path: PathBuf,
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(e.to_string())
}

/// Waits for the log's answer about a change (queued and flushed already).
async fn settled(rx: Durable) -> Result<()> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Unavailable(e)),
        Err(_) => Err(unavailable("store is closed")),
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database in `data_dir`, migrates it,
    /// returns running jobs to pending (failed once they have had
    /// `max_attempts` hand-outs) and loads every job into memory.
    ///
    /// # Errors
    /// One line naming the path: the directory cannot be created or written,
    /// the file is not a jobq database or is corrupt, its schema is newer
    /// than this binary, or another process holds it.
    pub fn open(data_dir: &Path, sync: SyncMode, max_attempts: u32) -> Result<Self, OpenError> {
        let fail =
            |what: &str, e: &dyn std::fmt::Display| OpenError::Failed(format!("{what}: {e}"));
        std::fs::create_dir_all(data_dir).map_err(|e| {
            fail(
                &format!("cannot create data dir {}", data_dir.display()),
                &e,
            )
        })?;
        let path = data_dir.join(DB_FILE);
        let shown = path.display().to_string();
        let lock_path = data_dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                fail(
                    &format!("cannot write to data dir {}", data_dir.display()),
                    &e,
                )
            })?;
        if lock.try_lock().is_err() {
            return Err(OpenError::Failed(format!(
                "{} is in use by another jobq process",
                data_dir.display()
            )));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail(&format!("cannot open {shown}"), &e))?;
        let index = prepare(&conn, &shown, max_attempts)?;
        // SQLite keeps the WAL file (reusing it from the start after each
        // checkpoint) until the connection closes, so this handle stays its file.
        let wal_path = data_dir.join(format!("{DB_FILE}-wal"));
        let wal = std::fs::File::open(&wal_path)
            .map_err(|e| fail(&format!("cannot open {}", wal_path.display()), &e))?;
        let log =
            Log::start(conn, wal, sync).map_err(|e| fail("cannot start the log threads", &e))?;
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(EmbeddedStore {
            index: Mutex::new(index),
            log,
            events,
            events_rx: Mutex::new(Some(events_rx)),
            _lock: lock,
            path,
        })
    }

    fn check_writable(&self) -> Result<()> {
        let health = self.log.health();
        if let Some(e) = health.sync_failed.get() {
            Err(Error::Unavailable(format!("{}: {e}", self.path.display())))
        } else if health.read_only.load(Ordering::Acquire) {
            Err(Error::Unavailable(format!(
                "{} cannot be written (disk full?); retrying in the background",
                self.path.display()
            )))
        } else {
            Ok(())
        }
    }

    /// Queues `ops`; with `durable`, returns a receiver that hears when they
    /// (and everything queued before them) are durable. Call under the
    /// index lock so the log keeps the order of the changes, then
    /// [`Self::durable`] after releasing it.
    fn send(&self, ops: Vec<Op>, durable: bool) -> Option<Durable> {
        self.log.push(ops, durable)
    }

    /// Commits what is queued (unless a request already is) and waits until
    /// `rx`'s changes are durable.
    async fn durable(&self, rx: Option<Durable>) -> Result<()> {
        let Some(rx) = rx else {
            return Ok(());
        };
        // Let the requests that are ready to run queue their changes first,
        // so that one commit takes them all.
        tokio::task::yield_now().await;
        self.log.flush();
        settled(rx).await
    }

    /// Reads the payload and headers of a job restored without them.
    async fn read_input(&self, id: JobId, seq: u64) -> Result<(Bytes, Bytes)> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            log.read(|conn| {
                let mut stmt =
                    conn.prepare_cached("SELECT payload, headers FROM inputs WHERE seq = ?1")?;
                stmt.query_row([seq as i64], |r| {
                    Ok((
                        Bytes::from(r.get::<_, Vec<u8>>(0)?),
                        Bytes::from(r.get::<_, Vec<u8>>(1)?),
                    ))
                })
            })
        })
        .await
        .map_err(unavailable)?
        .map_err(|e| unavailable(format!("cannot read the input of job {id}: {e}")))
    }

    /// Fills in the input of `job` if it was restored without it
    /// (`cold` is then its arrival number).
    async fn warm(&self, mut job: Job, cold: Option<u64>) -> Result<Job> {
        if let Some(seq) = cold {
            (job.payload, job.headers) = self.read_input(job.id, seq).await?;
        }
        Ok(job)
    }

    /// The arrival number of a job the index holds (it holds every job a
    /// caller just changed).
    fn seq(index: &Index, id: JobId) -> Result<u64> {
        index.seq_of(id).ok_or(Error::NotFound)
    }

    /// Applies `f` to the index, logs the job it returns, and waits for the disk.
    async fn write_one<T>(
        &self,
        f: impl FnOnce(&mut Index) -> Result<(Job, T)>,
    ) -> Result<(Job, T)> {
        let (out, rx) = {
            let mut index = self.index.lock();
            self.check_writable()?;
            let (job, extra) = f(&mut index)?;
            let seq = Self::seq(&index, job.id)?;
            let rx = self.send(vec![Op::Update(seq, job.clone())], true);
            ((job, extra), rx)
        };
        self.durable(rx).await?;
        Ok(out)
    }
}

/// Checks, migrates and loads the database.
fn prepare(conn: &Connection, shown: &str, max_attempts: u32) -> Result<Index, OpenError> {
    let fail = |what: &str, e: &rusqlite::Error| {
        if is_busy(e) {
            OpenError::Failed(format!("{shown} is in use by another jobq process"))
        } else {
            OpenError::Failed(format!("{shown}: {what}: {e}"))
        }
    };
    // Set before the first access: SQLite then keeps the WAL index in
    // process memory instead of a shared-memory file and takes no file
    // locks per transaction. Only this connection uses the file.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(|e| fail("cannot lock", &e))?;
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| fail("not a readable SQLite database", &e))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| fail("not a readable SQLite database", &e))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| fail("not a readable SQLite database", &e))?;
    if app_id != APPLICATION_ID && (tables > 0 || version != 0 || app_id != 0) {
        return Err(OpenError::Failed(format!(
            "{shown} is not a jobq database (application id {app_id:#x}); move it away or choose another --data-dir"
        )));
    }
    if version > MIGRATIONS.len() as i64 {
        return Err(OpenError::Failed(format!(
            "{shown} has schema version {version}, newer than this jobq understands ({}); run a newer jobq",
            MIGRATIONS.len()
        )));
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| fail("cannot enable WAL", &e))?;
    // No automatic checkpoint: it would run on the committing thread (often
    // an async runtime thread) and sync both files there. The log's
    // background thread checkpoints every few thousand commits instead.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(|e| fail("cannot set wal_autocheckpoint", &e))?;
    // NORMAL in both modes: SQLite then syncs only around checkpoints, which
    // keeps the files consistent; the log's syncer thread makes commits
    // durable (see `log`).
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| fail("cannot set synchronous", &e))?;
    let write = |sql: &str| {
        conn.execute_batch(sql)
            .map_err(|e| fail("cannot write", &e))
    };
    write("BEGIN IMMEDIATE")?;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        write(m)?;
        write(&format!("PRAGMA user_version = {}", i + 1))?;
    }
    write(&format!("PRAGMA application_id = {APPLICATION_ID}"))?;
    write("COMMIT")?;
    load(conn, max_attempts).map_err(|e| fail("cannot load jobs", &e))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

const COLUMNS: &str =
    "id, queue, priority, status, attempts, created_at, started_at, ended_at, lease_id, \
     result, error, idem_key, idem_fp, seq, payload, headers";

fn load(conn: &Connection, max_attempts: u32) -> rusqlite::Result<Index> {
    let now = Timestamp::now();
    let mut failed: Vec<(i64, Option<Timestamp>, Option<String>)> = Vec::new();
    let rows: i64 = conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))?;
    let mut index = Index::with_capacity(usize::try_from(rows).unwrap_or(0));
    let mut queues: std::collections::HashMap<String, Queue> = std::collections::HashMap::new();
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM jobs ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let mut job = row_to_job(r, &mut queues)?;
        let seq: i64 = r.get(13)?;
        // A restart ends every lease (the rule is `Job::recover_after_restart`).
        // A job back to pending keeps saying `running` in its row until its
        // next change is written, and is read the same way at every start;
        // one out of attempts is written as failed below.
        if job.recover_after_restart(now, max_attempts) == Some(Status::Failed) {
            failed.push((seq, job.ended_at, job.error.clone()));
        }
        // Inline inputs come with the row; others are read back at hand-out.
        let inline: Option<(Vec<u8>, Vec<u8>)> = match (r.get(14)?, r.get(15)?) {
            (Some(p), Some(h)) => Some((p, h)),
            _ => None,
        };
        let cold = !job.status.is_ended() && inline.is_none();
        if let (Some((p, h)), false) = (inline, job.status.is_ended()) {
            job.payload = Bytes::from(p);
            job.headers = Bytes::from(h);
        }
        index.restore(job, seq as u64, cold);
    }
    drop(rows);
    drop(stmt);
    if !failed.is_empty() {
        let tx = conn.unchecked_transaction()?;
        {
            let mut up = tx.prepare(
                "UPDATE jobs SET status = 'failed', ended_at = ?2, error = ?3 WHERE seq = ?1",
            )?;
            for (seq, ended, error) in &failed {
                up.execute(rusqlite::params![seq, ended.map(|t| t.0), error])?;
            }
        }
        tx.commit()?;
    }
    Ok(index)
}

fn bad_data(what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Null,
        what.to_owned().into(),
    )
}

fn uuid_col(b: Option<Vec<u8>>) -> rusqlite::Result<Option<JobId>> {
    b.map(|b| {
        uuid::Uuid::from_slice(&b)
            .map(JobId)
            .map_err(|_| bad_data("bad uuid"))
    })
    .transpose()
}

/// One `jobs` row (of [`COLUMNS`]) as a job without its input. Queue names
/// are interned in `queues`: a million jobs share a handful of names.
fn row_to_job(
    r: &rusqlite::Row<'_>,
    queues: &mut std::collections::HashMap<String, Queue>,
) -> rusqlite::Result<Job> {
    let status: rusqlite::types::ValueRef<'_> = r.get_ref(3)?;
    let status = status.as_str().map_err(|_| bad_data("bad status"))?;
    let queue_name = r.get_ref(1)?.as_str().map_err(|_| bad_data("bad queue"))?;
    let queue = match queues.get(queue_name) {
        Some(q) => q.clone(),
        None => {
            let q = Queue::parse(queue_name).map_err(|e| bad_data(&e))?;
            queues.insert(queue_name.to_owned(), q.clone());
            q
        }
    };
    let idem_key: Option<String> = r.get(11)?;
    let idem_fp: Option<Vec<u8>> = r.get(12)?;
    Ok(Job {
        id: uuid_col(Some(r.get(0)?))?.ok_or_else(|| bad_data("no id"))?,
        queue,
        priority: r.get(2)?,
        status: status.parse().map_err(|e: String| bad_data(&e))?,
        attempts: r.get(4)?,
        created_at: Timestamp(r.get(5)?),
        started_at: r.get::<_, Option<i64>>(6)?.map(Timestamp),
        ended_at: r.get::<_, Option<i64>>(7)?.map(Timestamp),
        lease_id: uuid_col(r.get(8)?)?,
        lease_expires_at: None,
        payload: Bytes::new(),
        headers: Bytes::new(),
        result: r.get::<_, Option<Vec<u8>>>(9)?.map(Bytes::from),
        error: r.get(10)?,
        idempotency: match (idem_key, idem_fp) {
            (Some(key), Some(fp)) => Some(Box::new(Idempotency {
                key,
                fingerprint: fp.try_into().map_err(|_| bad_data("bad fingerprint"))?,
            })),
            _ => None,
        },
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn insert(&self, job: NewJob, max_pending: u64) -> Result<Inserted> {
        let (inserted, committed, durable) = {
            let mut index = self.index.lock();
            self.check_writable()?;
            match index.insert(job, max_pending, false)? {
                Inserted::Created(job) => {
                    let seq = Self::seq(&index, job.id)?;
                    let (committed, durable) =
                        self.log.push_tracked(vec![Op::Insert(seq, job.clone())]);
                    (Inserted::Created(job), committed, durable)
                }
                existing => return Ok(existing),
            }
        };
        let Inserted::Created(job) = &inserted else {
            unreachable!()
        };
        // Claimable once committed: it is in the store then (a `kill -9`
        // keeps it: docs/api.md, "Guarantees"), and a worker need not wait
        // for the fsync too.
        // The submit is answered only once it is durable; a worker's
        // complete is durable only after it (the WAL is written in order),
        // so no result of a job that a power cut could lose is acknowledged.
        let mut outcome = self.durable(Some(committed)).await;
        if outcome.is_ok() {
            self.index.lock().publish(job.id);
            let _ = self.events.send(StoreEvent::JobReady(job.queue.clone()));
            outcome = settled(durable).await;
        }
        match outcome {
            Ok(()) => Ok(inserted),
            Err(e) => {
                // Undo: the insert may still reach the disk once the disk
                // has room again, so a delete follows it in the log.
                let mut index = self.index.lock();
                if let Some((_, seq)) = index.remove(job.id) {
                    let _ = self.send(vec![Op::Delete(seq)], false);
                }
                Err(e)
            }
        }
    }

    async fn claim(&self, p: &ClaimParams) -> Result<Option<Claimed>> {
        let (claimed, cold) = {
            let mut index = self.index.lock();
            self.check_writable()?;
            let Some(claimed) = index.claim(p)? else {
                return Ok(None);
            };
            // Deferred: a restart returns running jobs to pending anyway.
            let seq = Self::seq(&index, claimed.job.id)?;
            self.log.push_handout(seq, claimed.job.clone());
            let cold = index.is_cold(claimed.job.id).then_some(seq);
            (claimed, cold)
        };
        // If the input cannot be read, the lease runs out and the job is
        // handed out again.
        let job = self.warm(claimed.job, cold).await?;
        Ok(Some(Claimed {
            job,
            more_pending: claimed.more_pending,
        }))
    }

    async fn peek(&self, queues: &[Queue]) -> Result<Option<Job>> {
        let (job, cold) = {
            let index = self.index.lock();
            let Some(job) = index.peek(queues) else {
                return Ok(None);
            };
            let cold = if index.is_cold(job.id) {
                index.seq_of(job.id)
            } else {
                None
            };
            (job, cold)
        };
        Ok(Some(self.warm(job, cold).await?))
    }

    async fn complete(&self, p: &CompleteParams) -> Result<(Job, Completion)> {
        let (job, how, rx) = {
            let mut index = self.index.lock();
            self.check_writable()?;
            let (job, how) = index.complete(p)?;
            // A repeat writes nothing but still waits for the earlier write.
            let ops = if how == Completion::Completed {
                vec![Op::Update(Self::seq(&index, job.id)?, job.clone())]
            } else {
                Vec::new()
            };
            let rx = self.send(ops, true);
            (job, how, rx)
        };
        self.durable(rx).await?;
        Ok((job, how))
    }

    async fn fail(&self, p: &FailParams) -> Result<Job> {
        Ok(self.write_one(|i| Ok((i.fail(p)?, ()))).await?.0)
    }

    async fn heartbeat(
        &self,
        id: JobId,
        lease_id: Option<LeaseId>,
        expires_at: Timestamp,
    ) -> Result<Job> {
        // Leases are not stored: a restart returns running jobs to pending.
        self.index.lock().heartbeat(id, lease_id, expires_at)
    }

    async fn release(&self, id: JobId, lease_id: LeaseId) -> Result<Job> {
        // Written like a hand-out (deferred): if it is lost, a restart
        // returns the job to pending all the same.
        let mut index = self.index.lock();
        self.check_writable()?;
        let job = index.release(id, lease_id)?;
        let seq = Self::seq(&index, id)?;
        self.log.push_handout(seq, job.clone());
        Ok(job)
    }

    async fn cancel(&self, id: JobId, only_pending: bool, now: Timestamp) -> Result<Job> {
        Ok(self
            .write_one(|i| Ok((i.cancel(id, only_pending, now)?, ())))
            .await?
            .0)
    }

    async fn clear(&self, queue: Option<&Queue>, now: Timestamp) -> Result<Vec<JobId>> {
        let (cancelled, rx) = {
            let mut index = self.index.lock();
            self.check_writable()?;
            let (cancelled, forgotten) = index.clear(queue, now);
            let mut ops: Vec<Op> = Vec::with_capacity(cancelled.len() + forgotten.len());
            for id in &cancelled {
                if let (Some(rec), Some(seq)) = (index.get(*id), index.seq_of(*id)) {
                    ops.push(Op::Update(seq, rec.job));
                }
            }
            ops.extend(forgotten.into_iter().map(|(_, seq)| Op::Delete(seq)));
            let rx = self.send(ops, true);
            (cancelled, rx)
        };
        self.durable(rx).await?;
        Ok(cancelled)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        Ok(self.index.lock().get(id))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>> {
        Ok(self.index.lock().list(filter))
    }

    async fn counts(&self) -> Result<Counts> {
        Ok(self.index.lock().counts())
    }

    async fn activity(&self) -> Result<std::collections::BTreeMap<String, super::QueueActivity>> {
        Ok(self.index.lock().activity())
    }

    async fn rescue_expired(&self, now: Timestamp, max_attempts: u32) -> Result<Vec<Job>> {
        let (changed, rx) = {
            let mut index = self.index.lock();
            if self.check_writable().is_err() {
                return Ok(Vec::new());
            }
            let changed = index.rescue_expired(now, max_attempts);
            if changed.is_empty() {
                return Ok(changed);
            }
            let ops = changed
                .iter()
                .filter_map(|j| Some(Op::Update(index.seq_of(j.id)?, j.clone())))
                .collect();
            let rx = self.send(ops, true);
            (changed, rx)
        };
        self.durable(rx).await?;
        Ok(changed)
    }

    async fn purge_expired(&self, ttl: Duration, now: Timestamp) -> Result<u64> {
        let mut index = self.index.lock();
        let purged = index.purge_expired(ttl, now);
        let n = purged.len() as u64;
        if n > 0 {
            // Lazily: a purged job that reappears after a crash is purged again.
            self.send(
                purged.into_iter().map(|(_, seq)| Op::Delete(seq)).collect(),
                false,
            );
        }
        Ok(n)
    }

    fn pending_count(&self) -> u64 {
        self.index.lock().pending_count()
    }

    fn subscribe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>> {
        self.events_rx.lock().take()
    }

    fn announces_inserts(&self) -> bool {
        true
    }

    async fn healthy(&self) -> bool {
        self.check_writable().is_ok() && !self.log.is_closed()
    }

    async fn close(&self) -> Result<()> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.close())
            .await
            .map_err(unavailable)?
            .map_err(Error::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;

    fn new_job(i: usize) -> NewJob {
        NewJob {
            id: JobId::new(),
            queue: Queue::default_queue(),
            payload: Bytes::from(format!("{{\"i\":{i}}}")),
            headers: Bytes::from_static(b"{}"),
            priority: 0,
            created_at: Timestamp::now(),
            idempotency: None,
        }
    }

    /// SQLite's automatic checkpoint is off (it would run on whichever
    /// thread commits: a request's runtime thread), and the log's
    /// background thread checkpoints instead, so the WAL stays bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_run_on_the_background_thread_not_on_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), SyncMode::Normal, 3).unwrap();
        let auto: i64 = store
            .log
            .read(|c| c.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0)))
            .unwrap();
        assert_eq!(auto, 0, "SQLite must not checkpoint on a committing thread");
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        let mut largest = 0;
        // Sequential submits: one commit each, well past two checkpoints.
        for i in 0..(2 * log::CHECKPOINT_EVERY as usize + 100) {
            store.insert(new_job(i), u64::MAX).await.unwrap();
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        }
        // Without checkpoints the WAL would hold every commit's pages
        // (over 5,000 commits of at least one 4 KiB page each: > 20 MB).
        assert!(
            largest < 16 << 20,
            "WAL grew to {largest} bytes: no checkpoint ran"
        );
        store.close().await.unwrap();
    }
}
