//! A client of the management API (used by `flow` and the tests).

use super::proto::{
    self, dead_letters_client::DeadLettersClient, logs_client::LogsClient,
    pipelines_client::PipelinesClient, processors_client::ProcessorsClient,
    registry_client::RegistryClient,
};
use anyhow::{Context as _, Result};
use base64::Engine as _;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How the client authenticates.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// The host's local administrator token.
    Token(String),
    /// An account.
    Password { user: String, password: String },
}

impl Credentials {
    fn header(&self) -> String {
        match self {
            Credentials::Token(token) => format!("Bearer {token}"),
            Credentials::Password { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
        }
    }
}

/// Adds the `authorization` entry to every call.
#[derive(Clone)]
pub struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Auth>;

/// A connection to one host's API.
#[derive(Clone)]
pub struct ApiClient {
    channel: Channel,
    auth: Auth,
}

/// Size of the chunks of an upload.
pub const UPLOAD_CHUNK: usize = 256 << 10;

impl ApiClient {
    /// Connects to `url` (`http://host:port`, or `https://` with the PEM
    /// CA `ca` when the host's certificate is not from a public CA).
    pub async fn connect(
        url: &str,
        credentials: &Credentials,
        ca: Option<&[u8]>,
    ) -> Result<ApiClient> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("API address `{url}`"))?
            .connect_timeout(std::time::Duration::from_secs(5));
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            endpoint = endpoint.tls_config(tls).context("API TLS")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to the management API at {url}"))?;
        let auth = Auth(
            credentials
                .header()
                .parse()
                .context("credentials are not valid header text")?,
        );
        Ok(ApiClient { channel, auth })
    }

    pub fn registry(&self) -> RegistryClient<Authed> {
        RegistryClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_encoding_message_size(flowd_engine::registry::MAX_COMPONENT_BYTES)
    }

    pub fn processors(&self) -> ProcessorsClient<Authed> {
        ProcessorsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn pipelines(&self) -> PipelinesClient<Authed> {
        PipelinesClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn dead_letters(&self) -> DeadLettersClient<Authed> {
        DeadLettersClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn logs(&self) -> LogsClient<Authed> {
        LogsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Uploads a component in chunks; `progress` is told the bytes sent.
    pub async fn push(
        &self,
        name: &str,
        version: &str,
        bytes: Vec<u8>,
        progress: impl Fn(u64) + Send + 'static,
    ) -> Result<proto::Component, tonic::Status> {
        let header = proto::UploadChunk {
            part: Some(proto::upload_chunk::Part::Header(proto::UploadHeader {
                name: name.to_owned(),
                version: version.to_owned(),
                size: bytes.len() as u64,
            })),
        };
        let chunks: Vec<Vec<u8>> = bytes.chunks(UPLOAD_CHUNK).map(<[u8]>::to_vec).collect();
        let mut sent = 0u64;
        let stream = futures::stream::iter(std::iter::once(header).chain(chunks.into_iter().map(
            move |data| {
                sent += data.len() as u64;
                progress(sent);
                proto::UploadChunk {
                    part: Some(proto::upload_chunk::Part::Data(data)),
                }
            },
        )));
        Ok(self.registry().upload(stream).await?.into_inner())
    }
}
