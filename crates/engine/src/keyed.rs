//! Keyed steps: what an event's key is, and the partitioner that sorts a
//! keyed step's input events into its partitions.
//!
//! The partitioner runs with the step's instance 0. It reads each input
//! flow through the step's durable consumer, in order, and copies every
//! event to its partition's subject in the step's partition stream
//! ([`flowd_broker::partitions`]), pipelined, acknowledging the input once
//! the copies are stored. Each copy expects its predecessor to be the
//! partition stream's last message (`Nats-Expected-Last-Msg-Id`): a copy
//! whose predecessor was lost on the way (a leader change in the middle of
//! a pipelined chunk) is refused instead of being stored ahead of it, and
//! the chunk sent again stores what is missing, in order. Copies have the
//! input's stream and sequence as their message id, so a batch copied
//! again after a crash is stored once,
//! and carry the input's origin ([`ORIGIN`]), so a raw message keeps the
//! id and source it had in its flow. It stops copying while the partition
//! stream holds more than [`BACKLOG`] events: a stuck or slow step holds its
//! input back in its flow rather than growing a second copy of it.

use super::Context;
use super::spec::{Keying, ProcessorSpec};
use anyhow::{Context as _, Result, anyhow};
use async_nats::HeaderMap;
use cloudevents::{AttributesReader, Data};
use flowd_broker::codec::{self, Origin};
use flowd_broker::{FlowName, Outgoing, partitions};
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::watch;

/// Header of a partitioned copy: `<stream> <sequence> <subject>` of the
/// event in its input flow.
pub(crate) const ORIGIN: &str = "Flowd-Origin";

/// The header that chains a copy to the one before it.
const EXPECTED_LAST: &str = "Nats-Expected-Last-Msg-Id";

/// Events the partition stream may hold before the partitioner waits.
const BACKLOG: u64 = 50_000;

/// Events copied per round.
const CHUNK: usize = 1_000;

/// Longest key the selector reads (longer keys are cut: they still hash
/// alike, by their first bytes).
const MAX_KEY: usize = 1024;

/// Where an event's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySelector {
    /// A value inside the event's JSON data (`data`, `data.customer.id`).
    Data(Vec<String>),
    /// A CloudEvents attribute or extension (`subject`, `source`, ...).
    Attribute(String),
}

impl KeySelector {
    /// Reads `data`, `data.<field>[.<field>...]` or an attribute name
    /// (lower-case letters and digits, as CloudEvents names them).
    pub fn parse(text: &str) -> Result<KeySelector, String> {
        let bad = || {
            format!(
                "key `{text}`: use `data`, `data.<field>.<field>` (letters, digits, `_` and `-`) \
                 or an attribute such as `subject`"
            )
        };
        if text.len() > 256 {
            return Err(bad());
        }
        if text == "data" {
            return Ok(KeySelector::Data(Vec::new()));
        }
        if let Some(path) = text.strip_prefix("data.") {
            let fields: Vec<String> = path.split('.').map(str::to_owned).collect();
            let field_ok = |f: &String| {
                !f.is_empty()
                    && f.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if fields.len() > 16 || !fields.iter().all(field_ok) {
                return Err(bad());
            }
            return Ok(KeySelector::Data(fields));
        }
        if !text.is_empty()
            && text.len() <= 20
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Ok(KeySelector::Attribute(text.to_owned()));
        }
        Err(bad())
    }

    /// The key of `event`: a string value as it is, any other value as
    /// JSON; empty when the event has no such value (all such events share
    /// one partition).
    pub fn key(&self, event: &cloudevents::Event) -> Vec<u8> {
        let mut key = match self {
            KeySelector::Attribute(name) => match name.as_str() {
                "id" => event.id().as_bytes().to_vec(),
                "source" => event.source().as_str().as_bytes().to_vec(),
                "type" => event.ty().as_bytes().to_vec(),
                "subject" => event.subject().unwrap_or_default().as_bytes().to_vec(),
                "time" => event
                    .time()
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
                    .into_bytes(),
                "datacontenttype" => event
                    .datacontenttype()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec(),
                "dataschema" => event
                    .dataschema()
                    .map(|u| u.as_str().as_bytes().to_vec())
                    .unwrap_or_default(),
                other => event
                    .extension(other)
                    .map(|v| v.to_string().into_bytes())
                    .unwrap_or_default(),
            },
            KeySelector::Data(path) => {
                let parsed;
                let json = match event.data() {
                    Some(Data::Json(value)) => value,
                    Some(Data::Binary(bytes)) => match serde_json::from_slice(bytes) {
                        Ok(value) => {
                            parsed = value;
                            &parsed
                        }
                        Err(_) => return Vec::new(),
                    },
                    Some(Data::String(text)) => match serde_json::from_str(text) {
                        Ok(value) => {
                            parsed = value;
                            &parsed
                        }
                        Err(_) => return Vec::new(),
                    },
                    None => return Vec::new(),
                };
                let mut at = json;
                for field in path {
                    match at.get(field) {
                        Some(next) => at = next,
                        None => return Vec::new(),
                    }
                }
                match at {
                    serde_json::Value::String(s) => s.as_bytes().to_vec(),
                    serde_json::Value::Null => Vec::new(),
                    other => other.to_string().into_bytes(),
                }
            }
        };
        key.truncate(MAX_KEY);
        key
    }
}

