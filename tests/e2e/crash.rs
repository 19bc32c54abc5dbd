use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use qd_client::Job;

use crate::support::{counts, Server};

#[tokio::test]
async fn acknowledged_adds_survive_kill_9_and_active_jobs_return() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_in(&data, &[]);
    let client = server.client().await;
    let mut ids = BTreeSet::new();
    for i in 0..200 {
        ids.insert(client.add("crash", Job::new("x", format!("{i}"))).await.unwrap());
    }
    let bulk = client
        .add_bulk("crash", (0..300).map(|i| Job::new("y", format!("b{i}"))).collect())
        .await
        .unwrap();
    ids.extend(bulk);
    // Ten jobs are being worked on when the server dies.
    let active = client.reserve(&["crash"], 10, Duration::ZERO).await.unwrap();
    assert_eq!(active.len(), 10);
    server.kill9();
    drop(client);

    let server = Server::start_in(&data, &[]);
    let client = server.client().await;
    assert_eq!(counts(&client, "crash").await, (500, 0, 0, 0, 0), "every acknowledged add is back");
    let jobs = client.reserve(&["crash"], 1000, Duration::ZERO).await.unwrap();
    let got: BTreeSet<u64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(got, ids);
    for j in &jobs {
        assert_eq!(j.attempt, 1, "a server crash does not use up the job's attempts");
    }
    // Ids are never reused after a restart.
    let new_id = client.add("crash", Job::new("z", "")).await.unwrap();
    assert!(new_id > *ids.last().unwrap());
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_in(&data, &[]);
    let client = server.client().await;
    client
        .add_bulk("term", (0..50).map(|i| Job::new("x", format!("{i}"))).collect())
        .await
        .unwrap();
    let held = client.reserve(&["term"], 5, Duration::ZERO).await.unwrap();
    client.ack(&held[0]).await.unwrap();
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}; log:\n{}", server.log());

    let server = Server::start_in(&data, &[]);
    let client = server.client().await;
    // 49 left: the acked one is gone, the four held at shutdown are ready again.
    assert_eq!(counts(&client, "term").await, (49, 0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_when_the_server_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_in(&data, &[]);
    let addr = server.addr.clone();
    let client = server.client().await;
    let first = client.add("again", Job::new("x", "1")).await.unwrap();
    // Kill and restart off the runtime's threads, so the client's connection task sees the
    // socket close while it happens, as it would in a real program.
    let restarted = tokio::task::spawn_blocking(move || {
        server.kill9();
        Server::start_in_at(&data, &addr, &[])
    });
    // Same address, same data: the existing Client finds it again on its next request.
    let _server = restarted.await.unwrap();
    let second = client.add("again", Job::new("x", "2")).await.expect("the client reconnected");
    assert!(second > first);
    assert_eq!(counts(&client, "again").await.0, 2);
}

/// The issue that motivated this test: sled 0.34 can leave a partial
/// `snap.<lsn>.generating` file behind when killed mid-write, after which every open
/// fails. This kills a real `qd serve` while a producer is adding, 100 times in a row, and
/// checks after every restart that the server opens and every acknowledged add is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_writing_server_100_times() {
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start_in(&data, &[]);
    let addr = first.addr.clone();
    let mut server = Some(first);
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    for round in 0..100u64 {
        let live = server.take().expect("a running server");
        let client = live.client().await;
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let producer = tokio::spawn(async move {
            let mut adds = futures::stream::iter(0..)
                .map(|i| {
                    let client = client.clone();
                    async move { client.add("crash", Job::new("x", format!("{i}"))).await }
                })
                .buffer_unordered(32);
            // Runs until the server dies under it (or, once the client has reconnected to
            // the restarted server, until it is aborted below).
            while let Some(Ok(id)) = adds.next().await {
                sink.lock().unwrap().push(id);
            }
        });
        // Kill at a varying point of the write stream (deterministic per round).
        let wait_for = 1 + (round * 37) % 200;
        crate::support::eventually(Duration::from_secs(30), "some adds acknowledged", || {
            let n = got.lock().unwrap().len() as u64;
            async move { (n >= wait_for).then_some(()) }
        })
        .await;
        let (data2, addr2) = (data.clone(), addr.clone());
        let restarted = tokio::task::spawn_blocking(move || {
            let mut live = live;
            live.kill9();
            Server::start_in_at(&data2, &addr2, &[])
        })
        .await
        .unwrap();
        producer.abort();
        let _ = producer.await;
        acked.extend(got.lock().unwrap().iter().copied());
        let client = restarted.client().await;
        let ready = counts(&client, "crash").await.0;
        assert!(
            ready >= acked.len() as u64,
            "round {round}: {ready} jobs after restart, {} acknowledged",
            acked.len()
        );
        server = Some(restarted);
    }
    // Every acknowledged id is there, exactly.
    let live = server.unwrap();
    let client = live.client().await;
    let mut present = BTreeSet::new();
    loop {
        let jobs = client.reserve(&["crash"], 10_000, Duration::ZERO).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        present.extend(jobs.iter().map(|j| j.id));
    }
    let missing: Vec<_> = acked.difference(&present).take(10).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

#[tokio::test]
async fn every_durability_mode_keeps_jobs_across_a_clean_restart() {
    for mode in ["fsync", "interval", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut server = Server::start_in(&data, &["--durability", mode]);
        let client = server.client().await;
        client
            .add_bulk("modes", (0..20).map(|i| Job::new("x", format!("{i}"))).collect())
            .await
            .unwrap();
        let held = client.reserve(&["modes"], 3, Duration::ZERO).await.unwrap();
        client.ack_many(&held[..1]).await.unwrap();
        drop(client);
        assert!(server.terminate().success(), "{mode}: unclean exit; log:\n{}", server.log());
        let server = Server::start_in(&data, &["--durability", mode]);
        let client = server.client().await;
        assert_eq!(counts(&client, "modes").await, (19, 0, 0, 0, 0), "durability {mode}");
    }
}
