//! The dashboard's HTML toolkit: escaping, the page frame and its stylesheet, times, flow
//! limits as text and the throughput sparkline. Pages are plain `format!` strings; every value from outside (queue
//! and job names, payloads, error texts) goes through [`esc`] before it is written.

use std::fmt::Write;

use axum::response::Html;
use qd_protocol::{JobState, MinuteCounts, QueueLimits, Rate};

/// `s` with the five HTML-special characters escaped, safe in text and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` for a URL path segment or query value.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The whole page around `body`. `notice` is a one-line message (an action's outcome) and
/// `error` an engine error, shown on top.
pub fn page(title: &str, crumbs: &str, notice: Option<&str>, body: &str) -> Html<String> {
    let notice = notice.map(|n| format!("<p class=notice>{}</p>", esc(n))).unwrap_or_default();
    // The login and error pages have no crumbs, and no way on but back.
    let side =
        if crumbs.is_empty() { "" } else { "<a class=side href=\"/schedules\">Schedules</a>" };
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <title>{title} · qd</title><style>{STYLE}</style></head><body>\
         <header><a class=brand href=\"/\">qd</a><nav>{crumbs}</nav>{side}</header>\
         <main>{notice}{body}</main></body></html>",
        title = esc(title)
    ))
}

/// A page that only says what went wrong.
pub fn error_page(message: &str) -> Html<String> {
    page(
        "Error",
        "",
        None,
        &format!("<p class=error>{}</p><p><a href=\"/\">All queues</a></p>", esc(message)),
    )
}

/// The lowercase name of a state, as URLs and CSS classes use it.
pub fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Ready => "ready",
        JobState::Delayed => "delayed",
        JobState::Active => "active",
        JobState::Dead => "dead",
        JobState::Completed => "completed",
    }
}

pub const STATES: [JobState; 5] =
    [JobState::Ready, JobState::Delayed, JobState::Active, JobState::Dead, JobState::Completed];

/// The state named `s`, as in [`state_name`].
pub fn parse_state(s: &str) -> Option<JobState> {
    STATES.into_iter().find(|st| state_name(*st) == s)
}

/// A unix-ms time as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to civil date (H. Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A duration in ms, short: `850 ms`, `42 s`, `7 min`, `3 h`, `2 d`.
pub fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{} s", ms / 1000),
        60_000..=3_599_999 => format!("{} min", ms / 60_000),
        3_600_000..=86_399_999 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// `ms` as a UTC time with how long ago (or ahead) of `now` it is, in a `<time>` element.
pub fn when(ms: u64, now: u64) -> String {
    let rel =
        if ms <= now { format!("{} ago", age(now - ms)) } else { format!("in {}", age(ms - now)) };
    format!("<time title=\"{} UTC\">{rel}</time>", utc(ms))
}

