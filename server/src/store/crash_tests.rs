//! Crash tests of the store: a writing *process* is killed with SIGKILL over and over,
//! and after each kill the data dir must open and hold everything that was acknowledged.
//! The child uses a tiny checkpoint budget, so kills land before, in and after checkpoints
//! (page merges into sled) too. Test-only; the store's unit tests live next to the code
//! they test.
//!
//! No qd binary is involved: the test re-executes its own test binary (`current_exe`) with
//! itself as the only test to run and `QD_STORE_CRASH_CHILD=<dir>` set. In that mode the
//! test body is the writer: it opens the store, commits durable groups of inserts and
//! completions in a loop, and prints each group after `commit` returned, i.e. once it would
//! have been acknowledged. The parent kills it at varying points, then reopens the store
//! itself and checks the printed promises.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qd_protocol::JobId;

use super::testutil::{complete, insert};
use super::{JournalConfig, JournaledStore, SledConfig, Store};
use crate::model::Change;

const CHILD_ENV: &str = "QD_STORE_CRASH_CHILD";
/// The child's report lines (prefixed to tell them from the test harness's own output):
/// `BEGIN <inserted ids> <completed ids> end` before a commit, `REPORT` once it returned.
const BEGIN: &str = "qd-crash-begin";
const REPORT: &str = "qd-crash-committed";
/// Printed by the child just before it opens the store.
const OPENING: &str = "qd-crash-opening";
const KILLS: u32 = 100;
const INSERTS_PER_GROUP: u64 = 8;
const COMPLETES_PER_GROUP: usize = 3;
/// Generous: only reached when something hangs, never in a passing run.
const STUCK: Duration = Duration::from_secs(30);

/// The test's path in the lib test binary: the child is started with it as exact filter.
const TEST_NAME: &str =
    "store::crash_tests::kill9_during_durable_commits_loses_nothing_acknowledged";

/// Opens the store; the child's store checkpoints every few groups. Also says whether the
/// journal had a torn tail to cut off.
fn open(dir: &Path, child: bool) -> Result<(JournaledStore, bool), super::StoreError> {
    let config = if child {
        JournalConfig {
            checkpoint_bytes: 2048,
            segment_bytes: 8192,
            checkpoint_interval: Duration::from_millis(20),
        }
    } else {
        JournalConfig::default()
    };
    let (store, stats) = JournaledStore::open_with_stats(&SledConfig::new(dir), config)?;
    Ok((store, stats.torn_tail_bytes > 0))
}

