//! Decode limits: how many elements a request's vectors may hold ([`DecodeLimits`]), and
//! the serde helpers that enforce them *while* decoding, before anything is allocated.
//!
//! The frame length bounds the bytes a peer sends, but not what decoding them costs: a
//! `Reserve` naming a million one-byte queues is a 2 MB frame that becomes a million
//! `String`s, tens of megabytes. So every vector a request carries is decoded by
//! [`bounded`], which reads the element count bincode announces (`SeqAccess::size_hint`
//! is exact for bincode), refuses it past the limit, and never preallocates more than
//! [`PREALLOC`] elements whatever the count says: memory grows only with elements that
//! actually decoded, i.e. with bytes actually received.
//!
//! Why a thread-local: serde's `Deserialize` has no context argument, and bincode's serde
//! front end passes none either, yet the limits are the server's runtime flags. The frame
//! decoder sets them with [`with_limits`] for the duration of one synchronous decode on the
//! current thread and restores the previous value after (a guard, so a panic restores it
//! too); nothing awaits in between, so no other decode can observe them. Outside a decode
//! (a client decoding answers, a test) the defaults apply.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error as _, SeqAccess, Visitor};

/// Most elements preallocated for any bounded vector, whatever its announced length.
pub const PREALLOC: usize = 64;

/// How many elements each kind of request vector may carry. A request past a limit is
/// refused with `InvalidArgument` naming the limit; the connection stays usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Queue names in one `Reserve`.
    pub max_queues: usize,
    /// Jobs in one `Add`.
    pub max_jobs: usize,
    /// Leases in one `Ack`, and job ids in one admin request (`RetryDead`, `Remove`,
    /// `Promote`, `Kill`).
    pub max_ids: usize,
}

impl DecodeLimits {
    pub const DEFAULT: DecodeLimits =
        DecodeLimits { max_queues: 64, max_jobs: 10_000, max_ids: 10_000 };
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits::DEFAULT
    }
}

/// Which limit a vector is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Queues,
    Jobs,
    Ids,
    /// An admin cursor: at most [`crate::admin::MAX_CURSOR`] bytes, not configurable.
    Cursor,
}

impl LimitKind {
    /// The limit's name as the server's flag and the docs spell it.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Queues => "max_queues",
            LimitKind::Jobs => "max_jobs",
            LimitKind::Ids => "max_ids",
            LimitKind::Cursor => "max_cursor",
        }
    }

    fn max(self, limits: &DecodeLimits) -> usize {
        match self {
            LimitKind::Queues => limits.max_queues,
            LimitKind::Jobs => limits.max_jobs,
            LimitKind::Ids => limits.max_ids,
            LimitKind::Cursor => crate::admin::MAX_CURSOR,
        }
    }
}

/// A vector longer than its limit, as recorded during a decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    pub kind: LimitKind,
    /// The length the message announced.
    pub len: usize,
    pub max: usize,
}

thread_local! {
    static LIMITS: Cell<DecodeLimits> = const { Cell::new(DecodeLimits::DEFAULT) };
    /// The first limit broken during the current decode. Serde errors are strings; this
    /// keeps the typed fact so the frame decoder can answer `InvalidArgument`, not
    /// `UnknownRequest`.
    static BROKEN: Cell<Option<OverLimit>> = const { Cell::new(None) };
}

/// Restores the previous limits when dropped.
struct Restore(DecodeLimits);

impl Drop for Restore {
    fn drop(&mut self) {
        LIMITS.with(|l| l.set(self.0));
    }
}

/// Runs `decode` with `limits` in force on this thread; returns its result and the limit
/// it broke, if any.
pub fn with_limits<T>(limits: DecodeLimits, decode: impl FnOnce() -> T) -> (T, Option<OverLimit>) {
    let _restore = Restore(LIMITS.with(|l| l.replace(limits)));
    BROKEN.with(|b| b.set(None));
    let out = decode();
    (out, BROKEN.with(|b| b.take()))
}

/// Deserializes a vector held to the limit of `kind`; see the module docs.
pub fn bounded<'de, D, T>(d: D, kind: LimitKind) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let max = kind.max(&LIMITS.with(Cell::get));
    d.deserialize_seq(BoundedSeq { kind, max, _t: PhantomData })
}

struct BoundedSeq<T> {
    kind: LimitKind,
    max: usize,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a sequence of at most {} elements ({})", self.max, self.kind.name())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let over = |len: usize| {
            let broken = OverLimit { kind: self.kind, len, max: self.max };
            BROKEN.with(|b| {
                if b.get().is_none() {
                    b.set(Some(broken));
                }
            });
            A::Error::custom(format!(
                "{len} elements over the {} limit of {}",
                self.kind.name(),
                self.max
            ))
        };
        let announced = seq.size_hint();
        if let Some(len) = announced.filter(|&len| len > self.max) {
            return Err(over(len));
        }
        let mut out = Vec::with_capacity(announced.unwrap_or(0).min(PREALLOC));
        while let Some(x) = seq.next_element()? {
            // Formats without an exact size hint are still held to the limit.
            if out.len() == self.max {
                return Err(over(self.max + 1));
            }
            out.push(x);
        }
        Ok(out)
    }
}

/// `deserialize_with` helpers, one per limit.
pub(crate) mod de {
    use super::*;

    pub fn queues<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        bounded(d, LimitKind::Queues)
    }

    pub fn jobs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<crate::NewJob>, D::Error> {
        bounded(d, LimitKind::Jobs)
    }

    pub fn ids<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        bounded(d, LimitKind::Ids)
    }
}
