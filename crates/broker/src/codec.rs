//! Events on the wire: the CloudEvents NATS protocol binding.
//!
//! flowd writes **binary mode**: every attribute in a `ce-<attribute>` header
//! (values percent-encoded as the binding asks), the data as the payload.
//! Extension attributes that are not strings are listed in a
//! `Flowd-Ext-Types` header (`count=integer,urgent=boolean`) so their type
//! survives the hop. It reads binary mode, structured mode
//! (`Content-Type: application/cloudevents+json`), and anything else as a
//! *raw* event, which it wraps instead of rejecting: id `<stream>-<sequence>`
//! (stable across redeliveries), source `nats:<subject>`, type `eson.raw`.
//!
//! Messages are packed straight into processor batches and back, without
//! building a `cloudevents::Event` on the hot path.

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use flow_abi::{EventSpans, ExtensionKind, Packer, Span, View};
use flowd_core::event::Event;
use flowd_core::event::packed::{self, PackError};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::str::FromStr;

/// Characters the binding percent-encodes (besides non-ASCII).
const ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');
/// Header naming the non-string extensions and their types.
pub const EXTENSION_TYPES: &str = "Flowd-Ext-Types";
/// Type of wrapped raw events.
pub const RAW_TYPE: &str = "eson.raw";

/// Where a stored message is, for wrapping raw ones with a stable id.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The stream the message is stored in.
    pub stream: &'a str,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// The subject it was published on (a raw event's source).
    pub subject: &'a str,
}

/// `value` percent-encoded as the binding asks (borrowed when nothing
/// needs it).
fn encode(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, ENCODE).into()
}

fn decode(value: &str) -> Cow<'_, str> {
    // Most values have nothing encoded; a header value is UTF-8 already.
    if !value.as_bytes().contains(&b'%') {
        return Cow::Borrowed(value);
    }
    percent_decode_str(value).decode_utf8_lossy()
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| AsRef::<str>::as_ref(n).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

/// The value of CloudEvents attribute `name` (an extension or a context
/// attribute, without the `ce-` prefix) in a stored message's headers.
pub fn attribute<'h>(headers: &'h HeaderMap, name: &str) -> Option<Cow<'h, str>> {
    header(headers, &format!("ce-{name}")).map(decode)
}

/// Sets (or replaces) CloudEvents attribute `name` in a message's headers,
/// encoded as [`message_for`] encodes attributes.
pub fn set_attribute(headers: &mut HeaderMap, name: &str, value: &str) {
    headers.insert(
        format!("ce-{name}").as_str(),
        utf8_percent_encode(value, ENCODE).to_string(),
    );
}

/// Packs one stored message into a batch; returns its index.
pub fn pack_message(
    p: &mut Packer,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    origin: Origin<'_>,
) -> u32 {
    if let Some(h) = headers {
        if let Some(index) = pack_binary(p, h, payload) {
            return index;
        }
        let structured = header(h, "content-type").is_some_and(|c| {
            c.to_ascii_lowercase()
                .starts_with("application/cloudevents")
        });
        if structured && let Ok(event) = serde_json::from_slice::<Event>(payload) {
            return packed::push_event(p, &event);
        }
    }
    pack_raw(p, headers, payload, origin)
}

/// The types `Flowd-Ext-Types` gives extensions, by lower-case name (the
/// first entry naming one counts), read once per message: a hostile header
/// can be long and name many extensions.
fn extension_kinds(types: &str) -> std::collections::HashMap<String, ExtensionKind> {
    let mut kinds = std::collections::HashMap::new();
    for (name, kind) in types.split(',').filter_map(|pair| pair.split_once('=')) {
        let kind = match kind.trim() {
            "integer" => ExtensionKind::Integer,
            "boolean" => ExtensionKind::Boolean,
            _ => ExtensionKind::String,
        };
        kinds
            .entry(name.trim().to_ascii_lowercase())
            .or_insert(kind);
    }
    kinds
}

/// Packs a binary-mode CloudEvent (a `ce-specversion` header, and a
/// non-empty id, source and type) in one pass over its headers; `None`,
/// with nothing left in the batch, for any other message.
///
/// One pass, because the headers are a hash map: every look-up by name is
/// a scan, and this runs for every event a processor reads.
fn pack_binary(p: &mut Packer, h: &HeaderMap, payload: &[u8]) -> Option<u32> {
    let (bytes_before, extensions_before) = (p.bytes.len(), p.extensions.len());
    let packed = pack_binary_in(p, h, payload);
    if packed.is_none() {
        p.bytes.truncate(bytes_before);
        p.extensions.truncate(extensions_before);
    }
    packed
}

