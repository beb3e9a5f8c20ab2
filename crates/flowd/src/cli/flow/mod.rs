//! `flow`: the ESON user agent (FNUA), after figure 15 of the draft. Every
//! command is one FNAP exchange with an FNAA (see `flowd::user_agent` for
//! which one and how it logs in).

use crate::config::default_state_dir;
use crate::user_agent::{self, Overrides, TlsMode, UserAgentConfig};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use flowd_core::{FlowName, NamespaceName};
use flowd_core::{FlowOptions, Right};
use flowd_fnap::Client;
use flowd_fnap::command::{Command as Fnap, Start};
use flowd_fnap::data::{Outcome as _, ProcessorUpdated, SubscribeReply, Written};
use flowd_wasm::{Host, HostConfig, Kind};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

mod management;

#[derive(Parser)]
#[command(name = "flow", version, about = "The ESON command-line user agent")]
struct Cli {
    /// User agent configuration (default: $FLOW_CONFIG or ~/.config/flow/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Agent (FNAA) of the configuration to use.
    #[arg(long, global = true)]
    agent: Option<String>,
    /// FNAP address `host:port` (overrides the agent's).
    #[arg(long, global = true, env = "FLOW_ADDRESS")]
    address: Option<String>,
    /// Account name (overrides the agent's).
    #[arg(long, short = 'u', global = true, env = "FLOW_USER")]
    user: Option<String>,
    /// Password (better: $FLOW_PASSWORD).
    #[arg(long, global = true, env = "FLOW_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Log in anonymously (public flows, read only).
    #[arg(long, global = true)]
    anonymous: bool,
    /// TLS: none, starttls or implicit.
    #[arg(long, global = true, value_enum)]
    tls: Option<Tls>,
    /// Certificate(s) to trust for TLS (PEM).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Management API (gRPC) address, `http://host:port` (default: the agent's, or the local host's).
    #[arg(long, global = true, env = "FLOW_API")]
    api: Option<String>,
    /// State directory of the local host (to find it when no agent is configured).
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

#[derive(Clone, Copy, ValueEnum)]
enum Tls {
    None,
    Starttls,
    Implicit,
}

#[derive(Subcommand)]
enum Command {
    /// Create a namespace or a flow.
    Create {
        #[command(subcommand)]
        what: Create,
    },
    /// Delete a namespace, a flow or a processor.
    Delete {
        #[command(subcommand)]
        what: Target,
    },
    /// List flows, namespaces, processors, subscriptions, agents or brokers.
    Get {
        #[command(subcommand)]
        what: Get,
    },
    /// Show one flow, namespace, processor, agent, broker or component.
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
        /// From this stream sequence.
        #[arg(long, conflicts_with = "from_start")]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
    },
    /// Subscribe to a flow; with --local, also feed the subscription into a local flow.
    Subscribe {
        remote: FlowName,
        #[arg(long)]
        local: Option<FlowName>,
    },
    /// Start a processor project: the kind's skeleton, the SDK, a sample
    /// test case; it builds with one command and passes `flow test`.
    New {
        /// The project's name (its directory unless --dir).
        name: String,
        /// bridge, collector, distributor or signal.
        #[arg(long, short = 'k')]
        kind: crate::scaffold::Kind,
        /// The language: rust, python, js, c or go.
        #[arg(long, short = 'l', default_value = "rust")]
        lang: crate::scaffold::Lang,
        /// Where to create it (default: ./<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a processor project's fixture tests (flow.toml, tests/<case>/):
    /// each output compared with its expected file; exit 1 on a mismatch
    /// or a failed event (docs/authoring.md).
    Test {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Test this component instead of the one flow.toml names.
        #[arg(long, short = 'c')]
        component: Option<PathBuf>,
        /// Only the cases whose name contains this.
        #[arg(long)]
        case: Option<String>,
        /// Write what each output emitted as its expected file.
        #[arg(long)]
        update: bool,
    },
    /// Watch a processor project: on every change build it, run its
    /// fixture tests and, when both pass, swap the component into a running
    /// processor, keeping its position and state (docs/authoring.md).
    Dev {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The processor to swap the component into.
        #[arg(
            long,
            short = 'p',
            required_unless_present = "pipeline",
            conflicts_with = "pipeline"
        )]
        processor: Option<String>,
        /// Or the pipeline whose step (--step) gets the component: the
        /// applied manifest is applied again with the step pointed at the
        /// build's digest.
        #[arg(long, requires = "step")]
        pipeline: Option<String>,
        /// The step of --pipeline.
        #[arg(long, requires = "pipeline")]
        step: Option<String>,
        /// How often the files are looked at, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// One build, test and swap, then exit (status 1 if one failed).
        #[arg(long)]
        once: bool,
    },
    /// Cancel a subscription copy (the flow SUBSCRIBE returned).
    Unsubscribe { copy: FlowName },
    /// Grant an account a right (read, write, admin) on a namespace.
    Grant {
        user: String,
        right: String,
        namespace: NamespaceName,
    },
    /// Take an account's right on a namespace away.
    Revoke {
        user: String,
        namespace: NamespaceName,
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
    /// Pause a processor or subscription: it stops consuming; flows keep accepting events.
    Pause {
        #[command(subcommand)]
        what: Pausable,
    },
    /// Resume a paused processor or subscription where it stopped.
    Resume {
        #[command(subcommand)]
        what: Pausable,
    },
    /// Stop a subscription for good.
    Stop {
        #[command(subcommand)]
        what: Stoppable,
    },
    /// Update a processor in place: new configuration and/or component.
    Update {
        #[command(subcommand)]
        what: UpdateTarget,
    },
    /// Components in the host's registry (management API).
    Component {
        #[command(subcommand)]
        what: management::ComponentCommand,
    },
    /// The processor log of a processor, a fused step or every step of a
    /// pipeline: failures and what guests said (management API).
    Logs {
        /// A processor id, a fused step's id or a pipeline's name.
        name: String,
        /// Keep printing new records as they come.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only records this recent (`30s`, `10m`, `2h`, `1d`) or from
        /// this time on (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Dead letters of a processor, a fused step or a pipeline: list,
    /// show, replay, discard (management API).
    #[command(name = "deadletter")]
    DeadLetter {
        #[command(subcommand)]
        what: management::DeadLetterCommand,
    },
    /// Create or change a pipeline from its manifest (YAML; `-` reads stdin).
    Apply {
        #[arg(long = "file", short = 'f')]
        file: PathBuf,
        /// Validate and show what would change; apply nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum Create {
    Namespace {
        namespace: NamespaceName,
        /// Owner (default: you).
        #[arg(long)]
        owner: Option<String>,
        /// New flows in it are readable by anyone.
        #[arg(long)]
        public: bool,
    },
    Flow {
        flow: FlowName,
        /// Readable by anyone, also anonymously.
        #[arg(long)]
        public: bool,
        /// Only for accounts with a right (default: as its namespace).
        #[arg(long, conflicts_with = "public")]
        private: bool,
        /// Drop events older than this (seconds; 0 keeps them).
        #[arg(long)]
        max_age: Option<u64>,
        /// Drop the oldest events beyond this size (bytes; -1 unlimited).
        #[arg(long, allow_negative_numbers = true)]
        max_bytes: Option<i64>,
        /// De-duplication window (seconds).
        #[arg(long)]
        duplicate_window: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Target {
    Namespace {
        namespace: NamespaceName,
    },
    Flow {
        flow: FlowName,
    },
    Processor {
        id: String,
    },
    /// A pipeline and all its steps.
    Pipeline {
        name: String,
    },
}

#[derive(Subcommand)]
enum Pausable {
    Processor { id: String },
    Subscription { local: FlowName },
}

#[derive(Subcommand)]
enum Stoppable {
    Subscription { local: FlowName },
}

#[derive(Subcommand)]
enum UpdateTarget {
    Processor {
        id: String,
        #[arg(long, short = 'c')]
        component: Option<PathBuf>,
        /// Replaces the whole processor configuration when given.
        #[arg(long = "set", short = 'C', value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Get {
    Flows {
        namespace: Option<NamespaceName>,
    },
    Namespaces {
        parent: Option<NamespaceName>,
    },
    Processors,
    Subscriptions,
    /// Subscribers of one of your flows.
    Subscribers {
        flow: FlowName,
    },
    /// The participant's live hosts (FNAAs on the same broker), with their
    /// load; with --configured, the agents of the user agent's
    /// configuration instead.
    Agents {
        #[arg(long)]
        configured: bool,
    },
    /// The broker of the agent.
    Brokers,
    /// Pipelines, with how many steps run.
    Pipelines,
}

#[derive(Subcommand)]
enum Describe {
    Flow {
        flow: FlowName,
    },
    Namespace {
        namespace: NamespaceName,
    },
    Processor {
        id: String,
    },
    /// The agent: its greeting and capabilities.
    Agent,
    /// The agent's flow events broker.
    Broker,
    /// What the Flow Name Service says of a namespace: its FNAA.
    Nameserver {
        namespace: NamespaceName,
        /// DNS server to ask (`ip:port`; default: the system's resolver).
        #[arg(long)]
        nameserver: Option<std::net::SocketAddr>,
    },
    /// A processor component file: kind, world, digest, imports.
    Component {
        file: PathBuf,
    },
    /// A pipeline: its steps, their state and rates.
    Pipeline {
        name: String,
    },
}

#[derive(Args)]
struct ProcessorArgs {
    /// The processor component (.wasm); uploaded to the host.
    #[arg(long, short = 'c')]
    component: PathBuf,
    /// Processor configuration entry (repeatable, order kept).
    #[arg(long = "set", short = 'C', value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// Processor id (default: the kind and a random suffix).
    #[arg(long)]
    id: Option<String>,
    /// Flow for events that keep failing (default: <id>.deadletter.<first output>).
    #[arg(long)]
    dead_letter: Option<FlowName>,
    /// Events per call.
    #[arg(long)]
    batch: Option<u64>,
    #[arg(long)]
    memory_mib: Option<u64>,
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Attempts before an event is dead-lettered.
    #[arg(long)]
    max_attempts: Option<u64>,
    /// Tick interval of signal processors (ms).
    #[arg(long)]
    tick_ms: Option<u64>,
}

fn parse_config(pairs: &[String]) -> Result<Vec<(String, String)>> {
    crate::testing::config_pairs("--set", pairs)
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `key=value` lines as a JSON object (repeated keys become arrays).
fn pairs_json(lines: &[String]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for line in lines {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = serde_json::Value::String(v.to_owned());
        match map.get_mut(k) {
            Some(serde_json::Value::Array(a)) => a.push(v),
            Some(old) => *old = serde_json::Value::Array(vec![old.take(), v]),
            None => {
                map.insert(k.to_owned(), v);
            }
        }
    }
    serde_json::Value::Object(map)
}

/// Runs `flow` with the process's arguments; exits 1 with the error's
/// first line on failure.
pub fn main() {
    quiet_on_closed_stdout();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(Cli::parse())));
    if let Err(e) = outcome {
        let text = format!("{e:#}");
        eprintln!("flow: {}", text.lines().next().unwrap_or_default());
        std::process::exit(1);
    }
}

/// `flow ... | head`: when the reader of stdout goes away, `println!`
/// panics on the broken pipe; exit quietly instead, with the status a
/// process killed by SIGPIPE has (as `git` or `cat` would), rather than a
/// panic message and backtrace.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// The flow or namespace a command is about (to pick the agent).
fn subject(command: &Command) -> Option<String> {
    let s = match command {
        Command::Create {
            what: Create::Namespace { namespace, .. },
        } => namespace.to_string(),
        Command::Create {
            what: Create::Flow { flow, .. },
        } => flow.to_string(),
        Command::Delete {
            what: Target::Namespace { namespace },
        } => namespace.to_string(),
        Command::Delete {
            what: Target::Flow { flow },
        } => flow.to_string(),
        Command::Describe {
            what: Describe::Flow { flow },
        } => flow.to_string(),
        Command::Describe {
            what: Describe::Namespace { namespace },
        } => namespace.to_string(),
        Command::Get {
            what: Get::Flows {
                namespace: Some(ns),
            },
        } => ns.to_string(),
        Command::Write { flow, .. } | Command::Read { flow, .. } => flow.to_string(),
        Command::Subscribe {
            local: Some(local), ..
        } => local.to_string(),
        Command::Subscribe { remote, .. } => remote.to_string(),
        Command::Grant { namespace, .. } | Command::Revoke { namespace, .. } => {
            namespace.to_string()
        }
        Command::Replicate { dst, .. } => dst.to_string(),
        Command::Collect { flows, .. } | Command::Distribute { flows, .. } => {
            flows.last()?.to_string()
        }
        Command::Signal { to, .. } => to.first()?.to_string(),
        _ => return None,
    };
    Some(s)
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.output == Format::Json;
    let config_path = cli.config.clone().or_else(UserAgentConfig::default_path);
    let config = match &config_path {
        Some(path) => UserAgentConfig::load(path)?,
        None => UserAgentConfig::default(),
    };
    match &cli.command {
        Command::Describe {
            what: Describe::Component { file },
        } => {
            return describe_component(file, json);
        }
        Command::New {
            name,
            kind,
            lang,
            dir,
        } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            let written = crate::scaffold::create(&dir, name, *kind, *lang)?;
            println!("created {} ({} files)", dir.display(), written.len());
            println!("  cd {}", dir.display());
            if let Some(build) = crate::testing::project(&dir)?.processor.build {
                println!("  {build}");
            }
            println!("  flow test");
            return Ok(());
        }
        Command::Test {
            dir,
            component,
            case,
            update,
        } => {
            let options = crate::testing::Options {
                component: component.clone(),
                filter: case.clone(),
                update: *update,
                cache_dir: crate::cli::default_cache_dir(),
            };
            // Off the async thread: a guest's blocking WASI calls (a write to
            // stderr) enter the runtime themselves.
            let dir = dir.clone();
            return tokio::task::spawn_blocking(move || test(&dir, &options, json))
                .await
                .context("the test run stopped")?;
        }
        Command::Get {
            what: Get::Agents { configured: true },
        } => {
            if json {
                return print_json(&config.agents);
            }
            for a in &config.agents {
                println!(
                    "{:<20} {:<30} {}",
                    a.name,
                    a.address,
                    a.username.as_deref().unwrap_or("(anonymous)")
                );
            }
            return Ok(());
        }
        Command::Describe {
            what:
                Describe::Nameserver {
                    namespace,
                    nameserver,
                },
        } => {
            let discovery = flowd_fns::Discovery::new(*nameserver)?;
            let (host, port, addresses) = discovery.namespace_agent(namespace.as_str()).await?;
            let addresses: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
            if json {
                return print_json(&serde_json::json!({
                    "namespace": namespace, "agent": host, "port": port, "addresses": addresses,
                }));
            }
            println!("namespace={namespace}");
            println!("agent={host}");
            println!("port={port}");
            println!("addresses={}", addresses.join(","));
            return Ok(());
        }
        _ => {}
    }
    let entry = config.pick(cli.agent.as_deref(), subject(&cli.command).as_deref())?;
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let overrides = Overrides {
        address: cli.address.clone(),
        username: cli.user.clone(),
        password: cli.password.clone(),
        tls: cli.tls.map(|t| match t {
            Tls::None => TlsMode::None,
            Tls::Starttls => TlsMode::StartTls,
            Tls::Implicit => TlsMode::Implicit,
        }),
        ca: cli.ca.clone(),
        anonymous: cli.anonymous,
    };
    let management = match cli.command {
        Command::Component { what } => Ok(management::Action::Component(what)),
        Command::Apply { file, dry_run } => Ok(management::Action::Apply { file, dry_run }),
        Command::DeadLetter { what } => Ok(management::Action::DeadLetter(what)),
        Command::Logs {
            name,
            follow,
            since,
        } => Ok(management::Action::Logs {
            name,
            follow,
            since_ms: since.as_deref().map(management::parse_since).transpose()?,
        }),
        Command::Get {
            what: Get::Pipelines,
        } => Ok(management::Action::GetPipelines),
        Command::Describe {
            what: Describe::Pipeline { name },
        } => Ok(management::Action::DescribePipeline(name)),
        Command::Delete {
            what: Target::Pipeline { name },
        } => Ok(management::Action::DeletePipeline(name)),
        other => Err(other),
    };
    if let Err(Command::Dev {
        dir,
        processor,
        pipeline,
        step,
        interval_ms,
        once,
    }) = &management
    {
        let target = match (processor, pipeline, step) {
            (Some(id), _, _) => DevTarget::Processor(id.clone()),
            (None, Some(pipeline), Some(step)) => DevTarget::Step {
                pipeline: pipeline.clone(),
                step: step.clone(),
            },
            _ => bail!("flow dev: give -p <processor>, or --pipeline <name> --step <step>"),
        };
        let session = || user_agent::connect(entry, &state_dir, &overrides);
        let api = || user_agent::api_client(entry, &state_dir, &overrides, cli.api.as_deref());
        return dev(
            dir,
            &target,
            Duration::from_millis((*interval_ms).max(50)),
            *once,
            session,
            api,
        )
        .await;
    }
    let command = match management {
        Ok(action) => {
            let api =
                user_agent::api_client(entry, &state_dir, &overrides, cli.api.as_deref()).await?;
            return management::execute(&api, action, json).await;
        }
        Err(command) => command,
    };
    let mut client = user_agent::connect(entry, &state_dir, &overrides).await?;
    execute(&mut client, command, json).await?;
    let _ = client.quit().await;
    Ok(())
}

/// Sends a command and prints its one-line reply text (after `OK`).
/// The agent's `CAPABILITIES`, typed.
async fn capabilities(client: &mut Client) -> Result<flowd_fnap::Capabilities> {
    let (lines, _) = client.data(&Fnap::Capabilities.encode()).await?;
    flowd_fnap::Capabilities::from_lines(&lines).context("the agent's CAPABILITIES")
}

async fn simple(client: &mut Client, command: Fnap, json: bool) -> Result<()> {
    let reply = client.execute(&command).await?;
    let text = reply.text.strip_prefix("OK").unwrap_or(&reply.text).trim();
    if json {
        print_json(&serde_json::json!({"ok": true, "reply": text}))
    } else {
        println!("{text}");
        Ok(())
    }
}

/// Sends a command answered with `key=value` lines and prints them.
async fn described(client: &mut Client, command: Fnap, json: bool) -> Result<()> {
    let (lines, _) = client.data(&command.encode()).await?;
    if json {
        print_json(&pairs_json(&lines))
    } else {
        for line in lines {
            println!("{line}");
        }
        Ok(())
    }
}

/// Sends a command answered with one item per line and prints them.
async fn listed(
    client: &mut Client,
    command: Fnap,
    json: bool,
    header: Option<&str>,
) -> Result<()> {
    let (lines, _) = client.data(&command.encode()).await?;
    if json {
        print_json(&lines)
    } else {
        if let Some(h) = header
            && !lines.is_empty()
        {
            println!("{h}");
        }
        for line in lines {
            println!("{line}");
        }
        Ok(())
    }
}

async fn execute(client: &mut Client, command: Command, json: bool) -> Result<()> {
    match command {
        Command::Component { .. }
        | Command::Apply { .. }
        | Command::Logs { .. }
        | Command::DeadLetter { .. }
        | Command::Delete {
            what: Target::Pipeline { .. },
        } => bail!("this command goes over the management API"),
        Command::Test { .. } | Command::New { .. } => bail!("this command runs locally"),
        Command::Dev { .. } => bail!("flow dev runs its own sessions"),
        Command::Create {
            what:
                Create::Namespace {
                    namespace,
                    owner,
                    public,
                },
        } => {
            client
                .execute(&Fnap::CreateNamespace {
                    namespace: namespace.clone(),
                    owner,
                    public,
                })
                .await?;
            if json {
                print_json(&serde_json::json!({"namespace": namespace}))?;
            } else {
                println!("created namespace {namespace}");
            }
        }
        Command::Create {
            what:
                Create::Flow {
                    flow,
                    public,
                    private,
                    max_age,
                    max_bytes,
                    duplicate_window,
                },
        } => {
            let options = FlowOptions {
                // `--private` wins, as the server reads the last of the two.
                public: (public || private).then_some(!private),
                max_age_secs: max_age,
                max_bytes,
                duplicate_window_secs: duplicate_window,
            };
            client
                .execute(&Fnap::CreateFlow {
                    flow: flow.clone(),
                    options,
                })
                .await?;
            if json {
                print_json(&serde_json::json!({"flow": flow, "uri": flow.uri()}))?;
            } else {
                println!("created {}", flow.uri());
            }
        }
        Command::Delete {
            what: Target::Namespace { namespace },
        } => {
            client
                .execute(&Fnap::DeleteNamespace(namespace.clone()))
                .await?;
            println!("deleted namespace {namespace}");
        }
        Command::Delete {
            what: Target::Flow { flow },
        } => {
            client.execute(&Fnap::DeleteFlow(flow.clone())).await?;
            println!("deleted {}", flow.uri());
        }
        Command::Delete {
            what: Target::Processor { id },
        } => {
            client.execute(&Fnap::DeleteProcessor(id.clone())).await?;
            println!("deleted processor {id}");
        }
        Command::Get { what } => match what {
            Get::Flows { namespace } => {
                listed(client, Fnap::ListFlows(namespace), json, None).await?
            }
            Get::Namespaces { parent } => {
                listed(client, Fnap::ListNamespaces(parent), json, None).await?
            }
            Get::Processors => {
                listed(
                    client,
                    Fnap::ListProcessors,
                    json,
                    Some("ID KIND PHASE IN OUT DEAD"),
                )
                .await?
            }
            Get::Subscriptions => {
                listed(
                    client,
                    Fnap::ListSubscriptions,
                    json,
                    Some("LOCAL REMOTE COPY BRIDGE"),
                )
                .await?
            }
            Get::Subscribers { flow } => {
                listed(
                    client,
                    Fnap::ListSubscribers(flow),
                    json,
                    Some("COPY ACCOUNT"),
                )
                .await?
            }
            Get::Brokers => {
                let brokers: Vec<String> = capabilities(client)
                    .await?
                    .brokers
                    .iter()
                    .map(|b| format!("{} {}", b.kind, b.urls.join(",")))
                    .collect();
                if json {
                    print_json(&brokers)?;
                } else {
                    for b in brokers {
                        println!("{b}");
                    }
                }
            }
            Get::Agents { .. } => {
                listed(
                    client,
                    Fnap::ListAgents,
                    json,
                    Some("ID FQDN FNAP API INSTANCES EVENTS RATE BEAT"),
                )
                .await?
            }
            Get::Pipelines => bail!("pipelines are listed over the management API"),
        },
        Command::Describe { what } => match what {
            Describe::Pipeline { .. } => bail!("pipelines are described over the management API"),
            Describe::Flow { flow } => described(client, Fnap::DescribeFlow(flow), json).await?,
            Describe::Namespace { namespace } => {
                described(client, Fnap::DescribeNamespace(namespace), json).await?
            }
            Describe::Processor { id } => {
                described(client, Fnap::DescribeProcessor(id), json).await?
            }
            Describe::Agent => {
                let greeting = client.greeting().text.clone();
                let (lines, _) = client.data(&Fnap::Capabilities.encode()).await?;
                if json {
                    print_json(&serde_json::json!({"greeting": greeting, "capabilities": lines}))?;
                } else {
                    println!("greeting={greeting}");
                    for l in lines {
                        println!("capability={l}");
                    }
                }
            }
            Describe::Broker => {
                for broker in capabilities(client).await?.brokers {
                    println!("type={}", broker.kind);
                    println!("server={}", broker.urls.join(","));
                }
            }
            Describe::Nameserver { .. } | Describe::Component { .. } => {
                unreachable!("answered without a connection")
            }
        },
        Command::Write { flow, events, file } => {
            let lines: Vec<String> = if !events.is_empty() {
                events
            } else if let Some(path) = file {
                let text =
                    std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
                text.lines().map(str::to_owned).collect()
            } else {
                std::io::stdin().lock().lines().collect::<Result<_, _>>()?
            };
            let lines: Vec<String> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
            let Written { stored, duplicates } = client.write_flow(&flow, &lines).await?;
            if json {
                print_json(&serde_json::json!({"stored": stored, "duplicates": duplicates}))?;
            } else {
                println!(
                    "wrote {} event(s) to {flow} ({stored} stored, {duplicates} duplicate(s))",
                    lines.len()
                );
            }
        }
        Command::Read {
            flow,
            from_start,
            from,
            count,
            follow,
        } => {
            let line = Fnap::ReadFlow {
                flow,
                start: match (from_start, from) {
                    (true, _) => Start::First,
                    (false, Some(n)) => Start::Sequence(n),
                    (false, None) => Start::New,
                },
                count,
                follow,
                sequences: false,
            }
            .encode();
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let mut broken = false;
            client
                .read(&line, |event| {
                    broken = writeln!(out, "{event}").and_then(|()| out.flush()).is_err();
                    !broken
                })
                .await?;
        }
        Command::Subscribe { remote, local } => {
            let line = Fnap::Subscribe {
                remote: remote.clone(),
                local: local.clone(),
            }
            .encode();
            let (lines, _) = client.data(&line).await?;
            let copy = SubscribeReply::decode(&lines)?.copy;
            if json {
                print_json(&serde_json::json!({"remote": remote, "local": local, "copy": copy}))?;
            } else {
                match local {
                    Some(local) => println!("{local} SUBSCRIBED TO {copy}"),
                    None => println!("SUBSCRIBED TO {copy}"),
                }
            }
        }
        Command::Unsubscribe { copy } => simple(client, Fnap::Unsubscribe(copy), json).await?,
        Command::Grant {
            user,
            right,
            namespace,
        } => {
            let right = Right::parse(&right)
                .with_context(|| format!("`{right}`: use read, write or admin"))?;
            simple(
                client,
                Fnap::Grant {
                    user,
                    right,
                    namespace,
                },
                json,
            )
            .await?
        }
        Command::Revoke { user, namespace } => {
            simple(client, Fnap::Revoke { user, namespace }, json).await?
        }
        Command::Replicate {
            src,
            dst,
            processor,
        } => create(client, Kind::Bridge, vec![src], vec![dst], processor, json).await?,
        Command::Collect {
            mut flows,
            processor,
        } => {
            let dst = flows.pop().into_iter().collect();
            create(client, Kind::Collector, flows, dst, processor, json).await?
        }
        Command::Distribute {
            mut flows,
            processor,
        } => {
            let src = vec![flows.remove(0)];
            create(client, Kind::Distributor, src, flows, processor, json).await?
        }
        Command::Signal {
            from,
            to,
            processor,
        } => create(client, Kind::Signal, from, to, processor, json).await?,
        Command::Pause {
            what: Pausable::Processor { id },
        } => {
            client.execute(&Fnap::PauseProcessor(id.clone())).await?;
            println!("paused processor {id}");
        }
        Command::Resume {
            what: Pausable::Processor { id },
        } => {
            client.execute(&Fnap::ResumeProcessor(id.clone())).await?;
            println!("resumed processor {id}");
        }
        Command::Pause {
            what: Pausable::Subscription { local },
        } => simple(client, Fnap::PauseSubscription(local), json).await?,
        Command::Resume {
            what: Pausable::Subscription { local },
        } => simple(client, Fnap::ResumeSubscription(local), json).await?,
        Command::Stop {
            what: Stoppable::Subscription { local },
        } => simple(client, Fnap::StopSubscription(local), json).await?,
        Command::Update {
            what:
                UpdateTarget::Processor {
                    id,
                    component,
                    settings,
                },
        } => {
            let mut body = Vec::new();
            if let Some(path) = component {
                let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
                body.push(format!("component={}", client.put_component(&bytes).await?));
            }
            for (k, v) in parse_config(&settings)? {
                body.push(format!("config.{k}={v}"));
            }
            if body.is_empty() {
                bail!("nothing to update: give --component and/or --set");
            }
            let reply = client
                .block(&Fnap::UpdateProcessor(id.clone()).encode(), &body)
                .await?;
            let ProcessorUpdated { generation, .. } = ProcessorUpdated::from_reply(&reply)?;
            println!("updated processor {id} (generation {generation})");
        }
    }
    Ok(())
}

async fn create(
    client: &mut Client,
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
    let digest = client.put_component(&component).await?;
    let mut body = vec![format!("kind={kind}"), format!("component={digest}")];
    body.extend(inputs.iter().map(|f| format!("input={f}")));
    body.extend(outputs.iter().map(|f| format!("output={f}")));
    if let Some(dl) = &args.dead_letter {
        body.push(format!("dead-letter={dl}"));
    }
    for (k, v) in parse_config(&args.settings)? {
        body.push(format!("config.{k}={v}"));
    }
    for (name, value) in [
        ("batch", args.batch),
        ("memory-mib", args.memory_mib),
        ("deadline-ms", args.deadline_ms),
        ("max-attempts", args.max_attempts),
        ("tick-ms", args.tick_ms),
    ] {
        if let Some(v) = value {
            body.push(format!("limit.{name}={v}"));
        }
    }
    client
        .block(&Fnap::CreateProcessor(id.clone()).encode(), &body)
        .await?;
    if json {
        print_json(&serde_json::json!({"id": id, "kind": kind, "component": digest}))?;
    } else {
        println!("created {kind} processor {id}");
    }
    Ok(())
}

/// `flow dev`: build, test and swap at the start and after every change of
/// the project's files, until interrupted.
/// What `flow dev` swaps its builds into.
enum DevTarget {
    Processor(String),
    Step { pipeline: String, step: String },
}

impl std::fmt::Display for DevTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DevTarget::Processor(id) => write!(f, "processor {id}"),
            DevTarget::Step { pipeline, step } => write!(f, "step {step} of pipeline {pipeline}"),
        }
    }
}

