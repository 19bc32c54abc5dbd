//! Parked reserves of the PostgreSQL backend, grouped by the queue list they name, and the
//! poll schedule of each list. Pure: no I/O, no clock (every method takes `now`), tested
//! below with made-up times.
//!
//! Invariants:
//! 1. At most one fetch per list is in flight (`fetching`), sized to the free slots of the
//!    waiters it was started for (`seen`), so one statement serves all of them and a broker
//!    never leases more rows than it has takers for.
//! 2. Rows are shared out in arrival order: the oldest waiter is filled to its `max` first.
//! 3. A list whose last fetch came back short polls again after `idle_ms`, which doubles
//!    from [`POLL_MIN_MS`] up to [`POLL_MAX_MS`]; a full fetch, a new waiter or a local add
//!    to one of its queues makes it due at once.
//! 4. Fetch-ahead: while a list's fetches come back full, each asks for up to [`AHEAD`]
//!    rows more than its waiters want, and keeps them (`ahead`, leased to this broker) for
//!    the next reserve, which is then answered at once instead of after a round trip. A
//!    worker has one reserve in flight, so its rate is its slots over that round trip; this
//!    is what raised the one-worker drain. Rows kept ahead longer than [`AHEAD_TTL_MS`]
//!    with no taker are handed back (`stale`), so an idle list holds no leases.
//! 5. Refill: a busy list whose rows ahead were taken (`taken`) tops them up to [`AHEAD`]
//!    at once, without waiting for a reserve to park on an empty list. The next fetch then
//!    runs while the workers consume what is kept, instead of after they ran dry (each
//!    reserve used to wait for a whole statement once the rows ahead were gone). A list
//!    refills only after a taker came, so an abandoned list fetches at most once more and
//!    its rows go back after [`AHEAD_TTL_MS`].

use std::collections::{HashMap, VecDeque};

use crate::broker::WaiterKey;
use crate::model::{ConnId, Millis};

use super::{POLL_MAX_MS, POLL_MIN_MS};

/// Most rows one fetch asks for.
pub const FETCH_MAX: u32 = 1000;
/// Most rows a list keeps leased ahead of its reserves.
pub const AHEAD: u32 = 512;
/// Rows kept ahead with no reserve to take them go back after this long.
pub const AHEAD_TTL_MS: u64 = 1000;

/// One parked reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub key: WaiterKey,
    pub max: u32,
    /// When an empty answer is due (unless `once`).
    pub deadline: Millis,
    /// A reserve with no wait: answered after the first fetch that included it.
    pub once: bool,
    /// Counted in a fetch already (false: parked since the last fetch started, which then
    /// makes the list due again at once).
    pub seen: bool,
}

#[derive(Debug)]
struct List<T> {
    waiters: VecDeque<Waiter>,
    /// Rows leased ahead for the next reserves (invariant 4), oldest first.
    ahead: VecDeque<T>,
    /// When a row was last taken from `ahead` or it was filled.
    ahead_since: Millis,
    /// A reserve took rows since the last fetch started: the list may refill (invariant 5).
    taken: bool,
    fetching: bool,
    /// Rows the fetch in flight asked for.
    asked: u32,
    next_poll: Millis,
    idle_ms: u64,
}

/// Every parked reserve of this broker. See the module docs.
#[derive(Debug)]
pub struct Lists<T> {
    lists: HashMap<Vec<String>, List<T>>,
}

impl<T> Default for Lists<T> {
    fn default() -> Self {
        Lists { lists: HashMap::new() }
    }
}

/// What [`Lists::fetched`] decided: `(waiter, its rows)` to answer (possibly no rows, for
/// a `once` waiter), and rows nobody took.
pub type Shared<T> = (Vec<(WaiterKey, Vec<T>)>, Vec<T>);

impl<T> List<T> {
    fn idle(&self) -> bool {
        !self.fetching && self.waiters.is_empty() && self.ahead.is_empty()
    }

    /// The last fetch came back full.
    fn busy(&self) -> bool {
        self.idle_ms == POLL_MIN_MS
    }

    /// Rows to top the kept rows up with although no reserve waits (invariant 5).
    fn refill(&self) -> u32 {
        if self.busy() && self.taken {
            AHEAD.saturating_sub(self.ahead.len() as u32)
        } else {
            0
        }
    }
}

