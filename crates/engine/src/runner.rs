//! One running processor: pulls batches from its durable consumers, calls
//! the component, stores every output, persists keyed state, and only then
//! acknowledges the inputs. A crash anywhere before the acknowledgement
//! replays the batch; output message ids derived from each event's
//! `source`+`id` make the replay a no-op in the output streams.

mod partitions;

use super::Context;
use super::fused::{Chain, Link};
use super::logbook::{Entry, Logbook};
use super::metrics::Metrics;
use super::spec::{self, Code, FusedStep, Phase, ProcessorSpec, Status};
use super::traces::{self, HostSpan, KeyValue, Span as _, SpanKind};
use anyhow::{Context as _, Result, anyhow};
use async_nats::jetstream::{self, consumer::PullConsumer};
use flow_abi::{Emit, EventSpans, Packer, View};
use flowd_broker::codec::{self, Origin};
use flowd_broker::logs::Level;
use flowd_broker::{FlowName, Outgoing};
use flowd_core::event::packed;
use flowd_wasm::state::KeyedState;
use flowd_wasm::{CallError, Kind, Outcome, Processor, ProcessorSetup};
use futures::StreamExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest wait for the answer to one pull request.
const FETCH_LIMIT: Duration = Duration::from_secs(10);

/// How long an idle processor's pull request waits at the broker for the
/// next event: it is answered as soon as one is stored, so an idle
/// processor reacts at once and costs a few requests per second.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Batches whose outputs may be on their way to the broker at once. The
/// runner calls the component on the next batch while the broker stores
/// the previous one's outputs; a batch is acknowledged once its outputs
/// (and those of every batch before it) are stored, in input order.
///
/// One, so that outputs keep their input order through broker failures:
/// with two batches' publishes in flight, a leader change can lose the
/// first batch's and store the second's, and sending the first again would
/// store it after the second (`three_hosts_share_a_parallel_step_and_
/// survive_losing_a_host_and_a_broker_node` saw that happen).
const IN_FLIGHT_BATCHES: usize = 1;
/// Output messages in flight at most (a distributor may emit many per
/// input).
const IN_FLIGHT_MESSAGES: usize = 4_096;
/// Output bytes in flight at most (payloads; forwarded events share the
/// input's bytes).
const IN_FLIGHT_BYTES: usize = 64 << 20;

/// A running processor's task.
pub(crate) struct RunnerHandle {
    stop: watch::Sender<bool>,
    update: watch::Sender<ProcessorSpec>,
    task: tokio::task::JoinHandle<()>,
}

impl RunnerHandle {
    /// Asks the runner to stop after its current batch and waits for it.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Hands a fused segment a new spec of the same shape
    /// ([`ProcessorSpec::same_shape`]): between two batches, the runner
    /// replaces the instances of the steps that changed and keeps the rest.
    pub(crate) fn update(&self, spec: ProcessorSpec) {
        let _ = self.update.send(spec);
    }
}

pub(crate) fn spawn(ctx: Context, spec: ProcessorSpec) -> RunnerHandle {
    let (stop, stopped) = watch::channel(false);
    let (update, updates) = watch::channel(spec);
    let task = tokio::spawn(supervise(ctx, updates, stopped));
    RunnerHandle { stop, update, task }
}

