//! The byte encoding of one [`JobRecord`] as stored in a slot of a sled page (and in the
//! journaled store's pending map). Where the record is stored (pages, trees) is `keys.rs`
//! and `page.rs`'s business; what its fields mean is `model.rs`'s.
//!
//! The record's `id` is not stored (the page and slot a body is stored in give it), and
//! fields equal to their defaults are left out: a flags byte says which are present. A job
//! added with default options and not failed yet costs its payload, its queue and job
//! names, and 12 bytes more (flags, lengths, the two timestamps).
//!
//! ```text
//! varint, zigzag, str: see store/varint.rs
//!
//! record body:
//!   flags           u8      which optional fields follow (bit value: field)
//!                             0x01 priority     0x02 delay_ms   0x04 attempts
//!                             0x08 backoff      0x10 lease_ms   0x20 key
//!                             0x40 state is Dead (no field; clear: Waiting)
//!                             0x80 failures and errors
//!   queue           str
//!   name            str
//!   payload         str     (raw bytes)
//!   created_at_ms   varint
//!   run_at delta    zigzag  run_at_ms - created_at_ms as a wrapping 64-bit difference
//!                           (a failure's run_at can precede created_at if the clock went
//!                           back); decoded as created_at_ms + delta, wrapping
//!   then, only the fields whose flag is set, in this order:
//!   priority        zigzag  (absent: 0)
//!   delay_ms        varint  (absent: 0; kept for an exact round trip, though the broker
//!                           only reads it at add time, folded into the first run_at_ms)
//!   attempts        varint  (absent: 3)
//!   backoff         u8 variant, 0 Fixed: delay_ms varint;
//!                   1 Exponential: base_ms varint, max_ms varint, jitter_pct u8
//!                           (absent: Exponential 1000, 3600000, 20)
//!   lease_ms        varint  (absent: 30000)
//!   key             str     (absent: None; a present key may be empty)
//!   failures        varint  (with errors; absent: 0 failures, no errors)
//!   errors          varint count, then per error: attempt varint, at_ms varint,
//!                           message str
//!   then, only when some option below differs from its default (format 5 on):
//!   ext flags       varint  which of these follow (bit value: field)
//!                             0x01 group   0x02 timeout_ms   0x04 expires_in_ms
//!                             0x08 unique
//!   group           str
//!   timeout_ms      varint
//!   expires_in_ms   varint
//!   unique          u8 variant, 1 Window: ms varint; 2 Debounce
//!                           (absent: WhilePending, variant 0, never written)
//! ```
//!
//! A flag is set exactly when its field differs from the default, but a decoder accepts a
//! set flag with a default value too. Anything else is refused: an unknown backoff variant,
//! a varint longer than its type, invalid UTF-8, a body that ends early or has bytes left
//! over.
//!
//! There is no per-record format byte: the store's `format_version` (meta tree) says how
//! every page and body in the directory is encoded (format 2 stored bodies as bincode of
//! every field; formats 3 and 4 are this without the extension, which format 5 added: a
//! format-4 body is a format-5 body without one, so format-4 dirs are read as they are).
//! The golden-bytes tests below pin the encoding.
//! The journal carries the same body for an insert (`journal/codec.rs`), so a job record
//! has one encoding on disk.

use bytes::Bytes;
use qd_protocol::{Backoff, JobId, JobOptions, Unique};

use crate::model::{AttemptError, JobRecord, PersistedState, MAX_ERRORS_KEPT};

use crate::store::varint::{put_bytes, put_varint, unzigzag, zigzag, Reader};
use crate::store::StoreError;

/// Flag bits: which optional fields a body holds.
const PRIORITY: u8 = 0x01;
const DELAY: u8 = 0x02;
const ATTEMPTS: u8 = 0x04;
const BACKOFF: u8 = 0x08;
const LEASE: u8 = 0x10;
const KEY: u8 = 0x20;
const DEAD: u8 = 0x40;
const FAILURES: u8 = 0x80;

/// Backoff variants.
const FIXED: u8 = 0;
const EXPONENTIAL: u8 = 1;

