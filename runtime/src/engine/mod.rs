//! The processor engine: runs every processor of the host continuously over
//! its durable input flows.
//!
//! Processors are declared in the broker's `flowd-processors` bucket (by the
//! `flow` CLI, or any client). The engine watches that bucket and keeps the
//! running set equal to it: a new spec starts a runner, a changed spec
//! (update, pause, resume) stops the runner after its current batch and, if
//! not paused, starts a new one at the same consumer position; a deleted spec
//! (destroy) stops it and removes its consumers and state. Because specs,
//! consumer positions and keyed state all live in JetStream, a restarted
//! host brings every processor back where it was.

mod fused;
pub mod metrics;
mod runner;
pub mod spec;

pub use metrics::Metrics;
pub use spec::{Phase, ProcessorSpec, RunLimits, Status};

use crate::broker::{Broker, BrokerError};
use crate::wasm::Host;
use anyhow::{Context as _, Result, anyhow};
use async_nats::jetstream::{kv, object_store::ObjectStore};
use futures::StreamExt;
use runner::RunnerHandle;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

/// What runners share.
#[derive(Clone)]
pub(crate) struct Context {
    broker: Broker,
    host: Arc<Host>,
    metrics: Metrics,
    status: kv::Store,
    state: kv::Store,
    components: ObjectStore,
}

impl Context {
    async fn write_status(&self, id: &str, status: &Status) {
        let mut status = status.clone();
        status.updated_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        if let Ok(json) = serde_json::to_vec(&status)
            && let Err(e) = self.status.put(id, json.into()).await
        {
            tracing::debug!(processor = id, "status not written: {e}");
        }
    }

    async fn component_bytes(&self, digest: &str) -> Result<Vec<u8>> {
        read_component(&self.components, digest).await
    }

    async fn load_state(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut keys = self
            .state
            .keys()
            .await
            .map_err(|e| anyhow!("state keys: {e}"))?;
        let mut entries = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| anyhow!("state keys: {e}"))?;
            let Some(state_key) = spec::decode_state_key(id, &key) else {
                continue;
            };
            if let Some(value) = self
                .state
                .get(&key)
                .await
                .map_err(|e| anyhow!("state: {e}"))?
            {
                entries.push((state_key, value.to_vec()));
            }
        }
        Ok(entries)
    }
}

/// Stores a component's bytes under their digest (once: the same bytes are
/// not written again); returns the digest.
pub async fn store_component(store: &ObjectStore, bytes: &[u8]) -> Result<String> {
    let digest = crate::wasm::digest(bytes);
    if store.info(&digest).await.is_err() {
        let mut reader = bytes;
        store
            .put(digest.as_str(), &mut reader)
            .await
            .map_err(|e| anyhow!("storing component: {e}"))?;
    }
    Ok(digest)
}

/// The bytes of the component stored under `digest`.
pub async fn read_component(store: &ObjectStore, digest: &str) -> Result<Vec<u8>> {
    let mut object = store
        .get(digest)
        .await
        .map_err(|e| anyhow!("component {digest}: {e}"))?;
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .context("reading component")?;
    Ok(bytes)
}

/// The running set of processors of this host.
pub struct Engine {
    ctx: Context,
    runners: Arc<Mutex<Runners>>,
    watcher: tokio::task::JoinHandle<()>,
}

/// Every processor this host knows of: its last spec, and its runner when
/// it is not paused.
type Runners = HashMap<String, (ProcessorSpec, Option<RunnerHandle>)>;

/// The broker buckets the engine (and the CLI) use.
#[derive(Clone)]
pub struct Buckets {
    pub processors: kv::Store,
    pub status: kv::Store,
    pub state: kv::Store,
    pub components: ObjectStore,
}

impl Buckets {
    pub async fn open(broker: &Broker) -> Result<Buckets, BrokerError> {
        Ok(Buckets {
            processors: broker.kv(spec::PROCESSORS).await?,
            status: broker.kv(spec::STATUS).await?,
            state: broker.kv(spec::STATE).await?,
            components: broker.objects(spec::COMPONENTS).await?,
        })
    }
}

