//! Wire messages ↔ broker requests and jobs: parsing ids, leases and queues,
//! and rendering a hand-out as a `Job` (payload text rule of docs/grpc.md).
//! No decisions about jobs are made here.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;

use super::error::invalid;
use super::pb;
use crate::broker::{
    self, CompleteRequest, FailRequest, HeartbeatRequest, PollRequest, ProgressRequest,
};
use crate::job::{Job, JobId, LeaseId, Queue};

/// Longest `wait_seconds` of `RequestJob` (and of one wait of the stream):
/// below the 60-second idle limit of common proxies.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(50);

/// Header set on a hand-out whose payload is not UTF-8 (then base64 in `payload`).
pub const PAYLOAD_ENCODING_HEADER: &str = "x-jobq-payload-encoding";

type Result<T> = std::result::Result<T, broker::Error>;

/// A job id field.
pub fn job_id(s: &str) -> Result<JobId> {
    s.trim()
        .parse()
        .map_err(|_| invalid(format!("malformed job id {s:?}: expected a UUID")))
}

/// A lease id field; empty means none was sent.
pub fn lease_id(s: &str) -> Result<Option<LeaseId>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.trim()
        .parse()
        .map(Some)
        .map_err(|_| invalid(format!("malformed lease id {s:?}: expected a UUID")))
}

/// Queue names, validated.
pub fn queues(names: &[String]) -> Result<Vec<Queue>> {
    names
        .iter()
        .map(|n| Queue::parse(n).map_err(invalid))
        .collect()
}

/// `RequestJob`'s request.
pub fn poll(req: &pb::JobRequest) -> Result<PollRequest> {
    Ok(PollRequest {
        queues: queues(&req.queues)?,
        wait: Duration::from_secs(req.wait_seconds.into()).min(MAX_POLL_WAIT),
    })
}

/// `CompleteJob`'s request (also the stream's `complete`).
pub fn complete(r: pb::JobResult) -> Result<CompleteRequest> {
    let result = match (r.result.is_empty(), r.payload.is_empty()) {
        (true, _) => Bytes::from(r.payload),
        (false, true) => r.result,
        (false, false) => {
            return Err(invalid(
                "give the result in `payload` (text) or `result` (bytes), not both",
            ))
        }
    };
    Ok(CompleteRequest {
        id: job_id(&r.job_id)?,
        lease: lease_id(&r.lease_id)?,
        result,
    })
}

/// `FailJob`'s request (also the stream's `fail`).
pub fn fail(r: pb::FailRequest) -> Result<FailRequest> {
    Ok(FailRequest {
        id: job_id(&r.job_id)?,
        lease: lease_id(&r.lease_id)?,
        error: (!r.error.is_empty()).then_some(r.error),
        retry: r.retry,
    })
}

/// `Heartbeat`'s request (also the stream's `heartbeat`).
pub fn heartbeat(r: &pb::HeartbeatRequest) -> Result<HeartbeatRequest> {
    Ok(HeartbeatRequest {
        id: job_id(&r.job_id)?,
        lease: lease_id(&r.lease_id)?,
    })
}

/// `Progress`'s request (also the stream's `progress`).
pub fn progress(r: pb::ProgressRequest) -> Result<ProgressRequest> {
    Ok(ProgressRequest {
        id: job_id(&r.job_id)?,
        lease: lease_id(&r.lease_id)?,
        data: r.data,
    })
}

/// A hand-out as a `Job` message. The payload travels as text; bytes that
/// are not UTF-8 go as base64 with [`PAYLOAD_ENCODING_HEADER`], and exactly
/// in `payload_bytes`.
pub fn handout(job: &Job, lease: Duration) -> pb::Job {
    let mut headers = headers(&job.headers);
    // Only jobq sets it: a client's own header of that name would mislead the worker.
    headers.remove(PAYLOAD_ENCODING_HEADER);
    let (payload, payload_bytes) = match std::str::from_utf8(&job.payload) {
        Ok(s) => (s.to_owned(), Bytes::new()),
        Err(_) => {
            headers.insert(PAYLOAD_ENCODING_HEADER.to_owned(), "base64".to_owned());
            (
                base64::engine::general_purpose::STANDARD.encode(&job.payload),
                job.payload.clone(),
            )
        }
    };
    pb::Job {
        id: job.id.to_string(),
        payload,
        headers,
        queue: job.queue.as_str().to_owned(),
        attempt: job.attempts,
        lease_id: job.lease_id.map(|l| l.to_string()).unwrap_or_default(),
        lease_expires_at: job
            .lease_expires_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        payload_bytes,
        priority: job.priority,
        created_at: job.created_at.to_rfc3339(),
        lease_ms: lease.as_millis() as u64,
    }
}

/// The stored headers (a JSON object of strings) as a map.
fn headers(json: &[u8]) -> HashMap<String, String> {
    let Ok(map) = serde_json::from_slice::<HashMap<String, serde_json::Value>>(json) else {
        return HashMap::new();
    };
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{NewJob, Timestamp};

    fn job(payload: &'static [u8], headers: &'static str) -> Job {
        NewJob {
            id: JobId::new(),
            queue: Queue::default_queue(),
            payload: Bytes::from_static(payload),
            headers: Bytes::from_static(headers.as_bytes()),
            priority: 0,
            created_at: Timestamp::now(),
            idempotency: None,
        }
        .into_job()
    }

    fn handout_of(j: &Job) -> pb::Job {
        handout(j, Duration::from_secs(60))
    }

    #[test]
    fn text_payload_is_sent_as_is() {
        let j = handout_of(&job(
            b"hello",
            r#"{"a":"b","x-jobq-payload-encoding":"base64"}"#,
        ));
        assert_eq!(j.payload, "hello");
        assert!(j.payload_bytes.is_empty());
        assert_eq!(j.headers.len(), 1, "{:?}", j.headers);
        assert_eq!(j.headers["a"], "b");
    }

    #[test]
    fn binary_payload_is_base64_with_its_header() {
        let j = handout_of(&job(&[0xff, 0x00, 0x10], "{}"));
        assert_eq!(j.payload, "/wAQ");
        assert_eq!(j.headers[PAYLOAD_ENCODING_HEADER], "base64");
        assert_eq!(&j.payload_bytes[..], &[0xff, 0x00, 0x10]);
    }

    #[test]
    fn result_in_one_field_only() {
        let mut r = pb::JobResult {
            job_id: JobId::new().to_string(),
            payload: "x".into(),
            result: Bytes::from_static(b"y"),
            ..Default::default()
        };
        assert!(complete(r.clone()).is_err());
        r.payload.clear();
        assert_eq!(&complete(r).unwrap().result[..], b"y");
        assert!(job_id("nope").is_err());
        assert_eq!(lease_id("").unwrap(), None);
    }

    #[test]
    fn waits_are_capped() {
        let p = poll(&pb::JobRequest {
            queues: vec![],
            wait_seconds: 3600,
        })
        .unwrap();
        assert_eq!(p.wait, MAX_POLL_WAIT);
    }
}
