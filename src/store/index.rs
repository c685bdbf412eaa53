//! The in-memory index of jobs that the memory store is and the embedded
//! store keeps in front of its database: plain data plus the transition
//! rules of [`crate::job`] (every change is one of `Job`'s methods), with the
//! per-queue pending order, idempotency keys, counts and the ended-jobs queue
//! for `--result-ttl`. No I/O and no locking of its own: each store holds it
//! behind a mutex, never across an await.
//!
//! A durable store may move an ended job "to disk" once its final state is
//! written ([`Index::move_to_disk`]): the index then keeps a compact record
//! of it ([`Ended`]) instead of the whole job, and reads of it
//! ([`Index::get_held`], [`Index::list_held`]) say where to read it back
//! ([`OnDisk`]). Jobs are kept for `--result-ttl`, so at a steady rate the
//! ended ones are nearly all of them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::collections::{ChunkedQueue, ShardedMap};
use super::{
    ClaimParams, Claimed, CompleteParams, Counts, Error, FailParams, HeartbeatParams, Inserted,
    JobRecord, ListFilter, QueueActivity, Result, StatusCounts,
};
use crate::job::{Completion, Idempotency, Job, JobId, LeaseId, NewJob, Queue, Status, Timestamp};

/// Order of pending jobs inside a queue: higher priority first, then older.
type PendingKey = (Reverse<i32>, u64);

#[derive(Debug)]
struct Entry {
    job: Job,
    /// The arrival number (see [`Entry::seq`]) and, in the top bit, whether
    /// the job is cold (see [`Entry::cold`]). One word instead of two: an
    /// entry of 256 bytes takes the allocator's 256-byte size class instead
    /// of the 320-byte one, for every job kept.
    seq_cold: u64,
}

/// The bit of [`Entry::seq_cold`] that says the job is cold.
const COLD: u64 = 1 << 63;

impl Entry {
    fn new(job: Job, seq: u64, cold: bool) -> Self {
        debug_assert!(seq & COLD == 0);
        Entry {
            job,
            seq_cold: seq | if cold { COLD } else { 0 },
        }
    }

    /// Arrival order, the tie-breaker between equal priorities (and the key
    /// a retried job goes back under, so it keeps its place).
    fn seq(&self) -> u64 {
        self.seq_cold & !COLD
    }

    /// The job's payload and headers are not held in memory (a durable
    /// store loaded it without them, and reads them at hand-out).
    fn cold(&self) -> bool {
        self.seq_cold & COLD != 0
    }
}

/// An ended job whose full record (result, error, timestamps, attempts,
/// lease) is in durable storage: what the index still needs of it. Its id
/// and idempotency key stay taken, `clear` and the purge find it, counts
/// and lists filter and order it; everything else is read back by `seq`.
/// 40 bytes in the map's slot, where a job held in full costs a 256-byte
/// entry, its slot and its result.
#[derive(Debug)]
struct Ended {
    queue: Queue,
    created_at: Timestamp,
    /// The arrival number (the row key) and, in the top two bits, the status.
    seq_status: u64,
    /// Its key's fingerprint answers a mismatch without a read; moved from
    /// the job, not copied.
    idempotency: Option<Box<Idempotency>>,
}

/// Where [`Ended::seq_status`] keeps the status.
const STATUS_SHIFT: u32 = 62;

/// The largest arrival number a job moved to disk can have (a job with a
/// larger one stays in full; arrival numbers count jobs from 0).
pub const MAX_DISK_SEQ: u64 = (1 << STATUS_SHIFT) - 1;

impl Ended {
    /// `job` must have ended, and `seq` be at most [`MAX_DISK_SEQ`].
    fn new(job: Job, seq: u64) -> Self {
        debug_assert!(job.status.is_ended() && seq <= MAX_DISK_SEQ);
        let code: u64 = match job.status {
            Status::Completed => 0,
            Status::Failed => 1,
            _ => 2,
        };
        Ended {
            queue: job.queue,
            created_at: job.created_at,
            seq_status: seq | code << STATUS_SHIFT,
            idempotency: job.idempotency,
        }
    }

    fn seq(&self) -> u64 {
        self.seq_status & MAX_DISK_SEQ
    }

    fn status(&self) -> Status {
        match self.seq_status >> STATUS_SHIFT {
            0 => Status::Completed,
            1 => Status::Failed,
            _ => Status::Cancelled,
        }
    }

    fn on_disk(&self, id: JobId) -> OnDisk {
        OnDisk {
            id,
            seq: self.seq(),
            queue: self.queue.clone(),
            status: self.status(),
        }
    }
}

/// An ended job the index holds only a compact record of: where to read it
/// back from durable storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    /// The job.
    pub id: JobId,
    /// Its arrival number: its row key.
    pub seq: u64,
    /// Its queue (the row's, already parsed).
    pub queue: Queue,
    /// Its status (ended).
    pub status: Status,
}

