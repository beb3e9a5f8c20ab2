use super::Kind;
use std::path::PathBuf;
use std::time::Duration;

/// Why a component cannot be loaded as a processor.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "not a WebAssembly component{}: {reason}",
        if *.core_module { " (this is a core Wasm module; build for wasm32-wasip2 or wrap it with `wasm-tools component new`)" } else { "" }
    )]
    NotAComponent { core_module: bool, reason: String },
    #[error(
        "not a flow processor: it exports none of eson:flow/bridge, eson:flow/collector, \
         eson:flow/distributor or eson:flow/signal (@0.1.0); it exports: {}",
        if .exports.is_empty() { "nothing".to_string() } else { .exports.join(", ") }
    )]
    NotAProcessor { exports: Vec<String> },
    #[error("a processor is of one kind, but this component exports the interfaces of {kinds:?}")]
    AmbiguousKind { kinds: Vec<Kind> },
    #[error("{kind} processor is incomplete: it does not export `{missing}` (world {})", kind.world())]
    MissingExport { kind: Kind, missing: String },
    #[error("{kind} processor has exports of the wrong shape for world {}: {reason}", kind.world())]
    WrongSignature { kind: Kind, reason: String },
    #[error("the host does not grant what this component imports: {reason}")]
    UnsatisfiedImport { reason: String },
    #[error(
        "the component imports {imports}, which this host does not grant \
         (processors have no network access; rebuild without it, or grant it in [wasm] granted)"
    )]
    NotGranted { imports: String },
    #[error("cannot compile the component: {reason}")]
    Compile { reason: String },
}

/// Why [`Host::check`](super::Host::check) refused a component.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the component is a {found} processor, but this command creates a {expected}")]
    WrongKind { found: Kind, expected: Kind },
    #[error(transparent)]
    Create(#[from] CreateError),
}

/// Why creating a processor instance failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0}")]
    Ports(String),
    #[error("the processor rejected its configuration: {0}")]
    Config(String),
    #[error("init failed: {0}")]
    Init(#[source] CallError),
}

/// Why one call into a processor failed. Every variant leaves the processor
/// usable: after a trap, a deadline or a memory-cap hit the host has already
/// discarded the poisoned instance and the next call gets a fresh one.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the processor returned an error: {0}")]
    Guest(GuestError),
    #[error("the processor trapped: {message}")]
    Trap { message: String },
    #[error("the processor exceeded its {limit:?} CPU deadline and was stopped")]
    Deadline { limit: Duration },
    #[error("the processor exceeded its memory cap of {limit} bytes and was stopped")]
    MemoryCap { limit: usize },
    #[error("the processor ran out of fuel ({fuel} units per call)")]
    OutOfFuel { fuel: u64 },
    #[error("the processor exceeded its state quota of {limit} bytes")]
    StateQuota { limit: usize },
    #[error("the processor's output is invalid: {0}")]
    InvalidOutput(#[from] flowd_core::event::packed::PackError),
    #[error("cannot instantiate the processor: {reason}")]
    Instantiate { reason: String },
}

impl CallError {
    /// Whether the instance was discarded (the failure came from the sandbox
    /// rather than from an error value the processor returned).
    pub fn poisoned(&self) -> bool {
        matches!(
            self,
            CallError::Trap { .. }
                | CallError::Deadline { .. }
                | CallError::MemoryCap { .. }
                | CallError::OutOfFuel { .. }
                | CallError::StateQuota { .. }
        )
    }

    /// The input event the failure is about, when the processor said so.
    pub fn event_index(&self) -> Option<u32> {
        match self {
            CallError::Guest(GuestError::Event { index, .. }) => Some(*index),
            _ => None,
        }
    }
}

/// The `error` value of the WIT contract, as returned by a processor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("event {index}: {message}")]
    Event { index: u32, message: String },
    #[error("{0}")]
    Failed(String),
}

impl From<crate::wit::types::Error> for GuestError {
    fn from(e: crate::wit::types::Error) -> Self {
        use crate::wit::types::Error as E;
        match e {
            E::InvalidConfig(m) => GuestError::Config(m),
            E::EventFailed(f) => GuestError::Event {
                index: f.index,
                message: f.message,
            },
            E::Failed(m) => GuestError::Failed(m),
        }
    }
}
