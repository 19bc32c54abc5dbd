//! The PostgreSQL backend (issue 12): a broker that keeps no job state of its own, so any
//! number of `qd serve --store postgres://...` processes can share one database.
//!
//! [`PgEngine`] consumes the same [`Command`] channel as the embedded [`crate::engine`], so
//! every front end (the qd protocol, the Faktory port, the dashboard) works unchanged. What
//! it keeps in memory is only what belongs to this process: its connections, the leases
//! they hold (to release them at once when a connection closes), their parked reserves,
//! and counters since start. Everything else is a row of `qd_jobs` (see `sql.rs` and
//! docs/BACKENDS.md).
//!
//! Batching, because one job per statement was measured ten times slower:
//! - adds go to [`ADD_WORKERS`] tasks that each take every add waiting when they are free
//!   and insert them in one statement (group commit, in effect); an add is answered after
//!   its statement commits ("persist, then reply");
//! - acks go the same way to [`ACK_WORKERS`] tasks, one `DELETE ... USING unnest` each;
//! - reserves park here, grouped by the queue list they name; one statement per list
//!   leases rows for all its parked reserves at once (sized to their free slots, plus some
//!   ahead for the next reserves while the queue is busy), and the rows are shared out in
//!   arrival order (`lists.rs`).
//!
//! Wake-ups: no NOTIFY in the insert transaction (it serialises commits: adds fell from
//! 25,000/s to 4,400/s). A list with parked reserves is polled every [`POLL_MIN_MS`] while
//! it finds jobs, backing off to [`POLL_MAX_MS`] while it finds none; an add committed by
//! this broker wakes the lists naming its queue at once.
//!
//! Leases live in the table (token and deadline), so a broker that dies leaves them behind;
//! every broker runs the expiry sweep (`FOR UPDATE SKIP LOCKED`, no broker is special). A
//! connection that closes on a live broker fails its jobs at once, as on the embedded store.
//! A broker shutting down keeps its connections' leases: a worker that reconnects to
//! another broker can still ack with the same token.

