//! FNAP command lines: the grammar of what a client may send, parsed into
//! [`Command`]. Keywords are case-insensitive; arguments are separated by
//! spaces or tabs. Nothing here touches the network, so the parser is what
//! the fuzz target (`fuzz/`) exercises.

use crate::broker::{FlowName, NameError, NamespaceName};
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

/// A right a namespace owner grants to another account.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Read flows and subscribe to them.
    Read,
    /// Write events, create and delete flows and processors.
    Write,
    /// Everything the owner can do, including granting.
    Admin,
}

impl Right {
    fn parse(word: &str) -> Option<Right> {
        match word.to_ascii_uppercase().as_str() {
            "READ" => Some(Right::Read),
            "WRITE" => Some(Right::Write),
            "ADMIN" => Some(Right::Admin),
            _ => None,
        }
    }

    /// Whether holding `self` allows what `needed` allows.
    pub fn covers(self, needed: Right) -> bool {
        self >= needed
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        })
    }
}

/// Where `READ FLOW` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first stored event.
    First,
    /// Only events written from now on.
    New,
    /// The event with this stream sequence (or the next one still stored).
    Sequence(u64),
}

/// Retention and access options of `CREATE FLOW` / `UPDATE FLOW`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowOptions {
    pub public: Option<bool>,
    pub max_age_secs: Option<u64>,
    pub max_bytes: Option<i64>,
    pub duplicate_window_secs: Option<u64>,
}

/// Every FNAP command (figure 5 of the draft, plus session commands and the
/// processor commands behind `flow replicate|collect|distribute|signal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Authenticate {
        mechanism: Mechanism,
        /// SASL initial response given on the same line (RFC 4954 style).
        initial: Option<String>,
    },
    StartTls,
    Capabilities,
    Help(Option<String>),
    Noop,
    Quit,

    CreateNamespace {
        namespace: NamespaceName,
        owner: Option<String>,
        public: bool,
    },
    DescribeNamespace(NamespaceName),
    DeleteNamespace(NamespaceName),
    /// Every namespace, or the children of one.
    ListNamespaces(Option<NamespaceName>),
    Grant {
        user: String,
        right: Right,
        namespace: NamespaceName,
    },
    Revoke {
        user: String,
        namespace: NamespaceName,
    },

    CreateFlow {
        flow: FlowName,
        options: FlowOptions,
    },
    DescribeFlow(FlowName),
    UpdateFlow {
        flow: FlowName,
        options: FlowOptions,
    },
    DeleteFlow(FlowName),
    /// Every flow the session may see, or those of one namespace.
    ListFlows(Option<NamespaceName>),
    ReadFlow {
        flow: FlowName,
        start: Start,
        count: Option<u64>,
        follow: bool,
        /// Each data line is `<stream-sequence> <event>` (for relays that
        /// resume where they stopped).
        sequences: bool,
    },
    WriteFlow(FlowName),

    Subscribe {
        remote: FlowName,
        local: Option<FlowName>,
    },
    /// Cancels a subscription copy this session's account holds.
    Unsubscribe(FlowName),
    ListSubscriptions,
    ListSubscribers(FlowName),
    RemoveSubscriber(FlowName),
    PauseSubscription(FlowName),
    ResumeSubscription(FlowName),
    StopSubscription(FlowName),

    /// Uploads a component (base64 data block); replies with its digest.
    PutComponent,
    /// Declares a processor from a `key=value` data block.
    CreateProcessor(String),
    UpdateProcessor(String),
    DescribeProcessor(String),
    ListProcessors,
    /// The participant's live hosts on this broker, with their load.
    ListAgents,
    PauseProcessor(String),
    ResumeProcessor(String),
    DeleteProcessor(String),
}

impl Command {
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
    #[error("empty command")]
    Empty,
    #[error("command line longer than {MAX_COMMAND_LINE} bytes")]
    TooLong,
    #[error("unknown command `{0}` (try HELP)")]
    Unknown(String),
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("bad {what} `{value}`: {reason}")]
    Value {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
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
            crate::engine::spec::check_id(id).map_err(|_| SyntaxError::Value {
                what: "processor id",
                value: id.chars().take(80).collect(),
                reason: "use 1 to 64 lower-case letters, digits and `-`",
            })?;
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
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
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
            let _ = parse(&line);
            let stuffed = crate::fnap::framing::stuff(&line);
            assert!(crate::fnap::Reply::parse(&stuffed).is_none(), "{line:?}");
            assert_eq!(crate::fnap::framing::unstuff(&stuffed), line);
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
}
