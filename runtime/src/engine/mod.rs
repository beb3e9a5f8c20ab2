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
//!
//! Several hosts on one broker share the processors: each runs the
//! instances [`crate::cluster`] places on it, under a lease, and takes
//! over the instances of a host that stops beating.

mod fused;
pub mod metrics;
mod runner;
pub mod spec;

pub use metrics::Metrics;
pub use spec::{Phase, ProcessorSpec, RunLimits, Status};

use crate::broker::{Broker, BrokerError};
use crate::cluster::{self, AgentRecord, ClusterConfig, Membership};
use crate::wasm::Host;
use anyhow::{Context as _, Result, anyhow};
use async_nats::jetstream::{kv, object_store::ObjectStore};
use futures::StreamExt;
use runner::RunnerHandle;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
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
    /// Which instance of its processor a runner is (only instance 0
    /// writes the processor's status; the others show in their host's
    /// heartbeat).
    instance: u32,
    /// Events taken in by this host's runners.
    processed: Arc<AtomicU64>,
}

impl Context {
    async fn write_status(&self, id: &str, status: &Status) {
        if self.instance != 0 {
            return;
        }
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
    placed: Arc<Mutex<Placed>>,
    membership: Membership,
    record: Arc<std::sync::Mutex<AgentRecord>>,
    watcher: tokio::task::JoinHandle<()>,
    placer: tokio::task::JoinHandle<()>,
}

/// What this host knows of the processors, and what it runs.
#[derive(Default)]
struct Placed {
    /// Every declared processor's last spec.
    specs: HashMap<String, ProcessorSpec>,
    /// Instances running here, with the revision of their lease.
    running: HashMap<(String, u32), (RunnerHandle, u64)>,
    /// The live hosts, as last read.
    hosts: Vec<String>,
}

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
    /// Starts this host's share of the declared processors and follows
    /// changes to the set and to the live hosts. `host_id` names this host
    /// among those on the broker.
    pub async fn start(
        broker: Broker,
        host: Arc<Host>,
        metrics: Metrics,
        host_id: &str,
        cluster: &ClusterConfig,
    ) -> Result<Engine> {
        let buckets = Buckets::open(&broker).await?;
        let membership = Membership::open(&broker, host_id, cluster).await?;
        let ctx = Context {
            broker,
            host,
            metrics,
            status: buckets.status,
            state: buckets.state,
            components: buckets.components,
            instance: 0,
            processed: Arc::new(AtomicU64::new(0)),
        };
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let record = Arc::new(std::sync::Mutex::new(AgentRecord {
            id: host_id.to_owned(),
            started_ms: now,
            ..AgentRecord::default()
        }));
        let placed = Arc::new(Mutex::new(Placed::default()));
        // Be in the live set before placing anything.
        beat(&ctx, &membership, &record, &placed, 0, Duration::ZERO).await;
        placed.lock().await.hosts = live_hosts(&membership).await.unwrap_or_default();
        let mut watch = buckets
            .processors
            .watch_with_history(">")
            .await
            .map_err(|e| anyhow!("watching processors: {e}"))?;
        let watcher = {
            let ctx = ctx.clone();
            let placed = placed.clone();
            let membership = membership.clone();
            tokio::spawn(async move {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry) => reconcile(&ctx, &membership, &placed, entry).await,
                        Err(e) => tracing::warn!("processor watch: {e}"),
                    }
                }
                tracing::warn!("processor watch ended");
            })
        };
        let placer = tokio::spawn(keep_placing(
            ctx.clone(),
            membership.clone(),
            record.clone(),
            placed.clone(),
            cluster.heartbeat(),
        ));
        Ok(Engine {
            ctx,
            placed,
            membership,
            record,
            watcher,
            placer,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    /// Completes this host's heartbeat with what it serves.
    pub fn announce(&self, fqdn: &str, fnap: Option<String>, api: Option<String>) {
        if let Ok(mut record) = self.record.lock() {
            record.fqdn = fqdn.to_owned();
            record.fnap = fnap;
            record.api = api;
        }
    }

    /// The membership this engine beats in.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Stops every processor after its current batch, gives its leases
    /// back and leaves the live set, so the others take over at once.
    pub async fn shutdown(self) {
        self.watcher.abort();
        self.placer.abort();
        let running: Vec<((String, u32), (RunnerHandle, u64))> =
            self.placed.lock().await.running.drain().collect();
        for ((id, instance), (runner, lease)) in running {
            runner.stop().await;
            self.membership
                .release(&cluster::lease_key(&id, instance), lease)
                .await;
        }
        self.membership.leave().await;
    }
}

/// The live hosts' ids.
async fn live_hosts(membership: &Membership) -> Result<Vec<String>, BrokerError> {
    Ok(membership
        .agents()
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect())
}

/// Writes this host's heartbeat.
async fn beat(
    ctx: &Context,
    membership: &Membership,
    record: &std::sync::Mutex<AgentRecord>,
    placed: &Mutex<Placed>,
    last_processed: u64,
    elapsed: Duration,
) {
    let processed = ctx.processed.load(Ordering::Relaxed);
    let instances = placed.lock().await.running.len() as u32;
    let snapshot = match record.lock() {
        Ok(mut r) => {
            r.heartbeat_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
            r.instances = instances;
            r.events_in = processed;
            r.rate = if elapsed.is_zero() {
                0.0
            } else {
                processed.saturating_sub(last_processed) as f64 / elapsed.as_secs_f64()
            };
            r.clone()
        }
        Err(_) => return,
    };
    if let Err(e) = membership.beat(&snapshot).await {
        tracing::warn!("heartbeat not written: {e}");
    }
}

/// Every heartbeat: beat, renew the leases held (stopping instances whose
/// lease is lost), read the live hosts and place the instances again.
async fn keep_placing(
    ctx: Context,
    membership: Membership,
    record: Arc<std::sync::Mutex<AgentRecord>>,
    placed: Arc<Mutex<Placed>>,
    interval: Duration,
) {
    let mut last = (tokio::time::Instant::now(), 0u64);
    loop {
        tokio::time::sleep(interval).await;
        beat(
            &ctx,
            &membership,
            &record,
            &placed,
            last.1,
            last.0.elapsed(),
        )
        .await;
        last = (
            tokio::time::Instant::now(),
            ctx.processed.load(Ordering::Relaxed),
        );
        let held: Vec<((String, u32), u64)> = placed
            .lock()
            .await
            .running
            .iter()
            .map(|(k, (_, lease))| (k.clone(), *lease))
            .collect();
        for ((id, instance), revision) in held {
            let key = cluster::lease_key(&id, instance);
            // A lease that ran out while the broker was away (a node lost,
            // a leader elected) is taken again if no one else took it.
            let renewed = match membership.renew(&key, revision).await {
                Ok(None) => membership.acquire(&key).await,
                other => other,
            };
            match renewed {
                Ok(Some(next)) => {
                    if let Some(entry) = placed.lock().await.running.get_mut(&(id, instance)) {
                        entry.1 = next;
                    }
                }
                Ok(None) => {
                    tracing::warn!(
                        processor = id,
                        instance,
                        "lease lost: stopping the instance"
                    );
                    let lost = placed.lock().await.running.remove(&(id, instance));
                    if let Some((runner, _)) = lost {
                        runner.stop().await;
                    }
                }
                // The broker is away: the instance cannot work either; the
                // lease is renewed (or found lost) once it is back.
                Err(e) => tracing::debug!(processor = id, "lease not renewed: {e}"),
            }
        }
        match live_hosts(&membership).await {
            Ok(hosts) => placed.lock().await.hosts = hosts,
            Err(e) => {
                tracing::debug!("live hosts not read: {e}");
                continue;
            }
        }
        place(&ctx, &membership, &placed).await;
    }
}

/// Starts the instances placed on this host that do not run yet (when
/// their lease can be taken) and stops those placed elsewhere.
async fn place(ctx: &Context, membership: &Membership, placed: &Mutex<Placed>) {
    let (wanted, to_stop) = {
        let p = placed.lock().await;
        let mut hosts = p.hosts.clone();
        if !hosts.contains(&membership.id) {
            hosts.push(membership.id.clone());
        }
        let mut wanted: Vec<(String, u32)> = Vec::new();
        for spec in p.specs.values().filter(|s| !s.paused) {
            for instance in 0..spec.parallelism.max(1) {
                if cluster::owner(&spec.id, instance, &hosts) == Some(membership.id.as_str()) {
                    wanted.push((spec.id.clone(), instance));
                }
            }
        }
        let to_stop: Vec<(String, u32)> = p
            .running
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        (wanted, to_stop)
    };
    for key in to_stop {
        let stopped = placed.lock().await.running.remove(&key);
        if let Some((runner, lease)) = stopped {
            tracing::info!(
                processor = key.0,
                instance = key.1,
                "instance moves to another host"
            );
            runner.stop().await;
            membership
                .release(&cluster::lease_key(&key.0, key.1), lease)
                .await;
        }
    }
    for (id, instance) in wanted {
        let spec = {
            let p = placed.lock().await;
            if p.running.contains_key(&(id.clone(), instance)) {
                continue;
            }
            match p.specs.get(&id) {
                Some(spec) => spec.clone(),
                None => continue,
            }
        };
        let lease = match membership.acquire(&cluster::lease_key(&id, instance)).await {
            Ok(Some(lease)) => lease,
            // Still held by the host that ran it: taken once it lets go
            // or its lease runs out.
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(processor = id, "lease not taken: {e}");
                continue;
            }
        };
        let mut instance_ctx = ctx.clone();
        instance_ctx.instance = instance;
        let handle = runner::spawn(instance_ctx, spec);
        placed
            .lock()
            .await
            .running
            .insert((id, instance), (handle, lease));
    }
}

