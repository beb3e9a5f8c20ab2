//! The sandbox holds: a processor that loops, eats memory, traps, overruns its
//! state quota or is not a processor at all gets a clear error, and the host
//! (and the processor, with a fresh instance) keeps serving.

use cloudevents::{AttributesReader, Event};
use flowd_tests::{call1, component, event, host, processor, setup};
use flowd_wasm::{CallError, CreateError, GuestError, Host, HostConfig, Limits, LoadError};
use serde_json::json;
use std::time::{Duration, Instant};

fn hostile(limits: Limits) -> flowd_wasm::Processor {
    processor("guest_hostile", &[], &["in"], &["out"], limits).expect("creates")
}

fn ok(id: &str) -> Event {
    event(id, "test.ok", json!({"n": id}))
}

fn count_of(e: &Event) -> Option<i64> {
    match e.extension("count") {
        Some(cloudevents::event::ExtensionValue::Integer(n)) => Some(*n),
        _ => None,
    }
}

#[test]
fn a_guest_looping_forever_is_stopped_at_its_deadline_and_the_next_batch_runs() {
    let mut p = hostile(Limits {
        deadline: Duration::from_millis(100),
        ..Limits::default()
    });
    let started = Instant::now();
    let err = call1(&mut p, &[ok("1"), event("2", "test.spin", json!({}))])
        .expect_err("the loop is interrupted");
    let stopped_after = started.elapsed();
    assert!(
        matches!(err, CallError::Deadline { limit } if limit == Duration::from_millis(100)),
        "{err}"
    );
    assert!(err.poisoned());
    // Not a performance bound: only that the loop was cut rather than left running.
    assert!(
        stopped_after < Duration::from_secs(10),
        "stopped after {stopped_after:?}"
    );
    assert_eq!(p.recycled(), 1);

    let out = call1(&mut p, &[ok("3"), ok("4")]).expect("a fresh instance serves");
    assert_eq!(out.iter().map(|e| e.id()).collect::<Vec<_>>(), ["3", "4"]);
}

#[test]
fn a_guest_allocating_without_bound_is_stopped_at_its_memory_cap() {
    let cap = 16 << 20;
    let mut p = hostile(Limits {
        memory: cap,
        ..Limits::default()
    });
    let err = call1(&mut p, &[event("h", "test.hog", json!({}))]).expect_err("capped");
    assert!(
        matches!(err, CallError::MemoryCap { limit } if limit == cap),
        "{err}"
    );
    assert_eq!(call1(&mut p, &[ok("after")]).expect("serves").len(), 1);
}

#[test]
fn a_trap_is_reported_with_the_guest_message_and_rolls_back_state() {
    let mut p = hostile(Limits::default());
    let count = |id: &str| event(id, "test.count", json!({}));
    let first = call1(&mut p, &[count("c1"), count("c2")]).expect("counts");
    assert_eq!(
        first.iter().map(count_of).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );

    let err = call1(
        &mut p,
        &[count("c3"), event("boom", "test.trap", json!({}))],
    )
    .expect_err("traps");
    match &err {
        CallError::Trap { message } => {
            assert!(
                message.contains("hostile guest traps on event boom"),
                "{message}"
            )
        }
        other => panic!("expected a trap, got {other}"),
    }
    let after = call1(&mut p, &[count("c3")]).expect("fresh instance");
    assert_eq!(
        count_of(&after[0]),
        Some(3),
        "the trapped call's state write (count 3) was rolled back, earlier ones kept"
    );
    assert_eq!(p.recycled(), 1);
}

#[test]
fn an_error_value_keeps_the_instance_and_names_the_event() {
    let mut p = hostile(Limits::default());
    let err = call1(&mut p, &[ok("1"), event("bad", "test.fail", json!({}))]).expect_err("refused");
    assert!(
        matches!(&err, CallError::Guest(GuestError::Event { index: 1, message }) if message == "refused by test guest"),
        "{err}"
    );
    assert_eq!(p.recycled(), 0);
    assert_eq!(call1(&mut p, &[ok("2")]).expect("serves").len(), 1);
}

#[test]
fn the_state_quota_is_enforced() {
    let mut p = hostile(Limits {
        state: 4,
        ..Limits::default()
    });
    let err = call1(&mut p, &[event("c", "test.count", json!({}))]).expect_err("over quota");
    assert!(matches!(err, CallError::StateQuota { limit: 4 }), "{err}");
    assert_eq!(call1(&mut p, &[ok("fine")]).expect("serves").len(), 1);
}

