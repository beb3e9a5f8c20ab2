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
//! instances [`flowd_broker::cluster`] places on it, under a lease, and takes
//! over the instances of a host that stops beating.
//!
//! - [`Engine`]: the running set of this host's processors, and
//!   [`Buckets`], the broker buckets it and the CLI use;
//! - [`store_component`], [`read_component`]: component bytes in the
//!   object store, by digest;
//! - [`spec`]: processor specs and statuses as stored in the broker;
//! - [`keyed`]: keyed steps' keys and their partitioner;
//! - [`registry`]: uploaded components, named and versioned;
//! - [`artifacts`]: compiled components shared by the participant's hosts;
//! - [`metrics`]: Prometheus metrics per processor;
//! - [`traces`]: OpenTelemetry spans of batches, steps and events, and
//!   the events' `traceparent`.

#![warn(missing_docs)]

pub mod artifacts;
mod fused;
pub mod keyed;
mod logbook;
pub mod metrics;
pub mod registry;
mod runner;
pub mod spec;
pub mod traces;

pub use metrics::Metrics;
pub use spec::{Code, Phase, ProcessorSpec, RunLimits, Status};

use anyhow::{Result, anyhow};
use async_nats::jetstream::{kv, object_store::ObjectStore};
use flowd_broker::cluster::{self, AgentRecord, ClusterConfig, Membership};
use flowd_broker::logs::{Logs, Retention};
use flowd_broker::{Broker, BrokerError};
use flowd_core::buckets::{ARTIFACTS, COMPONENTS, PROCESSORS, STATE, STATUS};
use flowd_wasm::Host;
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
    artifacts: ObjectStore,
    /// Which instance of its processor a runner is (only instance 0
    /// writes the processor's status; the others show in their host's
    /// heartbeat).
    instance: u32,
    /// Events taken in by this host's runners.
    processed: Arc<AtomicU64>,
    /// The participant's processor log (`None`: it could not be opened;
    /// failures still go to the host's log).
    logs: Option<Logs>,
    /// This host's id, for log records.
    host_id: Arc<str>,
    /// Where spans go (nowhere unless `[telemetry]` exports them).
    traces: traces::Traces,
    /// This host's membership, for the leases of keyed partitions.
    membership: Membership,
    /// How often leases are renewed.
    heartbeat: Duration,
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
        Ok(read_component(&self.components, digest).await?)
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
pub async fn store_component(store: &ObjectStore, bytes: &[u8]) -> Result<String, ComponentError> {
    let digest = flowd_wasm::digest(bytes);
    if store.info(&digest).await.is_err() {
        let mut reader = bytes;
        store
            .put(digest.as_str(), &mut reader)
            .await
            .map_err(|e| ComponentError::Unavailable {
                digest: digest.clone(),
                reason: format!("storing: {e}"),
            })?;
    }
    Ok(digest)
}

/// Why a component's bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// No component is stored under this digest.
    #[error("no such component: {0}")]
    NotFound(String),
    /// The broker could not be asked, or failed: try again later.
    #[error("component {digest}: {reason}")]
    Unavailable {
        /// The digest asked for.
        digest: String,
        /// What failed.
        reason: String,
    },
}

/// The bytes of the component stored under `digest`.
pub async fn read_component(store: &ObjectStore, digest: &str) -> Result<Vec<u8>, ComponentError> {
    use async_nats::jetstream::object_store::GetErrorKind;
    let unavailable = |reason: String| ComponentError::Unavailable {
        digest: digest.to_owned(),
        reason,
    };
    let mut object = store.get(digest).await.map_err(|e| match e.kind() {
        GetErrorKind::NotFound | GetErrorKind::InvalidName => {
            ComponentError::NotFound(digest.to_owned())
        }
        _ => unavailable(e.to_string()),
    })?;
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| unavailable(format!("reading: {e}")))?;
    Ok(bytes)
}

/// The broker buckets the engine (and the CLI) use.
#[derive(Clone)]
pub struct Buckets {
    /// Processor specs by id ([`PROCESSORS`]), written by users.
    pub processors: kv::Store,
    /// Processor statuses by id ([`STATUS`]), written by the host.
    pub status: kv::Store,
    /// Processors' keyed state ([`STATE`], keys from
    /// [`spec::state_key`]).
    pub state: kv::Store,
    /// Component bytes by digest ([`COMPONENTS`]).
    pub components: ObjectStore,
    /// Compiled components ([`ARTIFACTS`], see [`artifacts`]).
    pub artifacts: ObjectStore,
}

