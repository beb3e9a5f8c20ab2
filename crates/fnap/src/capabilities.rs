//! The data block of `CAPABILITIES`, typed: what a host offers on this
//! session (`docs/fnap.md`, section 5).
//!
//! ```text
//! FNAP 1
//! AUTH PLAIN ANONYMOUS
//! STARTTLS
//! PROCESSORS bridge collector distributor signal
//! SUBSCRIBE bridge
//! READ FOLLOW
//! BROKER nats-jetstream nats://127.0.0.1:4222,nats://127.0.0.1:4223
//! MAX-LINE 1048576
//! MAX-COMPONENT 33554432
//! ```
//!
//! Each line is a keyword and its words. A client reads the lines it knows
//! and keeps the others ([`Capabilities::other`]), so that a host may offer
//! more than this crate knows of.

use crate::data::DataError;

/// A broker a host names for its flows (`BROKER <type> <url>,<url>...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerOffer {
    /// The broker type, `nats-jetstream` for flowd.
    pub kind: String,
    /// The URLs clients reach it at.
    pub urls: Vec<String>,
}

/// What `CAPABILITIES` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The protocol version (`FNAP 1`).
    pub version: Option<u32>,
    /// The SASL mechanisms this session accepts (`AUTH ...`), as sent.
    pub auth: Vec<String>,
    /// The session can be upgraded with `STARTTLS`.
    pub starttls: bool,
    /// The session is TLS already.
    pub tls: bool,
    /// The processor kinds the host runs (`PROCESSORS ...`).
    pub processors: Vec<String>,
    /// How the host carries subscriptions (`SUBSCRIBE ...`).
    pub subscribe: Vec<String>,
    /// What `READ FLOW` can do beyond reading stored events (`READ FOLLOW`).
    pub read: Vec<String>,
    /// The brokers the host names (`BROKER ...`), in order.
    pub brokers: Vec<BrokerOffer>,
    /// The longest line the host reads (`MAX-LINE`).
    pub max_line: Option<usize>,
    /// The largest component `PUT COMPONENT` takes (`MAX-COMPONENT`).
    pub max_component: Option<usize>,
    /// Lines this crate does not know, in order.
    pub other: Vec<String>,
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, DataError> {
    value.parse().map_err(|_| DataError::BadValue {
        key: key.to_owned(),
        value: value.chars().take(80).collect(),
        reason: "not a number".into(),
    })
}

fn words(rest: &str) -> Vec<String> {
    rest.split_whitespace().map(str::to_owned).collect()
}

impl Capabilities {
    /// Reads the block's lines. A known keyword with a value that is not
    /// what it needs is an error; unknown lines are kept in
    /// [`Capabilities::other`].
    pub fn from_lines<S: AsRef<str>>(lines: &[S]) -> Result<Capabilities, DataError> {
        let mut caps = Capabilities::default();
        for line in lines {
            let line = line.as_ref().trim();
            let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "FNAP" => caps.version = Some(number("FNAP", rest)?),
                "AUTH" => caps.auth = words(rest),
                "STARTTLS" if rest.is_empty() => caps.starttls = true,
                "TLS" if rest.is_empty() => caps.tls = true,
                "PROCESSORS" => caps.processors = words(rest),
                "SUBSCRIBE" => caps.subscribe = words(rest),
                "READ" => caps.read = words(rest),
                "BROKER" => {
                    let (kind, urls) = rest.split_once(' ').unwrap_or((rest, ""));
                    if kind.is_empty() {
                        return Err(DataError::Missing("BROKER <type>"));
                    }
                    caps.brokers.push(BrokerOffer {
                        kind: kind.to_owned(),
                        urls: urls
                            .split(',')
                            .map(str::trim)
                            .filter(|u| !u.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    });
                }
                "MAX-LINE" => caps.max_line = Some(number("MAX-LINE", rest)?),
                "MAX-COMPONENT" => caps.max_component = Some(number("MAX-COMPONENT", rest)?),
                _ if line.is_empty() => {}
                _ => caps.other.push(line.to_owned()),
            }
        }
        Ok(caps)
    }

    /// The block's lines, in the order flowd sends them.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(version) = self.version {
            lines.push(format!("FNAP {version}"));
        }
        let join = |keyword: &str, words: &[String]| {
            std::iter::once(keyword.to_owned())
                .chain(words.iter().cloned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        lines.push(join("AUTH", &self.auth));
        if self.starttls {
            lines.push("STARTTLS".into());
        }
        if self.tls {
            lines.push("TLS".into());
        }
        if !self.processors.is_empty() {
            lines.push(join("PROCESSORS", &self.processors));
        }
        if !self.subscribe.is_empty() {
            lines.push(join("SUBSCRIBE", &self.subscribe));
        }
        if !self.read.is_empty() {
            lines.push(join("READ", &self.read));
        }
        for broker in &self.brokers {
            lines.push(format!("BROKER {} {}", broker.kind, broker.urls.join(",")));
        }
        lines.extend(self.other.iter().cloned());
        if let Some(max) = self.max_line {
            lines.push(format!("MAX-LINE {max}"));
        }
        if let Some(max) = self.max_component {
            lines.push(format!("MAX-COMPONENT {max}"));
        }
        lines
    }

    /// Whether the session accepts this SASL mechanism.
    pub fn offers_auth(&self, mechanism: &str) -> bool {
        self.auth.iter().any(|m| m.eq_ignore_ascii_case(mechanism))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &[&str] = &[
        "FNAP 1",
        "AUTH PLAIN ANONYMOUS",
        "STARTTLS",
        "PROCESSORS bridge collector distributor signal",
        "SUBSCRIBE bridge",
        "READ FOLLOW",
        "BROKER nats-jetstream nats://127.0.0.1:4222,nats://127.0.0.1:4223",
        "X-FUTURE something new",
        "MAX-LINE 1048576",
        "MAX-COMPONENT 33554432",
    ];

    #[test]
    fn a_block_reads_and_writes_back_line_for_line() {
        let caps = Capabilities::from_lines(BLOCK).expect("reads");
        assert_eq!(caps.version, Some(1));
        assert!(caps.offers_auth("plain") && caps.offers_auth("ANONYMOUS"));
        assert!(!caps.offers_auth("SCRAM-SHA-256"));
        assert!(caps.starttls && !caps.tls);
        assert_eq!(caps.processors.len(), 4);
        assert_eq!(
            caps.brokers,
            vec![BrokerOffer {
                kind: "nats-jetstream".into(),
                urls: vec![
                    "nats://127.0.0.1:4222".into(),
                    "nats://127.0.0.1:4223".into()
                ],
            }]
        );
        assert_eq!(caps.max_line, Some(1 << 20));
        assert_eq!(caps.max_component, Some(32 << 20));
        assert_eq!(caps.other, vec!["X-FUTURE something new".to_owned()]);
        assert_eq!(caps.lines(), BLOCK);
    }

    #[test]
    fn known_keywords_with_bad_values_are_errors() {
        for bad in ["MAX-LINE lots", "FNAP one", "MAX-COMPONENT -1", "BROKER"] {
            assert!(
                Capabilities::from_lines(&[bad]).is_err(),
                "{bad} should not read"
            );
        }
        // An empty AUTH line is an AUTH with no mechanism.
        let caps = Capabilities::from_lines(&["AUTH"]).expect("reads");
        assert!(caps.auth.is_empty());
    }
}
