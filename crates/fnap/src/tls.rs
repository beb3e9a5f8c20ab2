//! Client-side TLS configurations (rustls with the ring provider): trust a
//! CA file (or the system roots), pin one certificate, or check a name of
//! our choosing against a CA. Used by FNAP clients and by hosts reaching
//! another participant's broker.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A certificate could not be generated.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// Only one of a certificate and its key was configured.
    #[error("set both [fnap.tls] cert and key, or neither")]
    Incomplete,
}

/// The crypto provider of every configuration: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A [`TlsError::File`] for `path`.
pub fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// A client configuration trusting the certificates in `ca` (PEM): the
/// host's self-signed certificate, or the CA that issued the host's.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_error(ca, e))? {
        roots
            .add(cert.map_err(|e| file_error(ca, e))?)
            .map_err(|e| file_error(ca, e))?;
    }
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(client))
}

/// A client configuration that accepts exactly the certificate in
/// `cert_file` (its first one) from whatever address it connects to: how
/// the host reaches its own embedded broker, whose certificate it holds.
/// The file is read again when the server presents another certificate
/// (a renewed one: the broker reads the file at each reload).
pub fn pinned_client_config(cert_file: &Path) -> Result<rustls::ClientConfig, TlsError> {
    first_certificate(cert_file)?;
    let provider = provider();
    let verifier = Pinned {
        file: cert_file.to_owned(),
        algorithms: provider.signature_verification_algorithms,
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// A client configuration trusting the certificates in `ca` that checks
/// the server's certificate against `name` whatever name the connection
/// was opened with: a broker found in DNS is reached by address, but must
/// prove the name its SRV record gave.
pub fn named_client_config(ca: &Path, name: &str) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_error(ca, e))? {
        roots
            .add(cert.map_err(|e| file_error(ca, e))?)
            .map_err(|e| file_error(ca, e))?;
    }
    let provider = provider();
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| TlsError::Config(rustls::Error::General(format!("`{name}`: {e}"))))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Named { name, inner }))
        .with_no_client_auth())
}

/// The first certificate of a PEM file.
fn first_certificate(file: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::pem_file_iter(file)
        .map_err(|e| file_error(file, e))?
        .next()
        .ok_or_else(|| file_error(file, "no certificate in the file"))?
        .map_err(|e| file_error(file, e))
}

/// Accepts the first certificate of a file, byte for byte, with valid
/// handshake signatures.
#[derive(Debug)]
struct Pinned {
    file: PathBuf,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let pinned =
            first_certificate(&self.file).map_err(|e| rustls::Error::General(e.to_string()))?;
        if end_entity.as_ref() == pinned.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// WebPKI verification against a fixed name.
#[derive(Debug)]
struct Named {
    name: rustls::pki_types::ServerName<'static>,
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for Named {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
