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
