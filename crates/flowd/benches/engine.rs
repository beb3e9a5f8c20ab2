//! Engine benchmark, in one run:
//!
//! **Relays of stored events** (the input flow is loaded first, so each
//! figure is the relay alone), medians of five rounds:
//! - the best raw relay written against async-nats: a continuous pull,
//!   publish acknowledgements pipelined in a window, cumulative input acks
//!   (batch and window tuned: the best of the settings tried is the
//!   baseline);
//! - the naive loop (fetch 100, publish, await the acks, ack);
//! - one Wasm `passthrough` processor; three fused passthrough steps (a
//!   pipeline); fused filter -> transform -> router; three chained
//!   passthrough processors (three broker hops);
//! - for each, the CPU the host process and the broker spent per event.
//!
//! **Latency** from write to stored output through one passthrough
//! processor, at half the rate it relays stored events: p50 and p99.
//!
//! **Write-concurrent** figures: events/s from the first write until the
//! last output is stored, as a user writing into a running pipeline sees.
//!
//! It starts its own nats-server (installed by scripts/setup). Run with
//! `cargo bench -p flowd --bench engine` after `scripts/build-processors`.
//!
//! Knobs: `FLOWD_BENCH_RELAYS=100x2000,500x2000` (raw relay batch x
//! window settings), `FLOWD_BENCH_RAW_ONLY` (the raw relays only),
//! `FLOWD_BENCH_LATENCY=20000` (only the latency at that rate, for 4 s),
//! `FLOWD_BENCH_TAIL` (when the events slower than 10 ms were written),
//! `FLOWD_BENCH_BATCH=500` (the batch limit of the processors it starts).

mod support;

use anyhow::{Result, anyhow};
use async_nats::header::NATS_MESSAGE_ID;
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use flowd::agent::{Agent, NewProcessor, Principal};
use flowd::config::Config;
use flowd::daemon::Daemon;
use flowd::pipeline::Pipelines;
use flowd_broker::{Broker, FlowName, FlowSettings};
use flowd_engine::RunLimits;
use flowd_engine::registry::Registry;
use flowd_wasm::Kind;
use flowd_wasm::{Host, HostConfig};
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Nats, component};

/// Events per relay figure.
const EVENTS: usize = 100_000;
/// Events per write-concurrent figure.
const WRITTEN: usize = 50_000;
const ROUNDS: usize = 5;

fn flow(name: &str) -> FlowName {
    FlowName::parse(&format!("{name}.bench.example.com")).expect("valid")
}

const REGIONS: [&str; 3] = ["eu", "us", "apac"];

fn invoice(i: usize) -> Event {
    EventBuilderV10::new()
        .id(format!("inv-{i:08}"))
        .source("https://erp.finance.example.com/invoices")
        .ty("created.invoice")
        .time("2026-11-25T09:00:00Z")
        .data(
            "application/json",
            serde_json::json!({"cust": format!("c-{}", i % 97), "amount": (i % 1000) as f64 + 0.5,
                               "region": REGIONS[i % 3], "lines": [1, 2, 3]}),
        )
        .build()
        .expect("valid")
}

async fn count(agent: &Agent, name: &str) -> Result<u64> {
    Ok(agent.describe_flow(&flow(name)).await?.events)
}

async fn wait_for(agent: &Agent, name: &str, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let now = count(agent, name).await?;
        if now >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("{name} reached only {now} of {n} events"));
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// How often the output flows are counted.
const POLL_MS: u64 = 20;

/// CPU time (user + system) of a process so far.
fn cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The fields after the command name (which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after it.
    let hz = 100; // USER_HZ on Linux
    Duration::from_micros((ticks(11) + ticks(12)) * 1_000_000 / hz)
}

/// A relay figure: events/s and CPU-µs per event of the host and broker.
#[derive(Debug, Clone, Copy, Default)]
struct Figure {
    rate: f64,
    host_us: f64,
    broker_us: f64,
}

fn median(mut figures: Vec<Figure>) -> Figure {
    figures.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    figures[figures.len() / 2]
}