/// A job as the index holds it: in full, or moved to disk.
#[derive(Debug, Clone)]
pub enum Held<T> {
    /// In memory, as it stands.
    Here(T),
    /// Ended, its record to be read back.
    OnDisk(OnDisk),
}

/// The job table. Entries are boxed so that a slot is 24 bytes instead of a
/// 300-byte job: a hash map keeps many slots empty, and growing moves them
/// (see [`ShardedMap`]).
#[derive(Debug, Default)]
struct JobMap(ShardedMap<JobId, Box<Entry>>);

impl JobMap {
    fn with_capacity(jobs: usize) -> Self {
        JobMap(ShardedMap::with_capacity(jobs))
    }

    fn get(&self, id: &JobId) -> Option<&Entry> {
        self.0.get(id).map(|e| &**e)
    }

    fn get_mut(&mut self, id: &JobId) -> Option<&mut Entry> {
        self.0.get_mut(id).map(|e| &mut **e)
    }

    fn contains_key(&self, id: &JobId) -> bool {
        self.0.contains_key(id)
    }

    fn insert(&mut self, id: JobId, entry: Entry) {
        self.0.insert(id, Box::new(entry));
    }

    fn remove(&mut self, id: &JobId) -> Option<Entry> {
        self.0.remove(id).map(|e| *e)
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.0.values().map(|e| &**e)
    }
}

impl std::ops::Index<&JobId> for JobMap {
    type Output = Entry;

    fn index(&self, id: &JobId) -> &Entry {
        self.get(id).expect("job in the index")
    }
}

/// All jobs and the secondary indexes that make every hot operation
/// O(log n): pending jobs ordered per queue, running jobs by lease expiry,
/// ended jobs by end time, idempotency keys.
#[derive(Debug, Default)]
pub struct Index {
    /// Jobs held in full.
    jobs: JobMap,
    /// Ended jobs moved to disk (none in a store without a disk).
    on_disk: ShardedMap<JobId, Ended>,
    /// (Queue maps use foldhash, as every other map on a job's path does:
    /// SipHash of the queue name was a few hundred instructions per job.)
    pending: HashMap<Queue, BTreeMap<PendingKey, JobId>, foldhash::fast::RandomState>,
    leases: BTreeSet<(Timestamp, JobId)>,
    /// Ended jobs in the order they ended, for purging after `--result-ttl`.
    ended: ChunkedQueue<(Timestamp, JobId)>,
    idempotency: ShardedMap<String, JobId>,
    total: StatusCounts,
    per_queue: HashMap<Queue, StatusCounts, foldhash::fast::RandomState>,
    next_seq: u64,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index with room for `jobs` jobs held in full and `on_disk`
    /// moved to disk: loading a million jobs into a map that doubles as it
    /// grows would leave the allocator holding the old tables.
    pub fn with_capacity(jobs: usize, on_disk: usize) -> Self {
        Index {
            jobs: JobMap::with_capacity(jobs),
            on_disk: ShardedMap::with_capacity(on_disk),
            ..Self::default()
        }
    }

    fn count(&mut self, queue: &Queue, from: Option<Status>, to: Option<Status>) {
        let q = self.per_queue.entry(queue.clone()).or_default();
        if let Some(s) = from {
            self.total[s.index()] -= 1;
            q[s.index()] -= 1;
        }
        if let Some(s) = to {
            self.total[s.index()] += 1;
            q[s.index()] += 1;
        }
        if q.iter().all(|&n| n == 0) {
            self.per_queue.remove(queue);
        }
    }

    fn pending_key(job: &Job, seq: u64) -> PendingKey {
        (Reverse(job.priority), seq)
    }

    /// Records `job` as it now stands in the secondary indexes, after a
    /// transition away from `before`.
    fn reindex(&mut self, id: JobId, before: Status, old_expiry: Option<Timestamp>) {
        let Some(entry) = self.jobs.get(&id) else {
            return;
        };
        let (after, new_expiry, queue, key, ended_at) = (
            entry.job.status,
            entry.job.lease_expires_at,
            entry.job.queue.clone(),
            Self::pending_key(&entry.job, entry.seq()),
            entry.job.ended_at,
        );
        if before == Status::Pending && after != Status::Pending {
            if let Some(map) = self.pending.get_mut(&queue) {
                map.remove(&key);
                if map.is_empty() {
                    self.pending.remove(&queue);
                }
            }
        }
        if after == Status::Pending && before != Status::Pending {
            self.pending
                .entry(queue.clone())
                .or_default()
                .insert(key, id);
        }
        if old_expiry != new_expiry {
            if let Some(t) = old_expiry {
                self.leases.remove(&(t, id));
            }
            if let Some(t) = new_expiry {
                self.leases.insert((t, id));
            }
        }
        if after.is_ended() && !before.is_ended() {
            self.ended.push_back((ended_at.unwrap_or_default(), id));
            // Nothing shows an ended job's input again, and the job is kept
            // for `--result-ttl`: a third of what each kept job held.
            if let Some(entry) = self.jobs.get_mut(&id) {
                entry.job.payload = bytes::Bytes::new();
                entry.job.headers = bytes::Bytes::new();
            }
        }
        if before != after {
            self.count(&queue, Some(before), Some(after));
        }
    }

