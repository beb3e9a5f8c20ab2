//! The embedded Flow Name Service: an authoritative DNS server (hickory,
//! UDP and TCP) for the namespaces this host serves. An operator delegates
//! each namespace to it with NS records, as for any zone.
//!
//! When the agent's host name lies outside those namespaces, the server also
//! answers for that name alone (its addresses), so that a resolver pointed at
//! it can follow the whole chain.
//!
//! The zones are rebuilt from the broker's flows whenever the agent reports a
//! change (and every 30 s, for flows created by other hosts on the same
//! broker); a rebuild swaps the whole catalog at once, so a query never sees
//! a half-built zone.

use super::records::{self, Publication};
use crate::Source;
use flowd_core::FlowName;
use hickory_proto::rr::LowerName;
use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Why the name service could not start.
#[derive(Debug, thiserror::Error)]
pub enum FnsServerError {
    /// The UDP or TCP socket could not be bound.
    #[error("binding the name service on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// A zone could not be built: a namespace or host name is not a DNS
    /// name.
    #[error(transparent)]
    Record(#[from] records::RecordError),
}

/// The current zones, swapped whole on every rebuild.
#[derive(Clone)]
struct Zones(Arc<RwLock<Arc<Catalog>>>);

impl Zones {
    fn current(&self) -> Arc<Catalog> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, catalog: Catalog) {
        match self.0.write() {
            Ok(mut c) => *c = Arc::new(catalog),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(catalog),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Zones {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let catalog = self.current();
        catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// A running name service.
pub struct NameService {
    /// The UDP and TCP address it answers on.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// UDP and TCP on the same port. With port 0 the system picks the UDP
/// port, which another program may hold for TCP: then another is tried.
async fn bind_pair(
    addr: SocketAddr,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), FnsServerError> {
    let error = |source| FnsServerError::Bind { addr, source };
    let mut attempts = 0;
    loop {
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(error)?;
        let bound = udp.local_addr().map_err(error)?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempts < 20 =>
            {
                attempts += 1;
            }
            Err(e) => return Err(error(e)),
        }
    }
}

impl NameService {
    /// Binds `addr` (UDP and TCP), publishes the zones of `namespaces` and
    /// keeps them in step with the flows.
    pub async fn start(
        addr: SocketAddr,
        namespaces: Vec<String>,
        publication: Publication,
        source: Arc<dyn Source>,
    ) -> Result<NameService, FnsServerError> {
        let (udp, tcp) = bind_pair(addr).await?;
        let bound = udp
            .local_addr()
            .map_err(|source| FnsServerError::Bind { addr, source })?;
        let zones = Zones(Arc::new(RwLock::new(Arc::new(
            build(&namespaces, &publication, source.as_ref(), 1).await?,
        ))));
        let mut server = Server::new(zones.clone());
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
        let mut changes = source.changes();
        let task = tokio::spawn(async move {
            let _server = server;
            let mut serial = 1u32;
            loop {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                serial = serial.wrapping_add(1);
                match build(&namespaces, &publication, source.as_ref(), serial).await {
                    Ok(catalog) => zones.replace(catalog),
                    Err(e) => tracing::warn!("FNS: zones not rebuilt: {e}"),
                }
            }
        });
        tracing::info!(%bound, "flow name service ready");
        Ok(NameService { addr: bound, task })
    }

    /// Stops answering queries.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

/// The zones to serve: the configured namespaces and every top-level
/// namespace created since (one not inside another the host knows).
pub(crate) async fn zones(served: &[String], source: &dyn Source) -> Vec<String> {
    let mut zones: Vec<String> = served.to_vec();
    match source.namespaces().await {
        Ok(records) => {
            let names: Vec<String> = records.iter().map(|r| r.to_string()).collect();
            for name in &names {
                let inside = names
                    .iter()
                    .chain(served)
                    .any(|other| name.ends_with(&format!(".{other}")));
                if !inside && !zones.contains(name) {
                    zones.push(name.clone());
                }
            }
        }
        Err(e) => tracing::warn!("FNS: cannot list namespaces: {e}"),
    }
    zones
}

/// A catalog with one zone per served namespace, holding its flows.
async fn build(
    served: &[String],
    publication: &Publication,
    source: &dyn Source,
    serial: u32,
) -> Result<Catalog, FnsServerError> {
    let namespaces = zones(served, source).await;
    let namespaces = namespaces.as_slice();
    let flows: Vec<FlowName> = match source.flows().await {
        Ok(flows) => flows,
        Err(e) => {
            tracing::warn!("FNS: cannot list flows: {e}");
            Vec::new()
        }
    };
    let mut catalog = Catalog::new();
    // The agent's own name, when no served namespace holds it, gets a zone
    // of its own (SOA, NS and its addresses), so that a resolver pointed at
    // this server alone can follow the SRV target.
    let agent_zone = (!namespaces.iter().any(|ns| {
        publication.fnaa_host == *ns || publication.fnaa_host.ends_with(&format!(".{ns}"))
    }))
    .then(|| publication.fnaa_host.clone());
    for zone in namespaces.iter().chain(agent_zone.iter()) {
        let origin = records::fqdn(zone)?;
        let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let mut all = records::zone_records(zone, serial, publication)?;
        for flow in flows
            .iter()
            .filter(|f| f.as_str().ends_with(&format!(".{zone}")))
        {
            all.extend(records::flow_records(flow, publication)?);
        }
        for record in all {
            handler.upsert_mut(record, serial);
        }
        catalog.upsert(
            LowerName::new(&origin),
            vec![Arc::new(handler) as Arc<dyn ZoneHandler>],
        );
    }
    Ok(catalog)
}
