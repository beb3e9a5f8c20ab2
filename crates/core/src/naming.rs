//! How a flow's name maps onto JetStream.
//!
//! A flow is named by its FQDN (`created.invoice.finance.example.com`, URI
//! `flow://created.invoice.finance.example.com`). Its events live in one
//! stream, `FLOW_<fqdn with '.' as '_'>`, bound to one subject,
//! `flow.<fqdn>`. Flow names are DNS names (lower-case letters, digits and
//! `-` in dot-separated labels), so the mapping is one-to-one: `_` never
//! occurs in a name. Stream names are limited to 255 bytes, hence the
//! 240-byte limit on flow names.

use std::fmt;

/// Longest flow FQDN accepted (the stream name adds 5 bytes; JetStream stores
/// a stream in a directory of that name, at most 255 bytes).
pub const MAX_FLOW_NAME: usize = 240;

/// The JetStream API prefix in a subscriber's broker account: the host
/// imports its own JetStream API there under this prefix (the subscriber
/// account has no JetStream of its own, and the server would answer
/// `$JS.API` requests itself). Written in the `SUBSCRIBE` block as
/// `broker-api=`.
pub const SUBSCRIBER_API_PREFIX: &str = "FLOWD.API";

/// JetStream's own API prefix, taken when a `SUBSCRIBE` block names none.
pub const JETSTREAM_API_PREFIX: &str = "$JS.API";

/// A validated flow name (its FQDN, lower case).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct FlowName(String);

/// Why a flow name is not valid.
// The variants' `#[error]` texts are their documentation.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name `{0}` is longer than {MAX_FLOW_NAME} bytes")]
    TooLong(String),
    #[error("`{0}` needs at least two labels (flow and namespace), like `orders.example.com`")]
    TooFewLabels(String),
    #[error("name `{name}`: label `{label}` {reason}")]
    BadLabel {
        name: String,
        label: String,
        reason: &'static str,
    },
}

impl FlowName {
    /// Parses `created.invoice.finance.example.com` or
    /// `flow://created.invoice.finance.example.com` (case-insensitive, a
    /// trailing dot is ignored).
    pub fn parse(text: &str) -> Result<FlowName, NameError> {
        dns_name(text, 2).map(FlowName)
    }

    /// The namespaces this flow could belong to, nearest first: for
    /// `a.b.example.com`, `b.example.com`, then `example.com`, then `com`.
    pub fn parents(&self) -> impl Iterator<Item = NamespaceName> + '_ {
        self.0
            .match_indices('.')
            .map(|(i, _)| NamespaceName(self.0[i + 1..].to_owned()))
    }

    /// The name, lower-case, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The flow's URI, `flow://<fqdn>`.
    pub fn uri(&self) -> String {
        format!("flow://{}", self.0)
    }

    /// The JetStream stream holding the flow.
    pub fn stream(&self) -> String {
        format!("FLOW_{}", self.0.replace('.', "_"))
    }

    /// The subject the flow's events are published on.
    pub fn subject(&self) -> String {
        format!("flow.{}", self.0)
    }

    /// The flow named by a stream name, if it is a flow stream.
    pub fn from_stream(stream: &str) -> Option<FlowName> {
        let rest = stream.strip_prefix("FLOW_")?;
        FlowName::parse(&rest.replace('_', ".")).ok()
    }
}

/// Validates a DNS name of at least `min_labels` labels; returns it in lower
/// case without a `flow://` prefix or trailing dot.
fn dns_name(text: &str, min_labels: usize) -> Result<String, NameError> {
    let trimmed = text.trim();
    let bare = trimmed.strip_prefix("flow://").unwrap_or(trimmed);
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_FLOW_NAME {
        return Err(NameError::TooLong(name));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < min_labels {
        return Err(NameError::TooFewLabels(name));
    }
    for label in &labels {
        let reason = if label.is_empty() {
            Some("is empty")
        } else if label.len() > 63 {
            Some("is longer than 63 characters")
        } else if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Some("may hold only letters, digits and `-`")
        } else if label.starts_with('-') || label.ends_with('-') {
            Some("may not start or end with `-`")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(NameError::BadLabel {
                name: name.clone(),
                label: (*label).to_owned(),
                reason,
            });
        }
    }
    Ok(name)
}

