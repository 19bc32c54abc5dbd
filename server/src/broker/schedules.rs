//! Named schedules (issue 9): which are due at `now`, when each fires next, and what a fire
//! does. Pure like the rest of the core: the clock is an argument, cron expressions are
//! evaluated by the `croner` crate in a `chrono-tz` zone, and nothing here does I/O.
//!
//! A schedule's ticks are the instants its spec names after its anchor (the time its
//! current spec was set): for `Every { every_ms }` `anchor + k * every_ms`, k >= 1; for a
//! cron expression every matching second of the wall clock in its zone, as croner reads it
//! across daylight-saving changes (a time skipped by a spring-forward fires at the first
//! instant after the gap, a time repeated by a fall-back fires once, at its first
//! occurrence). A schedule is due when a tick after both its anchor and its last fire has
//! come.
//!
//! The rules, numbered as the tests below cite them:
//! 1. **Missed ticks collapse.** A due schedule fires once, for its latest tick at or before
//!    `now`, however many ticks came since its last fire: a server that was down (or a core
//!    that was stalled) across ten ticks adds one job at start, not ten.
//! 2. **One fire, one job, even across a crash.** A fire adds its template job with the
//!    idempotency key `schedule:<name>:<tick ms>` and then persists the schedule's new
//!    `last_fire_ms`, both in the same batch, insert first. A crash that keeps the insert
//!    and loses the schedule's record makes the restarted core fire that tick again; the
//!    key then names the job already there (it is pending: its ack would come later in the
//!    journal than the lost record), so no second job is added.
//! 3. **Re-setting the same spec keeps the clock.** An upsert whose spec equals the stored
//!    one keeps the anchor and the last fire (only the template changes), so an application
//!    that upserts its schedules at every start does not shift or re-fire them. A changed
//!    spec starts counting from the upsert.
//! 4. `due` holds `(next_fire_ms, name)` for exactly the schedules that will fire again;
//!    `next_fire_ms` is stored in the entry as well.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use qd_protocol::{JobId, Schedule, ScheduleInfo, ScheduleSpec};

use super::{Broker, BrokerError, Effect};
use crate::model::{Change, Millis, ScheduleRecord};

/// Most schedules a server keeps; an upsert of a new name beyond this is refused.
pub const MAX_SCHEDULES: usize = 10_000;

/// A spec, parsed once.
#[derive(Debug, Clone)]
enum Ticks {
    Every { anchor_ms: Millis, every_ms: u64 },
    Cron { cron: Box<Cron>, tz: Tz },
}

impl Ticks {
    fn parse(spec: &ScheduleSpec, anchor_ms: Millis) -> Result<Ticks, String> {
        match spec {
            ScheduleSpec::Every { every_ms } => {
                Ok(Ticks::Every { anchor_ms, every_ms: (*every_ms).max(1) })
            }
            ScheduleSpec::Cron { expr, tz } => {
                let zone = Tz::from_str(tz).map_err(|_| {
                    format!(
                        "time zone {tz:?} is unknown; use an IANA zone name such as UTC or \
                         Europe/Berlin"
                    )
                })?;
                let cron = Cron::from_str(expr).map_err(|e| {
                    format!(
                        "cron expression {expr:?} does not parse ({e}); use 5 fields (min hour \
                         day month weekday) or 6 with seconds first"
                    )
                })?;
                Ok(Ticks::Cron { cron: Box::new(cron), tz: zone })
            }
        }
    }

    /// The first tick strictly after `after` (and after the anchor for `Every`).
    fn next_after(&self, after: Millis) -> Option<Millis> {
        match self {
            Ticks::Every { anchor_ms, every_ms } => {
                let k = after.checked_sub(*anchor_ms).map_or(0, |d| d / every_ms) + 1;
                anchor_ms.checked_add(k.checked_mul(*every_ms)?)
            }
            Ticks::Cron { cron, tz } => {
                // Ticks are whole seconds: none lies between `after`'s second and `after`.
                let start = at(tz, after - after % 1000)?;
                cron.find_next_occurrence(&start, false).ok().map(|t| ms(&t))
            }
        }
    }

