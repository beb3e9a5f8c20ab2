//! The FNAA server: accepts FNAP connections (plain text with STARTTLS, and
//! implicit TLS), runs one session per connection through the state machine
//! of figure 13 (waiting -> accepting -> ready -> command received -> ready
//! ... QUIT), and turns commands into [`Agent`] operations.
//!
//! Every read has a length limit and an idle timeout, failed
//! authentications are slowed down, and sessions are counted per address,
//! so that no client can exhaust memory or starve the others.

use super::command::{self, Command, Mechanism, Start};
use super::framing::{self, Line};
use super::reply::{Code, Reply};
use crate::agent::processors::ProcessorRequest;
use crate::agent::{Agent, AgentError, Principal};
use crate::broker::FlowInfo;
use crate::config::FnapConfig;
use crate::engine::RunLimits;
use crate::event::jsonl;
use base64::Engine as _;
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

struct Shared {
    ctx: ServerContext,
    acceptor: Option<TlsAcceptor>,
    /// Open sessions per client address.
    sessions: Mutex<HashMap<IpAddr, usize>>,
}

/// Counts a session for its address while alive.
struct SessionSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.shared.sessions.lock()
            && let Some(n) = sessions.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                sessions.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<SessionSlot, &'static str> {
        let mut sessions = self.sessions.lock().map_err(|_| "server state poisoned")?;
        let total: usize = sessions.values().sum();
        if total >= self.ctx.config.max_sessions {
            return Err("too many sessions, try again later");
        }
        let n = sessions.entry(ip).or_insert(0);
        if *n >= self.ctx.config.max_sessions_per_address {
            return Err("too many sessions from your address");
        }
        *n += 1;
        Ok(SessionSlot {
            shared: self.clone(),
            ip,
        })
    }
}

async fn accept(shared: Arc<Shared>, listener: TcpListener, implicit_tls: bool) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, keep serving.
                tracing::warn!("FNAP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let slot = match shared.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    let mut socket = socket;
                    let line = format!("{}\r\n", Reply::new(Code::Closing, why));
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        socket.write_all(line.as_bytes()),
                    )
                    .await;
                    return;
                }
            };
            let stream: Stream = if implicit_tls {
                let Some(acceptor) = shared.acceptor.clone() else {
                    return;
                };
                let handshake = tokio::time::timeout(
                    Duration::from_secs(shared.ctx.config.idle_timeout_secs.clamp(1, 30)),
                    acceptor.accept(socket),
                )
                .await;
                match handshake {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                }
            } else {
                Box::new(socket)
            };
            let mut session = Session {
                shared: shared.clone(),
                peer,
                tls: implicit_tls,
                principal: None,
                before_auth: 0,
                auth_failures: 0,
                errors: 0,
                buf: Vec::new(),
            };
            if let Err(e) = session.run(stream).await {
                tracing::debug!(%peer, "FNAP session ended: {e}");
            }
            drop(slot);
        });
    }
}

/// Why a session ends early.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("client closed the connection")]
    Closed,
    #[error("closed by the server: {0}")]
    Limit(String),
    #[error("client quit")]
    Quit,
    #[error("upgrading to TLS")]
    StartTls,
}

type Reader = BufReader<tokio::io::ReadHalf<Stream>>;
type Writer = BufWriter<tokio::io::WriteHalf<Stream>>;

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    tls: bool,
    principal: Option<Principal>,
    before_auth: u32,
    auth_failures: u32,
    errors: u32,
    buf: Vec<u8>,
}

/// How `READ FLOW` reads.
struct ReadOptions {
    start: Start,
    count: Option<u64>,
    follow: bool,
    sequences: bool,
}

/// What a command handler sends back.
enum Response {
    One(Reply),
    /// `220 DATA`, the lines, then the final reply.
    Data(Vec<String>, Reply),
    /// The handler wrote its reply itself (streamed data).
    Sent {
        success: bool,
    },
}

fn ok(text: impl Into<String>) -> Response {
    Response::One(Reply::ok(text))
}

fn error_reply(e: &AgentError) -> Reply {
    let code = match e {
        AgentError::NotFound { .. } => Code::NotFound,
        AgentError::Exists { .. } => Code::Exists,
        AgentError::Forbidden(_) => Code::Forbidden,
        AgentError::Invalid(_) => Code::Invalid,
        AgentError::Unavailable(_) => Code::TryLater,
    };
    Reply::new(code, e.to_string())
}

