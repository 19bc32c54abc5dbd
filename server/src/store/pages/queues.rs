//! The byte encoding of a queue's persisted [`QueueSettings`], as stored under the queue's
//! name in sled's "queues" tree (`keys.rs`) and carried by the journal's `Settings` entry
//! (`journal/codec.rs`). What a setting does is the broker core's business.
//!
//! ```text
//! settings = flags u8     0x01 paused; every other bit must be clear
//! ```
//!
//! New settings take the next free bit, or, once a setting needs a value, follow the flags
//! byte like a record body's optional fields (`record.rs`); a decoder refuses bits it does
//! not know, so an older qd never silently drops a setting a newer one stored.

use crate::model::QueueSettings;
use crate::store::StoreError;

const PAUSED: u8 = 0x01;

/// The settings' bytes.
pub fn encode(settings: &QueueSettings) -> Vec<u8> {
    let mut flags = 0;
    if settings.paused {
        flags |= PAUSED;
    }
    vec![flags]
}

/// Decodes what [`encode`] wrote for `queue`.
pub fn decode(queue: &str, bytes: &[u8]) -> Result<QueueSettings, StoreError> {
    match bytes {
        [flags] if flags & !PAUSED == 0 => Ok(QueueSettings { paused: flags & PAUSED != 0 }),
        _ => Err(StoreError::Corrupt {
            what: format!("the settings of queue {queue:?} do not decode: {bytes:02x?}"),
            hint: "the data dir is damaged or was written by a newer qd; run that qd, or \
                   restore the data dir from a backup"
                .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes_and_refusals() {
        assert_eq!(encode(&QueueSettings::default()), [0x00]);
        assert_eq!(encode(&QueueSettings { paused: true }), [0x01]);
        assert_eq!(decode("q", &[0x01]).unwrap(), QueueSettings { paused: true });
        assert_eq!(decode("q", &[0x00]).unwrap(), QueueSettings::default());
        for bad in [&[][..], &[0x02], &[0x01, 0x00]] {
            assert!(decode("q", bad).is_err(), "{bad:?}");
        }
    }
}
