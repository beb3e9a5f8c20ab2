//! `flow`: the ESON user agent (FNUA), after figure 15 of the draft.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use flowd::agent::{self, Agent, NewProcessor};
use flowd::broker::{FlowName, FlowSettings};
use flowd::config::default_state_dir;
use flowd::engine::RunLimits;
use flowd::event::jsonl;
use flowd::wasm::{Host, HostConfig, Kind};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "flow", version, about = "The ESON command-line user agent")]
struct Cli {
    /// NATS URL(s) of the host's broker (default: $FLOWD_NATS_URL, or the local host's).
    #[arg(long, global = true, value_delimiter = ',')]
    nats: Vec<String>,
    /// State directory of the local host (to find it).
    #[arg(long, global = true, env = "FLOWD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a flow.
    Create {
        #[command(subcommand)]
        what: Create,
    },
    /// Delete a flow or a processor.
    Delete {
        #[command(subcommand)]
        what: Target,
    },
    /// List flows or processors.
    Get {
        #[command(subcommand)]
        what: Get,
    },
    /// Show one flow, processor or component.
    Describe {
        #[command(subcommand)]
        what: Describe,
    },
    /// Write events (JSON lines: CloudEvents, or raw JSON which is wrapped).
    Write {
        flow: FlowName,
        /// Events given inline; without them, read --file or stdin.
        events: Vec<String>,
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
    /// Read events of a flow as CloudEvents JSON lines.
    Read {
        flow: FlowName,
        /// From the first stored event (default: only new ones).
        #[arg(long)]
        from_start: bool,
        /// Stop after this many events.
        #[arg(long, short = 'n')]
        count: Option<usize>,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
        /// Without --follow, stop after this long without events (ms).
        #[arg(long, default_value_t = 1000)]
        idle_ms: u64,
    },
    /// Bridge processor: SRC -> DST.
    Replicate {
        src: FlowName,
        dst: FlowName,
        #[command(flatten)]
        processor: ProcessorArgs,
    },
    /// Collector processor: SRC... -> DST (the last flow is the destination).
    Collect {
        #[arg(num_args = 2.., required = true)]
        flows: Vec<FlowName>,
        #[command(flatten)]
        processor: ProcessorArgs,
    },
    /// Distributor processor: SRC -> DST... (the first flow is the source).
    Distribute {
        #[arg(num_args = 2.., required = true)]
        flows: Vec<FlowName>,
        #[command(flatten)]
        processor: ProcessorArgs,
    },
    /// Signal processor: --from SRC... --to DST...
    Signal {
        #[arg(long = "from", required = true)]
        from: Vec<FlowName>,
        #[arg(long = "to", required = true)]
        to: Vec<FlowName>,
        #[command(flatten)]
        processor: ProcessorArgs,
    },
    /// Pause a processor: it stops consuming; its flows keep accepting events.
    Pause {
        #[command(subcommand)]
        what: ProcessorRef,
    },
    /// Resume a paused processor where it stopped.
    Resume {
        #[command(subcommand)]
        what: ProcessorRef,
    },
    /// Update a processor in place: new configuration and/or component.
    Update {
        #[command(subcommand)]
        what: UpdateTarget,
    },
}

#[derive(Subcommand)]
enum Create {
    Flow {
        flow: FlowName,
        /// Drop events older than this (seconds; 0 keeps them).
        #[arg(long, default_value_t = 0)]
        max_age: u64,
        /// Drop the oldest events beyond this size (bytes; -1 unlimited).
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        max_bytes: i64,
        /// De-duplication window (seconds).
        #[arg(long, default_value_t = 120)]
        duplicate_window: u64,
    },
}

#[derive(Subcommand)]
enum Target {
    Flow { flow: FlowName },
    Processor { id: String },
}

#[derive(Subcommand)]
enum ProcessorRef {
    Processor { id: String },
}

#[derive(Subcommand)]
enum UpdateTarget {
    Processor {
        id: String,
        #[arg(long, short = 'c')]
        component: Option<PathBuf>,
        /// Replaces the whole configuration when given.
        #[arg(long = "config", short = 'C', value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Get {
    Flows,
    Processors,
}

#[derive(Subcommand)]
enum Describe {
    Flow {
        flow: FlowName,
    },
    Processor {
        id: String,
    },
    /// A processor component file: kind, world, digest, imports.
    Component {
        file: PathBuf,
    },
}

#[derive(Args)]
struct ProcessorArgs {
    /// The processor component (.wasm).
    #[arg(long, short = 'c')]
    component: PathBuf,
    /// Configuration entry (repeatable, order kept).
    #[arg(long = "config", short = 'C', value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Processor id (default: the kind and a random suffix).
    #[arg(long)]
    id: Option<String>,
    /// Flow for events that keep failing (default: <id>.deadletter.<first output>).
    #[arg(long)]
    dead_letter: Option<FlowName>,
    /// Events per call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    memory_mib: usize,
    #[arg(long, default_value_t = 100)]
    deadline_ms: u64,
    /// Attempts before an event is dead-lettered.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Tick interval of signal processors (ms).
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
}

fn parse_config(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--config `{kv}`: expected KEY=VALUE"))
        })
        .collect()
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("flow: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.output == Format::Json;
    if let Command::Describe {
        what: Describe::Component { file },
    } = &cli.command
    {
        return describe_component(file, json);
    }
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let urls = agent::discover_urls(&cli.nats, &state_dir)?;
    let agent = Agent::connect(&urls).await?;
    match cli.command {
        Command::Create {
            what:
                Create::Flow {
                    flow,
                    max_age,
                    max_bytes,
                    duplicate_window,
                },
        } => {
            let settings = FlowSettings {
                max_age_secs: max_age,
                max_bytes,
                duplicate_window_secs: duplicate_window,
                ..FlowSettings::default()
            };
            let info = agent.create_flow(&flow, &settings).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("created {}", info.uri);
            }
        }
        Command::Delete {
            what: Target::Flow { flow },
        } => {
            agent.delete_flow(&flow).await?;
            println!("deleted {}", flow.uri());
        }
        Command::Delete {
            what: Target::Processor { id },
        } => {
            agent.delete_processor(&id).await?;
            println!("deleted processor {id}");
        }
        Command::Get { what: Get::Flows } => {
            let flows = agent.flows().await?;
            if json {
                print_json(&flows)?;
            } else {
                println!("{:<50} {:>10} {:>12}", "FLOW", "EVENTS", "BYTES");
                for f in flows {
                    println!("{:<50} {:>10} {:>12}", f.name, f.events, f.bytes);
                }
            }
        }
        Command::Get {
            what: Get::Processors,
        } => {
            let processors = agent.processors().await?;
            if json {
                let list: Vec<_> = processors
                    .iter()
                    .map(|(spec, status)| serde_json::json!({"spec": spec, "status": status}))
                    .collect();
                print_json(&list)?;
            } else {
                println!(
                    "{:<24} {:<12} {:<9} {:>10} {:>10} {:>6}",
                    "ID", "KIND", "PHASE", "IN", "OUT", "DEAD"
                );
                for (spec, status) in processors {
                    let (phase, input, output, dead) = status
                        .map(|s| {
                            (
                                format!("{:?}", s.phase).to_lowercase(),
                                s.events_in,
                                s.events_out,
                                s.dead_lettered,
                            )
                        })
                        .unwrap_or(("unknown".into(), 0, 0, 0));
                    println!(
                        "{:<24} {:<12} {:<9} {:>10} {:>10} {:>6}",
                        spec.id, spec.kind, phase, input, output, dead
                    );
                }
            }
        }
        Command::Describe {
            what: Describe::Flow { flow },
        } => {
            let info = agent.describe_flow(&flow).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("uri={}", info.uri);
                println!("stream={}", info.stream);
                println!("subject={}", info.subject);
                println!("events={}", info.events);
                println!("bytes={}", info.bytes);
                println!("first_sequence={}", info.first_sequence);
                println!("last_sequence={}", info.last_sequence);
                println!("max_age_secs={}", info.settings.max_age_secs);
                println!("max_bytes={}", info.settings.max_bytes);
                println!(
                    "duplicate_window_secs={}",
                    info.settings.duplicate_window_secs
                );
            }
        }
        Command::Describe {
            what: Describe::Processor { id },
        } => {
            let (spec, status) = agent.processor(&id).await?;
            if json {
                print_json(&serde_json::json!({"spec": spec, "status": status}))?;
            } else {
                println!("id={}", spec.id);
                println!("kind={}", spec.kind);
                println!("component={}", spec.component);
                println!("inputs={}", join(&spec.inputs));
                println!("outputs={}", join(&spec.outputs));
                println!("dead_letter={}", spec.dead_letter);
                println!("paused={}", spec.paused);
                println!("generation={}", spec.generation);
                for (k, v) in &spec.config {
                    println!("config.{k}={v}");
                }
                if let Some(s) = status {
                    println!("phase={}", format!("{:?}", s.phase).to_lowercase());
                    println!("events_in={}", s.events_in);
                    println!("events_out={}", s.events_out);
                    println!("errors={}", s.errors);
                    println!("dead_lettered={}", s.dead_lettered);
                    if let Some(e) = s.last_error {
                        println!("last_error={e}");
                    }
                }
            }
        }
        Command::Describe {
            what: Describe::Component { .. },
        } => unreachable!("handled before connecting"),
        Command::Write { flow, events, file } => {
            let text = if !events.is_empty() {
                events.join("\n")
            } else if let Some(file) = file {
                std::fs::read_to_string(&file).with_context(|| file.display().to_string())?
            } else {
                let mut text = String::new();
                for line in std::io::stdin().lock().lines() {
                    text.push_str(&line?);
                    text.push('\n');
                }
                text
            };
            let events = jsonl::read(text.as_bytes(), jsonl::Wrap::default())
                .collect::<Result<Vec<_>, _>>()?;
            let published = agent.write(&flow, &events).await?;
            if json {
                print_json(
                    &serde_json::json!({"stored": published.stored, "duplicates": published.duplicates}),
                )?;
            } else {
                println!(
                    "wrote {} event(s) to {} ({} duplicate(s) ignored)",
                    published.stored,
                    flow.uri(),
                    published.duplicates
                );
            }
        }
        Command::Read {
            flow,
            from_start,
            count,
            follow,
            idle_ms,
        } => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            agent
                .read(
                    &flow,
                    from_start,
                    count,
                    follow,
                    Duration::from_millis(idle_ms),
                    |e| {
                        writeln!(out, "{}", jsonl::to_line(&e))?;
                        Ok(())
                    },
                )
                .await?;
        }
        Command::Replicate {
            src,
            dst,
            processor,
        } => create(&agent, Kind::Bridge, vec![src], vec![dst], processor, json).await?,
        Command::Collect {
            mut flows,
            processor,
        } => {
            let dst = flows.pop().into_iter().collect();
            create(&agent, Kind::Collector, flows, dst, processor, json).await?
        }
        Command::Distribute {
            mut flows,
            processor,
        } => {
            let src = vec![flows.remove(0)];
            create(&agent, Kind::Distributor, src, flows, processor, json).await?
        }
        Command::Signal {
            from,
            to,
            processor,
        } => create(&agent, Kind::Signal, from, to, processor, json).await?,
        Command::Pause {
            what: ProcessorRef::Processor { id },
        } => {
            agent.set_paused(&id, true).await?;
            println!("paused processor {id}");
        }
        Command::Resume {
            what: ProcessorRef::Processor { id },
        } => {
            agent.set_paused(&id, false).await?;
            println!("resumed processor {id}");
        }
        Command::Update {
            what:
                UpdateTarget::Processor {
                    id,
                    component,
                    config,
                },
        } => {
            let bytes = component
                .map(|f| std::fs::read(&f).with_context(|| f.display().to_string()))
                .transpose()?;
            let config = (!config.is_empty())
                .then(|| parse_config(&config))
                .transpose()?;
            if bytes.is_none() && config.is_none() {
                bail!("nothing to update: give --component and/or --config");
            }
            let spec = agent.update_processor(&id, config, bytes).await?;
            println!("updated processor {id} (generation {})", spec.generation);
        }
    }
    Ok(())
}

