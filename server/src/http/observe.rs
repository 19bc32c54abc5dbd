//! `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
//!
//! The per-queue numbers come from the engine's `Queues` answer at scrape time: the
//! `*_total` counters are the engine's since-start totals (they restart at zero with the
//! process, which Prometheus' `rate()` handles), the state counts and the oldest ready age
//! are gauges. The process's own instruments (reserve-to-ack, group commits, connections)
//! come from `crate::metrics`, fed by hooks in the engine and the store writer.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use qd_protocol::{Request, Response};

use super::admin::AdminError;
use super::Dashboard;
use crate::metrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    queue: String,
    state: &'static str,
}

/// The whole `/metrics` text.
pub async fn metrics_text(d: &Dashboard) -> Result<String, AdminError> {
    let queues = super::pages::all_queues(d).await?;
    let counter = Family::<QueueLabel, Counter>::default;
    let (added, completed, failed, dead) = (counter(), counter(), counter(), counter());
    let jobs = Family::<StateLabel, Gauge>::default();
    let oldest = Family::<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for q in &queues {
        let l = QueueLabel { queue: q.name.clone() };
        added.get_or_create(&l).inc_by(q.added_total);
        completed.get_or_create(&l).inc_by(q.completed_total);
        failed.get_or_create(&l).inc_by(q.failed_total);
        dead.get_or_create(&l).inc_by(q.dead_total);
        oldest.get_or_create(&l).set(q.oldest_ready_age_ms.unwrap_or(0) as f64 / 1000.0);
        for (state, n) in [
            ("ready", q.ready),
            ("delayed", q.delayed),
            ("active", q.active),
            ("dead", q.dead),
            ("completed", q.completed),
        ] {
            jobs.get_or_create(&StateLabel { queue: q.name.clone(), state }).set(n as i64);
        }
    }
    let mut r = Registry::with_prefix("qd");
    r.register("jobs_added", "Jobs added since the server started", added);
    r.register("jobs_completed", "Jobs completed since the server started", completed);
    r.register("jobs_failed", "Failed tries (nacks, lease expiries) since the server started; a retry follows each that is not dead-lettered", failed);
    r.register("jobs_dead", "Jobs dead-lettered since the server started", dead);
    r.register("jobs", "Jobs by state now (completed: those retained for display)", jobs);
    r.register(
        "oldest_ready_age_seconds",
        "How long the oldest ready job has waited (0 when none)",
        oldest,
    );
    let m = metrics::instruments();
    r.register(
        "reserve_to_ack_seconds",
        "Time from a job's reserve to its ack",
        m.reserve_to_ack.clone(),
    );
    r.register("group_commit_changes", "Changes per group commit", m.commit_changes.clone());
    r.register(
        "group_commit_seconds",
        "Duration of one group commit (apply, and fsync in fsync mode)",
        m.commit_seconds.clone(),
    );
    r.register("connections_open", "Protocol connections open now", m.connections.clone());
    let mut text = String::new();
    encode(&mut text, &r).map_err(|e| AdminError::Unexpected(e.to_string()))?;
    Ok(text)
}

/// Whether the server can serve: the engine runs, answers a `Ping`, and the last commit
/// succeeded. `Err` says which is not the case.
pub async fn ready(d: &Dashboard) -> Result<(), String> {
    if !d.admin.engine_running() {
        return Err("the engine has stopped".into());
    }
    if !metrics::last_commit_ok() {
        return Err("the last commit failed; the server is stopping".into());
    }
    match d.admin.call(Request::Ping).await {
        Ok(Response::Pong) => Ok(()),
        Ok(other) => Err(format!("unexpected answer to Ping: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}
