//! The HTTP side of `qd serve --http`: pages, actions with their CSRF check, login with an
//! admin secret, `/metrics`, `/healthz` and `/readyz`. A real server process (or, where a
//! flag the CLI does not have yet is needed, the server library in-process) and a real HTTP
//! client; the dashboard's HTML is checked for the numbers it shows, not its looks (the
//! browser test in `tests/browser/` looks). Issue 9's views: a queue's flow limits, a running
//! job's progress, the schedules page with its run-now and remove actions, all escaped.

use std::time::Duration;

use qd_client::{Job, QueueLimits, Rate, Schedule, ScheduleSpec};
use qd_protocol::RetryHint;
use reqwest::redirect::Policy;
use reqwest::StatusCode;

use crate::support::{eventually, on_both, start_with, Server};

/// The dashboard's address, from the server's log.
fn http_addr(server: &Server) -> String {
    server
        .log()
        .lines()
        .filter(|l| l.contains("qd dashboard is listening"))
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["fields"]["addr"].as_str().map(str::to_owned)
        })
        .expect("the server logs the dashboard's address")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().expect("http client")
}

/// The session cookie and the CSRF token of a fresh view of a queue's page (which has forms).
async fn session(base: &str) -> (String, String) {
    let resp = http().get(format!("{base}/queues/q")).send().await.expect("GET a queue");
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie =
        resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let body = resp.text().await.unwrap();
    let token =
        body.split("name=csrf value=\"").nth(1).map(|r| r[..64].to_string()).unwrap_or_default();
    (cookie, token)
}

on_both! {
async fn health_endpoints_answer(b) {
    let (server, _dir) = b.start_with(&["--http", "127.0.0.1:0"]);
    let base = format!("http://{}", http_addr(&server));
    let healthz = http().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), StatusCode::OK);
    let readyz = http().get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), StatusCode::OK, "{}", readyz.text().await.unwrap());
}
}

