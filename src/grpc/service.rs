//! `worker.WorkerService`: each unary RPC parses its message (see
//! [`super::convert`]), calls one broker method and renders the answer;
//! `Work` is in [`super::stream`].

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, pb, stream};
use crate::broker::Broker;

/// The service's state: the broker, and when to end open streams.
#[derive(Clone)]
pub struct WorkerApi {
    /// The same broker the HTTP face uses.
    pub broker: Broker,
    /// Cancelled when the shutdown grace is over: open `Work` streams end
    /// (`UNAVAILABLE`) so the server can drain.
    pub drained: CancellationToken,
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    async fn request_job(&self, req: Request<pb::JobRequest>) -> Result<Response<pb::Job>, Status> {
        let poll = convert::poll(req.get_ref())?;
        match self.broker.poll(poll).await? {
            Some(job) => Ok(Response::new(convert::handout(
                &job,
                self.broker.config().lease,
            ))),
            None => Err(Status::not_found("no jobs available")),
        }
    }

    async fn complete_job(
        &self,
        req: Request<pb::JobResult>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        self.broker
            .complete(convert::complete(req.into_inner())?)
            .await?;
        Ok(Response::new(pb::CompleteResponse { success: true }))
    }

    async fn fail_job(
        &self,
        req: Request<pb::FailRequest>,
    ) -> Result<Response<pb::FailResponse>, Status> {
        let job = self.broker.fail(convert::fail(req.into_inner())?).await?;
        Ok(Response::new(pb::FailResponse {
            job_id: job.id.to_string(),
            status: job.status.as_str().to_owned(),
            attempts: job.attempts,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let job = self
            .broker
            .heartbeat(convert::heartbeat(req.get_ref())?)
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {
            job_id: job.id.to_string(),
            lease_expires_at: job
                .lease_expires_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        }))
    }

    async fn progress(
        &self,
        req: Request<pb::ProgressRequest>,
    ) -> Result<Response<pb::ProgressResponse>, Status> {
        let (job, seq) = self
            .broker
            .progress(convert::progress(req.into_inner())?)
            .await?;
        Ok(Response::new(pb::ProgressResponse {
            job_id: job.id.to_string(),
            seq,
            lease_expires_at: job
                .lease_expires_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        }))
    }

    type WorkStream = stream::WorkStream;

    async fn work(
        &self,
        req: Request<Streaming<pb::WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        Ok(Response::new(stream::start(
            self.broker.clone(),
            req.into_inner(),
            self.drained.clone(),
        )))
    }
}
