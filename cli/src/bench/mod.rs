//! `qd bench`: runs the benchmark workloads through the real client against a running
//! server (`--addr`) or a throwaway one it starts itself (`--spawn`), prints one
//! machine-readable line per figure (`W2 drain_jobs_per_s=41234`) and a summary table, and
//! exits non-zero when a workload's correctness check fails. Every workload also reports what
//! it cost: the client's CPU seconds (this process) and, with `--spawn`, the server's, each
//! also per job in microseconds, over the whole workload (fills included).
//!
//! Benchmarks are not tests: nothing here is run by `cargo test`. See docs/PERFORMANCE.md.

mod scale;
mod workloads;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use qd_client::Client;

use crate::child::{cpu_seconds_of, QdProcess};
use crate::cli::DurabilityArg;
use workloads::{fig, Figure};

/// Every workload, in the order `all` runs them.
pub const ALL: [&str; 9] = ["W1", "W1b", "W2", "W3", "W4", "W5", "W6", "W7", "W8"];

/// Options of `qd bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Address of a running qd. Without it, use --spawn.
    #[arg(long, env = "QD_ADDR", conflicts_with = "spawn")]
    pub addr: Option<String>,
    /// Start a throwaway server (this binary) on a temporary data dir for each workload.
    #[arg(long)]
    pub spawn: bool,
    /// Durability of the spawned server (default: the server's).
    #[arg(long, value_enum, default_value_t = qd_server::config::ServerConfig::default().durability.into())]
    pub durability: DurabilityArg,
    /// Store of the spawned server (`qd serve --store`): e.g. a postgres:// URL
    /// (docs/BACKENDS.md). Default: the embedded store in a temporary data dir.
    #[arg(long, requires = "spawn")]
    pub store: Option<String>,
    /// Brokers to spawn on the one --store database (postgres only). Each workload spreads
    /// its producers' requests round robin over them and runs a worker on each, all on one
    /// queue (docs/PERFORMANCE.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub brokers: u32,
    /// Workloads to run, comma-separated (W1,W1b,W2,W3,W4,W5,W6,W7,W8) or `all`.
    #[arg(long, default_value = "W1,W1b,W2,W3,W4")]
    pub workloads: String,
    /// Jobs in W1, W1b and W2.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
    /// Jobs in W4.
    #[arg(long, default_value_t = 10_000)]
    pub retry_jobs: u64,
    /// Jobs in W5 and W6.
    #[arg(long, default_value_t = 1_000_000)]
    pub big_jobs: u64,
    /// W3's add rate, jobs/s.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// W2 under flow control: a rate limit of N job starts per second on its queue, set
    /// before the fill (docs/FLOW.md). Pick it well above the drain rate to measure what
    /// the limiter costs, below to see it hold.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(qd_protocol::flow::MAX_RATE)))]
    pub rate_limit: Option<u32>,
    /// W2 with groups: its jobs spread round robin over N group keys (`g0` ... `gN-1`), so
    /// every reserve takes turns across them.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub groups: Option<u64>,
    /// W3's and W8's duration, seconds.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// W8's add rate, jobs/s. Default: flat out, with at most 20,000 jobs waiting.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub sustain_rate: Option<u64>,
    /// Jobs in W7, comma-separated: W7 runs once per count, each on a fresh server
    /// (`100000,1000000,5000000,10000000` gives the scaling points).
    #[arg(long, value_delimiter = ',', default_value = "10000000")]
    pub scale_jobs: Vec<u64>,
    /// Write W7's points as an SVG plot to this file, and as a markdown table beside it
    /// (same name, `.md`).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

/// What one workload produced.
#[derive(Debug)]
struct Outcome {
    workload: &'static str,
    figures: Vec<Figure>,
}

