//! Subscriber credentials on an operator-run NATS server or cluster
//! (decentralized JWT authentication).
//!
//! The operator gives the participant an account for its flows (the host's
//! account, whose user the host connects as) and an operator signing key
//! for its subscribers' accounts. For each subscription the host makes, as
//! on its embedded broker ([`super::grants`]), an account of the
//! subscription's own: it signs that account's JWT with the operator
//! signing key (no JetStream, the limits of [`SubscriberLimits`], imports of
//! the three services pulling the copy takes) and pushes it to the
//! servers' resolver (`$SYS.REQ.CLAIMS.UPDATE`, which the host's account
//! imports from the system account); then it mints the account's one user
//! (an nkey and a JWT signed by the account's key) and hands its token and
//! seed to the subscriber.
//!
//! The host's account exports the services once, publicly but bound to the
//! importer by `account_token_position`: the copy's consumer is named after
//! the subscriber account's public key, and an account can import only the
//! subjects that carry its own key (docs/federation.md gives the exports).
//!
//! Revoking pushes the subscriber's account again with no imports, no
//! connections and every user revoked: the servers close its connections
//! as they apply the update.

use super::grants::{API_PREFIX, PullCredentials, SubscriberLimits};
use super::jwt::{self, JwtError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Why the operator's servers did not take a subscriber's account.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The account's or user's JWT could not be made.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The servers' resolver did not answer in time, or refused the
    /// account's JWT.
    #[error("pushing an account to the NATS resolver: {0}")]
    Push(String),
}

/// The subject nats-server's resolver takes account JWTs on.
pub const CLAIMS_UPDATE: &str = "$SYS.REQ.CLAIMS.UPDATE";

/// Mints and revokes subscriber accounts on an operator-run NATS.
#[derive(Clone)]
pub struct Operator {
    inner: Arc<Inner>,
}

struct Inner {
    signing_key: nkeys::KeyPair,
    /// The host's account (public key), which exports the pull services.
    host_account: String,
    /// The host's connection, through which accounts are pushed.
    client: async_nats::Client,
    limits: SubscriberLimits,
    tls: bool,
    /// One push at a time: the resolver keeps the last one it gets.
    lock: tokio::sync::Mutex<()>,
}

impl Operator {
    /// An issuer that signs subscriber accounts with `signing_key` (the
    /// operator's signing key), importing the services of `host_account`,
    /// and pushes them through `client` (the host's connection). `tls`:
    /// the servers' client ports require TLS.
    pub fn new(
        signing_key: nkeys::KeyPair,
        host_account: String,
        client: async_nats::Client,
        limits: SubscriberLimits,
        tls: bool,
    ) -> Operator {
        Operator {
            inner: Arc::new(Inner {
                signing_key,
                host_account,
                client,
                limits,
                tls,
                lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// New credentials for subscription `token` pulling from `stream`: a
    /// new account and user (nothing is pushed yet). The consumer to make
    /// is named after the account (`credentials.consumer`); the account's
    /// public key is `credentials.user`.
    pub fn credentials(&self, token: &str, stream: &str) -> Result<PullCredentials, OperatorError> {
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let mut credentials = PullCredentials::new(token, stream, self.inner.tls);
        credentials.user = account.public_key();
        credentials.consumer = account.public_key();
        credentials.password = String::new();
        let token = jwt::encode(
            &user.public_key(),
            &PullCredentials::user_name(token),
            jwt::user(
                &publish(&credentials),
                &[format!("{}.>", credentials.inbox)],
            ),
            &account,
        )?;
        credentials.jwt = Some(token);
        credentials.seed = Some(jwt::seed_of(&user)?);
        Ok(credentials)
    }

    /// Pushes the account of `credentials` (made by
    /// [`Operator::credentials`]): its user may connect once this returns.
    pub async fn admit(&self, credentials: &PullCredentials) -> Result<(), OperatorError> {
        let (s, c, host) = (
            &credentials.stream,
            &credentials.consumer,
            &self.inner.host_account,
        );
        let import = |name: &str, exported: String, local: String| {
            json!({ "name": name, "subject": exported, "local_subject": local,
                    "account": host, "type": "service" })
        };
        let limits = &self.inner.limits;
        let nats = json!({
            "type": "account", "version": 2,
            "limits": jwt::account_limits(
                i64::from(limits.connections),
                i64::from(limits.subscriptions),
                i64::from(limits.payload),
            ),
            "imports": [
                import("info", format!("$JS.API.CONSUMER.INFO.{s}.{c}"),
                       format!("{API_PREFIX}.CONSUMER.INFO.{s}.{c}")),
                import("next", format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{c}"),
                       format!("{API_PREFIX}.CONSUMER.MSG.NEXT.{s}.{c}")),
                import("ack", format!("$JS.ACK.{s}.{c}.>"), format!("$JS.ACK.{s}.{c}.>")),
            ],
        });
        self.push(&credentials.user, nats).await
    }

    /// Revokes the subscriber account `account`: no imports, no
    /// connections, every user issued until now revoked.
    pub async fn revoke(&self, account: &str) -> Result<(), OperatorError> {
        let nats = json!({
            "type": "account", "version": 2,
            "limits": jwt::account_limits(0, 0, 0),
            "imports": [],
            "revocations": { "*": chrono::Utc::now().timestamp() },
        });
        self.push(account, nats).await
    }

    async fn push(&self, account: &str, nats: serde_json::Value) -> Result<(), OperatorError> {
        let token = jwt::encode(account, account, nats, &self.inner.signing_key)?;
        let _guard = self.inner.lock.lock().await;
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.inner.client.request(CLAIMS_UPDATE, token.into()),
        )
        .await
        .map_err(|_| OperatorError::Push("no answer within 5 s".into()))?
        .map_err(|e| OperatorError::Push(e.to_string()))?;
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| OperatorError::Push(format!("unreadable answer: {e}")))?;
        if answer["data"]["code"].as_i64() == Some(200) {
            Ok(())
        } else {
            Err(OperatorError::Push(
                answer["error"]["description"]
                    .as_str()
                    .unwrap_or("refused")
                    .to_owned(),
            ))
        }
    }
}

/// The subjects a subscriber's user may publish: the imported services.
fn publish(credentials: &PullCredentials) -> Vec<String> {
    let (s, c) = (&credentials.stream, &credentials.consumer);
    vec![
        format!("{API_PREFIX}.CONSUMER.INFO.{s}.{c}"),
        format!("{API_PREFIX}.CONSUMER.MSG.NEXT.{s}.{c}"),
        format!("$JS.ACK.{s}.{c}.>"),
    ]
}
