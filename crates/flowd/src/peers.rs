//! Sessions with other participants' hosts (figures 9 and 10 of the draft):
//! the FNAA of a remote flow found through the Flow Name Service, an FNAP
//! session to it, authenticated with the credentials configured for the
//! remote namespace (else `ANONYMOUS`, enough for public flows); `SUBSCRIBE`
//! and `UNSUBSCRIBE` there, and where the remote flow's broker is.
//!
//! The TLS policy comes from the configuration, never from DNS: a
//! namespace with a `[[peers]]` entry is reached over STARTTLS unless the
//! entry says `tls = "plain"`, whatever the `tls` TXT record says, and the
//! agent DNS names must lie under the namespace or be one of the entry's
//! `hosts` (its certificate is checked against that name). A resolver that
//! drops the TXT record or names another host gets a refusal, not the
//! password. Namespaces without an entry are reached anonymously in plain
//! text: nothing secret is sent, and only public flows are served so.
//!
//! Errors keep their class: a remote host that cannot be reached, or that
//! answers 4xx, is [`PeerError::Unavailable`] (try again later); only a
//! 5xx refusal is permanent. [`crate::relays`] carries subscriptions.

use flowd_broker::FlowName;
use flowd_broker::grants::PullCredentials;
use flowd_fnap::Code;
use flowd_fnap::client::{Client, ClientError, ClientLimits, Security, quote};
use flowd_fnap::data::{BrokerAuth, BrokerCredentials, DataError, SubscribeReply};
use flowd_fns::{Discovery, DiscoveryError, Location};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Credentials for the FNAA of other participants' namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// The remote namespace (its flows and those below).
    pub namespace: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Certificate(s) to trust for the peer's TLS (PEM; the system bundle,
    /// `/etc/ssl/certs/ca-certificates.crt`, for a publicly issued one).
    pub ca: Option<PathBuf>,
    /// Whether sessions are encrypted: `required` (the default: STARTTLS,
    /// refused when the peer does not offer it), `implicit` (TLS from the
    /// first byte, at `tls_port`) or `plain` (clear text, credentials
    /// included; for loopback and test set-ups).
    pub tls: PeerTls,
    /// The peer's implicit-TLS port, for `tls = "implicit"`; the port DNS
    /// names (the SRV record's) when unset.
    pub tls_port: Option<u16>,
    /// Agent host names outside the namespace that DNS may name for it
    /// (`fnaa.unix.ar` for `flows.unix.ar`). Names under the namespace are
    /// always accepted.
    pub hosts: Vec<String>,
}

/// The encryption of sessions with a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerTls {
    /// STARTTLS, with the certificate checked against the agent's name.
    #[default]
    Required,
    /// TLS from the first byte (the peer's implicit-TLS listener), with
    /// the certificate checked against the agent's name.
    Implicit,
    /// Clear text, by explicit choice.
    Plain,
}

impl PeerConfig {
    /// Whether `host`, the agent DNS named for a flow of this namespace,
    /// may serve it: a name under the namespace, or one of `hosts`.
    pub fn may_serve(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let namespace = self.namespace.trim_end_matches('.').to_ascii_lowercase();
        host == namespace
            || host.ends_with(&format!(".{namespace}"))
            || self
                .hosts
                .iter()
                .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(&host))
    }

    /// A configuration error, for the daemon to refuse at start: TLS
    /// required without certificates to trust.
    pub fn check(&self) -> Result<(), String> {
        if self.tls != PeerTls::Plain && self.ca.is_none() {
            return Err(format!(
                "[[peers]] {}: tls = \"required\" (the default) or \"implicit\" needs `ca`, \
                 the certificates to trust (/etc/ssl/certs/ca-certificates.crt for a publicly \
                 issued one), or tls = \"plain\" to send credentials in clear",
                self.namespace
            ));
        }
        Ok(())
    }

    /// The password, from the entry or its environment variable.
    fn password(&self) -> Option<String> {
        self.password.clone().or_else(|| {
            self.password_env
                .as_deref()
                .and_then(|v| std::env::var(v).ok())
        })
    }
}

/// Why a peer could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The remote host says the flow (or copy) does not exist.
    #[error("no such {what}: {name}")]
    NotFound {
        /// What was looked for.
        what: &'static str,
        /// Its name, with the remote reply.
        name: String,
    },
    /// The remote host refused this host's credentials or rights.
    #[error("{0}")]
    Forbidden(String),
    /// The remote host refused the request for good (another 5xx).
    #[error("{0}")]
    Refused(String),
    /// The remote host did not answer, answered 4xx, or sent something
    /// this host cannot use: it may work later.
    #[error("{0}")]
    Unavailable(String),
}

