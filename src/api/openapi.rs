//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated
//! with utoipa from the `#[utoipa::path]` annotation on each handler and the
//! body shapes below (which exist only to describe the JSON the handlers
//! write with [`super::encode`]). The roles' security requirements and the
//! answers every role route shares (401, 403, 503) are added by [`Roles`]
//! from [`Role::for_http_path`], the same function the auth middleware uses,
//! so the document cannot claim a role the server does not enforce.
//!
//! Adding a route: annotate its handler with `#[utoipa::path(...)]` and list
//! it in [`ApiDoc`]'s `paths(...)`; `tests/openapi.rs` fails, naming the
//! route, while a routed method is missing from the document or the other
//! way round ([`super::RouteTable`] records what the router serves).
// The schema types are never built (they only describe), and enum variants
// are self-explanatory wire names.
#![allow(dead_code, missing_docs)]

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HttpMethod, OpenApi as Document, PathItem, RefOr, ResponseBuilder,
};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use uuid::Uuid;

use crate::auth::Role;

/// The document as served, by which roles need no token on this server
/// (bit 0 client, 1 worker, 2 admin): built once per combination. Tokens
/// can change on SIGHUP, so the combination is looked up per request.
static SERVED: [OnceLock<Vec<u8>>; 8] = [const { OnceLock::new() }; 8];

const ROLES: [Role; 3] = [Role::Client, Role::Worker, Role::Admin];

/// The document (for tests and tools): every role needs its token.
pub fn document() -> Document {
    ApiDoc::openapi()
}

/// The document for a server where the roles in `open` need no token: on
/// their routes a token becomes optional (an empty security requirement,
/// `{}`, among the alternatives). Open admin routes answer loopback
/// clients only, which the 403 of those routes says.
pub fn document_for(open: &[Role]) -> Document {
    let mut doc = document();
    for (path, item) in doc.paths.paths.iter_mut() {
        let Some(role) = Role::for_http_path(path) else {
            continue;
        };
        if !open.contains(&role) {
            continue;
        }
        for (_, op) in operations(item) {
            op.security
                .get_or_insert_with(Vec::new)
                .push(SecurityRequirement::default());
        }
    }
    doc
}

/// [`document_for`] as JSON, as served. utoipa 5 writes a link's fields
/// in snake case (`operation_id`); OpenAPI spells them in camel case.
pub fn document_json(open: &[Role]) -> serde_json::Value {
    let mut doc =
        serde_json::to_value(document_for(open)).expect("the OpenAPI document serializes");
    fn fix_links(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Object(links)) = m.get_mut("links") {
                    for link in links.values_mut() {
                        if let serde_json::Value::Object(l) = link {
                            for (from, to) in [
                                ("operation_id", "operationId"),
                                ("operation_ref", "operationRef"),
                                ("request_body", "requestBody"),
                            ] {
                                if let Some(x) = l.remove(from) {
                                    l.insert(to.into(), x);
                                }
                            }
                        }
                    }
                }
                m.values_mut().for_each(fix_links);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(fix_links),
            _ => {}
        }
    }
    fix_links(&mut doc);
    doc
}

/// This document
///
/// `GET /openapi.json`: the document as it holds for this server's tokens.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = serde_json::Value)),
)]
pub async fn openapi_json(State(st): State<super::AppState>) -> Response {
    let open: Vec<Role> = ROLES
        .into_iter()
        .filter(|r| !st.auth.requires_token(*r))
        .collect();
    let key = ROLES
        .iter()
        .enumerate()
        .filter(|(_, r)| open.contains(r))
        .fold(0, |k, (i, _)| k | 1 << i);
    let body = SERVED[key].get_or_init(|| {
        serde_json::to_vec(&document_json(&open)).expect("the OpenAPI document serializes")
    });
    super::json(StatusCode::OK, body.clone())
}

