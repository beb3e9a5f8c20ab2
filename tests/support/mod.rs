//! Helpers shared by the end-to-end tests: where the built components are,
//! one shared Wasm host, and CloudEvents to feed processors.

use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use flowd_core::event::packed;
use flowd_wasm::{CallError, Host, HostConfig, Limits, Processor, ProcessorSetup};
use std::sync::OnceLock;

pub use flowd_test_support::{component, components_dir};

/// One host for the whole test binary (an engine is heavy; processors are not).
pub fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        Host::new(HostConfig {
            max_instances: 64,
            ..HostConfig::default()
        })
        .expect("host starts")
    })
}

/// A processor of the named component with `inputs`/`outputs` ports.
pub fn processor(
    name: &str,
    config: &[(&str, &str)],
    inputs: &[&str],
    outputs: &[&str],
    limits: Limits,
) -> Result<Processor, flowd_wasm::CreateError> {
    let component = host().load_file(&component(name)).expect("component loads");
    host().create(component, setup(name, config, inputs, outputs), limits)
}

pub fn setup(
    name: &str,
    config: &[(&str, &str)],
    inputs: &[&str],
    outputs: &[&str],
) -> ProcessorSetup {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    ProcessorSetup {
        name: name.into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        inputs: owned(inputs),
        outputs: owned(outputs),
    }
}

/// A CloudEvent with JSON data.
pub fn event(id: &str, ty: &str, data: serde_json::Value) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("urn:test:source")
        .ty(ty)
        .time("2026-11-25T12:00:00Z")
        .data("application/json", data)
        .build()
        .expect("valid test event")
}

/// Hands `events` to `processor` on port `input`; returns `(port, event)`s.
pub fn call(
    processor: &mut Processor,
    input: u32,
    events: &[Event],
) -> Result<Vec<(u32, Event)>, CallError> {
    let outcome = processor.process(input, &packed::pack(events).into())?;
    outcome
        .resolve(events, processor.outputs().len())
        .map_err(CallError::from)
}

/// Like [`call`] for single-output kinds: just the events.
pub fn call1(processor: &mut Processor, events: &[Event]) -> Result<Vec<Event>, CallError> {
    Ok(call(processor, 0, events)?
        .into_iter()
        .map(|(_, e)| e)
        .collect())
}

/// The JSON data of an event.
pub fn data(event: &Event) -> serde_json::Value {
    match event.data() {
        Some(cloudevents::Data::Json(v)) => v.clone(),
        Some(cloudevents::Data::String(s)) => serde_json::from_str(s).unwrap_or_default(),
        Some(cloudevents::Data::Binary(b)) => serde_json::from_slice(b).unwrap_or_default(),
        None => serde_json::Value::Null,
    }
}

/// The ids of events, in order.
pub fn ids(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.id()).collect()
}

/// The message of a refused configuration (panics on anything else).
pub fn config_error(result: Result<Processor, flowd_wasm::CreateError>) -> String {
    match result {
        Err(flowd_wasm::CreateError::Config(message)) => message,
        Err(other) => panic!("expected a configuration error, got: {other}"),
        Ok(_) => panic!("expected a configuration error, got a processor"),
    }
}
