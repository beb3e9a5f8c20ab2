//! An async FNAP client, used by the `flow` user agent and by hosts that talk
//! to other hosts. It speaks the same framing as the server
//! ([`super::framing`]) and turns error replies into [`ClientError::Refused`].

use super::framing::{self, Line};
use super::reply::Reply;
use base64::Engine as _;
use rustls::pki_types::ServerName;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}
type Stream = Box<dyn Transport>;

/// Longest line the client accepts from a server.
const MAX_LINE: usize = 16 << 20;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("unexpected line from the server: {0}")]
    Protocol(String),
    /// The server answered with an error reply.
    #[error("{0}")]
    Refused(Reply),
}

impl ClientError {
    /// The reply code when the server refused.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Refused(reply) => Some(reply.code),
            _ => None,
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
    StartTls { ca: PathBuf },
    /// TLS from the first byte.
    Implicit { ca: PathBuf },
}

/// An open FNAP session.
pub struct Client {
    reader: BufReader<tokio::io::ReadHalf<Stream>>,
    writer: BufWriter<tokio::io::WriteHalf<Stream>>,
    greeting: Reply,
    buf: Vec<u8>,
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
            };
        }
        Ok(client)
    }

    /// The server's greeting (`220 <fqdn> FNAA`).
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    async fn line(&mut self) -> Result<String, ClientError> {
        match framing::read_line(&mut self.reader, MAX_LINE, &mut self.buf).await? {
            Line::Text(t) => Ok(t),
            Line::Closed => Err(ClientError::Closed),
            Line::TooLong => Err(ClientError::Protocol("line too long".into())),
            Line::NotText => Err(ClientError::Protocol("not UTF-8 text".into())),
        }
    }

    async fn reply(&mut self) -> Result<Reply, ClientError> {
        let line = self.line().await?;
        Reply::parse(&line).ok_or(ClientError::Protocol(line))
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
        let first = self.command(line).await?;
        if !first.text.starts_with("DATA") {
            return Ok((Vec::new(), first));
        }
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            if let Some(reply) = Reply::parse(&line) {
                return if reply.is_success() {
                    Ok((lines, reply))
                } else {
                    Err(ClientError::Refused(reply))
                };
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
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.command(&token).await
    }

    pub async fn authenticate_anonymous(&mut self) -> Result<Reply, ClientError> {
        self.command("AUTHENTICATE ANONYMOUS").await
    }

    /// Uploads a component; returns its digest.
    pub async fn put_component(&mut self, bytes: &[u8]) -> Result<String, ClientError> {
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        let lines = text
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned());
        let reply = self.block("PUT COMPONENT", lines).await?;
        reply
            .text
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .map(str::to_owned)
            .ok_or(ClientError::Protocol(reply.text))
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
