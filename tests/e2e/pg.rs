//! What only the PostgreSQL backend has: several brokers on one database (one killed
//! mid-load), kill -9 of the database itself, counters shared by the brokers, and the
//! clear error for what it does not serve. The features both backends serve are tested on
//! both by the other modules (`on_both!`); these tests use the same shared throwaway cluster
//! (`pgcluster.rs`), except the database kill, which needs a cluster of its own.

use std::time::{Duration, Instant};

use qd_client::{Client, Job};
use qd_protocol::Backoff;

use crate::pgcluster::{shared_url, Cluster};
use crate::support::{self, counts, eventually, Server};

/// A broker on database `url`, with a data dir of its own (unused by this backend).
fn broker(url: &str, extra: &[&str]) -> (Server, tempfile::TempDir) {
    let mut args = vec!["--store", url];
    args.extend_from_slice(extra);
    support::start_with(&args)
}

#[tokio::test]
async fn what_it_does_not_serve_is_refused_with_what_to_do() {
    let Some(url) = shared_url("pg::unsupported") else { return };
    let (server, _dir) = broker(&url, &[]);
    let client = server.client().await;
    let err = client.add("q", Job::new("x", "").debounce().key("d")).await.unwrap_err();
    assert!(err.to_string().contains("not supported on the postgres backend"), "{err}");
    assert!(err.to_string().contains("use the embedded store"), "{err}");
}

/// The `_total` counters are the database's, not one broker's: jobs added, completed and
/// dead-lettered through one broker show in another's listing, and survive a restart.
#[tokio::test]
async fn counters_are_shared_by_every_broker_and_survive_a_restart() {
    let Some(url) = shared_url("pg::counters") else { return };
    let (one, _d1) = broker(&url, &[]);
    let (mut two, _d2) = broker(&url, &[]);
    let a = one.client().await;
    a.add_bulk("c", vec![Job::new("x", ""), Job::new("x", ""), Job::new("x", "").attempts(1)])
        .await
        .unwrap();
    let jobs = a.reserve(&["c"], 3, Duration::ZERO).await.unwrap();
    a.ack_many(&jobs[..2]).await.unwrap();
    a.nack(&jobs[2], "boom", qd_protocol::RetryHint::Backoff).await.unwrap();
    let totals =
        |q: qd_client::QueueInfo| (q.added_total, q.completed_total, q.failed_total, q.dead_total);
    let b = two.client().await;
    let what = "broker two to show broker one's counters";
    eventually(Duration::from_secs(10), what, || async {
        let q = b.queues().await.unwrap().into_iter().find(|q| q.name == "c")?;
        (totals(q) == (3, 2, 1, 1)).then_some(())
    })
    .await;
    let stats = b.stats().await.unwrap().into_iter().find(|q| q.queue == "c").unwrap();
    assert_eq!((stats.completed_total, stats.failed_total), (2, 1));
    drop(b);
    assert!(two.terminate().success());
    let two = two.restart();
    let b = two.client().await;
    let q = b.queues().await.unwrap().into_iter().find(|q| q.name == "c").unwrap();
    assert_eq!(totals(q), (3, 2, 1, 1), "kept across a restart");
}

