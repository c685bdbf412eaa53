//! Role tokens over real HTTP (docs/api.md, "Who may call what"): every role ×
//! endpoint × credential, roles left open, the loopback-only admin rule seen
//! from a real non-loopback peer (two network namespaces joined by a veth
//! pair), token-file rotation by SIGHUP under load, and tokens kept out of
//! the logs.

mod common;

use std::time::{Duration, Instant};

use common::binary::{free_port, Proc};
use common::{Kind, Reply, TestServer};

const CLIENT: &str = "client-token-0123456789";
const WORKER: &str = "worker-token-0123456789";
const ADMIN: &str = "admin-token-0123456789ab";
const UNKNOWN: &str = "unknown-token-0123456789";
const NO_JOB: &str = "6b1d9a4e-2b7c-4b8e-9c59-4d6a1f0c3e21";

/// Who calls: which `Authorization` header is sent.
#[derive(Clone, Copy, Debug)]
enum Cred {
    None,
    Token(&'static str),
    Raw(&'static [u8]),
}

/// The answer expected from an endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Let through: the endpoint's own answer, with this status.
    Pass(u16),
    Unauthorized,
    Forbidden,
}

/// An endpoint, the role it belongs to (`None`: open) and its answer when
/// let through.
struct Endpoint {
    method: &'static str,
    path: String,
    role: Option<&'static str>,
    ok: u16,
}

fn endpoints() -> Vec<Endpoint> {
    let e = |method, path: &str, role, ok| Endpoint {
        method,
        path: path.to_owned(),
        role,
        ok,
    };
    vec![
        e("POST", "/api/jobs?queue=auth-jobs", Some("client"), 202),
        e(
            "POST",
            "/api/submit?queue=auth-jobs&timeout=0.001",
            Some("client"),
            202,
        ),
        e("GET", &format!("/api/jobs/{NO_JOB}"), Some("client"), 404),
        e(
            "DELETE",
            &format!("/api/jobs/{NO_JOB}"),
            Some("client"),
            404,
        ),
        e(
            "GET",
            "/api/worker/poll?queue=auth-empty",
            Some("worker"),
            204,
        ),
        e(
            "POST",
            &format!("/api/worker/complete/{NO_JOB}"),
            Some("worker"),
            404,
        ),
        e(
            "POST",
            &format!("/api/worker/fail/{NO_JOB}"),
            Some("worker"),
            404,
        ),
        e(
            "POST",
            &format!("/api/worker/heartbeat/{NO_JOB}"),
            Some("worker"),
            404,
        ),
        e("GET", "/api/admin/stats", Some("admin"), 200),
        e(
            "GET",
            "/api/admin/next?queue=auth-empty",
            Some("admin"),
            204,
        ),
        e("GET", "/api/admin/jobs?limit=1", Some("admin"), 200),
        e(
            "DELETE",
            "/api/admin/clear?queue=auth-empty",
            Some("admin"),
            200,
        ),
        e("GET", "/health", None, 200),
        e("GET", "/no/such/route", None, 404),
    ]
}

async fn call(s: &TestServer, ep: &Endpoint, cred: Cred) -> Reply {
    let method = reqwest::Method::from_bytes(ep.method.as_bytes()).unwrap();
    let mut rb = s.http.request(method, s.url(&ep.path));
    if ep.path.contains("/fail/") {
        rb = rb.body(r#"{"error":"x"}"#);
    }
    rb = match cred {
        Cred::None => rb,
        Cred::Token(t) => rb.header("authorization", format!("Bearer {t}")),
        Cred::Raw(v) => rb.header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(v).unwrap(),
        ),
    };
    s.send(rb).await
}

fn check(ep: &Endpoint, cred: Cred, want: Want, r: &Reply) {
    let what = format!("{} {} with {cred:?}", ep.method, ep.path);
    match want {
        Want::Pass(status) => assert_eq!(r.status, status, "{what}: {r:?}"),
        Want::Unauthorized => {
            r.assert_error(401);
            assert_eq!(r.header("www-authenticate"), "Bearer", "{what}");
        }
        Want::Forbidden => {
            r.assert_error(403);
            assert!(r.headers.get("www-authenticate").is_none(), "{what}: {r:?}");
        }
    }
}

/// The role a token belongs to.
fn role_of(token: &str) -> Option<&'static str> {
    match token {
        CLIENT => Some("client"),
        WORKER => Some("worker"),
        ADMIN => Some("admin"),
        _ => None,
    }
}

