//! The engine: the one task that owns the broker core, and the bridge between it, the
//! network and the store.
//!
//! Connections send [`Command`]s over one bounded channel; the engine applies each to the
//! core, collects the [`Effect`]s, and then:
//! - hands every `Persist` change of this round to the group-commit [`Writer`] under one
//!   ticket, and holds back the replies of the requests that caused them until the writer
//!   reports that ticket committed ("persist, then reply"); at light load, outside `fsync`
//!   mode, the writer commits the ticket right away on this task (`submit_round`);
//! - answers requests that changed nothing durable (reserve, touch, stats, errors) at once;
//! - delivers jobs to parked reserves, reading payloads from the store (or from the
//!   overlay of inserts not yet applied).
//!
//! - answers the admin requests (issue 8) from the core's views; the ones that need stored
//!   records (a job's payload and errors, a search through payloads) are read on tokio's
//!   blocking pool and answered from there (see `admin.rs`), so no disk read stalls the
//!   engine.
//!
//! Read-committed delivery: a job added is handed to no worker and shown in no listing until
//! the ticket holding its insert is committed (`Broker::commit_added` in `on_committed`),
//! and an answer that reveals such a job's id (an add whose idempotency key matched it)
//! waits for that ticket too. A worker can thus never act on a job that a crash would
//! forget.
//!
//! Between rounds it sleeps until the core's next deadline (`poll_timeout`), so delayed jobs,
//! lease expiries and reserve timeouts fire without polling.
//!
//! The engine owns the clock: `now` is wall-clock unix ms, clamped never to run backwards.
//! Recovery reads that same clock: [`Engine::open`] opens the store, streams its records into
//! a new core and starts the writer, so nothing above the engine builds a broker or a store.

pub(crate) mod admin;
mod events;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use qd_protocol::admin::{Cursor, JobState, JobSummary, SearchQuery};
use qd_protocol::message::{LeaseRef, NackOutcome, ServerFrame};
use qd_protocol::{
    ErrorCode, JobEvent, JobId, JobOutcome, LeasedJob, Request, Response, WireError,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, BrokerConfig, Effect, JobStateKind, JobView, Lease, Waited, WaiterKey,
};
use crate::config::ServerConfig;
use crate::model::{Change, ConnId, Millis};
use crate::store::{
    Committed, JournalConfig, JournaledStore, SledConfig, Store, StoreError, StoreReader, Writer,
};

/// Why the engine could not start or had to stop. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store could not be opened or recovered.
    #[error("cannot open the data directory {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: StoreError,
    },

    /// The OS gave no randomness for the lease-token seed.
    #[error(
        "cannot draw a random seed for lease tokens: {0}; the OS's random source is \
         unavailable (in a container or sandbox, allow the getrandom system call)"
    )]
    Seed(getrandom::Error),

    /// A commit failed while serving; the engine stopped on purpose (fail-stop).
    #[error(
        "storage failed: {failure}. qd stopped so that memory and disk cannot disagree; \
         nothing it acknowledged is lost. Fix the cause (disk full? permissions?) and start it again"
    )]
    StorageFailed { failure: String },

    /// A commit failed while draining at shutdown.
    #[error(
        "storage failed during shutdown: {failure}; replies still waiting were answered with \
         an error. Fix the cause and start qd again: it recovers everything it acknowledged"
    )]
    ShutdownFailed { failure: String },

    /// The final flush, when the writer stopped, failed.
    #[error("cannot flush the store at shutdown: {0}")]
    Close(#[source] StoreError),

    /// A blocking task of the engine panicked.
    #[error(
        "the engine's {task} task panicked; this is a bug in qd, please report it with the log"
    )]
    Panicked { task: &'static str },
}

/// What a connection tells the engine.
#[derive(Debug)]
pub enum Command {
    /// A connection finished its handshake; replies for it go to `replies`. `client_name`
    /// is its `Hello`'s, shown as the worker of the jobs it holds.
    Connect { conn: ConnId, client_name: String, replies: mpsc::UnboundedSender<ServerFrame> },
    /// One request, answered on the connection's reply channel under `id`.
    Request { conn: ConnId, id: u64, body: Request },
    /// The connection is gone: release its leases and parked reserves.
    Disconnect { conn: ConnId },
    /// Request `id` is a `Subscribe` to `queues` (issue 9): its events go to the
    /// connection's reply channel as `ServerFrame::Event`s. `queued` counts the event
    /// frames sent there that the connection's writer has not taken yet; the writer
    /// decrements it (see `engine/events.rs`). Sent by `net/conn.rs` instead of a
    /// `Request`, since only it can hand over that counter.
    Subscribe { conn: ConnId, id: u64, queues: Vec<String>, queued: Arc<AtomicUsize> },
}

/// A reply held back until the batch holding its changes is committed.
#[derive(Debug)]
struct Held {
    conn: ConnId,
    id: u64,
    result: Result<Response, WireError>,
}

/// What one commit ticket covers.
#[derive(Debug, Default)]
struct Ticket {
    replies: Vec<Held>,
    /// Ids whose payloads sit in the overlay until this ticket is applied.
    inserted: Vec<JobId>,
    /// `Wait`s on dead jobs `(conn, request, job)`, answered from the store once this
    /// ticket (which may hold the job's last `Fail`) is committed.
    dead_waits: Vec<(ConnId, u64, JobId)>,
    /// Lifecycle events reporting this ticket's changes, published once it is committed
    /// (dropped if the commit fails: they never happened).
    events: Vec<JobEvent>,
}

/// A connected client, as the engine knows it.
#[derive(Debug)]
struct Conn {
    replies: mpsc::UnboundedSender<ServerFrame>,
    name: String,
}

/// Clock that never runs backwards, even if the system clock does.
#[derive(Debug, Default)]
struct Clock {
    last: Millis,
}

impl Clock {
    fn now(&mut self) -> Millis {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last = self.last.max(wall);
        self.last
    }
}

