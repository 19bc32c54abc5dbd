//! The dashboard's pages (GETs): all queues (with their flow limits), one queue's jobs by
//! state with cursor paging and search, one job in full (with a running job's progress), and
//! the named schedules. Each asks the engine through the admin connection and turns an error
//! into a readable message on the page.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use qd_protocol::{
    Cursor, JobDetail, JobState, JobSummary, QueueInfo, Request, Response, ScheduleInfo,
    ScheduleSpec, SearchQuery,
};

use super::admin::AdminError;
use super::html::{self, age, button, esc, state_name, url, utc, when, STATES};
use super::session::Session;
use super::Dashboard;

/// Jobs per page.
const PAGE_JOBS: u32 = 50;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Every queue, all pages of the `Queues` answer.
pub async fn all_queues(d: &Dashboard) -> Result<Vec<QueueInfo>, AdminError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        match d.admin.call(Request::Queues { after, limit: 0 }).await? {
            Response::Queues { queues, next } => {
                out.extend(queues);
                match next {
                    Some(n) => after = Some(n),
                    None => return Ok(out),
                }
            }
            other => return Err(AdminError::Unexpected(format!("{other:?}"))),
        }
    }
}

fn count_cell(n: u64, class: &str) -> String {
    let zero = if n == 0 { " n0" } else { "" };
    format!("<td class=\"num {class}{zero}\" data-state={class}>{n}</td>")
}

/// `/`: every queue at a glance.
pub async fn queues(d: &Dashboard, s: &Session, notice: Option<&str>) -> String {
    let queues = match all_queues(d).await {
        Ok(q) => q,
        Err(e) => {
            return format!("<p class=error>Cannot list the queues: {}</p>", esc(&e.to_string()))
        }
    };
    let _ = (s, notice);
    if queues.is_empty() {
        return "<h1>Queues</h1><div class=empty>No queues yet. Add a job with \
                <code>qd add QUEUE NAME</code> and it shows up here.</div>"
            .into();
    }
    let mut rows = String::new();
    for q in &queues {
        let link = format!("/queues/{}", url(&q.name));
        let status = if q.paused {
            "<span class=\"badge paused\">paused</span>"
        } else {
            "<span class=\"badge running\">running</span>"
        };
        let latency = q.oldest_ready_age_ms.map(age).unwrap_or_else(|| "—".into());
        let limits = html::limits_line(&q.limits).unwrap_or_else(|| "—".into());
        let held = if q.rate_limited_until_ms.is_some() {
            " <span class=\"badge paused\">held</span>"
        } else {
            ""
        };
        let _ = write!(
            rows,
            "<tr data-queue=\"{name}\"><td><a href=\"{link}\">{name}</a></td><td>{status}{held}</td>{}{}{}{}{}\
             <td class=num>{latency}</td><td>{}</td><td class=\"num muted\">{} done · {} failed</td>\
             <td class=\"muted limits\">{limits}</td></tr>",
            count_cell(q.ready, "ready"),
            count_cell(q.delayed, "delayed"),
            count_cell(q.active, "active"),
            count_cell(q.dead, "dead"),
            count_cell(q.completed, "completed"),
            html::sparkline(&q.minutes),
            q.completed_total,
            q.failed_total,
            name = esc(&q.name),
        );
    }
    format!(
        "<h1>Queues <span class=muted>{}</span></h1><table id=queues><thead><tr><th>Queue</th><th>Status</th>\
         <th class=num>Ready</th><th class=num>Delayed</th><th class=num>Active</th><th class=num>Dead</th>\
         <th class=num>Completed</th><th class=num>Latency</th><th>Last hour</th>\
         <th class=num>Since start</th><th>Limits</th></tr></thead><tbody>{rows}</tbody></table>\
         <p class=muted>Latency: how long the oldest ready job has waited. Last hour: completed \
         (blue) and failed tries (red) per minute, with their sums. Since start: completed and \
         failed tries since the server started. Limits: flow limits (<code>qd limits</code>); \
         held: a worker's \"rate limited\" answer holds the queue's starts for a while.</p>",
        queues.len()
    )
}

