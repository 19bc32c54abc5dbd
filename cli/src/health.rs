//! `qd health`: is a qd server up? Connects with the job protocol and sends a `Ping`, so it
//! works whether or not the HTTP side is on; exits 0 when the server answers and non-zero
//! otherwise (the Dockerfile's `HEALTHCHECK` runs it).

use std::time::Duration;

use anyhow::{bail, Context};

/// The whole check must finish within this, so a hung server counts as down.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of `qd health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Address of the qd server.
    #[arg(long, env = "QD_ADDR", default_value_t = qd_server::config::DEFAULT_LISTEN.to_string())]
    pub addr: String,
}

/// Connects to `args.addr` and pings it.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let check = async {
        let client = crate::cli::client_builder(&args.addr, qd_protocol::Role::Worker)?
            .connect()
            .await
            .with_context(|| format!("cannot reach qd at {}", args.addr))?;
        client.ping().await.with_context(|| format!("qd at {} did not answer a ping", args.addr))
    };
    match tokio::time::timeout(TIMEOUT, check).await {
        Ok(Ok(_)) => {
            println!("ok");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("qd at {} did not answer within {} s", args.addr, TIMEOUT.as_secs()),
    }
}
