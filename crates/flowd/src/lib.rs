//! flowd, the participant host of the Event Streaming Open Network (ESON):
//! the daemon that joins the other crates into one host. See
//! `docs/architecture.md` for the crate graph.
//!
//! - [`accounts`]: who may log in, and the local administrator;
//!   [`logins`]: what a log-in may cost (bounded password checks, a cache
//!   of verified credentials, per-address throttling);
//! - [`agent`]: the FNAA's operations on namespaces, flows, subscriptions
//!   and processors, with access control;
//! - `server` (private): the FNAP server, run by the daemon (the protocol
//!   is `flowd-fnap`);
//! - [`tls`]: the host's certificate;
//! - [`peers`]: sessions with other participants' hosts; `relays`
//!   (private): remote subscriptions carried into local flows;
//! - [`pipeline`]: chains of processors declared by YAML manifests;
//! - [`api`]: the gRPC management API (registry, processors, pipelines,
//!   logs, dead letters); [`console`]: the web console;
//! - [`telemetry`]: OpenTelemetry traces exported over OTLP;
//! - [`testing`]: fixture tests of a processor component (`flow test`);
//!   [`dev`]: the watch and build of `flow dev`; [`scaffold`]: `flow new`;
//! - [`user_agent`]: the `flow` user agent's configuration and log-in;
//! - [`daemon`]: `flowd serve`, the host as a daemon; [`config`]: its TOML;
//! - [`cli`]: the command lines of `flow` and `flowd` (the binaries are a
//!   `main` each).

pub mod accounts;
pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub mod daemon;
pub mod dev;
pub mod logins;
pub mod peers;
pub mod pipeline;
mod relays;
pub mod scaffold;
mod server;
pub mod telemetry;
pub mod testing;
pub mod tls;
pub mod user_agent;

pub use agent::{Agent, AgentError, Principal};
pub use config::Config;
pub use daemon::Daemon;
