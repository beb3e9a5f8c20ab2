//! The server side of an FNAP session as a state machine without I/O: the
//! sequencing of figure 13 of the draft (`docs/fnap.md`, section 3) and
//! the limits of section 11.
//!
//! A [`Session`] is fed [`Input`]s: the greeting trigger, the [`Line`]s a
//! [`LineDecoder`] yields, and what the host did with what the session
//! asked (authentication results, TLS handshakes, command outcomes). It
//! answers with [`Action`]s for the host to carry out, in order: replies to
//! send, commands to execute, credentials to check, waits, a TLS upgrade,
//! closing. The host owns the meaning of commands (like a request handler);
//! the session owns the order of things:
//!
//! - the greeting, then *accepting*: only `AUTHENTICATE`, `STARTTLS`,
//!   `CAPABILITIES`, `HELP`, `NOOP` and `QUIT` are let through before
//!   authentication, any other command is `530`; at most
//!   [`Limits::max_commands_before_auth`] commands, then `421`;
//! - `AUTHENTICATE`: `503` when already authenticated, `535` for a disabled
//!   `ANONYMOUS`, `534` for `PLAIN` in clear where it is not allowed, the
//!   `220 OK` continuation and the response line, `*` to cancel, the SASL
//!   PLAIN decoding; failed authentications are delayed
//!   ([`Action::Wait`]) and end the session at
//!   [`Limits::max_auth_failures`];
//! - `STARTTLS`: `503` when TLS is on, `454` without TLS, else
//!   `220 Ready to start TLS` and [`Action::StartTls`]; after the handshake
//!   the session is back to *accepting*, unauthenticated, its count of
//!   commands before authentication restarted, without a new greeting;
//! - every failed line (a `4xx` or `5xx` reply, syntax errors included)
//!   counts; any success resets the count; past [`Limits::max_errors`] the
//!   error reply is followed by `421 too many errors` and closing;
//! - over-long lines and lines that are not UTF-8 text are refused (`500`);
//! - client data blocks (`WRITE FLOW`, `PUT COMPONENT`, `CREATE` /
//!   `UPDATE PROCESSOR`) after the host's go-ahead: collected whole within
//!   a budget ([`Response::Collect`]) or handed over line by line
//!   ([`Response::Stream`]), up to the `.` line; the whole block is read
//!   even after an error;
//! - `QUIT`: `220 Bye` and closing; the idle timeout: `421 idle timeout,
//!   closing`.
//!
//! `NOOP` and `HELP` are answered by the session itself; every other
//! command is [`Action::Dispatch`]ed to the host, which answers with
//! [`Input::Response`]. While a command is dispatched the host owns the
//! connection's input: `READ FLOW`, for one, stops at any line from the
//! client, which the host reads and drops itself.
//!
//! A host loop, in outline:
//!
//! ```
//! use flowd_fnap::framing::Line;
//! use flowd_fnap::session::{Action, Input, Response, Session, SessionConfig};
//! use flowd_fnap::Reply;
//!
//! let mut session: Session<&str> = Session::new(SessionConfig::new("fnaa.unix.ar"));
//! let mut client = vec!["QUIT", "LIST FLOWS", "AUTHENTICATE ANONYMOUS"]; // popped
//! let mut wire = String::new();
//! let mut next = Some(Input::Start);
//! while let Some(input) = next.take() {
//!     for action in session.handle(input).expect("inputs in order") {
//!         match action {
//!             Action::Authenticate(_) => next = Some(Input::Authenticated("anonymous")),
//!             Action::Dispatch(command) => {
//!                 let reply = Reply::ok(format!("OK did {command}"));
//!                 next = Some(Input::Response(Response::Reply(reply)));
//!             }
//!             Action::Close => {}
//!             other => wire.extend(other.wire()),
//!         }
//!     }
//!     if next.is_none() && session.state().wants_line() {
//!         next = client.pop().map(|l| Input::Line(Line::Text(l.into())));
//!     }
//! }
//! assert_eq!(
//!     wire,
//!     "220 fnaa.unix.ar FNAA\r\n\
//!      220 Authenticated (anonymous: public flows, read only)\r\n\
//!      220 OK did LIST FLOWS\r\n\
//!      220 Bye\r\n"
//! );
//! ```

use crate::capabilities::Capabilities;
use crate::command::{self, Command, Mechanism};
use crate::framing::{self, Line, LineDecoder};
use crate::reply::{Code, Reply};
use crate::sasl::PlainCredentials;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// The limits of a session and of a server, with the defaults of flowd's
/// `[fnap]` configuration (`docs/fnap.md`, section 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest line read (commands, SASL responses, data lines), in bytes,
    /// line ending not counted. Default 1 MiB.
    pub max_line: usize,
    /// Longest line read before the client has authenticated, in bytes: a
    /// stranger's partial line costs this much at most. Default 4 KiB
    /// (`AUTHENTICATE PLAIN` with a 1 KiB password fits).
    pub max_line_before_auth: usize,
    /// Commands (well-formed lines) a session may send before
    /// authenticating, `AUTHENTICATE` included. Default 20.
    pub max_commands_before_auth: u32,
    /// Failed PLAIN authentications that end a session. Default 5.
    pub max_auth_failures: u32,
    /// The wait before answering the first failed authentication; it
    /// doubles with each failure, up to 32 times this and never more than
    /// 10 s. Default 500 ms.
    pub auth_failure_delay_ms: u64,
    /// Consecutive failed lines allowed; the next one ends the session.
    /// Default 20.
    pub max_errors: u32,
    /// A session that sends nothing for this long is closed (at least 1 s).
    /// Default 300 s.
    pub idle_timeout_secs: u64,
    /// Open sessions in all. Default 10000.
    pub max_sessions: usize,
    /// Open sessions per client address (IPv6 addresses counted by /64,
    /// [`address_group`]). Default 2000.
    pub max_sessions_per_address: usize,
    /// Largest component `PUT COMPONENT` accepts, in bytes (its block may
    /// hold `max_component_bytes / 3 * 4 + 8` bytes of base64). Default
    /// 32 MiB.
    pub max_component_bytes: usize,
    /// Largest collected block other than a component's (the text of a
    /// `CREATE` / `UPDATE PROCESSOR` declaration). Default 1 MiB.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line: 1 << 20,
            max_line_before_auth: 4 << 10,
            max_commands_before_auth: 20,
            max_auth_failures: 5,
            auth_failure_delay_ms: 500,
            max_errors: 20,
            idle_timeout_secs: 300,
            max_sessions: 10_000,
            max_sessions_per_address: 2_000,
            max_component_bytes: 32 << 20,
            max_request_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// The idle timeout (at least one second).
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    /// How long a TLS handshake may take: the idle timeout clamped to 1 to
    /// 30 seconds.
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.clamp(1, 30))
    }

    /// The wait before answering the `failures`-th failed authentication
    /// (1 for the first).
    pub fn auth_failure_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(5);
        Duration::from_millis(
            self.auth_failure_delay_ms
                .saturating_mul(1 << doublings)
                .min(10_000),
        )
    }

    /// The size budget of a `PUT COMPONENT` block (base64 text).
    pub fn component_budget(&self) -> usize {
        self.max_component_bytes / 3 * 4 + 8
    }

    /// A line decoder with [`Limits::max_line`].
    pub fn decoder(&self) -> LineDecoder {
        LineDecoder::new(self.max_line)
    }
}

/// What a session needs to know of its host and connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The host's FQDN, in the greeting `220 <fqdn> FNAA`.
    pub fqdn: String,
    /// The limits.
    pub limits: Limits,
    /// The connection is TLS already (the implicit-TLS port).
    pub tls: bool,
    /// The host can upgrade a plain-text connection (it has a TLS
    /// configuration): `STARTTLS` is offered.
    pub starttls: bool,
    /// `AUTHENTICATE PLAIN` is accepted in clear from this client (its
    /// address is in `plain_auth_from`).
    pub plain_in_clear: bool,
    /// `AUTHENTICATE ANONYMOUS` is enabled.
    pub anonymous: bool,
}

impl SessionConfig {
    /// A plain-text session with the default limits, anonymous access on,
    /// no STARTTLS and no PLAIN in clear.
    pub fn new(fqdn: impl Into<String>) -> SessionConfig {
        SessionConfig {
            fqdn: fqdn.into(),
            limits: Limits::default(),
            tls: false,
            starttls: false,
            plain_in_clear: false,
            anonymous: true,
        }
    }
}

