//! Flows seen from a test: write, count, wait for and read events through
//! an [`Agent`] on the test's broker.

use cloudevents::Event;
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
