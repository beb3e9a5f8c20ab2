//! Typed data blocks and outcomes: what the lines of a data block and the
//! texts of some replies mean, so that neither side formats or scrapes them
//! by hand.
//!
//! - [`KeyValues`]: the ordered `key=value` blocks of `DESCRIBE FLOW`,
//!   `DESCRIBE NAMESPACE`, `DESCRIBE PROCESSOR` and of the processor
//!   declarations of `CREATE` / `UPDATE PROCESSOR`;
//! - [`SubscribeReply`] and [`BrokerCredentials`]: the data block of
//!   `SUBSCRIBE` (the copy's name, then the broker credentials a host may
//!   issue), line for line as flowd has always sent it;
//! - outcomes, each a [`Outcome`] from and to its reply:
//!   [`Written`] and [`WriteFailed`] (`WRITE FLOW`), [`ReadDone`]
//!   (`READ FLOW`), [`ComponentPut`] (`PUT COMPONENT`),
//!   [`ProcessorUpdated`] (`UPDATE PROCESSOR`); and [`SequencedEvent`], a
//!   data line of `READ FLOW ... SEQUENCES`.
//!
//! The lines here are values: stuffing them for the wire is
//! [`framing`](crate::framing)'s job.

use crate::reply::{Code, Reply};
use flowd_core::FlowName;
use std::fmt;

/// Longest key of a `key=value` line, in bytes.
pub const MAX_KEY: usize = 256;

/// Why a data block or a reply text does not hold what it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// A line that is not `key=value` (cut to 80 characters).
    #[error("not key=value: {0}")]
    NotKeyValue(String),
    /// A key that is empty, over [`MAX_KEY`] bytes, holds `=`, a control
    /// character, or starts or ends with white space.
    #[error(
        "bad key `{0}`: use 1 to 256 bytes, no `=`, no control character, no surrounding space"
    )]
    BadKey(String),
    /// A required key is missing.
    #[error("the block lacks `{0}`")]
    Missing(&'static str),
    /// A key that may appear once appears again.
    #[error("`{0}` appears twice")]
    Duplicate(String),
    /// A value that is not what its key needs.
    #[error("`{key}={value}`: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// The value (cut to 80 characters).
        value: String,
        /// What it should be.
        reason: String,
    },
    /// The `SUBSCRIBE` block does not start with a flow name.
    #[error("the reply names no subscription flow: {0}")]
    NoCopy(String),
    /// A broker type this crate does not know.
    #[error("unsupported broker type `{0}` (this host speaks nats)")]
    BrokerType(String),
    /// A reply whose text does not say what the command's outcome says.
    #[error("unexpected reply `{0}`")]
    Reply(String),
}

fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}

fn bad_value(key: &str, value: &str, reason: impl Into<String>) -> DataError {
    DataError::BadValue {
        key: key.to_owned(),
        value: cut(value),
        reason: reason.into(),
    }
}

/// Whether `key` may be the key of a `key=value` line that decodes back to
/// it.
pub fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY
        && key.trim() == key
        && !key.contains('=')
        && !key.chars().any(char::is_control)
}

/// An ordered list of `key=value` pairs; a key may repeat (`grant=`,
/// `flow=`, `input=`, ...). Values are the rest of the line after the first
/// `=`: they may hold `=` and spaces, never a line break.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValues {
    pairs: Vec<(String, String)>,
}

impl KeyValues {
    /// An empty block.
    pub fn new() -> KeyValues {
        KeyValues::default()
    }

    /// Decodes a block of which every line is `key=value` (the `DESCRIBE`
    /// replies). Keys are trimmed of surrounding white space, values kept
    /// as they are.
    pub fn decode<S: AsRef<str>>(lines: &[S]) -> Result<KeyValues, DataError> {
        let mut kv = KeyValues::new();
        for line in lines {
            kv.decode_line(line.as_ref())?;
        }
        Ok(kv)
    }

    /// Decodes a processor declaration (`CREATE` / `UPDATE PROCESSOR`):
    /// as [`KeyValues::decode`], but blank lines and lines starting with
    /// `#` are skipped.
    pub fn decode_request<S: AsRef<str>>(lines: &[S]) -> Result<KeyValues, DataError> {
        let mut kv = KeyValues::new();
        for line in lines {
            let line = line.as_ref();
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            kv.decode_line(line)?;
        }
        Ok(kv)
    }

    fn decode_line(&mut self, line: &str) -> Result<(), DataError> {
        let (key, value) =
            crate::framing::key_value(line).ok_or_else(|| DataError::NotKeyValue(cut(line)))?;
        if !is_key(key) {
            return Err(DataError::BadKey(cut(key)));
        }
        self.pairs.push((key.to_owned(), value.to_owned()));
        Ok(())
    }

