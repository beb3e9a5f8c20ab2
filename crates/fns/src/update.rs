//! Publication to an external authoritative server (the draft's
//! implementation section: BIND9) by RFC 2136 dynamic updates signed with
//! TSIG (HMAC-SHA256), instead of or besides the embedded server.
//!
//! A flow's names are written when it appears (delete the names, add the
//! records, so a republication is idempotent) and cleared when it
//! disappears; flows already published are not touched again.
//! The agent's SRV (`_fnaa._tcp.<namespace>`) and addresses are published
//! when they lie inside the zone.

use super::records::{self, Publication};
use crate::Source;
use base64::Engine as _;
use flowd_core::FlowName;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::xfer::DnsMultiplexer;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, Record, TSigner};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where and how to send updates (`[fns.update]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// The primary server of the zone (`host:port`, TCP).
    pub server: SocketAddr,
    /// The zone to update (the served namespaces, or a parent of them).
    pub zone: String,
    /// The TSIG key's name, as `tsig-keygen` prints it (with
    /// `key_secret`, unless `key_file` is given).
    pub key_name: Option<String>,
    /// The TSIG key's secret (base64).
    pub key_secret: Option<String>,
    /// A file holding the key as `tsig-keygen` writes it; it takes
    /// precedence over `key_name` and `key_secret`.
    pub key_file: Option<PathBuf>,
}

/// Why an update could not be sent or was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// No usable TSIG key: none configured, an unreadable key file, or a
    /// secret that is not base64.
    #[error("TSIG key: {0}")]
    Key(String),
    /// A name to publish is not a DNS name.
    #[error(transparent)]
    Record(#[from] records::RecordError),
    /// The server could not be reached, or refused the update.
    #[error("DNS update to {server}: {reason}")]
    Send {
        /// The server the update went to.
        server: SocketAddr,
        /// What failed, or the server's response code.
        reason: String,
    },
}

/// Reads `key "<name>" { algorithm hmac-sha256; secret "<base64>"; };`.
fn parse_key_file(text: &str) -> Option<(String, String)> {
    let name = text.split('"').nth(1)?.to_owned();
    let secret_at = text.find("secret")?;
    let secret = text[secret_at..].split('"').nth(1)?.to_owned();
    Some((name, secret))
}

impl UpdateConfig {
    fn signer(&self) -> Result<TSigner, UpdateError> {
        let (name, secret) = match (&self.key_file, &self.key_name, &self.key_secret) {
            (Some(file), _, _) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| UpdateError::Key(format!("{}: {e}", file.display())))?;
                parse_key_file(&text).ok_or_else(|| {
                    UpdateError::Key(format!("{}: not a tsig-keygen key", file.display()))
                })?
            }
            (None, Some(name), Some(secret)) => (name.clone(), secret.clone()),
            _ => {
                return Err(UpdateError::Key(
                    "set key_file, or key_name and key_secret".into(),
                ));
            }
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|e| UpdateError::Key(format!("secret is not base64: {e}")))?;
        TSigner::new(key, TsigAlgorithm::HmacSha256, records::fqdn(&name)?, 300)
            .map_err(|e| UpdateError::Key(e.to_string()))
    }
}

/// A connection to the zone's primary, signing every update.
struct Session {
    client: Client<TokioRuntimeProvider>,
    zone: Name,
    server: SocketAddr,
}

impl Session {
    async fn open(config: &UpdateConfig) -> Result<Session, UpdateError> {
        let send = |reason: String| UpdateError::Send {
            server: config.server,
            reason,
        };
        let (connect, handle) = TcpClientStream::new(
            config.server,
            None,
            Some(Duration::from_secs(5)),
            TokioRuntimeProvider::default(),
        );
        let stream = connect.await.map_err(|e| send(e.to_string()))?;
        let multiplexer = DnsMultiplexer::new(stream, handle).with_signer(config.signer()?);
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(multiplexer);
        tokio::spawn(background);
        Ok(Session {
            client,
            zone: records::fqdn(&config.zone)?,
            server: config.server,
        })
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> UpdateError {
        UpdateError::Send {
            server: self.server,
            reason: format!("{what}: {e}"),
        }
    }

    /// Fails unless the server answered NOERROR.
    fn accepted(
        &self,
        response: &hickory_proto::op::DnsResponse,
        what: &str,
    ) -> Result<(), UpdateError> {
        match response.metadata.response_code {
            hickory_proto::op::ResponseCode::NoError => Ok(()),
            code => Err(self.failed(what, format!("the server answered {code}"))),
        }
    }

    /// Replaces every record at `names` with `records`.
    async fn replace(&mut self, names: &[Name], records: Vec<Record>) -> Result<(), UpdateError> {
        for name in names {
            if !self.zone.zone_of(name) {
                continue;
            }
            let response = self
                .client
                .delete_all(name.clone(), self.zone.clone(), DNSClass::IN)
                .await
                .map_err(|e| self.failed(&format!("deleting {name}"), e))?;
            self.accepted(&response, &format!("deleting {name}"))?;
        }
        for record in records {
            if !self.zone.zone_of(&record.name) {
                continue;
            }
            let name = record.name.clone();
            let response = self
                .client
                .append(record, self.zone.clone(), false)
                .await
                .map_err(|e| self.failed(&format!("adding {name}"), e))?;
            self.accepted(&response, &format!("adding {name}"))?;
        }
        Ok(())
    }
}

fn flow_names(flow: &FlowName) -> Result<Vec<Name>, UpdateError> {
    Ok(vec![
        records::fqdn(flow.as_str())?,
        records::service_name(flow)?,
        records::queue_name(flow)?,
    ])
}

/// Sends one round of changes: the agent's records when the zones changed
/// (`namespaces`), the records of `new` flows, the removal of `gone` ones.
/// Flows already published are left alone, so a round never empties a name
/// that stays.
async fn publish(
    config: &UpdateConfig,
    namespaces: Option<&[String]>,
    publication: &Publication,
    new: &BTreeSet<FlowName>,
    gone: &BTreeSet<FlowName>,
) -> Result<(), UpdateError> {
    let mut session = Session::open(config).await?;
    if let Some(namespaces) = namespaces {
        publish_agent(&mut session, namespaces, publication).await?;
    }
    for flow in gone {
        session.replace(&flow_names(flow)?, Vec::new()).await?;
    }
    for flow in new {
        session
            .replace(
                &flow_names(flow)?,
                records::flow_records(flow, publication)?,
            )
            .await?;
    }
    Ok(())
}

/// The agent's SRV per namespace, and its addresses.
async fn publish_agent(
    session: &mut Session,
    namespaces: &[String],
    publication: &Publication,
) -> Result<(), UpdateError> {
    let host = records::fqdn(&publication.fnaa_host)?;
    let mut agent = Vec::new();
    let mut names = vec![host.clone()];
    for ns in namespaces {
        let zone_records = records::zone_records(ns, 1, publication)?;
        names.push(records::agent_name(ns)?);
        agent.extend(zone_records.into_iter().filter(|r| {
            matches!(
                r.record_type(),
                hickory_proto::rr::RecordType::SRV
                    | hickory_proto::rr::RecordType::A
                    | hickory_proto::rr::RecordType::AAAA
            )
        }));
    }
    if !agent.iter().any(|r| r.name == host) {
        agent.extend(
            records::zone_records(&publication.fnaa_host, 1, publication)?
                .into_iter()
                .filter(|r| {
                    matches!(
                        r.record_type(),
                        hickory_proto::rr::RecordType::A | hickory_proto::rr::RecordType::AAAA
                    )
                }),
        );
    }
    names.sort();
    names.dedup();
    agent.dedup_by(|a, b| a == b);
    session.replace(&names, agent).await
}

/// Keeps an external zone in step with the flows, like the embedded server.
pub struct Updater {
    task: tokio::task::JoinHandle<()>,
}

impl Updater {
    /// Starts publishing the flows of `namespaces` (and of the top-level
    /// namespaces created since) into `config.zone`, republishing on every
    /// change `source` signals and every 60 s, retrying failures with a
    /// back-off.
    pub fn start(
        config: UpdateConfig,
        namespaces: Vec<String>,
        publication: Publication,
        source: Arc<dyn Source>,
    ) -> Updater {
        let task = tokio::spawn(async move {
            let mut changes = source.changes();
            let mut published: BTreeSet<FlowName> = BTreeSet::new();
            let mut published_zones: Option<Vec<String>> = None;
            let mut backoff = Duration::from_secs(1);
            loop {
                let zones = super::server::zones(&namespaces, source.as_ref()).await;
                let flows: BTreeSet<FlowName> = match source.flows().await {
                    Ok(flows) => flows
                        .into_iter()
                        .filter(|f| {
                            zones
                                .iter()
                                .any(|ns| f.as_str().ends_with(&format!(".{ns}")))
                        })
                        .collect(),
                    Err(e) => {
                        tracing::warn!("FNS update: cannot list flows: {e}");
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                let gone: BTreeSet<FlowName> = published.difference(&flows).cloned().collect();
                let new: BTreeSet<FlowName> = flows.difference(&published).cloned().collect();
                let zones_changed = published_zones.as_ref() != Some(&zones);
                let agent_zones = zones_changed.then_some(zones.as_slice());
                match publish(&config, agent_zones, &publication, &new, &gone).await {
                    Ok(()) => {
                        published = flows;
                        published_zones = Some(zones);
                        backoff = Duration::from_secs(1);
                        tokio::select! {
                            _ = changes.changed() => {}
                            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!("FNS update: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
        });
        Updater { task }
    }

    /// Stops publishing; what is published stays in the zone.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsig_keygen_files_are_read() {
        let text = "key \"flowd-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n";
        assert_eq!(
            parse_key_file(text),
            Some(("flowd-key".to_owned(), "c2VjcmV0".to_owned()))
        );
        assert_eq!(parse_key_file("nothing here"), None);
    }
}
