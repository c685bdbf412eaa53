//! A Rust client for jobq's HTTP API (docs/api.md): [`Client`] submits, reads
//! and cancels jobs and calls the admin endpoints; [`Worker`] polls for jobs,
//! heartbeats them and posts their results, and [`Worker::run`] is a complete
//! worker loop with concurrency, heartbeats and a graceful stop.
//!
//! This module only speaks HTTP; it must not reach into the server's modules,
//! so it works the same against a local or a remote server.
//!
//! Payloads and results are bytes. The server embeds them in JSON
//! (docs/api.md, "Payload encoding"); [`decode_payload`] turns them back
//! into bytes: base64 when flagged, the text of a JSON string, or the JSON
//! text itself. (A result that was itself a JSON string literal such as
//! `"hi"` therefore comes back as `hi`.)
//!
//! ```no_run
//! use jobq::client::{Client, Outcome, RunOptions, SubmitOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> Result<(), jobq::client::Error> {
//! let client = Client::new("http://127.0.0.1:3000")?;
//!
//! // A worker: upper-cases payloads until `stop` is cancelled.
//! let stop = CancellationToken::new();
//! let worker = client.worker(vec!["default".into()]);
//! tokio::spawn(worker.run(RunOptions::default(), stop.clone(), |job, _lost| async move {
//!     Outcome::Complete(job.payload.to_ascii_uppercase().into())
//! }));
//!
//! // A client: submit and wait for the result.
//! let done = client.submit("hello", &SubmitOptions::default()).await?;
//! assert_eq!(done.result, "HELLO");
//! stop.cancel();
//! # Ok(()) }
//! ```
//!
//! For a server with TLS and a private CA, and role tokens:
//! `Client::builder("https://jobq.internal:3000").token(t).ca_cert_file(path)?.build()?`.
//!
//! Runnable versions: `examples/worker.rs` and `examples/submit.rs`.

mod worker;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

pub(crate) use worker::{
    finish_jobs_in_hand, heartbeat_interval, progress_channel, run_handler, Backoff, NotSent,
    ProgressTarget, BACKOFF_MAX, POST_RETRY_WINDOW,
};
pub use worker::{Job, Outcome, ProgressSink, RunOptions, Worker, LONG_POLL_DEFAULT};

/// The server a client talks to when none is named (`--url`, `JOBQ_URL`).
pub const URL_DEFAULT: &str = "http://127.0.0.1:3000";

/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything that can go wrong talking to a jobq server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach the server at {url}: {}", root_cause(source))]
    Unreachable {
        /// The URL that was called.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The job failed (`502`): the worker's error, after `attempts` hand-outs.
    #[error("job {job_id} failed after {attempts} attempt(s): {error}")]
    JobFailed {
        /// The job.
        job_id: String,
        /// Hand-outs it had.
        attempts: u32,
        /// The worker's error (for `jobq worker`, the command's stderr tail).
        error: String,
    },
    /// The job was cancelled or its queue cleared (`410`).
    #[error("job {job_id} was cancelled")]
    JobCancelled {
        /// The job.
        job_id: String,
    },
    /// A sync submit's wait ended before the job did (`202`): the job goes
    /// on; fetch it later with [`Client::job`].
    #[error("job {job_id} is still running; the wait timed out")]
    StillRunning {
        /// The job.
        job_id: String,
    },
    /// A worker call about a job that is no longer this worker's (`409`):
    /// cancelled, ended, or its lease was given to another worker.
    #[error("job {job_id} is no longer this worker's (cancelled, ended or lease lost)")]
    LeaseLost {
        /// The job.
        job_id: String,
    },
    /// Any other refusal (`4xx`, `503`): the server's message.
    #[error("server answered {status}: {message}")]
    Rejected {
        /// HTTP status code.
        status: u16,
        /// The server's `error` sentence.
        message: String,
        /// The job the answer is about, if any.
        job_id: Option<String>,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// An answer that does not follow the API.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl Error {
    /// The server is away (unreachable, or `503`): worth retrying later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::Rejected { status: 503, .. }
        )
    }
}