/// The engine's state. Built by [`Engine::new`], consumed by [`Engine::run`].
#[derive(Debug)]
pub struct Engine {
    /// The largest frame a client accepts from us: pages of queues are cut to fit in it.
    max_frame: usize,
    broker: Broker,
    reader: StoreReader,
    writer: Option<Writer>,
    committed: mpsc::UnboundedReceiver<Committed>,
    conns: HashMap<ConnId, Conn>,
    /// Payloads of jobs inserted but not yet committed, with the ticket holding the insert.
    /// The core hands such jobs out only once that ticket commits, but the deliveries it
    /// then makes are built before the overlay entry goes (see `on_committed`).
    overlay: HashMap<JobId, (Bytes, u64)>,
    /// Set by the request being handled when its answer reveals an uncommitted job: the
    /// ticket that answer must wait for (read by `apply_effects`).
    reveal: Option<u64>,
    /// The round being built: changes and the replies that wait for them.
    open: Ticket,
    open_changes: Vec<Change>,
    /// Submitted tickets not yet committed.
    in_flight: HashMap<u64, Ticket>,
    next_ticket: u64,
    clock: Clock,
    effects: Vec<Effect>,
    /// Set by the first failed commit; the engine then stops (see `run`).
    storage_failure: Option<String>,
    /// Lifecycle event subscriptions (`engine/events.rs`).
    subscribers: events::Subscribers,
}

/// What [`Engine::open`] found in the data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Records streamed from the store into the core.
    pub jobs: u64,
}

impl Engine {
    /// Opens the store in `config.data`, streams every record into a new core (at the
    /// engine's own clock's `now`, with a fresh random lease-token seed), and starts the
    /// group-commit writer. Blocking: recovery reads the whole data dir, so call it from
    /// `spawn_blocking`.
    pub fn open(config: &ServerConfig) -> Result<(Engine, Recovered), EngineError> {
        let open_failed = |source| EngineError::Open { path: config.data.clone(), source };
        let sled_config =
            SledConfig { path: config.data.clone(), cache_capacity: config.cache_capacity };
        let journal_config =
            JournalConfig { checkpoint_bytes: config.checkpoint_bytes, ..JournalConfig::default() };
        let mut store: Box<dyn Store> =
            Box::new(JournaledStore::open(&sled_config, journal_config).map_err(open_failed)?);
        // The key of the lease-token CSPRNG: from the OS, once per process, so no token of
        // this run can be predicted from another, nor from a token of an earlier run.
        let mut token_key = [0u8; 32];
        getrandom::getrandom(&mut token_key).map_err(EngineError::Seed)?;
        let mut broker = Broker::new(BrokerConfig {
            completed_retention: config.completed_retention,
            token_key,
            dead_max_jobs: config.dead_max_jobs,
            dead_max_age_ms: config.dead_max_age.as_millis().min(u64::MAX as u128) as u64,
            max_reserve: config.max_reserve,
            ..BrokerConfig::default()
        });
        let mut clock = Clock::default();
        let now = clock.now();
        // Streamed: one record at a time goes from the store into the broker's indexes,
        // without its payload (the core keeps metadata only; reserves read payloads from
        // the store).
        let recovered = {
            let mut restorer = broker.restorer(now);
            store.recover_index(&mut |record| restorer.restore(record)).map_err(open_failed)?
        };
        let next = broker.next_id().max(recovered.next_id);
        broker.set_next_id(next);
        for (queue, settings) in &recovered.queues {
            broker.restore_settings(queue, settings.clone());
        }
        // Due schedules (ticks missed while down) fire once at the first timer round.
        for schedule in recovered.schedules {
            if let Err(e) = broker.restore_schedule(schedule) {
                tracing::warn!(error = %e, "schedule not restored to firing");
            }
        }

        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let reader = store.reader();
        let writer = Writer::spawn(store, config.durability, config.flush_interval, done_tx);
        let mut engine = Engine::new(broker, reader, writer, done_rx);
        engine.clock = clock;
        engine.max_frame = config.max_frame;
        engine.subscribers = events::Subscribers::new(config.subscriber_buffer);
        Ok((engine, Recovered { jobs: recovered.records }))
    }

    /// `committed` is the receiving end of the channel the writer was spawned with.
    pub fn new(
        broker: Broker,
        reader: StoreReader,
        writer: Writer,
        committed: mpsc::UnboundedReceiver<Committed>,
    ) -> Self {
        Engine {
            max_frame: qd_protocol::DEFAULT_MAX_FRAME,
            broker,
            reader,
            writer: Some(writer),
            committed,
            conns: HashMap::new(),
            overlay: HashMap::new(),
            reveal: None,
            open: Ticket::default(),
            open_changes: Vec::new(),
            in_flight: HashMap::new(),
            next_ticket: 1,
            clock: Clock::default(),
            effects: Vec::new(),
            storage_failure: None,
            subscribers: events::Subscribers::new(ServerConfig::default().subscriber_buffer),
        }
    }