/// Credentials for the host to check ([`Action::Authenticate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `AUTHENTICATE PLAIN`: an account and its password.
    Plain(PlainCredentials),
    /// `AUTHENTICATE ANONYMOUS` (when enabled), with its optional trace.
    Anonymous {
        /// The trace argument, which FNAP ignores.
        trace: Option<String>,
    },
}

/// What the host feeds a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<P> {
    /// The connection is ready (after the handshake on the implicit-TLS
    /// port): the session greets.
    Start,
    /// A line from the client, as the decoder yields it.
    Line(Line),
    /// The client sent nothing for [`Limits::idle_timeout`] while the
    /// session waited for a line.
    IdleTimeout,
    /// The TLS handshake after [`Action::StartTls`] succeeded. The host
    /// drops whatever it had read in clear after `STARTTLS` and decodes the
    /// TLS stream with a new decoder.
    TlsEstablished,
    /// The TLS handshake failed or timed out.
    TlsFailed,
    /// The credentials of [`Action::Authenticate`] are good: the session
    /// acts as this principal.
    Authenticated(P),
    /// The credentials are wrong (a failed authentication).
    AuthFailed,
    /// The credentials could not be checked (the accounts are
    /// unavailable); not counted as a failed authentication.
    AuthUnavailable,
    /// The host's answer to [`Action::Dispatch`], [`Action::Data`] or
    /// [`Action::DataEnd`].
    Response(Response),
}

impl<P> Input<P> {
    fn name(&self) -> &'static str {
        match self {
            Input::Start => "Start",
            Input::Line(_) => "Line",
            Input::IdleTimeout => "IdleTimeout",
            Input::TlsEstablished => "TlsEstablished",
            Input::TlsFailed => "TlsFailed",
            Input::Authenticated(_) => "Authenticated",
            Input::AuthFailed => "AuthFailed",
            Input::AuthUnavailable => "AuthUnavailable",
            Input::Response(_) => "Response",
        }
    }
}

/// The host's answer to a dispatched command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// One reply line.
    Reply(Reply),
    /// A server data block: `220 DATA`, the lines, the final reply.
    Data {
        /// The values, one a line (folded and stuffed when sent).
        lines: Vec<String>,
        /// The final reply.
        end: Reply,
    },
    /// The host sent the answer itself (`READ FLOW` streams its block);
    /// whether it was a success, for the count of errors.
    Sent {
        /// The final reply was a success.
        success: bool,
    },
    /// Go ahead: the client sends a data block, which the session collects
    /// within its budget ([`Limits::component_budget`] for `PUT COMPONENT`,
    /// else [`Limits::max_request_bytes`]) and hands over whole as
    /// [`Action::Data`]. Only after [`Action::Dispatch`].
    Collect,
    /// Go ahead: the client sends a data block, which the session hands
    /// over line by line ([`Action::DataLine`], then [`Action::DataEnd`]),
    /// for a host that stores it as it comes (`WRITE FLOW`). Only after
    /// [`Action::Dispatch`].
    Stream,
}

/// A line of a streamed client data block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataLine {
    /// A line of text, unstuffed.
    Text(String),
    /// A line over [`Limits::max_line`], dropped.
    TooLong,
    /// A line that is not UTF-8 text, dropped.
    NotText,
}

/// What the host does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply line.
    Reply(Reply),
    /// Send a server data block (`220 DATA`, the lines folded and stuffed,
    /// the final reply): [`Action::wire`] gives the bytes.
    DataBlock {
        /// The values.
        lines: Vec<String>,
        /// The final reply.
        end: Reply,
    },
    /// Execute this command; answer with [`Input::Response`].
    Dispatch(Command),
    /// Check these credentials; answer with [`Input::Authenticated`],
    /// [`Input::AuthFailed`] or [`Input::AuthUnavailable`].
    Authenticate(Credentials),
    /// Start the TLS handshake on the connection (the go-ahead is sent);
    /// answer with [`Input::TlsEstablished`] or [`Input::TlsFailed`].
    StartTls,
    /// The collected data block of the dispatched command (lines
    /// unstuffed); answer with [`Input::Response`].
    Data {
        /// The command that asked for it.
        command: Command,
        /// Its lines.
        lines: Vec<String>,
    },
    /// A line of a streamed data block; `number` counts the block's lines
    /// from 1.
    DataLine {
        /// The line's number in the block.
        number: usize,
        /// The line.
        line: DataLine,
    },
    /// The streamed block ended (the `.` line); answer with
    /// [`Input::Response`].
    DataEnd,
    /// Wait this long before the next action (a failed authentication is
    /// answered late).
    Wait(Duration),
    /// Close the connection (after sending what came before).
    Close,
}

impl Action {
    /// The bytes to send for [`Action::Reply`] and [`Action::DataBlock`]
    /// (lines ending in CRLF); `None` for the other actions.
    pub fn wire(&self) -> Option<String> {
        match self {
            Action::Reply(reply) => Some(format!("{reply}\r\n")),
            Action::DataBlock { lines, end } => Some(framing::encode_block(lines, end)),
            _ => None,
        }
    }
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not greeted yet: waits for [`Input::Start`].
    New,
    /// Reading commands, not authenticated.
    Accepting,
    /// Reading commands, authenticated.
    Ready,
    /// Reading the response line of `AUTHENTICATE PLAIN`.
    SaslResponse,
    /// Waiting for the host to check credentials.
    Authenticating,
    /// Waiting for the TLS handshake.
    StartingTls,
    /// Waiting for the host's response to a command.
    Dispatched,
    /// Reading a client data block to collect.
    Collecting,
    /// Reading a client data block line by line.
    Streaming,
    /// Waiting for the host's response to a data block.
    DataPending,
    /// Over: no more input.
    Closed,
}