/// Measures a relay of `n` stored events into `outs` (each expecting its
/// share): from the first output stored to the last, so start-up is not
/// counted; CPU over the same span.
async fn relay_figure(agent: &Agent, broker_pid: u32, outs: &[(&str, u64)]) -> Result<Figure> {
    let me = std::process::id();
    let total: u64 = outs.iter().map(|(_, n)| n).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    let sum = || async {
        let mut s = 0;
        for (out, _) in outs {
            s += count(agent, out).await?;
        }
        Ok::<u64, anyhow::Error>(s)
    };
    let (start, first, host0, broker0) = loop {
        let seen = sum().await?;
        if seen > 0 {
            break (Instant::now(), seen, cpu(me), cpu(broker_pid));
        }
        if Instant::now() > deadline {
            return Err(anyhow!("nothing arrived in {:?}", outs));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    for (out, n) in outs {
        wait_for(agent, out, *n).await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = (total - first).max(1) as f64;
    Ok(Figure {
        rate: n / elapsed,
        host_us: (cpu(me) - host0).as_secs_f64() * 1e6 / n,
        broker_us: (cpu(broker_pid) - broker0).as_secs_f64() * 1e6 / n,
    })
}

/// Stores `events` in `name`, pipelined.
async fn load(agent: &Agent, name: &str, events: &[Event]) -> Result<()> {
    for chunk in events.chunks(5000) {
        agent.write(&flow(name), chunk).await?;
    }
    Ok(())
}

/// Events/s from the first write until the last event is in `out`.
async fn measure(agent: &Agent, events: &[Event], input: &str, out: &str) -> Result<f64> {
    let start = Instant::now();
    load(agent, input, events).await?;
    wait_for(agent, out, events.len() as u64).await?;
    Ok(events.len() as f64 / start.elapsed().as_secs_f64())
}

/// The naive loop: fetch 100, publish, await the acks, ack.
async fn naive_relay(broker: Broker, from: FlowName, to: FlowName, n: usize) -> Result<()> {
    let consumer = broker.durable_consumer(&from, "naive", 200, None).await?;
    let js = broker.jetstream().clone();
    let mut done = 0;
    while done < n {
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .messages()
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let mut messages = Vec::new();
        while let Some(m) = batch.next().await {
            messages.push(m.map_err(|e| anyhow!("{e}"))?);
        }
        if messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let mut acks = Vec::new();
        for m in &messages {
            let mut headers = m.headers.clone().unwrap_or_default();
            let seq = m.info().map_err(|e| anyhow!("{e}"))?.stream_sequence;
            headers.insert(NATS_MESSAGE_ID, format!("naive-{seq}"));
            acks.push(
                js.publish_with_headers(to.subject(), headers, m.payload.clone())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
        // The consumer acknowledges cumulatively (see Broker::durable_consumer).
        if let Some(last) = messages.last() {
            let _ = last.ack().await;
        }
        done += messages.len();
    }
    Ok(())
}

/// The best raw relay: a continuous pull of `batch`-sized requests, up to
/// `window` publish acknowledgements in flight, and a cumulative input
/// ack once every `batch` inputs before it are stored.
async fn pipelined_relay(
    broker: Broker,
    from: FlowName,
    to: FlowName,
    n: usize,
    batch: usize,
    window: usize,
) -> Result<()> {
    let consumer = broker
        .durable_consumer(&from, "pipelined", (window + 2 * batch) as i64, None)
        .await?;
    let js = broker.jetstream().clone();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let subject = to.subject();
    let mut in_flight: VecDeque<(async_nats::jetstream::context::PublishAckFuture, _)> =
        VecDeque::new();
    let (mut done, mut since_ack) = (0, 0);
    let confirm = |ack: async_nats::jetstream::context::PublishAckFuture,
                   m: async_nats::jetstream::Message,
                   last: bool| async move {
        ack.await?;
        if last {
            let _ = m.ack().await;
        }
        Ok::<(), anyhow::Error>(())
    };
    while done < n {
        let m = messages
            .next()
            .await
            .ok_or_else(|| anyhow!("the pull ended"))?
            .map_err(|e| anyhow!("{e}"))?;
        let mut headers = m.headers.clone().unwrap_or_default();
        let seq = m.info().map_err(|e| anyhow!("{e}"))?.stream_sequence;
        headers.insert(NATS_MESSAGE_ID, format!("pipelined-{seq}"));
        let ack = js
            .publish_with_headers(subject.clone(), headers, m.payload.clone())
            .await?;
        in_flight.push_back((ack, m));
        done += 1;
        while in_flight.len() > window || (done == n && !in_flight.is_empty()) {
            let (ack, m) = in_flight.pop_front().expect("not empty");
            since_ack += 1;
            let last = since_ack >= batch || in_flight.is_empty();
            if last {
                since_ack = 0;
            }
            confirm(ack, m, last).await?;
        }
    }
    Ok(())
}

/// The batch limit of the processors the bench starts: the engine's
/// default, or `FLOWD_BENCH_BATCH`.
fn processor_batch() -> usize {
    std::env::var("FLOWD_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(RunLimits::default().batch)
}

async fn stage(
    agent: &Agent,
    id: &str,
    wasm: &str,
    config: &[(&str, &str)],
    from: &str,
    to: &[&str],
) -> Result<()> {
    agent
        .create_processor(NewProcessor {
            id: id.into(),
            kind: if to.len() > 1 {
                Kind::Distributor
            } else {
                Kind::Bridge
            },
            component: component(wasm)?,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            inputs: vec![flow(from)],
            outputs: to.iter().map(|t| flow(t)).collect(),
            dead_letter: None,
            limits: RunLimits {
                batch: processor_batch(),
                ..RunLimits::default()
            },
            owner: None,
        })
        .await?;
    Ok(())
}

async fn create_flows(agent: &Agent, names: &[String]) -> Result<()> {
    for name in names {
        agent
            .create_flow(&flow(name), &FlowSettings::default())
            .await?;
    }
    Ok(())
}

/// Removes what a figure made, so that later figures do not pay for it.
async fn clean(agent: &Agent, processors: &[String], flows: &[String]) -> Result<()> {
    for id in processors {
        agent.delete_processor(id).await?;
    }
    for name in flows {
        agent.delete_flow(&flow(name)).await?;
    }
    Ok(())
}

/// Loads `events` into `name` and lets the broker settle.
async fn preload(agent: &Agent, name: &str, events: &[Event]) -> Result<()> {
    load(agent, name, events).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

async fn apply(pipelines: &Pipelines, text: &str) -> Result<()> {
    pipelines
        .apply_as(
            &Principal::Host,
            &text.replace("NS", "bench.example.com"),
            false,
        )
        .await?;
    Ok(())
}

/// One round of every relay figure, on flows of its own.
async fn relay_round(
    r: usize,
    agent: &Agent,
    pipelines: &Pipelines,
    url: &str,
    broker_pid: u32,
    events: &[Event],
    settings: &[(usize, usize)],
) -> Result<Vec<Figure>> {
    let f = |name: &str| format!("r{r}-{name}");
    let mut names = vec![f("naive-in"), f("naive-out")];
    for (b, w) in settings {
        names.push(f(&format!("raw{b}x{w}-in")));
        names.push(f(&format!("raw{b}x{w}-out")));
    }
    for name in [
        "p1-in", "p1-out", "f3-in", "f3-out", "fc-in", "fc-eu", "fc-us", "fc-apac", "c3-in",
        "c3-a", "c3-b", "c3-out",
    ] {
        names.push(f(name));
    }
    create_flows(agent, &names).await?;
    let n = events.len() as u64;
    let mut figures = Vec::new();

    // The raw relays: the best of the settings tried, then the naive loop.
    let mut best = Figure::default();
    for (b, w) in settings {
        let (input, output) = (f(&format!("raw{b}x{w}-in")), f(&format!("raw{b}x{w}-out")));
        preload(agent, &input, events).await?;
        let broker = Broker::connect(&[url.to_owned()], "bench relay").await?;
        let relay = tokio::spawn(pipelined_relay(
            broker,
            flow(&input),
            flow(&output),
            events.len(),
            *b,
            *w,
        ));
        let figure = relay_figure(agent, broker_pid, &[(&output, n)]).await?;
        relay.await??;
        clean(agent, &[], &[input, output]).await?;
        eprintln!(
            "round {r}: raw relay batch {b} window {w}: {:.0}/s",
            figure.rate
        );
        if figure.rate > best.rate {
            best = figure;
        }
    }
    figures.push(best);
    if std::env::var_os("FLOWD_BENCH_RAW_ONLY").is_some() {
        return Ok(figures);
    }
    preload(agent, &f("naive-in"), events).await?;
    let broker = Broker::connect(&[url.to_owned()], "bench naive").await?;
    let relay = tokio::spawn(naive_relay(
        broker,
        flow(&f("naive-in")),
        flow(&f("naive-out")),
        events.len(),
    ));
    figures.push(relay_figure(agent, broker_pid, &[(&f("naive-out"), n)]).await?);
    relay.await??;
    clean(agent, &[], &[f("naive-in"), f("naive-out")]).await?;

    // One processor.
    preload(agent, &f("p1-in"), events).await?;
    stage(
        agent,
        &f("p1"),
        "flow_passthrough",
        &[],
        &f("p1-in"),
        &[&f("p1-out")],
    )
    .await?;
    figures.push(relay_figure(agent, broker_pid, &[(&f("p1-out"), n)]).await?);
    clean(agent, &[f("p1")], &[f("p1-in"), f("p1-out")]).await?;

    // Three fused passthrough steps.
    preload(agent, &f("f3-in"), events).await?;
    apply(
        pipelines,
        &format!(
            "name: {}
inputs: {{in: flow://{}.NS}}
outputs: {{out: flow://{}.NS}}
steps:
  - {{name: a, component: passthrough@1, from: in}}
  - {{name: b, component: passthrough@1, from: a}}
  - {{name: c, component: passthrough@1, from: b, to: out}}
",
            f("fused3"),
            f("f3-in"),
            f("f3-out")
        ),
    )
    .await?;
    figures.push(relay_figure(agent, broker_pid, &[(&f("f3-out"), n)]).await?);
    pipelines.delete_as(&Principal::Host, &f("fused3")).await?;
    clean(agent, &[], &[f("f3-in"), f("f3-out")]).await?;

    // Fused filter -> transform -> router.
    preload(agent, &f("fc-in"), events).await?;
    apply(
        pipelines,
        &format!(
            "name: {}
inputs: {{in: flow://{}.NS}}
outputs: {{eu: flow://{}.NS, us: flow://{}.NS, apac: flow://{}.NS}}
steps:
  - {{name: f, component: filter@1, from: in, config: {{where: data.amount >= 0}}}}
  - {{name: t, component: transform@1, from: f, config: {{set.data.status: big}}}}
  - name: r
    component: router@1
    from: t
    to: [eu, us, apac]
    config: {{by: data.region, route.eu: eu, route.us: us, route.apac: apac}}
",
            f("fusedc"),
            f("fc-in"),
            f("fc-eu"),
            f("fc-us"),
            f("fc-apac")
        ),
    )
    .await?;
    let len = events.len();
    figures.push(
        relay_figure(
            agent,
            broker_pid,
            &[
                (&f("fc-eu"), len.div_ceil(3) as u64),
                (&f("fc-us"), (len + 1) as u64 / 3),
                (&f("fc-apac"), (len / 3) as u64),
            ],
        )
        .await?,
    );
    pipelines.delete_as(&Principal::Host, &f("fusedc")).await?;
    clean(
        agent,
        &[],
        &[f("fc-in"), f("fc-eu"), f("fc-us"), f("fc-apac")],
    )
    .await?;

    // Three chained processors: three broker hops.
    preload(agent, &f("c3-in"), events).await?;
    stage(
        agent,
        &f("c3a"),
        "flow_passthrough",
        &[],
        &f("c3-in"),
        &[&f("c3-a")],
    )
    .await?;
    stage(
        agent,
        &f("c3b"),
        "flow_passthrough",
        &[],
        &f("c3-a"),
        &[&f("c3-b")],
    )
    .await?;
    stage(
        agent,
        &f("c3c"),
        "flow_passthrough",
        &[],
        &f("c3-b"),
        &[&f("c3-out")],
    )
    .await?;
    figures.push(relay_figure(agent, broker_pid, &[(&f("c3-out"), n)]).await?);
    clean(
        agent,
        &[f("c3a"), f("c3b"), f("c3c")],
        &[f("c3-in"), f("c3-a"), f("c3-b"), f("c3-out")],
    )
    .await?;
    eprintln!(
        "round {r}: {:?}",
        figures.iter().map(|f| f.rate.round()).collect::<Vec<_>>()
    );
    Ok(figures)
}

/// What carries the events in a latency figure.
#[derive(Clone, Copy)]
enum Through {
    /// One passthrough processor.
    Processor,
    /// The pipelined raw relay: the same writer, machine and broker, so
    /// what the broker allows.
    RawRelay,
}

/// Write -> stored output latency at `rate` events/s for `secs` seconds,
/// `through` a processor or the raw relay: (p50, p99, p99.9) in ms.
async fn latency(
    agent: &Agent,
    url: &str,
    events: &[Event],
    id: &str,
    rate: f64,
    secs: f64,
    through: Through,
) -> Result<(f64, f64, f64)> {
    let (input, output) = (format!("{id}-in"), format!("{id}-out"));
    create_flows(agent, &[input.clone(), output.clone()]).await?;
    let n = (rate * secs) as usize;
    let relay = match through {
        Through::RawRelay => {
            let broker = Broker::connect(&[url.to_owned()], "bench latency").await?;
            Some(tokio::spawn(pipelined_relay(
                broker,
                flow(&input),
                flow(&output),
                100 + n,
                100,
                1000,
            )))
        }
        Through::Processor => {
            stage(agent, id, "flow_passthrough", &[], &input, &[&output]).await?;
            None
        }
    };
    let client = async_nats::connect(url).await?;
    let mut outputs = client.subscribe(flow(&output).subject()).await?;
    let js = async_nats::jetstream::new(client.clone());
    // Warm the processor up.
    load(agent, &input, &events[..100]).await?;
    for _ in 0..100 {
        outputs.next().await;
    }
    let (origin, writer) = {
        let js = js.clone();
        let subject = flow(&input).subject();
        // Not the warm-up's events: the processor's output ids would make
        // them duplicates.
        let messages: Vec<_> = events[100..]
            .iter()
            .cycle()
            .take(n)
            .enumerate()
            .map(|(i, e)| {
                let (mut headers, payload) = flowd_broker::codec::message_for_event(e);
                headers.insert(NATS_MESSAGE_ID, format!("{id}-{i}"));
                (headers, payload)
            })
            .collect();
        // The clock starts once the messages are made, so that no event is
        // overdue when the writer starts.
        let origin = Instant::now();
        let writer = tokio::spawn(async move {
            let mut acks = VecDeque::new();
            for (i, (mut headers, payload)) in messages.into_iter().enumerate() {
                let due = Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_sub(origin.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                headers.insert("bench-sent-us", origin.elapsed().as_micros().to_string());
                acks.push_back(
                    js.publish_with_headers(subject.clone(), headers, payload)
                        .await?,
                );
                while acks.len() > 1000 {
                    acks.pop_front().expect("not empty").await?;
                }
            }
            for ack in acks {
                ack.await?;
            }
            Ok::<(), anyhow::Error>(())
        });
        (origin, writer)
    };
    let mut latencies = Vec::with_capacity(n);
    let mut slow = Vec::new();
    while latencies.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), outputs.next())
            .await?
            .ok_or_else(|| anyhow!("the subscription ended"))?;
        let now = origin.elapsed().as_micros() as f64;
        if let Some(sent) = m
            .headers
            .as_ref()
            .and_then(|h| h.get("bench-sent-us"))
            .and_then(|v| v.as_str().parse::<f64>().ok())
        {
            let ms = (now - sent) / 1000.0;
            if ms > 10.0 {
                slow.push((sent / 1000.0, ms));
            }
            latencies.push(ms);
        }
    }
    if std::env::var_os("FLOWD_BENCH_TAIL").is_some() {
        // When the slow events were written: bursts, and how far apart.
        let mut bursts: Vec<(f64, f64, usize, f64)> = Vec::new();
        for (at, ms) in slow {
            match bursts.last_mut() {
                Some(b) if at - b.1 < 20.0 => {
                    b.1 = at;
                    b.2 += 1;
                    b.3 = b.3.max(ms);
                }
                _ => bursts.push((at, at, 1, ms)),
            }
        }
        eprintln!("{id}: {} bursts of events slower than 10 ms", bursts.len());
        for (from, to, count, worst) in &bursts {
            eprintln!(
                "  written {from:>8.1}..{to:>8.1} ms: {count:>5} events, worst {worst:.1} ms"
            );
        }
    }
    writer.await??;
    let processors = match relay {
        Some(relay) => {
            relay.await??;
            Vec::new()
        }
        None => vec![id.to_owned()],
    };
    clean(agent, &processors, &[input, output]).await?;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok((at(0.5), at(0.99), at(0.999)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let server = Nats::start();
    let broker_pid = server
        .pid()
        .ok_or_else(|| anyhow!("nats-server is not running"))?;
    let url = server.url();
    let state = tempfile::tempdir()?;
    let mut config = Config::default();
    config.participant.state_dir = state.path().to_owned();
    config.nats.urls = vec![url.clone()];
    config.metrics.listen = None;
    config.api.listen = None;
    config.console.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = None;
    let daemon = Daemon::start(config).await?;
    let agent = Agent::connect(std::slice::from_ref(&url)).await?;
    let registry = Registry::open(
        &Broker::connect(std::slice::from_ref(&url), "bench registry").await?,
        Arc::new(Host::new(HostConfig::default())?),
    )
    .await?;
    for (name, file) in [
        ("passthrough", "flow_passthrough"),
        ("filter", "flow_filter"),
        ("transform", "flow_transform"),
        ("router", "flow_router"),
    ] {
        registry
            .upload(
                name,
                "1",
                component(file)?,
                flowd_engine::registry::Uploader {
                    user: None,
                    admin: true,
                },
            )
            .await?;
    }
    let pipelines = Pipelines::open(agent.clone(), registry, RunLimits::default()).await?;
    let events: Vec<Event> = (0..EVENTS).map(invoice).collect();

    // Relays of stored events, medians of the rounds.
    let settings: Vec<(usize, usize)> = match std::env::var("FLOWD_BENCH_RELAYS") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.split_once('x'))
            .filter_map(|(b, w)| Some((b.parse().ok()?, w.parse().ok()?)))
            .collect(),
        Err(_) => vec![(100, 2000), (500, 2000)],
    };
    if let Some(rate) = std::env::var("FLOWD_BENCH_LATENCY")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
    {
        // The latency figure alone, at a given rate: the processor between
        // two raw relay runs, so that the machine's drift shows.
        for (id, through, label) in [
            ("lat0r", Through::RawRelay, "raw relay"),
            ("lat0", Through::Processor, "processor"),
            ("lat0s", Through::RawRelay, "raw relay"),
        ] {
            let (p50, p99, p999) = latency(&agent, &url, &events, id, rate, 4.0, through).await?;
            println!(
                "{label} at {rate:.0} events/s: p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms"
            );
        }
        daemon.shutdown().await;
        return Ok(());
    }
    let mut rounds = Vec::new();
    for r in 0..ROUNDS {
        rounds
            .push(relay_round(r, &agent, &pipelines, &url, broker_pid, &events, &settings).await?);
    }
    if std::env::var_os("FLOWD_BENCH_RAW_ONLY").is_some() {
        daemon.shutdown().await;
        return Ok(());
    }
    let rows = [
        "raw relay, pipelined (the baseline)",
        "raw relay, naive loop",
        "1 passthrough processor",
        "3 fused passthrough steps",
        "fused filter -> transform -> router",
        "3 chained passthrough processors",
    ];
    let targets = ["", "", ">= 90 %", ">= 85 %", ">= 70 %", ">= 30 %"];
    let medians: Vec<Figure> = (0..rows.len())
        .map(|i| median(rounds.iter().map(|r| r[i]).collect()))
        .collect();
    // Each round's ratio to that round's baseline (the broker's speed
    // drifts between rounds), then their median.
    let ratios: Vec<f64> = (0..rows.len())
        .map(|i| {
            let mut r: Vec<f64> = rounds.iter().map(|f| f[i].rate / f[0].rate).collect();
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect();

    // Write-concurrent figures: write while the pipeline runs.
    let written = &events[..WRITTEN];
    create_flows(
        &agent,
        &[
            "w1-in".into(),
            "w1-out".into(),
            "wb-in".into(),
            "wb-out".into(),
        ],
    )
    .await?;
    let broker = Broker::connect(std::slice::from_ref(&url), "bench write").await?;
    let relay = tokio::spawn(pipelined_relay(
        broker,
        flow("wb-in"),
        flow("wb-out"),
        WRITTEN,
        100,
        2000,
    ));
    let w_baseline = measure(&agent, written, "wb-in", "wb-out").await?;
    relay.await??;
    stage(&agent, "w1", "flow_passthrough", &[], "w1-in", &["w1-out"]).await?;
    let w_one = measure(&agent, written, "w1-in", "w1-out").await?;

    // Latency at half the rate one processor keeps up with while events
    // are written (the writer shares the machine), and at a light load.
    let half = w_one / 2.0;
    let (r50, r99, r999) =
        latency(&agent, &url, &events, "lat1r", half, 2.0, Through::RawRelay).await?;
    let (p50, p99, p999) =
        latency(&agent, &url, &events, "lat1", half, 2.0, Through::Processor).await?;
    let light = 1_000.0;
    let (l50, l99, l999) = latency(
        &agent,
        &url,
        &events,
        "lat2",
        light,
        2.0,
        Through::Processor,
    )
    .await?;

    println!(
        "flowd engine benchmark: {EVENTS} stored events of ~330 bytes relayed, medians of {ROUNDS} rounds"
    );
    println!();
    println!(
        "{:<40} {:>10} {:>9} {:>8} {:>10} {:>12}",
        "relay", "events/s", "ratio", "target", "host µs/ev", "broker µs/ev"
    );
    for (i, row) in rows.iter().enumerate() {
        let m = medians[i];
        println!(
            "{:<40} {:>10.0} {:>8.0} % {:>8} {:>10.2} {:>12.2}",
            row,
            m.rate,
            100.0 * ratios[i],
            targets[i],
            m.host_us,
            m.broker_us
        );
    }
    println!();
    println!("latency write -> stored output (target p99 <= 10 ms for the processor):");
    println!(
        "  raw relay, pipelined, at {half:.0} events/s: \
         p50 {r50:.2} ms, p99 {r99:.2} ms, p99.9 {r999:.2} ms"
    );
    println!(
        "  1 passthrough processor at {half:.0} events/s (half the write-concurrent maximum): \
         p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms"
    );
    println!("  at {light:.0} events/s: p50 {l50:.2} ms, p99 {l99:.2} ms, p99.9 {l999:.2} ms");
    println!();
    println!("write-concurrent, {WRITTEN} events, first write -> last output stored:");
    println!("{:<40} {:>10.0}", "raw relay, pipelined", w_baseline);
    println!(
        "{:<40} {:>10.0} ({:.0} %)",
        "1 passthrough processor",
        w_one,
        100.0 * w_one / w_baseline
    );
    daemon.shutdown().await;
    Ok(())
}
