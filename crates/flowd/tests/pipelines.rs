//! The management API (gRPC) and pipelines, against `flowd serve` processes
//! on a real nats-server: uploads and their refusals, a manifest chaining
//! Rust, Python and JavaScript components, idempotent re-application,
//! a config change mid-stream, validation errors.

mod support;

use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use flowd::agent::Agent;
use flowd::api::client::{ApiClient, Credentials};
use flowd::api::proto;
use flowd::config::HostFile;
use flowd_broker::FlowName;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::flows::data;
use support::{Flowd, Nats, api, component, eventually, flows};

fn flow(name: &str) -> FlowName {
    FlowName::parse(&format!("{name}.pipe.example.com")).expect("valid flow name")
}

async fn push(
    api: &ApiClient,
    name: &str,
    version: &str,
    bytes: Vec<u8>,
) -> Result<proto::Component, tonic::Status> {
    api.push(name, version, bytes, |_| {}).await
}

async fn push_file(api: &ApiClient, name: &str, file: &str) -> proto::Component {
    let bytes = std::fs::read(component(file)).expect("component built");
    push(api, name, "1.0.0", bytes)
        .await
        .expect("upload accepted")
}

async fn names(api: &ApiClient) -> BTreeSet<String> {
    api.registry()
        .list(proto::ListComponentsRequest {})
        .await
        .expect("list")
        .into_inner()
        .components
        .into_iter()
        .map(|c| format!("{}@{}", c.name, c.version))
        .collect()
}

async fn create_flows(agent: &Agent, names: &[&str]) {
    for name in names {
        flows::create(agent, &flow(name)).await;
    }
}

async fn read_all(agent: &Agent, name: &str) -> Vec<Event> {
    flows::read_all(agent, &flow(name)).await
}

async fn count(agent: &Agent, name: &str) -> u64 {
    flows::count(agent, &flow(name)).await
}

async fn wait_count(agent: &Agent, name: &str, n: u64, within: Duration) {
    flows::wait_count(agent, &flow(name), n, within).await
}

const REGIONS: [&str; 3] = ["eu", "us", "apac"];

fn order(i: usize) -> Event {
    EventBuilderV10::new()
        .id(format!("o-{i}"))
        .source("urn:test:shop")
        .ty(if i.is_multiple_of(5) {
            "cancelled.order"
        } else {
            "created.order"
        })
        .data(
            "application/json",
            json!({"n": i, "amount": i % 100, "region": REGIONS[i % 3]}),
        )
        .build()
        .expect("valid event")
}

async fn write(agent: &Agent, name: &str, events: &[Event]) {
    flows::write(agent, &flow(name), events).await
}

fn manifest(tag: &str) -> String {
    format!(
        "\
apiVersion: flowd/v1
kind: Pipeline
name: orders
inputs:
  orders: flow://orders.pipe.example.com
outputs:
  eu: flow://eu.pipe.example.com
  us: flow://us.pipe.example.com
  rest: flow://rest.pipe.example.com
steps:
  - name: enrich                 # Python
    component: enrich-py@1.0.0
    from: orders
    config:
      set: channel=web
  - name: created                # JavaScript
    component: filter-js@1.0.0
    from: enrich
    config:
      type: created.order
  - name: tag                    # Rust
    component: transform@1.0.0
    from: created
    config:
      set.data.tag: {tag}
  - name: route                  # Rust, fan-out, through a durable edge
    component: router@1.0.0
    kind: distributor
    durable: true
    from: tag
    to: [eu, us, rest]
    config:
      by: data.region
      route.eu: eu
      route.us: us
      default: rest
limits:
  deadline-ms: 5000
  memory-mib: 256
"
    )
}

async fn pipeline(api: &ApiClient, name: &str) -> BTreeMap<String, proto::Processor> {
    api.pipelines()
        .get(proto::PipelineRef { name: name.into() })
        .await
        .expect("pipeline")
        .into_inner()
        .steps
        .into_iter()
        .map(|s| (s.name, s.processor.expect("processor")))
        .collect()
}

