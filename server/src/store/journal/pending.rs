//! The pending-map algebra: what the journal knows that the pages do not (yet), and how a
//! [`Change`] folds into it. Pure: no files, no threads, no clock; the record a change
//! applies to, when the map lacks it, is asked of a `base` lookup the caller provides (the
//! frozen map, then the pages). The live commit path and journal replay share [`Fold`];
//! when maps are frozen and checkpointed is `mod.rs`'s business, the bytes of a record
//! body `pages/record.rs`'s.
//!
//! Invariants (numbered as in `mod.rs`, which relies on them):
//! 2. `Put { fresh: true }` means the id was inserted after the last freeze, so neither the
//!    pages nor the frozen map have it: completing or removing it drops the entry (the job
//!    cancels out). Any other completion leaves a `Delete`. Replayed inserts are never
//!    fresh (the pages may already hold them).
//! 4. Folding journal changes onto pages that already hold some of their effect gives the
//!    same state as folding them onto pages that hold none: `Insert` overwrites,
//!    `Complete`/`Remove` delete, `Retry`/`Reschedule`/`Settings`/`Schedule` set absolute
//!    values, and
//!    `Fail` is idempotent (`JobRecord::apply_failure`), as long as the changes come in
//!    order. The property test below checks it.
//! 6. [`Fold::bytes`] is the sum of [`Pending::cost`] over the jobs plus
//!    [`queue_cost`] over the queues and [`schedule_cost`] over the schedules: the budget
//!    counts what the map holds.

use std::collections::HashMap;

use qd_protocol::JobId;

use crate::model::{Change, JobRecord, QueueSettings, ScheduleRecord};
use crate::store::pages::record;
use crate::store::StoreError;

/// What a pending entry costs besides its body: its slot in the hash table (key, tag,
/// pointer and length, at the table's load factor) and the allocator's header of the body.
/// An estimate; the budget needs the order of magnitude, not the byte.
pub const ENTRY_OVERHEAD: u64 = 64;

/// What the journal knows about an id that the pages do not (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// The record as it is now, encoded as in a page slot (`pages/record.rs`). `fresh`: see
    /// invariant 2.
    Put { body: Box<[u8]>, fresh: bool },
    /// The job completed or was removed; the pages (or the frozen map) may still have it.
    Delete,
}

impl Pending {
    pub fn body(&self) -> Option<&[u8]> {
        match self {
            Pending::Put { body, .. } => Some(body),
            Pending::Delete => None,
        }
    }

    /// What the budget counts for this entry.
    pub fn cost(&self) -> u64 {
        ENTRY_OVERHEAD + self.body().map_or(0, |b| b.len() as u64)
    }
}

/// What the budget counts for a queue's pending settings.
pub fn queue_cost(queue: &str) -> u64 {
    ENTRY_OVERHEAD + queue.len() as u64
}

/// What the budget counts for a schedule's pending entry: its name and template payload
/// (the rest is small and bounded).
pub fn schedule_cost(name: &str, schedule: Option<&ScheduleRecord>) -> u64 {
    ENTRY_OVERHEAD + name.len() as u64 + schedule.map_or(0, |s| s.schedule.job.payload.len() as u64)
}

/// The journal's net effect since a freeze.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PendingMap {
    pub jobs: HashMap<JobId, Pending>,
    /// Each queue's settings as last set; the default ones mean "remove the entry".
    pub queues: HashMap<String, QueueSettings>,
    /// Each schedule as last set, or `None`: removed.
    pub schedules: HashMap<String, Option<ScheduleRecord>>,
}

impl PendingMap {
    /// An empty map with room for as many jobs as `like` held (bounded): growing a big
    /// table step by step rehashes it several times, on the writer's path.
    pub fn sized_like(like: &PendingMap) -> PendingMap {
        PendingMap {
            jobs: HashMap::with_capacity(like.jobs.len().min(1 << 20)),
            queues: HashMap::new(),
            schedules: HashMap::new(),
        }
    }

    /// The job entries in ascending id order, as the pages take them.
    pub fn sorted_jobs(&self) -> Vec<(JobId, Option<&[u8]>)> {
        let mut entries: Vec<(JobId, Option<&[u8]>)> =
            self.jobs.iter().map(|(id, pending)| (*id, pending.body())).collect();
        entries.sort_unstable_by_key(|(id, _)| *id);
        entries
    }

