//! Test support: a real `qd serve` process on a temporary data dir, and polling helpers.
//!
//! The server is the `qd-under-test` binary of this package (the same code as `qd`), run
//! through `qd::child::QdProcess`, which `qd bench --spawn` uses too. It is
//! started with `--listen 127.0.0.1:0` and JSON logs; we learn its port from the
//! "qd is listening" log line, and keep draining its stderr so it never blocks on a full
//! pipe. Tests never sleep for a fixed time to let something happen: they poll a condition
//! with a deadline ([`eventually`]).

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::{Duration, Instant};

use qd::child::QdProcess;

/// Path of the server binary under test.
pub fn qd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_qd-under-test")
}

/// A running `qd serve` child process ([`QdProcess`]) that panics instead of returning
/// errors, as a test wants.
pub struct Server(QdProcess);

impl Deref for Server {
    type Target = QdProcess;
    fn deref(&self) -> &QdProcess {
        &self.0
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut QdProcess {
        &mut self.0
    }
}

impl Server {
    /// Starts a server on `data` with extra flags, and waits until it listens.
    pub fn start_in(data: &Path, extra: &[&str]) -> Server {
        Server::start_in_at(data, "127.0.0.1:0", extra)
    }

    /// Like [`Server::start_in`], on a given address.
    pub fn start_in_at(data: &Path, listen: &str, extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        match QdProcess::start(Path::new(qd_bin()), data, listen, &extra) {
            Ok(p) => Server(p),
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.0.terminate(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts the same server again, on the same data dir, address and flags (once this
    /// one has stopped).
    pub fn restart(&self) -> Server {
        Server(self.0.restart().unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// SIGKILL, then the same server again. Runs off the runtime's threads, so that the
    /// test's clients see the socket close while it happens, as in a real program.
    pub async fn kill9_and_restart(self) -> Server {
        tokio::task::spawn_blocking(move || {
            let mut dead = self;
            dead.kill9();
            dead.restart()
        })
        .await
        .expect("restart task")
    }

    pub async fn client(&self) -> qd_client::Client {
        qd_client::Client::connect(&self.addr).await.expect("connect to qd")
    }
}

/// A server on a fresh temporary directory (kept alive by the returned guard).
pub fn start() -> (Server, tempfile::TempDir) {
    start_with(&[])
}

pub fn start_with(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_in(&dir.path().join("data"), extra);
    (server, dir)
}

/// Polls `check` every 10 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts of one queue from `stats`, as (ready, delayed, active, dead, completed).
pub async fn counts(client: &qd_client::Client, queue: &str) -> (u64, u64, u64, u64, u64) {
    let stats = client.stats().await.expect("stats");
    stats
        .iter()
        .find(|q| q.queue == queue)
        .map(|q| (q.ready, q.delayed, q.active, q.dead, q.completed))
        .unwrap_or_default()
}

/// Waits (up to 20 s) until field `index` of [`counts`] of `queue` equals `want`; indexes
/// are those of the tuple: 0 ready, 1 delayed, 2 active, 3 dead, 4 completed.
pub async fn wait_for_count(client: &qd_client::Client, queue: &str, index: usize, want: u64) {
    let what = format!("count #{index} of queue {queue} to reach {want}");
    eventually(Duration::from_secs(20), &what, || async move {
        let c = counts(client, queue).await;
        ([c.0, c.1, c.2, c.3, c.4][index] == want).then_some(())
    })
    .await;
}

/// Which store a test's servers keep their jobs in. Tests of the features both backends
/// serve are written once, as `async fn body(b: Backend)`, and run on each by [`on_both`].
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded journal + sled store in the server's data dir.
    Embedded,
    /// `--store <url>`: a fresh database of this test on the process's shared cluster.
    Postgres { url: String },
}

impl Backend {
    /// A fresh database on the shared cluster, or `None` when PostgreSQL is not installed
    /// (the test then says it was skipped, or fails under `QD_REQUIRE_POSTGRES=1`).
    pub fn postgres(test: &str) -> Option<Backend> {
        crate::pgcluster::shared_url(test).map(|url| Backend::Postgres { url })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres { .. })
    }

    /// `extra` with the flags that choose this backend in front.
    pub fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = match self {
            Backend::Embedded => Vec::new(),
            Backend::Postgres { url } => vec!["--store", url.as_str()],
        };
        args.extend_from_slice(extra);
        args
    }

    /// A server on this backend (and a fresh temporary data dir, which the postgres backend
    /// leaves unused).
    pub fn start(&self) -> (Server, tempfile::TempDir) {
        self.start_with(&[])
    }

    pub fn start_with(&self, extra: &[&str]) -> (Server, tempfile::TempDir) {
        start_with(&self.args(extra))
    }

    /// A server on `data` (same backend, same database: a restart sees the same jobs).
    pub fn start_in(&self, data: &Path, extra: &[&str]) -> Server {
        Server::start_in(data, &self.args(extra))
    }

    /// Asserts `queue`'s [`counts`]. The embedded store's counts are exact at once; the
    /// postgres backend's may be up to 200 ms old (docs/BACKENDS.md), so there the counts
    /// are polled until they match (up to 10 s).
    pub async fn expect_counts(
        &self,
        client: &qd_client::Client,
        queue: &str,
        want: (u64, u64, u64, u64, u64),
    ) {
        match self {
            Backend::Embedded => assert_eq!(counts(client, queue).await, want, "counts of {queue}"),
            Backend::Postgres { .. } => {
                let what = format!("counts of {queue} to be {want:?}");
                eventually(Duration::from_secs(10), &what, || async move {
                    (counts(client, queue).await == want).then_some(())
                })
                .await;
            }
        }
    }

    /// How many of `n` completed jobs a queue's stats still list as retained: all on the
    /// embedded store (its ring of recent completions), none on postgres (an ack deletes
    /// the row; docs/BACKENDS.md).
    pub fn retained(&self, n: u64) -> u64 {
        match self {
            Backend::Embedded => n,
            Backend::Postgres { .. } => 0,
        }
    }
}

/// Waits (up to 20 s) until `queue` has completed `want` jobs since the server started
/// (`completed_total`, kept by both backends).
pub async fn wait_for_completed(client: &qd_client::Client, queue: &str, want: u64) {
    let what = format!("{want} jobs of queue {queue} to complete");
    eventually(Duration::from_secs(20), &what, || async move {
        let stats = client.stats().await.expect("stats");
        let done = stats.iter().find(|q| q.queue == queue).map_or(0, |q| q.completed_total);
        (done == want).then_some(())
    })
    .await;
}

/// A test written once and run against both backends: `on_both! { async fn name(b) {...} }`
/// makes module `name` with tests `embedded` and `postgres` (filter with `name::`), each
/// running the body with its [`Backend`]. `on_both! { multi_thread; async fn ... }` runs
/// them on a two-thread runtime.
macro_rules! on_both {
    ($(#[$attr:meta])* async fn $name:ident($b:ident) $body:block) => {
        $crate::support::on_both!(@ [] $(#[$attr])* async fn $name($b) $body);
    };
    (multi_thread; $(#[$attr:meta])* async fn $name:ident($b:ident) $body:block) => {
        $crate::support::on_both!(@ [(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])* async fn $name($b) $body);
    };
    (@ [$($flavor:tt)*] $(#[$attr:meta])* async fn $name:ident($b:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($b: $crate::support::Backend) $body

            #[tokio::test $($flavor)*]
            async fn embedded() {
                body($crate::support::Backend::Embedded).await
            }

            #[tokio::test $($flavor)*]
            async fn postgres() {
                if let Some(b) = $crate::support::Backend::postgres(module_path!()) {
                    body(b).await
                }
            }
        }
    };
}
pub(crate) use on_both;