fn join(flows: &[FlowName]) -> String {
    flows
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

async fn create(
    agent: &Agent,
    kind: Kind,
    inputs: Vec<FlowName>,
    outputs: Vec<FlowName>,
    args: ProcessorArgs,
    json: bool,
) -> Result<()> {
    let component =
        std::fs::read(&args.component).with_context(|| args.component.display().to_string())?;
    let id = args
        .id
        .unwrap_or_else(|| format!("{kind}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let spec = agent
        .create_processor(NewProcessor {
            id,
            kind,
            component,
            config: parse_config(&args.config)?,
            inputs,
            outputs,
            dead_letter: args.dead_letter,
            limits: RunLimits {
                memory_mib: args.memory_mib,
                deadline_ms: args.deadline_ms,
                batch: args.batch,
                max_attempts: args.max_attempts,
                tick_ms: args.tick_ms,
            },
        })
        .await?;
    if json {
        print_json(&spec)?;
    } else {
        println!("created {} processor {}", spec.kind, spec.id);
    }
    Ok(())
}

fn describe_component(file: &PathBuf, json: bool) -> Result<()> {
    let host = Host::new(HostConfig {
        max_instances: 2,
        ..HostConfig::default()
    })?;
    let component = host
        .load_file(file)
        .with_context(|| file.display().to_string())?;
    if json {
        print_json(&serde_json::json!({
            "file": file,
            "kind": component.kind(),
            "world": component.kind().world(),
            "digest": component.digest(),
            "size": component.size(),
            "imports": component.imports(),
        }))
    } else {
        println!("file:    {}", file.display());
        println!("kind:    {}", component.kind());
        println!("world:   {}", component.kind().world());
        println!("digest:  {}", component.digest());
        println!("size:    {} bytes", component.size());
        println!("imports: {}", component.imports().join(", "));
        Ok(())
    }
}