/// `/queues/{name}`: one queue's jobs in one state, or the results of a search.
pub async fn queue(d: &Dashboard, s: &Session, name: &str, q: &HashMap<String, String>) -> String {
    let state = q.get("state").and_then(|s| html::parse_state(s)).unwrap_or(JobState::Ready);
    let search = q.get("q").map(|s| s.trim()).filter(|s| !s.is_empty());
    let cursor = q.get("cursor").and_then(|c| from_hex(c)).map(Cursor);
    // Without the counts the page still lists jobs and offers the actions.
    let (info, error) = match all_queues(d).await {
        Ok(all) => (all.into_iter().find(|i| i.name == name), None),
        Err(e) => (
            None,
            Some(format!(
                "<p class=error>Cannot read the queue's counts: {}</p>",
                esc(&e.to_string())
            )),
        ),
    };
    let info = info.unwrap_or_else(|| QueueInfo::new(name));
    let base = format!("/queues/{}", url(name));
    let csrf = s.csrf.as_str();

    let mut out = error.unwrap_or_default();
    let _ = write!(out, "<h1>{}", esc(name));
    out.push_str(if info.paused {
        " <span class=\"badge paused\" id=paused>paused</span>"
    } else {
        " <span class=\"badge running\">running</span>"
    });
    out.push_str("</h1><div class=toolbar>");
    out.push_str(&if info.paused {
        button(&format!("{base}/resume"), "Resume", csrf, &[], "primary")
    } else {
        button(&format!("{base}/pause"), "Pause", csrf, &[], "")
    });
    if info.dead > 0 {
        out.push_str(&button(&format!("{base}/retry-all"), "Retry all dead", csrf, &[], ""));
        out.push_str(&button(&format!("{base}/purge"), "Purge dead", csrf, &[], "danger"));
    }
    let _ = write!(
        out,
        "<form method=get action=\"{base}\" class=inline><input type=hidden name=state value={st}>\
         <input type=search name=q value=\"{}\" placeholder=\"search payload: text or path=value\">\
         <button>Search</button></form></div>",
        esc(search.unwrap_or("")),
        st = state_name(state)
    );
    out.push_str(&limits_section(&info));

    out.push_str("<div class=tabs>");
    for st in STATES {
        let n = match st {
            JobState::Ready => info.ready,
            JobState::Delayed => info.delayed,
            JobState::Active => info.active,
            JobState::Dead => info.dead,
            JobState::Completed => info.completed,
        };
        let on = if st == state { " on" } else { "" };
        let name = state_name(st);
        let _ = write!(
            out,
            "<a class=\"{name}{on}\" href=\"{base}?state={name}\" id=tab-{name}>{name}<span class=count>{n}</span></a>"
        );
    }
    out.push_str("</div>");

    let request = match search {
        Some(text) => Request::Search {
            queue: name.into(),
            state: Some(state),
            query: parse_query(text),
            cursor,
            limit: PAGE_JOBS,
        },
        None => Request::Jobs { queue: name.into(), state, cursor, limit: PAGE_JOBS },
    };
    let (jobs, next) = match d.admin.call(request).await {
        Ok(Response::Jobs { jobs, next }) => (jobs, next),
        Ok(other) => {
            return out
                + &format!("<p class=error>unexpected answer {}</p>", esc(&format!("{other:?}")))
        }
        Err(e) => return out + &format!("<p class=error>{}</p>", esc(&e.to_string())),
    };
    if jobs.is_empty() {
        let _ = write!(
            out,
            "<div class=empty>No {} jobs{}.</div>",
            state_name(state),
            if search.is_some() { " match" } else { "" }
        );
        return out;
    }
    out.push_str(&job_table(&jobs, state, csrf, &format!("{base}?state={}", state_name(state))));
    if let Some(next) = next {
        let q = search.map(|t| format!("&q={}", url(t))).unwrap_or_default();
        let _ = write!(
            out,
            "<p class=pager><a href=\"{base}?state={}{q}&cursor={}\">Next page →</a></p>",
            state_name(state),
            to_hex(&next.0)
        );
    }
    out
}

