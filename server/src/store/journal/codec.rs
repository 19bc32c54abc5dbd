//! The byte encoding of one [`Change`] as the body of a journal record (`segment.rs` frames
//! it). The store's own encoding, written out here, not derived: a change to a wire type
//! (`JobOptions`, `Backoff` in qd-protocol) or to a serde derive cannot change the bytes
//! on disk. An insert carries the record body of `pages/record.rs`, so a job record has one
//! encoding wherever it is stored.
//!
//! ```text
//! varint, str: see store/varint.rs
//!
//! body = tag u8, then by tag:
//!   0x00 Insert      id varint, record body (pages/record.rs) to the end of the body
//!   0x01 Complete    id varint
//!   0x02 Fail        id varint, attempt varint, at_ms varint, message str,
//!                    run_at_ms varint, dead u8 (0 or 1)
//!   0x03 Retry       id varint, run_at_ms varint
//!   0x04 Reschedule  id varint, run_at_ms varint
//!   0x05 Remove      id varint
//!   0x06 Settings    queue str, then the settings (pages/queues.rs) to the end of the body
//!   0x07 IdFloor     next_id varint
//!   0x08 Schedule    name str, present u8 (0 removed, 1 set), then when set the schedule
//!                    (pages/schedules.rs) to the end of the body
//!   0x09 Replace     id varint, run_at_ms varint, payload bytes (varint length, then bytes)
//! ```
//!
//! Anything else is refused: an unknown tag, a body that ends early or has bytes left over.
//! The golden-bytes tests below pin every tag.
//!
//! Format 3 (the release before this encoding) wrote bodies as bincode 2 (serde API,
//! `config::standard()`) of the `Change` enum of its day. [`decode_format3`] reads those,
//! through frozen copies of the types of that day (`format3` below) rather than the live
//! ones, for the one migration of a format-3 data dir (`journal/mod.rs`).

use crate::model::{AttemptError, Change};
use crate::store::pages::{queues, record, schedules};
use crate::store::varint::{put_bytes, put_varint, Reader};
use crate::store::StoreError;

const INSERT: u8 = 0x00;
const COMPLETE: u8 = 0x01;
const FAIL: u8 = 0x02;
const RETRY: u8 = 0x03;
const RESCHEDULE: u8 = 0x04;
const REMOVE: u8 = 0x05;
const SETTINGS: u8 = 0x06;
const ID_FLOOR: u8 = 0x07;
const SCHEDULE: u8 = 0x08;
const REPLACE: u8 = 0x09;

/// Appends the body of `change` to `out`.
pub fn encode_into(change: &Change, out: &mut Vec<u8>) -> Result<(), StoreError> {
    match change {
        Change::Insert(r) => {
            out.push(INSERT);
            put_varint(out, r.id);
            record::encode_into(r, out)?;
        }
        Change::Complete { id } => {
            out.push(COMPLETE);
            put_varint(out, *id);
        }
        Change::Fail { id, error, run_at_ms, dead } => {
            out.push(FAIL);
            put_varint(out, *id);
            put_varint(out, u64::from(error.attempt));
            put_varint(out, error.at_ms);
            put_bytes(out, error.message.as_bytes());
            put_varint(out, *run_at_ms);
            out.push(u8::from(*dead));
        }
        Change::Retry { id, run_at_ms } => {
            out.push(RETRY);
            put_varint(out, *id);
            put_varint(out, *run_at_ms);
        }
        Change::Reschedule { id, run_at_ms } => {
            out.push(RESCHEDULE);
            put_varint(out, *id);
            put_varint(out, *run_at_ms);
        }
        Change::Remove { id } => {
            out.push(REMOVE);
            put_varint(out, *id);
        }
        Change::Settings { queue, settings } => {
            out.push(SETTINGS);
            put_bytes(out, queue.as_bytes());
            out.extend_from_slice(&queues::encode(settings));
        }
        Change::IdFloor { next_id } => {
            out.push(ID_FLOOR);
            put_varint(out, *next_id);
        }
        Change::Schedule { name, schedule } => {
            out.push(SCHEDULE);
            put_bytes(out, name.as_bytes());
            match schedule {
                Some(s) => {
                    out.push(1);
                    schedules::encode_into(s, out)?;
                }
                None => out.push(0),
            }
        }
        Change::Replace { id, payload, run_at_ms } => {
            out.push(REPLACE);
            put_varint(out, *id);
            put_varint(out, *run_at_ms);
            put_bytes(out, payload);
        }
    }
    Ok(())
}