/// What `SUBSCRIBE` made: the copy, and the credentials to pull it from
/// the broker when the host issues them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The copy of the flow made for this subscription.
    pub copy: FlowName,
    /// Credentials to pull the copy from the remote broker.
    pub credentials: Option<PullCredentials>,
}

impl Subscribed {
    /// The `SUBSCRIBE` reply, as the protocol crate encodes it.
    pub fn reply(&self) -> SubscribeReply {
        SubscribeReply {
            copy: self.copy.clone(),
            broker: self.credentials.as_ref().map(wire_credentials),
        }
    }

    /// The data lines of the `SUBSCRIBE` reply: the copy's name (as in the
    /// draft), then the broker credentials as `key=value` lines.
    pub fn lines(&self) -> Vec<String> {
        self.reply().encode()
    }
}

/// Broker credentials this host issued, in their wire form.
pub fn wire_credentials(c: &PullCredentials) -> BrokerCredentials {
    BrokerCredentials {
        user: c.user.clone(),
        auth: match (&c.jwt, &c.seed) {
            (Some(jwt), Some(seed)) => BrokerAuth::Jwt {
                jwt: jwt.clone(),
                seed: seed.clone(),
            },
            _ => BrokerAuth::Password(c.password.clone()),
        },
        stream: c.stream.clone(),
        consumer: c.consumer.clone(),
        inbox: c.inbox.clone(),
        api_prefix: c.api_prefix.clone(),
        tls: c.tls,
    }
}

/// Broker credentials a remote host sent (already checked by
/// [`SubscribeReply::decode`]), as the broker crate connects with them.
pub fn pull_credentials_of(c: BrokerCredentials) -> PullCredentials {
    let (password, jwt, seed) = match c.auth {
        BrokerAuth::Password(password) => (password, None, None),
        BrokerAuth::Jwt { jwt, seed } => (String::new(), Some(jwt), Some(seed)),
    };
    PullCredentials {
        user: c.user,
        password,
        stream: c.stream,
        consumer: c.consumer,
        inbox: c.inbox,
        api_prefix: c.api_prefix,
        tls: c.tls,
        jwt,
        seed,
    }
}

/// The broker credentials of a `SUBSCRIBE` reply's data lines, if any.
pub fn pull_credentials<S: AsRef<str>>(lines: &[S]) -> Result<Option<PullCredentials>, DataError> {
    Ok(SubscribeReply::decode(lines)?
        .broker
        .map(pull_credentials_of))
}

/// The longest a remote host may take over one step (connecting with
/// TLS and logging in, `SUBSCRIBE`, `UNSUBSCRIBE`): a remote that never
/// answers gets a `4xx`, tried again later, not a session held open.
pub const REMOTE_STEP: std::time::Duration = std::time::Duration::from_secs(20);

/// `step` under [`REMOTE_STEP`].
async fn in_time<T>(
    what: &str,
    step: impl std::future::Future<Output = Result<T, PeerError>>,
) -> Result<T, PeerError> {
    tokio::time::timeout(REMOTE_STEP, step)
        .await
        .unwrap_or_else(|_| {
            Err(PeerError::Unavailable(format!(
                "{what}: the remote host did not answer within {} s",
                REMOTE_STEP.as_secs()
            )))
        })
}

/// How this host reaches other hosts.
pub struct Federation {
    discovery: Discovery,
    peers: Vec<PeerConfig>,
}

/// A failed exchange with a remote host, by class: what the remote host
/// refused for good (5xx) stays permanent, anything else (4xx, a broken
/// connection, a time-out) is [`PeerError::Unavailable`].
pub(crate) fn refused(e: ClientError, what: &str) -> PeerError {
    let ClientError::Refused(reply) = e else {
        return PeerError::Unavailable(format!("{what}: {e}"));
    };
    // What the remote host said is quoted, never echoed whole.
    let reply = flowd_fnap::Reply::new(reply.code, quote(&reply.text));
    match reply.code {
        Code::NotFound => PeerError::NotFound {
            what: "remote flow",
            name: format!("{what} ({reply})"),
        },
        Code::AuthRequired | Code::EncryptionRequired | Code::AuthFailed | Code::Forbidden => {
            PeerError::Forbidden(format!("the remote host refused {what}: {reply}"))
        }
        code if code.is_permanent() => {
            PeerError::Refused(format!("the remote host refused {what}: {reply}"))
        }
        _ => PeerError::Unavailable(format!("the remote host failed {what}: {reply}")),
    }
}