/// A queue's flow limits and hold, or a line saying it has none and how to set them.
fn limits_section(info: &QueueInfo) -> String {
    let l = &info.limits;
    let held = info.rate_limited_until_ms.map(|t| {
        format!(
            "<dt>Held</dt><dd id=held>starts held until {} UTC (a worker's \"rate limited\" answer)</dd>",
            utc(t)
        )
    });
    if l.is_unlimited() {
        return format!(
            "<p class=muted id=limits>No flow limits: workers start its jobs as fast as they \
             ask. Set some with <code>qd limits {} --rate 100/1s --concurrency 10</code> \
             (docs/FLOW.md).</p>{}",
            esc(&info.name),
            held.map(|h| format!("<dl>{h}</dl>")).unwrap_or_default()
        );
    }
    let none = || "—".to_string();
    let concurrency = l
        .concurrency
        .map(|c| format!("{c} at once ({} active now)", info.active))
        .unwrap_or_else(none);
    format!(
        "<h2>Flow limits</h2><dl id=limits><dt>Rate</dt><dd id=limit-rate>{}</dd>\
         <dt>Concurrency</dt><dd id=limit-concurrency>{concurrency}</dd>\
         <dt>Per group, at once</dt><dd id=limit-group-concurrency>{}</dd>\
         <dt>Per group, rate</dt><dd id=limit-group-rate>{}</dd>{}</dl>",
        l.rate.as_ref().map(html::rate).unwrap_or_else(none),
        l.group_concurrency.map(|c| c.to_string()).unwrap_or_else(none),
        l.group_rate.as_ref().map(html::rate).unwrap_or_else(none),
        held.unwrap_or_default(),
    )
}