impl Session {
    fn config(&self) -> &FnapConfig {
        &self.shared.ctx.config
    }

    fn agent(&self) -> &Agent {
        &self.shared.ctx.agent
    }

    async fn run(&mut self, stream: Stream) -> Result<(), End> {
        let mut stream = stream;
        // The greeting comes on connect (after the handshake with implicit
        // TLS), not again after STARTTLS.
        let mut greet = true;
        loop {
            let (read, write) = tokio::io::split(stream);
            let mut reader = BufReader::new(read);
            let mut writer = BufWriter::new(write);
            let result = self.serve(&mut reader, &mut writer, greet).await;
            match result {
                Err(End::StartTls) => {
                    // Anything the client pipelined after STARTTLS is
                    // dropped (it was sent in clear), as RFC 3207 asks.
                    let plain = reader.into_inner().unsplit(writer.into_inner());
                    let Some(acceptor) = self.shared.acceptor.clone() else {
                        return Ok(());
                    };
                    let limit = Duration::from_secs(self.config().idle_timeout_secs.clamp(1, 30));
                    let tls = tokio::time::timeout(limit, acceptor.accept(plain))
                        .await
                        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
                    stream = Box::new(tls);
                    self.tls = true;
                    greet = false;
                    // A new session state after the upgrade.
                    self.principal = None;
                    self.before_auth = 0;
                }
                Err(End::Limit(why)) => {
                    let _ = send(&mut writer, &Reply::new(Code::Closing, why)).await;
                    let _ = writer.shutdown().await;
                    return Ok(());
                }
                Err(End::Quit) => {
                    let _ = writer.shutdown().await;
                    return Ok(());
                }
                other => return other,
            }
        }
    }

    /// Reads one line, with the idle timeout.
    async fn line(&mut self, reader: &mut Reader) -> Result<Line, End> {
        let idle = Duration::from_secs(self.config().idle_timeout_secs.max(1));
        let max = self.config().max_line;
        match tokio::time::timeout(idle, framing::read_line(reader, max, &mut self.buf)).await {
            Ok(line) => Ok(line?),
            Err(_) => Err(End::Limit("idle timeout, closing".into())),
        }
    }

    async fn serve(
        &mut self,
        reader: &mut Reader,
        writer: &mut Writer,
        greet: bool,
    ) -> Result<(), End> {
        if greet {
            let greeting = Reply::ok(format!("{} FNAA", self.shared.ctx.fqdn));
            send(writer, &greeting).await?;
        }
        loop {
            let line = match self.line(reader).await? {
                Line::Closed => return Err(End::Closed),
                Line::TooLong => {
                    let max = self.config().max_line;
                    self.fail(
                        writer,
                        Reply::new(Code::Syntax, format!("line too long (at most {max} bytes)")),
                    )
                    .await?;
                    continue;
                }
                Line::NotText => {
                    self.fail(writer, Reply::new(Code::Syntax, "not a line of UTF-8 text"))
                        .await?;
                    continue;
                }
                Line::Text(text) => text,
            };
            let command = match command::parse(&line) {
                Ok(c) => c,
                Err(e) => {
                    let code = match e {
                        command::SyntaxError::Empty
                        | command::SyntaxError::TooLong
                        | command::SyntaxError::Unknown(_) => Code::Syntax,
                        _ => Code::Arguments,
                    };
                    self.fail(writer, Reply::new(code, e.to_string())).await?;
                    continue;
                }
            };
            if self.principal.is_none() {
                self.before_auth += 1;
                if self.before_auth > self.config().max_commands_before_auth {
                    return Err(End::Limit("too many commands before authentication".into()));
                }
                if !command.allowed_before_auth() {
                    self.fail(
                        writer,
                        Reply::new(
                            Code::AuthRequired,
                            "authenticate first (AUTHENTICATE PLAIN)",
                        ),
                    )
                    .await?;
                    continue;
                }
            }
            let response = self.execute(command, reader, writer).await?;
            let success = match &response {
                Response::One(r) => r.is_success(),
                Response::Data(_, r) => r.is_success(),
                Response::Sent { success } => *success,
            };
            match response {
                Response::One(reply) => send(writer, &reply).await?,
                Response::Data(lines, last) => {
                    write_line(writer, "220 DATA").await?;
                    for line in &lines {
                        // One data line per item, whatever a value holds.
                        let line = line.replace(['\r', '\n'], " ");
                        write_line(writer, &framing::stuff(&line)).await?;
                    }
                    send(writer, &last).await?;
                }
                Response::Sent { .. } => {}
            }
            if success {
                self.errors = 0;
            } else {
                self.count_error()?;
            }
        }
    }

