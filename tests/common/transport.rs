//! The worker protocol over each transport, behind one trait, so one suite
//! (tests/worker_protocol.rs) checks that HTTP, the gRPC unary RPCs and the
//! gRPC `Work` stream behave the same.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use base64::Engine as _;
use jobq::grpc::pb;
use jobq::grpc::pb::worker_service_client::WorkerServiceClient;
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::{within, TestServer, BOUND};

/// A job as a worker got it, whatever the transport.
#[derive(Debug, Clone)]
pub struct Handout {
    /// Job id.
    pub id: String,
    /// Fencing token.
    pub lease_id: String,
    /// 1 on the first hand-out.
    pub attempt: u32,
    /// The exact payload bytes (decoded from the transport's encoding).
    pub payload: Vec<u8>,
    /// Submit headers.
    pub headers: HashMap<String, String>,
    /// Its queue.
    pub queue: String,
    /// RFC 3339.
    pub lease_expires_at: String,
}

/// Why a call was refused, in transport-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP 404 / NOT_FOUND.
    NotFound,
    /// HTTP 409 / FAILED_PRECONDITION.
    Conflict,
    /// HTTP 400 / INVALID_ARGUMENT.
    Invalid,
}

/// A worker's call on a job it was handed.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    /// Posts a result.
    Complete(&'a [u8]),
    /// Reports a failure (`retry` unset: the server's default).
    Fail { error: &'a str, retry: Option<bool> },
    /// Extends the lease.
    Heartbeat,
    /// Sends a progress event.
    Progress(&'a [u8]),
}

/// What an accepted [`Call`] answered, as far as the transport's answer
/// carries it.
#[derive(Debug, Default)]
pub struct Ack {
    /// The job's new status.
    pub status: Option<String>,
    /// The new `lease_expires_at`.
    pub lease_expires_at: Option<String>,
    /// A progress event's `seq`.
    pub seq: Option<u64>,
}

/// One worker's connection to the server.
#[allow(async_fn_in_trait)]
pub trait WorkerTransport {
    /// Name for messages.
    fn name(&self) -> &'static str;
    /// Takes a job of `queues` (empty: default), waiting up to `wait`.
    async fn poll(&mut self, queues: &[&str], wait: Duration) -> Option<Handout>;
    /// Makes `call` on job `id` under `lease` (`None`: no lease sent).
    /// Checks that a complete's answer confirms it.
    async fn act(&mut self, id: &str, lease: Option<&str>, call: Call<'_>) -> Result<Ack, Refusal>;

    /// Posts a result.
    async fn complete(
        &mut self,
        id: &str,
        lease: Option<&str>,
        result: &[u8],
    ) -> Result<(), Refusal> {
        self.act(id, lease, Call::Complete(result)).await.map(drop)
    }
    /// Reports a failure; the job's new status.
    async fn fail(
        &mut self,
        id: &str,
        lease: Option<&str>,
        error: &str,
        retry: Option<bool>,
    ) -> Result<String, Refusal> {
        let a = self.act(id, lease, Call::Fail { error, retry }).await?;
        Ok(a.status.expect("a fail's answer has the status"))
    }
    /// Extends the lease; the new `lease_expires_at`.
    async fn heartbeat(&mut self, id: &str, lease: Option<&str>) -> Result<String, Refusal> {
        let a = self.act(id, lease, Call::Heartbeat).await?;
        Ok(a.lease_expires_at
            .expect("a heartbeat's answer has the lease end"))
    }
    /// Sends a progress event; its `seq` and the new `lease_expires_at`.
    async fn progress(
        &mut self,
        id: &str,
        lease: Option<&str>,
        data: &[u8],
    ) -> Result<(u64, String), Refusal> {
        let a = self.act(id, lease, Call::Progress(data)).await?;
        Ok((
            a.seq.expect("a progress answer has the seq"),
            a.lease_expires_at
                .expect("a progress answer has the lease end"),
        ))
    }
}

// ---------------------------------------------------------------- HTTP

/// The HTTP worker API.
pub struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    /// A worker on `s`.
    pub fn new(s: &TestServer) -> Self {
        Http {
            base: s.base.clone(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let r = within(BOUND + Duration::from_secs(60), "HTTP call", rb.send())
            .await
            .expect("send");
        let status = r.status().as_u16();
        let body = r.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `rb`'s body on 200, else the refusal it stands for.
    async fn call(&self, rb: reqwest::RequestBuilder) -> Result<Value, Refusal> {
        let (status, b) = self.send(rb).await;
        if status == 200 {
            Ok(b)
        } else {
            Err(Self::refusal(status, &b))
        }
    }

    fn refusal(status: u16, body: &Value) -> Refusal {
        match status {
            404 => Refusal::NotFound,
            409 => Refusal::Conflict,
            400 => Refusal::Invalid,
            _ => panic!("unexpected answer {status} {body}"),
        }
    }

    fn with_lease(url: String, lease: Option<&str>) -> String {
        match lease {
            Some(l) => format!("{url}?lease={l}"),
            None => url,
        }
    }
}

/// The payload of an HTTP hand-out as bytes (SPEC §2 encoding undone).
fn http_payload(body: &Value) -> Vec<u8> {
    match (&body["payload"], body["payload_encoding"].as_str()) {
        (Value::String(s), Some("base64")) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64 payload"),
        (Value::String(s), _) => s.as_bytes().to_vec(),
        (v, _) => v.to_string().into_bytes(),
    }
}

impl WorkerTransport for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    async fn poll(&mut self, queues: &[&str], wait: Duration) -> Option<Handout> {
        let mut url = format!("{}/api/worker/poll?wait={}", self.base, wait.as_secs_f64());
        if !queues.is_empty() {
            url.push_str(&format!("&queue={}", queues.join(",")));
        }
        let (status, b) = self.send(self.http.get(url)).await;
        match status {
            204 => None,
            200 => Some(Handout {
                id: b["job_id"].as_str().unwrap().to_owned(),
                lease_id: b["lease_id"].as_str().unwrap().to_owned(),
                attempt: b["attempt"].as_u64().unwrap() as u32,
                payload: http_payload(&b),
                headers: b["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                queue: b["queue"].as_str().unwrap().to_owned(),
                lease_expires_at: b["lease_expires_at"].as_str().unwrap().to_owned(),
            }),
            _ => panic!("poll: {status} {b}"),
        }
    }

    async fn act(&mut self, id: &str, lease: Option<&str>, call: Call<'_>) -> Result<Ack, Refusal> {
        let (op, body) = match call {
            Call::Complete(result) => ("complete", Some(result.to_vec())),
            Call::Fail { error, retry } => {
                let mut body = serde_json::json!({ "error": error });
                if let Some(r) = retry {
                    body["retry"] = Value::Bool(r);
                }
                ("fail", Some(body.to_string().into_bytes()))
            }
            Call::Heartbeat => ("heartbeat", None),
            Call::Progress(data) => ("progress", Some(data.to_vec())),
        };
        let url = Self::with_lease(format!("{}/api/worker/{op}/{id}", self.base), lease);
        let mut rb = self.http.post(url);
        if let Some(body) = body {
            rb = rb.body(body);
        }
        let b = self.call(rb).await?;
        if let Call::Complete(_) = call {
            assert_eq!(b["message"], "Job completed", "{b}");
        }
        Ok(Ack {
            status: b["status"].as_str().map(str::to_owned),
            lease_expires_at: b["lease_expires_at"].as_str().map(str::to_owned),
            seq: b["seq"].as_u64(),
        })
    }
}

// ---------------------------------------------------------------- gRPC

/// A gRPC client of the server's `--grpc-listen` address.
pub async fn grpc_client(s: &TestServer) -> WorkerServiceClient<Channel> {
    within(
        BOUND,
        "gRPC connect",
        WorkerServiceClient::connect(s.grpc_url()),
    )
    .await
    .expect("connect gRPC")
}

/// A hand-out as a `Job` message, payload decoded.
pub fn grpc_handout(j: pb::Job) -> Handout {
    let payload = if j.headers.get("x-jobq-payload-encoding").map(String::as_str) == Some("base64")
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&j.payload)
            .expect("base64 payload");
        assert_eq!(
            decoded,
            j.payload_bytes.to_vec(),
            "payload_bytes = base64 payload"
        );
        decoded
    } else {
        assert!(
            j.payload_bytes.is_empty(),
            "payload_bytes only for binary payloads"
        );
        j.payload.into_bytes()
    };
    Handout {
        id: j.id,
        lease_id: j.lease_id,
        attempt: j.attempt,
        payload,
        headers: j.headers,
        queue: j.queue,
        lease_expires_at: j.lease_expires_at,
    }
}

fn grpc_refusal(code: tonic::Code, what: &str) -> Refusal {
    match code {
        tonic::Code::NotFound => Refusal::NotFound,
        tonic::Code::FailedPrecondition => Refusal::Conflict,
        tonic::Code::InvalidArgument => Refusal::Invalid,
        other => panic!("{what}: unexpected status {other:?}"),
    }
}

/// The result as a `JobResult`: text in `payload`, other bytes in `result`.
pub fn job_result(id: &str, lease: Option<&str>, result: &[u8]) -> pb::JobResult {
    let (payload, bytes) = match std::str::from_utf8(result) {
        Ok(s) => (s.to_owned(), Vec::new()),
        Err(_) => (String::new(), result.to_vec()),
    };
    pb::JobResult {
        job_id: id.to_owned(),
        payload,
        lease_id: lease.unwrap_or_default().to_owned(),
        result: bytes.into(),
    }
}

fn fail_request(
    id: &str,
    lease: Option<&str>,
    error: &str,
    retry: Option<bool>,
) -> pb::FailRequest {
    pb::FailRequest {
        job_id: id.to_owned(),
        lease_id: lease.unwrap_or_default().to_owned(),
        error: error.to_owned(),
        retry,
    }
}

fn progress_request(id: &str, lease: Option<&str>, data: &[u8]) -> pb::ProgressRequest {
    pb::ProgressRequest {
        job_id: id.to_owned(),
        lease_id: lease.unwrap_or_default().to_owned(),
        data: data.to_vec().into(),
    }
}

fn heartbeat_request(id: &str, lease: Option<&str>) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        job_id: id.to_owned(),
        lease_id: lease.unwrap_or_default().to_owned(),
    }
}

/// A unary RPC's answer within [`BOUND`], else the refusal its status
/// stands for.
async fn unary<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Refusal> {
    within(BOUND, what, call)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| grpc_refusal(s.code(), what))
}