fn job_table(jobs: &[JobSummary], state: JobState, csrf: &str, back: &str) -> String {
    let now = now_ms();
    let when_col = match state {
        JobState::Ready => "Created",
        JobState::Delayed => "Runs",
        JobState::Active => "Lease ends",
        JobState::Dead => "Died",
        JobState::Completed => "Completed",
    };
    let mut rows = String::new();
    for j in jobs {
        let t = match state {
            JobState::Delayed => j.run_at_ms,
            JobState::Active => j.lease_deadline_ms,
            JobState::Dead | JobState::Completed => j.finished_at_ms,
            JobState::Ready => Some(j.created_at_ms),
        };
        let t = t.map(|t| when(t, now)).unwrap_or_default();
        let err = j.last_error.as_deref().map(esc).unwrap_or_default();
        let id = j.id.to_string();
        let mut actions = String::new();
        let fields = [("queue", j.queue.as_str()), ("back", back)];
        match state {
            JobState::Dead => {
                actions += &button(&format!("/jobs/{id}/retry"), "Retry", csrf, &fields, "");
                actions +=
                    &button(&format!("/jobs/{id}/delete"), "Delete", csrf, &fields, "danger");
            }
            JobState::Delayed => {
                actions += &button(&format!("/jobs/{id}/promote"), "Run now", csrf, &fields, "");
                actions +=
                    &button(&format!("/jobs/{id}/delete"), "Delete", csrf, &fields, "danger");
            }
            JobState::Ready => {
                actions += &button(&format!("/jobs/{id}/delete"), "Delete", csrf, &fields, "danger")
            }
            JobState::Active | JobState::Completed => {}
        }
        let _ = write!(
            rows,
            "<tr data-job=\"{id}\"><td><a href=\"/jobs/{id}\">#{id}</a></td><td>{}</td>\
             <td class=num>{}/{}</td><td>{t}</td><td class=muted>{err}</td><td>{actions}</td></tr>",
            esc(&j.name),
            j.attempts_used,
            j.max_attempts
        );
    }
    format!(
        "<table id=jobs><thead><tr><th>Id</th><th>Name</th><th class=num>Tries</th><th>{when_col}</th>\
         <th>Last error</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

/// `/jobs/{id}`: everything about one job.
/// Also returns the job's queue, for the page's breadcrumbs.
pub async fn job(d: &Dashboard, s: &Session, id: u64) -> (String, Option<String>) {
    let job: JobDetail = match d.admin.call(Request::Job { id }).await {
        Ok(Response::Job { job }) => *job,
        Ok(other) => {
            let msg =
                format!("<p class=error>unexpected answer {}</p>", esc(&format!("{other:?}")));
            return (msg, None);
        }
        Err(e) => return (format!("<p class=error>Job #{id}: {}</p>", esc(&e.to_string())), None),
    };
    let now = now_ms();
    let j = &job.summary;
    let st = state_name(j.state);
    let opt = |t: Option<u64>| t.map(|t| when(t, now)).unwrap_or_else(|| "—".into());
    let mut out = format!(
        "<h1>Job #{id} <span class=\"badge {st}\">{st}</span></h1><dl>\
         <dt>Queue</dt><dd><a href=\"/queues/{qu}?state={st}\">{q}</a></dd><dt>Name</dt><dd>{}</dd>\
         <dt>Tries</dt><dd>{} of {}</dd><dt>Priority</dt><dd>{}</dd>\
         <dt>Created</dt><dd>{}</dd><dt>Runs at</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd>\
         <dt>Lease ends</dt><dd>{}</dd><dt>Worker</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd></dl>",
        esc(&j.name),
        j.attempts_used,
        j.max_attempts,
        j.priority,
        when(j.created_at_ms, now),
        opt(j.run_at_ms),
        opt(job.started_at_ms),
        opt(j.lease_deadline_ms),
        j.worker.as_deref().map(esc).unwrap_or_else(|| "—".into()),
        opt(j.finished_at_ms),
        q = esc(&j.queue),
        qu = url(&j.queue),
    );
    let back = format!("/jobs/{id}");
    let fields = [("queue", j.queue.as_str()), ("back", back.as_str())];
    out.push_str("<div class=toolbar>");
    match j.state {
        JobState::Dead => {
            out += &button(&format!("/jobs/{id}/retry"), "Retry", &s.csrf, &fields, "");
            out += &button(&format!("/jobs/{id}/delete"), "Delete", &s.csrf, &fields, "danger");
        }
        JobState::Delayed => {
            out += &button(&format!("/jobs/{id}/promote"), "Run now", &s.csrf, &fields, "");
            out += &button(&format!("/jobs/{id}/kill"), "Kill", &s.csrf, &fields, "danger");
            out += &button(&format!("/jobs/{id}/delete"), "Delete", &s.csrf, &fields, "danger");
        }
        JobState::Ready => {
            out += &button(&format!("/jobs/{id}/kill"), "Kill", &s.csrf, &fields, "danger");
            out += &button(&format!("/jobs/{id}/delete"), "Delete", &s.csrf, &fields, "danger");
        }
        JobState::Active | JobState::Completed => {}
    }
    out.push_str("</div>");
    if let Some(progress) = &job.progress {
        // Opaque bytes from the worker: shown like a payload, escaped like one.
        let _ = write!(
            out,
            "<h2>Progress</h2><pre id=progress>{}</pre>\
             <p class=muted>The latest report of the running try.</p>",
            esc(&pretty(progress))
        );
    }
    out.push_str("<h2>Payload</h2>");
    let _ = write!(out, "<pre id=payload>{}</pre>", esc(&pretty(&job.payload)));
    out.push_str("<h2>Errors</h2>");
    if job.errors.is_empty() {
        out.push_str("<p class=muted>No failed tries.</p>");
    } else {
        out.push_str("<table id=errors><thead><tr><th class=num style=\"width:4em\">Try</th><th style=\"width:10em\">When</th><th>Error</th></tr></thead><tbody>");
        for e in &job.errors {
            let _ = write!(
                out,
                "<tr><td class=num>{}</td><td>{}</td><td><code class=err>{}</code></td></tr>",
                e.attempt,
                when(e.at_ms, now),
                esc(&e.message)
            );
        }
        out.push_str("</tbody></table>");
    }
    (out, Some(job.summary.queue))
}

/// Every schedule, all pages of the `Schedules` answer.
async fn all_schedules(d: &Dashboard) -> Result<Vec<ScheduleInfo>, AdminError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        match d.admin.call(Request::Schedules { after, limit: 0 }).await? {
            Response::Schedules { schedules, next } => {
                out.extend(schedules);
                match next {
                    Some(n) => after = Some(n),
                    None => return Ok(out),
                }
            }
            other => return Err(AdminError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// A time as UTC with how far from now, for a schedule's fires.
fn at_utc(ms: Option<u64>, now: u64, never: &str) -> String {
    match ms {
        Some(t) => format!("{} UTC <span class=muted>({})</span>", utc(t), when(t, now)),
        None => format!("<span class=muted>{never}</span>"),
    }
}

/// `/schedules`: the named schedules, their specs and fires, and "Run now" and "Remove"
/// buttons each.
pub async fn schedules(d: &Dashboard, s: &Session) -> String {
    let list = match all_schedules(d).await {
        Ok(l) => l,
        Err(e) => {
            return format!(
                "<h1>Schedules</h1><p class=error>Cannot list the schedules: {}</p>",
                esc(&e.to_string())
            )
        }
    };
    if list.is_empty() {
        return "<h1>Schedules</h1><div class=empty>No schedules. Add one with \
                <code>qd schedule set NAME QUEUE JOB --cron '0 30 2 * * *' --tz Europe/Berlin</code> \
                (docs/SCHEDULES.md).</div>"
            .into();
    }
    let now = now_ms();
    let mut rows = String::new();
    for info in &list {
        let sch = &info.schedule;
        let (spec, zone) = match &sch.spec {
            ScheduleSpec::Cron { expr, tz } => {
                (format!("cron <code>{}</code>", esc(expr)), esc(tz))
            }
            ScheduleSpec::Every { every_ms } => {
                (format!("every {}", html::window(*every_ms)), "—".into())
            }
        };
        let run_now =
            button(&format!("/schedules/{}/run", url(&sch.name)), "Run now", &s.csrf, &[], "");
        let remove = button(
            &format!("/schedules/{}/remove", url(&sch.name)),
            "Remove",
            &s.csrf,
            &[],
            "danger",
        );
        let _ = write!(
            rows,
            "<tr data-schedule=\"{name}\"><td>{name}</td><td>{spec}</td><td>{zone}</td>\
             <td><a href=\"/queues/{qu}\">{q}</a></td><td>{job}</td><td>{next}</td><td>{last}</td>\
             <td>{run_now} {remove}</td></tr>",
            name = esc(&sch.name),
            qu = url(&sch.queue),
            q = esc(&sch.queue),
            job = esc(&sch.job.name),
            next = at_utc(info.next_fire_ms, now, "never again"),
            last = at_utc(info.last_fire_ms, now, "not yet"),
        );
    }
    format!(
        "<h1>Schedules <span class=muted>{}</span></h1><table id=schedules><thead><tr>\
         <th>Name</th><th>Spec</th><th>Zone</th><th>Queue</th><th>Job</th><th>Next run</th>\
         <th>Last fire</th><th></th></tr></thead><tbody>{rows}</tbody></table>\
         <p class=muted>Each fire adds the job to its queue, once per tick; ticks missed while \
         the server was down fire once at start. Removing a schedule keeps the jobs it added.</p>",
        list.len()
    )
}

/// A payload for reading: indented when it is JSON, as text when UTF-8, else hex.
fn pretty(payload: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
        if let Ok(s) = serde_json::to_string_pretty(&v) {
            return s;
        }
    }
    match std::str::from_utf8(payload) {
        Ok("") => "(empty)".into(),
        Ok(s) => s.into(),
        Err(_) => {
            let shown = &payload[..payload.len().min(4096)];
            let hex: Vec<String> = shown.chunks(16).map(to_hex).collect();
            format!("({} bytes, not text)\n{}", payload.len(), hex.join("\n"))
        }
    }
}

/// `path=value` (a JSON field) when the text looks like one, else a substring.
pub fn parse_query(text: &str) -> SearchQuery {
    match text.split_once('=') {
        Some((path, value))
            if !path.is_empty()
                && path.chars().all(|c| c.is_alphanumeric() || "._-".contains(c)) =>
        {
            SearchQuery::Field { path: path.into(), value: value.into() }
        }
        _ => SearchQuery::Substring(text.into()),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 2 * qd_protocol::admin::MAX_CURSOR {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_box_text_becomes_a_query() {
        assert_eq!(
            parse_query("user.id=42"),
            SearchQuery::Field { path: "user.id".into(), value: "42".into() }
        );
        assert_eq!(parse_query("a b=c"), SearchQuery::Substring("a b=c".into()));
        assert_eq!(parse_query("boom"), SearchQuery::Substring("boom".into()));
    }

    #[test]
    fn cursors_round_trip_through_hex_and_long_ones_are_refused() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 254])), Some(vec![0, 1, 254]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex(&"00".repeat(65)), None);
    }

    #[test]
    fn payloads_are_pretty_printed_when_json() {
        assert_eq!(pretty(br#"{"a":1}"#), "{\n  \"a\": 1\n}");
        assert_eq!(pretty(b"plain"), "plain");
        assert!(pretty(&[0xff, 0]).starts_with("(2 bytes, not text)"));
    }
}
