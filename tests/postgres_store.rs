//! The PostgreSQL store against the storage seam directly: every transition
//! rule of `job.rs` is checked on the in-memory reference store and on
//! PostgreSQL with the same assertions (so the SQL mirrors the rules), plus
//! what only a shared database has: concurrent migrations, exclusive
//! hand-out under concurrency, notifications between two stores, and the
//! bounded pool.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::postgres::{available, TestDb};
use jobq::job::{
    Completion, Idempotency, JobId, LeaseId, NewJob, Queue, Status, Timestamp, TransitionError,
};
use jobq::store::{
    self, Backend, ClaimParams, CompleteParams, Error, FailParams, Inserted, ListFilter, Store,
    StoreEvent,
};

fn q(name: &str) -> Queue {
    Queue::parse(name).unwrap()
}

fn new_job(queue: &str, priority: i32, created: i64) -> NewJob {
    NewJob {
        id: JobId::new(),
        queue: q(queue),
        payload: Bytes::from(format!("payload-{created}")),
        headers: Bytes::from_static(br#"{"x-test":"1"}"#),
        priority,
        created_at: Timestamp(created),
        idempotency: None,
    }
}

async fn insert(s: &dyn Store, job: NewJob) -> JobId {
    match s.insert(job, u64::MAX).await.unwrap() {
        Inserted::Created(j) => j.id,
        Inserted::Existing(_) => panic!("expected a new job"),
    }
}

fn claim_params(queues: &[&str], now: i64, expires: i64) -> ClaimParams {
    ClaimParams {
        queues: queues.iter().map(|n| q(n)).collect(),
        lease_id: LeaseId::new(),
        now: Timestamp(now),
        expires_at: Timestamp(expires),
    }
}

fn transition(e: Error) -> TransitionError {
    match e {
        Error::Transition(t) => t,
        other => panic!("expected a transition error, got {other:?}"),
    }
}

/// The conformance checks, in one fresh store.
async fn exercise(s: Arc<dyn Store>) {
    let s = &*s;

    // Insert and idempotency.
    let mut keyed = new_job("default", 0, 1);
    keyed.idempotency = Some(Idempotency {
        key: "k1".into(),
        fingerprint: [7; 32],
    });
    let first = insert(s, keyed.clone()).await;
    let mut again = keyed.clone();
    again.id = JobId::new();
    match s.insert(again.clone(), u64::MAX).await.unwrap() {
        Inserted::Existing(j) => {
            assert_eq!(j.id, first);
            assert_eq!(j.payload, keyed.payload);
            assert_eq!(j.headers, keyed.headers);
        }
        Inserted::Created(_) => panic!("idempotency key ignored"),
    }
    again.idempotency.as_mut().unwrap().fingerprint = [8; 32];
    assert!(matches!(
        s.insert(again, u64::MAX).await,
        Err(Error::IdempotencyMismatch)
    ));
    assert_eq!(s.pending_count(), 1);
    assert!(matches!(
        s.insert(new_job("default", 0, 2), 1).await,
        Err(Error::QueueFull(1))
    ));

    // Hand-out order: priority first, then age; queue preference.
    let low = insert(s, new_job("default", 0, 3)).await;
    let high = insert(s, new_job("default", 5, 4)).await;
    let other = insert(s, new_job("other", 9, 5)).await;
    assert_eq!(s.peek(&[q("default")]).await.unwrap().unwrap().id, high);
    let pos = s.get(low).await.unwrap().unwrap().position;
    assert_eq!(pos, Some(2), "behind `high` and `first`");
    let c = s
        .claim(&claim_params(&["default", "other"], 10, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, high);
    assert!(c.more_pending);
    assert_eq!(c.job.status, Status::Running);
    assert_eq!(c.job.attempts, 1);
    assert_eq!(c.job.started_at, Some(Timestamp(10)));
    assert_eq!(c.job.lease_expires_at, Some(Timestamp(100)));
    let high_lease = c.job.lease_id.unwrap();
    assert_eq!(s.get(high).await.unwrap().unwrap().position, None);
    let c = s
        .claim(&claim_params(&["nothing", "other"], 11, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, other);
    assert!(!c.more_pending);
    let other_lease = c.job.lease_id.unwrap();
    assert!(s
        .claim(&claim_params(&["nothing"], 11, 100))
        .await
        .unwrap()
        .is_none());

    // Complete: fencing, idempotent repeat, refusals.
    let ok = Bytes::from_static(b"ok");
    let stale = CompleteParams {
        id: high,
        lease_id: Some(LeaseId::new()),
        result: ok.clone(),
        now: Timestamp(20),
    };
    assert_eq!(
        transition(s.complete(&stale).await.unwrap_err()),
        TransitionError::StaleLease
    );
    let good = CompleteParams {
        lease_id: Some(high_lease),
        ..stale.clone()
    };
    let (job, how) = s.complete(&good).await.unwrap();
    assert_eq!(how, Completion::Completed);
    assert_eq!(job.status, Status::Completed);
    assert_eq!(job.result.as_deref(), Some(&b"ok"[..]));
    assert_eq!(job.ended_at, Some(Timestamp(20)));
    assert_eq!(job.lease_expires_at, None);
    let (_, how) = s.complete(&good).await.unwrap();
    assert_eq!(how, Completion::AlreadyCompleted);
    let no_lease_same = CompleteParams {
        lease_id: None,
        ..good.clone()
    };
    assert_eq!(
        s.complete(&no_lease_same).await.unwrap().1,
        Completion::AlreadyCompleted
    );
    let no_lease_other = CompleteParams {
        result: Bytes::from_static(b"other"),
        ..no_lease_same.clone()
    };
    assert_eq!(
        transition(s.complete(&no_lease_other).await.unwrap_err()),
        TransitionError::NotRunning(Status::Completed)
    );
    assert_eq!(
        transition(s.complete(&stale).await.unwrap_err()),
        TransitionError::StaleLease
    );
    let unknown = CompleteParams {
        id: JobId::new(),
        ..good.clone()
    };
    assert!(matches!(s.complete(&unknown).await, Err(Error::NotFound)));
    let pending = CompleteParams {
        id: low,
        lease_id: None,
        ..good.clone()
    };
    assert_eq!(
        transition(s.complete(&pending).await.unwrap_err()),
        TransitionError::NotRunning(Status::Pending)
    );

    // Heartbeat.
    assert_eq!(
        transition(
            s.heartbeat(other, Some(LeaseId::new()), Timestamp(500))
                .await
                .unwrap_err()
        ),
        TransitionError::StaleLease
    );
    let j = s
        .heartbeat(other, Some(other_lease), Timestamp(500))
        .await
        .unwrap();
    assert_eq!(j.lease_expires_at, Some(Timestamp(500)));
    assert_eq!(
        transition(s.heartbeat(low, None, Timestamp(500)).await.unwrap_err()),
        TransitionError::NotRunning(Status::Pending)
    );

    // Fail: retry while attempts remain, then failed.
    let fail = |lease| FailParams {
        id: other,
        lease_id: Some(lease),
        error: "boom".into(),
        retry: true,
        max_attempts: 2,
        now: Timestamp(30),
    };
    let j = s.fail(&fail(other_lease)).await.unwrap();
    assert_eq!(j.status, Status::Pending);
    assert_eq!(j.error.as_deref(), Some("boom"));
    assert_eq!(j.ended_at, None);
    assert_eq!(j.lease_expires_at, None);
    assert_eq!(
        transition(s.fail(&fail(other_lease)).await.unwrap_err()),
        TransitionError::NotRunning(Status::Pending)
    );
    let c = s
        .claim(&claim_params(&["other"], 31, 40))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.job.id, c.job.attempts), (other, 2));
    assert_eq!(
        transition(s.fail(&fail(other_lease)).await.unwrap_err()),
        TransitionError::StaleLease
    );
    let j = s.fail(&fail(c.job.lease_id.unwrap())).await.unwrap();
    assert_eq!(j.status, Status::Failed);
    assert_eq!(j.ended_at, Some(Timestamp(30)));

    // Lease expiry: back to pending, then failed after max attempts.
    let c = s
        .claim(&claim_params(&["default"], 50, 60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, first);
    assert!(s.rescue_expired(Timestamp(59), 2).await.unwrap().is_empty());
    let rescued = s.rescue_expired(Timestamp(60), 2).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].id, first);
    assert_eq!(rescued[0].status, Status::Pending);
    assert_eq!(rescued[0].lease_expires_at, None);
    let c = s
        .claim(&claim_params(&["default"], 61, 70))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.job.id, c.job.attempts), (first, 2));
    let rescued = s.rescue_expired(Timestamp(80), 2).await.unwrap();
    assert_eq!(rescued[0].status, Status::Failed);
    assert_eq!(rescued[0].ended_at, Some(Timestamp(80)));
    assert_eq!(
        rescued[0].error.as_deref(),
        Some("lease expired without a result after 2 attempt(s)")
    );

    // Cancel.
    let c = s
        .claim(&claim_params(&["default"], 90, 1000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, low);
    assert_eq!(
        transition(s.cancel(low, true, Timestamp(91)).await.unwrap_err()),
        TransitionError::NotPending(Status::Running)
    );
    let j = s.cancel(low, false, Timestamp(91)).await.unwrap();
    assert_eq!(j.status, Status::Cancelled);
    assert_eq!(j.ended_at, Some(Timestamp(91)));
    assert_eq!(
        transition(s.cancel(low, false, Timestamp(92)).await.unwrap_err()),
        TransitionError::AlreadyEnded(Status::Cancelled)
    );
    assert!(matches!(
        s.cancel(JobId::new(), false, Timestamp(92)).await,
        Err(Error::NotFound)
    ));
    let lease = c.job.lease_id.unwrap();
    let late = CompleteParams {
        id: low,
        lease_id: Some(lease),
        result: ok.clone(),
        now: Timestamp(93),
    };
    assert_eq!(
        transition(s.complete(&late).await.unwrap_err()),
        TransitionError::NotRunning(Status::Cancelled)
    );

    // Counts and listing.
    let counts = s.counts().await.unwrap();
    assert_eq!(counts.total[Status::Completed.index()], 1);
    assert_eq!(counts.total[Status::Failed.index()], 2);
    assert_eq!(counts.total[Status::Cancelled.index()], 1);
    assert_eq!(counts.queues["other"][Status::Failed.index()], 1);
    let all = s
        .list(&ListFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<JobId> = all.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![other, high, low, first], "newest first");
    let failed = s
        .list(&ListFilter {
            status: Some(Status::Failed),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, other);
    let by_queue = s
        .list(&ListFilter {
            queue: Some(q("other")),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_queue.len(), 1);

    // Purge after the TTL, counted from the end.
    let ttl = Duration::from_micros(100);
    assert_eq!(s.purge_expired(ttl, Timestamp(120)).await.unwrap(), 1);
    assert!(s.get(high).await.unwrap().is_none());
    assert!(s.get(other).await.unwrap().is_some());

    // Clear: cancels pending and running, forgets ended ones.
    let p1 = insert(s, new_job("default", 0, 200)).await;
    let r1 = insert(s, new_job("default", 0, 201)).await;
    let keep = insert(s, new_job("kept", 0, 202)).await;
    let c = s
        .claim(&claim_params(&["default"], 210, 1000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id, p1);
    let mut cleared = s.clear(Some(&q("default")), Timestamp(220)).await.unwrap();
    cleared.sort();
    let mut expected = vec![p1, r1];
    expected.sort();
    assert_eq!(cleared, expected);
    assert!(s.get(first).await.unwrap().is_none(), "ended job forgotten");
    assert!(s.get(low).await.unwrap().is_none(), "ended job forgotten");
    assert_eq!(
        s.get(p1).await.unwrap().unwrap().job.status,
        Status::Cancelled
    );
    assert_eq!(
        s.get(keep).await.unwrap().unwrap().job.status,
        Status::Pending
    );
    assert!(s.get(other).await.unwrap().is_some(), "other queue kept");
    assert_eq!(s.pending_count(), 1);

    // A key is free again once its job is forgotten.
    let cleared = s.clear(None, Timestamp(230)).await.unwrap();
    assert_eq!(cleared, vec![keep]);
    let mut reuse = keyed.clone();
    reuse.id = JobId::new();
    reuse.idempotency.as_mut().unwrap().fingerprint = [9; 32];
    assert!(matches!(
        s.insert(reuse, u64::MAX).await.unwrap(),
        Inserted::Created(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    exercise(store::open(&Backend::Memory).await.unwrap()).await;
}

async fn pg_store(db: &TestDb, pool_size: usize) -> Arc<dyn Store> {
    store::open(&Backend::Postgres {
        url: db.url.clone(),
        pool_size,
    })
    .await
    .expect("open postgres store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    if !available("postgres_store_conforms").await {
        return;
    }
    let db = TestDb::create().await;
    exercise(pg_store(&db, 4).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    if !available("nodes_starting_together_migrate_once").await {
        return;
    }
    let db = TestDb::create().await;
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move {
                store::open(&Backend::Postgres { url, pool_size: 2 })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for o in opens {
        o.await.unwrap().expect("every node starts");
    }
    assert_eq!(
        db.scalar("select count(*) from jobq_schema_migrations")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_two_stores_never_share_a_job() {
    if !available("concurrent_claims_on_two_stores_never_share_a_job").await {
        return;
    }
    const JOBS: usize = 300;
    let db = TestDb::create().await;
    let a = pg_store(&db, 4).await;
    let b = pg_store(&db, 4).await;
    for i in 0..JOBS {
        insert(&*a, new_job("default", (i % 3) as i32, i as i64)).await;
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(c) = s
                .claim(&claim_params(&["default"], 1, i64::MAX))
                .await
                .unwrap()
            {
                assert_eq!(c.job.attempts, 1);
                mine.push(c.job.id);
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "job {id} handed out twice");
        }
    }
    assert_eq!(seen.len(), JOBS);
    // Rescue on both stores at once: each expired job is rescued once.
    let (ra, rb) = tokio::join!(
        a.rescue_expired(Timestamp(i64::MAX), 3),
        b.rescue_expired(Timestamp(i64::MAX), 3)
    );
    assert_eq!(ra.unwrap().len() + rb.unwrap().len(), JOBS);
    // The pool stays within its bound (4 + the LISTEN connection per store).
    let conns = db
        .scalar("select count(*) from pg_stat_activity where application_name = 'jobq' and datname = current_database()")
        .await;
    assert!(conns <= 10, "{conns} connections for two stores of 4");
}

/// Next event other than the polling fallback's `JobReady`.
async fn next_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<StoreEvent>,
    within: Duration,
) -> Option<StoreEvent> {
    tokio::time::timeout(within, async {
        loop {
            match rx.recv().await? {
                StoreEvent::JobReady(_) => continue,
                ev => return Some(ev),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_stores_hear_of_ended_jobs_and_clears() {
    if !available("other_stores_hear_of_ended_jobs_and_clears").await {
        return;
    }
    let db = TestDb::create().await;
    let a = pg_store(&db, 2).await;
    let b = pg_store(&db, 2).await;
    let mut a_rx = a.subscribe().expect("postgres emits events");
    let mut b_rx = b.subscribe().expect("postgres emits events");
    // Each store says Cleared once its LISTEN is up.
    for rx in [&mut a_rx, &mut b_rx] {
        assert_eq!(
            next_event(rx, Duration::from_secs(10)).await,
            Some(StoreEvent::Cleared)
        );
    }

    // A submit on A wakes B's pollers of that queue. The job is claimed at
    // once, so the fallback pass (which reports queues that still hold
    // pending jobs) cannot be what tells B: only the NOTIFY can.
    let id = insert(&*a, new_job("notified", 0, 1)).await;
    let c = a
        .claim(&claim_params(&["notified"], 2, i64::MAX))
        .await
        .unwrap()
        .unwrap();
    let ready = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(StoreEvent::JobReady(q)) = b_rx.recv().await {
                return q;
            }
        }
    })
    .await
    .expect("B hears of the new job");
    assert_eq!(ready.as_str(), "notified");

    a.complete(&CompleteParams {
        id,
        lease_id: c.job.lease_id,
        result: Bytes::from_static(b"r"),
        now: Timestamp(3),
    })
    .await
    .unwrap();
    // Only NOTIFY carries JobEnded: B hears it, A ignores its own.
    assert_eq!(
        next_event(&mut b_rx, Duration::from_secs(5)).await,
        Some(StoreEvent::JobEnded(id))
    );
    b.clear(None, Timestamp(4)).await.unwrap();
    assert_eq!(
        next_event(&mut a_rx, Duration::from_secs(5)).await,
        Some(StoreEvent::Cleared)
    );
    assert_eq!(
        next_event(&mut a_rx, Duration::from_millis(300)).await,
        None,
        "A's own complete was not echoed back"
    );
    assert!(a.healthy().await);
    a.close().await.unwrap();
    assert!(!a.healthy().await, "a closed store is not healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_dead_listen_connection_is_replaced() {
    if !available("silently_dead_listen_connection_is_replaced").await {
        return;
    }
    let db = TestDb::create().await;
    let Some((proxy, url)) = common::postgres::proxied(&db).await else {
        eprintln!("skipped: JOBQ_TEST_POSTGRES_URL is not a TCP address");
        return;
    };
    let a = store::open(&Backend::Postgres { url, pool_size: 2 })
        .await
        .expect("open through the proxy");
    let mut rx = a.subscribe().unwrap();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(10)).await,
        Some(StoreEvent::Cleared)
    );
    // No reset, no error: only the listener's own check can notice.
    proxy.blackhole();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(40)).await,
        Some(StoreEvent::Cleared),
        "the listener reconnected and told waiters to re-read"
    );
    // The new LISTEN works: another store's change arrives.
    let b = pg_store(&db, 2).await;
    b.clear(None, Timestamp(1)).await.unwrap();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(5)).await,
        Some(StoreEvent::Cleared)
    );
}
