//! JSON lines: one event per line, the way events enter and leave `flowd run`
//! and `flow write`/`flow read`.
//!
//! A line that is a JSON object with a `specversion` member is a CloudEvent in
//! the CloudEvents JSON format and must be a valid one. Any other line is a
//! raw event from a producer that does not speak CloudEvents: it is wrapped,
//! not rejected (see [`Wrap`]).

use cloudevents::Event;
use cloudevents::event::{AttributesWriter, Data};
use std::io::BufRead;

/// Why a line is not an event.
// The variants' `#[error]` texts are their documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("line {line}: not a valid CloudEvent: {source}")]
    InvalidCloudEvent {
        line: usize,
        source: serde_json::Error,
    },
    #[error("line {line}: {source}")]
    Io { line: usize, source: std::io::Error },
}

/// How raw (non-CloudEvents) lines are wrapped into CloudEvents: a fresh UUID
/// `id`, this `source` and `type`, the line as data (`application/json` when
/// it parses as JSON, `text/plain` otherwise).
#[derive(Debug, Clone)]
pub struct Wrap {
    /// The CloudEvents `source` of every wrapped line.
    pub source: String,
    /// The CloudEvents `type` of every wrapped line.
    pub ty: String,
}

impl Default for Wrap {
    fn default() -> Self {
        Wrap {
            source: "urn:flowd:raw".into(),
            ty: "eson.raw".into(),
        }
    }
}

impl Wrap {
    /// Wraps one raw payload.
    pub fn wrap(&self, payload: &str) -> Event {
        let mut event = Event::default();
        event.set_id(uuid::Uuid::new_v4().to_string());
        event.set_source(self.source.as_str());
        event.set_type(self.ty.as_str());
        event.set_time(Some(chrono::Utc::now()));
        match serde_json::from_str::<serde_json::Value>(payload) {
            Ok(v) => {
                event.set_datacontenttype(Some("application/json"));
                event.set_data_unchecked(Data::Json(v));
            }
            Err(_) => {
                event.set_datacontenttype(Some("text/plain"));
                event.set_data_unchecked(Data::String(payload.to_owned()));
            }
        }
        event
    }
}

/// Parses one line (numbered `line` for errors).
pub fn parse_line(text: &str, line: usize, wrap: &Wrap) -> Result<Event, JsonlError> {
    let trimmed = text.trim();
    if trimmed.starts_with('{')
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed)
        && value.get("specversion").is_some()
    {
        return serde_json::from_value(value)
            .map_err(|source| JsonlError::InvalidCloudEvent { line, source });
    }
    Ok(wrap.wrap(trimmed))
}

/// Reads events from JSON lines, skipping blank lines.
pub fn read(input: impl BufRead, wrap: Wrap) -> impl Iterator<Item = Result<Event, JsonlError>> {
    input
        .lines()
        .enumerate()
        .filter_map(move |(i, line)| match line {
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(parse_line(&text, i + 1, &wrap)),
            Err(source) => Some(Err(JsonlError::Io {
                line: i + 1,
                source,
            })),
        })
}

/// One event as a line of the CloudEvents JSON format (no newline).
pub fn to_line(event: &Event) -> String {
    // Serialising an `Event` (strings, numbers, JSON values) cannot fail.
    serde_json::to_string(event).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader;

    #[test]
    fn cloudevents_lines_parse_and_round_trip() {
        let line = r#"{"specversion":"1.0","id":"1","source":"urn:a","type":"t","subject":"s","datacontenttype":"application/json","data":{"x":1},"region":"eu"}"#;
        let event = parse_line(line, 1, &Wrap::default()).expect("parses");
        assert_eq!(event.id(), "1");
        assert_eq!(event.subject(), Some("s"));
        assert_eq!(
            event.extension("region"),
            Some(&cloudevents::event::ExtensionValue::String("eu".into()))
        );
        let again = parse_line(&to_line(&event), 1, &Wrap::default()).expect("parses");
        assert_eq!(again, event);
    }

    #[test]
    fn raw_lines_are_wrapped_and_bad_cloudevents_rejected() {
        let wrap = Wrap::default();
        let raw = parse_line(r#"{"temperature": 21}"#, 1, &wrap).expect("wrapped");
        assert_eq!(raw.ty(), "eson.raw");
        assert_eq!(raw.datacontenttype(), Some("application/json"));
        assert_eq!(
            raw.data(),
            Some(&Data::Json(serde_json::json!({"temperature": 21})))
        );
        let text = parse_line("plain words", 2, &wrap).expect("wrapped");
        assert_eq!(text.data(), Some(&Data::String("plain words".into())));

        let err = parse_line(r#"{"specversion":"1.0","source":"urn:a"}"#, 7, &wrap)
            .expect_err("missing id and type");
        assert!(
            err.to_string()
                .starts_with("line 7: not a valid CloudEvent"),
            "{err}"
        );
    }
}