    /// The queue settings, in name order.
    pub fn sorted_queues(&self) -> Vec<(&str, &QueueSettings)> {
        let mut queues: Vec<(&str, &QueueSettings)> =
            self.queues.iter().map(|(q, s)| (q.as_str(), s)).collect();
        queues.sort_unstable_by_key(|(q, _)| *q);
        queues
    }

    /// The schedules, in name order.
    pub fn sorted_schedules(&self) -> Vec<(&str, Option<&ScheduleRecord>)> {
        let mut out: Vec<(&str, Option<&ScheduleRecord>)> =
            self.schedules.iter().map(|(n, s)| (n.as_str(), s.as_ref())).collect();
        out.sort_unstable_by_key(|(n, _)| *n);
        out
    }
}

/// The record a change needs to read before it can be folded, if it needs one: the id of a
/// `Fail`, `Retry`, `Reschedule` or `Replace`.
pub fn needs_base(change: &Change) -> Option<JobId> {
    match change {
        Change::Fail { id, .. }
        | Change::Retry { id, .. }
        | Change::Reschedule { id, .. }
        | Change::Replace { id, .. } => Some(*id),
        _ => None,
    }
}

/// Folding changes into a pending map: the live path and journal replay share it.
#[derive(Debug, Default)]
pub struct Fold {
    pub map: PendingMap,
    /// What `map` costs (invariant 6).
    pub bytes: u64,
    /// The highest id ever inserted or promised by an `IdFloor` (`next_id - 1`).
    pub max_id: JobId,
}

impl Fold {
    /// Applies one change. `fresh`: whether an insert is certainly not in the pages or the
    /// frozen map (invariant 2); `base(id)`: the record a `Fail`, `Retry` or `Reschedule`
    /// applies to when the map has none.
    pub fn apply(
        &mut self,
        change: &Change,
        fresh: bool,
        base: impl FnOnce(JobId) -> Result<Option<JobRecord>, StoreError>,
    ) -> Result<(), StoreError> {
        match change {
            Change::Insert(record) => {
                let id = record.id;
                self.max_id = self.max_id.max(id);
                self.put(id, record::encode(record)?, fresh);
            }
            Change::Complete { id } | Change::Remove { id } => self.delete(*id),
            Change::Fail { id, error, run_at_ms, dead } => {
                self.update(*id, "fail", base, |r| {
                    r.apply_failure(error.clone(), *run_at_ms, *dead)
                })?;
            }
            Change::Retry { id, run_at_ms } => {
                self.update(*id, "retry", base, |r| r.apply_retry(*run_at_ms))?;
            }
            Change::Reschedule { id, run_at_ms } => {
                self.update(*id, "reschedule", base, |r| r.run_at_ms = *run_at_ms)?;
            }
            Change::Replace { id, payload, run_at_ms } => {
                self.update(*id, "replace", base, |r| r.apply_replace(payload, *run_at_ms))?;
            }
            Change::Settings { queue, settings } => {
                if self.map.queues.insert(queue.clone(), settings.clone()).is_none() {
                    self.bytes += queue_cost(queue);
                }
            }
            Change::IdFloor { next_id } => {
                self.max_id = self.max_id.max(next_id.saturating_sub(1));
            }
            Change::Schedule { name, schedule } => {
                let schedule = schedule.as_deref().cloned();
                self.bytes += schedule_cost(name, schedule.as_ref());
                let old = self.map.schedules.insert(name.clone(), schedule);
                self.bytes -= old.map_or(0, |old| schedule_cost(name, old.as_ref()));
            }
        }
        Ok(())
    }

    fn delete(&mut self, id: JobId) {
        match self.map.jobs.get(&id) {
            Some(Pending::Put { fresh: true, .. }) => {
                // Invariant 2: never in the pages, so nothing to write at all.
                let old = self.map.jobs.remove(&id).expect("just seen");
                self.bytes -= old.cost();
            }
            Some(Pending::Delete) => {}
            Some(Pending::Put { .. }) | None => {
                // Without an entry, the pages or the frozen map may hold it: a `Delete` is
                // right either way (removing a missing slot is harmless).
                self.bytes += Pending::Delete.cost();
                let old = self.map.jobs.insert(id, Pending::Delete);
                self.bytes -= old.as_ref().map_or(0, Pending::cost);
            }
        }
    }

