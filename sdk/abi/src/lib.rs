//! The packed batch layout of the `eson:flow` processor contract.
//!
//! A batch crosses the component boundary as three integer lists: the bytes
//! of every attribute and payload, a table of [`EVENT_WORDS`] `u32` words per
//! event locating them, and a table of [`EXTENSION_WORDS`] words per extension
//! attribute. Integer lists are copied with one `memcpy` by the canonical ABI
//! (and borrowed in place by guest bindings), which keeps the per-event cost
//! of a call small; see `docs/wit.md`.
//!
//! The host (`flowd`) and the guest SDK (`flow-sdk`) both write and read
//! batches through this crate, so the layout is defined once.

#![no_std]
extern crate alloc;

use alloc::vec::Vec;

/// Words per event in `batch.events`.
pub const EVENT_WORDS: usize = 18;
/// Words per extension in `batch.extensions`.
pub const EXTENSION_WORDS: usize = 5;
/// `data` offset word of an event without data.
pub const NO_DATA: u32 = u32::MAX;
/// Bit 31 of an emit word: set for a created event, clear for a forward.
pub const CREATED: u32 = 1 << 31;

/// Word indexes of an event's entry (each span is an offset word followed by
/// a length word).
pub mod word {
    pub const ID: usize = 0;
    pub const SOURCE: usize = 2;
    pub const TYPE: usize = 4;
    pub const SUBJECT: usize = 6;
    pub const TIME: usize = 8;
    pub const DATACONTENTTYPE: usize = 10;
    pub const DATASCHEMA: usize = 12;
    pub const DATA: usize = 14;
    pub const EXTENSIONS_FIRST: usize = 16;
    pub const EXTENSIONS_COUNT: usize = 17;
}

/// The CloudEvents type of an extension value (the kind word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionKind {
    String = 0,
    Boolean = 1,
    Integer = 2,
}

impl ExtensionKind {
    pub fn from_word(w: u32) -> Option<Self> {
        match w {
            0 => Some(ExtensionKind::String),
            1 => Some(ExtensionKind::Boolean),
            2 => Some(ExtensionKind::Integer),
            _ => None,
        }
    }
}

/// The bytes `bytes[offset .. offset + len]` of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub offset: u32,
    pub len: u32,
}

impl Span {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where the attributes of one event are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSpans {
    pub id: Span,
    pub source: Span,
    pub ty: Span,
    /// Empty when absent (CloudEvents forbids empty values).
    pub subject: Span,
    pub time: Span,
    pub datacontenttype: Span,
    pub dataschema: Span,
    /// `None` when the event has no data.
    pub data: Option<Span>,
    pub extensions_first: u32,
    pub extensions_count: u32,
}

impl EventSpans {
    pub fn to_words(&self) -> [u32; EVENT_WORDS] {
        let (data_offset, data_len) = match self.data {
            Some(s) => (s.offset, s.len),
            None => (NO_DATA, 0),
        };
        [
            self.id.offset,
            self.id.len,
            self.source.offset,
            self.source.len,
            self.ty.offset,
            self.ty.len,
            self.subject.offset,
            self.subject.len,
            self.time.offset,
            self.time.len,
            self.datacontenttype.offset,
            self.datacontenttype.len,
            self.dataschema.offset,
            self.dataschema.len,
            data_offset,
            data_len,
            self.extensions_first,
            self.extensions_count,
        ]
    }

    pub fn from_words(w: &[u32; EVENT_WORDS]) -> Self {
        let span = |at: usize| Span {
            offset: w[at],
            len: w[at + 1],
        };
        EventSpans {
            id: span(word::ID),
            source: span(word::SOURCE),
            ty: span(word::TYPE),
            subject: span(word::SUBJECT),
            time: span(word::TIME),
            datacontenttype: span(word::DATACONTENTTYPE),
            dataschema: span(word::DATASCHEMA),
            data: (w[word::DATA] != NO_DATA).then(|| span(word::DATA)),
            extensions_first: w[word::EXTENSIONS_FIRST],
            extensions_count: w[word::EXTENSIONS_COUNT],
        }
    }
}

/// One extension entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionSpans {
    pub name: Span,
    pub value: Span,
    /// The kind word; see [`ExtensionKind::from_word`].
    pub kind: u32,
}

/// Appends events to the three lists of a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Packer {
    pub bytes: Vec<u8>,
    pub events: Vec<u32>,
    pub extensions: Vec<u32>,
}

impl Packer {
    pub fn with_capacity(events: usize, bytes: usize) -> Self {
        Packer {
            bytes: Vec::with_capacity(bytes),
            events: Vec::with_capacity(events * EVENT_WORDS),
            extensions: Vec::new(),
        }
    }

