//! flowd, the participant host of the Event Streaming Open Network (ESON).
//!
//! The modules follow the draft's architecture (see `docs/architecture.md`):
//!
//! - [`wit`]: the processor contract (`wit/`), as Rust types.
//! - [`event`]: CloudEvents in and out of the host: JSON lines and the packed
//!   batches processors see.
//! - [`wasm`]: the Flow Processor host: compiles, caches, sandboxes and calls
//!   WebAssembly processor components.
//! - [`pipe`]: runs one processor over event files (`flowd run`).
//! - [`broker`]: the Flow Events Broker on NATS JetStream, and the embedded
//!   nats-server.
//! - [`engine`]: runs processors continuously over durable flows.
//! - [`cluster`]: several hosts on one broker: heartbeats, placement, leases.
//! - [`registry`]: named, versioned components uploaded to a running host.
//! - [`pipeline`]: chains of processors declared by YAML manifests.
//! - [`agent`]: the FNAA's operations on namespaces, flows, subscriptions
//!   and processors, with access control; [`accounts`]: who may log in.
//! - [`fnap`]: the Flow Namespace Accessing Protocol, server and client.
//! - [`api`]: the gRPC management API (registry, processors, pipelines).
//! - [`fns`]: the Flow Name Service: flows published in DNS, and discovery.
//! - [`federation`]: subscriptions to other participants' flows.
//! - [`secret_file`]: files holding secrets, written whole and private.
//! - [`user_agent`]: the `flow` user agent's configuration and log-in.
//! - [`daemon`]: `flowd serve`, the host as a daemon; [`config`]: its TOML.

pub mod accounts;
pub mod agent;
pub mod api;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod event;
pub mod federation;
pub mod fnap;
pub mod fns;
pub mod pipe;
pub mod pipeline;
pub mod registry;
pub mod secret_file;
pub mod user_agent;
pub mod wasm;
pub mod wit;