/// Every route's documentation. A route's handler carries its
/// `#[utoipa::path]`; list it here too.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "jobq",
        description = "A synchronous job queue: a client's request is held open until a worker \
            completes its job. Payloads and results are arbitrary bytes, embedded in JSON answers \
            as the JSON value they parse as, else as a string, else (not UTF-8) as base64 with a \
            sibling `payload_encoding: \"base64\"`. A role whose token is not configured is open \
            (admin: loopback clients only); the admin token is accepted on every route. \
            Every route may also answer 413 (body over --max-body).",
    ),
    paths(
        super::jobs::submit,
        super::jobs::submit_async,
        super::jobs::get_job,
        super::jobs::events,
        super::jobs::cancel,
        super::workers::poll,
        super::workers::complete,
        super::workers::fail,
        super::workers::heartbeat,
        super::workers::progress,
        super::admin::stats,
        super::admin::clear,
        super::admin::next,
        super::admin::jobs,
        super::admin::health,
        crate::dashboard::page_index,
        crate::dashboard::metrics_text,
        crate::dashboard::events,
        crate::dashboard::job_detail,
        openapi_json,
    ),
    components(schemas(
        Error, JobFailedError, Status, PayloadEncoding, SubmitDone, Accepted, JobView, JobWithInput,
        Handout, Batch, Completed, FailReport, FailDone, HeartbeatDone, ProgressDone, JobEvent, JobEventKind, Stats, StatusCounts,
        Cleared, JobList, Health, JobDetail, PayloadFormat, HandoutOrBatch, CompletedOrNext,
        FailedOrNext
    )),
    modifiers(&Roles, &Assets, &AnyBody),
    tags(
        (name = "client", description = "Submit jobs and read their results (client token)"),
        (name = "worker", description = "Take jobs and post their results (worker token)"),
        (name = "admin", description = "Counters, listing, clearing (admin token; loopback only without one)"),
        (name = "meta", description = "Open: health, metrics, the dashboard, this document"),
    ),
)]
pub struct ApiDoc;

// ---- Body shapes ---------------------------------------------------------

/// An error answer. `job_id` (and the `X-Job-Id` header) when the error is
/// about one job.
#[derive(ToSchema)]
pub struct Error {
    /// A human-readable sentence.
    error: String,
    #[schema(required = false)]
    job_id: Uuid,
}

/// What complete and fail answer besides their own `200`: they take the
/// same parameters and refuse alike, so it is stated once for both.
#[derive(utoipa::IntoResponses)]
pub enum FinishAnswers {
    #[response(
        status = 204,
        description = "With `next`: recorded, and no job came within `wait`"
    )]
    NoneNext,
    #[response(
        status = 400,
        description = "Malformed id, lease, next, queue, wait or max"
    )]
    BadRequest(Error),
    #[response(status = 404, description = "Unknown job", headers(("X-Job-Id" = String)))]
    NotFound(Error),
    #[response(
        status = 409,
        description = "The job is not running, or the lease is stale",
        headers(("X-Job-Id" = String))
    )]
    Conflict(Error),
    #[response(status = 413, description = "Body over --max-body")]
    TooLarge(Error),
    #[response(
        status = 503,
        description = "With `next` while shutting down (recorded); store unusable",
        headers(("Retry-After" = String))
    )]
    Unavailable(Error),
}

/// The refusals heartbeat and progress share (their `409`s say different
/// things).
#[derive(utoipa::IntoResponses)]
pub enum LeaseCallRefusals {
    #[response(status = 400, description = "Malformed id or lease")]
    BadRequest(Error),
    #[response(status = 404, description = "Unknown job", headers(("X-Job-Id" = String)))]
    NotFound(Error),
}

/// `502` of a submit whose job failed.
#[derive(ToSchema)]
pub struct JobFailedError {
    /// The worker's error text (or the lease-expiry text).
    error: String,
    job_id: Uuid,
    /// Hand-outs the job had.
    #[schema(minimum = 0)]
    attempts: u32,
}

/// A job's status: the wire names of [`crate::job::Status::ALL`], so that
/// the document lists every status the server writes.
pub struct Status;

