//! Test support: a real `qd serve` process on a temporary data dir, and polling helpers.
//!
//! The server is the `qd-under-test` binary of this package (the same code as `qd`). It is
//! started with `--listen 127.0.0.1:0` and JSON logs; we learn its port from the
//! "qd is listening" log line, and keep draining its stderr so it never blocks on a full
//! pipe. Tests never sleep for a fixed time to let something happen: they poll a condition
//! with a deadline ([`eventually`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the server binary under test.
pub fn qd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_qd-under-test")
}

/// A running `qd serve` child process.
pub struct Server {
    child: Child,
    pub addr: String,
    #[allow(dead_code)]
    pub data: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server on `data` with extra flags, and waits until it listens.
    pub fn start_in(data: &Path, extra: &[&str]) -> Server {
        Server::start_in_at(data, "127.0.0.1:0", extra)
    }

    /// Like [`Server::start_in`], on a given address.
    pub fn start_in_at(data: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(qd_bin())
            .args(["serve", "--listen", listen, "--log-format", "json", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qd-under-test");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("qd is listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(listening_addr(&line));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(addr)) => addr,
            _ => {
                let _ = child.kill();
                panic!("qd did not start; its log:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        Server { child, addr, data: data.to_path_buf(), log }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for qd") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "qd did not exit after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for qd")
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub async fn client(&self) -> qd_client::Client {
        qd_client::Client::connect(&self.addr).await.expect("connect to qd")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening_addr(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["fields"]["addr"].as_str().map(str::to_owned)
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
