//! The commands that use the host's management API (gRPC) rather than
//! FNAP: components (`flow component ...`) and pipelines (`flow apply`,
//! `flow get|describe|delete pipeline`).

use crate::api::client::ApiClient;
use crate::api::proto;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub(crate) enum ComponentCommand {
    /// Upload a component (.wasm) as NAME@VERSION.
    Push {
        file: PathBuf,
        /// Name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        version: String,
    },
    /// List the registered components.
    Ls,
    /// Show one component: NAME@VERSION, NAME (newest) or sha256:HEX.
    Describe { reference: String },
    /// Remove a component (refused while a processor uses it).
    Rm { reference: String },
    /// Give a component name, its versions and the right to add more, to
    /// another account (host administrators only).
    Transfer { name: String, account: String },
}

#[derive(Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// List the dead letters of a processor, a fused step or a pipeline.
    Ls {
        name: String,
        /// At most this many (up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one dead letter: why it failed, and the event (JSON).
    Show { name: String, sequence: u64 },
    /// Write dead letters back to the flows they came from, for the
    /// processor that failed on them, and remove them.
    Replay {
        name: String,
        /// Their sequences in the dead-letter flow (see `ls`).
        sequences: Vec<u64>,
        /// Every dead letter of NAME.
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
    },
    /// Remove dead letters for good.
    Discard {
        name: String,
        sequences: Vec<u64>,
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
    },
}

/// What a management command does.
pub(crate) enum Action {
    Component(ComponentCommand),
    Apply {
        file: PathBuf,
        dry_run: bool,
    },
    GetPipelines,
    DescribePipeline(String),
    DeletePipeline(String),
    Logs {
        name: String,
        follow: bool,
        since_ms: Option<u64>,
    },
    DeadLetter(DeadLetterCommand),
}

/// `--since`: a duration back from now (`30s`, `10m`, `2h`, `1d`) or an
/// RFC 3339 time; in ms since the epoch.
pub(crate) fn parse_since(text: &str) -> Result<u64> {
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let scale = match unit {
        "s" => Some(1_000u64),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        _ => None,
    };
    if let (Some(scale), Ok(n)) = (scale, digits.parse::<u64>()) {
        return Ok(now.saturating_sub(n.saturating_mul(scale)).max(1));
    }
    let time = chrono::DateTime::parse_from_rfc3339(text).with_context(|| {
        format!("--since `{text}`: give a duration (30s, 10m, 2h, 1d) or an RFC 3339 time")
    })?;
    Ok(time.timestamp_millis().max(1) as u64)
}

