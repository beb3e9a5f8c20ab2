//! Subscriptions (figure 5's subscribe, unsubscribe, list subscriptions and
//! subscribers, remove subscriber, pause/resume/stop subscription; section 7's
//! use case 4).
//!
//! As in the draft, subscribing to a flow gives the subscriber its own copy:
//! `<token>.<flow>`, fed by a bridge (the built-in relay) from the flow. The
//! flow's owner controls every copy and can revoke it by removing the
//! subscriber. `SUBSCRIBE <remote> LOCAL <local>` also bridges the copy into a
//! local flow of the subscriber; that bridge is the *subscription*, which the
//! subscriber pauses, resumes or stops.
//!
//! When the subscribed flow is served by another participant, the copy is
//! made there and [`crate::relays`] relays it into the local flow. A
//! host that supervises its broker gives such a subscriber (any subscriber
//! without `LOCAL`) a broker user that may only pull its copy
//! ([`flowd_broker::grants`]); removing the subscriber removes the user.

use super::access::{self, Principal};
use super::quotas;
use super::{Agent, AgentError, NewProcessor, unavailable};
use flowd_broker::FlowName;
use flowd_broker::Records;
use flowd_broker::grants::PullCredentials;
use flowd_core::buckets::SUBSCRIPTIONS;
use flowd_core::{FlowOptions, Right};
use flowd_engine::spec::{self, RunLimits};
use flowd_wasm::Kind;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// A copy of one of our flows held for a subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    pub token: String,
    pub source: FlowName,
    pub copy: FlowName,
    /// The subscribing account (`None`: anonymous, or the host itself).
    pub user: Option<String>,
    pub processor: String,
    pub created: String,
    /// Made by the host itself (a pipeline), which holds every right.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
    /// The subscriber's broker account on an operator-run NATS (its
    /// public key), revoked with the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_account: Option<String>,
    /// The address group of an anonymous subscriber
    /// ([`flowd_fnap::session::address_group`]), counted by its quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
}

/// Why a copy was revoked, kept a while after it is gone so that its
/// subscriber can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Revoked {
    copy: FlowName,
    reason: String,
    at: String,
    /// The subscribing account (`None`: anonymous), the only one told.
    #[serde(default)]
    user: Option<String>,
}

/// A local flow fed from a subscription copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub token: String,
    pub local: FlowName,
    pub remote: FlowName,
    pub copy: FlowName,
    pub user: Option<String>,
    /// The bridge feeding `local` (a relay processor on this host; empty
    /// for a remote subscription, which the federation relays).
    pub processor: String,
    pub created: String,
    /// The remote FNAA (`host:port` as discovered) for a subscription to
    /// another host's flow.
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub paused: bool,
    /// The remote host removed the copy: nothing more will come.
    #[serde(default)]
    pub revoked: bool,
    /// Why, as the remote host said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    /// Credentials to pull the copy from the remote host's broker, when it
    /// issued some (else the copy is read over FNAP).
    #[serde(default)]
    pub broker: Option<PullCredentials>,
    /// Why the relay cannot progress, when it cannot (not stored in the
    /// record: a change of it would restart the relay).
    #[serde(skip)]
    pub failing: Option<String>,
}

pub use crate::peers::Subscribed;

impl Subscription {
    fn new(
        token: &str,
        local: &FlowName,
        remote: &FlowName,
        copy: &FlowName,
        user: Option<String>,
        processor: String,
        agent: Option<String>,
    ) -> Subscription {
        Subscription {
            token: token.to_owned(),
            local: local.clone(),
            remote: remote.clone(),
            copy: copy.clone(),
            user,
            processor,
            created: chrono::Utc::now().to_rfc3339(),
            agent,
            paused: false,
            revoked: false,
            revoked_reason: None,
            broker: None,
            failing: None,
        }
    }