    fn count_error(&mut self) -> Result<(), End> {
        self.errors += 1;
        if self.errors > self.config().max_errors {
            return Err(End::Limit("too many errors".into()));
        }
        Ok(())
    }

    async fn fail(&mut self, writer: &mut Writer, reply: Reply) -> Result<(), End> {
        send(writer, &reply).await?;
        self.count_error()
    }

    fn principal(&self) -> &Principal {
        // Commands past the authentication gate always have one.
        self.principal.as_ref().unwrap_or(&Principal::Anonymous)
    }

    async fn execute(
        &mut self,
        command: Command,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Response, End> {
        let p = self.principal().clone();
        let agent = self.agent().clone();
        let result: Result<Response, AgentError> = match command {
            Command::Quit => {
                send(writer, &Reply::ok("Bye")).await?;
                return Err(End::Quit);
            }
            Command::Noop => Ok(ok("OK")),
            Command::Help(topic) => Ok(help(topic)),
            Command::Capabilities => Ok(self.capabilities()),
            Command::StartTls => {
                if self.tls {
                    return Ok(Response::One(Reply::new(
                        Code::Sequence,
                        "TLS is already on",
                    )));
                }
                if self.shared.acceptor.is_none() {
                    return Ok(Response::One(Reply::new(
                        Code::TlsUnavailable,
                        "TLS is not configured on this host",
                    )));
                }
                send(writer, &Reply::ok("Ready to start TLS")).await?;
                return Err(End::StartTls);
            }
            Command::Authenticate { mechanism, initial } => {
                return self.authenticate(mechanism, initial, reader, writer).await;
            }
            Command::CreateNamespace {
                namespace,
                owner,
                public,
            } => agent
                .create_namespace_as(&p, &namespace, owner, public)
                .await
                .map(|r| ok(format!("OK {}", r.name))),
            Command::DescribeNamespace(ns) => {
                agent
                    .describe_namespace_as(&p, &ns)
                    .await
                    .map(|(record, flows, children)| {
                        let mut lines = vec![
                            format!("namespace={}", record.name),
                            format!("owner={}", record.owner.as_deref().unwrap_or("(host)")),
                            format!("public={}", record.public),
                            format!("created={}", record.created),
                        ];
                        lines.extend(record.grants.iter().map(|(u, r)| format!("grant={u}:{r}")));
                        lines.extend(flows.iter().map(|f| format!("flow={f}")));
                        lines.extend(children.iter().map(|c| format!("namespace-child={c}")));
                        Response::Data(lines, Reply::ok("OK"))
                    })
            }
            Command::DeleteNamespace(ns) => agent
                .delete_namespace_as(&p, &ns)
                .await
                .map(|()| ok(format!("OK {ns}"))),
            Command::ListNamespaces(parent) => agent
                .list_namespaces_as(&p, parent.as_ref())
                .await
                .map(|records| {
                    let lines = records.iter().map(|r| r.name.to_string()).collect();
                    Response::Data(lines, Reply::ok("OK"))
                }),
            Command::Grant {
                user,
                right,
                namespace,
            } => agent
                .grant_as(&p, &user, Some(right), &namespace)
                .await
                .map(|_| ok(format!("OK {user} {right} {namespace}"))),
            Command::Revoke { user, namespace } => agent
                .grant_as(&p, &user, None, &namespace)
                .await
                .map(|_| ok(format!("OK {user} {namespace}"))),
            Command::CreateFlow { flow, options } => agent
                .create_flow_as(&p, &flow, &options)
                .await
                .map(|info| ok(format!("OK {}", info.name))),
            Command::DescribeFlow(flow) => {
                let urls = self.shared.ctx.broker_urls.join(",");
                match agent.describe_flow_as(&p, &flow).await {
                    Ok(info) => {
                        let namespace = agent
                            .flow_right(&p, &flow)
                            .await
                            .ok()
                            .and_then(|(_, ns)| ns);
                        Ok(Response::Data(
                            describe_flow(&info, namespace, &urls),
                            Reply::ok("OK"),
                        ))
                    }
                    Err(e) => Err(e),
                }
            }
            Command::UpdateFlow { flow, options } => agent
                .update_flow_as(&p, &flow, &options)
                .await
                .map(|info| ok(format!("OK {}", info.name))),
            Command::DeleteFlow(flow) => agent
                .delete_flow_as(&p, &flow)
                .await
                .map(|()| ok(format!("OK {flow}"))),
            Command::ListFlows(namespace) => {
                agent
                    .list_flows_as(&p, namespace.as_ref())
                    .await
                    .map(|flows| {
                        let lines = flows.iter().map(|f| f.name.to_string()).collect();
                        Response::Data(lines, Reply::ok("OK"))
                    })
            }
            Command::ReadFlow {
                flow,
                start,
                count,
                follow,
                sequences,
            } => {
                let options = ReadOptions {
                    start,
                    count,
                    follow,
                    sequences,
                };
                return self.read_flow(&p, flow, options, reader, writer).await;
            }
            Command::WriteFlow(flow) => return self.write_flow(&p, flow, reader, writer).await,
            Command::Subscribe { remote, local } => agent
                .subscribe_as(
                    &p,
                    &remote,
                    local.as_ref(),
                    self.tls || self.plain_trusted(),
                )
                .await
                .map(|subscribed| Response::Data(subscribed.lines(), Reply::ok("OK"))),
            Command::Unsubscribe(copy) => agent
                .unsubscribe_as(&p, &copy)
                .await
                .map(|()| ok(format!("OK {copy}"))),
            Command::ListSubscriptions => agent.list_subscriptions_as(&p).await.map(|subs| {
                let lines = subs
                    .iter()
                    .map(|s| {
                        let bridge = match (&s.agent, &s.broker) {
                            (Some(agent), None) => format!("remote:{agent}"),
                            (Some(agent), Some(_)) => format!("remote+nats:{agent}"),
                            (None, _) => s.processor.clone(),
                        };
                        let mut line =
                            format!("{} {} {} {bridge} {}", s.local, s.remote, s.copy, s.state());
                        if let Some(reason) = s.revoked_reason.as_deref().filter(|_| s.revoked) {
                            line.push(' ');
                            line.push_str(&reason.replace(['\r', '\n'], " "));
                        }
                        line
                    })
                    .collect();
                Response::Data(lines, Reply::ok("OK"))
            }),
            Command::ListSubscribers(flow) => {
                agent.list_subscribers_as(&p, &flow).await.map(|subs| {
                    let lines = subs
                        .iter()
                        .map(|s| {
                            format!("{} {}", s.copy, s.user.as_deref().unwrap_or("(anonymous)"))
                        })
                        .collect();
                    Response::Data(lines, Reply::ok("OK"))
                })
            }
            Command::RemoveSubscriber(copy) => agent
                .remove_subscriber_as(&p, &copy)
                .await
                .map(|()| ok(format!("OK {copy}"))),
            Command::PauseSubscription(local) => agent
                .pause_subscription_as(&p, &local, true)
                .await
                .map(|_| ok(format!("OK {local} paused"))),
            Command::ResumeSubscription(local) => agent
                .pause_subscription_as(&p, &local, false)
                .await
                .map(|_| ok(format!("OK {local} resumed"))),
            Command::StopSubscription(local) => agent
                .stop_subscription_as(&p, &local)
                .await
                .map(|_| ok(format!("OK {local} stopped"))),
            Command::PutComponent => return self.put_component(&p, reader, writer).await,
            Command::CreateProcessor(id) => {
                let request = match self.processor_request(reader, writer).await? {
                    Ok(request) => request,
                    Err(reply) => return Ok(Response::One(reply)),
                };
                let limits = self.shared.ctx.limits.clone();
                agent
                    .create_processor_as(&p, &id, request, &limits)
                    .await
                    .map(|spec| ok(format!("OK {}", spec.id)))
            }
            Command::UpdateProcessor(id) => {
                let request = match self.processor_request(reader, writer).await? {
                    Ok(request) => request,
                    Err(reply) => return Ok(Response::One(reply)),
                };
                agent
                    .update_processor_as(&p, &id, request)
                    .await
                    .map(|spec| ok(format!("OK {} generation {}", spec.id, spec.generation)))
            }
            Command::DescribeProcessor(id) => {
                agent
                    .describe_processor_as(&p, &id)
                    .await
                    .map(|(spec, status)| {
                        Response::Data(describe_processor(&spec, status.as_ref()), Reply::ok("OK"))
                    })
            }
            Command::ListAgents => agent.list_agents_as(&p).await.map(|agents| {
                let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
                let lines = agents
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {} fnap={} api={} instances={} events={} rate={:.1} beat={}ms",
                            a.id,
                            if a.fqdn.is_empty() { "-" } else { &a.fqdn },
                            a.fnap.as_deref().unwrap_or("-"),
                            a.api.as_deref().unwrap_or("-"),
                            a.instances,
                            a.events_in,
                            a.rate,
                            now.saturating_sub(a.heartbeat_ms),
                        )
                    })
                    .collect();
                Response::Data(lines, Reply::ok("OK"))
            }),
            Command::ListProcessors => agent.list_processors_as(&p).await.map(|all| {
                let lines = all
                    .iter()
                    .map(|(spec, status)| {
                        let phase = if spec.paused {
                            "paused".to_owned()
                        } else {
                            status.as_ref().map_or("pending".to_owned(), |s| {
                                serde_json::to_value(s.phase)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_owned))
                                    .unwrap_or_default()
                            })
                        };
                        format!("{} {} {}", spec.id, spec.kind, phase)
                    })
                    .collect();
                Response::Data(lines, Reply::ok("OK"))
            }),
            Command::PauseProcessor(id) => agent
                .pause_processor_as(&p, &id, true)
                .await
                .map(|_| ok(format!("OK {id} paused"))),
            Command::ResumeProcessor(id) => agent
                .pause_processor_as(&p, &id, false)
                .await
                .map(|_| ok(format!("OK {id} resumed"))),
            Command::DeleteProcessor(id) => agent
                .delete_processor_as(&p, &id)
                .await
                .map(|()| ok(format!("OK {id} deleted"))),
        };
        Ok(result.unwrap_or_else(|e| Response::One(error_reply(&e))))
    }

    /// Whether PLAIN is accepted in clear from this client's address.
    fn plain_trusted(&self) -> bool {
        self.config()
            .plain_auth_from
            .iter()
            .any(|net| net.contains(&self.peer.ip()))
    }

    fn capabilities(&self) -> Response {
        let mut lines = vec!["FNAP 1".to_owned()];
        // PLAIN is offered where it would be accepted: over TLS, or from a
        // trusted network.
        let mut auth = Vec::new();
        if self.tls || self.plain_trusted() {
            auth.push("PLAIN");
        }
        if self.config().anonymous {
            auth.push("ANONYMOUS");
        }
        lines.push(format!("AUTH {}", auth.join(" ")));
        if self.shared.acceptor.is_some() && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.tls {
            lines.push("TLS".into());
        }
        lines.push("PROCESSORS bridge collector distributor signal".into());
        lines.push("SUBSCRIBE bridge".into());
        lines.push("READ FOLLOW".into());
        lines.push(format!(
            "BROKER nats-jetstream {}",
            self.shared.ctx.broker_urls.join(",")
        ));
        lines.push(format!("MAX-LINE {}", self.config().max_line));
        lines.push(format!(
            "MAX-COMPONENT {}",
            self.config().max_component_bytes
        ));
        Response::Data(lines, Reply::ok("OK"))
    }

    async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        initial: Option<String>,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Response, End> {
        if self.principal.is_some() {
            return Ok(Response::One(Reply::new(
                Code::Sequence,
                "already authenticated",
            )));
        }
        match mechanism {
            Mechanism::Anonymous => {
                if !self.config().anonymous {
                    return Ok(Response::One(Reply::new(
                        Code::AuthFailed,
                        "anonymous access is disabled on this host",
                    )));
                }
                self.principal = Some(Principal::Anonymous);
                Ok(ok("Authenticated (anonymous: public flows, read only)"))
            }
            Mechanism::Plain => {
                if !self.tls && !self.plain_trusted() {
                    return Ok(Response::One(Reply::new(
                        Code::EncryptionRequired,
                        "PLAIN needs TLS on this connection: STARTTLS first",
                    )));
                }
                let token = match initial {
                    Some(t) => t,
                    None => {
                        send(writer, &Reply::ok("OK")).await?;
                        match self.line(reader).await? {
                            Line::Text(t) => t,
                            Line::Closed => return Err(End::Closed),
                            _ => String::new(),
                        }
                    }
                };
                if token.trim() == "*" {
                    return Ok(Response::One(Reply::new(
                        Code::Arguments,
                        "authentication cancelled",
                    )));
                }
                let credentials = base64::engine::general_purpose::STANDARD
                    .decode(token.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| {
                        let mut parts = s.split('\0');
                        let (authz, user, password) = (parts.next()?, parts.next()?, parts.next()?);
                        (parts.next().is_none() && (authz.is_empty() || authz == user))
                            .then(|| (user.to_owned(), password.to_owned()))
                    });
                let Some((user, password)) = credentials else {
                    return Ok(Response::One(Reply::new(
                        Code::Arguments,
                        "not a SASL PLAIN response (base64 of \\0user\\0password)",
                    )));
                };
                let ctx = &self.shared.ctx;
                let verified = ctx.agent.login(&ctx.state_dir, &user, &password).await;
                match verified {
                    Ok(Some(identity)) => {
                        tracing::debug!(peer = %self.peer, user = identity.user, "FNAP user authenticated");
                        self.principal = Some(Principal::User(identity));
                        self.auth_failures = 0;
                        Ok(ok("Authenticated"))
                    }
                    Ok(None) => {
                        self.auth_failures += 1;
                        let delay = self
                            .config()
                            .auth_failure_delay_ms
                            .saturating_mul(1 << (self.auth_failures - 1).min(5))
                            .min(10_000);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        if self.auth_failures >= self.config().max_auth_failures {
                            return Err(End::Limit("too many failed authentications".into()));
                        }
                        Ok(Response::One(Reply::new(
                            Code::AuthFailed,
                            "authentication failed",
                        )))
                    }
                    Err(e) => {
                        tracing::error!("accounts: {e}");
                        Ok(Response::One(Reply::new(
                            Code::TryLater,
                            "accounts are unavailable",
                        )))
                    }
                }
            }
        }
    }

    /// Reads a client data block up to its `.` line: its lines, unstuffed,
    /// or why it was refused (over `budget` bytes in all, a line too long,
    /// not text); the whole block is read either way.
    async fn block(
        &mut self,
        reader: &mut Reader,
        budget: usize,
    ) -> Result<Result<Vec<String>, Reply>, End> {
        let mut failed = None;
        let mut lines = Vec::new();
        let mut used = 0usize;
        loop {
            match self.line(reader).await? {
                Line::Closed => return Err(End::Closed),
                Line::Text(t) if framing::is_end(&t) => break,
                Line::Text(t) => {
                    used += t.len();
                    if used > budget {
                        lines.clear();
                        failed.get_or_insert_with(|| {
                            Reply::new(Code::TooLarge, "data block too large")
                        });
                    } else if failed.is_none() {
                        lines.push(framing::unstuff(&t).to_owned());
                    }
                }
                Line::TooLong => {
                    failed.get_or_insert_with(|| Reply::new(Code::TooLarge, "data line too long"));
                }
                Line::NotText => {
                    failed.get_or_insert_with(|| {
                        Reply::new(Code::Syntax, "data line is not UTF-8 text")
                    });
                }
            }
        }
        Ok(failed.map_or(Ok(lines), Err))
    }

    /// Reads the `key=value` block of `CREATE`/`UPDATE PROCESSOR`.
    async fn processor_request(
        &mut self,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Result<ProcessorRequest, Reply>, End> {
        send(
            writer,
            &Reply::ok("OK send key=value lines, end with \".\""),
        )
        .await?;
        let lines = match self.block(reader, 1 << 20).await? {
            Ok(lines) => lines,
            Err(reply) => return Ok(Err(reply)),
        };
        Ok(key_values(&lines).and_then(|pairs| {
            ProcessorRequest::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| error_reply(&e))
        }))
    }

    async fn put_component(
        &mut self,
        p: &Principal,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Response, End> {
        send(
            writer,
            &Reply::ok("OK send the component in base64, end with \".\""),
        )
        .await?;
        let budget = self.config().max_component_bytes / 3 * 4 + 8;
        let lines = match self.block(reader, budget).await? {
            Ok(lines) => lines,
            Err(reply) => return Ok(Response::One(reply)),
        };
        let text: String = lines.iter().map(|l| l.trim()).collect();
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) else {
            return Ok(Response::One(Reply::new(
                Code::Arguments,
                "not valid base64",
            )));
        };
        Ok(match self.agent().put_component_as(p, &bytes).await {
            Ok(digest) => ok(format!("OK {digest}")),
            Err(e) => Response::One(error_reply(&e)),
        })
    }

    async fn write_flow(
        &mut self,
        p: &Principal,
        flow: crate::broker::FlowName,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Response, End> {
        let agent = self.agent().clone();
        if let Err(e) = agent.check_write(p, &flow).await {
            return Ok(Response::One(error_reply(&e)));
        }
        send(
            writer,
            &Reply::ok("OK send events as JSON lines, end with \".\""),
        )
        .await?;
        let wrap = jsonl::Wrap::default();
        let mut pending = Vec::new();
        let mut pending_bytes = 0usize;
        let (mut stored, mut duplicates, mut number) = (0u64, 0u64, 0usize);
        let mut failed: Option<Reply> = None;
        loop {
            let line = match self.line(reader).await? {
                Line::Closed => return Err(End::Closed),
                Line::Text(t) if framing::is_end(&t) => break,
                Line::Text(t) => t,
                Line::TooLong => {
                    number += 1;
                    failed.get_or_insert_with(|| {
                        Reply::new(Code::TooLarge, format!("line {number}: event too large"))
                    });
                    continue;
                }
                Line::NotText => {
                    number += 1;
                    failed.get_or_insert_with(|| {
                        Reply::new(Code::Syntax, format!("line {number}: not UTF-8 text"))
                    });
                    continue;
                }
            };
            number += 1;
            if failed.is_some() {
                continue;
            }
            let text = framing::unstuff(&line);
            if text.trim().is_empty() {
                continue;
            }
            match jsonl::parse_line(text, number, &wrap) {
                Ok(event) => {
                    pending_bytes += text.len();
                    pending.push(event);
                }
                Err(e) => {
                    failed = Some(Reply::new(Code::Arguments, e.to_string()));
                    continue;
                }
            }
            // Stored in batches of at most 256 events or 4 MiB, so a
            // session's memory stays bounded whatever the client sends.
            if pending.len() >= 256 || pending_bytes >= 4 << 20 {
                pending_bytes = 0;
                match agent.write(&flow, &pending).await {
                    Ok(published) => {
                        stored += published.stored;
                        duplicates += published.duplicates;
                        pending.clear();
                    }
                    Err(e) => failed = Some(error_reply(&AgentError::from(e))),
                }
            }
        }
        if failed.is_none() && !pending.is_empty() {
            match agent.write(&flow, &pending).await {
                Ok(published) => {
                    stored += published.stored;
                    duplicates += published.duplicates;
                }
                Err(e) => failed = Some(error_reply(&AgentError::from(e))),
            }
        }
        Ok(Response::One(match failed {
            None => Reply::ok(format!(
                "OK {stored} events written, {duplicates} duplicates"
            )),
            Some(reply) => Reply::new(
                reply.code().unwrap_or(Code::Invalid),
                format!("{}; {stored} events were written before it", reply.text),
            ),
        }))
    }

    async fn read_flow(
        &mut self,
        p: &Principal,
        flow: crate::broker::FlowName,
        options: ReadOptions,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Response, End> {
        let ReadOptions {
            start,
            count,
            follow,
            sequences,
        } = options;
        let agent = self.agent().clone();
        let info = match agent.check_read(p, &flow).await {
            Ok(info) => info,
            Err(e) => return Ok(Response::One(error_reply(&e))),
        };
        let first = match start {
            Start::First => Some(1),
            Start::New => None,
            Start::Sequence(n) => Some(n.max(1)),
        };
        let mut events = match agent.reader(&flow, first).await {
            Ok(r) => r,
            Err(e) => return Ok(Response::One(error_reply(&e))),
        };
        write_line(writer, "220 DATA").await?;
        writer.flush().await?;
        // Without FOLLOW, the read ends at what is stored now.
        let last = info.last_sequence;
        let mut sent = 0u64;
        let mut stopped = false;
        let limit = count.unwrap_or(u64::MAX);
        while sent < limit {
            if !follow && (first.is_none() || first.is_some_and(|f| f > last)) {
                break;
            }
            let want = (limit - sent).min(256) as usize;
            let wait = Duration::from_millis(if follow { 500 } else { 200 });
            let batch = tokio::select! {
                batch = events.next(want, wait) => batch,
                // Any line from the client stops the read.
                ready = reader.fill_buf() => {
                    let _ = ready?;
                    stopped = true;
                    break;
                }
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    // The data block ends with the error reply.
                    send(writer, &error_reply(&e)).await?;
                    return Ok(Response::Sent { success: false });
                }
            };
            if batch.is_empty() && !follow {
                // Nothing left of what was stored (expired or deleted).
                break;
            }
            let mut reached_end = false;
            for (sequence, event) in batch {
                if !follow && sequence > last {
                    reached_end = true;
                    break;
                }
                let line = if sequences {
                    format!("{sequence} {}", jsonl::to_line(&event))
                } else {
                    jsonl::to_line(&event)
                };
                write_line(writer, &framing::stuff(&line)).await?;
                sent += 1;
                if !follow && sequence >= last {
                    reached_end = true;
                }
            }
            writer.flush().await?;
            if reached_end {
                break;
            }
        }
        if stopped {
            // Consume the line that stopped the read.
            let _ = self.line(reader).await?;
        }
        send(writer, &Reply::ok(format!("OK {sent} events"))).await?;
        Ok(Response::Sent { success: true })
    }
}

