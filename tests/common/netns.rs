//! Two network namespaces of a test's own, `server` and `client`, joined by
//! a veth pair with private addresses: a real non-loopback peer without
//! touching the host's network. Both are deleted on drop (which deletes the
//! veth pair too).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::TestServer;

/// The server namespace's veth address.
pub const SERVER_IP: &str = "10.213.7.1";
/// The client namespace's veth address.
pub const CLIENT_IP: &str = "10.213.7.2";

/// Two fresh namespaces, linked.
pub struct Namespaces {
    /// Name of the server's namespace.
    pub server: String,
    /// Name of the client's namespace.
    pub client: String,
    /// The client namespace's end of the veth pair.
    client_dev: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespaces {
    /// Creates them (`tag` keeps the names of one process's tests apart).
    /// `None` when namespaces cannot be made here (no privileges) and CI is
    /// not set; under `CI=true` that is a failure.
    pub fn create(tag: &str) -> Option<Namespaces> {
        let id = format!("{}{tag}", std::process::id());
        let (vs, vc) = (format!("jq{id}s"), format!("jq{id}c"));
        let ns = Namespaces {
            server: format!("jobq-sec-{id}-s"),
            client: format!("jobq-sec-{id}-c"),
            client_dev: vc.clone(),
        };
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &ns.server])?;
            ip(&["netns", "add", &ns.client])?;
            ip(&[
                "link", "add", &vs, "netns", &ns.server, "type", "veth", "peer", "name", &vc,
                "netns", &ns.client,
            ])?;
            for (n, dev, addr) in [(&ns.server, &vs, SERVER_IP), (&ns.client, &vc, CLIENT_IP)] {
                ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
                ip(&["-n", n, "link", "set", dev, "up"])?;
                ip(&["-n", n, "link", "set", "lo", "up"])?;
            }
            Ok(())
        };
        match setup() {
            Ok(()) => Some(ns),
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: cannot create network namespaces here: {e}");
                None
            }
            Err(e) => panic!("cannot create network namespaces: {e}"),
        }
    }

    /// Runs `f` on a thread inside namespace `name` (sockets it creates stay
    /// in that namespace).
    pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{name}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns(2) on a valid namespace fd, affecting only this
            // thread, which ends after `f`.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// Takes the client's end of the link down: to the server, the client
    /// vanishes without a word (no FIN, no RST).
    pub fn cut_client(&self) {
        ip(&["-n", &self.client, "link", "set", &self.client_dev, "down"]).expect("link down");
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.server]);
        let _ = ip(&["netns", "del", &self.client]);
    }
}

/// One HTTP/1.1 exchange over a fresh connection from the calling thread's
/// namespace: (status, JSON body).
pub fn exchange(
    to: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: jobq\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read answer");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a full answer");
    let status = head[9..12].parse().expect("status code");
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.into()))
    };
    (status, body)
}

/// Starts an in-process server listening on 0.0.0.0 in the server
/// namespace; returns it and its port.
pub async fn serve_in(ns: &Namespaces, flags: &[&str]) -> (TestServer, u16) {
    let std_listener = Namespaces::run_in(&ns.server, || {
        let l = std::net::TcpListener::bind("0.0.0.0:0").expect("bind in namespace");
        l.set_nonblocking(true).unwrap();
        l
    });
    let port = std_listener.local_addr().unwrap().port();
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    let s =
        TestServer::start_on_listener(jobq::store::Backend::Memory, Vec::new(), flags, listener)
            .await;
    (s, port)
}
