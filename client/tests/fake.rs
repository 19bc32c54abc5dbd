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
    auth, ClientFrame, Cursor, ErrorCode, JobDetail, JobOptions, JobState, JobSummary, LeasedJob,
    QueueInfo, QueueStats, Request, Response, RetryHint, Role, ServerFrame, WireError,
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
    welcome_as(max_in_flight, Role::Admin)
}

pub fn welcome_as(max_in_flight: u32, role: Role) -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        protocol: qd_protocol::PROTOCOL_VERSION,
        server: "fake".into(),
        max_frame: DEFAULT_MAX_FRAME as u32,
        max_in_flight,
        role,
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

/// After the `Hello`: challenges the client, checks its proof as the real server does
/// (`secret` grants Worker, `admin_secret` Admin), and welcomes it with the role proved or
/// says Goodbye with `AuthFailed`. Returns the role granted, or `None` when refused.
pub async fn challenge<S>(
    wire: &mut Framed<S, ServerCodec>,
    secret: &[u8],
    admin_secret: &[u8],
) -> Option<Role>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let nonce: [u8; 32] = std::array::from_fn(|i| (now_ms() as u8).wrapping_add(i as u8));
    wire.send(&ServerFrame::Challenge { nonce }).await.unwrap();
    let Some(Ok(Incoming::Frame(ClientFrame::Auth { role, proof }))) = wire.next().await else {
        panic!("expected Auth after the Challenge");
    };
    let key = match role {
        Role::Worker => secret,
        Role::Admin => admin_secret,
    };
    if auth::verify(key, &nonce, role, &proof) {
        wire.send(&welcome_as(1000, role)).await.unwrap();
        Some(role)
    } else {
        let refusal = WireError::new(ErrorCode::AuthFailed, "wrong secret");
        wire.send(&ServerFrame::Goodbye(refusal)).await.unwrap();
        None
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
    let payload = bytes::Bytes::from(format!("payload-{id}"));
    let mut job =
        LeasedJob::new(id, "jobs", format!("job-{id}"), payload, id * 100, now_ms() + lease_ms);
    job.created_at_ms = now_ms();
    job
}

/// What the client did to a [`FakeQueue`].
#[derive(Debug, Default)]
pub struct Record {
    pub ready: VecDeque<LeasedJob>,
    pub acked: Vec<u64>,
    pub ack_requests: usize,
    pub nacked: Vec<(u64, String, RetryHint)>,
    pub touched: Vec<u64>,
    /// Snoozes received: (job id, delay ms).
    pub snoozed: Vec<(u64, u64)>,
    /// Progress reports received: (job id, progress).
    pub progress: Vec<(u64, bytes::Bytes)>,
    /// Jobs whose touch answers LeaseLost.
    pub touch_lost: HashSet<u64>,
    /// Jobs whose touches are never answered.
    pub touch_unanswered: HashSet<u64>,
    /// Tokens whose lease is gone: acking them fails with LeaseLost.
    pub lost: HashSet<u64>,
    /// Close the connection instead of answering the next reserve.
    pub drop_on_reserve: bool,
    /// Pings received.
    pub pings: usize,
    /// Hold every ack's answer until cleared (a server whose commits lag).
    pub hold_acks: bool,
    /// Ack requests answered so far.
    pub acks_answered: usize,
    /// Each job handed out by a reserve, with `acks_answered` at that moment.
    pub handed_out: Vec<(u64, usize)>,
    /// Admin requests received, in order.
    pub admin: Vec<Request>,
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

    /// A touch's answer: LeaseLost for the jobs in `touch_lost`, else a new deadline.
    fn touch(&self, id: u64, lease_ms: Option<u64>) -> Result<Response, WireError> {
        if self.with(|r| r.touch_lost.contains(&id)) {
            return Err(WireError::new(ErrorCode::LeaseLost, "lease expired"));
        }
        let lease_deadline_ms = now_ms() + lease_ms.unwrap_or(600);
        Ok(Response::Touched { lease_deadline_ms })
    }

