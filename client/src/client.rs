//! [`Client`]: the typed request API (add, reserve, ack, nack, touch, stats, ping, and the
//! admin requests) over one shared [`Connection`], and [`ClientBuilder`] for its settings
//! (name, secret and role, TLS, keepalive, timeouts).
//!
//! This file validates input (so bad input fails without a round trip) and maps each answer
//! to its type; sockets, pipelining and reconnecting are `connection.rs`'s business.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qd_protocol::message::{LeaseRef, NackOutcome, Welcome};
use qd_protocol::schedule::validate_schedule_name;
use qd_protocol::{
    validate_lease, validate_queue_name, Cursor, JobDetail, JobId, JobOutcome, JobState,
    JobSummary, LeasedJob, QueueInfo, QueueLimits, QueueStats, Request, Response, RetryHint, Role,
    Schedule, ScheduleInfo, SearchQuery, WireError, MAX_ERROR_TEXT, MAX_PROGRESS, MAX_RESULT,
};
use serde::Serialize;

use crate::connection::{Config, Connection, Secret};
use crate::subscription::Subscription;
use crate::tls::TlsOptions;

/// Queues per page when `stats` and `queues` page through all of them.
const PAGE: u32 = 500;
/// The environment variable [`ClientBuilder::secret_from_env`] reads.
pub const SECRET_ENV: &str = "QD_SECRET";
use crate::error::Error;
use crate::job::{millis, AsLease, Job};

/// A handle to a qd server. Cheap to clone (an `Arc`); all clones share one TCP connection
/// on which requests are pipelined, so many tasks can use one `Client` concurrently.
///
/// If the connection drops, requests in flight fail with [`Error::Disconnected`] — the
/// server may or may not have applied them — and the next request reconnects.
#[derive(Debug, Clone)]
pub struct Client {
    conn: Arc<Connection>,
}

/// Settings for [`Client`]; start with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    config: Config,
    tls: Option<TlsOptions>,
}

impl ClientBuilder {
    /// Name shown in the server's logs and dashboard (default `qd-client`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The shared secret, when the server requires one (`qd serve --secret`, or
    /// `--admin-secret` for the admin role). It never crosses the wire: the client proves
    /// it knows it by answering the server's challenge.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.config.secret = Some(Secret(Arc::from(secret.as_ref())));
        self
    }

    /// Takes the secret from the `QD_SECRET` environment variable, unless one was given
    /// with [`secret`](Self::secret) (explicit settings win).
    pub fn secret_from_env(self) -> Self {
        match std::env::var_os(SECRET_ENV) {
            Some(v) if self.config.secret.is_none() => self.secret(v.to_string_lossy().as_bytes()),
            _ => self,
        }
    }

    /// The role to prove when the server asks for a secret (default [`Role::Worker`]).
    /// Admin requests need [`Role::Admin`] and the server's admin secret.
    pub fn role(mut self, role: Role) -> Self {
        self.config.role = role;
        self
    }

    /// Shorthand for `role(Role::Admin)`.
    pub fn admin(self) -> Self {
        self.role(Role::Admin)
    }

    /// Speaks TLS to the server, trusting the CA in `tls`.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// After this long without sending anything, send a `Ping` so that the server's idle
    /// timeout does not close a healthy connection (default 30 s; `None` never pings).
    pub fn idle_ping(mut self, every: Option<Duration>) -> Self {
        self.config.idle_ping = every;
        self
    }

    /// How long one request may wait for its answer (default 30 s; a reserve gets its own
    /// wait on top). `None` waits forever.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// How long one connection attempt (TCP connect plus handshake) may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// After the connection drops, how long the next request keeps trying to reconnect
    /// (backing off from 50 ms to 2 s between tries) before failing with
    /// [`Error::Connect`] (default 10 s).
    pub fn reconnect_for(mut self, window: Duration) -> Self {
        self.config.reconnect_for = window;
        self
    }

    /// Connects and does the handshake, once: a wrong address or a server that is down
    /// fails at once with [`Error::Connect`], rather than after the reconnect window.
    pub async fn connect(mut self) -> Result<Client, Error> {
        if let Some(tls) = &self.tls {
            self.config.tls = Some(tls.connector(&self.config.addr)?);
        }
        let conn = Connection::open(self.config).await?;
        Ok(Client { conn: Arc::new(conn) })
    }
}

