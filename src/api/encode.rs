//! JSON bodies, written directly into a buffer: the hot answers (submit,
//! poll, complete) are built without an intermediate `Value` tree.
//!
//! Payload encoding (docs/api.md, "Payload encoding"): bytes that parse as
//! JSON are embedded as that value; other UTF-8 as a string; anything else
//! as base64 with a sibling `"payload_encoding": "base64"`.

use base64::Engine as _;

use crate::broker::Stats;
use crate::job::{Job, Status, Timestamp};

/// A JSON object under construction.
pub struct Obj {
    buf: Vec<u8>,
    first: bool,
}

impl Obj {
    /// An empty object with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        let mut buf = Vec::with_capacity(cap + 2);
        buf.push(b'{');
        Obj { buf, first: true }
    }

    fn key(&mut self, k: &str) -> &mut Vec<u8> {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        push_str(&mut self.buf, k);
        self.buf.push(b':');
        &mut self.buf
    }

    /// `"k": "v"`.
    pub fn str(mut self, k: &str, v: &str) -> Self {
        push_str(self.key(k), v);
        self
    }

    /// `"k": "<job id>"`.
    pub fn id(mut self, k: &str, id: &crate::job::JobId) -> Self {
        let mut buf = [0u8; 36];
        let out = self.key(k);
        out.push(b'"');
        out.extend_from_slice(id.encode(&mut buf).as_bytes());
        out.push(b'"');
        self
    }

    /// `"k": n`.
    pub fn num(mut self, k: &str, v: impl itoa_like::Int) -> Self {
        v.write(self.key(k));
        self
    }

    /// `"k": "<RFC 3339>"` or `null`.
    pub fn time(mut self, k: &str, v: Option<Timestamp>) -> Self {
        let out = self.key(k);
        match v {
            Some(t) => {
                out.push(b'"');
                t.write_rfc3339(out);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        self
    }

    /// `"k": <raw JSON text>` (the caller guarantees it is valid JSON).
    pub fn raw(mut self, k: &str, json: &[u8]) -> Self {
        self.key(k).extend_from_slice(json);
        self
    }

    /// `"k": <payload>` with the payload encoding rules; adds
    /// `"<k>_encoding": "base64"` for non-UTF-8 bytes.
    pub fn payload(mut self, k: &str, bytes: &[u8]) -> Self {
        match classify(bytes) {
            Kind::Json => self.key(k).extend_from_slice(bytes),
            Kind::Text(s) => push_str(self.key(k), s),
            Kind::Binary => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                push_str(self.key(k), &b64);
                let enc_key = format!("{k}_encoding");
                push_str(self.key(&enc_key), "base64");
            }
        }
        self
    }

    /// Closes the object.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'}');
        self.buf
    }
}

enum Kind<'a> {
    Json,
    Text(&'a str),
    Binary,
}

fn classify(bytes: &[u8]) -> Kind<'_> {
    match std::str::from_utf8(bytes) {
        Ok(s) if is_json(s) => Kind::Json,
        Ok(s) => Kind::Text(s),
        Err(_) => Kind::Binary,
    }
}

/// `bytes` as one JSON value by the payload encoding rules, standing alone
/// (a streamed progress event's `data`): JSON as it is, other UTF-8 as a
/// string, other bytes as a base64 string.
pub fn value(bytes: &[u8]) -> String {
    match classify(bytes) {
        // Valid JSON is valid UTF-8.
        Kind::Json => String::from_utf8_lossy(bytes).into_owned(),
        Kind::Text(s) => serde_json::Value::from(s).to_string(),
        Kind::Binary => {
            serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
                .to_string()
        }
    }
}

/// Whether `s` is a JSON text that strict parsers accept. Skipping over
/// strings (`IgnoredAny`) lets a lone UTF-16 surrogate escape (`"\ud800"`)
/// through, and embedded raw it would make the whole answer unreadable to
/// such parsers (serde_json among them): texts with `\u` escapes are
/// parsed in full, which refuses those (they are then embedded as text).
fn is_json(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
        && nested_within(s, MAX_EMBEDDED_DEPTH)
        && (!has_u_escape(s) || serde_json::from_str::<serde_json::Value>(s).is_ok())
}

/// Whether `s` holds `\u`. A search for the backslash alone (one vectorised
/// pass, usually finding none) instead of `str::contains`, whose substring
/// searcher cost more to set up than a short payload takes to scan.
fn has_u_escape(s: &str) -> bool {
    memchr::memchr_iter(b'\\', s.as_bytes()).any(|i| s.as_bytes().get(i + 1) == Some(&b'u'))
}

