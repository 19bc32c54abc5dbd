//! The byte encoding of one [`JobRecord`] as stored in a slot of a sled page. Where the
//! record is stored (pages, trees) is `keys.rs` and `page.rs`'s business; what its fields
//! mean is `model.rs`'s.
//!
//! ```text
//! record body = bincode 2, serde API, bincode::config::standard() of the record's fields
//!               in declaration order of model::JobRecord, WITHOUT `id` (the page and slot
//!               a body is stored in give the id):
//!                 queue, name (length-prefixed strings), payload (length-prefixed bytes),
//!                 options, created_at_ms, run_at_ms, failures (varints), state (variant
//!                 index), errors (length-prefixed sequence)
//!               varint integers; little-endian where fixed-width
//! ```
//!
//! There is no per-record format byte: the store's `format_version` (meta tree) says how
//! every page and body in the directory is encoded. The golden-bytes test below pins the
//! encoding, so a bincode or serde upgrade cannot change it silently.

use bytes::Bytes;
use qd_protocol::{JobId, JobOptions};
use serde::{Deserialize, Serialize};

use crate::model::{AttemptError, JobRecord, Millis, PersistedState};

use super::StoreError;

/// A record's fields but its id, borrowed for encoding. Field order is the format.
#[derive(Serialize)]
struct BodyRef<'a> {
    queue: &'a str,
    name: &'a str,
    payload: &'a Bytes,
    options: &'a JobOptions,
    created_at_ms: Millis,
    run_at_ms: Millis,
    failures: u32,
    state: PersistedState,
    errors: &'a [AttemptError],
}

/// The same fields, owned, for decoding.
#[derive(Deserialize)]
struct Body {
    queue: String,
    name: String,
    payload: Bytes,
    options: JobOptions,
    created_at_ms: Millis,
    run_at_ms: Millis,
    failures: u32,
    state: PersistedState,
    errors: Vec<AttemptError>,
}

/// Encodes a record's body (everything but its id), appending to `out`.
pub fn encode_into(record: &JobRecord, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let body = BodyRef {
        queue: &record.queue,
        name: &record.name,
        payload: &record.payload,
        options: &record.options,
        created_at_ms: record.created_at_ms,
        run_at_ms: record.run_at_ms,
        failures: record.failures,
        state: record.state,
        errors: &record.errors,
    };
    bincode::serde::encode_into_std_write(&body, out, bincode::config::standard())
        .map_err(|source| StoreError::Encode { id: record.id, source })?;
    Ok(())
}

/// Encodes a record's body into a new buffer of exactly its size.
pub fn encode(record: &JobRecord) -> Result<Box<[u8]>, StoreError> {
    let mut out = Vec::with_capacity(48 + record.payload.len());
    encode_into(record, &mut out)?;
    Ok(out.into_boxed_slice())
}

/// Decodes what [`encode`] wrote for job `id`.
pub fn decode(id: JobId, bytes: &[u8]) -> Result<JobRecord, StoreError> {
    let (body, used) =
        bincode::serde::decode_from_slice::<Body, _>(bytes, bincode::config::standard())
            .map_err(|e| corrupt(id, format!("cannot decode the record: {e}")))?;
    if used != bytes.len() {
        return Err(corrupt(id, format!("{} trailing bytes after the record", bytes.len() - used)));
    }
    Ok(JobRecord {
        id,
        queue: body.queue,
        name: body.name,
        payload: body.payload,
        options: body.options,
        created_at_ms: body.created_at_ms,
        run_at_ms: body.run_at_ms,
        failures: body.failures,
        state: body.state,
        errors: body.errors,
    })
}

fn corrupt(id: JobId, detail: String) -> StoreError {
    StoreError::Corrupt {
        what: format!("job {id}: {detail}"),
        hint: "the data dir is damaged or was written by another program; restore it from a \
               backup, or move it aside and start qd with an empty --data"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::record;
    use proptest::prelude::*;
    use qd_protocol::Backoff;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pins the on-disk bytes. If this fails after a dependency bump, the stored format
    /// changed: bump `STORE_FORMAT_VERSION` and keep a decoder for the old one.
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
        // The format-1 record of the same job was "01" "fb2c01" (format byte, id) + this.
        assert_eq!(hex(&bytes), "0171016e0268690100030005fbe80301016b070a01010101090178");
        assert_eq!(decode(300, &bytes).unwrap(), r);
    }

    #[test]
    fn refuses_garbage() {
        let good = encode(&record(1, 3)).unwrap();
        assert!(decode(1, &[]).is_err());
        assert!(decode(1, &good[..good.len() - 1]).is_err());
        let mut trailing = good.to_vec();
        trailing.push(0);
        let err = decode(1, &trailing).unwrap_err().to_string();
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
            prop_assert_eq!(decode(id, &bytes).unwrap(), r);
        }
    }
}