/// The partition of a stored input message of a step keyed by `selector`.
fn partition_of_message(
    selector: &KeySelector,
    partitions: u32,
    message: &async_nats::jetstream::Message,
    origin: Origin<'_>,
) -> u32 {
    let key = codec::event_from_message(message.headers.as_ref(), &message.payload, origin)
        .map(|event| selector.key(&event))
        .unwrap_or_default();
    partitions::partition_of(&key, partitions)
}

/// The headers of a partitioned copy: the input's, without broker
/// directives (a stored `Nats-Expected-*` header would make every copy
/// fail) or a forged origin, with the input's origin.
fn copy_headers(input: Option<&HeaderMap>, origin: &str) -> HeaderMap {
    let mut out = input.map(event_headers).unwrap_or_default();
    out.insert(ORIGIN, origin);
    out
}

/// The headers of the event a partitioned copy carries: the copy's without
/// what the partitioner added (its origin, its message id and the chain's
/// expectation, which a forwarded output would otherwise carry into its
/// own flow and be refused for).
pub(crate) fn event_headers(copy: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, values) in copy.iter() {
        let text = name.to_string();
        let directive = text
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("nats-"));
        if directive || text.eq_ignore_ascii_case(ORIGIN) {
            continue;
        }
        for value in values {
            out.append(name.clone(), value.as_str());
        }
    }
    out
}

/// The origin a partitioned copy carries: stream, sequence, subject.
pub(crate) fn parse_origin(value: &str) -> Option<(String, u64, String)> {
    let mut parts = value.splitn(3, ' ');
    let stream = parts.next()?.to_owned();
    let sequence = parts.next()?.parse().ok()?;
    let subject = parts.next()?.to_owned();
    Some((stream, sequence, subject))
}

