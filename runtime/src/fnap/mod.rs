//! FNAP, the Flow Namespace Accessing Protocol (section 5 of the draft):
//! a line-based text protocol in the manner of SMTP, spoken by the FNAA
//! server ([`server`]) and by user agents and other hosts ([`client`]).
//! `docs/fnap.md` is the reference.
//!
//! - [`command`]: the grammar of command lines;
//! - [`reply`]: reply codes and lines;
//! - [`framing`]: bounded line reading and data blocks;
//! - [`tls`]: certificates and rustls configurations;
//! - [`server`]: sessions, limits, and commands as agent operations;
//! - [`client`]: an async client.

pub mod client;
pub mod command;
pub mod framing;
pub mod reply;
pub mod server;
pub mod tls;

pub use client::{Client, ClientError};
pub use command::Command;
pub use reply::{Code, Reply};
pub use server::{Server, ServerContext};

/// The port of the draft's proof of concept, flowd's default.
pub const DEFAULT_PORT: u16 = 61000;
