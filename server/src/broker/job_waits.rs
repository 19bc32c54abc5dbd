//! [`JobWaits`]: producers waiting for one job to finish (`Request::Wait`), indexed by job,
//! by deadline and by connection; and the broker's side of waiting: parking a wait,
//! answering it when the job completes, dies or is deleted, and when it runs out.
//!
//! Every index is exact (an answered wait leaves nothing behind). Waits are bounded by the
//! requests in flight a connection may have, as parked reserves are.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use qd_protocol::{JobId, JobOutcome};

use super::job::JobState;
use super::{Broker, BrokerError, Effect, WaiterKey};
use crate::model::{ConnId, Millis};

#[derive(Debug, Default)]
pub(crate) struct JobWaits {
    by_job: HashMap<JobId, Vec<WaiterKey>>,
    /// Each wait's job and deadline, ordered by connection (for `remove_conn`).
    by_key: BTreeMap<WaiterKey, (JobId, Millis)>,
    deadlines: BTreeSet<(Millis, WaiterKey)>,
}

impl JobWaits {
    pub(crate) fn contains(&self, key: WaiterKey) -> bool {
        self.by_key.contains_key(&key)
    }

    fn park(&mut self, key: WaiterKey, id: JobId, deadline: Millis) {
        self.by_job.entry(id).or_default().push(key);
        self.by_key.insert(key, (id, deadline));
        self.deadlines.insert((deadline, key));
    }

    fn remove(&mut self, key: WaiterKey) -> Option<JobId> {
        let (id, deadline) = self.by_key.remove(&key)?;
        self.deadlines.remove(&(deadline, key));
        if let Some(keys) = self.by_job.get_mut(&id) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.by_job.remove(&id);
            }
        }
        Some(id)
    }

    /// Every wait for job `id`, removed.
    fn take_job(&mut self, id: JobId) -> Vec<WaiterKey> {
        let keys = self.by_job.remove(&id).unwrap_or_default();
        for key in &keys {
            if let Some((_, deadline)) = self.by_key.remove(key) {
                self.deadlines.remove(&(deadline, *key));
            }
        }
        keys
    }

    /// The waits of connection `conn`, removed.
    pub(crate) fn remove_conn(&mut self, conn: ConnId) {
        let start = WaiterKey { conn, request: 0 };
        let end = WaiterKey { conn, request: u64::MAX };
        let keys: Vec<WaiterKey> = self.by_key.range(start..=end).map(|(k, _)| *k).collect();
        for key in keys {
            self.remove(key);
        }
    }

    /// The first wait whose deadline is at or before `now`, removed.
    fn pop_expired(&mut self, now: Millis) -> Option<(WaiterKey, JobId)> {
        let &(deadline, key) = self.deadlines.first()?;
        if deadline > now {
            return None;
        }
        self.remove(key).map(|id| (key, id))
    }

    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// What a `Wait` found when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// Answer now with this.
    Now(JobOutcome),
    /// The job is in the dead set: answer `Dead` with its last error, which only the store
    /// keeps (the engine reads it).
    Dead,
    /// Parked: an [`Effect::Outcome`] answers it later.
    Parked,
}

impl Broker {
    /// A producer waits for job `id`: answered at once when it completed (its result, while
    /// its queue's completed ring still holds it) or is dead; else parked until it
    /// completes or dies, or until `now + timeout_ms` (then `Pending`; at once when
    /// `timeout_ms` is 0). `NotFound` when the job is unknown.
    pub fn wait(
        &mut self,
        now: Millis,
        waiter: WaiterKey,
        id: JobId,
        timeout_ms: u64,
    ) -> Result<Waited, BrokerError> {
        if self.job_waits.contains(waiter) || self.waiters.contains(waiter) {
            return Err(BrokerError::InvalidArgument(format!(
                "request {} of this connection is already waiting; use a new request id",
                waiter.request
            )));
        }
        let Some(meta) = self.jobs.get(id) else {
            let result = self
                .queue_index
                .values()
                .find_map(|&q| self.queues[q as usize].completed_result(id).cloned());
            return match result {
                Some(result) => Ok(Waited::Now(JobOutcome::Completed { result })),
                None => Err(BrokerError::NotFound(id)),
            };
        };
        if meta.state == JobState::Dead {
            return Ok(Waited::Dead);
        }
        if timeout_ms == 0 {
            return Ok(Waited::Now(JobOutcome::Pending));
        }
        self.job_waits.park(waiter, id, now.saturating_add(timeout_ms));
        Ok(Waited::Parked)
    }

    /// Job `id` completed with `result`: its waits are answered.
    pub(super) fn notify_completed(&mut self, id: JobId, result: &Bytes) {
        for waiter in self.job_waits.take_job(id) {
            let outcome = Some(JobOutcome::Completed { result: result.clone() });
            self.effects.push(Effect::Outcome { waiter, id, outcome });
        }
    }

    /// Job `id` died with `error` (or, `None`, was deleted): its waits are answered.
    pub(super) fn notify_ended(&mut self, id: JobId, error: Option<&str>) {
        for waiter in self.job_waits.take_job(id) {
            let outcome = error.map(|e| JobOutcome::Dead { error: e.to_owned() });
            self.effects.push(Effect::Outcome { waiter, id, outcome });
        }
    }

    /// Waits past their deadline are answered `Pending`.
    pub(super) fn expire_waits(&mut self, now: Millis) {
        while let Some((waiter, id)) = self.job_waits.pop_expired(now) {
            self.effects.push(Effect::Outcome { waiter, id, outcome: Some(JobOutcome::Pending) });
        }
    }
}