    /// The lines, `key=value` each, in order.
    pub fn encode(&self) -> Vec<String> {
        self.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Appends a pair. Any line break in the value becomes a space (as a
    /// server folds every data line); a key that [`is_key`] refuses is an
    /// error.
    pub fn push(
        &mut self,
        key: impl Into<String>,
        value: impl fmt::Display,
    ) -> Result<(), DataError> {
        let key = key.into();
        if !is_key(&key) {
            return Err(DataError::BadKey(cut(&key)));
        }
        let value = value.to_string().replace(['\r', '\n'], " ");
        self.pairs.push((key, value));
        Ok(())
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, which must be there, parsed.
    pub fn parse<T: std::str::FromStr>(&self, key: &'static str) -> Result<T, DataError> {
        let value = self.get(key).ok_or(DataError::Missing(key))?;
        value.parse().map_err(|_| {
            bad_value(
                key,
                value,
                format!(
                    "not a {}",
                    std::any::type_name::<T>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("value")
                ),
            )
        })
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl<'a> IntoIterator for &'a KeyValues {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        fn refs(pair: &(String, String)) -> (&str, &str) {
            (pair.0.as_str(), pair.1.as_str())
        }
        self.pairs
            .iter()
            .map(refs as fn(&'a (String, String)) -> (&'a str, &'a str))
    }
}

// ---------------------------------------------------------------------------
// SUBSCRIBE

/// The JetStream API prefix a flowd host gives its subscribers.
pub use flowd_core::naming::SUBSCRIBER_API_PREFIX as BROKER_API_PREFIX;

/// The JetStream API prefix when an issuing host names none.
pub use flowd_core::naming::JETSTREAM_API_PREFIX as DEFAULT_BROKER_API_PREFIX;

/// The only broker type: NATS JetStream.
pub const BROKER_TYPE: &str = "nats";

/// Longest password, nkey seed, user, consumer or inbox accepted, in bytes
/// (flowd sends 64-byte passwords, 56-byte account keys and 58-byte seeds).
pub const MAX_CREDENTIAL: usize = 256;

/// Longest user JWT accepted, in bytes.
pub const MAX_JWT: usize = 16 << 10;

/// How a subscriber authenticates to the issuing broker.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerAuth {
    /// `broker-password=`: a user and password of the broker (embedded
    /// nats-server).
    Password(String),
    /// `broker-jwt=` and `broker-seed=`: a user JWT and its nkey seed (an
    /// operator-run NATS; the user names the subscriber's account).
    Jwt {
        /// The user JWT.
        jwt: String,
        /// The nkey seed that signs the server's nonce.
        seed: String,
    },
}

impl fmt::Debug for BrokerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerAuth::Password(_) => f.write_str("Password(<hidden>)"),
            BrokerAuth::Jwt { .. } => f.write_str("Jwt { jwt: <token>, seed: <hidden> }"),
        }
    }
}

/// What a subscriber needs to pull its copy from the issuing broker: the
/// `broker-*` lines of a `SUBSCRIBE` reply. The broker's address is not
/// there: the subscriber finds it in DNS (`_queue._flow._tcp.<flow>` SRV).
///
/// ```text
/// broker-type=nats
/// broker-user=sub-ksdj898
/// broker-password=...                (or broker-jwt=... and broker-seed=...)
/// broker-stream=FLOW_ksdj898_time_flows_unix_ar
/// broker-consumer=subscriber
/// broker-inbox=_INBOX_ksdj898
/// broker-api=FLOWD.API
/// broker-tls=required                (only when the broker requires TLS)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerCredentials {
    /// The broker user (or, with a JWT, the subscriber's account).
    pub user: String,
    /// How it authenticates.
    pub auth: BrokerAuth,
    /// The stream of the copy (`FLOW_<copy with _>`).
    pub stream: String,
    /// The durable consumer to pull through.
    pub consumer: String,
    /// The inbox prefix the subscriber's client must use.
    pub inbox: String,
    /// The JetStream API prefix the subscriber's client must use:
    /// [`BROKER_API_PREFIX`] or [`DEFAULT_BROKER_API_PREFIX`].
    pub api_prefix: String,
    /// The broker's client port requires TLS.
    pub tls: bool,
}

/// A plain name: 1 to 64 ASCII letters, digits, `_` and `-` (no subject
/// wildcard or separator).
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A secret or token: bounded, printable ASCII, no space.
fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

impl BrokerCredentials {
    /// The `broker-*` lines, exactly as flowd has always sent them.
    pub fn encode(&self) -> Vec<String> {
        let mut lines = vec![
            format!("broker-type={BROKER_TYPE}"),
            format!("broker-user={}", self.user),
        ];
        match &self.auth {
            BrokerAuth::Jwt { jwt, seed } => {
                lines.push(format!("broker-jwt={jwt}"));
                lines.push(format!("broker-seed={seed}"));
            }
            BrokerAuth::Password(password) => lines.push(format!("broker-password={password}")),
        }
        lines.extend([
            format!("broker-stream={}", self.stream),
            format!("broker-consumer={}", self.consumer),
            format!("broker-inbox={}", self.inbox),
            format!("broker-api={}", self.api_prefix),
        ]);
        if self.tls {
            lines.push("broker-tls=required".to_owned());
        }
        lines
    }