impl utoipa::PartialSchema for Status {
    fn schema() -> RefOr<utoipa::openapi::Schema> {
        use crate::job::Status;
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Status::ALL.map(Status::as_str)))
            .description(Some("A job's status."))
            .into()
    }
}

impl ToSchema for Status {}

/// The kind of one event of a job's stream.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum JobEventKind {
    Progress,
    Gap,
    Result,
    Failed,
    Cancelled,
    Accepted,
}

/// One Server-Sent Event of a job's stream: `progress` (with `id`, its
/// `seq`; `data` the worker's bytes as one JSON value by the payload
/// encoding), `gap` (`{"dropped": N}`), then exactly one final event whose
/// `data` is the body the plain answer would have had: `result` (the `200`
/// body), `failed` (`502`), `cancelled` (`410`) or `accepted` (`202`).
#[derive(ToSchema)]
pub struct JobEvent {
    event: JobEventKind,
    /// A progress event's number within the job (resume after it with `Last-Event-ID`).
    #[schema(pattern = "^[0-9]+$")]
    id: Option<String>,
    /// JSON text.
    data: String,
}

/// Present (as `base64`) when the sibling payload was not UTF-8 and is
/// embedded as a base64 string.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum PayloadEncoding {
    Base64,
}

/// `200` of a sync submit: the worker's result.
#[derive(ToSchema)]
pub struct SubmitDone {
    job_id: Uuid,
    /// The result: any JSON value (JSON bytes as that value, other UTF-8 as
    /// a string, other bytes as base64).
    payload: serde_json::Value,
    #[schema(required = false)]
    payload_encoding: PayloadEncoding,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    completed_at: String,
}

/// `202`: the job goes on; read it at `location`.
#[derive(ToSchema)]
pub struct Accepted {
    job_id: Uuid,
    status: Status,
    /// `/api/jobs/{id}`.
    location: String,
}

/// A job as `GET /api/jobs/{id}` shows it.
#[derive(ToSchema)]
pub struct JobView {
    job_id: Uuid,
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    queue: String,
    status: Status,
    /// Hand-outs so far.
    #[schema(minimum = 0)]
    attempts: u32,
    priority: i32,
    #[schema(format = DateTime)]
    created_at: String,
    /// The latest hand-out; `null` before the first.
    #[schema(format = DateTime, required = true)]
    started_at: Option<String>,
    /// When the job ended (completed, failed or cancelled); `null` until then.
    #[schema(format = DateTime, required = true)]
    completed_at: Option<String>,
    /// The result, once `completed` (payload encoding).
    #[schema(required = false)]
    payload: serde_json::Value,
    #[schema(required = false)]
    payload_encoding: PayloadEncoding,
    /// The (last) error: once failed, or pending after a failed attempt.
    #[schema(required = false)]
    error: String,
    /// Jobs ahead of it in its queue, while pending.
    #[schema(required = false, minimum = 0)]
    position: u64,
}

/// `GET /api/admin/next`: a pending job with what was submitted.
#[derive(ToSchema)]
pub struct JobWithInput {
    job_id: Uuid,
    queue: String,
    status: Status,
    #[schema(minimum = 0)]
    attempts: u32,
    priority: i32,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime, required = true)]
    started_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    completed_at: Option<String>,
    #[schema(required = false)]
    error: String,
    /// Always 0: this is the next job.
    #[schema(minimum = 0)]
    position: u64,
    /// The submitted body (payload encoding).
    payload: serde_json::Value,
    #[schema(required = false)]
    payload_encoding: PayloadEncoding,
    /// The submit's headers a worker sees.
    headers: std::collections::BTreeMap<String, String>,
}