impl<T> Lists<T> {
    /// Parks `waiter` on `queues`, or answers it at once from the rows kept ahead (`Some`:
    /// its rows). The list is due at once either way (to refill what was taken).
    pub fn park(&mut self, queues: Vec<String>, waiter: Waiter, now: Millis) -> Option<Vec<T>> {
        let list = self.lists.entry(queues).or_insert_with(|| List {
            waiters: VecDeque::new(),
            ahead: VecDeque::new(),
            ahead_since: now,
            taken: false,
            fetching: false,
            asked: 0,
            next_poll: now,
            idle_ms: POLL_MIN_MS,
        });
        list.next_poll = now;
        if list.waiters.is_empty() && !list.ahead.is_empty() {
            let n = (waiter.max as usize).min(list.ahead.len());
            list.ahead_since = now;
            list.taken = true;
            return Some(list.ahead.drain(..n).collect());
        }
        list.waiters.push_back(waiter);
        None
    }

    /// Drops the waiters of a closed connection.
    pub fn remove_conn(&mut self, conn: ConnId) {
        for list in self.lists.values_mut() {
            list.waiters.retain(|w| w.key.conn != conn);
        }
        self.lists.retain(|_, l| !l.idle());
    }

    /// Jobs were added to `queues`: lists naming any of them are due now.
    pub fn wake(&mut self, queues: &[String], now: Millis) {
        for (names, list) in &mut self.lists {
            if names.iter().any(|n| queues.contains(n)) {
                list.next_poll = now;
                list.idle_ms = POLL_MIN_MS;
            }
        }
    }

    /// When something is next due: a poll or a waiter's deadline.
    pub fn next_wake(&self, now: Millis) -> Option<Millis> {
        let mut at: Option<Millis> = None;
        for list in self.lists.values() {
            if !list.fetching && (!list.waiters.is_empty() || list.refill() > 0) {
                at = Some(at.map_or(list.next_poll, |a| a.min(list.next_poll)));
            }
            for w in list.waiters.iter().filter(|w| !w.once) {
                at = Some(at.map_or(w.deadline, |a| a.min(w.deadline)));
            }
            if !list.ahead.is_empty() {
                let stale = list.ahead_since.saturating_add(AHEAD_TTL_MS);
                at = Some(at.map_or(stale, |a| a.min(stale)));
            }
        }
        at.map(|a| a.max(now))
    }

    /// Removes and returns the waiters whose wait ran out.
    pub fn expire(&mut self, now: Millis) -> Vec<WaiterKey> {
        let mut out = Vec::new();
        for list in self.lists.values_mut() {
            list.waiters.retain(|w| {
                let done = !w.once && w.deadline <= now;
                if done {
                    out.push(w.key);
                }
                !done
            });
        }
        self.lists.retain(|_, l| !l.idle());
        out
    }

    /// Takes the rows kept ahead that found no taker within [`AHEAD_TTL_MS`], to hand back.
    pub fn stale(&mut self, now: Millis) -> Vec<T> {
        let mut out = Vec::new();
        for list in self.lists.values_mut() {
            if !list.ahead.is_empty() && list.ahead_since.saturating_add(AHEAD_TTL_MS) <= now {
                out.extend(list.ahead.drain(..));
            }
        }
        self.lists.retain(|_, l| !l.idle());
        out
    }

    /// Starts the fetches due at `now`: `(queues, rows to ask for)` each.
    pub fn due(&mut self, now: Millis) -> Vec<(Vec<String>, u32)> {
        let mut out = Vec::new();
        for (queues, list) in &mut self.lists {
            let refill = list.refill();
            if list.fetching || (list.waiters.is_empty() && refill == 0) || list.next_poll > now {
                continue;
            }
            let mut n = 0u32;
            for w in &mut list.waiters {
                if n >= FETCH_MAX {
                    break;
                }
                w.seen = true;
                n = n.saturating_add(w.max);
            }
            // Fetch ahead only while fetches come back full (a busy queue).
            let ahead =
                if list.busy() { AHEAD - list.ahead.len().min(AHEAD as usize) as u32 } else { 0 };
            let n = n.saturating_add(ahead).min(FETCH_MAX);
            list.fetching = true;
            list.taken = false;
            list.asked = n;
            out.push((queues.clone(), n));
        }
        out
    }

    /// The fetch for `queues` returned `rows` (in delivery order): shares them out.
    pub fn fetched(&mut self, queues: &[String], rows: Vec<T>, now: Millis) -> Shared<T> {
        let Some(list) = self.lists.get_mut(queues) else { return (Vec::new(), rows) };
        list.fetching = false;
        let short = (rows.len() as u64) < u64::from(list.asked);
        // Rows kept ahead go first: they were leased earlier.
        let mut rows = std::mem::take(&mut list.ahead).into_iter().chain(rows);
        let mut served = Vec::new();
        let mut kept = VecDeque::new();
        for w in list.waiters.drain(..) {
            if !w.seen {
                kept.push_back(w);
                continue;
            }
            let got: Vec<T> = rows.by_ref().take(w.max as usize).collect();
            if got.is_empty() && !w.once {
                kept.push_back(w);
            } else {
                list.taken |= !got.is_empty();
                served.push((w.key, got));
            }
        }
        list.waiters = kept;
        if short {
            list.next_poll = now.saturating_add(list.idle_ms);
            list.idle_ms = (list.idle_ms * 2).min(POLL_MAX_MS);
        } else {
            list.next_poll = now;
            list.idle_ms = POLL_MIN_MS;
        }
        // A waiter that came during the fetch was not counted in it: look again at once.
        if list.waiters.iter().any(|w| !w.seen) {
            list.next_poll = now;
        }
        // What is left is kept for the next reserves, up to AHEAD; the rest goes back.
        list.ahead = rows.by_ref().take(AHEAD as usize).collect();
        list.ahead_since = now;
        if list.idle() {
            self.lists.remove(queues);
        }
        (served, rows.collect())
    }