    /// Reads the `broker-*` pairs of a block: `None` when it has no
    /// `broker-type` (the host issues no credentials: the subscriber reads
    /// its copy over FNAP). Other keys are ignored; a `broker-*` key may
    /// appear once. A `broker-jwt` needs its `broker-seed`, else
    /// `broker-password` is needed; a missing `broker-api` is
    /// [`DEFAULT_BROKER_API_PREFIX`]. Validated with
    /// [`BrokerCredentials::check`].
    pub fn decode(kv: &KeyValues) -> Result<Option<BrokerCredentials>, DataError> {
        let mut seen = std::collections::HashSet::new();
        for (key, _) in kv {
            if key.starts_with("broker-") && !seen.insert(key) {
                return Err(DataError::Duplicate(cut(key)));
            }
        }
        let Some(kind) = kv.get("broker-type") else {
            return Ok(None);
        };
        if kind != BROKER_TYPE {
            return Err(DataError::BrokerType(cut(kind)));
        }
        let tls = match kv.get("broker-tls") {
            None => false,
            Some("required") => true,
            Some(other) => return Err(bad_value("broker-tls", other, "expected `required`")),
        };
        let need = |key: &'static str| {
            kv.get(key)
                .map(str::to_owned)
                .ok_or(DataError::Missing(key))
        };
        let auth = match (kv.get("broker-jwt"), kv.get("broker-seed")) {
            (Some(jwt), Some(seed)) => BrokerAuth::Jwt {
                jwt: jwt.to_owned(),
                seed: seed.to_owned(),
            },
            (Some(_), None) => return Err(DataError::Missing("broker-seed")),
            (None, _) => BrokerAuth::Password(need("broker-password")?),
        };
        let credentials = BrokerCredentials {
            user: need("broker-user")?,
            auth,
            stream: need("broker-stream")?,
            consumer: need("broker-consumer")?,
            inbox: need("broker-inbox")?,
            api_prefix: kv
                .get("broker-api")
                .unwrap_or(DEFAULT_BROKER_API_PREFIX)
                .to_owned(),
            tls,
        };
        credentials.check()?;
        Ok(Some(credentials))
    }

    /// Whether the credentials can only pull a copy: a remote host chooses
    /// every field, and must not point a relay at another API or at
    /// subjects: the user, consumer and inbox are plain names (the inbox
    /// an `_INBOX_` prefix), the API prefix is one of flowd's, secrets are
    /// bounded printable tokens.
    pub fn check(&self) -> Result<(), DataError> {
        if !is_plain_name(&self.user) {
            return Err(bad_value("broker-user", &self.user, "not a plain name"));
        }
        match &self.auth {
            BrokerAuth::Password(password) => {
                if !is_token(password, MAX_CREDENTIAL) {
                    return Err(bad_value(
                        "broker-password",
                        "<hidden>",
                        "not 1 to 256 printable characters",
                    ));
                }
            }
            BrokerAuth::Jwt { jwt, seed } => {
                if !is_token(jwt, MAX_JWT) {
                    return Err(bad_value(
                        "broker-jwt",
                        "<token>",
                        "not 1 to 16384 printable characters",
                    ));
                }
                if !is_token(seed, MAX_CREDENTIAL) {
                    return Err(bad_value(
                        "broker-seed",
                        "<hidden>",
                        "not 1 to 256 printable characters",
                    ));
                }
            }
        }
        if FlowName::from_stream(&self.stream).is_none() {
            return Err(bad_value(
                "broker-stream",
                &self.stream,
                "not the stream of a flow",
            ));
        }
        if !is_plain_name(&self.consumer) {
            return Err(bad_value(
                "broker-consumer",
                &self.consumer,
                format!(
                    "the consumer name `{}` is not a plain name",
                    cut(&self.consumer)
                ),
            ));
        }
        if !self.inbox.starts_with("_INBOX_") || !is_plain_name(&self.inbox) {
            return Err(bad_value(
                "broker-inbox",
                &self.inbox,
                format!(
                    "the inbox `{}` is not an `_INBOX_` prefix",
                    cut(&self.inbox)
                ),
            ));
        }
        if self.api_prefix != BROKER_API_PREFIX && self.api_prefix != DEFAULT_BROKER_API_PREFIX {
            return Err(bad_value(
                "broker-api",
                &self.api_prefix,
                format!(
                    "the API prefix `{}` is not one of ours",
                    cut(&self.api_prefix)
                ),
            ));
        }
        Ok(())
    }
}

