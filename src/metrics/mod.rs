//! Observability figures: the Prometheus families behind `GET /metrics`,
//! and the cumulative totals and latency buckets that the dashboard's
//! per-second ring ([`dash`]) is built from. The broker and the stores call
//! the one-line hooks below at each event of a job's life; nothing here
//! reads the store (the gauges that need counts are set by [`dash::run`]
//! from figures the store already holds).
//!
//! The figures are process-wide, like the default registry of every
//! Prometheus client: a hook called from a store does not need a handle.
//! `--metrics off` turns every hook into one relaxed atomic load.
//! (Names and labels are documented in `docs/metrics.md`.)

pub mod dash;
pub mod http;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::job::{Job, Queue, Status, Timestamp};

/// The `Content-Type` of `GET /metrics` (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Whether the hooks record anything (`--metrics on|off`).
static ENABLED: AtomicBool = AtomicBool::new(true);

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Turns recording on or off for the whole process (`--metrics`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether recording is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn get() -> Option<&'static Metrics> {
    enabled().then(|| &*METRICS)
}

/// A queue name as a label value (a cheap clone of the queue's `Arc`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct QueueName(Queue);

impl EncodeLabelValue for QueueName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.0.as_str())
    }
}

/// `{queue}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    /// The job's queue.
    queue: QueueName,
}

fn q(queue: &Queue) -> QueueLabels {
    QueueLabels {
        queue: QueueName(queue.clone()),
    }
}

/// `{queue, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// The job's queue (`_all` for a clear of every queue).
    queue: QueueName,
    /// Why: see the `*Reason` enums.
    reason: &'static str,
}

/// `{queue, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RescueLabels {
    /// The job's queue.
    queue: QueueName,
    /// What became of the job: `pending` (another attempt) or `failed`.
    outcome: &'static str,
}

/// `{op}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    /// The refused worker call: `complete`, `fail` or `heartbeat`.
    op: &'static str,
}

/// `{outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// How the sync submit was answered.
    outcome: &'static str,
}

/// `{method, route, status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    /// The request method.
    method: &'static str,
    /// The matched route template (`/api/jobs/{id}`), never the raw path.
    route: &'static str,
    /// The answer's status code.
    status: u16,
}

/// `{backend}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    /// `embedded` or `postgres`.
    backend: &'static str,
}

/// Why a job was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// `DELETE /api/jobs/{id}`.
    Client,
    /// Its client went away while it was pending.
    Disconnect,
    /// `DELETE /api/admin/clear`.
    Clear,
}

impl CancelReason {
    fn as_str(self) -> &'static str {
        match self {
            CancelReason::Client => "client",
            CancelReason::Disconnect => "disconnect",
            CancelReason::Clear => "clear",
        }
    }
}

/// Why a submit was answered 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedReason {
    /// `--max-queued` jobs are pending.
    QueueFull,
    /// The server is shutting down.
    ShuttingDown,
}

/// How a sync submit ended for its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// `200`: a result.
    Completed,
    /// `502`: the job failed.
    Failed,
    /// `410`: cancelled or cleared.
    Cancelled,
    /// `202`: the wait ran out.
    Accepted,
    /// An error (`503`, a refusal).
    Error,
}

impl SyncOutcome {
    /// The outcome of a job that ended.
    pub fn of(status: Status) -> Self {
        match status {
            Status::Completed => SyncOutcome::Completed,
            Status::Failed => SyncOutcome::Failed,
            Status::Cancelled => SyncOutcome::Cancelled,
            Status::Pending | Status::Running => SyncOutcome::Accepted,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SyncOutcome::Completed => "completed",
            SyncOutcome::Failed => "failed",
            SyncOutcome::Cancelled => "cancelled",
            SyncOutcome::Accepted => "accepted",
            SyncOutcome::Error => "error",
        }
    }
}

/// Cumulative process-wide totals the dashboard turns into rates.
#[derive(Default, Debug)]
pub struct Totals {
    /// Jobs created by a submit.
    pub submitted: AtomicU64,
    /// Jobs completed by a worker.
    pub completed: AtomicU64,
    /// Jobs failed (by a worker, or out of attempts).
    pub failed: AtomicU64,
    /// Jobs cancelled, for any reason.
    pub cancelled: AtomicU64,
    /// Failures sent back to pending for another attempt.
    pub retried: AtomicU64,
    /// Expired leases the maintenance pass took back.
    pub rescued: AtomicU64,
}