/// Extension flag bits (format 5): which newer options follow the format-4 fields.
const EXT_GROUP: u64 = 0x01;
const EXT_TIMEOUT: u64 = 0x02;
const EXT_EXPIRES: u64 = 0x04;
const EXT_UNIQUE: u64 = 0x08;
/// Every extension bit this version knows; a body with another is refused.
const EXT_KNOWN: u64 = EXT_GROUP | EXT_TIMEOUT | EXT_EXPIRES | EXT_UNIQUE;

/// `Unique` variants (`WhilePending`, the default, is never written).
const UNIQUE_WINDOW: u8 = 1;
const UNIQUE_DEBOUNCE: u8 = 2;

/// Encodes a record's body (everything but its id), appending to `out`. Never fails today;
/// the `Result` keeps the store's callers independent of the encoding.
pub fn encode_into(record: &JobRecord, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let o = &record.options;
    let d = JobOptions::default();
    let mut flags = 0u8;
    if o.priority != d.priority {
        flags |= PRIORITY;
    }
    if o.delay_ms != d.delay_ms {
        flags |= DELAY;
    }
    if o.attempts != d.attempts {
        flags |= ATTEMPTS;
    }
    if o.backoff != d.backoff {
        flags |= BACKOFF;
    }
    if o.lease_ms != d.lease_ms {
        flags |= LEASE;
    }
    if o.key.is_some() {
        flags |= KEY;
    }
    match record.state {
        PersistedState::Waiting => {}
        PersistedState::Dead => flags |= DEAD,
    }
    if record.failures != 0 || !record.errors.is_empty() {
        flags |= FAILURES;
    }

    out.push(flags);
    put_bytes(out, record.queue.as_bytes());
    put_bytes(out, record.name.as_bytes());
    put_bytes(out, &record.payload);
    put_varint(out, record.created_at_ms);
    put_varint(out, zigzag(record.run_at_ms.wrapping_sub(record.created_at_ms) as i64));
    if flags & PRIORITY != 0 {
        put_varint(out, zigzag(i64::from(o.priority)));
    }
    if flags & DELAY != 0 {
        put_varint(out, o.delay_ms);
    }
    if flags & ATTEMPTS != 0 {
        put_varint(out, u64::from(o.attempts));
    }
    if flags & BACKOFF != 0 {
        match o.backoff {
            Backoff::Fixed { delay_ms } => {
                out.push(FIXED);
                put_varint(out, delay_ms);
            }
            Backoff::Exponential { base_ms, max_ms, jitter_pct } => {
                out.push(EXPONENTIAL);
                put_varint(out, base_ms);
                put_varint(out, max_ms);
                out.push(jitter_pct);
            }
        }
    }
    if flags & LEASE != 0 {
        put_varint(out, o.lease_ms);
    }
    if let Some(key) = &o.key {
        put_bytes(out, key.as_bytes());
    }
    if flags & FAILURES != 0 {
        put_varint(out, u64::from(record.failures));
        put_varint(out, record.errors.len() as u64);
        for e in &record.errors {
            put_varint(out, u64::from(e.attempt));
            put_varint(out, e.at_ms);
            put_bytes(out, e.message.as_bytes());
        }
    }
    encode_extension(o, out);
    Ok(())
}

/// Appends the format-5 extension when any of its options is set; nothing otherwise, so a
/// job that uses none of them costs what it did in format 4.
fn encode_extension(o: &JobOptions, out: &mut Vec<u8>) {
    let mut ext = 0u64;
    if o.group.is_some() {
        ext |= EXT_GROUP;
    }
    if o.timeout_ms.is_some() {
        ext |= EXT_TIMEOUT;
    }
    if o.expires_in_ms.is_some() {
        ext |= EXT_EXPIRES;
    }
    if o.unique != Unique::WhilePending {
        ext |= EXT_UNIQUE;
    }
    if ext == 0 {
        return;
    }
    put_varint(out, ext);
    if let Some(group) = &o.group {
        put_bytes(out, group.as_bytes());
    }
    if let Some(timeout_ms) = o.timeout_ms {
        put_varint(out, timeout_ms);
    }
    if let Some(expires_in_ms) = o.expires_in_ms {
        put_varint(out, expires_in_ms);
    }
    match o.unique {
        Unique::WhilePending => {}
        Unique::Window { ms } => {
            out.push(UNIQUE_WINDOW);
            put_varint(out, ms);
        }
        Unique::Debounce => out.push(UNIQUE_DEBOUNCE),
    }
}

