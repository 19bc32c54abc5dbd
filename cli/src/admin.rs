//! The operator's subcommands of `qd` (issue 8): `queues`, `jobs`, `job`, `search`,
//! `retry`, `purge`, `remove`, `promote`, `kill`, `pause`, `resume`, `limits` (set, or `--show`).
//! `qd queues` and `qd job` also show flow limits and a running job's progress. Each connects with the admin
//! role through the client library, prints a human table by default and one JSON value with
//! `--json`. docs/OPERATIONS.md describes them; the server side is the engine's admin
//! answers. `cli.rs` only registers them (`Command::Admin`) and prints errors.

use std::time::Duration;

use anyhow::{bail, Context};
use qd_client::{
    Client, Cursor, JobDetail, JobId, JobState, JobSummary, QueueLimits, Rate, SearchQuery,
};
use serde_json::{json, Value};

/// How the admin commands reach the server.
#[derive(Debug, clap::Args)]
pub struct ConnArgs {
    /// Address of the qd server.
    #[arg(long, env = "QD_ADDR", default_value_t = qd_server::config::DEFAULT_LISTEN.to_string())]
    addr: String,
    /// Print one JSON value instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The states a listing can ask for, as flags spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    Ready,
    Delayed,
    Active,
    Dead,
    Completed,
}

impl From<StateArg> for JobState {
    fn from(s: StateArg) -> JobState {
        match s {
            StateArg::Ready => JobState::Ready,
            StateArg::Delayed => JobState::Delayed,
            StateArg::Active => JobState::Active,
            StateArg::Dead => JobState::Dead,
            StateArg::Completed => JobState::Completed,
        }
    }
}

