//! The dashboard's figures: once a second, [`run`] reads the hooks'
//! cumulative totals and latency buckets and the broker's per-queue
//! activity (state the server already holds, never a scan of every job),
//! keeps the per-second differences in a ring of [`SLOTS`] slots (15
//! minutes), sets the per-queue gauges of `/metrics`, and publishes a
//! snapshot to every dashboard stream ([`subscribe`]).
//!
//! Each server has its own [`Dash`] and sampler; the hooks' totals are
//! process-wide (tests that run several servers in one process see them
//! summed).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{bucket_upper_us, dash_sources, LOG_BUCKETS};
use crate::broker::Broker;

/// Slots in the ring: one per second, 15 minutes.
pub const SLOTS: usize = 900;

/// Seconds of per-second buckets merged into the "last minute" percentiles.
const MINUTE: usize = 60;

/// How often a shared store (PostgreSQL) is asked for its per-queue figures;
/// an in-memory index is asked every second.
const SHARED_STORE_EVERY: u64 = 5;

/// One second of activity.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Slot {
    /// Unix time, seconds (the end of the second).
    pub t: u64,
    /// Jobs created.
    pub submitted: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Jobs failed.
    pub failed: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Expired leases taken back.
    pub rescued: u64,
    /// Pending jobs, all queues, at the end of the second.
    pub pending: u64,
    /// Running jobs, all queues.
    pub running: u64,
    /// Queue-wait p50/p95/p99 of the jobs handed out in this second, ms
    /// (`None` when none were).
    pub queue_wait_ms: Option<[f64; 3]>,
    /// Run-time p50/p95/p99 of the jobs that ended in this second, ms.
    pub run_time_ms: Option<[f64; 3]>,
}

/// One queue, as the snapshot shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    /// Pending jobs.
    pub pending: u64,
    /// Running jobs.
    pub running: u64,
    /// Age of the oldest pending job, seconds.
    pub oldest_pending_s: Option<f64>,
}

/// Percentiles over the last minute.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    /// Median, ms.
    pub p50: Option<f64>,
    /// 95th percentile, ms.
    pub p95: Option<f64>,
    /// 99th percentile, ms.
    pub p99: Option<f64>,
}

/// What a dashboard stream sends each second.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The second just ended.
    pub slot: Slot,
    /// Per queue, now.
    pub queues: BTreeMap<String, QueueView>,
    /// Clients waiting for a job to end.
    pub waiting_clients: usize,
    /// Workers in a long-poll.
    pub polling_workers: usize,
    /// Seconds since the server started.
    pub uptime_s: u64,
    /// Totals since start: submitted, completed, failed, cancelled, retried, rescued.
    pub totals: BTreeMap<&'static str, u64>,
    /// Queue wait over the last minute.
    pub queue_wait_minute: Percentiles,
    /// Run time over the last minute.
    pub run_time_minute: Percentiles,
    /// Whether the hooks record (`--metrics on`).
    pub metrics_enabled: bool,
}

/// One second's bucket differences.
type Buckets = Box<[u64; LOG_BUCKETS]>;

/// The ring and the latest snapshot.
struct Ring {
    /// The last [`SLOTS`] seconds, oldest first.
    slots: VecDeque<Slot>,
    /// Per-second bucket differences of the last minute (queue wait, run time).
    minute: VecDeque<(Buckets, Buckets)>,
}

/// One server's dashboard figures: a cheap-clone handle.
#[derive(Clone)]
pub struct Dash {
    ring: Arc<Mutex<Ring>>,
    /// The latest snapshot, as JSON; `None` before the first second.
    latest: Arc<watch::Sender<Option<Arc<str>>>>,
}

impl Default for Dash {
    fn default() -> Self {
        Self::new()
    }
}

impl Dash {
    /// Adds one second to the ring: its slot and its bucket differences
    /// (queue wait, run time). Returns the last minute's buckets summed.
    fn push(
        &self,
        slot: Slot,
        dq: Buckets,
        dr: Buckets,
    ) -> ([u64; LOG_BUCKETS], [u64; LOG_BUCKETS]) {
        let mut mq = [0u64; LOG_BUCKETS];
        let mut mr = [0u64; LOG_BUCKETS];
        let mut ring = self.ring.lock();
        if ring.slots.len() == SLOTS {
            ring.slots.pop_front();
        }
        ring.slots.push_back(slot);
        if ring.minute.len() == MINUTE {
            ring.minute.pop_front();
        }
        ring.minute.push_back((dq, dr));
        for (a, b) in &ring.minute {
            for i in 0..LOG_BUCKETS {
                mq[i] += a[i];
                mr[i] += b[i];
            }
        }
        (mq, mr)
    }

    /// An empty ring.
    pub fn new() -> Self {
        Dash {
            ring: Arc::new(Mutex::new(Ring {
                slots: VecDeque::with_capacity(SLOTS),
                minute: VecDeque::with_capacity(MINUTE),
            })),
            latest: Arc::new(watch::channel(None).0),
        }
    }

    /// The ring's slots, oldest first, as a JSON array.
    pub fn history_json(&self) -> String {
        let ring = self.ring.lock();
        serde_json::to_string(&ring.slots).unwrap_or_else(|_| "[]".into())
    }

