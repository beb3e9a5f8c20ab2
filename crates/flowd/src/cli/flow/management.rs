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

/// What a management command does.
pub(crate) enum Action {
    Component(ComponentCommand),
    Apply { file: PathBuf, dry_run: bool },
    GetPipelines,
    DescribePipeline(String),
    DeletePipeline(String),
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
        "code": st.code,
        "inputs": p.inputs, "outputs": p.outputs,
    })
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
                    "step={} processor={} runner={} phase={} generation={} in={} out={} errors={} dead={} rate={:.1}/s{}",
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
                    s.rate,
                    if st.code.is_empty() {
                        String::new()
                    } else {
                        format!(" code={}", st.code)
                    }
                );
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
