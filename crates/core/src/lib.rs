//! The vocabulary every flowd crate shares, with no I/O and no runtime:
//!
//! - [`naming`]: flow, namespace, account and processor names, and how a
//!   flow maps onto a JetStream stream and subject;
//! - [`rights`]: what an account may do in a namespace, and flow options;
//! - [`buckets`]: the names of the broker's key-value buckets;
//! - [`event`]: CloudEvents as JSON lines and as the packed batches
//!   processors see;
//! - [`secret_file`]: files holding secrets, written whole and private.

#![warn(missing_docs)]

pub mod buckets;
pub mod event;
pub mod naming;
pub mod rights;
pub mod secret_file;

pub use naming::{FlowName, NameError, NamespaceName};
pub use rights::{FlowOptions, Right};
