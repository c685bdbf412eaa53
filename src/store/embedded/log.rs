//! The embedded store's write path (group commit).
//!
//! Changes are queued in the order they happen (under the index lock) and
//! committed in batches. There is no writer thread to hand them to: the
//! request that queued a change and finds the connection free becomes the
//! *leader* and commits everything queued, its own change and those of the
//! requests that came while the previous batch was being written. A request
//! that finds the connection busy just waits; the leader picks its change up.
//! This saves two thread switches per write, which on a small machine cost
//! more than the SQLite work itself. Changes nobody waits for (hand-outs,
//! purges) ride along with the next batch, or are committed by a background
//! thread shortly after.
//!
//! Why the fsync is not the commit's own: SQLite's `synchronous=FULL` would
//! hold the connection through each batch's fsync, so every request would
//! wait for the fsync in flight and then its own, and nothing could be
//! committed meanwhile. Here SQLite commits without syncing
//! (`synchronous=NORMAL`, which still syncs around checkpoints, so the files
//! stay consistent), and a syncer thread calls `fdatasync` on the WAL file:
//! the batches written before a call began are durable when it returns.
//! With `--sync full` they are acknowledged only then; with `--sync normal`
//! at once (they are in the OS, safe from a crash of jobq) and the syncer
//! runs at most every [`SYNC_INTERVAL`].

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rusqlite::{params, Connection, PrepFlags, Statement};
use tokio::sync::oneshot;

use crate::job::{Job, JobId};
use crate::store::SyncMode;

/// With `--sync normal`, the longest a commit waits for its fdatasync: a
/// power loss loses at most about this much acknowledged work.
pub(super) const SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// With `--sync full`, the longest a commit that asked for no fsync of its
/// own (a sync submit's insert, a deferred hand-out) waits for one: long
/// enough for the job's complete to come and share it, short enough that
/// nothing else waits noticeably (a sync submit's `202`, the cancel of a
/// job whose client left while it was being stored).
pub(super) const LAZY_SYNC_WITHIN: Duration = Duration::from_millis(2);

/// Inputs (payload and headers) up to this size are kept in the job row;
/// larger ones in a table of their own, so that start-up does not read them.
const INLINE_MAX: usize = 1024;

/// Pause between retries of a batch that failed to commit.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// How long a change nobody waits for may stay queued: hand-outs (which a
/// later change of the job, usually its completion, makes unnecessary),
/// deletions of ended jobs' inputs and of purged jobs.
pub(super) const DEFER: Duration = Duration::from_millis(100);

/// Commits between two checkpoints (folding the WAL into the database
/// file). SQLite's own automatic checkpoint is off: it would run on
/// whichever thread commits, often a request's async runtime thread, and
/// sync both files there; the background thread runs it instead.
pub(super) const CHECKPOINT_EVERY: u32 = 2_500;

/// Batches one leader commits before handing the rest to the background
/// thread, so that no request is held up committing others' changes for long.
const MAX_ROUNDS: usize = 4;

/// A change to write; the `u64` is the job's arrival number, its row key.
pub(super) enum Op {
    Insert(u64, Job),
    Update(u64, Job),
    Delete(u64),
}

/// Told `Ok` once a command's changes are durable.
pub(super) type Done = oneshot::Sender<Result<(), String>>;

/// Waits for a command to be durable.
pub(super) type Durable = oneshot::Receiver<Result<(), String>>;

/// Ops to write in order; `done` (if any) hears when they are durable,
/// `committed` (if any) when they are in the WAL. `urgent`: the batch that
/// carries them is synced at once; otherwise `done` may wait for the next
/// fsync another change asks for, or [`LAZY_SYNC_WITHIN`].
struct Cmd {
    ops: Vec<Op>,
    done: Option<Done>,
    committed: Option<Done>,
    urgent: bool,
}