    /// Applies `f` to job `id` and updates the indexes to match.
    fn transition<T>(
        &mut self,
        id: JobId,
        f: impl FnOnce(&mut Job) -> Result<T, crate::job::TransitionError>,
    ) -> Result<(T, &Job)> {
        let Some(entry) = self.jobs.get_mut(&id) else {
            return Err(self.refusal_on_disk(id, f));
        };
        let (before, old_expiry) = (entry.job.status, entry.job.lease_expires_at);
        let out = f(&mut entry.job)?;
        self.reindex(id, before, old_expiry);
        Ok((out, &self.jobs[&id].job))
    }

    /// What rule `f` says to job `id` if it was moved to disk. Every rule
    /// refuses an ended job by its status alone, so it runs on a stand-in
    /// with that status; the one exception, a repeated complete (a
    /// decision on its lease and result), never gets here (see
    /// [`Index::complete`]).
    fn refusal_on_disk<T>(
        &self,
        id: JobId,
        f: impl FnOnce(&mut Job) -> Result<T, crate::job::TransitionError>,
    ) -> Error {
        let Some(e) = self.on_disk.get(&id) else {
            return Error::NotFound;
        };
        let mut stand_in = Job::bare(id, e.queue.clone(), e.status(), e.created_at);
        match f(&mut stand_in) {
            Err(refused) => refused.into(),
            Ok(_) => Error::Unavailable(format!("job {id} must be read from disk first")),
        }
    }

    /// Forgets job `id`; returns its arrival number.
    fn forget(&mut self, id: JobId) -> Option<u64> {
        let Some(entry) = self.jobs.remove(&id) else {
            let e = self.on_disk.remove(&id)?;
            if let Some(idem) = &e.idempotency {
                if self.idempotency.get(&idem.key) == Some(&id) {
                    self.idempotency.remove(&idem.key);
                }
            }
            self.count(&e.queue, Some(e.status()), None);
            return Some(e.seq());
        };
        let seq = entry.seq();
        let job = entry.job;
        if let Some(idem) = &job.idempotency {
            if self.idempotency.get(&idem.key) == Some(&id) {
                self.idempotency.remove(&idem.key);
            }
        }
        let before = job.status;
        if before == Status::Pending {
            if let Some(map) = self.pending.get_mut(&job.queue) {
                map.remove(&Self::pending_key(&job, seq));
                if map.is_empty() {
                    self.pending.remove(&job.queue);
                }
            }
        }
        if let Some(t) = job.lease_expires_at {
            self.leases.remove(&(t, id));
        }
        self.count(&job.queue, Some(before), None);
        Some(seq)
    }

    /// Adds a job as it stands, under the arrival number `seq` it was
    /// stored with (used when loading from durable storage). With `cold`,
    /// its payload and headers stay on disk (see [`Index::is_cold`]).
    pub fn restore(&mut self, job: Job, seq: u64, cold: bool) {
        self.next_seq = self.next_seq.max(seq + 1);
        self.add_at(job, seq, true, cold)
    }

    /// Adds an ended job as it stands, moved to disk at once (used when
    /// loading from durable storage, which has its record): only what
    /// [`Ended`] keeps of `job` matters. `job` must have ended and `seq` be
    /// at most [`MAX_DISK_SEQ`].
    pub fn restore_on_disk(&mut self, job: Job, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
        let id = job.id;
        if let Some(idem) = &job.idempotency {
            self.idempotency.insert(idem.key.clone(), id);
        }
        self.ended.push_back((job.ended_at.unwrap_or_default(), id));
        let (queue, status) = (job.queue.clone(), job.status);
        self.on_disk.insert(id, Ended::new(job, seq));
        self.count(&queue, None, Some(status));
    }

    /// Keeps only a compact record of job `id` if it has ended (else does
    /// nothing): its final state must be readable from durable storage
    /// under its arrival number from now on. Returns whether it moved.
    pub fn move_to_disk(&mut self, id: JobId) -> bool {
        if !self
            .jobs
            .get(&id)
            .is_some_and(|e| e.job.status.is_ended() && e.seq() <= MAX_DISK_SEQ)
        {
            return false;
        }
        let Some(entry) = self.jobs.remove(&id) else {
            return false;
        };
        let seq = entry.seq();
        self.on_disk.insert(id, Ended::new(entry.job, seq));
        true
    }

