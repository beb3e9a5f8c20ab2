//! Engine benchmark: events/s through the broker, in one run:
//!
//! - baseline: a plain JetStream loop (pull 100, publish with message ids,
//!   wait for acks, ack the inputs), the least any processor host must do;
//! - the same events through 1 and 3 chained Wasm `passthrough` processors
//!   run by the engine;
//! - and through filter -> transform -> router;
//! - the same two chains as pipelines whose steps run fused in one runner
//!   (docs/pipelines.md): one broker hop instead of three.
//!
//! It starts its own nats-server (installed by scripts/setup). Run with
//! `cargo bench -p flowd --bench engine` after `scripts/build-processors`.

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
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Nats, component};

const EVENTS: usize = 50_000;

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

async fn wait_for(agent: &Agent, name: &str, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let now = agent.describe_flow(&flow(name)).await?.events;
        if now >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("{name} reached only {now} of {n} events"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events/s from the first write until the last event is in `out`.
async fn measure(agent: &Agent, events: &[Event], input: &str, out: &str) -> Result<f64> {
    let start = Instant::now();
    for chunk in events.chunks(5000) {
        agent.write(&flow(input), chunk).await?;
    }
    wait_for(agent, out, events.len() as u64).await?;
    Ok(events.len() as f64 / start.elapsed().as_secs_f64())
}

/// The baseline: the broker work of one stage, without a processor.
async fn baseline_loop(broker: Broker, from: FlowName, to: FlowName, n: usize) -> Result<()> {
    let consumer = broker
        .durable_consumer(&from, "baseline", 200, None)
        .await?;
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
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut acks = Vec::new();
        for m in &messages {
            let mut headers = m.headers.clone().unwrap_or_default();
            let seq = m.info().map_err(|e| anyhow!("{e}"))?.stream_sequence;
            headers.insert(NATS_MESSAGE_ID, format!("baseline-{seq}"));
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
            limits: RunLimits::default(),
            owner: None,
        })
        .await?;
    Ok(())
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
    let url = server.url();
    let state = tempfile::tempdir()?;
    let mut config = Config::default();
    config.participant.state_dir = state.path().to_owned();
    config.nats.urls = vec![url.clone()];
    config.metrics.listen = None;
    config.api.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = None;
    let daemon = Daemon::start(config).await?;
    let agent = Agent::connect(std::slice::from_ref(&url)).await?;
    for name in [
        "b-in", "b-out", "p1-in", "p1-out", "p3-in", "p3-a", "p3-b", "p3-out", "c-in", "c-big",
        "c-tagged", "c-eu", "c-us", "c-apac", "f3-in", "f3-out", "fc-in", "fc-eu", "fc-us",
        "fc-apac",
    ] {
        agent
            .create_flow(&flow(name), &FlowSettings::default())
            .await?;
    }
    let events: Vec<Event> = (0..EVENTS).map(invoice).collect();

    let broker = Broker::connect(std::slice::from_ref(&url), "bench baseline").await?;
    let looper = tokio::spawn(baseline_loop(broker, flow("b-in"), flow("b-out"), EVENTS));
    let baseline = measure(&agent, &events, "b-in", "b-out").await?;
    eprintln!("baseline: {baseline:.0} events/s");
    looper.await??;

    stage(&agent, "p1", "flow_passthrough", &[], "p1-in", &["p1-out"]).await?;
    let one = measure(&agent, &events, "p1-in", "p1-out").await?;
    eprintln!("1 stage: {one:.0} events/s");

    stage(&agent, "p3a", "flow_passthrough", &[], "p3-in", &["p3-a"]).await?;
    stage(&agent, "p3b", "flow_passthrough", &[], "p3-a", &["p3-b"]).await?;
    stage(&agent, "p3c", "flow_passthrough", &[], "p3-b", &["p3-out"]).await?;
    let three = measure(&agent, &events, "p3-in", "p3-out").await?;
    eprintln!("3 stages: {three:.0} events/s");

    stage(
        &agent,
        "cf",
        "flow_filter",
        &[("where", "data.amount >= 0")],
        "c-in",
        &["c-big"],
    )
    .await?;
    stage(
        &agent,
        "ct",
        "flow_transform",
        &[("set.data.status", "big")],
        "c-big",
        &["c-tagged"],
    )
    .await?;
    stage(
        &agent,
        "cr",
        "flow_router",
        &[
            ("by", "data.region"),
            ("route.eu", "c-eu"),
            ("route.us", "c-us"),
            ("route.apac", "c-apac"),
        ],
        "c-tagged",
        &["c-eu", "c-us", "c-apac"],
    )
    .await?;
    let start = Instant::now();
    for chunk in events.chunks(5000) {
        agent.write(&flow("c-in"), chunk).await?;
    }
    for (out, n) in [
        ("c-eu", EVENTS.div_ceil(3)),
        ("c-us", (EVENTS + 1) / 3),
        ("c-apac", EVENTS / 3),
    ] {
        wait_for(&agent, out, n as u64).await?;
    }
    let chain = EVENTS as f64 / start.elapsed().as_secs_f64();
    eprintln!("filter->transform->router: {chain:.0} events/s");

    // The same chains as pipelines: fused steps, one broker hop.
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
    let manifest = |text: &str| text.replace("NS", "bench.example.com");
    pipelines
        .apply_as(
            &Principal::Host,
            &manifest(
                "name: fused3
inputs: {in: flow://f3-in.NS}
outputs: {out: flow://f3-out.NS}
steps:
  - {name: a, component: passthrough@1, from: in}
  - {name: b, component: passthrough@1, from: a}
  - {name: c, component: passthrough@1, from: b, to: out}
",
            ),
            false,
        )
        .await?;
    let fused3 = measure(&agent, &events, "f3-in", "f3-out").await?;
    eprintln!("3 fused stages: {fused3:.0} events/s");
    pipelines
        .apply_as(
            &Principal::Host,
            &manifest(
                "name: fusedc
inputs: {in: flow://fc-in.NS}
outputs: {eu: flow://fc-eu.NS, us: flow://fc-us.NS, apac: flow://fc-apac.NS}
steps:
  - {name: f, component: filter@1, from: in, config: {where: data.amount >= 0}}
  - {name: t, component: transform@1, from: f, config: {set.data.status: big}}
  - name: r
    component: router@1
    from: t
    to: [eu, us, apac]
    config: {by: data.region, route.eu: eu, route.us: us, route.apac: apac}
",
            ),
            false,
        )
        .await?;
    let start = Instant::now();
    for chunk in events.chunks(5000) {
        agent.write(&flow("fc-in"), chunk).await?;
    }
    for (out, n) in [
        ("fc-eu", EVENTS.div_ceil(3)),
        ("fc-us", (EVENTS + 1) / 3),
        ("fc-apac", EVENTS / 3),
    ] {
        wait_for(&agent, out, n as u64).await?;
    }
    let fused_chain = EVENTS as f64 / start.elapsed().as_secs_f64();

    println!("flowd engine benchmark: {EVENTS} events of ~330 bytes, write -> last output stored");
    println!();
    println!("{:<46} {:>10}", "pipeline", "events/s");
    println!(
        "{:<46} {:>10.0}",
        "baseline: JetStream pull -> publish -> ack", baseline
    );
    println!("{:<46} {:>10.0}", "1 Wasm stage (passthrough)", one);
    println!("{:<46} {:>10.0}", "3 Wasm stages (passthrough x3)", three);
    println!(
        "{:<46} {:>10.0}",
        "3 Wasm stages (filter -> transform -> router)", chain
    );
    println!(
        "{:<46} {:>10.0}",
        "3 fused Wasm stages (passthrough x3)", fused3
    );
    println!(
        "{:<46} {:>10.0}",
        "3 fused stages (filter -> transform -> router)", fused_chain
    );
    println!();
    println!("1 stage / baseline  = {:.0} %", 100.0 * one / baseline);
    println!("3 stages / baseline = {:.0} %", 100.0 * three / baseline);
    println!(
        "filter->transform->router / baseline = {:.0} %",
        100.0 * chain / baseline
    );
    println!(
        "3 fused stages / baseline = {:.0} %",
        100.0 * fused3 / baseline
    );
    println!(
        "fused filter->transform->router / baseline = {:.0} %",
        100.0 * fused_chain / baseline
    );
    daemon.shutdown().await;
    Ok(())
}