/// Decodes what [`encode_into`] wrote; `None` if `body` is not one change in this encoding.
pub fn decode(body: &[u8]) -> Option<Change> {
    let mut r = Reader::new(body);
    let change = match r.u8("tag").ok()? {
        INSERT => {
            let id = r.varint("id").ok()?;
            return record::decode(id, r.rest()).ok().map(|r| Change::Insert(Box::new(r)));
        }
        COMPLETE => Change::Complete { id: r.varint("id").ok()? },
        FAIL => {
            let id = r.varint("id").ok()?;
            let attempt = r.varint_u32("attempt").ok()?;
            let at_ms = r.varint("at_ms").ok()?;
            let message = r.string("message").ok()?;
            let run_at_ms = r.varint("run_at_ms").ok()?;
            let dead = match r.u8("dead").ok()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            Change::Fail { id, error: AttemptError { attempt, at_ms, message }, run_at_ms, dead }
        }
        RETRY => Change::Retry { id: r.varint("id").ok()?, run_at_ms: r.varint("run_at").ok()? },
        RESCHEDULE => {
            Change::Reschedule { id: r.varint("id").ok()?, run_at_ms: r.varint("run_at").ok()? }
        }
        REMOVE => Change::Remove { id: r.varint("id").ok()? },
        SETTINGS => {
            let queue = r.string("queue").ok()?;
            let settings = queues::decode(&queue, r.rest()).ok()?;
            return Some(Change::Settings { queue, settings });
        }
        ID_FLOOR => Change::IdFloor { next_id: r.varint("next_id").ok()? },
        SCHEDULE => {
            let name = r.string("name").ok()?;
            let schedule = match r.u8("present").ok()? {
                0 => None,
                1 => {
                    return Some(Change::Schedule {
                        schedule: Some(Box::new(schedules::decode(&name, r.rest()).ok()?)),
                        name,
                    })
                }
                _ => return None,
            };
            Change::Schedule { name, schedule }
        }
        REPLACE => {
            let id = r.varint("id").ok()?;
            let run_at_ms = r.varint("run_at").ok()?;
            let payload = bytes::Bytes::copy_from_slice(r.bytes("payload").ok()?);
            Change::Replace { id, payload, run_at_ms }
        }
        _ => return None,
    };
    (r.left() == 0).then_some(change)
}

/// Decodes a format-3 body (bincode of that release's `Change`); `None` if it is not one.
pub fn decode_format3(body: &[u8]) -> Option<Change> {
    let (change, used) =
        bincode::serde::decode_from_slice::<format3::Change, _>(body, bincode::config::standard())
            .ok()?;
    (used == body.len()).then(|| change.into())
}

/// The types format 3's journal serialized, frozen as they were: field order, variant order
/// and types decide bincode's bytes, so these must never change.
mod format3 {
    use bytes::Bytes;
    use serde::Deserialize;

    use crate::model;

    #[derive(Debug, Deserialize)]
    pub enum Change {
        Insert(JobRecord),
        Complete { id: u64 },
        Fail { id: u64, error: AttemptError, run_at_ms: u64, dead: bool },
    }

    #[derive(Debug, Deserialize)]
    pub struct JobRecord {
        id: u64,
        queue: String,
        name: String,
        payload: Bytes,
        options: JobOptions,
        created_at_ms: u64,
        run_at_ms: u64,
        failures: u32,
        state: PersistedState,
        errors: Vec<AttemptError>,
    }

    #[derive(Debug, Deserialize)]
    pub struct JobOptions {
        priority: i32,
        delay_ms: u64,
        attempts: u32,
        backoff: Backoff,
        lease_ms: u64,
        key: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub enum Backoff {
        Fixed { delay_ms: u64 },
        Exponential { base_ms: u64, max_ms: u64, jitter_pct: u8 },
    }

    #[derive(Debug, Deserialize)]
    pub enum PersistedState {
        Waiting,
        Dead,
    }

    #[derive(Debug, Deserialize)]
    pub struct AttemptError {
        attempt: u32,
        at_ms: u64,
        message: String,
    }

    impl From<AttemptError> for model::AttemptError {
        fn from(e: AttemptError) -> Self {
            model::AttemptError { attempt: e.attempt, at_ms: e.at_ms, message: e.message }
        }
    }

