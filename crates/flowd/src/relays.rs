//! Relays: a task per remote subscription carries the copy's events into
//! the local flow, each batch written with message ids derived from the
//! events (a replay after a crash or a reconnect is de-duplicated) and
//! acknowledged only after it is stored. It reads the copy one of two ways:
//!
//! - **from the remote broker** when the `SUBSCRIBE` reply carried broker
//!   credentials ([`flowd_broker::grants`]; hosts that supervise their
//!   broker issue them): the relay finds the broker in DNS
//!   (`_queue._flow._tcp.<flow>` SRV), connects as the subscription's user
//!   and pulls the consumer the remote host made for it;
//! - **over FNAP** otherwise: `READ FLOW <copy> FROM <next> FOLLOW
//!   SEQUENCES`, the position stored after each batch.
//!
//! The remote host revokes a subscription by removing the copy and its
//! broker user (`REMOVE SUBSCRIBER`); the relay sees its user refused or
//! the copy gone, asks the remote host, and only when that host answers
//! that the copy is gone (`550`) marks the subscription revoked and stops.
//! Anything else is retried with a back-off: a broker or host down, a 4xx,
//! and also a refusal of this host (`530`/`535`/`554`, say a password that
//! changed or is missing here), which the remote host's operator or ours
//! can put right without the subscription being lost.

use crate::agent::subscriptions::Subscription;
use crate::agent::{Agent, AgentError};
use crate::peers::{Federation, RemoteBroker, refused};
use flowd_broker::cluster::{self, Membership};
use flowd_broker::codec;
use flowd_broker::grants::PullCredentials;
use flowd_core::event::jsonl;
use flowd_fnap::Code;
use flowd_fnap::client::{ClientError, quote};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The relays of the participant's remote subscriptions, kept in step with
/// the subscription records. With several hosts on one broker, each relay
/// runs on one of them: the host [`cluster::owner`] ranks first for it,
/// under a lease (`relay-<token>.0` in `flowd-leases`), as processor
/// instances do.
pub(crate) struct Relays {
    task: tokio::task::JoinHandle<()>,
}

/// A relay running on this host: its task, its lease's revision, and the
/// record it was started from.
type Running = HashMap<String, (tokio::task::JoinHandle<()>, u64, Subscription)>;

impl Relays {
    pub(crate) async fn start(
        agent: Agent,
        federation: Arc<Federation>,
        membership: Membership,
        every: Duration,
    ) -> Result<Relays, AgentError> {
        let mut watch = agent.watch_subscriptions().await?;
        let task = tokio::spawn(async move {
            // The records whose relay should run somewhere, by key.
            let mut wanted: HashMap<String, Subscription> = HashMap::new();
            let mut running: Running = HashMap::new();
            let mut hosts = vec![membership.id.clone()];
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    change = watch.next() => {
                        let Some(change) = change else { break };
                        let Ok(entry) = change else { continue };
                        let key = entry.key.clone();
                        let sub = (entry.operation == async_nats::jetstream::kv::Operation::Put)
                            .then(|| serde_json::from_slice::<Subscription>(&entry.value).ok())
                            .flatten()
                            .filter(|s| s.agent.is_some() && !s.paused && !s.revoked);
                        // A changed record restarts its relay.
                        if let Some((task, lease, old)) = running.remove(&key) {
                            if sub.as_ref() == Some(&old) {
                                running.insert(key.clone(), (task, lease, old));
                            } else {
                                task.abort();
                                membership.release(&relay_lease(&old), lease).await;
                            }
                        }
                        match sub {
                            Some(sub) => wanted.insert(key, sub),
                            None => wanted.remove(&key),
                        };
                    }
                    _ = tick.tick() => {
                        if let Ok(agents) = membership.agents().await {
                            hosts = agents.into_iter().map(|a| a.id).collect();
                        }
                        renew(&membership, &mut running).await;
                    }
                }
                place_relays(
                    &agent,
                    &federation,
                    &membership,
                    &hosts,
                    &wanted,
                    &mut running,
                )
                .await;
            }
            for (_, (task, lease, sub)) in running {
                task.abort();
                membership.release(&relay_lease(&sub), lease).await;
            }
        });
        Ok(Relays { task })
    }

    pub(crate) fn shutdown(self) {
        self.task.abort();
    }
}

