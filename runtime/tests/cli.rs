//! The binaries, end to end: `flowd run` over JSON lines and `flow describe
//! component`, with the real components built by `scripts/build-processors`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("FLOWD_COMPONENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/processor")
        });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} missing: run scripts/build-processors",
        path.display()
    );
    path
}

fn tour_events() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/tour/invoices.jsonl");
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
    assert!(out.status.success());
    let events = lines(&out);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"], serde_json::json!({"a": 1, "b": 2}));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("event bad:") && stderr.contains("data is not JSON"),
        "{stderr}"
    );
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