/// The deepest JSON embedded as a value. Answers wrap a payload in up to
/// three more levels (`{"jobs":[{"payload":…}]}`) and strict parsers
/// (serde_json, so jobq's own client and worker) stop at 128: deeper JSON
/// would make the whole answer unreadable to them, so it is embedded as text.
pub const MAX_EMBEDDED_DEPTH: usize = 100;

/// Whether the JSON text `s` nests arrays and objects at most `max` deep.
fn nested_within(s: &str, max: usize) -> bool {
    // No more openers than `max` cannot nest deeper. Finding them is a
    // vectorised search; the walk below, run on every payload, was ~3% of
    // a job's instructions.
    if memchr::memchr2_iter(b'[', b'{', s.as_bytes())
        .nth(max)
        .is_none()
    {
        return true;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in s.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// How [`Obj::payload`] embeds `bytes`: `json`, `text` or `base64`.
pub fn encoding_of(bytes: &[u8]) -> &'static str {
    match classify(bytes) {
        Kind::Json => "json",
        Kind::Text(_) => "text",
        Kind::Binary => "base64",
    }
}

/// Appends `s` as a JSON string.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    // Most strings (ids, times, statuses, queue names) need no escape:
    // copied as they are, without serde_json's per-byte escape loop.
    if needs_escape(s) {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether JSON needs `s` escaped: the characters serde_json escapes
/// (control characters, `"` and `\\`; everything else is valid as it is).
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Integer formatting for [`Obj::num`].
pub mod itoa_like {
    /// An integer that can be written as JSON.
    pub trait Int {
        /// Appends the decimal form.
        fn write(self, out: &mut Vec<u8>);
    }
    macro_rules! int {
        ($($t:ty),*) => {$(
            impl Int for $t {
                fn write(self, out: &mut Vec<u8>) {
                    out.extend_from_slice(itoa::Buffer::new().format(self).as_bytes());
                }
            }
        )*};
    }
    int!(u32, u64, i32, i64, usize);
}

/// The job view of `GET /api/jobs/{id}` and the admin list:
/// `payload` is the result once completed.
pub fn job_view(job: &Job, position: Option<u64>) -> Obj {
    let mut o = Obj::with_capacity(256 + job.result.as_ref().map_or(0, |r| r.len()))
        .id("job_id", &job.id)
        .str("queue", job.queue.as_str())
        .str("status", job.status.as_str())
        .num("attempts", job.attempts)
        .num("priority", job.priority)
        .time("created_at", Some(job.created_at))
        .time("started_at", job.started_at)
        .time("completed_at", job.ended_at);
    if job.status == Status::Completed {
        if let Some(r) = &job.result {
            o = o.payload("payload", r);
        }
    }
    if let Some(e) = &job.error {
        o = o.str("error", e);
    }
    if let Some(p) = position {
        o = o.num("position", p);
    }
    o
}

/// `/api/admin/next`: the job view plus its submitted payload and headers.
pub fn job_with_input(job: &Job, position: Option<u64>) -> Vec<u8> {
    job_view(job, position)
        .payload("payload", &job.payload)
        .raw("headers", &job.headers)
        .finish()
}

/// `200` of a sync submit.
pub fn submit_done(job: &Job) -> Vec<u8> {
    let result = job.result.as_deref().unwrap_or(b"{}");
    Obj::with_capacity(160 + result.len())
        .id("job_id", &job.id)
        .payload("payload", result)
        .time("created_at", Some(job.created_at))
        .time("completed_at", job.ended_at)
        .finish()
}

/// `202` of a submit that is not (or no longer) waited for.
pub fn accepted(job: &Job, location: &str) -> Vec<u8> {
    accepted_as(&job.id, job.status, location)
}

/// `202` of a submit: job `id`, now in `status`, to be fetched from `location`.
pub fn accepted_as(id: &crate::job::JobId, status: crate::job::Status, location: &str) -> Vec<u8> {
    Obj::with_capacity(160)
        .id("job_id", id)
        .str("status", status.as_str())
        .str("location", location)
        .finish()
}

/// `200` of a poll: the hand-out.
pub fn handout(job: &Job) -> Vec<u8> {
    Obj::with_capacity(256 + job.payload.len() + job.headers.len())
        .id("job_id", &job.id)
        .payload("payload", &job.payload)
        .raw("headers", &job.headers)
        .str("queue", job.queue.as_str())
        .num("attempt", job.attempts)
        .num("priority", job.priority)
        .id(
            "lease_id",
            &job.lease_id.unwrap_or(crate::job::JobId(uuid::Uuid::nil())),
        )
        .time("lease_expires_at", job.lease_expires_at)
        .time("created_at", Some(job.created_at))
        .finish()
}

/// `/api/admin/stats`.
pub fn stats(s: &Stats) -> Vec<u8> {
    let t = &s.counts.total;
    let mut o = Obj::with_capacity(256).num("total", t.iter().sum::<u64>());
    for st in Status::ALL {
        o = o.num(st.as_str(), t[st.index()]);
    }
    let mut queues = Obj::with_capacity(64 * s.counts.queues.len());
    for (name, c) in &s.counts.queues {
        let mut q = Obj::with_capacity(96).num("total", c.iter().sum::<u64>());
        for st in Status::ALL {
            q = q.num(st.as_str(), c[st.index()]);
        }
        queues = queues.raw(name, &q.finish());
    }
    o.num("waiting_clients", s.waiting_clients)
        .num("polling_workers", s.polling_workers)
        .raw("queues", &queues.finish())
        .num("uptime_s", s.uptime_s)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u_escapes_are_found_as_contains_would() {
        for s in [
            r#""\u0041""#,
            r#"x\u"#,
            r#"\\u"#,
            "",
            r#"\"#,
            r#"a\n"#,
            "u",
            r#"\x\u"#,
        ] {
            assert_eq!(has_u_escape(s), s.contains("\\u"), "{s:?}");
        }
    }

    fn parse(v: Vec<u8>) -> serde_json::Value {
        serde_json::from_slice(&v).expect("valid JSON")
    }

    #[test]
    fn payload_encodings() {
        let o = parse(
            Obj::with_capacity(0)
                .payload("payload", br#"{"a":[1,2]}"#)
                .finish(),
        );
        assert_eq!(o, serde_json::json!({"payload": {"a": [1, 2]}}));
        let o = parse(
            Obj::with_capacity(0)
                .payload("payload", b"hello \"you\"")
                .finish(),
        );
        assert_eq!(o, serde_json::json!({"payload": "hello \"you\""}));
        let o = parse(
            Obj::with_capacity(0)
                .payload("payload", &[0xff, 0x00, 0x10])
                .finish(),
        );
        assert_eq!(
            o,
            serde_json::json!({"payload": "/wAQ", "payload_encoding": "base64"})
        );
        let o = parse(Obj::with_capacity(0).payload("payload", b"").finish());
        assert_eq!(o, serde_json::json!({"payload": ""}));
    }

    #[test]
    fn lone_surrogate_escapes_are_embedded_as_text() {
        // Found by the property tests: embedded raw, this made the answer
        // unreadable to serde_json (and so to jobq's own client).
        for body in [
            &br#""\udeb3""#[..],
            br#"{"a":"x\ud800y"}"#,
            br#"["\udc00"]"#,
        ] {
            let o = parse(Obj::with_capacity(0).payload("payload", body).finish());
            assert_eq!(o["payload"], std::str::from_utf8(body).unwrap(), "{o}");
            assert_eq!(encoding_of(body), "text");
        }
        // A valid surrogate pair is still JSON.
        let o = parse(
            Obj::with_capacity(0)
                .payload("payload", br#""\ud83d\ude00""#)
                .finish(),
        );
        assert_eq!(o["payload"], "\u{1f600}");
    }

    #[test]
    fn json_nested_too_deep_is_embedded_as_text() {
        // Found while writing the property tests: a payload nested 125 or
        // more levels made poll answers unreadable to serde_json.
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = nested(MAX_EMBEDDED_DEPTH);
        assert_eq!(encoding_of(ok.as_bytes()), "json");
        let deep = nested(MAX_EMBEDDED_DEPTH + 1);
        assert_eq!(encoding_of(deep.as_bytes()), "text");
        for body in [
            ok,
            deep,
            nested(127),
            r#"["[[[[", {"a": "]]]"}]"#.to_owned(),
        ] {
            let one = Obj::with_capacity(0)
                .payload("payload", body.as_bytes())
                .finish();
            let batch = [&b"{\"jobs\":["[..], &one, b"]}"].concat();
            let v = parse(batch);
            assert!(v["jobs"][0]["payload"].is_array() || v["jobs"][0]["payload"] == body.as_str());
        }
        // Brackets inside strings do not count.
        let quoted = format!("[\"{}\"]", "[".repeat(500));
        assert_eq!(encoding_of(quoted.as_bytes()), "json");
    }

    #[test]
    fn strings_are_escaped() {
        let o = parse(
            Obj::with_capacity(0)
                .str("a\"b", "line\nbreak")
                .num("n", -3i32)
                .finish(),
        );
        assert_eq!(o, serde_json::json!({"a\"b": "line\nbreak", "n": -3}));
    }
}
