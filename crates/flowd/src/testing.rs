//! Fixture tests of a processor component: `flow test`.
//!
//! A project directory holds `flow.toml`, which names the component, and
//! `tests/<case>/`, one directory per case:
//!
//! - `case.toml` (optional): configuration, port names, initial and
//!   expected keyed state, ticks, volatile fields, events expected to fail;
//! - `input/<port>.jsonl`: the events of each input port (CloudEvents JSON,
//!   or any JSON, which is wrapped as an event's data);
//! - `expected/<port>.jsonl`: what each output port must emit, in order.
//!
//! The component runs in the host's sandbox exactly as `flowd run` runs it
//! ([`flowd_wasm::pipe`]); each output is compared with its expected file,
//! with the volatile fields (generated ids, times) left out of both sides,
//! and a mismatch is shown as a line diff. The reference is
//! `docs/authoring.md`.

use anyhow::{Context, Result, bail};
use flowd_core::event::Event;
use flowd_wasm::pipe::{self, Input, Sink, Ticks};
use flowd_wasm::{CallError, Host, Limits, ProcessorSetup};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The project file's name.
pub const PROJECT_FILE: &str = "flow.toml";

/// The largest `flow.toml` or `case.toml` read.
const MAX_TOML: u64 = 1 << 20;

/// The largest `batch` and `memory-mib` a case may ask (a host's ceilings).
const MAX_BATCH: usize = 10_000;
const MAX_MEMORY_MIB: usize = 4096;

/// What a volatile field's value is replaced with on both sides.
const VOLATILE: &str = "(volatile)";

/// A port name usable as a file name: no separators, not `.` or `..`.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// `flow.toml`: the component a project builds, and defaults of its tests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Project {
    pub processor: ProjectProcessor,
    #[serde(default)]
    pub test: Defaults,
}

/// `[processor]` of `flow.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProjectProcessor {
    /// The processor's name (shown in reports).
    pub name: Option<String>,
    /// The component file the build makes, relative to the project.
    pub component: PathBuf,
    /// The command that builds it, run in the project directory.
    pub build: Option<String>,
}

/// `[test]` of `flow.toml`: what every case starts from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Defaults {
    /// `key=value` entries before each case's own.
    pub config: Vec<String>,
    /// Fields left out of every comparison.
    pub volatile: Vec<String>,
    pub deadline_ms: Option<u64>,
    pub memory_mib: Option<usize>,
}

/// `tests/<case>/case.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Case {
    pub description: Option<String>,
    /// `key=value` entries, in order (as `flowd run -C`), after the
    /// project's.
    pub config: Vec<String>,
    /// Input ports in port order (default: the one file in `input/`).
    pub inputs: Vec<String>,
    /// Output ports in port order (default: the one file in `expected/`,
    /// else `out`).
    pub outputs: Vec<String>,
    /// Events per call (default 100).
    pub batch: Option<usize>,
    /// A tick after every this many input events, and one at the end.
    pub tick_every: Option<u64>,
    /// The time ticks are given, in ms since the epoch (default: now), so
    /// that what a tick emits can be compared.
    pub tick_ms: Option<u64>,
    /// Fields left out of the comparison, besides the project's: a
    /// CloudEvents attribute (`id`, `time`, an extension) or
    /// `data.<path>`.
    pub volatile: Vec<String>,
    /// Ids of input events the processor must fail on; any other failure
    /// fails the case.
    pub fail: Vec<String>,
    /// Keyed state before the first event (UTF-8 values).
    pub state: BTreeMap<String, String>,
    /// Keyed state the run must end with, exactly.
    pub expected_state: Option<BTreeMap<String, String>>,
    pub deadline_ms: Option<u64>,
    pub memory_mib: Option<usize>,
}

/// What `flow test` was asked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The component to test instead of `flow.toml`'s.
    pub component: Option<PathBuf>,
    /// Only the cases whose name contains this.
    pub filter: Option<String>,
    /// Write what the outputs emitted as the expected files.
    pub update: bool,
    /// Where compiled components are cached.
    pub cache_dir: Option<PathBuf>,
}

