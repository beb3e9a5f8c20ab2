//! Packed batches: the form in which events cross into a processor.
//!
//! Every string and payload of a batch lives in one byte buffer and a table
//! of integer words locates them (layout in the `flow-abi` crate and
//! `docs/wit.md`). This module packs
//! [`Event`]s into a [`Batch`], unpacks (and validates) what a processor
//! created, and resolves a processor's emits into the events to store.

use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::Event;
use cloudevents::event::{AttributesReader, AttributesWriter, Data, ExtensionValue};
use flow_abi::{Emit, EventSpans, ExtensionKind, Packer, Span, View};

/// A packed batch: every string and payload in `bytes`, located by the
/// words of `events` and `extensions` (layout in `flow-abi`). It is the
/// WIT `batch` record; the Wasm host converts it to its bindings' type by
/// moving the three vectors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Strings and payloads, back to back.
    pub bytes: Vec<u8>,
    /// `flow_abi::EVENT_WORDS` words per event.
    pub events: Vec<u32>,
    /// Two words per extension attribute.
    pub extensions: Vec<u32>,
}

/// Anything holding packed lists: [`Batch`], and the Wasm host's bindings
/// type for the same record.
pub trait Packed {
    /// The lists as a [`View`].
    fn view(&self) -> View<'_>;
}

impl Packed for Batch {
    fn view(&self) -> View<'_> {
        View::new(&self.bytes, &self.events, &self.extensions)
    }
}

/// Why a packed event or an emit is not acceptable.
// The variants' `#[error]` texts are their documentation.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("event {index}: `{what}` span {offset}+{len} lies outside the batch's {size} bytes")]
    SpanOutOfBounds {
        index: u32,
        what: &'static str,
        offset: u32,
        len: u32,
        size: usize,
    },
    #[error("event {index}: `{what}` is not valid UTF-8")]
    NotUtf8 { index: u32, what: &'static str },
    #[error("event {index}: required attribute `{what}` is empty")]
    MissingRequired { index: u32, what: &'static str },
    #[error("event {index}: `time` {value:?} is not an RFC 3339 timestamp ({reason})")]
    BadTime {
        index: u32,
        value: String,
        reason: String,
    },
    #[error("event {index}: `dataschema` {value:?} is not an absolute URI ({reason})")]
    BadSchema {
        index: u32,
        value: String,
        reason: String,
    },
    #[error("event {index}: extension name {name:?} must be lower-case letters and digits")]
    BadExtensionName { index: u32, name: String },
    #[error("event {index}: extensions {first}+{count} lie outside the batch's {len} extensions")]
    ExtensionsOutOfBounds {
        index: u32,
        first: u32,
        count: u32,
        len: usize,
    },
    #[error("emit refers to {what} event {index}, but there are only {len}")]
    EmitOutOfRange {
        what: &'static str,
        index: u32,
        len: usize,
    },
    #[error("emit addresses output port {port}, but the processor has {ports} outputs")]
    PortOutOfRange { port: u32, ports: usize },
    #[error("{emits} emits but {ports} ports: the two lists must have the same length")]
    PortsMismatch { emits: usize, ports: usize },
}

/// Builds a packed [`Batch`] from CloudEvents.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    packer: Packer,
}

impl BatchBuilder {
    /// A builder with room for `events` events and `bytes` bytes.
    pub fn with_capacity(events: usize, bytes: usize) -> Self {
        BatchBuilder {
            packer: Packer::with_capacity(events, bytes),
        }
    }

    /// Appends `event`; returns its index in the batch.
    pub fn push(&mut self, event: &Event) -> u32 {
        push_event(&mut self.packer, event)
    }

    /// Events pushed so far.
    pub fn len(&self) -> usize {
        self.packer.len()
    }

    /// Whether no event was pushed.
    pub fn is_empty(&self) -> bool {
        self.packer.is_empty()
    }

    /// The batch.
    pub fn finish(self) -> Batch {
        Batch {
            bytes: self.packer.bytes,
            events: self.packer.events,
            extensions: self.packer.extensions,
        }
    }
}

