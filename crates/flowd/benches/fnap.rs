//! FNAP load benchmark: a host with its embedded nats-server holds many
//! idle sessions while a few busy ones issue commands, in one run:
//!
//! - sessions held: idle authenticated sessions kept open (bounded);
//! - baseline: `NOOP` per second over the busy sessions (the protocol alone);
//! - `DESCRIBE FLOW` per second over the same sessions (protocol + access
//!   check + broker round trips), and its ratio to the baseline.
//!
//! Run with `cargo bench -p flowd --bench fnap` (nats-server from
//! scripts/setup). `FNAP_BENCH_IDLE` and `FNAP_BENCH_BUSY` change the counts.

use anyhow::{Context, Result};
use flowd::config::Config;
use flowd::daemon::Daemon;
use flowd_fnap::client::{Client, Security};
use std::time::{Duration, Instant};

const RUN_FOR: Duration = Duration::from_secs(3);

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn session(addr: &str) -> Result<Client> {
    let mut client = Client::connect(addr, &Security::Plain).await?;
    client.authenticate_anonymous().await?;
    Ok(client)
}

/// Commands per second over `busy` sessions issuing `line` for RUN_FOR.
async fn rate(addr: &str, busy: usize, line: &'static str, data: bool) -> Result<f64> {
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..busy {
        let mut client = session(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let until = Instant::now() + RUN_FOR;
            while Instant::now() < until {
                if data {
                    client.data(line).await?;
                } else {
                    client.command(line).await?;
                }
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let idle = count("FNAP_BENCH_IDLE", 1000);
    let busy = count("FNAP_BENCH_BUSY", 16);
    let state = tempfile::tempdir()?;
    let mut config = Config::default();
    config.participant.state_dir = state.path().to_owned();
    config.participant.namespaces = vec!["bench.example.com".into()];
    config.metrics.listen = None;
    config.api.listen = None;
    config.console.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = None;
    let daemon = Daemon::start(config).await?;
    let addr = daemon.fnap_addr().context("FNAP address")?.to_string();

    // A public flow, created by the host's local administrator.
    let token = std::fs::read_to_string(state.path().join("admin.token"))?;
    let mut admin = Client::connect(&addr, &Security::Plain).await?;
    admin.authenticate_plain("local", token.trim()).await?;
    admin
        .command("CREATE FLOW stats.bench.example.com PUBLIC")
        .await?;

    let mut held = Vec::with_capacity(idle);
    for _ in 0..idle {
        held.push(session(&addr).await?);
    }
    // Every held session still answers.
    for client in held.iter_mut().step_by((idle / 10).max(1)) {
        client.command("NOOP").await?;
    }
    eprintln!("sessions held: {}", held.len());

    let noop = rate(&addr, busy, "NOOP", false).await?;
    eprintln!("baseline NOOP: {noop:.0} commands/s over {busy} sessions");
    let describe = rate(&addr, busy, "DESCRIBE FLOW stats.bench.example.com", true).await?;
    eprintln!(
        "DESCRIBE FLOW: {describe:.0} commands/s over {busy} sessions ({:.1} % of NOOP), with {} idle sessions held",
        100.0 * describe / noop,
        held.len()
    );
    drop(held);
    daemon.shutdown().await;
    Ok(())
}
