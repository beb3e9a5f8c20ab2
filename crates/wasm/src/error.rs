use super::Kind;
use std::path::PathBuf;
use std::time::Duration;

/// Why a component cannot be loaded as a processor.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file given.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly component (not Wasm at all, or a
    /// core module).
    #[error(
        "not a WebAssembly component{}: {reason}",
        if *.core_module { " (this is a core Wasm module; build for wasm32-wasip2 or wrap it with `wasm-tools component new`)" } else { "" }
    )]
    NotAComponent {
        /// It is a core Wasm module, which can be wrapped into a component.
        core_module: bool,
        /// What the header check found.
        reason: String,
    },
    /// The component exports none of the processor interfaces.
    #[error(
        "not a flow processor: it exports none of eson:flow/bridge, eson:flow/collector, \
         eson:flow/distributor or eson:flow/signal (@0.1.0); it exports: {}",
        if .exports.is_empty() { "nothing".to_string() } else { .exports.join(", ") }
    )]
    NotAProcessor {
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// The component exports the interfaces of more than one kind.
    #[error("a processor is of one kind, but this component exports the interfaces of {kinds:?}")]
    AmbiguousKind {
        /// The kinds whose interfaces it exports.
        kinds: Vec<Kind>,
    },
    /// The component exports its kind's interface but not every function
    /// of its world (`init`, `update`, `teardown`).
    #[error("{kind} processor is incomplete: it does not export `{missing}` (world {})", kind.world())]
    MissingExport {
        /// The kind detected.
        kind: Kind,
        /// The export it lacks.
        missing: String,
    },
    /// An export has the right name but not the contract's type.
    #[error("{kind} processor has exports of the wrong shape for world {}: {reason}", kind.world())]
    WrongSignature {
        /// The kind detected.
        kind: Kind,
        /// What the type check reported.
        reason: String,
    },
    /// The component imports something the host does not provide (beyond
    /// WASI and the `eson:flow` imports).
    #[error("the host does not grant what this component imports: {reason}")]
    UnsatisfiedImport {
        /// The imports concerned, or what linking reported.
        reason: String,
    },
    /// The component imports a WASI family reaching outside the sandbox
    /// that [`HostConfig::granted`](super::HostConfig::granted) does not
    /// list.
    #[error(
        "the component imports {imports}, which this host does not grant \
         (processors have no network, file or environment access: build the component \
         without them; a Python or JavaScript component that pulls in such a library \
         needs it removed or stubbed)"
    )]
    NotGranted {
        /// The refused imports, comma-separated.
        imports: String,
    },
    /// The engine could not compile the component.
    #[error("cannot compile the component: {reason}")]
    Compile {
        /// What the compiler reported.
        reason: String,
    },
}

/// Why [`Host::check`](super::Host::check) refused a component.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The component does not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The component is a processor of another kind than asked for.
    #[error("the component is a {found} processor, but this command creates a {expected}")]
    WrongKind {
        /// The kind the component is.
        found: Kind,
        /// The kind asked for.
        expected: Kind,
    },
    /// An instance could not be set up with the given setup.
    #[error(transparent)]
    Create(#[from] CreateError),
}

/// Why creating a processor instance failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The setup does not fit: the number of input or output ports is
    /// wrong for the kind, or the memory cap exceeds the host's ceiling.
    #[error("{0}")]
    Ports(String),
    /// The processor's `init` refused its configuration.
    #[error("the processor rejected its configuration: {0}")]
    Config(String),
    /// `init` failed otherwise (an error, a trap or a limit).
    #[error("init failed: {0}")]
    Init(#[source] CallError),
}

/// Why one call into a processor failed. Every variant leaves the processor
/// usable: after a trap, a deadline or a memory-cap hit the host has already
/// discarded the poisoned instance and the next call gets a fresh one.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The processor returned an error value; the instance is kept.
    #[error("the processor returned an error: {0}")]
    Guest(GuestError),
    /// The guest trapped (a panic, `unreachable`, a bad memory access).
    #[error("the processor trapped: {message}")]
    Trap {
        /// The trap as the engine describes it.
        message: String,
    },
    /// The call ran past its CPU deadline ([`Limits::deadline`](super::Limits::deadline)).
    #[error(
        "the processor exceeded its {limit:?} CPU deadline and was stopped (the `deadline-ms` limit raises it)"
    )]
    Deadline {
        /// The deadline it had.
        limit: Duration,
    },
    /// The guest tried to grow its memory past its cap.
    #[error("the processor exceeded its memory cap of {limit} bytes and was stopped")]
    MemoryCap {
        /// The cap in bytes.
        limit: usize,
    },
    /// The call used up its fuel ([`Limits::fuel`](super::Limits::fuel)).
    #[error("the processor ran out of fuel ({fuel} units per call)")]
    OutOfFuel {
        /// The fuel each call gets.
        fuel: u64,
    },
    /// A state write would have taken the keyed state past its quota.
    #[error("the processor exceeded its state quota of {limit} bytes")]
    StateQuota {
        /// The quota in bytes.
        limit: usize,
    },
    /// The events the processor created do not decode (a span outside the
    /// batch, a missing required attribute).
    #[error("the processor's output is invalid: {0}")]
    InvalidOutput(#[from] flowd_core::event::packed::PackError),
    /// No instance to call could be made, or the call names an input port
    /// the processor does not have.
    #[error("cannot instantiate the processor: {reason}")]
    Instantiate {
        /// What went wrong.
        reason: String,
    },
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
    /// The processor does not accept its configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// One input event failed; the others of the batch may be fine.
    #[error("event {index}: {message}")]
    Event {
        /// The event's index in the input batch.
        index: u32,
        /// The processor's message.
        message: String,
    },
    /// The call failed as a whole.
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
