//! Scale-out benchmark: events/s of one pipeline step with `parallelism: 3`
//! (a Wasm `transform`) run by 1, 2 and 3 hosts sharing one nats-server,
//! in one run, with how the work was spread (events each host took in, from
//! the hosts' heartbeats).
//!
//! The hosts are `flowd` daemons in this process (each with its own state
//! and host id, like separate machines would be); they and the broker share
//! this machine's cores, so on a small machine the numbers show the
//! overhead of sharing the work more than a speed-up. Run with
//! `cargo bench -p flowd --bench scale` after `scripts/build-processors`.

mod support;

use anyhow::{Result, anyhow};
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use flowd::agent::{Agent, Principal};
use flowd::config::Config;
use flowd::daemon::Daemon;
use flowd::pipeline::Pipelines;
use flowd_broker::{Broker, FlowName, FlowSettings};
use flowd_engine::RunLimits;
use flowd_engine::registry::Registry;
use flowd_wasm::{Host, HostConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Nats, component};

const EVENTS: usize = 40_000;

fn flow(name: &str) -> FlowName {
    FlowName::parse(&format!("{name}.bench.example.com")).expect("valid")
}

fn order(i: usize) -> Event {
    EventBuilderV10::new()
        .id(format!("o-{i:08}"))
        .source("urn:bench:scale")
        .ty("created.order")
        .data(
            "application/json",
            serde_json::json!({"n": i, "amount": i % 1000}),
        )
        .build()
        .expect("valid")
}

async fn count(agent: &Agent, name: &str) -> Result<u64> {
    Ok(agent.describe_flow(&flow(name)).await?.events)
}

/// One run on `hosts` hosts: events/s, and the events each host took in.
async fn run(hosts: usize) -> Result<(f64, Vec<(String, u64)>)> {
    let server = Nats::start();
    let url = server.url();
    let mut states = Vec::new();
    let mut daemons = Vec::new();
    for i in 0..hosts {
        let state = tempfile::tempdir()?;
        let mut config = Config::default();
        config.participant.state_dir = state.path().to_owned();
        config.nats.urls = vec![url.clone()];
        config.cluster.host_id = Some(format!("host-{i}"));
        config.cluster.heartbeat_ms = 250;
        config.metrics.listen = None;
        config.api.listen = None;
        config.console.listen = None;
        config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
        config.fnap.tls_listen = None;
        config.fns.listen = None;
        daemons.push(Daemon::start(config).await?);
        states.push(state);
    }
    let broker = Broker::connect(std::slice::from_ref(&url), "bench").await?;
    let agent = Agent::new(broker.clone()).await?;
    for name in ["in", "out"] {
        agent
            .create_flow(&flow(name), &FlowSettings::default())
            .await?;
    }
    let registry = Registry::open(&broker, Arc::new(Host::new(HostConfig::default())?)).await?;
    registry
        .upload(
            "transform",
            "1",
            component("flow_transform")?,
            flowd_engine::registry::Uploader {
                user: None,
                admin: true,
            },
        )
        .await?;
    let pipelines = Pipelines::open(agent.clone(), registry, RunLimits::default()).await?;
    pipelines
        .apply_as(
            &Principal::Host,
            "name: scale
inputs: {in: flow://in.bench.example.com}
outputs: {out: flow://out.bench.example.com}
steps:
  - {name: t, component: transform@1, from: in, to: out, parallelism: 3, config: {set.data.seen: true}}
",
            false,
        )
        .await?;
    // Wait until the three instances run (their leases are taken).
    let leases = broker
        .jetstream()
        .get_key_value(flowd_core::buckets::LEASES)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut held = 0;
        for i in 0..3 {
            if leases
                .get(flowd_broker::cluster::lease_key("scale-t", i))
                .await
                .ok()
                .flatten()
                .is_some()
            {
                held += 1;
            }
        }
        if held == 3 {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the instances were not placed"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm-up: every instance has its component compiled and loaded.
    let warm: Vec<Event> = (0..600).map(|i| order(EVENTS + i)).collect();
    agent.write(&flow("in"), &warm).await?;
    while count(&agent, "out").await? < warm.len() as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let agents = broker
        .jetstream()
        .get_key_value(flowd_core::buckets::AGENTS)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    // A heartbeat after the warm-up, so that it is not counted below.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = flowd_broker::cluster::read_agents(&agents).await?;

    let events: Vec<Event> = (0..EVENTS).map(order).collect();
    let start = Instant::now();
    for chunk in events.chunks(5000) {
        agent.write(&flow("in"), chunk).await?;
    }
    let total = (EVENTS + warm.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while count(&agent, "out").await? < total {
        if Instant::now() > deadline {
            return Err(anyhow!("not every event came out"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    // One more heartbeat, then each host's share.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = flowd_broker::cluster::read_agents(&agents).await?;
    let spread = after
        .iter()
        .map(|a| {
            let was = before
                .iter()
                .find(|b| b.id == a.id)
                .map_or(0, |b| b.events_in);
            (a.id.clone(), a.events_in.saturating_sub(was))
        })
        .collect();
    for daemon in daemons {
        daemon.shutdown().await;
    }
    Ok((rate, spread))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut baseline = None;
    println!("{EVENTS} events, one step with parallelism 3 (transform), one nats-server");
    for hosts in 1..=3 {
        let (rate, spread) = run(hosts).await?;
        let base = *baseline.get_or_insert(rate);
        let spread: Vec<String> = spread
            .iter()
            .map(|(id, n)| format!("{id}={:.0}%", 100.0 * *n as f64 / EVENTS as f64))
            .collect();
        println!(
            "{hosts} host(s): {rate:>8.0} events/s  {:>4.0} % of 1 host  spread: {}",
            100.0 * rate / base,
            spread.join(" ")
        );
    }
    Ok(())
}
