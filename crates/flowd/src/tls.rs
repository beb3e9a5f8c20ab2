//! The host's TLS: its certificate from PEM files, or a self-signed one
//! generated once for development. Client configurations are
//! [`flowd_fnap::tls`]'s.

pub use flowd_fnap::tls::{TlsError, client_config, named_client_config, pinned_client_config};
use flowd_fnap::tls::{file_error, provider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Certificate and key (PEM). Without them the host generates a
/// self-signed certificate for its FQDN, `localhost` and the loopback
/// addresses, kept in `<state_dir>/tls/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// The server's TLS configuration, and the certificate file it presents.
pub fn server_config(
    config: &TlsConfig,
    state_dir: &Path,
    fqdn: &str,
) -> Result<(Arc<rustls::ServerConfig>, PathBuf), TlsError> {
    let (cert_path, key_path) = certificate_files(config, state_dir, fqdn)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| file_error(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&cert_path, e))?;
    if certs.is_empty() {
        return Err(file_error(&cert_path, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_error(&key_path, e))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok((Arc::new(server), cert_path))
}

/// The certificate and key files (PEM) the host presents: the configured
/// ones, or a self-signed pair generated on first use.
pub fn certificate_files(
    config: &TlsConfig,
    state_dir: &Path,
    fqdn: &str,
) -> Result<(PathBuf, PathBuf), TlsError> {
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Ok((cert.clone(), key.clone())),
        (None, None) => self_signed(state_dir, fqdn),
        _ => Err(TlsError::Incomplete),
    }
}

/// `<state_dir>/tls/{cert,key}.pem`, generated on first use.
fn self_signed(state_dir: &Path, fqdn: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = state_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let names = vec![
        fqdn.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::create_dir_all(&dir).map_err(|e| file_error(&dir, e))?;
    std::fs::write(&cert, generated.cert.pem()).map_err(|e| file_error(&cert, e))?;
    flowd_core::secret_file::write(&key, generated.signing_key.serialize_pem().as_bytes())
        .map_err(|e| file_error(&key, e))?;
    Ok((cert, key))
}
