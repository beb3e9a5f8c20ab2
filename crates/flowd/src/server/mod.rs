//! The FNAA's FNAP server: accepts FNAP connections (plain text with STARTTLS, and
//! implicit TLS), runs one session per connection through the state machine
//! of figure 13 (waiting -> accepting -> ready -> command received -> ready
//! ... QUIT), and turns commands into [`Agent`] operations.
//!
//! Every read has a length limit and an idle timeout, failed
//! authentications are slowed down, and sessions are counted per address,
//! so that no client can exhaust memory or starve the others.
//!
//! The protocol (commands, replies, framing) is the `flowd-fnap` crate;
//! this module is the host's side, one file per concern:
//!
//! - `listener`: binding, accepting, admission (sessions per address) and
//!   implicit TLS;
//! - `session`: the session driver (greeting, line reading, STARTTLS,
//!   error counting, the authentication gate);
//! - `auth`: `AUTHENTICATE` and `CAPABILITIES`;
//! - `dispatch`: commands as agent operations;
//! - `data`: the commands that stream data blocks (`WRITE FLOW`,
//!   `READ FLOW`, `PUT COMPONENT`, processor declarations);
//! - `render`: replies and data blocks from agent results.

mod auth;
mod data;
mod dispatch;
mod listener;
mod render;
mod session;

use listener::{Shared, accept};
use render::{
    Response, describe_flow, describe_processor, error_reply, help, key_values, ok, send,
    write_line,
};
use session::{End, ReadOptions, Reader, Session, Writer};

use crate::agent::processors::ProcessorRequest;
use crate::agent::{Agent, AgentError, Principal};
use crate::config::FnapConfig;
use base64::Engine as _;
use flowd_broker::FlowInfo;
use flowd_core::event::jsonl;
use flowd_engine::RunLimits;
use flowd_fnap::command::{self, Command, Mechanism, Start};
use flowd_fnap::data::{Outcome as _, ProcessorUpdated, WriteFailed, Written};
use flowd_fnap::framing::{self, Line};
use flowd_fnap::reply::{Code, Reply};
use flowd_fnap::sasl::PlainCredentials;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A byte stream a session runs on: TCP, or TLS over TCP.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}
type Stream = Box<dyn Transport>;

/// What the server needs from the host.
pub struct ServerContext {
    pub agent: Agent,
    pub config: FnapConfig,
    /// This host's FQDN, announced in the greeting.
    pub fqdn: String,
    pub state_dir: PathBuf,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Broker URLs `DESCRIBE FLOW` gives as the flow's server.
    pub broker_urls: Vec<String>,
    /// Limits of processors created without explicit ones.
    pub limits: RunLimits,
}

/// A running server.
pub struct Server {
    pub plain: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds the configured ports and starts accepting.
    pub async fn start(ctx: ServerContext) -> std::io::Result<Server> {
        let shared = Arc::new(Shared {
            sessions: Mutex::new(HashMap::new()),
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

    pub fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}
