//! FNAP command lines: the grammar of what a client may send, parsed into
//! [`Command`]. Keywords are case-insensitive; arguments are separated by
//! spaces or tabs. Nothing here touches the network, so the parser is what
//! the fuzz target (`fuzz/`) exercises.

use crate::reply::{Code, Reply};
pub use flowd_core::{FlowName, FlowOptions, NameError, NamespaceName, Right};
use std::fmt;

/// Longest command line the parser looks at (data lines have their own,
/// larger, limit).
pub const MAX_COMMAND_LINE: usize = 4096;

/// A SASL mechanism FNAP offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616: `\0user\0password`, base64.
    Plain,
    /// RFC 4505: read-only access to public flows.
    Anonymous,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Anonymous => "ANONYMOUS",
        })
    }
}

/// Where `READ FLOW` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// The first stored event.
    First,
    /// Only events written from now on (the default).
    #[default]
    New,
    /// The event with this stream sequence (or the next one still stored).
    Sequence(u64),
}

/// The word after `FROM`: `START`, `NEW` or the sequence.
impl fmt::Display for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Start::First => f.write_str("START"),
            Start::New => f.write_str("NEW"),
            Start::Sequence(n) => write!(f, "{n}"),
        }
    }
}

/// The options of `CREATE FLOW` / `UPDATE FLOW` as they are written on a
/// command line (`PUBLIC MAX-AGE 60`), each set one once, in the order
/// `PUBLIC|PRIVATE`, `MAX-AGE`, `MAX-BYTES`, `DUPLICATE-WINDOW`; empty when
/// none is set. (A wrapper, as [`FlowOptions`] belongs to `flowd-core`.)
#[derive(Debug, Clone, Copy)]
pub struct DisplayOptions<'a>(pub &'a FlowOptions);

impl fmt::Display for DisplayOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        let mut sep = "";
        let mut word = |f: &mut fmt::Formatter<'_>, w: fmt::Arguments<'_>| {
            let r = write!(f, "{sep}{w}");
            sep = " ";
            r
        };
        match o.public {
            Some(true) => word(f, format_args!("PUBLIC"))?,
            Some(false) => word(f, format_args!("PRIVATE"))?,
            None => {}
        }
        if let Some(n) = o.max_age_secs {
            word(f, format_args!("MAX-AGE {n}"))?;
        }
        if let Some(n) = o.max_bytes {
            word(f, format_args!("MAX-BYTES {n}"))?;
        }
        if let Some(n) = o.duplicate_window_secs {
            word(f, format_args!("DUPLICATE-WINDOW {n}"))?;
        }
        Ok(())
    }
}

/// Every FNAP command (figure 5 of the draft, plus session commands and the
/// processor commands behind `flow replicate|collect|distribute|signal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `AUTHENTICATE PLAIN|ANONYMOUS [initial-response]`.
    Authenticate {
        /// The SASL mechanism.
        mechanism: Mechanism,
        /// SASL initial response given on the same line (RFC 4954 style):
        /// one word (no white space).
        initial: Option<String>,
    },
    /// `STARTTLS`.
    StartTls,
    /// `CAPABILITIES`.
    Capabilities,
    /// `HELP [command]`; the topic is upper case, its words separated by
    /// one space.
    Help(Option<String>),
    /// `NOOP` (arguments are ignored).
    Noop,
    /// `QUIT`.
    Quit,

    /// `CREATE NAMESPACE <fqdn> [OWNER <user>] [PUBLIC]`.
    CreateNamespace {
        /// The namespace to create.
        namespace: NamespaceName,
        /// Its owner (default: the creating account).
        owner: Option<String>,
        /// Whether it is public.
        public: bool,
    },
    /// `DESCRIBE NAMESPACE <fqdn>`.
    DescribeNamespace(NamespaceName),
    /// `DELETE NAMESPACE <fqdn>`.
    DeleteNamespace(NamespaceName),
    /// `LIST NAMESPACES [<parent>]`: every namespace, or those below one.
    ListNamespaces(Option<NamespaceName>),
    /// `GRANT <user> READ|WRITE|ADMIN ON <namespace>`.
    Grant {
        /// The account granted the right.
        user: String,
        /// The right.
        right: Right,
        /// Where.
        namespace: NamespaceName,
    },
    /// `REVOKE <user> ON <namespace>`.
    Revoke {
        /// The account whose grant is removed.
        user: String,
        /// Where.
        namespace: NamespaceName,
    },

    /// `CREATE FLOW <fqdn> [options]`.
    CreateFlow {
        /// The flow to create.
        flow: FlowName,
        /// Its settings.
        options: FlowOptions,
    },
    /// `DESCRIBE FLOW <fqdn>`.
    DescribeFlow(FlowName),
    /// `UPDATE FLOW <fqdn> [options]`.
    UpdateFlow {
        /// The flow to update.
        flow: FlowName,
        /// The settings to change (`None`: unchanged).
        options: FlowOptions,
    },
    /// `DELETE FLOW <fqdn>`.
    DeleteFlow(FlowName),
    /// `LIST FLOWS [<namespace>]`: every flow the session may see, or those
    /// of one namespace.
    ListFlows(Option<NamespaceName>),
    /// `READ FLOW <fqdn> [FROM START|NEW|<n>] [COUNT <n>] [FOLLOW] [SEQUENCES]`.
    ReadFlow {
        /// The flow to read.
        flow: FlowName,
        /// Where to start (default: new events only).
        start: Start,
        /// At most this many events.
        count: Option<u64>,
        /// Keep reading new events until the client stops the read.
        follow: bool,
        /// Each data line is `<stream-sequence> <event>` (for relays that
        /// resume where they stopped).
        sequences: bool,
    },
    /// `WRITE FLOW <fqdn>`, followed by a data block of events.
    WriteFlow(FlowName),

    /// `SUBSCRIBE <remote-flow> [LOCAL <local-flow>]`.
    Subscribe {
        /// The flow subscribed to.
        remote: FlowName,
        /// The local flow the copy is bridged into.
        local: Option<FlowName>,
    },
    /// `UNSUBSCRIBE <copy>`: cancels a subscription copy this session's
    /// account holds.
    Unsubscribe(FlowName),
    /// `LIST SUBSCRIPTIONS`.
    ListSubscriptions,
    /// `LIST SUBSCRIBERS <flow>`.
    ListSubscribers(FlowName),
    /// `REMOVE SUBSCRIBER <copy>`.
    RemoveSubscriber(FlowName),
    /// `PAUSE SUBSCRIPTION <local-flow>`.
    PauseSubscription(FlowName),
    /// `RESUME SUBSCRIPTION <local-flow>`.
    ResumeSubscription(FlowName),
    /// `STOP SUBSCRIPTION <local-flow>`.
    StopSubscription(FlowName),

    /// `PUT COMPONENT`: uploads a component (base64 data block); replies
    /// with its digest.
    PutComponent,
    /// `CREATE PROCESSOR <id>`: declares a processor from a `key=value`
    /// data block.
    CreateProcessor(String),
    /// `UPDATE PROCESSOR <id>`, followed by a `key=value` data block.
    UpdateProcessor(String),
    /// `DESCRIBE PROCESSOR <id>`.
    DescribeProcessor(String),
    /// `LIST PROCESSORS`.
    ListProcessors,
    /// `LIST AGENTS`: the participant's live hosts on this broker, with
    /// their load.
    ListAgents,
    /// `PAUSE PROCESSOR <id>`.
    PauseProcessor(String),
    /// `RESUME PROCESSOR <id>`.
    ResumeProcessor(String),
    /// `DELETE PROCESSOR <id>`.
    DeleteProcessor(String),
}