impl Federation {
    pub fn new(
        nameserver: Option<SocketAddr>,
        peers: Vec<PeerConfig>,
    ) -> Result<Federation, DiscoveryError> {
        Ok(Federation {
            discovery: Discovery::new(nameserver)?,
            peers,
        })
    }

    fn peer(&self, flow: &FlowName) -> Option<&PeerConfig> {
        self.peers
            .iter()
            .filter(|p| flow.as_str().ends_with(&format!(".{}", p.namespace)))
            .max_by_key(|p| p.namespace.len())
    }

    /// Where `flow` is served. A host publishes its public flows only, so a
    /// flow DNS does not know, in a namespace with a `[[peers]]` entry (a
    /// private flow this host has an account for), is looked for at the
    /// namespace's agent (`_fnaa._tcp.<namespace>`), without a broker.
    async fn locate(&self, flow: &FlowName) -> Result<Location, PeerError> {
        let missing = |flow: &FlowName| PeerError::NotFound {
            what: "flow in DNS",
            name: flow.to_string(),
        };
        match self.discovery.locate(flow).await {
            Ok(location) => Ok(location),
            Err(DiscoveryError::NoSuchFlow(name)) => {
                let Some(peer) = self.peer(flow) else {
                    return Err(missing(&name));
                };
                let (host, port, addresses) = self
                    .discovery
                    .namespace_agent(&peer.namespace)
                    .await
                    .map_err(|_| missing(&name))?;
                if addresses.is_empty() {
                    return Err(missing(&name));
                }
                Ok(Location {
                    flow: flow.clone(),
                    host,
                    port,
                    addresses,
                    tls: false,
                    broker: None,
                })
            }
            Err(DiscoveryError::NotServed(name)) => Err(missing(&name)),
            Err(other) => Err(PeerError::Unavailable(other.to_string())),
        }
    }

    /// An authenticated session with the FNAA serving `flow`, and its
    /// address.
    pub async fn session(&self, flow: &FlowName) -> Result<(Client, SocketAddr), PeerError> {
        in_time(&format!("reaching the agent of {flow}"), self.open(flow)).await
    }

    async fn open(&self, flow: &FlowName) -> Result<(Client, SocketAddr), PeerError> {
        let location = self.locate(flow).await?;
        let peer = self.peer(flow);
        let security = match peer {
            Some(p) if !p.may_serve(&location.host) => {
                return Err(PeerError::Unavailable(format!(
                    "DNS names {} as the agent of {flow}, which is neither under {} nor one of \
                     its [[peers]] hosts",
                    location.host, p.namespace
                )));
            }
            Some(PeerConfig {
                tls: PeerTls::Required,
                ca: Some(ca),
                ..
            }) => Security::StartTls { ca: ca.clone() },
            Some(PeerConfig {
                tls: PeerTls::Implicit,
                ca: Some(ca),
                ..
            }) => Security::Implicit { ca: ca.clone() },
            Some(PeerConfig {
                tls: PeerTls::Required | PeerTls::Implicit,
                ca: None,
                namespace,
                ..
            }) => {
                return Err(PeerError::Unavailable(format!(
                    "[[peers]] {namespace} requires TLS and names no ca"
                )));
            }
            Some(_) | None => Security::Plain,
        };
        let mut last = None;
        let tls_port = peer
            .filter(|p| p.tls == PeerTls::Implicit)
            .and_then(|p| p.tls_port);
        for mut addr in location.agent_addrs() {
            if let Some(port) = tls_port {
                addr.set_port(port);
            }
            let connected = Client::connect_limited(
                &addr.to_string(),
                &location.host,
                &security,
                ClientLimits::federation(),
            )
            .await;
            match connected {
                Ok(mut client) => {
                    let credentials =
                        peer.and_then(|p| Some((p.username.as_deref()?, p.password()?)));
                    let auth = match credentials {
                        Some((user, password)) => client.authenticate_plain(user, &password).await,
                        None if peer.is_some_and(|p| p.username.is_some()) => {
                            // A configured account whose password is
                            // missing (an unset variable) is a set-up
                            // fault: falling back to ANONYMOUS would read
                            // the remote's refusals as revocations.
                            return Err(PeerError::Unavailable(format!(
                                "no password for the [[peers]] account of {flow} (password or password_env)"
                            )));
                        }
                        None => client.authenticate_anonymous().await,
                    };
                    auth.map_err(|e| refused(e, &format!("authenticating at {addr}")))?;
                    return Ok((client, addr));
                }
                Err(ClientError::Refused(reply)) if !matches!(security, Security::Plain) => {
                    last = Some(format!(
                        "{addr}: TLS is required, and the agent answered {reply}"
                    ));
                }
                Err(e) => last = Some(format!("{addr}: {e}")),
            }
        }
        Err(PeerError::Unavailable(format!(
            "the FNAA of {flow} ({}) is unreachable: {}",
            location.host,
            last.unwrap_or_else(|| "no address".into())
        )))
    }

