//! Fake qd servers: [`Scripted`] hands a test the raw frames of each connection; [`FakeQueue`]
//! answers requests from an in-memory list of jobs and records what the client did.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use qd_protocol::codec::{Incoming, ServerCodec};
use qd_protocol::message::{NackOutcome, Welcome};
use qd_protocol::{
    ClientFrame, ErrorCode, LeasedJob, Request, Response, RetryHint, ServerFrame, WireError,
    DEFAULT_MAX_FRAME,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

pub type Wire = Framed<TcpStream, ServerCodec>;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Waits for `cond`, polling, failing the test with `what` after 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn welcome(max_in_flight: u32) -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        protocol: qd_protocol::PROTOCOL_VERSION,
        server: "fake".into(),
        max_frame: DEFAULT_MAX_FRAME as u32,
        max_in_flight,
    })
}

pub async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// Accepts one connection and reads its `Hello`, without answering.
pub async fn accept(listener: &TcpListener) -> Wire {
    let (stream, _) = listener.accept().await.unwrap();
    let mut wire = Framed::new(stream, ServerCodec::new(DEFAULT_MAX_FRAME));
    match wire.next().await {
        Some(Ok(Incoming::Frame(ClientFrame::Hello(_)))) => wire,
        other => panic!("expected Hello, got {other:?}"),
    }
}

/// Accepts one connection and welcomes it.
pub async fn accept_welcome(listener: &TcpListener, max_in_flight: u32) -> Wire {
    let mut wire = accept(listener).await;
    wire.send(&welcome(max_in_flight)).await.unwrap();
    wire
}

/// The next request on a connection; panics on anything else (or after 10 s).
pub async fn next_request(wire: &mut Wire) -> (u64, Request) {
    let frame = tokio::time::timeout(Duration::from_secs(10), wire.next())
        .await
        .expect("no request within 10 s");
    match frame {
        Some(Ok(Incoming::Frame(ClientFrame::Request { id, body }))) => (id, body),
        other => panic!("expected a request, got {other:?}"),
    }
}

pub async fn answer(wire: &mut Wire, id: u64, result: Result<Response, WireError>) {
    wire.send(&ServerFrame::Response { id, result }).await.unwrap();
}

pub fn leased(id: u64, lease_ms: u64) -> LeasedJob {
    LeasedJob {
        id,
        queue: "jobs".into(),
        name: format!("job-{id}"),
        payload: bytes::Bytes::from(format!("payload-{id}")),
        attempt: 1,
        max_attempts: 3,
        token: id * 100,
        lease_deadline_ms: now_ms() + lease_ms,
        created_at_ms: now_ms(),
    }
}

/// What the client did to a [`FakeQueue`].
#[derive(Debug, Default)]
pub struct Record {
    pub ready: VecDeque<LeasedJob>,
    pub acked: Vec<u64>,
    pub ack_requests: usize,
    pub nacked: Vec<(u64, String, RetryHint)>,
    pub touched: Vec<u64>,
    /// Tokens whose lease is gone: acking them fails with LeaseLost.
    pub lost: HashSet<u64>,
    /// Close the connection instead of answering the next reserve.
    pub drop_on_reserve: bool,
}

/// An in-memory queue server: hands out its jobs to reserves, records acks, nacks, touches.
#[derive(Debug, Clone)]
pub struct FakeQueue {
    pub addr: String,
    pub record: Arc<Mutex<Record>>,
    pub connections: Arc<AtomicUsize>,
}

impl FakeQueue {
    pub async fn start(jobs: Vec<LeasedJob>) -> FakeQueue {
        let (listener, addr) = listen().await;
        let record = Arc::new(Mutex::new(Record { ready: jobs.into(), ..Default::default() }));
        let connections = Arc::new(AtomicUsize::new(0));
        let fake = FakeQueue { addr, record, connections };
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let wire = accept_welcome(&listener, 1000).await;
                server.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(server.clone().serve(wire));
            }
        });
        fake
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        f(&mut self.record.lock().unwrap())
    }

    /// Answers each request in a task of its own, so that a waiting reserve does not hold
    /// up the acks behind it (as the real server does).
    async fn serve(self, mut wire: Wire) {
        let (tx, mut rx) = mpsc::unbounded_channel::<ServerFrame>();
        loop {
            tokio::select! {
                frame = wire.next() => {
                    let Some(Ok(Incoming::Frame(ClientFrame::Request { id, body }))) = frame else { return };
                    if matches!(body, Request::Reserve { .. })
                        && self.with(|r| std::mem::take(&mut r.drop_on_reserve))
                    {
                        return;
                    }
                    let (tx, me) = (tx.clone(), self.clone());
                    tokio::spawn(async move {
                        let result = me.answer(body).await;
                        let _ = tx.send(ServerFrame::Response { id, result });
                    });
                }
                Some(frame) = rx.recv() => {
                    if wire.send(&frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn answer(&self, body: Request) -> Result<Response, WireError> {
        match body {
            Request::Reserve { max, timeout_ms, .. } => {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
                loop {
                    let jobs: Vec<LeasedJob> = self.with(|r| {
                        let n = (max as usize).min(r.ready.len());
                        r.ready.drain(..n).collect()
                    });
                    if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
                        return Ok(Response::Reserved { jobs });
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Request::Ack { leases } => self.with(|r| {
                r.ack_requests += 1;
                let mut failed = Vec::new();
                for l in leases {
                    if r.lost.contains(&l.token) {
                        failed.push((l.id, WireError::new(ErrorCode::LeaseLost, "lease expired")));
                    } else {
                        r.acked.push(l.id);
                    }
                }
                Ok(Response::Acked { failed })
            }),
            Request::Nack { lease, error, retry } => self.with(|r| {
                r.nacked.push((lease.id, error, retry));
                let outcome = match retry {
                    RetryHint::Never => NackOutcome::Dead,
                    _ => NackOutcome::Retrying { run_at_ms: now_ms() + 1000 },
                };
                Ok(Response::Nacked { outcome })
            }),
            Request::Touch { lease, lease_ms } => self.with(|r| {
                r.touched.push(lease.id);
                let lease_deadline_ms = now_ms() + lease_ms.unwrap_or(600);
                Ok(Response::Touched { lease_deadline_ms })
            }),
            Request::Stats => Ok(Response::Stats { queues: vec![] }),
            Request::Add { jobs, .. } => {
                Ok(Response::Added { ids: (1..=jobs.len() as u64).collect() })
            }
        }
    }
}