    /// Runs until `shutdown` is cancelled, then answers the commands already queued, waits
    /// for every commit in flight, and flushes the store.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> Result<(), EngineError> {
        let mut batch = Vec::with_capacity(1024);
        // One timer and one shutdown waiter for the whole loop, re-armed only when the
        // core's next deadline moves: a fresh `sleep` per wake-up took the time driver's
        // lock twice and, with an earlier deadline, woke the driver's thread for nothing.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        // The deadline the timer is armed for; `None` when it must be re-armed.
        let mut armed_for: Option<Option<Millis>> = None;
        let stopping = shutdown.cancelled();
        tokio::pin!(stopping);
        while self.storage_failure.is_none() {
            // Due timers first: under a constant stream of commands the sleep branch below
            // would never win the select, and delayed jobs and lease expiries would starve.
            let now = self.clock.now();
            if self.broker.poll_timeout().is_some_and(|at| at <= now) {
                self.broker.handle_timeout(now);
                self.apply_effects(None);
            }
            let next = self.broker.poll_timeout();
            if armed_for != Some(next) {
                let sleep = match next {
                    Some(at) => Duration::from_millis(at.saturating_sub(now)),
                    None => Duration::from_secs(3600),
                };
                timer.as_mut().reset(tokio::time::Instant::now() + sleep);
                armed_for = Some(next);
            }
            tokio::select! {
                biased;
                Some(done) = self.committed.recv() => self.on_committed(done),
                n = commands.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        break;
                    }
                    for cmd in batch.drain(..) {
                        self.on_command(cmd);
                    }
                }
                () = &mut timer => armed_for = None,
                () = &mut stopping => break,
            }
            self.submit_round(commands.is_empty());
        }

        if let Some(failure) = self.storage_failure.clone() {
            // Fail-stop: the core's memory now holds changes the disk may not. Going on
            // could acknowledge work that a restart would forget, so answer everything
            // pending with an error and stop; recovery from disk is the consistent state.
            shutdown.cancel();
            let open = std::mem::take(&mut self.open);
            self.fail_replies(open.replies, &failure);
            // Do not close the store: after an I/O error sled 0.34 can block forever in the
            // flush its close (and even its drop) performs, which would keep the process
            // from exiting. The journal already holds everything acknowledged; the writer
            // thread is left behind and ends with the process.
            self.finish(false).await?;
            return Err(EngineError::StorageFailed { failure });
        }

        // Shutdown: answer what already arrived, but a disconnect now is the server
        // leaving, not the worker failing: no attempt is charged, the job stays on disk.
        while let Ok(cmd) = commands.try_recv() {
            if !matches!(cmd, Command::Disconnect { .. }) {
                self.on_command(cmd);
            }
        }
        self.submit_round(false);
        self.finish(true).await?;
        match self.storage_failure {
            Some(failure) => Err(EngineError::ShutdownFailed { failure }),
            None => Ok(()),
        }
    }

    /// Stops an engine that never ran (the server failed to start after opening it): stops
    /// the writer, which flushes the store.
    pub async fn close(mut self) -> Result<(), EngineError> {
        self.finish(true).await
    }

    /// Waits for every commit in flight (answering its requests) and lets go of the
    /// connections; with `close_store`, stops the writer, which flushes the store.
    async fn finish(&mut self, close_store: bool) -> Result<(), EngineError> {
        while !self.in_flight.is_empty() {
            match self.committed.recv().await {
                Some(done) => self.on_committed(done),
                None => break,
            }
        }
        self.conns.clear();
        match self.writer.take() {
            Some(writer) if close_store => {
                tokio::task::spawn_blocking(move || writer.shutdown())
                    .await
                    .map_err(|_| EngineError::Panicked { task: "store shutdown" })?
                    .map_err(EngineError::Close)?;
            }
            Some(writer) => writer.abandon(),
            None => {}
        }
        Ok(())
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Connect { conn, client_name, replies } => {
                self.conns.insert(conn, Conn { replies, name: client_name });
                crate::metrics::connection_opened(conn); // metrics hook
            }
            Command::Disconnect { conn } => {
                if self.conns.remove(&conn).is_some() {
                    crate::metrics::connection_closed(conn); // metrics hook
                }
                if self.subscribers.remove_conn(conn) {
                    self.broker.watch(self.subscribers.filter());
                }
                let now = self.clock.now();
                self.broker.disconnect(now, conn);
                self.apply_effects(None);
            }
            Command::Subscribe { conn, id, queues, queued } => {
                // Answered at once: nothing to persist. Events of changes already in
                // flight may follow, but never one from before this point.
                let result = self.subscribers.add(conn, id, queues, queued).map(|()| {
                    self.broker.watch(self.subscribers.filter());
                    Response::Done
                });
                self.send(conn, id, result);
            }
            Command::Request { conn, id, body } => {
                let result = self.on_request(conn, id, body);
                // `None`: a parked reserve, answered later by a Deliver effect.
                if let Some(result) = result {
                    self.apply_effects(Some(Held { conn, id, result }));
                } else {
                    self.apply_effects(None);
                }
            }
        }
    }

    fn on_request(
        &mut self,
        conn: ConnId,
        id: u64,
        body: Request,
    ) -> Option<Result<Response, WireError>> {
        let now = self.clock.now();
        let b = &mut self.broker;
        let result = match body {
            Request::Add { queue, jobs } => match b.add(now, &queue, jobs) {
                Ok(ids) => {
                    // Ids inserted by this call are not in the overlay yet: any found there
                    // is a key's holder whose insert is still in flight.
                    self.reveal = ids.iter().filter_map(|i| self.overlay.get(i).map(|o| o.1)).max();
                    Ok(Response::Added { ids })
                }
                Err(e) => Err(e.into()),
            },
            Request::Reserve { queues, max, timeout_ms } => {
                let waiter = WaiterKey { conn, request: id };
                match b.reserve(now, waiter, &queues, max, timeout_ms) {
                    Ok(Some(leases)) => Ok(Response::Reserved { jobs: self.leased(leases) }),
                    Ok(None) => return None,
                    Err(e) => Err(e.into()),
                }
            }
            Request::Ack { leases } => {
                let failed = leases
                    .into_iter()
                    .filter_map(|lease: LeaseRef| {
                        // metrics hook: reserve-to-ack, read before the ack ends the try.
                        crate::metrics::ack_observed(b.lease_started(lease.id), now);
                        b.ack(now, lease).err().map(|e| (lease.id, WireError::from(e)))
                    })
                    .collect();
                Ok(Response::Acked { failed })
            }
            Request::AckWithResult { lease, result } => {
                crate::metrics::ack_observed(b.lease_started(lease.id), now); // metrics hook
                let failed = match b.ack_with_result(now, lease, result) {
                    Ok(()) => Vec::new(),
                    Err(e @ crate::broker::BrokerError::InvalidArgument(_)) => {
                        return Some(Err(e.into()))
                    }
                    Err(e) => vec![(lease.id, WireError::from(e))],
                };
                Ok(Response::Acked { failed })
            }
            Request::Wait { id: job, timeout_ms } => {
                match b.wait(now, WaiterKey { conn, request: id }, job, timeout_ms) {
                    Ok(Waited::Now(outcome)) => Ok(Response::Outcome { outcome }),
                    Ok(Waited::Parked) => return None,
                    Ok(Waited::Dead) => {
                        // Its last error is in its stored record only, and the `Fail` that
                        // killed it may still be in the open or an in-flight ticket: read
                        // after the newest one commits.
                        let latest = if self.open_changes.is_empty() {
                            self.in_flight.keys().max().copied()
                        } else {
                            Some(self.next_ticket)
                        };
                        match latest {
                            Some(t) if t == self.next_ticket => {
                                self.open.dead_waits.push((conn, id, job))
                            }
                            Some(t) => {
                                if let Some(ticket) = self.in_flight.get_mut(&t) {
                                    ticket.dead_waits.push((conn, id, job));
                                }
                            }
                            None => self.answer_dead_wait(conn, id, job),
                        }
                        return None;
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Request::Nack { lease, error, retry } => b
                .nack(now, lease, &error, retry)
                .map(|outcome| Response::Nacked { outcome })
                .map_err(Into::into),
            Request::Touch { lease, lease_ms } => b
                .touch(now, lease, lease_ms)
                .map(|lease_deadline_ms| Response::Touched { lease_deadline_ms })
                .map_err(Into::into),
            Request::Stats { after, limit } => {
                let limit = admin::page_limit(limit);
                let mut queues = b.stats();
                if let Some(after) = &after {
                    queues.retain(|q| q.queue > *after);
                }
                let mut more = queues.len() > limit;
                queues.truncate(limit);
                more |= admin::fit_frame(&mut queues, self.max_frame);
                let next = if more { queues.last().map(|q| q.queue.clone()) } else { None };
                Ok(Response::Stats { queues, next })
            }
            Request::Ping => Ok(Response::Pong),
            // A snooze persists a `Reschedule`, so its answer waits for the commit like a
            // nack's; progress is memory-only and answered at once.
            Request::Snooze { lease, delay_ms } => b
                .snooze(now, lease, delay_ms)
                .map(|run_at_ms| Response::Nacked { outcome: NackOutcome::Retrying { run_at_ms } })
                .map_err(Into::into),
            Request::Progress { lease, progress } => {
                b.report_progress(lease, progress).map(|()| Response::Done).map_err(Into::into)
            }
            Request::Unsubscribe { subscription } => {
                let n = u64::from(self.subscribers.remove(conn, subscription));
                self.broker.watch(self.subscribers.filter());
                Ok(Response::Count { n })
            }
            // A qd connection turns `Subscribe` into `Command::Subscribe`; other front ends
            // (the dashboard, Faktory) have no way to stream events.
            Request::Subscribe { .. } => Err(WireError::new(
                ErrorCode::InvalidArgument,
                "subscriptions are served on qd protocol connections only; connect with the qd client",
            )),
            other => return self.on_admin(now, conn, id, other),
        };
        Some(result)
    }

    /// The admin requests. Mutations are answered like an ack: their `Persist` effects go
    /// into this round's ticket and the answer waits for its commit (`apply_effects`), so an
    /// OK survives a crash. `None`: answered later from a blocking task (`off_task`).
    fn on_admin(
        &mut self,
        now: Millis,
        conn: ConnId,
        id: u64,
        body: Request,
    ) -> Option<Result<Response, WireError>> {
        let b = &mut self.broker;
        let count = |n: u64| Ok(Response::Count { n });
        let result = match body {
            Request::Queues { after, limit } => {
                let (views, next) = b.queue_views(now, after.as_deref(), admin::page_limit(limit));
                let mut queues: Vec<_> =
                    views.into_iter().map(|v| admin::queue_info(now, v)).collect();
                let next = match admin::fit_frame(&mut queues, self.max_frame) {
                    true => queues.last().map(|q| q.name.clone()),
                    false => next,
                };
                Ok(Response::Queues { queues, next })
            }
            Request::Jobs { queue, state, cursor, limit } => {
                let cursor = cursor.as_ref().map(|c| c.0.as_slice());
                let page = match b.list_jobs(
                    now,
                    &queue,
                    admin::kind(state),
                    cursor,
                    admin::page_limit(limit),
                ) {
                    Ok(page) => page,
                    Err(e) => return Some(Err(e.into())),
                };
                let next = page.next.map(Cursor);
                let mut jobs: Vec<JobSummary> =
                    page.items.into_iter().map(|v| self.row(v)).collect();
                // The last error of failed jobs lives in their stored records.
                if jobs.iter().any(|j| j.state != JobState::Completed && j.attempts_used > 0) {
                    self.off_task(conn, id, move |reader| {
                        admin::fill_errors(&reader, &mut jobs);
                        Ok(Response::Jobs { jobs, next })
                    });
                    return None;
                }
                Ok(Response::Jobs { jobs, next })
            }
            Request::Job { id: job } => {
                // An uncommitted job does not exist yet for anyone but its adder.
                let view = b.job_view(job).filter(|_| !self.overlay.contains_key(&job));
                let Some(view) = view else { return Some(Err(admin::not_found(job))) };
                let started = view.started_at_ms;
                let completed = view.state == JobStateKind::Completed;
                let progress = b.progress(job).cloned();
                let row = self.row(view);
                if completed {
                    Ok(admin::completed_detail(row))
                } else {
                    self.off_task(conn, id, move |reader| {
                        admin::detail(&reader, row, started, progress)
                    });
                    return None;
                }
            }
            Request::Search { queue, state, query, cursor, limit } => {
                return self.search(now, conn, id, &queue, state, query, cursor.as_ref(), limit);
            }
            Request::RetryDead { queue, ids } => count(b.retry_dead(now, &queue, &ids)),
            Request::RetryAllDead { queue, name } => {
                count(b.retry_all_dead(now, &queue, name.as_deref()))
            }
            Request::PurgeDead { queue, older_than_ms } => {
                count(b.purge_dead(now, &queue, older_than_ms))
            }
            Request::Remove { ids } => count(b.remove(now, &ids)),
            Request::Promote { ids } => count(b.promote(now, &ids)),
            Request::Kill { ids } => count(b.kill(now, &ids)),
            Request::Pause { queue } => {
                b.pause(now, &queue).map(|()| Response::Done).map_err(Into::into)
            }
            Request::Resume { queue } => {
                b.resume(now, &queue).map(|()| Response::Done).map_err(Into::into)
            }
            Request::ScheduleUpsert { schedule } => b
                .upsert_schedule(now, *schedule)
                .map(|info| Response::Schedules { schedules: vec![info], next: None })
                .map_err(Into::into),
            Request::ScheduleRemove { name } => count(u64::from(b.remove_schedule(&name))),
            Request::ScheduleRunNow { name } => match b.run_schedule_now(now, &name) {
                Ok(id) => {
                    // Like `Add`: a job found in the overlay is a key's holder in flight.
                    self.reveal = self.overlay.get(&id).map(|o| o.1);
                    Ok(Response::Added { ids: vec![id] })
                }
                Err(e) => Err(e.into()),
            },
            Request::Schedules { after, limit } => {
                let (mut schedules, more) = b.schedules(after.as_deref(), admin::page_limit(limit));
                let more = admin::fit_frame(&mut schedules, self.max_frame) || more;
                let next =
                    if more { schedules.last().map(|s| s.schedule.name.clone()) } else { None };
                Ok(Response::Schedules { schedules, next })
            }
            Request::SetQueueLimits { queue, limits } => {
                b.set_queue_limits(now, &queue, limits).map(|()| Response::Done).map_err(Into::into)
            }
            // The worker requests are answered by `on_request`; a new request kind that
            // lands here was not wired in.
            other => Err(WireError::new(
                ErrorCode::UnknownRequest,
                format!("this server does not serve {other:?}"),
            )),
        };
        Some(result)
    }

    /// `Search`: takes listing pages from the core here (cheap, no disk), at most
    /// [`admin::SEARCH_SCAN_JOBS`] jobs, and leaves reading and matching their payloads to
    /// a blocking task. Pages are a quarter of `limit`, so an answer is at least three
    /// quarters full when that many matches exist within the scan (see `admin::search`).
    #[allow(clippy::too_many_arguments)]
    fn search(
        &mut self,
        now: Millis,
        conn: ConnId,
        id: u64,
        queue: &str,
        state: Option<JobState>,
        query: SearchQuery,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Option<Result<Response, WireError>> {
        let mut at = match admin::SearchAt::decode(state, cursor) {
            Ok(at) => at,
            Err(e) => return Some(Err(e)),
        };
        let limit = admin::page_limit(limit);
        let page_size = limit.div_ceil(4);
        let (mut pages, mut scanned) = (Vec::new(), 0);
        while scanned < admin::SEARCH_SCAN_JOBS && pages.len() < admin::SEARCH_SCAN_PAGES {
            let page =
                match self.broker.list_jobs(now, queue, at.state, at.inner.as_deref(), page_size) {
                    Ok(page) => page,
                    Err(e) => return Some(Err(e.into())),
                };
            scanned += page.items.len();
            let resume = match page.next {
                Some(next) => Some(admin::SearchAt { state: at.state, inner: Some(next) }),
                None => at.next_state(state.is_none()),
            };
            let jobs = page.items.into_iter().map(|v| self.row(v)).collect();
            pages.push(admin::SearchPage { jobs, resume: resume.clone() });
            match resume {
                Some(next) => at = next,
                None => break,
            }
        }
        self.off_task(conn, id, move |reader| Ok(admin::search(&reader, &query, pages, limit)));
        None
    }

    /// A job row, with the client name of the connection holding it when active.
    fn row(&self, view: JobView) -> JobSummary {
        let worker = view.conn.and_then(|c| self.conns.get(&c)).map(|c| c.name.clone());
        admin::summary(view, worker)
    }

    /// Answers request `id` of `conn` from tokio's blocking pool with what `work` computes
    /// from the store. The engine goes on at once; the reply goes straight to the
    /// connection. A panic in `work` is answered `Internal`, so the request is not left
    /// unanswered (which would hold one of the connection's in-flight slots for good).
    fn off_task<F>(&self, conn: ConnId, id: u64, work: F)
    where
        F: FnOnce(StoreReader) -> Result<Response, WireError> + Send + 'static,
    {
        let Some(tx) = self.conns.get(&conn).map(|c| c.replies.clone()) else { return };
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(reader)))
                .unwrap_or_else(|_| {
                    tracing::error!(id, "an admin read panicked; this is a bug in qd");
                    Err(WireError::new(ErrorCode::Internal, "the server failed to read the job"))
                });
            let _ = tx.send(ServerFrame::Response { id, result });
        });
    }

    /// Routes the core's effects of one command. `reply` is that command's answer: held
    /// for the commit if the command changed anything durable, sent now otherwise.
    fn apply_effects(&mut self, reply: Option<Held>) {
        let mut effects = std::mem::take(&mut self.effects);
        self.broker.take_effects(&mut effects);
        let mut persisted = false;
        for effect in effects.drain(..) {
            match effect {
                Effect::Persist(change) => {
                    match &change {
                        Change::Insert(record) => {
                            // The open ticket gets number `next_ticket` when submitted.
                            self.overlay
                                .insert(record.id, (record.payload.clone(), self.next_ticket));
                            self.open.inserted.push(record.id);
                        }
                        Change::Replace { id, payload, .. } => {
                            // A debounced job is uncommitted again until this ticket
                            // commits; its new payload waits here as an insert's does.
                            self.overlay.insert(*id, (payload.clone(), self.next_ticket));
                            self.open.inserted.push(*id);
                        }
                        Change::Fail { id, error, dead, .. } => self.log_failure(*id, error, *dead),
                        _ => {}
                    }
                    self.open_changes.push(change);
                    persisted = true;
                }
                Effect::Event(event) => {
                    // Persist, then announce: the change it reports is in this round's
                    // open ticket (the core emits it right after that change).
                    if self.open_changes.is_empty() {
                        self.publish(&event);
                    } else {
                        self.open.events.push(*event);
                    }
                }
                Effect::Deliver { waiter, leases } => {
                    let jobs = self.leased(leases);
                    self.send(waiter.conn, waiter.request, Ok(Response::Reserved { jobs }));
                }
                Effect::Outcome { waiter, id, outcome } => {
                    let result = match outcome {
                        Some(outcome) => Ok(Response::Outcome { outcome }),
                        None => Err(admin::not_found(id)),
                    };
                    let held = Held { conn: waiter.conn, id: waiter.request, result };
                    // Persist, then reply: the completion or death it reports is among
                    // this round's changes.
                    if self.open_changes.is_empty() {
                        self.send(held.conn, held.id, held.result);
                    } else {
                        self.open.replies.push(held);
                    }
                }
            }
        }
        self.effects = effects;
        let reveal = self.reveal.take();
        if let Some(held) = reply {
            // Wait for this round's ticket when the request changed something, else for
            // the ticket of an uncommitted job its answer names, if any.
            let wait = if persisted { Some(self.next_ticket) } else { reveal };
            match wait {
                Some(t) if t == self.next_ticket => self.open.replies.push(held),
                Some(t) => match self.in_flight.get_mut(&t) {
                    Some(ticket) => ticket.replies.push(held),
                    None => self.send(held.conn, held.id, held.result),
                },
                None => self.send(held.conn, held.id, held.result),
            }
        }
    }

    /// A failed try at debug; a dead-lettering at info, naming the job so an operator can
    /// find it (`qd job ID`) and retry it.
    fn log_failure(&self, id: JobId, error: &crate::model::AttemptError, dead: bool) {
        if dead && tracing::enabled!(tracing::Level::INFO) {
            let (queue, name) = self.broker.job_view(id).map(|v| (v.queue, v.name)).unzip();
            tracing::info!(
                id,
                queue = queue.as_deref().unwrap_or("?"),
                name = name.as_deref().unwrap_or("?"),
                attempt = error.attempt,
                error = %error.message,
                "job dead-lettered"
            );
        } else if !dead {
            tracing::debug!(id, attempt = error.attempt, error = %error.message, "try failed");
        }
    }

    /// Hands this round's changes to the writer as one ticket. With `idle` (no command
    /// waiting) and no ticket in flight, asks the writer to commit them right here
    /// ([`Writer::commit_now`]) and answers at once: at light load a lone request then
    /// costs no hand-off to the writer thread and back (issue 10). Under load a round
    /// seldom finds the queue empty and nothing in flight, and the writer thread keeps
    /// committing one group while the engine builds the next.
    fn submit_round(&mut self, idle: bool) {
        // An inline commit answers its requests, which can open a new round (a delivery
        // of a job that became visible); commit that one too before sleeping.
        while !self.open_changes.is_empty() && self.storage_failure.is_none() {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            let changes = std::mem::take(&mut self.open_changes);
            self.in_flight.insert(ticket, std::mem::take(&mut self.open));
            let Some(writer) = &self.writer else {
                unreachable!("the writer lives until the engine has drained")
            };
            if !(idle && self.in_flight.len() == 1) {
                writer.submit(ticket, changes);
                return;
            }
            match writer.commit_now(ticket, changes) {
                Ok(done) => self.on_committed(done),
                Err(changes) => return writer.submit(ticket, changes),
            }
        }
    }

    fn on_committed(&mut self, done: Committed) {
        if let Err(e) = &done.result {
            tracing::error!(error = %e, "commit failed; stopping");
            self.storage_failure.get_or_insert_with(|| e.to_string());
        }
        for ticket in done.tickets {
            let Some(mut t) = self.in_flight.remove(&ticket) else { continue };
            if done.result.is_ok() {
                // Read-committed delivery: only now may the core hand these jobs out. Their
                // payloads are still in the overlay while the deliveries are built.
                // A job debounced again since is committed by the later ticket only.
                t.inserted.retain(|id| self.overlay.get(id).is_none_or(|o| o.1 == ticket));
                let now = self.clock.now();
                self.broker.commit_added(now, &t.inserted);
                self.apply_effects(None);
            } else {
                t.inserted.retain(|id| self.overlay.get(id).is_none_or(|o| o.1 == ticket));
            }
            for id in &t.inserted {
                self.overlay.remove(id);
            }
            match &done.result {
                Ok(()) => {
                    for held in t.replies {
                        self.send(held.conn, held.id, held.result);
                    }
                    for event in &t.events {
                        self.publish(event);
                    }
                    for (conn, id, job) in t.dead_waits {
                        self.answer_dead_wait(conn, id, job);
                    }
                }
                Err(e) => {
                    let waits = t.dead_waits.into_iter().map(|(conn, id, _)| Held {
                        conn,
                        id,
                        result: Ok(Response::Pong),
                    });
                    // The result is replaced by the storage error.
                    let replies = t.replies.into_iter().chain(waits).collect();
                    self.fail_replies(replies, &e.to_string())
                }
            }
        }
    }

    /// Answers a `Wait` on dead job `job` with its last error, read from the store.
    fn answer_dead_wait(&self, conn: ConnId, id: u64, job: JobId) {
        self.off_task(conn, id, move |reader| {
            let error = match reader.get(job) {
                Ok(Some(record)) => {
                    record.errors.last().map(|e| e.message.clone()).unwrap_or_default()
                }
                Ok(None) => return Err(admin::not_found(job)),
                Err(e) => {
                    return Err(WireError::new(
                        ErrorCode::Storage,
                        format!("cannot read job {job}: {e}; try again"),
                    ))
                }
            };
            Ok(Response::Outcome { outcome: JobOutcome::Dead { error } })
        });
    }

    /// Answers held replies with a storage error instead of their result.
    fn fail_replies(&self, replies: Vec<Held>, failure: &str) {
        for held in replies {
            let err = WireError::new(
                ErrorCode::Storage,
                format!("not stored: {failure}; the server is stopping, retry against it once it is back"),
            );
            self.send(held.conn, held.id, Err(err));
        }
    }

    fn leased(&self, leases: Vec<Lease>) -> Vec<LeasedJob> {
        leases
            .into_iter()
            .filter_map(|l| {
                let payload = match self.overlay.get(&l.id) {
                    Some((p, _)) => p.clone(),
                    None => match self.reader.get(l.id) {
                        Ok(Some(record)) => record.payload,
                        Ok(None) => {
                            tracing::error!(id = l.id, "leased job has no stored record; skipping it");
                            return None;
                        }
                        Err(e) => {
                            tracing::error!(id = l.id, error = %e, "cannot read leased job's payload; it will run again when its lease expires");
                            return None;
                        }
                    },
                };
                let mut job = LeasedJob::new(
                    l.id,
                    l.queue.to_string(),
                    l.name.to_string(),
                    payload,
                    l.token,
                    l.deadline_ms,
                );
                job.attempt = l.attempt;
                job.max_attempts = l.max_attempts;
                job.created_at_ms = l.created_at_ms;
                job.group = l.group.as_deref().map(str::to_string);
                job.timeout_ms = l.timeout_ms;
                Some(job)
            })
            .collect()
    }

    /// Hands one committed lifecycle event to its subscribers (bounded: `events.rs`).
    fn publish(&mut self, event: &JobEvent) {
        let conns = &self.conns;
        self.subscribers.publish(event, |conn, frame| {
            if let Some(c) = conns.get(&conn) {
                let _ = c.replies.send(frame);
            }
        });
    }

    fn send(&self, conn: ConnId, id: u64, result: Result<Response, WireError>) {
        if let Some(c) = self.conns.get(&conn) {
            // A closed channel means the connection is going away; its Disconnect follows.
            let _ = c.replies.send(ServerFrame::Response { id, result });
        }
    }
}

