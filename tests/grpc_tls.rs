//! gRPC over TLS (`--tls-cert` with `--grpc-listen`): a job submitted over
//! HTTPS is taken and completed over gRPC TLS by a client trusting a
//! private CA; plain-text gRPC gets nowhere on the TLS port; a reloaded
//! certificate serves new gRPC handshakes; `jobq worker --grpc` runs a job
//! over `https://` with `--ca-cert`.

mod common;

use std::path::Path;

use common::pki::{install, make_pki, Pki};
use common::{within, Kind, TestServer, BOUND};
use jobq::client::{Client, SubmitOptions};
use jobq::grpc::pb;
use jobq::grpc::pb::worker_service_client::WorkerServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

async fn start(pki: &Pki) -> TestServer {
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    TestServer::start_with(
        Kind::Memory,
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    )
    .await
}

fn https_url(s: &TestServer) -> String {
    format!("https://{}", s.grpc_addr.unwrap())
}

/// A gRPC channel over TLS trusting only `ca`.
async fn tls_channel(s: &TestServer, ca: &Path) -> Result<Channel, tonic::transport::Error> {
    let pem = std::fs::read(ca).unwrap();
    let endpoint = Endpoint::from_shared(https_url(s))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .unwrap();
    within(BOUND, "TLS connect", endpoint.connect()).await
}

/// Whether a fresh client trusting `ca` gets a gRPC answer (an empty queue's
/// `NOT_FOUND` counts: the call went through).
async fn grpc_answers(s: &TestServer, ca: &Path) -> bool {
    let Ok(channel) = tls_channel(s, ca).await else {
        return false;
    };
    let r = within(
        BOUND,
        "RequestJob",
        WorkerServiceClient::new(channel).request_job(pb::JobRequest::default()),
    )
    .await;
    matches!(r, Err(e) if e.code() == Code::NotFound)
}

fn https_client(s: &TestServer, ca: &Path) -> Client {
    Client::builder(&s.base)
        .ca_cert_file(ca)
        .unwrap()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_completes_an_https_submit() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let s = start(&pki).await;
    assert!(s.base.starts_with("https://"), "{}", s.base);

    let c = https_client(&s, &pki.ca);
    let submit =
        tokio::spawn(async move { c.submit("over grpc tls", &SubmitOptions::default()).await });
    let mut grpc = WorkerServiceClient::new(tls_channel(&s, &pki.ca).await.unwrap());
    let job = within(BOUND, "a job over gRPC TLS", async {
        loop {
            let req = pb::JobRequest {
                wait_seconds: 5,
                ..Default::default()
            };
            match grpc.request_job(req).await {
                Ok(j) => return j.into_inner(),
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert_eq!(job.payload, "over grpc tls");
    let done = grpc
        .complete_job(pb::JobResult {
            job_id: job.id.clone(),
            payload: "OVER GRPC TLS".into(),
            lease_id: job.lease_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.success);
    let done = within(BOUND, "submit over HTTPS", submit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.job_id, job.id);
    assert_eq!(&done.result[..], b"OVER GRPC TLS");

    // Plain-text gRPC on the TLS port gets no answer.
    let plain = async {
        let channel = Endpoint::from_shared(format!("http://{}", s.grpc_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        WorkerServiceClient::new(channel)
            .request_job(pb::JobRequest::default())
            .await
            .map_err(|e| e.to_string())
    };
    let r = within(BOUND, "plain gRPC to TLS", plain).await;
    assert!(r.is_err(), "{r:?}");
    // A client trusting another CA refuses the certificate; the server is
    // fine after both.
    let stranger = make_pki(dir.path(), "stranger");
    assert!(!grpc_answers(&s, &stranger.ca).await);
    assert!(grpc_answers(&s, &pki.ca).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_certificate_serves_new_grpc_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let live = make_pki(dir.path(), "live");
    let next = make_pki(dir.path(), "next");
    let s = start(&live).await;
    assert!(grpc_answers(&s, &live.ca).await);
    assert!(!grpc_answers(&s, &next.ca).await);
    install(&next, &live);
    s.tls.as_ref().unwrap().reload().unwrap();
    assert!(
        grpc_answers(&s, &next.ca).await,
        "new gRPC handshakes use the new certificate"
    );
    assert!(!grpc_answers(&s, &live.ca).await, "the old one is gone");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_worker_runs_a_job_over_grpc_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let s = start(&pki).await;
    let ca = pki.ca.display().to_string();
    let mut w = common::binary::grpc_worker(
        &https_url(&s),
        &["--ca-cert", &ca, "--exec", "tr a-z A-Z"],
        std::process::Stdio::inherit(),
    );
    let c = https_client(&s, &pki.ca);
    let done = within(
        BOUND,
        "a job run by the TLS worker",
        c.submit("hello tls worker", &SubmitOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(&done.result[..], b"HELLO TLS WORKER");
    // SIGTERM: a clean exit.
    let status = common::binary::term_and_wait(&mut w).await;
    assert_eq!(status.code(), Some(0));
    s.stop().await;
}