    /// Job `id` if it was moved to disk.
    pub fn on_disk(&self, id: JobId) -> Option<OnDisk> {
        self.on_disk.get(&id).map(|e| e.on_disk(id))
    }

    /// The job an insert under idempotency key `idem` would attach to, if
    /// it was moved to disk and was submitted with the same fingerprint
    /// (else [`Index::insert`] answers from memory: a new job, one held in
    /// full, or a mismatch).
    pub fn attach_on_disk(&self, idem: Option<&Idempotency>) -> Option<OnDisk> {
        let idem = idem?;
        let id = *self.idempotency.get(&idem.key)?;
        let e = self.on_disk.get(&id)?;
        let same = e.idempotency.as_ref().map(|i| i.fingerprint) == Some(idem.fingerprint);
        same.then(|| e.on_disk(id))
    }

    /// The arrival number of job `id`: its key in durable storage.
    pub fn seq_of(&self, id: JobId) -> Option<u64> {
        self.jobs
            .get(&id)
            .map(Entry::seq)
            .or_else(|| self.on_disk.get(&id).map(Ended::seq))
    }

    /// Whether job `id` was restored without its payload and headers.
    pub fn is_cold(&self, id: JobId) -> bool {
        self.jobs.get(&id).is_some_and(Entry::cold)
    }

    fn add(&mut self, job: Job, visible: bool, cold: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.add_at(job, seq, visible, cold)
    }

    fn add_at(&mut self, job: Job, seq: u64, visible: bool, cold: bool) {
        let id = job.id;
        if let Some(idem) = &job.idempotency {
            self.idempotency.insert(idem.key.clone(), id);
        }
        let status = job.status;
        let queue = job.queue.clone();
        if status == Status::Pending && visible {
            self.pending
                .entry(queue.clone())
                .or_default()
                .insert(Self::pending_key(&job, seq), id);
        }
        if let Some(t) = job.lease_expires_at {
            self.leases.insert((t, id));
        }
        if status.is_ended() {
            self.ended.push_back((job.ended_at.unwrap_or_default(), id));
        }
        self.jobs.insert(id, Entry::new(job, seq, cold));
        self.count(&queue, None, Some(status));
    }

    /// See [`Store::insert`]. With `visible` false the job is stored and
    /// counted but cannot be claimed until [`Index::publish`] (a durable
    /// store publishes it once it is on disk). Attaching to a job moved to
    /// disk needs its record: the caller asks [`Index::attach_on_disk`]
    /// first (here it is `Unavailable`).
    pub fn insert(&mut self, new: NewJob, max_pending: u64, visible: bool) -> Result<Inserted> {
        if let Some(idem) = &new.idempotency {
            if let Some(&id) = self.idempotency.get(&idem.key) {
                let same = |kept: &Option<Box<Idempotency>>| {
                    kept.as_ref().map(|i| i.fingerprint) == Some(idem.fingerprint)
                };
                if let Some(e) = self.jobs.get(&id) {
                    return if same(&e.job.idempotency) {
                        Ok(Inserted::Existing(e.job.clone()))
                    } else {
                        Err(Error::IdempotencyMismatch)
                    };
                }
                if let Some(e) = self.on_disk.get(&id) {
                    return if same(&e.idempotency) {
                        Err(Error::Unavailable(format!(
                            "job {id} must be read from disk first"
                        )))
                    } else {
                        Err(Error::IdempotencyMismatch)
                    };
                }
            }
        }
        let pending = self.total[Status::Pending.index()];
        if pending >= max_pending {
            return Err(Error::QueueFull(pending));
        }
        let job = new.into_job();
        self.add(job.clone(), visible, false);
        Ok(Inserted::Created(job))
    }

    /// Makes a job inserted invisible claimable, if it is still pending.
    pub fn publish(&mut self, id: JobId) {
        let Some(entry) = self.jobs.get(&id) else {
            return;
        };
        if entry.job.status == Status::Pending {
            let key = Self::pending_key(&entry.job, entry.seq());
            self.pending
                .entry(entry.job.queue.clone())
                .or_default()
                .insert(key, id);
        }
    }

    /// Forgets job `id` (an insert that could not be made durable).
    /// Returns its arrival number.
    pub fn remove(&mut self, id: JobId) -> Option<u64> {
        self.forget(id)
    }

