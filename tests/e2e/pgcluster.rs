//! Throwaway PostgreSQL clusters for the tests: `initdb` in a temporary directory, `pg_ctl`
//! on a free loopback port.
//!
//! [`Cluster::start`] makes one for a test alone (stopped and deleted on drop), for tests
//! that kill the database itself. [`shared_url`] gives every other test a fresh database
//! (CREATE DATABASE, a few tens of milliseconds) on one cluster per test process, started
//! by the first test that asks: an `initdb` per test would cost a second or two each. The
//! shared cluster outlives the test statics (which are never dropped), so a small watchdog
//! process stops and deletes it once the test process is gone, however it ended.
//!
//! Without PostgreSQL installed these print that the test was skipped, except when
//! `QD_REQUIRE_POSTGRES=1` (CI sets it), where they fail: a CI machine that lost its
//! PostgreSQL must not go green silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A PostgreSQL cluster, stopped (immediate mode) and deleted on drop.
pub struct Cluster {
    bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    pub port: u16,
    /// Run the cluster's tools as the `postgres` user (initdb refuses root).
    as_postgres: bool,
}

/// Where `initdb`, `pg_ctl` and `createdb` are: beside the `initdb` on `PATH` (after
/// following its symlink: some images link only a few tools into `/usr/local/bin`), or
/// Debian's `/usr/lib/postgresql/N/bin` (the newest).
fn pg_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .filter_map(|p| Some(p.join("initdb").canonicalize().ok()?.parent()?.to_path_buf()))
            .find(|p| ["pg_ctl", "createdb"].iter().all(|tool| p.join(tool).is_file()))
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

/// The PostgreSQL binaries, or `None` (after saying the test was skipped) when they are not
/// installed and `QD_REQUIRE_POSTGRES` is not `1`.
fn require_bin(test: &str) -> Option<PathBuf> {
    let bin = pg_bin();
    if bin.is_none() {
        if std::env::var("QD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("QD_REQUIRE_POSTGRES=1 but no initdb/pg_ctl found on PATH or in /usr/lib/postgresql/*/bin; install Debian's postgresql");
        }
        eprintln!("skipped {test}: PostgreSQL is not installed (set QD_REQUIRE_POSTGRES=1 to fail instead)");
    }
    bin
}

impl Cluster {
    /// A fresh cluster of one test alone, or `None` when PostgreSQL is not installed (see
    /// the module's doc).
    pub fn start(test: &str) -> Option<Cluster> {
        let bin = require_bin(test)?;
        let dir = tempfile::Builder::new().prefix("qdpg").tempdir().expect("temp dir");
        Some(Cluster::init(bin, dir, 100))
    }

    fn init(bin: PathBuf, dir: tempfile::TempDir, max_connections: u32) -> Cluster {
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown").arg("postgres").arg(dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the cluster dir to postgres");
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let path = dir.path().to_path_buf();
        let cluster = Cluster { bin, dir: Some(dir), path, port, as_postgres };
        let data = cluster.path.join("db");
        cluster.run(
            "initdb",
            &["-D", path_str(&data), "-U", "qd", "--auth=trust", "-E", "UTF8", "--no-sync"],
        );
        let options = format!("-c max_connections={max_connections}");
        cluster.pg_ctl_start(&options).expect("pg_ctl start");
        cluster
    }

    /// Starts the cluster's server (once more, after a kill), with the autovacuum naptime
    /// docs/BACKENDS.md asks for (a broker warns at start when it is longer).
    fn pg_ctl_start(&self, extra: &str) -> Result<(), String> {
        let data = self.path.join("db");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=off \
             -c autovacuum_naptime=1s {extra}",
            self.port,
            path_str(&self.path)
        );
        let log = self.path.join("log");
        self.try_run(
            "pg_ctl",
            &["-D", path_str(&data), "-o", &options, "-l", path_str(&log), "-w", "start"],
        )
    }

    /// SIGKILLs the postmaster (its backends exit on their own soon after).
    pub fn kill9(&self) {
        let pid_file = self.path.join("db").join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("postmaster.pid");
        let pid = pid.lines().next().expect("pid line").trim().to_owned();
        let status = Command::new("kill").args(["-9", &pid]).status().expect("kill");
        assert!(status.success(), "kill -9 {pid}");
    }

    /// Starts the cluster again after [`Cluster::kill9`], retrying while the killed
    /// server's backends are still exiting (they hold its shared memory until they do).
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.pg_ctl_start("") {
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

    /// The command running `tool` of the cluster's binaries (as `postgres` when root).
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        }
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {tool}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// The URL of database `db` of this cluster.
    pub fn url_of(&self, db: &str) -> String {
        format!("postgres://qd@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of the cluster's default database.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// A new empty database; its URL.
    fn create_database(&self, name: &str) -> String {
        let port = self.port.to_string();
        let args = ["-h", "127.0.0.1", "-p", &port, "-U", "qd", "-T", "template0", name];
        self.run("createdb", &args);
        self.url_of(name)
    }

    /// Leaves the cluster running when this value is gone (never dropped: a static), and
    /// starts a watchdog that stops and deletes it once process `pid` has exited.
    fn watch_for_exit_of(mut self, pid: u32) -> Cluster {
        let dir = self.dir.take().expect("a fresh cluster owns its dir").keep();
        let pg_ctl = self.bin.join("pg_ctl");
        let runas = if self.as_postgres { "runuser -u postgres -- " } else { "" };
        let stop = format!(
            "{runas}'{}' -D '{}' -m immediate -w stop",
            path_str(&pg_ctl),
            path_str(&dir.join("db"))
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf '{}'",
            path_str(&dir)
        );
        // `setsid --fork` returns at once, leaving the watchdog in a session of its own (so
        // a Ctrl-C of the tests does not take it down before it has cleaned up).
        let started = Command::new("setsid")
            .args(["--fork", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(started.is_ok_and(|s| s.success()), "start the cluster's watchdog (setsid, sh)");
        self
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.is_none() {
            return; // the watchdog's to stop
        }
        let data = self.path.join("db");
        let args = ["-D", path_str(&data), "-m", "immediate", "-w", "stop"];
        let _ = self.command("pg_ctl").args(args).output();
    }
}

/// The cluster shared by this test process (`None`: PostgreSQL is not installed).
static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();

/// A fresh, empty database on the cluster shared by this test process (started on first
/// use); its URL. `None` when PostgreSQL is not installed (see the module's doc).
pub fn shared_url(test: &str) -> Option<String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let cluster = SHARED.get_or_init(|| {
        let bin = pg_bin()?;
        let dir = tempfile::Builder::new().prefix("qdpg-shared").tempdir().expect("temp dir");
        // Tests run in parallel and each broker holds up to 24 connections.
        Some(Cluster::init(bin, dir, 400).watch_for_exit_of(std::process::id()))
    });
    let Some(cluster) = cluster else {
        require_bin(test);
        return None;
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Some(cluster.create_database(&format!("t{n}")))
}
