//! The admin API end to end (issue 8): a real `qd serve`, the client's admin methods and the
//! `qd` admin subcommands. One test per action, plus what must survive a restart (a pause,
//! a retry answered OK before a kill -9).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use qd_client::{Client, Job, JobId, JobState, QueueInfo, RetryHint, SearchQuery};

use crate::support::{eventually, on_both, qd_bin, Backend};

/// Adds a one-try job and fails it: it is dead with `error` as its last error.
async fn dead_job(client: &Client, queue: &str, name: &str, payload: &str, error: &str) -> JobId {
    let id = client.add(queue, Job::new(name, payload.to_owned()).attempts(1)).await.unwrap();
    let jobs = client.reserve(&[queue], 1, Duration::ZERO).await.unwrap();
    assert_eq!(jobs.len(), 1, "the job just added is the only ready one");
    client.nack(&jobs[0], error, RetryHint::Never).await.unwrap();
    id
}

on_both! {
async fn queues_show_counts_and_a_pause_holds_across_a_restart(b) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = b.start_in(&data, &[]);
    let client = server.client().await;
    dead_job(&client, "q", "x", "", "boom").await;
    for i in 0..3 {
        client.add("q", Job::new("x", format!("{i}"))).await.unwrap();
    }
    client.add("q", Job::new("x", "").delay(Duration::from_secs(3600))).await.unwrap();
    let q = queue_settled(&b, &client, "q", (3, 1, 0, 1)).await;
    assert_eq!((q.added_total, q.dead_total, q.paused), (5, 1, false));
    if !b.is_postgres() {
        assert_eq!(q.minutes.len(), 60, "an hour of minute counts");
    }

    client.pause("q").await.unwrap();
    assert!(client.reserve(&["q"], 10, Duration::ZERO).await.unwrap().is_empty());
    client.add("q", Job::new("x", "while paused")).await.unwrap();
    drop(client);
    assert!(server.terminate().success());

    let server = b.start_in(&data, &[]);
    let client = server.client().await;
    let q = client.queues().await.unwrap().into_iter().find(|q| q.name == "q").unwrap();
    assert!(q.paused, "the pause survives a restart");
    assert!(client.reserve(&["q"], 10, Duration::ZERO).await.unwrap().is_empty());
    client.resume("q").await.unwrap();
    assert_eq!(client.reserve(&["q"], 10, Duration::ZERO).await.unwrap().len(), 4);
}
}

on_both! {
async fn job_listings_page_without_repeats_while_jobs_are_added(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let first: Vec<Job> = (0..25).map(|i| Job::new("x", format!("{i}"))).collect();
    let mut want: Vec<JobId> = client.add_bulk("p", first).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = client.jobs("p", JobState::Ready, cursor.take(), 10).await.unwrap();
        assert!(page.jobs.len() <= 10);
        seen.extend(page.jobs.iter().map(|j| j.id));
        // Adds between pages land at the end of the ready order: they are listed once.
        if seen.len() == 10 {
            want.extend(client.add_bulk("p", vec![Job::new("x", "late"); 5]).await.unwrap());
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, want, "every ready job once, in reserve order");
    // Reserve order is priority first: a job added last with a lower priority number is
    // listed (and reserved) first, not in id order.
    let urgent = client.add("p", Job::new("x", "urgent").priority(-1)).await.unwrap();
    let page = client.jobs("p", JobState::Ready, None, 2).await.unwrap();
    let listed: Vec<JobId> = page.jobs.iter().map(|j| j.id).collect();
    assert_eq!(listed, [urgent, want[0]], "the listing follows the reserve order");
    let reserved = client.reserve(&["p"], 1, Duration::ZERO).await.unwrap();
    assert_eq!(reserved[0].id, urgent);
    // Delayed jobs by run time, then id; dead newest death first.
    let late = client.add("p", Job::new("x", "").delay(Duration::from_secs(7200))).await.unwrap();
    let soon = client.add("p", Job::new("x", "").delay(Duration::from_secs(3600))).await.unwrap();
    let page = client.jobs("p", JobState::Delayed, None, 10).await.unwrap();
    let listed: Vec<JobId> = page.jobs.iter().map(|j| j.id).collect();
    assert_eq!(listed, [soon, late], "delayed by run time");
    let dead = client.jobs("p", JobState::Dead, None, 0).await.unwrap();
    assert!(dead.jobs.is_empty() && dead.next.is_none());
}
}

