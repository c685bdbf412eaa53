//! Batching of concurrent requests of one kind (inserts, completes, claims)
//! into one statement, so that they share a round trip, a statement's
//! overhead in a PostgreSQL backend and one commit (one WAL flush).
//!
//! A request that finds fewer than `in_flight` statements of its kind under
//! way runs its own at once, in its own task (no hand-over to another task,
//! which costs a wake-up each way). One that finds them all under way
//! queues; one task per kind takes the queue as one batch as soon as a
//! statement ends. So batches grow with the load by themselves, with no
//! timer. A task (not the first caller, as in the embedded store's group
//! commit) runs each batch, so a caller that goes away mid-statement (its
//! client disconnected) cannot take the others' answers with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Error, Result};

/// A request and where its answer goes.
type Entry<Req, Out> = (Req, oneshot::Sender<Result<Out>>);

/// One statement on a batch of requests: one answer per request, in order.
type Run<Req, Out> =
    Arc<dyn Fn(Vec<Req>) -> Pin<Box<dyn Future<Output = Vec<Result<Out>>> + Send>> + Send + Sync>;

/// The sending side of one kind's batcher. Dropping it ends the task once
/// the batches under way have been answered.
pub(super) struct Batcher<Req, Out> {
    tx: mpsc::UnboundedSender<Entry<Req, Out>>,
    /// Statements of this kind that may be under way at once.
    slots: Arc<Semaphore>,
    run: Run<Req, Out>,
}

impl<Req: Send + 'static, Out: Send + 'static> Batcher<Req, Out> {
    /// Starts the task. `run` executes one batch and answers each request
    /// in order (the vector it returns has one result per request; a
    /// shorter one leaves the rest with [`Error::Unavailable`]).
    pub(super) fn start<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<Out>>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let run: Run<Req, Out> = Arc::new(move |reqs| Box::pin(run(reqs)));
        tokio::spawn(batch_loop(rx, max_batch.max(1), slots.clone(), run.clone()));
        Batcher { tx, slots, run }
    }

    /// Runs `req` at once if a slot is free, else queues it for the next
    /// batch; either way waits for its own answer.
    pub(super) async fn call(&self, req: Req) -> Result<Out> {
        // (The semaphore is fair: a slot freed while the batch task waits
        // for one goes to it, not to a newcomer.)
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            let answer = (self.run)(vec![req]).await.into_iter().next();
            drop(slot);
            return answer.unwrap_or_else(|| Err(Error::Unavailable("no answer".into())));
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send((req, tx)).is_err() {
            return Err(Error::Unavailable("store closed".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::Unavailable("batch task ended".into())))
    }
}

async fn batch_loop<Req, Out>(
    mut rx: mpsc::UnboundedReceiver<Entry<Req, Out>>,
    max_batch: usize,
    slots: Arc<Semaphore>,
    run: Run<Req, Out>,
) where
    Req: Send + 'static,
    Out: Send + 'static,
{
    loop {
        // Requests queue only when every slot was taken; the batch takes
        // all that queued while it waited for one.
        let Some(first) = rx.recv().await else {
            return;
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut entries = vec![first];
        while entries.len() < max_batch {
            match rx.try_recv() {
                Ok(e) => entries.push(e),
                Err(_) => break,
            }
        }
        let (reqs, answers): (Vec<Req>, Vec<_>) = entries.into_iter().unzip();
        let batch = run(reqs);
        tokio::spawn(async move {
            let mut results = batch.await.into_iter();
            for tx in answers {
                let r = results
                    .next()
                    .unwrap_or_else(|| Err(Error::Unavailable("batch answered short".into())));
                // A caller that went away no longer needs its answer.
                let _ = tx.send(r);
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_caller_gets_its_own_answer_and_batches_grow_under_load() {
        let sizes = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b = Arc::new(Batcher::start(64, 1, move |reqs: Vec<u32>| {
            seen.lock().push(reqs.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                reqs.into_iter()
                    .map(|r| {
                        if r % 7 == 0 {
                            Err(Error::NotFound)
                        } else {
                            Ok(r * 2)
                        }
                    })
                    .collect()
            }
        }));
        let calls: Vec<_> = (1..=50u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.call(i).await) })
            })
            .collect();
        for c in calls {
            let (i, r) = c.await.unwrap();
            match r {
                Ok(v) => assert_eq!(v, i * 2),
                Err(Error::NotFound) => assert_eq!(i % 7, 0),
                Err(e) => panic!("{i}: {e}"),
            }
        }
        let sizes = sizes.lock();
        assert_eq!(sizes.iter().sum::<usize>(), 50);
        assert!(sizes.len() < 50, "some requests shared a batch: {sizes:?}");
    }

    #[tokio::test]
    async fn a_short_answer_is_unavailable_not_a_hang() {
        let b = Batcher::start(8, 2, |_reqs: Vec<u32>| async { Vec::<Result<u32>>::new() });
        assert!(matches!(b.call(1).await, Err(Error::Unavailable(_))));
    }
}