/// What is waiting to be written.
#[derive(Default)]
struct Queue {
    /// Changes in the order they happened.
    cmds: Vec<Cmd>,
    /// Hand-outs not yet written, by arrival number; a later change of the
    /// job replaces its hand-out (it carries the attempt count too).
    handouts: HashMap<u64, Job, foldhash::fast::RandomState>,
    /// Jobs that ended, whose input rows are to be deleted.
    ended: Vec<u64>,
}

/// One transaction's worth of [`Queue`].
#[derive(Default)]
struct Batch {
    cmds: Vec<Cmd>,
    handouts: Vec<(u64, Job)>,
    ended: Vec<u64>,
}

impl Queue {
    fn take(&mut self, deferred: bool) -> Batch {
        let mut b = Batch {
            cmds: std::mem::take(&mut self.cmds),
            ..Batch::default()
        };
        if deferred {
            b.handouts = self.handouts.drain().collect();
            b.ended = std::mem::take(&mut self.ended);
        }
        b
    }

    fn has_cmds(&self) -> bool {
        !self.cmds.is_empty()
    }
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.cmds.is_empty() && self.handouts.is_empty() && self.ended.is_empty()
    }
}

/// Whether the log can take writes.
#[derive(Default)]
pub(super) struct Health {
    /// Set while a batch cannot be committed (disk full); cleared when it can.
    pub read_only: AtomicBool,
    /// Set for good by a failed fdatasync: the kernel may have dropped the
    /// pages it could not write, so a later sync would prove nothing.
    pub sync_failed: OnceLock<String>,
}

/// The queue of changes and the connection that writes them.
pub(super) struct Log {
    queue: Mutex<Queue>,
    /// Held by the leader while it commits; `None` once closed.
    conn: Mutex<Option<Db>>,
    syncer: Syncer,
    health: Arc<Health>,
    background: Arc<Signal>,
    background_thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Commits since the last checkpoint.
    since_checkpoint: AtomicU32,
    /// Jobs whose final (ended) state has been committed since the store
    /// last took them: it may now drop their full records and read them
    /// back from the database (see [`Log::take_settled`]).
    settled: Mutex<Vec<JobId>>,
}

/// Wakes the background thread.
#[derive(Default)]
struct Signal {
    state: Mutex<SignalState>,
    cv: Condvar,
}

#[derive(Default)]
struct SignalState {
    /// Something is queued that no leader may take soon.
    lazy: bool,
    /// A leader stopped with changes still queued: commit them now.
    urgent: bool,
    /// [`CHECKPOINT_EVERY`] commits since the last checkpoint: run one.
    checkpoint: bool,
    stop: bool,
}

self_cell::self_cell!(
    /// The connection and the statements of every batch, prepared once for
    /// its life. rusqlite's statement cache would hash each statement's SQL
    /// text to find it and clear its bindings to put it back, five times a
    /// batch (about 4% of the embedded store's instructions per job).
    struct Db {
        owner: Connection,
        #[covariant]
        dependent: Writes,
    }
);

// SAFETY: a `Statement` is not `Send` because it must not be used on one
// thread while its connection is used on another. A `Db` moves its
// connection and all of that connection's statements together, and they are
// only reached through the `Mutex` in `Log::conn`, so one thread at a time
// uses any of them (the connection is opened `SQLITE_OPEN_NO_MUTEX` for
// exactly this serialized use). The statements never leave the `Db`.
unsafe impl Send for Db {}

impl Db {
    fn open(conn: Connection) -> rusqlite::Result<Db> {
        Db::try_new(conn, |c| Writes::prepare(c))
    }

    fn conn(&self) -> &Connection {
        self.borrow_owner()
    }
}

/// The statements [`write_batch`] runs for every batch.
struct Writes<'c> {
    begin: Statement<'c>,
    commit: Statement<'c>,
    insert: Statement<'c>,
    insert_input: Statement<'c>,
    update: Statement<'c>,
    /// A large value (an input over [`INLINE_MAX`], a result) is bound:
    /// SQLite keeps its copy until the statement is bound again, so the
    /// bindings are cleared after the batch.
    holding: bool,
}