/// Reads the format-5 extension into `options`, if the body has one.
fn decode_extension(r: &mut Reader<'_>, options: &mut JobOptions) -> Result<(), String> {
    if r.left() == 0 {
        return Ok(());
    }
    let ext = r.varint("extension flags")?;
    if ext & !EXT_KNOWN != 0 || ext == 0 {
        return Err(format!("unknown extension flags {ext:#x}"));
    }
    if ext & EXT_GROUP != 0 {
        options.group = Some(r.string("group")?);
    }
    if ext & EXT_TIMEOUT != 0 {
        options.timeout_ms = Some(r.varint("timeout_ms")?);
    }
    if ext & EXT_EXPIRES != 0 {
        options.expires_in_ms = Some(r.varint("expires_in_ms")?);
    }
    if ext & EXT_UNIQUE != 0 {
        options.unique = match r.u8("unique")? {
            UNIQUE_WINDOW => Unique::Window { ms: r.varint("unique window")? },
            UNIQUE_DEBOUNCE => Unique::Debounce,
            other => return Err(format!("unknown unique variant {other}")),
        };
    }
    Ok(())
}

/// Encodes a record's body into a new buffer of exactly its size.
pub fn encode(record: &JobRecord) -> Result<Box<[u8]>, StoreError> {
    let mut out =
        Vec::with_capacity(32 + record.queue.len() + record.name.len() + record.payload.len());
    encode_into(record, &mut out)?;
    Ok(out.into_boxed_slice())
}

/// Decodes what [`encode`] wrote for job `id`.
pub fn decode(id: JobId, bytes: &[u8]) -> Result<JobRecord, StoreError> {
    let mut record = empty(id);
    decode_into(id, bytes, Payload::Copy, &mut record)?;
    Ok(record)
}

/// A record to decode into: every field is overwritten.
pub fn empty(id: JobId) -> JobRecord {
    JobRecord {
        id,
        queue: String::new(),
        name: String::new(),
        payload: Bytes::new(),
        options: JobOptions::default(),
        created_at_ms: 0,
        run_at_ms: 0,
        failures: 0,
        state: PersistedState::Waiting,
        errors: Vec::new(),
    }
}

/// Whether [`decode_into`] copies the payload out of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Copy,
    /// Checked (its length) and skipped: `payload` is left empty. For rebuilding the core at
    /// recovery, which keeps metadata only and reads payloads from the store at reserve
    /// time: copying 10 million payloads out only to drop them was a fifth of the scan.
    Skip,
}

/// Decodes job `id`'s body into `out`, overwriting every field, reusing the capacity its
/// strings and error list already have: recovery decodes millions of records into one
/// scratch record, without an allocation per record. Checks the body exactly as `decode`
/// does, whatever `payload` says.
pub fn decode_into(
    id: JobId,
    bytes: &[u8],
    payload: Payload,
    out: &mut JobRecord,
) -> Result<(), StoreError> {
    decode_body(id, &mut Reader::new(bytes), payload, out)
        .map_err(|detail| corrupt(id, format!("cannot decode the record: {detail}")))
}

