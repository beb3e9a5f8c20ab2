//! The session driver: moves bytes between the socket and the FNAP session
//! state machine and carries out what it asks.
//!
//! The state machine ([`Session`]) decides what is sent and when a session
//! ends; the driver only does I/O: it feeds the machine lines from a
//! [`LineDecoder`] (so a partial line never holds more than `max-line`
//! bytes), sends its replies, dispatches commands to the agent, checks
//! credentials, waits, upgrades to TLS and closes. Replies are buffered and
//! flushed when the driver would wait for the client, so pipelined commands
//! are answered in one write. Reads and writes both have the idle timeout: a
//! client that sends nothing, or stops reading what it asked for, is closed.

use super::*;

/// Why a session ended other than by the state machine's `Close`.
#[derive(Debug, thiserror::Error)]
pub(super) enum End {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client did not read its replies within the idle timeout")]
    WriteTimeout,
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("protocol state: {0}")]
    State(#[from] flowd_fnap::session::SessionError),
}

/// Size of a socket read.
const READ_CHUNK: usize = 16 << 10;

/// The read buffer for lines of at most `max_line` bytes: 2 KiB before
/// log-in (4 KiB lines arrive in two reads), [`READ_CHUNK`] after.
fn read_chunk(max_line: usize) -> usize {
    if max_line <= 4 << 10 {
        2 << 10
    } else {
        READ_CHUNK
    }
}

/// One connection's byte streams: the read half with its line decoder and
/// the bytes read but not decoded yet, and the buffered write half.
pub(super) struct Conn {
    read: tokio::io::ReadHalf<Stream>,
    write: BufWriter<tokio::io::WriteHalf<Stream>>,
    decoder: LineDecoder,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    idle: Duration,
}

impl Conn {
    fn new(stream: Stream, max_line: usize, idle: Duration) -> Conn {
        let (read, write) = tokio::io::split(stream);
        Conn {
            read,
            write: BufWriter::new(write),
            decoder: LineDecoder::new(max_line),
            // A stranger's session reads in small chunks: its lines are
            // short, and idle strangers should cost little.
            buf: vec![0; read_chunk(max_line)].into_boxed_slice(),
            start: 0,
            end: 0,
            idle,
        }
    }