/// `200` of a poll: the job is now leased to this worker.
#[derive(ToSchema)]
pub struct Handout {
    job_id: Uuid,
    /// The submitted body (payload encoding).
    payload: serde_json::Value,
    #[schema(required = false)]
    payload_encoding: PayloadEncoding,
    /// The submit's headers, lower-cased names, without hop-by-hop and
    /// credential headers.
    headers: std::collections::BTreeMap<String, String>,
    queue: String,
    /// This hand-out's number (1 for the first).
    #[schema(minimum = 1)]
    attempt: u32,
    priority: i32,
    /// The fencing token for complete, fail and heartbeat.
    lease_id: Uuid,
    #[schema(format = DateTime)]
    lease_expires_at: String,
    #[schema(format = DateTime)]
    created_at: String,
}

/// `200` of a batch poll (`?max=N`).
#[derive(ToSchema)]
pub struct Batch {
    #[schema(min_items = 1, max_items = 100)]
    jobs: Vec<Handout>,
}

/// `200` of a complete.
#[derive(ToSchema)]
pub struct Completed {
    /// `Job completed`.
    message: String,
    job_id: Uuid,
}

/// The body of a fail: both keys optional, others ignored. An empty body
/// counts as `{}`.
#[derive(ToSchema)]
pub struct FailReport {
    /// The error text (default `worker reported failure`); a non-string is
    /// stored as its JSON text.
    #[schema(required = false)]
    error: serde_json::Value,
    /// `false`: fail for good; otherwise retry while attempts remain.
    #[schema(required = false)]
    retry: Option<bool>,
}

/// `200` of a fail.
#[derive(ToSchema)]
pub struct FailDone {
    job_id: Uuid,
    /// `pending` (retried) or `failed`.
    status: Status,
    #[schema(minimum = 0)]
    attempts: u32,
}

/// `200` of a progress event.
#[derive(ToSchema)]
pub struct ProgressDone {
    job_id: Uuid,
    /// The event's number within the job, from 1.
    #[schema(minimum = 1)]
    seq: u64,
    #[schema(format = DateTime)]
    lease_expires_at: String,
}

/// `200` of a heartbeat.
#[derive(ToSchema)]
pub struct HeartbeatDone {
    job_id: Uuid,
    #[schema(format = DateTime)]
    lease_expires_at: String,
}

/// Jobs by status.
#[derive(ToSchema)]
pub struct StatusCounts {
    #[schema(minimum = 0)]
    total: u64,
    #[schema(minimum = 0)]
    pending: u64,
    #[schema(minimum = 0)]
    running: u64,
    #[schema(minimum = 0)]
    completed: u64,
    #[schema(minimum = 0)]
    failed: u64,
    #[schema(minimum = 0)]
    cancelled: u64,
}

/// `GET /api/admin/stats`.
#[derive(ToSchema)]
pub struct Stats {
    #[schema(minimum = 0)]
    total: u64,
    #[schema(minimum = 0)]
    pending: u64,
    #[schema(minimum = 0)]
    running: u64,
    #[schema(minimum = 0)]
    completed: u64,
    #[schema(minimum = 0)]
    failed: u64,
    #[schema(minimum = 0)]
    cancelled: u64,
    /// Requests waiting for a job on this node.
    #[schema(minimum = 0)]
    waiting_clients: u64,
    /// Long-polls in progress on this node.
    #[schema(minimum = 0)]
    polling_workers: u64,
    /// Per queue that holds any job.
    queues: std::collections::BTreeMap<String, StatusCounts>,
    #[schema(minimum = 0)]
    uptime_s: u64,
}

/// `200` of a clear.
#[derive(ToSchema)]
pub struct Cleared {
    /// `Queue cleared successfully`.
    message: String,
    /// Jobs cancelled.
    #[schema(minimum = 0)]
    cancelled: u64,
}

/// `GET /api/admin/jobs`: newest first.
#[derive(ToSchema)]
pub struct JobList {
    jobs: Vec<JobView>,
}

/// `GET /health`.
#[derive(ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    status: String,
    /// Why it is unavailable.
    #[schema(required = false)]
    error: String,
}

/// How a payload is embedded: `json`, `text` or `base64`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum PayloadFormat {
    Json,
    Text,
    Base64,
}