/// Appends a CloudEvent to a batch being packed; returns its index.
pub fn push_event(p: &mut Packer, event: &Event) -> u32 {
    let extensions_first = p.next_extension();
    let mut extensions_count = 0;
    for (name, value) in event.iter_extensions() {
        match value {
            ExtensionValue::String(s) => {
                p.extension(name.as_bytes(), s.as_bytes(), ExtensionKind::String)
            }
            ExtensionValue::Boolean(b) => p.extension(
                name.as_bytes(),
                if *b { b"true" } else { b"false" },
                ExtensionKind::Boolean,
            ),
            ExtensionValue::Integer(i) => p.extension(
                name.as_bytes(),
                i.to_string().as_bytes(),
                ExtensionKind::Integer,
            ),
        }
        extensions_count += 1;
    }
    let data = event.data().map(|data| {
        p.write_with(|bytes| match data {
            Data::Binary(b) => bytes.extend_from_slice(b),
            Data::String(s) => bytes.extend_from_slice(s.as_bytes()),
            Data::Json(v) => {
                // Writing a `Value` into a Vec cannot fail.
                let _ = serde_json::to_writer(bytes, v);
            }
        })
    });
    let time = event
        .time()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    let spans = EventSpans {
        id: p.bytes(event.id().as_bytes()),
        source: p.bytes(event.source().as_bytes()),
        ty: p.bytes(event.ty().as_bytes()),
        subject: p.bytes(event.subject().unwrap_or_default().as_bytes()),
        time: p.bytes(time.as_deref().unwrap_or_default().as_bytes()),
        datacontenttype: p.bytes(event.datacontenttype().unwrap_or_default().as_bytes()),
        dataschema: p.bytes(
            event
                .dataschema()
                .map(|u| u.as_str())
                .unwrap_or_default()
                .as_bytes(),
        ),
        data,
        extensions_first,
        extensions_count,
    };
    p.event(&spans)
}

/// Packs `events` into one batch.
pub fn pack<'e>(events: impl IntoIterator<Item = &'e Event>) -> Batch {
    let mut builder = BatchBuilder::default();
    for event in events {
        builder.push(event);
    }
    builder.finish()
}

/// Reads packed event `index` of `batch` back into a validated CloudEvent.
pub fn unpack(batch: &impl Packed, index: u32) -> Result<Event, PackError> {
    unpack_view(&batch.view(), index)
}

/// [`unpack`] over any packed lists.
pub fn unpack_view(view: &View<'_>, index: u32) -> Result<Event, PackError> {
    read_view(view, index, true).map(|event| event.unwrap_or_default())
}

/// Checks packed event `index` of `view` as [`unpack_view`] does, without
/// building the event: the host checks every event a processor creates
/// before storing it, and building one (its JSON data parsed into a tree)
/// cost more than the rest of its way to the broker.
pub fn check_view(view: &View<'_>, index: u32) -> Result<(), PackError> {
    read_view(view, index, false).map(|_| ())
}

/// The one reading of a packed event: every check, and with `build` the
/// event itself.
fn read_view(view: &View<'_>, index: u32, build: bool) -> Result<Option<Event>, PackError> {
    let packed = view
        .event(index as usize)
        .ok_or(PackError::EmitOutOfRange {
            what: "created",
            index,
            len: view.len(),
        })?;
    let bytes = |what: &'static str, span: Span| -> Result<&[u8], PackError> {
        view.slice(span).ok_or(PackError::SpanOutOfBounds {
            index,
            what,
            offset: span.offset,
            len: span.len,
            size: view.bytes.len(),
        })
    };
    let text = |what: &'static str, span: Span| -> Result<&str, PackError> {
        std::str::from_utf8(bytes(what, span)?).map_err(|_| PackError::NotUtf8 { index, what })
    };
    let required = |what: &'static str, span: Span| -> Result<&str, PackError> {
        let s = text(what, span)?;
        if s.is_empty() {
            return Err(PackError::MissingRequired { index, what });
        }
        Ok(s)
    };
    let optional = |what: &'static str, span: Span| -> Result<Option<&str>, PackError> {
        text(what, span).map(|s| (!s.is_empty()).then_some(s))
    };

    let id = required("id", packed.id)?;
    let source = required("source", packed.source)?;
    let ty = required("type", packed.ty)?;
    let subject = optional("subject", packed.subject)?;
    let time = optional("time", packed.time)?
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| PackError::BadTime {
                    index,
                    value: t.to_owned(),
                    reason: e.to_string(),
                })
        })
        .transpose()?;
    let content_type = optional("datacontenttype", packed.datacontenttype)?;
    let schema = optional("dataschema", packed.dataschema)?
        .map(|schema| {
            schema
                .parse::<url::Url>()
                .map_err(|e| PackError::BadSchema {
                    index,
                    value: schema.to_owned(),
                    reason: e.to_string(),
                })
        })
        .transpose()?;
    let data = packed.data.map(|span| bytes("data", span)).transpose()?;

    let first = packed.extensions_first;
    let count = packed.extensions_count;
    let out_of_bounds = PackError::ExtensionsOutOfBounds {
        index,
        first,
        count,
        len: view.extensions_len(),
    };
    let end = (first as usize)
        .checked_add(count as usize)
        .filter(|end| *end <= view.extensions_len())
        .ok_or(out_of_bounds.clone())?;
    let extension = |i: usize| -> Result<(&str, &str, Option<ExtensionKind>), PackError> {
        let ext = view.extension(i).ok_or(out_of_bounds.clone())?;
        let name = text("extension name", ext.name)?;
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid || is_core_attribute(name) {
            return Err(PackError::BadExtensionName {
                index,
                name: name.to_owned(),
            });
        }
        let value = text("extension value", ext.value)?;
        Ok((name, value, ExtensionKind::from_word(ext.kind)))
    };
    for i in first as usize..end {
        extension(i)?;
    }
    if !build {
        return Ok(None);
    }

    let mut event = Event::default();
    event.set_id(id);
    event.set_source(source);
    event.set_type(ty);
    event.set_subject(subject);
    event.set_time(time);
    event.set_dataschema(schema);
    event.set_datacontenttype(content_type);
    if let Some(data) = data {
        event.set_data_unchecked(data_from_bytes(content_type, data));
    }
    for i in first as usize..end {
        let (name, value, kind) = extension(i)?;
        let value = match kind {
            Some(ExtensionKind::Boolean) if value == "true" => ExtensionValue::Boolean(true),
            Some(ExtensionKind::Boolean) if value == "false" => ExtensionValue::Boolean(false),
            Some(ExtensionKind::Integer) => match value.parse() {
                Ok(i) => ExtensionValue::Integer(i),
                Err(_) => ExtensionValue::String(value.to_owned()),
            },
            _ => ExtensionValue::String(value.to_owned()),
        };
        event.set_extension(name, value);
    }
    Ok(Some(event))
}