    /// The latest tick at or before `at` (for `Every`, after the anchor).
    fn latest_at_or_before(&self, at_ms: Millis) -> Option<Millis> {
        match self {
            Ticks::Every { anchor_ms, every_ms } => {
                let k = at_ms.checked_sub(*anchor_ms)? / every_ms;
                (k > 0).then(|| anchor_ms + k * every_ms)
            }
            Ticks::Cron { cron, tz } => {
                let start = at(tz, at_ms - at_ms % 1000)?;
                cron.find_previous_occurrence(&start, true).ok().map(|t| ms(&t))
            }
        }
    }
}

fn at(tz: &Tz, ms: Millis) -> Option<DateTime<Tz>> {
    let ms = i64::try_from(ms).ok()?;
    Some(Utc.timestamp_millis_opt(ms).single()?.with_timezone(tz))
}

fn ms(t: &DateTime<Tz>) -> Millis {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

#[derive(Debug, Clone)]
struct Entry {
    record: ScheduleRecord,
    /// `None` for a stored spec this build cannot parse (say, a zone a newer tz database
    /// renamed): kept and listed, never fired, until an operator sets it again.
    ticks: Option<Ticks>,
    next_fire_ms: Option<Millis>,
}

impl Entry {
    fn new(record: ScheduleRecord, ticks: Option<Ticks>) -> Entry {
        let base = record.last_fire_ms.map_or(record.anchor_ms, |l| l.max(record.anchor_ms));
        let next_fire_ms = ticks.as_ref().and_then(|t| t.next_after(base));
        Entry { record, ticks, next_fire_ms }
    }

    fn info(&self) -> ScheduleInfo {
        ScheduleInfo::new(
            self.record.schedule.clone(),
            self.record.anchor_ms,
            self.record.last_fire_ms,
            self.next_fire_ms,
        )
    }
}

/// Every schedule, by name, and the index of when each fires next (rule 4).
#[derive(Debug, Default)]
pub(super) struct Schedules {
    entries: BTreeMap<String, Entry>,
    due: BTreeSet<(Millis, String)>,
}

impl Schedules {
    fn insert(&mut self, entry: Entry) {
        let name = entry.record.schedule.name.clone();
        self.remove(&name);
        if let Some(at) = entry.next_fire_ms {
            self.due.insert((at, name.clone()));
        }
        self.entries.insert(name, entry);
    }

    fn remove(&mut self, name: &str) -> Option<Entry> {
        let old = self.entries.remove(name)?;
        if let Some(at) = old.next_fire_ms {
            self.due.remove(&(at, name.to_owned()));
        }
        Some(old)
    }

    /// The earliest next fire of any schedule.
    pub(super) fn next_fire(&self) -> Option<Millis> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Takes the first schedule due at `now`, advances it past `now` (rule 1) and returns
    /// its record as it must be stored, with the tick it fires for.
    fn pop_due(&mut self, now: Millis) -> Option<(ScheduleRecord, Millis)> {
        let (at, name) = self.due.first().cloned().filter(|(at, _)| *at <= now)?;
        let mut entry = self.remove(&name).expect("rule 4: every due name has an entry");
        let ticks = entry.ticks.as_ref().expect("only parsed specs are due");
        let tick = ticks.latest_at_or_before(now).filter(|t| *t >= at).unwrap_or(at);
        entry.record.last_fire_ms = Some(tick);
        entry.next_fire_ms = ticks.next_after(tick.max(now));
        let record = entry.record.clone();
        self.insert(entry);
        Some((record, tick))
    }
}

/// The idempotency key of the job a schedule adds for one tick (rule 2).
pub fn fire_key(name: &str, tick_ms: Millis) -> String {
    format!("schedule:{name}:{tick_ms}")
}

/// The idempotency key of the job an operator's "run now" adds at `now_ms`: a request
/// replayed within the same millisecond adds one job, a later one adds another.
pub fn run_now_key(name: &str, now_ms: Millis) -> String {
    format!("schedule:{name}:now:{now_ms}")
}

impl Broker {
    /// An operator's "run now": adds one job from schedule `name`'s template at `now`,
    /// uncommitted like any add, keyed by `run_now_key`. The schedule itself is not
    /// touched: its next tick and last fire stay (nothing to persist but the job), so a
    /// run-now just before a tick does not eat that tick. Returns the job's id.
    pub fn run_schedule_now(&mut self, now: Millis, name: &str) -> Result<JobId, BrokerError> {
        let Some(entry) = self.schedules.entries.get(name) else {
            return Err(BrokerError::InvalidArgument(format!(
                "no schedule is named {name:?}; `qd schedule ls` shows their names"
            )));
        };
        let schedule = &entry.record.schedule;
        let queue = schedule.queue.clone();
        let mut job = schedule.job.clone();
        job.options.key = Some(run_now_key(name, now));
        let ids = self.add(now, &queue, vec![job])?;
        ids.first().copied().ok_or_else(|| {
            BrokerError::InvalidArgument(format!("schedule {name:?} added no job; try again"))
        })
    }

    /// Creates or replaces a schedule (rule 3 for what an upsert of the same spec keeps) and
    /// persists it with `Change::Schedule`. Refuses a spec that does not parse or never
    /// fires, and a new name beyond [`MAX_SCHEDULES`].
    pub fn upsert_schedule(
        &mut self,
        now: Millis,
        schedule: Schedule,
    ) -> Result<ScheduleInfo, BrokerError> {
        schedule.validate().map_err(BrokerError::from_validation)?;
        let name = schedule.name.clone();
        let old = self.schedules.entries.get(&name);
        if old.is_none() && self.schedules.entries.len() >= MAX_SCHEDULES {
            return Err(BrokerError::InvalidArgument(format!(
                "this server already keeps {MAX_SCHEDULES} schedules; remove some \
                 (qd schedule rm NAME) before adding {name:?}"
            )));
        }
        let (anchor_ms, last_fire_ms) = match old {
            Some(old) if old.record.schedule.spec == schedule.spec && old.ticks.is_some() => {
                (old.record.anchor_ms, old.record.last_fire_ms)
            }
            Some(old) => (now, old.record.last_fire_ms),
            None => (now, None),
        };
        let ticks = Ticks::parse(&schedule.spec, anchor_ms)
            .map_err(|e| BrokerError::InvalidArgument(format!("schedule {name:?}: {e}")))?;
        let entry = Entry::new(ScheduleRecord { schedule, anchor_ms, last_fire_ms }, Some(ticks));
        if entry.next_fire_ms.is_none() {
            return Err(BrokerError::InvalidArgument(format!(
                "schedule {name:?} would never fire: no time after now matches its spec; \
                 check the day, month and year fields"
            )));
        }
        let info = entry.info();
        self.effects.push(Effect::Persist(Change::Schedule {
            name: name.clone(),
            schedule: Some(Box::new(entry.record.clone())),
        }));
        self.schedules.insert(entry);
        Ok(info)
    }

    /// Deletes a schedule; jobs it added stay. Returns whether it existed.
    pub fn remove_schedule(&mut self, name: &str) -> bool {
        let existed = self.schedules.remove(name).is_some();
        if existed {
            self.effects
                .push(Effect::Persist(Change::Schedule { name: name.to_owned(), schedule: None }));
        }
        existed
    }

    /// Up to `limit` schedules whose names sort after `after`, in name order, and whether
    /// more follow.
    pub fn schedules(&self, after: Option<&str>, limit: usize) -> (Vec<ScheduleInfo>, bool) {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        let mut page: Vec<ScheduleInfo> = self
            .schedules
            .entries
            .range((from, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(_, e)| e.info())
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    /// Recovery: a stored schedule. One whose spec no longer parses is kept but never fires
    /// (the error says why, for the log); a due one fires at the first `handle_timeout`.
    pub fn restore_schedule(&mut self, record: ScheduleRecord) -> Result<(), BrokerError> {
        let parsed = Ticks::parse(&record.schedule.spec, record.anchor_ms);
        let name = record.schedule.name.clone();
        let (ticks, error) = match parsed {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        self.schedules.insert(Entry::new(record, ticks));
        match error {
            Some(e) => Err(BrokerError::InvalidArgument(format!(
                "stored schedule {name:?} will not fire: {e}; set it again"
            ))),
            None => Ok(()),
        }
    }

    /// Fires every schedule due at `now` (rules 1 and 2): adds its job, then persists its
    /// new last fire. Called from `handle_timeout`.
    pub(super) fn fire_schedules(&mut self, now: Millis) {
        while let Some((record, tick)) = self.schedules.pop_due(now) {
            let schedule = &record.schedule;
            let mut job = schedule.job.clone();
            job.options.key = Some(fire_key(&schedule.name, tick));
            // The template was validated when it was set; an add can only refuse what
            // validation refuses, so an error here means nothing was added.
            let _ = self.add(now, &schedule.queue, vec![job]);
            let name = schedule.name.clone();
            let schedule = Some(Box::new(record));
            self.effects.push(Effect::Persist(Change::Schedule { name, schedule }));
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use qd_protocol::{JobOptions, NewJob};

    use super::*;
    use crate::broker::BrokerConfig;

    const SEC: u64 = 1_000;
    const HOUR: u64 = 3_600_000;

    fn every(name: &str, every_ms: u64) -> Schedule {
        template(name, ScheduleSpec::Every { every_ms })
    }

    fn cron(name: &str, expr: &str, tz: &str) -> Schedule {
        template(name, ScheduleSpec::Cron { expr: expr.into(), tz: tz.into() })
    }

    fn template(name: &str, spec: ScheduleSpec) -> Schedule {
        Schedule {
            name: name.into(),
            spec,
            queue: "q".into(),
            job: NewJob {
                name: "tick".into(),
                payload: Bytes::from_static(b"p"),
                options: JobOptions::default(),
            },
        }
    }

    /// Unix ms of a UTC wall-clock time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Millis {
        ms(&Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap().with_timezone(&Tz::UTC))
    }

    /// The jobs' keys and the schedule records persisted since the last call, in order.
    fn drain(b: &mut Broker) -> Vec<String> {
        let mut effects = vec![];
        b.take_effects(&mut effects);
        effects
            .into_iter()
            .filter_map(|e| match e {
                Effect::Persist(Change::Insert(r)) => Some(format!("insert {}", r.options.key?)),
                Effect::Persist(Change::Schedule { name, schedule }) => {
                    Some(format!("schedule {name} {:?}", schedule.and_then(|s| s.last_fire_ms)))
                }
                _ => None,
            })
            .collect()
    }

    fn broker() -> Broker {
        Broker::new(BrokerConfig::default())
    }

    #[test]
    fn an_interval_fires_once_per_tick_and_wakes_the_timer() {
        let mut b = broker();
        let t0 = 1_000_000;
        let info = b.upsert_schedule(t0, every("s", 10 * SEC)).unwrap();
        assert_eq!(info.next_fire_ms, Some(t0 + 10 * SEC));
        assert_eq!(drain(&mut b), ["schedule s None"]);
        assert_eq!(b.poll_timeout(), Some(t0 + 10 * SEC), "the timer wakes for the fire");

        b.handle_timeout(t0 + 10 * SEC - 1);
        assert_eq!(drain(&mut b), Vec::<String>::new(), "not due yet");
        b.handle_timeout(t0 + 10 * SEC);
        let tick = t0 + 10 * SEC;
        assert_eq!(
            drain(&mut b),
            [format!("insert schedule:s:{tick}"), format!("schedule s Some({tick})")],
            "the insert comes first (rule 2)"
        );
        assert_eq!(b.poll_timeout(), Some(t0 + 20 * SEC));
        b.handle_timeout(t0 + 10 * SEC + 5);
        assert_eq!(drain(&mut b), Vec::<String>::new(), "a tick fires once");
    }

    /// Rule 1: a core restored after being down across many ticks fires once, for the
    /// latest one, and then carries on at the normal rhythm.
    #[test]
    fn run_now_adds_a_job_and_keeps_the_next_tick() {
        let mut b = broker();
        let t0 = 1_000_000;
        b.upsert_schedule(t0, every("s", 10 * SEC)).unwrap();
        drain(&mut b);
        let id = b.run_schedule_now(t0 + SEC, "s").unwrap();
        b.commit_added(t0 + SEC, &[id]);
        assert_eq!(drain(&mut b), [format!("insert {}", run_now_key("s", t0 + SEC))]);
        let again = b.run_schedule_now(t0 + SEC, "s").unwrap();
        assert_eq!(again, id, "a replay in the same ms names the same job");
        assert_ne!(b.run_schedule_now(t0 + 2 * SEC, "s").unwrap(), id, "a later press adds");
        let (infos, _) = b.schedules(None, 10);
        assert_eq!((infos[0].next_fire_ms, infos[0].last_fire_ms), (Some(t0 + 10 * SEC), None));
        assert_eq!(b.poll_timeout(), Some(t0 + 10 * SEC), "the tick did not move");
        let err = b.run_schedule_now(t0, "nope").unwrap_err();
        assert!(err.to_string().contains("qd schedule ls"), "{err}");
    }

    #[test]
    fn ticks_missed_while_down_fire_once_at_start() {
        let mut b = broker();
        let t0 = 1_000_000;
        b.upsert_schedule(t0, every("s", 10 * SEC)).unwrap();
        b.handle_timeout(t0 + 10 * SEC);
        let mut effects = vec![];
        b.take_effects(&mut effects);
        let stored = effects
            .into_iter()
            .rev()
            .find_map(|e| match e {
                Effect::Persist(Change::Schedule { schedule: Some(s), .. }) => Some(*s),
                _ => None,
            })
            .unwrap();

        // Down for 95 s: ticks at +20 .. +100 s were missed.
        let now = t0 + 105 * SEC;
        let mut b = broker();
        b.restore_schedule(stored).unwrap();
        assert_eq!(b.poll_timeout(), Some(t0 + 20 * SEC), "due at once");
        b.handle_timeout(now);
        let latest = t0 + 100 * SEC;
        assert_eq!(
            drain(&mut b),
            [format!("insert schedule:s:{latest}"), format!("schedule s Some({latest})")]
        );
        assert_eq!(b.poll_timeout(), Some(t0 + 110 * SEC));
    }

    /// Rule 2: the insert survived a crash but the schedule's record did not; the same tick
    /// fires again after the restart and its key finds the job already there.
    #[test]
    fn a_fire_replayed_after_a_crash_adds_no_second_job() {
        let mut b = broker();
        let t0 = 1_000_000;
        b.upsert_schedule(t0, every("s", 10 * SEC)).unwrap();
        let mut effects = vec![];
        b.take_effects(&mut effects);
        let Some(Effect::Persist(Change::Schedule { schedule: Some(before), .. })) = effects.pop()
        else {
            panic!("expected the schedule's record")
        };
        b.handle_timeout(t0 + 10 * SEC);
        b.take_effects(&mut effects);
        let inserted = effects
            .iter()
            .find_map(|e| match e {
                Effect::Persist(Change::Insert(r)) => Some(r.clone()),
                _ => None,
            })
            .unwrap();

        // Restart: the job is on disk, the schedule as before the fire.
        let now = t0 + 10 * SEC + 300;
        let mut b = broker();
        b.restore(now, &inserted);
        b.restore_schedule(*before).unwrap();
        b.handle_timeout(now);
        let tick = t0 + 10 * SEC;
        assert_eq!(drain(&mut b), [format!("schedule s Some({tick})")], "no second insert");
        assert_eq!(b.stats()[0].ready, 1);
    }

    /// Rule 3: upserting the same spec keeps the clock; a new spec restarts it.
    #[test]
    fn re_setting_the_same_spec_keeps_the_clock() {
        let mut b = broker();
        let t0 = 1_000_000;
        b.upsert_schedule(t0, every("s", 10 * SEC)).unwrap();
        b.handle_timeout(t0 + 10 * SEC);
        let mut changed = every("s", 10 * SEC);
        changed.job.payload = Bytes::from_static(b"new");
        let info = b.upsert_schedule(t0 + 12 * SEC, changed).unwrap();
        assert_eq!((info.anchor_ms, info.last_fire_ms), (t0, Some(t0 + 10 * SEC)));
        assert_eq!(info.next_fire_ms, Some(t0 + 20 * SEC));

        let info = b.upsert_schedule(t0 + 13 * SEC, every("s", 60 * SEC)).unwrap();
        assert_eq!(info.anchor_ms, t0 + 13 * SEC);
        assert_eq!(info.next_fire_ms, Some(t0 + 73 * SEC));
        assert_eq!(b.poll_timeout(), Some(t0 + 73 * SEC), "the old next fire is gone");
        let (list, more) = b.schedules(None, 10);
        assert_eq!((list.len(), more), (1, false));
        assert_eq!(&list[0].schedule.job.payload[..], b"p");
    }

    #[test]
    fn remove_and_list_in_pages() {
        let mut b = broker();
        for name in ["c", "a", "b"] {
            b.upsert_schedule(0, every(name, SEC)).unwrap();
        }
        let (page, more) = b.schedules(None, 2);
        let names: Vec<_> = page.iter().map(|i| i.schedule.name.as_str()).collect();
        assert_eq!((names, more), (vec!["a", "b"], true));
        let (page, more) = b.schedules(Some("b"), 2);
        assert_eq!((page[0].schedule.name.as_str(), more), ("c", false));
        drain(&mut b);
        assert!(b.remove_schedule("b"));
        assert!(!b.remove_schedule("b"));
        assert_eq!(drain(&mut b), ["schedule b None"]);
        assert_eq!(b.schedules(None, 10).0.len(), 2);
        b.remove_schedule("a");
        b.remove_schedule("c");
        assert_eq!(b.poll_timeout(), None, "nothing left to wake for");
    }

    #[test]
    fn bad_specs_are_refused_with_what_to_do() {
        let mut b = broker();
        let err = b.upsert_schedule(0, cron("s", "0 0 * *", "UTC")).unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
        let err = b.upsert_schedule(0, cron("s", "0 0 * * *", "Mars/Olympus")).unwrap_err();
        assert!(err.to_string().contains("IANA"), "{err}");
        let now = utc(2030, 1, 1, 0, 0, 0);
        let err = b.upsert_schedule(now, cron("s", "0 0 0 1 1 * 2020", "UTC")).unwrap_err();
        assert!(err.to_string().contains("never fire"), "{err}");
        // February 30th: refused, and quickly (the search is bounded).
        let err = b.upsert_schedule(now, cron("s", "0 0 0 30 2 *", "UTC")).unwrap_err();
        assert!(err.to_string().contains("never fire"), "{err}");
        let mut keyed = every("s", SEC);
        keyed.job.options.key = Some("k".into());
        assert!(b.upsert_schedule(0, keyed).is_err());
        assert_eq!(b.schedules(None, 10).0.len(), 0, "nothing was kept");
        assert_eq!(drain(&mut b), Vec::<String>::new(), "nothing was persisted");
    }

    #[test]
    fn cron_with_seconds_in_a_zone() {
        let mut b = broker();
        let now = utc(2025, 1, 15, 12, 0, 0);
        // Every 15 seconds.
        let info = b.upsert_schedule(now, cron("fast", "*/15 * * * * *", "UTC")).unwrap();
        assert_eq!(info.next_fire_ms, Some(now + 15 * SEC));
        // 09:30 in Tokyo (UTC+9, no DST) is 00:30 UTC.
        let info = b.upsert_schedule(now, cron("tokyo", "0 30 9 * * *", "Asia/Tokyo")).unwrap();
        assert_eq!(info.next_fire_ms, Some(utc(2025, 1, 16, 0, 30, 0)));
        // Five fields fire at second 0.
        let info = b.upsert_schedule(now + 500, cron("m", "* * * * *", "UTC")).unwrap();
        assert_eq!(info.next_fire_ms, Some(now + 60 * SEC));
    }

    /// Fires of a daily 02:30 Berlin schedule over `days` days from `start`, driving the
    /// core's timer as the engine does.
    fn daily_fires(expr: &str, start: Millis, days: u64) -> Vec<Millis> {
        let mut b = broker();
        b.upsert_schedule(start, cron("d", expr, "Europe/Berlin")).unwrap();
        let mut fires = vec![];
        while let Some(at) = b.poll_timeout().filter(|at| *at < start + days * 24 * HOUR) {
            b.handle_timeout(at);
            let mut effects = vec![];
            b.take_effects(&mut effects);
            for e in effects {
                if let Effect::Persist(Change::Schedule { schedule: Some(s), .. }) = e {
                    fires.extend(s.last_fire_ms); // None: the upsert itself
                }
            }
        }
        fires
    }

    /// Spring forward: Berlin skips 02:00-03:00 on 2025-03-30. A daily 02:30 fires once that
    /// day, at the first instant after the gap (03:00 CEST = 01:00 UTC), and at 02:30 on the
    /// days around it.
    #[test]
    fn a_time_skipped_by_dst_fires_once_after_the_gap() {
        let fires = daily_fires("0 30 2 * * *", utc(2025, 3, 29, 0, 0, 0), 3);
        assert_eq!(
            fires,
            [utc(2025, 3, 29, 1, 30, 0), utc(2025, 3, 30, 1, 0, 0), utc(2025, 3, 31, 0, 30, 0)]
        );
    }

    /// Fall back: Berlin repeats 02:00-03:00 on 2025-10-26. A daily 02:30 fires once that
    /// day, at the first 02:30 (CEST, 00:30 UTC).
    #[test]
    fn a_time_repeated_by_dst_fires_once() {
        let fires = daily_fires("0 30 2 * * *", utc(2025, 10, 25, 0, 0, 0), 3);
        assert_eq!(
            fires,
            [utc(2025, 10, 25, 0, 30, 0), utc(2025, 10, 26, 0, 30, 0), utc(2025, 10, 27, 1, 30, 0)]
        );
    }

    /// Rule 1 for cron across a restart: down from before 03:00 UTC until after 06:00 UTC, an
    /// hourly schedule fires once, for 06:00.
    #[test]
    fn cron_ticks_missed_while_down_fire_once() {
        let record = ScheduleRecord {
            schedule: cron("h", "0 0 * * * *", "UTC"),
            anchor_ms: utc(2025, 5, 1, 0, 0, 0),
            last_fire_ms: Some(utc(2025, 5, 1, 2, 0, 0)),
        };
        let mut b = broker();
        b.restore_schedule(record).unwrap();
        b.handle_timeout(utc(2025, 5, 1, 6, 20, 0));
        let six = utc(2025, 5, 1, 6, 0, 0);
        assert_eq!(
            drain(&mut b),
            [format!("insert schedule:h:{six}"), format!("schedule h Some({six})")]
        );
        assert_eq!(b.poll_timeout(), Some(utc(2025, 5, 1, 7, 0, 0)));
    }

    #[test]
    fn a_stored_spec_that_no_longer_parses_is_kept_but_never_fires() {
        let record = ScheduleRecord {
            schedule: cron("old", "0 0 * * *", "Gone/Zone"),
            anchor_ms: 0,
            last_fire_ms: None,
        };
        let mut b = broker();
        let err = b.restore_schedule(record).unwrap_err();
        assert!(err.to_string().contains("set it again"), "{err}");
        assert_eq!(b.poll_timeout(), None);
        assert_eq!(b.schedules(None, 10).0[0].next_fire_ms, None);
    }
}