    async fn answer(&self, body: Request) -> Result<Response, WireError> {
        match body {
            Request::Reserve { max, timeout_ms, .. } => {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
                loop {
                    let jobs: Vec<LeasedJob> = self.with(|r| {
                        let n = (max as usize).min(r.ready.len());
                        let jobs: Vec<LeasedJob> = r.ready.drain(..n).collect();
                        let answered = r.acks_answered;
                        r.handed_out.extend(jobs.iter().map(|j| (j.id, answered)));
                        jobs
                    });
                    if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
                        return Ok(Response::Reserved { jobs });
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Request::Ack { leases } => {
                self.with(|r| r.ack_requests += 1);
                while self.with(|r| r.hold_acks) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                self.with(|r| {
                    r.acks_answered += 1;
                    let mut failed = Vec::new();
                    for l in leases {
                        if r.lost.contains(&l.token) {
                            failed.push((
                                l.id,
                                WireError::new(ErrorCode::LeaseLost, "lease expired"),
                            ));
                        } else {
                            r.acked.push(l.id);
                        }
                    }
                    Ok(Response::Acked { failed })
                })
            }
            Request::Nack { lease, error, retry } => self.with(|r| {
                r.nacked.push((lease.id, error, retry));
                let outcome = match retry {
                    RetryHint::Never => NackOutcome::Dead,
                    _ => NackOutcome::Retrying { run_at_ms: now_ms() + 1000 },
                };
                Ok(Response::Nacked { outcome })
            }),
            Request::Touch { lease, lease_ms } => {
                let hang = self.with(|r| {
                    r.touched.push(lease.id);
                    r.touch_unanswered.contains(&lease.id)
                });
                if hang {
                    std::future::pending::<()>().await;
                }
                self.touch(lease.id, lease_ms)
            }
            Request::Snooze { lease, delay_ms } => self.with(|r| {
                r.snoozed.push((lease.id, delay_ms));
                Ok(Response::Nacked {
                    outcome: NackOutcome::Retrying { run_at_ms: now_ms() + delay_ms },
                })
            }),
            Request::Progress { lease, progress } => self.with(|r| {
                r.progress.push((lease.id, progress));
                Ok(Response::Done)
            }),
            Request::Stats { after, .. } => Ok(stats_page(after)),
            Request::Ping => self.with(|r| {
                r.pings += 1;
                Ok(Response::Pong)
            }),
            Request::Add { jobs, .. } => {
                Ok(Response::Added { ids: (1..=jobs.len() as u64).collect() })
            }
            admin => self.with(|r| {
                r.admin.push(admin.clone());
                admin_answer(admin)
            }),
        }
    }
}

/// Two pages of stats, one queue each: `a` then `b`.
fn stats_page(after: Option<String>) -> Response {
    let row = |q: &str| {
        let mut s = QueueStats::new(q);
        s.ready = 1;
        s
    };
    match after.as_deref() {
        None => Response::Stats { queues: vec![row("a")], next: Some("a".into()) },
        _ => Response::Stats { queues: vec![row("b")], next: None },
    }
}

/// Canned answers to admin requests: queues come in two pages (`a`, `b`), job lists hold
/// one job with a next cursor, job 404 does not exist, counts are the number of ids (or 7).
fn admin_answer(request: Request) -> Result<Response, WireError> {
    Ok(match request {
        Request::Queues { after: None, .. } => {
            Response::Queues { queues: vec![QueueInfo::new("a")], next: Some("a".into()) }
        }
        Request::Queues { .. } => {
            Response::Queues { queues: vec![QueueInfo::new("b")], next: None }
        }
        Request::Jobs { queue, state, .. } => Response::Jobs {
            jobs: vec![JobSummary::new(1, queue, "n", state)],
            next: Some(Cursor(vec![1])),
        },
        Request::Search { queue, .. } => Response::Jobs {
            jobs: vec![JobSummary::new(2, queue, "n", JobState::Dead)],
            next: None,
        },
        Request::Job { id: 404 } => {
            return Err(WireError::new(ErrorCode::NotFound, "no job 404"));
        }
        Request::Job { id } => {
            let summary = JobSummary::new(id, "q", "n", JobState::Ready);
            let detail = JobDetail::new(summary, "p".into(), JobOptions::default());
            Response::Job { job: Box::new(detail) }
        }
        Request::RetryDead { ids, .. } | Request::Remove { ids } | Request::Promote { ids } => {
            Response::Count { n: ids.len() as u64 }
        }
        Request::RetryAllDead { .. } | Request::PurgeDead { .. } => Response::Count { n: 7 },
        Request::Pause { .. } | Request::Resume { .. } => Response::Done,
        other => panic!("the fake does not answer {other:?}"),
    })
}