impl Buckets {
    /// Opens the buckets, creating any that is missing.
    pub async fn open(broker: &Broker) -> Result<Buckets, BrokerError> {
        Ok(Buckets {
            processors: broker.kv(PROCESSORS).await?,
            status: broker.kv(STATUS).await?,
            state: broker.kv(STATE).await?,
            components: broker.objects(COMPONENTS).await?,
            artifacts: broker.objects(ARTIFACTS).await?,
        })
    }
}

/// The running set of processors of this host.
pub struct Engine {
    ctx: Context,
    shared: Shared,
    record: Arc<std::sync::Mutex<AgentRecord>>,
    watcher: tokio::task::JoinHandle<()>,
    placer: tokio::task::JoinHandle<()>,
    beater: tokio::task::JoinHandle<()>,
}

/// What this host knows of the processors, and what it runs.
#[derive(Default)]
struct Placed {
    /// Every declared processor's last spec.
    specs: HashMap<String, ProcessorSpec>,
    /// Instances running here.
    running: HashMap<(String, u32), Instance>,
    /// The live hosts, as last read.
    hosts: Vec<String>,
}

impl Placed {
    /// The live hosts, this one included even before its first heartbeat
    /// is read back.
    fn hosts_with(&self, me: &str) -> Vec<String> {
        let mut hosts = self.hosts.clone();
        if !hosts.iter().any(|h| h == me) {
            hosts.push(me.to_owned());
        }
        hosts
    }
}

/// An instance running on this host, under its lease.
struct Instance {
    runner: RunnerHandle,
    /// The lease's revision, for the next renewal.
    lease: u64,
    /// When the lease was last renewed (or taken).
    renewed: tokio::time::Instant,
}

/// The engine's state and the lock that serialises placement: the watcher
/// (spec changes) and the placer (live hosts) never start or stop
/// instances at the same time.
#[derive(Clone)]
struct Shared {
    placed: Arc<Mutex<Placed>>,
    placing: Arc<Mutex<()>>,
    membership: Membership,
    failover: Duration,
}

/// Stops an instance in the background (after its current batch) and gives
/// its lease back, so that a slow batch does not hold up heartbeats or
/// placement.
fn stop_later(membership: &Membership, id: String, instance: u32, running: Instance) {
    let membership = membership.clone();
    tokio::spawn(async move {
        running.runner.stop().await;
        membership
            .release(&cluster::lease_key(&id, instance), running.lease)
            .await;
    });
}

impl Engine {
    /// Starts this host's share of the declared processors and follows
    /// changes to the set and to the live hosts. `host_id` names this host
    /// among those on the broker; `traces` is where runners' spans go.
    pub async fn start(
        broker: Broker,
        host: Arc<Host>,
        metrics: Metrics,
        host_id: &str,
        cluster: &ClusterConfig,
        traces: traces::Traces,
    ) -> Result<Engine> {
        let buckets = Buckets::open(&broker).await?;
        let membership = Membership::open(&broker, host_id, cluster).await?;
        let broker_for_logs = broker.clone();
        let ctx = Context {
            broker,
            host,
            metrics,
            status: buckets.status,
            state: buckets.state,
            components: buckets.components,
            artifacts: buckets.artifacts,
            instance: 0,
            processed: Arc::new(AtomicU64::new(0)),
            logs: match Logs::open(&broker_for_logs, Retention::default()).await {
                Ok(logs) => Some(logs),
                Err(e) => {
                    tracing::warn!("processor log unavailable: {e}");
                    None
                }
            },
            host_id: host_id.into(),
            traces,
            membership: membership.clone(),
            heartbeat: cluster.heartbeat(),
        };
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let record = Arc::new(std::sync::Mutex::new(AgentRecord {
            id: host_id.to_owned(),
            started_ms: now,
            ..AgentRecord::default()
        }));
        let shared = Shared {
            placed: Arc::new(Mutex::new(Placed::default())),
            placing: Arc::new(Mutex::new(())),
            membership,
            failover: cluster.failover(),
        };
        // Be in the live set before placing anything.
        beat(&ctx, &shared, &record, 0, Duration::ZERO).await;
        shared.placed.lock().await.hosts = live_hosts(&shared.membership).await.unwrap_or_default();
        let mut watch = buckets
            .processors
            .watch_with_history(">")
            .await
            .map_err(|e| anyhow!("watching processors: {e}"))?;
        let watcher = {
            let ctx = ctx.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry) => reconcile(&ctx, &shared, entry).await,
                        Err(e) => tracing::warn!("processor watch: {e}"),
                    }
                }
                tracing::warn!("processor watch ended");
            })
        };
        let beater = tokio::spawn(keep_beating(
            ctx.clone(),
            shared.clone(),
            record.clone(),
            cluster.heartbeat(),
        ));
        let placer = tokio::spawn(keep_placing(
            ctx.clone(),
            shared.clone(),
            cluster.heartbeat(),
        ));
        Ok(Engine {
            ctx,
            shared,
            record,
            watcher,
            placer,
            beater,
        })
    }

    /// The engine's per-processor metrics.
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
        &self.shared.membership
    }

    /// Leaves the live set (so the others place this host's instances on
    /// themselves at once), stops every processor after its current batch
    /// and gives its leases back.
    pub async fn shutdown(self) {
        self.beater.abort();
        self.shared.membership.leave().await;
        // Not in the middle of starting an instance.
        let _placing = self.shared.placing.lock().await;
        self.placer.abort();
        self.watcher.abort();
        let running: Vec<((String, u32), Instance)> =
            self.shared.placed.lock().await.running.drain().collect();
        for ((id, instance), running) in running {
            running.runner.stop().await;
            self.shared
                .membership
                .release(&cluster::lease_key(&id, instance), running.lease)
                .await;
        }
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
    shared: &Shared,
    record: &std::sync::Mutex<AgentRecord>,
    last_processed: u64,
    elapsed: Duration,
) {
    let processed = ctx.processed.load(Ordering::Relaxed);
    let instances = shared.placed.lock().await.running.len() as u32;
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
    if let Err(e) = shared.membership.beat(&snapshot).await {
        tracing::warn!("heartbeat not written: {e}");
    }
}