/// How one case went.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub name: String,
    /// What is wrong, readable; empty when the case passed.
    pub problems: Vec<String>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads `dir/flow.toml`.
pub fn project(dir: &Path) -> Result<Project> {
    let path = dir.join(PROJECT_FILE);
    let text = read_bounded(&path)?;
    toml::from_str(&text).with_context(|| path.display().to_string())
}

/// Runs every case of the project in `dir`; a case that cannot run at all
/// (a missing file, a refused configuration) is a failed case, not an
/// error, so the others still run.
pub fn run(dir: &Path, options: &Options) -> Result<Vec<CaseReport>> {
    let project = project(dir)?;
    let component = match &options.component {
        Some(file) => file.clone(),
        None => dir.join(&project.processor.component),
    };
    let host = Host::new(flowd_wasm::HostConfig {
        cache_dir: options.cache_dir.clone(),
        max_instances: 4,
        ..flowd_wasm::HostConfig::default()
    })?;
    let loaded = host.load_file(&component).with_context(|| {
        let hint = match &project.processor.build {
            _ if component.exists() => String::new(),
            Some(build) => format!(" (not built? `{build}` builds it)"),
            None => " (not built?)".to_owned(),
        };
        format!("loading {}{hint}", component.display())
    })?;
    let tests = dir.join("tests");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&tests)
        .with_context(|| format!("{}: no test cases", tests.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_dir())
        .filter(|path| {
            options
                .filter
                .as_deref()
                .is_none_or(|f| file_name(path).contains(f))
        })
        .collect();
    cases.sort();
    if cases.is_empty() {
        bail!("{}: no test cases", tests.display());
    }
    Ok(cases
        .iter()
        .map(|case| {
            let name = file_name(case);
            let problems = match run_case(&host, &loaded, &project.test, case, options.update) {
                Ok(problems) => problems,
                Err(e) => vec![format!("{e:#}")],
            };
            CaseReport { name, problems }
        })
        .collect())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_bounded(path: &Path) -> Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .len();
    if size > MAX_TOML {
        bail!("{}: larger than {MAX_TOML} bytes", path.display());
    }
    std::fs::read_to_string(path).with_context(|| path.display().to_string())
}

/// The stems of the `.jsonl` files in `dir`, sorted.
fn ports_in(dir: &Path) -> Vec<String> {
    let mut ports: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    ports.sort();
    ports
}

/// `key=value` entries as pairs, in order; `what` names where they came
/// from in the error (`--set`, `config`).
pub(crate) fn config_pairs(what: &str, entries: &[String]) -> Result<Vec<(String, String)>> {
    entries
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{what} `{kv}`: expected KEY=VALUE"))
        })
        .collect()
}

/// What the processor did with a case's events.
#[derive(Default)]
struct Collected {
    /// Per output port, in emission order.
    emitted: Vec<Vec<Event>>,
    /// Input events it failed on, with the error.
    failed: Vec<(String, String)>,
}

impl Sink for Collected {
    fn emitted(&mut self, port: u32, event: &Event) -> Result<()> {
        let port = port as usize;
        if self.emitted.len() <= port {
            self.emitted.resize_with(port + 1, Vec::new);
        }
        self.emitted[port].push(event.clone());
        Ok(())
    }

    fn failed(&mut self, event: &Event, error: &CallError) -> Result<()> {
        self.failed.push((
            cloudevents::AttributesReader::id(event).to_owned(),
            error.to_string(),
        ));
        Ok(())
    }
}

