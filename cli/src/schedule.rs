//! `qd schedule set|rm|ls|run` (issue 9): named cron and interval schedules, through the client
//! library with the admin role. Tables by default, one JSON value with `--json`, like the
//! other admin commands (`admin.rs`, whose connection flags these share). What a schedule
//! does is docs/SCHEDULES.md's subject and the broker's (`broker/schedules.rs`).

use std::time::{Duration, UNIX_EPOCH};

use anyhow::bail;
use bytes::Bytes;
use qd_client::{Job, Schedule, ScheduleInfo, ScheduleSpec};
use serde_json::{json, Value};

use crate::admin::ConnArgs;

/// `qd schedule ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Create or replace a schedule: `--cron EXPR [--tz ZONE]` or `--every DURATION`; each
    /// fire adds job NAME with PAYLOAD to QUEUE. Setting the same spec again keeps its clock.
    Set {
        /// The schedule's name (letters, digits, `.`, `_`, `:`, `-`).
        name: String,
        queue: String,
        /// The job name each fire adds.
        job: String,
        #[arg(default_value = "")]
        payload: String,
        /// Cron expression: 5 fields, or 6 with seconds first (`0 30 2 * * *`).
        #[arg(long, required_unless_present = "every", conflicts_with = "every")]
        cron: Option<String>,
        /// Time zone of --cron (an IANA name such as Europe/Berlin).
        #[arg(long, default_value = "UTC", requires = "cron")]
        tz: String,
        /// Fixed interval, e.g. `30s`, `5m`, `1h` (at least 1s), counted from this command.
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<Duration>,
        /// Attempts of each job.
        #[arg(long)]
        attempts: Option<u32>,
        /// Priority of each job (lower runs first).
        #[arg(long)]
        priority: Option<i32>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete a schedule (jobs it already added stay).
    Rm {
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List the schedules with their last and next fire times.
    Ls(ConnArgs),
    /// Fire a schedule now: add one job from its template. Its next tick stays as it was.
    Run {
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Runs one `qd schedule` subcommand.
pub async fn run(cmd: ScheduleCommand) -> anyhow::Result<()> {
    match cmd {
        ScheduleCommand::Set {
            name,
            queue,
            job,
            payload,
            cron,
            tz,
            every,
            attempts,
            priority,
            conn,
        } => {
            let spec = match (cron, every) {
                (Some(expr), _) => ScheduleSpec::Cron { expr, tz },
                (None, Some(every)) => {
                    ScheduleSpec::Every { every_ms: every.as_millis().min(u64::MAX as u128) as u64 }
                }
                (None, None) => bail!("give --cron EXPR or --every DURATION"),
            };
            let mut template = Job::new(job, Bytes::from(payload));
            if let Some(a) = attempts {
                template = template.attempts(a);
            }
            if let Some(p) = priority {
                template = template.priority(p);
            }
            let schedule = Schedule { name, spec, queue, job: template.into() };
            let info = crate::admin::connect(&conn).await?.upsert_schedule(schedule).await?;
            print(&conn, &[info]);
            Ok(())
        }
        ScheduleCommand::Rm { name, conn } => {
            let existed = crate::admin::connect(&conn).await?.remove_schedule(&name).await?;
            if conn.json {
                println!("{}", json!({ "removed": existed }));
            } else if existed {
                println!("removed schedule {name}");
            } else {
                println!("no schedule named {name}; list them with `qd schedule ls`");
            }
            Ok(())
        }
        ScheduleCommand::Ls(conn) => {
            let list = crate::admin::connect(&conn).await?.schedules().await?;
            print(&conn, &list);
            Ok(())
        }
        ScheduleCommand::Run { name, conn } => {
            let id = crate::admin::connect(&conn).await?.run_schedule_now(&name).await?;
            if conn.json {
                println!("{}", json!({ "id": id }));
            } else {
                println!("schedule {name} added job {id}");
            }
            Ok(())
        }
    }
}

fn spec_text(spec: &ScheduleSpec) -> String {
    match spec {
        ScheduleSpec::Cron { expr, tz } => format!("cron {expr:?} {tz}"),
        ScheduleSpec::Every { every_ms } => {
            format!("every {}", humantime::format_duration(Duration::from_millis(*every_ms)))
        }
    }
}

/// Unix ms as RFC 3339 UTC, seconds precision.
fn time(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".into(),
    }
}

fn print(conn: &ConnArgs, list: &[ScheduleInfo]) {
    if conn.json {
        let rows: Vec<Value> = list
            .iter()
            .map(|i| {
                let s = &i.schedule;
                let spec = match &s.spec {
                    ScheduleSpec::Cron { expr, tz } => json!({ "cron": expr, "tz": tz }),
                    ScheduleSpec::Every { every_ms } => json!({ "every_ms": every_ms }),
                };
                json!({
                    "name": s.name, "spec": spec, "queue": s.queue, "job": s.job.name,
                    "anchor_ms": i.anchor_ms, "last_fire_ms": i.last_fire_ms,
                    "next_fire_ms": i.next_fire_ms,
                })
            })
            .collect();
        println!("{}", Value::Array(rows));
        return;
    }
    if list.is_empty() {
        println!("no schedules; create one with `qd schedule set NAME QUEUE JOB --every 1m`");
        return;
    }
    println!("{:<24} {:<32} {:<16} {:<21} {:<21}", "NAME", "SPEC", "QUEUE/JOB", "LAST", "NEXT");
    for i in list {
        let s = &i.schedule;
        println!(
            "{:<24} {:<32} {:<16} {:<21} {:<21}",
            s.name,
            spec_text(&s.spec),
            format!("{}/{}", s.queue, s.job.name),
            time(i.last_fire_ms),
            time(i.next_fire_ms),
        );
    }
}
