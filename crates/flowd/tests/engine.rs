//! The processor engine against a real nats-server: chains, crashes, broker
//! restarts, in-place updates, pause/resume, dead letters, keyed state.

mod support;

use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use flowd::agent::{Agent, NewProcessor};
use flowd::config::Config;
use flowd::daemon::Daemon;
use flowd_broker::FlowName;
use flowd_engine::{Phase, RunLimits};
use flowd_wasm::Kind;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;
use support::flows::data;
use support::{Flowd, Nats, component, eventually, flows};

fn flow(name: &str) -> FlowName {
    FlowName::parse(&format!("{name}.test.example.com")).expect("valid flow name")
}

async fn daemon(nats: &Nats, state: &Path) -> Daemon {
    let mut config = Config::default();
    config.participant.state_dir = state.to_owned();
    config.nats.urls = vec![nats.url()];
    config.metrics.listen = None;
    config.api.listen = None;
    config.console.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = None;
    Daemon::start(config).await.expect("host starts")
}

/// A broker, a host on it, its state directory and a user agent, with
/// `flows` created.
async fn world(flows: &[&str]) -> (Nats, tempfile::TempDir, Daemon, Agent) {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let host = daemon(&nats, state.path()).await;
    let agent = agent(&nats).await;
    create_flows(&agent, flows).await;
    (nats, state, host, agent)
}

/// The ids of every event in a flow.
async fn ids(agent: &Agent, name: &str) -> BTreeSet<String> {
    read_all(agent, name)
        .await
        .iter()
        .map(|e| e.id().to_owned())
        .collect()
}

async fn agent(nats: &Nats) -> Agent {
    Agent::connect(&[nats.url()]).await.expect("agent connects")
}

const REGIONS: [&str; 3] = ["eu", "us", "apac"];

fn invoice(i: usize) -> Event {
    EventBuilderV10::new()
        .id(format!("inv-{i}"))
        .source("urn:test:erp")
        .ty("created.invoice")
        .data(
            "application/json",
            json!({"n": i, "amount": i % 1000, "region": REGIONS[i % 3]}),
        )
        .build()
        .expect("valid event")
}

fn typed(i: usize, ty: &str) -> Event {
    EventBuilderV10::new()
        .id(format!("e-{i}"))
        .source("urn:test")
        .ty(ty)
        .data("application/json", json!({"n": i}))
        .build()
        .expect("valid event")
}

async fn create_flows(agent: &Agent, names: &[&str]) {
    for name in names {
        flows::create(agent, &flow(name)).await;
    }
}

async fn write(agent: &Agent, name: &str, events: &[Event]) {
    flows::write(agent, &flow(name), events).await
}

async fn count(agent: &Agent, name: &str) -> u64 {
    flows::count(agent, &flow(name)).await
}

async fn wait_count(agent: &Agent, name: &str, n: u64, within: Duration) {
    flows::wait_count(agent, &flow(name), n, within).await
}

async fn read_all(agent: &Agent, name: &str) -> Vec<Event> {
    flows::read_all(agent, &flow(name)).await
}

fn limits() -> RunLimits {
    RunLimits {
        deadline_ms: 2000,
        ..RunLimits::default()
    }
}

