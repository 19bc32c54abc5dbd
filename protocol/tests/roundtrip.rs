//! Property tests: every message survives encode -> decode unchanged, whole or fed to the
//! decoder in arbitrary pieces, and no byte string makes the decoder panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use qd_protocol::message::*;
use qd_protocol::*;

fn backoff() -> impl Strategy<Value = Backoff> {
    prop_oneof![
        any::<u64>().prop_map(|delay_ms| Backoff::Fixed { delay_ms }),
        (any::<u64>(), any::<u64>(), 0u8..=100).prop_map(|(base_ms, max_ms, jitter_pct)| {
            Backoff::Exponential { base_ms, max_ms, jitter_pct }
        }),
    ]
}

fn new_job() -> impl Strategy<Value = NewJob> {
    (
        ".{0,20}",
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<i32>(),
        any::<u64>(),
        any::<u32>(),
        backoff(),
        any::<u64>(),
        proptest::option::of(".{0,10}"),
        extension(),
    )
        .prop_map(
            |(name, payload, priority, delay_ms, attempts, backoff, lease_ms, key, ext)| {
                let (group, timeout_ms, expires_in_ms, unique) = ext;
                NewJob {
                    name,
                    payload: Bytes::from(payload),
                    options: JobOptions {
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
                    },
                }
            },
        )
}

/// The options protocol 3 added.
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

fn lease() -> impl Strategy<Value = LeaseRef> {
    (any::<u64>(), any::<u64>()).prop_map(|(id, token)| LeaseRef { id, token })
}

fn retry() -> impl Strategy<Value = RetryHint> {
    prop_oneof![
        Just(RetryHint::Backoff),
        any::<u64>().prop_map(|delay_ms| RetryHint::After { delay_ms }),
        Just(RetryHint::Never),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        ("[a-z]{1,8}", proptest::collection::vec(new_job(), 0..4))
            .prop_map(|(queue, jobs)| Request::Add { queue, jobs }),
        (proptest::collection::vec("[a-z]{1,8}", 0..3), any::<u32>(), any::<u64>())
            .prop_map(|(queues, max, timeout_ms)| Request::Reserve { queues, max, timeout_ms }),
        proptest::collection::vec(lease(), 0..4).prop_map(|leases| Request::Ack { leases }),
        (lease(), ".{0,30}", retry()).prop_map(|(lease, error, retry)| Request::Nack {
            lease,
            error,
            retry
        }),
        (lease(), proptest::option::of(any::<u64>()))
            .prop_map(|(lease, lease_ms)| Request::Touch { lease, lease_ms }),
        (lease(), proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(lease, p)| Request::Progress { lease, progress: p.into() }),
        (lease(), any::<u64>()).prop_map(|(lease, delay_ms)| Request::Snooze { lease, delay_ms }),
        (proptest::option::of("[a-z]{1,8}"), any::<u32>())
            .prop_map(|(after, limit)| Request::Stats { after, limit }),
        Just(Request::Ping),
        admin_request(),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Worker), Just(Role::Admin)]
}

fn job_state() -> impl Strategy<Value = JobState> {
    prop_oneof![
        Just(JobState::Ready),
        Just(JobState::Delayed),
        Just(JobState::Active),
        Just(JobState::Dead),
        Just(JobState::Completed),
    ]
}

fn cursor() -> impl Strategy<Value = Cursor> {
    proptest::collection::vec(any::<u8>(), 0..=64).prop_map(Cursor)
}