/// A window in ms as the `qd limits` flags spell it: `1s`, `5m`, `2h`, `1d`, `250ms`.
pub fn window(ms: u64) -> String {
    match ms {
        0 => "0ms".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// A rate as `qd limits --rate` takes it: `100/1s`.
pub fn rate(r: &Rate) -> String {
    format!("{}/{}", r.max, window(r.per_ms))
}

/// A queue's limits on one line (`rate 100/1s · 10 at once · per group: 1 at once`), or
/// `None` when it has none. Numbers only: nothing here needs escaping.
pub fn limits_line(l: &QueueLimits) -> Option<String> {
    let mut queue = Vec::new();
    if let Some(r) = &l.rate {
        queue.push(format!("rate {}", rate(r)));
    }
    if let Some(n) = l.concurrency {
        queue.push(format!("{n} at once"));
    }
    let mut group = Vec::new();
    if let Some(n) = l.group_concurrency {
        group.push(format!("{n} at once"));
    }
    if let Some(r) = &l.group_rate {
        group.push(format!("rate {}", rate(r)));
    }
    if !group.is_empty() {
        queue.push(format!("per group: {}", group.join(", ")));
    }
    (!queue.is_empty()).then(|| queue.join(" · "))
}

/// Completed (blue) and failed (red) per minute as two polylines, scaled to the busiest.
pub fn sparkline(minutes: &[MinuteCounts]) -> String {
    let (w, h) = (120.0_f64, 24.0_f64);
    let peak = minutes.iter().map(|m| m.completed.max(m.failed)).max().unwrap_or(0).max(1) as f64;
    let step = if minutes.len() > 1 { w / (minutes.len() - 1) as f64 } else { w };
    let line = |f: &dyn Fn(&MinuteCounts) -> u32| {
        minutes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!("{:.1},{:.1}", i as f64 * step, h - 1.0 - f(m) as f64 / peak * (h - 2.0))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (done, failed): (u64, u64) = minutes
        .iter()
        .fold((0, 0), |(d, f), m| (d + u64::from(m.completed), f + u64::from(m.failed)));
    // The completed line over a light area, the failed one on top; a baseline so an idle
    // hour reads as "nothing happened" rather than as a broken chart.
    let done_line = line(&|m| m.completed);
    format!(
        "<span class=sparkwrap><svg class=spark viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=img>\
         <title>last hour: {done} completed, {failed} failed</title>\
         <line class=base x1=\"0\" y1=\"{y}\" x2=\"{w}\" y2=\"{y}\"/>\
         <polygon class=area points=\"0,{y} {done_line} {w},{y}\"/>\
         <polyline class=done points=\"{done_line}\"/><polyline class=failed points=\"{}\"/></svg>\
         <span class=sparknum><span class=active>{done}</span> · <span class=dead>{failed}</span></span></span>",
        line(&|m| m.failed),
        y = h - 1.0,
    )
}

/// A POST form of one button. `confirm` forms go to a confirmation page first.
pub fn button(
    action: &str,
    label: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    class: &str,
) -> String {
    let mut hidden = format!("<input type=hidden name=csrf value=\"{}\">", esc(csrf));
    for (k, v) in fields {
        let _ = write!(hidden, "<input type=hidden name=\"{}\" value=\"{}\">", esc(k), esc(v));
    }
    format!(
        "<form method=post action=\"{}\" class=inline>{hidden}<button class=\"{class}\">{}</button></form>",
        esc(action),
        esc(label)
    )
}

const STYLE: &str = r#"
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg:#f6f8fa;--card:#fff;
--ready:#1a7f37;--active:#0969da;--delayed:#bf8700;--dead:#cf222e;--completed:#6e7781}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;gap:16px;align-items:center;padding:10px 24px;background:#24292f;color:#fff}
header a{color:#fff;text-decoration:none}.brand{font-weight:700;font-size:18px;letter-spacing:.5px}
nav{display:flex;gap:8px;align-items:center;color:#afb8c1}nav a{color:#d0d7de}header a.side{margin-left:auto;color:#d0d7de}
main{max-width:1200px;margin:20px auto;padding:0 24px}
h1{font-size:20px;margin:0 0 12px;display:flex;gap:12px;align-items:center;flex-wrap:wrap}
h2{font-size:15px;margin:20px 0 8px}
table{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:6px;overflow:hidden}
th,td{padding:7px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
th{background:var(--bg);font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.4px}
tr:last-child td{border-bottom:0}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
a{color:var(--active)}.muted{color:var(--muted)}
.n0{color:#afb8c1}.ready{color:var(--ready)}.active{color:var(--active)}.delayed{color:var(--delayed)}.dead{color:var(--dead)}.completed{color:var(--completed)}
td.dead:not(.n0){font-weight:700}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;border:1px solid currentColor}
.badge.paused{color:var(--delayed);background:#fff8c5}.badge.running{color:var(--ready)}
.tabs{display:flex;gap:4px;margin:12px 0;border-bottom:1px solid var(--line);flex-wrap:wrap}
.tabs a{padding:6px 12px;text-decoration:none;color:var(--muted);border-bottom:2px solid transparent}
.tabs a.on{color:var(--fg);border-bottom-color:var(--active);font-weight:600}
.tabs .count{background:var(--bg);border-radius:10px;padding:0 6px;margin-left:4px;font-size:12px}
form.inline{display:inline}
button{font:inherit;font-size:13px;padding:3px 10px;border-radius:6px;border:1px solid var(--line);background:var(--card);cursor:pointer}
button:hover{background:var(--bg)}button.danger{color:var(--dead);border-color:#ffcecb}button.danger:hover{background:#ffebe9}
button.primary{color:#fff;background:#1f883d;border-color:#1f883d}
input[type=search],input[type=password]{font:inherit;padding:4px 8px;border:1px solid var(--line);border-radius:6px;min-width:260px}
.toolbar{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:8px 0}
.notice{background:#dafbe1;border:1px solid #aceebb;padding:8px 12px;border-radius:6px}
.error{background:#ffebe9;border:1px solid #ffcecb;padding:8px 12px;border-radius:6px;color:#82071e}
pre{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:12px;overflow:auto;max-height:480px;font-size:13px}
dl{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:4px 16px;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:12px;margin:0}
dt{color:var(--muted)}dd{margin:0}
svg.spark polyline{fill:none;stroke-width:1.5}svg.spark .done{stroke:var(--active)}svg.spark .failed{stroke:var(--dead)}
svg.spark{display:block}svg.spark .area{fill:#ddf4ff;stroke:none}svg.spark .base{stroke:var(--line);stroke-width:1}
.sparkwrap{display:inline-flex;gap:8px;align-items:center}.sparknum{font-size:12px;font-variant-numeric:tabular-nums}
code.err{white-space:pre-wrap;font-size:13px;color:#82071e}
.pager{margin:10px 0}.empty{padding:24px;text-align:center;color:var(--muted);background:var(--card);border:1px solid var(--line);border-radius:6px}
.login{max-width:360px;margin:80px auto;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:24px}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url("a b/ü"), "a%20b%2F%C3%BC");
    }

    #[test]
    fn limits_read_as_the_flags_spell_them() {
        assert_eq!(limits_line(&QueueLimits::default()), None);
        let l = QueueLimits {
            rate: Some(Rate::new(100, 1000)),
            concurrency: Some(10),
            group_concurrency: Some(1),
            group_rate: Some(Rate::new(5, 60_000)),
        };
        assert_eq!(
            limits_line(&l).unwrap(),
            "rate 100/1s · 10 at once · per group: 1 at once, rate 5/1m"
        );
        assert_eq!(window(1500), "1500ms");
        assert_eq!(window(86_400_000), "1d");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34:56");
    }
}
