//! Processors written in Python (componentize-py), JavaScript
//! (componentize-js), Go (go:wasmexport) and C (wit-bindgen's C bindings),
//! run for real in the flowd host: `processors/enrich-py`,
//! `processors/filter-js`, `processors/dedupe-go` and `processors/sample-c`,
//! built by `scripts/build-processors`. They run under the default limits
//! (64 MiB, 100 ms); see docs/python.md, docs/javascript.md, docs/go.md,
//! docs/c.md.

use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use flowd_tests::{call1, component, config_error, data, event, host, ids, processor};
use flowd_wasm::{CreateError, Limits};
use serde_json::json;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const PY: &str = "flow_enrich_py";
const JS: &str = "flow_filter_js";
const GO: &str = "flow_dedupe_go";
const C: &str = "flow_sample_c";

fn bridge(name: &str, config: &[(&str, &str)]) -> Result<flowd_wasm::Processor, CreateError> {
    processor(name, config, &["in"], &["out"], Limits::default())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

#[test]
fn python_enrich_adds_fields_and_extensions() {
    let mut p = bridge(
        PY,
        &[
            ("set", "region=eu"),
            ("set", "meta.checked=true"),
            ("set", "meta.n=42"),
            ("extension", "team=blue"),
            ("extension", "prio=3"),
            ("extension", "vip=true"),
            ("stamp", "enriched_at"),
        ],
    )
    .expect("creates");
    let tagged = EventBuilderV10::new()
        .id("2")
        .source("urn:billing")
        .ty("paid.invoice")
        .subject("inv-7")
        .extension("tenant", "acme")
        .extension("prio", 1i64)
        .build()
        .expect("valid");
    let events = vec![
        event(
            "1",
            "created.invoice",
            json!({"amount": 5, "meta": {"a": 1}}),
        ),
        tagged,
    ];
    let before = now_ms();
    let out = call1(&mut p, &events).expect("processes");
    let after = now_ms();
    assert_eq!(ids(&out), ["1", "2"]);

    let first = data(&out[0]);
    assert_eq!(first["amount"], 5);
    assert_eq!(first["region"], "eu");
    assert_eq!(first["meta"], json!({"a": 1, "checked": true, "n": 42}));
    let at = first["enriched_at"].as_u64().expect("a clock stamp");
    assert!(
        (before..=after).contains(&at),
        "{at} not in {before}..={after}"
    );
    assert_eq!(out[0].ty(), "created.invoice");
    assert_eq!(out[0].source().as_str(), "urn:test:source");
    assert_eq!(out[0].time(), events[0].time());
    assert_eq!(out[0].datacontenttype(), Some("application/json"));

    // Without data: an object with just the new fields; attributes kept.
    let second = data(&out[1]);
    assert_eq!(second["region"], "eu");
    assert_eq!(second["meta"], json!({"checked": true, "n": 42}));
    assert_eq!(out[1].subject(), Some("inv-7"));
    assert_eq!(
        out[1].extension("tenant"),
        Some(&ExtensionValue::String("acme".into()))
    );
    for e in &out {
        assert_eq!(
            e.extension("team"),
            Some(&ExtensionValue::String("blue".into()))
        );
        assert_eq!(e.extension("prio"), Some(&ExtensionValue::Integer(3)));
        assert_eq!(e.extension("vip"), Some(&ExtensionValue::Boolean(true)));
    }
    assert!(call1(&mut p, &[]).expect("empty batch").is_empty());
}

#[test]
fn python_enrich_fails_one_event_and_refuses_bad_configuration() {
    let mut p = bridge(PY, &[("set", "region=eu")]).expect("creates");
    let list = event("b", "t", json!([1, 2]));
    let err = call1(&mut p, &[event("a", "t", json!({})), list]).expect_err("event 1 fails");
    assert_eq!(err.event_index(), Some(1), "{err}");
    assert!(err.to_string().contains("not a JSON object"), "{err}");
    assert!(!err.poisoned(), "an error value keeps the instance");
    // The instance is still good.
    let out = call1(&mut p, &[event("c", "t", json!({}))]).expect("processes");
    assert_eq!(data(&out[0])["region"], "eu");

    let err = config_error(bridge(PY, &[("set", "region=eu"), ("colour", "red")]));
    assert!(err.contains("unknown key `colour`"), "{err}");
    let err = config_error(bridge(PY, &[]));
    assert!(err.contains("no rules"), "{err}");
    let err = config_error(bridge(PY, &[("extension", "Bad=1")]));
    assert!(err.contains("`Bad`"), "{err}");

    // update: a bad configuration is refused and the old one stays.
    let err = p
        .update(vec![("sett".into(), "x=1".into())])
        .expect_err("refused");
    assert!(err.to_string().contains("unknown key `sett`"), "{err}");
    let out = call1(&mut p, &[event("d", "t", json!({}))]).expect("processes");
    assert_eq!(data(&out[0]), json!({"region": "eu"}));
    p.update(vec![("set".into(), "region=us".into())])
        .expect("updated");
    let out = call1(&mut p, &[event("e", "t", json!({}))]).expect("processes");
    assert_eq!(data(&out[0]), json!({"region": "us"}));
}

fn filter_events() -> Vec<Event> {
    let text = EventBuilderV10::new()
        .id("4")
        .source("urn:s")
        .ty("created.invoice")
        .data("text/plain", "not json".to_string())
        .build()
        .expect("valid");
    let bare = EventBuilderV10::new()
        .id("5")
        .source("urn:s")
        .ty("created.invoice")
        .build()
        .expect("valid");
    vec![
        event(
            "1",
            "created.invoice",
            json!({"amount": 5, "status": "paid"}),
        ),
        event("2", "created.order", json!({"amount": 7, "status": "paid"})),
        event("3", "deleted.invoice", json!({"amount": 5})),
        text,
        bare,
        event(
            "6",
            "created.invoice",
            json!({"amount": "5", "status": "open"}),
        ),
    ]
}

#[test]
fn javascript_filter_keeps_exactly_the_matching_events() {
    let events = filter_events();
    let kept = |config: &[(&str, &str)]| -> Vec<String> {
        let mut p = bridge(JS, config).expect("creates");
        let out = call1(&mut p, &events).expect("processes");
        // Kept events are forwarded unchanged.
        for e in &out {
            let original = events.iter().find(|o| o.id() == e.id()).expect("input");
            assert_eq!(e, original);
        }
        out.iter().map(|e| e.id().to_string()).collect()
    };
    assert_eq!(kept(&[("type", "created.invoice")]), ["1", "4", "5", "6"]);
    assert_eq!(
        kept(&[("type", "created.invoice"), ("type", "deleted.invoice")]),
        ["1", "3", "4", "5", "6"]
    );
    assert_eq!(kept(&[("type", "created.*")]), ["1", "2", "4", "5", "6"]);
    // `5` is the number 5, not the string "5"; events without JSON data
    // or without the field do not match.
    assert_eq!(kept(&[("where", "amount=5")]), ["1", "3"]);
    assert_eq!(kept(&[("where", "amount=\"5\"")]), ["6"]);
    assert_eq!(
        kept(&[("type", "created.*"), ("where", "status=paid")]),
        ["1", "2"]
    );
    assert_eq!(kept(&[("type", "nothing")]), Vec::<String>::new());
}

#[test]
fn javascript_filter_refuses_unknown_keys_and_updates_in_place() {
    let err = config_error(bridge(JS, &[("type", "a"), ("tpye", "b")]));
    assert!(err.contains("unknown key `tpye`"), "{err}");
    let err = config_error(bridge(JS, &[]));
    assert!(err.contains("no condition"), "{err}");
    let err = config_error(bridge(JS, &[("where", "amount")]));
    assert!(err.contains("`where=amount`"), "{err}");

    let events = filter_events();
    let mut p = bridge(JS, &[("type", "created.order")]).expect("creates");
    let err = p
        .update(vec![("color".into(), "red".into())])
        .expect_err("refused");
    assert!(err.to_string().contains("unknown key `color`"), "{err}");
    assert_eq!(ids(&call1(&mut p, &events).expect("processes")), ["2"]);
    p.update(vec![("type".into(), "deleted.invoice".into())])
        .expect("updated");
    assert_eq!(ids(&call1(&mut p, &events).expect("processes")), ["3"]);
}

#[test]
fn components_of_every_language_import_only_wasi_without_sockets_or_http() {
    // The Go and C processors link only the host imports they call.
    let wanted: [(&str, &[&str]); 4] = [
        (GO, &["eson:flow/state", "eson:flow/clock"]),
        (PY, &["eson:flow/log", "eson:flow/state", "eson:flow/clock"]),
        (JS, &["eson:flow/log", "eson:flow/state", "eson:flow/clock"]),
        (C, &["eson:flow/state"]),
    ];
    for (name, wanted) in wanted {
        let c = host().load_file(&component(name)).expect("loads");
        let imports = c.imports();
        for i in imports {
            assert!(
                i.starts_with("wasi:") || i.starts_with("eson:flow/"),
                "{name} imports {i}"
            );
            assert!(
                !i.starts_with("wasi:sockets/") && !i.starts_with("wasi:http/"),
                "{name} imports {i}: {imports:?}"
            );
        }
        for wanted in wanted {
            assert!(
                imports.iter().any(|i| i.starts_with(wanted)),
                "{name} lacks {wanted}: {imports:?}"
            );
        }
    }
}

/// Instantiation plus `init` and the first call, then 10 000 events in
/// batches of 100, with a quarter of the default memory: 16 MiB is enough
/// for all (Python needs 13 MiB, JavaScript 10 MiB to instantiate). Prints
/// the timings; run with `--nocapture` to see them next to the Rust
/// filter's and transform's.
#[test]
fn python_javascript_c_and_go_run_under_tight_limits() {
    let tight = Limits {
        memory: 16 << 20,
        ..Limits::default()
    };
    let events: Vec<Event> = (0..10_000)
        .map(|i| {
            let ty = if i % 2 == 0 {
                "created.invoice"
            } else {
                "created.order"
            };
            event(&i.to_string(), ty, json!({"amount": i, "status": "paid"}))
        })
        .collect();
    /// (component, configuration, events expected out).
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], usize);
    let cases: [Case; 6] = [
        (
            "flow_filter",
            &[("where", "type == created.invoice")],
            5_000,
        ),
        (JS, &[("type", "created.invoice")], 5_000),
        ("flow_transform", &[("set.data.region", "eu")], 10_000),
        (PY, &[("set", "region=eu")], 10_000),
        (
            C,
            &[("every", "2"), ("key", "type"), ("stamp", "nth")],
            5_000,
        ),
        // Every amount once, but the first call saw amount 0 already.
        (GO, &[("key", "data.amount")], 9_999),
    ];
    for (name, config, expected) in cases {
        host()
            .load_file(&component(name))
            .expect("loads (compiled once)");
        let start = Instant::now();
        let mut p = processor(name, config, &["in"], &["out"], tight.clone()).expect("creates");
        let created = start.elapsed();
        let start = Instant::now();
        let first = call1(&mut p, &events[..1]).expect("first call");
        let first_call = start.elapsed();
        assert!(first.len() <= 1);
        let start = Instant::now();
        let mut written = 0;
        for chunk in events.chunks(100) {
            written += call1(&mut p, chunk).expect("processes").len();
        }
        let elapsed = start.elapsed();
        assert_eq!(written, expected, "{name}");
        eprintln!(
            "{name}: instantiate+init {created:?}, first call {first_call:?}, \
             {:.1} µs/event at batch 100 (host packing and unpacking included)",
            elapsed.as_secs_f64() * 1e6 / events.len() as f64
        );
    }
}

