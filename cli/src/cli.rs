//! The `qd` command line: flags and `QD_*` environment variables in, a validated
//! [`ServerConfig`] or a client action out, and the process's logging. Everything here is
//! glue; the work happens in the libraries it calls. Defaults are not written here: each flag
//! takes its default from [`ServerConfig::default`], their one home. CLI-only types (like
//! [`DurabilityArg`]) are mapped to the server's types here, at the edge, so the server
//! library never depends on clap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use qd_protocol::Backoff;
use qd_server::config::{self, Secrets, ServerConfig, TlsFiles};
use qd_server::store::Durability;

const MIB: u64 = 1024 * 1024;

/// The server's defaults, which every flag of `qd serve` shows and starts from.
fn defaults() -> ServerConfig {
    ServerConfig::default()
}

/// Where `qd add`, `qd stats` and `qd bench --addr` look for a server by default: where
/// `qd serve` listens by default.
fn default_addr() -> String {
    config::DEFAULT_LISTEN.to_string()
}

/// The values of `--durability`; see [`Durability`], which each maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Reply after the data is on disk: nothing acknowledged is lost, even on power loss.
    Fsync,
    /// Reply once written; fsync every --flush-interval. A machine crash can lose the last
    /// interval.
    Interval,
    /// Never flush explicitly. For throwaway data.
    None,
}

impl DurabilityArg {
    /// The flag value, as `qd serve --durability` takes it.
    pub fn name(self) -> &'static str {
        match self {
            DurabilityArg::Fsync => "fsync",
            DurabilityArg::Interval => "interval",
            DurabilityArg::None => "none",
        }
    }
}

impl From<DurabilityArg> for Durability {
    fn from(arg: DurabilityArg) -> Durability {
        match arg {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Interval => Durability::Interval,
            DurabilityArg::None => Durability::None,
        }
    }
}

impl From<Durability> for DurabilityArg {
    fn from(d: Durability) -> DurabilityArg {
        match d {
            Durability::Fsync => DurabilityArg::Fsync,
            Durability::Interval => DurabilityArg::Interval,
            Durability::None => DurabilityArg::None,
        }
    }
}