/// Copies a keyed step's inputs into its partitions until `stopped`.
pub(crate) async fn run_partitioner(
    ctx: Context,
    spec: ProcessorSpec,
    keying: Keying,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    while !*stopped.borrow() {
        match partition_rounds(&ctx, &spec, &keying, &mut stopped).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    processor = spec.id,
                    "partitioner: {e:#}; retrying in {backoff:?}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn partition_rounds(
    ctx: &Context,
    spec: &ProcessorSpec,
    keying: &Keying,
    stopped: &mut watch::Receiver<bool>,
) -> Result<()> {
    let selector = KeySelector::parse(&keying.selector).map_err(|e| anyhow!(e))?;
    let stream = ctx.broker.partition_stream(&spec.id).await?;
    let mut consumers = Vec::new();
    for (port, flow) in spec.inputs.iter().enumerate() {
        let consumer = ctx
            .broker
            .durable_consumer(
                flow,
                &spec.consumer(port),
                (CHUNK * 2) as i64,
                Some(&spec.other_consumer(port)),
            )
            .await
            .with_context(|| format!("input {flow}"))?;
        consumers.push((flow.clone(), consumer));
    }
    let mut idle_wait = Duration::from_millis(1);
    // The message id of the last copy stored (unknown at first: the first
    // copy expects nothing).
    let mut previous: Option<String> = None;
    while !*stopped.borrow() {
        // Held back while the partitions are behind.
        let mut info = stream.clone();
        let held = info.info().await.map(|i| i.state.messages).unwrap_or(0);
        if held > BACKLOG {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        let mut copied = 0;
        for (port, (flow, consumer)) in consumers.iter().enumerate() {
            copied += copy_chunk(
                ctx,
                spec,
                keying,
                &selector,
                (port as u32, flow, consumer),
                &mut previous,
            )
            .await?;
        }
        if copied == 0 {
            tokio::select! {
                _ = tokio::time::sleep(idle_wait) => {}
                _ = stopped.changed() => {}
            }
            idle_wait = (idle_wait * 2).min(Duration::from_millis(50));
        } else {
            idle_wait = Duration::from_millis(1);
        }
    }
    Ok(())
}

/// Copies one chunk of input `port`; returns how many events it copied.
async fn copy_chunk(
    ctx: &Context,
    spec: &ProcessorSpec,
    keying: &Keying,
    selector: &KeySelector,
    (port, flow, consumer): (
        u32,
        &FlowName,
        &async_nats::jetstream::consumer::PullConsumer,
    ),
    previous: &mut Option<String>,
) -> Result<usize> {
    let mut batch = consumer
        .fetch()
        .max_messages(CHUNK)
        .messages()
        .await
        .map_err(|e| anyhow!("fetching from {flow}: {e}"))?;
    let mut copies = Vec::new();
    let mut last = None;
    let mut chain = previous.clone();
    let fetched = async {
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow!("fetching from {flow}: {e}"))?;
            let info = message.info().map_err(|e| anyhow!("message info: {e}"))?;
            let (stream, sequence) = (info.stream.to_owned(), info.stream_sequence);
            let origin = Origin {
                stream: &stream,
                sequence,
                subject: &message.subject,
            };
            let partition = partition_of_message(selector, keying.partitions, &message, origin);
            let origin = format!("{stream} {sequence} {}", message.subject);
            let mut headers = copy_headers(message.headers.as_ref(), &origin);
            let message_id = format!("{stream}:{sequence}");
            if let Some(before) = chain.replace(message_id.clone()) {
                headers.insert(EXPECTED_LAST, before.as_str());
            }
            copies.push(Outgoing {
                subject: partitions::subject(&spec.id, partition, port).into(),
                headers,
                payload: message.payload.clone(),
                message_id,
            });
            last = Some(message);
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(10), fetched)
        .await
        .map_err(|_| anyhow!("fetching from {flow}: no answer"))??;
    let Some(last) = last else {
        return Ok(0);
    };
    // Pipelined; a failure sends the whole chunk again: copies stored are
    // duplicates, the first missing one follows its stored predecessor and
    // the rest follow it.
    let mut backoff = Duration::from_millis(50);
    let mut refused = 0;
    loop {
        let stored = match ctx.broker.send(&copies).await {
            Ok(sending) => sending.stored().await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(_) => break,
            Err(e) => {
                // The stream's last message is not the one this chunk
                // follows (another partitioner copied meanwhile, or the
                // chain started before a restart of this one): after a few
                // refusals the chunk's first copy stops expecting.
                if e.to_string().to_ascii_lowercase().contains("last msg") {
                    refused += 1;
                    if refused >= 3
                        && let Some(first) = copies.first_mut()
                    {
                        first.headers = {
                            let mut h = HeaderMap::new();
                            for (name, values) in first.headers.iter() {
                                if name.to_string() != EXPECTED_LAST {
                                    for v in values {
                                        h.append(name.clone(), v.as_str());
                                    }
                                }
                            }
                            h
                        };
                    }
                }
                tracing::warn!(
                    processor = spec.id,
                    "partitioning: {e}; retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    *previous = chain;
    // Cumulative, and confirmed: the chunk's last event acknowledges it
    // before the next chunk is taken (a lost acknowledgement would have the
    // chunk copied again).
    last.double_ack()
        .await
        .map_err(|e| anyhow!("acknowledging {flow}: {e}"))?;
    Ok(copies.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn event() -> cloudevents::Event {
        EventBuilderV10::new()
            .id("e-1")
            .source("urn:test")
            .ty("created.order")
            .subject("order-7")
            .extension("tenant", "acme")
            .data(
                "application/json",
                serde_json::json!({"customer": {"id": "c-42", "n": 3}, "z": null}),
            )
            .build()
            .expect("event")
    }

    #[test]
    fn keys_come_from_data_paths_and_attributes() {
        let e = event();
        let key = |s: &str| KeySelector::parse(s).expect(s).key(&e);
        assert_eq!(key("data.customer.id"), b"c-42");
        assert_eq!(key("data.customer.n"), b"3");
        assert_eq!(key("data.customer.missing"), b"");
        assert_eq!(key("data.z"), b"");
        assert_eq!(key("subject"), b"order-7");
        assert_eq!(key("tenant"), b"acme");
        assert_eq!(key("type"), b"created.order");
        for bad in ["", "data.", "data..a", "Subject", "data.a b", "x.y"] {
            assert!(KeySelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn copies_drop_broker_directives_and_forged_origins() {
        let mut input = HeaderMap::new();
        input.insert("ce-id", "e-1");
        input.insert("Nats-Expected-Stream", "elsewhere");
        input.insert("nats-msg-id", "x");
        input.insert("flowd-origin", "FORGED 1 flow.x");
        let out = copy_headers(Some(&input), "FLOW_a 7 flow.a");
        assert_eq!(out.get("ce-id").map(|v| v.as_str()), Some("e-1"));
        assert!(out.get("Nats-Expected-Stream").is_none());
        assert!(out.get("nats-msg-id").is_none());
        assert_eq!(out.get_all(ORIGIN).count(), 1);
        assert_eq!(
            parse_origin(out.get(ORIGIN).map(|v| v.as_str()).unwrap_or_default()),
            Some(("FLOW_a".into(), 7, "flow.a".into()))
        );
    }
}
