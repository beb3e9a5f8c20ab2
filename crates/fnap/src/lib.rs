//! FNAP, the Flow Namespace Accessing Protocol (section 5 of the draft): a
//! line-based text protocol in the manner of SMTP. This crate is the
//! protocol alone, for flowd and for anyone writing an FNAP client or
//! server: `docs/fnap.md` is the reference.
//!
//! Without features it has no I/O and no runtime:
//!
//! - [`command`]: the grammar of command lines, parsed into [`Command`] and
//!   encoded back to their canonical line (`Display`, [`Command::encode`],
//!   [`Command::try_encode`]);
//! - [`reply`]: reply codes ([`Code`], total over every number, classified
//!   as success, transient or permanent) and reply lines ([`Reply`]);
//! - [`framing`]: a bounded line decoder over byte buffers
//!   ([`framing::LineDecoder`]), and the rules of data blocks
//!   (dot-stuffing, folding, `key=value` lines);
//! - [`data`]: typed data blocks and outcomes: the `key=value` blocks of
//!   `DESCRIBE` ([`data::KeyValues`]), the `SUBSCRIBE` block with its broker
//!   credentials ([`data::SubscribeReply`]), the numbers in the final
//!   replies of `WRITE FLOW`, `READ FLOW`, `PUT COMPONENT` and
//!   `UPDATE PROCESSOR` ([`data::Outcome`]);
//! - [`capabilities`]: the `CAPABILITIES` block, typed
//!   ([`Capabilities`]);
//! - [`sasl`]: the SASL PLAIN response of `AUTHENTICATE`;
//! - [`session`]: the server's session as a state machine without I/O
//!   ([`session::Session`]: greeting, authentication gate, STARTTLS,
//!   limits, data blocks), and the admission of connections
//!   ([`session::Admission`]).
//!
//! Features:
//!
//! - `io`: [`framing::read_line`] over tokio's `AsyncBufRead`;
//! - `client`: an async [`Client`] (plain, STARTTLS or TLS) and the rustls
//!   client configurations of [`tls`].
#![warn(missing_docs)]

pub mod capabilities;
pub mod command;
pub mod data;
pub mod framing;
pub mod reply;
pub mod sasl;
pub mod session;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod tls;

pub use capabilities::Capabilities;
#[cfg(feature = "client")]
pub use client::{Client, ClientError, Security};
pub use command::Command;
pub use reply::{Code, Reply};

/// The port of the draft's proof of concept, flowd's default.
pub const DEFAULT_PORT: u16 = 61000;
