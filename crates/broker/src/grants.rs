//! Broker credentials for subscribers (issue side and use side).
//!
//! A host that supervises its broker gives each subscription to one of its
//! flows a NATS **account** of its own, holding one user. NATS accounts are
//! the broker's security boundary: subjects, inboxes and reply subjects of
//! one account never reach another except through explicit exports and
//! imports. The host's flows, buckets and consumers live in the host's
//! account ([`HOST_ACCOUNT`]); a subscriber's account imports exactly the
//! three services pulling its copy takes, for its consumer only:
//!
//! - `$JS.API.CONSUMER.INFO.<stream>.<consumer>` (look the consumer up);
//! - `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` (pull; a *stream*
//!   response: one request, many events);
//! - `$JS.ACK.<stream>.<consumer>.>` (acknowledge).
//!
//! The first two are imported under the API prefix [`API_PREFIX`] instead
//! of `$JS.API`: in an account without JetStream the server itself answers
//! `$JS.API.>` requests ("JetStream not enabled"), and that answer would
//! race the host's. The subscriber's client uses that prefix.
//!
//! Whatever reply subject a subscriber names on such a request is a subject
//! of its own account: JetStream's answers and the pulled events cannot be
//! sent into a flow, a bucket or an inbox of the host, which is why the
//! permissions of a user (which NATS never checks against reply subjects)
//! are not the boundary here. The user is still allowed only those three
//! subjects to publish and its inbox to subscribe to. The account has no
//! JetStream of its own and is limited in connections, subscriptions and
//! payload ([`SubscriberLimits`]).
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
//! broker-api=FLOWD.API
//! broker-tls=required
//! ```
//!
//! The broker's address is not in the reply: the subscriber finds it in DNS
//! (`_queue._flow._tcp.<flow>` SRV), as the draft publishes it.
//! `broker-tls=required` says the broker port speaks TLS only, with the
//! certificate of the host the SRV record names; without it the port is a
//! plain-text one on loopback, and a subscriber reaching it across a network
//! must not use the credentials there.

use serde::{Deserialize, Serialize};

/// The durable consumer a subscriber pulls its copy through.
pub const CONSUMER: &str = "subscriber";

/// Events a subscriber pulls at once (and at most unacknowledged).
pub const BATCH: usize = 256;

/// The broker account of the host's own flows, buckets and consumers.
pub const HOST_ACCOUNT: &str = "FLOWD";

/// The JetStream API prefix in a subscriber's account.
pub use flowd_core::naming::SUBSCRIBER_API_PREFIX as API_PREFIX;

/// The JetStream API prefix when an issuing host names none.
use flowd_core::naming::JETSTREAM_API_PREFIX as DEFAULT_API_PREFIX;

/// What a subscriber needs to pull its copy from the issuing broker.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullCredentials {
    /// The broker user to connect as.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The issuing host's stream holding the flow.
    pub stream: String,
    /// The durable consumer of that stream the subscriber pulls through.
    pub consumer: String,
    /// Inbox prefix the subscriber's client must use (the only subjects it
    /// may subscribe to are below it).
    pub inbox: String,
    /// The JetStream API prefix the subscriber's client must use.
    #[serde(default = "default_api_prefix")]
    pub api_prefix: String,
    /// The broker's client port requires TLS.
    #[serde(default)]
    pub tls: bool,
    /// On an operator-run NATS: the user's JWT and nkey seed (then
    /// `password` is empty and `user` names the subscriber's account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    /// On an operator-run NATS: the nkey seed that signs for `jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
}

fn default_api_prefix() -> String {
    DEFAULT_API_PREFIX.to_owned()
}

impl std::fmt::Debug for PullCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullCredentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("inbox", &self.inbox)
            .field("api_prefix", &self.api_prefix)
            .field("tls", &self.tls)
            .field("jwt", &self.jwt.as_ref().map(|_| "<token>"))
            .field("seed", &self.seed.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// A subscriber's account and user as the issuing broker's configuration
/// holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerUser {
    /// The user's name, also the name of its account.
    pub user: String,
    /// bcrypt hash: the password itself is given once, to the subscriber.
    pub password_hash: String,
    /// The copy's stream.
    pub stream: String,
    /// The consumer of that stream the account may pull.
    pub consumer: String,
    /// The only subjects the user may subscribe to are below it.
    pub inbox: String,
}

/// The records of `users.json`: this form, or the one before accounts
/// (explicit allow lists), read into it.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredUser {
    Current {
        user: String,
        password_hash: String,
        stream: String,
        consumer: String,
        inbox: String,
    },
    Lists {
        user: String,
        password_hash: String,
        publish: Vec<String>,
        subscribe: Vec<String>,
    },
}

