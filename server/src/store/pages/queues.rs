//! The byte encoding of a queue's persisted [`QueueSettings`], as stored under the queue's
//! name in sled's "queues" tree (`keys.rs`) and carried by the journal's `Settings` entry
//! (`journal/codec.rs`). What a setting does is the broker core's business.
//!
//! ```text
//! settings = flags u8             0x01 paused
//!                                 0x02 rate               present
//!                                 0x04 concurrency        present
//!                                 0x08 group_concurrency  present
//!                                 0x10 group_rate         present
//!                                 every other bit must be clear
//!            [rate]               varint max, varint per_ms      (if 0x02)
//!            [concurrency]        varint                         (if 0x04)
//!            [group_concurrency]  varint                         (if 0x08)
//!            [group_rate]         varint max, varint per_ms      (if 0x10)
//! ```
//!
//! Varints are LEB128 (`varint.rs`), as in a record body. Format 5 as first released wrote
//! only the flags byte with bit 0x01; that is still exactly what a queue without limits
//! writes, so those bytes decode unchanged. New settings take the next free bit, their
//! values following in bit order; a decoder refuses bits it does not know, so an older qd
//! never silently drops a setting a newer one stored.

use qd_protocol::{QueueLimits, Rate};

use crate::model::QueueSettings;
use crate::store::varint::{put_varint, Reader};
use crate::store::StoreError;

const PAUSED: u8 = 0x01;
const RATE: u8 = 0x02;
const CONCURRENCY: u8 = 0x04;
const GROUP_CONCURRENCY: u8 = 0x08;
const GROUP_RATE: u8 = 0x10;
const KNOWN: u8 = PAUSED | RATE | CONCURRENCY | GROUP_CONCURRENCY | GROUP_RATE;

/// The settings' bytes.
pub fn encode(settings: &QueueSettings) -> Vec<u8> {
    let limits = &settings.limits;
    let mut flags = 0;
    for (bit, set) in [
        (PAUSED, settings.paused),
        (RATE, limits.rate.is_some()),
        (CONCURRENCY, limits.concurrency.is_some()),
        (GROUP_CONCURRENCY, limits.group_concurrency.is_some()),
        (GROUP_RATE, limits.group_rate.is_some()),
    ] {
        if set {
            flags |= bit;
        }
    }
    let mut out = vec![flags];
    let put_rate = |out: &mut Vec<u8>, rate: Rate| {
        put_varint(out, u64::from(rate.max));
        put_varint(out, rate.per_ms);
    };
    if let Some(rate) = limits.rate {
        put_rate(&mut out, rate);
    }
    if let Some(n) = limits.concurrency {
        put_varint(&mut out, u64::from(n));
    }
    if let Some(n) = limits.group_concurrency {
        put_varint(&mut out, u64::from(n));
    }
    if let Some(rate) = limits.group_rate {
        put_rate(&mut out, rate);
    }
    out
}

/// Decodes what [`encode`] wrote for `queue`.
pub fn decode(queue: &str, bytes: &[u8]) -> Result<QueueSettings, StoreError> {
    decode_inner(bytes).ok_or_else(|| StoreError::Corrupt {
        what: format!("the settings of queue {queue:?} do not decode: {bytes:02x?}"),
        hint: "the data dir is damaged or was written by a newer qd; run that qd, or restore \
               the data dir from a backup"
            .into(),
    })
}

fn decode_inner(bytes: &[u8]) -> Option<QueueSettings> {
    let mut r = Reader::new(bytes);
    let flags = r.u8("flags").ok()?;
    if flags & !KNOWN != 0 {
        return None;
    }
    let rate = |r: &mut Reader| -> Option<Rate> {
        Some(Rate { max: r.varint_u32("max").ok()?, per_ms: r.varint("per_ms").ok()? })
    };
    let mut limits = QueueLimits::default();
    if flags & RATE != 0 {
        limits.rate = Some(rate(&mut r)?);
    }
    if flags & CONCURRENCY != 0 {
        limits.concurrency = Some(r.varint_u32("concurrency").ok()?);
    }
    if flags & GROUP_CONCURRENCY != 0 {
        limits.group_concurrency = Some(r.varint_u32("group_concurrency").ok()?);
    }
    if flags & GROUP_RATE != 0 {
        limits.group_rate = Some(rate(&mut r)?);
    }
    (r.left() == 0).then_some(QueueSettings { paused: flags & PAUSED != 0, limits })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes_and_refusals() {
        let paused = QueueSettings { paused: true, ..Default::default() };
        assert_eq!(encode(&QueueSettings::default()), [0x00]);
        assert_eq!(encode(&paused), [0x01]);
        assert_eq!(decode("q", &[0x01]).unwrap(), paused);
        assert_eq!(decode("q", &[0x00]).unwrap(), QueueSettings::default());
        for bad in [&[][..], &[0x20], &[0x01, 0x00], &[0x04], &[0x02, 0x01]] {
            assert!(decode("q", bad).is_err(), "{bad:?}");
        }
    }

    /// Pins the layout of every limit (issue 9), in the order the module docs give.
    #[test]
    fn golden_limits() {
        let settings = QueueSettings {
            paused: false,
            limits: QueueLimits {
                rate: Some(Rate::new(100, 1000)),
                concurrency: Some(10),
                group_concurrency: Some(1),
                group_rate: Some(Rate::new(2, 60_000)),
            },
        };
        let bytes = encode(&settings);
        assert_eq!(bytes, [0x1e, 0x64, 0xe8, 0x07, 0x0a, 0x01, 0x02, 0xe0, 0xd4, 0x03]);
        assert_eq!(decode("q", &bytes).unwrap(), settings);
        let only_concurrency = QueueSettings {
            paused: true,
            limits: QueueLimits { concurrency: Some(300), ..Default::default() },
        };
        assert_eq!(encode(&only_concurrency), [0x05, 0xac, 0x02]);
        assert_eq!(decode("q", &[0x05, 0xac, 0x02]).unwrap(), only_concurrency);
    }
}