/// The canonical command line (without line ending): keywords in upper
/// case, one space between words, names as parsed (lower case, no
/// `flow://`), options in a fixed order, defaults left out (`READ FLOW`
/// without `FROM NEW`, `NOOP` without arguments).
///
/// For every command [`parse`] returns, `parse(&command.to_string())`
/// gives the same command back. A command built by hand with a value the
/// grammar cannot carry (an initial response holding white space, an
/// invalid account name, a `HELP` topic not in upper case) is written as
/// it is and does not parse back: [`Command::try_encode`] checks.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = |f: &mut fmt::Formatter<'_>, options: &FlowOptions| {
            let words = DisplayOptions(options).to_string();
            if words.is_empty() {
                Ok(())
            } else {
                write!(f, " {words}")
            }
        };
        match self {
            Command::Authenticate { mechanism, initial } => {
                write!(f, "AUTHENTICATE {mechanism}")?;
                if let Some(initial) = initial {
                    write!(f, " {initial}")?;
                }
                Ok(())
            }
            Command::StartTls => f.write_str("STARTTLS"),
            Command::Capabilities => f.write_str("CAPABILITIES"),
            Command::Help(None) => f.write_str("HELP"),
            Command::Help(Some(topic)) => write!(f, "HELP {topic}"),
            Command::Noop => f.write_str("NOOP"),
            Command::Quit => f.write_str("QUIT"),
            Command::CreateNamespace {
                namespace,
                owner,
                public,
            } => {
                write!(f, "CREATE NAMESPACE {namespace}")?;
                if let Some(owner) = owner {
                    write!(f, " OWNER {owner}")?;
                }
                if *public {
                    f.write_str(" PUBLIC")?;
                }
                Ok(())
            }
            Command::DescribeNamespace(ns) => write!(f, "DESCRIBE NAMESPACE {ns}"),
            Command::DeleteNamespace(ns) => write!(f, "DELETE NAMESPACE {ns}"),
            Command::ListNamespaces(None) => f.write_str("LIST NAMESPACES"),
            Command::ListNamespaces(Some(ns)) => write!(f, "LIST NAMESPACES {ns}"),
            Command::Grant {
                user,
                right,
                namespace,
            } => write!(f, "GRANT {user} {} ON {namespace}", right.keyword()),
            Command::Revoke { user, namespace } => write!(f, "REVOKE {user} ON {namespace}"),
            Command::CreateFlow { flow, options: o } => {
                write!(f, "CREATE FLOW {flow}")?;
                options(f, o)
            }
            Command::DescribeFlow(flow) => write!(f, "DESCRIBE FLOW {flow}"),
            Command::UpdateFlow { flow, options: o } => {
                write!(f, "UPDATE FLOW {flow}")?;
                options(f, o)
            }
            Command::DeleteFlow(flow) => write!(f, "DELETE FLOW {flow}"),
            Command::ListFlows(None) => f.write_str("LIST FLOWS"),
            Command::ListFlows(Some(ns)) => write!(f, "LIST FLOWS {ns}"),
            Command::ReadFlow {
                flow,
                start,
                count,
                follow,
                sequences,
            } => {
                write!(f, "READ FLOW {flow}")?;
                if *start != Start::New {
                    write!(f, " FROM {start}")?;
                }
                if let Some(n) = count {
                    write!(f, " COUNT {n}")?;
                }
                if *follow {
                    f.write_str(" FOLLOW")?;
                }
                if *sequences {
                    f.write_str(" SEQUENCES")?;
                }
                Ok(())
            }
            Command::WriteFlow(flow) => write!(f, "WRITE FLOW {flow}"),
            Command::Subscribe { remote, local } => {
                write!(f, "SUBSCRIBE {remote}")?;
                if let Some(local) = local {
                    write!(f, " LOCAL {local}")?;
                }
                Ok(())
            }
            Command::Unsubscribe(copy) => write!(f, "UNSUBSCRIBE {copy}"),
            Command::ListSubscriptions => f.write_str("LIST SUBSCRIPTIONS"),
            Command::ListSubscribers(flow) => write!(f, "LIST SUBSCRIBERS {flow}"),
            Command::RemoveSubscriber(copy) => write!(f, "REMOVE SUBSCRIBER {copy}"),
            Command::PauseSubscription(local) => write!(f, "PAUSE SUBSCRIPTION {local}"),
            Command::ResumeSubscription(local) => write!(f, "RESUME SUBSCRIPTION {local}"),
            Command::StopSubscription(local) => write!(f, "STOP SUBSCRIPTION {local}"),
            Command::PutComponent => f.write_str("PUT COMPONENT"),
            Command::CreateProcessor(id) => write!(f, "CREATE PROCESSOR {id}"),
            Command::UpdateProcessor(id) => write!(f, "UPDATE PROCESSOR {id}"),
            Command::DescribeProcessor(id) => write!(f, "DESCRIBE PROCESSOR {id}"),
            Command::ListProcessors => f.write_str("LIST PROCESSORS"),
            Command::ListAgents => f.write_str("LIST AGENTS"),
            Command::PauseProcessor(id) => write!(f, "PAUSE PROCESSOR {id}"),
            Command::ResumeProcessor(id) => write!(f, "RESUME PROCESSOR {id}"),
            Command::DeleteProcessor(id) => write!(f, "DELETE PROCESSOR {id}"),
        }
    }
}

