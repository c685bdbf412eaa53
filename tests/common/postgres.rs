//! PostgreSQL for tests: the server named by `JOBQ_TEST_POSTGRES_URL`
//! (default: the local one, trust auth). Every test gets a database of its
//! own, created fresh and dropped when its [`TestDb`] is dropped. Without a
//! reachable server a test is skipped with one line, except under `CI=true`,
//! where it fails.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::NoTls;

/// The admin URL tests connect to.
pub fn admin_url() -> String {
    std::env::var("JOBQ_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database name replaced by `db` (URL or key=value form).
pub fn with_dbname(url: &str, db: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={db}");
    };
    let (base, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let rest = &base[scheme_end + 3..];
    let host_part = match rest.find('/') {
        Some(i) => &rest[..i],
        None => rest,
    };
    format!("{}{host_part}/{db}{query}", &url[..scheme_end + 3])
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(url, NoTls))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Whether the test server is reachable. Prints one line and returns false
/// when it is not (the caller skips); panics instead under `CI=true`.
pub async fn available(test: &str) -> bool {
    match connect(&admin_url()).await {
        Ok(_) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "CI=true but PostgreSQL at {} is not reachable: {e}",
                admin_url()
            )
        }
        Err(e) => {
            eprintln!(
                "skipped {test}: PostgreSQL at {} not reachable ({e})",
                admin_url()
            );
            false
        }
    }
}

/// A database of one test's own; dropped (connections and all) on drop.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// URL of the database, for `--postgres-url`.
    pub url: String,
}

impl TestDb {
    /// Creates a fresh, empty database.
    pub async fn create() -> Self {
        let name = format!("jobq_test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&admin_url())
            .await
            .expect("PostgreSQL reachable (check available() first)");
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create test database");
        let url = with_dbname(&admin_url(), &name);
        TestDb { name, url }
    }

    /// Terminates every connection to this database (as a PostgreSQL
    /// restart would) and returns how many it ended.
    pub async fn terminate_connections(&self) -> i64 {
        let admin = connect(&admin_url()).await.expect("PostgreSQL reachable");
        let row = admin
            .query_one(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                 where datname = $1 and pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .expect("terminate connections");
        row.get(0)
    }

    /// Runs `sql` (one or more statements) on this database, as a change
    /// made by hand.
    pub async fn execute(&self, sql: &str) {
        let c = connect(&self.url).await.expect("PostgreSQL reachable");
        c.batch_execute(sql).await.expect("statements by hand");
    }

    /// Runs one query on this database and returns the first column of the
    /// first row as i64.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let c = connect(&self.url).await.expect("PostgreSQL reachable");
        c.query_one(sql, &[]).await.expect("query").get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside or outside a runtime: use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = connect(&admin_url()).await {
                    let _ = admin
                        .batch_execute(&format!("drop database if exists {name} with (force)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A TCP proxy in front of PostgreSQL that a test can take down (every
/// connection cut, new ones refused) and bring back, as a database restart
/// or a network partition of one node would look to that node.
pub struct PgProxy {
    /// The port to connect to instead of PostgreSQL's.
    pub port: u16,
    /// Existing connections stop forwarding (silently) when notified.
    hole: Arc<tokio::sync::Notify>,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl PgProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: (String, u16)) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let hole = Arc::new(tokio::sync::Notify::new());
        let accept = {
            let (up, conns, hole) = (up.clone(), conns.clone(), hole.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let (target, hole) = (target.clone(), hole.clone());
                    conns.lock().push(tokio::spawn(async move {
                        let hole = hole.notified();
                        if let Ok(mut outbound) =
                            tokio::net::TcpStream::connect((target.0.as_str(), target.1)).await
                        {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                // Keep both sockets open, forward nothing.
                                _ = hole => std::future::pending::<()>().await,
                            }
                        }
                    }));
                }
            })
        };
        PgProxy {
            port,
            hole,
            up,
            conns,
            accept,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    /// Existing connections go silent (no reset, nothing forwarded), as
    /// after a network partition; new connections work.
    pub fn blackhole(&self) {
        self.hole.notify_waiters();
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

/// A proxy in front of the test server and a connection string for `db`
/// through it; `None` when the test server is not a TCP address.
pub async fn proxied(db: &TestDb) -> Option<(PgProxy, String)> {
    let admin: tokio_postgres::Config = admin_url().parse().ok()?;
    let (Some(tokio_postgres::config::Host::Tcp(host)), Some(&port)) =
        (admin.get_hosts().first(), admin.get_ports().first())
    else {
        return None;
    };
    let proxy = PgProxy::start((host.clone(), port)).await;
    let mut url = format!(
        "host=127.0.0.1 port={} dbname={} user={}",
        proxy.port,
        db.name,
        admin.get_user().unwrap_or("postgres")
    );
    if let Some(pw) = admin.get_password() {
        url.push_str(&format!(" password='{}'", String::from_utf8_lossy(pw)));
    }
    Some((proxy, url))
}