/// The admin subcommands, flattened into `qd`'s own.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// List queues with their counts and whether they are paused.
    Queues(ConnArgs),
    /// List one page of a queue's jobs in one state.
    Jobs {
        queue: String,
        #[arg(long, value_enum, default_value = "ready")]
        state: StateArg,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The `next` cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show one job: payload, options and failures.
    Job {
        id: JobId,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Move dead jobs back to ready with fresh attempts: the ids given, or `--all`.
    Retry {
        queue: String,
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<JobId>,
        /// Every dead job of the queue.
        #[arg(long)]
        all: bool,
        /// With --all: only jobs of this name.
        #[arg(long, requires = "all")]
        name: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete a queue's dead jobs (only those dead longer than --older-than, e.g. `7d`).
    Purge {
        queue: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete jobs by id (active jobs are skipped: their worker decides).
    Remove {
        #[arg(required = true)]
        ids: Vec<JobId>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Make delayed jobs ready now.
    Promote {
        #[arg(required = true)]
        ids: Vec<JobId>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Move waiting (ready or delayed) jobs to the dead set now; `qd retry` undoes it.
    Kill {
        #[arg(required = true)]
        ids: Vec<JobId>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Stop workers from taking a queue's jobs (adds still go in). Survives restarts.
    Pause {
        queue: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Undo `qd pause`.
    Resume {
        queue: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Set a queue's flow limits to exactly the flags given (no flag: lift them all), or
    /// print them with --show. Survives restarts. See docs/FLOW.md.
    Limits {
        queue: String,
        /// Print the queue's limits (and a worker's rate-limit hold) without changing them.
        #[arg(long, conflicts_with_all = ["rate", "concurrency", "group_concurrency", "group_rate"])]
        show: bool,
        /// Job starts per window across all workers, `MAX/DURATION`: `100/1s`, `5/1m`.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<Rate>,
        /// Jobs active at once across all workers.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Jobs of one group active at once (1: one at a time, in order, per group).
        #[arg(long)]
        group_concurrency: Option<u32>,
        /// Job starts of one group per window, `MAX/DURATION`.
        #[arg(long, value_parser = parse_rate)]
        group_rate: Option<Rate>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Find a queue's jobs by payload: `--text STR` or `--where path=value` (JSON).
    Search {
        queue: String,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[arg(long, required_unless_present = "field", conflicts_with = "field")]
        text: Option<String>,
        /// `a.b.c=value`: the payload's JSON value at that path, as text (`42`, `true`, `x`).
        #[arg(long = "where", id = "field")]
        field: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Runs one admin subcommand.
pub async fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Queues(conn) => queues(&conn).await,
        AdminCommand::Jobs { queue, state, limit, cursor, conn } => {
            let client = connect(&conn).await?;
            let page = client.jobs(&queue, state.into(), parse_cursor(cursor)?, limit).await?;
            print_page(&conn, &page.jobs, page.next.as_ref());
            Ok(())
        }
        AdminCommand::Job { id, conn } => {
            let job = connect(&conn).await?.job(id).await.map_err(|e| {
                let hint = if e.is_not_found() { "; list jobs with `qd jobs QUEUE`" } else { "" };
                anyhow::anyhow!("{e}{hint}")
            })?;
            print_job(&conn, &job);
            Ok(())
        }
        AdminCommand::Retry { queue, ids, all, name, conn } => {
            let client = connect(&conn).await?;
            let n = if all {
                client.retry_all_dead(&queue, name.as_deref()).await?
            } else {
                client.retry_dead(&queue, &ids).await?
            };
            print_count(&conn, n, "dead jobs moved back to ready");
            Ok(())
        }
        AdminCommand::Purge { queue, older_than, conn } => {
            let n = connect(&conn).await?.purge_dead(&queue, older_than).await?;
            print_count(&conn, n, "dead jobs deleted");
            Ok(())
        }
        AdminCommand::Remove { ids, conn } => {
            let n = connect(&conn).await?.remove(&ids).await?;
            print_count(&conn, n, "jobs deleted (active, unknown and uncommitted ids are skipped)");
            Ok(())
        }
        AdminCommand::Promote { ids, conn } => {
            let n = connect(&conn).await?.promote(&ids).await?;
            print_count(&conn, n, "delayed jobs made ready");
            Ok(())
        }
        AdminCommand::Kill { ids, conn } => {
            let n = connect(&conn).await?.kill(&ids).await?;
            print_count(
                &conn,
                n,
                "waiting jobs moved to the dead set (active, dead and unknown ids are skipped)",
            );
            Ok(())
        }
        AdminCommand::Pause { queue, conn } => {
            connect(&conn).await?.pause(&queue).await?;
            print_done(
                &conn,
                &format!("paused {queue}: workers take none of its jobs until `qd resume {queue}`"),
            );
            Ok(())
        }
        AdminCommand::Limits { queue, show: true, conn, .. } => show_limits(&conn, &queue).await,
        AdminCommand::Limits {
            queue,
            rate,
            concurrency,
            group_concurrency,
            group_rate,
            conn,
            ..
        } => {
            let limits = QueueLimits { rate, concurrency, group_concurrency, group_rate };
            connect(&conn).await?.set_queue_limits(&queue, limits).await?;
            print_done(&conn, &format!("limits of {queue}: {}", describe_limits(&limits)));
            Ok(())
        }
        AdminCommand::Resume { queue, conn } => {
            connect(&conn).await?.resume(&queue).await?;
            print_done(&conn, &format!("resumed {queue}"));
            Ok(())
        }
        AdminCommand::Search { queue, state, text, field, limit, cursor, conn } => {
            let query = match (text, field) {
                (Some(text), _) => SearchQuery::Substring(text),
                (None, Some(field)) => parse_where(&field)?,
                (None, None) => bail!("give --text STR or --where path=value"),
            };
            let client = connect(&conn).await?;
            let cursor = parse_cursor(cursor)?;
            let page = client.search(&queue, state.map(Into::into), query, cursor, limit).await?;
            print_page(&conn, &page.jobs, page.next.as_ref());
            Ok(())
        }
    }
}

/// Connects with the admin role and the secret from the environment
/// ([`crate::cli::client_builder`]). The client's connect error already names the address
/// and what to check, so no context is added.
pub(crate) async fn connect(conn: &ConnArgs) -> anyhow::Result<Client> {
    Ok(crate::cli::client_builder(&conn.addr, qd_protocol::Role::Admin)?.connect().await?)
}

/// `path=value` of `--where`.
fn parse_where(spec: &str) -> anyhow::Result<SearchQuery> {
    match spec.split_once('=') {
        Some((path, value)) if !path.is_empty() => {
            Ok(SearchQuery::Field { path: path.to_owned(), value: value.to_owned() })
        }
        _ => bail!("--where takes path=value, e.g. --where user.id=42 (got {spec:?})"),
    }
}

/// `MAX/DURATION` (`100/1s`, `5/1m`, `1/500ms`) as a [`Rate`].
fn parse_rate(spec: &str) -> anyhow::Result<Rate> {
    let (max, per) = spec.split_once('/').context("a rate is MAX/DURATION, e.g. 100/1s")?;
    let max: u32 = max.trim().parse().context("the MAX of MAX/DURATION is a whole number")?;
    let per = humantime::parse_duration(per.trim())
        .context("the DURATION of MAX/DURATION is like 1s, 500ms or 1m")?;
    let per_ms = u64::try_from(per.as_millis()).unwrap_or(u64::MAX);
    Ok(Rate::new(max, per_ms))
}

/// Limits as `qd limits` flags would spell them.
fn describe_limits(l: &QueueLimits) -> String {
    let rate = |r: &Rate| {
        format!("{}/{}", r.max, humantime::format_duration(Duration::from_millis(r.per_ms)))
    };
    let mut parts = Vec::new();
    if let Some(r) = &l.rate {
        parts.push(format!("--rate {}", rate(r)));
    }
    if let Some(n) = l.concurrency {
        parts.push(format!("--concurrency {n}"));
    }
    if let Some(n) = l.group_concurrency {
        parts.push(format!("--group-concurrency {n}"));
    }
    if let Some(r) = &l.group_rate {
        parts.push(format!("--group-rate {}", rate(r)));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

/// `qd limits QUEUE --show`: what `Queues` says of one queue's limits.
async fn show_limits(conn: &ConnArgs, queue: &str) -> anyhow::Result<()> {
    let queues = connect(conn).await?.queues().await?;
    let Some(q) = queues.iter().find(|q| q.name == queue) else {
        bail!("no queue {queue}: it has no jobs and no settings; list them with `qd queues`");
    };
    if conn.json {
        println!("{}", limits_json(&q.limits, q.rate_limited_until_ms));
        return Ok(());
    }
    println!("limits of {queue}: {}", describe_limits(&q.limits));
    if let Some(until) = q.rate_limited_until_ms {
        println!("starts held until {until} (unix ms) by a worker's rate-limited nack");
    }
    Ok(())
}

/// Limits as JSON, one field per limit (`null` when unlimited), rates as `{max, per_ms}`.
fn limits_json(l: &QueueLimits, held_until_ms: Option<u64>) -> Value {
    let rate = |r: &Option<Rate>| r.map(|r| json!({ "max": r.max, "per_ms": r.per_ms }));
    json!({
        "rate": rate(&l.rate), "concurrency": l.concurrency,
        "group_concurrency": l.group_concurrency, "group_rate": rate(&l.group_rate),
        "flags": describe_limits(l), "rate_limited_until_ms": held_until_ms,
    })
}

/// Cursors are printed and taken as hex.
fn parse_cursor(cursor: Option<String>) -> anyhow::Result<Option<Cursor>> {
    let Some(text) = cursor else { return Ok(None) };
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .with_context(|| {
            format!("--cursor {text:?} is not a cursor qd printed; copy the `next:` value of the previous page")
        })?;
    Ok(Some(Cursor(bytes)))
}

fn hex(cursor: &Cursor) -> String {
    cursor.0.iter().map(|b| format!("{b:02x}")).collect()
}

async fn queues(conn: &ConnArgs) -> anyhow::Result<()> {
    let queues = connect(conn).await?.queues().await?;
    if conn.json {
        let rows: Vec<Value> = queues
            .iter()
            .map(|q| {
                json!({
                    "name": q.name, "paused": q.paused, "ready": q.ready, "delayed": q.delayed,
                    "active": q.active, "dead": q.dead, "completed": q.completed,
                    "oldest_ready_age_ms": q.oldest_ready_age_ms, "added_total": q.added_total,
                    "completed_total": q.completed_total, "failed_total": q.failed_total,
                    "dead_total": q.dead_total,
                    "limits": limits_json(&q.limits, q.rate_limited_until_ms),
                })
            })
            .collect();
        println!("{}", Value::Array(rows));
        return Ok(());
    }
    if queues.is_empty() {
        println!("no queues yet: add a job with `qd add QUEUE NAME`");
        return Ok(());
    }
    let width = queues.iter().map(|q| q.name.len()).max().unwrap_or(5).max(5);
    println!(
        "{:<width$} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10}  {:<7}  limits",
        "queue", "ready", "delayed", "active", "dead", "completed", "oldest", "state"
    );
    for q in &queues {
        let oldest = q.oldest_ready_age_ms.map_or("-".into(), age);
        let state = match (q.paused, q.rate_limited_until_ms) {
            (true, _) => "paused",
            (false, Some(_)) => "held",
            (false, None) => "running",
        };
        let limits = if q.limits.is_unlimited() { "-".into() } else { describe_limits(&q.limits) };
        println!(
            "{:<width$} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10}  {state:<7}  {limits}",
            q.name, q.ready, q.delayed, q.active, q.dead, q.completed, oldest
        );
    }
    Ok(())
}

fn age(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

fn summary_json(j: &JobSummary) -> Value {
    json!({
        "id": j.id, "queue": j.queue, "name": j.name, "state": format!("{:?}", j.state).to_lowercase(),
        "attempts_used": j.attempts_used, "max_attempts": j.max_attempts, "priority": j.priority,
        "created_at_ms": j.created_at_ms, "run_at_ms": j.run_at_ms,
        "lease_deadline_ms": j.lease_deadline_ms, "worker": j.worker,
        "last_error": j.last_error, "finished_at_ms": j.finished_at_ms,
    })
}

fn print_page(conn: &ConnArgs, jobs: &[JobSummary], next: Option<&Cursor>) {
    if conn.json {
        let jobs: Vec<Value> = jobs.iter().map(summary_json).collect();
        println!("{}", json!({ "jobs": jobs, "next": next.map(hex) }));
        return;
    }
    if jobs.is_empty() {
        println!("no jobs on this page");
    } else {
        println!("{:>12} {:<20} {:<9} {:>8}  last error / worker", "id", "name", "state", "tries");
        for j in jobs {
            let note = j.worker.as_deref().or(j.last_error.as_deref()).unwrap_or("");
            let state = format!("{:?}", j.state).to_lowercase();
            let tries = format!("{}/{}", j.attempts_used, j.max_attempts);
            println!("{:>12} {:<20} {:<9} {:>8}  {}", j.id, j.name, state, tries, one_line(note));
        }
    }
    if let Some(next) = next {
        println!("next: {} (pass it as --cursor for the following page)", hex(next));
    }
}

fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    match line.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_owned(),
    }
}

fn print_job(conn: &ConnArgs, job: &JobDetail) {
    let payload = String::from_utf8_lossy(&job.payload);
    let errors: Vec<Value> = job
        .errors
        .iter()
        .map(|e| json!({ "attempt": e.attempt, "at_ms": e.at_ms, "message": e.message }))
        .collect();
    if conn.json {
        let mut v = summary_json(&job.summary);
        v["payload"] = Value::String(payload.into_owned());
        v["errors"] = Value::Array(errors);
        v["started_at_ms"] = json!(job.started_at_ms);
        v["key"] = json!(job.options.key);
        v["progress"] = job.progress.as_deref().map_or(Value::Null, progress_json);
        println!("{v}");
        return;
    }
    let s = &job.summary;
    println!("job {} in {} ({}), {:?}", s.id, s.queue, s.name, s.state);
    println!("  tries      {}/{}", s.attempts_used, s.max_attempts);
    println!("  priority   {}", s.priority);
    if let Some(w) = &s.worker {
        println!("  worker     {w}");
    }
    if let Some(key) = &job.options.key {
        println!("  key        {key}");
    }
    if let Some(progress) = &job.progress {
        println!("  progress   {}", one_line(&String::from_utf8_lossy(progress)));
    }
    println!("  payload    {payload}");
    for e in &job.errors {
        println!("  try {} failed: {}", e.attempt, one_line(&e.message));
    }
}

/// A progress report as JSON: the value itself when it is JSON (`42`, `{"done":3}`), else
/// its text.
fn progress_json(progress: &[u8]) -> Value {
    serde_json::from_slice(progress)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(progress).into_owned()))
}

fn print_count(conn: &ConnArgs, n: u64, what: &str) {
    if conn.json {
        println!("{}", json!({ "count": n }));
    } else {
        println!("{n} {what}");
    }
}

fn print_done(conn: &ConnArgs, what: &str) {
    if conn.json {
        println!("{}", json!({ "done": true }));
    } else {
        println!("{what}");
    }
}

/// The error chain as one line, each cause once: a library error that already prints its
/// source (the client's connect error does) would otherwise show it twice.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        assert_eq!(parse_rate("100/1s").unwrap(), Rate::new(100, 1000));
        assert_eq!(parse_rate("5 / 1m").unwrap(), Rate::new(5, 60_000));
        for bad in ["100", "x/1s", "1/soon", "-1/1s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        let l = QueueLimits {
            rate: Some(Rate::new(100, 1000)),
            concurrency: Some(10),
            group_concurrency: Some(1),
            group_rate: None,
        };
        assert_eq!(describe_limits(&l), "--rate 100/1s --concurrency 10 --group-concurrency 1");
        assert_eq!(describe_limits(&QueueLimits::default()), "none");
    }

    #[test]
    fn where_and_cursor_flags() {
        assert_eq!(
            parse_where("user.id=42").unwrap(),
            SearchQuery::Field { path: "user.id".into(), value: "42".into() }
        );
        assert!(parse_where("=1").is_err());
        assert!(parse_where("no-equals").is_err());
        let c = Cursor(vec![0, 0xab, 3]);
        assert_eq!(parse_cursor(Some(hex(&c))).unwrap(), Some(c));
        assert!(parse_cursor(Some("xyz".into())).is_err());
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect to qd at A: {0}; is it running?")]
        struct Outer(#[source] std::io::Error);
        let e = anyhow::Error::new(Outer(std::io::Error::other("connection refused")));
        let e = e.context("cannot reach qd at A");
        let text = error_text(&e);
        assert_eq!(text.matches("connection refused").count(), 1, "{text}");
        assert!(text.starts_with("cannot reach qd at A: cannot connect"), "{text}");
    }
}
