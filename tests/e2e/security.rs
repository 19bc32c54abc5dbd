//! Security of the server against hostile or careless clients (issue 7): the secret and
//! roles, TLS, the refusal to listen openly without a secret, and one regression test per
//! finding of the issue. Memory findings watch the server's RSS (`/proc/<pid>/status`)
//! while attacking and stop early past a cap, so a failing test cannot exhaust the machine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qd_protocol::message::LeaseRef;
use qd_protocol::message::{Hello, ServerFrame};
use qd_protocol::{frame, ClientFrame, ErrorCode, FrameDecoder, Request, Role};

use crate::support::{self, Server};

const SECRET: &str = "correct horse battery staple";

/// VmRSS of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line");
    kb / 1024.0
}

/// A raw protocol connection, for what the real client would never send.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    fn connect(server: &Server) -> Raw {
        let stream = TcpStream::connect(&server.addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { stream, buf: BytesMut::new() }
    }

    fn send(&mut self, frame: &ClientFrame) {
        let mut out = BytesMut::new();
        frame::encode(frame, &mut out, qd_protocol::HARD_MAX_FRAME).unwrap();
        self.stream.write_all(&out).unwrap();
    }

    /// The next server frame; `None` when the server closed the connection.
    fn recv(&mut self) -> Option<ServerFrame> {
        let decoder = FrameDecoder::new(qd_protocol::HARD_MAX_FRAME);
        loop {
            if let Some(f) = decoder.decode_server(&mut self.buf).expect("server frame") {
                return Some(f);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Hello on a server without a secret: returns after the Welcome.
    fn handshake(server: &Server) -> Raw {
        let mut raw = Raw::connect(server);
        raw.send(&hello());
        match raw.recv() {
            Some(ServerFrame::Welcome(_)) => raw,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
}

fn hello() -> ClientFrame {
    ClientFrame::Hello(Hello { protocol: qd_protocol::PROTOCOL_VERSION, client_name: "raw".into() })
}

fn goodbye_code(frame: Option<ServerFrame>) -> ErrorCode {
    match frame {
        Some(ServerFrame::Goodbye(e)) => e.code,
        other => panic!("expected Goodbye, got {other:?}"),
    }
}

fn client_with(server: &Server, secret: Option<&str>, role: Role) -> qd_client::ClientBuilder {
    let mut b = qd_client::Client::builder(server.addr.clone()).role(role);
    if let Some(s) = secret {
        b = b.secret(s);
    }
    b
}

#[tokio::test]
async fn without_the_secret_a_client_can_do_nothing() {
    let (server, _dir) = support::start_with(&["--secret", SECRET]);
    // The real client without a secret fails its handshake.
    let err = qd_client::Client::connect(server.addr.clone()).await.expect_err("refused");
    assert!(err.is_auth(), "{err}");
    // A raw client that skips Auth gets nothing executed.
    let mut raw = Raw::connect(&server);
    raw.send(&hello());
    assert!(matches!(raw.recv(), Some(ServerFrame::Challenge { .. })));
    raw.send(&ClientFrame::Request { id: 1, body: Request::Ping });
    assert_eq!(goodbye_code(raw.recv()), ErrorCode::HandshakeRequired);
    // The right secret works.
    let ok = client_with(&server, Some(SECRET), Role::Worker).connect().await.expect("auth");
    ok.ping().await.expect("ping");
}

#[tokio::test]
async fn wrong_secret_is_auth_failed() {
    let (server, _dir) = support::start_with(&["--secret", SECRET]);
    let err = client_with(&server, Some("guess"), Role::Worker).connect().await.err().unwrap();
    assert!(err.is_auth(), "{err}");
    let mut raw = Raw::connect(&server);
    raw.send(&hello());
    assert!(matches!(raw.recv(), Some(ServerFrame::Challenge { .. })));
    raw.send(&ClientFrame::Auth { role: Role::Admin, proof: [0; 32] });
    assert_eq!(goodbye_code(raw.recv()), ErrorCode::AuthFailed);
}

#[tokio::test]
async fn worker_role_is_forbidden_admin_requests() {
    let (server, _dir) =
        support::start_with(&["--secret", SECRET, "--admin-secret", "the admin one"]);
    let worker = client_with(&server, Some(SECRET), Role::Worker).connect().await.unwrap();
    let err = worker.queues().await.expect_err("forbidden");
    assert!(err.to_string().to_lowercase().contains("admin"), "{err}");
    worker.ping().await.expect("the connection stays open");
    let admin = client_with(&server, Some("the admin one"), Role::Admin).connect().await.unwrap();
    // Past the role check (whatever the engine then answers, it is not Forbidden).
    if let Err(e) = admin.queues().await {
        assert!(!e.to_string().contains("Admin role"), "admin was refused: {e}");
    }
    let err = client_with(&server, Some(SECRET), Role::Admin).connect().await.err().unwrap();
    assert!(err.is_auth(), "the worker secret does not grant Admin: {err}");
}

#[tokio::test]
async fn tls_serves_the_real_client() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let server = Server::start_in(
        &dir.path().join("data"),
        &["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()],
    );
    let tls = qd_client::TlsOptions::new().ca_pem(cert.cert.pem()).server_name("localhost");
    let client = qd_client::Client::builder(server.addr.clone()).tls(tls).connect().await;
    let client = client.expect("TLS connect");
    let id = client.add("q", qd_client::Job::new("j", "x")).await.unwrap();
    assert!(id > 0);
    // A plain client cannot talk to it.
    assert!(qd_client::Client::connect(server.addr.clone()).await.is_err());
}

#[test]
fn listening_beyond_loopback_without_a_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::qd_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("QD_SECRET") && err.contains("--insecure"), "{err}");
    assert!(!dir.path().join("data").exists(), "a refused start touches nothing");
}

/// Finding 8: idle handshaken connections held every slot for ever.
#[test]
fn idle_connection_is_closed() {
    let (server, _dir) = support::start_with(&["--idle-timeout", "1s"]);
    let mut raw = Raw::handshake(&server);
    let started = Instant::now();
    assert_eq!(goodbye_code(raw.recv()), ErrorCode::HandshakeRequired);
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(raw.recv().is_none(), "closed after the Goodbye");
}

/// Finding 8, second half: Reserve with max = u32::MAX is clamped to --max-reserve.
#[tokio::test]
async fn reserve_max_is_clamped() {
    let (server, _dir) = support::start_with(&["--max-reserve", "5", "--durability", "none"]);
    let client = server.client().await;
    for _ in 0..8 {
        client.add("q", qd_client::Job::new("j", "x")).await.unwrap();
    }
    let got = client.reserve(&["q"], u32::MAX, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 5);
}

/// Finding 1: Busy/UnknownRequest replies to a client that never reads piled up without
/// bound (21 MB of the 7-byte frame grew the server by 964 MiB).
#[test]
fn unread_error_replies_do_not_grow_memory() {
    let (server, _dir) = support::start_with(&["--max-conn-buffer", "1048576"]);
    let pid = server.pid();
    let base = rss_mib(pid);
    let mut raw = Raw::handshake(&server);
    raw.stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk: Vec<u8> = [0u8, 0, 0, 3, 1, 1, 0xc8].repeat(64 * 1024);
    let (mut sent, mut peak) = (0usize, base);
    while sent < 20 << 20 {
        if raw.stream.write_all(&chunk).is_err() {
            break; // the server stopped reading: backpressure, as it should
        }
        sent += chunk.len();
        peak = peak.max(rss_mib(pid));
        assert!(peak - base < 64.0, "server grew {:.0} MiB after {sent} bytes", peak - base);
    }
    peak = peak.max(rss_mib(pid));
    eprintln!("finding 1: sent {sent} bytes, RSS {base:.1} -> peak {peak:.1} MiB");
    assert!(peak - base < 64.0, "server grew {:.0} MiB", peak - base);
}

/// Finding 2: pipelined Stats on connections that never read amplified a small request
/// into a large answer thousands of times.
#[tokio::test]
async fn unread_stats_do_not_amplify() {
    let (server, _dir) = support::start_with(&["--durability", "none"]);
    let client = server.client().await;
    let names: Vec<String> =
        (0..2000).map(|i| format!("queue-with-a-longish-name-{i:05}")).collect();
    let adds = names.iter().map(|q| client.add(q, qd_client::Job::new("j", "")));
    for r in futures::future::join_all(adds).await {
        r.unwrap();
    }
    let pid = server.pid();
    let base = rss_mib(pid);
    let mut conns: Vec<Raw> = (0..3).map(|_| Raw::handshake(&server)).collect();
    let mut batch = BytesMut::new();
    for id in 0..4096 {
        let stats = ClientFrame::Request { id, body: Request::Stats { after: None, limit: 0 } };
        frame::encode(&stats, &mut batch, 1 << 20).unwrap();
    }
    for raw in &mut conns {
        raw.stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = raw.stream.write_all(&batch);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut peak = base;
    while Instant::now() < deadline {
        peak = peak.max(rss_mib(pid));
        assert!(peak - base < 64.0, "server grew {:.0} MiB", peak - base);
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("finding 2: RSS {base:.1} -> peak {peak:.1} MiB");
}

/// Finding 4: 16 MiB could be buffered per connection before the handshake.
#[test]
fn big_frame_before_the_handshake_is_refused() {
    let (server, _dir) = support::start();
    let mut raw = Raw::connect(&server);
    raw.stream.write_all(&(16u32 << 20).to_be_bytes()).unwrap();
    assert_eq!(goodbye_code(raw.recv()), ErrorCode::FrameTooLarge);
}

/// Findings 3 and 5: a Reserve naming very many queues (one frame that made 130,000
/// queues, or millions of Strings) is refused by the decode limit; the connection lives.
#[test]
fn reserve_naming_too_many_queues_is_refused() {
    let (server, _dir) = support::start_with(&["--max-reserve-queues", "16"]);
    let mut raw = Raw::handshake(&server);
    let queues: Vec<String> = (0..17).map(|i| format!("q{i}")).collect();
    raw.send(&ClientFrame::Request {
        id: 7,
        body: Request::Reserve { queues, max: 1, timeout_ms: 0 },
    });
    match raw.recv() {
        Some(ServerFrame::Response { id: 7, result: Err(e) }) => {
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    raw.send(&ClientFrame::Request { id: 8, body: Request::Ping });
    assert!(matches!(raw.recv(), Some(ServerFrame::Response { id: 8, result: Ok(_) })));
}

/// Finding 6: wrong lease guesses cost nothing. Now many of them close the connection.
#[tokio::test]
async fn many_wrong_leases_close_the_connection() {
    let (server, _dir) = support::start_with(&["--durability", "none"]);
    let id = server.client().await.add("q", qd_client::Job::new("j", "")).await.unwrap();
    let mut raw = Raw::handshake(&server);
    for i in 0..64u64 {
        let lease = LeaseRef { id, token: i + 12345 };
        raw.send(&ClientFrame::Request { id: i, body: Request::Touch { lease, lease_ms: None } });
    }
    loop {
        match raw.recv() {
            Some(ServerFrame::Response { .. }) => continue,
            Some(ServerFrame::Goodbye(e)) => {
                assert!(e.message.contains("wrong or stale leases"), "{e:?}");
                break;
            }
            other => panic!("expected a Goodbye, got {other:?}"),
        }
    }
}

/// Finding 7: a second server on the same data dir deleted files before finding the lock.
#[tokio::test]
async fn second_server_on_one_data_dir_fails_clearly() {
    let (server, _dir) = support::start_with(&["--durability", "fsync"]);
    let client = server.client().await;
    client.add("q", qd_client::Job::new("j", "x")).await.unwrap();
    let out = std::process::Command::new(support::qd_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&server.data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another qd is running"), "{err}");
    assert_eq!(support::counts(&client, "q").await.0, 1, "the first server's data is intact");
}

/// Finding 10: the data dir was created 0755.
#[tokio::test]
async fn data_dir_is_private() {
    let (server, _dir) = support::start_with(&["--durability", "fsync"]);
    server.client().await.add("q", qd_client::Job::new("j", "x")).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&server.data), 0o700);
    let mut stack = vec![server.data.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                assert_eq!(mode(&path) & 0o077, 0, "{} is readable by others", path.display());
            }
        }
    }
}

/// Adds one job to each of `names`, pipelined through one client.
async fn one_job_per_queue(client: &qd_client::Client, names: &[String]) {
    use futures::StreamExt;
    let adds = futures::stream::iter(names)
        .map(|q| client.add(q, qd_client::Job::new("j", "")))
        .buffer_unordered(256);
    let results: Vec<_> = adds.collect().await;
    for r in results {
        r.expect("add");
    }
}

/// `qd stats --json` against `server`: the queue names it lists (the process must succeed).
async fn cli_stats_names(server: &Server) -> std::collections::BTreeSet<String> {
    let addr = server.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::qd_bin())
            .args(["stats", "--addr", &addr, "--json"])
            .output()
            .expect("run qd stats")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "qd stats failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats --json is JSON");
    let map = v.as_object().expect("a JSON object keyed by queue");
    for (q, counts) in map {
        assert_eq!(counts["ready"], 1, "queue {q}: {counts}");
    }
    map.keys().cloned().collect()
}

/// Checks both ways of reading stats (the client's pages and the CLI) list exactly `names`,
/// one ready job each.
async fn stats_list_every_queue(server: &Server, names: &[String], when: &str) {
    let want: std::collections::BTreeSet<String> = names.iter().cloned().collect();
    let stats = server.client().await.stats().await.unwrap_or_else(|e| panic!("{when}: {e}"));
    assert_eq!(stats.len(), names.len(), "{when}: client.stats() lists every queue once");
    // The test means something only if one answer with them all cannot fit a frame.
    let whole = ServerFrame::Response {
        id: 1,
        result: Ok(qd_protocol::Response::Stats { queues: stats.clone(), next: None }),
    };
    let mut bytes = BytesMut::new();
    frame::encode(&whole, &mut bytes, qd_protocol::HARD_MAX_FRAME).unwrap();
    assert!(bytes.len() > 16384, "{when}: all stats take only {} bytes", bytes.len());
    let got: std::collections::BTreeSet<String> = stats.iter().map(|q| q.queue.clone()).collect();
    assert_eq!(got, want, "{when}: client.stats()");
    assert!(stats.iter().all(|q| q.ready == 1), "{when}: one ready job per queue");
    assert_eq!(cli_stats_names(server).await, want, "{when}: qd stats --json");
}

/// Finding 3: after one job was added to each of 130,000 queues, every Stats answer was too
/// big for a frame ("the answer does not fit in one frame"), for good, also after a restart.
/// Stats is paged now. Same shape at a smaller scale: with `--max-frame 16384`, 3,000
/// queues (about 57 KB of stats at once) are far more than one frame holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_queues_never_break_stats() {
    let (mut server, _dir) = support::start_with(&["--max-frame", "16384"]);
    let names: Vec<String> = (0..3000).map(|i| format!("tenant-{i:04}")).collect();
    one_job_per_queue(&server.client().await, &names).await;
    stats_list_every_queue(&server, &names, "before the restart").await;

    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}; log:\n{}", server.log());
    let server = server.restart();
    stats_list_every_queue(&server, &names, "after the restart").await;
}

/// Finding 3 with the longest names: a page is cut by count (the client asks for 500
/// queues), so with `--max-frame 16384` and 128-byte queue names (136 bytes of stats each)
/// one page is about 68 KB, and every Stats answer fails "does not fit in one frame" again,
/// for good. 200 such queues suffice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_queue_names_never_break_stats() {
    let (server, _dir) = support::start_with(&["--max-frame", "16384"]);
    let names: Vec<String> = (0..200).map(|i| format!("{i:04}-{}", "x".repeat(123))).collect();
    assert!(names.iter().all(|n| n.len() == qd_protocol::MAX_QUEUE_NAME));
    one_job_per_queue(&server.client().await, &names).await;
    stats_list_every_queue(&server, &names, "long names").await;
}
