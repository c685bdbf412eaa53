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
use jobq::job::Timestamp;
use jobq::store::{CompleteParams, Store, StoreEvent};

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