on_both! {
async fn job_detail_has_payload_errors_and_worker(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let id = dead_job(&client, "d", "mail", "{\"to\":\"ann\"}", "smtp down").await;
    let job = client.job(id).await.unwrap();
    assert_eq!(job.summary.state, JobState::Dead);
    assert_eq!(&job.payload[..], b"{\"to\":\"ann\"}");
    assert_eq!(job.errors.len(), 1);
    assert_eq!(job.errors[0].message, "smtp down");
    assert_eq!(job.summary.last_error.as_deref(), Some("smtp down"));
    let listed = client.jobs("d", JobState::Dead, None, 10).await.unwrap();
    assert_eq!(listed.jobs[0].last_error.as_deref(), Some("smtp down"));

    let worker = Client::builder(server.addr.as_str()).name("w-7").connect().await.unwrap();
    let active_id = client.add("d", Job::new("mail", "")).await.unwrap();
    worker.reserve(&["d"], 1, Duration::ZERO).await.unwrap();
    if b.is_postgres() {
        // There a lease's worker is written to its row once the lease has lasted 100 ms
        // (docs/BACKENDS.md); wait for that, through another broker on the same database.
        let (other, _other_dir) = b.start();
        let admin = other.client().await;
        let what = "the active job's worker to be named";
        eventually(Duration::from_secs(10), what, || async {
            let job = admin.job(active_id).await.unwrap();
            job.summary.worker.is_some().then_some(())
        })
        .await;
    }
    let active = client.job(active_id).await.unwrap();
    assert_eq!(active.summary.state, JobState::Active);
    assert_eq!(active.summary.worker.as_deref(), Some("w-7"));
    let listed = client.jobs("d", JobState::Active, None, 10).await.unwrap();
    assert_eq!(listed.jobs[0].worker.as_deref(), Some("w-7"), "listings name it too");
    assert!(client.job(999_999).await.unwrap_err().is_not_found());
}
}

on_both! {
async fn retry_one_then_all_of_a_name(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let a1 = dead_job(&client, "r", "a", "", "e").await;
    dead_job(&client, "r", "a", "", "e").await;
    dead_job(&client, "r", "b", "", "e").await;
    assert_eq!(client.retry_dead("r", &[a1, 424_242]).await.unwrap(), 1);
    b.expect_counts(&client, "r", (1, 0, 0, 2, 0)).await;
    let job = client.job(a1).await.unwrap();
    assert_eq!((job.summary.state, job.summary.attempts_used), (JobState::Ready, 0));
    assert_eq!(client.retry_all_dead("r", Some("a")).await.unwrap(), 1);
    b.expect_counts(&client, "r", (2, 0, 0, 1, 0)).await;
    assert_eq!(client.retry_all_dead("r", None).await.unwrap(), 1);
    b.expect_counts(&client, "r", (3, 0, 0, 0, 0)).await;
}
}

on_both! {
async fn purge_deletes_dead_jobs_by_age(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    dead_job(&client, "g", "x", "", "e").await;
    dead_job(&client, "g", "x", "", "e").await;
    assert_eq!(client.purge_dead("g", Some(Duration::from_secs(3600))).await.unwrap(), 0);
    assert_eq!(client.purge_dead("g", None).await.unwrap(), 2);
    b.expect_counts(&client, "g", (0, 0, 0, 0, 0)).await;
}
}

on_both! {
async fn remove_skips_active_jobs_and_promote_readies_delayed_ones(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let later = client.add("m", Job::new("x", "").delay(Duration::from_secs(3600))).await.unwrap();
    assert_eq!(client.promote(&[later]).await.unwrap(), 1);
    b.expect_counts(&client, "m", (1, 0, 0, 0, 0)).await;
    let held = client.reserve(&["m"], 1, Duration::ZERO).await.unwrap();
    assert_eq!(client.remove(&[held[0].id]).await.unwrap(), 0, "active: skipped");
    let ready = client.add("m", Job::new("x", "")).await.unwrap();
    assert_eq!(client.remove(&[ready, 777_777]).await.unwrap(), 1);
    assert!(client.job(ready).await.unwrap_err().is_not_found());
    b.expect_counts(&client, "m", (0, 0, 1, 0, 0)).await;
}
}

