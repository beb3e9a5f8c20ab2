//! The Flow Namespace User Agent's configuration (`flow`, figure 15): which
//! FNAA to talk to and with which credentials, in the spirit of the draft's
//! `.flow.yml`, as TOML (`~/.config/flow/config.toml`, or `$FLOW_CONFIG`):
//!
//! ```toml
//! [[agents]]
//! name = "fnaa-unix"
//! address = "fnaa.unix.ar:61000"   # host:port of the FNAP server
//! username = "test"
//! password = "test"                # or password_env = "FLOW_PASSWORD"
//! tls = "starttls"                 # "none" (default), "starttls", "implicit"
//! ca = "/etc/flow/unix-ca.pem"     # certificate(s) to trust for TLS
//!
//! [[namespaces]]
//! name = "flows.unix.ar"
//! agent = "fnaa-unix"
//! ```
//!
//! A command names a flow or namespace; the agent serving the longest
//! matching namespace is used, else the first agent. With no file at all the
//! user agent talks to the host running on this machine (found through its
//! `host.json`) and logs in as that host's local administrator with the
//! token the host keeps in its state directory, so a fresh install works
//! without any account.

use crate::config::HostFile;
use flowd_fnap::client::{Client, ClientError, Security};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::accounts::local::{LOCAL_ADMIN, ensure_local_token, local_token_path};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    None,
    StartTls,
    Implicit,
}

/// One FNAA the user agent knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentEntry {
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// The FQDN the agent announces (informational).
    pub fqdn: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    pub tls: TlsMode,
    pub ca: Option<PathBuf>,
    /// The agent's management API, `http://host:port` or `https://...`.
    pub api: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceEntry {
    pub name: String,
    pub agent: String,
}

/// The user agent's configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserAgentConfig {
    pub agents: Vec<AgentEntry>,
    pub namespaces: Vec<NamespaceEntry>,
}

