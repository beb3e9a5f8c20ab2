//! Replies and data blocks from agent results.

use super::*;

/// A one-line success.
pub(super) fn ok(text: impl Into<String>) -> Response {
    Response::Reply(Reply::ok(text))
}

/// A data block ending in `220 OK`.
pub(super) fn data(lines: Vec<String>) -> Response {
    Response::Data {
        lines,
        end: Reply::ok("OK"),
    }
}

pub(super) fn error_reply(e: &AgentError) -> Reply {
    let code = match e {
        AgentError::NotFound { .. } => Code::NotFound,
        AgentError::Exists { .. } => Code::Exists,
        AgentError::Forbidden(_) => Code::Forbidden,
        AgentError::Invalid(_) => Code::Invalid,
        AgentError::Unavailable(_) | AgentError::Quota(_) => Code::TryLater,
    };
    Reply::new(code, e.to_string())
}

pub(super) fn describe_flow(
    info: &FlowInfo,
    namespace: Option<flowd_broker::NamespaceName>,
    urls: &str,
) -> Vec<String> {
    let s = &info.settings;
    vec![
        format!("flow={}", info.name),
        format!("uri={}", info.uri),
        format!(
            "namespace={}",
            namespace.map_or_else(|| "(none)".to_owned(), |n| n.to_string())
        ),
        "type=nats-jetstream".to_owned(),
        format!("stream={}", info.stream),
        format!("subject={}", info.subject),
        format!("server={urls}"),
        format!("public={}", s.public),
        format!("events={}", info.events),
        format!("bytes={}", info.bytes),
        format!("first-sequence={}", info.first_sequence),
        format!("last-sequence={}", info.last_sequence),
        format!("max-age={}", s.max_age_secs),
        format!("max-bytes={}", s.max_bytes),
        format!("duplicate-window={}", s.duplicate_window_secs),
    ]
}

pub(super) fn describe_processor(
    spec: &flowd_engine::ProcessorSpec,
    status: Option<&flowd_engine::Status>,
) -> Vec<String> {
    let mut lines = vec![
        format!("id={}", spec.id),
        format!("kind={}", spec.kind),
        format!("component={}", spec.component),
        format!("owner={}", spec.owner.as_deref().unwrap_or("(host)")),
        format!("paused={}", spec.paused),
        format!("generation={}", spec.generation),
    ];
    lines.extend(spec.inputs.iter().map(|f| format!("input={f}")));
    lines.extend(spec.outputs.iter().map(|f| format!("output={f}")));
    lines.push(format!("dead-letter={}", spec.dead_letter));
    lines.extend(spec.config.iter().map(|(k, v)| format!("config.{k}={v}")));
    if let Some(s) = status {
        let phase = serde_json::to_value(s.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        lines.push(format!("phase={phase}"));
        lines.push(format!("events-in={}", s.events_in));
        lines.push(format!("events-out={}", s.events_out));
        lines.push(format!("errors={}", s.errors));
        lines.push(format!("dead-lettered={}", s.dead_lettered));
        lines.push(format!("restarts={}", s.restarts));
        if let Some(lag) = s.lag {
            lines.push(format!("lag={lag}"));
        }
        if let Some(code) = s.code {
            lines.push(format!("code={}", code.as_str()));
        }
        if let Some(e) = &s.last_error {
            lines.push(format!("last-error={e}"));
        }
    }
    lines
}