    /// The next line from the client, or `None` after the idle timeout.
    /// What is buffered for the client is sent before waiting for it.
    pub(super) async fn next_line(&mut self) -> Result<Option<Line>, End> {
        loop {
            if self.start < self.end {
                let (used, line) = self.decoder.feed(&self.buf[self.start..self.end]);
                self.start += used;
                if let Some(line) = line {
                    return Ok(Some(line));
                }
                continue;
            }
            self.flush().await?;
            match tokio::time::timeout(self.idle, self.read.read(&mut self.buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Ok(Some(self.decoder.finish())),
                Ok(Ok(n)) => {
                    self.start = 0;
                    self.end = n;
                }
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// The next line, of at most `max` bytes (the session's limit now).
    async fn next_line_within(&mut self, max: usize) -> Result<Option<Line>, End> {
        self.decoder.set_max(max);
        // Logged in: full-size reads, once the bytes read so far are used.
        if self.start == self.end && self.buf.len() < read_chunk(max) {
            self.buf = vec![0; read_chunk(max)].into_boxed_slice();
            self.start = 0;
            self.end = 0;
        }
        self.next_line().await
    }

    /// Waits until the client sends anything (it stops a `READ FLOW`); the
    /// bytes stay for [`Conn::next_line`]. Cancel-safe.
    pub(super) async fn readable(&mut self) -> Result<(), End> {
        if self.start < self.end {
            return Ok(());
        }
        let n = self.read.read(&mut self.buf).await?;
        self.start = 0;
        self.end = n;
        Ok(())
    }

    /// Queues bytes for the client.
    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), End> {
        tokio::time::timeout(self.idle, self.write.write_all(bytes))
            .await
            .map_err(|_| End::WriteTimeout)??;
        Ok(())
    }

    /// Queues one line (the CRLF is added).
    pub(super) async fn send_line(&mut self, line: &str) -> Result<(), End> {
        self.send(line.as_bytes()).await?;
        self.send(b"\r\n").await
    }

    /// Sends what is queued.
    pub(super) async fn flush(&mut self) -> Result<(), End> {
        tokio::time::timeout(self.idle, self.write.flush())
            .await
            .map_err(|_| End::WriteTimeout)??;
        Ok(())
    }

    /// The connection for a TLS handshake. Anything the client pipelined
    /// after `STARTTLS` is dropped (it was sent in clear, RFC 3207).
    fn into_stream(self) -> Stream {
        self.read.unsplit(self.write.into_inner())
    }

    async fn close(mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.idle, self.write.shutdown()).await;
    }
}

/// One session: its state machine and what the host keeps beside it.
pub(super) struct Driver {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
    pub(super) session: Session<Principal>,
    /// The `WRITE FLOW` whose block is streaming in.
    pub(super) upload: Option<data::Upload>,
}

impl Driver {
    pub(super) fn new(shared: Arc<Shared>, peer: SocketAddr, config: SessionConfig) -> Driver {
        Driver {
            shared,
            peer,
            session: Session::new(config),
            upload: None,
        }
    }

    pub(super) fn agent(&self) -> &Agent {
        &self.shared.ctx.agent
    }

    /// Who the session acts as (commands past the authentication gate
    /// always have a principal).
    pub(super) fn principal(&self) -> Principal {
        self.session
            .principal()
            .cloned()
            .unwrap_or(Principal::Anonymous)
    }

    pub(super) async fn run(mut self, stream: Stream) -> Result<(), End> {
        let limits = self.session.config().limits.clone();
        let mut conn = Conn::new(stream, self.session.max_line(), limits.idle_timeout());
        let mut input = Some(Input::Start);
        loop {
            let next = match input.take() {
                Some(next) => next,
                None if self.session.state().wants_line() => {
                    match conn.next_line_within(self.session.max_line()).await? {
                        Some(line) => Input::Line(line),
                        None => Input::IdleTimeout,
                    }
                }
                // Closed (or waiting for nothing the driver could give).
                None => {
                    conn.close().await;
                    return Ok(());
                }
            };
            for action in self.session.handle(next)? {
                match action {
                    Action::Reply(_) | Action::DataBlock { .. } => {
                        if let Some(wire) = action.wire() {
                            conn.send(wire.as_bytes()).await?;
                        }
                    }
                    Action::Dispatch(command) => {
                        let response = self.dispatch(command, &mut conn).await?;
                        input = Some(Input::Response(response));
                    }
                    Action::Authenticate(credentials) => {
                        input = Some(self.authenticate(credentials).await);
                    }
                    Action::Data { command, lines } => {
                        input = Some(Input::Response(self.collected(command, lines).await));
                    }
                    Action::DataLine { number, line } => self.upload_line(number, line).await,
                    Action::DataEnd => input = Some(Input::Response(self.upload_end().await)),
                    Action::Wait(delay) => {
                        conn.flush().await?;
                        tokio::time::sleep(delay).await;
                    }
                    Action::StartTls => {
                        conn.flush().await?;
                        let Some(acceptor) = self.shared.acceptor.clone() else {
                            return Ok(());
                        };
                        let handshake = tokio::time::timeout(
                            limits.tls_handshake_timeout(),
                            acceptor.accept(conn.into_stream()),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                conn = Conn::new(
                                    Box::new(tls),
                                    self.session.max_line(),
                                    limits.idle_timeout(),
                                );
                                input = Some(Input::TlsEstablished);
                            }
                            // The connection is gone with the failed
                            // handshake: nothing more can be said on it.
                            Ok(Err(e)) => return Err(End::Tls(e.to_string())),
                            Err(_) => return Err(End::Tls("timed out".into())),
                        }
                    }
                    Action::Close => {
                        conn.close().await;
                        return Ok(());
                    }
                }
            }
        }
    }
}
