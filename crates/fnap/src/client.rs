//! An async FNAP client, used by the `flow` user agent and by hosts that talk
//! to other hosts. It speaks the same framing as the server
//! ([`super::framing`]) and turns error replies into [`ClientError::Refused`].

use super::command::Command;
use super::data::{ComponentPut, Outcome, Written};
use super::framing::{self, Line};
use super::reply::{Code, Reply};
use super::sasl::PlainCredentials;
use flowd_core::FlowName;
use rustls::pki_types::ServerName;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}
type Stream = Box<dyn Transport>;

/// What a client accepts from a server: a server is a stranger too (a
/// host's federation client talks to whatever DNS named).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Longest line, in bytes. Default 16 MiB.
    pub max_line: usize,
    /// Most bytes of one data block's lines. Default 256 MiB.
    pub max_block_bytes: usize,
    /// Most lines of one data block. Default 16 Mi.
    pub max_block_lines: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_line: 16 << 20,
            max_block_bytes: 256 << 20,
            max_block_lines: 16 << 20,
        }
    }
}

impl ClientLimits {
    /// The bounds for a host's exchanges with other hosts: lines as long
    /// as an event's (1 MiB, with room for its sequence), and replies in
    /// blocks short as they are (a copy's name, broker credentials): 256
    /// KiB and 1000 lines. A `READ FLOW` is read line by line, not held.
    pub fn federation() -> ClientLimits {
        ClientLimits {
            max_line: (1 << 20) + 64,
            max_block_bytes: 256 << 10,
            max_block_lines: 1000,
        }
    }
}

/// At most this much of a server's line is quoted in an error.
const QUOTED: usize = 200;

/// `line`, cut to [`QUOTED`] bytes (at a character boundary) for an error
/// message: what a server said is quoted, never echoed whole.
pub fn quote(line: &str) -> String {
    if line.len() <= QUOTED {
        return line.to_owned();
    }
    let mut end = QUOTED;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &line[..end], line.len())
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS configuration or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent something that is not FNAP, or not what the command
    /// answers.
    #[error("unexpected line from the server: {0}")]
    Protocol(String),
    /// The server answered with an error reply.
    #[error("{0}")]
    Refused(Reply),
}

impl ClientError {
    /// The reply code when the server refused.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Refused(reply) => Some(reply.code),
            _ => None,
        }
    }

    /// Whether the failure is temporary, so that the same call may succeed
    /// later: the connection could not be made, broke or was closed, or
    /// the server refused with a `4xx` code (`421` and `450` included).
    /// TLS failures, protocol errors and `5xx` refusals are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Io(_) | ClientError::Closed => true,
            ClientError::Refused(reply) => reply.is_transient(),
            ClientError::Tls(_) | ClientError::Protocol(_) => false,
        }
    }
}

/// How to secure the connection.
#[derive(Debug, Clone, Default)]
pub enum Security {
    /// Plain text (fine on loopback).
    #[default]
    Plain,
    /// Plain text upgraded with STARTTLS, trusting this CA/certificate file.
    StartTls {
        /// The certificates to trust (PEM).
        ca: PathBuf,
    },
    /// TLS from the first byte.
    Implicit {
        /// The certificates to trust (PEM).
        ca: PathBuf,
    },
}

/// An open FNAP session.
pub struct Client {
    reader: BufReader<tokio::io::ReadHalf<Stream>>,
    writer: BufWriter<tokio::io::WriteHalf<Stream>>,
    greeting: Reply,
    buf: Vec<u8>,
    limits: ClientLimits,
}

fn split(
    stream: Stream,
) -> (
    BufReader<tokio::io::ReadHalf<Stream>>,
    BufWriter<tokio::io::WriteHalf<Stream>>,
) {
    let (r, w) = tokio::io::split(stream);
    (BufReader::new(r), BufWriter::new(w))
}