/// (generation, started_ms) of every step, once each has started.
async fn runs(api: &ApiClient) -> BTreeMap<String, (u64, u64)> {
    eventually(Duration::from_secs(60), "every step running", || async {
        let steps = pipeline(api, "orders").await;
        let runs: BTreeMap<String, (u64, u64)> = steps
            .iter()
            .filter_map(|(name, p)| {
                let st = p.status.as_ref()?;
                (st.phase == "running" && st.generation == p.generation && st.started_ms > 0)
                    .then(|| (name.clone(), (p.generation, st.started_ms)))
            })
            .collect();
        (runs.len() == steps.len()).then_some(runs)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_chains_rust_python_and_javascript_steps_and_reapplies_minimally() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["orders", "eu", "us", "rest"]).await;

    for (name, file) in [
        ("enrich-py", "flow_enrich_py"),
        ("filter-js", "flow_filter_js"),
        ("transform", "flow_transform"),
        ("router", "flow_router"),
    ] {
        let c = push_file(&api, name, file).await;
        assert_eq!(
            c.kind,
            if name == "router" {
                "distributor"
            } else {
                "bridge"
            }
        );
    }

    let applied = api
        .pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest("v1"),
            dry_run: false,
        })
        .await
        .expect("applied")
        .into_inner();
    assert_eq!(applied.created, vec!["enrich", "created", "tag", "route"]);
    // enrich -> created -> tag run fused in one runner; route reads a flow.
    let runners: BTreeMap<String, String> = api
        .pipelines()
        .get(proto::PipelineRef {
            name: "orders".into(),
        })
        .await
        .expect("pipeline")
        .into_inner()
        .steps
        .into_iter()
        .map(|s| (s.name, s.runner))
        .collect();
    assert_eq!(
        runners,
        [
            ("created", "orders-enrich"),
            ("enrich", "orders-enrich"),
            ("route", "orders-route"),
            ("tag", "orders-enrich"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .into()
    );

    // A first run, checked event by event.
    let first: Vec<Event> = (0..300).map(order).collect();
    write(&agent, "orders", &first).await;
    let created: Vec<usize> = (0..300).filter(|i| i % 5 != 0).collect();
    let per_region = |r: usize| created.iter().filter(|i| *i % 3 == r).count() as u64;
    wait_count(&agent, "eu", per_region(0), Duration::from_secs(120)).await;
    wait_count(&agent, "us", per_region(1), Duration::from_secs(30)).await;
    wait_count(&agent, "rest", per_region(2), Duration::from_secs(30)).await;
    for (name, region) in [("eu", 0), ("us", 1), ("rest", 2)] {
        let events = read_all(&agent, name).await;
        let ids: BTreeSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
        let want: BTreeSet<String> = created
            .iter()
            .filter(|i| *i % 3 == region)
            .map(|i| format!("o-{i}"))
            .collect();
        assert_eq!(ids, want, "ids in {name}");
        for e in &events {
            let d = data(e);
            assert_eq!(d["channel"], "web", "Python step enriched {}", e.id());
            assert_eq!(d["tag"], "v1", "Rust step tagged {}", e.id());
            assert_eq!(
                e.ty(),
                "created.order",
                "JavaScript step filtered {}",
                e.id()
            );
        }
    }

    // The same manifest again: nothing restarts.
    let before = runs(&api).await;
    let again = api
        .pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest("v1"),
            dry_run: false,
        })
        .await
        .expect("re-applied")
        .into_inner();
    assert!(again.created.is_empty() && again.updated.is_empty() && again.removed.is_empty());
    assert_eq!(again.unchanged.len(), 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs(&api).await, before, "no step restarted");

    // One step's configuration changes in the middle of 50 000 events:
    // only that step restarts, every event arrives once.
    let total = 50_000;
    let second: Vec<Event> = (300..300 + total).map(order).collect();
    let (head, tail) = second.split_at(total / 2);
    write(&agent, "orders", head).await;
    let changed = api
        .pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest("v2"),
            dry_run: false,
        })
        .await
        .expect("changed")
        .into_inner();
    assert_eq!(changed.updated, vec!["tag"]);
    assert_eq!(changed.unchanged.len(), 3);
    write(&agent, "orders", tail).await;
    let expected: Vec<usize> = (0..300 + total).filter(|i| i % 5 != 0).collect();
    let want = |r: usize| expected.iter().filter(|i| *i % 3 == r).count() as u64;
    wait_count(&agent, "eu", want(0), Duration::from_secs(600)).await;
    wait_count(&agent, "us", want(1), Duration::from_secs(60)).await;
    wait_count(&agent, "rest", want(2), Duration::from_secs(60)).await;
    let mut seen = BTreeSet::new();
    let mut tags = BTreeMap::<String, usize>::new();
    for name in ["eu", "us", "rest"] {
        for e in read_all(&agent, name).await {
            assert!(seen.insert(e.id().to_owned()), "{} arrived twice", e.id());
            *tags
                .entry(data(&e)["tag"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
    }
    let want_ids: BTreeSet<String> = expected.iter().map(|i| format!("o-{i}")).collect();
    assert_eq!(seen, want_ids, "every created order exactly once");
    assert!(
        tags.get("v2").copied().unwrap_or(0) > 0,
        "the new configuration is in effect: {tags:?}"
    );
    assert_eq!(
        tags.keys().cloned().collect::<BTreeSet<_>>(),
        ["v1", "v2"].map(String::from).into()
    );
    let after = runs(&api).await;
    for (step, run) in &after {
        if step == "tag" {
            assert_ne!(run, &before[step], "the changed step restarted");
            assert_eq!(run.0, before[step].0 + 1);
        } else {
            assert_eq!(run, &before[step], "{step} did not restart");
        }
    }

    // Steps change with the manifest, not one by one.
    let refused = api
        .processors()
        .destroy(proto::ProcessorRef {
            id: "orders-route".into(),
        })
        .await
        .expect_err("a step is not destroyed alone");
    assert!(
        refused.message().contains("step of pipeline orders"),
        "{refused:?}"
    );

    // Deleting tears every step down.
    api.pipelines()
        .delete(proto::PipelineRef {
            name: "orders".into(),
        })
        .await
        .expect("deleted");
    let left = api
        .processors()
        .list(proto::ListProcessorsRequest {})
        .await
        .expect("list")
        .into_inner()
        .processors;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_validated_shared_and_protected_while_in_use() {
    let nats = Nats::start();
    let (state_a, state_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let _a = Flowd::start(&nats.url(), state_a.path());
    let _b = Flowd::start(&nats.url(), state_b.path());
    let (a, b) = (api(state_a.path()).await, api(state_b.path()).await);

    let filter = push_file(&a, "filter", "flow_filter").await;
    assert_eq!(filter.kind, "bridge");
    assert_eq!(filter.world, "eson:flow/bridge-processor@0.1.0");
    assert!(filter.digest.starts_with("sha256:"));
    // Pushing the same bytes again is a no-op; other bytes under the same
    // version are refused.
    push_file(&a, "filter", "flow_filter").await;
    let taken = push(
        &a,
        "filter",
        "1.0.0",
        std::fs::read(component("flow_transform")).expect("built"),
    )
    .await
    .expect_err("version taken");
    assert_eq!(taken.code(), tonic::Code::AlreadyExists, "{taken:?}");

    let refusals: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly component",
        ),
        ("core", b"\0asm\x01\0\0\0".to_vec(), "core Wasm module"),
        (
            "command",
            std::fs::read(component("guest-command")).expect("built"),
            "not a flow processor",
        ),
        (
            "netclient",
            std::fs::read(component("guest_netclient")).expect("built"),
            "wasi:sockets",
        ),
    ];
    for (name, bytes, needle) in refusals {
        let e = push(&a, name, "1.0.0", bytes).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(needle), "{name}: {}", e.message());
    }
    assert_eq!(
        names(&a).await,
        ["filter@1.0.0".to_owned()].into(),
        "nothing else stored"
    );

    // The other host sees the upload (one object store on the broker).
    assert_eq!(names(&b).await, names(&a).await);
    let described = b
        .registry()
        .describe(proto::ComponentRef {
            reference: "filter".into(),
        })
        .await
        .expect("described")
        .into_inner();
    assert_eq!(described.digest, filter.digest);

    // In use: refused; once the processor is gone, removed everywhere.
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["src", "dst"]).await;
    b.processors()
        .create(proto::CreateProcessorRequest {
            id: "keep".into(),
            kind: "bridge".into(),
            component: "filter@1.0.0".into(),
            config: vec![proto::ConfigEntry {
                key: "where".into(),
                value: "type == x".into(),
            }],
            inputs: vec![flow("src").to_string()],
            outputs: vec![flow("dst").to_string()],
            ..Default::default()
        })
        .await
        .expect("processor created from a registered component");
    let in_use = a
        .registry()
        .delete(proto::ComponentRef {
            reference: "filter@1.0.0".into(),
        })
        .await
        .expect_err("in use");
    assert_eq!(in_use.code(), tonic::Code::FailedPrecondition);
    assert!(in_use.message().contains("keep"), "{}", in_use.message());
    a.processors()
        .destroy(proto::ProcessorRef { id: "keep".into() })
        .await
        .expect("destroyed");
    a.registry()
        .delete(proto::ComponentRef {
            reference: "filter@1.0.0".into(),
        })
        .await
        .expect("removed");
    assert!(names(&b).await.is_empty());

    // Without credentials, nothing.
    let host = HostFile::read(state_a.path())
        .and_then(|h| h.api)
        .expect("api");
    let stranger = ApiClient::connect(
        &format!("http://{host}"),
        &Credentials::Password {
            user: "nobody".into(),
            password: "guess".into(),
        },
        None,
    )
    .await
    .expect("connects");
    let e = stranger
        .registry()
        .list(proto::ListComponentsRequest {})
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_errors_are_located_and_nothing_is_half_applied() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["in", "out"]).await;
    push_file(&api, "filter", "flow_filter").await;
    push_file(&api, "router", "flow_router").await;

    let cases: [(&str, &str, &str); 6] = [
        (
            "unknown component",
            "name: p\ninputs: {a: flow://in.pipe.example.com}\noutputs: {b: flow://out.pipe.example.com}\nsteps:\n  - name: s\n    component: nope@1.0.0\n    from: a\n    to: b\n",
            "line 6, column 16: step `s`: no such component: nope@1.0.0",
        ),
        (
            "cycle",
            "name: p\ninputs: {a: flow://in.pipe.example.com}\noutputs: {b: flow://out.pipe.example.com}\nsteps:\n  - {name: s, component: filter@1.0.0, from: [a, u], to: b}\n  - {name: t, component: filter@1.0.0, from: b}\n  - {name: u, component: filter@1.0.0, from: t}\n",
            "form a cycle",
        ),
        (
            "arity",
            "name: p\ninputs: {a: flow://in.pipe.example.com}\noutputs: {b: flow://out.pipe.example.com, c: flow://in.pipe.example.com}\nsteps:\n  - name: s\n    component: filter@1.0.0\n    from: a\n    to: [b, c]\n",
            "line 5, column 11: step `s` (bridge filter@1.0.0): a bridge writes exactly one output flow(s), 2 given",
        ),
        (
            "kind",
            "name: p\ninputs: {a: flow://in.pipe.example.com}\noutputs: {b: flow://out.pipe.example.com}\nsteps:\n  - name: s\n    component: router@1.0.0\n    kind: bridge\n    from: a\n    to: b\n",
            "line 7, column 11: step `s` says kind bridge, but router@1.0.0 is a distributor",
        ),
        (
            "unknown flow",
            "name: p\ninputs: {a: flow://in.pipe.example.com}\noutputs: {b: flow://missing.pipe.example.com}\nsteps:\n  - {name: s, component: filter@1.0.0, from: a, to: b}\n",
            "line 3, column 14: unknown flow flow://missing.pipe.example.com",
        ),
        (
            "bad config",
            "name: p\ninputs: {a: flow://in.pipe.example.com}\noutputs: {b: flow://out.pipe.example.com}\nsteps:\n  - name: s\n    component: filter@1.0.0\n    from: a\n    to: b\n    config: {colour: red}\n",
            "line 5, column 11: step `s`:",
        ),
    ];
    for (what, text, needle) in cases {
        let e = api
            .pipelines()
            .apply(proto::ApplyRequest {
                manifest: text.into(),
                dry_run: false,
            })
            .await
            .expect_err(what);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(needle), "{what}: {}", e.message());
    }
    // Four typos of different phases (an unknown field, an edge no one
    // writes, a missing component, a bad configuration): one apply names
    // them all, each at its place, in the order of their places.
    let typos = "\
name: p
inputs: {a: flow://in.pipe.example.com}
outputs: {b: flow://out.pipe.example.com}
steps:
  - name: s
    component: filter@1.0.0
    from: a
    paralelism: 2
    config: {colour: red}
  - name: t
    component: nope@1.0.0
    from: [s, nowhere]
    to: b
";
    let e = api
        .pipelines()
        .apply(proto::ApplyRequest {
            manifest: typos.into(),
            dry_run: false,
        })
        .await
        .expect_err("four typos");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let message = e.message();
    let mut from = 0;
    for needle in [
        "line 5, column 11: step `s`:",
        "line 8, column 5: steps[0].paralelism: Unknown field `paralelism`",
        "line 11, column 16: step `t`: no such component: nope@1.0.0",
        "line 12, column 15: step `t` reads `nowhere`",
    ] {
        let found = message[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} (in order) missing in:\n{message}"));
        from += found + needle.len();
    }
    let listed = api
        .pipelines()
        .list(proto::ListPipelinesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(listed.pipelines.is_empty());
    let processors = api
        .processors()
        .list(proto::ListProcessorsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(processors.processors.is_empty(), "nothing half-applied");

    // A step's id (`<pipeline>-<step>`) that another processor has is
    // refused: its keyed state and status live under that id.
    api.processors()
        .create(proto::CreateProcessorRequest {
            id: "p-s".into(),
            kind: "bridge".into(),
            component: "filter@1.0.0".into(),
            config: vec![proto::ConfigEntry {
                key: "where".into(),
                value: "type == x".into(),
            }],
            inputs: vec![flow("in").to_string()],
            outputs: vec![flow("out").to_string()],
            ..Default::default()
        })
        .await
        .expect("a processor of its own");
    let taken = api
        .pipelines()
        .apply(proto::ApplyRequest {
            manifest: "name: p\ninputs: {a: flow://in.pipe.example.com}\noutputs: {b: flow://out.pipe.example.com}\nsteps:\n  - {name: s, component: filter@1.0.0, from: a, to: b, config: {where: type == y}}\n".into(),
            dry_run: false,
        })
        .await
        .expect_err("id taken");
    assert_eq!(taken.code(), tonic::Code::AlreadyExists, "{taken:?}");
    assert!(taken.message().contains("p-s"), "{}", taken.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fused_step_dead_letters_its_events_and_the_rest_flows_on() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["raw", "done"]).await;
    push_file(&api, "transform", "flow_transform").await;
    push_file(&api, "hostile", "guest_hostile").await;
    let manifest = "\
name: guarded
inputs: {raw: flow://raw.pipe.example.com}
outputs: {done: flow://done.pipe.example.com}
steps:
  - name: mark
    component: transform@1.0.0
    from: raw
    config: {set.data.marked: true}
  - name: risky
    component: hostile@1.0.0
    from: mark
  - name: last
    component: transform@1.0.0
    from: risky
    to: done
    config: {set.data.last: true}
limits: {deadline-ms: 2000, max-attempts: 2}
";
    api.pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest.into(),
            dry_run: false,
        })
        .await
        .expect("applied");
    let events: Vec<Event> = (0..200)
        .map(|i| {
            EventBuilderV10::new()
                .id(format!("g-{i}"))
                .source("urn:test")
                .ty(match i % 50 {
                    7 => "test.fail",
                    8 => "test.trap",
                    9 => "test.log",
                    10 => "test.chatter",
                    _ => "test.ok",
                })
                .data("application/json", json!({"n": i}))
                .build()
                .expect("event")
        })
        .collect();
    write(&agent, "raw", &events).await;
    wait_count(&agent, "done", 192, Duration::from_secs(120)).await;
    for e in read_all(&agent, "done").await {
        assert_eq!(data(&e)["marked"], true);
        assert_eq!(data(&e)["last"], true);
    }
    let dead = FlowName::parse("deadletter.guarded.pipelines.flowd").expect("flow");
    let mut letters = Vec::new();
    agent
        .read(&dead, true, None, false, Duration::from_millis(500), |e| {
            letters.push(e);
            Ok(())
        })
        .await
        .expect("dead letters");
    let ids: BTreeSet<String> = letters.iter().map(|e| e.id().to_owned()).collect();
    let want: BTreeSet<String> = (0..200)
        .filter(|i| matches!(i % 50, 7 | 8))
        .map(|i| format!("g-{i}"))
        .collect();
    assert_eq!(ids, want, "exactly the failing events are dead-lettered");
    for e in &letters {
        let error = e
            .extension("deadlettererror")
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(error.contains("step guarded-risky"), "{error}");
        // The original event, not the half-processed one.
        assert_eq!(data(e).get("marked"), None, "{}", e.id());
    }

    // Each step counts its own events: mark passed all 200 on, risky
    // dead-lettered 8 of them, last saw the 192 others.
    let counts = eventually(Duration::from_secs(20), "step counters", || async {
        let counts: BTreeMap<String, (u64, u64, u64)> = pipeline(&api, "guarded")
            .await
            .into_iter()
            .filter_map(|(name, p)| {
                let st = p.status?;
                Some((name, (st.events_in, st.events_out, st.dead_lettered)))
            })
            .collect();
        (counts.get("last").map(|c| c.0) == Some(192)).then_some(counts)
    })
    .await;
    assert_eq!(counts["mark"], (200, 200, 0), "{counts:?}");
    assert_eq!(counts["risky"], (200, 192, 8), "{counts:?}");
    assert_eq!(counts["last"], (192, 192, 0), "{counts:?}");

    // The processor log says what went wrong, where, and what the guest
    // said; a guest writing 64 KiB to stderr is not made to fail for it.
    use futures::StreamExt;
    let read = || async {
        api.logs()
            .read(proto::ReadLogsRequest {
                name: "guarded".into(),
                follow: false,
                since_ms: 0,
            })
            .await
            .expect("log")
            .into_inner()
            .map(|r| r.expect("record"))
            .collect::<Vec<_>>()
            .await
    };
    let records = eventually(Duration::from_secs(20), "the log", || async {
        let records = read().await;
        let dead: usize = records.iter().filter(|r| r.kind == "dead-letter").count();
        (dead == 8).then_some(records)
    })
    .await;
    let has = |kind: &str, processor: &str, text: &str| {
        records
            .iter()
            .any(|r| r.kind == kind && r.processor == processor && r.message.contains(text))
    };
    assert!(
        has(
            "trap",
            "guarded-risky",
            "hostile guest traps on event g-8 (at "
        ),
        "{records:#?}"
    );
    let letter = records
        .iter()
        .find(|r| r.kind == "dead-letter" && r.event == "g-7")
        .expect("g-7's dead letter logged");
    assert_eq!(
        (letter.level.as_str(), letter.processor.as_str()),
        ("error", "guarded-risky")
    );
    assert!(
        letter.message.contains("refused by test guest"),
        "{letter:?}"
    );
    assert!(has("guest", "guarded-risky", "hostile guest logs g-9"));
    assert!(has("stdout", "guarded-risky", "hostile guest prints g-9"));
    assert!(has("stderr", "guarded-risky", "complains about g-9"));
    assert!(
        !records.iter().any(|r| r.processor == "guarded-mark"),
        "mark never failed nor spoke"
    );
    let ids: BTreeSet<String> = read_all(&agent, "done")
        .await
        .iter()
        .map(|e| e.id().to_owned())
        .collect();
    assert!(
        ids.contains("g-10") && ids.contains("g-60"),
        "chatter passes"
    );
}

/// A step's created events are checked as they leave it: when the host
/// refuses one (a bad `time` from the last step), the keyed state of every
/// step goes back to its savepoint before the batch, so the retries and the
/// events around the dead-lettered one count 1, 2, 3... without a gap or a
/// repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_segment_outputs_leave_no_state_behind() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["raw", "done"]).await;
    push_file(&api, "transform", "flow_transform").await;
    push_file(&api, "hostile", "guest_hostile").await;
    let manifest = "\
name: tally
inputs: {raw: flow://raw.pipe.example.com}
outputs: {done: flow://done.pipe.example.com}
steps:
  - name: mark
    component: transform@1.0.0
    from: raw
    config: {set.data.marked: true}
  - name: count
    component: hostile@1.0.0
    from: mark
    to: done
limits: {deadline-ms: 2000, max-attempts: 3}
";
    api.pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest.into(),
            dry_run: false,
        })
        .await
        .expect("applied");
    let events: Vec<Event> = (0..300)
        .map(|i| {
            EventBuilderV10::new()
                .id(format!("t-{i}"))
                .source("urn:test")
                .ty(if i % 30 == 11 {
                    "test.badout"
                } else {
                    "test.count"
                })
                .data("application/json", json!({"n": i}))
                .build()
                .expect("event")
        })
        .collect();
    write(&agent, "raw", &events).await;
    wait_count(&agent, "done", 290, Duration::from_secs(120)).await;
    let counts: Vec<i64> = read_all(&agent, "done")
        .await
        .iter()
        .map(|e| {
            e.extension("count")
                .and_then(|v| v.to_string().parse().ok())
                .unwrap_or(-1)
        })
        .collect();
    assert_eq!(counts, (1..=290).collect::<Vec<i64>>());
    // The refused events are dead-lettered as the step's, not the
    // segment's first step's.
    let dead = FlowName::parse("deadletter.tally.pipelines.flowd").expect("flow");
    let mut letters = Vec::new();
    agent
        .read(&dead, true, None, false, Duration::from_millis(500), |e| {
            letters.push(e);
            Ok(())
        })
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), 10, "{letters:?}");
    for letter in &letters {
        let attribute = |name: &str| letter.extension(name).map(|v| v.to_string());
        assert_eq!(attribute("deadletterstep").as_deref(), Some("tally-count"));
        assert!(
            attribute("deadlettererror").is_some_and(|e| e.contains("RFC 3339")),
            "{letter:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fused_pipeline_killed_mid_run_delivers_every_event_once() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["in", "eu", "us", "rest"]).await;
    push_file(&api, "transform", "flow_transform").await;
    push_file(&api, "router", "flow_router").await;
    let manifest = "\
name: crash
inputs: {in: flow://in.pipe.example.com}
outputs:                          # components see these edge names
  europe: flow://eu.pipe.example.com
  america: flow://us.pipe.example.com
  others: flow://rest.pipe.example.com
steps:
  - {name: a, component: transform@1.0.0, from: in, config: {set.data.a: 1}}
  - {name: b, component: transform@1.0.0, from: a, config: {set.data.b: 2}}
  - name: route
    component: router@1.0.0
    from: b
    to: [europe, america, others]
    config: {by: data.region, route.eu: europe, route.us: america, default: others}
";
    api.pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest.into(),
            dry_run: false,
        })
        .await
        .expect("applied");
    let total = 30_000;
    let events: Vec<Event> = (0..total).map(order).collect();
    write(&agent, "in", &events[..total / 2]).await;
    // Killed while it works through the first half.
    eventually(Duration::from_secs(60), "some output", || async {
        (count(&agent, "eu").await > 100).then_some(())
    })
    .await;
    host.kill9();
    write(&agent, "in", &events[total / 2..]).await;
    let _again = Flowd::start(&nats.url(), state.path());
    let want = |r: usize| (0..total).filter(|i| i % 3 == r).count() as u64;
    wait_count(&agent, "eu", want(0), Duration::from_secs(300)).await;
    wait_count(&agent, "us", want(1), Duration::from_secs(60)).await;
    wait_count(&agent, "rest", want(2), Duration::from_secs(60)).await;
    let mut seen = BTreeSet::new();
    for name in ["eu", "us", "rest"] {
        for e in read_all(&agent, name).await {
            assert_eq!(data(&e)["a"], 1);
            assert_eq!(data(&e)["b"], 2);
            assert!(seen.insert(e.id().to_owned()), "{} twice", e.id());
        }
    }
    assert_eq!(seen.len(), total);
}

/// Changing a step's parallelism while events flow (1 -> 3 -> 1) moves its
/// input to the other kind of consumer from where the old one stood: every
/// event comes out once; a wrong parallelism is refused with its location.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_parallelism_mid_stream_neither_loses_nor_repeats() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["wide-in", "wide-out"]).await;
    push_file(&api, "transform", "flow_transform").await;
    let manifest = |parallelism: &str| {
        format!(
            "name: wide
inputs: {{in: flow://wide-in.pipe.example.com}}
outputs: {{out: flow://wide-out.pipe.example.com}}
steps:
  - name: mark
    component: transform@1.0.0
    from: in
    to: out
    parallelism: {parallelism}
    config: {{set.data.marked: true}}
"
        )
    };
    let apply = |text: String| {
        let api = api.clone();
        async move {
            api.pipelines()
                .apply(proto::ApplyRequest {
                    manifest: text,
                    dry_run: false,
                })
                .await
        }
    };
    let refused = apply(manifest("0")).await.expect_err("parallelism 0");
    assert!(
        refused.message().contains("line 9, column 18")
            && refused.message().contains("parallelism must be 1 to 64"),
        "{}",
        refused.message()
    );
    apply(manifest("1")).await.expect("applied");
    let total = 30_000;
    let events: Vec<Event> = (0..total).map(order).collect();
    write(&agent, "wide-in", &events[..10_000]).await;
    eventually(Duration::from_secs(60), "some output", || async {
        (count(&agent, "wide-out").await > 1000).then_some(())
    })
    .await;
    apply(manifest("3")).await.expect("to three instances");
    write(&agent, "wide-in", &events[10_000..20_000]).await;
    eventually(Duration::from_secs(60), "more output", || async {
        (count(&agent, "wide-out").await > 12_000).then_some(())
    })
    .await;
    apply(manifest("1")).await.expect("back to one");
    write(&agent, "wide-in", &events[20_000..]).await;
    wait_count(&agent, "wide-out", total as u64, Duration::from_secs(180)).await;
    let mut seen = BTreeSet::new();
    for e in read_all(&agent, "wide-out").await {
        assert_eq!(data(&e)["marked"], true);
        assert!(seen.insert(e.id().to_owned()), "{} twice", e.id());
    }
    assert_eq!(seen.len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_step_counts_every_key_exactly_in_order_while_its_parallelism_changes() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["keys-in", "keys-out"]).await;
    push_file(&api, "hostile", "guest_hostile").await;
    let manifest = |parallelism: u32, extra: &str| {
        format!(
            "name: keys
inputs: {{in: flow://keys-in.pipe.example.com}}
outputs: {{out: flow://keys-out.pipe.example.com}}
steps:
  - name: count
    component: hostile@1.0.0
    from: in
    to: out
    key: subject
    partitions: 16
    parallelism: {parallelism}
{extra}"
        )
    };
    let apply = |text: String| {
        let api = api.clone();
        async move {
            api.pipelines()
                .apply(proto::ApplyRequest {
                    manifest: text,
                    dry_run: false,
                })
                .await
        }
    };
    let refused = apply(manifest(32, ""))
        .await
        .expect_err("more instances than partitions");
    assert!(
        refused
            .message()
            .contains("parallelism 32 exceeds its 16 partitions"),
        "{}",
        refused.message()
    );
    let refused = apply(manifest(1, "").replace("key: subject", "key: data.")).await;
    assert!(
        refused
            .expect_err("bad key")
            .message()
            .contains("key `data.`")
    );
    apply(manifest(1, "")).await.expect("applied");

    const KEYS: usize = 300;
    const TOTAL: usize = 24_000;
    let events: Vec<Event> = (0..TOTAL).map(|i| flows::keyed_event(i, KEYS)).collect();
    write(&agent, "keys-in", &events[..8_000]).await;
    eventually(Duration::from_secs(60), "some counted", || async {
        (count(&agent, "keys-out").await > 1000).then_some(())
    })
    .await;
    apply(manifest(4, "")).await.expect("to four instances");
    write(&agent, "keys-in", &events[8_000..16_000]).await;
    eventually(Duration::from_secs(60), "more counted", || async {
        (count(&agent, "keys-out").await > 10_000).then_some(())
    })
    .await;
    let refused = apply(manifest(2, "").replace("partitions: 16", "partitions: 32")).await;
    assert!(
        refused
            .expect_err("partitions are fixed")
            .message()
            .contains("its key and partitions are fixed"),
    );
    apply(manifest(2, "")).await.expect("to two instances");
    write(&agent, "keys-in", &events[16_000..]).await;
    wait_count(&agent, "keys-out", TOTAL as u64, Duration::from_secs(180)).await;
    let out = read_all(&agent, "keys-out").await;
    flows::assert_counted_in_order(&out, TOTAL, KEYS);
    let unkeyed = manifest(2, "").replace("    key: subject\n    partitions: 16\n", "");
    assert!(!unkeyed.contains("key:"));
    let refused = apply(unkeyed).await.expect_err("a keyed step stays keyed");
    assert!(
        refused.message().contains("cannot stop being keyed"),
        "{}",
        refused.message()
    );
}

/// A keyed signal ticks once per partition, on that partition's state:
/// with two instances, every sensor's readings are counted in its windows
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_signal_ticks_each_partition_on_its_own_state() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["readings", "alerts", "windows"]).await;
    push_file(&api, "threshold", "flow_threshold").await;
    api.pipelines()
        .apply(proto::ApplyRequest {
            manifest: "name: sensors
inputs: {in: flow://readings.pipe.example.com}
outputs: {alerts: flow://alerts.pipe.example.com, windows: flow://windows.pipe.example.com}
steps:
  - name: watch
    component: threshold@1.0.0
    from: in
    to: [alerts, windows]
    key: data.sensor
    partitions: 8
    parallelism: 2
    config: {field: data.value, above: '1000', key: data.sensor}
limits: {tick-ms: 200}
"
            .into(),
            dry_run: false,
        })
        .await
        .expect("a keyed signal may run several instances");
    const SENSORS: usize = 40;
    const READINGS: usize = 4_000;
    let events: Vec<Event> = (0..READINGS)
        .map(|i| {
            EventBuilderV10::new()
                .id(format!("r-{i}"))
                .source("urn:test:sensors")
                .ty("reading")
                .data(
                    "application/json",
                    json!({"sensor": format!("s{}", i % SENSORS), "value": i % 100}),
                )
                .build()
                .expect("event")
        })
        .collect();
    write(&agent, "readings", &events).await;
    let windows = eventually(
        Duration::from_secs(90),
        "every reading in a window",
        || async {
            let windows = read_all(&agent, "windows").await;
            let counted: u64 = windows
                .iter()
                .map(|w| data(w)["count"].as_u64().unwrap_or(0))
                .sum();
            (counted >= READINGS as u64).then_some(windows)
        },
    )
    .await;
    let mut per_sensor: BTreeMap<String, u64> = BTreeMap::new();
    for w in &windows {
        *per_sensor
            .entry(data(w)["key"].as_str().unwrap_or_default().to_owned())
            .or_default() += data(w)["count"].as_u64().unwrap_or(0);
    }
    assert_eq!(per_sensor.len(), SENSORS);
    assert!(
        per_sensor
            .values()
            .all(|&n| n == (READINGS / SENSORS) as u64),
        "{per_sensor:?}"
    );
    assert_eq!(count(&agent, "alerts").await, 0);
}

/// An in-process host's configuration: FNAP on a free loopback port, the
/// rest off (the test turns on what it looks at).
fn quiet_config(nats: &Nats, state: &std::path::Path) -> flowd::config::Config {
    let mut config = flowd::config::Config::default();
    config.participant.state_dir = state.to_owned();
    config.nats.urls = vec![nats.url()];
    config.metrics.listen = None;
    config.fnap.listen = Some(([127, 0, 0, 1], 0).into());
    config.fnap.tls_listen = None;
    config.fns.listen = None;
    config.api.listen = None;
    config.console.listen = None;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_tls_with_the_hosts_certificate() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = quiet_config(&nats, state.path());
    config.api.listen = Some(([127, 0, 0, 1], 0).into());
    config.api.tls = true;
    let host = flowd::daemon::Daemon::start(config)
        .await
        .expect("host starts");
    let addr = host.api_addr().expect("API");
    let file = HostFile::read(state.path()).expect("host.json");
    assert!(file.api_tls);
    let ca = std::fs::read(file.tls_cert.expect("certificate")).expect("certificate file");
    let token =
        std::fs::read_to_string(flowd::user_agent::local_token_path(state.path())).expect("token");
    let credentials = Credentials::Token(token.trim().to_owned());
    let tls = ApiClient::connect(
        &format!("https://localhost:{}", addr.port()),
        &credentials,
        Some(&ca),
    )
    .await
    .expect("TLS connection with the host's certificate");
    tls.registry()
        .list(proto::ListComponentsRequest {})
        .await
        .expect("listed over TLS");
    // Plain text is not spoken on that port.
    let plain = async {
        ApiClient::connect(&format!("http://{addr}"), &credentials, None)
            .await
            .ok()?
            .registry()
            .list(proto::ListComponentsRequest {})
            .await
            .ok()
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), plain)
            .await
            .ok()
            .flatten()
            .is_none(),
        "a plain-text client is not served"
    );
    host.shutdown().await;
}

/// The console over TLS (`[console] tls = true`): its page and a log-in
/// over HTTPS with the host's certificate, the session cookie `Secure`.
/// The attacker's side: clients that connect and never finish a handshake,
/// more of them from one address than handshakes may run at once, hold up
/// no one else, and plain HTTP on that port gets no page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_speaks_tls_and_silent_clients_hold_up_no_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = quiet_config(&nats, state.path());
    config.console.listen = Some(([127, 0, 0, 1], 0).into());
    config.console.tls = true;
    let host = flowd::daemon::Daemon::start(config)
        .await
        .expect("host starts");
    let addr = host.console_addr().expect("console");
    let file = HostFile::read(state.path()).expect("host.json");
    assert!(file.console_tls);
    let cert = file.tls_cert.expect("certificate");
    let tls = std::sync::Arc::new(
        flowd::tls::pinned_client_config(&cert).expect("the host's certificate"),
    );
    let token = std::fs::read_to_string(flowd::user_agent::local_token_path(state.path()))
        .expect("token")
        .trim()
        .to_owned();
    // Silent clients from another address: each holds a connection open
    // and never says a word. A handshake waited for on the accept path, or
    // 64 handshake slots taken by one address, would hold the page up for
    // the whole 5 s deadline.
    let mut silent = Vec::new();
    for _ in 0..70 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(([127, 0, 0, 2], 0).into())
            .expect("bound to 127.0.0.2");
        silent.push(socket.connect(addr).await.expect("connects"));
    }
    let https = |request: String| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connects");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .expect("TLS handshake with the host's certificate");
            stream.write_all(request.as_bytes()).await.expect("sent");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let page = tokio::time::timeout(
        Duration::from_secs(4),
        https("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()),
    )
    .await
    .expect("served while silent clients wait");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>flowd console</title>"), "{page}");
    let login = format!("{{\"token\":\"{token}\"}}");
    let answer = https(format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nx-flowd-console: 1\r\nContent-Length: {}\r\n\r\n{login}",
        login.len()
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let session = cookie.split(';').next().expect("cookie").to_owned();
    let overview = https(format!(
        "GET /api/overview HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {session}\r\n\r\n"
    ))
    .await;
    assert!(overview.starts_with("HTTP/1.1 200"), "{overview}");
    drop(silent);
    // Plain HTTP on the TLS port: no page, whatever comes back.
    let mut plain = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("sent");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("flowd console"),
        "plain HTTP is not served on the TLS port"
    );
    host.shutdown().await;
}

/// The 18 MB Python component, pushed and used at once: its step starts on
/// the baseline compiler's code (`code=baseline`), moves to the optimised
/// code when the background compile is done, and every event on either
/// side of the move comes out once, in order, enriched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_component_runs_at_once_and_moves_to_optimised_code_losing_nothing() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["raw", "enriched"]).await;
    push_file(&api, "enrich-py", "flow_enrich_py").await;
    let manifest = "\
apiVersion: flowd/v1
kind: Pipeline
name: quick
inputs:
  raw: flow://raw.pipe.example.com
outputs:
  enriched: flow://enriched.pipe.example.com
steps:
  - name: enrich
    component: enrich-py@1.0.0
    from: raw
    to: [enriched]
    config:
      set: channel=web
limits:
  deadline-ms: 5000
  memory-mib: 256
";
    api.pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest.into(),
            dry_run: false,
        })
        .await
        .expect("applied");
    let code = || async {
        let steps = pipeline(&api, "quick").await;
        steps["enrich"]
            .status
            .as_ref()
            .map(|s| s.code.clone())
            .unwrap_or_default()
    };
    let first: Vec<Event> = (0..50).map(order).collect();
    write(&agent, "raw", &first).await;
    wait_count(&agent, "enriched", 50, Duration::from_secs(60)).await;
    // The optimised compile takes seconds more than the baseline one.
    assert_eq!(
        code().await,
        "baseline",
        "started before the optimised code"
    );
    eventually(Duration::from_secs(120), "the optimised code", || async {
        (code().await == "optimised").then_some(())
    })
    .await;
    let second: Vec<Event> = (50..100).map(order).collect();
    write(&agent, "raw", &second).await;
    wait_count(&agent, "enriched", 100, Duration::from_secs(60)).await;
    let out = read_all(&agent, "enriched").await;
    let ids: Vec<String> = out.iter().map(|e| e.id().to_owned()).collect();
    let want: Vec<String> = (0..100).map(|i| format!("o-{i}")).collect();
    assert_eq!(ids, want, "every event once, in order");
    for e in &out {
        assert_eq!(data(e)["channel"], "web", "enriched {}", e.id());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&agent, "enriched").await, 100, "nothing repeated");
}

/// Dead letters through the API as `flow deadletter` uses it: listed with
/// why they failed; a replay that fails again is a new dead letter (not a
/// duplicate of the first); once the processor is fixed, a replay reaches
/// the output exactly once and a sibling reading the same flow does not
/// see it twice; a discard removes one; every replay and discard is in the
/// processor log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_once_fixed_and_discarded() {
    use cloudevents::event::ExtensionValue;
    use futures::StreamExt;
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = Flowd::start(&nats.url(), state.path());
    let api = api(state.path()).await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["letters", "fixed", "side"]).await;
    push_file(&api, "hostile", "guest_hostile").await;
    push_file(&api, "passthrough", "flow_passthrough").await;
    let create = |id: &str, component: &str, output: &str| proto::CreateProcessorRequest {
        id: id.into(),
        kind: "bridge".into(),
        component: component.into(),
        inputs: vec![flow("letters").to_string()],
        outputs: vec![flow(output).to_string()],
        limits: Some(proto::Limits {
            max_attempts: 1,
            deadline_ms: 2000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut processors = api.processors();
    processors
        .create(create("fragile", "hostile@1.0.0", "fixed"))
        .await
        .expect("created");
    processors
        .create(create("sibling", "passthrough@1.0.0", "side"))
        .await
        .expect("created");
    let event = |i: usize| {
        EventBuilderV10::new()
            .id(format!("d-{i}"))
            .source("urn:test")
            .ty(match i {
                3 | 13 => "test.fail",
                5 => "test.trap",
                _ => "test.ok",
            })
            .data("application/json", json!({"n": i}))
            .build()
            .expect("event")
    };
    write(&agent, "letters", &(0..20).map(event).collect::<Vec<_>>()).await;
    wait_count(&agent, "fixed", 17, Duration::from_secs(60)).await;
    wait_count(&agent, "side", 20, Duration::from_secs(60)).await;

    let mut letters_api = api.dead_letters();
    let list = |mut c: proto::dead_letters_client::DeadLettersClient<_>| async move {
        c.list(proto::DeadLettersRequest {
            name: "fragile".into(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner()
        .letters
    };
    let letters = eventually(Duration::from_secs(20), "three dead letters", || {
        let c = letters_api.clone();
        async move {
            let l = list(c).await;
            (l.len() == 3).then_some(l)
        }
    })
    .await;
    // A message in the dead-letter flow that is not an event (a binary-mode
    // CloudEvent whose `time` is not one, written there by someone with
    // broker access) is left out; the letters are still listed.
    let nats_client = async_nats::connect(nats.url()).await.expect("broker");
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "forged-0"),
        ("ce-source", "urn:attacker"),
        ("ce-type", "test.ok"),
        ("ce-time", "not a time"),
        ("ce-deadletterprocessor", "fragile"),
    ] {
        headers.insert(name, value);
    }
    async_nats::jetstream::new(nats_client)
        .publish_with_headers(format!("flow.{}", letters[0].flow), headers, "{}".into())
        .await
        .expect("published")
        .await
        .expect("stored");
    let letters = list(letters_api.clone()).await;
    let by_id: BTreeMap<&str, &proto::DeadLetter> =
        letters.iter().map(|l| (l.event_id.as_str(), l)).collect();
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        ["d-13", "d-3", "d-5"]
    );
    // The event is named by its id, not by its place in a retried batch.
    assert!(
        by_id["d-3"]
            .error
            .contains("event d-3: refused by test guest"),
        "{}",
        by_id["d-3"].error
    );
    assert!(by_id["d-5"].error.contains("hostile guest traps"));
    assert_eq!(by_id["d-3"].input, flow("letters").to_string());
    assert!(!by_id["d-3"].event_json.contains("deadletter"));
    // Another processor's name shows none of them.
    let theirs = letters_api
        .list(proto::DeadLettersRequest {
            name: "sibling".into(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner()
        .letters;
    assert!(theirs.is_empty(), "{theirs:?}");
    // Replay and discard ask which.
    let refused = letters_api
        .replay(proto::DeadLettersRequest {
            name: "fragile".into(),
            ..Default::default()
        })
        .await
        .expect_err("which?");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // Replayed while still broken: it fails again, and is a dead letter
    // again (a new one, past the duplicate window of the first).
    let first = by_id["d-3"].sequence;
    let done = letters_api
        .replay(proto::DeadLettersRequest {
            name: "fragile".into(),
            sequences: vec![first],
            ..Default::default()
        })
        .await
        .expect("replayed")
        .into_inner()
        .handled;
    assert_eq!(done.len(), 1);
    let again = eventually(Duration::from_secs(30), "d-3 dead again", || {
        let c = letters_api.clone();
        async move {
            let l = list(c).await;
            l.into_iter()
                .find(|l| l.event_id == "d-3" && l.sequence != first)
        }
    })
    .await;
    assert!(
        again.event_json.contains("replayid"),
        "{}",
        again.event_json
    );

    // Discard d-13.
    let d13 = by_id["d-13"].sequence;
    let discarded = letters_api
        .discard(proto::DeadLettersRequest {
            name: "fragile".into(),
            sequences: vec![d13],
            ..Default::default()
        })
        .await
        .expect("discarded")
        .into_inner()
        .handled;
    assert_eq!(discarded.len(), 1);

    // Fixed (a passthrough now), the rest is replayed and arrives once.
    let before = pipeline_free_generation(&api, "fragile").await;
    processors
        .update(proto::UpdateProcessorRequest {
            id: "fragile".into(),
            component: "passthrough@1.0.0".into(),
            ..Default::default()
        })
        .await
        .expect("updated");
    eventually(Duration::from_secs(60), "fragile runs the fix", || {
        let api = api.clone();
        async move {
            let p = api
                .processors()
                .status(proto::ProcessorRef {
                    id: "fragile".into(),
                })
                .await
                .ok()?
                .into_inner();
            let st = p.status?;
            (st.phase == "running" && st.generation > before).then_some(())
        }
    })
    .await;
    let done = letters_api
        .replay(proto::DeadLettersRequest {
            name: "fragile".into(),
            all: true,
            ..Default::default()
        })
        .await
        .expect("replayed")
        .into_inner()
        .handled;
    let replayed: BTreeSet<String> = done.iter().map(|h| h.event_id.clone()).collect();
    assert_eq!(replayed, BTreeSet::from(["d-3".into(), "d-5".into()]));
    wait_count(&agent, "fixed", 19, Duration::from_secs(60)).await;
    let out = read_all(&agent, "fixed").await;
    let ids: Vec<String> = out.iter().map(|e| e.id().to_owned()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "each once: {ids:?}");
    assert!(unique.contains(&"d-3".to_owned()) && unique.contains(&"d-5".to_owned()));
    assert!(!unique.contains(&"d-13".to_owned()), "discarded");
    let d5 = out.iter().find(|e| e.id() == "d-5").expect("d-5");
    assert!(d5.extension("deadlettererror").is_none());
    assert!(matches!(
        d5.extension("replayid"),
        Some(ExtensionValue::String(_))
    ));
    assert!(list(letters_api.clone()).await.is_empty());
    // The sibling skipped the replays: it saw each event once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&agent, "side").await, 20);

    // The log has every replay and the discard.
    let records: Vec<proto::LogRecord> = api
        .logs()
        .read(proto::ReadLogsRequest {
            name: "fragile".into(),
            ..Default::default()
        })
        .await
        .expect("log")
        .into_inner()
        .map(|r| r.expect("record"))
        .collect()
        .await;
    let kinds = |kind: &str| records.iter().filter(|r| r.kind == kind).count();
    assert_eq!(kinds("replay"), 3, "{records:#?}");
    assert_eq!(kinds("discard"), 1, "{records:#?}");

    // Long reads are counted per principal: eight log reads (here follows)
    // open at once, the ninth refused until one ends.
    let follow = || async {
        api.logs()
            .read(proto::ReadLogsRequest {
                name: "fragile".into(),
                follow: true,
                since_ms: 0,
            })
            .await
    };
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(follow().await.expect("a follow").into_inner());
    }
    let refused = follow().await.expect_err("a ninth");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("8 log reads"), "{refused}");
    drop(open.pop());
    let again = eventually(Duration::from_secs(10), "a turn given back", || async {
        follow().await.ok()
    })
    .await;
    drop((open, again));

    // A forged dead letter (whoever may write the dead-letter flow can put
    // one there) naming a flow that is no input of the processor is not
    // replayed there.
    let dead = FlowName::parse("fragile.deadletter.fixed.pipe.example.com").expect("flow");
    let forged = EventBuilderV10::new()
        .id("forged-1")
        .source("urn:attacker")
        .ty("test.ok")
        .extension("deadletterprocessor", "fragile")
        .extension("deadletterflow", flow("side").to_string())
        .extension("deadlettererror", "none")
        .build()
        .expect("event");
    flows::write(&agent, &dead, &[forged]).await;
    let letter = eventually(Duration::from_secs(20), "the forged letter", || {
        let c = letters_api.clone();
        async move { list(c).await.into_iter().find(|l| l.event_id == "forged-1") }
    })
    .await;
    let refused = letters_api
        .replay(proto::DeadLettersRequest {
            name: "fragile".into(),
            sequences: vec![letter.sequence],
            ..Default::default()
        })
        .await
        .expect_err("not an input of fragile");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert_eq!(count(&agent, "side").await, 20);
}

/// A processor's current generation.
async fn pipeline_free_generation(api: &ApiClient, id: &str) -> u64 {
    api.processors()
        .status(proto::ProcessorRef { id: id.into() })
        .await
        .expect("status")
        .into_inner()
        .generation
}

/// The web console in a real browser (Debian's chromium driven by
/// playwright-core, `tests/console/console.mjs`): log in with the
/// administrator token; the pipeline's graph with rates moving while
/// events flow; a step's log showing a trap's message; pause and resume a
/// processor from the page; then, the step fixed, replay a dead letter
/// from its page and see the event arrive in the output flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_live_pipeline_its_logs_and_replays_a_dead_letter() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = support::Flowd::start_with_console(&nats.url(), state.path());
    let api = api(state.path()).await;
    let console = eventually(Duration::from_secs(20), "the console's address", || async {
        HostFile::read(state.path()).and_then(|h| h.console)
    })
    .await;
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    create_flows(&agent, &["watched-in", "watched-out", "watched-copy"]).await;
    push_file(&api, "transform", "flow_transform").await;
    push_file(&api, "hostile", "guest_hostile").await;
    push_file(&api, "passthrough", "flow_passthrough").await;
    let manifest = |risky: &str| {
        format!(
            "name: watched\n\
             inputs: {{in: flow://watched-in.pipe.example.com}}\n\
             outputs: {{out: flow://watched-out.pipe.example.com}}\n\
             steps:\n\
             \x20 - name: mark\n    component: transform@1.0.0\n    from: in\n    config: {{set.data.marked: true}}\n\
             \x20 - name: risky\n    component: {risky}\n    from: mark\n    to: out\n    key: data.n\n    partitions: 4\n\
             limits: {{deadline-ms: 2000, max-attempts: 1}}\n"
        )
    };
    api.pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest("hostile@1.0.0"),
            dry_run: false,
        })
        .await
        .expect("applied");

    // Events flow while the page is watched: one in ten traps.
    let writing = {
        let agent = agent.clone();
        tokio::spawn(async move {
            for round in 0..600usize {
                let events: Vec<Event> = (0..20)
                    .map(|i| {
                        let n = round * 20 + i;
                        EventBuilderV10::new()
                            .id(format!("w-{n}"))
                            .source("urn:test")
                            .ty(if n % 10 == 3 { "test.trap" } else { "test.ok" })
                            .data("application/json", json!({"n": n}))
                            .build()
                            .expect("event")
                    })
                    .collect();
                flows::write(&agent, &flow("watched-in"), &events).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // The output subscribed into a local copy: subscriptions both ways
    // (a subscription's source lies in a namespace the host serves).
    agent
        .create_namespace_as(
            &flowd::agent::Principal::Host,
            &"pipe.example.com".parse().expect("namespace"),
            None,
            false,
        )
        .await
        .expect("namespace");
    agent
        .subscribe_as(
            &flowd::agent::Principal::Host,
            None,
            &flow("watched-out"),
            Some(&flow("watched-copy")),
            false,
        )
        .await
        .expect("subscribed");
    let host_id = std::fs::read_to_string(state.path().join("host-id"))
        .expect("host id")
        .trim()
        .to_owned();
    let token = std::fs::read_to_string(flowd::user_agent::local_token_path(state.path()))
        .expect("token")
        .trim()
        .to_owned();
    let browse = move |phase: &str, extra: &[(&str, String)]| {
        let mut extra = extra.to_vec();
        extra.push(("PIPELINE", "watched".to_owned()));
        support::browse(console, &token, phase, &extra)
    };
    let watched = tokio::task::spawn_blocking({
        let browse = browse.clone();
        move || {
            browse(
                "watch",
                &[
                    ("STEP", "risky".to_owned()),
                    ("RUNNER", "watched-mark".to_owned()),
                    ("COMPONENT", "transform@1.0.0".to_owned()),
                    ("HOST", host_id),
                    ("INPUT", flow("watched-in").to_string()),
                    ("OUTPUT", flow("watched-out").to_string()),
                    ("COPY", flow("watched-copy").to_string()),
                ],
            )
        }
    })
    .await
    .expect("joined");
    for part in [
        "graph",
        "tail",
        "placement",
        "components",
        "subscriptions",
        "logs",
        "pause",
        "resume",
    ] {
        assert!(watched.contains(&format!("ok watch {part}")), "{watched}");
    }
    writing.abort();

    // The step fixed, a dead letter is replayed from the page.
    api.pipelines()
        .apply(proto::ApplyRequest {
            manifest: manifest("passthrough@1.0.0"),
            dry_run: false,
        })
        .await
        .expect("re-applied");
    eventually(Duration::from_secs(60), "risky runs the fix", || async {
        let steps = pipeline(&api, "watched").await;
        let risky = steps.get("risky")?;
        let st = risky.status.as_ref()?;
        (risky
            .component
            .contains(&digest_of(&api, "passthrough@1.0.0").await)
            && st.phase == "running"
            && st.generation == risky.generation)
            .then_some(())
    })
    .await;
    let letters = api
        .dead_letters()
        .list(proto::DeadLettersRequest {
            name: "watched".into(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner()
        .letters;
    let event = letters.first().expect("a dead letter").event_id.clone();
    let replayed = tokio::task::spawn_blocking({
        let event = event.clone();
        move || browse("replay", &[("EVENT", event)])
    })
    .await
    .expect("joined");
    assert!(replayed.contains("ok replay replay"), "{replayed}");
    eventually(
        Duration::from_secs(30),
        "the replayed event's output",
        || async {
            read_all(&agent, "watched-out")
                .await
                .iter()
                .any(|e| e.id() == event)
                .then_some(())
        },
    )
    .await;
}

/// The digest a component reference names.
async fn digest_of(api: &ApiClient, reference: &str) -> String {
    api.registry()
        .describe(proto::ComponentRef {
            reference: reference.into(),
        })
        .await
        .expect("component")
        .into_inner()
        .digest
}

/// One HTTP/1.1 exchange with the console: (status, headers and body).
fn http(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("console connects");
    stream.write_all(request.as_bytes()).expect("sent");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// The console from an attacker's side: nothing without a session, no
/// session from a wrong token or a forged cookie, and no change (not even a
/// log-in) without the header a cross-site form cannot send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_strangers_forged_sessions_and_cross_site_changes() {
    let nats = Nats::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _host = support::Flowd::start_with_console(&nats.url(), state.path());
    let console = eventually(Duration::from_secs(20), "the console's address", || async {
        HostFile::read(state.path()).and_then(|h| h.console)
    })
    .await;
    let token = std::fs::read_to_string(flowd::user_agent::local_token_path(state.path()))
        .expect("token")
        .trim()
        .to_owned();
    let post = |path: &str, body: &str, extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
    };
    // A private flow the host subscribes to itself, for the account below.
    let agent = Agent::connect(&[nats.url()]).await.expect("agent");
    let host = flowd::agent::Principal::Host;
    agent
        .create_namespace_as(&host, &"pipe.example.com".parse().expect("ns"), None, false)
        .await
        .expect("namespace");
    let private = flow("private-one").to_string();
    create_flows(&agent, &["private-one", "private-copy"]).await;
    agent
        .subscribe_as(
            &host,
            None,
            &flow("private-one"),
            Some(&flow("private-copy")),
            false,
        )
        .await
        .expect("subscribed");
    let state_dir = state.path().to_owned();
    tokio::task::spawn_blocking(move || {
        assert_eq!(http(console, &get("/api/overview", "")).0, 401);
        // No flow's events and no subscriptions without a session either.
        let tail = "/api/tail?name=watched-out.pipe.example.com";
        assert_eq!(http(console, &get(tail, "")).0, 401);
        assert_eq!(http(console, &get("/api/subscriptions", "")).0, 401);
        assert_eq!(
            http(
                console,
                &get("/api/overview", "Cookie: flowd_console=forged\r\n")
            )
            .0,
            401
        );
        let login = format!("{{\"token\":\"{token}\"}}");
        let (status, _) = http(console, &post("/login", &login, ""));
        assert_eq!(status, 403, "a log-in without the change header");
        let wrong = http(
            console,
            &post("/login", "{\"token\":\"guess\"}", "x-flowd-console: 1\r\n"),
        );
        assert_eq!(wrong.0, 401, "{}", wrong.1);
        let (status, answer) = http(console, &post("/login", &login, "x-flowd-console: 1\r\n"));
        assert_eq!(status, 200, "{answer}");
        let cookie = answer
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        assert!(answer.to_lowercase().contains("httponly") && answer.contains("SameSite=Strict"));
        let with = format!("Cookie: {cookie}\r\n");
        assert_eq!(http(console, &get("/api/overview", &with)).0, 200);
        let (status, theirs) = http(console, &get("/api/subscriptions", &with));
        assert_eq!(status, 200, "{theirs}");
        assert!(
            theirs.contains("\"local\":\"private-copy.pipe.example.com\"")
                && theirs.contains("\"source\":\"private-one.pipe.example.com\""),
            "the administrator sees the subscription both ways: {theirs}"
        );
        let cross_site = http(console, &post("/api/processors/any/pause", "", &with));
        assert_eq!(cross_site.0, 403, "{}", cross_site.1);
        let letters = http(
            console,
            &post(
                "/api/deadletters/replay",
                "{\"name\":\"x\",\"all\":true}",
                &with,
            ),
        );
        assert_eq!(letters.0, 403, "{}", letters.1);

        // An account without a right on a flow: its tail is refused (as a
        // flow that does not exist is), and it sees none of the host's
        // subscriptions.
        let mut add = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
            .args(["account", "add", "guest", "--state-dir"])
            .arg(&state_dir)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("flowd account");
        if let Some(mut stdin) = add.stdin.take() {
            use std::io::Write;
            stdin.write_all(b"not-a-reader\n").expect("password");
        }
        assert!(add.wait().expect("exits").success(), "account added");
        let guest_login = "{\"user\":\"guest\",\"password\":\"not-a-reader\"}";
        let (status, answer) = http(
            console,
            &post("/login", guest_login, "x-flowd-console: 1\r\n"),
        );
        assert_eq!(status, 200, "{answer}");
        let guest = answer
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let guest = format!("Cookie: {guest}\r\n");
        for name in [private.as_str(), "nowhere.pipe.example.com"] {
            let refused = http(console, &get(&format!("/api/tail?name={name}"), &guest));
            assert_eq!(refused.0, 403, "{name}: {}", refused.1);
        }
        let (status, subscriptions) = http(console, &get("/api/subscriptions", &guest));
        assert_eq!(status, 200, "{subscriptions}");
        assert!(
            subscriptions.contains("\"in\":[]") && subscriptions.contains("\"out\":[]"),
            "{subscriptions}"
        );
    })
    .await
    .expect("joined");
}