fn pack_binary_in(p: &mut Packer, h: &HeaderMap, payload: &[u8]) -> Option<u32> {
    let mut types: Option<&str> = None;
    let mut specversion = false;
    let mut attrs: [Option<Cow<'_, str>>; 7] = Default::default();
    let extensions_first = p.next_extension();
    let mut extensions_count = 0;
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case(EXTENSION_TYPES) {
            types = types.or(values.first().map(|v| v.as_str()));
            continue;
        }
        let Some(attr) = name
            .get(..3)
            .filter(|prefix| prefix.eq_ignore_ascii_case("ce-"))
            .map(|_| {
                // Header names are case-insensitive; ours are lower case
                // already, so this rarely allocates.
                let attr = &name[3..];
                if attr.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(attr.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(attr)
                }
            })
        else {
            continue;
        };
        let Some(value) = values.first() else {
            continue;
        };
        let value = decode(value.as_str());
        let slot = match attr.as_ref() {
            "id" => 0,
            "source" => 1,
            "type" => 2,
            "subject" => 3,
            "time" => 4,
            "datacontenttype" => 5,
            "dataschema" => 6,
            "specversion" => {
                specversion = true;
                continue;
            }
            ext => {
                let valid = !ext.is_empty()
                    && ext
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if valid {
                    // Typed below, once `Flowd-Ext-Types` has been seen.
                    p.extension(ext.as_bytes(), value.as_bytes(), ExtensionKind::String);
                    extensions_count += 1;
                }
                continue;
            }
        };
        attrs[slot] = Some(value);
    }
    let [id, source, ty, subject, time, datacontenttype, dataschema] = attrs;
    let (id, source, ty) = (id?, source?, ty?);
    if !specversion || id.is_empty() || source.is_empty() || ty.is_empty() {
        return None;
    }
    if let Some(types) = types
        && extensions_count > 0
    {
        let kinds = extension_kinds(types);
        for k in extensions_first..extensions_first + extensions_count {
            let at = k as usize * flow_abi::EXTENSION_WORDS;
            let (offset, len) = (p.extensions[at] as usize, p.extensions[at + 1] as usize);
            let name = std::str::from_utf8(p.bytes.get(offset..offset + len)?).ok()?;
            if let Some(kind) = kinds.get(name) {
                p.extensions[at + 4] = *kind as u32;
            }
        }
    }
    let mut text = |s: &Option<Cow<'_, str>>| p.bytes(s.as_deref().unwrap_or_default().as_bytes());
    let subject = text(&subject);
    let time = text(&time);
    let has_type = datacontenttype.is_some();
    let datacontenttype = text(&datacontenttype);
    let dataschema = text(&dataschema);
    let spans = EventSpans {
        id: p.bytes(id.as_bytes()),
        source: p.bytes(source.as_bytes()),
        ty: p.bytes(ty.as_bytes()),
        subject,
        time,
        datacontenttype,
        dataschema,
        data: (has_type || !payload.is_empty()).then(|| p.bytes(payload)),
        extensions_first,
        extensions_count,
    };
    Some(p.event(&spans))
}

fn pack_raw(
    p: &mut Packer,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    origin: Origin<'_>,
) -> u32 {
    let content_type = headers
        .and_then(|h| header(h, "content-type"))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
                "application/json".into()
            } else {
                "application/octet-stream".into()
            }
        });
    let spans = EventSpans {
        id: p.bytes(format!("{}-{}", origin.stream, origin.sequence).as_bytes()),
        source: p.bytes(format!("nats:{}", origin.subject).as_bytes()),
        ty: p.bytes(RAW_TYPE.as_bytes()),
        subject: Span::default(),
        time: Span::default(),
        datacontenttype: p.bytes(content_type.as_bytes()),
        dataschema: Span::default(),
        data: Some(p.bytes(payload)),
        extensions_first: p.next_extension(),
        extensions_count: 0,
    };
    p.event(&spans)
}

