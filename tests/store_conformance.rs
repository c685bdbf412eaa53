//! The store conformance suite: every rule of the storage seam
//! (`jobq::store::Store`), one test per rule, each run on the memory, the
//! embedded and the PostgreSQL store by [`conformance_tests!`].
//!
//! The transition rules are stated in Rust in `jobq::job` and again in a
//! backend's own terms (SQL `where` clauses and `case`s for PostgreSQL).
//! So the tests drive a job through the store and, step by step, through the
//! pure `Job` methods (a [`Twin`]): after every step, refusals included, the
//! store's job must be the one `job.rs` computes (status, attempts, lease,
//! timestamps, result and error text). Time is the `now` passed in; nothing
//! sleeps.

mod common;

use std::collections::HashSet;
use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use common::stores::{
    claim_params, claim_until_empty, insert, new_job, q, TestStore, MAX_ATTEMPTS,
};
use jobq::job::{
    Completion, Idempotency, Job, JobId, LeaseId, NewJob, Status, Timestamp, TransitionError,
};
use jobq::store::{
    CompleteParams, Error, FailParams, HeartbeatParams, Inserted, ListFilter, ProgressParams, Store,
};

/// One `#[tokio::test]` per rule and backend: modules `memory`, `embedded`
/// and `postgres`, each calling `async fn rule(&dyn Store)` on a fresh
/// store of its own (PostgreSQL: a fresh database, dropped afterwards;
/// skipped with one line when unreachable, except under `CI=true`). The
/// rules after `durable:` are about restarts; they run on the embedded and
/// the PostgreSQL store only, as `async fn rule(TestStore) -> TestStore`.
macro_rules! conformance_tests {
    ($($rule:ident),* $(,)? ; durable: $($durable:ident),* $(,)?) => {
        conformance_tests!(@on memory, Memory; $($rule),*; );
        conformance_tests!(@on embedded, Embedded; $($rule),*; $($durable),*);
        conformance_tests!(@on postgres, Postgres; $($rule),*; $($durable),*);
    };
    (@on $module:ident, $kind:ident; $($rule:ident),*; $($durable:ident),*) => {
        mod $module {
            use crate::common::stores::TestStore;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    let kind = crate::common::Kind::$kind;
                    let Some(s) = TestStore::open(kind, stringify!($rule)).await else {
                        return;
                    };
                    super::$rule(&*s).await;
                    s.close().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $durable() {
                    let kind = crate::common::Kind::$kind;
                    let Some(s) = TestStore::open(kind, stringify!($durable)).await else {
                        return;
                    };
                    super::$durable(s).await.close().await;
                }
            )*
        }
    };
}

conformance_tests!(
    claim_moves_pending_to_running_under_a_new_lease,
    complete_ends_a_running_job,
    complete_refuses_unknown_pending_and_ended_jobs,
    complete_and_claim_is_a_complete_then_a_claim,
    fail_retries_while_attempts_remain_then_fails,
    fail_without_retry_is_final,
    fail_refuses_jobs_that_are_not_running,
    heartbeat_extends_a_running_lease_only,
    progress_is_fenced_like_a_heartbeat_and_kept_by_shared_stores,
    release_undoes_a_hand_out_under_its_lease_only,
    cancel_ends_pending_and_running_jobs_once,
    stale_lease_is_refused,
    no_lease_applies_to_the_current_lease,
    repeated_complete_is_idempotent,
    idempotency_key_attaches_to_the_first_job,
    idempotency_key_for_other_work_is_a_mismatch,
    idempotency_keys_are_one_namespace_across_queues,
    purge_forgets_jobs_ttl_after_their_end,
    clear_one_queue_cancels_live_jobs_and_forgets_ended_ones,
    clear_all_queues,
    claim_order_is_priority_then_age,
    first_non_empty_queue_wins,
    rescue_returns_expired_leases_to_pending,
    rescue_fails_a_job_at_max_attempts,
    rescue_leaves_live_leases_alone,
    counts_per_status_and_queue,
    list_filters_newest_first,
    peek_shows_the_next_job_without_taking_it,
    max_pending_refuses_inserts_beyond_it,
    get_reports_position_while_pending,
    concurrent_claims_never_share_a_job,
    ended_jobs_are_read_back_whole;
    durable: reopen_keeps_every_job,
    ended_jobs_are_read_back_whole_after_a_reopen,
);

/// A job held in the store and, beside it, the same job as the pure rules
/// of `jobq::job` make it. Every operation goes to both; they must agree.
struct Twin<'s> {
    /// The store under test.
    s: &'s dyn Store,
    /// The job as `job.rs` computes it.
    model: Job,
    /// Whether the job should be forgotten (cleared or purged).
    gone: bool,
}

