//! A keyed step's instance: the partitions it owns under leases, their
//! state, and the rounds that process them.
//!
//! Each partition's keyed state is swapped into the processor for the calls
//! on that partition's events, so a call sees exactly its partition's
//! state. After a batch, the partition's whole record (state and the
//! position of its last event) is written by compare-and-set once the
//! batch's outputs are stored: a crash before the write replays the batch
//! against the state it saw; a crash after it skips the events the record
//! already includes. Included events are purged from the partition stream
//! once per heartbeat.

use super::{Input, Runner, Work};
use crate::Context;
use crate::keyed::{KeySelector, ORIGIN, event_headers, parse_origin};
use crate::spec::{Keying, PartitionStatus, ProcessorSpec, Status};
use anyhow::{Result, anyhow, bail};
use async_nats::jetstream::{consumer::PullConsumer, kv};
use flow_abi::Packer;
use flowd_broker::partitions::{self, PartitionRecord};
use flowd_wasm::state::KeyedState;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Events taken from the partitions at most per round.
const ROUND: usize = 4_096;

/// The partitions of one instance of a keyed step.
pub(super) struct Partitions {
    /// The partitions this instance should own.
    wanted: Vec<u32>,
    /// Those it holds, with their state.
    owned: BTreeMap<u32, Owned>,
    /// Its consumer of the partitions it holds.
    consumer: Option<PullConsumer>,
    /// The delivery sequence the consumer's next event must have: the
    /// consumer takes no acknowledgements, so a delivery lost on the way
    /// (a connection dropped mid-pull) would never come again.
    next_delivery: u64,
    /// When leases are next renewed (and missing ones tried).
    next_check: Instant,
    every: Duration,
    /// Keyed-state quota of one partition.
    quota: usize,
    /// When instance 0 next reports the partitions in the status.
    next_report: Instant,
}

/// A partition this instance holds.
struct Owned {
    state: KeyedState,
    /// Revision of its record in the state bucket (0: none yet).
    revision: u64,
    /// Position (partition stream sequence) of the last event its state
    /// includes.
    last: u64,
    /// The same, as last committed, and as last purged up to.
    committed: u64,
    purged: u64,
    /// Revision of its lease.
    lease: u64,
}

impl Partitions {
    pub(super) fn new(ctx: &Context, spec: &ProcessorSpec, keying: &Keying) -> Result<Partitions> {
        if !spec.fused.is_empty() || spec.is_relay() {
            bail!("a keyed step runs on its own: it cannot be fused or a relay");
        }
        KeySelector::parse(&keying.selector).map_err(|e| anyhow!(e))?;
        if !(1..=partitions::MAX_PARTITIONS).contains(&keying.partitions) {
            bail!(
                "partitions must be 1 to {}, not {}",
                partitions::MAX_PARTITIONS,
                keying.partitions
            );
        }
        if spec.parallelism > keying.partitions {
            bail!(
                "parallelism {} exceeds the {} partitions",
                spec.parallelism,
                keying.partitions
            );
        }
        // The step's quota is shared by its partitions; one partition's
        // record stays well under the broker's largest message (1 MiB).
        // At most half the largest message, so that a record (8 bytes more
        // per entry than the quota counts) still fits in one.
        let quota =
            (spec.limits.wasm().state / keying.partitions as usize).clamp(4 << 10, 480 << 10);
        Ok(Partitions {
            wanted: partitions::owned_by(ctx.instance, spec.parallelism, keying.partitions),
            owned: BTreeMap::new(),
            consumer: None,
            next_delivery: 1,
            next_check: Instant::now(),
            every: ctx.heartbeat,
            quota,
            next_report: Instant::now(),
        })
    }

    /// The partitions held now.
    pub(super) fn held(&self) -> Vec<u32> {
        self.owned.keys().copied().collect()
    }
}