fn order(id: &str, no: serde_json::Value) -> Event {
    event(id, "created.order", json!({ "order": { "no": no } }))
}

#[test]
fn go_dedupe_drops_repeats_across_calls_and_within_one() {
    let mut p = bridge(GO, &[("key", "data.order.no")]).expect("creates");
    let first = [
        order("1", json!(7)),
        order("2", json!(8)),
        order("3", json!(7)),
    ];
    assert_eq!(ids(&call1(&mut p, &first).expect("processes")), ["1", "2"]);
    // The state remembers across calls; the string "7" is another key.
    let second = [
        order("4", json!(8)),
        order("5", json!("7")),
        order("6", json!(9)),
    ];
    assert_eq!(ids(&call1(&mut p, &second).expect("processes")), ["5", "6"]);
    let mut keys = p.state().keys("seen/");
    keys.sort();
    assert_eq!(keys, ["seen/\"7\"", "seen/7", "seen/8", "seen/9"]);

    // A non-JSON event fails alone, by its index in the batch; the error
    // keeps the instance and rolls the call's state back.
    let text = EventBuilderV10::new()
        .id("t")
        .source("urn:s")
        .ty("created.order")
        .data("text/plain", "nope".to_string())
        .build()
        .expect("valid");
    let err = call1(
        &mut p,
        &[order("7", json!(10)), order("8", json!(11)), text],
    )
    .expect_err("event 2 fails");
    assert_eq!(err.event_index(), Some(2), "{err}");
    assert!(err.to_string().contains("not JSON"), "{err}");
    assert!(!err.poisoned(), "an error value keeps the instance");
    assert_eq!(
        ids(&call1(&mut p, &[order("9", json!(10))]).expect("processes")),
        ["9"],
        "the failed call's sighting of 10 was rolled back"
    );
}