#[derive(Debug, Parser)]
#[command(name = "qd", version, about = "qd: a durable job-queue server", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, env = "QD_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
    /// A TOML file of settings (flag names as keys); flags and QD_* variables override it.
    /// See docs/OPERATIONS.md.
    #[arg(long, global = true, env = "QD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(Box<ServeArgs>),
    /// Add one job and print its id.
    Add(AddArgs),
    /// Print job counts per queue.
    Stats(StatsArgs),
    /// Run the benchmark workloads (see docs/PERFORMANCE.md).
    Bench(crate::bench::BenchArgs),
    /// The operator's commands (docs/OPERATIONS.md).
    #[command(flatten)]
    Admin(crate::admin::AdminCommand),
    /// Check that a server answers (exit 0) or not (exit 1).
    Health(crate::health::HealthArgs),
    /// Named cron and interval schedules that add jobs (docs/SCHEDULES.md).
    #[command(subcommand)]
    Schedule(crate::schedule::ScheduleCommand),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Runtime threads serving connections (default: one per core). The broker itself is
    /// one task either way; at light load one thread costs about a quarter less CPU
    /// (docs/PERFORMANCE.md), under heavy load more threads encode and decode in parallel.
    #[arg(long, env = "QD_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Address of the job protocol.
    #[arg(long, env = "QD_LISTEN", default_value_t = defaults().listen)]
    listen: SocketAddr,
    /// Data directory (created if missing).
    #[arg(long, env = "QD_DATA", default_value = config::DEFAULT_DATA)]
    data: PathBuf,
    /// Where jobs live: `embedded` (the store in --data), or a postgres://user:pass@host/db
    /// URL that any number of brokers share (docs/BACKENDS.md).
    #[arg(long, env = "QD_STORE", default_value = "embedded", hide_env_values = true)]
    store: String,
    /// fsync: reply after the data is on disk. interval: reply after apply, flush every
    /// --flush-interval. none: leave flushing to the OS.
    #[arg(long, env = "QD_DURABILITY", value_enum, default_value_t = defaults().durability.into())]
    durability: DurabilityArg,
    /// Flush period of `--durability interval`.
    #[arg(long, env = "QD_FLUSH_INTERVAL", default_value_t = defaults().flush_interval.into())]
    flush_interval: humantime::Duration,
    /// Store page cache (sled's), in MiB.
    #[arg(long, env = "QD_CACHE_MB", default_value_t = defaults().cache_capacity / MIB)]
    cache_mb: u64,
    /// Journaled changes kept in memory before a checkpoint writes them to sled, in MiB.
    /// More makes bursts faster and costs memory (up to about twice this: the store makes
    /// writers wait beyond that; see docs/STORAGE.md).
    #[arg(long, env = "QD_CHECKPOINT_MB", default_value_t = defaults().checkpoint_bytes / MIB)]
    checkpoint_mb: u64,
    /// Most simultaneous connections.
    #[arg(long, env = "QD_MAX_CONNECTIONS", default_value_t = defaults().max_connections)]
    max_connections: usize,
    /// Most unanswered requests per connection.
    #[arg(long, env = "QD_MAX_IN_FLIGHT", default_value_t = defaults().max_in_flight)]
    max_in_flight: usize,
    /// Largest frame accepted, in bytes.
    #[arg(long, env = "QD_MAX_FRAME", default_value_t = defaults().max_frame)]
    max_frame: usize,
    /// Time a new connection has to say Hello.
    #[arg(long, env = "QD_HANDSHAKE_TIMEOUT", default_value_t = defaults().handshake_timeout.into())]
    handshake_timeout: humantime::Duration,
    /// Completed jobs kept per queue for display.
    #[arg(long, env = "QD_COMPLETED_RETENTION", default_value_t = defaults().completed_retention)]
    completed_retention: usize,
    /// Dead jobs kept per queue; beyond this the oldest dead job is dropped.
    #[arg(long, env = "QD_DEAD_MAX_JOBS", default_value_t = defaults().dead_max_jobs)]
    dead_max_jobs: usize,
    /// Dead jobs are dropped this long after they died, e.g. `30days`.
    #[arg(long, env = "QD_DEAD_MAX_AGE", default_value_t = defaults().dead_max_age.into())]
    dead_max_age: humantime::Duration,
    /// Shared secret clients must prove (grants Worker, and Admin when no admin secret).
    #[arg(long, env = "QD_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// File holding the secret (trimmed), e.g. a container secret; --secret wins over it.
    #[arg(long, env = "QD_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Secret that grants the Admin role (admin requests).
    #[arg(
        long,
        env = "QD_ADMIN_SECRET",
        hide_env_values = true,
        conflicts_with = "admin_secret_file"
    )]
    admin_secret: Option<String>,
    /// File holding the admin secret (trimmed).
    #[arg(long, env = "QD_ADMIN_SECRET_FILE")]
    admin_secret_file: Option<PathBuf>,
    /// Allow listening beyond loopback without a secret.
    #[arg(long, env = "QD_INSECURE")]
    insecure: bool,
    /// PEM certificate chain: serve the job protocol over TLS (with --tls-key).
    #[arg(long, env = "QD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "QD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Bytes of replies queued for one connection before the server stops reading it.
    #[arg(long, env = "QD_MAX_CONN_BUFFER", default_value_t = defaults().max_conn_buffer)]
    max_conn_buffer: usize,
    /// A connection that stays over --max-conn-buffer this long is closed.
    #[arg(long, env = "QD_STUCK_TIMEOUT", default_value_t = defaults().stuck_timeout.into())]
    stuck_timeout: humantime::Duration,
    /// A connection that sends nothing, with nothing in flight, this long is closed.
    #[arg(long, env = "QD_IDLE_TIMEOUT", default_value_t = defaults().idle_timeout.into())]
    idle_timeout: humantime::Duration,
    /// A Faktory connection that sends nothing this long is closed (its clients never ping).
    #[arg(long, env = "QD_FAKTORY_IDLE_TIMEOUT", default_value_t = defaults().faktory_idle_timeout.into())]
    faktory_idle_timeout: humantime::Duration,
    /// Most queues named in one reserve.
    #[arg(long, env = "QD_MAX_RESERVE_QUEUES", default_value_t = defaults().decode_limits.max_queues)]
    max_reserve_queues: usize,
    /// Most jobs in one add, and leases or ids in one ack or admin request.
    #[arg(long, env = "QD_MAX_BATCH", default_value_t = defaults().decode_limits.max_jobs)]
    max_batch: usize,
    /// Most jobs one reserve leases (larger requests are clamped).
    #[arg(long, env = "QD_MAX_RESERVE", default_value_t = defaults().max_reserve)]
    max_reserve: u32,
    /// Address of the dashboard, /metrics, /healthz and /readyz (off when not given).
    #[arg(long, env = "QD_HTTP")]
    http: Option<SocketAddr>,
    /// Also speak Faktory's work protocol on this address, so Faktory clients in any
    /// language can push and work jobs (off when not given; conventionally port 7419).
    #[arg(long, env = "QD_FAKTORY")]
    faktory: Option<SocketAddr>,
}

