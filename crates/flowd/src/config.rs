//! `flowd` configuration (TOML). Every key has a default, so `flowd serve`
//! with no file starts a working host on loopback with its own NATS server.
//! The reference, every section and key with an example, is
//! `docs/configuration.md`; a test below reads it, so it stays complete.

use flowd_engine::RunLimits;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub participant: Participant,
    pub nats: Nats,
    pub cluster: flowd_broker::cluster::ClusterConfig,
    pub metrics: MetricsConfig,
    pub fnap: FnapConfig,
    pub api: ApiConfig,
    pub console: ConsoleConfig,
    pub telemetry: crate::telemetry::TelemetryConfig,
    pub fns: FnsConfig,
    /// Credentials for other participants' namespaces (remote
    /// subscriptions); without an entry, sessions are anonymous.
    pub peers: Vec<crate::peers::PeerConfig>,
    pub limits: LimitsConfig,
    /// The bounds on password checks (FNAP and the gRPC API).
    pub logins: crate::logins::LoginLimits,
    /// What one principal may hold (subscriptions, processors, components).
    pub quotas: crate::agent::quotas::Quotas,
}

/// `[limits]`: the limits of processors declared without their own, and
/// (`[limits.max]`) the highest any declaration may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// The defaults (`memory_mib`, `deadline_ms`, `batch`, `max_attempts`,
    /// `tick_ms`).
    #[serde(flatten)]
    pub defaults: RunLimits,
    /// The maxima.
    pub max: crate::agent::processors::LimitMaxima,
}

/// The Flow Name Service: the embedded authoritative DNS server that
/// publishes this host's flows, and the resolver used to find others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FnsConfig {
    /// UDP and TCP address of the embedded server; `None` disables it.
    #[serde(with = "address_or_off")]
    pub listen: Option<SocketAddr>,
    /// The FNAA host name published as SRV target (default: the
    /// participant's FQDN).
    pub agent_host: Option<String>,
    /// Addresses published for the FNAA host (default: the FNAP address).
    pub addresses: Vec<std::net::IpAddr>,
    /// FNAP port published (default: the FNAP listen port).
    pub fnap_port: Option<u16>,
    /// TTL of published records, in seconds.
    pub ttl: u32,
    /// Name server used for discovery (`host:port`); `None`: the system's.
    pub nameserver: Option<SocketAddr>,
    /// Also publish to an external authoritative server (RFC 2136).
    pub update: Option<flowd_fns::update::UpdateConfig>,
}

impl Default for FnsConfig {
    fn default() -> Self {
        FnsConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8053))),
            agent_host: None,
            addresses: Vec::new(),
            fnap_port: None,
            ttl: 60,
            nameserver: None,
            update: None,
        }
    }
}

/// The FNAP server: addresses, TLS and the limits that keep one client
/// from hurting the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FnapConfig {
    /// Plain-text port (STARTTLS upgrades it); `None` disables it.
    #[serde(with = "address_or_off")]
    pub listen: Option<SocketAddr>,
    /// Implicit-TLS port; `None` disables it.
    #[serde(with = "address_or_off")]
    pub tls_listen: Option<SocketAddr>,
    pub tls: TlsConfig,
    /// Networks from which `AUTHENTICATE PLAIN` is accepted without TLS.
    pub plain_auth_from: Vec<ipnet::IpNet>,
    /// Whether `AUTHENTICATE ANONYMOUS` is offered (public flows, read only).
    pub anonymous: bool,
    /// Longest line accepted (commands and data lines), in bytes.
    pub max_line: usize,
    /// Longest line accepted before the client has authenticated.
    pub max_line_before_auth: usize,
    /// Commands a client may send before authenticating.
    pub max_commands_before_auth: u32,
    /// Failed authentications before the connection is closed.
    pub max_auth_failures: u32,
    /// First delay before answering a failed authentication; it doubles
    /// with each failure of the session.
    pub auth_failure_delay_ms: u64,
    /// Consecutive erroneous lines before the connection is closed.
    pub max_errors: u32,
    /// A session silent for this long is closed.
    pub idle_timeout_secs: u64,
    pub max_sessions: usize,
    pub max_sessions_per_address: usize,
    /// Largest component `PUT COMPONENT` accepts.
    pub max_component_bytes: usize,
}