    /// See [`Store::claim`].
    pub fn claim(&mut self, p: &ClaimParams) -> Result<Option<Claimed>> {
        let Some(id) = p.queues.iter().find_map(|q| {
            self.pending
                .get(q)
                .and_then(|m| m.first_key_value())
                .map(|(_, id)| *id)
        }) else {
            return Ok(None);
        };
        let (_, job) = self.transition(id, |j| j.claim(p.lease_id, p.now, p.expires_at))?;
        let job = job.clone();
        let more_pending = p.queues.iter().any(|q| self.pending.contains_key(q));
        Ok(Some(Claimed { job, more_pending }))
    }

    /// See [`Store::peek`].
    pub fn peek(&self, queues: &[Queue]) -> Option<Job> {
        queues
            .iter()
            .find_map(|q| self.pending.get(q).and_then(|m| m.first_key_value()))
            .map(|(_, id)| self.jobs[id].job.clone())
    }

    /// See [`Store::complete`]. Whether a complete of a completed job
    /// moved to disk is a repeat depends on its lease and result: the
    /// caller reads it back (here it is `Unavailable`).
    pub fn complete(&mut self, p: &CompleteParams) -> Result<(Job, Completion)> {
        if self
            .on_disk
            .get(&p.id)
            .is_some_and(|e| e.status() == Status::Completed)
        {
            return Err(Error::Unavailable(format!(
                "job {} must be read from disk first",
                p.id
            )));
        }
        let (done, job) =
            self.transition(p.id, |j| j.complete(p.lease_id.as_ref(), &p.result, p.now))?;
        Ok((job.clone(), done))
    }

    /// See [`Store::fail`].
    pub fn fail(&mut self, p: &FailParams) -> Result<Job> {
        let (_, job) = self.transition(p.id, |j| p.apply(j))?;
        Ok(job.clone())
    }

    /// See [`Store::heartbeat`].
    pub fn heartbeat(&mut self, p: &HeartbeatParams) -> Result<Job> {
        let (_, job) = self.transition(p.id, |j| p.apply(j))?;
        Ok(job.clone())
    }

    /// See [`Store::release`].
    pub fn release(&mut self, id: JobId, lease_id: LeaseId) -> Result<Job> {
        let (_, job) = self.transition(id, |j| j.release(&lease_id))?;
        Ok(job.clone())
    }

    /// See [`Store::cancel`].
    pub fn cancel(&mut self, id: JobId, only_pending: bool, now: Timestamp) -> Result<Job> {
        let (_, job) = self.transition(id, |j| {
            if only_pending {
                j.abandon(now)
            } else {
                j.cancel(now)
            }
        })?;
        Ok(job.clone())
    }

    /// See [`Store::clear`]. Returns the cancelled ids and the forgotten ones.
    /// The forgotten ones come with their arrival numbers.
    pub fn clear(
        &mut self,
        queue: Option<&Queue>,
        now: Timestamp,
    ) -> (Vec<JobId>, Vec<(JobId, u64)>) {
        let ids: Vec<(JobId, Status)> = self
            .jobs
            .values()
            .filter(|e| queue.is_none_or(|q| *q == e.job.queue))
            .map(|e| (e.job.id, e.job.status))
            .chain(
                self.on_disk
                    .iter()
                    .filter(|(_, e)| queue.is_none_or(|q| *q == e.queue))
                    .map(|(id, e)| (*id, e.status())),
            )
            .collect();
        let (mut cancelled, mut forgotten) = (Vec::new(), Vec::new());
        for (id, status) in ids {
            if status.is_ended() {
                if let Some(seq) = self.forget(id) {
                    forgotten.push((id, seq));
                }
            } else if self.transition(id, |j| j.cancel(now)).is_ok() {
                cancelled.push(id);
            }
        }
        (cancelled, forgotten)
    }

    /// See [`Store::get`], for an index that moves no job to disk (one
    /// moved is not found here: see [`Index::get_held`]).
    pub fn get(&self, id: JobId) -> Option<JobRecord> {
        match self.get_held(id)? {
            Held::Here(rec) => Some(rec),
            Held::OnDisk(_) => None,
        }
    }

    /// See [`Store::get`]: the job, or where to read it.
    pub fn get_held(&self, id: JobId) -> Option<Held<JobRecord>> {
        let Some(entry) = self.jobs.get(&id) else {
            return self.on_disk.get(&id).map(|e| Held::OnDisk(e.on_disk(id)));
        };
        let position = (entry.job.status == Status::Pending).then(|| {
            self.pending.get(&entry.job.queue).map_or(0, |m| {
                m.range(..Self::pending_key(&entry.job, entry.seq()))
                    .count() as u64
            })
        });
        Some(Held::Here(JobRecord {
            job: entry.job.clone(),
            position,
        }))
    }

    /// Whether job `id` is known.
    pub fn contains(&self, id: JobId) -> bool {
        self.jobs.contains_key(&id) || self.on_disk.contains_key(&id)
    }

