//! What the faces (HTTP, gRPC, the dashboard) hand the broker: requests as
//! parsed from the wire, with nothing decided yet. The broker fills in ids,
//! timestamps, fingerprints and defaults, so every face behaves the same.

use std::time::Duration;

use bytes::Bytes;

use crate::job::{JobId, LeaseId, Queue, Status};

/// A new job, as a client sent it.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// Target queue; `None` is the `default` queue.
    pub queue: Option<Queue>,
    /// The body, exactly as received.
    pub payload: Bytes,
    /// The headers workers will see, as a JSON object text (already
    /// filtered by [`crate::job::is_private_header`]).
    pub headers: Bytes,
    /// Higher first; `None` is 0.
    pub priority: Option<i32>,
    /// The client's `Idempotency-Key`, if any (validated by the broker).
    pub idempotency_key: Option<String>,
}

/// How long a sync submit waits for its job to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitFor {
    /// The server's `--wait-timeout`.
    #[default]
    ServerDefault,
    /// Until the job ends.
    Forever,
    /// Up to this long (capped at [`super::MAX_WAIT`]).
    Up(Duration),
}

impl WaitFor {
    /// The wire convention: absent is the server default, 0 is forever.
    pub fn from_secs(d: Option<Duration>) -> Self {
        match d {
            None => WaitFor::ServerDefault,
            Some(d) if d.is_zero() => WaitFor::Forever,
            Some(d) => WaitFor::Up(d),
        }
    }
}

/// A worker asking for a job.
#[derive(Debug, Clone, Default)]
pub struct PollRequest {
    /// Queues in order of preference; empty is the `default` queue.
    pub queues: Vec<Queue>,
    /// How long to hold the request for a job to arrive (0: answer at once).
    pub wait: Duration,
}

/// A worker's result.
#[derive(Debug, Clone)]
pub struct CompleteRequest {
    /// The job.
    pub id: JobId,
    /// The worker's lease (fencing); `None` applies to the current lease.
    pub lease: Option<LeaseId>,
    /// The result bytes; empty is stored as `{}`.
    pub result: Bytes,
}

/// A worker's failure report.
#[derive(Debug, Clone)]
pub struct FailRequest {
    /// The job.
    pub id: JobId,
    /// The worker's lease, if sent.
    pub lease: Option<LeaseId>,
    /// Why; `None` gets a generic text.
    pub error: Option<String>,
    /// Whether a retry is allowed; `None` allows it.
    pub retry: Option<bool>,
}

/// How a worker's job ended, for [`super::Broker::finish_and_next`].
#[derive(Debug, Clone)]
pub enum Finish {
    /// A result.
    Complete(CompleteRequest),
    /// A failure.
    Fail(FailRequest),
}

/// A worker extending its lease.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatRequest {
    /// The job.
    pub id: JobId,
    /// The worker's lease, if sent.
    pub lease: Option<LeaseId>,
}

/// A worker reporting progress: one event for the job's streaming clients.
#[derive(Debug, Clone)]
pub struct ProgressRequest {
    /// The job.
    pub id: JobId,
    /// The worker's lease, if sent.
    pub lease: Option<LeaseId>,
    /// The event's bytes, exactly as sent.
    pub data: bytes::Bytes,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only jobs in this status.
    pub status: Option<Status>,
    /// Only jobs of this queue.
    pub queue: Option<Queue>,
    /// At most this many; `None` is [`super::LIST_DEFAULT`], and more than
    /// [`super::LIST_MAX`] is capped.
    pub limit: Option<usize>,
}