/// Buckets of [`LogBuckets`]: four per doubling from 10 µs, up to ~12 hours.
pub const LOG_BUCKETS: usize = 128;

/// A latency histogram of fixed log-scale buckets in plain atomics, for the
/// dashboard's percentiles (bucket `i` holds values up to [`bucket_upper_us`]`(i)`).
#[derive(Debug)]
pub struct LogBuckets(pub [AtomicU64; LOG_BUCKETS]);

impl LogBuckets {
    fn new() -> Self {
        LogBuckets(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    fn record(&self, us: u64) {
        self.0[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The cumulative counts.
    pub fn read(&self) -> [u64; LOG_BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// The bucket of a value in microseconds.
pub fn bucket_of(us: u64) -> usize {
    if us <= 10 {
        return 0;
    }
    let b = (4.0 * (us as f64 / 10.0).log2()).ceil() as usize;
    b.min(LOG_BUCKETS - 1)
}

/// The upper bound of bucket `i`, in microseconds.
pub fn bucket_upper_us(i: usize) -> f64 {
    10.0 * 2f64.powf(i as f64 / 4.0)
}

/// Declares [`Metrics`] from one table: each family's field, type,
/// constructor, name, help text and unit are written once, so a family
/// cannot be declared and left unregistered (`/metrics` lists them in table
/// order); the fields after `;;` are not families.
macro_rules! metrics {
    (
        $($family:ident: $fty:ty = $fnew:expr, $name:literal, $help:literal, $unit:expr;)*
        ;;
        $($(#[$doc:meta])* $field:ident: $ty:ty = $new:expr,)*
    ) => {
        /// Every family, registered once.
        struct Metrics {
            registry: Registry,
            $($family: $fty,)*
            $($(#[$doc])* $field: $ty,)*
        }

        impl Metrics {
            fn new() -> Self {
                let mut registry = Registry::with_prefix("jobq");
                $(let $family: $fty = $fnew;
                register(&mut registry, $name, $help, $unit, $family.clone());)*
                Metrics {
                    registry,
                    $($family,)*
                    $($field: $new,)*
                }
            }
        }
    };
}

/// Registers `metric`, with its unit when it has one.
fn register(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, metric: impl Metric) {
    match unit {
        Some(unit) => r.register_with_unit(name, help, unit, metric),
        None => r.register(name, help, metric),
    }
}

metrics! {
    submitted: Family<QueueLabels, Counter> = Family::default(), "jobs_submitted", "Jobs created by a submit", None;
    completed: Family<QueueLabels, Counter> = Family::default(), "jobs_completed", "Jobs completed by a worker", None;
    failed: Family<QueueLabels, Counter> = Family::default(), "jobs_failed", "Jobs failed by a worker or out of attempts", None;
    cancelled: Family<ReasonLabels, Counter> = Family::default(), "jobs_cancelled", "Jobs cancelled, by reason", None;
    retried: Family<QueueLabels, Counter> = Family::default(), "jobs_retried", "Worker failures sent back to pending for another attempt", None;
    rescued: Family<RescueLabels, Counter> = Family::default(), "lease_expiries_rescued", "Expired leases taken back, by what became of the job", None;
    stale_refused: Family<OpLabels, Counter> = Family::default(), "stale_worker_calls_refused", "Worker calls refused with 409 because the lease was stale or the job not running", None;
    attached: Family<QueueLabels, Counter> = Family::default(), "idempotent_attaches", "Submits that attached to an existing job by Idempotency-Key", None;
    progress: Family<QueueLabels, Counter> = Family::default(), "progress_events", "Progress events accepted from workers", None;
    refused: Family<ReasonLabels, Counter> = Family::default(), "submits_refused", "Submits answered 503, by reason", None;
    pending: Family<QueueLabels, Gauge> = Family::default(), "jobs_pending", "Pending jobs", None;
    running: Family<QueueLabels, Gauge> = Family::default(), "jobs_running", "Running jobs", None;
    oldest_pending: Family<QueueLabels, Gauge<f64, AtomicU64>> = Family::default(), "oldest_pending_age", "Age of the oldest pending job", Some(Unit::Seconds);
    waiting_clients: Gauge = Gauge::default(), "waiting_clients", "Clients waiting for a job to end", None;
    polling_workers: Gauge = Gauge::default(), "polling_workers", "Workers in a long-poll", None;
    queue_wait: HistogramFamily<QueueLabels> = Family::new_with_constructor(seconds_histogram), "queue_wait", "Time from submit to first hand-out", Some(Unit::Seconds);
    run_time: HistogramFamily<QueueLabels> = Family::new_with_constructor(seconds_histogram), "run_time", "Time from hand-out to the job's end", Some(Unit::Seconds);
    sync_latency: HistogramFamily<OutcomeLabels> = Family::new_with_constructor(seconds_histogram), "sync_submit_latency", "Time a sync submit was held, by outcome", Some(Unit::Seconds);
    http_duration: HistogramFamily<HttpLabels> = Family::new_with_constructor(seconds_histogram), "http_request_duration", "HTTP request duration, by route template and status", Some(Unit::Seconds);
    commit_latency: HistogramFamily<BackendLabels> = Family::new_with_constructor(seconds_histogram), "store_commit_latency", "Store commit latency (embedded: one group commit; postgres: one statement)", Some(Unit::Seconds);
    commit_batch: HistogramFamily<BackendLabels> = Family::new_with_constructor(batch_histogram), "store_commit_batch_size", "Changes per store commit", None;
    store_sync: HistogramFamily<BackendLabels> = Family::new_with_constructor(seconds_histogram), "store_sync_latency", "Store fsync latency (embedded: one fdatasync of the WAL, covering every commit before it)", Some(Unit::Seconds);
    ;;
    /// `http_duration`'s histograms by the addresses of their (interned,
    /// `'static`) method and route and by status: the family's own map
    /// hashes both strings with SipHash, three times per job.
    http_by_addr:
        parking_lot::RwLock<HashMap<(usize, usize, u16), Histogram, foldhash::fast::RandomState>> = Default::default(),
    /// The series of the families above that every job touches, by queue
    /// (handles to the same counters): a family's lookup builds a label
    /// set and hashes it with SipHash, four times per job otherwise.
    by_queue: parking_lot::RwLock<HashMap<Queue, QueueSeries, foldhash::fast::RandomState>> = Default::default(),
    /// `sync_latency`'s histograms by [`SyncOutcome`], made on first use.
    sync_by_outcome: [std::sync::OnceLock<Histogram>; 5] = Default::default(),
    totals: Totals = Totals::default(),
    queue_wait_buckets: LogBuckets = LogBuckets::new(),
    run_time_buckets: LogBuckets = LogBuckets::new(),
}

/// A family of histograms whose constructor sets their buckets.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// One queue's series of the families every job touches.
struct QueueSeries {
    submitted: Counter,
    completed: Counter,
    queue_wait: Histogram,
    run_time: Histogram,
}

impl Metrics {
    /// Runs `f` on `queue`'s series, made (and registered in their
    /// families) on the queue's first use.
    fn with_queue<R>(&self, queue: &Queue, f: impl FnOnce(&QueueSeries) -> R) -> R {
        if let Some(series) = self.by_queue.read().get(queue) {
            return f(series);
        }
        let labels = q(queue);
        let series = QueueSeries {
            submitted: self.submitted.get_or_create(&labels).clone(),
            completed: self.completed.get_or_create(&labels).clone(),
            queue_wait: self.queue_wait.get_or_create(&labels).clone(),
            run_time: self.run_time.get_or_create(&labels).clone(),
        };
        f(self.by_queue.write().entry(queue.clone()).or_insert(series))
    }
}

/// Seconds from 100 µs to ~14 minutes, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 24))
}

/// Batch sizes 1 to 4096, doubling.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// The microseconds from `from` to `to` (0 if the clock went back).
fn micros_between(from: Timestamp, to: Timestamp) -> u64 {
    (to.0 - from.0).max(0) as u64
}

/// A job was created by a submit.
pub fn submitted(queue: &Queue) {
    if let Some(m) = get() {
        m.with_queue(queue, |s| s.submitted.inc());
        m.totals.submitted.fetch_add(1, Ordering::Relaxed);
    }
}

/// A submit attached to an existing job by its `Idempotency-Key`.
pub fn attached(queue: &Queue) {
    if let Some(m) = get() {
        m.attached.get_or_create(&q(queue)).inc();
    }
}

/// A worker's progress event for a job of `queue` was accepted.
pub fn progress(queue: &Queue) {
    if let Some(m) = get() {
        m.progress.get_or_create(&q(queue)).inc();
    }
}

/// A submit to `queue` was answered 503.
pub fn refused(queue: &Queue, reason: RefusedReason) {
    if let Some(m) = get() {
        let reason = match reason {
            RefusedReason::QueueFull => "queue_full",
            RefusedReason::ShuttingDown => "shutting_down",
        };
        m.refused
            .get_or_create(&ReasonLabels {
                queue: QueueName(queue.clone()),
                reason,
            })
            .inc();
    }
}

/// A job was handed to a worker: its first hand-out records its queue wait.
pub fn handed_out(job: &Job) {
    let Some(m) = get() else { return };
    if job.attempts != 1 {
        return;
    }
    if let Some(started) = job.started_at {
        let us = micros_between(job.created_at, started);
        m.with_queue(&job.queue, |s| s.queue_wait.observe(us as f64 / 1e6));
        m.queue_wait_buckets.record(us);
    }
}

/// A job ended (`job` as it now stands); `cancel` says why when it was
/// cancelled. Counts it and records its run time if a worker had it.
pub fn ended(job: &Job, cancel: Option<CancelReason>) {
    let Some(m) = get() else { return };
    match job.status {
        Status::Completed => {
            m.totals.completed.fetch_add(1, Ordering::Relaxed);
        }
        Status::Failed => {
            m.failed.get_or_create(&q(&job.queue)).inc();
            m.totals.failed.fetch_add(1, Ordering::Relaxed);
        }
        Status::Cancelled => {
            let reason = cancel.unwrap_or(CancelReason::Client).as_str();
            m.cancelled
                .get_or_create(&ReasonLabels {
                    queue: QueueName(job.queue.clone()),
                    reason,
                })
                .inc();
            m.totals.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        Status::Pending | Status::Running => return,
    }
    let ran = match (job.started_at, job.ended_at) {
        (Some(started), Some(end)) => Some(micros_between(started, end)),
        _ => None,
    };
    if let Some(us) = ran {
        m.run_time_buckets.record(us);
    }
    if job.status == Status::Completed || ran.is_some() {
        m.with_queue(&job.queue, |s| {
            if job.status == Status::Completed {
                s.completed.inc();
            }
            if let Some(us) = ran {
                s.run_time.observe(us as f64 / 1e6);
            }
        });
    }
}

/// `n` jobs were cancelled by a clear of `queue` (`None`: every queue).
pub fn cleared(queue: Option<&Queue>, n: usize) {
    let Some(m) = get() else { return };
    if n == 0 {
        return;
    }
    let queue = match queue {
        Some(q) => q.clone(),
        None => Queue::parse("_all").expect("a valid queue name"),
    };
    m.cancelled
        .get_or_create(&ReasonLabels {
            queue: QueueName(queue),
            reason: CancelReason::Clear.as_str(),
        })
        .inc_by(n as u64);
    m.totals.cancelled.fetch_add(n as u64, Ordering::Relaxed);
}

/// A worker's failure sent the job back to pending.
pub fn retried(job: &Job) {
    if let Some(m) = get() {
        m.retried.get_or_create(&q(&job.queue)).inc();
        m.totals.retried.fetch_add(1, Ordering::Relaxed);
    }
}

/// An expired lease was taken back (`job` as it now stands: pending again,
/// or failed when out of attempts).
pub fn rescued(job: &Job) {
    let Some(m) = get() else { return };
    m.rescued
        .get_or_create(&RescueLabels {
            queue: QueueName(job.queue.clone()),
            outcome: if job.status == Status::Failed {
                "failed"
            } else {
                "pending"
            },
        })
        .inc();
    m.totals.rescued.fetch_add(1, Ordering::Relaxed);
    if job.status == Status::Failed {
        ended(job, None);
    }
}

/// A worker call (`complete`, `fail`, `heartbeat`, `progress`) was refused with 409:
/// its lease is stale or the job no longer runs.
pub fn stale_refused(op: &'static str) {
    if let Some(m) = get() {
        m.stale_refused.get_or_create(&OpLabels { op }).inc();
    }
}

/// A sync submit was answered after `held`.
pub fn sync_answered(outcome: SyncOutcome, held: Duration) {
    if let Some(m) = get() {
        m.sync_by_outcome[outcome as usize]
            .get_or_init(|| {
                m.sync_latency
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.as_str(),
                    })
                    .clone()
            })
            .observe(held.as_secs_f64());
    }
}

/// An HTTP request on `route` was answered `status` after `took`.
pub fn http_request(method: &'static str, route: &'static str, status: u16, took: Duration) {
    let Some(m) = get() else { return };
    let key = (method.as_ptr() as usize, route.as_ptr() as usize, status);
    if let Some(h) = m.http_by_addr.read().get(&key) {
        h.observe(took.as_secs_f64());
        return;
    }
    let h = m
        .http_duration
        .get_or_create(&HttpLabels {
            method,
            route,
            status,
        })
        .clone();
    h.observe(took.as_secs_f64());
    m.http_by_addr.write().insert(key, h);
}

/// A store committed `batch` changes in `took` (`backend`: `embedded`, `postgres`).
pub fn store_commit(backend: &'static str, batch: usize, took: Duration) {
    if let Some(m) = get() {
        let labels = BackendLabels { backend };
        m.commit_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        m.commit_batch.get_or_create(&labels).observe(batch as f64);
    }
}

/// A store made its commits durable with one fsync that took `took`.
pub fn store_sync(backend: &'static str, took: Duration) {
    if let Some(m) = get() {
        m.store_sync
            .get_or_create(&BackendLabels { backend })
            .observe(took.as_secs_f64());
    }
}

/// Per-queue figures the server holds (see [`crate::store::QueueActivity`]).
pub fn set_queue_gauges<'a>(
    queues: impl IntoIterator<Item = (&'a str, u64, u64, Option<f64>)>,
    waiting_clients: usize,
    polling_workers: usize,
) {
    let Some(m) = get() else { return };
    // Cleared first: a queue that emptied disappears instead of going stale.
    m.pending.clear();
    m.running.clear();
    m.oldest_pending.clear();
    for (name, pending, running, oldest) in queues {
        let Ok(queue) = Queue::parse(name) else {
            continue;
        };
        let labels = q(&queue);
        m.pending.get_or_create(&labels).set(pending as i64);
        m.running.get_or_create(&labels).set(running as i64);
        if let Some(age) = oldest {
            m.oldest_pending.get_or_create(&labels).set(age);
        }
    }
    m.waiting_clients.set(waiting_clients as i64);
    m.polling_workers.set(polling_workers as i64);
}

/// The totals and latency buckets, for the dashboard.
pub(crate) fn dash_sources() -> (&'static Totals, &'static LogBuckets, &'static LogBuckets) {
    let m = &*METRICS;
    (&m.totals, &m.queue_wait_buckets, &m.run_time_buckets)
}

/// The exposition text of `GET /metrics`.
pub fn render() -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &METRICS.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        for us in [
            0u64,
            10,
            11,
            100,
            999,
            1_000,
            123_456,
            10_000_000,
            u64::MAX / 2,
        ] {
            let b = bucket_of(us);
            assert!(us as f64 <= bucket_upper_us(b) * 1.000001 || b == LOG_BUCKETS - 1);
            if b > 0 {
                assert!(us as f64 > bucket_upper_us(b - 1) * 0.999999, "{us} in {b}");
            }
        }
        assert!(bucket_of(1_000) < bucket_of(2_000));
    }
}
