//! Named schedules end to end (issue 9): a real `qd serve`, the client's schedule methods
//! and `qd schedule`. An interval schedule of 1 s adds jobs; it is updated, listed and
//! removed; it survives kill -9 without a tick adding two jobs. The fake-clock rules (missed
//! ticks fire once, DST, the crash window between a fire's insert and its record) are the
//! core's tests, `server/src/broker/schedules.rs`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use qd_client::{Client, Job, JobState, Schedule, ScheduleSpec};

use crate::support::{self, eventually, qd_bin, Server};

fn every_second(name: &str, queue: &str, payload: &str) -> Schedule {
    Schedule {
        name: name.into(),
        spec: ScheduleSpec::Every { every_ms: 1000 },
        queue: queue.into(),
        job: Job::new("tick", payload.to_owned()).into(),
    }
}

/// The ready jobs of `queue`: idempotency key -> payload. Each key names one tick.
async fn jobs_by_key(client: &Client, queue: &str) -> BTreeMap<String, String> {
    let page = client.jobs(queue, JobState::Ready, None, 1000).await.unwrap();
    let mut out = BTreeMap::new();
    for summary in page.jobs {
        let job = client.job(summary.id).await.unwrap();
        let key = job.options.key.clone().expect("a scheduled job has a key");
        let payload = String::from_utf8(job.payload.to_vec()).unwrap();
        assert!(out.insert(key.clone(), payload).is_none(), "tick {key} added twice");
    }
    out
}

/// Waits until `queue` holds at least `n` ready jobs; returns them by key.
async fn at_least(client: &Client, queue: &str, n: usize) -> BTreeMap<String, String> {
    let what = format!("{n} scheduled jobs in {queue}");
    eventually(Duration::from_secs(20), &what, || async {
        let jobs = jobs_by_key(client, queue).await;
        (jobs.len() >= n).then_some(jobs)
    })
    .await
}

#[tokio::test]
async fn an_interval_schedule_adds_jobs_and_is_updated_listed_and_removed() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let info = client.upsert_schedule(every_second("beat", "beats", "v1")).await.unwrap();
    assert_eq!(info.next_fire_ms, Some(info.anchor_ms + 1000));
    let jobs = at_least(&client, "beats", 2).await;
    assert!(jobs.keys().all(|k| k.starts_with("schedule:beat:")), "{jobs:?}");
    assert!(jobs.values().all(|p| p == "v1"));

    // Same spec, new payload: the clock is kept and later jobs carry the new payload.
    let updated = client.upsert_schedule(every_second("beat", "beats", "v2")).await.unwrap();
    assert_eq!(updated.anchor_ms, info.anchor_ms, "the same spec keeps its anchor");
    let before = jobs.len();
    eventually(Duration::from_secs(20), "a job with the new payload", || async {
        jobs_by_key(&client, "beats").await.values().any(|p| p == "v2").then_some(())
    })
    .await;

    let list = client.schedules().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].schedule.queue, "beats");
    assert!(list[0].last_fire_ms.is_some() && list[0].next_fire_ms > list[0].last_fire_ms);

    // Removed: it adds nothing more. A second schedule is the clock that shows time passed.
    assert!(client.remove_schedule("beat").await.unwrap());
    assert!(!client.remove_schedule("beat").await.unwrap(), "already gone");
    let after_removal = jobs_by_key(&client, "beats").await.len();
    assert!(after_removal > before);
    client.upsert_schedule(every_second("witness", "witness", "")).await.unwrap();
    at_least(&client, "witness", 2).await;
    assert_eq!(jobs_by_key(&client, "beats").await.len(), after_removal, "no fire after rm");
    let names: Vec<String> =
        client.schedules().await.unwrap().into_iter().map(|i| i.schedule.name).collect();
    assert_eq!(names, ["witness"]);
}

#[tokio::test]
async fn a_schedule_survives_kill_9_without_adding_a_tick_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(&dir.path().join("data"), &[]);
    let client = server.client().await;
    let info = client.upsert_schedule(every_second("beat", "beats", "x")).await.unwrap();
    let before = at_least(&client, "beats", 2).await;
    drop(client);

    let server = server.kill9_and_restart().await;
    let client = server.client().await;
    let list = client.schedules().await.unwrap();
    assert_eq!(list.len(), 1, "the schedule survived");
    assert_eq!(list[0].anchor_ms, info.anchor_ms, "and its clock");
    // `jobs_by_key` panics on a key seen twice: no tick added two jobs across the crash.
    let after = at_least(&client, "beats", before.len() + 2).await;
    assert!(before.keys().all(|k| after.contains_key(k)), "jobs added before the kill stay");
    // Every job is a distinct tick on the schedule's 1 s grid.
    for key in after.keys() {
        let tick: u64 = key.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!((tick - info.anchor_ms) % 1000, 0, "{key}");
    }
}

#[tokio::test]
async fn qd_schedule_sets_lists_and_removes() {
    let (server, _dir) = support::start();
    let qd = |args: &[&str]| {
        let out =
            Command::new(qd_bin()).args(args).args(["--addr", &server.addr]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let set = qd(&[
        "schedule",
        "set",
        "nightly",
        "reports",
        "build",
        "{}",
        "--cron",
        "0 30 2 * * *",
        "--tz",
        "Europe/Berlin",
    ]);
    assert!(set.contains("nightly") && set.contains("Europe/Berlin"), "{set}");
    let ls = qd(&["schedule", "ls", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(rows[0]["name"], "nightly");
    assert_eq!(rows[0]["spec"]["cron"], "0 30 2 * * *");
    assert!(rows[0]["next_fire_ms"].as_u64().is_some(), "{ls}");
    assert!(qd(&["schedule", "rm", "nightly"]).contains("removed"));
    assert!(qd(&["schedule", "ls"]).contains("no schedules"));

    let bad = Command::new(qd_bin())
        .args(["schedule", "set", "x", "q", "j", "--cron", "not cron", "--addr", &server.addr])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("does not parse"), "says what is wrong: {err}");
}

#[tokio::test]
async fn run_now_adds_a_job_and_keeps_the_next_tick_through_client_and_cli() {
    let (server, _dir) = support::start();
    let client = server.client().await;
    let nightly = Schedule {
        name: "nightly".into(),
        spec: ScheduleSpec::Cron { expr: "0 30 2 * * *".into(), tz: "Europe/Berlin".into() },
        queue: "reports".into(),
        job: Job::new("build", "{}").into(),
    };
    let info = client.upsert_schedule(nightly).await.unwrap();
    let id = client.run_schedule_now("nightly").await.unwrap();
    let job = client.job(id).await.unwrap();
    assert_eq!((job.summary.queue.as_str(), job.summary.name.as_str()), ("reports", "build"));
    assert!(job.options.key.as_deref().is_some_and(|k| k.starts_with("schedule:nightly:now:")));

    let out = Command::new(qd_bin())
        .args(["schedule", "run", "nightly", "--json", "--addr", &server.addr])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli_id = answer["id"].as_u64().expect("the new job's id");
    assert_ne!(cli_id, id, "a second run adds a second job");
    assert_eq!(client.stats().await.unwrap()[0].ready, 2);

    let list = client.schedules().await.unwrap();
    assert_eq!(list[0].next_fire_ms, info.next_fire_ms, "the next tick did not move");
    assert_eq!(list[0].last_fire_ms, None, "a run-now is not a tick");

    let err = client.run_schedule_now("nope").await.unwrap_err();
    assert!(err.to_string().contains("qd schedule ls"), "says what to do: {err}");
}
