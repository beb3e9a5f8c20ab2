//! A fused segment: consecutive pipeline steps run in one runner, events
//! passing from one step to the next in memory instead of through a flow.
//!
//! To the runner a segment looks like one processor: a batch in from the
//! segment's input, an [`Outcome`] out whose ports are the flows the
//! segment writes. Inside, the first step's outputs are split by port;
//! a port that feeds a fused step becomes that step's batch, and so on
//! down the tree. An event every step forwarded unchanged stays a forward
//! of the original input (the runner then stores the original message);
//! anything else is copied into the outcome's created batch.
//!
//! A call is all or nothing: if any step fails, the keyed state of every
//! step is put back as it was before the call, so a retried batch sees
//! the same state (as with a single processor).

use super::spec::Port;
use flow_abi::{Emit, Packer, View};
use flowd_core::event::packed::{self, PackError};
use flowd_wasm::wit::types;
use flowd_wasm::{CallError, GuestError, Outcome, Processor};

/// One step of the segment and its running instance.
pub(crate) struct Link {
    pub id: String,
    pub processor: Processor,
    pub ports: Vec<Port>,
    pub generation: u64,
    /// When the current instance was created (ms since the epoch).
    pub started_ms: u64,
    /// Events it took in and emitted, in calls of the whole segment that
    /// succeeded (a failed call is retried, so it counts nothing).
    pub events_in: u64,
    pub events_out: u64,
    /// Its failed calls.
    pub errors: u64,
    /// Events dead-lettered because this step failed on them.
    pub dead_lettered: u64,
}

impl Link {
    pub(crate) fn new(id: String, processor: Processor, ports: Vec<Port>, generation: u64) -> Link {
        Link {
            id,
            processor,
            ports,
            generation,
            started_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
            events_in: 0,
            events_out: 0,
            errors: 0,
            dead_lettered: 0,
        }
    }
}

/// The steps of a segment: `links[0]` is the segment's own processor,
/// `links[i + 1]` is fused step `i`.
pub(crate) struct Chain {
    pub links: Vec<Link>,
    /// The step whose failure failed the last call.
    pub failed: Option<usize>,
    /// The step calls of the last call, in the order they ran (for their
    /// spans); at most one per step.
    pub calls: Vec<StepCall>,
}

/// One step's call within a call of the segment.
pub(crate) struct StepCall {
    /// The link called.
    pub at: usize,
    pub started: std::time::SystemTime,
    pub ended: std::time::SystemTime,
    pub events_in: u64,
    pub events_out: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// The segment's outcome being built.
#[derive(Default)]
struct Collector {
    created: Packer,
    emits: Vec<u32>,
    ports: Vec<u32>,
}

impl Collector {
    fn forward(&mut self, origin: u32, port: usize) {
        self.emits.push(Emit::Forward(origin).to_word());
        self.ports.push(port as u32);
    }

    fn copy(&mut self, view: &View<'_>, index: u32, port: usize) -> Result<(), CallError> {
        let copied = view
            .event(index as usize)
            .and_then(|spans| self.created.copy_from(view, &spans))
            .ok_or_else(|| out_of_range(index, view.len()))?;
        self.emits.push(Emit::Created(copied).to_word());
        self.ports.push(port as u32);
        Ok(())
    }

    fn finish(self) -> Outcome {
        Outcome {
            created: types::Batch {
                bytes: self.created.bytes,
                events: self.created.events,
                extensions: self.created.extensions,
            },
            emits: self.emits,
            ports: Some(self.ports),
        }
    }
}

fn out_of_range(index: u32, len: usize) -> CallError {
    CallError::InvalidOutput(PackError::EmitOutOfRange {
        what: "input",
        index,
        len,
    })
}

/// What one step is asked to do.
enum Call<'a> {
    Process(u32, &'a types::Batch),
    Tick(u64),
}

impl Chain {
    /// Counts an event dead-lettered because step `id` failed on it: that
    /// step took it in, and so did (and passed it on) every step on its
    /// way there, in the call that failed and was not counted.
    pub(crate) fn dead_lettered_at(&mut self, id: &str) {
        let Some(mut at) = self.links.iter().position(|l| l.id == id) else {
            return;
        };
        self.links[at].events_in += 1;
        self.links[at].dead_lettered += 1;
        // A step's parent is the link one of whose ports feeds it; the
        // segment is a tree, so the walk ends at the root (bounded anyway).
        for _ in 0..self.links.len() {
            let Some(parent) = self
                .links
                .iter()
                .position(|l| l.ports.contains(&Port::Step(at.wrapping_sub(1))))
                .filter(|_| at > 0)
            else {
                break;
            };
            self.links[parent].events_in += 1;
            self.links[parent].events_out += 1;
            at = parent;
        }
    }