/// `GET /api/admin/jobs/{id}`: the job view plus its input and headers.
#[derive(ToSchema)]
pub struct JobDetail {
    job_id: Uuid,
    queue: String,
    status: Status,
    #[schema(minimum = 0)]
    attempts: u32,
    priority: i32,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime, required = true)]
    started_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    completed_at: Option<String>,
    #[schema(required = false)]
    payload: serde_json::Value,
    #[schema(required = false)]
    payload_encoding: PayloadEncoding,
    #[schema(required = false)]
    error: String,
    #[schema(required = false, minimum = 0)]
    position: u64,
    #[schema(format = DateTime, required = true)]
    lease_expires_at: Option<String>,
    #[schema(required = false)]
    result_format: PayloadFormat,
    /// Whether the submitted body is still kept (an ended job drops it).
    input_kept: bool,
    #[schema(required = false)]
    input: serde_json::Value,
    #[schema(required = false)]
    input_encoding: PayloadEncoding,
    #[schema(required = false)]
    input_format: PayloadFormat,
    #[schema(required = false, minimum = 0)]
    input_bytes: u64,
    #[schema(required = false)]
    headers: std::collections::BTreeMap<String, String>,
}

/// A schema that is one of several named ones.
macro_rules! one_of {
    ($(#[$doc:meta])* $name:ident: $($member:literal),+) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<utoipa::openapi::Schema> {
                utoipa::openapi::schema::OneOfBuilder::new()
                    $(.item(utoipa::openapi::Ref::from_schema_name($member)))+
                    .into()
            }
        }

        impl ToSchema for $name {}
    };
}

one_of!(
    /// A poll's `200`: one job, or with `max` a batch.
    HandoutOrBatch: "Handout", "Batch"
);
one_of!(
    /// A complete's `200`: done, or with `next` a poll's answer.
    CompletedOrNext: "Completed", "Handout", "Batch"
);
one_of!(
    /// A fail's `200`: recorded, or with `next` a poll's answer.
    FailedOrNext: "FailDone", "Handout", "Batch"
);

// ---- Parameters shared by several routes ---------------------------------

/// The query of a submit.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubmitQuery {
    /// One queue name (default `default`).
    #[param(required = false, pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    queue: String,
    /// Higher is handed out first (default 0).
    #[param(required = false)]
    priority: i32,
    /// Seconds to wait for the result (default `--wait-timeout`); `0` waits
    /// forever; above 3600 counts as 3600. Wins over `Prefer: wait`.
    #[param(required = false, minimum = 0)]
    timeout: f64,
}

/// The headers of a submit (besides the ones passed on to the worker).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct SubmitHeaders {
    /// A second submit with the same key attaches to the first job
    /// (422 if its body or queue differ): 1 to 255 visible ASCII
    /// characters, spaces and tabs allowed between them.
    #[param(
        rename = "Idempotency-Key",
        required = false,
        pattern = "^[\\x21-\\x7e]([\\x20-\\x7e\\t]{0,253}[\\x21-\\x7e])?$"
    )]
    idempotency_key: String,
    /// `wait=N` (RFC 7240): seconds to wait, as `timeout`; other
    /// preferences are ignored.
    #[param(rename = "Prefer", required = false)]
    prefer: String,
    /// `text/event-stream` (`/api/submit` only): answer with the job's
    /// progress events as Server-Sent Events, ending with one final event
    /// (`result`, `failed`, `cancelled` or `accepted`).
    #[param(rename = "Accept", required = false)]
    accept: String,
}

/// Where a re-attached event stream resumes.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct EventsHeaders {
    /// The `id` (`seq`) of the last progress event received: only later
    /// ones are sent (empty: from the start).
    #[param(rename = "Last-Event-ID", required = false, schema_with = seq_number)]
    last_event_id: u64,
}

fn seq_number() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some("^[ \\t]*([0-9]{1,19})?[ \\t]*$"))
        .build()
}

