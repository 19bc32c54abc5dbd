//! Backoff arithmetic: how long a job waits after its n-th failed try.
//!
//! Pure functions of the policy, the job id and the failure count, with no state and no
//! randomness from the OS, so that any backend (this in-memory core, a future SQL one) computes
//! the same delays and tests can pin them. [`after_failure`] is the one rule deciding
//! *whether* a failed try is retried (attempts left, the worker's hint) and when; the
//! in-memory core and the PostgreSQL backend both call it.

use qd_protocol::{Backoff, JobId, RetryHint};

/// What becomes of a job after a failed try: see [`after_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterFailure {
    /// Its attempts are used up, or the worker said never: it goes to the dead set.
    pub dead: bool,
    /// When it runs again; for a dead job, its time of death (`now`).
    pub run_at_ms: u64,
}

/// The retry rule: the `attempt`-th failed try (counting from 1) of job `id`, whose policy
/// allows `max_attempts` tries, failed at `now` with the worker's `hint`. Dead when the
/// attempts are used up or the hint is `Never`; otherwise retried after the backoff, or
/// after the hint's own delay (`After`, `RateLimited`, which callers normally handle
/// without charging an attempt).
pub fn after_failure(
    backoff: &Backoff,
    max_attempts: u32,
    id: JobId,
    attempt: u32,
    hint: RetryHint,
    now: u64,
) -> AfterFailure {
    let dead = matches!(hint, RetryHint::Never) || attempt >= max_attempts;
    let delay = match hint {
        RetryHint::Backoff => delay_ms(backoff, id, attempt),
        RetryHint::After { delay_ms } | RetryHint::RateLimited { delay_ms } => delay_ms,
        RetryHint::Never => 0,
    };
    let run_at_ms = if dead { now } else { now.saturating_add(delay) };
    AfterFailure { dead, run_at_ms }
}

/// The wait after the `failures`-th failure (counting from 1) before jitter.
///
/// `Fixed` waits its delay every time; `Exponential` waits `base_ms * 2^(failures - 1)`,
/// capped at `max_ms`. Saturates instead of overflowing, for any `failures`; `0` is treated
/// as `1`.
pub fn base_delay_ms(backoff: &Backoff, failures: u32) -> u64 {
    match *backoff {
        Backoff::Fixed { delay_ms } => delay_ms,
        Backoff::Exponential { base_ms, max_ms, .. } => {
            let shift = failures.max(1) - 1;
            let raw = if base_ms == 0 {
                0
            } else if shift >= 64 || base_ms > (u64::MAX >> shift) {
                u64::MAX
            } else {
                base_ms << shift
            };
            raw.min(max_ms)
        }
    }
}

/// The wait after the `failures`-th failure of job `id`, jitter included.
///
/// With `jitter_pct = p` the base wait `d` becomes a value in `[d * (100 - p) / 100, d]`,
/// drawn from a hash of `(id, failures)`: jitter spreads a burst of failures apart, yet the
/// same job and try always get the same wait, so runs are reproducible.
pub fn delay_ms(backoff: &Backoff, id: JobId, failures: u32) -> u64 {
    let d = base_delay_ms(backoff, failures);
    let jitter_pct = match *backoff {
        Backoff::Exponential { jitter_pct, .. } => u128::from(jitter_pct.min(100)),
        Backoff::Fixed { .. } => 0,
    };
    if jitter_pct == 0 || d == 0 {
        return d;
    }
    // u128 because d * 100 and the span d - lo + 1 can both overflow u64.
    let d = u128::from(d);
    let lo = d * (100 - jitter_pct) / 100;
    let span = d - lo + 1;
    let draw = u128::from(splitmix64(id ^ splitmix64(u64::from(failures)))) % span;
    // lo + draw <= d, and d came from a u64.
    u64::try_from(lo + draw).unwrap_or(u64::MAX)
}

