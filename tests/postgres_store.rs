//! The PostgreSQL store against the storage seam directly, in what only a
//! shared database has: concurrent migrations, exclusive hand-out between
//! two stores, notifications between stores, and the bounded pool. The
//! rules every store follows are checked in `store_conformance.rs`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::postgres::{available, TestDb};
use common::stores::{self, claim_params, claim_until_empty, insert, new_job};
use jobq::job::{Completion, LeaseId, Status, Timestamp, TransitionError};
use jobq::store::{CompleteParams, Error, Inserted, Store, StoreEvent};

/// A store on the PostgreSQL database at `url`.
async fn pg_store(url: &str, pool_size: usize) -> Arc<dyn Store> {
    stores::open(&stores::postgres_backend(url, pool_size)).await
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
                jobq::store::open(&stores::postgres_backend(&url, 2))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for o in opens {
        o.await.unwrap().expect("every node starts");
    }
    // Each migration of the binary (migrations/postgres/) applied exactly once.
    let known = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        db.scalar("select count(*) from jobq_schema_migrations")
            .await,
        known
    );
    // Schema 3: keys are unique through a partial index (jobs without a key
    // take no entry in it), not the column's full unique constraint.
    assert_eq!(
        db.scalar(
            "select count(*) from pg_indexes where tablename = 'jobq_jobs' \
             and indexname = 'jobq_jobs_idem_key' and indexdef like '%WHERE (idem_key IS NOT NULL)'"
        )
        .await,
        1
    );
    assert_eq!(
        db.scalar("select count(*) from pg_constraint where conname = 'jobq_jobs_idem_key_key'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_two_stores_never_share_a_job() {
    if !available("concurrent_claims_on_two_stores_never_share_a_job").await {
        return;
    }
    const JOBS: usize = 300;
    let db = TestDb::create().await;
    let a = pg_store(&db.url, 4).await;
    let b = pg_store(&db.url, 4).await;
    for i in 0..JOBS {
        insert(&*a, new_job("default", (i % 3) as i32, i as i64)).await;
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            claim_until_empty(&*s, "default").await
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
    let a = pg_store(&db.url, 2).await;
    let b = pg_store(&db.url, 2).await;
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
    let a = pg_store(&url, 2).await;
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
    let b = pg_store(&db.url, 2).await;
    b.clear(None, Timestamp(1)).await.unwrap();
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(5)).await,
        Some(StoreEvent::Cleared)
    );
}