impl Engine {
    /// Starts every declared processor and follows changes to the set.
    pub async fn start(broker: Broker, host: Arc<Host>, metrics: Metrics) -> Result<Engine> {
        let buckets = Buckets::open(&broker).await?;
        let ctx = Context {
            broker,
            host,
            metrics,
            status: buckets.status,
            state: buckets.state,
            components: buckets.components,
        };
        let runners = Arc::new(Mutex::new(HashMap::new()));
        let mut watch = buckets
            .processors
            .watch_with_history(">")
            .await
            .map_err(|e| anyhow!("watching processors: {e}"))?;
        let watcher = {
            let ctx = ctx.clone();
            let runners = runners.clone();
            tokio::spawn(async move {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry) => reconcile(&ctx, &runners, entry).await,
                        Err(e) => tracing::warn!("processor watch: {e}"),
                    }
                }
                tracing::warn!("processor watch ended");
            })
        };
        Ok(Engine {
            ctx,
            runners,
            watcher,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    /// Stops every processor after its current batch.
    pub async fn shutdown(self) {
        self.watcher.abort();
        let runners: Vec<RunnerHandle> = self
            .runners
            .lock()
            .await
            .drain()
            .filter_map(|(_, (_, r))| r)
            .collect();
        for runner in runners {
            runner.stop().await;
        }
    }
}

async fn reconcile(ctx: &Context, runners: &Mutex<Runners>, entry: kv::Entry) {
    let id = entry.key.clone();
    let previous = runners.lock().await.remove(&id);
    // A fused segment whose wiring stays the same is updated inside its
    // running runner, so that only the steps that changed restart.
    let previous = match (previous, &entry.operation) {
        (Some((old, Some(runner))), kv::Operation::Put) => {
            match serde_json::from_slice::<ProcessorSpec>(&entry.value) {
                Ok(new) if old.same_shape(&new) => {
                    runner.update(new.clone());
                    runners.lock().await.insert(id, (new, Some(runner)));
                    return;
                }
                _ => Some((old, Some(runner))),
            }
        }
        (previous, _) => previous,
    };
    let previous_spec = match previous {
        Some((spec, runner)) => {
            if let Some(runner) = runner {
                runner.stop().await;
            }
            Some(spec)
        }
        None => None,
    };
    match entry.operation {
        kv::Operation::Put => match serde_json::from_slice::<ProcessorSpec>(&entry.value) {
            Ok(spec) if spec.paused => {
                ctx.write_status(&id, &Status::new(Phase::Paused, spec.generation))
                    .await;
                runners.lock().await.insert(id, (spec, None));
            }
            Ok(spec) => {
                let handle = runner::spawn(ctx.clone(), spec.clone());
                runners.lock().await.insert(id, (spec, Some(handle)));
            }
            Err(e) => tracing::error!(processor = id, "unreadable processor spec: {e}"),
        },
        kv::Operation::Delete | kv::Operation::Purge => {
            // Ids another processor still runs (a step that moved into or
            // out of a fused segment) keep their state.
            let in_use: std::collections::HashSet<String> = runners
                .lock()
                .await
                .values()
                .flat_map(|(spec, _)| {
                    std::iter::once(spec.id.clone()).chain(spec.fused.iter().map(|f| f.id.clone()))
                })
                .collect();
            destroy(ctx, &id, previous_spec, &in_use).await
        }
    }
}

/// Removes what a destroyed processor left in the broker: its consumers
/// (their positions), its keyed state and its status.
async fn destroy(
    ctx: &Context,
    id: &str,
    spec: Option<ProcessorSpec>,
    in_use: &std::collections::HashSet<String>,
) {
    let mut owners = vec![id.to_owned()];
    if let Some(spec) = spec {
        for (port, flow) in spec.inputs.iter().enumerate() {
            if let Err(e) = ctx.broker.delete_consumer(flow, &spec.consumer(port)).await {
                tracing::debug!(processor = id, "consumer of {flow}: {e}");
            }
        }
        owners.extend(spec.fused.iter().map(|s| s.id.clone()));
    }
    owners.retain(|owner| !in_use.contains(owner));
    for owner in &owners {
        if let Ok(entries) = ctx.load_state(owner).await {
            for (key, _) in entries {
                let _ = ctx.state.delete(spec::state_key(owner, &key)).await;
            }
        }
        let _ = ctx.status.delete(owner).await;
    }
    tracing::info!(processor = id, "processor destroyed");
}
