//! The small workloads of the benchmark (W1 ... W4, defined in the project's WORKLOADS notes;
//! W5 and W6 are in `mod.rs`, W7 in `scale.rs`), each driven through the real client crate. Each returns the figures it measured; the caller
//! prints them. Correctness is checked as we go: a workload whose check fails returns an
//! error and `qd bench` exits non-zero.

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

/// W1: one producer, `n` adds one by one, up to 256 in flight.
pub async fn w1_enqueue(client: &Client, queue: &str, n: u64) -> anyhow::Result<Vec<Figure>> {
    let body = Bytes::from(payload());
    let (done, _progress) = Progress::start("W1 enqueue", n);
    let started = Instant::now();
    let mut adds = futures::stream::iter(0..n)
        .map(|_| {
            let job = Job::new("bench", body.clone());
            async { client.add(queue, job).await }
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
    client: &Client,
    queue: &str,
    n: u64,
    len: usize,
    label: &str,
) -> anyhow::Result<f64> {
    bulk_fill_grouped(client, queue, n, len, label, None).await
}

/// [`bulk_fill`], with job `i` in group `g{i % groups}` when `groups` is given.
pub async fn bulk_fill_grouped(
    client: &Client,
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
            async move { client.add_bulk(queue, jobs).await.map(|ids| ids.len() as u64) }
        })
        .buffer_unordered(4);
    while let Some(r) = adds.next().await {
        done.fetch_add(r.context("bulk add failed")?, Ordering::Relaxed);
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// W1b: 100,000 jobs in bulk requests of 1,000.
pub async fn w1b_bulk(client: &Client, queue: &str, n: u64) -> anyhow::Result<Vec<Figure>> {
    let rate = bulk_fill(client, queue, n, PAYLOAD, "W1b bulk enqueue").await?;
    Ok(vec![fig("bulk_enqueue_jobs_per_s", rate)])
}

/// A drain that completes nothing for this long has failed (the W7 drains after a restart
/// of 5M jobs once stalled for good); a benchmark that hangs reports nothing.
const STALL: Duration = Duration::from_secs(60);

/// Waits until `queue` has completed `target` jobs in total, polling stats.
async fn wait_completed(
    client: &Client,
    queue: &str,
    target: u64,
    done: &AtomicU64,
) -> anyhow::Result<()> {
    let (mut last, mut moved) = (0, Instant::now());
    loop {
        let stats = client.stats().await?;
        let q = stats.iter().find(|q| q.queue == queue);
        let completed = q.map_or(0, |q| q.completed_total);
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

/// Drains `n` queued jobs with one worker of concurrency 64 and a no-op handler.
pub async fn drain(client: &Client, queue: &str, n: u64, label: &str) -> anyhow::Result<f64> {
    let (done, _progress) = Progress::start(label, n);
    let stop = CancellationToken::new();
    let worker = Worker::new(client.clone(), queue)
        .concurrency(64)
        .reserve_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let run = tokio::spawn(worker.run_simple(stop.clone(), |_job| async { Ok::<(), String>(()) }));
    let waited = wait_completed(client, queue, n, &done).await;
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    run.await.context("worker task panicked")??;
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
    client: &Client,
    queue: &str,
    n: u64,
    flow: &W2Flow,
) -> anyhow::Result<Vec<Figure>> {
    bulk_fill_grouped(client, queue, n, PAYLOAD, "W2 fill", flow.groups).await?;
    let rate = drain(client, queue, n, "W2 drain").await?;
    let mut figures = vec![fig("drain_jobs_per_s", rate)];
    if let Some(max) = flow.rate {
        figures.push(fig("rate_limit_per_s", f64::from(max)));
    }
    if let Some(groups) = flow.groups {
        figures.push(fig("groups", groups as f64));
    }
    Ok(figures)
}

/// W3: a producer adds at a fixed rate while a worker consumes; latency percentiles.
pub async fn w3_latency(
    client: &Client,
    queue: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<Figure>> {
    let total = rate * seconds;
    let base = Instant::now();
    let pickup = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let add_rtt = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let stop = CancellationToken::new();
    let worker = Worker::new(client.clone(), queue)
        .concurrency(64)
        .reserve_timeout(Duration::from_millis(500));
    let h = pickup.clone();
    let run = tokio::spawn(worker.run_simple(stop.clone(), move |job: LeasedJob| {
        let h = h.clone();
        async move {
            let sent =
                u64::from_le_bytes(job.payload[..8].try_into().map_err(|_| "short payload")?);
            let now = base.elapsed().as_micros() as u64;
            h.lock().unwrap().saturating_record(now.saturating_sub(sent));
            Ok::<(), &'static str>(())
        }
    }));

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
                let (client, rtt) = (client.clone(), add_rtt.clone());
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
    let waited = wait_completed(client, queue, total, &AtomicU64::new(0)).await;
    stop.cancel();
    run.await.context("worker task panicked")??;
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
pub async fn w4_retries(client: &Client, queue: &str, n: u64) -> anyhow::Result<Vec<Figure>> {
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
        ids.extend(client.add_bulk(queue, jobs).await?);
    }
    let seen: Arc<Mutex<HashMap<u64, Runs>>> = Arc::default();
    let (done, _progress) = Progress::start("W4 retries", n);
    let stop = CancellationToken::new();
    let log = seen.clone();
    let worker = Worker::new(client.clone(), queue)
        .concurrency(64)
        .reserve_timeout(Duration::from_millis(500))
        .on_completed(move |job| {
            log.lock().unwrap().entry(job.id).or_default().1 += 1;
        });
    let log = seen.clone();
    let run = tokio::spawn(worker.run_simple(stop.clone(), move |job: LeasedJob| {
        log.lock().unwrap().entry(job.id).or_default().0.push(job.attempt);
        async move {
            if job.attempt < 3 {
                Err(format!("planned failure on try {}", job.attempt))
            } else {
                Ok(())
            }
        }
    }));
    let waited = wait_completed(client, queue, n, &done).await;
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    run.await.context("worker task panicked")??;
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