/// Three brokers on one database, producers and workers spread over them; one broker is
/// SIGKILLed mid-load. Every job acknowledged as added completes (the killed broker's
/// leases expire and run again through the others), and the others keep serving.
#[tokio::test]
async fn three_brokers_share_one_database_and_survive_a_kill() {
    let Some(url) = shared_url("pg::multi") else { return };
    let brokers: Vec<(Server, tempfile::TempDir)> = (0..3).map(|_| broker(&url, &[])).collect();
    const PER_PRODUCER: u64 = 300;
    let done = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let added = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));

    // Workers: lease 1 s, so the killed broker's leases expire soon.
    let mut workers = Vec::new();
    // The killed broker's workers take jobs and never ack them: those leases must expire
    // and the jobs run again through the other brokers.
    let hoarded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for _ in 0..2 {
        let client = Client::connect(&brokers[0].0.addr).await.unwrap();
        let hoarded = hoarded.clone();
        workers.push(tokio::spawn(async move {
            while hoarded.lock().unwrap().is_empty() {
                if let Ok(jobs) = client.reserve(&["m"], 8, Duration::from_millis(500)).await {
                    hoarded.lock().unwrap().extend(jobs.iter().map(|j| j.id));
                }
            }
            std::future::pending::<()>().await;
        }));
    }
    for (server, _) in &brokers[1..] {
        for _ in 0..3 {
            let client = Client::connect(&server.addr).await.unwrap();
            let done = done.clone();
            let seen = seen.clone();
            workers.push(tokio::spawn(async move {
                loop {
                    let Ok(jobs) = client.reserve(&["m"], 8, Duration::from_millis(500)).await
                    else {
                        return; // its broker died
                    };
                    for job in jobs {
                        seen.lock().unwrap().insert(job.id);
                        if client.ack(&job).await.is_ok() {
                            done.lock().unwrap().insert(job.id);
                        }
                    }
                }
            }));
        }
    }
    // Producers: one per broker.
    let mut producers = Vec::new();
    for (server, _) in &brokers {
        let client = Client::connect(&server.addr).await.unwrap();
        let added = added.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..PER_PRODUCER {
                let job = Job::new("x", format!("{i}"))
                    .lease(Duration::from_secs(1))
                    .backoff(Backoff::NONE)
                    .attempts(10);
                match client.add("m", job).await {
                    Ok(id) => added.lock().unwrap().push(id),
                    Err(_) => return, // its broker died; unacknowledged adds may be lost
                }
            }
        }));
    }
    // Kill broker 0 once some work is under way.
    let watch = Client::connect(&brokers[1].0.addr).await.unwrap();
    eventually(Duration::from_secs(30), "some jobs done", || {
        let n = done.lock().unwrap().len();
        async move { (n >= 100).then_some(()) }
    })
    .await;
    let mut brokers = brokers;
    brokers[0].0.kill9();
    for p in producers {
        let _ = p.await;
    }
    let added: Vec<u64> = added.lock().unwrap().clone();
    assert!(added.len() as u64 >= 2 * PER_PRODUCER, "the live brokers' producers finished");
    // A job a worker took may have been acked by the killed broker's database session
    // without the answer reaching the worker: it is complete (gone), just not in `done`.
    // So: every acknowledged add was handed to a worker, and nothing is left.
    let started = Instant::now();
    let what = "every acknowledged add ran and no job is left";
    eventually(Duration::from_secs(60), what, || {
        let missing = added.iter().filter(|id| !seen.lock().unwrap().contains(id)).count();
        let watch = &watch;
        async move {
            let left = counts(watch, "m").await;
            (missing == 0 && left == (0, 0, 0, 0, 0)).then_some(())
        }
    })
    .await;
    let hoarded = hoarded.lock().unwrap().clone();
    assert!(!hoarded.is_empty(), "the killed broker's workers held jobs");
    for id in &hoarded {
        assert!(
            done.lock().unwrap().contains(id),
            "job {id}, held through the killed broker, ran again"
        );
    }
    let lost_answers = added.iter().filter(|id| !done.lock().unwrap().contains(id)).count();
    eprintln!(
        "all {} acknowledged adds ran, {lost_answers} of them acked through the killed broker; {:?} after the producers finished",
        added.len(),
        started.elapsed()
    );
    for w in workers {
        w.abort();
    }
}

/// kill -9 of the database under load: the broker reports errors while it is down, keeps
/// running, and serves again once it is back; every add it acknowledged runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_killed_under_load_loses_nothing_acknowledged() {
    let Some(pg) = Cluster::start("pg::db_kill") else { return };
    let (server, _dir) = broker(&pg.url(), &[]);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let worker = server.client().await;
    let worker_seen = seen.clone();
    let working = tokio::spawn(async move {
        loop {
            if let Ok(jobs) = worker.reserve(&["k"], 16, Duration::from_millis(200)).await {
                for job in jobs {
                    worker_seen.lock().unwrap().insert(job.id);
                    let _ = worker.ack(&job).await;
                }
            }
        }
    });
    let producer = server.client().await;
    let (mut added, mut refused) = (Vec::new(), 0);
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while added.len() < 600 {
        assert!(Instant::now() < deadline, "adds never came back after the restart");
        let job =
            Job::new("x", "").lease(Duration::from_secs(1)).backoff(Backoff::NONE).attempts(20);
        match producer.add("k", job).await {
            Ok(id) => added.push(id),
            Err(_) => refused += 1,
        }
        if added.len() == 200 && !killed {
            killed = true;
            pg.kill9();
        }
        // Down long enough for the broker to refuse adds (it must say so, not hang).
        if refused == 20 {
            refused += 1;
            tokio::task::block_in_place(|| pg.restart());
        }
    }
    assert!(refused > 0, "adds while the database was down were refused with an error");
    assert!(server.client().await.ping().await.is_ok(), "the broker lived through it");
    let what = "every acknowledged add ran after the database restart";
    eventually(Duration::from_secs(60), what, || {
        let missing = added.iter().filter(|id| !seen.lock().unwrap().contains(id)).count();
        let producer = &producer;
        async move {
            let left = counts(producer, "k").await;
            (missing == 0 && left == (0, 0, 0, 0, 0)).then_some(())
        }
    })
    .await;
    eprintln!("{} adds acknowledged, {refused} refused while the database was down", added.len());
    working.abort();
}
