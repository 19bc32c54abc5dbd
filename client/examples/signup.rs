//! The classic signup flow, in one file.
//!
//! An HTTP-ish "signup handler" adds a `welcome` job (3 attempts, exponential backoff) and
//! answers at once; a worker with concurrency 5 sends the (simulated) email. Some sends fail
//! at random: they are retried after a backoff, and a job that fails three times lands in
//! the queue's dead set, where an operator can look at it. A mailbox that does not exist is
//! a permanent failure: dead-lettered at once, without the retries.
//!
//! The mail provider allows 50 sends a second, so the `emails` queue is rate-limited on the
//! server (for every worker at once), and a nightly digest is a cron schedule the server
//! fires at 03:00 UTC, whether or not a worker is up.
//!
//! Run a server (`cargo run --release -p qd -- serve`) and then:
//! `cargo run -p qd-client --example signup`

use std::time::Duration;

use anyhow::anyhow;
use qd_client::{
    Backoff, Client, Job, JobContext, JobError, LeasedJobExt, NewJob, Outcome, QueueLimits, Rate,
    Schedule, ScheduleSpec, Worker,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize, Deserialize)]
struct Welcome {
    user_id: u64,
    email: String,
}

/// What a web handler does: enqueue and return. No email is sent inside the request.
async fn signup_handler(client: &Client, user_id: u64) -> Result<String, qd_client::Error> {
    let email = format!("user{user_id}@example.com");
    let job = Job::json("welcome", &Welcome { user_id, email: email.clone() })?
        .attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(200)));
    let id = client.add("emails", job).await?;
    Ok(format!("201 Created: welcome mail for {email} queued as job {id}"))
}

/// What the worker does with each job: pretend to talk to an SMTP server that sometimes
/// times out.
async fn send_welcome(ctx: JobContext) -> Result<Outcome, JobError> {
    // A payload that does not parse never will: no point retrying it.
    let welcome: Welcome = ctx.json().map_err(JobError::permanent)?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    if welcome.user_id % 4 == 0 && ctx.attempt < 3 {
        // `?` (or `.into()`) on an ordinary error: retried after the backoff.
        let e = anyhow!("smtp timeout sending to {} (try {})", welcome.email, ctx.attempt);
        return Err(e.into());
    }
    if welcome.user_id % 10 == 7 {
        return Err(JobError::permanent(anyhow!("mailbox {} does not exist", welcome.email)));
    }
    println!("sent welcome mail to {} on try {}", welcome.email, ctx.attempt);
    Ok(Outcome::Done)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("QD_ADDR").unwrap_or_else(|_| "127.0.0.1:7700".into());
    let client = Client::connect(&addr).await?;

    // Set-up an app does at each start (both are idempotent; they need an admin connection
    // on a server with secrets). At most 50 welcome mails start per second, across workers.
    let limits = QueueLimits { rate: Some(Rate::new(50, 1_000)), ..QueueLimits::default() };
    client.set_queue_limits("emails", limits).await?;
    // A digest job every night at 03:00 UTC; a night missed while qd was down runs once.
    let digest: NewJob = Job::new("digest", "{}").attempts(5).into();
    let spec = ScheduleSpec::Cron { expr: "0 0 3 * * *".into(), tz: "UTC".into() };
    let nightly =
        Schedule { name: "nightly-digest".into(), spec, queue: "digests".into(), job: digest };
    let info = client.upsert_schedule(nightly).await?;
    println!("nightly digest scheduled; next at unix ms {:?}", info.next_fire_ms);

    for user_id in 1..=20 {
        println!("{}", signup_handler(&client, user_id).await?);
    }

    let shutdown = CancellationToken::new();
    let worker =
        Worker::new(client.clone(), "emails").concurrency(5).on_failed(|job, error, will_retry| {
            println!("job {} failed on try {}: {error} (retry: {will_retry})", job.id, job.attempt);
        });
    let stop = shutdown.clone();
    let watcher = client.clone();
    tokio::spawn(async move {
        // Stop once nothing is left to do: every job completed or dead.
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let stats = watcher.stats().await.unwrap_or_default();
            if let Some(q) = stats.iter().find(|q| q.queue == "emails") {
                if q.ready + q.delayed + q.active == 0 {
                    println!("done: {} completed, {} dead", q.completed, q.dead);
                    stop.cancel();
                    return;
                }
            }
        }
    });
    worker.run(shutdown, send_welcome).await?;
    Ok(())
}