fn relay_lease(sub: &Subscription) -> String {
    cluster::lease_key(&format!("relay-{}", sub.token), 0)
}

/// Renews the leases of the relays running here; a relay whose lease
/// another host took stops.
async fn renew(membership: &Membership, running: &mut Running) {
    let keys: Vec<String> = running.keys().cloned().collect();
    for key in keys {
        let Some((_, revision, sub)) = running.get(&key) else {
            continue;
        };
        let lease = relay_lease(sub);
        let renewed = membership.keep(&lease, *revision).await;
        match renewed {
            Ok(Some(next)) => {
                if let Some(entry) = running.get_mut(&key) {
                    entry.1 = next;
                }
            }
            Ok(None) => {
                if let Some((task, _, sub)) = running.remove(&key) {
                    tracing::info!(local = %sub.local, "relay lease taken by another host");
                    task.abort();
                }
            }
            Err(e) => tracing::debug!("relay lease not renewed: {e}"),
        }
    }
}

/// Starts the relays ranked for this host (when their lease can be taken)
/// and stops those ranked for another.
async fn place_relays(
    agent: &Agent,
    federation: &Arc<Federation>,
    membership: &Membership,
    hosts: &[String],
    wanted: &HashMap<String, Subscription>,
    running: &mut Running,
) {
    let mine = |sub: &Subscription| {
        cluster::owner(&format!("relay-{}", sub.token), 0, hosts)
            .is_none_or(|owner| owner == membership.id)
    };
    let leaving: Vec<String> = running
        .iter()
        .filter(|(key, (_, _, sub))| !wanted.contains_key(*key) || !mine(sub))
        .map(|(key, _)| key.clone())
        .collect();
    for key in leaving {
        if let Some((task, lease, sub)) = running.remove(&key) {
            task.abort();
            membership.release(&relay_lease(&sub), lease).await;
        }
    }
    for (key, sub) in wanted {
        if running.contains_key(key) || !mine(sub) {
            continue;
        }
        match membership.acquire(&relay_lease(sub)).await {
            Ok(Some(lease)) => {
                let task = tokio::spawn(relay(agent.clone(), federation.clone(), sub.clone()));
                running.insert(key.clone(), (task, lease, sub.clone()));
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("relay lease not taken: {e}"),
        }
    }
}

/// Whether a refusal says the copy is gone (removed at the source, or
/// never readable by this subscriber). FNAP answers `550` for both, so
/// that nobody learns of copies that are not theirs; a `554` is about who
/// asked, not about the copy.
fn copy_gone(reply: &flowd_fnap::Reply) -> bool {
    reply.code == Code::NotFound
}

/// The largest sequence a relay accepts from a remote host (2^53: far
/// beyond any stream, and exact in every JSON reader).
const MAX_SEQUENCE: u64 = 1 << 53;

/// Why a relay stopped for good.
enum Ended {
    /// With the remote host's reason, when it gave one.
    Revoked(Option<String>),
}

async fn relay(agent: Agent, federation: Arc<Federation>, sub: Subscription) {
    let mut backoff = Duration::from_millis(200);
    let mut failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        let outcome = relay_once(&agent, &federation, &sub).await;
        // A relay that ran a while was healthy: its failures start over.
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
            backoff = Duration::from_millis(200);
        }
        match outcome {
            Ok(Ended::Revoked(reason)) => {
                tracing::warn!(local = %sub.local, copy = %sub.copy, ?reason, "subscription revoked by the remote host");
                if let Err(e) = agent.mark_revoked(&sub.token, reason).await {
                    tracing::warn!("marking {} revoked: {e}", sub.token);
                }
                return;
            }
            Err(e) => {
                tracing::info!(local = %sub.local, "relay interrupted, reconnecting: {e}");
                failures += 1;
                // One interruption (a reconnect) is not a failure to show;
                // two in a row are.
                if failures >= 2
                    && let Err(e) = agent.relay_failing(&sub.token, Some(&e.to_string())).await
                {
                    tracing::debug!("relay state not stored: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn relay_once(
    agent: &Agent,
    federation: &Federation,
    sub: &Subscription,
) -> Result<Ended, AgentError> {
    match &sub.broker {
        Some(credentials) => match federation.broker(&sub.remote, credentials).await? {
            Some(broker) => relay_from_broker(agent, federation, sub, credentials, broker).await,
            None => relay_over_fnap(agent, federation, sub).await,
        },
        None => relay_over_fnap(agent, federation, sub).await,
    }
}

/// Whether a consumer look-up failed because the copy or its consumer is
/// gone (the subscription was removed at the source).
fn removed(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::stream::ConsumerErrorKind;
    matches!(e.kind(), ConsumerErrorKind::JetStream(js)
        if js.error_code() == ErrorCode::CONSUMER_NOT_FOUND
            || js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// A remote refusal as a reason to keep: one line of at most 200
/// characters (the remote host is not trusted with more).
fn reason(reply: &flowd_fnap::reply::Reply) -> String {
    reply
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

/// Pulls the copy from the remote broker with the subscription's own
/// credentials until the connection fails or the subscription is revoked.
async fn relay_from_broker(
    agent: &Agent,
    federation: &Federation,
    sub: &Subscription,
    credentials: &PullCredentials,
    broker: RemoteBroker,
) -> Result<Ended, AgentError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let RemoteBroker { urls, tls } = broker;
    let refused = Arc::new(AtomicBool::new(false));
    let flag = refused.clone();
    let mut options = credentials.connect_options();
    if let Some(tls) = tls {
        options = options.require_tls(true).tls_client_config(tls);
    }
    let connected = options
        .name(format!("flowd subscription {}", sub.local))
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let flag = flag.clone();
            async move {
                if let async_nats::Event::ServerError(
                    async_nats::ServerError::AuthorizationViolation,
                ) = event
                {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        })
        .connect(urls.clone())
        .await;
    let client = match connected {
        Ok(client) => client,
        Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation => {
            return confirm_revoked(federation, sub, "its broker user is refused").await;
        }
        Err(e) => {
            return Err(AgentError::Unavailable(format!(
                "the broker of {} ({}): {e}",
                sub.remote,
                urls.join(",")
            )));
        }
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        AgentError::Unavailable(format!("pulling {} from its broker: {e}", sub.copy))
    };
    let js = async_nats::jetstream::with_prefix(client.clone(), &credentials.api_prefix);
    let consumer: async_nats::jetstream::consumer::PullConsumer = match js
        .get_consumer_from_stream(&credentials.consumer, &credentials.stream)
        .await
    {
        Ok(consumer) => consumer,
        Err(e) if removed(&e) => {
            return confirm_revoked(federation, sub, "its consumer is gone").await;
        }
        Err(e) => return Err(unavailable(&e)),
    };
    match pull(
        agent,
        sub,
        &client,
        &consumer,
        &credentials.stream,
        &refused,
    )
    .await?
    {
        Pulled::Refused => confirm_revoked(federation, sub, "its broker user is refused").await,
    }
}

/// Why [`pull`] stopped without an error.
enum Pulled {
    /// The broker refused the connection's user.
    Refused,
}

/// Pulls `consumer` of `stream` into the subscription's local flow, each
/// batch acknowledged once stored, until the connection fails (an error)
/// or `refused` is raised.
async fn pull(
    agent: &Agent,
    sub: &Subscription,
    client: &async_nats::Client,
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    stream: &str,
    refused: &std::sync::atomic::AtomicBool,
) -> Result<Pulled, AgentError> {
    use std::sync::atomic::Ordering;
    let unavailable = |e: &dyn std::fmt::Display| {
        AgentError::Unavailable(format!("pulling {} from its broker: {e}", sub.copy))
    };
    let scope = format!("remote:{}", sub.token);
    loop {
        if refused.load(Ordering::SeqCst) {
            return Ok(Pulled::Refused);
        }
        let mut batch = consumer
            .batch()
            .max_messages(flowd_broker::grants::BATCH)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| unavailable(&e))?;
        let mut messages = Vec::new();
        let mut events = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| unavailable(&e))?;
            let (sequence, decoded) = codec::stored_event(&message, stream);
            match decoded {
                Ok(event) => {
                    events.push(event);
                    messages.push(message);
                }
                // Never decodable, so never delivered again.
                Err(e) => {
                    tracing::warn!(copy = %sub.copy, sequence, "dropping an unreadable event: {e}");
                    let _ = message.ack_with(async_nats::jetstream::AckKind::Term).await;
                }
            }
        }
        if events.is_empty() {
            if client.connection_state() != async_nats::connection::State::Connected {
                return Err(unavailable(&"disconnected"));
            }
            continue;
        }
        agent
            .write_relayed(&sub.local, &events, &scope, &sub.remote)
            .await?;
        for message in messages {
            message.ack().await.map_err(|e| unavailable(&e))?;
        }
        agent.relay_failing(&sub.token, None).await?;
    }
}

/// A remote FNAA that implements only the draft's commands (no `READ
/// FLOW`) says in `DESCRIBE FLOW <copy>` where the copy is: a NATS
/// JetStream broker is pulled directly, with a durable consumer of the
/// subscription's own; any other broker type (`type=kafka`) ends the
/// subscription with that reason. The broker must listen on the address
/// the agent was reached at: a remote host cannot point this host at
/// another machine, or at this host's own services.
async fn relay_as_described(
    agent: &Agent,
    sub: &Subscription,
    client: &mut flowd_fnap::client::Client,
    agent_addr: std::net::SocketAddr,
) -> Result<Ended, AgentError> {
    let describe = format!("DESCRIBE FLOW {}", sub.copy);
    let (lines, _) =
        match tokio::time::timeout(crate::peers::REMOTE_STEP, client.data(&describe)).await {
            Ok(Ok(described)) => described,
            Ok(Err(ClientError::Refused(reply))) if copy_gone(&reply) => {
                return Ok(Ended::Revoked(Some(reason(&reply))));
            }
            Ok(Err(e)) => return Err(refused(e, &describe).into()),
            Err(_) => {
                return Err(AgentError::Unavailable(format!(
                    "{describe}: the remote host did not answer"
                )));
            }
        };
    let described = flowd_fnap::data::KeyValues::decode(&lines).map_err(|e| {
        AgentError::Unavailable(format!("{describe}: the remote host's reply: {e}"))
    })?;
    let value = |key: &str| described.get(key).map(str::trim);
    let kind = value("type").unwrap_or("(none)");
    if !matches!(kind, "nats" | "nats-jetstream") {
        return Ok(Ended::Revoked(Some(format!(
            "broker type {} not supported",
            quote(kind)
        ))));
    }
    let (Some(server), Some(stream)) = (value("server"), value("stream")) else {
        return Ok(Ended::Revoked(Some(
            "the remote host's DESCRIBE FLOW names no server= and stream=".into(),
        )));
    };
    let url = server.split(',').next().unwrap_or_default().trim();
    let address = url
        .strip_prefix("nats://")
        .unwrap_or(url)
        .parse::<std::net::SocketAddr>()
        .ok()
        .filter(|a| a.ip() == agent_addr.ip());
    let Some(address) = address else {
        return Ok(Ended::Revoked(Some(format!(
            "the broker {} is not at the remote agent's address {}",
            quote(url),
            agent_addr.ip()
        ))));
    };
    if stream.is_empty()
        || stream.len() > 255
        || !stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Ok(Ended::Revoked(Some(format!(
            "the remote host names an invalid stream {}",
            quote(stream)
        ))));
    }
    let unavailable = |e: &dyn std::fmt::Display| {
        AgentError::Unavailable(format!("the broker {address} of {}: {e}", sub.remote))
    };
    let nats = async_nats::ConnectOptions::new()
        .name(format!("flowd subscription {}", sub.local))
        .connection_timeout(Duration::from_secs(5))
        .connect(format!("nats://{address}"))
        .await
        .map_err(|e| unavailable(&e))?;
    let js = async_nats::jetstream::new(nats.clone());
    let remote = js.get_stream(stream).await.map_err(|e| unavailable(&e))?;
    let consumer = remote
        .get_or_create_consumer(
            &format!("flowd-{}", sub.token),
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(format!("flowd-{}", sub.token)),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unavailable(&e))?;
    let never = std::sync::atomic::AtomicBool::new(false);
    match pull(agent, sub, &nats, &consumer, stream, &never).await? {
        Pulled::Refused => Err(unavailable(&"refused")),
    }
}

/// The broker refused the subscription's user, or its consumer is gone:
/// revoked only if the remote host confirms the copy is gone (a broker that
/// moved, or users not yet reloaded, are not revocations).
async fn confirm_revoked(
    federation: &Federation,
    sub: &Subscription,
    why: &str,
) -> Result<Ended, AgentError> {
    let (mut client, _) = federation.session(&sub.remote).await?;
    let described = tokio::time::timeout(
        crate::peers::REMOTE_STEP,
        client.data(&format!("DESCRIBE FLOW {}", sub.copy)),
    )
    .await;
    let _ = client.quit().await;
    match described {
        Ok(Err(ClientError::Refused(reply))) if copy_gone(&reply) => {
            Ok(Ended::Revoked(Some(reason(&reply))))
        }
        _ => Err(AgentError::Unavailable(format!(
            "pulling {} from its broker: {why}, but the copy is still there",
            sub.copy
        ))),
    }
}

/// Reads the copy over FNAP (`READ FLOW ... FOLLOW SEQUENCES`) from the
/// stored position until the session ends or the copy is gone.
async fn relay_over_fnap(
    agent: &Agent,
    federation: &Federation,
    sub: &Subscription,
) -> Result<Ended, AgentError> {
    let position = agent.relay_position(&sub.token).await?;
    let (mut client, agent_addr) = federation.session(&sub.remote).await?;
    let read = format!(
        "READ FLOW {} FROM {} FOLLOW SEQUENCES",
        sub.copy,
        position.saturating_add(1)
    );
    let started = tokio::time::timeout(crate::peers::REMOTE_STEP, client.read_start(&read))
        .await
        .map_err(|_| AgentError::Unavailable(format!("{read}: the remote host did not answer")))?;
    match started {
        Ok(()) => {}
        Err(ClientError::Refused(reply)) if copy_gone(&reply) => {
            return Ok(Ended::Revoked(Some(reason(&reply))));
        }
        // A host of the draft's commands only: its DESCRIBE FLOW says
        // where the copy is.
        Err(ClientError::Refused(reply))
            if matches!(reply.code, Code::Syntax | Code::NotImplemented) =>
        {
            return relay_as_described(agent, sub, &mut client, agent_addr).await;
        }
        Err(e) => return Err(refused(e, &read).into()),
    }
    let scope = format!("remote:{}", sub.token);
    let wrap = jsonl::Wrap::default();
    let mut batch = Vec::new();
    let mut last = position;
    loop {
        let next = client.read_next().await;
        let line = match next {
            Ok(Some(line)) => line,
            other => {
                agent.relay_store(sub, &scope, &batch, last).await?;
                return match other {
                    Err(ClientError::Refused(reply)) if copy_gone(&reply) => {
                        Ok(Ended::Revoked(Some(reason(&reply))))
                    }
                    Err(e) => Err(refused(e, "reading the subscription").into()),
                    // The copy's stream went away mid-read (removed).
                    _ => Err(AgentError::Unavailable("the remote read ended".into())),
                };
            }
        };
        let Some((sequence, event)) = line.split_once(' ') else {
            return Err(AgentError::Invalid(format!(
                "relay: not `<sequence> <event>`: {}",
                quote(&line)
            )));
        };
        let sequence: u64 = sequence
            .parse()
            .map_err(|_| AgentError::Invalid(format!("relay: bad sequence in {}", quote(&line))))?;
        // The remote host numbers its copy's events: they must increase,
        // from where this read started, and stay within what a stream can
        // hold (a sequence near u64::MAX would overflow the next read).
        if sequence <= last || sequence > MAX_SEQUENCE {
            return Err(AgentError::Invalid(format!(
                "relay: the remote host sent sequence {sequence} after {last}"
            )));
        }
        let event = jsonl::parse_line(event, sequence as usize, &wrap)
            .map_err(|e| AgentError::Invalid(format!("relay: {e}")))?;
        batch.push(event);
        last = sequence;
        if batch.len() >= 256 || !client.has_buffered() {
            agent.relay_store(sub, &scope, &batch, last).await?;
            batch.clear();
        }
    }
}