    /// `SUBSCRIBE <remote>` at the remote host: the copy it made (with the
    /// broker credentials it issued, if any), and the address of the agent.
    pub async fn subscribe(
        &self,
        remote: &FlowName,
    ) -> Result<(Subscribed, SocketAddr), PeerError> {
        let (mut client, addr) = self.session(remote).await?;
        let (lines, _) = in_time(&format!("SUBSCRIBE {remote}"), async {
            client
                .data(&format!("SUBSCRIBE {remote}"))
                .await
                .map_err(|e| refused(e, &format!("SUBSCRIBE {remote}")))
        })
        .await?;
        let _ = client.quit().await;
        let reply = match SubscribeReply::decode(&lines) {
            Ok(reply) => reply,
            Err(e) => {
                // Credentials this host cannot use are worth nothing: a
                // copy it can name is cancelled again.
                if let Some(copy) = lines.first().and_then(|l| FlowName::parse(l).ok()) {
                    let _ = self.unsubscribe(remote, &copy).await;
                }
                return Err(PeerError::Unavailable(format!("SUBSCRIBE {remote}: {e}")));
            }
        };
        Ok((
            Subscribed {
                copy: reply.copy,
                credentials: reply.broker.map(pull_credentials_of),
            },
            addr,
        ))
    }

    /// How to reach the broker publishing `flow` with `credentials`:
    /// over TLS checked against the broker's name in DNS when the broker
    /// requires it (which needs the peer's CA), in plain text only on
    /// loopback. `None`: the credentials cannot be used safely, the copy is
    /// read over FNAP.
    pub(crate) async fn broker(
        &self,
        flow: &FlowName,
        credentials: &PullCredentials,
    ) -> Result<Option<RemoteBroker>, PeerError> {
        let Some((host, urls, loopback)) = self.broker_urls(flow).await? else {
            tracing::info!(%flow, "the remote broker is not published (a private flow): reading over FNAP");
            return Ok(None);
        };
        // The broker DNS names is held to the same names as the agent.
        if let Some(peer) = self.peer(flow)
            && !peer.may_serve(&host)
        {
            tracing::warn!(%flow, broker = host, "the remote broker is neither under the namespace nor one of its [[peers]] hosts: reading over FNAP");
            return Ok(None);
        }
        if !credentials.tls {
            if loopback {
                return Ok(Some(RemoteBroker { urls, tls: None }));
            }
            tracing::warn!(%flow, "the remote broker is plain text beyond loopback: reading over FNAP");
            return Ok(None);
        }
        let Some(ca) = self.peer(flow).and_then(|p| p.ca.clone()) else {
            tracing::warn!(%flow, "the remote broker requires TLS and no [[peers]] ca is set for it: reading over FNAP");
            return Ok(None);
        };
        let tls = crate::tls::named_client_config(&ca, &host)
            .map_err(|e| PeerError::Unavailable(format!("TLS to the broker of {flow}: {e}")))?;
        Ok(Some(RemoteBroker {
            urls,
            tls: Some(tls),
        }))
    }

    /// The broker host publishing `flow` (its `_queue` SRV record), the
    /// `nats://` URLs of its addresses, and whether they are all loopback;
    /// `None` when no broker is published for it.
    async fn broker_urls(
        &self,
        flow: &FlowName,
    ) -> Result<Option<(String, Vec<String>, bool)>, PeerError> {
        let unavailable = |e: DiscoveryError| PeerError::Unavailable(e.to_string());
        let location = self.locate(flow).await?;
        let Some((host, port, _)) = location.broker else {
            return Ok(None);
        };
        let addresses = self.discovery.addresses(&host).await.map_err(unavailable)?;
        if addresses.is_empty() {
            return Err(PeerError::Unavailable(format!(
                "the broker host {host} of {flow} has no address"
            )));
        }
        let loopback = addresses
            .iter()
            .all(|ip| flowd_broker::embedded::is_loopback(*ip));
        let urls = addresses
            .into_iter()
            .map(|ip| format!("nats://{}", SocketAddr::new(ip, port)))
            .collect();
        Ok(Some((host, urls, loopback)))
    }