impl Default for FnapConfig {
    fn default() -> Self {
        FnapConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 61000))),
            tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 61001))),
            tls: TlsConfig::default(),
            plain_auth_from: vec![
                ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).into(),
                ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::LOCALHOST, 128).into(),
            ],
            anonymous: true,
            max_line: 1 << 20,
            max_line_before_auth: 4 << 10,
            max_commands_before_auth: 20,
            max_auth_failures: 5,
            auth_failure_delay_ms: 500,
            max_errors: 20,
            idle_timeout_secs: 300,
            max_sessions: 10_000,
            max_sessions_per_address: 2_000,
            max_component_bytes: 32 << 20,
        }
    }
}

impl FnapConfig {
    /// The limits of this configuration, as the FNAP session state machine
    /// and admission take them (`max_request_bytes` keeps its default).
    pub fn limits(&self) -> flowd_fnap::session::Limits {
        flowd_fnap::session::Limits {
            max_line: self.max_line,
            max_line_before_auth: self.max_line_before_auth,
            max_commands_before_auth: self.max_commands_before_auth,
            max_auth_failures: self.max_auth_failures,
            auth_failure_delay_ms: self.auth_failure_delay_ms,
            max_errors: self.max_errors,
            idle_timeout_secs: self.idle_timeout_secs,
            max_sessions: self.max_sessions,
            max_sessions_per_address: self.max_sessions_per_address,
            max_component_bytes: self.max_component_bytes,
            ..flowd_fnap::session::Limits::default()
        }
    }
}

/// The gRPC management API (docs/api.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the API; `None` disables it.
    #[serde(with = "address_or_off")]
    pub listen: Option<SocketAddr>,
    /// Serve TLS with the FNAP certificate ([fnap.tls]).
    pub tls: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 61002))),
            tls: false,
        }
    }
}

/// `[console]`: the web console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Address of the console; `None` disables it. Loopback by default;
    /// serve it further only with `tls`.
    #[serde(with = "address_or_off")]
    pub listen: Option<SocketAddr>,
    /// Serve HTTPS with the FNAP certificate ([fnap.tls]), like the API.
    pub tls: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 61003))),
            tls: false,
        }
    }
}

pub use crate::tls::TlsConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Participant {
    pub fqdn: String,
    pub namespaces: Vec<String>,
    pub state_dir: PathBuf,
}

impl Default for Participant {
    fn default() -> Self {
        Participant {
            fqdn: "localhost".into(),
            namespaces: vec!["localhost".into()],
            state_dir: default_state_dir(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Nats {
    pub urls: Vec<String>,
    pub server: Option<PathBuf>,
    /// Copies of each flow and bucket this host creates (3 on a
    /// three-node cluster, so losing a node loses nothing).
    pub replicas: usize,
    /// Address the embedded server listens on (default: the FNAP
    /// address, which DNS publishes as the broker's): subscribers on other
    /// hosts pull their copies from it.
    pub listen: Option<std::net::IpAddr>,
    /// Where the embedded server's monitoring endpoint (HTTP, no
    /// authentication: `/varz`, `/healthz`, `/jsz`) listens; loopback
    /// only. Default: a free port on the loopback address of `listen`'s
    /// family. The address is logged at start.
    pub monitor: Option<std::net::SocketAddr>,
    /// TLS on the embedded server's client port: `auto` (on whenever it
    /// listens beyond loopback) or `required` (always).
    pub tls: BrokerTls,
    /// Limits of each subscriber's account (embedded server or operator).
    pub subscribers: flowd_broker::grants::SubscriberLimits,
    /// The host's credentials file (user JWT and seed) for an
    /// operator-run NATS.
    pub credentials: Option<PathBuf>,
    /// Subscriber accounts on an operator-run NATS.
    pub operator: Option<OperatorConfig>,
}

/// What an operator-run NATS gave the participant to issue its
/// subscribers' accounts (docs/federation.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// File holding an operator signing key's seed (`SO...`).
    pub signing_key: PathBuf,
    /// The public key of the host's account (`A...`), which exports the
    /// pull services.
    pub account: String,
}

/// When the embedded broker's client port speaks TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerTls {
    /// TLS whenever the port listens beyond loopback.
    #[default]
    Auto,
    /// TLS always.
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus `/metrics` endpoint; `None` disables it.
    #[serde(with = "address_or_off")]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

/// A listening address in TOML: `"host:port"`, or `"off"` for none (TOML
/// has no null, and every address has a default).
mod address_or_off {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub(super) fn serialize<S: Serializer>(
        addr: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match addr {
            Some(a) => s.collect_str(a),
            None => s.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("`{text}`: expected \"host:port\" or \"off\""))
        })
    }
}

/// `$FLOWD_STATE_DIR`, else `~/.local/share/flowd`, else `./.flowd`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOWD_STATE_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/flowd"))
        .unwrap_or_else(|| PathBuf::from(".flowd"))
}