    /// See [`Store::list`], for an index that moves no job to disk (ones
    /// moved are left out here: see [`Index::list_held`]).
    pub fn list(&self, f: &ListFilter) -> Vec<Job> {
        self.list_held(f)
            .into_iter()
            .filter_map(|h| match h {
                Held::Here(job) => Some(job),
                Held::OnDisk(_) => None,
            })
            .collect()
    }

    /// See [`Store::list`]: the jobs, or where to read them.
    pub fn list_held(&self, f: &ListFilter) -> Vec<Held<Job>> {
        #[derive(Clone, Copy)]
        enum Hit<'a> {
            Here(&'a Entry),
            OnDisk(JobId, &'a Ended),
        }
        impl Hit<'_> {
            fn order(&self) -> (Timestamp, u64) {
                match self {
                    Hit::Here(e) => (e.job.created_at, e.seq()),
                    Hit::OnDisk(_, e) => (e.created_at, e.seq()),
                }
            }
        }
        let wanted = |status: Status, queue: &Queue| {
            f.status.is_none_or(|s| s == status) && f.queue.as_ref().is_none_or(|q| q == queue)
        };
        // Jobs on disk have ended: none of them is pending or running.
        let on_disk = f.status.is_none_or(Status::is_ended);
        let mut hits: Vec<Hit<'_>> = self
            .jobs
            .values()
            .filter(|e| wanted(e.job.status, &e.job.queue))
            .map(Hit::Here)
            .chain(
                self.on_disk
                    .iter()
                    .filter(|_| on_disk)
                    .filter(|(_, e)| wanted(e.status(), &e.queue))
                    .map(|(id, e)| Hit::OnDisk(*id, e)),
            )
            .collect();
        let newest_first = |a: &Hit<'_>, b: &Hit<'_>| b.order().cmp(&a.order());
        if hits.len() > f.limit && f.limit > 0 {
            hits.select_nth_unstable_by(f.limit - 1, newest_first);
        }
        hits.truncate(f.limit);
        hits.sort_unstable_by(newest_first);
        hits.into_iter()
            .map(|h| match h {
                Hit::Here(e) => Held::Here(e.job.clone()),
                Hit::OnDisk(id, e) => Held::OnDisk(e.on_disk(id)),
            })
            .collect()
    }

    /// See [`Store::counts`].
    pub fn counts(&self) -> Counts {
        Counts {
            total: self.total,
            queues: self
                .per_queue
                .iter()
                .map(|(q, c)| (q.as_str().to_owned(), *c))
                .collect(),
        }
    }

    /// See [`Store::activity`](super::Store::activity). The oldest pending
    /// job of a queue is the first of some priority (each priority's jobs
    /// are in arrival order, which is submit order), so this visits one
    /// entry per distinct priority, not every job.
    pub fn activity(&self) -> BTreeMap<String, QueueActivity> {
        let mut out: BTreeMap<String, QueueActivity> = BTreeMap::new();
        for (q, c) in &self.per_queue {
            let (pending, running) = (c[Status::Pending.index()], c[Status::Running.index()]);
            if pending + running == 0 {
                continue;
            }
            let mut oldest: Option<Timestamp> = None;
            if let Some(map) = self.pending.get(q) {
                let mut at = map.iter().next();
                while let Some((&(Reverse(p), _), id)) = at {
                    if let Some(e) = self.jobs.get(id) {
                        if oldest.is_none_or(|t| e.job.created_at < t) {
                            oldest = Some(e.job.created_at);
                        }
                    }
                    let Some(lower) = p.checked_sub(1) else { break };
                    at = map.range((Reverse(lower), 0)..).next();
                }
            }
            out.insert(
                q.as_str().to_owned(),
                QueueActivity {
                    pending,
                    running,
                    oldest_pending: oldest,
                },
            );
        }
        out
    }

    /// See [`Store::rescue_expired`].
    pub fn rescue_expired(&mut self, now: Timestamp, max_attempts: u32) -> Vec<Job> {
        let mut changed = Vec::new();
        while let Some(&(t, id)) = self.leases.first() {
            if t > now {
                break;
            }
            match self.transition(id, |j| Ok(j.expire_lease(now, max_attempts))) {
                Ok((Some(_), job)) => changed.push(job.clone()),
                // Not running any more: drop the stale lease entry.
                _ => {
                    self.leases.remove(&(t, id));
                }
            }
        }
        changed
    }

