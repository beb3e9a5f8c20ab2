use crate::bindings::types::{self, Emit, Routed, Span};
use crate::{Event, NewEvent};

/// Builds the packed `created` batch of an output.
#[derive(Debug)]
struct Packer {
    batch: types::Batch,
}

impl Default for Packer {
    fn default() -> Self {
        Packer {
            batch: types::Batch {
                bytes: Vec::new(),
                events: Vec::new(),
                extensions: Vec::new(),
            },
        }
    }
}

impl Packer {
    fn span(&mut self, s: &[u8]) -> Span {
        let offset = self.batch.bytes.len() as u32;
        self.batch.bytes.extend_from_slice(s);
        Span {
            offset,
            len: s.len() as u32,
        }
    }

    fn opt(&mut self, s: &Option<String>) -> Span {
        self.span(s.as_deref().unwrap_or_default().as_bytes())
    }

    fn push(&mut self, e: &NewEvent) -> u32 {
        let extensions_first = self.batch.extensions.len() as u32;
        for (name, value) in &e.extensions {
            let name = self.span(name.as_bytes());
            let kind = value.kind();
            let value = match value {
                crate::ExtensionValue::String(s) => self.span(s.as_bytes()),
                other => self.span(other.to_string().as_bytes()),
            };
            self.batch
                .extensions
                .push(types::Extension { name, value, kind });
        }
        let event = types::Event {
            id: self.span(e.id.as_bytes()),
            source: self.span(e.source.as_bytes()),
            type_: self.span(e.ty.as_bytes()),
            subject: self.opt(&e.subject),
            time: self.opt(&e.time),
            datacontenttype: self.opt(&e.datacontenttype),
            dataschema: self.opt(&e.dataschema),
            data: e.data.as_deref().map(|d| self.span(d)),
            extensions_first,
            extensions_count: e.extensions.len() as u32,
        };
        self.batch.events.push(event);
        (self.batch.events.len() - 1) as u32
    }
}

/// What a bridge or collector emits, in order, to its single output.
#[derive(Debug, Default)]
pub struct Output {
    packer: Packer,
    emits: Vec<Emit>,
}

impl Output {
    pub fn new() -> Self {
        Output::default()
    }

    /// Emits the input event unchanged. Cheap: only its index crosses back.
    pub fn forward(&mut self, event: &Event<'_>) {
        self.emits.push(Emit::Forward(event.index()));
    }

    /// Emits a new or modified event.
    pub fn emit(&mut self, event: &NewEvent) {
        let at = self.packer.push(event);
        self.emits.push(Emit::Created(at));
    }

    /// How many events have been emitted so far.
    pub fn len(&self) -> usize {
        self.emits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.emits.is_empty()
    }

    /// The WIT value handed back to the host.
    pub fn into_raw(self) -> types::Output {
        types::Output {
            created: self.packer.batch,
            emits: self.emits,
        }
    }
}

/// What a distributor or signal emits, each event to a chosen output port.
#[derive(Debug, Default)]
pub struct RoutedOutput {
    packer: Packer,
    emits: Vec<Routed>,
}

impl RoutedOutput {
    pub fn new() -> Self {
        RoutedOutput::default()
    }

    /// Emits the input event unchanged to output `port`.
    pub fn forward_to(&mut self, port: u32, event: &Event<'_>) {
        self.emits.push(Routed {
            port,
            emit: Emit::Forward(event.index()),
        });
    }

    /// Emits a new or modified event to output `port`.
    pub fn emit_to(&mut self, port: u32, event: &NewEvent) {
        let at = self.packer.push(event);
        self.emits.push(Routed {
            port,
            emit: Emit::Created(at),
        });
    }

    pub fn len(&self) -> usize {
        self.emits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.emits.is_empty()
    }

    /// The WIT value handed back to the host.
    pub fn into_raw(self) -> types::RoutedOutput {
        types::RoutedOutput {
            created: self.packer.batch,
            emits: self.emits,
        }
    }
}
