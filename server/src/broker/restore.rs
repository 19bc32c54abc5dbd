//! Rebuilding the core from the store's records at startup: [`Restorer`], which takes the
//! records one at a time, in id order, as the store scans them. What a record becomes
//! (ready, delayed, dead, a unique window) is decided here; reading and decoding the
//! records is the store's business (`Store::recover_index`), and queue settings and
//! schedules are restored by their own calls (`restore_settings`, `restore_schedule`).
//!
//! Why a type and not only [`Broker::restore`]: a restart of 10 million jobs is 10 million
//! restores, and each looked up its queue, job name and retry policy by hashing strings,
//! though consecutive records nearly always share all three (a backlog is jobs of a few
//! kinds added in runs). The restorer remembers the last of each and compares instead, and
//! serves parked waiters once at the end rather than after every record.

use super::job::{JobMeta, JobState, Policy};
use super::unique;
use super::Broker;
use crate::model::{JobRecord, Millis, PersistedState};

/// Restores records into a [`Broker`] (see the module docs); get one from
/// [`Broker::restorer`]. Parked waiters are served when it is dropped.
#[derive(Debug)]
pub struct Restorer<'b> {
    broker: &'b mut Broker,
    now: Millis,
    /// The last record's queue name and slot. A slot stays live while it has jobs, and
    /// every job restored is one, so the slot cannot be forgotten under the memo.
    queue: Option<(String, u32)>,
    /// The last record's job name and its interned handle.
    name: Option<(String, u32)>,
    /// The last ungrouped policy and its interned handle (grouped jobs take the general
    /// path: their policy holds a group handle, taken with its own reference).
    policy: Option<(Policy, u32)>,
}

impl Broker {
    /// A [`Restorer`] for records read at `now`.
    pub fn restorer(&mut self, now: Millis) -> Restorer<'_> {
        Restorer { broker: self, now, queue: None, name: None, policy: None }
    }
}

impl Restorer<'_> {
    /// What [`Broker::restore`] says, without serving waiters yet.
    pub fn restore(&mut self, record: &JobRecord) {
        if self.broker.jobs.get(record.id).is_some() {
            return;
        }
        let q = self.queue(&record.queue);
        let name = self.name(&record.name);
        let (policy, grouped) = match record.options.group {
            Some(_) => self.broker.acquire_policy(&record.options),
            None => (self.policy(Policy::of(&record.options)), false),
        };
        let b = &mut *self.broker;
        let now = self.now;
        let meta = JobMeta {
            created_at_ms: record.created_at_ms,
            queue: q,
            name,
            policy,
            priority: record.options.priority,
            failures: record.failures,
            state: JobState::Dead,
            keyed: false,
            expiry_spent: unique::expired_before(record),
            grouped,
        };
        b.jobs.insert(record.id, meta);
        b.restore_unique(now, q, record);
        b.next_id = b.next_id.max(record.id.saturating_add(1));
        b.id_floor = b.id_floor.max(b.next_id);
        match record.state {
            PersistedState::Dead => {
                b.queues[q as usize].recount(None, Some(JobState::Dead));
                b.dead_insert(q, record.run_at_ms, record.id);
            }
            PersistedState::Waiting => {
                if let Some(key) = &record.options.key {
                    b.claim_key(q, key, record.id);
                }
                b.schedule(now, record.id, None, record.run_at_ms);
            }
        }
    }

    fn queue(&mut self, queue: &str) -> u32 {
        match &self.queue {
            Some((name, q)) if name == queue => *q,
            _ => {
                let q = self.broker.queue_idx(queue);
                self.queue = Some((queue.to_owned(), q));
                q
            }
        }
    }

    fn name(&mut self, name: &str) -> u32 {
        match &self.name {
            Some((last, handle)) if last == name => {
                self.broker.names.retain(*handle);
                *handle
            }
            _ => {
                let handle = self.broker.names.acquire(name, || name.into());
                self.name = Some((name.to_owned(), handle));
                handle
            }
        }
    }

    fn policy(&mut self, policy: Policy) -> u32 {
        match self.policy {
            Some((last, handle)) if last == policy => {
                self.broker.policies.retain(handle);
                handle
            }
            _ => {
                let handle = self.broker.policies.acquire(&policy, || policy);
                self.policy = Some((policy, handle));
                handle
            }
        }
    }
}

impl Drop for Restorer<'_> {
    /// Serves waiters parked on the queues the restored jobs made ready (none at startup,
    /// when no connection exists yet; `Broker::restore` keeps its promise for callers that
    /// restore into a live core).
    fn drop(&mut self) {
        self.broker.serve_touched(self.now);
    }
}
