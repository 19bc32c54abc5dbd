//! [`Client`]: the typed request API (add, reserve, ack, nack, touch, stats) over one shared
//! [`Connection`], and [`ClientBuilder`] for its settings.
//!
//! This file validates input (so bad input fails without a round trip) and maps each answer
//! to its type; sockets, pipelining and reconnecting are `connection.rs`'s business.

use std::sync::Arc;
use std::time::Duration;

use qd_protocol::message::{LeaseRef, NackOutcome, Welcome};
use qd_protocol::{
    validate_lease, validate_queue_name, JobId, LeasedJob, QueueStats, Request, Response,
    RetryHint, WireError, MAX_ERROR_TEXT,
};
use serde::Serialize;

use crate::connection::{Config, Connection};
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
}

impl ClientBuilder {
    /// Name shown in the server's logs and dashboard (default `qd-client`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Credentials, when the server requires them.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
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
    pub async fn connect(self) -> Result<Client, Error> {
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
                token: None,
                connect_timeout: Duration::from_secs(5),
                request_timeout: Some(Duration::from_secs(30)),
                reconnect_for: Duration::from_secs(10),
            },
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

    /// Job counts of every queue.
    pub async fn stats(&self) -> Result<Vec<QueueStats>, Error> {
        match self.conn.call(Request::Stats, Duration::ZERO).await? {
            Response::Stats { queues } => Ok(queues),
            other => Err(unexpected("Stats", &other)),
        }
    }
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