/// The innermost cause of a transport error ("Connection refused"), which
/// says more than reqwest's own "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if e.is_timeout() {
        format!("timed out ({cause})")
    } else {
        cause.to_string()
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options of a submit (all optional; the server's defaults apply).
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Queue name (`default` when unset).
    pub queue: Option<String>,
    /// Priority: higher first.
    pub priority: Option<i32>,
    /// How long a sync submit waits (`Some(ZERO)` = forever); the server's
    /// `--wait-timeout` when unset.
    pub timeout: Option<Duration>,
    /// `Idempotency-Key`: a repeated submit attaches to the first job.
    pub idempotency_key: Option<String>,
    /// The payload's `Content-Type`.
    pub content_type: Option<String>,
}

/// A job as `GET /api/jobs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// The job's id.
    pub job_id: String,
    /// Its queue.
    pub queue: String,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Hand-outs so far.
    pub attempts: u32,
    /// Priority (higher first).
    pub priority: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once first handed out.
    pub started_at: Option<String>,
    /// RFC 3339, once ended.
    pub completed_at: Option<String>,
    /// The result, once completed.
    pub result: Option<Bytes>,
    /// The error, once failed.
    pub error: Option<String>,
    /// Jobs ahead of it while pending.
    pub position: Option<u64>,
}

/// The job view as the server sends it (fields as in docs/api.md).
#[derive(Deserialize)]
struct RawJobView {
    job_id: String,
    #[serde(default)]
    queue: String,
    status: String,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    created_at: String,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    completed_at: Option<String>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    position: Option<u64>,
}

impl RawJobView {
    fn into_view(self) -> Result<JobView> {
        let result = match &self.payload {
            Some(p) => Some(decode_payload(p, self.payload_encoding.as_deref())?),
            None => None,
        };
        Ok(JobView {
            job_id: self.job_id,
            queue: self.queue,
            status: self.status,
            attempts: self.attempts,
            priority: self.priority,
            created_at: self.created_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            result,
            error: self.error,
            position: self.position,
        })
    }
}

/// Turns a payload embedded in a JSON answer back into bytes (docs/api.md,
/// "Payload encoding"): base64 when `encoding` says so, the text of a JSON
/// string, otherwise the JSON text as sent.
///
/// # Errors
/// Flagged base64 that does not decode, or a malformed string.
pub fn decode_payload(raw: &RawValue, encoding: Option<&str>) -> Result<Bytes> {
    let text = raw.get().trim();
    if encoding == Some("base64") {
        let s: String = serde_json::from_str(text)
            .map_err(|e| Error::Protocol(format!("base64 payload is not a string: {e}")))?;
        return base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Bytes::from)
            .map_err(|e| Error::Protocol(format!("payload is not valid base64: {e}")));
    }
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text)
            .map_err(|e| Error::Protocol(format!("malformed payload string: {e}")))?;
        return Ok(Bytes::from(s));
    }
    Ok(Bytes::copy_from_slice(text.as_bytes()))
}

/// The `{"error", "job_id", "attempts"}` body of a refusal.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    attempts: Option<u32>,
}

/// Maps a non-success answer to an [`Error`].
async fn refusal(resp: Response) -> Error {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let header_id = resp
        .headers()
        .get("x-job-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap_or_default();
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_default();
    let job_id = body.job_id.or(header_id);
    let message = body.error.unwrap_or_else(|| {
        let t = text.trim();
        if t.is_empty() {
            status.canonical_reason().unwrap_or("no reason").to_owned()
        } else {
            t.chars().take(300).collect()
        }
    });
    match (status, job_id) {
        (StatusCode::BAD_GATEWAY, Some(job_id)) => Error::JobFailed {
            job_id,
            attempts: body.attempts.unwrap_or(0),
            error: message,
        },
        (StatusCode::GONE, Some(job_id)) => Error::JobCancelled { job_id },
        (_, job_id) => Error::Rejected {
            status: status.as_u16(),
            message,
            job_id,
            retry_after,
        },
    }
}

/// Parses an RFC 3339 timestamp from the server.
fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s.trim()).ok()
}

/// A handle on one jobq server. Cheap to clone (connections are pooled and
/// shared between clones).
#[derive(Debug, Clone)]
pub struct Client {
    /// Pooled HTTP connections.
    http: reqwest::Client,
    /// `http(s)://host:port`, without a trailing slash.
    base: String,
}