impl<'de> Deserialize<'de> for BrokerUser {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BrokerUser, D::Error> {
        match StoredUser::deserialize(d)? {
            StoredUser::Current {
                user,
                password_hash,
                stream,
                consumer,
                inbox,
            } => Ok(BrokerUser {
                user,
                password_hash,
                stream,
                consumer,
                inbox,
            }),
            StoredUser::Lists {
                user,
                password_hash,
                publish,
                subscribe,
            } => {
                let pulled = publish
                    .iter()
                    .find_map(|s| s.strip_prefix("$JS.API.CONSUMER.INFO."))
                    .and_then(|rest| rest.split_once('.'))
                    .ok_or_else(|| serde::de::Error::custom("a broker user without a consumer"))?;
                let inbox = subscribe
                    .first()
                    .and_then(|s| s.strip_suffix(".>"))
                    .ok_or_else(|| serde::de::Error::custom("a broker user without an inbox"))?;
                Ok(BrokerUser {
                    user,
                    password_hash,
                    stream: pulled.0.to_owned(),
                    consumer: pulled.1.to_owned(),
                    inbox: inbox.to_owned(),
                })
            }
        }
    }
}

impl BrokerUser {
    /// The broker account the user belongs to (one per subscription).
    pub fn account(&self) -> &str {
        &self.user
    }

    /// The services the account imports from the host's account: all the
    /// account may reach of the host.
    pub fn services(&self) -> [Service; 3] {
        let (s, c) = (&self.stream, &self.consumer);
        [
            Service {
                exported: format!("$JS.API.CONSUMER.INFO.{s}.{c}"),
                local: format!("{API_PREFIX}.CONSUMER.INFO.{s}.{c}"),
                streamed: false,
            },
            Service {
                exported: format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{c}"),
                local: format!("{API_PREFIX}.CONSUMER.MSG.NEXT.{s}.{c}"),
                streamed: true,
            },
            Service {
                exported: format!("$JS.ACK.{s}.{c}.>"),
                local: format!("$JS.ACK.{s}.{c}.>"),
                streamed: false,
            },
        ]
    }

    /// Subjects the user may publish to: the imported services.
    pub fn publish(&self) -> Vec<String> {
        self.services().into_iter().map(|s| s.local).collect()
    }

    /// Subjects the user may subscribe to: its inbox.
    pub fn subscribe(&self) -> Vec<String> {
        vec![format!("{}.>", self.inbox)]
    }
}

/// A service of the host's account imported by a subscriber's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its subject in the host's account.
    pub exported: String,
    /// Its subject in the subscriber's account.
    pub local: String,
    /// It answers one request with many messages (a pull).
    pub streamed: bool,
}

/// What each subscriber account may use of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriberLimits {
    /// Connections at once (the relay needs one; a second covers a
    /// reconnect while the broker has not yet seen the first one go).
    pub connections: u32,
    /// Subscriptions at once (the client's inbox and a pull or two).
    pub subscriptions: u32,
    /// Largest message the subscriber may publish (pull requests and
    /// acknowledgements are small; events it receives are not limited).
    pub payload: u32,
}

impl SubscriberLimits {
    /// Each limit must be 1 to `i32::MAX`: nats-server reads them as 32-bit
    /// signed numbers (a larger one would wrap to "unlimited"), and 0 would
    /// shut every subscriber out.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("connections", self.connections),
            ("subscriptions", self.subscriptions),
            ("payload", self.payload),
        ] {
            if !(1..=i32::MAX as u32).contains(&value) {
                return Err(format!("{name} = {value}: use 1 to {}", i32::MAX));
            }
        }
        Ok(())
    }
}

impl Default for SubscriberLimits {
    fn default() -> SubscriberLimits {
        SubscriberLimits {
            connections: 2,
            subscriptions: 16,
            payload: 4096,
        }
    }
}

/// Who issues subscribers' broker credentials on this host.
#[derive(Clone)]
pub enum Issuer {
    /// The embedded broker: accounts in its configuration.
    Embedded(super::embedded::Users),
    /// An operator-run NATS: accounts as JWTs pushed to its resolver.
    Operator(super::operator::Operator),
}

