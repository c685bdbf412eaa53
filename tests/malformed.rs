//! 10,000 malformed requests over raw TCP to the real binary: random
//! methods, paths, queries, headers, bodies and HTTP versions, truncated
//! requests, flipped bytes and plain garbage, from a seeded xorshift (set
//! `JOBQ_MALFORMED_SEED` to replay one run). No answer may be a 5xx other
//! than the spec's 501 (unknown method) and 505 (unknown HTTP version);
//! afterwards `/health` answers 200 and the process's RSS is back near
//! where it was before the flood.

mod common;

use std::time::{Duration, Instant};

use common::binary::{free_port, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUESTS: usize = 10_000;
const CONNECTIONS: usize = 8;
/// How long one exchange may take before it is given up (not a failure:
/// a request cut short may leave the server waiting for the rest).
const EXCHANGE: Duration = Duration::from_secs(3);
/// RSS may grow this much over the baseline (allocator caches, the jobs
/// the valid submits among the noise stored).
const RSS_SLACK_KIB: u64 = 32 * 1024;

/// xorshift64: small, seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn text(&mut self, max: usize) -> String {
        let n = self.below(max + 1);
        (0..n)
            .map(|_| (b' ' + self.below(95) as u8) as char)
            .collect()
    }
}

const METHODS: &[&str] = &[
    "GET",
    "GET",
    "GET",
    "POST",
    "POST",
    "POST",
    "DELETE",
    "PUT",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "TRACE",
    "QUERY",
    "BREW",
    "get",
    "G\0T",
    "",
    "POST POST",
    "M-SEARCH",
    "ÜBER",
];

const PATHS: &[&str] = &[
    "/",
    "/health",
    "/metrics",
    "/openapi.json",
    "/api/submit",
    "/api/submit",
    "/api/jobs",
    "/api/jobs/{id}",
    "/api/worker/poll",
    "/api/worker/poll",
    "/api/worker/complete/{id}",
    "/api/worker/fail/{id}",
    "/api/worker/heartbeat/{id}",
    "/api/admin/stats",
    "/api/admin/clear",
    "/api/admin/next",
    "/api/admin/jobs",
    "/api/admin/jobs/{id}",
    "/dashboard/app.js",
    "*",
    "http://localhost/health",
    "//api//jobs",
    "/api/jobs/../admin/stats",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/api/jobs/%00",
    "/api/worker/complete/",
    "/api/jobs/{id}/events",
    "/api/worker/progress/{id}",
    "",
];

const IDS: &[&str] = &[
    "0b6c7d3e-2f1a-4c1e-9f55-6a2d1c0e9b71",
    "00000000-0000-0000-0000-000000000000",
    "0B6C7D3E2F1A4C1E9F556A2D1C0E9B71",
    "{0b6c7d3e-2f1a-4c1e-9f55-6a2d1c0e9b71}",
    "urn:uuid:0b6c7d3e-2f1a-4c1e-9f55-6a2d1c0e9b71",
    "nope",
    "%ff%fe",
    "%00",
    "-1",
    "0b6c7d3e-2f1a-4c1e-9f55-6a2d1c0e9b7",
];

/// Waits are kept short: a submit would otherwise hold its connection.
const SECONDS: &[&str] = &[
    "0.01",
    "0.001",
    "1e-10",
    "-1",
    "abc",
    "",
    "nan",
    "inf",
    "+0.01",
    "%200.01%20",
    "1e309",
    "0x10",
    "0.01%00",
];

const VALUES: &[&str] = &[
    "",
    "default",
    "a,b",
    "a,,b",
    "%ff",
    "%00",
    "99999999999999999999",
    "-5",
    "1",
    "0",
    "true",
    "pending",
    "bogus",
    "0b6c7d3e-2f1a-4c1e-9f55-6a2d1c0e9b71",
    "%E2%80%AE",
    "a%C2%A0",
];

const NAMES: &[&str] = &[
    "queue", "priority", "max", "next", "lease", "limit", "status", "x", "", "%ff", "queue",
];

fn query(rng: &mut Rng) -> String {
    let mut q = String::new();
    for i in 0..rng.below(5) {
        q.push(if i == 0 { '?' } else { '&' });
        if rng.chance(30) {
            q.push_str(rng.pick(&["wait", "timeout"]));
            q.push('=');
            q.push_str(rng.pick(SECONDS));
        } else {
            q.push_str(rng.pick(NAMES));
            if !rng.chance(10) {
                q.push('=');
                q.push_str(rng.pick(VALUES));
            }
        }
    }
    if rng.chance(3) {
        q.push_str(&"a".repeat(rng.below(100_000)));
    }
    q
}

fn path(rng: &mut Rng) -> String {
    let p = rng.pick(PATHS).replace("{id}", rng.pick(IDS));
    let mut p = p + &query(rng);
    if rng.chance(2) {
        p.push_str(&"/x".repeat(rng.below(40_000)));
    }
    if rng.chance(2) {
        p.push(' ');
    }
    p
}

