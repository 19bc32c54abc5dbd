//! `qd serve --faktory`: Faktory's work protocol on a second port. Raw text lines over TCP
//! for the handshake (with and without a password), push/fetch/ack, FAIL with Faktory's
//! backoff, `retry` 0 and -1, leases that outlive the socket that fetched them, bad input
//! and kill -9; MUTATE kill and QUEUE LATENCY; the idle timeout and TLS taken from the
//! native port's settings; then the real `faktory` crate from crates.io as a producer and
//! a worker.
//! The Node and Python clients are driven by the scripts in `tests/faktory/` (`.ci/run`).

use std::time::{Duration, Instant};

use qd_protocol::admin::JobState;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::support::{counts, start_with, wait_for_count, Server};

/// The Faktory port of a server started with `--faktory 127.0.0.1:0`, from its log.
fn faktory_addr(server: &Server) -> String {
    server
        .log()
        .lines()
        .filter(|l| l.contains("faktory is listening"))
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["fields"]["addr"].as_str().map(str::to_owned)
        })
        .expect("the server logs the Faktory port's address")
}

fn start(extra: &[&str]) -> (Server, tempfile::TempDir, String) {
    let mut args = vec!["--faktory", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (server, dir) = start_with(&args);
    let addr = faktory_addr(&server);
    (server, dir, addr)
}

/// One reply, as RESP.
#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Bulk(Option<String>),
    /// The server closed the connection.
    Closed,
}

impl Resp {
    fn json(&self) -> Value {
        match self {
            Resp::Bulk(Some(s)) => serde_json::from_str(s).expect("bulk JSON"),
            other => panic!("expected a bulk JSON reply, got {other:?}"),
        }
    }
}

/// A raw Faktory connection: lines out, RESP in, over TCP or TLS.
struct Conn {
    read: BufReader<Box<dyn AsyncRead + Unpin + Send>>,
    write: Box<dyn AsyncWrite + Unpin + Send>,
}

impl Conn {
    /// Connects and reads the greeting's JSON.
    async fn open(addr: &str) -> (Conn, Value) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Conn::greeted(Conn::over(stream)).await
    }

    /// Connects over TLS, trusting `ca` (DER) for the name `localhost`, and reads the
    /// greeting, as a `tcp+tls://` client does.
    async fn open_tls(addr: &str, ca: &rcgen::CertifiedKey) -> (Conn, Value) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await.expect("TLS handshake");
        Conn::greeted(Conn::over(stream)).await
    }

    fn over<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Conn {
        let (read, write) = tokio::io::split(stream);
        Conn { read: BufReader::new(Box::new(read)), write: Box::new(write) }
    }

    async fn greeted(mut conn: Conn) -> (Conn, Value) {
        let hi = match conn.read().await {
            Resp::Simple(s) => s,
            other => panic!("expected +HI, got {other:?}"),
        };
        let json = hi.strip_prefix("HI ").expect("HI greeting");
        assert!(!json.contains(' '), "no spaces in the greeting's JSON: {hi}");
        (conn, serde_json::from_str(json).unwrap())
    }

    /// Connects and says HELLO without a password.
    async fn hello(addr: &str) -> Conn {
        let (conn, _) = Conn::open(addr).await;
        Conn::say_hello(conn).await
    }

    async fn say_hello(mut conn: Conn) -> Conn {
        let hello = json!({"hostname":"test","wid":"w1","pid":1,"labels":[],"v":2});
        assert_eq!(conn.cmd(&format!("HELLO {hello}")).await, Resp::Simple("OK".into()));
        conn
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.expect("write");
        self.write.flush().await.expect("flush");
    }

    async fn cmd(&mut self, line: &str) -> Resp {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.read().await
    }

    async fn read(&mut self) -> Resp {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), self.read.read_line(&mut line))
            .await
            .expect("a reply within 30 s")
            .unwrap_or(0);
        if n == 0 {
            return Resp::Closed;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        match line.split_at(1) {
            ("+", s) => Resp::Simple(s.to_owned()),
            ("-", s) => Resp::Error(s.to_owned()),
            ("$", "-1") => Resp::Bulk(None),
            ("$", len) => {
                let len: usize = len.parse().expect("bulk length");
                let mut buf = vec![0; len + 2];
                self.read.read_exact(&mut buf).await.expect("bulk body");
                buf.truncate(len);
                Resp::Bulk(Some(String::from_utf8(buf).expect("utf-8")))
            }
            _ => panic!("not RESP: {line:?}"),
        }
    }
}

