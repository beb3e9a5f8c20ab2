use crate::bindings::types;

/// Why a processor call failed; becomes the WIT `error` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The configuration is not acceptable; the text names the key.
    Config(String),
    /// The input event at `index` of the batch cannot be processed.
    Event {
        /// The event's position in the batch.
        index: u32,
        /// Why.
        message: String,
    },
    /// The call failed as a whole.
    Failed(String),
}

impl Error {
    /// The configuration is refused: name the key and what is expected.
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    /// Input event `index` of the batch cannot be processed: it is dead-lettered and the others are retried without it.
    pub fn event(index: u32, message: impl Into<String>) -> Self {
        Error::Event {
            index,
            message: message.into(),
        }
    }

    /// The call failed as a whole: the batch is retried.
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::Event { index, message } => write!(f, "event {index}: {message}"),
            Error::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for types::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(m) => types::Error::InvalidConfig(m),
            Error::Event { index, message } => {
                types::Error::EventFailed(types::EventFailure { index, message })
            }
            Error::Failed(m) => types::Error::Failed(m),
        }
    }
}