mod admin;
mod listing;
mod lists;
mod sql;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use qd_protocol::message::{LeaseRef, NackOutcome, ServerFrame};
use qd_protocol::{
    validate_lease, validate_queue_name, ErrorCode, JobId, LeasedJob, Request, Response, RetryHint,
    Unique, WireError, MAX_RESULT,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{truncate_error, LEASE_EXPIRED, WORKER_DISCONNECTED};
use crate::config::ServerConfig;
use crate::engine::Command;
use crate::model::{ConnId, Millis};

use lists::{Lists, Waiter};
use sql::{LeasedRow, NewRow, Victims};

/// Tasks that insert batches of adds, each one statement at a time.
pub const ADD_WORKERS: usize = 4;
/// Tasks that delete batches of acks.
pub const ACK_WORKERS: usize = 2;
/// Most adds (jobs) or acks one statement carries.
const BATCH_MAX: usize = 4096;
/// Poll interval of a queue list whose last fetch found jobs, and the start of the backoff.
pub const POLL_MIN_MS: u64 = 10;
/// Longest poll interval of an idle queue list.
pub const POLL_MAX_MS: u64 = 100;
/// How often each broker sweeps expired leases.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How often each broker drops dead jobs past `dead_max_age`.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Connections in the pool for durable writes and admin reads.
const POOL_SIZE: usize = 16;
/// Connections in the pool for leasing.
const LEASE_POOL_SIZE: usize = 8;
/// How long a lease must have lasted before its worker's name is written to its row (most
/// jobs are acked before: naming them would cost a write each for nothing).
const NAME_AFTER_MS: u64 = 100;
/// How often each broker adds its counts to the shared counters (`qd_counters`).
const COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// Key of the advisory lock held while migrating ("qd" in ASCII, then 12).
const MIGRATION_LOCK: i64 = 0x7164_0000_000c;

refinery::embed_migrations!("src/pg/migrations");

/// Why the PostgreSQL backend could not start, or a statement failed. Each message says
/// what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The URL does not parse.
    #[error("the --store URL is not a valid PostgreSQL URL: {0}; use postgres://user:password@host:port/database")]
    Url(#[source] tokio_postgres::Error),
    /// The pool could not be built.
    #[error("cannot set up the PostgreSQL connection pool: {0}")]
    Pool(String),
    /// A database call failed.
    #[error("the database failed: {}; qd reconnects on its own, retry shortly", db_detail(.0))]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("cannot reach the database: {0}; is PostgreSQL up, and does the URL name the right host, user and database?")]
    Connect(#[from] deadpool_postgres::PoolError),
    /// Applying the schema migrations failed.
    #[error("cannot apply qd's schema migrations: {0}; check that the user may create tables in this database")]
    Migrate(#[source] refinery::Error),
    /// An idempotency key's holder kept changing under an add (it should settle at once).
    #[error("an idempotency key kept changing hands during this add; retry it")]
    Conflict,
    /// The OS gave no randomness for the lease-token seed.
    #[error("cannot draw a random seed for lease tokens: {0}; allow the getrandom system call")]
    Seed(getrandom::Error),
}

/// A database error with the server's own message ("db error" alone says nothing).
fn db_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl PgError {
    fn wire(&self) -> WireError {
        WireError::new(ErrorCode::Storage, self.to_string())
    }
}

/// The answer to requests this backend does not serve yet.
fn unsupported(what: &str) -> WireError {
    WireError::new(
        ErrorCode::InvalidArgument,
        format!(
            "{what} is not supported on the postgres backend yet; use the embedded store \
             (docs/BACKENDS.md lists what each backend serves)"
        ),
    )
}

/// Wall-clock unix ms. Several brokers compare each other's times through the table, so
/// their clocks must agree (NTP); docs/BACKENDS.md says so.
fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Counters of one queue: this broker's counts not yet added to the shared ones
/// (`qd_counters`), or the shared ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub added: u64,
    pub completed: u64,
    pub failed: u64,
    pub dead: u64,
}

/// What the broker's tasks share.
#[derive(Debug)]
struct Shared {
    /// Connections for what must be durable before it is answered (adds, acks, failures,
    /// admin changes): `synchronous_commit` as the database has it.
    pool: Pool,
    /// Connections for leasing (reserve, touch, put-back): `synchronous_commit=off`.
    lease_pool: Pool,
    /// Counts not yet added to `qd_counters` (see [`flush_counters`]).
    counters: Mutex<HashMap<String, Counters>>,
    /// Held while counts move from `counters` to the table, and while a reader adds the
    /// two: no count is seen twice or missed.
    counters_flush: tokio::sync::Mutex<()>,
    /// Queues whose dead set may have grown past `dead_max_jobs` (see [`trim_dead`]).
    trim: DeadTrims,
    dead_max_jobs: usize,
    /// The last page of queue counts (`admin::page`).
    counts_cache: tokio::sync::Mutex<admin::CountsCache>,
    max_frame: usize,
    max_reserve: u32,
    dead_max_age_ms: u64,
}

impl Shared {
    fn count(&self, queue: &str, f: impl FnOnce(&mut Counters)) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        match counters.get_mut(queue) {
            Some(c) => f(c),
            None => f(counters.entry(queue.to_owned()).or_default()),
        }
    }

    fn count_failures(&self, failed: &[sql::Failed]) {
        for f in failed {
            self.count(&f.queue, |c| {
                c.failed += 1;
                c.dead += u64::from(f.outcome.dead);
            });
            if f.outcome.dead {
                self.trim.mark(&f.queue);
            }
        }
    }
}

/// A connected client, as this broker knows it.
#[derive(Debug)]
struct Conn {
    replies: mpsc::UnboundedSender<ServerFrame>,
    /// The client's name (its hello), shown as the worker of the jobs it holds.
    name: String,
    /// Leases delivered to this connection and not yet acked, nacked or released:
    /// `id -> token`. Failed at once when the connection closes.
    leases: HashMap<JobId, u64>,
}

/// One add request waiting for an insert worker.
#[derive(Debug)]
struct AddItem {
    replies: mpsc::UnboundedSender<ServerFrame>,
    id: u64,
    rows: Vec<NewRow>,
}

/// One ack request waiting for an ack worker.
#[derive(Debug)]
struct AckItem {
    replies: mpsc::UnboundedSender<ServerFrame>,
    id: u64,
    leases: Vec<(JobId, u64)>,
}

/// What the broker's tasks tell its main loop.
#[derive(Debug)]
enum Internal {
    /// A fetch for the list naming `queues` finished.
    Fetched { queues: Vec<String>, result: Result<Vec<LeasedRow>, String> },
    /// Adds to these queues committed: wake their lists.
    Added { queues: Vec<String> },
}

/// The PostgreSQL engine. Built by [`PgEngine::connect`], consumed by [`PgEngine::run`].
#[derive(Debug)]
pub struct PgEngine {
    shared: Arc<Shared>,
    conns: HashMap<ConnId, Conn>,
    lists: Lists<LeasedRow>,
    /// Lease tokens: ChaCha20 keyed from the OS at start, like the embedded core's, so a
    /// token seen reveals no other.
    tokens: ChaCha20Rng,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    tasks: TaskTracker,
    /// Leases delivered and not yet named in their rows: `(conn, id, token, delivered at)`,
    /// oldest first. Named after [`NAME_AFTER_MS`] if still held.
    unnamed: std::collections::VecDeque<(ConnId, JobId, u64, Millis)>,
}

impl PgEngine {
    /// Connects to `url`, applies the schema migrations (under an advisory lock, so brokers
    /// starting together take turns), and draws the lease-token key.
    pub async fn connect(url: &str, config: &ServerConfig) -> Result<PgEngine, PgError> {
        let pg_config = tokio_postgres::Config::from_str(url).map_err(PgError::Url)?;
        let pool = new_pool(pg_config.clone(), POOL_SIZE)?;
        // Leasing is not a promise to anyone: like the embedded store, which never writes on
        // reserve, a lease lost in a database crash just leaves its job waiting again (the
        // worker's ack then finds the lease gone, and the job runs once more). So reserves,
        // touches and put-backs commit without waiting for the WAL flush; the next
        // synchronous commit (an add, an ack) flushes them anyway. This took a drain from
        // about 4,400 jobs/s to the figures in docs/PERFORMANCE.md.
        let mut lease_config = pg_config;
        lease_config.options("-c synchronous_commit=off");
        let lease_pool = new_pool(lease_config, LEASE_POOL_SIZE)?;
        {
            let mut client = pool.get().await?;
            client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
            let pg: &mut tokio_postgres::Client = &mut client;
            let migrated = migrations::runner()
                .set_migration_table_name("qd_schema_history")
                .run_async(pg)
                .await;
            client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
            let report = migrated.map_err(PgError::Migrate)?;
            for m in report.applied_migrations() {
                tracing::info!(migration = %m, "schema migration applied");
            }
        }
        check_autovacuum(&pool).await;
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(PgError::Seed)?;
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        Ok(PgEngine {
            shared: Arc::new(Shared {
                pool,
                lease_pool,
                counters: Mutex::new(HashMap::new()),
                counters_flush: tokio::sync::Mutex::new(()),
                trim: DeadTrims::default(),
                dead_max_jobs: config.dead_max_jobs,
                counts_cache: tokio::sync::Mutex::new(None),
                max_frame: config.max_frame,
                max_reserve: config.max_reserve.max(1),
                dead_max_age_ms: config.dead_max_age.as_millis().min(u64::MAX as u128) as u64,
            }),
            conns: HashMap::new(),
            lists: Lists::default(),
            tokens: ChaCha20Rng::from_seed(key),
            internal_tx,
            internal_rx,
            tasks: TaskTracker::new(),
            unnamed: std::collections::VecDeque::new(),
        })
    }

    /// Runs until `shutdown` is cancelled, then answers the commands already queued and
    /// waits for every statement in flight (their replies go out first).
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> Result<(), PgError> {
        let (add_tx, add_rx) = mpsc::unbounded_channel::<AddItem>();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<AckItem>();
        let add_rx = Arc::new(tokio::sync::Mutex::new(add_rx));
        let ack_rx = Arc::new(tokio::sync::Mutex::new(ack_rx));
        let workers = TaskTracker::new();
        for _ in 0..ADD_WORKERS {
            workers.spawn(add_worker(
                self.shared.clone(),
                add_rx.clone(),
                self.internal_tx.clone(),
            ));
        }
        for _ in 0..ACK_WORKERS {
            workers.spawn(ack_worker(self.shared.clone(), ack_rx.clone()));
        }
        let sweeper = shutdown.child_token();
        workers.spawn(sweep(self.shared.clone(), sweeper.clone()));
        workers.spawn(count_and_trim(self.shared.clone(), sweeper.clone()));
        let mut batch = Vec::with_capacity(1024);
        loop {
            let now = now_ms();
            let wake = self.lists.next_wake(now).unwrap_or(now + 3_600_000);
            let wake = match self.unnamed.front() {
                Some(&(.., at)) => wake.min(at + NAME_AFTER_MS),
                None => wake,
            };
            let sleep = Duration::from_millis(wake.saturating_sub(now));
            tokio::select! {
                biased;
                Some(event) = self.internal_rx.recv() => self.on_internal(event),
                n = commands.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        break;
                    }
                    for cmd in batch.drain(..) {
                        self.on_command(cmd, &add_tx, &ack_tx);
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => break,
            }
            self.tick();
        }
        // Shutdown: answer what already arrived; a disconnect now is the server leaving, not
        // the worker failing, so leases stay (another broker may take the worker's acks).
        while let Ok(cmd) = commands.try_recv() {
            if !matches!(cmd, Command::Disconnect { .. }) {
                self.on_command(cmd, &add_tx, &ack_tx);
            }
        }
        let (waiters, ahead) = self.lists.drain();
        for waiter in waiters {
            self.send(
                waiter.key.conn,
                waiter.key.request,
                Ok(Response::Reserved { jobs: Vec::new() }),
            );
        }
        // Rows fetched ahead were handed to no worker: back to waiting, no attempt used.
        let ahead: Vec<(JobId, u64)> = ahead.iter().map(|r| (r.id, r.token)).collect();
        if !ahead.is_empty() {
            release(&self.shared, &ahead).await;
        }
        drop((add_tx, ack_tx));
        sweeper.cancel();
        workers.close();
        self.tasks.close();
        workers.wait().await;
        self.tasks.wait().await;
        // The last counts of this broker (the ack workers and tasks have finished).
        flush_counters(&self.shared).await;
        // Rows leased by fetches that finished after their waiters were answered go back.
        self.internal_rx.close();
        while let Some(event) = self.internal_rx.recv().await {
            if let Internal::Fetched { result: Ok(rows), .. } = event {
                let leftover: Vec<_> = rows.iter().map(|r| (r.id, r.token)).collect();
                release(&self.shared, &leftover).await;
            }
        }
        self.conns.clear();
        Ok(())
    }

    fn on_command(
        &mut self,
        cmd: Command,
        add_tx: &mpsc::UnboundedSender<AddItem>,
        ack_tx: &mpsc::UnboundedSender<AckItem>,
    ) {
        match cmd {
            Command::Connect { conn, client_name, replies } => {
                let name = client_name;
                self.conns.insert(conn, Conn { replies, name, leases: HashMap::new() });
                crate::metrics::connection_opened(conn);
            }
            Command::Disconnect { conn } => {
                self.lists.remove_conn(conn);
                if let Some(c) = self.conns.remove(&conn) {
                    crate::metrics::connection_closed(conn);
                    let held: Vec<(JobId, u64)> = c.leases.into_iter().collect();
                    if !held.is_empty() {
                        let shared = self.shared.clone();
                        self.tasks.spawn(async move {
                            fail_leases(&shared, &held, WORKER_DISCONNECTED, RetryHint::Backoff)
                                .await
                        });
                    }
                }
            }
            Command::Request { conn, id, body } => {
                let Some(replies) = self.conns.get(&conn).map(|c| c.replies.clone()) else {
                    return;
                };
                if let Some(result) = self.on_request(conn, id, body, &replies, add_tx, ack_tx) {
                    let _ = replies.send(ServerFrame::Response { id, result });
                }
            }
            Command::Subscribe { conn, id, .. } => {
                if let Some(c) = self.conns.get(&conn) {
                    let result = Err(unsupported("subscribing to lifecycle events"));
                    let _ = c.replies.send(ServerFrame::Response { id, result });
                }
            }
        }
    }

    /// Answers at once (`Some`), or hands the request to a task that answers it (`None`).
    fn on_request(
        &mut self,
        conn: ConnId,
        id: u64,
        body: Request,
        replies: &mpsc::UnboundedSender<ServerFrame>,
        add_tx: &mpsc::UnboundedSender<AddItem>,
        ack_tx: &mpsc::UnboundedSender<AckItem>,
    ) -> Option<Result<Response, WireError>> {
        let now = now_ms();
        match body {
            Request::Add { queue, jobs } => {
                let rows = match check_add(&queue, jobs) {
                    Ok(rows) => rows,
                    Err(e) => return Some(Err(e)),
                };
                let _ = add_tx.send(AddItem { replies: replies.clone(), id, rows });
                None
            }
            Request::Reserve { queues, max, timeout_ms } => {
                if let Err(e) = check_reserve(&queues, max) {
                    return Some(Err(e));
                }
                let waiter = Waiter {
                    key: crate::broker::WaiterKey { conn, request: id },
                    max: max.min(self.shared.max_reserve),
                    deadline: now.saturating_add(timeout_ms),
                    once: timeout_ms == 0,
                    seen: false,
                };
                let key = waiter.key;
                if let Some(rows) = self.lists.park(queues, waiter, now) {
                    self.deliver(key, rows);
                }
                None
            }
            Request::Ack { leases } => {
                let leases = self.take_leases(conn, leases.iter().map(|l| (l.id, l.token)));
                let _ = ack_tx.send(AckItem { replies: replies.clone(), id, leases });
                None
            }
            Request::AckWithResult { lease, result } => {
                if result.len() > MAX_RESULT {
                    return Some(Err(WireError::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "the result is {} bytes, more than the {MAX_RESULT} a result may \
                             have; store large output elsewhere and return a reference to it",
                            result.len()
                        ),
                    )));
                }
                // Results are not kept by this backend (no `Wait`, no completed ring): the
                // ack itself is what counts.
                let leases = self.take_leases(conn, [(lease.id, lease.token)]);
                let _ = ack_tx.send(AckItem { replies: replies.clone(), id, leases });
                None
            }
            Request::Nack { lease, error, retry } => {
                self.take_leases(conn, [(lease.id, lease.token)]);
                self.spawn_reply(replies, id, move |shared| async move {
                    nack(&shared, lease, &error, retry).await
                });
                None
            }
            Request::Snooze { lease, delay_ms } => {
                self.take_leases(conn, [(lease.id, lease.token)]);
                self.spawn_reply(replies, id, move |shared| async move {
                    put_back(&shared, lease, delay_ms).await
                });
                None
            }
            Request::Touch { lease, lease_ms } => {
                if let Some(ms) = lease_ms {
                    if let Err(e) = validate_lease(ms) {
                        return Some(Err(e));
                    }
                }
                self.spawn_reply(replies, id, move |shared| async move {
                    let client =
                        shared.lease_pool.get().await.map_err(|e| PgError::from(e).wire())?;
                    match sql::touch(&client, (lease.id, lease.token), lease_ms, now_ms()).await {
                        Ok(Some(deadline)) => Ok(Response::Touched { lease_deadline_ms: deadline }),
                        Ok(None) => Err(lease_error(&shared, lease.id).await),
                        Err(e) => Err(e.wire()),
                    }
                });
                None
            }
            Request::Ping => Some(Ok(Response::Pong)),
            Request::Progress { .. } => Some(Err(unsupported("progress reporting"))),
            Request::Wait { .. } => Some(Err(unsupported("waiting for a job's outcome"))),
            other => {
                let shared = self.shared.clone();
                let Some(task) = admin::answer(shared, other) else {
                    return Some(Err(unsupported("this request")));
                };
                let replies = replies.clone();
                self.tasks.spawn(async move {
                    let result = task.await;
                    let _ = replies.send(ServerFrame::Response { id, result });
                });
                None
            }
        }
    }

    /// Takes these leases off the connection's books (the request settles them either way)
    /// and returns them.
    fn take_leases(
        &mut self,
        conn: ConnId,
        leases: impl IntoIterator<Item = (JobId, u64)>,
    ) -> Vec<(JobId, u64)> {
        let held = self.conns.get_mut(&conn).map(|c| &mut c.leases);
        let leases: Vec<_> = leases.into_iter().collect();
        if let Some(held) = held {
            for (id, token) in &leases {
                if held.get(id) == Some(token) {
                    held.remove(id);
                }
            }
        }
        leases
    }

    /// Runs `work` on a task and sends its answer as the reply to request `id`.
    fn spawn_reply<F, Fut>(&self, replies: &mpsc::UnboundedSender<ServerFrame>, id: u64, work: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Response, WireError>> + Send,
    {
        let shared = self.shared.clone();
        let replies = replies.clone();
        self.tasks.spawn(async move {
            let result = work(shared).await;
            let _ = replies.send(ServerFrame::Response { id, result });
        });
    }

    fn on_internal(&mut self, event: Internal) {
        let now = now_ms();
        match event {
            Internal::Added { queues } => self.lists.wake(&queues, now),
            Internal::Fetched { queues, result } => {
                let rows = match result {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, ?queues, "reserve failed; retrying");
                        let err = WireError::new(
                            ErrorCode::Storage,
                            format!("the database failed: {e}; retry shortly"),
                        );
                        for w in self.lists.fetch_failed(&queues, now) {
                            self.send(w.key.conn, w.key.request, Err(err.clone()));
                        }
                        return;
                    }
                };
                let (served, leftover) = self.lists.fetched(&queues, rows, now);
                for (waiter, rows) in served {
                    self.deliver(waiter, rows);
                }
                let leftover: Vec<(JobId, u64)> =
                    leftover.iter().map(|r| (r.id, r.token)).collect();
                if !leftover.is_empty() {
                    let shared = self.shared.clone();
                    self.tasks.spawn(async move { release(&shared, &leftover).await });
                }
            }
        }
    }

    /// Answers reserve `waiter` with `rows`, now on its connection's books (rows of a
    /// connection that is gone go back at once).
    fn deliver(&mut self, waiter: crate::broker::WaiterKey, rows: Vec<LeasedRow>) {
        let Some(conn) = self.conns.get_mut(&waiter.conn) else {
            let back: Vec<(JobId, u64)> = rows.iter().map(|r| (r.id, r.token)).collect();
            let shared = self.shared.clone();
            self.tasks.spawn(async move { release(&shared, &back).await });
            return;
        };
        let now = now_ms();
        for r in &rows {
            conn.leases.insert(r.id, r.token);
            self.unnamed.push_back((waiter.conn, r.id, r.token, now));
        }
        let jobs = rows.into_iter().map(leased).collect();
        let _ = conn.replies.send(ServerFrame::Response {
            id: waiter.request,
            result: Ok(Response::Reserved { jobs }),
        });
    }

    /// Answers expired waits, hands back rows kept ahead too long, and starts the fetches
    /// that are due.
    fn tick(&mut self) {
        let now = now_ms();
        for waiter in self.lists.expire(now) {
            self.send(waiter.conn, waiter.request, Ok(Response::Reserved { jobs: Vec::new() }));
        }
        let stale: Vec<(JobId, u64)> =
            self.lists.stale(now).iter().map(|r| (r.id, r.token)).collect();
        if !stale.is_empty() {
            let shared = self.shared.clone();
            self.tasks.spawn(async move { release(&shared, &stale).await });
        }
        self.name_workers(now);
        for (queues, n) in self.lists.due(now) {
            let tokens: Vec<u64> = (0..n).map(|_| self.tokens.next_u64()).collect();
            let shared = self.shared.clone();
            let done = self.internal_tx.clone();
            self.tasks.spawn(async move {
                let result = async {
                    let client = shared.lease_pool.get().await?;
                    sql::reserve(&client, &queues, n, now_ms(), &tokens).await
                }
                .await
                .map_err(|e| e.to_string());
                let _ = done.send(Internal::Fetched { queues, result });
            });
        }
    }

    /// Writes the worker's name into the rows of leases delivered [`NAME_AFTER_MS`] ago
    /// and still held (one statement for all of them, committed asynchronously like the
    /// lease itself); leases settled by then cost nothing.
    fn name_workers(&mut self, now: Millis) {
        let mut named = Vec::new();
        while let Some(&(conn, id, token, at)) = self.unnamed.front() {
            if at + NAME_AFTER_MS > now {
                break;
            }
            self.unnamed.pop_front();
            if let Some(c) = self.conns.get(&conn) {
                if c.leases.get(&id) == Some(&token) {
                    named.push((id, token, c.name.clone()));
                }
            }
        }
        if named.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        self.tasks.spawn(async move {
            let result = async {
                let client = shared.lease_pool.get().await?;
                listing::name_workers(&client, &named).await
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, jobs = named.len(), "cannot name the workers of long leases; listings show them unnamed");
            }
        });
    }

    fn send(&self, conn: ConnId, id: u64, result: Result<Response, WireError>) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.replies.send(ServerFrame::Response { id, result });
        }
    }
}