impl<'s> Twin<'s> {
    /// Inserts `new`, which must be stored as a new job.
    async fn insert(s: &'s dyn Store, new: NewJob) -> Twin<'s> {
        let model = new.clone().into_job();
        let Inserted::Created(job) = s.insert(new, u64::MAX).await.unwrap() else {
            panic!("expected a new job");
        };
        let twin = Twin {
            s,
            model,
            gone: false,
        };
        twin.agrees(&job, "insert");
        twin
    }

    /// A new job of `queue` with `priority`, submitted at `created`.
    async fn new(s: &'s dyn Store, queue: &str, priority: i32, created: i64) -> Twin<'s> {
        Self::insert(s, new_job(queue, priority, created)).await
    }

    fn id(&self) -> JobId {
        self.model.id
    }

    /// The job as `job.rs` has it.
    fn job(&self) -> &Job {
        &self.model
    }

    /// The current (or last) lease.
    fn lease(&self) -> LeaseId {
        self.model.lease_id.expect("a lease")
    }

    /// Asserts that `got` is the job `job.rs` computed.
    fn agrees(&self, got: &Job, op: &str) {
        assert_same_job(got, &self.model, op);
    }

    /// Reads the job back: it must be stored as `job.rs` has it (or gone).
    async fn verify(&self, op: &str) {
        match (self.gone, self.s.get(self.id()).await.unwrap()) {
            (false, Some(rec)) => self.agrees(&rec.job, &format!("{op}, read back")),
            (true, None) => {}
            (gone, got) => panic!("{op}: expected gone = {gone}, the store has {got:?}"),
        }
    }

    /// Settles one operation: `want` is what `job.rs` said (on `next`, a
    /// copy of the model), `got` what the store did. Returns the outcome.
    async fn settle<T: PartialEq + Debug>(
        &mut self,
        op: &str,
        next: Job,
        want: Result<T, TransitionError>,
        got: jobq::store::Result<(Job, T)>,
    ) -> Result<T, TransitionError> {
        let out = match (want, got) {
            (Ok(w), Ok((job, g))) => {
                assert_eq!(g, w, "{op}: the store and job.rs disagree");
                self.model = next;
                self.agrees(&job, op);
                Ok(w)
            }
            (Err(w), Err(Error::Transition(g))) => {
                assert_eq!(g, w, "{op}: refused for another reason");
                Err(w)
            }
            (want, got) => panic!("{op}: job.rs says {want:?}, the store {got:?}"),
        };
        // A refusal changes nothing; an applied change is what was stored.
        self.verify(op).await;
        out
    }

    /// Claims from `queues`: the store must hand out this job.
    async fn claim(&mut self, queues: &[&str], now: i64, expires: i64) -> bool {
        let p = claim_params(queues, now, expires);
        let c = self.s.claim(&p).await.unwrap().expect("a job to hand out");
        assert_eq!(c.job.id, self.id(), "another job was handed out");
        self.model.claim(p.lease_id, p.now, p.expires_at).unwrap();
        self.agrees(&c.job, "claim");
        self.verify("claim").await;
        c.more_pending
    }

    async fn complete(
        &mut self,
        lease: Option<LeaseId>,
        result: &str,
        now: i64,
    ) -> Result<Completion, TransitionError> {
        let p = CompleteParams {
            id: self.id(),
            lease_id: lease,
            result: Bytes::from(result.to_owned()),
            now: Timestamp(now),
        };
        let mut next = self.model.clone();
        let want = next.complete(lease.as_ref(), &p.result, p.now);
        let got = self.s.complete(&p).await;
        self.settle("complete", next, want, got).await
    }

    async fn fail(
        &mut self,
        lease: Option<LeaseId>,
        error: &str,
        retry: bool,
        max_attempts: u32,
        now: i64,
    ) -> Result<Status, TransitionError> {
        let p = FailParams {
            id: self.id(),
            lease_id: lease,
            error: error.to_owned(),
            retry,
            max_attempts,
            now: Timestamp(now),
        };
        let mut next = self.model.clone();
        let want = next.fail(lease.as_ref(), error, retry, max_attempts, p.now);
        let got = self.s.fail(&p).await.map(|j| {
            let status = j.status;
            (j, status)
        });
        self.settle("fail", next, want, got).await
    }

    async fn heartbeat(
        &mut self,
        lease: Option<LeaseId>,
        expires: i64,
    ) -> Result<(), TransitionError> {
        let mut next = self.model.clone();
        let want = next.heartbeat(lease.as_ref(), Timestamp(expires));
        let got = self
            .s
            .heartbeat(&HeartbeatParams {
                id: self.id(),
                lease_id: lease,
                expires_at: Timestamp(expires),
            })
            .await
            .map(|j| (j, ()));
        self.settle("heartbeat", next, want, got).await
    }

    /// A progress event: the heartbeat rule; returns the store's number for it.
    async fn progress(
        &mut self,
        lease: Option<LeaseId>,
        expires: i64,
        data: &'static str,
    ) -> Result<Option<u64>, TransitionError> {
        let mut next = self.model.clone();
        let want = next.heartbeat(lease.as_ref(), Timestamp(expires));
        let p = ProgressParams {
            id: self.id(),
            lease_id: lease,
            expires_at: Timestamp(expires),
            data: Bytes::from_static(data.as_bytes()),
        };
        let got = self.s.progress(&p).await;
        let seq = got.as_ref().ok().and_then(|(_, seq)| *seq);
        self.settle("progress", next, want, got.map(|(j, _)| (j, ())))
            .await
            .map(|()| seq)
    }

    async fn release(&mut self, lease: LeaseId) -> Result<(), TransitionError> {
        let mut next = self.model.clone();
        let want = next.release(&lease);
        let got = self.s.release(self.id(), lease).await.map(|j| (j, ()));
        self.settle("release", next, want, got).await
    }

    /// `only_pending` is `Job::abandon` (a disconnected client cancels only
    /// what no worker has started); otherwise `Job::cancel`.
    async fn cancel(&mut self, only_pending: bool, now: i64) -> Result<(), TransitionError> {
        let mut next = self.model.clone();
        let want = if only_pending {
            next.abandon(Timestamp(now))
        } else {
            next.cancel(Timestamp(now))
        };
        let got = self
            .s
            .cancel(self.id(), only_pending, Timestamp(now))
            .await
            .map(|j| (j, ()));
        self.settle("cancel", next, want, got).await
    }
}

/// Asserts that the store's job `got` is `want` (as `job.rs` made it).
fn assert_same_job(got: &Job, want: &Job, op: &str) {
    let m = want;
    assert_eq!(got.id, m.id, "{op}: another job");
    assert_eq!(
        (
            &got.queue,
            got.priority,
            got.status,
            got.attempts,
            got.created_at,
            got.started_at,
            got.ended_at,
        ),
        (
            &m.queue,
            m.priority,
            m.status,
            m.attempts,
            m.created_at,
            m.started_at,
            m.ended_at,
        ),
        "{op}: the store and job.rs disagree"
    );
    assert_eq!(
        (got.lease_id, got.lease_expires_at),
        (m.lease_id, m.lease_expires_at),
        "{op}: lease"
    );
    assert_eq!(
        (&got.result, &got.error),
        (&m.result, &m.error),
        "{op}: result and error"
    );
    assert_eq!(got.idempotency, m.idempotency, "{op}: idempotency key");
    // Stores may drop an ended job's input (nothing shows it again).
    if !got.status.is_ended() {
        assert_eq!(
            (&got.payload, &got.headers),
            (&m.payload, &m.headers),
            "{op}: input"
        );
    }
}

/// `rescue_expired` on a store that holds exactly `twins`: the jobs it
/// changes must be those `Job::expire_lease` changes, as it changes them.
async fn rescue(s: &dyn Store, twins: &mut [&mut Twin<'_>], now: i64, max_attempts: u32) {
    let changed = s
        .rescue_expired(Timestamp(now), max_attempts)
        .await
        .unwrap();
    let mut want = HashSet::new();
    for t in twins.iter_mut() {
        if t.model.expire_lease(Timestamp(now), max_attempts).is_some() {
            want.insert(t.id());
            let job = changed
                .iter()
                .find(|j| j.id == t.id())
                .unwrap_or_else(|| panic!("rescue at {now} left job {} alone", t.id()));
            t.agrees(job, "rescue");
        }
        t.verify("rescue").await;
    }
    let got: HashSet<JobId> = changed.iter().map(|j| j.id).collect();
    assert_eq!(got, want, "rescue at {now} changed other jobs");
}

/// `clear` on a store that holds exactly `twins`: live jobs of the queue
/// are cancelled (`Job::cancel`), ended ones forgotten.
async fn clear(s: &dyn Store, twins: &mut [&mut Twin<'_>], queue: Option<&str>, now: i64) {
    let got: HashSet<JobId> = s
        .clear(queue.map(q).as_ref(), Timestamp(now))
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut want = HashSet::new();
    for t in twins.iter_mut() {
        if t.gone || queue.is_some_and(|name| t.model.queue.as_str() != name) {
            continue;
        }
        if t.model.status.is_ended() {
            t.gone = true;
        } else {
            t.model.cancel(Timestamp(now)).unwrap();
            want.insert(t.id());
        }
    }
    assert_eq!(got, want, "clear cancelled other jobs");
    for t in twins.iter() {
        t.verify("clear").await;
    }
}

/// `purge_expired` on a store that holds exactly `twins`: it forgets the
/// jobs `Job::is_expired` says are past the TTL, and only those.
async fn purge(s: &dyn Store, twins: &mut [&mut Twin<'_>], ttl: Duration, now: i64) {
    let purged = s.purge_expired(ttl, Timestamp(now)).await.unwrap();
    let mut want = 0;
    for t in twins.iter_mut() {
        if !t.gone && t.model.is_expired(ttl, Timestamp(now)) {
            t.gone = true;
            want += 1;
        }
    }
    assert_eq!(purged, want, "purge at {now}");
    for t in twins.iter() {
        t.verify("purge").await;
    }
}

/// A new job of the default queue under idempotency key `key`.
fn keyed(key: &str, fingerprint: u8, created: i64) -> NewJob {
    NewJob {
        idempotency: Some(Idempotency {
            key: key.into(),
            fingerprint: [fingerprint; 32],
        }),
        ..new_job("default", 0, created)
    }
}

/// The same submission again (a new id, as the broker picks one per submit).
fn resubmitted(job: &NewJob) -> NewJob {
    NewJob {
        id: JobId::new(),
        ..job.clone()
    }
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

async fn list(
    s: &dyn Store,
    status: Option<Status>,
    queue: Option<&str>,
    limit: usize,
) -> Vec<JobId> {
    ids(&s
        .list(&ListFilter {
            status,
            queue: queue.map(q),
            limit,
        })
        .await
        .unwrap())
}

// ---- transitions ----

async fn claim_moves_pending_to_running_under_a_new_lease(s: &dyn Store) {
    let mut t = Twin::new(s, "default", 0, 1).await;
    assert_eq!(s.get(t.id()).await.unwrap().unwrap().position, Some(0));
    assert!(
        !t.claim(&["default"], 10, 100).await,
        "nothing else pending"
    );
    let j = t.job();
    assert_eq!(j.status, Status::Running);
    assert_eq!(j.attempts, 1);
    assert_eq!(j.started_at, Some(Timestamp(10)));
    assert_eq!(j.lease_expires_at, Some(Timestamp(100)));
    assert_eq!(s.get(t.id()).await.unwrap().unwrap().position, None);
    assert!(
        s.claim(&claim_params(&["default"], 11, 100))
            .await
            .unwrap()
            .is_none(),
        "a running job is not handed out again"
    );
    assert!(s.peek(&[q("default")]).await.unwrap().is_none());
    // Every hand-out has a lease of its own.
    let first = t.lease();
    t.fail(None, "again", true, 3, 20).await.unwrap();
    t.claim(&["default"], 30, 130).await;
    assert_ne!(t.lease(), first);
    assert_eq!(t.job().attempts, 2);
}

async fn complete_ends_a_running_job(s: &dyn Store) {
    let mut t = Twin::new(s, "default", 0, 1).await;
    t.claim(&["default"], 10, 100).await;
    let lease = t.lease();
    assert_eq!(
        t.complete(Some(lease), "ok", 20).await,
        Ok(Completion::Completed)
    );
    let j = t.job();
    assert_eq!(j.status, Status::Completed);
    assert_eq!(j.result.as_deref(), Some(&b"ok"[..]));
    assert_eq!(j.ended_at, Some(Timestamp(20)));
    assert_eq!(j.lease_expires_at, None);
    assert_eq!(j.error, None);
    // A retried job that completes loses its earlier error.
    let mut r = Twin::new(s, "default", 0, 2).await;
    r.claim(&["default"], 30, 100).await;
    r.fail(None, "transient", true, 3, 31).await.unwrap();
    r.claim(&["default"], 32, 100).await;
    assert_eq!(r.complete(None, "", 33).await, Ok(Completion::Completed));
    assert_eq!(r.job().error, None);
    assert_eq!(r.job().result.as_deref(), Some(&b""[..]));
}

/// The fused complete-and-take-next (`Store::complete_and_claim`, one
/// transaction on PostgreSQL) answers as `complete` and then `claim` would.
async fn complete_and_claim_is_a_complete_then_a_claim(s: &dyn Store) {
    let mut t = Twin::new(s, "default", 0, 1).await;
    t.claim(&["default"], 10, 100).await;
    let mut next = Twin::new(s, "default", 0, 2).await;
    let later = insert(s, new_job("other", 0, 3)).await;
    let both = ["default", "other"];
    // A stale lease: refused as `complete` refuses it, and no job is taken.
    let stale = CompleteParams {
        id: t.id(),
        lease_id: Some(LeaseId::new()),
        result: Bytes::from_static(b"stale"),
        now: Timestamp(20),
    };
    match s
        .complete_and_claim(&stale, &claim_params(&both, 20, 200))
        .await
    {
        Err(Error::Transition(TransitionError::StaleLease)) => {}
        other => panic!("expected a stale lease, got {other:?}"),
    }
    t.verify("a refused complete-and-claim").await;
    next.verify("a refused complete-and-claim takes no job")
        .await;

    // Applied: the job ends as `complete` ends it, and the best job of the
    // first non-empty queue is handed out as `claim` hands it out.
    let done = CompleteParams {
        id: t.id(),
        lease_id: Some(t.lease()),
        result: Bytes::from_static(b"ok"),
        now: Timestamp(30),
    };
    let c = claim_params(&both, 30, 300);
    let ((job, how), claimed) = s.complete_and_claim(&done, &c).await.unwrap();
    assert_eq!(how, Completion::Completed);
    t.model
        .complete(done.lease_id.as_ref(), &done.result, done.now)
        .unwrap();
    t.agrees(&job, "complete-and-claim, the complete");
    t.verify("complete-and-claim, the complete").await;
    let claimed = claimed.unwrap().expect("the next job");
    assert_eq!(claimed.job.id, next.id());
    assert!(claimed.more_pending, "`other` still holds a job");
    next.model.claim(c.lease_id, c.now, c.expires_at).unwrap();
    next.agrees(&claimed.job, "complete-and-claim, the claim");
    next.verify("complete-and-claim, the claim").await;

    // The idempotent repeat answers as `complete` does and still takes a
    // job: `default` is empty now, so `other`'s.
    let ((job, how), claimed) = s
        .complete_and_claim(&done, &claim_params(&both, 40, 400))
        .await
        .unwrap();
    assert_eq!(how, Completion::AlreadyCompleted);
    t.agrees(&job, "repeated complete-and-claim");
    let claimed = claimed.unwrap().expect("the job of `other`");
    assert_eq!(claimed.job.id, later);
    assert!(!claimed.more_pending);

    // Nothing left to take: the complete alone.
    let last = CompleteParams {
        id: next.id(),
        lease_id: Some(next.lease()),
        result: Bytes::from_static(b"last"),
        now: Timestamp(50),
    };
    let ((job, how), claimed) = s
        .complete_and_claim(&last, &claim_params(&both, 50, 500))
        .await
        .unwrap();
    assert_eq!(how, Completion::Completed);
    assert!(claimed.unwrap().is_none());
    next.model
        .complete(last.lease_id.as_ref(), &last.result, last.now)
        .unwrap();
    next.agrees(&job, "complete-and-claim with nothing pending");
    next.verify("complete-and-claim with nothing pending").await;
}

async fn complete_refuses_unknown_pending_and_ended_jobs(s: &dyn Store) {
    let unknown = CompleteParams {
        id: JobId::new(),
        lease_id: None,
        result: Bytes::from_static(b"ok"),
        now: Timestamp(5),
    };
    assert!(matches!(s.complete(&unknown).await, Err(Error::NotFound)));
    let mut pending = Twin::new(s, "default", 0, 1).await;
    assert_eq!(
        pending.complete(None, "ok", 5).await,
        Err(TransitionError::NotRunning(Status::Pending))
    );
    // Cancelled while running: the worker's later complete is refused.
    pending.claim(&["default"], 10, 100).await;
    let lease = pending.lease();
    pending.cancel(false, 11).await.unwrap();
    assert_eq!(
        pending.complete(Some(lease), "late", 12).await,
        Err(TransitionError::NotRunning(Status::Cancelled))
    );
    assert_eq!(
        pending.complete(None, "late", 12).await,
        Err(TransitionError::NotRunning(Status::Cancelled))
    );
    let mut failed = Twin::new(s, "default", 0, 2).await;
    failed.claim(&["default"], 20, 100).await;
    failed.fail(None, "no", false, 3, 21).await.unwrap();
    assert_eq!(
        failed.complete(None, "late", 22).await,
        Err(TransitionError::NotRunning(Status::Failed))
    );
}

async fn fail_retries_while_attempts_remain_then_fails(s: &dyn Store) {
    let mut t = Twin::new(s, "other", 9, 5).await;
    t.claim(&["other"], 11, 100).await;
    let first = t.lease();
    assert_eq!(
        t.fail(Some(first), "boom", true, 2, 30).await,
        Ok(Status::Pending)
    );
    let j = t.job();
    assert_eq!(j.error.as_deref(), Some("boom"));
    assert_eq!(j.ended_at, None);
    assert_eq!(j.lease_expires_at, None);
    assert_eq!(s.pending_count(), 1, "back in the queue");
    t.claim(&["other"], 31, 40).await;
    assert_eq!(t.job().attempts, 2);
    assert_eq!(
        t.fail(Some(t.lease()), "boom", true, 2, 30).await,
        Ok(Status::Failed)
    );
    assert_eq!(t.job().ended_at, Some(Timestamp(30)));
    assert_eq!(t.job().error.as_deref(), Some("boom"));
    assert_eq!(s.pending_count(), 0);
    assert!(s
        .claim(&claim_params(&["other"], 50, 100))
        .await
        .unwrap()
        .is_none());
}

async fn fail_without_retry_is_final(s: &dyn Store) {
    let mut t = Twin::new(s, "default", 0, 1).await;
    t.claim(&["default"], 10, 100).await;
    assert_eq!(
        t.fail(None, "bad input", false, 3, 20).await,
        Ok(Status::Failed)
    );
    assert_eq!(t.job().attempts, 1);
    assert_eq!(t.job().ended_at, Some(Timestamp(20)));
    // `max_attempts` 1: the first failure is final, retry or not.
    let mut u = Twin::new(s, "default", 0, 2).await;
    u.claim(&["default"], 30, 100).await;
    assert_eq!(u.fail(None, "x", true, 1, 31).await, Ok(Status::Failed));
}

async fn fail_refuses_jobs_that_are_not_running(s: &dyn Store) {
    let unknown = FailParams {
        id: JobId::new(),
        lease_id: None,
        error: "x".into(),
        retry: true,
        max_attempts: 3,
        now: Timestamp(1),
    };
    assert!(matches!(s.fail(&unknown).await, Err(Error::NotFound)));
    let mut t = Twin::new(s, "default", 0, 1).await;
    assert_eq!(
        t.fail(None, "x", true, 3, 2).await,
        Err(TransitionError::NotRunning(Status::Pending))
    );
    t.claim(&["default"], 10, 100).await;
    let lease = t.lease();
    t.fail(Some(lease), "boom", true, 3, 20).await.unwrap();
    // Failing the same hand-out twice: the job is pending again.
    assert_eq!(
        t.fail(Some(lease), "boom", true, 3, 21).await,
        Err(TransitionError::NotRunning(Status::Pending))
    );
    t.claim(&["default"], 30, 100).await;
    t.complete(None, "ok", 31).await.unwrap();
    assert_eq!(
        t.fail(None, "late", true, 3, 32).await,
        Err(TransitionError::NotRunning(Status::Completed))
    );
}

async fn heartbeat_extends_a_running_lease_only(s: &dyn Store) {
    assert!(matches!(
        s.heartbeat(&HeartbeatParams {
            id: JobId::new(),
            lease_id: None,
            expires_at: Timestamp(5)
        })
        .await,
        Err(Error::NotFound)
    ));
    let mut t = Twin::new(s, "default", 0, 1).await;
    assert_eq!(
        t.heartbeat(None, 500).await,
        Err(TransitionError::NotRunning(Status::Pending))
    );
    t.claim(&["default"], 10, 100).await;
    t.heartbeat(Some(t.lease()), 500).await.unwrap();
    assert_eq!(t.job().lease_expires_at, Some(Timestamp(500)));
    t.complete(None, "ok", 20).await.unwrap();
    assert_eq!(
        t.heartbeat(Some(t.lease()), 600).await,
        Err(TransitionError::NotRunning(Status::Completed))
    );
}

async fn progress_is_fenced_like_a_heartbeat_and_kept_by_shared_stores(s: &dyn Store) {
    let unknown = ProgressParams {
        id: JobId::new(),
        lease_id: None,
        expires_at: Timestamp(5),
        data: Bytes::from_static(b"x"),
    };
    assert!(matches!(s.progress(&unknown).await, Err(Error::NotFound)));
    let mut t = Twin::new(s, "default", 0, 1).await;
    assert_eq!(
        t.progress(None, 500, "early").await,
        Err(TransitionError::NotRunning(Status::Pending))
    );
    t.claim(&["default"], 10, 100).await;
    assert_eq!(
        t.progress(Some(LeaseId::new()), 500, "stale").await,
        Err(TransitionError::StaleLease)
    );
    let first = t.progress(Some(t.lease()), 500, "one").await.unwrap();
    assert_eq!(t.job().lease_expires_at, Some(Timestamp(500)));
    let second = t.progress(None, 600, "two").await.unwrap();
    let (kept, dropped) = s.progress_since(t.id(), 0).await.unwrap();
    assert_eq!(dropped, 0);
    if s.shares_progress() {
        // Numbered by the store, from 1, and kept for other nodes.
        assert_eq!((first, second), (Some(1), Some(2)));
        let want = vec![
            (1, Bytes::from_static(b"one")),
            (2, Bytes::from_static(b"two")),
        ];
        assert_eq!(kept, want);
        assert_eq!(s.progress_since(t.id(), 1).await.unwrap().0, want[1..]);
    } else {
        // The broker numbers them; the store keeps none.
        assert_eq!((first, second), (None, None));
        assert!(kept.is_empty());
    }
    t.complete(None, "ok", 20).await.unwrap();
    assert_eq!(
        t.progress(Some(t.lease()), 700, "late").await,
        Err(TransitionError::NotRunning(Status::Completed))
    );
}

async fn release_undoes_a_hand_out_under_its_lease_only(s: &dyn Store) {
    assert!(matches!(
        s.release(JobId::new(), LeaseId::new()).await,
        Err(Error::NotFound)
    ));
    let mut t = Twin::new(s, "default", 0, 1).await;
    assert_eq!(
        t.release(LeaseId::new()).await,
        Err(TransitionError::NotRunning(Status::Pending))
    );
    t.claim(&["default"], 10, 100).await;
    let lease = t.lease();
    assert_eq!(
        t.release(LeaseId::new()).await,
        Err(TransitionError::StaleLease)
    );
    t.release(lease).await.unwrap();
    let j = t.job();
    assert_eq!(
        (j.status, j.attempts, j.started_at),
        (Status::Pending, 0, None)
    );
    assert_eq!(s.pending_count(), 1);
    // Handed out again as if the first hand-out had never been.
    t.claim(&["default"], 20, 200).await;
    assert_eq!(t.job().attempts, 1);
    assert_eq!(
        t.complete(Some(lease), "late", 30).await,
        Err(TransitionError::StaleLease)
    );
}

async fn cancel_ends_pending_and_running_jobs_once(s: &dyn Store) {
    assert!(matches!(
        s.cancel(JobId::new(), false, Timestamp(92)).await,
        Err(Error::NotFound)
    ));
    // Pending: cancelled either way.
    let mut p = Twin::new(s, "default", 0, 1).await;
    p.cancel(true, 5).await.unwrap();
    assert_eq!(p.job().status, Status::Cancelled);
    assert_eq!(p.job().ended_at, Some(Timestamp(5)));
    assert_eq!(s.pending_count(), 0);
    // Running: only an unconditional cancel ends it.
    let mut r = Twin::new(s, "default", 0, 3).await;
    r.claim(&["default"], 90, 1000).await;
    assert_eq!(
        r.cancel(true, 91).await,
        Err(TransitionError::NotPending(Status::Running))
    );
    r.cancel(false, 91).await.unwrap();
    let j = r.job();
    assert_eq!(j.status, Status::Cancelled);
    assert_eq!(j.ended_at, Some(Timestamp(91)));
    assert_eq!(j.lease_expires_at, None);
    // Ended jobs stay as they are.
    assert_eq!(
        r.cancel(false, 92).await,
        Err(TransitionError::AlreadyEnded(Status::Cancelled))
    );
    assert_eq!(
        r.cancel(true, 92).await,
        Err(TransitionError::NotPending(Status::Cancelled))
    );
    let mut done = Twin::new(s, "default", 0, 4).await;
    done.claim(&["default"], 93, 1000).await;
    done.complete(None, "ok", 94).await.unwrap();
    assert_eq!(
        done.cancel(false, 95).await,
        Err(TransitionError::AlreadyEnded(Status::Completed))
    );
}

// ---- fencing ----

async fn stale_lease_is_refused(s: &dyn Store) {
    let mut t = Twin::new(s, "default", 0, 1).await;
    t.claim(&["default"], 10, 100).await;
    let never = LeaseId::new();
    assert_eq!(
        t.complete(Some(never), "ok", 20).await,
        Err(TransitionError::StaleLease)
    );
    assert_eq!(
        t.heartbeat(Some(never), 500).await,
        Err(TransitionError::StaleLease)
    );
    assert_eq!(
        t.fail(Some(never), "x", true, 3, 20).await,
        Err(TransitionError::StaleLease)
    );
    // The first lease runs out and the job is handed out again: the first
    // worker's calls are refused, the job stays with the second.
    let old = t.lease();
    rescue(s, &mut [&mut t], 100, 3).await;
    t.claim(&["default"], 101, 200).await;
    assert_eq!(
        t.fail(Some(old), "boom", true, 3, 102).await,
        Err(TransitionError::StaleLease)
    );
    assert_eq!(
        t.heartbeat(Some(old), 500).await,
        Err(TransitionError::StaleLease)
    );
    assert_eq!(
        t.complete(Some(old), "stale", 103).await,
        Err(TransitionError::StaleLease)
    );
    assert_eq!(t.job().status, Status::Running);
    t.complete(Some(t.lease()), "fresh", 104).await.unwrap();
    // After the end, the old lease is still not the job's.
    assert_eq!(
        t.complete(Some(old), "fresh", 105).await,
        Err(TransitionError::StaleLease)
    );
}

async fn no_lease_applies_to_the_current_lease(s: &dyn Store) {
    let mut t = Twin::new(s, "default", 0, 1).await;
    t.claim(&["default"], 10, 100).await;
    t.heartbeat(None, 500).await.unwrap();
    assert_eq!(t.job().lease_expires_at, Some(Timestamp(500)));
    assert_eq!(t.fail(None, "x", true, 3, 20).await, Ok(Status::Pending));
    t.claim(&["default"], 30, 100).await;
    assert_eq!(t.complete(None, "ok", 40).await, Ok(Completion::Completed));
    assert_eq!(t.job().result.as_deref(), Some(&b"ok"[..]));
}

async fn repeated_complete_is_idempotent(s: &dyn Store) {
    let mut t = Twin::new(s, "default", 0, 1).await;
    t.claim(&["default"], 10, 100).await;
    let lease = t.lease();
    t.complete(Some(lease), "ok", 20).await.unwrap();
    // The same lease: a repeat, whatever it sends.
    assert_eq!(
        t.complete(Some(lease), "ok", 21).await,
        Ok(Completion::AlreadyCompleted)
    );
    assert_eq!(
        t.complete(Some(lease), "other", 22).await,
        Ok(Completion::AlreadyCompleted)
    );
    // No lease: the same bytes are a repeat, other bytes a conflict.
    assert_eq!(
        t.complete(None, "ok", 23).await,
        Ok(Completion::AlreadyCompleted)
    );
    assert_eq!(
        t.complete(None, "other", 24).await,
        Err(TransitionError::NotRunning(Status::Completed))
    );
    assert_eq!(
        t.complete(Some(LeaseId::new()), "ok", 25).await,
        Err(TransitionError::StaleLease)
    );
    // A repeat changes nothing.
    assert_eq!(t.job().ended_at, Some(Timestamp(20)));
    assert_eq!(t.job().result.as_deref(), Some(&b"ok"[..]));
}

// ---- idempotency ----

async fn idempotency_key_attaches_to_the_first_job(s: &dyn Store) {
    let first = keyed("k1", 7, 1);
    let id = insert(s, first.clone()).await;
    for _ in 0..2 {
        match s.insert(resubmitted(&first), u64::MAX).await.unwrap() {
            Inserted::Existing(j) => {
                assert_eq!(j.id, id);
                assert_eq!(j.payload, first.payload);
                assert_eq!(j.headers, first.headers);
                assert_eq!(j.status, Status::Pending);
            }
            Inserted::Created(_) => panic!("idempotency key ignored"),
        }
    }
    assert_eq!(s.pending_count(), 1);
    assert_eq!(s.counts().await.unwrap().total[Status::Pending.index()], 1);
    // It attaches whatever became of the job: here, completed.
    let c = s
        .claim(&claim_params(&["default"], 10, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, id);
    s.complete(&CompleteParams {
        id,
        lease_id: c.job.lease_id,
        result: Bytes::from_static(b"r"),
        now: Timestamp(20),
    })
    .await
    .unwrap();
    let Inserted::Existing(j) = s.insert(resubmitted(&first), u64::MAX).await.unwrap() else {
        panic!("idempotency key ignored after the job completed");
    };
    assert_eq!((j.id, j.status), (id, Status::Completed));
    assert_eq!(j.result.as_deref(), Some(&b"r"[..]));
}

async fn idempotency_key_for_other_work_is_a_mismatch(s: &dyn Store) {
    // The fingerprint covers queue and body: other work has another one.
    let first = keyed("k1", 7, 1);
    insert(s, first.clone()).await;
    let mut other = resubmitted(&first);
    other.idempotency.as_mut().unwrap().fingerprint = [8; 32];
    other.payload = Bytes::from_static(b"other body");
    assert!(matches!(
        s.insert(other, u64::MAX).await,
        Err(Error::IdempotencyMismatch)
    ));
    assert_eq!(s.pending_count(), 1, "nothing stored");
    assert_eq!(list(s, None, None, 10).await.len(), 1);
}

async fn idempotency_keys_are_one_namespace_across_queues(s: &dyn Store) {
    let a = keyed("shared", 1, 1);
    let id = insert(s, a.clone()).await;
    // The same key in another queue is not a new job.
    let mut b = resubmitted(&a);
    b.queue = q("other");
    b.idempotency.as_mut().unwrap().fingerprint = [2; 32];
    assert!(matches!(
        s.insert(b.clone(), u64::MAX).await,
        Err(Error::IdempotencyMismatch)
    ));
    assert!(s.peek(&[q("other")]).await.unwrap().is_none());
    // Keys of other names are independent.
    let c = keyed("another", 1, 2);
    assert_ne!(insert(s, c).await, id);
    // A key is free again once its job is forgotten.
    s.clear(Some(&q("default")), Timestamp(10)).await.unwrap();
    s.clear(Some(&q("default")), Timestamp(11)).await.unwrap();
    assert!(s.get(id).await.unwrap().is_none());
    let Inserted::Created(j) = s.insert(resubmitted(&b), u64::MAX).await.unwrap() else {
        panic!("a forgotten job's key is still taken");
    };
    assert_eq!(j.queue, q("other"));
}

// ---- TTL ----

async fn purge_forgets_jobs_ttl_after_their_end(s: &dyn Store) {
    let ttl = Duration::from_micros(100);
    let mut done = Twin::insert(s, keyed("ttl-key", 1, 1)).await;
    done.claim(&["default"], 10, 1000).await;
    done.complete(None, "r", 20).await.unwrap();
    // Ended in time order, as with a clock.
    let mut cancelled = Twin::new(s, "default", 0, 3).await;
    cancelled.cancel(false, 25).await.unwrap();
    let mut failed = Twin::new(s, "other", 0, 2).await;
    failed.claim(&["other"], 26, 1000).await;
    failed.fail(None, "x", false, 3, 30).await.unwrap();
    let mut running = Twin::new(s, "default", 0, 4).await;
    running.claim(&["default"], 12, i64::MAX).await;
    let mut pending = Twin::new(s, "default", 0, 5).await;
    let mut all = [
        &mut done,
        &mut failed,
        &mut cancelled,
        &mut running,
        &mut pending,
    ];
    // Boundaries: a job ended at t is kept until t + ttl, forgotten from then.
    purge(s, &mut all, ttl, 119).await;
    purge(s, &mut all, ttl, 120).await;
    purge(s, &mut all, ttl, 129).await;
    purge(s, &mut all, ttl, 130).await;
    assert!(done.gone && cancelled.gone && failed.gone);
    // Jobs that have not ended are never forgotten.
    let mut live = [&mut running, &mut pending];
    purge(s, &mut live, ttl, i64::MAX).await;
    assert!(!running.gone && !pending.gone);
    // The forgotten job's key is free again.
    assert!(matches!(
        s.insert(keyed("ttl-key", 2, 200), u64::MAX).await.unwrap(),
        Inserted::Created(_)
    ));
}

// ---- clear ----

async fn clear_one_queue_cancels_live_jobs_and_forgets_ended_ones(s: &dyn Store) {
    let mut done = Twin::new(s, "default", 0, 1).await;
    done.claim(&["default"], 10, 1000).await;
    done.complete(None, "r", 20).await.unwrap();
    let mut running = Twin::new(s, "default", 0, 200).await;
    let mut pending = Twin::new(s, "default", 0, 201).await;
    running.claim(&["default"], 210, 1000).await;
    let mut kept_done = Twin::new(s, "kept", 0, 202).await;
    kept_done.claim(&["kept"], 211, 1000).await;
    kept_done.complete(None, "r", 212).await.unwrap();
    let mut kept = Twin::new(s, "kept", 0, 203).await;
    clear(
        s,
        &mut [
            &mut done,
            &mut running,
            &mut pending,
            &mut kept,
            &mut kept_done,
        ],
        Some("default"),
        220,
    )
    .await;
    assert!(done.gone, "ended job forgotten");
    assert_eq!(running.job().status, Status::Cancelled);
    assert_eq!(pending.job().status, Status::Cancelled);
    assert_eq!(running.job().ended_at, Some(Timestamp(220)));
    assert_eq!(kept.job().status, Status::Pending, "other queue kept");
    assert!(!kept_done.gone, "other queue's ended job kept");
    assert_eq!(s.pending_count(), 1);
    // The running job's worker is refused.
    assert_eq!(
        running.complete(Some(running.lease()), "late", 221).await,
        Err(TransitionError::NotRunning(Status::Cancelled))
    );
    // Clearing a queue with nothing in it cancels nothing.
    assert!(s
        .clear(Some(&q("nothing")), Timestamp(230))
        .await
        .unwrap()
        .is_empty());
}

async fn clear_all_queues(s: &dyn Store) {
    let mut a = Twin::new(s, "a", 0, 1).await;
    let mut b = Twin::new(s, "b", 5, 2).await;
    let mut c = Twin::new(s, "c", 0, 3).await;
    b.claim(&["b"], 10, 1000).await;
    c.claim(&["c"], 11, 1000).await;
    c.complete(None, "r", 12).await.unwrap();
    let mut all = [&mut a, &mut b, &mut c];
    clear(s, &mut all, None, 20).await;
    assert!(c.gone);
    assert_eq!(s.pending_count(), 0);
    // The cancelled jobs stay known until a second clear forgets them.
    let mut all = [&mut a, &mut b, &mut c];
    clear(s, &mut all, None, 30).await;
    assert!(a.gone && b.gone);
    assert_eq!(s.counts().await.unwrap().total, [0; 5]);
}

// ---- ordering ----

async fn claim_order_is_priority_then_age(s: &dyn Store) {
    let low = insert(s, new_job("default", -1, 1)).await;
    let normal = insert(s, new_job("default", 0, 2)).await;
    let high_a = insert(s, new_job("default", 5, 3)).await;
    let high_b = insert(s, new_job("default", 5, 4)).await;
    let urgent = insert(s, new_job("default", 100, 5)).await;
    let mut order = Vec::new();
    for n in 0..5 {
        let next = s.peek(&[q("default")]).await.unwrap().expect("a job").id;
        let c = s
            .claim(&claim_params(&["default"], 10 + n, 1000))
            .await
            .unwrap()
            .expect("a job");
        assert_eq!(c.job.id, next, "peek and claim agree");
        assert_eq!(c.more_pending, n < 4);
        order.push(c.job.id);
    }
    assert_eq!(order, vec![urgent, high_a, high_b, normal, low]);
    // A retried job keeps its place among equals.
    let first = insert(s, new_job("retry", 0, 10)).await;
    let second = insert(s, new_job("retry", 0, 11)).await;
    let c = s
        .claim(&claim_params(&["retry"], 20, 1000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, first);
    s.fail(&FailParams {
        id: first,
        lease_id: c.job.lease_id,
        error: "again".into(),
        retry: true,
        max_attempts: 3,
        now: Timestamp(21),
    })
    .await
    .unwrap();
    assert_eq!(s.peek(&[q("retry")]).await.unwrap().unwrap().id, first);
    assert_eq!(s.get(second).await.unwrap().unwrap().position, Some(1));
}

async fn first_non_empty_queue_wins(s: &dyn Store) {
    let first = insert(s, new_job("default", 0, 1)).await;
    let high = insert(s, new_job("default", 5, 4)).await;
    let other = insert(s, new_job("other", 9, 5)).await;
    // `default` is not empty: its best job wins over `other`'s higher priority.
    let c = s
        .claim(&claim_params(&["default", "other"], 10, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, high);
    assert!(c.more_pending);
    let c = s
        .claim(&claim_params(&["nothing", "other"], 11, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, other);
    assert!(!c.more_pending, "no other pending job in these queues");
    assert!(s
        .claim(&claim_params(&["nothing"], 11, 100))
        .await
        .unwrap()
        .is_none());
    assert!(s
        .claim(&claim_params(&["other", "nothing"], 12, 100))
        .await
        .unwrap()
        .is_none());
    let c = s
        .claim(&claim_params(&["other", "default"], 13, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, first);
    assert!(!c.more_pending);
}

// ---- rescue ----

async fn rescue_returns_expired_leases_to_pending(s: &dyn Store) {
    let mut t = Twin::new(s, "default", 0, 1).await;
    t.claim(&["default"], 50, 60).await;
    rescue(s, &mut [&mut t], 59, 2).await;
    assert_eq!(t.job().status, Status::Running, "the lease holds until 60");
    rescue(s, &mut [&mut t], 60, 2).await;
    let j = t.job();
    assert_eq!(j.status, Status::Pending);
    assert_eq!(j.lease_expires_at, None);
    assert_eq!(j.ended_at, None);
    assert_eq!(s.pending_count(), 1);
    t.claim(&["default"], 61, 70).await;
    assert_eq!(t.job().attempts, 2);
}

async fn rescue_fails_a_job_at_max_attempts(s: &dyn Store) {
    let mut t = Twin::new(s, "default", 0, 1).await;
    t.claim(&["default"], 50, 60).await;
    t.fail(None, "worker error", true, 2, 55).await.unwrap();
    t.claim(&["default"], 61, 70).await;
    rescue(s, &mut [&mut t], 80, 2).await;
    let j = t.job();
    assert_eq!(j.status, Status::Failed);
    assert_eq!(j.ended_at, Some(Timestamp(80)));
    assert_eq!(
        j.error.as_deref(),
        Some("lease expired without a result after 2 attempt(s)")
    );
    assert_eq!(s.pending_count(), 0);
    // A failed job is not rescued again.
    rescue(s, &mut [&mut t], 1000, 2).await;
}

async fn rescue_leaves_live_leases_alone(s: &dyn Store) {
    let mut live = Twin::new(s, "default", 0, 1).await;
    let mut expired = Twin::new(s, "default", 0, 2).await;
    let mut done = Twin::new(s, "default", 0, 3).await;
    let mut pending = Twin::new(s, "other", 0, 4).await;
    live.claim(&["default"], 10, 100).await;
    expired.claim(&["default"], 10, 100).await;
    done.claim(&["default"], 10, 100).await;
    // A heartbeat moves the live lease past the rescue's `now`.
    live.heartbeat(Some(live.lease()), 500).await.unwrap();
    done.complete(None, "r", 20).await.unwrap();
    let mut all = [&mut live, &mut expired, &mut done, &mut pending];
    rescue(s, &mut all, 100, 3).await;
    assert_eq!(live.job().status, Status::Running);
    assert_eq!(expired.job().status, Status::Pending);
    assert_eq!(done.job().status, Status::Completed);
    assert_eq!(pending.job().attempts, 0);
    // The live lease still works.
    live.complete(Some(live.lease()), "kept", 200)
        .await
        .unwrap();
}

// ---- counts, list, peek, back-pressure, get ----

async fn counts_per_status_and_queue(s: &dyn Store) {
    assert_eq!(s.counts().await.unwrap().total, [0; 5]);
    let mut done = Twin::new(s, "default", 0, 1).await;
    let mut failed = Twin::new(s, "default", 0, 2).await;
    let mut running = Twin::new(s, "default", 0, 3).await;
    let mut cancelled = Twin::new(s, "other", 0, 4).await;
    let mut retried = Twin::new(s, "other", 0, 5).await;
    Twin::new(s, "gpu", 0, 6).await;
    done.claim(&["default"], 10, 100).await;
    done.complete(None, "r", 11).await.unwrap();
    failed.claim(&["default"], 12, 100).await;
    failed.fail(None, "x", false, 3, 13).await.unwrap();
    running.claim(&["default"], 14, 100).await;
    cancelled.cancel(false, 15).await.unwrap();
    retried.claim(&["other"], 16, 100).await;
    retried.fail(None, "x", true, 3, 17).await.unwrap();
    let counts = s.counts().await.unwrap();
    let (p, r, c, f, x) = (
        Status::Pending.index(),
        Status::Running.index(),
        Status::Completed.index(),
        Status::Failed.index(),
        Status::Cancelled.index(),
    );
    let mut total = [0; 5];
    (total[p], total[r], total[c], total[f], total[x]) = (2, 1, 1, 1, 1);
    assert_eq!(counts.total, total);
    let mut default = [0; 5];
    (default[r], default[c], default[f]) = (1, 1, 1);
    assert_eq!(counts.queues["default"], default);
    let mut other = [0; 5];
    (other[p], other[x]) = (1, 1);
    assert_eq!(counts.queues["other"], other);
    assert_eq!(counts.queues["gpu"][p], 1);
    assert_eq!(counts.queues.len(), 3);
    assert_eq!(s.pending_count(), 2);
}

async fn list_filters_newest_first(s: &dyn Store) {
    let mut t = Vec::new();
    for (i, queue) in ["a", "a", "b", "a", "b"].iter().enumerate() {
        t.push(Twin::new(s, queue, 0, 10 + i as i64).await);
    }
    t[0].claim(&["a"], 20, 100).await;
    t[0].complete(None, "done", 21).await.unwrap();
    t[2].claim(&["b"], 22, 100).await;
    t[2].fail(None, "x", false, 3, 23).await.unwrap();
    let id = |i: usize| t[i].id();
    assert_eq!(
        list(s, None, None, 10).await,
        vec![id(4), id(3), id(2), id(1), id(0)],
        "newest first"
    );
    assert_eq!(list(s, None, None, 2).await, vec![id(4), id(3)]);
    assert_eq!(list(s, None, Some("b"), 10).await, vec![id(4), id(2)]);
    assert_eq!(
        list(s, Some(Status::Completed), None, 10).await,
        vec![id(0)]
    );
    assert_eq!(
        list(s, Some(Status::Pending), Some("a"), 10).await,
        vec![id(3), id(1)]
    );
    assert_eq!(
        list(s, Some(Status::Pending), Some("a"), 1).await,
        vec![id(3)]
    );
    assert_eq!(
        list(s, Some(Status::Failed), Some("a"), 10).await,
        Vec::<JobId>::new()
    );
    assert_eq!(
        list(s, Some(Status::Running), None, 10).await,
        Vec::<JobId>::new()
    );
    // The entries are the jobs as they stand.
    let done = s
        .list(&ListFilter {
            status: Some(Status::Completed),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    t[0].agrees(&done[0], "list");
}

async fn peek_shows_the_next_job_without_taking_it(s: &dyn Store) {
    assert!(s.peek(&[q("default")]).await.unwrap().is_none());
    let low = Twin::new(s, "default", 0, 3).await;
    let mut high = Twin::new(s, "default", 5, 4).await;
    let other = Twin::new(s, "q2", 0, 5).await;
    for _ in 0..2 {
        let j = s.peek(&[q("default")]).await.unwrap().expect("a job");
        high.agrees(&j, "peek");
    }
    high.verify("after peek").await;
    assert_eq!(s.pending_count(), 3);
    high.claim(&["default"], 10, 100).await;
    let next = s.peek(&[q("default")]).await.unwrap().unwrap();
    low.agrees(&next, "peek");
    let next = s.peek(&[q("empty"), q("q2")]).await.unwrap().unwrap();
    other.agrees(&next, "peek");
    assert!(s.peek(&[q("empty")]).await.unwrap().is_none());
}

async fn max_pending_refuses_inserts_beyond_it(s: &dyn Store) {
    let first = keyed("k1", 7, 1);
    insert(s, first.clone()).await;
    assert_eq!(s.pending_count(), 1);
    assert!(matches!(
        s.insert(new_job("default", 0, 2), 1).await,
        Err(Error::QueueFull(1))
    ));
    // A repeat of a stored submission attaches even when full.
    assert!(matches!(
        s.insert(resubmitted(&first), 1).await.unwrap(),
        Inserted::Existing(_)
    ));
    assert_eq!(list(s, None, None, 10).await.len(), 1, "nothing stored");
    // Only pending jobs count: once it runs, there is room again.
    s.claim(&claim_params(&["default"], 10, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.pending_count(), 0);
    assert!(matches!(
        s.insert(new_job("other", 0, 3), 1).await.unwrap(),
        Inserted::Created(_)
    ));
    assert!(matches!(
        s.insert(new_job("default", 0, 4), 1).await,
        Err(Error::QueueFull(1))
    ));
    assert!(matches!(
        s.insert(new_job("default", 0, 4), 2).await.unwrap(),
        Inserted::Created(_)
    ));
}

async fn get_reports_position_while_pending(s: &dyn Store) {
    assert!(s.get(JobId::new()).await.unwrap().is_none());
    let first = insert(s, new_job("default", 0, 1)).await;
    let low = insert(s, new_job("default", 0, 3)).await;
    let high = insert(s, new_job("default", 5, 4)).await;
    let other = insert(s, new_job("other", 9, 5)).await;
    let pos = |id| async move { s.get(id).await.unwrap().unwrap().position };
    assert_eq!(pos(high).await, Some(0));
    assert_eq!(pos(first).await, Some(1));
    assert_eq!(pos(low).await, Some(2), "behind `high` and `first`");
    assert_eq!(pos(other).await, Some(0), "positions count within a queue");
    let c = s
        .claim(&claim_params(&["default"], 10, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, high);
    assert_eq!(pos(high).await, None, "running");
    assert_eq!(pos(low).await, Some(1));
    s.cancel(first, false, Timestamp(11)).await.unwrap();
    assert_eq!(pos(first).await, None, "ended");
    assert_eq!(pos(low).await, Some(0));
}

async fn concurrent_claims_never_share_a_job(s: &dyn Store) {
    const JOBS: usize = 200;
    for i in 0..JOBS {
        insert(s, new_job("default", (i % 3) as i32, i as i64)).await;
    }
    let claimers = (0..8).map(|_| claim_until_empty(s, "default"));
    let mut seen = HashSet::new();
    for mine in futures_util::future::join_all(claimers).await {
        for id in mine {
            assert!(seen.insert(id), "job {id} handed out twice");
        }
    }
    assert_eq!(seen.len(), JOBS);
    assert_eq!(s.pending_count(), 0);
    assert_eq!(
        s.rescue_expired(Timestamp(i64::MAX), 3)
            .await
            .unwrap()
            .len(),
        JOBS
    );
}

// ---- restarts ----

async fn reopen_keeps_every_job(s: TestStore) -> TestStore {
    let st = &*s;
    let low = Twin::new(st, "default", 0, 1).await;
    let high = Twin::new(st, "default", 5, 2).await;
    let first = keyed("k1", 7, 3);
    let mut keyed_job = Twin::insert(
        st,
        NewJob {
            queue: q("done"),
            ..first.clone()
        },
    )
    .await;
    keyed_job.claim(&["done"], 10, 1000).await;
    keyed_job.complete(None, "result", 11).await.unwrap();
    let mut failed = Twin::new(st, "failed", 0, 4).await;
    failed.claim(&["failed"], 12, 1000).await;
    failed
        .fail(None, "worker error", false, 3, 13)
        .await
        .unwrap();
    let mut cancelled = Twin::new(st, "cancelled", 0, 5).await;
    cancelled.cancel(false, 14).await.unwrap();
    let mut retried = Twin::new(st, "retried", 0, 6).await;
    retried.claim(&["retried"], 15, 1000).await;
    retried.fail(None, "transient", true, 3, 16).await.unwrap();
    let mut running = Twin::new(st, "running", 0, 7).await;
    running.claim(&["running"], 17, 1000).await;
    // Running too, on its last attempt.
    let mut spent = Twin::new(st, "spent", 0, 8).await;
    for attempt in 1..MAX_ATTEMPTS {
        spent.claim(&["spent"], 20, 1000).await;
        spent
            .fail(None, "again", true, MAX_ATTEMPTS, 21)
            .await
            .unwrap();
        assert_eq!(spent.job().attempts, attempt);
    }
    spent.claim(&["spent"], 22, 1000).await;
    let kept: Vec<Job> = [&low, &high, &keyed_job, &failed, &cancelled, &retried]
        .iter()
        .map(|t| t.job().clone())
        .collect();
    let running = [running.job().clone(), spent.job().clone()];

    let s = s.reopen().await;
    for want in &kept {
        let got = s
            .get(want.id)
            .await
            .unwrap()
            .expect("kept across the reopen");
        assert_same_job(&got.job, want, "reopen");
    }
    // Pending jobs keep their order.
    assert_eq!(
        s.peek(&[q("default")]).await.unwrap().unwrap().id,
        kept[1].id
    );
    assert_eq!(s.get(kept[0].id).await.unwrap().unwrap().position, Some(1));
    // Jobs running at the restart: a backend that ends leases at a restart
    // (the embedded store) applies `Job::recover_after_restart` (at its own
    // clock); one that keeps them (a shared database) changes nothing.
    let mut back = 0;
    for want in &running {
        let got = s.get(want.id).await.unwrap().unwrap().job;
        let mut model = want.clone();
        if got.status != Status::Running {
            let now = got.ended_at.unwrap_or_default();
            model
                .recover_after_restart(now, MAX_ATTEMPTS)
                .expect("it was running");
            back += u64::from(model.status == Status::Pending);
        }
        assert_same_job(&got, &model, "restart");
    }
    assert_eq!(s.pending_count(), 3 + back);
    // The idempotency key still attaches.
    let Inserted::Existing(j) = s
        .insert(
            NewJob {
                queue: q("done"),
                ..resubmitted(&first)
            },
            u64::MAX,
        )
        .await
        .unwrap()
    else {
        panic!("the key was forgotten across the reopen");
    };
    assert_eq!(j.id, kept[2].id);
    s
}

// ---- ended jobs (the embedded store keeps only a compact record of them
// once their final write is committed, and reads the rest back) ----

/// Three ended jobs: completed under an idempotency key, failed after a
/// retry (with its error), cancelled while running; then another job and a
/// maintenance pass that purges nothing, by which a store that moves ended
/// jobs to disk (the embedded one) has moved them.
async fn three_ended(s: &dyn Store) -> (NewJob, [Twin<'_>; 3]) {
    let first = keyed("ended-key", 9, 1);
    let mut done = Twin::insert(s, first.clone()).await;
    done.claim(&["default"], 10, 1000).await;
    let lease = done.lease();
    done.complete(Some(lease), "{\"r\":1}", 11).await.unwrap();
    let mut failed = Twin::new(s, "other", 0, 2).await;
    failed.claim(&["other"], 12, 1000).await;
    failed.fail(None, "first", true, 3, 13).await.unwrap();
    failed.claim(&["other"], 14, 1000).await;
    failed.fail(None, "last", false, 3, 15).await.unwrap();
    let mut cancelled = Twin::new(s, "default", 0, 3).await;
    cancelled.claim(&["default"], 16, 1000).await;
    cancelled.cancel(false, 17).await.unwrap();
    insert(s, new_job("later", 0, 4)).await;
    let day = Duration::from_secs(86_400);
    assert_eq!(s.purge_expired(day, Timestamp(20)).await.unwrap(), 0);
    (first, [done, failed, cancelled])
}

/// Every read of an ended job gives it whole (result, error, timestamps,
/// attempts, lease): `get`, `list`, an idempotent attach, a repeated
/// complete; refusals are the ones `job.rs` gives.
async fn read_back_whole(s: &dyn Store, first: &NewJob, twins: &mut [Twin<'_>; 3]) {
    for t in twins.iter() {
        t.verify("ended, read back").await;
    }
    let listed = s
        .list(&ListFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 4);
    for t in twins.iter() {
        let got = listed.iter().find(|j| j.id == t.id()).expect("listed");
        t.agrees(got, "list");
    }
    assert_eq!(
        ids(&listed[1..]),
        vec![twins[2].id(), twins[1].id(), twins[0].id()],
        "newest first"
    );
    let failed = s
        .list(&ListFilter {
            status: Some(Status::Failed),
            queue: Some(q("other")),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    twins[1].agrees(&failed[0], "list failed");
    let Inserted::Existing(j) = s.insert(resubmitted(first), u64::MAX).await.unwrap() else {
        panic!("the key of an ended job no longer attaches");
    };
    twins[0].agrees(&j, "attach");
    let mut other = resubmitted(first);
    other.idempotency.as_mut().unwrap().fingerprint = [1; 32];
    assert!(matches!(
        s.insert(other, u64::MAX).await,
        Err(Error::IdempotencyMismatch)
    ));
    let [done, failed, cancelled] = twins;
    let lease = done.lease();
    assert_eq!(
        done.complete(Some(lease), "other", 30).await,
        Ok(Completion::AlreadyCompleted)
    );
    assert_eq!(
        done.complete(None, "{\"r\":1}", 31).await,
        Ok(Completion::AlreadyCompleted)
    );
    assert_eq!(
        done.complete(None, "other", 32).await,
        Err(TransitionError::NotRunning(Status::Completed))
    );
    assert_eq!(
        done.complete(Some(LeaseId::new()), "x", 33).await,
        Err(TransitionError::StaleLease)
    );
    assert_eq!(
        failed.complete(Some(failed.lease()), "x", 34).await,
        Err(TransitionError::NotRunning(Status::Failed))
    );
    assert_eq!(
        failed.heartbeat(None, 2000).await,
        Err(TransitionError::NotRunning(Status::Failed))
    );
    assert_eq!(
        cancelled.fail(None, "x", true, 3, 35).await,
        Err(TransitionError::NotRunning(Status::Cancelled))
    );
    assert_eq!(
        cancelled.release(cancelled.lease()).await,
        Err(TransitionError::NotRunning(Status::Cancelled))
    );
    assert_eq!(
        done.cancel(false, 36).await,
        Err(TransitionError::AlreadyEnded(Status::Completed))
    );
    assert_eq!(
        done.cancel(true, 37).await,
        Err(TransitionError::NotPending(Status::Completed))
    );
    let counts = s.counts().await.unwrap();
    let mut total = [0; 5];
    total[Status::Pending.index()] = 1;
    total[Status::Completed.index()] = 1;
    total[Status::Failed.index()] = 1;
    total[Status::Cancelled.index()] = 1;
    assert_eq!(counts.total, total);
}

async fn ended_jobs_are_read_back_whole(s: &dyn Store) {
    let (first, mut twins) = three_ended(s).await;
    read_back_whole(s, &first, &mut twins).await;
    // Forgetting them frees the key.
    purge(
        s,
        &mut twins.iter_mut().collect::<Vec<_>>(),
        Duration::ZERO,
        100,
    )
    .await;
    assert!(matches!(
        s.insert(resubmitted(&first), u64::MAX).await.unwrap(),
        Inserted::Created(_)
    ));
}

async fn ended_jobs_are_read_back_whole_after_a_reopen(s: TestStore) -> TestStore {
    let (first, twins) = three_ended(&*s).await;
    let models: Vec<Job> = twins.iter().map(|t| t.job().clone()).collect();
    let s = s.reopen().await;
    let mut twins = twins_of(&*s, models);
    read_back_whole(&*s, &first, &mut twins).await;
    s
}

/// Twins of jobs already in a store (reopened).
fn twins_of(s: &dyn Store, models: Vec<Job>) -> [Twin<'_>; 3] {
    let twins: Vec<Twin<'_>> = models
        .into_iter()
        .map(|model| Twin {
            s,
            model,
            gone: false,
        })
        .collect();
    twins.try_into().unwrap_or_else(|_| panic!("three jobs"))
}