impl<'c> Writes<'c> {
    fn prepare(c: &'c Connection) -> rusqlite::Result<Writes<'c>> {
        // SQLite's hint for statements kept long (rusqlite's cache gives it too).
        let prepare = |sql| c.prepare_with_flags(sql, PrepFlags::SQLITE_PREPARE_PERSISTENT);
        Ok(Writes {
            begin: prepare("BEGIN IMMEDIATE")?,
            commit: prepare("COMMIT")?,
            insert: prepare(
                "INSERT INTO jobs (seq, id, queue, priority, status, attempts, created_at, idem_key, \
                 idem_fp, payload, headers) VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?7, ?8, ?9)",
            )?,
            insert_input: prepare("INSERT INTO inputs (seq, payload, headers) VALUES (?1, ?2, ?3)")?,
            // An ended job's inline input is emptied with the same write.
            update: prepare(
                "UPDATE jobs SET status = ?2, attempts = ?3, started_at = ?4, ended_at = ?5, \
                 lease_id = ?6, result = ?7, error = ?8, payload = iif(?9, NULL, payload), \
                 headers = iif(?9, NULL, headers) WHERE seq = ?1",
            )?,
            holding: false,
        })
    }

    /// Drops SQLite's copies of large values this batch bound.
    fn release(&mut self) {
        if std::mem::take(&mut self.holding) {
            self.insert_input.clear_bindings();
            self.update.clear_bindings();
        }
    }

    fn update(&mut self, seq: u64, j: &Job) -> rusqlite::Result<usize> {
        self.holding |= j.result.as_ref().is_some_and(|r| r.len() > INLINE_MAX);
        self.update.execute(params![
            seq as i64,
            j.status.as_str(),
            j.attempts,
            j.started_at.map(|t| t.0),
            j.ended_at.map(|t| t.0),
            j.lease_id.as_ref().map(|l| &l.0.as_bytes()[..]),
            j.result.as_deref(),
            j.error.as_deref(),
            j.status.is_ended(),
        ])
    }

    /// Writes a new job's row, its input inline when small (else in `inputs`).
    fn insert(&mut self, seq: u64, j: &Job) -> rusqlite::Result<()> {
        let inline = j.payload.len() + j.headers.len() <= INLINE_MAX;
        self.insert.execute(params![
            seq as i64,
            j.id.0.as_bytes(),
            j.queue.as_str(),
            j.priority,
            j.created_at.0,
            j.idempotency.as_ref().map(|i| i.key.as_str()),
            j.idempotency.as_ref().map(|i| &i.fingerprint[..]),
            inline.then_some(&j.payload[..]),
            inline.then_some(&j.headers[..]),
        ])?;
        if !inline {
            self.holding = true;
            self.insert_input
                .execute(params![seq as i64, &j.payload[..], &j.headers[..]])?;
        }
        Ok(())
    }
}

impl Log {
    /// Takes over `conn`; `wal` is the database's WAL file, synced as
    /// `policy` says.
    pub(super) fn start(
        conn: Connection,
        wal: File,
        policy: SyncMode,
    ) -> std::io::Result<Arc<Log>> {
        let db = Db::open(conn).map_err(std::io::Error::other)?;
        let health = Arc::new(Health::default());
        let syncer = Syncer::start(wal, policy, health.clone())?;
        let log = Arc::new(Log {
            queue: Mutex::new(Queue::default()),
            conn: Mutex::new(Some(db)),
            syncer,
            health,
            background: Arc::default(),
            background_thread: Mutex::new(None),
            closed: AtomicBool::new(false),
            since_checkpoint: AtomicU32::new(0),
            settled: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&log);
        let signal = log.background.clone();
        let health = log.health.clone();
        let thread = std::thread::Builder::new()
            .name("jobq-log".into())
            .spawn(move || background(weak, signal, health))?;
        *log.background_thread.lock() = Some(thread);
        Ok(log)
    }

    pub(super) fn health(&self) -> &Health {
        &self.health
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Queues `ops`; with `durable`, returns a receiver that hears when they
    /// (and everything queued before them) are durable — after a
    /// [`Log::flush`]. Call under the index lock, so that the log keeps the
    /// order in which the changes happened.
    pub(super) fn push(&self, ops: Vec<Op>, durable: bool) -> Option<Durable> {
        let (done, rx) = if durable {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        self.push_cmd(ops, done, None, true);
        rx
    }

    /// As [`Log::push`] with `durable`, also telling when the ops are
    /// committed (in the WAL, safe from `kill -9`), which comes first:
    /// (committed, durable). Without `urgent`, durable may wait for the next
    /// fsync that another change asks for, or [`LAZY_SYNC_WITHIN`] at most.
    pub(super) fn push_tracked(&self, ops: Vec<Op>, urgent: bool) -> (Durable, Durable) {
        let (done, durable) = oneshot::channel();
        let (committed, in_wal) = oneshot::channel();
        self.push_cmd(ops, Some(done), Some(committed), urgent);
        (in_wal, durable)
    }

    fn push_cmd(&self, ops: Vec<Op>, done: Option<Done>, committed: Option<Done>, urgent: bool) {
        let durable = done.is_some();
        let mut q = self.queue.lock();
        if self.closed.load(Ordering::Acquire) {
            drop(q);
            answer(done.into_iter().chain(committed), || {
                Err("store is closed".into())
            });
            return;
        }
        let mut lazy = !durable;
        for op in &ops {
            match op {
                Op::Insert(..) => {}
                Op::Update(seq, job) => {
                    q.handouts.remove(seq);
                    if job.status.is_ended() {
                        q.ended.push(*seq);
                        lazy = true;
                    }
                }
                Op::Delete(seq) => {
                    q.handouts.remove(seq);
                }
            }
        }
        q.cmds.push(Cmd {
            ops,
            done,
            committed,
            urgent,
        });
        drop(q);
        if lazy {
            self.background.wake(false);
        }
    }

    /// Queues the write of a hand-out, deferred: a restart returns running
    /// jobs to pending anyway, and the job's next change (usually its
    /// completion) carries the attempt count too. Call under the index lock.
    pub(super) fn push_handout(&self, seq: u64, job: Job) {
        self.queue.lock().handouts.insert(seq, job);
        self.background.wake(false);
    }

    /// Up to `max` jobs whose final state was committed (and so can be read
    /// back through [`Log::read`]) since the last call.
    pub(super) fn take_settled(&self, max: usize) -> Vec<JobId> {
        let mut settled = self.settled.lock();
        if settled.len() <= max {
            std::mem::take(&mut *settled)
        } else {
            let keep = settled.len() - max;
            settled.split_off(keep)
        }
    }

    /// Commits everything queued, unless another thread is already doing so
    /// (it will take what this one queued). Blocks for one or a few commits:
    /// tens of microseconds, without fsync.
    pub(super) fn flush(&self) {
        loop {
            {
                let Some(mut conn) = self.conn.try_lock() else {
                    return;
                };
                let mut rounds = 0;
                while self.commit_queued(&mut conn, false) {
                    rounds += 1;
                    if rounds == MAX_ROUNDS {
                        drop(conn);
                        self.background.wake(true);
                        return;
                    }
                }
            }
            // A request that queued after the last look may have found the
            // connection busy and left its change to this leader.
            if !self.queue.lock().has_cmds() || self.health.read_only.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// Commits what is queued (with `deferred`, the deferred writes too) as
    /// one batch; false when there was nothing to commit or it failed.
    fn commit_queued(&self, conn: &mut Option<Db>, deferred: bool) -> bool {
        let batch = self.queue.lock().take(deferred);
        if batch.is_empty() {
            return false;
        }
        let Some(c) = conn.as_mut() else {
            answer(
                batch
                    .cmds
                    .into_iter()
                    .flat_map(|c| c.done.into_iter().chain(c.committed)),
                || Err("store is closed".into()),
            );
            return false;
        };
        self.commit(c, batch)
    }

    /// Commits one batch; false (and the batch back at the head of the
    /// queue) when it cannot.
    fn commit(&self, db: &mut Db, batch: Batch) -> bool {
        let began = Instant::now();
        match db.with_dependent_mut(|conn, writes| write_batch(conn, writes, &batch)) {
            Ok(()) => {
                let changes =
                    batch.cmds.iter().map(|c| c.ops.len()).sum::<usize>() + batch.handouts.len();
                crate::metrics::store_commit("embedded", changes, began.elapsed());
                if self.health.read_only.swap(false, Ordering::AcqRel) {
                    tracing::info!("storage writable again");
                }
                // Before anyone hears of the commit: a caller that did finds
                // its job here.
                let mut ended = batch
                    .cmds
                    .iter()
                    .flat_map(|c| &c.ops)
                    .filter_map(|op| match op {
                        Op::Update(_, j) if j.status.is_ended() => Some(j.id),
                        _ => None,
                    })
                    .peekable();
                if ended.peek().is_some() {
                    self.settled.lock().extend(ended);
                }
                let mut done = Vec::with_capacity(batch.cmds.len());
                let mut committed = Vec::new();
                let mut urgent = false;
                for c in batch.cmds {
                    urgent |= c.urgent && c.done.is_some();
                    done.extend(c.done);
                    committed.extend(c.committed);
                }
                answer(committed, || Ok(()));
                self.syncer.written(done, urgent);
                if self.since_checkpoint.fetch_add(1, Ordering::Relaxed) + 1 == CHECKPOINT_EVERY {
                    self.background.checkpoint();
                }
                true
            }
            Err(e) => {
                // Keep the changes (they are the log) to retry them first;
                // their callers are told now, so they do not hang while the
                // disk is full. Deferred hand-outs are dropped: a later
                // change may have replaced them meanwhile.
                if !self.health.read_only.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "cannot commit to the embedded store; read-only until it can");
                }
                let mut queue = self.queue.lock();
                let later = std::mem::take(&mut queue.cmds);
                queue.cmds = batch.cmds;
                queue.cmds.extend(later);
                queue.ended.extend(batch.ended);
                // Everything queued behind the failed batch waits for it:
                // tell those callers too.
                let done: Vec<Done> = queue
                    .cmds
                    .iter_mut()
                    .flat_map(|c| c.done.take().into_iter().chain(c.committed.take()))
                    .collect();
                drop(queue);
                answer(done, || Err(format!("cannot write: {e}")));
                // The background thread retries (it may be waiting without a timeout).
                self.background.cv.notify_one();
                false
            }
        }
    }

    /// Runs `f` on the connection, waiting for a leader to finish.
    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        let out = {
            let conn = self.conn.lock();
            let db = conn.as_ref().ok_or("store is closed")?;
            f(db.conn()).map_err(|e| e.to_string())
        };
        self.released();
        out
    }

    /// Called by whoever held the connection without leading (a reader, the
    /// background thread) after letting go: a request that queued a change
    /// meanwhile found the connection busy and left it to the holder.
    fn released(&self) {
        if self.queue.lock().has_cmds() && !self.health.read_only.load(Ordering::Acquire) {
            self.background.wake(true);
        }
    }

    /// Commits what is queued, waits for the syncer, folds the WAL into the
    /// database file and closes the connection. Later writes fail.
    pub(super) fn close(&self) -> Result<(), String> {
        {
            // Under the queue lock: a change is either queued before this
            // (and committed below) or refused.
            let _queue = self.queue.lock();
            self.closed.store(true, Ordering::Release);
        }
        self.background.stop();
        if let Some(t) = self.background_thread.lock().take() {
            // The background thread itself may be closing the log (it held
            // the last reference for a moment): it cannot wait for itself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        let mut conn = self.conn.lock();
        let Some(mut c) = conn.take() else {
            return Ok(());
        };
        let batch = self.queue.lock().take(true);
        let committed = batch.is_empty() || self.commit(&mut c, batch);
        self.syncer.stop();
        if !committed {
            return Err("the last changes could not be written".into());
        }
        if let Some(e) = self.health.sync_failed.get() {
            return Err(e.clone());
        }
        // Folding the WAL into the database file only makes the next start
        // faster, so a failure is no error.
        if let Err(e) = c
            .conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "final checkpoint failed; the WAL is replayed at next start");
        }
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Commits what is still queued (the background thread holds only a
        // weak reference, so it cannot do it any more).
        let _ = self.close();
    }
}

impl Signal {
    fn wake(&self, urgent: bool) {
        let mut st = self.state.lock();
        if urgent {
            st.urgent = true;
        } else if st.lazy {
            return;
        } else {
            st.lazy = true;
        }
        self.cv.notify_one();
    }

    fn checkpoint(&self) {
        self.state.lock().checkpoint = true;
        self.cv.notify_one();
    }

    fn stop(&self) {
        self.state.lock().stop = true;
        self.cv.notify_one();
    }
}

/// Commits changes that no leader took: lazy and deferred ones after
/// [`DEFER`], urgent ones at once; while the store is read-only, retries
/// the batch that failed every [`RETRY_PAUSE`] and nothing else.
fn background(log: Weak<Log>, signal: Arc<Signal>, health: Arc<Health>) {
    loop {
        // (sleep first, take the deferred writes too)
        let (sleep, deferred, checkpoint) = {
            let mut st = signal.state.lock();
            let mut retry_at = None;
            loop {
                if st.stop {
                    return;
                }
                if health.read_only.load(Ordering::Acquire) {
                    let at = *retry_at.get_or_insert_with(|| Instant::now() + RETRY_PAUSE);
                    if signal.cv.wait_until(&mut st, at).timed_out() {
                        break (false, true, false);
                    }
                    continue;
                }
                let checkpoint = std::mem::take(&mut st.checkpoint);
                if st.urgent || checkpoint {
                    break (false, false, checkpoint);
                }
                if st.lazy {
                    break (true, true, false);
                }
                signal.cv.wait(&mut st);
            }
        };
        if sleep {
            std::thread::sleep(DEFER);
        }
        {
            // Cleared before committing: a change queued from now on wakes us again.
            let mut st = signal.state.lock();
            st.urgent = false;
            if deferred {
                st.lazy = false;
            }
        }
        let Some(log) = log.upgrade() else {
            return;
        };
        {
            let mut conn = log.conn.lock();
            for _ in 0..MAX_ROUNDS {
                if !log.commit_queued(&mut conn, deferred) {
                    break;
                }
            }
            if let (true, Some(c)) = (checkpoint, conn.as_mut()) {
                log.since_checkpoint.store(0, Ordering::Relaxed);
                // PASSIVE: never waits; a failure only leaves a longer WAL.
                if let Err(e) = c
                    .conn()
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(error = %e, "checkpoint failed; will retry");
                }
            }
        }
        log.released();
    }
}

fn write_batch(conn: &Connection, w: &mut Writes<'_>, batch: &Batch) -> rusqlite::Result<()> {
    w.begin.execute([])?;
    let written = write_rows(conn, w, batch).and_then(|()| w.commit.execute([]).map(drop));
    w.release();
    if written.is_err() && !conn.is_autocommit() {
        // As a dropped `Transaction` would; the caller reports the error.
        let _ = conn.execute_batch("ROLLBACK");
    }
    written
}

/// The rows of `batch`, inside the transaction `write_batch` opened.
fn write_rows(tx: &Connection, w: &mut Writes<'_>, batch: &Batch) -> rusqlite::Result<()> {
    // An update that a later update of the same job in this batch
    // overwrites is skipped.
    let mut last_update: HashMap<u64, usize, foldhash::fast::RandomState> = Default::default();
    for (i, op) in batch.cmds.iter().flat_map(|c| &c.ops).enumerate() {
        if let Op::Update(seq, _) = op {
            last_update.insert(*seq, i);
        }
    }
    for (i, op) in batch.cmds.iter().flat_map(|c| &c.ops).enumerate() {
        match op {
            Op::Update(seq, _) if last_update.get(seq) != Some(&i) => {}
            Op::Insert(seq, j) => w.insert(*seq, j)?,
            Op::Update(seq, j) => {
                w.update(*seq, j)?;
            }
            Op::Delete(seq) => {
                // Rare (purges): cached, not held.
                tx.prepare_cached("DELETE FROM jobs WHERE seq = ?1")?
                    .execute(params![*seq as i64])?;
                tx.prepare_cached("DELETE FROM inputs WHERE seq = ?1")?
                    .execute(params![*seq as i64])?;
            }
        }
    }
    // Deferred hand-outs last: queuing a change of a job drops its
    // hand-out, so one still here is newer than the job's changes in `cmds`.
    for (seq, j) in &batch.handouts {
        w.update(*seq, j)?;
    }
    // Nothing reads an ended job's input again. Jobs mostly end in the
    // order they arrived, so the rows go in runs of consecutive keys,
    // one range delete each.
    for (first, last) in runs(&batch.ended) {
        tx.prepare_cached("DELETE FROM inputs WHERE seq BETWEEN ?1 AND ?2")?
            .execute(params![first as i64, last as i64])?;
    }
    Ok(())
}

/// `seqs` sorted and collapsed into runs of consecutive numbers, as
/// (first, last) pairs.
fn runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == s => *last = s,
            _ => out.push((s, s)),
        }
    }
    out
}

