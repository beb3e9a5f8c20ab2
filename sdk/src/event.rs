use crate::Error;
use crate::bindings::types::{self, Span};
use serde::de::DeserializeOwned;

/// A batch of input events, as the host handed it over.
///
/// Events are views into one packed buffer: reading an attribute borrows it,
/// nothing is copied until the processor asks for an owned [`NewEvent`].
#[derive(Debug, Clone)]
pub struct Batch {
    raw: types::Batch,
}

impl Batch {
    /// Wraps a packed batch; used by the export glue and by native tests.
    pub fn from_raw(raw: types::Batch) -> Self {
        Batch { raw }
    }

    pub fn len(&self) -> usize {
        self.raw.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.events.is_empty()
    }

    /// The event at `index`, if any.
    pub fn get(&self, index: usize) -> Option<Event<'_>> {
        self.raw.events.get(index).map(|raw| Event {
            batch: &self.raw,
            raw,
            index: index as u32,
        })
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Event<'_>> {
        self.raw.events.iter().enumerate().map(|(i, raw)| Event {
            batch: &self.raw,
            raw,
            index: i as u32,
        })
    }
}

/// One input event: a CloudEvent whose attributes borrow from its batch.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    batch: &'a types::Batch,
    raw: &'a types::Event,
    index: u32,
}

fn slice(bytes: &[u8], span: Span) -> &[u8] {
    let start = span.offset as usize;
    start
        .checked_add(span.len as usize)
        .and_then(|end| bytes.get(start..end))
        .unwrap_or_default()
}

fn text(bytes: &[u8], span: Span) -> &str {
    std::str::from_utf8(slice(bytes, span)).unwrap_or_default()
}

fn optional(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl<'a> Event<'a> {
    /// Position of the event in its batch (what [`Error::event`] takes).
    pub fn index(&self) -> u32 {
        self.index
    }

    fn text(&self, span: Span) -> &'a str {
        text(&self.batch.bytes, span)
    }

    pub fn id(&self) -> &'a str {
        self.text(self.raw.id)
    }

    pub fn source(&self) -> &'a str {
        self.text(self.raw.source)
    }

    /// The CloudEvents `type` attribute.
    pub fn ty(&self) -> &'a str {
        self.text(self.raw.type_)
    }

    pub fn subject(&self) -> Option<&'a str> {
        optional(self.text(self.raw.subject))
    }

    /// RFC 3339 timestamp.
    pub fn time(&self) -> Option<&'a str> {
        optional(self.text(self.raw.time))
    }

    pub fn datacontenttype(&self) -> Option<&'a str> {
        optional(self.text(self.raw.datacontenttype))
    }

    pub fn dataschema(&self) -> Option<&'a str> {
        optional(self.text(self.raw.dataschema))
    }

    pub fn data(&self) -> Option<&'a [u8]> {
        self.raw.data.map(|span| slice(&self.batch.bytes, span))
    }

    /// The data parsed as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let data = self
            .data()
            .ok_or_else(|| Error::event(self.index, "event has no data"))?;
        serde_json::from_slice(data)
            .map_err(|e| Error::event(self.index, format!("data is not the expected JSON: {e}")))
    }

    /// The data as a JSON value; `None` when absent or not JSON.
    pub fn json_value(&self) -> Option<serde_json::Value> {
        self.data().and_then(|d| serde_json::from_slice(d).ok())
    }

    /// An attribute by its CloudEvents name: a core attribute (`id`,
    /// `source`, `type`, `subject`, `time`, `datacontenttype`, `dataschema`,
    /// `specversion`) or an extension.
    pub fn attribute(&self, name: &str) -> Option<ExtensionValue> {
        let core = match name {
            "specversion" => Some("1.0"),
            "id" => Some(self.id()),
            "source" => Some(self.source()),
            "type" => Some(self.ty()),
            "subject" => return self.subject().map(|s| ExtensionValue::String(s.into())),
            "time" => return self.time().map(|s| ExtensionValue::String(s.into())),
            "datacontenttype" => {
                return self
                    .datacontenttype()
                    .map(|s| ExtensionValue::String(s.into()));
            }
            "dataschema" => return self.dataschema().map(|s| ExtensionValue::String(s.into())),
            _ => None,
        };
        match core {
            Some(v) => Some(ExtensionValue::String(v.into())),
            None => self.extension(name),
        }
    }

    /// The extension attribute `name`, if the event has it.
    pub fn extension(&self, name: &str) -> Option<ExtensionValue> {
        self.extensions().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every extension attribute, in the order the host gave them.
    pub fn extensions(&self) -> impl Iterator<Item = (&'a str, ExtensionValue)> + 'a {
        let batch = self.batch;
        let first = self.raw.extensions_first as usize;
        let count = self.raw.extensions_count as usize;
        batch
            .extensions
            .get(first..first.saturating_add(count))
            .unwrap_or_default()
            .iter()
            .map(move |ext| {
                let value = text(&batch.bytes, ext.value);
                (
                    text(&batch.bytes, ext.name),
                    ExtensionValue::decode(ext.kind, value),
                )
            })
    }

    /// An owned copy to modify and emit.
    pub fn to_new(&self) -> NewEvent {
        NewEvent {
            id: self.id().to_owned(),
            source: self.source().to_owned(),
            ty: self.ty().to_owned(),
            subject: self.subject().map(str::to_owned),
            time: self.time().map(str::to_owned),
            datacontenttype: self.datacontenttype().map(str::to_owned),
            dataschema: self.dataschema().map(str::to_owned),
            data: self.data().map(<[u8]>::to_vec),
            extensions: self.extensions().map(|(n, v)| (n.to_owned(), v)).collect(),
        }
    }
}

/// A CloudEvents extension attribute value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionValue {
    String(String),
    Boolean(bool),
    Integer(i64),
}