    /// Applies `edit` to the current record of `id` (the map's, else `base`'s); a job that
    /// is gone is logged and skipped, as the [`crate::store::Store`] contract says.
    fn update(
        &mut self,
        id: JobId,
        what: &str,
        base: impl FnOnce(JobId) -> Result<Option<JobRecord>, StoreError>,
        edit: impl FnOnce(&mut JobRecord),
    ) -> Result<(), StoreError> {
        let (mut record, fresh) = match self.map.jobs.get(&id) {
            Some(Pending::Put { body, fresh }) => (record::decode(id, body)?, *fresh),
            Some(Pending::Delete) => {
                tracing::warn!(id, "asked to {what} job {id}, which is gone; skipped");
                return Ok(());
            }
            None => match base(id)? {
                Some(record) => (record, false),
                None => {
                    tracing::warn!(id, "asked to {what} job {id}, which is not stored; skipped");
                    return Ok(());
                }
            },
        };
        edit(&mut record);
        self.put(id, record::encode(&record)?, fresh);
        Ok(())
    }

    fn put(&mut self, id: JobId, body: Box<[u8]>, fresh: bool) {
        let entry = Pending::Put { body, fresh };
        self.bytes += entry.cost();
        let old = self.map.jobs.insert(id, entry);
        self.bytes -= old.as_ref().map_or(0, Pending::cost);
    }
}

#[cfg(test)]
mod tests {
    //! The algebra against a naive model, with no disk: "pages" and the frozen map are
    //! plain maps here, and a checkpoint is merging a map into them.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::{AttemptError, PersistedState};
    use crate::store::testutil::record as sample;

