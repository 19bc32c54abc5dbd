//! The dashboard's actions (POSTs): retry, delete and promote a job; pause, resume, retry
//! all dead and purge dead of a queue; run a schedule now, remove one. Each checks the
//! session's CSRF token first (see `session.rs`). Destructive ones (delete, purge, retry all, remove) answer a confirmation page the
//! first time and act only when it is submitted with `confirmed=1`; that needs no script.
//! Afterwards the browser is sent back (303) to where it came from, with the outcome.

use std::collections::HashMap;

use qd_protocol::{Request, Response};

use super::html::{button, esc};
use super::Dashboard;

/// What a POST led to.
#[derive(Debug)]
pub enum Outcome {
    /// Done; go back to this path with this message.
    Done { back: String, notice: String },
    /// Ask first: the body of a confirmation page.
    Confirm(String),
    /// The engine refused or failed; the message to show.
    Failed(String),
}

/// Where to go after an action: the form's `back` when it is a path of this site.
fn back(form: &HashMap<String, String>, default: &str) -> String {
    match form.get("back") {
        Some(b) if b.starts_with('/') && !b.starts_with("//") && !b.contains('\\') => b.clone(),
        _ => default.to_string(),
    }
}

fn confirm(
    what: &str,
    path: &str,
    csrf: &str,
    form: &HashMap<String, String>,
    cancel: &str,
) -> Outcome {
    let mut fields: Vec<(&str, &str)> =
        form.iter().filter(|(k, _)| *k != "csrf").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    fields.push(("confirmed", "1"));
    Outcome::Confirm(format!(
        "<h1>{}</h1><p>This cannot be undone.</p><div class=toolbar>{}<a href=\"{}\">Cancel</a></div>",
        esc(what),
        button(path, "Yes, do it", csrf, &fields, "danger"),
        esc(cancel)
    ))
}

/// Carries out `action` on queue `queue` (pause, resume, retry-all, purge).
pub async fn on_queue(
    d: &Dashboard,
    csrf: &str,
    queue: &str,
    action: &str,
    form: &HashMap<String, String>,
) -> Outcome {
    let home = format!("/queues/{}", super::html::url(queue));
    let confirmed = form.get("confirmed").is_some_and(|v| v == "1");
    let request = match action {
        "pause" => Request::Pause { queue: queue.into() },
        "resume" => Request::Resume { queue: queue.into() },
        "retry-all" if !confirmed => {
            return confirm(
                &format!("Retry every dead job of {queue}?"),
                &format!("{home}/retry-all"),
                csrf,
                form,
                &home,
            )
        }
        "retry-all" => Request::RetryAllDead { queue: queue.into(), name: None },
        "purge" if !confirmed => {
            return confirm(
                &format!("Delete every dead job of {queue}?"),
                &format!("{home}/purge"),
                csrf,
                form,
                &home,
            )
        }
        "purge" => Request::PurgeDead { queue: queue.into(), older_than_ms: None },
        _ => return Outcome::Failed(format!("no action {action:?}")),
    };
    let back = if action == "purge" || action == "retry-all" {
        format!("{home}?state=dead")
    } else {
        back(form, &home)
    };
    run(d, request, back, action, queue).await
}

/// Carries out `action` on job `id` (retry, delete, promote, kill).
pub async fn on_job(
    d: &Dashboard,
    csrf: &str,
    id: u64,
    action: &str,
    form: &HashMap<String, String>,
) -> Outcome {
    let queue = form.get("queue").cloned().unwrap_or_default();
    let back_to = back(form, &format!("/jobs/{id}"));
    let request = match action {
        "retry" => Request::RetryDead { queue: queue.clone(), ids: vec![id] },
        "promote" => Request::Promote { ids: vec![id] },
        "delete" if form.get("confirmed").is_none_or(|v| v != "1") => {
            return confirm(
                &format!("Delete job #{id}?"),
                &format!("/jobs/{id}/delete"),
                csrf,
                form,
                &back_to,
            )
        }
        "delete" => Request::Remove { ids: vec![id] },
        "kill" if form.get("confirmed").is_none_or(|v| v != "1") => {
            return confirm(
                &format!("Move job #{id} to the dead set?"),
                &format!("/jobs/{id}/kill"),
                csrf,
                form,
                &back_to,
            )
        }
        "kill" => Request::Kill { ids: vec![id] },
        _ => return Outcome::Failed(format!("no action {action:?}")),
    };
    // A deleted job's page is gone: go to its queue instead.
    let back_to = if action == "delete" && back_to == format!("/jobs/{id}") {
        format!("/queues/{}", super::html::url(&queue))
    } else {
        back_to
    };
    run(d, request, back_to, action, &format!("job #{id}")).await
}

/// Carries out `action` on schedule `name` (remove). There is no "run now": the protocol has
/// no request for it, and the dashboard asks nothing a `qd` client cannot.
pub async fn on_schedule(
    d: &Dashboard,
    csrf: &str,
    name: &str,
    action: &str,
    form: &HashMap<String, String>,
) -> Outcome {
    const HOME: &str = "/schedules";
    match action {
        "remove" if form.get("confirmed").is_none_or(|v| v != "1") => confirm(
            &format!("Remove schedule {name}? The jobs it already added stay."),
            &format!("{HOME}/{}/remove", super::html::url(name)),
            csrf,
            form,
            HOME,
        ),
        "remove" => match d.admin.call(Request::ScheduleRemove { name: name.into() }).await {
            Ok(Response::Count { n: 1 }) => {
                Outcome::Done { back: HOME.into(), notice: format!("removed schedule {name}") }
            }
            Ok(Response::Count { .. }) => Outcome::Done {
                back: HOME.into(),
                notice: format!("no schedule {name}: someone removed it already"),
            },
            Ok(other) => Outcome::Failed(format!("unexpected answer {other:?}")),
            Err(e) => Outcome::Failed(format!("remove schedule {name}: {e}")),
        },
        // "Run now" asks for no confirmation: it adds one job and changes no schedule.
        "run" => match d.admin.call(Request::ScheduleRunNow { name: name.into() }).await {
            Ok(Response::Added { ids }) if ids.len() == 1 => Outcome::Done {
                back: HOME.into(),
                notice: format!("schedule {name} added job {}", ids[0]),
            },
            Ok(other) => Outcome::Failed(format!("unexpected answer {other:?}")),
            Err(e) => Outcome::Failed(format!("run schedule {name} now: {e}")),
        },
        _ => Outcome::Failed(format!("no action {action:?}")),
    }
}

async fn run(d: &Dashboard, request: Request, back: String, action: &str, target: &str) -> Outcome {
    match d.admin.call(request).await {
        Ok(Response::Count { n }) => {
            let jobs = if n == 1 { "job" } else { "jobs" };
            Outcome::Done { back, notice: format!("{action}: {n} {jobs} ({target})") }
        }
        Ok(Response::Done) => Outcome::Done { back, notice: format!("{action}: done ({target})") },
        Ok(other) => Outcome::Failed(format!("unexpected answer {other:?}")),
        Err(e) => Outcome::Failed(format!("{action} {target}: {e}")),
    }
}