on_both! {
async fn search_by_substring_and_by_json_field(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let mut want = BTreeSet::new();
    for i in 0..40u32 {
        let payload = format!("{{\"user\":{{\"id\":{}}},\"note\":\"n{i}\"}}", i % 4);
        let id = client.add("s", Job::new("x", payload)).await.unwrap();
        if i % 4 == 2 {
            want.insert(id);
        }
    }
    let field = SearchQuery::Field { path: "user.id".into(), value: "2".into() };
    let mut found = BTreeSet::new();
    let mut cursor = None;
    loop {
        let page = client.search("s", None, field.clone(), cursor.take(), 3).await.unwrap();
        assert!(page.jobs.len() <= 3);
        found.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(found, want, "paging a search finds every match once");
    let text = SearchQuery::Substring("\"n17\"".into());
    let page = client.search("s", Some(JobState::Ready), text, None, 10).await.unwrap();
    assert_eq!(page.jobs.len(), 1);
}
}

on_both! {
async fn dead_retention_drops_the_oldest_dead_jobs(b) {
    let (server, _dir) = b.start_with(&["--dead-max-jobs", "2"]);
    let client = server.client().await;
    let first = dead_job(&client, "t", "x", "", "e").await;
    dead_job(&client, "t", "x", "", "e").await;
    dead_job(&client, "t", "x", "", "e").await;
    b.expect_counts(&client, "t", (0, 0, 0, 2, 0)).await;
    assert!(client.job(first).await.unwrap_err().is_not_found(), "the oldest went");
}
}

on_both! {
/// An admin mutation answered OK is durable: a retried job is ready after a kill -9.
async fn a_retry_answered_ok_survives_kill_9(b) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = b.start_in(&data, &[]);
    let client = server.client().await;
    let id = dead_job(&client, "k", "x", "p", "e").await;
    assert_eq!(client.retry_dead("k", &[id]).await.unwrap(), 1);
    server.kill9();
    drop(client);
    let server = b.start_in(&data, &[]);
    let client = server.client().await;
    b.expect_counts(&client, "k", (1, 0, 0, 0, 0)).await;
}
}

/// Waits until `queue`'s listing shows `want` as (ready, delayed, active, dead): at once on
/// the embedded store, within 10 s on postgres (whose counts may be 200 ms old); the row.
async fn queue_settled(
    b: &Backend,
    client: &Client,
    queue: &str,
    want: (u64, u64, u64, u64),
) -> QueueInfo {
    let row = || async {
        let q = client.queues().await.unwrap().into_iter().find(|q| q.name == queue)?;
        ((q.ready, q.delayed, q.active, q.dead) == want).then_some(q)
    };
    if b.is_postgres() {
        eventually(Duration::from_secs(10), &format!("queue {queue} to show {want:?}"), row).await
    } else {
        row().await.unwrap_or_else(|| panic!("queue {queue} shows {want:?}"))
    }
}

fn qd(args: &[&str]) -> std::process::Output {
    Command::new(qd_bin()).args(args).output().expect("run qd")
}

on_both! {
async fn the_cli_pauses_lists_and_says_what_to_do_when_unreachable(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    dead_job(&client, "c", "x", "{\"a\":1}", "bad").await;
    let addr = server.addr.clone();
    let (pause, queues, jobs, search, unreachable) = tokio::task::spawn_blocking(move || {
        (
            qd(&["pause", "c", "--addr", &addr]),
            qd(&["queues", "--json", "--addr", &addr]),
            qd(&["jobs", "c", "--state", "dead", "--addr", &addr]),
            qd(&["search", "c", "--where", "a=1", "--json", "--addr", &addr]),
            qd(&["queues", "--addr", "127.0.0.1:1"]),
        )
    })
    .await
    .unwrap();
    for out in [&pause, &queues, &jobs, &search] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let queues: serde_json::Value = serde_json::from_slice(&queues.stdout).unwrap();
    assert_eq!(queues[0]["paused"], true);
    assert!(String::from_utf8_lossy(&jobs.stdout).contains("bad"), "dead list shows the error");
    let search: serde_json::Value = serde_json::from_slice(&search.stdout).unwrap();
    assert_eq!(search["jobs"].as_array().unwrap().len(), 1);
    assert!(!unreachable.status.success());
    let err = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(err.matches("refused").count(), 1, "the cause once: {err}");
    assert!(err.contains("is `qd serve` running"), "{err}");
}
}

