//! In-memory job metadata: [`JobMeta`], its [`JobState`], the retry [`Policy`] it points at,
//! and [`JobTable`], the compact id -> metadata map.
//!
//! Payloads, error histories and idempotency keys are not here: payloads stay in the store,
//! errors go to the store with each `Change::Fail`, and keys live in the queue's key index.
//! What moves a job from one state to another is the broker's business (`mod.rs`).
//!
//! Size matters: a backlog of a million jobs must cost tens of bytes each. Hence a 32-byte
//! `JobMeta` (names, queues and policies are interned as `u32`) and a table of 64-id chunks
//! instead of a `HashMap<JobId, JobMeta>`, whose bucket array alone can reach twice the
//! number of jobs times the entry size right after a resize.
//!
//! Besides its `JobMeta`, each job costs one index entry for its state: a ready job 24
//! bytes in its queue's ready deque (id, ready order and time, for paging and the oldest
//! wait), a delayed or dead job a `(time, id)` B-tree entry (16 bytes plus node overhead),
//! an active job its lease; an uncommitted job a short-lived `(id, run_at)` map entry. So a
//! ready backlog costs about 56 bytes a job (it was 40 before listings needed the order).

use std::hash::{Hash, Hasher};

use rustc_hash::FxHashMap;

use qd_protocol::{Backoff, JobId, JobOptions};

use crate::model::Millis;

/// Where a job is in its life cycle. Completed jobs leave the table (the queue keeps a short
/// ring of them for display), so there is no `Completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum JobState {
    /// In its queue's ready index, waiting for a reserve.
    Ready = 0,
    /// In the broker's delayed heap until its run time.
    Delayed = 1,
    /// Leased to a worker; the lease table knows which one and until when.
    Active = 2,
    /// In its queue's dead set: attempts ran out or a worker said never to retry.
    Dead = 3,
    /// Added, but the commit holding its insert is not done yet: invisible to reserves until
    /// `Broker::commit_added` (read-committed delivery). Its run time waits in the broker's
    /// `uncommitted` map.
    Uncommitted = 4,
}

impl JobState {
    pub(crate) const COUNT: usize = 5;
}

/// The per-job fields the core needs, nothing more (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobMeta {
    pub created_at_ms: Millis,
    /// Index into the broker's queue list.
    pub queue: u32,
    /// Interned job name.
    pub name: u32,
    /// Interned [`Policy`].
    pub policy: u32,
    pub priority: i32,
    /// Failed tries so far; the next delivery is try `failures + 1`.
    pub failures: u32,
    pub state: JobState,
    /// Whether the job holds an idempotency key in its queue's key index (and so must free
    /// it when it completes or dies).
    pub keyed: bool,
    /// The job expired once (`expires_in_ms`) and went to the dead set; an operator's retry
    /// then runs it however late, instead of expiring it again at once.
    pub expiry_spent: bool,
    /// Whether the job has a group (issue 9): then its policy's `group` names it. Fits in
    /// what was padding, so a job without a group costs nothing extra.
    pub grouped: bool,
}

/// The options that decide how a job is retried and leased. Almost every job of a queue
/// shares one, so jobs point at an interned copy instead of carrying 40 bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub max_attempts: u32,
    pub lease_ms: u64,
    pub backoff: Backoff,
    /// How long a worker may run one try (told to the worker; the lease still rules).
    pub timeout_ms: Option<u64>,
    /// The job is discarded (dead, "expired") when not started within this many ms of its
    /// creation.
    pub expires_in_ms: Option<u64>,
    /// The job's interned group name ([`NO_GROUP`] for none). A group key lives here, not
    /// in `JobMeta`, because the jobs of a group share their policy like they share a name:
    /// 1,000 groups cost 1,000 policies, not 4 bytes on every job.
    pub group: u32,
}

/// `Policy::group` of a job without a group.
pub(crate) const NO_GROUP: u32 = u32::MAX;

impl Policy {
    pub(crate) fn of(options: &JobOptions) -> Self {
        Policy {
            max_attempts: options.attempts,
            lease_ms: options.lease_ms,
            backoff: options.backoff,
            timeout_ms: options.timeout_ms,
            expires_in_ms: options.expires_in_ms,
            group: NO_GROUP,
        }
    }

    /// This policy for a job of group handle `group`.
    pub(crate) fn in_group(mut self, group: u32) -> Self {
        self.group = group;
        self
    }
}

// `Backoff` (in qd-protocol) does not derive `Hash`; hash its fields by hand.
impl Hash for Policy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.max_attempts.hash(state);
        self.lease_ms.hash(state);
        self.timeout_ms.hash(state);
        self.expires_in_ms.hash(state);
        self.group.hash(state);
        match self.backoff {
            Backoff::Fixed { delay_ms } => (0u8, delay_ms).hash(state),
            Backoff::Exponential { base_ms, max_ms, jitter_pct } => {
                (1u8, base_ms, max_ms, jitter_pct).hash(state)
            }
        }
    }
}

const CHUNK_SHIFT: u32 = 6;
const CHUNK_MASK: u64 = (1 << CHUNK_SHIFT) - 1;

/// The jobs whose ids share all but the low 6 bits. `metas` holds only the present ones, in
/// id order; the bitmap's rank of an id is its index. Ids are assigned in sequence, so a
/// backlog fills chunks densely and costs about `size_of::<JobMeta>()` per job; a chunk
/// that keeps only a few old jobs (dead ones, say) shrinks its vector.
#[derive(Debug, Default)]
struct Chunk {
    present: u64,
    metas: Vec<JobMeta>,
}