fn header_lines(rng: &mut Rng, body_len: usize, eol: &str) -> (String, bool) {
    let mut h = String::new();
    let mut chunked = false;
    if !rng.chance(5) {
        h.push_str(&format!("Host: 127.0.0.1{eol}"));
    }
    let n = rng.below(8);
    for _ in 0..n {
        let line = match rng.below(22) {
            0 => format!("Content-Length: {body_len}"),
            1 => format!(
                "Content-Length: {}",
                rng.pick(&["-1", "abc", "99999999999999999999999", "1, 2", "", "5"])
            ),
            2 => {
                chunked = true;
                "Transfer-Encoding: chunked".into()
            }
            3 => format!(
                "Transfer-Encoding: {}",
                rng.pick(&["gzip", "chunked, gzip", "identity", "x"])
            ),
            4 => format!(
                "Authorization: {}",
                rng.pick(&[
                    "Bearer x",
                    "Basic Zm9vOmJhcg==",
                    "Bearer",
                    "bearer \u{1}",
                    "Bearer a b",
                    ""
                ])
            ),
            5 => format!("Idempotency-Key: {}", rng.text(300)),
            6 => format!(
                "Prefer: {}",
                rng.pick(&[
                    "wait=0.01",
                    "wait=abc",
                    "wait=-1",
                    "respond-async, wait=0.01",
                    "wait",
                    "wait=\"0.01\"",
                    ";;,,"
                ])
            ),
            7 => format!("X-Lease-Id: {}", rng.pick(IDS)),
            8 => "Expect: 100-continue".into(),
            9 => format!(
                "Content-Type: {}",
                rng.pick(&[
                    "application/json",
                    "text/plain; charset=utf-8",
                    "x/y",
                    "",
                    "multipart/form-data; boundary=x"
                ])
            ),
            10 => format!(
                "Accept: {}",
                rng.pick(&["text/event-stream", "*/*", "application/json;q=0"])
            ),
            11 => format!("{}: {}", rng.text(20).replace(':', ""), rng.text(40)),
            12 => format!("X-Big: {}", "v".repeat(rng.below(80_000))),
            13 => {
                let mut many = String::new();
                for i in 0..rng.below(200) {
                    many.push_str(&format!("X-Many-{i}: 1{eol}"));
                }
                many.trim_end().to_owned()
            }
            14 => format!("X-Folded: a{eol} b"),
            15 => "NoColonHere".into(),
            16 => format!("X-Bin: {}", String::from_utf8_lossy(&rng.bytes(20))),
            17 => "Upgrade: websocket".into(),
            18 => "Connection: upgrade".into(),
            19 => format!("Cookie: {}", rng.text(50)),
            20 => format!("Host: {}", rng.text(30)),
            _ => format!(" Leading-Space: {}", rng.text(10)),
        };
        h.push_str(&line);
        h.push_str(eol);
    }
    (h, chunked)
}

/// One request, possibly broken; and whether it is whole (then the server
/// should answer it and close, as asked).
fn request(rng: &mut Rng) -> (Vec<u8>, bool) {
    if rng.chance(8) {
        // Plain garbage.
        return (rng.bytes(2000), false);
    }
    let eol = if rng.chance(90) { "\r\n" } else { "\n" };
    let method = if rng.chance(3) {
        rng.text(12)
    } else {
        rng.pick(METHODS).to_owned()
    };
    let version = rng.pick(&[
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/1.2",
        "HTTP/0.9",
        "HTTP/3",
        "",
        "http/1.1",
        "HTTP/1.1 x",
        "HTTP/11",
    ]);
    let body: Vec<u8> = match rng.below(4) {
        0 => Vec::new(),
        1 => rng.bytes(512),
        2 => rng.text(256).into_bytes(),
        _ => br#"{"error":"x","retry":false,"n":[1,2,{"a":null}]}"#.to_vec(),
    };
    let (headers, chunked) = header_lines(rng, body.len(), eol);
    let mut out = format!("{method} {} {version}{eol}", path(rng)).into_bytes();
    out.extend_from_slice(headers.as_bytes());
    // Closing after the answer lets the reader know when it is done.
    out.extend_from_slice(format!("Connection: close{eol}{eol}").as_bytes());
    if chunked {
        if rng.chance(50) {
            out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
        } else {
            out.extend_from_slice(rng.pick(&[
                &b"zz\r\nabc"[..],
                b"5\r\nab\r\n0\r\n\r\n",
                b"-1\r\n",
                b"ffffffffffffffffff\r\n",
            ]));
        }
    } else {
        out.extend_from_slice(&body);
    }
    let mut whole = true;
    if rng.chance(15) {
        out.truncate(rng.below(out.len() + 1));
        whole = false;
    }
    if rng.chance(5) {
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(out.len().max(1));
            if let Some(b) = out.get_mut(i) {
                *b = rng.next() as u8;
            }
        }
        whole = false;
    }
    (out, whole)
}

