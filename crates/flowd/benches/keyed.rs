//! Keyed-step benchmark: one stateful step keyed by `subject` (the hostile
//! guest's `test.keycount`: a count per key in keyed state), 64 partitions,
//! `parallelism: 3`, 10 000 keys, run by 1, 2 and 3 `flowd serve`
//! processes on one nats-server: events/s and how the events were spread
//! over the hosts; then, with 3 hosts, one host killed with SIGKILL and the
//! time until its partitions process again (events written right after the
//! kill, only for keys of that host's partitions, counted out), with the
//! cluster's default heartbeat (1 s) and failover (5 s).
//!
//! Every host, the broker and this process share the machine's cores.
//! Run with `cargo bench -p flowd --bench keyed` after
//! `scripts/build-processors`.

mod support;

use anyhow::{Result, anyhow};
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use flowd::agent::{Agent, Principal};
use flowd::pipeline::Pipelines;
use flowd_broker::{Broker, FlowName, FlowSettings, partitions};
use flowd_engine::RunLimits;
use flowd_engine::registry::Registry;
use flowd_wasm::{Host, HostConfig};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Nats, component};

const KEYS: usize = 10_000;
const EVENTS: usize = 60_000;
const PARTITIONS: u32 = 64;
const STEP: &str = "keyed-count";

fn flow(name: &str) -> FlowName {
    FlowName::parse(&format!("{name}.bench.example.com")).expect("valid")
}

fn event(i: usize, key: usize) -> Event {
    EventBuilderV10::new()
        .id(format!("k-{i:08}"))
        .source("urn:bench:keyed")
        .ty("test.keycount")
        .subject(format!("k{key}"))
        .data("application/json", serde_json::json!({"n": i}))
        .build()
        .expect("valid")
}

async fn count(agent: &Agent, name: &str) -> Result<u64> {
    Ok(agent.describe_flow(&flow(name)).await?.events)
}

async fn wait_count(agent: &Agent, n: u64, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while count(agent, "out").await? < n {
        if Instant::now() > deadline {
            return Err(anyhow!("not every event came out"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A `flowd serve` process with its own state and host id.
struct Daemon {
    child: Child,
    _state: tempfile::TempDir,
}

impl Daemon {
    fn start(i: usize, url: &str) -> Result<Daemon> {
        let state = tempfile::tempdir()?;
        let config = state.path().join("flowd.toml");
        std::fs::write(
            &config,
            format!(
                "[participant]\nfqdn = \"fnaa{i}.bench.example.com\"\nstate_dir = \"{}\"\n\
                 [nats]\nurls = [\"{url}\"]\n\
                 [metrics]\nlisten = \"off\"\n[fns]\nlisten = \"off\"\n\
                 [fnap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"off\"\n\
                 [api]\nlisten = \"off\"\n[console]\nlisten = \"off\"\n",
                state.path().display()
            ),
        )?;
        std::fs::write(state.path().join("host-id"), format!("host-{i}"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_flowd"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Daemon {
            child,
            _state: state,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Who holds each partition.
async fn holders(broker: &Broker) -> Result<BTreeMap<u32, String>> {
    let leases = broker
        .jetstream()
        .get_key_value(flowd_core::buckets::LEASES)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        if let Ok(Some(v)) = leases.get(partitions::lease_key(STEP, p)).await {
            out.insert(p, String::from_utf8_lossy(&v).into_owned());
        }
    }
    Ok(out)
}

struct Run {
    rate: f64,
    spread: Vec<(String, u64)>,
    /// With a host killed: its partitions, and the time until events of
    /// them came out again.
    failover: Option<(usize, Duration)>,
}

async fn run(hosts: usize, kill: bool) -> Result<Run> {
    let server = Nats::start();
    let url = server.url();
    let mut daemons: Vec<Option<Daemon>> = (0..hosts)
        .map(|i| Daemon::start(i, &url).map(Some))
        .collect::<Result<_>>()?;
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
            "hostile",
            "1",
            component("guest_hostile")?,
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
            &format!(
                "name: keyed
inputs: {{in: flow://in.bench.example.com}}
outputs: {{out: flow://out.bench.example.com}}
steps:
  - {{name: count, component: hostile@1, from: in, to: out, key: subject, partitions: {PARTITIONS}, parallelism: 3}}
"
            ),
            false,
        )
        .await?;
    // Every partition held by a host of this run.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let held = holders(&broker).await?;
        let spread: std::collections::BTreeSet<&String> = held.values().collect();
        if held.len() == PARTITIONS as usize && spread.len() == hosts {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the partitions were not placed: {held:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm-up: one event per key, so that 10 000 keys have state.
    let warm: Vec<Event> = (0..KEYS).map(|k| event(EVENTS + k, k)).collect();
    for chunk in warm.chunks(5000) {
        agent.write(&flow("in"), chunk).await?;
    }
    wait_count(&agent, KEYS as u64, Duration::from_secs(300)).await?;
    let agents = broker
        .jetstream()
        .get_key_value(flowd_core::buckets::AGENTS)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = flowd_broker::cluster::read_agents(&agents).await?;

    let events: Vec<Event> = (0..EVENTS).map(|i| event(i, i % KEYS)).collect();
    let start = Instant::now();
    for chunk in events.chunks(5000) {
        agent.write(&flow("in"), chunk).await?;
    }
    let mut total = (EVENTS + KEYS) as u64;
    wait_count(&agent, total, Duration::from_secs(600)).await?;
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1200)).await;
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

    let mut failover = None;
    if kill {
        let held = holders(&broker).await?;
        let victim = "host-1".to_owned();
        let theirs: Vec<u32> = held
            .iter()
            .filter(|(_, h)| **h == victim)
            .map(|(p, _)| *p)
            .collect();
        // Events only for keys in the victim's partitions.
        let keys: Vec<usize> = (0..KEYS)
            .filter(|k| {
                let p = partitions::partition_of(format!("k{k}").as_bytes(), PARTITIONS);
                theirs.contains(&p)
            })
            .take(2000)
            .collect();
        let after_kill: Vec<Event> = keys
            .iter()
            .enumerate()
            .map(|(j, &k)| event(EVENTS + KEYS + j, k))
            .collect();
        if let Some(mut daemon) = daemons[1].take() {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
        let killed = Instant::now();
        agent.write(&flow("in"), &after_kill).await?;
        total += after_kill.len() as u64;
        wait_count(&agent, total, Duration::from_secs(120)).await?;
        failover = Some((theirs.len(), killed.elapsed()));
    }
    drop(daemons);
    Ok(Run {
        rate,
        spread,
        failover,
    })
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
    println!(
        "{EVENTS} events over {KEYS} keys, one keyed step (count per key), \
         {PARTITIONS} partitions, parallelism 3, one nats-server"
    );
    let mut baseline = None;
    for hosts in 1..=3 {
        let run = run(hosts, hosts == 3).await?;
        let base = *baseline.get_or_insert(run.rate);
        let spread: Vec<String> = run
            .spread
            .iter()
            .map(|(id, n)| format!("{id}={:.0}%", 100.0 * *n as f64 / EVENTS as f64))
            .collect();
        println!(
            "{hosts} host(s): {:>8.0} events/s  {:>4.0} % of 1 host  spread: {}",
            run.rate,
            100.0 * run.rate / base,
            spread.join(" ")
        );
        if let Some((partitions, took)) = run.failover {
            println!(
                "host-1 killed (SIGKILL): its {partitions} partitions processed again after \
                 {:.2} s (failover 5 s, heartbeat 1 s)",
                took.as_secs_f64()
            );
        }
    }
    Ok(())
}