/// A secret from a flag/variable or from a file (trimmed: files end with a newline).
fn read_secret(
    value: Option<String>,
    file: Option<PathBuf>,
    flag: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    let secret = match (value, file) {
        (Some(v), _) => v.into_bytes(),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {flag} {}", path.display()))?
            .trim()
            .as_bytes()
            .to_vec(),
        (None, None) => return Ok(None),
    };
    if secret.is_empty() {
        bail!("{flag} is empty; a secret must have at least one byte (prefer 32 random ones)");
    }
    Ok(Some(secret))
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    /// Address of the qd server.
    #[arg(long, env = "QD_ADDR", default_value_t = default_addr())]
    addr: String,
    queue: String,
    /// The job's type, e.g. `welcome`.
    name: String,
    /// Payload text (bytes, passed through as is).
    #[arg(long, default_value = "")]
    payload: String,
    /// Wait before the job becomes ready, e.g. `5s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Maximum number of tries.
    #[arg(long)]
    attempts: Option<u32>,
    /// `fixed:DELAY` or `exponential:BASE[:MAX]`, e.g. `exponential:2s`.
    #[arg(long, value_parser = parse_backoff)]
    backoff: Option<Backoff>,
    /// Lower runs first.
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Lease a worker gets, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// Idempotency key: no second job while one with this key is pending.
    #[arg(long)]
    key: Option<String>,
}

#[derive(Debug, clap::Args)]
struct StatsArgs {
    /// Address of the qd server.
    #[arg(long, env = "QD_ADDR", default_value_t = default_addr())]
    addr: String,
    /// One JSON object keyed by queue name.
    #[arg(long)]
    json: bool,
}

/// Parses `fixed:500ms`, `exponential:2s` or `exponential:2s:10m`.
fn parse_backoff(s: &str) -> Result<Backoff, String> {
    let ms = |d: &str| {
        humantime::parse_duration(d)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| format!("bad duration {d:?} in backoff: {e}"))
    };
    let parts: Vec<&str> = s.split(':').collect();
    let backoff = match parts.as_slice() {
        ["fixed", d] => Backoff::Fixed { delay_ms: ms(d)? },
        ["exponential", base] => Backoff::exponential_ms(ms(base)?),
        ["exponential", base, max] => {
            Backoff::Exponential { base_ms: ms(base)?, max_ms: ms(max)?, jitter_pct: 0 }
        }
        _ => {
            return Err(format!(
                "backoff {s:?}: use fixed:DELAY or exponential:BASE[:MAX], e.g. exponential:2s"
            ))
        }
    };
    backoff.validate().map_err(|e| e.message)?;
    Ok(backoff)
}

