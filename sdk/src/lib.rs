//! `flow-sdk`: write ESON flow processors as WebAssembly components.
//!
//! A processor is a type implementing [`Processor`] plus one kind trait
//! ([`Bridge`], [`Collector`], [`Distributor`] or [`Signal`]), exported with
//! the matching macro:
//!
//! ```ignore
//! use flow_sdk::{Bridge, Batch, Error, Output, Processor, Setup};
//!
//! struct Passthrough;
//!
//! impl Processor for Passthrough {
//!     fn init(_setup: &Setup) -> Result<Self, Error> {
//!         Ok(Passthrough)
//!     }
//! }
//!
//! impl Bridge for Passthrough {
//!     fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<(), Error> {
//!         batch.iter().for_each(|event| out.forward(&event));
//!         Ok(())
//!     }
//! }
//!
//! flow_sdk::bridge!(Passthrough);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`: the result is
//! a component the flowd host accepts.

#![warn(missing_docs)]

pub mod bindings;
mod config;
mod error;
mod event;
#[doc(hidden)]
pub mod glue;
pub mod host;
pub mod json;
mod kinds;
mod output;
mod select;

pub use config::{Config, Setup};
pub use error::Error;
pub use event::{Batch, Event, ExtensionValue, NewEvent};
pub use kinds::{Bridge, Collector, Distributor, Processor, Signal};
pub use output::{Output, RoutedOutput};
pub use select::Selector;

/// Re-exported so processors need not depend on `serde_json` themselves.
pub use serde_json;