/// A flow namespace (`finance.example.com`): a DNS name under which flows
/// are named. Namespaces nest like DNS zones.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct NamespaceName(String);

impl NamespaceName {
    /// Parses a namespace: a DNS name of one label or more, lower-cased.
    pub fn parse(text: &str) -> Result<NamespaceName, NameError> {
        dns_name(text, 1).map(NamespaceName)
    }

    /// The name, lower-case, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` (a flow or namespace FQDN) lies strictly below this
    /// namespace.
    pub fn is_above(&self, name: &str) -> bool {
        name.len() > self.0.len() + 1
            && name.ends_with(self.0.as_str())
            && name.as_bytes()[name.len() - self.0.len() - 1] == b'.'
    }

    /// The enclosing namespaces, nearest first.
    pub fn parents(&self) -> impl Iterator<Item = NamespaceName> + '_ {
        self.0
            .match_indices('.')
            .map(|(i, _)| NamespaceName(self.0[i + 1..].to_owned()))
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl std::str::FromStr for NamespaceName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NamespaceName::parse(s)
    }
}

impl TryFrom<String> for NamespaceName {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        NamespaceName::parse(&s)
    }
}

impl From<NamespaceName> for String {
    fn from(n: NamespaceName) -> String {
        n.0
    }
}

impl fmt::Display for FlowName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl std::str::FromStr for FlowName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FlowName::parse(s)
    }
}

impl TryFrom<String> for FlowName {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        FlowName::parse(&s)
    }
}

impl From<FlowName> for String {
    fn from(f: FlowName) -> String {
        f.0
    }
}

/// Whether `user` is an account name: 1 to 64 of letters, digits, `.`, `_`,
/// `-` and `@` (it is a key of the accounts file and of grants).
pub fn is_account_name(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Whether `id` is a processor id: 1 to 64 lower-case letters, digits and
/// `-` (it names KV keys and JetStream consumers).
pub fn is_processor_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_one_to_one() {
        let f = FlowName::parse("flow://Created.Invoice.finance.example.com.").expect("valid");
        assert_eq!(f.as_str(), "created.invoice.finance.example.com");
        assert_eq!(f.stream(), "FLOW_created_invoice_finance_example_com");
        assert_eq!(f.subject(), "flow.created.invoice.finance.example.com");
        assert_eq!(FlowName::from_stream(&f.stream()), Some(f));
        assert_eq!(FlowName::from_stream("KV_flowd"), None);
    }

    #[test]
    fn namespaces_nest() {
        let ns = NamespaceName::parse("Example.COM").expect("valid");
        assert_eq!(ns.as_str(), "example.com");
        assert!(ns.is_above("a.example.com"));
        assert!(!ns.is_above("example.com"));
        assert!(!ns.is_above("aexample.com"));
        let f = FlowName::parse("a.b.example.com").expect("valid");
        let parents: Vec<String> = f.parents().map(String::from).collect();
        assert_eq!(parents, ["b.example.com", "example.com", "com"]);
        assert!(NamespaceName::parse("localhost").is_ok());
        assert!(NamespaceName::parse("bad_ns").is_err());
    }

    #[test]
    fn bad_names_are_refused_precisely() {
        assert_eq!(FlowName::parse(""), Err(NameError::Empty));
        assert!(matches!(
            FlowName::parse("single"),
            Err(NameError::TooFewLabels(_))
        ));
        let err = FlowName::parse("a_b.example.com").expect_err("underscore");
        assert!(err.to_string().contains("`a_b`"), "{err}");
        assert!(FlowName::parse("a..b").is_err());
        assert!(FlowName::parse("-a.b").is_err());
        assert!(FlowName::parse(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(matches!(
            FlowName::parse(&"a.".repeat(130)),
            Err(NameError::TooLong(_))
        ));
    }
}
