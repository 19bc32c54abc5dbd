//! Flow control settings of a queue (issue 9): [`QueueLimits`] and its [`Rate`]. An operator
//! sets them with `Request::SetQueueLimits`; the server persists them with the queue's
//! settings and the broker core enforces them at reserve time. What each limit means is
//! documented here; how the core keeps them is `docs/FLOW.md`.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// Longest rate window, in ms (one day).
pub const MAX_RATE_WINDOW_MS: u64 = 86_400_000;
/// Most starts one rate window may allow.
pub const MAX_RATE: u32 = 1_000_000;

/// At most `max` job starts per `per_ms` window, as a token bucket: a bucket of `max`
/// tokens, refilled smoothly at `max / per_ms` (so a full bucket allows a burst of `max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rate {
    pub max: u32,
    pub per_ms: u64,
}

impl Rate {
    pub fn new(max: u32, per_ms: u64) -> Self {
        Rate { max, per_ms }
    }

    fn validate(&self, what: &str) -> Result<(), WireError> {
        if self.max == 0 || self.max > MAX_RATE {
            return Err(invalid(format!("{what} allows {} starts; use 1 to {MAX_RATE}", self.max)));
        }
        if self.per_ms == 0 || self.per_ms > MAX_RATE_WINDOW_MS {
            return Err(invalid(format!(
                "{what} window is {} ms; use 1 to {MAX_RATE_WINDOW_MS}",
                self.per_ms
            )));
        }
        Ok(())
    }
}

/// Flow limits of one queue; `None` means unlimited. The default limits nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueueLimits {
    /// Job starts of the queue, across all workers.
    pub rate: Option<Rate>,
    /// Jobs of the queue active at once, across all workers.
    pub concurrency: Option<u32>,
    /// Jobs of one group (`JobOptions::group`) active at once; 1 runs each group's jobs
    /// one at a time, in order.
    pub group_concurrency: Option<u32>,
    /// Job starts of one group.
    pub group_rate: Option<Rate>,
}

impl QueueLimits {
    /// Whether these limits limit nothing.
    pub fn is_unlimited(&self) -> bool {
        *self == QueueLimits::default()
    }

    /// Checks the limits against the protocol's bounds.
    pub fn validate(&self) -> Result<(), WireError> {
        if let Some(rate) = &self.rate {
            rate.validate("the queue rate")?;
        }
        if let Some(rate) = &self.group_rate {
            rate.validate("the group rate")?;
        }
        for (what, n) in
            [("concurrency", self.concurrency), ("group concurrency", self.group_concurrency)]
        {
            if n == Some(0) {
                return Err(invalid(format!(
                    "{what} is 0: nothing could ever start; give at least 1, or leave it unset \
                     for no limit (pause the queue to stop it)"
                )));
            }
        }
        Ok(())
    }
}

fn invalid(message: String) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(QueueLimits::default().validate().is_ok());
        assert!(QueueLimits::default().is_unlimited());
        let good = QueueLimits {
            rate: Some(Rate::new(100, 1000)),
            concurrency: Some(10),
            group_concurrency: Some(1),
            group_rate: Some(Rate::new(1, MAX_RATE_WINDOW_MS)),
        };
        assert!(good.validate().is_ok());
        let bad = [
            QueueLimits { rate: Some(Rate::new(0, 1000)), ..good },
            QueueLimits { rate: Some(Rate::new(1, 0)), ..good },
            QueueLimits { group_rate: Some(Rate::new(MAX_RATE + 1, 1)), ..good },
            QueueLimits { concurrency: Some(0), ..good },
            QueueLimits { group_concurrency: Some(0), ..good },
        ];
        for limits in bad {
            let e = limits.validate().unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{limits:?}");
        }
    }
}
