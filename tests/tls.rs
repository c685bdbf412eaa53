//! Built-in TLS: a round trip (submit, poll, complete) through the Rust
//! client and the CLI over `https://` with a private CA made by rcgen, and
//! certificate reload (in process, and by SIGHUP to the real binary) where
//! new handshakes get the new certificate and open connections keep going.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::free_port;
use common::pki::{install, make_pki, Pki};
use common::{Kind, TestServer, BOUND};
use jobq::client::{Client, SubmitOptions};

fn client(base: &str, ca: &Path) -> Client {
    Client::builder(base)
        .ca_cert_file(ca)
        .unwrap()
        .build()
        .unwrap()
}

/// Whether a fresh client trusting `ca` gets through to `/api/admin/stats`.
async fn handshake_ok(base: &str, ca: &Path) -> bool {
    common::within(BOUND, "stats over TLS", client(base, ca).stats())
        .await
        .is_ok()
}

const CLIENT: &str = "client-token-0123456789";
const WORKER: &str = "worker-token-0123456789";

/// Submit (client token), poll, heartbeat and complete (worker token), and
/// read the job back, all over `https://` trusting only `ca`.
async fn round_trip(base: &str, ca: &Path) {
    let c = Client::builder(base)
        .token(CLIENT)
        .ca_cert_file(ca)
        .unwrap()
        .build()
        .unwrap();
    let worker = Client::builder(base)
        .token(WORKER)
        .ca_cert_file(ca)
        .unwrap()
        .build()
        .unwrap()
        .worker(vec!["tls".into()])
        .long_poll(Duration::from_secs(5));
    let opts = SubmitOptions {
        queue: Some("tls".into()),
        ..Default::default()
    };
    let submitter = c.clone();
    let submit = tokio::spawn(async move { submitter.submit("over tls", &opts).await });
    let job = common::within(BOUND, "poll over TLS", worker.poll())
        .await
        .unwrap()
        .expect("a job within 5 s");
    assert_eq!(&job.payload[..], b"over tls");
    assert_eq!(job.queue, "tls");
    worker.heartbeat(&job).await.unwrap();
    worker.complete(&job, "OVER TLS").await.unwrap();
    let done = common::within(BOUND, "submit over TLS", submit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&done.result[..], b"OVER TLS");
    let view = c.job(&done.job_id).await.unwrap();
    assert_eq!(view.status, "completed");
}

fn tls_flags(pki: &Pki) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        pki.cert.display().to_string(),
        "--tls-key".into(),
        pki.key.display().to_string(),
        "--client-token".into(),
        CLIENT.into(),
        "--worker-token".into(),
        WORKER.into(),
    ]
}

async fn start_tls(pki: &Pki) -> TestServer {
    let flags = tls_flags(pki);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestServer::start_with(Kind::Memory, &flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_poll_complete_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let s = start_tls(&pki).await;
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);
    round_trip(&s.base, &pki.ca).await;

    // Plain HTTP to the TLS port gets no answer; a client that trusts
    // another CA refuses the certificate.
    let plain = format!("http://{}/health", s.addr);
    let r = common::within(BOUND, "plain HTTP to TLS", reqwest::get(&plain)).await;
    assert!(r.is_err(), "{r:?}");
    let stranger = make_pki(dir.path(), "stranger");
    let err = client(&s.base, &stranger.ca).stats().await.unwrap_err();
    assert!(
        matches!(err, jobq::client::Error::Unreachable { .. }),
        "{err:?}"
    );
    // The server is fine after those.
    assert!(handshake_ok(&s.base, &pki.ca).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_certificates_serve_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let live = make_pki(dir.path(), "live");
    let next = make_pki(dir.path(), "next");
    let s = start_tls(&live).await;
    let old_client = client(&s.base, &live.ca);
    old_client.stats().await.unwrap();
    assert!(!handshake_ok(&s.base, &next.ca).await);

    install(&next, &live);
    s.tls.as_ref().unwrap().reload().unwrap();
    assert!(
        handshake_ok(&s.base, &next.ca).await,
        "new handshakes use the new certificate"
    );
    assert!(
        !handshake_ok(&s.base, &live.ca).await,
        "the old certificate is gone"
    );
    // A connection opened before the reload goes on.
    old_client.stats().await.unwrap();

    // A broken key file: the reload fails and the certificate in force stays.
    std::fs::write(&live.key, "garbage").unwrap();
    assert!(s.tls.as_ref().unwrap().reload().is_err());
    assert!(handshake_ok(&s.base, &next.ca).await);
    round_trip(&s.base, &next.ca).await;
    s.stop().await;
}

/// A `jobq serve` child with TLS; killed on drop.
struct TlsProc {
    child: std::process::Child,
    base: String,
    log: PathBuf,
}

impl Drop for TlsProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(args)
        .env_remove("JOBQ_TOKEN")
        .env_remove("JOBQ_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_the_cli_speaks_https() {
    let dir = tempfile::tempdir().unwrap();
    let live = make_pki(dir.path(), "live");
    let next = make_pki(dir.path(), "next");
    let port = free_port();
    let log = dir.path().join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["serve", "--storage", "memory", "--shutdown-grace", "1"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(tls_flags(&live))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let p = TlsProc {
        child,
        base: format!("https://127.0.0.1:{port}"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !handshake_ok(&p.base, &live.ca).await {
        assert!(
            Instant::now() < deadline,
            "jobq did not come up: {}",
            std::fs::read_to_string(&p.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // `jobq worker` and `jobq submit` over https:// with --ca-cert.
    let mut worker = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args([
            "worker", "--url", &p.base, "--token", WORKER, "--queue", "cli",
        ])
        .args([
            "--ca-cert",
            live.ca.to_str().unwrap(),
            "--exec",
            "tr a-z A-Z",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = run_cli(&[
        "submit",
        "--url",
        &p.base,
        "--token",
        CLIENT,
        "--queue",
        "cli",
        "--timeout",
        "20",
        "--ca-cert",
        live.ca.to_str().unwrap(),
        "hello",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "HELLO");
    // Without --ca-cert the private CA is not trusted.
    let out = run_cli(&["stats", "--url", &p.base]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    install(&next, &live);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(p.child.id() as i32, libc::SIGHUP) }, 0);
    common::within(BOUND, "the new certificate is served", async {
        while !handshake_ok(&p.base, &next.ca).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!handshake_ok(&p.base, &live.ca).await);
    let text = std::fs::read_to_string(&p.log).unwrap();
    assert!(text.contains("TLS certificate reloaded"), "{text}");

    // SAFETY: as above.
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let _ = worker.wait();
}

#[test]
fn bad_tls_files_are_start_up_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let other = make_pki(dir.path(), "b");
    let (code, err) = common::binary::start_fails(&["--tls-cert", pki.cert.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tls-key"), "{err}");
    let (code, err) = common::binary::start_fails(&[
        "--storage",
        "memory",
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        other.key.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("a-cert.pem") && err.contains("b-key.pem"),
        "{err}"
    );
    let (code, err) = common::binary::start_fails(&[
        "--storage",
        "memory",
        "--tls-cert",
        dir.path().join("missing.pem").to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read TLS certificate"), "{err}");
}