/// Expired sightings leave the state: the state is bounded by the keys of
/// the last window and a quarter, not by every key ever seen.
#[test]
fn go_dedupe_sweeps_expired_sightings_from_its_state() {
    let mut p = bridge(GO, &[("key", "data.order.no"), ("window-ms", "1")]).expect("creates");
    let first: Vec<Event> = (0..50).map(|i| order(&format!("a{i}"), json!(i))).collect();
    assert_eq!(call1(&mut p, &first).expect("processes").len(), 50);
    assert_eq!(p.state().keys("seen/").len(), 50);
    std::thread::sleep(std::time::Duration::from_millis(5));
    // Number 7 again: its sighting expired, so it passes; the other 49 are swept.
    let second = [order("b1", json!(7)), order("b2", json!(1000))];
    assert_eq!(
        ids(&call1(&mut p, &second).expect("processes")),
        ["b1", "b2"]
    );
    let mut keys = p.state().keys("seen/");
    keys.sort();
    assert_eq!(keys, ["seen/1000", "seen/7"]);
    // Integers beyond 2^53 are distinct keys (no float rounding).
    let big = [
        order(
            "c1",
            serde_json::from_str("9007199254740993").expect("json"),
        ),
        order(
            "c2",
            serde_json::from_str("9007199254740992").expect("json"),
        ),
    ];
    assert_eq!(ids(&call1(&mut p, &big).expect("processes")), ["c1", "c2"]);
}

