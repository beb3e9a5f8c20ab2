//! The session driver: greeting, line reading, STARTTLS, error counting
//! and the authentication gate.

use super::*;

/// Why a session ends early.
#[derive(Debug, thiserror::Error)]
pub(super) enum End {
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

pub(super) type Reader = BufReader<tokio::io::ReadHalf<Stream>>;
pub(super) type Writer = BufWriter<tokio::io::WriteHalf<Stream>>;

pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
    pub(super) tls: bool,
    pub(super) principal: Option<Principal>,
    pub(super) before_auth: u32,
    pub(super) auth_failures: u32,
    pub(super) errors: u32,
    pub(super) buf: Vec<u8>,
}

/// How `READ FLOW` reads.
pub(super) struct ReadOptions {
    pub(super) start: Start,
    pub(super) count: Option<u64>,
    pub(super) follow: bool,
    pub(super) sequences: bool,
}

impl Session {
    pub(super) fn config(&self) -> &FnapConfig {
        &self.shared.ctx.config
    }

    pub(super) fn agent(&self) -> &Agent {
        &self.shared.ctx.agent
    }

    pub(super) async fn run(&mut self, stream: Stream) -> Result<(), End> {
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
    pub(super) async fn line(&mut self, reader: &mut Reader) -> Result<Line, End> {
        let idle = Duration::from_secs(self.config().idle_timeout_secs.max(1));
        let max = self.config().max_line;
        match tokio::time::timeout(idle, framing::read_line(reader, max, &mut self.buf)).await {
            Ok(line) => Ok(line?),
            Err(_) => Err(End::Limit("idle timeout, closing".into())),
        }
    }

    pub(super) async fn serve(
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

    pub(super) fn count_error(&mut self) -> Result<(), End> {
        self.errors += 1;
        if self.errors > self.config().max_errors {
            return Err(End::Limit("too many errors".into()));
        }
        Ok(())
    }

    pub(super) async fn fail(&mut self, writer: &mut Writer, reply: Reply) -> Result<(), End> {
        send(writer, &reply).await?;
        self.count_error()
    }

    pub(super) fn principal(&self) -> &Principal {
        // Commands past the authentication gate always have one.
        self.principal.as_ref().unwrap_or(&Principal::Anonymous)
    }
}
