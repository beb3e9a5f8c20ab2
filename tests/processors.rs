//! The standard processors, run for real: components built from
//! `processors/` for wasm32-wasip2, on real CloudEvents, in the flowd host.

use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use flowd_tests::{call, call1, config_error, data, event, ids, processor};
use flowd_wasm::{CallError, CreateError, GuestError, Limits};
use serde_json::json;

#[test]
fn passthrough_forwards_every_event_unchanged() {
    let mut p = processor(
        "flow_passthrough",
        &[],
        &["in"],
        &["out"],
        Limits::default(),
    )
    .expect("creates");
    let binary = EventBuilderV10::new()
        .id("bin")
        .source("urn:sensor")
        .ty("reading")
        .subject("s-1")
        .extension("priority", 7i64)
        .extension("urgent", true)
        .data("application/octet-stream", vec![0u8, 255, 10, 13])
        .build()
        .expect("valid");
    let events = vec![
        event("a", "created.invoice", json!({"amount": 10})),
        binary,
        event("c", "created.invoice", json!([1, 2, 3])),
    ];
    let out = call1(&mut p, &events).expect("processes");
    assert_eq!(out, events);
    assert!(call1(&mut p, &[]).expect("empty batch").is_empty());
}

#[test]
fn filter_keeps_events_matching_attributes_and_fields() {
    let events = vec![
        event(
            "1",
            "created.invoice",
            json!({"amount": 50, "region": "eu"}),
        ),
        event(
            "2",
            "created.invoice",
            json!({"amount": 150, "region": "us"}),
        ),
        event("3", "paid.invoice", json!({"amount": 500, "region": "eu"})),
        event(
            "4",
            "created.invoice",
            json!({"amount": "250", "region": "eu"}),
        ),
        event("5", "created.invoice", json!({"region": "eu"})),
    ];
    let mut all = processor(
        "flow_filter",
        &[
            ("where", "type == created.invoice"),
            ("where", "data.amount > 100"),
        ],
        &["in"],
        &["out"],
        Limits::default(),
    )
    .expect("creates");
    assert_eq!(ids(&call1(&mut all, &events).expect("runs")), ["2", "4"]);

    let mut any = processor(
        "flow_filter",
        &[
            ("where", "type == paid.invoice"),
            ("where", "data.region == us"),
            ("match", "any"),
        ],
        &["in"],
        &["out"],
        Limits::default(),
    )
    .expect("creates");
    assert_eq!(ids(&call1(&mut any, &events).expect("runs")), ["2", "3"]);

    let mut missing = processor(
        "flow_filter",
        &[("where", "data.amount missing")],
        &["in"],
        &["out"],
        Limits::default(),
    )
    .expect("creates");
    assert_eq!(ids(&call1(&mut missing, &events).expect("runs")), ["5"]);

    let tagged = EventBuilderV10::new()
        .id("x")
        .source("urn:s")
        .ty("t")
        .extension("tenant", "acme-eu")
        .build()
        .expect("valid");
    let mut ext = processor(
        "flow_filter",
        &[("where", "tenant prefix acme")],
        &["in"],
        &["out"],
        Limits::default(),
    )
    .expect("creates");
    let out = call1(&mut ext, &[tagged.clone(), events[0].clone()]).expect("runs");
    assert_eq!(out, vec![tagged]);
}

#[test]
fn filter_reports_configuration_errors_by_key() {
    let err = config_error(processor(
        "flow_filter",
        &[],
        &["in"],
        &["out"],
        Limits::default(),
    ));
    assert!(err.contains("`where`"), "{err}");
    let err = config_error(processor(
        "flow_filter",
        &[("where", "data.amount ~~ 3")],
        &["in"],
        &["out"],
        Limits::default(),
    ));
    assert!(err.contains("unknown operator `~~`"), "{err}");
    let err = config_error(processor(
        "flow_filter",
        &[("where", "type exists"), ("wehre", "x")],
        &["in"],
        &["out"],
        Limits::default(),
    ));
    assert!(err.contains("unknown key `wehre`"), "{err}");
}

#[test]
fn filter_configuration_is_updated_in_place() {
    let events = vec![
        event("1", "a", json!({"n": 1})),
        event("2", "b", json!({"n": 2})),
    ];
    let mut p = processor(
        "flow_filter",
        &[("where", "type == a")],
        &["in"],
        &["out"],
        Limits::default(),
    )
    .expect("creates");
    assert_eq!(ids(&call1(&mut p, &events).expect("runs")), ["1"]);
    p.update(vec![("where".into(), "type == b".into())])
        .expect("updates");
    assert_eq!(ids(&call1(&mut p, &events).expect("runs")), ["2"]);
    let err = p
        .update(vec![("where".into(), "nonsense".into())])
        .expect_err("bad config refused");
    assert!(
        matches!(err, CallError::Guest(GuestError::Config(_))),
        "{err}"
    );
    assert_eq!(
        ids(&call1(&mut p, &events).expect("runs")),
        ["2"],
        "a refused update keeps the previous configuration"
    );
    assert_eq!(
        p.config(),
        &[("where".to_string(), "type == b".to_string())]
    );
}

