//! The built `jobq` binary as a child process, for crash and shutdown tests.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `jobq serve` child process. Killed (SIGKILL) on drop if still running.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Where its stderr goes.
    pub log: std::path::PathBuf,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Proc {
    /// Starts `jobq serve --data-dir DIR --listen 127.0.0.1:PORT FLAGS...`
    /// (with `--grpc-listen off` unless FLAGS name it, so parallel tests do
    /// not collide on port 50051) and waits (up to 20 s) until `/health`
    /// answers.
    pub async fn start(data_dir: &Path, port: u16, flags: &[&str]) -> Proc {
        Self::start_limited(data_dir, port, flags, None).await
    }

    /// As [`Proc::start`], with the largest file the process may write
    /// limited to `max_file_bytes` (RLIMIT_FSIZE; SIGXFSZ ignored, so a
    /// write beyond it fails like a full disk).
    pub async fn start_limited(
        data_dir: &Path,
        port: u16,
        flags: &[&str],
        max_file_bytes: Option<u64>,
    ) -> Proc {
        Self::start_with_env(data_dir, port, flags, max_file_bytes, &[]).await
    }

    /// As [`Proc::start_limited`], with extra environment variables.
    pub async fn start_with_env(
        data_dir: &Path,
        port: u16,
        flags: &[&str],
        max_file_bytes: Option<u64>,
        env: &[(&str, &str)],
    ) -> Proc {
        Self::spawn(data_dir, port, flags, max_file_bytes, None, env).await
    }

    /// As [`Proc::start`], started with the open-files limit (RLIMIT_NOFILE)
    /// at `soft` and `hard`.
    pub async fn start_with_open_files(
        data_dir: &Path,
        port: u16,
        flags: &[&str],
        soft: u64,
        hard: u64,
    ) -> Proc {
        Self::spawn(data_dir, port, flags, None, Some((soft, hard)), &[]).await
    }

    async fn spawn(
        data_dir: &Path,
        port: u16,
        flags: &[&str],
        max_file_bytes: Option<u64>,
        open_files: Option<(u64, u64)>,
        env: &[(&str, &str)],
    ) -> Proc {
        use std::os::unix::process::CommandExt as _;
        let log = data_dir.with_extension(format!("{port}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobq"));
        if let Some((soft, hard)) = open_files {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(limit) = max_file_bytes {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(grpc_off_unless_named(flags))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn jobq");
        let p = Proc {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        p.wait_ready().await;
        p
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        if let Err(e) =
            super::http::wait_health(&http, &self.base, 200, Duration::from_secs(20)).await
        {
            panic!(
                "jobq did not become ready ({e}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Lifts the file size limit set by [`Proc::start_limited`] ("space returns").
    pub fn unlimit_files(&self) {
        let lim = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: prlimit(2) on our own child's pid with a valid struct.
        let rc = unsafe {
            libc::prlimit(
                self.child.id() as i32,
                libc::RLIMIT_FSIZE,
                &lim,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM.
    pub fn term(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `sig` (SIGHUP, SIGTERM, ...) to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "jobq did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it wrote to stderr.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// `--grpc-listen off`, unless `flags` already say where gRPC listens.
pub fn grpc_off_unless_named(flags: &[&str]) -> &'static [&'static str] {
    if flags.iter().any(|f| f.starts_with("--grpc-listen")) {
        &[]
    } else {
        &["--grpc-listen", "off"]
    }
}

/// Spawns `jobq worker --grpc --grpc-url GRPC_URL ARGS...`, logging
/// warnings to `stderr`.
pub fn grpc_worker(grpc_url: &str, args: &[&str], stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["worker", "--grpc", "--grpc-url", grpc_url])
        .args(args)
        .args(["--url", "http://127.0.0.1:9"]) // required, unused with --grpc
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn jobq worker")
}

/// Runs `jobq serve` expecting a start-up failure (with `--grpc-listen off`
/// unless `args` name it); returns (exit code, stderr).
pub fn start_fails(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .arg("serve")
        .args(grpc_off_unless_named(args))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run jobq");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends SIGTERM to `child` (a `jobq worker`, say) and waits, within
/// [`super::BOUND`], for it to exit.
pub async fn term_and_wait(child: &mut Child) -> ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    super::within(super::BOUND, "the child exits", async {
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