/// `key=value` lines (blank lines and `#` comments skipped).
fn key_values(lines: &[String]) -> Result<Vec<(String, String)>, Reply> {
    let mut pairs = Vec::new();
    for line in lines {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = framing::key_value(line)
            .ok_or_else(|| Reply::new(Code::Arguments, format!("not key=value: {line}")))?;
        pairs.push((k.to_owned(), v.to_owned()));
    }
    Ok(pairs)
}

fn describe_flow(
    info: &FlowInfo,
    namespace: Option<crate::broker::NamespaceName>,
    urls: &str,
) -> Vec<String> {
    let s = &info.settings;
    vec![
        format!("flow={}", info.name),
        format!("uri={}", info.uri),
        format!(
            "namespace={}",
            namespace.map_or_else(|| "(none)".to_owned(), |n| n.to_string())
        ),
        "type=nats-jetstream".to_owned(),
        format!("stream={}", info.stream),
        format!("subject={}", info.subject),
        format!("server={urls}"),
        format!("public={}", s.public),
        format!("events={}", info.events),
        format!("bytes={}", info.bytes),
        format!("first-sequence={}", info.first_sequence),
        format!("last-sequence={}", info.last_sequence),
        format!("max-age={}", s.max_age_secs),
        format!("max-bytes={}", s.max_bytes),
        format!("duplicate-window={}", s.duplicate_window_secs),
    ]
}

