//! `flowd run`: one processor over events read from JSON-lines files or
//! stdin, results written as JSON lines. The smallest useful host: no broker,
//! same sandbox.

use crate::{CallError, Host, Limits, Processor, ProcessorSetup};
use anyhow::{Context, Result};
use flowd_core::event::{Event, jsonl};
use std::io::{BufRead, Write};

/// Where one input port's events come from.
pub struct Input {
    /// The input's name, shown in errors.
    pub name: String,
    /// JSON lines, one event each.
    pub reader: Box<dyn BufRead>,
}

/// What happened to the events of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Events read from the inputs.
    pub read: u64,
    /// Events written to the output.
    pub written: u64,
    /// Events the processor failed on (reported on stderr, not written).
    pub failed: u64,
}

/// Where a run's results go: the events a processor emits, and the events
/// it failed on.
pub trait Sink {
    /// `event` was emitted on output `port`.
    fn emitted(&mut self, port: u32, event: &Event) -> Result<()>;
    /// The processor failed on `event`; it emitted nothing for it.
    fn failed(&mut self, event: &Event, error: &CallError) -> Result<()>;
}

/// The sink of `flowd run`: JSON lines on `out`, failures on `errors`.
/// With several outputs each line is `{"output": "<name>", "event": {...}}`,
/// otherwise the event itself.
pub struct Lines<'a> {
    out: &'a mut dyn Write,
    errors: &'a mut dyn Write,
    /// The output names, when lines are tagged with them.
    tags: Option<Vec<String>>,
}

impl<'a> Lines<'a> {
    /// Lines for `processor`'s outputs.
    pub fn new(processor: &Processor, out: &'a mut dyn Write, errors: &'a mut dyn Write) -> Self {
        let tags = (processor.outputs().len() > 1).then(|| processor.outputs().to_vec());
        Lines { out, errors, tags }
    }
}

impl Sink for Lines<'_> {
    fn emitted(&mut self, port: u32, event: &Event) -> Result<()> {
        let name = self
            .tags
            .as_ref()
            .and_then(|t| t.get(port as usize))
            .map(String::as_str);
        write_event(self.out, name, event)
    }

    fn failed(&mut self, event: &Event, error: &CallError) -> Result<()> {
        writeln!(
            self.errors,
            "event {}: {error}",
            cloudevents::AttributesReader::id(event)
        )?;
        Ok(())
    }
}

/// Runs `processor` over `inputs` in batches of `batch_size`, writing every
/// emitted event to `out` ([`Lines`]).
///
/// A batch that fails as a whole is retried event by event, so one bad
/// event is reported (to `errors`) and skipped while the others go on.
pub fn run(
    processor: &mut Processor,
    inputs: Vec<Input>,
    batch_size: usize,
    tick_every: Option<u64>,
    out: &mut dyn Write,
    errors: &mut dyn Write,
) -> Result<Summary> {
    let mut lines = Lines::new(processor, out, errors);
    let ticks = tick_every.map(|every| Ticks { every, at: None });
    let summary = run_into(processor, inputs, batch_size, ticks, &mut lines)?;
    lines.out.flush()?;
    Ok(summary)
}

/// When a signal processor's tick is called during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks {
    /// After every this many input events.
    pub every: u64,
    /// The time each tick is given, in ms since the epoch; `None`: the
    /// wall clock.
    pub at: Option<u64>,
}

impl Ticks {
    /// The time a tick now is given.
    pub fn now(&self) -> u64 {
        self.at.unwrap_or_else(now_ms)
    }
}

