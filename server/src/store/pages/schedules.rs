//! The byte encoding of a named schedule ([`ScheduleRecord`]), as stored under its name in
//! sled's "schedules" tree (`keys.rs`) and carried by the journal's `Schedule` entry
//! (`journal/codec.rs`). When a schedule fires is the broker core's business
//! (`broker/schedules.rs`).
//!
//! ```text
//! varint, str: see store/varint.rs
//!
//! schedule = flags u8        0x01 last_fire_ms present; every other bit must be clear
//!            anchor_ms       varint
//!            last_fire_ms    varint, only with flag 0x01
//!            spec            u8 0 Every, every_ms varint
//!                            or u8 1 Cron, expr str, tz str
//!            template        the record body of pages/record.rs, to the end: queue = the
//!                            schedule's queue, name, payload and options = the job's,
//!                            created_at = run_at = anchor_ms, waiting, never failed
//! ```
//!
//! The template reuses the one encoding of a job record, so a job's options have one
//! encoding wherever they are stored. The name is the key, not repeated in the value.
//! A decoder refuses unknown flag bits and spec tags, so an older qd never silently drops
//! what a newer one stored.

use qd_protocol::{NewJob, Schedule, ScheduleSpec};

use crate::model::{JobRecord, PersistedState, ScheduleRecord};
use crate::store::pages::record;
use crate::store::varint::{put_bytes, put_varint, Reader};
use crate::store::StoreError;

const LAST_FIRE: u8 = 0x01;
const EVERY: u8 = 0;
const CRON: u8 = 1;

/// Appends the bytes of `schedule` to `out`.
pub fn encode_into(schedule: &ScheduleRecord, out: &mut Vec<u8>) -> Result<(), StoreError> {
    out.push(if schedule.last_fire_ms.is_some() { LAST_FIRE } else { 0 });
    put_varint(out, schedule.anchor_ms);
    if let Some(at) = schedule.last_fire_ms {
        put_varint(out, at);
    }
    let s = &schedule.schedule;
    match &s.spec {
        ScheduleSpec::Every { every_ms } => {
            out.push(EVERY);
            put_varint(out, *every_ms);
        }
        ScheduleSpec::Cron { expr, tz } => {
            out.push(CRON);
            put_bytes(out, expr.as_bytes());
            put_bytes(out, tz.as_bytes());
        }
    }
    let template = JobRecord {
        id: 0,
        queue: s.queue.clone(),
        name: s.job.name.clone(),
        payload: s.job.payload.clone(),
        options: s.job.options.clone(),
        created_at_ms: schedule.anchor_ms,
        run_at_ms: schedule.anchor_ms,
        failures: 0,
        state: PersistedState::Waiting,
        errors: Vec::new(),
    };
    record::encode_into(&template, out)
}

/// The bytes of `schedule`.
pub fn encode(schedule: &ScheduleRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    encode_into(schedule, &mut out)?;
    Ok(out)
}

/// Decodes what [`encode`] wrote for the schedule `name`.
pub fn decode(name: &str, bytes: &[u8]) -> Result<ScheduleRecord, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: format!("schedule {name:?} does not decode: {detail}"),
        hint: "the data dir is damaged or was written by a newer qd; run that qd, or restore \
               the data dir from a backup"
            .into(),
    };
    let mut r = Reader::new(bytes);
    let (anchor_ms, last_fire_ms, spec) = (|| {
        let flags = r.u8("flags")?;
        if flags & !LAST_FIRE != 0 {
            return Err(format!("unknown flags {flags:#04x}"));
        }
        let anchor_ms = r.varint("anchor_ms")?;
        let last_fire_ms =
            if flags & LAST_FIRE != 0 { Some(r.varint("last_fire_ms")?) } else { None };
        let spec = match r.u8("spec")? {
            EVERY => ScheduleSpec::Every { every_ms: r.varint("every_ms")? },
            CRON => ScheduleSpec::Cron { expr: r.string("expr")?, tz: r.string("tz")? },
            tag => return Err(format!("unknown spec tag {tag}")),
        };
        Ok((anchor_ms, last_fire_ms, spec))
    })()
    .map_err(corrupt)?;
    let template = record::decode(0, r.rest())?;
    let job = NewJob { name: template.name, payload: template.payload, options: template.options };
    let schedule = Schedule { name: name.to_owned(), spec, queue: template.queue, job };
    Ok(ScheduleRecord { schedule, anchor_ms, last_fire_ms })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use qd_protocol::JobOptions;

    use super::*;

    fn sample(spec: ScheduleSpec, last_fire_ms: Option<u64>) -> ScheduleRecord {
        ScheduleRecord {
            schedule: Schedule {
                name: "n".into(),
                spec,
                queue: "q".into(),
                job: NewJob {
                    name: "j".into(),
                    payload: Bytes::from_static(b"hi"),
                    options: JobOptions { priority: -1, ..JobOptions::default() },
                },
            },
            anchor_ms: 1000,
            last_fire_ms,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Both specs, with and without a last fire, pinned. The template is a record body:
    /// flags 01 (priority), "q", "j", "hi", created_at 1000, run_at delta 0, priority -1.
    #[test]
    fn golden_bytes() {
        let template = "010171016a026869e8070001";
        let every = sample(ScheduleSpec::Every { every_ms: 5000 }, None);
        assert_eq!(hex(&encode(&every).unwrap()), format!("00e807008827{template}"));
        let cron =
            sample(ScheduleSpec::Cron { expr: "* * * * *".into(), tz: "UTC".into() }, Some(2000));
        assert_eq!(
            hex(&encode(&cron).unwrap()),
            format!("01e807d00f0109{}03{}{template}", hex(b"* * * * *"), hex(b"UTC"))
        );
        for s in [every, cron] {
            assert_eq!(decode("n", &encode(&s).unwrap()).unwrap(), s);
        }
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        let good = encode(&sample(ScheduleSpec::Every { every_ms: 5000 }, None)).unwrap();
        let mut bad_flags = good.clone();
        bad_flags[0] = 0x02;
        let mut bad_tag = good.clone();
        bad_tag[3] = 7;
        for bad in [vec![], bad_flags, bad_tag, good[..good.len() - 1].to_vec()] {
            assert!(decode("n", &bad).is_err(), "{bad:02x?}");
        }
    }
}
