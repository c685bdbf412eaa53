//! Property tests of what a client sends and how payloads come back:
//! the payload encoding (round trip), query values (seconds, queue lists,
//! priorities, `max`, `next`), `Prefer: wait`, the lease header and job ids.
//! Whatever the input, nothing panics and the documented invariants hold.
//! Case counts are bounded so the suite runs in seconds.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use proptest::prelude::*;
use serde_json::Value;

use super::encode::{encoding_of, Obj, MAX_EMBEDDED_DEPTH};
use super::{parse_secs, Params};
use crate::broker::{WaitFor, MAX_WAIT};
use crate::job::{JobId, Queue};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // Nothing is written into the source tree; a failure prints its input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// JSON values a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies of every kind: JSON texts (also with odd spacing and escapes),
/// other UTF-8, and arbitrary bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        json_value().prop_map(
            |v| format!(" \n{}\t", serde_json::to_string_pretty(&v).unwrap()).into_bytes()
        ),
        "\"(\\\\u[0-9a-fA-F]{4}|[a-z])*\"".prop_map(String::into_bytes),
        (0usize..140).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// How deep arrays and objects nest in `v` (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Decodes `payload` (+ `payload_encoding`) of an answer back to bytes,
/// or to the JSON value they were embedded as.
enum Decoded {
    Bytes(Vec<u8>),
    Json(Value),
}

fn decode(answer: &Value) -> Decoded {
    match answer.get("payload_encoding").and_then(Value::as_str) {
        Some("base64") => Decoded::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(answer["payload"].as_str().expect("base64 is a string"))
                .expect("valid base64"),
        ),
        Some(other) => panic!("unknown payload_encoding {other}"),
        None => Decoded::Json(answer["payload"].clone()),
    }
}

