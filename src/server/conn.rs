//! One connection's deadlines: between requests it may stay idle for
//! `--idle-timeout`; once the first byte of a request has arrived, the whole
//! header must follow within `--header-read-timeout` (a slow-loris client
//! cannot hold the connection). While a request is being answered (a
//! long-poll, a held submit, an event stream) neither applies: the TCP
//! keepalive notices a peer that vanished.
//!
//! hyper's own header timer is not used: it also runs while a kept-alive
//! connection is idle, which would make the idle timeout no longer than the
//! header timeout.
//!
//! The timer is lazy: a request's reads and its end only note the time, and
//! the driver looks at the state when its timer fires, at least every
//! `min(idle, header)`, so every deadline is still met on time. Waking the
//! driver at each phase change (twice per request) would poll the whole
//! connection again and re-arm a timer each time.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The two timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `--idle-timeout`.
    pub idle: Duration,
    /// `--header-read-timeout`.
    pub header: Duration,
}

/// What a connection is doing, as far as its deadlines go.
#[derive(Debug)]
struct State {
    /// Requests whose answer has not been sent in full.
    in_flight: usize,
    /// Bytes of a new request arrived while nothing was in flight.
    reading_head: bool,
    /// When the current phase began: the end of the last answer (idle) or
    /// the first byte of the request being read.
    since: Instant,
}

/// A connection's activity, shared by its I/O, its service and its driver.
#[derive(Debug)]
pub struct Activity {
    /// The phase and when it began.
    state: Mutex<State>,
}

impl Activity {
    /// A connection accepted just now (idle until its first byte).
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(State {
                in_flight: 0,
                reading_head: false,
                since: Instant::now(),
            }),
        })
    }

    /// Bytes of the connection arrived (its I/O wrapper calls this).
    pub(super) fn on_read(&self) {
        let mut s = self.state.lock();
        if s.in_flight == 0 && !s.reading_head {
            s.reading_head = true;
            s.since = Instant::now();
        }
    }

    /// A request's head has been read; the returned guard ends it when
    /// dropped (with its answer's body, once sent).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        let mut s = self.state.lock();
        s.in_flight += 1;
        s.reading_head = false;
        InFlight(self.clone())
    }

    /// When the connection expires unless something happens first (`None`
    /// while a request is in flight).
    fn deadline(&self, d: Deadlines) -> Option<Instant> {
        let s = self.state.lock();
        match (s.in_flight, s.reading_head) {
            (0, false) => Some(s.since + d.idle),
            (0, true) => Some(s.since + d.header),
            _ => None,
        }
    }

    /// Waits until the connection has been idle, or reading one request
    /// head, for too long. Never returns while a request is in flight.
    ///
    /// Wakes at each deadline and at least every `min(idle, header)`: a
    /// phase that begins after one wake-up has a deadline no earlier than
    /// the next, so nothing needs to wake this early.
    pub async fn expired(&self, d: Deadlines) {
        let every = d.idle.min(d.header).max(Duration::from_millis(1));
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        loop {
            let now = Instant::now();
            let next = match self.deadline(d) {
                Some(at) if at <= now => return,
                Some(at) => at.min(now + every),
                None => now + every,
            };
            timer.as_mut().reset(next);
            timer.as_mut().await;
        }
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Deadlines = Deadlines {
        idle: Duration::from_secs(60),
        header: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn idle_then_head_then_busy() {
        let a = Activity::new();
        let t0 = Instant::now();
        assert_eq!(a.deadline(D), Some(t0 + D.idle));
        tokio::time::advance(Duration::from_secs(5)).await;
        a.on_read();
        assert_eq!(a.deadline(D), Some(t0 + Duration::from_secs(15)));
        // More bytes of the same head do not move the deadline.
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_read();
        assert_eq!(a.deadline(D), Some(t0 + Duration::from_secs(15)));
        let req = a.request_started();
        assert_eq!(a.deadline(D), None);
        // Body bytes while in flight change nothing.
        a.on_read();
        assert_eq!(a.deadline(D), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(req);
        assert_eq!(a.deadline(D), Some(Instant::now() + D.idle));
    }

    /// A task that ends when `a` expires, with the time it did.
    fn expiry(a: &Arc<Activity>) -> tokio::task::JoinHandle<Instant> {
        let a = a.clone();
        tokio::spawn(async move {
            a.expired(D).await;
            Instant::now()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_follows_the_earliest_deadline() {
        let a = Activity::new();
        let t0 = Instant::now();
        let waiter = expiry(&a);
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_read(); // A slow-loris starts a head at t0+1.
        let at = waiter.await.unwrap();
        assert_eq!(at - t0, Duration::from_secs(11));

        // A request in flight never expires; its end starts the idle clock.
        let a = Activity::new();
        let req = a.request_started();
        let waiter = expiry(&a);
        tokio::time::advance(Duration::from_secs(1000)).await;
        let ended = Instant::now();
        drop(req);
        assert_eq!(waiter.await.unwrap() - ended, D.idle);
    }
}
