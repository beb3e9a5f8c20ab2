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

pub mod event;
pub mod pipe;
pub mod wasm;
pub mod wit;