/// What one concurrent complete must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Completed,
    Stale,
    /// One of two completes under the same lease: one applies, the other
    /// is the idempotent repeat.
    Twice,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_claims_and_completes_each_get_their_own_answer() {
    if !available("concurrent_submits_claims_and_completes_each_get_their_own_answer").await {
        return;
    }
    const JOBS: usize = 120;
    let db = TestDb::create().await;
    let s = pg_store(&db.url, 4).await;
    // Submits at once share statements; each gets its own job back.
    let inserts: Vec<_> = (0..JOBS)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { insert(&*s, new_job("default", 0, i as i64)).await })
        })
        .collect();
    let mut submitted = HashSet::new();
    for t in inserts {
        assert!(submitted.insert(t.await.unwrap()));
    }
    // Claims at once: every job handed out once, each under its caller's lease.
    let claims: Vec<_> = (0..JOBS)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let p = claim_params(&["default"], 10, i64::MAX);
                let c = s.claim(&p).await.unwrap().expect("a job for every claim");
                assert_eq!(c.job.lease_id, Some(p.lease_id), "the caller's own lease");
                assert_eq!(c.job.attempts, 1);
                c.job
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for t in claims {
        claimed.push(t.await.unwrap());
    }
    let handed: HashSet<_> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(handed, submitted, "each job handed out exactly once");

    // Completes at once, a quarter each: right lease, stale lease, no
    // lease, and two under the same lease.
    let mut calls = Vec::new();
    for (i, job) in claimed.iter().enumerate() {
        let lease = job.lease_id.unwrap();
        let (want, leases): (Want, Vec<Option<LeaseId>>) = match i % 4 {
            0 => (Want::Completed, vec![Some(lease)]),
            1 => (Want::Stale, vec![Some(LeaseId::new())]),
            2 => (Want::Completed, vec![None]),
            _ => (Want::Twice, vec![Some(lease), Some(lease)]),
        };
        for (k, l) in leases.into_iter().enumerate() {
            let (s, id) = (s.clone(), job.id);
            calls.push((
                i,
                want,
                tokio::spawn(async move {
                    s.complete(&CompleteParams {
                        id,
                        lease_id: l,
                        result: Bytes::from(format!("r{i}.{k}")),
                        now: Timestamp(20),
                    })
                    .await
                }),
            ));
        }
    }
    let mut applied: Vec<Vec<String>> = vec![Vec::new(); JOBS];
    let mut repeats = vec![0; JOBS];
    for (i, want, call) in calls {
        match (want, call.await.unwrap()) {
            (Want::Completed | Want::Twice, Ok((job, Completion::Completed))) => {
                assert_eq!(job.id, claimed[i].id, "the caller's own job");
                assert_eq!(job.status, Status::Completed);
                applied[i].push(String::from_utf8(job.result.unwrap().to_vec()).unwrap());
            }
            (Want::Twice, Ok((job, Completion::AlreadyCompleted))) => {
                assert_eq!(job.id, claimed[i].id);
                repeats[i] += 1;
            }
            (Want::Stale, Err(Error::Transition(TransitionError::StaleLease))) => {}
            (want, got) => panic!("job {i}: wanted {want:?}, got {got:?}"),
        }
    }
    for (i, job) in claimed.iter().enumerate() {
        let stored = s.get(job.id).await.unwrap().unwrap().job;
        if i % 4 == 1 {
            assert_eq!(
                stored.status,
                Status::Running,
                "a stale complete changed job {i}"
            );
            assert_eq!(stored.lease_id, job.lease_id);
            continue;
        }
        assert_eq!(applied[i].len(), 1, "job {i} completed once");
        assert_eq!(repeats[i], usize::from(i % 4 == 3), "job {i}");
        assert_eq!(stored.status, Status::Completed);
        assert_eq!(
            stored.result.as_deref(),
            Some(applied[i][0].as_bytes()),
            "the result of the complete that applied"
        );
    }
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_fails_does_not_fail_the_others_of_its_batch() {
    if !available("a_row_that_fails_does_not_fail_the_others_of_its_batch").await {
        return;
    }
    let db = TestDb::create().await;
    let s = pg_store(&db.url, 4).await;
    let taken = insert(&*s, new_job("default", 0, 0)).await;
    // Submits at once, one of them with an id already stored (the primary
    // key refuses it, and with it the statement it shares with the others).
    let calls: Vec<_> = (0..60)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut job = new_job("default", 0, i);
                if i == 30 {
                    job.id = taken;
                }
                (i, s.insert(job, u64::MAX).await)
            })
        })
        .collect();
    for c in calls {
        match c.await.unwrap() {
            (30, r) => assert!(
                matches!(r, Err(Error::Unavailable(_))),
                "the duplicate id is refused: {r:?}"
            ),
            (i, r) => assert!(matches!(r, Ok(Inserted::Created(_))), "submit {i}: {r:?}"),
        }
    }
    assert_eq!(db.scalar("select count(*) from jobq_jobs").await, 60);
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_and_claim_is_one_transaction() {
    if !available("complete_and_claim_is_one_transaction").await {
        return;
    }
    let db = TestDb::create().await;
    let s = pg_store(&db.url, 4).await;
    let first = insert(&*s, new_job("default", 0, 1)).await;
    let second = insert(&*s, new_job("default", 0, 2)).await;
    let lease = s
        .claim(&claim_params(&["default"], 5, i64::MAX))
        .await
        .unwrap()
        .unwrap()
        .job
        .lease_id;
    let done = CompleteParams {
        id: first,
        lease_id: lease,
        result: Bytes::from_static(b"ok"),
        now: Timestamp(10),
    };
    // Every hand-out refused by the database: the complete made in the
    // same transaction is rolled back with it.
    db.execute(
        "create function no_hand_outs() returns trigger language plpgsql as $$ begin \
         if old.status = 'pending' and new.status = 'running' then \
         raise exception 'no hand-outs'; end if; return new; end $$; \
         create trigger no_hand_outs before update on jobq_jobs \
         for each row execute function no_hand_outs()",
    )
    .await;
    let r = s
        .complete_and_claim(&done, &claim_params(&["default"], 10, i64::MAX))
        .await;
    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
    let status = |id| {
        let s = s.clone();
        async move { s.get(id).await.unwrap().unwrap().job.status }
    };
    assert_eq!(status(first).await, Status::Running, "complete rolled back");
    assert_eq!(status(second).await, Status::Pending);
    db.execute("drop trigger no_hand_outs on jobq_jobs").await;
    let ((job, how), next) = s
        .complete_and_claim(&done, &claim_params(&["default"], 11, i64::MAX))
        .await
        .unwrap();
    assert_eq!(
        (job.status, how),
        (Status::Completed, Completion::Completed)
    );
    assert_eq!(next.unwrap().unwrap().job.id, second);
    s.close().await.unwrap();
}