fn decode_body(
    id: JobId,
    r: &mut Reader<'_>,
    payload: Payload,
    out: &mut JobRecord,
) -> Result<(), String> {
    let flags = r.u8("flags")?;
    out.id = id;
    r.string_into("queue", &mut out.queue)?;
    r.string_into("job name", &mut out.name)?;
    let bytes = r.bytes("payload")?;
    out.payload = match payload {
        Payload::Copy => Bytes::copy_from_slice(bytes),
        Payload::Skip => Bytes::new(),
    };
    out.created_at_ms = r.varint("created_at_ms")?;
    out.run_at_ms = out.created_at_ms.wrapping_add(unzigzag(r.varint("run_at_ms")?) as u64);
    let options = &mut out.options;
    *options = JobOptions::default();
    if flags & PRIORITY != 0 {
        let p = unzigzag(r.varint("priority")?);
        options.priority = i32::try_from(p).map_err(|_| format!("priority {p} out of range"))?;
    }
    if flags & DELAY != 0 {
        options.delay_ms = r.varint("delay_ms")?;
    }
    if flags & ATTEMPTS != 0 {
        options.attempts = r.varint_u32("attempts")?;
    }
    if flags & BACKOFF != 0 {
        options.backoff = match r.u8("backoff")? {
            FIXED => Backoff::Fixed { delay_ms: r.varint("backoff delay")? },
            EXPONENTIAL => Backoff::Exponential {
                base_ms: r.varint("backoff base")?,
                max_ms: r.varint("backoff cap")?,
                jitter_pct: r.u8("backoff jitter")?,
            },
            other => return Err(format!("unknown backoff variant {other}")),
        };
    }
    if flags & LEASE != 0 {
        options.lease_ms = r.varint("lease_ms")?;
    }
    if flags & KEY != 0 {
        options.key = Some(r.string("key")?);
    }
    out.state = if flags & DEAD != 0 { PersistedState::Dead } else { PersistedState::Waiting };
    out.failures = 0;
    out.errors.clear();
    if flags & FAILURES != 0 {
        out.failures = r.varint_u32("failures")?;
        let count = r.varint("error count")?;
        // Each error takes at least 3 bytes: never reserve more than the body could hold.
        out.errors.reserve((count as usize).min(MAX_ERRORS_KEPT).min(r.left() / 3));
        for _ in 0..count {
            let attempt = r.varint_u32("error attempt")?;
            let at_ms = r.varint("error time")?;
            let message = r.string("error message")?;
            out.errors.push(AttemptError { attempt, at_ms, message });
        }
    }
    decode_extension(r, &mut out.options)?;
    if r.left() != 0 {
        return Err(format!("{} trailing bytes after the record", r.left()));
    }
    Ok(())
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

    /// A record with every optional field away from its default, failed twice and dead.
    fn every_field_set() -> JobRecord {
        let mut r = record(99, 10);
        r.options = JobOptions {
            priority: 7,
            delay_ms: 5,
            attempts: 9,
            backoff: Backoff::Fixed { delay_ms: 3 },
            lease_ms: 4,
            key: Some("key".into()),
            group: Some("group".into()),
            timeout_ms: Some(6),
            expires_in_ms: Some(8),
            unique: Unique::Window { ms: 2 },
        };
        r.apply_failure(AttemptError { attempt: 1, at_ms: 1, message: "one".into() }, 2, false);
        r.apply_failure(AttemptError { attempt: 2, at_ms: 3, message: "two".into() }, 4, true);
        r
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pins the on-disk bytes of a record with every optional field but `delay_ms` and
    /// `attempts`. If this fails, the stored format changed: bump `STORE_FORMAT_VERSION`.
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
                ..JobOptions::default()
            },
            created_at_ms: 7,
            run_at_ms: 8,
            failures: 0,
            state: PersistedState::Waiting,
            errors: vec![],
        };
        r.apply_failure(AttemptError { attempt: 1, at_ms: 9, message: "x".into() }, 10, true);
        let bytes = encode(&r).unwrap();
        // flags f9 (priority, backoff, lease, key, dead, failures); "q"; "n"; "hi";
        // created 7; run_at 10 = 7 + 3 (zigzag 6); priority -1 (zigzag 1); Fixed 5;
        // lease 1000 (e8 07); key "k"; 1 failure, 1 error: attempt 1, at 9, "x".
        // Format 2 (bincode of every field) took 27 bytes for this record.
        assert_eq!(hex(&bytes), "f90171016e0268690706010005e807016b010101090178");
        assert_eq!(decode(300, &bytes).unwrap(), r);

        // The same record with every format-5 option: the format-4 bytes, then the
        // extension: flags 0f; group "g"; timeout 5000 (88 27); expires 60000 (e0 d4 03);
        // unique Window (01) of 1000 ms (e8 07).
        r.options.group = Some("g".into());
        r.options.timeout_ms = Some(5000);
        r.options.expires_in_ms = Some(60_000);
        r.options.unique = Unique::Window { ms: 1000 };
        let bytes = encode(&r).unwrap();
        assert_eq!(
            hex(&bytes),
            "f90171016e0268690706010005e807016b010101090178\
             0f01678827e0d40301e807"
        );
        assert_eq!(decode(300, &bytes).unwrap(), r);
        r.options.unique = Unique::Debounce;
        let bytes = encode(&r).unwrap();
        assert!(hex(&bytes).ends_with("0f01678827e0d40302"), "{}", hex(&bytes));
        assert_eq!(decode(300, &bytes).unwrap(), r);
    }

    /// The common case: default options, never failed. Only the flags byte, the names, the
    /// payload and the two timestamps are stored.
    #[test]
    fn golden_bytes_of_a_default_job() {
        let mut r = record(300, 0);
        r.payload = bytes::Bytes::from_static(b"hi");
        let bytes = encode(&r).unwrap();
        // flags 00; "emails"; "welcome"; "hi"; created 1_700_000_000_000 (6 bytes);
        // run_at = created (delta 0). Format 2 took 52 bytes.
        assert_eq!(hex(&bytes), "0006656d61696c730777656c636f6d6502686980d095ffbc3100",);
        assert_eq!(decode(300, &bytes).unwrap(), r);

        // run_at before created_at (the clock went back between add and a failure).
        r.run_at_ms = r.created_at_ms - 1;
        let bytes = encode(&r).unwrap();
        assert!(hex(&bytes).ends_with("80d095ffbc3101"), "{}", hex(&bytes));
        assert_eq!(decode(300, &bytes).unwrap(), r);
    }

    #[test]
    fn a_bench_job_costs_its_payload_and_names_plus_12_bytes() {
        let r = record(1, 128);
        let names = r.queue.len() + r.name.len();
        // flags, 3 lengths (the payload's takes 2), created_at (6), run_at delta (1).
        assert_eq!(encode(&r).unwrap().len(), 128 + names + 1 + 1 + 1 + 2 + 6 + 1);
    }

    #[test]
    fn refuses_garbage() {
        let mut dead = record(1, 3);
        dead.options.backoff = Backoff::Fixed { delay_ms: 1 };
        dead.options.key = Some("k".into());
        dead.apply_failure(AttemptError { attempt: 1, at_ms: 2, message: "m".into() }, 3, true);
        for r in [record(1, 3), dead] {
            let good = encode(&r).unwrap();
            assert!(decode(1, &[]).is_err());
            for end in 0..good.len() {
                assert!(decode(1, &good[..end]).is_err(), "{end} of {} bytes", good.len());
            }
            // A zero byte is no extension (empty extensions are never written); an extension
            // followed by more bytes is refused as trailing.
            let mut trailing = good.to_vec();
            trailing.push(0);
            let err = decode(1, &trailing).unwrap_err().to_string();
            assert!(err.contains("extension flags 0x0"), "{err}");
            let mut trailing = good.to_vec();
            trailing.extend([EXT_TIMEOUT as u8, 5, 0]);
            let err = decode(1, &trailing).unwrap_err().to_string();
            assert!(err.contains("trailing"), "{err}");
            let mut unknown = good.to_vec();
            unknown.extend([0x10, 0]);
            let err = decode(1, &unknown).unwrap_err().to_string();
            assert!(err.contains("extension flags 0x10"), "{err}");
        }
        // flags: backoff; "q" "n" "" created 0, delta 0; backoff variant 2.
        let err = decode(1, &[0x08, 1, b'q', 1, b'n', 0, 0, 0, 2]).unwrap_err().to_string();
        assert!(err.contains("backoff variant 2"), "{err}");
        // A created_at varint of 11 bytes, and one overflowing 64 bits.
        let mut long = vec![0x00, 1, b'q', 1, b'n', 0];
        long.extend([0x80; 10]);
        long.extend([0x00, 0x00]);
        assert!(decode(1, &long).unwrap_err().to_string().contains("longer than 10"));
        let mut over = vec![0x00, 1, b'q', 1, b'n', 0];
        over.extend([0xff; 9]);
        over.extend([0x02, 0x00]);
        assert!(decode(1, &over).unwrap_err().to_string().contains("overflows 64"));
        // A queue name that is not UTF-8.
        let err = decode(1, &[0x00, 1, 0xff, 1, b'n', 0, 0, 0]).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
        // attempts beyond u32, priority beyond i32.
        let err = decode(1, &[0x04, 1, b'q', 1, b'n', 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10])
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflows 32"), "{err}");
        let err = decode(1, &[0x01, 1, b'q', 1, b'n', 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10])
            .unwrap_err()
            .to_string();
        assert!(err.contains("priority"), "{err}");
    }

    fn backoff() -> impl Strategy<Value = Backoff> {
        prop_oneof![
            Just(Backoff::default()),
            any::<u64>().prop_map(|delay_ms| Backoff::Fixed { delay_ms }),
            (any::<u64>(), any::<u64>(), any::<u8>()).prop_map(|(base_ms, max_ms, jitter_pct)| {
                Backoff::Exponential { base_ms, max_ms, jitter_pct }
            }),
        ]
    }

    fn options() -> impl Strategy<Value = JobOptions> {
        (
            prop_oneof![Just(0i32), any::<i32>()],
            prop_oneof![Just(0u64), any::<u64>()],
            prop_oneof![Just(3u32), any::<u32>()],
            backoff(),
            prop_oneof![Just(30_000u64), any::<u64>()],
            proptest::option::of(".{0,10}"),
            extension(),
        )
            .prop_map(|(priority, delay_ms, attempts, backoff, lease_ms, key, ext)| {
                let (group, timeout_ms, expires_in_ms, unique) = ext;
                JobOptions {
                    priority,
                    delay_ms,
                    attempts,
                    backoff,
                    lease_ms,
                    key,
                    group,
                    timeout_ms,
                    expires_in_ms,
                    unique,
                }
            })
    }

    /// The options of the format-5 extension, each often absent.
    fn extension() -> impl Strategy<Value = (Option<String>, Option<u64>, Option<u64>, Unique)> {
        (
            proptest::option::of(".{0,10}"),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            prop_oneof![
                Just(Unique::WhilePending),
                any::<u64>().prop_map(|ms| Unique::Window { ms }),
                Just(Unique::Debounce),
            ],
        )
    }

    fn timestamp() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            1_600_000_000_000u64..1_800_000_000_000,
            any::<u64>()
        ]
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

        /// Any record at all, including ones the broker never makes (a failure count that
        /// disagrees with the errors, more than 25 errors, a dead job that never failed).
        #[test]
        fn any_record_round_trips(
            id in any::<u64>(),
            names in (".{0,20}", ".{0,20}"),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            options in options(),
            created_at_ms in timestamp(),
            run_at_ms in timestamp(),
            failures in prop_oneof![Just(0u32), any::<u32>()],
            dead in any::<bool>(),
            errors in proptest::collection::vec((any::<u32>(), timestamp(), ".{0,20}"), 0..30),
        ) {
            let r = JobRecord {
                id,
                queue: names.0,
                name: names.1,
                payload: payload.into(),
                options,
                created_at_ms,
                run_at_ms,
                failures,
                state: if dead { PersistedState::Dead } else { PersistedState::Waiting },
                errors: errors
                    .into_iter()
                    .map(|(attempt, at_ms, message)| AttemptError { attempt, at_ms, message })
                    .collect(),
            };
            let bytes = encode(&r).unwrap();
            prop_assert_eq!(decode(id, &bytes).unwrap(), r.clone());
            // Recovery decodes into one scratch record (issue 10): nothing of the record it
            // held before (every optional field set) may leak into the next, and `Skip`
            // differs from `Copy` in the payload only.
            let mut scratch = every_field_set();
            decode_into(id, &bytes, Payload::Copy, &mut scratch).unwrap();
            prop_assert_eq!(&scratch, &r);
            let mut scratch = every_field_set();
            decode_into(id, &bytes, Payload::Skip, &mut scratch).unwrap();
            prop_assert_eq!(scratch, JobRecord { payload: Bytes::new(), ..r });
        }
    }
}