#[test]
fn transform_sets_renames_and_removes_fields_and_attributes() {
    let mut p = processor(
        "flow_transform",
        &[
            ("set.data.status", "\"paid\""),
            ("set.data.meta.version", "2"),
            ("rename.data.amt", "data.amount"),
            ("remove", "data.secret,subject"),
            ("set.type", "paid.invoice"),
            ("set.region", "eu"),
            ("rename.legacy", "origin"),
        ],
        &["in"],
        &["out"],
        Limits::default(),
    )
    .expect("creates");
    let mut input = event(
        "inv-1",
        "created.invoice",
        json!({"amt": 12.5, "secret": "s3", "lines": [1]}),
    );
    cloudevents::event::AttributesWriter::set_subject(&mut input, Some("INV-1"));
    input.set_extension("legacy", "erp");
    let out = call1(&mut p, &[input.clone()]).expect("runs");
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!(e.id(), "inv-1");
    assert_eq!(e.ty(), "paid.invoice");
    assert_eq!(e.subject(), None);
    assert_eq!(e.time(), input.time(), "untouched attributes are kept");
    assert_eq!(
        e.extension("region"),
        Some(&ExtensionValue::String("eu".into()))
    );
    assert_eq!(
        e.extension("origin"),
        Some(&ExtensionValue::String("erp".into()))
    );
    assert_eq!(e.extension("legacy"), None);
    assert_eq!(
        data(e),
        json!({"amount": 12.5, "lines": [1], "status": "paid", "meta": {"version": 2}})
    );
}

#[test]
fn transform_rejects_non_json_data_per_event_and_bad_rules_at_init() {
    let mut p = processor(
        "flow_transform",
        &[("set.data.x", "1")],
        &["in"],
        &["out"],
        Limits::default(),
    )
    .expect("creates");
    let text = EventBuilderV10::new()
        .id("t")
        .source("urn:s")
        .ty("note")
        .data("text/plain", "not json".to_string())
        .build()
        .expect("valid");
    let err = call1(&mut p, &[event("ok", "t", json!({})), text]).expect_err("event 1 fails");
    assert_eq!(err.event_index(), Some(1), "{err}");
    assert!(err.to_string().contains("data is not JSON"), "{err}");
    assert!(
        !err.poisoned(),
        "an error value does not discard the instance"
    );

    let err = config_error(processor(
        "flow_transform",
        &[("remove", "id")],
        &["in"],
        &["out"],
        Limits::default(),
    ));
    assert!(err.contains("required CloudEvents attribute"), "{err}");
    let err = config_error(processor(
        "flow_transform",
        &[("set.Bad Name", "1")],
        &["in"],
        &["out"],
        Limits::default(),
    ));
    assert!(err.contains("`set.Bad Name`"), "{err}");
}

#[test]
fn router_routes_by_field_value_to_named_outputs() {
    let mut p = processor(
        "flow_router",
        &[
            ("by", "data.region"),
            ("route.eu-west", "europe"),
            ("default", "other"),
        ],
        &["in"],
        &["europe", "us", "other"],
        Limits::default(),
    )
    .expect("creates");
    let events = vec![
        event("1", "t", json!({"region": "eu-west"})),
        event("2", "t", json!({"region": "us"})),
        event("3", "t", json!({"region": "apac"})),
        event("4", "t", json!({})),
    ];
    let routed: Vec<(u32, String)> = call(&mut p, 0, &events)
        .expect("runs")
        .into_iter()
        .map(|(port, e)| (port, e.id().to_owned()))
        .collect();
    assert_eq!(
        routed,
        vec![
            (0, "1".into()),
            (1, "2".into()),
            (2, "3".into()),
            (2, "4".into())
        ]
    );
}

#[test]
fn router_unmatched_events_drop_or_fail_and_unknown_outputs_are_refused() {
    let events = vec![event("1", "a", json!({})), event("2", "zzz", json!({}))];
    let mut drop = processor(
        "flow_router",
        &[("by", "type")],
        &["in"],
        &["a", "b"],
        Limits::default(),
    )
    .expect("creates");
    let routed = call(&mut drop, 0, &events).expect("runs");
    assert_eq!(routed.len(), 1);
    assert_eq!((routed[0].0, routed[0].1.id()), (0, "1"));

    let mut strict = processor(
        "flow_router",
        &[("by", "type"), ("unmatched", "error")],
        &["in"],
        &["a", "b"],
        Limits::default(),
    )
    .expect("creates");
    let err = call(&mut strict, 0, &events).expect_err("event 2 has no route");
    assert_eq!(err.event_index(), Some(1));

    let err = config_error(processor(
        "flow_router",
        &[("by", "type"), ("route.x", "nowhere")],
        &["in"],
        &["a", "b"],
        Limits::default(),
    ));
    assert!(err.contains("nowhere") && err.contains("a, b"), "{err}");
}

