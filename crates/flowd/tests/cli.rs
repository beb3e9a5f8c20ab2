//! The binaries, end to end: `flowd run` over JSON lines, `flowd serve` with
//! its embedded broker driven by the `flow` CLI, and `flow describe
//! component`, with the real components built by `scripts/build-processors`.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use support::component;

fn tour_events() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/tour/invoices.jsonl");
    std::fs::read_to_string(path).expect("tour events")
}

fn run(bin: &str, args: &[&str], stdin: &str) -> Output {
    let cache = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(bin)
        .args(args)
        .env("FLOWD_CACHE_DIR", cache.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writes");
    child.wait_with_output().expect("exits")
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

const FLOWD: &str = env!("CARGO_BIN_EXE_flowd");

#[test]
fn flowd_run_filters_stdin_events() {
    let filter = component("flow_filter");
    let out = run(
        FLOWD,
        &[
            "run",
            "-c",
            filter.to_str().unwrap_or_default(),
            "-C",
            "where=data.amount > 100",
        ],
        &tour_events(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = lines(&out);
    let amounts: Vec<f64> = events
        .iter()
        .map(|e| e["data"]["amount"].as_f64().unwrap_or_default())
        .collect();
    assert_eq!(amounts, [250.0, 990.5, 120.0, 500.0]);
    assert_eq!(events[3]["type"], "eson.raw", "the raw line was wrapped");
    assert_eq!(events[0]["id"], "inv-1001");
}

#[test]
fn flowd_run_tags_lines_with_outputs_for_a_distributor() {
    let router = component("flow_router");
    let out = run(
        FLOWD,
        &[
            "run",
            "-c",
            router.to_str().unwrap_or_default(),
            "-C",
            "by=data.region",
            "-o",
            "eu",
            "-o",
            "us",
        ],
        &tour_events(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let routed: Vec<(String, String)> = lines(&out)
        .iter()
        .map(|l| {
            (
                l["output"].as_str().unwrap_or_default().to_owned(),
                l["event"]["data"]["cust"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        routed,
        [
            ("eu".to_string(), "acme".to_string()),
            ("us".into(), "globex".into()),
            ("us".into(), "initech".into()),
            ("eu".into(), "hooli".into()),
        ]
    );
}

#[test]
fn flowd_run_reports_a_failing_event_and_keeps_the_others() {
    let transform = component("flow_transform");
    let input = format!(
        "{}\n{}\n",
        r#"{"specversion":"1.0","id":"good","source":"urn:s","type":"t","datacontenttype":"application/json","data":{"a":1}}"#,
        r#"{"specversion":"1.0","id":"bad","source":"urn:s","type":"t","datacontenttype":"text/plain","data":"not json"}"#
    );
    let out = run(
        FLOWD,
        &[
            "run",
            "-c",
            transform.to_str().unwrap_or_default(),
            "-C",
            "set.data.b=2",
        ],
        &input,
    );
    assert_eq!(out.status.code(), Some(1), "not every event went through");
    let events = lines(&out);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"], serde_json::json!({"a": 1, "b": 2}));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("event bad:") && stderr.contains("data is not JSON"),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 2 events failed"), "{stderr}");
}

#[test]
fn flowd_run_fails_clearly_on_bad_config_and_bad_components() {
    let filter = component("flow_filter");
    let out = run(
        FLOWD,
        &[
            "run",
            "-c",
            filter.to_str().unwrap_or_default(),
            "-C",
            "where=x ?? y",
        ],
        "",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rejected its configuration") && stderr.contains("`??`"),
        "{stderr}"
    );

    let garbage = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(garbage.path(), b"not wasm at all").expect("write");
    let out = run(
        FLOWD,
        &["run", "-c", garbage.path().to_str().unwrap_or_default()],
        "",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a WebAssembly component"), "{stderr}");
}

#[test]
fn flow_describe_component_shows_kind_and_digest() {
    let merge = component("flow_merge");
    let out = run(
        env!("CARGO_BIN_EXE_flow"),
        &[
            "describe",
            "component",
            merge.to_str().unwrap_or_default(),
            "-o",
            "json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["kind"], "collector");
    assert_eq!(json["world"], "eson:flow/collector-processor@0.1.0");
    assert!(
        json["digest"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sha256:")
    );
}

#[test]
fn flowd_account_adds_lists_and_removes_accounts() {
    let state = tempfile::tempdir().expect("tempdir");
    let dir = state.path().to_str().unwrap_or_default();
    let account = |args: &[&str], stdin: &str| {
        let mut all = vec!["account", "--state-dir", dir];
        all.extend_from_slice(args);
        run(FLOWD, &all, stdin)
    };
    assert!(account(&["add", "alice"], "s3cret\n").status.success());
    assert!(
        account(&["add", "root", "--admin"], "pw\n")
            .status
            .success()
    );
    let listed = account(&["list"], "");
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "alice\nroot admin\n"
    );
    let again = account(&["add", "alice"], "x\n");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("account `alice` already exists"));
    let reserved = account(&["add", "local"], "x\n");
    assert!(String::from_utf8_lossy(&reserved.stderr).contains("reserved"));
    let empty = account(&["add", "bob"], "\n");
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty password"));
    assert!(account(&["remove", "alice"], "").status.success());
    assert_eq!(
        String::from_utf8_lossy(&account(&["list"], "").stdout),
        "root admin\n"
    );
    let stored = std::fs::read_to_string(state.path().join("accounts.json")).expect("file");
    assert!(stored.contains("$argon2id$"), "argon2id hashes: {stored}");
    assert!(!stored.contains("s3cret"), "no password in clear");
}

/// The README's tour: `flowd serve` with no broker configured starts its own
/// nats-server; the `flow` CLI finds the host, creates flows and a
/// processor, writes and reads; `/metrics` reports the processor.
/// `flowd serve` with its embedded broker and every listener on a free
/// loopback port, ready (its `host.json` written); `metrics_port` is the
/// one the caller may scrape.
fn serve(state: &std::path::Path, metrics_port: u16) -> support::KillOnDrop {
    let host = support::KillOnDrop(
        Command::new(FLOWD)
            .args([
                "serve",
                "--metrics",
                &format!("127.0.0.1:{metrics_port}"),
                "--fnap",
                "127.0.0.1:0",
                "--fnap-tls",
                "127.0.0.1:0",
                "--fns",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--console",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(state)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("flowd serve starts"),
    );
    let host_file = state.join("host.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !host_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "flowd never became ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    host
}

/// `flow --state-dir <state> args...`, which must succeed: its stdout.
fn flow_on(state: &std::path::Path, args: &[&str], stdin: &str) -> String {
    let mut all = vec!["--state-dir", state.to_str().unwrap_or_default()];
    all.extend_from_slice(args);
    let out = run(env!("CARGO_BIN_EXE_flow"), &all, stdin);
    assert!(
        out.status.success(),
        "flow {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn flowd_serve_with_embedded_nats_and_the_flow_cli() {
    let state = tempfile::tempdir().expect("tempdir");
    let metrics_port = support::free_port();
    let _host = serve(state.path(), metrics_port);
    let flow = |args: &[&str], stdin: &str| flow_on(state.path(), args, stdin);
    flow(&["create", "namespace", "tour.example.com"], "");
    flow(&["create", "flow", "invoices.tour.example.com"], "");
    flow(&["create", "flow", "large.tour.example.com"], "");
    let filter = component("flow_filter");
    let created = flow(
        &[
            "replicate",
            "invoices.tour.example.com",
            "large.tour.example.com",
            "-c",
            filter.to_str().unwrap_or_default(),
            "-C",
            "where=data.amount > 100",
            "--id",
            "large",
        ],
        "",
    );
    assert!(
        created.contains("created bridge processor large"),
        "{created}"
    );
    let wrote = flow(&["write", "invoices.tour.example.com"], &tour_events());
    assert!(wrote.contains("wrote 5 event(s)"), "{wrote}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let read = loop {
        let read = flow(&["read", "large.tour.example.com", "--from-start"], "");
        if read.lines().count() >= 4 || std::time::Instant::now() > deadline {
            break read;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let ids: Vec<String> = read
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 4, "{read}");
    assert!(ids.contains(&"\"inv-1003\"".to_string()));

    let processors = flow(&["get", "processors"], "");
    assert!(
        processors.contains("large") && processors.contains("running"),
        "{processors}"
    );
    let described = flow(&["describe", "flow", "large.tour.example.com"], "");
    assert!(described.contains("events=4"), "{described}");
    // `flow ... | head`: a reader that goes away ends flow quietly.
    let mut piped = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(["--state-dir", state.path().to_str().unwrap_or_default()])
        .args(["describe", "flow", "large.tour.example.com"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flow starts");
    drop(piped.stdout.take());
    let out = piped.wait_with_output().expect("flow ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");

    // The host's name service answers for the namespace it serves.
    let host: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.path().join("host.json")).expect("host.json"),
    )
    .expect("JSON");
    let dns = host["fns"].as_str().expect("name service address");
    let fnap = host["fnap"].as_str().expect("FNAP address");
    let port = fnap.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    // (`tour.example.com` was created with `flow create namespace`; a
    // top-level namespace gets its own zone.)
    let nameserver = flow(
        &[
            "describe",
            "nameserver",
            "tour.example.com",
            "--nameserver",
            dns,
        ],
        "",
    );
    assert!(
        nameserver.contains("agent=localhost")
            && nameserver.contains(&format!("port={port}"))
            && nameserver.contains("addresses=127.0.0.1"),
        "{nameserver}"
    );

    let mut metrics = String::new();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics");
    std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.0\r\n\r\n").expect("request");
    std::io::Read::read_to_string(&mut stream, &mut metrics).expect("response");
    assert!(
        metrics.contains("flowd_processor_events_in_total{processor=\"large\"} 5"),
        "{metrics}"
    );
    assert!(metrics.contains("flowd_processor_events_out_total{processor=\"large\"} 4"));

    let fails = |args: &[&str], expected: &str| {
        let mut all = vec!["--state-dir", state.path().to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        let out = run(env!("CARGO_BIN_EXE_flow"), &all, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "flow {args:?} should fail");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(expected),
            "flow {args:?}: the first line says why: {stderr}"
        );
    };
    fails(
        &["describe", "processor", "nope"],
        "550 no such processor: nope",
    );
    fails(
        &["create", "flow", "bad_name.tour.example.com"],
        "label `bad_name`",
    );
    fails(
        &["create", "flow", "large.tour.example.com"],
        "553 flow already exists",
    );
    fails(
        &["--anonymous", "write", "large.tour.example.com", "{}"],
        "554 anonymous sessions cannot write",
    );
    fails(
        &["create", "flow", "orders.elsewhere.example.org"],
        "550 no such namespace",
    );
    let router = component("flow_router");
    fails(
        &[
            "replicate",
            "invoices.tour.example.com",
            "large.tour.example.com",
            "-c",
            router.to_str().unwrap_or_default(),
        ],
        "the component is a distributor processor, but this command creates a bridge",
    );
    fails(
        &[
            "replicate",
            "invoices.tour.example.com",
            "missing.tour.example.com",
            "-c",
            filter.to_str().unwrap_or_default(),
            "-C",
            "where=type exists",
        ],
        "no such flow: missing.tour.example.com",
    );

    // The README's pipeline part: components pushed over the management
    // API, a manifest applied twice (the second time changes nothing),
    // events through Python, JavaScript and Rust steps.
    for (file, name) in [
        ("flow_enrich_py", "enrich-py"),
        ("flow_filter_js", "filter-js"),
        ("flow_transform", "transform"),
        ("flow_router", "router"),
    ] {
        let path = component(file);
        let pushed = flow(
            &[
                "component",
                "push",
                path.to_str().unwrap_or_default(),
                "--name",
                name,
                "--version",
                "1.0.0",
            ],
            "",
        );
        assert!(
            pushed.starts_with(&format!("OK {name}@1.0.0 sha256:")),
            "{pushed}"
        );
    }
    let listed = flow(&["component", "ls"], "");
    assert_eq!(listed.lines().count(), 4, "{listed}");
    for f in ["orders", "eu", "us", "rest"] {
        let _ = run(
            env!("CARGO_BIN_EXE_flow"),
            &[
                "--state-dir",
                state.path().to_str().unwrap_or_default(),
                "create",
                "flow",
                &format!("{f}.tour.example.com"),
            ],
            "",
        );
    }
    let manifest = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/tour/pipeline.yaml"),
    )
    .expect("tour manifest")
    .replace("shop.example.com", "tour.example.com");
    let applied = flow(&["apply", "-f", "-"], &manifest);
    assert!(
        applied.contains("created enrich,created,tag,route"),
        "{applied}"
    );
    let again = flow(&["apply", "-f", "-"], &manifest);
    assert!(
        again.contains("created -, updated -, unchanged enrich,created,tag,route"),
        "{again}"
    );
    let orders = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/tour/orders.jsonl"),
    )
    .expect("tour orders");
    flow(&["write", "orders.tour.example.com"], &orders);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let eu = loop {
        let read = flow(&["read", "eu.tour.example.com", "--from-start"], "");
        if read.lines().count() >= 3 || std::time::Instant::now() > deadline {
            break read;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    // Orders 3, 6 and 9 are created orders in region eu (n % 3 == 0); 12
    // is cancelled.
    let eu: Vec<serde_json::Value> = eu
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let ids: Vec<&str> = eu.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["order-3", "order-6", "order-9"], "{eu:?}");
    for e in &eu {
        assert_eq!(e["data"]["channel"], "web");
        assert_eq!(e["data"]["tag"], "tour");
    }
    let described = flow(&["describe", "pipeline", "orders"], "");
    assert!(
        described.contains("step=route processor=orders-route runner=orders-enrich phase=running"),
        "{described}"
    );
    // The created apac orders have no route: dead-lettered, with why in
    // the log. Routing the rest to `rest` and replaying them delivers them.
    let apac = ["order-11", "order-2", "order-5"];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let letters = loop {
        let listed = flow(&["deadletter", "ls", "orders"], "");
        if apac.iter().all(|id| listed.contains(id)) || std::time::Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(letters.lines().count(), 4, "a header and three: {letters}");
    assert!(letters.contains("no route"), "{letters}");
    let logs = flow(&["logs", "orders"], "");
    assert!(
        logs.contains("order-2") && logs.contains("no route"),
        "{logs}"
    );
    let routed = manifest.replace("unmatched: error", "default: rest");
    let updated = flow(&["apply", "-f", "-"], &routed);
    assert!(updated.contains("updated route"), "{updated}");
    let replayed = flow(&["deadletter", "replay", "orders", "--all"], "");
    assert!(replayed.contains("OK 3 replayed"), "{replayed}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let rest = loop {
        let read = flow(&["read", "rest.tour.example.com", "--from-start"], "");
        if read.lines().count() >= 3 || std::time::Instant::now() > deadline {
            break read;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let mut rest: Vec<String> = rest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["id"].to_string())
        .collect();
    rest.sort();
    assert_eq!(rest, apac.map(|id| format!("{id:?}")), "replayed into rest");
    let letters = flow(&["deadletter", "ls", "orders"], "");
    assert_eq!(letters.lines().count(), 1, "none left: {letters}");
    let pipelines = flow(&["get", "pipelines"], "");
    assert!(
        pipelines.contains("orders") && pipelines.contains("4/4 steps running"),
        "{pipelines}"
    );
    flow(&["delete", "pipeline", "orders"], "");
    let bad = run(
        env!("CARGO_BIN_EXE_flow"),
        &[
            "--state-dir",
            state.path().to_str().unwrap_or_default(),
            "apply",
            "-f",
            "-",
        ],
        &manifest.replace("filter-js@1.0.0", "filter-js@9.9.9"),
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr
            .contains("-: line 19, column 16: step `created`: no such component: filter-js@9.9.9"),
        "{stderr}"
    );

    // A failing event: in the processor log, in the dead letters, and
    // replayed once the processor is fixed.
    let wait_for = |args: &[&str], what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = flow(args, "");
            if out.contains(what) {
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "flow {args:?} never showed {what}: {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    flow(&["create", "flow", "fragile.tour.example.com"], "");
    flow(&["create", "flow", "mended.tour.example.com"], "");
    let hostile = component("guest_hostile");
    flow(
        &[
            "replicate",
            "fragile.tour.example.com",
            "mended.tour.example.com",
            "-c",
            hostile.to_str().unwrap_or_default(),
            "--id",
            "fragile",
            "--max-attempts",
            "1",
        ],
        "",
    );
    flow(
        &["write", "fragile.tour.example.com"],
        "{\"specversion\":\"1.0\",\"id\":\"bad-1\",\"source\":\"urn:tour\",\"type\":\"test.fail\"}\n\
         {\"specversion\":\"1.0\",\"id\":\"good-1\",\"source\":\"urn:tour\",\"type\":\"test.ok\"}\n",
    );
    let letters = wait_for(&["deadletter", "ls", "fragile"], "bad-1");
    assert!(letters.contains("refused by test guest"), "{letters}");
    let seq = letters
        .lines()
        .find(|l| l.contains("bad-1"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a sequence")
        .to_owned();
    let shown = flow(&["deadletter", "show", "fragile", &seq], "");
    assert!(
        shown.contains("input=fragile.tour.example.com") && shown.contains("\"bad-1\""),
        "{shown}"
    );
    let logs = wait_for(&["logs", "fragile"], "dead-letter");
    assert!(
        logs.contains("event=bad-1") && logs.contains("refused by test guest"),
        "{logs}"
    );
    let passthrough = component("flow_passthrough");
    flow(
        &[
            "update",
            "processor",
            "fragile",
            "-c",
            passthrough.to_str().unwrap_or_default(),
        ],
        "",
    );
    wait_for(&["describe", "processor", "fragile"], "generation=2");
    wait_for(&["describe", "processor", "fragile"], "phase=running");
    let replayed = flow(&["deadletter", "replay", "fragile", "--all"], "");
    assert!(replayed.contains("OK 1 replayed"), "{replayed}");
    let mended = wait_for(
        &["read", "mended.tour.example.com", "--from-start"],
        "bad-1",
    );
    assert_eq!(mended.lines().count(), 2, "{mended}");
    let left = flow(&["deadletter", "ls", "fragile"], "");
    assert_eq!(left.lines().count(), 1, "only the header: {left}");
    wait_for(&["logs", "fragile"], "replayed to fragile.tour.example.com");
}

/// A configuration file with an error says so once, with the file's name.
#[test]
fn a_bad_configuration_is_reported_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flowd.toml");
    std::fs::write(&path, "[nats]\nurls = 5\n").expect("written");
    let out = run(
        FLOWD,
        &["serve", "--config", path.to_str().unwrap_or_default()],
        "",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("flowd.toml"), "{stderr}");
    assert_eq!(stderr.matches("invalid type").count(), 1, "{stderr}");
}

const FLOW: &str = env!("CARGO_BIN_EXE_flow");

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The standard processors' behaviour, as their fixtures in
/// `processors/<name>/tests/` state it, through `flow test`.
#[test]
fn the_standard_processors_pass_their_fixture_tests() {
    for (project, component_name, cases) in [
        ("processors/filter", "flow_filter", 2),
        ("processors/transform", "flow_transform", 1),
        ("processors/router", "flow_router", 1),
        ("processors/merge", "flow_merge", 1),
        ("processors/threshold", "flow_threshold", 2),
        ("processors/passthrough", "flow_passthrough", 1),
        ("processors/enrich-py", "flow_enrich_py", 1),
        ("processors/filter-js", "flow_filter_js", 1),
        ("processors/dedupe-go", "flow_dedupe_go", 3),
        ("processors/sample-c", "flow_sample_c", 2),
    ] {
        let wasm = component(component_name);
        let out = run(
            FLOW,
            &[
                "test",
                repo(project).to_str().unwrap_or_default(),
                "-c",
                wasm.to_str().unwrap_or_default(),
            ],
            "",
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{project}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("{cases} cases: {cases} passed, 0 failed")),
            "{project}: {stdout}"
        );
    }
}

/// What `flow test` says when a processor does not do what its fixtures
/// expect: a diff of the output, an event that failed unexpectedly, an
/// expected failure that did not happen, state that differs; volatile
/// fields left out; `--update` writing what was emitted.
#[test]
fn flow_test_shows_what_differs_and_exits_1() {
    let project = tempfile::tempdir().expect("tempdir");
    let dir = project.path();
    std::fs::write(
        dir.join("flow.toml"),
        "[processor]\ncomponent = \"transform.wasm\"\n[test]\nvolatile = [\"time\"]\n",
    )
    .expect("flow.toml");
    std::fs::copy(component("flow_transform"), dir.join("transform.wasm")).expect("copy");
    let case = |name: &str, toml: &str, input: &str, expected: Option<&str>| {
        let c = dir.join("tests").join(name);
        std::fs::create_dir_all(c.join("input")).expect("mkdir");
        std::fs::write(c.join("case.toml"), toml).expect("case.toml");
        std::fs::write(c.join("input/in.jsonl"), input).expect("input");
        if let Some(expected) = expected {
            std::fs::create_dir_all(c.join("expected")).expect("mkdir");
            std::fs::write(c.join("expected/out.jsonl"), expected).expect("expected");
        }
    };
    let event = |id: &str, data: &str, time: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"urn:t","type":"t","time":"{time}","datacontenttype":"application/json","data":{data}}}"#
        ) + "\n"
    };
    // Passes: the times differ, but `time` is volatile; `data.n` is volatile
    // in this case only.
    case(
        "a-volatile",
        "config = [\"set.data.b=2\"]\nvolatile = [\"data.n\"]\n",
        &event("x", r#"{"a":1,"n":5}"#, "2026-01-01T00:00:00Z"),
        Some(&event(
            "x",
            r#"{"a":1,"b":2,"n":6}"#,
            "2030-01-01T00:00:00Z",
        )),
    );
    // Fails: the output differs.
    case(
        "b-differs",
        "config = [\"set.data.b=2\"]\n",
        &(event("x", r#"{"a":1}"#, "2026-01-01T00:00:00Z")
            + &event("y", r#"{"a":2}"#, "2026-01-01T00:00:00Z")),
        Some(
            &(event("x", r#"{"a":1,"b":2}"#, "2026-01-01T00:00:00Z")
                + &event("y", r#"{"a":2,"b":3}"#, "2026-01-01T00:00:00Z")),
        ),
    );
    // Fails: an event failed that should not have, and one that should
    // have did not.
    case(
        "c-failures",
        "config = [\"set.data.b=2\"]\nfail = [\"fine\"]\n",
        &(event("fine", "{}", "2026-01-01T00:00:00Z")
            + r#"{"specversion":"1.0","id":"text","source":"urn:t","type":"t","datacontenttype":"text/plain","data":"x"}"#
            + "\n"),
        Some(&event("fine", r#"{"b":2}"#, "2026-01-01T00:00:00Z")),
    );
    // Fails: a key the configuration does not know, and state that differs.
    case(
        "d-refused",
        "config = [\"colour=red\"]\n",
        &event("x", "{}", "2026-01-01T00:00:00Z"),
        None,
    );
    case(
        "e-state",
        "config = [\"set.data.b=2\"]\n[expected-state]\nseen = \"1\"\n",
        &event("x", "{}", "2026-01-01T00:00:00Z"),
        Some(&event("x", r#"{"b":2}"#, "2026-01-01T00:00:00Z")),
    );
    let out = run(FLOW, &["test", dir.to_str().unwrap_or_default()], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("4 of 5 cases failed"), "{stderr}");
    assert!(stdout.contains("test a-volatile ... ok"), "{stdout}");
    assert!(stdout.contains("test b-differs ... FAILED"), "{stdout}");
    // The diff shows the one event that differs, expected and emitted.
    assert!(
        stdout.contains(r#"- {"data":{"a":2,"b":3}"#)
            && stdout.contains(r#"+ {"data":{"a":2,"b":2}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"  {"data":{"a":1,"b":2}"#),
        "the equal event as context: {stdout}"
    );
    assert!(stdout.contains("event text failed:"), "{stdout}");
    assert!(
        stdout.contains("event fine was expected to fail, and did not"),
        "{stdout}"
    );
    assert!(stdout.contains("test d-refused ... FAILED"), "{stdout}");
    assert!(
        stdout.contains("colour"),
        "the refused key is named: {stdout}"
    );
    assert!(stdout.contains(r#"- "seen" = "1""#), "{stdout}");

    // --update writes what was emitted; then the case passes.
    let out = run(
        FLOW,
        &[
            "test",
            dir.to_str().unwrap_or_default(),
            "--case",
            "b-differs",
            "--update",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(
        FLOW,
        &[
            "test",
            dir.to_str().unwrap_or_default(),
            "--case",
            "b-differs",
        ],
        "",
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 cases: 1 passed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // No project, or a component that is not there: a clear error.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = run(
        FLOW,
        &["test", empty.path().to_str().unwrap_or_default()],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("flow.toml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(dir.join("transform.wasm")).expect("rm");
    let out = run(FLOW, &["test", dir.to_str().unwrap_or_default()], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("transform.wasm"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

/// `flow dev` on a running signal processor while events flow: a changed
/// component is built, tested and swapped in; a broken one fails its tests
/// and the processor keeps the component it had. Across both, every event
/// is counted exactly once in the windows of the processor's keyed state
/// (nothing lost, nothing applied twice, the state kept), and each key
/// alerts once (its zone, in the state, survives the swap).
#[test]
fn flow_dev_swaps_a_running_processor_keeping_its_place_and_state() {
    let state = tempfile::tempdir().expect("tempdir");
    let _host = serve(state.path(), support::free_port());
    let flow = |args: &[&str], stdin: &str| flow_on(state.path(), args, stdin);
    flow(&["create", "namespace", "dev.example.com"], "");
    for name in ["readings", "alerts", "stats"] {
        flow(&["create", "flow", &format!("{name}.dev.example.com")], "");
    }
    let threshold = component("flow_threshold");
    let created = flow(
        &[
            "signal",
            "--from",
            "readings.dev.example.com",
            "--to",
            "alerts.dev.example.com",
            "--to",
            "stats.dev.example.com",
            "-c",
            threshold.to_str().unwrap_or_default(),
            "-C",
            "field=data.t",
            "-C",
            "above=30",
            "-C",
            "key=data.room",
            "--id",
            "watch",
            "--tick-ms",
            "300",
        ],
        "",
    );
    assert!(created.contains("watch"), "{created}");

    // The project: its "build" copies the source component into place.
    let project = tempfile::tempdir().expect("tempdir");
    let dir = project.path();
    std::fs::write(
        dir.join("flow.toml"),
        "[processor]\ncomponent = \"out/threshold.wasm\"\nbuild = \"mkdir -p out && cp src/threshold.wasm out/threshold.wasm\"\n",
    )
    .expect("flow.toml");
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    let source = dir.join("src/threshold.wasm");
    std::fs::copy(&threshold, &source).expect("copy");
    copy_dir(
        &repo("processors/threshold/tests/alerts-once-per-crossing"),
        &dir.join("tests/alerts"),
    );

    let mut dev = DevRun::start(
        state.path(),
        &[dir.to_str().unwrap_or_default(), "-p", "watch"],
    );
    dev.wait_for("swapped:");

    let reading = |i: usize| {
        format!(
            r#"{{"specversion":"1.0","id":"r-{i}","source":"urn:sensors","type":"reading","data":{{"room":"room-{}","t":{}}}}}"#,
            i % 3,
            31 + i % 7
        )
    };
    let write = |from: usize, to: usize| {
        for start in (from..to).step_by(100) {
            let batch: String = (start..(start + 100).min(to))
                .map(|i| reading(i) + "\n")
                .collect();
            let wrote = flow(&["write", "readings.dev.example.com"], &batch);
            assert!(wrote.contains("wrote"), "{wrote}");
        }
    };
    // Events flow while a new build is swapped in: the same code with a
    // custom section, so another digest.
    let writer = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write(0, 1500));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut bytes = std::fs::read(&source).expect("read");
        bytes.extend_from_slice(&[0x00, 0x06, 0x03, b'd', b'e', b'v', b'v', b'2']);
        std::fs::write(&source, &bytes).expect("edit");
        let swapped = dev.wait_for("swapped:");
        writer.join().expect("writer");
        swapped
    });
    let digest = writer
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("a digest")
        .to_owned();

    // A broken build fails its tests; the processor keeps its component.
    std::fs::write(&source, b"not a component").expect("break");
    dev.wait_for("tests failed");
    dev.wait_for("processor watch keeps running the component it had");
    write(1500, 1800);

    // Every reading counted once, across the windows of all ticks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let (counted, alerts) = loop {
        let windows = flow(&["read", "stats.dev.example.com", "--from-start"], "");
        let counted: u64 = windows
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("JSON")["data"]["count"]
                    .as_u64()
                    .unwrap_or_default()
            })
            .sum();
        if counted >= 1800 || std::time::Instant::now() > deadline {
            let alerts = flow(&["read", "alerts.dev.example.com", "--from-start"], "");
            break (counted, alerts);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(counted, 1800, "each reading in exactly one window");
    let mut rooms: Vec<String> = alerts
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["subject"].to_string())
        .collect();
    rooms.sort();
    assert_eq!(
        rooms,
        ["\"room-0\"", "\"room-1\"", "\"room-2\""],
        "one alert per room"
    );
    let described = flow(&["describe", "processor", "watch"], "");
    assert!(
        described.contains(&digest),
        "runs the swapped build: {described}"
    );
}

/// A running `flow dev`, its output read line by line.
struct DevRun {
    _child: support::KillOnDrop,
    lines: std::sync::mpsc::Receiver<String>,
    transcript: String,
}

impl DevRun {
    fn start(state: &std::path::Path, args: &[&str]) -> DevRun {
        let mut child = support::KillOnDrop(
            Command::new(FLOW)
                .args(["--state-dir", state.to_str().unwrap_or_default(), "dev"])
                .args(args)
                .args(["--interval-ms", "100"])
                .env("FLOWD_CACHE_DIR", state.join("cache"))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("flow dev starts"),
        );
        let (said, lines) = std::sync::mpsc::channel::<String>();
        let stdout = child.0.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if said.send(line).is_err() {
                    break;
                }
            }
        });
        DevRun {
            _child: child,
            lines,
            transcript: String::new(),
        }
    }

    /// The next line that holds `needle` (two minutes at most).
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push_str(&line);
                    self.transcript.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no `{needle}` from flow dev:\n{}", self.transcript),
            }
        }
    }
}

/// `flow dev` on a stateful step fused inside a running pipeline, while
/// events flow: each build is swapped into the step by applying the
/// pipeline's manifest again with the step pointed at the build's digest;
/// a broken build keeps the step as it was. Every key passes the
/// de-duplicating step exactly once across the swaps: nothing lost, nothing
/// passed twice, the step's keyed state kept.
#[test]
fn flow_dev_swaps_a_pipeline_step_keeping_its_place_and_state() {
    let state = tempfile::tempdir().expect("tempdir");
    let _host = serve(state.path(), support::free_port());
    let flow = |args: &[&str], stdin: &str| flow_on(state.path(), args, stdin);
    flow(&["create", "namespace", "devp.example.com"], "");
    for name in ["orders", "kept"] {
        flow(&["create", "flow", &format!("{name}.devp.example.com")], "");
    }
    for (file, name) in [
        ("flow_passthrough", "passthrough"),
        ("flow_dedupe_go", "dedupe-go"),
    ] {
        let pushed = flow(
            &[
                "component",
                "push",
                component(file).to_str().unwrap_or_default(),
                "--name",
                name,
                "--version",
                "1.0.0",
            ],
            "",
        );
        assert!(pushed.starts_with("OK "), "{pushed}");
    }
    let manifest = "\
name: devp
inputs:
  orders: flow://orders.devp.example.com
outputs:
  kept: flow://kept.devp.example.com
steps:
  - name: pass
    component: passthrough@1.0.0
    from: orders
  - name: dedupe          # fused after pass
    component: dedupe-go@1.0.0   # the released build
    from: pass
    to: kept
    config:
      key: data.k
";
    let applied = flow(&["apply", "-f", "-"], manifest);
    assert!(applied.contains("created pass,dedupe"), "{applied}");

    // The project: its "build" copies the source component into place.
    let project = tempfile::tempdir().expect("tempdir");
    let dir = project.path();
    std::fs::write(
        dir.join("flow.toml"),
        "[processor]\ncomponent = \"out/dedupe.wasm\"\nbuild = \"mkdir -p out && cp src/dedupe.wasm out/dedupe.wasm\"\n",
    )
    .expect("flow.toml");
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    let source = dir.join("src/dedupe.wasm");
    std::fs::copy(component("flow_dedupe_go"), &source).expect("copy");
    copy_dir(&repo("processors/dedupe-go/tests"), &dir.join("tests"));

    let mut dev = DevRun::start(
        state.path(),
        &[
            dir.to_str().unwrap_or_default(),
            "--pipeline",
            "devp",
            "--step",
            "dedupe",
        ],
    );
    // The first build is the released one's bytes: the same digest as
    // dedupe-go@1.0.0, so the step is unchanged (`unchanged: ... runs`).
    dev.wait_for("step dedupe of pipeline devp runs sha256:");

    let order = |i: usize| {
        format!(
            r#"{{"specversion":"1.0","id":"o-{i}","source":"urn:shop","type":"created.order","data":{{"k":{}}}}}"#,
            i % 500
        ) + "\n"
    };
    let write = |from: usize, to: usize| {
        for start in (from..to).step_by(100) {
            let batch: String = (start..(start + 100).min(to)).map(order).collect();
            let wrote = flow(&["write", "orders.devp.example.com"], &batch);
            assert!(wrote.contains("wrote"), "{wrote}");
        }
    };
    let swapped = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write(0, 1500));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut bytes = std::fs::read(&source).expect("read");
        bytes.extend_from_slice(&[0x00, 0x06, 0x03, b'd', b'e', b'v', b'v', b'2']);
        std::fs::write(&source, &bytes).expect("edit");
        let swapped = dev.wait_for("swapped:");
        writer.join().expect("writer");
        swapped
    });
    let digest = swapped
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("a digest")
        .to_owned();

    // A broken build fails its tests; the step keeps its component.
    std::fs::write(&source, b"not a component").expect("break");
    dev.wait_for("tests failed");
    dev.wait_for("step dedupe of pipeline devp keeps running the component it had");
    // Repeats of keys seen before and after the swap: all dropped.
    write(1500, 1800);

    // Done when the segment has taken every event (its lag is 0) and the
    // 500 first sightings are stored; read once more after a pause, so a
    // repeat wrongly passed would show.
    let read_kept = || -> Vec<serde_json::Value> {
        flow(&["read", "kept.devp.example.com", "--from-start"], "")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let described = flow(&["describe", "pipeline", "devp"], "");
        let drained = described
            .lines()
            .find(|l| l.starts_with("step=pass "))
            .is_some_and(|l| l.contains(" lag=0 "));
        if (drained && read_kept().len() >= 500) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let kept = read_kept();
    let mut keys: Vec<u64> = kept
        .iter()
        .map(|e| e["data"]["k"].as_u64().expect("k"))
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        (0..500).collect::<Vec<u64>>(),
        "each key exactly once"
    );
    let ids: Vec<&str> = kept
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids.first(), Some(&"o-0"), "{ids:?}");

    let described: serde_json::Value =
        serde_json::from_str(&flow(&["describe", "pipeline", "devp", "-o", "json"], ""))
            .expect("JSON");
    let step = described["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == "dedupe"))
        .expect("step dedupe");
    assert_eq!(
        step["component"],
        digest.as_str(),
        "runs the swapped build: {step}"
    );
    // The manifest as applied keeps the author's comments around the swap.
    assert!(
        described["manifest"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("component: {digest}   # the released build"))),
        "{}",
        described["manifest"]
    );
}

/// Makes a `flow new` project of `lang` and `kind` under `work`, builds it
/// as its README says, checks that it passes its own `flow test` case and
/// fails it once the expected output is changed; returns its component.
fn new_project(work: &std::path::Path, lang: &str, kind: &str) -> String {
    let name = format!("{lang}-{kind}");
    let dir = work.join(&name);
    let out = Command::new(FLOW)
        .args(["new", &name, "--kind", kind, "--lang", lang, "--dir"])
        .arg(&dir)
        .output()
        .expect("flow new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("flow.toml")).expect("flow.toml"))
            .expect("TOML");
    let build = project["processor"]["build"].as_str().expect("build");
    // Rust projects share one target directory: the SDK's dependencies are
    // compiled once.
    let target = work.join("target");
    let built = Command::new("sh")
        .args(["-c", build])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("build");
    assert!(
        built.status.success(),
        "{name}: `{build}`: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = match lang {
        "rust" => target.join(format!(
            "wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        )),
        _ => dir.join(
            project["processor"]["component"]
                .as_str()
                .expect("component"),
        ),
    };
    let wasm = wasm.to_str().unwrap_or_default().to_owned();
    let test = |what: &str| {
        Command::new(FLOW)
            .args(["test", dir.to_str().unwrap_or_default(), "-c", &wasm])
            .env("FLOWD_CACHE_DIR", work.join("cache"))
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    let tested = test("flow test");
    assert!(
        tested.status.success(),
        "{name}: {}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
    // The case is the skeleton's: an expected output changed fails it.
    let expected = std::fs::read_dir(dir.join("tests/example/expected"))
        .expect("expected/")
        .flatten()
        .next()
        .expect("an expected file")
        .path();
    let right = std::fs::read_to_string(&expected).expect("read");
    std::fs::write(&expected, right.replacen("urn:", "urn:x", 1)).expect("write");
    let wrong = test("flow test, changed");
    assert_eq!(
        wrong.status.code(),
        Some(1),
        "{name}: a changed expectation fails"
    );
    std::fs::write(&expected, right).expect("restore");
    wasm
}

/// `flow new` for every language and kind, in a directory outside the
/// repository: each project builds with its own toolchain alone (the SDK is
/// in the project), passes its own `flow test` case and fails it once its
/// expectation is changed, and runs on a host as a processor of its kind,
/// wired per language: a -> bridge -> b; b and d -> collector -> c; c ->
/// distributor -> created and other; c -> signal -> counts.
#[test]
fn flow_new_projects_build_pass_their_tests_and_run_on_a_host() {
    let work = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let _host = serve(state.path(), support::free_port());
    let flow = |args: &[&str], stdin: &str| flow_on(state.path(), args, stdin);
    flow(&["create", "namespace", "new.example.com"], "");
    let kinds = ["bridge", "collector", "distributor", "signal"];
    let langs = ["rust", "python", "js", "c", "go"];
    let f = |name: &str, lang: &str| format!("{name}-{lang}.new.example.com");
    let sample = |prefix: &str| {
        (1..=4)
            .map(|i| {
                let ty = if i % 2 == 0 { "deleted.order" } else { "created.order" };
                format!(
                    r#"{{"specversion":"1.0","id":"{prefix}-{i}","source":"urn:t","type":"{ty}","data":{{"n":{i}}}}}"#
                ) + "\n"
            })
            .collect::<String>()
    };
    for lang in langs {
        let [bridge, collector, distributor, signal] =
            kinds.map(|kind| new_project(work.path(), lang, kind));
        for name in ["a", "b", "c", "d", "created", "other", "counts"] {
            flow(&["create", "flow", &f(name, lang)], "");
        }
        // The first calls of a Python or JavaScript component warm it up.
        let deadline: &[&str] = match lang {
            "python" | "js" => &["--deadline-ms", "2000"],
            _ => &[],
        };
        let id = |kind: &str| format!("{lang}-{kind}");
        let create = |mut args: Vec<String>| {
            args.extend(deadline.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            flow(&args, "");
        };
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        create(own(&[
            "replicate",
            &f("a", lang),
            &f("b", lang),
            "-c",
            &bridge,
            "--id",
            &id("br"),
        ]));
        create(own(&[
            "collect",
            &f("b", lang),
            &f("d", lang),
            &f("c", lang),
            "-c",
            &collector,
            "--id",
            &id("co"),
        ]));
        create(own(&[
            "distribute",
            &f("c", lang),
            &f("created", lang),
            &f("other", lang),
            "-c",
            &distributor,
            "--id",
            &id("di"),
        ]));
        create(own(&[
            "signal",
            "--from",
            &f("c", lang),
            "--to",
            &f("counts", lang),
            "-c",
            &signal,
            "--id",
            &id("si"),
            "--tick-ms",
            "200",
        ]));
        flow(&["write", &f("a", lang)], &sample("a"));
        flow(&["write", &f("d", lang)], &sample("d"));
    }

    let read = |name: &str, n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let text = flow(&["read", name, "--from-start"], "");
            let events: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON"))
                .collect();
            if events.len() >= n || std::time::Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    for lang in langs {
        let b = read(&f("b", lang), 4);
        assert_eq!(b.len(), 4, "{lang}: {b:?}");
        assert_eq!(
            b[2]["seen"], 2,
            "{lang}: the bridge's count per type: {:?}",
            b[2]
        );
        // 8 events (ids distinct: a flow keeps one event per id and source).
        let merged = read(&f("c", lang), 8);
        assert_eq!(merged.len(), 8, "{lang}: {merged:?}");
        assert_eq!(
            merged.iter().filter(|e| e["input"] == f("b", lang)).count(),
            4,
            "{lang}: the collector tags each event with its input: {merged:?}"
        );
        assert_eq!(read(&f("created", lang), 4).len(), 4, "{lang}");
        assert_eq!(read(&f("other", lang), 4).len(), 4, "{lang}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let counted = loop {
            let counted: u64 = read(&f("counts", lang), 1)
                .iter()
                .map(|e| e["data"]["count"].as_u64().unwrap_or_default())
                .sum();
            if counted >= 8 || std::time::Instant::now() > deadline {
                break counted;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert_eq!(counted, 8, "{lang}: the signal counted what it read");
    }
}

/// A guest that writes to stdout and stderr, then traps: `flow test`
/// reports the failure with the guest's message instead of stopping (a
/// guest's blocking WASI write used to enter the async runtime from
/// inside it and abort the run).
#[test]
fn flow_test_reports_a_guest_that_prints_and_traps() {
    let project = tempfile::tempdir().expect("tempdir");
    let dir = project.path();
    std::fs::write(
        dir.join("flow.toml"),
        "[processor]\ncomponent = \"hostile.wasm\"\n",
    )
    .expect("flow.toml");
    std::fs::copy(component("guest_hostile"), dir.join("hostile.wasm")).expect("copy");
    let case = dir.join("tests/traps");
    std::fs::create_dir_all(case.join("input")).expect("mkdir");
    std::fs::create_dir_all(case.join("expected")).expect("mkdir");
    std::fs::write(case.join("case.toml"), "").expect("case.toml");
    let event = |id: &str, ty: &str| {
        format!(r#"{{"specversion":"1.0","id":"{id}","source":"urn:t","type":"{ty}"}}"#) + "\n"
    };
    std::fs::write(
        case.join("input/in.jsonl"),
        event("a", "test.log") + &event("b", "test.trap"),
    )
    .expect("input");
    std::fs::write(case.join("expected/out.jsonl"), event("a", "test.log")).expect("expected");
    let out = run(FLOW, &["test", dir.to_str().unwrap_or_default()], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("hostile guest traps on event b"),
        "{stdout}{stderr}"
    );
    assert!(stdout.contains("1 cases: 0 passed, 1 failed"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