/// Runs the processor, restarting it (with back-off) after infrastructure
/// failures such as a lost broker or a component that cannot be loaded.
async fn supervise(
    ctx: Context,
    mut updates: watch::Receiver<ProcessorSpec>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut status = Status::new(Phase::Starting, updates.borrow().generation);
    loop {
        // The newest spec: an in-place update may have come meanwhile.
        let spec = updates.borrow_and_update().clone();
        match Runner::start(&ctx, &spec, &mut status, stopped.clone()).await {
            Ok(mut runner) => {
                backoff = Duration::from_millis(200);
                let result = runner.run(&mut stopped, &mut updates, &mut status).await;
                runner.finish();
                match result {
                    Ok(()) => return,
                    Err(e) => fail(&ctx, &spec, &mut status, &e).await,
                }
            }
            Err(e) => fail(&ctx, &spec, &mut status, &e).await,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
        status.restarts = status.restarts.saturating_add(1);
    }
}

async fn fail(ctx: &Context, spec: &ProcessorSpec, status: &mut Status, e: &anyhow::Error) {
    Logbook::new(ctx.logs.clone(), ctx.host_id.clone(), ctx.instance)
        .failure(Entry {
            level: Level::Warn,
            kind: "failed",
            processor: &spec.id,
            event: None,
            message: format!("processor failed, will restart: {e:#}"),
        })
        .await;
    status.phase = Phase::Failed;
    status.last_error = Some(format!("{e:#}"));
    ctx.write_status(&spec.id, status).await;
}

struct Runner {
    ctx: Context,
    spec: ProcessorSpec,
    /// Its restarts so far: a fused step restarts with its segment.
    restarts: u64,
    /// Set when the runner is asked to stop.
    stopped: watch::Receiver<bool>,
    work: Option<Work>,
    consumers: Vec<(FlowName, PullConsumer)>,
    /// The subject of each output flow.
    subjects: Vec<async_nats::Subject>,
    label: super::metrics::ProcessorLabel,
    last_status: Instant,
    /// The next batch of each input, being fetched while the current one
    /// is processed (only while the input has events).
    prefetch: Vec<Option<tokio::task::JoinHandle<Result<Vec<Input>>>>>,
    /// Processed batches, oldest first, whose outputs are being stored.
    in_flight: VecDeque<InFlight>,
    /// Their output messages and bytes.
    in_flight_messages: usize,
    in_flight_bytes: usize,
    /// Whether an instance runs the baseline compiler's code, to be
    /// restarted on the optimised code once the host has it.
    baseline: bool,
    /// Its failures and its guests' output, for the processor log.
    logbook: Logbook,
    /// The span of the batch being processed, when it is recorded: the
    /// parent of its steps' spans and of the events it creates.
    batch_span: Option<opentelemetry::trace::SpanContext>,
    /// When the last call started and ended.
    last_call: (std::time::SystemTime, std::time::SystemTime),
    /// A keyed step's partitions, owned by this instance.
    keyed: Option<partitions::Partitions>,
    /// A keyed step's partitioner (instance 0 runs it).
    partitioner: Option<tokio::task::JoinHandle<()>>,
}

/// The keyed-state changes of a call: (owner step, key, value or removal).
type StateChanges = Vec<(String, String, Option<Vec<u8>>)>;

/// A processed batch whose outputs are on their way to the broker: what
/// to do once they are stored.
struct InFlight {
    /// The outputs, kept to be sent again should the broker lose them.
    messages: Vec<Outgoing>,
    bytes: usize,
    /// Resolves when every output is stored (`None`: nothing to store).
    stored:
        Option<tokio::task::JoinHandle<Result<flowd_broker::Published, flowd_broker::BrokerError>>>,
    /// Keyed state as the batch left it, persisted before the ack.
    state: StateChanges,
    /// A keyed step's partition and its record as the batch left it,
    /// written (compare-and-set) before the ack.
    commit: Option<(u32, u64, Vec<u8>)>,
    /// The input messages to acknowledge: the last one (a cumulative ack)
    /// or, for instances sharing a consumer, every one.
    acks: Vec<jetstream::Message>,
    events_in: u64,
    written: u64,
    dead_lettered: u64,
    started: Instant,
    /// The batch's span, ended once it is acknowledged.
    span: Option<HostSpan>,
}

impl InFlight {
    fn is_done(&self) -> bool {
        self.stored.as_ref().is_none_or(|s| s.is_finished())
    }
}

/// What a runner calls: one processor, or a fused segment of steps.
enum Work {
    Single(Box<Processor>),
    Chain(Chain),
}

impl Work {
    /// One call. Its keyed-state writes are committed under a savepoint:
    /// the caller [`Work::settle`]s them once it knows whether the outputs
    /// are acceptable.
    fn process(&mut self, port: u32, batch: &flowd_wasm::Batch) -> Result<Outcome, CallError> {
        match self {
            Work::Single(p) => {
                p.ready()?;
                p.state().savepoint();
                p.process(port, batch)
            }
            Work::Chain(c) => c.process(port, batch),
        }
    }

    fn tick(&mut self, now_ms: u64) -> Result<Outcome, CallError> {
        match self {
            Work::Single(p) => {
                p.ready()?;
                p.state().savepoint();
                p.tick(now_ms)
            }
            Work::Chain(c) => c.tick(now_ms),
        }
    }

    /// Ends the last call's savepoint: its state stays when its outputs
    /// were accepted, and is put back otherwise (a retried batch then sees
    /// the state it saw the first time, and a dead-lettered one leaves none
    /// behind).
    fn settle(&mut self, accepted: bool) {
        let settle = |state: &mut flowd_wasm::state::KeyedState| {
            if accepted {
                state.release();
            } else {
                state.revert();
            }
        };
        match self {
            Work::Single(p) => settle(p.state()),
            Work::Chain(c) => c.links.iter_mut().for_each(|l| settle(l.processor.state())),
        }
    }

    /// Whether an instance runs the baseline compiler's code.
    fn runs_baseline(&self) -> bool {
        self.code() == Code::Baseline
    }

    /// The code the instances run: baseline while any runs it.
    fn code(&self) -> Code {
        match self {
            Work::Single(p) => Work::code_of(p),
            Work::Chain(c) => c
                .links
                .iter()
                .map(|l| Work::code_of(&l.processor))
                .min_by_key(|c| *c == Code::Optimised)
                .unwrap_or(Code::Optimised),
        }
    }

    /// The step whose failure failed the last call (`None`: the
    /// processor itself).
    fn failed_step(&self) -> Option<&str> {
        match self {
            Work::Single(_) => None,
            Work::Chain(c) => c.failed.map(|i| c.links[i].id.as_str()),
        }
    }

    /// Takes what each step's guest said, by step id (`None`: the
    /// processor itself).
    fn take_said(&self) -> Vec<(Option<&str>, flowd_wasm::Said)> {
        match self {
            Work::Single(p) => vec![(None, p.take_said())],
            Work::Chain(c) => c
                .links
                .iter()
                .map(|l| (Some(l.id.as_str()), l.processor.take_said()))
                .collect(),
        }
    }

    fn code_of(processor: &Processor) -> Code {
        if processor.component().is_optimised() {
            Code::Optimised
        } else {
            Code::Baseline
        }
    }
}

/// Instantiates one step's component with its state from the broker.
async fn instantiate(
    ctx: &Context,
    id: &str,
    component: &str,
    setup: ProcessorSetup,
    limits: flowd_wasm::Limits,
) -> Result<Processor> {
    let bytes = ctx.component_bytes(component).await?;
    let (component, source, _) = super::artifacts::load_quick(&ctx.host, &ctx.artifacts, bytes)
        .await
        .with_context(|| format!("step {id}"))?;
    match source {
        super::artifacts::Source::Shared => {
            tracing::info!(processor = id, "loaded the component another host compiled");
        }
        super::artifacts::Source::Baseline => {
            tracing::info!(
                processor = id,
                "starting on baseline code while the optimised code compiles"
            );
        }
        _ => {}
    }
    let host = ctx.host.clone();
    let state = ctx.load_state(id).await?;
    tokio::task::spawn_blocking(move || -> Result<Processor> {
        let state = KeyedState::restore(state, limits.state);
        Ok(host.create_with_state(component, setup, limits, state)?)
    })
    .await?
    .with_context(|| format!("step {id}"))
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// The links of a fused segment, from its spec.
async fn chain(ctx: &Context, spec: &ProcessorSpec) -> Result<Chain> {
    let mut links = Vec::with_capacity(spec.fused.len() + 1);
    let root = instantiate(
        ctx,
        &spec.id,
        &spec.component,
        root_setup(spec),
        spec.limits.wasm(),
    )
    .await?;
    links.push(Link::new(
        spec.id.clone(),
        root,
        spec.ports.clone(),
        spec.generation,
    ));
    for step in &spec.fused {
        links.push(fused_link(ctx, step).await?);
    }
    Ok(Chain {
        links,
        failed: None,
        calls: Vec::new(),
    })
}

fn root_setup(spec: &ProcessorSpec) -> ProcessorSetup {
    ProcessorSetup {
        name: spec.id.clone(),
        config: spec.config.clone(),
        inputs: spec.own_inputs(),
        outputs: spec.own_outputs(),
    }
}

/// A fused step's setup: its component sees the pipeline's edge names.
fn step_setup(step: &FusedStep) -> ProcessorSetup {
    ProcessorSetup {
        name: step.id.clone(),
        config: step.config.clone(),
        inputs: vec![step.input_name.clone()],
        outputs: step.output_names.clone(),
    }
}

/// Whether `processor` runs baseline code that `host` has optimised since.
fn upgradable(host: &flowd_wasm::Host, processor: &Processor) -> bool {
    let component = processor.component();
    !component.is_optimised() && host.optimised(component.digest()).is_some()
}

async fn fused_link(ctx: &Context, step: &FusedStep) -> Result<Link> {
    let setup = step_setup(step);
    let processor = instantiate(ctx, &step.id, &step.component, setup, step.limits.wasm()).await?;
    Ok(Link::new(
        step.id.clone(),
        processor,
        step.ports.clone(),
        step.generation,
    ))
}

/// One stored input message, with what is needed to pack and acknowledge it.
struct Input {
    message: jetstream::Message,
    /// The stream and sequence of the event in its flow (for a keyed
    /// step's copy, its input flow's, from [`super::keyed::ORIGIN`]).
    stream: String,
    sequence: u64,
    /// The subject it was published on in its flow, when not the
    /// message's own (a keyed step's copy).
    subject: Option<String>,
    /// The message's sequence in the stream it was pulled from.
    position: u64,
    /// Its delivery sequence in the consumer it was pulled through.
    delivery: u64,
}

impl Input {
    /// The CloudEvents id of the stored event (or its sequence, for a
    /// message that is not one), for logs.
    fn header(&self, name: &str) -> Option<&str> {
        self.message.headers.as_ref()?.get(name).map(|v| v.as_str())
    }

    /// Whether the event is a dead letter's replay meant for another
    /// processor reading the same flow (which skips it).
    fn replayed_for_other(&self, me: &str, flow: &str) -> bool {
        self.header("ce-replayfor").is_some_and(|v| {
            let (processor, on) = v.split_once('@').unwrap_or((v, ""));
            on == flow && processor != me
        })
    }

    fn event_id(&self) -> Option<String> {
        let headers = self.message.headers.as_ref();
        let id = headers
            .and_then(|h| h.get("ce-id"))
            .map(|v| v.as_str().to_owned());
        Some(id.unwrap_or_else(|| format!("#{}", self.sequence)))
    }

    fn pack_into(&self, packer: &mut Packer) -> u32 {
        codec::pack_message(
            packer,
            self.message.headers.as_ref(),
            &self.message.payload,
            Origin {
                stream: &self.stream,
                sequence: self.sequence,
                subject: self.subject.as_deref().unwrap_or(&self.message.subject),
            },
        )
    }
}

/// The spans one call made for the contexts its created events came
/// from, by that context.
#[derive(Default)]
struct CreatedIn {
    spans: std::collections::HashMap<
        (opentelemetry::trace::TraceId, opentelemetry::trace::SpanId),
        opentelemetry::trace::SpanContext,
    >,
}

/// A failing input event, with why.
struct DeadLetter {
    index: usize,
    error: String,
    /// The fused step that failed on it (`None`: the processor itself).
    step: Option<String>,
}

impl Runner {
    async fn start(
        ctx: &Context,
        spec: &ProcessorSpec,
        status: &mut Status,
        stopped: watch::Receiver<bool>,
    ) -> Result<Runner> {
        status.phase = Phase::Starting;
        ctx.write_status(&spec.id, status).await;
        let work = if spec.is_relay() {
            None
        } else if spec.fused.is_empty() {
            let setup = root_setup(spec);
            Some(Work::Single(Box::new(
                instantiate(ctx, &spec.id, &spec.component, setup, spec.limits.wasm()).await?,
            )))
        } else {
            Some(Work::Chain(chain(ctx, spec).await?))
        };
        ctx.broker
            .ensure_flow(&spec.dead_letter, &Default::default())
            .await?;
        let mut consumers = Vec::new();
        // Room for the batches in flight, the one being processed and the
        // one being fetched.
        let pending = i64::try_from(
            spec.limits
                .batch
                .max(1)
                .saturating_mul(IN_FLIGHT_BATCHES + 2),
        )
        .unwrap_or(i64::MAX);
        let keyed = match &spec.key {
            Some(keying) => Some(partitions::Partitions::new(ctx, spec, keying)?),
            None => None,
        };
        let inputs = if keyed.is_some() {
            &[][..]
        } else {
            &spec.inputs[..]
        };
        for (port, flow) in inputs.iter().enumerate() {
            let (name, previous) = (spec.consumer(port), spec.other_consumer(port));
            let consumer = if spec.shares_inputs() {
                let pending = pending.saturating_mul(i64::from(spec.parallelism));
                ctx.broker
                    .shared_consumer(flow, &name, pending, Some(&previous))
                    .await
            } else {
                ctx.broker
                    .durable_consumer(flow, &name, pending, Some(&previous))
                    .await
            }
            .with_context(|| format!("input {flow}"))?;
            consumers.push((flow.clone(), consumer));
        }
        status.phase = Phase::Running;
        status.generation = spec.generation;
        status.started_ms = now_ms();
        status.last_error = None;
        status.code = work.as_ref().map(Work::code);
        ctx.write_status(&spec.id, status).await;
        tracing::info!(processor = spec.id, kind = %spec.kind, "processor running");
        let baseline = work.as_ref().is_some_and(Work::runs_baseline);
        let partitioner = match &spec.key {
            Some(keying) if ctx.instance == 0 => Some(tokio::spawn(super::keyed::run_partitioner(
                ctx.clone(),
                spec.clone(),
                keying.clone(),
                stopped.clone(),
            ))),
            _ => None,
        };
        Ok(Runner {
            ctx: ctx.clone(),
            spec: spec.clone(),
            restarts: status.restarts,
            stopped,
            work,
            consumers,
            subjects: spec.outputs.iter().map(|f| f.subject().into()).collect(),
            label: Metrics::label(&spec.id),
            last_status: Instant::now(),
            prefetch: spec.inputs.iter().map(|_| None).collect(),
            in_flight: VecDeque::new(),
            in_flight_messages: 0,
            in_flight_bytes: 0,
            baseline,
            logbook: Logbook::new(ctx.logs.clone(), ctx.host_id.clone(), ctx.instance),
            batch_span: None,
            last_call: (std::time::SystemTime::now(), std::time::SystemTime::now()),
            keyed,
            partitioner,
        })
    }

    /// The fused step whose failure failed the last call (`None`: the
    /// processor itself).
    fn failed_step(&self) -> Option<String> {
        self.work
            .as_ref()
            .and_then(Work::failed_step)
            .map(str::to_owned)
    }

    /// Restarts the instances that run baseline code on the optimised
    /// code, once the host has it: between two batches, after what is in
    /// flight is stored and the state persisted, each with its state from
    /// the broker (as an in-place update does).
    async fn upgrade(&mut self, status: &mut Status) -> Result<()> {
        let host = self.ctx.host.clone();
        let ready = match &self.work {
            Some(Work::Single(p)) => upgradable(&host, p),
            Some(Work::Chain(c)) => c.links.iter().any(|l| upgradable(&host, &l.processor)),
            None => false,
        };
        if !ready {
            return Ok(());
        }
        self.drain(status).await?;
        let spec = self.spec.clone();
        match self.work.as_mut() {
            Some(Work::Single(p)) => {
                let setup = root_setup(&spec);
                let fresh = instantiate(
                    &self.ctx,
                    &spec.id,
                    &spec.component,
                    setup,
                    spec.limits.wasm(),
                )
                .await?;
                let _ = std::mem::replace(p.as_mut(), fresh).teardown();
            }
            Some(Work::Chain(chain)) => {
                for (i, link) in chain.links.iter_mut().enumerate() {
                    if !upgradable(&host, &link.processor) {
                        continue;
                    }
                    let (component, setup, limits) = match i.checked_sub(1) {
                        None => (&spec.component, root_setup(&spec), spec.limits.wasm()),
                        Some(j) => {
                            let step = &spec.fused[j];
                            (&step.component, step_setup(step), step.limits.wasm())
                        }
                    };
                    let fresh = instantiate(&self.ctx, &link.id, component, setup, limits).await?;
                    let _ = std::mem::replace(&mut link.processor, fresh).teardown();
                }
            }
            None => {}
        }
        self.baseline = self.work.as_ref().is_some_and(Work::runs_baseline);
        status.code = self.work.as_ref().map(Work::code);
        self.ctx.write_status(&spec.id, status).await;
        self.write_link_statuses(Phase::Running).await;
        tracing::info!(processor = spec.id, "now running the optimised code");
        Ok(())
    }

    /// Calls teardown and drops the instances. Batches still in flight are
    /// not acknowledged: they are delivered again to whoever runs next.
    fn finish(&mut self) {
        for fetch in self.prefetch.iter_mut().filter_map(Option::take) {
            fetch.abort();
        }
        if let Some(partitioner) = self.partitioner.take() {
            partitioner.abort();
        }
        self.in_flight.clear();
        match self.work.take() {
            Some(Work::Single(p)) => {
                if let Err(e) = p.teardown() {
                    tracing::debug!(processor = self.spec.id, "teardown: {e}");
                }
            }
            Some(Work::Chain(c)) => c.teardown(),
            None => {}
        }
    }

    /// Applies a same-shape spec of a fused segment: the steps whose
    /// component, configuration or limits changed get a new instance (with
    /// their state from the broker, where the last batch left it); the
    /// others keep running as they are.
    async fn apply(&mut self, new: ProcessorSpec, status: &mut Status) -> Result<()> {
        // The old steps' batches are stored and their state persisted
        // before any instance is replaced.
        self.drain(status).await?;
        let Some(Work::Chain(chain)) = self.work.as_mut() else {
            return Err(anyhow!(
                "an in-place update reached a runner without fused steps"
            ));
        };
        let root_changed = self.spec.component != new.component
            || self.spec.config != new.config
            || self.spec.limits != new.limits;
        if root_changed {
            let processor = instantiate(
                &self.ctx,
                &new.id,
                &new.component,
                root_setup(&new),
                new.limits.wasm(),
            )
            .await?;
            let old = std::mem::replace(&mut chain.links[0].processor, processor);
            let _ = old.teardown();
            chain.links[0].started_ms = now_ms();
            status.started_ms = chain.links[0].started_ms;
            tracing::info!(processor = new.id, "step restarted in place");
        }
        chain.links[0].generation = new.generation;
        status.generation = new.generation;
        for (i, (old, step)) in self.spec.fused.iter().zip(&new.fused).enumerate() {
            let link = &mut chain.links[i + 1];
            if !old.same_work(step) {
                let fresh = fused_link(&self.ctx, step).await?;
                let previous = std::mem::replace(link, fresh);
                let _ = previous.processor.teardown();
                tracing::info!(processor = step.id, "step restarted in place");
            }
            link.generation = step.generation;
        }
        self.spec = new;
        self.baseline = self.work.as_ref().is_some_and(Work::runs_baseline);
        status.code = self.work.as_ref().map(Work::code);
        self.write_link_statuses(Phase::Running).await;
        Ok(())
    }

    /// The processor's own status, with the events waiting at its inputs.
    /// In a fused segment the segment's first step is the processor: its
    /// counters are that step's own (what it emitted, its errors and dead
    /// letters), not the segment's.
    async fn write_own_status(&mut self, status: &mut Status) {
        if self.keyed.is_some() {
            self.report_partitions(status).await;
            if self.ctx.instance == 0 {
                self.ctx.write_status(&self.spec.id, status).await;
            }
            return;
        }
        let mut lag = 0u64;
        let mut known = !self.consumers.is_empty();
        for (_, consumer) in &self.consumers {
            match consumer.get_info().await {
                Ok(info) => {
                    lag = lag
                        .saturating_add(info.num_pending)
                        .saturating_add(info.num_ack_pending as u64);
                }
                Err(_) => known = false,
            }
        }
        status.lag = known.then_some(lag);
        if let Some(lag) = status.lag {
            self.ctx
                .metrics
                .lag
                .get_or_create(&self.label)
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
        let mut own = status.clone();
        if let Some(Work::Chain(chain)) = &self.work
            && let Some(first) = chain.links.first()
        {
            own.events_out = first.events_out;
            own.errors = first.errors;
            own.dead_lettered = first.dead_lettered;
        }
        self.ctx.write_status(&self.spec.id, &own).await;
    }

    /// The status of each fused step (the segment's own is `status`).
    async fn write_link_statuses(&mut self, phase: Phase) {
        let Some(Work::Chain(chain)) = &self.work else {
            return;
        };
        // Collected first: a link holds a processor, which is not `Sync`.
        let statuses: Vec<(String, Status)> = chain
            .links
            .iter()
            .skip(1)
            .map(|link| {
                (
                    link.id.clone(),
                    Status {
                        phase,
                        generation: link.generation,
                        events_in: link.events_in,
                        events_out: link.events_out,
                        errors: link.errors,
                        dead_lettered: link.dead_lettered,
                        last_error: None,
                        started_ms: link.started_ms,
                        updated_ms: 0,
                        code: Some(Work::code_of(&link.processor)),
                        lag: None,
                        partitions: Vec::new(),
                        restarts: self.restarts,
                    },
                )
            })
            .collect();
        for (id, status) in statuses {
            self.ctx.write_status(&id, &status).await;
        }
    }

    async fn run(
        &mut self,
        stopped: &mut watch::Receiver<bool>,
        updates: &mut watch::Receiver<ProcessorSpec>,
        status: &mut Status,
    ) -> Result<()> {
        self.write_link_statuses(Phase::Running).await;
        let tick = Duration::from_millis(self.spec.limits.tick_ms.max(10));
        let mut next_tick = Instant::now() + tick;
        // Idle polling backs off from 1 ms to 50 ms, so a busy chain reacts
        // fast and an idle processor costs a few requests per second.
        let mut idle_wait = Duration::from_millis(1);
        // A dropped handle (its sender gone) counts as a stop.
        while !*stopped.borrow() && stopped.has_changed().is_ok() {
            if updates.has_changed().unwrap_or(false) {
                let new = updates.borrow_and_update().clone();
                self.apply(new, status).await?;
            }
            if self.baseline {
                self.upgrade(status).await?;
            }
            if self.keyed.is_some() {
                let idle = self.keyed_round(status).await?;
                if self.spec.kind == Kind::Signal && Instant::now() >= next_tick {
                    next_tick = Instant::now() + tick;
                    self.keyed_tick(status).await?;
                }
                if self.last_status.elapsed() > Duration::from_millis(500) {
                    self.last_status = Instant::now();
                    self.write_own_status(status).await;
                }
                if idle {
                    tokio::select! {
                        _ = tokio::time::sleep(idle_wait) => {}
                        _ = stopped.changed() => {}
                    }
                    idle_wait = (idle_wait * 2).min(Duration::from_millis(20));
                } else {
                    idle_wait = Duration::from_millis(1);
                }
                continue;
            }
            let mut idle = true;
            for port in 0..self.consumers.len() {
                let inputs = self.next_batch(port).await?;
                if inputs.is_empty() {
                    continue;
                }
                idle = false;
                self.handle(port as u32, inputs, status).await?;
            }
            self.complete_ready(status).await?;
            if self.spec.kind == Kind::Signal && Instant::now() >= next_tick {
                next_tick = Instant::now() + tick;
                self.tick(status).await?;
            }
            if self.last_status.elapsed() > Duration::from_millis(500) {
                self.last_status = Instant::now();
                self.write_own_status(status).await;
                self.write_link_statuses(Phase::Running).await;
            }
            if idle {
                // Nothing new: what is in flight is finished first, so
                // that an idle processor holds no unacknowledged batch.
                self.drain(status).await?;
                if self.consumers.len() == 1 && self.spec.kind != Kind::Signal {
                    // One input: wait at the broker for its next event (a
                    // long poll, answered as soon as one is stored), then
                    // take what else is there.
                    let mut inputs = self.fetch_task(0, 1, Some(IDLE_POLL)).await?;
                    let room = self.spec.limits.batch.max(1).saturating_sub(1);
                    if !inputs.is_empty() && room > 0 {
                        inputs.extend(self.fetch_task(0, room, None).await?);
                    }
                    if !inputs.is_empty() {
                        self.handle(0, inputs, status).await?;
                    }
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(idle_wait) => {}
                    _ = stopped.changed() => {}
                }
                idle_wait = (idle_wait * 2).min(Duration::from_millis(50));
            } else {
                idle_wait = Duration::from_millis(1);
            }
        }
        self.drain(status).await?;
        // The partitioner finishes the chunk it copies (stored and
        // acknowledged) rather than being cut off between the two.
        if let Some(partitioner) = self.partitioner.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), partitioner).await;
        }
        self.release_partitions().await;
        status.phase = Phase::Paused;
        self.write_own_status(status).await;
        self.write_link_statuses(Phase::Paused).await;
        Ok(())
    }

    /// The next batch of input `port`: the one fetched meanwhile, if any,
    /// else a fresh fetch. While the input has events, the batch after it
    /// is fetched at once, during this one's call and stores.
    async fn next_batch(&mut self, port: usize) -> Result<Vec<Input>> {
        let inputs = match self.prefetch[port].take() {
            Some(fetch) => fetch.await.map_err(|e| anyhow!("fetching: {e}"))??,
            None => self.fetch_task(port, self.spec.limits.batch, None).await?,
        };
        if !inputs.is_empty() {
            let next = self.fetch_task(port, self.spec.limits.batch, None);
            self.prefetch[port] = Some(tokio::spawn(next));
        }
        Ok(inputs)
    }

    /// One batch from input `port`. A pull request whose answer never
    /// comes (lost while the broker restarted) would wait forever: past
    /// `FETCH_LIMIT` it fails, and the supervisor restarts the runner from
    /// the acknowledgement floor.
    ///
    /// Up to `max` events; with `wait`, the broker holds the request that
    /// long for them to come, else it answers at once with what it has.
    fn fetch_task(
        &self,
        port: usize,
        max: usize,
        wait: Option<Duration>,
    ) -> impl std::future::Future<Output = Result<Vec<Input>>> + Send + 'static + use<> {
        let (flow, consumer) = self.consumers[port].clone();
        fetch_from(flow.to_string(), consumer, max, wait)
    }

    fn pack(inputs: &[Input], group: &[usize]) -> Packer {
        // The data plus room for the attributes: one allocation.
        let bytes = group
            .iter()
            .map(|&i| inputs[i].message.payload.len().saturating_add(256))
            .fold(0usize, usize::saturating_add);
        let mut packer = Packer::with_capacity(group.len(), bytes);
        for &i in group {
            inputs[i].pack_into(&mut packer);
        }
        packer
    }

    /// Calls the component on `packer` in a blocking thread.
    async fn call(
        &mut self,
        port: Option<u32>,
        packer: Packer,
    ) -> Result<(Packer, Result<Outcome, CallError>)> {
        if self.spec.is_relay() {
            // The relay forwards every input unchanged, natively.
            let n = packer.events.len() / flow_abi::EVENT_WORDS;
            let outcome = Outcome {
                created: flowd_wasm::Batch {
                    bytes: Vec::new(),
                    events: Vec::new(),
                    extensions: Vec::new(),
                },
                emits: (0..n as u32).map(|i| Emit::Forward(i).to_word()).collect(),
                ports: None,
            };
            return Ok((packer, Ok(outcome)));
        }
        let mut work = self
            .work
            .take()
            .ok_or_else(|| anyhow!("processor instance lost"))?;
        let call_started = std::time::SystemTime::now();
        let (work, packer, result) = tokio::task::spawn_blocking(move || {
            let batch = flowd_wasm::Batch {
                bytes: packer.bytes,
                events: packer.events,
                extensions: packer.extensions,
            };
            let result = match port {
                Some(port) => work.process(port, &batch),
                None => work.tick(now_ms()),
            };
            let packer = Packer {
                bytes: batch.bytes,
                events: batch.events,
                extensions: batch.extensions,
            };
            (work, packer, result)
        })
        .await
        .map_err(|e| anyhow!("processor call panicked: {e}"))?;
        self.last_call = (call_started, std::time::SystemTime::now());
        if let (Some(batch), Work::Chain(chain)) = (&self.batch_span, &work) {
            self.step_spans(batch, chain);
        }
        for (step, said) in work.take_said() {
            if !said.lines.is_empty() || said.dropped > 0 {
                let step = step.unwrap_or(&self.spec.id);
                self.logbook.said(step, said).await;
            }
        }
        self.work = Some(work);
        Ok((packer, result))
    }

    /// Processes one fetched batch from input `port`: call (with retries
    /// and isolation of failing events), store outputs and dead letters,
    /// persist state, acknowledge.
    async fn handle(&mut self, port: u32, inputs: Vec<Input>, status: &mut Status) -> Result<()> {
        self.handle_in(port, inputs, status, None).await
    }

    /// [`Runner::handle`], for a keyed step's partition with `keyed`: the
    /// partition and the position its record takes (the state is the
    /// partition's, swapped in; nothing is acknowledged: the record is the
    /// position).
    async fn handle_in(
        &mut self,
        port: u32,
        mut inputs: Vec<Input>,
        status: &mut Status,
        keyed: Option<(u32, u64)>,
    ) -> Result<()> {
        let started = Instant::now();
        let n = inputs.len();
        self.ctx
            .metrics
            .events_in
            .get_or_create(&self.label)
            .inc_by(n as u64);
        status.events_in += n as u64;

        let mut outgoing = Vec::new();
        let mut dead = Vec::new();
        let flow = self
            .spec
            .inputs
            .get(port as usize)
            .map(FlowName::as_str)
            .unwrap_or_default();
        let group: Vec<usize> = (0..n)
            .filter(|&i| !inputs[i].replayed_for_other(&self.spec.id, flow))
            .collect();
        let mut span = self.batch_span_for(flow, &inputs);
        self.batch_span = span.as_ref().and_then(traces::recorded);
        let mut work: VecDeque<Vec<usize>> = VecDeque::new();
        if !group.is_empty() {
            work.push_back(group);
        }
        while let Some(group) = work.pop_front() {
            match self.attempt(port, &mut inputs, &group, status).await? {
                Ok(out) => outgoing.extend(out),
                Err(e) => match e.event_index().map(|k| k as usize) {
                    Some(k) if k < group.len() && group.len() > 1 => {
                        dead.push(DeadLetter {
                            index: group[k],
                            error: failure_text(&e, &inputs, &group),
                            step: self.failed_step(),
                        });
                        let rest: Vec<usize> = group
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| *i != k)
                            .map(|(_, g)| *g)
                            .collect();
                        work.push_front(rest);
                    }
                    _ if group.len() > 1 => {
                        for single in group.into_iter().rev() {
                            work.push_front(vec![single]);
                        }
                    }
                    _ => dead.push(DeadLetter {
                        index: group[0],
                        error: failure_text(&e, &inputs, &group),
                        step: self.failed_step(),
                    }),
                },
            }
        }
        let dead_count = dead.len() as u64;
        if let Some(span) = &mut span
            && let Some(first) = dead.first()
        {
            span.set_status(traces::Status::error(traces::bounded(format!(
                "{dead_count} dead-lettered, first {}: {}",
                inputs[first.index].event_id().unwrap_or_default(),
                first.error
            ))));
        }
        self.batch_span = None;
        for letter in &dead {
            outgoing.push(self.dead_letter(
                port,
                &inputs[letter.index],
                &letter.error,
                letter.step.as_deref(),
            ));
            let step = letter.step.as_deref().unwrap_or(&self.spec.id).to_owned();
            if let Some(Work::Chain(chain)) = &mut self.work {
                chain.dead_lettered_at(&step);
            }
            self.logbook
                .failure(Entry {
                    level: Level::Error,
                    kind: "dead-letter",
                    processor: &step,
                    event: inputs[letter.index].event_id(),
                    message: format!(
                        "dead-lettered to {}: {}",
                        self.spec.dead_letter, letter.error
                    ),
                })
                .await;
        }
        let written = outgoing.len() as u64 - dead_count;
        let mut state = self.take_state_changes();
        let mut commit = None;
        if let Some((partition, last)) = keyed {
            // The partition's whole record is written, not the changes.
            state.clear();
            commit = Some((partition, last, self.partition_record(last)));
            let bytes = outgoing.iter().map(|m| m.payload.len()).sum();
            return self
                .send(
                    InFlight {
                        messages: outgoing,
                        bytes,
                        stored: None,
                        state,
                        commit,
                        acks: Vec::new(),
                        events_in: n as u64,
                        written,
                        dead_lettered: dead_count,
                        started,
                        span,
                    },
                    status,
                )
                .await;
        }
        // A single instance's consumer acknowledges cumulatively: the last
        // event acknowledges the batch. Instances sharing a consumer
        // acknowledge each event (see `Broker::shared_consumer`).
        let acks = if self.spec.shares_inputs() {
            inputs.into_iter().map(|i| i.message).collect()
        } else {
            inputs
                .into_iter()
                .last()
                .map(|i| i.message)
                .into_iter()
                .collect()
        };
        let bytes = outgoing.iter().map(|m| m.payload.len()).sum();
        self.send(
            InFlight {
                messages: outgoing,
                bytes,
                stored: None,
                state,
                commit,
                acks,
                events_in: n as u64,
                written,
                dead_lettered: dead_count,
                started,
                span,
            },
            status,
        )
        .await
    }

    /// Sends a processed batch's outputs and queues it to be acknowledged
    /// once they are stored, after the batches before it. The queue is
    /// bounded ([`IN_FLIGHT_BATCHES`], [`IN_FLIGHT_MESSAGES`],
    /// [`IN_FLIGHT_BYTES`]): past it, the oldest batch is waited for.
    async fn send(&mut self, mut batch: InFlight, status: &mut Status) -> Result<()> {
        while !self.in_flight.is_empty()
            && (self.in_flight.len() >= IN_FLIGHT_BATCHES
                || self.in_flight_messages + batch.messages.len() > IN_FLIGHT_MESSAGES
                || self.in_flight_bytes + batch.bytes > IN_FLIGHT_BYTES)
        {
            self.complete_oldest(status).await?;
        }
        if !batch.messages.is_empty() {
            match self.ctx.broker.send(&batch.messages).await {
                Ok(sending) => batch.stored = Some(tokio::spawn(sending.stored())),
                Err(e) => {
                    // The broker is away: what came before is stored
                    // first, then this batch, waiting as long as it takes.
                    tracing::debug!(processor = self.spec.id, "sending outputs: {e}");
                    self.drain(status).await?;
                    self.store(batch.messages.clone()).await?;
                }
            }
        }
        self.in_flight_messages += batch.messages.len();
        self.in_flight_bytes += batch.bytes;
        self.in_flight.push_back(batch);
        Ok(())
    }

    /// Completes the batches at the front of the queue whose outputs are
    /// stored, without waiting.
    async fn complete_ready(&mut self, status: &mut Status) -> Result<()> {
        while self.in_flight.front().is_some_and(InFlight::is_done) {
            self.complete_oldest(status).await?;
        }
        Ok(())
    }

    /// Completes every batch in flight.
    async fn drain(&mut self, status: &mut Status) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.complete_oldest(status).await?;
        }
        Ok(())
    }

    /// Waits until the oldest batch's outputs are stored (sending them
    /// again if the broker lost them: their message ids make a second
    /// copy a no-op), persists its state and acknowledges its inputs.
    async fn complete_oldest(&mut self, status: &mut Status) -> Result<()> {
        let Some(batch) = self.in_flight.pop_front() else {
            return Ok(());
        };
        self.in_flight_messages -= batch.messages.len();
        self.in_flight_bytes -= batch.bytes;
        if let Some(stored) = batch.stored {
            let failure = match stored.await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failure {
                tracing::debug!(processor = self.spec.id, "outputs not confirmed: {e}");
                self.store(batch.messages).await?;
            }
        }
        self.persist_state(batch.state).await?;
        if let Some((partition, last, record)) = batch.commit {
            self.commit_partition(partition, last, record).await?;
        }
        // A lost ack only means a redelivery, which the output message ids
        // turn into a no-op.
        for message in &batch.acks {
            let _ = message.ack().await;
        }
        // The batch's span lasts until its outputs are stored and its
        // inputs acknowledged.
        if let Some(mut span) = batch.span {
            span.set_attribute(KeyValue::new("flowd.events_out", batch.written as i64));
            span.set_attribute(KeyValue::new(
                "flowd.dead_letters",
                batch.dead_lettered as i64,
            ));
            span.end();
        }
        self.ctx
            .processed
            .fetch_add(batch.events_in, std::sync::atomic::Ordering::Relaxed);
        let m = &self.ctx.metrics;
        m.events_out
            .get_or_create(&self.label)
            .inc_by(batch.written);
        m.dead_lettered
            .get_or_create(&self.label)
            .inc_by(batch.dead_lettered);
        m.batch_seconds
            .get_or_create(&self.label)
            .observe(batch.started.elapsed().as_secs_f64());
        status.events_out += batch.written;
        status.dead_lettered += batch.dead_lettered;
        Ok(())
    }

    /// Calls the processor on `group` of `inputs`, retrying with back-off;
    /// returns the outputs, or the last error after `max_attempts`.
    async fn attempt(
        &mut self,
        port: u32,
        inputs: &mut [Input],
        group: &[usize],
        status: &mut Status,
    ) -> Result<Result<Vec<Outgoing>, CallError>> {
        let attempts = self.spec.limits.max_attempts.max(1);
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(10 << attempt.min(8))).await;
            }
            let packer = Self::pack(inputs, group);
            let (packer, result) = self.call(Some(port), packer).await?;
            let checked = result.and_then(|outcome| {
                self.outgoing(&outcome, Some((&mut *inputs, group, &packer)))
                    .map_err(CallError::InvalidOutput)
            });
            self.settle(checked.is_ok());
            let failure = match checked {
                Ok(out) => return Ok(Ok(out)),
                Err(e) => e,
            };
            self.ctx.metrics.errors.get_or_create(&self.label).inc();
            status.errors += 1;
            let text = failure_text(&failure, inputs, group);
            status.last_error = Some(text.clone());
            let step = self.failed_step().unwrap_or_else(|| self.spec.id.clone());
            let kind = match &failure {
                CallError::Deadline { .. } => "deadline",
                CallError::Trap { .. } => "trap",
                _ => "error",
            };
            let event = failure
                .event_index()
                .and_then(|k| group.get(k as usize))
                .or_else(|| group.first().filter(|_| group.len() == 1))
                .and_then(|&i| inputs[i].event_id());
            let events = if group.len() == 1 {
                "1 event".to_owned()
            } else {
                format!("{} events", group.len())
            };
            let then = if attempt + 1 < attempts {
                "retrying"
            } else {
                "giving up"
            };
            self.logbook
                .failure(Entry {
                    level: Level::Warn,
                    kind,
                    processor: &step,
                    event,
                    message: format!(
                        "call on {events} failed (attempt {} of {attempts}, {then}): {text}",
                        attempt + 1
                    ),
                })
                .await;
            last = Some(failure);
        }
        Ok(Err(last.unwrap_or(CallError::Instantiate {
            reason: "no attempt made".into(),
        })))
    }

    async fn tick(&mut self, status: &mut Status) -> Result<()> {
        // State is persisted in call order: the batches' first.
        self.drain(status).await?;
        let (_, result) = self.call(None, Packer::default()).await?;
        let checked = result
            .map_err(|e| e.to_string())
            .and_then(|o| self.outgoing(&o, None).map_err(|e| e.to_string()));
        self.settle(checked.is_ok());
        match checked {
            Ok(out) => {
                let n = out.len() as u64;
                self.store(out).await?;
                let changes = self.take_state_changes();
                self.persist_state(changes).await?;
                status.events_out += n;
                self.ctx
                    .metrics
                    .events_out
                    .get_or_create(&self.label)
                    .inc_by(n);
            }
            Err(e) => {
                status.errors += 1;
                status.last_error = Some(e);
                self.ctx.metrics.errors.get_or_create(&self.label).inc();
            }
        }
        Ok(())
    }

    /// Settles the last call's keyed state (see [`Work::settle`]).
    fn settle(&mut self, accepted: bool) {
        if let Some(work) = self.work.as_mut() {
            work.settle(accepted);
        }
    }

    /// The messages that store what a call emitted, in order.
    ///
    /// A stored CloudEvent forwarded unchanged is stored again as it is:
    /// its headers are moved out of the input (cloned only for all but
    /// the last of several forwards of one input), since copying a header
    /// map costs more than the rest of an event's way through the host.
    /// They are moved only once every emit has been checked, so a call
    /// whose output is refused leaves its inputs whole for the retry.
    /// After this, a forwarded input has no headers: the runner only
    /// acknowledges it.
    fn outgoing(
        &self,
        outcome: &Outcome,
        mut inputs: Option<(&mut [Input], &[usize], &Packer)>,
    ) -> Result<Vec<Outgoing>, packed::PackError> {
        let created = View::new(
            &outcome.created.bytes,
            &outcome.created.events,
            &outcome.created.extensions,
        );
        let outputs = self.spec.outputs.len();
        if let Some(ports) = &outcome.ports
            && ports.len() != outcome.emits.len()
        {
            return Err(packed::PackError::PortsMismatch {
                emits: outcome.emits.len(),
                ports: ports.len(),
            });
        }
        let mut out = Vec::with_capacity(outcome.emits.len());
        // Forwards stored as the input message: (output, input) indices,
        // and how many of them each input has.
        let mut moves: Vec<(usize, usize)> = Vec::new();
        let mut uses: Vec<u32> = Vec::new();
        let mut created_in = CreatedIn::default();
        for (i, word) in outcome.emits.iter().enumerate() {
            let port = outcome.ports.as_ref().map_or(0, |p| p[i]);
            if port as usize >= outputs {
                return Err(packed::PackError::PortOutOfRange {
                    port,
                    ports: outputs,
                });
            }
            let (headers, payload, view, spans) = match Emit::from_word(*word) {
                Emit::Forward(j) => {
                    let (inputs, group, packer) =
                        inputs.as_ref().ok_or(packed::PackError::EmitOutOfRange {
                            what: "input",
                            index: j,
                            len: 0,
                        })?;
                    let group: &[usize] = group;
                    let view = View::new(&packer.bytes, &packer.events, &packer.extensions);
                    let (spans, (g, input)) = view
                        .event(j as usize)
                        .zip(group.get(j as usize).map(|&g| (g, &inputs[g])))
                        .ok_or(packed::PackError::EmitOutOfRange {
                            what: "input",
                            index: j,
                            len: group.len(),
                        })?;
                    let message = &input.message;
                    let is_cloudevent = message.headers.as_ref().is_some_and(|h| {
                        h.iter().any(|(n, _)| {
                            AsRef::<str>::as_ref(n).eq_ignore_ascii_case("ce-specversion")
                        })
                    });
                    let (headers, payload) = if is_cloudevent {
                        // Fast path: the stored message as it is, its
                        // headers filled in below.
                        if uses.len() < inputs.len() {
                            uses.resize(inputs.len(), 0);
                        }
                        uses[g] += 1;
                        moves.push((i, g));
                        (async_nats::HeaderMap::new(), message.payload.clone())
                    } else {
                        codec::message_for(&view, &spans)
                    };
                    (headers, payload, view, spans)
                }
                Emit::Created(j) => {
                    // Validates every attribute before anything is stored.
                    packed::check_view(&created, j)?;
                    let spans = created.event(j as usize).unwrap_or_default();
                    let (mut headers, payload) = codec::message_for(&created, &spans);
                    if self.ctx.traces.is_on() {
                        self.created_in(&mut created_in, &mut headers);
                    }
                    (headers, payload, created, spans)
                }
            };
            out.push(Outgoing {
                subject: self.subjects[port as usize].clone(),
                message_id: identity(&self.spec.id, port, &view, &spans),
                headers,
                payload,
            });
        }
        if let Some((inputs, _, _)) = inputs.as_mut() {
            for (k, g) in moves {
                uses[g] -= 1;
                let headers = &mut inputs[g].message.message.headers;
                out[k].headers = if uses[g] == 0 {
                    headers.take()
                } else {
                    headers.clone()
                }
                .unwrap_or_default();
            }
        }
        Ok(out)
    }

    /// The span of a batch from `flow`, linked to the contexts its events
    /// carry (`None` when tracing is off).
    fn batch_span_for(&self, flow: &str, inputs: &[Input]) -> Option<HostSpan> {
        if !self.ctx.traces.is_on() {
            return None;
        }
        let links = inputs
            .iter()
            .filter_map(|i| traces::event_context(i.message.headers.as_ref()))
            .take(traces::BATCH_LINKS)
            .map(traces::Link::with_context)
            .collect();
        self.ctx.traces.start(
            "flowd.batch",
            SpanKind::Consumer,
            &traces::Context::new(),
            vec![
                KeyValue::new("flowd.processor", self.spec.id.clone()),
                KeyValue::new("flowd.instance", i64::from(self.ctx.instance)),
                KeyValue::new("flowd.host", self.ctx.host_id.to_string()),
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", flow.to_owned()),
                KeyValue::new("messaging.batch.message_count", inputs.len() as i64),
            ],
            links,
            None,
        )
    }

    /// A span per step of the segment's last call, under the batch's.
    fn step_spans(&self, batch: &opentelemetry::trace::SpanContext, chain: &Chain) {
        let parent = traces::parent(batch);
        for call in &chain.calls {
            let Some(link) = chain.links.get(call.at) else {
                continue;
            };
            let Some(mut span) = self.ctx.traces.start(
                "flowd.step",
                SpanKind::Internal,
                &parent,
                vec![
                    KeyValue::new("flowd.processor", self.spec.id.clone()),
                    KeyValue::new("flowd.step", link.id.clone()),
                    KeyValue::new("flowd.events_in", call.events_in as i64),
                    KeyValue::new("flowd.events_out", call.events_out as i64),
                ],
                Vec::new(),
                Some(call.started),
            ) else {
                return;
            };
            if let Some(error) = &call.error {
                span.set_status(traces::Status::error(traces::bounded(error.clone())));
            }
            span.end_with_timestamp(call.ended);
        }
    }

    /// Gives an event the processor created the context it was created
    /// in: a span of this call under the context the guest copied from its
    /// input (one span per distinct input context, at most
    /// [`traces::EVENT_SPANS`] per call), or else the batch's span.
    fn created_in(&self, made: &mut CreatedIn, headers: &mut async_nats::HeaderMap) {
        let Some(from) = traces::event_context(Some(headers)) else {
            if let Some(batch) = &self.batch_span {
                traces::set_event_context(headers, batch);
            }
            return;
        };
        let key = (from.trace_id(), from.span_id());
        if let Some(cx) = made.spans.get(&key) {
            traces::set_event_context(headers, cx);
            return;
        }
        if made.spans.len() >= traces::EVENT_SPANS || !from.is_sampled() {
            return;
        }
        let links = self
            .batch_span
            .iter()
            .map(|b| traces::Link::with_context(b.clone()))
            .collect();
        let Some(mut span) = self.ctx.traces.start(
            "flowd.process",
            SpanKind::Consumer,
            &traces::parent(&from),
            vec![
                KeyValue::new("flowd.processor", self.spec.id.clone()),
                KeyValue::new("flowd.host", self.ctx.host_id.to_string()),
                KeyValue::new(
                    "cloudevents.event_id",
                    traces::bounded(
                        codec::attribute(headers, "id")
                            .map(|s| s.into_owned())
                            .unwrap_or_default(),
                    ),
                ),
            ],
            links,
            Some(self.last_call.0),
        ) else {
            return;
        };
        span.end_with_timestamp(self.last_call.1);
        if let Some(cx) = traces::recorded(&span) {
            traces::set_event_context(headers, &cx);
            made.spans.insert(key, cx);
        }
    }

    fn dead_letter(&self, port: u32, input: &Input, error: &str, step: Option<&str>) -> Outgoing {
        let mut packer = Packer::default();
        input.pack_into(&mut packer);
        let view = View::new(&packer.bytes, &packer.events, &packer.extensions);
        let spans = view.event(0).unwrap_or_default();
        let (mut headers, payload) = codec::message_for(&view, &spans);
        let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        headers.insert("ce-deadlettererror", encode(error));
        headers.insert("ce-deadletterprocessor", encode(&self.spec.id));
        let flow = self.spec.inputs.get(port as usize).map(FlowName::as_str);
        headers.insert("ce-deadletterflow", encode(flow.unwrap_or_default()));
        // Set, or emptied of whatever the event's producer put there.
        let step = step.filter(|s| *s != self.spec.id).unwrap_or_default();
        headers.insert("ce-deadletterstep", encode(step));
        // A replayed event that fails again is a new dead letter, not a
        // duplicate of its first one.
        let scope = match input.header("ce-replayid") {
            Some(replay) => format!("dead-letter:{}:{replay}", self.spec.id),
            None => format!("dead-letter:{}", self.spec.id),
        };
        Outgoing {
            subject: self.spec.dead_letter.subject().into(),
            message_id: identity(&scope, 0, &view, &spans),
            headers,
            payload,
        }
    }

    /// Publishes until stored; a broker outage makes this wait, not fail.
    async fn store(&mut self, messages: Vec<Outgoing>) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let stored = match self.ctx.broker.send(&messages).await {
                Ok(sending) => sending.stored().await,
                Err(e) => Err(e),
            };
            match stored {
                Ok(_) => return Ok(()),
                Err(e) => {
                    // A runner asked to stop gives up (its output flow may
                    // be gone); its inputs stay unacknowledged and are
                    // delivered again to whoever runs it next.
                    if *self.stopped.borrow() {
                        return Err(anyhow!("stopped while storing outputs: {e}"));
                    }
                    tracing::warn!(
                        processor = self.spec.id,
                        "storing outputs: {e}; retrying in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The keyed-state changes of the calls since the last time.
    fn take_state_changes(&mut self) -> StateChanges {
        match self.work.as_mut() {
            None => Vec::new(),
            Some(Work::Single(p)) => p
                .state()
                .take_changes()
                .into_iter()
                .map(|(k, v)| (self.spec.id.clone(), k, v))
                .collect(),
            Some(Work::Chain(c)) => c.state_changes(),
        }
    }

    /// Writes keyed-state changes to the broker.
    async fn persist_state(&mut self, changes: StateChanges) -> Result<()> {
        for (owner, key, value) in changes {
            let kv_key = spec::state_key(&owner, &key);
            let mut backoff = Duration::from_millis(50);
            loop {
                let result = match &value {
                    Some(v) => self
                        .ctx
                        .state
                        .put(&kv_key, bytes::Bytes::copy_from_slice(v))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => self
                        .ctx
                        .state
                        .delete(&kv_key)
                        .await
                        .map_err(|e| e.to_string()),
                };
                match result {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(processor = self.spec.id, "persisting state: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The output message id of an event: its CloudEvents identity, scoped.
/// A failure in words, naming a failing event by its id: the index the
/// guest gave is its place in the call's batch, which after the runner
/// split a batch to isolate a failing event means nothing to a reader.
fn failure_text(failure: &CallError, inputs: &[Input], group: &[usize]) -> String {
    let text = failure.to_string();
    match failure.event_index().and_then(|k| {
        let id = group
            .get(k as usize)
            .and_then(|&i| inputs.get(i)?.event_id())?;
        Some((k, id))
    }) {
        Some((k, id)) => text.replacen(&format!("event {k}: "), &format!("event {id}: "), 1),
        None => text,
    }
}

fn identity(scope: &str, port: u32, view: &View<'_>, spans: &EventSpans) -> String {
    let source = view.slice(spans.source).unwrap_or_default();
    let id = view.slice(spans.id).unwrap_or_default();
    codec::message_id(scope, port, source, id)
}

/// One batch pulled from `consumer` (named `flow` in errors): up to `max`
/// events; with `wait`, the broker holds the request that long for them.
fn fetch_from(
    flow: String,
    consumer: PullConsumer,
    max: usize,
    wait: Option<Duration>,
) -> impl std::future::Future<Output = Result<Vec<Input>>> + Send + 'static {
    let max = max.max(1);
    async move {
        let pull = async {
            let requested = match wait {
                Some(expires) => {
                    consumer
                        .batch()
                        .max_messages(max)
                        .expires(expires)
                        .messages()
                        .await
                }
                None => consumer.fetch().max_messages(max).messages().await,
            };
            let mut batch = requested.map_err(|e| anyhow!("fetching from {flow}: {e}"))?;
            let mut inputs = Vec::new();
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| anyhow!("fetching from {flow}: {e}"))?;
                let info = message.info().map_err(|e| anyhow!("message info: {e}"))?;
                let (stream, sequence) = (info.stream.to_owned(), info.stream_sequence);
                let delivery = info.consumer_sequence;
                inputs.push(Input {
                    message,
                    stream,
                    sequence,
                    subject: None,
                    position: sequence,
                    delivery,
                });
            }
            Ok(inputs)
        };
        tokio::time::timeout(FETCH_LIMIT, pull)
            .await
            .map_err(|_| anyhow!("fetching from {flow}: no answer within {FETCH_LIMIT:?}"))?
    }
}
