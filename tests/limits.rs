//! Limits at every edge, each hit and answered as documented, with the
//! server healthy afterwards: body size (413), pending jobs (503), waiting
//! clients and long-polling workers (503 + Retry-After), header size and
//! count (431), a slow-loris head (disconnected), idle keep-alive
//! connections (closed), and TCP keepalive noticing a long-poll whose peer
//! vanished (seen from another network namespace).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Kind, Reply, TestServer, BOUND};

/// The server still answers `/health` and takes a job.
async fn healthy(s: &TestServer) {
    let r = s.get("/health").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s.post("/api/jobs?queue=healthy", "ok").await;
    assert_eq!(r.status, 202, "{r:?}");
}

fn assert_busy(r: &Reply) {
    r.assert_error(503);
    assert_eq!(r.header("retry-after"), "1", "{r:?}");
}

/// The first answer of `call`, repeated every 10 ms, that is not a 503
/// (bounded: a place must free up).
async fn once_a_place_frees_up<F: std::future::Future<Output = Reply>>(
    mut call: impl FnMut() -> F,
) -> Reply {
    common::within(BOUND, "a place frees up", async {
        loop {
            let r = call().await;
            if r.status != 503 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// `after` is about the 1 s limit; `what` happened then.
fn assert_about_a_second(after: Duration, what: &str) {
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "{what} after {after:?}, expected about 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_is_413() {
    let s = TestServer::start_with(Kind::Memory, &["--max-body", "1024"]).await;
    for path in [
        "/api/submit",
        "/api/jobs",
        "/api/worker/complete/6b1d9a4e-2b7c-4b8e-9c59-4d6a1f0c3e21",
    ] {
        let r = s.post(path, vec![b'x'; 1025]).await;
        r.assert_error(413);
    }
    // Without a Content-Length (chunked): still refused.
    let addr = s.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"POST /api/jobs HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap();
        for _ in 0..4 {
            let _ = c.write_all(format!("200\r\n{}\r\n", "y".repeat(512)).as_bytes());
        }
        let _ = c.write_all(b"0\r\n\r\n");
        read_until_closed(&mut c, Duration::from_secs(10)).1
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    let r = s.post("/api/jobs", vec![b'x'; 1024]).await;
    assert_eq!(r.status, 202, "exactly the limit is fine: {r:?}");
    healthy(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_over_max_queued_is_503() {
    let s = TestServer::start_with(
        Kind::Memory,
        &["--max-queued", "2", "--shutdown-grace", "0.1"],
    )
    .await;
    s.submit_async("?queue=q", "1").await;
    s.submit_async("?queue=q", "2").await;
    let r = s.post("/api/jobs?queue=q", "3").await;
    r.assert_error(503);
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    // Taking one makes room.
    s.take("q").await;
    assert_eq!(s.post("/api/jobs?queue=q", "3").await.status, 202);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_capped() {
    let s = TestServer::start_with(Kind::Memory, &["--max-waiting-clients", "2"]).await;
    let a = s.spawn_submit("?queue=w", "a");
    let b = s.spawn_submit("?queue=w", "b");
    s.wait_stat("waiting_clients", 2).await;
    // A third waiting client, of either kind, is turned away at once...
    assert_busy(&s.post("/api/submit?queue=w", "c").await);
    let id = s.submit_async("?queue=w", "d").await;
    assert_busy(&s.get(&format!("/api/jobs/{id}?wait=5")).await);
    // ... and created nothing: only a, b and d are pending.
    assert_eq!(s.stats().await["pending"], 3);
    // Requests that do not wait are not counted.
    assert_eq!(s.get(&format!("/api/jobs/{id}")).await.status, 200);

    // One answer frees one place.
    let job = s.take("w").await;
    let id_a = job["job_id"].as_str().unwrap().to_owned();
    s.complete_ok(&id_a, "", "done").await;
    let first = TestServer::join(if job["payload"] == "a" { a } else { b }).await;
    assert_eq!(first.status, 200, "{first:?}");
    let c = once_a_place_frees_up(|| {
        s.send(
            s.http
                .post(s.url("/api/submit?queue=w&timeout=0.2"))
                .body("c"),
        )
    })
    .await;
    assert_eq!(c.status, 202, "{c:?}");
    healthy(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_workers_are_capped() {
    let s = TestServer::start_with(Kind::Memory, &["--max-polling-workers", "1"]).await;
    let first = TestServer::spawn_send(s.http.get(s.url("/api/worker/poll?queue=p&wait=5")));
    s.wait_stat("polling_workers", 1).await;
    assert_busy(&s.get("/api/worker/poll?queue=p&wait=5").await);
    // A poll that does not wait is not counted.
    assert_eq!(s.get("/api/worker/poll?queue=p").await.status, 204);
    // The waiting one gets the next job; then the place is free again.
    s.submit_async("?queue=p", "job").await;
    let got = TestServer::join(first).await;
    assert_eq!(got.status, 200, "{got:?}");
    let id = got.body["job_id"].as_str().unwrap();
    s.complete_ok(id, "", "done").await;
    let again = once_a_place_frees_up(|| s.get("/api/worker/poll?queue=p&wait=0.1")).await;
    assert_eq!(again.status, 204, "{again:?}");
    healthy(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_their_limits_are_431() {
    let s = TestServer::start_with(
        Kind::Memory,
        &["--max-header-bytes", "2048", "--max-headers", "20"],
    )
    .await;
    let r = s
        .send(
            s.http
                .get(s.url("/health"))
                .header("x-big", "a".repeat(3000)),
        )
        .await;
    r.assert_error(431);
    let mut rb = s.http.get(s.url("/health"));
    for i in 0..30 {
        rb = rb.header(format!("x-h{i}"), "v");
    }
    s.send(rb).await.assert_error(431);
    // Just under both limits: fine.
    let mut rb = s
        .http
        .get(s.url("/health"))
        .header("x-big", "a".repeat(1500));
    for i in 0..10 {
        rb = rb.header(format!("x-h{i}"), "v");
    }
    assert_eq!(s.send(rb).await.status, 200);
    healthy(&s).await;
    s.stop().await;
}

/// Reads until the server closes the connection (or `limit` passes);
/// returns when it closed, and what it sent.
fn read_until_closed(conn: &mut TcpStream, limit: Duration) -> (Instant, Vec<u8>) {
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return (Instant::now(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (Instant::now(), got)
            }
            Err(e) => panic!("the server kept the connection open ({e}); got {got:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_head_is_cut_off() {
    let s = TestServer::start_with(
        Kind::Memory,
        &["--header-read-timeout", "1", "--idle-timeout", "30"],
    )
    .await;
    let addr = s.addr;
    // Trickle a head, a few bytes every 100 ms, for longer than allowed.
    let loris = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").unwrap();
        let mut reader = c.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            for i in 0..100 {
                std::thread::sleep(Duration::from_millis(100));
                if c.write_all(format!("x-{i}: y\r\n").as_bytes()).is_err() {
                    return;
                }
            }
        });
        let (closed, got) = read_until_closed(&mut reader, Duration::from_secs(10));
        let _ = trickle.join();
        (closed - start, got)
    });
    // Meanwhile others are served.
    for _ in 0..5 {
        assert_eq!(s.get("/health").await.status, 200);
    }
    let (after, got) = tokio::task::spawn_blocking(move || loris.join().unwrap())
        .await
        .unwrap();
    assert!(
        got.is_empty(),
        "no answer to a head never finished: {got:?}"
    );
    assert_about_a_second(after, "cut off");
    healthy(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_long_polls_are_not() {
    let s = TestServer::start_with(
        Kind::Memory,
        &["--idle-timeout", "1", "--header-read-timeout", "30"],
    )
    .await;
    let addr = s.addr;
    let idle = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        // The answer, then the connection is kept alive, idle.
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        let answered = Instant::now();
        let (closed, more) = read_until_closed(&mut c, Duration::from_secs(10));
        (closed - answered, more)
    });
    // A long-poll outlasting the idle timeout is in flight, not idle.
    let poll = s.get("/api/worker/poll?queue=idle&wait=2").await;
    assert_eq!(poll.status, 204, "{poll:?}");
    let (after, more) = idle.await.unwrap();
    assert!(more.is_empty(), "{more:?}");
    assert_about_a_second(after, "closed");
    healthy(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_notices_a_vanished_long_poll() {
    use common::netns::{exchange, serve_in, Namespaces, SERVER_IP};
    let Some(ns) = Namespaces::create("k") else {
        return;
    };
    let (s, port) = serve_in(&ns, &["--tcp-keepalive", "1"]).await;
    let local: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let remote: std::net::SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
    let server_ns = ns.server.clone();
    let stats = move || {
        let ns = server_ns.clone();
        Namespaces::run_in(&ns, move || {
            exchange(local, "GET", "/api/admin/stats", None)
        })
        .1
    };
    // A worker in the other namespace long-polls for a minute...
    let conn = Namespaces::run_in(&ns.client, move || {
        let mut c = TcpStream::connect_timeout(&remote, Duration::from_secs(5)).unwrap();
        c.write_all(b"GET /api/worker/poll?queue=gone&wait=60 HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        c
    });
    common::within(BOUND, "the long-poll is seen", async {
        while stats()["polling_workers"] != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // ... and vanishes without a word.
    ns.cut_client();
    let cut = Instant::now();
    common::within(
        Duration::from_secs(20),
        "keepalive notices the vanished peer",
        async {
            while stats()["polling_workers"] != 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    assert!(cut.elapsed() < Duration::from_secs(20));
    drop(conn);
    // A job submitted now is not lost to the vanished worker.
    let (status, body) = {
        let ns = ns.server.clone();
        Namespaces::run_in(&ns, move || {
            exchange(local, "POST", "/api/jobs?queue=gone", None)
        })
    };
    assert_eq!(status, 202, "{body}");
    let (_, st) = {
        let ns = ns.server.clone();
        Namespaces::run_in(&ns, move || {
            exchange(local, "GET", "/api/admin/stats", None)
        })
    };
    assert_eq!(st["pending"], 1, "{st}");
    s.stop().await;
}

/// The soft limit on open files (`Max open files` in `/proc/PID/limits`).
fn open_files_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut n = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (n.next().expect("soft"), n.next().expect("hard"))
}

/// Every waiting client and polling worker holds a socket: the server raises
/// its soft open-files limit to the hard one at start (as Go programs do),
/// and says so in one line when even the hard limit is below its caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised_to_the_hard_one() {
    use common::binary::{free_port, Proc};
    let (_, hard_here) = open_files_of(std::process::id());
    let hard = hard_here.min(4096);
    assert!(
        hard >= 1024,
        "this test needs a hard open-files limit of 1,024 or more"
    );
    let dir = tempfile::tempdir().unwrap();
    let caps = [
        "--max-waiting-clients",
        "100",
        "--max-polling-workers",
        "100",
    ];
    let mut p =
        Proc::start_with_open_files(&dir.path().join("a"), free_port(), &caps, 256, hard).await;
    assert_eq!(open_files_of(p.child.id()), (hard, hard));
    assert!(
        !p.log_text().contains("open-files limit"),
        "{}",
        p.log_text()
    );
    p.kill9();

    // A hard limit below the default caps (10,000 waiting clients alone):
    // still raised to it, with a warning.
    let mut p =
        Proc::start_with_open_files(&dir.path().join("b"), free_port(), &[], 256, hard).await;
    assert_eq!(open_files_of(p.child.id()), (hard, hard));
    let log = p.log_text();
    assert!(
        log.contains("WARN")
            && log.contains("open-files limit (ulimit -n) is below --max-waiting-clients"),
        "{log}"
    );
    p.kill9();
}
