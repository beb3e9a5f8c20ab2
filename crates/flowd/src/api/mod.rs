//! The gRPC management API, next to FNAP, for tools and scripts: the
//! component [`Registry`](flowd_engine::registry), figure 6's processor lifecycle
//! [pipelines](crate::pipeline) and the processor log. The protocol is in
//! `proto/flowd/v1/api.proto`; docs/api.md describes it.
//!
//! Every call is authenticated with the host's accounts, as FNAP is:
//! `authorization: Bearer <local administrator token>` or
//! `authorization: Basic <base64 of user:password>`. The services only
//! translate: what each call does is decided by [`Agent`], [`Registry`]
//! and [`Pipelines`].

pub mod client;
mod convert;
mod services;
pub mod turns;

pub(crate) use services::{chosen_letters, read_logs};

/// The generated protobuf types and service stubs.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("flowd.v1");
}

use crate::agent::Agent;
use crate::pipeline::Pipelines;
use anyhow::{Context as _, Result};
use flowd_engine::RunLimits;
use flowd_engine::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What the services need.
#[derive(Clone)]
pub struct ApiContext {
    pub agent: Agent,
    pub registry: Registry,
    pub pipelines: Pipelines,
    pub state_dir: PathBuf,
    pub defaults: RunLimits,
    /// Log follows and dead-letter scans in progress, per principal.
    pub long_reads: Arc<turns::LongReads>,
}

/// A running API server.
pub struct ApiServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Binds `addr` and serves; `tls` is a PEM certificate chain and key.
    pub async fn start(
        addr: SocketAddr,
        ctx: ApiContext,
        tls: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("management API {addr}"))?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(ctx);
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            builder = builder
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
                .context("management API TLS")?;
        }
        let max = flowd_engine::registry::MAX_COMPONENT_BYTES;
        let router = builder
            .add_service(
                proto::registry_server::RegistryServer::new(services::RegistryService(ctx.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(proto::processors_server::ProcessorsServer::new(
                services::ProcessorsService(ctx.clone()),
            ))
            .add_service(proto::pipelines_server::PipelinesServer::new(
                services::PipelinesService(ctx.clone()),
            ))
            .add_service(proto::logs_server::LogsServer::new(services::LogsService(
                ctx.clone(),
            )))
            .add_service(proto::dead_letters_server::DeadLettersServer::new(
                services::DeadLettersService(ctx),
            ));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming).await {
                tracing::error!("management API stopped: {e}");
            }
        });
        tracing::info!(%addr, "management API listening");
        Ok(ApiServer { addr, task })
    }

    pub fn stop(self) {
        self.task.abort();
    }
}
