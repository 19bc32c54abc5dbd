//! A full disk: the server must never acknowledge what it could not store, must stop
//! rather than run on with memory and disk disagreeing, and must come back with every
//! acknowledged job once there is space again. The disk is a small tmpfs mounted for the
//! test (this needs root, as CI and the dev machines run; elsewhere the test says so and
//! does nothing).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qd_client::{ErrorCode, Job};

use crate::support::{counts, eventually, Server};

struct Tmpfs<'a>(&'a Path);

impl Tmpfs<'_> {
    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.0)
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount failed");
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("disk");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mnt)
        .output()
        .expect("run mount");
    if !mounted.status.success() {
        eprintln!(
            "SKIPPED a_full_disk_loses_nothing_acknowledged: cannot mount a tmpfs here ({}); run as root to test a full disk",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    let disk = Tmpfs(&mnt);
    let data = mnt.join("data");
    let mut server = Server::start_in(&data, &[]);
    let client = server.client().await;

    // Fill the disk with 16 KiB jobs until the server refuses.
    let payload = vec![42u8; 16 * 1024];
    let mut acked = BTreeSet::new();
    let refusal = loop {
        match client.add("full", Job::new("x", payload.clone())).await {
            Ok(id) => acked.insert(id),
            Err(e) => break e,
        };
        assert!(acked.len() < 100_000, "a 24 MiB disk took {} jobs of 16 KiB", acked.len());
    };
    assert!(!acked.is_empty(), "not a single job fit: {refusal}");
    assert!(
        refusal.code() == Some(ErrorCode::Storage) || refusal.is_disconnected(),
        "a full disk must be reported as a storage error, got {refusal}"
    );

    // The server stops instead of going on with memory ahead of the disk.
    let status = eventually(Duration::from_secs(30), "the server to stop", || {
        let status = server.exited();
        async move { status }
    })
    .await;
    assert!(!status.success(), "it must exit with an error status");
    assert!(server.log().contains("start it again"), "the log says what to do:\n{}", server.log());
    drop(client);

    // With space again, everything acknowledged is there.
    disk.resize("256m");
    let server = Server::start_in(&data, &[]);
    let client = server.client().await;
    let (ready, ..) = counts(&client, "full").await;
    assert!(ready >= acked.len() as u64, "{ready} jobs back, {} were acknowledged", acked.len());
    let mut present = BTreeSet::new();
    loop {
        let jobs = client.reserve(&["full"], 1000, Duration::ZERO).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        present.extend(jobs.iter().map(|j| j.id));
    }
    let lost: Vec<_> = acked.difference(&present).take(10).collect();
    assert!(lost.is_empty(), "acknowledged but lost after a full disk: {lost:?}");
}
