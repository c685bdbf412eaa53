//! `jobq job`, `stats`, `jobs`, `cancel`, `clear`: the job and admin
//! endpoints in the terminal, as readable tables, or JSON with `--json`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use serde_json::{json, Value};

use super::submit::report;
use super::{exit, fail, secs, ConnArgs};
use crate::client::{Client, JobView};

/// `jobq job ID`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Exit codes: 0 completed (result on stdout), 1 error, 3 failed, 4 cancelled,
5 not finished yet, 6 refused (e.g. 404 unknown or expired id).")]
pub struct JobArgs {
    /// Where the server is.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Wait up to this many seconds for the job to end.
    #[arg(long, value_parser = secs, default_value = "0", value_name = "SECS")]
    pub wait: Duration,
    /// Print the job view as JSON instead of the result.
    #[arg(long)]
    pub json: bool,
    /// The job's id.
    pub id: String,
}

/// `jobq stats`.
#[derive(Args, Debug, Clone)]
pub struct StatsArgs {
    /// Where the server is.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the dashboard's figures on screen, refreshed each second
    /// (throughput, queue depth, percentiles), until interrupted. With
    /// `--json`, print each second's snapshot as one JSON line.
    #[arg(long)]
    pub watch: bool,
}

/// `jobq jobs`.
#[derive(Args, Debug, Clone)]
pub struct JobsArgs {
    /// Where the server is.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only jobs in this status (pending, running, completed, failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// At most this many (newest first; the server caps it at 1000) [default: 100].
    #[arg(long)]
    pub limit: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `jobq cancel ID`.
#[derive(Args, Debug, Clone)]
pub struct CancelArgs {
    /// Where the server is.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print the cancelled job as JSON.
    #[arg(long)]
    pub json: bool,
    /// The job's id.
    pub id: String,
}

/// `jobq clear`.
#[derive(Args, Debug, Clone)]
pub struct ClearArgs {
    /// Where the server is.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only this queue [default: every queue].
    #[arg(long)]
    pub queue: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn client(conn: &ConnArgs) -> Result<Client, ExitCode> {
    conn.client().map_err(fail)
}

/// A job view as JSON (the result as text, or base64 when it is not UTF-8).
pub fn view_json(v: &JobView) -> Value {
    let mut o = json!({
        "job_id": v.job_id,
        "queue": v.queue,
        "status": v.status,
        "attempts": v.attempts,
        "priority": v.priority,
        "created_at": v.created_at,
        "started_at": v.started_at,
        "completed_at": v.completed_at,
    });
    if let Some(r) = &v.result {
        match std::str::from_utf8(r) {
            Ok(s) => o["result"] = json!(s),
            Err(_) => {
                o["result"] = json!(base64::engine::general_purpose::STANDARD.encode(r));
                o["result_encoding"] = json!("base64");
            }
        }
    }
    if let Some(e) = &v.error {
        o["error"] = json!(e);
    }
    if let Some(p) = v.position {
        o["position"] = json!(p);
    }
    o
}

fn print_json(v: &Value) -> ExitCode {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    ExitCode::from(exit::OK)
}

/// Prints a call's answer: as `as_json` makes it with `--json`, else as
/// `text` writes it; an error as [`report`] does.
fn answer<T>(
    result: crate::client::Result<T>,
    json: bool,
    as_json: impl FnOnce(&T) -> Value,
    text: impl FnOnce(T),
) -> ExitCode {
    match result {
        Ok(v) if json => print_json(&as_json(&v)),
        Ok(v) => {
            text(v);
            ExitCode::from(exit::OK)
        }
        Err(e) => report(&e),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A timestamp without its sub-second part, or `-`.
fn short_time(t: Option<&str>) -> String {
    match t {
        Some(t) => match t.split_once('.') {
            Some((secs, _)) => format!("{secs}Z"),
            None => t.to_owned(),
        },
        None => "-".into(),
    }
}

/// One line, at most `n` characters.
fn clip(s: &str, n: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= n {
        one
    } else {
        let mut c: String = one.chars().take(n.saturating_sub(1)).collect();
        c.push('…');
        c
    }
}

/// `jobq job ID`: the result of a completed job, or its state.
pub async fn job(a: JobArgs) -> ExitCode {
    let c = match client(&a.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let v = match c.job_wait(&a.id, a.wait).await {
        Ok(v) => v,
        Err(e) => return report(&e),
    };
    if a.json {
        let _ = print_json(&view_json(&v));
    }
    let code = match v.status.as_str() {
        "completed" => exit::OK,
        "failed" => exit::FAILED,
        "cancelled" => exit::CANCELLED,
        _ => exit::TIMED_OUT,
    };
    if !a.json {
        match v.status.as_str() {
            "completed" => {
                let r = v.result.unwrap_or_default();
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&r).and_then(|()| out.flush());
            }
            "failed" => eprintln!(
                "jobq: job {} failed after {} attempt(s): {}",
                v.job_id,
                v.attempts,
                v.error.unwrap_or_default()
            ),
            s => eprintln!("jobq: job {} is {s}", v.job_id),
        }
    }
    ExitCode::from(code)
}

const STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

/// The stats table.
fn stats_table(s: &Value) -> String {
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0).to_string();
    let header = [
        "QUEUE",
        "TOTAL",
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    ];
    let mut rows = vec![];
    let mut all = vec!["(all)".to_owned(), n(s, "total")];
    all.extend(STATUSES.iter().map(|k| n(s, k)));
    rows.push(all);
    if let Some(qs) = s.get("queues").and_then(Value::as_object) {
        for (name, q) in qs {
            let mut r = vec![name.clone(), n(q, "total")];
            r.extend(STATUSES.iter().map(|k| n(q, k)));
            rows.push(r);
        }
    }
    let mut out = table(&header, &rows);
    out.push_str(&format!(
        "\nwaiting clients: {}   polling workers: {}   uptime: {}s\n",
        n(s, "waiting_clients"),
        n(s, "polling_workers"),
        n(s, "uptime_s")
    ));
    out
}

/// `jobq stats`.
pub async fn stats(a: StatsArgs) -> ExitCode {
    let c = match client(&a.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if a.watch {
        return watch(&c, a.json).await;
    }
    answer(c.stats().await, a.json, Value::clone, |s| {
        print!("{}", stats_table(&s));
    })
}

/// `jobq stats --watch`: follows `GET /api/admin/events`.
async fn watch(c: &Client, json: bool) -> ExitCode {
    let mut events = match c.events().await {
        Ok(e) => e,
        Err(e) => return report(&e),
    };
    let mut slots: Vec<Value> = Vec::new();
    loop {
        let (event, data) = match events.next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                eprintln!("jobq: the server ended the stream");
                return ExitCode::from(exit::ERROR);
            }
            Err(e) => return report(&e),
        };
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        match event.as_str() {
            "history" => slots = v.as_array().cloned().unwrap_or_default(),
            "snapshot" => {
                if json {
                    println!("{data}");
                    continue;
                }
                slots.push(v["slot"].clone());
                if slots.len() > 900 {
                    slots.remove(0);
                }
                // Clear the screen and draw from the top.
                print!("\x1b[2J\x1b[H{}", watch_screen(&v, &slots));
                let _ = std::io::stdout().flush();
            }
            _ => {}
        }
    }
}

/// One screen of `stats --watch`: `snap` is the latest snapshot, `slots`
/// the per-second history (oldest first).
fn watch_screen(snap: &Value, slots: &[Value]) -> String {
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let last =
        |k: &str, secs: usize| -> u64 { slots.iter().rev().take(secs).map(|s| n(s, k)).sum() };
    let per_sec = |k: &str| {
        let secs = slots.len().clamp(1, 60);
        last(k, secs) as f64 / secs as f64
    };
    let ms = |v: &Value| match v.as_f64() {
        Some(x) if x < 10.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.0}"),
        None => "-".into(),
    };
    let pct = |p: &Value| {
        format!(
            "{} / {} / {} ms",
            ms(&p["p50"]),
            ms(&p["p95"]),
            ms(&p["p99"])
        )
    };
    let mut out = format!(
        "jobq {}   uptime {}s{}\n\n",
        "stats --watch",
        n(snap, "uptime_s"),
        if snap["metrics_enabled"] == false {
            "   (server runs with --metrics off: figures stay at zero)"
        } else {
            ""
        }
    );
    let slot = &snap["slot"];
    out.push_str(&format!(
        "completed/s  {:>7} now  {:>9.1} avg 1 min   {}\n",
        n(slot, "completed"),
        per_sec("completed"),
        sparkline(slots, "completed", 40)
    ));
    out.push_str(&format!(
        "failed/s     {:>7} now  {:>9.1} avg 1 min   {}\n",
        n(slot, "failed"),
        per_sec("failed"),
        sparkline(slots, "failed", 40)
    ));
    out.push_str(&format!(
        "submitted/s  {:>7} now  {:>9.1} avg 1 min\n\n",
        n(slot, "submitted"),
        per_sec("submitted")
    ));
    out.push_str(&format!(
        "queue wait p50/p95/p99 (1 min)  {}\nrun time   p50/p95/p99 (1 min)  {}\n",
        pct(&snap["queue_wait_minute"]),
        pct(&snap["run_time_minute"])
    ));
    out.push_str(&format!(
        "waiting clients {}   polling workers {}   lease rescues (15 min) {}\n\n",
        n(snap, "waiting_clients"),
        n(snap, "polling_workers"),
        last("rescued", 900)
    ));
    let mut rows = Vec::new();
    if let Some(qs) = snap["queues"].as_object() {
        for (name, q) in qs {
            rows.push(vec![
                name.clone(),
                n(q, "pending").to_string(),
                n(q, "running").to_string(),
                q["oldest_pending_s"]
                    .as_f64()
                    .map_or("-".into(), |s| format!("{s:.1}s")),
            ]);
        }
    }
    if rows.is_empty() {
        out.push_str("no pending or running jobs\n");
    } else {
        out.push_str(&table(&["QUEUE", "PENDING", "RUNNING", "OLDEST"], &rows));
    }
    out
}

/// The last `width` seconds of `key` as block characters, scaled to their maximum.
fn sparkline(slots: &[Value], key: &str, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let vals: Vec<u64> = slots
        .iter()
        .rev()
        .take(width)
        .rev()
        .map(|s| s.get(key).and_then(Value::as_u64).unwrap_or(0))
        .collect();
    let max = vals.iter().copied().max().unwrap_or(0).max(1);
    vals.iter()
        .map(|&v| BARS[((v * 7) / max) as usize])
        .collect()
}

/// The jobs table.
fn jobs_table(jobs: &[JobView]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let detail = match (&j.error, &j.result, j.position) {
                (Some(e), _, _) => clip(e, 60),
                (_, Some(r), _) => clip(&String::from_utf8_lossy(r), 60),
                (_, _, Some(p)) => format!("{p} ahead"),
                _ => String::new(),
            };
            vec![
                j.job_id.clone(),
                j.queue.clone(),
                j.status.clone(),
                j.attempts.to_string(),
                short_time(Some(&j.created_at)),
                short_time(j.completed_at.as_deref()),
                detail,
            ]
        })
        .collect();
    table(
        &[
            "JOB ID",
            "QUEUE",
            "STATUS",
            "ATTEMPTS",
            "CREATED",
            "ENDED",
            "RESULT / ERROR",
        ],
        &rows,
    )
}

