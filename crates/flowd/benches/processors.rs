//! Processor host benchmark: prints, in one run, the cost of instantiating a
//! processor, the per-event cost of the `passthrough` and `transform`
//! components at batch sizes 1 and 100, and the same transform compiled as
//! native Rust, with the Wasm/native ratio.
//!
//! Run with `cargo bench -p flowd --bench processors` after
//! `scripts/build-processors`. Numbers are medians of several rounds.

use cloudevents::{Event, EventBuilder, EventBuilderV10};
use flow_sdk::{Bridge as _, Processor as _};
use flowd_core::event::packed;
use flowd_wasm::wit::types;
use flowd_wasm::{Host, HostConfig, Limits, Processor, ProcessorSetup};
use std::path::PathBuf;
use std::time::Instant;

const ROUNDS: usize = 7;

/// Where the bench's stored messages are said to come from.
const ORIGIN: flowd_broker::codec::Origin<'static> = flowd_broker::codec::Origin {
    stream: "FLOW_bench",
    sequence: 1,
    subject: "flow.bench",
};
const EVENTS_PER_ROUND: usize = 100_000;

fn components() -> PathBuf {
    flowd_test_support::components_dir()
}

fn transform_config() -> Vec<(String, String)> {
    [
        ("set.data.status", "\"paid\""),
        ("rename.data.cust", "data.customer"),
        ("remove", "data.internal"),
        ("set.region", "eu"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A typical business event: ~330 bytes as CloudEvents JSON.
fn invoice(i: usize) -> Event {
    EventBuilderV10::new()
        .id(format!("inv-{i:08}"))
        .source("https://erp.finance.example.com/invoices")
        .ty("created.invoice")
        .subject(format!("customer-{}", i % 97))
        .time("2026-11-25T09:00:00Z")
        .extension("tenant", "acme")
        .data(
            "application/json",
            serde_json::json!({
                "cust": format!("customer-{}", i % 97),
                "amount": (i % 1000) as f64 + 0.5,
                "currency": "EUR",
                "internal": "x-7",
                "lines": [1, 2, 3],
            }),
        )
        .build()
        .expect("valid event")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median nanoseconds per event of `f` over batches of `batch` events.
fn per_event(batch: usize, mut f: impl FnMut()) -> f64 {
    let calls = (EVENTS_PER_ROUND / batch).max(1);
    for _ in 0..calls / 10 {
        f();
    }
    let rounds = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_nanos() as f64 / (calls * batch) as f64
        })
        .collect();
    median(rounds)
}

fn setup(name: &str, config: Vec<(String, String)>) -> ProcessorSetup {
    ProcessorSetup {
        name: name.into(),
        config,
        inputs: vec!["in".into()],
        outputs: vec!["out".into()],
    }
}

/// The host's packed batch as the SDK's type (the same three lists).
fn to_sdk(b: &types::Batch) -> flow_sdk::bindings::types::Batch {
    flow_sdk::bindings::types::Batch {
        bytes: b.bytes.clone(),
        events: b.events.clone(),
        extensions: b.extensions.clone(),
    }
}

/// Nanoseconds per event of each measure, at one batch size.
struct Row {
    batch: usize,
    pass_call: f64,
    pass_full: f64,
    /// The runner's own path, from stored messages to output messages.
    run_pack: f64,
    run_outputs: f64,
    run_full: f64,
    wasm_call: f64,
    wasm_full: f64,
    native_call: f64,
}

fn main() -> anyhow::Result<()> {
    let host = Host::new(HostConfig {
        max_instances: 64,
        ..HostConfig::default()
    })?;
    let dir = components();
    let passthrough_bytes = std::fs::read(dir.join("flow_passthrough.wasm"))?;
    let transform_bytes = std::fs::read(dir.join("flow_transform.wasm"))?;

    let start = Instant::now();
    let passthrough = host.load(&passthrough_bytes)?;
    let compile = start.elapsed();
    let transform = host.load(&transform_bytes)?;

    // Instantiate + init, from the pre-instantiated component.
    let n = 500;
    let start = Instant::now();
    for _ in 0..n {
        let p = host.create(passthrough.clone(), setup("p", vec![]), Limits::default())?;
        drop(p);
    }
    let instantiate = start.elapsed() / n;
    let start = Instant::now();
    for _ in 0..n {
        let p = host.create(
            transform.clone(),
            setup("t", transform_config()),
            Limits::default(),
        )?;
        drop(p);
    }
    let instantiate_transform = start.elapsed() / n;

    println!("flowd processor benchmark ({} rounds, median)", ROUNDS);
    println!();
    println!("compile passthrough (no cache)      {:>10.2?}", compile);
    println!("instantiate + init passthrough      {:>10.2?}", instantiate);
    println!(
        "instantiate + init transform        {:>10.2?}",
        instantiate_transform
    );
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>14}",
        "per event (ns)", "batch 1", "batch 100", ""
    );

    let mut p: Processor = host.create(passthrough, setup("p", vec![]), Limits::default())?;
    let mut t: Processor =
        host.create(transform, setup("t", transform_config()), Limits::default())?;
    let native_setup = flow_sdk::Setup {
        config: flow_sdk::Config::new(transform_config()),
        inputs: vec!["in".into()],
        outputs: vec!["out".into()],
    };
    let mut native = flow_transform::Transform::init(&native_setup)
        .map_err(|e| anyhow::anyhow!("native transform: {e}"))?;

    let mut results = Vec::new();
    for batch in [1usize, 100] {
        let events: Vec<Event> = (0..batch).map(invoice).collect();
        let packed_batch: types::Batch = packed::pack(&events).into();
        let sdk_batch = flow_sdk::Batch::from_raw(to_sdk(&packed_batch));

        let pass_call = per_event(batch, || {
            let out = p.process(0, &packed_batch).expect("passthrough");
            assert_eq!(out.emits.len(), batch);
        });
        let pass_full = per_event(batch, || {
            let packed_batch: types::Batch = packed::pack(&events).into();
            let out = p.process(0, &packed_batch).expect("passthrough");
            let resolved = out.resolve(&events, 1).expect("valid");
            assert_eq!(resolved.len(), batch);
        });
        // The runner's path: stored messages (binary-mode CloudEvents) are
        // packed straight from their headers; each forwarded event's output
        // message is the input's headers (moved, as the runner moves them)
        // and payload with a message id. The bench moves the headers back
        // afterwards to use the messages again (a move: a few nanoseconds).
        let mut messages: Vec<_> = events
            .iter()
            .map(flowd_broker::codec::message_for_event)
            .collect();
        let pack_stored = |messages: &[(async_nats::HeaderMap, bytes::Bytes)]| {
            let mut packer = flow_abi::Packer::with_capacity(batch, 256 * batch);
            for (headers, payload) in messages {
                flowd_broker::codec::pack_message(&mut packer, Some(headers), payload, ORIGIN);
            }
            types::Batch {
                bytes: packer.bytes,
                events: packer.events,
                extensions: packer.extensions,
            }
        };
        let outputs = |messages: &mut [(async_nats::HeaderMap, bytes::Bytes)],
                       batch: &types::Batch,
                       emits: &[u32]| {
            let view = flow_abi::View::new(&batch.bytes, &batch.events, &batch.extensions);
            emits
                .iter()
                .map(|w| {
                    let flow_abi::Emit::Forward(j) = flow_abi::Emit::from_word(*w) else {
                        panic!("a passthrough forwards");
                    };
                    let spans = view.event(j as usize).expect("in range");
                    let (headers, payload) = &mut messages[j as usize];
                    let id = flowd_broker::codec::message_id(
                        "p",
                        0,
                        view.slice(spans.source).unwrap_or_default(),
                        view.slice(spans.id).unwrap_or_default(),
                    );
                    (std::mem::take(headers), payload.clone(), id)
                })
                .collect::<Vec<_>>()
        };
        // Puts a passthrough's output headers back into the messages.
        let put_back =
            |messages: &mut [(async_nats::HeaderMap, bytes::Bytes)],
             out: Vec<(async_nats::HeaderMap, bytes::Bytes, String)>| {
                assert_eq!(out.len(), messages.len());
                for (m, (headers, _, _)) in messages.iter_mut().zip(out) {
                    m.0 = headers;
                }
            };
        let run_pack = per_event(batch, || {
            assert_eq!(
                pack_stored(&messages).events.len() / flow_abi::EVENT_WORDS,
                batch
            );
        });
        let stored = pack_stored(&messages);
        let emits: Vec<u32> = (0..batch as u32)
            .map(|i| flow_abi::Emit::Forward(i).to_word())
            .collect();
        let run_outputs = per_event(batch, || {
            let out = outputs(&mut messages, &stored, &emits);
            put_back(&mut messages, out);
        });
        let run_full = per_event(batch, || {
            let packed_batch = pack_stored(&messages);
            let out = p.process(0, &packed_batch).expect("passthrough");
            let out = outputs(&mut messages, &packed_batch, &out.emits);
            put_back(&mut messages, out);
        });
        let wasm_call = per_event(batch, || {
            let out = t.process(0, &packed_batch).expect("transform");
            assert_eq!(out.emits.len(), batch);
        });
        let wasm_full = per_event(batch, || {
            let packed_batch: types::Batch = packed::pack(&events).into();
            let out = t.process(0, &packed_batch).expect("transform");
            let resolved = out.resolve(&events, 1).expect("valid");
            assert_eq!(resolved.len(), batch);
        });
        let native_call = per_event(batch, || {
            let mut out = flow_sdk::Output::new();
            native
                .process(&sdk_batch, &mut out)
                .expect("native transform");
            let raw = out.into_raw();
            assert_eq!(raw.emits.len(), batch);
        });
        results.push(Row {
            batch,
            pass_call,
            pass_full,
            run_pack,
            run_outputs,
            run_full,
            wasm_call,
            wasm_full,
            native_call,
        });
    }
    let row = |name: &str, f: &dyn Fn(&Row) -> f64| {
        println!(
            "{:<34} {:>12.1} {:>12.1}",
            name,
            f(&results[0]),
            f(&results[1])
        );
    };
    row("passthrough: call", &|r| r.pass_call);
    row("passthrough: pack+call+resolve", &|r| r.pass_full);
    row("runner path: pack stored messages", &|r| r.run_pack);
    row("runner path: output messages", &|r| r.run_outputs);
    row("runner path: pack+call+outputs", &|r| r.run_full);
    row("transform wasm: call", &|r| r.wasm_call);
    row("transform wasm: pack+call+resolve", &|r| r.wasm_full);
    row("transform native Rust", &|r| r.native_call);
    println!();
    for r in &results {
        println!(
            "batch {:>3}: transform wasm/native = {:.2}x   passthrough call = {:.3} us/event",
            r.batch,
            r.wasm_call / r.native_call,
            r.pass_call / 1000.0
        );
    }
    Ok(())
}