/// A server where each role has its token.
async fn every_role_has_a_token() -> TestServer {
    TestServer::start_with(
        Kind::Memory,
        &[
            "--client-token",
            CLIENT,
            "--worker-token",
            WORKER,
            "--admin-token",
            ADMIN,
        ],
    )
    .await
}

const CREDS: [Cred; 9] = [
    Cred::None,
    Cred::Token(CLIENT),
    Cred::Token(WORKER),
    Cred::Token(ADMIN),
    Cred::Token(UNKNOWN),
    Cred::Raw(b"Basic dXNlcjpwdw=="),
    Cred::Raw(b"Bearer"),
    Cred::Raw(b"Bearer \xe9t\xe9"),
    // Case-insensitive scheme: a valid credential.
    Cred::Raw(b"bearer client-token-0123456789"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_endpoint_and_credential() {
    let s = every_role_has_a_token().await;
    let mut checked = 0;
    for ep in endpoints() {
        for cred in CREDS {
            let want = match (ep.role, cred) {
                (None, _) => Want::Pass(ep.ok),
                (Some(_), Cred::None) => Want::Unauthorized,
                (Some(role), Cred::Token(t)) => match role_of(t) {
                    None => Want::Unauthorized,
                    Some(r) if r == role || r == "admin" => Want::Pass(ep.ok),
                    Some(_) => Want::Forbidden,
                },
                (Some("client"), Cred::Raw(v)) if v.ends_with(CLIENT.as_bytes()) => {
                    Want::Pass(ep.ok)
                }
                (Some(_), Cred::Raw(v)) if v.ends_with(CLIENT.as_bytes()) => Want::Forbidden,
                (Some(_), Cred::Raw(_)) => Want::Unauthorized,
            };
            check(&ep, cred, want, &call(&s, &ep, cred).await);
            checked += 1;
        }
    }
    assert_eq!(checked, 14 * 9);
    // The messages say what is wrong, and name no token.
    let r = call(&s, &endpoints()[0], Cred::Token(WORKER)).await;
    let msg = r.body["error"].as_str().unwrap();
    assert!(msg.contains("client"), "{msg}");
    assert!(!r.raw.windows(WORKER.len()).any(|w| w == WORKER.as_bytes()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_path_slips_past_its_role() {
    let s = every_role_has_a_token().await;
    for path in [
        "/api/%61dmin/stats",
        "/api/admin/%73tats",
        "//api/admin/stats",
        "/api/admin//stats",
        "/api/admin/stats/",
        "/api/./admin/stats",
        "/api/worker/../admin/stats",
        "/API/admin/stats",
        "/api/admin/stats?x=/health",
    ] {
        for cred in [Cred::None, Cred::Token(CLIENT)] {
            let ep = Endpoint {
                method: "GET",
                path: path.to_owned(),
                role: Some("admin"),
                ok: 200,
            };
            let r = call(&s, &ep, cred).await;
            assert!(
                matches!(r.status, 401 | 403 | 404),
                "{path} with {cred:?} must not be served: {r:?}"
            );
            r.assert_error(r.status);
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_a_token_is_open() {
    // Only one role has a token: it is needed on that role's endpoints
    // (on admin ones from loopback too); the other roles' endpoints are
    // open to any or no token (admin ones to this loopback caller).
    for (flag, token, role) in [
        ("--client-token", CLIENT, "client"),
        ("--admin-token", ADMIN, "admin"),
    ] {
        let s = TestServer::start_with(Kind::Memory, &[flag, token]).await;
        for ep in endpoints() {
            for cred in [Cred::None, Cred::Token(UNKNOWN), Cred::Token(token)] {
                let want = match (ep.role, cred) {
                    (Some(r), Cred::None | Cred::Token(UNKNOWN)) if r == role => Want::Unauthorized,
                    _ => Want::Pass(ep.ok),
                };
                check(&ep, cred, want, &call(&s, &ep, cred).await);
            }
        }
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_flow_through_the_rust_client() {
    let s = TestServer::start_with(
        Kind::Memory,
        &["--client-token", CLIENT, "--worker-token", WORKER],
    )
    .await;
    let client = jobq::client::Client::with_token(&s.base, CLIENT).unwrap();
    let worker = jobq::client::Client::with_token(&s.base, WORKER)
        .unwrap()
        .worker(vec!["tok".into()])
        .long_poll(Duration::from_secs(5));
    let opts = jobq::client::SubmitOptions {
        queue: Some("tok".into()),
        ..Default::default()
    };
    let submit = tokio::spawn(async move { client.submit("hello", &opts).await });
    let job = common::within(common::BOUND, "poll", worker.poll())
        .await
        .unwrap()
        .expect("a job");
    // The client's token never reaches the worker.
    assert!(
        !job.headers.contains_key("authorization"),
        "{:?}",
        job.headers
    );
    worker.complete(&job, "HELLO").await.unwrap();
    let done = common::within(common::BOUND, "submit", submit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&done.result[..], b"HELLO");

    // A worker token cannot submit: 403, reported as a rejection.
    let wrong = jobq::client::Client::with_token(&s.base, WORKER).unwrap();
    let err = wrong
        .submit_async("x", &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, jobq::client::Error::Rejected { status: 403, .. }),
        "{err:?}"
    );
    s.stop().await;
}

/// The loopback-only admin rule seen from a real remote peer: the server
/// listens in one network namespace, the caller is in another, joined by a
/// veth pair with private addresses. Both namespaces are created here and
/// deleted on drop; nothing touches the host's network.
mod remote {
    use super::*;
    use std::net::SocketAddr;
    use std::process::Command;

    use common::netns::{exchange, serve_in, Namespaces, CLIENT_IP, SERVER_IP};

    const ADMIN_CALLS: [(&str, &str, u16); 4] = [
        ("GET", "/api/admin/stats", 200),
        ("GET", "/api/admin/next", 204),
        ("GET", "/api/admin/jobs", 200),
        ("DELETE", "/api/admin/clear?queue=none", 200),
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_is_loopback_only_without_an_admin_token() {
        let Some(ns) = Namespaces::create("a") else {
            return;
        };
        let (s, port) = serve_in(&ns, &["--client-token", CLIENT]).await;
        let remote: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
        let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for (method, path, ok) in ADMIN_CALLS {
            // From the other namespace (peer 10.213.7.2): refused, whatever
            // token comes along.
            for token in [None, Some(CLIENT), Some(UNKNOWN)] {
                let (status, body) =
                    Namespaces::run_in(&ns.client, move || exchange(remote, method, path, token));
                assert_eq!(status, 403, "{method} {path} from {CLIENT_IP}: {body}");
                assert!(
                    body["error"].as_str().unwrap().contains("loopback"),
                    "{body}"
                );
            }
            // From the server's own non-loopback address: still not loopback.
            let (status, _) =
                Namespaces::run_in(&ns.server, move || exchange(remote, method, path, None));
            assert_eq!(status, 403, "{method} {path} from {SERVER_IP}");
            // From loopback in the server's namespace: allowed.
            let (status, body) =
                Namespaces::run_in(&ns.server, move || exchange(local, method, path, None));
            assert_eq!(status, ok, "{method} {path} from 127.0.0.1: {body}");
        }
        // Client endpoints are not loopback-only: a remote client with its
        // token gets through; without it, 401.
        let path = format!("/api/jobs/{NO_JOB}");
        let p = path.clone();
        let (status, _) = Namespaces::run_in(&ns.client, move || {
            exchange(remote, "GET", &p, Some(CLIENT))
        });
        assert_eq!(status, 404);
        let (status, _) =
            Namespaces::run_in(&ns.client, move || exchange(remote, "GET", &path, None));
        assert_eq!(status, 401);
        // Open endpoints stay open to remote peers.
        let (status, body) =
            Namespaces::run_in(&ns.client, move || exchange(remote, "GET", "/health", None));
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_admin_token_opens_admin_endpoints_to_remote_peers() {
        let Some(ns) = Namespaces::create("b") else {
            return;
        };
        let (s, port) = serve_in(&ns, &["--admin-token", ADMIN]).await;
        let remote: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
        for (method, path, ok) in ADMIN_CALLS {
            let (status, _) = Namespaces::run_in(&ns.client, move || {
                exchange(remote, method, path, Some(ADMIN))
            });
            assert_eq!(status, ok, "{method} {path} with the admin token");
            let (status, _) =
                Namespaces::run_in(&ns.client, move || exchange(remote, method, path, None));
            assert_eq!(status, 401, "{method} {path} without a token");
        }
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listening_beyond_loopback_without_tokens_warns() {
        let Some(ns) = Namespaces::create("c") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.server])
            .arg(env!("CARGO_BIN_EXE_jobq"))
            .args([
                "serve",
                "--storage",
                "memory",
                "--listen",
                "0.0.0.0:3000",
                "--grpc-listen",
                "off",
                "--worker-token",
                WORKER,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening beyond loopback") || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = child.kill();
        let _ = child.wait();
        let warning = text
            .lines()
            .find(|l| l.contains("listening beyond loopback"))
            .unwrap_or_else(|| panic!("no warning in {text}"));
        assert!(
            warning.contains("WARN") && warning.contains("client"),
            "{warning}"
        );
        assert!(
            !warning.contains("\"worker\""),
            "the worker role has a token: {warning}"
        );
        assert!(!text.contains(WORKER), "{text}");
    }
}

/// Writes `text` as the token file (atomically: a reader never sees half).
fn write_tokens(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The status of `GET /api/jobs/{NO_JOB}` with `token`: 404 = accepted.
async fn client_status(http: &reqwest::Client, p: &Proc, token: &str) -> u16 {
    http.get(p.url(&format!("/api/jobs/{NO_JOB}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

/// Polls (bounded) until `token` gets `want`.
async fn until_status(http: &reqwest::Client, p: &Proc, token: &str, want: u16) {
    common::within(common::BOUND, &format!("token answered {want}"), async {
        while client_status(http, p, token).await != want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Waits (bounded) until `p` has logged a failed token reload.
async fn reload_error_logged(p: &Proc) {
    common::within(common::BOUND, "reload error logged", async {
        while !p.log_text().contains("tokens not reloaded") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_rotates_on_sighup_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let base = format!("client {CLIENT}\nworker {WORKER}\n");
    write_tokens(&file, &format!("{base}client old-client-token-0001\n"));
    let p = Proc::start(
        &dir.path().join("data"),
        free_port(),
        &[
            "--storage",
            "memory",
            "--token-file",
            file.to_str().unwrap(),
        ],
    )
    .await;

    // Load on kept-alive connections with the tokens that never change.
    // Clients stop first; workers once every submitted job is done.
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_workers = tokio_util::sync::CancellationToken::new();
    let client = jobq::client::Client::with_token(&p.base, CLIENT).unwrap();
    let worker = jobq::client::Client::with_token(&p.base, WORKER)
        .unwrap()
        .worker(vec!["rot".into()])
        .long_poll(Duration::from_secs(1));
    let mut load = tokio::task::JoinSet::new();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..2 {
        let (worker, stop) = (worker.clone(), stop_workers.clone());
        workers.spawn(async move {
            let mut done = 0u64;
            while !stop.is_cancelled() {
                match worker.poll().await {
                    Ok(Some(job)) => {
                        let echo = job.payload.clone();
                        worker.complete(&job, echo).await.expect("complete");
                        done += 1;
                    }
                    Ok(None) => {}
                    Err(e) => panic!("worker {w}: {e}"),
                }
            }
            done
        });
    }
    for c in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        load.spawn(async move {
            let opts = jobq::client::SubmitOptions {
                queue: Some("rot".into()),
                ..Default::default()
            };
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let payload = format!("client {c} job {n}");
                let done = client
                    .submit(payload.clone(), &opts)
                    .await
                    .unwrap_or_else(|e| panic!("client {c} job {n}: {e}"));
                assert_eq!(&done.result[..], payload.as_bytes());
                n += 1;
            }
            n
        });
    }

    let http = reqwest::Client::new();
    assert_eq!(client_status(&http, &p, "old-client-token-0001").await, 404);
    for round in 0..5 {
        let new = format!("new-client-token-{round:04}");
        let old = if round == 0 {
            "old-client-token-0001".to_owned()
        } else {
            format!("new-client-token-{:04}", round - 1)
        };
        // Add the new token next to the old one: both valid.
        write_tokens(&file, &format!("{base}client {old}\nclient {new}\n"));
        p.signal(libc::SIGHUP);
        until_status(&http, &p, &new, 404).await;
        assert_eq!(client_status(&http, &p, &old).await, 404);
        // Retire the old one.
        write_tokens(&file, &format!("{base}client {new}\n"));
        p.signal(libc::SIGHUP);
        until_status(&http, &p, &old, 401).await;
        assert_eq!(client_status(&http, &p, &new).await, 404);
    }
    // A broken file keeps the tokens in force.
    write_tokens(&file, "client\n");
    p.signal(libc::SIGHUP);
    reload_error_logged(&p).await;
    assert_eq!(client_status(&http, &p, "new-client-token-0004").await, 404);
    assert_eq!(client_status(&http, &p, UNKNOWN).await, 401);

    stop.cancel();
    let mut total = 0;
    while let Some(r) = common::within(Duration::from_secs(30), "load ends", load.join_next()).await
    {
        total += r.expect("no load task failed");
    }
    assert!(total > 20, "too little load went through: {total}");
    stop_workers.cancel();
    let mut completed = 0;
    while let Some(r) =
        common::within(Duration::from_secs(30), "workers end", workers.join_next()).await
    {
        completed += r.expect("no worker failed");
    }
    assert_eq!(completed, total, "every submitted job was completed once");
    let mut p = p;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the server"
    );
    p.term();
    assert!(p.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let file_token = "file-secret-token-0123456789";
    write_tokens(&file, &format!("admin {file_token}\n"));
    let env_token = "env-secret-token-0123456789";
    let short = "shortsecret";
    let p = Proc::start_with_env(
        &dir.path().join("data"),
        free_port(),
        &[
            "--storage",
            "memory",
            "--shutdown-grace",
            "1",
            "--token-file",
            file.to_str().unwrap(),
            "--client-token",
            CLIENT,
            "--client-token",
            short,
        ],
        None,
        &[("JOBQ_WORKER_TOKEN", env_token), ("RUST_LOG", "trace")],
    )
    .await;
    let http = reqwest::Client::new();
    // Every secret the server knows, and two it does not.
    let secrets = [
        CLIENT,
        short,
        env_token,
        file_token,
        UNKNOWN,
        "wrong secret",
    ];
    for token in secrets {
        for path in [
            "/api/jobs?queue=logs",
            "/api/worker/poll?queue=logs",
            "/api/admin/stats",
        ] {
            let r = http
                .post(p.url(path))
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap();
            assert!(r.status().as_u16() < 500);
        }
    }
    // A worker sees the submit's headers, never its credentials.
    let job = http
        .get(p.url("/api/worker/poll?queue=logs"))
        .bearer_auth(env_token)
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 200);
    let job: serde_json::Value = job.json().await.unwrap();
    assert!(job["headers"].get("authorization").is_none(), "{job}");
    // A reload that fails on a line holding a token.
    write_tokens(&file, &format!("{file_token}\n"));
    p.signal(libc::SIGHUP);
    reload_error_logged(&p).await;
    let mut p = p;
    p.term();
    assert!(p.wait_exit(Duration::from_secs(30)).await.success());
    let log = p.log_text();
    assert!(
        log.contains("shorter than 16"),
        "the short token is warned about: {log}"
    );
    for secret in secrets {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}

#[test]
fn bad_token_settings_are_start_up_errors() {
    use common::binary::start_fails;
    let (code, err) = start_fails(&["--client-token", "two words"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--client-token"), "{err}");
    assert!(!err.contains("two words"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (code, err) = start_fails(&[
        "--storage",
        "memory",
        "--token-file",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot read token file") && err.contains("missing"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let bad = dir.path().join("bad");
    std::fs::write(
        &bad,
        "client ok-token-0123456789\nroot hunter2-0123456789\n",
    )
    .unwrap();
    let (code, err) = start_fails(&["--storage", "memory", "--token-file", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