    /// Runs a batch that arrived on the segment's input `port`.
    pub(crate) fn process(
        &mut self,
        port: u32,
        batch: &types::Batch,
    ) -> Result<Outcome, CallError> {
        let n = (batch.events.len() / flow_abi::EVENT_WORDS) as u32;
        let origins: Vec<Option<u32>> = (0..n).map(Some).collect();
        self.transaction(|chain, out| chain.step(0, Call::Process(port, batch), &origins, out))
    }

    /// Ticks every signal step; what they emit flows down the segment.
    pub(crate) fn tick(&mut self, now_ms: u64) -> Result<Outcome, CallError> {
        self.transaction(|chain, out| {
            for i in 0..chain.links.len() {
                if chain.links[i].processor.kind() == flowd_wasm::Kind::Signal {
                    chain.step(i, Call::Tick(now_ms), &[], out)?;
                }
            }
            Ok(())
        })
    }

    fn transaction(
        &mut self,
        run: impl FnOnce(&mut Chain, &mut Collector) -> Result<(), CallError>,
    ) -> Result<Outcome, CallError> {
        self.failed = None;
        self.calls.clear();
        // Instances made first: what `init` writes is not the call's.
        for at in 0..self.links.len() {
            let link = &mut self.links[at];
            if let Err(e) = link.processor.ready() {
                link.errors += 1;
                let e = locate(&link.id, e, &[]);
                self.failed = Some(at);
                return Err(e);
            }
        }
        // Each step's state under a savepoint (not a copy: only what the
        // calls change is kept), settled by the runner once the segment's
        // outputs are accepted, or put back here when a step fails.
        let counters: Vec<(u64, u64)> = self
            .links
            .iter_mut()
            .map(|l| {
                l.processor.state().savepoint();
                (l.events_in, l.events_out)
            })
            .collect();
        let mut out = Collector::default();
        match run(self, &mut out) {
            Ok(()) => Ok(out.finish()),
            Err(e) => {
                for (link, (events_in, events_out)) in self.links.iter_mut().zip(counters) {
                    link.processor.state().revert();
                    link.events_in = events_in;
                    link.events_out = events_out;
                }
                Err(e)
            }
        }
    }