    /// A receiver of each second's snapshot (JSON).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.latest.subscribe()
    }

    /// The latest snapshot, if a second has passed since start.
    pub fn latest(&self) -> Option<Arc<str>> {
        self.latest.borrow().clone()
    }
}

/// p50/p95/p99 of bucket counts, in ms (`None` for no values).
fn percentiles(counts: &[u64; LOG_BUCKETS]) -> Option<[f64; 3]> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let mut out = [0.0; 3];
    for (k, q) in [0.50, 0.95, 0.99].into_iter().enumerate() {
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                out[k] = bucket_upper_us(i) / 1000.0;
                break;
            }
        }
    }
    Some(out)
}

fn diff(now: &[u64; LOG_BUCKETS], before: &[u64; LOG_BUCKETS]) -> Buckets {
    Box::new(std::array::from_fn(|i| now[i].saturating_sub(before[i])))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Each queue's figures of `a`, its pending and running jobs added to
/// `slot`'s totals.
fn queue_views(a: &crate::broker::Activity, slot: &mut Slot) -> BTreeMap<String, QueueView> {
    let mut queues = BTreeMap::new();
    for (name, qa) in &a.queues {
        slot.pending += qa.pending;
        slot.running += qa.running;
        queues.insert(
            name.clone(),
            QueueView {
                pending: qa.pending,
                running: qa.running,
                oldest_pending_s: qa
                    .oldest_pending
                    .map(|o| ((a.now.0 - o.0).max(0) as f64) / 1e6),
            },
        );
    }
    queues
}

/// Samples `broker` into `dash` every second until `stop` is cancelled.
pub async fn run(broker: Broker, dash: Dash, stop: CancellationToken) {
    let (totals, qw, rt) = dash_sources();
    let read_totals = || {
        [
            &totals.submitted,
            &totals.completed,
            &totals.failed,
            &totals.cancelled,
            &totals.retried,
            &totals.rescued,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    };
    let (mut last_totals, mut last_qw, mut last_rt) = (read_totals(), qw.read(), rt.read());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let cheap = broker.activity_is_cheap();
    let mut activity = None;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if cheap || n.is_multiple_of(SHARED_STORE_EVERY) || activity.is_none() {
            match broker.activity().await {
                Ok(a) => activity = Some(a),
                Err(e) => tracing::debug!(error = %e, "dashboard sample: store unavailable"),
            }
        }
        n += 1;
        let (t, q, r) = (read_totals(), qw.read(), rt.read());
        let (dq, dr) = (diff(&q, &last_qw), diff(&r, &last_rt));
        let d = |i: usize| t[i].saturating_sub(last_totals[i]);
        let mut slot = Slot {
            t: unix_now(),
            submitted: d(0),
            completed: d(1),
            failed: d(2),
            cancelled: d(3),
            rescued: d(5),
            queue_wait_ms: percentiles(&dq),
            run_time_ms: percentiles(&dr),
            ..Slot::default()
        };
        (last_totals, last_qw, last_rt) = (t, q, r);
        let mut queues = BTreeMap::new();
        let (mut waiting, mut polling, mut uptime) = (0, 0, 0);
        if let Some(a) = &activity {
            // Waiting clients and polling workers are this node's, read now.
            (waiting, polling, uptime) = (a.waiting_clients, a.polling_workers, a.uptime_s);
            queues = queue_views(a, &mut slot);
        }
        super::set_queue_gauges(
            queues
                .iter()
                .map(|(k, v)| (k.as_str(), v.pending, v.running, v.oldest_pending_s)),
            waiting,
            polling,
        );
        let (mq, mr) = dash.push(slot, dq, dr);
        let pct = |c: &[u64; LOG_BUCKETS]| {
            percentiles(c).map_or_else(Percentiles::default, |p| Percentiles {
                p50: Some(p[0]),
                p95: Some(p[1]),
                p99: Some(p[2]),
            })
        };
        let names = [
            "submitted",
            "completed",
            "failed",
            "cancelled",
            "retried",
            "rescued",
        ];
        let snap = Snapshot {
            slot,
            queues,
            waiting_clients: waiting,
            polling_workers: polling,
            uptime_s: uptime,
            totals: names.into_iter().zip(t).collect(),
            queue_wait_minute: pct(&mq),
            run_time_minute: pct(&mr),
            metrics_enabled: super::enabled(),
        };
        if let Ok(json) = serde_json::to_string(&snap) {
            dash.latest.send_replace(Some(json.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::bucket_of;

    #[test]
    fn percentiles_come_from_the_buckets() {
        let mut c = [0u64; LOG_BUCKETS];
        assert_eq!(percentiles(&c), None);
        c[bucket_of(1_000)] = 90; // 1 ms
        c[bucket_of(100_000)] = 10; // 100 ms
        let [p50, p95, p99] = percentiles(&c).unwrap();
        assert!((1.0..1.2).contains(&p50), "{p50}");
        assert!((100.0..120.0).contains(&p95), "{p95}");
        assert_eq!(p95, p99);
    }
}