fn is_core_attribute(name: &str) -> bool {
    matches!(
        name,
        "id" | "source"
            | "specversion"
            | "type"
            | "subject"
            | "time"
            | "datacontenttype"
            | "dataschema"
            | "data"
            | "data_base64"
    )
}

/// The [`Data`] variant that round-trips through the CloudEvents JSON format
/// the way the bytes were meant: JSON for JSON content types (when the bytes
/// parse), text for `text/*`, binary otherwise.
pub fn data_from_bytes(content_type: Option<&str>, bytes: &[u8]) -> Data {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let is_json = match media.as_deref() {
        None => true,
        Some(m) => m == "application/json" || m == "text/json" || m.ends_with("+json"),
    };
    if is_json && let Ok(v) = serde_json::from_slice(bytes) {
        return Data::Json(v);
    }
    let is_text = media.as_deref().is_some_and(|m| m.starts_with("text/"));
    match std::str::from_utf8(bytes) {
        Ok(s) if is_text => Data::String(s.to_owned()),
        _ => Data::Binary(bytes.to_vec()),
    }
}

/// Turns the emits of one processor call into the events to store, in order,
/// each with its output port. `inputs` are the events of the call's batch (a
/// forward clones one of them); `created` is the call's created batch;
/// `ports` is `None` for single-output kinds (every emit goes to port 0).
pub fn resolve(
    inputs: &[Event],
    created: &impl Packed,
    emits: &[u32],
    ports: Option<&[u32]>,
    outputs: usize,
) -> Result<Vec<(u32, Event)>, PackError> {
    if let Some(ports) = ports
        && ports.len() != emits.len()
    {
        return Err(PackError::PortsMismatch {
            emits: emits.len(),
            ports: ports.len(),
        });
    }
    let mut out = Vec::with_capacity(emits.len());
    for (i, word) in emits.iter().enumerate() {
        let port = ports.map_or(0, |p| p[i]);
        if port as usize >= outputs {
            return Err(PackError::PortOutOfRange {
                port,
                ports: outputs,
            });
        }
        let event = match Emit::from_word(*word) {
            Emit::Forward(i) => {
                inputs
                    .get(i as usize)
                    .cloned()
                    .ok_or(PackError::EmitOutOfRange {
                        what: "input",
                        index: i,
                        len: inputs.len(),
                    })?
            }
            Emit::Created(i) => unpack(created, i)?,
        };
        out.push((port, event));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::EventBuilder;
    use cloudevents::EventBuilderV10;

    fn full_event() -> Event {
        let mut e = EventBuilderV10::new()
            .id("evt-1")
            .source("/invoices/eu")
            .ty("created.invoice")
            .subject("INV-7")
            .time("2026-11-25T10:00:00.123Z")
            .data_with_schema(
                "application/json",
                "https://example.com/invoice.json",
                serde_json::json!({"amount": 12.5, "lines": [1, 2]}),
            )
            .extension("region", "eu")
            .extension("priority", 3i64)
            .extension("urgent", true)
            .build()
            .expect("valid event");
        e.set_extension("traceparent", "00-abc-def-01");
        e
    }

    #[test]
    fn pack_unpack_round_trips_every_attribute() {
        let binary = EventBuilderV10::new()
            .id("evt-2")
            .source("urn:sensor:7")
            .ty("reading")
            .data("application/octet-stream", vec![0u8, 159, 146, 150])
            .build()
            .expect("valid event");
        let text = EventBuilderV10::new()
            .id("evt-3")
            .source("urn:x")
            .ty("note")
            .data("text/plain", "hello".to_string())
            .build()
            .expect("valid event");
        let bare = EventBuilderV10::new()
            .id("evt-4")
            .source("urn:x")
            .ty("ping")
            .build()
            .expect("valid event");
        let events = vec![full_event(), binary, text, bare];
        let batch = pack(&events);
        for (i, original) in events.iter().enumerate() {
            let back = unpack(&batch, i as u32).expect("unpacks");
            assert_eq!(&back, original, "event {i} round-trips");
        }
    }

    #[test]
    fn unpack_rejects_hostile_spans() {
        use flow_abi::word;
        let mut batch = pack(&[full_event()]);
        batch.events[word::SUBJECT] = u32::MAX;
        batch.events[word::SUBJECT + 1] = 10;
        let err = unpack(&batch, 0).expect_err("span out of bounds");
        assert!(
            matches!(
                err,
                PackError::SpanOutOfBounds {
                    what: "subject",
                    ..
                }
            ),
            "{err}"
        );

        let mut batch = pack(&[full_event()]);
        batch.events[word::ID + 1] = 0;
        assert_eq!(
            unpack(&batch, 0),
            Err(PackError::MissingRequired {
                index: 0,
                what: "id"
            })
        );

        let mut batch = pack(&[full_event()]);
        batch.events[word::EXTENSIONS_COUNT] = 99;
        assert!(matches!(
            unpack(&batch, 0),
            Err(PackError::ExtensionsOutOfBounds { .. })
        ));

        let mut batch = pack(&[full_event()]);
        let at = batch.events[word::TIME] as usize;
        batch.bytes[at] = b'X';
        assert!(matches!(unpack(&batch, 0), Err(PackError::BadTime { .. })));
    }

    #[test]
    fn checking_an_event_refuses_what_unpacking_it_refuses() {
        use flow_abi::word;
        let verdicts = |batch: &Batch| {
            let checked = check_view(&batch.view(), 0).err();
            assert_eq!(checked, unpack(batch, 0).err());
            checked
        };
        assert_eq!(verdicts(&pack(&[full_event()])), None);
        let hostile: [&dyn Fn(&mut Batch); 6] = [
            &|b| b.events[word::SUBJECT] = u32::MAX,
            &|b| b.events[word::ID + 1] = 0,
            &|b| b.events[word::EXTENSIONS_COUNT] = 99,
            &|b| {
                let at = b.events[word::TIME] as usize;
                b.bytes[at] = b'X';
            },
            &|b| {
                let at = b.events[word::DATASCHEMA] as usize;
                b.bytes[at] = b':';
            },
            &|b| {
                let at = b.extensions[0] as usize;
                b.bytes[at] = b'-';
            },
        ];
        for (k, spoil) in hostile.iter().enumerate() {
            let mut batch = pack(&[full_event()]);
            spoil(&mut batch);
            assert!(verdicts(&batch).is_some(), "spoiled batch {k} passed");
        }
    }

    #[test]
    fn resolve_checks_ports_and_indexes() {
        let inputs = vec![full_event()];
        let created = pack(&[]);
        let forward = Emit::Forward(0).to_word();
        let ok = resolve(&inputs, &created, &[forward], None, 1).expect("resolves");
        assert_eq!(ok, vec![(0, inputs[0].clone())]);
        assert_eq!(
            resolve(&inputs, &created, &[forward], Some(&[1]), 1),
            Err(PackError::PortOutOfRange { port: 1, ports: 1 })
        );
        assert_eq!(
            resolve(&inputs, &created, &[forward, forward], Some(&[0]), 1),
            Err(PackError::PortsMismatch { emits: 2, ports: 1 })
        );
        assert!(matches!(
            resolve(&inputs, &created, &[Emit::Forward(5).to_word()], None, 1),
            Err(PackError::EmitOutOfRange { what: "input", .. })
        ));
        assert!(matches!(
            resolve(&inputs, &created, &[Emit::Created(0).to_word()], None, 1),
            Err(PackError::EmitOutOfRange {
                what: "created",
                ..
            })
        ));
    }
}