/// How many jobs a workload handles, the divisor of its CPU per job.
fn jobs_of(workload: &str, args: &BenchArgs, scale_jobs: u64) -> u64 {
    match workload {
        "W1" | "W1b" | "W2" => args.jobs,
        "W3" => args.rate * args.seconds,
        "W4" => args.retry_jobs,
        "W5" | "W6" => args.big_jobs,
        // W8's count is what it completed, read from its figures.
        "W8" => 0,
        _ => scale_jobs,
    }
}

/// Checks `--brokers` against the rest: several brokers share one database, so they need
/// `--spawn` with a postgres `--store`; W6 and W7 kill their one server.
fn check_brokers(args: &BenchArgs, chosen: &[&str]) -> anyhow::Result<()> {
    if args.brokers == 1 {
        return Ok(());
    }
    let shared = args
        .store
        .as_deref()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"));
    ensure!(
        args.spawn && shared,
        "--brokers {} needs --spawn and --store postgres://...: brokers share jobs only \
         through a PostgreSQL database (the embedded store serves one process)",
        args.brokers
    );
    for w in ["W6", "W7"] {
        ensure!(
            !chosen.contains(&w),
            "{w} kills its one server with SIGKILL; run it without --brokers"
        );
    }
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let chosen: Vec<&'static str> = if args.workloads.eq_ignore_ascii_case("all") {
        ALL.to_vec()
    } else {
        let mut v = Vec::new();
        for w in args.workloads.split(',').map(str::trim) {
            match ALL.iter().find(|a| a.eq_ignore_ascii_case(w)) {
                Some(a) => v.push(*a),
                None => bail!("unknown workload {w:?}; choose from {} or all", ALL.join(",")),
            }
        }
        v
    };
    if args.addr.is_none() && !args.spawn {
        bail!(
            "say where to run: --addr HOST:PORT for a running qd, or --spawn for a throwaway one"
        );
    }
    for w in ["W6", "W7"] {
        if !args.spawn && chosen.contains(&w) {
            bail!("{w} kills the server with SIGKILL; it needs --spawn");
        }
    }
    check_brokers(&args, &chosen)?;
    ensure!(
        !chosen.contains(&"W8") || args.seconds >= workloads::W8_WINDOW.as_secs(),
        "W8 reports throughput per {}-second window; give --seconds {} or more",
        workloads::W8_WINDOW.as_secs(),
        workloads::W8_WINDOW.as_secs()
    );
    ensure!(!args.scale_jobs.contains(&0), "--scale-jobs takes job counts above 0");
    // W7 runs once per job count; everything else once.
    let runs: Vec<(&'static str, u64)> = chosen
        .iter()
        .flat_map(|&w| {
            let counts = if w == "W7" { args.scale_jobs.clone() } else { vec![0] };
            counts.into_iter().map(move |n| (w, n))
        })
        .collect();
    let tmp = tempfile::tempdir().context("cannot create a temporary data dir")?;
    let exe = std::env::current_exe().context("cannot find the qd binary to spawn")?;
    let mut server_args = vec!["--durability".to_string(), args.durability.name().to_string()];
    if let Some(store) = &args.store {
        server_args.extend(["--store".to_string(), store.clone()]);
    }
    let mut outcomes = Vec::new();
    let mut points = Vec::new();
    let mut failed = None;
    for (i, &(w, scale_jobs)) in runs.iter().enumerate() {
        eprintln!("== {w}");
        let queue = format!("bench-{}-{}", w.to_lowercase(), std::process::id());
        // One server, or `--brokers` of them on one database; a client for each.
        let mut spawned = Vec::new();
        if args.spawn {
            for b in 0..args.brokers {
                let data = tmp.path().join(format!("data-{i}-{b}"));
                spawned.push(QdProcess::start(&exe, &data, "127.0.0.1:0", &server_args)?);
            }
        }
        let addrs: Vec<String> = if spawned.is_empty() {
            args.addr.clone().into_iter().collect()
        } else {
            spawned.iter().map(|s| s.addr.clone()).collect()
        };
        let mut clients = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            let client = Client::connect(addr)
                .await
                .with_context(|| format!("cannot reach qd at {addr}"))?;
            clients.push(client);
        }
        let (addr, client) = (&addrs[0], &clients[0]);
        let cpu0: Option<f64> = spawned.iter().map(QdProcess::cpu_seconds).sum();
        let client_cpu0 = cpu_seconds_of("self");
        let result = match w {
            "W1" => workloads::w1_enqueue(&clients, &queue, args.jobs).await,
            "W1b" => workloads::w1b_bulk(&clients, &queue, args.jobs).await,
            "W2" => {
                let flow = workloads::W2Flow { rate: args.rate_limit, groups: args.groups };
                match set_w2_limits(addr, &queue, &flow).await {
                    Ok(()) => workloads::w2_drain(&clients, &queue, args.jobs, &flow).await,
                    Err(e) => Err(e),
                }
            }
            "W3" => workloads::w3_latency(&clients, &queue, args.rate, args.seconds).await,
            "W4" => workloads::w4_retries(&clients, &queue, args.retry_jobs).await,
            "W5" => w5_big_queue(&clients, &queue, args.big_jobs, spawned.first()).await,
            "W6" => {
                let victim = spawned.pop().expect("W6 runs only with --spawn");
                w6_restart(client.clone(), &queue, args.big_jobs, victim).await
            }
            "W8" => {
                workloads::w8_sustained(&clients, &queue, args.seconds, args.sustain_rate).await
            }
            "W7" => {
                let victim = spawned.pop().expect("W7 runs only with --spawn");
                let point = scale::w7_scale(client.clone(), &queue, scale_jobs, victim).await;
                point.and_then(|p| {
                    let figures = p.figures();
                    let verdict = p.verdict();
                    points.push(p);
                    if verdict.is_err() {
                        // What was measured still goes out before the failure.
                        for f in &figures {
                            println!("{w} {}={}", f.name, format_value(f.value));
                        }
                    }
                    verdict.map(|()| figures)
                })
            }
            _ => unreachable!("validated above"),
        };
        let mut figures = match result {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{w} FAILED: {e:#}");
                failed.get_or_insert(format!("{w}: {e:#}"));
                continue;
            }
        };
        // W6 and W7 kill the spawned server and count both processes' CPU themselves.
        // With several brokers: their CPU summed, the largest peak RSS.
        if !spawned.is_empty() {
            let cpu1: Option<f64> = spawned.iter().map(QdProcess::cpu_seconds).sum();
            if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
                figures.push(fig("server_cpu_s", c1 - c0));
            }
            let rss = spawned.iter().filter_map(QdProcess::peak_rss_mib).reduce(f64::max);
            if let Some(rss) = rss {
                figures.push(fig("server_peak_rss_mib", rss));
            }
        }
        if args.brokers > 1 {
            figures.push(fig("brokers", f64::from(args.brokers)));
        }
        let jobs = match jobs_of(w, &args, scale_jobs) {
            0 => figures.iter().find(|f| f.name == "jobs_completed").map_or(1.0, |f| f.value),
            n => n as f64,
        };
        if let (Some(c0), Some(c1)) = (client_cpu0, cpu_seconds_of("self")) {
            figures.push(fig("client_cpu_s", c1 - c0));
            figures.push(fig("client_cpu_us_per_job", (c1 - c0) * 1e6 / jobs));
        }
        if let Some(server) = figures.iter().find(|f| f.name == "server_cpu_s") {
            figures.push(fig("server_cpu_us_per_job", server.value * 1e6 / jobs));
        }
        for f in &figures {
            println!("{w} {}={}", f.name, format_value(f.value));
        }
        outcomes.push(Outcome { workload: w, figures });
    }
    summary(&outcomes, &args);
    if points.len() > 1 || (!points.is_empty() && args.plot.is_some()) {
        let table = scale::table(&points);
        eprintln!(
            "\nW7 scaling ({} points, jobs of {} bytes):\n{table}",
            points.len(),
            scale::PAYLOAD
        );
        if let Some(path) = &args.plot {
            let title = format!(
                "qd W7: jobs of {} bytes queued in bulk, kill -9, restart, drain (durability {})",
                scale::PAYLOAD,
                args.durability.name()
            );
            scale::plot(&points, &title, path)?;
            let md = path.with_extension("md");
            std::fs::write(&md, &table)
                .with_context(|| format!("cannot write the table to {}", md.display()))?;
            eprintln!("wrote {} and {}", path.display(), md.display());
        }
    }
    if let Some(f) = failed {
        bail!("a workload failed its check: {f}");
    }
    Ok(())
}

