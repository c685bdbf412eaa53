//! `GET /openapi.json` holds to the router and to the server's answers:
//! every routed method is documented and every documented one is routed
//! (compared from the router's own route table and probed on the real
//! server), and real answers validate against the document's schemas.

mod common;

use common::{Kind, Reply, TestServer};
use serde_json::{json, Value};

/// Role tokens, one place for each: the flag that sets it and the calls
/// that present it must agree.
const CLIENT_TOKEN: &str = "openapi-client-token-0123456789";
const WORKER_TOKEN: &str = "openapi-worker-token-0123456789";
const ADMIN_TOKEN: &str = "openapi-admin-token-01234567890";

/// What to do when this test names a missing route.
const HOW: &str = "annotate the handler with #[utoipa::path(...)] and list it in ApiDoc's \
                   paths(...) in src/api/openapi.rs";

#[test]
fn every_route_is_documented_and_every_documented_route_is_routed() {
    let routed = jobq::api::routes().served();
    let documented = jobq::api::openapi::documented();
    let mut problems = Vec::new();
    for (m, p) in &routed {
        if !documented.contains(&(m.clone(), p.clone())) {
            problems.push(format!(
                "{m} {p} is routed but missing from /openapi.json: {HOW}"
            ));
        }
    }
    for (m, p) in &documented {
        if !routed.contains(&(m.clone(), p.clone())) {
            problems.push(format!(
                "{m} {p} is in /openapi.json but not routed (src/api/mod.rs, routes())"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every `$ref` names a schema the document holds.
    let doc = jobq::api::openapi::document_json(&[]);
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {r}: list the type in ApiDoc's components(schemas(...))"
        );
    }
    // The comparison is not vacuous.
    assert!(routed.len() >= 20, "{routed:?}");
    assert!(routed.contains(&("POST".into(), "/api/submit".into())));
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// A server that asks for the client and worker tokens, and with `admin`
/// for the admin token too.
async fn start_with_tokens(admin: bool) -> TestServer {
    let mut flags = vec![
        "--client-token",
        CLIENT_TOKEN,
        "--worker-token",
        WORKER_TOKEN,
    ];
    if admin {
        flags.extend(["--admin-token", ADMIN_TOKEN]);
    }
    TestServer::start_with(Kind::Memory, &flags).await
}

#[tokio::test]
async fn the_document_is_served_openly_and_every_documented_route_answers() {
    let s = start_with_tokens(true).await;
    // Open, like /health: no token needed.
    let r = s.get("/openapi.json").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), "application/json");
    let doc = r.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc, jobq::api::openapi::document_json(&[]));
    for scheme in ["client_token", "worker_token", "admin_token"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"],
            "bearer"
        );
    }
    assert_eq!(
        doc["paths"]["/api/submit"]["post"]["security"],
        json!([{"client_token": []}, {"admin_token": []}])
    );
    assert!(doc["paths"]["/health"]["get"]["security"].is_null());
    // Found by schemathesis: `next` listed "Empty" instead of "".
    let next = doc["paths"]["/api/worker/fail/{id}"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "next")
        .unwrap();
    assert_eq!(
        next["schema"]["enum"],
        json!(["1", "true", "", "0", "false"])
    );
    // Links name their target as OpenAPI spells it, and the target exists.
    let link = &doc["paths"]["/api/jobs"]["post"]["responses"]["202"]["links"]["GetJob"];
    assert_eq!(link["operationId"], "get_job", "{link}");
    assert_eq!(
        doc["paths"]["/api/jobs/{id}"]["get"]["operationId"],
        "get_job"
    );

    // Each documented path and method is served: the answer is neither the
    // router's 404 nor a 405.
    let id = uuid::Uuid::new_v4().to_string();
    for (method, path) in jobq::api::openapi::documented() {
        // A submit answers 202 at once instead of waiting for a worker.
        let url = s.url(&format!("{}?timeout=0.01", path.replace("{id}", &id)));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = common::within(
            common::BOUND,
            &format!("{method} {path}"),
            s.http.request(m, &url).bearer_auth(ADMIN_TOKEN).send(),
        )
        .await
        .unwrap();
        let status = resp.status().as_u16();
        // Headers only: /api/admin/events never ends.
        let body = if status == 404 {
            resp.text().await.unwrap_or_default()
        } else {
            String::new()
        };
        assert_ne!(status, 405, "{method} {path}: 405");
        assert!(
            !body.contains("no such route"),
            "{method} {path}: the router has no such route"
        );
    }
    s.stop().await;
}