/// A first call far larger than the allocator's reserve (4 MiB of
/// arguments against 256 KiB): the host's lowering takes Go heap memory
/// while the collector is held off, then the reserve grows. (The deadline
/// is raised: the batch takes about 60 ms, more on a loaded machine.)
#[test]
fn go_dedupe_takes_a_first_batch_larger_than_its_reserve() {
    let limits = Limits {
        deadline: std::time::Duration::from_secs(5),
        ..Limits::default()
    };
    let mut p = processor(GO, &[("key", "data.k")], &["in"], &["out"], limits).expect("creates");
    let pad = "y".repeat(2000);
    let batch: Vec<Event> = (0..2000)
        .map(|i| event(&format!("e{i}"), "t", json!({ "k": i % 1500, "pad": pad })))
        .collect();
    assert_eq!(call1(&mut p, &batch).expect("processes").len(), 1500);
    assert_eq!(call1(&mut p, &batch[..100]).expect("processes").len(), 0);
}

/// 40 000 events of 300 bytes in batches of 100, 20 000 keys in the state,
/// under the default limits: Go's runtime grows its heap and collects many
/// times, while the host lowers batches into memory reserved beforehand
/// and the WASI adapter keeps its own (docs/go.md).
#[test]
fn go_dedupe_runs_long_under_the_default_limits() {
    let mut p = bridge(GO, &[("key", "data.k")]).expect("creates");
    let pad = "x".repeat(300);
    let events: Vec<Event> = (0..40_000)
        .map(|i| {
            event(
                &format!("e{i}"),
                "t",
                json!({ "k": i % 20_000, "pad": pad }),
            )
        })
        .collect();
    let kept: Vec<String> = events
        .chunks(100)
        .flat_map(|c| {
            let out = call1(&mut p, c).expect("processes");
            ids(&out).into_iter().map(String::from).collect::<Vec<_>>()
        })
        .collect();
    let state_keys = p.state().keys("seen/").len();
    assert_eq!((kept.len(), state_keys), (20_000, 20_000));
    assert_eq!(kept.first().map(String::as_str), Some("e0"));
    assert_eq!(kept.last().map(String::as_str), Some("e19999"));
}

#[test]
fn go_dedupe_refuses_bad_configuration_and_updates_in_place() {
    let err = config_error(bridge(GO, &[("kee", "id")]));
    assert!(err.contains("unknown key `kee`"), "{err}");
    let err = config_error(bridge(GO, &[("window-ms", "0")]));
    assert!(err.contains("`window-ms=0`"), "{err}");
    let err = config_error(bridge(GO, &[("key", "data..x")]));
    assert!(err.contains("empty segment"), "{err}");

    let mut p = bridge(GO, &[("key", "subject")]).expect("creates");
    let err = p
        .update(vec![("window-ms".into(), "soon".into())])
        .expect_err("refused");
    assert!(err.to_string().contains("`window-ms=soon`"), "{err}");
    // Still keyed by subject: no subject, no key, so both pass.
    let two = [event("a", "t", json!({})), event("a2", "t", json!({}))];
    assert_eq!(ids(&call1(&mut p, &two).expect("processes")), ["a", "a2"]);
    p.update(vec![("key".into(), "type".into())])
        .expect("updated");
    let more = [event("b", "t", json!({})), event("c", "t", json!({}))];
    assert_eq!(ids(&call1(&mut p, &more).expect("processes")), ["b"]);
}