/// Validates an add and turns it into rows: the same checks as the embedded core, and a
/// clear error for the options this backend does not serve yet.
fn check_add(queue: &str, jobs: Vec<qd_protocol::NewJob>) -> Result<Vec<NewRow>, WireError> {
    validate_queue_name(queue)?;
    let n = jobs.len();
    for (i, job) in jobs.iter().enumerate() {
        job.validate().map_err(|e| {
            WireError::new(
                e.code,
                format!("job {} of {n} in this add: {}; nothing was added", i + 1, e.message),
            )
        })?;
        if job.options.unique != Unique::WhilePending {
            return Err(unsupported("a unique window or debounce"));
        }
        if job.options.expires_in_ms.is_some() {
            return Err(unsupported("expires_in"));
        }
    }
    Ok(jobs
        .into_iter()
        .map(|j| NewRow {
            queue: queue.to_owned(),
            name: j.name,
            payload: j.payload,
            options: j.options,
        })
        .collect())
}

fn check_reserve(queues: &[String], max: u32) -> Result<(), WireError> {
    if max == 0 {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            "reserve max is 0; ask for at least 1 job",
        ));
    }
    if queues.is_empty() {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            "reserve names no queue; give at least one",
        ));
    }
    for q in queues {
        validate_queue_name(q)?;
    }
    Ok(())
}

