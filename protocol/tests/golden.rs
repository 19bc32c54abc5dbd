//! Golden bytes: these frames are printed in docs/PROTOCOL.md. If a test here fails, the
//! wire format changed: that breaks every client in the field, so bump the protocol version
//! and document it instead of updating the bytes.

use bytes::{Bytes, BytesMut};
use qd_protocol::message::*;
use qd_protocol::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn check_client(msg: &ClientFrame, expected: &str) {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(buf.to_vec(), hex(expected), "encoding of {msg:?}");
    let decoded = FrameDecoder::new(DEFAULT_MAX_FRAME).decode_client(&mut buf).unwrap();
    assert_eq!(decoded.as_ref(), Some(msg));
}

fn check_server(msg: &ServerFrame, expected: &str) {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(buf.to_vec(), hex(expected), "encoding of {msg:?}");
    let decoded = FrameDecoder::new(DEFAULT_MAX_FRAME).decode_server(&mut buf).unwrap();
    assert_eq!(decoded.as_ref(), Some(msg));
}

#[test]
fn hello() {
    check_client(
        &ClientFrame::Hello(Hello { protocol: 3, client_name: "w1".into() }),
        "00 00 00 05 00 03 02 77 31",
    );
}

#[test]
fn welcome() {
    check_server(
        &ServerFrame::Welcome(Welcome {
            protocol: 3,
            server: "qd".into(),
            max_frame: 16777216,
            max_in_flight: 4096,
            role: Role::Worker,
        }),
        "00 00 00 0e 00 03 02 71 64 fc 00 00 00 01 fb 00 10 00",
    );
}

#[test]
fn add() {
    check_client(&ClientFrame::Request { id: 1, body: Request::Add { queue: "emails".into(), jobs: vec![NewJob { name: "welcome".into(), payload: Bytes::from_static(b"hi"), options: JobOptions { priority: 0, delay_ms: 0, attempts: 3, backoff: Backoff::Exponential { base_ms: 2000, max_ms: 3_600_000, jitter_pct: 0 }, lease_ms: 30_000, key: None, ..JobOptions::default() } }] } }, "00 00 00 2b 01 01 00 06 65 6d 61 69 6c 73 01 07 77 65 6c 63 6f 6d 65 02 68 69 00 00 03 01 fb d0 07 fc 80 ee 36 00 00 fb 30 75 00 00 00 00 00");
}

#[test]
fn added() {
    check_server(
        &ServerFrame::Response { id: 1, result: Ok(Response::Added { ids: vec![1] }) },
        "00 00 00 06 01 01 00 00 01 01",
    );
}

#[test]
fn reserve() {
    check_client(
        &ClientFrame::Request {
            id: 2,
            body: Request::Reserve { queues: vec!["emails".into()], max: 5, timeout_ms: 5000 },
        },
        "00 00 00 0f 01 02 01 01 06 65 6d 61 69 6c 73 05 fb 88 13",
    );
}

/// The job of the `reserved` example: a first try of 3, leased for 30 s.
fn leased_job() -> LeasedJob {
    let mut job =
        LeasedJob::new(1, "emails", "welcome", Bytes::from_static(b"hi"), 1, 1_700_000_030_000);
    job.created_at_ms = 1_700_000_000_000;
    job
}

#[test]
fn reserved() {
    check_server(&ServerFrame::Response { id: 2, result: Ok(Response::Reserved { jobs: vec![leased_job()] }) }, "00 00 00 2f 01 02 00 01 01 01 06 65 6d 61 69 6c 73 07 77 65 6c 63 6f 6d 65 02 68 69 01 03 01 fd 30 dd e5 cf 8b 01 00 00 fd 00 68 e5 cf 8b 01 00 00 00 00");
}

#[test]
fn ack() {
    check_client(
        &ClientFrame::Request {
            id: 3,
            body: Request::Ack { leases: vec![LeaseRef { id: 1, token: 1 }] },
        },
        "00 00 00 06 01 03 02 01 01 01",
    );
}

#[test]
fn acked() {
    check_server(
        &ServerFrame::Response { id: 3, result: Ok(Response::Acked { failed: vec![] }) },
        "00 00 00 05 01 03 00 02 00",
    );
}

