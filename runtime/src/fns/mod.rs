//! The Flow Name Service (FNS, section 4.1.2 of the draft): flows published
//! in DNS so that anyone holding a flow's name can find the FNAA serving it,
//! as MX records do for mail.
//!
//! - [`records`]: the records a flow and a namespace publish;
//! - [`server`]: the embedded authoritative server for this host's zones;
//! - [`update`]: publication to an external server (RFC 2136 + TSIG);
//! - [`resolve`]: discovery, PTR -> SRV/TXT -> A/AAAA.

pub mod records;
pub mod resolve;
pub mod server;
pub mod update;

pub use records::Publication;
pub use resolve::{Discovery, DiscoveryError, Location};
pub use server::NameService;