fn leased(r: LeasedRow) -> LeasedJob {
    let mut job = LeasedJob::new(r.id, r.queue, r.name, r.payload, r.token, r.deadline_ms);
    job.attempt = r.failures.saturating_add(1);
    job.max_attempts = r.max_attempts;
    job.created_at_ms = r.created_at_ms;
    job.group = r.options.group.clone();
    job.timeout_ms = r.options.timeout_ms;
    job
}

/// The error for a lease that did not match: `NotFound` when the job is gone, else
/// `LeaseLost`.
async fn lease_error(shared: &Shared, id: JobId) -> WireError {
    let exists = match shared.pool.get().await {
        Ok(client) => sql::existing(&client, &[id]).await.map(|v| !v.is_empty()).unwrap_or(true),
        Err(_) => true,
    };
    if exists {
        WireError::new(
            ErrorCode::LeaseLost,
            format!("the lease on job {id} is no longer valid (expired, or the job was handed to another worker); drop this try"),
        )
    } else {
        crate::engine::admin::not_found(id)
    }
}

async fn nack(
    shared: &Shared,
    lease: LeaseRef,
    error: &str,
    hint: RetryHint,
) -> Result<Response, WireError> {
    if let RetryHint::RateLimited { delay_ms } = hint {
        // Back to waiting without an attempt; the queue-wide hold is not served here yet.
        return put_back(shared, lease, delay_ms).await;
    }
    let mut client = shared.pool.get().await.map_err(|e| PgError::from(e).wire())?;
    let message = truncate_error(error);
    let failed = sql::fail(
        &mut client,
        Victims::Leases(&[(lease.id, lease.token)]),
        &message,
        hint,
        now_ms(),
    )
    .await
    .map_err(|e| e.wire())?;
    shared.count_failures(&failed);
    match failed.first() {
        Some(f) if f.outcome.dead => Ok(Response::Nacked { outcome: NackOutcome::Dead }),
        Some(f) => Ok(Response::Nacked {
            outcome: NackOutcome::Retrying { run_at_ms: f.outcome.run_at_ms },
        }),
        None => Err(lease_error(shared, lease.id).await),
    }
}