/// The queues a worker takes from, and how long it waits.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// `a,b,…`: the first listed queue with a pending job wins (default
    /// `default`); whitespace around a name is ignored.
    #[param(
        required = false,
        pattern = "^[ \\t\\r\\n]*[A-Za-z0-9._:-]{1,128}[ \\t\\r\\n]*(,[ \\t\\r\\n]*[A-Za-z0-9._:-]{1,128}[ \\t\\r\\n]*)*$"
    )]
    queue: String,
    /// Long-poll: hold up to N seconds for a job (default 0); above 3600
    /// counts as 3600.
    #[param(required = false, minimum = 0)]
    wait: f64,
    /// Batch poll: up to N jobs (above 100 counts as 100), answered as `{"jobs": [...]}`.
    #[param(required = false, schema_with = positive_integer)]
    max: u64,
}

/// The fencing token of complete, fail and heartbeat, in the query.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeaseQuery {
    /// The `lease_id` of the hand-out (wins over `X-Lease-Id`).
    #[param(required = false)]
    lease: Uuid,
}

/// The fencing token of complete, fail and heartbeat, as a header.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct LeaseHeader {
    /// The `lease_id` of the hand-out.
    #[param(rename = "X-Lease-Id", required = false)]
    x_lease_id: Uuid,
}

/// Complete-and-take-next: with `next=1` the answer is a poll's (taking
/// `queue`, `wait` and `max` of this query).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NextQuery {
    /// `1`, `true` or empty: also take the next job; `0`/`false`: the plain call.
    #[param(required = false, schema_with = next_values)]
    next: String,
}

/// The values `next` takes. (A derived enum cannot have the empty string
/// as a value: its variant's name was written instead.)
fn next_values() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["1", "true", "", "0", "false"]))
        .build()
}

/// The query of `GET /api/admin/jobs`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// One status (empty: any).
    #[param(
        required = false,
        pattern = "^(|pending|running|completed|failed|cancelled)$"
    )]
    status: String,
    /// One queue.
    #[param(required = false, pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    queue: String,
    /// At most this many (default 100; above 1000 counts as 1000).
    #[param(required = false, schema_with = positive_integer)]
    limit: u64,
}

/// A positive integer of any size (larger ones are clamped by the server,
/// so no `int64` bound is claimed).
fn positive_integer() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(1))
        .build()
}

/// A job id in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    /// The job's id (a UUID).
    id: Uuid,
}

// ---- Modifiers ---------------------------------------------------------

/// The security scheme name of a role's token.
fn scheme(role: Role) -> String {
    format!("{}_token", role.name())
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "Error",
                ))))
                .build(),
        )
        .build()
        .into()
}

fn header(description: &str) -> utoipa::openapi::header::Header {
    utoipa::openapi::header::HeaderBuilder::new()
        .schema(utoipa::openapi::schema::Object::with_type(
            utoipa::openapi::schema::Type::String,
        ))
        .description(Some(description))
        .build()
}