    /// Events packed so far.
    pub fn len(&self) -> usize {
        self.events.len() / EVENT_WORDS
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Appends bytes; returns where they are.
    pub fn bytes(&mut self, s: &[u8]) -> Span {
        let offset = self.bytes.len() as u32;
        self.bytes.extend_from_slice(s);
        Span {
            offset,
            len: s.len() as u32,
        }
    }

    /// Appends whatever `write` writes (e.g. serialised JSON) as one span.
    pub fn write_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Span {
        let offset = self.bytes.len();
        write(&mut self.bytes);
        Span {
            offset: offset as u32,
            len: (self.bytes.len() - offset) as u32,
        }
    }

    /// Index the next extension will get; an event's `extensions_first`.
    pub fn next_extension(&self) -> u32 {
        (self.extensions.len() / EXTENSION_WORDS) as u32
    }

    pub fn extension(&mut self, name: &[u8], value: &[u8], kind: ExtensionKind) {
        let name = self.bytes(name);
        let value = self.bytes(value);
        self.extensions.extend_from_slice(&[
            name.offset,
            name.len,
            value.offset,
            value.len,
            kind as u32,
        ]);
    }

    /// Appends an event entry; returns its index.
    pub fn event(&mut self, spans: &EventSpans) -> u32 {
        self.events.extend_from_slice(&spans.to_words());
        (self.len() - 1) as u32
    }

    /// Appends a copy of the event `spans` of `view` (attributes, data and
    /// extensions); returns its index, or `None` when the entry points
    /// outside `view` (nothing is appended then to the event table).
    pub fn copy_from(&mut self, view: &View<'_>, spans: &EventSpans) -> Option<u32> {
        let first = self.next_extension();
        for k in 0..spans.extensions_count {
            let e = view.extension(spans.extensions_first.checked_add(k)? as usize)?;
            let kind = ExtensionKind::from_word(e.kind)?;
            self.extension(view.slice(e.name)?, view.slice(e.value)?, kind);
        }
        let copied = EventSpans {
            id: self.bytes(view.slice(spans.id)?),
            source: self.bytes(view.slice(spans.source)?),
            ty: self.bytes(view.slice(spans.ty)?),
            subject: self.bytes(view.slice(spans.subject)?),
            time: self.bytes(view.slice(spans.time)?),
            datacontenttype: self.bytes(view.slice(spans.datacontenttype)?),
            dataschema: self.bytes(view.slice(spans.dataschema)?),
            data: match spans.data {
                Some(d) => Some(self.bytes(view.slice(d)?)),
                None => None,
            },
            extensions_first: first,
            extensions_count: spans.extensions_count,
        };
        Some(self.event(&copied))
    }
}

/// Reads a batch; every accessor is bounds-checked (`None` when out of range).
#[derive(Debug, Clone, Copy)]
pub struct View<'b> {
    pub bytes: &'b [u8],
    pub events: &'b [u32],
    pub extensions: &'b [u32],
}

impl<'b> View<'b> {
    pub fn new(bytes: &'b [u8], events: &'b [u32], extensions: &'b [u32]) -> Self {
        View {
            bytes,
            events,
            extensions,
        }
    }

    /// Number of complete event entries.
    pub fn len(&self) -> usize {
        self.events.len() / EVENT_WORDS
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn event(&self, index: usize) -> Option<EventSpans> {
        let start = index.checked_mul(EVENT_WORDS)?;
        let words: &[u32; EVENT_WORDS] = self
            .events
            .get(start..start.checked_add(EVENT_WORDS)?)?
            .try_into()
            .ok()?;
        Some(EventSpans::from_words(words))
    }

    pub fn slice(&self, span: Span) -> Option<&'b [u8]> {
        let start = span.offset as usize;
        self.bytes.get(start..start.checked_add(span.len as usize)?)
    }

    pub fn extension(&self, index: usize) -> Option<ExtensionSpans> {
        let start = index.checked_mul(EXTENSION_WORDS)?;
        let w = self
            .extensions
            .get(start..start.checked_add(EXTENSION_WORDS)?)?;
        Some(ExtensionSpans {
            name: Span {
                offset: w[0],
                len: w[1],
            },
            value: Span {
                offset: w[2],
                len: w[3],
            },
            kind: w[4],
        })
    }

    /// Number of complete extension entries.
    pub fn extensions_len(&self) -> usize {
        self.extensions.len() / EXTENSION_WORDS
    }
}

/// What one emit word means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// Input event `i` of the call's batch, unchanged.
    Forward(u32),
    /// Event `i` of the output's `created` batch.
    Created(u32),
}

impl Emit {
    pub fn to_word(self) -> u32 {
        match self {
            Emit::Forward(i) => i & !CREATED,
            Emit::Created(i) => i | CREATED,
        }
    }

    pub fn from_word(w: u32) -> Self {
        if w & CREATED != 0 {
            Emit::Created(w & !CREATED)
        } else {
            Emit::Forward(w)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_view_round_trip() {
        let mut p = Packer::default();
        let first = p.next_extension();
        p.extension(b"region", b"eu", ExtensionKind::String);
        let spans = EventSpans {
            id: p.bytes(b"1"),
            source: p.bytes(b"urn:s"),
            ty: p.bytes(b"t"),
            data: Some(p.bytes(b"{}")),
            extensions_first: first,
            extensions_count: 1,
            ..EventSpans::default()
        };
        assert_eq!(p.event(&spans), 0);
        let no_data = EventSpans {
            data: None,
            ..spans
        };
        assert_eq!(p.event(&no_data), 1);
        let view = View::new(&p.bytes, &p.events, &p.extensions);
        assert_eq!(view.len(), 2);
        assert_eq!(view.event(0), Some(spans));
        assert_eq!(view.event(1).map(|e| e.data), Some(None));
        assert_eq!(view.event(2), None);
        let ext = view.extension(0).expect("extension");
        assert_eq!(view.slice(ext.value), Some(&b"eu"[..]));
        assert_eq!(
            view.slice(Span {
                offset: u32::MAX,
                len: 9
            }),
            None
        );
    }

    #[test]
    fn emit_words() {
        assert_eq!(
            Emit::from_word(Emit::Forward(7).to_word()),
            Emit::Forward(7)
        );
        assert_eq!(
            Emit::from_word(Emit::Created(7).to_word()),
            Emit::Created(7)
        );
        assert_eq!(Emit::Created(0).to_word(), CREATED);
    }
}