/// A snooze (or a rate-limited nack): back to waiting in `delay_ms`, no attempt used.
async fn put_back(shared: &Shared, lease: LeaseRef, delay_ms: u64) -> Result<Response, WireError> {
    let client = shared.pool.get().await.map_err(|e| PgError::from(e).wire())?;
    let now = now_ms();
    // At least 1 ms: `release` treats 0 as "keep the old run time".
    let delay = delay_ms.max(1);
    match sql::release(&client, &[(lease.id, lease.token)], now, delay).await {
        Ok(ids) if !ids.is_empty() => Ok(Response::Nacked {
            outcome: NackOutcome::Retrying { run_at_ms: now.saturating_add(delay) },
        }),
        Ok(_) => Err(lease_error(shared, lease.id).await),
        Err(e) => Err(e.wire()),
    }
}

/// Fails leases held by a closed connection (logged, not answered: nobody is listening).
async fn fail_leases(shared: &Shared, leases: &[(JobId, u64)], message: &str, hint: RetryHint) {
    let result = async {
        let mut client = shared.pool.get().await?;
        sql::fail(&mut client, Victims::Leases(leases), message, hint, now_ms()).await
    }
    .await;
    match result {
        Ok(failed) => shared.count_failures(&failed),
        Err(e) => {
            tracing::warn!(error = %e, jobs = leases.len(), "cannot release a closed connection's jobs; they run again when their leases expire")
        }
    }
}

