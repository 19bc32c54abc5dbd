//! What `qd bench` measures against: a server at an address, or a throwaway `qd serve`
//! child process on a temporary data dir (`--spawn`), whose CPU time and peak RSS we can read
//! from `/proc` and which we can kill -9 for the restart workload.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// A `qd serve` process started by the bench.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    pub addr: String,
    pub data: PathBuf,
    args: Vec<String>,
}

impl Spawned {
    /// Starts `qd serve` (this very binary) on `data` and waits until it listens.
    pub fn start(data: &Path, args: &[String]) -> anyhow::Result<Spawned> {
        let exe = std::env::current_exe().context("cannot find the qd binary to spawn")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--data"])
            .arg(data)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot spawn qd serve")?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Some(sender) = tx.as_ref() else { continue };
                if let Some(addr) = listening_addr(&line) {
                    let _ = sender.send(Ok(addr));
                    tx = None;
                } else if line.contains("\"ERROR\"") {
                    let _ = sender.send(Err(line));
                    tx = None;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(Ok(addr)) => {
                Ok(Spawned { child, addr, data: data.to_path_buf(), args: args.to_vec() })
            }
            Ok(Err(line)) => {
                let _ = child.kill();
                bail!("the spawned server failed to start: {line}")
            }
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "the spawned server did not start listening; run `qd serve` by hand to see why"
                )
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then wait.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same server again on the same data dir.
    pub fn restart(&self) -> anyhow::Result<Spawned> {
        Spawned::start(&self.data, &self.args)
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / clock_ticks())
    }

    /// Peak resident set size in MiB (VmHWM).
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Total size of the files under `dir`, in bytes.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
