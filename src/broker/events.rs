//! Progress events: what a worker reports while its job runs
//! (`POST /api/worker/progress/{id}`), buffered per job in memory so that
//! every client streaming that job (a submit answered as Server-Sent Events,
//! `GET /api/jobs/{id}/events`) receives them in order, and one that
//! re-attaches can resume after the last event it saw.
//!
//! Bounds (docs/api.md, "Progress events"): a job keeps its newest
//! [`BUFFER_EVENTS`] events and at most [`BUFFER_BYTES`] bytes of them; older
//! ones are dropped, and a subscriber that had not read them gets a gap
//! (how many it lost). Once a job has ended, its events stay [`LINGER`] for
//! clients that re-attach, then the buffer is freed.
//!
//! Events are numbered per job from 1 (`seq`). On a store shared by several
//! nodes the store numbers them and keeps them (other nodes fetch what they
//! are told about); otherwise this hub numbers them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::job::JobId;

/// Largest progress event, in bytes (`413` beyond).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Most events buffered per job.
pub const BUFFER_EVENTS: usize = 1000;

/// Most bytes of event data buffered per job.
pub const BUFFER_BYTES: usize = 1024 * 1024;

/// How long an ended job's events stay buffered for late subscribers.
pub const LINGER: Duration = Duration::from_secs(60);

/// On a shared store, a buffer nobody reads and no event touched for this
/// long is freed even if its job was never seen ending (it may have ended
/// on another node unheard; the database still numbers its events).
const IDLE: Duration = Duration::from_secs(3600);

/// One progress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Its number within the job, from 1.
    pub seq: u64,
    /// The bytes the worker sent.
    pub data: Bytes,
}

/// What a subscriber reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The next event.
    Progress(Progress),
    /// This many events were dropped from a full buffer before this
    /// subscriber read them.
    Gap(u64),
}

#[derive(Debug)]
struct Buf {
    /// In `seq` order.
    events: VecDeque<Progress>,
    bytes: usize,
    /// The highest `seq` published.
    last: u64,
    /// Every event up to this `seq` has been dropped (or freed).
    dropped_upto: u64,
    subscribers: usize,
    ended_at: Option<Instant>,
    touched: Instant,
}

#[derive(Debug)]
struct Entry {
    buf: Mutex<Buf>,
    changed: Notify,
}

/// Every job's buffered events.
#[derive(Debug, Default)]
pub struct EventHub {
    map: Mutex<HashMap<JobId, Arc<Entry>, foldhash::fast::RandomState>>,
    /// Entries in `map`: lets the hot path skip the lock when nothing streams.
    len: AtomicUsize,
}