/// Puts delivered-but-untaken rows back, no attempt charged.
async fn release(shared: &Shared, leases: &[(JobId, u64)]) {
    let result = async {
        let client = shared.lease_pool.get().await?;
        sql::release(&client, leases, now_ms(), 0).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, jobs = leases.len(), "cannot put untaken jobs back; they run again when their leases expire");
    }
}

/// An insert worker: takes every add waiting (up to [`BATCH_MAX`] jobs), inserts them in
/// one statement, answers each, and wakes this broker's waiters on those queues.
async fn add_worker(
    shared: Arc<Shared>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<AddItem>>>,
    wake: mpsc::UnboundedSender<Internal>,
) {
    let mut items: Vec<AddItem> = Vec::new();
    loop {
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut items, 1).await == 0 {
                return;
            }
            let mut jobs = items[0].rows.len();
            while jobs < BATCH_MAX {
                match rx.try_recv() {
                    Ok(item) => {
                        jobs += item.rows.len();
                        items.push(item);
                    }
                    Err(_) => break,
                }
            }
        }
        let sizes: Vec<usize> = items.iter().map(|i| i.rows.len()).collect();
        let rows: Vec<NewRow> =
            items.iter_mut().flat_map(|i| std::mem::take(&mut i.rows)).collect();
        let result = async {
            let client = shared.pool.get().await?;
            sql::insert(&client, &rows, now_ms()).await
        }
        .await;
        match result {
            Ok(ids) => {
                let mut queues: HashSet<&str> = HashSet::new();
                for r in &rows {
                    queues.insert(&r.queue);
                    shared.count(&r.queue, |c| c.added += 1);
                }
                let mut at = 0;
                for (item, n) in items.drain(..).zip(sizes) {
                    let ids = ids[at..at + n].to_vec();
                    at += n;
                    let _ = item.replies.send(ServerFrame::Response {
                        id: item.id,
                        result: Ok(Response::Added { ids }),
                    });
                }
                let _ = wake.send(Internal::Added {
                    queues: queues.into_iter().map(str::to_owned).collect(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = rows.len(), "add failed");
                for item in items.drain(..) {
                    let _ = item
                        .replies
                        .send(ServerFrame::Response { id: item.id, result: Err(e.wire()) });
                }
            }
        }
    }
}