async fn dev<F, Fut, A, AFut>(
    dir: &std::path::Path,
    target: &DevTarget,
    interval: Duration,
    once: bool,
    session: F,
    api: A,
) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Client, user_agent::UserAgentError>>,
    A: Fn() -> AFut,
    AFut: std::future::Future<Output = Result<crate::api::client::ApiClient>>,
{
    let project = crate::testing::project(dir)?;
    let component = dir.join(&project.processor.component);
    let mut watch = crate::dev::Watch::new(dir, vec![component.clone()])?;
    println!(
        "flow dev: watching {}; a change is built, tested and swapped into {target}",
        dir.display()
    );
    let mut running: Option<String> = None;
    loop {
        let owned = dir.to_path_buf();
        let built = tokio::task::spawn_blocking(move || dev_build(&owned))
            .await
            .unwrap_or_else(|e| Err(format!("the build stopped: {e}")));
        // What the build wrote is not a change to build again; an edit from
        // here on is (made while the tests run or the component is swapped,
        // it starts the next round).
        let _ = watch.changed()?;
        let owned = dir.to_path_buf();
        let built = match built {
            Ok(()) => tokio::task::spawn_blocking(move || dev_test(&owned))
                .await
                .unwrap_or_else(|e| Err(format!("the tests stopped: {e}"))),
            Err(why) => Err(why),
        };
        let outcome = match (built, target) {
            (Ok(bytes), DevTarget::Processor(id)) => {
                dev_swap(&session, id, &bytes, &mut running).await
            }
            (Ok(bytes), DevTarget::Step { pipeline, step }) => {
                dev_swap_step(&session, &api, pipeline, step, &bytes, &mut running).await
            }
            (Err(why), _) => Err(why),
        };
        if let Err(why) = &outcome {
            println!("{why}");
            println!("{target} keeps running the component it had");
        }
        if once {
            return outcome.map_err(|_| anyhow::anyhow!("flow dev --once: nothing swapped"));
        }
        loop {
            tokio::time::sleep(interval).await;
            if watch.changed()? {
                // Editors write in several steps: let them finish.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = watch.changed()?;
                break;
            }
        }
        println!("changed: building");
    }
}

