//! The small workloads of the benchmark (W1 ... W4 and the sustained W8, defined in the
//! project's WORKLOADS notes and docs/PERFORMANCE.md; W5 and W6 are in `mod.rs`, W7 in
//! `scale.rs`), each driven through the real client crate. Each returns the figures it
//! measured; the caller prints them. Correctness is checked as we go: a workload whose check
//! fails returns an error and `qd bench` exits non-zero.
//!
//! Each workload gets one client per broker (`qd bench --brokers N`: N brokers on one
//! database) and spreads its work over them: producers' adds go round robin, and every
//! broker gets a `Worker` of its own, all on the one queue. With one broker that is the
//! workload as WORKLOADS defines it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use qd_client::{Backoff, CancellationToken, Client, Job, LeasedJob, Worker};
use rand::RngCore;

/// Size of every job's payload.
pub const PAYLOAD: usize = 128;

/// One measured figure: `W2 drain_jobs_per_s=41234`.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: &'static str,
    pub value: f64,
}

pub fn fig(name: &'static str, value: f64) -> Figure {
    Figure { name, value }
}

/// 128 random bytes; the first 8 may be overwritten with a timestamp.
pub fn payload() -> Vec<u8> {
    payload_of(PAYLOAD)
}

/// `len` random bytes.
pub fn payload_of(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut p);
    p
}

/// Prints `label: done/total` to stderr about once a second.
pub struct Progress {
    stop: CancellationToken,
}