/// A value for an [`EncodeError`], cut like parse errors cut theirs.
fn encode_error(what: &'static str, value: &str, reason: &'static str) -> EncodeError {
    EncodeError::Value {
        what,
        value: value.chars().take(80).collect(),
        reason,
    }
}

/// Whether `word` is one word of the grammar: not empty, no white space
/// the parser splits on.
fn is_word(word: &str) -> bool {
    !word.is_empty() && !word.bytes().any(|b| b.is_ascii_whitespace())
}

impl Command {
    /// The canonical command line, as [`Display`](fmt::Display) writes it.
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// The canonical command line, checked to parse back to `self`: every
    /// free-form value is one the grammar carries (an initial response is
    /// one word, account names and processor ids are valid, a `HELP` topic
    /// is in the normal form [`parse`] gives) and the line fits in
    /// [`MAX_COMMAND_LINE`] bytes.
    pub fn try_encode(&self) -> Result<String, EncodeError> {
        let user = |u: &str| {
            if flowd_core::naming::is_account_name(u) {
                Ok(())
            } else {
                Err(encode_error(
                    "account name",
                    u,
                    "is not 1 to 64 letters, digits, `.`, `_`, `-` or `@`",
                ))
            }
        };
        let id = |id: &str| {
            if flowd_core::naming::is_processor_id(id) {
                Ok(())
            } else {
                Err(encode_error(
                    "processor id",
                    id,
                    "is not 1 to 64 lower-case letters, digits and `-`",
                ))
            }
        };
        match self {
            Command::Authenticate {
                initial: Some(initial),
                ..
            } if !is_word(initial) => {
                return Err(encode_error(
                    "initial response",
                    initial,
                    "is not one word (empty, or holds white space)",
                ));
            }
            Command::Help(Some(topic)) => {
                let normal = topic
                    .split_ascii_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_ascii_uppercase();
                if normal.is_empty() || normal != *topic {
                    return Err(encode_error(
                        "HELP topic",
                        topic,
                        "is not upper-case words separated by one space",
                    ));
                }
            }
            Command::CreateNamespace {
                owner: Some(owner), ..
            } => user(owner)?,
            Command::Grant { user: u, .. } | Command::Revoke { user: u, .. } => user(u)?,
            Command::CreateProcessor(p)
            | Command::UpdateProcessor(p)
            | Command::DescribeProcessor(p)
            | Command::PauseProcessor(p)
            | Command::ResumeProcessor(p)
            | Command::DeleteProcessor(p) => id(p)?,
            _ => {}
        }
        let line = self.to_string();
        if line.len() > MAX_COMMAND_LINE {
            return Err(EncodeError::TooLong(line.len()));
        }
        Ok(line)
    }

    /// Whether the command may be sent before authenticating.
    pub fn allowed_before_auth(&self) -> bool {
        matches!(
            self,
            Command::Authenticate { .. }
                | Command::StartTls
                | Command::Capabilities
                | Command::Help(_)
                | Command::Noop
                | Command::Quit
        )
    }
}

