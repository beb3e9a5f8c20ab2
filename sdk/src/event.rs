use crate::Error;
use crate::bindings::types;
use flow_abi::{EventSpans, ExtensionKind, Span, View};
use serde::de::DeserializeOwned;
use std::borrow::Cow;

/// A batch of input events, as the host handed it over.
///
/// Events are views into the packed batch: reading an attribute borrows it,
/// nothing is copied until the processor asks for it.
#[derive(Debug, Clone)]
pub struct Batch {
    raw: types::Batch,
}

impl Batch {
    /// Wraps a packed batch; used by the export glue and by native tests.
    pub fn from_raw(raw: types::Batch) -> Self {
        Batch { raw }
    }

    fn view(&self) -> View<'_> {
        View::new(&self.raw.bytes, &self.raw.events, &self.raw.extensions)
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// Whether the batch has no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event at `index`, if any.
    pub fn get(&self, index: usize) -> Option<Event<'_>> {
        let view = self.view();
        view.event(index).map(|spans| Event {
            view,
            spans,
            index: index as u32,
        })
    }

    /// The events, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Event<'_>> {
        let view = self.view();
        (0..view.len()).map(move |i| Event {
            view,
            // `i < len`, so the entry exists.
            spans: view.event(i).unwrap_or_default(),
            index: i as u32,
        })
    }
}

/// One input event: a CloudEvent whose attributes borrow from its batch.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    view: View<'a>,
    spans: EventSpans,
    index: u32,
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
        self.view
            .slice(span)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// The `id` attribute.
    pub fn id(&self) -> &'a str {
        self.text(self.spans.id)
    }

    /// The `source` attribute.
    pub fn source(&self) -> &'a str {
        self.text(self.spans.source)
    }

    /// The CloudEvents `type` attribute.
    pub fn ty(&self) -> &'a str {
        self.text(self.spans.ty)
    }

    /// The `subject` attribute, if set.
    pub fn subject(&self) -> Option<&'a str> {
        optional(self.text(self.spans.subject))
    }

    /// RFC 3339 timestamp.
    pub fn time(&self) -> Option<&'a str> {
        optional(self.text(self.spans.time))
    }

    /// The `datacontenttype` attribute, if set.
    pub fn datacontenttype(&self) -> Option<&'a str> {
        optional(self.text(self.spans.datacontenttype))
    }

    /// The `dataschema` attribute, if set.
    pub fn dataschema(&self) -> Option<&'a str> {
        optional(self.text(self.spans.dataschema))
    }

    /// The payload's bytes, if the event has data.
    pub fn data(&self) -> Option<&'a [u8]> {
        self.spans
            .data
            .map(|span| self.view.slice(span).unwrap_or_default())
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
        let view = self.view;
        let first = self.spans.extensions_first as usize;
        let count = self.spans.extensions_count as usize;
        (first..first.saturating_add(count)).filter_map(move |i| {
            let ext = view.extension(i)?;
            let text = |span| {
                view.slice(span)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .unwrap_or_default()
            };
            let kind = ExtensionKind::from_word(ext.kind).unwrap_or(ExtensionKind::String);
            Some((
                text(ext.name),
                ExtensionValue::decode(kind, text(ext.value)),
            ))
        })
    }

    /// A copy to modify and emit; it borrows every attribute from the batch
    /// until the processor replaces it.
    pub fn to_new(&self) -> NewEvent<'a> {
        NewEvent {
            id: Cow::Borrowed(self.id()),
            source: Cow::Borrowed(self.source()),
            ty: Cow::Borrowed(self.ty()),
            subject: self.subject().map(Cow::Borrowed),
            time: self.time().map(Cow::Borrowed),
            datacontenttype: self.datacontenttype().map(Cow::Borrowed),
            dataschema: self.dataschema().map(Cow::Borrowed),
            data: self.data().map(Cow::Borrowed),
            extensions: self
                .extensions()
                .map(|(n, v)| (Cow::Borrowed(n), v))
                .collect(),
        }
    }
}

/// A CloudEvents extension attribute value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionValue {
    /// CloudEvents String.
    String(String),
    /// CloudEvents Boolean.
    Boolean(bool),
    /// CloudEvents Integer.
    Integer(i64),
}

impl ExtensionValue {
    fn decode(kind: ExtensionKind, value: &str) -> Self {
        match kind {
            ExtensionKind::Boolean => ExtensionValue::Boolean(value == "true"),
            ExtensionKind::Integer => value
                .parse()
                .map(ExtensionValue::Integer)
                .unwrap_or_else(|_| ExtensionValue::String(value.to_owned())),
            ExtensionKind::String => ExtensionValue::String(value.to_owned()),
        }
    }

    pub(crate) fn kind(&self) -> ExtensionKind {
        match self {
            ExtensionValue::String(_) => ExtensionKind::String,
            ExtensionValue::Boolean(_) => ExtensionKind::Boolean,
            ExtensionValue::Integer(_) => ExtensionKind::Integer,
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

/// An event the processor creates, or an input event it modifies.
///
/// Attributes are [`Cow`]s: a copy made with [`Event::to_new`] borrows every
/// attribute from the input batch, and only what the processor changes is
/// allocated. Emitting it copies the bytes straight into the output batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEvent<'a> {
    /// `id` (required).
    pub id: Cow<'a, str>,
    /// `source` (required).
    pub source: Cow<'a, str>,
    /// `type` (required).
    pub ty: Cow<'a, str>,
    /// `subject`.
    pub subject: Option<Cow<'a, str>>,
    /// `time` (RFC 3339).
    pub time: Option<Cow<'a, str>>,
    /// `datacontenttype`.
    pub datacontenttype: Option<Cow<'a, str>>,
    /// `dataschema`.
    pub dataschema: Option<Cow<'a, str>>,
    /// The payload's bytes.
    pub data: Option<Cow<'a, [u8]>>,
    /// Extension attributes, in order.
    pub extensions: Vec<(Cow<'a, str>, ExtensionValue)>,
}

impl<'a> NewEvent<'a> {
    /// A new event with the three required attributes.
    pub fn new(
        id: impl Into<Cow<'a, str>>,
        source: impl Into<Cow<'a, str>>,
        ty: impl Into<Cow<'a, str>>,
    ) -> Self {
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
        self.data = Some(Cow::Owned(bytes));
        if self.datacontenttype.as_deref() != Some("application/json") {
            self.datacontenttype = Some(Cow::Borrowed("application/json"));
        }
        Ok(())
    }

    /// Sets (or replaces) an extension attribute.
    pub fn set_extension(&mut self, name: &str, value: ExtensionValue) {
        match self.extensions.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.extensions.push((Cow::Owned(name.to_owned()), value)),
        }
    }

    /// The extension attribute `name`, if set.
    pub fn extension(&self, name: &str) -> Option<&ExtensionValue> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Removes the extension attribute `name`, returning its value.
    pub fn remove_extension(&mut self, name: &str) -> Option<ExtensionValue> {
        let at = self.extensions.iter().position(|(n, _)| n == name)?;
        Some(self.extensions.remove(at).1)
    }
}
