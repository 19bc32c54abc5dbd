//! [`LeaseTable`]: who holds each active job, with which token, until when; indexed by
//! deadline (for expiry) and by connection (for disconnect).
//!
//! Leases live in memory only: after a crash an active job is simply waiting again (see
//! `model::PersistedState`). What happens to a job whose lease ends (completion, failure)
//! is the broker's business.
//!
//! Tokens are drawn from ChaCha20 keyed at construction (the composition root passes 32
//! bytes from the OS; tests pass a fixed key). A token is a capability: whoever holds it may
//! ack, nack or touch the job, so seeing some tokens must not reveal others. The previous
//! scheme (a counter through splitmix64) was a public bijection, so one token gave away the
//! counter and with it every other token. A CSPRNG stream keeps the core pure (the same key
//! gives the same tokens, so tests stay deterministic) without that weakness.
//!
//! Uniqueness: 64-bit draws collide with probability about n^2 / 2^65, negligible for the
//! number of leases one process grants; a token is also only checked against the lease of the
//! job it names, so a collision between two different jobs' tokens grants nothing.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use qd_protocol::JobId;

use crate::model::{ConnId, Millis};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The lease on one active job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ActiveLease {
    pub token: u64,
    /// The connection that reserved the job; its disconnect fails the job.
    pub conn: ConnId,
    pub deadline: Millis,
    /// When the lease was granted (the try started).
    pub since: Millis,
}

#[derive(Debug)]
pub(crate) struct LeaseTable {
    /// The token stream; see the module docs for why a CSPRNG.
    tokens: ChaCha20Rng,
    by_job: HashMap<JobId, ActiveLease>,
    /// Exactly one entry per lease, kept precise (not lazily deleted) because a busy server
    /// acks most leases long before their deadline.
    deadlines: BTreeSet<(Millis, JobId)>,
    by_conn: BTreeSet<(ConnId, JobId)>,
    /// The latest progress a lease's worker reported (issue 9). Kept apart from
    /// `ActiveLease` (which stays `Copy` and small) and only for the few leases that report;
    /// it goes with the lease, so a new try starts with none.
    progress: HashMap<JobId, Bytes>,
}

impl LeaseTable {
    /// A table whose tokens come from ChaCha20 keyed with `key`. The engine draws a fresh key
    /// per server run so that a token from before a restart cannot match a delivery after it.
    pub(crate) fn keyed(key: [u8; 32]) -> Self {
        LeaseTable {
            tokens: ChaCha20Rng::from_seed(key),
            by_job: HashMap::new(),
            deadlines: BTreeSet::new(),
            by_conn: BTreeSet::new(),
            progress: HashMap::new(),
        }
    }

    /// Leases `id` to `conn` from `now` until `deadline`; returns the new token. The caller
    /// makes sure the job is not leased already.
    pub(crate) fn grant(&mut self, id: JobId, conn: ConnId, now: Millis, deadline: Millis) -> u64 {
        let token = self.tokens.next_u64();
        let lease = ActiveLease { token, conn, deadline, since: now };
        if let Some(old) = self.by_job.insert(id, lease) {
            self.unindex(id, &old);
            self.progress.remove(&id);
        }
        self.deadlines.insert((deadline, id));
        self.by_conn.insert((conn, id));
        token
    }

    pub(crate) fn get(&self, id: JobId) -> Option<&ActiveLease> {
        self.by_job.get(&id)
    }

    pub(crate) fn release(&mut self, id: JobId) -> Option<ActiveLease> {
        self.progress.remove(&id);
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

    /// Records the progress of a held lease, replacing the previous report; no-op for
    /// unknown jobs.
    pub(crate) fn set_progress(&mut self, id: JobId, progress: Bytes) {
        if self.by_job.contains_key(&id) {
            self.progress.insert(id, progress);
        }
    }

    /// The latest progress reported for the lease on `id`.
    pub(crate) fn progress(&self, id: JobId) -> Option<&Bytes> {
        self.progress.get(&id)
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

    /// Every lease by deadline, then job id (for listing).
    pub(crate) fn by_deadline(&self) -> impl DoubleEndedIterator<Item = (Millis, JobId)> + '_ {
        self.deadlines.iter().copied()
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

    use crate::broker::backoff::splitmix64;

    fn table() -> LeaseTable {
        LeaseTable::keyed([7; 32])
    }

    #[test]
    fn tokens_are_unique_and_indexes_follow() {
        let mut t = table();
        let a = t.grant(1, 7, 0, 100);
        let b = t.grant(2, 7, 0, 50);
        let c = t.grant(3, 8, 0, 75);
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
        let again = t.grant(1, 9, 0, 10);
        assert_ne!(again, a, "a redelivery gets a new token");
        assert_eq!(t.release(2).map(|l| l.token), Some(b));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn many_tokens_never_repeat() {
        let mut t = table();
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            assert!(seen.insert(t.grant(i % 3, 0, 0, 0)));
        }
    }

    /// Inverse of `splitmix64`: what an attacker would run on a token under the old scheme.
    fn unmix(mut z: u64) -> u64 {
        fn inverse(a: u64) -> u64 {
            // Newton's iteration for the inverse of an odd number mod 2^64.
            let mut x = a;
            for _ in 0..6 {
                x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
            }
            x
        }
        z ^= (z >> 31) ^ (z >> 62);
        z = z.wrapping_mul(inverse(0x94D0_49BB_1331_11EB));
        z ^= (z >> 27) ^ (z >> 54);
        z = z.wrapping_mul(inverse(0xBF58_476D_1CE4_E5B9));
        z ^= (z >> 30) ^ (z >> 60);
        z.wrapping_sub(0x9E37_79B9_7F4A_7C15)
    }

    /// Issue 7: tokens were `splitmix64(seed + n)`, so one token revealed the next. Now no
    /// simple relation links consecutive tokens.
    #[test]
    fn consecutive_tokens_share_no_simple_relation() {
        // The check below does catch the old scheme.
        let (a, b) = (splitmix64(41), splitmix64(42));
        assert_eq!(unmix(a), 41);
        assert_eq!(splitmix64(unmix(a).wrapping_add(1)), b, "old tokens predict the next");

        let mut t = table();
        let tokens: Vec<u64> = (0..10_000).map(|i| t.grant(i, 0, 0, 0)).collect();
        let distinct: std::collections::HashSet<u64> = tokens.iter().copied().collect();
        assert_eq!(distinct.len(), tokens.len());
        for pair in tokens.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_ne!(b, a.wrapping_add(1), "sequential");
            assert_ne!(b, splitmix64(a), "the old mix of the previous token");
            assert_ne!(b, splitmix64(unmix(a).wrapping_add(1)), "the old scheme's next token");
        }
        let mut other = LeaseTable::keyed([8; 32]);
        assert_ne!(other.grant(0, 0, 0, 0), tokens[0], "the key decides the stream");
        // Roughly half the bits flip between neighbours (no counter shows through).
        let flips: u32 = tokens.windows(2).map(|p| (p[0] ^ p[1]).count_ones()).sum();
        let mean = f64::from(flips) / (tokens.len() - 1) as f64;
        assert!((28.0..36.0).contains(&mean), "mean bit flips {mean}");
    }
}
