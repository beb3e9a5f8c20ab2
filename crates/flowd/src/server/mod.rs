//! The FNAA's FNAP server: accepts FNAP connections (plain text with
//! STARTTLS, and implicit TLS) and runs one session per connection.
//!
//! The protocol is the `flowd-fnap` crate, and so is the order of things:
//! each connection is a [`flowd_fnap::session::Session`], the pure state
//! machine of figure 13 of the draft (greeting, the authentication gate,
//! STARTTLS, error counts, limits, data blocks). This module is the host's
//! side, which owns the meaning of commands, one file per concern:
//!
//! - `listener`: binding, accepting, admission (sessions in all and per
//!   address, [`flowd_fnap::session::Admission`]) and implicit TLS;
//! - `session`: the driver: bytes from the socket into the state machine's
//!   line decoder, its actions carried out (replies, waits, the TLS
//!   upgrade, closing), with the idle timeout on reads and writes;
//! - `auth`: checking credentials, and `CAPABILITIES`;
//! - `dispatch`: commands as [`Agent`] operations;
//! - `data`: the commands with data blocks (`WRITE FLOW` streamed into the
//!   broker, `READ FLOW` streamed out, `PUT COMPONENT` and processor
//!   declarations collected);
//! - `render`: replies and data blocks from agent results.

mod auth;
mod data;
mod dispatch;
mod listener;
mod render;
mod session;

use listener::{Shared, accept};
use render::{data, describe_flow, describe_processor, error_reply, ok};
use session::{Conn, Driver, End};

use crate::agent::processors::ProcessorRequest;
use crate::agent::{Agent, AgentError, Principal};
use crate::config::FnapConfig;
use base64::Engine as _;
use flowd_broker::FlowInfo;
use flowd_core::event::jsonl;
use flowd_engine::RunLimits;
use flowd_fnap::capabilities::{BrokerOffer, Capabilities};
use flowd_fnap::command::{Command, Start};
use flowd_fnap::data::{KeyValues, Outcome as _, ProcessorUpdated, WriteFailed, Written};
use flowd_fnap::framing::{self, Line, LineDecoder};
use flowd_fnap::reply::{Code, Reply};
use flowd_fnap::session::{
    Action, Admission, Credentials, DataLine, Input, Response, Session, SessionConfig,
};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A byte stream a session runs on: TCP, or TLS over TCP.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}
type Stream = Box<dyn Transport>;

/// What the server needs from the host.
pub(crate) struct ServerContext {
    pub(crate) agent: Agent,
    pub(crate) config: FnapConfig,
    /// This host's FQDN, announced in the greeting.
    pub(crate) fqdn: String,
    pub(crate) state_dir: PathBuf,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Broker URLs `DESCRIBE FLOW` gives as the flow's server.
    pub(crate) broker_urls: Vec<String>,
    /// Limits of processors created without explicit ones.
    pub(crate) limits: RunLimits,
}

/// A running server.
pub(crate) struct Server {
    pub(crate) plain: Option<SocketAddr>,
    pub(crate) tls: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds the configured ports and starts accepting.
    pub(crate) async fn start(ctx: ServerContext) -> std::io::Result<Server> {
        let shared = Arc::new(Shared {
            admission: Mutex::new(Admission::new(&ctx.config.limits())),
            acceptor: ctx.tls.clone().map(TlsAcceptor::from),
            ctx,
        });
        let mut tasks = Vec::new();
        let mut plain = None;
        let mut tls = None;
        if let Some(addr) = shared.ctx.config.listen {
            let listener = TcpListener::bind(addr).await?;
            plain = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(accept(shared.clone(), listener, false)));
        }
        if let (Some(addr), Some(_)) = (shared.ctx.config.tls_listen, &shared.acceptor) {
            let listener = TcpListener::bind(addr).await?;
            tls = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(accept(shared.clone(), listener, true)));
        }
        Ok(Server { plain, tls, tasks })
    }

    pub(crate) fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}