/// Every heartbeat: beat and renew the leases held. An instance whose
/// lease another host took, or that could not be renewed for longer than
/// the failover time allows, stops: another host may run it by now.
async fn keep_beating(
    ctx: Context,
    shared: Shared,
    record: Arc<std::sync::Mutex<AgentRecord>>,
    interval: Duration,
) {
    let mut last = (tokio::time::Instant::now(), 0u64);
    let membership = &shared.membership;
    loop {
        tokio::time::sleep(interval).await;
        beat(&ctx, &shared, &record, last.1, last.0.elapsed()).await;
        last = (
            tokio::time::Instant::now(),
            ctx.processed.load(Ordering::Relaxed),
        );
        let held: Vec<((String, u32), u64)> = shared
            .placed
            .lock()
            .await
            .running
            .iter()
            .map(|(k, i)| (k.clone(), i.lease))
            .collect();
        for ((id, instance), revision) in held {
            let key = cluster::lease_key(&id, instance);
            let renewed = membership.keep(&key, revision).await;
            let mut placed = shared.placed.lock().await;
            let lost = match renewed {
                Ok(Some(next)) => {
                    if let Some(running) = placed.running.get_mut(&(id.clone(), instance)) {
                        running.lease = next;
                        running.renewed = tokio::time::Instant::now();
                    }
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    tracing::debug!(processor = id, "lease not renewed: {e}");
                    placed
                        .running
                        .get(&(id.clone(), instance))
                        .is_some_and(|r| r.renewed.elapsed() + interval >= shared.failover)
                }
            };
            if lost && let Some(running) = placed.running.remove(&(id.clone(), instance)) {
                tracing::warn!(
                    processor = id,
                    instance,
                    "lease lost: stopping the instance"
                );
                stop_later(membership, id, instance, running);
            }
        }
    }
}

/// Every heartbeat: read the live hosts and place the instances again.
async fn keep_placing(ctx: Context, shared: Shared, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match live_hosts(&shared.membership).await {
            Ok(hosts) => shared.placed.lock().await.hosts = hosts,
            Err(e) => {
                tracing::debug!("live hosts not read: {e}");
                continue;
            }
        }
        let _placing = shared.placing.lock().await;
        place(&ctx, &shared).await;
    }
}