async fn reconcile(
    ctx: &Context,
    membership: &Membership,
    placed: &Mutex<Placed>,
    entry: kv::Entry,
) {
    let id = entry.key.clone();
    let new = match entry.operation {
        kv::Operation::Put => match serde_json::from_slice::<ProcessorSpec>(&entry.value) {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::error!(processor = id, "unreadable processor spec: {e}");
                return;
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    // A fused segment whose wiring stays the same is updated inside its
    // running instances, so that only the steps that changed restart.
    {
        let mut p = placed.lock().await;
        if let (Some(old), Some(new)) = (p.specs.get(&id), &new)
            && old.same_shape(new)
        {
            for ((rid, _), (runner, _)) in p.running.iter() {
                if *rid == id {
                    runner.update(new.clone());
                }
            }
            p.specs.insert(id, new.clone());
            return;
        }
    }
    // Otherwise every local instance stops (after its batch) and gives its
    // lease back; placement starts the new spec's instances.
    let (stopping, previous) = {
        let mut p = placed.lock().await;
        let keys: Vec<(String, u32)> = p
            .running
            .keys()
            .filter(|(rid, _)| *rid == id)
            .cloned()
            .collect();
        let stopping: Vec<((String, u32), (RunnerHandle, u64))> = keys
            .into_iter()
            .filter_map(|k| p.running.remove(&k).map(|r| (k, r)))
            .collect();
        let previous = match &new {
            Some(spec) => p.specs.insert(id.clone(), spec.clone()),
            None => p.specs.remove(&id),
        };
        (stopping, previous)
    };
    for ((rid, instance), (runner, lease)) in stopping {
        runner.stop().await;
        membership
            .release(&cluster::lease_key(&rid, instance), lease)
            .await;
    }
    match new {
        Some(spec) => {
            let hosts = placed.lock().await.hosts.clone();
            if spec.paused && cluster::owner(&spec.id, 0, &hosts) == Some(membership.id.as_str()) {
                ctx.write_status(&id, &Status::new(Phase::Paused, spec.generation))
                    .await;
            }
            place(ctx, membership, placed).await;
        }
        None => {
            // Ids another processor still runs (a step that moved into or
            // out of a fused segment) keep their state.
            let in_use: HashSet<String> = placed
                .lock()
                .await
                .specs
                .values()
                .flat_map(|spec| {
                    std::iter::once(spec.id.clone()).chain(spec.fused.iter().map(|f| f.id.clone()))
                })
                .collect();
            destroy(ctx, &id, previous, &in_use).await
        }
    }
}

/// Removes what a destroyed processor left in the broker: its consumers
/// (their positions), its keyed state and its status.
async fn destroy(ctx: &Context, id: &str, spec: Option<ProcessorSpec>, in_use: &HashSet<String>) {
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