fn print_log(r: &proto::LogRecord) {
    let time = chrono::DateTime::from_timestamp_millis(r.time_ms as i64)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    let event = if r.event.is_empty() {
        String::new()
    } else {
        format!(" event={}", r.event)
    };
    // Guest text is printed with its control characters escaped: a guest
    // cannot forge lines or move the terminal's cursor.
    let mut message = String::with_capacity(r.message.len());
    for c in r.message.chars() {
        if c.is_control() {
            message.extend(c.escape_default());
        } else {
            message.push(c);
        }
    }
    println!(
        "{time} {:<5} {} {}{event}: {message}",
        r.level, r.processor, r.kind
    );
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", e.message(), e.code())
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn component_json(c: &proto::Component) -> serde_json::Value {
    serde_json::json!({
        "name": c.name, "version": c.version, "digest": c.digest, "kind": c.kind,
        "world": c.world, "imports": c.imports, "size": c.size,
        "uploaded_ms": c.uploaded_ms, "uploaded_by": c.uploaded_by, "used_by": c.used_by,
    })
}

fn step_json(s: &proto::Step) -> serde_json::Value {
    let p = s.processor.clone().unwrap_or_default();
    let st = p.status.clone().unwrap_or_default();
    serde_json::json!({
        "step": s.name, "processor": p.id, "runner": s.runner, "kind": p.kind, "component": p.component,
        "generation": p.generation, "phase": st.phase, "started_ms": st.started_ms,
        "events_in": st.events_in, "events_out": st.events_out, "errors": st.errors,
        "dead_lettered": st.dead_lettered, "last_error": st.last_error, "rate": s.rate,
        "code": st.code, "lag": st.lag,
        "inputs": p.inputs, "outputs": p.outputs,
        "parallelism": p.parallelism, "key": p.key,
        "partitions": st.partitions.iter().map(|q| serde_json::json!({
            "partition": q.partition, "host": q.host, "lag": q.lag,
        })).collect::<Vec<_>>(),
    })
}

/// A keyed step's partitions, one line per host: which it holds (as
/// ranges) and what waits in them.
fn partition_lines(proc: &proto::Processor, st: &proto::ProcessorStatus) -> Vec<String> {
    if proc.key.is_empty() {
        return Vec::new();
    }
    let mut by_host: std::collections::BTreeMap<&str, Vec<&proto::PartitionStatus>> =
        std::collections::BTreeMap::new();
    for p in &st.partitions {
        let host = if p.host.is_empty() {
            "-"
        } else {
            p.host.as_str()
        };
        by_host.entry(host).or_default().push(p);
    }
    let head = format!(
        "  key={} partitions={} parallelism={}",
        proc.key, proc.partitions, proc.parallelism
    );
    std::iter::once(head)
        .chain(by_host.into_iter().map(|(host, parts)| {
            let mut ranges: Vec<(u32, u32)> = Vec::new();
            for p in &parts {
                match ranges.last_mut() {
                    Some((_, end)) if *end + 1 == p.partition => *end = p.partition,
                    _ => ranges.push((p.partition, p.partition)),
                }
            }
            let ranges: Vec<String> = ranges
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let lags: Vec<String> = parts
                .iter()
                .filter(|p| p.lag > 0)
                .map(|p| format!("{}:{}", p.partition, p.lag))
                .collect();
            format!(
                "  partitions host={host} held={} count={} lag={}",
                ranges.join(","),
                parts.len(),
                if lags.is_empty() {
                    "0".to_owned()
                } else {
                    lags.join(",")
                }
            )
        }))
        .collect()
}

fn print_component(c: &proto::Component) {
    let name = if c.name.is_empty() {
        "(unnamed)".to_owned()
    } else {
        format!("{}@{}", c.name, c.version)
    };
    println!("component={name}");
    println!("digest={}", c.digest);
    println!("kind={}", c.kind);
    println!("world={}", c.world);
    println!("size={}", c.size);
    println!("imports={}", c.imports.join(","));
    println!("uploaded_by={}", c.uploaded_by);
    println!("used_by={}", c.used_by.join(","));
}

pub(crate) async fn execute(client: &ApiClient, action: Action, json: bool) -> Result<()> {
    match action {
        Action::Component(ComponentCommand::Push {
            file,
            name,
            version,
        }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(|s| s.to_lowercase())
                    .context("give --name")?,
            };
            let bar = indicatif::ProgressBar::new(bytes.len() as u64);
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) && !json {
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_message(format!("{name}@{version}"));
            } else {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let progress = bar.clone();
            let result = client
                .push(&name, &version, bytes, move |sent| {
                    progress.set_position(sent)
                })
                .await;
            bar.finish_and_clear();
            let component = result.map_err(status_error)?;
            if json {
                return print_json(&component_json(&component));
            }
            println!(
                "OK {}@{} {} ({}, {} bytes)",
                component.name, component.version, component.digest, component.kind, component.size
            );
        }
        Action::Component(ComponentCommand::Ls) => {
            let list = client
                .registry()
                .list(proto::ListComponentsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let all: Vec<_> = list.components.iter().map(component_json).collect();
                return print_json(&all);
            }
            for c in &list.components {
                println!(
                    "{:<30} {:<12} {:<10} {}",
                    format!("{}@{}", c.name, c.version),
                    c.kind,
                    c.size,
                    &c.digest
                );
            }
        }
        Action::Component(ComponentCommand::Describe { reference }) => {
            let c = client
                .registry()
                .describe(proto::ComponentRef { reference })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                return print_json(&component_json(&c));
            }
            print_component(&c);
        }
        Action::Component(ComponentCommand::Rm { reference }) => {
            client
                .registry()
                .delete(proto::ComponentRef {
                    reference: reference.clone(),
                })
                .await
                .map_err(status_error)?;
            println!("OK {reference} removed");
        }
        Action::Component(ComponentCommand::Transfer { name, account }) => {
            let moved = client
                .registry()
                .transfer(proto::TransferRequest { name, to: account })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                return print_json(&serde_json::json!({"name": moved.name, "owner": moved.owner}));
            }
            println!("OK {} belongs to {}", moved.name, moved.owner);
        }
        Action::Apply { file, dry_run } => {
            let manifest = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the manifest")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let report = match client
                .pipelines()
                .apply(proto::ApplyRequest { manifest, dry_run })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(e) if e.code() == tonic::Code::InvalidArgument => {
                    // Every error of the manifest, one per line, with its place.
                    for line in e.message().lines() {
                        eprintln!("{}: {line}", file.display());
                    }
                    bail!("{} not applied", file.display());
                }
                Err(e) => return Err(status_error(e)),
            };
            if json {
                return print_json(&serde_json::json!({
                    "pipeline": report.name, "created": report.created, "updated": report.updated,
                    "unchanged": report.unchanged, "removed": report.removed, "dry_run": dry_run,
                }));
            }
            let verb = if dry_run { "would apply" } else { "applied" };
            println!(
                "OK pipeline {} {verb}: created {}, updated {}, unchanged {}, removed {}",
                report.name,
                list(&report.created),
                list(&report.updated),
                list(&report.unchanged),
                list(&report.removed)
            );
        }
        Action::GetPipelines => {
            let all = client
                .pipelines()
                .list(proto::ListPipelinesRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let out: Vec<_> = all
                    .pipelines
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name, "owner": p.owner, "applied_ms": p.applied_ms,
                            "steps": p.steps.iter().map(step_json).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                return print_json(&out);
            }
            for p in &all.pipelines {
                let running = p
                    .steps
                    .iter()
                    .filter(|s| {
                        s.processor
                            .as_ref()
                            .and_then(|p| p.status.as_ref())
                            .is_some_and(|st| st.phase == "running")
                    })
                    .count();
                println!("{:<24} {}/{} steps running", p.name, running, p.steps.len());
            }
        }
        Action::DescribePipeline(name) => {
            let p = client
                .pipelines()
                .get(proto::PipelineRef { name })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                return print_json(&serde_json::json!({
                    "name": p.name, "owner": p.owner, "applied_ms": p.applied_ms,
                    "manifest": p.manifest,
                    "steps": p.steps.iter().map(step_json).collect::<Vec<_>>(),
                }));
            }
            println!("pipeline={}", p.name);
            println!("owner={}", p.owner);
            for s in &p.steps {
                let proc = s.processor.clone().unwrap_or_default();
                let st = proc.status.clone().unwrap_or_default();
                println!(
                    "step={} processor={} runner={} phase={} generation={} in={} out={} errors={} dead={} lag={} rate={:.1}/s{}",
                    s.name,
                    proc.id,
                    s.runner,
                    if st.phase.is_empty() {
                        "pending"
                    } else {
                        &st.phase
                    },
                    proc.generation,
                    st.events_in,
                    st.events_out,
                    st.errors,
                    st.dead_lettered,
                    st.lag.map_or("-".to_owned(), |l| l.to_string()),
                    s.rate,
                    if st.code.is_empty() {
                        String::new()
                    } else {
                        format!(" code={}", st.code)
                    }
                );
                for line in partition_lines(&proc, &st) {
                    println!("{line}");
                }
            }
        }
        Action::DeletePipeline(name) => {
            client
                .pipelines()
                .delete(proto::PipelineRef { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!("OK pipeline {name} deleted");
        }
        Action::DeadLetter(command) => dead_letters(client, command, json).await?,
        Action::Logs {
            name,
            follow,
            since_ms,
        } => {
            use futures::StreamExt;
            let mut records = client
                .logs()
                .read(proto::ReadLogsRequest {
                    name,
                    follow,
                    since_ms: since_ms.unwrap_or(0),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(record) = records.next().await {
                let record = record.map_err(status_error)?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "time_ms": record.time_ms, "level": record.level, "kind": record.kind,
                            "processor": record.processor, "host": record.host,
                            "instance": record.instance, "event": record.event,
                            "message": record.message, "sequence": record.sequence,
                        })
                    );
                } else {
                    print_log(&record);
                }
            }
        }
    }
    Ok(())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