/// The data block of a successful `SUBSCRIBE`: the copy's name (as in the
/// draft), then, when the host issues them, the broker credentials.
///
/// ```text
/// S: 220 DATA
/// S: ksdj898.time.flows.unix.ar
/// S: broker-type=nats
/// S: ...
/// S: 220 OK
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeReply {
    /// The subscription copy, `<token>.<flow>`.
    pub copy: FlowName,
    /// Credentials to pull the copy from the broker, when issued.
    pub broker: Option<BrokerCredentials>,
}

impl SubscribeReply {
    /// The data lines.
    pub fn encode(&self) -> Vec<String> {
        let mut lines = vec![self.copy.to_string()];
        if let Some(broker) = &self.broker {
            lines.extend(broker.encode());
        }
        lines
    }

    /// Reads the data lines: a flow name, then `key=value` lines (keys
    /// other than `broker-*` are ignored, for extensions). The credentials
    /// are [checked](BrokerCredentials::check) and must name the copy's
    /// stream.
    pub fn decode<S: AsRef<str>>(lines: &[S]) -> Result<SubscribeReply, DataError> {
        let first = lines
            .first()
            .map(|l| l.as_ref())
            .ok_or_else(|| DataError::NoCopy("an empty block".into()))?;
        let copy = FlowName::parse(first)
            .map_err(|e| DataError::NoCopy(format!("{}: {e}", cut(first))))?;
        let kv = KeyValues::decode(&lines[1..])?;
        let broker = BrokerCredentials::decode(&kv)?;
        if let Some(b) = &broker
            && b.stream != copy.stream()
        {
            return Err(bad_value(
                "broker-stream",
                &b.stream,
                format!(
                    "the credentials name the stream {}, not the copy's {}",
                    cut(&b.stream),
                    copy.stream()
                ),
            ));
        }
        Ok(SubscribeReply { copy, broker })
    }

    /// Whether the copy is one of `remote`: `<token>.<remote>` with the
    /// token one label.
    pub fn is_copy_of(&self, remote: &FlowName) -> bool {
        self.copy
            .as_str()
            .strip_suffix(remote.as_str())
            .and_then(|t| t.strip_suffix('.'))
            .is_some_and(|token| !token.is_empty() && !token.contains('.'))
    }
}

// ---------------------------------------------------------------------------
// Outcomes

/// A command's outcome carried by its final reply's text.
pub trait Outcome: Sized {
    /// The reply a server sends.
    fn to_reply(&self) -> Reply;
    /// Reads a reply; an error when it is not this outcome's.
    fn from_reply(reply: &Reply) -> Result<Self, DataError>;
}

fn unexpected(reply: &Reply) -> DataError {
    DataError::Reply(cut(&reply.to_string()))
}

/// The words of a success text after `OK`.
fn ok_words(reply: &Reply) -> Result<Vec<&str>, DataError> {
    if !reply.is_success() {
        return Err(unexpected(reply));
    }
    let mut words = reply.text.split_ascii_whitespace();
    if words.next() != Some("OK") {
        return Err(unexpected(reply));
    }
    Ok(words.collect())
}

fn number(reply: &Reply, word: &str) -> Result<u64, DataError> {
    // Plain digits: what a server writes, nothing `+` or `-`.
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unexpected(reply));
    }
    word.parse().map_err(|_| unexpected(reply))
}

/// `WRITE FLOW` stored the block: `220 OK <stored> events written,
/// <duplicates> duplicates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Written {
    /// Events stored.
    pub stored: u64,
    /// Events dropped as duplicates (an id already seen within the flow's
    /// duplicate window).
    pub duplicates: u64,
}

impl Outcome for Written {
    fn to_reply(&self) -> Reply {
        Reply::ok(format!(
            "OK {} events written, {} duplicates",
            self.stored, self.duplicates
        ))
    }

    fn from_reply(reply: &Reply) -> Result<Written, DataError> {
        match ok_words(reply)?.as_slice() {
            [stored, "events", "written,", duplicates, "duplicates"] => Ok(Written {
                stored: number(reply, stored)?,
                duplicates: number(reply, duplicates)?,
            }),
            _ => Err(unexpected(reply)),
        }
    }
}

/// `WRITE FLOW` failed: the error, and how many events were stored before
/// it (`<code> <reason>; <n> events were written before it`; a refusal
/// before the block, without that suffix, stored none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailed {
    /// The error's code.
    pub code: Code,
    /// The error's text.
    pub reason: String,
    /// Events stored before the error.
    pub stored: u64,
}

const WRITTEN_BEFORE: &str = " events were written before it";

