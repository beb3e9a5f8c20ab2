//! Flows seen from a test: write, count, wait for and read events through
//! an [`Agent`] on the test's broker.

use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use flowd::agent::Agent;
use flowd_broker::{FlowName, FlowSettings};
use serde_json::Value;
use std::time::{Duration, Instant};

pub(crate) async fn create(agent: &Agent, flow: &FlowName) {
    agent
        .create_flow(flow, &FlowSettings::default())
        .await
        .expect("flow created");
}

pub(crate) async fn write(agent: &Agent, flow: &FlowName, events: &[Event]) {
    for chunk in events.chunks(2000) {
        agent.write(flow, chunk).await.expect("written");
    }
}

/// Events stored in the flow (0 when it does not exist).
pub(crate) async fn count(agent: &Agent, flow: &FlowName) -> u64 {
    agent
        .describe_flow(flow)
        .await
        .map(|i| i.events)
        .unwrap_or(0)
}

/// Waits until `flow` holds `n` events, then checks that no more arrive.
pub(crate) async fn wait_count(agent: &Agent, flow: &FlowName, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = count(agent, flow).await;
        if now >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} events in {flow}: {now} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(count(agent, flow).await, n, "exactly {n} events in {flow}");
}

/// Every event of the flow, from the start.
pub(crate) async fn read_all(agent: &Agent, flow: &FlowName) -> Vec<Event> {
    let mut events = Vec::new();
    agent
        .read(flow, true, None, false, Duration::from_millis(500), |e| {
            events.push(e);
            Ok(())
        })
        .await
        .expect("read");
    events
}

/// The JSON data of an event (`null` without JSON data).
pub(crate) fn data(e: &Event) -> Value {
    match e.data() {
        Some(cloudevents::Data::Json(v)) => v.clone(),
        _ => Value::Null,
    }
}

/// Event `i` for key `k<i % keys>` (its `subject`), counted by the hostile
/// guest's `test.keycount`.
pub(crate) fn keyed_event(i: usize, keys: usize) -> Event {
    EventBuilderV10::new()
        .id(format!("k-{i}"))
        .source("urn:test:keys")
        .ty("test.keycount")
        .subject(format!("k{}", i % keys))
        .data("application/json", serde_json::json!({"n": i}))
        .build()
        .expect("valid event")
}

/// The outputs of `test.keycount` over events `0..total` of
/// [`keyed_event`]: each event once, and every key's counts 1, 2, ... up
/// to its number of events, in input order (no update lost or applied
/// twice, no event of a key out of order).
pub(crate) fn assert_counted_in_order(out: &[Event], total: usize, keys: usize) {
    let mut counts: std::collections::BTreeMap<String, Vec<(i64, u64)>> = Default::default();
    let mut ids = std::collections::BTreeSet::new();
    for e in out {
        assert!(ids.insert(e.id().to_owned()), "{} twice", e.id());
        let count = match e.extension("count") {
            Some(cloudevents::event::ExtensionValue::Integer(n)) => *n,
            other => panic!("{}: count {other:?}", e.id()),
        };
        let n = data(e)["n"].as_u64().expect("n");
        counts
            .entry(e.subject().unwrap_or_default().to_owned())
            .or_default()
            .push((count, n));
    }
    assert_eq!(ids.len(), total, "each event once");
    assert_eq!(counts.len(), keys.min(total));
    for (key, seen) in counts {
        let k: usize = key.trim_start_matches('k').parse().expect("a key k<n>");
        let expected = total / keys + usize::from(k < total % keys);
        let numbers: Vec<i64> = seen.iter().map(|(c, _)| *c).collect();
        assert!(
            numbers.iter().copied().eq(1..=expected as i64),
            "{key}: counts {:?}..",
            &numbers[..numbers.len().min(20)]
        );
        assert!(
            seen.windows(2).all(|w| w[0].1 < w[1].1),
            "{key}: outputs out of input order"
        );
    }
}
