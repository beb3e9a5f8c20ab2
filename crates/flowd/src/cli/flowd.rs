//! `flowd`: the ESON participant host.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use flowd_wasm::pipe::{self, Input};
use flowd_wasm::{Host, HostConfig, Kind, Limits, ProcessorSetup};
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "flowd", version, about = "The ESON participant host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the participant host: broker (embedded nats-server unless
    /// configured), processor engine, metrics.
    Serve(ServeArgs),
    /// Run one processor component over JSON-lines events (files or stdin)
    /// and print what it emits as JSON lines.
    Run(RunArgs),
    /// Manage the accounts FNAP clients log in with.
    Account {
        /// State directory of the host.
        #[arg(long, global = true, env = "FLOWD_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: AccountAction,
    },
}

#[derive(Subcommand)]
enum AccountAction {
    /// Add an account; the password is read from the first line of stdin.
    Add {
        name: String,
        /// A host administrator (all namespaces, flows and processors).
        #[arg(long)]
        admin: bool,
    },
    /// Remove an account.
    Remove { name: String },
    /// List the accounts.
    List,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML); every key has a default.
    #[arg(long, short = 'c', env = "FLOWD_CONFIG")]
    config: Option<PathBuf>,
    /// State directory (overrides the file).
    #[arg(long, env = "FLOWD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// NATS URL(s) to use instead of an embedded server (overrides the file).
    #[arg(long, value_delimiter = ',')]
    nats: Vec<String>,
    /// Address of the /metrics endpoint (overrides the file); `off` disables it.
    #[arg(long)]
    metrics: Option<String>,
    /// FNAP plain-text address (overrides the file); `off` disables it.
    #[arg(long)]
    fnap: Option<String>,
    /// FNAP implicit-TLS address (overrides the file); `off` disables it.
    #[arg(long)]
    fnap_tls: Option<String>,
    /// Embedded name service address, UDP and TCP (overrides the file); `off` disables it.
    #[arg(long)]
    fns: Option<String>,
    /// gRPC management API address (overrides the file); `off` disables it.
    #[arg(long)]
    api: Option<String>,
    /// Web console address (`off` disables it).
    #[arg(long)]
    console: Option<String>,
}

/// `off`, or a socket address.
fn address(flag: &str, value: &str) -> Result<Option<std::net::SocketAddr>> {
    if value == "off" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("--{flag} {value}: expected host:port or `off`"))
}

#[derive(clap::Args)]
struct RunArgs {
    /// The processor component (.wasm).
    #[arg(long, short = 'c')]
    component: PathBuf,
    /// Configuration entry `key=value` (repeatable, order kept).
    #[arg(long = "config", short = 'C', value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Input port `NAME=FILE` (repeatable); `NAME` alone or no input reads stdin.
    #[arg(long = "input", short = 'i', value_name = "NAME[=FILE]")]
    inputs: Vec<String>,
    /// Output port name (repeatable); a distributor or signal needs one per output.
    #[arg(long = "output", short = 'o', value_name = "NAME")]
    outputs: Vec<String>,
    /// Events handed to the processor per call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Call a signal processor's tick after every N input events, and at the end.
    #[arg(long, value_name = "N")]
    tick_every: Option<u64>,
    /// Memory cap of the processor, in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: usize,
    /// CPU deadline of one call, in milliseconds.
    #[arg(long, default_value_t = 100)]
    deadline_ms: u64,
    /// Directory for compiled components (default: $XDG_CACHE_HOME/flowd or ~/.cache/flowd).
    #[arg(long, env = "FLOWD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

/// Runs `flowd` with the process's arguments.
pub fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Run(args) => run(args),
        Command::Account { state_dir, action } => account(
            state_dir.unwrap_or_else(crate::config::default_state_dir),
            action,
        ),
    }
}