#[cfg(test)]
mod tests {
    //! The engine against an in-memory store that can be told to fail: replies wait for the
    //! commit, and a failed commit is answered with an error and stops the engine.

    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use bytes::Bytes;
    use qd_protocol::{JobOptions, NewJob};

    use super::*;
    use crate::broker::BrokerConfig;
    use crate::store::testutil::{FakeState, FakeStore};
    use crate::store::{Durability, Store};

    struct Harness {
        store: Arc<FakeState>,
        commands: mpsc::Sender<Command>,
        replies: mpsc::UnboundedReceiver<ServerFrame>,
        engine: tokio::task::JoinHandle<Result<(), EngineError>>,
        shutdown: CancellationToken,
    }

    async fn harness() -> Harness {
        harness_with(Durability::Fsync).await
    }

    async fn harness_with(durability: Durability) -> Harness {
        let fake = FakeStore::default();
        let store = fake.0.clone();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let reader = fake.reader();
        let writer = Writer::spawn(Box::new(fake), durability, Duration::from_millis(5), done_tx);
        let engine = Engine::new(Broker::new(BrokerConfig::default()), reader, writer, done_rx);
        let (commands, rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let engine = tokio::spawn(engine.run(rx, shutdown.clone()));
        let (tx, replies) = mpsc::unbounded_channel();
        let connect = Command::Connect { conn: 1, client_name: "test".into(), replies: tx };
        commands.send(connect).await.unwrap();
        Harness { store, commands, replies, engine, shutdown }
    }

    fn add(id: u64, payload: &'static [u8]) -> Command {
        let job = NewJob {
            name: "x".into(),
            payload: Bytes::from_static(payload),
            options: JobOptions::default(),
        };
        Command::Request { conn: 1, id, body: Request::Add { queue: "q".into(), jobs: vec![job] } }
    }

    #[tokio::test]
    async fn add_is_answered_after_its_commit_and_reserve_sees_the_payload() {
        let mut h = harness().await;
        h.commands.send(add(7, b"hello")).await.unwrap();
        let Some(ServerFrame::Response { id: 7, result: Ok(Response::Added { ids }) }) =
            h.replies.recv().await
        else {
            panic!("expected Added");
        };
        assert!(h.store.records.lock().unwrap().contains_key(&ids[0]), "stored before the reply");
        let reserve = Request::Reserve { queues: vec!["q".into()], max: 1, timeout_ms: 0 };
        h.commands.send(Command::Request { conn: 1, id: 8, body: reserve }).await.unwrap();
        let Some(ServerFrame::Response { id: 8, result: Ok(Response::Reserved { jobs }) }) =
            h.replies.recv().await
        else {
            panic!("expected Reserved");
        };
        assert_eq!(&jobs[0].payload[..], b"hello");
        h.shutdown.cancel();
        h.engine.await.unwrap().unwrap();
    }

    /// Issue 10: in `interval` mode a lone round is committed on the engine's own task
    /// (`Writer::commit_now`). The answers still come after the store has the change, and
    /// the delivery the commit makes possible (a parked reserve's) is made at once.
    #[tokio::test]
    async fn an_inline_commit_answers_the_add_and_delivers_to_a_parked_reserve() {
        let mut h = harness_with(Durability::Interval).await;
        let reserve = Request::Reserve { queues: vec!["q".into()], max: 1, timeout_ms: 60_000 };
        h.commands.send(request(1, reserve)).await.unwrap();
        h.commands.send(add(2, b"inline")).await.unwrap();
        let mut got = [next_reply(&mut h).await, next_reply(&mut h).await];
        got.sort_by_key(|r| r.0);
        let (_, Ok(Response::Reserved { jobs })) = &got[0] else { panic!("{got:?}") };
        assert_eq!(&jobs[0].payload[..], b"inline");
        let (_, Ok(Response::Added { ids })) = &got[1] else { panic!("{got:?}") };
        assert!(h.store.records.lock().unwrap().contains_key(&ids[0]), "stored before the reply");
        let ack = Request::Ack { leases: vec![LeaseRef { id: jobs[0].id, token: jobs[0].token }] };
        h.commands.send(request(3, ack)).await.unwrap();
        assert_eq!(next_reply(&mut h).await, (3, Ok(Response::Acked { failed: vec![] })));
        assert!(h.store.records.lock().unwrap().is_empty(), "the ack is stored too");
        h.shutdown.cancel();
        h.engine.await.unwrap().unwrap();
    }

    /// Holds the fake store's lock on another thread, so the writer's next commit blocks
    /// until the returned sender is dropped (or sent to).
    fn block_commits(store: &Arc<FakeState>) -> std::sync::mpsc::Sender<()> {
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let store = store.clone();
        std::thread::spawn(move || {
            let _guard = store.records.lock().unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        locked_rx.recv().unwrap();
        release_tx
    }

    fn request(id: u64, body: Request) -> Command {
        Command::Request { conn: 1, id, body }
    }

    async fn next_reply(h: &mut Harness) -> (u64, Result<Response, WireError>) {
        match tokio::time::timeout(Duration::from_secs(10), h.replies.recv()).await {
            Ok(Some(ServerFrame::Response { id, result })) => (id, result),
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// Issue 8 (read-committed delivery): a parked reserve must not get a job while the
    /// commit holding its add is still running; a crash then would forget a job that a
    /// worker is already doing.
    #[tokio::test]
    async fn a_reserve_never_gets_a_job_whose_add_is_not_committed() {
        let mut h = harness().await;
        let reserve = Request::Reserve { queues: vec!["q".into()], max: 1, timeout_ms: 60_000 };
        h.commands.send(request(1, reserve)).await.unwrap();
        let release = block_commits(&h.store);
        h.commands.send(add(2, b"slow")).await.unwrap();
        // Commands are handled in order: a delivery made at the add would come before this.
        h.commands.send(request(3, Request::Ping)).await.unwrap();
        let (id, result) = next_reply(&mut h).await;
        assert_eq!((id, result), (3, Ok(Response::Pong)), "nothing before the commit");

        drop(release);
        let mut got = [next_reply(&mut h).await, next_reply(&mut h).await];
        got.sort_by_key(|r| r.0);
        assert!(matches!(&got[0], (1, Ok(Response::Reserved { jobs })) if jobs.len() == 1));
        assert!(matches!(&got[1], (2, Ok(Response::Added { .. }))));
        h.shutdown.cancel();
        h.engine.await.unwrap().unwrap();
    }

    /// Issue 8: an add whose idempotency key matches a job still being committed answers
    /// with that job's id, so it must wait for that commit as well.
    #[tokio::test]
    async fn an_add_naming_an_uncommitted_job_waits_for_its_commit() {
        let mut h = harness().await;
        let keyed = |id| {
            let job = NewJob {
                name: "x".into(),
                payload: Bytes::from_static(b"k"),
                options: JobOptions { key: Some("k1".into()), ..JobOptions::default() },
            };
            request(id, Request::Add { queue: "q".into(), jobs: vec![job] })
        };
        let release = block_commits(&h.store);
        h.commands.send(keyed(1)).await.unwrap();
        h.commands.send(keyed(2)).await.unwrap();
        h.commands.send(request(3, Request::Job { id: 1 })).await.unwrap();
        h.commands.send(request(4, Request::Ping)).await.unwrap();
        let (id, result) = next_reply(&mut h).await;
        assert_eq!(id, 3, "the uncommitted job is invisible: {result:?}");
        assert_eq!(result.unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(next_reply(&mut h).await, (4, Ok(Response::Pong)), "both adds wait");

        drop(release);
        let mut got = [next_reply(&mut h).await, next_reply(&mut h).await];
        got.sort_by_key(|r| r.0);
        assert_eq!(got[0], (1, Ok(Response::Added { ids: vec![1] })));
        assert_eq!(got[1], (2, Ok(Response::Added { ids: vec![1] })));
        h.shutdown.cancel();
        h.engine.await.unwrap().unwrap();
    }

    /// Issue 9: an event announces a change only once it is committed, and never one whose
    /// commit failed.
    #[tokio::test]
    async fn a_subscriber_hears_of_an_add_only_after_its_commit() {
        let mut h = harness().await;
        let queued = Arc::new(AtomicUsize::new(0));
        let subscribe = Command::Subscribe { conn: 1, id: 1, queues: vec![], queued };
        h.commands.send(subscribe).await.unwrap();
        assert_eq!(next_reply(&mut h).await, (1, Ok(Response::Done)));
        let release = block_commits(&h.store);
        h.commands.send(add(2, b"x")).await.unwrap();
        h.commands.send(request(3, Request::Ping)).await.unwrap();
        match h.replies.recv().await {
            Some(ServerFrame::Response { id: 3, .. }) => {}
            other => panic!("nothing before the commit, got {other:?}"),
        }
        drop(release);
        let mut frames = Vec::new();
        while frames.len() < 2 {
            let frame = tokio::time::timeout(Duration::from_secs(10), h.replies.recv()).await;
            frames.push(frame.unwrap().unwrap());
        }
        assert!(matches!(&frames[0], ServerFrame::Response { id: 2, result: Ok(_) }));
        assert!(
            matches!(&frames[1], ServerFrame::Event { subscription: 1, event }
                if event.kind == qd_protocol::EventKind::Added && event.queue == "q"),
            "{frames:?}"
        );

        // A commit that fails announces nothing.
        h.store.fail_always.store(true, Ordering::SeqCst);
        h.commands.send(add(4, b"lost")).await.unwrap();
        match h.replies.recv().await {
            Some(ServerFrame::Response { id: 4, result: Err(_) }) => {}
            other => panic!("expected the storage error, got {other:?}"),
        }
        let _ = h.engine.await;
        while let Ok(frame) = h.replies.try_recv() {
            assert!(!matches!(frame, ServerFrame::Event { .. }), "announced a lost add: {frame:?}");
        }
    }

    #[tokio::test]
    async fn a_failed_commit_is_never_answered_ok_and_stops_the_engine() {
        let mut h = harness().await;
        h.store.fail_always.store(true, Ordering::SeqCst);
        h.commands.send(add(1, b"lost")).await.unwrap();
        match h.replies.recv().await {
            Some(ServerFrame::Response { id: 1, result: Err(e) }) => {
                assert_eq!(e.code, ErrorCode::Storage);
                assert!(e.message.contains("no space left"), "{}", e.message);
            }
            other => panic!("expected a Storage error, got {other:?}"),
        }
        let stopped =
            tokio::time::timeout(Duration::from_secs(10), h.engine).await.unwrap().unwrap();
        let err = stopped.unwrap_err();
        assert!(matches!(err, EngineError::StorageFailed { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("start it again"), "says what to do: {err}");
        assert!(h.shutdown.is_cancelled(), "the whole server stops with the engine");
    }
}