fn describe_processor(
    spec: &crate::engine::ProcessorSpec,
    status: Option<&crate::engine::Status>,
) -> Vec<String> {
    let mut lines = vec![
        format!("id={}", spec.id),
        format!("kind={}", spec.kind),
        format!("component={}", spec.component),
        format!("owner={}", spec.owner.as_deref().unwrap_or("(host)")),
        format!("paused={}", spec.paused),
        format!("generation={}", spec.generation),
    ];
    lines.extend(spec.inputs.iter().map(|f| format!("input={f}")));
    lines.extend(spec.outputs.iter().map(|f| format!("output={f}")));
    lines.push(format!("dead-letter={}", spec.dead_letter));
    lines.extend(spec.config.iter().map(|(k, v)| format!("config.{k}={v}")));
    if let Some(s) = status {
        let phase = serde_json::to_value(s.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        lines.push(format!("phase={phase}"));
        lines.push(format!("events-in={}", s.events_in));
        lines.push(format!("events-out={}", s.events_out));
        lines.push(format!("errors={}", s.errors));
        lines.push(format!("dead-lettered={}", s.dead_lettered));
        if let Some(e) = &s.last_error {
            lines.push(format!("last-error={e}"));
        }
    }
    lines
}

fn help(topic: Option<String>) -> Response {
    match topic {
        None => Response::Data(
            command::USAGE
                .iter()
                .map(|(_, u)| (*u).to_owned())
                .collect(),
            Reply::ok("OK"),
        ),
        Some(topic) => match command::USAGE.iter().find(|(n, _)| *n == topic) {
            Some((_, usage)) => Response::Data(vec![(*usage).to_owned()], Reply::ok("OK")),
            None => Response::One(Reply::new(Code::Arguments, format!("no command {topic}"))),
        },
    }
}

async fn write_line(writer: &mut Writer, line: &str) -> std::io::Result<()> {
    writer.write_all(line.as_bytes()).await?;
    writer.write_all(b"\r\n").await
}

async fn send(writer: &mut Writer, reply: &Reply) -> std::io::Result<()> {
    write_line(writer, &reply.to_string()).await?;
    writer.flush().await
}