impl EventHub {
    fn entry(&self, id: JobId) -> Arc<Entry> {
        let mut map = self.map.lock();
        let entry = map.entry(id).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            Arc::new(Entry {
                buf: Mutex::new(Buf {
                    events: VecDeque::new(),
                    bytes: 0,
                    last: 0,
                    dropped_upto: 0,
                    subscribers: 0,
                    ended_at: None,
                    touched: Instant::now(),
                }),
                changed: Notify::new(),
            })
        });
        entry.clone()
    }

    fn existing(&self, id: JobId) -> Option<Arc<Entry>> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.map.lock().get(&id).cloned()
    }

    /// Adds an event numbered here (the next `seq` of the job). Returns its `seq`.
    pub fn publish(&self, id: JobId, data: Bytes) -> u64 {
        let entry = self.entry(id);
        let seq = {
            let mut b = entry.buf.lock();
            let seq = b.last + 1;
            b.insert(Progress { seq, data });
            seq
        };
        entry.changed.notify_waiters();
        seq
    }

    /// Adds events numbered elsewhere (by a shared store), in any order;
    /// ones already known are ignored. `dropped_upto`: the source no longer
    /// has events up to this `seq` (they count as a gap).
    pub fn insert(&self, id: JobId, events: Vec<Progress>, dropped_upto: u64) {
        let entry = self.entry(id);
        {
            let mut b = entry.buf.lock();
            b.dropped_upto = b.dropped_upto.max(dropped_upto);
            for e in events {
                b.insert(e);
            }
        }
        entry.changed.notify_waiters();
    }

    /// The highest `seq` this node knows of job `id` (0: none).
    pub fn last_seq(&self, id: JobId) -> u64 {
        self.existing(id).map_or(0, |e| e.buf.lock().last)
    }

    /// Whether anyone on this node reads job `id`'s events.
    pub fn is_watched(&self, id: JobId) -> bool {
        self.existing(id)
            .is_some_and(|e| e.buf.lock().subscribers > 0)
    }

    /// Job `id` ended: its buffer is freed [`LINGER`] from now.
    pub fn ended(&self, id: JobId) {
        if let Some(e) = self.existing(id) {
            let mut b = e.buf.lock();
            b.ended_at.get_or_insert_with(Instant::now);
        }
    }

    /// Reads job `id`'s events after `after` (a `Last-Event-ID`; 0: from the start).
    pub fn subscribe(&self, id: JobId, after: u64) -> Subscription {
        let entry = self.entry(id);
        entry.buf.lock().subscribers += 1;
        Subscription {
            entry,
            cursor: AtomicU64::new(after),
        }
    }

    /// Frees buffers nobody needs any more: of jobs ended [`LINGER`] ago,
    /// with no subscriber left; with `shared` (events numbered by a shared
    /// store) also those idle for an hour. Returns how many.
    pub fn reap(&self, shared: bool) -> usize {
        if self.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let now = Instant::now();
        let mut map = self.map.lock();
        let before = map.len();
        map.retain(|_, e| {
            let b = e.buf.lock();
            b.subscribers > 0
                || (b.ended_at.is_none_or(|t| now.duration_since(t) < LINGER)
                    && (!shared || now.duration_since(b.touched) < IDLE)
                    && (b.last > 0 || b.ended_at.is_none()))
        });
        let freed = before - map.len();
        self.len.store(map.len(), Ordering::Relaxed);
        freed
    }

    /// Buffers held (for tests and stats).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no buffer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Buf {
    fn insert(&mut self, e: Progress) {
        self.touched = Instant::now();
        if e.seq <= self.dropped_upto {
            return;
        }
        let len = e.data.len();
        if e.seq > self.last {
            self.last = e.seq;
            self.events.push_back(e);
        } else {
            match self.events.binary_search_by_key(&e.seq, |p| p.seq) {
                Ok(_) => return,
                Err(at) => self.events.insert(at, e),
            }
        }
        self.bytes += len;
        while self.events.len() > BUFFER_EVENTS
            || (self.bytes > BUFFER_BYTES && self.events.len() > 1)
        {
            let old = self.events.pop_front().expect("not empty");
            self.bytes -= old.data.len();
            self.dropped_upto = self.dropped_upto.max(old.seq);
        }
    }
}

/// One reader of a job's events; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    entry: Arc<Entry>,
    /// The last `seq` handed to this reader (atomic only so that reading
    /// takes `&self` while a [`Self::changed`] future borrows it).
    cursor: AtomicU64,
}

impl Subscription {
    /// The next item without waiting, if one is buffered.
    pub fn try_next(&self) -> Option<Item> {
        let b = self.entry.buf.lock();
        let cursor = self.cursor.load(Ordering::Relaxed);
        if cursor < b.dropped_upto {
            self.cursor.store(b.dropped_upto, Ordering::Relaxed);
            return Some(Item::Gap(b.dropped_upto - cursor));
        }
        // Events are in seq order: the first one past the cursor is next.
        let at = b.events.partition_point(|p| p.seq <= cursor);
        let next = b.events.get(at)?.clone();
        self.cursor.store(next.seq, Ordering::Relaxed);
        Some(Item::Progress(next))
    }