    /// `running`, `paused`, `revoked` or `failing` (a remote subscription
    /// whose relay cannot progress; [`Subscription::failing`] says why).
    pub fn state(&self) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.paused {
            "paused"
        } else if self.failing.is_some() {
            "failing"
        } else {
            "running"
        }
    }
}

/// A subscription token (the first label of its copy's name): 7
/// characters like the draft's `ksdj898`.
fn token() -> String {
    token_of(7)
}

/// The token of an anonymous subscription, 22 characters (about 113
/// bits): its copy's name is the only secret that cancels it, so it must
/// not be guessable.
fn anonymous_token() -> String {
    token_of(22)
}

fn token_of(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = Vec::with_capacity(32);
    while bytes.len() < len {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    let mut t = String::with_capacity(len);
    t.push((b'a' + bytes[0] % 26) as char);
    for b in &bytes[1..len] {
        // 252 = 7 * 36: values above are rare enough that the small bias
        // they would bring is not worth a rejection loop.
        t.push(ALPHABET[*b as usize % ALPHABET.len()] as char);
    }
    t
}

fn owns(principal: &Principal, user: Option<&str>) -> bool {
    principal.is_admin() || (principal.user().is_some() && principal.user() == user)
}

impl Agent {
    /// Every copy held for a subscriber.
    pub(crate) async fn subscribers(&self) -> Result<Vec<Subscriber>, AgentError> {
        self.records("subscriber.").await
    }

    /// Refuses a subscription over the principal's quota
    /// ([`super::quotas`]): per account, or for anonymous clients per
    /// address group and in all.
    async fn check_subscriber_quota(
        &self,
        principal: &Principal,
        address: Option<std::net::IpAddr>,
    ) -> Result<(), AgentError> {
        if principal.is_admin() || principal == &Principal::Host {
            return Ok(());
        }
        let q = &self.quotas;
        let held = self.subscribers().await?;
        match principal.user() {
            Some(user) => {
                let mine = held
                    .iter()
                    .filter(|s| s.user.as_deref() == Some(user))
                    .count();
                if mine >= q.subscriptions_per_account {
                    return Err(quotas::exceeded(
                        "subscriptions per account",
                        q.subscriptions_per_account,
                    ));
                }
            }
            None => {
                let anonymous: Vec<_> = held
                    .iter()
                    .filter(|s| s.user.is_none() && !s.host)
                    .collect();
                if anonymous.len() >= q.anonymous_subscriptions {
                    return Err(quotas::exceeded(
                        "anonymous subscriptions on this host",
                        q.anonymous_subscriptions,
                    ));
                }
                let here = anonymous.iter().filter(|s| s.address == address).count();
                if here >= q.anonymous_subscriptions_per_address {
                    return Err(quotas::exceeded(
                        "anonymous subscriptions per address",
                        q.anonymous_subscriptions_per_address,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn records<T: Serialize + for<'de> Deserialize<'de>>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, AgentError> {
        let records = Records::<T>::new(self.subscriptions.clone(), SUBSCRIPTIONS);
        Ok(records
            .list(prefix)
            .await?
            .into_iter()
            .map(|(_, record)| record)
            .collect())
    }

    async fn put_record<T: Serialize>(&self, key: &str, record: &T) -> Result<(), AgentError> {
        let json = serde_json::to_vec(record).map_err(|e| AgentError::Invalid(e.to_string()))?;
        self.subscriptions
            .put(key, json.into())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn relay(
        &self,
        id: String,
        from: &FlowName,
        to: &FlowName,
        owner: Option<String>,
    ) -> Result<(), AgentError> {
        self.create_processor(NewProcessor {
            id,
            kind: Kind::Bridge,
            component: spec::RELAY.as_bytes().to_vec(),
            config: Vec::new(),
            inputs: vec![from.clone()],
            outputs: vec![to.clone()],
            dead_letter: None,
            limits: RunLimits::default(),
            owner,
        })
        .await?;
        Ok(())
    }

    /// Subscribes to `remote` (a flow of this host): creates the
    /// subscriber's copy and, with `local`, a bridge from the copy into that
    /// local flow (created if missing); without `local`, broker credentials
    /// for the copy when this host issues them and `confidential` says the
    /// reply cannot be read on its way (TLS, or a trusted network): a
    /// subscriber on a plain-text session reads its copy over FNAP.
    ///
    /// `from` is the client's address: anonymous subscriptions are counted
    /// per address group.
    pub async fn subscribe_as(
        &self,
        principal: &Principal,
        from: Option<std::net::IpAddr>,
        remote: &FlowName,
        local: Option<&FlowName>,
        confidential: bool,
    ) -> Result<Subscribed, AgentError> {
        if self.flow_chain(remote).await?.is_empty() && self.broker.flow_info(remote).await.is_err()
        {
            return self.subscribe_remote(principal, remote, local).await;
        }
        let source = self.check_read(principal, remote).await?;
        let anonymous = principal.user().is_none() && principal != &Principal::Host;
        let address = from
            .filter(|_| anonymous)
            .map(flowd_fnap::session::address_group);
        let _admission = self.admit(principal).await;
        self.check_subscriber_quota(principal, address).await?;
        if let Some(local) = local {
            match self.broker.flow_info(local).await {
                Ok(_) => {
                    self.check_write(principal, local).await?;
                }
                Err(flowd_broker::BrokerError::NoSuchFlow(_)) => {
                    self.create_flow_as(principal, local, &FlowOptions::default())
                        .await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let token = if anonymous {
            anonymous_token()
        } else {
            token()
        };
        let copy = FlowName::parse(&format!("{token}.{remote}"))
            .map_err(|e| AgentError::Invalid(format!("subscription flow: {e}")))?;
        // The copy is as readable as its source: a public flow's copy can be
        // read by an anonymous subscriber.
        let settings = flowd_broker::FlowSettings {
            public: source.settings.public,
            ..Default::default()
        };
        self.broker.create_flow(&copy, &settings).await?;
        self.changed();
        let user = principal.user().map(str::to_owned);
        let processor = format!("sub-{token}");
        self.relay(processor.clone(), remote, &copy, None).await?;
        let issuer = self
            .issuer
            .as_ref()
            .filter(|_| local.is_none() && confidential);
        let credentials = issuer
            .map(|issuer| issuer.credentials(&token, &copy.stream()))
            .transpose()
            .map_err(unavailable);
        let credentials = match credentials {
            Ok(credentials) => credentials,
            Err(e) => {
                let _ = self.delete_processor(&processor).await;
                let _ = self.broker.delete_flow(&copy).await;
                self.changed();
                return Err(e);
            }
        };
        // The record comes before the credentials are admitted, so that a
        // review running meanwhile (a right revoked) sees this copy.
        let record = Subscriber {
            token: token.clone(),
            source: remote.clone(),
            copy: copy.clone(),
            user: user.clone(),
            processor,
            created: chrono::Utc::now().to_rfc3339(),
            host: principal == &Principal::Host,
            broker_account: credentials
                .as_ref()
                .filter(|c| c.jwt.is_some())
                .map(|c| c.user.clone()),
            address,
        };
        let made = async {
            self.put_record(&format!("subscriber.{token}"), &record)
                .await?;
            if let (Some(issuer), Some(credentials)) = (issuer, &credentials) {
                self.broker
                    .subscriber_consumer(&copy, &credentials.consumer)
                    .await?;
                issuer.admit(credentials).await.map_err(unavailable)?;
            }
            if let Some(local) = local {
                let processor = format!("local-{token}");
                self.relay(processor.clone(), &copy, local, user.clone())
                    .await?;
                self.put_record(
                    &format!("subscription.{token}"),
                    &Subscription::new(&token, local, remote, &copy, user.clone(), processor, None),
                )
                .await?;
            }
            Ok::<(), AgentError>(())
        };
        if let Err(e) = made.await {
            // Nothing half-made stays behind, credentials least of all.
            if let Err(cleanup) = self.drop_subscriber(&record).await {
                tracing::warn!(%copy, "cleaning up a failed subscription: {cleanup}");
            }
            return Err(e);
        }
        // Access taken away while the copy was being made takes it again.
        if let Some(reason) = self.lost_access(&record).await? {
            self.revoke_subscriber(&record, &reason).await?;
            return Err(access::denied(
                principal,
                Right::Read,
                &format!("read {remote}"),
            ));
        }
        Ok(Subscribed { copy, credentials })
    }

    /// Subscribes to a flow of another participant (see
    /// [`crate::relays`]): the local flow is created only once the
    /// remote host has accepted.
    async fn subscribe_remote(
        &self,
        principal: &Principal,
        remote: &FlowName,
        local: Option<&FlowName>,
    ) -> Result<Subscribed, AgentError> {
        let Some(federation) = self.federation.clone() else {
            return Err(AgentError::Unavailable(format!(
                "{remote} is not served by this host, and this host does not reach others"
            )));
        };
        let local = local.ok_or_else(|| {
            AgentError::Invalid(format!(
                "{remote} is served by another host: give LOCAL <flow> to receive its events here"
            ))
        })?;
        let exists = match self.broker.flow_info(local).await {
            Ok(_) => {
                self.check_write(principal, local).await?;
                true
            }
            Err(flowd_broker::BrokerError::NoSuchFlow(_)) => {
                self.check_create(principal, local).await?;
                false
            }
            Err(e) => return Err(e.into()),
        };
        let (subscribed, addr) = federation.subscribe(remote).await?;
        let copy = subscribed.copy.clone();
        if !exists
            && let Err(e) = self
                .create_flow_as(principal, local, &FlowOptions::default())
                .await
        {
            let _ = federation.unsubscribe(remote, &copy).await;
            return Err(e);
        }
        let token = token();
        let mut record = Subscription::new(
            &token,
            local,
            remote,
            &copy,
            principal.user().map(str::to_owned),
            String::new(),
            Some(addr.to_string()),
        );
        record.broker = subscribed.credentials;
        self.put_record(&format!("subscription.{token}"), &record)
            .await?;
        // The credentials stay with this host.
        Ok(Subscribed {
            copy,
            credentials: None,
        })
    }

    /// Watches the records of this host's subscriptions (the relays of
    /// remote ones follow them).
    pub(crate) async fn watch_subscriptions(
        &self,
    ) -> Result<async_nats::jetstream::kv::Watch, AgentError> {
        self.subscriptions
            .watch_with_history("subscription.>")
            .await
            .map_err(unavailable)
    }

    /// The last remote sequence relayed into a remote subscription's flow.
    pub(crate) async fn relay_position(&self, token: &str) -> Result<u64, AgentError> {
        Ok(self
            .subscriptions
            .get(format!("position.{token}"))
            .await
            .map_err(unavailable)?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0))
    }

    /// Records why a remote subscription's relay cannot progress (shown as
    /// `failing: <reason>` by `LIST SUBSCRIPTIONS`, whichever host asks),
    /// or with `None` that it progresses again.
    pub(crate) async fn relay_failing(
        &self,
        token: &str,
        reason: Option<&str>,
    ) -> Result<(), AgentError> {
        let key = format!("failing.{token}");
        {
            let mut marked = self
                .relays_failing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if reason.is_some() {
                marked.insert(token.to_owned());
            } else if !marked.remove(token) {
                return Ok(());
            }
        }
        match reason {
            Some(reason) => {
                let reason: String = reason
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(300)
                    .collect();
                self.subscriptions
                    .put(key, reason.into_bytes().into())
                    .await
                    .map_err(unavailable)?;
            }
            None => self.subscriptions.purge(key).await.map_err(unavailable)?,
        }
        Ok(())
    }

    /// Why the relay of subscription `token` cannot progress, if it cannot.
    async fn failing(&self, token: &str) -> Option<String> {
        let value = self
            .subscriptions
            .get(format!("failing.{token}"))
            .await
            .ok()
            .flatten()?;
        String::from_utf8(value.to_vec()).ok()
    }

    /// Stores relayed events, then the position after them.
    pub(crate) async fn relay_store(
        &self,
        sub: &Subscription,
        scope: &str,
        events: &[flowd_core::event::Event],
        last: u64,
    ) -> Result<(), AgentError> {
        if events.is_empty() {
            return Ok(());
        }
        self.write_relayed(&sub.local, events, scope, &sub.remote)
            .await?;
        self.subscriptions
            .put(format!("position.{}", sub.token), last.to_string().into())
            .await
            .map_err(unavailable)?;
        self.relay_failing(&sub.token, None).await
    }

    pub(crate) async fn mark_revoked(
        &self,
        token: &str,
        reason: Option<String>,
    ) -> Result<(), AgentError> {
        let key = format!("subscription.{token}");
        let Some(value) = self.subscriptions.get(&key).await.map_err(unavailable)? else {
            return Ok(());
        };
        let mut sub: Subscription =
            serde_json::from_slice(&value).map_err(|e| AgentError::Invalid(e.to_string()))?;
        sub.revoked = true;
        sub.revoked_reason = reason;
        self.put_record(&key, &sub).await
    }

    async fn subscriber_of_copy(&self, copy: &FlowName) -> Result<Subscriber, AgentError> {
        let token = copy.as_str().split('.').next().unwrap_or_default();
        let found = self
            .subscriptions
            .get(format!("subscriber.{token}"))
            .await
            .map_err(unavailable)?
            .and_then(|v| serde_json::from_slice::<Subscriber>(&v).ok())
            .filter(|s| &s.copy == copy);
        found.ok_or_else(|| AgentError::NotFound {
            what: "subscription",
            name: copy.to_string(),
        })
    }

    /// Removes the broker users of subscribers that are no more (a host
    /// stopped between removing a subscriber and its user).
    pub async fn forget_stale_broker_users(&self) -> Result<(), AgentError> {
        let Some(flowd_broker::grants::Issuer::Embedded(users)) = &self.issuer else {
            return Ok(());
        };
        let live: std::collections::BTreeSet<String> = self
            .records::<Subscriber>("subscriber.")
            .await?
            .into_iter()
            .map(|s| PullCredentials::user_name(&s.token))
            .collect();
        users
            .retain(|user| live.contains(user))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Why a copy that was revoked is gone (`None`: no such copy was
    /// revoked here, or too long ago).
    pub async fn revocation_of(&self, copy: &FlowName, principal: &Principal) -> Option<String> {
        let token = copy.as_str().split('.').next()?;
        let value = self
            .subscriptions
            .get(format!("revoked.{token}"))
            .await
            .ok()
            .flatten()?;
        let tombstone: Revoked = serde_json::from_slice(&value).ok()?;
        let told = match &tombstone.user {
            None => principal == &Principal::Anonymous || principal.is_admin(),
            Some(user) => owns(principal, Some(user)),
        };
        (&tombstone.copy == copy && told).then_some(tombstone.reason)
    }

    /// Why `sub` may no longer read its source, if it may not: the flow or
    /// its namespace was deleted, the subscribing account was removed, its
    /// read right revoked, or (anonymous) the flow is no longer public.
    async fn lost_access(&self, sub: &Subscriber) -> Result<Option<String>, AgentError> {
        if let Err(flowd_broker::BrokerError::NoSuchFlow(_)) =
            self.broker.flow_info(&sub.copy).await
        {
            return Ok(Some(format!("its copy {} was deleted", sub.copy)));
        }
        let info = match self.broker.flow_info(&sub.source).await {
            Ok(info) => info,
            Err(flowd_broker::BrokerError::NoSuchFlow(_)) => {
                return Ok(Some(format!("{} was deleted", sub.source)));
            }
            Err(e) => return Err(e.into()),
        };
        let chain = self.flow_chain(&sub.source).await?;
        if chain.is_empty() {
            return Ok(Some(format!("the namespace of {} was deleted", sub.source)));
        }
        // Records made before `host` was kept: only the host makes a copy
        // without an account that also feeds a local flow.
        let legacy_host = sub.user.is_none()
            && !sub.host
            && self
                .subscriptions
                .get(format!("subscription.{}", sub.token))
                .await
                .map_err(unavailable)?
                .is_some();
        let principal = match (&sub.user, &self.shared_accounts) {
            _ if sub.host || legacy_host => Principal::Host,
            (None, _) => Principal::Anonymous,
            (Some(user), _) if user == crate::accounts::local::LOCAL_ADMIN => {
                Principal::User(crate::accounts::Identity {
                    user: user.clone(),
                    admin: true,
                })
            }
            (Some(user), Some(shared)) => match shared.identity(user).await {
                Ok(Some(identity)) => Principal::User(identity),
                Ok(None) => return Ok(Some(format!("the account {user} was removed"))),
                Err(e) => return Err(AgentError::Unavailable(e.to_string())),
            },
            (Some(user), None) => Principal::User(crate::accounts::Identity {
                user: user.clone(),
                admin: false,
            }),
        };
        if info.settings.public || access::right_through(&principal, &chain).is_some() {
            return Ok(None);
        }
        Ok(Some(match sub.user {
            None => format!("{} is no longer public", sub.source),
            Some(ref user) => format!("{user} may no longer read {}", sub.source),
        }))
    }

    /// Revokes every copy whose subscriber lost the access it subscribed
    /// with (after `REVOKE`, `DELETE FLOW`, `DELETE NAMESPACE`, a flow made
    /// private, an account removed); returns how many. A failure to revoke
    /// one copy does not stop the others.
    pub async fn review_subscribers(&self) -> Result<usize, AgentError> {
        let mut revoked = 0;
        let mut failure = None;
        for sub in self.records::<Subscriber>("subscriber.").await? {
            let outcome = match self.lost_access(&sub).await {
                Ok(Some(reason)) => self.revoke_subscriber(&sub, &reason).await.map(|()| 1),
                Ok(None) => Ok(0),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(n) => revoked += n,
                Err(e) => {
                    tracing::warn!(copy = %sub.copy, "reviewing a subscriber: {e}");
                    failure = Some(e);
                }
            }
        }
        self.forget_old_revocations().await;
        match failure {
            Some(e) => Err(e),
            None => Ok(revoked),
        }
    }

    /// [`Agent::review_subscribers`] after a command changed access: a
    /// failure is logged, not returned (the command's change is made), and
    /// the periodic review of [`Agent::follow_accounts`] tries again.
    pub(crate) async fn review_subscribers_after(&self, what: &str) {
        if let Err(e) = self.review_subscribers().await {
            tracing::warn!("reviewing subscribers after {what} (retried within 30 s): {e}");
        }
    }

    /// Makes the copies of `flow` private (the flow was made private).
    pub(crate) async fn make_copies_private(&self, flow: &FlowName) -> Result<(), AgentError> {
        for sub in self.records::<Subscriber>("subscriber.").await? {
            if &sub.source != flow {
                continue;
            }
            match self.broker.flow_info(&sub.copy).await {
                Ok(info) if info.settings.public => {
                    let settings = flowd_broker::FlowSettings {
                        public: false,
                        ..info.settings
                    };
                    self.broker.update_flow(&sub.copy, &settings).await?;
                }
                Ok(_) | Err(flowd_broker::BrokerError::NoSuchFlow(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reviews the subscribers whenever the participant's accounts change
    /// (an account removed on any host takes its copies), and every 30 s
    /// (a review that failed is tried again).
    pub fn follow_accounts(&self) -> Option<tokio::task::JoinHandle<()>> {
        let shared = self.shared_accounts.clone()?;
        let agent = self.clone();
        Some(tokio::spawn(async move {
            loop {
                match shared.changes().await {
                    Ok(changes) => {
                        // What changed before the watch began, then each change.
                        let changes = futures::stream::once(async {}).chain(changes);
                        let mut changes = std::pin::pin!(changes);
                        let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
                        every.tick().await;
                        loop {
                            tokio::select! {
                                change = changes.next() => if change.is_none() { break },
                                _ = every.tick() => {}
                            }
                            // A changed file is published one account at a
                            // time: one review for the burst.
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            while let Some(Some(())) =
                                futures::FutureExt::now_or_never(changes.next())
                            {
                            }
                            if let Err(e) = agent.review_subscribers().await {
                                tracing::warn!(
                                    "reviewing subscribers after an account change: {e}"
                                );
                            }
                        }
                    }
                    Err(e) => tracing::warn!("following the accounts: {e}"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }))
    }

    /// Revokes a copy, keeping why (answered to its subscriber).
    async fn revoke_subscriber(&self, sub: &Subscriber, reason: &str) -> Result<(), AgentError> {
        tracing::info!(copy = %sub.copy, "revoking a subscription: {reason}");
        let tombstone = Revoked {
            copy: sub.copy.clone(),
            reason: reason.to_owned(),
            at: chrono::Utc::now().to_rfc3339(),
            user: sub.user.clone(),
        };
        self.put_record(&format!("revoked.{}", sub.token), &tombstone)
            .await?;
        self.drop_subscriber(sub).await
    }

    /// Revocation reasons are kept a week.
    async fn forget_old_revocations(&self) {
        let Ok(tombstones) = self.records::<Revoked>("revoked.").await else {
            return;
        };
        let week = chrono::Duration::days(7);
        for tombstone in tombstones {
            let old = chrono::DateTime::parse_from_rfc3339(&tombstone.at)
                .map(|at| chrono::Utc::now() - at.with_timezone(&chrono::Utc) > week)
                .unwrap_or(true);
            if old && let Some(token) = tombstone.copy.as_str().split('.').next() {
                let _ = self.subscriptions.purge(format!("revoked.{token}")).await;
            }
        }
    }

    /// Removes a copy: its broker user first (its connections close, no
    /// event leaves after this), then its relay, its flow, its record, and
    /// any local subscription fed from it.
    async fn drop_subscriber(&self, sub: &Subscriber) -> Result<(), AgentError> {
        if let Some(issuer) = &self.issuer {
            issuer
                .revoke(&sub.token, sub.broker_account.as_deref())
                .await
                .map_err(unavailable)?;
        }
        for local in self.records::<Subscription>("subscription.").await? {
            if local.copy == sub.copy {
                self.drop_subscription(&local).await?;
            }
        }
        if self.processor(&sub.processor).await.is_ok() {
            self.delete_processor(&sub.processor).await?;
        }
        match self.broker.delete_flow(&sub.copy).await {
            Ok(()) | Err(flowd_broker::BrokerError::NoSuchFlow(_)) => self.changed(),
            Err(e) => return Err(e.into()),
        }
        self.subscriptions
            .purge(format!("subscriber.{}", sub.token))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn drop_subscription(&self, sub: &Subscription) -> Result<(), AgentError> {
        if !sub.processor.is_empty() && self.processor(&sub.processor).await.is_ok() {
            self.delete_processor(&sub.processor).await?;
        }
        if sub.agent.is_some() {
            if let Some(federation) = &self.federation
                && !sub.revoked
                && let Err(e) = federation.unsubscribe(&sub.remote, &sub.copy).await
            {
                tracing::warn!(copy = %sub.copy, "the remote host did not confirm UNSUBSCRIBE: {e}");
            }
            self.subscriptions
                .purge(format!("position.{}", sub.token))
                .await
                .map_err(unavailable)?;
        }
        self.subscriptions
            .purge(format!("subscription.{}", sub.token))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Cancels a copy the principal subscribed to.
    pub async fn unsubscribe_as(
        &self,
        principal: &Principal,
        copy: &FlowName,
    ) -> Result<(), AgentError> {
        let sub = self.subscriber_of_copy(copy).await?;
        // An anonymous subscription is cancelled by whoever holds its
        // (unguessable) copy name: that is all an anonymous peer has.
        let anonymous_own = principal == &Principal::Anonymous && sub.user.is_none();
        if !anonymous_own && !owns(principal, sub.user.as_deref()) {
            return Err(AgentError::Forbidden(format!(
                "{copy} is not a subscription of {}",
                principal.name()
            )));
        }
        self.revoke_subscriber(&sub, "cancelled by its subscriber")
            .await
    }

    /// The flow's owner revokes a subscriber's copy; needs `write` on the
    /// subscribed flow.
    pub async fn remove_subscriber_as(
        &self,
        principal: &Principal,
        copy: &FlowName,
    ) -> Result<(), AgentError> {
        let sub = self.subscriber_of_copy(copy).await?;
        let (right, _) = self.flow_right(principal, &sub.source).await?;
        access::require(
            principal,
            right,
            Right::Write,
            &format!("remove subscribers of {}", sub.source),
        )?;
        self.revoke_subscriber(&sub, &format!("removed by the owner of {}", sub.source))
            .await
    }

    /// The subscribers of one of our flows; needs `write` on it.
    pub async fn list_subscribers_as(
        &self,
        principal: &Principal,
        flow: &FlowName,
    ) -> Result<Vec<Subscriber>, AgentError> {
        self.check_write(principal, flow).await?;
        Ok(self
            .records::<Subscriber>("subscriber.")
            .await?
            .into_iter()
            .filter(|s| &s.source == flow)
            .collect())
    }

    /// The principal's subscriptions (local flows fed from copies).
    pub async fn list_subscriptions_as(
        &self,
        principal: &Principal,
    ) -> Result<Vec<Subscription>, AgentError> {
        let mut subs: Vec<Subscription> = self
            .records::<Subscription>("subscription.")
            .await?
            .into_iter()
            .filter(|s| owns(principal, s.user.as_deref()))
            .collect();
        for sub in &mut subs {
            if sub.agent.is_some() && !sub.revoked && !sub.paused {
                sub.failing = self.failing(&sub.token).await;
            }
        }
        Ok(subs)
    }

    async fn subscription_into(
        &self,
        principal: &Principal,
        local: &FlowName,
    ) -> Result<Subscription, AgentError> {
        self.list_subscriptions_as(principal)
            .await?
            .into_iter()
            .find(|s| &s.local == local)
            .ok_or_else(|| AgentError::NotFound {
                what: "subscription into",
                name: local.to_string(),
            })
    }

    /// Pauses (or resumes) the bridge feeding `local`; events keep
    /// accumulating in the copy meanwhile.
    pub async fn pause_subscription_as(
        &self,
        principal: &Principal,
        local: &FlowName,
        paused: bool,
    ) -> Result<Subscription, AgentError> {
        let mut sub = self.subscription_into(principal, local).await?;
        if sub.agent.is_none() {
            self.set_paused(&sub.processor, paused).await?;
        }
        sub.paused = paused;
        self.put_record(&format!("subscription.{}", sub.token), &sub)
            .await?;
        Ok(sub)
    }

    /// Stops a subscription for good: its bridge, and the copy at the
    /// source.
    pub async fn stop_subscription_as(
        &self,
        principal: &Principal,
        local: &FlowName,
    ) -> Result<Subscription, AgentError> {
        let sub = self.subscription_into(principal, local).await?;
        self.drop_subscription(&sub).await?;
        if sub.agent.is_none()
            && let Ok(copy) = self.subscriber_of_copy(&sub.copy).await
        {
            self.drop_subscriber(&copy).await?;
        }
        Ok(sub)
    }
}