    /// Calls link `at`, then routes what it emitted: to the segment's
    /// outputs, or down to the fused steps its ports feed.
    fn step(
        &mut self,
        at: usize,
        call: Call<'_>,
        origins: &[Option<u32>],
        out: &mut Collector,
    ) -> Result<(), CallError> {
        let link = &mut self.links[at];
        let started = std::time::SystemTime::now();
        let (result, input) = match call {
            Call::Process(port, batch) => {
                link.events_in += (batch.events.len() / flow_abi::EVENT_WORDS) as u64;
                (link.processor.process(port, batch), Some(batch))
            }
            Call::Tick(now) => (link.processor.tick(now), None),
        };
        let mut record = StepCall {
            at,
            started,
            ended: std::time::SystemTime::now(),
            events_in: input.map_or(0, |b| (b.events.len() / flow_abi::EVENT_WORDS) as u64),
            events_out: 0,
            error: None,
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                link.errors += 1;
                let e = locate(&link.id, e, origins);
                record.error = Some(e.to_string());
                self.calls.push(record);
                self.failed = Some(at);
                return Err(e);
            }
        };
        record.events_out = outcome.emits.len() as u64;
        let record_at = self.calls.len();
        self.calls.push(record);
        link.events_out += outcome.emits.len() as u64;
        let ports = link.ports.clone();
        let empty = types::Batch {
            bytes: Vec::new(),
            events: Vec::new(),
            extensions: Vec::new(),
        };
        let input = input.unwrap_or(&empty);
        let input = View::new(&input.bytes, &input.events, &input.extensions);
        let created = View::new(
            &outcome.created.bytes,
            &outcome.created.events,
            &outcome.created.extensions,
        );
        if let Some(p) = &outcome.ports
            && p.len() != outcome.emits.len()
        {
            return Err(self.blame(
                at,
                record_at,
                CallError::InvalidOutput(PackError::PortsMismatch {
                    emits: outcome.emits.len(),
                    ports: p.len(),
                }),
            ));
        }
        let mut by_port: Vec<Vec<Emit>> = vec![Vec::new(); ports.len()];
        for (i, word) in outcome.emits.iter().enumerate() {
            let port = outcome.ports.as_ref().map_or(0, |p| p[i]);
            let Some(slot) = by_port.get_mut(port as usize) else {
                return Err(self.blame(
                    at,
                    record_at,
                    CallError::InvalidOutput(PackError::PortOutOfRange {
                        port,
                        ports: ports.len(),
                    }),
                ));
            };
            let emit = Emit::from_word(*word);
            if let Emit::Created(j) = emit
                // Validates every attribute before it goes anywhere.
                && let Err(e) = packed::check_view(&created, j)
            {
                return Err(self.blame(at, record_at, CallError::InvalidOutput(e)));
            }
            slot.push(emit);
        }
        for (port, emits) in by_port.into_iter().enumerate() {
            if emits.is_empty() {
                continue;
            }
            match ports[port] {
                Port::Flow(k) => {
                    for emit in emits {
                        let copied = match emit {
                            Emit::Forward(j) => match origins.get(j as usize) {
                                Some(Some(origin)) => {
                                    out.forward(*origin, k);
                                    Ok(())
                                }
                                Some(None) => out.copy(&input, j, k),
                                None => Err(out_of_range(j, origins.len())),
                            },
                            Emit::Created(j) => out.copy(&created, j, k),
                        };
                        if let Err(e) = copied {
                            return Err(self.blame(at, record_at, e));
                        }
                    }
                }
                Port::Step(child) => {
                    let mut batch = Packer::default();
                    let mut child_origins = Vec::with_capacity(emits.len());
                    for emit in emits {
                        let (view, j, origin) = match emit {
                            Emit::Forward(j) => match origins.get(j as usize) {
                                Some(origin) => (&input, j, *origin),
                                None => {
                                    let e = out_of_range(j, origins.len());
                                    return Err(self.blame(at, record_at, e));
                                }
                            },
                            Emit::Created(j) => (&created, j, None),
                        };
                        if view
                            .event(j as usize)
                            .and_then(|spans| batch.copy_from(view, &spans))
                            .is_none()
                        {
                            let e = out_of_range(j, view.len());
                            return Err(self.blame(at, record_at, e));
                        }
                        child_origins.push(origin);
                    }
                    let batch = types::Batch {
                        bytes: batch.bytes,
                        events: batch.events,
                        extensions: batch.extensions,
                    };
                    self.step(child + 1, Call::Process(0, &batch), &child_origins, out)?;
                }
            }
        }
        Ok(())
    }

    /// An error in what link `at` emitted (its call itself succeeded): the
    /// step is named as the failing one, as for an error it returned.
    fn blame(&mut self, at: usize, record_at: usize, e: CallError) -> CallError {
        self.links[at].errors += 1;
        if let Some(record) = self.calls.get_mut(record_at) {
            record.error = Some(e.to_string());
        }
        self.failed = Some(at);
        e
    }

    /// Keyed-state changes since the last call, with the step they belong to.
    pub(crate) fn state_changes(&mut self) -> Vec<(String, String, Option<Vec<u8>>)> {
        let mut all = Vec::new();
        for link in &mut self.links {
            for (key, value) in link.processor.state().take_changes() {
                all.push((link.id.clone(), key, value));
            }
        }
        all
    }

    pub(crate) fn teardown(self) {
        for link in self.links {
            if let Err(e) = link.processor.teardown() {
                tracing::debug!(step = link.id, "teardown: {e}");
            }
        }
    }
}

/// Names the failing step, and maps an event error back to the segment's
/// input event when the failing event is one (an unchanged forward).
fn locate(step: &str, e: CallError, origins: &[Option<u32>]) -> CallError {
    match e {
        CallError::Guest(GuestError::Event { index, message }) => {
            match origins.get(index as usize).copied().flatten() {
                Some(origin) => CallError::Guest(GuestError::Event {
                    index: origin,
                    message: format!("step {step}: {message}"),
                }),
                None => CallError::Guest(GuestError::Failed(format!(
                    "step {step}: event {index}: {message}"
                ))),
            }
        }
        CallError::Guest(GuestError::Failed(message)) => {
            CallError::Guest(GuestError::Failed(format!("step {step}: {message}")))
        }
        CallError::Trap { message } => CallError::Trap {
            message: format!("step {step}: {message}"),
        },
        other => other,
    }
}