/// Why the user agent cannot reach an FNAA.
#[derive(Debug, thiserror::Error)]
pub enum UserAgentError {
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("no agent named `{0}` in the configuration")]
    NoSuchAgent(String),
    #[error(
        "no FNAA to talk to: no agent configured and no local host ({0} does not exist; is `flowd serve` running?)"
    )]
    NoHost(PathBuf),
    #[error("the local host serves no FNAP port")]
    NoPort,
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl UserAgentConfig {
    /// `$FLOW_CONFIG`, else `~/.config/flow/config.toml`; missing is empty.
    pub fn default_path() -> Option<PathBuf> {
        std::env::var_os("FLOW_CONFIG")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/flow/config.toml"))
            })
    }

    pub fn load(path: &Path) -> Result<UserAgentConfig, UserAgentError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| UserAgentError::Config {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UserAgentConfig::default()),
            Err(e) => Err(UserAgentError::Config {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// The agent for a command about `name` (a flow or namespace), or the
    /// one named.
    pub fn pick(
        &self,
        named: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<&AgentEntry>, UserAgentError> {
        if let Some(wanted) = named {
            return self
                .agents
                .iter()
                .find(|a| a.name == wanted)
                .map(Some)
                .ok_or_else(|| UserAgentError::NoSuchAgent(wanted.to_owned()));
        }
        if let Some(name) = name {
            let best = self
                .namespaces
                .iter()
                .filter(|ns| name == ns.name || name.ends_with(&format!(".{}", ns.name)))
                .max_by_key(|ns| ns.name.len());
            if let Some(ns) = best {
                return self
                    .agents
                    .iter()
                    .find(|a| a.name == ns.agent)
                    .map(Some)
                    .ok_or_else(|| UserAgentError::NoSuchAgent(ns.agent.clone()));
            }
        }
        Ok(self.agents.first())
    }
}

/// Credentials given on the command line or in the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub address: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsMode>,
    pub ca: Option<PathBuf>,
    pub anonymous: bool,
}

/// The user name and password to log in with: the overrides, else the
/// agent entry's (its password, or the variable `password_env` names).
fn login(entry: &AgentEntry, overrides: &Overrides) -> (Option<String>, Option<String>) {
    let username = overrides.username.clone().or(entry.username.clone());
    let password = overrides
        .password
        .clone()
        .or(entry.password.clone())
        .or_else(|| {
            entry
                .password_env
                .as_deref()
                .and_then(|v| std::env::var(v).ok())
        });
    (username, password)
}

/// Connects and authenticates: to `entry`, or to the local host of
/// `state_dir`, with the overrides applied.
pub async fn connect(
    entry: Option<&AgentEntry>,
    state_dir: &Path,
    overrides: &Overrides,
) -> Result<Client, UserAgentError> {
    let local = HostFile::read(state_dir);
    let mut entry = entry.cloned().unwrap_or_default();
    if entry.address.is_empty() && overrides.address.is_none() {
        let host = local
            .as_ref()
            .ok_or_else(|| UserAgentError::NoHost(HostFile::path(state_dir)))?;
        let addr = host.fnap.ok_or(UserAgentError::NoPort)?;
        entry.address = addr.to_string();
        if entry.username.is_none()
            && overrides.username.is_none()
            && let Ok(token) = std::fs::read_to_string(local_token_path(state_dir))
        {
            entry.username = Some(LOCAL_ADMIN.to_owned());
            entry.password = Some(token.trim().to_owned());
        }
    }
    if entry.ca.is_none() {
        // The local host's own (possibly self-signed) certificate.
        entry.ca = local.as_ref().and_then(|h| h.tls_cert.clone());
    }
    let (username, password) = login(&entry, overrides);
    let address = overrides.address.clone().unwrap_or(entry.address);
    let tls = overrides.tls.clone().unwrap_or(entry.tls);
    let ca = overrides.ca.clone().or(entry.ca);
    let security = match (tls, ca) {
        (TlsMode::None, _) => Security::Plain,
        (TlsMode::StartTls, Some(ca)) => Security::StartTls { ca },
        (TlsMode::Implicit, Some(ca)) => Security::Implicit { ca },
        (_, None) => {
            return Err(UserAgentError::Config {
                path: PathBuf::from("--ca"),
                reason: "TLS needs a CA or certificate file to trust (--ca or `ca =`)".into(),
            });
        }
    };
    let mut client = Client::connect(&address, &security).await?;
    match (overrides.anonymous, username, password) {
        (false, Some(user), Some(password)) => {
            client.authenticate_plain(&user, &password).await?;
        }
        _ => {
            client.authenticate_anonymous().await?;
        }
    }
    Ok(client)
}

/// Connects to a management API: `api` (or the entry's, or the local
/// host's), logging in as `connect` does for FNAP.
pub async fn api_client(
    entry: Option<&AgentEntry>,
    state_dir: &Path,
    overrides: &Overrides,
    api: Option<&str>,
) -> anyhow::Result<crate::api::client::ApiClient> {
    use crate::api::client::{ApiClient, Credentials};
    use anyhow::Context as _;
    let local = HostFile::read(state_dir);
    let entry = entry.cloned().unwrap_or_default();
    let url = match api.map(str::to_owned).or(entry.api.clone()) {
        Some(url) => url,
        None => {
            let host = local
                .as_ref()
                .ok_or_else(|| UserAgentError::NoHost(HostFile::path(state_dir)))?;
            let addr = host
                .api
                .context("the local host serves no management API ([api] listen)")?;
            let scheme = if host.api_tls { "https" } else { "http" };
            format!("{scheme}://{addr}")
        }
    };
    let credentials = match login(&entry, overrides) {
        (Some(user), Some(password)) => Credentials::Password { user, password },
        _ => {
            let token = std::fs::read_to_string(local_token_path(state_dir)).with_context(|| {
                format!(
                    "no credentials given (--user/--password) and no local administrator token in {}",
                    state_dir.display()
                )
            })?;
            Credentials::Token(token.trim().to_owned())
        }
    };
    let ca_path = overrides
        .ca
        .clone()
        .or(entry.ca.clone())
        .or_else(|| local.as_ref().and_then(|h| h.tls_cert.clone()));
    let ca = match ca_path {
        Some(path) if url.starts_with("https://") => {
            Some(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
        }
        _ => None,
    };
    ApiClient::connect(&url, &credentials, ca.as_deref()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_picked_by_longest_namespace() {
        let config: UserAgentConfig = toml::from_str(
            r#"
            [[agents]]
            name = "a"
            address = "127.0.0.1:1"
            [[agents]]
            name = "b"
            address = "127.0.0.1:2"
            [[namespaces]]
            name = "example.com"
            agent = "a"
            [[namespaces]]
            name = "team.example.com"
            agent = "b"
            "#,
        )
        .expect("valid");
        let pick = |named, name| {
            config
                .pick(named, name)
                .expect("ok")
                .map(|a| a.name.clone())
        };
        assert_eq!(pick(None, Some("x.team.example.com")), Some("b".into()));
        assert_eq!(pick(None, Some("x.example.com")), Some("a".into()));
        assert_eq!(
            pick(None, Some("other.org")),
            Some("a".into()),
            "first agent"
        );
        assert_eq!(pick(Some("b"), Some("x.example.com")), Some("b".into()));
        assert!(config.pick(Some("zz"), None).is_err());
        assert!(toml::from_str::<UserAgentConfig>("[[agents]]\nnom = 1").is_err());
    }
}