/// Builds the project, or says why not (printed by the caller).
fn dev_build(dir: &std::path::Path) -> Result<(), String> {
    let project = crate::testing::project(dir).map_err(|e| format!("{e:#}"))?;
    if let Some(command) = &project.processor.build {
        let took = crate::dev::build(dir, command).map_err(|e| format!("build failed: {e}"))?;
        println!("built in {:.1}s", took.as_secs_f64());
    }
    Ok(())
}

/// Runs the project's tests on what it built: the component's bytes, or
/// why not (printed by the caller).
fn dev_test(dir: &std::path::Path) -> Result<Vec<u8>, String> {
    let project = crate::testing::project(dir).map_err(|e| format!("{e:#}"))?;
    if dir.join("tests").is_dir() {
        let options = crate::testing::Options {
            cache_dir: crate::cli::default_cache_dir(),
            ..Default::default()
        };
        let reports =
            crate::testing::run(dir, &options).map_err(|e| format!("tests failed: {e:#}"))?;
        let failed: Vec<&crate::testing::CaseReport> =
            reports.iter().filter(|r| !r.passed()).collect();
        if !failed.is_empty() {
            let mut text = format!("tests failed: {} of {} cases", failed.len(), reports.len());
            for report in failed {
                text.push_str(&format!("\n  {}:", report.name));
                for problem in &report.problems {
                    for line in problem.lines() {
                        text.push_str(&format!("\n    {line}"));
                    }
                }
            }
            return Err(text);
        }
        println!("tests passed: {} cases", reports.len());
    } else {
        println!("no tests/ directory: the component is swapped untested");
    }
    let component = dir.join(&project.processor.component);
    std::fs::read(&component).map_err(|e| format!("{}: {e}", component.display()))
}