/// `--rate`: the rate limit on W2's queue, set through an admin connection (the secret, if
/// the server has one, comes from the environment as for `qd limits`).
async fn set_w2_limits(addr: &str, queue: &str, flow: &workloads::W2Flow) -> anyhow::Result<()> {
    let Some(max) = flow.rate else { return Ok(()) };
    let admin = crate::cli::client_builder(addr, qd_protocol::Role::Admin)?
        .connect()
        .await
        .context("--rate needs an admin connection to set the queue's limit")?;
    let limits = qd_client::QueueLimits {
        rate: Some(qd_client::Rate::new(max, 1000)),
        ..Default::default()
    };
    admin.set_queue_limits(queue, limits).await.context("cannot set W2's rate limit")?;
    Ok(())
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn summary(outcomes: &[Outcome], args: &BenchArgs) {
    eprintln!();
    eprintln!(
        "qd bench summary ({}; durability {})",
        if args.spawn { "spawned server" } else { "server at --addr" },
        args.durability.name()
    );
    for o in outcomes {
        let line: Vec<String> =
            o.figures.iter().map(|f| format!("{} {}", f.name, format_value(f.value))).collect();
        eprintln!("  {:<4} {}", o.workload, line.join(", "));
    }
}

/// W5: a million queued jobs: enqueue and drain rates, peak RSS, data-dir size.
async fn w5_big_queue(
    clients: &[Client],
    queue: &str,
    n: u64,
    spawned: Option<&QdProcess>,
) -> anyhow::Result<Vec<Figure>> {
    let enqueue = workloads::bulk_fill(clients, queue, n, workloads::PAYLOAD, "W5 enqueue").await?;
    let mut figures = vec![fig("enqueue_jobs_per_s", enqueue)];
    if let Some(s) = spawned {
        if let Some(rss) = s.peak_rss_mib() {
            figures.push(fig("queued_peak_rss_mib", rss));
        }
        let bytes = dir_size(&s.data);
        figures.push(fig("data_dir_mib", bytes as f64 / (1 << 20) as f64));
        figures.push(fig(
            "data_dir_per_payload_byte",
            bytes as f64 / (n * workloads::PAYLOAD as u64) as f64,
        ));
    }
    let drain = workloads::drain(clients, queue, n, "W5 drain").await?;
    figures.push(fig("drain_jobs_per_s", drain));
    Ok(figures)
}

/// W6: a million queued jobs, SIGKILL, restart: time to the first successful reserve and
/// the number of jobs lost.
async fn w6_restart(
    client: Client,
    queue: &str,
    n: u64,
    mut victim: QdProcess,
) -> anyhow::Result<Vec<Figure>> {
    workloads::bulk_fill(std::slice::from_ref(&client), queue, n, workloads::PAYLOAD, "W6 fill")
        .await?;
    drop(client);
    let first_cpu = victim.cpu_seconds().unwrap_or(0.0);
    victim.kill9();
    eprintln!("  W6: killed the server with SIGKILL; restarting");
    let killed = Instant::now();
    let restarted = victim.restart()?;
    let client = Client::connect(&restarted.addr).await?;
    let first = loop {
        let jobs = client.reserve(&[queue], 1, Duration::from_secs(5)).await?;
        if !jobs.is_empty() {
            break killed.elapsed().as_secs_f64();
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(600),
            "no job could be reserved within 10 minutes"
        );
    };
    let (present, _) = queue_counts(&client, queue).await?;
    let lost = n.saturating_sub(present);
    let mut figures = vec![fig("first_reserve_s", first), fig("lost", lost as f64)];
    if let Some(rss) = restarted.peak_rss_mib() {
        figures.push(fig("restarted_peak_rss_mib", rss));
    }
    // Both processes from their start: the fill, and the recovery up to the first reserve.
    figures.push(fig("server_cpu_s", first_cpu + restarted.cpu_seconds().unwrap_or(0.0)));
    ensure!(lost == 0, "{lost} of {n} acknowledged jobs lost after kill -9");
    Ok(figures)
}

/// A queue's jobs still present (ready + delayed + active) and its `completed_total`.
async fn queue_counts(client: &Client, queue: &str) -> anyhow::Result<(u64, u64)> {
    let stats = client.stats().await?;
    let q = stats.iter().find(|q| q.queue == queue).context("queue missing after restart")?;
    Ok((q.ready + q.delayed + q.active, q.completed_total))
}

/// Total size of the files under `dir`, in bytes.
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Bench {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(argv: &[&str]) -> Result<BenchArgs, clap::Error> {
        Bench::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).map(|b| b.args)
    }

    const PG: &str = "postgres://qd@127.0.0.1:5432/qd";

    #[test]
    fn one_broker_by_default_and_several_on_postgres() {
        let args = parse(&["--spawn"]).unwrap();
        assert_eq!(args.brokers, 1);
        check_brokers(&args, &["W1", "W6"]).unwrap();
        let args = parse(&["--spawn", "--store", PG, "--brokers", "2"]).unwrap();
        assert_eq!(args.brokers, 2);
        check_brokers(&args, &["W1", "W1b", "W2", "W3", "W4", "W5", "W8"]).unwrap();
        let args = parse(&["--spawn", "--store", "postgresql://h/db", "--brokers", "3"]).unwrap();
        check_brokers(&args, &["W2"]).unwrap();
        assert!(parse(&["--spawn", "--brokers", "0"]).is_err(), "at least one broker");
    }

    #[test]
    fn several_brokers_need_a_shared_database_and_a_server_that_survives() {
        let embedded = parse(&["--spawn", "--brokers", "2"]).unwrap();
        let e = check_brokers(&embedded, &["W2"]).unwrap_err().to_string();
        assert!(e.contains("--store postgres://"), "{e}");
        let running = parse(&["--addr", "127.0.0.1:7700", "--brokers", "2"]).unwrap();
        assert!(check_brokers(&running, &["W2"]).is_err(), "--addr is one server");
        let pg = parse(&["--spawn", "--store", PG, "--brokers", "2"]).unwrap();
        for w in ["W6", "W7"] {
            let e = check_brokers(&pg, &["W2", w]).unwrap_err().to_string();
            assert!(e.contains(w) && e.contains("without --brokers"), "{e}");
        }
    }

    #[test]
    fn w8_is_a_workload_with_its_own_rate() {
        assert!(ALL.contains(&"W8"));
        let args = parse(&["--spawn", "--workloads", "W8", "--seconds", "600"]).unwrap();
        assert_eq!((args.seconds, args.sustain_rate), (600, None));
        let args = parse(&["--spawn", "--sustain-rate", "20000"]).unwrap();
        assert_eq!(args.sustain_rate, Some(20_000));
        assert!(parse(&["--spawn", "--sustain-rate", "0"]).is_err());
        assert_eq!(jobs_of("W8", &args, 0), 0, "W8's count comes from its figures");
    }
}