/// Server-Sent Events read from a response, one `(event, data)` at a time.
pub struct EventStream {
    /// The streaming answer.
    resp: Response,
    /// Text received but not yet split into events.
    buf: String,
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (`message` when absent).
    pub event: String,
    /// `id:`, when given.
    pub id: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

impl EventStream {
    /// The next event as `(event, data)` (`None` when the server ended the
    /// stream); comments (keep-alives) are skipped.
    ///
    /// # Errors
    /// [`Error::Unreachable`] when the connection broke.
    pub async fn next(&mut self) -> Result<Option<(String, String)>> {
        Ok(self.next_event().await?.map(|e| (e.event, e.data)))
    }

    /// The next event, with its id (`None` when the server ended the stream).
    ///
    /// # Errors
    /// [`Error::Unreachable`] when the connection broke.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: "message".to_owned(),
                    id: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => ev.event = value.to_owned(),
                        "id" => ev.id = Some(value.to_owned()),
                        "data" => {
                            if has_data {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(value);
                            has_data = true;
                        }
                        _ => {}
                    }
                }
                if has_data {
                    return Ok(Some(ev));
                }
                continue;
            }
            let url = self.resp.url().to_string();
            match self.resp.chunk().await {
                Ok(Some(c)) => self
                    .buf
                    .push_str(&String::from_utf8_lossy(&c).replace("\r\n", "\n")),
                Ok(None) => return Ok(None),
                Err(source) => return Err(Error::Unreachable { url, source }),
            }
        }
    }
}

/// Options of a [`Client`]: see [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    /// The server's base URL.
    base: String,
    /// Sent as `Authorization: Bearer <token>`.
    token: Option<String>,
    /// PEM certificates that alone are trusted for `https://` (a private CA).
    ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

impl ClientBuilder {
    /// Sends `Authorization: Bearer <token>` on every call.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Trusts only the PEM certificate(s) in `pem` for `https://` (a private
    /// CA, or the server's self-signed certificate) instead of the built-in
    /// public roots.
    pub fn ca_cert_pem(mut self, pem: &[u8]) -> Self {
        self.ca_pem = Some(pem.to_vec());
        self
    }

