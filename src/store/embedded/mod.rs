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
//! Ended jobs are kept for `--result-ttl`, so at a steady rate they are
//! nearly all the jobs held. Once a job's final state is committed, the
//! next maintenance pass (about every second) has the index keep only a
//! compact record of it (see [`Index::move_to_disk`]), and it is read back
//! from its row when asked for (a `GET`, a list, an idempotent attach, a
//! repeated complete): memory does not grow with throughput ×
//! `--result-ttl`, and requests do no more work than before. Until then the
//! index holds it in full, so a read never sees a state older than one
//! already answered.
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
use parking_lot::{Mutex, MutexGuard};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

mod log;

use log::{Durable, Log, Op};

use super::index::{Held, Index, OnDisk, MAX_DISK_SEQ};
use super::{
    ClaimParams, Claimed, CompleteParams, Counts, Error, FailParams, HeartbeatParams, Inserted,
    JobRecord, ListFilter, OpenError, Result, Store, StoreEvent, SyncMode,
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

/// Most jobs moved to disk under one hold of the index lock, so that a
/// commit of many ended jobs at once (a clear) holds up no request for long.
const SETTLE_MAX: usize = 256;

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

    /// The index, locked.
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock()
    }

    /// Moves to disk every ended job whose final state has been committed
    /// since the last call, [`SETTLE_MAX`] at a time. Called by the
    /// maintenance pass (about every second), not by requests: their path
    /// stays as short as before, and until then a job is read from memory.
    async fn settle(&self) {
        loop {
            let ids = self.log.take_settled(SETTLE_MAX);
            if ids.is_empty() {
                return;
            }
            {
                let mut index = self.index.lock();
                for id in ids {
                    index.move_to_disk(id);
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// Reads back jobs moved to disk, in order: `None` for one forgotten
    /// since (its row deleted). On the blocking pool: the read waits for
    /// the connection, which a commit or a checkpoint may hold.
    async fn read_on_disk(&self, wanted: Vec<OnDisk>) -> Result<Vec<Option<Job>>> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            log.read(|conn| {
                let mut stmt = conn.prepare_cached(SELECT_BY_SEQ)?;
                let mut queues = std::collections::HashMap::new();
                let mut out = Vec::with_capacity(wanted.len());
                for w in &wanted {
                    let job = stmt
                        .query_row([w.seq as i64], |r| row_to_job(r, &mut queues))
                        .optional()?;
                    // A row is a job's from its insert until its delete
                    // (arrival numbers are not reused), and it was moved
                    // to disk only once its final state was committed.
                    if job
                        .as_ref()
                        .is_some_and(|j| j.id != w.id || !j.status.is_ended())
                    {
                        return Err(bad_data(&format!(
                            "row {} does not hold ended job {}",
                            w.seq, w.id
                        )));
                    }
                    out.push(job);
                }
                Ok(out)
            })
        })
        .await
        .map_err(unavailable)?
        .map_err(|e| unavailable(format!("cannot read ended jobs back: {e}")))
    }

    /// One job moved to disk, read back (`None`: forgotten since).
    async fn read_one(&self, job: OnDisk) -> Result<Option<Job>> {
        Ok(self.read_on_disk(vec![job]).await?.pop().flatten())
    }

    /// A complete of a completed job moved to disk: a repeat or a
    /// refusal, decided by the rule on the job read back.
    async fn complete_on_disk(
        &self,
        p: &CompleteParams,
        on_disk: OnDisk,
    ) -> Result<(Job, Completion)> {
        let mut job = self.read_one(on_disk).await?.ok_or(Error::NotFound)?;
        let how = job.complete(p.lease_id.as_ref(), &p.result, p.now)?;
        // Answered once the first complete is durable, like a repeat of a
        // job held in full (its commit may not be synced yet).
        let rx = self.send(Vec::new(), true);
        self.durable(rx).await?;
        Ok((job, how))
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
            let mut index = self.index();
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
    // The `status IN (...)` check compiles into an in-memory index that
    // every insert and update builds afresh (a zeroed page, a b-tree, five
    // inserts): a fifth of SQLite's work per job. jobq writes statuses
    // from `Status::as_str` only; the check stays in the schema for other
    // writers (the sqlite3 shell, scripts), which enforce it.
    conn.pragma_update(None, "ignore_check_constraints", true)
        .map_err(|e| fail("cannot set ignore_check_constraints", &e))?;
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

/// The columns of a job row that [`row_to_job`] reads, in its order.
macro_rules! columns {
    () => {
        "id, queue, priority, status, attempts, created_at, started_at, ended_at, lease_id, \
         result, error, idem_key, idem_fp, seq, payload, headers"
    };
}

const COLUMNS: &str = columns!();

/// One job row by its arrival number (a job moved to disk, read back).
const SELECT_BY_SEQ: &str = concat!("SELECT ", columns!(), " FROM jobs WHERE seq = ?1");

fn load(conn: &Connection, max_attempts: u32) -> rusqlite::Result<Index> {
    let now = Timestamp::now();
    let mut failed: Vec<(i64, Option<Timestamp>, Option<String>)> = Vec::new();
    // Sized for both maps: ended jobs get only a compact record.
    let (rows, ended): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(status IN ('completed', 'failed', 'cancelled')), 0) \
         FROM jobs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let size = |n: i64| usize::try_from(n).unwrap_or(0);
    let mut index = Index::with_capacity(size(rows - ended), size(ended));
    let mut queues: std::collections::HashMap<String, Queue> = std::collections::HashMap::new();
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM jobs ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(13)?;
        let arrival = u64::try_from(seq).map_err(|_| bad_data("bad seq"))?;
        let disk_seq = (arrival <= MAX_DISK_SEQ).then_some(arrival);
        // An ended job is held as a compact record: its result and error
        // are not even read.
        if let (Some(at), true) = (disk_seq, row_status(r)?.is_ended()) {
            index.restore_on_disk(row_to_ended(r, &mut queues)?, at);
            continue;
        }
        let mut job = row_to_job(r, &mut queues)?;
        // A restart ends every lease (the rule is `Job::recover_after_restart`).
        // A job back to pending keeps saying `running` in its row until its
        // next change is written, and is read the same way at every start;
        // one out of attempts is written as failed below.
        if job.recover_after_restart(now, max_attempts) == Some(Status::Failed) {
            failed.push((seq, job.ended_at, job.error.clone()));
            // Written below, before the store is used.
            if let Some(at) = disk_seq {
                index.restore_on_disk(job, at);
                continue;
            }
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
        index.restore(job, arrival, cold);
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

/// The status of a `jobs` row (of [`COLUMNS`]).
fn row_status(r: &rusqlite::Row<'_>) -> rusqlite::Result<Status> {
    let status: rusqlite::types::ValueRef<'_> = r.get_ref(3)?;
    let status = status.as_str().map_err(|_| bad_data("bad status"))?;
    status.parse().map_err(|e: String| bad_data(&e))
}

/// The queue of a `jobs` row, interned in `queues`: a million jobs share a
/// handful of names.
fn row_queue(
    r: &rusqlite::Row<'_>,
    queues: &mut std::collections::HashMap<String, Queue>,
) -> rusqlite::Result<Queue> {
    let queue_name = r.get_ref(1)?.as_str().map_err(|_| bad_data("bad queue"))?;
    Ok(match queues.get(queue_name) {
        Some(q) => q.clone(),
        None => {
            let q = Queue::parse(queue_name).map_err(|e| bad_data(&e))?;
            queues.insert(queue_name.to_owned(), q.clone());
            q
        }
    })
}

/// The idempotency key and fingerprint of a `jobs` row.
fn row_idempotency(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Box<Idempotency>>> {
    let idem_key: Option<String> = r.get(11)?;
    let idem_fp: Option<Vec<u8>> = r.get(12)?;
    Ok(match (idem_key, idem_fp) {
        (Some(key), Some(fp)) => Some(Box::new(Idempotency {
            key,
            fingerprint: fp.try_into().map_err(|_| bad_data("bad fingerprint"))?,
        })),
        _ => None,
    })
}

/// An ended job's row as much as [`Index::restore_on_disk`] keeps of it
/// (the rest is read back by [`row_to_job`] when asked for).
fn row_to_ended(
    r: &rusqlite::Row<'_>,
    queues: &mut std::collections::HashMap<String, Queue>,
) -> rusqlite::Result<Job> {
    let id = uuid_col(Some(r.get(0)?))?.ok_or_else(|| bad_data("no id"))?;
    let queue = row_queue(r, queues)?;
    let status = row_status(r)?;
    let created_at = Timestamp(r.get(5)?);
    Ok(Job {
        ended_at: r.get::<_, Option<i64>>(7)?.map(Timestamp),
        idempotency: row_idempotency(r)?,
        ..Job::bare(id, queue, status, created_at)
    })
}

/// One `jobs` row (of [`COLUMNS`]) as a job without its input.
fn row_to_job(
    r: &rusqlite::Row<'_>,
    queues: &mut std::collections::HashMap<String, Queue>,
) -> rusqlite::Result<Job> {
    Ok(Job {
        id: uuid_col(Some(r.get(0)?))?.ok_or_else(|| bad_data("no id"))?,
        queue: row_queue(r, queues)?,
        priority: r.get(2)?,
        status: row_status(r)?,
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
        idempotency: row_idempotency(r)?,
    })
}

impl EmbeddedStore {
    /// [`Store::insert`]; `urgent`: its durability is asked for at once
    /// (else it may wait for the next fsync, see [`Log::push_tracked`]).
    async fn insert_as(&self, job: NewJob, max_pending: u64, urgent: bool) -> Result<Inserted> {
        let stored = loop {
            let attach = {
                let mut index = self.index();
                self.check_writable()?;
                match index.attach_on_disk(job.idempotency.as_ref()) {
                    Some(on_disk) => on_disk,
                    None => match index.insert(job, max_pending, false)? {
                        Inserted::Created(job) => {
                            let seq = Self::seq(&index, job.id)?;
                            let (committed, durable) = self
                                .log
                                .push_tracked(vec![Op::Insert(seq, job.clone())], urgent);
                            break Ok((Inserted::Created(job), committed, durable));
                        }
                        existing => break Err((existing, self.send(Vec::new(), true))),
                    },
                }
            };
            // Its key names a job moved to disk: read it back, then make
            // sure the key still names it (it may have been purged or
            // cleared meanwhile, freeing the key: then look again).
            if let Some(found) = self.read_one(attach.clone()).await? {
                if self.index().attach_on_disk(job.idempotency.as_ref()) == Some(attach) {
                    return Ok(Inserted::Existing(found));
                }
            }
        };
        let (inserted, committed, durable) = match stored {
            Ok(created) => created,
            Err((existing, rx)) => {
                // Attached by its key to a job held in memory, whose insert
                // or latest change may still wait for its fsync: answered
                // once that is durable, as its own submitter is.
                self.durable(rx).await?;
                return Ok(existing);
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
            self.index().publish(job.id);
            let _ = self.events.send(StoreEvent::JobReady(job.queue.clone()));
            outcome = settled(durable).await;
        }
        match outcome {
            Ok(()) => Ok(inserted),
            Err(e) => {
                // Undo: the insert may still reach the disk once the disk
                // has room again, so a delete follows it in the log.
                let mut index = self.index();
                if let Some(seq) = index.remove(job.id) {
                    let _ = self.send(vec![Op::Delete(seq)], false);
                }
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn insert(&self, job: NewJob, max_pending: u64) -> Result<Inserted> {
        self.insert_as(job, max_pending, true).await
    }

    async fn insert_for_result(&self, job: NewJob, max_pending: u64) -> Result<Inserted> {
        self.insert_as(job, max_pending, false).await
    }

    async fn claim(&self, p: &ClaimParams) -> Result<Option<Claimed>> {
        let (claimed, cold) = {
            let mut index = self.index();
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
            let index = self.index();
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
        // Lives on the stack for this call: boxing the job would cost an
        // allocation per complete.
        #[allow(clippy::large_enum_variant)]
        enum Then {
            Wait(Job, Completion, Option<Durable>),
            ReadBack(OnDisk),
        }
        let then = {
            let mut index = self.index();
            self.check_writable()?;
            match index
                .on_disk(p.id)
                .filter(|d| d.status == Status::Completed)
            {
                Some(on_disk) => Then::ReadBack(on_disk),
                None => {
                    let (job, how) = index.complete(p)?;
                    // A repeat writes nothing but still waits for the earlier write.
                    let ops = if how == Completion::Completed {
                        vec![Op::Update(Self::seq(&index, job.id)?, job.clone())]
                    } else {
                        Vec::new()
                    };
                    let rx = self.send(ops, true);
                    Then::Wait(job, how, rx)
                }
            }
        };
        match then {
            Then::Wait(job, how, rx) => {
                self.durable(rx).await?;
                Ok((job, how))
            }
            Then::ReadBack(on_disk) => self.complete_on_disk(p, on_disk).await,
        }
    }

    async fn fail(&self, p: &FailParams) -> Result<Job> {
        Ok(self.write_one(|i| Ok((i.fail(p)?, ()))).await?.0)
    }

    async fn heartbeat(&self, p: &HeartbeatParams) -> Result<Job> {
        // Leases are not stored: a restart returns running jobs to pending.
        self.index().heartbeat(p)
    }

    async fn release(&self, id: JobId, lease_id: LeaseId) -> Result<Job> {
        // Written like a hand-out (deferred): if it is lost, a restart
        // returns the job to pending all the same.
        let mut index = self.index();
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
            let mut index = self.index();
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
        let held = self.index().get_held(id);
        match held {
            None => Ok(None),
            Some(Held::Here(rec)) => Ok(Some(rec)),
            Some(Held::OnDisk(on_disk)) => Ok(self.read_one(on_disk).await?.map(|job| JobRecord {
                job,
                position: None,
            })),
        }
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>> {
        let held = self.index().list_held(filter);
        let wanted: Vec<OnDisk> = held
            .iter()
            .filter_map(|h| match h {
                Held::OnDisk(d) => Some(d.clone()),
                Held::Here(_) => None,
            })
            .collect();
        let mut read = if wanted.is_empty() {
            Vec::new()
        } else {
            self.read_on_disk(wanted).await?
        }
        .into_iter();
        // A job forgotten since the look at the index is left out.
        Ok(held
            .into_iter()
            .filter_map(|h| match h {
                Held::Here(job) => Some(job),
                Held::OnDisk(_) => read.next().flatten(),
            })
            .collect())
    }

    async fn counts(&self) -> Result<Counts> {
        Ok(self.index().counts())
    }

    async fn activity(&self) -> Result<std::collections::BTreeMap<String, super::QueueActivity>> {
        Ok(self.index().activity())
    }

    async fn rescue_expired(&self, now: Timestamp, max_attempts: u32) -> Result<Vec<Job>> {
        let (changed, rx) = {
            let mut index = self.index();
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
        // The maintenance pass: ended jobs committed since the last one
        // are moved to disk.
        self.settle().await;
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
        self.index().pending_count()
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

    fn complete_params(
        id: JobId,
        lease_id: Option<LeaseId>,
        result: &'static [u8],
    ) -> CompleteParams {
        CompleteParams {
            id,
            lease_id,
            result: Bytes::from_static(result),
            now: Timestamp(20),
        }
    }

    /// The same job, field by field (`Job` has no `PartialEq`).
    fn same(a: &Job, b: &Job) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    /// The admin list and an idempotent `resubmit` both give `full`.
    async fn list_and_attach_give(store: &EmbeddedStore, resubmit: NewJob, full: &Job) {
        assert_listed_first(store, full).await;
        assert_attached(store.insert(resubmit, u64::MAX).await, full);
    }

    async fn assert_listed_first(store: &EmbeddedStore, full: &Job) {
        let listed = store
            .list(&ListFilter {
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(same(&listed[0], full));
    }

    fn assert_attached(inserted: Result<Inserted>, full: &Job) {
        let Inserted::Existing(attached) = inserted.unwrap() else {
            panic!("not attached");
        };
        assert!(same(&attached, full));
    }

    /// Until a job's final write is committed, the index holds it in full
    /// and every read answers from memory (an idempotent attach once that
    /// write is durable, as it answers no earlier state); once committed, the index keeps
    /// a compact record and reads take the job from its row: the same job
    /// either way, also after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ended_jobs_move_to_disk_once_their_final_write_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), SyncMode::Full, 3).unwrap());
        let mut new = new_job(0);
        new.idempotency = Some(Idempotency {
            key: "k".into(),
            fingerprint: [1; 32],
        });
        let resubmit = || NewJob {
            id: JobId::new(),
            ..new.clone()
        };
        let id = new.id;
        store.insert(new.clone(), u64::MAX).await.unwrap();
        let lease = LeaseId::new();
        let claim = ClaimParams::default_queue(lease, Timestamp(10), Timestamp(1000));
        store.claim(&claim).await.unwrap().unwrap();

        // Hold the connection: nothing is committed until it is let go.
        let (held_tx, held) = std::sync::mpsc::channel();
        let (let_go, let_go_rx) = std::sync::mpsc::channel::<()>();
        let log = store.log.clone();
        let holder = std::thread::spawn(move || {
            log.read(|_| {
                held_tx.send(()).unwrap();
                let_go_rx.recv().unwrap();
                Ok(())
            })
            .unwrap()
        });
        held.recv().unwrap();
        let p = complete_params(id, Some(lease), b"{\"r\":1}");
        let completing = {
            let (store, p) = (store.clone(), p.clone());
            tokio::spawn(async move { store.complete(&p).await })
        };
        let began = std::time::Instant::now();
        while store.index.lock().get(id).unwrap().job.status != Status::Completed {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "complete not applied"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Applied, its write queued, not committed: held in full.
        let full = store.get(id).await.unwrap().unwrap().job;
        assert_eq!(full.result.as_deref(), Some(&b"{\"r\":1}"[..]));
        assert_eq!((full.attempts, full.ended_at), (1, Some(Timestamp(20))));
        assert_listed_first(&store, &full).await;
        let attaching = {
            let (store, r) = (store.clone(), resubmit());
            tokio::spawn(async move { store.insert(r, u64::MAX).await })
        };
        // Time to answer, were it to answer from memory.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            store.index.lock().on_disk(id).is_none(),
            "moved before its commit"
        );
        assert!(!completing.is_finished(), "answered before its commit");
        assert!(!attaching.is_finished(), "attached before its commit");

        let_go.send(()).unwrap();
        holder.join().unwrap();
        let (job, how) = completing.await.unwrap().unwrap();
        assert_eq!(how, Completion::Completed);
        assert!(same(&job, &full));
        assert_attached(attaching.await.unwrap(), &full);
        // Committed: still held in full until the maintenance pass (which
        // purges nothing here) moves it to disk.
        assert!(same(&store.get(id).await.unwrap().unwrap().job, &full));
        assert!(store.index.lock().on_disk(id).is_none());
        let day = Duration::from_secs(86_400);
        assert_eq!(store.purge_expired(day, Timestamp(30)).await.unwrap(), 0);
        let back = store.get(id).await.unwrap().unwrap();
        assert!(
            store.index.lock().on_disk(id).is_some(),
            "not moved to disk"
        );
        assert!(same(&back.job, &full) && back.position.is_none());
        list_and_attach_give(&store, resubmit(), &full).await;
        let (again, how) = store.complete(&p).await.unwrap();
        assert_eq!(how, Completion::AlreadyCompleted);
        assert!(same(&again, &full));
        assert!(matches!(
            store
                .complete(&complete_params(id, Some(LeaseId::new()), b"x"))
                .await,
            Err(Error::Transition(crate::job::TransitionError::StaleLease))
        ));
        assert!(
            store.index.lock().on_disk(id).is_some(),
            "reads change nothing"
        );

        // A restart loads it as a compact record at once.
        store.close().await.unwrap();
        drop(store);
        let store = EmbeddedStore::open(dir.path(), SyncMode::Full, 3).unwrap();
        assert!(store.index.lock().on_disk(id).is_some(), "loaded in full");
        assert!(same(&store.get(id).await.unwrap().unwrap().job, &full));
        let Inserted::Existing(attached) = store.insert(resubmit(), u64::MAX).await.unwrap() else {
            panic!("not attached after a restart");
        };
        assert!(same(&attached, &full));
        store.close().await.unwrap();
    }

    /// A sync submit's insert (`insert_for_result`) asks for no fsync of
    /// its own: alone, it is made durable by the syncer's deadline — not
    /// sooner, and not never.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_insert_for_a_result_is_synced_by_the_deadline_when_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), SyncMode::Full, 3).unwrap();
        let began = std::time::Instant::now();
        let inserted = tokio::time::timeout(
            Duration::from_secs(10),
            store.insert_for_result(new_job(1), u64::MAX),
        )
        .await
        .expect("durable within the bound");
        assert!(matches!(inserted, Ok(Inserted::Created(_))));
        assert!(began.elapsed() >= log::LAZY_SYNC_WITHIN);
        // A plain insert asks for its fsync at once.
        tokio::time::timeout(Duration::from_secs(10), store.insert(new_job(2), u64::MAX))
            .await
            .expect("durable")
            .unwrap();
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