#[test]
fn merge_collects_inputs_and_tags_each_event_with_its_input() {
    let mut p = processor(
        "flow_merge",
        &[],
        &["orders", "refunds"],
        &["all"],
        Limits::default(),
    )
    .expect("creates");
    let from_orders = call(&mut p, 0, &[event("o1", "order", json!({"n": 1}))]).expect("runs");
    let from_refunds = call(&mut p, 1, &[event("r1", "refund", json!({"n": 2}))]).expect("runs");
    let tag = |out: &[(u32, Event)]| out[0].1.extension("input").cloned();
    assert_eq!(
        tag(&from_orders),
        Some(ExtensionValue::String("orders".into()))
    );
    assert_eq!(
        tag(&from_refunds),
        Some(ExtensionValue::String("refunds".into()))
    );
    assert_eq!(data(&from_refunds[0].1), json!({"n": 2}));
    assert_eq!(from_refunds[0].0, 0, "a collector has one output");

    let mut named = processor(
        "flow_merge",
        &[("tag", "origin")],
        &["a", "b"],
        &["all"],
        Limits::default(),
    )
    .expect("creates");
    let out = call(&mut named, 1, &[event("x", "t", json!(1))]).expect("runs");
    assert_eq!(
        out[0].1.extension("origin"),
        Some(&ExtensionValue::String("b".into()))
    );
}

#[test]
fn threshold_alerts_on_crossings_and_emits_windows_on_tick() {
    let mut p = processor(
        "flow_threshold",
        &[
            ("field", "data.temperature"),
            ("above", "30"),
            ("key", "data.room"),
        ],
        &["sensors"],
        &["alerts", "stats"],
        Limits::default(),
    )
    .expect("creates");
    let reading = |id: &str, room: &str, t: f64| {
        event(id, "reading", json!({"room": room, "temperature": t}))
    };
    let first = call(
        &mut p,
        0,
        &[
            reading("1", "lab", 10.0),
            reading("2", "lab", 35.0),
            reading("3", "lab", 40.0),
        ],
    )
    .expect("runs");
    let second = call(
        &mut p,
        0,
        &[
            reading("4", "lab", 20.0),
            reading("5", "lab", 50.0),
            reading("6", "hall", 31.0),
        ],
    )
    .expect("runs");
    let alerts: Vec<(u32, serde_json::Value)> = first
        .iter()
        .chain(&second)
        .map(|(port, e)| (*port, data(e)))
        .collect();
    assert_eq!(
        alerts.len(),
        3,
        "crossing into the zone alerts once: {alerts:?}"
    );
    assert!(alerts.iter().all(|(port, _)| *port == 0));
    assert_eq!(alerts[0].1["event"], "2");
    assert_eq!(alerts[1].1["event"], "5");
    assert_eq!(alerts[2].1["key"], "hall");
    assert_eq!(alerts[0].1["direction"], "above");

    let outcome = p.tick(1_000).expect("ticks");
    let windows = outcome.resolve(&[], 2).expect("valid");
    assert_eq!(windows.len(), 2);
    assert!(windows.iter().all(|(port, _)| *port == 1));
    let hall = windows
        .iter()
        .map(|(_, e)| data(e))
        .find(|d| d["key"] == "hall")
        .expect("hall");
    let lab = windows
        .iter()
        .map(|(_, e)| data(e))
        .find(|d| d["key"] == "lab")
        .expect("lab");
    assert_eq!(hall["count"], 1);
    assert_eq!(lab["count"], 5);
    assert_eq!(lab["average"], 31.0);
    assert_eq!(lab["max"], 50.0);
    let again = p
        .tick(2_000)
        .expect("ticks")
        .resolve(&[], 2)
        .expect("valid");
    assert!(again.is_empty(), "a tick starts new windows");
}

#[test]
fn kinds_are_wired_by_their_arity() {
    let err = processor(
        "flow_passthrough",
        &[],
        &["a", "b"],
        &["out"],
        Limits::default(),
    )
    .err()
    .expect("a bridge has one input");
    assert!(matches!(err, CreateError::Ports(_)), "{err}");
    let err = processor(
        "flow_merge",
        &[],
        &["a", "b"],
        &["x", "y"],
        Limits::default(),
    )
    .err()
    .expect("a collector has one output");
    assert!(err.to_string().contains("exactly one output"), "{err}");
    assert!(
        processor(
            "flow_router",
            &[("by", "type")],
            &["in"],
            &["a", "b", "c"],
            Limits::default()
        )
        .is_ok()
    );
    let mut bridge = processor(
        "flow_passthrough",
        &[],
        &["in"],
        &["out"],
        Limits::default(),
    )
    .expect("creates");
    assert!(
        call(&mut bridge, 1, &[event("1", "t", json!(1))]).is_err(),
        "no input port 1"
    );
}