impl Runner {
    /// Renews the partitions' leases and tries to take those still held by
    /// their previous owner; when the set changes, settles what is in
    /// flight and reads the held partitions through a new consumer.
    async fn keep_partitions(&mut self, status: &mut Status) -> Result<()> {
        let membership = self.ctx.membership.clone();
        let id = self.spec.id.clone();
        let (lost, gained) = {
            let Some(k) = self.keyed.as_mut() else {
                return Ok(());
            };
            if Instant::now() < k.next_check {
                return Ok(());
            }
            k.next_check = Instant::now() + k.every;
            let mut lost = Vec::new();
            for (&p, owned) in k.owned.iter_mut() {
                match membership
                    .keep(&partitions::lease_key(&id, p), owned.lease)
                    .await
                {
                    Ok(Some(lease)) => owned.lease = lease,
                    Ok(None) => lost.push(p),
                    Err(e) => tracing::debug!(processor = id, partition = p, "lease: {e}"),
                }
            }
            let mut gained = Vec::new();
            for &p in &k.wanted {
                if k.owned.contains_key(&p) {
                    continue;
                }
                if let Ok(Some(lease)) = membership.acquire(&partitions::lease_key(&id, p)).await {
                    gained.push((p, lease));
                }
            }
            (lost, gained)
        };
        self.purge_partitions().await;
        if lost.is_empty() && gained.is_empty() {
            return Ok(());
        }
        // Batches of partitions about to go are committed (or found
        // taken over) first; a new consumer starts with nothing pending.
        self.drain(status).await?;
        let mut loaded = Vec::new();
        for (p, lease) in gained {
            let quota = self.keyed.as_ref().map_or(0, |k| k.quota);
            let entry = self
                .ctx
                .state
                .entry(partitions::record_key(&id, p))
                .await
                .map_err(|e| anyhow!("partition {p}: {e}"))?;
            let (record, revision) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    PartitionRecord::decode(&entry.value)
                        .map_err(|e| anyhow!("partition {p}: {e}"))?,
                    entry.revision,
                ),
                Some(entry) => (PartitionRecord::default(), entry.revision),
                None => (PartitionRecord::default(), 0),
            };
            loaded.push((
                p,
                Owned {
                    state: KeyedState::restore(record.entries, quota),
                    revision,
                    last: record.last,
                    committed: record.last,
                    purged: 0,
                    lease,
                },
            ));
        }
        let Some(k) = self.keyed.as_mut() else {
            return Ok(());
        };
        for p in &lost {
            k.owned.remove(p);
            tracing::warn!(processor = id, partition = p, "partition lease lost");
        }
        for (p, owned) in loaded {
            k.owned.insert(p, owned);
        }
        let held = k.held();
        k.consumer = None;
        self.ctx
            .metrics
            .partitions_held
            .get_or_create(&crate::metrics::InstanceLabel {
                processor: id.clone(),
                instance: self.ctx.instance,
            })
            .set(held.len() as i64);
        if !held.is_empty() {
            let consumer = self
                .ctx
                .broker
                .partition_consumer(&id, self.ctx.instance, &held)
                .await?;
            if let Some(k) = self.keyed.as_mut() {
                k.consumer = Some(consumer);
                k.next_delivery = 1;
            }
        }
        tracing::info!(
            processor = id,
            instance = self.ctx.instance,
            partitions = held.len(),
            "partitions taken"
        );
        Ok(())
    }

    /// Renews the held partitions' leases when a heartbeat has passed
    /// since the last renewal; a lease lost means another instance may
    /// hold the partition now: this runner stops and starts again from
    /// the records.
    async fn renew_if_due(&mut self) -> Result<()> {
        let membership = self.ctx.membership.clone();
        let id = self.spec.id.clone();
        let Some(k) = self.keyed.as_mut() else {
            return Ok(());
        };
        if Instant::now() < k.next_check {
            return Ok(());
        }
        k.next_check = Instant::now() + k.every;
        for (&p, owned) in k.owned.iter_mut() {
            match membership
                .keep(&partitions::lease_key(&id, p), owned.lease)
                .await
            {
                Ok(Some(lease)) => owned.lease = lease,
                Ok(None) => bail!("partition {p}: lease lost during a round"),
                Err(e) => tracing::debug!(processor = id, partition = p, "lease: {e}"),
            }
        }
        Ok(())
    }

    /// Purges from the partition stream the events the held partitions'
    /// records include (a failure is retried at the next heartbeat).
    async fn purge_partitions(&mut self) {
        let id = self.spec.id.clone();
        let Some(k) = self.keyed.as_mut() else {
            return;
        };
        for (&p, owned) in k.owned.iter_mut() {
            if owned.committed > owned.purged {
                match self
                    .ctx
                    .broker
                    .purge_partition(&id, p, owned.committed + 1)
                    .await
                {
                    Ok(()) => owned.purged = owned.committed,
                    Err(e) => tracing::debug!(processor = id, partition = p, "purge: {e}"),
                }
            }
        }
    }

    /// Instance 0 puts in the status who holds each partition and what
    /// waits in it, and the step's lag: what the partitioner has yet to
    /// copy plus what waits in the partitions (every few seconds: it reads
    /// a lease per partition).
    pub(super) async fn report_partitions(&mut self, status: &mut Status) {
        let Some(k) = self.keyed.as_mut() else {
            return;
        };
        if self.ctx.instance != 0 || Instant::now() < k.next_report {
            return;
        }
        k.next_report = Instant::now() + (k.every * 3).max(Duration::from_secs(2));
        let id = &self.spec.id;
        let Some(keying) = &self.spec.key else {
            return;
        };
        let backlog = match self.ctx.broker.partition_backlog(id).await {
            Ok(backlog) => backlog,
            Err(e) => {
                tracing::debug!(processor = id, "partition backlog: {e}");
                return;
            }
        };
        let mut report = Vec::with_capacity(keying.partitions as usize);
        for p in 0..keying.partitions {
            let host = self
                .ctx
                .membership
                .holder(&partitions::lease_key(id, p))
                .await
                .unwrap_or_default();
            report.push(PartitionStatus {
                partition: p,
                host,
                lag: backlog.get(&p).copied().unwrap_or(0),
            });
        }
        for r in &report {
            self.ctx
                .metrics
                .partition_lag
                .get_or_create(&crate::metrics::PartitionLabel {
                    processor: id.clone(),
                    partition: r.partition,
                })
                .set(i64::try_from(r.lag).unwrap_or(i64::MAX));
        }
        let mut lag: u64 = report.iter().map(|r| r.lag).sum();
        for (port, flow) in self.spec.inputs.iter().enumerate() {
            if let Ok(waiting) = self
                .ctx
                .broker
                .consumer_lag(flow, &self.spec.consumer(port))
                .await
            {
                lag = lag.saturating_add(waiting);
            }
        }
        status.partitions = report;
        status.lag = Some(lag);
        self.ctx
            .metrics
            .lag
            .get_or_create(&self.label)
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Gives the partitions' leases back (after the last batch is
    /// committed), so that their next owner takes them at once.
    pub(super) async fn release_partitions(&mut self) {
        let Some(k) = self.keyed.as_mut() else {
            return;
        };
        k.consumer = None;
        self.ctx
            .metrics
            .partitions_held
            .get_or_create(&crate::metrics::InstanceLabel {
                processor: self.spec.id.clone(),
                instance: self.ctx.instance,
            })
            .set(0);
        for (p, owned) in std::mem::take(&mut k.owned) {
            self.ctx
                .membership
                .release(&partitions::lease_key(&self.spec.id, p), owned.lease)
                .await;
        }
    }

    /// One round: leases, then a chunk of the held partitions' events, one
    /// call per partition (and input port). Returns whether there was
    /// nothing to do.
    pub(super) async fn keyed_round(&mut self, status: &mut Status) -> Result<bool> {
        self.keep_partitions(status).await?;
        let Some((consumer, held)) = self
            .keyed
            .as_ref()
            .and_then(|k| Some((k.consumer.clone()?, k.owned.len())))
        else {
            self.drain(status).await?;
            return Ok(true);
        };
        let max = self
            .spec
            .limits
            .batch
            .max(1)
            .saturating_mul(held)
            .clamp(1, ROUND);
        let label = format!("the partitions of {}", self.spec.id);
        let mut inputs = super::fetch_from(label.clone(), consumer.clone(), max, None).await?;
        if inputs.is_empty() {
            // Nothing: settle what is in flight, then wait at the broker.
            self.drain(status).await?;
            inputs = super::fetch_from(label, consumer, max, Some(super::IDLE_POLL)).await?;
            if inputs.is_empty() {
                return Ok(true);
            }
        }
        self.process_chunk(inputs, status).await?;
        self.complete_ready(status).await?;
        Ok(false)
    }

    /// Calls the processor on a chunk, partition by partition.
    async fn process_chunk(&mut self, inputs: Vec<Input>, status: &mut Status) -> Result<()> {
        let id = self.spec.id.clone();
        let ports = self.spec.inputs.len();
        let mut by_partition: BTreeMap<u32, Vec<(u32, Input)>> = BTreeMap::new();
        {
            let Some(k) = self.keyed.as_mut() else {
                bail!("not a keyed step");
            };
            for mut input in inputs {
                if input.delivery != k.next_delivery {
                    bail!(
                        "delivery {} from the partitions came after {}: one was lost on the \
                         way; reading the partitions again from their records",
                        input.delivery,
                        k.next_delivery.saturating_sub(1)
                    );
                }
                k.next_delivery += 1;
                let Some((p, port)) = partitions::parse_subject(&id, &input.message.subject) else {
                    bail!(
                        "unexpected subject {} in {id}'s partitions",
                        input.message.subject
                    );
                };
                let Some(owned) = k.owned.get(&p) else {
                    bail!("partition {p} delivered to an instance that does not hold it");
                };
                if input.position <= owned.last || port as usize >= ports {
                    // Its effect is in the partition's state already (a
                    // batch delivered again after a crash); or an input
                    // port the step no longer has.
                    continue;
                }
                if let Some((stream, sequence, subject)) =
                    input.header(ORIGIN).and_then(parse_origin)
                {
                    input.stream = stream;
                    input.sequence = sequence;
                    input.subject = Some(subject);
                }
                if let Some(headers) = &input.message.message.headers {
                    input.message.message.headers = Some(event_headers(headers));
                }
                by_partition.entry(p).or_default().push((port, input));
            }
        }
        // Runs of one partition and one port, in the partition's order.
        let mut runs: Vec<(u32, u32, Vec<Input>)> = Vec::new();
        for (p, events) in by_partition {
            for (port, input) in events {
                match runs.last_mut() {
                    Some((rp, rport, run)) if *rp == p && *rport == port => run.push(input),
                    _ => runs.push((p, port, vec![input])),
                }
            }
        }
        for (p, port, run) in runs {
            // A long round keeps its leases: an owner whose lease ran out
            // stops before it sends or commits anything more.
            self.renew_if_due().await?;
            self.init_outside_partitions().await?;
            let last = run.last().map_or(0, |input| input.position);
            self.swap_partition(p)?;
            if let Some(owned) = self.keyed.as_mut().and_then(|k| k.owned.get_mut(&p)) {
                owned.last = last;
            }
            let handled = self.handle_in(port, run, status, Some((p, last))).await;
            self.swap_partition(p)?;
            handled?;
        }
        Ok(())
    }

    /// After a trap discarded the instance, the next one is initialised
    /// before a partition's state is swapped in: `init`'s writes go to the
    /// step's own state, never into a partition.
    async fn init_outside_partitions(&mut self) -> Result<()> {
        if !matches!(&self.work, Some(Work::Single(p)) if !p.is_live()) {
            return Ok(());
        }
        let Some(mut work) = self.work.take() else {
            bail!("processor instance lost");
        };
        let work = tokio::task::spawn_blocking(move || {
            if let Work::Single(p) = &mut work {
                // A failing init fails the call that follows, as usual.
                let _ = p.ready();
                p.state().take_changes();
            }
            work
        })
        .await
        .map_err(|e| anyhow!("initialising: {e}"))?;
        self.work = Some(work);
        Ok(())
    }

    /// Exchanges the processor's state with partition `p`'s (twice puts
    /// both back).
    fn swap_partition(&mut self, p: u32) -> Result<()> {
        let Some(Work::Single(processor)) = self.work.as_mut() else {
            bail!("processor instance lost");
        };
        let Some(owned) = self.keyed.as_mut().and_then(|k| k.owned.get_mut(&p)) else {
            bail!("partition {p} is not held");
        };
        std::mem::swap(processor.state(), &mut owned.state);
        Ok(())
    }

    /// The record of the partition swapped in, at position `last`.
    pub(super) fn partition_record(&mut self, last: u64) -> Vec<u8> {
        match self.work.as_mut() {
            Some(Work::Single(processor)) => {
                let state = processor.state();
                PartitionRecord::encode(last, state.entries())
            }
            _ => PartitionRecord::encode(last, std::iter::empty()),
        }
    }

    /// Writes partition `p`'s record over the revision this instance last
    /// wrote or read. Another revision there means another instance took
    /// the partition over: this one stops and starts again from the
    /// records (its batch is replayed by whoever owns the partition).
    pub(super) async fn commit_partition(
        &mut self,
        p: u32,
        last: u64,
        record: Vec<u8>,
    ) -> Result<()> {
        let key = partitions::record_key(&self.spec.id, p);
        let state = self.ctx.state.clone();
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(owned) = self.keyed.as_mut().and_then(|k| k.owned.get_mut(&p)) else {
                bail!("partition {p} committed but not held");
            };
            let bytes = bytes::Bytes::from(record.clone());
            let written = if owned.revision == 0 {
                state.create(&key, bytes).await.map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                })
            } else {
                state
                    .update(&key, bytes, owned.revision)
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    })
            };
            match written {
                Ok(revision) => {
                    owned.revision = revision;
                    owned.committed = last;
                    return Ok(());
                }
                Err((true, _)) => bail!(
                    "partition {p}: its record changed under this instance (taken over); \
                     starting again from the stored records"
                ),
                Err((false, e)) if e.to_ascii_lowercase().contains("payload") => bail!(
                    "partition {p}: its record ({} bytes) is larger than the broker takes: \
                     the step keeps too many small entries per partition",
                    record.len()
                ),
                Err((false, e)) => {
                    if *self.stopped.borrow() {
                        bail!("stopped while committing partition {p}: {e}");
                    }
                    tracing::warn!(processor = self.spec.id, "partition {p}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// A keyed signal's tick: once per held partition, on its state.
    pub(super) async fn keyed_tick(&mut self, status: &mut Status) -> Result<()> {
        self.drain(status).await?;
        let held = self
            .keyed
            .as_ref()
            .map(Partitions::held)
            .unwrap_or_default();
        for p in held {
            self.swap_partition(p)?;
            let called = self.call(None, Packer::default()).await;
            let (checked, last, record, changed) = match called {
                Ok((_, result)) => {
                    let checked = result
                        .map_err(|e| e.to_string())
                        .and_then(|o| self.outgoing(&o, None).map_err(|e| e.to_string()));
                    self.settle(checked.is_ok());
                    let changed = !self.take_state_changes().is_empty();
                    let last = self
                        .keyed
                        .as_ref()
                        .and_then(|k| k.owned.get(&p))
                        .map_or(0, |o| o.last);
                    let record = self.partition_record(last);
                    (checked, last, record, changed)
                }
                Err(e) => {
                    let _ = self.swap_partition(p);
                    return Err(e);
                }
            };
            self.swap_partition(p)?;
            match checked {
                Ok(out) => {
                    let n = out.len() as u64;
                    self.store(out).await?;
                    if changed {
                        self.commit_partition(p, last, record).await?;
                    }
                    status.events_out += n;
                    self.ctx
                        .metrics
                        .events_out
                        .get_or_create(&self.label)
                        .inc_by(n);
                }
                Err(e) => {
                    status.errors += 1;
                    status.last_error = Some(format!("tick on partition {p}: {e}"));
                    self.ctx.metrics.errors.get_or_create(&self.label).inc();
                }
            }
        }
        Ok(())
    }
}