/// The whole `qd` binary: runs the command line and turns its outcome into an exit code,
/// printing the error chain on failure.
pub fn main_exit() -> std::process::ExitCode {
    match main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qd: {}", crate::admin::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command line.
fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    crate::config_file::apply(&<Cli as clap::CommandFactory>::command(), &args)?;
    let cli = Cli::parse_from(args);
    // The server logs what it does; the client commands only what goes wrong.
    let default_level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    init_tracing(cli.log_format, default_level);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command {
        if let Some(n) = args.threads {
            builder.worker_threads(usize::from(n));
        }
    }
    let runtime =
        builder.enable_all().thread_name("qd").build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Add(args) => add(args).await,
            Command::Stats(args) => stats(args).await,
            Command::Bench(args) => crate::bench::run(args).await,
            Command::Admin(cmd) => crate::admin::run(cmd).await,
            Command::Health(args) => crate::health::run(args).await,
            Command::Schedule(cmd) => crate::schedule::run(cmd).await,
        }
    })
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: a log redirected to a file must not carry escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Checks the flags of `qd serve` and maps them to a [`ServerConfig`].
fn server_config(args: ServeArgs) -> anyhow::Result<ServerConfig> {
    if args.cache_mb == 0 || args.checkpoint_mb == 0 {
        bail!("--cache-mb and --checkpoint-mb must be at least 1");
    }
    if args.max_frame < 1024 || args.max_frame > qd_protocol::HARD_MAX_FRAME {
        bail!("--max-frame must be between 1024 and {} bytes", qd_protocol::HARD_MAX_FRAME);
    }
    if args.max_connections == 0 || args.max_in_flight == 0 {
        bail!("--max-connections and --max-in-flight must be at least 1");
    }
    if args.max_reserve_queues == 0 || args.max_batch == 0 || args.max_reserve == 0 {
        bail!("--max-reserve-queues, --max-batch and --max-reserve must be at least 1");
    }
    let mut config = ServerConfig::new(args.listen, args.data);
    config.durability = args.durability.into();
    config.flush_interval = args.flush_interval.into();
    config.cache_capacity = args.cache_mb * MIB;
    config.checkpoint_bytes = args.checkpoint_mb * MIB;
    config.max_connections = args.max_connections;
    config.max_in_flight = args.max_in_flight;
    config.max_frame = args.max_frame;
    config.handshake_timeout = args.handshake_timeout.into();
    config.completed_retention = args.completed_retention;
    config.dead_max_jobs = args.dead_max_jobs;
    config.dead_max_age = args.dead_max_age.into();
    config.secrets = Secrets {
        worker: read_secret(args.secret, args.secret_file, "--secret-file")?,
        admin: read_secret(args.admin_secret, args.admin_secret_file, "--admin-secret-file")?,
    };
    config.insecure = args.insecure;
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    // Below one frame a single big answer could never be queued; the server raises it.
    config.max_conn_buffer = args.max_conn_buffer;
    config.stuck_timeout = args.stuck_timeout.into();
    config.idle_timeout = args.idle_timeout.into();
    config.faktory_idle_timeout = args.faktory_idle_timeout.into();
    config.decode_limits = qd_protocol::DecodeLimits {
        max_queues: args.max_reserve_queues,
        max_jobs: args.max_batch,
        max_ids: args.max_batch,
    };
    config.max_reserve = args.max_reserve;
    config.http = args.http;
    config.faktory = args.faktory;
    config.store =
        config::StoreChoice::parse(&args.store).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    Ok(config)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let server = qd_server::server::start(server_config(args)?).await?;
    // Recovery is done: from here on large blocks get their own mappings (malloc.rs).
    if crate::malloc::pin_mmap_threshold() {
        tracing::info!(
            mmap_threshold_kib = crate::malloc::MMAP_THRESHOLD / 1024,
            "malloc: mmap threshold pinned"
        );
    }
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing commits in flight");
        token.cancel();
    });
    server.wait().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn connect(addr: &str) -> anyhow::Result<qd_client::Client> {
    client_builder(addr, qd_protocol::Role::Worker)?
        .connect()
        .await
        .with_context(|| format!("cannot reach qd at {addr}"))
}

