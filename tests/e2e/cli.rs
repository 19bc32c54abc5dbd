use std::process::Command;
use std::time::Duration;

use crate::support::{self, on_both, qd_bin};

fn qd(args: &[&str]) -> std::process::Output {
    Command::new(qd_bin()).args(args).output().expect("run qd")
}

on_both! {
async fn add_then_stats_json(b) {
    let (server, _dir) = b.start();
    let addr = server.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        let a = qd(&[
            "add",
            "--addr",
            &addr,
            "mail",
            "welcome",
            "--payload",
            "hi",
            "--attempts",
            "3",
            "--backoff",
            "exponential:2s",
        ]);
        let b = qd(&["add", "--addr", &addr, "mail", "later", "--delay", "1h", "--priority", "-1"]);
        let stats = qd(&["stats", "--addr", &addr, "--json"]);
        (a, b, stats)
    })
    .await
    .unwrap();
    let (a, b, stats) = out;
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let id_a: u64 =
        String::from_utf8_lossy(&a.stdout).trim().parse().expect("qd add prints the id");
    let id_b: u64 =
        String::from_utf8_lossy(&b.stdout).trim().parse().expect("qd add prints the id");
    assert!(id_b > id_a);
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats --json is JSON");
    assert_eq!(v["mail"]["ready"], 1);
    assert_eq!(v["mail"]["delayed"], 1);
    assert_eq!(v["mail"]["active"], 0);
    assert_eq!(v["mail"]["dead"], 0);
    assert_eq!(v["mail"]["completed"], 0);
}
}

#[test]
fn cli_errors_say_what_to_do() {
    let out = qd(&["add", "--addr", "127.0.0.1:1", "q", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1"), "names the address: {err}");
    let out = qd(&["add", "q", "x", "--backoff", "linear:1s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exponential"), "suggests a valid form");
}

/// The config file sits below flags and the environment: `qd serve --config` with
/// `durability = "interval"` serves with interval durability, and a flag beats the file.
#[test]
fn config_file_sets_serve_flags_and_a_flag_beats_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qd.toml");
    std::fs::write(&file, "durability = \"interval\"\nflush_interval = \"20ms\"\n").unwrap();
    let file = file.to_str().unwrap().to_string();

    let data = dir.path().join("a");
    let mut from_file = support::Server::start_in(&data, &["--config", &file]);
    let log = listening_line(&from_file);
    assert!(log.contains("Interval"), "{log}");
    from_file.terminate();

    let data = dir.path().join("b");
    let mut flag_wins =
        support::Server::start_in(&data, &["--config", &file, "--durability", "none"]);
    let log = listening_line(&flag_wins);
    assert!(log.contains("None") && !log.contains("Interval"), "{log}");
    flag_wins.terminate();
}

/// A misspelt key is refused before anything starts, with the list of real ones.
#[test]
fn config_file_with_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qd.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let out = qd(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--data",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting \"lisen\"") && err.contains("listen"), "{err}");
}

/// The server's "qd is listening" log line, which names its durability. The line reaches the
/// log just after the address is known, so poll for it.
fn listening_line(server: &support::Server) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(line) = server.log().lines().find(|l| l.contains("qd is listening")) {
            return line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no listening line: {}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

on_both! {
/// The `qd` commands find the server's secret where `qd serve` found it, as in the container
/// image (`QD_SECRET_FILE`): `qd health` and `qd queues` work with it and fail without it.
async fn commands_read_the_secret_file_like_the_server(b) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hunter2-but-longer\n").unwrap();
    let server = b.start_in(&dir.path().join("data"), &["--secret-file", secret.to_str().unwrap()]);
    let run = |cmd: &str, with_secret: bool| {
        let mut c = Command::new(qd_bin());
        c.args([cmd, "--addr", &server.addr]).env_remove("QD_SECRET").env_remove("QD_ADMIN_SECRET");
        if with_secret {
            c.env("QD_SECRET_FILE", &secret);
        } else {
            c.env_remove("QD_SECRET_FILE");
        }
        c.output().unwrap()
    };
    for cmd in ["health", "queues"] {
        let ok = run(cmd, true);
        assert!(ok.status.success(), "{cmd}: {}", String::from_utf8_lossy(&ok.stderr));
        let refused = run(cmd, false);
        assert!(!refused.status.success(), "{cmd} without the secret must fail");
    }
}
}

on_both! {
/// Issue 11: `qd kill` moves waiting jobs to the dead set and skips what is not waiting;
/// the answer comes after the kill is durable, so it survives kill -9.
async fn kill_moves_waiting_jobs_to_the_dead_set(b) {
    let (server, _dir) = b.start();
    let client = server.client().await;
    let ready = client.add("kq", qd_client::Job::new("j", "x")).await.unwrap();
    let addr = server.addr.clone();
    let args = ["kill", "--addr", &addr, "--json", &ready.to_string(), "424242"].map(String::from);
    let out = tokio::task::spawn_blocking(move || {
        qd(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(v, serde_json::json!({"count": 1}), "one job killed, the unknown id skipped");
    b.expect_counts(&client, "kq", (0, 0, 0, 1, 0)).await;
    let server = server.kill9_and_restart().await;
    let client = server.client().await;
    b.expect_counts(&client, "kq", (0, 0, 0, 1, 0)).await; // still dead after kill -9
}
}

/// Issue 10: `qd serve` pins glibc's mmap threshold once recovery is done (cli/src/malloc.rs;
/// with the sliding threshold, 1M queued jobs took 256-290 MiB of RSS against 177-193
/// pinned). The server logs the setting only when glibc accepted it, so this fails if
/// `serve` stops making the call or glibc stops taking it; the call's effect on allocations
/// is checked by `malloc::tests` in the `qd` package.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn serve_pins_the_mmap_threshold() {
    let (server, _dir) = support::start();
    let line = support::eventually(Duration::from_secs(10), "the malloc line", || {
        let log = server.log();
        async move { log.lines().find(|l| l.contains("mmap threshold pinned")).map(String::from) }
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["fields"]["mmap_threshold_kib"], 256, "{line}");
}
