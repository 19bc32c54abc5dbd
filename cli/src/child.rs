//! A `qd serve` child process: started on a data dir, found by the address it logs, and
//! stopped with SIGTERM or SIGKILL. `qd bench --spawn` measures against one; the end-to-end
//! tests kill and restart them. Both start the same binary they run in, or one they name.
//!
//! The child logs JSON to a pipe; a thread keeps reading it, so the server never blocks on a
//! full pipe, and keeps the lines for [`QdProcess::log`]. The port comes from the
//! "qd is listening" line, so `--listen 127.0.0.1:0` works. CPU time and peak RSS are read
//! from `/proc` (Linux).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a child may take to recover its store and listen.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// A running `qd serve`. Killed when dropped.
#[derive(Debug)]
pub struct QdProcess {
    child: Child,
    /// The address it listens on.
    pub addr: String,
    /// Its data directory.
    pub data: PathBuf,
    exe: PathBuf,
    extra: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl QdProcess {
    /// Starts `exe serve --data DATA --listen LISTEN EXTRA...` and waits until it listens.
    pub fn start(exe: &Path, data: &Path, listen: &str, extra: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args(["serve", "--listen", listen, "--log-format", "json", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut process = QdProcess {
            child,
            addr: String::new(),
            data: data.to_path_buf(),
            exe: exe.to_path_buf(),
            extra: extra.to_vec(),
            log,
        };
        // The log thread drops its sender at EOF, so a server that exits early ends the
        // wait at once rather than after the timeout.
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                process.addr = addr;
                Ok(process)
            }
            Err(_) => bail!(
                "qd serve did not start listening; run it by hand to see why. Its log:\n{}",
                process.log()
            ),
        }
    }

    /// Starts the same server again on the same data dir and address.
    pub fn restart(&self) -> anyhow::Result<Self> {
        QdProcess::start(&self.exe, &self.data, &self.addr, &self.extra)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().context("run kill")?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed");
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("qd did not exit within {limit:?} of SIGTERM; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Everything the server logged so far, one JSON object a line.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(&self.pid().to_string())
    }

    /// Peak resident set size in MiB (VmHWM) since start or the last [`Self::reset_peak_rss`].
    pub fn peak_rss_mib(&self) -> Option<f64> {
        status_mib(&self.pid().to_string(), "VmHWM:")
    }

    /// Starts a new peak-RSS window: writing 5 to `clear_refs` resets VmHWM to the current
    /// RSS (Linux 4.0+), so one process's phases (queued, draining) get a peak each.
    pub fn reset_peak_rss(&self) -> anyhow::Result<()> {
        let path = format!("/proc/{}/clear_refs", self.pid());
        std::fs::write(&path, "5").with_context(|| format!("cannot reset the peak RSS ({path})"))
    }
}

/// User + system CPU seconds a process (`self` for this one) has used so far, from
/// `/proc/PID/stat`.
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// A `kB` line of `/proc/PID/status` (`VmHWM:`, `VmRSS:`), in MiB.
fn status_mib(pid: &str, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

impl Drop for QdProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux we know of; `getconf` confirms it.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn listening_addr(line: &str) -> Option<String> {
    if !line.contains("qd is listening") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["fields"]["addr"].as_str().map(str::to_owned)
}