    /// Forgets jobs ended at least `ttl` before `now`; returns their ids.
    /// Returns their ids with their arrival numbers.
    pub fn purge_expired(&mut self, ttl: Duration, now: Timestamp) -> Vec<(JobId, u64)> {
        let mut purged = Vec::new();
        while let Some(&(ended_at, id)) = self.ended.front() {
            if ended_at + ttl > now {
                break;
            }
            self.ended.pop_front();
            // Skip entries of jobs already forgotten (by clear). A job on
            // disk ended when its entry here says.
            let expired = match self.jobs.get(&id) {
                Some(e) => e.job.is_expired(ttl, now),
                None => self.on_disk.contains_key(&id),
            };
            if expired {
                if let Some(seq) = self.forget(id) {
                    purged.push((id, seq));
                }
            }
        }
        purged
    }

    /// Pending jobs over all queues.
    pub fn pending_count(&self) -> u64 {
        self.total[Status::Pending.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_job() -> NewJob {
        NewJob {
            id: JobId::new(),
            queue: Queue::default_queue(),
            payload: bytes::Bytes::from_static(b"{}"),
            headers: bytes::Bytes::from_static(b"{}"),
            priority: 0,
            created_at: Timestamp(1),
            idempotency: None,
        }
    }

    #[test]
    fn activity_finds_the_oldest_pending_job_across_priorities() {
        let mut index = Index::new();
        let at = |t: i64, priority: i32| NewJob {
            created_at: Timestamp(t),
            priority,
            ..new_job()
        };
        // Oldest at a low priority, newer ones above and below it.
        for (t, p) in [(10, -3), (20, 5), (30, 0), (40, 5), (50, i32::MIN)] {
            index.insert(at(t, p), u64::MAX, true).unwrap();
        }
        let q = Queue::default_queue();
        let a = &index.activity()[q.as_str()];
        assert_eq!((a.pending, a.running), (5, 0));
        assert_eq!(a.oldest_pending, Some(Timestamp(10)));
        // Handing out takes the highest priority first; the oldest stays.
        let claim = ClaimParams::default_queue(JobId::new(), Timestamp(60), Timestamp(100));
        index.claim(&claim).unwrap().unwrap();
        let a = &index.activity()[q.as_str()];
        assert_eq!((a.pending, a.running), (4, 1));
        assert_eq!(a.oldest_pending, Some(Timestamp(10)));
        // A queue with nothing pending or running is left out.
        index.clear(None, Timestamp(70));
        assert!(index.activity().is_empty());
    }

    #[test]
    fn job_map_finds_every_job() {
        let mut index = Index::with_capacity(10, 0);
        let ids: Vec<JobId> = (0..1000)
            .map(|_| match index.insert(new_job(), u64::MAX, true).unwrap() {
                Inserted::Created(j) => j.id,
                Inserted::Existing(_) => unreachable!(),
            })
            .collect();
        assert_eq!(index.jobs.values().count(), 1000);
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(index.seq_of(*id), Some(n as u64));
        }
        for id in ids.iter().step_by(2) {
            assert!(index.remove(*id).is_some());
        }
        assert_eq!(index.jobs.values().count(), 500);
        assert!(!index.contains(ids[0]) && index.contains(ids[1]));
        assert_eq!(index.counts().total[Status::Pending.index()], 500);
    }

    #[test]
    fn entries_keep_arrival_number_and_coldness_in_one_word() {
        assert_eq!(
            std::mem::size_of::<Entry>(),
            256,
            "fits the 256-byte size class"
        );
        for (seq, cold) in [
            (0, false),
            (0, true),
            (41, true),
            (COLD - 1, false),
            (COLD - 1, true),
        ] {
            let e = Entry::new(new_job().into_job(), seq, cold);
            assert_eq!((e.seq(), e.cold()), (seq, cold));
        }
    }

    #[test]
    fn ended_jobs_keep_their_result_but_not_their_input() {
        let mut index = Index::new();
        let Inserted::Created(job) = index.insert(new_job(), u64::MAX, true).unwrap() else {
            unreachable!()
        };
        let now = Timestamp(2);
        let claim = ClaimParams::default_queue(LeaseId::new(), now, Timestamp(3));
        let claimed = index.claim(&claim).unwrap().unwrap();
        assert_eq!(
            &claimed.job.payload[..],
            b"{}",
            "a running job has its input"
        );
        index
            .complete(&CompleteParams {
                id: job.id,
                lease_id: None,
                result: bytes::Bytes::from_static(b"done"),
                now,
            })
            .unwrap();
        let kept = index.get(job.id).unwrap().job;
        assert_eq!(kept.status, Status::Completed);
        assert_eq!(kept.result.as_deref(), Some(&b"done"[..]));
        assert!(kept.payload.is_empty() && kept.headers.is_empty());
    }

    /// What a job moved to disk costs: its slot in the map (a hash map
    /// keeps some slots empty) and its entry in the ended-jobs queue.
    #[test]
    fn a_job_on_disk_is_a_small_record() {
        assert_eq!(std::mem::size_of::<(JobId, Ended)>(), 56);
        assert_eq!(std::mem::size_of::<(Timestamp, JobId)>(), 24);
        for (seq, status) in [
            (0, Status::Completed),
            (7, Status::Failed),
            (MAX_DISK_SEQ, Status::Cancelled),
        ] {
            let mut job = new_job().into_job();
            job.status = status;
            let e = Ended::new(job, seq);
            assert_eq!((e.seq(), e.status()), (seq, status));
        }
    }

    #[test]
    fn jobs_on_disk_keep_their_key_counts_order_and_refusals() {
        let mut index = Index::new();
        let keyed = NewJob {
            idempotency: Some(Idempotency {
                key: "k".into(),
                fingerprint: [1; 32],
            }),
            ..new_job()
        };
        let ids: Vec<JobId> = [keyed.clone(), new_job(), new_job()]
            .into_iter()
            .enumerate()
            .map(|(i, mut j)| {
                j.created_at = Timestamp(i as i64);
                let Inserted::Created(job) = index.insert(j, u64::MAX, true).unwrap() else {
                    unreachable!()
                };
                job.id
            })
            .collect();
        let lease = LeaseId::new();
        let claim = ClaimParams::default_queue(lease, Timestamp(5), Timestamp(50));
        index.claim(&claim).unwrap().unwrap();
        let done = CompleteParams {
            id: ids[0],
            lease_id: Some(lease),
            result: bytes::Bytes::from_static(b"r"),
            now: Timestamp(6),
        };
        index.complete(&done).unwrap();
        index.cancel(ids[1], false, Timestamp(7)).unwrap();
        assert!(!index.move_to_disk(ids[2]), "a pending job stays");
        assert!(index.move_to_disk(ids[0]) && index.move_to_disk(ids[1]));
        assert!(!index.move_to_disk(ids[0]), "moved once");

        let on_disk = index.on_disk(ids[0]).unwrap();
        assert_eq!((on_disk.seq, on_disk.status), (0, Status::Completed));
        assert!(matches!(index.get_held(ids[1]), Some(Held::OnDisk(d)) if d.seq == 1));
        assert!(index.get(ids[1]).is_none() && index.contains(ids[1]));
        let counts = index.counts().total;
        assert_eq!(
            (
                counts[Status::Completed.index()],
                counts[Status::Cancelled.index()]
            ),
            (1, 1)
        );
        let all = index.list_held(&ListFilter {
            limit: 10,
            ..Default::default()
        });
        let order: Vec<JobId> = all
            .iter()
            .map(|h| match h {
                Held::Here(j) => j.id,
                Held::OnDisk(d) => d.id,
            })
            .collect();
        assert_eq!(order, vec![ids[2], ids[1], ids[0]], "newest first");
        let completed = index.list_held(&ListFilter {
            status: Some(Status::Completed),
            limit: 10,
            ..Default::default()
        });
        assert!(matches!(&completed[..], [Held::OnDisk(d)] if d.id == ids[0]));

        // The key: a mismatch is answered here, a match needs the record.
        assert_eq!(
            index.attach_on_disk(keyed.idempotency.as_ref()),
            Some(on_disk)
        );
        let other = NewJob {
            id: JobId::new(),
            idempotency: Some(Idempotency {
                key: "k".into(),
                fingerprint: [2; 32],
            }),
            ..keyed.clone()
        };
        assert!(index.attach_on_disk(other.idempotency.as_ref()).is_none());
        assert!(matches!(
            index.insert(other, u64::MAX, true),
            Err(Error::IdempotencyMismatch)
        ));
        // Refusals by status; a repeated complete needs the record.
        use crate::job::TransitionError as T;
        assert!(matches!(
            index.cancel(ids[0], false, Timestamp(8)),
            Err(Error::Transition(T::AlreadyEnded(Status::Completed)))
        ));
        assert!(matches!(
            index.heartbeat(&HeartbeatParams {
                id: ids[1],
                lease_id: None,
                expires_at: Timestamp(9)
            }),
            Err(Error::Transition(T::NotRunning(Status::Cancelled)))
        ));
        assert!(matches!(index.complete(&done), Err(Error::Unavailable(_))));

        // Purging forgets them and frees the key.
        let purged = index.purge_expired(Duration::ZERO, Timestamp(100));
        assert_eq!(purged, vec![(ids[0], 0), (ids[1], 1)]);
        assert!(
            !index.contains(ids[0]) && index.attach_on_disk(keyed.idempotency.as_ref()).is_none()
        );
        assert!(matches!(
            index.insert(
                NewJob {
                    id: JobId::new(),
                    ..keyed
                },
                u64::MAX,
                true
            ),
            Ok(Inserted::Created(_))
        ));
        assert_eq!(index.counts().total[Status::Pending.index()], 2);
    }
}