/// The headers and payload that carry packed event `spans` of `view`.
pub fn message_for(view: &View<'_>, spans: &EventSpans) -> (HeaderMap, Bytes) {
    let text = |span: Span| {
        view.slice(span)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    };
    // Names made once (no parsing or allocation per event); a value with
    // nothing to encode is copied as it is rather than formatted.
    const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
    const ID: HeaderName = HeaderName::from_static("ce-id");
    const SOURCE: HeaderName = HeaderName::from_static("ce-source");
    const TYPE: HeaderName = HeaderName::from_static("ce-type");
    const SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
    const TIME: HeaderName = HeaderName::from_static("ce-time");
    const DATACONTENTTYPE: HeaderName = HeaderName::from_static("ce-datacontenttype");
    const DATASCHEMA: HeaderName = HeaderName::from_static("ce-dataschema");
    let mut h = HeaderMap::new();
    let mut put = |name: HeaderName, value: &str| {
        if !value.is_empty() {
            h.insert(name, encode(value).into_owned());
        }
    };
    put(SPECVERSION, "1.0");
    put(ID, text(spans.id));
    put(SOURCE, text(spans.source));
    put(TYPE, text(spans.ty));
    put(SUBJECT, text(spans.subject));
    put(TIME, text(spans.time));
    put(DATACONTENTTYPE, text(spans.datacontenttype));
    put(DATASCHEMA, text(spans.dataschema));
    let mut typed = Vec::new();
    let first = spans.extensions_first as usize;
    for i in first..first + spans.extensions_count as usize {
        let Some(ext) = view.extension(i) else {
            continue;
        };
        let name = text(ext.name);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            continue;
        }
        match HeaderName::from_str(&format!("ce-{name}")) {
            Ok(header) => put(header, text(ext.value)),
            Err(_) => continue,
        }
        match ExtensionKind::from_word(ext.kind) {
            Some(ExtensionKind::Integer) => typed.push(format!("{name}=integer")),
            Some(ExtensionKind::Boolean) => typed.push(format!("{name}=boolean")),
            _ => {}
        }
    }
    if !typed.is_empty() {
        h.insert(EXTENSION_TYPES, typed.join(","));
    }
    let payload = spans
        .data
        .and_then(|d| view.slice(d))
        .map(Bytes::copy_from_slice)
        .unwrap_or_default();
    (h, payload)
}

/// The headers and payload that carry `event`.
pub fn message_for_event(event: &Event) -> (HeaderMap, Bytes) {
    let mut p = Packer::default();
    packed::push_event(&mut p, event);
    let view = View::new(&p.bytes, &p.events, &p.extensions);
    let spans = view.event(0).unwrap_or_default();
    message_for(&view, &spans)
}

/// The event a stored message carries (wrapping raw messages).
pub fn event_from_message(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    origin: Origin<'_>,
) -> Result<Event, PackError> {
    let mut p = Packer::default();
    pack_message(&mut p, headers, payload, origin);
    packed::unpack_view(&View::new(&p.bytes, &p.events, &p.extensions), 0)
}

/// The stream sequence of a message pulled from `stream`, and the event it
/// carries.
pub fn stored_event(
    message: &async_nats::jetstream::Message,
    stream: &str,
) -> (u64, Result<Event, PackError>) {
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    let event = event_from_message(
        message.headers.as_ref(),
        &message.payload,
        Origin {
            stream,
            sequence,
            subject: &message.subject,
        },
    );
    (sequence, event)
}

