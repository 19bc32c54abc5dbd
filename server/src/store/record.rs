//! The byte encoding of a [`JobRecord`] as stored in the `jobs` tree. Where the record is
//! stored (keys, trees) is `keys.rs`'s business; what its fields mean is `model.rs`'s.
//!
//! ```text
//! byte 0      record format, u8 = RECORD_FORMAT (1)
//! bytes 1..   bincode 2, serde API, bincode::config::standard()
//!             (varint integers, little-endian where fixed-width, length-prefixed strings,
//!              bytes and sequences; fields in declaration order of model::JobRecord)
//! ```
//!
//! The leading byte lets a later format change a record's shape without rewriting every
//! record at once: a decoder can dispatch on it. The golden-bytes test below pins the
//! encoding, so a bincode or serde upgrade cannot change it silently.

use crate::model::JobRecord;

use super::StoreError;

/// The format byte this build writes and the only one it reads.
pub const RECORD_FORMAT: u8 = 1;

/// Encodes a record: one format byte, then bincode.
pub fn encode(record: &JobRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64 + record.payload.len());
    out.push(RECORD_FORMAT);
    bincode::serde::encode_into_std_write(record, &mut out, bincode::config::standard())
        .map_err(|source| StoreError::Encode { id: record.id, source })?;
    Ok(out)
}

/// Decodes what [`encode`] wrote. `what` names the record in error messages (its key).
pub fn decode(bytes: &[u8], what: impl Fn() -> String) -> Result<JobRecord, StoreError> {
    let Some((&format, body)) = bytes.split_first() else {
        return Err(corrupt(what(), "the record is empty".into()));
    };
    if format != RECORD_FORMAT {
        return Err(corrupt(
            what(),
            format!("record format byte is {format}, this qd reads {RECORD_FORMAT}"),
        ));
    }
    let (record, used) =
        bincode::serde::decode_from_slice::<JobRecord, _>(body, bincode::config::standard())
            .map_err(|e| corrupt(what(), format!("cannot decode the record: {e}")))?;
    if used != body.len() {
        return Err(corrupt(
            what(),
            format!("{} trailing bytes after the record", body.len() - used),
        ));
    }
    Ok(record)
}

fn corrupt(what: String, detail: String) -> StoreError {
    StoreError::Corrupt {
        what: format!("{what}: {detail}"),
        hint: "the data dir is damaged or was written by another program; restore it from a \
               backup, or move it aside and start qd with an empty --data"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttemptError, PersistedState};
    use crate::store::testutil::record;
    use proptest::prelude::*;
    use qd_protocol::{Backoff, JobOptions};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pins the on-disk bytes. If this fails after a dependency bump, the stored format
    /// changed: bump `RECORD_FORMAT` and keep a decoder for the old one.
    #[test]
    fn golden_bytes() {
        let mut r = JobRecord {
            id: 300,
            queue: "q".into(),
            name: "n".into(),
            payload: bytes::Bytes::from_static(b"hi"),
            options: JobOptions {
                priority: -1,
                delay_ms: 0,
                attempts: 3,
                backoff: Backoff::Fixed { delay_ms: 5 },
                lease_ms: 1000,
                key: Some("k".into()),
            },
            created_at_ms: 7,
            run_at_ms: 8,
            failures: 0,
            state: PersistedState::Waiting,
            errors: vec![],
        };
        r.apply_failure(AttemptError { attempt: 1, at_ms: 9, message: "x".into() }, 10, true);
        let bytes = encode(&r).unwrap();
        assert_eq!(hex(&bytes), "01fb2c010171016e0268690100030005fbe80301016b070a01010101090178");
        assert_eq!(decode(&bytes, || "golden".into()).unwrap(), r);
    }

    #[test]
    fn refuses_garbage() {
        let good = encode(&record(1, 3)).unwrap();
        let mut other_format = good.clone();
        other_format[0] = 9;
        let err = decode(&other_format, || "job 1".into()).unwrap_err().to_string();
        assert!(err.contains("format byte is 9"), "{err}");
        assert!(decode(&[], || "job 1".into()).is_err());
        assert!(decode(&good[..good.len() - 1], || "job 1".into()).is_err());
        let mut trailing = good;
        trailing.push(0);
        let err = decode(&trailing, || "job 1".into()).unwrap_err().to_string();
        assert!(err.contains("trailing"), "{err}");
    }

    proptest! {
        #[test]
        fn round_trip(
            id in any::<u64>(),
            queue in "[a-z:._-]{1,20}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            priority in any::<i32>(),
            run_at in any::<u64>(),
            key in proptest::option::of("[ -~]{0,10}"),
            failures in proptest::collection::vec((1u32..1000, any::<u64>(), ".{0,20}"), 0..30),
            dead in any::<bool>(),
        ) {
            let mut r = record(id, 0);
            r.queue = queue;
            r.payload = payload.into();
            r.options.priority = priority;
            r.options.key = key;
            r.run_at_ms = run_at;
            for (attempt, at_ms, message) in failures {
                r.apply_failure(AttemptError { attempt, at_ms, message }, run_at, dead);
            }
            let bytes = encode(&r).unwrap();
            prop_assert_eq!(bytes[0], RECORD_FORMAT);
            prop_assert_eq!(decode(&bytes, || "prop".into()).unwrap(), r);
        }
    }
}