/// The gRPC unary RPCs.
pub struct GrpcUnary {
    client: WorkerServiceClient<Channel>,
}

impl GrpcUnary {
    /// A worker on `s` (started with `--grpc-listen 127.0.0.1:0`).
    pub async fn new(s: &TestServer) -> Self {
        GrpcUnary {
            client: grpc_client(s).await,
        }
    }
}

impl WorkerTransport for GrpcUnary {
    fn name(&self) -> &'static str {
        "grpc"
    }

    async fn poll(&mut self, queues: &[&str], wait: Duration) -> Option<Handout> {
        let req = pb::JobRequest {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            wait_seconds: wait.as_secs() as u32,
        };
        let r = within(
            BOUND + Duration::from_secs(60),
            "RequestJob",
            self.client.request_job(req),
        )
        .await;
        match r {
            Ok(j) => Some(grpc_handout(j.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => panic!("RequestJob: {s:?}"),
        }
    }

    async fn act(&mut self, id: &str, lease: Option<&str>, call: Call<'_>) -> Result<Ack, Refusal> {
        let c = &mut self.client;
        Ok(match call {
            Call::Complete(result) => {
                let r = unary("CompleteJob", c.complete_job(job_result(id, lease, result))).await?;
                assert!(r.success);
                Ack::default()
            }
            Call::Fail { error, retry } => {
                let r = unary("FailJob", c.fail_job(fail_request(id, lease, error, retry))).await?;
                Ack {
                    status: Some(r.status),
                    ..Ack::default()
                }
            }
            Call::Heartbeat => {
                let r = unary("Heartbeat", c.heartbeat(heartbeat_request(id, lease))).await?;
                Ack {
                    lease_expires_at: Some(r.lease_expires_at),
                    ..Ack::default()
                }
            }
            Call::Progress(data) => {
                let r = unary("Progress", c.progress(progress_request(id, lease, data))).await?;
                Ack {
                    lease_expires_at: Some(r.lease_expires_at),
                    seq: Some(r.seq),
                    ..Ack::default()
                }
            }
        })
    }
}

/// One `Work` stream, seen from the worker.
pub struct WorkStream {
    tx: mpsc::Sender<pb::WorkRequest>,
    rx: tonic::Streaming<pb::WorkResponse>,
    seq: u64,
    /// Jobs received while waiting for an answer.
    jobs: VecDeque<pb::Job>,
    /// Answers received while waiting for a job.
    answers: VecDeque<pb::work_response::Event>,
}

impl WorkStream {
    /// Opens a stream whose first message names `queues` and grants `credits`.
    pub async fn open(
        client: &mut WorkerServiceClient<Channel>,
        queues: &[&str],
        credits: u32,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::WorkRequest {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            credits,
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = within(
            BOUND,
            "open Work stream",
            client.work(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .expect("Work")
        .into_inner();
        WorkStream {
            tx,
            rx,
            seq: 0,
            jobs: VecDeque::new(),
            answers: VecDeque::new(),
        }
    }

    /// Grants `n` more credits.
    pub async fn grant(&mut self, n: u32) {
        self.send(pb::WorkRequest {
            credits: n,
            ..Default::default()
        })
        .await;
    }

    /// Sends a raw message.
    pub async fn send(&mut self, m: pb::WorkRequest) {
        self.tx.send(m).await.expect("stream open");
    }

    /// The next event from the server, within `d` (`None`: none came).
    /// Panics if the stream ends or fails.
    pub async fn next_event(&mut self, d: Duration) -> Option<pb::work_response::Event> {
        match tokio::time::timeout(d, self.rx.message()).await {
            Err(_) => None,
            Ok(Ok(Some(m))) => Some(m.event.expect("event set")),
            Ok(Ok(None)) => panic!("Work stream ended"),
            Ok(Err(s)) => panic!("Work stream failed: {s:?}"),
        }
    }

    /// How the stream ended: `Ok(())` for a clean end, else its status
    /// (events still arriving are skipped), within `d`.
    pub async fn end(&mut self, d: Duration) -> Result<(), tonic::Status> {
        within(d, "Work stream ends", async {
            loop {
                match self.rx.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(s),
                }
            }
        })
        .await
    }

    /// Closes the worker's side (no more requests).
    pub fn close_send(&mut self) {
        let (tx, _) = mpsc::channel(1);
        self.tx = tx;
    }

    /// The next pushed job within `d`, or `None`. Answers that arrive
    /// meanwhile are kept for [`WorkStream::call`].
    pub async fn job(&mut self, d: Duration) -> Option<pb::Job> {
        if let Some(j) = self.jobs.pop_front() {
            return Some(j);
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                pb::work_response::Event::Job(j) => return Some(j),
                pb::work_response::Event::KeepAlive(_) => {}
                other => self.answers.push_back(other),
            }
        }
    }

    /// Sends `action` and waits for its answer (ack or error).
    pub async fn call(&mut self, action: pb::work_request::Action) -> pb::work_response::Event {
        self.seq += 1;
        let seq = self.seq;
        self.send(pb::WorkRequest {
            seq,
            action: Some(action),
            ..Default::default()
        })
        .await;
        let is_ours = |e: &pb::work_response::Event| match e {
            pb::work_response::Event::Ack(a) => a.seq == seq,
            pb::work_response::Event::Error(x) => x.seq == seq,
            _ => false,
        };
        if let Some(i) = self.answers.iter().position(is_ours) {
            return self.answers.remove(i).unwrap();
        }
        within(BOUND, "answer on the Work stream", async {
            loop {
                match self.next_event(BOUND).await.expect("an answer") {
                    pb::work_response::Event::Job(j) => self.jobs.push_back(j),
                    pb::work_response::Event::KeepAlive(_) => {}
                    e if is_ours(&e) => return e,
                    e => self.answers.push_back(e),
                }
            }
        })
        .await
    }
}

fn stream_answer(e: pb::work_response::Event, what: &str) -> Result<pb::WorkAck, Refusal> {
    match e {
        pb::work_response::Event::Ack(a) => Ok(a),
        pb::work_response::Event::Error(x) => {
            Err(grpc_refusal(tonic::Code::from_i32(x.code), what))
        }
        other => panic!("{what}: not an answer: {other:?}"),
    }
}

/// The `Work` stream as a transport: a poll grants one credit (unless one
/// is still outstanding from a poll that got nothing) and waits for a push.
pub struct GrpcStream {
    client: WorkerServiceClient<Channel>,
    stream: Option<(Vec<String>, WorkStream)>,
    /// A credit granted and not used yet.
    outstanding: bool,
}

impl GrpcStream {
    /// A stream worker on `s`; the stream opens on first use.
    pub async fn new(s: &TestServer) -> Self {
        GrpcStream {
            client: grpc_client(s).await,
            stream: None,
            outstanding: false,
        }
    }

    /// The stream for `queues`; the stream's queues are fixed when it opens.
    async fn stream(&mut self, queues: &[&str]) -> &mut WorkStream {
        let want: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
        if self.stream.is_none() {
            let s = WorkStream::open(&mut self.client, queues, 0).await;
            self.stream = Some((want.clone(), s));
        }
        let (have, s) = self.stream.as_mut().unwrap();
        assert_eq!(*have, want, "a stream's queues are fixed when it opens");
        s
    }

    /// Sends `action` and takes its answer, on the stream (opened on the
    /// default queue if no poll opened it yet).
    async fn send_action(
        &mut self,
        what: &str,
        action: pb::work_request::Action,
    ) -> Result<pb::WorkAck, Refusal> {
        if self.stream.is_none() {
            let s = WorkStream::open(&mut self.client, &[], 0).await;
            self.stream = Some((Vec::new(), s));
        }
        let s = &mut self.stream.as_mut().unwrap().1;
        stream_answer(s.call(action).await, what)
    }
}

impl WorkerTransport for GrpcStream {
    fn name(&self) -> &'static str {
        "stream"
    }

    async fn poll(&mut self, queues: &[&str], wait: Duration) -> Option<Handout> {
        let outstanding = self.outstanding;
        let s = self.stream(queues).await;
        if !outstanding {
            s.grant(1).await;
        }
        // A stream has no "answer at once": give the push a moment.
        let j = s.job(wait.max(Duration::from_millis(300))).await;
        self.outstanding = j.is_none();
        j.map(grpc_handout)
    }

    async fn act(&mut self, id: &str, lease: Option<&str>, call: Call<'_>) -> Result<Ack, Refusal> {
        use pb::work_request::Action;
        let (what, action) = match call {
            Call::Complete(result) => ("complete", Action::Complete(job_result(id, lease, result))),
            Call::Fail { error, retry } => {
                ("fail", Action::Fail(fail_request(id, lease, error, retry)))
            }
            Call::Heartbeat => ("heartbeat", Action::Heartbeat(heartbeat_request(id, lease))),
            Call::Progress(data) => (
                "progress",
                Action::Progress(progress_request(id, lease, data)),
            ),
        };
        let a = self.send_action(what, action).await?;
        if let Call::Complete(_) = call {
            assert_eq!(a.status, "completed");
        }
        Ok(Ack {
            status: Some(a.status),
            lease_expires_at: Some(a.lease_expires_at),
            seq: Some(a.progress_seq),
        })
    }
}