impl Chunk {
    fn rank(&self, bit: u32) -> usize {
        (self.present & ((1u64 << bit) - 1)).count_ones() as usize
    }

    fn has(&self, bit: u32) -> bool {
        self.present & (1u64 << bit) != 0
    }
}

/// Map from job id to [`JobMeta`] for every job the core knows (not completed ones).
#[derive(Debug, Default)]
pub(crate) struct JobTable {
    /// FxHash, not SipHash: the keys are ids the core assigned, not a client's choice, so
    /// there is no flood to resist, and a lookup is on every path (three per job restored
    /// at recovery, where SipHash was a tenth of a 10-million-job restart).
    chunks: FxHashMap<u64, Chunk>,
    len: usize,
}

fn split(id: JobId) -> (u64, u32) {
    (id >> CHUNK_SHIFT, (id & CHUNK_MASK) as u32)
}

impl JobTable {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, id: JobId) -> Option<&JobMeta> {
        let (c, bit) = split(id);
        let chunk = self.chunks.get(&c)?;
        chunk.has(bit).then(|| &chunk.metas[chunk.rank(bit)])
    }

    pub(crate) fn get_mut(&mut self, id: JobId) -> Option<&mut JobMeta> {
        let (c, bit) = split(id);
        let chunk = self.chunks.get_mut(&c)?;
        if !chunk.has(bit) {
            return None;
        }
        let at = chunk.rank(bit);
        Some(&mut chunk.metas[at])
    }

    /// Inserts or replaces; returns the replaced metadata.
    pub(crate) fn insert(&mut self, id: JobId, meta: JobMeta) -> Option<JobMeta> {
        let (c, bit) = split(id);
        let chunk = self.chunks.entry(c).or_default();
        let at = chunk.rank(bit);
        if chunk.has(bit) {
            return Some(std::mem::replace(&mut chunk.metas[at], meta));
        }
        chunk.present |= 1u64 << bit;
        chunk.metas.insert(at, meta);
        self.len += 1;
        None
    }

    pub(crate) fn remove(&mut self, id: JobId) -> Option<JobMeta> {
        let (c, bit) = split(id);
        let chunk = self.chunks.get_mut(&c)?;
        if !chunk.has(bit) {
            return None;
        }
        let at = chunk.rank(bit);
        chunk.present &= !(1u64 << bit);
        let meta = chunk.metas.remove(at);
        self.len -= 1;
        if chunk.present == 0 {
            self.chunks.remove(&c);
        } else if chunk.metas.capacity() > 4 && chunk.metas.len() * 4 <= chunk.metas.capacity() {
            let keep = chunk.metas.len() * 2;
            chunk.metas.shrink_to(keep);
        }
        Some(meta)
    }

    #[cfg(test)]
    /// Heap bytes held by the table (an estimate: allocator overhead is not counted).
    pub(crate) fn heap_bytes(&self) -> usize {
        let buckets = self.chunks.capacity() * 8 / 7 + 1;
        let index = buckets * (std::mem::size_of::<(u64, Chunk)>() + 1);
        let metas: usize = self.chunks.values().map(|c| c.metas.capacity()).sum();
        index + metas * std::mem::size_of::<JobMeta>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u32) -> JobMeta {
        JobMeta {
            created_at_ms: u64::from(n),
            queue: 0,
            name: n,
            policy: 0,
            priority: 0,
            failures: 0,
            state: JobState::Ready,
            keyed: false,
            expiry_spent: false,
            grouped: false,
        }
    }

    #[test]
    fn job_meta_is_32_bytes() {
        assert_eq!(std::mem::size_of::<JobMeta>(), 32);
    }

    #[test]
    fn table_matches_a_hashmap() {
        let mut table = JobTable::default();
        let mut model = std::collections::HashMap::new();
        // A deterministic mix of inserts and removes over ids that straddle chunk borders.
        let mut x = 1u64;
        for step in 0..20_000u32 {
            x = super::super::backoff::splitmix64(x);
            let id = x % 300;
            if x % 3 == 0 {
                assert_eq!(table.remove(id), model.remove(&id), "step {step}");
            } else {
                assert_eq!(table.insert(id, meta(step)), model.insert(id, meta(step)));
            }
            assert_eq!(table.len(), model.len());
        }
        for id in 0..300 {
            assert_eq!(table.get(id), model.get(&id));
        }
        if let Some(m) = table.get_mut(5) {
            m.failures = 9;
        }
        if let Some(m) = model.get_mut(&5) {
            m.failures = 9;
        }
        assert_eq!(table.get(5), model.get(&5));
        assert_eq!(table.get(u64::MAX), None);
        assert_eq!(table.insert(u64::MAX, meta(1)), None);
        assert_eq!(table.remove(u64::MAX), Some(meta(1)));
    }

    #[test]
    fn dense_backlog_costs_about_its_metadata() {
        let mut table = JobTable::default();
        for id in 1..=100_000 {
            table.insert(id, meta(0));
        }
        let per_job = table.heap_bytes() / table.len();
        assert!(per_job <= 36, "{per_job} bytes per job");
        // Drain all but every 64th job: chunks shrink instead of keeping their vectors.
        for id in 1..=100_000 {
            if id % 64 != 0 {
                table.remove(id);
            }
        }
        assert!(table.heap_bytes() < 1_562 * 200, "{}", table.heap_bytes());
    }
}
