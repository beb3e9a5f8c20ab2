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

/// Runs `processor` over `inputs` in batches of `batch_size`, writing every
/// emitted event to `out`. With several outputs each line is
/// `{"output": "<name>", "event": {...}}`, otherwise the event itself.
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
    let mut summary = Summary::default();
    let tagged = processor.outputs().len() > 1;
    let outputs = processor.outputs().to_vec();
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
                    writeln!(
                        errors,
                        "event {}: {error}",
                        cloudevents::AttributesReader::id(event)
                    )?;
                }
                for (port, event) in emitted {
                    write_event(out, tagged.then(|| outputs[port as usize].as_str()), &event)?;
                    summary.written += 1;
                }
            }
            if let Some(every) = tick_every
                && summary.read % every.max(1) < batch.len() as u64
            {
                summary.written += final_tick(processor, out)?;
            }
        }
    }
    out.flush()?;
    Ok(summary)
}

/// Calls the processor's tick and writes what it emits; returns the count.
pub fn final_tick(processor: &mut Processor, out: &mut dyn Write) -> Result<u64> {
    let outputs = processor.outputs().to_vec();
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let emitted = processor.tick(now)?.resolve(&[], outputs.len())?;
    for (port, event) in &emitted {
        let name = (outputs.len() > 1).then(|| outputs[*port as usize].as_str());
        write_event(out, name, event)?;
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