/// Why a command line is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// Nothing but white space.
    #[error("empty command")]
    Empty,
    /// Over [`MAX_COMMAND_LINE`] bytes.
    #[error("command line longer than {MAX_COMMAND_LINE} bytes")]
    TooLong,
    /// An unknown command (its words, upper case, at most 64 characters).
    #[error("unknown command `{0}` (try HELP)")]
    Unknown(String),
    /// A known command with the wrong arguments: its usage line.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// An invalid flow or namespace name.
    #[error("{0}")]
    Name(#[from] NameError),
    /// An invalid number, account name, processor id or mechanism.
    #[error("bad {what} `{value}`: {reason}")]
    Value {
        /// What the value is.
        what: &'static str,
        /// The value (cut to a few dozen characters).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl SyntaxError {
    /// The reply code: `500` for a line that is not a command (empty, too
    /// long, unknown), `501` for bad arguments.
    pub fn code(&self) -> Code {
        match self {
            SyntaxError::Empty | SyntaxError::TooLong | SyntaxError::Unknown(_) => Code::Syntax,
            SyntaxError::Usage(_) | SyntaxError::Name(_) | SyntaxError::Value { .. } => {
                Code::Arguments
            }
        }
    }

    /// The reply a server sends for this error.
    pub fn reply(&self) -> Reply {
        Reply::new(self.code(), self.to_string())
    }
}

/// Why a [`Command`] has no line that parses back to it (see
/// [`Command::try_encode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A value the grammar cannot carry as it is.
    #[error("{what} `{value}` {reason}")]
    Value {
        /// Which value.
        what: &'static str,
        /// The value (cut to a few dozen characters).
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The line would be longer than [`MAX_COMMAND_LINE`] bytes.
    #[error("the command line would be {0} bytes, more than {MAX_COMMAND_LINE}")]
    TooLong(usize),
}

/// The usage line of each command, as `HELP` prints them.
pub const USAGE: &[(&str, &str)] = &[
    (
        "AUTHENTICATE",
        "AUTHENTICATE PLAIN|ANONYMOUS [initial-response]",
    ),
    ("STARTTLS", "STARTTLS"),
    ("CAPABILITIES", "CAPABILITIES"),
    ("HELP", "HELP [command]"),
    ("NOOP", "NOOP"),
    ("QUIT", "QUIT"),
    (
        "CREATE NAMESPACE",
        "CREATE NAMESPACE <fqdn> [OWNER <user>] [PUBLIC]",
    ),
    ("DESCRIBE NAMESPACE", "DESCRIBE NAMESPACE <fqdn>"),
    ("DELETE NAMESPACE", "DELETE NAMESPACE <fqdn>"),
    ("LIST NAMESPACES", "LIST NAMESPACES [<parent-fqdn>]"),
    ("GRANT", "GRANT <user> READ|WRITE|ADMIN ON <namespace>"),
    ("REVOKE", "REVOKE <user> ON <namespace>"),
    (
        "CREATE FLOW",
        "CREATE FLOW <fqdn> [PUBLIC|PRIVATE] [MAX-AGE <s>] [MAX-BYTES <n>] [DUPLICATE-WINDOW <s>]",
    ),
    ("DESCRIBE FLOW", "DESCRIBE FLOW <fqdn>"),
    (
        "UPDATE FLOW",
        "UPDATE FLOW <fqdn> [PUBLIC|PRIVATE] [MAX-AGE <s>] [MAX-BYTES <n>] [DUPLICATE-WINDOW <s>]",
    ),
    ("DELETE FLOW", "DELETE FLOW <fqdn>"),
    ("LIST FLOWS", "LIST FLOWS [<namespace>]"),
    (
        "READ FLOW",
        "READ FLOW <fqdn> [FROM START|NEW|<sequence>] [COUNT <n>] [FOLLOW] [SEQUENCES]",
    ),
    ("WRITE FLOW", "WRITE FLOW <fqdn>"),
    ("SUBSCRIBE", "SUBSCRIBE <remote-flow> [LOCAL <local-flow>]"),
    ("UNSUBSCRIBE", "UNSUBSCRIBE <subscription-flow>"),
    ("LIST SUBSCRIPTIONS", "LIST SUBSCRIPTIONS"),
    ("LIST SUBSCRIBERS", "LIST SUBSCRIBERS <flow>"),
    ("REMOVE SUBSCRIBER", "REMOVE SUBSCRIBER <subscription-flow>"),
    ("PAUSE SUBSCRIPTION", "PAUSE SUBSCRIPTION <local-flow>"),
    ("RESUME SUBSCRIPTION", "RESUME SUBSCRIPTION <local-flow>"),
    ("STOP SUBSCRIPTION", "STOP SUBSCRIPTION <local-flow>"),
    ("PUT COMPONENT", "PUT COMPONENT"),
    ("CREATE PROCESSOR", "CREATE PROCESSOR <id>"),
    ("UPDATE PROCESSOR", "UPDATE PROCESSOR <id>"),
    ("DESCRIBE PROCESSOR", "DESCRIBE PROCESSOR <id>"),
    ("LIST PROCESSORS", "LIST PROCESSORS"),
    ("LIST AGENTS", "LIST AGENTS"),
    ("PAUSE PROCESSOR", "PAUSE PROCESSOR <id>"),
    ("RESUME PROCESSOR", "RESUME PROCESSOR <id>"),
    ("DELETE PROCESSOR", "DELETE PROCESSOR <id>"),
];

fn usage(name: &str) -> SyntaxError {
    let line = USAGE
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("HELP", |(_, u)| u);
    SyntaxError::Usage(line)
}

/// Parses one command line (without its line ending).
pub fn parse(line: &str) -> Result<Command, SyntaxError> {
    if line.len() > MAX_COMMAND_LINE {
        return Err(SyntaxError::TooLong);
    }
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let Some(first) = words.first() else {
        return Err(SyntaxError::Empty);
    };
    let verb = first.to_ascii_uppercase();
    let rest = &words[1..];
    // Two-word commands: VERB OBJECT ...
    let object = rest.first().map(|w| w.to_ascii_uppercase());
    let two = object.as_deref().map(|o| format!("{verb} {o}"));
    let args2 = rest.get(1..).unwrap_or(&[]);
    match (verb.as_str(), two.as_deref()) {
        ("AUTHENTICATE", _) => {
            let (Some(mechanism), 1..=2) = (rest.first(), rest.len()) else {
                return Err(usage("AUTHENTICATE"));
            };
            let mechanism = match mechanism.to_ascii_uppercase().as_str() {
                "PLAIN" => Mechanism::Plain,
                "ANONYMOUS" => Mechanism::Anonymous,
                _ => {
                    return Err(SyntaxError::Value {
                        what: "mechanism",
                        value: (*mechanism).to_owned(),
                        reason: "this host offers PLAIN and ANONYMOUS",
                    });
                }
            };
            Ok(Command::Authenticate {
                mechanism,
                initial: rest.get(1).map(|s| (*s).to_owned()),
            })
        }
        ("STARTTLS", _) => no_args(rest, "STARTTLS", Command::StartTls),
        ("CAPABILITIES", _) => no_args(rest, "CAPABILITIES", Command::Capabilities),
        ("NOOP", _) => Ok(Command::Noop),
        ("QUIT", _) => no_args(rest, "QUIT", Command::Quit),
        ("HELP", _) => Ok(Command::Help(
            (!rest.is_empty()).then(|| rest.join(" ").to_ascii_uppercase()),
        )),
        (_, Some("CREATE NAMESPACE")) => {
            let (namespace, options) = split_name(args2, "CREATE NAMESPACE")?;
            let mut owner = None;
            let mut public = false;
            let mut it = options.iter();
            while let Some(word) = it.next() {
                match word.to_ascii_uppercase().as_str() {
                    "PUBLIC" => public = true,
                    "OWNER" => {
                        let user = it.next().ok_or_else(|| usage("CREATE NAMESPACE"))?;
                        owner = Some(check_user(user)?);
                    }
                    _ => return Err(usage("CREATE NAMESPACE")),
                }
            }
            Ok(Command::CreateNamespace {
                namespace: NamespaceName::parse(namespace)?,
                owner,
                public,
            })
        }
        (_, Some("DESCRIBE NAMESPACE")) => {
            one_namespace(args2, "DESCRIBE NAMESPACE").map(Command::DescribeNamespace)
        }
        (_, Some("DELETE NAMESPACE")) => {
            one_namespace(args2, "DELETE NAMESPACE").map(Command::DeleteNamespace)
        }
        (_, Some("LIST NAMESPACES")) => match args2 {
            [] => Ok(Command::ListNamespaces(None)),
            [parent] => Ok(Command::ListNamespaces(Some(NamespaceName::parse(parent)?))),
            _ => Err(usage("LIST NAMESPACES")),
        },
        ("GRANT", _) => match rest {
            [user, right, on, namespace] if on.eq_ignore_ascii_case("ON") => {
                let right = Right::parse(right).ok_or_else(|| usage("GRANT"))?;
                Ok(Command::Grant {
                    user: check_user(user)?,
                    right,
                    namespace: NamespaceName::parse(namespace)?,
                })
            }
            _ => Err(usage("GRANT")),
        },
        ("REVOKE", _) => match rest {
            [user, on, namespace] if on.eq_ignore_ascii_case("ON") => Ok(Command::Revoke {
                user: check_user(user)?,
                namespace: NamespaceName::parse(namespace)?,
            }),
            _ => Err(usage("REVOKE")),
        },
        (_, Some("CREATE FLOW")) => {
            let (flow, options) = split_name(args2, "CREATE FLOW")?;
            Ok(Command::CreateFlow {
                flow: FlowName::parse(flow)?,
                options: flow_options(options, "CREATE FLOW")?,
            })
        }
        (_, Some("UPDATE FLOW")) => {
            let (flow, options) = split_name(args2, "UPDATE FLOW")?;
            Ok(Command::UpdateFlow {
                flow: FlowName::parse(flow)?,
                options: flow_options(options, "UPDATE FLOW")?,
            })
        }
        (_, Some("DESCRIBE FLOW")) => one_flow(args2, "DESCRIBE FLOW").map(Command::DescribeFlow),
        (_, Some("DELETE FLOW")) => one_flow(args2, "DELETE FLOW").map(Command::DeleteFlow),
        (_, Some("LIST FLOWS")) => match args2 {
            [] => Ok(Command::ListFlows(None)),
            [namespace] => Ok(Command::ListFlows(Some(NamespaceName::parse(namespace)?))),
            _ => Err(usage("LIST FLOWS")),
        },
        (_, Some("READ FLOW")) => {
            let (flow, options) = split_name(args2, "READ FLOW")?;
            let mut start = Start::New;
            let mut count = None;
            let mut follow = false;
            let mut sequences = false;
            let mut it = options.iter();
            while let Some(word) = it.next() {
                match word.to_ascii_uppercase().as_str() {
                    "FROM" => {
                        let at = it.next().ok_or_else(|| usage("READ FLOW"))?;
                        start = match at.to_ascii_uppercase().as_str() {
                            "START" | "FIRST" => Start::First,
                            "NEW" | "END" => Start::New,
                            n => Start::Sequence(number(n, "sequence")?),
                        };
                    }
                    "COUNT" => {
                        let n = it.next().ok_or_else(|| usage("READ FLOW"))?;
                        count = Some(number(n, "count")?);
                    }
                    "FOLLOW" => follow = true,
                    "SEQUENCES" => sequences = true,
                    _ => return Err(usage("READ FLOW")),
                }
            }
            Ok(Command::ReadFlow {
                flow: FlowName::parse(flow)?,
                start,
                count,
                follow,
                sequences,
            })
        }
        (_, Some("WRITE FLOW")) => one_flow(args2, "WRITE FLOW").map(Command::WriteFlow),
        ("SUBSCRIBE", _) => match rest {
            [remote] => Ok(Command::Subscribe {
                remote: FlowName::parse(remote)?,
                local: None,
            }),
            [remote, kw, local] if kw.eq_ignore_ascii_case("LOCAL") => Ok(Command::Subscribe {
                remote: FlowName::parse(remote)?,
                local: Some(FlowName::parse(local)?),
            }),
            _ => Err(usage("SUBSCRIBE")),
        },
        ("UNSUBSCRIBE", _) => one_flow(rest, "UNSUBSCRIBE").map(Command::Unsubscribe),
        (_, Some("LIST SUBSCRIPTIONS")) => {
            no_args(args2, "LIST SUBSCRIPTIONS", Command::ListSubscriptions)
        }
        (_, Some("LIST SUBSCRIBERS")) => {
            one_flow(args2, "LIST SUBSCRIBERS").map(Command::ListSubscribers)
        }
        (_, Some("REMOVE SUBSCRIBER")) => {
            one_flow(args2, "REMOVE SUBSCRIBER").map(Command::RemoveSubscriber)
        }
        (_, Some("PAUSE SUBSCRIPTION")) => {
            one_flow(args2, "PAUSE SUBSCRIPTION").map(Command::PauseSubscription)
        }
        (_, Some("RESUME SUBSCRIPTION")) => {
            one_flow(args2, "RESUME SUBSCRIPTION").map(Command::ResumeSubscription)
        }
        (_, Some("STOP SUBSCRIPTION")) => {
            one_flow(args2, "STOP SUBSCRIPTION").map(Command::StopSubscription)
        }
        (_, Some("PUT COMPONENT")) => no_args(args2, "PUT COMPONENT", Command::PutComponent),
        (_, Some("CREATE PROCESSOR")) => {
            one_id(args2, "CREATE PROCESSOR").map(Command::CreateProcessor)
        }
        (_, Some("UPDATE PROCESSOR")) => {
            one_id(args2, "UPDATE PROCESSOR").map(Command::UpdateProcessor)
        }
        (_, Some("DESCRIBE PROCESSOR")) => {
            one_id(args2, "DESCRIBE PROCESSOR").map(Command::DescribeProcessor)
        }
        (_, Some("LIST PROCESSORS")) => no_args(args2, "LIST PROCESSORS", Command::ListProcessors),
        (_, Some("LIST AGENTS")) => no_args(args2, "LIST AGENTS", Command::ListAgents),
        (_, Some("PAUSE PROCESSOR")) => {
            one_id(args2, "PAUSE PROCESSOR").map(Command::PauseProcessor)
        }
        (_, Some("RESUME PROCESSOR")) => {
            one_id(args2, "RESUME PROCESSOR").map(Command::ResumeProcessor)
        }
        (_, Some("DELETE PROCESSOR")) => {
            one_id(args2, "DELETE PROCESSOR").map(Command::DeleteProcessor)
        }
        (
            "CREATE" | "DESCRIBE" | "DELETE" | "LIST" | "UPDATE" | "READ" | "WRITE" | "REMOVE"
            | "PAUSE" | "RESUME" | "STOP" | "PUT",
            _,
        ) => Err(SyntaxError::Unknown(
            two.unwrap_or(verb).chars().take(64).collect(),
        )),
        _ => Err(SyntaxError::Unknown(verb.chars().take(64).collect())),
    }
}

fn no_args(rest: &[&str], name: &str, command: Command) -> Result<Command, SyntaxError> {
    if rest.is_empty() {
        Ok(command)
    } else {
        Err(usage(name))
    }
}

fn split_name<'a>(
    args: &'a [&'a str],
    name: &str,
) -> Result<(&'a str, &'a [&'a str]), SyntaxError> {
    args.split_first()
        .map(|(first, rest)| (*first, rest))
        .ok_or_else(|| usage(name))
}

fn one_flow(args: &[&str], name: &str) -> Result<FlowName, SyntaxError> {
    match args {
        [flow] => Ok(FlowName::parse(flow)?),
        _ => Err(usage(name)),
    }
}

fn one_namespace(args: &[&str], name: &str) -> Result<NamespaceName, SyntaxError> {
    match args {
        [namespace] => Ok(NamespaceName::parse(namespace)?),
        _ => Err(usage(name)),
    }
}

fn one_id(args: &[&str], name: &str) -> Result<String, SyntaxError> {
    match args {
        [id] => {
            if !flowd_core::naming::is_processor_id(id) {
                return Err(SyntaxError::Value {
                    what: "processor id",
                    value: id.chars().take(80).collect(),
                    reason: "use 1 to 64 lower-case letters, digits and `-`",
                });
            }
            Ok((*id).to_owned())
        }
        _ => Err(usage(name)),
    }
}

fn number<T: std::str::FromStr>(word: &str, what: &'static str) -> Result<T, SyntaxError> {
    word.parse().map_err(|_| SyntaxError::Value {
        what,
        value: word.chars().take(40).collect(),
        reason: "not a number",
    })
}

fn flow_options(words: &[&str], name: &str) -> Result<FlowOptions, SyntaxError> {
    let mut options = FlowOptions::default();
    let mut it = words.iter();
    while let Some(word) = it.next() {
        match word.to_ascii_uppercase().as_str() {
            "PUBLIC" => options.public = Some(true),
            "PRIVATE" => options.public = Some(false),
            "MAX-AGE" => {
                let n = it.next().ok_or_else(|| usage(name))?;
                options.max_age_secs = Some(number(n, "max-age")?);
            }
            "MAX-BYTES" => {
                let n = it.next().ok_or_else(|| usage(name))?;
                options.max_bytes = Some(number(n, "max-bytes")?);
            }
            "DUPLICATE-WINDOW" => {
                let n = it.next().ok_or_else(|| usage(name))?;
                options.duplicate_window_secs = Some(number(n, "duplicate-window")?);
            }
            _ => return Err(usage(name)),
        }
    }
    Ok(options)
}

/// Checks an account name: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_user(user: &str) -> Result<String, SyntaxError> {
    if flowd_core::naming::is_account_name(user) {
        Ok(user.to_owned())
    } else {
        Err(SyntaxError::Value {
            what: "account name",
            value: user.chars().take(80).collect(),
            reason: "use 1 to 64 letters, digits, `.`, `_`, `-` or `@`",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(s: &str) -> FlowName {
        FlowName::parse(s).expect("valid flow")
    }

    #[test]
    fn draft_transcript_commands() {
        assert_eq!(
            parse("AUTHENTICATE PLAIN"),
            Ok(Command::Authenticate {
                mechanism: Mechanism::Plain,
                initial: None
            })
        );
        assert_eq!(
            parse("CREATE FLOW time.flows.unix.ar"),
            Ok(Command::CreateFlow {
                flow: flow("time.flows.unix.ar"),
                options: FlowOptions::default()
            })
        );
        assert_eq!(
            parse("DESCRIBE FLOW time.flows.unix.ar"),
            Ok(Command::DescribeFlow(flow("time.flows.unix.ar")))
        );
        assert_eq!(
            parse("SUBSCRIBE time.flows.unix.ar LOCAL emiliano.ar-time.flows.unix.ar"),
            Ok(Command::Subscribe {
                remote: flow("time.flows.unix.ar"),
                local: Some(flow("emiliano.ar-time.flows.unix.ar"))
            })
        );
        assert_eq!(parse("QUIT"), Ok(Command::Quit));
    }

    #[test]
    fn keywords_are_case_insensitive_and_spacing_is_free() {
        assert_eq!(
            parse("  describe\tFlow   Time.Flows.Unix.AR "),
            Ok(Command::DescribeFlow(flow("time.flows.unix.ar")))
        );
        assert_eq!(
            parse("read flow a.b from 42 count 3 follow"),
            Ok(Command::ReadFlow {
                flow: flow("a.b"),
                start: Start::Sequence(42),
                count: Some(3),
                follow: true,
                sequences: false
            })
        );
        assert_eq!(
            parse("create flow a.b public max-age 60"),
            Ok(Command::CreateFlow {
                flow: flow("a.b"),
                options: FlowOptions {
                    public: Some(true),
                    max_age_secs: Some(60),
                    ..FlowOptions::default()
                }
            })
        );
        assert_eq!(
            parse("grant bob write on example.com"),
            Ok(Command::Grant {
                user: "bob".into(),
                right: Right::Write,
                namespace: NamespaceName::parse("example.com").expect("valid")
            })
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse(""), Err(SyntaxError::Empty));
        assert!(matches!(parse("FROB"), Err(SyntaxError::Unknown(v)) if v == "FROB"));
        assert!(
            matches!(parse("CREATE TABLE x"), Err(SyntaxError::Unknown(v)) if v == "CREATE TABLE")
        );
        assert!(
            matches!(parse("CREATE FLOW"), Err(SyntaxError::Usage(u)) if u.starts_with("CREATE FLOW <fqdn>"))
        );
        assert!(matches!(
            parse("CREATE FLOW bad_name.x"),
            Err(SyntaxError::Name(_))
        ));
        assert!(matches!(
            parse("READ FLOW a.b COUNT many"),
            Err(SyntaxError::Value { what: "count", .. })
        ));
        assert!(matches!(
            parse("AUTHENTICATE CRAM-MD5"),
            Err(SyntaxError::Value {
                what: "mechanism",
                ..
            })
        ));
        assert!(matches!(
            parse("DELETE PROCESSOR Bad!"),
            Err(SyntaxError::Value { .. })
        ));
        assert_eq!(
            parse(&"x".repeat(MAX_COMMAND_LINE + 1)),
            Err(SyntaxError::TooLong)
        );
    }

    #[test]
    fn only_session_commands_before_auth() {
        assert!(parse("NOOP").expect("ok").allowed_before_auth());
        assert!(parse("STARTTLS").expect("ok").allowed_before_auth());
        assert!(!parse("LIST FLOWS").expect("ok").allowed_before_auth());
    }

    /// A bounded, deterministic version of the fuzz target (`fuzz/`): lines
    /// built from command words, names, numbers and stray bytes never make
    /// the parser panic, and what it accepts renders back to a command.
    #[test]
    fn random_lines_never_panic() {
        const WORDS: &[&str] = &[
            "CREATE",
            "flow",
            "NAMESPACE",
            "describe",
            "LIST",
            "FLOWS",
            "READ",
            "WRITE",
            "FROM",
            "COUNT",
            "FOLLOW",
            "START",
            "SUBSCRIBE",
            "LOCAL",
            "GRANT",
            "ON",
            "READ",
            "ADMIN",
            "AUTHENTICATE",
            "PLAIN",
            "a.b",
            "x.example.com",
            "-1",
            "18446744073709551616",
            "0",
            "é",
            "\t",
            "..",
            "bad_name.x",
            "PROCESSOR",
            "p-1",
            "MAX-AGE",
            "PUBLIC",
            "REVOKE",
            "STOP",
            "SUBSCRIPTION",
            "PUT",
            "COMPONENT",
            "HELP",
            "",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let n = next() % 8;
            let mut line = String::new();
            for _ in 0..n {
                let r = next();
                if r % 11 == 0 {
                    line.push(char::from_u32((r >> 8) as u32 % 0x2FF).unwrap_or('?'));
                } else {
                    line.push_str(WORDS[(r >> 8) as usize % WORDS.len()]);
                }
                line.push(if r % 5 == 0 { '\t' } else { ' ' });
            }
            if let Ok(command) = parse(&line) {
                assert_eq!(parse(&command.to_string()), Ok(command.clone()), "{line:?}");
                assert_eq!(command.try_encode(), Ok(command.to_string()), "{line:?}");
            }
            let stuffed = crate::framing::stuff(&line);
            assert!(crate::Reply::parse(&stuffed).is_none(), "{line:?}");
            assert_eq!(crate::framing::unstuff(&stuffed), line);
        }
    }

    #[test]
    fn every_usage_line_parses_as_its_own_command_name() {
        for (name, _) in USAGE {
            let err = parse(name);
            assert!(
                !matches!(err, Err(SyntaxError::Unknown(_))),
                "{name} is in USAGE but not parsed: {err:?}"
            );
        }
    }

    #[test]
    fn commands_encode_canonically() {
        let line = |l: &str| parse(l).expect("parses").to_string();
        assert_eq!(
            line("  describe\tFlow   Time.Flows.Unix.AR "),
            "DESCRIBE FLOW time.flows.unix.ar"
        );
        assert_eq!(
            line("read flow flow://A.b. from first count +3 follow from 7 sequences"),
            "READ FLOW a.b FROM 7 COUNT 3 FOLLOW SEQUENCES"
        );
        assert_eq!(line("read flow a.b from end"), "READ FLOW a.b");
        assert_eq!(line("read flow a.b from start"), "READ FLOW a.b FROM START");
        assert_eq!(
            line("update flow a.b duplicate-window 5 max-bytes -1 private max-age 0 public"),
            "UPDATE FLOW a.b PUBLIC MAX-AGE 0 MAX-BYTES -1 DUPLICATE-WINDOW 5"
        );
        assert_eq!(line("create flow a.b"), "CREATE FLOW a.b");
        assert_eq!(line("noop some words"), "NOOP");
        assert_eq!(line("help  read   flow"), "HELP READ FLOW");
        assert_eq!(
            line("authenticate plain AHRlc3QAdGVzdA=="),
            "AUTHENTICATE PLAIN AHRlc3QAdGVzdA=="
        );
        assert_eq!(
            line("grant Bob admin on Example.COM"),
            "GRANT Bob ADMIN ON example.com"
        );
        assert_eq!(
            line("create namespace t.example.com public owner x@y"),
            "CREATE NAMESPACE t.example.com OWNER x@y PUBLIC"
        );
        assert_eq!(line("subscribe a.b local c.d"), "SUBSCRIBE a.b LOCAL c.d");
        assert_eq!(Start::First.to_string(), "START");
        assert_eq!(Start::New.to_string(), "NEW");
        assert_eq!(Start::Sequence(u64::MAX).to_string(), u64::MAX.to_string());
        assert_eq!(Mechanism::Anonymous.to_string(), "ANONYMOUS");
        assert_eq!(DisplayOptions(&FlowOptions::default()).to_string(), "");
        for (name, _) in USAGE {
            if let Ok(command) = parse(name) {
                assert_eq!(command.encode(), *name, "the usage name is canonical");
            }
        }
    }

    #[test]
    fn values_the_grammar_cannot_carry_are_refused_by_try_encode() {
        let spaced = Command::Authenticate {
            mechanism: Mechanism::Plain,
            initial: Some("two words".into()),
        };
        assert!(matches!(
            spaced.try_encode(),
            Err(EncodeError::Value {
                what: "initial response",
                ..
            })
        ));
        assert_ne!(parse(&spaced.to_string()), Ok(spaced));
        let empty = Command::Authenticate {
            mechanism: Mechanism::Plain,
            initial: Some(String::new()),
        };
        assert!(empty.try_encode().is_err());
        assert!(
            Command::Help(Some("read flow".into()))
                .try_encode()
                .is_err()
        );
        assert!(
            Command::Help(Some("READ  FLOW".into()))
                .try_encode()
                .is_err()
        );
        assert!(Command::Help(Some(String::new())).try_encode().is_err());
        assert_eq!(
            Command::Help(Some("READ FLOW".into())).try_encode(),
            Ok("HELP READ FLOW".into())
        );
        let ns = NamespaceName::parse("example.com").expect("valid");
        assert!(
            Command::Revoke {
                user: "a b".into(),
                namespace: ns.clone()
            }
            .try_encode()
            .is_err()
        );
        assert!(
            Command::CreateNamespace {
                namespace: ns,
                owner: Some(String::new()),
                public: false
            }
            .try_encode()
            .is_err()
        );
        assert!(Command::DeleteProcessor("Bad".into()).try_encode().is_err());
        let long = Command::Authenticate {
            mechanism: Mechanism::Plain,
            initial: Some("A".repeat(MAX_COMMAND_LINE)),
        };
        assert!(matches!(long.try_encode(), Err(EncodeError::TooLong(_))));
    }

    #[test]
    fn syntax_errors_have_their_codes() {
        assert_eq!(SyntaxError::Empty.code(), Code::Syntax);
        assert_eq!(SyntaxError::TooLong.code(), Code::Syntax);
        assert_eq!(SyntaxError::Unknown("X".into()).code(), Code::Syntax);
        assert_eq!(
            parse("create flow").map_err(|e| e.reply().to_string()),
            Err(format!(
                "501 usage: {}",
                USAGE
                    .iter()
                    .find(|(n, _)| *n == "CREATE FLOW")
                    .map(|(_, u)| *u)
                    .unwrap_or_default()
            ))
        );
        assert_eq!(
            parse("frob").map_err(|e| e.reply().to_string()),
            Err("500 unknown command `FROB` (try HELP)".into())
        );
    }
}

/// The property: every valid command, in the normal form [`parse`] gives,
/// encodes to a line that parses back to it.
///
/// The generators produce the normal form directly: names go through
/// `FlowName::parse` / `NamespaceName::parse` (so they may be generated in
/// any case, with `flow://` and trailing dots), `HELP` topics are upper-case
/// words joined by one space, initial responses are single words (the
/// grammar splits on white space, so a response holding some cannot be
/// carried: see `values_the_grammar_cannot_carry_are_refused_by_try_encode`),
/// and `READ FLOW`'s default start is `Start::New` whether or not `FROM NEW`
/// was written.
#[cfg(test)]
mod round_trip {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::Union;

    fn label() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-zA-Z0-9]{1,3}",
            1 => "[a-zA-Z0-9][a-zA-Z0-9-]{0,61}[a-zA-Z0-9]",
        ]
    }

    fn dns(min: usize) -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(label(), min..6),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(labels, prefix, dot)| {
                format!(
                    "{}{}{}",
                    if prefix { "flow://" } else { "" },
                    labels.join("."),
                    if dot { "." } else { "" }
                )
            })
    }

    fn flow() -> impl Strategy<Value = FlowName> {
        dns(2).prop_filter_map("over 240 bytes", |s| FlowName::parse(&s).ok())
    }

    fn namespace() -> impl Strategy<Value = NamespaceName> {
        dns(1).prop_filter_map("over 240 bytes", |s| NamespaceName::parse(&s).ok())
    }

    fn user() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._@-]{1,64}"
    }

    fn id() -> impl Strategy<Value = String> {
        "[a-z0-9-]{1,64}"
    }

    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0), Just(u64::MAX), 0..1000u64, any::<u64>()]
    }

    fn integer() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(i64::MIN),
            Just(-1),
            Just(0),
            Just(i64::MAX),
            any::<i64>()
        ]
    }

    fn options() -> impl Strategy<Value = FlowOptions> {
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(number()),
            proptest::option::of(integer()),
            proptest::option::of(number()),
        )
            .prop_map(|(public, max_age_secs, max_bytes, duplicate_window_secs)| {
                FlowOptions {
                    public,
                    max_age_secs,
                    max_bytes,
                    duplicate_window_secs,
                }
            })
    }

    fn start() -> impl Strategy<Value = Start> {
        prop_oneof![
            Just(Start::First),
            Just(Start::New),
            number().prop_map(Start::Sequence)
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(USAGE).prop_map(|(name, _)| name.to_owned()),
            "[A-Z0-9É-]{1,12}( [A-Z0-9É.-]{1,12}){0,3}",
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        let mechanism = prop_oneof![Just(Mechanism::Plain), Just(Mechanism::Anonymous)];
        let right = proptest::sample::select(Right::ALL.to_vec());
        let arms: Vec<BoxedStrategy<Command>> = vec![
            (mechanism, proptest::option::of("[!-~é€😀]{1,200}"))
                .prop_map(|(mechanism, initial)| Command::Authenticate { mechanism, initial })
                .boxed(),
            Just(Command::StartTls).boxed(),
            Just(Command::Capabilities).boxed(),
            proptest::option::of(topic())
                .prop_map(Command::Help)
                .boxed(),
            Just(Command::Noop).boxed(),
            Just(Command::Quit).boxed(),
            (namespace(), proptest::option::of(user()), any::<bool>())
                .prop_map(|(namespace, owner, public)| Command::CreateNamespace {
                    namespace,
                    owner,
                    public,
                })
                .boxed(),
            namespace().prop_map(Command::DescribeNamespace).boxed(),
            namespace().prop_map(Command::DeleteNamespace).boxed(),
            proptest::option::of(namespace())
                .prop_map(Command::ListNamespaces)
                .boxed(),
            (user(), right, namespace())
                .prop_map(|(user, right, namespace)| Command::Grant {
                    user,
                    right,
                    namespace,
                })
                .boxed(),
            (user(), namespace())
                .prop_map(|(user, namespace)| Command::Revoke { user, namespace })
                .boxed(),
            (flow(), options())
                .prop_map(|(flow, options)| Command::CreateFlow { flow, options })
                .boxed(),
            flow().prop_map(Command::DescribeFlow).boxed(),
            (flow(), options())
                .prop_map(|(flow, options)| Command::UpdateFlow { flow, options })
                .boxed(),
            flow().prop_map(Command::DeleteFlow).boxed(),
            proptest::option::of(namespace())
                .prop_map(Command::ListFlows)
                .boxed(),
            (
                flow(),
                start(),
                proptest::option::of(number()),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(
                    |(flow, start, count, follow, sequences)| Command::ReadFlow {
                        flow,
                        start,
                        count,
                        follow,
                        sequences,
                    },
                )
                .boxed(),
            flow().prop_map(Command::WriteFlow).boxed(),
            (flow(), proptest::option::of(flow()))
                .prop_map(|(remote, local)| Command::Subscribe { remote, local })
                .boxed(),
            flow().prop_map(Command::Unsubscribe).boxed(),
            Just(Command::ListSubscriptions).boxed(),
            flow().prop_map(Command::ListSubscribers).boxed(),
            flow().prop_map(Command::RemoveSubscriber).boxed(),
            flow().prop_map(Command::PauseSubscription).boxed(),
            flow().prop_map(Command::ResumeSubscription).boxed(),
            flow().prop_map(Command::StopSubscription).boxed(),
            Just(Command::PutComponent).boxed(),
            id().prop_map(Command::CreateProcessor).boxed(),
            id().prop_map(Command::UpdateProcessor).boxed(),
            id().prop_map(Command::DescribeProcessor).boxed(),
            Just(Command::ListProcessors).boxed(),
            Just(Command::ListAgents).boxed(),
            id().prop_map(Command::PauseProcessor).boxed(),
            id().prop_map(Command::ResumeProcessor).boxed(),
            id().prop_map(Command::DeleteProcessor).boxed(),
        ];
        Union::new(arms)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn every_valid_command_round_trips(command in command()) {
            let line = command.try_encode();
            prop_assert_eq!(line.as_ref().ok(), Some(&command.to_string()));
            prop_assert_eq!(parse(&command.to_string()), Ok(command.clone()));
            // Any spacing and case the grammar allows reads the same.
            let loose = command.to_string().replace(' ', " \t ").to_ascii_lowercase();
            if !matches!(command, Command::Authenticate { initial: Some(_), .. } | Command::Grant { .. } | Command::Revoke { .. } | Command::CreateNamespace { owner: Some(_), .. }) {
                prop_assert_eq!(parse(&loose), Ok(command));
            }
        }
    }
}