impl State {
    /// Whether the session reads a line from the client next (the host
    /// applies the idle timeout then).
    pub fn wants_line(self) -> bool {
        matches!(
            self,
            State::Accepting
                | State::Ready
                | State::SaslResponse
                | State::Collecting
                | State::Streaming
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An input the session cannot take where it is (a bug of the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// This input does not fit this state.
    #[error("unexpected input {input} in state {state}")]
    Unexpected {
        /// The input's variant.
        input: &'static str,
        /// The session's state.
        state: State,
    },
    /// The session is closed.
    #[error("the session is closed")]
    Closed,
}

/// A collected client data block.
#[derive(Debug)]
struct Block {
    budget: usize,
    used: usize,
    lines: Vec<String>,
    failed: Option<Reply>,
}

#[derive(Debug)]
enum Phase {
    New,
    Idle,
    SaslResponse,
    Authenticating(Mechanism),
    StartingTls,
    Dispatched(Command),
    Collecting(Command, Block),
    Streaming(Command, usize),
    DataPending,
    Closed,
}

/// One session's protocol state. `P` is the host's principal (who the
/// session acts as once authenticated).
#[derive(Debug)]
pub struct Session<P> {
    config: SessionConfig,
    phase: Phase,
    principal: Option<P>,
    before_auth: u32,
    auth_failures: u32,
    errors: u32,
}

impl<P> Session<P> {
    /// A new session; feed it [`Input::Start`] to greet.
    pub fn new(config: SessionConfig) -> Session<P> {
        Session {
            config,
            phase: Phase::New,
            principal: None,
            before_auth: 0,
            auth_failures: 0,
            errors: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Where the session is.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::New => State::New,
            Phase::Idle if self.principal.is_some() => State::Ready,
            Phase::Idle => State::Accepting,
            Phase::SaslResponse => State::SaslResponse,
            Phase::Authenticating(_) => State::Authenticating,
            Phase::StartingTls => State::StartingTls,
            Phase::Dispatched(_) => State::Dispatched,
            Phase::Collecting(..) => State::Collecting,
            Phase::Streaming(..) => State::Streaming,
            Phase::DataPending => State::DataPending,
            Phase::Closed => State::Closed,
        }
    }

    /// Who the session acts as, once authenticated.
    pub fn principal(&self) -> Option<&P> {
        self.principal.as_ref()
    }

    /// The longest line the session reads now: [`Limits::max_line`] once
    /// the client has authenticated, [`Limits::max_line_before_auth`]
    /// (never more) until then. The driver's decoder follows it.
    pub fn max_line(&self) -> usize {
        let limits = &self.config.limits;
        if self.principal.is_some() {
            limits.max_line
        } else {
            limits.max_line_before_auth.min(limits.max_line)
        }
    }

    /// The command the host is executing, or whose data block is read.
    pub fn pending(&self) -> Option<&Command> {
        match &self.phase {
            Phase::Dispatched(c) | Phase::Collecting(c, _) | Phase::Streaming(c, _) => Some(c),
            _ => None,
        }
    }

    /// Whether the connection is TLS now.
    pub fn is_tls(&self) -> bool {
        self.config.tls
    }

    /// Whether `AUTHENTICATE PLAIN` would be accepted now: over TLS, or
    /// from a client allowed PLAIN in clear. (A host also uses this to know
    /// whether the session is confidential.)
    pub fn plain_allowed(&self) -> bool {
        self.config.tls || self.config.plain_in_clear
    }

    /// Consecutive failed lines so far.
    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// Failed authentications so far.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }

    /// What `CAPABILITIES` says on this session: what the host offers
    /// (`host`: processors, subscriptions, brokers, ...) with this
    /// session's protocol version, `AUTH` mechanisms, `STARTTLS` or `TLS`,
    /// and limits.
    pub fn offer(&self, host: Capabilities) -> Capabilities {
        let mut auth = Vec::new();
        if self.plain_allowed() {
            auth.push("PLAIN".to_owned());
        }
        if self.config.anonymous {
            auth.push("ANONYMOUS".to_owned());
        }
        let limits = &self.config.limits;
        Capabilities {
            version: Some(1),
            auth,
            starttls: self.config.starttls && !self.config.tls,
            tls: self.config.tls,
            max_line: Some(limits.max_line),
            max_component: Some(limits.max_component_bytes),
            ..host
        }
    }

    /// The data lines of `CAPABILITIES`: `FNAP 1`, the `AUTH` line of this
    /// session, `STARTTLS` or `TLS`, the host's own lines (`host`), then
    /// `MAX-LINE` and `MAX-COMPONENT` (see [`Session::offer`]).
    pub fn capabilities<S: AsRef<str>>(&self, host: &[S]) -> Vec<String> {
        self.offer(Capabilities {
            other: host.iter().map(|l| l.as_ref().to_owned()).collect(),
            ..Capabilities::default()
        })
        .lines()
    }

    /// Takes one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input<P>) -> Result<Vec<Action>, SessionError> {
        let mut out = Vec::new();
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        match (phase, input) {
            (Phase::Closed, _) => return Err(SessionError::Closed),
            (Phase::New | Phase::StartingTls, Input::IdleTimeout) => {
                // Nothing to say in clear before the greeting or mid-handshake.
                out.push(Action::Close);
            }
            (_, Input::IdleTimeout) => self.close_with(&mut out, "idle timeout, closing"),
            (Phase::New, Input::Start) => {
                self.phase = Phase::Idle;
                out.push(Action::Reply(Reply::ok(format!(
                    "{} FNAA",
                    self.config.fqdn
                ))));
            }
            (Phase::Idle, Input::Line(line)) => {
                self.phase = Phase::Idle;
                self.command_line(line, &mut out);
            }
            (Phase::SaslResponse, Input::Line(line)) => match line {
                Line::Closed => out.push(Action::Close),
                Line::Text(text) => self.plain_response(&text, &mut out),
                // Not a response: refused as a malformed one.
                Line::TooLong | Line::NotText => self.plain_response("", &mut out),
            },
            (Phase::Authenticating(mechanism), Input::Authenticated(principal)) => {
                self.phase = Phase::Idle;
                self.principal = Some(principal);
                self.auth_failures = 0;
                let text = match mechanism {
                    Mechanism::Plain => "Authenticated",
                    Mechanism::Anonymous => "Authenticated (anonymous: public flows, read only)",
                };
                self.answer(Reply::ok(text), &mut out);
            }
            (Phase::Authenticating(_), Input::AuthFailed) => {
                self.phase = Phase::Idle;
                self.auth_failures = self.auth_failures.saturating_add(1);
                out.push(Action::Wait(
                    self.config.limits.auth_failure_delay(self.auth_failures),
                ));
                if self.auth_failures >= self.config.limits.max_auth_failures {
                    self.close_with(&mut out, "too many failed authentications");
                } else {
                    self.answer(
                        Reply::new(Code::AuthFailed, "authentication failed"),
                        &mut out,
                    );
                }
            }
            (Phase::Authenticating(_), Input::AuthUnavailable) => {
                self.phase = Phase::Idle;
                self.answer(
                    Reply::new(
                        Code::TryLater,
                        "credentials cannot be checked now, try again later",
                    ),
                    &mut out,
                );
            }
            (Phase::StartingTls, Input::TlsEstablished) => {
                // A new session state after the upgrade, without a greeting.
                self.phase = Phase::Idle;
                self.config.tls = true;
                self.principal = None;
                self.before_auth = 0;
            }
            (Phase::StartingTls, Input::TlsFailed) => out.push(Action::Close),
            (Phase::Dispatched(command), Input::Response(response)) => {
                self.phase = Phase::Idle;
                match response {
                    Response::Collect => {
                        let budget = match command {
                            Command::PutComponent => self.config.limits.component_budget(),
                            _ => self.config.limits.max_request_bytes,
                        };
                        out.push(Action::Reply(go_ahead(&command)));
                        self.phase = Phase::Collecting(
                            command,
                            Block {
                                budget,
                                used: 0,
                                lines: Vec::new(),
                                failed: None,
                            },
                        );
                    }
                    Response::Stream => {
                        out.push(Action::Reply(go_ahead(&command)));
                        self.phase = Phase::Streaming(command, 0);
                    }
                    other => self.respond(other, &mut out),
                }
            }
            (Phase::DataPending, Input::Response(response)) => match response {
                Response::Collect | Response::Stream => {
                    self.phase = Phase::DataPending;
                    return Err(SessionError::Unexpected {
                        input: "Response(Collect|Stream) after a data block",
                        state: State::DataPending,
                    });
                }
                other => {
                    self.phase = Phase::Idle;
                    self.respond(other, &mut out);
                }
            },
            (Phase::Collecting(command, block), Input::Line(line)) => {
                self.collect(command, block, line, &mut out);
            }
            (Phase::Streaming(command, number), Input::Line(line)) => {
                let line = match line {
                    Line::Closed => {
                        out.push(Action::Close);
                        return Ok(out);
                    }
                    Line::Text(t) if framing::is_end(&t) => {
                        self.phase = Phase::DataPending;
                        out.push(Action::DataEnd);
                        return Ok(out);
                    }
                    Line::Text(t) => DataLine::Text(framing::unstuff(&t).to_owned()),
                    Line::TooLong => DataLine::TooLong,
                    Line::NotText => DataLine::NotText,
                };
                let number = number.saturating_add(1);
                out.push(Action::DataLine { number, line });
                self.phase = Phase::Streaming(command, number);
            }
            (phase, input) => {
                let name = input.name();
                self.phase = phase;
                return Err(SessionError::Unexpected {
                    input: name,
                    state: self.state(),
                });
            }
        }
        Ok(out)
    }

    /// A command line in *accepting* or *ready*.
    fn command_line(&mut self, line: Line, out: &mut Vec<Action>) {
        let text = match line {
            Line::Closed => {
                self.phase = Phase::Closed;
                out.push(Action::Close);
                return;
            }
            Line::TooLong => {
                let max = self.max_line();
                return self.fail(
                    Reply::new(Code::Syntax, format!("line too long (at most {max} bytes)")),
                    out,
                );
            }
            Line::NotText => {
                return self.fail(Reply::new(Code::Syntax, "not a line of UTF-8 text"), out);
            }
            Line::Text(text) => text,
        };
        let command = match command::parse(&text) {
            Ok(command) => command,
            Err(e) => return self.fail(e.reply(), out),
        };
        if self.principal.is_none() {
            self.before_auth = self.before_auth.saturating_add(1);
            if self.before_auth > self.config.limits.max_commands_before_auth {
                return self.close_with(out, "too many commands before authentication");
            }
            if !command.allowed_before_auth() {
                return self.fail(
                    Reply::new(
                        Code::AuthRequired,
                        "authenticate first (AUTHENTICATE PLAIN)",
                    ),
                    out,
                );
            }
        }
        match command {
            Command::Quit => {
                self.phase = Phase::Closed;
                out.push(Action::Reply(Reply::ok("Bye")));
                out.push(Action::Close);
            }
            Command::Noop => self.answer(Reply::ok("OK"), out),
            Command::Help(topic) => {
                let response = help(topic.as_deref());
                self.respond(response, out);
            }
            Command::StartTls => {
                if self.config.tls {
                    self.fail(Reply::new(Code::Sequence, "TLS is already on"), out);
                } else if !self.config.starttls {
                    self.fail(
                        Reply::new(Code::TlsUnavailable, "TLS is not configured on this host"),
                        out,
                    );
                } else {
                    // A go-ahead: it does not reset the count of errors.
                    self.phase = Phase::StartingTls;
                    out.push(Action::Reply(Reply::ok("Ready to start TLS")));
                    out.push(Action::StartTls);
                }
            }
            Command::Authenticate { mechanism, initial } => {
                self.authenticate(mechanism, initial, out);
            }
            command => {
                self.phase = Phase::Dispatched(command.clone());
                out.push(Action::Dispatch(command));
            }
        }
    }

    fn authenticate(
        &mut self,
        mechanism: Mechanism,
        initial: Option<String>,
        out: &mut Vec<Action>,
    ) {
        if self.principal.is_some() {
            return self.fail(Reply::new(Code::Sequence, "already authenticated"), out);
        }
        match mechanism {
            Mechanism::Anonymous => {
                if !self.config.anonymous {
                    return self.fail(
                        Reply::new(
                            Code::AuthFailed,
                            "anonymous access is disabled on this host",
                        ),
                        out,
                    );
                }
                self.phase = Phase::Authenticating(Mechanism::Anonymous);
                out.push(Action::Authenticate(Credentials::Anonymous {
                    trace: initial,
                }));
            }
            Mechanism::Plain => {
                if !self.plain_allowed() {
                    return self.fail(
                        Reply::new(
                            Code::EncryptionRequired,
                            "PLAIN needs TLS on this connection: STARTTLS first",
                        ),
                        out,
                    );
                }
                match initial {
                    Some(response) => self.plain_response(&response, out),
                    None => {
                        self.phase = Phase::SaslResponse;
                        out.push(Action::Reply(Reply::ok("OK")));
                    }
                }
            }
        }
    }

    fn plain_response(&mut self, response: &str, out: &mut Vec<Action>) {
        match PlainCredentials::decode(response) {
            Ok(credentials) => {
                self.phase = Phase::Authenticating(Mechanism::Plain);
                out.push(Action::Authenticate(Credentials::Plain(credentials)));
            }
            Err(e) => {
                self.phase = Phase::Idle;
                self.fail(Reply::new(Code::Arguments, e.to_string()), out);
            }
        }
    }

    fn collect(&mut self, command: Command, mut block: Block, line: Line, out: &mut Vec<Action>) {
        match line {
            Line::Closed => {
                out.push(Action::Close);
                return;
            }
            Line::Text(t) if framing::is_end(&t) => {
                match block.failed {
                    Some(reply) => {
                        self.phase = Phase::Idle;
                        self.fail(reply, out);
                    }
                    None => {
                        self.phase = Phase::DataPending;
                        out.push(Action::Data {
                            command,
                            lines: block.lines,
                        });
                    }
                }
                return;
            }
            Line::Text(t) => {
                block.used = block.used.saturating_add(t.len());
                if block.used > block.budget {
                    block.lines = Vec::new();
                    block
                        .failed
                        .get_or_insert_with(|| Reply::new(Code::TooLarge, "data block too large"));
                } else if block.failed.is_none() {
                    block.lines.push(framing::unstuff(&t).to_owned());
                }
            }
            Line::TooLong => {
                block
                    .failed
                    .get_or_insert_with(|| Reply::new(Code::TooLarge, "data line too long"));
            }
            Line::NotText => {
                block
                    .failed
                    .get_or_insert_with(|| Reply::new(Code::Syntax, "data line is not UTF-8 text"));
            }
        }
        self.phase = Phase::Collecting(command, block);
    }

    /// Sends a response and counts its outcome (the phase is set).
    fn respond(&mut self, response: Response, out: &mut Vec<Action>) {
        match response {
            Response::Reply(reply) => self.answer(reply, out),
            Response::Data { lines, end } => {
                let success = end.is_success();
                out.push(Action::DataBlock { lines, end });
                self.count(success, out);
            }
            Response::Sent { success } => self.count(success, out),
            // Only after a dispatch, handled there.
            Response::Collect | Response::Stream => {}
        }
    }

    /// Sends a reply and counts its outcome.
    fn answer(&mut self, reply: Reply, out: &mut Vec<Action>) {
        let success = reply.is_success();
        out.push(Action::Reply(reply));
        self.count(success, out);
    }

    fn fail(&mut self, reply: Reply, out: &mut Vec<Action>) {
        out.push(Action::Reply(reply));
        self.count(false, out);
    }

    fn count(&mut self, success: bool, out: &mut Vec<Action>) {
        if success {
            self.errors = 0;
            return;
        }
        self.errors = self.errors.saturating_add(1);
        if self.errors > self.config.limits.max_errors {
            self.close_with(out, "too many errors");
        }
    }

    fn close_with(&mut self, out: &mut Vec<Action>, why: &str) {
        self.phase = Phase::Closed;
        out.push(Action::Reply(Reply::new(Code::Closing, why)));
        out.push(Action::Close);
    }
}

/// The go-ahead of a command that carries a client data block.
pub fn go_ahead(command: &Command) -> Reply {
    Reply::ok(match command {
        Command::WriteFlow(_) => "OK send events as JSON lines, end with \".\"",
        Command::PutComponent => "OK send the component in base64, end with \".\"",
        Command::CreateProcessor(_) | Command::UpdateProcessor(_) => {
            "OK send key=value lines, end with \".\""
        }
        _ => "OK send lines, end with \".\"",
    })
}

/// The answer to `HELP [topic]`: every usage line, or the topic's, or
/// `501 no command <TOPIC>`.
pub fn help(topic: Option<&str>) -> Response {
    let lines = match topic {
        None => command::USAGE
            .iter()
            .map(|(_, u)| (*u).to_owned())
            .collect(),
        Some(topic) => match command::USAGE.iter().find(|(n, _)| *n == topic) {
            Some((_, usage)) => vec![(*usage).to_owned()],
            None => {
                return Response::Reply(Reply::new(Code::Arguments, format!("no command {topic}")));
            }
        },
    };
    Response::Data {
        lines,
        end: Reply::ok("OK"),
    }
}

/// Why a connection is refused before its session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// [`Limits::max_sessions`] are open.
    #[error("too many sessions, try again later")]
    TooManySessions,
    /// [`Limits::max_sessions_per_address`] are open from this address.
    #[error("too many sessions from your address")]
    TooManyFromAddress,
}

impl Refusal {
    /// The `421` line to send before closing (in clear, before any
    /// handshake).
    pub fn reply(self) -> Reply {
        Reply::new(Code::Closing, self.to_string())
    }
}

/// The count of open sessions, in all and per client address, that
/// admits or refuses a new connection.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    max_sessions: usize,
    max_per_address: usize,
    total: usize,
    open: HashMap<IpAddr, usize>,
}