on_both! {
/// Every failed try of a job is in its detail, with its try number, in order. Seen on the
/// dashboard: a job dead after 3 tries showed one error, "try 1".
async fn job_detail_keeps_every_tries_error(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let job = Job::new("mail", "x")
        .attempts(3)
        .backoff(qd_client::Backoff::fixed(Duration::from_millis(1)));
    let id = client.add("e", job).await.unwrap();
    for try_no in 1..=3 {
        let leased = loop {
            let got = client.reserve(&["e"], 1, Duration::from_secs(5)).await.unwrap();
            if let Some(j) = got.into_iter().next() {
                break j;
            }
        };
        assert_eq!(leased.attempt, try_no);
        client.nack(&leased, format!("fail {try_no}"), RetryHint::Backoff).await.unwrap();
    }
    let detail = client.job(id).await.unwrap();
    assert_eq!(detail.summary.state, JobState::Dead);
    let tries: Vec<(u32, String)> =
        detail.errors.iter().map(|e| (e.attempt, e.message.clone())).collect();
    assert_eq!(
        tries,
        vec![(1, "fail 1".to_string()), (2, "fail 2".to_string()), (3, "fail 3".to_string())]
    );
}
}

/// Embedded only: progress and flow limits are not served by the postgres backend.
///
/// Issue 9's views in the CLI: `qd job` shows a running job's progress, `qd limits --show`
/// and `qd queues` a queue's flow limits, as the `qd limits` flags spell them.
#[tokio::test]
async fn the_cli_shows_progress_and_limits() {
    let (server, _dir) = crate::support::start();
    let client = server.client().await;
    let limits = qd_client::QueueLimits {
        rate: Some(qd_client::Rate::new(100, 1000)),
        concurrency: Some(10),
        group_concurrency: Some(1),
        group_rate: None,
    };
    client.set_queue_limits("p", limits).await.unwrap();
    let id = client.add("p", Job::new("import", "{}").group("t1")).await.unwrap();
    let leased = client.reserve(&["p"], 1, Duration::from_secs(5)).await.unwrap();
    client.progress(&leased[0], br#"{"rows":40,"of":100}"#.to_vec().into()).await.unwrap();
    let addr = server.addr.clone();
    let id = id.to_string();
    let (job, job_json, show, show_json, queues, bad) = tokio::task::spawn_blocking(move || {
        (
            qd(&["job", &id, "--addr", &addr]),
            qd(&["job", &id, "--json", "--addr", &addr]),
            qd(&["limits", "p", "--show", "--addr", &addr]),
            qd(&["limits", "p", "--show", "--json", "--addr", &addr]),
            qd(&["queues", "--addr", &addr]),
            qd(&["limits", "p", "--show", "--rate", "1/1s", "--addr", &addr]),
        )
    })
    .await
    .unwrap();
    for out in [&job, &job_json, &show, &show_json, &queues] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&job.stdout);
    assert!(text.contains(r#"progress   {"rows":40,"of":100}"#), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&job_json.stdout).unwrap();
    assert_eq!(v["progress"]["rows"], 40, "progress as JSON when it is JSON: {v}");
    let flags = "--rate 100/1s --concurrency 10 --group-concurrency 1";
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains(&format!("limits of p: {flags}")), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&show_json.stdout).unwrap();
    assert_eq!((v["rate"]["max"].as_u64(), v["concurrency"].as_u64()), (Some(100), Some(10)));
    assert!(v["group_rate"].is_null(), "{v}");
    let text = String::from_utf8_lossy(&queues.stdout);
    let row = text.lines().find(|l| l.starts_with("p ")).expect("queue p listed");
    assert!(row.ends_with(flags), "{text}");
    assert!(!bad.status.success(), "--show changes nothing, so it takes no limit flags");
    let after = client.queues().await.unwrap().into_iter().find(|q| q.name == "p").unwrap();
    assert_eq!(after.limits, limits, "--show left the limits as they were");
}