    /// The fetch for `queues` failed: its `once` waiters are returned (to be answered with
    /// the error); the others wait and the list retries after the longest poll interval.
    pub fn fetch_failed(&mut self, queues: &[String], now: Millis) -> Vec<Waiter> {
        let Some(list) = self.lists.get_mut(queues) else { return Vec::new() };
        list.fetching = false;
        list.next_poll = now.saturating_add(POLL_MAX_MS);
        let (once, rest): (Vec<Waiter>, Vec<Waiter>) =
            list.waiters.drain(..).partition(|w| w.once && w.seen);
        list.waiters = rest.into_iter().collect();
        if list.idle() {
            self.lists.remove(queues);
        }
        once
    }

    /// Every waiter and every row kept ahead, removed (shutdown).
    pub fn drain(&mut self) -> (Vec<Waiter>, Vec<T>) {
        let (mut waiters, mut rows) = (Vec::new(), Vec::new());
        for (_, list) in self.lists.drain() {
            waiters.extend(list.waiters);
            rows.extend(list.ahead);
        }
        (waiters, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(conn: ConnId, max: u32, deadline: Millis, once: bool) -> Waiter {
        Waiter { key: WaiterKey { conn, request: conn }, max, deadline, once, seen: false }
    }

    fn q(name: &str) -> Vec<String> {
        vec![name.to_owned()]
    }

    #[test]
    fn one_fetch_serves_every_waiter_in_arrival_order() {
        let mut lists: Lists<u32> = Lists::default();
        lists.park(q("a"), waiter(1, 2, 1_000, false), 0);
        lists.park(q("a"), waiter(2, 3, 1_000, false), 0);
        assert_eq!(lists.due(0), vec![(q("a"), 5 + AHEAD)], "a busy list fetches ahead");
        assert!(lists.due(0).is_empty(), "one fetch in flight per list");
        let (served, left) = lists.fetched(&q("a"), vec![10, 11, 12], 0);
        assert_eq!(
            served,
            vec![
                (WaiterKey { conn: 1, request: 1 }, vec![10, 11]),
                (WaiterKey { conn: 2, request: 2 }, vec![12])
            ]
        );
        assert!(left.is_empty());
        assert!(lists.next_wake(0).is_none(), "every waiter answered");
    }

    #[test]
    fn an_idle_list_backs_off_and_a_local_add_wakes_it() {
        let mut lists: Lists<u32> = Lists::default();
        lists.park(q("a"), waiter(1, 1, 10_000, false), 0);
        let mut now = 0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            assert_eq!(lists.due(now).len(), 1);
            let (served, _) = lists.fetched(&q("a"), vec![], now);
            assert!(served.is_empty());
            let next = lists.next_wake(now).unwrap();
            gaps.push(next - now);
            now = next;
        }
        assert_eq!(gaps, [10, 20, 40, 80, 100, 100]);
        lists.wake(&q("a"), now + 1);
        assert_eq!(lists.next_wake(now + 1), Some(now + 1));
    }

    #[test]
    fn waits_run_out_and_once_waiters_are_answered_after_one_fetch() {
        let mut lists: Lists<u32> = Lists::default();
        lists.park(q("a"), waiter(1, 1, 50, false), 0);
        lists.park(q("b"), waiter(2, 1, 0, true), 0);
        assert_eq!(lists.due(0).len(), 2);
        let (served, _) = lists.fetched(&q("b"), vec![], 0);
        assert_eq!(served, vec![(WaiterKey { conn: 2, request: 2 }, vec![])]);
        let (_, left) = lists.fetched(&q("a"), vec![7, 8], 0);
        assert!(left.is_empty(), "more rows than takers are kept ahead");
        assert_eq!(lists.park(q("a"), waiter(3, 1, 50, false), 0), Some(vec![8]), "at once");
        assert_eq!(lists.park(q("a"), waiter(4, 1, 50, false), 0), None, "none left: parked");
        assert_eq!(lists.expire(49), vec![]);
        assert_eq!(lists.expire(50), vec![WaiterKey { conn: 4, request: 4 }]);
    }

    #[test]
    fn a_waiter_parked_during_a_fetch_makes_the_list_due_again() {
        let mut lists: Lists<u32> = Lists::default();
        lists.park(q("a"), waiter(1, 1, 10_000, false), 0);
        assert_eq!(lists.due(0), vec![(q("a"), 1 + AHEAD)]);
        lists.park(q("a"), waiter(2, 1, 10_000, false), 1);
        let (served, _) = lists.fetched(&q("a"), vec![], 2);
        assert!(served.is_empty());
        assert_eq!(lists.next_wake(2), Some(2), "the newcomer was not counted in that fetch");
        assert_eq!(lists.due(2), vec![(q("a"), 2)]);
        lists.fetched(&q("a"), vec![], 3);
        assert_eq!(lists.next_wake(3), Some(23), "both counted: back to backing off");
    }

    #[test]
    fn rows_kept_ahead_with_no_taker_go_back() {
        let mut lists: Lists<u32> = Lists::default();
        lists.park(q("a"), waiter(1, 1, 5_000, false), 0);
        lists.due(0);
        let (served, left) = lists.fetched(&q("a"), vec![1, 2, 3], 10);
        assert_eq!((served.len(), left.len()), (1, 0));
        assert_eq!(lists.next_wake(10), Some(10 + AHEAD_TTL_MS), "wakes to hand them back");
        assert!(lists.stale(10 + AHEAD_TTL_MS - 1).is_empty());
        assert_eq!(lists.stale(10 + AHEAD_TTL_MS), vec![2, 3]);
        assert!(lists.next_wake(10 + AHEAD_TTL_MS).is_none(), "an idle list holds nothing");
        let (_, rows) = lists.drain();
        assert!(rows.is_empty());
    }

    #[test]
    fn a_busy_list_refills_what_was_taken_before_its_rows_run_out() {
        let mut lists: Lists<u32> = Lists::default();
        lists.park(q("a"), waiter(1, 2, 5_000, false), 0);
        assert_eq!(lists.due(0), vec![(q("a"), 2 + AHEAD)]);
        let (served, left) = lists.fetched(&q("a"), (0..2 + AHEAD).collect(), 1);
        assert_eq!((served.len(), left.len()), (1, 0));
        assert!(lists.due(1).is_empty(), "the rows ahead are full");
        // A reserve takes two of the rows kept: a refill of two is due at once, though no
        // reserve is parked (before, the list fetched only once a reserve found none left).
        assert_eq!(lists.park(q("a"), waiter(2, 2, 5_000, false), 2), Some(vec![2, 3]));
        assert_eq!(lists.next_wake(2), Some(2));
        assert_eq!(lists.due(2), vec![(q("a"), 2)]);
        // While it runs, reserves keep taking what is kept.
        assert_eq!(lists.park(q("a"), waiter(3, 2, 5_000, false), 3), Some(vec![4, 5]));
        let (served, left) = lists.fetched(&q("a"), vec![1000, 1001], 4);
        assert!(served.is_empty() && left.is_empty());
        assert_eq!(lists.due(4), vec![(q("a"), 2)], "taken during the fetch: refill again");
        // Full again and nobody takes any more: no refill; the rows go back after the TTL
        // and the abandoned list is gone.
        lists.fetched(&q("a"), vec![2000, 2001], 5);
        assert!(lists.due(5).is_empty(), "nothing taken since: no refill");
        assert_eq!(lists.next_wake(5), Some(5 + AHEAD_TTL_MS));
        assert_eq!(lists.stale(5 + AHEAD_TTL_MS).len(), AHEAD as usize);
        assert!(lists.next_wake(5 + AHEAD_TTL_MS).is_none());
    }

    #[test]
    fn an_idle_list_does_not_refill() {
        let mut lists: Lists<u32> = Lists::default();
        lists.park(q("a"), waiter(1, 1, 5_000, false), 0);
        lists.due(0);
        // Short: the queue ran dry, so what is left is kept but not topped up.
        lists.fetched(&q("a"), vec![1, 2, 3], 1);
        assert_eq!(lists.park(q("a"), waiter(2, 1, 5_000, false), 2), Some(vec![2]));
        assert!(lists.due(2).is_empty());
        assert_eq!(lists.next_wake(2), Some(2 + AHEAD_TTL_MS));
    }

    #[test]
    fn a_closed_connection_leaves_its_list() {
        let mut lists: Lists<u32> = Lists::default();
        lists.park(q("a"), waiter(1, 1, 50, false), 0);
        lists.remove_conn(1);
        assert!(lists.due(0).is_empty());
        assert!(lists.next_wake(0).is_none());
    }
}
