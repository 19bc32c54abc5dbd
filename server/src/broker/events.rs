//! Lifecycle events (issue 9): which queues someone listens to, and the one place the core
//! turns a job's change into an [`Effect::Event`].
//!
//! The core only emits; it knows nothing of subscribers. The engine owns the subscriptions,
//! tells the core their union with [`Broker::watch`], holds each event until the ticket
//! holding the change it reports is committed, and fans it out (`engine/events.rs`).
//!
//! Cost when nobody listens: the filter is empty, and every emit site asks
//! [`EventFilter::wants`] (one branch) before it clones a name or an error. No event is
//! built, allocated or queued, so the hot path (add, ack, nack) is unchanged.
//!
//! Order: an event is pushed right after the `Persist` of the change it reports, so the
//! engine, which routes effects in order, always has that change in the open ticket.

use std::collections::HashSet;

use qd_protocol::{EventKind, JobEvent, JobId};

use crate::model::Millis;

use super::{Broker, Effect};

/// The queues whose events are wanted: the union of every subscription. The default wants
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Some subscription wants every queue.
    all: bool,
    queues: HashSet<String>,
}

impl EventFilter {
    /// Adds one subscription's queues (every queue when empty).
    pub fn include(&mut self, queues: &[String]) {
        if queues.is_empty() {
            self.all = true;
        } else {
            self.queues.extend(queues.iter().cloned());
        }
    }

    /// Whether events of `queue` are wanted. One branch when nobody listens.
    #[inline]
    pub fn wants(&self, queue: &str) -> bool {
        self.all || (!self.queues.is_empty() && self.queues.contains(queue))
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.queues.is_empty()
    }
}

impl Broker {
    /// Sets which queues' events the core emits from now on (the engine calls it when a
    /// subscription starts or ends). Events are not replayed: what happened before is not
    /// emitted.
    pub fn watch(&mut self, filter: EventFilter) {
        self.watch = filter;
    }

    /// Whether events of queue `q` are wanted.
    #[inline]
    pub(super) fn watching(&self, q: u32) -> bool {
        !self.watch.is_empty()
            && self.queues.get(q as usize).is_some_and(|x| self.watch.wants(&x.name))
    }

    /// Emits one event of job `id` in queue `q`. Callers check [`Broker::watching`] first,
    /// so that nothing is cloned for an event nobody wants.
    pub(super) fn emit(&mut self, now: Millis, q: u32, id: JobId, name: &str, kind: EventKind) {
        let queue = self.queues[q as usize].name.to_string();
        self.effects.push(Effect::Event(Box::new(JobEvent {
            queue,
            id,
            name: name.to_owned(),
            kind,
            at_ms: now,
        })));
    }

    /// [`Broker::emit`] for a job still in the table (its name is looked up).
    pub(super) fn emit_for(&mut self, now: Millis, id: JobId, kind: EventKind) {
        let Some(meta) = self.jobs.get(id).copied() else { return };
        let name = self.names.get(meta.name).cloned().unwrap_or_else(|| "".into());
        self.emit(now, meta.queue, id, &name, kind);
    }
}

#[cfg(test)]
mod tests {
    //! Events with a fake clock: which changes emit what, in order after their `Persist`,
    //! and nothing at all while nobody watches.

    use bytes::Bytes;
    use qd_protocol::message::LeaseRef;
    use qd_protocol::{Backoff, JobOptions, NewJob, RetryHint};

    use super::*;
    use crate::broker::{BrokerConfig, Lease, WaiterKey};
    use crate::model::Change;

    const T0: Millis = 1_700_000_000_000;

    fn job(attempts: u32) -> NewJob {
        let options = JobOptions { attempts, backoff: Backoff::NONE, ..JobOptions::default() };
        NewJob { name: "mail".into(), payload: Bytes::from_static(b"p"), options }
    }

    fn watching(queues: &[&str]) -> Broker {
        let mut b = Broker::new(BrokerConfig::default());
        let mut filter = EventFilter::default();
        filter.include(&queues.iter().map(|q| q.to_string()).collect::<Vec<_>>());
        b.watch(filter);
        b
    }

    fn add(b: &mut Broker, now: Millis, queue: &str, job: NewJob) -> JobId {
        let ids = b.add(now, queue, vec![job]).unwrap();
        b.commit_added(now, &ids);
        ids[0]
    }