impl Admission {
    /// An empty count with the limits' maxima.
    pub fn new(limits: &Limits) -> Admission {
        Admission {
            max_sessions: limits.max_sessions,
            max_per_address: limits.max_sessions_per_address,
            total: 0,
            open: HashMap::new(),
        }
    }

    /// Counts a new session from `ip`, or says why not. Each admitted
    /// session must be [released](Admission::release) once.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = address_group(ip);
        if self.total >= self.max_sessions {
            return Err(Refusal::TooManySessions);
        }
        let n = self.open.entry(ip).or_insert(0);
        if *n >= self.max_per_address {
            if *n == 0 {
                self.open.remove(&ip);
            }
            return Err(Refusal::TooManyFromAddress);
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// A session from `ip` ended.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = address_group(ip);
        if let Some(n) = self.open.get_mut(&ip) {
            *n -= 1;
            self.total = self.total.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&ip);
            }
        }
    }

    /// Open sessions in all.
    pub fn open(&self) -> usize {
        self.total
    }

    /// Open sessions from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open.get(&address_group(ip)).copied().unwrap_or(0)
    }
}

/// The group an address is counted in for per-address limits: an IPv4
/// address alone (an IPv4-mapped IPv6 address as its IPv4 one), an IPv6
/// address by its /64, the smallest block a site is given, so that one
/// client cannot take a fresh quota per address of its prefix.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Outcome, Written};

    /// A session with a principal of `String`, the text of what it sends,
    /// and helpers to feed it.
    struct Test {
        session: Session<String>,
    }

    fn config() -> SessionConfig {
        SessionConfig {
            plain_in_clear: true,
            starttls: true,
            ..SessionConfig::new("fnaa.unix.ar")
        }
    }

    /// The lines an action list sends, and `CLOSE` where it closes; other
    /// actions by name.
    fn shown(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Reply(r) => r.to_string(),
                Action::DataBlock { lines, end } => format!("DATA {} {end}", lines.len()),
                Action::Dispatch(c) => format!("DISPATCH {c}"),
                Action::Authenticate(Credentials::Plain(c)) => format!("AUTH PLAIN {}", c.user),
                Action::Authenticate(Credentials::Anonymous { .. }) => "AUTH ANONYMOUS".into(),
                Action::StartTls => "STARTTLS".into(),
                Action::Data { command, lines } => format!("DATA-IN {command} {lines:?}"),
                Action::DataLine { number, line } => format!("LINE {number} {line:?}"),
                Action::DataEnd => "END".into(),
                Action::Wait(d) => format!("WAIT {}", d.as_millis()),
                Action::Close => "CLOSE".into(),
            })
            .collect()
    }

    impl Test {
        fn new(config: SessionConfig) -> Test {
            let mut session = Session::new(config);
            let greeting = session.handle(Input::Start).expect("greets");
            assert_eq!(shown(&greeting), ["220 fnaa.unix.ar FNAA"]);
            Test { session }
        }

        fn input(&mut self, input: Input<String>) -> Vec<String> {
            shown(&self.session.handle(input).expect("in order"))
        }

        fn line(&mut self, line: &str) -> Vec<String> {
            self.input(Input::Line(Line::Text(line.into())))
        }

        fn respond(&mut self, response: Response) -> Vec<String> {
            self.input(Input::Response(response))
        }

        /// Authenticates as `test` with an initial response.
        fn login(&mut self) {
            assert_eq!(
                self.line("AUTHENTICATE PLAIN AHRlc3QAdGVzdA=="),
                ["AUTH PLAIN test"]
            );
            assert_eq!(
                self.input(Input::Authenticated("test".into())),
                ["220 Authenticated"]
            );
        }
    }

    /// One line of every command but the six session commands.
    const OTHERS: &[&str] = &[
        "CREATE NAMESPACE t.example.com OWNER bob PUBLIC",
        "DESCRIBE NAMESPACE example.com",
        "DELETE NAMESPACE example.com",
        "LIST NAMESPACES",
        "GRANT bob READ ON example.com",
        "REVOKE bob ON example.com",
        "CREATE FLOW a.example.com PUBLIC",
        "DESCRIBE FLOW a.example.com",
        "UPDATE FLOW a.example.com MAX-AGE 1",
        "DELETE FLOW a.example.com",
        "LIST FLOWS",
        "READ FLOW a.example.com FROM START",
        "WRITE FLOW a.example.com",
        "SUBSCRIBE a.example.com LOCAL b.example.com",
        "UNSUBSCRIBE x.a.example.com",
        "LIST SUBSCRIPTIONS",
        "LIST SUBSCRIBERS a.example.com",
        "REMOVE SUBSCRIBER x.a.example.com",
        "PAUSE SUBSCRIPTION b.example.com",
        "RESUME SUBSCRIPTION b.example.com",
        "STOP SUBSCRIPTION b.example.com",
        "PUT COMPONENT",
        "CREATE PROCESSOR p",
        "UPDATE PROCESSOR p",
        "DESCRIBE PROCESSOR p",
        "LIST PROCESSORS",
        "LIST AGENTS",
        "PAUSE PROCESSOR p",
        "RESUME PROCESSOR p",
        "DELETE PROCESSOR p",
    ];

    #[test]
    fn the_greeting_comes_first() {
        let mut s: Session<String> = Session::new(config());
        assert_eq!(s.state(), State::New);
        assert_eq!(
            s.handle(Input::Line(Line::Text("NOOP".into()))),
            Err(SessionError::Unexpected {
                input: "Line",
                state: State::New
            })
        );
        assert_eq!(
            shown(&s.handle(Input::Start).expect("greets")),
            ["220 fnaa.unix.ar FNAA"]
        );
        assert_eq!(s.state(), State::Accepting);
        assert!(s.state().wants_line());
        assert!(s.handle(Input::Start).is_err(), "one greeting");
    }

    #[test]
    fn only_session_commands_before_authentication() {
        let mut t = Test::new(SessionConfig {
            limits: Limits {
                max_commands_before_auth: 100,
                max_errors: 100,
                ..Limits::default()
            },
            ..config()
        });
        for line in OTHERS {
            assert_eq!(
                t.line(line),
                ["530 authenticate first (AUTHENTICATE PLAIN)"],
                "{line}"
            );
        }
        assert_eq!(t.line("NOOP"), ["220 OK"]);
        assert_eq!(
            t.line("HELP"),
            [format!("DATA {} 220 OK", command::USAGE.len())]
        );
        assert_eq!(t.line("CAPABILITIES"), ["DISPATCH CAPABILITIES"]);
        assert_eq!(
            t.respond(Response::Data {
                lines: vec!["FNAP 1".into()],
                end: Reply::ok("OK")
            }),
            ["DATA 1 220 OK"]
        );
        assert_eq!(
            t.line("frobnicate"),
            ["500 unknown command `FROBNICATE` (try HELP)"]
        );
        assert_eq!(
            t.line("create flow"),
            [format!("501 usage: {}", command::USAGE[12].1)]
        );
        t.login();
        assert_eq!(t.session.state(), State::Ready);
        assert_eq!(t.session.principal().map(String::as_str), Some("test"));
        for line in OTHERS {
            let dispatched = t.line(line);
            assert_eq!(
                dispatched,
                [format!("DISPATCH {}", command::parse(line).expect("valid"))],
                "{line}"
            );
            assert_eq!(t.session.pending(), command::parse(line).ok().as_ref());
            assert_eq!(t.respond(Response::Reply(Reply::ok("OK"))), ["220 OK"]);
        }
        assert_eq!(t.line("QUIT"), ["220 Bye", "CLOSE"]);
        assert_eq!(t.session.state(), State::Closed);
        assert_eq!(
            t.session.handle(Input::Line(Line::Text("NOOP".into()))),
            Err(SessionError::Closed)
        );
    }

    #[test]
    fn too_many_commands_before_authentication_close() {
        let mut t = Test::new(SessionConfig {
            limits: Limits {
                max_commands_before_auth: 5,
                max_line: 4096,
                ..Limits::default()
            },
            ..config()
        });
        // As the integration test: junk is not a command and does not count.
        let mut decoder = t.session.config().limits.decoder();
        let mut input = "A".repeat(100_000).into_bytes();
        input.extend_from_slice(b"\r\n\xff\xfe\x00garbage\r\n");
        let mut rest = &input[..];
        let mut lines = Vec::new();
        while !rest.is_empty() {
            let (used, line) = decoder.feed(rest);
            rest = &rest[used..];
            lines.extend(line);
        }
        assert_eq!(
            t.input(Input::Line(lines[0].clone())),
            ["500 line too long (at most 4096 bytes)"]
        );
        assert_eq!(
            t.input(Input::Line(lines[1].clone())),
            ["500 not a line of UTF-8 text"]
        );
        assert_eq!(t.line("NOOP"), ["220 OK"]);
        assert_eq!(
            t.line("LIST FLOWS"),
            ["530 authenticate first (AUTHENTICATE PLAIN)"]
        );
        for _ in 0..3 {
            assert_eq!(t.line("NOOP"), ["220 OK"]);
        }
        assert_eq!(
            t.line("NOOP"),
            ["421 too many commands before authentication", "CLOSE"]
        );
    }

    #[test]
    fn authenticate_plain_as_the_draft_and_not_twice() {
        let mut t = Test::new(config());
        assert_eq!(t.line("AUTHENTICATE PLAIN"), ["220 OK"]);
        assert_eq!(t.session.state(), State::SaslResponse);
        assert_eq!(t.line("AHRlc3QAdGVzdA=="), ["AUTH PLAIN test"]);
        assert_eq!(t.session.state(), State::Authenticating);
        assert!(
            t.session
                .handle(Input::Line(Line::Text("NOOP".into())))
                .is_err()
        );
        assert_eq!(
            t.input(Input::Authenticated("test".into())),
            ["220 Authenticated"]
        );
        assert_eq!(t.line("AUTHENTICATE PLAIN"), ["503 already authenticated"]);
        assert_eq!(
            t.line("AUTHENTICATE ANONYMOUS"),
            ["503 already authenticated"]
        );
        assert_eq!(t.session.principal().map(String::as_str), Some("test"));
    }

    #[test]
    fn plain_responses_are_checked_before_the_host_sees_them() {
        let mut t = Test::new(config());
        assert_eq!(t.line("AUTHENTICATE PLAIN"), ["220 OK"]);
        assert_eq!(t.line("*"), ["501 authentication cancelled"]);
        assert_eq!(
            t.line("AUTHENTICATE PLAIN !!"),
            ["501 not a SASL PLAIN response (base64 of \\0user\\0password)"]
        );
        assert_eq!(t.line("AUTHENTICATE PLAIN"), ["220 OK"]);
        assert_eq!(
            t.input(Input::Line(Line::TooLong)),
            ["501 not a SASL PLAIN response (base64 of \\0user\\0password)"]
        );
        assert_eq!(t.line("AUTHENTICATE PLAIN"), ["220 OK"]);
        assert_eq!(t.input(Input::Line(Line::Closed)), ["CLOSE"]);
        assert_eq!(t.session.auth_failures(), 0, "malformed is not a failure");
    }

    #[test]
    fn plain_needs_tls_or_a_trusted_address_and_anonymous_can_be_off() {
        let mut t = Test::new(SessionConfig {
            plain_in_clear: false,
            anonymous: false,
            ..config()
        });
        assert_eq!(
            t.line("AUTHENTICATE PLAIN AHRlc3QAdGVzdA=="),
            ["534 PLAIN needs TLS on this connection: STARTTLS first"]
        );
        assert_eq!(
            t.line("AUTHENTICATE ANONYMOUS"),
            ["535 anonymous access is disabled on this host"]
        );
        assert_eq!(t.session.auth_failures(), 0);
        assert_eq!(t.line("STARTTLS"), ["220 Ready to start TLS", "STARTTLS"]);
        assert_eq!(t.input(Input::TlsEstablished), Vec::<String>::new());
        assert!(t.session.plain_allowed());
        t.login();

        let mut anon = Test::new(config());
        assert_eq!(
            anon.line("AUTHENTICATE ANONYMOUS trace@example"),
            ["AUTH ANONYMOUS"]
        );
        assert_eq!(
            anon.input(Input::Authenticated("anonymous".into())),
            ["220 Authenticated (anonymous: public flows, read only)"]
        );
    }

    #[test]
    fn failed_authentications_are_slowed_down_and_end_the_session() {
        let mut t = Test::new(config());
        for delay in [500, 1000, 2000, 4000] {
            assert_eq!(
                t.line("AUTHENTICATE PLAIN AGFsaWNlAHdyb25n"),
                ["AUTH PLAIN alice"]
            );
            assert_eq!(
                t.input(Input::AuthFailed),
                [format!("WAIT {delay}"), "535 authentication failed".into()]
            );
        }
        assert_eq!(
            t.line("AUTHENTICATE PLAIN AGFsaWNlAHdyb25n"),
            ["AUTH PLAIN alice"]
        );
        assert_eq!(
            t.input(Input::AuthFailed),
            ["WAIT 8000", "421 too many failed authentications", "CLOSE"]
        );

        // A success forgets the failures; an unreadable account file is
        // not a failure.
        let mut t = Test::new(config());
        assert_eq!(
            t.line("AUTHENTICATE PLAIN AGFsaWNlAHdyb25n"),
            ["AUTH PLAIN alice"]
        );
        assert_eq!(
            t.input(Input::AuthFailed),
            ["WAIT 500", "535 authentication failed"]
        );
        assert_eq!(
            t.line("AUTHENTICATE PLAIN AGFsaWNlAHdyb25n"),
            ["AUTH PLAIN alice"]
        );
        assert_eq!(
            t.input(Input::AuthUnavailable),
            ["450 credentials cannot be checked now, try again later"]
        );
        assert_eq!(t.session.auth_failures(), 1);
        t.login();
        assert_eq!(t.session.auth_failures(), 0);

        let limits = Limits {
            auth_failure_delay_ms: 4000,
            ..Limits::default()
        };
        assert_eq!(limits.auth_failure_delay(1), Duration::from_secs(4));
        assert_eq!(
            limits.auth_failure_delay(3),
            Duration::from_secs(10),
            "never more than 10 s"
        );
        let limits = Limits {
            auth_failure_delay_ms: 1,
            ..Limits::default()
        };
        assert_eq!(
            limits.auth_failure_delay(40),
            Duration::from_millis(32),
            "at most 32 times"
        );
        assert_eq!(limits.auth_failure_delay(0), Duration::from_millis(1));
    }

    #[test]
    fn starttls_resets_the_session() {
        let mut t = Test::new(SessionConfig {
            limits: Limits {
                max_commands_before_auth: 3,
                ..Limits::default()
            },
            ..config()
        });
        t.login();
        assert_eq!(t.line("LIST FLOWS"), ["DISPATCH LIST FLOWS"]);
        assert_eq!(t.respond(Response::Reply(Reply::ok("OK"))), ["220 OK"]);
        assert_eq!(t.line("STARTTLS"), ["220 Ready to start TLS", "STARTTLS"]);
        assert_eq!(t.session.state(), State::StartingTls);
        assert!(!t.session.state().wants_line());
        assert!(
            t.session
                .handle(Input::Line(Line::Text("NOOP".into())))
                .is_err(),
            "the host drops what came in clear"
        );
        assert_eq!(
            t.input(Input::TlsEstablished),
            Vec::<String>::new(),
            "no new greeting"
        );
        assert!(t.session.is_tls());
        assert_eq!(t.session.state(), State::Accepting);
        assert_eq!(t.session.principal(), None, "authentication forgotten");
        assert_eq!(
            t.line("LIST FLOWS"),
            ["530 authenticate first (AUTHENTICATE PLAIN)"]
        );
        assert_eq!(t.line("STARTTLS"), ["503 TLS is already on"]);
        t.login();
        assert_eq!(t.line("STARTTLS"), ["503 TLS is already on"]);

        // The count of commands before authentication restarts.
        let mut t = Test::new(SessionConfig {
            limits: Limits {
                max_commands_before_auth: 2,
                ..Limits::default()
            },
            ..config()
        });
        assert_eq!(t.line("NOOP"), ["220 OK"]);
        assert_eq!(t.line("STARTTLS"), ["220 Ready to start TLS", "STARTTLS"]);
        assert_eq!(t.input(Input::TlsEstablished), Vec::<String>::new());
        assert_eq!(t.line("NOOP"), ["220 OK"]);
        assert_eq!(t.line("NOOP"), ["220 OK"]);
        assert_eq!(
            t.line("NOOP"),
            ["421 too many commands before authentication", "CLOSE"]
        );

        // No TLS on the host, a failed handshake, and the implicit-TLS port.
        let mut t = Test::new(SessionConfig {
            starttls: false,
            ..config()
        });
        assert_eq!(
            t.line("STARTTLS"),
            ["454 TLS is not configured on this host"]
        );
        let mut t = Test::new(config());
        assert_eq!(t.line("STARTTLS"), ["220 Ready to start TLS", "STARTTLS"]);
        assert_eq!(t.input(Input::TlsFailed), ["CLOSE"]);
        let mut t = Test::new(SessionConfig {
            tls: true,
            ..config()
        });
        assert_eq!(t.line("STARTTLS"), ["503 TLS is already on"]);
    }

    #[test]
    fn consecutive_errors_close_the_session() {
        let limits = Limits {
            max_errors: 3,
            ..Limits::default()
        };
        let mut t = Test::new(SessionConfig { limits, ..config() });
        for _ in 0..3 {
            assert_eq!(t.line(""), ["500 empty command"]);
        }
        assert_eq!(t.line("NOOP"), ["220 OK"], "a success resets the count");
        assert_eq!(t.session.errors(), 0);
        assert_eq!(
            t.input(Input::Line(Line::NotText)),
            ["500 not a line of UTF-8 text"]
        );
        assert_eq!(
            t.line("LIST FLOWS"),
            ["530 authenticate first (AUTHENTICATE PLAIN)"]
        );
        assert_eq!(t.line("HELP FROB"), ["501 no command FROB"]);
        assert_eq!(
            t.line("DESCRIBE FLOW bad_name.x"),
            [
                "501 name `bad_name.x`: label `bad_name` may hold only letters, digits and `-`",
                "421 too many errors",
                "CLOSE"
            ]
        );

        // Host answers count too: error replies, error ends of data
        // blocks, failed streamed answers.
        let mut t = Test::new(SessionConfig {
            limits: Limits {
                max_errors: 2,
                ..Limits::default()
            },
            ..config()
        });
        t.login();
        assert_eq!(t.line("DESCRIBE FLOW a.b"), ["DISPATCH DESCRIBE FLOW a.b"]);
        assert_eq!(
            t.respond(Response::Reply(Reply::new(
                Code::NotFound,
                "no such flow: a.b"
            ))),
            ["550 no such flow: a.b"]
        );
        assert_eq!(t.line("READ FLOW a.b"), ["DISPATCH READ FLOW a.b"]);
        assert_eq!(
            t.respond(Response::Sent { success: false }),
            Vec::<String>::new()
        );
        assert_eq!(t.line("LIST FLOWS"), ["DISPATCH LIST FLOWS"]);
        assert_eq!(
            t.respond(Response::Data {
                lines: vec![],
                end: Reply::new(Code::TryLater, "broker request failed")
            }),
            [
                "DATA 0 450 broker request failed",
                "421 too many errors",
                "CLOSE"
            ]
        );

        // The STARTTLS go-ahead is not a success that resets the count.
        let mut t = Test::new(SessionConfig {
            limits: Limits {
                max_errors: 1,
                ..Limits::default()
            },
            ..config()
        });
        assert_eq!(t.line(""), ["500 empty command"]);
        assert_eq!(t.line("STARTTLS"), ["220 Ready to start TLS", "STARTTLS"]);
        assert_eq!(t.input(Input::TlsEstablished), Vec::<String>::new());
        assert_eq!(
            t.line(""),
            ["500 empty command", "421 too many errors", "CLOSE"]
        );
    }

    #[test]
    fn long_lines_and_non_text_lines_are_refused() {
        let mut t = Test::new(config());
        // A stranger's lines are short; a logged-in client's may be long
        // (the data lines of its blocks).
        assert_eq!(t.session.max_line(), 4096);
        assert_eq!(
            t.input(Input::Line(Line::TooLong)),
            ["500 line too long (at most 4096 bytes)"]
        );
        let mut logged_in = Test::new(config());
        logged_in.login();
        assert_eq!(logged_in.session.max_line(), 1 << 20);
        assert_eq!(
            logged_in.input(Input::Line(Line::TooLong)),
            ["500 line too long (at most 1048576 bytes)"]
        );
        assert_eq!(
            t.input(Input::Line(Line::NotText)),
            ["500 not a line of UTF-8 text"]
        );
        assert_eq!(
            t.line(&format!("NOOP {}", "x".repeat(5000))),
            ["500 command line longer than 4096 bytes"]
        );
        assert_eq!(t.line("NOOP"), ["220 OK"], "the session goes on");
        assert_eq!(
            t.input(Input::Line(Line::Closed)),
            ["CLOSE"],
            "the client left: no reply"
        );
    }

    #[test]
    fn collected_blocks_end_with_a_dot_and_keep_to_their_budget() {
        let limits = Limits {
            max_component_bytes: 6, // budget 6 / 3 * 4 + 8 = 16 bytes of base64
            max_request_bytes: 10,
            max_errors: 100,
            ..Limits::default()
        };
        assert_eq!(limits.component_budget(), 16);
        let mut t = Test::new(SessionConfig { limits, ..config() });
        t.login();
        assert_eq!(t.line("PUT COMPONENT"), ["DISPATCH PUT COMPONENT"]);
        assert_eq!(
            t.respond(Response::Collect),
            ["220 OK send the component in base64, end with \".\""]
        );
        assert_eq!(t.session.state(), State::Collecting);
        assert_eq!(t.line("QUJD"), Vec::<String>::new());
        assert_eq!(t.line("..x"), Vec::<String>::new());
        assert_eq!(t.line("."), [r#"DATA-IN PUT COMPONENT ["QUJD", ".x"]"#]);
        assert_eq!(t.session.state(), State::DataPending);
        assert!(
            t.session
                .handle(Input::Response(Response::Collect))
                .is_err()
        );
        let digest = format!("OK sha256:{}", "ab".repeat(32));
        assert_eq!(
            t.respond(Response::Reply(Reply::ok(digest.clone()))),
            [format!("220 {digest}")]
        );
        assert_eq!(t.session.state(), State::Ready);

        // Over budget: the block is read to its end, then refused.
        assert_eq!(t.line("PUT COMPONENT"), ["DISPATCH PUT COMPONENT"]);
        t.respond(Response::Collect);
        assert_eq!(t.line("0123456789"), Vec::<String>::new());
        assert_eq!(t.line("0123456789"), Vec::<String>::new());
        assert_eq!(t.line("NOOP"), Vec::<String>::new(), "still data");
        assert_eq!(t.line("."), ["552 data block too large"]);
        assert_eq!(t.line("NOOP"), ["220 OK"], "a command again");

        // Processor declarations: the request budget.
        assert_eq!(
            t.line("CREATE PROCESSOR p"),
            ["DISPATCH CREATE PROCESSOR p"]
        );
        assert_eq!(
            t.respond(Response::Collect),
            ["220 OK send key=value lines, end with \".\""]
        );
        t.line("kind=bridge");
        assert_eq!(t.line("."), ["552 data block too large"]);
        assert_eq!(
            t.line("UPDATE PROCESSOR p"),
            ["DISPATCH UPDATE PROCESSOR p"]
        );
        t.respond(Response::Collect);
        t.line("a=b");
        assert_eq!(t.line("."), [r#"DATA-IN UPDATE PROCESSOR p ["a=b"]"#]);
        assert_eq!(
            t.respond(Response::Reply(Reply::ok("OK p generation 2"))),
            ["220 OK p generation 2"]
        );

        // The first bad line decides the reply.
        for (bad, reply) in [
            (Line::TooLong, "552 data line too long"),
            (Line::NotText, "500 data line is not UTF-8 text"),
        ] {
            assert_eq!(
                t.line("CREATE PROCESSOR p"),
                ["DISPATCH CREATE PROCESSOR p"]
            );
            t.respond(Response::Collect);
            assert_eq!(t.input(Input::Line(bad)), Vec::<String>::new());
            assert_eq!(t.input(Input::Line(Line::TooLong)), Vec::<String>::new());
            assert_eq!(t.line("a=b"), Vec::<String>::new());
            assert_eq!(t.line("."), [reply]);
        }

        // An empty block, and a client leaving mid-block.
        assert_eq!(
            t.line("UPDATE PROCESSOR p"),
            ["DISPATCH UPDATE PROCESSOR p"]
        );
        t.respond(Response::Collect);
        assert_eq!(t.line("."), ["DATA-IN UPDATE PROCESSOR p []"]);
        t.respond(Response::Reply(Reply::new(
            Code::Invalid,
            "nothing to update",
        )));
        assert_eq!(t.line("PUT COMPONENT"), ["DISPATCH PUT COMPONENT"]);
        t.respond(Response::Collect);
        assert_eq!(t.input(Input::Line(Line::Closed)), ["CLOSE"]);
    }

    #[test]
    fn streamed_blocks_hand_over_each_line() {
        let mut t = Test::new(config());
        t.login();
        assert_eq!(t.line("WRITE FLOW a.b"), ["DISPATCH WRITE FLOW a.b"]);
        // A refusal before the block: no go-ahead, the next line is a command.
        assert_eq!(
            t.respond(Response::Reply(Reply::new(
                Code::Forbidden,
                "no write right"
            ))),
            ["554 no write right"]
        );
        assert_eq!(t.line("WRITE FLOW a.b"), ["DISPATCH WRITE FLOW a.b"]);
        assert_eq!(
            t.respond(Response::Stream),
            ["220 OK send events as JSON lines, end with \".\""]
        );
        assert_eq!(t.session.state(), State::Streaming);
        assert_eq!(t.line("{\"id\":1}"), [r#"LINE 1 Text("{\"id\":1}")"#]);
        assert_eq!(t.input(Input::Line(Line::TooLong)), ["LINE 2 TooLong"]);
        assert_eq!(t.input(Input::Line(Line::NotText)), ["LINE 3 NotText"]);
        assert_eq!(t.line(".."), [r#"LINE 4 Text(".")"#]);
        assert_eq!(t.line(".123"), [r#"LINE 5 Text("123")"#]);
        assert_eq!(t.line(""), [r#"LINE 6 Text("")"#]);
        assert_eq!(t.line("."), ["END"]);
        assert!(t.session.handle(Input::Response(Response::Stream)).is_err());
        let written = Written {
            stored: 3,
            duplicates: 1,
        };
        assert_eq!(
            t.respond(Response::Reply(written.to_reply())),
            ["220 OK 3 events written, 1 duplicates"]
        );
        assert_eq!(t.line("WRITE FLOW a.b"), ["DISPATCH WRITE FLOW a.b"]);
        t.respond(Response::Stream);
        assert_eq!(t.input(Input::Line(Line::Closed)), ["CLOSE"]);
    }

    #[test]
    fn quit_and_idle_timeouts_close() {
        let mut t = Test::new(config());
        assert_eq!(t.line("quit"), ["220 Bye", "CLOSE"]);
        assert_eq!(
            t.session.handle(Input::IdleTimeout),
            Err(SessionError::Closed)
        );

        let mut t = Test::new(config());
        assert_eq!(
            t.input(Input::IdleTimeout),
            ["421 idle timeout, closing", "CLOSE"]
        );
        let mut t = Test::new(config());
        t.line("AUTHENTICATE PLAIN");
        assert_eq!(
            t.input(Input::IdleTimeout),
            ["421 idle timeout, closing", "CLOSE"]
        );
        let mut t = Test::new(config());
        t.login();
        t.line("PUT COMPONENT");
        t.respond(Response::Collect);
        t.line("QUJD");
        assert_eq!(
            t.input(Input::IdleTimeout),
            ["421 idle timeout, closing", "CLOSE"]
        );
        let mut t = Test::new(config());
        t.line("STARTTLS");
        assert_eq!(
            t.input(Input::IdleTimeout),
            ["CLOSE"],
            "nothing in clear mid-handshake"
        );

        let limits = Limits {
            idle_timeout_secs: 0,
            ..Limits::default()
        };
        assert_eq!(limits.idle_timeout(), Duration::from_secs(1));
        assert_eq!(limits.tls_handshake_timeout(), Duration::from_secs(1));
        assert_eq!(
            Limits::default().tls_handshake_timeout(),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn inputs_out_of_order_are_errors_and_change_nothing() {
        let mut t = Test::new(config());
        for input in [
            Input::Authenticated("x".to_owned()),
            Input::AuthFailed,
            Input::AuthUnavailable,
            Input::TlsEstablished,
            Input::TlsFailed,
            Input::Start,
            Input::Response(Response::Reply(Reply::ok("OK"))),
            Input::Response(Response::Collect),
        ] {
            let name = input.name();
            assert_eq!(
                t.session.handle(input),
                Err(SessionError::Unexpected {
                    input: name,
                    state: State::Accepting
                })
            );
        }
        assert_eq!(t.line("NOOP"), ["220 OK"]);
        t.line("LIST FLOWS");
        assert_eq!(t.session.errors(), 1);
        t.login();
        t.line("LIST FLOWS");
        assert!(
            t.session
                .handle(Input::Line(Line::Text("NOOP".into())))
                .is_err(),
            "the host answers first"
        );
        assert_eq!(t.session.state(), State::Dispatched);
        assert_eq!(t.respond(Response::Reply(Reply::ok("OK"))), ["220 OK"]);
    }

    #[test]
    fn capabilities_describe_the_session() {
        let host = [
            "PROCESSORS bridge collector distributor signal",
            "SUBSCRIBE bridge",
        ];
        let s: Session<()> = Session::new(config());
        assert_eq!(
            s.capabilities(&host),
            [
                "FNAP 1",
                "AUTH PLAIN ANONYMOUS",
                "STARTTLS",
                host[0],
                host[1],
                "MAX-LINE 1048576",
                "MAX-COMPONENT 33554432"
            ]
        );
        let s: Session<()> = Session::new(SessionConfig {
            plain_in_clear: false,
            ..config()
        });
        assert_eq!(s.capabilities::<&str>(&[])[1], "AUTH ANONYMOUS");
        let s: Session<()> = Session::new(SessionConfig {
            tls: true,
            anonymous: false,
            ..config()
        });
        assert_eq!(s.capabilities::<&str>(&[])[1..3], ["AUTH PLAIN", "TLS"]);
        let s: Session<()> = Session::new(SessionConfig {
            anonymous: false,
            plain_in_clear: false,
            starttls: false,
            ..config()
        });
        assert_eq!(
            s.capabilities::<&str>(&[])[1..3],
            ["AUTH", "MAX-LINE 1048576"]
        );
    }

    #[test]
    fn help_and_the_wire() {
        let mut t = Test::new(config());
        assert_eq!(t.line("help read  flow"), ["DATA 1 220 OK"]);
        let help = help(Some("READ FLOW"));
        let Response::Data { lines, .. } = &help else {
            panic!("a block: {help:?}");
        };
        assert!(lines[0].starts_with("READ FLOW <fqdn>"));
        let block = Action::DataBlock {
            lines: vec!["220 OK".into(), "a\nb".into(), ".".into()],
            end: Reply::ok("OK"),
        };
        assert_eq!(
            block.wire().as_deref(),
            Some("220 DATA\r\n.220 OK\r\na b\r\n..\r\n220 OK\r\n")
        );
        assert_eq!(
            Action::Reply(Reply::ok("Bye")).wire().as_deref(),
            Some("220 Bye\r\n")
        );
        assert_eq!(Action::Close.wire(), None);
        assert_eq!(
            go_ahead(&Command::Noop).text,
            "OK send lines, end with \".\""
        );
    }

    #[test]
    fn admission_counts_sessions_in_all_and_per_address() {
        let limits = Limits {
            max_sessions: 4,
            max_sessions_per_address: 3,
            ..Limits::default()
        };
        let mut a = Admission::new(&limits);
        let one: IpAddr = [127, 0, 0, 1].into();
        let two: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..3 {
            assert_eq!(a.admit(one), Ok(()));
        }
        assert_eq!(a.admit(one), Err(Refusal::TooManyFromAddress));
        assert_eq!(
            Refusal::TooManyFromAddress.reply().to_string(),
            "421 too many sessions from your address"
        );
        assert_eq!(a.admit(two), Ok(()));
        assert_eq!(a.admit(two), Err(Refusal::TooManySessions));
        assert_eq!(
            Refusal::TooManySessions.reply().to_string(),
            "421 too many sessions, try again later"
        );
        assert_eq!((a.open(), a.open_from(one), a.open_from(two)), (4, 3, 1));
        a.release(one);
        assert_eq!(a.admit(two), Ok(()));
        a.release(two);
        a.release(two);
        a.release(two);
        assert_eq!((a.open(), a.open_from(two)), (2, 0));
        let mut none = Admission::new(&Limits {
            max_sessions_per_address: 0,
            ..Limits::default()
        });
        assert_eq!(none.admit(one), Err(Refusal::TooManyFromAddress));
        assert_eq!(none.open_from(one), 0);
    }

    #[test]
    fn ipv6_addresses_are_counted_by_their_64_prefix() {
        let mut a = Admission::new(&Limits {
            max_sessions_per_address: 2,
            ..Limits::default()
        });
        let host = |s: &str| -> IpAddr { s.parse().expect("address") };
        assert_eq!(a.admit(host("2001:db8:1:2::1")), Ok(()));
        assert_eq!(a.admit(host("2001:db8:1:2:ffff:0:0:9")), Ok(()));
        assert_eq!(
            a.admit(host("2001:db8:1:2:abcd::7")),
            Err(Refusal::TooManyFromAddress),
            "a fresh address in the same /64 is the same client"
        );
        assert_eq!(a.admit(host("2001:db8:1:3::1")), Ok(()), "another /64");
        assert_eq!(a.open_from(host("2001:db8:1:2::5")), 2);
        a.release(host("2001:db8:1:2::1"));
        assert_eq!(a.open_from(host("2001:db8:1:2::1")), 1);
        // An IPv4 client seen through a dual-stack socket is counted as
        // itself.
        assert_eq!(a.admit(host("::ffff:192.0.2.7")), Ok(()));
        assert_eq!(a.open_from(host("192.0.2.7")), 1);
        assert_eq!(address_group(host("192.0.2.7")), host("192.0.2.7"));
    }
}
