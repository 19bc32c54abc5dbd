//! The PostgreSQL backend (issue 12): `qd serve --store postgres://...` against a throwaway
//! cluster that each test starts itself ([`Cluster`]: `initdb` in a temporary directory,
//! `pg_ctl` on a free loopback port, stopped on drop).
//!
//! Without PostgreSQL installed these tests print that they were skipped and pass, except
//! when `QD_REQUIRE_POSTGRES=1` (CI sets it), where they fail: a CI machine that lost its
//! PostgreSQL must not go green silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qd_client::{Client, Job};
use qd_protocol::message::NackOutcome;
use qd_protocol::{Backoff, RetryHint};

use crate::support::{self, counts, eventually, wait_for_count, Server};

/// A PostgreSQL cluster of this test alone, stopped (immediate mode) and deleted on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Run the cluster's tools as the `postgres` user (initdb refuses root).
    as_postgres: bool,
}

/// Where `initdb` and `pg_ctl` are: on `PATH`, or Debian's `/usr/lib/postgresql/N/bin`
/// (the newest).
fn pg_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").is_file())
            .collect();
        found.sort_by_key(|p| {
            let version = p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str());
            version.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
        });
        found.pop()
    })
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl Cluster {
    /// A fresh cluster, or `None` (after saying so) when PostgreSQL is not installed and
    /// `QD_REQUIRE_POSTGRES` is not `1`.
    fn start(test: &str) -> Option<Cluster> {
        let Some(bin) = pg_bin() else {
            if std::env::var("QD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("QD_REQUIRE_POSTGRES=1 but no initdb/pg_ctl found on PATH or in /usr/lib/postgresql/*/bin; install Debian's postgresql");
            }
            eprintln!("skipped {test}: PostgreSQL is not installed (set QD_REQUIRE_POSTGRES=1 to fail instead)");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("qdpg").tempdir().expect("temp dir");
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown").arg("postgres").arg(dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the cluster dir to postgres");
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Cluster { bin, dir, port, as_postgres };
        let data = cluster.dir.path().join("db");
        cluster.run(
            "initdb",
            &["-D", path(&data), "-U", "qd", "--auth=trust", "-E", "UTF8", "--no-sync"],
        );
        cluster.pg_ctl_start().expect("pg_ctl start");
        Some(cluster)
    }

    /// Starts the cluster's server (once more, after a kill).
    fn pg_ctl_start(&self) -> Result<(), String> {
        let data = self.dir.path().join("db");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=off",
            self.port,
            path(self.dir.path())
        );
        let log = self.dir.path().join("log");
        self.try_run(
            "pg_ctl",
            &["-D", path(&data), "-o", &options, "-l", path(&log), "-w", "start"],
        )
    }

    /// SIGKILLs the postmaster (its backends exit on their own soon after).
    fn kill9(&self) {
        let pid_file = self.dir.path().join("db").join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("postmaster.pid");
        let pid = pid.lines().next().expect("pid line").trim().to_owned();
        let status = Command::new("kill").args(["-9", &pid]).status().expect("kill");
        assert!(status.success(), "kill -9 {pid}");
    }

    /// Starts the cluster again after [`Cluster::kill9`], retrying while the killed
    /// server's backends are still exiting (they hold its shared memory until they do).
    fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("the cluster did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        if let Err(e) = self.try_run(tool, args) {
            panic!("{e}");
        }
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().map_err(|e| format!("cannot run {tool}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn url(&self) -> String {
        format!("postgres://qd@127.0.0.1:{}/postgres", self.port)
    }

    /// A broker on this cluster, with a data dir of its own (unused by this backend).
    fn broker(&self, extra: &[&str]) -> (Server, tempfile::TempDir) {
        let url = self.url();
        let mut args = vec!["--store", url.as_str()];
        args.extend_from_slice(extra);
        support::start_with(&args)
    }
}

/// Waits until `queue`'s counts are `want`: this backend's counts may be up to 200 ms old
/// (docs/BACKENDS.md), so a test polls rather than reads once.
async fn settled(client: &Client, queue: &str, want: (u64, u64, u64, u64, u64)) {
    let what = format!("counts of {queue} to be {want:?}");
    eventually(Duration::from_secs(10), &what, || async move {
        (counts(client, queue).await == want).then_some(())
    })
    .await;
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("db");
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", path(&data), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(exe).args(args).output()
        } else {
            Command::new(exe).args(args).output()
        };
    }
}

#[tokio::test]
async fn basics_add_reserve_ack_delay_priority_and_keys() {
    let Some(pg) = Cluster::start("pg::basics") else { return };
    let (server, _dir) = pg.broker(&[]);
    let client = server.client().await;

    let low = client.add("q", Job::new("low", "l").priority(5)).await.unwrap();
    let high = client.add("q", Job::new("high", "h").priority(-1)).await.unwrap();
    let later =
        client.add("q", Job::new("later", "").delay(Duration::from_secs(3600))).await.unwrap();
    let keyed = client.add("q", Job::new("k", "").key("once")).await.unwrap();
    assert_eq!(
        client.add("q", Job::new("k", "").key("once")).await.unwrap(),
        keyed,
        "same key, same job"
    );
    let bulk = client
        .add_bulk("q", vec![Job::new("b", "1").key("b"), Job::new("b", "2").key("b")])
        .await
        .unwrap();
    assert_eq!(bulk[0], bulk[1], "a key repeated within one add names one job");
    settled(&client, "q", (4, 1, 0, 0, 0)).await;

    let jobs = client.reserve(&["q"], 10, Duration::ZERO).await.unwrap();
    let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids[0], high, "lower priority number first");
    assert_eq!(*ids.last().unwrap(), low);
    assert!(!ids.contains(&later), "a delayed job is not ready");
    assert_eq!(&jobs[0].payload[..], b"h");
    settled(&client, "q", (0, 1, 4, 0, 0)).await;
    for job in &jobs {
        client.ack(job).await.unwrap();
    }
    settled(&client, "q", (0, 1, 0, 0, 0)).await;
    // The key is free again once its job completed.
    assert_ne!(client.add("q", Job::new("k", "").key("once")).await.unwrap(), keyed);

    // A parked reserve is woken by an add.
    let worker = server.client().await;
    let waiting =
        tokio::spawn(async move { worker.reserve(&["w"], 1, Duration::from_secs(20)).await });
    let id = client.add("w", Job::new("x", "")).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got[0].id, id);

    // Promote, pause and the admin listings.
    assert_eq!(client.promote(&[later]).await.unwrap(), 1);
    client.pause("q").await.unwrap();
    assert!(client.reserve(&["q"], 10, Duration::ZERO).await.unwrap().is_empty(), "paused");
    client.resume("q").await.unwrap();
    let detail = client.job(later).await.unwrap();
    assert_eq!(detail.summary.name, "later");
    // An operator's kill moves a waiting job to the dead set, with why.
    let doomed = client.add("q", Job::new("doomed", "")).await.unwrap();
    assert_eq!(client.kill(&[doomed, doomed + 1000]).await.unwrap(), 1);
    let detail = client.job(doomed).await.unwrap();
    assert_eq!(detail.summary.state, qd_protocol::JobState::Dead);
    assert_eq!(detail.errors.last().map(|e| e.message.as_str()), Some("killed by an operator"));
    let err = client.add("q", Job::new("x", "").debounce().key("d")).await.unwrap_err();
    assert!(err.to_string().contains("not supported on the postgres backend"), "{err}");
}

#[tokio::test]
async fn nack_retries_with_backoff_then_dead_letters() {
    let Some(pg) = Cluster::start("pg::nack") else { return };
    let (server, _dir) = pg.broker(&[]);
    let client = server.client().await;
    let backoff = Backoff::Exponential { base_ms: 200, max_ms: 10_000, jitter_pct: 0 };
    let id = client.add("r", Job::new("x", "").attempts(2).backoff(backoff)).await.unwrap();

    let first = client.reserve(&["r"], 1, Duration::ZERO).await.unwrap().remove(0);
    let before =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    let NackOutcome::Retrying { run_at_ms } =
        client.nack(&first, "boom", RetryHint::Backoff).await.unwrap()
    else {
        panic!("first failure retries");
    };
    assert!(run_at_ms >= before + 200 && run_at_ms < before + 5_000, "the backoff's first step");
    wait_for_count(&client, "r", 1, 1).await; // delayed while it backs off
    let second = client.reserve(&["r"], 1, Duration::from_secs(20)).await.unwrap().remove(0);
    assert_eq!((second.id, second.attempt), (id, 2));
    assert_eq!(
        client.nack(&second, "boom again", RetryHint::Backoff).await.unwrap(),
        NackOutcome::Dead
    );
    settled(&client, "r", (0, 0, 0, 1, 0)).await;
    let detail = client.job(id).await.unwrap();
    let errors: Vec<&str> = detail.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(errors, ["boom", "boom again"]);

    assert_eq!(client.retry_dead("r", &[id]).await.unwrap(), 1);
    let again = client.reserve(&["r"], 1, Duration::from_secs(20)).await.unwrap().remove(0);
    assert_eq!((again.id, again.attempt), (id, 1), "retried with fresh attempts");
    assert_eq!(client.nack(&again, "never", RetryHint::Never).await.unwrap(), NackOutcome::Dead);
    assert_eq!(client.purge_dead("r", None).await.unwrap(), 1);
    settled(&client, "r", (0, 0, 0, 0, 0)).await;
}

#[tokio::test]
async fn a_closed_worker_connection_releases_its_job_at_once() {
    let Some(pg) = Cluster::start("pg::disconnect") else { return };
    let (server, _dir) = pg.broker(&[]);
    let producer = server.client().await;
    let job = Job::new("x", "").backoff(Backoff::NONE).lease(Duration::from_secs(600));
    let id = producer.add("d", job).await.unwrap();
    {
        let doomed = server.client().await;
        let jobs = doomed.reserve(&["d"], 1, Duration::ZERO).await.unwrap();
        assert_eq!(jobs[0].id, id);
    }
    // With a ten-minute lease, only the disconnect can bring it back within the wait.
    let other = server.client().await;
    let jobs = other.reserve(&["d"], 1, Duration::from_secs(20)).await.unwrap();
    assert_eq!((jobs[0].id, jobs[0].attempt), (id, 2), "the lost try counts as an attempt");
    other.ack(&jobs[0]).await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_runs_again_and_the_late_ack_is_refused() {
    let Some(pg) = Cluster::start("pg::lease") else { return };
    let (server, _dir) = pg.broker(&[]);
    let client = server.client().await;
    let job = Job::new("x", "").backoff(Backoff::NONE).lease(Duration::from_millis(200));
    let id = client.add("l", job).await.unwrap();
    let slow = server.client().await;
    let first = slow.reserve(&["l"], 1, Duration::ZERO).await.unwrap().remove(0);
    let fast = server.client().await;
    let second = fast.reserve(&["l"], 1, Duration::from_secs(20)).await.unwrap().remove(0);
    assert_eq!((second.id, second.attempt), (id, 2));
    let err = slow.ack(&first).await.unwrap_err();
    assert!(err.is_lease_lost(), "late ack refused as lease lost, got {err}");
    fast.ack(&second).await.unwrap();
    wait_for_count(&client, "l", 2, 0).await;
}

/// Three brokers on one database, producers and workers spread over them; one broker is
/// SIGKILLed mid-load. Every job acknowledged as added completes (the killed broker's
/// leases expire and run again through the others), and the others keep serving.
#[tokio::test]
async fn three_brokers_share_one_database_and_survive_a_kill() {
    let Some(pg) = Cluster::start("pg::multi") else { return };
    let brokers: Vec<(Server, tempfile::TempDir)> = (0..3).map(|_| pg.broker(&[])).collect();
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
    let (server, _dir) = pg.broker(&[]);
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