async fn tls_wrap(stream: Stream, ca: &std::path::Path, host: &str) -> Result<Stream, ClientError> {
    let config = super::tls::client_config(ca).map_err(|e| ClientError::Tls(e.to_string()))?;
    let name =
        ServerName::try_from(host.to_owned()).map_err(|e| ClientError::Tls(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(Box::new(tls))
}

impl Client {
    /// Connects to `host:port`, secures the session as asked and reads the
    /// greeting.
    pub async fn connect(addr: &str, security: &Security) -> Result<Client, ClientError> {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Client::connect_named(addr, &host, security).await
    }

    /// Connects to `addr` (an address found through DNS, say) and checks
    /// the server's certificate against `host`, the name it should hold.
    pub async fn connect_named(
        addr: &str,
        host: &str,
        security: &Security,
    ) -> Result<Client, ClientError> {
        Client::connect_limited(addr, host, security, ClientLimits::default()).await
    }

    /// [`Client::connect_named`] with the whole session, the greeting and
    /// the `STARTTLS` answer included, held to `limits`: a peer that is not
    /// trusted yet gets no larger buffer before TLS than after.
    pub async fn connect_limited(
        addr: &str,
        host: &str,
        security: &Security,
        limits: ClientLimits,
    ) -> Result<Client, ClientError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream: Stream = match security {
            Security::Implicit { ca } => tls_wrap(Box::new(tcp), ca, host).await?,
            _ => Box::new(tcp),
        };
        let (reader, writer) = split(stream);
        let mut client = Client {
            reader,
            writer,
            greeting: Reply::ok(""),
            buf: Vec::new(),
            limits,
        };
        client.greeting = client.reply().await?;
        if !client.greeting.is_success() {
            return Err(ClientError::Refused(client.greeting));
        }
        if let Security::StartTls { ca } = security {
            client.command("STARTTLS").await?;
            let Client { reader, writer, .. } = client;
            let plain = reader.into_inner().unsplit(writer.into_inner());
            let (reader, writer) = split(tls_wrap(plain, ca, host).await?);
            client = Client {
                reader,
                writer,
                greeting: Reply::ok(""),
                buf: Vec::new(),
                limits,
            };
        }
        Ok(client)
    }

    /// Holds the rest of the session to `limits` (the greeting was read
    /// under the defaults' line limit).
    pub fn with_limits(mut self, limits: ClientLimits) -> Client {
        self.limits = limits;
        self
    }

    /// The server's greeting (`220 <fqdn> FNAA`).
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    async fn line(&mut self) -> Result<String, ClientError> {
        match framing::read_line(&mut self.reader, self.limits.max_line, &mut self.buf).await? {
            Line::Text(t) => Ok(t),
            Line::Closed => Err(ClientError::Closed),
            Line::TooLong => Err(ClientError::Protocol("line too long".into())),
            Line::NotText => Err(ClientError::Protocol("not UTF-8 text".into())),
        }
    }

    async fn reply(&mut self) -> Result<Reply, ClientError> {
        let line = self.line().await?;
        Reply::parse(&line).ok_or_else(|| ClientError::Protocol(quote(&line)))
    }

    async fn send_line(&mut self, line: &str) -> Result<(), ClientError> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await?;
        Ok(())
    }

    /// Sends a command line; returns its reply, or the error reply as
    /// [`ClientError::Refused`].
    pub async fn command(&mut self, line: &str) -> Result<Reply, ClientError> {
        self.send_line(line).await?;
        self.writer.flush().await?;
        self.outcome().await
    }

    /// The next reply, as success or [`ClientError::Refused`].
    async fn outcome(&mut self) -> Result<Reply, ClientError> {
        let reply = self.reply().await?;
        if reply.is_success() {
            Ok(reply)
        } else {
            Err(ClientError::Refused(reply))
        }
    }

    /// Sends a command answered with a data block; returns its lines and
    /// the final reply.
    pub async fn data(&mut self, line: &str) -> Result<(Vec<String>, Reply), ClientError> {
        let command = line;
        let first = self.command(command).await?;
        if !first.text.starts_with("DATA") {
            return Ok((Vec::new(), first));
        }
        let mut lines = Vec::new();
        let mut bytes = 0usize;
        loop {
            let line = self.line().await?;
            if let Some(reply) = Reply::parse(&line) {
                return if reply.is_success() {
                    Ok((lines, reply))
                } else {
                    Err(ClientError::Refused(reply))
                };
            }
            bytes = bytes.saturating_add(line.len());
            if lines.len() >= self.limits.max_block_lines || bytes > self.limits.max_block_bytes {
                return Err(ClientError::Protocol(format!(
                    "the reply to `{}` is longer than {} lines or {} bytes",
                    quote(command),
                    self.limits.max_block_lines,
                    self.limits.max_block_bytes
                )));
            }
            lines.push(framing::unstuff(&line).to_owned());
        }
    }

    /// Sends a command followed by a data block of `lines`.
    pub async fn block<I, S>(&mut self, line: &str, lines: I) -> Result<Reply, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command(line).await?;
        for l in lines {
            self.send_line(&framing::stuff(l.as_ref())).await?;
        }
        self.send_line(".").await?;
        self.writer.flush().await?;
        self.outcome().await
    }

    /// `AUTHENTICATE PLAIN`, as in the draft's transcripts (the token on its
    /// own line after `220 OK`).
    pub async fn authenticate_plain(
        &mut self,
        user: &str,
        password: &str,
    ) -> Result<Reply, ClientError> {
        self.command("AUTHENTICATE PLAIN").await?;
        let token = PlainCredentials {
            user: user.to_owned(),
            password: password.to_owned(),
        }
        .encode();
        self.command(&token).await
    }

    /// `AUTHENTICATE ANONYMOUS`: read access to public flows.
    pub async fn authenticate_anonymous(&mut self) -> Result<Reply, ClientError> {
        self.command("AUTHENTICATE ANONYMOUS").await
    }

    /// Sends a command as its canonical line ([`Command::encode`]); returns
    /// its reply, or the error reply as [`ClientError::Refused`].
    pub async fn execute(&mut self, command: &Command) -> Result<Reply, ClientError> {
        self.command(&command.encode()).await
    }

    /// Uploads a component; returns its digest (`sha256:<hex>`).
    pub async fn put_component(&mut self, bytes: &[u8]) -> Result<String, ClientError> {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        let lines = text
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned());
        let reply = self.block("PUT COMPONENT", lines).await?;
        ComponentPut::from_reply(&reply)
            .map(|put| put.digest)
            .map_err(|_| ClientError::Protocol(reply.to_string()))
    }

    /// `WRITE FLOW <flow>` with these events (JSON lines): how many were
    /// stored. A failure after some were stored is
    /// [`ClientError::Refused`]; [`WriteFailed`](crate::data::WriteFailed)
    /// reads how many.
    pub async fn write_flow<I, S>(
        &mut self,
        flow: &FlowName,
        events: I,
    ) -> Result<Written, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let reply = self
            .block(&Command::WriteFlow(flow.clone()).encode(), events)
            .await?;
        Written::from_reply(&reply).map_err(|_| ClientError::Protocol(reply.to_string()))
    }

    /// `READ FLOW ...`: calls `each` with every event line until the server
    /// ends the block; when `each` returns `false` the client asks the
    /// server to stop.
    pub async fn read(
        &mut self,
        line: &str,
        mut each: impl FnMut(&str) -> bool,
    ) -> Result<Reply, ClientError> {
        let first = self.command(line).await?;
        if !first.text.starts_with("DATA") {
            return Ok(first);
        }
        let mut stopping = false;
        loop {
            let line = self.line().await?;
            if let Some(reply) = Reply::parse(&line) {
                return if reply.is_success() {
                    Ok(reply)
                } else {
                    Err(ClientError::Refused(reply))
                };
            }
            if !stopping && !each(framing::unstuff(&line)) {
                stopping = true;
                self.send_line("STOP").await?;
                self.writer.flush().await?;
            }
        }
    }

    /// Starts a `READ FLOW` whose lines the caller pulls with
    /// [`Client::read_next`].
    pub async fn read_start(&mut self, line: &str) -> Result<(), ClientError> {
        let first = self.command(line).await?;
        if first.text.starts_with("DATA") {
            Ok(())
        } else {
            Err(ClientError::Protocol(first.to_string()))
        }
    }

    /// The next data line of a read started with [`Client::read_start`],
    /// or `None` when the server ended it successfully.
    pub async fn read_next(&mut self) -> Result<Option<String>, ClientError> {
        let line = self.line().await?;
        match Reply::parse(&line) {
            Some(reply) if reply.is_success() => Ok(None),
            Some(reply) => Err(ClientError::Refused(reply)),
            None => Ok(Some(framing::unstuff(&line).to_owned())),
        }
    }

    /// Whether more received bytes wait in the buffer (a reader can batch
    /// until it has drained what arrived).
    pub fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// `QUIT`, then close.
    pub async fn quit(mut self) -> Result<(), ClientError> {
        let reply = self.command("QUIT").await;
        let _ = self.writer.shutdown().await;
        reply.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{BrokerAuth, BrokerCredentials, SubscribeReply};
    use crate::session::{Action, Credentials, Input, Limits, Response, Session, SessionConfig};

    #[test]
    fn transient_failures_are_told_from_permanent_ones() {
        let refused = |code| ClientError::Refused(Reply::new(Code::from_number(code), "x"));
        assert!(ClientError::Closed.is_transient());
        assert!(ClientError::Io(std::io::Error::other("reset")).is_transient());
        assert!(
            ClientError::Connect {
                addr: "127.0.0.1:1".into(),
                source: std::io::Error::other("refused"),
            }
            .is_transient()
        );
        for code in [421, 450, 454, 499] {
            assert!(refused(code).is_transient(), "{code}");
        }
        for code in [500, 530, 535, 550, 554, 555, 599] {
            assert!(!refused(code).is_transient(), "{code}");
        }
        assert!(!ClientError::Tls("bad certificate".into()).is_transient());
        assert!(!ClientError::Protocol("junk".into()).is_transient());
        assert_eq!(refused(550).code(), Some(Code::NotFound));
        assert_eq!(ClientError::Closed.code(), None);
    }

    /// A server made of the session state machine, the line decoder and a
    /// toy host, on loopback.
    async fn serve(socket: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = socket.into_split();
        let mut reader = BufReader::new(read);
        let limits = Limits {
            auth_failure_delay_ms: 0,
            ..Limits::default()
        };
        let max = limits.max_line;
        let mut session: Session<String> = Session::new(SessionConfig {
            plain_in_clear: true,
            limits,
            ..SessionConfig::new("test.example")
        });
        let mut buf = Vec::new();
        let mut next = Some(Input::Start);
        let mut events = 0u64;
        loop {
            let input = match next.take() {
                Some(input) => input,
                None => Input::Line(framing::read_line(&mut reader, max, &mut buf).await?),
            };
            let actions = session.handle(input).map_err(std::io::Error::other)?;
            for action in actions {
                if let Some(bytes) = action.wire() {
                    write.write_all(bytes.as_bytes()).await?;
                }
                next = match action {
                    Action::Authenticate(Credentials::Plain(c)) if c.password == "s3cret" => {
                        Some(Input::Authenticated(c.user))
                    }
                    Action::Authenticate(_) => Some(Input::AuthFailed),
                    Action::Dispatch(Command::WriteFlow(_)) => {
                        events = 0;
                        Some(Input::Response(Response::Stream))
                    }
                    Action::DataLine { .. } => {
                        events += 1;
                        None
                    }
                    Action::DataEnd => Some(Input::Response(Response::Reply(
                        Written {
                            stored: events,
                            duplicates: 0,
                        }
                        .to_reply(),
                    ))),
                    Action::Dispatch(Command::PutComponent) => {
                        Some(Input::Response(Response::Collect))
                    }
                    Action::Data { lines, .. } => {
                        let digest = format!("sha256:{:064x}", lines.concat().len());
                        Some(Input::Response(Response::Reply(
                            ComponentPut { digest }.to_reply(),
                        )))
                    }
                    Action::Dispatch(Command::Subscribe { remote, .. }) => {
                        let copy = FlowName::parse(&format!("tok1234.{remote}"))
                            .map_err(std::io::Error::other)?;
                        let reply = SubscribeReply {
                            broker: Some(BrokerCredentials {
                                user: "sub-tok1234".into(),
                                auth: BrokerAuth::Password("p".repeat(64)),
                                stream: copy.stream(),
                                consumer: "subscriber".into(),
                                inbox: "_INBOX_tok1234".into(),
                                api_prefix: crate::data::BROKER_API_PREFIX.into(),
                                tls: false,
                            }),
                            copy,
                        };
                        Some(Input::Response(Response::Data {
                            lines: reply.encode(),
                            end: Reply::ok("OK"),
                        }))
                    }
                    Action::Dispatch(command) => Some(Input::Response(Response::Reply(Reply::ok(
                        format!("OK {command}"),
                    )))),
                    Action::Close => {
                        write.shutdown().await?;
                        return Ok(());
                    }
                    _ => next,
                };
            }
        }
    }

    #[tokio::test]
    async fn the_client_talks_to_the_session_state_machine() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds loopback");
        let addr = listener.local_addr().expect("address").to_string();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accepts");
            serve(socket).await
        });
        let mut client = Client::connect(&addr, &Security::Plain)
            .await
            .expect("connects");
        assert_eq!(client.greeting().to_string(), "220 test.example FNAA");
        let refused = client
            .command("LIST FLOWS")
            .await
            .expect_err("not authenticated");
        assert_eq!(refused.code(), Some(Code::AuthRequired));
        assert!(!refused.is_transient());
        let wrong = client
            .authenticate_plain("alice", "guess")
            .await
            .expect_err("wrong password");
        assert_eq!(wrong.code(), Some(Code::AuthFailed));
        client
            .authenticate_plain("alice", "s3cret")
            .await
            .expect("authenticated");
        let flow = FlowName::parse("a.example.com").expect("valid");
        let written = client
            .write_flow(&flow, [r#"{"id":"1"}"#, "2", ".3"])
            .await
            .expect("written");
        assert_eq!(
            written,
            Written {
                stored: 3,
                duplicates: 0
            }
        );
        let digest = client.put_component(&[0u8; 100]).await.expect("stored");
        assert!(digest.starts_with("sha256:"), "{digest}");
        let (lines, _) = client
            .data(
                &Command::Subscribe {
                    remote: flow.clone(),
                    local: None,
                }
                .encode(),
            )
            .await
            .expect("subscribed");
        let subscribed = SubscribeReply::decode(&lines).expect("a valid block");
        assert!(subscribed.is_copy_of(&flow));
        assert!(subscribed.broker.is_some());
        let reply = client
            .execute(&Command::DescribeFlow(flow))
            .await
            .expect("dispatched");
        assert_eq!(reply.text, "OK DESCRIBE FLOW a.example.com");
        client.quit().await.expect("quits");
        server.await.expect("server task").expect("served");
    }
}