/// [`run`] into any [`Sink`]: the inputs one after the other, in port
/// order, in batches of `batch_size`; with `ticks`, a tick after every
/// `ticks.every` input events.
pub fn run_into(
    processor: &mut Processor,
    inputs: Vec<Input>,
    batch_size: usize,
    ticks: Option<Ticks>,
    sink: &mut dyn Sink,
) -> Result<Summary> {
    let mut summary = Summary::default();
    for (port, input) in inputs.into_iter().enumerate() {
        let mut events = jsonl::read(input.reader, jsonl::Wrap::default());
        loop {
            let mut batch = Vec::with_capacity(batch_size);
            for event in events.by_ref().take(batch_size.max(1)) {
                batch.push(event.with_context(|| format!("input `{}`", input.name))?);
            }
            if batch.is_empty() {
                break;
            }
            summary.read += batch.len() as u64;
            for (emitted, failure) in process(processor, port as u32, &batch) {
                if let Some((event, error)) = failure {
                    summary.failed += 1;
                    sink.failed(event, &error)?;
                }
                for (port, event) in emitted {
                    sink.emitted(port, &event)?;
                    summary.written += 1;
                }
            }
            if let Some(ticks) = ticks
                && summary.read % ticks.every.max(1) < batch.len() as u64
            {
                summary.written += tick(processor, ticks.now(), sink)?;
            }
        }
    }
    Ok(summary)
}

/// The wall clock in milliseconds, as ticks are given it.
pub fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// Calls the processor's tick and writes what it emits; returns the count.
pub fn final_tick(processor: &mut Processor, out: &mut dyn Write) -> Result<u64> {
    let mut errors = std::io::sink();
    let mut lines = Lines::new(processor, out, &mut errors);
    tick(processor, now_ms(), &mut lines)
}

/// Calls the processor's tick at `now_ms` and hands what it emits to
/// `sink`; returns the count.
pub fn tick(processor: &mut Processor, now_ms: u64, sink: &mut dyn Sink) -> Result<u64> {
    let outputs = processor.outputs().len();
    let emitted = processor.tick(now_ms)?.resolve(&[], outputs)?;
    for (port, event) in &emitted {
        sink.emitted(*port, event)?;
    }
    Ok(emitted.len() as u64)
}

type Emitted = Vec<(u32, Event)>;

/// Processes a batch; on failure falls back to one event at a time so that
/// only the failing events are lost from the output (and reported).
fn process<'e>(
    processor: &mut Processor,
    port: u32,
    batch: &'e [Event],
) -> Vec<(Emitted, Option<(&'e Event, CallError)>)> {
    let ports = processor.outputs().len();
    let attempt = |processor: &mut Processor, events: &[Event]| -> Result<Emitted, CallError> {
        let packed: crate::Batch = flowd_core::event::packed::pack(events).into();
        let outcome = processor.process(port, &packed)?;
        Ok(outcome.resolve(events, ports)?)
    };
    match attempt(processor, batch) {
        Ok(emitted) => vec![(emitted, None)],
        Err(_) if batch.len() > 1 => batch
            .iter()
            .map(
                |event| match attempt(processor, std::slice::from_ref(event)) {
                    Ok(emitted) => (emitted, None),
                    Err(e) => (Vec::new(), Some((event, e))),
                },
            )
            .collect(),
        Err(e) => vec![(Vec::new(), Some((&batch[0], e)))],
    }
}

fn write_event(out: &mut dyn Write, output: Option<&str>, event: &Event) -> Result<()> {
    match output {
        Some(name) => {
            let line = serde_json::json!({ "output": name, "event": event });
            writeln!(out, "{line}")?;
        }
        None => writeln!(out, "{}", jsonl::to_line(event))?,
    }
    Ok(())
}

/// Loads a component and creates a processor with the given ports and config.
pub fn create(
    host: &Host,
    component: &std::path::Path,
    setup: ProcessorSetup,
    limits: Limits,
) -> Result<Processor> {
    let loaded = host
        .load_file(component)
        .with_context(|| format!("loading {}", component.display()))?;
    let processor = host
        .create(loaded, setup, limits)
        .with_context(|| format!("creating processor from {}", component.display()))?;
    Ok(processor)
}
