//! Broker credentials for subscribers (issue side and use side).
//!
//! A host that supervises its broker gives each subscription to one of its
//! flows a NATS user of its own, allowed exactly what pulling the
//! subscription's copy takes and nothing more:
//!
//! - publish `$JS.API.CONSUMER.INFO.<stream>.<consumer>` (look the consumer
//!   up), `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` (pull) and
//!   `$JS.ACK.<stream>.<consumer>.>` (acknowledge);
//! - subscribe `<inbox>.>`, an inbox prefix of its own, where the replies
//!   and the pulled events arrive.
//!
//! The consumer is created by the issuing host, so the subscriber cannot
//! create consumers on other streams, read other subjects, publish events or
//! see the host's records. Removing the user (and the copy) revokes the
//! subscription: the broker drops the user's connections when it reloads
//! its configuration.
//!
//! On the wire (the data lines of `SUBSCRIBE` after the copy's name):
//!
//! ```text
//! broker-type=nats
//! broker-user=sub-ksdj898
//! broker-password=...
//! broker-stream=FLOW_ksdj898_time_flows_unix_ar
//! broker-consumer=subscriber
//! broker-inbox=_INBOX_ksdj898
//! ```
//!
//! The broker's address is not in the reply: the subscriber finds it in DNS
//! (`_queue._flow._tcp.<flow>` SRV), as the draft publishes it.

use serde::{Deserialize, Serialize};

/// The durable consumer a subscriber pulls its copy through.
pub const CONSUMER: &str = "subscriber";

/// Events a subscriber pulls at once (and at most unacknowledged).
pub const BATCH: usize = 256;

/// What a subscriber needs to pull its copy from the issuing broker.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullCredentials {
    pub user: String,
    pub password: String,
    pub stream: String,
    pub consumer: String,
    /// Inbox prefix the subscriber's client must use (the only subjects it
    /// may subscribe to are below it).
    pub inbox: String,
}

impl std::fmt::Debug for PullCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullCredentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("inbox", &self.inbox)
            .finish()
    }
}

/// A broker user as the issuing broker's configuration holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerUser {
    pub user: String,
    /// bcrypt hash: the password itself is given once, to the subscriber.
    pub password_hash: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// Why credentials could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("hashing the broker password: {0}")]
    Hash(#[from] bcrypt::BcryptError),
    #[error("the subscription reply lacks `{0}`")]
    Missing(&'static str),
    #[error("unsupported broker type `{0}` (this host speaks nats)")]
    BrokerType(String),
}

/// A random secret: two v4 UUIDs, 244 random bits.
pub fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// bcrypt in the `$2a$` form nats-server reads; cost 10 keeps a connect
/// below a few tens of milliseconds.
pub fn hash(password: &str) -> Result<String, GrantError> {
    Ok(bcrypt::hash_with_result(password, 10)?.format_for_version(bcrypt::Version::TwoA))
}

impl PullCredentials {
    /// The broker user of subscription `token`.
    pub fn user_name(token: &str) -> String {
        format!("sub-{token}")
    }

    /// New credentials for subscription `token` pulling from `stream`.
    pub fn new(token: &str, stream: &str) -> PullCredentials {
        PullCredentials {
            user: PullCredentials::user_name(token),
            password: secret(),
            stream: stream.to_owned(),
            consumer: CONSUMER.to_owned(),
            inbox: format!("_INBOX_{token}"),
        }
    }

    /// The broker user that allows these credentials to pull, and nothing
    /// else.
    pub fn user(&self) -> Result<BrokerUser, GrantError> {
        let (s, c) = (&self.stream, &self.consumer);
        Ok(BrokerUser {
            user: self.user.clone(),
            password_hash: hash(&self.password)?,
            publish: vec![
                format!("$JS.API.CONSUMER.INFO.{s}.{c}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{c}"),
                format!("$JS.ACK.{s}.{c}.>"),
            ],
            subscribe: vec![format!("{}.>", self.inbox)],
        })
    }

    /// The `key=value` lines of a `SUBSCRIBE` reply.
    pub fn to_lines(&self) -> Vec<String> {
        vec![
            "broker-type=nats".to_owned(),
            format!("broker-user={}", self.user),
            format!("broker-password={}", self.password),
            format!("broker-stream={}", self.stream),
            format!("broker-consumer={}", self.consumer),
            format!("broker-inbox={}", self.inbox),
        ]
    }

    /// Reads the lines after the copy's name; `None` when the reply has no
    /// broker credentials (the host does not issue them: the subscriber
    /// reads the copy over FNAP).
    pub fn from_lines<S: AsRef<str>>(lines: &[S]) -> Result<Option<PullCredentials>, GrantError> {
        let value = |key: &str| {
            lines.iter().find_map(|l| {
                l.as_ref()
                    .strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_owned)
            })
        };
        let Some(kind) = value("broker-type") else {
            return Ok(None);
        };
        if kind != "nats" {
            return Err(GrantError::BrokerType(kind));
        }
        let need = |key: &'static str| value(key).ok_or(GrantError::Missing(key));
        Ok(Some(PullCredentials {
            user: need("broker-user")?,
            password: need("broker-password")?,
            stream: need("broker-stream")?,
            consumer: need("broker-consumer")?,
            inbox: need("broker-inbox")?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_round_trip_and_absent_means_none() {
        let creds = PullCredentials::new("ksdj898", "FLOW_ksdj898_time");
        let mut lines = vec!["ksdj898.time.flows.unix.ar".to_owned()];
        lines.extend(creds.to_lines());
        assert_eq!(
            PullCredentials::from_lines(&lines[1..]).expect("reads"),
            Some(creds)
        );
        assert_eq!(
            PullCredentials::from_lines(&["x.y".to_owned()]).expect("reads"),
            None
        );
        let err = PullCredentials::from_lines(&["broker-type=kafka"]).expect_err("kafka");
        assert!(err.to_string().contains("kafka"), "{err}");
        let err = PullCredentials::from_lines(&["broker-type=nats", "broker-user=u"])
            .expect_err("incomplete");
        assert!(err.to_string().contains("broker-password"), "{err}");
    }

    #[test]
    fn the_user_may_pull_its_consumer_only_and_keeps_no_clear_password() {
        let creds = PullCredentials::new("abc", "FLOW_S");
        let user = creds.user().expect("hashed");
        assert!(user.password_hash.starts_with("$2a$10$"));
        assert!(bcrypt::verify(&creds.password, &user.password_hash).expect("verifies"));
        assert_eq!(
            user.publish,
            [
                "$JS.API.CONSUMER.INFO.FLOW_S.subscriber",
                "$JS.API.CONSUMER.MSG.NEXT.FLOW_S.subscriber",
                "$JS.ACK.FLOW_S.subscriber.>"
            ]
        );
        assert_eq!(user.subscribe, ["_INBOX_abc.>"]);
        assert!(!format!("{creds:?}").contains(&creds.password));
    }
}