    fn take(b: &mut Broker, now: Millis, queue: &str) -> Lease {
        let waiter = WaiterKey { conn: 1, request: 0 };
        b.reserve(now, waiter, &[queue.to_string()], 1, 0).unwrap().unwrap().remove(0)
    }

    fn lref(l: &Lease) -> LeaseRef {
        LeaseRef { id: l.id, token: l.token }
    }

    fn events(b: &mut Broker) -> Vec<(String, JobId, EventKind, Millis)> {
        let mut out = Vec::new();
        b.take_effects(&mut out);
        out.into_iter()
            .filter_map(|e| match e {
                Effect::Event(e) => Some((e.queue, e.id, e.kind, e.at_ms)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_job_life_emits_added_failed_completed_in_order() {
        let mut b = watching(&["q"]);
        let id = add(&mut b, T0, "q", job(3));
        let l = take(&mut b, T0 + 1, "q");
        b.nack(T0 + 2, lref(&l), "boom", RetryHint::After { delay_ms: 50 }).unwrap();
        b.handle_timeout(T0 + 52);
        let l = take(&mut b, T0 + 53, "q");
        b.ack(T0 + 54, lref(&l)).unwrap();
        let q = || "q".to_string();
        assert_eq!(
            events(&mut b),
            vec![
                (q(), id, EventKind::Added, T0),
                (q(), id, EventKind::Failed { error: "boom".into(), run_at_ms: T0 + 52 }, T0 + 2),
                (q(), id, EventKind::Completed, T0 + 54),
            ]
        );
    }

    #[test]
    fn dead_letters_and_expiry_are_events() {
        let mut b = watching(&[]);
        let id = add(&mut b, T0, "q", job(1));
        let l = take(&mut b, T0, "q");
        b.nack(T0 + 1, lref(&l), "bad", RetryHint::Backoff).unwrap();
        let mut late = job(1);
        late.options.expires_in_ms = Some(10);
        late.options.delay_ms = 20;
        let late = add(&mut b, T0, "other", late);
        b.handle_timeout(T0 + 20);
        let got: Vec<_> = events(&mut b).into_iter().map(|e| (e.1, e.2)).collect();
        assert_eq!(
            got,
            vec![
                (id, EventKind::Added),
                (id, EventKind::DeadLettered { error: "bad".into() }),
                (late, EventKind::Added),
                (late, EventKind::Expired),
            ]
        );
    }

    /// Merging issue 11's `Kill` with the events: a killed job is dead-lettered like any
    /// other, so its subscribers hear of it.
    #[test]
    fn an_operators_kill_is_a_dead_letter_event() {
        let mut b = watching(&["q"]);
        let id = add(&mut b, T0, "q", job(3));
        assert_eq!(b.kill(T0 + 1, &[id]), 1);
        let got: Vec<_> = events(&mut b).into_iter().map(|e| (e.1, e.2)).collect();
        assert_eq!(
            got,
            vec![
                (id, EventKind::Added),
                (id, EventKind::DeadLettered { error: super::super::KILLED.into() }),
            ]
        );
    }

    #[test]
    fn each_event_follows_the_persist_of_its_change() {
        let mut b = watching(&["q"]);
        add(&mut b, T0, "q", job(1));
        let l = take(&mut b, T0, "q");
        b.ack(T0, lref(&l)).unwrap();
        let mut out = Vec::new();
        b.take_effects(&mut out);
        let order: Vec<&str> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Persist(Change::Insert(_)) => Some("insert"),
                Effect::Persist(Change::Complete { .. }) => Some("complete"),
                Effect::Event(_) => Some("event"),
                _ => None,
            })
            .collect();
        assert_eq!(order, ["insert", "event", "complete", "event"]);
    }

    #[test]
    fn only_watched_queues_emit_and_nothing_when_nobody_watches() {
        let mut b = watching(&["a"]);
        let a = add(&mut b, T0, "a", job(1));
        add(&mut b, T0, "b", job(1));
        assert_eq!(events(&mut b).into_iter().map(|e| e.1).collect::<Vec<_>>(), vec![a]);

        b.watch(EventFilter::default());
        add(&mut b, T0, "a", job(1));
        let l = take(&mut b, T0, "a");
        b.ack(T0, lref(&l)).unwrap();
        let l = take(&mut b, T0, "a");
        b.nack(T0, lref(&l), "x", RetryHint::Never).unwrap();
        assert!(events(&mut b).is_empty(), "no subscriber, no event");
    }
}