    impl From<Change> for model::Change {
        fn from(c: Change) -> Self {
            match c {
                Change::Insert(r) => model::Change::Insert(Box::new(model::JobRecord {
                    id: r.id,
                    queue: r.queue,
                    name: r.name,
                    payload: r.payload,
                    options: qd_protocol::JobOptions {
                        priority: r.options.priority,
                        delay_ms: r.options.delay_ms,
                        attempts: r.options.attempts,
                        backoff: match r.options.backoff {
                            Backoff::Fixed { delay_ms } => qd_protocol::Backoff::Fixed { delay_ms },
                            Backoff::Exponential { base_ms, max_ms, jitter_pct } => {
                                qd_protocol::Backoff::Exponential { base_ms, max_ms, jitter_pct }
                            }
                        },
                        lease_ms: r.options.lease_ms,
                        key: r.options.key,
                        ..Default::default()
                    },
                    created_at_ms: r.created_at_ms,
                    run_at_ms: r.run_at_ms,
                    failures: r.failures,
                    state: match r.state {
                        PersistedState::Waiting => model::PersistedState::Waiting,
                        PersistedState::Dead => model::PersistedState::Dead,
                    },
                    errors: r.errors.into_iter().map(Into::into).collect(),
                })),
                Change::Complete { id } => model::Change::Complete { id },
                Change::Fail { id, error, run_at_ms, dead } => {
                    model::Change::Fail { id, error: error.into(), run_at_ms, dead }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::QueueSettings;
    use crate::store::testutil::{complete, fail, record};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn encode(change: &Change) -> Vec<u8> {
        let mut out = vec![];
        encode_into(change, &mut out).unwrap();
        out
    }

    /// Every tag, pinned. An insert is its id and then exactly the record body.
    #[test]
    fn golden_bodies() {
        let r = record(300, 2);
        let schedule = crate::model::ScheduleRecord {
            schedule: qd_protocol::Schedule {
                name: "s".into(),
                spec: qd_protocol::ScheduleSpec::Every { every_ms: 1000 },
                queue: "q".into(),
                job: qd_protocol::NewJob {
                    name: "j".into(),
                    payload: bytes::Bytes::new(),
                    options: qd_protocol::JobOptions::default(),
                },
            },
            anchor_ms: 5,
            last_fire_ms: Some(6),
        };
        let mut insert_body = vec![0x00, 0xac, 0x02];
        insert_body.extend_from_slice(&record::encode(&r).unwrap());
        let cases: Vec<(Change, String)> = vec![
            (Change::Insert(Box::new(r.clone())), hex(&insert_body)),
            (complete(300), "01ac02".into()),
            (
                fail(5, 2, true),
                // id 5, attempt 2, at_ms 5, "try 2 failed", run_at 1_700_000_002_000, dead
                format!("020502050c{}d0df95ffbc3101", hex(b"try 2 failed")),
            ),
            (Change::Retry { id: 5, run_at_ms: 1000 }, "0305e807".into()),
            (Change::Reschedule { id: 5, run_at_ms: 0 }, "040500".into()),
            (Change::Remove { id: 128 }, "058001".into()),
            (
                Change::Settings {
                    queue: "q".into(),
                    settings: QueueSettings { paused: true, ..Default::default() },
                },
                "06017101".into(),
            ),
            (Change::IdFloor { next_id: 1 << 20 }, "07808040".into()),
            (Change::Schedule { name: "s".into(), schedule: None }, "08017300".into()),
            (
                Change::Schedule { name: "s".into(), schedule: Some(Box::new(schedule.clone())) },
                // name "s", set; flags 01, anchor 5, last fire 6, Every 1000 ms; the template
                // body: no flags, "q", "j", empty payload, created_at 5, run_at delta 0.
                "08017301010506".to_owned() + "00e807" + "000171016a000500",
            ),
            (
                Change::Replace {
                    id: 5,
                    payload: bytes::Bytes::from_static(b"hi"),
                    run_at_ms: 1000,
                },
                "0905e807026869".into(),
            ),
        ];
        for (change, expected) in cases {
            let body = encode(&change);
            assert_eq!(hex(&body), expected, "{change:?}");
            assert_eq!(decode(&body), Some(change));
        }
    }

    /// `bincode` of any serializable value, in the standard config format 3 used.
    fn bincode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("bincode")
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        let good = encode(&fail(5, 2, true));
        let mut bad_dead = good.clone();
        *bad_dead.last_mut().unwrap() = 2;
        let mut trailing = encode(&complete(1));
        trailing.push(0);
        for body in [
            vec![],
            vec![0x0a],
            vec![0x08, 0x01, 0x73, 0x02],
            good[..good.len() - 1].to_vec(),
            bad_dead,
            trailing,
        ] {
            assert_eq!(decode(&body), None, "{body:02x?}");
        }
    }

    /// The format-3 decoder reads what that release wrote: bincode of its `Change`. The
    /// live `Complete` and `Fail` still serialize identically (checked here so a drift
    /// shows); an `Insert` is rebuilt field by field with the options of that release,
    /// since `JobOptions` has grown since.
    #[test]
    fn reads_format3_bodies() {
        for change in [complete(300), fail(7, 1, false)] {
            assert_eq!(decode_format3(&bincode(&change)), Some(change));
        }
        for mut r in [record(7, 3), record(1, 0)] {
            r.options.key = Some("k".into());
            r.options.backoff = qd_protocol::Backoff::Fixed { delay_ms: 9 };
            let o = &r.options;
            let options = (o.priority, o.delay_ms, o.attempts, o.backoff, o.lease_ms, &o.key);
            let body = (&r.queue, &r.name, &r.payload, options, r.created_at_ms, r.run_at_ms);
            let tail = (r.failures, r.state, &r.errors);
            let mut bytes = vec![0u8]; // variant 0: Insert
            bytes.extend(bincode(&(r.id, body, tail)));
            assert_eq!(decode_format3(&bytes), Some(Change::Insert(Box::new(r))));
        }
        // Pinned: Complete { id: 300 } in format 3.
        assert_eq!(decode_format3(&[0x01, 0xfb, 0x2c, 0x01]), Some(complete(300)));
        assert_eq!(decode_format3(&[0x07, 0, 0]), None);
    }
}