    /// As [`ClientBuilder::ca_cert_pem`], read from a file.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn ca_cert_file(self, path: &std::path::Path) -> Result<Self> {
        let pem = std::fs::read(path).map_err(|e| {
            Error::Protocol(format!(
                "cannot read CA certificate {}: {e}",
                path.display()
            ))
        })?;
        Ok(self.ca_cert_pem(&pem))
    }

    /// The client.
    ///
    /// # Errors
    /// The URL is not `http://` or `https://`, the token is not a valid
    /// header value, or the CA file holds no PEM certificate.
    pub fn build(self) -> Result<Client> {
        let base = self.base.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .map_err(|e| Error::Protocol(format!("bad server URL {base:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Protocol(format!(
                "bad server URL {base:?}: expected http:// or https://"
            )));
        }
        let mut headers = HeaderMap::new();
        if let Some(t) = &self.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Protocol("the token is not a valid header value".into()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let mut http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| Error::Protocol("the CA file holds no PEM certificate".into()))?;
            http = http.tls_built_in_root_certs(false);
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        let http = http
            .build()
            .map_err(|e| Error::Protocol(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, base })
    }
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:3000`, or
    /// `https://…` for a server with TLS).
    ///
    /// # Errors
    /// `base` is not an `http://` or `https://` URL.
    pub fn new(base: &str) -> Result<Self> {
        Self::builder(base).build()
    }

    /// Like [`Client::new`], sending `Authorization: Bearer <token>` on every call.
    ///
    /// # Errors
    /// `base` is not an `http://` or `https://` URL, or the token is not a
    /// valid header value.
    pub fn with_token(base: &str, token: &str) -> Result<Self> {
        Self::builder(base).token(token).build()
    }

    /// A client with more options: a token, a private CA.
    pub fn builder(base: &str) -> ClientBuilder {
        ClientBuilder {
            base: base.to_owned(),
            token: None,
            ca_pem: None,
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request; transport failures become [`Error::Unreachable`].
    async fn send(&self, req: RequestBuilder) -> Result<Response> {
        req.send().await.map_err(|source| Error::Unreachable {
            url: source
                .url()
                .map(|u| u.to_string())
                .unwrap_or_else(|| self.base.clone()),
            source,
        })
    }

    /// Sends a request and returns the answer if its status is `want`;
    /// any other answer becomes [`Error::Rejected`] (see [`refusal`]).
    async fn send_expecting(&self, req: RequestBuilder, want: StatusCode) -> Result<Response> {
        let resp = self.send(req).await?;
        if resp.status() != want {
            return Err(refusal(resp).await);
        }
        Ok(resp)
    }

    fn submit_request(&self, path: &str, payload: Bytes, opts: &SubmitOptions) -> RequestBuilder {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(q) = &opts.queue {
            query.push(("queue", q.clone()));
        }
        if let Some(p) = opts.priority {
            query.push(("priority", p.to_string()));
        }
        if let Some(t) = opts.timeout {
            query.push(("timeout", format!("{}", t.as_secs_f64())));
        }
        let mut req = self.http.post(self.url(path)).query(&query).body(payload);
        if let Some(k) = &opts.idempotency_key {
            req = req.header("idempotency-key", k);
        }
        if let Some(ct) = &opts.content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        req
    }

    /// Submits a job and waits for its result (`POST /api/submit`).
    ///
    /// # Errors
    /// [`Error::JobFailed`], [`Error::JobCancelled`], [`Error::StillRunning`]
    /// (the wait timed out; the job goes on), [`Error::Rejected`] (e.g. `503`
    /// queue full), [`Error::Unreachable`].
    pub async fn submit(
        &self,
        payload: impl Into<Bytes>,
        opts: &SubmitOptions,
    ) -> Result<Completed> {
        let resp = self
            .send(self.submit_request("/api/submit", payload.into(), opts))
            .await?;
        match resp.status() {
            StatusCode::OK => {
                #[derive(Deserialize)]
                struct Done {
                    job_id: String,
                    payload: Box<RawValue>,
                    #[serde(default)]
                    payload_encoding: Option<String>,
                }
                let d: Done = json(resp).await?;
                Ok(Completed {
                    result: decode_payload(&d.payload, d.payload_encoding.as_deref())?,
                    job_id: d.job_id,
                })
            }
            StatusCode::ACCEPTED => {
                let a: Accepted = json(resp).await?;
                Err(Error::StillRunning { job_id: a.job_id })
            }
            _ => Err(refusal(resp).await),
        }
    }

    /// Submits a job without waiting (`POST /api/jobs`); returns its id.
    ///
    /// # Errors
    /// [`Error::Rejected`], [`Error::Unreachable`].
    pub async fn submit_async(
        &self,
        payload: impl Into<Bytes>,
        opts: &SubmitOptions,
    ) -> Result<String> {
        let resp = self
            .send_expecting(
                self.submit_request("/api/jobs", payload.into(), opts),
                StatusCode::ACCEPTED,
            )
            .await?;
        let a: Accepted = json(resp).await?;
        Ok(a.job_id)
    }

    /// Submits a job and streams its events (`POST /api/submit` with
    /// `Accept: text/event-stream`): progress events as the worker sends
    /// them, then exactly one final event ([`JobEvent::is_final`]). A server
    /// that answers without streaming gives just the final event.
    ///
    /// # Errors
    /// [`Error::Rejected`] (e.g. `503` queue full), [`Error::Unreachable`];
    /// the stream's items fail with [`Error::Unreachable`] if the
    /// connection breaks.
    pub async fn stream(
        &self,
        payload: impl Into<Bytes>,
        opts: &SubmitOptions,
    ) -> Result<JobEvents> {
        let req = self
            .submit_request("/api/submit", payload.into(), opts)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        JobEvents::open(self.send(req).await?).await
    }

    /// Streams job `id`'s events (`GET /api/jobs/{id}/events`): those
    /// after `after` (the `seq` of the last progress event seen, to resume
    /// after a dropped connection) still buffered, live ones, then its
    /// final event.
    ///
    /// # Errors
    /// [`Error::Rejected`] with `404` for an unknown id, [`Error::Unreachable`].
    pub async fn job_events(&self, id: &str, after: Option<u64>) -> Result<JobEvents> {
        let mut req = self
            .http
            .get(self.url(&format!("/api/jobs/{id}/events")))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(after) = after {
            req = req.header("last-event-id", after.to_string());
        }
        JobEvents::open(self.send(req).await?).await
    }

    /// The job as it stands (`GET /api/jobs/{id}`).
    ///
    /// # Errors
    /// [`Error::Rejected`] with `404` for an unknown or expired id.
    pub async fn job(&self, id: &str) -> Result<JobView> {
        self.job_wait(id, Duration::ZERO).await
    }

    /// The job once it has ended, or as it stands after `wait`
    /// (`GET /api/jobs/{id}?wait=N`).
    ///
    /// # Errors
    /// As [`Client::job`].
    pub async fn job_wait(&self, id: &str, wait: Duration) -> Result<JobView> {
        let mut req = self.http.get(self.url(&format!("/api/jobs/{id}")));
        if !wait.is_zero() {
            req = req.query(&[("wait", wait.as_secs_f64().to_string())]);
        }
        let resp = self.send_expecting(req, StatusCode::OK).await?;
        json::<RawJobView>(resp).await?.into_view()
    }

    /// Cancels a job (`DELETE /api/jobs/{id}`); returns it as cancelled.
    ///
    /// # Errors
    /// [`Error::Rejected`]: `404` unknown id, `409` the job already ended.
    pub async fn cancel(&self, id: &str) -> Result<JobView> {
        let resp = self
            .send_expecting(
                self.http.delete(self.url(&format!("/api/jobs/{id}"))),
                StatusCode::OK,
            )
            .await?;
        json::<RawJobView>(resp).await?.into_view()
    }

    /// `GET /api/admin/stats`, as the server sends it.
    ///
    /// # Errors
    /// [`Error::Rejected`] (e.g. `401`/`403`), [`Error::Unreachable`].
    pub async fn stats(&self) -> Result<serde_json::Value> {
        let resp = self
            .send_expecting(self.http.get(self.url("/api/admin/stats")), StatusCode::OK)
            .await?;
        json(resp).await
    }

    /// `GET /api/admin/events`: the dashboard's stream (the per-second
    /// ring as `history`, then a `snapshot` each second).
    ///
    /// # Errors
    /// [`Error::Rejected`] (e.g. `401`/`403`), [`Error::Unreachable`].
    pub async fn events(&self) -> Result<EventStream> {
        let resp = self
            .send_expecting(
                self.http
                    .get(self.url("/api/admin/events"))
                    .header("accept", "text/event-stream"),
                StatusCode::OK,
            )
            .await?;
        Ok(EventStream {
            resp,
            buf: String::new(),
        })
    }

    /// `GET /api/admin/jobs`: newest first, at most `limit` (server default 100).
    ///
    /// # Errors
    /// [`Error::Rejected`] (e.g. an unknown status), [`Error::Unreachable`].
    pub async fn jobs(
        &self,
        status: Option<&str>,
        queue: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<JobView>> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(s) = status {
            q.push(("status", s.to_owned()));
        }
        if let Some(s) = queue {
            q.push(("queue", s.to_owned()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        let resp = self
            .send_expecting(
                self.http.get(self.url("/api/admin/jobs")).query(&q),
                StatusCode::OK,
            )
            .await?;
        #[derive(Deserialize)]
        struct List {
            jobs: Vec<RawJobView>,
        }
        let l: List = json(resp).await?;
        l.jobs.into_iter().map(RawJobView::into_view).collect()
    }

    /// `DELETE /api/admin/clear[?queue=]`: returns how many jobs were cancelled.
    ///
    /// # Errors
    /// [`Error::Rejected`], [`Error::Unreachable`].
    pub async fn clear(&self, queue: Option<&str>) -> Result<u64> {
        let mut req = self.http.delete(self.url("/api/admin/clear"));
        if let Some(q) = queue {
            req = req.query(&[("queue", q)]);
        }
        let resp = self.send_expecting(req, StatusCode::OK).await?;
        #[derive(Deserialize)]
        struct Cleared {
            #[serde(default)]
            cancelled: u64,
        }
        Ok(json::<Cleared>(resp).await?.cancelled)
    }

    /// A worker taking jobs from `queues` (the first non-empty wins; empty =
    /// the `default` queue).
    pub fn worker(&self, queues: Vec<String>) -> Worker {
        Worker::new(self.clone(), queues)
    }
}

/// One event of a job's stream ([`Client::stream`], [`Client::job_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// What the worker reported, as bytes (decoded like a payload).
    Progress {
        /// Its number within the job (resume after it with [`Client::job_events`]).
        seq: u64,
        /// The bytes the worker sent.
        data: Bytes,
    },
    /// This many events were dropped from the server's buffer before this
    /// client read them.
    Gap {
        /// How many.
        dropped: u64,
    },
    /// Final: the job completed.
    Result(Completed),
    /// Final: the job failed.
    Failed {
        /// The job.
        job_id: String,
        /// Hand-outs it had.
        attempts: u32,
        /// The worker's error.
        error: String,
    },
    /// Final: the job was cancelled.
    Cancelled {
        /// The job.
        job_id: String,
    },
    /// Final: the wait ended first; the job goes on.
    Accepted {
        /// The job.
        job_id: String,
    },
}

impl JobEvent {
    /// Whether this event ends the stream.
    pub fn is_final(&self) -> bool {
        !matches!(self, JobEvent::Progress { .. } | JobEvent::Gap { .. })
    }

    /// A final event as the result [`Client::submit`] would have returned.
    ///
    /// # Errors
    /// [`Error::JobFailed`], [`Error::JobCancelled`], [`Error::StillRunning`];
    /// [`Error::Protocol`] for an event that is not final.
    pub fn into_result(self) -> Result<Completed> {
        match self {
            JobEvent::Result(c) => Ok(c),
            JobEvent::Failed {
                job_id,
                attempts,
                error,
            } => Err(Error::JobFailed {
                job_id,
                attempts,
                error,
            }),
            JobEvent::Cancelled { job_id } => Err(Error::JobCancelled { job_id }),
            JobEvent::Accepted { job_id } => Err(Error::StillRunning { job_id }),
            other => Err(Error::Protocol(format!("not a final event: {other:?}"))),
        }
    }

    /// Parses one Server-Sent Event of a job stream.
    fn parse(ev: &SseEvent) -> Result<JobEvent> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::Protocol(format!("malformed {} event ({e}): {}", ev.event, ev.data))
        };
        #[derive(Deserialize)]
        struct Final {
            job_id: String,
            #[serde(default)]
            payload: Option<Box<RawValue>>,
            #[serde(default)]
            payload_encoding: Option<String>,
            #[serde(default)]
            error: Option<String>,
            #[serde(default)]
            attempts: Option<u32>,
        }
        let fin = || serde_json::from_str::<Final>(&ev.data).map_err(|e| bad(&e));
        Ok(match ev.event.as_str() {
            "progress" => {
                let seq = ev
                    .id
                    .as_deref()
                    .and_then(|i| i.parse().ok())
                    .ok_or_else(|| bad(&"no numeric id"))?;
                let raw = RawValue::from_string(ev.data.clone()).map_err(|e| bad(&e))?;
                JobEvent::Progress {
                    seq,
                    data: decode_payload(&raw, None)?,
                }
            }
            "gap" => {
                #[derive(Deserialize)]
                struct Gap {
                    dropped: u64,
                }
                let g: Gap = serde_json::from_str(&ev.data).map_err(|e| bad(&e))?;
                JobEvent::Gap { dropped: g.dropped }
            }
            "result" => {
                let f = fin()?;
                let payload = f.payload.ok_or_else(|| bad(&"no payload"))?;
                JobEvent::Result(Completed {
                    result: decode_payload(&payload, f.payload_encoding.as_deref())?,
                    job_id: f.job_id,
                })
            }
            "failed" => {
                let f = fin()?;
                JobEvent::Failed {
                    job_id: f.job_id,
                    attempts: f.attempts.unwrap_or(0),
                    error: f.error.unwrap_or_default(),
                }
            }
            "cancelled" => JobEvent::Cancelled {
                job_id: fin()?.job_id,
            },
            "accepted" => JobEvent::Accepted {
                job_id: fin()?.job_id,
            },
            other => return Err(Error::Protocol(format!("unknown event {other:?}"))),
        })
    }
}

/// A job's event stream: a [`futures_util::Stream`] of [`JobEvent`]s that
/// ends after the final one.
pub struct JobEvents {
    job_id: Option<String>,
    inner: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<JobEvent>> + Send>>,
}

impl JobEvents {
    async fn open(resp: Response) -> Result<JobEvents> {
        let job_id = resp
            .headers()
            .get("x-job-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let streams = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !streams {
            // A server without streaming answers as a plain submit: one final event.
            let status = resp.status();
            let event = match status {
                StatusCode::OK => {
                    let text = resp.text().await.unwrap_or_default();
                    JobEvent::parse(&SseEvent {
                        event: "result".into(),
                        id: None,
                        data: text,
                    })?
                }
                StatusCode::ACCEPTED => JobEvent::Accepted {
                    job_id: json::<Accepted>(resp).await?.job_id,
                },
                _ => match refusal(resp).await {
                    Error::JobFailed {
                        job_id,
                        attempts,
                        error,
                    } => JobEvent::Failed {
                        job_id,
                        attempts,
                        error,
                    },
                    Error::JobCancelled { job_id } => JobEvent::Cancelled { job_id },
                    e => return Err(e),
                },
            };
            return Ok(JobEvents {
                job_id,
                inner: Box::pin(futures_util::stream::once(async move { Ok(event) })),
            });
        }
        let sse = EventStream {
            resp,
            buf: String::new(),
        };
        let inner = futures_util::stream::unfold(Some(sse), |sse| async move {
            let mut sse = sse?;
            match sse.next_event().await {
                Ok(Some(ev)) => {
                    let parsed = JobEvent::parse(&ev);
                    let done = parsed.as_ref().map_or(true, JobEvent::is_final);
                    Some((parsed, (!done).then_some(sse)))
                }
                Ok(None) => Some((
                    Err(Error::Protocol(
                        "the event stream ended without a final event".into(),
                    )),
                    None,
                )),
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(JobEvents {
            job_id,
            inner: Box::pin(inner),
        })
    }

    /// The job's id (from the answer's `X-Job-Id`).
    pub fn job_id(&self) -> Option<&str> {
        self.job_id.as_deref()
    }
}

impl futures_util::Stream for JobEvents {
    type Item = Result<JobEvent>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A completed job's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The job.
    pub job_id: String,
    /// The worker's result, as bytes.
    pub result: Bytes,
}

#[derive(Deserialize)]
struct Accepted {
    job_id: String,
}

/// Reads a JSON answer.
async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T> {
    let url = resp.url().to_string();
    let bytes = resp.bytes().await.map_err(|source| Error::Unreachable {
        url: url.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Protocol(format!("malformed JSON from {url}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn payloads_decode_back_to_bytes() {
        assert_eq!(
            decode_payload(&raw(r#"{"a": 1}"#), None).unwrap(),
            &br#"{"a": 1}"#[..]
        );
        assert_eq!(
            decode_payload(&raw(r#""HELLO\n""#), None).unwrap(),
            &b"HELLO\n"[..]
        );
        assert_eq!(decode_payload(&raw("42"), None).unwrap(), &b"42"[..]);
        assert_eq!(
            decode_payload(&raw(r#""/wAQ""#), Some("base64")).unwrap(),
            &[0xff, 0x00, 0x10][..]
        );
        assert!(decode_payload(&raw(r#""!!""#), Some("base64")).is_err());
    }

    #[test]
    fn server_timestamps_parse() {
        let t = parse_time("2026-11-28T14:39:56.123456Z").unwrap();
        assert!(t > SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn only_http_and_https_urls() {
        assert!(Client::new("http://127.0.0.1:3000/").is_ok());
        assert_eq!(Client::new("http://h:1/").unwrap().base_url(), "http://h:1");
        assert!(Client::new("https://h").is_ok());
        assert!(Client::new("ftp://h").is_err());
        assert!(Client::new("nowhere").is_err());
        assert!(Client::builder("https://h")
            .ca_cert_pem(b"not pem")
            .build()
            .is_err());
        let b = Client::builder("https://h").token("s3cret");
        assert!(!format!("{b:?}").contains("s3cret"));
    }
}