// ---- A small JSON Schema check (the subset utoipa writes) --------------

/// Whether `v` matches `schema` (resolving `$ref`s in `doc`); `Err` names
/// the first place it does not.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: unsupported $ref {r}"))?;
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: $ref to missing schema {name}"));
        }
        return check(doc, target, v, at);
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|o| check(doc, o, v, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!(
                "{at}: matches {matching} of oneOf, not exactly one: {v}"
            ));
        }
    }
    if let Some(ty) = schema.get("type") {
        let types: Vec<&str> = match ty {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("{at}: odd type {ty}")),
        };
        let fits = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64(),
            _ => false,
        });
        if !fits {
            return Err(format!("{at}: {v} is not of type {ty}"));
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(v) {
            return Err(format!("{at}: {v} is not one of {values:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            return Err(format!("{at}: {n} is below the minimum {min}"));
        }
    }
    if let (Some(format), Some(text)) = (schema.get("format").and_then(Value::as_str), v.as_str()) {
        let ok = match format {
            "uuid" => uuid::Uuid::try_parse(text).is_ok(),
            "date-time" => humantime::parse_rfc3339(text).is_ok(),
            _ => true,
        };
        if !ok {
            return Err(format!("{at}: {text:?} is not a {format}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(key) {
                return Err(format!("{at}: lacks required key {key:?}: {v}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, val, &format!("{at}.{k}"))?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => return Err(format!("{at}: unexpected key {k:?}")),
                    Some(s @ Value::Object(_)) => check(doc, s, val, &format!("{at}.{k}"))?,
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks an answer against what the document says `method path` answers
/// with its status: a documented status, and a body of its schema.
fn conforms(doc: &Value, method: &str, path: &str, r: &Reply) {
    let op = &doc["paths"][path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    let resp = &op["responses"][r.status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path} answered {} which is not documented: {r:?}",
        r.status
    );
    match resp.get("content").and_then(Value::as_object) {
        None => assert!(r.raw.is_empty(), "{method} {path} {}: body {r:?}", r.status),
        Some(content) => {
            let ct = r.header("content-type");
            let media = content.get(ct).unwrap_or_else(|| {
                panic!(
                    "{method} {path} {}: content type {ct} not documented",
                    r.status
                )
            });
            if let Err(e) = check(doc, &media["schema"], &r.body, "body") {
                panic!("{method} {path} {}: {e}", r.status);
            }
        }
    }
}

#[test]
fn the_checker_refuses_what_does_not_match() {
    let doc = jobq::api::openapi::document_json(&[]);
    let view = json!({"$ref": "#/components/schemas/JobView"});
    let good = json!({"job_id": "0b6c7d3e-2f1a-4c1e-9f55-6a2d1c0e9b71", "queue": "default",
        "status": "pending", "attempts": 0, "priority": 0,
        "created_at": "2026-11-28T14:37:45.710027Z", "started_at": null, "completed_at": null,
        "position": 0});
    check(&doc, &view, &good, "body").unwrap();
    for bad in [
        json!({"queue": "default"}),
        {
            let mut b = good.clone();
            b["status"] = json!("sleeping");
            b
        },
        {
            let mut b = good.clone();
            b["created_at"] = json!(null);
            b
        },
        {
            let mut b = good.clone();
            b["job_id"] = json!("not-a-uuid");
            b
        },
    ] {
        assert!(check(&doc, &view, &bad, "body").is_err(), "{bad}");
    }
    let poll = json!({"$ref": "#/components/schemas/HandoutOrBatch"});
    assert!(check(&doc, &poll, &json!({"jobs": []}), "body").is_ok());
    assert!(check(&doc, &poll, &json!({"message": "x"}), "body").is_err());
}

#[tokio::test]
async fn real_answers_match_the_document() {
    let s = TestServer::start_with(Kind::Memory, &["--wait-timeout", "1"]).await;
    let doc = s.get("/openapi.json").await.body;

    // Submit (three payload encodings), read, poll, heartbeat, complete.
    let r = s
        .post("/api/jobs?queue=q1&priority=3", r#"{"a":[1,2]}"#)
        .await;
    conforms(&doc, "POST", "/api/jobs", &r);
    let id = r.body["job_id"].as_str().unwrap().to_owned();
    s.post("/api/jobs?queue=q1", "plain text").await;
    s.post("/api/jobs?queue=q1", vec![0xffu8, 0, 0x10]).await;
    let r = s.get(&format!("/api/jobs/{id}")).await;
    conforms(&doc, "GET", "/api/jobs/{id}", &r);
    assert_eq!(r.body["position"], 0);
    let r = s.get("/api/admin/next?queue=q1").await;
    conforms(&doc, "GET", "/api/admin/next", &r);
    let r = s.get(&format!("/api/admin/jobs/{id}")).await;
    conforms(&doc, "GET", "/api/admin/jobs/{id}", &r);

    let r = s.get("/api/worker/poll?queue=q1").await;
    conforms(&doc, "GET", "/api/worker/poll", &r);
    assert_eq!(r.body["job_id"], id.as_str());
    let lease = r.body["lease_id"].as_str().unwrap().to_owned();
    let r = s.get("/api/worker/poll?queue=q1&max=5").await;
    conforms(&doc, "GET", "/api/worker/poll", &r);
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 2);
    assert!(r
        .body
        .to_string()
        .contains(r#""payload_encoding":"base64""#));
    let r = s.get("/api/worker/poll?queue=q1").await;
    conforms(&doc, "GET", "/api/worker/poll", &r);
    assert_eq!(r.status, 204);

    let r = s
        .send(
            s.http
                .post(s.url(&format!("/api/worker/heartbeat/{id}")))
                .header("X-Lease-Id", &lease),
        )
        .await;
    conforms(&doc, "POST", "/api/worker/heartbeat/{id}", &r);
    let r = s
        .complete(&id, &format!("?lease={lease}"), vec![0xfeu8, 0xff])
        .await;
    conforms(&doc, "POST", "/api/worker/complete/{id}", &r);
    let r = s.get(&format!("/api/jobs/{id}")).await;
    conforms(&doc, "GET", "/api/jobs/{id}", &r);
    assert_eq!(r.body["payload_encoding"], "base64");
    let r = s.get(&format!("/api/admin/jobs/{id}")).await;
    conforms(&doc, "GET", "/api/admin/jobs/{id}", &r);

    // A sync submit that times out (202), one completed (200), one failed (502).
    let r = s.post("/api/submit?queue=q2&timeout=0.05", "x").await;
    conforms(&doc, "POST", "/api/submit", &r);
    assert_eq!(r.status, 202);
    let waiting = s.spawn_submit("?queue=q3&timeout=10", "y");
    let job = s.take("q3").await;
    let jid = job["job_id"].as_str().unwrap().to_owned();
    conforms(
        &doc,
        "POST",
        "/api/worker/complete/{id}",
        &s.complete(&jid, "", "done").await,
    );
    let r = TestServer::join(waiting).await;
    conforms(&doc, "POST", "/api/submit", &r);
    assert_eq!(r.status, 200);
    let waiting = s.spawn_submit("?queue=q4&timeout=10", "z");
    let job = s.take("q4").await;
    let jid = job["job_id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/api/worker/fail/{jid}"),
            r#"{"error":"no","retry":false}"#,
        )
        .await;
    conforms(&doc, "POST", "/api/worker/fail/{id}", &r);
    let r = TestServer::join(waiting).await;
    conforms(&doc, "POST", "/api/submit", &r);
    assert_eq!(r.status, 502);

    // Errors.
    let unknown = uuid::Uuid::new_v4();
    for (method, path, url, status) in [
        ("GET", "/api/jobs/{id}", format!("/api/jobs/{unknown}"), 404),
        ("GET", "/api/jobs/{id}", "/api/jobs/nope".to_owned(), 400),
        (
            "GET",
            "/api/jobs/{id}",
            format!("/api/jobs/{id}?wait=-1"),
            400,
        ),
        ("DELETE", "/api/jobs/{id}", format!("/api/jobs/{id}"), 409),
        (
            "POST",
            "/api/worker/complete/{id}",
            format!("/api/worker/complete/{id}"),
            409,
        ),
        (
            "POST",
            "/api/worker/fail/{id}",
            format!("/api/worker/fail/{id}"),
            409,
        ),
        (
            "POST",
            "/api/worker/heartbeat/{id}",
            format!("/api/worker/heartbeat/{unknown}"),
            404,
        ),
        (
            "GET",
            "/api/worker/poll",
            "/api/worker/poll?max=0".to_owned(),
            400,
        ),
        (
            "GET",
            "/api/admin/jobs",
            "/api/admin/jobs?limit=0".to_owned(),
            400,
        ),
        (
            "DELETE",
            "/api/admin/clear",
            "/api/admin/clear?queue=a%20b".to_owned(),
            400,
        ),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = s.send(s.http.request(m, s.url(&url))).await;
        assert_eq!(r.status, status, "{method} {url}: {r:?}");
        conforms(&doc, method, path, &r);
    }

    // Admin and open routes.
    for path in ["/api/admin/stats", "/api/admin/jobs", "/health"] {
        conforms(&doc, "GET", path, &s.get(path).await);
    }
    conforms(
        &doc,
        "DELETE",
        "/api/admin/clear",
        &s.delete("/api/admin/clear").await,
    );
    s.stop().await;
}

#[tokio::test]
async fn refusals_by_role_match_the_document() {
    let s = start_with_tokens(false).await;
    let doc = s.get("/openapi.json").await.body;
    let r = s.post("/api/jobs", "x").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer");
    conforms(&doc, "POST", "/api/jobs", &r);
    let r = s
        .send(
            s.http
                .get(s.url("/api/worker/poll"))
                .bearer_auth(CLIENT_TOKEN),
        )
        .await;
    assert_eq!(r.status, 403);
    conforms(&doc, "GET", "/api/worker/poll", &r);
    s.stop().await;
}

// ---- What schemathesis found (scripts/test-fuzz.sh) ----------------------

#[tokio::test]
async fn query_method_is_405_on_a_route_not_501() {
    let s = TestServer::start(Kind::Memory).await;
    let q = reqwest::Method::from_bytes(b"QUERY").unwrap();
    let r = s.send(s.http.request(q.clone(), s.url("/health"))).await;
    r.assert_error(405);
    assert!(r.header("allow").contains("GET"), "{r:?}");
    let r = s.send(s.http.request(q, s.url("/nowhere"))).await;
    r.assert_error(404);
    // An unknown method is still 501 (docs/api.md).
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    s.send(s.http.request(brew, s.url("/health")))
        .await
        .assert_error(501);
    s.stop().await;
}

#[tokio::test]
async fn huge_counts_are_clamped_not_refused() {
    let s = TestServer::start(Kind::Memory).await;
    let doc = s.get("/openapi.json").await.body;
    for (path, url) in [
        (
            "/api/worker/poll",
            "/api/worker/poll?max=9223372036854775808",
        ),
        (
            "/api/admin/jobs",
            "/api/admin/jobs?limit=99999999999999999999999",
        ),
    ] {
        let r = s.get(url).await;
        assert!(r.status == 200 || r.status == 204, "{url}: {r:?}");
        conforms(&doc, "GET", path, &r);
    }
    s.stop().await;
}

#[tokio::test]
async fn the_served_document_makes_tokens_optional_for_open_roles() {
    let s = TestServer::start_with(Kind::Memory, &["--worker-token", WORKER_TOKEN]).await;
    let doc = s.get("/openapi.json").await.body;
    assert_eq!(
        doc["paths"]["/api/submit"]["post"]["security"],
        json!([{"client_token": []}, {"admin_token": []}, {}])
    );
    assert_eq!(
        doc["paths"]["/api/worker/poll"]["get"]["security"],
        json!([{"worker_token": []}, {"admin_token": []}])
    );
    assert_eq!(
        doc["paths"]["/api/admin/stats"]["get"]["security"],
        json!([{"admin_token": []}, {}])
    );
    s.stop().await;
}