/// SplitMix64's output function of `x + golden gamma`: a cheap, well-mixed, bijective hash.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(base_ms: u64, max_ms: u64, jitter_pct: u8) -> Backoff {
        Backoff::Exponential { base_ms, max_ms, jitter_pct }
    }

    #[test]
    fn fixed_is_constant() {
        let b = Backoff::Fixed { delay_ms: 250 };
        for n in [1, 2, 3, 100, u32::MAX] {
            assert_eq!(delay_ms(&b, 7, n), 250);
        }
        assert_eq!(delay_ms(&Backoff::NONE, 7, 1), 0);
    }

    #[test]
    fn exponential_doubles_then_caps() {
        let b = exp(100, 1_000, 0);
        let got: Vec<u64> = (1..=6).map(|n| delay_ms(&b, 1, n)).collect();
        assert_eq!(got, [100, 200, 400, 800, 1_000, 1_000]);
        // n = 0 is not a failure count, but must not underflow.
        assert_eq!(base_delay_ms(&b, 0), 100);
    }

    #[test]
    fn exponential_saturates_without_overflow() {
        let b = exp(3, u64::MAX, 0);
        assert_eq!(base_delay_ms(&b, 63), 3 << 62);
        assert_eq!(base_delay_ms(&b, 64), u64::MAX);
        for n in [65, 100, 1_000, u32::MAX] {
            assert_eq!(base_delay_ms(&b, n), u64::MAX, "n = {n}");
        }
        assert_eq!(base_delay_ms(&exp(0, 10, 0), 1_000), 0);
        assert_eq!(base_delay_ms(&exp(1_000, 3_600_000, 20), 1_000), 3_600_000);
    }

    #[test]
    fn jitter_stays_in_bounds_and_is_reproducible() {
        let b = exp(1_000, 60_000, 20);
        let mut seen_below_base = false;
        for id in 0..500u64 {
            for n in 1..=8 {
                let d = base_delay_ms(&b, n);
                let got = delay_ms(&b, id, n);
                assert!(got >= d * 80 / 100 && got <= d, "id {id} n {n}: {got} vs {d}");
                assert_eq!(got, delay_ms(&b, id, n));
                seen_below_base |= got < d;
            }
        }
        assert!(seen_below_base, "20% jitter never shortened a wait");
    }

    #[test]
    fn full_jitter_and_huge_waits() {
        let b = exp(10, 10, 100);
        let got: Vec<u64> = (0..200).map(|id| delay_ms(&b, id, 1)).collect();
        assert!(got.iter().all(|&d| d <= 10));
        assert!(got.contains(&0) && got.contains(&10), "draws should cover [0, 10]: {got:?}");
        let huge = exp(1, u64::MAX, 50);
        for id in 0..50 {
            let got = delay_ms(&huge, id, 1_000);
            assert!(got >= u64::MAX / 2, "{got}");
        }
    }

    #[test]
    fn after_failure_retries_until_the_attempts_are_used_up() {
        let b = exp(100, 1_000, 0);
        let retry = after_failure(&b, 3, 1, 1, RetryHint::Backoff, 5_000);
        assert_eq!(retry, AfterFailure { dead: false, run_at_ms: 5_100 });
        assert_eq!(after_failure(&b, 3, 1, 2, RetryHint::Backoff, 0).run_at_ms, 200);
        let last = after_failure(&b, 3, 1, 3, RetryHint::Backoff, 5_000);
        assert_eq!(last, AfterFailure { dead: true, run_at_ms: 5_000 });
        let never = after_failure(&b, 3, 1, 1, RetryHint::Never, 7);
        assert_eq!(never, AfterFailure { dead: true, run_at_ms: 7 });
        let after = after_failure(&b, 3, 1, 1, RetryHint::After { delay_ms: 42 }, 10);
        assert_eq!(after, AfterFailure { dead: false, run_at_ms: 52 });
    }

    #[test]
    fn splitmix_is_pinned() {
        // First outputs of SplitMix64 seeded with 0 (the reference sequence).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_ne!(splitmix64(1), splitmix64(2));
    }
}
