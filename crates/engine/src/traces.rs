//! Traces: OpenTelemetry spans for what the host does with events, and the
//! CloudEvents distributed-tracing extension (`traceparent`, `tracestate`)
//! that carries an event's trace from one participant to the next.
//!
//! The extension holds the context an event was *created* in (the
//! CloudEvents rule: not the trace of each hop). So the host
//!
//! - leaves a forwarded event's `traceparent` as it is, and links the span
//!   of the batch that forwarded it to that context;
//! - gives an event a processor created the context of the span that
//!   created it: a child of the `traceparent` the guest copied from its
//!   input (the SDKs' `to_new` copies it), or the batch's own span;
//! - starts a trace for an event written without one, when its write is
//!   sampled.
//!
//! Spans are made only when the host exports them (`[telemetry]`); with
//! [`Traces::off`] nothing here runs and events pass untouched. Whatever an
//! event's producer wrote is hostile: a `traceparent` that is not valid W3C
//! trace context is ignored (and left in the event), and the spans one
//! batch makes for its events are capped ([`EVENT_SPANS`]).

use async_nats::HeaderMap;
use flowd_broker::codec;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, Tracer};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

pub use opentelemetry::trace::{Link, Span, SpanKind, Status};
pub use opentelemetry::{Context, KeyValue};

/// The most spans one batch (or one write) makes for its events; the
/// events past it keep their context and get no span of their own.
pub const EVENT_SPANS: usize = 64;

/// The most links to its events' contexts a batch span carries.
pub const BATCH_LINKS: usize = 32;

/// The span type the host makes.
pub type HostSpan = opentelemetry_sdk::trace::Span;

/// Where the host's spans go: nowhere ([`Traces::off`], the default) or a
/// tracer whose provider exports them.
#[derive(Clone, Default)]
pub struct Traces {
    tracer: Option<SdkTracer>,
}

impl Traces {
    /// No spans; events pass untouched.
    pub fn off() -> Traces {
        Traces { tracer: None }
    }

    /// Spans made with `tracer`.
    pub fn new(tracer: SdkTracer) -> Traces {
        Traces {
            tracer: Some(tracer),
        }
    }

    /// Whether spans are made.
    pub fn is_on(&self) -> bool {
        self.tracer.is_some()
    }

    /// Starts span `name` of `kind` under `parent` (a root when `parent`
    /// holds no span), or `None` when tracing is off.
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
        links: Vec<Link>,
        start: Option<std::time::SystemTime>,
    ) -> Option<HostSpan> {
        let tracer = self.tracer.as_ref()?;
        let mut builder = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .with_links(links);
        if let Some(start) = start {
            builder = builder.with_start_time(start);
        }
        Some(builder.start_with_context(tracer, parent))
    }
}

/// The longest attribute or status text a span carries. Event ids and
/// guest errors are the producer's and the guest's text: unbounded, they
/// would fill the export queue and make batches a collector refuses.
pub const MAX_TEXT: usize = 256;

/// `text` cut to at most [`MAX_TEXT`] bytes, at a character boundary.
pub fn bounded(text: impl Into<String>) -> String {
    let mut text = text.into();
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The context of a span that is recorded (sampled), as a parent for
/// others; `None` for a span that is not.
pub fn recorded(span: &HostSpan) -> Option<SpanContext> {
    let cx = span.span_context();
    (cx.is_valid() && cx.is_sampled()).then(|| cx.clone())
}

/// A parent context holding `span`.
pub fn parent(span: &SpanContext) -> Context {
    Context::new().with_remote_span_context(span.clone())
}

/// The trace context an event carries in its `traceparent` (and
/// `tracestate`) attribute, if it is valid W3C trace context.
pub fn event_context(headers: Option<&HeaderMap>) -> Option<SpanContext> {
    let headers = headers?;
    let traceparent = codec::attribute(headers, "traceparent")?;
    // The field widths W3C fixes (the propagator accepts shorter ids).
    let widths: Vec<usize> = traceparent.split('-').map(str::len).collect();
    if widths.get(..4) != Some(&[2, 32, 16, 2]) {
        return None;
    }
    let fields = Fields {
        traceparent: traceparent.into_owned(),
        tracestate: codec::attribute(headers, "tracestate").map(|s| s.into_owned()),
    };
    let cx = TraceContextPropagator::new().extract(&fields);
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// Writes `span` into an event's `traceparent` and `tracestate`.
pub fn set_event_context(headers: &mut HeaderMap, span: &SpanContext) {
    let mut fields = Injected(headers);
    TraceContextPropagator::new().inject_context(&parent(span), &mut fields);
}

/// A `traceparent` text for `span`, as the extension carries it.
pub fn traceparent(span: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    )
}

/// The extension's fields, decoded from the headers.
struct Fields {
    traceparent: String,
    tracestate: Option<String>,
}

impl Extractor for Fields {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.traceparent),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

struct Injected<'h>(&'h mut HeaderMap);

impl Injector for Injected<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty trace state is not written (nor is an old one kept).
        if key == "tracestate" && value.is_empty() {
            return;
        }
        codec::set_attribute(self.0, key, &value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_texts_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(MAX_TEXT);
        let cut = bounded(long);
        assert!(
            cut.len() <= MAX_TEXT && cut.len() >= MAX_TEXT - 1,
            "{}",
            cut.len()
        );
        assert!(cut.chars().all(|c| c == 'é'));
    }

    fn headers(traceparent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        codec::set_attribute(&mut h, "traceparent", traceparent);
        h
    }

    #[test]
    fn an_events_context_is_read_and_written_as_w3c_trace_context() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = event_context(Some(&headers(text))).expect("valid");
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(cx.is_sampled());
        assert_eq!(traceparent(&cx), text);
        let mut h = HeaderMap::new();
        set_event_context(&mut h, &cx);
        assert_eq!(codec::attribute(&h, "traceparent").as_deref(), Some(text));
        assert!(codec::attribute(&h, "tracestate").is_none());
    }

    #[test]
    fn a_hostile_traceparent_is_no_context() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert!(event_context(Some(&headers(bad))).is_none(), "{bad:?}");
        }
        assert!(event_context(None).is_none());
        assert!(event_context(Some(&HeaderMap::new())).is_none());
    }
}
