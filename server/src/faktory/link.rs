//! The Faktory front end's one connection into the engine, and the leases it holds by `jid`.
//!
//! Faktory ties no reservation to a TCP connection: its Node, Go and Ruby clients FETCH on
//! one pooled connection and ACK on another, and Node closes idle pooled connections while
//! their jobs still run. qd fails every lease of an engine connection the moment that
//! connection goes. So every Faktory socket talks to the engine through this one
//! synthetic connection ([`FAKTORY_CONN`]), which lives as long as the server: a closing
//! Faktory socket disconnects nothing, and a lease ends only by ACK, FAIL or its
//! `reserve_for` running out, as in Faktory.
//!
//! Requests are multiplexed by id; a router task hands each answer to the caller waiting
//! for it. The router also records every leased job in the [`Leases`] map (`jid` to qd
//! lease) before it forwards the answer, so a job fetched for a socket that went away in
//! the meantime is still held, and simply runs out, as Faktory's would.
//!
//! What this gives up against qd's own protocol: no fencing. The map holds the newest
//! lease of a `jid`, so a late ACK from a worker whose lease ran out acks the newer run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qd_protocol::message::{LeaseRef, ServerFrame};
use qd_protocol::{JobId, LeasedJob, Request, Response, WireError};
use tokio::sync::{mpsc, oneshot};

use super::job;
use crate::engine::Command;
use crate::model::ConnId;

/// The engine connection id of the Faktory front end. Protocol connections count up from
/// 1 and the dashboard's count down from `u64::MAX`; neither reaches the middle. (It is
/// also at or above the metrics' admin range, so it does not count as a client.)
pub const FAKTORY_CONN: ConnId = 1 << 63;

/// Longest wait for one engine answer: a FETCH blocks 2 s, and a write waits for its
/// commit, which a slow disk stretches. Past this the command gets `-ERR`.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an engine call has no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the server is stopping; reconnect once it is back")]
    Stopped,
    #[error("the server did not answer within {} s; it may be overloaded", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("{}", .0.message)]
    Refused(WireError),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response, WireError>>>>>;

/// The shared engine connection of every Faktory socket.
#[derive(Debug)]
pub struct EngineLink {
    commands: mpsc::Sender<Command>,
    next_id: AtomicU64,
    pending: Pending,
    leases: Arc<Mutex<Leases>>,
}

impl EngineLink {
    /// Connects to the engine and starts the router.
    pub async fn connect(commands: mpsc::Sender<Command>) -> Result<Arc<EngineLink>, LinkError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let connect =
            Command::Connect { conn: FAKTORY_CONN, client_name: "faktory".into(), replies: tx };
        commands.send(connect).await.map_err(|_| LinkError::Stopped)?;
        let link = Arc::new(EngineLink {
            commands,
            next_id: AtomicU64::new(1),
            pending: Pending::default(),
            leases: Arc::new(Mutex::new(Leases::default())),
        });
        let (pending, leases) = (link.pending.clone(), link.leases.clone());
        // Ends when the engine drops the reply channel (shutdown); the callers still
        // waiting then see their sender dropped: `Stopped`.
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let ServerFrame::Response { id, result } = frame else { continue };
                if let Ok(Response::Reserved { jobs }) = &result {
                    leases.lock().expect("leases lock").hold(jobs, job::now_ms());
                }
                let waiter = pending.lock().expect("pending lock").remove(&id);
                if let Some(tx) = waiter {
                    let _ = tx.send(result);
                }
            }
        });
        Ok(link)
    }

    /// Sends `body` and waits for its answer.
    pub async fn call(&self, body: Request) -> Result<Response, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let sent = self.commands.send(Command::Request { conn: FAKTORY_CONN, id, body }).await;
        if sent.is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(LinkError::Stopped);
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(result)) => result.map_err(LinkError::Refused),
            Ok(Err(_)) => Err(LinkError::Stopped),
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                Err(LinkError::Timeout)
            }
        }
    }

    /// Takes the lease held for `jid`, if any: an ACK or FAIL ends it either way.
    pub fn take_lease(&self, jid: &str) -> Option<Held> {
        self.leases.lock().expect("leases lock").by_jid.remove(jid)
    }
}

/// One job a Faktory worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub lease: LeaseRef,
    /// Unix ms when qd's lease runs out; past it the entry is only swept.
    pub deadline_ms: u64,
    /// The job's `retry`, which decides what a FAIL does.
    pub retry: i64,
    pub attempt: u32,
}

/// `jid` to lease, for the jobs fetched through the Faktory port.
#[derive(Debug, Default)]
pub struct Leases {
    by_jid: HashMap<String, Held>,
    /// Size after the last sweep: the next comes when the map has doubled, so sweeping
    /// costs O(1) per lease amortised.
    swept_at: usize,
}

impl Leases {
    fn hold(&mut self, jobs: &[LeasedJob], now_ms: u64) {
        for j in jobs {
            // A job added through qd's own protocol has no jid: keyed by its id instead, so
            // a Faktory worker can still ACK it with the jid it was given (see FETCH).
            let (jid, retry) = job::jid_and_retry(&j.payload)
                .unwrap_or_else(|| (qd_jid(j.id), job::DEFAULT_RETRY));
            let lease = LeaseRef { id: j.id, token: j.token };
            let held = Held { lease, deadline_ms: j.lease_deadline_ms, retry, attempt: j.attempt };
            self.by_jid.insert(jid, held);
        }
        if self.by_jid.len() >= 2 * self.swept_at.max(1024) {
            self.by_jid.retain(|_, h| h.deadline_ms > now_ms);
            self.swept_at = self.by_jid.len();
        }
    }
}

/// The jid a job added through qd's own protocol is fetched under.
pub fn qd_jid(id: JobId) -> String {
    format!("qd-{id:08}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn leased(id: JobId, token: u64, deadline: u64, payload: &'static str) -> LeasedJob {
        LeasedJob::new(id, "q", "n", Bytes::from_static(payload.as_bytes()), token, deadline)
    }

    #[test]
    fn the_newest_lease_of_a_jid_wins_and_old_ones_are_swept() {
        let mut l = Leases::default();
        l.hold(&[leased(1, 10, 100, r#"{"jid":"abcdefgh","retry":2}"#)], 0);
        l.hold(&[leased(1, 11, 200, r#"{"jid":"abcdefgh","retry":2}"#)], 0);
        assert_eq!(l.by_jid["abcdefgh"].lease.token, 11, "no fencing: the newer run");
        assert_eq!(l.by_jid["abcdefgh"].retry, 2);
        l.hold(&[leased(7, 1, 100, "not json")], 0);
        assert!(l.by_jid.contains_key("qd-00000007"));

        let many: Vec<_> = (100..2200).map(|i| leased(i, 1, 50, "x")).collect();
        l.hold(&many, 150);
        assert_eq!(l.by_jid.len(), 1, "expired leases swept; the live one stays");
    }
}