impl WriteFailed {
    /// The failure of a block after `stored` events, from the reply of
    /// its first error (a success code becomes `555`).
    pub fn new(error: &Reply, stored: u64) -> WriteFailed {
        WriteFailed {
            code: if error.is_success() {
                Code::Invalid
            } else {
                error.code
            },
            reason: error.text.clone(),
            stored,
        }
    }
}

impl Outcome for WriteFailed {
    fn to_reply(&self) -> Reply {
        Reply::new(
            self.code,
            format!("{}; {}{WRITTEN_BEFORE}", self.reason, self.stored),
        )
    }

    fn from_reply(reply: &Reply) -> Result<WriteFailed, DataError> {
        if reply.is_success() {
            return Err(unexpected(reply));
        }
        let split = reply
            .text
            .strip_suffix(WRITTEN_BEFORE)
            .and_then(|rest| rest.rsplit_once("; "))
            .and_then(|(reason, n)| {
                (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| n.parse().ok().map(|n| (reason, n)))
                    .flatten()
            });
        let (reason, stored) = split.unwrap_or((reply.text.as_str(), 0));
        Ok(WriteFailed {
            code: reply.code,
            reason: reason.to_owned(),
            stored,
        })
    }
}

/// `READ FLOW` ended: `220 OK <n> events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadDone {
    /// Events sent.
    pub events: u64,
}

impl Outcome for ReadDone {
    fn to_reply(&self) -> Reply {
        Reply::ok(format!("OK {} events", self.events))
    }

    fn from_reply(reply: &Reply) -> Result<ReadDone, DataError> {
        match ok_words(reply)?.as_slice() {
            [n, "events"] => Ok(ReadDone {
                events: number(reply, n)?,
            }),
            _ => Err(unexpected(reply)),
        }
    }
}

/// `PUT COMPONENT` stored the component: `220 OK sha256:<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentPut {
    /// `sha256:<hex>`, lower case.
    pub digest: String,
}

impl ComponentPut {
    /// A digest as `PUT COMPONENT` gives it: `sha256:` and 64 hex digits
    /// (returned in lower case).
    pub fn parse_digest(text: &str) -> Option<String> {
        let hex = text.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
    }
}

impl Outcome for ComponentPut {
    fn to_reply(&self) -> Reply {
        Reply::ok(format!("OK {}", self.digest))
    }

    fn from_reply(reply: &Reply) -> Result<ComponentPut, DataError> {
        match ok_words(reply)?.as_slice() {
            [digest] => ComponentPut::parse_digest(digest)
                .map(|digest| ComponentPut { digest })
                .ok_or_else(|| unexpected(reply)),
            _ => Err(unexpected(reply)),
        }
    }
}

/// `UPDATE PROCESSOR` applied: `220 OK <id> generation <n>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorUpdated {
    /// The processor.
    pub id: String,
    /// Its generation now (it grows by one with each update).
    pub generation: u64,
}

impl Outcome for ProcessorUpdated {
    fn to_reply(&self) -> Reply {
        Reply::ok(format!("OK {} generation {}", self.id, self.generation))
    }

    fn from_reply(reply: &Reply) -> Result<ProcessorUpdated, DataError> {
        match ok_words(reply)?.as_slice() {
            [id, "generation", n] if flowd_core::naming::is_processor_id(id) => {
                Ok(ProcessorUpdated {
                    id: (*id).to_owned(),
                    generation: number(reply, n)?,
                })
            }
            _ => Err(unexpected(reply)),
        }
    }
}

/// A data line of `READ FLOW ... SEQUENCES`: `<stream-sequence> <event>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencedEvent<'a> {
    /// The event's sequence in the flow's stream.
    pub sequence: u64,
    /// The event, a JSON line.
    pub event: &'a str,
}