/// Why a configuration file is not usable. The cause is part of the
/// message and not a separate `source`, so that a report of the whole
/// chain (`{:#}`) says it once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse {
        path: PathBuf,
        reason: toml::de::Error,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        toml::from_str(&text).map_err(|reason| ConfigError::Parse {
            path: path.to_owned(),
            reason,
        })
    }
}

/// What a running host tells local clients, in `<state_dir>/host.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFile {
    pub fqdn: String,
    pub nats_urls: Vec<String>,
    pub metrics: Option<SocketAddr>,
    /// FNAP plain-text and implicit-TLS addresses.
    #[serde(default)]
    pub fnap: Option<SocketAddr>,
    #[serde(default)]
    pub fnap_tls: Option<SocketAddr>,
    /// The embedded name service (UDP and TCP).
    #[serde(default)]
    pub fns: Option<SocketAddr>,
    /// The gRPC management API, and whether it speaks TLS.
    #[serde(default)]
    pub api: Option<SocketAddr>,
    #[serde(default)]
    pub api_tls: bool,
    /// The web console, and whether it speaks TLS.
    #[serde(default)]
    pub console: Option<SocketAddr>,
    #[serde(default)]
    pub console_tls: bool,
    /// The certificate the FNAP server presents (PEM file).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    pub pid: u32,
}

impl HostFile {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("host.json")
    }

    pub fn read(state_dir: &Path) -> Option<HostFile> {
        let text = std::fs::read_to_string(Self::path(state_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(Self::path(state_dir), json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ```toml block of docs/configuration.md.
    fn reference() -> String {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("its end");
        doc[start..end].to_owned()
    }

    /// Every key path of a TOML table (`nats.subscribers.payload`).
    fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        let toml::Value::Table(table) = value else {
            return;
        };
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            keys(v, &path, out);
            out.push(path);
        }
    }

    #[test]
    fn the_configuration_reference_is_complete_and_reads() {
        let text = reference();
        let read: Config = toml::from_str(&text).expect("the reference is a valid configuration");
        assert_ne!(read, Config::default(), "it sets values");
        let documented: toml::Value = toml::from_str(&text).expect("TOML");
        let mut documented_keys = Vec::new();
        keys(&documented, "", &mut documented_keys);
        let defaults = toml::Value::try_from(Config::default()).expect("serialises");
        let mut default_keys = Vec::new();
        keys(&defaults, "", &mut default_keys);
        let missing: Vec<&String> = default_keys
            .iter()
            .filter(|k| !documented_keys.contains(k))
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/configuration.md: {missing:?}"
        );
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c: Config = toml::from_str("").expect("empty is valid");
        assert!(c.nats.urls.is_empty(), "embedded NATS by default");
        assert_eq!(c.limits.defaults.deadline_ms, 100);
        let c: Config =
            toml::from_str("[nats]\nurls = [\"nats://127.0.0.1:4222\"]\n[limits]\nbatch = 10")
                .expect("valid");
        assert_eq!(c.limits.defaults.batch, 10);
        assert_eq!(
            c.limits.defaults.memory_mib, 64,
            "unspecified limits keep defaults"
        );
        let c: Config =
            toml::from_str("[limits]\nbatch = 10\n[limits.max]\nmemory_mib = 4096").expect("valid");
        assert_eq!(c.limits.max.memory_mib, 4096);
        assert_eq!(c.limits.max.batch, 10_000, "unspecified maxima keep theirs");
        assert!(toml::from_str::<Config>("[limits.max]\nmemory = 1").is_err());
        let c: Config = toml::from_str(
            "[fnap]\nlisten = \"off\"\ntls_listen = \"127.0.0.1:7000\"\n[fns]\nlisten = \"off\"\n[metrics]\nlisten = \"off\"",
        )
        .expect("valid");
        assert_eq!(c.fnap.listen, None);
        assert_eq!(c.fnap.tls_listen, Some(([127, 0, 0, 1], 7000).into()));
        assert_eq!(c.fns.listen, None);
        assert_eq!(c.metrics.listen, None);
        let err = toml::from_str::<Config>("[fns]\nlisten = \"nowhere\"").expect_err("bad");
        assert!(
            err.to_string()
                .contains("expected \"host:port\" or \"off\""),
            "{err}"
        );
        let err = toml::from_str::<Config>("[nats]\nurl = \"x\"").expect_err("typo");
        assert!(err.to_string().contains("unknown field `url`"), "{err}");
    }
}