fn run_case(
    host: &Host,
    component: &Arc<flowd_wasm::ProcessorComponent>,
    defaults: &Defaults,
    dir: &Path,
    update: bool,
) -> Result<Vec<String>> {
    let case_file = dir.join("case.toml");
    let case: Case = if case_file.exists() {
        toml::from_str(&read_bounded(&case_file)?)
            .with_context(|| case_file.display().to_string())?
    } else {
        Case::default()
    };
    let input_dir = dir.join("input");
    let expected_dir = dir.join("expected");
    let inputs = if case.inputs.is_empty() {
        match ports_in(&input_dir).as_slice() {
            [one] => vec![one.clone()],
            [] => bail!("no input: put the events in input/<port>.jsonl"),
            _ => bail!("several files in input/: name the ports in order (`inputs` in case.toml)"),
        }
    } else {
        case.inputs.clone()
    };
    let outputs = if case.outputs.is_empty() {
        match ports_in(&expected_dir).as_slice() {
            [one] => vec![one.clone()],
            [] => vec!["out".to_owned()],
            _ => bail!(
                "several files in expected/: name the ports in order (`outputs` in case.toml)"
            ),
        }
    } else {
        case.outputs.clone()
    };
    for port in inputs.iter().chain(&outputs) {
        if !plain_name(port) {
            bail!("port `{port}`: a port name is letters, digits, `.`, `-` and `_`");
        }
    }
    for (dir, ports, what) in [
        (&input_dir, &inputs, "input"),
        (&expected_dir, &outputs, "expected"),
    ] {
        if let Some(stray) = ports_in(dir).into_iter().find(|p| !ports.contains(p)) {
            bail!(
                "{what}/{stray}.jsonl is no port of this case (ports: {})",
                ports.join(", ")
            );
        }
    }
    let mut config = config_pairs("config", &defaults.config)?;
    config.extend(config_pairs("config", &case.config)?);
    let setup = ProcessorSetup {
        name: file_name(dir),
        config,
        inputs: inputs.clone(),
        outputs: outputs.clone(),
    };
    let defaults_limits = Limits::default();
    let limits = Limits {
        memory: case
            .memory_mib
            .or(defaults.memory_mib)
            .map_or(defaults_limits.memory, |m| m.min(MAX_MEMORY_MIB) << 20),
        deadline: case
            .deadline_ms
            .or(defaults.deadline_ms)
            .map_or(defaults_limits.deadline, Duration::from_millis),
        ..defaults_limits
    };
    let state = flowd_wasm::state::KeyedState::restore(
        case.state
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
        limits.state,
    );
    let mut processor = host
        .create_with_state(component.clone(), setup, limits, state)
        .context("creating the processor")?;
    let mut readers = Vec::new();
    for port in &inputs {
        let path = input_dir.join(format!("{port}.jsonl"));
        let file = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
        readers.push(Input {
            name: port.clone(),
            reader: Box::new(std::io::BufReader::new(file)),
        });
    }
    let ticks = case.tick_every.map(|every| Ticks {
        every,
        at: case.tick_ms,
    });
    let mut collected = Collected::default();
    pipe::run_into(
        &mut processor,
        readers,
        case.batch.unwrap_or(100).clamp(1, MAX_BATCH),
        ticks,
        &mut collected,
    )?;
    if let Some(ticks) = ticks {
        pipe::tick(&mut processor, ticks.now(), &mut collected)?;
    }
    collected.emitted.resize_with(outputs.len(), Vec::new);

    let mut problems = Vec::new();
    let volatile: Vec<&str> = defaults
        .volatile
        .iter()
        .chain(&case.volatile)
        .map(String::as_str)
        .collect();
    for (port, emitted) in outputs.iter().zip(&collected.emitted) {
        let path = expected_dir.join(format!("{port}.jsonl"));
        if update {
            std::fs::create_dir_all(&expected_dir)?;
            let mut text = String::new();
            for event in emitted {
                text.push_str(&flowd_core::event::jsonl::to_line(event));
                text.push('\n');
            }
            std::fs::write(&path, text).with_context(|| path.display().to_string())?;
            continue;
        }
        // Every output has its file, an empty one when it must emit
        // nothing: a misnamed file is then an error, not a pass.
        let expected = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "expected/{port}.jsonl: every output needs its expected file (empty: emits nothing)"
            )
        })?;
        let mut want = Vec::new();
        for (i, line) in expected.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}", path.display(), i + 1))?;
            want.push(canonical(&strip(value, &volatile)));
        }
        let got: Vec<String> = emitted
            .iter()
            .map(|e| serde_json::to_value(e).map(|v| canonical(&strip(v, &volatile))))
            .collect::<Result<_, _>>()?;
        if want != got {
            problems.push(format!(
                "output `{port}`: {} expected, {} emitted\n{}",
                want.len(),
                got.len(),
                diff(&want, &got)
            ));
        }
    }
    for (id, error) in &collected.failed {
        if !case.fail.contains(id) {
            problems.push(format!("event {id} failed: {error}"));
        }
    }
    for id in &case.fail {
        if !collected.failed.iter().any(|(failed, _)| failed == id) {
            problems.push(format!("event {id} was expected to fail, and did not"));
        }
    }
    if let Some(expected) = &case.expected_state {
        let state = processor.state();
        let actual: BTreeMap<String, Vec<u8>> = state
            .keys("")
            .into_iter()
            .filter_map(|k| {
                let value = state.get(&k)?.to_vec();
                Some((k, value))
            })
            .collect();
        let expected: BTreeMap<String, Vec<u8>> = expected
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        if actual != expected {
            let show = |m: &BTreeMap<String, Vec<u8>>| -> Vec<String> {
                m.iter()
                    .map(|(k, v)| format!("{k:?} = {:?}", String::from_utf8_lossy(v)))
                    .collect()
            };
            problems.push(format!(
                "keyed state differs\n{}",
                diff(&show(&expected), &show(&actual))
            ));
        }
    }
    let _ = processor.teardown();
    Ok(problems)
}