/// Why an issuer could not admit or revoke an account.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The embedded broker's users could not be rewritten or reloaded.
    #[error(transparent)]
    Embedded(#[from] super::embedded::EmbeddedError),
    /// The operator-run NATS did not take the account's JWT.
    #[error(transparent)]
    Operator(#[from] super::operator::OperatorError),
    /// The credentials themselves could not be made.
    #[error(transparent)]
    Grant(#[from] GrantError),
}

impl Issuer {
    /// New credentials for subscription `token` pulling `stream`; nothing
    /// is admitted until [`Issuer::admit`]. Make the consumer
    /// `credentials.consumer` in between.
    pub fn credentials(&self, token: &str, stream: &str) -> Result<PullCredentials, IssueError> {
        match self {
            Issuer::Embedded(users) => Ok(PullCredentials::new(token, stream, users.tls())),
            Issuer::Operator(operator) => Ok(operator.credentials(token, stream)?),
        }
    }

    /// Lets the credentials in: once this returns, they connect.
    pub async fn admit(&self, credentials: &PullCredentials) -> Result<(), IssueError> {
        match self {
            Issuer::Embedded(users) => Ok(users.add(credentials.user()?).await?),
            Issuer::Operator(operator) => Ok(operator.admit(credentials).await?),
        }
    }

    /// Shuts the account of subscription `token` (`account`: its public key
    /// on an operator-run NATS) out: once this returns, its connections are
    /// closed and new ones refused.
    pub async fn revoke(&self, token: &str, account: Option<&str>) -> Result<(), IssueError> {
        match (self, account) {
            (Issuer::Embedded(users), _) => {
                let user = PullCredentials::user_name(token);
                users.retain(|u| u != user).await?;
                Ok(())
            }
            (Issuer::Operator(operator), Some(account)) => Ok(operator.revoke(account).await?),
            (Issuer::Operator(_), None) => Ok(()),
        }
    }
}

/// Why credentials could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// bcrypt failed to hash a password.
    #[error("hashing the broker password: {0}")]
    Hash(#[from] bcrypt::BcryptError),
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
    /// The broker user (and account) of subscription `token`.
    pub fn user_name(token: &str) -> String {
        format!("sub-{token}")
    }

    /// New credentials for subscription `token` pulling from `stream`.
    pub fn new(token: &str, stream: &str, tls: bool) -> PullCredentials {
        PullCredentials {
            user: PullCredentials::user_name(token),
            password: secret(),
            stream: stream.to_owned(),
            consumer: CONSUMER.to_owned(),
            inbox: format!("_INBOX_{token}"),
            api_prefix: API_PREFIX.to_owned(),
            tls,
            jwt: None,
            seed: None,
        }
    }

    /// Connection options that authenticate as these credentials.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        match (&self.jwt, &self.seed) {
            (Some(jwt), Some(seed)) => {
                let seed = seed.clone();
                async_nats::ConnectOptions::with_jwt(jwt.clone(), move |nonce| {
                    let seed = seed.clone();
                    async move {
                        let key =
                            nkeys::KeyPair::from_seed(&seed).map_err(async_nats::AuthError::new)?;
                        key.sign(&nonce).map_err(async_nats::AuthError::new)
                    }
                })
            }
            _ => async_nats::ConnectOptions::with_user_and_password(
                self.user.clone(),
                self.password.clone(),
            ),
        }
        .custom_inbox_prefix(&self.inbox)
    }

    /// The broker account and user that allow these credentials to pull,
    /// and nothing else.
    pub fn user(&self) -> Result<BrokerUser, GrantError> {
        Ok(BrokerUser {
            user: self.user.clone(),
            password_hash: hash(&self.password)?,
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            inbox: self.inbox.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_imports_its_consumer_only_and_keeps_no_clear_password() {
        let creds = PullCredentials::new("abc", "FLOW_S", false);
        let user = creds.user().expect("hashed");
        assert!(user.password_hash.starts_with("$2a$10$"));
        assert!(bcrypt::verify(&creds.password, &user.password_hash).expect("verifies"));
        assert_eq!(user.account(), "sub-abc");
        let services = user.services();
        let exported: Vec<_> = services.iter().map(|s| s.exported.as_str()).collect();
        assert_eq!(
            exported,
            [
                "$JS.API.CONSUMER.INFO.FLOW_S.subscriber",
                "$JS.API.CONSUMER.MSG.NEXT.FLOW_S.subscriber",
                "$JS.ACK.FLOW_S.subscriber.>",
            ]
        );
        assert_eq!(
            user.publish(),
            [
                "FLOWD.API.CONSUMER.INFO.FLOW_S.subscriber",
                "FLOWD.API.CONSUMER.MSG.NEXT.FLOW_S.subscriber",
                "$JS.ACK.FLOW_S.subscriber.>",
            ]
        );
        let streamed: Vec<_> = services.iter().map(|s| s.streamed).collect();
        assert_eq!(streamed, [false, true, false]);
        assert_eq!(user.subscribe(), ["_INBOX_abc.>"]);
        assert!(!format!("{creds:?}").contains(&creds.password));
    }

    #[test]
    fn users_stored_before_accounts_are_read() {
        let old = r#"[{"user":"sub-abc","password_hash":"$2a$10$x",
            "publish":["$JS.API.CONSUMER.INFO.FLOW_S.subscriber",
                       "$JS.API.CONSUMER.MSG.NEXT.FLOW_S.subscriber",
                       "$JS.ACK.FLOW_S.subscriber.>"],
            "subscribe":["_INBOX_abc.>"]}]"#;
        let users: Vec<BrokerUser> = serde_json::from_str(old).expect("old form");
        assert_eq!(users[0].stream, "FLOW_S");
        assert_eq!(users[0].consumer, "subscriber");
        assert_eq!(users[0].inbox, "_INBOX_abc");
        let again: Vec<BrokerUser> =
            serde_json::from_str(&serde_json::to_string(&users).expect("json")).expect("new form");
        assert_eq!(again, users);
        let broken = r#"[{"user":"u","password_hash":"h","publish":[],"subscribe":[]}]"#;
        assert!(serde_json::from_str::<Vec<BrokerUser>>(broken).is_err());
    }
}