fn admin_request() -> impl Strategy<Value = Request> {
    let q = || "[a-z]{1,8}".prop_map(String::from);
    let ids = || proptest::collection::vec(any::<u64>(), 0..5);
    prop_oneof![
        (proptest::option::of(q()), any::<u32>())
            .prop_map(|(after, limit)| Request::Queues { after, limit }),
        (q(), job_state(), proptest::option::of(cursor()), any::<u32>()).prop_map(
            |(queue, state, cursor, limit)| Request::Jobs { queue, state, cursor, limit }
        ),
        any::<u64>().prop_map(|id| Request::Job { id }),
        (
            q(),
            proptest::option::of(job_state()),
            prop_oneof![
                ".{0,8}".prop_map(SearchQuery::Substring),
                ("[a-z.]{0,8}", ".{0,8}")
                    .prop_map(|(path, value)| SearchQuery::Field { path, value }),
            ],
            proptest::option::of(cursor()),
            any::<u32>()
        )
            .prop_map(|(queue, state, query, cursor, limit)| Request::Search {
                queue,
                state,
                query,
                cursor,
                limit
            }),
        (q(), ids()).prop_map(|(queue, ids)| Request::RetryDead { queue, ids }),
        (q(), proptest::option::of(q()))
            .prop_map(|(queue, name)| Request::RetryAllDead { queue, name }),
        (q(), proptest::option::of(any::<u64>()))
            .prop_map(|(queue, older_than_ms)| Request::PurgeDead { queue, older_than_ms }),
        ids().prop_map(|ids| Request::Remove { ids }),
        ids().prop_map(|ids| Request::Promote { ids }),
        q().prop_map(|queue| Request::Pause { queue }),
        q().prop_map(|queue| Request::Resume { queue }),
        schedule().prop_map(|schedule| Request::ScheduleUpsert { schedule: Box::new(schedule) }),
        q().prop_map(|name| Request::ScheduleRemove { name }),
        (proptest::option::of(q()), any::<u32>())
            .prop_map(|(after, limit)| Request::Schedules { after, limit }),
        // Appended after `Resume`: results and waiting (not admin).
        (any::<(u64, u64)>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(
            |((id, token), result)| Request::AckWithResult {
                lease: LeaseRef { id, token },
                result: Bytes::from(result),
            }
        ),
        any::<(u64, u64)>().prop_map(|(id, timeout_ms)| Request::Wait { id, timeout_ms }),
        // Appended after `SetQueueLimits` (issue 11).
        ids().prop_map(|ids| Request::Kill { ids }),
        // Appended after `Unsubscribe`: a schedule's "run now".
        q().prop_map(|name| Request::ScheduleRunNow { name }),
    ]
}

fn schedule() -> impl Strategy<Value = Schedule> {
    let spec = prop_oneof![
        any::<u64>().prop_map(|every_ms| ScheduleSpec::Every { every_ms }),
        (".{0,16}", ".{0,16}").prop_map(|(expr, tz)| ScheduleSpec::Cron { expr, tz }),
    ];
    ("[a-z]{1,8}", spec, "[a-z]{1,8}", new_job()).prop_map(|(name, spec, queue, job)| Schedule {
        name,
        spec,
        queue,
        job,
    })
}

fn summary() -> impl Strategy<Value = JobSummary> {
    (
        any::<u64>(),
        "[a-z]{1,8}",
        job_state(),
        any::<(u32, u32, i32, u64)>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(".{0,8}"),
    )
        .prop_map(|(id, name, state, (used, max, priority, created), at, text)| {
            let mut s = JobSummary::new(id, "q", name, state);
            s.attempts_used = used;
            s.max_attempts = max;
            s.priority = priority;
            s.created_at_ms = created;
            s.run_at_ms = at;
            s.lease_deadline_ms = at;
            s.worker = text.clone();
            s.last_error = text;
            s.finished_at_ms = at;
            s
        })
}

fn admin_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Pong),
        Just(Response::Done),
        any::<u64>().prop_map(|n| Response::Count { n }),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..16)
                .prop_map(|r| JobOutcome::Completed { result: Bytes::from(r) }),
            ".{0,8}".prop_map(|error| JobOutcome::Dead { error }),
            Just(JobOutcome::Pending),
        ]
        .prop_map(|outcome| Response::Outcome { outcome }),
        (proptest::collection::vec(summary(), 0..3), proptest::option::of(cursor()))
            .prop_map(|(jobs, next)| Response::Jobs { jobs, next }),
        (
            summary(),
            new_job(),
            proptest::option::of(any::<u64>()),
            ".{0,8}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4))
        )
            .prop_map(|(summary, job, started, message, progress)| {
                let mut d = JobDetail::new(summary, job.payload, job.options);
                d.errors = vec![JobFailure::new(1, 2, message)];
                d.started_at_ms = started;
                d.progress = progress.map(Into::into);
                Response::Job { job: Box::new(d) }
            }),
        ("[a-z]{1,8}", any::<(u64, bool, Option<u64>, u32)>(), proptest::option::of("[a-z]{1,8}"))
            .prop_map(|(name, (n, paused, age, m), next)| {
                let mut q = QueueInfo::new(name);
                q.ready = n;
                q.paused = paused;
                q.oldest_ready_age_ms = age;
                q.dead_total = n;
                q.minutes = vec![MinuteCounts::new(n, m, m)];
                Response::Queues { queues: vec![q], next }
            }),
        (
            schedule(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of("[a-z]{1,8}")
        )
            .prop_map(|(schedule, anchor, at, next)| Response::Schedules {
                schedules: vec![ScheduleInfo::new(schedule, anchor, at, at)],
                next,
            }),
    ]
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (any::<u16>(), ".{0,20}").prop_map(|(c, m)| WireError::new(ErrorCode::from(c), m))
}