async fn dead_letters(client: &ApiClient, command: DeadLetterCommand, json: bool) -> Result<()> {
    let mut api = client.dead_letters();
    let request =
        |name: String, sequences: Vec<u64>, all: bool, limit: u32| proto::DeadLettersRequest {
            name,
            sequences,
            all,
            limit,
        };
    let letter_json = |l: &proto::DeadLetter| {
        serde_json::json!({
            "flow": l.flow, "sequence": l.sequence, "processor": l.processor, "step": l.step,
            "input": l.input, "error": l.error, "event_id": l.event_id, "event_type": l.event_type,
            "event_source": l.event_source,
            "event": serde_json::from_str::<serde_json::Value>(&l.event_json).unwrap_or_default(),
        })
    };
    match command {
        DeadLetterCommand::Ls { name, limit } => {
            let letters = api
                .list(request(name, Vec::new(), false, limit))
                .await
                .map_err(status_error)?
                .into_inner()
                .letters;
            if json {
                return print_json(&letters.iter().map(letter_json).collect::<Vec<_>>());
            }
            println!("SEQ EVENT TYPE PROCESSOR ERROR");
            for l in &letters {
                let by = if l.step.is_empty() {
                    &l.processor
                } else {
                    &l.step
                };
                println!(
                    "{} {} {} {by} {}",
                    l.sequence, l.event_id, l.event_type, l.error
                );
            }
        }
        DeadLetterCommand::Show { name, sequence } => {
            let letters = api
                .list(request(name, vec![sequence], false, 1))
                .await
                .map_err(status_error)?
                .into_inner()
                .letters;
            let Some(l) = letters.first() else {
                bail!("no dead letter #{sequence}");
            };
            if json {
                return print_json(&letter_json(l));
            }
            println!("sequence={}", l.sequence);
            println!("flow={}", l.flow);
            println!("processor={}", l.processor);
            if !l.step.is_empty() {
                println!("step={}", l.step);
            }
            println!("input={}", l.input);
            println!("error={}", l.error);
            println!("{}", l.event_json);
        }
        DeadLetterCommand::Replay {
            name,
            sequences,
            all,
        } => {
            let done = api
                .replay(request(name, sequences, all, 0))
                .await
                .map_err(status_error)?
                .into_inner()
                .handled;
            for h in &done {
                println!("replayed #{} {} to {}", h.sequence, h.event_id, h.to);
            }
            println!("OK {} replayed", done.len());
        }
        DeadLetterCommand::Discard {
            name,
            sequences,
            all,
        } => {
            let done = api
                .discard(request(name, sequences, all, 0))
                .await
                .map_err(status_error)?
                .into_inner()
                .handled;
            println!("OK {} discarded", done.len());
        }
    }
    Ok(())
}