/// A client for the `qd` commands, with the secret `qd serve` was given, read from the same
/// variables (so the commands work inside the container image, where the secret is a file):
/// for the Admin role `QD_ADMIN_SECRET` or `QD_ADMIN_SECRET_FILE` first, then for either role
/// `QD_SECRET` or `QD_SECRET_FILE`. No variable set: no secret.
pub(crate) fn client_builder(
    addr: &str,
    role: qd_protocol::Role,
) -> anyhow::Result<qd_client::ClientBuilder> {
    let from_env = |value: &str, file: &str| -> anyhow::Result<Option<Vec<u8>>> {
        let value = std::env::var(value).ok().filter(|v| !v.is_empty());
        let file = std::env::var_os(file).filter(|v| !v.is_empty()).map(PathBuf::from);
        if value.is_none() && file.is_none() {
            return Ok(None);
        }
        read_secret(value, file, "the secret file")
    };
    let admin = match role {
        qd_protocol::Role::Admin => from_env("QD_ADMIN_SECRET", "QD_ADMIN_SECRET_FILE")?,
        _ => None,
    };
    let secret = match admin {
        Some(s) => Some(s),
        None => from_env("QD_SECRET", "QD_SECRET_FILE")?,
    };
    let mut builder = qd_client::Client::builder(addr).role(role);
    if let Some(secret) = secret {
        builder = builder.secret(secret);
    }
    Ok(builder)
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let mut job = qd_client::Job::new(args.name, Bytes::from(args.payload));
    if let Some(d) = args.delay {
        job = job.delay(d);
    }
    if let Some(a) = args.attempts {
        job = job.attempts(a);
    }
    if let Some(b) = args.backoff {
        job = job.backoff(b);
    }
    if let Some(p) = args.priority {
        job = job.priority(p);
    }
    if let Some(l) = args.lease {
        job = job.lease(l);
    }
    if let Some(k) = args.key {
        job = job.key(k);
    }
    let client = connect(&args.addr).await?;
    let id = client.add(&args.queue, job).await?;
    println!("{id}");
    Ok(())
}

async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let client = connect(&args.addr).await?;
    let queues = client.stats().await?;
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = queues
            .iter()
            .map(|q| {
                let counts = serde_json::json!({
                    "ready": q.ready, "delayed": q.delayed, "active": q.active,
                    "dead": q.dead, "completed": q.completed,
                });
                (q.queue.clone(), counts)
            })
            .collect();
        println!("{}", serde_json::Value::Object(map));
        return Ok(());
    }
    if queues.is_empty() {
        println!("no queues yet: add a job with `qd add QUEUE NAME`");
        return Ok(());
    }
    let width = queues.iter().map(|q| q.queue.len()).max().unwrap_or(5).max(5);
    println!(
        "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "queue", "ready", "delayed", "active", "dead", "completed"
    );
    for q in &queues {
        println!(
            "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9}",
            q.queue, q.ready, q.delayed, q.active, q.dead, q.completed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_specs() {
        assert_eq!(parse_backoff("fixed:500ms").unwrap(), Backoff::Fixed { delay_ms: 500 });
        assert_eq!(parse_backoff("exponential:2s").unwrap(), Backoff::exponential_ms(2000));
        assert_eq!(
            parse_backoff("exponential:1s:1m").unwrap(),
            Backoff::Exponential { base_ms: 1000, max_ms: 60_000, jitter_pct: 0 }
        );
        assert!(parse_backoff("linear:1s").is_err());
        assert!(parse_backoff("exponential:1m:1s").is_err(), "cap below base");
        assert!(parse_backoff("fixed:soon").is_err());
    }

    /// Defaults have one home, `ServerConfig::default()`: a bare `qd serve` must come out
    /// exactly as that, so a default changed there cannot drift from the flags' help.
    #[test]
    fn bare_serve_is_the_servers_defaults() {
        let cli = Cli::try_parse_from(["qd", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("parsed as serve") };
        let config = server_config(*args).unwrap();
        assert_eq!(format!("{config:?}"), format!("{:?}", ServerConfig::default()));
    }

    #[test]
    fn durability_flag_maps_to_the_store_type() {
        for (flag, want) in [
            ("fsync", Durability::Fsync),
            ("interval", Durability::Interval),
            ("none", Durability::None),
        ] {
            let cli = Cli::try_parse_from(["qd", "serve", "--durability", flag]).unwrap();
            let Command::Serve(args) = cli.command else { panic!("parsed as serve") };
            assert_eq!(Durability::from(args.durability), want);
            assert_eq!(args.durability.name(), flag);
            assert_eq!(DurabilityArg::from(want), args.durability);
        }
    }

    #[test]
    fn threads_is_at_least_one() {
        let cli = Cli::try_parse_from(["qd", "serve", "--threads", "1"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("parsed as serve") };
        assert_eq!(args.threads, Some(1));
        assert!(Cli::try_parse_from(["qd", "serve", "--threads", "0"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