/// An ack worker: takes every ack waiting, completes them in one statement, answers each.
async fn ack_worker(
    shared: Arc<Shared>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<AckItem>>>,
) {
    let mut items: Vec<AckItem> = Vec::new();
    loop {
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut items, BATCH_MAX).await == 0 {
                return;
            }
        }
        let leases: Vec<(JobId, u64)> =
            items.iter().flat_map(|i| i.leases.iter().copied()).collect();
        let result = async {
            let client = shared.pool.get().await?;
            let done = sql::ack(&client, &leases).await?;
            let done_ids: HashSet<JobId> = done.iter().map(|d| d.0).collect();
            let missing: Vec<JobId> =
                leases.iter().map(|l| l.0).filter(|id| !done_ids.contains(id)).collect();
            let exists: HashSet<JobId> = if missing.is_empty() {
                HashSet::new()
            } else {
                sql::existing(&client, &missing).await?.into_iter().collect()
            };
            Ok::<_, PgError>((done, done_ids, exists))
        }
        .await;
        match result {
            Ok((done, done_ids, exists)) => {
                for (_, queue) in &done {
                    shared.count(queue, |c| c.completed += 1);
                }
                for item in items.drain(..) {
                    let failed = item
                        .leases
                        .iter()
                        .filter(|l| !done_ids.contains(&l.0))
                        .map(|l| {
                            let err = if exists.contains(&l.0) {
                                WireError::new(ErrorCode::LeaseLost, format!("the lease on job {} is no longer valid (expired, or the job was handed to another worker)", l.0))
                            } else {
                                crate::engine::admin::not_found(l.0)
                            };
                            (l.0, err)
                        })
                        .collect();
                    let _ = item.replies.send(ServerFrame::Response {
                        id: item.id,
                        result: Ok(Response::Acked { failed }),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, leases = leases.len(), "ack failed");
                for item in items.drain(..) {
                    let _ = item
                        .replies
                        .send(ServerFrame::Response { id: item.id, result: Err(e.wire()) });
                }
            }
        }
    }
}

/// The maintenance loop every broker runs: fails expired leases (`SKIP LOCKED`: brokers
/// sweeping together share the work rather than queue behind each other) and drops dead
/// jobs past their retention.
async fn sweep(shared: Arc<Shared>, stop: CancellationToken) {
    let mut last_retention = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        loop {
            let result = async {
                let mut client = shared.pool.get().await?;
                sql::fail(
                    &mut client,
                    Victims::Expired,
                    LEASE_EXPIRED,
                    RetryHint::Backoff,
                    now_ms(),
                )
                .await
            }
            .await;
            match result {
                Ok(failed) if failed.is_empty() => break,
                Ok(failed) => {
                    tracing::debug!(jobs = failed.len(), "expired leases failed");
                    shared.count_failures(&failed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease sweep failed; retrying");
                    break;
                }
            }
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = std::time::Instant::now();
            let cutoff = now_ms().saturating_sub(shared.dead_max_age_ms);
            let result = async {
                let client = shared.pool.get().await?;
                sql::drop_old_dead(&client, cutoff).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "dead-job retention failed; retrying later");
            }
        }
    }
}

/// Queues whose dead set may have grown past `dead_max_jobs` since the last trimming pass.
/// A set, not a queue of deaths: a flood of dead-lettered jobs (a hostile worker nacking
/// with `never` as fast as it can) holds one name per queue, not one per job, whatever the
/// trimming task's pace. (It was an unbounded channel of names drained 1,024 per 100 ms,
/// which a death rate over ~10,000/s grew without bound.)
#[derive(Debug, Default)]
struct DeadTrims {
    queues: Mutex<HashSet<String>>,
    /// Wakes the trimming task; a permit is kept when it is busy, so no mark is missed.
    wake: tokio::sync::Notify,
}

