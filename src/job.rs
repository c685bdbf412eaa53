//! Domain types and the job state machine: what a job is and which transitions
//! are legal. Pure logic, no I/O and no clocks (callers pass `now`), so every
//! rule here is unit-tested without a server. Stores apply these rules (the
//! in-memory ones by calling them, SQL ones by mirroring them in `WHERE`
//! clauses checked by the shared conformance tests).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

/// A job's identity: a random (v4) UUID, rendered in lower-case hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh random id.
    pub fn new() -> Self {
        JobId(Uuid::new_v4())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl JobId {
    /// The hyphenated lower-case text, without allocating.
    pub fn encode<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        self.0.as_hyphenated().encode_lower(buf)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(JobId)
    }
}

/// Identity of one hand-out of a job to a worker (the fencing token). A new
/// one is made for every hand-out, so a worker whose lease expired cannot
/// complete the job on behalf of the worker that holds it now.
pub type LeaseId = JobId;

/// A queue name. Cheap to clone; validated by [`Queue::parse`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Queue(Arc<str>);

/// The queue used when a request names none.
pub const DEFAULT_QUEUE: &str = "default";

/// Longest accepted queue name, in bytes.
pub const MAX_QUEUE_NAME: usize = 128;

impl Queue {
    /// Validates a queue name: 1 to 128 characters of `A-Z a-z 0-9 . _ : -`.
    /// (Commas separate names in `?queue=a,b`, so they cannot be part of one.)
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("queue name must not be empty".into());
        }
        if name.len() > MAX_QUEUE_NAME {
            return Err(format!("queue name longer than {MAX_QUEUE_NAME} bytes"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(format!(
                "queue name {name:?} contains {c:?}; allowed are letters, digits, '.', '_', ':' and '-'"
            ));
        }
        Ok(Queue(name.into()))
    }

    /// The `default` queue.
    pub fn default_queue() -> Self {
        // Shared: most requests name no queue, and this is on their hot path.
        static DEFAULT: std::sync::LazyLock<Queue> =
            std::sync::LazyLock::new(|| Queue(DEFAULT_QUEUE.into()));
        DEFAULT.clone()
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Wall-clock time in microseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// Converts from [`SystemTime`] (times before 1970 clamp to the epoch).
    pub fn from_system(t: SystemTime) -> Self {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
        )
    }

    /// Converts to [`SystemTime`].
    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0.max(0) as u64)
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-28T14:29:07.123456Z`.
    pub fn to_rfc3339(self) -> String {
        let mut out = Vec::with_capacity(27);
        self.write_rfc3339(&mut out);
        String::from_utf8(out).expect("ASCII")
    }

    /// Appends [`Self::to_rfc3339`] to `out`. Times before 1970 are written
    /// as the epoch and times after year 9999 (which four-digit years cannot
    /// show) as its last microsecond.
    ///
    /// Written by hand (the civil date from the day number as in Howard
    /// Hinnant's `civil_from_days`): through `humantime` and `fmt`, the
    /// timestamps of a hand-out and of an answer were ~4% of a job's work.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        /// 9999-12-31T23:59:59.999999Z.
        const LAST: i64 = 253_402_300_799_999_999;
        let micros = self.0.clamp(0, LAST);
        let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
        let (days, sod) = (secs / 86_400, secs % 86_400);
        // Days since 0000-03-01, in 400-year eras (the Gregorian cycle).
        let z = days + 719_468;
        let (era, doe) = (z / 146_097, z % 146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, sod / 3_600);
        put(14, 2, sod / 60 % 60);
        put(17, 2, sod % 60);
        put(20, 6, frac);
        out.extend_from_slice(&b);
    }
}

/// `d` in microseconds, at most `i64::MAX`.
fn saturating_micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    /// Saturating.
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(saturating_micros(d)))
    }
}

impl std::ops::Sub<Duration> for Timestamp {
    type Output = Timestamp;
    /// Saturating.
    fn sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(saturating_micros(d)))
    }
}

/// Where a job is in its life (docs/api.md, "Jobs").
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Status {
    /// Queued, waiting for a worker.
    Pending,
    /// Leased to a worker.
    Running,
    /// A worker posted its result.
    Completed,
    /// Out of attempts, or a worker failed it without retry.
    Failed,
    /// Cancelled by a client, an admin clear, or its client's disconnect.
    Cancelled,
}

impl Status {
    /// Every status, in display order.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The name used on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended (no further transitions).
    pub fn is_ended(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// Position in [`Status::ALL`], for per-status counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status {s:?}; expected pending, running, completed, failed or cancelled")
            })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `Idempotency-Key` with the fingerprint of what was submitted under it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Idempotency {
    /// The key as the client sent it.
    pub key: String,
    /// SHA-256 over queue and body: a key reused for other work is refused (422).
    pub fingerprint: [u8; 32],
}

/// A job as stored. Field names follow docs/api.md, "Jobs".
#[derive(Clone, Debug)]
pub struct Job {
    /// Identity.
    pub id: JobId,
    /// The queue it was submitted to.
    pub queue: Queue,
    /// The submitted body, exactly as received.
    pub payload: Bytes,
    /// The submit request's filtered headers as a JSON object text, ready to
    /// embed in a poll answer without re-encoding.
    pub headers: Bytes,
    /// Higher is handed out first.
    pub priority: i32,
    /// Current status.
    pub status: Status,
    /// Hand-outs so far (0 before the first poll).
    pub attempts: u32,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When the latest hand-out happened.
    pub started_at: Option<Timestamp>,
    /// When it ended (completed, failed or cancelled).
    pub ended_at: Option<Timestamp>,
    /// The current (while running) or last lease. Kept after completion so a
    /// repeated complete by the same lease holder is recognised.
    pub lease_id: Option<LeaseId>,
    /// When the current lease runs out (only while running).
    pub lease_expires_at: Option<Timestamp>,
    /// The worker's result, once completed.
    pub result: Option<Bytes>,
    /// Why it failed (or why the last attempt failed, while retried).
    pub error: Option<String>,
    /// The idempotency key it was submitted under, if any. Boxed: most jobs
    /// have none, and every kept job is held in memory.
    pub idempotency: Option<Box<Idempotency>>,
}

/// What a client submits; the store turns it into a [`Job`].
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Chosen by the broker before insertion, so waiters can register first.
    pub id: JobId,
    /// Target queue.
    pub queue: Queue,
    /// Body bytes.
    pub payload: Bytes,
    /// Filtered headers as a JSON object text.
    pub headers: Bytes,
    /// Priority (higher first).
    pub priority: i32,
    /// Submission time.
    pub created_at: Timestamp,
    /// Optional idempotency key.
    pub idempotency: Option<Idempotency>,
}

impl NewJob {
    /// The pending job this submission becomes.
    pub fn into_job(self) -> Job {
        Job {
            payload: self.payload,
            headers: self.headers,
            priority: self.priority,
            idempotency: self.idempotency.map(Box::new),
            ..Job::bare(self.id, self.queue, Status::Pending, self.created_at)
        }
    }
}

/// Counts per status.
pub type StatusCounts = [u64; 5];

/// Job counts, total and per queue.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Per status over all queues, indexed by [`Status::index`].
    pub total: StatusCounts,
    /// Per queue, per status.
    pub queues: BTreeMap<String, StatusCounts>,
}

/// A job with the facts about it that only the store knows.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// The job.
    pub job: Job,
    /// Jobs ahead of it in its queue, while pending.
    pub position: Option<u64>,
}

/// Headers never passed to workers (docs/api.md, "Headers passed to workers"):
/// hop-by-hop ones, the body length, and credentials (a client's token must
/// never reach a worker). `name` is lower-case.
pub fn is_private_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "content-length"
            | "authorization"
            | "cookie"
    ) || name.starts_with("proxy-")
}

/// Why a transition was refused. Each maps to one HTTP status in the API layer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum TransitionError {
    /// The operation needs a running job.
    #[error("job is {0}, not running")]
    NotRunning(Status),
    /// The caller's lease is not the job's current lease.
    #[error("lease is no longer current for this job")]
    StaleLease,
    /// The job has already ended.
    #[error("job has already ended ({0})")]
    AlreadyEnded(Status),
    /// Only pending jobs can be handed out.
    #[error("job is {0}, not pending")]
    NotPending(Status),
}

/// The error of a job failed because its last lease ran out, in two parts
/// around the attempt count: SQL backends build the same text from them.
pub const LEASE_EXPIRED_ERROR: [&str; 2] = ["lease expired without a result after ", " attempt(s)"];

/// The error of a job failed after `attempts` hand-outs whose last lease ran out.
pub fn lease_expired_error(attempts: u32) -> String {
    format!(
        "{}{attempts}{}",
        LEASE_EXPIRED_ERROR[0], LEASE_EXPIRED_ERROR[1]
    )
}

/// Result of a complete call that was accepted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Completion {
    /// The job was running and is now completed.
    Completed,
    /// The same complete was already applied; nothing changed.
    AlreadyCompleted,
}

impl Job {
    /// A job with just its identity, queue, status and submit time: no
    /// input, priority 0, no hand-out, lease, outcome or idempotency key.
    pub fn bare(id: JobId, queue: Queue, status: Status, created_at: Timestamp) -> Job {
        Job {
            id,
            queue,
            payload: Bytes::new(),
            headers: Bytes::new(),
            priority: 0,
            status,
            attempts: 0,
            created_at,
            started_at: None,
            ended_at: None,
            lease_id: None,
            lease_expires_at: None,
            result: None,
            error: None,
            idempotency: None,
        }
    }

    fn check_lease(&self, lease: Option<&LeaseId>) -> Result<(), TransitionError> {
        match lease {
            Some(l) if self.lease_id.as_ref() != Some(l) => Err(TransitionError::StaleLease),
            _ => Ok(()),
        }
    }

    fn require_running(&self, lease: Option<&LeaseId>) -> Result<(), TransitionError> {
        if self.status != Status::Running {
            return Err(TransitionError::NotRunning(self.status));
        }
        self.check_lease(lease)
    }

    fn end(&mut self, status: Status, now: Timestamp) {
        self.status = status;
        self.ended_at = Some(now);
        self.lease_expires_at = None;
    }

    /// pending → running: a hand-out under a new lease.
    pub fn claim(
        &mut self,
        lease: LeaseId,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), TransitionError> {
        if self.status != Status::Pending {
            return Err(TransitionError::NotPending(self.status));
        }
        self.status = Status::Running;
        self.attempts += 1;
        self.started_at = Some(now);
        self.lease_id = Some(lease);
        self.lease_expires_at = Some(expires_at);
        Ok(())
    }

    /// running → completed. Repeating a complete that succeeded (same lease,
    /// or no lease and the same bytes) is accepted and changes nothing.
    pub fn complete(
        &mut self,
        lease: Option<&LeaseId>,
        result: &Bytes,
        now: Timestamp,
    ) -> Result<Completion, TransitionError> {
        if self.status == Status::Completed {
            let same = match lease {
                Some(l) => self.lease_id.as_ref() == Some(l),
                None => self.result.as_ref() == Some(result),
            };
            return if same {
                Ok(Completion::AlreadyCompleted)
            } else if lease.is_some() {
                Err(TransitionError::StaleLease)
            } else {
                Err(TransitionError::NotRunning(Status::Completed))
            };
        }
        self.require_running(lease)?;
        self.result = Some(result.clone());
        self.error = None;
        self.end(Status::Completed, now);
        Ok(Completion::Completed)
    }

    /// running → pending (retry) or failed. Retries while `retry` is true and
    /// fewer than `max_attempts` hand-outs have been made. Returns the new status.
    pub fn fail(
        &mut self,
        lease: Option<&LeaseId>,
        error: &str,
        retry: bool,
        max_attempts: u32,
        now: Timestamp,
    ) -> Result<Status, TransitionError> {
        self.require_running(lease)?;
        self.error = Some(error.to_owned());
        if retry && self.attempts < max_attempts {
            self.status = Status::Pending;
            self.lease_expires_at = None;
        } else {
            self.end(Status::Failed, now);
        }
        Ok(self.status)
    }

    /// running → pending, as if the hand-out under `lease` had not happened:
    /// its answer never reached a worker (the connection had closed). The
    /// attempt is not counted, and the lease is void.
    pub fn release(&mut self, lease: &LeaseId) -> Result<(), TransitionError> {
        self.require_running(Some(lease))?;
        self.status = Status::Pending;
        self.attempts = self.attempts.saturating_sub(1);
        if self.attempts == 0 {
            self.started_at = None;
        }
        self.lease_id = None;
        self.lease_expires_at = None;
        Ok(())
    }

    /// Extends the current lease to `expires_at`.
    pub fn heartbeat(
        &mut self,
        lease: Option<&LeaseId>,
        expires_at: Timestamp,
    ) -> Result<(), TransitionError> {
        self.require_running(lease)?;
        self.lease_expires_at = Some(expires_at);
        Ok(())
    }

    /// A running job whose lease ran out by `now` goes back to pending, or to
    /// failed once it has had `max_attempts` hand-outs. `None`: nothing to do.
    pub fn expire_lease(&mut self, now: Timestamp, max_attempts: u32) -> Option<Status> {
        if self.status != Status::Running || self.lease_expires_at.is_none_or(|t| t > now) {
            return None;
        }
        Some(self.lose_lease(now, max_attempts, lease_expired_error(self.attempts)))
    }

    /// A job that was running when the server stopped: no worker holds its
    /// lease any more (a restart ends every lease), so it goes back to
    /// pending, or to failed once it has had `max_attempts` hand-outs, as if
    /// its lease had run out. `None`: it was not running.
    pub fn recover_after_restart(&mut self, now: Timestamp, max_attempts: u32) -> Option<Status> {
        if self.status != Status::Running {
            return None;
        }
        let why = format!(
            "the server restarted while the job ran, after {} attempt(s)",
            self.attempts
        );
        Some(self.lose_lease(now, max_attempts, why))
    }

    fn lose_lease(&mut self, now: Timestamp, max_attempts: u32, why: String) -> Status {
        if self.attempts >= max_attempts {
            self.error = Some(why);
            self.end(Status::Failed, now);
        } else {
            self.status = Status::Pending;
            self.lease_expires_at = None;
        }
        self.status
    }

    /// pending or running → cancelled.
    pub fn cancel(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        if self.status.is_ended() {
            return Err(TransitionError::AlreadyEnded(self.status));
        }
        self.end(Status::Cancelled, now);
        Ok(())
    }

    /// pending → cancelled, and nothing else: its client went away before a
    /// worker took it (a running job goes on; its result is kept).
    pub fn abandon(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        if self.status != Status::Pending {
            return Err(TransitionError::NotPending(self.status));
        }
        self.cancel(now)
    }

    /// Whether the job is past `--result-ttl` (counted from its end) at `now`.
    pub fn is_expired(&self, ttl: Duration, now: Timestamp) -> bool {
        self.status.is_ended() && self.ended_at.is_some_and(|t| t + ttl <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn rfc3339_is_written_as_humantime_writes_it(micros in 0i64..253_402_300_800_000_000) {
            let t = Timestamp(micros);
            proptest::prop_assert_eq!(
                t.to_rfc3339(),
                humantime::format_rfc3339_micros(t.to_system()).to_string()
            );
        }
    }

    #[test]
    fn rfc3339_of_edges() {
        for (micros, text) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (-5, "1970-01-01T00:00:00.000000Z"),
            (951_782_400_000_001, "2000-02-29T00:00:00.000001Z"),
            (4_107_542_399_999_999, "2100-02-28T23:59:59.999999Z"),
            (4_107_542_400_000_000, "2100-03-01T00:00:00.000000Z"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
            (i64::MAX, "9999-12-31T23:59:59.999999Z"),
        ] {
            assert_eq!(Timestamp(micros).to_rfc3339(), text, "{micros}");
        }
    }

    fn job() -> Job {
        NewJob {
            id: JobId::new(),
            queue: Queue::default_queue(),
            payload: Bytes::from_static(b"{}"),
            headers: Bytes::from_static(b"{}"),
            priority: 0,
            created_at: Timestamp(1),
            idempotency: None,
        }
        .into_job()
    }

    fn running() -> (Job, LeaseId) {
        let mut j = job();
        let lease = LeaseId::new();
        j.claim(lease, Timestamp(10), Timestamp(100)).unwrap();
        (j, lease)
    }

    #[test]
    fn claim_moves_pending_to_running_and_counts_attempt() {
        let (j, lease) = running();
        assert_eq!(j.status, Status::Running);
        assert_eq!(j.attempts, 1);
        assert_eq!(j.lease_id, Some(lease));
        assert_eq!(j.started_at, Some(Timestamp(10)));
        assert_eq!(j.lease_expires_at, Some(Timestamp(100)));
    }

    #[test]
    fn claim_refuses_non_pending() {
        let (mut j, _) = running();
        assert_eq!(
            j.claim(LeaseId::new(), Timestamp(11), Timestamp(12)),
            Err(TransitionError::NotPending(Status::Running))
        );
        j.cancel(Timestamp(12)).unwrap();
        assert_eq!(
            j.claim(LeaseId::new(), Timestamp(13), Timestamp(14)),
            Err(TransitionError::NotPending(Status::Cancelled))
        );
    }

    #[test]
    fn complete_with_and_without_lease() {
        let (mut a, lease) = running();
        let r = Bytes::from_static(b"ok");
        assert_eq!(
            a.complete(Some(&lease), &r, Timestamp(20)),
            Ok(Completion::Completed)
        );
        assert_eq!(a.status, Status::Completed);
        assert_eq!(a.ended_at, Some(Timestamp(20)));
        assert_eq!(a.lease_expires_at, None);

        let (mut b, _) = running();
        assert_eq!(
            b.complete(None, &r, Timestamp(20)),
            Ok(Completion::Completed)
        );
        assert_eq!(b.result.as_deref(), Some(&b"ok"[..]));
    }

    #[test]
    fn complete_is_idempotent_for_the_same_lease_or_bytes() {
        let (mut j, lease) = running();
        let r = Bytes::from_static(b"ok");
        j.complete(Some(&lease), &r, Timestamp(20)).unwrap();
        assert_eq!(
            j.complete(Some(&lease), &Bytes::from_static(b"other"), Timestamp(30)),
            Ok(Completion::AlreadyCompleted)
        );
        assert_eq!(
            j.complete(None, &r, Timestamp(30)),
            Ok(Completion::AlreadyCompleted)
        );
        assert_eq!(
            j.complete(None, &Bytes::from_static(b"other"), Timestamp(30)),
            Err(TransitionError::NotRunning(Status::Completed))
        );
        assert_eq!(
            j.complete(Some(&LeaseId::new()), &r, Timestamp(30)),
            Err(TransitionError::StaleLease)
        );
        assert_eq!(j.ended_at, Some(Timestamp(20)), "a repeat changes nothing");
        assert_eq!(j.result.as_deref(), Some(&b"ok"[..]));
    }

    #[test]
    fn complete_refuses_stale_lease_and_non_running() {
        let (mut j, _) = running();
        let r = Bytes::from_static(b"ok");
        assert_eq!(
            j.complete(Some(&LeaseId::new()), &r, Timestamp(20)),
            Err(TransitionError::StaleLease)
        );
        assert_eq!(j.status, Status::Running);

        let mut p = job();
        assert_eq!(
            p.complete(None, &r, Timestamp(20)),
            Err(TransitionError::NotRunning(Status::Pending))
        );
        p.cancel(Timestamp(21)).unwrap();
        assert_eq!(
            p.complete(None, &r, Timestamp(22)),
            Err(TransitionError::NotRunning(Status::Cancelled))
        );
    }

    #[test]
    fn fail_retries_while_attempts_remain() {
        let (mut j, lease) = running();
        assert_eq!(
            j.fail(Some(&lease), "boom", true, 3, Timestamp(20)),
            Ok(Status::Pending)
        );
        assert_eq!(j.error.as_deref(), Some("boom"));
        assert_eq!(j.lease_expires_at, None);
        assert_eq!(j.ended_at, None);
        // Hand-outs 2 and 3; the third failure is final.
        for attempt in 2..=3 {
            let lease = LeaseId::new();
            j.claim(lease, Timestamp(30), Timestamp(40)).unwrap();
            assert_eq!(j.attempts, attempt);
            let expect = if attempt < 3 {
                Status::Pending
            } else {
                Status::Failed
            };
            assert_eq!(
                j.fail(Some(&lease), "boom", true, 3, Timestamp(41)),
                Ok(expect)
            );
        }
        assert_eq!(j.ended_at, Some(Timestamp(41)));
    }

    #[test]
    fn fail_without_retry_is_final() {
        let (mut j, _) = running();
        assert_eq!(
            j.fail(None, "bad input", false, 3, Timestamp(20)),
            Ok(Status::Failed)
        );
        assert_eq!(
            j.fail(None, "again", true, 3, Timestamp(21)),
            Err(TransitionError::NotRunning(Status::Failed))
        );
    }

    #[test]
    fn fail_refuses_stale_lease() {
        let (mut j, _) = running();
        assert_eq!(
            j.fail(Some(&LeaseId::new()), "x", true, 3, Timestamp(20)),
            Err(TransitionError::StaleLease)
        );
    }

    #[test]
    fn release_undoes_a_hand_out_that_reached_no_worker() {
        let (mut j, lease) = running();
        assert_eq!(j.release(&LeaseId::new()), Err(TransitionError::StaleLease));
        j.release(&lease).unwrap();
        assert_eq!(j.status, Status::Pending);
        assert_eq!((j.attempts, j.started_at, j.lease_id), (0, None, None));
        assert_eq!(
            j.release(&lease),
            Err(TransitionError::NotRunning(Status::Pending))
        );
        assert_eq!(
            j.complete(Some(&lease), &Bytes::new(), Timestamp(5)),
            Err(TransitionError::NotRunning(Status::Pending)),
            "the void lease completes nothing"
        );
    }

    #[test]
    fn heartbeat_extends_only_the_current_lease() {
        let (mut j, lease) = running();
        j.heartbeat(Some(&lease), Timestamp(500)).unwrap();
        assert_eq!(j.lease_expires_at, Some(Timestamp(500)));
        j.heartbeat(None, Timestamp(600)).unwrap();
        assert_eq!(
            j.heartbeat(Some(&LeaseId::new()), Timestamp(700)),
            Err(TransitionError::StaleLease)
        );
        j.cancel(Timestamp(1)).unwrap();
        assert_eq!(
            j.heartbeat(None, Timestamp(700)),
            Err(TransitionError::NotRunning(Status::Cancelled))
        );
    }

    /// What a lease running out and a restart share: a running job goes
    /// back to pending (the lost hand-out still counted), a pending one is
    /// left alone, and losing the last allowed hand-out fails the job with
    /// an error that says `why`.
    fn lost_lease_returns_to_pending_then_fails(
        lose: fn(&mut Job, Timestamp, u32) -> Option<Status>,
        why: &str,
    ) {
        let (mut j, _) = running();
        assert_eq!(lose(&mut j, Timestamp(100), 2), Some(Status::Pending));
        assert_eq!(j.attempts, 1, "the lost hand-out stays counted");
        assert_eq!(j.lease_expires_at, None);
        assert_eq!(lose(&mut j, Timestamp(200), 2), None, "pending stays");
        j.claim(LeaseId::new(), Timestamp(200), Timestamp(300))
            .unwrap();
        assert_eq!(lose(&mut j, Timestamp(300), 2), Some(Status::Failed));
        assert!(j.error.as_deref().unwrap().contains(why));
        assert_eq!(j.ended_at, Some(Timestamp(300)));
    }

    #[test]
    fn expired_lease_returns_to_pending_then_fails_at_max_attempts() {
        let (mut j, _) = running();
        assert_eq!(j.expire_lease(Timestamp(99), 2), None, "lease still holds");
        lost_lease_returns_to_pending_then_fails(Job::expire_lease, "2 attempt");
    }

    #[test]
    fn restart_returns_running_jobs_to_pending_until_max_attempts() {
        lost_lease_returns_to_pending_then_fails(Job::recover_after_restart, "restarted");
    }

    #[test]
    fn cancel_only_before_the_end() {
        let mut p = job();
        p.cancel(Timestamp(5)).unwrap();
        assert_eq!(p.status, Status::Cancelled);
        assert_eq!(
            p.cancel(Timestamp(6)),
            Err(TransitionError::AlreadyEnded(Status::Cancelled))
        );

        let (mut r, lease) = running();
        r.cancel(Timestamp(7)).unwrap();
        assert_eq!(
            r.complete(Some(&lease), &Bytes::new(), Timestamp(8)),
            Err(TransitionError::NotRunning(Status::Cancelled))
        );
    }

    #[test]
    fn result_ttl_counts_from_the_end() {
        let (mut j, _) = running();
        let ttl = Duration::from_micros(50);
        assert!(
            !j.is_expired(ttl, Timestamp(1_000)),
            "running jobs never expire"
        );
        j.complete(None, &Bytes::new(), Timestamp(100)).unwrap();
        assert!(!j.is_expired(ttl, Timestamp(149)));
        assert!(j.is_expired(ttl, Timestamp(150)));
    }

    #[test]
    fn queue_names_are_validated() {
        assert!(Queue::parse("gpu.large_v2:eu-1").is_ok());
        assert!(Queue::parse("").is_err());
        assert!(Queue::parse("a,b").is_err());
        assert!(Queue::parse("a b").is_err());
        assert!(Queue::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn timestamps_render_as_rfc3339_utc() {
        assert_eq!(
            Timestamp(1_500_000).to_rfc3339(),
            "1970-01-01T00:00:01.500000Z"
        );
    }

    #[test]
    fn status_round_trips() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert!("done".parse::<Status>().is_err());
    }
}
