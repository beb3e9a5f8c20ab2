//! Discovery: from a flow's name to the FNAA that serves it, following the
//! draft's chain PTR -> SRV (+TXT) -> A/AAAA, with the broker's SRV and TXT
//! alongside. Each missing link is its own error, so a user learns whether
//! the flow is unknown, has no agent, or the agent has no address.

use super::records;
use flowd_core::FlowName;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use std::net::{IpAddr, SocketAddr};

/// Why a flow could not be located.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The flow's name has no PTR record: the flow is not published.
    #[error("no flow {0} in DNS (no PTR record for it)")]
    NoSuchFlow(FlowName),
    /// The PTR query was refused: no server is authoritative for the
    /// flow's namespace, which is likely not delegated.
    #[error("no name server answers for {0}: the query was refused (is its namespace delegated?)")]
    NotServed(FlowName),
    /// The PTR record leads to a service name without SRV record.
    #[error("flow {flow} has no FNAA: no SRV record at {name}")]
    NoAgent {
        /// The flow looked up.
        flow: FlowName,
        /// The service name without SRV.
        name: String,
    },
    /// The SRV target has no A or AAAA record.
    #[error("the FNAA host {host} of {flow} has no address")]
    NoAddress {
        /// The flow looked up.
        flow: FlowName,
        /// The FNAA host without address.
        host: String,
    },
    /// The name server refused a query (other than a flow's PTR).
    #[error("the name server refused the query for {0}")]
    Refused(String),
    /// A query failed otherwise (timeout, unreachable server, a name that
    /// is not a DNS name).
    #[error("DNS lookup of {name} failed: {reason}")]
    Lookup {
        /// The name queried.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The resolver could not be set up (e.g. an unreadable resolv.conf).
    #[error("resolver configuration: {0}")]
    Config(String),
}

/// Where a flow is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The flow located.
    pub flow: FlowName,
    /// The FNAA's host name (from SRV).
    pub host: String,
    /// The FNAA's FNAP port (from SRV).
    pub port: u16,
    /// Its addresses (A/AAAA), to connect to in order.
    pub addresses: Vec<IpAddr>,
    /// Whether the FNAA offers TLS (TXT `tls`).
    pub tls: bool,
    /// The broker, when published: host, port, and TXT attributes.
    pub broker: Option<(String, u16, Vec<String>)>,
}

impl Location {
    /// `ip:port` candidates for the FNAA.
    pub fn agent_addrs(&self) -> Vec<SocketAddr> {
        self.addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect()
    }
}

/// A DNS resolver for flows.
pub struct Discovery {
    resolver: Resolver<TokioRuntimeProvider>,
}