impl Progress {
    pub fn start(label: &str, total: u64) -> (Arc<AtomicU64>, Progress) {
        let done = Arc::new(AtomicU64::new(0));
        let p = Progress { stop: CancellationToken::new() };
        let (label, d, stop) = (label.to_owned(), done.clone(), p.stop.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let n = d.load(Ordering::Relaxed);
                eprintln!(
                    "  {label}: {n}/{total} ({:.0}/s)",
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        });
        (done, p)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The client of broker `i % brokers` (`clients` holds one per broker): how a workload
/// spreads its requests.
pub fn pick<T>(clients: &[T], i: u64) -> &T {
    &clients[(i % clients.len() as u64) as usize]
}

/// W1: one producer, `n` adds one by one, up to 256 in flight (spread over the brokers).
pub async fn w1_enqueue(clients: &[Client], queue: &str, n: u64) -> anyhow::Result<Vec<Figure>> {
    let body = Bytes::from(payload());
    let (done, _progress) = Progress::start("W1 enqueue", n);
    let started = Instant::now();
    let mut adds = futures::stream::iter(0..n)
        .map(|i| {
            let job = Job::new("bench", body.clone());
            let client = pick(clients, i);
            async move { client.add(queue, job).await }
        })
        .buffer_unordered(256);
    while let Some(r) = adds.next().await {
        r.context("add failed")?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(vec![fig("enqueue_jobs_per_s", n as f64 / secs)])
}

/// Adds `n` jobs of `len`-byte payloads in bulk requests of 1,000, a few requests in flight.
pub async fn bulk_fill(
    clients: &[Client],
    queue: &str,
    n: u64,
    len: usize,
    label: &str,
) -> anyhow::Result<f64> {
    bulk_fill_grouped(clients, queue, n, len, label, None).await
}

/// [`bulk_fill`], with job `i` in group `g{i % groups}` when `groups` is given.
pub async fn bulk_fill_grouped(
    clients: &[Client],
    queue: &str,
    n: u64,
    len: usize,
    label: &str,
    groups: Option<u64>,
) -> anyhow::Result<f64> {
    let body = Bytes::from(payload_of(len));
    let job = |i: u64| {
        let job = Job::new("bench", body.clone());
        match groups {
            Some(g) => job.group(format!("g{}", i % g)),
            None => job,
        }
    };
    let (done, _progress) = Progress::start(label, n);
    let started = Instant::now();
    let batches = n.div_ceil(1000);
    let mut adds = futures::stream::iter(0..batches)
        .map(|b| {
            let size = (n - b * 1000).min(1000);
            let jobs: Vec<Job> = (b * 1000..b * 1000 + size).map(job).collect();
            let client = pick(clients, b);
            async move { client.add_bulk(queue, jobs).await.map(|ids| ids.len() as u64) }
        })
        .buffer_unordered(4);
    while let Some(r) = adds.next().await {
        done.fetch_add(r.context("bulk add failed")?, Ordering::Relaxed);
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// W1b: 100,000 jobs in bulk requests of 1,000.
pub async fn w1b_bulk(clients: &[Client], queue: &str, n: u64) -> anyhow::Result<Vec<Figure>> {
    let rate = bulk_fill(clients, queue, n, PAYLOAD, "W1b bulk enqueue").await?;
    Ok(vec![fig("bulk_enqueue_jobs_per_s", rate)])
}

/// A drain that completes nothing for this long has failed (the W7 drains after a restart
/// of 5M jobs once stalled for good); a benchmark that hangs reports nothing.
const STALL: Duration = Duration::from_secs(60);

/// Waits until `queue` has completed `target` jobs in total, polling stats every 5 ms (as a
/// dashboard would: the polls are part of the load). Each broker counts the acks it took
/// (on PostgreSQL the `_total` counters are per broker), so the servers' total is the sum
/// over `clients`, one per broker. `acked` counts the acks the workers saw confirmed: the
/// PostgreSQL backend lists only queues that have rows, so once the last job is acked its
/// queue, and its `completed_total`, leave the stats, and a drain that waited for the
/// stats alone stalled at its very end (seen: 99,434 of 100,000, then 0 for 60 s).
async fn wait_completed(
    clients: &[Client],
    queue: &str,
    target: u64,
    acked: &AtomicU64,
    done: &AtomicU64,
) -> anyhow::Result<()> {
    let (mut last, mut moved) = (0, Instant::now());
    loop {
        let mut reported = 0;
        let mut q = None;
        for client in clients {
            let stats = client.stats().await?;
            q = stats.into_iter().find(|q| q.queue == queue);
            reported += q.as_ref().map_or(0, |q| q.completed_total);
        }
        let completed = completed(reported, acked.load(Ordering::Relaxed));
        done.store(completed, Ordering::Relaxed);
        if completed >= target {
            return Ok(());
        }
        if completed != last {
            (last, moved) = (completed, Instant::now());
        }
        ensure!(
            moved.elapsed() < STALL,
            "stalled: {completed} of {target} jobs completed and none in the last {}s; \
             the server log (run it by hand) says why",
            STALL.as_secs()
        );
        if let Some(q) = q {
            ensure!(q.dead == 0, "{} jobs died during a no-op drain", q.dead);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Jobs completed so far: what the servers report, or what the workers saw acked when the
/// servers report less (a queue left the stats, or a broker's count lags).
fn completed(reported: u64, acked: u64) -> u64 {
    reported.max(acked)
}

/// A worker hook counting the acks it saw confirmed into `acked`.
fn count_acks(acked: &Arc<AtomicU64>) -> impl Fn(&LeasedJob) + Send + Sync + 'static {
    let acked = acked.clone();
    move |_| {
        acked.fetch_add(1, Ordering::Relaxed);
    }
}

/// Drains `n` queued jobs with one worker per broker, each of concurrency 64, and a no-op
/// handler.
pub async fn drain(clients: &[Client], queue: &str, n: u64, label: &str) -> anyhow::Result<f64> {
    let (done, _progress) = Progress::start(label, n);
    let stop = CancellationToken::new();
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let count = |w: Worker| w.on_completed(count_acks(&acked));
    let runs = spawn_workers(clients, queue, &stop, count, |_job| async { Ok::<(), String>(()) });
    let waited = wait_completed(clients, queue, n, &acked, &done).await;
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    join_workers(runs).await?;
    waited?;
    Ok(n as f64 / secs)
}

/// What flow control W2 runs under (`qd bench --rate`, `--groups`); none by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct W2Flow {
    /// The queue's rate limit, starts per second (set by the caller before the fill).
    pub rate: Option<u32>,
    /// How many group keys the jobs are spread over.
    pub groups: Option<u64>,
}

/// W2: 100,000 queued jobs, drained by one worker with concurrency 64. With `flow`, the
/// jobs carry group keys and the queue has a rate limit; the figures say which.
pub async fn w2_drain(
    clients: &[Client],
    queue: &str,
    n: u64,
    flow: &W2Flow,
) -> anyhow::Result<Vec<Figure>> {
    bulk_fill_grouped(clients, queue, n, PAYLOAD, "W2 fill", flow.groups).await?;
    let rate = drain(clients, queue, n, "W2 drain").await?;
    let mut figures = vec![fig("drain_jobs_per_s", rate)];
    if let Some(max) = flow.rate {
        figures.push(fig("rate_limit_per_s", f64::from(max)));
    }
    if let Some(groups) = flow.groups {
        figures.push(fig("groups", groups as f64));
    }
    Ok(figures)
}

/// A `Worker` of concurrency 64 per broker on `queue`, each set up by `setup` (hooks) and
/// running `handler`, until `stop` fires. Await [`join_workers`] on the answer.
fn spawn_workers<F, Fut, E>(
    clients: &[Client],
    queue: &str,
    stop: &CancellationToken,
    setup: impl Fn(Worker) -> Worker,
    handler: F,
) -> Vec<tokio::task::JoinHandle<Result<(), qd_client::Error>>>
where
    F: Fn(LeasedJob) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    clients
        .iter()
        .map(|client| {
            let worker = Worker::new(client.clone(), queue)
                .concurrency(64)
                .reserve_timeout(Duration::from_millis(500));
            tokio::spawn(setup(worker).run_simple(stop.clone(), handler.clone()))
        })
        .collect()
}

/// Waits for the workers of [`spawn_workers`] to stop.
async fn join_workers(
    runs: Vec<tokio::task::JoinHandle<Result<(), qd_client::Error>>>,
) -> anyhow::Result<()> {
    for run in runs {
        run.await.context("worker task panicked")??;
    }
    Ok(())
}

/// A histogram of latencies in microseconds, from 1 µs to a minute (3 significant digits).
///
/// Its range must be given: `Histogram::new` starts at 1..2 and grows only through
/// `record`, while `saturating_record` clamps instead, and hdrhistogram clamps a value
/// above the range to the range's *top*, 2 µs, not to its own bucket. Every pickup over
/// 2.047 ms was counted as 2 µs, so W3's percentiles came out as either under 2 ms or as
/// 0.002 ms (an idle-polling backend showed p50 0.002 ms and p99 2.0 ms).
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// W3: a producer adds at a fixed rate while a worker consumes; latency percentiles.
pub async fn w3_latency(
    clients: &[Client],
    queue: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<Figure>> {
    let total = rate * seconds;
    let base = Instant::now();
    let pickup = Arc::new(Mutex::new(latency_histogram()?));
    let add_rtt = Arc::new(Mutex::new(latency_histogram()?));
    let stop = CancellationToken::new();
    let h = pickup.clone();
    let acked = Arc::new(AtomicU64::new(0));
    let count = |w: Worker| w.on_completed(count_acks(&acked));
    let runs = spawn_workers(clients, queue, &stop, count, move |job: LeasedJob| {
        let h = h.clone();
        async move {
            let sent =
                u64::from_le_bytes(job.payload[..8].try_into().map_err(|_| "short payload")?);
            let now = base.elapsed().as_micros() as u64;
            h.lock().unwrap().saturating_record(now.saturating_sub(sent));
            Ok::<(), &'static str>(())
        }
    });

    let (done, _progress) = Progress::start("W3 latency", total);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut sent = 0;
    while sent < total || !in_flight.is_empty() {
        tokio::select! {
            _ = ticker.tick(), if sent < total => {
                sent += 1;
                let mut body = payload();
                let t0 = base.elapsed().as_micros() as u64;
                body[..8].copy_from_slice(&t0.to_le_bytes());
                let (client, rtt) = (pick(clients, sent).clone(), add_rtt.clone());
                in_flight.push(async move {
                    let r = client.add(queue, Job::new("bench", body)).await;
                    let t1 = base.elapsed().as_micros() as u64;
                    rtt.lock().unwrap().saturating_record(t1 - t0);
                    r
                });
            }
            Some(r) = in_flight.next() => {
                r.context("add failed")?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let waited = wait_completed(clients, queue, total, &acked, &AtomicU64::new(0)).await;
    stop.cancel();
    join_workers(runs).await?;
    waited?;
    let p = pickup.lock().unwrap();
    let a = add_rtt.lock().unwrap();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(vec![
        fig("add_p50_ms", ms(a.value_at_quantile(0.50))),
        fig("add_p99_ms", ms(a.value_at_quantile(0.99))),
        fig("pickup_p50_ms", ms(p.value_at_quantile(0.50))),
        fig("pickup_p99_ms", ms(p.value_at_quantile(0.99))),
        fig("pickup_p999_ms", ms(p.value_at_quantile(0.999))),
    ])
}

/// What W4 saw of one job: the attempts its handler ran, and how often it completed.
type Runs = (Vec<u32>, u32);

/// W4: `n` jobs that fail on attempts 1 and 2 and succeed on 3, fixed backoff 10 ms.
/// Checks that every job completed exactly once, on attempt 3.
pub async fn w4_retries(clients: &[Client], queue: &str, n: u64) -> anyhow::Result<Vec<Figure>> {
    let started = Instant::now();
    let body = Bytes::from(payload());
    let mut ids = Vec::with_capacity(n as usize);
    for chunk in 0..n.div_ceil(1000) {
        let size = (n - chunk * 1000).min(1000);
        let jobs = (0..size)
            .map(|_| {
                Job::new("bench", body.clone())
                    .attempts(3)
                    .backoff(Backoff::fixed(Duration::from_millis(10)))
            })
            .collect();
        ids.extend(pick(clients, chunk).add_bulk(queue, jobs).await?);
    }
    let seen: Arc<Mutex<HashMap<u64, Runs>>> = Arc::default();
    let (done, _progress) = Progress::start("W4 retries", n);
    let stop = CancellationToken::new();
    let acked = Arc::new(AtomicU64::new(0));
    let completions = |w: Worker| {
        let (log, count) = (seen.clone(), count_acks(&acked));
        w.on_completed(move |job| {
            log.lock().unwrap().entry(job.id).or_default().1 += 1;
            count(job);
        })
    };
    let log = seen.clone();
    let runs = spawn_workers(clients, queue, &stop, completions, move |job: LeasedJob| {
        log.lock().unwrap().entry(job.id).or_default().0.push(job.attempt);
        async move {
            if job.attempt < 3 {
                Err(format!("planned failure on try {}", job.attempt))
            } else {
                Ok(())
            }
        }
    });
    let waited = wait_completed(clients, queue, n, &acked, &done).await;
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    join_workers(runs).await?;
    waited?;
    let seen = seen.lock().unwrap();
    for id in &ids {
        match seen.get(id) {
            Some((attempts, 1)) if attempts == &[1, 2, 3] => {}
            Some((attempts, completions)) => {
                bail!("W4 check failed: job {id} ran as attempts {attempts:?} and completed {completions} times")
            }
            None => bail!("W4 check failed: job {id} never ran"),
        }
    }
    Ok(vec![fig("total_s", secs), fig("exactly_once_on_attempt_3", 1.0)])
}

/// W8's throughput windows.
pub const W8_WINDOW: Duration = Duration::from_secs(10);
/// Jobs W8's bulk adds carry each.
const W8_BATCH: u64 = 100;
/// Bulk adds W8 keeps in flight.
const W8_IN_FLIGHT: usize = 8;
/// Most jobs W8 lets wait (added, not yet completed) before its producer holds back: flat
/// out, the producer outruns the workers, and a queue growing for ten minutes would measure
/// the backlog, not the steady state.
pub const W8_BACKLOG: u64 = 20_000;

/// W8: sustained add-and-drain for `seconds`. A producer adds bulk requests of 100 jobs
/// (spread over the brokers, up to 8 in flight) at `rate` jobs/s, or flat out with at most
/// [`W8_BACKLOG`] jobs waiting when `rate` is `None`, while a worker per broker drains the
/// queue. Throughput is the acks confirmed to the workers per [`W8_WINDOW`]; each window is
/// printed as it closes, and the figures say whether it held: the mean, the slowest and
/// fastest window, and the trend ([`Trend`]).
pub async fn w8_sustained(
    clients: &[Client],
    queue: &str,
    seconds: u64,
    rate: Option<u64>,
) -> anyhow::Result<Vec<Figure>> {
    let completed = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let count = |w: Worker| w.on_completed(count_acks(&completed));
    let runs = spawn_workers(clients, queue, &stop, count, |_job| async { Ok::<(), String>(()) });
    let body = Bytes::from(payload());
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut windows: Vec<f64> = Vec::new();
    let mut next_window = started + W8_WINDOW;
    let mut window_start_count = 0;
    let mut added = 0u64;
    let mut batches = 0u64;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let produced: anyhow::Result<()> = loop {
        let now = Instant::now();
        if now >= next_window {
            let c = completed.load(Ordering::Relaxed);
            let per_s = (c - window_start_count) as f64 / W8_WINDOW.as_secs_f64();
            windows.push(per_s);
            eprintln!(
                "  W8 window {} ({}s): {per_s:.0} jobs/s, {} waiting",
                windows.len(),
                windows.len() as u64 * W8_WINDOW.as_secs(),
                added.saturating_sub(c)
            );
            window_start_count = c;
            next_window += W8_WINDOW;
        }
        if now >= end {
            break Ok(());
        }
        // May the next batch go? Room in flight, the backlog under its cap, and (at a
        // target rate) its time has come.
        let due = match rate {
            Some(r) => started + Duration::from_secs_f64((batches * W8_BATCH) as f64 / r as f64),
            None => now,
        };
        let room = in_flight.len() < W8_IN_FLIGHT
            && added.saturating_sub(completed.load(Ordering::Relaxed)) < W8_BACKLOG;
        if room && due <= now {
            let jobs: Vec<Job> = (0..W8_BATCH).map(|_| Job::new("bench", body.clone())).collect();
            let client = pick(clients, batches).clone();
            batches += 1;
            in_flight.push(async move { client.add_bulk(queue, jobs).await });
            continue;
        }
        let wait = if room { due.min(next_window) } else { now + Duration::from_millis(1) };
        tokio::select! {
            Some(r) = in_flight.next() => match r {
                Ok(ids) => added += ids.len() as u64,
                Err(e) => break Err(anyhow::Error::new(e).context("W8 add failed")),
            },
            _ = tokio::time::sleep_until(wait.min(next_window).min(end).into()) => {}
        }
    };
    stop.cancel();
    while let Some(r) = in_flight.next().await {
        if let Ok(ids) = r {
            added += ids.len() as u64;
        }
    }
    join_workers(runs).await?;
    produced?;
    ensure!(
        !windows.is_empty(),
        "W8 ran for less than one window ({W8_WINDOW:?}); give --seconds 10 or more"
    );
    ensure!(
        windows.iter().all(|&w| w > 0.0),
        "W8 stalled: a window of {W8_WINDOW:?} completed no job ({windows:?})"
    );
    let t = Trend::of(&windows);
    let total = completed.load(Ordering::Relaxed);
    Ok(vec![
        fig("sustained_jobs_per_s", t.mean),
        fig("window_min_jobs_per_s", t.min),
        fig("window_max_jobs_per_s", t.max),
        fig("last_third_over_first_third", t.last_over_first),
        fig("slope_pct_per_min", t.slope_pct_per_min),
        fig("windows", windows.len() as f64),
        fig("jobs_added", added as f64),
        fig("jobs_completed", total as f64),
    ])
}

/// Whether a run of throughput windows held flat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Mean of the last third of the windows over the mean of the first third (the first
    /// and the last window when there are fewer than three): 1.0 is flat, below is slowing.
    pub last_over_first: f64,
    /// The least-squares slope of the windows' rates against time, in percent of the mean
    /// per minute: 0 is flat, -1 loses a hundredth of the rate every minute.
    pub slope_pct_per_min: f64,
}

impl Trend {
    /// The trend of windows of [`W8_WINDOW`] each, in order; `windows` is not empty.
    pub fn of(windows: &[f64]) -> Trend {
        let n = windows.len();
        let mean = windows.iter().sum::<f64>() / n as f64;
        let min = windows.iter().copied().fold(f64::INFINITY, f64::min);
        let max = windows.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let third = (n / 3).max(1);
        let avg = |w: &[f64]| w.iter().sum::<f64>() / w.len() as f64;
        let first = avg(&windows[..third]);
        let last = avg(&windows[n - third..]);
        let last_over_first = if first > 0.0 { last / first } else { 0.0 };
        // Time of window i in minutes; slope in jobs/s per minute.
        let minutes = W8_WINDOW.as_secs_f64() / 60.0;
        let xs: Vec<f64> = (0..n).map(|i| i as f64 * minutes).collect();
        let mx = avg(&xs);
        let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let sxy: f64 = xs.iter().zip(windows).map(|(x, y)| (x - mx) * (y - mean)).sum();
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let slope_pct_per_min = if mean > 0.0 { slope / mean * 100.0 } else { 0.0 };
        Trend { mean, min, max, last_over_first, slope_pct_per_min }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// W3 once reported pickups of 5 ms as 0.002 ms (see [`latency_histogram`]).
    #[test]
    fn latencies_over_two_milliseconds_are_kept() {
        let mut h = latency_histogram().unwrap();
        for us in [500, 5_000, 12_000, 40_000] {
            h.saturating_record(us);
        }
        let near = |v: u64, want: u64| v.abs_diff(want) <= want / 100;
        assert!(near(h.value_at_quantile(0.5), 5_000), "p50 {}", h.value_at_quantile(0.5));
        assert!(near(h.value_at_quantile(1.0), 40_000), "max {}", h.value_at_quantile(1.0));
        assert_eq!(h.min(), 500);
    }

    /// A PostgreSQL drain once stalled at its end: the emptied queue left the stats, so
    /// the servers reported 0 completed although the workers had seen every ack.
    #[test]
    fn a_queue_gone_from_the_stats_still_counts_what_the_workers_saw_acked() {
        assert_eq!(completed(0, 100_000), 100_000);
        assert_eq!(completed(99_434, 99_000), 99_434, "the servers may be ahead");
    }

    #[test]
    fn pick_spreads_round_robin_over_the_brokers() {
        let brokers = ["a", "b", "c"];
        let picked: String = (0..7).map(|i| *pick(&brokers, i)).collect();
        assert_eq!(picked, "abcabca");
        assert_eq!(*pick(&brokers[..1], 5), "a", "one broker takes all");
    }

    #[test]
    fn a_flat_run_has_no_trend() {
        let t = Trend::of(&[100.0; 60]);
        assert_eq!((t.mean, t.min, t.max), (100.0, 100.0, 100.0));
        assert_eq!(t.last_over_first, 1.0);
        assert_eq!(t.slope_pct_per_min, 0.0);
    }

    #[test]
    fn a_run_that_slows_shows_it_both_ways() {
        // 60 windows of 10 s, losing 1 job/s per window: 6 per minute, of a mean of 70.5.
        let windows: Vec<f64> = (0..60).map(|i| 100.0 - f64::from(i)).collect();
        let t = Trend::of(&windows);
        assert_eq!((t.min, t.max), (41.0, 100.0));
        assert_eq!(t.last_over_first, 50.5 / 90.5);
        assert!((t.slope_pct_per_min - (-6.0 / 70.5 * 100.0)).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn short_runs_compare_first_and_last_window() {
        let t = Trend::of(&[10.0, 20.0]);
        assert_eq!(t.last_over_first, 2.0);
        assert!(t.slope_pct_per_min > 0.0);
        assert_eq!(Trend::of(&[5.0]).last_over_first, 1.0);
    }
}
