//! The one place that says which [`Backend`] a test runs on: the in-process
//! servers of [`super::TestServer`] and the stores the conformance suite
//! opens directly both get theirs from [`backend`] (or, for a node on a
//! database of its own choosing, [`postgres_backend`]). Also the small
//! factories of store-level tests: queue names, new jobs, claim parameters.

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use jobq::job::{JobId, LeaseId, NewJob, Queue, Timestamp};
use jobq::store::{self, Backend, ClaimParams, Inserted, Store};

use super::postgres::{available, TestDb};
use super::Kind;

/// Something kept alive as long as a store or server that uses it (a
/// temporary data dir, a test database).
pub type Guard = Box<dyn Any + Send>;

/// Connections a test server's PostgreSQL store may open.
pub const SERVER_POOL: usize = 16;

/// Connections a store opened by a store-level test may open.
pub const STORE_POOL: usize = 4;

/// `--max-attempts` of the stores and servers tests open (the embedded store
/// applies it at start-up to jobs that were running).
pub const MAX_ATTEMPTS: u32 = 3;

/// A fresh, empty backend of `kind`, and what must outlive its store.
pub async fn backend(kind: Kind, pool_size: usize) -> (Backend, Vec<Guard>) {
    match kind {
        Kind::Memory => (Backend::Memory, Vec::new()),
        Kind::Embedded => {
            let dir = tempfile::tempdir().expect("temp dir");
            let backend = Backend::Embedded {
                data_dir: dir.path().to_owned(),
                sync: jobq::store::SyncMode::Full,
                max_attempts: MAX_ATTEMPTS,
            };
            (backend, vec![Box::new(dir) as Guard])
        }
        Kind::Postgres => {
            let db = TestDb::create().await;
            let backend = postgres_backend(&db.url, pool_size);
            (backend, vec![Box::new(db) as Guard])
        }
    }
}

/// The backend of a node on the PostgreSQL database at `url` (several
/// nodes may share one).
pub fn postgres_backend(url: &str, pool_size: usize) -> Backend {
    Backend::Postgres {
        url: url.to_owned(),
        pool_size,
    }
}

/// Opens the store of `backend`, failing the test if it cannot.
pub async fn open(backend: &Backend) -> Arc<dyn Store> {
    store::open(backend).await.expect("open store")
}

/// A store of one test's own, opened directly (no server, no broker).
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Where it lives, to open it again.
    backend: Backend,
    /// Dropped after the store (fields drop in order).
    _guards: Vec<Guard>,
}

impl TestStore {
    /// A fresh, empty store of `kind` for `test`; `None` (the test is
    /// skipped, with one line) when PostgreSQL is unreachable outside CI.
    pub async fn open(kind: Kind, test: &str) -> Option<Self> {
        if kind == Kind::Postgres && !available(test).await {
            return None;
        }
        let (backend, guards) = backend(kind, STORE_POOL).await;
        Some(TestStore {
            store: open(&backend).await,
            backend,
            _guards: guards,
        })
    }

    /// Closes the store and opens it again on the same data (a restart;
    /// the memory store comes back empty).
    pub async fn reopen(self) -> Self {
        let TestStore {
            store,
            backend,
            _guards,
        } = self;
        store.close().await.expect("close store");
        assert_eq!(Arc::strong_count(&store), 1, "nothing else holds the store");
        drop(store);
        TestStore {
            store: open(&backend).await,
            backend,
            _guards,
        }
    }

    /// Closes the store (the embedded one stops its log threads) before its
    /// data dir or database goes.
    pub async fn close(self) {
        self.store.close().await.expect("close store");
    }
}

impl std::ops::Deref for TestStore {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

/// A valid queue name.
pub fn q(name: &str) -> Queue {
    Queue::parse(name).unwrap()
}

/// A new job of `queue` with `priority`, submitted at `created` (µs).
pub fn new_job(queue: &str, priority: i32, created: i64) -> NewJob {
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

/// Inserts `job`, which must be stored as a new job; returns its id.
pub async fn insert(s: &dyn Store, job: NewJob) -> JobId {
    match s.insert(job, u64::MAX).await.unwrap() {
        Inserted::Created(j) => j.id,
        Inserted::Existing(_) => panic!("expected a new job"),
    }
}

/// A hand-out from `queues` at `now`, its lease running until `expires`.
pub fn claim_params(queues: &[&str], now: i64, expires: i64) -> ClaimParams {
    ClaimParams {
        queues: queues.iter().map(|n| q(n)).collect(),
        lease_id: LeaseId::new(),
        now: Timestamp(now),
        expires_at: Timestamp(expires),
    }
}

/// Claims from `queue` until nothing is left; every hand-out must be the
/// job's first. Returns the ids handed out.
pub async fn claim_until_empty(s: &dyn Store, queue: &str) -> Vec<JobId> {
    let mut mine = Vec::new();
    while let Some(c) = s.claim(&claim_params(&[queue], 1, i64::MAX)).await.unwrap() {
        assert_eq!(c.job.attempts, 1, "job {} handed out twice", c.job.id);
        mine.push(c.job.id);
    }
    mine
}