/// The operations of a path item, each with its method.
fn operations(item: &mut PathItem) -> Vec<(HttpMethod, &mut Operation)> {
    let PathItem {
        get,
        put,
        post,
        delete,
        options,
        head,
        patch,
        trace,
        ..
    } = item;
    [
        (HttpMethod::Get, get),
        (HttpMethod::Put, put),
        (HttpMethod::Post, post),
        (HttpMethod::Delete, delete),
        (HttpMethod::Options, options),
        (HttpMethod::Head, head),
        (HttpMethod::Patch, patch),
        (HttpMethod::Trace, trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
    .collect()
}

/// Security schemes (a bearer token per role), each route's tag (its
/// role), and on each route of a role: its security requirement (the role's token or the admin's) and
/// the answers of the auth middleware and of an unusable store.
struct Roles;

impl Modify for Roles {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        for role in [Role::Client, Role::Worker, Role::Admin] {
            components.add_security_scheme(
                scheme(role),
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(format!(
                            "`Authorization: Bearer <{} token>`, required once the role has a \
                             token (`--{}-token`, `--token-file`)",
                            role.name(),
                            role.name()
                        )))
                        .build(),
                ),
            );
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let role = Role::for_http_path(path);
            for (_, op) in operations(item) {
                // A route's tag is the role whose token it needs, by the
                // rule the auth layer applies (`meta`: open routes).
                op.tags = Some(vec![role.map_or("meta", Role::name).to_owned()]);
                let Some(role) = role else {
                    continue;
                };
                let mut security =
                    vec![SecurityRequirement::new(scheme(role), Vec::<String>::new())];
                if role != Role::Admin {
                    security.push(SecurityRequirement::new(
                        scheme(Role::Admin),
                        Vec::<String>::new(),
                    ));
                }
                op.security = Some(security);
                let responses = &mut op.responses.responses;
                let mut unauthorized = error_response(
                    "No token, a malformed one or an unknown one, while the role needs one",
                );
                if let RefOr::T(r) = &mut unauthorized {
                    r.headers
                        .insert("WWW-Authenticate".into(), header("`Bearer`"));
                }
                responses.entry("401".into()).or_insert(unauthorized);
                responses.entry("403".into()).or_insert_with(|| {
                    error_response(
                        "A valid token of another role; an admin route from a non-loopback \
                         peer while no admin token is set",
                    )
                });
                responses.entry("503".into()).or_insert_with(|| {
                    let mut r = error_response("The store cannot be used right now");
                    if let RefOr::T(r) = &mut r {
                        r.headers
                            .insert("Retry-After".into(), header("Seconds (`1`)"));
                    }
                    r
                });
            }
        }
    }
}

/// The dashboard's static files, one path each (from the table the
/// dashboard serves them from).
struct Assets;

impl Modify for Assets {
    fn modify(&self, doc: &mut Document) {
        for (path, content_type) in crate::dashboard::asset_paths() {
            let op = utoipa::openapi::path::OperationBuilder::new()
                .tag("meta")
                .summary(Some("A file of the dashboard page"))
                .response(
                    "200",
                    ResponseBuilder::new().description("The file").content(
                        content_type,
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::schema::Object::with_type(
                                utoipa::openapi::schema::Type::String,
                            )))
                            .build(),
                    ),
                )
                .build();
            doc.paths
                .paths
                .insert(path.to_owned(), PathItem::new(HttpMethod::Get, op));
        }
    }
}

/// Request bodies of any bytes (submit, complete, progress): offered as JSON, text
/// and binary, so that generated requests cover the three payload encodings.
struct AnyBody;

impl AnyBody {
    fn body() -> utoipa::openapi::request_body::RequestBody {
        use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
        utoipa::openapi::request_body::RequestBodyBuilder::new()
            .description(Some(
                "Any bytes, stored exactly as received (up to --max-body); an empty body is allowed",
            ))
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::T(utoipa::openapi::Schema::Object(
                        ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
                            .build(),
                    ))))
                    .build(),
            )
            .content(
                "text/plain",
                ContentBuilder::new()
                    .schema(Some(Object::with_type(Type::String)))
                    .build(),
            )
            .content(
                "application/octet-stream",
                ContentBuilder::new()
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .content_media_type("application/octet-stream"),
                    ))
                    .build(),
            )
            .build()
    }
}

impl Modify for AnyBody {
    fn modify(&self, doc: &mut Document) {
        for path in [
            "/api/submit",
            "/api/jobs",
            "/api/worker/complete/{id}",
            "/api/worker/progress/{id}",
        ] {
            if let Some(op) = doc.paths.paths.get_mut(path).and_then(|i| i.post.as_mut()) {
                op.request_body = Some(Self::body());
            }
        }
    }
}

/// Every (method, path) the document describes, e.g. `GET /health`.
pub fn documented() -> Vec<(String, String)> {
    let mut doc = document();
    let mut out = Vec::new();
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, _) in operations(item) {
            let m = serde_json::to_value(&method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_ascii_uppercase))
                .unwrap_or_default();
            out.push((m, path.clone()));
        }
    }
    out.sort();
    out
}