    /// The pages: records and queue settings, as a checkpoint leaves them.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    struct Pages {
        jobs: BTreeMap<JobId, JobRecord>,
        queues: BTreeMap<String, QueueSettings>,
        schedules: BTreeMap<String, ScheduleRecord>,
    }

    impl Pages {
        /// A checkpoint of `map`, as `PageDb::apply_checkpoint` does it.
        fn merge(&mut self, map: &PendingMap) {
            for (id, pending) in &map.jobs {
                match pending.body() {
                    Some(body) => {
                        self.jobs.insert(*id, record::decode(*id, body).unwrap());
                    }
                    None => {
                        self.jobs.remove(id);
                    }
                }
            }
            for (queue, settings) in &map.queues {
                if *settings == QueueSettings::default() {
                    self.queues.remove(queue);
                } else {
                    self.queues.insert(queue.clone(), settings.clone());
                }
            }
            for (name, schedule) in &map.schedules {
                set_schedule(self, name, schedule);
            }
        }
    }

    fn set_schedule(pages: &mut Pages, name: &str, schedule: &Option<ScheduleRecord>) {
        match schedule {
            Some(s) => pages.schedules.insert(name.to_owned(), s.clone()),
            None => pages.schedules.remove(name),
        };
    }

    /// The naive meaning of a change.
    fn model_apply(model: &mut Pages, floor: &mut JobId, change: &Change) {
        match change {
            Change::Insert(r) => {
                model.jobs.insert(r.id, (**r).clone());
                *floor = (*floor).max(r.id + 1);
            }
            Change::Complete { id } | Change::Remove { id } => {
                model.jobs.remove(id);
            }
            Change::Fail { id, error, run_at_ms, dead } => {
                if let Some(r) = model.jobs.get_mut(id) {
                    r.apply_failure(error.clone(), *run_at_ms, *dead);
                }
            }
            Change::Retry { id, run_at_ms } => {
                if let Some(r) = model.jobs.get_mut(id) {
                    r.apply_retry(*run_at_ms);
                }
            }
            Change::Reschedule { id, run_at_ms } => {
                if let Some(r) = model.jobs.get_mut(id) {
                    r.run_at_ms = *run_at_ms;
                }
            }
            Change::Settings { queue, settings } => {
                if *settings == QueueSettings::default() {
                    model.queues.remove(queue);
                } else {
                    model.queues.insert(queue.clone(), settings.clone());
                }
            }
            Change::IdFloor { next_id } => *floor = (*floor).max(*next_id),
            Change::Schedule { name, schedule } => {
                set_schedule(model, name, &schedule.as_deref().cloned())
            }
            Change::Replace { id, payload, run_at_ms } => {
                if let Some(r) = model.jobs.get_mut(id) {
                    r.apply_replace(payload, *run_at_ms);
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Change(Box<Change>),
        /// Freeze the current map (landing the frozen one first, if any).
        Freeze,
        /// The checkpoint of the frozen map lands in the pages.
        Land,
    }

    fn change(c: Change) -> Op {
        Op::Change(Box::new(c))
    }

    /// Changes on ids 1..=12, with attempt numbers that only grow per id (as the broker
    /// makes them), so that `Fail` stays idempotent.
    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            4 => (1..=12u64, 0..40usize).prop_map(|(id, len)| (0, id, len as u64)),
            2 => (1..=12u64).prop_map(|id| (1, id, 0)),
            1 => (1..=12u64).prop_map(|id| (2, id, 0)),
            3 => (1..=12u64, any::<bool>()).prop_map(|(id, dead)| (3, id, u64::from(dead))),
            1 => (1..=12u64, 0..5000u64).prop_map(|(id, at)| (4, id, at)),
            1 => (1..=12u64, 0..5000u64).prop_map(|(id, at)| (5, id, at)),
            1 => (0..3u64, any::<bool>()).prop_map(|(q, p)| (6, q, u64::from(p))),
            1 => (0..40u64).prop_map(|n| (7, n, 0)),
            1 => Just((8, 0, 0)),
            1 => Just((9, 0, 0)),
            1 => (0..3u64, 0..4u64).prop_map(|(n, at)| (10, n, at)),
            1 => (1..=12u64, 0..5000u64).prop_map(|(id, at)| (11, id, at)),
        ];
        proptest::collection::vec(op, 1..80).prop_map(|raw| {
            let mut attempt = 0u32;
            raw.into_iter()
                .map(|(kind, a, b)| match kind {
                    0 => change(Change::Insert(Box::new(sample(a, b as usize)))),
                    1 => change(Change::Complete { id: a }),
                    2 => change(Change::Remove { id: a }),
                    3 => {
                        attempt += 1;
                        change(Change::Fail {
                            id: a,
                            error: AttemptError {
                                attempt,
                                at_ms: u64::from(attempt),
                                message: format!("e{attempt}"),
                            },
                            run_at_ms: 100 + u64::from(attempt),
                            dead: b == 1,
                        })
                    }
                    4 => change(Change::Retry { id: a, run_at_ms: b }),
                    5 => change(Change::Reschedule { id: a, run_at_ms: b }),
                    6 => change(Change::Settings {
                        queue: format!("q{a}"),
                        settings: QueueSettings { paused: b == 1, ..Default::default() },
                    }),
                    7 => change(Change::IdFloor { next_id: a }),
                    11 => change(Change::Replace {
                        id: a,
                        payload: bytes::Bytes::from(vec![b as u8; (b % 5) as usize]),
                        run_at_ms: b,
                    }),
                    8 => Op::Freeze,
                    10 => change(Change::Schedule {
                        name: format!("s{a}"),
                        schedule: (b > 0).then(|| Box::new(sample_schedule(a, b))),
                    }),
                    _ => Op::Land,
                })
                .collect()
        })
    }

    /// A schedule whose payload (and so cost) and last fire vary with `b`.
    fn sample_schedule(a: u64, b: u64) -> ScheduleRecord {
        ScheduleRecord {
            schedule: qd_protocol::Schedule {
                name: format!("s{a}"),
                spec: qd_protocol::ScheduleSpec::Every { every_ms: 1000 },
                queue: "q".into(),
                job: qd_protocol::NewJob {
                    name: "j".into(),
                    payload: bytes::Bytes::from(vec![0; b as usize * 10]),
                    options: qd_protocol::JobOptions::default(),
                },
            },
            anchor_ms: 0,
            last_fire_ms: Some(b),
        }
    }

    /// What readers see: the current map over the frozen one over the pages.
    fn overlay(pages: &Pages, frozen: Option<&PendingMap>, current: &PendingMap) -> Pages {
        let mut out = pages.clone();
        if let Some(frozen) = frozen {
            out.merge(frozen);
        }
        out.merge(current);
        out
    }

    fn cost(map: &PendingMap) -> u64 {
        map.jobs.values().map(Pending::cost).sum::<u64>()
            + map.queues.keys().map(|q| queue_cost(q)).sum::<u64>()
            + map.schedules.iter().map(|(n, s)| schedule_cost(n, s.as_ref())).sum::<u64>()
    }

    fn fold_onto(
        fold: &mut Fold,
        change: &Change,
        fresh: bool,
        frozen: Option<&PendingMap>,
        pages: &Pages,
    ) {
        fold.apply(change, fresh, |id| match frozen.and_then(|f| f.jobs.get(&id)) {
            Some(p) => p.body().map(|b| record::decode(id, b)).transpose(),
            None => Ok(pages.jobs.get(&id).cloned()),
        })
        .unwrap();
    }

    proptest! {
        /// The live path: changes folded between freezes and landings always show the
        /// model's state through the overlay, and the budget counts what the map holds.
        #[test]
        fn folding_matches_the_model(ops in ops()) {
            let mut model = Pages::default();
            let mut floor: JobId = 0;
            let mut pages = Pages::default();
            let mut frozen: Option<PendingMap> = None;
            let mut fold = Fold::default();
            let mut changes = vec![];
            for op in &ops {
                match op {
                    Op::Change(change) => {
                        let change = &**change;
                        // The broker never inserts an id twice.
                        if let Change::Insert(r) = change {
                            if r.id < floor { continue; }
                        }
                        fold_onto(&mut fold, change, true, frozen.as_ref(), &pages);
                        model_apply(&mut model, &mut floor, change);
                        changes.push(change.clone());
                    }
                    Op::Freeze => {
                        if let Some(f) = frozen.take() { pages.merge(&f); }
                        let map = PendingMap::sized_like(&fold.map);
                        frozen = Some(std::mem::replace(&mut fold.map, map));
                        fold.bytes = 0;
                    }
                    Op::Land => {
                        if let Some(f) = frozen.take() { pages.merge(&f); }
                    }
                }
                prop_assert_eq!(&overlay(&pages, frozen.as_ref(), &fold.map), &model);
                prop_assert_eq!(fold.bytes, cost(&fold.map));
            }
            // Invariant 5's source: max_id covers every id inserted or promised.
            prop_assert!(fold.max_id + 1 >= floor);

            // Invariant 4: replaying the changes from `k` on, onto pages that hold the
            // effect of the first `j >= k` of them, gives the same state (a crash between a
            // checkpoint's sync and its segments' deletion).
            let j = (ops.len() * 7) % (changes.len() + 1);
            let k = j / 2;
            let mut base = Pages::default();
            let mut unused = 0;
            for c in &changes[..j] {
                model_apply(&mut base, &mut unused, c);
            }
            let mut replay = Fold::default();
            for c in &changes[k..] {
                fold_onto(&mut replay, c, false, None, &base);
            }
            base.merge(&replay.map);
            prop_assert_eq!(&base, &model);
        }
    }

    #[test]
    fn a_job_added_and_removed_between_freezes_leaves_nothing() {
        let mut fold = Fold::default();
        let none = |_| Ok(None);
        fold.apply(&Change::Insert(Box::new(sample(1, 8))), true, none).unwrap();
        fold.apply(&Change::Remove { id: 1 }, true, none).unwrap();
        assert_eq!(fold.map, PendingMap::default());
        assert_eq!(fold.bytes, 0);
        // Replayed (not fresh), the same pair must leave a `Delete` for the pages' copy.
        fold.apply(&Change::Insert(Box::new(sample(2, 8))), false, none).unwrap();
        fold.apply(&Change::Complete { id: 2 }, false, none).unwrap();
        assert_eq!(fold.map.jobs.get(&2), Some(&Pending::Delete));
    }

    #[test]
    fn retry_resets_attempts_and_keeps_errors() {
        let mut dead = sample(3, 4);
        dead.apply_failure(AttemptError { attempt: 1, at_ms: 1, message: "x".into() }, 5, true);
        let mut fold = Fold::default();
        let base = dead.clone();
        fold.apply(&Change::Retry { id: 3, run_at_ms: 77 }, true, |_| Ok(Some(base))).unwrap();
        let Some(Pending::Put { body, fresh: false }) = fold.map.jobs.get(&3) else {
            panic!("{:?}", fold.map.jobs.get(&3))
        };
        let r = record::decode(3, body).unwrap();
        assert_eq!((r.state, r.failures, r.run_at_ms), (PersistedState::Waiting, 0, 77));
        assert_eq!(r.errors, dead.errors);
        // On a job that is gone: skipped, nothing pending.
        fold.apply(&Change::Reschedule { id: 9, run_at_ms: 1 }, true, |_| Ok(None)).unwrap();
        assert!(!fold.map.jobs.contains_key(&9));
    }
}
