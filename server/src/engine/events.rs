//! The engine's side of lifecycle event subscriptions (issue 9): who subscribed to what,
//! and the bounded fan-out of committed events to them.
//!
//! The broker core emits `Effect::Event`s for the queues in its `EventFilter` (kept here as
//! the union of every subscription). The engine holds each event in the ticket of the
//! change it reports and gives it to [`Subscribers::publish`] only once that ticket is
//! committed: an event never announces something a crash could undo.
//!
//! Bounded, never blocking (after tokio's `broadcast`): each connection has a counter of
//! event frames handed to its writer and not yet taken by it (`queued`, shared with the
//! connection's writer, which decrements it; the writer stops taking frames while its
//! unwritten bytes are over `max_conn_buffer`). Past `limit` frames, further events of that
//! connection's subscriptions are dropped and counted; the next one that fits is preceded
//! by a `ServerFrame::Lagged { missed }`. So a subscriber that reads slowly, or not at all,
//! costs at most `limit` frames plus the connection's reply buffer, and the engine never
//! waits for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use qd_protocol::{validate_queue_name, ErrorCode, JobEvent, ServerFrame, WireError};

use crate::broker::EventFilter;
use crate::model::ConnId;

/// Most subscriptions one connection may hold at once: each costs the engine a filter
/// entry per queue and a check per event.
pub const MAX_SUBSCRIPTIONS_PER_CONN: usize = 16;

/// One subscription: request `id` of `conn`.
#[derive(Debug)]
struct Subscription {
    conn: ConnId,
    id: u64,
    /// Empty: every queue.
    queues: Vec<String>,
    /// Event frames of this connection not yet taken by its writer (shared with it).
    queued: Arc<AtomicUsize>,
    /// Events dropped since the last frame that went out.
    missed: u64,
}

/// Every live subscription. Few: a linear scan per event is cheaper than an index.
#[derive(Debug)]
pub struct Subscribers {
    subs: Vec<Subscription>,
    /// Most event frames queued per connection (`ServerConfig::subscriber_buffer`).
    limit: usize,
}

impl Subscribers {
    pub fn new(limit: usize) -> Self {
        Subscribers { subs: Vec::new(), limit: limit.max(2) }
    }

    /// Registers request `id` of `conn` as a subscription to `queues` (every queue when
    /// empty). `queued` is the connection's counter of event frames its writer has not taken.
    pub fn add(
        &mut self,
        conn: ConnId,
        id: u64,
        queues: Vec<String>,
        queued: Arc<AtomicUsize>,
    ) -> Result<(), WireError> {
        for queue in &queues {
            validate_queue_name(queue)?;
        }
        let held = self.subs.iter().filter(|s| s.conn == conn).count();
        if held >= MAX_SUBSCRIPTIONS_PER_CONN {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "this connection already has {MAX_SUBSCRIPTIONS_PER_CONN} subscriptions; \
                     subscribe once to several queues, or unsubscribe first"
                ),
            ));
        }
        if self.subs.iter().any(|s| s.conn == conn && s.id == id) {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("request id {id} already names a subscription; use a new request id"),
            ));
        }
        self.subs.push(Subscription { conn, id, queues, queued, missed: 0 });
        Ok(())
    }

    /// Ends subscription `id` of `conn`; whether it existed.
    pub fn remove(&mut self, conn: ConnId, id: u64) -> bool {
        let before = self.subs.len();
        self.subs.retain(|s| !(s.conn == conn && s.id == id));
        self.subs.len() != before
    }

    /// Ends every subscription of `conn`; whether it had any.
    pub fn remove_conn(&mut self, conn: ConnId) -> bool {
        let before = self.subs.len();
        self.subs.retain(|s| s.conn != conn);
        self.subs.len() != before
    }

    /// The union of every subscription's queues, for the core.
    pub fn filter(&self) -> EventFilter {
        let mut filter = EventFilter::default();
        for s in &self.subs {
            filter.include(&s.queues);
        }
        filter
    }

    /// Hands one committed event to every subscription that wants it, through `send`
    /// (the connection's reply channel); drops it for those whose connection has `limit`
    /// event frames queued, counting it towards their next `Lagged`.
    pub fn publish(&mut self, event: &JobEvent, mut send: impl FnMut(ConnId, ServerFrame)) {
        for s in &mut self.subs {
            if !s.queues.is_empty() && !s.queues.contains(&event.queue) {
                continue;
            }
            let frames = if s.missed > 0 { 2 } else { 1 };
            // Only the engine adds; the writer only takes away: the sum never passes `limit`.
            if s.queued.load(Ordering::Acquire) + frames > self.limit {
                s.missed += 1;
                continue;
            }
            s.queued.fetch_add(frames, Ordering::AcqRel);
            if s.missed > 0 {
                send(s.conn, ServerFrame::Lagged { subscription: s.id, missed: s.missed });
                s.missed = 0;
            }
            send(s.conn, ServerFrame::Event { subscription: s.id, event: event.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use qd_protocol::EventKind;

    use super::*;

    fn event(queue: &str, id: u64) -> JobEvent {
        JobEvent { queue: queue.into(), id, name: "n".into(), kind: EventKind::Completed, at_ms: 1 }
    }

    #[test]
    fn a_full_subscriber_loses_events_and_then_hears_how_many() {
        let mut subs = Subscribers::new(3);
        let queued = Arc::new(AtomicUsize::new(0));
        subs.add(1, 9, vec!["q".into()], queued.clone()).unwrap();
        let mut sent = Vec::new();
        for id in 1..=5 {
            subs.publish(&event("q", id), |conn, f| sent.push((conn, f)));
        }
        assert_eq!(sent.len(), 3, "at most `limit` frames queued");
        assert_eq!(queued.load(Ordering::Acquire), 3);
        // The writer takes two frames: room for the Lagged marker and the next event.
        queued.fetch_sub(2, Ordering::AcqRel);
        sent.clear();
        subs.publish(&event("q", 6), |conn, f| sent.push((conn, f)));
        let frames: Vec<_> = sent.into_iter().map(|(_, f)| f).collect();
        assert_eq!(frames[0], ServerFrame::Lagged { subscription: 9, missed: 2 });
        assert!(
            matches!(&frames[1], ServerFrame::Event { subscription: 9, event } if event.id == 6)
        );
    }

    #[test]
    fn events_go_only_to_subscriptions_of_their_queue() {
        let mut subs = Subscribers::new(100);
        subs.add(1, 1, vec!["a".into()], Arc::default()).unwrap();
        subs.add(2, 1, vec![], Arc::default()).unwrap();
        let mut to = Vec::new();
        subs.publish(&event("b", 1), |conn, _| to.push(conn));
        assert_eq!(to, [2], "only the subscriber to every queue");
        assert!(subs.filter().wants("a") && subs.filter().wants("b"));
        assert!(subs.remove_conn(2));
        assert!(!subs.filter().wants("b"));
        assert!(subs.remove(1, 1));
        assert!(subs.filter().is_empty(), "nobody left: the core emits nothing");
    }
}
