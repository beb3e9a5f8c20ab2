//! Compiled components shared through the broker: for the standard
//! Python, JavaScript and Rust components, the time a first host takes to
//! compile one (as an upload or a first start does), and the time a second
//! host takes to load the compiled form the first stored and to have an
//! instance ready (set up with its configuration, as a processor placed
//! there would), against compiling it itself.
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
    Ok(())
}