fn typed(id: &str, ty: &str) -> Event {
    event(id, ty, json!({ "id": id }))
}

/// A log line longer than the SDK's 1 KiB buffer is cut without splitting
/// a UTF-8 sequence (the host takes UTF-8 only: a split one trapped).
#[test]
fn c_sample_logs_long_keys_cut_at_a_character() {
    let mut p = bridge(C, &[("every", "1"), ("key", "type")]).expect("creates");
    let long: String = "é".repeat(700);
    for ty in [long.clone(), format!("x{long}")] {
        let out = call1(&mut p, &[typed("1", &ty)]).expect("no trap");
        assert_eq!(ids(&out), ["1"]);
    }
}

#[test]
fn c_sample_keeps_one_in_n_per_key_and_stamps_them() {
    let mut p = bridge(C, &[("every", "2"), ("key", "type")]).expect("creates");
    let first = [typed("1", "a"), typed("2", "a"), typed("3", "b")];
    assert_eq!(ids(&call1(&mut p, &first).expect("processes")), ["1", "3"]);
    let second = [typed("4", "a"), typed("5", "b"), typed("6", "b")];
    assert_eq!(ids(&call1(&mut p, &second).expect("processes")), ["4", "6"]);
    let state = p.state();
    assert_eq!(
        state.get("count/a").map(|v| v.to_vec()),
        Some(b"3".to_vec())
    );
    assert_eq!(
        state.get("count/b").map(|v| v.to_vec()),
        Some(b"3".to_vec())
    );

    let mut p = bridge(C, &[("every", "3"), ("stamp", "nth")]).expect("creates");
    let tagged = EventBuilderV10::new()
        .id("x")
        .source("urn:s")
        .ty("t")
        .subject("s")
        .extension("nth", "old")
        .extension("tenant", "acme")
        .data("application/json", json!({"k": 1}))
        .build()
        .expect("valid");
    let events = [
        tagged.clone(),
        typed("y", "t"),
        typed("z", "t"),
        typed("w", "t"),
    ];
    let out = call1(&mut p, &events).expect("processes");
    assert_eq!(ids(&out), ["x", "w"]);
    assert_eq!(out[0].extension("nth"), Some(&ExtensionValue::Integer(1)));
    assert_eq!(
        out[0].extension("tenant"),
        Some(&ExtensionValue::String("acme".into()))
    );
    assert_eq!(out[0].subject(), Some("s"));
    assert_eq!(data(&out[0]), json!({"k": 1}));
    assert_eq!(out[1].extension("nth"), Some(&ExtensionValue::Integer(4)));
}

#[test]
fn c_sample_refuses_bad_configuration_and_reports_bad_state() {
    let err = config_error(bridge(C, &[]));
    assert!(err.contains("`every` is required"), "{err}");
    let err = config_error(bridge(C, &[("every", "0")]));
    assert!(err.contains("`every=0`"), "{err}");
    let err = config_error(bridge(C, &[("every", "2"), ("evry", "3")]));
    assert!(err.contains("unknown key `evry`"), "{err}");
    let err = config_error(bridge(C, &[("every", "2"), ("stamp", "No")]));
    assert!(err.contains("`stamp=No`"), "{err}");

    let mut p = bridge(C, &[("every", "1")]).expect("creates");
    let err = p
        .update(vec![("every".into(), "x".into())])
        .expect_err("refused");
    assert!(err.to_string().contains("`every=x`"), "{err}");
    let all = [typed("1", "t"), typed("2", "t")];
    assert_eq!(
        ids(&call1(&mut p, &all).expect("the old one stays")),
        ["1", "2"]
    );
    p.update(vec![("every".into(), "2".into())])
        .expect("updated");
    // The count goes on from the state: 3 is the third event, kept.
    let next = [typed("3", "t"), typed("4", "t")];
    assert_eq!(ids(&call1(&mut p, &next).expect("processes")), ["3"]);

    // A count the state cannot hold fails the call as a whole.
    let setup = flowd_tests::setup(C, &[("every", "2")], &["in"], &["out"]);
    let state = flowd_wasm::state::KeyedState::restore(
        [("count/".to_string(), b"many".to_vec())],
        Limits::default().state,
    );
    let component = host().load_file(&component(C)).expect("loads");
    let mut p = host()
        .create_with_state(component, setup, Limits::default(), state)
        .expect("creates");
    let err = call1(&mut p, &[typed("5", "t")]).expect_err("fails");
    assert!(err.to_string().contains("not a count"), "{err}");
    assert_eq!(err.event_index(), None, "{err}");
}