proptest! {
    #![proptest_config(config())]

    /// A string is written exactly as serde_json writes it (the fast path
    /// for strings with nothing to escape included).
    #[test]
    fn strings_are_written_as_serde_json_writes_them(s in any::<String>(), plain in "[ -~]{0,40}") {
        for s in [s, plain] {
            let mut out = Vec::new();
            crate::api::encode::push_str(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_vec(&s).expect("a string serializes"));
        }
    }

    /// Every body comes back: JSON as the same value, other UTF-8 as the
    /// same string, other bytes exactly through base64; and the answer is
    /// always JSON that a strict parser (serde_json) reads.
    #[test]
    fn payload_encoding_round_trips(bytes in body()) {
        let answer = Obj::with_capacity(0).str("k", "v").payload("payload", &bytes).finish();
        let answer: Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", String::from_utf8_lossy(&answer)));
        prop_assert_eq!(&answer["k"], "v");
        // Also inside a batch answer, the deepest wrapping a payload gets.
        let one = Obj::with_capacity(0).payload("payload", &bytes).finish();
        let batch = [&b"{\"jobs\":["[..], &one, b"]}"].concat();
        prop_assert!(serde_json::from_slice::<Value>(&batch).is_ok(), "batch answer unreadable");
        match (std::str::from_utf8(&bytes), decode(&answer)) {
            (Err(_), Decoded::Bytes(back)) => {
                prop_assert_eq!(back, bytes.clone());
                prop_assert_eq!(encoding_of(&bytes), "base64");
            }
            (Ok(text), Decoded::Json(v)) => match serde_json::from_str::<Value>(text) {
                // JSON nested deeper than answers can carry is text.
                Ok(parsed) if depth(&parsed) <= MAX_EMBEDDED_DEPTH => {
                    prop_assert_eq!(v, parsed);
                    prop_assert_eq!(encoding_of(&bytes), "json");
                }
                _ => {
                    prop_assert_eq!(v, Value::String(text.to_owned()));
                    prop_assert_eq!(encoding_of(&bytes), "text");
                }
            },
            (utf8, _) => prop_assert!(false, "wrong encoding for {:?} (utf8: {})", bytes, utf8.is_ok()),
        }
    }

    /// A JSON value sent as a payload comes back as the same value.
    #[test]
    fn json_payloads_come_back_as_values(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let answer: Value =
            serde_json::from_slice(&Obj::with_capacity(0).payload("payload", &bytes).finish()).unwrap();
        // Compared with the sent text as serde_json reads it (its float
        // parsing is not exact), not with `v`.
        let sent: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&answer["payload"], &sent);
        prop_assert!(answer.get("payload_encoding").is_none());
    }

    /// Seconds: never a panic; an accepted value is within [0, MAX_WAIT],
    /// close to what was sent, and a positive one never means "forever".
    #[test]
    fn seconds_are_parsed_or_refused(raw in prop_oneof![
        any::<String>(),
        "[-+]?[0-9]{0,6}(\\.[0-9]{0,12})?([eE][-+]?[0-9]{1,3})?",
        any::<f64>().prop_map(|f| f.to_string()),
        Just("-0".to_owned()), Just("-0.0".to_owned()), Just("1e-10".to_owned()),
    ]) {
        let Ok(d) = parse_secs("wait", &raw) else { return Ok(()) };
        prop_assert!(d <= MAX_WAIT);
        let f: f64 = super::trim_ws(&raw).parse().unwrap();
        prop_assert!(f.is_finite() && f >= 0.0);
        let want = f.min(MAX_WAIT.as_secs_f64());
        prop_assert!((d.as_secs_f64() - want).abs() <= 1e-9 + want * 1e-12, "{} -> {:?}", raw, d);
        if f > 0.0 {
            prop_assert!(!matches!(WaitFor::from_secs(Some(d)), WaitFor::Forever),
                "{} (positive) waits forever", raw);
        }
    }

    /// Queue lists: never a panic; what is accepted is the listed valid
    /// names, in order, without repeats.
    #[test]
    fn queue_lists_are_parsed_or_refused(raw in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9._:, -]{0,40}",
        prop::collection::vec("[A-Za-z0-9._:-]{1,12}", 1..5).prop_map(|v| v.join(",")),
    ]) {
        let params = Params(vec![("queue".into(), raw.clone())]);
        if let Ok(queues) = params.queues("queue") {
            let names: Vec<&str> = raw.split(',').map(super::trim_ws).collect();
            let mut want: Vec<Queue> = Vec::new();
            for n in names {
                let q = Queue::parse(n).expect("accepted lists hold valid names");
                if !want.contains(&q) {
                    want.push(q);
                }
            }
            prop_assert_eq!(queues, want);
        }
        // One name (admin clear, submit): valid exactly when Queue::parse says so.
        let one = params.queue("queue");
        prop_assert_eq!(one.is_ok(), Queue::parse(&raw).is_ok());
    }

    /// Submit queries and headers: never a panic; `priority` accepted
    /// exactly when it is an i32; `timeout` wins over `Prefer: wait`.
    #[test]
    fn submit_requests_are_parsed_or_refused(
        priority in prop_oneof![any::<String>(), any::<i64>().prop_map(|n| n.to_string())],
        timeout in prop::option::of(prop_oneof![any::<String>(), "[0-9]{1,3}(\\.[0-9]{1,3})?"]),
        prefer in prop::option::of(prop_oneof![any::<String>(), "(respond-async, )?wait=[0-9]{1,3}"]),
        key in prop::option::of("[\\x21-\\x7e]{1,20}"),
    ) {
        let mut q = vec![("priority".to_owned(), priority.clone())];
        if let Some(t) = &timeout {
            q.push(("timeout".into(), t.clone()));
        }
        let mut h = HeaderMap::new();
        if let Some(p) = prefer.as_deref().and_then(|p| HeaderValue::from_str(p).ok()) {
            h.insert("prefer", p);
        }
        if let Some(k) = &key {
            h.insert("idempotency-key", HeaderValue::from_str(k).unwrap());
        }
        let parsed = super::jobs::parse_submit(&Params(q), &h, bytes::Bytes::new());
        let priority_ok = super::trim_ws(&priority).parse::<i32>().is_ok();
        if !priority_ok {
            prop_assert!(parsed.is_err());
        }
        if let Ok((req, wait)) = parsed {
            prop_assert_eq!(req.priority, Some(super::trim_ws(&priority).parse::<i32>().unwrap()));
            prop_assert_eq!(req.idempotency_key, key);
            if let Some(t) = timeout {
                prop_assert_eq!(wait, WaitFor::from_secs(Some(parse_secs("timeout", &t).unwrap())));
            }
        }
    }

    /// Worker queries: `max`, `next`, the lease (query or header) never
    /// panic, and are accepted exactly as documented.
    #[test]
    fn worker_queries_are_parsed_or_refused(
        max in prop_oneof![any::<String>(), any::<i64>().prop_map(|n| n.to_string())],
        next in prop_oneof![any::<String>(), prop::sample::select(vec!["", "0", "1", "true", "false", " 1 "]).prop_map(str::to_owned)],
        lease in prop_oneof![any::<String>(), any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string())],
    ) {
        let params = Params(vec![("max".into(), max.clone()), ("next".into(), next.clone()), ("lease".into(), lease.clone())]);
        // A positive integer of any size, clamped to the batch limit.
        let digits = super::trim_ws(&max);
        let digits = digits.strip_prefix('+').unwrap_or(digits);
        let positive = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.bytes().any(|b| b != b'0');
        match super::workers::poll_request(&params) {
            Ok((_, Some(n))) => {
                prop_assert!(positive, "accepted {:?}", max);
                let sent = digits.parse::<usize>().unwrap_or(usize::MAX);
                prop_assert_eq!(n, sent.min(crate::broker::MAX_BATCH));
            }
            Ok((_, None)) => prop_assert!(false, "max was given"),
            Err(_) => prop_assert!(!positive, "refused {:?}", max),
        }
        let want_next = match super::trim_ws(&next) {
            "0" | "false" => Some(false),
            "1" | "true" | "" => Some(true),
            _ => None,
        };
        prop_assert_eq!(super::workers::wants_next(&params).ok(), want_next);
        let got = super::workers::lease(&params, &HeaderMap::new());
        prop_assert_eq!(got.ok().flatten(), super::trim_ws(&lease).parse::<JobId>().ok());
    }

    /// Job ids: any text parses or is refused without a panic; every UUID
    /// round-trips through its text form, which is lower-case hyphenated.
    #[test]
    fn job_ids_parse_and_round_trip(raw in any::<String>(), n in any::<u128>()) {
        let _ = raw.parse::<JobId>();
        let id = JobId(uuid::Uuid::from_u128(n));
        let mut buf = [0u8; 36];
        let text = id.encode(&mut buf).to_owned();
        prop_assert_eq!(&text, &id.to_string());
        prop_assert_eq!(text.len(), 36);
        prop_assert!(text.chars().all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
        prop_assert_eq!(text.parse::<JobId>().unwrap(), id);
        prop_assert_eq!(text.to_ascii_uppercase().parse::<JobId>().unwrap(), id);
    }

    /// Any `Prefer` value: never a panic; a `wait=N` that is accepted
    /// gives N seconds.
    #[test]
    fn prefer_wait_is_parsed_or_refused(v in prop_oneof![any::<String>(), "(handling=lenient[,;] ?)?[Ww]ait ?= ?\"?[0-9]{1,4}\"?"]) {
        let Ok(value) = HeaderValue::from_str(&v) else { return Ok(()) };
        let mut h = HeaderMap::new();
        h.insert("prefer", value);
        if let Ok(Some(d)) = super::jobs::prefer_wait(&h) {
            prop_assert!(d <= MAX_WAIT);
            prop_assert!(d >= Duration::ZERO);
        }
    }
}
