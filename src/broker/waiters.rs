//! In-process wake-ups: clients waiting for a job to end, and workers
//! long-polling a queue. Both register *before* their final look at the
//! store, so a change that lands in between is never missed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{futures::Notified, oneshot, Notify};

use crate::job::{Job, JobId, Queue};

/// What a waiting client is told when its job changes.
#[derive(Debug)]
pub enum Wake {
    /// The job ended; this is how it stands.
    Ended(Box<Job>),
    /// The job changed in a way the waker did not see in full (a clear, a
    /// change on another node): read it again.
    Changed,
}

/// Token, wake-up channel, and whether the waiter is a client that submitted
/// the job (or attached to it by idempotency key) rather than a watcher.
type Slot = (u64, oneshot::Sender<Wake>, bool);

/// Clients waiting for jobs to end, by job id.
#[derive(Debug, Default)]
pub struct JobWaiters {
    map: Mutex<HashMap<JobId, Vec<Slot>, foldhash::fast::RandomState>>,
    next: AtomicU64,
    count: AtomicUsize,
}

/// One registration; dropping it unregisters.
#[derive(Debug)]
pub struct Waiter {
    registry: Arc<JobWaiters>,
    id: JobId,
    token: u64,
    submitter: bool,
    rx: oneshot::Receiver<Wake>,
}

impl JobWaiters {
    /// Registers interest in job `id` ending (a watcher: `GET ?wait`).
    pub fn register(self: &Arc<Self>, id: JobId) -> Waiter {
        self.register_as(id, false)
    }

    /// Registers a client that submitted job `id` (or attached to it) and
    /// waits for its result.
    pub fn register_submitter(self: &Arc<Self>, id: JobId) -> Waiter {
        self.register_as(id, true)
    }

    fn register_as(self: &Arc<Self>, id: JobId, submitter: bool) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .entry(id)
            .or_default()
            .push((token, tx, submitter));
        self.count.fetch_add(1, Ordering::Relaxed);
        Waiter {
            registry: self.clone(),
            id,
            token,
            submitter,
            rx,
        }
    }

    /// Wakes every client waiting for `id`. With `job`, each receives it;
    /// without, each re-reads the job.
    pub fn wake(&self, id: JobId, job: Option<&Job>) {
        let Some(slots) = self.map.lock().remove(&id) else {
            return;
        };
        self.count.fetch_sub(slots.len(), Ordering::Relaxed);
        for (_, tx, _) in slots {
            let _ = tx.send(match job {
                Some(j) => Wake::Ended(Box::new(j.clone())),
                None => Wake::Changed,
            });
        }
    }

    /// Wakes every waiting client (they re-read their job).
    pub fn wake_all(&self) {
        let all = std::mem::take(&mut *self.map.lock());
        for (_, slots) in all {
            self.count.fetch_sub(slots.len(), Ordering::Relaxed);
            for (_, tx, _) in slots {
                let _ = tx.send(Wake::Changed);
            }
        }
    }

    /// Whether a client that submitted job `id` (or attached to it) still
    /// waits for its result. Watchers do not count.
    pub fn has_submitter(&self, id: JobId) -> bool {
        self.map
            .lock()
            .get(&id)
            .is_some_and(|s| s.iter().any(|slot| slot.2))
    }

    /// How many clients are waiting.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no client is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Waiter {
    /// The job this waiter is for.
    pub fn job_id(&self) -> JobId {
        self.id
    }

    /// Whether this is a submitting client (not a watcher).
    pub fn is_submitter(&self) -> bool {
        self.submitter
    }

    /// Resolves when the job is woken. Cancel-safe.
    pub async fn recv(&mut self) -> Wake {
        (&mut self.rx).await.unwrap_or(Wake::Changed)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.registry.map.lock();
        if let Some(slots) = map.get_mut(&self.id) {
            if let Some(i) = slots.iter().position(|(t, _, _)| *t == self.token) {
                slots.swap_remove(i);
                self.registry.count.fetch_sub(1, Ordering::Relaxed);
            }
            if slots.is_empty() {
                map.remove(&self.id);
            }
        }
    }
}

/// One [`Notify`] per queue, for long-polling workers.
#[derive(Debug, Default)]
pub struct QueueSignals {
    map: Mutex<HashMap<Queue, Arc<Notify>, foldhash::fast::RandomState>>,
    polling: AtomicUsize,
}

/// Counts a worker as polling while alive.
pub struct PollingGuard<'a>(&'a QueueSignals);

impl Drop for PollingGuard<'_> {
    fn drop(&mut self) {
        self.0.polling.fetch_sub(1, Ordering::Relaxed);
    }
}

impl QueueSignals {
    fn signal(&self, queue: &Queue) -> Arc<Notify> {
        if let Some(n) = self.map.lock().get(queue) {
            return n.clone();
        }
        self.map.lock().entry(queue.clone()).or_default().clone()
    }

    /// A job became available in `queue`: wake one worker polling it.
    pub fn job_ready(&self, queue: &Queue) {
        let n = self.map.lock().get(queue).cloned();
        if let Some(n) = n {
            n.notify_one();
        }
    }

    /// The signals of `queues`, to wait on.
    pub fn signals(&self, queues: &[Queue]) -> Vec<Arc<Notify>> {
        queues.iter().map(|q| self.signal(q)).collect()
    }

    /// Counts the caller as a polling worker until the guard drops.
    pub fn polling(&self) -> PollingGuard<'_> {
        self.polling.fetch_add(1, Ordering::Relaxed);
        PollingGuard(self)
    }

    /// Workers currently waiting in a long-poll.
    pub fn polling_count(&self) -> usize {
        self.polling.load(Ordering::Relaxed)
    }
}

/// Registered wake-ups on several queues: resolves when any fires.
pub struct AnyNotified<'a> {
    futs: Vec<Pin<Box<Notified<'a>>>>,
}

impl<'a> AnyNotified<'a> {
    /// Registers on every signal at once (before the caller's final check).
    pub fn new(signals: &'a [Arc<Notify>]) -> Self {
        let futs = signals
            .iter()
            .map(|n| {
                let mut f = Box::pin(n.notified());
                f.as_mut().enable();
                f
            })
            .collect();
        AnyNotified { futs }
    }

    /// Takes any wake-up that arrived meanwhile, so that dropping these
    /// registrations does not pass it on (Tokio hands a `notify_one` that
    /// reached a dropped `Notified` to the next waiter, or keeps it as a
    /// permit): call it once the caller has taken the job the wake-up
    /// announced. (More jobs pending are announced again by the claim.)
    pub fn consume(&mut self) {
        use futures_util::FutureExt;
        for f in &mut self.futs {
            let _ = f.as_mut().now_or_never();
        }
    }

    /// Resolves when any of the signals fires.
    pub async fn wait(&mut self) {
        futures_util::future::select_all(self.futs.iter_mut().map(|f| f.as_mut())).await;
    }
}