impl Discovery {
    /// Uses `nameserver` (as the PoC's `--nameserver`), or the system's
    /// resolv.conf when `None`.
    pub fn new(nameserver: Option<SocketAddr>) -> Result<Discovery, DiscoveryError> {
        let config = |e: hickory_resolver::net::NetError| DiscoveryError::Config(e.to_string());
        let resolver = match nameserver {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                let mut opts = ResolverOpts::default();
                // Publication changes must be seen quickly by tests and
                // peers; honour TTLs but do not keep negative answers.
                opts.negative_max_ttl = Some(std::time::Duration::from_secs(0));
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
                .with_options(opts)
                .build()
                .map_err(config)?
            }
            None => Resolver::builder_tokio()
                .map_err(config)?
                .build()
                .map_err(config)?,
        };
        Ok(Discovery { resolver })
    }

    async fn records(&self, name: &str, ty: RecordType) -> Result<Vec<RData>, DiscoveryError> {
        let fqdn = records::fqdn(name).map_err(|e| DiscoveryError::Lookup {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        match self.resolver.lookup(fqdn, ty).await {
            Ok(lookup) => Ok(lookup.answers().iter().map(|r| r.data.clone()).collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused))) => {
                Err(DiscoveryError::Refused(name.to_owned()))
            }
            Err(e) => Err(DiscoveryError::Lookup {
                name: name.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// The agent of a namespace, from `_fnaa._tcp.<namespace>` SRV and its
    /// host's addresses: (host, port, addresses).
    pub async fn namespace_agent(
        &self,
        namespace: &str,
    ) -> Result<(String, u16, Vec<IpAddr>), DiscoveryError> {
        let name = format!("_fnaa._tcp.{namespace}");
        let (port, host) = self
            .best_srv(&name)
            .await?
            .ok_or_else(|| DiscoveryError::Lookup {
                name: name.clone(),
                reason: "no SRV record: the namespace publishes no FNAA".into(),
            })?;
        let host = host.trim_end_matches('.').to_owned();
        let addresses = self.addresses(&host).await?;
        Ok((host, port, addresses))
    }

    /// The SRV target to use at `name`: the lowest priority, and among
    /// equals the heaviest (a deterministic reading of RFC 2782's weighted
    /// choice). `(port, target)`.
    async fn best_srv(&self, name: &str) -> Result<Option<(u16, String)>, DiscoveryError> {
        let mut srv: Vec<(u16, u16, u16, String)> = self
            .records(name, RecordType::SRV)
            .await?
            .iter()
            .filter_map(|r| match r {
                RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_utf8())),
                _ => None,
            })
            .collect();
        srv.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        Ok(srv
            .into_iter()
            .next()
            .map(|(_, _, port, host)| (port, host)))
    }

    /// A host's addresses (A, then AAAA).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        let mut addresses = Vec::new();
        for ty in [RecordType::A, RecordType::AAAA] {
            for r in self.records(host, ty).await? {
                match r {
                    RData::A(a) => addresses.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => addresses.push(IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
        Ok(addresses)
    }

    /// Locates the FNAA serving `flow`.
    pub async fn locate(&self, flow: &FlowName) -> Result<Location, DiscoveryError> {
        let ptr = match self.records(flow.as_str(), RecordType::PTR).await {
            Err(DiscoveryError::Refused(_)) => return Err(DiscoveryError::NotServed(flow.clone())),
            other => other?,
        };
        let service = ptr
            .iter()
            .find_map(|r| match r {
                RData::PTR(p) => Some(p.0.to_utf8()),
                _ => None,
            })
            .ok_or_else(|| DiscoveryError::NoSuchFlow(flow.clone()))?;
        let (port, host) =
            self.best_srv(&service)
                .await?
                .ok_or_else(|| DiscoveryError::NoAgent {
                    flow: flow.clone(),
                    name: service.clone(),
                })?;
        let tls = self.records(&service, RecordType::TXT).await?.iter().any(
            |r| matches!(r, RData::TXT(t) if t.to_string().split_whitespace().any(|w| w == "tls")),
        );
        let host = host.trim_end_matches('.').to_owned();
        let addresses = self.addresses(&host).await?;
        if addresses.is_empty() {
            return Err(DiscoveryError::NoAddress {
                flow: flow.clone(),
                host,
            });
        }
        let queue = format!("_queue.{}", service.trim_end_matches('.'));
        let broker = self
            .records(&queue, RecordType::SRV)
            .await?
            .iter()
            .find_map(|r| match r {
                RData::SRV(s) => {
                    Some((s.target.to_utf8().trim_end_matches('.').to_owned(), s.port))
                }
                _ => None,
            });
        let broker = match broker {
            Some((h, p)) => {
                let attrs = self
                    .records(&queue, RecordType::TXT)
                    .await?
                    .iter()
                    .filter_map(|r| match r {
                        RData::TXT(t) => Some(t.to_string()),
                        _ => None,
                    })
                    .collect();
                Some((h, p, attrs))
            }
            None => None,
        };
        Ok(Location {
            flow: flow.clone(),
            host,
            port,
            addresses,
            tls,
            broker,
        })
    }
}
