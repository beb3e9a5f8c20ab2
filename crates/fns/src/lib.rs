//! The Flow Name Service (FNS, section 4.1.2 of the draft): flows published
//! in DNS so that anyone holding a flow's name can find the FNAA serving it,
//! as MX records do for mail.
//!
//! - [`records`]: the records a flow and a namespace publish;
//! - [`server`]: the embedded authoritative server for this host's zones;
//! - [`update`]: publication to an external server (RFC 2136 + TSIG);
//! - [`resolve`]: discovery, PTR -> SRV/TXT -> A/AAAA;
//! - [`Source`]: what the host tells the name service.

#![warn(missing_docs)]

pub mod records;
pub mod resolve;
pub mod server;
pub mod update;

pub use records::Publication;

use flowd_core::{FlowName, NamespaceName};

/// An error of a [`Source`], shown in logs.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// What the name service publishes, read from the host: its namespaces and
/// flows, and a signal when either changes. The daemon's agent implements
/// it; nothing else of the host is visible here.
#[async_trait::async_trait]
pub trait Source: Send + Sync + 'static {
    /// Every namespace the host knows.
    async fn namespaces(&self) -> Result<Vec<NamespaceName>, SourceError>;
    /// Every flow the host serves.
    async fn flows(&self) -> Result<Vec<FlowName>, SourceError>;
    /// Ticks whenever a namespace or flow is created or deleted.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}
pub use resolve::{Discovery, DiscoveryError, Location};
pub use server::NameService;