fn leased_job() -> impl Strategy<Value = LeasedJob> {
    (
        any::<u64>(),
        "[a-z]{1,8}",
        ".{0,8}",
        proptest::collection::vec(any::<u8>(), 0..32),
        any::<(u32, u32, u64, u64, u64)>(),
        proptest::option::of("[a-z]{1,8}"),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(id, queue, name, payload, (attempt, max_attempts, token, d, c), group, timeout)| {
                let mut job = LeasedJob::new(id, queue, name, Bytes::from(payload), token, d);
                job.attempt = attempt;
                job.max_attempts = max_attempts;
                job.created_at_ms = c;
                job.group = group;
                job.timeout_ms = timeout;
                job
            },
        )
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        proptest::collection::vec(any::<u64>(), 0..5).prop_map(|ids| Response::Added { ids }),
        proptest::collection::vec(leased_job(), 0..3).prop_map(|jobs| Response::Reserved { jobs }),
        proptest::collection::vec((any::<u64>(), wire_error()), 0..3)
            .prop_map(|failed| Response::Acked { failed }),
        any::<u64>().prop_map(|run_at_ms| Response::Nacked {
            outcome: NackOutcome::Retrying { run_at_ms }
        }),
        Just(Response::Nacked { outcome: NackOutcome::Dead }),
        any::<u64>().prop_map(|lease_deadline_ms| Response::Touched { lease_deadline_ms }),
        admin_response(),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (any::<u32>(), ".{0,10}").prop_map(|(protocol, client_name)| ClientFrame::Hello(Hello {
            protocol,
            client_name
        })),
        (role(), any::<[u8; 32]>()).prop_map(|(role, proof)| ClientFrame::Auth { role, proof }),
        (any::<u64>(), request()).prop_map(|(id, body)| ClientFrame::Request { id, body }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (any::<u64>(), response()).prop_map(|(id, r)| ServerFrame::Response { id, result: Ok(r) }),
        (any::<u64>(), wire_error())
            .prop_map(|(id, e)| ServerFrame::Response { id, result: Err(e) }),
        wire_error().prop_map(ServerFrame::Goodbye),
        any::<[u8; 32]>().prop_map(|nonce| ServerFrame::Challenge { nonce }),
        (any::<u32>(), role()).prop_map(|(protocol, role)| ServerFrame::Welcome(Welcome {
            protocol,
            server: "qd".into(),
            max_frame: protocol,
            max_in_flight: protocol,
            role,
        })),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip_in_pieces(frames in proptest::collection::vec(client_frame(), 1..5), cut in 1usize..50) {
        let mut wire = BytesMut::new();
        for f in &frames {
            frame::encode(f, &mut wire, DEFAULT_MAX_FRAME).unwrap();
        }
        // Feed the decoder `cut` bytes at a time, as a socket might.
        let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in wire.chunks(cut) {
            buf.extend_from_slice(chunk);
            while let Some(f) = dec.decode_client(&mut buf).unwrap() {
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn server_frames_round_trip(f in server_frame()) {
        let mut wire = BytesMut::new();
        frame::encode(&f, &mut wire, DEFAULT_MAX_FRAME).unwrap();
        let got = FrameDecoder::new(DEFAULT_MAX_FRAME).decode_server(&mut wire).unwrap();
        prop_assert_eq!(got, Some(f));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&bytes[..]);
        // Errors are fine; panics and runaway allocation are not.
        while let Ok(Some(_)) = dec.decode_client(&mut buf) {}
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = dec.decode_server(&mut buf) {}
    }

    #[test]
    fn error_codes_round_trip(n in any::<u16>()) {
        prop_assert_eq!(ErrorCode::from(n).as_u16(), n);
    }
}