/// Starts the instances placed on this host that do not run yet (when
/// their lease can be taken) and stops those placed elsewhere. Called with
/// `shared.placing` held.
async fn place(ctx: &Context, shared: &Shared) {
    let membership = &shared.membership;
    let wanted: Vec<(String, u32)> = {
        let mut placed = shared.placed.lock().await;
        let hosts = placed.hosts_with(&membership.id);
        let mut wanted = Vec::new();
        for spec in placed.specs.values().filter(|s| !s.paused) {
            for instance in 0..spec.parallelism.max(1) {
                if cluster::owner(&spec.id, instance, &hosts) == Some(membership.id.as_str()) {
                    wanted.push((spec.id.clone(), instance));
                }
            }
        }
        let leaving: Vec<(String, u32)> = placed
            .running
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for (id, instance) in leaving {
            if let Some(running) = placed.running.remove(&(id.clone(), instance)) {
                tracing::info!(processor = id, instance, "instance moves to another host");
                stop_later(membership, id, instance, running);
            }
        }
        wanted
    };
    for (id, instance) in wanted {
        if shared
            .placed
            .lock()
            .await
            .running
            .contains_key(&(id.clone(), instance))
        {
            continue;
        }
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
        // The spec as it is now, and the runner recorded in the same step
        // (no await between spawning and recording it).
        let mut placed = shared.placed.lock().await;
        let Some(spec) = placed.specs.get(&id).filter(|s| !s.paused).cloned() else {
            drop(placed);
            membership
                .release(&cluster::lease_key(&id, instance), lease)
                .await;
            continue;
        };
        let mut instance_ctx = ctx.clone();
        instance_ctx.instance = instance;
        placed.running.insert(
            (id, instance),
            Instance {
                runner: runner::spawn(instance_ctx, spec),
                lease,
                renewed: tokio::time::Instant::now(),
            },
        );
    }
}

async fn reconcile(ctx: &Context, shared: &Shared, entry: kv::Entry) {
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
    let _placing = shared.placing.lock().await;
    let membership = &shared.membership;
    // A fused segment whose wiring stays the same is updated inside its
    // running instances, so that only the steps that changed restart.
    {
        let mut placed = shared.placed.lock().await;
        if let (Some(old), Some(new)) = (placed.specs.get(&id), &new)
            && old.same_shape(new)
        {
            for ((rid, _), running) in placed.running.iter() {
                if *rid == id {
                    running.runner.update(new.clone());
                }
            }
            placed.specs.insert(id, new.clone());
            return;
        }
    }
    // Otherwise every local instance stops (after its batch) and gives its
    // lease back before the new spec's instances are placed.
    let (stopping, previous, hosts) = {
        let mut placed = shared.placed.lock().await;
        let keys: Vec<(String, u32)> = placed
            .running
            .keys()
            .filter(|(rid, _)| *rid == id)
            .cloned()
            .collect();
        let stopping: Vec<((String, u32), Instance)> = keys
            .into_iter()
            .filter_map(|k| placed.running.remove(&k).map(|r| (k, r)))
            .collect();
        let previous = match &new {
            Some(spec) => placed.specs.insert(id.clone(), spec.clone()),
            None => placed.specs.remove(&id),
        };
        let hosts = placed.hosts_with(&membership.id);
        (stopping, previous, hosts)
    };
    for ((rid, instance), running) in stopping {
        running.runner.stop().await;
        membership
            .release(&cluster::lease_key(&rid, instance), running.lease)
            .await;
    }
    // One host speaks for the processor: the one its instance 0 ranks
    // first.
    let first = cluster::owner(&id, 0, &hosts) == Some(membership.id.as_str());
    match new {
        Some(spec) => {
            if spec.paused && first {
                ctx.write_status(&id, &Status::new(Phase::Paused, spec.generation))
                    .await;
            }
            place(ctx, shared).await;
        }
        None if first => {
            // Ids another processor still runs (a step that moved into or
            // out of a fused segment) keep their state.
            let in_use: HashSet<String> = shared
                .placed
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
        None => {}
    }
}

/// Removes what a destroyed processor left in the broker: its consumers
/// (their positions), its keyed state and its status.
async fn destroy(ctx: &Context, id: &str, spec: Option<ProcessorSpec>, in_use: &HashSet<String>) {
    let mut owners = vec![id.to_owned()];
    if let Some(spec) = spec {
        for (port, flow) in spec.inputs.iter().enumerate() {
            for consumer in [spec.consumer(port), spec.other_consumer(port)] {
                if let Err(e) = ctx.broker.delete_consumer(flow, &consumer).await {
                    tracing::debug!(processor = id, "consumer of {flow}: {e}");
                }
            }
        }
        owners.extend(spec.fused.iter().map(|s| s.id.clone()));
        if let Some(keying) = &spec.key
            && !in_use.contains(id)
        {
            // Its partitions: the events not yet processed, and the state.
            if let Err(e) = ctx.broker.delete_partition_stream(id).await {
                tracing::warn!(processor = id, "partition stream not removed: {e}");
            }
            for p in 0..keying.partitions {
                let _ = ctx
                    .state
                    .delete(flowd_broker::partitions::record_key(id, p))
                    .await;
            }
        }
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