async fn processor(
    agent: &Agent,
    id: &str,
    kind: Kind,
    wasm: &str,
    config: &[(&str, &str)],
    (inputs, outputs): (&[&str], &[&str]),
    limits: RunLimits,
) {
    agent
        .create_processor(NewProcessor {
            id: id.into(),
            kind,
            component: std::fs::read(component(wasm)).expect("component"),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            inputs: inputs.iter().map(|n| flow(n)).collect(),
            outputs: outputs.iter().map(|n| flow(n)).collect(),
            dead_letter: Some(flow(&format!("{id}-dead"))),
            limits,
            owner: None,
        })
        .await
        .expect("processor created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_pass_a_three_stage_chain_exactly() {
    let (_nats, _state, host, agent) = world(&["in", "big", "tagged", "eu", "us", "other"]).await;
    processor(
        &agent,
        "filter",
        Kind::Bridge,
        "flow_filter",
        &[("where", "data.amount >= 500")],
        (&["in"], &["big"]),
        limits(),
    )
    .await;
    processor(
        &agent,
        "transform",
        Kind::Bridge,
        "flow_transform",
        &[("set.data.status", "big"), ("rename.data.n", "data.number")],
        (&["big"], &["tagged"]),
        limits(),
    )
    .await;
    processor(
        &agent,
        "router",
        Kind::Distributor,
        "flow_router",
        &[("by", "data.region"), ("default", "other")],
        (&["tagged"], &["eu", "us", "other"]),
        limits(),
    )
    .await;

    let events: Vec<Event> = (0..10_000).map(invoice).collect();
    write(&agent, "in", &events).await;

    let mut expected: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for i in (0..10_000).filter(|i| i % 1000 >= 500) {
        let out = match i % 3 {
            0 => "eu",
            1 => "us",
            _ => "other",
        };
        expected.entry(out).or_default().insert(format!("inv-{i}"));
    }
    for (out, ids) in &expected {
        wait_count(&agent, out, ids.len() as u64, Duration::from_secs(240)).await;
        let got = read_all(&agent, out).await;
        let got_ids: BTreeSet<String> = got.iter().map(|e| e.id().to_owned()).collect();
        assert_eq!(got.len(), got_ids.len(), "no duplicates in {out}");
        assert_eq!(&got_ids, ids, "the right events reached {out}");
        for e in &got {
            let d = data(e);
            assert_eq!(d["status"], "big");
            assert!(d["number"].is_u64() && d.get("n").is_none(), "{d}");
        }
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_with_sigkill_resumes_and_delivers_every_event_once() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let first = Flowd::start(&nats.url(), state.path());
    let agent = agent(&nats).await;
    create_flows(&agent, &["in", "out"]).await;
    processor(
        &agent,
        "t",
        Kind::Bridge,
        "flow_transform",
        &[("set.data.seen", "true")],
        (&["in"], &["out"]),
        limits(),
    )
    .await;
    let total = 100_000;
    let events: Vec<Event> = (0..total).map(invoice).collect();
    write(&agent, "in", &events).await;

    // Kill it twice, at different points of the run.
    let mut host = first;
    for threshold in [20_000, 60_000] {
        eventually(Duration::from_secs(240), "processing under way", || async {
            (count(&agent, "out").await > threshold).then_some(())
        })
        .await;
        host.kill9();
        let at_kill = count(&agent, "out").await;
        assert!(
            at_kill < total as u64,
            "killed mid-run ({at_kill} of {total})"
        );
        host = Flowd::start(&nats.url(), state.path());
    }
    wait_count(&agent, "out", total as u64, Duration::from_secs(240)).await;
    let out = read_all(&agent, "out").await;
    let ids: BTreeSet<String> = out.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(out.len(), total, "every event once");
    assert_eq!(ids.len(), total, "no duplicates");
    assert!(
        (0..total).all(|i| ids.contains(&format!("inv-{i}"))),
        "none lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_nothing() {
    let (mut nats, _state, host, agent) = world(&["in", "out"]).await;
    processor(
        &agent,
        "p",
        Kind::Bridge,
        "flow_passthrough",
        &[],
        (&["in"], &["out"]),
        limits(),
    )
    .await;
    let total = 20_000;
    let events: Vec<Event> = (0..total).map(invoice).collect();
    write(&agent, "in", &events).await;
    eventually(Duration::from_secs(60), "processing under way", || async {
        (count(&agent, "out").await > 2_000).then_some(())
    })
    .await;

    nats.restart(Duration::from_millis(500));

    wait_count(&agent, "out", total as u64, Duration::from_secs(240)).await;
    let ids = ids(&agent, "out").await;
    assert_eq!(ids.len(), total);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_to_a_new_component_mid_stream_neither_loses_nor_repeats() {
    let (_nats, _state, host, agent) = world(&["in", "out"]).await;
    let small_batches = RunLimits {
        batch: 20,
        ..limits()
    };
    processor(
        &agent,
        "u",
        Kind::Bridge,
        "flow_passthrough",
        &[],
        (&["in"], &["out"]),
        small_batches,
    )
    .await;
    let total = 20_000;
    let events: Vec<Event> = (0..total).map(invoice).collect();
    write(&agent, "in", &events).await;
    eventually(Duration::from_secs(60), "processing under way", || async {
        (count(&agent, "out").await > 1_000).then_some(())
    })
    .await;

    let transform = std::fs::read(component("flow_transform")).expect("component");
    let spec = agent
        .update_processor(
            "u",
            Some(vec![("set.data.version".into(), "2".into())]),
            Some(transform),
        )
        .await
        .expect("updated");
    assert_eq!(spec.generation, 2);

    wait_count(&agent, "out", total as u64, Duration::from_secs(240)).await;
    let out = read_all(&agent, "out").await;
    let ids: BTreeSet<String> = out.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(ids.len(), total, "every event exactly once");
    let versions: Vec<bool> = out
        .iter()
        .map(|e| data(e).get("version").is_some())
        .collect();
    let switched = versions
        .iter()
        .position(|v| *v)
        .expect("the new version ran");
    assert!(switched > 0, "the old version ran first");
    assert!(
        versions[switched..].iter().all(|v| *v),
        "no old-version output after the switch"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_consumption_and_resume_continues() {
    let (_nats, _state, host, agent) = world(&["in", "out"]).await;
    processor(
        &agent,
        "p",
        Kind::Bridge,
        "flow_passthrough",
        &[],
        (&["in"], &["out"]),
        limits(),
    )
    .await;
    write(&agent, "in", &(0..100).map(invoice).collect::<Vec<_>>()).await;
    wait_count(&agent, "out", 100, Duration::from_secs(30)).await;

    agent.set_paused("p", true).await.expect("paused");
    eventually(Duration::from_secs(10), "paused", || async {
        let (_, status) = agent.processor("p").await.ok()?;
        (status?.phase == Phase::Paused).then_some(())
    })
    .await;
    write(&agent, "in", &(100..200).map(invoice).collect::<Vec<_>>()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        count(&agent, "in").await,
        200,
        "the flow keeps accepting writes"
    );
    assert_eq!(
        count(&agent, "out").await,
        100,
        "a paused processor consumes nothing"
    );

    agent.set_paused("p", false).await.expect("resumed");
    wait_count(&agent, "out", 200, Duration::from_secs(30)).await;
    let ids = ids(&agent, "out").await;
    assert_eq!(ids.len(), 200);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_events_go_to_the_dead_letter_flow_and_the_rest_flows_on() {
    let (_nats, _state, host, agent) = world(&["in", "out"]).await;
    let retries = RunLimits {
        max_attempts: 2,
        ..limits()
    };
    processor(
        &agent,
        "h",
        Kind::Bridge,
        "guest_hostile",
        &[],
        (&["in"], &["out"]),
        retries,
    )
    .await;
    let events: Vec<Event> = (0..300)
        .map(|i| match i % 50 {
            7 => typed(i, "test.trap"),
            21 => typed(i, "test.fail"),
            _ => typed(i, "test.ok"),
        })
        .collect();
    write(&agent, "in", &events).await;
    wait_count(&agent, "out", 288, Duration::from_secs(60)).await;
    wait_count(&agent, "h-dead", 12, Duration::from_secs(30)).await;

    let dead = read_all(&agent, "h-dead").await;
    for e in &dead {
        let error = e
            .extension("deadlettererror")
            .map(|v| v.to_string())
            .unwrap_or_default();
        match e.ty() {
            "test.trap" => assert!(error.contains("hostile guest traps"), "{error}"),
            "test.fail" => assert!(error.contains("refused by test guest"), "{error}"),
            other => panic!("unexpected dead letter of type {other}"),
        }
        assert_eq!(
            e.extension("deadletterprocessor")
                .map(|v| v.to_string())
                .as_deref(),
            Some("h")
        );
        assert_eq!(
            e.extension("deadletterflow")
                .map(|v| v.to_string())
                .as_deref(),
            Some("in.test.example.com")
        );
    }
    let (_, status) = agent.processor("h").await.expect("described");
    let status = status.expect("status");
    assert_eq!(status.dead_lettered, 12);
    assert!(status.errors > 0);
    host.shutdown().await;
}

/// A call that succeeds but whose outputs the host refuses (an emitted
/// event with a bad `time`) changes no state: its retries see the state
/// the first attempt saw, and when the event is dead-lettered its writes
/// are gone. The counting events around it count 1, 2, 3... without a gap
/// or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_outputs_leave_no_state_behind() {
    let (_nats, _state, host, agent) = world(&["in", "out"]).await;
    let retries = RunLimits {
        max_attempts: 3,
        ..limits()
    };
    processor(
        &agent,
        "c",
        Kind::Bridge,
        "guest_hostile",
        &[],
        (&["in"], &["out"]),
        retries,
    )
    .await;
    let events: Vec<Event> = (0..400)
        .map(|i| match i % 40 {
            13 => typed(i, "test.badout"),
            _ => typed(i, "test.count"),
        })
        .collect();
    write(&agent, "in", &events).await;
    wait_count(&agent, "out", 390, Duration::from_secs(60)).await;
    wait_count(&agent, "c-dead", 10, Duration::from_secs(30)).await;
    let counts: Vec<i64> = read_all(&agent, "out")
        .await
        .iter()
        .map(|e| {
            e.extension("count")
                .and_then(|v| v.to_string().parse().ok())
                .unwrap_or(-1)
        })
        .collect();
    assert_eq!(counts, (1..=390).collect::<Vec<i64>>());
    let dead = read_all(&agent, "c-dead").await;
    assert!(dead.iter().all(|e| e.ty() == "test.badout"), "{dead:?}");
    assert!(
        dead.iter().all(|e| e
            .extension("deadlettererror")
            .is_some_and(|v| v.to_string().contains("RFC 3339"))),
        "{dead:?}"
    );
    host.shutdown().await;
}

/// A forwarded event is stored as its input message, whose headers the
/// runner moves into the output rather than copy. A call whose outputs are
/// refused is retried and split; the events it forwarded must come out
/// whole from the retries (a move done before the refusal would leave
/// them without their attributes, stored as raw events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_forwarded_beside_a_refused_output_keep_their_attributes() {
    let (_nats, _state, host, agent) = world(&["in", "out"]).await;
    let retries = RunLimits {
        max_attempts: 2,
        ..limits()
    };
    processor(
        &agent,
        "f",
        Kind::Bridge,
        "guest_hostile",
        &[],
        (&["in"], &["out"]),
        retries,
    )
    .await;
    let events: Vec<Event> = (0..200)
        .map(|i| match i % 50 {
            25 => typed(i, "test.badout"),
            _ => {
                let mut e = typed(i, "test.plain");
                e.set_extension("tenant", "acme");
                e
            }
        })
        .collect();
    write(&agent, "in", &events).await;
    wait_count(&agent, "out", 196, Duration::from_secs(60)).await;
    wait_count(&agent, "f-dead", 4, Duration::from_secs(30)).await;
    let out = read_all(&agent, "out").await;
    let expected: Vec<String> = (0..200)
        .filter(|i| i % 50 != 25)
        .map(|i| format!("e-{i}"))
        .collect();
    assert_eq!(
        out.iter().map(|e| e.id().to_owned()).collect::<Vec<_>>(),
        expected
    );
    for e in &out {
        assert_eq!(e.ty(), "test.plain", "{e:?}");
        assert_eq!(e.source().as_str(), "urn:test", "{e:?}");
        assert_eq!(
            e.extension("tenant").map(|v| v.to_string()),
            Some("acme".into()),
            "{e:?}"
        );
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_state_survives_a_host_restart() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let agent = agent(&nats).await;
    create_flows(&agent, &["readings", "alerts"]).await;
    let reading = |i: usize, t: f64| {
        EventBuilderV10::new()
            .id(format!("r-{i}"))
            .source("urn:sensor")
            .ty("reading")
            .data("application/json", json!({"room": "lab", "t": t}))
            .build()
            .expect("valid")
    };
    let host = daemon(&nats, state.path()).await;
    processor(
        &agent,
        "th",
        Kind::Signal,
        "flow_threshold",
        &[("field", "data.t"), ("above", "30"), ("key", "data.room")],
        (&["readings"], &["alerts"]),
        limits(),
    )
    .await;
    write(&agent, "readings", &[reading(1, 35.0)]).await;
    wait_count(&agent, "alerts", 1, Duration::from_secs(30)).await;
    host.shutdown().await;

    let restarted_ms = chrono::Utc::now().timestamp_millis() as u64;
    let host = daemon(&nats, state.path()).await;
    write(&agent, "readings", &[reading(2, 40.0)]).await;
    // The restarted processor has read the reading (its status counts it)...
    eventually(
        Duration::from_secs(30),
        "the second reading processed",
        || async {
            let (_, status) = agent.processor("th").await.ok()?;
            let status = status?;
            (status.updated_ms > restarted_ms && status.events_in >= 1).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...and did not alert again.
    assert_eq!(
        count(&agent, "alerts").await,
        1,
        "still above: the zone was restored, no new alert"
    );
    write(&agent, "readings", &[reading(3, 10.0), reading(4, 50.0)]).await;
    wait_count(&agent, "alerts", 2, Duration::from_secs(30)).await;
    host.shutdown().await;
}

/// The first host to compile a component stores its compiled form in the
/// broker; another host loads that instead of compiling, and runs it. A
/// damaged artifact is compiled over and replaced; an engine of another
/// configuration uses another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_components_are_shared_through_the_broker() {
    use flowd_engine::artifacts::{self, Source};
    use flowd_wasm::{Host, HostConfig, Limits, ProcessorSetup};
    use std::sync::Arc;
    let nats = Nats::start();
    let broker = flowd_broker::Broker::connect(&[nats.url()], "test")
        .await
        .expect("broker");
    let store = broker
        .objects(flowd_core::buckets::ARTIFACTS)
        .await
        .expect("store");
    let bytes = std::fs::read(component("flow_filter")).expect("component");
    let digest = flowd_wasm::digest(&bytes);
    let host = || Arc::new(Host::new(HostConfig::default()).expect("host"));

    let first = host();
    let (_, source, _) = artifacts::load(&first, &store, bytes.clone())
        .await
        .expect("loads");
    assert_eq!(source, Source::Compiled);
    let key = first.artifact_key(&digest);
    assert!(
        store.info(&key).await.is_ok(),
        "the compiled form is shared"
    );
    let (_, again, _) = artifacts::load(&first, &store, bytes.clone())
        .await
        .expect("loads");
    assert_eq!(again, Source::Local);

    let second = host();
    assert_eq!(
        second.artifact_key(&digest),
        key,
        "the same engine, the same key"
    );
    let (_, source, _) = artifacts::load(&second, &store, bytes.clone())
        .await
        .expect("loads");
    assert_eq!(source, Source::Shared, "no compile on the second host");
    let setup = ProcessorSetup {
        name: "f".into(),
        config: vec![("where".into(), "type exists".into())],
        inputs: vec!["in".into()],
        outputs: vec!["out".into()],
    };
    second
        .check(&bytes, Some(Kind::Bridge), setup, Limits::default())
        .expect("the shared component runs");

    // A damaged artifact: compiled over, and replaced for the next host.
    let mut junk: &[u8] = b"not a compiled component";
    store.put(key.as_str(), &mut junk).await.expect("damaged");
    let (_, source, _) = artifacts::load(&host(), &store, bytes.clone())
        .await
        .expect("compiles instead");
    assert_eq!(source, Source::Compiled);
    let (_, source, _) = artifacts::load(&host(), &store, bytes.clone())
        .await
        .expect("loads");
    assert_eq!(source, Source::Shared, "the artifact was replaced");

    let other = Arc::new(
        Host::new(HostConfig {
            fuel: true,
            ..HostConfig::default()
        })
        .expect("host"),
    );
    assert_ne!(
        other.artifact_key(&digest),
        key,
        "another engine, another key"
    );
}

/// A component nobody has compiled starts on the baseline compiler's code,
/// checked as thoroughly and giving the same outputs, while its optimised
/// code is compiled in the background and shared; then the optimised code
/// is what every load returns, and another host takes it from the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_start_on_baseline_code_until_the_optimised_code_is_ready() {
    use flowd_engine::artifacts::{self, Source};
    use flowd_wasm::{Host, HostConfig, Limits, ProcessorSetup};
    use std::sync::Arc;
    let nats = Nats::start();
    let broker = flowd_broker::Broker::connect(&[nats.url()], "test")
        .await
        .expect("broker");
    let store = broker
        .objects(flowd_core::buckets::ARTIFACTS)
        .await
        .expect("store");
    let bytes = std::fs::read(component("flow_transform")).expect("component");
    let digest = flowd_wasm::digest(&bytes);
    let host = || Arc::new(Host::new(HostConfig::default()).expect("host"));
    let setup = || ProcessorSetup {
        name: "t".into(),
        config: vec![("set.data.status".into(), "\"paid\"".into())],
        inputs: vec!["in".into()],
        outputs: vec!["out".into()],
    };
    let events: Vec<Event> = (0..20).map(invoice).collect();
    let batch: flowd_wasm::wit::types::Batch = flowd_core::event::packed::pack(&events).into();
    let run = |host: &Host, component| {
        let mut p = host
            .create(component, setup(), Limits::default())
            .expect("instance");
        let out = p.process(0, &batch).expect("processed");
        out.resolve(&events, 1).expect("valid outputs")
    };

    let first = host();
    let (baseline, source, _) = artifacts::load_quick(&first, &store, bytes.clone())
        .await
        .expect("loads");
    assert_eq!(source, Source::Baseline);
    assert!(!baseline.is_optimised());
    assert_eq!(baseline.kind(), Kind::Bridge, "checked like any load");
    let quick_out = run(&first, baseline);
    assert_eq!(quick_out.len(), events.len());
    for (_, e) in &quick_out {
        assert_eq!(data(e)["status"], "paid", "baseline code transforms");
    }

    // The background compile: optimised code on this host, shared.
    let optimised = eventually(Duration::from_secs(60), "the optimised code", || async {
        first.optimised(&digest)
    })
    .await;
    assert!(optimised.is_optimised());
    assert_eq!(run(&first, optimised), quick_out, "the same outputs");
    let key = first.artifact_key(&digest);
    eventually(Duration::from_secs(30), "the shared artifact", || async {
        store.info(&key).await.ok()
    })
    .await;
    let (again, source, _) = artifacts::load_quick(&first, &store, bytes.clone())
        .await
        .expect("loads");
    assert_eq!(source, Source::Local);
    assert!(again.is_optimised(), "no baseline code once optimised");

    let (other, source, _) = artifacts::load_quick(&host(), &store, bytes.clone())
        .await
        .expect("loads");
    assert_eq!(
        source,
        Source::Shared,
        "another host takes the optimised code"
    );
    assert!(other.is_optimised());

    // A host without the baseline tier compiles the optimised code at once.
    let slow = Arc::new(
        Host::new(HostConfig {
            quick_start: false,
            ..HostConfig::default()
        })
        .expect("host"),
    );
    let filter = std::fs::read(component("flow_filter")).expect("component");
    let (c, source, _) = artifacts::load_quick(&slow, &store, filter)
        .await
        .expect("loads");
    assert_eq!((source, c.is_optimised()), (Source::Compiled, true));
}

/// What the keyed steps' partitioner relies on to keep copies in order:
/// each copy expects the one before it to be the partition stream's last
/// message (`Nats-Expected-Last-Msg-Id`), so a copy whose predecessor was
/// not stored is refused rather than stored ahead of it; a chunk sent again
/// stores only what is missing, in order (copies already stored are
/// duplicates, answered before the expectation is checked); and the
/// expectation still holds after the broker restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_copies_keep_their_order_through_gaps_resends_and_a_broker_restart() {
    use async_nats::HeaderMap;
    use flowd_broker::{Outgoing, partitions};
    let mut nats = Nats::start();
    let broker = flowd_broker::Broker::connect(&[nats.url()], "test")
        .await
        .expect("broker");
    broker.partition_stream("chain").await.expect("stream");
    let copy = |i: u32, expect: Option<u32>| {
        let mut headers = HeaderMap::new();
        if let Some(previous) = expect {
            headers.insert("Nats-Expected-Last-Msg-Id", format!("c{previous}").as_str());
        }
        Outgoing {
            subject: partitions::subject("chain", i % 4, 0).into(),
            headers,
            payload: format!("{i}").into(),
            message_id: format!("c{i}"),
        }
    };
    let chain = |range: std::ops::Range<u32>| -> Vec<Outgoing> {
        range.map(|i| copy(i, i.checked_sub(1))).collect()
    };
    let stored = |messages: Vec<Outgoing>| {
        let broker = broker.clone();
        async move {
            let mut results = Vec::new();
            for m in messages {
                results.push(broker.publish([m]).await.is_ok());
            }
            results
        }
    };
    // c0..c4 stored; c5 lost on the way: c6..c9 are refused, not stored
    // ahead of it.
    assert!(stored(chain(0..5)).await.iter().all(|ok| *ok));
    assert!(stored(chain(6..10)).await.iter().all(|ok| !ok));
    // The whole chunk again: c0..c4 are duplicates, c5..c9 stored in order.
    assert!(stored(chain(0..10)).await.iter().all(|ok| *ok));
    // After a restart the chain goes on.
    nats.restart(Duration::from_millis(300));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let result = broker.publish([copy(10, Some(9))]).await;
        if result.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the restart: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stored(vec![copy(12, Some(11))]).await == vec![false]);
    let stream = broker
        .jetstream()
        .get_stream(partitions::stream_name("chain"))
        .await
        .expect("stream");
    let mut order = Vec::new();
    for seq in 1..=11 {
        let m = stream.get_raw_message(seq).await.expect("stored");
        order.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    let expected: Vec<String> = (0..11).map(|i| i.to_string()).collect();
    assert_eq!(order, expected, "stored once each, in order");
}

/// A processor whose input flow is deleted under it fails, is restarted
/// with back-off (its status counts the restarts and says why), and runs
/// again once the flow is back, the count kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_loses_its_input_restarts_and_counts_its_restarts() {
    let (_nats, _state, host, agent) = world(&["in", "out"]).await;
    processor(
        &agent,
        "r",
        Kind::Bridge,
        "flow_passthrough",
        &[],
        (&["in"], &["out"]),
        limits(),
    )
    .await;
    write(&agent, "in", &[invoice(0)]).await;
    wait_count(&agent, "out", 1, Duration::from_secs(60)).await;
    let before = agent.status("r").await.expect("status");
    assert_eq!(before.restarts, 0, "{before:?}");

    agent.delete_flow(&flow("in")).await.expect("input deleted");
    let failed = eventually(Duration::from_secs(60), "restarts counted", || async {
        agent
            .status("r")
            .await
            .filter(|s| s.restarts >= 2 && s.last_error.is_some())
    })
    .await;
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("in.test.example.com")),
        "{failed:?}"
    );

    create_flows(&agent, &["in"]).await;
    write(&agent, "in", &[invoice(1)]).await;
    wait_count(&agent, "out", 2, Duration::from_secs(60)).await;
    let running = eventually(Duration::from_secs(30), "running again", || async {
        agent
            .status("r")
            .await
            .filter(|s| s.phase == Phase::Running)
    })
    .await;
    assert!(running.restarts >= failed.restarts, "{running:?}");
    host.shutdown().await;
}