/// Uploads the component and applies the pipeline's manifest again with
/// the step pointed at its digest (the rest of the manifest as applied):
/// the host updates that step in place between two batches, keeping its
/// position and keyed state. `flow apply -f` of the released manifest puts
/// the released component back.
async fn dev_swap_step<F, Fut, A, AFut>(
    session: &F,
    api: &A,
    pipeline: &str,
    step: &str,
    bytes: &[u8],
    running: &mut Option<String>,
) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Client, user_agent::UserAgentError>>,
    A: Fn() -> AFut,
    AFut: std::future::Future<Output = Result<crate::api::client::ApiClient>>,
{
    use crate::api::proto;
    let swap = async {
        let mut client = session().await?;
        let digest = client.put_component(bytes).await?;
        let _ = client.quit().await;
        if running.as_deref() == Some(digest.as_str()) {
            return Ok::<_, anyhow::Error>((digest, false));
        }
        let api = api().await?;
        let applied = api
            .pipelines()
            .get(proto::PipelineRef {
                name: pipeline.to_owned(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("pipeline {pipeline}: {}", e.message()))?
            .into_inner();
        let manifest =
            crate::pipeline::manifest::with_step_component(&applied.manifest, step, &digest)
                .map_err(|e| anyhow::anyhow!("pipeline {pipeline}: {e}"))?;
        let report = api
            .pipelines()
            .apply(proto::ApplyRequest {
                manifest,
                dry_run: false,
            })
            .await
            .map_err(|e| anyhow::anyhow!("pipeline {pipeline}: {}", e.message()))?
            .into_inner();
        Ok((digest, report.updated.iter().any(|s| s == step)))
    };
    match swap.await {
        Ok((digest, true)) => {
            println!("swapped: step {step} of pipeline {pipeline} runs {digest}");
            *running = Some(digest);
            Ok(())
        }
        Ok((digest, false)) => {
            println!("unchanged: step {step} of pipeline {pipeline} runs {digest} already");
            *running = Some(digest);
            Ok(())
        }
        Err(e) => Err(format!("swap failed: {e:#}")),
    }
}

/// Uploads the component and points the processor at it, unless it runs
/// it already.
async fn dev_swap<F, Fut>(
    session: &F,
    id: &str,
    bytes: &[u8],
    running: &mut Option<String>,
) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Client, user_agent::UserAgentError>>,
{
    let swap = async {
        let mut client = session().await?;
        let digest = client.put_component(bytes).await?;
        if running.as_deref() == Some(digest.as_str()) {
            let _ = client.quit().await;
            return Ok::<_, anyhow::Error>((digest, None));
        }
        let reply = client
            .block(
                &Fnap::UpdateProcessor(id.to_owned()).encode(),
                &[format!("component={digest}")],
            )
            .await?;
        let ProcessorUpdated { generation, .. } = ProcessorUpdated::from_reply(&reply)?;
        let _ = client.quit().await;
        Ok((digest, Some(generation)))
    };
    match swap.await {
        Ok((digest, Some(generation))) => {
            println!("swapped: {id} runs {digest} (generation {generation})");
            *running = Some(digest);
            Ok(())
        }
        Ok((digest, None)) => {
            println!("unchanged: {id} runs {digest} already");
            Ok(())
        }
        Err(e) => Err(format!("swap failed: {e:#}")),
    }
}

/// `flow test`: one line per case, what is wrong under a failed one, and
/// an error (status 1) unless all passed.
fn test(dir: &std::path::Path, options: &crate::testing::Options, json: bool) -> Result<()> {
    let reports = crate::testing::run(dir, options)?;
    let failed = reports.iter().filter(|r| !r.passed()).count();
    if json {
        print_json(&serde_json::json!(
            reports
                .iter()
                .map(|r| serde_json::json!({"case": r.name, "passed": r.passed(), "problems": r.problems}))
                .collect::<Vec<_>>()
        ))?;
    } else {
        for report in &reports {
            if report.passed() {
                println!(
                    "test {} ... {}",
                    report.name,
                    if options.update { "updated" } else { "ok" }
                );
            } else {
                println!("test {} ... FAILED", report.name);
                for problem in &report.problems {
                    for line in problem.lines() {
                        println!("    {line}");
                    }
                }
            }
        }
        println!(
            "{} cases: {} passed, {failed} failed",
            reports.len(),
            reports.len() - failed
        );
    }
    if failed > 0 {
        bail!("{failed} of {} cases failed", reports.len());
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
