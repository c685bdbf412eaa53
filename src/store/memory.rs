//! The in-memory backend (`--storage memory`): every job lives in one
//! [`Index`] behind a mutex that is held for a few hundred nanoseconds per
//! operation and never across an await. Nothing survives a restart.

use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::index::Index;
use super::{
    ClaimParams, Claimed, CompleteParams, Counts, FailParams, HeartbeatParams, Inserted, JobRecord,
    ListFilter, QueueActivity, Result, Store,
};
use crate::job::{Completion, Job, JobId, LeaseId, NewJob, Queue, Timestamp};

/// `--storage memory`: an [`Index`] behind a mutex.
#[derive(Debug, Default)]
pub struct MemoryStore {
    index: Mutex<Index>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(&self, job: NewJob, max_pending: u64) -> Result<Inserted> {
        self.index.lock().insert(job, max_pending, true)
    }
    async fn claim(&self, p: &ClaimParams) -> Result<Option<Claimed>> {
        self.index.lock().claim(p)
    }
    async fn peek(&self, queues: &[Queue]) -> Result<Option<Job>> {
        Ok(self.index.lock().peek(queues))
    }
    async fn complete(&self, p: &CompleteParams) -> Result<(Job, Completion)> {
        self.index.lock().complete(p)
    }
    async fn fail(&self, p: &FailParams) -> Result<Job> {
        self.index.lock().fail(p)
    }
    async fn heartbeat(&self, p: &HeartbeatParams) -> Result<Job> {
        self.index.lock().heartbeat(p)
    }
    async fn release(&self, id: JobId, lease_id: LeaseId) -> Result<Job> {
        self.index.lock().release(id, lease_id)
    }
    async fn cancel(&self, id: JobId, only_pending: bool, now: Timestamp) -> Result<Job> {
        self.index.lock().cancel(id, only_pending, now)
    }
    async fn clear(&self, queue: Option<&Queue>, now: Timestamp) -> Result<Vec<JobId>> {
        Ok(self.index.lock().clear(queue, now).0)
    }
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        Ok(self.index.lock().get(id))
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>> {
        Ok(self.index.lock().list(filter))
    }
    async fn counts(&self) -> Result<Counts> {
        Ok(self.index.lock().counts())
    }
    async fn activity(&self) -> Result<std::collections::BTreeMap<String, QueueActivity>> {
        Ok(self.index.lock().activity())
    }
    async fn rescue_expired(&self, now: Timestamp, max_attempts: u32) -> Result<Vec<Job>> {
        Ok(self.index.lock().rescue_expired(now, max_attempts))
    }
    async fn purge_expired(&self, ttl: Duration, now: Timestamp) -> Result<u64> {
        Ok(self.index.lock().purge_expired(ttl, now).len() as u64)
    }
    fn pending_count(&self) -> u64 {
        self.index.lock().pending_count()
    }
}