/// The JetStream message id (`Nats-Msg-Id`) of an event written by `scope`
/// (a processor, or a writer) to output `port`: derived from the event's
/// `source` and `id`, which CloudEvents defines as its identity. A replay of
/// the same event is then dropped by the stream's duplicate window,
/// whatever batch it was replayed in.
pub fn message_id(scope: &str, port: u32, source: &[u8], id: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(scope.as_bytes());
    hash.update([0]);
    hash.update(port.to_le_bytes());
    hash.update(source);
    hash.update([0]);
    hash.update(id);
    let digest = hash.finalize();
    // Lower-case hex of the first 16 bytes, written in place (the `hex`
    // crate's iterator costs as much as the hash here).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for b in &digest[..16] {
        id.push(DIGITS[usize::from(b >> 4)] as char);
        id.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};

    const ORIGIN: Origin<'static> = Origin {
        stream: "FLOW_a_b",
        sequence: 7,
        subject: "flow.a.b",
    };

    #[test]
    fn binary_mode_round_trips_with_typed_extensions() {
        let event = EventBuilderV10::new()
            .id("évent 1%")
            .source("urn:s")
            .ty("t")
            .subject("line\r\nbreak")
            .time("2026-11-25T10:00:00Z")
            .extension("count", 3i64)
            .extension("urgent", true)
            .extension("region", "eu west")
            .data("application/json", serde_json::json!({"a": 1}))
            .build()
            .expect("valid");
        let (headers, payload) = message_for_event(&event);
        assert_eq!(header(&headers, "ce-id"), Some("%C3%A9vent%201%25"));
        assert_eq!(header(&headers, "ce-subject"), Some("line%0D%0Abreak"));
        let back = event_from_message(Some(&headers), &payload, ORIGIN).expect("decodes");
        assert_eq!(back, event);
    }

    #[test]
    fn raw_and_structured_messages_are_accepted() {
        let raw = event_from_message(None, br#"{"t": 21}"#, ORIGIN).expect("wrapped");
        assert_eq!(raw.id(), "FLOW_a_b-7");
        assert_eq!(raw.ty(), RAW_TYPE);
        assert_eq!(raw.source(), "nats:flow.a.b");
        assert_eq!(raw.datacontenttype(), Some("application/json"));

        let event = EventBuilderV10::new()
            .id("s1")
            .source("urn:s")
            .ty("t")
            .build()
            .expect("valid");
        let mut h = HeaderMap::new();
        h.insert("Content-Type", "application/cloudevents+json");
        let json = serde_json::to_vec(&event).expect("json");
        assert_eq!(
            event_from_message(Some(&h), &json, ORIGIN).expect("structured"),
            event
        );

        let mut broken = HeaderMap::new();
        broken.insert("ce-specversion", "1.0");
        broken.insert("ce-id", "x");
        let wrapped = event_from_message(Some(&broken), b"bytes", ORIGIN).expect("wrapped");
        assert_eq!(
            wrapped.ty(),
            RAW_TYPE,
            "a binary event without source/type is wrapped"
        );
    }

    #[test]
    fn message_ids_depend_on_identity_not_batch() {
        let a = message_id("p1", 0, b"urn:s", b"1");
        assert_eq!(a, message_id("p1", 0, b"urn:s", b"1"));
        assert_ne!(a, message_id("p1", 1, b"urn:s", b"1"));
        assert_ne!(a, message_id("p2", 0, b"urn:s", b"1"));
        assert_ne!(a, message_id("p1", 0, b"urn:s", b"2"));
        // The same ids as ever: a host upgraded while its outputs are in
        // the duplicate window must not store them twice.
        let mut hash = Sha256::new();
        hash.update(b"p1\0");
        hash.update(0u32.to_le_bytes());
        hash.update(b"urn:s\0");
        hash.update(b"1");
        assert_eq!(a, hex::encode(&hash.finalize()[..16]));
    }

    #[test]
    fn binary_mode_packs_in_one_pass_whatever_the_header_order() {
        let binary = |specversion: bool| {
            let mut headers = HeaderMap::new();
            if specversion {
                headers.insert("ce-specversion", "1.0");
            }
            headers.insert("ce-id", "a%20b");
            headers.insert("ce-source", "urn:s");
            headers.insert("ce-type", "t");
            headers.insert("ce-count", "3");
            headers.insert("ce-urgent", "true");
            headers.insert("ce-tenant", "acme");
            headers.insert(EXTENSION_TYPES, "count=integer, urgent=boolean");
            headers
        };
        let headers = binary(true);
        let mut p = Packer::default();
        let i = pack_message(&mut p, Some(&headers), b"{}", ORIGIN);
        let view = View::new(&p.bytes, &p.events, &p.extensions);
        let event = packed::unpack_view(&view, i).expect("valid");
        assert_eq!(cloudevents::AttributesReader::id(&event), "a b");
        use cloudevents::event::ExtensionValue;
        assert_eq!(event.extension("count"), Some(&ExtensionValue::Integer(3)));
        assert_eq!(
            event.extension("urgent"),
            Some(&ExtensionValue::Boolean(true))
        );
        assert_eq!(
            event.extension("tenant"),
            Some(&ExtensionValue::String("acme".into()))
        );

        // Without `ce-specversion` it is a raw event, and nothing of the
        // attempt to read it as binary mode is left in the batch.
        let headers = binary(false);
        let mut p = Packer::default();
        let i = pack_message(&mut p, Some(&headers), b"{}", ORIGIN);
        let view = View::new(&p.bytes, &p.events, &p.extensions);
        let event = packed::unpack_view(&view, i).expect("valid");
        assert_eq!(cloudevents::AttributesReader::ty(&event), RAW_TYPE);
        assert_eq!(p.extensions.len(), 0);
        assert!(
            p.bytes.len() < 64,
            "{} bytes left in the batch",
            p.bytes.len()
        );
    }

    #[test]
    fn the_first_type_given_an_extension_counts_whatever_its_case() {
        let mut headers = HeaderMap::new();
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-id", "1");
        headers.insert("ce-source", "urn:s");
        headers.insert("ce-type", "t");
        headers.insert("ce-count", "3");
        headers.insert("ce-urgent", "true");
        // A hostile header: many entries, the later ones contradicting the
        // first, and entries that are not pairs at all.
        let mut types = String::from("COUNT=integer,count=boolean,urgent=boolean,junk");
        for i in 0..1000 {
            types.push_str(&format!(",x{i}=integer,urgent=integer"));
        }
        headers.insert(EXTENSION_TYPES, types.as_str());
        let mut p = Packer::default();
        let i = pack_message(&mut p, Some(&headers), b"{}", ORIGIN);
        let view = View::new(&p.bytes, &p.events, &p.extensions);
        let event = packed::unpack_view(&view, i).expect("valid");
        use cloudevents::event::ExtensionValue;
        assert_eq!(event.extension("count"), Some(&ExtensionValue::Integer(3)));
        assert_eq!(
            event.extension("urgent"),
            Some(&ExtensionValue::Boolean(true))
        );
    }
}