#[test]
fn nack() {
    check_client(
        &ClientFrame::Request {
            id: 4,
            body: Request::Nack {
                lease: LeaseRef { id: 1, token: 1 },
                error: "smtp".into(),
                retry: RetryHint::Backoff,
            },
        },
        "00 00 00 0b 01 04 03 01 01 04 73 6d 74 70 00",
    );
}

#[test]
fn nacked() {
    check_server(
        &ServerFrame::Response {
            id: 4,
            result: Ok(Response::Nacked {
                outcome: NackOutcome::Retrying { run_at_ms: 1_700_000_002_000 },
            }),
        },
        "00 00 00 0e 01 04 00 03 00 fd d0 6f e5 cf 8b 01 00 00",
    );
}

#[test]
fn touch() {
    check_client(
        &ClientFrame::Request {
            id: 5,
            body: Request::Touch { lease: LeaseRef { id: 1, token: 1 }, lease_ms: Some(60_000) },
        },
        "00 00 00 09 01 05 04 01 01 01 fb 60 ea",
    );
}

#[test]
fn stats() {
    check_client(
        &ClientFrame::Request { id: 6, body: Request::Stats { after: None, limit: 100 } },
        "00 00 00 05 01 06 05 00 64",
    );
}

#[test]
fn error() {
    check_server(
        &ServerFrame::Response { id: 7, result: Err(WireError::new(ErrorCode::LeaseLost, "late")) },
        "00 00 00 09 01 07 01 0d 04 6c 61 74 65",
    );
}