fn job(jid: &str, queue: &str, extra: Value) -> String {
    let mut j = json!({"jid": jid, "jobtype": "mail", "queue": queue, "args": [1, "two"]});
    if let Value::Object(more) = extra {
        j.as_object_mut().unwrap().extend(more);
    }
    format!("PUSH {j}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn ok() -> Resp {
    Resp::Simple("OK".into())
}

fn pwdhash(password: &str, salt: &str, iterations: u64) -> String {
    let mut d = Sha256::digest(format!("{password}{salt}").as_bytes());
    for _ in 1..iterations {
        d = Sha256::digest(d);
    }
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn push_fetch_ack_and_the_job_is_a_qd_job() {
    let (server, _dir, addr) = start(&[]);
    let mut c = Conn::hello(&addr).await;
    assert_eq!(c.cmd(&job("jid-00000001", "fk", json!({"priority": 9}))).await, ok());
    let qd = server.client().await;
    assert_eq!(counts(&qd, "fk").await.0, 1, "visible to qd's own protocol");

    let fetched = c.cmd("FETCH nothing fk").await.json();
    assert_eq!(fetched["jid"], "jid-00000001");
    assert_eq!(fetched["jobtype"], "mail");
    assert_eq!(fetched["args"], json!([1, "two"]), "the job comes back as pushed");
    assert_eq!(fetched["retry"], 25, "filled in as Faktory does");
    assert!(fetched["enqueued_at"].is_string() && fetched["created_at"].is_string());
    assert!(fetched.get("failure").is_none());
    let page = qd.jobs("fk", JobState::Active, None, 10).await.unwrap();
    assert_eq!(page.jobs[0].name, "mail");

    assert_eq!(c.cmd(r#"ACK {"jid":"jid-00000001"}"#).await, ok());
    assert_eq!(counts(&qd, "fk").await, (0, 0, 0, 0, 1));
    assert_eq!(c.cmd("FETCH fk").await, Resp::Bulk(None), "nothing left after a 2 s wait");
    assert_eq!(c.cmd(r#"ACK {"jid":"jid-00000001"}"#).await, ok(), "a repeated ACK is OK");

    let info = c.cmd("INFO").await.json();
    assert_eq!(info["server"]["description"], "Faktory");
    assert!(info["server"]["faktory_version"].as_str().unwrap().starts_with("1."));
    assert_eq!(info["faktory"]["queues"]["fk"], 0, "a pushed-to queue is listed");
    assert!(info["faktory"]["queues"].get("nothing").is_none(), "a fetched-from one is not");
    assert_eq!(info["faktory"]["total_processed"], 1);

    // PUSHB: Faktory's per-job errors; the good jobs go in.
    let bulk = json!([
        {"jid":"short","jobtype":"x","args":[]},
        {"jid":"jid-00000002","jobtype":"x","args":[],"queue":"fk"},
        {"jid":"jid-00000003","jobtype":"x","args":[],"queue":"other"},
    ]);
    let errors = c.cmd(&format!("PUSHB {bulk}")).await.json();
    assert_eq!(errors, json!({"short": "jobs must have a reasonable jid parameter"}));
    assert_eq!((counts(&qd, "fk").await.0, counts(&qd, "other").await.0), (1, 1));
    // A jid is an idempotency key: pushing it again while pending adds nothing.
    assert_eq!(c.cmd(&job("jid-00000002", "fk", json!({}))).await, ok());
    assert_eq!(counts(&qd, "fk").await.0, 1);
    assert_eq!(c.cmd("END").await, Resp::Closed);
}

#[tokio::test]
async fn the_password_handshake_hashes_as_faktory_does() {
    let (_server, _dir, addr) = start(&["--secret", "open sesame"]);

    let (mut c, hi) = Conn::open(&addr).await;
    let (salt, iterations) = (hi["s"].as_str().unwrap().to_owned(), hi["i"].as_u64().unwrap());
    assert!((4000..8096).contains(&iterations), "{hi}");
    let hash = pwdhash("open sesame", &salt, iterations);
    let hello = json!({"hostname":"t","v":2,"pwdhash":hash});
    assert_eq!(c.cmd(&format!("HELLO {hello}")).await, ok());
    assert_eq!(c.cmd(&job("jid-00000001", "auth", json!({}))).await, ok());

    // A client that sends no version hashes once (the Python client does).
    let (mut c, hi) = Conn::open(&addr).await;
    let hash = pwdhash("open sesame", hi["s"].as_str().unwrap(), 1);
    assert_eq!(c.cmd(&format!("HELLO {}", json!({"pwdhash": hash}))).await, ok());

    // No hash, or a wrong one: refused and closed.
    let (mut c, _) = Conn::open(&addr).await;
    assert_eq!(c.cmd(r#"HELLO {"v":2}"#).await, Resp::Error("ERR Invalid password".into()));
    assert_eq!(c.read().await, Resp::Closed);
    let (mut c, hi) = Conn::open(&addr).await;
    let hash = pwdhash("guess", hi["s"].as_str().unwrap(), hi["i"].as_u64().unwrap());
    let hello = json!({"v":2,"pwdhash":hash});
    assert_eq!(c.cmd(&format!("HELLO {hello}")).await, Resp::Error("ERR Invalid password".into()));
    // Skipping HELLO is refused too.
    let (mut c, _) = Conn::open(&addr).await;
    assert!(matches!(c.cmd(&job("jid-00000002", "auth", json!({}))).await, Resp::Error(_)));
    assert_eq!(c.read().await, Resp::Closed);
}

#[tokio::test]
async fn fail_retries_after_faktorys_backoff_and_rebuilds_failure() {
    let (server, _dir, addr) = start(&[]);
    let qd = server.client().await;
    let mut c = Conn::hello(&addr).await;
    assert_eq!(c.cmd(&job("jid-retry-1", "r", json!({"retry": 2}))).await, ok());
    c.cmd("FETCH r").await.json();
    let failed_at = now_ms();
    let fail = json!({"jid":"jid-retry-1","errtype":"RuntimeError","message":"boom",
        "backtrace":["app.rb:1","app.rb:2"]});
    assert_eq!(c.cmd(&format!("FAIL {fail}")).await, ok());

    // First failure: 15 + rand(30) seconds, Faktory's count^4 + 15 + rand(30) * (count + 1).
    let page = qd.jobs("r", JobState::Delayed, None, 10).await.unwrap();
    let run_at = page.jobs[0].run_at_ms.expect("a retry time");
    let wait = run_at.saturating_sub(failed_at);
    assert!((14_000..=45_000).contains(&wait), "waits {wait} ms");
    let info = c.cmd("INFO").await.json();
    assert_eq!(info["faktory"]["tasks"]["Retries"]["size"], 1);
    assert_eq!(info["faktory"]["tasks"]["Scheduled"]["size"], 0);

    // Requeue it now (MUTATE), fetch it: `failure` says what the FAIL said.
    let mutate = json!({"cmd":"requeue","target":"retries","filter":{"jobtype":"mail"}});
    assert_eq!(c.cmd(&format!("MUTATE {mutate}")).await, ok());
    let again = c.cmd("FETCH r").await.json();
    let f = &again["failure"];
    assert_eq!((f["retry_count"].as_u64(), f["remaining"].as_u64()), (Some(0), Some(2)));
    assert_eq!(
        (f["errtype"].as_str(), f["message"].as_str()),
        (Some("RuntimeError"), Some("boom"))
    );
    assert_eq!(f["backtrace"], json!(["app.rb:1", "app.rb:2"]));
    assert!(f["failed_at"].is_string() && f["next_at"].is_string());

    // A FAIL of a jid nobody holds.
    assert_eq!(
        c.cmd(r#"FAIL {"jid":"jid-unknown","message":"x"}"#).await,
        Resp::Error("ERR Job not found jid-unknown".into())
    );
}

#[tokio::test]
async fn retry_zero_discards_and_retry_minus_one_dead_letters() {
    let (server, _dir, addr) = start(&[]);
    let qd = server.client().await;
    let mut c = Conn::hello(&addr).await;
    assert_eq!(c.cmd(&job("jid-zero-01", "z", json!({"retry": 0}))).await, ok());
    c.cmd("FETCH z").await.json();
    assert_eq!(c.cmd(r#"FAIL {"jid":"jid-zero-01","message":"no"}"#).await, ok());
    let (ready, delayed, active, dead, _) = counts(&qd, "z").await;
    assert_eq!((ready, delayed, active, dead), (0, 0, 0, 0), "discarded");

    assert_eq!(c.cmd(&job("jid-dead-01", "z", json!({"retry": -1}))).await, ok());
    c.cmd("FETCH z").await.json();
    assert_eq!(c.cmd(r#"FAIL {"jid":"jid-dead-01","message":"no"}"#).await, ok());
    assert_eq!(counts(&qd, "z").await.3, 1, "straight to the dead set");
    let info = c.cmd("INFO").await.json();
    assert_eq!(info["faktory"]["tasks"]["Dead"]["size"], 1);

    // And back out of it with MUTATE, by jid.
    let m = json!({"cmd":"requeue","target":"dead","filter":{"jids":["jid-dead-01"]}});
    assert_eq!(c.cmd(&format!("MUTATE {m}")).await, ok());
    assert_eq!(counts(&qd, "z").await.0, 1);
}

#[tokio::test]
async fn a_closed_socket_does_not_fail_the_jobs_it_fetched() {
    let (server, _dir, addr) = start(&[]);
    let qd = server.client().await;
    let mut a = Conn::hello(&addr).await;
    assert_eq!(a.cmd(&job("jid-pool-01", "p", json!({}))).await, ok());
    a.cmd("FETCH p").await.json();
    assert_eq!(a.cmd("END").await, Resp::Closed);
    drop(a);
    // The job is still held (qd's own protocol would have failed it at once)...
    let mut b = Conn::hello(&addr).await;
    assert_eq!(b.cmd("INFO").await.json()["faktory"]["tasks"]["Busy"]["size"], 1);
    assert_eq!(counts(&qd, "p").await.2, 1);
    // ...and another socket ACKs it, as pooled clients do.
    assert_eq!(b.cmd(r#"ACK {"jid":"jid-pool-01"}"#).await, ok());
    let stats = qd.stats().await.unwrap();
    let p = stats.iter().find(|q| q.queue == "p").unwrap();
    assert_eq!((p.completed_total, p.failed_total), (1, 0));
}

#[tokio::test]
async fn bad_input_gets_err_and_never_harms_the_server() {
    let (_server, _dir, addr) = start(&["--max-frame", "4096"]);
    let mut c = Conn::hello(&addr).await;
    assert_eq!(c.cmd("NOPE").await, Resp::Error("ERR unknown command NOPE".into()));
    assert!(matches!(c.cmd("PUSH {not json").await, Resp::Error(e) if e.contains("invalid JSON")));
    assert!(matches!(c.cmd("PUSH [1]").await, Resp::Error(_)));
    assert!(matches!(c.cmd("FETCH").await, Resp::Error(e) if e.contains("at least one queue")));
    assert!(matches!(c.cmd("FETCH bad/name").await, Resp::Error(_)));
    assert!(matches!(c.cmd(r#"MUTATE {"cmd":"x","target":"dead"}"#).await, Resp::Error(_)));
    let huge = json!({"jid":"jid-00000001","jobtype":"x","args":[],"retry":1e30}).to_string();
    assert!(matches!(c.cmd(&format!("PUSH {huge}")).await, Resp::Error(_)));
    assert!(c.cmd("INFO").await.json().is_object(), "the connection is still good");

    // A line longer than the cap: -ERR, then closed.
    let mut c = Conn::hello(&addr).await;
    c.send(&vec![b'x'; 10_000]).await;
    assert!(matches!(c.read().await, Resp::Error(e) if e.contains("line too long")));
    assert_eq!(c.read().await, Resp::Closed);
    // Bytes that are not text: -ERR, then closed.
    let mut c = Conn::hello(&addr).await;
    c.send(b"\xff\xfe\xfd\r\n").await;
    assert!(matches!(c.read().await, Resp::Error(_)));
    assert_eq!(c.read().await, Resp::Closed);
    // Garbage instead of HELLO.
    let (mut c, _) = Conn::open(&addr).await;
    assert!(matches!(c.cmd("GET / HTTP/1.1").await, Resp::Error(_)));

    let mut c = Conn::hello(&addr).await;
    assert_eq!(c.cmd(&job("jid-00000009", "still", json!({}))).await, ok(), "server lives");
}

#[tokio::test]
async fn beat_tells_a_worker_to_stop_when_signalled() {
    let (_server, _dir, addr) = start(&[]);
    let mut c = Conn::hello(&addr).await;
    assert_eq!(c.cmd(r#"BEAT {"wid":"w1"}"#).await, ok());
    let mut ops = Conn::hello(&addr).await;
    assert_eq!(ops.cmd(r#"QD-SIGNAL {"wid":"w1","state":"quiet"}"#).await, ok());
    assert_eq!(c.cmd(r#"BEAT {"wid":"w1"}"#).await.json(), json!({"state":"quiet"}));
    assert_eq!(ops.cmd(r#"QD-SIGNAL {"wid":"*","state":"terminate"}"#).await, ok());
    assert_eq!(c.cmd(r#"BEAT {"wid":"w1"}"#).await.json(), json!({"state":"terminate"}));
    assert!(matches!(
        ops.cmd(r#"QD-SIGNAL {"wid":"nobody","state":"quiet"}"#).await,
        Resp::Error(_)
    ));
}

#[tokio::test]
async fn queue_pause_resume_remove_and_flush() {
    let (server, _dir, addr) = start(&[]);
    let qd = server.client().await;
    let mut c = Conn::hello(&addr).await;
    for (i, q) in ["qa", "qa", "qb"].iter().enumerate() {
        assert_eq!(c.cmd(&job(&format!("jid-queue-{i}"), q, json!({}))).await, ok());
    }
    assert_eq!(c.cmd("QUEUE PAUSE qa").await, ok());
    assert_eq!(c.cmd("FETCH qa").await, Resp::Bulk(None), "paused");
    assert_eq!(c.cmd("QUEUE RESUME *").await, ok());
    c.cmd("FETCH qa").await.json();
    assert_eq!(c.cmd("QUEUE REMOVE qb").await, ok());
    let info = c.cmd("INFO").await.json();
    assert!(info["faktory"]["queues"].get("qb").is_none(), "{info}");
    assert_eq!(info["faktory"]["queues"]["qa"], 1);
    assert_eq!(c.cmd("FLUSH").await, ok());
    assert_eq!(counts(&qd, "qa").await.0, 0);
    assert_eq!(counts(&qd, "qa").await.2, 1, "a held job is left to its worker");
}

/// Issue 11: MUTATE `kill` moves waiting (here: retrying) jobs to the dead set (qd's `Kill`,
/// which `Client::kill` sends too), and the killed jobs can be requeued from there.
#[tokio::test]
async fn mutate_kill_moves_waiting_jobs_to_the_dead_set() {
    let (server, _dir, addr) = start(&[]);
    let qd = server.client().await;
    let mut c = Conn::hello(&addr).await;
    for (jid, kind) in [("jid-kill-1", "doomed"), ("jid-kill-2", "spared")] {
        let push = job(jid, "kq", json!({})).replace("\"mail\"", &format!("\"{kind}\""));
        assert_eq!(c.cmd(&push).await, ok());
        assert_eq!(c.cmd("FETCH kq").await.json()["jid"], jid);
        let fail = json!({"jid": jid, "errtype": "E", "message": "m"});
        assert_eq!(c.cmd(&format!("FAIL {fail}")).await, ok(), "now in the retries set");
    }
    let kill = json!({"cmd":"kill","target":"retries","filter":{"jobtype":"doomed"}});
    assert_eq!(c.cmd(&format!("MUTATE {kill}")).await, ok());
    let info = c.cmd("INFO").await.json();
    assert_eq!(info["faktory"]["tasks"]["Dead"]["size"], 1, "{info}");
    assert_eq!(info["faktory"]["tasks"]["Retries"]["size"], 1, "{info}");
    let dead = qd.jobs("kq", JobState::Dead, None, 10).await.unwrap().jobs;
    assert_eq!(dead[0].name, "doomed");
    assert_eq!(dead[0].last_error.as_deref(), Some("killed by an operator"));
    // Killing the dead again changes nothing; an unknown operation says what is served.
    let again = json!({"cmd":"kill","target":"dead"});
    assert_eq!(c.cmd(&format!("MUTATE {again}")).await, ok());
    let bad = json!({"cmd":"explode","target":"dead"});
    assert!(matches!(c.cmd(&format!("MUTATE {bad}")).await, Resp::Error(e) if e.contains("kill")));
    let requeue = json!({"cmd":"requeue","target":"dead"});
    assert_eq!(c.cmd(&format!("MUTATE {requeue}")).await, ok());
    assert_eq!(c.cmd("FETCH kq").await.json()["jobtype"], "doomed");

    // The native client's `kill` is the same operation.
    let spared = qd.jobs("kq", JobState::Delayed, None, 10).await.unwrap().jobs[0].id;
    assert_eq!(qd.kill(&[spared, 999_999]).await.unwrap(), 1);
    assert_eq!(counts(&qd, "kq").await.3, 1);
}

/// Issue 11: QUEUE LATENCY (Faktory 1.9.2) answers each named queue's oldest ready age in
/// seconds: 0 for a queue with nothing ready, growing while a job waits.
#[tokio::test]
async fn queue_latency_is_the_oldest_ready_age_in_seconds() {
    let (_server, _dir, addr) = start(&[]);
    let mut c = Conn::hello(&addr).await;
    assert_eq!(c.cmd(&job("jid-latency-1", "lq", json!({}))).await, ok());
    let started = Instant::now();
    loop {
        let got = c.cmd("QUEUE LATENCY lq empty").await.json();
        assert_eq!(got["empty"], 0.0, "{got}");
        let age = got["lq"].as_f64().expect("seconds as a number");
        if age > 0.0 {
            assert!(age < 60.0, "{got}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the age never grew: {got}");
    }
    c.cmd("FETCH lq").await.json();
    assert_eq!(c.cmd("QUEUE LATENCY lq").await.json(), json!({"lq": 0.0}));
    assert!(matches!(c.cmd("QUEUE LATENCY *").await, Resp::Error(e) if e.contains("wildcard")));
}

/// Issue 11: --faktory-idle-timeout closes a Faktory connection that sends nothing; a
/// FETCH that waits longer than the timeout is a command, not idleness.
#[tokio::test]
async fn an_idle_connection_is_closed() {
    let (_server, _dir, addr) = start(&["--faktory-idle-timeout", "1s"]);
    let mut c = Conn::hello(&addr).await;
    assert_eq!(c.cmd("FETCH nothing-here").await, Resp::Bulk(None), "a 2 s FETCH is answered");
    let started = Instant::now();
    assert_eq!(c.read().await, Resp::Closed);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Issue 11: with `--tls-cert`/`--tls-key`, the Faktory port speaks TLS like the native
/// one (clients use `tcp+tls://`), and a plain-text client gets nowhere.
#[tokio::test]
async fn tls_on_the_faktory_port() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls_args =
        ["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()];
    let (_server, _data, addr) = start(&tls_args);
    let (conn, hi) = Conn::open_tls(&addr, &cert).await;
    assert_eq!(hi["v"], 2);
    let mut c = Conn::say_hello(conn).await;
    assert_eq!(c.cmd(&job("jid-tls-1", "tq", json!({}))).await, ok());
    assert_eq!(c.cmd("FETCH tq").await.json()["jid"], "jid-tls-1");

    // A plain-text client gets at most a TLS alert record (type 0x15), then the end.
    let mut plain = TcpStream::connect(&addr).await.unwrap();
    plain.write_all(b"HELLO {}\r\n").await.unwrap();
    let mut got = Vec::new();
    let read = plain.read_to_end(&mut got);
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("closed").ok();
    assert!(got.is_empty() || got[0] == 0x15, "no greeting in plain text: {got:02x?}");
}

/// kill -9 on the Faktory port: a PUSH that was answered `+OK` survives; an ACKed job
/// never runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_acknowledged_pushes_and_acks() {
    let (server, _dir, addr) = start(&[]);
    let mut c = Conn::hello(&addr).await;
    for i in 0..20 {
        assert_eq!(c.cmd(&job(&format!("jid-crash-{i:02}"), "k", json!({}))).await, ok());
    }
    for _ in 0..5 {
        let j = c.cmd("FETCH k").await.json();
        let ack = json!({"jid": j["jid"]});
        assert_eq!(c.cmd(&format!("ACK {ack}")).await, ok());
    }
    let server = server.kill9_and_restart().await;
    let addr = faktory_addr(&server);
    let mut c = Conn::hello(&addr).await;
    let mut seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    while let Resp::Bulk(Some(body)) = c.cmd("FETCH k").await {
        let j: Value = serde_json::from_str(&body).unwrap();
        let jid = j["jid"].as_str().unwrap().to_owned();
        assert!(jid.as_str() >= "jid-crash-05", "{jid} was acked before the kill");
        assert!(seen.insert(jid.clone()), "{jid} twice");
        assert_eq!(c.cmd(&format!("ACK {}", json!({"jid": jid}))).await, ok());
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    assert_eq!(seen.len(), 15, "every pushed, unacked job survived");
    let qd = server.client().await;
    wait_for_count(&qd, "k", 0, 0).await;
}

/// The real Rust client from crates.io: a producer, and a worker that runs one job and
/// fails another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faktory_crate_pushes_and_works_jobs() {
    use faktory::{Client, Job, Worker};

    let (server, _dir, addr) = start(&["--secret", "crate-pw"]);
    let url = format!("tcp://:crate-pw@{addr}");
    let mut producer = Client::connect_to(&url).await.expect("connect the faktory client");
    producer.enqueue(Job::new("ok", vec!["a"]).on_queue("crate")).await.unwrap();
    let mut failing = Job::new("boom", vec![1]).on_queue("crate");
    failing.retry = Some(1);
    producer.enqueue(failing).await.unwrap();

    let mut worker = Worker::builder::<std::io::Error>()
        .register_fn("ok", |job| async move {
            assert_eq!(job.args(), &[json!("a")]);
            Ok(())
        })
        .register_fn("boom", |_job| async move { Err(std::io::Error::other("it broke")) })
        .connect_to(&url)
        .await
        .expect("connect the faktory worker");
    assert!(worker.run_one(0, &["crate"]).await.unwrap());
    assert!(worker.run_one(0, &["crate"]).await.unwrap());

    let qd = qd_client::Client::builder(server.addr.clone()).secret("crate-pw").admin().connect();
    let qd = qd.await.expect("connect to qd with the secret");
    let (ready, delayed, active, dead, completed) = counts(&qd, "crate").await;
    assert_eq!((ready, delayed, active, dead, completed), (0, 1, 0, 0, 1));
    let page = qd.jobs("crate", JobState::Delayed, None, 10).await.unwrap();
    let detail = qd.job(page.jobs[0].id).await.unwrap();
    assert!(detail.errors[0].message.contains("it broke"), "{:?}", detail.errors);
    let info = producer.current_info().await.expect("INFO as the crate reads it");
    assert_eq!(info.server.version.major, 1);
    assert!(info.data.total_processed >= 1, "{:?}", info.data.total_processed);
}
