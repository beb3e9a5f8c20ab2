use crate::bindings::types;
use crate::{Event, ExtensionValue, NewEvent};
use flow_abi::{Emit, EventSpans, Packer};
use std::borrow::Cow;

fn pack(packer: &mut Packer, e: &NewEvent<'_>) -> u32 {
    let extensions_first = packer.next_extension();
    for (name, value) in &e.extensions {
        let text: Cow<'_, str> = match value {
            ExtensionValue::String(s) => Cow::Borrowed(s),
            other => Cow::Owned(other.to_string()),
        };
        packer.extension(name.as_bytes(), text.as_bytes(), value.kind());
    }
    let mut opt =
        |s: &Option<Cow<'_, str>>| packer.bytes(s.as_deref().unwrap_or_default().as_bytes());
    let subject = opt(&e.subject);
    let time = opt(&e.time);
    let datacontenttype = opt(&e.datacontenttype);
    let dataschema = opt(&e.dataschema);
    let spans = EventSpans {
        id: packer.bytes(e.id.as_bytes()),
        source: packer.bytes(e.source.as_bytes()),
        ty: packer.bytes(e.ty.as_bytes()),
        subject,
        time,
        datacontenttype,
        dataschema,
        data: e.data.as_deref().map(|d| packer.bytes(d)),
        extensions_first,
        extensions_count: e.extensions.len() as u32,
    };
    packer.event(&spans)
}

fn batch(packer: Packer) -> types::Batch {
    types::Batch {
        bytes: packer.bytes,
        events: packer.events,
        extensions: packer.extensions,
    }
}

/// What a bridge or collector emits, in order, to its single output.
#[derive(Debug, Default)]
pub struct Output {
    packer: Packer,
    emits: Vec<u32>,
}

impl Output {
    /// An empty output (the SDK makes one per call).
    pub fn new() -> Self {
        Output::default()
    }

    /// Emits the input event unchanged. Cheap: only its index crosses back.
    pub fn forward(&mut self, event: &Event<'_>) {
        self.emits.push(Emit::Forward(event.index()).to_word());
    }

    /// Emits a new or modified event.
    pub fn emit(&mut self, event: &NewEvent<'_>) {
        let at = pack(&mut self.packer, event);
        self.emits.push(Emit::Created(at).to_word());
    }

    /// How many events have been emitted so far.
    pub fn len(&self) -> usize {
        self.emits.len()
    }

    /// Whether nothing has been emitted yet.
    pub fn is_empty(&self) -> bool {
        self.emits.is_empty()
    }

    /// The WIT value handed back to the host.
    pub fn into_raw(self) -> types::Output {
        types::Output {
            created: batch(self.packer),
            emits: self.emits,
        }
    }
}

/// What a distributor or signal emits, each event to a chosen output port.
#[derive(Debug, Default)]
pub struct RoutedOutput {
    packer: Packer,
    emits: Vec<u32>,
    ports: Vec<u32>,
}

impl RoutedOutput {
    /// An empty output (the SDK makes one per call).
    pub fn new() -> Self {
        RoutedOutput::default()
    }

    /// Emits the input event unchanged to output `port`.
    pub fn forward_to(&mut self, port: u32, event: &Event<'_>) {
        self.emits.push(Emit::Forward(event.index()).to_word());
        self.ports.push(port);
    }

    /// Emits a new or modified event to output `port`.
    pub fn emit_to(&mut self, port: u32, event: &NewEvent<'_>) {
        let at = pack(&mut self.packer, event);
        self.emits.push(Emit::Created(at).to_word());
        self.ports.push(port);
    }

    /// How many events have been emitted so far.
    pub fn len(&self) -> usize {
        self.emits.len()
    }

    /// Whether nothing has been emitted yet.
    pub fn is_empty(&self) -> bool {
        self.emits.is_empty()
    }

    /// The WIT value handed back to the host.
    pub fn into_raw(self) -> types::RoutedOutput {
        types::RoutedOutput {
            created: batch(self.packer),
            emits: self.emits,
            ports: self.ports,
        }
    }
}