fn account(state_dir: PathBuf, action: AccountAction) -> Result<()> {
    use crate::accounts::Accounts;
    let mut accounts = Accounts::load(&state_dir)?;
    match action {
        AccountAction::Add { name, admin } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            accounts.add(&name, password, admin)?;
            accounts.save(&state_dir)?;
            eprintln!(
                "account {name} added{}",
                if admin { " (admin)" } else { "" }
            );
        }
        AccountAction::Remove { name } => {
            accounts.remove(&name)?;
            accounts.save(&state_dir)?;
            eprintln!("account {name} removed");
        }
        AccountAction::List => {
            for (name, account) in &accounts.accounts {
                println!("{name}{}", if account.admin { " admin" } else { "" });
            }
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => crate::config::Config::load(path)?,
        None => crate::config::Config::default(),
    };
    if let Some(dir) = args.state_dir {
        config.participant.state_dir = dir;
    }
    if !args.nats.is_empty() {
        config.nats.urls = args.nats;
    }
    if let Some(value) = &args.metrics {
        config.metrics.listen = address("metrics", value)?;
    }
    if let Some(value) = &args.fnap {
        config.fnap.listen = address("fnap", value)?;
    }
    if let Some(value) = &args.fnap_tls {
        config.fnap.tls_listen = address("fnap-tls", value)?;
    }
    if let Some(value) = &args.console {
        config.console.listen = address("console", value)?;
    }
    if let Some(value) = &args.api {
        config.api.listen = address("api", value)?;
    }
    if let Some(value) = &args.fns {
        config.fns.listen = address("fns", value)?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(crate::daemon::serve(config))
}

fn run(args: RunArgs) -> Result<()> {
    let config = args
        .config
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--config `{kv}`: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    let host = Host::new(HostConfig {
        cache_dir: args.cache_dir.or_else(super::default_cache_dir),
        max_instances: 4,
        ..HostConfig::default()
    })?;
    let component = host
        .load_file(&args.component)
        .with_context(|| format!("loading {}", args.component.display()))?;
    let kind = component.kind();

    let mut inputs = Vec::new();
    let mut stdin_used = false;
    for spec in &args.inputs {
        let (name, reader): (&str, Box<dyn std::io::BufRead>) = match spec.split_once('=') {
            Some((name, file)) => {
                let f = std::fs::File::open(file).with_context(|| format!("--input {spec}"))?;
                (name, Box::new(BufReader::new(f)))
            }
            None if !stdin_used => {
                stdin_used = true;
                (spec.as_str(), Box::new(std::io::stdin().lock()))
            }
            None => bail!("--input {spec}: only one input can read stdin"),
        };
        inputs.push(Input {
            name: name.to_owned(),
            reader,
        });
    }
    if inputs.is_empty() {
        inputs.push(Input {
            name: "in".into(),
            reader: Box::new(std::io::stdin().lock()),
        });
    }
    let mut outputs = args.outputs.clone();
    if outputs.is_empty() && !kind.many_outputs() {
        outputs.push("out".into());
    }
    if outputs.is_empty() {
        bail!("a {kind} processor needs its outputs named: --output NAME (repeatable)");
    }

    let setup = ProcessorSetup {
        name: args
            .component
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| kind.to_string()),
        config,
        inputs: inputs.iter().map(|i| i.name.clone()).collect(),
        outputs,
    };
    let limits = Limits {
        memory: args.memory_mib << 20,
        deadline: Duration::from_millis(args.deadline_ms),
        ..Limits::default()
    };
    let mut processor = host.create(component, setup, limits).with_context(|| {
        format!(
            "creating {kind} processor from {}",
            args.component.display()
        )
    })?;
    let tick = args.tick_every.filter(|_| kind == Kind::Signal);
    let summary = pipe::run(
        &mut processor,
        inputs,
        args.batch,
        tick,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
    )?;
    if tick.is_some() {
        pipe::final_tick(&mut processor, &mut std::io::stdout().lock())?;
    }
    tracing::info!(
        read = summary.read,
        written = summary.written,
        failed = summary.failed,
        "done"
    );
    if let Err(e) = processor.teardown() {
        tracing::warn!("teardown: {e}");
    }
    // The others were written; the status says that not all were, so a
    // script (or a test) cannot take a partial run for a good one.
    if summary.failed > 0 {
        bail!(
            "{} of {} events failed (each is reported above; the others were written)",
            summary.failed,
            summary.read
        );
    }
    Ok(())
}
