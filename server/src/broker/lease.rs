//! [`LeaseTable`]: who holds each active job, with which token, until when; indexed by
//! deadline (for expiry) and by connection (for disconnect).
//!
//! Leases live in memory only: after a crash an active job is simply waiting again (see
//! `model::PersistedState`). What happens to a job whose lease ends (completion, failure)
//! is the broker's business.
//!
//! Tokens come from a counter passed through a bijective mix: unique for the life of the
//! process (a stale token can never match a later delivery of the same job), deterministic
//! for tests, and not simply "the previous token plus one".

use std::collections::{BTreeSet, HashMap};

use qd_protocol::JobId;

use super::backoff::splitmix64;
use crate::model::{ConnId, Millis};

/// The lease on one active job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ActiveLease {
    pub token: u64,
    /// The connection that reserved the job; its disconnect fails the job.
    pub conn: ConnId,
    pub deadline: Millis,
}

#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    /// Tokens issued so far; the next token is `splitmix64(issued)`.
    issued: u64,
    by_job: HashMap<JobId, ActiveLease>,
    /// Exactly one entry per lease, kept precise (not lazily deleted) because a busy server
    /// acks most leases long before their deadline.
    deadlines: BTreeSet<(Millis, JobId)>,
    by_conn: BTreeSet<(ConnId, JobId)>,
}

impl LeaseTable {
    /// A table whose tokens start from `seed`. The engine seeds each server run differently
    /// so that a token from before a restart cannot match a delivery after it.
    pub(crate) fn seeded(seed: u64) -> Self {
        LeaseTable { issued: seed, ..LeaseTable::default() }
    }

    /// Leases `id` to `conn` until `deadline`; returns the new token. The caller makes sure
    /// the job is not leased already.
    pub(crate) fn grant(&mut self, id: JobId, conn: ConnId, deadline: Millis) -> u64 {
        // splitmix64 is a bijection of its input, so distinct counters give distinct tokens.
        let token = splitmix64(self.issued);
        self.issued = self.issued.wrapping_add(1);
        if let Some(old) = self.by_job.insert(id, ActiveLease { token, conn, deadline }) {
            self.unindex(id, &old);
        }
        self.deadlines.insert((deadline, id));
        self.by_conn.insert((conn, id));
        token
    }

    pub(crate) fn get(&self, id: JobId) -> Option<&ActiveLease> {
        self.by_job.get(&id)
    }

    pub(crate) fn release(&mut self, id: JobId) -> Option<ActiveLease> {
        let lease = self.by_job.remove(&id)?;
        self.unindex(id, &lease);
        Some(lease)
    }

    /// Moves the deadline of a held lease; no-op for unknown jobs.
    pub(crate) fn extend(&mut self, id: JobId, deadline: Millis) {
        if let Some(lease) = self.by_job.get_mut(&id) {
            self.deadlines.remove(&(lease.deadline, id));
            lease.deadline = deadline;
            self.deadlines.insert((deadline, id));
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Releases and returns the lease with the earliest deadline if it is `<= now`.
    pub(crate) fn pop_expired(&mut self, now: Millis) -> Option<JobId> {
        let &(deadline, id) = self.deadlines.first()?;
        if deadline > now {
            return None;
        }
        self.release(id);
        Some(id)
    }

    /// Jobs leased to `conn`, in id order.
    pub(crate) fn held_by(&self, conn: ConnId) -> Vec<JobId> {
        self.by_conn.range((conn, 0)..=(conn, JobId::MAX)).map(|&(_, id)| id).collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_job.len()
    }

    fn unindex(&mut self, id: JobId, lease: &ActiveLease) {
        self.deadlines.remove(&(lease.deadline, id));
        self.by_conn.remove(&(lease.conn, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_indexes_follow() {
        let mut t = LeaseTable::default();
        let a = t.grant(1, 7, 100);
        let b = t.grant(2, 7, 50);
        let c = t.grant(3, 8, 75);
        assert!(a != b && b != c && a != c);
        assert_eq!(t.next_deadline(), Some(50));
        assert_eq!(t.held_by(7), [1, 2]);
        t.extend(2, 200);
        assert_eq!(t.next_deadline(), Some(75));
        assert_eq!(t.pop_expired(74), None);
        assert_eq!(t.pop_expired(100), Some(3));
        assert_eq!(t.pop_expired(100), Some(1));
        assert_eq!(t.pop_expired(100), None);
        assert_eq!(t.held_by(7), [2]);
        assert_eq!(t.held_by(8), [] as [JobId; 0]);
        let again = t.grant(1, 9, 10);
        assert_ne!(again, a, "a redelivery gets a new token");
        assert_eq!(t.release(2).map(|l| l.token), Some(b));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn many_tokens_never_repeat() {
        let mut t = LeaseTable::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            assert!(seen.insert(t.grant(i % 3, 0, 0)));
        }
    }
}
