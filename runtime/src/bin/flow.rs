//! `flow`: the ESON user agent (FNUA).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use flowd::wasm::{Host, HostConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "flow", version, about = "The ESON command-line user agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show details of an object.
    Describe {
        #[command(subcommand)]
        what: Describe,
    },
}

#[derive(Subcommand)]
enum Describe {
    /// A processor component file: its kind, world, digest and imports.
    Component {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Describe {
            what: Describe::Component { file, output },
        } => {
            let host = Host::new(HostConfig {
                max_instances: 2,
                ..HostConfig::default()
            })?;
            let component = host
                .load_file(&file)
                .with_context(|| format!("{}", file.display()))?;
            if output == "json" {
                let json = serde_json::json!({
                    "file": file,
                    "kind": component.kind(),
                    "world": component.kind().world(),
                    "digest": component.digest(),
                    "size": component.size(),
                    "imports": component.imports(),
                });
                println!("{json:#}");
            } else {
                println!("file:    {}", file.display());
                println!("kind:    {}", component.kind());
                println!("world:   {}", component.kind().world());
                println!("digest:  {}", component.digest());
                println!("size:    {} bytes", component.size());
                println!("imports: {}", component.imports().join(", "));
            }
        }
    }
    Ok(())
}