on_both! {
async fn a_post_without_the_csrf_token_is_refused(b) {
    let (server, _dir) = b.start_with(&["--http", "127.0.0.1:0"]);
    let base = format!("http://{}", http_addr(&server));
    let (cookie, token) = session(&base).await;
    let no_token = http()
        .post(format!("{base}/queues/q/pause"))
        .header("cookie", &cookie)
        .form(&[("back", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let cross_site = http()
        .post(format!("{base}/queues/q/pause"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let no_session = http()
        .post(format!("{base}/queues/q/pause"))
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(no_session.status(), StatusCode::FORBIDDEN);
    // The same POST with the session's token gets through the check.
    let with_token = http()
        .post(format!("{base}/queues/q/pause"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_ne!(with_token.status(), StatusCode::FORBIDDEN);
}
}

#[tokio::test]
async fn login_is_required_when_the_server_has_an_admin_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = qd_server::config::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("data"),
    );
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.secrets.admin = Some(b"s3cret".to_vec());
    let server = qd_server::server::start(config).await.expect("start");
    let base = format!("http://{}", server.http_addr().expect("http on"));

    let page = http().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()["location"], "/login");
    let wrong =
        http().post(format!("{base}/login")).form(&[("secret", "nope")]).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right =
        http().post(format!("{base}/login")).form(&[("secret", "s3cret")]).send().await.unwrap();
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = http().get(format!("{base}/")).header("cookie", cookie).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // Health stays open: load balancers do not log in.
    assert_eq!(
        http().get(format!("{base}/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );

    server.shutdown_token().cancel();
    server.wait().await.expect("clean stop");
}

/// Adds `n` jobs to `queue` that die on their first try.
async fn dead_jobs(server: &Server, queue: &str, n: usize) -> Vec<u64> {
    let client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let payload = format!("{{\"user\":{{\"id\":{i}}}}}");
        ids.push(
            client.add(queue, Job::new("send", payload.into_bytes()).attempts(1)).await.unwrap(),
        );
    }
    for _ in 0..n {
        let jobs = client.reserve(&[queue], 1, Duration::from_secs(5)).await.unwrap();
        for job in &jobs {
            client.nack(job, "boom: smtp refused", RetryHint::Backoff).await.unwrap();
        }
    }
    ids
}

on_both! {
async fn pages_show_the_counts_and_a_retry_moves_a_dead_job_to_ready(b) {
    let (server, _dir) = b.start_with(&["--http", "127.0.0.1:0"]);
    let base = format!("http://{}", http_addr(&server));
    let ids = dead_jobs(&server, "mail", 2).await;
    let (cookie, token) = session(&base).await;

    let page = http().get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    let body = page.text().await.unwrap();
    assert!(
        body.contains("<td class=\"num dead\" data-state=dead>2</td>"),
        "two dead shown: {body}"
    );
    let dead = http()
        .get(format!("{base}/queues/mail?state=dead"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let body = dead.text().await.unwrap();
    assert!(body.contains(&format!("data-job=\"{}\"", ids[0])), "{body}");
    let job = http()
        .get(format!("{base}/jobs/{}", ids[0]))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(job.text().await.unwrap().contains("boom: smtp refused"));

    let retry = http()
        .post(format!("{base}/jobs/{}/retry", ids[0]))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("queue", "mail"), ("back", "/queues/mail?state=dead")])
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::SEE_OTHER);
    let client = server.client().await;
    crate::support::wait_for_count(&client, "mail", 0, 1).await;
    crate::support::wait_for_count(&client, "mail", 3, 1).await;
}
}

/// GET `path` with the session `cookie`; the page's body.
async fn page(base: &str, cookie: &str, path: &str) -> String {
    let resp = http().get(format!("{base}{path}")).header("cookie", cookie).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn pages_show_flow_limits_and_a_running_jobs_progress_escaped() {
    let (server, _dir) = start_with(&["--http", "127.0.0.1:0"]);
    let base = format!("http://{}", http_addr(&server));
    let client = server.client().await;
    let limits = QueueLimits {
        rate: Some(Rate::new(100, 1000)),
        concurrency: Some(10),
        group_concurrency: Some(1),
        group_rate: Some(Rate::new(5, 60_000)),
    };
    client.set_queue_limits("q", limits).await.unwrap();
    let id = client.add("q", Job::new("send", b"{}".to_vec()).group("tenant-1")).await.unwrap();
    let leased = client.reserve(&["q"], 1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(leased.len(), 1);
    let report = br#"{"step":"</pre><script>alert(1)</script>","done":3}"#;
    client.progress(&leased[0], report.to_vec().into()).await.unwrap();
    let (cookie, _) = session(&base).await;

    let home = page(&base, &cookie, "/").await;
    assert!(
        home.contains("rate 100/1s · 10 at once · per group: 1 at once, rate 5/1m"),
        "the overview shows the limits: {home}"
    );
    let queue = page(&base, &cookie, "/queues/q").await;
    assert!(queue.contains("<dd id=limit-rate>100/1s</dd>"), "{queue}");
    assert!(queue.contains("<dd id=limit-concurrency>10 at once (1 active now)</dd>"), "{queue}");
    assert!(queue.contains("<dd id=limit-group-concurrency>1</dd>"), "{queue}");
    assert!(queue.contains("<dd id=limit-group-rate>5/1m</dd>"), "{queue}");
    let none = page(&base, &cookie, "/queues/other").await;
    assert!(none.contains("No flow limits"), "{none}");

    let job = page(&base, &cookie, &format!("/jobs/{id}")).await;
    assert!(job.contains("<pre id=progress>"), "the progress is shown: {job}");
    assert!(job.contains("&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"), "{job}");
    assert!(!job.contains("<script>"), "a worker's progress cannot run script: {job}");
    assert!(job.contains("&quot;done&quot;: 3"), "{job}");
}

#[tokio::test]
async fn the_schedules_page_lists_them_and_removes_one_with_csrf_and_confirmation() {
    let (server, _dir) = start_with(&["--http", "127.0.0.1:0"]);
    let base = format!("http://{}", http_addr(&server));
    let client = server.client().await;
    let (cookie, token) = session(&base).await;
    let empty = page(&base, &cookie, "/schedules").await;
    assert!(empty.contains("No schedules"), "{empty}");
    let nightly = Schedule {
        name: "nightly".into(),
        spec: ScheduleSpec::Cron { expr: "0 30 2 * * *".into(), tz: "Europe/Berlin".into() },
        queue: "reports".into(),
        job: Job::new("<script>build</script>", b"{}".to_vec()).into(),
    };
    let info = client.upsert_schedule(nightly).await.unwrap();
    let next = info.next_fire_ms.expect("a daily cron fires again");
    let beat = Schedule {
        name: "heartbeat".into(),
        spec: ScheduleSpec::Every { every_ms: 30_000 },
        queue: "health".into(),
        job: Job::new("ping", b"".to_vec()).into(),
    };
    client.upsert_schedule(beat).await.unwrap();

    let list = page(&base, &cookie, "/schedules").await;
    let row = list.split("<tr data-schedule=\"nightly\">").nth(1).expect("nightly listed");
    let row = row.split("</tr>").next().unwrap();
    assert!(row.contains("cron <code>0 30 2 * * *</code>"), "{row}");
    assert!(row.contains("<td>Europe/Berlin</td>"), "{row}");
    assert!(row.contains("<a href=\"/queues/reports\">reports</a>"), "{row}");
    assert!(row.contains("&lt;script&gt;build&lt;/script&gt;"), "the job name escaped: {row}");
    let next_utc = http_utc(next);
    assert!(row.contains(&next_utc), "next run {next_utc} shown: {row}");
    assert!(row.contains("not yet"), "no fire yet: {row}");
    assert!(!list.contains("<script>"), "{list}");
    assert!(list.contains("every 30s"), "{list}");

    let remove = format!("{base}/schedules/nightly/remove");
    let no_token =
        http().post(&remove).header("cookie", &cookie).form(&[("x", "1")]).send().await.unwrap();
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let ask = http().post(&remove).header("cookie", &cookie).form(&[("csrf", &token)]).send().await;
    let ask = ask.unwrap().text().await.unwrap();
    assert!(ask.contains("This cannot be undone"), "asks first: {ask}");
    assert_eq!(client.schedules().await.unwrap().len(), 2, "nothing removed before the yes");
    let yes = http()
        .post(&remove)
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("confirmed", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(yes.status(), StatusCode::SEE_OTHER);
    let names: Vec<String> =
        client.schedules().await.unwrap().into_iter().map(|s| s.schedule.name).collect();
    assert_eq!(names, ["heartbeat"]);

    // "Run now": CSRF-protected, no confirmation, adds one job, the schedule stays.
    let list = page(&base, &cookie, "/schedules").await;
    assert!(list.contains("action=\"/schedules/heartbeat/run\""), "{list}");
    let run = format!("{base}/schedules/heartbeat/run");
    let no_token =
        http().post(&run).header("cookie", &cookie).form(&[("x", "1")]).send().await.unwrap();
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let ran = http().post(&run).header("cookie", &cookie).form(&[("csrf", &token)]).send().await;
    let ran = ran.unwrap();
    assert_eq!(ran.status(), StatusCode::SEE_OTHER);
    let to = ran.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with("/schedules?notice=") && to.contains("added%20job"), "{to}");
    let health = client.stats().await.unwrap().into_iter().find(|q| q.queue == "health");
    assert_eq!(health.map(|q| q.ready), Some(1), "one job added");
    assert_eq!(client.schedules().await.unwrap()[0].last_fire_ms, None, "not a tick");
}

/// Unix ms as the dashboard writes UTC times (`2026-03-29 00:30:00`), by `chrono`, not by
/// the server's own date arithmetic.
fn http_utc(ms: u64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(ms as i64).expect("a time in range");
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

on_both! {
async fn metrics_parse_and_a_counter_moves(b) {
    let (server, _dir) = b.start_with(&["--http", "127.0.0.1:0"]);
    let base = format!("http://{}", http_addr(&server));
    let added = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("qd_jobs_added_total{queue=\"m\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    let client = server.client().await;
    client.add("m", Job::new("x", b"1".to_vec())).await.unwrap();
    let text = http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    assert_eq!(added(&text), Some(1), "{text}");
    client.add("m", Job::new("x", b"2".to_vec())).await.unwrap();
    eventually(Duration::from_secs(10), "the added counter to reach 2", || async {
        let text = http().get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
        (added(&text) == Some(2)).then_some(())
    })
    .await;
    if !b.is_postgres() {
        // The embedded store's group commit; the postgres backend has none.
        assert!(text.contains("qd_group_commit_seconds_bucket"), "{text}");
    }
}
}

on_both! {
async fn qd_health_exits_zero_only_when_the_server_answers(b) {
    let (mut server, _dir) = b.start();
    let health = |addr: &str| {
        std::process::Command::new(crate::support::qd_bin())
            .args(["health", "--addr", addr])
            .output()
            .expect("run qd health")
    };
    let up = health(&server.addr);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let addr = server.addr.clone();
    server.terminate();
    let down = health(&addr);
    assert!(!down.status.success(), "a stopped server is not healthy");
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach qd"));
}
}

/// The dashboard can retry, delete and purge jobs: like the protocol, it is not served
/// beyond loopback without a secret (or --insecure), and a refused start touches nothing.
#[test]
fn dashboard_beyond_loopback_without_a_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::qd_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.0.0.0") && err.contains("QD_SECRET"), "{err}");
    assert!(!dir.path().join("data").exists(), "a refused start touches nothing");
}

on_both! {
/// Issue 11: a waiting job's page has a Kill button; killing asks first, then moves the job
/// to the dead set.
async fn kill_on_the_job_page_asks_then_moves_the_job_to_dead(b) {
    let (server, _dir) = b.start_with(&["--http", "127.0.0.1:0"]);
    let base = format!("http://{}", http_addr(&server));
    let client = server.client().await;
    let id = client.add("kq", Job::new("j", "x")).await.unwrap();
    let (cookie, token) = session(&base).await;
    let page = http().get(format!("{base}/jobs/{id}")).header("cookie", &cookie).send().await;
    let page = page.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("/jobs/{id}/kill")), "a Kill button: {page}");

    let kill = |confirmed: &'static str| {
        let form =
            [("csrf", token.clone()), ("queue", "kq".into()), ("confirmed", confirmed.into())];
        http().post(format!("{base}/jobs/{id}/kill")).header("cookie", &cookie).form(&form).send()
    };
    let ask = kill("0").await.unwrap();
    assert_eq!(ask.status(), StatusCode::OK, "a confirmation page first");
    b.expect_counts(&client, "kq", (1, 0, 0, 0, 0)).await; // nothing killed yet
    assert_eq!(kill("1").await.unwrap().status(), StatusCode::SEE_OTHER);
    crate::support::wait_for_count(&client, "kq", 3, 1).await;
    crate::support::wait_for_count(&client, "kq", 0, 0).await;
}
}