impl ExtensionValue {
    fn decode(kind: types::ExtensionKind, value: &str) -> Self {
        match kind {
            types::ExtensionKind::Boolean => ExtensionValue::Boolean(value == "true"),
            types::ExtensionKind::Integer => value
                .parse()
                .map(ExtensionValue::Integer)
                .unwrap_or_else(|_| ExtensionValue::String(value.to_owned())),
            types::ExtensionKind::String => ExtensionValue::String(value.to_owned()),
        }
    }

    pub(crate) fn kind(&self) -> types::ExtensionKind {
        match self {
            ExtensionValue::String(_) => types::ExtensionKind::String,
            ExtensionValue::Boolean(_) => types::ExtensionKind::Boolean,
            ExtensionValue::Integer(_) => types::ExtensionKind::Integer,
        }
    }

    /// The value as JSON, for comparisons with JSON literals.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ExtensionValue::String(s) => serde_json::Value::String(s.clone()),
            ExtensionValue::Boolean(b) => serde_json::Value::Bool(*b),
            ExtensionValue::Integer(i) => serde_json::Value::from(*i),
        }
    }
}

impl std::fmt::Display for ExtensionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtensionValue::String(s) => f.write_str(s),
            ExtensionValue::Boolean(b) => write!(f, "{b}"),
            ExtensionValue::Integer(i) => write!(f, "{i}"),
        }
    }
}

/// An event the processor creates (or an input event it modifies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEvent {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub data: Option<Vec<u8>>,
    pub extensions: Vec<(String, ExtensionValue)>,
}

impl NewEvent {
    /// A new event with the three required attributes.
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        NewEvent {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            ..NewEvent::default()
        }
    }

    /// Sets the data to `value` serialised as JSON, with content type
    /// `application/json`.
    pub fn with_json<T: serde::Serialize>(mut self, value: &T) -> Result<Self, Error> {
        self.set_json(value)?;
        Ok(self)
    }

    /// Replaces the data with `value` serialised as JSON.
    pub fn set_json<T: serde::Serialize>(&mut self, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::failed(format!("cannot serialise data: {e}")))?;
        self.data = Some(bytes);
        self.datacontenttype = Some("application/json".into());
        Ok(())
    }

    /// Sets (or replaces) an extension attribute.
    pub fn set_extension(&mut self, name: &str, value: ExtensionValue) {
        match self.extensions.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.extensions.push((name.to_owned(), value)),
        }
    }

    pub fn extension(&self, name: &str) -> Option<&ExtensionValue> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub fn remove_extension(&mut self, name: &str) -> Option<ExtensionValue> {
        let at = self.extensions.iter().position(|(n, _)| n == name)?;
        Some(self.extensions.remove(at).1)
    }
}