#[test]
fn kill9_during_durable_commits_loses_nothing_acknowledged() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        run_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // Acknowledged inserts not acknowledged as completed, and acknowledged completions.
    let mut present = BTreeSet::<JobId>::new();
    let mut completed = BTreeSet::<JobId>::new();
    let mut highest_acked: JobId = 0;
    let started = Instant::now();
    // How the interrupted groups turned out: (applied, not applied), for the summary.
    let mut interrupted = (0u32, 0u32);
    // Kills that left a partial snapshot for `open` to remove.
    let mut partial_snapshots = 0;
    // Kills that left a torn journal tail for `open` to cut off.
    let mut torn_tails = 0;

    for kill in 0..KILLS {
        // Kill after 0 (while opening the store or in the first commit), 1, 2, ... 6
        // acknowledged groups; the child goes on meanwhile, so the kill lands anywhere.
        let groups_before_kill = (kill * 5 + kill / 7) % 7;
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(CHILD_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = read_lines(child.stdout.take().unwrap());
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        let mut reports = vec![];
        let mut opening = false;
        while !opening
            || reports.iter().filter(|l| *l == REPORT).count() < groups_before_kill as usize
        {
            match lines.recv_timeout(STUCK) {
                Ok(line) if line == OPENING => opening = true,
                Ok(line) if line == REPORT => reports.push(line),
                Ok(line) if line.starts_with(BEGIN) => reports.push(line),
                Ok(_) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "kill {kill}: the child stopped reporting ({e:?}); its stderr:\n{}",
                        stderr.join().unwrap()
                    );
                }
            }
        }
        child.kill().unwrap(); // SIGKILL on unix
        let status = child.wait().unwrap();
        assert!(!status.success(), "kill {kill}: the child exited on its own");
        // Lines the child wrote before dying were acknowledged too: read to EOF.
        reports.extend(lines.iter().filter(|l| l == REPORT || l.starts_with(BEGIN)));
        let child_stderr = stderr.join().unwrap();

        partial_snapshots += std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".generating"))
            .count();
        let (mut store, torn) = open(dir.path(), false).unwrap_or_else(|e| {
            panic!("kill {kill}: reopening failed: {e}\nchild stderr:\n{child_stderr}")
        });
        torn_tails += u32::from(torn);
        let mut stored = BTreeSet::<JobId>::new();
        let recovered = store.recover(&mut |r| {
            stored.insert(r.id);
        });
        let recovered = recovered.unwrap();
        drop(store);

        // Replay the reports: a group counts once its commit returned. The group the kill
        // interrupted may or may not be on disk, but all of it or none of it.
        let mut pending: Option<(Vec<JobId>, Vec<JobId>)> = None;
        let mut acked = |(inserted, done): (Vec<JobId>, Vec<JobId>)| {
            for id in inserted {
                highest_acked = highest_acked.max(id);
                present.insert(id);
            }
            for id in done {
                present.remove(&id);
                completed.insert(id);
            }
        };
        for line in &reports {
            if line == REPORT {
                acked(pending.take().expect("a commit report without its group"));
            } else {
                assert!(pending.is_none(), "kill {kill}: a group began before the last ended");
                pending = Some(parse_report(line));
            }
        }
        if let Some((inserted, done)) = pending {
            let kept = inserted.iter().filter(|id| stored.contains(id)).count();
            let removed = done.iter().filter(|id| !stored.contains(id)).count();
            let applied = kept == inserted.len() && removed == done.len();
            let absent = kept == 0 && removed == 0;
            assert!(
                applied || absent,
                "kill {kill}: the interrupted group is half applied: {kept} of {inserted:?} \
                 stored, {removed} of {done:?} removed"
            );
            if applied {
                interrupted.0 += 1;
                acked((inserted, done));
            } else {
                interrupted.1 += 1;
            }
        }
        let lost: Vec<_> = present.difference(&stored).collect();
        assert!(lost.is_empty(), "kill {kill}: acknowledged jobs lost: {lost:?}");
        let resurrected: Vec<_> = completed.intersection(&stored).collect();
        assert!(resurrected.is_empty(), "kill {kill}: completed jobs are back: {resurrected:?}");
        assert!(
            recovered.next_id > highest_acked,
            "kill {kill}: next id {} would reuse acknowledged id {highest_acked}",
            recovered.next_id
        );
    }
    eprintln!(
        "{KILLS} kills in {:?}; {} jobs acknowledged and kept, {} completed; interrupted \
         groups: {} applied, {} not; partial snapshots removed: {partial_snapshots}; torn \
         journal tails cut: {torn_tails}",
        started.elapsed(),
        present.len(),
        completed.len(),
        interrupted.0,
        interrupted.1
    );
}

/// The writer side: never returns; the parent kills it.
fn run_child(dir: &Path) -> ! {
    let mut out = std::io::stdout().lock(); // not `println!`: the harness would capture it
                                            // sled writes a snapshot while it opens: some kills should land in there (and leave a
                                            // partial `snap.*.generating` behind for the next open to clean up).
    writeln!(out, "{OPENING}").unwrap();
    out.flush().unwrap();
    let (mut store, _) = open(dir, true).unwrap();
    let mut live: Vec<JobId> = vec![];
    let recovered = store.recover(&mut |r| live.push(r.id)).unwrap();
    let mut next_id = recovered.next_id;
    loop {
        let inserted: Vec<JobId> = (next_id..next_id + INSERTS_PER_GROUP).collect();
        next_id += INSERTS_PER_GROUP;
        let done: Vec<JobId> = live.drain(..COMPLETES_PER_GROUP.min(live.len())).collect();
        let changes: Vec<Change> = inserted
            .iter()
            .map(|&id| insert(id))
            .chain(done.iter().map(|&id| complete(id)))
            .collect();
        let list = |ids: &[JobId]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        writeln!(out, "{BEGIN} {} {} end", list(&inserted), list(&done)).unwrap();
        out.flush().unwrap();
        store.commit(&changes, true).unwrap();
        writeln!(out, "{REPORT}").unwrap();
        out.flush().unwrap();
        live.extend(&inserted);
    }
}

fn parse_report(line: &str) -> (Vec<JobId>, Vec<JobId>) {
    let mut parts = line.split(' ').skip(1);
    let mut ids = || -> Vec<JobId> {
        parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap_or_else(|_| panic!("bad report line {line:?}")))
            .collect()
    };
    let inserted = ids();
    let done = ids();
    assert_eq!(parts.next(), Some("end"), "truncated report line {line:?}");
    (inserted, done)
}

/// Lines of `stdout`, read on a thread so that the parent can wait with a deadline.
fn read_lines(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            // A write of one short line to a pipe is atomic, so a kill cannot cut a report
            // in half; `parse_report` still insists on the closing `end` to be sure.
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