impl Client {
    /// Connects to `addr` (`host:port`) with default settings. See [`ClientBuilder`].
    pub async fn connect(addr: impl Into<String>) -> Result<Client, Error> {
        Client::builder(addr).connect().await
    }

    /// Settings for a client of the server at `addr` (`host:port`).
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            config: Config {
                addr: addr.into(),
                name: "qd-client".into(),
                secret: None,
                role: Role::Worker,
                tls: None,
                idle_ping: Some(Duration::from_secs(30)),
                connect_timeout: Duration::from_secs(5),
                request_timeout: Some(Duration::from_secs(30)),
                reconnect_for: Duration::from_secs(10),
            },
            tls: None,
        }
    }

    /// The server address this client talks to.
    pub fn addr(&self) -> &str {
        &self.conn.config().addr
    }

    /// What the server said in its `Welcome` (version, limits), while connected.
    pub fn server_info(&self) -> Option<Welcome> {
        self.conn.welcome()
    }

    /// Adds one job to `queue` (created on first use) and returns its id — or, when the job
    /// has a key that is already pending, the pending job's id.
    ///
    /// On [`Error::Disconnected`] or [`Error::Timeout`] the job may or may not have been
    /// added; set a [`key`](Job::key) to make retrying safe.
    pub async fn add(&self, queue: &str, job: Job) -> Result<JobId, Error> {
        let ids = self.add_bulk(queue, vec![job]).await?;
        ids.into_iter().next().ok_or_else(|| protocol("Added with no id for one job"))
    }

    /// Adds a job whose payload is `value` as JSON. See [`Client::add`] and [`Job::json`].
    pub async fn add_json<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        name: &str,
        value: &T,
    ) -> Result<JobId, Error> {
        self.add(queue, Job::json(name, value)?).await
    }

    /// Adds many jobs to one queue in one request, all or nothing; returns their ids in
    /// order. Keep a batch well under the server's frame limit (16 MiB by default).
    pub async fn add_bulk(&self, queue: &str, jobs: Vec<Job>) -> Result<Vec<JobId>, Error> {
        validate_queue_name(queue).map_err(Error::invalid)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        for (i, job) in jobs.iter().enumerate() {
            job.validate().map_err(|e| match e {
                Error::Invalid { code, message } if jobs.len() > 1 => {
                    Error::Invalid { code, message: format!("job {i}: {message}") }
                }
                e => e,
            })?;
        }
        let want = jobs.len();
        let body = Request::Add {
            queue: queue.to_owned(),
            jobs: jobs.into_iter().map(Into::into).collect(),
        };
        match self.conn.call(body, Duration::ZERO).await? {
            Response::Added { ids } if ids.len() == want => Ok(ids),
            Response::Added { ids } => {
                Err(protocol(&format!("{} ids for {want} added jobs", ids.len())))
            }
            other => Err(unexpected("Added", &other)),
        }
    }

    /// Leases up to `max` jobs from the first of `queues` (in that order) that has ready
    /// ones, waiting up to `timeout` for one to become ready. An empty answer means the wait
    /// ran out. Each job must then be acked, nacked, or touched before its
    /// `lease_deadline_ms`.
    pub async fn reserve<Q: AsRef<str>>(
        &self,
        queues: &[Q],
        max: u32,
        timeout: Duration,
    ) -> Result<Vec<LeasedJob>, Error> {
        if queues.is_empty() {
            return Err(Error::invalid_arg("reserve needs at least one queue name"));
        }
        if max == 0 {
            return Err(Error::invalid_arg("reserve max is 0; ask for at least 1 job"));
        }
        let mut names = Vec::with_capacity(queues.len());
        for q in queues {
            validate_queue_name(q.as_ref()).map_err(Error::invalid)?;
            names.push(q.as_ref().to_owned());
        }
        let body = Request::Reserve { queues: names, max, timeout_ms: millis(timeout) };
        match self.conn.call(body, timeout).await? {
            Response::Reserved { jobs } => Ok(jobs),
            other => Err(unexpected("Reserved", &other)),
        }
    }

    /// Completes a job. Fails with a lease-lost error ([`Error::is_lease_lost`]) when the
    /// lease expired or was released: the job will be (or was) delivered again.
    pub async fn ack(&self, job: &impl AsLease) -> Result<(), Error> {
        let failed = self.ack_many(std::slice::from_ref(job)).await?;
        match failed.into_iter().next() {
            None => Ok(()),
            Some((_, e)) => Err(Error::server(e)),
        }
    }

    /// Completes a job with a result (at most [`MAX_RESULT`] bytes) that producers waiting
    /// on it ([`Client::wait`]) receive. The server keeps results in memory, in the queue's
    /// ring of recent completions: for small answers, not bulk data. Fails like
    /// [`Client::ack`] when the lease is lost.
    pub async fn ack_with_result(
        &self,
        job: &impl AsLease,
        result: impl Into<bytes::Bytes>,
    ) -> Result<(), Error> {
        let result = result.into();
        if result.len() > MAX_RESULT {
            return Err(Error::invalid_arg(format!(
                "the result is {} bytes, more than the {MAX_RESULT} a result may have; store \
                 large output elsewhere and return a reference to it",
                result.len()
            )));
        }
        let body = Request::AckWithResult { lease: job.lease(), result };
        match self.conn.call(body, Duration::ZERO).await? {
            Response::Acked { failed } => match failed.into_iter().next() {
                None => Ok(()),
                Some((_, e)) => Err(Error::server(e)),
            },
            other => Err(unexpected("Acked", &other)),
        }
    }

    /// Waits up to `timeout` for job `id` to complete or die: [`JobOutcome::Completed`]
    /// with its result, [`JobOutcome::Dead`] with its last error (`expired` when it did
    /// not start in time), or [`JobOutcome::Pending`] when the wait ran out. Answered at
    /// once when the job already ended; a not-found error when the server does not know
    /// the job (a completed job is known while its queue's completed ring holds it).
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<JobOutcome, Error> {
        let body = Request::Wait { id, timeout_ms: millis(timeout) };
        match self.conn.call(body, timeout).await? {
            Response::Outcome { outcome } => Ok(outcome),
            other => Err(unexpected("Outcome", &other)),
        }
    }

    /// Streams the lifecycle events (added, completed, failed, dead-lettered, expired) of
    /// `queues`, or of every queue when empty, from now on; see [`Subscription`] for lost
    /// connections and slow readers. Events are sent once the change is durable, and
    /// never replayed.
    ///
    /// ```no_run
    /// # async fn f(client: qd_client::Client) -> Result<(), qd_client::Error> {
    /// use futures::StreamExt;
    /// use qd_client::{Event, EventKind};
    /// let mut events = client.subscribe(["emails"]).await?;
    /// while let Some(event) = events.next().await {
    ///     match event? {
    ///         Event::Job(e) if matches!(e.kind, EventKind::DeadLettered { .. }) => {
    ///             println!("job {} of {} died", e.id, e.queue)
    ///         }
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<Q: AsRef<str>>(
        &self,
        queues: impl IntoIterator<Item = Q>,
    ) -> Result<Subscription, Error> {
        let mut names = Vec::new();
        for q in queues {
            validate_queue_name(q.as_ref()).map_err(Error::invalid)?;
            names.push(q.as_ref().to_owned());
        }
        Subscription::start(self.conn.clone(), names).await
    }

    /// Completes many jobs in one request. Returns the leases that could not be acked, with
    /// the reason; every other one was acked.
    pub async fn ack_many<L: AsLease>(&self, jobs: &[L]) -> Result<Vec<(JobId, WireError)>, Error> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let leases: Vec<LeaseRef> = jobs.iter().map(AsLease::lease).collect();
        match self.conn.call(Request::Ack { leases }, Duration::ZERO).await? {
            Response::Acked { failed } => Ok(failed),
            other => Err(unexpected("Acked", &other)),
        }
    }

    /// Reports a failed try with `error` (cut to 4 KiB). `retry` chooses between the job's
    /// backoff, a given delay, or dead-lettering it now. Returns what became of the job.
    pub async fn nack(
        &self,
        job: &impl AsLease,
        error: impl Into<String>,
        retry: RetryHint,
    ) -> Result<NackOutcome, Error> {
        let body = Request::Nack { lease: job.lease(), error: cut(error.into()), retry };
        match self.conn.call(body, Duration::ZERO).await? {
            Response::Nacked { outcome } => Ok(outcome),
            other => Err(unexpected("Nacked", &other)),
        }
    }

    /// Extends a lease by `lease` from now (the job's own lease duration when `None`).
    /// Returns the new deadline in unix ms.
    pub async fn touch(&self, job: &impl AsLease, lease: Option<Duration>) -> Result<u64, Error> {
        let lease_ms = lease.map(millis);
        if let Some(ms) = lease_ms {
            validate_lease(ms).map_err(Error::invalid)?;
        }
        let body = Request::Touch { lease: job.lease(), lease_ms };
        match self.conn.call(body, Duration::ZERO).await? {
            Response::Touched { lease_deadline_ms } => Ok(lease_deadline_ms),
            other => Err(unexpected("Touched", &other)),
        }
    }

    /// Puts a leased job back to run `delay` from now without using an attempt (the lease
    /// ends; no failure is recorded). Returns the job's new run time in unix ms.
    pub async fn snooze(&self, job: &impl AsLease, delay: Duration) -> Result<u64, Error> {
        let body = Request::Snooze { lease: job.lease(), delay_ms: millis(delay) };
        match self.conn.call(body, Duration::ZERO).await? {
            Response::Nacked { outcome: NackOutcome::Retrying { run_at_ms } } => Ok(run_at_ms),
            other => Err(unexpected("Nacked", &other)),
        }
    }

    /// Reports a running job's progress (a number or small JSON, at most
    /// [`qd_protocol::MAX_PROGRESS`] bytes), shown to operators in the job's detail until the
    /// try ends. Each report replaces the previous one.
    pub async fn progress(&self, job: &impl AsLease, progress: Bytes) -> Result<(), Error> {
        if progress.len() > MAX_PROGRESS {
            return Err(Error::invalid_arg(format!(
                "progress is {} bytes; report at most {MAX_PROGRESS} (a number or a small JSON object)",
                progress.len()
            )));
        }
        let body = Request::Progress { lease: job.lease(), progress };
        match self.conn.call(body, Duration::ZERO).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("Done", &other)),
        }
    }

    /// Job counts of every queue, sorted by name (fetched a page at a time).
    pub async fn stats(&self) -> Result<Vec<QueueStats>, Error> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let body = Request::Stats { after: after.take(), limit: PAGE };
            match self.conn.call(body, Duration::ZERO).await? {
                Response::Stats { queues, next } => {
                    all.extend(queues);
                    match next {
                        Some(n) => after = Some(n),
                        None => return Ok(all),
                    }
                }
                other => return Err(unexpected("Stats", &other)),
            }
        }
    }

    /// One round trip to the server; returns how long it took.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = tokio::time::Instant::now();
        match self.conn.call(Request::Ping, Duration::ZERO).await? {
            Response::Pong => Ok(start.elapsed()),
            other => Err(unexpected("Pong", &other)),
        }
    }

    // Admin requests: the connection needs the admin role (ClientBuilder::admin and the
    // server's admin secret), or they fail with ErrorCode::Forbidden.

    /// Every queue with its counts, pause state and last hour of history, sorted by name.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let body = Request::Queues { after: after.take(), limit: PAGE };
            match self.conn.call(body, Duration::ZERO).await? {
                Response::Queues { queues, next } => {
                    all.extend(queues);
                    match next {
                        Some(n) => after = Some(n),
                        None => return Ok(all),
                    }
                }
                other => return Err(unexpected("Queues", &other)),
            }
        }
    }

    /// One page of up to `limit` jobs of `queue` in `state`, starting at `cursor` (the
    /// first page when `None`; pass the returned page's `next` for the following one).
    pub async fn jobs(
        &self,
        queue: &str,
        state: JobState,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<JobPage, Error> {
        validate_queue_name(queue).map_err(Error::invalid)?;
        let body = Request::Jobs { queue: queue.to_owned(), state, cursor, limit };
        self.job_page(body).await
    }

    /// One job in full (payload, options, failures). [`Error::is_not_found`] when unknown.
    pub async fn job(&self, id: JobId) -> Result<JobDetail, Error> {
        match self.conn.call(Request::Job { id }, Duration::ZERO).await? {
            Response::Job { job } => Ok(*job),
            other => Err(unexpected("Job", &other)),
        }
    }

    /// One page of jobs of `queue` (in `state`, or any state) whose payload matches
    /// `query`; paged like [`jobs`](Self::jobs).
    pub async fn search(
        &self,
        queue: &str,
        state: Option<JobState>,
        query: SearchQuery,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<JobPage, Error> {
        validate_queue_name(queue).map_err(Error::invalid)?;
        let body = Request::Search { queue: queue.to_owned(), state, query, cursor, limit };
        self.job_page(body).await
    }

    /// Moves these dead jobs of `queue` back to ready; returns how many moved.
    pub async fn retry_dead(&self, queue: &str, ids: &[JobId]) -> Result<u64, Error> {
        validate_queue_name(queue).map_err(Error::invalid)?;
        self.count(Request::RetryDead { queue: queue.to_owned(), ids: ids.to_vec() }).await
    }

    /// Moves every dead job of `queue` (only those named `name`, when given) back to ready;
    /// returns how many moved.
    pub async fn retry_all_dead(&self, queue: &str, name: Option<&str>) -> Result<u64, Error> {
        validate_queue_name(queue).map_err(Error::invalid)?;
        let name = name.map(str::to_owned);
        self.count(Request::RetryAllDead { queue: queue.to_owned(), name }).await
    }

    /// Deletes the dead jobs of `queue` that died more than `older_than` ago (all when
    /// `None`); returns how many.
    pub async fn purge_dead(
        &self,
        queue: &str,
        older_than: Option<Duration>,
    ) -> Result<u64, Error> {
        validate_queue_name(queue).map_err(Error::invalid)?;
        let older_than_ms = older_than.map(millis);
        self.count(Request::PurgeDead { queue: queue.to_owned(), older_than_ms }).await
    }

    /// Deletes these jobs (active ones are skipped); returns how many were deleted.
    pub async fn remove(&self, ids: &[JobId]) -> Result<u64, Error> {
        self.count(Request::Remove { ids: ids.to_vec() }).await
    }

    /// Makes these delayed jobs ready now; returns how many were.
    pub async fn promote(&self, ids: &[JobId]) -> Result<u64, Error> {
        self.count(Request::Promote { ids: ids.to_vec() }).await
    }

    /// Moves these waiting jobs (ready or delayed) to their queue's dead set now; returns
    /// how many moved. Active, dead and unknown ids are skipped; `retry_dead` undoes it.
    pub async fn kill(&self, ids: &[JobId]) -> Result<u64, Error> {
        self.count(Request::Kill { ids: ids.to_vec() }).await
    }

    /// Stops reserves from taking jobs of `queue` (adds still go in).
    pub async fn pause(&self, queue: &str) -> Result<(), Error> {
        validate_queue_name(queue).map_err(Error::invalid)?;
        self.done(Request::Pause { queue: queue.to_owned() }).await
    }

    /// Replaces `queue`'s flow limits (rate, concurrency, per-group concurrency and rate):
    /// a limit left `None` is lifted. Persisted; survives restarts.
    pub async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<(), Error> {
        validate_queue_name(queue).map_err(Error::invalid)?;
        limits.validate().map_err(Error::invalid)?;
        self.done(Request::SetQueueLimits { queue: queue.to_owned(), limits }).await
    }

    /// Lets reserves take jobs of a paused `queue` again.
    pub async fn resume(&self, queue: &str) -> Result<(), Error> {
        validate_queue_name(queue).map_err(Error::invalid)?;
        self.done(Request::Resume { queue: queue.to_owned() }).await
    }

    /// Creates or replaces the named schedule (its spec, queue and job template) and
    /// returns it as stored, with its next fire time. Re-setting the same spec keeps the
    /// schedule's clock (its anchor and last fire), so it is safe to call at every start.
    pub async fn upsert_schedule(&self, schedule: Schedule) -> Result<ScheduleInfo, Error> {
        schedule.validate().map_err(Error::invalid)?;
        match self
            .conn
            .call(Request::ScheduleUpsert { schedule: Box::new(schedule) }, Duration::ZERO)
            .await?
        {
            Response::Schedules { mut schedules, .. } if schedules.len() == 1 => {
                Ok(schedules.remove(0))
            }
            other => Err(unexpected("Schedules", &other)),
        }
    }

    /// Deletes the named schedule (jobs it already added stay); returns whether it existed.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool, Error> {
        validate_schedule_name(name).map_err(Error::invalid)?;
        Ok(self.count(Request::ScheduleRemove { name: name.to_owned() }).await? > 0)
    }

    /// Fires the named schedule now ("run now"): adds one job from its template and
    /// returns its id. The schedule's next tick stays where it was. An unknown name is an
    /// `InvalidArgument` error from the server.
    pub async fn run_schedule_now(&self, name: &str) -> Result<JobId, Error> {
        validate_schedule_name(name).map_err(Error::invalid)?;
        match self
            .conn
            .call(Request::ScheduleRunNow { name: name.to_owned() }, Duration::ZERO)
            .await?
        {
            Response::Added { ids } if ids.len() == 1 => Ok(ids[0]),
            other => Err(unexpected("Added", &other)),
        }
    }

    /// Every schedule, in name order (fetched a page at a time).
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>, Error> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let body = Request::Schedules { after: after.take(), limit: PAGE };
            match self.conn.call(body, Duration::ZERO).await? {
                Response::Schedules { schedules, next } => {
                    all.extend(schedules);
                    match next {
                        Some(n) => after = Some(n),
                        None => return Ok(all),
                    }
                }
                other => return Err(unexpected("Schedules", &other)),
            }
        }
    }

    async fn job_page(&self, body: Request) -> Result<JobPage, Error> {
        match self.conn.call(body, Duration::ZERO).await? {
            Response::Jobs { jobs, next } => Ok(JobPage { jobs, next }),
            other => Err(unexpected("Jobs", &other)),
        }
    }

    async fn count(&self, body: Request) -> Result<u64, Error> {
        match self.conn.call(body, Duration::ZERO).await? {
            Response::Count { n } => Ok(n),
            other => Err(unexpected("Count", &other)),
        }
    }

    async fn done(&self, body: Request) -> Result<(), Error> {
        match self.conn.call(body, Duration::ZERO).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("Done", &other)),
        }
    }
}

/// One page of a job list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Cuts error text to the protocol's limit at a char boundary (the server would cut it too,
/// but a megabyte of stack trace should not cross the network first).
fn cut(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn protocol(what: &str) -> Error {
    Error::Protocol(what.to_owned())
}

fn unexpected(wanted: &str, got: &Response) -> Error {
    let kind = format!("{got:?}");
    let kind = kind.split([' ', '{', '(']).next().unwrap_or("?");
    Error::Protocol(format!("expected a {wanted} answer, got {kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_char_boundaries() {
        let s = "é".repeat(MAX_ERROR_TEXT);
        let c = cut(s);
        assert!(c.len() <= MAX_ERROR_TEXT && c.len() >= MAX_ERROR_TEXT - 1);
        assert_eq!(cut("short".into()), "short");
    }
}