    /// A future that completes on the next change of the buffer. Create and
    /// enable it *before* the [`Self::try_next`] that found nothing, so a
    /// change in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.entry.changed.notified()
    }

    /// The last `seq` handed out (a resume point).
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut b = self.entry.buf.lock();
        b.subscribers = b.subscribers.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn progress(item: Option<Item>) -> (u64, Bytes) {
        match item {
            Some(Item::Progress(p)) => (p.seq, p.data),
            other => panic!("expected progress, got {other:?}"),
        }
    }

    #[test]
    fn events_are_numbered_and_read_in_order() {
        let hub = EventHub::default();
        let id = JobId::new();
        let sub = hub.subscribe(id, 0);
        assert_eq!(sub.try_next(), None);
        assert_eq!(hub.publish(id, data("a")), 1);
        assert_eq!(hub.publish(id, data("b")), 2);
        assert_eq!(progress(sub.try_next()), (1, data("a")));
        assert_eq!(progress(sub.try_next()), (2, data("b")));
        assert_eq!(sub.try_next(), None);
        // Resuming after 1 replays 2.
        let late = hub.subscribe(id, 1);
        assert_eq!(progress(late.try_next()), (2, data("b")));
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_says_how_many() {
        let hub = EventHub::default();
        let id = JobId::new();
        for _ in 0..BUFFER_EVENTS + 5 {
            hub.publish(id, data("x"));
        }
        let sub = hub.subscribe(id, 0);
        assert_eq!(sub.try_next(), Some(Item::Gap(5)));
        assert_eq!(progress(sub.try_next()).0, 6);
        // A reader past the dropped ones sees no gap.
        let sub = hub.subscribe(id, 10);
        assert_eq!(progress(sub.try_next()).0, 11);
    }

    #[test]
    fn the_byte_bound_holds_too() {
        let hub = EventHub::default();
        let id = JobId::new();
        let big = Bytes::from(vec![b'x'; MAX_EVENT_BYTES]);
        for _ in 0..(BUFFER_BYTES / MAX_EVENT_BYTES + 3) {
            hub.publish(id, big.clone());
        }
        let sub = hub.subscribe(id, 0);
        assert_eq!(sub.try_next(), Some(Item::Gap(3)));
    }

    #[test]
    fn events_from_elsewhere_are_merged_in_order_once() {
        let hub = EventHub::default();
        let id = JobId::new();
        let p = |seq| Progress {
            seq,
            data: data("e"),
        };
        hub.insert(id, vec![p(3), p(1)], 0);
        hub.insert(id, vec![p(2), p(3)], 0);
        let sub = hub.subscribe(id, 0);
        let seqs: Vec<u64> = std::iter::from_fn(|| sub.try_next())
            .map(|i| progress(Some(i)).0)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(hub.last_seq(id), 3);
        // What the source no longer has is a gap.
        let other = JobId::new();
        hub.insert(other, vec![p(8)], 7);
        let sub = hub.subscribe(other, 2);
        assert_eq!(sub.try_next(), Some(Item::Gap(5)));
        assert_eq!(progress(sub.try_next()).0, 8);
    }

    #[test]
    fn buffers_are_kept_while_read_or_running() {
        let hub = EventHub::default();
        let (running, ended) = (JobId::new(), JobId::new());
        hub.publish(running, data("a"));
        hub.publish(ended, data("a"));
        let sub = hub.subscribe(ended, 0);
        hub.ended(ended);
        assert_eq!(hub.reap(false), 0);
        drop(sub);
        assert_eq!(hub.reap(false), 0, "ended less than LINGER ago");
        // An entry made by a subscriber alone goes once it leaves and the job ended.
        let quiet = JobId::new();
        drop(hub.subscribe(quiet, 0));
        hub.ended(quiet);
        assert_eq!(hub.reap(false), 1);
        assert!(!hub.is_watched(running));
        assert_eq!(hub.len(), 2);
    }
}