#[test]
fn misbehaving_init_is_reported() {
    let limits = Limits {
        deadline: Duration::from_millis(50),
        ..Limits::default()
    };
    let err = processor(
        "guest_hostile",
        &[("init", "fail")],
        &["in"],
        &["out"],
        limits.clone(),
    )
    .err()
    .expect("init fails");
    assert!(
        matches!(&err, CreateError::Config(m) if m.contains("init=fail")),
        "{err}"
    );
    let err = processor(
        "guest_hostile",
        &[("init", "spin")],
        &["in"],
        &["out"],
        limits.clone(),
    )
    .err()
    .expect("init loops");
    assert!(
        matches!(err, CreateError::Init(CallError::Deadline { .. })),
        "{err}"
    );
    let err = processor(
        "guest_hostile",
        &[("init", "trap")],
        &["in"],
        &["out"],
        limits,
    )
    .err()
    .expect("init traps");
    assert!(
        matches!(err, CreateError::Init(CallError::Trap { .. })),
        "{err}"
    );
}

#[test]
fn fuel_bounds_a_call_when_enabled() {
    let fueled = Host::new(HostConfig {
        max_instances: 4,
        fuel: true,
        ..HostConfig::default()
    })
    .expect("host");
    let c = fueled
        .load_file(&component("guest_hostile"))
        .expect("loads");
    let limits = Limits {
        fuel: Some(5_000_000),
        deadline: Duration::from_secs(30),
        ..Limits::default()
    };
    let mut p = fueled
        .create(c, setup("fueled", &[], &["in"], &["out"]), limits)
        .expect("creates");
    let err = call1(&mut p, &[event("s", "test.spin", json!({}))]).expect_err("out of fuel");
    assert!(
        matches!(err, CallError::OutOfFuel { fuel: 5_000_000 }),
        "{err}"
    );
    assert_eq!(call1(&mut p, &[ok("1")]).expect("serves").len(), 1);
}

#[test]
fn what_is_not_a_processor_is_refused_with_a_readable_message() {
    let err = host()
        .load_file(&component("guest-command"))
        .expect_err("a command");
    assert!(matches!(err, LoadError::NotAProcessor { .. }), "{err}");
    assert!(
        err.to_string().contains("wasi:cli/run"),
        "names what it exports: {err}"
    );

    let err = host()
        .load_file(&component("guest_halfway"))
        .expect_err("no lifecycle");
    assert!(
        matches!(&err, LoadError::MissingExport { missing, .. } if missing == "init"),
        "{err}"
    );
    assert!(
        err.to_string().contains("eson:flow/bridge-processor"),
        "{err}"
    );

    let err = host().load(b"definitely not wasm").expect_err("garbage");
    assert!(
        matches!(
            err,
            LoadError::NotAComponent {
                core_module: false,
                ..
            }
        ),
        "{err}"
    );

    let core_module = b"\0asm\x01\0\0\0";
    let err = host().load(core_module).expect_err("a core module");
    assert!(err.to_string().contains("core Wasm module"), "{err}");

    let bytes = std::fs::read(component("flow_passthrough")).expect("read");
    let err = host()
        .load(&bytes[..bytes.len() / 2])
        .expect_err("truncated");
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");

    let err = host()
        .load_file(std::path::Path::new("/nonexistent/x.wasm"))
        .expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent/x.wasm"), "{err}");
}

#[test]
fn compiled_components_are_cached_on_disk_by_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = HostConfig {
        cache_dir: Some(dir.path().to_owned()),
        max_instances: 4,
        ..HostConfig::default()
    };
    let bytes = std::fs::read(component("flow_passthrough")).expect("read");
    let first = Host::new(config.clone()).expect("host");
    let loaded = first.load(&bytes).expect("compiles");
    let digest = loaded.digest().trim_start_matches("sha256:").to_owned();
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(
        cached[0].starts_with(&digest) && cached[0].ends_with(".cwasm"),
        "{cached:?}"
    );

    // A second host loads the artifact, and it runs.
    let second = Host::new(config.clone()).expect("host");
    let again = second.load(&bytes).expect("loads from cache");
    let mut p = second
        .create(
            again,
            setup("cached", &[], &["in"], &["out"]),
            Limits::default(),
        )
        .expect("creates");
    assert_eq!(call1(&mut p, &[ok("1")]).expect("runs").len(), 1);

    // A corrupted artifact is recompiled, not trusted.
    let path = dir.path().join(&cached[0]);
    std::fs::write(&path, b"garbage").expect("corrupt");
    let third = Host::new(config).expect("host");
    let recompiled = third.load(&bytes).expect("recompiles");
    let mut p = third
        .create(
            recompiled,
            setup("recompiled", &[], &["in"], &["out"]),
            Limits::default(),
        )
        .expect("creates");
    assert_eq!(call1(&mut p, &[ok("1")]).expect("runs").len(), 1);
    assert!(std::fs::read(&path).expect("rewritten").len() > 100);
}

#[test]
fn many_processors_run_side_by_side_in_threads() {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut p = hostile(Limits::default());
                for i in 0..50 {
                    let id = format!("{t}-{i}");
                    let out = call1(&mut p, &[ok(&id)]).expect("runs");
                    assert_eq!(out[0].id(), id);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread ok");
    }
}
