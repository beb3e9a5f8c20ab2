//! What attacks cost a host and its normal clients, in one run against a
//! host with its embedded nats-server:
//!
//! - log-ins per second (PLAIN, the right password, 4 clients) with the
//!   credential cache and without it (a second host, `[logins]
//!   cache_secs = 0`): the baseline is the uncached host;
//! - the resident memory of 1000 pre-authentication sessions each holding
//!   a partial line of 4000 bytes;
//! - a normal client's `NOOP` latency (p50, p99) on an idle host, and
//!   during each attack: wrong passwords from 24 clients, 1000 strangers
//!   with partial lines, reads that ask for nothing in a loop, anonymous
//!   subscriptions past their quota; each as a ratio to idle.
//!
//! Run with `cargo bench -p flowd --bench attacks` (nats-server from
//! scripts/setup). The counts and times are fixed and bounded.

use anyhow::{Context, Result};
use flowd::accounts::Accounts;
use flowd::config::Config;
use flowd::daemon::Daemon;
use flowd_fnap::client::{Client, Security};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const MEASURE_FOR: Duration = Duration::from_secs(2);

struct Bench {
    _state: tempfile::TempDir,
    daemon: Daemon,
    addr: String,
}

async fn host(cache_secs: u64) -> Result<Bench> {
    let state = tempfile::tempdir()?;
    let mut accounts = Accounts::default();
    accounts.add("alice", "alice-password", false)?;
    accounts.save(state.path())?;
    let mut config = Config::default();
    config.participant.state_dir = state.path().to_owned();
    config.participant.namespaces = vec!["bench.example.com".into()];
    config.metrics.listen = None;
    config.api.listen = None;
    config.console.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = None;
    config.logins.cache_secs = cache_secs;
    // The attackers come from one address: its failure delay is part of
    // what is measured, the normal client's own log-in is done before.
    let daemon = Daemon::start(config).await?;
    let addr = daemon.fnap_addr().context("FNAP address")?.to_string();
    Ok(Bench {
        _state: state,
        daemon,
        addr,
    })
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// PLAIN log-ins per second over 4 clients for MEASURE_FOR.
async fn logins_per_second(addr: &str) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = addr.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < MEASURE_FOR {
                let mut c = Client::connect(&addr, &Security::Plain).await?;
                c.authenticate_plain("alice", "alice-password").await?;
                let _ = c.quit().await;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// A normal client's NOOP latencies for MEASURE_FOR: (p50, p99) in µs.
async fn noop_latency(client: &mut Client) -> Result<(u64, u64)> {
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < MEASURE_FOR {
        let t = Instant::now();
        client.command("NOOP").await?;
        samples.push(t.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok((at(0.5), at(0.99)))
}

/// Runs `attack` (until `stop`) while measuring the normal client.
async fn during<F, Fut>(client: &mut Client, attack: F) -> Result<(u64, u64)>
where
    F: Fn(Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(attack(stop.clone()));
    // Let the attack reach its steady state.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let measured = noop_latency(client).await;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    measured
}

async fn strangers(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let _ = s.write_all(&[b'A'; 4000]).await;
            held.push(s);
        }
    }
    held
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // Log-ins per second, uncached (the baseline) and cached.
    let uncached = host(0).await?;
    let base_rate = logins_per_second(&uncached.addr).await?;
    uncached.daemon.shutdown().await;
    let b = host(300).await?;
    let cached_rate = logins_per_second(&b.addr).await?;
    println!("log-ins per second, 4 clients, PLAIN:");
    println!("  without the credential cache (baseline): {base_rate:.0}/s");
    println!(
        "  with the credential cache:               {cached_rate:.0}/s ({:.1}x)",
        cached_rate / base_rate
    );

    // Memory of 1000 pre-authentication sessions.
    let before = rss();
    let held = strangers(&b.addr, 1000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss().saturating_sub(before);
    println!(
        "1000 pre-authentication sessions with 4000-byte partial lines: {} held, +{:.1} MiB resident ({:.1} KiB each)",
        held.len(),
        grown as f64 / (1 << 20) as f64,
        grown as f64 / 1024.0 / held.len().max(1) as f64
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A public flow for the reads and subscriptions.
    let mut normal = Client::connect(&b.addr, &Security::Plain).await?;
    normal.authenticate_plain("alice", "alice-password").await?;
    let token = std::fs::read_to_string(b._state.path().join("admin.token"))?;
    let mut admin = Client::connect(&b.addr, &Security::Plain).await?;
    admin.authenticate_plain("local", token.trim()).await?;
    admin
        .command("CREATE FLOW news.bench.example.com PUBLIC")
        .await?;

    let idle = noop_latency(&mut normal).await?;
    let mut rows = vec![("idle host (baseline)", idle)];

    let addr = b.addr.clone();
    let wrong = during(&mut normal, move |stop| {
        let addr = addr.clone();
        async move {
            let mut tasks = Vec::new();
            for _ in 0..24 {
                let (addr, stop) = (addr.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(mut c) = Client::connect(&addr, &Security::Plain).await {
                            let _ = c.authenticate_plain("alice", "guess").await;
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    })
    .await?;
    rows.push(("24 clients guessing passwords", wrong));

    let addr = b.addr.clone();
    let partial = during(&mut normal, move |stop| {
        let addr = addr.clone();
        async move {
            let held = strangers(&addr, 1000).await;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(held);
        }
    })
    .await?;
    rows.push(("1000 strangers with partial lines", partial));

    let addr = b.addr.clone();
    let reads = during(&mut normal, move |stop| {
        let addr = addr.clone();
        async move {
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (addr, stop) = (addr.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let Ok(mut c) = Client::connect(&addr, &Security::Plain).await else {
                        return;
                    };
                    let _ = c.authenticate_anonymous().await;
                    while !stop.load(Ordering::SeqCst) {
                        if c.data("READ FLOW news.bench.example.com COUNT 0")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    })
    .await?;
    rows.push(("8 clients reading nothing in a loop", reads));

    let addr = b.addr.clone();
    let subscribes = during(&mut normal, move |stop| {
        let addr = addr.clone();
        async move {
            let Ok(mut c) = Client::connect(&addr, &Security::Plain).await else {
                return;
            };
            let _ = c.authenticate_anonymous().await;
            while !stop.load(Ordering::SeqCst) {
                // Past the quota each is refused at once.
                if c.data("SUBSCRIBE news.bench.example.com").await.is_err() {
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await?;
    rows.push(("anonymous SUBSCRIBE past its quota", subscribes));

    println!("a normal client's NOOP latency (p50 / p99, microseconds):");
    let (base50, base99) = idle;
    for (name, (p50, p99)) in rows {
        println!(
            "  {name:<40} {p50:>7} / {p99:>7}   ({:.1}x / {:.1}x)",
            p50 as f64 / base50.max(1) as f64,
            p99 as f64 / base99.max(1) as f64
        );
    }
    b.daemon.shutdown().await;
    Ok(())
}
