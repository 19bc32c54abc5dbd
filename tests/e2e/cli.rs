use std::process::Command;

use crate::support::{self, qd_bin};

fn qd(args: &[&str]) -> std::process::Output {
    Command::new(qd_bin()).args(args).output().expect("run qd")
}

#[tokio::test]
async fn add_then_stats_json() {
    let (server, _dir) = support::start();
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
