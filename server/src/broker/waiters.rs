//! [`WaiterTable`]: reserves parked until a job becomes ready or their wait runs out,
//! indexed by arrival (FIFO per queue), by deadline, and by connection.
//!
//! It only keeps the waiters; taking jobs for them and emitting `Effect::Deliver` is the
//! broker's job. Every index is exact (a removed waiter leaves no entry behind), because a
//! worker that keeps re-parking on a queue that never gets jobs must not grow anything.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::WaiterKey;
use crate::model::{ConnId, Millis};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub key: WaiterKey,
    /// Queue indexes, in the order the client gave them.
    pub queues: Vec<u32>,
    pub max: u32,
    pub deadline: Millis,
    /// Until when a rate-limited queue may hold this waiter back for a fuller batch
    /// (`flow.rs`, `RATE_BATCH_MS`); after it, any token serves it.
    pub batch_until: Millis,
}

#[derive(Debug, Default)]
pub(crate) struct WaiterTable {
    /// Arrival number of the next waiter: orders waiters FIFO.
    next_seq: u64,
    by_seq: BTreeMap<u64, Waiter>,
    by_key: HashMap<WaiterKey, u64>,
    by_conn: BTreeSet<(ConnId, u64)>,
    by_queue: HashMap<u32, BTreeSet<u64>>,
    deadlines: BTreeSet<(Millis, u64)>,
}

impl WaiterTable {
    pub(crate) fn contains(&self, key: WaiterKey) -> bool {
        self.by_key.contains_key(&key)
    }

    /// Whether any parked waiter names queue `q` (such a queue must not be forgotten).
    pub(crate) fn waits_on(&self, q: u32) -> bool {
        self.by_queue.contains_key(&q)
    }

    /// Parks a waiter; the caller checked its key is not parked already.
    pub(crate) fn park(&mut self, waiter: Waiter) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.reinstate(seq, waiter);
    }

    /// Parks a waiter again under the arrival number it had (`pop_first_for_queue` gave
    /// it), so it keeps its place: a flow limit turned it away empty-handed.
    pub(crate) fn reinstate(&mut self, seq: u64, waiter: Waiter) {
        self.by_key.insert(waiter.key, seq);
        self.by_conn.insert((waiter.key.conn, seq));
        for &q in &waiter.queues {
            self.by_queue.entry(q).or_default().insert(seq);
        }
        self.deadlines.insert((waiter.deadline, seq));
        self.by_seq.insert(seq, waiter);
    }

    fn remove_seq(&mut self, seq: u64) -> Option<Waiter> {
        let waiter = self.by_seq.remove(&seq)?;
        self.by_key.remove(&waiter.key);
        self.by_conn.remove(&(waiter.key.conn, seq));
        for q in &waiter.queues {
            if let Some(set) = self.by_queue.get_mut(q) {
                set.remove(&seq);
                if set.is_empty() {
                    self.by_queue.remove(q);
                }
            }
        }
        self.deadlines.remove(&(waiter.deadline, seq));
        Some(waiter)
    }

    pub(crate) fn remove(&mut self, key: WaiterKey) -> Option<Waiter> {
        let seq = *self.by_key.get(&key)?;
        self.remove_seq(seq)
    }

    /// Removes and returns the longest-parked waiter that wants jobs from queue `q`, with
    /// its arrival number.
    pub(crate) fn pop_first_for_queue(&mut self, q: u32) -> Option<(u64, Waiter)> {
        let seq = *self.by_queue.get(&q)?.first()?;
        self.remove_seq(seq).map(|w| (seq, w))
    }

    /// Removes every waiter of `conn`.
    pub(crate) fn remove_conn(&mut self, conn: ConnId) -> Vec<Waiter> {
        let seqs: Vec<u64> =
            self.by_conn.range((conn, 0)..=(conn, u64::MAX)).map(|&(_, s)| s).collect();
        seqs.into_iter().filter_map(|s| self.remove_seq(s)).collect()
    }

    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Removes and returns the earliest waiter whose deadline is `<= now`.
    pub(crate) fn pop_expired(&mut self, now: Millis) -> Option<Waiter> {
        let &(deadline, seq) = self.deadlines.first()?;
        if deadline > now {
            return None;
        }
        self.remove_seq(seq)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_seq.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(conn: ConnId, request: u64, queues: &[u32], deadline: Millis) -> Waiter {
        Waiter {
            key: WaiterKey { conn, request },
            queues: queues.to_vec(),
            max: 1,
            deadline,
            batch_until: 0,
        }
    }

    #[test]
    fn fifo_per_queue_and_exact_removal() {
        let mut t = WaiterTable::default();
        t.park(waiter(1, 1, &[0, 1], 500));
        t.park(waiter(2, 1, &[1], 100));
        t.park(waiter(1, 2, &[0], 300));
        assert_eq!(t.pop_first_for_queue(1).map(|(_, w)| w.key.conn), Some(1));
        // The first waiter left queue 0's index too.
        assert_eq!(
            t.pop_first_for_queue(0).map(|(_, w)| w.key),
            Some(WaiterKey { conn: 1, request: 2 })
        );
        assert_eq!(t.pop_first_for_queue(0), None);
        assert_eq!(t.next_deadline(), Some(100));
        assert_eq!(t.pop_expired(99), None);
        assert_eq!(t.pop_expired(100).map(|w| w.key.conn), Some(2));
        assert_eq!(t.len(), 0);
        assert!(t.by_queue.is_empty() && t.deadlines.is_empty() && t.by_conn.is_empty());
    }

    #[test]
    fn remove_by_conn_and_key() {
        let mut t = WaiterTable::default();
        t.park(waiter(1, 1, &[0], 10));
        t.park(waiter(2, 1, &[0], 10));
        t.park(waiter(1, 2, &[0], 10));
        assert!(t.contains(WaiterKey { conn: 2, request: 1 }));
        assert_eq!(t.remove_conn(1).len(), 2);
        assert_eq!(t.remove(WaiterKey { conn: 2, request: 1 }).map(|w| w.key.conn), Some(2));
        assert_eq!(t.remove(WaiterKey { conn: 2, request: 1 }), None);
        assert_eq!(t.len(), 0);
    }
}