/// `jobq jobs`.
pub async fn jobs(a: JobsArgs) -> ExitCode {
    let c = match client(&a.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let list = c
        .jobs(a.status.as_deref(), a.queue.as_deref(), a.limit)
        .await;
    answer(
        list,
        a.json,
        |list| json!({ "jobs": list.iter().map(view_json).collect::<Vec<_>>() }),
        |list| {
            if list.is_empty() {
                println!("no jobs");
            } else {
                print!("{}", jobs_table(&list));
            }
        },
    )
}

/// `jobq cancel ID`.
pub async fn cancel(a: CancelArgs) -> ExitCode {
    let c = match client(&a.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    answer(c.cancel(&a.id).await, a.json, view_json, |v| {
        println!("cancelled job {}", v.job_id);
    })
}

/// `jobq clear`.
pub async fn clear(a: ClearArgs) -> ExitCode {
    let c = match client(&a.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    answer(
        c.clear(a.queue.as_deref()).await,
        a.json,
        |n| json!({ "cancelled": n }),
        |n| match &a.queue {
            Some(q) => println!("cleared queue {q}: {n} job(s) cancelled"),
            None => println!("cleared every queue: {n} job(s) cancelled"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A     LONGER\nxxxx  1\ny     22\n");
    }

    #[test]
    fn watch_screen_shows_rates_percentiles_and_queues() {
        let slots: Vec<Value> = (0..10)
            .map(|i| json!({"completed": i, "failed": 0, "submitted": i, "rescued": u64::from(i == 3)}))
            .collect();
        let snap = json!({
            "slot": {"completed": 9, "failed": 0, "submitted": 9},
            "uptime_s": 12, "waiting_clients": 2, "polling_workers": 3,
            "queue_wait_minute": {"p50": 1.5, "p95": 12.0, "p99": null},
            "run_time_minute": {"p50": null, "p95": null, "p99": null},
            "queues": {"emails": {"pending": 4, "running": 1, "oldest_pending_s": 2.25}},
            "metrics_enabled": true
        });
        let s = watch_screen(&snap, &slots);
        assert!(
            s.contains("completed/s        9 now        4.5 avg 1 min"),
            "{s}"
        );
        assert!(s.contains("1.50 / 12 / - ms"), "{s}");
        assert!(
            s.contains("waiting clients 2   polling workers 3   lease rescues (15 min) 1"),
            "{s}"
        );
        assert!(s.contains("emails") && s.contains("2.2s"), "{s}");
        assert_eq!(sparkline(&slots, "completed", 4), "▅▆▇█");
    }

    #[test]
    fn stats_table_has_every_queue() {
        let s = json!({"total": 3, "pending": 1, "running": 1, "completed": 1, "failed": 0,
            "cancelled": 0, "waiting_clients": 2, "polling_workers": 1, "uptime_s": 9,
            "queues": {"default": {"total": 3, "pending": 1, "running": 1, "completed": 1}}});
        let t = stats_table(&s);
        assert!(t.starts_with("QUEUE"), "{t}");
        assert!(
            t.contains("(all)    3      1        1        1          0       0"),
            "{t}"
        );
        assert!(t.contains("default  3"), "{t}");
        assert!(t.contains("waiting clients: 2"), "{t}");
    }

    #[test]
    fn clip_is_one_short_line() {
        assert_eq!(clip("a\nb  c", 10), "a b c");
        assert_eq!(clip("abcdefghij", 5), "abcd…");
    }
}