/// The status codes of the answers in `raw` (each status line).
fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.split("\r\n")
        .filter_map(|line| {
            let rest = line
                .strip_prefix("HTTP/1.1 ")
                .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
            rest.get(..3)?.parse().ok()
        })
        .collect()
}

/// Sends `req` on a new connection and reads what comes back.
async fn exchange(port: u16, req: &[u8], whole: bool) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        panic!("connect failed: the server is gone");
    };
    let mut got = Vec::new();
    let _ = tokio::time::timeout(EXCHANGE, async {
        // The server may close early (an answer to a broken head).
        let _ = s.write_all(req).await;
        if !whole {
            // Nothing more is coming: say so, rather than let the server wait.
            let _ = s.shutdown().await;
        }
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Sends `request_line` (`METHOD PATH`) alone on a connection it closes;
/// the one answer must be a 200.
async fn assert_one_200(port: u16, request_line: &str) {
    let req = format!("{request_line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let raw = exchange(port, req.as_bytes(), true).await;
    assert_eq!(
        statuses(&raw),
        vec![200],
        "{request_line}: {}",
        escaped(&raw)
    );
}

fn escaped(b: &[u8]) -> String {
    b.iter()
        .take(600)
        .flat_map(|c| std::ascii::escape_default(*c))
        .map(char::from)
        .collect()
}

/// What one slot saw: answers by status, unanswered exchanges, offenders.
type Seen = (std::collections::BTreeMap<u16, usize>, usize, Vec<String>);

/// Runs `n` requests from `seed`, one connection after another.
async fn flood(port: u16, seed: u64, n: usize) -> Seen {
    let mut rng = Rng(seed | 1);
    let (mut answered, mut silent, mut bad) = (std::collections::BTreeMap::new(), 0, Vec::new());
    for _ in 0..n {
        let (req, whole) = request(&mut rng);
        let got = exchange(port, &req, whole).await;
        let codes = statuses(&got);
        if codes.is_empty() {
            silent += 1;
        }
        for code in codes {
            *answered.entry(code).or_insert(0) += 1;
            if code >= 500 && code != 501 && code != 505 {
                bad.push(format!(
                    "{code} for {}\n  answer: {}",
                    escaped(&req),
                    escaped(&got)
                ));
            }
        }
    }
    (answered, silent, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_malformed_requests_leave_the_server_healthy() {
    let seed: u64 = std::env::var("JOBQ_MALFORMED_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6a6f_6271_2d6d_616c);
    println!("seed {seed} (JOBQ_MALFORMED_SEED replays it)");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Proc::start(
        &dir.path().join("data"),
        port,
        &[
            "--storage",
            "memory",
            "--wait-timeout",
            "0.05",
            "--result-ttl",
            "1",
            "--header-read-timeout",
            "2",
        ],
    )
    .await;
    let pid = server.child.id();
    let started = Instant::now();

    // Warm up (allocator arenas, lazily built answers), then the baseline.
    let (_, _, bad) = flood(port, seed ^ 0xffff, 300).await;
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let baseline = rss_kib(pid);

    let per = REQUESTS / CONNECTIONS;
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        tasks.push(tokio::spawn(flood(
            port,
            seed.wrapping_add(i as u64 * 7919),
            per,
        )));
    }
    let (mut answers, mut silent, mut bad) = (std::collections::BTreeMap::new(), 0, Vec::new());
    for t in tasks {
        let (a, s, b) = common::within(Duration::from_secs(50), "the flood", t)
            .await
            .unwrap();
        for (code, n) in a {
            *answers.entry(code).or_insert(0) += n;
        }
        silent += s;
        bad.extend(b);
    }
    let answered: usize = answers.values().sum();
    println!(
        "{} requests in {:?}: answers by status {answers:?}; {silent} closed or timed out unanswered",
        per * CONNECTIONS,
        started.elapsed()
    );
    assert!(
        bad.is_empty(),
        "{} 5xx answers (seed {seed}):\n{}",
        bad.len(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    // Most of the noise is answered (400, 404, 405, 413, 431, 501, 505, ...).
    assert!(answered > REQUESTS / 2, "only {answered} answers");

    // Still healthy: /health answers 200.
    assert_one_200(port, "GET /health").await;

    // Memory: the jobs that valid submits among the noise stored are
    // cleared and forgotten (result TTL 1 s); RSS settles near the baseline.
    assert_one_200(port, "DELETE /api/admin/clear").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rss = rss_kib(pid);
    while rss > baseline + RSS_SLACK_KIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss = rss_kib(pid);
    }
    println!("RSS: {baseline} KiB before, {rss} KiB after");
    assert!(
        rss <= baseline + RSS_SLACK_KIB,
        "RSS grew from {baseline} KiB to {rss} KiB"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    drop(server);
}
