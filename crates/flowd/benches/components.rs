//! Compiled components shared through the broker: for the standard
//! Python, JavaScript and Rust components, the time a first host takes to
//! compile one (as an upload or a first start does), and the time a second
//! host takes to load the compiled form the first stored and to have an
//! instance ready (set up with its configuration, as a processor placed
//! there would), against compiling it itself. Then, through a running
//! host's API as a user would: the time from `flow push` of the Python
//! component to its first event processed by a pipeline step using it
//! (started on the baseline compiler's code), and to the step running the
//! optimised code.
//!
//! It starts its own nats-server. Run with
//! `cargo bench -p flowd --bench components` after `scripts/build-processors`.

mod support;

use anyhow::Result;
use flowd_engine::artifacts::{self, Source};
use flowd_wasm::{Host, HostConfig, Limits, ProcessorSetup};
use std::sync::Arc;
use std::time::Instant;
use support::{Nats, component};

fn setup(config: &[(&str, &str)]) -> ProcessorSetup {
    ProcessorSetup {
        name: "bench".into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        inputs: vec!["in".into()],
        outputs: vec!["out".into()],
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let nats = Nats::start();
    let broker = flowd_broker::Broker::connect(&[nats.url()], "bench").await?;
    let store = broker.objects(flowd_core::buckets::ARTIFACTS).await?;
    let host = || -> Result<Arc<Host>> { Ok(Arc::new(Host::new(HostConfig::default())?)) };
    println!("compiled components shared through the broker (one run)");
    println!();
    println!(
        "{:<22} {:>9} {:>12} {:>14} {:>16} {:>12}",
        "component", "size", "compile (s)", "artifact (MB)", "shared load (s)", "ready (s)"
    );
    for (name, config) in [
        ("flow_enrich_py", vec![("set", "channel=web")]),
        ("flow_filter_js", vec![("type", "created.order")]),
        ("flow_filter", vec![("where", "type exists")]),
    ] {
        let bytes = component(name)?;
        let size = bytes.len();
        let first = host()?;
        let started = Instant::now();
        let (_, source, bytes) = artifacts::load(&first, &store, bytes).await?;
        let compile = started.elapsed().as_secs_f64();
        anyhow::ensure!(source == Source::Compiled, "{name}: {source:?}");
        let key = first.artifact_key(&flowd_wasm::digest(&bytes));
        let artifact = store.info(&key).await?.size;

        let second = host()?;
        let started = Instant::now();
        let (_, source, bytes) = artifacts::load(&second, &store, bytes).await?;
        let shared = started.elapsed().as_secs_f64();
        anyhow::ensure!(source == Source::Shared, "{name}: {source:?}");
        let checking = second.clone();
        let cfg = setup(&config);
        tokio::task::spawn_blocking(move || checking.check(&bytes, None, cfg, Limits::default()))
            .await??;
        let ready = started.elapsed().as_secs_f64();
        println!(
            "{:<22} {:>7.1}MB {:>12.2} {:>14.1} {:>16.2} {:>12.2}",
            name,
            size as f64 / 1e6,
            compile,
            artifact as f64 / 1e6,
            shared,
            ready
        );
    }
    // A broker of its own: the one above has the compiled forms.
    push_to_first_event(&Nats::start()).await
}

/// `flow push` of the Python component, a one-step pipeline on it, one
/// event written: seconds to that event's output, and to the step moving
/// to the optimised code.
async fn push_to_first_event(nats: &Nats) -> Result<()> {
    use anyhow::anyhow;
    use cloudevents::EventBuilder;
    use flowd::api::proto;
    use std::time::Duration;
    let state = tempfile::tempdir()?;
    let mut config = flowd::config::Config::default();
    config.participant.state_dir = state.path().to_owned();
    config.nats.urls = vec![nats.url()];
    config.metrics.listen = None;
    config.api.listen = Some(([127, 0, 0, 1], 0).into());
    config.console.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = None;
    let daemon = flowd::daemon::Daemon::start(config).await?;
    let api_at = flowd::config::HostFile::read(state.path())
        .and_then(|h| h.api)
        .ok_or_else(|| anyhow!("the host wrote no API address"))?;
    let token = std::fs::read_to_string(flowd::user_agent::local_token_path(state.path()))?;
    let api = flowd::api::client::ApiClient::connect(
        &format!("http://{api_at}"),
        &flowd::api::client::Credentials::Token(token.trim().to_owned()),
        None,
    )
    .await?;
    let agent = flowd::agent::Agent::connect(&[nats.url()]).await?;
    let flow = |n: &str| flowd_broker::FlowName::parse(&format!("{n}.bench.example.com"));
    for name in ["py-in", "py-out"] {
        agent
            .create_flow(&flow(name)?, &flowd_broker::FlowSettings::default())
            .await?;
    }
    let bytes = component("flow_enrich_py")?;
    let manifest = "\
apiVersion: flowd/v1
kind: Pipeline
name: quick
inputs:
  in: flow://py-in.bench.example.com
outputs:
  out: flow://py-out.bench.example.com
steps:
  - name: enrich
    component: enrich-py@1.0.0
    from: in
    to: [out]
    config:
      set: channel=web
limits:
  deadline-ms: 5000
  memory-mib: 256
";
    let event = cloudevents::EventBuilderV10::new()
        .id("e-1")
        .source("urn:bench")
        .ty("created.order")
        .data("application/json", serde_json::json!({"n": 1}));
    let event = event.build()?;

    let started = Instant::now();
    api.push("enrich-py", "1.0.0", bytes, |_| {})
        .await
        .map_err(|e| anyhow!("push: {e}"))?;
    let pushed = started.elapsed().as_secs_f64();
    api.pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest.into(),
            dry_run: false,
        })
        .await
        .map_err(|e| anyhow!("apply: {e}"))?;
    agent.write(&flow("py-in")?, &[event]).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while agent.describe_flow(&flow("py-out")?).await?.events < 1 {
        anyhow::ensure!(Instant::now() < deadline, "no output within 120 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = started.elapsed().as_secs_f64();
    let code = || async {
        let p = api
            .pipelines()
            .get(proto::PipelineRef {
                name: "quick".into(),
            })
            .await
            .map_err(|e| anyhow!("describe: {e}"))?
            .into_inner();
        Ok::<String, anyhow::Error>(
            p.steps
                .first()
                .and_then(|s| s.processor.as_ref())
                .and_then(|p| p.status.as_ref())
                .map(|s| s.code.clone())
                .unwrap_or_default(),
        )
    };
    let at_first = code().await?;
    while code().await? != "optimised" {
        anyhow::ensure!(Instant::now() < deadline, "not optimised within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let optimised = started.elapsed().as_secs_f64();
    println!();
    println!("through a host's API, the 18.7 MB Python component (one run)");
    println!("  push accepted                      {pushed:>6.2} s");
    println!("  first event processed              {first:>6.2} s   (code={at_first} then)");
    println!("  the step on the optimised code     {optimised:>6.2} s");
    daemon.shutdown().await;
    Ok(())
}
