//! Micro-benchmarks of the broker core: what one job costs in the broker and
//! its store, without HTTP (the HTTP side is measured end to end by
//! `scripts/bench.sh`). Run with `cargo bench --bench broker`; part of
//! `scripts/bench-suite.sh`.
//!
//! - `cycle/*`: submit, hand-out and complete of one job through the broker,
//!   on the memory store and on the embedded store with `--sync normal`
//!   (committed to the WAL, not synced: the store's CPU, not the disk's
//!   fsync latency). `cycle/memory-100k-pending` is the same with 100,000
//!   jobs pending in another queue (the cost must not grow with the backlog).
//! - `fused/memory`: complete-and-take-next, the worker's one request per job.
//! - `encode/handout`: rendering a poll answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use jobq::broker::{Broker, BrokerConfig, CompleteRequest, Finish, PollRequest, SubmitRequest};
use jobq::job::Queue;
use jobq::store::embedded::EmbeddedStore;
use jobq::store::memory::MemoryStore;
use jobq::store::{Store, SyncMode};

fn submit(queue: Option<&str>) -> SubmitRequest {
    SubmitRequest {
        queue: queue.map(|q| Queue::parse(q).expect("a valid queue name")),
        payload: Bytes::from_static(&[b'x'; 100]),
        headers: Bytes::from_static(b"{}"),
        priority: None,
        idempotency_key: None,
    }
}

fn now() -> PollRequest {
    PollRequest {
        queues: Vec::new(),
        wait: Duration::ZERO,
    }
}

/// Submit, take and complete one job.
async fn cycle(broker: &Broker) {
    let job = broker.enqueue(submit(None)).await.expect("submitted");
    let taken = broker.poll(now()).await.expect("polled").expect("a job");
    debug_assert_eq!(taken.id, job.id);
    broker
        .complete(CompleteRequest {
            id: taken.id,
            lease: taken.lease_id,
            result: Bytes::from_static(b"{\"ok\":true}"),
        })
        .await
        .expect("completed");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn broker_on(store: Arc<dyn Store>) -> Broker {
    Broker::new(store, BrokerConfig::new())
}

fn cycles(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("cycle");

    let memory = broker_on(Arc::new(MemoryStore::new()));
    g.bench_function("memory", |b| b.to_async(&rt).iter(|| cycle(&memory)));

    let dir = tempfile::tempdir().expect("a temp dir");
    let embedded = rt.block_on(async {
        broker_on(Arc::new(
            EmbeddedStore::open(dir.path(), SyncMode::Normal, 3).expect("the store opens"),
        ))
    });
    g.bench_function("embedded-normal", |b| {
        b.to_async(&rt).iter(|| cycle(&embedded))
    });

    let backlog = broker_on(Arc::new(MemoryStore::new()));
    rt.block_on(async {
        for _ in 0..100_000 {
            backlog
                .enqueue(submit(Some("backlog")))
                .await
                .expect("submitted");
        }
    });
    g.bench_function("memory-100k-pending", |b| {
        b.to_async(&rt).iter(|| cycle(&backlog))
    });
    g.finish();
    rt.block_on(async {
        embedded.close().await.expect("closed");
    });
}

fn fused(c: &mut Criterion) {
    let rt = runtime();
    let broker = broker_on(Arc::new(MemoryStore::new()));
    // One job always running: each iteration submits the next, then
    // completes the running one and takes the next in one call.
    let mut running = rt.block_on(async {
        broker.enqueue(submit(None)).await.expect("submitted");
        broker.poll(now()).await.expect("polled").expect("a job")
    });
    c.bench_function("fused/memory", |b| {
        b.iter(|| {
            rt.block_on(async {
                broker.enqueue(submit(None)).await.expect("submitted");
                let (_, mut next) = broker
                    .finish_and_next(
                        Finish::Complete(CompleteRequest {
                            id: running.id,
                            lease: running.lease_id,
                            result: Bytes::from_static(b"{}"),
                        }),
                        now(),
                        1,
                    )
                    .await
                    .expect("completed and took the next");
                running = next.pop().expect("the next job");
            })
        })
    });
}

fn encode(c: &mut Criterion) {
    let rt = runtime();
    let broker = broker_on(Arc::new(MemoryStore::new()));
    let job = rt.block_on(async {
        broker.enqueue(submit(None)).await.expect("submitted");
        broker.poll(now()).await.expect("polled").expect("a job")
    });
    c.bench_function("encode/handout", |b| {
        b.iter_batched(|| &job, jobq::api::encode::handout, BatchSize::SmallInput)
    });
}

criterion_group!(benches, cycles, fused, encode);
criterion_main!(benches);