    /// `UNSUBSCRIBE <copy>` at the remote host.
    pub async fn unsubscribe(&self, remote: &FlowName, copy: &FlowName) -> Result<(), PeerError> {
        let (mut client, _) = self.session(remote).await?;
        in_time(&format!("UNSUBSCRIBE {copy}"), async {
            client
                .command(&format!("UNSUBSCRIBE {copy}"))
                .await
                .map_err(|e| refused(e, &format!("UNSUBSCRIBE {copy}")))
        })
        .await?;
        let _ = client.quit().await;
        Ok(())
    }
}

/// Where and how a remote broker is reached.
pub(crate) struct RemoteBroker {
    pub(crate) urls: Vec<String>,
    pub(crate) tls: Option<rustls::ClientConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowd_fnap::data::KeyValues;

    /// The `broker-*` lines of a reply, read back as the relay reads them.
    fn from_lines<S: AsRef<str>>(lines: &[S]) -> Result<Option<PullCredentials>, DataError> {
        Ok(BrokerCredentials::decode(&KeyValues::decode(lines)?)?.map(pull_credentials_of))
    }

    fn to_lines(c: &PullCredentials) -> Vec<String> {
        wire_credentials(c).encode()
    }

    /// These credentials if they can only pull the copy `stream`.
    fn check_for(c: PullCredentials, stream: &str) -> Result<PullCredentials, DataError> {
        let wire = wire_credentials(&c);
        wire.check()?;
        if wire.stream != stream {
            return Err(DataError::Missing("broker-stream of the copy"));
        }
        Ok(pull_credentials_of(wire))
    }

    #[test]
    fn reply_lines_round_trip_and_absent_means_none() {
        let mut with_jwt = PullCredentials::new("ksdj898", "FLOW_ksdj898_time", false);
        with_jwt.password = String::new();
        with_jwt.jwt = Some("eyJ.x.y".into());
        with_jwt.seed = Some("SUAB".into());
        let mut lines = to_lines(&with_jwt);
        assert!(!lines.iter().any(|l| l.starts_with("broker-password")));
        assert_eq!(from_lines(&lines).expect("reads"), Some(with_jwt));
        lines.retain(|l| !l.starts_with("broker-seed"));
        assert!(from_lines(&lines).is_err(), "a token without its seed");
        for tls in [false, true] {
            let creds = PullCredentials::new("ksdj898", "FLOW_ksdj898_time", tls);
            let mut lines = vec!["ksdj898.time".to_owned()];
            lines.extend(to_lines(&creds));
            assert_eq!(from_lines(&lines[1..]).expect("reads"), Some(creds.clone()));
            assert_eq!(pull_credentials(&lines).expect("reads"), Some(creds));
        }
        assert_eq!(pull_credentials(&["x.y".to_owned()]).expect("reads"), None);
        let err = from_lines(&["broker-type=kafka"]).expect_err("kafka");
        assert!(err.to_string().contains("kafka"), "{err}");
        let err = from_lines(&["broker-type=nats", "broker-user=u"]).expect_err("incomplete");
        assert!(err.to_string().contains("broker-password"), "{err}");
        let err = from_lines(&["broker-type=nats", "broker-tls=maybe"]).expect_err("unknown tls");
        assert!(err.to_string().contains("maybe"), "{err}");
    }

    #[test]
    fn a_remote_host_cannot_point_the_relay_elsewhere() {
        let good = PullCredentials::new("abc", "FLOW_abc_x", false);
        assert!(check_for(good.clone(), "FLOW_abc_x").is_ok());
        assert!(
            check_for(good.clone(), "FLOW_secret").is_err(),
            "another stream"
        );
        let mut bad = good.clone();
        bad.consumer = "processor.>".into();
        assert!(
            check_for(bad, "FLOW_abc_x").is_err(),
            "a subject in the consumer"
        );
        let mut bad = good.clone();
        bad.inbox = "flow".into();
        assert!(
            check_for(bad, "FLOW_abc_x").is_err(),
            "an inbox outside _INBOX_"
        );
        let mut bad = good;
        bad.api_prefix = "$JS.hub.API".into();
        assert!(check_for(bad, "FLOW_abc_x").is_err(), "another API");
    }
}