fn answer(done: impl IntoIterator<Item = Done>, outcome: impl Fn() -> Result<(), String>) {
    for d in done {
        let _ = d.send(outcome());
    }
}

/// Makes committed batches durable with fdatasync of the WAL, on a thread
/// of its own, so that committing the next batch need not wait for it.
struct Syncer {
    shared: Arc<SyncShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct SyncShared {
    state: Mutex<SyncState>,
    cv: Condvar,
    wal: File,
    policy: SyncMode,
    health: Arc<Health>,
}

#[derive(Default)]
struct SyncState {
    /// Number of the last batch written to the WAL.
    written: u64,
    /// The last batch that a sync already begun covers.
    started: u64,
    /// The last batch that asked to be synced at once.
    urgent: u64,
    /// When the oldest batch written since the last sync began that did
    /// not ask to be synced at once was written: it is synced at the latest
    /// [`LAZY_SYNC_WITHIN`] after that.
    lazy_since: Option<Instant>,
    /// Acknowledgements of written batches, oldest first, by batch number.
    waiting: VecDeque<(u64, Vec<Done>)>,
    /// The thread waits for a write, without a deadline.
    idle: bool,
    /// The thread waits for an urgent write or a lazy batch's deadline.
    pausing: bool,
    stopping: bool,
}

impl Syncer {
    fn start(wal: File, policy: SyncMode, health: Arc<Health>) -> std::io::Result<Syncer> {
        let shared = Arc::new(SyncShared {
            state: Mutex::new(SyncState::default()),
            cv: Condvar::new(),
            wal,
            policy,
            health,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("jobq-sync".into())
                .spawn(move || shared.run())?
        };
        Ok(Syncer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// A batch is in the WAL; `done` hear once it is durable (as the
    /// policy defines it). Without `urgent` (nobody waits for it, or only
    /// a sync submit's insert, whose client waits for the job's result,
    /// which is durable only after it) the batch is synced with the next
    /// urgent one, or [`LAZY_SYNC_WITHIN`] after it at the latest: one fsync
    /// fewer per job when its complete follows soon.
    fn written(&self, done: Vec<Done>, urgent: bool) {
        let mut st = self.shared.state.lock();
        // Checked under the lock the syncer sets it under, so a batch is
        // either answered here or drained there.
        if let Some(e) = self.shared.health.sync_failed.get() {
            drop(st);
            return answer(done, || Err(e.clone()));
        }
        st.written += 1;
        let n = st.written;
        // `--sync normal` syncs every write, at most every SYNC_INTERVAL.
        let urgent = urgent || self.shared.policy == SyncMode::Normal;
        if urgent {
            st.urgent = n;
        } else if st.lazy_since.is_none() {
            st.lazy_since = Some(Instant::now());
        }
        let done = match self.shared.policy {
            SyncMode::Full if !done.is_empty() => {
                st.waiting.push_back((n, done));
                Vec::new()
            }
            _ => done,
        };
        // A thread pausing for a lazy batch's deadline needs no wake-up
        // for another lazy one.
        let wake = std::mem::take(&mut st.idle) || (urgent && std::mem::take(&mut st.pausing));
        drop(st);
        if wake {
            self.shared.cv.notify_one();
        }
        answer(done, || Ok(()));
    }

    /// Returns once every written batch has been synced (or failed to).
    fn stop(&self) {
        self.shared.state.lock().stopping = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl SyncShared {
    fn run(&self) {
        let mut st = self.state.lock();
        loop {
            let unsynced = st.written > st.started && self.health.sync_failed.get().is_none();
            let due = st.urgent > st.started
                || st.stopping
                || st
                    .lazy_since
                    .is_some_and(|t| t.elapsed() >= LAZY_SYNC_WITHIN);
            if unsynced && due {
                let target = st.written;
                st.started = target;
                st.lazy_since = None;
                drop(st);
                let began = Instant::now();
                let r = self.wal.sync_data();
                crate::metrics::store_sync("embedded", began.elapsed());
                st = self.state.lock();
                let mut ready = Vec::new();
                let outcome = match r {
                    Ok(()) => {
                        while st.waiting.front().is_some_and(|(n, _)| *n <= target) {
                            ready.extend(st.waiting.pop_front().map(|(_, d)| d));
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let msg = format!("fsync of the WAL failed: {e}; restart jobq");
                        if self.health.sync_failed.set(msg.clone()).is_ok() {
                            tracing::error!(error = %e, "fsync of the WAL failed; refusing writes until restart");
                        }
                        ready.extend(st.waiting.drain(..).map(|(_, d)| d));
                        Err(msg)
                    }
                };
                drop(st);
                answer(ready.into_iter().flatten(), || outcome.clone());
                st = self.state.lock();
                if self.policy == SyncMode::Normal {
                    let pause = SYNC_INTERVAL;
                    // Writes are not waited for; wake early only to stop.
                    let until = std::time::Instant::now() + pause;
                    while !st.stopping && !self.cv.wait_until(&mut st, until).timed_out() {}
                }
                continue;
            }
            if st.stopping {
                return;
            }
            match st.lazy_since {
                Some(since) if unsynced => {
                    st.pausing = true;
                    let _ = self.cv.wait_until(&mut st, since + LAZY_SYNC_WITHIN);
                    st.pausing = false;
                }
                _ => {
                    st.idle = true;
                    self.cv.wait(&mut st);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_collapse_consecutive_numbers() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[5]), vec![(5, 5)]);
        assert_eq!(
            runs(&[7, 3, 4, 5, 9, 8, 20, 4]),
            vec![(3, 5), (7, 9), (20, 20)]
        );
    }
}