impl DeadTrims {
    fn mark(&self, queue: &str) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if !queues.contains(queue) {
            queues.insert(queue.to_owned());
        }
        drop(queues);
        self.wake.notify_one();
    }

    /// The marked queues, in name order, leaving none marked.
    fn take(&self) -> Vec<String> {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap_or_else(|e| e.into_inner()));
        let mut queues: Vec<String> = queues.into_iter().collect();
        queues.sort_unstable();
        queues
    }
}

/// Adds this broker's counts to the shared counters every [`COUNTERS_EVERY`] (and once
/// more when it stops), and trims the dead sets of queues where jobs died to
/// `dead_max_jobs` (each queue at most once per pass, so a flood of deaths costs one
/// statement per queue and pass, not one per job).
async fn count_and_trim(shared: Arc<Shared>, stop: CancellationToken) {
    let mut last_flush = std::time::Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(COUNTERS_EVERY) => false,
            () = shared.trim.wake.notified() => false,
        };
        for queue in shared.trim.take() {
            let result = async {
                let client = shared.pool.get().await?;
                listing::trim_dead(&client, &queue, shared.dead_max_jobs).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, queue, "cannot trim the dead set to --dead-max-jobs; the next death retries");
            }
        }
        if stopping || last_flush.elapsed() >= COUNTERS_EVERY {
            last_flush = std::time::Instant::now();
            flush_counters(&shared).await;
        }
        if stopping {
            return;
        }
        // At most one trimming pass per 100 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds this broker's pending counts to `qd_counters`; on failure they stay pending.
async fn flush_counters(shared: &Shared) {
    let _flushing = shared.counters_flush.lock().await;
    let pending = {
        let mut counters = shared.counters.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *counters)
    };
    if pending.is_empty() {
        return;
    }
    let result = async {
        let client = shared.pool.get().await?;
        listing::add_counters(&client, &pending).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot add this broker's counts to the shared counters; retrying");
        for (queue, c) in pending {
            shared.count(&queue, |p| {
                p.added += c.added;
                p.completed += c.completed;
                p.failed += c.failed;
                p.dead += c.dead;
            });
        }
    }
}

/// Longest `autovacuum_naptime` that keeps a busy `qd_jobs` small (docs/BACKENDS.md).
const NAPTIME_MAX_S: f64 = 5.0;

/// Warns when the database's autovacuum cannot keep up with a queue table. The per-table
/// settings of the migration make `qd_jobs` due for a vacuum after 5,000 dead rows, but the
/// launcher looks at each database only once per `autovacuum_naptime` (a server setting,
/// default one minute): ten minutes of add-and-drain then grew the table from 20 to 530 MB
/// between vacuums and throughput swung with it; at 1 s it stayed near 20 MB.
async fn check_autovacuum(pool: &Pool) {
    let settings = async {
        let client = pool.get().await?;
        let row = client
            .query_one(
                "SELECT current_setting('autovacuum')::bool,
                        extract(epoch FROM current_setting('autovacuum_naptime')::interval)::float8",
                &[],
            )
            .await?;
        Ok::<(bool, f64), PgError>((row.get(0), row.get(1)))
    }
    .await;
    match settings {
        Ok((false, _)) => tracing::warn!(
            "autovacuum is off in this database: qd_jobs will grow without end and slow every \
             reserve; turn it on (ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf())"
        ),
        Ok((true, naptime)) if naptime > NAPTIME_MAX_S => tracing::warn!(
            naptime_s = naptime,
            "autovacuum_naptime is longer than {NAPTIME_MAX_S} s: under sustained load qd_jobs \
             bloats between vacuums and throughput swings; set it to 1 s \
             (ALTER SYSTEM SET autovacuum_naptime = '1s'; SELECT pg_reload_conf()), \
             see docs/BACKENDS.md"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read the autovacuum settings"),
    }
}

/// A pool of at most `size` connections made with `config`.
fn new_pool(config: tokio_postgres::Config, size: usize) -> Result<Pool, PgError> {
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| PgError::Pool(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of deaths in two queues holds two names until the next pass, which takes
    /// them once each; a mark made while the pass runs wakes the next one.
    #[tokio::test]
    async fn dead_trims_hold_one_name_per_queue_however_many_jobs_died() {
        let trims = DeadTrims::default();
        for i in 0..100_000 {
            trims.mark(if i % 2 == 0 { "emails" } else { "crm" });
        }
        assert_eq!(trims.queues.lock().unwrap().len(), 2);
        tokio::time::timeout(Duration::from_secs(5), trims.wake.notified())
            .await
            .expect("a mark wakes the trimming task");
        assert_eq!(trims.take(), ["crm", "emails"]);
        assert!(trims.take().is_empty());
        trims.mark("crm");
        tokio::time::timeout(Duration::from_secs(5), trims.wake.notified())
            .await
            .expect("a mark after a pass wakes the next one");
        assert_eq!(trims.take(), ["crm"]);
    }
}