#[test]
fn goodbye() {
    check_server(
        &ServerFrame::Goodbye(WireError::new(ErrorCode::FrameTooLarge, "big")),
        "00 00 00 06 02 02 03 62 69 67",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn add_all_options() {
    check_client(&ClientFrame::Request { id: 8, body: Request::Add { queue: "q".into(), jobs: vec![NewJob { name: "n".into(), payload: Bytes::from_static(b"p"), options: JobOptions { priority: -3, delay_ms: 1000, attempts: 5, backoff: Backoff::Exponential { base_ms: 100, max_ms: 1000, jitter_pct: 20 }, lease_ms: 500, key: Some("k1".into()), ..JobOptions::default() } }, NewJob { name: "m".into(), payload: Bytes::new(), options: JobOptions { backoff: Backoff::Fixed { delay_ms: 10 }, ..JobOptions::default() } }] } }, "00 00 00 30 01 08 00 01 71 02 01 6e 01 70 05 fb e8 03 05 01 64 fb e8 03 14 fb f4 01 01 02 6b 31 00 00 00 00 01 6d 00 00 00 03 00 0a fb 30 75 00 00 00 00 00");
}

/// Not printed in docs/PROTOCOL.md: the options of protocol 3 (group, timeout, expiry,
/// unique window), and a leased job with a group and a timeout.
#[test]
fn add_protocol3_options() {
    let options = JobOptions {
        key: Some("k".into()),
        group: Some("t1".into()),
        timeout_ms: Some(5000),
        expires_in_ms: Some(60_000),
        unique: Unique::Window { ms: 1000 },
        ..JobOptions::default()
    };
    check_client(&ClientFrame::Request { id: 9, body: Request::Add { queue: "q".into(), jobs: vec![NewJob { name: "n".into(), payload: Bytes::new(), options }] } }, "00 00 00 2c 01 09 00 01 71 01 01 6e 00 00 00 03 01 fb e8 03 fc 80 ee 36 00 14 fb 30 75 01 01 6b 01 02 74 31 01 fb 88 13 01 fb 60 ea 01 fb e8 03");
    let mut job = leased_job();
    job.group = Some("t1".into());
    job.timeout_ms = Some(5000);
    check_server(&ServerFrame::Response { id: 2, result: Ok(Response::Reserved { jobs: vec![job] }) }, "00 00 00 35 01 02 00 01 01 01 06 65 6d 61 69 6c 73 07 77 65 6c 63 6f 6d 65 02 68 69 01 03 01 fd 30 dd e5 cf 8b 01 00 00 fd 00 68 e5 cf 8b 01 00 00 01 02 74 31 01 fb 88 13");
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn nack_after() {
    check_client(
        &ClientFrame::Request {
            id: 9,
            body: Request::Nack {
                lease: LeaseRef { id: 2, token: 3 },
                error: "e".into(),
                retry: RetryHint::After { delay_ms: 250 },
            },
        },
        "00 00 00 09 01 09 03 02 03 01 65 01 fa",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn nack_never() {
    check_client(
        &ClientFrame::Request {
            id: 10,
            body: Request::Nack {
                lease: LeaseRef { id: 2, token: 3 },
                error: "".into(),
                retry: RetryHint::Never,
            },
        },
        "00 00 00 07 01 0a 03 02 03 00 02",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn nacked_dead() {
    check_server(
        &ServerFrame::Response {
            id: 9,
            result: Ok(Response::Nacked { outcome: NackOutcome::Dead }),
        },
        "00 00 00 05 01 09 00 03 01",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn touched() {
    check_server(
        &ServerFrame::Response {
            id: 5,
            result: Ok(Response::Touched { lease_deadline_ms: 1_700_000_060_000 }),
        },
        "00 00 00 0d 01 05 00 04 fd 60 52 e6 cf 8b 01 00 00",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn stats_answer() {
    check_server(
        &ServerFrame::Response {
            id: 6,
            result: Ok(Response::Stats {
                queues: vec![{
                    let mut s = QueueStats::new("q");
                    s.ready = 1;
                    s.delayed = 2;
                    s.active = 3;
                    s.dead = 4;
                    s.completed = 5;
                    s.completed_total = 300;
                    s.failed_total = 7;
                    s.expired_total = 8;
                    s
                }],
                next: Some("q".into()),
            }),
        },
        "00 00 00 14 01 06 00 05 01 01 71 01 02 03 04 05 fb 2c 01 07 08 01 01 71",
    );
}

/// Not printed in docs/PROTOCOL.md; pins a layout the examples there leave out.
#[test]
fn acked_failed() {
    check_server(
        &ServerFrame::Response {
            id: 3,
            result: Ok(Response::Acked {
                failed: vec![(1, WireError::new(ErrorCode::LeaseLost, "x"))],
            }),
        },
        "00 00 00 09 01 03 00 02 01 01 0d 01 78",
    );
}

// ---- Protocol 2: authentication, ping, paging, admin requests. ----

#[test]
fn challenge() {
    check_server(&ServerFrame::Challenge { nonce: [0xab; 32] }, "00 00 00 21 03 ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab");
}

#[test]
fn auth() {
    check_client(&ClientFrame::Auth { role: Role::Admin, proof: [0x11; 32] }, "00 00 00 22 02 01 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11");
}

#[test]
fn welcome_admin() {
    check_server(
        &ServerFrame::Welcome(Welcome {
            protocol: 3,
            server: "qd".into(),
            max_frame: 1024,
            max_in_flight: 8,
            role: Role::Admin,
        }),
        "00 00 00 0a 00 03 02 71 64 fb 00 04 08 01",
    );
}

#[test]
fn auth_failed() {
    check_server(
        &ServerFrame::Goodbye(WireError::new(ErrorCode::AuthFailed, "no")),
        "00 00 00 05 02 06 02 6e 6f",
    );
}

#[test]
fn forbidden() {
    check_server(
        &ServerFrame::Response { id: 1, result: Err(WireError::new(ErrorCode::Forbidden, "")) },
        "00 00 00 05 01 01 01 0e 00",
    );
}

#[test]
fn stats_after() {
    check_client(
        &ClientFrame::Request { id: 7, body: Request::Stats { after: Some("q".into()), limit: 2 } },
        "00 00 00 07 01 07 05 01 01 71 02",
    );
}

#[test]
fn ping_pong() {
    check_client(&ClientFrame::Request { id: 8, body: Request::Ping }, "00 00 00 03 01 08 06");
    check_server(
        &ServerFrame::Response { id: 8, result: Ok(Response::Pong) },
        "00 00 00 04 01 08 00 06",
    );
}

#[test]
fn queues() {
    check_client(
        &ClientFrame::Request { id: 9, body: Request::Queues { after: None, limit: 50 } },
        "00 00 00 05 01 09 07 00 32",
    );
}

#[test]
fn queues_answer() {
    let mut q = QueueInfo::new("q");
    q.ready = 1;
    q.paused = true;
    q.oldest_ready_age_ms = Some(1000);
    q.added_total = 2;
    q.completed_total = 3;
    q.failed_total = 4;
    q.dead_total = 5;
    q.minutes = vec![MinuteCounts::new(1_700_000_040_000, 6, 7)];
    check_server(
        &ServerFrame::Response {
            id: 9,
            result: Ok(Response::Queues { queues: vec![q], next: None }),
        },
        "00 00 00 27 01 09 00 07 01 01 71 01 00 00 00 00 01 01 fb e8 03 02 03 04 05 01 fd 40 04 e6 cf 8b 01 00 00 06 07 00 00 00 00 00 00",
    );
}

#[test]
fn jobs() {
    check_client(
        &ClientFrame::Request {
            id: 10,
            body: Request::Jobs {
                queue: "q".into(),
                state: JobState::Dead,
                cursor: Some(Cursor(vec![0, 1])),
                limit: 20,
            },
        },
        "00 00 00 0b 01 0a 08 01 71 03 01 02 00 01 14",
    );
}

fn summary() -> JobSummary {
    let mut s = JobSummary::new(5, "q", "n", JobState::Active);
    s.attempts_used = 1;
    s.max_attempts = 3;
    s.priority = -1;
    s.created_at_ms = 1_700_000_000_000;
    s.lease_deadline_ms = Some(1_700_000_030_000);
    s.worker = Some("w".into());
    s
}

#[test]
fn jobs_answer() {
    check_server(
        &ServerFrame::Response {
            id: 10,
            result: Ok(Response::Jobs { jobs: vec![summary()], next: Some(Cursor(vec![9])) }),
        },
        "00 00 00 2a 01 0a 00 08 01 05 01 71 01 6e 02 01 03 01 fd 00 68 e5 cf 8b 01 00 00 00 01 fd 30 dd e5 cf 8b 01 00 00 01 01 77 00 00 01 01 09",
    );
}

#[test]
fn job() {
    check_client(
        &ClientFrame::Request { id: 11, body: Request::Job { id: 5 } },
        "00 00 00 04 01 0b 09 05",
    );
}

#[test]
fn job_answer() {
    let mut d = JobDetail::new(summary(), Bytes::from_static(b"hi"), JobOptions::default());
    d.errors = vec![JobFailure::new(1, 1_700_000_001_000, "e")];
    d.started_at_ms = Some(1_700_000_000_000);
    d.progress = Some(Bytes::from_static(b"7"));
    check_server(
        &ServerFrame::Response { id: 11, result: Ok(Response::Job { job: Box::new(d) }) },
        "00 00 00 58 01 0b 00 09 05 01 71 01 6e 02 01 03 01 fd 00 68 e5 cf 8b 01 00 00 00 01 fd 30 dd e5 cf 8b 01 00 00 01 01 77 00 00 02 68 69 00 00 03 01 fb e8 03 fc 80 ee 36 00 14 fb 30 75 00 00 00 00 00 01 01 fd e8 6b e5 cf 8b 01 00 00 01 65 01 fd 00 68 e5 cf 8b 01 00 00 01 01 37",
    );
}

#[test]
fn search() {
    check_client(
        &ClientFrame::Request {
            id: 12,
            body: Request::Search {
                queue: "q".into(),
                state: Some(JobState::Ready),
                query: SearchQuery::Field { path: "user.id".into(), value: "42".into() },
                cursor: None,
                limit: 10,
            },
        },
        "00 00 00 15 01 0c 0a 01 71 01 00 01 07 75 73 65 72 2e 69 64 02 34 32 00 0a",
    );
}

#[test]
fn search_substring() {
    check_client(
        &ClientFrame::Request {
            id: 13,
            body: Request::Search {
                queue: "q".into(),
                state: None,
                query: SearchQuery::Substring("ada".into()),
                cursor: None,
                limit: 10,
            },
        },
        "00 00 00 0d 01 0d 0a 01 71 00 00 03 61 64 61 00 0a",
    );
}

#[test]
fn retry_dead() {
    check_client(
        &ClientFrame::Request {
            id: 14,
            body: Request::RetryDead { queue: "q".into(), ids: vec![1, 300] },
        },
        "00 00 00 0a 01 0e 0b 01 71 02 01 fb 2c 01",
    );
}

#[test]
fn retry_all_dead() {
    check_client(
        &ClientFrame::Request {
            id: 15,
            body: Request::RetryAllDead { queue: "q".into(), name: Some("n".into()) },
        },
        "00 00 00 08 01 0f 0c 01 71 01 01 6e",
    );
}

#[test]
fn purge_dead() {
    check_client(
        &ClientFrame::Request {
            id: 16,
            body: Request::PurgeDead { queue: "q".into(), older_than_ms: Some(86_400_000) },
        },
        "00 00 00 0b 01 10 0d 01 71 01 fc 00 5c 26 05",
    );
}

#[test]
fn remove_promote() {
    check_client(
        &ClientFrame::Request { id: 17, body: Request::Remove { ids: vec![1] } },
        "00 00 00 05 01 11 0e 01 01",
    );
    check_client(
        &ClientFrame::Request { id: 18, body: Request::Promote { ids: vec![2] } },
        "00 00 00 05 01 12 0f 01 02",
    );
}

#[test]
fn pause_resume() {
    check_client(
        &ClientFrame::Request { id: 19, body: Request::Pause { queue: "q".into() } },
        "00 00 00 05 01 13 10 01 71",
    );
    check_client(
        &ClientFrame::Request { id: 20, body: Request::Resume { queue: "q".into() } },
        "00 00 00 05 01 14 11 01 71",
    );
}

/// Appended after `Resume`: a running job's progress, and a snooze (put back with a delay,
/// no attempt used).
#[test]
fn progress_snooze() {
    check_client(
        &ClientFrame::Request {
            id: 21,
            body: Request::Progress {
                lease: LeaseRef { id: 1, token: 1 },
                progress: Bytes::from_static(b"50"),
            },
        },
        "00 00 00 08 01 15 15 01 01 02 35 30",
    );
    check_client(
        &ClientFrame::Request {
            id: 22,
            body: Request::Snooze { lease: LeaseRef { id: 1, token: 1 }, delay_ms: 60_000 },
        },
        "00 00 00 08 01 16 16 01 01 fb 60 ea",
    );
}

#[test]
fn count_done() {
    check_server(
        &ServerFrame::Response { id: 14, result: Ok(Response::Count { n: 2 }) },
        "00 00 00 05 01 0e 00 0a 02",
    );
    check_server(
        &ServerFrame::Response { id: 19, result: Ok(Response::Done) },
        "00 00 00 04 01 13 00 0b",
    );
}

fn schedule(spec: ScheduleSpec) -> Schedule {
    Schedule {
        name: "n".into(),
        spec,
        queue: "q".into(),
        job: NewJob { name: "j".into(), payload: Bytes::new(), options: JobOptions::default() },
    }
}

#[test]
fn schedule_upsert() {
    let cron = schedule(ScheduleSpec::Cron { expr: "0 3 * * *".into(), tz: "UTC".into() });
    check_client(
        &ClientFrame::Request { id: 21, body: Request::ScheduleUpsert { schedule: Box::new(cron) } },
        "00 00 00 2e 01 15 12 01 6e 00 09 30 20 33 20 2a 20 2a 20 2a 03 55 54 43 01 71 01 6a 00 00 00 03 01 fb e8 03 fc 80 ee 36 00 14 fb 30 75 00 00 00 00 00",
    );
    let every = schedule(ScheduleSpec::Every { every_ms: 1000 });
    check_client(
        &ClientFrame::Request { id: 21, body: Request::ScheduleUpsert { schedule: Box::new(every) } },
        "00 00 00 23 01 15 12 01 6e 01 fb e8 03 01 71 01 6a 00 00 00 03 01 fb e8 03 fc 80 ee 36 00 14 fb 30 75 00 00 00 00 00",
    );
}

#[test]
fn schedule_remove_list() {
    check_client(
        &ClientFrame::Request { id: 22, body: Request::ScheduleRemove { name: "n".into() } },
        "00 00 00 05 01 16 13 01 6e",
    );
    check_client(
        &ClientFrame::Request { id: 23, body: Request::Schedules { after: None, limit: 10 } },
        "00 00 00 05 01 17 14 00 0a",
    );
}

#[test]
fn schedules_answer() {
    let info =
        ScheduleInfo::new(schedule(ScheduleSpec::Every { every_ms: 1000 }), 1000, None, Some(2000));
    check_server(
        &ServerFrame::Response {
            id: 23,
            result: Ok(Response::Schedules { schedules: vec![info], next: None }),
        },
        "00 00 00 2e 01 17 00 0c 01 01 6e 01 fb e8 03 01 71 01 6a 00 00 00 03 01 fb e8 03 fc 80 ee 36 00 14 fb 30 75 00 00 00 00 00 fb e8 03 00 01 fb d0 07 00",
    );
}

// ---- Results and waiting (appended after `Resume`). ----

#[test]
fn ack_with_result() {
    check_client(
        &ClientFrame::Request {
            id: 21,
            body: Request::AckWithResult {
                lease: LeaseRef { id: 1, token: 2 },
                result: Bytes::from_static(b"ok"),
            },
        },
        "00 00 00 08 01 15 17 01 02 02 6f 6b",
    );
}

#[test]
fn wait_and_outcomes() {
    check_client(
        &ClientFrame::Request { id: 22, body: Request::Wait { id: 5, timeout_ms: 1000 } },
        "00 00 00 07 01 16 18 05 fb e8 03",
    );
    let outcome =
        |outcome| ServerFrame::Response { id: 22, result: Ok(Response::Outcome { outcome }) };
    check_server(
        &outcome(JobOutcome::Completed { result: Bytes::from_static(b"ok") }),
        "00 00 00 08 01 16 00 0d 00 02 6f 6b",
    );
    check_server(
        &outcome(JobOutcome::Dead { error: "expired".into() }),
        "00 00 00 0d 01 16 00 0d 01 07 65 78 70 69 72 65 64",
    );
    check_server(&outcome(JobOutcome::Pending), "00 00 00 05 01 16 00 0d 02");
}

/// Issue 9: flow limits, appended after `Resume`.
#[test]
fn set_queue_limits() {
    let limits = QueueLimits {
        rate: Some(Rate::new(100, 1000)),
        concurrency: Some(10),
        group_concurrency: Some(1),
        group_rate: None,
    };
    check_client(
        &ClientFrame::Request {
            id: 21,
            body: Request::SetQueueLimits { queue: "q".into(), limits },
        },
        "00 00 00 0f 01 15 19 01 71 01 64 fb e8 03 01 0a 01 01 00",
    );
}

/// Issue 9: "the downstream said 429", appended after `Never`.
#[test]
fn nack_rate_limited() {
    check_client(
        &ClientFrame::Request {
            id: 11,
            body: Request::Nack {
                lease: LeaseRef { id: 2, token: 3 },
                error: "e".into(),
                retry: RetryHint::RateLimited { delay_ms: 250 },
            },
        },
        "00 00 00 09 01 0b 03 02 03 01 65 03 fa",
    );
}

/// Issue 11: moving waiting jobs to the dead set (Faktory's MUTATE `kill`), appended after
/// `SetQueueLimits`.
#[test]
fn kill() {
    check_client(
        &ClientFrame::Request { id: 23, body: Request::Kill { ids: vec![2, 3] } },
        "00 00 00 06 01 17 1a 02 02 03",
    );
}

/// Issue 9: lifecycle event subscriptions, appended after `Kill` (requests) and
/// `Challenge` (server frames).
#[test]
fn subscribe_and_events() {
    check_client(
        &ClientFrame::Request { id: 30, body: Request::Subscribe { queues: vec!["q".into()] } },
        "00 00 00 06 01 1e 1b 01 01 71",
    );
    check_client(
        &ClientFrame::Request { id: 31, body: Request::Unsubscribe { subscription: 30 } },
        "00 00 00 04 01 1f 1c 1e",
    );
    // Appended after Unsubscribe: variant 29.
    check_client(
        &ClientFrame::Request { id: 32, body: Request::ScheduleRunNow { name: "n".into() } },
        "00 00 00 05 01 20 1d 01 6e",
    );
    let event = |kind| ServerFrame::Event {
        subscription: 30,
        event: JobEvent { queue: "q".into(), id: 5, name: "n".into(), kind, at_ms: 1000 },
    };
    check_server(&event(EventKind::Added), "00 00 00 0b 04 1e 01 71 05 01 6e 00 fb e8 03");
    check_server(&event(EventKind::Completed), "00 00 00 0b 04 1e 01 71 05 01 6e 01 fb e8 03");
    check_server(
        &event(EventKind::Failed { error: "e".into(), run_at_ms: 2000 }),
        "00 00 00 10 04 1e 01 71 05 01 6e 02 01 65 fb d0 07 fb e8 03",
    );
    check_server(
        &event(EventKind::DeadLettered { error: "e".into() }),
        "00 00 00 0d 04 1e 01 71 05 01 6e 03 01 65 fb e8 03",
    );
    check_server(&event(EventKind::Expired), "00 00 00 0b 04 1e 01 71 05 01 6e 04 fb e8 03");
    check_server(&ServerFrame::Lagged { subscription: 30, missed: 7 }, "00 00 00 03 05 1e 07");
}