impl<'a> SequencedEvent<'a> {
    /// Splits a (unstuffed) data line.
    pub fn decode(line: &'a str) -> Result<SequencedEvent<'a>, DataError> {
        let bad = || DataError::BadValue {
            key: "sequence".into(),
            value: cut(line),
            reason: "not `<sequence> <event>`".into(),
        };
        let (sequence, event) = line.split_once(' ').ok_or_else(bad)?;
        if sequence.is_empty() || !sequence.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(SequencedEvent {
            sequence: sequence.parse().map_err(|_| bad())?,
            event,
        })
    }

    /// The data line (before stuffing).
    pub fn encode(&self) -> String {
        format!("{} {}", self.sequence, self.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flow(s: &str) -> FlowName {
        FlowName::parse(s).expect("valid flow")
    }

    /// The lines flowd sends today (`PullCredentials::to_lines` of
    /// crates/broker/src/grants.rs), written out.
    fn todays_lines(tls: bool, jwt: bool) -> Vec<String> {
        let mut lines = vec![
            "ksdj898.time.flows.unix.ar".to_owned(),
            "broker-type=nats".to_owned(),
            "broker-user=sub-ksdj898".to_owned(),
        ];
        if jwt {
            lines.push("broker-jwt=eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJVQSJ9.c2ln".to_owned());
            lines.push(
                "broker-seed=SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY".to_owned(),
            );
        } else {
            lines.push(format!("broker-password={}", "0123456789abcdef".repeat(4)));
        }
        lines.extend([
            "broker-stream=FLOW_ksdj898_time_flows_unix_ar".to_owned(),
            "broker-consumer=subscriber".to_owned(),
            "broker-inbox=_INBOX_ksdj898".to_owned(),
            "broker-api=FLOWD.API".to_owned(),
        ]);
        if tls {
            lines.push("broker-tls=required".to_owned());
        }
        lines
    }

    #[test]
    fn subscribe_blocks_read_and_write_as_today() {
        for tls in [false, true] {
            for jwt in [false, true] {
                let lines = todays_lines(tls, jwt);
                let reply = SubscribeReply::decode(&lines).expect("today's lines");
                assert_eq!(reply.copy, flow("ksdj898.time.flows.unix.ar"));
                let broker = reply.broker.as_ref().expect("credentials");
                assert_eq!(broker.tls, tls);
                assert_eq!(matches!(broker.auth, BrokerAuth::Jwt { .. }), jwt);
                assert_eq!(reply.encode(), lines, "byte-identical lines");
                assert!(reply.is_copy_of(&flow("time.flows.unix.ar")));
                assert!(!reply.is_copy_of(&flow("flows.unix.ar")));
                assert!(!reply.is_copy_of(&flow("ksdj898.time.flows.unix.ar")));
            }
        }
        // The draft's reply: the copy alone.
        let draft = SubscribeReply::decode(&["ksdj898.time.flows.unix.ar"]).expect("draft");
        assert_eq!(draft.broker, None);
        assert_eq!(draft.encode(), ["ksdj898.time.flows.unix.ar"]);
        // Other keys are ignored; without broker-type there are no credentials.
        let other = SubscribeReply::decode(&["a.b", "x-future=1"]).expect("extension");
        assert_eq!(other.broker, None);
        // Operator mode: the account key as user and consumer.
        let mut operator = todays_lines(true, true);
        operator[2] = "broker-user=ADHCJNVHSA6RDW3YGWOMPJ5XWHSW3BGMKWOYNOTFIP4MMUW3KFSNWBHE".into();
        operator[6] =
            "broker-consumer=ADHCJNVHSA6RDW3YGWOMPJ5XWHSW3BGMKWOYNOTFIP4MMUW3KFSNWBHE".into();
        let decoded = SubscribeReply::decode(&operator).expect("operator mode");
        assert_eq!(decoded.encode(), operator);
        // A missing broker-api is the default prefix.
        let mut no_api = todays_lines(false, false);
        no_api.retain(|l| !l.starts_with("broker-api"));
        let decoded = SubscribeReply::decode(&no_api).expect("no api");
        assert_eq!(
            decoded.broker.map(|b| b.api_prefix),
            Some(DEFAULT_BROKER_API_PREFIX.to_owned())
        );
    }

    #[test]
    fn subscribe_blocks_are_validated() {
        let with = |f: &dyn Fn(&mut Vec<String>)| {
            let mut lines = todays_lines(false, false);
            f(&mut lines);
            SubscribeReply::decode(&lines)
        };
        let replace = |key: &'static str, line: &'static str| {
            move |lines: &mut Vec<String>| {
                for l in lines.iter_mut() {
                    if l.starts_with(key) {
                        *l = line.to_owned();
                    }
                }
            }
        };
        let err = |r: Result<SubscribeReply, DataError>| r.expect_err("refused").to_string();
        assert!(err(with(&replace("broker-type", "broker-type=kafka"))).contains("kafka"));
        let mut maybe = todays_lines(false, false);
        maybe.push("broker-tls=maybe".into());
        assert!(err(SubscribeReply::decode(&maybe)).contains("maybe"));
        assert!(
            err(with(&|l| l.retain(|l| !l.starts_with("broker-password"))))
                .contains("broker-password")
        );
        assert!(
            err(with(&|l| l.retain(|l| !l.starts_with("broker-user")))).contains("broker-user")
        );
        let mut no_seed = todays_lines(false, true);
        no_seed.retain(|l| !l.starts_with("broker-seed"));
        assert!(err(SubscribeReply::decode(&no_seed)).contains("broker-seed"));
        assert!(
            err(with(&replace("broker-stream", "broker-stream=FLOW_secret")))
                .contains("FLOW_secret"),
            "another stream"
        );
        assert!(
            err(with(&replace(
                "broker-consumer",
                "broker-consumer=processor.>"
            )))
            .contains("plain name"),
            "a subject in the consumer"
        );
        assert!(
            err(with(&replace("broker-inbox", "broker-inbox=flow"))).contains("_INBOX_"),
            "an inbox outside _INBOX_"
        );
        assert!(
            err(with(&replace("broker-api", "broker-api=$JS.hub.API"))).contains("not one of ours"),
            "another API"
        );
        assert!(err(with(&replace("broker-user", "broker-user=a b"))).contains("plain name"));
        assert!(err(with(&|l| l.push("broker-user=again".into()))).contains("twice"));
        let long = format!("broker-password={}", "x".repeat(MAX_CREDENTIAL + 1));
        assert!(
            with(&|l| {
                for x in l.iter_mut() {
                    if x.starts_with("broker-password") {
                        *x = long.clone();
                    }
                }
            })
            .is_err()
        );
        assert!(err(with(&|l| l.push("no equals".into()))).contains("not key=value"));
        assert!(matches!(
            SubscribeReply::decode::<&str>(&[]),
            Err(DataError::NoCopy(_))
        ));
        assert!(matches!(
            SubscribeReply::decode(&["broker-type=nats"]),
            Err(DataError::NoCopy(_))
        ));
        let hidden = format!("{:?}", SubscribeReply::decode(&todays_lines(false, false)));
        assert!(
            !hidden.contains("0123456789abcdef"),
            "password hidden: {hidden}"
        );
    }

    #[test]
    fn key_values_keep_order_repeats_and_equals_signs() {
        let lines = [
            "namespace=team.example.com",
            "owner=bob",
            "grant=carol:read",
            "grant=dave:write",
            "config.expr=a = b",
            " spaced key = v ",
            "last-error=",
        ];
        let kv = KeyValues::decode(&lines).expect("decodes");
        assert_eq!(kv.len(), 7);
        assert_eq!(kv.get("owner"), Some("bob"));
        assert_eq!(
            kv.get_all("grant").collect::<Vec<_>>(),
            ["carol:read", "dave:write"]
        );
        assert_eq!(kv.get("config.expr"), Some("a = b"));
        assert_eq!(kv.get("spaced key"), Some(" v "));
        assert_eq!(kv.get("last-error"), Some(""));
        assert_eq!(kv.get("nothing"), None);
        let mut again = kv.encode();
        again[5] = " spaced key = v ".into();
        assert_eq!(again, lines, "the same lines, keys trimmed");
        assert!(matches!(
            KeyValues::decode(&["x"]),
            Err(DataError::NotKeyValue(_))
        ));
        assert!(matches!(
            KeyValues::decode(&["=x"]),
            Err(DataError::NotKeyValue(_))
        ));
        assert!(matches!(
            KeyValues::decode(&[format!("{}=x", "k".repeat(MAX_KEY + 1))]),
            Err(DataError::BadKey(_))
        ));
        assert!(KeyValues::decode(&[format!("{}=x", "k".repeat(MAX_KEY))]).is_ok());
        assert!(matches!(
            KeyValues::decode(&["a\u{7}=x"]),
            Err(DataError::BadKey(_))
        ));
        let request =
            KeyValues::decode_request(&["# a comment", "", "  ", "kind=bridge", "input=a.b"])
                .expect("a request");
        assert_eq!(request.encode(), ["kind=bridge", "input=a.b"]);
        assert_eq!(
            KeyValues::decode_request(&["kind"]).map_err(|e| e.to_string()),
            Err("not key=value: kind".into()),
            "the server's text"
        );

        let mut built = KeyValues::new();
        built.push("events", 3).expect("key");
        built.push("last-error", "a\r\nb").expect("key");
        assert!(built.push("a=b", "x").is_err());
        assert!(built.push(" a", "x").is_err());
        assert!(built.push("", "x").is_err());
        assert_eq!(built.encode(), ["events=3", "last-error=a  b"]);
        assert_eq!(built.parse::<u64>("events"), Ok(3));
        assert!(matches!(
            built.parse::<u64>("last-error"),
            Err(DataError::BadValue { .. })
        ));
        assert_eq!(
            built.parse::<u64>("bytes"),
            Err(DataError::Missing("bytes"))
        );
        assert_eq!(built.iter().count(), 2);
        assert!(!built.is_empty());
    }

    #[test]
    fn outcomes_read_and_write_the_servers_texts() {
        let written = Written {
            stored: 3,
            duplicates: 1,
        };
        assert_eq!(
            written.to_reply().to_string(),
            "220 OK 3 events written, 1 duplicates"
        );
        assert_eq!(Written::from_reply(&written.to_reply()), Ok(written));
        let max = Written {
            stored: u64::MAX,
            duplicates: 0,
        };
        assert_eq!(Written::from_reply(&max.to_reply()), Ok(max));
        for bad in [
            "220 OK 3 events",
            "220 OK x events written, 1 duplicates",
            "554 no",
            "220 OK -1 events written, 0 duplicates",
        ] {
            let reply = Reply::parse(bad).expect("a reply");
            assert!(Written::from_reply(&reply).is_err(), "{bad}");
        }

        let failed = WriteFailed::new(&Reply::new(Code::Arguments, "line 2: not JSON; oops"), 1);
        let reply = failed.to_reply();
        assert_eq!(
            reply.to_string(),
            "501 line 2: not JSON; oops; 1 events were written before it"
        );
        assert_eq!(WriteFailed::from_reply(&reply), Ok(failed));
        let refused = Reply::parse("554 carol has no write right to write to a.b").expect("reply");
        assert_eq!(
            WriteFailed::from_reply(&refused),
            Ok(WriteFailed {
                code: Code::Forbidden,
                reason: refused.text.clone(),
                stored: 0
            })
        );
        assert!(WriteFailed::from_reply(&Reply::ok("OK")).is_err());
        assert_eq!(WriteFailed::new(&Reply::ok("odd"), 0).code, Code::Invalid);

        let read = ReadDone { events: 3 };
        assert_eq!(read.to_reply().to_string(), "220 OK 3 events");
        assert_eq!(ReadDone::from_reply(&read.to_reply()), Ok(read));
        assert!(ReadDone::from_reply(&Reply::ok("OK")).is_err());

        let digest = format!("sha256:{}", "ab".repeat(32));
        let put = ComponentPut {
            digest: digest.clone(),
        };
        assert_eq!(put.to_reply().to_string(), format!("220 OK {digest}"));
        assert_eq!(ComponentPut::from_reply(&put.to_reply()), Ok(put));
        let upper = Reply::ok(format!("OK sha256:{}", "AB".repeat(32)));
        assert_eq!(
            ComponentPut::from_reply(&upper).map(|p| p.digest),
            Ok(digest)
        );
        assert!(ComponentPut::from_reply(&Reply::ok("OK sha256:abc")).is_err());

        let updated = ProcessorUpdated {
            id: "copy-orders".into(),
            generation: 2,
        };
        assert_eq!(updated.to_reply().text, "OK copy-orders generation 2");
        assert_eq!(
            ProcessorUpdated::from_reply(&updated.to_reply()),
            Ok(updated)
        );
        assert!(ProcessorUpdated::from_reply(&Reply::ok("OK Bad generation 2")).is_err());

        let line = r#"42 {"id":"a b"}"#;
        let event = SequencedEvent::decode(line).expect("sequenced");
        assert_eq!(
            event,
            SequencedEvent {
                sequence: 42,
                event: r#"{"id":"a b"}"#
            }
        );
        assert_eq!(event.encode(), line);
        for bad in [
            "",
            "x {}",
            "{}",
            "-1 {}",
            "+1 {}",
            "18446744073709551616 {}",
        ] {
            assert!(SequencedEvent::decode(bad).is_err(), "{bad}");
        }
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9.-]{0,20}( [a-z]{1,4})?"
    }

    proptest! {
        #[test]
        fn key_values_round_trip(pairs in proptest::collection::vec((key(), "[^\r\n]{0,40}"), 0..12)) {
            let mut kv = KeyValues::new();
            for (k, v) in &pairs {
                kv.push(k.clone(), v).expect("valid key");
            }
            let lines = kv.encode();
            prop_assert_eq!(KeyValues::decode(&lines), Ok(kv.clone()));
            let stuffed: Vec<String> = lines.iter().map(|l| crate::framing::stuff(l).into_owned()).collect();
            let unstuffed: Vec<&str> = stuffed.iter().map(|l| crate::framing::unstuff(l)).collect();
            prop_assert_eq!(KeyValues::decode(&unstuffed), Ok(kv));
        }

        #[test]
        fn outcomes_round_trip(a in any::<u64>(), b in any::<u64>(), reason in "[^\r\n]{0,40}") {
            let w = Written { stored: a, duplicates: b };
            prop_assert_eq!(Written::from_reply(&Reply::parse(&w.to_reply().to_string()).expect("reply")), Ok(w));
            let r = ReadDone { events: a };
            prop_assert_eq!(ReadDone::from_reply(&r.to_reply()), Ok(r));
            let f = WriteFailed { code: Code::TooLarge, reason: reason.trim_end().to_owned(), stored: b };
            prop_assert_eq!(WriteFailed::from_reply(&Reply::parse(&f.to_reply().to_string()).expect("reply")), Ok(f));
            let p = ProcessorUpdated { id: "p-1".into(), generation: a };
            prop_assert_eq!(ProcessorUpdated::from_reply(&p.to_reply()), Ok(p));
            let line = format!("{a} {reason}");
            let s = SequencedEvent::decode(&line).expect("sequenced");
            prop_assert_eq!(s.sequence, a);
            prop_assert_eq!(s.encode(), line);
        }
    }
}