/// `value` with the volatile fields' values replaced by a placeholder:
/// top-level attributes by name, and `data.<path>` through objects and
/// arrays. A volatile field must still be there (on both sides, or on
/// neither); only its value is not compared.
fn strip(mut value: Value, volatile: &[&str]) -> Value {
    fn remove(at: &mut Value, path: &[&str]) {
        match (at, path) {
            (Value::Object(map), [last]) => {
                if let Some(value) = map.get_mut(*last) {
                    *value = Value::String(VOLATILE.to_owned());
                }
            }
            (Value::Object(map), [step, rest @ ..]) => {
                if let Some(next) = map.get_mut(*step) {
                    remove(next, rest);
                }
            }
            (Value::Array(items), [step, rest @ ..]) if !rest.is_empty() => {
                if let Some(next) = step.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    remove(next, rest);
                }
            }
            _ => {}
        }
    }
    for field in volatile {
        let path: Vec<&str> = field.split('.').collect();
        remove(&mut value, &path);
    }
    value
}

/// One line of JSON with its object keys sorted, so that equal values are
/// equal lines and a diff shows only what differs.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// A unified line diff, `-` expected and `+` emitted.
fn diff(want: &[String], got: &[String]) -> String {
    let text = |lines: &[String]| -> String { lines.iter().map(|l| format!("{l}\n")).collect() };
    let (old, new) = (text(want), text(got));
    let diff = similar::TextDiff::from_lines(&old, &new);
    let mut out = String::new();
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => '-',
            similar::ChangeTag::Insert => '+',
            similar::ChangeTag::Equal => ' ',
        };
        let _ = write!(out, "  {sign} {}", change.value());
        if !change.value().ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_fields_are_left_out_at_any_depth() {
        let value = serde_json::json!({
            "id": "x", "time": "now", "type": "t",
            "data": {"at": 5, "keep": 1, "items": [{"ts": 1, "v": 2}]}
        });
        let volatile = [
            "id",
            "time",
            "data.at",
            "data.items.0.ts",
            "data.nowhere.x",
            "subject",
        ];
        let v = VOLATILE;
        assert_eq!(
            strip(value, &volatile),
            serde_json::json!({"id": v, "time": v, "type": "t",
                "data": {"at": v, "keep": 1, "items": [{"ts": v, "v": 2}]}}),
            "a volatile field's value is not compared, and a missing one stays missing"
        );
        assert!(plain_name("alerts") && plain_name("eu.orders.example.com"));
        assert!(!plain_name("../x") && !plain_name("a/b") && !plain_name("") && !plain_name(".."));
    }

    #[test]
    fn equal_values_are_equal_lines_whatever_their_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":3}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":{"c":3,"d":2},"b":1}"#).expect("json");
        assert_eq!(canonical(&a), canonical(&b));
        let shown = diff(&["1".into(), "2".into()], &["1".into(), "3".into()]);
        assert!(
            shown.contains("  - 2\n") && shown.contains("  + 3\n"),
            "{shown}"
        );
    }
}
